//! The OpenAI-compatible HTTP API: `/v1/chat/completions`,
//! `/v1/completions`, `/v1/models` and `/v1/models/{id}`, shaped the way
//! OpenAI clients parse them. Requests go through the shared
//! [`Api`] (validation, templating, scheduling) like gRPC ones; each of
//! the `n` choices is a request of its own.

mod format;
mod request;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::try_join_all;
use serde_json::json;
use weft_proto::v1;

use crate::api::{collect, Api, ApiError, EventRx, RequestCtx};
use crate::http::error_response;
use format::{Endpoint, Meta};
use request::{Common, Prompt};

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        // Model names may hold slashes ("org/name").
        .route("/v1/models/{*id}", get(get_model))
}

type RawBody = Result<Bytes, BytesRejection>;

async fn chat_completions(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: RawBody,
) -> Response {
    chat(&api, &headers, body)
        .await
        .unwrap_or_else(|e| error_response(&e))
}

async fn completions(State(api): State<Arc<Api>>, headers: HeaderMap, body: RawBody) -> Response {
    completion(&api, &headers, body)
        .await
        .unwrap_or_else(|e| error_response(&e))
}

async fn list_models(State(api): State<Arc<Api>>) -> Response {
    Json(json!({"object": "list", "data": [format::model_card(&api)]})).into_response()
}

async fn get_model(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    // An empty name would mean "the served model" to check_model.
    let known = !id.is_empty() && api.check_model(&id).is_ok();
    if known {
        Json(format::model_card(&api)).into_response()
    } else {
        error_response(&ApiError::not_found(format!(
            "The model `{}` does not exist; this server serves `{}`",
            id.chars().take(100).collect::<String>(),
            api.model.name
        )))
    }
}

fn body_bytes(body: RawBody) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::invalid(format!("cannot read the request body: {}", e.body_text())))
}

/// The request's context: its `traceparent`, if valid.
fn request_ctx(headers: &HeaderMap, kind: &'static str) -> RequestCtx {
    let trace = headers.get("traceparent").and_then(|v| v.to_str().ok());
    RequestCtx::new(None, trace, "http", kind)
}

/// What the context leaves for the completion of a `prompt_len`-token
/// prompt (at least 1, so that a prompt too long for the context gets the
/// context-length error).
fn room(api: &Api, prompt_len: usize) -> u32 {
    let l = api.limits();
    let room = l
        .max_model_len
        .min(l.kv_capacity_tokens)
        .saturating_sub(prompt_len);
    u32::try_from(room).unwrap_or(u32::MAX).max(1)
}

async fn chat(api: &Arc<Api>, headers: &HeaderMap, body: RawBody) -> Result<Response, ApiError> {
    let max_top = api.model.limits.max_top_logprobs;
    let p = request::chat(&body_bytes(body)?, api.config.max_n, max_top)?;
    let c = &p.common;
    api.check_model(&c.model)?;
    let ctx = request_ctx(headers, "chat");
    let max_tokens = match c.max_tokens {
        Some(m) => m,
        None => room(api, api.chat_prompt(&p.messages)?.0.len()),
    };
    let mut rxs = Vec::with_capacity(c.n as usize);
    for i in 0..c.n {
        let req = v1::ChatRequest {
            model: c.model.clone(),
            messages: p.messages.clone(),
            max_tokens,
            sampling: Some(c.sampling_for(i)),
            stop: c.stop.clone(),
            stop_token_ids: c.stop_token_ids.clone(),
            ignore_eos: c.ignore_eos,
            top_logprobs: c.logprobs.unwrap_or(0),
        };
        // An error drops the choices already queued, which cancels them.
        rxs.push(api.chat(req, &ctx).await?);
    }
    respond(api, Endpoint::Chat, c, rxs).await
}

async fn completion(
    api: &Arc<Api>,
    headers: &HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    let p = request::completion(&body_bytes(body)?, api.config.max_n)?;
    let c = &p.common;
    api.check_model(&c.model)?;
    let ctx = request_ctx(headers, "completion");
    let ids = match p.prompt {
        // Tokenized as Generate would, once for all choices.
        Prompt::Text(t) => api
            .model
            .tokenizer
            .encode(&t, true)
            .map_err(|e| ApiError::invalid(format!("tokenizer: {e}")))?,
        Prompt::Ids(ids) => ids,
    };
    let max_tokens = c.max_tokens.unwrap_or_else(|| room(api, ids.len()));
    let mut rxs = Vec::with_capacity(c.n as usize);
    for i in 0..c.n {
        let req = v1::GenerateRequest {
            model: c.model.clone(),
            prompt: Some(v1::generate_request::Prompt::TokenIds(v1::TokenIds {
                ids: ids.clone(),
            })),
            max_tokens,
            sampling: Some(c.sampling_for(i)),
            stop: c.stop.clone(),
            stop_token_ids: c.stop_token_ids.clone(),
            ignore_eos: c.ignore_eos,
            top_logprobs: c.logprobs.unwrap_or(0),
        };
        rxs.push(api.generate(req, &ctx).await?);
    }
    respond(api, Endpoint::Completion, c, rxs).await
}

/// Answers with the choices' results: whole, or streamed once every
/// choice has its first event (so a request that fails before its first
/// token gets an HTTP error, not an empty stream).
async fn respond(
    api: &Api,
    endpoint: Endpoint,
    c: &Common,
    rxs: Vec<EventRx>,
) -> Result<Response, ApiError> {
    let meta = Meta::new(endpoint, &api.model.name);
    let tokenizer = api.model.tokenizer.clone();
    if c.stream {
        let firsts = try_join_all(rxs.into_iter().map(first_event)).await?;
        let n = firsts.len();
        let encoder =
            stream::Encoder::new(meta, n, c.logprobs.is_some(), c.include_usage, tokenizer);
        return Ok(stream::response(encoder, firsts));
    }
    let replies = try_join_all(rxs.into_iter().map(collect)).await?;
    let choices = replies
        .iter()
        .enumerate()
        .map(|(i, r)| format::reply_choice(endpoint, i, r, c.logprobs.is_some(), &tokenizer))
        .collect();
    let usage = format::usage(replies.iter().filter_map(|r| r.finished.as_ref()));
    Ok(Json(meta.body(choices, usage)).into_response())
}

async fn first_event(mut rx: EventRx) -> Result<(v1::GenerateResponse, EventRx), ApiError> {
    match rx.recv().await {
        Some(Ok(ev)) => Ok((ev, rx)),
        Some(Err(status)) => Err(ApiError::from(status)),
        None => Err(ApiError::unavailable(
            "the request ended without a result (the server is shutting down)",
        )),
    }
}
