//! The gRPC client API `weft.v1` on a real cluster: unary and streaming
//! generation and chat agree, the chat template is applied as the
//! SmolLM2 template says, tokenize/detokenize round-trip, model info, and
//! the status codes of bad input.

mod common;

use common::server::{generate, ids_request, start, text_request, SERIAL};
use tokio_stream::StreamExt;
use tonic::Code;
use weft_proto::v1;
use weft_proto::v1::generation_client::GenerationClient;
use weft_proto::v1::models_client::ModelsClient;

fn msg(role: v1::Role, content: &str) -> v1::ChatMessage {
    v1::ChatMessage {
        role: role as i32,
        content: content.into(),
    }
}

fn chat_request(messages: Vec<v1::ChatMessage>, max_tokens: u32) -> v1::ChatRequest {
    v1::ChatRequest {
        messages,
        max_tokens,
        ..Default::default()
    }
}

/// The SmolLM2 template's rendering of one user turn, written out by hand.
const SMOLLM2_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, \
trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
<|im_start|>assistant\n";

fn local_tokenizer() -> weft_model::tokenizer::Tokenizer {
    let ckpt = weft_model::checkpoint::Checkpoint::open(&common::model_path()).expect("open");
    weft_model::tokenizer::Tokenizer::from_gguf(ckpt.gguf().expect("gguf")).expect("tokenizer")
}

async fn chat_stream_text(
    client: &mut GenerationClient<tonic::transport::Channel>,
    req: v1::ChatRequest,
) -> (String, String, Vec<u32>) {
    let mut stream = client.chat_stream(req).await.expect("chat").into_inner();
    let (mut text, mut reasoning, mut ids) = (String::new(), String::new(), Vec::new());
    while let Some(ev) = stream.next().await {
        match ev.expect("event").event {
            Some(v1::generate_response::Event::Token(t)) => {
                text.push_str(&t.text);
                reasoning.push_str(&t.reasoning_text);
                ids.push(t.id);
            }
            Some(v1::generate_response::Event::Finished(f)) => {
                text.push_str(&f.trailing_text);
                reasoning.push_str(&f.trailing_reasoning_text);
                return (text, reasoning, ids);
            }
            None => panic!("empty event"),
        }
    }
    panic!("stream ended without Finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_chat_tokenize_and_models() {
    let _serial = SERIAL.lock().await;
    let server = start(1, &[]).await;
    let mut client = server.client().await;
    check_fresh_metrics(&server.http_url).await;

    // Unary Generate returns exactly what the stream returns.
    let req = text_request("The capital of France is", 12);
    let streamed = generate(&server.url, req.clone()).await.expect("stream");
    let unary = client.generate(req).await.expect("generate").into_inner();
    let ids: Vec<u32> = unary.tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids, streamed.ids);
    assert_eq!(
        unary.text,
        format!("{}{}", streamed.text, streamed.finished.trailing_text)
    );
    assert_eq!(
        unary.finished.as_ref().unwrap().usage,
        streamed.finished.usage
    );

    // The chat template: Tokenize(messages) is the hand-written rendering.
    let convo = vec![msg(v1::Role::User, "What is the capital of France?")];
    let tok = client
        .tokenize(v1::TokenizeRequest {
            input: Some(v1::tokenize_request::Input::Messages(v1::ChatMessages {
                messages: convo.clone(),
            })),
            ..Default::default()
        })
        .await
        .expect("tokenize")
        .into_inner();
    let expected = local_tokenizer()
        .encode(SMOLLM2_PROMPT, false)
        .expect("encode");
    assert_eq!(tok.ids, expected);
    assert_eq!(tok.max_model_len, 8192);

    // Chat generates from that prompt, unary and streaming alike.
    let chat = client
        .chat(chat_request(convo.clone(), 16))
        .await
        .expect("chat")
        .into_inner();
    let plain = generate(&server.url, ids_request(expected.clone(), 16))
        .await
        .expect("generate");
    let chat_ids: Vec<u32> = chat.tokens.iter().map(|t| t.id).collect();
    assert_eq!(chat_ids, plain.ids);
    assert_eq!(
        chat.text,
        format!("{}{}", plain.text, plain.finished.trailing_text)
    );
    assert!(chat.reasoning_text.is_empty());
    let (text, reasoning, ids) = chat_stream_text(&mut client, chat_request(convo, 16)).await;
    assert_eq!((text, ids), (chat.text.clone(), chat_ids));
    assert!(reasoning.is_empty());

    // Detokenize(Tokenize(text)) gives the text back.
    let sentence = "Tensor parallelism splits each layer across GPUs.";
    let ids = client
        .tokenize(v1::TokenizeRequest {
            input: Some(v1::tokenize_request::Input::Text(sentence.into())),
            ..Default::default()
        })
        .await
        .expect("tokenize")
        .into_inner()
        .ids;
    let back = client
        .detokenize(v1::DetokenizeRequest {
            ids,
            ..Default::default()
        })
        .await
        .expect("detokenize")
        .into_inner();
    assert_eq!(back.text.trim_start(), sentence);

    check_models(&server.url).await;
    check_errors(&mut client).await;
    run_rust_example(&server.url).await;
    // Draining: health goes NOT_SERVING as shutdown begins.
    let mut health = server.api.health.subscribe();
    assert!(health.borrow_and_update().serving);
    server.stop().await;
    assert!(
        !health.borrow().serving,
        "health still SERVING after shutdown"
    );
    assert_eq!(health.borrow().reason, "the server is shutting down");
}

