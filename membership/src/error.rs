//! The crate's one error type, classified so a caller can decide what to do:
//! retry ([`MembershipError::Unavailable`]), pick another rank or wait
//! ([`MembershipError::RankTaken`]), stop serving
//! ([`MembershipError::Fenced`]), or fix its input
//! ([`MembershipError::Invalid`]).

use crate::member::MemberInfo;

/// An error from the membership layer.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// etcd could not be reached or did not answer in time; retrying may help.
    #[error("etcd unavailable during {op}: {detail}")]
    Unavailable {
        /// The operation that failed (e.g. "lease grant").
        op: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The rank is already registered by another live worker.
    #[error("rank {rank} is already registered{}", describe_holder(.holder))]
    RankTaken {
        /// The contested rank.
        rank: u32,
        /// The current holder, when its record could be read and decoded.
        holder: Option<Box<MemberInfo>>,
    },
    /// The registration's lease lapsed or was revoked: the worker must stop
    /// serving steps and register again.
    #[error("registration of rank {rank} is fenced: its lease lapsed or was revoked")]
    Fenced {
        /// The rank whose registration is fenced.
        rank: u32,
    },
    /// A configuration value, key or stored record is malformed.
    #[error("invalid membership data: {0}")]
    Invalid(String),
}

fn describe_holder(holder: &Option<Box<MemberInfo>>) -> String {
    match holder {
        Some(h) => format!(
            " by {} (instance {}, device {})",
            h.address, h.instance, h.device
        ),
        None => String::new(),
    }
}

impl MembershipError {
    /// Classifies an etcd client error raised during `op`.
    pub(crate) fn from_etcd(op: &'static str, err: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        match err {
            E::InvalidArgs(_) | E::InvalidUri(_) | E::InvalidMetadataValue(_) | E::Utf8Error(_) => {
                MembershipError::Invalid(format!("{op}: {err}"))
            }
            E::GRpcStatus(ref s) if s.code() == tonic::Code::InvalidArgument => {
                MembershipError::Invalid(format!("{op}: {err}"))
            }
            other => MembershipError::Unavailable {
                op,
                detail: other.to_string(),
            },
        }
    }

    /// The error for an operation that did not finish within its timeout.
    pub(crate) fn timeout(op: &'static str, after: std::time::Duration) -> Self {
        MembershipError::Unavailable {
            op,
            detail: format!("no answer within {after:?}"),
        }
    }

    /// True when retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, MembershipError::Unavailable { .. })
    }
}

/// Whether an etcd error says the lease does not exist (already expired or
/// revoked), which a clean shutdown treats as done.
pub(crate) fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::NotFound || s.message().contains("lease not found")
        }
        _ => false,
    }
}
