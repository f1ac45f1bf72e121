//! The OpenAI-compatible HTTP API on SmolLM2, as OpenAI clients see it:
//! response and stream chunk shapes, streams that match whole responses,
//! completions that match gRPC, seeded `n`, logprobs, stop strings, errors
//! in OpenAI's JSON shape, `/v1/models`, API keys, and a client that hangs
//! up mid-stream.

mod common;

use common::server::{generate, ids_request, start, Server, SERIAL};
use futures::StreamExt;
use serde_json::{json, Value};

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

/// A streamed request's events; `[DONE]` becomes the string "[DONE]".
async fn post_stream(url: &str, body: &Value) -> Vec<Value> {
    let resp = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().expect("ascii");
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let text = resp.text().await.expect("body");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").expect("a data line");
            if data == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(data).expect("JSON event")
            }
        })
        .collect()
}

/// Checks an OpenAI error body and returns its message.
fn error_message(body: &Value, status: u16, kind: &str) -> String {
    let e = &body["error"];
    assert_eq!(e["type"], kind, "{body}");
    assert_eq!(e["code"], status, "{body}");
    assert!(e.get("param").is_some(), "{body}");
    e["message"].as_str().expect("message").to_string()
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut b = json!({
        "model": "",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": content},
        ],
        "temperature": 0,
        "max_tokens": 16,
    });
    if let (Some(b), Value::Object(extra)) = (b.as_object_mut(), extra) {
        b.extend(extra);
    }
    b
}

/// The concatenated `content` of one choice's chunks.
fn streamed_content(events: &[Value], index: u64) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"].as_array())
        .flatten()
        .filter(|c| c["index"] == index)
        .filter_map(|c| c["delta"]["content"].as_str().or(c["text"].as_str()))
        .collect()
}

async fn chat_whole_and_streamed(s: &Server) {
    let url = format!("{}/v1/chat/completions", s.http_url);
    let body = chat_body("Name three colors.", json!({"model": s.api.model.name}));
    let (status, whole) = post(&url, &body).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"]
        .as_str()
        .is_some_and(|i| i.starts_with("chatcmpl-")));
    assert_eq!(whole["model"], s.api.model.name.as_str());
    assert!(whole["created"].as_i64().is_some_and(|c| c > 1_600_000_000));
    let choice = &whole["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"].get("reasoning_content").is_none());
    assert_eq!(choice["logprobs"], Value::Null);
    let text = choice["message"]["content"].as_str().expect("content");
    assert!(!text.is_empty());
    let u = &whole["usage"];
    let (p, c) = (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64());
    assert!(
        p.is_some_and(|p| p > 10) && c.is_some_and(|c| (1..=16).contains(&c)),
        "{u}"
    );
    assert_eq!(u["total_tokens"].as_u64(), p.zip(c).map(|(p, c)| p + c));
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let events = post_stream(&url, &sb).await;
    let n = events.len();
    assert!(n >= 4, "{events:?}");
    assert_eq!(events[n - 1], "[DONE]");
    let first = &events[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for e in &events[..n - 1] {
        assert_eq!(e["id"], first["id"]);
        assert_eq!(e["created"], first["created"]);
        assert_eq!(e["model"], s.api.model.name.as_str());
        assert!(e.get("usage").is_some(), "usage (null) in every chunk: {e}");
    }
    for e in &events[..n - 3] {
        assert_eq!(e["choices"][0]["finish_reason"], Value::Null, "{e}");
        assert_eq!(e["usage"], Value::Null);
    }
    let last = &events[n - 3]["choices"][0];
    assert_eq!(last["finish_reason"], choice["finish_reason"]);
    assert_eq!(events[n - 2]["choices"], json!([]));
    assert_eq!(
        events[n - 2]["usage"]["completion_tokens"],
        u["completion_tokens"]
    );
    assert_eq!(events[n - 2]["usage"]["prompt_tokens"], u["prompt_tokens"]);
    assert_eq!(streamed_content(&events, 0), text, "greedy stream = whole");

    // Without include_usage: no usage anywhere.
    sb["stream_options"] = json!(null);
    let events = post_stream(&url, &sb).await;
    assert!(events.iter().all(|e| e.get("usage").is_none()));
    assert_eq!(streamed_content(&events, 0), text);
}

