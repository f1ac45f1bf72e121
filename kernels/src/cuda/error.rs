//! The error type of the CUDA backend.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

use crate::KernelError;

/// Errors of the CUDA backend. Nothing in the backend panics on a missing driver, a
/// missing device or library, or a bad shape: each is one of these.
///
/// Converts into [`KernelError`] without new variants there: [`CudaError::Shape`] becomes
/// `KernelError::InvalidArgument { op: "cuda", .. }`, everything else
/// `KernelError::CudaUnavailable`.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The CUDA driver library (`libcuda.so`) cannot be loaded or initialized.
    #[error("no CUDA driver: {0}")]
    NoDriver(String),
    /// The driver works but there is no device with this ordinal.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// A CUDA user-space library the backend needs (NVRTC, cuBLAS) is not found.
    #[error("CUDA library {lib} not found: {msg}")]
    MissingLibrary { lib: &'static str, msg: String },
    /// NVRTC rejected a program (the log says why).
    #[error("NVRTC failed to compile `{kernel}`: {log}")]
    Nvrtc { kernel: String, log: String },
    /// A CUDA driver call failed (including launches and module loads).
    #[error("CUDA driver error: {0}")]
    Driver(String),
    /// A cuBLAS call failed.
    #[error("cuBLAS error: {0}")]
    Cublas(String),
    /// Buffer lengths or sizes that do not fit the operation.
    #[error("bad shape: {0}")]
    Shape(String),
}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}

impl From<CublasError> for CudaError {
    fn from(e: CublasError) -> Self {
        CudaError::Cublas(e.to_string())
    }
}

impl From<CudaError> for KernelError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Shape(msg) => KernelError::InvalidArgument { op: "cuda", msg },
            other => KernelError::CudaUnavailable(other.to_string()),
        }
    }
}

/// `Err(Shape(..))` unless `got == expected`.
pub(crate) fn check_len(what: &str, expected: usize, got: usize) -> Result<(), CudaError> {
    if got == expected {
        Ok(())
    } else {
        Err(CudaError::Shape(format!(
            "{what}: length {got}, expected {expected}"
        )))
    }
}

/// `a * b`, or a `Shape` error on overflow.
pub(crate) fn mul(what: &str, a: usize, b: usize) -> Result<usize, CudaError> {
    a.checked_mul(b)
        .ok_or_else(|| CudaError::Shape(format!("{what}: {a} x {b} overflows")))
}

/// `v` as an `i32` kernel argument, or a `Shape` error.
pub(crate) fn to_i32(what: &str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} = {v} does not fit in i32")))
}

/// Runs `f`, turning a panic inside the CUDA bindings (cudarc panics when a library or
/// symbol cannot be loaded) into a `CudaError::Driver`.
pub(crate) fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, CudaError>,
) -> Result<T, CudaError> {
    // AssertUnwindSafe: on a panic everything `f` built is dropped and only an error
    // escapes; shared state `f` touches (the kernel cache map) is only written after the
    // calls that can panic succeeded.
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(CudaError::Driver(format!(
            "{what}: the CUDA bindings panicked: {}",
            panic_message(p.as_ref())
        ))),
    }
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
