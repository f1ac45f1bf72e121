//! The HTTP server: the OpenAI-compatible API (`/v1/...`, in
//! [`crate::openai`]), `/health` and `/metrics` (Prometheus text), with API
//! keys checked before any handler runs.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, ApiError, ErrorKind};
use crate::CoordinatorError;

/// An error as OpenAI clients expect it: `{"error": {...}}` with the
/// matching HTTP status.
pub fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({
        "error": {
            "message": e.message,
            "type": e.openai_type(),
            "param": null,
            "code": status.as_u16(),
        }
    });
    (status, Json(body)).into_response()
}

/// The whole HTTP application.
pub fn router(api: Arc<Api>) -> Router {
    let open_paths = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    let open_paths = if api.config.auth_health {
        open_paths.layer(middleware::from_fn_with_state(api.clone(), require_key))
    } else {
        open_paths
    };
    let v1 =
        crate::openai::routes().layer(middleware::from_fn_with_state(api.clone(), require_key));
    Router::new()
        .merge(v1)
        .merge(open_paths)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
}

/// Serves until `shutdown` is cancelled, then lets open requests finish.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    axum::serve(listener, router(api))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

async fn require_key(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let v = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match api.config.keys.check(v) {
        Ok(()) => next.run(req).await,
        Err(denied) => error_response(&ApiError::new(ErrorKind::Unauthenticated, denied.message())),
    }
}

async fn health(State(api): State<Arc<Api>>) -> Response {
    let s = api.health.state();
    if s.serving {
        (
            StatusCode::OK,
            Json(serde_json::json!({"status": "serving"})),
        )
            .into_response()
    } else {
        let body = serde_json::json!({"status": "not_serving", "reason": s.reason});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let stats = match api.scheduler() {
        Ok(s) => s.stats().await,
        Err(_) => None,
    };
    let text = api.metrics.render(stats.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let body = serde_json::json!({
        "error": {
            "message": format!("{} is not allowed on {}", req.method(), req.uri().path()),
            "type": "invalid_request_error",
            "param": null,
            "code": 405,
        }
    });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

async fn not_found(req: Request) -> Response {
    error_response(&ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    )))
}
