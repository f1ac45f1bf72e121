//! The llama-architecture forward pass of one tensor-parallel rank
//! (Llama 2/3, SmolLM, and Qwen2 with its Q/K/V biases).
//!
//! Megatron layout: Q/K/V and gate/up hold this rank's output rows (whole
//! heads), O and down this rank's input columns, so each layer needs two
//! all-reduces; the embedding and LM head hold a slice of the vocabulary.

use weft_kernels::{self as k, AttentionShape, KernelError, Matrix, PagedKv, PagedSeq, RopeStyle};

use crate::checkpoint::TensorName;
use crate::comm::{CommError, Communicator};
use crate::config::{ModelConfig, RopeLayout};
use crate::shard::{Shard, ShardTensor};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("shard for rank {rank} lacks tensor {name}")]
    MissingTensor { rank: usize, name: String },
    #[error("tensor {name} has shape {rows}x{cols}, expected {want_rows}x{want_cols}")]
    BadShape {
        name: String,
        rows: usize,
        cols: usize,
        want_rows: usize,
        want_cols: usize,
    },
    #[error("kernel error: {0}")]
    Kernel(#[from] KernelError),
    #[error("collective failed: {0}")]
    Comm(#[from] CommError),
    #[error("token id {token} is outside the vocabulary of {vocab} tokens")]
    BadToken { token: u32, vocab: usize },
    #[error("position {pos} is beyond the model's context of {max} tokens")]
    ContextOverflow { pos: usize, max: usize },
    #[error("sequence cache holds {have} tokens but the step starts at position {start}")]
    CacheMismatch { have: usize, start: usize },
    #[error("{0}")]
    Invalid(String),
}

/// Per-rank sizes derived from the config and the world size.
#[derive(Clone, Copy, Debug)]
pub struct LocalDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub vocab_start: usize,
}

impl LocalDims {
    pub fn new(cfg: &ModelConfig, rank: usize, world: usize) -> Self {
        let vocab = cfg.vocab_size / world;
        LocalDims {
            heads: cfg.num_heads / world,
            kv_heads: cfg.num_kv_heads / world,
            head_dim: cfg.head_dim,
            intermediate: cfg.intermediate_size / world,
            vocab,
            vocab_start: rank * vocab,
        }
    }
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    mlp_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// The paged KV cache of this rank: per layer, `num_blocks` blocks of
/// `block_size` token slots for this rank's KV heads (layout
/// [block][slot][kv_head][head_dim]). The coordinator decides which blocks
/// a sequence uses and sends them as its block table.
pub struct KvPool {
    block_size: usize,
    num_blocks: usize,
    block_elems: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvPool {
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Appends `n` zeroed blocks to every layer.
    fn grow(&mut self, n: usize) {
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.resize(layer.len() + n * self.block_elems, 0.0);
        }
        self.num_blocks += n;
    }
}

/// One sequence's part of a batched step.
pub struct SeqInput<'a> {
    /// New tokens, at positions `start_pos..`.
    pub tokens: &'a [u32],
    pub start_pos: usize,
    /// KV blocks covering positions `0..start_pos + tokens.len()`.
    pub block_table: &'a [u32],
    /// Return the full-vocabulary logits after the last token.
    pub want_logits: bool,
}

/// A single sequence with a private, growing pool: for tests, benchmarks and
/// one-off runs (the server uses [`KvPool`] with coordinator block tables).
pub struct SeqCache {
    pool: KvPool,
    table: Vec<u32>,
    len: usize,
}

impl SeqCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One rank's slice of the model, ready to run.
pub struct RankModel {
    cfg: ModelConfig,
    rank: usize,
    world: usize,
    dims: LocalDims,
    embed: Matrix,
    lm_head: Option<Matrix>,
    final_norm: Vec<f32>,
    layers: Vec<Layer>,
    inv_freq: Vec<f32>,
    rope: RopeStyle,
}

struct ShardReader<'a> {
    shard: &'a Shard,
}

