//! The serving engine on SmolLM2: continuous batching gives each request
//! the output it gets alone; seeded sampling survives batching and
//! preemption; KV exhaustion preempts and recovers; cancellation and
//! deadlines free blocks; the prefix cache skips work; a full queue and
//! bad input are refused while the server keeps serving.

mod common;

use std::time::Duration;

use common::server::{generate, ids_request, start, text_request, Output, SERIAL};
use futures::future::join_all;
use tokio_stream::StreamExt;
use weft_proto::v1;

const TEXTS: [&str; 8] = [
    "The history of the Roman Empire",
    "<|im_start|>user\nGive me three tips for learning to cook.<|im_end|>\n<|im_start|>assistant\n",
    "Photosynthesis is the process by which",
    "fn main() {\n    let numbers = vec![1, 2, 3];",
    "Once upon a time, in a small village by the sea,",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "<|im_start|>user\nWhat is 17 times 23?<|im_end|>\n<|im_start|>assistant\n",
    "Climate change affects agriculture because",
];

/// 16 prompts of mixed lengths: the texts, and longer ones built from them.
fn prompts() -> Vec<String> {
    let mut p: Vec<String> = TEXTS.iter().map(|s| s.to_string()).collect();
    for (i, t) in TEXTS.iter().enumerate() {
        p.push(format!("{} {}", TEXTS[(i + 3) % 8].repeat(1 + i % 4), t));
    }
    p
}

