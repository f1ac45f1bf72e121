//! Workers claim their rank in a real etcd (`--etcd-endpoints`, issue 7): two
//! workers cannot hold one rank, and a worker whose lease lapses (etcd stops
//! answering) fences itself: it stops serving and exits, so that its
//! supervisor restarts it. Needs the `etcd` server binary (scripts/system-deps.sh)
//! and workers built with the `etcd` feature (scripts/test.sh builds with all
//! features).

mod common;
#[path = "../../membership/tests/common/mod.rs"]
mod etcd;

use std::io::Read;
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
