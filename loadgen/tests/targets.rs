//! Both targets against in-process fake servers: a weft.v1 gRPC server and
//! an OpenAI-style SSE server, each streaming a known number of tokens.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use weft_loadgen::arrivals::Arrivals;
use weft_loadgen::runner::{self, Hooks, LoadShape};
use weft_loadgen::target::{self, GenRequest, Message, Prompt, Role};
use weft_loadgen::workload::Workload;
use weft_proto::v1::generate_request::Prompt as Prompt2;
use weft_proto::v1::generate_response::Event;
use weft_proto::v1::generation_server::{Generation, GenerationServer};
use weft_proto::v1::{
    FinishReason, Finished, GenerateRequest, GenerateResponse, TokenDelta, Usage,
};

type Events = Pin<Box<dyn Stream<Item = Result<GenerateResponse, Status>> + Send>>;

/// Streams `max_tokens` tokens (ids 100, 101, ...), then Finished;
/// refuses requests without `ignore_eos` so the test checks what the target
/// sends. With `drop_one`, the second token never arrives although the
/// usage counts it.
struct FakeWeft {
    drop_one: bool,
}

impl FakeWeft {
    fn stream(&self, n: u32, prompt_tokens: u32) -> Events {
        let drop_one = self.drop_one;
        let tokens = (0..n).filter(move |i| !(drop_one && *i == 1)).map(|i| {
            Event::Token(TokenDelta {
                id: 100 + i,
                text: if i == 0 { String::new() } else { "x".into() },
                ..Default::default()
            })
        });
        let finished = Event::Finished(Finished {
            reason: FinishReason::Length as i32,
            usage: Some(Usage {
                prompt_tokens,
                completion_tokens: n,
                cached_prompt_tokens: 0,
            }),
            trailing_text: "!".into(),
            ..Default::default()
        });
        let events = tokens
            .chain(std::iter::once(finished))
            .map(|e| Ok(GenerateResponse { event: Some(e) }));
        Box::pin(futures::stream::iter(events))
    }
}

#[tonic::async_trait]
impl Generation for FakeWeft {
    type GenerateStreamStream = Events;

    async fn generate_stream(
        &self,
        req: Request<GenerateRequest>,
    ) -> Result<Response<Events>, Status> {
        let req = req.into_inner();
        if !req.ignore_eos || req.sampling.is_some() || req.prompt.is_none() {
            return Err(Status::invalid_argument(
                "want ignore_eos, greedy, a prompt",
            ));
        }
        let prompt_tokens = match req.prompt {
            Some(Prompt2::TokenIds(ids)) => ids.ids.len() as u32,
            _ => 5,
        };
        Ok(Response::new(self.stream(req.max_tokens, prompt_tokens)))
    }

    type ChatStreamStream = Events;

    async fn generate(
        &self,
        _: Request<GenerateRequest>,
    ) -> Result<Response<weft_proto::v1::GenerateReply>, Status> {
        Err(Status::unimplemented("the load generator streams"))
    }

    async fn chat(
        &self,
        _: Request<weft_proto::v1::ChatRequest>,
    ) -> Result<Response<weft_proto::v1::GenerateReply>, Status> {
        Err(Status::unimplemented("the load generator streams"))
    }

    async fn chat_stream(
        &self,
        req: Request<weft_proto::v1::ChatRequest>,
    ) -> Result<Response<Events>, Status> {
        let req = req.into_inner();
        if !req.ignore_eos || req.sampling.is_some() || req.messages.len() != 2 {
            return Err(Status::invalid_argument(
                "want ignore_eos, greedy, 2 messages",
            ));
        }
        Ok(Response::new(self.stream(req.max_tokens, 9)))
    }

    async fn tokenize(
        &self,
        _: Request<weft_proto::v1::TokenizeRequest>,
    ) -> Result<Response<weft_proto::v1::TokenizeResponse>, Status> {
        Err(Status::unimplemented("not used by the load generator"))
    }

    async fn detokenize(
        &self,
        _: Request<weft_proto::v1::DetokenizeRequest>,
    ) -> Result<Response<weft_proto::v1::DetokenizeResponse>, Status> {
        Err(Status::unimplemented("not used by the load generator"))
    }
}

async fn spawn_fake_weft() -> String {
    spawn_weft(FakeWeft { drop_one: false }).await
}

async fn spawn_weft(fake: FakeWeft) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GenerationServer::new(fake))
            .serve_with_incoming(incoming),
    );
    format!("grpc://{addr}")
}

