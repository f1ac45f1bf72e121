//! `weft-load` against a real local cluster (SmolLM2, TP=3): a bounded run
//! with exact token counts and no error, correctness under load against
//! outputs recorded one request at a time, and a worker killed mid-run.

mod common;

use std::process::Command;

use common::load::{load, u};
use common::{children_of, model_path, Cluster};
use serde_json::Value;

fn cluster() -> Cluster {
    let model = model_path();
    Cluster::start(&["--model", model.to_str().expect("utf-8 path"), "--tp", "3"])
}

#[test]
fn bounded_runs_count_tokens_and_find_no_mismatch_under_load() {
    let cluster = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let model = model_path();

    // Random token-id prompts of exactly 32 tokens, 8 output tokens each.
    let (ok, r, err) = load(
        &cluster,
        &[
            "--dataset",
            "random",
            "--tokenizer",
            model.to_str().expect("utf-8"),
            "--random-input-len",
            "32",
            "--max-tokens",
            "8",
            "--requests",
            "24",
            "--warmup",
            "2",
            "--concurrency",
            "6",
            "--max-duration-s",
            "50",
        ],
        &dir.path().join("random.json"),
    );
    assert!(ok, "{err}");
    let req = &r["requests"];
    assert_eq!((u(&req["ok"]), u(&req["failed"])), (24, 0), "{r}");
    assert_eq!((u(&req["cancelled"]), u(&req["not_started"])), (0, 0));
    assert_eq!(u(&r["output_tokens"]), 24 * 8);
    assert_eq!(u(&r["output_tokens_requested"]), 24 * 8);
    assert_eq!(u(&r["input_tokens"]), 24 * 32);
    assert_eq!(r["schema"], "weft-load/v2");
    assert!(r["tpot_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0));

    // Expected outputs recorded one request at a time (batch of one) ...
    let expected = dir.path().join("expected.jsonl");
    let expected_path = expected.display().to_string();
    let (ok, _, err) = load(
        &cluster,
        &[
            "--max-tokens",
            "12",
            "--requests",
            "12",
            "--concurrency",
            "1",
            "--record-expected",
            &expected_path,
        ],
        &dir.path().join("record.json"),
    );
    assert!(ok, "{err}");
    let lines = std::fs::read_to_string(&expected).expect("expectations");
    assert_eq!(lines.lines().count(), 12);

    // ... hold under load: 36 requests, 9 at a time, batched together.
    let check = |path: &str, name: &str| {
        load(
            &cluster,
            &[
                "--dataset",
                "jsonl",
                "--dataset-path",
                path,
                "--check",
                "--requests",
                "36",
                "--concurrency",
                "9",
            ],
            &dir.path().join(name),
        )
    };
    let (ok, r, err) = check(&expected_path, "check.json");
    assert!(ok, "{err}\n{r}");
    let c = &r["correctness"];
    assert_eq!(u(&c["checked"]), 36, "{c}");
    assert_eq!(u(&c["matched"]), 36, "{c}");
    assert_eq!(u(&c["mismatched"]) + u(&c["lost"]) + u(&c["duplicated"]), 0);

    // The check can fail: one expected token changed is found and reported.
    let mut tampered: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    let first = &mut tampered[0]["expected_ids"][3];
    *first = Value::from(u(first) + 1);
    let bad = dir.path().join("tampered.jsonl");
    let text: Vec<String> = tampered.iter().map(Value::to_string).collect();
    std::fs::write(&bad, text.join("\n")).expect("write");
    let (ok, r, _) = check(&bad.display().to_string(), "tampered.json");
    assert!(!ok, "a mismatch must fail the run");
    let c = &r["correctness"];
    // Request indices 0, 12 and 24 use the tampered prompt.
    assert_eq!(u(&c["mismatched"]), 3, "{c}");
    let finding = &c["findings"][0];
    assert_eq!(
        (finding["kind"].as_str(), u(&finding["position"])),
        (Some("mismatch"), 3)
    );
}

#[test]
fn fault_injection_reports_how_every_request_ended() {
    let cluster = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let workers = children_of(cluster.pid());
    assert_eq!(workers.len(), 3, "{workers:?}");
    let kill = format!("kill -9 {}", workers[1]);
    let (_, r, err) = load(
        &cluster,
        &[
            "--max-tokens",
            "24",
            "--requests",
            "30",
            "--concurrency",
            "3",
            "--fault-at-s",
            "1.5",
            "--fault-cmd",
            &kill,
            "--max-duration-s",
            "40",
        ],
        &dir.path().join("fault.json"),
    );
    let fault = &r["fault"];
    assert_eq!(fault["exit_code"], 0, "{fault}\n{err}");
    assert!(fault["started_s"].as_f64().is_some_and(|s| s >= 1.5));
    // Every request has exactly one ending, in the log and in the groups.
    let log = r["request_log"].as_array().expect("request log");
    assert_eq!(log.len(), 30);
    let grouped: u64 = fault["endings"]
        .as_object()
        .expect("endings")
        .values()
        .flat_map(|g| g.as_object().expect("group").values().map(u))
        .sum();
    assert_eq!(grouped, 30, "{fault}");
    // Requests running into the dead rank fail with UNAVAILABLE rather
    // than hang until the run's deadline.
    let unavailable = u(&r["requests"]["errors"]["grpc_Unavailable"]);
    assert!(unavailable >= 1, "{}", r["requests"]);
    assert_eq!(u(&r["requests"]["cancelled"]), 0, "{}", r["requests"]);
    // Requests sent after the fault wait for the group to heal
    // (tests/tests/recovery.rs) or fail fast: none is left hanging.
    let ended: Vec<f64> = log.iter().filter_map(|e| e["ended_s"].as_f64()).collect();
    assert!(ended.iter().all(|&t| t < 30.0), "{ended:?}");
}

#[test]
fn remote_targets_are_refused_without_allow_remote() {
    let out = Command::new(common::bin("weft-load"))
        .args(["--target", "grpc://192.0.2.10:50051", "--requests", "1"])
        .output()
        .expect("run weft-load");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not loopback") && stderr.contains("--allow-remote"),
        "{stderr}"
    );
    // With the flag the target is accepted; nothing listens there (a
    // documentation-only address), so the connection fails instead.
    let out = Command::new(common::bin("weft-load"))
        .args([
            "--target",
            "http://192.0.2.10:9",
            "--allow-remote",
            "--model",
            "m",
        ])
        .args(["--requests", "1", "--max-duration-s", "3", "--no-progress"])
        .output()
        .expect("run weft-load");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("not loopback"), "{stderr}");
}
