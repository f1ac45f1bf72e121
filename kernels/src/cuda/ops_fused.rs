//! Fused kernels of the decoder layer (the split of a merged Q/K/V projection with the
//! rotary embedding of Q and K in one launch), and seeded random fill for synthetic
//! weights made on the device.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

use super::device::CudaBackend;
use super::error::{check_len, mul, to_i32, CudaError};
use super::ops::{per_item, ROPE_MAX_HALF, ROW_THREADS};
use super::source::names;
use super::tensor::DeviceBuffer;
use crate::RopeStyle;

/// Head counts and size of [`qkv_rope`].
#[derive(Clone, Copy, Debug)]
pub struct QkvShape {
    pub n_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Splits `qkv` (`[n, (n_heads + 2 * kv_heads) * head_dim]`, each row's Q, K and V
/// columns in that order) into `q` (`[n, n_heads, head_dim]`), `k` and `v` (`[n,
/// kv_heads, head_dim]`), rotating Q and K as [`super::ops::rope`] does (token `t` at
/// `positions[t]`): the same values as the split followed by two `rope` calls.
pub fn qkv_rope(
    b: &CudaBackend,
    qkv: &DeviceBuffer<bf16>,
    shape: QkvShape,
    (positions, inv_freq, style): (&DeviceBuffer<u32>, &DeviceBuffer<f32>, RopeStyle),
    (q, k, v): (
        &mut DeviceBuffer<bf16>,
        &mut DeviceBuffer<bf16>,
        &mut DeviceBuffer<bf16>,
    ),
) -> Result<(), CudaError> {
    const OP: &str = "qkv_rope";
    let hd = shape.head_dim;
    if hd == 0 || !hd.is_multiple_of(2) || hd / 2 > ROPE_MAX_HALF {
        return Err(CudaError::Shape(format!(
            "{OP}: head_dim {hd} must be even, positive and at most {}",
            2 * ROPE_MAX_HALF
        )));
    }
    let n = positions.len();
    let qw = mul(OP, shape.n_heads, hd)?;
    let kvw = mul(OP, shape.kv_heads, hd)?;
    check_len("qkv_rope: qkv", mul(OP, n, qw + 2 * kvw)?, qkv.len())?;
    check_len("qkv_rope: q", mul(OP, n, qw)?, q.len())?;
    check_len("qkv_rope: k", mul(OP, n, kvw)?, k.len())?;
    check_len("qkv_rope: v", mul(OP, n, kvw)?, v.len())?;
    check_len("qkv_rope: inv_freq", hd / 2, inv_freq.len())?;
    if n == 0 {
        return Ok(());
    }
    let ints = [
        to_i32("n_tokens", n)?,
        to_i32("n_heads", shape.n_heads)?,
        to_i32("kv_heads", shape.kv_heads)?,
        to_i32("head_dim", hd)?,
        i32::from(style == RopeStyle::Interleaved),
    ];
    to_i32("row width", qw + 2 * kvw)?;
    let f = b.function(names::QKV_ROPE)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(qkv.slice())
        .arg(positions.slice())
        .arg(inv_freq.slice())
        .arg(q.slice_mut())
        .arg(k.slice_mut())
        .arg(v.slice_mut());
    for i in &ints {
        l.arg(i);
    }
    // SAFETY: arguments match `weft_qkv_rope(const bf16*, const u32*, const float*, bf16*,
    // bf16*, bf16*, int, int, int, int, int)`; qkv holds n rows of (n_heads + 2 *
    // kv_heads) * head_dim, q n*n_heads*head_dim, k and v n*kv_heads*head_dim elements,
    // positions n and inv_freq head_dim/2 values, head_dim/2 fits the shared table
    // (checked above).
    unsafe { l.launch(per_item(n, ROW_THREADS)?) }?;
    Ok(())
}

/// Fills `out` with `offset + scale * u`, `u` uniform in `[-1, 1)` from a counter-based
/// generator keyed by `key` (the same values for the same key and length on any device).
pub fn fill_random(
    b: &CudaBackend,
    out: &mut DeviceBuffer<bf16>,
    key: u64,
    scale: f32,
    offset: f32,
) -> Result<(), CudaError> {
    if out.is_empty() {
        return Ok(());
    }
    let n = i64::try_from(out.len())
        .map_err(|_| CudaError::Shape(format!("fill_random: {} elements", out.len())))?;
    let blocks = out.len().div_ceil(ROW_THREADS as usize).clamp(1, 65_536) as u32;
    let f = b.function(names::FILL_RANDOM)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(out.slice_mut())
        .arg(&n)
        .arg(&key)
        .arg(&scale)
        .arg(&offset);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `weft_fill_random(bf16*, long long, unsigned long long,
    // float, float)`; the kernel writes indices below n = out.len() only.
    unsafe { l.launch(cfg) }?;
    Ok(())
}
