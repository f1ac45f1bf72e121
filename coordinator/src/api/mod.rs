//! What both client APIs (gRPC `weft.v1` and the OpenAI-compatible HTTP
//! API) share: the served model, request validation, chat templating,
//! submission to the scheduler, health, metrics and API keys.

mod error;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::mpsc;
use tonic::Status;
use weft_model::chat::{self, ChatTemplate};
use weft_model::config::ModelConfig;
use weft_model::tokenizer::Tokenizer;
use weft_proto::v1;

pub use error::{ApiError, ErrorKind};

use crate::auth::ApiKeys;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::request::{validate, GenRequest, RequestLimits};
use crate::scheduler::SchedulerHandle;
use crate::trace::TraceParent;

/// A request's stream of events, as the scheduler sends them.
pub type EventRx = mpsc::Receiver<Result<v1::GenerateResponse, Status>>;

/// The served model, known as soon as the checkpoint is open.
pub struct ServedModel {
    pub name: String,
    pub config: ModelConfig,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    /// Whether chat output is split into reasoning and answer.
    pub reasoning: bool,
    pub limits: RequestLimits,
    pub tensor_parallel: usize,
    /// Unix seconds when the server loaded the model.
    pub created: i64,
}

/// Settings of the client APIs.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub keys: ApiKeys,
    /// Whether `/health`, `/metrics` and `grpc.health.v1` need a key too.
    pub auth_health: bool,
    /// Largest `n` (completions per request) the HTTP API accepts.
    pub max_n: u32,
}

/// Per-request context from the transport.
#[derive(Clone, Debug, Default)]
pub struct RequestCtx {
    pub deadline: Option<Instant>,
    pub trace: Option<TraceParent>,
    /// The server's own request (the startup canary): not in the metrics.
    pub internal: bool,
}

impl RequestCtx {
    /// From the transport's deadline and `traceparent` (ignored unless
    /// valid); logs the request's arrival at debug level (no content).
    pub fn new(
        deadline: Option<Instant>,
        traceparent: Option<&str>,
        api: &'static str,
        kind: &'static str,
    ) -> Self {
        let trace = traceparent.and_then(TraceParent::parse);
        tracing::debug!(
            api,
            kind,
            trace_id = trace.as_ref().map_or("", |t| t.trace_id.as_str()),
            "request"
        );
        RequestCtx {
            deadline,
            trace,
            internal: false,
        }
    }
}

/// The shared state behind both client APIs.
pub struct Api {
    pub model: ServedModel,
    pub config: ApiConfig,
    pub metrics: Arc<Metrics>,
    pub health: Health,
    scheduler: OnceLock<SchedulerHandle>,
    /// K/V capacity in tokens, known once the group has loaded.
    kv_capacity: AtomicUsize,
}

impl Api {
    pub fn new(model: ServedModel, config: ApiConfig, health: Health) -> Arc<Self> {
        let metrics = Metrics::new(&model.name);
        Arc::new(Api {
            model,
            config,
            metrics,
            health,
            scheduler: OnceLock::new(),
            kv_capacity: AtomicUsize::new(0),
        })
    }

    /// Sets the group's K/V capacity (tokens); requests are validated
    /// against it from then on.
    pub fn set_kv_capacity(&self, tokens: usize) {
        self.kv_capacity.store(tokens, Ordering::Relaxed);
    }

    /// The request limits as of now.
    pub fn limits(&self) -> RequestLimits {
        let mut l = self.model.limits.clone();
        match self.kv_capacity.load(Ordering::Relaxed) {
            0 => {}
            n => l.kv_capacity_tokens = n,
        }
        l
    }

    /// Connects the scheduler once the group is loaded; before that every
    /// generation is UNAVAILABLE.
    pub fn attach(&self, scheduler: SchedulerHandle) {
        let _ = self.scheduler.set(scheduler);
    }

    pub fn scheduler(&self) -> Result<&SchedulerHandle, ApiError> {
        self.scheduler.get().ok_or_else(|| {
            ApiError::unavailable(format!(
                "the model is not loaded yet: {}",
                self.health.state().reason
            ))
        })
    }

    /// NOT_FOUND unless `name` is empty or the served model's name.
    pub fn check_model(&self, name: &str) -> Result<(), ApiError> {
        if name.is_empty() || name == self.model.name {
            return Ok(());
        }
        Err(ApiError::not_found(format!(
            "The model `{name}` does not exist; this server serves `{}`",
            self.model.name
        )))
    }

