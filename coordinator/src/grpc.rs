//! The gRPC client API `weft.v1` (services Generation and Models): reads
//! the transport's metadata (deadline, trace context), hands each call to
//! the shared [`Api`] and answers with its events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use weft_proto::v1;

use crate::api::{collect, Api, RequestCtx};
use crate::auth::ApiKeys;
use crate::CoordinatorError;

/// Parses a `grpc-timeout` header value ("<digits><unit>", unit one of H M
/// S m u n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    if num.is_empty() || num.len() > 8 {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn ctx(meta: &MetadataMap, kind: &'static str) -> RequestCtx {
    let deadline = meta
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map(|d| Instant::now() + d);
    let trace = meta.get("traceparent").and_then(|v| v.to_str().ok());
    RequestCtx::new(deadline, trace, "grpc", kind)
}

/// An interceptor that checks the `authorization` metadata.
pub fn auth_interceptor(
    keys: ApiKeys,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let v = req.metadata().get("authorization").map(|v| v.as_bytes());
        match keys.check(v) {
            Ok(()) => Ok(req),
            Err(denied) => Err(Status::unauthenticated(denied.message())),
        }
    }
}

/// gRPC face of the [`Api`]: `weft.v1.Generation`.
#[derive(Clone)]
pub struct GenerationService(pub Arc<Api>);

type EventStream = ReceiverStream<Result<v1::GenerateResponse, Status>>;

#[tonic::async_trait]
impl v1::generation_server::Generation for GenerationService {
    type GenerateStreamStream = EventStream;
    type ChatStreamStream = EventStream;

    async fn generate(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<v1::GenerateReply>, Status> {
        let ctx = ctx(request.metadata(), "generate");
        let rx = self.0.generate(request.into_inner(), &ctx).await?;
        Ok(Response::new(collect(rx).await?))
    }

    async fn generate_stream(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let ctx = ctx(request.metadata(), "generate_stream");
        let rx = self.0.generate(request.into_inner(), &ctx).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn chat(
        &self,
        request: Request<v1::ChatRequest>,
    ) -> Result<Response<v1::GenerateReply>, Status> {
        let ctx = ctx(request.metadata(), "chat");
        let rx = self.0.chat(request.into_inner(), &ctx).await?;
        Ok(Response::new(collect(rx).await?))
    }

    async fn chat_stream(
        &self,
        request: Request<v1::ChatRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let ctx = ctx(request.metadata(), "chat_stream");
        let rx = self.0.chat(request.into_inner(), &ctx).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn tokenize(
        &self,
        request: Request<v1::TokenizeRequest>,
    ) -> Result<Response<v1::TokenizeResponse>, Status> {
        Ok(Response::new(self.0.tokenize(request.into_inner())?))
    }

    async fn detokenize(
        &self,
        request: Request<v1::DetokenizeRequest>,
    ) -> Result<Response<v1::DetokenizeResponse>, Status> {
        Ok(Response::new(self.0.detokenize(request.into_inner())?))
    }
}

/// `weft.v1.Models`.
#[derive(Clone)]
pub struct ModelsService(pub Arc<Api>);

#[tonic::async_trait]
impl v1::models_server::Models for ModelsService {
    async fn list_models(
        &self,
        _request: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        Ok(Response::new(v1::ListModelsResponse {
            models: vec![self.0.model_info()],
        }))
    }

    async fn get_model_info(
        &self,
        request: Request<v1::GetModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        self.0.check_model(&request.get_ref().model)?;
        Ok(Response::new(self.0.model_info()))
    }
}

/// Serves `weft.v1` (with API keys), `grpc.health.v1` and reflection until
/// `shutdown` is cancelled.
pub async fn serve_grpc(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), CoordinatorError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weft_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoordinatorError::Unavailable(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weft_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| CoordinatorError::Unavailable(format!("reflection: {e}")))?;
    let keys = api.config.keys.clone();
    let health_keys = if api.config.auth_health {
        keys.clone()
    } else {
        ApiKeys::open()
    };
    let generation = v1::generation_server::GenerationServer::with_interceptor(
        GenerationService(api.clone()),
        auth_interceptor(keys.clone()),
    );
    let models = v1::models_server::ModelsServer::with_interceptor(
        ModelsService(api.clone()),
        auth_interceptor(keys),
    );
    let health = tonic::service::interceptor::InterceptedService::new(
        api.health.grpc_service(),
        auth_interceptor(health_keys),
    );
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            undecodable_is_invalid_argument,
        ))
        .add_service(generation)
        .add_service(models)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}

/// tonic answers a request message that does not decode (for example a
/// string field holding invalid UTF-8) with INTERNAL; for a client API that
/// is bad input, so it becomes INVALID_ARGUMENT.
fn undecodable_is_invalid_argument<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers_mut();
    let decode_error = h.get("grpc-status").is_some_and(|v| v == "13")
        && h.get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                m.starts_with("failed%20to%20decode") || m.starts_with("failed to decode")
            });
    if decode_error {
        h.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "12", "12x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
