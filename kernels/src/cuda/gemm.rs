//! bf16 GEMMs through cuBLAS (`cublasGemmEx`, f32 accumulation).

use std::ffi::c_int;

use cudarc::cublas::result as blas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::device::CudaBackend;
use super::error::{check_len, guarded, mul, CudaError};
use super::tensor::{DeviceBuffer, DeviceElem};

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
}

/// Output element types of [`matmul_bf16`]: bf16 or f32.
pub trait GemmOut: DeviceElem + sealed::Sealed {
    #[doc(hidden)]
    const DATA_TYPE: cudaDataType;
}
impl GemmOut for bf16 {
    const DATA_TYPE: cudaDataType = cudaDataType::CUDA_R_16BF;
}
impl GemmOut for f32 {
    const DATA_TYPE: cudaDataType = cudaDataType::CUDA_R_32F;
}

fn dim(what: &str, v: usize) -> Result<c_int, CudaError> {
    c_int::try_from(v)
        .map_err(|_| CudaError::Shape(format!("matmul_bf16: {what} = {v} exceeds i32")))
}

/// `out = a · wᵀ`: `a` is `[m, k]`, `w` is `[n, k]` (a linear layer's row-major weight,
/// out_features x in_features), `out` is `[m, n]`, all row-major; bf16 inputs, f32
/// accumulation (`CUBLAS_COMPUTE_32F`), bf16 or f32 output. The same product as the CPU
/// `matmul(w, a, m, out)`.
///
/// Row-major `[r, c]` is column-major `[c, r]`, so cuBLAS computes the column-major
/// `[n, m]` result `outᵀ = w · aᵀ` as `op(A) = Aᵀ` with `A = w` (column-major `[k, n]`,
/// lda = k), `B = a` (column-major `[k, m]`, ldb = k), `C = out` (ldc = n).
pub fn matmul_bf16<O: GemmOut>(
    b: &CudaBackend,
    a: &DeviceBuffer<bf16>,
    w: &DeviceBuffer<bf16>,
    m: usize,
    n: usize,
    k: usize,
    out: &mut DeviceBuffer<O>,
) -> Result<(), CudaError> {
    check_len("matmul_bf16: a", mul("matmul_bf16", m, k)?, a.len())?;
    check_len("matmul_bf16: w", mul("matmul_bf16", n, k)?, w.len())?;
    check_len("matmul_bf16: out", mul("matmul_bf16", m, n)?, out.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        b.stream().memset_zeros(out.slice_mut())?;
        return Ok(());
    }
    let (mi, ni, ki) = (dim("m", m)?, dim("n", n)?, dim("k", k)?);
    guarded("matmul_bf16", || {
        b.context().bind_to_thread()?;
        let handle = b.lock_blas();
        let stream = b.stream();
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (w_ptr, _w_sync) = w.slice().device_ptr(stream);
        let (a_ptr, _a_sync) = a.slice().device_ptr(stream);
        let (c_ptr, _c_sync) = out.slice_mut().device_ptr_mut(stream);
        // SAFETY: the handle is bound to `stream`, on which the three buffers are used;
        // their lengths were checked above (w holds n*k, a m*k, out m*n elements, all
        // dimensions fit in i32), matching the sizes and leading dimensions passed;
        // alpha/beta are host f32 scalars as COMPUTE_32F requires (host pointer mode is
        // cuBLAS's default), alive for the whole call.
        unsafe {
            blas::gemm_ex(
                *handle.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                (&alpha as *const f32).cast(),
                w_ptr as *const _,
                cudaDataType::CUDA_R_16BF,
                ki,
                a_ptr as *const _,
                cudaDataType::CUDA_R_16BF,
                ki,
                (&beta as *const f32).cast(),
                c_ptr as *mut _,
                O::DATA_TYPE,
                ni,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }?;
        Ok(())
    })
}
