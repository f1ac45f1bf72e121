//! A weft worker: holds one tensor-parallel rank. It registers with the
//! coordinator, joins its peers' collective group, loads its shard (from a
//! checkpoint path it can read, or streamed by the coordinator) and runs
//! forward steps on a dedicated engine thread.

pub mod args;
pub mod convert;
pub mod discovery;
pub mod engine;
pub mod error;
#[cfg(feature = "cuda")]
pub mod gpu;
#[cfg(feature = "cuda")]
pub mod gpu_check;
pub mod membership;
pub mod process;
pub mod service;
pub mod shard_stream;
pub mod tls;
pub mod watchdog;

pub use args::WorkerArgs;
pub use error::WorkerError;
