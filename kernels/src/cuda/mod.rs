//! The CUDA backend (feature `cuda`): bf16 kernels compiled at run time with NVRTC, bf16
//! GEMMs through cuBLAS, all on one stream per device.
//!
//! * [`CudaBackend`] (one per device ordinal) holds the context, the stream, a cuBLAS
//!   handle and the kernel cache (each program compiled once per device for the device's
//!   own architecture, optionally cached on disk in [`CudaConfig::ptx_cache_dir`]).
//! * [`DeviceBuffer`] is a flat device buffer (f32 host data is rounded to bf16 on upload).
//! * [`ops`] and [`attn`] are the kernels (embedding, RMS norm with and without the fused
//!   residual add, rotary embedding, SiLU-multiply, paged K/V write, split-K decode and
//!   tiled prefill attention over the paged pool, argmax / top-k log-probabilities);
//!   [`matmul_bf16`] is `y = a · wᵀ` through cuBLAS.
//! * [`check`] compares every kernel with the CPU kernel of this crate and measures the
//!   copy bandwidth and the GEMM rate (for a GPU check binary).
//!
//! Storage is bf16 with f32 accumulation. Without a driver, device or library every entry
//! point returns a [`CudaError`] (never panics); [`CudaError`] converts into
//! [`crate::KernelError`] (`Shape` as `InvalidArgument`, the rest as `CudaUnavailable`).

pub mod attn;
mod attn_flash;
mod attn_gemm;
mod batch;
pub mod check;
mod check_attn;
mod check_cases;
mod device;
mod error;
mod gemm;
mod nvrtc;
pub mod ops;
pub mod ops_fused;
mod profile;
mod source;
mod source_attn;
mod source_flash;
mod source_sampling;
mod tensor;

pub use attn::PagedKvCache;
pub use batch::{PagedBatch, SeqSpec};
pub use check::{copy_bandwidth, gemm_tflops, run_kernel_checks, CheckResult};
pub use device::{
    device_count, driver_present, probe, CacheStats, CudaBackend, CudaConfig, DeviceInfo,
};
pub use error::CudaError;
pub use gemm::{matmul_bf16, GemmOut};
pub use profile::ProfileTotals;
pub use tensor::{DeviceBuffer, DeviceElem};
