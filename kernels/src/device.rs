//! The device seam: which backend runs the kernels.

use std::fmt;
use std::str::FromStr;

use crate::KernelError;

/// Where the kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for Device {
    type Err = KernelError;

    /// Parses `"cpu"`, `"cuda"` (device 0) or `"cuda:N"` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(Device::Cuda)
                .ok_or_else(|| KernelError::BadDevice(s.to_string())),
        }
    }
}

/// Checks that `device` can run the kernels: `Ok` for the CPU, a typed error for CUDA
/// (never a panic).
pub fn check_device(device: Device) -> Result<(), KernelError> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(ordinal) => cuda_check(ordinal),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_check(_ordinal: usize) -> Result<(), KernelError> {
    Err(KernelError::CudaUnavailable(
        "weft was built without the `cuda` feature; rebuild with --features cuda".to_string(),
    ))
}

/// Probes the device for real: driver, device `ordinal`, NVRTC and cuBLAS libraries and
/// a usable context (see [`crate::cuda::probe`]).
#[cfg(feature = "cuda")]
fn cuda_check(ordinal: usize) -> Result<(), KernelError> {
    crate::cuda::probe(ordinal)
        .map(|_| ())
        .map_err(|e| KernelError::CudaUnavailable(format!("cuda:{ordinal}: {e}")))
}
