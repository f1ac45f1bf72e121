//! One sequence as the scheduler tracks it: its tokens, KV blocks, and the
//! client stream it feeds (detokenization and stop strings included).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tonic::Status;
use weft_model::chat::ReasoningParser;
use weft_model::tokenizer::{IncrementalDecoder, Tokenizer};
use weft_proto::cluster::v1 as pb;
use weft_proto::v1;

use crate::kv::BlockHash;
use crate::metrics::{FinishedReason, RequestMetrics};
use crate::request::GenRequest;
use crate::stop::{StopEvent, StopMatcher};

pub type EventTx = mpsc::Sender<Result<v1::GenerateResponse, Status>>;

/// Why a sequence ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    Eos,
    Length,
    StopToken(u32),
    StopString(String),
}

pub struct Seq {
    pub id: u64,
    pub req: GenRequest,
    pub output: Vec<u32>,
    pub blocks: Vec<u32>,
    /// Hashes of the leading full blocks already registered in the prefix cache.
    pub hashes: Vec<BlockHash>,
    /// Positions whose keys/values are in the KV cache.
    pub computed: usize,
    /// Prompt tokens found in the prefix cache at first admission.
    pub cached_prompt_tokens: usize,
    /// Whether the next step must carry the token history (the worker has
    /// not seen positions before `computed`).
    pub needs_history: bool,
    pub preemptions: u32,
    pub deadline: Option<Instant>,
    /// Whether the next step is the first since an admission (it carries
    /// the trace context to the workers).
    pub announce: bool,
    pub metrics: RequestMetrics,
    tx: EventTx,
    reasoning: Option<ReasoningParser>,
    decoder: IncrementalDecoder<Arc<Tokenizer>>,
    stop: StopMatcher,
    admitted_once: bool,
}

impl Seq {
    pub fn new(
        id: u64,
        req: GenRequest,
        tx: EventTx,
        tokenizer: Arc<Tokenizer>,
        deadline: Option<Instant>,
        metrics: RequestMetrics,
    ) -> Self {
        let stop = StopMatcher::new(req.stop.clone());
        let reasoning = req.reasoning.map(ReasoningParser::new);
        Seq {
            id,
            req,
            output: Vec::new(),
            blocks: Vec::new(),
            hashes: Vec::new(),
            computed: 0,
            cached_prompt_tokens: 0,
            needs_history: false,
            preemptions: 0,
            deadline,
            announce: false,
            metrics,
            tx,
            reasoning,
            decoder: IncrementalDecoder::new(tokenizer),
            stop,
            admitted_once: false,
        }
    }

    /// Prompt followed by the output so far.
    pub fn tokens(&self) -> Vec<u32> {
        let mut t = self.req.prompt.clone();
        t.extend_from_slice(&self.output);
        t
    }

    pub fn known_len(&self) -> usize {
        self.req.prompt.len() + self.output.len()
    }

    pub fn token_at(&self, pos: usize) -> u32 {
        let p = self.req.prompt.len();
        if pos < p {
            self.req.prompt[pos]
        } else {
            self.output[pos - p]
        }
    }

    /// Records the prefix-cache hit of an admission.
    pub fn admitted(&mut self, cached_tokens: usize) {
        if !self.admitted_once {
            self.cached_prompt_tokens = cached_tokens;
            self.admitted_once = true;
        }
        self.computed = cached_tokens;
        self.needs_history = cached_tokens > 0;
        self.announce = true;
        self.metrics.admitted(Instant::now());
    }

