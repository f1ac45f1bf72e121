//! Compute kernels of weft: the CPU kernels the llama forward pass uses (matmul over
//! float and GGML-quantized weights, RMS norm, RoPE, grouped-query attention, ...) and the
//! device seam for the CUDA backend.
//!
//! The CPU kernels are multithreaded with rayon (global pool) and use AVX2+FMA+F16C
//! intrinsics when the CPU has them (runtime detection), with a portable fallback that
//! LLVM can auto-vectorize.

mod attention;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
mod error;
mod isa;
mod matmul;
mod matrix;
mod norm;
mod paged;
mod quant;
mod rope;

#[cfg(test)]
mod tests;

pub use attention::{attention, AttentionShape};
pub use device::{check_device, Device};
pub use error::KernelError;
pub use half::{bf16, f16};
pub use isa::cpu_isa;
pub use matmul::matmul;
pub use matrix::{Matrix, WeightData};
pub use norm::{add_inplace, rms_norm, silu_mul, softmax_inplace};
pub use paged::{paged_attention, paged_attention_batch, paged_write, PagedKv, PagedSeq};
pub use quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, DType, QK};
pub use rope::{rope, RopeStyle};
