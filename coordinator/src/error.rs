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
    #[error("worker rank {rank} failed: {status}")]
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
