//! Validation of client requests, before admission: every problem is an
//! `INVALID_ARGUMENT` with a message saying what to change, and nothing
//! else in flight is touched.

use weft_model::config::ModelConfig;
use weft_model::tokenizer::Tokenizer;
use weft_proto::cluster::v1 as pb;
use weft_proto::v1;

use crate::CoordinatorError;

/// Bounds on what one request may ask for.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Context length (prompt + completion).
    pub max_model_len: usize,
    /// KV-cache capacity in tokens (a sequence must fit alone).
    pub kv_capacity_tokens: usize,
    pub max_stop_strings: usize,
    pub max_stop_string_bytes: usize,
    pub max_stop_token_ids: usize,
    pub max_top_logprobs: u32,
}

impl RequestLimits {
    pub fn new(max_model_len: usize, kv_capacity_tokens: usize) -> Self {
        RequestLimits {
            max_model_len,
            kv_capacity_tokens,
            max_stop_strings: 8,
            max_stop_string_bytes: 256,
            max_stop_token_ids: 32,
            max_top_logprobs: 20,
        }
    }
}

/// A request that passed validation.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
    pub sampling: pb::Sampling,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Chat with a reasoning model: split `<think>` ... `</think>` from the
    /// answer; `Some(true)` when the prompt already opened the tag.
    pub reasoning: Option<bool>,
    /// The client's W3C trace context, passed on to the workers.
    pub traceparent: Option<String>,
    /// The request's tracing span (never holds prompt text).
    pub span: tracing::Span,
    /// A request of the server itself (the startup canary): not counted
    /// in the metrics.
    pub internal: bool,
}

fn invalid(msg: impl Into<String>) -> CoordinatorError {
    CoordinatorError::InvalidArgument(msg.into())
}

fn check_range(name: &str, v: f32, lo: f32, hi: f32) -> Result<(), CoordinatorError> {
    if !v.is_finite() || v < lo || v > hi {
        return Err(invalid(format!("{name} must lie in [{lo}, {hi}], got {v}")));
    }
    Ok(())
}

/// Validates and tokenizes a client request.
pub fn validate(
    req: v1::GenerateRequest,
    cfg: &ModelConfig,
    tokenizer: &Tokenizer,
    limits: &RequestLimits,
) -> Result<GenRequest, CoordinatorError> {
    let prompt = match req.prompt {
        Some(v1::generate_request::Prompt::Text(t)) => tokenizer.encode(&t, true)?,
        Some(v1::generate_request::Prompt::TokenIds(ids)) => ids.ids,
        None => return Err(invalid("the request has no prompt")),
    };
    if prompt.is_empty() {
        return Err(invalid("the prompt is empty"));
    }
    let vocab = cfg.vocab_size;
    if let Some(t) = prompt
        .iter()
        .chain(&req.stop_token_ids)
        .find(|&&t| t as usize >= vocab)
    {
        return Err(invalid(format!(
            "token id {t} is outside the vocabulary of {vocab} tokens"
        )));
    }
    check_lengths(prompt.len(), req.max_tokens, limits)?;
    let sampling = check_sampling(req.sampling.unwrap_or_default(), req.top_logprobs, limits)?;
    check_stops(&req.stop, &req.stop_token_ids, limits)?;
    Ok(GenRequest {
        prompt,
        max_tokens: req.max_tokens,
        sampling,
        stop: req.stop,
        stop_token_ids: req.stop_token_ids,
        ignore_eos: req.ignore_eos,
        reasoning: None,
        traceparent: None,
        span: tracing::Span::none(),
        internal: false,
    })
}

fn check_lengths(
    prompt: usize,
    max_tokens: u32,
    limits: &RequestLimits,
) -> Result<(), CoordinatorError> {
    if max_tokens == 0 {
        return Err(invalid("max_tokens must be at least 1"));
    }
    let ctx = limits.max_model_len;
    let want = prompt as u64 + u64::from(max_tokens);
    if want > ctx as u64 {
        return Err(invalid(format!(
            "This model's maximum context length is {ctx} tokens. However, you requested {want} tokens \
             ({prompt} in the prompt, {max_tokens} for the completion). Please reduce the prompt or max_tokens."
        )));
    }
    if want > limits.kv_capacity_tokens as u64 {
        return Err(invalid(format!(
            "the request needs {want} tokens of KV cache but the whole cache holds {} tokens; \
             reduce the prompt or max_tokens",
            limits.kv_capacity_tokens
        )));
    }
    Ok(())
}

fn check_sampling(
    s: v1::SamplingParams,
    top_logprobs: u32,
    limits: &RequestLimits,
) -> Result<pb::Sampling, CoordinatorError> {
    if !s.temperature.is_finite() || s.temperature < 0.0 {
        return Err(invalid(format!(
            "temperature must be a finite number >= 0, got {}",
            s.temperature
        )));
    }
    // 0 is proto3's "unset" and means off; otherwise (0, 1].
    if !s.top_p.is_finite() || s.top_p < 0.0 || s.top_p > 1.0 {
        return Err(invalid(format!(
            "top_p must lie in (0, 1], got {}",
            s.top_p
        )));
    }
    check_range("min_p", s.min_p, 0.0, 1.0)?;
    check_range("presence_penalty", s.presence_penalty, -2.0, 2.0)?;
    check_range("frequency_penalty", s.frequency_penalty, -2.0, 2.0)?;
    if !s.repetition_penalty.is_finite()
        || s.repetition_penalty < 0.0
        || s.repetition_penalty > 10.0
    {
        return Err(invalid(format!(
            "repetition_penalty must lie in (0, 10] (0 = off), got {}",
            s.repetition_penalty
        )));
    }
    if top_logprobs > limits.max_top_logprobs {
        return Err(invalid(format!(
            "top_logprobs must be at most {}, got {top_logprobs}",
            limits.max_top_logprobs
        )));
    }
    Ok(pb::Sampling {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        seed: s.seed.unwrap_or_else(rand::random),
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        top_logprobs,
    })
}

fn check_stops(
    stop: &[String],
    stop_ids: &[u32],
    limits: &RequestLimits,
) -> Result<(), CoordinatorError> {
    if stop.len() > limits.max_stop_strings {
        return Err(invalid(format!(
            "at most {} stop strings are allowed, got {}",
            limits.max_stop_strings,
            stop.len()
        )));
    }
    if let Some(s) = stop
        .iter()
        .find(|s| s.is_empty() || s.len() > limits.max_stop_string_bytes)
    {
        return Err(invalid(format!(
            "each stop string must have 1 to {} bytes, got {}",
            limits.max_stop_string_bytes,
            s.len()
        )));
    }
    if stop_ids.len() > limits.max_stop_token_ids {
        return Err(invalid(format!(
            "at most {} stop token ids are allowed, got {}",
            limits.max_stop_token_ids,
            stop_ids.len()
        )));
    }
    Ok(())
}
