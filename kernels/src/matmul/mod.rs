//! Matrix x activations products for every weight [`DType`].
//!
//! Batch 1 (decode) computes each output row as a dot product directly on the stored
//! format (quantized blocks are never expanded to a full f32 matrix). Batches > 1
//! (prefill, continuous batching) read each weight row once per call for all inputs
//! (see `batch.rs`).
//!
//! **Batch invariance**: `out[i*rows + r]` is computed by exactly the same sequence of
//! floating-point operations as `matmul(w, x_i, 1, ..)` would use, whatever `n`, the
//! input's position in the batch or the thread count. (The AVX2 and portable paths differ
//! from each other; only one is used on a given machine.)

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_batch;
mod batch;
mod scalar;

use rayon::prelude::*;

use crate::error::{check_len, mul};
use crate::isa::Isa;
use crate::matrix::{Matrix, WeightData};
use crate::KernelError;

/// Minimum rows per rayon task.
const MIN_ROWS_PER_TASK: usize = 16;
/// Below this many multiply-adds a call runs on the current thread.
pub(super) const SERIAL_WORK: usize = 32 * 1024;

/// `out[i*rows + r] = sum_c W[r,c] * x[i*cols + c]` for `i in 0..n`: `x` is `n x cols`
/// and `out` is `n x rows`, both row-major. Multithreaded over output rows.
pub fn matmul(w: &Matrix, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), KernelError> {
    matmul_with(Isa::detect(), w, x, n, out)
}

pub(crate) fn matmul_with(
    isa: Isa,
    w: &Matrix,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (rows, cols) = (w.rows(), w.cols());
    check_len("matmul", "x", mul("matmul", n, cols)?, x.len())?;
    check_len("matmul", "out", mul("matmul", n, rows)?, out.len())?;
    if out.is_empty() {
        return Ok(());
    }
    if cols == 0 {
        out.fill(0.0);
        return Ok(());
    }
    if n == 1 {
        gemv(isa, w, x, out);
    } else {
        batch::gemm(isa, w, x, n, out);
    }
    Ok(())
}

/// Rows per rayon task, or `None` to run serially.
pub(super) fn row_chunk(rows: usize, work: usize) -> Option<usize> {
    let threads = rayon::current_num_threads().max(1);
    let chunk = rows.div_ceil(threads * 4).max(MIN_ROWS_PER_TASK);
    (threads > 1 && work >= SERIAL_WORK && chunk < rows).then_some(chunk)
}

fn gemv(isa: Isa, w: &Matrix, x: &[f32], out: &mut [f32]) {
    // Q4 kernels fold their offset term into the block sums of `x`, computed once here.
    let mut xsum = Vec::new();
    if matches!(w.data(), WeightData::Q4_0(_) | WeightData::Q4_1(_)) {
        scalar::block_sums(x, &mut xsum);
    }
    let xsum = &xsum[..];
    match row_chunk(w.rows(), w.rows() * w.cols()) {
        None => gemv_rows(isa, w, x, xsum, 0, out),
        Some(chunk) => out
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(ci, o)| gemv_rows(isa, w, x, xsum, ci * chunk, o)),
    }
}

/// Calls `f(row_storage)` for rows `row0..row0 + out.len()` and stores the results.
#[inline(always)]
fn each_row<B>(units: &[B], upr: usize, row0: usize, out: &mut [f32], f: impl Fn(&[B]) -> f32) {
    for (rows, o) in units[row0 * upr..].chunks_exact(upr).zip(out.iter_mut()) {
        *o = f(rows);
    }
}

/// Batch-1 products for rows `row0..row0 + out.len()`. `xsum`: the block sums of `x`
/// (Q4 formats only). The batched path reproduces these per-row kernels exactly.
pub(super) fn gemv_rows(
    isa: Isa,
    w: &Matrix,
    x: &[f32],
    xsum: &[f32],
    row0: usize,
    out: &mut [f32],
) {
    let upr = w.units_per_row();
    match w.data() {
        WeightData::F32(v) => each_row(v, upr, row0, out, |r| dot_f32(isa, r, x)),
        WeightData::F16(v) => each_row(v, upr, row0, out, |r| dot_f16(isa, r, x)),
        WeightData::BF16(v) => each_row(v, upr, row0, out, |r| dot_bf16(isa, r, x)),
        WeightData::Q8_0(v) => each_row(v, upr, row0, out, |r| dot_q8_0(isa, r, x)),
        WeightData::Q4_0(v) => each_row(v, upr, row0, out, |r| dot_q4_0(isa, r, x, xsum)),
        WeightData::Q4_1(v) => each_row(v, upr, row0, out, |r| dot_q4_1(isa, r, x, xsum)),
    }
}

// Dispatch to the selected instruction set.
//
// SAFETY (for every `unsafe` call below): `Isa::Avx2` is only constructed by
// `Isa::detect` / `Isa::available` after `is_x86_feature_detected!` confirmed AVX2,
// FMA and F16C, which is the only precondition of the `avx2` kernels.
macro_rules! dispatch {
    ($(#[$m:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$m])*
        #[inline]
        pub(crate) fn $name(isa: Isa, $($arg: $ty),*) -> $ret {
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: see the comment above `dispatch!`: Avx2 implies the features.
                Isa::Avx2 => unsafe { avx2::$name($($arg),*) },
                Isa::Scalar => scalar::$name($($arg),*),
            }
        }
    };
}

dispatch!(
    /// `sum a[i] * b[i]` over the common length.
    dot_f32(a: &[f32], b: &[f32]) -> f32
);
dispatch!(
    /// `y += alpha * x` over the common length.
    axpy(alpha: f32, x: &[f32], y: &mut [f32]) -> ()
);
dispatch!(dot_f16(w: &[half::f16], x: &[f32]) -> f32);
dispatch!(dot_bf16(w: &[half::bf16], x: &[f32]) -> f32);
dispatch!(dot_q8_0(w: &[crate::BlockQ8_0], x: &[f32]) -> f32);
dispatch!(dot_q4_0(w: &[crate::BlockQ4_0], x: &[f32], xsum: &[f32]) -> f32);
dispatch!(dot_q4_1(w: &[crate::BlockQ4_1], x: &[f32], xsum: &[f32]) -> f32);
