//! Prometheus metrics with vLLM's names under a `weft:` prefix, so
//! dashboards and autoscalers built for vLLM map one to one
//! (`vllm:num_requests_running` is `weft:num_requests_running`, and so on).
//!
//! Each server owns its own recorder (no global one), so several servers
//! in one process (tests) keep separate counts.

use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::scheduler::SchedulerStats;

/// vLLM's buckets for time to first token (seconds).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's buckets for inter-token latency (seconds).
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's buckets for request latencies (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// Token-count buckets (1, 2, 5 per decade up to 100k).
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
    50000.0, 100000.0,
];

/// How a request ended, as vLLM's `finished_reason` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishedReason {
    Stop,
    Length,
    Abort,
}

/// The server's metrics.
pub struct Metrics {
    handle: PrometheusHandle,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge,
    gpu_cache_usage: Gauge,
    preemptions: Counter,
    prefix_queries: Counter,
    prefix_hits: Counter,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    success: [Counter; 3],
    ttft: Histogram,
    itl: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    queue_time: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
}

struct Reg<'a> {
    rec: &'a metrics_exporter_prometheus::PrometheusRecorder,
    labels: Vec<Label>,
}

impl Reg<'_> {
    fn key(&self, name: &'static str, extra: &[(&'static str, &'static str)]) -> Key {
        let mut labels = self.labels.clone();
        labels.extend(extra.iter().map(|(k, v)| Label::new(*k, *v)));
        Key::from_parts(name, labels)
    }
    fn meta() -> Metadata<'static> {
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
    }
    fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.rec
            .describe_counter(KeyName::from(name), None, help.into());
        self.rec
            .register_counter(&self.key(name, &[]), &Self::meta())
    }
    fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.rec
            .describe_gauge(KeyName::from(name), None, help.into());
        self.rec.register_gauge(&self.key(name, &[]), &Self::meta())
    }
    fn histogram(&self, name: &'static str, unit: Option<Unit>, help: &'static str) -> Histogram {
        self.rec
            .describe_histogram(KeyName::from(name), unit, help.into());
        self.rec
            .register_histogram(&self.key(name, &[]), &Self::meta())
    }
}

impl Metrics {
    pub fn new(model_name: &str) -> Arc<Self> {
        let mut b = PrometheusBuilder::new();
        for (name, buckets) in [
            ("weft:time_to_first_token_seconds", TTFT_BUCKETS),
            ("weft:inter_token_latency_seconds", ITL_BUCKETS),
            ("weft:time_per_output_token_seconds", ITL_BUCKETS),
            ("weft:e2e_request_latency_seconds", LATENCY_BUCKETS),
            ("weft:request_queue_time_seconds", LATENCY_BUCKETS),
            ("weft:request_prompt_tokens", TOKEN_BUCKETS),
            ("weft:request_generation_tokens", TOKEN_BUCKETS),
        ] {
            b = b
                .set_buckets_for_metric(Matcher::Full(name.into()), buckets)
                .expect("the bucket lists are constant and not empty");
        }
        let rec = b.build_recorder();
        let r = Reg {
            rec: &rec,
            labels: vec![Label::new("model_name", model_name.to_string())],
        };
        let success = ["stop", "length", "abort"].map(|reason| {
            rec.register_counter(
                &r.key("weft:request_success_total", &[("finished_reason", reason)]),
                &Reg::meta(),
            )
        });
        rec.describe_counter(
            KeyName::from("weft:request_success_total"),
            None,
            "Finished requests, by finish reason (stop, length, abort).".into(),
        );
        let secs = Some(Unit::Seconds);
        Arc::new(Metrics {
            running: r.gauge(
                "weft:num_requests_running",
                "Requests in the running batch.",
            ),
            waiting: r.gauge(
                "weft:num_requests_waiting",
                "Requests waiting for admission.",
            ),
            kv_usage: r.gauge("weft:kv_cache_usage_perc", "KV-cache usage (1 = full)."),
            gpu_cache_usage: r.gauge(
                "weft:gpu_cache_usage_perc",
                "KV-cache usage (1 = full); the older vLLM name.",
            ),
            preemptions: r.counter("weft:num_preemptions_total", "Preemptions (KV cache full)."),
            prefix_queries: r.counter(
                "weft:prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache.",
            ),
            prefix_hits: r.counter(
                "weft:prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache.",
            ),
            prompt_tokens: r.counter("weft:prompt_tokens_total", "Prefilled prompt tokens."),
            generation_tokens: r.counter("weft:generation_tokens_total", "Generated tokens."),
            success,
            ttft: r.histogram(
                "weft:time_to_first_token_seconds",
                secs,
                "Time to first token.",
            ),
            itl: r.histogram(
                "weft:inter_token_latency_seconds",
                secs,
                "Time between tokens.",
            ),
            tpot: r.histogram(
                "weft:time_per_output_token_seconds",
                secs,
                "Time per output token (the older vLLM name of the inter-token latency).",
            ),
            e2e: r.histogram(
                "weft:e2e_request_latency_seconds",
                secs,
                "Request latency from arrival to the last token.",
            ),
            queue_time: r.histogram(
                "weft:request_queue_time_seconds",
                secs,
                "Time from arrival to the first admission.",
            ),
            request_prompt_tokens: r.histogram(
                "weft:request_prompt_tokens",
                None,
                "Prompt tokens per finished request.",
            ),
            request_generation_tokens: r.histogram(
                "weft:request_generation_tokens",
                None,
                "Generated tokens per finished request.",
            ),
            handle: rec.handle(),
        })
    }

