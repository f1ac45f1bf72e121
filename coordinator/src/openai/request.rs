//! Parsing of OpenAI request bodies. Only what is specific to the OpenAI
//! wire format is checked here (JSON types, roles, content parts, `n`,
//! prompt shapes); ranges and context length are checked by
//! [`crate::api::Api`] like for gRPC.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use weft_proto::v1;

use crate::api::ApiError;

/// Most alternatives the completions API's integer `logprobs` may ask for.
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// What chat and completions requests share.
#[derive(Clone, Debug, PartialEq)]
pub struct Common {
    pub model: String,
    pub n: u32,
    /// `max_completion_tokens` or `max_tokens`; `None`: what the context
    /// leaves.
    pub max_tokens: Option<u32>,
    /// Sampling of choice 0 (choice i adds i to a given seed).
    pub sampling: v1::SamplingParams,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Whether to report logprobs, and how many alternatives per token.
    pub logprobs: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
}

impl Common {
    /// The sampling parameters of choice `i`.
    pub fn sampling_for(&self, i: u32) -> v1::SamplingParams {
        let mut s = self.sampling;
        s.seed = s.seed.map(|seed| seed.wrapping_add(u64::from(i)));
        s
    }
}

/// A `/v1/chat/completions` request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatParams {
    pub common: Common,
    pub messages: Vec<v1::ChatMessage>,
}

/// A completions prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// A `/v1/completions` request.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionParams {
    pub common: Common,
    pub prompt: Prompt,
}

/// A request body: a JSON object whose fields are read one by one, so an
/// error names the field.
struct Body(Map<String, Value>);

impl Body {
    fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
        match v {
            Value::Object(m) => Ok(Body(m)),
            _ => Err(ApiError::invalid("the request body must be a JSON object")),
        }
    }

    fn raw(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// The field `name` as a `T`; absent and `null` are `None`.
    fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.raw(name)
            .map(|v| T::deserialize(v).map_err(|e| ApiError::invalid(format!("`{name}`: {e}"))))
            .transpose()
    }
}

fn common(body: &Body, max_n: u32) -> Result<Common, ApiError> {
    let n = body.get::<u32>("n")?.unwrap_or(1);
    if n == 0 || n > max_n {
        return Err(ApiError::invalid(format!(
            "`n` must lie in [1, {max_n}], got {n}"
        )));
    }
    let max_tokens = match body.get::<u32>("max_completion_tokens")? {
        Some(m) => Some(m),
        None => body.get::<u32>("max_tokens")?,
    };
    let stop = match body.raw("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(v) => Vec::<String>::deserialize(v)
            .map_err(|_| ApiError::invalid("`stop` must be a string or an array of strings"))?,
    };
    let stream = body.get::<bool>("stream")?.unwrap_or(false);
    let include_usage = match body.raw("stream_options") {
        Some(v) => v
            .get("include_usage")
            .filter(|u| !u.is_null())
            .map(|u| {
                u.as_bool().ok_or_else(|| {
                    ApiError::invalid("`stream_options.include_usage` must be a boolean")
                })
            })
            .transpose()?
            .unwrap_or(false),
        None => false,
    };
    if body.get::<bool>("echo")?.unwrap_or(false) {
        return Err(ApiError::invalid("`echo` is not supported"));
    }
    if body
        .get::<Map<String, Value>>("logit_bias")?
        .is_some_and(|m| !m.is_empty())
    {
        return Err(ApiError::invalid("`logit_bias` is not supported"));
    }
    Ok(Common {
        model: body.get::<String>("model")?.unwrap_or_default(),
        n,
        max_tokens,
        sampling: sampling(body)?,
        stop,
        stop_token_ids: body.get("stop_token_ids")?.unwrap_or_default(),
        ignore_eos: body.get("ignore_eos")?.unwrap_or(false),
        logprobs: None,
        stream,
        include_usage,
    })
}

fn sampling(body: &Body) -> Result<v1::SamplingParams, ApiError> {
    let seed = match body.raw("seed") {
        None => None,
        // Negative seeds are accepted (as two's complement).
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|s| s as u64))
                .ok_or_else(|| ApiError::invalid("`seed` must be an integer"))?,
        ),
    };
    Ok(v1::SamplingParams {
        // OpenAI's default temperature is 1; 0 selects greedy decoding.
        temperature: body.get("temperature")?.unwrap_or(1.0),
        top_k: top_k(body)?,
        top_p: body.get("top_p")?.unwrap_or(1.0),
        seed,
        min_p: body.get("min_p")?.unwrap_or(0.0),
        repetition_penalty: body.get("repetition_penalty")?.unwrap_or(1.0),
        presence_penalty: body.get("presence_penalty")?.unwrap_or(0.0),
        frequency_penalty: body.get("frequency_penalty")?.unwrap_or(0.0),
    })
}

/// `top_k`: vLLM's -1 (and 0) mean off.
fn top_k(body: &Body) -> Result<u32, ApiError> {
    match body.get::<i64>("top_k")? {
        None | Some(-1) | Some(0) => Ok(0),
        Some(k) => u32::try_from(k)
            .map_err(|_| ApiError::invalid(format!("`top_k` must be -1, 0 or positive, got {k}"))),
    }
}

