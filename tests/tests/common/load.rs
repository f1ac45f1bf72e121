//! Running `weft-load` against a test cluster.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Cluster;

/// Runs weft-load against `cluster`'s gRPC API with `args`; returns its
/// exit success, its JSON report and its standard error. Every run is
/// expected to end within a minute.
pub fn load(cluster: &Cluster, args: &[&str], json: &Path) -> (bool, Value, String) {
    load_at(None, cluster.client_addr, args, json)
}

/// [`load`] against the gRPC API at `addr`, run inside the network namespace `netns`
/// (`ip netns exec`) when given.
pub fn load_at(
    netns: Option<&str>,
    addr: std::net::SocketAddr,
    args: &[&str],
    json: &Path,
) -> (bool, Value, String) {
    let target = format!("grpc://{addr}");
    let started = Instant::now();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(super::bin("weft-load"));
            // A host's own address, not loopback.
            c.arg("--allow-remote");
            c
        }
        None => Command::new(super::bin("weft-load")),
    };
    let out = cmd
        .args(["--target", &target, "--no-progress", "--json"])
        .arg(json)
        .args(args)
        .output()
        .expect("run weft-load");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text =
        std::fs::read_to_string(json).unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
    let report = serde_json::from_str(&text).expect("report is JSON");
    (out.status.success(), report, stderr)
}

/// A count in a report.
pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The HTTP status of `GET path` on `addr`, if it answers.
pub fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The endings weft-load reports, as "relation/ending" strings.
pub fn endings(fault: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (relation, group) in fault["endings"].as_object().expect("endings") {
        for ending in group.as_object().expect("group").keys() {
            out.insert(format!("{relation}/{ending}"));
        }
    }
    out
}

/// When the first request sent after the fault succeeded, in seconds
/// after the fault.
pub fn recovered_after(r: &Value) -> f64 {
    let fault_s = r["fault"]["started_s"].as_f64().expect("fault time");
    r["request_log"]
        .as_array()
        .expect("log")
        .iter()
        .filter(|e| e["ending"] == "ok" && e["sent_s"].as_f64() >= Some(fault_s))
        .filter_map(|e| e["ended_s"].as_f64())
        .fold(f64::INFINITY, f64::min)
        - fault_s
}

/// When the first request sent after the fault got its first token, in seconds
/// after the fault: when the group served again.
pub fn first_token_after(r: &Value) -> f64 {
    let fault_s = r["fault"]["started_s"].as_f64().expect("fault time");
    r["request_log"]
        .as_array()
        .expect("log")
        .iter()
        .filter(|e| e["sent_s"].as_f64() >= Some(fault_s))
        .filter_map(|e| Some(e["sent_s"].as_f64()? + e["ttft_ms"].as_f64()? / 1000.0))
        .fold(f64::INFINITY, f64::min)
        - fault_s
}
