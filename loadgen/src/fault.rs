//! Fault injection: `--fault-at-s S --fault-cmd CMD` runs `sh -c CMD` S
//! seconds into the measured phase (for example `kill -9` of a worker) and
//! the report then says how every request ended, grouped by when it ran
//! relative to the fault.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::runner::{Outcome, Phase, Record};

/// The fault to inject.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// When, from the start of the measured phase.
    pub at: Duration,
    /// Run with `sh -c`.
    pub command: String,
    /// The command is killed after this long.
    pub timeout: Duration,
}

/// What the fault command did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FaultRun {
    /// Planned time, seconds into the measured phase.
    pub at_s: f64,
    /// When the command started and ended; `null` when the measured phase
    /// was over before its time came (the command then did not run).
    pub started_s: Option<f64>,
    pub ended_s: Option<f64>,
    /// Its exit status; `null` if it did not run, was killed by a signal or
    /// timed out.
    pub exit_code: Option<i32>,
    /// The end of its standard output and error (at most 2000 characters).
    pub output: String,
    /// Why it could not run or finish, if so.
    pub error: Option<String>,
}

/// Runs `phase` and, `plan.at` after `start`, the fault command beside it.
/// If the phase ends first the command does not run; if the command is
/// still running when the phase ends, it is waited for (up to its timeout).
pub async fn with_fault<F: Future<Output = Phase>>(
    phase: F,
    plan: &FaultPlan,
    start: Instant,
) -> (Phase, FaultRun) {
    let at = start + plan.at;
    let fault = async {
        tokio::time::sleep_until(at).await;
        run_command(plan, start).await
    };
    tokio::pin!(phase);
    tokio::pin!(fault);
    let mut done = None;
    let phase = loop {
        tokio::select! {
            p = &mut phase => break p,
            f = &mut fault, if done.is_none() => done = Some(f),
        }
    };
    let run = match done {
        Some(run) => run,
        None if Instant::now() >= at => fault.await,
        None => FaultRun {
            at_s: plan.at.as_secs_f64(),
            error: Some("the measured phase ended before the fault time".into()),
            ..FaultRun::default()
        },
    };
    (phase, run)
}

async fn run_command(plan: &FaultPlan, start: Instant) -> FaultRun {
    let mut run = FaultRun {
        at_s: plan.at.as_secs_f64(),
        started_s: Some(start.elapsed().as_secs_f64()),
        ..FaultRun::default()
    };
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&plan.command)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(plan.timeout, child).await {
        Ok(Ok(out)) => {
            run.exit_code = out.status.code();
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            run.output = tail(&text, 2000);
        }
        Ok(Err(e)) => run.error = Some(format!("cannot run sh: {e}")),
        Err(_) => run.error = Some(format!("killed after {:?}", plan.timeout)),
    }
    run.ended_s = Some(start.elapsed().as_secs_f64());
    run
}

fn tail(s: &str, max_chars: usize) -> String {
    let n = s.chars().count();
    s.chars().skip(n.saturating_sub(max_chars)).collect()
}

/// When a request ran relative to the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Relation {
    /// Ended before the fault command started.
    FinishedBefore,
    /// Sent before the fault started and still running then.
    InFlight,
    /// Sent after the fault started.
    SentAfter,
    /// Never sent.
    NotSent,
}

impl Relation {
    fn key(self) -> &'static str {
        match self {
            Relation::FinishedBefore => "finished_before",
            Relation::InFlight => "in_flight",
            Relation::SentAfter => "sent_after",
            Relation::NotSent => "not_sent",
        }
    }
}

/// How `record` ran relative to a fault that started at `fault_s`.
pub fn relation(record: &Record, fault_s: f64) -> Relation {
    match (record.sent, record.ended) {
        (Some(sent), _) if sent.as_secs_f64() >= fault_s => Relation::SentAfter,
        (Some(_), Some(ended)) if ended.as_secs_f64() < fault_s => Relation::FinishedBefore,
        (Some(_), _) => Relation::InFlight,
        (None, _) => Relation::NotSent,
    }
}

