//! A cluster spread over hosts (issue 7): four network namespaces on one bridge
//! stand for four hosts, the coordinator on the first and one worker of a
//! TP=3 SmolLM2 group on each of the others, every listener on its host's own
//! address. Each worker runs under a restart loop, as systemd or Kubernetes
//! would run it. With weft-load driving 32 concurrent streams, one worker is
//! SIGKILLed, and later a worker's host loses its link (its switch port goes
//! down: packets vanish silently). Each time: no request hangs, the requests
//! running into the failure end with UNAVAILABLE, the coordinator survives,
//! health goes NOT_SERVING, and once the worker is back the group serves again
//! within 10 s, with the same greedy outputs as before.
//!
//! The cut-off worker finds out by itself: it hears nothing from the
//! coordinator for `--coordinator-silence-s`, stops serving and exits, and its
//! restart loop brings it back to register with the re-formed group.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::load::{endings, http_status, load_at, recovered_after, u};
use common::netns::Hosts;
use common::{bin, model_path, parse_ready_line, signal, wait_until};
use serde_json::Value;

/// Seconds of silence after which a serving worker fences itself.
const SILENCE_S: &str = "8";

struct MultiHost {
    hosts: Hosts,
    coordinator: Child,
    /// The workers' restart loops.
    loops: Vec<Child>,
    grpc: SocketAddr,
    http: SocketAddr,
    ns0: String,
}

impl MultiHost {
    fn start(logs: &Path) -> MultiHost {
        let hosts = Hosts::new(4);
        let c = hosts.addr(0);
        let model = model_path();
        let log = std::fs::File::create(logs.join("coordinator.log")).expect("log file");
        let mut coordinator = hosts
            .command(0, &bin("weft-coordinator"))
            .args(["--model", model.to_str().expect("utf-8 path"), "--tp", "3"])
            .args(["--listen", &format!("{c}:50051")])
            .args(["--cluster-listen", &format!("{c}:50052")])
            .args(["--http-listen", &format!("{c}:8000")])
            .args(["--step-timeout-s", "5", "--collective-timeout-ms", "4000"])
            .args(["--recovery-wait-s", "40"])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the coordinator");
        let loops = (0..3)
            .map(|rank| start_worker(&hosts, rank, logs))
            .collect();
        let stdout = coordinator.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addrs) = parse_ready_line(&line) {
                    let _ = tx.send(addrs);
                }
            }
        });
        let (grpc, http) = rx
            .recv_timeout(Duration::from_secs(180))
            .expect("the cluster did not become ready within 180 s");
        let ns0 = hosts.name(0);
        MultiHost {
            hosts,
            coordinator,
            loops,
            grpc,
            http,
            ns0,
        }
    }

    fn load(&self, args: &[&str], json: &Path) -> (bool, Value, String) {
        load_at(Some(&self.ns0), self.grpc, args, json)
    }

    fn health(&self) -> Option<u16> {
        let http = self.http;
        self.hosts.run_in(0, move || http_status(http, "/health"))
    }

    fn worker_pid(&self, rank: usize) -> u32 {
        let pids = self.hosts.pids(rank + 1, "weft-worker");
        assert_eq!(pids.len(), 1, "rank {rank}: {pids:?}");
        pids[0]
    }
}

