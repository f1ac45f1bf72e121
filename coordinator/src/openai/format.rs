//! The JSON shapes of OpenAI responses: whole bodies, stream chunks,
//! logprobs, usage and model cards.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use weft_model::tokenizer::Tokenizer;
use weft_proto::v1;

use crate::api::{Api, ApiError};

/// Which API a response belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// What every body and chunk of one response repeats.
#[derive(Clone, Debug)]
pub struct Meta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: i64,
    pub model: String,
}

impl Meta {
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Meta {
            endpoint,
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created,
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("object".into(), json!(self.object(chunk)));
        m.insert("created".into(), json!(self.created));
        m.insert("model".into(), json!(self.model));
        m.insert("choices".into(), Value::Array(choices));
        m
    }

    /// A stream chunk holding one choice; `usage: null` when the stream
    /// ends with a usage chunk.
    pub fn chunk(&self, choice: Value, include_usage: bool) -> Value {
        let mut m = self.envelope(true, vec![choice]);
        if include_usage {
            m.insert("usage".into(), Value::Null);
        }
        Value::Object(m)
    }

    /// The last chunk of a stream with `include_usage`: no choices.
    pub fn usage_chunk(&self, usage: Value) -> Value {
        let mut m = self.envelope(true, Vec::new());
        m.insert("usage".into(), usage);
        Value::Object(m)
    }

    /// A whole (non-streamed) response.
    pub fn body(&self, choices: Vec<Value>, usage: Value) -> Value {
        let mut m = self.envelope(false, choices);
        m.insert("usage".into(), usage);
        Value::Object(m)
    }
}

/// OpenAI's finish reason: end of sequence and stop strings or ids are
/// both "stop".
pub fn finish_reason(f: &v1::Finished) -> &'static str {
    match v1::FinishReason::try_from(f.reason) {
        Ok(v1::FinishReason::Length) => "length",
        _ => "stop",
    }
}

/// Usage of a response: the prompt counted once, completions summed.
pub fn usage<'a>(finished: impl IntoIterator<Item = &'a v1::Finished>) -> Value {
    let (mut prompt, mut cached, mut completion) = (None, 0, 0u64);
    for u in finished.into_iter().filter_map(|f| f.usage.as_ref()) {
        if prompt.is_none() {
            prompt = Some(u64::from(u.prompt_tokens));
            cached = u.cached_prompt_tokens;
        }
        completion += u64::from(u.completion_tokens);
    }
    let prompt = prompt.unwrap_or(0);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// An error sent inside a stream that already started.
pub fn error_event(e: &ApiError) -> Value {
    json!({
        "error": {
            "message": e.message,
            "type": e.openai_type(),
            "param": null,
            "code": e.http_status(),
        }
    })
}

/// A logprob as JSON: `-inf` (not representable) becomes -9999 as in vLLM.
fn logprob(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id]).unwrap_or_default()
}

/// Logprobs gathered for a run of tokens, in the shape of one endpoint.
#[derive(Debug)]
pub enum Logprobs {
    /// `{"content": [{token, logprob, bytes, top_logprobs}]}`.
    Chat(Vec<Value>),
    /// `{tokens, token_logprobs, top_logprobs: [{token: logprob}],
    /// text_offset}`.
    Completion {
        tokens: Vec<String>,
        token_logprobs: Vec<f32>,
        top_logprobs: Vec<Map<String, Value>>,
        text_offset: Vec<usize>,
    },
}

impl Logprobs {
    pub fn new(endpoint: Endpoint) -> Self {
        match endpoint {
            Endpoint::Chat => Logprobs::Chat(Vec::new()),
            Endpoint::Completion => Logprobs::Completion {
                tokens: Vec::new(),
                token_logprobs: Vec::new(),
                top_logprobs: Vec::new(),
                text_offset: Vec::new(),
            },
        }
    }

    /// Adds a token whose text starts `offset` characters into the output.
    pub fn push(&mut self, t: &v1::TokenDelta, offset: usize, tokenizer: &Tokenizer) {
        let text = token_text(tokenizer, t.id);
        match self {
            Logprobs::Chat(content) => {
                let top: Vec<Value> = t
                    .top_logprobs
                    .iter()
                    .map(|a| {
                        json!({"token": a.text, "logprob": logprob(a.logprob), "bytes": a.text.as_bytes()})
                    })
                    .collect();
                content.push(json!({
                    "token": text,
                    "logprob": logprob(t.logprob),
                    "bytes": text.as_bytes(),
                    "top_logprobs": top,
                }));
            }
            Logprobs::Completion {
                tokens,
                token_logprobs,
                top_logprobs,
                text_offset,
            } => {
                // The alternatives, best first, and the sampled token
                // (OpenAI: up to logprobs + 1 entries).
                let mut top = Map::new();
                for a in &t.top_logprobs {
                    top.entry(a.text.clone())
                        .or_insert_with(|| json!(logprob(a.logprob)));
                }
                top.entry(text.clone())
                    .or_insert_with(|| json!(logprob(t.logprob)));
                tokens.push(text);
                token_logprobs.push(logprob(t.logprob));
                top_logprobs.push(top);
                text_offset.push(offset);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Logprobs::Chat(c) => c.is_empty(),
            Logprobs::Completion { tokens, .. } => tokens.is_empty(),
        }
    }

    /// The JSON of what was gathered; leaves this empty.
    pub fn take(&mut self) -> Value {
        match self {
            Logprobs::Chat(c) => json!({"content": std::mem::take(c)}),
            Logprobs::Completion {
                tokens,
                token_logprobs,
                top_logprobs,
                text_offset,
            } => json!({
                "tokens": std::mem::take(tokens),
                "token_logprobs": std::mem::take(token_logprobs),
                "top_logprobs": std::mem::take(top_logprobs),
                "text_offset": std::mem::take(text_offset),
            }),
        }
    }
}

/// One choice of a whole response.
pub fn reply_choice(
    endpoint: Endpoint,
    index: usize,
    reply: &v1::GenerateReply,
    logprobs: bool,
    tokenizer: &Tokenizer,
) -> Value {
    let lp = if logprobs {
        let mut acc = Logprobs::new(endpoint);
        let mut offset = 0;
        for t in &reply.tokens {
            acc.push(t, offset, tokenizer);
            offset += t.text.chars().count();
        }
        acc.take()
    } else {
        Value::Null
    };
    let reason = reply.finished.as_ref().map_or("stop", finish_reason);
    match endpoint {
        Endpoint::Chat => {
            let mut message = Map::new();
            message.insert("role".into(), json!("assistant"));
            message.insert("content".into(), json!(reply.text));
            if !reply.reasoning_text.is_empty() {
                message.insert("reasoning_content".into(), json!(reply.reasoning_text));
            }
            json!({"index": index, "message": message, "logprobs": lp, "finish_reason": reason})
        }
        Endpoint::Completion => {
            json!({"index": index, "text": reply.text, "logprobs": lp, "finish_reason": reason})
        }
    }
}

/// The served model as `/v1/models` lists it.
pub fn model_card(api: &Api) -> Value {
    json!({
        "id": api.model.name,
        "object": "model",
        "created": api.model.created,
        "owned_by": "weft",
        "max_model_len": api.model.limits.max_model_len,
    })
}
