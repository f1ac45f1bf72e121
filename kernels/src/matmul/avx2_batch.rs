//! AVX2 kernels of the batched path: `X` inputs against one weight row at a time.
//!
//! Batch invariance is the contract here: for every input, each function performs exactly
//! the floating-point operations of the matching batch-1 kernel in `avx2.rs` (same
//! accumulators, same order, same final reduction, same tail handling), so a row's result
//! is bit-identical whatever the batch size or the input's position in the batch. The
//! inputs only share the loads of the weights.
//!
//! Quantized and half-precision rows are first decoded once per call into a small f32
//! tile (`decode_*`): the exact values the batch-1 kernels create in registers (integer
//! codes as f32, not dequantized; scales converted with F16C), so the arithmetic on them
//! is unchanged.
//!
//! As in `avx2.rs`, every function is `unsafe` because it is compiled for AVX2+FMA+F16C:
//! callers must have checked those features (only `Isa::Avx2` dispatches here).
#![allow(unused_unsafe)]

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::avx2::{block_fma_at, f16_to_f32, hsum, nibble_vectors, widen};
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

/// Which batch-1 quantized kernel a tile reproduces.
pub(super) const Q8_0: u8 = 0;
pub(super) const Q4_0: u8 = 1;
pub(super) const Q4_1: u8 = 2;

/// The common length of `w` and every input.
fn common_len<const X: usize>(w: usize, xs: &[&[f32]; X]) -> usize {
    xs.iter().fold(w, |n, x| n.min(x.len()))
}

/// `avx2::dot_f32(w, x)` for each of the `X` inputs.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f32_x<const X: usize>(w: &[f32], xs: [&[f32]; X]) -> [f32; X] {
    let n = common_len(w.len(), &xs);
    let (main, main8) = (n - n % 32, n - n % 8);
    // SAFETY: every load reads 8 floats at an offset `j` with `j + 8 <= main8 <= n`, and
    // `n` is at most the length of `w` and of every input; features checked by the caller.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 4]; X];
        let mut j = 0;
        while j < main {
            for k in 0..4 {
                let wv = _mm256_loadu_ps(w.as_ptr().add(j + 8 * k));
                for (a, x) in acc.iter_mut().zip(xs) {
                    let xv = _mm256_loadu_ps(x.as_ptr().add(j + 8 * k));
                    a[k] = _mm256_fmadd_ps(wv, xv, a[k]);
                }
            }
            j += 32;
        }
        while j < main8 {
            let wv = _mm256_loadu_ps(w.as_ptr().add(j));
            for (a, x) in acc.iter_mut().zip(xs) {
                a[0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(j)), a[0]);
            }
            j += 8;
        }
        let mut out = [0f32; X];
        for ((o, a), x) in out.iter_mut().zip(acc).zip(xs) {
            let tail: f32 = w[main8..n]
                .iter()
                .zip(&x[main8..n])
                .map(|(p, q)| p * q)
                .sum();
            let s = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
            *o = hsum(s) + tail;
        }
        out
    }
}

/// `avx2::dot_f16` / `avx2::dot_bf16` for each input, on a row already decoded to f32
/// (by [`decode_f16`] / [`decode_bf16`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_half_x<const X: usize>(w: &[f32], xs: [&[f32]; X]) -> [f32; X] {
    let n = common_len(w.len(), &xs);
    let main = n - n % 16;
    // SAFETY: loads read 8 floats at offsets `j` and `j + 8` with `j + 16 <= main <= n`,
    // within `w` and every input; features checked by the caller.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; X];
        let mut j = 0;
        while j < main {
            let w0 = _mm256_loadu_ps(w.as_ptr().add(j));
            let w1 = _mm256_loadu_ps(w.as_ptr().add(j + 8));
            for (a, x) in acc.iter_mut().zip(xs) {
                a[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(j)), a[0]);
                a[1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(j + 8)), a[1]);
            }
            j += 16;
        }
        let mut out = [0f32; X];
        for ((o, a), x) in out.iter_mut().zip(acc).zip(xs) {
            let mut s = hsum(_mm256_add_ps(a[0], a[1]));
            for (h, xv) in w[main..n].iter().zip(&x[main..n]) {
                s += h * xv;
            }
            *o = s;
        }
        out
    }
}

