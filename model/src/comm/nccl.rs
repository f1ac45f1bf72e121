//! [`NcclComm`]: collectives among GPU ranks on device buffers, through NCCL (loaded at run time by cudarc).
//!
//! # Lifecycle
//!
//! 1. One rank (the coordinator, or rank 0) creates an [`NcclId`] with [`NcclId::new`] and hands its
//!    [`NcclId::to_bytes`] to every rank (gRPC `bytes`); the others rebuild it with [`NcclId::from_bytes`].
//! 2. Every rank calls [`NcclComm::init`] with the same id and world size, its own rank, and the CUDA stream its
//!    forward pass runs on. The communicator is created *non-blocking* (`ncclCommInitRankConfig` with
//!    `config.blocking = 0`) and `init` polls `ncclCommGetAsyncError` until it leaves `ncclInProgress`, for at most
//!    [`NcclConfig::timeout`].
//! 3. Collectives ([`NcclComm::all_reduce_sum_f32`], ...) are enqueued on that stream and then waited for with a
//!    bounded wait (see below); when a call returns `Ok` the result is in the buffer.
//!
//! # Failure model
//!
//! A dead or wedged peer must never hang a worker forever. Every wait (init, each collective, finalize in `Drop`) is
//! bounded by the configured timeout: the worker polls the stream (a CUDA event recorded after the collective)
//! together with `ncclCommGetAsyncError`, backing off from spinning to 1 ms sleeps. If the timeout passes, or NCCL
//! reports an asynchronous error, or any other error happens inside a collective, the communicator calls
//! `ncclCommAbort` (which also makes pending NCCL kernels return), marks itself broken, and returns the error
//! ([`NcclError::Timeout`] names the op that timed out). Every later call fails fast with [`NcclError::Aborted`].
//! After an abort the contents of the buffers involved are unspecified.
//!
//! # Rebuilding the group
//!
//! This module keeps no global state. When the group re-forms (a rank died, the world changed), every worker drops
//! its old `NcclComm` (which destroys it, or aborts it if it is broken or finalizing times out) and calls
//! [`NcclComm::init`] again with a **new** [`NcclId`]: ids are single use.
//!
//! # Without a GPU
//!
//! Every entry point checks first that libcuda / libnccl can be loaded (cudarc would panic otherwise) and returns
//! [`NcclError::NoLibrary`] / [`NcclError::NoDevice`] instead.

mod ffi;
mod ops;
mod selfcheck;
mod wait;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DriverError};
use cudarc::nccl::sys;

use ffi::{Progress, RawComm};

pub use selfcheck::{cuda_device_count, selfcheck_world_size_one, SelfCheck, SELFCHECK_ELEMENTS};

/// Bytes in an NCCL unique id (`NCCL_UNIQUE_ID_BYTES`).
pub const NCCL_ID_BYTES: usize = 128;

/// Errors of the NCCL communicator.
#[derive(Debug, thiserror::Error)]
pub enum NcclError {
    /// libcuda or libnccl cannot be loaded, or lacks a symbol this module needs.
    #[error("library not available: {0}")]
    NoLibrary(String),
    /// The driver loads but the requested GPU does not exist or cannot be opened.
    #[error("no usable CUDA device: {0}")]
    NoDevice(String),
    /// An NCCL call (or the communicator's async state) returned an error code.
    #[error("NCCL {op} failed with code {code}: {message}")]
    Nccl {
        op: &'static str,
        code: i32,
        message: String,
    },
    /// A CUDA driver call made by this module failed (binding the context, events, copies).
    #[error("CUDA {op} failed: {message}")]
    Cuda { op: &'static str, message: String },
    /// `op` did not complete within `after`; the communicator was aborted.
    #[error("NCCL {op} did not complete within {after:?}; communicator aborted")]
    Timeout { op: &'static str, after: Duration },
    /// The communicator was aborted earlier (timeout, error, or [`NcclComm::abort`]); rebuild the group.
    #[error("NCCL communicator unusable: {reason}")]
    Aborted { reason: String },
    /// A serialized [`NcclId`] had this many bytes instead of [`NCCL_ID_BYTES`].
    #[error("NCCL unique id must be {NCCL_ID_BYTES} bytes, got {0}")]
    BadId(usize),
    /// A local argument is inconsistent (rank, world size, buffer lengths, buffer on another device).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl NcclError {
    fn cuda(op: &'static str, e: DriverError) -> Self {
        NcclError::Cuda {
            op,
            message: e.to_string(),
        }
    }
}

/// Whether libnccl can be loaded here (under one of cudarc's names, e.g. `libnccl.so`).
pub fn nccl_library_present() -> bool {
    ffi::nccl_present()
}

/// The loaded libnccl's version code (e.g. 22805 for 2.28.5).
pub fn nccl_version() -> Result<i32, NcclError> {
    ffi::ensure_nccl()?;
    ffi::version()
}

/// An NCCL unique id: created once per group (per rebuild) and given to every rank.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NcclId([u8; NCCL_ID_BYTES]);

impl std::fmt::Debug for NcclId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The id holds the root's bootstrap address; print only a prefix.
        write!(f, "NcclId({:02x?}..)", &self.0[..8])
    }
}

