//! Command-line configuration of `weft-worker`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser};
use weft_kernels::Device;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weft-worker",
    version,
    about = "weft worker: one tensor-parallel rank"
)]
pub struct WorkerArgs {
    /// Address of the coordinator's cluster service, e.g. http://127.0.0.1:50052.
    /// Optional with --etcd-endpoints: then the coordinator's record in etcd says.
    #[arg(long, env = "WEFT_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Tensor-parallel rank this worker claims.
    #[arg(long, env = "WEFT_RANK")]
    pub rank: u32,
    /// Address of this worker's gRPC service (port 0 picks a free port).
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Address of this worker's collective (CPU all-reduce) listener.
    #[arg(long, env = "WEFT_COMM_LISTEN", default_value = "127.0.0.1:0")]
    pub comm_listen: SocketAddr,
    /// Address registered with the coordinator for both listeners (with
    /// their bound ports) instead of the bound ones, e.g. a pod's IP when
    /// binding 0.0.0.0; required when a listener binds an unspecified address.
    #[arg(long, env = "WEFT_ADVERTISE_HOST")]
    pub advertise_host: Option<IpAddr>,
    /// Compute threads of this rank (0 = all cores).
    #[arg(long, env = "WEFT_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Allow StepRequest.debug_return_logits (tests only).
    #[arg(long, env = "WEFT_DEBUG_LOGITS", default_value_t = false)]
    pub debug_logits: bool,
    /// Exit when the parent process (a coordinator that spawned this worker) dies.
    #[arg(long, default_value_t = false)]
    pub exit_with_parent: bool,
    /// Seconds to keep retrying registration while the coordinator starts.
    #[arg(long, env = "WEFT_REGISTER_TIMEOUT", default_value_t = 60)]
    pub register_timeout_s: u64,
    /// Once serving, seconds without any call from the coordinator (which checks every
    /// rank's health every 2 s, waiting up to 5 s for each answer, so keep this above 7)
    /// after which this worker considers itself cut off, stops serving and exits with an
    /// error so that its supervisor restarts it and it joins the re-formed group; 0
    /// disables.
    #[arg(long, env = "WEFT_COORDINATOR_SILENCE_S", default_value_t = 15)]
    pub coordinator_silence_s: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    #[command(flatten)]
    pub comm_tls: crate::tls::CommTlsArgs,
    #[command(flatten)]
    pub etcd: crate::membership::EtcdArgs,
    /// With TLS: the coordinator's certificate (PEM); only a client
    /// presenting exactly this certificate may call this worker.
    #[arg(long, env = "WEFT_COORDINATOR_CERT", requires = "tls_cert")]
    pub coordinator_cert: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where this rank runs: `cpu`, or `cuda:N` (needs a build with
    /// `--features cuda` and an NVIDIA driver).
    #[arg(long, env = "WEFT_DEVICE", default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// Folder where compiled CUDA kernels are kept between runs.
    #[arg(long, env = "WEFT_PTX_CACHE")]
    pub ptx_cache: Option<PathBuf>,
    /// Largest share of the GPU's memory the weights and K/V pool may take.
    #[arg(long, env = "WEFT_GPU_MEMORY_FRACTION", default_value_t = 0.9)]
    pub gpu_memory_fraction: f64,
}

fn parse_device(s: &str) -> Result<Device, String> {
    s.parse::<Device>().map_err(|e| e.to_string())
}
