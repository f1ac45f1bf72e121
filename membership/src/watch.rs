//! The coordinator's view of membership: a consistent listing followed by a
//! watch that resumes from the last delivered revision after any break, and
//! re-lists when etcd has compacted that revision away.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions, WatchResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{connect, timed, Backoff, EtcdConfig};
use crate::error::MembershipError;
use crate::member::{rank_of_key, MemberInfo};

/// Capacity of the event channel of a [`MemberWatch`]; the watcher waits
/// (stops reading etcd) while it is full.
pub const WATCH_CHANNEL_CAPACITY: usize = 256;

/// A change to the membership view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// The complete current membership, sorted by rank: replace the view
    /// with it (first event, and again after etcd compacted history the
    /// watcher had not yet seen).
    Snapshot(Vec<MemberInfo>),
    /// A rank was registered or its record replaced.
    Put(MemberInfo),
    /// A rank's key was deleted (clean exit, or its lease lapsed).
    Delete {
        /// The rank that left.
        rank: u32,
    },
}

/// A running membership watch. Events come in etcd revision order, each
/// exactly once across reconnects. Dropping it ends the watcher task.
#[derive(Debug)]
pub struct MemberWatch {
    events: mpsc::Receiver<MembershipEvent>,
    task: JoinHandle<()>,
}

impl MemberWatch {
    /// The next event; `None` only if the watcher task ended abnormally.
    pub async fn recv(&mut self) -> Option<MembershipEvent> {
        self.events.recv().await
    }
}

impl Drop for MemberWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lists `{prefix}/ranks/` and starts watching it. The first event is the
/// listing as a [`MembershipEvent::Snapshot`]; errors reaching etcd for that
/// first listing are returned here, later ones are retried with backoff.
pub async fn watch_members(cfg: &EtcdConfig) -> Result<MemberWatch, MembershipError> {
    let (tx, events) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
    let mut watcher = Watcher {
        cfg: cfg.clone(),
        prefix: cfg.ranks_prefix(),
        tx,
        last_rev: 0,
    };
    let snapshot = watcher.list().await?;
    // The channel is new and empty, so this cannot wait.
    if watcher.tx.send(snapshot).await.is_err() {
        return Err(MembershipError::Invalid("event channel closed".into()));
    }
    let task = tokio::spawn(watcher.run());
    Ok(MemberWatch { events, task })
}

struct Watcher {
    cfg: EtcdConfig,
    prefix: String,
    tx: mpsc::Sender<MembershipEvent>,
    /// Every event up to this revision has been delivered.
    last_rev: i64,
}

/// How one watch stream ended.
enum WatchEnd {
    /// The stream broke or was canceled: resume from `last_rev + 1`.
    Broken,
    /// History after `last_rev` is gone (compacted, or a store that went back):
    /// re-list.
    Relist,
    /// The consumer went away.
    Closed,
}