impl NcclId {
    /// `ncclGetUniqueId`. Needs libnccl (not a GPU); fails with [`NcclError::NoLibrary`] without it.
    pub fn new() -> Result<Self, NcclError> {
        ffi::ensure_nccl()?;
        let mut raw = sys::ncclUniqueId {
            internal: [0; NCCL_ID_BYTES],
        };
        // SAFETY: the library and symbol were checked above; `raw` is a valid out-pointer for the call.
        let rc = unsafe { sys::ncclGetUniqueId(&mut raw) };
        ffi::check("get_unique_id", rc, std::ptr::null_mut())?;
        Ok(NcclId(raw.internal.map(|b| b as u8)))
    }

    pub fn to_bytes(&self) -> [u8; NCCL_ID_BYTES] {
        self.0
    }

    /// Inverse of [`NcclId::to_bytes`]; [`NcclError::BadId`] unless `bytes` has exactly [`NCCL_ID_BYTES`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NcclError> {
        let arr: [u8; NCCL_ID_BYTES] = bytes
            .try_into()
            .map_err(|_| NcclError::BadId(bytes.len()))?;
        Ok(NcclId(arr))
    }

    fn raw(&self) -> sys::ncclUniqueId {
        sys::ncclUniqueId {
            internal: self.0.map(|b| b as std::ffi::c_char),
        }
    }
}

/// Arguments of [`NcclComm::init`].
#[derive(Clone, Debug)]
pub struct NcclConfig {
    pub id: NcclId,
    pub rank: usize,
    pub world_size: usize,
    /// Bound on init, on each collective (enqueue + completion, i.e. how long this rank waits for the slowest peer
    /// to reach the same collective), and on finalize when dropping. Must exceed the compute skew between ranks.
    pub timeout: Duration,
    /// The stream collectives are enqueued on; its context's device is this rank's GPU.
    pub stream: Arc<CudaStream>,
}

#[derive(Debug)]
enum Health {
    Healthy,
    Broken(String),
}

/// A device-side communicator of one rank. See the module docs for the failure model.
#[derive(Debug)]
pub struct NcclComm {
    raw: RawComm,
    health: Health,
    rank: usize,
    world_size: usize,
    timeout: Duration,
    stream: Arc<CudaStream>,
    /// Recorded on `stream` after each collective; polled for completion.
    done: CudaEvent,
    /// One f32 for [`NcclComm::barrier`] (taken out while the barrier runs).
    scratch: Option<CudaSlice<f32>>,
}

