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
    claim(cfg, info, false).await
}

/// [`register`], except that a rank held by a record of this worker's own
/// address (`info.address`, another instance) is taken over at once instead of
/// refused. The caller listens on that address, so the process that claimed the
/// rank from it is gone: a worker restarted in place replaces its dead
/// predecessor, whose lease would otherwise hold the rank for up to a TTL. The
/// record is replaced only if it is still the one read (same modification
/// revision), and the predecessor's lease is then revoked, so that it would
/// fence itself if it were somehow still running.
pub async fn register_succeeding(
    cfg: &EtcdConfig,
    info: MemberInfo,
) -> Result<Registration, MembershipError> {
    claim(cfg, info, true).await
}

async fn claim(
    cfg: &EtcdConfig,
    info: MemberInfo,
    succeed: bool,
) -> Result<Registration, MembershipError> {
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
    let put = Put {
        client: &client,
        key: &key,
        value,
        lease_id,
        limit: rt,
    };
    let absent = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
    let mut created = put.when(absent).await?;
    if !created && succeed {
        created = take_over(&put, &info, cfg).await?;
    }
    if !created {
        revoke_quietly(&client, lease_id, rt).await;
        let holder = read_record(&client, &key, cfg, rt).await.map(|(m, ..)| m);
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

/// The claim's put, made under a condition.
struct Put<'a> {
    client: &'a Client,
    key: &'a str,
    value: Vec<u8>,
    lease_id: i64,
    limit: Duration,
}

impl Put<'_> {
    /// Puts the claim if `cond` holds; whether it did. On an error the put may
    /// have happened: the lease is revoked, which removes it.
    async fn when(&self, cond: Compare) -> Result<bool, MembershipError> {
        let txn = Txn::new().when([cond]).and_then([TxnOp::put(
            self.key,
            self.value.clone(),
            Some(PutOptions::new().with_lease(self.lease_id)),
        )]);
        match timed("register txn", self.limit, self.client.kv_client().txn(txn)).await {
            Ok(resp) => Ok(resp.succeeded()),
            Err(e) => {
                revoke_quietly(self.client, self.lease_id, self.limit).await;
                Err(e)
            }
        }
    }
}

/// Replaces the rank's record if another instance of this same address holds
/// it (see [`register_succeeding`]); whether it did.
async fn take_over(
    put: &Put<'_>,
    info: &MemberInfo,
    cfg: &EtcdConfig,
) -> Result<bool, MembershipError> {
    let Some((holder, revision, lease)) = read_record(put.client, put.key, cfg, put.limit).await
    else {
        return Ok(false);
    };
    if holder.address != info.address || holder.instance == info.instance {
        return Ok(false);
    }
    let same = Compare::mod_revision(put.key, CompareOp::Equal, revision);
    if !put.when(same).await? {
        return Ok(false);
    }
    tracing::warn!(
        rank = info.rank,
        predecessor = %holder.instance,
        "took the rank over from the previous worker on this address"
    );
    revoke_quietly(put.client, lease, put.limit).await;
    Ok(true)
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

/// Reads the record under `key`: its holder, modification revision and lease;
/// best effort.
async fn read_record(
    client: &Client,
    key: &str,
    cfg: &EtcdConfig,
    limit: Duration,
) -> Option<(MemberInfo, i64, i64)> {
    let resp = timed("read holder", limit, client.kv_client().get(key, None))
        .await
        .ok()?;
    let kv = resp.kvs().first()?;
    let rank = rank_of_key(&cfg.ranks_prefix(), kv.key())?;
    let info = MemberInfo::decode(rank, kv.value()).ok()?;
    Some((info, kv.mod_revision(), kv.lease()))
}
