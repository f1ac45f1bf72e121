//! `weft-gpu-check`: everything GPU-side checked and timed in one run (the
//! body of `scripts/gpu-check.sh run`). Each stage reports a row of the
//! final table; a stage that fails says why and the run goes on.

mod model;
pub mod serve_fixture;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_kernels::cuda::{self, CudaBackend, CudaConfig};

/// Options of the check.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "weft-gpu-check",
    about = "Checks and times weft's CUDA backend on one GPU"
)]
pub struct GpuCheckArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub ordinal: usize,
    /// Folder for compiled kernels (PTX), reused between runs.
    #[arg(long)]
    pub ptx_cache: Option<PathBuf>,
    /// Seed of every random input.
    #[arg(long, default_value_t = 20261129)]
    pub seed: u64,
    /// Skip the full synthetic Llama-3-8B timings.
    #[arg(long, default_value_t = false)]
    pub skip_8b: bool,
    /// Decode steps timed per batch size.
    #[arg(long, default_value_t = 32)]
    pub decode_steps: usize,
    /// Another task instead of the check.
    #[command(subcommand)]
    pub command: Option<GpuCheckCommand>,
}

/// Tasks of `weft-gpu-check` other than the check itself.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum GpuCheckCommand {
    /// Writes the inputs of the serving stage of scripts/gpu-check.sh (no
    /// GPU needed): DIR/model (a synthetic checkpoint with a
    /// tokenizer.json) and DIR/prompts.jsonl (weft-load's jsonl dataset).
    WriteServeFixture {
        /// The folder to write into (created if needed).
        dir: PathBuf,
    },
}

/// One row of the final table.
pub struct Row {
    pub stage: String,
    pub result: String,
    pub ok: bool,
}

impl Row {
    /// A row, also printed at once (with the time since the check began)
    /// so a run cut short still shows what it measured.
    fn new(stage: impl Into<String>, result: impl Into<String>, ok: bool) -> Self {
        let row = Row {
            stage: stage.into(),
            result: result.into(),
            ok,
        };
        let since = START.get_or_init(Instant::now).elapsed().as_secs_f64();
        let mark = if row.ok { "ok" } else { "NO" };
        eprintln!("[{since:7.1} s] {mark} {}: {}", row.stage, row.result);
        row
    }
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Measured rates the later stages compare against.
#[derive(Default, Clone, Copy)]
pub struct Baselines {
    /// Device-to-device copy, GB/s counting bytes read and written.
    pub copy_gbs: f64,
    /// cuBLAS bf16 GEMM, TFLOP/s.
    pub gemm_tflops: f64,
}

/// Runs every stage; returns the table rows (printed by the caller).
pub fn run(args: &GpuCheckArgs) -> Vec<Row> {
    START.get_or_init(Instant::now);
    let mut rows = Vec::new();
    let info = match cuda::probe(args.ordinal) {
        Ok(i) => i,
        Err(e) => {
            rows.push(Row::new(
                "device",
                format!("no usable CUDA device: {e}"),
                false,
            ));
            return rows;
        }
    };
    rows.push(Row::new(
        "device",
        format!(
            "{} sm_{}{} {} SMs {:.0} GiB, driver CUDA {}.{}",
            info.name,
            info.compute_capability.0,
            info.compute_capability.1,
            info.multiprocessors,
            info.total_mem as f64 / (1u64 << 30) as f64,
            info.driver_version.0,
            info.driver_version.1
        ),
        true,
    ));
    let t0 = Instant::now();
    let backend = match CudaBackend::new(CudaConfig {
        ordinal: args.ordinal,
        ptx_cache_dir: args.ptx_cache.clone(),
    })
    .and_then(|b| b.preload().map(|()| b))
    {
        Ok(b) => b,
        Err(e) => {
            rows.push(Row::new("backend", format!("failed: {e}"), false));
            return rows;
        }
    };
    let stats = backend.cache_stats();
    rows.push(Row::new(
        "kernels compiled",
        format!("{:.2} s ({stats:?})", t0.elapsed().as_secs_f64()),
        true,
    ));
    kernel_rows(&backend, args.seed, &mut rows);
    let base = baselines(&backend, &mut rows);
    nccl_row(args.ordinal, &mut rows);
    model::compare_cpu_gpu(&backend, args.seed, &mut rows);
    if !args.skip_8b {
        model::time_llama3_8b(&backend, args, base, &mut rows);
    }
    rows
}

fn kernel_rows(b: &CudaBackend, seed: u64, rows: &mut Vec<Row>) {
    for c in cuda::run_kernel_checks(b, seed) {
        let result = format!(
            "max rel err {:.2e}{} {}",
            c.max_rel_err,
            if c.has_nan { ", NaN/unwritten" } else { "" },
            c.detail
        );
        rows.push(Row::new(format!("kernel {}", c.name), result, c.passed));
    }
}

fn baselines(b: &CudaBackend, rows: &mut Vec<Row>) -> Baselines {
    let mut base = Baselines::default();
    match cuda::copy_bandwidth(b, 2 << 30) {
        Ok(gbs) => {
            base.copy_gbs = gbs;
            rows.push(Row::new(
                "d2d copy 2 GiB",
                format!("{gbs:.0} GB/s (read+write)"),
                true,
            ));
        }
        Err(e) => rows.push(Row::new("d2d copy", format!("failed: {e}"), false)),
    }
    match cuda::gemm_tflops(b, 8192, 8192, 8192) {
        Ok(t) => {
            base.gemm_tflops = t;
            rows.push(Row::new(
                "cuBLAS bf16 8192^3",
                format!("{t:.0} TFLOP/s"),
                true,
            ));
        }
        Err(e) => rows.push(Row::new("cuBLAS GEMM", format!("failed: {e}"), false)),
    }
    base
}

fn nccl_row(ordinal: usize, rows: &mut Vec<Row>) {
    use weft_model::comm::nccl;
    match nccl::selfcheck_world_size_one(ordinal, Duration::from_secs(60)) {
        Ok(s) => rows.push(Row::new(
            "NCCL all-reduce (world 1)",
            format!(
                "{} elements f32 {} us, bf16 {} us, NCCL {}{}",
                s.elements,
                s.micros,
                s.bf16_micros,
                s.nccl_version,
                if s.failures.is_empty() {
                    String::new()
                } else {
                    format!(", failures: {}", s.failures.join("; "))
                }
            ),
            s.ok,
        )),
        Err(e) => rows.push(Row::new(
            "NCCL all-reduce (world 1)",
            format!("failed: {e}"),
            false,
        )),
    }
}

/// Prints the table; returns whether every row passed.
pub fn print_table(rows: &[Row]) -> bool {
    let width = rows.iter().map(|r| r.stage.len()).max().unwrap_or(5);
    println!();
    println!("| {:width$} | ok | result |", "stage");
    println!("|{}|----|--------|", "-".repeat(width + 2));
    for r in rows {
        let ok = if r.ok { "yes" } else { "NO" };
        println!("| {:width$} | {ok:3}| {} |", r.stage, r.result);
    }
    rows.iter().all(|r| r.ok)
}