    /// The Prometheus text exposition, with the scheduler's gauges as of now.
    pub fn render(&self, stats: Option<&SchedulerStats>) -> String {
        if let Some(s) = stats {
            self.running.set(s.running as f64);
            self.waiting.set(s.waiting as f64);
            let usage = s.kv.in_use as f64 / s.kv.total.max(1) as f64;
            self.kv_usage.set(usage);
            self.gpu_cache_usage.set(usage);
            self.preemptions.absolute(s.preemptions);
            self.prefix_queries.absolute(s.kv.prefix_queries);
            self.prefix_hits.absolute(s.kv.prefix_hits);
        }
        self.handle.render()
    }
}

/// One request's latency tracker; lives in the scheduler's sequence.
/// Internal requests (the startup canary) carry a disabled one.
pub struct RequestMetrics {
    m: Option<Arc<Metrics>>,
    arrival: Instant,
    last_token: Option<Instant>,
    admitted: bool,
    done: bool,
}

impl RequestMetrics {
    pub fn new(m: Arc<Metrics>) -> Self {
        RequestMetrics {
            m: Some(m),
            arrival: Instant::now(),
            last_token: None,
            admitted: false,
            done: false,
        }
    }

    /// Counts nothing.
    pub fn disabled() -> Self {
        RequestMetrics {
            m: None,
            arrival: Instant::now(),
            last_token: None,
            admitted: false,
            done: false,
        }
    }

    /// First admission into the running batch.
    pub fn admitted(&mut self, now: Instant) {
        if std::mem::replace(&mut self.admitted, true) {
            return;
        }
        if let Some(m) = &self.m {
            m.queue_time
                .record(now.duration_since(self.arrival).as_secs_f64());
        }
    }

    /// A token was produced; `prompt_len` counts once, with the first.
    pub fn token(&mut self, now: Instant, prompt_len: usize) {
        let prev = self.last_token.replace(now);
        let Some(m) = &self.m else {
            return;
        };
        match prev {
            None => {
                m.ttft
                    .record(now.duration_since(self.arrival).as_secs_f64());
                m.prompt_tokens.increment(prompt_len as u64);
            }
            Some(prev) => {
                let gap = now.duration_since(prev).as_secs_f64();
                m.itl.record(gap);
                m.tpot.record(gap);
            }
        }
        m.generation_tokens.increment(1);
    }

    /// The request ended (normally or not); counted once.
    pub fn finished(&mut self, reason: FinishedReason, prompt: usize, generated: usize) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let Some(m) = &self.m else {
            return;
        };
        let idx = match reason {
            FinishedReason::Stop => 0,
            FinishedReason::Length => 1,
            FinishedReason::Abort => 2,
        };
        m.success[idx].increment(1);
        if reason != FinishedReason::Abort {
            m.e2e.record(self.arrival.elapsed().as_secs_f64());
            m.request_prompt_tokens.record(prompt as f64);
            m.request_generation_tokens.record(generated as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn names_labels_and_counts() {
        let m = Metrics::new("smol");
        let mut r = RequestMetrics::new(m.clone());
        let t0 = Instant::now();
        r.admitted(t0);
        r.token(t0, 7);
        r.token(t0 + std::time::Duration::from_millis(20), 7);
        r.finished(FinishedReason::Length, 7, 2);
        r.finished(FinishedReason::Abort, 7, 2); // ignored: already counted
        let mut stats = SchedulerStats {
            running: 3,
            ..Default::default()
        };
        stats.kv.total = 4;
        stats.kv.in_use = 1;
        stats.kv.prefix_queries = 40;
        stats.kv.prefix_hits = 16;
        let text = m.render(Some(&stats));
        let l = "{model_name=\"smol\"}";
        assert_eq!(
            sample(&text, &format!("weft:prompt_tokens_total{l}")),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, &format!("weft:generation_tokens_total{l}")),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, &format!("weft:num_requests_running{l}")),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, &format!("weft:kv_cache_usage_perc{l}")),
            Some(0.25)
        );
        assert_eq!(
            sample(&text, &format!("weft:prefix_cache_hits_total{l}")),
            Some(16.0)
        );
        let ok = "weft:request_success_total{model_name=\"smol\",finished_reason=\"length\"}";
        assert_eq!(sample(&text, ok), Some(1.0), "{text}");
        let abort = "weft:request_success_total{model_name=\"smol\",finished_reason=\"abort\"}";
        assert_eq!(sample(&text, abort), Some(0.0));
        assert_eq!(
            sample(&text, &format!("weft:time_to_first_token_seconds_count{l}")),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, &format!("weft:inter_token_latency_seconds_count{l}")),
            Some(1.0)
        );
        // A real histogram (buckets), not a summary.
        assert!(text
            .contains("weft:e2e_request_latency_seconds_bucket{model_name=\"smol\",le=\"0.3\"}"));
        assert!(text.contains("# TYPE weft:generation_tokens_total counter"));
    }
}
