//! Keeps the worker group serving. It watches the group (every rank's
//! health every few seconds, and the scheduler's verdict on every step);
//! when a rank dies, stalls or becomes unreachable, requests in flight end
//! with UNAVAILABLE (the scheduler does that), health goes NOT_SERVING, and
//! the group is re-formed: the survivors are asked to exit, local workers
//! are started afresh, every rank registers again (a restarted worker or a
//! replacement), loads its shard over a new communicator, and a canary step
//! runs before health says SERVING again. Requests that arrive meanwhile
//! wait for it within the scheduler's recovery bounds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::group::WorkerGroup;
use crate::health::Health;
use crate::local::LocalWorkers;
use crate::scheduler::SchedulerHandle;
use crate::server::{canary, start_group, GroupCtx};
use crate::CoordinatorError;

/// How often, and how patiently, every rank's health is checked.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the ranks of a failed group get to answer the request to exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts to re-form the group.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What the supervisor acts on.
pub(crate) struct Supervisor<'a> {
    pub ctx: &'a GroupCtx<'a>,
    pub local: Option<&'a mut LocalWorkers>,
    pub api: &'a Api,
    pub health: &'a Health,
    pub scheduler: &'a SchedulerHandle,
}

impl Supervisor<'_> {
    /// Supervises `group` until `shutdown`; returns the group serving then.
    pub async fn run(
        mut self,
        mut group: WorkerGroup,
        shutdown: &CancellationToken,
    ) -> WorkerGroup {
        loop {
            let why = tokio::select! {
                _ = shutdown.cancelled() => return group,
                why = watch(&group, self.health) => why,
            };
            // Ends whatever is still in flight (a no-op if the scheduler
            // found the failure itself).
            self.scheduler.fail(why.clone()).await;
            tracing::warn!(error = %why, "the worker group failed; re-forming it");
            tokio::select! {
                _ = shutdown.cancelled() => return group,
                formed = self.reform(group.clone(), &why) => group = formed,
            }
        }
    }

    /// Re-forms the group, retrying until it serves.
    async fn reform(&mut self, failed: WorkerGroup, why: &str) -> WorkerGroup {
        let mut stale = Some(failed);
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            self.health
                .set_not_serving(format!("re-forming the worker group after: {why}"));
            if let Some(g) = stale.take() {
                let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, g.shutdown()).await;
                // The failed group's processes are gone or going; registrations of
                // other processes (replacements, restarts) stay.
                self.ctx.registry.forget(g.members());
            }
            if let Some(local) = self.local.as_deref_mut() {
                // Every local worker is started afresh: nobody registered counts.
                self.ctx.registry.reset();
                if let Err(e) = local.restart().await {
                    tracing::error!(error = %e, attempt, "cannot restart the local workers");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            }
            match self.form().await {
                Ok(group) => {
                    tracing::info!(attempt, "the worker group serves again");
                    return group;
                }
                Err((e, group)) => {
                    tracing::warn!(error = %e, attempt, "re-forming the worker group failed");
                    stale = group;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// One attempt: register, load, hand the group to the scheduler, canary.
    async fn form(&mut self) -> Result<WorkerGroup, (CoordinatorError, Option<WorkerGroup>)> {
        let (group, kv_blocks) = start_group(self.ctx, self.local.as_deref_mut())
            .await
            .map_err(|e| (e, None))?;
        self.scheduler.replace_group(group.clone(), kv_blocks).await;
        self.api
            .set_kv_capacity(kv_blocks * self.ctx.sched.kv_block_size);
        if let Err(e) = canary(self.api).await {
            return Err((e, Some(group)));
        }
        self.health.set_serving();
        Ok(group)
    }
}

/// Returns why `group` stopped serving: health went NOT_SERVING (the
/// scheduler saw a step fail) or a rank failed a health check.
async fn watch(group: &WorkerGroup, health: &Health) -> String {
    let mut state = health.subscribe();
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        let now = state.borrow_and_update().clone();
        if !now.serving {
            return now.reason;
        }
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = group.health(HEALTH_TIMEOUT).await {
                    return e.to_string();
                }
            }
            changed = state.changed() => {
                if changed.is_err() {
                    // The health state is gone: only shutdown ends this.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
