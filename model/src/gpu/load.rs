//! Putting a rank's weights on the device: from a shard (any dtype the CPU
//! reads, rounded to bf16 on upload, one tensor at a time so host memory
//! stays at one tensor), or seeded random weights for measurement.

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use weft_kernels::cuda::ops_fused::fill_random;
use weft_kernels::cuda::{CudaBackend, DeviceBuffer};
use weft_kernels::{DType, Matrix, RopeStyle};

use super::{GpuError, GpuLayer, GpuRankModel, KvGeometry};
use crate::checkpoint::TensorName;
use crate::config::{ModelConfig, RopeLayout};
use crate::llama::LocalDims;
use crate::shard::{model_tensor_names, Shard, ShardTensor};

/// Where weights come from.
enum Source<'a> {
    Shard(&'a Shard),
    Random(SyntheticInit),
}

/// Seeded random weights (for timing and shape tests, no files).
#[derive(Clone, Copy, Debug)]
pub struct SyntheticInit {
    pub seed: u64,
}

/// Synthetic weights made on the device (nothing crosses the bus): the ranges of
/// [`random_values`], from the device's own counter-based generator keyed by the seed and
/// the tensor's name (so not the same values as the host stream).
fn device_random(
    b: &CudaBackend,
    name: TensorName,
    (rows, cols): (usize, usize),
    seed: u64,
) -> Result<DeviceBuffer<bf16>, GpuError> {
    let (scale, offset) = if is_norm(name) {
        (0.1, 1.0)
    } else {
        (1.0 / (cols.max(1) as f32).sqrt(), 0.0)
    };
    let mut buf = DeviceBuffer::<bf16>::zeros(b, rows * cols)?;
    let key = seed ^ fnv(name.canonical().as_bytes());
    fill_random(b, &mut buf, key, scale, offset)?;
    Ok(buf)
}

fn is_norm(name: TensorName) -> bool {
    matches!(
        name,
        TensorName::AttnNorm(_) | TensorName::MlpNorm(_) | TensorName::FinalNorm
    )
}

/// A deterministic value stream for one tensor: norm weights near 1,
/// matrices uniform in ±1/sqrt(cols) (activations stay in range).
fn random_values(name: TensorName, rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let key = seed ^ fnv(name.canonical().as_bytes());
    let is_norm = is_norm(name);
    let scale = 1.0 / (cols.max(1) as f32).sqrt();
    let mut out = vec![0f32; rows * cols];
    // Parallel in chunks, each with its own stream keyed by the chunk index,
    // so the values do not depend on the thread count.
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = ChaCha8Rng::seed_from_u64(key.wrapping_add(i as u64));
            for v in chunk {
                let u: f32 = rng.random_range(-1.0..1.0);
                *v = if is_norm { 1.0 + 0.1 * u } else { u * scale };
            }
        });
    out
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A whole-model (world size 1) shard of seeded random bf16 weights, for
/// comparing the CPU and GPU forward passes on the same numbers.
pub fn random_shard(cfg: &ModelConfig, seed: u64) -> Shard {
    let tensors = model_tensor_names(cfg)
        .into_iter()
        .map(|name| {
            let (rows, cols) = name.expected_shape(cfg);
            let values = random_values(name, rows, cols, seed);
            let data: Vec<u8> = values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect();
            ShardTensor {
                name,
                dtype: DType::BF16,
                rows,
                cols,
                data,
            }
        })
        .collect();
    Shard {
        rank: 0,
        world_size: 1,
        tensors,
    }
}

struct Loader<'a> {
    b: &'a CudaBackend,
    src: Source<'a>,
    cfg: &'a ModelConfig,
}

