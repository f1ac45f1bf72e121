//! Megatron-style tensor-parallel layout: which slice of every weight each
//! rank holds, and reading those slices out of a checkpoint.
//!
//! * Q (and its bias) split by whole query heads, K/V (and biases) by whole
//!   KV heads, Gate/Up by intermediate rows: column-parallel, no collective.
//! * O and Down split by input columns: row-parallel, followed by all-reduce.
//! * Embed and LmHead split by vocabulary rows; all norms replicated.
//!
//! Shard digests are FNV-1a 64 (offset basis 0xcbf29ce484222325, prime
//! 0x100000001b3) over, per tensor in order: the canonical name's length
//! (u64 LE) and bytes, the dtype's ggml type id (u32 LE), rows and cols and
//! the data length (u64 LE each), then the data bytes.

use std::ops::Range;

use crate::checkpoint::{Checkpoint, LoadError, TensorName};
use crate::config::ModelConfig;
use weft_kernels::DType;

/// Errors while planning a tensor-parallel layout.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("tensor-parallel degree must be at least 1")]
    ZeroTp,
    #[error(
        "tp={tp} does not divide {dim}={value}; valid tp degrees for this model: {}",
        join(valid)
    )]
    NotDivisible {
        tp: usize,
        dim: &'static str,
        value: usize,
        valid: Vec<usize>,
    },
    #[error(
        "tp={tp} leaves {what}={cols} input columns per rank, not a multiple of the {block}-element {dtype:?} block; valid tp degrees for this model: {}",
        join(valid)
    )]
    BlockMisaligned {
        tp: usize,
        what: &'static str,
        cols: usize,
        block: usize,
        dtype: DType,
        valid: Vec<usize>,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// How one rank's piece of a tensor is cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Split {
    Replicated,
    Rows(Range<usize>),
    Cols(Range<usize>),
}

/// One tensor slice a rank must load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceSpec {
    pub name: TensorName,
    pub split: Split,
}

/// Every weight tensor the model needs, in a fixed order: Embed; per layer
/// AttnNorm, Q, K, V, [QBias, KBias, VBias], O, MlpNorm, Gate, Up, Down;
/// FinalNorm; LmHead unless tied.
pub fn model_tensor_names(c: &ModelConfig) -> Vec<TensorName> {
    use TensorName::*;
    let mut v = vec![Embed];
    for l in 0..c.num_layers {
        v.extend([AttnNorm(l), Q(l), K(l), V(l)]);
        if c.attention_bias {
            v.extend([QBias(l), KBias(l), VBias(l)]);
        }
        v.extend([O(l), MlpNorm(l), Gate(l), Up(l), Down(l)]);
    }
    v.push(FinalNorm);
    if !c.tie_word_embeddings {
        v.push(LmHead);
    }
    v
}

/// Largest block among the dtypes, and which dtype it is.
fn col_block(dtypes: &[DType]) -> (usize, DType) {
    dtypes
        .iter()
        .map(|&d| (d.block_elems(), d))
        .max_by_key(|&(b, _)| b)
        .unwrap_or((1, DType::F32))
}

/// Checks one degree; on failure returns the error without the valid list.
fn check_tp(c: &ModelConfig, tp: usize, dtypes: &[DType]) -> Result<(), PlanError> {
    if tp == 0 {
        return Err(PlanError::ZeroTp);
    }
    let dims = [
        ("num_kv_heads", c.num_kv_heads),
        ("num_heads", c.num_heads),
        ("intermediate_size", c.intermediate_size),
        ("vocab_size", c.vocab_size),
    ];
    for (dim, value) in dims {
        if !value.is_multiple_of(tp) {
            return Err(PlanError::NotDivisible {
                tp,
                dim,
                value,
                valid: Vec::new(),
            });
        }
    }
    let (block, dtype) = col_block(dtypes);
    let cols = [
        ("o_proj", c.num_heads * c.head_dim / tp),
        ("down_proj", c.intermediate_size / tp),
    ];
    for (what, cols) in cols {
        if !cols.is_multiple_of(block) {
            return Err(PlanError::BlockMisaligned {
                tp,
                what,
                cols,
                block,
                dtype,
                valid: Vec::new(),
            });
        }
    }
    Ok(())
}

