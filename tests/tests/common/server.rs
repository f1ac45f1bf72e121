//! An in-process coordinator (real worker processes) for tests that need
//! the scheduler's handle, e.g. to check that every KV block came back.

use std::time::Duration;

use clap::Parser;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use weft_coordinator::scheduler::{SchedulerHandle, SchedulerStats};
use weft_coordinator::server::{run, Listeners, Ready};
use weft_coordinator::CoordinatorArgs;
use weft_proto::v1;
use weft_proto::v1::generation_client::GenerationClient;

/// Tests that start clusters run one at a time (2 cores).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Server {
    pub url: String,
    /// Base URL of the OpenAI-compatible HTTP API.
    pub http_url: String,
    pub api: std::sync::Arc<weft_coordinator::api::Api>,
    pub scheduler: SchedulerHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub async fn start(tp: usize, extra: &[&str]) -> Server {
    let model = super::model_path();
    let worker = super::bin("weft-worker");
    let mut argv: Vec<String> = vec![
        "weft-coordinator".into(),
        "--model".into(),
        model.display().to_string(),
    ];
    argv.extend(["--tp".into(), tp.to_string(), "--local-workers".into()]);
    argv.extend(["--worker-bin".into(), worker.display().to_string()]);
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = CoordinatorArgs::try_parse_from(argv).expect("arguments");
    let listeners = Listeners {
        client: tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        cluster: tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        http: tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    };
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<Ready>();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let on_ready = Box::new(move |r: Ready| {
            let _ = tx.send(r);
        });
        if let Err(e) = run(args, listeners, token, on_ready).await {
            panic!("coordinator failed: {e}");
        }
    });
    let ready = tokio::time::timeout(Duration::from_secs(120), rx)
        .await
        .expect("cluster ready in time")
        .expect("coordinator started");
    Server {
        url: format!("http://{}", ready.addr),
        http_url: format!("http://{}", ready.http_addr),
        api: ready.api,
        scheduler: ready.scheduler,
        shutdown,
        task,
    }
}

impl Server {
    pub async fn client(&self) -> GenerationClient<tonic::transport::Channel> {
        GenerationClient::connect(self.url.clone())
            .await
            .expect("connect")
    }

    pub async fn stats(&self) -> SchedulerStats {
        self.scheduler.stats().await.expect("scheduler alive")
    }

    /// Waits until nothing runs or waits, then checks every KV block is free.
    pub async fn assert_idle_and_no_leaks(&self) {
        let mut s = self.stats().await;
        for _ in 0..200 {
            if s.running == 0 && s.waiting == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            s = self.stats().await;
        }
        assert_eq!((s.running, s.waiting), (0, 0), "scheduler not idle: {s:?}");
        assert_eq!(s.kv.in_use, 0, "blocks still referenced: {:?}", s.kv);
        assert_eq!(s.kv.free, s.kv.total, "blocks leaked: {:?}", s.kv);
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// A finished generation.
#[derive(Debug)]
pub struct Output {
    pub ids: Vec<u32>,
    pub text: String,
    pub finished: v1::Finished,
}

pub async fn generate(url: &str, req: v1::GenerateRequest) -> Result<Output, tonic::Status> {
    let mut client = GenerationClient::connect(url.to_string())
        .await
        .expect("connect");
    let mut stream = client.generate_stream(req).await?.into_inner();
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(msg) = stream.next().await {
        match msg?.event {
            Some(v1::generate_response::Event::Token(t)) => {
                ids.push(t.id);
                text.push_str(&t.text);
            }
            Some(v1::generate_response::Event::Finished(f)) => {
                return Ok(Output {
                    ids,
                    text,
                    finished: f,
                })
            }
            None => panic!("empty event"),
        }
    }
    panic!("stream ended without a Finished message");
}

pub fn ids_request(ids: Vec<u32>, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        prompt: Some(v1::generate_request::Prompt::TokenIds(v1::TokenIds { ids })),
        max_tokens,
        ..Default::default()
    }
}

pub fn text_request(text: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        prompt: Some(v1::generate_request::Prompt::Text(text.into())),
        max_tokens,
        ..Default::default()
    }
}
