//! Pure metric math over finished requests: percentiles, TTFT, TPOT,
//! end-to-end latency and throughput. No clocks and no I/O, so every
//! function here is tested on hand-made timelines.
//!
//! Definitions follow vLLM's `benchmark_serving`:
//! - TTFT: time from sending the request to the first output token.
//! - TPOT: `(latency - ttft) / (output_tokens - 1)` per request, averaged over
//!   the requests with at least two output tokens.
//! - Output throughput: all output tokens of the measured requests divided by
//!   the wall time of the measured phase.
//! - ITL: every gap between two consecutive token events of a request, pooled
//!   over all requests (one distribution of all gaps, not of per-request means).
//! - Goodput: completed requests meeting every given SLO (TTFT, TPOT, e2e
//!   latency; `<=`), divided by the wall time; a one-token request counts as
//!   TPOT 0 there.
//! - Cost per million output tokens:
//!   `price_per_gpu_hour * gpus * (wall_s / 3600) / (output_tokens / 1e6)`.
//! - Percentiles: linear interpolation between closest ranks (numpy's default).

/// One successful request, in seconds relative to when it was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Time to first token.
    pub ttft_s: f64,
    /// End-to-end latency: until the last byte of the response.
    pub latency_s: f64,
    /// Output tokens the request produced.
    pub output_tokens: u64,
    /// Gaps between consecutive token events (inter-token latencies).
    pub itl_s: Vec<f64>,
}

impl Sample {
    /// A sample from the arrival times of a request's token events
    /// (seconds since it was sent, in order) and its end-to-end latency.
    /// `None` without any token.
    pub fn from_token_times(
        token_times_s: &[f64],
        latency_s: f64,
        output_tokens: u64,
    ) -> Option<Self> {
        let ttft_s = *token_times_s.first()?;
        Some(Self {
            ttft_s,
            latency_s,
            output_tokens,
            itl_s: token_times_s.windows(2).map(|w| w[1] - w[0]).collect(),
        })
    }
}

/// Service level objectives for goodput, in seconds; `None` = not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Slo {
    pub ttft_s: Option<f64>,
    pub tpot_s: Option<f64>,
    pub e2el_s: Option<f64>,
}

impl Slo {
    /// True when no objective is set (goodput is then not reported).
    pub fn is_empty(&self) -> bool {
        self.ttft_s.is_none() && self.tpot_s.is_none() && self.e2el_s.is_none()
    }

    /// Whether `s` meets every objective that is set.
    pub fn met_by(&self, s: &Sample) -> bool {
        let ok = |limit: Option<f64>, v: f64| limit.is_none_or(|l| v <= l);
        ok(self.ttft_s, s.ttft_s)
            && ok(self.tpot_s, tpot_s(s).unwrap_or(0.0))
            && ok(self.e2el_s, s.latency_s)
    }
}

/// Mean and percentiles of one quantity, in seconds; `None` without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dist {
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// Aggregates of the measured phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Successful requests.
    pub ok: usize,
    /// Output tokens over all successful requests.
    pub output_tokens: u64,
    /// Wall time of the measured phase.
    pub wall_s: f64,
    /// `output_tokens / wall_s`.
    pub output_tokens_per_s: Option<f64>,
    /// `ok / wall_s`.
    pub requests_per_s: Option<f64>,
    pub ttft: Dist,
    /// TPOT over requests with at least two output tokens.
    pub tpot: Dist,
    /// All inter-token gaps of all requests.
    pub itl: Dist,
    pub e2e_latency: Dist,
}

/// Arithmetic mean; `None` for an empty slice.
pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(values.iter().sum::<f64>() / values.len() as f64)
}

/// The `p`-th percentile (0..=100) with linear interpolation between the
/// closest ranks, as `numpy.percentile` computes it by default. `None` for an
/// empty slice. The input need not be sorted.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Mean, p50, p90 and p99 of `values`.
pub fn dist(values: &[f64]) -> Dist {
    Dist {
        mean: mean(values),
        p50: percentile(values, 50.0),
        p90: percentile(values, 90.0),
        p99: percentile(values, 99.0),
    }
}

/// Requests meeting every objective of `slo`, and those per second of
/// `wall_s`; `None` when `slo` sets no objective.
pub fn goodput(samples: &[Sample], slo: &Slo, wall_s: f64) -> Option<(usize, Option<f64>)> {
    if slo.is_empty() {
        return None;
    }
    let good = samples.iter().filter(|s| slo.met_by(s)).count();
    Some((good, rate(good as f64, wall_s)))
}

/// Cost in currency units per million output tokens:
/// `price_per_gpu_hour * gpus * (wall_s / 3600) / (output_tokens / 1e6)`.
/// `None` without output tokens or wall time.
pub fn cost_per_million_tokens(
    price_per_gpu_hour: f64,
    gpus: u32,
    wall_s: f64,
    output_tokens: u64,
) -> Option<f64> {
    if output_tokens == 0 || wall_s <= 0.0 {
        return None;
    }
    let dollars = price_per_gpu_hour * f64::from(gpus) * wall_s / 3600.0;
    Some(dollars / (output_tokens as f64 / 1e6))
}

