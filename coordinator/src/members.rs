//! The coordinator in etcd (`--etcd-endpoints`, cargo feature `etcd`): its own record,
//! announced for the workers to find it ([`announce`]), and the ranks' claims, watched. A
//! rank whose key goes away (its worker's lease lapsed, or the worker exited) while the
//! group serves has left it: health goes NOT_SERVING at once, which makes the
//! supervisor end the requests in flight and re-form the group, without waiting for a
//! step deadline or a health check to find out. The watch resumes after a reconnect
//! and re-lists after compaction (weft-membership).

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use weft_worker::membership::EtcdArgs;
use weft_worker::tls::ClusterTls;

use crate::health::Health;
use crate::CoordinatorError;

/// Starts the watch when etcd endpoints are given; it runs until `shutdown`.
pub fn spawn_watch(
    args: &EtcdArgs,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    if args.etcd_endpoints.is_empty() {
        return Ok(());
    }
    #[cfg(feature = "etcd")]
    {
        let cfg = weft_worker::membership::config(args);
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = watch(cfg, health) => {}
            }
        });
        Ok(())
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = (health, shutdown);
        Err(CoordinatorError::InvalidArgument(
            "--etcd-endpoints: this coordinator was built without the `etcd` feature".into(),
        ))
    }
}

#[cfg(feature = "etcd")]
async fn watch(cfg: weft_membership::EtcdConfig, health: Health) {
    use weft_membership::MembershipEvent;
    loop {
        match weft_membership::watch_members(&cfg).await {
            Ok(mut w) => {
                while let Some(event) = w.recv().await {
                    match event {
                        MembershipEvent::Snapshot(members) => {
                            tracing::info!(ranks = members.len(), "ranks claimed in etcd");
                        }
                        MembershipEvent::Put(m) => {
                            tracing::info!(rank = m.rank, worker = %m.address, "rank claimed in etcd");
                        }
                        MembershipEvent::Delete { rank } => left(&health, rank),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the ranks in etcd; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A rank's claim is gone: if the group serves, it has lost that rank.
#[cfg(feature = "etcd")]
fn left(health: &Health, rank: u32) {
    tracing::warn!(
        rank,
        "rank left etcd (its lease lapsed or its worker exited)"
    );
    if health.state().serving {
        health.set_not_serving(format!(
            "rank {rank} left etcd: its worker's lease lapsed or it exited"
        ));
    }
}

/// The coordinator's record in etcd, renewed while this value lives.
pub struct Announced {
    #[cfg(feature = "etcd")]
    _announcement: Option<weft_membership::Announcement>,
}

/// What the coordinator announces: where workers register, and which process.
pub struct Announce<'a> {
    pub etcd: &'a EtcdArgs,
    pub cluster_addr: SocketAddr,
    pub advertise: Option<&'a str>,
    pub tls: Option<&'a ClusterTls>,
    pub instance: u64,
}

/// Announces the cluster API's URL in etcd when endpoints are given.
pub fn announce(a: Announce<'_>) -> Result<Announced, CoordinatorError> {
    if a.etcd.etcd_endpoints.is_empty() {
        return Ok(Announced {
            #[cfg(feature = "etcd")]
            _announcement: None,
        });
    }
    let url = announced_url(a.cluster_addr, a.advertise, a.tls.is_some())?;
    #[cfg(feature = "etcd")]
    {
        let info = weft_membership::CoordinatorInfo {
            url,
            instance: format!("{:016x}", a.instance),
        };
        let cfg = weft_worker::membership::config(a.etcd);
        Ok(Announced {
            _announcement: Some(weft_membership::announce(cfg, info)),
        })
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = (url, a.instance);
        Err(CoordinatorError::InvalidArgument(
            "--etcd-endpoints: this coordinator was built without the `etcd` feature".into(),
        ))
    }
}

/// The cluster API's URL as workers dial it: `--cluster-advertise` (or the listen IP,
/// which must then be a real one) with the listen port.
fn announced_url(
    cluster_addr: SocketAddr,
    advertise: Option<&str>,
    tls: bool,
) -> Result<String, CoordinatorError> {
    let host = match (advertise, cluster_addr.ip()) {
        (Some(h), _) => h.to_string(),
        (None, ip) if ip.is_unspecified() => {
            return Err(CoordinatorError::InvalidArgument(format!(
                "--cluster-listen {cluster_addr} cannot be announced in etcd: give --cluster-advertise"
            )))
        }
        (None, std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        (None, ip) => ip.to_string(),
    };
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{host}:{}", cluster_addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_url_names_a_dialable_host() {
        let url = |addr: &str, adv, tls| announced_url(addr.parse().unwrap(), adv, tls);
        assert_eq!(
            url("10.0.0.5:50052", None, false).unwrap(),
            "http://10.0.0.5:50052"
        );
        assert_eq!(
            url("10.0.0.5:50052", None, true).unwrap(),
            "https://10.0.0.5:50052"
        );
        assert_eq!(
            url("[fd00::5]:50052", None, true).unwrap(),
            "https://[fd00::5]:50052"
        );
        assert_eq!(
            url("0.0.0.0:50052", Some("coord.weft.svc"), true).unwrap(),
            "https://coord.weft.svc:50052"
        );
        for any in ["0.0.0.0:50052", "[::]:50052"] {
            let e = url(any, None, false).unwrap_err().to_string();
            assert!(e.contains("--cluster-advertise"), "{e}");
        }
    }
}