impl NcclComm {
    /// Creates this rank's communicator (non-blocking init, bounded by `cfg.timeout`). On error or timeout the
    /// half-built communicator is aborted. Every rank of the group must call this with the same id and world size.
    pub fn init(cfg: NcclConfig) -> Result<Self, NcclError> {
        let (nranks, rank) = validate(&cfg)?;
        ffi::ensure_driver()?;
        ffi::ensure_nccl()?;
        let lib_version = ffi::version()?;
        let start = Instant::now();
        let ctx = cfg.stream.context().clone();
        ctx.bind_to_thread()
            .map_err(|e| NcclError::cuda("bind_context", e))?;
        let done = ctx
            .new_event(None)
            .map_err(|e| NcclError::cuda("new_event", e))?;
        let scratch = cfg
            .stream
            .alloc_zeros::<f32>(1)
            .map_err(|e| NcclError::cuda("alloc", e))?;
        let mut comm = NcclComm {
            raw: RawComm::null(),
            health: Health::Healthy,
            rank: cfg.rank,
            world_size: cfg.world_size,
            timeout: cfg.timeout,
            stream: cfg.stream,
            done,
            scratch: Some(scratch),
        };
        // Lives until init has completed below, in case NCCL reads it from its init thread.
        let mut config = ffi::nonblocking_config(lib_version);
        let mut handle: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: the library was checked; `handle` and `config` are valid for the call and stay alive until the
        // async init has finished (polled below in this scope); the id is passed by value. The current CUDA
        // context (bound above) selects the device, as NCCL expects.
        let rc = unsafe {
            sys::ncclCommInitRankConfig(&mut handle, nranks, cfg.id.raw(), rank, &mut config)
        };
        comm.raw = RawComm(handle);
        if let Err(e) = ffi::check("init", rc, handle) {
            return Err(comm.fail(e));
        }
        if comm.raw.is_null() {
            return Err(NcclError::Nccl {
                op: "init",
                code: rc as i32,
                message: "ncclCommInitRankConfig returned no communicator".into(),
            });
        }
        let raw = &comm.raw;
        let waited = wait::poll_until("init", start, comm.timeout, || {
            Ok(raw.async_state("init")? == Progress::Done)
        });
        match waited {
            Ok(()) => Ok(comm),
            Err(e) => Err(comm.fail(e)),
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// False once the communicator was aborted, or while NCCL reports an asynchronous error (the next collective
    /// will then abort it). Does not block.
    pub fn is_healthy(&self) -> bool {
        matches!(self.health, Health::Healthy)
            && self
                .raw
                .async_state("health")
                .is_ok_and(|p| p == Progress::Done)
    }

    /// Aborts the communicator now (pending collectives on every rank of this process return; peers see errors or
    /// time out). Idempotent; later calls fail with [`NcclError::Aborted`].
    pub fn abort(&mut self) {
        self.mark_broken("aborted by the caller".into());
    }

    /// Aborts, marks broken with `err`'s text, and returns `err` (for `return Err(self.fail(e))`).
    fn fail(&mut self, err: NcclError) -> NcclError {
        if matches!(self.health, Health::Healthy) {
            self.mark_broken(err.to_string());
        }
        err
    }

    fn mark_broken(&mut self, reason: String) {
        if !self.raw.is_null() {
            // Best effort: the context may already be gone; abort is still the right call.
            let _ = self.stream.context().bind_to_thread();
            if let Err(e) = self.raw.abort() {
                tracing::warn!(error = %e, "ncclCommAbort failed");
            }
        }
        if matches!(self.health, Health::Healthy) {
            tracing::warn!(rank = self.rank, %reason, "NCCL communicator aborted");
            self.health = Health::Broken(reason);
        }
    }
}

impl Drop for NcclComm {
    /// Healthy: finalize (bounded by the timeout), then destroy; on a finalize error or timeout, abort. Broken:
    /// already aborted. Never panics.
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        let _ = self.stream.context().bind_to_thread();
        let raw = &self.raw;
        let finalized = raw.finalize().and_then(|_| {
            wait::poll_until("finalize", Instant::now(), self.timeout, || {
                Ok(raw.async_state("finalize")? == Progress::Done)
            })
        });
        let result = match finalized {
            Ok(()) => self.raw.destroy(),
            Err(e) => {
                tracing::warn!(error = %e, "NCCL finalize failed; aborting the communicator");
                self.raw.abort()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "NCCL communicator teardown failed");
        }
    }
}

/// Checks rank and world size and converts them to NCCL's `int`s.
fn validate(cfg: &NcclConfig) -> Result<(i32, i32), NcclError> {
    let world = i32::try_from(cfg.world_size).ok().filter(|&w| w >= 1);
    let Some(world) = world else {
        let msg = format!("world_size {} must be in 1..=i32::MAX", cfg.world_size);
        return Err(NcclError::InvalidArgument(msg));
    };
    if cfg.rank >= cfg.world_size {
        let msg = format!("rank {} outside world size {}", cfg.rank, cfg.world_size);
        return Err(NcclError::InvalidArgument(msg));
    }
    if cfg.timeout.is_zero() {
        return Err(NcclError::InvalidArgument(
            "timeout must be positive".into(),
        ));
    }
    Ok((world, cfg.rank as i32))
}
