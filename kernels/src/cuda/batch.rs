//! A step's sequences for the paged kernels: block tables, context lengths, row offsets
//! and the pool slot of every new token, validated on the host and uploaded once per step
//! (every layer reuses them).

use super::device::CudaBackend;
use super::error::{mul, to_i32, CudaError};
use super::tensor::DeviceBuffer;

/// One sequence of a step: its new tokens are at positions `start_pos..start_pos +
/// n_tokens`, position `p` lives in block `block_table[p / block_size]`, slot
/// `p % block_size`. Its rows of `q` / `out` / new K/V follow those of the sequences
/// before it.
#[derive(Clone, Copy, Debug)]
pub struct SeqSpec<'a> {
    pub block_table: &'a [u32],
    pub start_pos: usize,
    pub n_tokens: usize,
}

/// The host-side plan of a [`PagedBatch`].
#[derive(Debug, PartialEq)]
pub(crate) struct BatchPlan {
    /// `[num_seqs, max_blocks]`, -1 past each sequence's used entries.
    pub tables: Vec<i32>,
    /// `[num_seqs]`: `start_pos + n_tokens`.
    pub ctx_lens: Vec<i32>,
    /// `[num_seqs, 3]`: (first row, n_tokens, start_pos).
    pub seq_info: Vec<i32>,
    /// `[total_tokens]`: `block * block_size + offset` of each new token.
    pub slots: Vec<i64>,
    pub max_blocks: usize,
    pub max_ctx: usize,
    pub max_tokens: usize,
    pub total_tokens: usize,
}

