//! An OpenAI-compatible server's `POST /v1/completions` (text or token-id
//! prompts) and `POST /v1/chat/completions` (conversations), streamed as SSE
//! (vLLM, llama.cpp's llama-server, ...).

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};

use super::sse::{SseEvent, SseParser};
use super::{GenRequest, Prompt, Recorder, RequestError, Target, Timeline};

/// An OpenAI-compatible completions server.
#[derive(Debug, Clone)]
pub struct OpenAiTarget {
    client: reqwest::Client,
    base_url: String,
    model: String,
}

impl OpenAiTarget {
    /// Prepares requests to `base_url`. Without `model`, asks the server's
    /// `GET /v1/models` and uses the first model it lists.
    pub async fn connect(base_url: &str, model: Option<String>) -> anyhow::Result<Self> {
        // No connection reuse: llama.cpp's server (cpp-httplib) may close a
        // kept-alive connection after a streamed response without saying
        // so, and the next request on it then fails with "connection closed
        // before message completed". A fresh loopback connection per request
        // costs well under a millisecond.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        let model = match model {
            Some(m) => m,
            None => first_model(&client, base_url).await?,
        };
        Ok(Self {
            client,
            base_url: base_url.to_string(),
            model,
        })
    }

    async fn run(&self, req: GenRequest) -> Result<Timeline, RequestError> {
        let mut body = json!({
            "model": self.model,
            "max_tokens": req.max_tokens,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true},
            "ignore_eos": true,
        });
        let route = match req.prompt {
            Prompt::Text(text) => {
                body["prompt"] = json!(text);
                "completions"
            }
            Prompt::Ids(ids) => {
                body["prompt"] = json!(ids);
                "completions"
            }
            Prompt::Chat(messages) => {
                body["messages"] = json!(messages);
                "chat/completions"
            }
        };
        let url = format!("{}/v1/{route}", self.base_url);
        let mut rec = Recorder::start();
        let resp = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(RequestError::new(
                format!("http_{}", status.as_u16()),
                truncate(&text, 300),
            ));
        }
        let mut parser = SseParser::default();
        let mut body = resp.bytes_stream();
        let mut done = false;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(transport_error)?;
            for event in parser.push(&chunk) {
                done |= on_event(event, &mut rec)?;
            }
        }
        for event in parser.finish() {
            done |= on_event(event, &mut rec)?;
        }
        if !done {
            return Err(RequestError::new(
                "incomplete_stream",
                "stream ended without data: [DONE]",
            ));
        }
        rec.finish()
    }
}

impl Target for OpenAiTarget {
    fn generate(&self, req: GenRequest) -> BoxFuture<'_, Result<Timeline, RequestError>> {
        self.run(req).boxed()
    }
}

/// Applies one SSE event to the timeline; `true` at `data: [DONE]`.
fn on_event(event: SseEvent, rec: &mut Recorder) -> Result<bool, RequestError> {
    let data = match event {
        SseEvent::Data(d) => d,
        SseEvent::Error(e) => return Err(RequestError::new("stream_error", truncate(&e, 300))),
    };
    match parse_chunk(&data)? {
        Chunk::Done => return Ok(true),
        Chunk::Completion {
            text,
            prompt_tokens,
            completion_tokens,
        } => {
            if !text.is_empty() {
                rec.token(&text);
            }
            if let Some(n) = completion_tokens {
                rec.usage(prompt_tokens, n);
            }
        }
    }
    Ok(false)
}

/// What one `data:` payload of a completions stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// `[DONE]`: the stream is over.
    Done,
    /// A completion (or chat completion) chunk.
    Completion {
        /// The text of its choices (completions: `text`; chat:
        /// `delta.reasoning_content` then `delta.content`); non-empty text
        /// counts as a token event.
        text: String,
        /// `usage.prompt_tokens`, in the final chunk when usage is on.
        prompt_tokens: Option<u64>,
        /// `usage.completion_tokens`, in the final chunk when usage is on.
        completion_tokens: Option<u64>,
    },
}