fn seeded(text: &str, max_tokens: u32, seed: u64) -> v1::GenerateRequest {
    v1::GenerateRequest {
        sampling: Some(v1::SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 50,
            seed: Some(seed),
            ..Default::default()
        }),
        ..text_request(text, max_tokens)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_greedy_requests_match_their_solo_runs() {
    let _serial = SERIAL.lock().await;
    // A small token budget forces chunked prefill of the longer prompts.
    let server = start(3, &["--max-batched-tokens", "96"]).await;
    let prompts = prompts();
    let max = 20u32;
    let mut alone = Vec::new();
    for p in &prompts {
        alone.push(
            generate(&server.url, text_request(p, max))
                .await
                .expect("solo")
                .ids,
        );
    }
    let before = server.stats().await;
    let calls = (0..64).map(|i| {
        let (p, n) = (&prompts[i % prompts.len()], 4 + (i as u32 * 7) % (max - 3));
        generate(&server.url, text_request(p, n))
    });
    let outs: Vec<Output> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("batched"))
        .collect();
    for (i, out) in outs.iter().enumerate() {
        let solo = &alone[i % prompts.len()];
        let n = out.ids.len();
        assert!(n >= 1);
        assert_eq!(
            &out.ids[..],
            &solo[..n.min(solo.len())],
            "request {i}: batched output differs from its solo run"
        );
    }
    let after = server.stats().await;
    let steps = after.steps - before.steps;
    let tokens: u64 = outs.iter().map(|o| o.ids.len() as u64).sum();
    assert!(
        steps < tokens / 4,
        "{steps} steps for {tokens} tokens: requests were not batched"
    );
    server.assert_idle_and_no_leaks().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_exhaustion_preempts_and_outputs_stay_exact() {
    let _serial = SERIAL.lock().await;
    // 20 blocks of 16 tokens: far less than 10 concurrent requests need.
    let server = start(1, &["--kv-blocks", "20", "--max-batched-tokens", "128"]).await;
    let prompts = prompts();
    let mut alone = Vec::new();
    for p in prompts.iter().take(10) {
        alone.push(
            generate(&server.url, text_request(p, 40))
                .await
                .expect("solo")
                .ids,
        );
    }
    let seeded_alone = generate(&server.url, seeded(&prompts[1], 40, 42))
        .await
        .expect("seeded solo");
    let mut calls: Vec<_> = prompts
        .iter()
        .take(10)
        .map(|p| generate(&server.url, text_request(p, 40)))
        .collect();
    calls.push(generate(&server.url, seeded(&prompts[1], 40, 42)));
    let outs: Vec<Output> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("completes"))
        .collect();
    for (i, solo) in alone.iter().enumerate() {
        assert_eq!(&outs[i].ids, solo, "request {i} changed under preemption");
    }
    assert_eq!(
        outs[10].ids, seeded_alone.ids,
        "seeded request changed under batching and preemption"
    );
    let stats = server.stats().await;
    assert!(stats.preemptions > 0, "expected preemptions: {stats:?}");
    server.assert_idle_and_no_leaks().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_the_same_alone_and_in_a_busy_batch() {
    let _serial = SERIAL.lock().await;
    let server = start(3, &[]).await;
    let prompts = prompts();
    let alone = generate(&server.url, seeded(&prompts[2], 24, 7))
        .await
        .expect("alone");
    let other_seed = generate(&server.url, seeded(&prompts[2], 24, 8))
        .await
        .expect("other seed");
    assert_ne!(alone.ids, other_seed.ids, "the seed must matter");
    let mut calls: Vec<_> = (0..12)
        .map(|i| generate(&server.url, seeded(&prompts[i % 16], 24, 100 + i as u64)))
        .collect();
    calls.insert(5, generate(&server.url, seeded(&prompts[2], 24, 7)));
    let outs = join_all(calls).await;
    assert_eq!(outs[5].as_ref().expect("busy").ids, alone.ids);
    server.assert_idle_and_no_leaks().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_deadlines_and_a_storm_leave_the_pool_full() {
    let _serial = SERIAL.lock().await;
    let server = start(3, &[]).await;
    let url = server.url.clone();

    // Cancel mid-stream: read two tokens, then drop the stream.
    let mut client = server.client().await;
    let mut stream = client
        .generate_stream(text_request(TEXTS[4], 500))
        .await
        .expect("start")
        .into_inner();
    for _ in 0..2 {
        stream.next().await.expect("token").expect("ok");
    }
    drop(stream);
    server.assert_idle_and_no_leaks().await;

    // A deadline that passes mid-generation ends with DEADLINE_EXCEEDED.
    let mut req = tonic::Request::new(text_request(TEXTS[0], 2000));
    req.set_timeout(Duration::from_millis(400));
    let mut stream = client
        .generate_stream(req)
        .await
        .expect("start")
        .into_inner();
    let mut status = None;
    while let Some(m) = stream.next().await {
        if let Err(e) = m {
            status = Some(e.code());
            break;
        }
    }
    assert_eq!(status, Some(tonic::Code::DeadlineExceeded));
    server.assert_idle_and_no_leaks().await;

    // A storm of finished, cancelled, expired and refused requests.
    let storm = (0..30).map(|i| {
        let url = url.clone();
        async move {
            let mut c = weft_proto::v1::generation_client::GenerationClient::connect(url.clone())
                .await
                .expect("connect");
            match i % 5 {
                0 => generate(&url, text_request(TEXTS[i % 8], 8))
                    .await
                    .map(|_| ()),
                1 => {
                    let mut s = c
                        .generate_stream(text_request(TEXTS[i % 8], 300))
                        .await?
                        .into_inner();
                    for _ in 0..(i % 4) {
                        let _ = s.next().await;
                    }
                    Ok(())
                }
                2 => {
                    let mut r = tonic::Request::new(text_request(TEXTS[i % 8], 1000));
                    r.set_timeout(Duration::from_millis(50 + 40 * i as u64));
                    let mut s = c.generate_stream(r).await?.into_inner();
                    while let Some(m) = s.next().await {
                        m?;
                    }
                    Ok(())
                }
                3 => generate(&url, text_request("", 8)).await.map(|_| ()),
                _ => generate(&url, seeded(TEXTS[i % 8], 12, i as u64))
                    .await
                    .map(|_| ()),
            }
        }
    });
    let results = join_all(storm).await;
    for (i, r) in results.iter().enumerate() {
        match (i % 5, r) {
            (0 | 4, r) => assert!(r.is_ok(), "request {i}: {r:?}"),
            (3, Err(e)) => assert_eq!(e.code(), tonic::Code::InvalidArgument),
            // The server ends it with DEADLINE_EXCEEDED, unless the
            // client's own timer fires first (tonic reports CANCELLED).
            (2, Err(e)) => assert!(
                matches!(
                    e.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ),
                "request {i}: {e:?}"
            ),
            _ => {}
        }
    }
    server.assert_idle_and_no_leaks().await;
    generate(&url, text_request(TEXTS[0], 4))
        .await
        .expect("still serving");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_reuses_a_shared_system_prompt() {
    let _serial = SERIAL.lock().await;
    let server = start(3, &[]).await;
    let system = "<|im_start|>system\nYou are a meticulous assistant for a logistics company. You answer \
                  briefly, cite numbers exactly, and never invent shipment identifiers. When unsure, say so \
                  and ask for the tracking number.<|im_end|>\n";
    let ask = |q: &str| {
        text_request(
            &format!("{system}<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"),
            12,
        )
    };
    let first = generate(&server.url, ask("Where is my parcel?"))
        .await
        .expect("first");
    assert_eq!(
        first
            .finished
            .usage
            .as_ref()
            .expect("usage")
            .cached_prompt_tokens,
        0
    );
    let before = server.stats().await.computed_tokens;
    let second = generate(&server.url, ask("Where is my parcel?"))
        .await
        .expect("second");
    let computed = server.stats().await.computed_tokens - before;
    let usage = second.finished.usage.as_ref().expect("usage");
    assert_eq!(second.ids, first.ids, "cached prefix changed the output");
    assert!(usage.cached_prompt_tokens >= 48, "usage {usage:?}");
    assert!(
        computed < u64::from(usage.prompt_tokens),
        "computed {computed} tokens for a {}-token prompt",
        usage.prompt_tokens
    );
    // A different question shares the system prompt's blocks.
    let third = generate(&server.url, ask("Can you change my delivery address?"))
        .await
        .expect("third");
    assert!(third.finished.usage.expect("usage").cached_prompt_tokens >= 32);
    server.assert_idle_and_no_leaks().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_and_bad_input_are_refused_and_serving_goes_on() {
    let _serial = SERIAL.lock().await;
    let server = start(1, &["--max-num-seqs", "1", "--max-waiting", "2"]).await;
    let url = server.url.clone();
    // One runs, two wait, the fourth is refused at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = server.client().await;
        held.push(
            c.generate_stream(text_request(TEXTS[0], 400))
                .await
                .expect("admitted")
                .into_inner(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = generate(&url, text_request(TEXTS[1], 4))
        .await
        .expect_err("queue full");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    drop(held);
    server.assert_idle_and_no_leaks().await;

    let bad: Vec<(&str, v1::GenerateRequest)> = vec![
        ("empty prompt", text_request("", 4)),
        (
            "no prompt",
            v1::GenerateRequest {
                max_tokens: 4,
                ..Default::default()
            },
        ),
        ("max_tokens 0", text_request("hi", 0)),
        ("over context", text_request("hi", 9000)),
        ("unknown token id", ids_request(vec![5, 49_152], 4)),
        (
            "negative temperature",
            v1::GenerateRequest {
                sampling: Some(v1::SamplingParams {
                    temperature: -0.5,
                    ..Default::default()
                }),
                ..text_request("hi", 4)
            },
        ),
        (
            "NaN temperature",
            v1::GenerateRequest {
                sampling: Some(v1::SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                }),
                ..text_request("hi", 4)
            },
        ),
        (
            "top_p > 1",
            v1::GenerateRequest {
                sampling: Some(v1::SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                }),
                ..text_request("hi", 4)
            },
        ),
        (
            "top_p < 0",
            v1::GenerateRequest {
                sampling: Some(v1::SamplingParams {
                    top_p: -0.1,
                    ..Default::default()
                }),
                ..text_request("hi", 4)
            },
        ),
        (
            "min_p > 1",
            v1::GenerateRequest {
                sampling: Some(v1::SamplingParams {
                    min_p: 2.0,
                    ..Default::default()
                }),
                ..text_request("hi", 4)
            },
        ),
        (
            "presence penalty",
            v1::GenerateRequest {
                sampling: Some(v1::SamplingParams {
                    presence_penalty: 3.0,
                    ..Default::default()
                }),
                ..text_request("hi", 4)
            },
        ),
        (
            "too many stops",
            v1::GenerateRequest {
                stop: (0..9).map(|i| format!("s{i}")).collect(),
                ..text_request("hi", 4)
            },
        ),
        (
            "empty stop",
            v1::GenerateRequest {
                stop: vec![String::new()],
                ..text_request("hi", 4)
            },
        ),
        (
            "too many logprobs",
            v1::GenerateRequest {
                top_logprobs: 21,
                ..text_request("hi", 4)
            },
        ),
        (
            "unknown stop token",
            v1::GenerateRequest {
                stop_token_ids: vec![60_000],
                ..text_request("hi", 4)
            },
        ),
        (
            "unknown model",
            v1::GenerateRequest {
                model: "gpt-9".into(),
                ..text_request("hi", 4)
            },
        ),
    ];
    for (what, req) in bad {
        let e = generate(&url, req).await.expect_err(what);
        let want = if what == "unknown model" {
            tonic::Code::NotFound
        } else {
            tonic::Code::InvalidArgument
        };
        assert_eq!(e.code(), want, "{what}: {e:?}");
        assert!(!e.message().is_empty(), "{what}: no message");
    }
    let e = generate(&url, text_request("hi", 9000))
        .await
        .expect_err("context");
    assert!(
        e.message()
            .contains("maximum context length is 8192 tokens"),
        "{}",
        e.message()
    );
    server.assert_idle_and_no_leaks().await;
    let ok = generate(&url, text_request(TEXTS[2], 5))
        .await
        .expect("serving goes on");
    assert_eq!(ok.ids.len(), 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_stop_tokens_logprobs_and_ignore_eos() {
    let _serial = SERIAL.lock().await;
    let server = start(1, &[]).await;
    let url = server.url.clone();
    let base = generate(&url, text_request(TEXTS[2], 24))
        .await
        .expect("base");
    // Stop at a word from the greedy output: the text ends right before it.
    let word = base
        .text
        .split_whitespace()
        .nth(3)
        .expect("some words")
        .to_string();
    let cut = base.text.find(&word).expect("word in text");
    let stopped = generate(
        &url,
        v1::GenerateRequest {
            stop: vec![word.clone()],
            ..text_request(TEXTS[2], 24)
        },
    )
    .await
    .expect("stop string");
    assert_eq!(stopped.finished.reason, v1::FinishReason::Stop as i32);
    assert_eq!(
        stopped.text,
        base.text[..cut],
        "text must end right before the stop string"
    );
    assert_eq!(
        stopped.finished.stopped_by,
        Some(v1::finished::StoppedBy::StopString(word))
    );
    // Stop token id: the third generated token.
    let t = base.ids[2];
    let by_id = generate(
        &url,
        v1::GenerateRequest {
            stop_token_ids: vec![t],
            ..text_request(TEXTS[2], 24)
        },
    )
    .await
    .expect("stop id");
    assert_eq!(
        by_id.ids,
        base.ids[..base.ids.iter().position(|&x| x == t).expect("present")]
    );
    assert_eq!(by_id.finished.reason, v1::FinishReason::Stop as i32);
    // Logprobs: the chosen greedy token is the top alternative.
    let mut c = server.client().await;
    let mut s = c
        .generate_stream(v1::GenerateRequest {
            top_logprobs: 5,
            ..text_request(TEXTS[2], 3)
        })
        .await
        .expect("logprobs")
        .into_inner();
    while let Some(m) = s.next().await {
        if let Some(v1::generate_response::Event::Token(tok)) = m.expect("ok").event {
            assert_eq!(tok.top_logprobs.len(), 5);
            assert_eq!(tok.top_logprobs[0].id, tok.id);
            assert!((tok.top_logprobs[0].logprob - tok.logprob).abs() < 1e-6);
            assert!(tok
                .top_logprobs
                .windows(2)
                .all(|w| w[0].logprob >= w[1].logprob));
        }
    }
    // ignore_eos runs to max_tokens.
    let chat = TEXTS[6];
    let natural = generate(&url, text_request(chat, 200))
        .await
        .expect("natural");
    if natural.finished.reason == v1::FinishReason::Eos as i32 {
        let n = natural.ids.len() as u32 + 5;
        let forced = generate(
            &url,
            v1::GenerateRequest {
                ignore_eos: true,
                ..text_request(chat, n)
            },
        )
        .await
        .expect("ignore_eos");
        assert_eq!(forced.ids.len() as u32, n);
        assert_eq!(forced.finished.reason, v1::FinishReason::Length as i32);
    }
    server.stop().await;
}

/// GenerateRequest with the prompt text as raw bytes, to send invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawRequest {
    #[prost(bytes = "vec", tag = "2")]
    text: Vec<u8>,
    #[prost(uint32, tag = "4")]
    max_tokens: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_prompt_is_invalid_argument() {
    let _serial = SERIAL.lock().await;
    let server = start(1, &[]).await;
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/weft.v1.Generation/GenerateStream");
    let req = RawRequest {
        text: vec![b'h', 0xff, 0xfe, b'i'],
        max_tokens: 4,
    };
    let codec = tonic_prost::ProstCodec::<RawRequest, v1::GenerateResponse>::default();
    let err = match grpc
        .server_streaming(tonic::Request::new(req), path, codec)
        .await
    {
        Ok(mut s) => s.get_mut().message().await.expect_err("must fail"),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("UTF-8") || err.message().contains("utf-8"),
        "{}",
        err.message()
    );
    generate(&server.url, text_request("hi", 2))
        .await
        .expect("still serving");
    server.stop().await;
}
