//! Batched products (`n > 1` inputs): every weight row is read from memory once per call
//! and reused, from L1, for all inputs.
//!
//! Rows are processed in small tiles. On the AVX2 path a tile is decoded once into an f32
//! buffer of exactly the values the batch-1 kernels create in registers (integer codes,
//! not dequantized values), then `avx2_batch` runs, for a group of inputs at a time, the
//! batch-1 kernel's own operation sequence per input. On the portable path each input
//! simply runs the batch-1 kernel on the (cache-resident) tile. Either way
//! `out[i*rows + r]` has the bits `matmul(w, x_i, 1, ..)` gives.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::avx2_batch::{self as simd, QuantRow};
use super::{gemv_rows, row_chunk, scalar, SERIAL_WORK};
use crate::isa::Isa;
use crate::matrix::{Matrix, WeightData};
use crate::quant::QK;

/// Target size (floats) of a decoded row tile (stays in L1 next to a group of inputs).
const TILE_FLOATS: usize = 4 * 1024;
/// Most rows in a tile.
const MAX_TILE_ROWS: usize = 16;

/// The inputs of one batched call, with their per-block sums (Q4 formats only).
struct Inputs<'a> {
    x: &'a [f32],
    n: usize,
    cols: usize,
    sums: Vec<f32>,
    /// The same sums block-major (`[block][input]`, Q4_1 only).
    sums_t: Vec<f32>,
}

impl<'a> Inputs<'a> {
    fn new(w: &Matrix, x: &'a [f32], n: usize) -> Self {
        let cols = w.cols();
        let mut sums = Vec::new();
        if matches!(w.data(), WeightData::Q4_0(_) | WeightData::Q4_1(_)) {
            // The same block sums the batch-1 path computes, input by input.
            let mut one = Vec::new();
            for xi in x.chunks_exact(cols) {
                scalar::block_sums(xi, &mut one);
                sums.extend_from_slice(&one);
            }
        }
        let mut sums_t = Vec::new();
        if matches!(w.data(), WeightData::Q4_1(_)) {
            let nb = cols / QK;
            sums_t = (0..nb * n).map(|j| sums[(j % n) * nb + j / n]).collect();
        }
        Inputs {
            x,
            n,
            cols,
            sums,
            sums_t,
        }
    }

    fn x(&self, i: usize) -> &'a [f32] {
        &self.x[i * self.cols..(i + 1) * self.cols]
    }

    fn sums(&self, i: usize) -> &[f32] {
        let nb = self.cols / QK;
        self.sums.get(i * nb..(i + 1) * nb).unwrap_or(&[])
    }
}

/// Per-task scratch: a decoded tile (codes or floats, scales, minimums).
#[derive(Default)]
struct Tile {
    q: Vec<f32>,
    d: Vec<f32>,
    m: Vec<f32>,
}

