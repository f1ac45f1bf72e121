//! The rank claimed in etcd (`--etcd-endpoints`, cargo feature `etcd`): a key under a
//! lease, created only if absent, so two workers cannot hold one rank; the lease is
//! kept alive on its own task, and when it lapses (etcd out of reach for a TTL, or the
//! lease revoked) this worker fences itself: it stops serving and exits, and its
//! supervisor restarts it to claim the rank again. Without endpoints nothing happens
//! (static membership).

use std::path::PathBuf;

use crate::WorkerError;

/// Where the rank is claimed.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EtcdArgs {
    /// etcd endpoints (comma-separated, e.g. https://10.0.0.5:2379); none: static
    /// membership.
    #[arg(long, env = "WEFT_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster in etcd; ranks live under `{prefix}/ranks/`.
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = "/weft/default")]
    pub etcd_prefix: String,
    /// Lease TTL in seconds: how long the rank outlives a worker that stopped
    /// renewing, and how long etcd may be out of reach before the worker fences.
    #[arg(long, env = "WEFT_ETCD_LEASE_TTL_S", default_value_t = 10)]
    pub etcd_lease_ttl_s: u64,
    /// CA certificate (PEM) of etcd's server certificate: TLS to etcd.
    #[arg(long, env = "WEFT_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS to etcd.
    #[arg(long, env = "WEFT_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, env = "WEFT_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

/// What this worker puts under its rank's key.
pub struct Claim<'a> {
    pub rank: u32,
    pub worker_addr: std::net::SocketAddr,
    pub device: String,
    pub instance: u64,
    pub args: &'a EtcdArgs,
}

/// A held rank (nothing under static membership).
pub struct RankLease {
    #[cfg(feature = "etcd")]
    reg: Option<weft_membership::Registration>,
}

/// The etcd client settings these arguments describe (the coordinator's watch uses
/// them too).
#[cfg(feature = "etcd")]
pub fn config(args: &EtcdArgs) -> weft_membership::EtcdConfig {
    let mut cfg = weft_membership::EtcdConfig::new(args.etcd_endpoints.clone(), &args.etcd_prefix);
    cfg.lease_ttl = std::time::Duration::from_secs(args.etcd_lease_ttl_s);
    cfg.tls = args.etcd_ca.as_ref().map(|ca| weft_membership::EtcdTls {
        ca_cert: ca.clone(),
        identity: match (&args.etcd_cert, &args.etcd_key) {
            (Some(cert), Some(key)) => Some(weft_membership::TlsIdentity {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        domain_name: None,
    });
    cfg
}

/// Claims the rank when etcd endpoints are given; a rank still held by another worker
/// after two lease TTLs (a dead holder's claim lapses within one) is refused with the
/// holder named.
pub async fn claim(c: Claim<'_>) -> Result<RankLease, WorkerError> {
    if c.args.etcd_endpoints.is_empty() {
        return Ok(RankLease {
            #[cfg(feature = "etcd")]
            reg: None,
        });
    }
    #[cfg(feature = "etcd")]
    {
        let info = weft_membership::MemberInfo {
            rank: c.rank,
            address: c.worker_addr.to_string(),
            device: c.device,
            instance: format!("{:016x}", c.instance),
        };
        let reg = claim_patiently(&config(c.args), info).await?;
        tracing::info!(rank = c.rank, key = reg.key(), "rank claimed in etcd");
        Ok(RankLease { reg: Some(reg) })
    }
    #[cfg(not(feature = "etcd"))]
    Err(WorkerError::InvalidArgument(
        "--etcd-endpoints: this worker was built without the `etcd` feature".into(),
    ))
}

/// Registers, waiting out a claim that may be a dead worker's: its key goes when its
/// lease lapses, so a rank still held after two TTLs is really someone else's. A claim
/// made from this worker's own address is its dead predecessor's and is taken over at
/// once (this worker listens there now).
#[cfg(feature = "etcd")]
async fn claim_patiently(
    cfg: &weft_membership::EtcdConfig,
    info: weft_membership::MemberInfo,
) -> Result<weft_membership::Registration, WorkerError> {
    use weft_membership::MembershipError;
    let patience = 2 * cfg.lease_ttl + std::time::Duration::from_secs(1);
    let start = tokio::time::Instant::now();
    loop {
        match weft_membership::register_succeeding(cfg, info.clone()).await {
            Ok(reg) => return Ok(reg),
            Err(e @ MembershipError::RankTaken { .. }) if start.elapsed() < patience => {
                tracing::info!(error = %e, "rank held; waiting for the claim to lapse");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(WorkerError::Membership(e.to_string())),
        }
    }
}

impl RankLease {
    /// Resolves when the lease lapsed (never under static membership).
    pub async fn lapsed(&self) {
        #[cfg(feature = "etcd")]
        if let Some(reg) = &self.reg {
            let mut fenced = reg.fence_signal();
            if fenced.wait_for(|f| *f).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await
    }

    /// Gives the rank back (a clean exit).
    pub async fn release(self) {
        #[cfg(feature = "etcd")]
        if let Some(reg) = self.reg {
            if let Err(e) = reg.shutdown().await {
                tracing::warn!(error = %e, "could not give the rank back in etcd");
            }
        }
    }
}
