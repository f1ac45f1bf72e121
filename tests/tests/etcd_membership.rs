//! Workers claim their rank in a real etcd (`--etcd-endpoints`, issue 7): two
//! workers cannot hold one rank, and a worker whose lease lapses (etcd stops
//! answering) fences itself: it stops serving and exits, so that its
//! supervisor restarts it. Needs the `etcd` server binary (scripts/system-deps.sh)
//! and workers built with the `etcd` feature (scripts/test.sh builds with all
//! features).

mod common;
#[path = "../../membership/tests/common/mod.rs"]
mod etcd;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bin;

const PREFIX: &str = "/weft/etcd-test";

/// A worker claiming `rank` through etcd at `endpoint` (lease TTL 2 s), pointed at a
/// coordinator that does not exist (it keeps trying to register meanwhile).
fn worker(endpoint: &str, rank: u32) -> Child {
    Command::new(bin("weft-worker"))
        .args([
            "--coordinator",
            "http://127.0.0.1:9",
            "--rank",
            &rank.to_string(),
        ])
        .args(["--listen", "127.0.0.1:0", "--comm-listen", "127.0.0.1:0"])
        .args(["--etcd-endpoints", endpoint, "--etcd-prefix", PREFIX])
        .args(["--etcd-lease-ttl-s", "2", "--register-timeout-s", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weft-worker")
}

/// Waits up to `limit` for `child` to exit; returns its exit code and stderr.
fn exited(child: &mut Child, limit: Duration) -> Option<(Option<i32>, String)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut err);
            }
            return Some((status.code(), err));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

