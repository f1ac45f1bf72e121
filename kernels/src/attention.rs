//! Causal grouped-query attention.

use rayon::prelude::*;

use crate::error::{check_len, mul};
use crate::isa::Isa;
use crate::matmul::{axpy, dot_f32};
use crate::norm::softmax_inplace;
use crate::KernelError;

/// Head counts and size of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Below this many multiply-adds the call runs on the current thread.
const SERIAL_WORK: usize = 32 * 1024;

/// Causal grouped-query attention.
///
/// `q`: `n_tokens x n_heads x head_dim`, query `t` at position `start_pos + t`.
/// `k`, `v`: `kv_len x n_kv_heads x head_dim` with `kv_len >= start_pos + n_tokens`
/// (the cache including the new tokens). Query `t` attends keys `0..=start_pos + t`;
/// query head `h` uses kv head `h / (n_heads / n_kv_heads)`; scale `1/sqrt(head_dim)`.
/// `out`: `n_tokens x n_heads x head_dim`. Parallel over (token, head).
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    n_tokens: usize,
    start_pos: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    attention_with(Isa::detect(), q, k, v, shape, n_tokens, start_pos, out)
}

/// Rejects zero sizes and head counts that do not divide.
pub(crate) fn check_shape(op: &'static str, s: AttentionShape) -> Result<(), KernelError> {
    if s.head_dim == 0 || s.n_heads == 0 || s.n_kv_heads == 0 {
        return Err(KernelError::invalid(op, format!("zero size in {s:?}")));
    }
    if !s.n_heads.is_multiple_of(s.n_kv_heads) {
        return Err(KernelError::invalid(
            op,
            format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                s.n_heads, s.n_kv_heads
            ),
        ));
    }
    Ok(())
}

/// Checks the shapes; returns `kv_len`.
fn validate(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttentionShape,
    n_tokens: usize,
    start_pos: usize,
    out: &[f32],
) -> Result<usize, KernelError> {
    const OP: &str = "attention";
    check_shape(OP, s)?;
    let q_len = mul(OP, mul(OP, n_tokens, s.n_heads)?, s.head_dim)?;
    check_len(OP, "q", q_len, q.len())?;
    check_len(OP, "out", q_len, out.len())?;
    let kv_stride = mul(OP, s.n_kv_heads, s.head_dim)?;
    if !k.len().is_multiple_of(kv_stride) {
        return Err(KernelError::BadLength {
            op: OP,
            what: "k",
            got: k.len(),
            multiple: kv_stride,
        });
    }
    check_len(OP, "v", k.len(), v.len())?;
    let kv_len = k.len() / kv_stride;
    let needed = start_pos
        .checked_add(n_tokens)
        .ok_or_else(|| KernelError::invalid(OP, "start_pos + n_tokens overflows"))?;
    if kv_len < needed {
        return Err(KernelError::invalid(
            OP,
            format!("kv cache holds {kv_len} positions, need start_pos + n_tokens = {needed}"),
        ));
    }
    Ok(kv_len)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_with(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    n_tokens: usize,
    start_pos: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    validate(q, k, v, shape, n_tokens, start_pos, out)?;
    if out.is_empty() {
        return Ok(());
    }
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = shape;
    let group = n_heads / n_kv_heads;
    let kv_stride = n_kv_heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let attend = |scores: &mut Vec<f32>, (idx, o): (usize, &mut [f32])| {
        let (t, h) = (idx / n_heads, idx % n_heads);
        let kv_off = (h / group) * hd;
        let row = |p: usize| p * kv_stride + kv_off..p * kv_stride + kv_off + hd;
        let qv = &q[idx * hd..(idx + 1) * hd];
        let kv_at = |p: usize| (&k[row(p)], &v[row(p)]);
        attend_one(isa, qv, start_pos + t + 1, scale, kv_at, scores, o);
    };
    let work = (n_tokens * n_heads * hd).saturating_mul(start_pos + n_tokens);
    if work >= SERIAL_WORK && n_tokens * n_heads > 1 {
        out.par_chunks_mut(hd)
            .enumerate()
            .for_each_init(Vec::new, attend);
    } else {
        let mut scores = Vec::with_capacity(start_pos + n_tokens);
        out.chunks_mut(hd)
            .enumerate()
            .for_each(|item| attend(&mut scores, item));
    }
    Ok(())
}

/// One (query token, head) item: `o = sum_p softmax_p(q . k_p * scale) v_p` over positions
/// `p in 0..len`, with `kv_at(p) = (k_p, v_p)` (each `head_dim` long).
///
/// The single per-item routine of [`attention`] and the paged kernels: the result depends
/// only on `q`, `len`, `scale` and the key/value rows, never on where the rows are stored,
/// on the other items of the call, or on threads, so all of them give the same bits.
#[inline]
pub(crate) fn attend_one<'a>(
    isa: Isa,
    qv: &[f32],
    len: usize,
    scale: f32,
    kv_at: impl Fn(usize) -> (&'a [f32], &'a [f32]),
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    scores.clear();
    scores.extend((0..len).map(|p| dot_f32(isa, qv, kv_at(p).0) * scale));
    softmax_inplace(scores);
    o.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        axpy(isa, w, kv_at(p).1, o);
    }
}
