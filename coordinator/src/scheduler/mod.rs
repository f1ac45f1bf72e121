//! The scheduler: an actor that owns the waiting queue, the running batch
//! and the KV blocks, and drives the worker group one step at a time with
//! iteration-level (continuous) batching and chunked prefill.

mod plan;
mod seq;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use weft_model::tokenizer::Tokenizer;

use crate::group::WorkerGroup;
use crate::health::Health;
use crate::kv::{BlockManager, KvStats};
use crate::metrics::{Metrics, RequestMetrics};
use crate::request::GenRequest;
pub use seq::EventTx;
use seq::Seq;

/// Limits of the batcher.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Sequences in one step.
    pub max_num_seqs: usize,
    /// Tokens in one step (prefill chunks plus decodes).
    pub max_batched_tokens: usize,
    /// Requests waiting for admission; beyond it new ones are refused.
    pub max_waiting: usize,
    pub kv_block_size: usize,
    pub kv_num_blocks: usize,
    pub prefix_caching: bool,
    /// Context length of the model.
    pub max_model_len: usize,
    pub eos_token_ids: Vec<u32>,
    /// While a failed group recovers, up to this many new requests wait
    /// for it; more are refused with UNAVAILABLE.
    pub recovery_queue: usize,
    /// How long after a failure waiting requests may wait for the group;
    /// then they (and new ones, until it is back) get UNAVAILABLE.
    pub recovery_wait: Duration,
    /// A step not answered by every rank within this long fails the group.
    pub step_timeout: Duration,
    /// Requests in flight when the group fails wait for the re-formed
    /// group and resume there (from their prompt and the tokens already
    /// streamed) instead of ending with UNAVAILABLE.
    pub resume_on_failure: bool,
}

/// Counters for tests, logs and metrics.
#[derive(Clone, Debug, Default)]
pub struct SchedulerStats {
    pub kv: KvStats,
    pub running: usize,
    pub waiting: usize,
    pub steps: u64,
    pub preemptions: u64,
    /// Tokens run through the model (prefill chunks and decodes).
    pub computed_tokens: u64,
    pub generated_tokens: u64,
    /// Time the scheduler spent planning steps and handling results.
    pub coordinator_time: Duration,
    /// Time spent waiting for the workers' step answers.
    pub step_time: Duration,
}

