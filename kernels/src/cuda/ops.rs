//! Safe host-side wrappers of the element-wise, norm, rotary and sampling kernels. Each
//! checks its shapes (a typed [`CudaError::Shape`], never a panic) and queues one kernel on
//! the backend's stream; nothing waits for it (see [`CudaBackend::synchronize`]).
//!
//! Launch shapes: embedding, norms, rotary and paged write use one block per row/token
//! (`ROW_THREADS` threads); SiLU-multiply a grid-stride 1-D grid; top-k one block of
//! `TOPK_THREADS` per logits row.

use cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use half::bf16;

use super::device::CudaBackend;
use super::error::{check_len, mul, to_i32, CudaError};
use super::source::names;
use super::tensor::DeviceBuffer;
use crate::RopeStyle;

/// Threads per block of the row kernels.
pub(crate) const ROW_THREADS: u32 = 256;
/// Threads per block of the argmax kernel (one block per logits row).
const ARGMAX_THREADS: u32 = 1024;
/// Threads per block of the top-k kernel.
const TOPK_THREADS: u32 = 128;
/// The largest `k` of [`topk_logprobs`].
pub const TOPK_MAX: usize = 20;
/// The id [`topk_logprobs`] reports for missing entries (fewer than `k` non-NaN logits).
pub const TOPK_NONE: u32 = u32::MAX;
/// The largest `head_dim / 2` of [`rope`].
pub(crate) const ROPE_MAX_HALF: usize = 256;
/// Blocks of the grid-stride kernels (enough to fill any current GPU).
const MAX_GRID: usize = 65_536;

/// One block of `threads` per item of `n` (grid.x may be up to 2^31 - 1).
pub(crate) fn per_item(n: usize, threads: u32) -> Result<LaunchConfig, CudaError> {
    let blocks = u32::try_from(n)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| CudaError::Shape(format!("{n} rows exceed the grid limit")))?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Copies the rows of `table` (`[vocab_rows, hidden]`, this rank's vocabulary slice
/// starting at token `vocab_start`) for each token of `ids` into `out` (`[n, hidden]`);
/// tokens outside the slice get zero rows, as on the CPU (the sum over ranks is exact).
pub fn embedding(
    b: &CudaBackend,
    table: &DeviceBuffer<bf16>,
    hidden: usize,
    ids: &DeviceBuffer<u32>,
    vocab_start: u32,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    const OP: &str = "embedding";
    if hidden == 0 || !table.len().is_multiple_of(hidden) {
        return Err(CudaError::Shape(format!(
            "{OP}: table length {} is not a multiple of hidden {hidden}",
            table.len()
        )));
    }
    let n = ids.len();
    check_len("embedding: out", mul(OP, n, hidden)?, out.len())?;
    let rows = u32::try_from(table.len() / hidden)
        .map_err(|_| CudaError::Shape(format!("{OP}: more than 2^32 vocabulary rows")))?;
    if n == 0 {
        return Ok(());
    }
    let (n_i, hidden_i) = (to_i32("n_tokens", n)?, to_i32("hidden", hidden)?);
    let f = b.function(names::EMBEDDING)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(table.slice())
        .arg(ids.slice())
        .arg(out.slice_mut())
        .arg(&n_i)
        .arg(&hidden_i)
        .arg(&vocab_start)
        .arg(&rows);
    // SAFETY: the arguments match `weft_embedding(const bf16*, const u32*, bf16*, int, int,
    // u32, u32)` in order and type; table holds rows*hidden, ids n, out n*hidden elements
    // (checked above); the kernel reads table rows only for ids inside 0..rows.
    unsafe { l.launch(per_item(n, ROW_THREADS)?) }?;
    Ok(())
}

/// Validates a norm call; returns `(rows, d)` as kernel arguments.
fn norm_shape(
    op: &str,
    x: usize,
    weight: usize,
    out: usize,
    eps: f32,
) -> Result<(i32, i32), CudaError> {
    if weight == 0 || !x.is_multiple_of(weight) {
        return Err(CudaError::Shape(format!(
            "{op}: x length {x} is not a multiple of the weight length {weight}"
        )));
    }
    check_len(op, x, out)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(CudaError::Shape(format!(
            "{op}: eps {eps} must be finite and >= 0"
        )));
    }
    Ok((to_i32("rows", x / weight)?, to_i32("d", weight)?))
}

