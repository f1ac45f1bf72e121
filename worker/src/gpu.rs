//! A rank on a CUDA device (feature `cuda`): the model's weights and K/V
//! pool live on the GPU; each step's logits come back to the engine thread,
//! which samples them exactly as on the CPU (all sampling options).

use std::path::PathBuf;
use std::time::Duration;

use weft_kernels::cuda::{CudaBackend, CudaConfig};
use weft_model::comm::nccl::{NcclComm, NcclConfig, NcclId};
use weft_model::config::ModelConfig;
use weft_model::gpu::{GpuRankModel, KvGeometry};
use weft_model::llama::SeqInput;
use weft_model::shard::Shard;

use crate::WorkerError;

/// How a GPU rank is set up.
#[derive(Clone, Debug)]
pub struct GpuRankConfig {
    pub ordinal: usize,
    pub ptx_cache_dir: Option<PathBuf>,
    /// Largest share of the device memory the weights and K/V pool may take.
    pub memory_fraction: f64,
    pub kv: KvGeometry,
    /// The group's NCCL id (128 bytes) when it has more than one rank.
    pub nccl_id: Vec<u8>,
    /// How long a collective may take before the communicator is aborted.
    pub collective_timeout: Duration,
}

pub struct GpuRank {
    backend: CudaBackend,
    model: GpuRankModel,
    /// None at world size 1.
    comm: Option<NcclComm>,
}

/// Device memory: the weights, then the K/V pool: the blocks asked for
/// (checked to fit), or with `kv.num_blocks == 0` as many as fit.
struct MemoryPlan {
    weights: usize,
    block_bytes: usize,
    kv_blocks: usize,
}

/// Left free for activations, cuBLAS workspace and the CUDA runtime.
const HEADROOM: usize = 2 << 30;

impl MemoryPlan {
    fn new(
        cfg: &ModelConfig,
        shard: &Shard,
        c: &GpuRankConfig,
        free: usize,
        total: usize,
    ) -> Result<Self, WorkerError> {
        let weights = shard
            .tensors
            .iter()
            .map(|t| t.rows * t.cols * 2)
            .sum::<usize>();
        let kv_heads = cfg.num_kv_heads / shard.world_size.max(1);
        let block_bytes = 2 * cfg.num_layers * c.kv.block_size * kv_heads * cfg.head_dim * 2;
        let used_elsewhere = total.saturating_sub(free);
        let budget = ((total as f64 * c.memory_fraction) as usize)
            .saturating_sub(used_elsewhere)
            .saturating_sub(HEADROOM);
        let room = budget.saturating_sub(weights) / block_bytes.max(1);
        let kv_blocks = match c.kv.num_blocks {
            0 => room,
            n => n,
        };
        if kv_blocks == 0 || kv_blocks > room {
            return Err(WorkerError::InvalidArgument(format!(
                "cuda:{}: {weights} bytes of bf16 weights and {kv_blocks} K/V blocks of {block_bytes} bytes \
                 do not fit in {budget} bytes (fraction {} of {total}, {free} free, {HEADROOM} kept back); \
                 room for {room} blocks",
                c.ordinal, c.memory_fraction
            )));
        }
        Ok(MemoryPlan {
            weights,
            block_bytes,
            kv_blocks,
        })
    }
}

fn model_err(e: weft_model::gpu::GpuError) -> WorkerError {
    match e {
        weft_model::gpu::GpuError::Invalid(m) => WorkerError::InvalidArgument(m),
        other => gpu_err(other),
    }
}

fn gpu_err(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::NotReady(format!("CUDA backend: {e}"))
}

impl GpuRank {
    /// Uploads `shard` to the device (logging progress per layer) and
    /// allocates the K/V pool (sized from device memory when asked).
    pub fn load(cfg: &ModelConfig, shard: &Shard, c: &GpuRankConfig) -> Result<Self, WorkerError> {
        let backend = CudaBackend::new(CudaConfig {
            ordinal: c.ordinal,
            ptx_cache_dir: c.ptx_cache_dir.clone(),
        })
        .map_err(gpu_err)?;
        backend.preload().map_err(gpu_err)?;
        let (free, total) = backend.context().mem_get_info().map_err(gpu_err)?;
        let plan = MemoryPlan::new(cfg, shard, c, free, total)?;
        let kv = KvGeometry {
            block_size: c.kv.block_size,
            num_blocks: plan.kv_blocks,
        };
        let mut progress = |i: usize, n: usize| {
            tracing::info!(layer = i, layers = n, "uploading weights to the GPU");
        };
        let model =
            GpuRankModel::from_shard(&backend, cfg, shard, kv, &mut progress).map_err(gpu_err)?;
        tracing::info!(
            device = %backend.info().name,
            weights = plan.weights,
            kv_blocks = plan.kv_blocks,
            kv_bytes = plan.kv_blocks * plan.block_bytes,
            "rank resident on the GPU"
        );
        let comm = if shard.world_size > 1 {
            let id = NcclId::from_bytes(&c.nccl_id).map_err(gpu_err)?;
            Some(
                NcclComm::init(NcclConfig {
                    id,
                    rank: shard.rank,
                    world_size: shard.world_size,
                    timeout: c.collective_timeout,
                    stream: backend.stream().clone(),
                })
                .map_err(gpu_err)?,
            )
        } else {
            None
        };
        Ok(GpuRank {
            backend,
            model,
            comm,
        })
    }

