//! Checks and times weft's CUDA backend on one GPU; see
//! `scripts/gpu-check.sh`. Exits 0 only when every stage passed.

use clap::Parser;
use weft_worker::gpu_check::{print_table, run, GpuCheckArgs};

fn main() {
    let args = GpuCheckArgs::parse();
    let rows = run(&args);
    let ok = print_table(&rows);
    std::process::exit(if ok { 0 } else { 1 });
}