async fn completions_match_grpc(s: &Server) {
    let url = format!("{}/v1/completions", s.http_url);
    let ids = s
        .api
        .model
        .tokenizer
        .encode("The capital of France is", true)
        .expect("tokenize");
    let grpc = generate(&s.url, ids_request(ids.clone(), 12))
        .await
        .expect("grpc");
    let want = format!("{}{}", grpc.text, grpc.finished.trailing_text);
    let body =
        json!({"model": s.api.model.name, "prompt": ids, "max_tokens": 12, "temperature": 0});
    let (status, whole) = post(&url, &body).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "text_completion");
    assert!(whole["id"].as_str().is_some_and(|i| i.starts_with("cmpl-")));
    assert_eq!(whole["choices"][0]["text"], want.as_str());
    assert_eq!(whole["usage"]["prompt_tokens"], ids.len());
    assert_eq!(whole["usage"]["completion_tokens"], grpc.ids.len());
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let events = post_stream(&url, &sb).await;
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    assert_eq!(events[0]["object"], "text_completion");
    assert_eq!(streamed_content(&events, 0), want);
    let fin = &events[events.len() - 2]["choices"][0];
    assert_eq!(fin["finish_reason"], whole["choices"][0]["finish_reason"]);

    // A stop string taken from the middle of the greedy output.
    let chars: Vec<char> = want.chars().collect();
    let mid = chars.len() / 2;
    let stop: String = chars[mid..(mid + 3).min(chars.len())].iter().collect();
    let cut = want.find(&stop).expect("stop in the output");
    let body = json!({"prompt": ids, "max_tokens": 12, "temperature": 0, "stop": [stop]});
    let (status, stopped) = post(&url, &body).await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert_eq!(stopped["choices"][0]["text"], &want[..cut]);
}

