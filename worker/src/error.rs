//! Errors of the worker, classified where they arise and turned into
//! `tonic::Status` only at the gRPC boundary.

use weft_model::{checkpoint::LoadError, comm::CommError, llama::ModelError, shard::PlanError};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("worker is not ready: {0}")]
    NotReady(String),
    #[error("loading the shard failed: {0}")]
    Load(#[from] LoadError),
    #[error("shard plan refused: {0}")]
    Plan(#[from] PlanError),
    #[error("shard stream is corrupt: {0}")]
    CorruptStream(String),
    #[error("forming the collective group failed: {0}")]
    Comm(#[from] CommError),
    #[error("model error: {0}")]
    Model(#[from] ModelError),
    #[error("coordinator call failed: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("cannot reach the coordinator: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("fenced: no call from the coordinator for over {0} s (cut off; exiting to rejoin)")]
    Fenced(u64),
    #[error("etcd membership: {0}")]
    Membership(String),
    #[error("fenced: the rank's lease in etcd lapsed (exiting to claim it again)")]
    LeaseLapsed,
    #[error("fenced: a new coordinator is announced in etcd (exiting to register with it)")]
    CoordinatorReplaced,
    #[error("engine thread is gone")]
    EngineGone,
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<WorkerError> for tonic::Status {
    fn from(e: WorkerError) -> Self {
        use tonic::Status;
        match &e {
            WorkerError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            WorkerError::NotReady(_) => Status::failed_precondition(e.to_string()),
            WorkerError::Model(ModelError::BadToken { .. })
            | WorkerError::Model(ModelError::ContextOverflow { .. })
            | WorkerError::Model(ModelError::CacheMismatch { .. })
            | WorkerError::Model(ModelError::Invalid(_)) => Status::invalid_argument(e.to_string()),
            WorkerError::Comm(_) | WorkerError::Model(ModelError::Comm(_)) => {
                Status::unavailable(e.to_string())
            }
            _ => Status::internal(e.to_string()),
        }
    }
}
