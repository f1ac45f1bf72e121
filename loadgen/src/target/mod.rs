//! Servers under load. A [`Target`] sends one generation request and returns
//! the timeline of its output; the runner knows nothing about protocols.

pub mod grpc;
pub mod openai;
pub mod sse;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::Url;

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role's name in the OpenAI and weft APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// What a request asks the model to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Text, tokenized by the server (completions).
    Text(String),
    /// Token ids of the target model (completions; exact input length).
    Ids(Vec<u32>),
    /// A conversation, rendered by the server's chat template.
    Chat(Vec<Message>),
}

/// One generation request, protocol independent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRequest {
    pub prompt: Prompt,
    /// Output tokens to generate; every target asks to ignore EOS and
    /// decodes greedily.
    pub max_tokens: u32,
}

/// What a successful request produced, timed from just before it was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// Arrival of each output event that carried a token (a gRPC token or
    /// an SSE chunk with text); the first one is the TTFT.
    pub token_times: Vec<Duration>,
    /// Until the response stream ended.
    pub latency: Duration,
    /// Output tokens: the server's usage count when it reports one, else the
    /// number of token events.
    pub output_tokens: u64,
    /// Prompt tokens as the server's usage reports them.
    pub prompt_tokens: Option<u64>,
    /// The output text, concatenated from the stream.
    pub text: String,
    /// The output token ids, one per event, when the protocol carries them
    /// (weft's gRPC API).
    pub token_ids: Option<Vec<u32>>,
}

impl Timeline {
    /// Time to first token; `None` when no token arrived.
    pub fn ttft(&self) -> Option<Duration> {
        self.token_times.first().copied()
    }
}

/// Builds a [`Timeline`] while a response streams in.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    token_times: Vec<Duration>,
    reported_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    text: String,
    ids: Option<Vec<u32>>,
}

impl Recorder {
    /// Starts the clock.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            token_times: Vec::new(),
            reported_tokens: None,
            prompt_tokens: None,
            text: String::new(),
            ids: None,
        }
    }

    /// A token event with `text` arrived now.
    pub fn token(&mut self, text: &str) {
        self.token_times.push(self.start.elapsed());
        self.text.push_str(text);
    }

    /// A token event carrying its id arrived now.
    pub fn token_id(&mut self, id: u32, text: &str) {
        self.token(text);
        self.ids.get_or_insert_with(Vec::new).push(id);
    }

    /// Output text that came with no token event (text a server held back
    /// until the end).
    pub fn trailing_text(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// The server reported how many tokens it read and generated.
    pub fn usage(&mut self, prompt_tokens: Option<u64>, completion_tokens: u64) {
        self.reported_tokens = Some(completion_tokens);
        self.prompt_tokens = prompt_tokens.or(self.prompt_tokens);
    }

    /// The stream ended now. A response without any token is an error.
    pub fn finish(self) -> Result<Timeline, RequestError> {
        let latency = self.start.elapsed();
        if self.token_times.is_empty() {
            return Err(RequestError::new("empty_output", "no output token arrived"));
        }
        let counted = self.token_times.len() as u64;
        Ok(Timeline {
            output_tokens: self.reported_tokens.unwrap_or(counted),
            token_times: self.token_times,
            latency,
            prompt_tokens: self.prompt_tokens,
            text: self.text,
            token_ids: self.ids,
        })
    }
}

/// A failed request. `code` groups failures in the report: `http_<status>`,
/// `grpc_<Code>`, or a short word for transport and protocol failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    pub code: String,
    pub message: String,
}

impl RequestError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A server that generates text.
pub trait Target: Send + Sync {
    /// Sends one request and follows its stream to the end.
    fn generate(&self, req: GenRequest) -> BoxFuture<'_, Result<Timeline, RequestError>>;
}

/// Which API a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// weft.v1 `Generation/GenerateStream` over gRPC.
    Grpc,
    /// OpenAI-compatible `POST /v1/completions` with SSE streaming.
    Openai,
}

/// A parsed `--target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub api: Api,
    /// `http://host:port` with no path: the gRPC channel address, or the
    /// base of the OpenAI routes.
    pub base_url: String,
}

/// Why a `--target` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("invalid target {0:?}: {1}")]
    Invalid(String, String),
    #[error(
        "refusing target host {0:?}: it is not loopback (127.0.0.0/8, ::1, localhost); \
         pass --allow-remote to load a remote server"
    )]
    Remote(String),
}

