//! A rank on a CUDA device (feature `cuda`): the model's weights and K/V
//! pool live on the GPU; each step's logits come back to the engine thread,
//! which samples them exactly as on the CPU (all sampling options).

use std::path::PathBuf;
use std::time::Duration;

use weft_kernels::cuda::{CudaBackend, CudaConfig};
use weft_model::comm::nccl::{NcclComm, NcclConfig, NcclId};
use weft_model::config::ModelConfig;
use weft_model::gpu::{GpuRankModel, GpuSeq, KvGeometry};
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

fn gpu_err(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::NotReady(format!("CUDA backend: {e}"))
}

impl GpuRank {
    /// Uploads `shard` to the device (logging progress per layer).
    pub fn load(cfg: &ModelConfig, shard: &Shard, c: &GpuRankConfig) -> Result<Self, WorkerError> {
        let backend = CudaBackend::new(CudaConfig {
            ordinal: c.ordinal,
            ptx_cache_dir: c.ptx_cache_dir.clone(),
        })
        .map_err(gpu_err)?;
        backend.preload().map_err(gpu_err)?;
        let (free, total) = backend.context().mem_get_info().map_err(gpu_err)?;
        let weights = shard
            .tensors
            .iter()
            .map(|t| t.rows * t.cols * 2)
            .sum::<usize>();
        let kv_heads = cfg.num_kv_heads / shard.world_size.max(1);
        let kv =
            2 * cfg.num_layers * c.kv.block_size * c.kv.num_blocks * kv_heads * cfg.head_dim * 2;
        let budget = (total as f64 * c.memory_fraction) as usize;
        if weights + kv > budget.min(free) {
            return Err(WorkerError::InvalidArgument(format!(
                "cuda:{}: {weights} bytes of bf16 weights and {kv} bytes of K/V pool ({} blocks) \
                 exceed {} bytes ({} free, fraction {}); lower --kv-blocks / --kv-cache-mib",
                c.ordinal,
                c.kv.num_blocks,
                budget.min(free),
                free,
                c.memory_fraction
            )));
        }
        let mut progress = |i: usize, n: usize| {
            tracing::info!(layer = i, layers = n, "uploading weights to the GPU");
        };
        let model =
            GpuRankModel::from_shard(&backend, cfg, shard, c.kv, &mut progress).map_err(gpu_err)?;
        tracing::info!(device = %backend.info().name, weights, kv, "rank resident on the GPU");
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

    /// One step: the logits of the sequences that want them, on the host.
    pub fn forward_batch(&mut self, seqs: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, WorkerError> {
        let gseqs: Vec<GpuSeq<'_>> = seqs
            .iter()
            .map(|s| GpuSeq {
                tokens: s.tokens,
                start_pos: s.start_pos,
                block_table: s.block_table,
                want_logits: s.want_logits,
            })
            .collect();
        let out = self
            .model
            .forward(&self.backend, &gseqs, self.comm.as_mut())
            .map_err(|e| match e {
                weft_model::gpu::GpuError::Invalid(m) => WorkerError::InvalidArgument(m),
                other => gpu_err(other),
            })?;
        self.model
            .host_logits(&self.backend, &out, self.comm.as_mut())
            .map_err(gpu_err)
    }
}
