//! The results of a run: a JSON document (`--json`) and a one-line summary.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::{self, Correctness};
use crate::fault::{self, EndingsByRelation, FaultRun};
use crate::metrics::{self, Dist, Sample, Slo, Summary};
use crate::runner::{Outcome, Phase, RunOutcome};
use crate::target::Api;
use crate::workload::Workload;

/// Version tag of the JSON layout; bump it on incompatible changes.
pub const SCHEMA: &str = "weft-load/v2";

/// The run's settings, echoed in the report.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub target: String,
    pub api: Api,
    /// Model name sent with each request (for gRPC, `null` = served model).
    pub model: Option<String>,
    pub concurrency: usize,
    pub requests: usize,
    pub warmup: usize,
    pub max_tokens: u32,
    pub max_duration_s: f64,
    pub unique_prompts: bool,
    /// Open-loop arrival rate in requests/s; `null` = closed loop.
    pub request_rate: Option<f64>,
    /// Gamma shape of the inter-arrival times (1.0 = Poisson).
    pub burstiness: f64,
    /// Seed of the arrival times.
    pub seed: u64,
    /// Goodput objectives in milliseconds; all `null` = goodput not computed.
    pub goodput_slo_ms: SloMs,
    /// Price of one GPU for one hour; `null` = cost not computed.
    pub price_per_gpu_hour: Option<f64>,
    pub gpus: u32,
    /// Where the prompts came from.
    pub dataset: DatasetConfig,
    /// Correctness mode (`--check`).
    pub check: bool,
    /// The fault injected (`--fault-at-s`, `--fault-cmd`); `null` = none.
    pub fault: Option<FaultConfig>,
}

/// The dataset settings, echoed in the report.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetConfig {
    /// `builtin`, `random`, `conversations` or `jsonl`.
    pub kind: &'static str,
    /// The file read (`jsonl`, or a conversation file); `null` otherwise.
    pub path: Option<String>,
    /// Distinct prompts in the dataset.
    pub prompts: usize,
    /// `random`: mean prompt length and the range ratio; `null` otherwise.
    pub random_input_len: Option<u32>,
    pub random_range_ratio: Option<f64>,
}

/// The fault settings, echoed in the report.
#[derive(Debug, Clone, Serialize)]
pub struct FaultConfig {
    pub at_s: f64,
    pub command: String,
}

/// Goodput objectives in milliseconds (`--goodput ttft:MS` etc.).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SloMs {
    pub ttft: Option<f64>,
    pub tpot: Option<f64>,
    pub e2el: Option<f64>,
}

impl SloMs {
    /// The objectives in seconds.
    pub fn to_slo(self) -> Slo {
        let s = |v: Option<f64>| v.map(|ms| ms / 1e3);
        Slo {
            ttft_s: s(self.ttft),
            tpot_s: s(self.tpot),
            e2el_s: s(self.e2el),
        }
    }
}

/// The whole JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub config: Config,
    pub warmup: Counts,
    /// The measured requests; every metric below is over these.
    pub requests: Counts,
    pub output_tokens: u64,
    /// Output tokens the successful measured requests asked for (every
    /// target ignores EOS, so this equals `output_tokens` on a server that
    /// generates exactly what is asked).
    pub output_tokens_requested: u64,
    /// Prompt tokens of the successful measured requests, from the
    /// servers' usage; `null` when no usage reported them.
    pub input_tokens: Option<u64>,
    /// Wall time of the measured phase.
    pub wall_time_s: f64,
    pub output_tokens_per_s: Option<f64>,
    pub requests_per_s: Option<f64>,
    pub ttft_ms: DistMs,
    pub tpot_ms: DistMs,
    /// Inter-token latency: every gap between consecutive tokens.
    pub itl_ms: DistMs,
    pub e2e_latency_ms: DistMs,
    /// Requests meeting every goodput SLO; `null` without SLOs.
    pub good_requests: Option<usize>,
    /// `good_requests / wall_time_s`; `null` without SLOs.
    pub goodput_requests_per_s: Option<f64>,
    /// `price * gpus * wall_hours / (output_tokens / 1e6)`; `null` without a price.
    pub cost_per_million_output_tokens: Option<f64>,
    /// `--check`: outputs compared with the expected ones; `null` otherwise.
    pub correctness: Option<Correctness>,
    /// The injected fault and how the requests ended around it.
    pub fault: Option<FaultReport>,
    /// Every measured request (with `--request-log` or a fault); `null`
    /// otherwise.
    pub request_log: Option<Vec<LogEntry>>,
}

