//! A cluster spread over hosts (issue 7): five network namespaces on one bridge
//! stand for five hosts: the coordinator on the first, one worker of a TP=3
//! SmolLM2 group on each of the next three, and etcd on the last, every
//! listener on its host's own address. Everything inside is mutual TLS: the
//! cluster API, the collective between the ranks, and every client of etcd
//! (certificates from scripts/make-test-certs.sh). The workers claim their ranks in etcd under a
//! 3 s lease. Each worker runs under a restart loop, as systemd or Kubernetes
//! would run it.
//!
//! With weft-load driving 32 concurrent streams, one after the other: a worker
//! is SIGKILLed; a worker is SIGSTOPped for 6 s; a worker's host loses its link
//! (its switch port goes down: packets vanish silently); etcd is SIGSTOPped for
//! 5 s. Each time: no request hangs, the requests running into the failure end
//! with UNAVAILABLE, the coordinator survives, health goes NOT_SERVING, and once
//! the worker (or etcd) is back the group serves again within 10 s, with the
//! same greedy outputs as before.
//!
//! A cut-off or stopped worker finds out by itself: its lease lapses (or it
//! hears nothing from the coordinator for `--coordinator-silence-s`), it stops
//! serving and exits, and its restart loop brings it back to claim its rank and
//! register with the re-formed group. A worker whose etcd client certificate
//! another CA signed, or that has none, cannot claim a rank.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::load::{endings, first_token_after, http_status, load_at, recovered_after, u};
use common::netns::Hosts;
use common::{bin, model_path, parse_ready_line, signal, wait_until};
use serde_json::Value;

/// Seconds of silence after which a serving worker fences itself.
const SILENCE_S: &str = "8";
/// The ranks' lease in etcd, in seconds.
const LEASE_TTL_S: &str = "3";
/// The host etcd runs on.
const ETCD_HOST: usize = 4;

struct MultiHost {
    hosts: Hosts,
    etcd: Child,
    coordinator: Child,
    /// The workers' restart loops.
    loops: Vec<Child>,
    grpc: SocketAddr,
    http: SocketAddr,
    ns0: String,
    /// The test PKI's folder.
    pki: PathBuf,
}

/// `--tls-*` with `name`'s certificate from the PKI in `pki`.
fn tls_args(pki: &Path, name: &str) -> Vec<String> {
    let p = |f: String| pki.join(f).display().to_string();
    vec![
        "--tls-cert".into(),
        p(format!("{name}.pem")),
        "--tls-key".into(),
        p(format!("{name}.key")),
        "--tls-ca".into(),
        p("ca.pem".into()),
    ]
}

/// `--etcd-*`: etcd on its host over mutual TLS, as `name` (`None`: no client
/// certificate).
fn etcd_args(hosts: &Hosts, pki: &Path, name: Option<&str>) -> Vec<String> {
    let p = |f: String| pki.join(f).display().to_string();
    let mut args = vec![
        "--etcd-endpoints".into(),
        format!("https://{}:2379", hosts.addr(ETCD_HOST)),
        "--etcd-prefix".into(),
        "/weft/multihost".into(),
        "--etcd-lease-ttl-s".into(),
        LEASE_TTL_S.into(),
        "--etcd-ca".into(),
        p("ca.pem".into()),
    ];
    if let Some(n) = name {
        args.extend([
            "--etcd-cert".into(),
            p(format!("{n}.pem")),
            "--etcd-key".into(),
            p(format!("{n}.key")),
        ]);
    }
    args
}

