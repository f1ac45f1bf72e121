//! The model stages of the GPU check: a 2-layer synthetic Llama-3-8B on the
//! GPU against the CPU forward pass (the reference), and decode / prefill
//! timings of the full synthetic Llama-3-8B against the copy bandwidth and
//! GEMM rate measured in the same run.

use std::time::Instant;

use weft_kernels::cuda::CudaBackend;
use weft_model::comm::SingleRank;
use weft_model::config::ModelConfig;
use weft_model::gpu::{random_shard, GpuRankModel, KvGeometry, SyntheticInit};
use weft_model::llama::{RankModel, SeqInput};
use weft_model::synthetic::SyntheticSpec;

use super::{Baselines, GpuCheckArgs, Row};

const BLOCK: usize = 16;

fn llama3_8b(layers: usize) -> ModelConfig {
    let mut cfg = SyntheticSpec::llama3_8b().config();
    cfg.num_layers = layers;
    cfg
}

/// Relative L2 error of `gpu` against `cpu`.
fn rel_l2(gpu: &[f32], cpu: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (g, c) in gpu.iter().zip(cpu) {
        num += f64::from(g - c).powi(2);
        den += f64::from(*c).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Prefill 80 tokens (the cuBLAS attention path), then 4 greedy decode steps fed the CPU's choice, on
/// both paths; compares the logits of every step.
pub fn compare_cpu_gpu(b: &CudaBackend, seed: u64, rows: &mut Vec<Row>) {
    let stage = "2-layer Llama-3-8B GPU vs CPU";
    match compare(b, seed) {
        Ok((worst, agree, steps)) => rows.push(Row::new(
            stage,
            format!(
                "worst rel L2 err {worst:.2e} over {steps} steps, argmax agrees {agree}/{steps}"
            ),
            worst < 2e-2 && agree == steps,
        )),
        Err(e) => rows.push(Row::new(stage, format!("failed: {e}"), false)),
    }
}

fn compare(b: &CudaBackend, seed: u64) -> Result<(f64, usize, usize), String> {
    let cfg = llama3_8b(2);
    let shard = random_shard(&cfg, seed);
    let cpu = RankModel::from_shard(&cfg, &shard).map_err(|e| e.to_string())?;
    let kv = KvGeometry {
        block_size: BLOCK,
        num_blocks: 8,
    };
    let mut gpu =
        GpuRankModel::from_shard(b, &cfg, &shard, kv, &mut |_, _| {}).map_err(|e| e.to_string())?;
    drop(shard);
    let mut pool = cpu.new_pool(BLOCK, 8).map_err(|e| e.to_string())?;
    let table: Vec<u32> = (0..8).collect();
    let mut comm = SingleRank;
    let mut tokens: Vec<u32> = (0..80).map(|i| (i * 7919 + 11) % 128_000).collect();
    let (mut start, mut worst, mut agree) = (0usize, 0f64, 0usize);
    let steps = 5;
    for _ in 0..steps {
        let new = &tokens[start..];
        let c = cpu
            .forward_batch(
                &mut comm,
                &mut pool,
                &[SeqInput {
                    tokens: new,
                    start_pos: start,
                    block_table: &table,
                    want_logits: true,
                }],
            )
            .map_err(|e| e.to_string())?;
        let g = gpu
            .forward(
                b,
                &[SeqInput {
                    tokens: new,
                    start_pos: start,
                    block_table: &table,
                    want_logits: true,
                }],
                None,
            )
            .map_err(|e| e.to_string())?;
        let g = g.logits.to_vec(b).map_err(|e| e.to_string())?;
        worst = worst.max(rel_l2(&g, &c[0]));
        let next = argmax(&c[0]);
        agree += usize::from(argmax(&g) == next);
        start = tokens.len();
        tokens.push(next as u32);
    }
    Ok((worst, agree, steps))
}

/// Bytes of bf16 weights read by one decode step (the embedding reads only
/// the batch's rows).
fn weight_bytes(c: &ModelConfig) -> f64 {
    let h = c.hidden_size as f64;
    let q = (c.num_heads * c.head_dim) as f64;
    let kv = (c.num_kv_heads * c.head_dim) as f64;
    let layer = h * q * 2.0 + h * kv * 2.0 + 3.0 * h * c.intermediate_size as f64;
    2.0 * (layer * c.num_layers as f64 + h * c.vocab_size as f64)
}

pub fn time_llama3_8b(b: &CudaBackend, args: &GpuCheckArgs, base: Baselines, rows: &mut Vec<Row>) {
    let cfg = llama3_8b(32);
    let blocks_per_seq = (2048 + 256) / BLOCK + 1;
    let kv = KvGeometry {
        block_size: BLOCK,
        num_blocks: 64 * blocks_per_seq,
    };
    let t0 = Instant::now();
    let mut model = match GpuRankModel::synthetic(
        b,
        &cfg,
        SyntheticInit { seed: args.seed },
        kv,
        &mut |i, n| {
            if i % 8 == 0 || i == n {
                eprintln!("synthetic Llama-3-8B: {i}/{n} layers on the device");
            }
        },
    ) {
        Ok(m) => m,
        Err(e) => {
            rows.push(Row::new(
                "Llama-3-8B synthetic",
                format!("failed: {e}"),
                false,
            ));
            return;
        }
    };
    rows.push(Row::new(
        "Llama-3-8B synthetic load",
        format!("{:.1} s", t0.elapsed().as_secs_f64()),
        true,
    ));
    for batch in [1usize, 8, 64] {
        let r = time_decode(b, &mut model, batch, blocks_per_seq, args.decode_steps);
        if let Ok(t) = &r {
            rows.push(Row::new(
                format!("profile decode batch {batch}"),
                format!("host enqueue {:.2} ms/step; {}", t.host_ms, t.profile),
                true,
            ));
        }
        rows.push(match r {
            Ok(DecodeTiming {
                step_ms,
                mean_ctx: ctx,
                ..
            }) => {
                let kv_bytes =
                    (batch * ctx * 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2) as f64;
                let gbs = (weight_bytes(&cfg) + kv_bytes) / (step_ms * 1e-3) / 1e9;
                let frac = gbs / base.copy_gbs.max(1e-9);
                Row::new(
                    format!("decode batch {batch}"),
                    format!(
                        "{step_ms:.2} ms/step, {:.0} tok/s, {gbs:.0} GB/s = {:.0}% of copy",
                        batch as f64 * 1e3 / step_ms,
                        frac * 100.0
                    ),
                    batch != 1 || frac >= 0.8,
                )
            }
            Err(e) => Row::new(
                format!("decode batch {batch}"),
                format!("failed: {e}"),
                false,
            ),
        });
    }
    gemm_rows(b, &model, &cfg, base, rows);
    let prefill = time_prefill(b, &mut model, 2048);
    if let Ok((_, profile)) = &prefill {
        rows.push(Row::new("profile prefill 2048", profile.clone(), true));
    }
    rows.push(match prefill {
        Ok((ms, _)) => {
            let t = 2048f64;
            let params = weight_bytes(&cfg) / 2.0 - (cfg.hidden_size * cfg.vocab_size) as f64;
            let attn =
                2.0 * 2.0 * cfg.num_layers as f64 * (cfg.num_heads * cfg.head_dim) as f64 * t * t
                    / 2.0;
            let tflops = (2.0 * params * t + attn) / (ms * 1e-3) / 1e12;
            let frac = tflops / base.gemm_tflops.max(1e-9);
            Row::new(
                "prefill 2048 tokens",
                format!(
                    "{ms:.1} ms, {tflops:.0} TFLOP/s = {:.0}% of GEMM",
                    frac * 100.0
                ),
                frac >= 0.6,
            )
        }
        Err(e) => Row::new("prefill 2048 tokens", format!("failed: {e}"), false),
    });
}

/// Prefills `batch` sequences of 128 tokens, then times `steps` decode
/// steps; returns (ms per step, mean context length).
fn time_decode(
    b: &CudaBackend,
    m: &mut GpuRankModel,
    batch: usize,
    blocks_per_seq: usize,
    steps: usize,
) -> Result<DecodeTiming, String> {
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect())
        .collect();
    let prompt: Vec<u32> = (0..128).map(|i| (i * 31 + 7) % 128_000).collect();
    let seqs: Vec<SeqInput<'_>> = tables
        .iter()
        .map(|t| SeqInput {
            tokens: &prompt,
            start_pos: 0,
            block_table: t,
            want_logits: true,
        })
        .collect();
    let out = m.forward(b, &seqs, None).map_err(|e| e.to_string())?;
    let mut next: Vec<u32> = m
        .greedy(b, &out)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|x| x.0)
        .collect();
    let mut pos = prompt.len();
    let mut host = 0f64;
    let mut t0 = Instant::now();
    for step in 0..steps + 2 {
        if step == 2 {
            // Two warm-up steps.
            b.synchronize().map_err(|e| e.to_string())?;
            t0 = Instant::now();
        }
        let seqs = decode_inputs(&tables, &next, pos);
        let h0 = Instant::now();
        let out = m.forward(b, &seqs, None).map_err(|e| e.to_string())?;
        if step >= 2 {
            host += h0.elapsed().as_secs_f64();
        }
        next = m
            .greedy(b, &out)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|x| x.0)
            .collect();
        pos += 1;
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / steps.max(1) as f64;
    let host_ms = host * 1e3 / steps.max(1) as f64;
    // One more step, profiled.
    let seqs = decode_inputs(&tables, &next, pos);
    let profile = profiled(b, || {
        let out = m.forward(b, &seqs, None).map_err(|e| e.to_string())?;
        m.greedy(b, &out).map_err(|e| e.to_string())
    })?;
    Ok(DecodeTiming {
        step_ms: ms,
        host_ms,
        mean_ctx: pos - steps / 2,
        profile,
    })
}

