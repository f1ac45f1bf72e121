//! The load shape: a fixed number of concurrent clients, each sending its
//! next request as soon as its previous one finished, until the request
//! budget is spent or the run's deadline passes. Warm-up requests run first,
//! at the same concurrency, and are reported apart.
//!
//! With an arrival process ([`LoadShape::arrivals`], `--request-rate`) the
//! measured phase is open-loop instead: request `k` is sent at its scheduled
//! time whether or not earlier ones finished, and the concurrency only caps
//! the requests in flight (a request due while the cap is reached waits for
//! a slot, as vLLM's `--max-concurrency`). The warm-up stays closed-loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::arrivals::Arrivals;
use crate::fault::{with_fault, FaultPlan, FaultRun};
use crate::target::{RequestError, Target, Timeline};
use crate::workload::Workload;

/// How much load to apply.
#[derive(Debug, Clone)]
pub struct LoadShape {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Measured requests.
    pub requests: usize,
    /// Requests sent before the measured ones, left out of the metrics.
    pub warmup: usize,
    /// The whole run (warm-up included) stops after this long; requests
    /// still in flight then are abandoned.
    pub max_duration: Duration,
    /// Open-loop arrivals for the measured phase; `None` = closed loop.
    pub arrivals: Option<Arrivals>,
}

/// How one request ended.
#[derive(Debug)]
pub enum Outcome {
    /// The server answered (or the transport failed).
    Done(Result<Timeline, RequestError>),
    /// In flight when the deadline passed.
    Cancelled,
    /// Never sent because the deadline had passed.
    NotStarted,
}

/// One request of a phase, timed from the phase start.
#[derive(Debug)]
pub struct Record {
    pub index: usize,
    /// When it was sent; `None` if never.
    pub sent: Option<Duration>,
    /// When it finished or was abandoned; `None` if never sent.
    pub ended: Option<Duration>,
    pub outcome: Outcome,
}

impl Record {
    /// The successful result, if any.
    pub fn timeline(&self) -> Option<&Timeline> {
        match &self.outcome {
            Outcome::Done(Ok(t)) => Some(t),
            _ => None,
        }
    }
}

/// What became of the requests of one phase.
#[derive(Debug, Default)]
pub struct Phase {
    /// Every request of the phase, by request index.
    pub records: Vec<Record>,
    /// From the first send until the last request finished (or the deadline).
    pub wall: Duration,
}

impl Phase {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.records.iter().filter(|r| f(&r.outcome)).count()
    }

    pub fn ok(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Done(Ok(_))))
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Done(Err(_))))
    }

    pub fn cancelled(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Cancelled))
    }

    pub fn not_started(&self) -> usize {
        self.count(|o| matches!(o, Outcome::NotStarted))
    }

    /// The successful requests' timelines with their request index.
    pub fn timelines(&self) -> impl Iterator<Item = (usize, &Timeline)> {
        self.records
            .iter()
            .filter_map(|r| r.timeline().map(|t| (r.index, t)))
    }
}

/// Watches a run: a progress display, for example. Called from the
/// runner's task; keep each call short.
pub trait Progress: Sync {
    /// A phase of `total` requests starts (`warmup` or `measured`).
    fn phase(&self, _name: &'static str, _total: usize) {}
    /// A request ended: ok, failed, cancelled or not started.
    fn ended(&self, _ok: bool) {}
}

/// No display.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Progress for Quiet {}

/// The warm-up and the measured phase of a run.
#[derive(Debug)]
pub struct RunOutcome {
    pub warmup: Phase,
    pub measured: Phase,
    /// The fault command's run, when one was planned.
    pub fault: Option<FaultRun>,
}

/// What else a run does besides sending requests.
#[derive(Clone, Copy, Default)]
pub struct Hooks<'a> {
    pub progress: Option<&'a dyn Progress>,
    pub fault: Option<&'a FaultPlan>,
}

