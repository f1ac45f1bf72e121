//! The random pick: temperature, then top-k, top-p and min-p, then an
//! inverse-CDF walk over the survivors, most likely first.

use super::select::Ranked;
use super::{LogSoftmax, SamplingParams};

/// Width, in nats below the best token after temperature, of one bucket
/// of the histogram that decides how much of the ranking to sort at once.
const BUCKET_NATS: f64 = 0.25;
const BUCKETS: usize = 128;

/// The tempered distribution over the candidates.
struct Tempered<'a> {
    logits: &'a [f32],
    max: f64,
    t: f64,
    z: f64,
}

impl Tempered<'_> {
    /// How far below the best token `tok` is after temperature (>= 0).
    fn gap(&self, tok: u32) -> f64 {
        (self.max - self.logits[tok as usize] as f64) / self.t
    }

    fn weight(&self, tok: u32) -> f64 {
        (-self.gap(tok)).exp()
    }

    fn prob(&self, tok: u32) -> f64 {
        self.weight(tok) / self.z
    }
}

/// Inverse-CDF pick with the uniform draw `u` in [0, 1) after temperature,
/// top-k, top-p and min-p (in that order), walking tokens most likely first
/// (ties by lower id). `norm` is the untempered normaliser of `logits`,
/// reused as the temperature-1 sum when top-k dropped nothing.
pub(super) fn pick(logits: &[f32], params: &SamplingParams, norm: &LogSoftmax, u: f64) -> u32 {
    let mut ranked = Ranked::new(logits);
    if params.top_k > 0 {
        ranked.keep_top(params.top_k as usize);
    }
    let Some(first) = ranked.at(0) else {
        return 0;
    };
    let t = params.temperature as f64;
    let mut dist = Tempered {
        logits,
        max: logits[first as usize] as f64,
        t,
        z: 1.0,
    };
    dist.z = if t == 1.0 && !ranked.is_truncated() {
        norm.sum
    } else {
        ranked.iter_unordered().map(|tok| dist.weight(tok)).sum()
    };

    let (filter_min, max_gap, keep_min) = min_p_cut(&ranked, &dist, params.min_p);

    let top_p = params.top_p as f64;
    let filter_p = top_p > 0.0 && top_p < 1.0;
    let target = if filter_p { u.max(top_p) } else { u };
    presort(&mut ranked, &dist, target, max_gap);
    let keep_p = if filter_p {
        top_p_cut(&mut ranked, &dist, top_p, keep_min)
    } else {
        ranked.len()
    };

    let keep = keep_p.min(keep_min).max(1);
    let total = if filter_p {
        (0..keep)
            .filter_map(|n| ranked.at(n))
            .map(|tok| dist.prob(tok))
            .sum()
    } else if filter_min {
        ranked
            .iter_unordered()
            .filter(|&tok| dist.gap(tok) <= max_gap)
            .map(|tok| dist.prob(tok))
            .sum()
    } else {
        1.0
    };
    walk(
        &mut ranked,
        &dist,
        keep,
        (filter_p || filter_min).then_some(total),
        u,
    )
}

/// min-p keeps p >= min_p * p_max, i.e. weight >= min_p (the best token's
/// weight is exp(0) = 1), i.e. gap <= -ln(min_p): a prefix of the ranking,
/// so it only needs counting. Returns whether min-p is on, the largest gap
/// it keeps (infinite when off) and how many tokens it keeps.
fn min_p_cut(ranked: &Ranked, dist: &Tempered<'_>, min_p: f32) -> (bool, f64, usize) {
    let min_p = min_p as f64;
    if !(min_p > 0.0 && min_p.is_finite()) {
        return (false, f64::INFINITY, ranked.len());
    }
    let max_gap = -min_p.ln();
    let keep = ranked
        .iter_unordered()
        .filter(|&tok| dist.gap(tok) <= max_gap)
        .count();
    (true, max_gap, keep)
}

/// Inverse CDF over the first `keep` ranked tokens, probabilities divided
/// by `renorm` when given.
fn walk(ranked: &mut Ranked, dist: &Tempered<'_>, keep: usize, renorm: Option<f64>, u: f64) -> u32 {
    let mut acc = 0.0;
    let mut last = 0;
    for n in 0..keep {
        let Some(tok) = ranked.at(n) else { break };
        acc += match renorm {
            Some(total) => dist.prob(tok) / total,
            None => dist.prob(tok),
        };
        if u < acc {
            return tok;
        }
        last = tok;
    }
    last
}

/// How many of the most likely tokens top-p keeps: the shortest prefix of
/// the ranking whose probability reaches `top_p`, looking no further than
/// `limit` tokens (all of them if it is never reached).
fn top_p_cut(ranked: &mut Ranked, dist: &Tempered<'_>, top_p: f64, limit: usize) -> usize {
    let mut acc = 0.0;
    for n in 0..limit.min(ranked.len()) {
        let Some(tok) = ranked.at(n) else { break };
        acc += dist.prob(tok);
        if acc >= top_p {
            return n + 1;
        }
    }
    ranked.len()
}

/// Sorts, in one go, a prefix of the ranking that holds at least `target`
/// of the probability (or everything within `max_gap`, if less), so the
/// walks rarely need [`Ranked::at`]'s piecewise extension. Uses a
/// histogram of gaps, no exponentials: a token in bucket `b` has weight
/// above `exp(-BUCKET_NATS * (b + 1))`, which bounds each bucket's mass
/// from below.
fn presort(ranked: &mut Ranked, dist: &Tempered<'_>, target: f64, max_gap: f64) {
    if ranked.is_sorted() || ranked.len() <= 64 {
        return;
    }
    let bucket = |tok: u32| ((dist.gap(tok) / BUCKET_NATS) as usize).min(BUCKETS - 1);
    let mut counts = [0usize; BUCKETS];
    for tok in ranked.iter_unordered() {
        counts[bucket(tok)] += 1;
    }
    let need = target.min(1.0) * dist.z;
    let mut mass = 0.0;
    let mut last = BUCKETS - 1;
    for (b, &c) in counts.iter().enumerate().take(BUCKETS - 1) {
        mass += c as f64 * (-BUCKET_NATS * (b + 1) as f64).exp();
        if mass >= need {
            last = b;
            break;
        }
    }
    if last == BUCKETS - 1 && max_gap.is_infinite() {
        return; // would sort everything: leave it to the piecewise walk
    }
    ranked.sort_where(|tok| bucket(tok) <= last && dist.gap(tok) <= max_gap);
}