async fn seeded_n_and_logprobs(s: &Server) {
    let url = format!("{}/v1/chat/completions", s.http_url);
    let body = chat_body(
        "Write a short poem about the sea.",
        json!({"n": 2, "seed": 7, "temperature": 0.9, "max_tokens": 10}),
    );
    let texts = |v: &Value| -> Vec<String> {
        let choices = v["choices"].as_array().expect("choices");
        assert_eq!(choices.len(), 2, "{v}");
        let idx: Vec<&Value> = choices.iter().map(|c| &c["index"]).collect();
        assert_eq!(idx, [&json!(0), &json!(1)]);
        choices
            .iter()
            .map(|c| {
                c["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let (s1, a) = post(&url, &body).await;
    let (s2, b) = post(&url, &body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(texts(&a), texts(&b), "seeded n=2 is deterministic");
    // Choice i is the request with seed + i; completion tokens add up.
    let mut total = 0;
    for (i, seed) in [7, 8].into_iter().enumerate() {
        let one = chat_body(
            "Write a short poem about the sea.",
            json!({"seed": seed, "temperature": 0.9, "max_tokens": 10}),
        );
        let (_, single) = post(&url, &one).await;
        let want = &a["choices"][i]["message"]["content"];
        assert_eq!(&single["choices"][0]["message"]["content"], want);
        total += single["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    }
    assert_eq!(a["usage"]["completion_tokens"], total);
    assert_eq!(a["usage"]["prompt_tokens"], b["usage"]["prompt_tokens"]);

    let lp_body = chat_body("Hi!", json!({"logprobs": true, "top_logprobs": 3}));
    let (status, v) = post(&url, &lp_body).await;
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs");
    assert!(!content.is_empty());
    for t in content {
        assert!(t["logprob"].as_f64().is_some_and(|l| l <= 0.0), "{t}");
        assert!(t["token"].is_string() && t["bytes"].is_array(), "{t}");
        let top = t["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        assert!(top
            .iter()
            .all(|a| a["logprob"].as_f64().is_some_and(|l| l <= 0.0)));
    }
    let url = format!("{}/v1/completions", s.http_url);
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 6, "logprobs": 2, "temperature": 0});
    let (status, v) = post(&url, &body).await;
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let lps = lp["token_logprobs"].as_array().expect("token_logprobs");
    assert_eq!(lps.len(), lp["tokens"].as_array().map_or(0, Vec::len));
    assert!(lps.iter().all(|l| l.as_f64().is_some_and(|l| l <= 0.0)));
    let tops = lp["top_logprobs"].as_array().expect("top_logprobs");
    assert!(tops
        .iter()
        .all(|t| t.as_object().is_some_and(|m| (1..=3).contains(&m.len()))));
    assert_eq!(lp["text_offset"][0], 0);
}

async fn errors_and_models(s: &Server) {
    let chat = format!("{}/v1/chat/completions", s.http_url);
    let resp = reqwest::Client::new()
        .post(&chat)
        .header("content-type", "application/json")
        .body("{\"messages\": [")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("JSON error");
    let msg = error_message(&body, 400, "invalid_request_error");
    assert!(msg.contains("not valid JSON"), "{msg}");
    let cases = [
        (json!({"n": 100}), "`n` must lie in"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "role",
        ),
        (json!({"temperature": -1}), "temperature"),
        (json!({"max_tokens": "ten"}), "`max_tokens`"),
    ];
    for (extra, want) in cases {
        let (status, body) = post(&chat, &chat_body("Hi", extra)).await;
        assert_eq!(status, 400, "{body}");
        let msg = error_message(&body, 400, "invalid_request_error");
        assert!(msg.contains(want), "{msg} lacks {want}");
    }
    let (status, body) = post(&chat, &chat_body("Hi", json!({"model": "gpt-4"}))).await;
    assert_eq!(status, 404, "{body}");
    error_message(&body, 404, "not_found_error");
    let completions = format!("{}/v1/completions", s.http_url);
    let (status, body) = post(&completions, &json!({"prompt": ["a", "b"]})).await;
    assert_eq!(status, 400);
    assert!(error_message(&body, 400, "invalid_request_error").contains("batching"));
    // A streamed request that fails before its first token is an HTTP error.
    let (status, body) = post(
        &completions,
        &json!({"prompt": [1], "max_tokens": 1_000_000, "stream": true}),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let client = reqwest::Client::new();
    let list: Value = client
        .get(format!("{}/v1/models", s.http_url))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("JSON");
    assert_eq!(list["object"], "list");
    let card = &list["data"][0];
    assert_eq!(card["id"], s.api.model.name.as_str());
    assert_eq!(card["object"], "model");
    assert_eq!(card["owned_by"], "weft");
    assert_eq!(card["max_model_len"], s.api.model.limits.max_model_len);
    let one = client
        .get(format!("{}/v1/models/{}", s.http_url, s.api.model.name))
        .send()
        .await
        .expect("send");
    assert_eq!(one.status().as_u16(), 200);
    let one = client
        .get(format!("{}/v1/models/nope", s.http_url))
        .send()
        .await
        .expect("send");
    assert_eq!(one.status().as_u16(), 404);
}

/// A client that hangs up mid-stream cancels its request.
async fn hang_up_cancels(s: &Server) {
    let url = format!("{}/v1/chat/completions", s.http_url);
    // Long enough that finishing would outlast the idle check below.
    let l = &s.api.model.limits;
    let max_tokens = (l.max_model_len.min(l.kv_capacity_tokens) / 2 - 100).min(2000);
    let extra = json!({"max_tokens": max_tokens, "ignore_eos": true, "stream": true, "n": 2});
    let body = chat_body("Count to one thousand.", extra);
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let mut chunks = resp.bytes_stream();
    let first = chunks.next().await.expect("a chunk").expect("bytes");
    assert!(first.starts_with(b"data: "));
    drop(chunks);
    s.assert_idle_and_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_api_shapes_streams_and_errors() {
    let _serial = SERIAL.lock().await;
    let server = start(1, &[]).await;
    chat_whole_and_streamed(&server).await;
    completions_match_grpc(&server).await;
    seeded_n_and_logprobs(&server).await;
    errors_and_models(&server).await;
    hang_up_cancels(&server).await;
    server.assert_idle_and_no_leaks().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_the_openai_routes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "sk-test-0123456789\n").expect("write keys");
    let keys = keys.display().to_string();
    let server = start(1, &["--api-key-file", &keys]).await;
    let client = reqwest::Client::new();
    let models = format!("{}/v1/models", server.http_url);
    let resp = client.get(&models).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("JSON");
    error_message(&body, 401, "authentication_error");
    let resp = client
        .get(&models)
        .bearer_auth("sk-wrong-0123456789")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client
        .get(&models)
        .bearer_auth("sk-test-0123456789")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let chat = format!("{}/v1/chat/completions", server.http_url);
    let body = chat_body("Hi", json!({"max_tokens": 2}));
    let resp = client.post(&chat).json(&body).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client
        .post(&chat)
        .bearer_auth("sk-test-0123456789")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    // Without --auth-health, probes and scrapes need no key.
    for path in ["/health", "/metrics"] {
        let url = format!("{}{path}", server.http_url);
        let resp = client.get(&url).send().await.expect("send");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    server.stop().await;

    // With --auth-health they do, and so does grpc.health.v1.
    let server = start(1, &["--api-key-file", &keys, "--auth-health"]).await;
    for path in ["/health", "/metrics"] {
        let url = format!("{}{path}", server.http_url);
        let resp = client.get(&url).send().await.expect("send");
        assert_eq!(resp.status().as_u16(), 401, "{path}");
        let resp = client
            .get(&url)
            .bearer_auth("sk-test-0123456789")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let e = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("health needs the key");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    req.metadata_mut().insert(
        "authorization",
        "Bearer sk-test-0123456789".parse().expect("ascii"),
    );
    let ok = health.check(req).await.expect("health with the key");
    assert_eq!(ok.into_inner().status, 1, "SERVING");
    server.stop().await;
}
