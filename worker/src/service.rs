//! The worker's gRPC service (`weft.cluster.v1.Worker`) and its startup:
//! bind, register with the coordinator, serve until shutdown.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use weft_model::checkpoint::Checkpoint;
use weft_model::comm::{CommTls, Communicator, SingleRank, TcpComm, TcpCommConfig};
use weft_model::llama::RankModel;
use weft_model::shard::{read_shard, Shard, ShardPlan};
use weft_proto::cluster::v1 as pb;
use weft_proto::cluster::v1::worker_server::{Worker, WorkerServer};

use crate::args::DeviceArgs;
use crate::convert::config_from_proto;
use crate::discovery::CoordinatorSource;
use crate::engine::{Backend, EngineConfig, EngineHandle};
use crate::tls::{self, ClusterTls, PinnedPeer};
use crate::watchdog::Contact;
use crate::{shard_stream, WorkerArgs, WorkerError};
use weft_kernels::Device;

#[derive(Clone, Debug)]
enum Phase {
    Waiting,
    Loading,
    Ready,
    Failed(String),
}

struct State {
    rank: u32,
    device: DeviceArgs,
    threads: usize,
    debug_logits: bool,
    phase: Mutex<Phase>,
    comm_listener: Mutex<Option<std::net::TcpListener>>,
    engine: Mutex<Option<EngineHandle>>,
    shutdown: Arc<Notify>,
    /// Mutual TLS for calls to the coordinator (shard streaming).
    tls: Option<ClusterTls>,
    /// Mutual TLS on the collective between CPU ranks.
    comm_tls: Option<CommTls>,
    /// When the coordinator last called (the self-fencing watchdog's input).
    contact: Arc<Contact>,
    /// This process's random id, sent at registration.
    instance: u64,
}

/// The `Worker` service of one rank.
#[derive(Clone)]
pub struct WorkerService {
    state: Arc<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a [`WorkerService`] is made of besides its arguments.
pub struct ServiceParts {
    pub comm_listener: std::net::TcpListener,
    pub shutdown: Arc<Notify>,
    /// Mutual TLS for calls to the coordinator.
    pub tls: Option<ClusterTls>,
    /// Mutual TLS on the collective between CPU ranks.
    pub comm_tls: Option<CommTls>,
    pub contact: Arc<Contact>,
    /// This process's random id.
    pub instance: u64,
}

impl WorkerService {
    pub fn new(args: &WorkerArgs, parts: ServiceParts) -> Self {
        let ServiceParts {
            comm_listener,
            shutdown,
            tls,
            comm_tls,
            contact,
            instance,
        } = parts;
        WorkerService {
            state: Arc::new(State {
                rank: args.rank,
                device: args.device.clone(),
                threads: args.threads,
                debug_logits: args.debug_logits,
                phase: Mutex::new(Phase::Waiting),
                comm_listener: Mutex::new(Some(comm_listener)),
                engine: Mutex::new(None),
                shutdown,
                tls,
                comm_tls,
                contact,
                instance,
            }),
        }
    }

    fn set_phase(&self, p: Phase) {
        *lock(&self.state.phase) = p;
    }

