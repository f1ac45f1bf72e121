//! Local worker processes for `--local-workers`: one child per rank, each
//! told to die with the coordinator, stopped on shutdown.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::CoordinatorError;

#[derive(Clone, Debug)]
pub struct LocalWorkerConfig {
    pub bin: PathBuf,
    pub world_size: usize,
    /// URL of the coordinator's cluster service.
    pub coordinator_url: String,
    pub threads: usize,
    pub debug_logits: bool,
    /// The device of local workers (None: their default, the CPU).
    pub device: Option<WorkerDevice>,
    /// The coordinator's TLS files: local workers use its identity and pin
    /// its certificate.
    pub tls: Option<weft_worker::tls::TlsArgs>,
    /// Where local workers claim their ranks (no endpoints: static membership).
    pub etcd: weft_worker::membership::EtcdArgs,
}

/// `--worker-device`: `cpu`, or `cuda` / `cuda:N` (rank r gets GPU N + r).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerDevice {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for WorkerDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s
            .parse::<weft_kernels::Device>()
            .map_err(|e| e.to_string())?
        {
            weft_kernels::Device::Cpu => Ok(WorkerDevice::Cpu),
            weft_kernels::Device::Cuda(n) => Ok(WorkerDevice::Cuda(n)),
        }
    }
}

impl WorkerDevice {
    /// The `--device` value of `rank`.
    pub fn for_rank(self, rank: usize) -> String {
        match self {
            WorkerDevice::Cpu => "cpu".into(),
            WorkerDevice::Cuda(first) => format!("cuda:{}", first + rank),
        }
    }
}

pub struct LocalWorkers {
    children: Vec<Child>,
    cfg: LocalWorkerConfig,
}

/// The weft-worker executable beside the running one.
pub fn default_worker_bin() -> Result<PathBuf, CoordinatorError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| CoordinatorError::Spawn("the executable has no folder".into()))?;
    Ok(dir.join("weft-worker"))
}

/// Compute threads per worker when not configured: the cores, shared out.
pub fn default_threads(world_size: usize) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (cores / world_size.max(1)).max(1)
}

impl LocalWorkers {
    /// Starts one worker per rank. Must be called from a long-lived runtime
    /// thread: the children die with the thread that spawned them.
    pub fn spawn(cfg: &LocalWorkerConfig) -> Result<Self, CoordinatorError> {
        if !Path::new(&cfg.bin).is_file() {
            return Err(CoordinatorError::Spawn(format!(
                "worker executable {} not found (build it with `cargo build --release`, or pass --worker-bin)",
                cfg.bin.display()
            )));
        }
        let children = (0..cfg.world_size)
            .map(|rank| spawn_rank(cfg, rank))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LocalWorkers {
            children,
            cfg: cfg.clone(),
        })
    }

    /// Kills every worker (a survivor of a failed group included) and
    /// starts a fresh one for each rank, to re-form the group.
    pub async fn restart(&mut self) -> Result<(), CoordinatorError> {
        for c in &mut self.children {
            let _ = c.kill().await;
        }
        self.children = (0..self.cfg.world_size)
            .map(|rank| spawn_rank(&self.cfg, rank))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(())
    }

    pub async fn any_exited(&mut self) -> (usize, std::io::Result<ExitStatus>) {
        loop {
            for (rank, c) in self.children.iter_mut().enumerate() {
                match c.try_wait() {
                    Ok(Some(s)) => return (rank, Ok(s)),
                    Ok(None) => {}
                    Err(e) => return (rank, Err(e)),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `grace` for every worker to exit, then kills the rest.
    pub async fn stop(mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for c in &mut self.children {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(left, c.wait()).await.is_err() {
                tracing::warn!(pid = c.id(), "worker did not exit in time; killing it");
                let _ = c.kill().await;
            }
        }
    }
}

fn spawn_rank(cfg: &LocalWorkerConfig, rank: usize) -> Result<Child, CoordinatorError> {
    let mut cmd = Command::new(&cfg.bin);
    cmd.env_remove("WEFT_API_KEY");
    cmd.arg("--coordinator")
        .arg(&cfg.coordinator_url)
        .arg("--rank")
        .arg(rank.to_string())
        .arg("--threads")
        .arg(cfg.threads.to_string())
        .arg("--exit-with-parent")
        .kill_on_drop(true);
    if cfg.debug_logits {
        cmd.arg("--debug-logits");
    }
    if let Some(device) = &cfg.device {
        cmd.arg("--device").arg(device.for_rank(rank));
    }
    if let Some(t) = &cfg.tls {
        for (flag, path) in [
            ("--tls-cert", &t.tls_cert),
            ("--tls-key", &t.tls_key),
            ("--tls-ca", &t.tls_ca),
            ("--coordinator-cert", &t.tls_cert),
        ] {
            if let Some(p) = path {
                cmd.arg(flag).arg(p);
            }
        }
    }
    let e = &cfg.etcd;
    if !e.etcd_endpoints.is_empty() {
        cmd.arg("--etcd-endpoints")
            .arg(e.etcd_endpoints.join(","))
            .arg("--etcd-prefix")
            .arg(&e.etcd_prefix)
            .arg("--etcd-lease-ttl-s")
            .arg(e.etcd_lease_ttl_s.to_string());
        for (flag, path) in [
            ("--etcd-ca", &e.etcd_ca),
            ("--etcd-cert", &e.etcd_cert),
            ("--etcd-key", &e.etcd_key),
        ] {
            if let Some(p) = path {
                cmd.arg(flag).arg(p);
            }
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| CoordinatorError::Spawn(format!("{}: {e}", cfg.bin.display())))?;
    tracing::info!(rank, pid = child.id(), "started local worker");
    Ok(child)
}
