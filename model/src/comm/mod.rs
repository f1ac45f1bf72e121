//! Collectives among the ranks of one tensor-parallel group.
//!
//! [`Communicator`] is the interface the forward pass codes against; it has NCCL semantics (every rank issues the
//! same sequence of collectives with the same sizes) so a GPU implementation can slot in later. Two implementations
//! live here:
//!
//! * [`SingleRank`]: world size 1, every op is a copy or a no-op;
//! * [`TcpComm`]: CPU ranks connected over TCP (blocking std sockets, meant for the dedicated forward-pass thread),
//!   in clear or, with [`CommTls`], over mutual TLS.
//!
//! # Failure model
//!
//! Any error inside a collective (I/O, timeout, a protocol mismatch between ranks, an invalid argument on one rank)
//! *poisons* a [`TcpComm`]: the failing rank tells the others (best effort) so that they fail promptly too instead of
//! waiting for their op timeout, and every later call returns [`CommError::Poisoned`]. Recovery means building a new
//! group (new listener, new session token).

mod conn;
mod handshake;
#[cfg(feature = "cuda")]
pub mod nccl;
mod tcp;
mod tls;
mod wire;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use tcp::{TcpComm, TcpCommConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_OP_TIMEOUT};
pub use tls::{CommTls, CommTlsError};

/// Errors of group formation and of collectives.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// An I/O error on the connection to `peer` that is neither a timeout nor a closed connection.
    #[error("I/O error on the connection to rank {peer}: {source}")]
    Io {
        peer: usize,
        #[source]
        source: std::io::Error,
    },
    /// The rank's own listener failed (accepting connections during group formation).
    #[error("listener error: {0}")]
    Listener(#[source] std::io::Error),
    /// `peer` did not send or accept data within `after` (the op timeout, or the connect timeout while forming the
    /// group). `op` names the collective, or `"connect"` / `"handshake"`.
    #[error("{op}: rank {peer} did not respond within {after:?}")]
    Timeout {
        op: &'static str,
        peer: usize,
        after: Duration,
    },
    /// The ranks disagree about the sequence of collectives (op, sequence number, length, root), or a peer sent
    /// bytes that are not this protocol. Never retried: the group is out of sync.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection to `peer` was closed (EOF, reset, broken pipe).
    #[error("rank {peer} closed the connection")]
    PeerClosed { peer: usize },
    /// A rank outside `0..world_size` (in the config or as a broadcast root).
    #[error("invalid rank {rank} for world size {world_size}")]
    InvalidRank { rank: usize, world_size: usize },
    /// A local argument is inconsistent (buffer lengths, config fields).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// TLS failed on the connection to `peer`: a certificate that the cluster CA did not sign or that does not name
    /// rank 0, a TLS alert from the peer, or one side of the group in TLS and the other in clear. On rank 0 while
    /// forming the group, `peer` is the first rank still missing when the connect timeout ran out and `message`
    /// names the connection that failed TLS.
    #[error("TLS with rank {peer}: {message}")]
    Tls { peer: usize, message: String },
    /// Rank 0 refused this rank's handshake (wrong session token, world size, rank, or the group failed to form).
    #[error("handshake with rank {peer} rejected: {reason}")]
    HandshakeRejected { peer: usize, reason: String },
    /// Another rank (`by`) failed this collective and aborted the group; `reason` is its error.
    #[error("collective aborted by rank {by}: {reason}")]
    Aborted { by: usize, reason: String },
    /// An earlier collective failed; the communicator can no longer be used.
    #[error("communicator unusable after an earlier error: {0}")]
    Poisoned(String),
}

/// Collective operations among the ranks of one tensor-parallel group. Designed so an NCCL implementation slots in
/// later (same semantics: every rank calls the same sequence of collectives with the same sizes).
///
/// On error the contents of the output buffer are unspecified.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// In place: buf becomes the element-wise sum over ranks. The reduction order is fixed (rank 0 + rank 1 + ... in
    /// rank order, accumulated in f32 exactly in that order), so every rank ends with bit-identical values.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError>;
    /// Each rank contributes `local` (same length on every rank); `out` (length world_size * local.len()) receives
    /// every rank's contribution, rank-major.
    fn all_gather(&mut self, local: &[f32], out: &mut [f32]) -> Result<(), CommError>;
    /// Rank `root`'s buf is copied to every rank.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError>;
    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<(), CommError>;
}

/// World size 1: every op is a copy / no-op.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleRank;

impl Communicator for SingleRank {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }

    fn all_gather(&mut self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        check_gather_len(local.len(), out.len(), 1)?;
        out.copy_from_slice(local);
        Ok(())
    }

    fn broadcast(&mut self, _buf: &mut [f32], root: usize) -> Result<(), CommError> {
        check_root(root, 1)
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        Ok(())
    }
}

fn check_gather_len(local: usize, out: usize, world_size: usize) -> Result<(), CommError> {
    if local.checked_mul(world_size) != Some(out) {
        return Err(CommError::InvalidArgument(format!(
            "all_gather: out has {out} elements, expected world_size {world_size} x local {local}"
        )));
    }
    Ok(())
}

fn check_root(root: usize, world_size: usize) -> Result<(), CommError> {
    if root >= world_size {
        return Err(CommError::InvalidRank {
            rank: root,
            world_size,
        });
    }
    Ok(())
}
