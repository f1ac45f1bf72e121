//! One rank of the llama forward pass on a CUDA device (feature `cuda`):
//! weights resident in bf16, the paged K/V pool on the device, bf16
//! activations with f32 accumulation, cuBLAS GEMMs and the NVRTC kernels of
//! `weft_kernels::cuda`.
//!
//! With more than one rank the tensor-parallel reductions (embedding,
//! attention output, MLP output) are NCCL all-reduces in bf16 and the
//! vocabulary-sharded logits are all-gathered, through the communicator
//! ([`crate::comm::nccl::NcclComm`]) the caller passes to each step.

mod forward;
mod load;
mod probe;

use weft_kernels::cuda::{CudaBackend, CudaError, DeviceBuffer, PagedKvCache};

use crate::config::ModelConfig;
use crate::llama::LocalDims;

pub use forward::GpuStepOutput;
pub use load::{random_shard, SyntheticInit};

use half::bf16;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("CUDA: {0}")]
    Cuda(#[from] CudaError),
    #[error("{0}")]
    Unsupported(String),
    #[error("bad input: {0}")]
    Invalid(String),
    #[error("shard: tensor {name} is missing")]
    MissingTensor { name: String },
    #[error("shard: tensor {name} is {rows}x{cols}, expected {want_rows}x{want_cols}")]
    BadShape {
        name: String,
        rows: usize,
        cols: usize,
        want_rows: usize,
        want_cols: usize,
    },
    #[error("kernels: {0}")]
    Kernel(#[from] weft_kernels::KernelError),
    #[error("NCCL: {0}")]
    Comm(#[from] crate::comm::nccl::NcclError),
}

/// One decoder layer's weights on the device (bf16, row-major
/// `[out_features, in_features]`).
pub(crate) struct GpuLayer {
    attn_norm: DeviceBuffer<bf16>,
    /// Q rows, then K rows, then V rows: `[(heads + 2 * kv_heads) * head_dim, hidden]`,
    /// so one GEMM gives `[tokens, q | k | v]`.
    qkv: DeviceBuffer<bf16>,
    o: DeviceBuffer<bf16>,
    mlp_norm: DeviceBuffer<bf16>,
    /// Gate rows then up rows: `[2 * intermediate, hidden]`, so one GEMM
    /// gives `[tokens, gate | up]` for the fused SiLU-multiply.
    gate_up: DeviceBuffer<bf16>,
    down: DeviceBuffer<bf16>,
}

/// This rank's model on one device, with its K/V pool.
pub struct GpuRankModel {
    cfg: ModelConfig,
    rank: usize,
    world: usize,
    dims: LocalDims,
    embed: DeviceBuffer<bf16>,
    /// None: tied to `embed`.
    lm_head: Option<DeviceBuffer<bf16>>,
    final_norm: DeviceBuffer<bf16>,
    layers: Vec<GpuLayer>,
    inv_freq: DeviceBuffer<f32>,
    rope: weft_kernels::RopeStyle,
    /// One pool per layer.
    kv: Vec<PagedKvCache>,
    block_size: usize,
    num_blocks: usize,
}

/// Geometry of the K/V pool.
#[derive(Clone, Copy, Debug)]
pub struct KvGeometry {
    pub block_size: usize,
    pub num_blocks: usize,
}

impl KvGeometry {
    /// Blocks that fit in `fraction` of the device's free memory, given the
    /// model (per block: K and V, every layer, this rank's KV heads, bf16).
    pub fn from_free_memory(
        cfg: &ModelConfig,
        world: usize,
        block_size: usize,
        free_bytes: usize,
        fraction: f64,
    ) -> Result<Self, GpuError> {
        if !(0.0..=1.0).contains(&fraction) || block_size == 0 {
            return Err(GpuError::Invalid(format!(
                "KV fraction {fraction} must lie in [0, 1] and the block size be positive"
            )));
        }
        let kv_heads = cfg.num_kv_heads / world.max(1);
        let per_block = 2 * cfg.num_layers * block_size * kv_heads * cfg.head_dim * 2;
        let budget = (free_bytes as f64 * fraction) as usize;
        let num_blocks = budget / per_block.max(1);
        if num_blocks == 0 {
            return Err(GpuError::Invalid(format!(
                "no K/V block fits: {budget} bytes for blocks of {per_block} bytes"
            )));
        }
        Ok(KvGeometry {
            block_size,
            num_blocks,
        })
    }
}

impl GpuRankModel {
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn kv_geometry(&self) -> KvGeometry {
        KvGeometry {
            block_size: self.block_size,
            num_blocks: self.num_blocks,
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    fn check_supported(cfg: &ModelConfig) -> Result<(), GpuError> {
        if cfg.attention_bias {
            return Err(GpuError::Unsupported(
                "Q/K/V biases (Qwen2) are not implemented on the GPU yet".into(),
            ));
        }
        Ok(())
    }

    /// Allocates the per-layer K/V pools.
    fn new_pools(
        b: &CudaBackend,
        cfg: &ModelConfig,
        dims: &LocalDims,
        kv: KvGeometry,
    ) -> Result<Vec<PagedKvCache>, GpuError> {
        (0..cfg.num_layers)
            .map(|_| {
                PagedKvCache::new(
                    b,
                    kv.num_blocks,
                    kv.block_size,
                    dims.kv_heads,
                    dims.head_dim,
                )
                .map_err(GpuError::from)
            })
            .collect()
    }
}
