//! Request arrival times for open-loop load (`--request-rate`).
//!
//! As vLLM's `benchmark_serving`: the gaps between arrivals are drawn from a
//! gamma distribution with shape `burstiness` and scale
//! `1 / (rate * burstiness)`, so their mean is `1 / rate` whatever the
//! burstiness and their variance is `1 / (rate^2 * burstiness)`. A
//! burstiness of 1 gives exponential gaps (a Poisson process); below 1 the
//! arrivals are burstier, above 1 more regular. The first request is sent
//! at once; request `k` after the sum of the first `k` gaps.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};

/// An open-loop arrival process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrivals {
    /// Mean requests per second.
    pub rate: f64,
    /// Gamma shape; 1.0 = Poisson.
    pub burstiness: f64,
    /// Seed of the gap sequence.
    pub seed: u64,
}

impl Arrivals {
    /// `count` inter-arrival gaps in seconds, deterministic for a seed.
    /// Empty when the rate or burstiness is not a positive finite number.
    pub fn gaps_s(&self, count: usize) -> Vec<f64> {
        let valid = |v: f64| v.is_finite() && v > 0.0;
        if !valid(self.rate) || !valid(self.burstiness) {
            return Vec::new();
        }
        let scale = 1.0 / (self.rate * self.burstiness);
        let Ok(gamma) = Gamma::new(self.burstiness, scale) else {
            return Vec::new();
        };
        let mut rng = StdRng::seed_from_u64(self.seed);
        (0..count).map(|_| gamma.sample(&mut rng)).collect()
    }

    /// Send offsets of `count` requests from the start of the phase: 0 for
    /// the first, then the running sum of the gaps.
    pub fn schedule(&self, count: usize) -> Vec<Duration> {
        let gaps = self.gaps_s(count.saturating_sub(1));
        if count > 0 && gaps.len() + 1 != count {
            return vec![Duration::ZERO; count];
        }
        let mut at = 0.0_f64;
        let mut out = Vec::with_capacity(count);
        if count > 0 {
            out.push(Duration::ZERO);
        }
        for g in gaps {
            at += g;
            out.push(Duration::try_from_secs_f64(at).unwrap_or(Duration::MAX));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    fn arrivals(rate: f64, burstiness: f64, seed: u64) -> Arrivals {
        Arrivals {
            rate,
            burstiness,
            seed,
        }
    }

    #[test]
    fn poisson_gaps_have_mean_one_over_rate() {
        let (mean, var) = stats(&arrivals(4.0, 1.0, 7).gaps_s(10_000));
        assert!((mean - 0.25).abs() < 0.25 * 0.03, "mean {mean}");
        // Exponential: variance = mean^2 = 1/16.
        assert!((var - 0.0625).abs() < 0.0625 * 0.1, "var {var}");
    }

    #[test]
    fn burstiness_keeps_the_mean_and_scales_the_variance() {
        for b in [0.25, 4.0] {
            let (mean, var) = stats(&arrivals(2.0, b, 11).gaps_s(10_000));
            assert!((mean - 0.5).abs() < 0.5 * 0.05, "b {b} mean {mean}");
            // Variance 1 / (rate^2 * b).
            let want = 1.0 / (4.0 * b);
            assert!(
                (var - want).abs() < want * 0.15,
                "b {b} var {var} want {want}"
            );
        }
        let bursty = stats(&arrivals(2.0, 0.25, 3).gaps_s(10_000)).1;
        let regular = stats(&arrivals(2.0, 4.0, 3).gaps_s(10_000)).1;
        assert!(bursty > 8.0 * regular, "{bursty} vs {regular}");
    }

    #[test]
    fn seeded_schedule_is_deterministic_and_starts_at_zero() {
        let a = arrivals(10.0, 1.0, 42);
        let s = a.schedule(100);
        assert_eq!(s, a.schedule(100));
        assert_ne!(s, arrivals(10.0, 1.0, 43).schedule(100));
        assert_eq!(s.len(), 100);
        assert_eq!(s[0], Duration::ZERO);
        assert!(s.windows(2).all(|w| w[0] <= w[1]));
        assert!(a.schedule(0).is_empty());
    }

    #[test]
    fn invalid_parameters_give_no_gaps() {
        assert!(arrivals(0.0, 1.0, 1).gaps_s(5).is_empty());
        assert!(arrivals(1.0, f64::NAN, 1).gaps_s(5).is_empty());
    }
}