/// One decode step's inputs: each sequence's next token at `pos`.
fn decode_inputs<'a>(tables: &'a [Vec<u32>], next: &'a [u32], pos: usize) -> Vec<SeqInput<'a>> {
    tables
        .iter()
        .zip(next)
        .map(|(t, tok)| SeqInput {
            tokens: std::slice::from_ref(tok),
            start_pos: pos,
            block_table: t,
            want_logits: true,
        })
        .collect()
}

/// What [`time_decode`] measured.
struct DecodeTiming {
    step_ms: f64,
    /// Host time inside `forward` (enqueueing the step), per step.
    host_ms: f64,
    mean_ctx: usize,
    /// GPU time per operation of one more step.
    profile: String,
}

/// Runs `f` with the step profiler on; returns its GPU time per
/// operation, the largest first.
fn profiled<T>(b: &CudaBackend, f: impl FnOnce() -> Result<T, String>) -> Result<String, String> {
    b.synchronize().map_err(|e| e.to_string())?;
    b.profile_start().map_err(|e| e.to_string())?;
    f()?;
    let totals = b.profile_take().map_err(|e| e.to_string())?;
    let sum: f64 = totals.values().map(|v| v.0).sum();
    let mut v: Vec<_> = totals.into_iter().collect();
    v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let parts: Vec<String> = v
        .iter()
        .map(|(name, (ms, n))| format!("{name} {ms:.2} ms/{n}"))
        .collect();
    Ok(format!("GPU {sum:.2} ms: {}", parts.join(", ")))
}

