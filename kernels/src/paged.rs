//! Attention over a paged K/V cache (block tables, as in vLLM) and writes into it.
//!
//! Bit-exactness: every (query token, head) item runs [`attend_one`], the routine of the
//! contiguous [`crate::attention`], on the same key/value rows in the same order, so its
//! output depends only on `q` and the keys/values of positions `0..=start_pos + t`: not on
//! chunking, on the other sequences of a batch, on block placement or on threads.

use rayon::prelude::*;

use crate::attention::{attend_one, check_shape, AttentionShape};
use crate::error::{check_len, mul};
use crate::isa::Isa;
use crate::KernelError;

/// Below this many multiply-adds a call runs on the current thread.
const SERIAL_WORK: usize = 32 * 1024;
/// Marks a row of `q`/`out` that no sequence owns.
const NO_SEQ: usize = usize::MAX;

/// K/V pool of one layer on one rank: `num_blocks` blocks of `block_size` token slots;
/// slot layout `[block][slot][kv_head][head_dim]` (so
/// `k.len() == num_blocks * block_size * n_kv_heads * head_dim`).
#[derive(Clone, Copy, Debug)]
pub struct PagedKv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub block_size: usize,
}

/// One sequence of a [`paged_attention_batch`] call: its rows `row_offset..row_offset +
/// n_tokens` of `q`/`out` are its tokens at positions `start_pos..`, and position `p` lives
/// in block `block_table[p / block_size]`, slot `p % block_size`.
#[derive(Clone, Copy, Debug)]
pub struct PagedSeq<'a> {
    pub block_table: &'a [u32],
    pub start_pos: usize,
    pub n_tokens: usize,
    /// First row of this sequence in `q` / `out`.
    pub row_offset: usize,
}

/// The geometry of a pool, validated.
#[derive(Clone, Copy)]
struct Pool {
    block_size: usize,
    /// Floats per token slot (`n_kv_heads * head_dim`).
    slot: usize,
    num_blocks: usize,
}

impl Pool {
    fn new(
        op: &'static str,
        k_len: usize,
        v_len: usize,
        block_size: usize,
        s: AttentionShape,
    ) -> Result<Pool, KernelError> {
        check_shape(op, s)?;
        if block_size == 0 {
            return Err(KernelError::invalid(op, "block_size is 0"));
        }
        let slot = mul(op, s.n_kv_heads, s.head_dim)?;
        let block = mul(op, block_size, slot)?;
        if !k_len.is_multiple_of(block) {
            return Err(KernelError::BadLength {
                op,
                what: "k pool",
                got: k_len,
                multiple: block,
            });
        }
        check_len(op, "v pool", k_len, v_len)?;
        Ok(Pool {
            block_size,
            slot,
            num_blocks: k_len / block,
        })
    }

    /// Checks that `table` maps positions `first..end` to blocks inside the pool.
    fn check_table(
        &self,
        op: &'static str,
        table: &[u32],
        first: usize,
        end: usize,
    ) -> Result<(), KernelError> {
        if first >= end {
            return Ok(());
        }
        let needed = end.div_ceil(self.block_size);
        if table.len() < needed {
            return Err(KernelError::invalid(
                op,
                format!(
                    "block table has {} entries, positions up to {} need {needed}",
                    table.len(),
                    end - 1
                ),
            ));
        }
        let used = first / self.block_size..needed;
        if let Some((i, &b)) = table[used.clone()]
            .iter()
            .enumerate()
            .find(|(_, &b)| b as usize >= self.num_blocks)
        {
            return Err(KernelError::invalid(
                op,
                format!(
                    "block table entry {} names block {b}, the pool has {} blocks",
                    used.start + i,
                    self.num_blocks
                ),
            ));
        }
        Ok(())
    }

    /// First float of position `p`'s slot (the table was checked).
    #[inline]
    fn slot_start(&self, table: &[u32], p: usize) -> usize {
        (table[p / self.block_size] as usize * self.block_size + p % self.block_size) * self.slot
    }
}

/// `start + n`, or an error on overflow.
fn end_pos(op: &'static str, start: usize, n: usize) -> Result<usize, KernelError> {
    start
        .checked_add(n)
        .ok_or_else(|| KernelError::invalid(op, "start_pos + n_tokens overflows"))
}

/// Causal GQA attention for one sequence whose keys/values live in the pool: position
/// `p` is at block `block_table[p / block_size]`, slot `p % block_size`. `q`:
/// `n_tokens x n_heads x head_dim`, query `t` at position `start_pos + t` attends
/// positions `0..=start_pos + t` (all already written to the pool). `out`: same shape as
/// `q`. Errors (never panics) if the block table is too short or names a block outside
/// the pool. Bit-identical to [`crate::attention`] on the same data.
pub fn paged_attention(
    q: &[f32],
    kv: PagedKv<'_>,
    block_table: &[u32],
    shape: AttentionShape,
    n_tokens: usize,
    start_pos: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    const OP: &str = "paged_attention";
    check_shape(OP, shape)?;
    let q_len = mul(OP, mul(OP, n_tokens, shape.n_heads)?, shape.head_dim)?;
    check_len(OP, "q", q_len, q.len())?;
    let seq = PagedSeq {
        block_table,
        start_pos,
        n_tokens,
        row_offset: 0,
    };
    batch_with(OP, Isa::detect(), q, kv, &[seq], shape, out)
}