/// Applies `shape` to `target`.
pub async fn run(
    target: &dyn Target,
    shape: &LoadShape,
    workload: &Workload,
    hooks: Hooks<'_>,
) -> RunOutcome {
    let progress = hooks.progress.unwrap_or(&Quiet);
    let deadline = Instant::now() + shape.max_duration;
    let warm = PhasePlan {
        first_index: 0,
        count: shape.warmup,
        concurrency: shape.concurrency,
        deadline,
    };
    progress.phase("warmup", shape.warmup);
    let warmup = run_phase(target, &warm, workload, progress).await;
    let measure = PhasePlan {
        first_index: shape.warmup,
        count: shape.requests,
        ..warm
    };
    progress.phase("measured", shape.requests);
    let start = Instant::now();
    let measured = async {
        match &shape.arrivals {
            Some(a) => run_open_phase(target, &measure, workload, a, progress).await,
            None => run_phase(target, &measure, workload, progress).await,
        }
    };
    let (measured, fault) = match hooks.fault {
        Some(plan) => {
            let (phase, fault) = with_fault(measured, plan, start).await;
            (phase, Some(fault))
        }
        None => (measured.await, None),
    };
    RunOutcome {
        warmup,
        measured,
        fault,
    }
}

#[derive(Debug, Clone, Copy)]
struct PhasePlan {
    first_index: usize,
    count: usize,
    concurrency: usize,
    deadline: Instant,
}

/// Sends one request and records how it ended.
async fn send(
    target: &dyn Target,
    workload: &Workload,
    index: usize,
    start: Instant,
    deadline: Instant,
) -> Record {
    let sent = start.elapsed();
    let outcome =
        match tokio::time::timeout_at(deadline, target.generate(workload.request(index))).await {
            Ok(result) => Outcome::Done(result),
            Err(_elapsed) => Outcome::Cancelled,
        };
    Record {
        index,
        sent: Some(sent),
        ended: Some(start.elapsed()),
        outcome,
    }
}

fn not_started(index: usize) -> Record {
    Record {
        index,
        sent: None,
        ended: None,
        outcome: Outcome::NotStarted,
    }
}

fn finish_phase(mut records: Vec<Record>, start: Instant) -> Phase {
    records.sort_by_key(|r| r.index);
    Phase {
        records,
        wall: start.elapsed(),
    }
}

/// Runs `plan.count` requests on `plan.concurrency` clients. The clients
/// are futures polled together on this task, which keeps the load
/// generator's own CPU use small next to the server it measures.
async fn run_phase(
    target: &dyn Target,
    plan: &PhasePlan,
    workload: &Workload,
    progress: &dyn Progress,
) -> Phase {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let clients = (0..plan.concurrency.min(plan.count)).map(|_| async {
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= plan.count {
                return mine;
            }
            let index = plan.first_index + i;
            let record = if Instant::now() >= plan.deadline {
                not_started(index)
            } else {
                send(target, workload, index, start, plan.deadline).await
            };
            progress.ended(record.timeline().is_some());
            mine.push(record);
        }
    });
    let records = futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten();
    finish_phase(records.collect(), start)
}