    /// Renders a conversation with the chat template and tokenizes it.
    /// Returns the prompt ids and, for a reasoning model, whether the
    /// prompt already opened the `<think>` tag.
    pub fn chat_prompt(
        &self,
        messages: &[v1::ChatMessage],
    ) -> Result<(Vec<u32>, Option<bool>), ApiError> {
        let template = self.model.template.as_ref().ok_or_else(|| {
            ApiError::invalid(
                "this model has no chat template; use completions (Generate) with a prompt instead",
            )
        })?;
        if messages.is_empty() {
            return Err(ApiError::invalid("messages must hold at least one message"));
        }
        let msgs = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = match v1::Role::try_from(m.role) {
                    Ok(v1::Role::System) => chat::Role::System,
                    Ok(v1::Role::User) => chat::Role::User,
                    Ok(v1::Role::Assistant) => chat::Role::Assistant,
                    Ok(v1::Role::Tool) => chat::Role::Tool,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "messages[{i}].role must be system, user, assistant or tool"
                        )))
                    }
                };
                Ok(chat::ChatMessage {
                    role,
                    content: m.content.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let text = template.render(&msgs, true).map_err(|e| match e {
            chat::TemplateError::Raised(msg) => ApiError::invalid(msg),
            other => ApiError::invalid(format!("the chat template failed: {other}")),
        })?;
        // The template writes the special tokens (BOS included) itself.
        let ids = self
            .model
            .tokenizer
            .encode(&text, false)
            .map_err(|e| ApiError::invalid(format!("tokenizer: {e}")))?;
        let reasoning = self
            .model
            .reasoning
            .then(|| chat::prompt_opens_reasoning(&text));
        Ok((ids, reasoning))
    }

    /// Validates a completion request and queues it.
    pub async fn generate(
        &self,
        req: v1::GenerateRequest,
        ctx: &RequestCtx,
    ) -> Result<EventRx, ApiError> {
        self.check_model(&req.model)?;
        let m = &self.model;
        let job = validate(req, &m.config, &m.tokenizer, &self.limits())?;
        self.submit(job, ctx).await
    }

    /// Validates a chat request, applies the template and queues it.
    pub async fn chat(&self, req: v1::ChatRequest, ctx: &RequestCtx) -> Result<EventRx, ApiError> {
        self.check_model(&req.model)?;
        let (ids, reasoning) = self.chat_prompt(&req.messages)?;
        let gen = v1::GenerateRequest {
            model: req.model,
            prompt: Some(v1::generate_request::Prompt::TokenIds(v1::TokenIds { ids })),
            max_tokens: req.max_tokens,
            sampling: req.sampling,
            stop: req.stop,
            stop_token_ids: req.stop_token_ids,
            ignore_eos: req.ignore_eos,
            top_logprobs: req.top_logprobs,
        };
        let m = &self.model;
        let mut job = validate(gen, &m.config, &m.tokenizer, &self.limits())?;
        job.reasoning = reasoning;
        self.submit(job, ctx).await
    }

    async fn submit(&self, mut job: GenRequest, ctx: &RequestCtx) -> Result<EventRx, ApiError> {
        let scheduler = self.scheduler()?;
        job.traceparent = ctx.trace.as_ref().map(TraceParent::header);
        job.internal = ctx.internal;
        job.span = tracing::debug_span!(
            "request",
            trace_id = ctx.trace.as_ref().map_or("", |t| t.trace_id.as_str()),
            prompt_tokens = job.prompt.len(),
            max_tokens = job.max_tokens,
        );
        job.span.in_scope(|| tracing::debug!("request accepted"));
        // Room for every token plus the final message and an error, so the
        // scheduler never waits on a slow client.
        let (tx, rx) = mpsc::channel(job.max_tokens as usize + 2);
        scheduler.submit(job, tx, ctx.deadline).await?;
        Ok(rx)
    }

    pub fn tokenize(&self, req: v1::TokenizeRequest) -> Result<v1::TokenizeResponse, ApiError> {
        self.check_model(&req.model)?;
        let ids = match req.input {
            Some(v1::tokenize_request::Input::Text(t)) => self
                .model
                .tokenizer
                .encode(&t, true)
                .map_err(|e| ApiError::invalid(format!("tokenizer: {e}")))?,
            Some(v1::tokenize_request::Input::Messages(m)) => self.chat_prompt(&m.messages)?.0,
            None => return Err(ApiError::invalid("give text or messages to tokenize")),
        };
        Ok(v1::TokenizeResponse {
            ids,
            max_model_len: self.model.limits.max_model_len as u32,
        })
    }

    pub fn detokenize(
        &self,
        req: v1::DetokenizeRequest,
    ) -> Result<v1::DetokenizeResponse, ApiError> {
        self.check_model(&req.model)?;
        let vocab = self.model.config.vocab_size;
        if let Some(t) = req.ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid(format!(
                "token id {t} is outside the vocabulary of {vocab} tokens"
            )));
        }
        let text = self
            .model
            .tokenizer
            .decode(&req.ids)
            .map_err(|e| ApiError::invalid(format!("tokenizer: {e}")))?;
        Ok(v1::DetokenizeResponse { text })
    }

    pub fn model_info(&self) -> v1::ModelInfo {
        let m = &self.model;
        let c = &m.config;
        v1::ModelInfo {
            name: m.name.clone(),
            architecture: format!("{:?}", c.arch).to_lowercase(),
            max_model_len: m.limits.max_model_len as u32,
            vocab_size: c.vocab_size as u32,
            tensor_parallel_size: m.tensor_parallel as u32,
            num_layers: c.num_layers as u32,
            hidden_size: c.hidden_size as u32,
            num_attention_heads: c.num_heads as u32,
            num_kv_heads: c.num_kv_heads as u32,
            eos_token_ids: c.eos_token_ids.clone(),
            has_chat_template: m.template.is_some(),
            reasoning: m.reasoning,
            created: m.created,
        }
    }
}

/// Drains a request's events into one reply (unary Generate and Chat).
pub async fn collect(mut rx: EventRx) -> Result<v1::GenerateReply, ApiError> {
    let mut reply = v1::GenerateReply::default();
    while let Some(ev) = rx.recv().await {
        match ev?.event {
            Some(v1::generate_response::Event::Token(t)) => {
                reply.text.push_str(&t.text);
                reply.reasoning_text.push_str(&t.reasoning_text);
                reply.tokens.push(t);
            }
            Some(v1::generate_response::Event::Finished(f)) => {
                reply.text.push_str(&f.trailing_text);
                reply.reasoning_text.push_str(&f.trailing_reasoning_text);
                reply.finished = Some(f);
                return Ok(reply);
            }
            None => {}
        }
    }
    Err(ApiError::unavailable(
        "the request ended without a result (the server is shutting down)",
    ))
}