    /// K/V blocks this rank holds.
    pub fn kv_blocks(&self) -> usize {
        self.model.kv_geometry().num_blocks
    }

    /// One step choosing each sampled sequence's most likely token on the
    /// device (only the ids and log-probabilities come back); None when the
    /// logits are split across ranks (the host path then samples).
    pub fn forward_greedy(
        &mut self,
        seqs: &[SeqInput<'_>],
    ) -> Option<Result<Vec<(u32, f32)>, WorkerError>> {
        if self.model.world_size() > 1 {
            return None;
        }
        let mut run = || {
            let out = self
                .model
                .forward(&self.backend, seqs, None)
                .map_err(model_err)?;
            self.model.greedy(&self.backend, &out).map_err(gpu_err)
        };
        Some(run())
    }

    /// One step: the logits of the sequences that want them, on the host.
    pub fn forward_batch(&mut self, seqs: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, WorkerError> {
        let out = self
            .model
            .forward(&self.backend, seqs, self.comm.as_mut())
            .map_err(model_err)?;
        self.model
            .host_logits(&self.backend, &out, self.comm.as_mut())
            .map_err(gpu_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::checkpoint::TensorName;
    use weft_model::shard::ShardTensor;
    use weft_model::synthetic::SyntheticSpec;

    fn setup(num_blocks: usize) -> (ModelConfig, Shard, GpuRankConfig) {
        let cfg = SyntheticSpec::llama3_8b().config();
        // Only the sizes matter to the plan: one 1 GiB-of-bf16 tensor.
        let t = ShardTensor {
            name: TensorName::Embed,
            dtype: weft_kernels::DType::BF16,
            rows: 1 << 19,
            cols: 1 << 10,
            data: Vec::new(),
        };
        let shard = Shard {
            rank: 0,
            world_size: 1,
            tensors: vec![t],
        };
        let c = GpuRankConfig {
            ordinal: 0,
            ptx_cache_dir: None,
            memory_fraction: 0.5,
            kv: KvGeometry {
                block_size: 16,
                num_blocks,
            },
            nccl_id: Vec::new(),
            collective_timeout: Duration::from_secs(1),
        };
        (cfg, shard, c)
    }

    #[test]
    fn the_pool_takes_what_the_fraction_leaves() {
        let gib = 1usize << 30;
        let (cfg, shard, c) = setup(0);
        // 80 GiB card, 1 GiB used by others: budget 40 - 1 - 2 (headroom) = 37 GiB,
        // minus 1 GiB of weights; a block is 2*32*16*8*128*2 bytes = 2 MiB.
        let plan = MemoryPlan::new(&cfg, &shard, &c, 79 * gib, 80 * gib).expect("fits");
        assert_eq!(plan.weights, gib);
        assert_eq!(plan.block_bytes, 2 << 20);
        assert_eq!(plan.kv_blocks, 36 * gib / (2 << 20));
        // An explicit count is kept when it fits and refused when it does not.
        let (_, _, c) = setup(100);
        let plan = MemoryPlan::new(&cfg, &shard, &c, 79 * gib, 80 * gib).expect("fits");
        assert_eq!(plan.kv_blocks, 100);
        let (_, _, c) = setup(1 << 20);
        let e = MemoryPlan::new(&cfg, &shard, &c, 79 * gib, 80 * gib)
            .err()
            .expect("too many");
        assert!(e.to_string().contains("room for 18432 blocks"), "{e}");
        // Nothing left for a pool: refused, not a zero-block pool.
        let (_, _, c) = setup(0);
        assert!(MemoryPlan::new(&cfg, &shard, &c, 2 * gib, 8 * gib).is_err());
    }
}
