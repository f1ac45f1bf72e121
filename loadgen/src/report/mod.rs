//! The results of a run: a JSON document (`--json`) and a one-line summary.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::metrics::{self, Dist, Sample, Slo, Summary};
use crate::runner::{Phase, RunOutcome};
use crate::target::Api;

/// Version tag of the JSON layout; bump it on incompatible changes.
pub const SCHEMA: &str = "weft-load/v1";

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
        cancelled: phase.cancelled,
        not_started: phase.not_started,
        ..Counts::default()
    };
    for (_, r) in &phase.done {
        match r {
            Ok(_) => c.ok += 1,
            Err(e) => {
                c.failed += 1;
                *c.errors.entry(e.code.clone()).or_default() += 1;
                c.error_examples
                    .entry(e.code.clone())
                    .or_insert_with(|| e.message.clone());
            }
        }
    }
    c
}

/// The metric samples of a phase's successful requests.
pub fn samples(phase: &Phase) -> Vec<Sample> {
    phase
        .done
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .filter_map(|t| {
            let times: Vec<f64> = t.token_times.iter().map(|d| d.as_secs_f64()).collect();
            Sample::from_token_times(&times, t.latency.as_secs_f64(), t.output_tokens)
        })
        .collect()
}

/// Builds the report of a run.
pub fn build(config: Config, outcome: &RunOutcome) -> Report {
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
mod tests {
    use super::*;
    use crate::target::{RequestError, Timeline};
    use std::time::Duration;

    fn config() -> Config {
        Config {
            target: "http://127.0.0.1:8080".into(),
            api: Api::Openai,
            model: Some("m".into()),
            concurrency: 2,
            requests: 3,
            warmup: 1,
            max_tokens: 4,
            max_duration_s: 60.0,
            unique_prompts: false,
            request_rate: None,
            burstiness: 1.0,
            seed: 0,
            goodput_slo_ms: SloMs::default(),
            price_per_gpu_hour: None,
            gpus: 1,
        }
    }

    fn ok(ttft_ms: u64, latency_ms: u64, tokens: u64) -> Result<Timeline, RequestError> {
        Ok(Timeline {
            token_times: vec![Duration::from_millis(ttft_ms)],
            latency: Duration::from_millis(latency_ms),
            output_tokens: tokens,
        })
    }

    fn outcome() -> RunOutcome {
        let measured = Phase {
            done: vec![
                (1, ok(100, 400, 4)),
                (2, Err(RequestError::new("http_503", "busy"))),
                (3, ok(300, 900, 4)),
            ],
            cancelled: 0,
            not_started: 0,
            wall: Duration::from_secs(2),
        };
        let warmup = Phase {
            done: vec![(0, ok(50, 60, 1))],
            ..Phase::default()
        };
        RunOutcome { warmup, measured }
    }

    #[test]
    fn report_counts_and_metrics() {
        let r = build(config(), &outcome());
        assert_eq!(r.warmup.ok, 1);
        assert_eq!((r.requests.ok, r.requests.failed), (2, 1));
        assert_eq!(r.requests.errors.get("http_503"), Some(&1));
        assert_eq!(r.output_tokens, 8);
        assert_eq!(r.output_tokens_per_s, Some(4.0));
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-6);
        assert!(close(r.ttft_ms.mean, 200.0));
        assert!(close(r.ttft_ms.p50, 200.0));
        // TPOT: (400-100)/3 = 100 ms and (900-300)/3 = 200 ms.
        assert!(close(r.tpot_ms.mean, 150.0));
        assert!(close(r.e2e_latency_ms.p50, 650.0));
    }

    #[test]
    fn json_layout() {
        let v = serde_json::to_value(build(config(), &outcome())).expect("json");
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["config"]["api"], "openai");
        assert_eq!(v["requests"]["errors"]["http_503"], 1);
        assert_eq!(v["requests"]["error_examples"]["http_503"], "busy");
        for key in ["ttft_ms", "tpot_ms", "e2e_latency_ms"] {
            for stat in ["mean", "p50", "p90", "p99"] {
                assert!(v[key][stat].is_number(), "{key}.{stat}");
            }
        }
        assert!(v["wall_time_s"].is_number());
        // One token event per request: no inter-token gap.
        assert!(v["itl_ms"]["mean"].is_null());
        assert!(v["goodput_requests_per_s"].is_null());
        assert!(v["cost_per_million_output_tokens"].is_null());
    }

    #[test]
    fn goodput_and_cost_in_the_report() {
        let mut c = config();
        c.goodput_slo_ms = SloMs {
            ttft: Some(200.0),
            ..SloMs::default()
        };
        c.price_per_gpu_hour = Some(3.6);
        c.gpus = 2;
        let r = build(c, &outcome());
        // TTFT 100 ms meets 200 ms, 300 ms does not; 1 good in 2 s.
        assert_eq!(r.good_requests, Some(1));
        assert_eq!(r.goodput_requests_per_s, Some(0.5));
        // 3.6 * 2 * (2 s / 3600) = 0.004 for 8 tokens = 500 per million.
        let cost = r.cost_per_million_output_tokens.unwrap_or_default();
        assert!((cost - 500.0).abs() < 1e-6, "{cost}");
        let line = summary_line(&r);
        assert!(line.contains("goodput 0.50 req/s"), "{line}");
    }

    #[test]
    fn summary_line_mentions_failures() {
        let line = summary_line(&build(config(), &outcome()));
        assert!(line.contains("2/3 ok"), "{line}");
        assert!(line.contains("4.0 tok/s"), "{line}");
        assert!(line.contains("http_503=1"), "{line}");
    }
}