/// Each row of `x` (`[rows, d]`, `d = weight.len()`): `out = x / sqrt(mean(x²) + eps) *
/// weight` (f32 arithmetic, bf16 result). Like the CPU `rms_norm`.
pub fn rms_norm(
    b: &CudaBackend,
    x: &DeviceBuffer<bf16>,
    weight: &DeviceBuffer<bf16>,
    eps: f32,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    let (rows, d) = norm_shape("rms_norm", x.len(), weight.len(), out.len(), eps)?;
    if rows == 0 {
        return Ok(());
    }
    let f = b.function(names::RMS_NORM)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(x.slice())
        .arg(weight.slice())
        .arg(out.slice_mut())
        .arg(&rows)
        .arg(&d)
        .arg(&eps);
    // SAFETY: arguments match `weft_rms_norm(const bf16*, const bf16*, bf16*, int, int,
    // float)`; x and out hold rows*d, weight d elements (checked by norm_shape).
    unsafe { l.launch(per_item(rows as usize, ROW_THREADS)?) }?;
    Ok(())
}

/// The fused pre-norm of a transformer block: `residual += x` (stored as bf16), then
/// `out = rms_norm(residual) * weight`, per row of `d = weight.len()`. Like the CPU
/// `add_inplace(residual, x)` followed by `rms_norm(residual, ..)`.
pub fn add_rms_norm(
    b: &CudaBackend,
    x: &DeviceBuffer<bf16>,
    residual: &mut DeviceBuffer<bf16>,
    weight: &DeviceBuffer<bf16>,
    eps: f32,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    const OP: &str = "add_rms_norm";
    let (rows, d) = norm_shape(OP, x.len(), weight.len(), out.len(), eps)?;
    check_len("add_rms_norm: residual", x.len(), residual.len())?;
    if rows == 0 {
        return Ok(());
    }
    let f = b.function(names::ADD_RMS_NORM)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(x.slice())
        .arg(residual.slice_mut())
        .arg(weight.slice())
        .arg(out.slice_mut())
        .arg(&rows)
        .arg(&d)
        .arg(&eps);
    // SAFETY: arguments match `weft_add_rms_norm(const bf16*, bf16*, const bf16*, bf16*,
    // int, int, float)`; x, residual and out hold rows*d, weight d elements.
    unsafe { l.launch(per_item(rows as usize, ROW_THREADS)?) }?;
    Ok(())
}

