//! The engine thread: owns this rank's model, its collective communicator
//! and the per-sequence caches, and runs steps off the tokio runtime (the
//! forward pass uses a rayon pool of its own).

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use weft_model::comm::Communicator;
use weft_model::llama::{RankModel, SeqCache};
use weft_model::sampling::{sample, SamplingParams};
use weft_proto::cluster::v1 as pb;

use crate::WorkerError;

type Reply = oneshot::Sender<Result<pb::StepResponse, WorkerError>>;

struct StepCmd {
    req: pb::StepRequest,
    reply: Reply,
}

/// Handle to a running engine thread. Dropping every handle stops it.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<StepCmd>,
}

pub struct EngineConfig {
    pub threads: usize,
    pub debug_logits: bool,
}

impl EngineHandle {
    /// Starts the engine thread for a loaded model.
    pub fn spawn(
        model: RankModel,
        comm: Box<dyn Communicator>,
        config: EngineConfig,
    ) -> Result<Self, WorkerError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name(|i| format!("weft-compute-{i}"))
            .build()
            .map_err(|e| WorkerError::NotReady(format!("cannot start compute threads: {e}")))?;
        let (tx, rx) = mpsc::channel(8);
        let engine = Engine {
            model,
            comm,
            caches: HashMap::new(),
            debug_logits: config.debug_logits,
        };
        std::thread::Builder::new()
            .name("weft-engine".into())
            .spawn(move || engine.run(rx, pool))?;
        Ok(EngineHandle { tx })
    }

    /// Runs one step; resolves when this rank has finished it.
    pub async fn step(&self, req: pb::StepRequest) -> Result<pb::StepResponse, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(StepCmd { req, reply })
            .await
            .map_err(|_| WorkerError::EngineGone)?;
        rx.await.map_err(|_| WorkerError::EngineGone)?
    }
}

struct Engine {
    model: RankModel,
    comm: Box<dyn Communicator>,
    caches: HashMap<u64, SeqCache>,
    debug_logits: bool,
}

impl Engine {
    fn run(mut self, mut rx: mpsc::Receiver<StepCmd>, pool: rayon::ThreadPool) {
        while let Some(cmd) = rx.blocking_recv() {
            let result = pool.install(|| self.step(&cmd.req));
            // The caller may have gone away; nothing to do then.
            let _ = cmd.reply.send(result);
        }
        tracing::info!("engine thread stopped");
    }

    fn step(&mut self, req: &pb::StepRequest) -> Result<pb::StepResponse, WorkerError> {
        for id in &req.release_seq_ids {
            self.caches.remove(id);
        }
        let mut resp = pb::StepResponse {
            step_id: req.step_id,
            rank: self.model.rank() as u32,
            ..Default::default()
        };
        for seq in &req.seqs {
            let mut cache = self
                .caches
                .remove(&seq.seq_id)
                .unwrap_or_else(|| self.model.new_cache());
            let logits = self.model.forward(
                self.comm.as_mut(),
                &mut cache,
                &seq.tokens,
                seq.start_pos as usize,
            )?;
            // Only a cache whose step completed is kept: a failed step
            // leaves a half-written cache, which is dropped above.
            self.caches.insert(seq.seq_id, cache);
            if !seq.sample {
                continue;
            }
            let params = sampling_params(seq.sampling.as_ref());
            let position = seq.start_pos as u64 + seq.tokens.len() as u64;
            let s = sample(&logits, &params, position);
            resp.tokens.push(pb::SampledToken {
                seq_id: seq.seq_id,
                token: s.token,
                logprob: s.logprob,
            });
            if req.debug_return_logits && self.debug_logits {
                resp.debug_logits.push(pb::DebugLogits {
                    seq_id: seq.seq_id,
                    logits,
                });
            }
        }
        Ok(resp)
    }
}

fn sampling_params(s: Option<&pb::Sampling>) -> SamplingParams {
    match s {
        None => SamplingParams::greedy(),
        Some(s) => SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            seed: s.seed,
        },
    }
}