/// Time per output token after the first, vLLM's definition:
/// `(latency - ttft) / (output_tokens - 1)`. `None` below two tokens.
pub fn tpot_s(sample: &Sample) -> Option<f64> {
    if sample.output_tokens < 2 {
        return None;
    }
    Some((sample.latency_s - sample.ttft_s) / (sample.output_tokens - 1) as f64)
}

/// `count / wall_s`; `None` when no time passed.
pub fn rate(count: f64, wall_s: f64) -> Option<f64> {
    (wall_s > 0.0).then(|| count / wall_s)
}

/// Aggregates the successful requests of a phase that took `wall_s`.
pub fn summarize(samples: &[Sample], wall_s: f64) -> Summary {
    let ttfts: Vec<f64> = samples.iter().map(|s| s.ttft_s).collect();
    let latencies: Vec<f64> = samples.iter().map(|s| s.latency_s).collect();
    let tpots: Vec<f64> = samples.iter().filter_map(tpot_s).collect();
    let itls: Vec<f64> = samples
        .iter()
        .flat_map(|s| s.itl_s.iter().copied())
        .collect();
    let output_tokens: u64 = samples.iter().map(|s| s.output_tokens).sum();
    Summary {
        ok: samples.len(),
        output_tokens,
        wall_s,
        output_tokens_per_s: rate(output_tokens as f64, wall_s),
        requests_per_s: rate(samples.len() as f64, wall_s),
        ttft: dist(&ttfts),
        tpot: dist(&tpots),
        itl: dist(&itls),
        e2e_latency: dist(&latencies),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn percentile_of_empty_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(mean(&[]), None);
        assert_eq!(dist(&[]), Dist::default());
    }

    #[test]
    fn percentile_of_one_value_is_that_value() {
        for p in [0.0, 50.0, 99.0, 100.0] {
            assert!(close(percentile(&[7.5], p), 7.5));
        }
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [0, 50, 99, 100]) = [1, 2.5, 3.97, 4]
        let v = [4.0, 1.0, 3.0, 2.0];
        assert!(close(percentile(&v, 0.0), 1.0));
        assert!(close(percentile(&v, 50.0), 2.5));
        assert!(close(percentile(&v, 99.0), 3.97));
        assert!(close(percentile(&v, 100.0), 4.0));
        // numpy.percentile(range(1, 102), 99) = 100.0 (exact rank 99)
        let v: Vec<f64> = (1..=101).map(f64::from).collect();
        assert!(close(percentile(&v, 99.0), 100.0));
        assert!(close(percentile(&v, 50.0), 51.0));
    }

    #[test]
    fn percentile_clamps_out_of_range_p() {
        let v = [1.0, 2.0, 3.0];
        assert!(close(percentile(&v, -5.0), 1.0));
        assert!(close(percentile(&v, 250.0), 3.0));
    }

    #[test]
    fn tpot_follows_vllm_definition() {
        // Sent at 0, first token at 0.5 s, last token at 2.5 s, 5 tokens:
        // the 4 tokens after the first took 2.0 s -> 0.5 s each.
        let s = Sample {
            ttft_s: 0.5,
            latency_s: 2.5,
            output_tokens: 5,
            itl_s: Vec::new(),
        };
        assert!(close(tpot_s(&s), 0.5));
    }

    #[test]
    fn tpot_needs_two_tokens() {
        let one = Sample {
            ttft_s: 0.2,
            latency_s: 0.3,
            output_tokens: 1,
            itl_s: Vec::new(),
        };
        assert_eq!(tpot_s(&one), None);
        assert_eq!(
            tpot_s(&Sample {
                output_tokens: 0,
                ..one
            }),
            None
        );
    }

    #[test]
    fn rate_without_time_is_none() {
        assert_eq!(rate(10.0, 0.0), None);
        assert!(close(rate(10.0, 4.0), 2.5));
    }

    /// Three requests at concurrency 2 over a 4 s phase:
    /// A: sent 0.0, first token 0.2, done 2.2, 11 tokens
    /// B: sent 0.0, first token 0.4, done 3.4, 31 tokens
    /// C: sent 2.2, first token 2.3, done 4.0, 1 token (no TPOT)
    #[test]
    fn summary_of_a_hand_made_timeline() {
        let samples = [
            Sample {
                ttft_s: 0.2,
                latency_s: 2.2,
                output_tokens: 11,
                itl_s: Vec::new(),
            },
            Sample {
                ttft_s: 0.4,
                latency_s: 3.4,
                output_tokens: 31,
                itl_s: Vec::new(),
            },
            Sample {
                ttft_s: 0.1,
                latency_s: 1.8,
                output_tokens: 1,
                itl_s: Vec::new(),
            },
        ];
        let s = summarize(&samples, 4.0);
        assert_eq!(s.ok, 3);
        assert_eq!(s.output_tokens, 43);
        assert!(close(s.output_tokens_per_s, 10.75));
        assert!(close(s.requests_per_s, 0.75));
        // TTFT sorted [0.1, 0.2, 0.4]: mean 0.7/3, p50 0.2, p99 0.2 + 0.98 * 0.2
        assert!(close(s.ttft.mean, 0.7 / 3.0));
        assert!(close(s.ttft.p50, 0.2));
        assert!(close(s.ttft.p99, 0.396));
        // TPOT: A (2.2-0.2)/10 = 0.2, B (3.4-0.4)/30 = 0.1, C excluded.
        assert!(close(s.tpot.mean, 0.15));
        // Latency sorted [1.8, 2.2, 3.4]: mean 7.4/3, p50 2.2, p99 2.2 + 0.98*1.2
        assert!(close(s.e2e_latency.mean, 7.4 / 3.0));
        assert!(close(s.e2e_latency.p50, 2.2));
        assert!(close(s.e2e_latency.p99, 3.376));
    }

    #[test]
    fn summary_without_successes_has_no_statistics() {
        let s = summarize(&[], 1.5);
        assert_eq!(s.ok, 0);
        assert_eq!(s.output_tokens, 0);
        assert!(close(s.output_tokens_per_s, 0.0));
        assert_eq!(s.ttft, Dist::default());
        assert_eq!(s.tpot, Dist::default());
    }
}