/// Rotates `x` (`[n_tokens, n_heads, head_dim]`) in place; token `t` is at position
/// `positions[t]`, pair `i` turns by `positions[t] * inv_freq[i]` (angle, cos and sin in
/// f64, as on the CPU). `inv_freq` (`head_dim / 2` values) is computed on the host,
/// including theta and any llama3 scaling (the model's `rope_inv_freq`).
pub fn rope(
    b: &CudaBackend,
    x: &mut DeviceBuffer<bf16>,
    n_heads: usize,
    head_dim: usize,
    positions: &DeviceBuffer<u32>,
    inv_freq: &DeviceBuffer<f32>,
    style: RopeStyle,
) -> Result<(), CudaError> {
    const OP: &str = "rope";
    if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim / 2 > ROPE_MAX_HALF {
        return Err(CudaError::Shape(format!(
            "{OP}: head_dim {head_dim} must be even, positive and at most {}",
            2 * ROPE_MAX_HALF
        )));
    }
    let n = positions.len();
    check_len("rope: x", mul(OP, mul(OP, n, n_heads)?, head_dim)?, x.len())?;
    check_len("rope: inv_freq", head_dim / 2, inv_freq.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let (n_i, heads_i, hd_i) = (
        to_i32("n_tokens", n)?,
        to_i32("n_heads", n_heads)?,
        to_i32("head_dim", head_dim)?,
    );
    let interleaved = i32::from(style == RopeStyle::Interleaved);
    let f = b.function(names::ROPE)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(x.slice_mut())
        .arg(positions.slice())
        .arg(inv_freq.slice())
        .arg(&n_i)
        .arg(&heads_i)
        .arg(&hd_i)
        .arg(&interleaved);
    // SAFETY: arguments match `weft_rope(bf16*, const u32*, const float*, int, int, int,
    // int)`; x holds n*n_heads*head_dim, positions n, inv_freq head_dim/2 elements, and
    // head_dim/2 fits the kernel's shared table (checked above).
    unsafe { l.launch(per_item(n, ROW_THREADS)?) }?;
    Ok(())
}

/// `out = silu(gate) * up` element-wise (`silu(g) = g / (1 + exp(-g))`), like the CPU
/// `silu_mul`.
pub fn silu_mul(
    b: &CudaBackend,
    gate: &DeviceBuffer<bf16>,
    up: &DeviceBuffer<bf16>,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    check_len("silu_mul: up", gate.len(), up.len())?;
    check_len("silu_mul: out", gate.len(), out.len())?;
    if out.is_empty() {
        return Ok(());
    }
    let n = gate.len();
    silu_launch(b, (&gate.view(), &up.view()), 1, n, n, out)
}

/// The same on the output of a merged gate/up projection: `gate_up` is `[rows, 2d]`
/// (gate in the first `d` columns of each row, up in the last `d`), `out` is `[rows, d]`.
pub fn silu_mul_fused(
    b: &CudaBackend,
    gate_up: &DeviceBuffer<bf16>,
    d: usize,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    let width = mul("silu_mul_fused", d, 2)?;
    if d == 0 || !gate_up.len().is_multiple_of(width) {
        return Err(CudaError::Shape(format!(
            "silu_mul_fused: gate_up length {} is not a multiple of 2d = {width}",
            gate_up.len()
        )));
    }
    check_len("silu_mul_fused: out", gate_up.len() / 2, out.len())?;
    if out.is_empty() {
        return Ok(());
    }
    let gate = gate_up.view();
    let up = gate.slice(d..);
    silu_launch(b, (&gate, &up), gate_up.len() / width, d, width, out)
}

/// `rows` rows of `d`: gate row r at `gate[r * stride..]`, up row r at `up[r * stride..]`.
/// The callers checked that both views hold `(rows - 1) * stride + d` elements and that
/// `out` holds `rows * d` (and is not empty).
fn silu_launch(
    b: &CudaBackend,
    (gate, up): (&CudaView<'_, bf16>, &CudaView<'_, bf16>),
    rows: usize,
    d: usize,
    stride: usize,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    let (rows_i, d_i, stride_i) = (
        to_i32("rows", rows)?,
        to_i32("d", d)?,
        to_i32("stride", stride)?,
    );
    let f = b.function(names::SILU_MUL)?;
    let blocks = out.len().div_ceil(ROW_THREADS as usize).min(MAX_GRID) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = b.stream().launch_builder(&f);
    l.arg(gate)
        .arg(up)
        .arg(out.slice_mut())
        .arg(&rows_i)
        .arg(&d_i)
        .arg(&stride_i);
    // SAFETY: arguments match `weft_silu_mul(const bf16*, const bf16*, bf16*, int, int,
    // int)`; the kernel reads gate/up[r*stride + i] for r < rows, i < d, inside the views
    // (sizes checked by the callers), and writes out[0..rows*d] (out holds rows*d).
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// For each row of `logits` (`[rows, vocab]`, f32): the largest logit's token (lowest id
/// on ties, NaN never wins; 0 for a row of only NaN) and its log-softmax, as the CPU
/// sampler's `argmax` and `logprob_of`. `ids` and `logprobs` hold `rows` values.
pub fn argmax_logprob(
    b: &CudaBackend,
    logits: &DeviceBuffer<f32>,
    vocab: usize,
    ids: &mut DeviceBuffer<u32>,
    logprobs: &mut DeviceBuffer<f32>,
) -> Result<(), CudaError> {
    const OP: &str = "argmax_logprob";
    if vocab == 0 || !logits.len().is_multiple_of(vocab) {
        return Err(CudaError::Shape(format!(
            "{OP}: logits length {} is not a multiple of vocab {vocab}",
            logits.len()
        )));
    }
    let rows = logits.len() / vocab;
    check_len("argmax_logprob: ids", rows, ids.len())?;
    check_len("argmax_logprob: logprobs", rows, logprobs.len())?;
    if rows == 0 {
        return Ok(());
    }
    let (rows_i, vocab_i) = (to_i32("rows", rows)?, to_i32("vocab", vocab)?);
    let f = b.function(names::ARGMAX_LOGPROB)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(logits.slice())
        .arg(&rows_i)
        .arg(&vocab_i)
        .arg(ids.slice_mut())
        .arg(logprobs.slice_mut());
    // SAFETY: arguments match `weft_argmax_logprob(const float*, int, int, u32*, float*)`;
    // logits hold rows*vocab values, ids and logprobs rows each (checked above).
    unsafe { l.launch(per_item(rows, ARGMAX_THREADS)?) }?;
    Ok(())
}

/// For each row of `logits` (`[rows, vocab]`): the `k <= 20` most likely tokens (larger
/// logit first, lower id on ties, NaN left out) and their log-softmax over the whole row.
/// `ids` and `logprobs` are `[rows, k]`; a row with fewer than `k` non-NaN logits is
/// padded with [`TOPK_NONE`] and `-inf`.
pub fn topk_logprobs(
    b: &CudaBackend,
    logits: &DeviceBuffer<f32>,
    vocab: usize,
    k: usize,
    ids: &mut DeviceBuffer<u32>,
    logprobs: &mut DeviceBuffer<f32>,
) -> Result<(), CudaError> {
    topk_launch(b, logits, vocab, k, TOPK_NONE, ids, logprobs)
}

fn topk_launch(
    b: &CudaBackend,
    logits: &DeviceBuffer<f32>,
    vocab: usize,
    k: usize,
    pad_id: u32,
    ids: &mut DeviceBuffer<u32>,
    logprobs: &mut DeviceBuffer<f32>,
) -> Result<(), CudaError> {
    const OP: &str = "topk_logprobs";
    if !(1..=TOPK_MAX).contains(&k) {
        return Err(CudaError::Shape(format!(
            "{OP}: k = {k} must be in 1..={TOPK_MAX}"
        )));
    }
    if vocab == 0 || !logits.len().is_multiple_of(vocab) {
        return Err(CudaError::Shape(format!(
            "{OP}: logits length {} is not a multiple of vocab {vocab}",
            logits.len()
        )));
    }
    let rows = logits.len() / vocab;
    check_len("topk_logprobs: ids", mul(OP, rows, k)?, ids.len())?;
    check_len("topk_logprobs: logprobs", rows * k, logprobs.len())?;
    if rows == 0 {
        return Ok(());
    }
    let (rows_i, vocab_i, k_i) = (to_i32("rows", rows)?, to_i32("vocab", vocab)?, k as i32);
    let f = b.function(names::TOPK_LOGPROBS)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(logits.slice())
        .arg(&rows_i)
        .arg(&vocab_i)
        .arg(&k_i)
        .arg(&pad_id)
        .arg(ids.slice_mut())
        .arg(logprobs.slice_mut());
    // SAFETY: arguments match `weft_topk_logprobs(const float*, int, int, int, u32, u32*,
    // float*)`; logits holds rows*vocab, ids and logprobs rows*k elements, 1 <= k <= 20
    // (the kernel's local arrays) and the block has more than k threads.
    unsafe { l.launch(per_item(rows, TOPK_THREADS)?) }?;
    Ok(())
}
