//! Throughput of the decode-path kernels on SmolLM-135M-like shapes.
//! Run: `cargo bench -p weft-kernels` (plain timing harness, no extra dependencies).

mod common;

use std::hint::black_box;
use std::time::Instant;

use common::{weight_bytes, DecodeCase};
use weft_kernels::{
    attention, cpu_isa, matmul, paged_attention_batch, AttentionShape, DType, Matrix,
};

/// CPU time this thread has run, in seconds (Linux `schedstat`).
fn thread_cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns * 1e-9)
}

/// The clock: wall time, or with `WEFT_BENCH_CLOCK=thread` the CPU time of this thread
/// (meaningful for the matmul lines with `RAYON_NUM_THREADS=1`, where matmul runs on the
/// calling thread, not for attention, which still runs on the pool's worker;
/// robust to other processes competing for the cores).
fn clock() -> impl Fn() -> f64 {
    let start = Instant::now();
    let thread = std::env::var("WEFT_BENCH_CLOCK").is_ok_and(|v| v == "thread")
        && thread_cpu_secs().is_some();
    move || {
        if thread {
            thread_cpu_secs().unwrap_or(0.0)
        } else {
            start.elapsed().as_secs_f64()
        }
    }
}

/// Best of 5 rounds of ~50 ms each (robust to other load on the machine).
fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    let now = clock();
    let mut iters = 1u32;
    let mut best = f64::INFINITY;
    let mut rounds = 0;
    while rounds < 5 {
        let t = now();
        for _ in 0..iters {
            f();
        }
        let el = now() - t;
        if el < 0.05 {
            iters *= 2;
            continue;
        }
        best = best.min(el / f64::from(iters));
        rounds += 1;
    }
    best
}

fn bench_matmul(dtype: DType, rows: usize, cols: usize, n: usize) {
    let w = Matrix::from_bytes(dtype, rows, cols, &weight_bytes(dtype, rows, cols)).expect("w");
    let x: Vec<f32> = (0..n * cols)
        .map(|i| ((i % 17) as f32 - 8.0) * 0.1)
        .collect();
    let mut out = vec![0f32; n * rows];
    let t = time(|| matmul(black_box(&w), black_box(&x), n, &mut out).expect("matmul"));
    let bytes = (rows * dtype.row_bytes(cols).expect("row")) as f64;
    println!(
        "matmul {:5} {rows:6}x{cols:5} n={n:3}: {:9.1} us  {:6.2} GB/s weights  {:7.2} GFLOP/s",
        dtype.name(),
        t * 1e6,
        bytes / t / 1e9,
        2.0 * (rows * cols * n) as f64 / t / 1e9
    );
}

fn main() {
    println!(
        "isa: {}, threads: {}, clock: {}",
        cpu_isa(),
        rayon::current_num_threads(),
        std::env::var("WEFT_BENCH_CLOCK").unwrap_or_else(|_| "wall".into())
    );
    let only = std::env::var("WEFT_BENCH_DTYPE").ok();
    for dtype in [
        DType::Q4_1,
        DType::Q8_0,
        DType::Q4_0,
        DType::F16,
        DType::BF16,
        DType::F32,
    ] {
        if only.as_deref().is_some_and(|o| o != dtype.name()) {
            continue;
        }
        for (rows, cols) in [(576, 576), (1536, 576), (576, 1536), (49152, 576)] {
            bench_matmul(dtype, rows, cols, 1);
        }
        for n in [32, 64] {
            bench_matmul(dtype, 1536, 576, n);
        }
    }
    let s = AttentionShape {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    };
    for kv in [128, 1024] {
        let q = vec![0.01f32; 9 * 64];
        let k = vec![0.02f32; kv * 3 * 64];
        let mut out = vec![0f32; q.len()];
        let t = time(|| attention(&q, &k, &k, s, 1, kv - 1, &mut out).expect("attn"));
        println!("attention decode kv={kv}: {:.1} us", t * 1e6);
    }
    bench_paged_decode(s, 32, 512);
}

/// One decode step of `seqs` sequences with `kv` cached positions each.
fn bench_paged_decode(s: AttentionShape, seqs: usize, kv: usize) {
    let case = DecodeCase::new(s, seqs, kv);
    let batch = case.batch();
    let mut out = vec![0f32; case.q.len()];
    let t =
        time(|| paged_attention_batch(&case.q, case.pool(), &batch, s, &mut out).expect("paged"));
    println!(
        "paged attention decode {seqs} seqs kv={kv}: {:.1} us",
        t * 1e6
    );
}
