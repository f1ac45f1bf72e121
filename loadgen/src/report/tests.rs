use super::*;
use crate::runner::Record;
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
        dataset: DatasetConfig {
            kind: "builtin",
            path: None,
            prompts: 12,
            random_input_len: None,
            random_range_ratio: None,
        },
        check: false,
        fault: None,
    }
}

fn ok(ttft_ms: u64, latency_ms: u64, tokens: u64) -> Result<Timeline, RequestError> {
    Ok(Timeline {
        token_times: vec![Duration::from_millis(ttft_ms)],
        latency: Duration::from_millis(latency_ms),
        output_tokens: tokens,
        prompt_tokens: Some(10),
        ..Timeline::default()
    })
}

fn outcome() -> RunOutcome {
    let measured = Phase {
        records: vec![
            done(1, ok(100, 400, 4)),
            done(2, Err(RequestError::new("http_503", "busy"))),
            done(3, ok(300, 900, 4)),
        ],
        wall: Duration::from_secs(2),
    };
    let warmup = Phase {
        records: vec![done(0, ok(50, 60, 1))],
        ..Phase::default()
    };
    RunOutcome {
        warmup,
        measured,
        fault: None,
    }
}

fn done(index: usize, result: Result<Timeline, RequestError>) -> Record {
    Record {
        index,
        sent: Some(Duration::ZERO),
        ended: Some(Duration::from_millis(900)),
        outcome: Outcome::Done(result),
    }
}

fn build(config: Config, outcome: &RunOutcome) -> Report {
    super::build(
        config,
        outcome,
        &Workload::builtin(4, false),
        Sections::default(),
    )
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

#[test]
fn requested_and_input_tokens_and_optional_sections() {
    let r = build(config(), &outcome());
    // Two successful requests asked for 4 tokens each and read 10 each.
    assert_eq!(r.output_tokens_requested, 8);
    assert_eq!(r.input_tokens, Some(20));
    assert!(r.correctness.is_none() && r.fault.is_none() && r.request_log.is_none());

    let sections = Sections {
        check: true,
        request_log: true,
    };
    let r = super::build(config(), &outcome(), &Workload::builtin(4, false), sections);
    let log = r.request_log.expect("log");
    let endings: Vec<&str> = log.iter().map(|e| e.ending.as_str()).collect();
    assert_eq!(endings, ["ok", "http_503", "ok"]);
    assert_eq!(log[0].ttft_ms, Some(100.0));
    // The built-in prompts carry no expectation and the fake timelines no
    // ids: both compared requests match.
    let c = r.correctness.expect("correctness");
    assert_eq!((c.checked, c.matched), (2, 2));
    assert!(c.clean());
    let v = serde_json::to_value(super::build(
        config(),
        &outcome(),
        &Workload::builtin(4, false),
        sections,
    ))
    .expect("json");
    assert_eq!(v["schema"], "weft-load/v2");
    assert_eq!(v["request_log"][1]["ending"], "http_503");
    assert!(v["fault"].is_null());
}
