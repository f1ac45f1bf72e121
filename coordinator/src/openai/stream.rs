//! Streaming responses: the events of a request's `n` choices, merged by
//! index and written as server-sent events (`data: <json>\n\n`, ending in
//! `data: [DONE]`).
//!
//! The body stream owns the choices' receivers: when the client goes away
//! the body is dropped, the receivers with it, and the scheduler reaps the
//! requests.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, SelectAll, StreamExt};
use serde_json::{json, Map, Value};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use weft_model::tokenizer::Tokenizer;
use weft_proto::v1;
use weft_proto::v1::generate_response::Event;

use super::format::{error_event, finish_reason, usage, Endpoint, Logprobs, Meta};
use crate::api::{ApiError, EventRx};

/// One server-sent event.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Json(Value),
    Done,
}

impl Frame {
    pub fn to_sse(&self) -> Bytes {
        match self {
            Frame::Json(v) => Bytes::from(format!("data: {v}\n\n")),
            Frame::Done => Bytes::from_static(b"data: [DONE]\n\n"),
        }
    }
}

struct ChoiceState {
    /// Whether the role chunk (chat) went out.
    started: bool,
    /// Characters of output so far (completions' `text_offset`).
    offset: usize,
    /// Logprobs of tokens whose text has not gone out yet.
    pending: Option<Logprobs>,
    finished: Option<v1::Finished>,
}

/// Turns the events of a request's choices into stream chunks.
pub struct Encoder {
    meta: Meta,
    include_usage: bool,
    tokenizer: Arc<Tokenizer>,
    choices: Vec<ChoiceState>,
    over: bool,
}

/// A choice's event; `None` when its channel closed.
pub type ChoiceEvent = Option<Result<v1::GenerateResponse, Status>>;

impl Encoder {
    pub fn new(
        meta: Meta,
        n: usize,
        logprobs: bool,
        include_usage: bool,
        tokenizer: Arc<Tokenizer>,
    ) -> Self {
        let endpoint = meta.endpoint;
        let choices = (0..n)
            .map(|_| ChoiceState {
                started: false,
                offset: 0,
                pending: logprobs.then(|| Logprobs::new(endpoint)),
                finished: None,
            })
            .collect();
        Encoder {
            meta,
            include_usage,
            tokenizer,
            choices,
            over: false,
        }
    }

    /// Whether the stream has ended (every choice finished, or an error).
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// The frames that choice `index`'s event produces.
    pub fn event(&mut self, index: usize, ev: ChoiceEvent) -> Vec<Frame> {
        if self.over || self.choices.get(index).is_none_or(|c| c.finished.is_some()) {
            return Vec::new();
        }
        let ev = match ev {
            Some(Ok(v1::GenerateResponse { event: Some(ev) })) => ev,
            Some(Ok(v1::GenerateResponse { event: None })) => return Vec::new(),
            Some(Err(status)) => return self.fail(&ApiError::from(status)),
            None => {
                return self.fail(&ApiError::unavailable(
                    "the request ended without a result (the server is shutting down)",
                ))
            }
        };
        let mut out = Vec::new();
        if self.meta.endpoint == Endpoint::Chat && !self.choices[index].started {
            let delta = json!({"role": "assistant", "content": ""});
            out.push(self.chunk(index, delta, Value::Null, None));
        }
        self.choices[index].started = true;
        match ev {
            Event::Token(t) => self.token(index, &t, &mut out),
            Event::Finished(f) => self.finished(index, f, &mut out),
        }
        out
    }

    fn fail(&mut self, e: &ApiError) -> Vec<Frame> {
        self.over = true;
        vec![Frame::Json(error_event(e)), Frame::Done]
    }

    fn token(&mut self, index: usize, t: &v1::TokenDelta, out: &mut Vec<Frame>) {
        let c = &mut self.choices[index];
        if let Some(p) = &mut c.pending {
            p.push(t, c.offset, &self.tokenizer);
        }
        c.offset += t.text.chars().count();
        if t.text.is_empty() && t.reasoning_text.is_empty() {
            // Its logprobs go out with the next chunk that has text.
            return;
        }
        let delta = self.delta(&t.text, &t.reasoning_text);
        let lp = self.take_logprobs(index);
        out.push(self.chunk(index, delta, lp, None));
    }

    fn finished(&mut self, index: usize, f: v1::Finished, out: &mut Vec<Frame>) {
        let delta = self.delta(&f.trailing_text, &f.trailing_reasoning_text);
        let lp = self.take_logprobs(index);
        out.push(self.chunk(index, delta, lp, Some(finish_reason(&f))));
        self.choices[index].finished = Some(f);
        if self.choices.iter().all(|c| c.finished.is_some()) {
            if self.include_usage {
                let u = usage(self.choices.iter().filter_map(|c| c.finished.as_ref()));
                out.push(Frame::Json(self.meta.usage_chunk(u)));
            }
            out.push(Frame::Done);
            self.over = true;
        }
    }

    /// Chat: the delta object (empty fields left out); completions: the text.
    fn delta(&self, text: &str, reasoning: &str) -> Value {
        match self.meta.endpoint {
            Endpoint::Chat => {
                let mut d = Map::new();
                if !text.is_empty() {
                    d.insert("content".into(), json!(text));
                }
                if !reasoning.is_empty() {
                    d.insert("reasoning_content".into(), json!(reasoning));
                }
                Value::Object(d)
            }
            Endpoint::Completion => json!(text),
        }
    }

    fn take_logprobs(&mut self, index: usize) -> Value {
        match &mut self.choices[index].pending {
            Some(p) if !p.is_empty() => p.take(),
            _ => Value::Null,
        }
    }

    fn chunk(&self, index: usize, delta: Value, logprobs: Value, reason: Option<&str>) -> Frame {
        let field = match self.meta.endpoint {
            Endpoint::Chat => "delta",
            Endpoint::Completion => "text",
        };
        let mut choice = Map::new();
        choice.insert("index".into(), json!(index));
        choice.insert(field.into(), delta);
        choice.insert("logprobs".into(), logprobs);
        choice.insert("finish_reason".into(), json!(reason));
        Frame::Json(self.meta.chunk(Value::Object(choice), self.include_usage))
    }
}

type Merged = SelectAll<BoxStream<'static, (usize, ChoiceEvent)>>;

/// Each choice's first event (already received) and the rest of its
/// events, merged as they come; a `None` marks a channel's end.
fn merge(firsts: Vec<(v1::GenerateResponse, EventRx)>) -> Merged {
    stream::select_all(firsts.into_iter().enumerate().map(|(i, (first, rx))| {
        stream::once(async move { Ok(first) })
            .chain(ReceiverStream::new(rx))
            .map(Some)
            .chain(stream::once(async { None }))
            .map(move |ev| (i, ev))
            .boxed()
    }))
}

struct State {
    encoder: Encoder,
    merged: Merged,
    queue: VecDeque<Frame>,
}

/// The `text/event-stream` response of a streamed request.
pub fn response(encoder: Encoder, firsts: Vec<(v1::GenerateResponse, EventRx)>) -> Response {
    let state = State {
        encoder,
        merged: merge(firsts),
        queue: VecDeque::new(),
    };
    let body = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(f) = s.queue.pop_front() {
                return Some((Ok::<_, Infallible>(f.to_sse()), s));
            }
            if s.encoder.is_over() {
                return None;
            }
            let (i, ev) = s.merged.next().await?;
            s.queue.extend(s.encoder.event(i, ev));
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