/// etcd on its host, serving clients over mutual TLS only; waits until it listens.
fn start_etcd(hosts: &Hosts, pki: &Path, dir: &Path) -> Child {
    let a = hosts.addr(ETCD_HOST);
    let client = format!("https://{a}:2379");
    let peer = "http://127.0.0.1:2380";
    let p = |f: &str| pki.join(f).display().to_string();
    let log = std::fs::File::create(dir.join("etcd.log")).expect("log file");
    let child = hosts
        .command(ETCD_HOST, Path::new("etcd"))
        .arg("--name=e")
        .arg(format!("--data-dir={}", dir.join("etcd-data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=e={peer}"))
        .arg(format!("--cert-file={}", p("etcd.pem")))
        .arg(format!("--key-file={}", p("etcd.key")))
        .arg(format!("--trusted-ca-file={}", p("ca.pem")))
        .args(["--client-cert-auth", "--log-level=warn"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start etcd (scripts/system-deps.sh installs it)");
    let addr: SocketAddr = format!("{a}:2379").parse().expect("address");
    let up = hosts.run_in(ETCD_HOST, move || {
        wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
    });
    assert!(
        up,
        "etcd did not listen within 20 s\n{}",
        tail(dir, "etcd.log")
    );
    child
}

impl MultiHost {
    fn start(logs: &Path) -> MultiHost {
        let hosts = Hosts::new(5);
        let san: Vec<String> = (0..5).map(|i| format!("IP:{}", hosts.addr(i))).collect();
        let pki = common::test_certs(&logs.join("pki"), Some(&san.join(",")));
        let etcd = start_etcd(&hosts, &pki, logs);
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
            .args(tls_args(&pki, "coordinator"))
            .args(etcd_args(&hosts, &pki, Some("coordinator")))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the coordinator");
        let loops = (0..3)
            .map(|rank| start_worker(&hosts, &pki, rank, logs))
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
            etcd,
            coordinator,
            loops,
            grpc,
            http,
            ns0,
            pki,
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
        let last = [&mut self.coordinator, &mut self.etcd];
        for c in self.loops.iter_mut().chain(last) {
            signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// The flags of rank `rank`'s worker on host `rank + 1` but for etcd's: the
/// cluster's worker certificate, pinning the coordinator's.
fn worker_args(hosts: &Hosts, pki: &Path, rank: usize) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--coordinator".into(),
        format!("https://{}:50052", hosts.addr(0)),
        "--rank".into(),
        rank.to_string(),
        "--threads".into(),
        "1".into(),
        "--coordinator-cert".into(),
        pki.join("coordinator.pem").display().to_string(),
    ];
    args.extend(tls_args(pki, "worker"));
    args
}

/// Rank `rank` on host `rank + 1`, restarted whenever it exits; returns the loop.
fn start_worker(hosts: &Hosts, pki: &Path, rank: usize, logs: &Path) -> Child {
    let a = hosts.addr(rank + 1);
    let log = std::fs::File::create(logs.join(format!("worker{rank}.log"))).expect("log");
    hosts
        .command(rank + 1, Path::new("/bin/sh"))
        .arg("-c")
        .arg("while :; do \"$0\" \"$@\"; sleep 0.2; done")
        .arg(bin("weft-worker"))
        .args(worker_args(hosts, pki, rank))
        .args(["--listen", &format!("{a}:50061")])
        .args(["--comm-listen", &format!("{a}:50062")])
        .args(["--coordinator-silence-s", SILENCE_S])
        .args(["--register-timeout-s", "600"])
        .args(etcd_args(hosts, pki, Some("worker")))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start a worker loop")
}

/// A second worker for rank 0 whose etcd client certificate is `etcd_cert`'s
/// (`None`: none) must fail to claim the rank and exit; returns its stderr.
fn claim_refused(m: &MultiHost, etcd_cert: Option<&str>) -> String {
    let a = m.hosts.addr(1);
    let mut child = m
        .hosts
        .command(1, &bin("weft-worker"))
        .args(worker_args(&m.hosts, &m.pki, 0))
        .args(["--listen", &format!("{a}:50071")])
        .args(["--comm-listen", &format!("{a}:50072")])
        .args(etcd_args(&m.hosts, &m.pki, etcd_cert))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker");
    let exited = wait_until(Duration::from_secs(30), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !exited {
        signal(child.id(), libc::SIGKILL);
    }
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        exited,
        "a worker with etcd certificate {etcd_cert:?} kept running"
    );
    assert!(!out.status.success(), "{err}");
    err
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

/// Serves 12 requests across the hosts and records their outputs, for later.
fn record_expected(m: &MultiHost, dir: &Path) -> String {
    let expected = dir.join("expected.jsonl");
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
        &dir.join("undisturbed.json"),
    );
    assert!(ok, "{err}\n{}", r["requests"]);
    assert_eq!(u(&r["requests"]["ok"]), 12);
    exp
}

/// Workers whose etcd client certificate another CA signed, or that have none,
/// cannot claim a rank (their cluster certificate is fine); the group goes on.
fn etcd_admits_only_certified_workers(m: &MultiHost) {
    let holder = m.worker_pid(0);
    for cert in [Some("rogue"), None] {
        let err = claim_refused(m, cert);
        let why = err.lines().find(|l| l.contains("etcd")).unwrap_or_default();
        eprintln!("etcd client certificate {cert:?}: {why}");
        assert!(err.contains("etcd"), "{err}");
        assert!(!err.contains("already registered"), "{err}");
    }
    assert_eq!(m.worker_pid(0), holder, "rank 0's worker was disturbed");
    assert_eq!(m.health(), Some(200));
}

/// `fault` under load, then: serving again (a first token) within 10 s of
/// `back_after_s` seconds after the fault began, with the undisturbed outputs.
fn heals(m: &MultiHost, what: &str, fault: &str, back_after_s: f64, exp: &str, dir: &Path) {
    let r = under_load(m, fault, &dir.join(format!("{what}.json")));
    let first = first_token_after(&r) - back_after_s;
    let done = recovered_after(&r) - back_after_s;
    eprintln!(
        "{what}: {first:.1} s after the fault ended a first token, {done:.1} s a whole request"
    );
    assert!(
        first < 10.0,
        "{first:.1} s\n{}",
        tail(dir, "coordinator.log")
    );
    check_outputs(m, exp, &dir.join(format!("after-{what}.json")));
}

fn lost_link(m: &MultiHost, exp: &str, dir: &Path) {
    // Host 3 (rank 2) loses its link; it comes back after the run.
    under_load(m, &m.hosts.link_cmd(3, false), &dir.join("link.json"));
    m.hosts.set_link(3, true);
    let took = serves_again(m, Instant::now(), dir);
    eprintln!("link down: serving again {took:.1} s after the link came back");
    assert!(took < 10.0, "{took:.1} s\n{}", tail(dir, "coordinator.log"));
    check_outputs(m, exp, &dir.join("after-link.json"));
    // The cut-off worker fenced itself (its lease lapsed, or the coordinator fell
    // silent), and a fresh process (its restart loop's) registered for rank 2
    // afterwards.
    let log = std::fs::read_to_string(dir.join("worker2.log")).unwrap_or_default();
    let fenced = ["is cut off", "lease in etcd lapsed"]
        .iter()
        .filter_map(|s| log.rfind(s))
        .max()
        .expect("rank 2 never fenced itself");
    let rejoined = log
        .rfind("registered with the coordinator")
        .expect("registered");
    assert!(fenced < rejoined, "{}", tail(dir, "worker2.log"));
}

#[test]
fn tp3_across_hosts_heals_after_kill_stall_lost_link_and_stopped_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let m = MultiHost::start(d);
    assert_eq!(
        m.grpc.ip().to_string(),
        "10.77.0.1",
        "listens on its host's address"
    );
    assert_eq!(m.health(), Some(200));
    for rank in 0..3 {
        let log = std::fs::read_to_string(d.join(format!("worker{rank}.log"))).expect("log");
        let formed = log
            .lines()
            .find(|l| l.contains("tcp communicator connected"));
        assert!(
            formed.is_some_and(|l| l.contains("tls=true")),
            "rank {rank}: the collective is not TLS: {formed:?}"
        );
    }
    etcd_admits_only_certified_workers(&m);
    let exp = record_expected(&m, d);

    // A worker killed: its restart loop brings it back at once.
    let victim = m.worker_pid(1);
    heals(&m, "kill", &format!("kill -KILL {victim}"), 0.0, &exp, d);
    assert_ne!(m.worker_pid(1), victim, "rank 1 is a new process");

    // A worker stalled for 6 s: its lease lapses meanwhile, so when it wakes it
    // fences itself and its restart loop brings a fresh one.
    let victim = m.worker_pid(0);
    let stall = format!("kill -STOP {victim}; sleep 6; kill -CONT {victim}");
    heals(&m, "stall", &stall, 6.0, &exp, d);

    lost_link(&m, &exp, d);

    // etcd stalled for 5 s: every lease lapses, every worker fences itself, and
    // the restarted workers claim their ranks again once etcd answers.
    let e = m.etcd.id();
    let stop = format!("kill -STOP {e}; sleep 5; kill -CONT {e}");
    heals(&m, "etcd", &stop, 5.0, &exp, d);
}
