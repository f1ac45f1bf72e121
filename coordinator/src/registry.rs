//! The coordinator's cluster service (`weft.cluster.v1.Coordinator`):
//! worker registration (static membership: the world size is known at
//! start) and shard streaming.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weft_model::checkpoint::Checkpoint;
use weft_model::shard::ShardPlan;
use weft_proto::cluster::v1 as pb;
use weft_worker::shard_stream;

/// Where a registered rank can be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub worker_addr: String,
    pub comm_addr: String,
    /// Whether the rank computes on a CUDA device.
    pub cuda: bool,
    /// The worker process's random id (0 if it sent none).
    pub instance: u64,
}

/// Registration and shard streaming for one worker group.
pub struct Registry {
    world: usize,
    members: Mutex<Vec<Option<Member>>>,
    complete: watch::Sender<bool>,
    ckpt: Arc<Checkpoint>,
    plan: Arc<ShardPlan>,
    /// This coordinator process's random id (never 0).
    instance: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// This coordinator process's random id, told to every worker that registers.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    pub fn new(world: usize, ckpt: Arc<Checkpoint>, plan: Arc<ShardPlan>) -> Arc<Self> {
        let (complete, _) = watch::channel(false);
        Arc::new(Registry {
            world,
            members: Mutex::new(vec![None; world]),
            complete,
            instance: new_instance(),
            ckpt,
            plan,
        })
    }

    /// Waits until every rank has registered; returns the members by rank.
    pub async fn wait_complete(&self, timeout: Duration) -> Option<Vec<Member>> {
        let mut rx = self.complete.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .ok()?
            .ok()?;
        lock(&self.members).iter().cloned().collect()
    }

    /// Forgets every member, so that the ranks of a group being re-formed
    /// register afresh.
    pub fn reset(&self) {
        let mut members = lock(&self.members);
        members.iter_mut().for_each(|m| *m = None);
        self.complete.send_replace(false);
    }

    /// Forgets the members that are the processes `gone` (by instance; a failed
    /// group's, asked to exit), keeping every registration of another process: a
    /// replacement may register before the failure is even noticed, and a worker that
    /// registered waits for its load without registering again.
    pub fn forget(&self, gone: &[Member]) {
        let mut members = lock(&self.members);
        for slot in members.iter_mut() {
            if slot.as_ref().is_some_and(|m| gone.contains(m)) {
                *slot = None;
            }
        }
        let complete = members.iter().all(Option::is_some);
        self.complete.send_replace(complete);
    }

    fn register(&self, req: &pb::RegisterRequest) -> Result<(), Status> {
        let rank = req.rank as usize;
        if rank >= self.world {
            return Err(Status::invalid_argument(format!(
                "rank {rank} is outside the group of {} ranks",
                self.world
            )));
        }
        for (what, addr) in [
            ("worker_addr", &req.worker_addr),
            ("comm_addr", &req.comm_addr),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(Status::invalid_argument(format!(
                    "{what} {addr:?} is not host:port"
                )));
            }
        }
        let member = Member {
            worker_addr: req.worker_addr.clone(),
            comm_addr: req.comm_addr.clone(),
            cuda: req.device == pb::DeviceKind::Cuda as i32,
            instance: req.instance,
        };
        let mut members = lock(&self.members);
        match &members[rank] {
            // Another place claims the rank; a new process at the same place
            // (a restart) takes it over.
            Some(m) if m.worker_addr != member.worker_addr || m.comm_addr != member.comm_addr => {
                return Err(Status::already_exists(format!(
                    "rank {rank} is already claimed by {}",
                    m.worker_addr
                )))
            }
            _ => members[rank] = Some(member),
        }
        tracing::info!(rank, worker = %req.worker_addr, "worker registered");
        if members.iter().all(Option::is_some) {
            self.complete.send_replace(true);
        }
        Ok(())
    }
}

/// The gRPC face of a [`Registry`].
#[derive(Clone)]
pub struct RegistryService(pub Arc<Registry>);

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for RegistryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.0.register(request.get_ref())?;
        Ok(Response::new(pb::RegisterResponse {
            world_size: self.0.world as u32,
            coordinator_instance: self.0.instance,
        }))
    }

    type FetchShardStream = ReceiverStream<Result<pb::ShardChunk, Status>>;

    async fn fetch_shard(
        &self,
        request: Request<pb::FetchShardRequest>,
    ) -> Result<Response<Self::FetchShardStream>, Status> {
        let req = request.into_inner();
        let (rank, world) = (req.rank as usize, req.world_size as usize);
        if world != self.0.world || rank >= world {
            return Err(Status::invalid_argument(format!(
                "shard {rank}/{world} requested from a group of {} ranks",
                self.0.world
            )));
        }
        let (tx, rx) = mpsc::channel(4);
        let reg = self.0.clone();
        tokio::task::spawn_blocking(move || stream_shard(&reg, rank, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Producer side of FetchShard, on a blocking thread; logs progress.
fn stream_shard(reg: &Registry, rank: usize, tx: mpsc::Sender<Result<pb::ShardChunk, Status>>) {
    let total = match shard_stream::shard_bytes(&reg.ckpt, &reg.plan, rank) {
        Ok(t) => t.max(1),
        Err(e) => {
            let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
            return;
        }
    };
    tracing::info!(rank, mib = total as f64 / 1048576.0, "streaming shard");
    let mut next_report = 0u64;
    let result = shard_stream::produce_shard(
        &reg.ckpt,
        &reg.plan,
        rank,
        |c| tx.blocking_send(Ok(c)).is_ok(),
        |sent| {
            if sent >= next_report || sent == total {
                tracing::info!(
                    rank,
                    sent_mib = format!("{:.1}", sent as f64 / 1048576.0),
                    total_mib = format!("{:.1}", total as f64 / 1048576.0),
                    percent = 100 * sent / total,
                    "shard stream progress"
                );
                next_report = sent + total / 10;
            }
        },
    );
    if let Err(e) = result {
        tracing::error!(rank, error = %e, "shard stream failed");
        let _ = tx.blocking_send(Err(Status::internal(format!(
            "reading the shard failed: {e}"
        ))));
    }
}

/// A random, non-zero id of this process.
fn new_instance() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish().max(1)
}
