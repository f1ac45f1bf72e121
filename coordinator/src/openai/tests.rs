//! Request parsing, logprob formatting and stream chunk shapes.

use std::sync::Arc;

use serde_json::{json, Value};
use tonic::Status;
use weft_model::tokenizer::{GgufTokenizerData, Tokenizer};
use weft_proto::v1;
use weft_proto::v1::generate_response::Event;

use super::format::{self, Endpoint, Logprobs, Meta};
use super::request::{self, Prompt};
use super::stream::{Encoder, Frame};

fn chat_err(body: &str) -> String {
    let e = request::chat(body.as_bytes(), 8, 20).expect_err(body);
    assert_eq!(e.http_status(), 400, "{body}: {e}");
    e.message
}

fn completion_err(body: &str) -> String {
    let e = request::completion(body.as_bytes(), 8).expect_err(body);
    assert_eq!(e.http_status(), 400, "{body}: {e}");
    e.message
}

fn user(extra: &str) -> String {
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#)
}

#[test]
fn chat_defaults_and_unknown_fields() {
    let p = request::chat(user(r#","user":"abc","tools":[]"#).as_bytes(), 8, 20).expect("ok");
    let c = &p.common;
    assert_eq!(
        (c.n, c.max_tokens, c.stream, c.include_usage),
        (1, None, false, false)
    );
    assert_eq!(c.sampling.temperature, 1.0);
    assert_eq!(c.sampling.seed, None);
    assert_eq!(c.logprobs, None);
    assert_eq!(p.messages.len(), 1);
    assert_eq!(p.messages[0].role, v1::Role::User as i32);
    assert_eq!(p.messages[0].content, "hi");
}

#[test]
fn chat_fields_are_read() {
    let extra = r#","n":3,"max_tokens":5,"max_completion_tokens":7,"stop":"x","seed":-1,
        "temperature":0,"top_p":0.5,"top_k":-1,"min_p":0.1,"repetition_penalty":1.2,
        "presence_penalty":0.5,"frequency_penalty":-0.5,"ignore_eos":true,"stop_token_ids":[3],
        "logprobs":true,"top_logprobs":4,"stream":true,"stream_options":{"include_usage":true}"#;
    let p = request::chat(user(extra).as_bytes(), 8, 20).expect("ok");
    let c = &p.common;
    assert_eq!(
        (c.n, c.max_tokens),
        (3, Some(7)),
        "max_completion_tokens wins"
    );
    assert_eq!(c.stop, vec!["x".to_string()]);
    assert_eq!(c.stop_token_ids, vec![3]);
    assert!(c.ignore_eos && c.stream && c.include_usage);
    assert_eq!(c.logprobs, Some(4));
    let s = c.sampling;
    assert_eq!((s.temperature, s.top_p, s.top_k), (0.0, 0.5, 0));
    assert_eq!((s.min_p, s.repetition_penalty), (0.1, 1.2));
    assert_eq!((s.presence_penalty, s.frequency_penalty), (0.5, -0.5));
    assert_eq!(s.seed, Some(u64::MAX));
    assert_eq!(c.sampling_for(2).seed, Some(1), "choice i uses seed + i");
}

#[test]
fn chat_content_parts_and_roles() {
    let body = r#"{"messages":[{"role":"developer","content":"sys"},
        {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
        {"role":"assistant","content":null},{"role":"tool","content":"r"}]}"#;
    let p = request::chat(body.as_bytes(), 8, 20).expect("ok");
    let roles: Vec<i32> = p.messages.iter().map(|m| m.role).collect();
    let want = [
        v1::Role::System,
        v1::Role::User,
        v1::Role::Assistant,
        v1::Role::Tool,
    ];
    assert_eq!(roles, want.map(|r| r as i32));
    assert_eq!(p.messages[1].content, "a\nb");
    assert_eq!(p.messages[2].content, "");
}

#[test]
fn chat_errors_name_the_problem() {
    let cases = [
        ("{not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        (r#"{"model":"m"}"#, "`messages` is required"),
        (r#"{"messages":{}}"#, "`messages` must be an array"),
        (r#"{"messages":[]}"#, "at least one message"),
        (r#"{"messages":[1]}"#, "messages[0] must be an object"),
        (
            r#"{"messages":[{"content":"x"}]}"#,
            "messages[0].role is required",
        ),
        (
            r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
            "messages[0].role must be one of",
        ),
        (
            r#"{"messages":[{"role":1,"content":"x"}]}"#,
            "messages[0].role must be a string",
        ),
        (
            r#"{"messages":[{"role":"user","content":5}]}"#,
            "messages[0].content must be",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
            "messages[0].content[0]: only text parts are supported",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
            "messages[0].content[0].text must be a string",
        ),
    ];
    for (body, want) in cases {
        let msg = chat_err(body);
        assert!(msg.contains(want), "{body}: {msg:?} lacks {want:?}");
    }
    let field_cases = [
        (r#","n":0"#, "`n` must lie in [1, 8], got 0"),
        (r#","n":9"#, "`n` must lie in [1, 8], got 9"),
        (r#","n":-1"#, "`n`: invalid value"),
        (r#","temperature":"hot""#, "`temperature`: invalid type"),
        (r#","max_tokens":1.5"#, "`max_tokens`: invalid type"),
        (
            r#","stop":[1]"#,
            "`stop` must be a string or an array of strings",
        ),
        (r#","seed":"x""#, "`seed` must be an integer"),
        (r#","stream":"yes""#, "`stream`: invalid type"),
        (
            r#","stream_options":{"include_usage":1}"#,
            "include_usage` must be a boolean",
        ),
        (r#","top_logprobs":2"#, "`top_logprobs` needs `logprobs`"),
        (
            r#","logprobs":true,"top_logprobs":21"#,
            "`top_logprobs` must lie in [0, 20]",
        ),
        (r#","top_k":-2"#, "`top_k` must be -1, 0 or positive"),
        (r#","logit_bias":{"1":5}"#, "`logit_bias` is not supported"),
        (
            r#","tools":[{"type":"function","function":{"name":"f"}}]"#,
            "`tools` (function calling) is not supported",
        ),
        (
            r#","response_format":{"type":"json_object"}"#,
            "`response_format` other than",
        ),
    ];
    for (extra, want) in field_cases {
        let msg = chat_err(&user(extra));
        assert!(msg.contains(want), "{extra}: {msg:?} lacks {want:?}");
    }
}

#[test]
fn completion_prompts() {
    let parse = |prompt: &str| {
        let body = format!(r#"{{"prompt":{prompt}}}"#);
        request::completion(body.as_bytes(), 8)
            .expect(prompt)
            .prompt
    };
    assert_eq!(parse(r#""hi""#), Prompt::Text("hi".into()));
    assert_eq!(parse(r#"["hi"]"#), Prompt::Text("hi".into()));
    assert_eq!(parse("[1,2,3]"), Prompt::Ids(vec![1, 2, 3]));
    assert_eq!(parse("[[4,5]]"), Prompt::Ids(vec![4, 5]));
    let cases = [
        (
            r#"{"prompt":["a","b"]}"#,
            "batching prompts is not supported",
        ),
        (
            r#"{"prompt":[[1],[2]]}"#,
            "batching prompts is not supported",
        ),
        (r#"{"prompt":[]}"#, "`prompt` must not be empty"),
        (r#"{"prompt":[-1]}"#, "token ids must be non-negative"),
        (r#"{"prompt":[1,"a"]}"#, "token ids must be non-negative"),
        (r#"{"prompt":5}"#, "`prompt` must be a string"),
        (r#"{"prompt":[{}]}"#, "`prompt` must be a string"),
        (r#"{"model":"m"}"#, "`prompt` is required"),
        (
            r#"{"prompt":"a","logprobs":6}"#,
            "`logprobs` must lie in [0, 5]",
        ),
        (
            r#"{"prompt":"a","logprobs":true}"#,
            "`logprobs`: invalid type",
        ),
        (r#"{"prompt":"a","echo":true}"#, "`echo` is not supported"),
        (r#"{"prompt":"a","n":100}"#, "`n` must lie in [1, 8]"),
    ];
    for (body, want) in cases {
        let msg = completion_err(body);
        assert!(msg.contains(want), "{body}: {msg:?} lacks {want:?}");
    }
    let p = request::completion(br#"{"prompt":"a","logprobs":2}"#, 8).expect("ok");
    assert_eq!(p.common.logprobs, Some(2));
}

/// A byte-level BPE of one special token and the 256 bytes: byte b is id
/// 1 + b.
fn tokenizer() -> Arc<Tokenizer> {
    let printable = |b: u32| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 255;
    let bytes = (0u32..256).map(|b| {
        shifted += u32::from(!printable(b));
        let c = if printable(b) { b } else { shifted };
        char::from_u32(c).map(String::from).unwrap_or_default()
    });
    let tokens: Vec<String> = std::iter::once("<|endoftext|>".to_string())
        .chain(bytes)
        .collect();
    let data = GgufTokenizerData {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types: Vec::new(),
        merges: Vec::new(),
        bos_token_id: None,
        eos_token_id: Some(0),
        add_bos: false,
    };
    Arc::new(Tokenizer::from_gguf_data(data).expect("tokenizer"))
}

fn id(c: char) -> u32 {
    1 + c as u32
}

fn tok(c: char, text: &str, logprob: f32, top: &[(char, f32)]) -> v1::TokenDelta {
    v1::TokenDelta {
        id: id(c),
        text: text.into(),
        logprob,
        top_logprobs: top
            .iter()
            .map(|&(a, lp)| v1::TopLogprob {
                id: id(a),
                text: a.to_string(),
                logprob: lp,
            })
            .collect(),
        reasoning_text: String::new(),
    }
}

#[test]
fn chat_logprobs_shape() {
    let t = tokenizer();
    let mut lp = Logprobs::new(Endpoint::Chat);
    lp.push(&tok('a', "a", -0.5, &[('a', -0.5), ('b', -1.5)]), 0, &t);
    lp.push(&tok('b', "b", f32::NEG_INFINITY, &[]), 1, &t);
    let v = lp.take();
    assert_eq!(
        v,
        json!({"content": [
            {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [
                {"token": "a", "logprob": -0.5, "bytes": [97]},
                {"token": "b", "logprob": -1.5, "bytes": [98]},
            ]},
            {"token": "b", "logprob": -9999.0, "bytes": [98], "top_logprobs": []},
        ]})
    );
    assert!(lp.is_empty(), "take empties");
}

#[test]
fn completion_logprobs_shape() {
    let t = tokenizer();
    let mut lp = Logprobs::new(Endpoint::Completion);
    lp.push(&tok('a', "a", -0.25, &[('b', -0.5)]), 0, &t);
    lp.push(&tok(' ', " ", -1.0, &[(' ', -1.0)]), 1, &t);
    assert_eq!(
        lp.take(),
        json!({
            "tokens": ["a", " "],
            "token_logprobs": [-0.25, -1.0],
            // The sampled token is always listed, besides the alternatives.
            "top_logprobs": [{"b": -0.5, "a": -0.25}, {" ": -1.0}],
            "text_offset": [0, 1],
        })
    );
}

fn finished(reason: v1::FinishReason, prompt: u32, completion: u32, cached: u32) -> v1::Finished {
    v1::Finished {
        reason: reason as i32,
        usage: Some(v1::Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_prompt_tokens: cached,
        }),
        ..Default::default()
    }
}

#[test]
fn usage_and_finish_reasons() {
    let a = finished(v1::FinishReason::Eos, 10, 3, 4);
    let b = finished(v1::FinishReason::Length, 10, 5, 8);
    assert_eq!(
        format::usage([&a, &b]),
        json!({"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18,
               "prompt_tokens_details": {"cached_tokens": 4}})
    );
    assert_eq!(format::finish_reason(&a), "stop");
    assert_eq!(format::finish_reason(&b), "length");
    let s = finished(v1::FinishReason::Stop, 1, 1, 0);
    assert_eq!(format::finish_reason(&s), "stop");
}

#[test]
fn whole_chat_choice() {
    let t = tokenizer();
    let mut reply = v1::GenerateReply {
        text: "ab".into(),
        tokens: vec![tok('a', "a", -0.1, &[]), tok('b', "b", -0.2, &[])],
        finished: Some(finished(v1::FinishReason::Length, 2, 2, 0)),
        ..Default::default()
    };
    let c = format::reply_choice(Endpoint::Chat, 1, &reply, false, &t);
    assert_eq!(
        c,
        json!({"index": 1, "message": {"role": "assistant", "content": "ab"},
               "logprobs": null, "finish_reason": "length"})
    );
    reply.reasoning_text = "think".into();
    let c = format::reply_choice(Endpoint::Chat, 0, &reply, true, &t);
    assert_eq!(c["message"]["reasoning_content"], "think");
    assert_eq!(c["logprobs"]["content"].as_array().map(Vec::len), Some(2));
    let c = format::reply_choice(Endpoint::Completion, 0, &reply, true, &t);
    assert_eq!(c["text"], "ab");
    assert_eq!(c["logprobs"]["text_offset"], json!([0, 1]));
    let meta = Meta::new(Endpoint::Completion, "m");
    let body = meta.body(vec![c], json!({}));
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().is_some_and(|s| s.starts_with("cmpl-")));
}

fn token_ev(t: v1::TokenDelta) -> Option<Result<v1::GenerateResponse, Status>> {
    Some(Ok(v1::GenerateResponse {
        event: Some(Event::Token(t)),
    }))
}

fn finish_ev(f: v1::Finished) -> Option<Result<v1::GenerateResponse, Status>> {
    Some(Ok(v1::GenerateResponse {
        event: Some(Event::Finished(f)),
    }))
}

fn json_of(frames: Vec<Frame>) -> Vec<Value> {
    frames
        .into_iter()
        .map(|f| match f {
            Frame::Json(v) => v,
            Frame::Done => json!("[DONE]"),
        })
        .collect()
}

#[test]
fn chat_stream_chunks() {
    let meta = Meta::new(Endpoint::Chat, "m");
    let id = meta.id.clone();
    let mut e = Encoder::new(meta, 2, true, true, tokenizer());
    let first = json_of(e.event(1, token_ev(tok('a', "a", -0.5, &[]))));
    assert_eq!(first.len(), 2, "role chunk, then the token: {first:?}");
    assert_eq!(first[0]["object"], "chat.completion.chunk");
    assert_eq!(first[0]["id"], id.as_str());
    assert!(id.starts_with("chatcmpl-"));
    assert_eq!(first[0]["usage"], Value::Null);
    assert_eq!(
        first[0]["choices"],
        json!([{"index": 1, "delta": {"role": "assistant", "content": ""},
                "logprobs": null, "finish_reason": null}])
    );
    assert_eq!(first[1]["choices"][0]["delta"], json!({"content": "a"}));
    assert_eq!(
        first[1]["choices"][0]["logprobs"]["content"][0]["token"],
        "a"
    );
    // A token without text sends nothing; its logprob rides on the next chunk.
    assert!(e.event(1, token_ev(tok('b', "", -0.1, &[]))).is_empty());
    let fin = finished(v1::FinishReason::Stop, 4, 2, 0);
    let fin = v1::Finished {
        trailing_text: "!".into(),
        ..fin
    };
    let last = json_of(e.event(1, finish_ev(fin)));
    assert_eq!(last.len(), 1, "choice 0 still runs: {last:?}");
    let c = &last[0]["choices"][0];
    assert_eq!(
        (&c["delta"], &c["finish_reason"]),
        (&json!({"content": "!"}), &json!("stop"))
    );
    assert_eq!(c["logprobs"]["content"][0]["token"], "b");
    assert!(
        e.event(1, None).is_empty(),
        "a finished choice's close is fine"
    );
    assert!(!e.is_over());
    let end = json_of(e.event(0, finish_ev(finished(v1::FinishReason::Length, 4, 1, 2))));
    assert_eq!(end.len(), 4, "role, finish, usage, [DONE]: {end:?}");
    assert_eq!(end[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(end[1]["choices"][0]["delta"], json!({}));
    assert_eq!(end[1]["choices"][0]["logprobs"], Value::Null);
    assert_eq!(end[2]["choices"], json!([]));
    assert_eq!(end[2]["usage"]["completion_tokens"], 3);
    assert_eq!(end[2]["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    assert_eq!(end[3], json!("[DONE]"));
    assert!(e.is_over());
}

#[test]
fn completion_stream_chunks_and_errors() {
    let mut e = Encoder::new(
        Meta::new(Endpoint::Completion, "m"),
        1,
        false,
        false,
        tokenizer(),
    );
    let out = json_of(e.event(0, token_ev(tok('a', "a", -0.5, &[]))));
    assert_eq!(out.len(), 1, "no role chunk: {out:?}");
    assert_eq!(out[0]["object"], "text_completion");
    assert!(
        out[0].get("usage").is_none(),
        "no usage without include_usage"
    );
    assert_eq!(
        out[0]["choices"],
        json!([{"index": 0, "text": "a", "logprobs": null, "finish_reason": null}])
    );
    let err = e.event(0, Some(Err(Status::internal("boom"))));
    assert_eq!(err.len(), 2);
    assert_eq!(err[1], Frame::Done);
    let Frame::Json(v) = &err[0] else {
        panic!("an error event")
    };
    assert_eq!(v["error"]["message"], "boom");
    assert_eq!(v["error"]["type"], "internal_error");
    assert!(e.is_over());
    assert!(e.event(0, token_ev(tok('b', "b", -0.5, &[]))).is_empty());
    assert_eq!(
        Frame::Done.to_sse(),
        axum::body::Bytes::from_static(b"data: [DONE]\n\n")
    );
    assert_eq!(
        Frame::Json(json!({"a": 1})).to_sse().as_ref(),
        b"data: {\"a\":1}\n\n"
    );
}

#[test]
fn closed_channel_before_finish_is_an_error() {
    let mut e = Encoder::new(Meta::new(Endpoint::Chat, "m"), 1, false, false, tokenizer());
    let out = json_of(e.event(0, None));
    assert_eq!(out[0]["error"]["type"], "service_unavailable_error");
    assert_eq!(out[1], json!("[DONE]"));
}