/// The tensor-parallel layout of one model at one degree.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardPlan {
    config: ModelConfig,
    tp: usize,
    col_split_dtypes: Vec<DType>,
}

impl ShardPlan {
    /// Plans `tp` ranks. `col_split_dtypes` are the dtypes of the tensors cut
    /// by columns (O and Down of every layer; passing every weight dtype is
    /// safe but may refuse a few degrees needlessly): quantized ones need the
    /// per-rank column counts on their block boundaries. Refuses a `tp` that
    /// does not divide num_kv_heads, num_heads, intermediate_size or
    /// vocab_size, naming the dimension and the degrees that would work.
    pub fn new(
        config: &ModelConfig,
        tp: usize,
        col_split_dtypes: &[DType],
    ) -> Result<Self, PlanError> {
        check_tp(config, tp, col_split_dtypes).map_err(|e| {
            let v = Self::valid_tp_degrees(config, col_split_dtypes);
            match e {
                PlanError::NotDivisible { tp, dim, value, .. } => PlanError::NotDivisible {
                    tp,
                    dim,
                    value,
                    valid: v,
                },
                PlanError::BlockMisaligned {
                    tp,
                    what,
                    cols,
                    block,
                    dtype,
                    ..
                } => PlanError::BlockMisaligned {
                    tp,
                    what,
                    cols,
                    block,
                    dtype,
                    valid: v,
                },
                other => other,
            }
        })?;
        Ok(Self {
            config: config.clone(),
            tp,
            col_split_dtypes: col_split_dtypes.to_vec(),
        })
    }

    /// Plans `tp` ranks for a checkpoint, reading the O/Down dtypes from it.
    pub fn for_checkpoint(ckpt: &Checkpoint, tp: usize) -> Result<Self, PlanError> {
        Self::new(ckpt.config(), tp, &Self::checkpoint_col_split_dtypes(ckpt)?)
    }

    /// Distinct dtypes of the column-split tensors (O and Down) of a checkpoint.
    pub fn checkpoint_col_split_dtypes(ckpt: &Checkpoint) -> Result<Vec<DType>, LoadError> {
        let mut out = Vec::new();
        for l in 0..ckpt.config().num_layers {
            for name in [TensorName::O(l), TensorName::Down(l)] {
                let d = ckpt.tensor(name)?.dtype;
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Every degree this model can be split into, ascending.
    pub fn valid_tp_degrees(config: &ModelConfig, col_split_dtypes: &[DType]) -> Vec<usize> {
        (1..=config.num_kv_heads.max(1))
            .filter(|&tp| check_tp(config, tp, col_split_dtypes).is_ok())
            .collect()
    }

    pub fn tp(&self) -> usize {
        self.tp
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The slices rank `rank` loads, in [`model_tensor_names`] order
    /// (empty if `rank >= tp`).
    pub fn slices(&self, rank: usize) -> Vec<SliceSpec> {
        use TensorName::*;
        if rank >= self.tp {
            return Vec::new();
        }
        let c = &self.config;
        let (r, tp, hd) = (rank, self.tp, c.head_dim);
        let part = |n: usize, unit: usize| (r * n / tp * unit)..((r + 1) * n / tp * unit);
        model_tensor_names(c)
            .into_iter()
            .map(|name| {
                let split = match name {
                    Embed | LmHead => Split::Rows(part(c.vocab_size, 1)),
                    FinalNorm | AttnNorm(_) | MlpNorm(_) => Split::Replicated,
                    Q(_) | QBias(_) => Split::Rows(part(c.num_heads, hd)),
                    K(_) | V(_) | KBias(_) | VBias(_) => Split::Rows(part(c.num_kv_heads, hd)),
                    O(_) => Split::Cols(part(c.num_heads, hd)),
                    Gate(_) | Up(_) => Split::Rows(part(c.intermediate_size, 1)),
                    Down(_) => Split::Cols(part(c.intermediate_size, 1)),
                };
                SliceSpec { name, split }
            })
            .collect()
    }
}

/// One rank's slice of one tensor: checkpoint dtype, row-major bytes,
/// exactly `rows * dtype.row_bytes(cols)` of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardTensor {
    pub name: TensorName,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

/// Everything one rank loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world_size: usize,
    pub tensors: Vec<ShardTensor>,
}

impl Shard {
    pub fn get(&self, name: TensorName) -> Option<&ShardTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.data.len() as u64).sum()
    }

    /// [`ShardDigest`] over the tensors in order.
    pub fn digest(&self) -> u64 {
        let mut d = ShardDigest::new();
        for t in &self.tensors {
            d.update(t);
        }
        d.finish()
    }
}

/// Stable ggml type id of a dtype, used in digests.
fn dtype_tag(d: DType) -> u32 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 8,
        DType::BF16 => 30,
    }
}

