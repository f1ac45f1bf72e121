//! End to end: real `weft-coordinator` and `weft-worker` processes serving
//! SmolLM2 at TP=3; a gRPC client streams a completion; stopping the
//! cluster leaves no process behind.

mod common;

use std::time::Duration;

use common::{alive, children_of, model_path, signal, wait_until, Cluster};
use tokio_stream::StreamExt;
use weft_proto::v1;
use weft_proto::v1::generation_client::GenerationClient;

async fn generate(
    url: &str,
    req: v1::GenerateRequest,
) -> Result<(Vec<v1::TokenDelta>, v1::Finished), tonic::Status> {
    let mut client = GenerationClient::connect(url.to_string())
        .await
        .expect("connect");
    let mut stream = client.generate_stream(req).await?.into_inner();
    let mut tokens = Vec::new();
    while let Some(msg) = stream.next().await {
        match msg?.event {
            Some(v1::generate_response::Event::Token(t)) => tokens.push(t),
            Some(v1::generate_response::Event::Finished(f)) => return Ok((tokens, f)),
            None => panic!("empty event"),
        }
    }
    panic!("stream ended without a Finished message");
}

fn tokenize(text: &str) -> Vec<u32> {
    let ckpt = weft_model::checkpoint::Checkpoint::open(&model_path()).expect("open");
    let tok =
        weft_model::tokenizer::Tokenizer::from_gguf(ckpt.gguf().expect("gguf")).expect("tokenizer");
    tok.encode(text, true).expect("encode")
}

/// Service names listed by grpc.reflection.v1.
async fn reflected_services(url: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream.next().await.expect("one response").expect("ok");
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

fn text_request(text: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        prompt: Some(v1::generate_request::Prompt::Text(text.into())),
        max_tokens,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tp3_cluster_streams_and_leaves_no_process_behind() {
    let model = model_path();
    let cluster = Cluster::start(&["--model", model.to_str().expect("utf-8 path"), "--tp", "3"]);
    let workers = children_of(cluster.pid());
    assert_eq!(
        workers.len(),
        3,
        "expected 3 worker processes, found {workers:?}"
    );

    let url = cluster.url();
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let (tokens, finished) = generate(&url, text_request(prompt, 12))
        .await
        .expect("generate");
    let usage = finished.usage.expect("usage");
    assert!(!tokens.is_empty());
    assert_eq!(
        usage.completion_tokens as usize,
        tokens.len() + usize::from(finished.reason == v1::FinishReason::Eos as i32)
    );
    assert!(usage.prompt_tokens > 10);
    let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
    assert!(text.contains("Paris"), "unexpected answer {text:?}");
    assert!(tokens
        .iter()
        .all(|t| t.logprob <= 0.0 && t.logprob.is_finite()));

    // The same prompt as token ids gives the same greedy tokens.
    let (by_text, _) = generate(&url, text_request("The capital of France is", 6))
        .await
        .expect("text prompt");
    let ids = tokenize("The capital of France is");
    let by_ids = generate(
        &url,
        v1::GenerateRequest {
            prompt: Some(v1::generate_request::Prompt::TokenIds(v1::TokenIds { ids })),
            max_tokens: 6,
            ..Default::default()
        },
    )
    .await
    .expect("token-id prompt")
    .0;
    let ids_of = |t: &[v1::TokenDelta]| t.iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids_of(&by_text), ids_of(&by_ids));
    assert!(!by_text.is_empty());

    // Server reflection lists the client API.
    assert!(reflected_services(&url)
        .await
        .iter()
        .any(|s| s == "weft.v1.Generation"));

    // Bad input is refused with INVALID_ARGUMENT, and the cluster keeps serving.
    let bad = [
        text_request("", 4),
        text_request("hi", 0),
        text_request("hi", 100_000),
        v1::GenerateRequest {
            prompt: Some(v1::generate_request::Prompt::TokenIds(v1::TokenIds {
                ids: vec![49_152],
            })),
            max_tokens: 1,
            ..Default::default()
        },
        v1::GenerateRequest {
            sampling: Some(v1::SamplingParams {
                temperature: -1.0,
                ..Default::default()
            }),
            ..text_request("hi", 2)
        },
    ];
    for req in bad {
        let err = generate(&url, req).await.expect_err("must be refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
    let (after, _) = generate(&url, text_request(prompt, 3))
        .await
        .expect("still serving");
    assert_eq!(
        after.iter().map(|t| t.id).collect::<Vec<_>>(),
        tokens[..3].iter().map(|t| t.id).collect::<Vec<_>>()
    );

    // SIGTERM: the coordinator stops its workers and exits.
    let mut cluster = cluster;
    signal(cluster.pid(), libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let s = cluster.child.wait();
        (s, cluster)
    })
    .await
    .expect("join");
    assert!(status.0.expect("wait").success(), "coordinator exit status");
    assert!(
        wait_until(Duration::from_secs(10), || workers
            .iter()
            .all(|&p| !alive(p))),
        "workers survived the coordinator: {workers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_coordinator_takes_its_workers_along() {
    let model = model_path();
    let cluster = Cluster::start(&[
        "--model",
        model.to_str().expect("utf-8 path"),
        "--tp",
        "3",
        "--shard-source",
        "stream",
    ]);
    let workers = children_of(cluster.pid());
    assert_eq!(workers.len(), 3);
    let (tokens, _) = generate(&cluster.url(), text_request("The quick brown fox", 4))
        .await
        .expect("generate");
    assert_eq!(tokens.len(), 4);
    drop(cluster); // SIGKILL
    assert!(
        wait_until(Duration::from_secs(10), || workers
            .iter()
            .all(|&p| !alive(p))),
        "orphaned workers: {workers:?}"
    );
}

#[test]
fn truncated_checkpoint_fails_cleanly_at_startup() {
    let model = model_path();
    let dir = tempfile::tempdir().expect("tempdir");
    let cut = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(&model).expect("read model");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let out = std::process::Command::new(common::bin("weft-coordinator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--local-workers",
        ])
        .arg("--model")
        .arg(&cut)
        .output()
        .expect("run coordinator");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("truncated.gguf"),
        "error should name the file: {err}"
    );
}

#[test]
fn tp_that_does_not_divide_is_refused_with_advice() {
    let model = model_path();
    let out = std::process::Command::new(common::bin("weft-coordinator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--local-workers",
            "--tp",
            "2",
        ])
        .arg("--model")
        .arg(&model)
        .output()
        .expect("run coordinator");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tp=2") && err.contains("1, 3"), "{err}");
}
