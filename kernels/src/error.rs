//! The error type of every kernel.

/// Errors returned by the kernels. Shape problems are reported, never panicked on.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A buffer does not have the length the other arguments imply.
    #[error("shape mismatch in {op}: `{what}` has length {got}, expected {expected}")]
    ShapeMismatch {
        op: &'static str,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A length that must be a multiple of some block size is not.
    #[error("bad length in {op}: `{what}` = {got} is not a multiple of {multiple}")]
    BadLength {
        op: &'static str,
        what: &'static str,
        got: usize,
        multiple: usize,
    },
    /// Any other invalid argument (zero sizes, indivisible head counts, overflow...).
    #[error("invalid argument to {op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    /// A row index past the end of a matrix.
    #[error("row {row} out of range for a matrix with {rows} rows")]
    RowOutOfRange { row: usize, rows: usize },
    /// A CUDA device was requested but cannot be used.
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    /// A device string that does not parse.
    #[error("invalid device {0:?}: expected \"cpu\", \"cuda\" or \"cuda:N\"")]
    BadDevice(String),
}

impl KernelError {
    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        KernelError::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
}

/// Returns `ShapeMismatch` unless `got == expected`.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::ShapeMismatch {
            op,
            what,
            expected,
            got,
        })
    }
}

/// `a * b`, or an `InvalidArgument` error on overflow.
pub(crate) fn mul(op: &'static str, a: usize, b: usize) -> Result<usize, KernelError> {
    a.checked_mul(b)
        .ok_or_else(|| KernelError::invalid(op, format!("size {a} x {b} overflows usize")))
}