/// A request's ending in one word: `ok`, its error code, `cancelled` or
/// `not_started`.
pub fn ending(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Done(Ok(_)) => "ok".into(),
        Outcome::Done(Err(e)) => e.code.clone(),
        Outcome::Cancelled => "cancelled".into(),
        Outcome::NotStarted => "not_started".into(),
    }
}

/// Counts of endings for each relation to the fault, e.g.
/// `{"in_flight": {"grpc_Unavailable": 3}, "finished_before": {"ok": 5}}`.
pub type EndingsByRelation = BTreeMap<&'static str, BTreeMap<String, usize>>;

/// Groups the measured phase's requests by their relation to the fault.
pub fn endings(phase: &Phase, run: &FaultRun) -> EndingsByRelation {
    let mut out = EndingsByRelation::new();
    let fault_s = run.started_s.unwrap_or(f64::INFINITY);
    for r in &phase.records {
        let group = out.entry(relation(r, fault_s).key()).or_default();
        *group.entry(ending(&r.outcome)).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{RequestError, Timeline};

    fn record(
        index: usize,
        sent_ms: Option<u64>,
        ended_ms: Option<u64>,
        outcome: Outcome,
    ) -> Record {
        Record {
            index,
            sent: sent_ms.map(Duration::from_millis),
            ended: ended_ms.map(Duration::from_millis),
            outcome,
        }
    }

    fn plan(at_ms: u64, command: &str) -> FaultPlan {
        FaultPlan {
            at: Duration::from_millis(at_ms),
            command: command.into(),
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn requests_are_grouped_by_when_they_ran() {
        let ok = || Outcome::Done(Ok(Timeline::default()));
        let down = || Outcome::Done(Err(RequestError::new("grpc_Unavailable", "gone")));
        let phase = Phase {
            records: vec![
                record(0, Some(0), Some(900), ok()),
                record(1, Some(500), Some(1500), down()),
                record(2, Some(800), Some(3000), Outcome::Cancelled),
                record(3, Some(1200), Some(1210), down()),
                record(4, None, None, Outcome::NotStarted),
            ],
            wall: Duration::from_secs(3),
        };
        let run = FaultRun {
            started_s: Some(1.0),
            ..FaultRun::default()
        };
        let e = endings(&phase, &run);
        assert_eq!(e["finished_before"]["ok"], 1);
        assert_eq!(e["in_flight"]["grpc_Unavailable"], 1);
        assert_eq!(e["in_flight"]["cancelled"], 1);
        assert_eq!(e["sent_after"]["grpc_Unavailable"], 1);
        assert_eq!(e["not_sent"]["not_started"], 1);
        assert_eq!(e.values().flat_map(|g| g.values()).sum::<usize>(), 5);
    }

    #[tokio::test]
    async fn command_runs_at_its_time_beside_the_phase() {
        let start = Instant::now();
        let phase = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Phase::default()
        };
        let (_, run) = with_fault(phase, &plan(100, "echo hit; exit 3"), start).await;
        assert_eq!(run.exit_code, Some(3));
        assert_eq!(run.output, "hit\n");
        let started = run.started_s.unwrap_or_default();
        assert!((0.1..0.4).contains(&started), "{started}");
        assert!(run.error.is_none());
    }

    #[tokio::test]
    async fn fault_after_the_phase_does_not_run_and_slow_commands_are_killed() {
        let start = Instant::now();
        let (_, run) = with_fault(
            async { Phase::default() },
            &plan(5000, "touch /nonexistent/x"),
            start,
        )
        .await;
        assert_eq!(run.started_s, None);
        assert!(run
            .error
            .is_some_and(|e| e.contains("before the fault time")));

        let mut slow = plan(0, "sleep 30");
        slow.timeout = Duration::from_millis(200);
        let t0 = std::time::Instant::now();
        let (_, run) = with_fault(async { Phase::default() }, &slow, Instant::now()).await;
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(run.error.is_some_and(|e| e.contains("killed")));
        assert_eq!(run.exit_code, None);
    }
}
