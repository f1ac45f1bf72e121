//! Criterion benchmarks of the hot CPU kernels on SmolLM2-135M's shapes
//! (hidden 576, intermediate 1536, vocabulary 49152, 9 query / 3 KV heads of
//! 64): matmul in every weight dtype at decode (n = 1) and batched (n = 32)
//! sizes, RMSNorm, rotary, SiLU-multiply and paged decode attention.
//! Run: `cargo bench -p weft-kernels --bench hot` (the plain harness in
//! `kernels.rs` prints the older one-line figures).

mod common;

use std::hint::black_box;

use common::{weight_bytes, DecodeCase};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_kernels::{
    matmul, paged_attention_batch, rms_norm, rope, silu_mul, AttentionShape, DType, Matrix,
    RopeStyle,
};

fn weights(dtype: DType, rows: usize, cols: usize) -> Matrix {
    Matrix::from_bytes(dtype, rows, cols, &weight_bytes(dtype, rows, cols)).expect("matrix")
}

fn input(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i % 17) as f32 - 8.0) * 0.1).collect()
}

fn bench_matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    for dtype in [DType::Q4_1, DType::Q8_0, DType::BF16, DType::F32] {
        for (rows, cols, n) in [(576, 576, 1), (49152, 576, 1), (1536, 576, 32)] {
            let w = weights(dtype, rows, cols);
            let x = input(n * cols);
            let mut out = vec![0f32; n * rows];
            let bytes = (rows * dtype.row_bytes(cols).expect("row")) as u64;
            g.throughput(Throughput::Bytes(bytes));
            let id = BenchmarkId::new(dtype.name(), format!("{rows}x{cols} n={n}"));
            g.bench_function(id, |b| {
                b.iter(|| matmul(black_box(&w), black_box(&x), n, &mut out).expect("matmul"))
            });
        }
    }
    g.finish();
}

fn bench_elementwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("elementwise");
    let (h, tokens) = (576, 32);
    let x = input(tokens * h);
    let w = vec![1.0f32; h];
    let mut out = vec![0f32; x.len()];
    g.bench_function("rms_norm 32x576", |b| {
        b.iter(|| rms_norm(black_box(&x), &w, 1e-5, &mut out).expect("norm"))
    });
    let inv_freq: Vec<f32> = (0..32).map(|i| 10000f32.powf(-(i as f32) / 32.0)).collect();
    let positions: Vec<u32> = (0..tokens as u32).collect();
    let mut q = input(tokens * 9 * 64);
    g.bench_function("rope 32 tokens x 9 heads", |b| {
        b.iter(|| {
            rope(
                &mut q,
                tokens,
                9,
                64,
                &positions,
                &inv_freq,
                RopeStyle::Interleaved,
            )
            .expect("rope")
        })
    });
    let up = input(tokens * 1536);
    let mut gate = input(tokens * 1536);
    g.bench_function("silu_mul 32x1536", |b| {
        b.iter(|| silu_mul(black_box(&mut gate), &up).expect("silu"))
    });
    g.finish();
}

fn bench_paged_decode(c: &mut Criterion) {
    let s = AttentionShape {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let mut g = c.benchmark_group("paged_decode");
    for (seqs, kv) in [(1, 512), (32, 512)] {
        let case = DecodeCase::new(s, seqs, kv);
        let batch = case.batch();
        let mut out = vec![0f32; case.q.len()];
        g.bench_function(format!("{seqs} seqs, {kv} positions"), |b| {
            b.iter(|| {
                paged_attention_batch(&case.q, case.pool(), &batch, s, &mut out).expect("paged")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_matmul, bench_elementwise, bench_paged_decode);
criterion_main!(benches);