    async fn load(&self, req: pb::LoadRequest) -> Result<pb::LoadResponse, WorkerError> {
        let (rank, world) = (req.rank as usize, req.world_size as usize);
        if req.rank != self.state.rank
            || world == 0
            || rank >= world
            || req.peer_comm_addrs.len() != world
        {
            return Err(WorkerError::InvalidArgument(format!(
                "load for rank {rank}/{world} with {} peers sent to the worker of rank {}",
                req.peer_comm_addrs.len(),
                self.state.rank
            )));
        }
        let cfg = req
            .config
            .as_ref()
            .ok_or_else(|| WorkerError::InvalidArgument("missing model config".into()))?;
        let cfg = config_from_proto(cfg, &req.eos_token_ids)?;
        let shard = self.obtain_shard(&req, rank, world).await?;
        let digest = shard.digest();
        let bytes = shard.total_bytes();
        let listener = lock(&self.state.comm_listener)
            .take()
            .ok_or_else(|| WorkerError::NotReady("this worker was loaded already".into()))?;
        let comm_cfg = comm_config(&req, rank, world)?;
        let (kv_block_size, kv_num_blocks) = (req.kv_block_size, req.kv_num_blocks);
        let gpu = matches!(self.state.device.device, Device::Cuda(_));
        if kv_block_size == 0 || (kv_num_blocks == 0 && !gpu) {
            return Err(WorkerError::InvalidArgument(
                "the KV cache needs a block size and (on the CPU) a block count".into(),
            ));
        }
        let device = self.state.device.clone();
        let comm_tls = self.state.comm_tls.clone();
        let kv = (kv_block_size as usize, kv_num_blocks as usize);
        let (backend, kv_blocks) =
            tokio::task::spawn_blocking(move || -> Result<_, WorkerError> {
                if let Device::Cuda(ordinal) = device.device {
                    let nccl = GpuGroup {
                        id: req.nccl_id.clone(),
                        timeout: Duration::from_millis(u64::from(req.collective_timeout_ms.max(1))),
                    };
                    return gpu_backend(&cfg, &shard, ordinal, &device, kv, nccl);
                }
                let model = RankModel::from_shard(&cfg, &shard)?;
                let comm = cpu_comm(listener, comm_cfg, req.session, comm_tls.as_ref())?;
                let backend = Backend::Cpu {
                    model: Box::new(model),
                    comm,
                };
                Ok((backend, kv.1))
            })
            .await
            .map_err(|e| WorkerError::NotReady(format!("load task failed: {e}")))??;
        let engine = EngineHandle::spawn(
            backend,
            rank,
            EngineConfig {
                threads: self.state.threads,
                debug_logits: self.state.debug_logits,
                kv_block_size: kv_block_size as usize,
                kv_num_blocks: kv_blocks,
            },
        )?;
        *lock(&self.state.engine) = Some(engine);
        tracing::info!(rank, world, bytes, kv_blocks, "shard loaded, rank ready");
        Ok(pb::LoadResponse {
            rank: rank as u32,
            shard_digest: digest,
            shard_bytes: bytes,
            kv_num_blocks: kv_blocks as u32,
        })
    }

    async fn obtain_shard(
        &self,
        req: &pb::LoadRequest,
        rank: usize,
        world: usize,
    ) -> Result<Shard, WorkerError> {
        match pb::ShardSource::try_from(req.source) {
            Ok(pb::ShardSource::LocalPath) => {
                let path = PathBuf::from(&req.checkpoint_path);
                tokio::task::spawn_blocking(move || -> Result<Shard, WorkerError> {
                    let ckpt = Checkpoint::open(&path)?;
                    let plan = ShardPlan::for_checkpoint(&ckpt, world)?;
                    Ok(read_shard(&ckpt, &plan, rank)?)
                })
                .await
                .map_err(|e| WorkerError::NotReady(format!("shard read task failed: {e}")))?
            }
            Ok(pb::ShardSource::Stream) => {
                let tls = self.state.tls.as_ref();
                shard_stream::fetch_shard(&req.coordinator_addr, rank, world, tls).await
            }
            _ => Err(WorkerError::InvalidArgument("unknown shard source".into())),
        }
    }

