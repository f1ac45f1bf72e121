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

/// What became of the requests of one phase.
#[derive(Debug, Default)]
pub struct Phase {
    /// Finished requests, by request index.
    pub done: Vec<(usize, Result<Timeline, RequestError>)>,
    /// Requests in flight when the deadline passed.
    pub cancelled: usize,
    /// Requests never sent because the deadline had passed.
    pub not_started: usize,
    /// From the first send until the last request finished (or the deadline).
    pub wall: Duration,
}

impl Phase {
    pub fn ok(&self) -> usize {
        self.done.iter().filter(|(_, r)| r.is_ok()).count()
    }

    pub fn failed(&self) -> usize {
        self.done.len() - self.ok()
    }
}

/// The warm-up and the measured phase of a run.
#[derive(Debug)]
pub struct RunOutcome {
    pub warmup: Phase,
    pub measured: Phase,
}

/// Applies `shape` to `target`.
pub async fn run(target: &dyn Target, shape: &LoadShape, workload: &Workload) -> RunOutcome {
    let deadline = Instant::now() + shape.max_duration;
    let warm = PhasePlan {
        first_index: 0,
        count: shape.warmup,
        concurrency: shape.concurrency,
        deadline,
    };
    let warmup = run_phase(target, &warm, workload).await;
    let measure = PhasePlan {
        first_index: shape.warmup,
        count: shape.requests,
        ..warm
    };
    let measured = match &shape.arrivals {
        Some(a) => run_open_phase(target, &measure, workload, a).await,
        None => run_phase(target, &measure, workload).await,
    };
    RunOutcome { warmup, measured }
}

#[derive(Debug, Clone, Copy)]
struct PhasePlan {
    first_index: usize,
    count: usize,
    concurrency: usize,
    deadline: Instant,
}

/// Runs `plan.count` requests on `plan.concurrency` clients. The clients
/// are futures polled together on this task, which keeps the load
/// generator's own CPU use small next to the server it measures.
async fn run_phase(target: &dyn Target, plan: &PhasePlan, workload: &Workload) -> Phase {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let clients =
        (0..plan.concurrency.min(plan.count)).map(|_| client(target, plan, workload, &next));
    let mut phase = Phase::default();
    for c in futures::future::join_all(clients).await {
        phase.done.extend(c.done);
        phase.cancelled += c.cancelled;
        phase.not_started += c.not_started;
    }
    phase.done.sort_by_key(|(i, _)| *i);
    phase.wall = start.elapsed();
    phase
}

/// What became of one open-loop request.
enum Fate {
    Done(usize, Result<Timeline, RequestError>),
    Cancelled,
    NotStarted,
}

/// Sends request `k` at `schedule[k]` after the phase start, with at most
/// `plan.concurrency` in flight. All requests are futures polled together
/// on this task; each waits for its time, then for a slot.
async fn run_open_phase(
    target: &dyn Target,
    plan: &PhasePlan,
    workload: &Workload,
    arrivals: &Arrivals,
) -> Phase {
    let start = Instant::now();
    let slots = Semaphore::new(plan.concurrency.max(1));
    let schedule = arrivals.schedule(plan.count);
    let requests = schedule.iter().enumerate().map(|(i, offset)| {
        let slots = &slots;
        async move {
            let send_at = start.checked_add(*offset).unwrap_or(plan.deadline);
            if send_at >= plan.deadline {
                return Fate::NotStarted;
            }
            tokio::time::sleep_until(send_at).await;
            let Ok(Ok(_permit)) = tokio::time::timeout_at(plan.deadline, slots.acquire()).await
            else {
                return Fate::NotStarted;
            };
            let index = plan.first_index + i;
            let req = workload.request(index);
            match tokio::time::timeout_at(plan.deadline, target.generate(req)).await {
                Ok(result) => Fate::Done(index, result),
                Err(_elapsed) => Fate::Cancelled,
            }
        }
    });
    let mut phase = Phase::default();
    for fate in futures::future::join_all(requests).await {
        match fate {
            Fate::Done(i, r) => phase.done.push((i, r)),
            Fate::Cancelled => phase.cancelled += 1,
            Fate::NotStarted => phase.not_started += 1,
        }
    }
    phase.done.sort_by_key(|(i, _)| *i);
    phase.wall = start.elapsed();
    phase
}

/// One client: takes the next request index until none is left.
async fn client(
    target: &dyn Target,
    plan: &PhasePlan,
    workload: &Workload,
    next: &AtomicUsize,
) -> Phase {
    let mut mine = Phase::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.count {
            return mine;
        }
        if Instant::now() >= plan.deadline {
            mine.not_started += 1;
            continue;
        }
        let index = plan.first_index + i;
        let req = workload.request(index);
        match tokio::time::timeout_at(plan.deadline, target.generate(req)).await {
            Ok(result) => mine.done.push((index, result)),
            Err(_elapsed) => mine.cancelled += 1,
        }
    }
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
        let out = run(&fake, &shape(4, 10, 2, 60), &Workload::new(5, false)).await;
        assert_eq!(out.warmup.ok(), 2);
        assert_eq!(out.measured.ok(), 10);
        assert_eq!(out.measured.failed(), 0);
        assert_eq!(fake.peak.load(Ordering::SeqCst), 4);
        // Measured indices follow the warm-up ones.
        let idx: Vec<usize> = out.measured.done.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, (2..12).collect::<Vec<_>>());
        // 10 requests of 100 ms on 4 clients: 3 rounds.
        assert_eq!(out.measured.wall, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_stops_the_run() {
        let fake = Fake::new(Duration::from_secs(4));
        let out = run(&fake, &shape(2, 10, 0, 10), &Workload::new(5, false)).await;
        // Rounds end at 4 s and 8 s; the third round is cut at 10 s.
        assert_eq!(out.measured.ok(), 4);
        assert_eq!(out.measured.cancelled, 2);
        assert_eq!(out.measured.not_started, 4);
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
        let out = run(&fake, &shape, &Workload::new(5, false)).await;
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
        let out = run(&fake, &open(100.0, 2, 100, 10), &Workload::new(5, false)).await;
        assert_eq!(fake.peak.load(Ordering::SeqCst), 2);
        // 2 slots of 3 s requests for 10 s: 6 done, 2 cut, the rest unsent.
        assert_eq!(out.measured.ok(), 6);
        assert_eq!(out.measured.cancelled, 2);
        assert_eq!(out.measured.not_started, 92);
        assert_eq!(out.measured.wall, Duration::from_secs(10));
    }
}