impl Loader<'_> {
    /// The tensor as f32 values, checked against its expected local shape.
    fn values(&self, name: TensorName, rows: usize, cols: usize) -> Result<Vec<f32>, GpuError> {
        match &self.src {
            Source::Random(init) => Ok(random_values(name, rows, cols, init.seed)),
            Source::Shard(shard) => {
                let t = shard.get(name).ok_or_else(|| GpuError::MissingTensor {
                    name: name.canonical(),
                })?;
                if t.rows * t.cols != rows * cols || (cols > 1 && t.cols != cols) {
                    return Err(GpuError::BadShape {
                        name: name.canonical(),
                        rows: t.rows,
                        cols: t.cols,
                        want_rows: rows,
                        want_cols: cols,
                    });
                }
                Ok(Matrix::from_bytes(t.dtype, t.rows, t.cols, &t.data)?.to_f32())
            }
        }
    }

    fn upload(
        &self,
        name: TensorName,
        rows: usize,
        cols: usize,
    ) -> Result<DeviceBuffer<bf16>, GpuError> {
        if let Source::Random(init) = &self.src {
            return device_random(self.b, name, (rows, cols), init.seed);
        }
        let v = self.values(name, rows, cols)?;
        Ok(DeviceBuffer::from_f32(self.b, &v)?)
    }

    /// Gate rows followed by up rows, as one `[2 * inter, hidden]` weight.
    fn gate_up(&self, layer: usize, inter: usize) -> Result<DeviceBuffer<bf16>, GpuError> {
        let h = self.cfg.hidden_size;
        if let Source::Random(init) = &self.src {
            return device_random(self.b, TensorName::Gate(layer), (2 * inter, h), init.seed);
        }
        let mut v = self.values(TensorName::Gate(layer), inter, h)?;
        v.extend(self.values(TensorName::Up(layer), inter, h)?);
        Ok(DeviceBuffer::from_f32(self.b, &v)?)
    }

    /// Q, K and V rows as one `[qw + 2 * kvw, hidden]` weight.
    fn qkv(&self, layer: usize, qw: usize, kvw: usize) -> Result<DeviceBuffer<bf16>, GpuError> {
        let h = self.cfg.hidden_size;
        if let Source::Random(init) = &self.src {
            return device_random(self.b, TensorName::Q(layer), (qw + 2 * kvw, h), init.seed);
        }
        let mut v = self.values(TensorName::Q(layer), qw, h)?;
        v.extend(self.values(TensorName::K(layer), kvw, h)?);
        v.extend(self.values(TensorName::V(layer), kvw, h)?);
        Ok(DeviceBuffer::from_f32(self.b, &v)?)
    }

    fn layer(&self, i: usize, d: &LocalDims) -> Result<GpuLayer, GpuError> {
        let h = self.cfg.hidden_size;
        let (qw, kvw) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
        Ok(GpuLayer {
            attn_norm: self.upload(TensorName::AttnNorm(i), h, 1)?,
            qkv: self.qkv(i, qw, kvw)?,
            o: self.upload(TensorName::O(i), h, qw)?,
            mlp_norm: self.upload(TensorName::MlpNorm(i), h, 1)?,
            gate_up: self.gate_up(i, d.intermediate)?,
            down: self.upload(TensorName::Down(i), h, d.intermediate)?,
        })
    }
}

impl GpuRankModel {
    /// This rank's model from its shard (the same shard the CPU path reads).
    pub fn from_shard(
        b: &CudaBackend,
        cfg: &ModelConfig,
        shard: &Shard,
        kv: KvGeometry,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GpuError> {
        Self::check_supported(cfg)?;
        let place = (shard.rank, shard.world_size);
        Self::build(b, cfg, Source::Shard(shard), place, kv, progress)
    }

    /// Seeded random weights of `cfg`'s shape, generated without files.
    pub fn synthetic(
        b: &CudaBackend,
        cfg: &ModelConfig,
        init: SyntheticInit,
        kv: KvGeometry,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GpuError> {
        Self::check_supported(cfg)?;
        Self::build(b, cfg, Source::Random(init), (0, 1), kv, progress)
    }

    fn build(
        b: &CudaBackend,
        cfg: &ModelConfig,
        src: Source<'_>,
        (rank, world): (usize, usize),
        kv: KvGeometry,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GpuError> {
        let d = LocalDims::new(cfg, rank, world);
        let l = Loader { b, src, cfg };
        let h = cfg.hidden_size;
        let n = cfg.num_layers;
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            layers.push(l.layer(i, &d)?);
            progress(i + 1, n);
        }
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(l.upload(TensorName::LmHead, d.vocab, h)?)
        };
        Ok(GpuRankModel {
            cfg: cfg.clone(),
            rank,
            world,
            dims: d,
            embed: l.upload(TensorName::Embed, d.vocab, h)?,
            lm_head,
            final_norm: l.upload(TensorName::FinalNorm, h, 1)?,
            layers,
            inv_freq: DeviceBuffer::from_slice(b, &cfg.rope_inv_freq())?,
            rope: match cfg.rope_layout {
                RopeLayout::Half => RopeStyle::Half,
                RopeLayout::Interleaved => RopeStyle::Interleaved,
            },
            kv: Self::new_pools(b, cfg, &d, kv)?,
            block_size: kv.block_size,
            num_blocks: kv.num_blocks,
        })
    }
}
