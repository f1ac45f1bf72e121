//! The paged K/V cache on the device and the attention wrappers.
//!
//! A step's sequences are described once ([`PagedBatch::new`], validated against the pool
//! geometry on the host, uploaded once) and reused by every layer. Rows of `q` / `out` /
//! new K/V are the sequences' tokens packed in order, as in the CPU forward pass.
//! Prefill reads the pool *after* [`paged_write`] stored the new K/V rows (so chunked
//! prefill and cached prefixes need nothing else), like the CPU `paged_attention_batch`.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

use super::attn_gemm::{long_path, prefill_gemm_seqs, GEMM_MIN_TOKENS};
use super::batch::PagedBatch;
use super::device::CudaBackend;
use super::error::{check_len, mul, to_i32, CudaError};
use super::ops::per_item;
use super::source::names;
use super::tensor::DeviceBuffer;

/// The largest head dimension of the attention kernels.
pub const ATTENTION_MAX_HEAD_DIM: usize = 256;
/// The most positions of one split-K partition of the decode kernel (`DEC_PART_MAX`).
pub(crate) const DEC_PART_MAX: usize = 128;
/// The fewest positions of one partition; doubled (up to the max) while the grid would
/// be more than `DEC_WAVES` blocks per multiprocessor.
const DEC_PART_MIN: usize = 32;
const DEC_WAVES: usize = 4;
/// Query heads per decode block (`DEC_GMAX`).
pub(crate) const DEC_GMAX: usize = 8;
/// Rows per prefill block (`PF_BQ`).
pub(crate) const PF_BQ: usize = 16;
/// Threads per attention block (both kernels are written for 4 warps).
pub(crate) const ATT_THREADS: u32 = 128;
/// The limit of grid.y and grid.z.
const GRID_YZ_MAX: usize = 65_535;

