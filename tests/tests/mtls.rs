//! Mutual TLS on the cluster API, with a test PKI from
//! scripts/make-test-certs.sh: a worker whose certificate another CA signed,
//! or that has none, cannot join; one signed by the cluster CA joins and
//! the cluster serves; and the worker answers only the coordinator's
//! certificate, not another one the same CA signed, nor a client without a
//! certificate.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, model_path, signal};
use weft_proto::cluster::v1 as pb;
use weft_proto::cluster::v1::worker_client::WorkerClient;
use weft_worker::tls::{self, ClusterTls, TlsArgs};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        signal(self.0.id(), libc::SIGKILL);
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn tls_args(dir: &Path, name: &str) -> Vec<String> {
    let p = |f: &str| dir.join(f).display().to_string();
    vec![
        "--tls-cert".into(),
        p(&format!("{name}.pem")),
        "--tls-key".into(),
        p(&format!("{name}.key")),
        "--tls-ca".into(),
        p("ca.pem"),
    ]
}

/// A TLS worker of rank 0 with `name`'s certificate, pinning the
/// coordinator's; its gRPC service listens on `port`.
fn worker(dir: &Path, name: &str, cluster_port: u16, port: u16) -> Child {
    Command::new(bin("weft-worker"))
        .args([
            "--coordinator",
            &format!("https://127.0.0.1:{cluster_port}"),
        ])
        .args(["--rank", "0", "--register-timeout-s", "3"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(tls_args(dir, name))
        .arg("--coordinator-cert")
        .arg(dir.join("coordinator.pem"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker")
}

fn exits_failing(mut child: Child, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Some(st) = child.try_wait().expect("wait") {
            return !st.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(child.id(), libc::SIGKILL);
    let _ = child.wait();
    false
}

/// Calls the worker's Health as `name` (or with no client certificate).
async fn health_as(dir: &Path, name: Option<&str>, port: u16) -> Result<(), String> {
    let addr = format!("127.0.0.1:{port}");
    let channel = match name {
        Some(n) => {
            let args = TlsArgs {
                tls_cert: Some(dir.join(format!("{n}.pem"))),
                tls_key: Some(dir.join(format!("{n}.key"))),
                tls_ca: Some(dir.join("ca.pem")),
            };
            let t = ClusterTls::load(&args).expect("tls").expect("configured");
            tls::connect(&tls::url(&addr, Some(&t)), Some(&t)).await
        }
        None => {
            let ca = tonic::transport::Certificate::from_pem(
                std::fs::read(dir.join("ca.pem")).expect("ca"),
            );
            let cfg = tonic::transport::ClientTlsConfig::new().ca_certificate(ca);
            let ep = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .expect("endpoint")
                .tls_config(cfg)
                .expect("tls config");
            ep.connect()
                .await
                .map_err(|e| tls::TlsError::Config(e.to_string()))
        }
    }
    .map_err(|e| format!("connect: {e}"))?;
    WorkerClient::new(channel)
        .health(pb::HealthRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certified_workers_join_and_only_the_coordinator_calls_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = common::test_certs(tmp.path(), None);
    let cluster_port = free_port();
    let mut coord = Command::new(bin("weft-coordinator"))
        .args(["--model", &model_path().display().to_string(), "--tp", "1"])
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--cluster-listen", &format!("127.0.0.1:{cluster_port}")])
        .args(tls_args(&dir, "coordinator"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start coordinator");
    let stdout = coord.stdout.take().expect("stdout");
    let coord = Killed(coord);
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = lines
        .recv_timeout(Duration::from_secs(60))
        .expect("listening");
    assert!(listening.contains("cluster API on"), "{listening}");

    // Another CA's certificate: the handshake fails, the worker gives up.
    let rogue = worker(&dir, "rogue", cluster_port, free_port());
    assert!(
        exits_failing(rogue, Duration::from_secs(20)),
        "rogue worker joined"
    );
    // No certificate at all (plain gRPC to the TLS port): likewise.
    let plain = Command::new(bin("weft-worker"))
        .args(["--coordinator", &format!("http://127.0.0.1:{cluster_port}")])
        .args(["--rank", "0", "--register-timeout-s", "3"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker");
    assert!(
        exits_failing(plain, Duration::from_secs(20)),
        "plain worker joined"
    );
    assert!(lines.try_recv().is_err(), "the coordinator became ready");

    // A certificate of the cluster CA: the worker joins and the model serves.
    let port = free_port();
    let _good = Killed(worker(&dir, "worker", cluster_port, port));
    let ready = lines
        .recv_timeout(Duration::from_secs(120))
        .expect("ready line");
    assert!(ready.starts_with("weft-coordinator ready:"), "{ready}");

    // The worker answers the coordinator's certificate only.
    assert_eq!(health_as(&dir, Some("coordinator"), port).await, Ok(()));
    let other = health_as(&dir, Some("worker"), port).await;
    assert!(
        other
            .as_ref()
            .is_err_and(|e| e.starts_with("PermissionDenied")),
        "{other:?}"
    );
    let rogue = health_as(&dir, Some("rogue"), port).await;
    assert!(rogue.is_err(), "{rogue:?}");
    let anonymous = health_as(&dir, None, port).await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    assert!(common::alive(coord.0.id()));
}
