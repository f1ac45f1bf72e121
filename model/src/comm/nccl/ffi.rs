//! The raw NCCL calls of [`super::NcclComm`]: library probing, the non-blocking config, async-error polling, error
//! text, and the owned communicator handle.
//!
//! cudarc loads libcuda and libnccl lazily and *panics* when a library or one of its symbols is missing, so every
//! entry point of this module first runs [`ensure_nccl`] / [`ensure_driver`], which turn that case into
//! [`NcclError::NoLibrary`].

use std::ffi::{c_int, CStr};
use std::ptr;

use cudarc::nccl::sys;

use super::NcclError;

/// Every NCCL symbol this module calls. cudarc resolves each on first use and panics when it is missing (an older
/// libnccl), so [`ensure_nccl`] checks them all up front.
const NCCL_SYMBOLS: &[&str] = &[
    "ncclGetVersion",
    "ncclGetUniqueId",
    "ncclGetErrorString",
    "ncclGetLastError",
    "ncclCommInitRankConfig",
    "ncclCommGetAsyncError",
    "ncclCommFinalize",
    "ncclCommDestroy",
    "ncclCommAbort",
    "ncclAllReduce",
    "ncclAllGather",
    "ncclBroadcast",
];

/// `NCCL_CONFIG_UNDEF_INT` from nccl.h: "let NCCL choose".
const CONFIG_UNDEF_INT: c_int = c_int::MIN;
/// `0xcafebeef`, the magic NCCL checks to know the config came from `NCCL_CONFIG_INITIALIZER`.
const CONFIG_MAGIC: u32 = 0xcafe_beef;
/// `NCCL_VERSION(2, 30, 0)`: the layout of cudarc's `ncclConfig_t` (feature `nccl-02030`). An older libnccl copies
/// only the first `size` bytes it knows (its `parseCommConfig` clamps `size` to its own struct), and the fields are
/// only ever appended, so the layout also works against 2.2x.
const CONFIG_LAYOUT_VERSION: u32 = 2 * 10_000 + 30 * 100;

/// Whether libcuda (the driver) can be loaded.
pub(super) fn driver_present() -> bool {
    // SAFETY: only tries `dlopen` on cudarc's candidate names and closes what it opened; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether a libnccl can be loaded (under one of cudarc's candidate names, e.g. `libnccl.so`).
pub(super) fn nccl_present() -> bool {
    // SAFETY: as in `driver_present`.
    unsafe { sys::is_culib_present() }
}

/// `Err(NoLibrary)` unless libcuda can be loaded (cudarc would panic on first use otherwise).
pub(super) fn ensure_driver() -> Result<(), NcclError> {
    if driver_present() {
        Ok(())
    } else {
        Err(NcclError::NoLibrary(
            "libcuda (the NVIDIA driver library) could not be loaded".into(),
        ))
    }
}

/// `Err(NoLibrary)` unless libnccl can be loaded and exports every symbol this module calls.
pub(super) fn ensure_nccl() -> Result<(), NcclError> {
    if !nccl_present() {
        return Err(NcclError::NoLibrary(
            "libnccl could not be loaded (cudarc looks for libnccl.so, libnccl.so.13, ... but not libnccl.so.2: \
             put a `libnccl.so` symlink on LD_LIBRARY_PATH)"
                .into(),
        ));
    }
    // SAFETY: `nccl_present` just loaded the same candidate list in the same order, so `culib` finds a library and
    // does not panic.
    let lib = unsafe { sys::culib() };
    for name in NCCL_SYMBOLS {
        // SAFETY: the symbol is only looked up, never called through this type.
        let found = unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_ok();
        if !found {
            return Err(NcclError::NoLibrary(format!(
                "the loaded libnccl has no symbol {name} (too old?)"
            )));
        }
    }
    Ok(())
}

/// The library's version code (`NCCL_VERSION_CODE`, e.g. 22805 for 2.28.5). Call after [`ensure_nccl`].
pub(super) fn version() -> Result<i32, NcclError> {
    let mut v: c_int = 0;
    // SAFETY: `v` is a valid out-pointer for the duration of the call.
    let rc = unsafe { sys::ncclGetVersion(&mut v) };
    check("get_version", rc, ptr::null_mut())?;
    Ok(v)
}

/// `NCCL_CONFIG_INITIALIZER` with `blocking = 0`: every call on the communicator returns at once (possibly with
/// `ncclInProgress`) and progress is observed through `ncclCommGetAsyncError`.
///
/// `version` is the loaded library's [`version`], capped at the layout's: what a C program built against that
/// library's own nccl.h would pass (NCCL uses it only to reset fields newer than the caller's header).
pub(super) fn nonblocking_config(library_version: i32) -> sys::ncclConfig_t {
    let version = u32::try_from(library_version)
        .unwrap_or(CONFIG_LAYOUT_VERSION)
        .min(CONFIG_LAYOUT_VERSION);
    sys::ncclConfig_t {
        size: std::mem::size_of::<sys::ncclConfig_t>(),
        magic: CONFIG_MAGIC,
        version,
        blocking: 0,
        cgaClusterSize: CONFIG_UNDEF_INT,
        minCTAs: CONFIG_UNDEF_INT,
        maxCTAs: CONFIG_UNDEF_INT,
        netName: ptr::null(),
        splitShare: CONFIG_UNDEF_INT,
        trafficClass: CONFIG_UNDEF_INT,
        commName: ptr::null(),
        collnetEnable: CONFIG_UNDEF_INT,
        CTAPolicy: CONFIG_UNDEF_INT,
        shrinkShare: CONFIG_UNDEF_INT,
        nvlsCTAs: CONFIG_UNDEF_INT,
        nChannelsPerNetPeer: CONFIG_UNDEF_INT,
        nvlinkCentricSched: CONFIG_UNDEF_INT,
        graphUsageMode: CONFIG_UNDEF_INT,
        numRmaCtx: CONFIG_UNDEF_INT,
        maxP2pPeers: CONFIG_UNDEF_INT,
    }
}

/// What a non-erroring NCCL call or `ncclCommGetAsyncError` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Progress {
    Done,
    InProgress,
}