impl Drop for MultiHost {
    fn drop(&mut self) {
        // The loops first (no restart after), then what runs in the hosts.
        for c in self.loops.iter_mut().chain([&mut self.coordinator]) {
            signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// Rank `rank` on host `rank + 1`, restarted whenever it exits; returns the loop.
fn start_worker(hosts: &Hosts, rank: usize, logs: &Path) -> Child {
    let a = hosts.addr(rank + 1);
    let log = std::fs::File::create(logs.join(format!("worker{rank}.log"))).expect("log");
    hosts
        .command(rank + 1, Path::new("/bin/sh"))
        .arg("-c")
        .arg("while :; do \"$0\" \"$@\"; sleep 0.2; done")
        .arg(bin("weft-worker"))
        .args(["--coordinator", &format!("http://{}:50052", hosts.addr(0))])
        .args(["--rank", &rank.to_string(), "--threads", "1"])
        .args(["--listen", &format!("{a}:50061")])
        .args(["--comm-listen", &format!("{a}:50062")])
        .args(["--coordinator-silence-s", SILENCE_S])
        .args(["--register-timeout-s", "600"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start a worker loop")
}

/// Polls the cluster's health every 50 ms while `f` runs; returns `f`'s result and
/// whether health ever said anything but 200 meanwhile.
fn watching_health<T>(m: &MultiHost, f: impl FnOnce() -> T) -> (T, bool) {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, http) = (stop.clone(), m.http);
    let path = format!("/var/run/netns/{}", m.ns0);
    let watcher = std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("namespace");
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) for this thread only, on a namespace file we opened.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let mut down = false;
        while !flag.load(Ordering::Relaxed) {
            down |= http_status(http, "/health") != Some(200);
            std::thread::sleep(Duration::from_millis(50));
        }
        down
    });
    let r = f();
    stop.store(true, Ordering::Relaxed);
    (r, watcher.join().expect("health watcher"))
}

/// 96 requests of 16 tokens at concurrency 32, `fault` run one second in;
/// checks that nothing hung and that the failure reached requests as
/// UNAVAILABLE, with health saying so; returns the report.
fn under_load(m: &MultiHost, fault: &str, json: &Path) -> Value {
    let ((_, r, err), went_down) = watching_health(m, || {
        m.load(
            &[
                "--max-tokens",
                "16",
                "--requests",
                "96",
                "--concurrency",
                "32",
                "--fault-at-s",
                "1",
                "--fault-cmd",
                fault,
                "--max-duration-s",
                "50",
            ],
            json,
        )
    });
    let f = &r["fault"];
    assert_eq!(f["exit_code"], 0, "{f}\n{err}");
    let seen = endings(f);
    eprintln!("{fault}: endings {seen:?}, requests {}", r["requests"]);
    for e in &seen {
        assert!(
            e.ends_with("/ok") || e.ends_with("/grpc_Unavailable"),
            "{e} in {seen:?}"
        );
    }
    assert!(seen.contains("in_flight/grpc_Unavailable"), "{seen:?}");
    assert!(went_down, "health never reported the failure");
    assert!(common::alive(m.coordinator.id()), "the coordinator died");
    r
}

/// Seconds from `since` until a request succeeds again (at most 40).
fn serves_again(m: &MultiHost, since: Instant, dir: &Path) -> f64 {
    assert!(
        wait_until(Duration::from_secs(40), || m.health() == Some(200)),
        "health did not come back\n== coordinator\n{}\n== rank 0\n{}\n== rank 1\n{}\n== rank 2\n{}",
        tail(dir, "coordinator.log"),
        tail(dir, "worker0.log"),
        tail(dir, "worker1.log"),
        tail(dir, "worker2.log")
    );
    let took = since.elapsed().as_secs_f64();
    let (ok, r, err) = m.load(
        &["--max-tokens", "4", "--requests", "2"],
        &dir.join("probe.json"),
    );
    assert!(ok, "{err}\n{}", r["requests"]);
    took
}

fn check_outputs(m: &MultiHost, expected: &str, json: &Path) {
    let (ok, r, err) = m.load(
        &[
            "--dataset",
            "jsonl",
            "--dataset-path",
            expected,
            "--requests",
            "24",
            "--check",
        ],
        json,
    );
    assert!(ok, "{err}\n{}", r["correctness"]);
    assert_eq!(u(&r["correctness"]["matched"]), 24, "{}", r["correctness"]);
}

/// The last 40 lines of a log in `dir`.
fn tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn tp3_across_hosts_survives_a_killed_worker_and_a_lost_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = MultiHost::start(dir.path());
    assert_eq!(
        m.grpc.ip().to_string(),
        "10.77.0.1",
        "listens on its host's address"
    );
    assert_eq!(m.health(), Some(200));

    // Served across the hosts; the undisturbed outputs, for later.
    let expected = dir.path().join("expected.jsonl");
    let exp = expected.to_str().expect("utf-8").to_string();
    let (ok, r, err) = m.load(
        &[
            "--max-tokens",
            "16",
            "--requests",
            "12",
            "--record-expected",
            &exp,
        ],
        &dir.path().join("undisturbed.json"),
    );
    assert!(ok, "{err}\n{}", r["requests"]);
    assert_eq!(u(&r["requests"]["ok"]), 12);

    // A worker killed: its restart loop brings it back at once.
    let victim = m.worker_pid(1);
    let cmd = format!("kill -KILL {victim}");
    let r = under_load(&m, &cmd, &dir.path().join("kill.json"));
    let took = recovered_after(&r);
    eprintln!("SIGKILL: a request succeeded again {took:.1} s after the kill");
    assert!(
        took < 10.0,
        "{took:.1} s\n{}",
        tail(dir.path(), "coordinator.log")
    );
    assert_ne!(m.worker_pid(1), victim, "rank 1 is a new process");
    check_outputs(&m, &exp, &dir.path().join("after-kill.json"));

    // Host 3 (rank 2) loses its link; it comes back after the run.
    under_load(
        &m,
        &m.hosts.link_cmd(3, false),
        &dir.path().join("link.json"),
    );
    m.hosts.set_link(3, true);
    let back = Instant::now();
    let took = serves_again(&m, back, dir.path());
    eprintln!("link down: serving again {took:.1} s after the link came back");
    assert!(
        took < 10.0,
        "{took:.1} s\n{}",
        tail(dir.path(), "coordinator.log")
    );
    check_outputs(&m, &exp, &dir.path().join("after-link.json"));
    // The cut-off worker fenced itself, and a fresh process (its restart loop's)
    // registered for rank 2 afterwards.
    let log = std::fs::read_to_string(dir.path().join("worker2.log")).unwrap_or_default();
    let fenced = log.rfind("is cut off").expect("rank 2 never fenced itself");
    let rejoined = log
        .rfind("registered with the coordinator")
        .expect("registered");
    assert!(fenced < rejoined, "{}", tail(dir.path(), "worker2.log"));
}