    pub fn client_gone(&self) -> bool {
        self.tx.is_closed()
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Takes a sampled token; streams its text. Returns why the sequence
    /// ends, if it does.
    pub fn accept(
        &mut self,
        t: &pb::SampledToken,
        eos: &[u32],
        tokenizer: &Tokenizer,
        max_len: usize,
    ) -> Option<Finish> {
        self.output.push(t.token);
        self.metrics.token(Instant::now(), self.req.prompt.len());
        if !self.req.ignore_eos && eos.contains(&t.token) {
            return Some(Finish::Eos);
        }
        if self.req.stop_token_ids.contains(&t.token) {
            return Some(Finish::StopToken(t.token));
        }
        // An id the tokenizer cannot decode streams as empty text.
        let piece = self.decoder.push(t.token).unwrap_or_default();
        let (text, stopped) = match self.stop.push(&piece) {
            StopEvent::Text(s) => (s, None),
            StopEvent::Stopped { text, stop } => (text, Some(stop)),
        };
        let top = t
            .top
            .iter()
            .map(|a| v1::TopLogprob {
                id: a.token,
                text: tokenizer.decode(&[a.token]).unwrap_or_default(),
                logprob: a.logprob,
            })
            .collect();
        let (text, reasoning_text) = match &mut self.reasoning {
            Some(p) => {
                let d = p.push(&text);
                (d.content, d.reasoning)
            }
            None => (text, String::new()),
        };
        self.send(v1::generate_response::Event::Token(v1::TokenDelta {
            id: t.token,
            text,
            logprob: t.logprob,
            top_logprobs: top,
            reasoning_text,
        }));
        if let Some(s) = stopped {
            return Some(Finish::StopString(s));
        }
        let at_limit =
            self.output.len() >= self.req.max_tokens as usize || self.known_len() >= max_len;
        at_limit.then_some(Finish::Length)
    }

    /// Sends the final message.
    pub fn finish(&mut self, why: &Finish) {
        let trailing = match why {
            Finish::StopString(_) => String::new(),
            _ => {
                let rest = self.decoder.finish().unwrap_or_default();
                match self.stop.push(&rest) {
                    StopEvent::Text(mut s) => {
                        s.push_str(&self.stop.finish());
                        s
                    }
                    StopEvent::Stopped { text, .. } => text,
                }
            }
        };
        let (trailing, trailing_reasoning) = match &mut self.reasoning {
            Some(p) => {
                let mut d = p.push(&trailing);
                let end = p.finish();
                d.content.push_str(&end.content);
                d.reasoning.push_str(&end.reasoning);
                (d.content, d.reasoning)
            }
            None => (trailing, String::new()),
        };
        let (reason, stopped_by) = match why {
            Finish::Eos => (v1::FinishReason::Eos, None),
            Finish::Length => (v1::FinishReason::Length, None),
            Finish::StopToken(id) => (
                v1::FinishReason::Stop,
                Some(v1::finished::StoppedBy::StopTokenId(*id)),
            ),
            Finish::StopString(s) => (
                v1::FinishReason::Stop,
                Some(v1::finished::StoppedBy::StopString(s.clone())),
            ),
        };
        let done = v1::Finished {
            reason: reason as i32,
            usage: Some(v1::Usage {
                prompt_tokens: self.req.prompt.len() as u32,
                completion_tokens: self.output.len() as u32,
                cached_prompt_tokens: self.cached_prompt_tokens as u32,
            }),
            stopped_by,
            trailing_text: trailing,
            trailing_reasoning_text: trailing_reasoning,
        };
        let label = match why {
            Finish::Length => FinishedReason::Length,
            _ => FinishedReason::Stop,
        };
        self.metrics
            .finished(label, self.req.prompt.len(), self.output.len());
        self.req.span.in_scope(|| {
            tracing::debug!(
                seq = self.id,
                finish = match why {
                    Finish::Eos => "eos",
                    Finish::Length => "length",
                    Finish::StopToken(_) => "stop_token",
                    Finish::StopString(_) => "stop_string",
                },
                completion_tokens = self.output.len(),
                cached_prompt_tokens = self.cached_prompt_tokens,
                preemptions = self.preemptions,
                "request finished"
            )
        });
        self.send(v1::generate_response::Event::Finished(done));
    }

    /// Ends the stream with an error status.
    pub fn fail(&mut self, status: Status) {
        self.abort();
        self.req
            .span
            .in_scope(|| tracing::debug!(seq = self.id, code = ?status.code(), "request failed"));
        let _ = self.tx.try_send(Err(status));
    }

    /// Counts the request as aborted (cancelled, expired or failed).
    pub fn abort(&mut self) {
        self.metrics.finished(
            FinishedReason::Abort,
            self.req.prompt.len(),
            self.output.len(),
        );
    }

    fn send(&self, e: v1::generate_response::Event) {
        // The channel holds max_tokens + 2 messages, so it is never full
        // while the client listens; a closed one is reaped next iteration.
        let _ = self
            .tx
            .try_send(Ok(v1::GenerateResponse { event: Some(e) }));
    }
}
