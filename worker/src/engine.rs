//! The engine thread: owns this rank's model, its collective communicator
//! and the per-sequence caches, and runs steps off the tokio runtime (the
//! forward pass uses a rayon pool of its own).

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use weft_model::comm::Communicator;
use weft_model::llama::{KvPool, RankModel, SeqInput};
use weft_model::sampling::{sample_full, SamplingParams, TokenHistory};
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
    /// Paged KV cache: tokens per block and number of blocks.
    pub kv_block_size: usize,
    pub kv_num_blocks: usize,
}

/// Where this rank's forward pass runs.
pub enum Backend {
    /// Weights and K/V pool in host memory, collectives over TCP.
    Cpu {
        model: Box<RankModel>,
        comm: Box<dyn Communicator>,
    },
    /// Weights and K/V pool on a CUDA device (world size 1 so far).
    #[cfg(feature = "cuda")]
    Gpu(Box<crate::gpu::GpuRank>),
}

/// The running form of a [`Backend`].
enum Forward {
    Cpu {
        model: Box<RankModel>,
        comm: Box<dyn Communicator>,
        pool: Box<KvPool>,
    },
    #[cfg(feature = "cuda")]
    Gpu(Box<crate::gpu::GpuRank>),
}

impl Forward {
    fn forward_batch(&mut self, seqs: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, WorkerError> {
        match self {
            Forward::Cpu { model, comm, pool } => {
                Ok(model.forward_batch(comm.as_mut(), pool, seqs)?)
            }
            #[cfg(feature = "cuda")]
            Forward::Gpu(g) => g.forward_batch(seqs),
        }
    }

    /// Runs the step and picks each sampled sequence's most likely token
    /// on the device, when the backend can (None: sample on the host).
    fn forward_greedy(
        &mut self,
        seqs: &[SeqInput<'_>],
    ) -> Option<Result<Vec<(u32, f32)>, WorkerError>> {
        match self {
            Forward::Cpu { .. } => {
                let _ = seqs;
                None
            }
            #[cfg(feature = "cuda")]
            Forward::Gpu(g) => g.forward_greedy(seqs),
        }
    }
}

/// Whether sampling is plain argmax: greedy, no penalties, no alternatives
/// (the device can then choose the token without the logits leaving it).
fn plain_greedy(s: Option<&pb::Sampling>) -> bool {
    s.is_none_or(|s| {
        s.temperature == 0.0
            && (s.repetition_penalty == 0.0 || s.repetition_penalty == 1.0)
            && s.presence_penalty == 0.0
            && s.frequency_penalty == 0.0
            && s.top_logprobs == 0
    })
}

impl EngineHandle {
    /// Starts the engine thread for a loaded model.
    pub fn spawn(backend: Backend, rank: usize, config: EngineConfig) -> Result<Self, WorkerError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name(|i| format!("weft-compute-{i}"))
            .build()
            .map_err(|e| WorkerError::NotReady(format!("cannot start compute threads: {e}")))?;
        let (tx, rx) = mpsc::channel(8);
        let forward = match backend {
            Backend::Cpu { model, comm } => {
                let pool = Box::new(model.new_pool(config.kv_block_size, config.kv_num_blocks)?);
                Forward::Cpu { model, comm, pool }
            }
            #[cfg(feature = "cuda")]
            Backend::Gpu(g) => Forward::Gpu(g),
        };
        let engine = Engine {
            forward,
            rank,
            history: HashMap::new(),
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
    forward: Forward,
    rank: usize,
    /// Every token seen of each live sequence, by position (for penalties).
    history: HashMap<u64, Vec<u32>>,
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

    /// Brings each sequence's token history up to date with this step.
    fn update_history(&mut self, seqs: &[pb::SequenceStep]) -> Result<(), WorkerError> {
        for seq in seqs {
            let h = self.history.entry(seq.seq_id).or_default();
            if !seq.history.is_empty() {
                h.clone_from(&seq.history);
            }
            let start = seq.start_pos as usize;
            if h.len() < start {
                return Err(WorkerError::InvalidArgument(format!(
                    "sequence {} starts at position {start} but this worker knows only {} of its tokens",
                    seq.seq_id,
                    h.len()
                )));
            }
            h.truncate(start);
            h.extend_from_slice(&seq.tokens);
        }
        Ok(())
    }

    fn step(&mut self, req: &pb::StepRequest) -> Result<pb::StepResponse, WorkerError> {
        for id in &req.release_seq_ids {
            self.history.remove(id);
        }
        let mut resp = pb::StepResponse {
            step_id: req.step_id,
            rank: self.rank as u32,
            ..Default::default()
        };
        if req.seqs.is_empty() {
            return Ok(resp);
        }
        self.update_history(&req.seqs)?;
        let inputs: Vec<SeqInput<'_>> = req
            .seqs
            .iter()
            .map(|s| SeqInput {
                tokens: &s.tokens,
                start_pos: s.start_pos as usize,
                block_table: &s.block_table,
                want_logits: s.sample,
            })
            .collect();
        let debug = req.debug_return_logits && self.debug_logits;
        let sampled = req.seqs.iter().filter(|s| s.sample);
        if !debug && sampled.clone().all(|s| plain_greedy(s.sampling.as_ref())) {
            if let Some(chosen) = self.forward.forward_greedy(&inputs) {
                for (seq, (token, logprob)) in sampled.zip(chosen?) {
                    resp.tokens.push(pb::SampledToken {
                        seq_id: seq.seq_id,
                        token,
                        logprob,
                        top: Vec::new(),
                    });
                }
                return Ok(resp);
            }
        }
        let logits = self.forward.forward_batch(&inputs)?;
        for (seq, logits) in sampled.zip(logits) {
            resp.tokens.push(self.sample(seq, &logits));
            if req.debug_return_logits && self.debug_logits {
                resp.debug_logits.push(pb::DebugLogits {
                    seq_id: seq.seq_id,
                    logits,
                });
            }
        }
        Ok(resp)
    }

    fn sample(&self, seq: &pb::SequenceStep, logits: &[f32]) -> pb::SampledToken {
        let params = sampling_params(seq.sampling.as_ref());
        let empty = Vec::new();
        let h = self.history.get(&seq.seq_id).unwrap_or(&empty);
        let split = (seq.prompt_len as usize).min(h.len());
        let history = TokenHistory {
            prompt: &h[..split],
            output: &h[split..],
        };
        let position = seq.start_pos as u64 + seq.tokens.len() as u64;
        let s = sample_full(logits, &params, &history, position);
        pb::SampledToken {
            seq_id: seq.seq_id,
            token: s.token,
            logprob: s.logprob,
            top: s
                .top
                .into_iter()
                .map(|(token, logprob)| pb::TokenLogprob { token, logprob })
                .collect(),
        }
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
            min_p: s.min_p,
            repetition_penalty: s.repetition_penalty,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            top_logprobs: s.top_logprobs.min(20),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_argmax_is_chosen_on_the_device() {
        assert!(plain_greedy(None));
        let greedy = pb::Sampling::default();
        assert!(plain_greedy(Some(&greedy)));
        let off = pb::Sampling {
            repetition_penalty: 1.0,
            seed: 7,
            ..Default::default()
        };
        assert!(
            plain_greedy(Some(&off)),
            "a seed or a neutral penalty changes nothing"
        );
        for s in [
            pb::Sampling {
                temperature: 0.7,
                ..Default::default()
            },
            pb::Sampling {
                repetition_penalty: 1.2,
                ..Default::default()
            },
            pb::Sampling {
                presence_penalty: 0.5,
                ..Default::default()
            },
            pb::Sampling {
                frequency_penalty: -0.5,
                ..Default::default()
            },
            pb::Sampling {
                top_logprobs: 3,
                ..Default::default()
            },
        ] {
            assert!(!plain_greedy(Some(&s)), "{s:?}");
        }
    }
}
