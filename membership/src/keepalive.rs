//! The keep-alive task of a registration and its self-fencing clock.
//!
//! The task renews the lease about every TTL/3 over a keep-alive stream. Each
//! acknowledgement moves the fencing deadline to (send time of the oldest
//! unacknowledged renewal) + (TTL etcd reported): etcd refreshed the lease no
//! earlier than that send, so the lease cannot outlive the deadline on the
//! server without this process knowing. When the deadline passes (etcd
//! unreachable, stopped, partitioned) or etcd answers with TTL 0 (lease expired
//! or revoked), the registration is fenced and the task ends.

use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::config::{timed, Backoff, EtcdConfig};
use crate::register::revoke_quietly;

/// What the owner of a registration asks of its keep-alive task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Keep the lease alive.
    Run,
    /// Send no more renewals (simulated hang); fence when the clock runs out.
    Pause,
    /// End the task now (shutdown or drop); the owner cleans up.
    Stop,
}

/// Why the loop ended.
#[derive(Debug)]
enum Exit {
    Stopped,
    Fenced(&'static str),
}

/// How driving one keep-alive stream ended.
enum StreamEnd {
    Broken,
    Exit(Exit),
}

pub(crate) struct KeepAlive {
    pub(crate) cfg: EtcdConfig,
    pub(crate) client: Client,
    pub(crate) rank: u32,
    pub(crate) lease_id: i64,
    pub(crate) ttl: Duration,
    /// When the lease may have lapsed on the server, by the local clock.
    pub(crate) deadline: Instant,
    pub(crate) fenced: watch::Sender<bool>,
    pub(crate) control: watch::Receiver<Control>,
}

impl KeepAlive {
    pub(crate) async fn run(mut self) {
        match self.keep_alive_loop().await {
            Exit::Stopped => tracing::debug!(rank = self.rank, "keep-alive task stopped"),
            Exit::Fenced(why) => {
                tracing::warn!(
                    rank = self.rank,
                    lease_id = self.lease_id,
                    why,
                    "registration fenced"
                );
                self.fenced.send_replace(true);
                // A lease this process gave up on should not linger if etcd can
                // still be reached; a simulated hang revokes nothing.
                if self.mode() != Control::Pause {
                    revoke_quietly(&self.client, self.lease_id, self.cfg.request_timeout).await;
                }
            }
        }
    }

    fn mode(&self) -> Control {
        *self.control.borrow()
    }

    async fn keep_alive_loop(&mut self) -> Exit {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.ttl / 4);
        loop {
            if self.mode() == Control::Stop {
                return Exit::Stopped;
            }
            if Instant::now() >= self.deadline {
                return Exit::Fenced("no keep-alive acknowledged within the TTL");
            }
            let limit = self.cfg.request_timeout.min(self.deadline - Instant::now());
            let mut lease = self.client.lease_client();
            match timed("keep-alive stream", limit, lease.keep_alive(self.lease_id)).await {
                Ok((keeper, stream)) => {
                    backoff.reset();
                    match self.drive(keeper, stream).await {
                        StreamEnd::Exit(exit) => return exit,
                        StreamEnd::Broken => {
                            tracing::debug!(rank = self.rank, "keep-alive stream broke")
                        }
                    }
                }
                Err(e) => tracing::debug!(rank = self.rank, error = %e, "keep-alive stream"),
            }
            let wake = (Instant::now() + backoff.next_delay()).min(self.deadline);
            if let Some(exit) = self.wait_until(wake).await {
                return exit;
            }
        }
    }

    /// Sleeps until `wake`, ending early on Stop or a closed control channel.
    async fn wait_until(&mut self, wake: Instant) -> Option<Exit> {
        loop {
            tokio::select! {
                _ = sleep_until(wake) => return None,
                changed = self.control.changed() => {
                    if changed.is_err() || self.mode() == Control::Stop {
                        return Some(Exit::Stopped);
                    }
                }
            }
        }
    }

    async fn drive(
        &mut self,
        mut keeper: LeaseKeeper,
        mut stream: LeaseKeepAliveStream,
    ) -> StreamEnd {
        let period = (self.ttl / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Send time of the oldest renewal not yet acknowledged on this stream.
        let mut pending: Option<Instant> = None;
        loop {
            let paused = self.mode() == Control::Pause;
            tokio::select! {
                biased;
                changed = self.control.changed() => {
                    if changed.is_err() || self.mode() == Control::Stop {
                        return StreamEnd::Exit(Exit::Stopped);
                    }
                }
                _ = sleep_until(self.deadline) => {
                    return StreamEnd::Exit(Exit::Fenced("no keep-alive acknowledged within the TTL"));
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        let Ok(ttl) = u64::try_from(resp.ttl()) else {
                            return StreamEnd::Exit(Exit::Fenced("etcd reported a negative TTL"));
                        };
                        if ttl == 0 {
                            return StreamEnd::Exit(Exit::Fenced("etcd reports the lease expired or revoked"));
                        }
                        if let Some(sent) = pending.take() {
                            self.deadline = self.deadline.max(sent + Duration::from_secs(ttl));
                        }
                    }
                    Ok(None) => return StreamEnd::Broken,
                    Err(e) => {
                        tracing::debug!(rank = self.rank, error = %e, "keep-alive response");
                        return StreamEnd::Broken;
                    }
                },
                _ = tick.tick(), if !paused => {
                    let now = Instant::now();
                    let send = tokio::time::timeout(period, keeper.keep_alive()).await;
                    if !matches!(send, Ok(Ok(()))) {
                        return StreamEnd::Broken;
                    }
                    pending.get_or_insert(now);
                }
            }
        }
    }
}
