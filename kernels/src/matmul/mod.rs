//! Matrix x activations products for every weight [`DType`].
//!
//! Batch 1 (decode) computes each output row as a dot product directly on the stored
//! format (quantized blocks are never expanded to a full f32 matrix). Batches > 1
//! (prefill) decode a small tile of rows to f32 once and reuse it across all inputs.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod scalar;

use rayon::prelude::*;

use crate::error::{check_len, mul};
use crate::isa::Isa;
use crate::matrix::{Matrix, WeightData};
use crate::KernelError;

/// Minimum rows per rayon task.
const MIN_ROWS_PER_TASK: usize = 16;
/// Below this many multiply-adds a call runs on the current thread.
const SERIAL_WORK: usize = 32 * 1024;
/// Target size (floats) of the decoded row tile in the batched path (fits L1 with room
/// for an input row).
const TILE_FLOATS: usize = 4 * 1024;
/// Most rows in a decoded tile.
const MAX_TILE_ROWS: usize = 16;
/// Rows per micro-kernel call in the batched path.
const MICRO_ROWS: usize = 4;

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
        gemm(isa, w, x, n, out);
    }
    Ok(())
}

/// Rows per rayon task, or `None` to run serially.
fn row_chunk(rows: usize, work: usize) -> Option<usize> {
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

/// Batch-1 products for rows `row0..row0 + out.len()`.
fn gemv_rows(isa: Isa, w: &Matrix, x: &[f32], xsum: &[f32], row0: usize, out: &mut [f32]) {
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

fn gemm(isa: Isa, w: &Matrix, x: &[f32], n: usize, out: &mut [f32]) {
    let rows = w.rows();
    // Results row-major by weight row (`tmp[r*n + i]`) so tasks own disjoint slices.
    let mut tmp = vec![0f32; rows * n];
    match row_chunk(rows, (rows * w.cols()).saturating_mul(n)) {
        None => gemm_rows(isa, w, x, n, 0, &mut tmp, &mut Vec::new()),
        Some(chunk) => tmp
            .par_chunks_mut(chunk * n)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (ci, t)| {
                gemm_rows(isa, w, x, n, ci * chunk, t, scratch)
            }),
    }
    let transpose = |(i, o): (usize, &mut [f32])| {
        for (r, v) in o.iter_mut().enumerate() {
            *v = tmp[r * n + i];
        }
    };
    if rows * n >= SERIAL_WORK {
        out.par_chunks_mut(rows).enumerate().for_each(transpose);
    } else {
        out.chunks_mut(rows).enumerate().for_each(transpose);
    }
}

/// Batched products for rows `row0..row0 + t.len() / n`, written as `t[r_local*n + i]`.
fn gemm_rows(
    isa: Isa,
    w: &Matrix,
    x: &[f32],
    n: usize,
    row0: usize,
    t: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let cols = w.cols();
    let tile = (TILE_FLOATS / cols / MICRO_ROWS * MICRO_ROWS).clamp(MICRO_ROWS, MAX_TILE_ROWS);
    for (ti, tt) in t.chunks_mut(tile * n).enumerate() {
        let r = row0 + ti * tile;
        let tr = tt.len() / n;
        let decoded: &[f32] = match w.data() {
            WeightData::F32(v) => &v[r * cols..(r + tr) * cols],
            _ => {
                scratch.resize(tr * cols, 0.0);
                w.decode_rows(r, scratch);
                scratch
            }
        };
        for (i, xi) in x.chunks_exact(cols).enumerate() {
            let mut quads = decoded.chunks_exact(cols * MICRO_ROWS);
            for (q, wq) in (&mut quads).enumerate() {
                let (w0, rest) = wq.split_at(cols);
                let (w1, rest) = rest.split_at(cols);
                let (w2, w3) = rest.split_at(cols);
                let d = dot4_f32(isa, [w0, w1, w2, w3], xi);
                for (k, v) in d.into_iter().enumerate() {
                    tt[(q * MICRO_ROWS + k) * n + i] = v;
                }
            }
            let done = tr - quads.remainder().len() / cols;
            for (k, wr) in quads.remainder().chunks_exact(cols).enumerate() {
                tt[(done + k) * n + i] = dot_f32(isa, wr, xi);
            }
        }
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
    /// Four dot products of rows `w` with one `x`.
    dot4_f32(w: [&[f32]; 4], x: &[f32]) -> [f32; 4]
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
