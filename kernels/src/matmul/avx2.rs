//! AVX2 + FMA + F16C dot-product kernels.
//!
//! Every function is an `unsafe fn` only because it is compiled for those CPU features:
//! the caller must have checked them at runtime (only `Isa::Avx2`, created by
//! `Isa::detect` after `is_x86_feature_detected!`, dispatches here). Memory accesses
//! are bounds-safe by construction: pointer loads only read inside `chunks_exact`
//! chunks or fixed-size block arrays of the right length.
//!
//! Arithmetic intrinsics are safe to call inside `#[target_feature]` functions since
//! Rust 1.87, but not at the workspace MSRV (1.85); the explicit `unsafe` blocks keep both
//! compiling, hence the `unused_unsafe` allowance.
#![allow(unused_unsafe)]

use std::arch::x86_64::*;

use half::{bf16, f16};

use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

/// Horizontal sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics; the CPU features are guaranteed by the caller.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// One f16 to f32 with the F16C instruction (no runtime detection per call).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_to_f32(h: f16) -> f32 {
    // SAFETY: register-only intrinsics; the CPU features are guaranteed by the caller.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(h.to_bits() as i16))) }
}

/// An f16 scale broadcast to 8 f32 lanes. Broadcasting before the conversion avoids a
/// partial-register write (`vpinsrw`) that LLVM would otherwise merge into a live
/// accumulator register, creating a false loop-carried dependency.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn splat_f16(h: f16) -> __m256 {
    // SAFETY: register-only intrinsics; the CPU features are guaranteed by the caller.
    unsafe { _mm256_cvtph_ps(_mm_set1_epi16(h.to_bits() as i16)) }
}

/// `sum a[i] * b[i]` over the common length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, cb) = (a[..n].chunks_exact(32), b[..n].chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    // SAFETY: each load reads 8 floats at offset 0, 8, 16 or 24 of a 32-float chunk,
    // or 8 floats of an 8-float chunk; features guaranteed by the caller.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (x, y) in ca.zip(cb) {
            for (k, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.as_ptr().add(8 * k));
                let yv = _mm256_loadu_ps(y.as_ptr().add(8 * k));
                *a = _mm256_fmadd_ps(xv, yv, *a);
            }
        }
        let (c8a, c8b) = (ra.chunks_exact(8), rb.chunks_exact(8));
        let tail: f32 = c8a
            .remainder()
            .iter()
            .zip(c8b.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in c8a.zip(c8b) {
            let p = _mm256_loadu_ps(x.as_ptr());
            acc[0] = _mm256_fmadd_ps(p, _mm256_loadu_ps(y.as_ptr()), acc[0]);
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(s) + tail
    }
}

/// `y += alpha * x` over the common length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let mut cy = y[..n].chunks_exact_mut(8);
    let mut cx = x[..n].chunks_exact(8);
    // SAFETY: loads/stores touch exactly the 8 floats of an 8-float chunk.
    unsafe {
        let av = _mm256_set1_ps(alpha);
        for (yc, xc) in (&mut cy).zip(&mut cx) {
            let r = _mm256_fmadd_ps(
                av,
                _mm256_loadu_ps(xc.as_ptr()),
                _mm256_loadu_ps(yc.as_ptr()),
            );
            _mm256_storeu_ps(yc.as_mut_ptr(), r);
        }
    }
    for (yv, xv) in cy.into_remainder().iter_mut().zip(cx.remainder()) {
        *yv += alpha * *xv;
    }
}

/// f16 weights . f32 activations.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (cw, cx) = (w[..n].chunks_exact(16), x[..n].chunks_exact(16));
    let (rw, rx) = (cw.remainder(), cx.remainder());
    // SAFETY: each load reads 8 halves (16 bytes) or 8 floats inside a 16-element
    // chunk; features guaranteed by the caller.
    unsafe {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (wc, xc) in cw.zip(cx) {
            let wp = wc.as_ptr().cast::<__m128i>();
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(1)));
            a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xc.as_ptr()), a0);
            a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xc.as_ptr().add(8)), a1);
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        for (h, xv) in rw.iter().zip(rx) {
            s += f16_to_f32(*h) * xv;
        }
        s
    }
}

/// bf16 weights . f32 activations (bf16 -> f32 is a 16-bit left shift).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (cw, cx) = (w[..n].chunks_exact(16), x[..n].chunks_exact(16));
    let (rw, rx) = (cw.remainder(), cx.remainder());
    // SAFETY: each load reads 8 bf16 (16 bytes) or 8 floats inside a 16-element chunk.
    unsafe {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (wc, xc) in cw.zip(cx) {
            let wp = wc.as_ptr().cast::<__m128i>();
            let w0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(wp));
            let w1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(wp.add(1)));
            let w0 = _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16));
            let w1 = _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16));
            a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xc.as_ptr()), a0);
            a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xc.as_ptr().add(8)), a1);
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        for (h, xv) in rw.iter().zip(rx) {
            s += h.to_f32() * xv;
        }
        s
    }
}

/// `sum v_k * x[8k..8k+8]` for the 4 vectors of one block (`x` has 32 floats).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_fma(v: [__m256; 4], x: &[f32]) -> __m256 {
    assert!(x.len() >= QK);
    // SAFETY: `x` holds at least 32 floats (checked above).
    unsafe { block_fma_at(v, x.as_ptr()) }
}

