//! Helpers shared by the integration tests: locating the built binaries
//! and the test model, a coordinator process, and an in-test "coordinator"
//! that drives real worker processes directly (to read debug logits).
#![allow(dead_code)]

pub mod load;
pub mod netns;
pub mod reference;
pub mod server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_coordinator::group::WorkerGroup;
use weft_coordinator::registry::{Registry, RegistryService};
use weft_model::checkpoint::Checkpoint;
use weft_model::shard::ShardPlan;
use weft_proto::cluster::v1 as pb;

pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The SmolLM2 test model; fetched by scripts/fetch-model.sh.
pub fn model_path() -> PathBuf {
    let p = repo_root().join("models").join(MODEL_FILE);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-model.sh (the README's test command does)",
        p.display()
    );
    p
}

/// A binary of this workspace, built by `cargo build --release --bins`
/// (scripts/test.sh does that before `cargo test`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target folder");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first (`cargo build --release --bins`, as scripts/test.sh does)",
        p.display()
    );
    p
}

/// A test PKI made by scripts/make-test-certs.sh in `dir` (needs openssl): the
/// cluster CA, coordinator, worker and etcd certificates, and a rogue CA's.
/// `san_extra` adds subject names to every leaf (e.g. `"IP:10.77.0.1"`).
pub fn test_certs(dir: &Path, san_extra: Option<&str>) -> PathBuf {
    let mut cmd = Command::new(repo_root().join("scripts/make-test-certs.sh"));
    cmd.arg(dir);
    if let Some(san) = san_extra {
        cmd.env("SAN_EXTRA", san);
    }
    let out = cmd
        .output()
        .expect("run make-test-certs.sh (needs openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

/// Process ids whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may contain spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited; it only waits to be reaped.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we started and a valid signal number.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A `weft-coordinator --local-workers` process.
pub struct Cluster {
    pub child: Child,
    pub client_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

/// Parses the coordinator's ready line into (gRPC, HTTP) addresses.
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix("weft-coordinator ready: gRPC API on ")?;
    let (grpc, http) = rest.split_once(", OpenAI-compatible HTTP API on http://")?;
    Some((grpc.trim().parse().ok()?, http.trim().parse().ok()?))
}

impl Cluster {
    pub fn start(extra: &[&str]) -> Cluster {
        Self::start_with(extra, &[], None)
    }

    /// With extra environment variables, and stderr (the logs of the
    /// coordinator and its workers) written to a file.
    pub fn start_with(
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Option<std::fs::File>,
    ) -> Cluster {
        let mut cmd = Command::new(bin("weft-coordinator"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--local-workers",
        ])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
        if let Some(f) = stderr {
            cmd.stderr(f);
        }
        let mut child = cmd.spawn().expect("start weft-coordinator");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addrs) = parse_ready_line(&line) {
                    let _ = tx.send(addrs);
                }
            }
        });
        let (client_addr, http_addr) = rx
            .recv_timeout(Duration::from_secs(180))
            .expect("coordinator did not become ready within 180 s");
        Cluster {
            child,
            client_addr,
            http_addr,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Real `weft-worker` processes driven directly by the test, which plays
/// the coordinator: it serves the cluster API on port 0, waits for the
/// workers to register, loads them and sends steps.
pub struct TestGroup {
    pub group: WorkerGroup,
    pub loaded: Vec<pb::LoadResponse>,
    workers: Vec<Child>,
    server: tokio::task::JoinHandle<()>,
}

pub async fn start_group(model: &Path, tp: usize, source: pb::ShardSource) -> TestGroup {
    let ckpt = Arc::new(Checkpoint::open(model).expect("open checkpoint"));
    let plan = Arc::new(ShardPlan::for_checkpoint(&ckpt, tp).expect("plan"));
    let registry = Registry::new(tp, ckpt.clone(), plan);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let svc = pb::coordinator_server::CoordinatorServer::new(RegistryService(registry.clone()));
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    let threads = (2 / tp).max(1).to_string();
    let workers: Vec<Child> = (0..tp)
        .map(|rank| {
            Command::new(bin("weft-worker"))
                .args([
                    "--coordinator",
                    &url,
                    "--rank",
                    &rank.to_string(),
                    "--threads",
                    &threads,
                ])
                .args(["--debug-logits", "--exit-with-parent"])
                .spawn()
                .expect("start weft-worker")
        })
        .collect();
    let members = registry
        .wait_complete(Duration::from_secs(60))
        .await
        .expect("workers registered");
    let group = WorkerGroup::connect(&members, None)
        .await
        .expect("connect workers");
    let config = ckpt.config();
    let load = pb::LoadRequest {
        world_size: tp as u32,
        peer_comm_addrs: members.iter().map(|m| m.comm_addr.clone()).collect(),
        config: Some(weft_worker::convert::config_to_proto(config)),
        source: source as i32,
        checkpoint_path: std::path::absolute(model)
            .expect("abs")
            .display()
            .to_string(),
        coordinator_addr: url,
        eos_token_ids: config.eos_token_ids.clone(),
        session: 0x5eed,
        collective_timeout_ms: 30_000,
        kv_block_size: 16,
        kv_num_blocks: 64,
        ..Default::default()
    };
    let loaded = group.load(&load).await.expect("load");
    TestGroup {
        group,
        loaded,
        workers,
        server,
    }
}

impl TestGroup {
    /// Greedy decoding of `prompt` for `n` tokens; returns the tokens and
    /// the full logits before each.
    pub async fn greedy(&self, seq_id: u64, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
        let mut tokens = Vec::new();
        let mut logits = Vec::new();
        let mut input = prompt.to_vec();
        let mut pos = 0u32;
        for step in 0..n {
            let req = pb::StepRequest {
                step_id: seq_id * 1000 + step as u64,
                seqs: vec![pb::SequenceStep {
                    seq_id,
                    tokens: input.clone(),
                    start_pos: pos,
                    sample: true,
                    block_table: (0..(pos as usize + input.len()).div_ceil(16) as u32).collect(),
                    ..Default::default()
                }],
                debug_return_logits: true,
                ..Default::default()
            };
            let resp = self.group.step(req).await.expect("step");
            pos += input.len() as u32;
            let t = resp.tokens[0].token;
            tokens.push(t);
            logits.push(resp.debug_logits[0].logits.clone());
            input = vec![t];
        }
        (tokens, logits)
    }

    pub async fn stop(mut self) {
        self.group.shutdown().await;
        for w in &mut self.workers {
            let _ = w.wait();
        }
        self.server.abort();
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}