enum Command {
    Submit {
        seq: Box<Seq>,
        reply: oneshot::Sender<Result<(), Status>>,
    },
    Stats {
        reply: oneshot::Sender<SchedulerStats>,
    },
    /// The group was found broken outside a step (a rank stopped
    /// answering health checks).
    Fail { why: String },
    /// Shutdown: admit nothing more; with `abort`, also end every request
    /// still queued or running with UNAVAILABLE.
    Drain {
        abort: bool,
        reply: oneshot::Sender<usize>,
    },
    /// A re-formed group replaces the broken one; requests that waited for
    /// it start.
    Replace {
        group: WorkerGroup,
        kv_num_blocks: usize,
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the scheduler actor.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<Command>,
    tokenizer: Arc<Tokenizer>,
    metrics: Arc<Metrics>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

/// What the scheduler reports to besides its requests.
pub struct SchedulerDeps {
    pub group: WorkerGroup,
    pub tokenizer: Arc<Tokenizer>,
    pub metrics: Arc<Metrics>,
    pub health: Health,
}

impl SchedulerHandle {
    /// Starts the actor on the current runtime.
    pub fn spawn(cfg: SchedulerConfig, deps: SchedulerDeps) -> Self {
        let SchedulerDeps {
            group,
            tokenizer,
            metrics,
            health,
        } = deps;
        let (tx, rx) = mpsc::channel(256);
        let kv = BlockManager::new(cfg.kv_num_blocks, cfg.kv_block_size, cfg.prefix_caching);
        let actor = Scheduler {
            cfg,
            group,
            tokenizer: tokenizer.clone(),
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            released: Vec::new(),
            broken: None,
            draining: false,
            step_abandoned: false,
            health,
            stats: SchedulerStats::default(),
            next_step: 1,
            last_log: Instant::now(),
        };
        tokio::spawn(actor.run(rx));
        SchedulerHandle {
            tx,
            tokenizer,
            metrics,
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }

    /// Queues a validated request whose events go to `events` (which must
    /// hold max_tokens + 2 messages). Refused with RESOURCE_EXHAUSTED when
    /// the waiting queue is full.
    pub async fn submit(
        &self,
        req: GenRequest,
        events: EventTx,
        deadline: Option<Instant>,
    ) -> Result<(), Status> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let metrics = if req.internal {
            RequestMetrics::disabled()
        } else {
            RequestMetrics::new(self.metrics.clone())
        };
        let seq = Box::new(Seq::new(
            id,
            req,
            events,
            self.tokenizer.clone(),
            deadline,
            metrics,
        ));
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit { seq, reply })
            .await
            .map_err(|_| Status::unavailable("the scheduler has stopped"))?;
        rx.await
            .map_err(|_| Status::unavailable("the scheduler has stopped"))?
    }

    pub async fn stats(&self) -> Option<SchedulerStats> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Stats { reply }).await.ok()?;
        rx.await.ok()
    }

    /// Marks the group broken: requests in flight end with UNAVAILABLE.
    pub async fn fail(&self, why: String) {
        let _ = self.tx.send(Command::Fail { why }).await;
    }

    /// Stops admitting requests, lets those in flight finish for up to
    /// `grace`, then ends the rest with UNAVAILABLE. Returns how many had
    /// to be ended.
    pub async fn drain(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut left = self.drain_cmd(false).await;
        while left > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = self.drain_cmd(false).await;
        }
        if left == 0 {
            return 0;
        }
        self.drain_cmd(true).await
    }

    /// Sends a drain command; returns the requests still queued or running.
    async fn drain_cmd(&self, abort: bool) -> usize {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Drain { abort, reply }).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Serves from `group` (re-formed after a failure, holding
    /// `kv_num_blocks` blocks per rank) from now on.
    pub async fn replace_group(&self, group: WorkerGroup, kv_num_blocks: usize) {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Replace {
            group,
            kv_num_blocks,
            reply,
        };
        if self.tx.send(cmd).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Why and since when the group is not serving.
struct Broken {
    why: String,
    since: Instant,
}

struct Scheduler {
    cfg: SchedulerConfig,
    group: WorkerGroup,
    tokenizer: Arc<Tokenizer>,
    kv: BlockManager,
    /// Admission order; preempted sequences go back to the front.
    waiting: VecDeque<Box<Seq>>,
    /// Admitted sequences, oldest first. Boxed like the queue's so moving
    /// a sequence between the two (admission, preemption) moves a pointer.
    #[allow(clippy::vec_box)]
    running: Vec<Box<Seq>>,
    /// Sequences whose worker state is dropped with the next step.
    released: Vec<u64>,
    /// Set when a step failed: the group is not serving.
    broken: Option<Broken>,
    /// Set at shutdown: nothing new is admitted.
    draining: bool,
    /// Set when the requests of the step in flight were ended by a command.
    step_abandoned: bool,
    health: Health,
    stats: SchedulerStats,
    next_step: u64,
    last_log: Instant,
}

impl Scheduler {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            self.reap(Instant::now());
            if self.broken.is_some() && !self.waiting.is_empty() {
                // Requests wait for the group to come back, within bounds.
                self.expire_recovery_wait();
                if let Ok(Some(cmd)) =
                    tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
                {
                    self.handle(cmd);
                }
                continue;
            }
            if self.running.is_empty() && self.waiting.is_empty() {
                self.flush_releases().await;
                let Some(cmd) = rx.recv().await else {
                    break;
                };
                self.handle(cmd);
                continue;
            }
            let t0 = Instant::now();
            let Some(step) = self.plan() else {
                // Nothing fits right now (cannot happen while validation
                // bounds requests by the cache); wait for a change.
                if let Ok(Some(cmd)) =
                    tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
                {
                    self.handle(cmd);
                }
                continue;
            };
            self.stats.coordinator_time += t0.elapsed();
            let t1 = Instant::now();
            let group = self.group.clone();
            let request = step.request.clone();
            let timeout = self.cfg.step_timeout;
            self.step_abandoned = false;
            let mut fut = std::pin::pin!(async move {
                match tokio::time::timeout(timeout, group.step(request)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("a step was not answered within {timeout:?}")),
                }
            });
            let result = loop {
                tokio::select! {
                    r = &mut fut => break Some(r),
                    Some(cmd) = rx.recv() => {
                        self.handle(cmd);
                        // Found broken meanwhile (a rank failed its health
                        // check) or drained: abandon the step, whose
                        // requests have already ended.
                        if std::mem::take(&mut self.step_abandoned) || self.broken.is_some() {
                            break None;
                        }
                    }
                }
            };
            self.stats.step_time += t1.elapsed();
            let t2 = Instant::now();
            match result {
                Some(Ok(resp)) => self.apply(step, resp),
                Some(Err(e)) => self.fail_group(e),
                None => {}
            }
            self.stats.coordinator_time += t2.elapsed();
            self.maybe_log_stats();
        }
        tracing::info!("scheduler stopped");
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit { seq, reply } => {
                let r = if self.draining {
                    Err(Status::unavailable(
                        "the server is shutting down; retry on another replica",
                    ))
                } else if self.broken.is_some() {
                    self.admit_while_broken(seq)
                } else if self.waiting.len() >= self.cfg.max_waiting {
                    Err(Status::resource_exhausted(format!(
                        "the server is at capacity ({} requests waiting); retry later",
                        self.waiting.len()
                    )))
                } else {
                    self.waiting.push_back(seq);
                    Ok(())
                };
                let _ = reply.send(r);
            }
            Command::Stats { reply } => {
                let mut s = self.stats.clone();
                s.kv = self.kv.stats();
                s.running = self.running.len();
                s.waiting = self.waiting.len();
                let _ = reply.send(s);
            }
            Command::Fail { why } => {
                if self.broken.is_none() {
                    self.fail_group(why);
                }
            }
            Command::Drain { abort, reply } => {
                self.draining = true;
                let left = self.running.len() + self.waiting.len();
                if abort && left > 0 {
                    self.end_all(Status::unavailable(
                        "the server shut down before the request finished; retry it",
                    ));
                }
                let _ = reply.send(left);
            }
            Command::Replace {
                group,
                kv_num_blocks,
                reply,
            } => {
                self.group = group;
                self.cfg.kv_num_blocks = kv_num_blocks;
                self.kv = BlockManager::new(
                    kv_num_blocks,
                    self.cfg.kv_block_size,
                    self.cfg.prefix_caching,
                );
                self.released.clear();
                self.broken = None;
                tracing::info!(
                    kv_num_blocks,
                    waiting = self.waiting.len(),
                    "serving from the re-formed worker group"
                );
                let _ = reply.send(());
            }
        }
    }

    /// Ends every queued and running request with `status` (and with them
    /// the step in flight, if any).
    fn end_all(&mut self, status: Status) {
        self.step_abandoned = !self.running.is_empty();
        for s in std::mem::take(&mut self.running)
            .into_iter()
            .chain(std::mem::take(&mut self.waiting))
        {
            let mut s = s;
            s.fail(status.clone());
            self.free(&s);
        }
    }

    /// Puts every running request back at the front of the queue (oldest
    /// first) with no K/V state: on the re-formed group each is recomputed
    /// from its prompt and the tokens already streamed, as after a
    /// preemption, so greedy and seeded outputs continue unchanged.
    fn requeue_running(&mut self) {
        self.step_abandoned = !self.running.is_empty();
        for mut s in std::mem::take(&mut self.running).into_iter().rev() {
            if let Err(e) = self.kv.release(&s.blocks) {
                tracing::error!(seq = s.id, error = %e, "KV block accounting error");
            }
            s.blocks.clear();
            s.hashes.clear();
            s.computed = 0;
            tracing::debug!(seq = s.id, streamed = s.output.len(), "waits to resume");
            self.waiting.push_front(s);
        }
    }

    /// A request that arrives while the group recovers waits for it, if
    /// the recovery queue has room and the wait has not run out.
    fn admit_while_broken(&mut self, seq: Box<Seq>) -> Result<(), Status> {
        let Some(b) = &self.broken else {
            return Err(Status::internal("the group is serving"));
        };
        let why = &b.why;
        if b.since.elapsed() >= self.cfg.recovery_wait {
            return Err(Status::unavailable(format!(
                "the worker group is not serving ({why}) and has not recovered within {:?}",
                self.cfg.recovery_wait
            )));
        }
        if self.waiting.len() >= self.cfg.recovery_queue {
            return Err(Status::unavailable(format!(
                "the worker group is not serving ({why}); {} requests already wait for it \
                 to recover",
                self.waiting.len()
            )));
        }
        self.waiting.push_back(seq);
        Ok(())
    }

    /// Ends the requests waiting for a recovery that took too long.
    fn expire_recovery_wait(&mut self) {
        let Some(b) = &self.broken else { return };
        if b.since.elapsed() < self.cfg.recovery_wait {
            return;
        }
        let status = Status::unavailable(format!(
            "the worker group is not serving ({}) and has not recovered within {:?}",
            b.why, self.cfg.recovery_wait
        ));
        for mut s in std::mem::take(&mut self.waiting) {
            // Queued while broken: no blocks to return.
            s.fail(status.clone());
        }
    }

    /// Every 10 s of activity: a summary line (no request content).
    fn maybe_log_stats(&mut self) {
        if self.last_log.elapsed() < Duration::from_secs(10) {
            return;
        }
        self.last_log = Instant::now();
        let s = &self.stats;
        let busy = s.coordinator_time + s.step_time;
        let share = s.coordinator_time.as_secs_f64() / busy.as_secs_f64().max(1e-9);
        let kv = self.kv.stats();
        tracing::info!(
            steps = s.steps,
            generated_tokens = s.generated_tokens,
            computed_tokens = s.computed_tokens,
            preemptions = s.preemptions,
            running = self.running.len(),
            waiting = self.waiting.len(),
            kv_used = kv.in_use,
            kv_total = kv.total,
            coordinator_share = format!("{:.2}%", share * 100.0),
            "serving stats"
        );
    }

    /// Drops sequences whose client went away or whose deadline passed.
    fn reap(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            if s.client_gone() || s.expired(now) {
                let s = self.running.remove(i);
                self.end(s, Some(now));
            } else {
                i += 1;
            }
        }
        let (keep, gone): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|s| !s.client_gone() && !s.expired(now));
        self.waiting = keep;
        for s in gone {
            self.end(s, Some(now));
        }
    }

    /// Frees a sequence that did not finish normally.
    fn end(&mut self, mut s: Box<Seq>, now: Option<Instant>) {
        if now.is_some_and(|n| s.expired(n)) {
            s.fail(Status::deadline_exceeded(
                "the request's deadline passed before it finished",
            ));
        }
        s.abort();
        tracing::debug!(seq = s.id, "sequence cancelled");
        self.free(&s);
    }

    /// Returns a sequence's blocks and schedules its worker state release.
    fn free(&mut self, s: &Seq) {
        if let Err(e) = self.kv.release(&s.blocks) {
            tracing::error!(seq = s.id, error = %e, "KV block accounting error");
        }
        self.released.push(s.id);
    }

    async fn flush_releases(&mut self) {
        if self.released.is_empty() || self.broken.is_some() {
            return;
        }
        let req = weft_proto::cluster::v1::StepRequest {
            step_id: self.next_step,
            release_seq_ids: std::mem::take(&mut self.released),
            ..Default::default()
        };
        self.next_step += 1;
        let timeout = self.cfg.step_timeout;
        match tokio::time::timeout(timeout, self.group.step(req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.fail_group(e.to_string()),
            Err(_) => self.fail_group(format!("a step was not answered within {timeout:?}")),
        }
    }

    /// A step failed: every request in flight ends with UNAVAILABLE and the
    /// group stops serving.
    fn fail_group(&mut self, why: String) {
        tracing::error!(error = %why, "the worker group is not serving");
        self.health
            .set_not_serving(format!("the worker group failed: {why}"));
        if self.cfg.resume_on_failure {
            self.requeue_running();
        } else {
            self.end_all(Status::unavailable(format!(
                "the worker group failed: {why}"
            )));
        }
        self.released.clear();
        self.broken = Some(Broken {
            why,
            since: Instant::now(),
        });
    }
}