/// Times one prefill of `n` tokens (after a warm-up one); ms.
fn time_prefill(b: &CudaBackend, m: &mut GpuRankModel, n: usize) -> Result<(f64, String), String> {
    let table: Vec<u32> = (0..n.div_ceil(BLOCK) as u32).collect();
    let prompt: Vec<u32> = (0..n as u32).map(|i| (i * 131 + 3) % 128_000).collect();
    let seq = [SeqInput {
        tokens: &prompt,
        start_pos: 0,
        block_table: &table,
        want_logits: true,
    }];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        b.synchronize().map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let out = m.forward(b, &seq, None).map_err(|e| e.to_string())?;
        m.greedy(b, &out).map_err(|e| e.to_string())?;
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    let profile = profiled(b, || {
        let out = m.forward(b, &seq, None).map_err(|e| e.to_string())?;
        m.greedy(b, &out).map_err(|e| e.to_string())
    })?;
    Ok((best, profile))
}

/// The step's weight GEMMs alone at batch 1 and over 2048 rows: what the
/// decode and prefill timings would be with every other kernel free.
fn gemm_rows(
    b: &CudaBackend,
    m: &GpuRankModel,
    cfg: &ModelConfig,
    base: Baselines,
    rows: &mut Vec<Row>,
) {
    let stage = "GEMMs alone, 1 row";
    rows.push(match m.time_step_gemms(b, 1, 16) {
        Ok(ms) => {
            let gbs = weight_bytes(cfg) / (ms * 1e-3) / 1e9;
            let pct = gbs / base.copy_gbs.max(1e-9) * 100.0;
            Row::new(
                stage,
                format!("{ms:.2} ms, {gbs:.0} GB/s = {pct:.0}% of copy"),
                true,
            )
        }
        Err(e) => Row::new(stage, format!("failed: {e}"), false),
    });
    let stage = "GEMMs alone, 2048 rows";
    rows.push(match m.time_step_gemms(b, 2048, 3) {
        Ok(ms) => {
            let params = weight_bytes(cfg) / 2.0 - (cfg.hidden_size * cfg.vocab_size) as f64;
            let tflops = 2.0 * params * 2048.0 / (ms * 1e-3) / 1e12;
            let pct = tflops / base.gemm_tflops.max(1e-9) * 100.0;
            Row::new(
                stage,
                format!("{ms:.1} ms, {tflops:.0} TFLOP/s = {pct:.0}% of GEMM"),
                true,
            )
        }
        Err(e) => Row::new(stage, format!("failed: {e}"), false),
    });
}