/// Parses a `/v1/chat/completions` body.
pub fn chat(bytes: &[u8], max_n: u32, max_top_logprobs: u32) -> Result<ChatParams, ApiError> {
    let body = Body::parse(bytes)?;
    let mut common = common(&body, max_n)?;
    let top = body.get::<u32>("top_logprobs")?.unwrap_or(0);
    if top > max_top_logprobs {
        return Err(ApiError::invalid(format!(
            "`top_logprobs` must lie in [0, {max_top_logprobs}], got {top}"
        )));
    }
    if body.get::<bool>("logprobs")?.unwrap_or(false) {
        common.logprobs = Some(top);
    } else if top > 0 {
        return Err(ApiError::invalid(
            "`top_logprobs` needs `logprobs` set to true",
        ));
    }
    unsupported_chat_features(&body)?;
    let messages = match body.raw("messages") {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(ApiError::invalid("`messages` must be an array")),
        None => return Err(ApiError::invalid("`messages` is required")),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must hold at least one message",
        ));
    }
    Ok(ChatParams { common, messages })
}

/// Features a client relies on for the shape of the answer are refused,
/// not ignored: an answer without the tool call or JSON it asked for
/// would fail later, far from the cause.
fn unsupported_chat_features(body: &Body) -> Result<(), ApiError> {
    let tools = body
        .raw("tools")
        .is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()));
    if tools {
        return Err(ApiError::invalid(
            "`tools` (function calling) is not supported by this server",
        ));
    }
    if let Some(rf) = body.raw("response_format").filter(|v| !v.is_null()) {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::invalid(
                "`response_format` other than {\"type\": \"text\"} is not supported by this server",
            ));
        }
    }
    Ok(())
}

fn message(i: usize, m: &Value) -> Result<v1::ChatMessage, ApiError> {
    let Value::Object(m) = m else {
        return Err(ApiError::invalid(format!(
            "messages[{i}] must be an object"
        )));
    };
    let role = match m.get("role") {
        Some(Value::String(r)) => match r.as_str() {
            "system" | "developer" => v1::Role::System,
            "user" => v1::Role::User,
            "assistant" => v1::Role::Assistant,
            "tool" => v1::Role::Tool,
            other => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role must be one of system, developer, user, assistant, tool; got {:?}",
                    truncated(other)
                )))
            }
        },
        Some(_) => return Err(ApiError::invalid(format!("messages[{i}].role must be a string"))),
        None => return Err(ApiError::invalid(format!("messages[{i}].role is required"))),
    };
    let content = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => text_parts(i, parts)?,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "messages[{i}].content must be a string or an array of text parts"
            )))
        }
    };
    Ok(v1::ChatMessage {
        role: role as i32,
        content,
    })
}

/// Joins `[{"type": "text", "text": ...}]` parts with newlines.
fn text_parts(i: usize, parts: &[Value]) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let kind = p.get("type").and_then(Value::as_str);
        match (kind, p.get("text")) {
            (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
            (Some("text"), _) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].content[{j}].text must be a string"
                )))
            }
            (Some(other), _) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].content[{j}]: only text parts are supported, got type {:?}",
                    truncated(other)
                )))
            }
            (None, _) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].content[{j}] must be an object with a string `type`"
                )))
            }
        }
    }
    Ok(texts.join("\n"))
}

/// Client text echoed in an error, cut short.
fn truncated(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses a `/v1/completions` body.
pub fn completion(bytes: &[u8], max_n: u32) -> Result<CompletionParams, ApiError> {
    let body = Body::parse(bytes)?;
    let mut common = common(&body, max_n)?;
    if let Some(k) = body.get::<u32>("logprobs")? {
        if k > MAX_COMPLETION_LOGPROBS {
            return Err(ApiError::invalid(format!(
                "`logprobs` must lie in [0, {MAX_COMPLETION_LOGPROBS}], got {k}"
            )));
        }
        common.logprobs = Some(k);
    }
    let prompt = prompt(body.raw("prompt"))?;
    Ok(CompletionParams { common, prompt })
}

const BATCH: &str = "batching prompts is not supported: send one prompt per request";
const PROMPT_SHAPE: &str =
    "`prompt` must be a string, an array of token ids, or an array holding one of either";

fn prompt(v: Option<&Value>) -> Result<Prompt, ApiError> {
    let items = match v {
        None => return Err(ApiError::invalid("`prompt` is required")),
        Some(Value::String(s)) => return Ok(Prompt::Text(s.clone())),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid(PROMPT_SHAPE)),
    };
    match items.first() {
        None => Err(ApiError::invalid("`prompt` must not be empty")),
        Some(Value::Number(_)) => Ok(Prompt::Ids(token_ids(v)?)),
        Some(_) if items.len() > 1 => Err(ApiError::invalid(BATCH)),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(inner @ Value::Array(_)) => Ok(Prompt::Ids(token_ids(Some(inner))?)),
        Some(_) => Err(ApiError::invalid(PROMPT_SHAPE)),
    }
}

fn token_ids(v: Option<&Value>) -> Result<Vec<u32>, ApiError> {
    let v = v.ok_or_else(|| ApiError::invalid(PROMPT_SHAPE))?;
    Vec::<u32>::deserialize(v).map_err(|_| {
        ApiError::invalid("`prompt` token ids must be non-negative integers below 2^32")
    })
}
