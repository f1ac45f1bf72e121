//! The load shape: a fixed number of concurrent clients, each sending its
//! next request as soon as its previous one finished, until the request
//! budget is spent or the run's deadline passes. Warm-up requests run first,
//! at the same concurrency, and are reported apart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

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
    let measured = run_phase(target, &measure, workload).await;
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
mod tests {
    use super::*;
    use crate::target::GenRequest;
    use futures::future::BoxFuture;
    use futures::FutureExt;
    use std::sync::atomic::AtomicUsize;

    /// Takes `delay` per request; tracks the most requests in flight at once.
    struct Fake {
        delay: Duration,
        in_flight: AtomicUsize,
        peak: AtomicUsize,
    }

    impl Fake {
        fn new(delay: Duration) -> Self {
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

    fn shape(concurrency: usize, requests: usize, warmup: usize, max_s: u64) -> LoadShape {
        LoadShape {
            concurrency,
            requests,
            warmup,
            max_duration: Duration::from_secs(max_s),
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