impl BatchPlan {
    /// Validates `seqs` against a pool of `num_blocks` blocks of `block_size`: every block
    /// that positions `0..start_pos + n_tokens` use must be named and inside the pool, and
    /// positions, rows and sizes must fit in i32.
    pub(crate) fn new(
        block_size: usize,
        num_blocks: usize,
        seqs: &[SeqSpec<'_>],
    ) -> Result<BatchPlan, CudaError> {
        if block_size == 0 || num_blocks == 0 {
            return Err(CudaError::Shape(
                "paged batch: zero block size or pool".into(),
            ));
        }
        to_i32("num_seqs", seqs.len())?;
        to_i32("pool slots", mul("paged batch", num_blocks, block_size)?)?;
        let mut used = Vec::with_capacity(seqs.len());
        for (i, s) in seqs.iter().enumerate() {
            let end = s
                .start_pos
                .checked_add(s.n_tokens)
                .filter(|&e| i32::try_from(e).is_ok())
                .ok_or_else(|| CudaError::Shape(format!("sequence {i}: positions exceed i32")))?;
            let needed = end.div_ceil(block_size);
            let blocks = s.block_table.get(..needed).ok_or_else(|| {
                CudaError::Shape(format!(
                    "sequence {i}: block table has {} entries, {end} positions need {needed}",
                    s.block_table.len()
                ))
            })?;
            if let Some(bad) = blocks.iter().find(|&&blk| blk as usize >= num_blocks) {
                return Err(CudaError::Shape(format!(
                    "sequence {i}: block {bad} is outside the pool of {num_blocks} blocks"
                )));
            }
            used.push((end, blocks));
        }
        let max_ctx = used.iter().map(|u| u.0).max().unwrap_or(0);
        let max_blocks = max_ctx.div_ceil(block_size).max(1);
        let mut plan = BatchPlan {
            tables: vec![-1; mul("paged batch", seqs.len(), max_blocks)?],
            ctx_lens: Vec::with_capacity(seqs.len()),
            seq_info: Vec::with_capacity(3 * seqs.len()),
            slots: Vec::new(),
            max_blocks,
            max_ctx,
            max_tokens: seqs.iter().map(|s| s.n_tokens).max().unwrap_or(0),
            total_tokens: 0,
        };
        for (i, (s, &(end, blocks))) in seqs.iter().zip(&used).enumerate() {
            for (t, &blk) in plan.tables[i * max_blocks..].iter_mut().zip(blocks) {
                *t = blk as i32; // < num_blocks, which fits in i32
            }
            let row = to_i32("rows", plan.total_tokens)?;
            // end fits in i32, so do start_pos and n_tokens
            plan.seq_info
                .extend([row, s.n_tokens as i32, s.start_pos as i32]);
            plan.ctx_lens.push(end as i32);
            for p in s.start_pos..end {
                let blk = i64::from(blocks[p / block_size]);
                plan.slots
                    .push(blk * block_size as i64 + (p % block_size) as i64);
            }
            plan.total_tokens += s.n_tokens;
        }
        to_i32("rows", plan.total_tokens)?;
        Ok(plan)
    }
}

/// A step's sequences on the device, validated against one pool geometry
/// (`block_size`, `num_blocks`); the paged kernels refuse a cache of another geometry.
#[derive(Debug)]
pub struct PagedBatch {
    pub(crate) num_seqs: usize,
    pub(crate) total_tokens: usize,
    pub(crate) max_tokens: usize,
    pub(crate) max_ctx: usize,
    pub(crate) max_blocks: usize,
    pub(crate) block_size: usize,
    pub(crate) num_blocks: usize,
    pub(crate) all_single: bool,
    pub(crate) tables: DeviceBuffer<i32>,
    pub(crate) ctx_lens: DeviceBuffer<i32>,
    pub(crate) seq_info: DeviceBuffer<i32>,
    pub(crate) slots: DeviceBuffer<i64>,
    /// `seq_info` on the host: (first row, n_tokens, start_pos) per sequence.
    pub(crate) spans: Vec<[i32; 3]>,
}

impl PagedBatch {
    /// Validates `seqs` (see [`SeqSpec`]) against a pool of `num_blocks` blocks of
    /// `block_size` and uploads the tables (a `Shape` error names the first problem).
    pub fn new(
        b: &CudaBackend,
        block_size: usize,
        num_blocks: usize,
        seqs: &[SeqSpec<'_>],
    ) -> Result<Self, CudaError> {
        let plan = BatchPlan::new(block_size, num_blocks, seqs)?;
        Ok(PagedBatch {
            num_seqs: seqs.len(),
            total_tokens: plan.total_tokens,
            max_tokens: plan.max_tokens,
            max_ctx: plan.max_ctx,
            max_blocks: plan.max_blocks,
            block_size,
            num_blocks,
            all_single: seqs.iter().all(|s| s.n_tokens == 1),
            tables: DeviceBuffer::from_slice(b, &plan.tables)?,
            ctx_lens: DeviceBuffer::from_slice(b, &plan.ctx_lens)?,
            seq_info: DeviceBuffer::from_slice(b, &plan.seq_info)?,
            slots: DeviceBuffer::from_slice(b, &plan.slots)?,
            spans: plan
                .seq_info
                .chunks_exact(3)
                .map(|c| [c[0], c[1], c[2]])
                .collect(),
        })
    }

    pub fn num_seqs(&self) -> usize {
        self.num_seqs
    }

    /// Rows of `q` / `out` / new K/V: the sum of `n_tokens`.
    pub fn total_tokens(&self) -> usize {
        self.total_tokens
    }

    /// Whether every sequence has exactly one new token (the decode kernel applies).
    pub fn is_decode(&self) -> bool {
        self.all_single
    }

    pub(crate) fn check_pool(
        &self,
        op: &str,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<(), CudaError> {
        if block_size != self.block_size || num_blocks != self.num_blocks {
            return Err(CudaError::Shape(format!(
                "{op}: batch built for {} blocks of {}, cache has {num_blocks} of {block_size}",
                self.num_blocks, self.block_size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{BatchPlan, SeqSpec};
    use crate::cuda::CudaError;
    use crate::{paged_write, AttentionShape};

    #[test]
    fn slots_are_where_the_cpu_paged_write_stores_each_token() {
        let (bs, nb) = (4usize, 12usize);
        let tables: [&[u32]; 3] = [&[7, 2, 9], &[0], &[11, 3, 5, 1]];
        let spans = [(5usize, 6usize), (1, 2), (0, 13)];
        let seqs: Vec<SeqSpec<'_>> = tables
            .iter()
            .zip(spans)
            .map(|(&t, (start_pos, n_tokens))| SeqSpec {
                block_table: t,
                start_pos,
                n_tokens,
            })
            .collect();
        let plan = BatchPlan::new(bs, nb, &seqs).expect("valid");
        assert_eq!(plan.total_tokens, 21);
        assert_eq!(plan.ctx_lens, vec![11, 3, 13]);
        assert_eq!(plan.seq_info, vec![0, 6, 5, 6, 2, 1, 8, 13, 0]);
        assert_eq!(plan.max_blocks, 4);
        assert_eq!(&plan.tables[..4], &[7, 2, 9, -1]);
        assert_eq!(&plan.tables[4..8], &[0, -1, -1, -1]);
        // Each token's row holds its index: the CPU write must put it at the plan's slot.
        let shape = AttentionShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 2,
        };
        let (mut k, mut v) = (vec![-1f32; nb * bs * 2], vec![-1f32; nb * bs * 2]);
        let mut row = 0;
        for s in &seqs {
            let rows: Vec<f32> = (row..row + s.n_tokens)
                .flat_map(|t| [t as f32; 2])
                .collect();
            paged_write(
                &mut k,
                &mut v,
                bs,
                s.block_table,
                shape,
                s.start_pos,
                &rows,
                &rows,
            )
            .expect("cpu write");
            row += s.n_tokens;
        }
        for (t, &slot) in plan.slots.iter().enumerate() {
            assert_eq!(k[slot as usize * 2], t as f32, "token {t} at slot {slot}");
        }
    }

    #[test]
    fn bad_tables_are_shape_errors() {
        let short = [SeqSpec {
            block_table: &[1],
            start_pos: 3,
            n_tokens: 2,
        }];
        let outside = [SeqSpec {
            block_table: &[1, 8],
            start_pos: 0,
            n_tokens: 5,
        }];
        for seqs in [&short[..], &outside[..]] {
            let err = BatchPlan::new(4, 8, seqs).expect_err("invalid");
            assert!(matches!(err, CudaError::Shape(_)), "{err:?}");
        }
        let huge = [SeqSpec {
            block_table: &[0],
            start_pos: usize::MAX,
            n_tokens: 2,
        }];
        assert!(BatchPlan::new(4, 8, &huge).is_err());
        assert!(BatchPlan::new(0, 8, &[]).is_err());
        let empty = BatchPlan::new(4, 8, &[]).expect("no sequences is fine");
        assert_eq!((empty.total_tokens, empty.max_blocks), (0, 1));
    }
}