/// Interprets one `data:` payload.
pub fn parse_chunk(data: &str) -> Result<Chunk, RequestError> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Chunk::Done);
    }
    let v: Value = serde_json::from_str(data)
        .map_err(|e| RequestError::new("bad_chunk", format!("{e}: {}", truncate(data, 200))))?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(RequestError::new(
            "stream_error",
            truncate(&err.to_string(), 300),
        ));
    }
    let mut text = String::new();
    for choice in v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for pointer in ["/text", "/delta/reasoning_content", "/delta/content"] {
            if let Some(t) = choice.pointer(pointer).and_then(Value::as_str) {
                text.push_str(t);
            }
        }
    }
    let usage = |key: &str| {
        v.get("usage")
            .and_then(|u| u.get(key))
            .and_then(Value::as_u64)
    };
    Ok(Chunk::Completion {
        text,
        prompt_tokens: usage("prompt_tokens"),
        completion_tokens: usage("completion_tokens"),
    })
}

/// `GET /v1/models` and the first model's id.
async fn first_model(client: &reqwest::Client, base_url: &str) -> anyhow::Result<String> {
    let url = format!("{base_url}/v1/models");
    let hint = "pass --model NAME";
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {}", error_chain(&e)))?;
    if !resp.status().is_success() {
        anyhow::bail!("GET {url} answered {}; {hint}", resp.status());
    }
    let v: Value = resp
        .json()
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: bad JSON ({e}); {hint}"))?;
    v.pointer("/data/0/id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("GET {url} listed no model; {hint}"))
}

fn transport_error(e: reqwest::Error) -> RequestError {
    let code = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "transport"
    };
    RequestError::new(code, error_chain(&e))
}

/// An error with its causes, which reqwest's message leaves out
/// ("connection refused", ...).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(text: &str, prompt: Option<u64>, completion: Option<u64>) -> Chunk {
        Chunk::Completion {
            text: text.into(),
            prompt_tokens: prompt,
            completion_tokens: completion,
        }
    }

    #[test]
    fn done_marker() {
        assert_eq!(parse_chunk("[DONE]"), Ok(Chunk::Done));
        assert_eq!(parse_chunk(" [DONE] "), Ok(Chunk::Done));
    }

    #[test]
    fn text_chunks_count_only_with_text() {
        let c = parse_chunk(r#"{"choices":[{"index":0,"text":" the","finish_reason":null}]}"#);
        assert_eq!(c, Ok(completion(" the", None, None)));
        let empty = parse_chunk(r#"{"choices":[{"index":0,"text":""}]}"#);
        assert_eq!(empty, Ok(completion("", None, None)));
    }

    #[test]
    fn chat_chunks_carry_delta_content() {
        let role = parse_chunk(r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#);
        assert_eq!(role, Ok(completion("", None, None)));
        let c = parse_chunk(
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm","content":"Hi"}}]}"#,
        );
        assert_eq!(c, Ok(completion("hmHi", None, None)));
    }

    #[test]
    fn usage_chunk_reports_completion_tokens() {
        let c = parse_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":64,"total_tokens":76}}"#,
        );
        assert_eq!(c, Ok(completion("", Some(12), Some(64))));
    }

    #[test]
    fn errors_in_the_stream_fail_the_request() {
        let e = parse_chunk(r#"{"error":{"code":500,"message":"boom"}}"#).expect_err("error");
        assert_eq!(e.code, "stream_error");
        assert_eq!(parse_chunk("not json").expect_err("bad").code, "bad_chunk");
        // A null error field is not an error.
        assert!(parse_chunk(r#"{"error":null,"choices":[{"text":"x"}]}"#).is_ok());
    }

    #[test]
    fn stream_of_events_builds_a_timeline() {
        let mut rec = Recorder::start();
        let events = [
            SseEvent::Data(r#"{"choices":[{"text":"a"}]}"#.into()),
            SseEvent::Data(r#"{"choices":[{"text":""}]}"#.into()),
            SseEvent::Data(r#"{"choices":[{"text":"b"}]}"#.into()),
            SseEvent::Data(r#"{"choices":[],"usage":{"completion_tokens":3}}"#.into()),
        ];
        for ev in events {
            assert_eq!(on_event(ev, &mut rec), Ok(false));
        }
        assert_eq!(
            on_event(SseEvent::Data("[DONE]".into()), &mut rec),
            Ok(true)
        );
        let t = rec.finish().expect("timeline");
        assert_eq!(t.token_times.len(), 2);
        assert_eq!(t.output_tokens, 3);
        assert_eq!(t.text, "ab");
        let err = on_event(SseEvent::Error("{}".into()), &mut Recorder::start());
        assert_eq!(err.expect_err("error").code, "stream_error");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("h\u{e9}llo", 2), "h\u{e9}...");
        assert_eq!(truncate("short", 10), "short");
    }
}
