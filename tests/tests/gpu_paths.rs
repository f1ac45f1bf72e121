//! The GPU paths as a machine without a GPU sees them: asking for a CUDA
//! device fails fast with a clear error (never a panic or a hang), and the
//! tensor-parallel plan of a full Llama-3-70B shape is right. The GPU itself
//! is exercised by `scripts/gpu-check.sh` on a GPU machine.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, model_path};
use weft_model::llama::LocalDims;
use weft_model::shard::{PlanError, ShardPlan};
use weft_model::synthetic::SyntheticSpec;

fn has_gpu() -> bool {
    std::path::Path::new("/dev/nvidia0").exists()
}

/// Runs `cmd` to completion (at most 60 s); returns (success, stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (
                status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{cmd:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_worker_asked_for_cuda_without_a_gpu_exits_with_a_clear_error() {
    if has_gpu() {
        println!("SKIPPED: this machine has a GPU");
        return;
    }
    let (ok, stderr) = run(Command::new(bin("weft-worker")).args([
        "--coordinator",
        "http://127.0.0.1:9",
        "--rank",
        "0",
        "--device",
        "cuda:0",
    ]));
    assert!(!ok, "the worker accepted cuda:0 without a GPU");
    assert!(stderr.contains("--device cuda:0"), "{stderr}");
    let lower = stderr.to_lowercase();
    assert!(lower.contains("cuda"), "{stderr}");
    assert!(!lower.contains("panicked"), "{stderr}");
}

#[test]
fn a_coordinator_with_cuda_workers_and_no_gpu_fails_startup_cleanly() {
    if has_gpu() {
        println!("SKIPPED: this machine has a GPU");
        return;
    }
    let (ok, stderr) = run(Command::new(bin("weft-coordinator")).args([
        "--model",
        &model_path().display().to_string(),
        "--tp",
        "1",
        "--local-workers",
        "--worker-device",
        "cuda:0",
        "--worker-bin",
        &bin("weft-worker").display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--cluster-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]));
    assert!(!ok, "the coordinator served without its worker");
    assert!(stderr.contains("local worker 0 exited"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("panicked"), "{stderr}");
}

#[test]
fn llama3_70b_shape_plans_for_8_gpus_and_refuses_16() {
    let cfg = SyntheticSpec::llama3_70b().config();
    assert_eq!(
        (cfg.hidden_size, cfg.num_layers, cfg.head_dim),
        (8192, 80, 128)
    );
    for tp in [1, 2, 4, 8] {
        ShardPlan::new(&cfg, tp, &[]).unwrap_or_else(|e| panic!("tp={tp}: {e}"));
        let d = LocalDims::new(&cfg, tp - 1, tp);
        assert_eq!(d.heads * tp, 64);
        assert_eq!(d.kv_heads * tp, 8);
        assert_eq!(d.intermediate * tp, 28672);
        assert_eq!(
            d.vocab_start + d.vocab,
            128_256,
            "the last rank ends the vocabulary"
        );
    }
    match ShardPlan::new(&cfg, 16, &[]) {
        Err(e @ PlanError::NotDivisible { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("num_kv_heads"), "{msg}");
            assert!(msg.contains("1, 2, 4, 8"), "{msg}");
        }
        other => panic!("tp=16 should be refused, got {other:?}"),
    }
}