/// `out[i*rows + r] = W[r] . x_i` for `n > 1` inputs, batch-invariantly.
pub(super) fn gemm(isa: Isa, w: &Matrix, x: &[f32], n: usize, out: &mut [f32]) {
    let rows = w.rows();
    let inputs = Inputs::new(w, x, n);
    // Results row-major by weight row (`tmp[r*n + i]`) so tasks own disjoint slices.
    let mut tmp = vec![0f32; rows * n];
    match row_chunk(rows, (rows * w.cols()).saturating_mul(n)) {
        None => tile_rows(isa, w, &inputs, 0, &mut tmp, &mut Tile::default()),
        Some(chunk) => tmp
            .par_chunks_mut(chunk * n)
            .enumerate()
            .for_each_init(Tile::default, |tile, (ci, t)| {
                tile_rows(isa, w, &inputs, ci * chunk, t, tile)
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

/// Rows `row0..row0 + t.len() / n`, written as `t[r_local*n + i]`.
fn tile_rows(isa: Isa, w: &Matrix, inp: &Inputs<'_>, row0: usize, t: &mut [f32], tile: &mut Tile) {
    let per_tile = (TILE_FLOATS / w.cols()).clamp(1, MAX_TILE_ROWS);
    for (ti, tt) in t.chunks_mut(per_tile * inp.n).enumerate() {
        let r = row0 + ti * per_tile;
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only constructed after runtime detection of AVX2, FMA
            // and F16C (see `dispatch!` in mod.rs).
            Isa::Avx2 => unsafe { simd_tile(w, inp, r, tt, tile) },
            Isa::Scalar => portable_tile(w, inp, r, tt, &mut tile.q),
        }
    }
}

/// Portable path: the batch-1 kernels, input by input, over one cache-resident tile.
fn portable_tile(w: &Matrix, inp: &Inputs<'_>, r: usize, tt: &mut [f32], col: &mut Vec<f32>) {
    let n = inp.n;
    col.resize(tt.len() / n, 0.0);
    for i in 0..n {
        gemv_rows(Isa::Scalar, w, inp.x(i), inp.sums(i), r, col);
        for (k, &v) in col.iter().enumerate() {
            tt[k * n + i] = v;
        }
    }
}

/// A tile of rows in the form the multi-input kernels read.
#[cfg(target_arch = "x86_64")]
enum View<'a> {
    /// f32 weights, straight from the matrix.
    F32(&'a [f32]),
    /// f16 / bf16 weights converted to f32.
    Half(&'a [f32]),
    /// Codes, scales and (Q4_1) minimums; the `u8` names the kernel (`simd::Q8_0`...).
    Quant(u8, &'a [f32], &'a [f32], &'a [f32]),
}

/// Decodes rows `r..r + tr` into `tile` (float weights are used in place).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
unsafe fn decode_tile<'t>(w: &'t Matrix, r: usize, tr: usize, tile: &'t mut Tile) -> View<'t> {
    let (cols, upr) = (w.cols(), w.units_per_row());
    let units = r * upr..(r + tr) * upr;
    let nb = units.len();
    tile.q.resize(tr * cols, 0.0);
    let rows_out = tile.q.chunks_exact_mut(cols.max(1));
    match w.data() {
        WeightData::F32(v) => return View::F32(&v[units]),
        WeightData::F16(v) => {
            for (row, o) in v[units].chunks_exact(cols).zip(rows_out) {
                // SAFETY: the CPU features are guaranteed by the caller.
                unsafe { simd::decode_f16(row, o) };
            }
            return View::Half(&tile.q);
        }
        WeightData::BF16(v) => {
            for (row, o) in v[units].chunks_exact(cols).zip(rows_out) {
                simd::decode_bf16(row, o);
            }
            return View::Half(&tile.q);
        }
        _ => {}
    }
    tile.d.resize(nb, 0.0);
    tile.m.clear();
    let kind = match w.data() {
        WeightData::Q8_0(v) => {
            // SAFETY: the CPU features are guaranteed by the caller.
            unsafe { simd::decode_q8_0(&v[units], &mut tile.q, &mut tile.d) };
            simd::Q8_0
        }
        WeightData::Q4_0(v) => {
            // SAFETY: the CPU features are guaranteed by the caller.
            unsafe { simd::decode_q4_0(&v[units], &mut tile.q, &mut tile.d) };
            simd::Q4_0
        }
        WeightData::Q4_1(v) => {
            tile.m.resize(nb, 0.0);
            // SAFETY: the CPU features are guaranteed by the caller.
            unsafe { simd::decode_q4_1(&v[units], &mut tile.q, &mut tile.d, &mut tile.m) };
            simd::Q4_1
        }
        WeightData::F32(_) | WeightData::F16(_) | WeightData::BF16(_) => unreachable!(),
    };
    View::Quant(kind, &tile.q, &tile.d, &tile.m)
}

/// AVX2 path for one tile: decode once, then all inputs in groups of up to 4 (2 for f32,
/// whose kernel keeps 4 accumulators per input).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
unsafe fn simd_tile(w: &Matrix, inp: &Inputs<'_>, r: usize, tt: &mut [f32], tile: &mut Tile) {
    let n = inp.n;
    // SAFETY: the CPU features are guaranteed by the caller.
    let view = unsafe { decode_tile(w, r, tt.len() / n, tile) };
    let max = if matches!(view, View::F32(_)) { 2 } else { 4 };
    let mut i = 0;
    while i < n {
        // SAFETY: the CPU features are guaranteed by the caller.
        i += unsafe {
            match (n - i).min(max) {
                4 => simd_group::<4>(&view, inp, i, tt),
                2..=3 => simd_group::<2>(&view, inp, i, tt),
                _ => simd_group::<1>(&view, inp, i, tt),
            }
        };
    }
}

/// Inputs `i0..i0 + X` against every row of the tile; returns `X`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
unsafe fn simd_group<const X: usize>(
    view: &View<'_>,
    inp: &Inputs<'_>,
    i0: usize,
    tt: &mut [f32],
) -> usize {
    let (n, cols) = (inp.n, inp.cols);
    let nb = cols / QK;
    let xs: [&[f32]; X] = std::array::from_fn(|j| inp.x(i0 + j));
    let ss: [&[f32]; X] = std::array::from_fn(|j| inp.sums(i0 + j));
    for k in 0..tt.len() / n {
        let row = k * cols..(k + 1) * cols;
        let blocks = k * nb..(k + 1) * nb;
        // SAFETY: the CPU features are guaranteed by the caller.
        let res = unsafe {
            match *view {
                View::F32(w) => simd::dot_f32_x(&w[row], xs),
                View::Half(w) => simd::dot_half_x(&w[row], xs),
                View::Quant(kind, q, d, m) => {
                    let qr = QuantRow {
                        q: &q[row],
                        d: &d[blocks.clone()],
                        m: m.get(blocks).unwrap_or(&[]),
                    };
                    match kind {
                        simd::Q8_0 => simd::dot_quant_x::<X, { simd::Q8_0 }>(qr, xs, ss),
                        simd::Q4_0 => simd::dot_quant_x::<X, { simd::Q4_0 }>(qr, xs, ss),
                        _ => q4_1_group(qr, inp, i0, xs, ss),
                    }
                }
            }
        };
        tt[k * n + i0..k * n + i0 + X].copy_from_slice(&res);
    }
    X
}

/// Q4_1 for inputs `i0..i0 + X`: the main sums plus the `m * xsum` terms (for 4 inputs
/// with one input per SIMD lane).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
unsafe fn q4_1_group<const X: usize>(
    qr: QuantRow<'_>,
    inp: &Inputs<'_>,
    i0: usize,
    xs: [&[f32]; X],
    ss: [&[f32]; X],
) -> [f32; X] {
    // SAFETY: the CPU features are guaranteed by the caller.
    unsafe {
        let mut r = simd::dot_quant_x::<X, { simd::Q4_1 }>(qr, xs, ss);
        let mt = if X == 4 {
            let t = simd::q4_1_min_terms4(qr.m, &inp.sums_t, inp.n, i0);
            std::array::from_fn(|j| t[j])
        } else {
            simd::q4_1_min_terms(qr.m, ss)
        };
        for (v, t) in r.iter_mut().zip(mt) {
            *v += t;
        }
        r
    }
}