async fn key_exists(server: &etcd::EtcdServer, rank: u32) -> bool {
    let client = server.client().await;
    etcd::key_exists(&client, &format!("{PREFIX}/ranks/{rank}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rank_has_one_holder_and_a_lapsed_lease_fences_the_worker() {
    let mut server = etcd::EtcdServer::start().await;
    let endpoint = server.endpoint();
    let mut a = worker(&endpoint, 0);
    etcd::wait_until("rank 0 claimed", Duration::from_secs(20), || {
        key_exists(&server, 0)
    })
    .await;

    // A second worker for rank 0 is refused, naming the holder.
    let mut b = worker(&endpoint, 0);
    let (code, err) = exited(&mut b, Duration::from_secs(20)).expect("the second claim exits");
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("rank 0 is already registered"), "{err}");
    assert!(
        a.try_wait().expect("try_wait").is_none(),
        "the holder must go on"
    );

    // Another rank is free.
    let mut c = worker(&endpoint, 1);
    etcd::wait_until("rank 1 claimed", Duration::from_secs(20), || {
        key_exists(&server, 1)
    })
    .await;

    // etcd stops answering: within the TTL (2 s) plus a margin both workers fence
    // themselves and exit.
    server.pause();
    let since = Instant::now();
    for (name, w) in [("rank 0", &mut a), ("rank 1", &mut c)] {
        let (code, err) = exited(w, Duration::from_secs(6))
            .unwrap_or_else(|| panic!("{name} still serves after its lease lapsed"));
        assert_eq!(code, Some(3), "{name}: {err}");
        assert!(err.contains("lease in etcd lapsed"), "{name}: {err}");
    }
    eprintln!(
        "both workers fenced {:.1} s after etcd stopped",
        since.elapsed().as_secs_f64()
    );
    server.resume();
}

/// The lease of `rank`'s key.
async fn lease_of(server: &etcd::EtcdServer, rank: u32) -> i64 {
    let mut client = server.client().await;
    let resp = client
        .get(format!("{PREFIX}/ranks/{rank}"), None)
        .await
        .expect("get the rank's key");
    resp.kvs().first().expect("rank is claimed").lease()
}

/// Runs 64 requests of 16 tokens at concurrency 32 on another thread; `fault` runs
/// one second in. Returns the report.
async fn under_load(
    cluster: &common::Cluster,
    json: std::path::PathBuf,
    fault: impl std::future::Future<Output = ()>,
) -> serde_json::Value {
    let addr = cluster.client_addr;
    let run = std::thread::spawn(move || {
        common::load::load_at(
            None,
            addr,
            &[
                "--max-tokens",
                "16",
                "--requests",
                "64",
                "--concurrency",
                "32",
                "--max-duration-s",
                "50",
            ],
            &json,
        )
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    fault.await;
    let (_, report, _) = tokio::task::spawn_blocking(move || run.join().expect("load thread"))
        .await
        .expect("join");
    let r = &report["requests"];
    eprintln!("requests {r}");
    let errors = r["errors"].as_object().expect("errors");
    assert!(
        errors.keys().all(|k| k == "grpc_Unavailable"),
        "only UNAVAILABLE may end a request early: {r}"
    );
    assert!(
        common::load::u(&r["failed"]) > 0,
        "the fault reached no request: {r}"
    );
    report
}

/// Seconds until `/health` says 200 again (at most `limit`).
fn serving_again(cluster: &common::Cluster, limit: Duration) -> f64 {
    let start = Instant::now();
    assert!(
        common::wait_until(limit, || {
            common::load::http_status(cluster.http_addr, "/health") == Some(200)
        }),
        "not serving again within {limit:?}"
    );
    start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_group_survives_a_revoked_lease_and_a_stopped_etcd() {
    let server = etcd::EtcdServer::start().await;
    let endpoint = server.endpoint();
    let model = common::model_path();
    let cluster = common::Cluster::start(&[
        "--model",
        model.to_str().expect("utf-8 path"),
        "--tp",
        "3",
        "--etcd-endpoints",
        &endpoint,
        "--etcd-prefix",
        PREFIX,
        "--etcd-lease-ttl-s",
        "2",
        "--recovery-wait-s",
        "30",
    ]);
    for rank in 0..3 {
        assert!(key_exists(&server, rank).await, "rank {rank} not claimed");
    }
    let dir = tempfile::tempdir().expect("tempdir");

    // Rank 1's lease revoked under load: the worker fences itself, the coordinator
    // sees the claim go and re-forms the group.
    let lease = lease_of(&server, 1).await;
    let client = server.client().await;
    under_load(&cluster, dir.path().join("revoke.json"), async move {
        let mut c = client;
        c.lease_revoke(lease).await.expect("revoke");
    })
    .await;
    let took = serving_again(&cluster, Duration::from_secs(30));
    eprintln!("revoked lease: serving again {took:.1} s after the load run");
    assert!(common::alive(cluster.pid()), "the coordinator died");

    // etcd stops answering for 4 s under load: the workers fence themselves
    // (TTL 2 s); once etcd is back they claim their ranks again.
    let pid = server.pid() as u32;
    under_load(&cluster, dir.path().join("stop.json"), async move {
        common::signal(pid, libc::SIGSTOP);
        tokio::time::sleep(Duration::from_secs(4)).await;
        common::signal(pid, libc::SIGCONT);
    })
    .await;
    let took = serving_again(&cluster, Duration::from_secs(30));
    eprintln!("stopped etcd: serving again {took:.1} s after the load run");
    assert!(common::alive(cluster.pid()), "the coordinator died");
    let (ok, r, err) = common::load::load(
        &cluster,
        &["--max-tokens", "4", "--requests", "4"],
        &dir.path().join("after.json"),
    );
    assert!(ok, "{err}\n{}", r["requests"]);
}

/// A coordinator announcing itself in etcd (TTL 3 s), no local workers; returns it
/// and a receiver of its ready line's addresses.
fn coordinator(endpoint: &str) -> (Child, std::sync::mpsc::Receiver<(SocketAddr, SocketAddr)>) {
    let model = common::model_path();
    let mut child = Command::new(bin("weft-coordinator"))
        .args(["--model", model.to_str().expect("utf-8 path"), "--tp", "3"])
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--cluster-listen", "127.0.0.1:0"])
        .args(["--etcd-endpoints", endpoint, "--etcd-prefix", FOLLOW_PREFIX])
        .args(["--etcd-lease-ttl-s", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weft-coordinator");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addrs) = common::parse_ready_line(&line) {
                let _ = tx.send(addrs);
            }
        }
    });
    (child, rx)
}

const FOLLOW_PREFIX: &str = "/weft/follow-test";

/// Rank `rank` without `--coordinator`, restarted whenever it exits, in a process
/// group of its own (killed whole on drop). Its silence limit (60 s) is far beyond
/// the test's bounds: only etcd can tell it its coordinator changed.
struct WorkerLoop(Child);

impl WorkerLoop {
    fn start(endpoint: &str, rank: u32) -> WorkerLoop {
        use std::os::unix::process::CommandExt;
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg("while :; do \"$0\" \"$@\"; sleep 0.2; done")
            .arg(bin("weft-worker"))
            .args(["--rank", &rank.to_string(), "--threads", "1"])
            .args(["--listen", "127.0.0.1:0", "--comm-listen", "127.0.0.1:0"])
            .args(["--etcd-endpoints", endpoint, "--etcd-prefix", FOLLOW_PREFIX])
            .args(["--etcd-lease-ttl-s", "3", "--coordinator-silence-s", "60"])
            .args(["--register-timeout-s", "120"])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a worker loop");
        WorkerLoop(child)
    }
}

impl Drop for WorkerLoop {
    fn drop(&mut self) {
        // SAFETY: signals the process group this test created.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn serves(grpc: SocketAddr, json: std::path::PathBuf) {
    let (ok, r, err) =
        common::load::load_at(None, grpc, &["--max-tokens", "4", "--requests", "2"], &json);
    assert!(ok, "{err}\n{}", r["requests"]);
}

/// Workers given no coordinator address find it in etcd. When it dies and a new one
/// starts elsewhere (another cluster port), the workers leave the dead one as soon as
/// the new one is announced, and the new one serves within 15 s of its start.
#[test]
fn workers_find_the_coordinator_in_etcd_and_follow_a_new_one() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(etcd::EtcdServer::start());
    let endpoint = server.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut first, ready) = coordinator(&endpoint);
    let _loops: Vec<WorkerLoop> = (0..3).map(|r| WorkerLoop::start(&endpoint, r)).collect();
    let (grpc, _) = ready
        .recv_timeout(Duration::from_secs(120))
        .expect("the workers found the first coordinator");
    serves(grpc, dir.path().join("first.json"));

    common::signal(first.id(), libc::SIGKILL);
    let _ = first.wait();
    let started = Instant::now();
    let (mut second, ready) = coordinator(&endpoint);
    let (grpc2, _) = ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the workers followed the new coordinator");
    let took = started.elapsed();
    eprintln!(
        "the new coordinator served {:.1} s after it started",
        took.as_secs_f64()
    );
    assert_ne!(grpc, grpc2);
    assert!(took < Duration::from_secs(15), "{took:?}");
    serves(grpc2, dir.path().join("second.json"));
    common::signal(second.id(), libc::SIGKILL);
    let _ = second.wait();
}
