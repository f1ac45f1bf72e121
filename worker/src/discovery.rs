//! Where this worker registers: the coordinator given with `--coordinator`, or the
//! one announced in etcd (`{prefix}/coordinator`, cargo feature `etcd`), read again
//! at every registration attempt so that a coordinator restarted elsewhere is found.
//! With etcd, the record also tells a registered worker that its coordinator was
//! replaced (a restart): the worker then exits, to register with the new one at once
//! instead of waiting out `--coordinator-silence-s`.

use std::net::SocketAddr;
use std::time::Duration;

use weft_proto::cluster::v1 as pb;

use crate::membership::EtcdArgs;
use crate::tls::{self, ClusterTls};
use crate::{WorkerArgs, WorkerError};
use weft_kernels::Device;

/// How often a registered worker reads the coordinator's record.
#[cfg(feature = "etcd")]
const POLL: Duration = Duration::from_millis(500);

/// The coordinator's whereabouts.
pub struct CoordinatorSource {
    fixed: Option<String>,
    #[cfg(feature = "etcd")]
    record: Option<weft_membership::CoordinatorRecord>,
}

/// A coordinator to register at: its URL and the instance its etcd record named
/// when it was read (if any).
pub struct Target {
    pub url: String,
    pub announced: Option<String>,
}

impl CoordinatorSource {
    /// From `--coordinator` and the etcd settings; at least one must be given.
    pub async fn new(fixed: Option<&str>, etcd: &EtcdArgs) -> Result<Self, WorkerError> {
        if fixed.is_none() && etcd.etcd_endpoints.is_empty() {
            return Err(WorkerError::InvalidArgument(
                "--coordinator is required without --etcd-endpoints".into(),
            ));
        }
        #[cfg(feature = "etcd")]
        let record = match etcd.etcd_endpoints.is_empty() {
            true => None,
            false => Some(
                weft_membership::CoordinatorRecord::connect(&crate::membership::config(etcd))
                    .await
                    .map_err(|e| WorkerError::Membership(e.to_string()))?,
            ),
        };
        Ok(CoordinatorSource {
            fixed: fixed.map(str::to_owned),
            #[cfg(feature = "etcd")]
            record,
        })
    }

    /// Where to register now: `--coordinator` if given, else the announced URL.
    pub async fn target(&self) -> Result<Target, WorkerError> {
        let announced = self.announced().await?;
        let url = match (&self.fixed, &announced) {
            (Some(url), _) => url.clone(),
            (None, Some(info)) => info.0.clone(),
            (None, None) => {
                return Err(WorkerError::NotReady(
                    "no coordinator is announced in etcd yet".into(),
                ))
            }
        };
        Ok(Target {
            url,
            announced: announced.map(|(_, instance)| instance),
        })
    }

    /// The announced (URL, instance), if etcd is used and a coordinator announced.
    async fn announced(&self) -> Result<Option<(String, String)>, WorkerError> {
        #[cfg(feature = "etcd")]
        if let Some(r) = &self.record {
            let info = r
                .read()
                .await
                .map_err(|e| WorkerError::Membership(e.to_string()))?;
            return Ok(info.map(|i| (i.url, i.instance)));
        }
        Ok(None)
    }

    /// Resolves once etcd announces a coordinator that is neither the one this
    /// worker registered with (`registered`, from its answer) nor the one announced
    /// when it registered (`seen`: possibly a dead predecessor whose record had not
    /// lapsed yet). Never without etcd, or when the coordinator gave no instance.
    pub async fn replaced(&self, registered: u64, seen: Option<String>) {
        #[cfg(feature = "etcd")]
        if let (Some(r), true) = (&self.record, registered != 0) {
            let mine = format!("{registered:016x}");
            loop {
                tokio::time::sleep(POLL).await;
                // etcd out of reach: the lease (and the silence watchdog) decide.
                if let Ok(Some(info)) = r.read().await {
                    if info.instance != mine && Some(&info.instance) != seen.as_ref() {
                        tracing::warn!(
                            coordinator = %info.url,
                            "a new coordinator is announced in etcd: this worker leaves \
                             its old one and exits to register again"
                        );
                        return;
                    }
                }
            }
        }
        let _ = (registered, seen);
        std::future::pending::<()>().await
    }
}

/// Registers with the coordinator `source` names (looked up again at every
/// attempt); returns the coordinator's instance and the one etcd announced then.
pub async fn register(
    args: &WorkerArgs,
    source: &CoordinatorSource,
    (worker_addr, comm_addr, instance): (SocketAddr, SocketAddr, u64),
    tls: Option<&ClusterTls>,
) -> Result<(u64, Option<String>), WorkerError> {
    use pb::coordinator_client::CoordinatorClient;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.register_timeout_s);
    let request = pb::RegisterRequest {
        rank: args.rank,
        worker_addr: worker_addr.to_string(),
        comm_addr: comm_addr.to_string(),
        device: match args.device.device {
            Device::Cpu => pb::DeviceKind::Cpu,
            Device::Cuda(_) => pb::DeviceKind::Cuda,
        } as i32,
        instance,
    };
    loop {
        let attempt = async {
            let target = source.target().await?;
            let mut client = CoordinatorClient::new(tls::connect(&target.url, tls).await?);
            let answer = client.register(request.clone()).await?.into_inner();
            Ok::<_, WorkerError>((answer.coordinator_instance, target.announced))
        };
        match attempt.await {
            Ok(done) => return Ok(done),
            Err(WorkerError::Rpc(s)) if s.code() != tonic::Code::Unavailable => {
                return Err(WorkerError::Rpc(s))
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "coordinator not reachable yet, retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