/// One layer's K/V pool on one device: `num_blocks` blocks of `block_size` token slots,
/// slot layout `[block][slot][kv_head][head_dim]`, bf16 (the CPU `PagedKv` layout).
#[derive(Debug)]
pub struct PagedKvCache {
    // Private: the kernels trust these lengths (the geometry's), so nobody may swap in
    // a buffer of another size.
    k: DeviceBuffer<bf16>,
    v: DeviceBuffer<bf16>,
    num_blocks: usize,
    block_size: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl PagedKvCache {
    /// A zeroed pool.
    pub fn new(
        b: &CudaBackend,
        num_blocks: usize,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self, CudaError> {
        let len = Self::check_geometry(num_blocks, block_size, n_kv_heads, head_dim)?;
        Ok(PagedKvCache {
            k: DeviceBuffer::zeros(b, len)?,
            v: DeviceBuffer::zeros(b, len)?,
            num_blocks,
            block_size,
            n_kv_heads,
            head_dim,
        })
    }

    /// Elements of one pool, after checking the geometry the kernels support.
    fn check_geometry(
        num_blocks: usize,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<usize, CudaError> {
        if num_blocks == 0 || block_size == 0 || n_kv_heads == 0 {
            return Err(CudaError::Shape("paged cache: zero size".into()));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > ATTENTION_MAX_HEAD_DIM {
            return Err(CudaError::Shape(format!(
                "paged cache: head_dim {head_dim} must be even and in 2..={ATTENTION_MAX_HEAD_DIM}"
            )));
        }
        to_i32("num_blocks", num_blocks)?;
        to_i32("block_size", block_size)?;
        to_i32("n_kv_heads", n_kv_heads)?;
        mul(
            "paged cache",
            mul("paged cache", num_blocks, block_size)?,
            n_kv_heads * head_dim,
        )
    }

    /// The K pool.
    pub fn k(&self) -> &DeviceBuffer<bf16> {
        &self.k
    }

    /// The V pool.
    pub fn v(&self) -> &DeviceBuffer<bf16> {
        &self.v
    }

    /// Overwrites both pools from the host (each `num_blocks * block_size * slot_len`).
    pub fn upload(&mut self, b: &CudaBackend, k: &[bf16], v: &[bf16]) -> Result<(), CudaError> {
        self.k.upload(b, k)?;
        self.v.upload(b, v)
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Elements per token slot (`n_kv_heads * head_dim`).
    pub fn slot_len(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Stores the new K/V rows (`[total_tokens, n_kv_heads * head_dim]`) of every sequence at
/// its positions `start_pos..` (the CPU `paged_write`, for a whole step).
pub fn paged_write(
    b: &CudaBackend,
    cache: &mut PagedKvCache,
    batch: &PagedBatch,
    k: &DeviceBuffer<bf16>,
    v: &DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    batch.check_pool("paged_write", cache.block_size, cache.num_blocks)?;
    let row = cache.slot_len();
    check_len(
        "paged_write: k",
        mul("paged_write", batch.total_tokens, row)?,
        k.len(),
    )?;
    check_len("paged_write: v", k.len(), v.len())?;
    if batch.total_tokens == 0 {
        return Ok(());
    }
    let n = batch.total_tokens as i32;
    let row_i = to_i32("row", row)?;
    let num_slots = (cache.num_blocks * cache.block_size) as i64;
    let f = b.function(names::PAGED_WRITE)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(k.slice())
        .arg(v.slice())
        .arg(cache.k.slice_mut())
        .arg(cache.v.slice_mut())
        .arg(batch.slots.slice())
        .arg(&n)
        .arg(&row_i)
        .arg(&num_slots);
    // SAFETY: arguments match `weft_paged_write(const bf16*, const bf16*, bf16*, bf16*,
    // const long long*, int, int, long long)`; k and v hold n*row elements, slots n
    // values, each slot < num_slots (validated by PagedBatch::new against this geometry,
    // and re-checked in the kernel), the pools num_slots*row elements.
    unsafe { l.launch(per_item(batch.total_tokens, super::ops::ROW_THREADS)?) }?;
    Ok(())
}

/// Shapes shared by the attention entry points: `(n_heads, group)` after checks.
fn attention_shape(
    op: &str,
    q: &DeviceBuffer<bf16>,
    out: &DeviceBuffer<bf16>,
    cache: &PagedKvCache,
    batch: &PagedBatch,
    n_heads: usize,
) -> Result<(i32, usize), CudaError> {
    batch.check_pool(op, cache.block_size, cache.num_blocks)?;
    if n_heads == 0 || !n_heads.is_multiple_of(cache.n_kv_heads) {
        return Err(CudaError::Shape(format!(
            "{op}: n_heads {n_heads} is not a positive multiple of n_kv_heads {}",
            cache.n_kv_heads
        )));
    }
    let rows = mul(op, batch.total_tokens, mul(op, n_heads, cache.head_dim)?)?;
    check_len(op, rows, q.len())?;
    check_len(op, rows, out.len())?;
    Ok((to_i32("n_heads", n_heads)?, n_heads / cache.n_kv_heads))
}

/// Causal GQA attention of every new token over its sequence's positions `0..=pos`
/// (K/V already in the pool), scale `1/sqrt(head_dim)`, query head `h` on KV head
/// `h / (n_heads / n_kv_heads)`: the CPU `paged_attention_batch`. `q` and `out` are
/// `[total_tokens, n_heads, head_dim]`. Uses the split-K decode kernels when every
/// sequence has one new token, the tiled prefill kernel otherwise.
pub fn paged_attention(
    b: &CudaBackend,
    q: &DeviceBuffer<bf16>,
    cache: &PagedKvCache,
    batch: &PagedBatch,
    n_heads: usize,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    if batch.is_decode() {
        return paged_attention_decode(b, q, cache, batch, n_heads, out);
    }
    let long: Vec<usize> = (0..batch.num_seqs)
        .filter(|&i| batch.spans[i][1] as usize >= GEMM_MIN_TOKENS)
        .collect();
    if long.is_empty() {
        return paged_attention_prefill(b, q, cache, batch, n_heads, out);
    }
    let path = long_path(b, cache.head_dim);
    prefill_gemm_seqs(b, q, cache, batch, n_heads, (&long, path), out)?;
    // The others through the tiled kernel, the long ones masked out (no tokens).
    let mut info = Vec::with_capacity(3 * batch.num_seqs);
    let mut max_tokens = 0;
    for (i, span) in batch.spans.iter().enumerate() {
        let n = if long.contains(&i) { 0 } else { span[1] };
        max_tokens = max_tokens.max(n as usize);
        info.extend([span[0], n, span[2]]);
    }
    if max_tokens == 0 {
        return Ok(());
    }
    let info = DeviceBuffer::from_slice(b, &info)?;
    prefill_tiled(b, q, cache, batch, (n_heads, &info, max_tokens), out)
}

/// The decode path of [`paged_attention`] (every sequence has exactly one new token):
/// `weft_paged_decode_part` on grid (num_seqs, n_kv_heads * ceil(group / 8),
/// ceil(max_ctx / 256)), then `weft_paged_decode_reduce` on grid (num_seqs, n_heads),
/// 128 threads each; f32 scratch of `num_seqs * n_heads * parts * (head_dim + 2)`.
pub fn paged_attention_decode(
    b: &CudaBackend,
    q: &DeviceBuffer<bf16>,
    cache: &PagedKvCache,
    batch: &PagedBatch,
    n_heads: usize,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    const OP: &str = "paged_attention_decode";
    let (heads_i, group) = attention_shape(OP, q, out, cache, batch, n_heads)?;
    if !batch.all_single {
        return Err(CudaError::Shape(format!(
            "{OP}: every sequence needs exactly one new token"
        )));
    }
    if !cache.head_dim.is_multiple_of(8) {
        return Err(CudaError::Shape(format!(
            "{OP}: head_dim {} must be a multiple of 8 (rows are read 8 values at a time)",
            cache.head_dim
        )));
    }
    if batch.num_seqs == 0 {
        return Ok(());
    }
    let y = mul(OP, cache.n_kv_heads, group.div_ceil(DEC_GMAX))?;
    let part_len = decode_part_len(b, batch.num_seqs * y, batch.max_ctx);
    let parts = batch.max_ctx.div_ceil(part_len).max(1);
    if y > GRID_YZ_MAX || parts > GRID_YZ_MAX || n_heads > GRID_YZ_MAX {
        return Err(CudaError::Shape(format!(
            "{OP}: grid too large ({y} x {parts})"
        )));
    }
    let scratch = mul(OP, mul(OP, batch.num_seqs, n_heads)?, parts)?;
    // Every (sequence, head, partition) the reduce kernel reads was written by the first.
    let mut part_ml = DeviceBuffer::<f32>::scratch(b, mul(OP, scratch, 2)?)?;
    let mut part_acc = DeviceBuffer::<f32>::scratch(b, mul(OP, scratch, cache.head_dim)?)?;
    let g = Geometry::of(cache, batch)?;
    let (parts_i, part_len_i) = (parts as i32, part_len as i32);
    let f = b.function(names::DECODE_PART)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(q.slice())
        .arg(cache.k.slice())
        .arg(cache.v.slice())
        .arg(batch.tables.slice())
        .arg(batch.ctx_lens.slice())
        .arg(part_ml.slice_mut())
        .arg(part_acc.slice_mut())
        .arg(&heads_i)
        .arg(&g.kv_heads)
        .arg(&g.head_dim)
        .arg(&g.block_size)
        .arg(&g.num_blocks)
        .arg(&g.max_blocks)
        .arg(&parts_i)
        .arg(&part_len_i)
        .arg(&g.scale);
    let cfg = LaunchConfig {
        grid_dim: (batch.num_seqs as u32, y as u32, parts as u32),
        block_dim: (ATT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `weft_paged_decode_part` in order and type; q holds
    // num_seqs*n_heads*head_dim elements (one token per sequence), the pools the cache
    // geometry, tables num_seqs*max_blocks and ctx_lens num_seqs values (PagedBatch),
    // the scratch num_seqs*n_heads*parts*{2, head_dim}; head_dim is even and <= 256 and
    // the grid is within limits (checked above); the kernel skips table entries outside
    // the pool.
    unsafe { l.launch(cfg) }?;
    decode_reduce(
        b,
        (&part_ml, &part_acc),
        batch,
        (heads_i, g.head_dim, parts_i, part_len_i),
        out,
    )
}

/// Positions per decode partition: short ones (more blocks, shorter chains) unless the
/// grid would already fill the device several times over with them.
fn decode_part_len(b: &CudaBackend, blocks_per_part: usize, max_ctx: usize) -> usize {
    let target = DEC_WAVES * b.info().multiprocessors.max(1) as usize;
    let mut len = DEC_PART_MIN;
    while len < DEC_PART_MAX && blocks_per_part * max_ctx.div_ceil(len) > target {
        len *= 2;
    }
    len
}

/// Merges the decode partitions into `out` (`weft_paged_decode_reduce`, grid (num_seqs,
/// n_heads)). `scratch` was sized by the caller for (num_seqs, n_heads, parts) and `out`
/// holds num_seqs*n_heads*head_dim elements.
fn decode_reduce(
    b: &CudaBackend,
    (part_ml, part_acc): (&DeviceBuffer<f32>, &DeviceBuffer<f32>),
    batch: &PagedBatch,
    (heads, head_dim, parts, part_len): (i32, i32, i32, i32),
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    let f = b.function(names::DECODE_REDUCE)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(part_ml.slice())
        .arg(part_acc.slice())
        .arg(batch.ctx_lens.slice())
        .arg(out.slice_mut())
        .arg(&heads)
        .arg(&head_dim)
        .arg(&parts)
        .arg(&part_len);
    let cfg = LaunchConfig {
        grid_dim: (batch.num_seqs as u32, heads as u32, 1),
        block_dim: (ATT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `weft_paged_decode_reduce(const float*, const float*, const
    // int*, bf16*, int, int, int, int)`; the scratch holds (num_seqs, heads, parts) entries of
    // 2 and head_dim floats, ctx_lens num_seqs values, out num_seqs*heads*head_dim
    // elements (checked by the caller).
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// The prefill path of [`paged_attention`] (any number of new tokens per sequence,
/// chunked prefill included): `weft_paged_prefill` on grid (ceil(max_tokens * group /
/// 16), n_kv_heads, num_seqs), 128 threads, 41 KiB of static shared memory.
pub fn paged_attention_prefill(
    b: &CudaBackend,
    q: &DeviceBuffer<bf16>,
    cache: &PagedKvCache,
    batch: &PagedBatch,
    n_heads: usize,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    prefill_tiled(
        b,
        q,
        cache,
        batch,
        (n_heads, &batch.seq_info, batch.max_tokens),
        out,
    )
}

/// The tiled kernel over the sequences of `seq_info` (the batch's, or a copy where some
/// have no tokens); `max_tokens` is the most tokens of one of them.
fn prefill_tiled(
    b: &CudaBackend,
    q: &DeviceBuffer<bf16>,
    cache: &PagedKvCache,
    batch: &PagedBatch,
    (n_heads, seq_info, max_tokens): (usize, &DeviceBuffer<i32>, usize),
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    const OP: &str = "paged_attention_prefill";
    let (heads_i, group) = attention_shape(OP, q, out, cache, batch, n_heads)?;
    check_len(OP, 3 * batch.num_seqs, seq_info.len())?;
    if batch.total_tokens == 0 {
        return Ok(());
    }
    let rows = mul(OP, max_tokens, group)?;
    to_i32("rows of one sequence (tokens x group)", rows)?;
    let x = rows.div_ceil(PF_BQ);
    if cache.n_kv_heads > GRID_YZ_MAX || batch.num_seqs > GRID_YZ_MAX || x > i32::MAX as usize {
        return Err(CudaError::Shape(format!("{OP}: grid too large")));
    }
    let g = Geometry::of(cache, batch)?;
    let f = b.function(names::PREFILL)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(q.slice())
        .arg(cache.k.slice())
        .arg(cache.v.slice())
        .arg(batch.tables.slice())
        .arg(seq_info.slice())
        .arg(out.slice_mut())
        .arg(&heads_i)
        .arg(&g.kv_heads)
        .arg(&g.head_dim)
        .arg(&g.block_size)
        .arg(&g.num_blocks)
        .arg(&g.max_blocks)
        .arg(&g.scale);
    let cfg = LaunchConfig {
        grid_dim: (
            x.max(1) as u32,
            cache.n_kv_heads as u32,
            batch.num_seqs as u32,
        ),
        block_dim: (ATT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `weft_paged_prefill` in order and type; q and out hold
    // total_tokens*n_heads*head_dim elements and seq_info's rows (3 per sequence,
    // checked) lie inside them (a copy of the batch's with some counts zeroed); tables
    // hold num_seqs*max_blocks entries; head_dim is even and <= 256; the grid is within
    // limits (checked above).
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// Pool and batch geometry as kernel arguments.
struct Geometry {
    kv_heads: i32,
    head_dim: i32,
    block_size: i32,
    num_blocks: i32,
    max_blocks: i32,
    scale: f32,
}

impl Geometry {
    fn of(cache: &PagedKvCache, batch: &PagedBatch) -> Result<Geometry, CudaError> {
        Ok(Geometry {
            kv_heads: to_i32("n_kv_heads", cache.n_kv_heads)?,
            head_dim: to_i32("head_dim", cache.head_dim)?,
            block_size: to_i32("block_size", cache.block_size)?,
            num_blocks: to_i32("num_blocks", cache.num_blocks)?,
            max_blocks: to_i32("max_blocks", batch.max_blocks)?,
            scale: 1.0 / (cache.head_dim as f32).sqrt(),
        })
    }
}