/// Several sequences at once, in one parallel region over all (sequence, token, head)
/// items: `seqs[i]` describes sequence `i`'s rows in `q` / `out` (`rows x n_heads x
/// head_dim`). Rows of `out` that no sequence owns are left untouched; two sequences
/// owning the same row is an error.
pub fn paged_attention_batch(
    q: &[f32],
    kv: PagedKv<'_>,
    seqs: &[PagedSeq<'_>],
    shape: AttentionShape,
    out: &mut [f32],
) -> Result<(), KernelError> {
    batch_with(
        "paged_attention_batch",
        Isa::detect(),
        q,
        kv,
        seqs,
        shape,
        out,
    )
}

/// Validates a batch; returns the owning sequence of each row (`NO_SEQ` if none) and the
/// pool geometry.
fn plan(
    op: &'static str,
    q: &[f32],
    kv: PagedKv<'_>,
    seqs: &[PagedSeq<'_>],
    shape: AttentionShape,
    out: &[f32],
) -> Result<(Vec<usize>, Pool), KernelError> {
    let pool = Pool::new(op, kv.k.len(), kv.v.len(), kv.block_size, shape)?;
    let row_len = mul(op, shape.n_heads, shape.head_dim)?;
    if !q.len().is_multiple_of(row_len) {
        return Err(KernelError::BadLength {
            op,
            what: "q",
            got: q.len(),
            multiple: row_len,
        });
    }
    check_len(op, "out", q.len(), out.len())?;
    let mut owner = vec![NO_SEQ; q.len() / row_len];
    for (i, s) in seqs.iter().enumerate() {
        let end = end_pos(op, s.start_pos, s.n_tokens)?;
        if s.n_tokens > 0 {
            pool.check_table(op, s.block_table, 0, end)?;
        }
        let rows = end_pos(op, s.row_offset, s.n_tokens)?;
        let Some(mine) = owner.get_mut(s.row_offset..rows) else {
            return Err(KernelError::invalid(
                op,
                format!(
                    "sequence {i} needs rows up to {rows}, q has {}",
                    out.len() / row_len
                ),
            ));
        };
        if mine.iter().any(|&o| o != NO_SEQ) {
            return Err(KernelError::invalid(
                op,
                format!("sequence {i} overlaps another one's rows"),
            ));
        }
        mine.fill(i);
    }
    Ok((owner, pool))
}

pub(crate) fn batch_with(
    op: &'static str,
    isa: Isa,
    q: &[f32],
    kv: PagedKv<'_>,
    seqs: &[PagedSeq<'_>],
    shape: AttentionShape,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (owner, pool) = plan(op, q, kv, seqs, shape, out)?;
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = shape;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let attend = |scores: &mut Vec<f32>, (idx, o): (usize, &mut [f32])| {
        let (row, h) = (idx / n_heads, idx % n_heads);
        let Some(s) = seqs.get(owner[row]) else {
            return;
        };
        let kv_off = (h / group) * hd;
        let at = |p: usize| pool.slot_start(s.block_table, p) + kv_off;
        let kv_at = |p: usize| (&kv.k[at(p)..at(p) + hd], &kv.v[at(p)..at(p) + hd]);
        let len = s.start_pos + (row - s.row_offset) + 1;
        attend_one(
            isa,
            &q[idx * hd..(idx + 1) * hd],
            len,
            scale,
            kv_at,
            scores,
            o,
        );
    };
    let work = seqs.iter().fold(0usize, |w, s| {
        w.saturating_add((s.n_tokens * n_heads * hd).saturating_mul(s.start_pos + s.n_tokens))
    });
    let items: usize = seqs.iter().map(|s| s.n_tokens * n_heads).sum();
    if work >= SERIAL_WORK && items > 1 {
        out.par_chunks_mut(hd)
            .enumerate()
            .for_each_init(Vec::new, attend);
    } else {
        let mut scores = Vec::new();
        out.chunks_mut(hd)
            .enumerate()
            .for_each(|item| attend(&mut scores, item));
    }
    Ok(())
}

/// Writes `n_tokens` rows of `k`/`v` (`n_tokens x n_kv_heads x head_dim`, `n_tokens =
/// k.len() / (n_kv_heads * head_dim)`) into the pool at positions `start_pos..`. Errors
/// (never panics) on shape mismatches, a block table too short for the last position,
/// or a block id outside the pool.
#[allow(clippy::too_many_arguments)]
pub fn paged_write(
    k_pool: &mut [f32],
    v_pool: &mut [f32],
    block_size: usize,
    block_table: &[u32],
    shape: AttentionShape,
    start_pos: usize,
    k: &[f32],
    v: &[f32],
) -> Result<(), KernelError> {
    const OP: &str = "paged_write";
    let pool = Pool::new(OP, k_pool.len(), v_pool.len(), block_size, shape)?;
    if !k.len().is_multiple_of(pool.slot) {
        return Err(KernelError::BadLength {
            op: OP,
            what: "k",
            got: k.len(),
            multiple: pool.slot,
        });
    }
    check_len(OP, "v", k.len(), v.len())?;
    let n_tokens = k.len() / pool.slot;
    pool.check_table(
        OP,
        block_table,
        start_pos,
        end_pos(OP, start_pos, n_tokens)?,
    )?;
    for (t, (kr, vr)) in k
        .chunks_exact(pool.slot)
        .zip(v.chunks_exact(pool.slot))
        .enumerate()
    {
        let at = pool.slot_start(block_table, start_pos + t);
        k_pool[at..at + pool.slot].copy_from_slice(kr);
        v_pool[at..at + pool.slot].copy_from_slice(vr);
    }
    Ok(())
}