impl Watcher {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut relist = false;
        loop {
            if relist {
                match self.list().await {
                    Ok(snapshot) => {
                        if self.tx.send(snapshot).await.is_err() {
                            return;
                        }
                        relist = false;
                        continue;
                    }
                    Err(e) => tracing::debug!(error = %e, "membership re-list"),
                }
            } else {
                let tx = self.tx.clone();
                let end = tokio::select! {
                    _ = tx.closed() => return,
                    end = self.watch_once(&mut backoff) => end,
                };
                match end {
                    Ok(WatchEnd::Closed) => return,
                    Ok(WatchEnd::Relist) => {
                        tracing::info!(
                            after = self.last_rev,
                            "membership history compacted; re-listing"
                        );
                        relist = true;
                        continue;
                    }
                    Ok(WatchEnd::Broken) => tracing::debug!("membership watch broke"),
                    Err(e) => tracing::debug!(error = %e, "membership watch"),
                }
            }
            tokio::select! {
                _ = self.tx.closed() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// A consistent listing of the members and its revision.
    async fn list(&mut self) -> Result<MembershipEvent, MembershipError> {
        let client = connect(&self.cfg).await?;
        let mut kv = client.kv_client();
        let get = kv.get(self.prefix.clone(), Some(GetOptions::new().with_prefix()));
        let resp = timed("list members", self.cfg.request_timeout, get).await?;
        let rev =
            resp.header()
                .map(|h| h.revision())
                .ok_or_else(|| MembershipError::Unavailable {
                    op: "list members",
                    detail: "response without a header".into(),
                })?;
        let mut members: Vec<MemberInfo> = resp
            .kvs()
            .iter()
            .filter_map(|kv| self.decode(kv.key(), kv.value()).ok())
            .collect();
        members.sort_by_key(|m| m.rank);
        self.last_rev = rev;
        Ok(MembershipEvent::Snapshot(members))
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<MemberInfo, ()> {
        let Some(rank) = rank_of_key(&self.prefix, key) else {
            tracing::warn!(key = %String::from_utf8_lossy(key), "ignoring a non-rank key");
            return Err(());
        };
        MemberInfo::decode(rank, value).map_err(|e| tracing::warn!(error = %e, "ignoring a member"))
    }

    /// Opens one watch from `last_rev + 1` and forwards its events.
    async fn watch_once(&mut self, backoff: &mut Backoff) -> Result<WatchEnd, MembershipError> {
        let client = connect(&self.cfg).await?;
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.last_rev + 1)
            .with_progress_notify();
        let mut watch = client.watch_client();
        let open = watch.watch(self.prefix.clone(), Some(opts));
        let mut stream = timed("open watch", self.cfg.request_timeout, open).await?;
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return Ok(WatchEnd::Broken),
                Err(e) => return Err(MembershipError::from_etcd("watch", e)),
            };
            if resp.compact_revision() > 0 {
                return Ok(WatchEnd::Relist);
            }
            if resp.canceled() {
                tracing::debug!(reason = resp.cancel_reason(), "membership watch canceled");
                return Ok(WatchEnd::Broken);
            }
            if resp.created() {
                backoff.reset();
                // A store whose revision is behind what was delivered lost
                // history (restored or recreated): only a listing is sound.
                if resp.header().is_some_and(|h| h.revision() < self.last_rev) {
                    return Ok(WatchEnd::Relist);
                }
                continue;
            }
            if !self.forward(&resp).await {
                return Ok(WatchEnd::Closed);
            }
        }
    }

    /// Delivers the events of one response; false when the consumer is gone.
    async fn forward(&mut self, resp: &WatchResponse) -> bool {
        if resp.events().is_empty() {
            // A progress notification: everything up to its revision was sent.
            if let Some(h) = resp.header() {
                self.last_rev = self.last_rev.max(h.revision());
            }
            return true;
        }
        // One revision may hold several events (a transaction); a response
        // never splits a revision, so dedupe against the revision before it.
        let floor = self.last_rev;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let rev = kv.mod_revision();
            if rev <= floor {
                continue;
            }
            let out = match self.translate(event.event_type(), kv.key(), kv.value()) {
                Some(out) => out,
                None => {
                    self.last_rev = self.last_rev.max(rev);
                    continue;
                }
            };
            if self.tx.send(out).await.is_err() {
                return false;
            }
            self.last_rev = self.last_rev.max(rev);
        }
        true
    }

    fn translate(&self, kind: EventType, key: &[u8], value: &[u8]) -> Option<MembershipEvent> {
        let rank = rank_of_key(&self.prefix, key)?;
        match kind {
            EventType::Delete => Some(MembershipEvent::Delete { rank }),
            // A rank key that no longer holds a valid record is no member.
            EventType::Put => Some(match self.decode(key, value) {
                Ok(info) => MembershipEvent::Put(info),
                Err(()) => MembershipEvent::Delete { rank },
            }),
        }
    }
}
