//! Health tells the truth (NOT_SERVING while loading, SERVING after the
//! canary, NOT_SERVING again when a rank is lost), and a client's
//! `traceparent` reaches the workers' logs; chat output of a template that
//! opens `<think>` arrives as reasoning.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, model_path, signal, Cluster};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use weft_proto::v1;
use weft_proto::v1::generation_client::GenerationClient;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        signal(self.0.id(), libc::SIGKILL);
        let _ = self.0.wait();
    }
}

/// Starts a coordinator that waits for one worker; returns it with its
/// (gRPC, HTTP, cluster) addresses and a receiver of its later stdout lines.
fn coordinator_without_workers() -> (Killed, [SocketAddr; 3], std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(bin("weft-coordinator"))
        .args(["--model", &model_path().display().to_string(), "--tp", "1"])
        .args(["--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        // A lost rank is not coming back in this test: requests wait for it
        // only briefly before UNAVAILABLE.
        .args(["--recovery-wait-s", "3", "--recovery-queue", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start coordinator");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("listening line");
    let rest = line
        .strip_prefix("weft-coordinator listening: gRPC API on ")
        .expect("listening line format");
    let addrs: Vec<SocketAddr> = rest
        .split(", ")
        .map(|p| {
            let a = p.rsplit(' ').next().expect("address");
            a.trim_start_matches("http://").parse().expect("address")
        })
        .collect();
    (Killed(child), [addrs[0], addrs[1], addrs[2]], rx)
}

async fn status(url: &str, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut h = HealthClient::new(channel);
    let r = h
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner();
    ServingStatus::try_from(r.status).expect("status")
}

async fn http_health(addr: SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/health"))
        .await
        .expect("GET /health")
        .status()
        .as_u16()
}

/// The code and message of a refused request.
async fn generate_message(url: &str) -> (Code, String) {
    let mut c = GenerationClient::connect(url.to_string())
        .await
        .expect("connect");
    let req = v1::GenerateRequest {
        prompt: Some(v1::generate_request::Prompt::Text("Hello".into())),
        max_tokens: 2,
        ..Default::default()
    };
    match c.generate(req).await {
        Ok(_) => (Code::Ok, String::new()),
        Err(e) => (e.code(), e.message().to_string()),
    }
}

async fn generate_code(url: &str) -> Result<(), Code> {
    match generate_message(url).await {
        (Code::Ok, _) => Ok(()),
        (code, _) => Err(code),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_loading_and_rank_loss() {
    let (mut coord, [grpc, http, cluster], lines) = coordinator_without_workers();
    let url = format!("http://{grpc}");
    // No worker yet: everything says NOT_SERVING, generation is UNAVAILABLE.
    for service in ["", "weft.v1.Generation"] {
        assert_eq!(status(&url, service).await, ServingStatus::NotServing);
    }
    assert_eq!(http_health(http).await, 503);
    assert_eq!(generate_code(&url).await, Err(Code::Unavailable));

    let worker = Command::new(bin("weft-worker"))
        .args(["--coordinator", &format!("http://{cluster}"), "--rank", "0"])
        .spawn()
        .expect("start worker");
    let worker = Killed(worker);
    let ready = lines
        .recv_timeout(Duration::from_secs(120))
        .expect("ready line");
    assert!(ready.starts_with("weft-coordinator ready:"), "{ready}");
    assert_eq!(status(&url, "").await, ServingStatus::Serving);
    assert_eq!(http_health(http).await, 200);
    assert_eq!(generate_code(&url).await, Ok(()));

    // The rank dies: health notices without any request running.
    drop(worker);
    let t0 = Instant::now();
    while status(&url, "").await != ServingStatus::NotServing {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "health still SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_health(http).await, 503);
    // One request waits for the group to recover (--recovery-queue 1), up
    // to --recovery-wait-s; a second one meanwhile is refused at once.
    let t0 = Instant::now();
    let waiting = tokio::spawn({
        let url = url.clone();
        async move { generate_message(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = generate_message(&url).await;
    assert_eq!(refused.0, Code::Unavailable);
    assert!(refused.1.contains("already wait"), "{}", refused.1);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let waited = waiting.await.expect("task");
    assert_eq!(waited.0, Code::Unavailable);
    assert!(
        waited.1.contains("has not recovered within"),
        "{}",
        waited.1
    );
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    // The coordinator itself survives and exits cleanly on SIGTERM.
    signal(coord.0.id(), libc::SIGTERM);
    let t0 = Instant::now();
    loop {
        if let Some(st) = coord.0.try_wait().expect("wait") {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A template whose generation prompt opens `<think>`, as DeepSeek-R1
/// distills do.
const THINKING_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n\
{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n\
<think>\n{% endif %}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_reaches_workers_and_reasoning_is_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    let template = dir.path().join("think.jinja");
    std::fs::write(&template, THINKING_TEMPLATE).expect("write template");
    let log_path = dir.path().join("cluster.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let model = model_path().display().to_string();
    let tpl = template.display().to_string();
    let cluster = Cluster::start_with(
        &["--model", &model, "--tp", "1", "--chat-template", &tpl],
        &[("RUST_LOG", "info,weft_worker=debug")],
        Some(log),
    );
    let url = cluster.url();
    let mut client = GenerationClient::connect(url.clone())
        .await
        .expect("connect");
    let messages = vec![v1::ChatMessage {
        role: v1::Role::User as i32,
        content: "Why is the sky blue?".into(),
    }];
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(v1::ChatRequest {
        messages: messages.clone(),
        max_tokens: 12,
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .expect("ascii"),
    );
    let mut stream = client.chat_stream(req).await.expect("chat").into_inner();
    let (mut text, mut reasoning) = (String::new(), String::new());
    while let Some(ev) = stream.next().await {
        match ev.expect("event").event {
            Some(v1::generate_response::Event::Token(t)) => {
                text.push_str(&t.text);
                reasoning.push_str(&t.reasoning_text);
            }
            Some(v1::generate_response::Event::Finished(f)) => {
                text.push_str(&f.trailing_text);
                reasoning.push_str(&f.trailing_reasoning_text);
            }
            None => {}
        }
    }
    // The same prompt as plain generation: all of it is reasoning (the
    // model never closes the tag in 12 tokens).
    let prompt = client
        .tokenize(v1::TokenizeRequest {
            input: Some(v1::tokenize_request::Input::Messages(v1::ChatMessages {
                messages,
            })),
            ..Default::default()
        })
        .await
        .expect("tokenize")
        .into_inner()
        .ids;
    let plain = client
        .generate(common::server::ids_request(prompt, 12))
        .await
        .expect("generate")
        .into_inner();
    assert!(!plain.text.contains("</think>"), "{}", plain.text);
    assert_eq!(reasoning, plain.text);
    assert_eq!(text, "");

    let info = weft_proto::v1::models_client::ModelsClient::connect(url)
        .await
        .expect("connect")
        .get_model_info(v1::GetModelInfoRequest::default())
        .await
        .expect("info")
        .into_inner();
    assert!(
        info.reasoning,
        "--chat-template with <think> turns reasoning on"
    );
    drop(cluster);
    let logs = std::fs::read_to_string(&log_path).expect("logs");
    let worker_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("sequence admitted") && l.contains(trace_id))
        .collect();
    assert!(
        !worker_lines.is_empty(),
        "the trace id never reached a worker log:\n{logs}"
    );
    assert!(
        !logs.contains("Why is the sky blue"),
        "prompt text in the logs"
    );
}