/// Incremental FNV-1a 64 digest of a shard (see the module docs for the
/// exact byte stream), so a streamed shard can be checked without holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardDigest {
    state: u64,
}

impl Default for ShardDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardDigest {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> Self {
        Self {
            state: Self::OFFSET,
        }
    }

    /// Feeds one whole tensor.
    pub fn update(&mut self, t: &ShardTensor) {
        self.update_parts(t.name, t.dtype, t.rows, t.cols, &t.data);
    }

    /// Feeds one whole tensor given as header fields and bytes.
    pub fn update_parts(
        &mut self,
        name: TensorName,
        dtype: DType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) {
        self.update_header(name, dtype, rows, cols, data.len() as u64);
        self.update_bytes(data);
    }

    /// Starts a tensor whose `byte_len` bytes follow via [`Self::update_bytes`]
    /// (in as many chunks as convenient).
    pub fn update_header(
        &mut self,
        name: TensorName,
        dtype: DType,
        rows: usize,
        cols: usize,
        byte_len: u64,
    ) {
        let name = name.canonical();
        self.update_bytes(&(name.len() as u64).to_le_bytes());
        self.update_bytes(name.as_bytes());
        self.update_bytes(&dtype_tag(dtype).to_le_bytes());
        self.update_bytes(&(rows as u64).to_le_bytes());
        self.update_bytes(&(cols as u64).to_le_bytes());
        self.update_bytes(&byte_len.to_le_bytes());
    }

    pub fn update_bytes(&mut self, bytes: &[u8]) {
        let mut h = self.state;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(Self::PRIME);
        }
        self.state = h;
    }

    pub fn finish(&self) -> u64 {
        self.state
    }
}

/// Reads one slice, touching only its byte ranges of the checkpoint.
pub fn read_slice(ckpt: &Checkpoint, spec: &SliceSpec) -> Result<ShardTensor, LoadError> {
    let t = ckpt.tensor(spec.name)?;
    let (rows, cols, data) = match &spec.split {
        Split::Replicated => (t.rows, t.cols, t.bytes().to_vec()),
        Split::Rows(r) => (r.len(), t.cols, t.row_range_bytes(r.clone())?.to_vec()),
        Split::Cols(c) => {
            let mut out = Vec::new();
            t.cols_slice(0..t.rows, c.clone(), &mut out)?;
            (t.rows, c.len(), out)
        }
    };
    Ok(ShardTensor {
        name: spec.name,
        dtype: t.dtype,
        rows,
        cols,
        data,
    })
}

/// Reads everything rank `rank` of `plan` needs.
pub fn read_shard(ckpt: &Checkpoint, plan: &ShardPlan, rank: usize) -> Result<Shard, LoadError> {
    if rank >= plan.tp() {
        return Err(LoadError::Plan {
            msg: format!("rank {rank} is outside a tp={} plan", plan.tp()),
        });
    }
    if plan.config() != ckpt.config() {
        return Err(LoadError::Plan {
            msg: format!(
                "the plan was made for another model config than {}",
                ckpt.path().display()
            ),
        });
    }
    let tensors = plan
        .slices(rank)
        .iter()
        .map(|s| read_slice(ckpt, s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Shard {
        rank,
        world_size: plan.tp(),
        tensors,
    })
}
