//! The coordinator's record, `{prefix}/coordinator`: where its workers register
//! (its cluster API URL) and which process it is. The coordinator announces it
//! under a lease of its own, kept alive and announced again whenever the lease
//! is lost; the newest announcement wins, so a restarted coordinator replaces its
//! predecessor's record at once. Workers read it to find the coordinator, and
//! notice from it that the coordinator they registered with was replaced.

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::config::{connect, timed, EtcdConfig};
use crate::error::MembershipError;

/// What the coordinator publishes about itself (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    /// The URL workers register at, e.g. `https://10.0.0.5:50052`.
    pub url: String,
    /// An id of this coordinator process (tells a restarted one apart).
    pub instance: String,
}

impl EtcdConfig {
    /// `{prefix}/coordinator`: the coordinator's record.
    pub fn coordinator_key(&self) -> String {
        format!("{}/coordinator", self.prefix)
    }
}

/// A running announcement; dropping it stops the renewals (the record then
/// lapses with its lease).
#[derive(Debug)]
pub struct Announcement {
    task: JoinHandle<()>,
}

impl Drop for Announcement {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Announces `info` until the returned handle is dropped: puts the record under a
/// fresh lease, renews the lease about every TTL/3, and starts over (after a
/// second) whenever etcd cannot be reached or the lease is gone.
pub fn announce(cfg: EtcdConfig, info: CoordinatorInfo) -> Announcement {
    let task = tokio::spawn(async move {
        loop {
            match announce_once(&cfg, &info).await {
                Ok(()) => {
                    tracing::warn!("the coordinator's lease in etcd lapsed; announcing again")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot announce the coordinator in etcd; retrying")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Announcement { task }
}

/// One lease: put the record, then renew until a renewal fails (`Ok`: the lease
/// is gone) or etcd stops answering (`Err`).
async fn announce_once(cfg: &EtcdConfig, info: &CoordinatorInfo) -> Result<(), MembershipError> {
    let value = serde_json::to_vec(info)
        .map_err(|e| MembershipError::Invalid(format!("coordinator record: {e}")))?;
    let client = connect(cfg).await?;
    let rt = cfg.request_timeout;
    let grant = timed(
        "lease grant",
        rt,
        client.lease_client().grant(cfg.ttl_secs(), None),
    )
    .await?;
    let lease = grant.id();
    let put = PutOptions::new().with_lease(lease);
    timed(
        "announce",
        rt,
        client
            .kv_client()
            .put(cfg.coordinator_key(), value, Some(put)),
    )
    .await?;
    tracing::info!(key = cfg.coordinator_key(), url = %info.url, "coordinator announced in etcd");
    renew(&client, lease, cfg).await
}

async fn renew(client: &Client, lease: i64, cfg: &EtcdConfig) -> Result<(), MembershipError> {
    let rt = cfg.request_timeout;
    let (mut keeper, mut stream) = timed(
        "lease keep-alive",
        rt,
        client.lease_client().keep_alive(lease),
    )
    .await?;
    let every = (cfg.lease_ttl / 3).max(Duration::from_millis(100));
    loop {
        timed("lease keep-alive", rt, keeper.keep_alive()).await?;
        match timed("lease keep-alive", rt, stream.message()).await? {
            Some(r) if r.ttl() > 0 => {}
            _ => return Ok(()),
        }
        tokio::time::sleep(every).await;
    }
}

/// A reader of the coordinator's record over one etcd connection (for polling).
pub struct CoordinatorRecord {
    client: Client,
    key: String,
    limit: Duration,
}

impl CoordinatorRecord {
    /// Connects to etcd.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, MembershipError> {
        Ok(CoordinatorRecord {
            client: connect(cfg).await?,
            key: cfg.coordinator_key(),
            limit: cfg.request_timeout,
        })
    }

    /// The record now, if a coordinator is announced.
    pub async fn read(&self) -> Result<Option<CoordinatorInfo>, MembershipError> {
        let mut kv = self.client.kv_client();
        let resp = timed(
            "read coordinator",
            self.limit,
            kv.get(self.key.as_str(), None),
        )
        .await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|e| MembershipError::Invalid(format!("coordinator record: {e}")))
    }
}
