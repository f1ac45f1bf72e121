//! Registering a rank: a create-if-absent put under a lease that a task of
//! its own keeps alive, and that fences the registration when it lapses.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{connect, timed, EtcdConfig};
use crate::error::{is_lease_not_found, MembershipError};
use crate::keepalive::{Control, KeepAlive};
use crate::member::{rank_of_key, MemberInfo};

/// A live registration of one rank. Its keep-alive task renews the lease
/// about every TTL/3; when no renewal is acknowledged within the TTL (measured
/// on the local monotonic clock from the send time of the last acknowledged
/// renewal), or etcd reports the lease gone, the registration fences itself:
/// [`Registration::fenced`] turns true for good and the worker must stop
/// serving steps. Dropping it stops the task without revoking the lease (the
/// key then lapses after the TTL); [`Registration::shutdown`] is the clean exit.
pub struct Registration {
    info: MemberInfo,
    key: String,
    lease_id: i64,
    ttl: Duration,
    request_timeout: Duration,
    client: Client,
    fenced: watch::Receiver<bool>,
    control: watch::Sender<Control>,
    task: Option<JoinHandle<()>>,
}

/// Registers `info.rank`: grants a lease of `cfg.lease_ttl`, then in one
/// transaction puts `{prefix}/ranks/{rank}` with that lease only if the key
/// does not exist. If another worker holds the rank, the lease is revoked and
/// the error is [`MembershipError::RankTaken`] naming the holder.
pub async fn register(cfg: &EtcdConfig, info: MemberInfo) -> Result<Registration, MembershipError> {
    let client = connect(cfg).await?;
    let key = cfg.rank_key(info.rank);
    let value = info.encode()?;
    let rt = cfg.request_timeout;

    // The server starts the TTL when it grants, which is after this instant.
    let granted_at = Instant::now();
    let grant = timed(
        "lease grant",
        rt,
        client.lease_client().grant(cfg.ttl_secs(), None),
    )
    .await?;
    let lease_id = grant.id();
    let ttl = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(0));
    if ttl.is_zero() {
        return Err(MembershipError::Invalid(format!(
            "etcd granted lease {lease_id} with TTL {}",
            grant.ttl()
        )));
    }

    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(lease_id)),
        )]);
    let created = match timed("register txn", rt, client.kv_client().txn(txn)).await {
        Ok(resp) => resp.succeeded(),
        Err(e) => {
            // The put may have happened; revoking the lease removes it.
            revoke_quietly(&client, lease_id, rt).await;
            return Err(e);
        }
    };
    if !created {
        revoke_quietly(&client, lease_id, rt).await;
        let holder = read_holder(&client, &key, cfg, rt).await;
        return Err(MembershipError::RankTaken {
            rank: info.rank,
            holder: holder.map(Box::new),
        });
    }
    tracing::info!(rank = info.rank, lease_id, ?ttl, "registered in etcd");

    let (fenced_tx, fenced) = watch::channel(false);
    let (control, control_rx) = watch::channel(Control::Run);
    let task = KeepAlive {
        cfg: cfg.clone(),
        client: client.clone(),
        rank: info.rank,
        lease_id,
        ttl,
        deadline: granted_at + ttl,
        fenced: fenced_tx,
        control: control_rx,
    };
    let task = tokio::spawn(task.run());
    Ok(Registration {
        info,
        key,
        lease_id,
        ttl,
        request_timeout: rt,
        client,
        fenced,
        control,
        task: Some(task),
    })
}

impl Registration {
    /// The registered record.
    pub fn info(&self) -> &MemberInfo {
        &self.info
    }

    /// The key the record lives under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The etcd lease id the key is attached to.
    pub fn lease_id(&self) -> i64 {
        self.lease_id
    }

    /// The TTL etcd granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True once the lease is known or presumed lapsed; never turns false.
    pub fn fenced(&self) -> bool {
        *self.fenced.borrow()
    }

    /// `Err(Fenced)` once fenced: a guard to run before serving each step.
    pub fn check(&self) -> Result<(), MembershipError> {
        if self.fenced() {
            Err(MembershipError::Fenced {
                rank: self.info.rank,
            })
        } else {
            Ok(())
        }
    }

    /// A receiver that turns `true` when the registration fences itself, for
    /// a worker to `changed().await` on.
    pub fn fence_signal(&self) -> watch::Receiver<bool> {
        self.fenced.clone()
    }

    /// Simulates a hung worker (fault injection for tests and drills): stops
    /// sending keep-alives but keeps the fencing clock, so the registration
    /// fences after the TTL and etcd expires the key; nothing is revoked.
    pub fn pause_keepalive(&self) {
        self.control.send_replace(Control::Pause);
    }

    /// Clean exit: stops the keep-alive task, deletes the key if it still
    /// belongs to this lease, and revokes the lease (a lease already gone
    /// counts as revoked).
    pub async fn shutdown(mut self) -> Result<(), MembershipError> {
        self.control.send_replace(Control::Stop);
        if let Some(task) = self.task.take() {
            // The task only ends on its own; a panic in it changes nothing here.
            let _ = task.await;
        }
        let rt = self.request_timeout;
        let txn = Txn::new()
            .when([Compare::lease(
                self.key.clone(),
                CompareOp::Equal,
                self.lease_id,
            )])
            .and_then([TxnOp::delete(self.key.clone(), None)]);
        timed("deregister txn", rt, self.client.kv_client().txn(txn)).await?;
        let revoke = self.client.lease_client();
        match tokio::time::timeout(rt, revoke_owned(revoke, self.lease_id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if is_lease_not_found(&e) => {}
            Ok(Err(e)) => return Err(MembershipError::from_etcd("lease revoke", e)),
            Err(_) => return Err(MembershipError::timeout("lease revoke", rt)),
        }
        tracing::info!(rank = self.info.rank, "deregistered from etcd");
        Ok(())
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("info", &self.info)
            .field("key", &self.key)
            .field("lease_id", &self.lease_id)
            .field("ttl", &self.ttl)
            .field("fenced", &self.fenced())
            .finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn revoke_owned(
    mut lease: etcd_client::LeaseClient,
    lease_id: i64,
) -> Result<(), etcd_client::Error> {
    lease.revoke(lease_id).await.map(|_| ())
}

/// Best-effort revoke, bounded by `limit`; failures only log (the lease then
/// expires on its own).
pub(crate) async fn revoke_quietly(client: &Client, lease_id: i64, limit: Duration) {
    match tokio::time::timeout(limit, revoke_owned(client.lease_client(), lease_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if is_lease_not_found(&e) => {}
        Ok(Err(e)) => tracing::warn!(lease_id, error = %e, "lease revoke failed"),
        Err(_) => tracing::warn!(lease_id, "lease revoke timed out"),
    }
}

/// Reads the current holder of `key` for the RankTaken error; best effort.
async fn read_holder(
    client: &Client,
    key: &str,
    cfg: &EtcdConfig,
    limit: Duration,
) -> Option<MemberInfo> {
    let resp = timed("read holder", limit, client.kv_client().get(key, None))
        .await
        .ok()?;
    let kv = resp.kvs().first()?;
    let rank = rank_of_key(&cfg.ranks_prefix(), kv.key())?;
    MemberInfo::decode(rank, kv.value()).ok()
}