/// One f16 row as f32, converted as `avx2::dot_f16` converts it (F16C).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn decode_f16(w: &[f16], out: &mut [f32]) {
    let mut co = out.chunks_exact_mut(8);
    let mut cw = w.chunks_exact(8);
    // SAFETY: each load/store touches exactly the 8 elements of an 8-element chunk.
    unsafe {
        for (o, h) in (&mut co).zip(&mut cw) {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast::<__m128i>()));
            _mm256_storeu_ps(o.as_mut_ptr(), v);
        }
        for (o, h) in co.into_remainder().iter_mut().zip(cw.remainder()) {
            *o = f16_to_f32(*h);
        }
    }
}

/// One bf16 row as f32, converted as `avx2::dot_bf16` converts it: a 16-bit shift for
/// whole 16-element chunks, `bf16::to_f32` for the tail.
pub(super) fn decode_bf16(w: &[bf16], out: &mut [f32]) {
    let main = w.len().min(out.len()) / 16 * 16;
    let (head, tail) = out.split_at_mut(main);
    for (o, h) in head.iter_mut().zip(w) {
        *o = f32::from_bits(u32::from(h.to_bits()) << 16);
    }
    for (o, h) in tail.iter_mut().zip(&w[main..]) {
        *o = h.to_f32();
    }
}

/// Q8_0 blocks as their integer codes (`q`, 32 per block) and scales (`d`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn decode_q8_0(blocks: &[BlockQ8_0], q: &mut [f32], d: &mut [f32]) {
    for ((b, qo), dv) in blocks.iter().zip(q.chunks_exact_mut(QK)).zip(d) {
        let p = b.qs.as_ptr();
        // SAFETY: 8-byte loads inside the 32-byte `qs`; 8-float stores inside the
        // 32-float chunk `qo`.
        unsafe {
            for k in 0..4 {
                let v = widen(_mm_loadl_epi64(p.add(8 * k).cast::<__m128i>()));
                _mm256_storeu_ps(qo.as_mut_ptr().add(8 * k), v);
            }
            *dv = f16_to_f32(b.d);
        }
    }
}

/// Stores the four nibble vectors of a 4-bit block into a 32-float chunk.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_nibbles(qs: &[u8; QK / 2], qo: &mut [f32]) {
    assert!(qo.len() >= QK);
    // SAFETY: four 8-float stores inside the (at least) 32-float `qo`.
    unsafe {
        for (k, v) in nibble_vectors(qs).into_iter().enumerate() {
            _mm256_storeu_ps(qo.as_mut_ptr().add(8 * k), v);
        }
    }
}

/// Q4_0 blocks as nibbles (`q`) and scales (`d`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn decode_q4_0(blocks: &[BlockQ4_0], q: &mut [f32], d: &mut [f32]) {
    for ((b, qo), dv) in blocks.iter().zip(q.chunks_exact_mut(QK)).zip(d) {
        // SAFETY: features checked by the caller.
        unsafe {
            store_nibbles(&b.qs, qo);
            *dv = f16_to_f32(b.d);
        }
    }
}

/// Q4_1 blocks as nibbles (`q`), scales (`d`) and minimums (`m`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn decode_q4_1(
    blocks: &[BlockQ4_1],
    q: &mut [f32],
    d: &mut [f32],
    m: &mut [f32],
) {
    let units = q.chunks_exact_mut(QK).zip(d).zip(m);
    for (b, ((qo, dv), mv)) in blocks.iter().zip(units) {
        // SAFETY: features checked by the caller.
        unsafe {
            store_nibbles(&b.qs, qo);
            *dv = f16_to_f32(b.d);
            *mv = f16_to_f32(b.m);
        }
    }
}

/// One decoded quantized row: codes (32 per block), scales, and minimums (Q4_1 only).
#[derive(Clone, Copy)]
pub(super) struct QuantRow<'a> {
    pub q: &'a [f32],
    pub d: &'a [f32],
    pub m: &'a [f32],
}

