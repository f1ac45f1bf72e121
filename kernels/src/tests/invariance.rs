//! Batch invariance: the bits of one row's result never depend on how many other rows
//! share the call, on the row's position in the batch, or on the thread count.

use super::reference::random_bytes;
use super::{rng, uniform};
use crate::isa::Isa;
use crate::matmul::matmul_with;
use crate::{rms_norm, rope, silu_mul, DType, Matrix, RopeStyle};

/// Batch sizes the brief asks for.
const BATCHES: [usize; 5] = [1, 2, 5, 17, 64];
/// Inputs available to draw batches from (batches start at varying offsets).
const POOL_INPUTS: usize = 80;

pub(crate) fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn shapes(dtype: DType) -> &'static [(usize, usize)] {
    if dtype.is_quantized() {
        &[(131, 160), (300, 96), (9, 576)]
    } else {
        &[(131, 160), (70, 77), (300, 45), (5, 600)]
    }
}

/// Every output row of `matmul_with(isa, w, x_window, n)` equals, bit for bit, the
/// single-input product of the same input row.
fn check_invariance(isa: Isa, w: &Matrix, x: &[f32], ctx: &str) {
    let (rows, cols) = (w.rows(), w.cols());
    let alone: Vec<Vec<u32>> = pool(1).install(|| {
        x.chunks_exact(cols)
            .map(|xi| {
                let mut o = vec![f32::NAN; rows];
                matmul_with(isa, w, xi, 1, &mut o).expect("n=1");
                bits(&o)
            })
            .collect()
    });
    for threads in [1, 2, 3] {
        pool(threads).install(|| {
            for n in BATCHES {
                let start = (n * 7 + threads) % (POOL_INPUTS - n + 1);
                let xs = &x[start * cols..(start + n) * cols];
                let mut out = vec![f32::NAN; n * rows];
                matmul_with(isa, w, xs, n, &mut out).expect("matmul");
                for (i, o) in out.chunks_exact(rows).enumerate() {
                    assert!(
                        bits(o) == alone[start + i],
                        "{ctx} {isa:?}: n={n} threads={threads} input {i} (#{}) differs \
                         from its n=1 result",
                        start + i
                    );
                }
            }
        });
    }
}

#[test]
fn matmul_rows_are_bit_identical_for_every_batch_size_isa_and_thread_count() {
    for (di, dtype) in DType::ALL.into_iter().enumerate() {
        for (si, &(rows, cols)) in shapes(dtype).iter().enumerate() {
            let mut r = rng(1000 + (di * 10 + si) as u64);
            let bytes = random_bytes(&mut r, dtype, rows, cols);
            let w = Matrix::from_bytes(dtype, rows, cols, &bytes).expect("valid");
            let x = uniform(&mut r, POOL_INPUTS * cols, -2.0, 2.0);
            for isa in Isa::available() {
                check_invariance(isa, &w, &x, &format!("{dtype} {rows}x{cols}"));
            }
        }
    }
}

#[test]
fn rms_norm_rows_are_bit_identical_for_every_batch_size() {
    let d = 96;
    let mut r = rng(5);
    let x = uniform(&mut r, 100 * d, -3.0, 3.0);
    let w = uniform(&mut r, d, 0.5, 1.5);
    let alone: Vec<u32> = x
        .chunks_exact(d)
        .flat_map(|row| {
            let mut o = vec![0f32; d];
            rms_norm(row, &w, 1e-5, &mut o).expect("rms_norm");
            bits(&o)
        })
        .collect();
    for threads in [1, 2] {
        pool(threads).install(|| {
            for n in [1, 2, 5, 17, 64, 100] {
                let start = (n * 3) % (100 - n + 1);
                let mut out = vec![0f32; n * d];
                rms_norm(&x[start * d..(start + n) * d], &w, 1e-5, &mut out).expect("rms");
                assert!(
                    bits(&out) == alone[start * d..(start + n) * d],
                    "rms_norm n={n} threads={threads}"
                );
            }
        });
    }
}

#[test]
fn rope_and_silu_are_independent_of_the_token_count() {
    let (heads, hd, n) = (3, 16, 40);
    let mut r = rng(6);
    let x = uniform(&mut r, n * heads * hd, -2.0, 2.0);
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| 10000f32.powf(-((2 * i) as f32) / hd as f32))
        .collect();
    let positions: Vec<u32> = (0..n as u32).map(|p| p * 37 + 5).collect();
    for style in [RopeStyle::Half, RopeStyle::Interleaved] {
        let mut all = x.clone();
        rope(&mut all, n, heads, hd, &positions, &inv, style).expect("rope");
        let tok = heads * hd;
        for t in 0..n {
            let mut one = x[t * tok..(t + 1) * tok].to_vec();
            rope(&mut one, 1, heads, hd, &positions[t..=t], &inv, style).expect("rope");
            assert!(
                bits(&one) == bits(&all[t * tok..(t + 1) * tok]),
                "rope t={t}"
            );
        }
    }
    let up = uniform(&mut r, x.len(), -2.0, 2.0);
    let mut all = x.clone();
    silu_mul(&mut all, &up).expect("silu");
    for (c, (xc, uc)) in x.chunks(7).zip(up.chunks(7)).enumerate() {
        let mut one = xc.to_vec();
        silu_mul(&mut one, uc).expect("silu");
        assert!(
            bits(&one) == bits(&all[c * 7..c * 7 + xc.len()]),
            "silu chunk {c}"
        );
    }
}
