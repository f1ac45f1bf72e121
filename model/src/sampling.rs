//! Token sampling with vLLM's semantics: repetition / frequency / presence
//! penalties, then greedy, or temperature with top-k, top-p and min-p,
//! driven by an RNG keyed by (seed, position) so the same seeded request
//! gives the same tokens whatever else runs beside it and whenever it is
//! replayed. Also reports the chosen token's log-probability and the
//! `top_logprobs` best alternatives.

use std::borrow::Cow;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

mod penalty;
mod pick;
mod select;
#[cfg(test)]
mod tests;

use pick::pick;

/// How to pick the next token. `temperature <= 0` (or `top_k == 1`) means
/// greedy. `Default` is greedy with every filter and penalty off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables.
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches `top_p`;
    /// values outside (0, 1) disable it.
    pub top_p: f32,
    pub seed: u64,
    /// Keep tokens whose (post-temperature) probability is at least
    /// `min_p` times the most likely token's; values <= 0 disable it.
    pub min_p: f32,
    /// Divides positive / multiplies non-positive logits of every token
    /// seen in the prompt or the output; 0 and 1 (and non-finite) disable.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token in the output.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the output.
    pub frequency_penalty: f32,
    /// How many most likely tokens (with log-probabilities) to report.
    pub top_logprobs: u32,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            top_logprobs: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// The chosen token and its log-probability under the model's
/// (untempered) distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
}

/// Tokens the penalties look at.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenHistory<'a> {
    pub prompt: &'a [u32],
    pub output: &'a [u32],
}

/// What [`sample_full`] picked.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOutput {
    pub token: u32,
    /// log-softmax of the penalized logits at `token` (before temperature
    /// and the filters).
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens under the same distribution as
    /// `logprob`, best first, ties by lower id.
    pub top: Vec<(u32, f32)>,
}

/// Index of the largest logit; the lowest index wins a tie. NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// log-softmax of `logits` at `token`, computed in f64 (NaN logits are
/// left out of the normaliser).
pub fn logprob_of(logits: &[f32], token: u32) -> f32 {
    let v = logits
        .get(token as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    LogSoftmax::of(logits).at(v)
}

/// The normaliser of a log-softmax: the largest logit and
/// `ln(sum(exp(logit - max)))`, NaN logits left out, in f64.
struct LogSoftmax {
    max: f64,
    sum: f64,
}

impl LogSoftmax {
    fn of(logits: &[f32]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum = if max == f64::NEG_INFINITY {
            0.0
        } else {
            logits
                .iter()
                .filter(|v| !v.is_nan())
                .map(|&v| (v as f64 - max).exp())
                .sum()
        };
        LogSoftmax { max, sum }
    }

    fn at(&self, v: f32) -> f32 {
        if self.max == f64::NEG_INFINITY {
            return f32::NEG_INFINITY;
        }
        (v as f64 - self.max - self.sum.ln()) as f32
    }
}

/// Mixes two words into one seed (splitmix64 finaliser on each).
fn mix(seed: u64, position: u64) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(seed ^ splitmix(position))
}

/// The uniform draw in [0, 1) for the token at `position` of a sequence
/// sampled with `seed`.
fn uniform(seed: u64, position: u64) -> f64 {
    let mut rng = ChaCha12Rng::seed_from_u64(mix(seed, position));
    rng.random()
}

/// Picks the next token from full-vocabulary `logits` for the token at
/// `position` of its sequence, without penalties or top log-probabilities.
pub fn sample(logits: &[f32], params: &SamplingParams, position: u64) -> Sampled {
    let params = SamplingParams {
        top_logprobs: 0,
        ..*params
    };
    let out = sample_full(logits, &params, &TokenHistory::default(), position);
    Sampled {
        token: out.token,
        logprob: out.logprob,
    }
}

/// Full-vocabulary logits of the next position `position` (0-based position
/// of the token being chosen): applies the penalties of `params` for
/// `history`, reports log-probabilities of the penalized logits, and picks
/// greedily or by seeded sampling.
pub fn sample_full(
    logits: &[f32],
    params: &SamplingParams,
    history: &TokenHistory<'_>,
    position: u64,
) -> SampleOutput {
    let logits: Cow<'_, [f32]> = if penalty::enabled(params) {
        let mut copy = logits.to_vec();
        penalty::apply(&mut copy, params, history);
        Cow::Owned(copy)
    } else {
        Cow::Borrowed(logits)
    };
    let norm = LogSoftmax::of(&logits);
    let token = if params.is_greedy() {
        argmax(&logits)
    } else {
        pick(&logits, params, &norm, uniform(params.seed, position))
    };
    let logprob = norm.at(logits
        .get(token as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY));
    let top = select::top_n(&logits, params.top_logprobs as usize)
        .into_iter()
        .map(|t| (t, norm.at(logits[t as usize])))
        .collect();
    SampleOutput {
        token,
        logprob,
        top,
    }
}