/// The fault section of a report.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    #[serde(flatten)]
    pub run: FaultRun,
    /// Endings (`ok`, an error code, `cancelled`, `not_started`) counted for
    /// requests that `finished_before` the fault, were `in_flight` when it
    /// started, were `sent_after` it, or were `not_sent`.
    pub endings: EndingsByRelation,
}

/// One measured request, for the request log.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub index: usize,
    /// Sent and ended, seconds into the measured phase; `null` if never sent.
    pub sent_s: Option<f64>,
    pub ended_s: Option<f64>,
    /// `ok`, an error code, `cancelled` or `not_started`.
    pub ending: String,
    /// Output tokens of a successful request, else 0.
    pub output_tokens: u64,
    pub ttft_ms: Option<f64>,
}

/// Request outcomes of one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    /// In flight when `--max-duration-s` ran out.
    pub cancelled: usize,
    /// Never sent because `--max-duration-s` ran out.
    pub not_started: usize,
    /// Failed requests by code: `http_<status>`, `grpc_<Code>`, `connect`, ...
    pub errors: BTreeMap<String, usize>,
    /// The first message seen for each error code.
    pub error_examples: BTreeMap<String, String>,
}

/// Mean and percentiles in milliseconds; `null` without samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DistMs {
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

fn ms(s: Option<f64>) -> Option<f64> {
    s.map(|s| s * 1e3)
}

impl From<Dist> for DistMs {
    fn from(d: Dist) -> Self {
        Self {
            mean: ms(d.mean),
            p50: ms(d.p50),
            p90: ms(d.p90),
            p99: ms(d.p99),
        }
    }
}

/// Counts the outcomes of a phase.
pub fn counts(phase: &Phase) -> Counts {
    let mut c = Counts {
        ok: phase.ok(),
        cancelled: phase.cancelled(),
        not_started: phase.not_started(),
        ..Counts::default()
    };
    for r in &phase.records {
        if let Outcome::Done(Err(e)) = &r.outcome {
            c.failed += 1;
            *c.errors.entry(e.code.clone()).or_default() += 1;
            c.error_examples
                .entry(e.code.clone())
                .or_insert_with(|| e.message.clone());
        }
    }
    c
}

/// The metric samples of a phase's successful requests.
pub fn samples(phase: &Phase) -> Vec<Sample> {
    phase
        .timelines()
        .filter_map(|(_, t)| {
            let times: Vec<f64> = t.token_times.iter().map(|d| d.as_secs_f64()).collect();
            Sample::from_token_times(&times, t.latency.as_secs_f64(), t.output_tokens)
        })
        .collect()
}

/// Every request of a phase, for the request log.
pub fn request_log(phase: &Phase) -> Vec<LogEntry> {
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
    phase
        .records
        .iter()
        .map(|r| LogEntry {
            index: r.index,
            sent_s: secs(r.sent),
            ended_s: secs(r.ended),
            ending: fault::ending(&r.outcome),
            output_tokens: r.timeline().map_or(0, |t| t.output_tokens),
            ttft_ms: r
                .timeline()
                .and_then(|t| t.ttft())
                .map(|d| d.as_secs_f64() * 1e3),
        })
        .collect()
}

/// What a report includes besides the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sections {
    /// Compare outputs with the workload's expectations.
    pub check: bool,
    /// Log every request (always done with a fault).
    pub request_log: bool,
}