impl ShardReader<'_> {
    fn tensor(&self, name: TensorName) -> Result<&ShardTensor, ModelError> {
        self.shard
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                rank: self.shard.rank,
                name: name.canonical(),
            })
    }

    fn matrix(&self, name: TensorName, rows: usize, cols: usize) -> Result<Matrix, ModelError> {
        let t = self.tensor(name)?;
        check_shape(t, rows, cols)?;
        Ok(Matrix::from_bytes(t.dtype, t.rows, t.cols, &t.data)?)
    }

    fn vector(&self, name: TensorName, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.tensor(name)?;
        if t.rows * t.cols != len {
            return Err(ModelError::BadShape {
                name: name.canonical(),
                rows: t.rows,
                cols: t.cols,
                want_rows: len,
                want_cols: 1,
            });
        }
        Ok(Matrix::from_bytes(t.dtype, 1, len, &t.data)?.to_f32())
    }

    fn opt_vector(&self, name: TensorName, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        match self.shard.get(name) {
            Some(_) => self.vector(name, len).map(Some),
            None => Ok(None),
        }
    }
}

fn check_shape(t: &ShardTensor, rows: usize, cols: usize) -> Result<(), ModelError> {
    if t.rows != rows || t.cols != cols {
        return Err(ModelError::BadShape {
            name: t.name.canonical(),
            rows: t.rows,
            cols: t.cols,
            want_rows: rows,
            want_cols: cols,
        });
    }
    Ok(())
}

