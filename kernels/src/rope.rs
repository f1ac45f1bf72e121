//! Rotary position embeddings.

use rayon::prelude::*;

use crate::error::{check_len, mul};
use crate::KernelError;

/// Which dimensions of a head form a rotation pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(i, i + head_dim/2)`: the Hugging Face layout.
    Half,
    /// Pairs `(2i, 2i+1)`: the GGUF llama layout.
    Interleaved,
}

/// Token count from which tokens are rotated on several threads.
const PAR_TOKENS: usize = 8;

/// Rotates `x` (`n_tokens x n_heads x head_dim`) in place; token `t` is at position
/// `positions[t]`. For pair `i in 0..head_dim/2`, `angle = positions[t] * inv_freq[i]`
/// (angle, cos and sin in f64) and the pair `(a, b)` becomes
/// `(a*cos - b*sin, a*sin + b*cos)`.
pub fn rope(
    x: &mut [f32],
    n_tokens: usize,
    n_heads: usize,
    head_dim: usize,
    positions: &[u32],
    inv_freq: &[f32],
    style: RopeStyle,
) -> Result<(), KernelError> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(KernelError::invalid(
            "rope",
            format!("head_dim must be even and positive, got {head_dim}"),
        ));
    }
    let token_len = mul("rope", n_heads, head_dim)?;
    check_len("rope", "x", mul("rope", n_tokens, token_len)?, x.len())?;
    check_len("rope", "positions", n_tokens, positions.len())?;
    check_len("rope", "inv_freq", head_dim / 2, inv_freq.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let rotate = |cs: &mut Vec<(f32, f32)>, (xt, &pos): (&mut [f32], &u32)| {
        cs.clear();
        cs.extend(inv_freq.iter().map(|&f| {
            let angle = f64::from(pos) * f64::from(f);
            (angle.cos() as f32, angle.sin() as f32)
        }));
        for head in xt.chunks_exact_mut(head_dim) {
            rotate_head(head, cs, style);
        }
    };
    if n_tokens >= PAR_TOKENS {
        x.par_chunks_mut(token_len)
            .zip(positions.par_iter())
            .for_each_init(Vec::new, rotate);
    } else {
        let mut cs = Vec::with_capacity(head_dim / 2);
        x.chunks_mut(token_len)
            .zip(positions)
            .for_each(|item| rotate(&mut cs, item));
    }
    Ok(())
}

/// Rotates one head given `(cos, sin)` per pair.
#[inline]
fn rotate_head(head: &mut [f32], cs: &[(f32, f32)], style: RopeStyle) {
    let rot = |a: f32, b: f32, (c, s): (f32, f32)| (a * c - b * s, a * s + b * c);
    match style {
        RopeStyle::Half => {
            let (lo, hi) = head.split_at_mut(head.len() / 2);
            for ((a, b), &p) in lo.iter_mut().zip(hi.iter_mut()).zip(cs) {
                (*a, *b) = rot(*a, *b, p);
            }
        }
        RopeStyle::Interleaved => {
            for (pair, &p) in head.chunks_exact_mut(2).zip(cs) {
                (pair[0], pair[1]) = rot(pair[0], pair[1], p);
            }
        }
    }
}