/// Parses `grpc://HOST:PORT` or `http://HOST:PORT`, refusing hosts that are
/// not loopback unless `allow_remote`.
pub fn parse_target(target: &str, allow_remote: bool) -> Result<Endpoint, TargetError> {
    let invalid = |why: &str| TargetError::Invalid(target.to_string(), why.to_string());
    let url = Url::parse(target).map_err(|e| invalid(&e.to_string()))?;
    let api = match url.scheme() {
        "grpc" => Api::Grpc,
        "http" => Api::Openai,
        other => {
            return Err(invalid(&format!(
                "unsupported scheme {other:?} (grpc or http)"
            )))
        }
    };
    if url.path() != "" && url.path() != "/" {
        return Err(invalid("give the server address without a path"));
    }
    let host = url.host_str().ok_or_else(|| invalid("no host"))?;
    if !allow_remote && !is_loopback_host(host) {
        return Err(TargetError::Remote(host.to_string()));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| invalid("no port"))?;
    Ok(Endpoint {
        api,
        base_url: format!("http://{host}:{port}"),
    })
}

/// 127.0.0.0/8, ::1 (also IPv4-mapped) or `localhost`. Names other than
/// `localhost` are not resolved: they count as remote.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Connects to the target the endpoint names.
pub async fn connect(
    endpoint: &Endpoint,
    model: Option<String>,
) -> anyhow::Result<Box<dyn Target>> {
    Ok(match endpoint.api {
        Api::Grpc => Box::new(grpc::GrpcTarget::connect(&endpoint.base_url, model).await?),
        Api::Openai => Box::new(openai::OpenAiTarget::connect(&endpoint.base_url, model).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_accepted() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "::1",
            "localhost",
            "LocalHost",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        assert!(is_loopback_host("[::ffff:127.0.0.1]"));
    }

    #[test]
    fn other_hosts_are_remote() {
        for host in [
            "10.0.0.1",
            "0.0.0.0",
            "[::]",
            "example.com",
            "localhost.evil.com",
            "128.0.0.1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn parses_grpc_and_http_targets() {
        let g = parse_target("grpc://127.0.0.1:50051", false).expect("grpc");
        assert_eq!(g.api, Api::Grpc);
        assert_eq!(g.base_url, "http://127.0.0.1:50051");
        let h = parse_target("http://localhost:8080/", false).expect("http");
        assert_eq!(h.api, Api::Openai);
        assert_eq!(h.base_url, "http://localhost:8080");
        let v6 = parse_target("grpc://[::1]:7000", false).expect("v6");
        assert_eq!(v6.base_url, "http://[::1]:7000");
        let default_port = parse_target("http://127.0.0.1", false).expect("port 80");
        assert_eq!(default_port.base_url, "http://127.0.0.1:80");
    }

    #[test]
    fn remote_targets_need_allow_remote() {
        let err = parse_target("http://10.1.2.3:8080", false).expect_err("remote");
        assert_eq!(err, TargetError::Remote("10.1.2.3".into()));
        assert!(err.to_string().contains("--allow-remote"));
        assert!(parse_target("http://10.1.2.3:8080", true).is_ok());
    }

    #[test]
    fn malformed_targets_are_invalid() {
        for bad in [
            "127.0.0.1:8080",
            "https://127.0.0.1:1",
            "grpc://127.0.0.1",
            "http://127.0.0.1:8080/v1",
        ] {
            assert!(
                matches!(parse_target(bad, false), Err(TargetError::Invalid(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn recorder_prefers_reported_usage() {
        let mut r = Recorder::start();
        r.token("a");
        r.token("b");
        let t = r.finish().expect("two tokens");
        assert_eq!(t.output_tokens, 2);
        assert_eq!(
            (t.text.as_str(), &t.token_ids, t.prompt_tokens),
            ("ab", &None, None)
        );
        assert!(t.ttft().is_some_and(|ttft| ttft <= t.latency));

        let mut r = Recorder::start();
        r.token_id(7, "x");
        r.trailing_text("!");
        r.usage(Some(11), 3);
        let t = r.finish().expect("one chunk");
        assert_eq!(t.output_tokens, 3);
        assert_eq!(t.prompt_tokens, Some(11));
        assert_eq!((t.text.as_str(), &t.token_ids), ("x!", &Some(vec![7])));
    }

    #[test]
    fn recorder_without_tokens_fails() {
        let err = Recorder::start().finish().expect_err("empty");
        assert_eq!(err.code, "empty_output");
    }
}