#[cfg(test)]
mod extended_tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    /// A: tokens at 0.1, 0.3, 0.6, 1.0 s, done 1.0 s (4 tokens)
    /// B: tokens at 0.5, 0.6, done 0.7 s (2 tokens)
    /// C: one token at 2.0 s, done 2.0 s (1 token: no ITL, TPOT 0 for goodput)
    fn recorded() -> Vec<Sample> {
        vec![
            Sample::from_token_times(&[0.1, 0.3, 0.6, 1.0], 1.0, 4),
            Sample::from_token_times(&[0.5, 0.6], 0.7, 2),
            Sample::from_token_times(&[2.0], 2.0, 1),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    #[test]
    fn itl_pools_every_gap_of_every_request() {
        let s = recorded();
        assert_eq!(s.len(), 3);
        assert!(Sample::from_token_times(&[], 1.0, 0).is_none());
        let sum = summarize(&s, 4.0);
        // Gaps: A 0.2, 0.3, 0.4; B 0.1; C none -> [0.1, 0.2, 0.3, 0.4].
        assert!(close(sum.itl.mean, 0.25));
        assert!(close(sum.itl.p50, 0.25));
        // numpy.percentile([.1,.2,.3,.4], 90) = 0.37; 99 -> 0.397
        assert!(close(sum.itl.p90, 0.37));
        assert!(close(sum.itl.p99, 0.397));
        // TPOT: A (1.0-0.1)/3 = 0.3, B (0.7-0.5)/1 = 0.2.
        assert!(close(sum.tpot.mean, 0.25));
        assert!(close(sum.tpot.p90, 0.29));
    }

    #[test]
    fn p90_interpolates_like_numpy() {
        // numpy.percentile(range(1, 11), 90) = 9.1
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!(close(dist(&v).p90, 9.1));
        assert!(close(percentile(&[5.0, 1.0], 90.0), 4.6));
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo() {
        let s = recorded();
        assert_eq!(goodput(&s, &Slo::default(), 4.0), None);
        let ttft = Slo {
            ttft_s: Some(0.5),
            ..Slo::default()
        };
        // A (0.1) and B (0.5, limit inclusive) meet it; C (2.0) does not.
        assert_eq!(goodput(&s, &ttft, 4.0), Some((2, Some(0.5))));
        let tpot = Slo {
            tpot_s: Some(0.25),
            ..Slo::default()
        };
        // A 0.3 fails, B 0.2 passes, C counts as TPOT 0.
        assert_eq!(goodput(&s, &tpot, 2.0), Some((2, Some(1.0))));
        let all = Slo {
            ttft_s: Some(0.5),
            tpot_s: Some(0.25),
            e2el_s: Some(0.65),
        };
        // Only B meets TTFT and TPOT, and its 0.7 s latency fails e2el.
        assert_eq!(goodput(&s, &all, 2.0), Some((0, Some(0.0))));
        let e2el = Slo {
            e2el_s: Some(1.0),
            ..Slo::default()
        };
        assert_eq!(goodput(&s, &e2el, 0.0), Some((2, None)));
    }

    #[test]
    fn cost_per_million_output_tokens() {
        // $2/GPU-hour * 4 GPUs for 30 min = $4, for 2M tokens = $2/M.
        assert!(close(
            cost_per_million_tokens(2.0, 4, 1800.0, 2_000_000),
            2.0
        ));
        // $3/h * 1 GPU * 1 h / 0.5M tokens = $6/M.
        assert!(close(cost_per_million_tokens(3.0, 1, 3600.0, 500_000), 6.0));
        assert_eq!(cost_per_million_tokens(3.0, 1, 3600.0, 0), None);
        assert_eq!(cost_per_million_tokens(3.0, 1, 0.0, 10), None);
    }
}
