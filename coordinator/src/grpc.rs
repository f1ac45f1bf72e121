//! The client API `weft.v1.Generation`: validates each request, hands it to
//! the scheduler and streams the scheduler's events back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weft_model::config::ModelConfig;
use weft_model::tokenizer::Tokenizer;
use weft_proto::v1;

use crate::request::{validate, RequestLimits};
use crate::scheduler::SchedulerHandle;

/// The served model.
pub struct ServedModel {
    pub name: String,
    pub config: ModelConfig,
    pub tokenizer: Arc<Tokenizer>,
    pub limits: RequestLimits,
    pub scheduler: SchedulerHandle,
}

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

/// gRPC face of the [`ServedModel`].
#[derive(Clone)]
pub struct GenerationService(pub Arc<ServedModel>);

#[tonic::async_trait]
impl v1::generation_server::Generation for GenerationService {
    type GenerateStreamStream = ReceiverStream<Result<v1::GenerateResponse, Status>>;

    async fn generate_stream(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|d| Instant::now() + d);
        let req = request.into_inner();
        let m = &self.0;
        if !req.model.is_empty() && req.model != m.name {
            return Err(Status::not_found(format!(
                "model {:?} is not served here; this server serves {:?}",
                req.model, m.name
            )));
        }
        let job = validate(req, &m.config, &m.tokenizer, &m.limits)?;
        // Room for every token plus the final message and an error, so the
        // scheduler never waits on a slow client.
        let (tx, rx) = mpsc::channel(job.max_tokens as usize + 2);
        m.scheduler.submit(job, tx, deadline).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
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