/// [`block_fma`] on a raw pointer: the one per-block product sequence of every quantized
/// kernel, batch-1 and batched alike.
///
/// # Safety
/// `p` must be valid for reading 32 floats; the CPU must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn block_fma_at(v: [__m256; 4], p: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 32 readable floats at `p`; loads read floats 0..32.
    unsafe {
        let s = _mm256_mul_ps(v[0], _mm256_loadu_ps(p));
        let s = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(p.add(8)), s);
        let s = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(p.add(16)), s);
        _mm256_fmadd_ps(v[3], _mm256_loadu_ps(p.add(24)), s)
    }
}

/// Q8_0 weights . f32 activations: `sum_b d_b * sum_j q_j x_j`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0(blocks: &[BlockQ8_0], x: &[f32]) -> f32 {
    // SAFETY: each 8-byte load reads inside the 32-byte `qs` array of one block.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (b, xs) in blocks.iter().zip(x.chunks_exact(QK)) {
            let q = b.qs.as_ptr();
            let v = [
                widen(_mm_loadl_epi64(q.cast::<__m128i>())),
                widen(_mm_loadl_epi64(q.add(8).cast::<__m128i>())),
                widen(_mm_loadl_epi64(q.add(16).cast::<__m128i>())),
                widen(_mm_loadl_epi64(q.add(24).cast::<__m128i>())),
            ];
            let d = splat_f16(b.d);
            acc = _mm256_fmadd_ps(d, block_fma(v, xs), acc);
        }
        hsum(acc)
    }
}

/// The low 8 signed bytes of `v` as 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn widen(v: __m128i) -> __m256 {
    // SAFETY: register-only intrinsics; the CPU features are guaranteed by the caller.
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)) }
}

/// The 32 nibbles of a 4-bit block as four f32 vectors in GGML order (elements 0..8,
/// 8..16, 16..24, 24..32). One broadcast load, two in-lane byte shuffles that zero-extend
/// bytes 0..8 / 8..16 into 32-bit lanes, then mask (low nibbles) or shift (high nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibble_vectors(qs: &[u8; QK / 2]) -> [__m256; 4] {
    const Z: i8 = -128; // pshufb: zero this byte
                        // SAFETY: one 16-byte load of the 16-byte `qs` array; the rest is register-only.
    unsafe {
        let q = _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.as_ptr().cast::<__m128i>()));
        #[rustfmt::skip]
        let m0 = _mm256_setr_epi8(
            0, Z, Z, Z, 1, Z, Z, Z, 2, Z, Z, Z, 3, Z, Z, Z,
            4, Z, Z, Z, 5, Z, Z, Z, 6, Z, Z, Z, 7, Z, Z, Z,
        );
        #[rustfmt::skip]
        let m1 = _mm256_setr_epi8(
            8, Z, Z, Z, 9, Z, Z, Z, 10, Z, Z, Z, 11, Z, Z, Z,
            12, Z, Z, Z, 13, Z, Z, Z, 14, Z, Z, Z, 15, Z, Z, Z,
        );
        let low = _mm256_set1_epi32(0x0F);
        let b0 = _mm256_shuffle_epi8(q, m0);
        let b1 = _mm256_shuffle_epi8(q, m1);
        [
            _mm256_cvtepi32_ps(_mm256_and_si256(b0, low)),
            _mm256_cvtepi32_ps(_mm256_and_si256(b1, low)),
            _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)),
            _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4)),
        ]
    }
}

/// Q4_0 weights . f32 activations:
/// `sum_b d_b * (sum_j nib_j x_j - 8 * xsum_b)`, with `xsum_b` the block sums of `x`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_0(blocks: &[BlockQ4_0], x: &[f32], xsum: &[f32]) -> f32 {
    // SAFETY: helpers read only the block's arrays and the 32-float chunk.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for ((b, xs), &sx) in blocks.iter().zip(x.chunks_exact(QK)).zip(xsum) {
            let v = nibble_vectors(&b.qs);
            // Each of the 8 lanes subtracts xsum_b: 8 * xsum_b in total.
            let s = _mm256_sub_ps(block_fma(v, xs), _mm256_set1_ps(sx));
            acc = _mm256_fmadd_ps(splat_f16(b.d), s, acc);
        }
        hsum(acc)
    }
}

/// Q4_1 weights . f32 activations: `sum_b d_b * sum_j nib_j x_j + m_b * xsum_b`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_1(blocks: &[BlockQ4_1], x: &[f32], xsum: &[f32]) -> f32 {
    // SAFETY: helpers read only the block's arrays and the 32-float chunk.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm256_setzero_ps();
        for ((b, xs), &sx) in blocks.iter().zip(x.chunks_exact(QK)).zip(xsum) {
            let v = nibble_vectors(&b.qs);
            acc = _mm256_fmadd_ps(splat_f16(b.d), block_fma(v, xs), acc);
            acc_m = _mm256_fmadd_ps(splat_f16(b.m), _mm256_set1_ps(sx), acc_m);
        }
        // All 8 lanes of `acc_m` hold the same sum.
        hsum(acc) + hsum(acc_m) * 0.125
    }
}
