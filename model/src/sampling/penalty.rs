//! vLLM's repetition, frequency and presence penalties on a row of logits.

use super::{SamplingParams, TokenHistory};

fn repetition_enabled(r: f32) -> bool {
    r > 0.0 && r != 1.0 && r.is_finite()
}

fn additive_enabled(params: &SamplingParams) -> bool {
    params.frequency_penalty != 0.0 || params.presence_penalty != 0.0
}

/// Whether any penalty of `params` changes logits.
pub(super) fn enabled(params: &SamplingParams) -> bool {
    repetition_enabled(params.repetition_penalty) || additive_enabled(params)
}

/// Applies, in order: the repetition penalty `r` to every distinct token of
/// prompt ∪ output (`logit / r` if positive, else `logit * r`), then
/// `logit -= frequency * count + presence * [count > 0]` with `count` the
/// token's occurrences in the output. Ids outside the row are ignored.
pub(super) fn apply(logits: &mut [f32], params: &SamplingParams, history: &TokenHistory<'_>) {
    let r = params.repetition_penalty;
    if repetition_enabled(r) {
        let mut seen: Vec<u32> = history
            .prompt
            .iter()
            .chain(history.output)
            .copied()
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for tok in seen {
            if let Some(l) = logits.get_mut(tok as usize) {
                *l = if *l > 0.0 { *l / r } else { *l * r };
            }
        }
    }
    if additive_enabled(params) {
        let mut out = history.output.to_vec();
        out.sort_unstable();
        for run in out.chunk_by(|a, b| a == b) {
            if let Some(l) = logits.get_mut(run[0] as usize) {
                *l -= params.frequency_penalty * run.len() as f32;
                *l -= params.presence_penalty;
            }
        }
    }
}