/// The batch-1 quantized kernel `KIND` (`dot_q8_0`, `dot_q4_0`, `dot_q4_1`) for each of
/// the `X` inputs; `sums[i]` are the block sums of input `i` (unused for Q8_0). For Q4_1
/// this is `hsum(acc)` only: add [`q4_1_min_terms`] / [`q4_1_min_terms4`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_quant_x<const X: usize, const KIND: u8>(
    row: QuantRow<'_>,
    xs: [&[f32]; X],
    sums: [&[f32]; X],
) -> [f32; X] {
    let nb = row.d.len();
    assert!(row.q.len() >= nb * QK && xs.iter().all(|x| x.len() >= nb * QK));
    assert!(KIND == Q8_0 || sums.iter().all(|s| s.len() >= nb));
    assert!(KIND != Q4_1 || row.m.len() >= nb);
    let mut out = [0f32; X];
    // SAFETY: block `b < nb` reads floats `b*32..b*32+32` of `q` and of every input and
    // element `b` of the scale arrays, all in bounds by the asserts above; features
    // checked by the caller.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); X];
        for b in 0..nb {
            let qp = row.q.as_ptr().add(b * QK);
            let v = [
                _mm256_loadu_ps(qp),
                _mm256_loadu_ps(qp.add(8)),
                _mm256_loadu_ps(qp.add(16)),
                _mm256_loadu_ps(qp.add(24)),
            ];
            let d = _mm256_set1_ps(*row.d.get_unchecked(b));
            for ((a, x), s) in acc.iter_mut().zip(xs).zip(sums) {
                let mut p = block_fma_at(v, x.as_ptr().add(b * QK));
                if KIND == Q4_0 {
                    p = _mm256_sub_ps(p, _mm256_set1_ps(*s.get_unchecked(b)));
                }
                *a = _mm256_fmadd_ps(d, p, *a);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
    }
    out
}

/// The `hsum(acc_m) * 0.125` term of `avx2::dot_q4_1` for each input: its accumulator
/// `acc_m = fma(m_b, xsum_b, acc_m)` has 8 equal lanes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_1_min_terms<const X: usize>(m: &[f32], sums: [&[f32]; X]) -> [f32; X] {
    let mut out = [0f32; X];
    // SAFETY: register-only intrinsics on bounds-checked scalars; features checked by the
    // caller.
    unsafe {
        let mut am = [_mm256_setzero_ps(); X];
        for (b, &mb) in m.iter().enumerate() {
            let mv = _mm256_set1_ps(mb);
            for (a, s) in am.iter_mut().zip(sums) {
                *a = _mm256_fmadd_ps(mv, _mm256_set1_ps(s[b]), *a);
            }
        }
        for (o, a) in out.iter_mut().zip(am) {
            *o = hsum(a) * 0.125;
        }
    }
    out
}

/// [`q4_1_min_terms`] for 4 inputs at once, one input per lane: `sums_t` holds the block
/// sums block-major (`sums_t[b * stride + i]`, inputs `i0..i0 + 4` used). Each lane runs
/// the batch-1 lane's fma chain, then `hsum` of 8 equal lanes is `((a + a) + 2a) + 4a`,
/// reproduced here before the `* 0.125`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_1_min_terms4(
    m: &[f32],
    sums_t: &[f32],
    stride: usize,
    i0: usize,
) -> [f32; 4] {
    let nb = m.len();
    assert!(nb == 0 || (nb - 1) * stride + i0 + 4 <= sums_t.len());
    let mut out = [0f32; 4];
    // SAFETY: block `b < nb` loads 4 floats at `b * stride + i0`, in bounds by the assert;
    // the store writes the 4-float `out`; features checked by the caller.
    unsafe {
        let mut am = _mm_setzero_ps();
        for (b, &mb) in m.iter().enumerate() {
            let s = _mm_loadu_ps(sums_t.as_ptr().add(b * stride + i0));
            am = _mm_fmadd_ps(_mm_set1_ps(mb), s, am);
        }
        let t = _mm_add_ps(am, am);
        let t = _mm_add_ps(t, t);
        let t = _mm_add_ps(t, t);
        _mm_storeu_ps(out.as_mut_ptr(), _mm_mul_ps(t, _mm_set1_ps(0.125)));
    }
    out
}
