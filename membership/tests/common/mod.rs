//! Test support: a real etcd server per test (temp data dir, free loopback
//! ports, killed on drop), a cuttable TCP proxy, and bounded waiting.

#![allow(dead_code)]

pub mod pki;
pub mod proxy;

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use weft_membership::{EtcdConfig, MemberInfo};

/// An etcd server process owned by a test.
pub struct EtcdServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    paused: bool,
    tls: Option<pki::Pki>,
}

fn etcd_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the etcd server binary is not installed: the weft-membership tests need it \
                 (Debian: apt-get install etcd-server; .ci/run installs it)"
            )
        })
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl EtcdServer {
    /// Starts a fresh single-member etcd and waits until it answers.
    pub async fn start() -> EtcdServer {
        Self::start_with(None).await
    }

    /// Starts etcd serving clients over mutual TLS with `pki`'s certificates.
    pub async fn start_tls(pki: pki::Pki) -> EtcdServer {
        Self::start_with(Some(pki)).await
    }

    async fn start_with(tls: Option<pki::Pki>) -> EtcdServer {
        let bin = etcd_binary();
        let mut last_log = String::new();
        for _ in 0..5 {
            let mut server = EtcdServer {
                bin: bin.clone(),
                dir: tempfile::tempdir().expect("temp dir"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                paused: false,
                tls: tls.clone(),
            };
            server.spawn();
            match server.wait_healthy(Duration::from_secs(15)).await {
                Ok(()) => return server,
                // Most likely a port taken between probing and binding: retry.
                Err(log) => last_log = log,
            }
        }
        panic!("etcd did not start; its log ends with:\n{last_log}");
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name=t")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .args(self.tls.iter().flat_map(|p| p.server_args()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill
        // etcd if this test process dies without running its destructors.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn etcd"));
        self.paused = false;
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log.get(start..).unwrap_or(&log).to_string()
    }

    async fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("etcd exited with {status}\n{}", self.log_tail()));
                }
            }
            if self.probe().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        Err(format!(
            "etcd not healthy within {limit:?}\n{}",
            self.log_tail()
        ))
    }

    async fn probe(&self) -> bool {
        let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
        if let Some(pki) = &self.tls {
            opts = opts.with_tls(pki.client_tls());
        }
        let probe = async {
            let c = Client::connect([self.endpoint()], Some(opts)).await.ok()?;
            c.kv_client().get("/health-probe", None).await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Some(_))
        )
    }

    /// `http(s)://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The data directory's parent (kept across restarts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("etcd is running");
        i32::try_from(child.id()).expect("pid fits i32")
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers.
    pub fn pause(&mut self) {
        // SAFETY: signals a child process this server owns.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGSTOP) }, 0);
        self.paused = true;
    }

    /// SIGCONT after [`EtcdServer::pause`].
    pub fn resume(&mut self) {
        // SAFETY: signals a child process this server owns.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGCONT) }, 0);
        self.paused = false;
    }

    /// SIGKILL and reap (the data dir stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                // SAFETY: signals a child process this server owns.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                self.paused = false;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.spawn();
            match self.wait_healthy(Duration::from_secs(15)).await {
                Ok(()) => return,
                // The old process's port may linger a moment.
                Err(log) if Instant::now() < deadline => {
                    eprintln!("etcd restart failed, retrying: {log}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(log) => panic!("etcd did not restart:\n{log}"),
            }
        }
    }

    /// A plain client for the test's own reads and writes.
    pub async fn client(&self) -> Client {
        let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
        if let Some(pki) = &self.tls {
            opts = opts.with_tls(pki.client_tls());
        }
        Client::connect([self.endpoint()], Some(opts))
            .await
            .expect("connect test client")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A config for `endpoint` with short timeouts and the given lease TTL.
pub fn config(endpoint: String, prefix: &str, ttl_secs: u64) -> EtcdConfig {
    let mut cfg = EtcdConfig::new(vec![endpoint], prefix);
    cfg.lease_ttl = Duration::from_secs(ttl_secs);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(1);
    cfg
}

/// A member record for tests.
pub fn member(rank: u32, instance: &str) -> MemberInfo {
    MemberInfo {
        rank,
        address: format!("10.0.0.{rank}:7000"),
        device: "cpu".into(),
        instance: instance.into(),
    }
}

/// Polls `cond` every 25 ms until it holds; panics with `what` after `limit`.
/// Returns how long it took.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether `key` exists.
pub async fn key_exists(client: &Client, key: &str) -> bool {
    let mut kv = client.kv_client();
    let get = kv.get(key, None);
    let resp = tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .expect("get in time")
        .expect("get");
    !resp.kvs().is_empty()
}

/// Puts a member record directly (as a worker of another build might).
pub async fn put_member(client: &Client, cfg: &EtcdConfig, m: &MemberInfo) {
    let value = serde_json::to_vec(m).expect("json");
    client
        .kv_client()
        .put(cfg.rank_key(m.rank), value, None)
        .await
        .expect("put member");
}

/// Deletes a member record directly.
pub async fn delete_member(client: &Client, cfg: &EtcdConfig, rank: u32) {
    client
        .kv_client()
        .delete(cfg.rank_key(rank), None)
        .await
        .expect("delete member");
}