/// Maps a return code: success and in-progress are progress states, anything else is [`NcclError::Nccl`] with the
/// library's text (and the communicator's last error when `comm` is not null).
pub(super) fn check(
    op: &'static str,
    rc: sys::ncclResult_t,
    comm: sys::ncclComm_t,
) -> Result<Progress, NcclError> {
    match rc {
        sys::ncclResult_t::ncclSuccess => Ok(Progress::Done),
        sys::ncclResult_t::ncclInProgress => Ok(Progress::InProgress),
        other => Err(nccl_error(op, other, comm)),
    }
}

/// [`NcclError::Nccl`] for `code`.
pub(super) fn nccl_error(
    op: &'static str,
    code: sys::ncclResult_t,
    comm: sys::ncclComm_t,
) -> NcclError {
    // SAFETY: ncclGetErrorString takes any code and returns a static string (or null, handled by `c_text`).
    let mut message = c_text(unsafe { sys::ncclGetErrorString(code) });
    if !comm.is_null() {
        // SAFETY: `comm` is a live communicator (callers pass null once it is aborted or destroyed); the returned
        // string is owned by NCCL and copied out before the next NCCL call.
        let last = c_text(unsafe { sys::ncclGetLastError(comm) });
        if !last.is_empty() {
            message = format!("{message}: {last}");
        }
    }
    NcclError::Nccl {
        op,
        code: code as i32,
        message,
    }
}

