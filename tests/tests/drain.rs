//! Graceful drain: SIGTERM to the coordinator in the middle of a weft-load
//! run. Health goes NOT_SERVING first, nothing new is admitted, the
//! requests in flight finish within the grace period (or end UNAVAILABLE
//! when it runs out), and the coordinator exits 0 with its workers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::load::{http_status, load};
use common::{model_path, Cluster};
use serde_json::Value;

fn cluster(grace_s: &str) -> Cluster {
    let model = model_path();
    Cluster::start(&[
        "--model",
        model.to_str().expect("utf-8 path"),
        "--tp",
        "1",
        "--drain-grace-s",
        grace_s,
    ])
}

/// Runs `requests` of `tokens` at concurrency 4, SIGTERM to the coordinator
/// one second in; returns the report and whether `/health` answered 503
/// at some point (it must say NOT_SERVING before the server closes).
fn run_with_sigterm(cluster: &Cluster, tokens: &str, dir: &std::path::Path) -> (Value, bool) {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = cluster.http_addr;
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut saw_503 = false;
            while !stop.load(Ordering::Relaxed) {
                saw_503 |= http_status(addr, "/health") == Some(503);
                std::thread::sleep(Duration::from_millis(20));
            }
            saw_503
        })
    };
    let term = format!("kill -TERM {}", cluster.pid());
    let (_, r, err) = load(
        cluster,
        &[
            "--max-tokens",
            tokens,
            "--requests",
            "12",
            "--concurrency",
            "4",
            "--fault-at-s",
            "1",
            "--fault-cmd",
            &term,
            "--max-duration-s",
            "40",
        ],
        &dir.join(format!("drain-{tokens}.json")),
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(r["fault"]["exit_code"], 0, "{}\n{err}", r["fault"]);
    (r, watcher.join().expect("watcher"))
}

/// Waits for the coordinator to exit; returns whether it exited 0.
fn exit_ok(cluster: &mut Cluster) -> bool {
    let t0 = Instant::now();
    loop {
        if let Some(st) = cluster.child.try_wait().expect("wait") {
            return st.success();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn group(r: &Value, relation: &str) -> serde_json::Map<String, Value> {
    r["fault"]["endings"][relation]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Grace enough: the four requests in flight finish; later ones are
    // refused (UNAVAILABLE) rather than started.
    let mut c = cluster("30");
    let workers = common::children_of(c.pid());
    let (r, saw_503) = run_with_sigterm(&c, "48", dir.path());
    let in_flight = group(&r, "in_flight");
    assert_eq!(
        in_flight.keys().collect::<Vec<_>>(),
        ["ok"],
        "{in_flight:?}"
    );
    assert_eq!(in_flight["ok"], 4);
    let after = group(&r, "sent_after");
    assert!(after.keys().all(|k| k == "grpc_Unavailable"), "{after:?}");
    assert!(saw_503, "health never said NOT_SERVING before closing");
    assert!(exit_ok(&mut c), "coordinator exit status");
    assert!(
        common::wait_until(Duration::from_secs(10), || workers
            .iter()
            .all(|&w| !common::alive(w))),
        "workers outlived the coordinator"
    );

    // Grace too short for 600 tokens: the requests in flight end
    // UNAVAILABLE (retry elsewhere) when it runs out, and the coordinator
    // still exits 0.
    let mut c = cluster("1");
    let (r, _) = run_with_sigterm(&c, "600", dir.path());
    let in_flight = group(&r, "in_flight");
    assert_eq!(
        in_flight.keys().collect::<Vec<_>>(),
        ["grpc_Unavailable"],
        "{in_flight:?}"
    );
    let example = r["requests"]["error_examples"]["grpc_Unavailable"]
        .as_str()
        .unwrap_or_default();
    assert!(example.contains("shut down"), "{example}");
    let fault_s = r["fault"]["started_s"].as_f64().expect("fault time");
    for e in r["request_log"].as_array().expect("log") {
        if let Some(end) = e["ended_s"].as_f64() {
            assert!(
                end - fault_s < 6.0,
                "a request ended {:.1} s after SIGTERM",
                end - fault_s
            );
        }
    }
    assert!(exit_ok(&mut c), "coordinator exit status");
}