/// Answers each HTTP request with an SSE stream of `chunks` text chunks, an
/// empty chunk, a usage chunk and `[DONE]`, then closes the connection.
async fn spawn_fake_openai(chunks: usize, usage: u64) -> String {
    spawn_fake_openai_seen(chunks, usage, Seen::default()).await
}

/// Reads one HTTP request: the head, then `content-length` bytes of body.
async fn read_request(sock: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return text,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The requests a fake OpenAI server read.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

async fn spawn_fake_openai_seen(chunks: usize, usage: u64, seen: Seen) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let text = read_request(&mut sock).await;
                seen.lock().expect("lock").push(text);
                let mut body = String::new();
                for _ in 0..chunks {
                    body.push_str("data: {\"choices\":[{\"text\":\"tok\"}]}\n\n");
                }
                body.push_str("data: {\"choices\":[{\"text\":\"\"}]}\n\n");
                body.push_str(&format!(
                    "data: {{\"choices\":[],\"usage\":{{\"completion_tokens\":{usage}}}}}\n\n"
                ));
                body.push_str("data: [DONE]\n\n");
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

fn shape(concurrency: usize, requests: usize) -> LoadShape {
    LoadShape {
        concurrency,
        requests,
        warmup: 1,
        max_duration: Duration::from_secs(30),
        arrivals: None,
    }
}

#[tokio::test]
async fn grpc_target_counts_every_token() {
    let url = spawn_fake_weft().await;
    let endpoint = target::parse_target(&url, false).expect("endpoint");
    let t = target::connect(&endpoint, None).await.expect("connect");
    let timeline = t
        .generate(GenRequest {
            prompt: Prompt::Text("hi".into()),
            max_tokens: 7,
        })
        .await
        .expect("generate");
    // The first token has empty text but is still a token.
    assert_eq!(timeline.token_times.len(), 7);
    assert_eq!(timeline.output_tokens, 7);

    let out = runner::run(
        t.as_ref(),
        &shape(3, 6),
        &Workload::builtin(4, true),
        Hooks::default(),
    )
    .await;
    assert_eq!(out.warmup.ok(), 1);
    assert_eq!(out.measured.ok(), 6);
}

#[tokio::test]
async fn openai_target_prefers_reported_usage() {
    let url = spawn_fake_openai(5, 6).await;
    let endpoint = target::parse_target(&url, false).expect("endpoint");
    let t = target::connect(&endpoint, Some("m".into()))
        .await
        .expect("connect");
    let timeline = t
        .generate(GenRequest {
            prompt: Prompt::Text("hi".into()),
            max_tokens: 6,
        })
        .await
        .expect("generate");
    assert_eq!(timeline.token_times.len(), 5);
    assert_eq!(timeline.output_tokens, 6);

    let out = runner::run(
        t.as_ref(),
        &shape(2, 4),
        &Workload::builtin(6, false),
        Hooks::default(),
    )
    .await;
    assert_eq!(out.measured.ok(), 4);
}

#[tokio::test]
async fn refused_connections_are_reported_by_code() {
    // Bind then drop a listener to get a port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let endpoint = target::parse_target(&format!("http://{addr}"), false).expect("endpoint");
    let t = target::connect(&endpoint, Some("m".into()))
        .await
        .expect("no I/O when the model is given");
    let err = t
        .generate(GenRequest {
            prompt: Prompt::Text("hi".into()),
            max_tokens: 1,
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code, "connect");
}

#[tokio::test]
async fn runner_honours_a_request_rate_against_the_fake_server() {
    let url = spawn_fake_weft().await;
    let endpoint = target::parse_target(&url, false).expect("endpoint");
    let t = target::connect(&endpoint, None).await.expect("connect");
    let arrivals = Arrivals {
        rate: 20.0,
        burstiness: 1.0,
        seed: 5,
    };
    let last = arrivals.schedule(30)[29];
    let open = LoadShape {
        concurrency: 64,
        requests: 30,
        warmup: 0,
        max_duration: Duration::from_secs(8),
        arrivals: Some(arrivals),
    };
    let out = runner::run(
        t.as_ref(),
        &open,
        &Workload::builtin(4, false),
        Hooks::default(),
    )
    .await;
    assert_eq!(out.measured.ok(), 30);
    // The last request is not sent before its time, and the fake answers fast.
    let wall = out.measured.wall;
    assert!(wall >= last, "{wall:?} < {last:?}");
    assert!(wall < last + Duration::from_secs(1), "{wall:?} vs {last:?}");
    // Achieved rate near 20/s (30 requests, ~1.5 s).
    let rate = 29.0 / last.as_secs_f64();
    assert!((8.0..50.0).contains(&rate), "{rate}");
}

#[tokio::test]
async fn open_loop_run_stops_at_its_deadline() {
    let url = spawn_fake_weft().await;
    let endpoint = target::parse_target(&url, false).expect("endpoint");
    let t = target::connect(&endpoint, None).await.expect("connect");
    let slow = LoadShape {
        concurrency: 4,
        requests: 1000,
        warmup: 0,
        max_duration: Duration::from_millis(1500),
        arrivals: Some(Arrivals {
            rate: 4.0,
            burstiness: 1.0,
            seed: 1,
        }),
    };
    let out = runner::run(
        t.as_ref(),
        &slow,
        &Workload::builtin(2, false),
        Hooks::default(),
    )
    .await;
    let m = &out.measured;
    assert_eq!(m.ok() + m.failed() + m.cancelled() + m.not_started(), 1000);
    assert!(m.ok() >= 1 && m.not_started() > 950, "{} ok", m.ok());
    assert!(m.wall <= Duration::from_secs(3), "{:?}", m.wall);
}

fn chat() -> Prompt {
    let m = |role, content: &str| Message {
        role,
        content: content.into(),
    };
    Prompt::Chat(vec![m(Role::System, "Be brief."), m(Role::User, "Hi")])
}

#[tokio::test]
async fn grpc_target_sends_ids_and_chats_and_keeps_ids_and_text() {
    let url = spawn_fake_weft().await;
    let endpoint = target::parse_target(&url, false).expect("endpoint");
    let t = target::connect(&endpoint, None).await.expect("connect");
    let ids = t
        .generate(GenRequest {
            prompt: Prompt::Ids(vec![1, 2, 3]),
            max_tokens: 3,
        })
        .await
        .expect("ids");
    assert_eq!(ids.prompt_tokens, Some(3));
    assert_eq!(ids.token_ids, Some(vec![100, 101, 102]));
    // Token texts, then the trailing text of Finished.
    assert_eq!(ids.text, "xx!");
    let chat = t
        .generate(GenRequest {
            prompt: chat(),
            max_tokens: 2,
        })
        .await
        .expect("chat");
    assert_eq!((chat.prompt_tokens, chat.output_tokens), (Some(9), 2));
}

#[tokio::test]
async fn correctness_mode_finds_a_token_lost_in_the_stream() {
    use weft_loadgen::check;
    let url = spawn_weft(FakeWeft { drop_one: true }).await;
    let endpoint = target::parse_target(&url, false).expect("endpoint");
    let t = target::connect(&endpoint, None).await.expect("connect");
    let out = runner::run(
        t.as_ref(),
        &shape(2, 4),
        &Workload::builtin(5, false),
        Hooks::default(),
    )
    .await;
    assert_eq!(out.measured.ok(), 4);
    let c = check::check_phase(&out.measured, &Workload::builtin(5, false));
    assert_eq!((c.checked, c.lost, c.lost_tokens, c.matched), (4, 4, 4, 0));
    assert!(!c.clean());
    assert_eq!(c.findings[0].against, "stream");
    assert_eq!(
        c.findings[0].verdict,
        check::Verdict::Lost {
            position: 4,
            count: 1
        }
    );
}

#[tokio::test]
async fn openai_target_sends_chats_to_chat_completions_and_ids_as_a_list() {
    let seen = Seen::default();
    let url = spawn_fake_openai_seen(3, 3, seen.clone()).await;
    let endpoint = target::parse_target(&url, false).expect("endpoint");
    let t = target::connect(&endpoint, Some("m".into()))
        .await
        .expect("connect");
    for prompt in [chat(), Prompt::Ids(vec![7, 8])] {
        let timeline = t
            .generate(GenRequest {
                prompt,
                max_tokens: 3,
            })
            .await
            .expect("generate");
        assert_eq!(timeline.text, "toktoktok");
    }
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen[0].starts_with("POST /v1/chat/completions "),
        "{}",
        seen[0]
    );
    assert!(
        seen[0].contains(r#""messages":[{"content":"Be brief.","role":"system"}"#),
        "{}",
        seen[0]
    );
    assert!(seen[1].starts_with("POST /v1/completions "), "{}", seen[1]);
    assert!(seen[1].contains(r#""prompt":[7,8]"#), "{}", seen[1]);
}