    fn engine(&self) -> Result<EngineHandle, WorkerError> {
        lock(&self.state.engine)
            .clone()
            .ok_or_else(|| WorkerError::NotReady("no shard loaded".into()))
    }
}

fn comm_config(
    req: &pb::LoadRequest,
    rank: usize,
    world: usize,
) -> Result<TcpCommConfig, WorkerError> {
    let peers = req
        .peer_comm_addrs
        .iter()
        .map(|a| {
            a.parse::<SocketAddr>()
                .map_err(|e| WorkerError::InvalidArgument(format!("peer address {a:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = Duration::from_millis(u64::from(req.collective_timeout_ms.max(1000)));
    Ok(TcpCommConfig {
        rank,
        world_size: world,
        peers,
        connect_timeout: Duration::from_secs(60),
        op_timeout: timeout,
    })
}

/// The communicator of a CPU rank: the TCP collective (over mutual TLS
/// when configured) with more than one rank.
fn cpu_comm(
    listener: std::net::TcpListener,
    cfg: TcpCommConfig,
    session: u64,
    tls: Option<&CommTls>,
) -> Result<Box<dyn Communicator>, WorkerError> {
    if cfg.world_size == 1 {
        return Ok(Box::new(SingleRank));
    }
    Ok(Box::new(TcpComm::connect_with_tls(
        listener, cfg, session, tls,
    )?))
}

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn load(
        &self,
        request: Request<pb::LoadRequest>,
    ) -> Result<Response<pb::LoadResponse>, Status> {
        self.set_phase(Phase::Loading);
        match WorkerService::load(self, request.into_inner()).await {
            Ok(r) => {
                self.set_phase(Phase::Ready);
                Ok(Response::new(r))
            }
            Err(e) => {
                tracing::error!(error = %e, "load failed");
                self.set_phase(Phase::Failed(e.to_string()));
                Err(e.into())
            }
        }
    }

    async fn new_nccl_id(
        &self,
        _: Request<pb::NcclIdRequest>,
    ) -> Result<Response<pb::NcclIdResponse>, Status> {
        Ok(Response::new(pb::NcclIdResponse { id: new_nccl_id()? }))
    }

    async fn step(
        &self,
        request: Request<pb::StepRequest>,
    ) -> Result<Response<pb::StepResponse>, Status> {
        let engine = self.engine()?;
        self.state.contact.arm();
        let req = request.into_inner();
        for s in req.seqs.iter().filter(|s| !s.traceparent.is_empty()) {
            // The client's trace context, so a request can be followed
            // from the client through the coordinator to every rank.
            tracing::debug!(
                rank = self.state.rank,
                seq = s.seq_id,
                step = req.step_id,
                traceparent = %s.traceparent,
                "sequence admitted"
            );
        }
        Ok(Response::new(engine.step(req).await?))
    }

    async fn health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let phase = lock(&self.state.phase).clone();
        let (state, detail) = match phase {
            Phase::Waiting => (pb::WorkerState::Waiting, String::new()),
            Phase::Loading => (pb::WorkerState::Loading, String::new()),
            Phase::Ready => (pb::WorkerState::Ready, String::new()),
            Phase::Failed(d) => (pb::WorkerState::Failed, d),
        };
        Ok(Response::new(pb::HealthResponse {
            rank: self.state.rank,
            state: state as i32,
            detail,
        }))
    }

    async fn shutdown(
        &self,
        request: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        let instance = request.into_inner().instance;
        if instance != 0 && instance != self.state.instance {
            // Meant for the process this one replaced at the same address.
            tracing::info!("shutdown for another worker process ignored");
            return Ok(Response::new(pb::ShutdownResponse {}));
        }
        tracing::info!("shutdown requested by the coordinator");
        self.state.shutdown.notify_one();
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}

#[cfg(feature = "cuda")]
fn new_nccl_id() -> Result<Vec<u8>, WorkerError> {
    weft_model::comm::nccl::NcclId::new()
        .map(|id| id.to_bytes().to_vec())
        .map_err(|e| WorkerError::NotReady(format!("NCCL: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn new_nccl_id() -> Result<Vec<u8>, WorkerError> {
    Err(WorkerError::NotReady(
        "NCCL ids come from workers built with the `cuda` feature".into(),
    ))
}

/// The NCCL side of a GPU group's formation (read only by CUDA builds).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct GpuGroup {
    /// 128 bytes when the group has more than one rank.
    id: Vec<u8>,
    timeout: Duration,
}

/// A rank on a CUDA device.
#[cfg(feature = "cuda")]
fn gpu_backend(
    cfg: &weft_model::config::ModelConfig,
    shard: &Shard,
    ordinal: usize,
    device: &DeviceArgs,
    (block_size, num_blocks): (usize, usize),
    group: GpuGroup,
) -> Result<(Backend, usize), WorkerError> {
    let c = crate::gpu::GpuRankConfig {
        nccl_id: group.id,
        collective_timeout: group.timeout,
        ordinal,
        ptx_cache_dir: device.ptx_cache.clone(),
        memory_fraction: device.gpu_memory_fraction,
        kv: weft_model::gpu::KvGeometry {
            block_size,
            num_blocks,
        },
    };
    let rank = crate::gpu::GpuRank::load(cfg, shard, &c)?;
    let blocks = rank.kv_blocks();
    Ok((Backend::Gpu(Box::new(rank)), blocks))
}

/// Without the `cuda` feature a CUDA device is a typed error.
#[cfg(not(feature = "cuda"))]
fn gpu_backend(
    _cfg: &weft_model::config::ModelConfig,
    _shard: &Shard,
    ordinal: usize,
    _device: &DeviceArgs,
    _kv: (usize, usize),
    _group: GpuGroup,
) -> Result<(Backend, usize), WorkerError> {
    match weft_kernels::check_device(Device::Cuda(ordinal)) {
        Err(e) => Err(WorkerError::InvalidArgument(e.to_string())),
        Ok(()) => Err(WorkerError::InvalidArgument(
            "this worker was built without the `cuda` feature".into(),
        )),
    }
}

/// Binds, registers with the coordinator and serves until `shutdown`
/// resolves or the coordinator asks this worker to exit.
pub async fn run(
    args: WorkerArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    // Refuse a device this build or machine cannot use before registering.
    weft_kernels::check_device(args.device.device).map_err(|e| {
        WorkerError::InvalidArgument(format!("--device {}: {e}", args.device.device))
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let comm_listener = std::net::TcpListener::bind(args.comm_listen)?;
    let worker_addr = advertised(listener.local_addr()?, args.advertise_host)?;
    let comm_addr = advertised(comm_listener.local_addr()?, args.advertise_host)?;
    let stop = Arc::new(Notify::new());
    let tls = ClusterTls::load(&args.tls)?;
    let pin =
        match (&tls, &args.coordinator_cert) {
            (Some(_), Some(path)) => Some(PinnedPeer::new(tls::cert_der(path)?)),
            (Some(_), None) => return Err(WorkerError::InvalidArgument(
                "with TLS, --coordinator-cert names the only client allowed to call this worker"
                    .into(),
            )),
            (None, _) => None,
        };
    let comm_tls = tls::comm_tls(tls.as_ref(), &args.comm_tls)?;
    let contact = Contact::new();
    let instance = new_instance();
    let service = WorkerService::new(
        &args,
        ServiceParts {
            comm_listener,
            shutdown: stop.clone(),
            tls: tls.clone(),
            comm_tls,
            contact: contact.clone(),
            instance,
        },
    );
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &tls {
        builder = builder
            .tls_config(t.server())
            .map_err(|e| WorkerError::InvalidArgument(format!("TLS: {e}")))?;
    }
    let worker = InterceptedService::new(
        WorkerServer::new(service).max_decoding_message_size(64 << 20),
        {
            let contact = contact.clone();
            move |req| {
                let req = match &pin {
                    Some(p) => p.check(req)?,
                    None => req,
                };
                contact.touch();
                Ok(req)
            }
        },
    );
    let server = builder
        .add_service(worker)
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop.notified() => {}
            }
        });
    let server = tokio::spawn(server);
    let lease = crate::membership::claim(crate::membership::Claim {
        rank: args.rank,
        worker_addr,
        device: args.device.device.to_string(),
        instance,
        args: &args.etcd,
    })
    .await?;
    let source = CoordinatorSource::new(args.coordinator.as_deref(), &args.etcd).await?;
    let addrs = (worker_addr, comm_addr, instance);
    let (coordinator, seen) = tokio::select! {
        r = crate::discovery::register(&args, &source, addrs, tls.as_ref()) => r?,
        _ = lease.lapsed() => return Err(WorkerError::LeaseLapsed),
    };
    tracing::info!(rank = args.rank, %worker_addr, %comm_addr, "registered with the coordinator");
    // Fenced, this worker leaves at once: a graceful stop would wait for calls whose
    // answers cannot get through (the coordinator is out of reach).
    let replaced = tokio::select! {
        r = server => {
            r.map_err(|e| WorkerError::NotReady(format!("server task failed: {e}")))??;
            false
        }
        _ = fence_on_silence(contact, args.coordinator_silence_s) => {
            return Err(WorkerError::Fenced(args.coordinator_silence_s));
        }
        _ = lease.lapsed() => {
            tracing::error!("the rank's lease in etcd lapsed: this worker stops serving and exits");
            return Err(WorkerError::LeaseLapsed);
        }
        _ = source.replaced(coordinator, seen) => true,
    };
    // Both ends give the rank back at once, for this worker's successor to claim.
    lease.release().await;
    if replaced {
        return Err(WorkerError::CoordinatorReplaced);
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Resolves when the coordinator has been silent too long (never with a limit of 0).
async fn fence_on_silence(contact: Arc<Contact>, limit_s: u64) {
    if limit_s == 0 {
        return std::future::pending().await;
    }
    let silent = crate::watchdog::watch(contact, Duration::from_secs(limit_s)).await;
    tracing::error!(
        silent_s = silent.as_secs_f64(),
        "no call from the coordinator for over {limit_s} s: this worker is cut off; \
         it stops serving and exits so that it can join the re-formed group"
    );
}

/// A random nonzero id for this worker process.
fn new_instance() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// The address peers are told for a bound listener: `--advertise-host` with
/// the bound port, or the bound address itself when that is a real one.
fn advertised(bound: SocketAddr, host: Option<IpAddr>) -> Result<SocketAddr, WorkerError> {
    match host {
        Some(ip) => Ok(SocketAddr::new(ip, bound.port())),
        None if bound.ip().is_unspecified() => Err(WorkerError::InvalidArgument(format!(
            "listening on {bound}, which no peer can dial: give --advertise-host"
        ))),
        None => Ok(bound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_address() {
        let any: SocketAddr = "0.0.0.0:50061".parse().unwrap();
        let pod: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            advertised(any, Some(pod)).unwrap(),
            "10.1.2.3:50061".parse().unwrap()
        );
        assert!(matches!(
            advertised(any, None),
            Err(WorkerError::InvalidArgument(_))
        ));
        assert!(advertised("[::]:7".parse().unwrap(), None).is_err());
        let lo: SocketAddr = "127.0.0.1:7".parse().unwrap();
        assert_eq!(advertised(lo, None).unwrap(), lo);
    }
}
