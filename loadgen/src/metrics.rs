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
//! - Percentiles: linear interpolation between closest ranks (numpy's default).

/// One successful request, in seconds relative to when it was sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Time to first token.
    pub ttft_s: f64,
    /// End-to-end latency: until the last byte of the response.
    pub latency_s: f64,
    /// Output tokens the request produced.
    pub output_tokens: u64,
}

/// Mean and percentiles of one quantity, in seconds; `None` without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dist {
    pub mean: Option<f64>,
    pub p50: Option<f64>,
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
    /// Mean TPOT over requests with at least two output tokens.
    pub tpot_mean: Option<f64>,
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

/// Mean, p50 and p99 of `values`.
pub fn dist(values: &[f64]) -> Dist {
    Dist {
        mean: mean(values),
        p50: percentile(values, 50.0),
        p99: percentile(values, 99.0),
    }
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
    let output_tokens: u64 = samples.iter().map(|s| s.output_tokens).sum();
    Summary {
        ok: samples.len(),
        output_tokens,
        wall_s,
        output_tokens_per_s: rate(output_tokens as f64, wall_s),
        requests_per_s: rate(samples.len() as f64, wall_s),
        ttft: dist(&ttfts),
        tpot_mean: mean(&tpots),
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
        };
        assert!(close(tpot_s(&s), 0.5));
    }

    #[test]
    fn tpot_needs_two_tokens() {
        let one = Sample {
            ttft_s: 0.2,
            latency_s: 0.3,
            output_tokens: 1,
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
            },
            Sample {
                ttft_s: 0.4,
                latency_s: 3.4,
                output_tokens: 31,
            },
            Sample {
                ttft_s: 0.1,
                latency_s: 1.8,
                output_tokens: 1,
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
        assert!(close(s.tpot_mean, 0.15));
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
        assert_eq!(s.tpot_mean, None);
    }
}