impl RankModel {
    /// Builds this rank's model from its shard.
    pub fn from_shard(cfg: &ModelConfig, shard: &Shard) -> Result<Self, ModelError> {
        let (rank, world) = (shard.rank, shard.world_size);
        let d = LocalDims::new(cfg, rank, world);
        let r = ShardReader { shard };
        let h = cfg.hidden_size;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let bias = |n: TensorName, len| -> Result<Option<Vec<f32>>, ModelError> {
                if cfg.attention_bias {
                    r.vector(n, len).map(Some)
                } else {
                    r.opt_vector(n, len)
                }
            };
            layers.push(Layer {
                attn_norm: r.vector(TensorName::AttnNorm(i), h)?,
                q: r.matrix(TensorName::Q(i), d.q_width(), h)?,
                k: r.matrix(TensorName::K(i), d.kv_width(), h)?,
                v: r.matrix(TensorName::V(i), d.kv_width(), h)?,
                o: r.matrix(TensorName::O(i), h, d.q_width())?,
                q_bias: bias(TensorName::QBias(i), d.q_width())?,
                k_bias: bias(TensorName::KBias(i), d.kv_width())?,
                v_bias: bias(TensorName::VBias(i), d.kv_width())?,
                mlp_norm: r.vector(TensorName::MlpNorm(i), h)?,
                gate: r.matrix(TensorName::Gate(i), d.intermediate, h)?,
                up: r.matrix(TensorName::Up(i), d.intermediate, h)?,
                down: r.matrix(TensorName::Down(i), h, d.intermediate)?,
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(r.matrix(TensorName::LmHead, d.vocab, h)?)
        };
        Ok(RankModel {
            cfg: cfg.clone(),
            rank,
            world,
            dims: d,
            embed: r.matrix(TensorName::Embed, d.vocab, h)?,
            lm_head,
            final_norm: r.vector(TensorName::FinalNorm, h)?,
            layers,
            inv_freq: cfg.rope_inv_freq(),
            rope: match cfg.rope_layout {
                RopeLayout::Half => RopeStyle::Half,
                RopeLayout::Interleaved => RopeStyle::Interleaved,
            },
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// An empty pool of `num_blocks` blocks of `block_size` tokens.
    pub fn new_pool(&self, block_size: usize, num_blocks: usize) -> Result<KvPool, ModelError> {
        if block_size == 0 {
            return Err(ModelError::Invalid(
                "KV block size must be at least 1".into(),
            ));
        }
        let block_elems = block_size * self.dims.kv_width();
        let total = num_blocks
            .checked_mul(block_elems)
            .ok_or_else(|| ModelError::Invalid("KV pool size overflows".into()))?;
        let layer = vec![0f32; total];
        Ok(KvPool {
            block_size,
            num_blocks,
            block_elems,
            k: vec![layer.clone(); self.layers.len()],
            v: vec![layer; self.layers.len()],
        })
    }

    /// A fresh, empty cache for one sequence.
    pub fn new_cache(&self) -> SeqCache {
        SeqCache {
            pool: KvPool {
                block_size: 16,
                num_blocks: 0,
                block_elems: 16 * self.dims.kv_width(),
                k: vec![Vec::new(); self.layers.len()],
                v: vec![Vec::new(); self.layers.len()],
            },
            table: Vec::new(),
            len: 0,
        }
    }

    /// Runs `tokens` (at positions `start_pos..`) of one sequence through
    /// the model, extends `cache`, and returns the full-vocabulary logits of
    /// the last token. Every rank must make the same calls in the same order.
    pub fn forward(
        &self,
        comm: &mut dyn Communicator,
        cache: &mut SeqCache,
        tokens: &[u32],
        start_pos: usize,
    ) -> Result<Vec<f32>, ModelError> {
        if cache.len != start_pos {
            return Err(ModelError::CacheMismatch {
                have: cache.len,
                start: start_pos,
            });
        }
        let end = start_pos + tokens.len();
        let need = end.div_ceil(cache.pool.block_size);
        if need > cache.pool.num_blocks {
            let add = need - cache.pool.num_blocks;
            cache
                .table
                .extend((cache.pool.num_blocks..need).map(|b| b as u32));
            cache.pool.grow(add);
        }
        let seq = SeqInput {
            tokens,
            start_pos,
            block_table: &cache.table,
            want_logits: true,
        };
        let mut out = self.forward_batch(comm, &mut cache.pool, &[seq])?;
        cache.len = end;
        out.pop()
            .ok_or_else(|| ModelError::Invalid("no logits returned".into()))
    }

    /// One batched step over several sequences (their tokens concatenated):
    /// writes their keys/values into `pool` through their block tables and
    /// returns the full-vocabulary logits of each sequence that wants them,
    /// in order. Each sequence's results are bit-identical whatever else is
    /// in the batch. Every rank must make the same calls in the same order.
    pub fn forward_batch(
        &self,
        comm: &mut dyn Communicator,
        pool: &mut KvPool,
        seqs: &[SeqInput<'_>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        for s in seqs {
            self.check_seq(pool, s)?;
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let positions: Vec<u32> = seqs
            .iter()
            .flat_map(|s| (s.start_pos..s.start_pos + s.tokens.len()).map(|p| p as u32))
            .collect();
        let mut x = self.embed_tokens(comm, &tokens)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = self.attention_block(layer, &x, &positions, pool, seqs, i)?;
            self.reduce_add(comm, &mut x, attn)?;
            let mlp = self.mlp_block(layer, &x, tokens.len())?;
            self.reduce_add(comm, &mut x, mlp)?;
        }
        let h = self.cfg.hidden_size;
        let mut last_rows = Vec::new();
        let mut row = 0;
        for s in seqs {
            row += s.tokens.len();
            if s.want_logits {
                last_rows.extend_from_slice(&x[(row - 1) * h..row * h]);
            }
        }
        self.logits(comm, &last_rows)
    }

    fn check_seq(&self, pool: &KvPool, s: &SeqInput<'_>) -> Result<(), ModelError> {
        if s.tokens.is_empty() {
            return Err(ModelError::Invalid(
                "a step needs at least one token per sequence".into(),
            ));
        }
        let end = s.start_pos + s.tokens.len();
        if end > self.cfg.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                pos: end,
                max: self.cfg.max_position_embeddings,
            });
        }
        if let Some(&t) = s
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            return Err(ModelError::BadToken {
                token: t,
                vocab: self.cfg.vocab_size,
            });
        }
        if s.block_table.len() * pool.block_size < end {
            return Err(ModelError::Invalid(format!(
                "block table of {} blocks cannot hold {end} positions",
                s.block_table.len()
            )));
        }
        if let Some(b) = s
            .block_table
            .iter()
            .find(|&&b| b as usize >= pool.num_blocks)
        {
            return Err(ModelError::Invalid(format!(
                "block {b} is outside the pool of {} blocks",
                pool.num_blocks
            )));
        }
        Ok(())
    }

    /// Each rank fills the rows of the tokens in its vocabulary slice; the
    /// sum over ranks is exact (one non-zero term per element).
    fn embed_tokens(
        &self,
        comm: &mut dyn Communicator,
        tokens: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        let h = self.cfg.hidden_size;
        let mut x = vec![0f32; tokens.len() * h];
        let lo = self.dims.vocab_start;
        for (t, &tok) in tokens.iter().enumerate() {
            let tok = tok as usize;
            if tok >= lo && tok < lo + self.dims.vocab {
                self.embed
                    .dequantize_row(tok - lo, &mut x[t * h..(t + 1) * h])?;
            }
        }
        if self.world > 1 {
            comm.all_reduce_sum(&mut x)?;
        }
        Ok(x)
    }

    fn reduce_add(
        &self,
        comm: &mut dyn Communicator,
        x: &mut [f32],
        mut part: Vec<f32>,
    ) -> Result<(), ModelError> {
        if self.world > 1 {
            comm.all_reduce_sum(&mut part)?;
        }
        k::add_inplace(x, &part)?;
        Ok(())
    }

