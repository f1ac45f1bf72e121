//! Portable dot-product kernels, written with independent lane accumulators so LLVM
//! can vectorize them.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::quant::{nibbles, BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

const LANES: usize = 8;

/// `sum a[i] * b[i]` over the common length.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += alpha * x` over the common length.
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * *x;
    }
}

/// Dot product of half-precision weights with f32 activations, converting a stack
/// buffer at a time.
fn dot_converted<T>(w: &[T], x: &[f32], convert: impl Fn(&[T], &mut [f32])) -> f32 {
    const CHUNK: usize = 256;
    let mut buf = [0f32; CHUNK];
    let mut sum = 0f32;
    for (wc, xc) in w.chunks(CHUNK).zip(x.chunks(CHUNK)) {
        let m = wc.len().min(xc.len());
        convert(&wc[..m], &mut buf[..m]);
        sum += dot_f32(&buf[..m], &xc[..m]);
    }
    sum
}

pub(crate) fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    dot_converted(w, x, |s, o| s.convert_to_f32_slice(o))
}

pub(crate) fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    dot_converted(w, x, |s, o| s.convert_to_f32_slice(o))
}

/// `sum q[j] * x[j]` over one 32-element block with lane accumulators.
#[inline(always)]
fn block_dot(q: &[f32; QK], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (qc, xc) in q.chunks_exact(LANES).zip(x.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += qc[l] * xc[l];
        }
    }
    acc.iter().sum()
}

pub(crate) fn dot_q8_0(blocks: &[BlockQ8_0], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xs) in blocks.iter().zip(x.chunks_exact(QK)) {
        let q = b.qs.map(f32::from);
        sum += b.d.to_f32() * block_dot(&q, xs);
    }
    sum
}

pub(crate) fn dot_q4_0(blocks: &[BlockQ4_0], x: &[f32], _xsum: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xs) in blocks.iter().zip(x.chunks_exact(QK)) {
        let q = nibbles(&b.qs).map(|n| f32::from(n) - 8.0);
        sum += b.d.to_f32() * block_dot(&q, xs);
    }
    sum
}

/// Q4_1: `d * sum(nib * x) + m * xsum` per block (`xsum`: the block sums of `x`).
pub(crate) fn dot_q4_1(blocks: &[BlockQ4_1], x: &[f32], xsum: &[f32]) -> f32 {
    let mut sum = 0f32;
    for ((b, xs), &sx) in blocks.iter().zip(x.chunks_exact(QK)).zip(xsum) {
        let q = nibbles(&b.qs).map(f32::from);
        sum += b.d.to_f32() * block_dot(&q, xs) + b.m.to_f32() * sx;
    }
    sum
}

/// Sums of each 32-element block of `x` (shared by every row of a Q4 matrix).
pub(crate) fn block_sums(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(x.chunks_exact(QK).map(|c| {
        let mut acc = [0f32; LANES];
        for part in c.chunks_exact(LANES) {
            for l in 0..LANES {
                acc[l] += part[l];
            }
        }
        acc.iter().sum::<f32>()
    }));
}
