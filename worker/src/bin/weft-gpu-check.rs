//! Checks and times weft's CUDA backend on one GPU; see
//! `scripts/gpu-check.sh`. Exits 0 only when every stage passed.
//! `weft-gpu-check write-serve-fixture DIR` writes the inputs of the
//! script's serving stage instead.

use clap::Parser;
use weft_worker::gpu_check::{print_table, run, serve_fixture, GpuCheckArgs, GpuCheckCommand};

fn main() {
    let args = GpuCheckArgs::parse();
    if let Some(GpuCheckCommand::WriteServeFixture { dir }) = &args.command {
        match serve_fixture::write(dir) {
            Ok(f) => println!("{}", serve_fixture::describe(&f)),
            Err(e) => {
                eprintln!("weft-gpu-check write-serve-fixture: {e:#}");
                std::process::exit(1);
            }
        }
        return;
    }
    let rows = run(&args);
    let ok = print_table(&rows);
    std::process::exit(if ok { 0 } else { 1 });
}
