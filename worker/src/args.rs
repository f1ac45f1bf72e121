//! Command-line configuration of `weft-worker`.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weft-worker",
    version,
    about = "weft worker: one tensor-parallel rank"
)]
pub struct WorkerArgs {
    /// Address of the coordinator's cluster service, e.g. http://127.0.0.1:50052.
    #[arg(long, env = "WEFT_COORDINATOR")]
    pub coordinator: String,
    /// Tensor-parallel rank this worker claims.
    #[arg(long, env = "WEFT_RANK")]
    pub rank: u32,
    /// Address of this worker's gRPC service (port 0 picks a free port).
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Address of this worker's collective (CPU all-reduce) listener.
    #[arg(long, env = "WEFT_COMM_LISTEN", default_value = "127.0.0.1:0")]
    pub comm_listen: SocketAddr,
    /// Compute threads of this rank (0 = all cores).
    #[arg(long, env = "WEFT_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Allow StepRequest.debug_return_logits (tests only).
    #[arg(long, env = "WEFT_DEBUG_LOGITS", default_value_t = false)]
    pub debug_logits: bool,
    /// Exit when the parent process (a coordinator that spawned this worker) dies.
    #[arg(long, default_value_t = false)]
    pub exit_with_parent: bool,
    /// Seconds to keep retrying registration while the coordinator starts.
    #[arg(long, env = "WEFT_REGISTER_TIMEOUT", default_value_t = 60)]
    pub register_timeout_s: u64,
}
