//! Errors of the coordinator, classified at the cause and turned into a
//! `tonic::Status` only at the gRPC boundary.

use weft_model::checkpoint::LoadError;
use weft_model::shard::PlanError;
use weft_model::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("cannot open the checkpoint: {0}")]
    Checkpoint(#[from] LoadError),
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("the worker group is not serving: {0}")]
    Unavailable(String),
    #[error("ranks disagree: {0}")]
    RankDisagreement(String),
    #[error("worker rank {rank} failed: {}", describe(status))]
    Worker { rank: usize, status: tonic::Status },
    #[error("cluster TLS: {0}")]
    Tls(#[from] weft_worker::tls::TlsError),
    #[error("cannot start local workers: {0}")]
    Spawn(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A worker's failed call as a client reads it: the worker's own message, or,
/// when no answer came, what happened to the connection (not the transport's
/// error chain).
fn describe(status: &tonic::Status) -> String {
    use std::error::Error;
    use std::io::ErrorKind as K;
    let Some(source) = status.source() else {
        return status.message().to_string();
    };
    let mut io = None;
    let mut cause: Option<&(dyn Error + 'static)> = Some(source);
    while let Some(e) = cause {
        if let Some(x) = e.downcast_ref::<std::io::Error>() {
            io = Some(x.kind());
        }
        cause = e.source();
    }
    match io {
        Some(K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe) => {
            "its connection closed (the worker exited, or its host went away)".into()
        }
        Some(K::ConnectionRefused) => "connection refused (the worker is not running)".into(),
        Some(K::TimedOut) => "the connection timed out".into(),
        _ => format!("no answer ({})", status.message()),
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(e: CoordinatorError) -> Self {
        use tonic::{Code, Status};
        match &e {
            CoordinatorError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            CoordinatorError::Worker { status, .. } if status.code() == Code::InvalidArgument => {
                Status::invalid_argument(e.to_string())
            }
            CoordinatorError::Unavailable(_)
            | CoordinatorError::Worker { .. }
            | CoordinatorError::RankDisagreement(_) => Status::unavailable(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(status: tonic::Status) -> String {
        CoordinatorError::Worker { rank: 2, status }.to_string()
    }

    #[test]
    fn worker_failures_read_plainly() {
        let own = tonic::Status::unavailable("model error: collective failed");
        assert_eq!(
            worker(own),
            "worker rank 2 failed: model error: collective failed"
        );
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed");
        let mut cut = tonic::Status::unknown("transport error");
        cut.set_source(std::sync::Arc::new(eof));
        assert_eq!(
            worker(cut),
            "worker rank 2 failed: its connection closed (the worker exited, or its host went away)"
        );
        let other = std::io::Error::other("strange");
        let mut odd = tonic::Status::unknown("transport error");
        odd.set_source(std::sync::Arc::new(other));
        assert_eq!(
            worker(odd),
            "worker rank 2 failed: no answer (transport error)"
        );
    }
}