    fn attention_block(
        &self,
        layer: &Layer,
        x: &[f32],
        positions: &[u32],
        pool: &mut KvPool,
        seqs: &[SeqInput<'_>],
        li: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let n = positions.len();
        let d = &self.dims;
        let mut h = vec![0f32; x.len()];
        k::rms_norm(x, &layer.attn_norm, self.cfg.rms_norm_eps, &mut h)?;
        let mut q = linear(&layer.q, &h, n, layer.q_bias.as_deref())?;
        let mut kk = linear(&layer.k, &h, n, layer.k_bias.as_deref())?;
        let vv = linear(&layer.v, &h, n, layer.v_bias.as_deref())?;
        k::rope(
            &mut q,
            n,
            d.heads,
            d.head_dim,
            positions,
            &self.inv_freq,
            self.rope,
        )?;
        k::rope(
            &mut kk,
            n,
            d.kv_heads,
            d.head_dim,
            positions,
            &self.inv_freq,
            self.rope,
        )?;
        let shape = AttentionShape {
            n_heads: d.heads,
            n_kv_heads: d.kv_heads,
            head_dim: d.head_dim,
        };
        let kvw = d.kv_width();
        let mut paged = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for s in seqs {
            let rows = row * kvw..(row + s.tokens.len()) * kvw;
            k::paged_write(
                &mut pool.k[li],
                &mut pool.v[li],
                pool.block_size,
                s.block_table,
                shape,
                s.start_pos,
                &kk[rows.clone()],
                &vv[rows],
            )?;
            paged.push(PagedSeq {
                block_table: s.block_table,
                start_pos: s.start_pos,
                n_tokens: s.tokens.len(),
                row_offset: row,
            });
            row += s.tokens.len();
        }
        let kv = PagedKv {
            k: &pool.k[li],
            v: &pool.v[li],
            block_size: pool.block_size,
        };
        let mut att = vec![0f32; n * d.q_width()];
        k::paged_attention_batch(&q, kv, &paged, shape, &mut att)?;
        let mut out = vec![0f32; n * self.cfg.hidden_size];
        k::matmul(&layer.o, &att, n, &mut out)?;
        Ok(out)
    }

    fn mlp_block(&self, layer: &Layer, x: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        let mut h = vec![0f32; x.len()];
        k::rms_norm(x, &layer.mlp_norm, self.cfg.rms_norm_eps, &mut h)?;
        let mut gate = linear(&layer.gate, &h, n, None)?;
        let up = linear(&layer.up, &h, n, None)?;
        k::silu_mul(&mut gate, &up)?;
        let mut out = vec![0f32; n * self.cfg.hidden_size];
        k::matmul(&layer.down, &gate, n, &mut out)?;
        Ok(out)
    }

    /// Full-vocabulary logits for each row of `last` (m x hidden).
    fn logits(
        &self,
        comm: &mut dyn Communicator,
        last: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let h_dim = self.cfg.hidden_size;
        let m = last.len() / h_dim;
        if m == 0 {
            return Ok(Vec::new());
        }
        let mut h = vec![0f32; last.len()];
        k::rms_norm(last, &self.final_norm, self.cfg.rms_norm_eps, &mut h)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let vl = self.dims.vocab;
        let mut local = vec![0f32; m * vl];
        k::matmul(head, &h, m, &mut local)?;
        if self.world == 1 {
            return Ok(local.chunks_exact(vl).map(<[f32]>::to_vec).collect());
        }
        let mut all = vec![0f32; self.world * m * vl];
        comm.all_gather(&local, &mut all)?;
        // `all` is rank-major: [rank][row][vocab slice].
        Ok((0..m)
            .map(|row| {
                (0..self.world)
                    .flat_map(|r| {
                        all[(r * m + row) * vl..(r * m + row + 1) * vl]
                            .iter()
                            .copied()
                    })
                    .collect()
            })
            .collect())
    }
}

/// `x @ w^T (+ bias)` for n rows of x.
fn linear(w: &Matrix, x: &[f32], n: usize, bias: Option<&[f32]>) -> Result<Vec<f32>, ModelError> {
    let mut out = vec![0f32; n * w.rows()];
    k::matmul(w, x, n, &mut out)?;
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(w.rows()) {
            k::add_inplace(row, b)?;
        }
    }
    Ok(out)
}
