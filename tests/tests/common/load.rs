//! Running `weft-load` against a test cluster.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Cluster;

/// Runs weft-load against `cluster`'s gRPC API with `args`; returns its
/// exit success, its JSON report and its standard error. Every run is
/// expected to end within a minute.
pub fn load(cluster: &Cluster, args: &[&str], json: &Path) -> (bool, Value, String) {
    let target = format!("grpc://{}", cluster.client_addr);
    let started = Instant::now();
    let out = Command::new(super::bin("weft-load"))
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