/// `examples/rust-client` runs against the cluster and prints what it got.
async fn run_rust_example(url: &str) {
    let out = tokio::process::Command::new(common::bin("weft-example-client"))
        .arg(url)
        .env_remove("WEFT_API_KEY")
        .output()
        .await
        .expect("run weft-example-client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "example failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("model: SmolLM2-135M-Instruct.Q4_1 (llama, context 8192)"),
        "{stdout}"
    );
    assert!(stdout.contains("finished: "), "{stdout}");
    assert!(stdout.contains("tokens: ["), "{stdout}");
}

/// Right after startup nothing is counted: the canary request is the
/// server's own.
async fn check_fresh_metrics(http_url: &str) {
    let text = reqwest::get(format!("{http_url}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let value = |prefix: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value")
    };
    assert_eq!(value("weft:generation_tokens_total{"), 0.0);
    for reason in ["stop", "length", "abort"] {
        let p = format!("weft:request_success_total{{model_name=\"SmolLM2-135M-Instruct.Q4_1\",finished_reason=\"{reason}\"}}");
        assert_eq!(value(&p), 0.0, "{reason}");
    }
    // A wrong method is an OpenAI-style error too.
    let resp = reqwest::Client::new()
        .get(format!("{http_url}/v1/chat/completions"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 405);
    let body: serde_json::Value = resp.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], 405);
}

async fn check_models(url: &str) {
    let mut models = ModelsClient::connect(url.to_string())
        .await
        .expect("connect");
    let list = models
        .list_models(v1::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.models.len(), 1);
    let m = &list.models[0];
    assert_eq!(m.name, "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(m.architecture, "llama");
    assert_eq!((m.vocab_size, m.num_layers), (49152, 30));
    assert_eq!((m.num_attention_heads, m.num_kv_heads), (9, 3));
    assert_eq!(m.tensor_parallel_size, 1);
    assert!(m.has_chat_template && !m.reasoning);
    let info = models
        .get_model_info(v1::GetModelInfoRequest {
            model: m.name.clone(),
        })
        .await
        .expect("info")
        .into_inner();
    assert_eq!(&info, m);
    let e = models
        .get_model_info(v1::GetModelInfoRequest {
            model: "llama-70b".into(),
        })
        .await
        .expect_err("unknown model");
    assert_eq!(e.code(), Code::NotFound);
}

async fn check_errors(client: &mut GenerationClient<tonic::transport::Channel>) {
    let mut req = text_request("hi", 4);
    req.model = "gpt-4".into();
    let e = client.generate(req).await.expect_err("unknown model");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("gpt-4"), "{e}");

    let bad_role = chat_request(vec![msg(v1::Role::Unspecified, "hi")], 4);
    let e = client.chat(bad_role).await.expect_err("role");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("role"), "{e}");

    let e = client
        .chat_stream(chat_request(vec![], 4))
        .await
        .expect_err("empty");
    assert_eq!(e.code(), Code::InvalidArgument);

    let e = client
        .detokenize(v1::DetokenizeRequest {
            ids: vec![1, 2_000_000],
            ..Default::default()
        })
        .await
        .expect_err("vocab");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("2000000"), "{e}");

    let e = client
        .tokenize(v1::TokenizeRequest::default())
        .await
        .expect_err("no input");
    assert_eq!(e.code(), Code::InvalidArgument);

    let too_long = chat_request(vec![msg(v1::Role::User, "hi")], 100_000);
    let e = client.chat(too_long).await.expect_err("context");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("maximum context length"), "{e}");
}
