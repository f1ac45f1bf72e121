//! The client API `weft.v1.Generation`. In this skeleton one request runs
//! at a time: the group is held for the whole generation (continuous
//! batching replaces this with a scheduler).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weft_model::config::ModelConfig;
use weft_model::tokenizer::{IncrementalDecoder, Tokenizer};
use weft_proto::cluster::v1 as pb;
use weft_proto::v1;

use crate::group::WorkerGroup;
use crate::CoordinatorError;

/// The served model and the group that runs it.
pub struct ModelRuntime {
    pub name: String,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    group: Mutex<WorkerGroup>,
    next_seq: AtomicU64,
    next_step: AtomicU64,
}

/// A request that passed validation.
struct Job {
    prompt: Vec<u32>,
    max_tokens: u32,
    sampling: pb::Sampling,
}

fn invalid(msg: impl Into<String>) -> CoordinatorError {
    CoordinatorError::InvalidArgument(msg.into())
}

impl ModelRuntime {
    pub fn new(
        name: String,
        config: ModelConfig,
        tokenizer: Tokenizer,
        group: WorkerGroup,
    ) -> Arc<Self> {
        Arc::new(ModelRuntime {
            name,
            config,
            tokenizer,
            group: Mutex::new(group),
            next_seq: AtomicU64::new(1),
            next_step: AtomicU64::new(1),
        })
    }

    /// Asks every worker to exit.
    pub async fn shutdown_workers(&self) {
        self.group.lock().await.shutdown().await;
    }

    fn validate(&self, req: v1::GenerateRequest) -> Result<Job, CoordinatorError> {
        let prompt = match req.prompt {
            Some(v1::generate_request::Prompt::Text(t)) => self.tokenizer.encode(&t, true)?,
            Some(v1::generate_request::Prompt::TokenIds(ids)) => ids.ids,
            None => return Err(invalid("the request has no prompt")),
        };
        if prompt.is_empty() {
            return Err(invalid("the prompt is empty"));
        }
        let vocab = self.config.vocab_size;
        if let Some(t) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(invalid(format!(
                "token id {t} is outside the vocabulary of {vocab} tokens"
            )));
        }
        if req.max_tokens == 0 {
            return Err(invalid("max_tokens must be at least 1"));
        }
        let ctx = self.config.max_position_embeddings;
        let want = prompt.len() as u64 + u64::from(req.max_tokens);
        if want > ctx as u64 {
            return Err(invalid(format!(
                "This model's maximum context length is {ctx} tokens. However, you requested {want} tokens \
                 ({} in the prompt, {} for the completion). Please reduce the prompt or max_tokens.",
                prompt.len(),
                req.max_tokens
            )));
        }
        let s = req.sampling.unwrap_or_default();
        if !s.temperature.is_finite() || s.temperature < 0.0 {
            return Err(invalid(format!(
                "temperature must be a finite number >= 0, got {}",
                s.temperature
            )));
        }
        if !s.top_p.is_finite() || s.top_p < 0.0 || s.top_p > 1.0 {
            return Err(invalid(format!(
                "top_p must lie in (0, 1], got {}",
                s.top_p
            )));
        }
        Ok(Job {
            prompt,
            max_tokens: req.max_tokens,
            sampling: pb::Sampling {
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                seed: s.seed.unwrap_or_else(rand::random),
            },
        })
    }

    async fn run(
        &self,
        job: Job,
        tx: &mpsc::Sender<Result<v1::GenerateResponse, Status>>,
    ) -> Result<(), CoordinatorError> {
        let seq_id = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let group = self.group.lock().await;
        let started = Instant::now();
        let result = self.generate(&group, seq_id, &job, tx).await;
        let release = pb::StepRequest {
            step_id: self.next_step.fetch_add(1, Ordering::Relaxed),
            release_seq_ids: vec![seq_id],
            ..Default::default()
        };
        if let Err(e) = group.step(release).await {
            tracing::warn!(seq_id, error = %e, "releasing the sequence failed");
        }
        match &result {
            Ok((reason, n)) => tracing::info!(
                seq_id,
                prompt_tokens = job.prompt.len(),
                completion_tokens = n,
                finish = ?reason,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "request finished"
            ),
            Err(e) => tracing::warn!(seq_id, error = %e, "request failed"),
        }
        result.map(|_| ())
    }

    async fn generate(
        &self,
        group: &WorkerGroup,
        seq_id: u64,
        job: &Job,
        tx: &mpsc::Sender<Result<v1::GenerateResponse, Status>>,
    ) -> Result<(v1::FinishReason, u32), CoordinatorError> {
        let mut decoder = IncrementalDecoder::new(&self.tokenizer);
        let mut input = job.prompt.clone();
        let mut start_pos = 0u32;
        let mut generated = 0u32;
        loop {
            let step = pb::StepRequest {
                step_id: self.next_step.fetch_add(1, Ordering::Relaxed),
                seqs: vec![pb::SequenceStep {
                    seq_id,
                    tokens: input.clone(),
                    start_pos,
                    sample: true,
                    sampling: Some(job.sampling),
                }],
                ..Default::default()
            };
            let resp = group.step(step).await?;
            let sampled = resp
                .tokens
                .first()
                .ok_or_else(|| CoordinatorError::Unavailable("rank 0 returned no token".into()))?;
            generated += 1;
            start_pos += input.len() as u32;
            let finish = if self.config.eos_token_ids.contains(&sampled.token) {
                Some(v1::FinishReason::Eos)
            } else {
                let text = decoder.push(sampled.token)?;
                let delta = v1::TokenDelta {
                    id: sampled.token,
                    text,
                    logprob: sampled.logprob,
                };
                if !send(tx, v1::generate_response::Event::Token(delta)).await {
                    return Err(CoordinatorError::Unavailable("client went away".into()));
                }
                (generated >= job.max_tokens).then_some(v1::FinishReason::Length)
            };
            if let Some(reason) = finish {
                let done = v1::Finished {
                    reason: reason as i32,
                    usage: Some(v1::Usage {
                        prompt_tokens: job.prompt.len() as u32,
                        completion_tokens: generated,
                    }),
                };
                send(tx, v1::generate_response::Event::Finished(done)).await;
                return Ok((reason, generated));
            }
            input = vec![sampled.token];
        }
    }
}

async fn send(
    tx: &mpsc::Sender<Result<v1::GenerateResponse, Status>>,
    e: v1::generate_response::Event,
) -> bool {
    tx.send(Ok(v1::GenerateResponse { event: Some(e) }))
        .await
        .is_ok()
}

/// gRPC face of the [`ModelRuntime`].
#[derive(Clone)]
pub struct GenerationService(pub Arc<ModelRuntime>);

#[tonic::async_trait]
impl v1::generation_server::Generation for GenerationService {
    type GenerateStreamStream = ReceiverStream<Result<v1::GenerateResponse, Status>>;

    async fn generate_stream(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let req = request.into_inner();
        if !req.model.is_empty() && req.model != self.0.name {
            return Err(Status::not_found(format!(
                "model {:?} is not served here; this server serves {:?}",
                req.model, self.0.name
            )));
        }
        let job = self.0.validate(req)?;
        let (tx, rx) = mpsc::channel(16);
        let rt = self.0.clone();
        tokio::spawn(async move {
            if let Err(e) = rt.run(job, &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