/// Copies a C string owned by NCCL; null becomes "".
fn c_text(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: NCCL returns NUL-terminated strings that stay valid at least until its next call on this thread.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// An owned `ncclComm_t`, or null once it was aborted or destroyed.
///
/// # Why `Send` is sound
///
/// * The pointer is an opaque handle to heap state inside libnccl. NCCL does not bind a communicator to the thread
///   that created it: its documentation only requires that calls on one communicator are not made *concurrently*
///   from several threads (and it explicitly allows `ncclCommAbort` from another thread).
/// * `RawComm` is owned by exactly one [`super::NcclComm`]; every NCCL call on it goes through `&mut NcclComm` or
///   `Drop`, or through `&NcclComm` for the read-only `ncclCommGetAsyncError`, and since neither `RawComm` nor
///   `NcclComm` is `Sync` (a raw pointer field keeps `Sync` unimplemented), no two threads can ever call into the
///   same communicator at once. Moving it to another thread therefore moves the exclusive right to call it.
/// * The CUDA side needs no thread affinity either: every call first binds the stream's CUDA context to the
///   calling thread (`CudaContext::bind_to_thread`), so the thread-local current device is right wherever it runs.
#[derive(Debug)]
pub(super) struct RawComm(pub(super) sys::ncclComm_t);

// SAFETY: see the proof in the doc comment of `RawComm` above (opaque thread-agnostic handle, exclusively owned,
// never shared between threads because the type is not `Sync`).
unsafe impl Send for RawComm {}

impl RawComm {
    pub(super) fn null() -> Self {
        RawComm(ptr::null_mut())
    }

    pub(super) fn is_null(&self) -> bool {
        self.0.is_null()
    }

    /// `ncclCommGetAsyncError`: the communicator's state (init or enqueue still running, idle, or failed).
    pub(super) fn async_state(&self, op: &'static str) -> Result<Progress, NcclError> {
        if self.is_null() {
            return Err(NcclError::Aborted {
                reason: "communicator already aborted".into(),
            });
        }
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: `self.0` is a live communicator (not null, checked above) and `state` a valid out-pointer.
        let rc = unsafe { sys::ncclCommGetAsyncError(self.0, &mut state) };
        check(op, rc, self.0)?;
        check(op, state, self.0)
    }

    /// `ncclCommAbort`, then null. Safe to call on a null handle (no-op). Abort frees the communicator even while
    /// init or collectives are still pending, and makes pending NCCL kernels return.
    pub(super) fn abort(&mut self) -> Result<(), NcclError> {
        let comm = std::mem::replace(&mut self.0, ptr::null_mut());
        if comm.is_null() {
            return Ok(());
        }
        // SAFETY: `comm` is a live communicator that we own; after this call it is never used again (nulled above).
        let rc = unsafe { sys::ncclCommAbort(comm) };
        check("abort", rc, ptr::null_mut()).map(drop)
    }

    /// `ncclCommFinalize`: on a non-blocking communicator this starts flushing pending work and returns
    /// `InProgress`; completion shows up as `async_state() == Done`.
    pub(super) fn finalize(&self) -> Result<Progress, NcclError> {
        if self.is_null() {
            return Ok(Progress::Done);
        }
        // SAFETY: `self.0` is a live communicator that we own.
        let rc = unsafe { sys::ncclCommFinalize(self.0) };
        check("finalize", rc, self.0)
    }

    /// `ncclCommDestroy` after a completed finalize, then null.
    pub(super) fn destroy(&mut self) -> Result<(), NcclError> {
        let comm = std::mem::replace(&mut self.0, ptr::null_mut());
        if comm.is_null() {
            return Ok(());
        }
        // SAFETY: `comm` is live and finalized; it is never used again (nulled above).
        let rc = unsafe { sys::ncclCommDestroy(comm) };
        check("destroy", rc, ptr::null_mut()).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_initializer_with_blocking_off() {
        let c = nonblocking_config(22809);
        assert_eq!(c.size, std::mem::size_of::<sys::ncclConfig_t>());
        assert_eq!(c.magic, 0xcafe_beef);
        assert_eq!(c.version, 22809);
        assert_eq!(c.blocking, 0);
        assert_eq!(c.cgaClusterSize, c_int::MIN);
        assert_eq!(c.maxP2pPeers, c_int::MIN);
        assert!(c.netName.is_null() && c.commName.is_null());
    }

    #[test]
    fn config_version_is_capped_at_the_layout() {
        assert_eq!(nonblocking_config(23207).version, 23000);
        assert_eq!(nonblocking_config(-1).version, 23000);
    }

    #[test]
    fn null_comm_reports_aborted_and_teardown_is_a_no_op() {
        let mut raw = RawComm::null();
        assert!(matches!(
            raw.async_state("t"),
            Err(NcclError::Aborted { .. })
        ));
        assert!(raw.abort().is_ok());
        assert!(matches!(raw.finalize(), Ok(Progress::Done)));
        assert!(raw.destroy().is_ok());
    }
}