/// Builds the report of a run.
pub fn build(
    config: Config,
    outcome: &RunOutcome,
    workload: &Workload,
    sections: Sections,
) -> Report {
    let samples = samples(&outcome.measured);
    let wall_s = outcome.measured.wall.as_secs_f64();
    let summary: Summary = metrics::summarize(&samples, wall_s);
    let goodput = metrics::goodput(&samples, &config.goodput_slo_ms.to_slo(), wall_s);
    let cost = config.price_per_gpu_hour.and_then(|price| {
        metrics::cost_per_million_tokens(price, config.gpus, wall_s, summary.output_tokens)
    });
    Report {
        schema: SCHEMA,
        config,
        warmup: counts(&outcome.warmup),
        requests: counts(&outcome.measured),
        output_tokens: summary.output_tokens,
        output_tokens_requested: outcome
            .measured
            .timelines()
            .map(|(i, _)| u64::from(workload.max_tokens(i)))
            .sum(),
        input_tokens: outcome
            .measured
            .timelines()
            .filter_map(|(_, t)| t.prompt_tokens)
            .reduce(|a, b| a + b),
        wall_time_s: summary.wall_s,
        output_tokens_per_s: summary.output_tokens_per_s,
        requests_per_s: summary.requests_per_s,
        ttft_ms: summary.ttft.into(),
        tpot_ms: summary.tpot.into(),
        itl_ms: summary.itl.into(),
        e2e_latency_ms: summary.e2e_latency.into(),
        good_requests: goodput.map(|(good, _)| good),
        goodput_requests_per_s: goodput.and_then(|(_, per_s)| per_s),
        cost_per_million_output_tokens: cost,
        correctness: sections
            .check
            .then(|| check::check_phase(&outcome.measured, workload)),
        fault: outcome.fault.as_ref().map(|run| FaultReport {
            run: run.clone(),
            endings: fault::endings(&outcome.measured, run),
        }),
        request_log: (sections.request_log || outcome.fault.is_some())
            .then(|| request_log(&outcome.measured)),
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// One line for humans.
pub fn summary_line(r: &Report) -> String {
    let c = &r.config;
    let req = &r.requests;
    let load = match c.request_rate {
        Some(rate) => format!("rate={rate}/s c<={}", c.concurrency),
        None => format!("c={}", c.concurrency),
    };
    let mut line = format!(
        "{} {}: {}/{} ok, {} tok in {:.2}s = {} tok/s | TTFT p50 {} ms p99 {} ms | \
         TPOT {} ms | ITL p50 {} ms | E2E p50 {} ms p99 {} ms",
        c.target,
        load,
        req.ok,
        c.requests,
        r.output_tokens,
        r.wall_time_s,
        num(r.output_tokens_per_s, 1),
        num(r.ttft_ms.p50, 1),
        num(r.ttft_ms.p99, 1),
        num(r.tpot_ms.mean, 2),
        num(r.itl_ms.p50, 2),
        num(r.e2e_latency_ms.p50, 0),
        num(r.e2e_latency_ms.p99, 0),
    );
    if let Some(g) = r.goodput_requests_per_s {
        line.push_str(&format!(" | goodput {g:.2} req/s"));
    }
    if let Some(cost) = r.cost_per_million_output_tokens {
        line.push_str(&format!(" | {cost:.3}/M tok"));
    }
    if let Some(c) = &r.correctness {
        line.push_str(&format!(
            " | check: {}/{} match, {} mismatched, {} lost, {} duplicated",
            c.matched, c.checked, c.mismatched, c.lost, c.duplicated
        ));
    }
    if req.failed + req.cancelled + req.not_started > 0 {
        let errors: Vec<String> = req.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line.push_str(&format!(
            " | failed {} [{}] cancelled {} not started {}",
            req.failed,
            errors.join(" "),
            req.cancelled,
            req.not_started
        ));
    }
    line
}

#[cfg(test)]
mod tests;
