//! Host side of the tensor-core prefill attention (`source_flash.rs`): one launch per
//! sequence over its gathered K/V.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

use super::device::CudaBackend;
use super::error::{check_len, mul, to_i32, CudaError};
use super::source::names;
use super::tensor::DeviceBuffer;

/// Query rows and threads of one block (`FL_ROWS`, `FL_THREADS`).
pub(crate) const FL_ROWS: usize = 64;
const FL_THREADS: u32 = 128;

/// Whether the tensor-core kernel serves this device and head size: sm_80 or newer (the
/// `mma.sync` bf16 shape), head_dim 64 or 128.
pub(crate) fn flash_supported(b: &CudaBackend, head_dim: usize) -> bool {
    b.info().compute_capability.0 >= 8 && matches!(head_dim, 64 | 128)
}

/// One sequence's new tokens: rows `first_row..first_row + n` of `q` / `out`, the first
/// at position `q_pos0`, over keys `0..ctx`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlashSeq {
    pub first_row: usize,
    pub n: usize,
    pub q_pos0: usize,
    pub ctx: usize,
}

/// Head counts and size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlashHeads {
    pub n_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Causal attention of `seq`'s rows of `q` (`[tokens, n_heads, hd]`) over `kc` / `vc`
/// (`[ctx, kv_heads, hd]`) into the same rows of `out`.
pub(crate) fn flash_seq(
    b: &CudaBackend,
    (q, kc, vc): (
        &DeviceBuffer<bf16>,
        &DeviceBuffer<bf16>,
        &DeviceBuffer<bf16>,
    ),
    seq: FlashSeq,
    h: FlashHeads,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    const OP: &str = "flash_prefill";
    let name = match h.head_dim {
        64 => names::FLASH_64,
        128 => names::FLASH_128,
        other => {
            return Err(CudaError::Shape(format!(
                "{OP}: head_dim {other} (the kernel has 64 and 128)"
            )))
        }
    };
    if h.kv_heads == 0 || !h.n_heads.is_multiple_of(h.kv_heads) {
        return Err(CudaError::Shape(format!(
            "{OP}: n_heads {} is not a multiple of kv_heads {}",
            h.n_heads, h.kv_heads
        )));
    }
    let row = mul(OP, h.n_heads, h.head_dim)?;
    if mul(OP, seq.first_row + seq.n, row)? > q.len() || q.len() != out.len() {
        return Err(CudaError::Shape(format!(
            "{OP}: rows {}..{} outside q/out",
            seq.first_row,
            seq.first_row + seq.n
        )));
    }
    let kv_len = mul(OP, seq.ctx, h.kv_heads * h.head_dim)?;
    check_len("flash_prefill: k", kv_len, kc.len())?;
    check_len("flash_prefill: v", kv_len, vc.len())?;
    if seq.q_pos0 + seq.n > seq.ctx {
        return Err(CudaError::Shape(format!(
            "{OP}: queries reach position {}, past the {} keys",
            seq.q_pos0 + seq.n,
            seq.ctx
        )));
    }
    if seq.n == 0 {
        return Ok(());
    }
    let ints = [
        to_i32("n", seq.n)?,
        to_i32("q_pos0", seq.q_pos0)?,
        to_i32("ctx", seq.ctx)?,
        to_i32("n_heads", h.n_heads)?,
        to_i32("kv_heads", h.kv_heads)?,
        to_i32("first_row", seq.first_row)?,
    ];
    let scale = 1.0 / (h.head_dim as f32).sqrt();
    let f = b.function(name)?;
    let mut l = b.stream().launch_builder(&f);
    l.arg(q.slice())
        .arg(kc.slice())
        .arg(vc.slice())
        .arg(out.slice_mut());
    for v in &ints {
        l.arg(v);
    }
    l.arg(&scale);
    let cfg = LaunchConfig {
        grid_dim: (
            to_i32("row blocks", seq.n.div_ceil(FL_ROWS))? as u32,
            ints[3] as u32,
            1,
        ),
        block_dim: (FL_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `weft_flash_prefill_{64,128}(const bf16*, const bf16*, const
    // bf16*, bf16*, int, int, int, int, int, int, float)`; q and out hold the rows
    // first_row..first_row + n of n_heads * head_dim (checked), kc and vc ctx rows of
    // kv_heads * head_dim, every query position is below ctx, and the device runs
    // mma.sync (callers check `flash_supported`).
    unsafe { l.launch(cfg) }?;
    Ok(())
}