/// Sends request `k` at `schedule[k]` after the phase start, with at most
/// `plan.concurrency` in flight. All requests are futures polled together
/// on this task; each waits for its time, then for a slot.
async fn run_open_phase(
    target: &dyn Target,
    plan: &PhasePlan,
    workload: &Workload,
    arrivals: &Arrivals,
    progress: &dyn Progress,
) -> Phase {
    let start = Instant::now();
    let slots = Semaphore::new(plan.concurrency.max(1));
    let schedule = arrivals.schedule(plan.count);
    let requests = schedule.iter().enumerate().map(|(i, offset)| {
        let slots = &slots;
        let index = plan.first_index + i;
        async move {
            let send_at = start.checked_add(*offset).unwrap_or(plan.deadline);
            let record = if send_at >= plan.deadline {
                not_started(index)
            } else {
                tokio::time::sleep_until(send_at).await;
                match tokio::time::timeout_at(plan.deadline, slots.acquire()).await {
                    Ok(Ok(_permit)) => send(target, workload, index, start, plan.deadline).await,
                    _ => not_started(index),
                }
            };
            progress.ended(record.timeline().is_some());
            record
        }
    });
    let records = futures::future::join_all(requests).await;
    finish_phase(records, start)
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::target::GenRequest;
    use futures::future::BoxFuture;
    use futures::FutureExt;

    /// Takes `delay` per request; tracks the most requests in flight at once.
    pub(super) struct Fake {
        delay: Duration,
        in_flight: AtomicUsize,
        pub(super) peak: AtomicUsize,
    }

    impl Fake {
        pub(super) fn new(delay: Duration) -> Self {
            Self {
                delay,
                in_flight: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
            }
        }
    }

    impl Target for Fake {
        fn generate(&self, req: GenRequest) -> BoxFuture<'_, Result<Timeline, RequestError>> {
            async move {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(Timeline {
                    token_times: vec![self.delay / 2],
                    latency: self.delay,
                    output_tokens: u64::from(req.max_tokens),
                    ..Timeline::default()
                })
            }
            .boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::Fake;
    use super::*;

    fn shape(concurrency: usize, requests: usize, warmup: usize, max_s: u64) -> LoadShape {
        LoadShape {
            concurrency,
            requests,
            warmup,
            max_duration: Duration::from_secs(max_s),
            arrivals: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runs_every_request_at_the_given_concurrency() {
        let fake = Fake::new(Duration::from_millis(100));
        let out = run(
            &fake,
            &shape(4, 10, 2, 60),
            &Workload::builtin(5, false),
            Hooks::default(),
        )
        .await;
        assert_eq!(out.warmup.ok(), 2);
        assert_eq!(out.measured.ok(), 10);
        assert_eq!(out.measured.failed(), 0);
        assert_eq!(fake.peak.load(Ordering::SeqCst), 4);
        // Measured indices follow the warm-up ones.
        let idx: Vec<usize> = out.measured.records.iter().map(|r| r.index).collect();
        assert_eq!(idx, (2..12).collect::<Vec<_>>());
        // 10 requests of 100 ms on 4 clients: 3 rounds.
        assert_eq!(out.measured.wall, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_stops_the_run() {
        let fake = Fake::new(Duration::from_secs(4));
        let out = run(
            &fake,
            &shape(2, 10, 0, 10),
            &Workload::builtin(5, false),
            Hooks::default(),
        )
        .await;
        // Rounds end at 4 s and 8 s; the third round is cut at 10 s.
        assert_eq!(out.measured.ok(), 4);
        assert_eq!(out.measured.cancelled(), 2);
        assert_eq!(out.measured.not_started(), 4);
        assert_eq!(out.measured.wall, Duration::from_secs(10));
    }
}

#[cfg(test)]
mod open_loop_tests {
    use super::tests_support::Fake;
    use super::*;

    fn open(rate: f64, concurrency: usize, requests: usize, max_s: u64) -> LoadShape {
        LoadShape {
            concurrency,
            requests,
            warmup: 0,
            max_duration: Duration::from_secs(max_s),
            arrivals: Some(Arrivals {
                rate,
                burstiness: 1.0,
                seed: 1,
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sends_on_schedule_and_overlaps_requests() {
        // 50 requests at 10/s, each 1 s long: open loop keeps ~10 in flight
        // and the run lasts about 5 s + 1 s, whatever the request time.
        let fake = Fake::new(Duration::from_secs(1));
        let shape = open(10.0, 1000, 50, 60);
        let out = run(
            &fake,
            &shape,
            &Workload::builtin(5, false),
            Hooks::default(),
        )
        .await;
        assert_eq!(out.measured.ok(), 50);
        let last = shape
            .arrivals
            .map(|a| a.schedule(50)[49])
            .unwrap_or_default();
        // Timers fire on whole milliseconds.
        let want = last + Duration::from_secs(1);
        let wall = out.measured.wall;
        assert!(
            wall >= want && wall <= want + Duration::from_millis(10),
            "{wall:?}"
        );
        assert!(fake.peak.load(Ordering::SeqCst) > 3);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_caps_in_flight_and_deadline_stops() {
        let fake = Fake::new(Duration::from_secs(3));
        let out = run(
            &fake,
            &open(100.0, 2, 100, 10),
            &Workload::builtin(5, false),
            Hooks::default(),
        )
        .await;
        assert_eq!(fake.peak.load(Ordering::SeqCst), 2);
        // 2 slots of 3 s requests for 10 s: 6 done, 2 cut, the rest unsent.
        assert_eq!(out.measured.ok(), 6);
        assert_eq!(out.measured.cancelled(), 2);
        assert_eq!(out.measured.not_started(), 92);
        assert_eq!(out.measured.wall, Duration::from_secs(10));
    }
}
