//! One step of the forward pass on the device: the same computation as
//! the CPU `RankModel::forward_batch` (packed tokens of several sequences,
//! K/V written into the paged pool through block tables, logits of the
//! sequences that want them), in bf16 with f32 accumulation.

use half::bf16;
use weft_kernels::cuda::ops_fused::{qkv_rope, QkvShape};
use weft_kernels::cuda::{attn, matmul_bf16, ops, CudaBackend, DeviceBuffer, PagedBatch, SeqSpec};

use super::{GpuError, GpuRankModel};
use crate::comm::nccl::NcclComm;
use crate::llama::SeqInput;

/// Logits of the sequences that wanted them, on the device: `[rows, vocab]` f32.
pub struct GpuStepOutput {
    pub logits: DeviceBuffer<f32>,
    pub rows: usize,
}

/// Per-step activations, `[tokens, width]` each.
struct Scratch {
    x: DeviceBuffer<bf16>,
    residual: DeviceBuffer<bf16>,
    normed: DeviceBuffer<bf16>,
    qkv: DeviceBuffer<bf16>,
    q: DeviceBuffer<bf16>,
    k: DeviceBuffer<bf16>,
    v: DeviceBuffer<bf16>,
    attn: DeviceBuffer<bf16>,
    o: DeviceBuffer<bf16>,
    gate_up: DeviceBuffer<bf16>,
    act: DeviceBuffer<bf16>,
}

impl GpuRankModel {
    fn check_seqs(&self, seqs: &[SeqInput<'_>]) -> Result<(), GpuError> {
        let vocab = self.cfg.vocab_size;
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(GpuError::Invalid(format!("sequence {i} has no tokens")));
            }
            let end = s.start_pos + s.tokens.len();
            if end > self.cfg.max_position_embeddings {
                return Err(GpuError::Invalid(format!(
                    "sequence {i} reaches position {end}, past the context of {}",
                    self.cfg.max_position_embeddings
                )));
            }
            if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(GpuError::Invalid(format!(
                    "token {t} is outside the vocabulary of {vocab}"
                )));
            }
        }
        Ok(())
    }

    fn scratch(&self, b: &CudaBackend, t: usize) -> Result<Scratch, GpuError> {
        let d = &self.dims;
        let h = self.cfg.hidden_size;
        let (qw, kvw) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
        let z = |n: usize| DeviceBuffer::<bf16>::zeros(b, t * n);
        Ok(Scratch {
            x: z(h)?,
            residual: z(h)?,
            normed: z(h)?,
            qkv: z(qw + 2 * kvw)?,
            q: z(qw)?,
            k: z(kvw)?,
            v: z(kvw)?,
            attn: z(qw)?,
            o: z(h)?,
            gate_up: z(2 * d.intermediate)?,
            act: z(d.intermediate)?,
        })
    }

    /// Runs one step for `seqs` (every sequence's new tokens packed in
    /// order) and returns the logits of those with `want_logits`, in order.
    /// `comm` must be given when the world size is above 1.
    pub fn forward(
        &mut self,
        b: &CudaBackend,
        seqs: &[SeqInput<'_>],
        mut comm: Option<&mut NcclComm>,
    ) -> Result<GpuStepOutput, GpuError> {
        self.check_seqs(seqs)?;
        if self.world > 1 && comm.is_none() {
            return Err(GpuError::Invalid(format!(
                "rank {} of {} needs its NCCL communicator",
                self.rank, self.world
            )));
        }
        let specs: Vec<SeqSpec<'_>> = seqs
            .iter()
            .map(|s| SeqSpec {
                block_table: s.block_table,
                start_pos: s.start_pos,
                n_tokens: s.tokens.len(),
            })
            .collect();
        let batch = PagedBatch::new(b, self.block_size, self.num_blocks, &specs)?;
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let positions: Vec<u32> = seqs
            .iter()
            .flat_map(|s| (s.start_pos..s.start_pos + s.tokens.len()).map(|p| p as u32))
            .collect();
        let t = ids.len();
        let ids_d = DeviceBuffer::from_slice(b, &ids)?;
        let pos_d = DeviceBuffer::from_slice(b, &positions)?;
        let mut s = self.scratch(b, t)?;
        b.mark("step inputs and scratch")?;
        let h = self.cfg.hidden_size;
        ops::embedding(
            b,
            &self.embed,
            h,
            &ids_d,
            self.dims.vocab_start as u32,
            &mut s.x,
        )?;
        reduce(&mut comm, &mut s.x)?;
        b.mark("embedding")?;
        for i in 0..self.layers.len() {
            self.layer(b, i, &batch, &pos_d, &mut s, &mut comm)?;
        }
        let eps = self.cfg.rms_norm_eps;
        ops::add_rms_norm(
            b,
            &s.x,
            &mut s.residual,
            &self.final_norm,
            eps,
            &mut s.normed,
        )?;
        b.mark("norms")?;
        let out = self.logits(b, seqs, &s.normed)?;
        b.mark("lm head")?;
        Ok(out)
    }

    /// One decoder layer: `s.x` holds the previous block's output (the
    /// embeddings for the first layer) and receives this layer's MLP output.
    fn layer(
        &mut self,
        b: &CudaBackend,
        i: usize,
        batch: &PagedBatch,
        positions: &DeviceBuffer<u32>,
        s: &mut Scratch,
        comm: &mut Option<&mut NcclComm>,
    ) -> Result<(), GpuError> {
        let d = self.dims;
        let h = self.cfg.hidden_size;
        let eps = self.cfg.rms_norm_eps;
        let t = batch.total_tokens();
        let (qw, kvw) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
        let w = &self.layers[i];
        ops::add_rms_norm(b, &s.x, &mut s.residual, &w.attn_norm, eps, &mut s.normed)?;
        b.mark("norms")?;
        matmul_bf16(b, &s.normed, &w.qkv, t, qw + 2 * kvw, h, &mut s.qkv)?;
        b.mark("qkv gemm")?;
        let shape = QkvShape {
            n_heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
        };
        qkv_rope(
            b,
            &s.qkv,
            shape,
            (positions, &self.inv_freq, self.rope),
            (&mut s.q, &mut s.k, &mut s.v),
        )?;
        b.mark("rotary")?;
        attn::paged_write(b, &mut self.kv[i], batch, &s.k, &s.v)?;
        b.mark("kv write")?;
        attn::paged_attention(b, &s.q, &self.kv[i], batch, d.heads, &mut s.attn)?;
        b.mark("attention")?;
        let w = &self.layers[i];
        matmul_bf16(b, &s.attn, &w.o, t, h, qw, &mut s.o)?;
        b.mark("o gemm")?;
        reduce(comm, &mut s.o)?;
        b.mark("all-reduce")?;
        ops::add_rms_norm(b, &s.o, &mut s.residual, &w.mlp_norm, eps, &mut s.normed)?;
        b.mark("norms")?;
        matmul_bf16(
            b,
            &s.normed,
            &w.gate_up,
            t,
            2 * d.intermediate,
            h,
            &mut s.gate_up,
        )?;
        b.mark("gate/up gemm")?;
        ops::silu_mul_fused(b, &s.gate_up, d.intermediate, &mut s.act)?;
        b.mark("silu-mul")?;
        matmul_bf16(b, &s.act, &w.down, t, h, d.intermediate, &mut s.x)?;
        b.mark("down gemm")?;
        reduce(comm, &mut s.x)?;
        b.mark("all-reduce")?;
        Ok(())
    }

    /// The LM head over the last row of each sequence that wants logits.
    fn logits(
        &self,
        b: &CudaBackend,
        seqs: &[SeqInput<'_>],
        normed: &DeviceBuffer<bf16>,
    ) -> Result<GpuStepOutput, GpuError> {
        let h = self.cfg.hidden_size;
        let mut rows = Vec::new();
        let mut end = 0;
        for s in seqs {
            end += s.tokens.len();
            if s.want_logits {
                rows.push(end - 1);
            }
        }
        let mut last = DeviceBuffer::<bf16>::zeros(b, rows.len() * h)?;
        for (j, &r) in rows.iter().enumerate() {
            let src = normed.slice().slice(r * h..(r + 1) * h);
            let mut dst = last.slice_mut().slice_mut(j * h..(j + 1) * h);
            b.stream()
                .memcpy_dtod(&src, &mut dst)
                .map_err(|e| GpuError::Invalid(format!("device copy: {e}")))?;
        }
        let vocab = self.dims.vocab;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = DeviceBuffer::<f32>::zeros(b, rows.len() * vocab)?;
        matmul_bf16(b, &last, head, rows.len(), vocab, h, &mut logits)?;
        Ok(GpuStepOutput {
            logits,
            rows: rows.len(),
        })
    }

    /// The full-vocabulary logits of each row on the host: this rank's
    /// slice alone at world size 1, else all ranks' slices gathered (rank
    /// r's columns follow rank r - 1's).
    pub fn host_logits(
        &self,
        b: &CudaBackend,
        out: &GpuStepOutput,
        comm: Option<&mut NcclComm>,
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        let vl = self.dims.vocab;
        let rows = out.rows;
        let (flat, world) = match comm {
            Some(c) if self.world > 1 => {
                let mut all = DeviceBuffer::<f32>::zeros(b, self.world * rows * vl)?;
                if rows > 0 {
                    c.all_gather_f32(out.logits.slice(), all.slice_mut())?;
                }
                (all.to_vec(b)?, self.world)
            }
            _ => (out.logits.to_vec(b)?, 1),
        };
        Ok((0..rows)
            .map(|s| {
                (0..world)
                    .flat_map(|r| {
                        let at = (r * rows + s) * vl;
                        flat[at..at + vl].iter().copied()
                    })
                    .collect()
            })
            .collect())
    }

    /// Greedy choice and its log-probability for each row, on the device
    /// (world size 1: the rows hold the whole vocabulary).
    pub fn greedy(
        &self,
        b: &CudaBackend,
        out: &GpuStepOutput,
    ) -> Result<Vec<(u32, f32)>, GpuError> {
        let mut ids = DeviceBuffer::<u32>::zeros(b, out.rows)?;
        let mut lps = DeviceBuffer::<f32>::zeros(b, out.rows)?;
        ops::argmax_logprob(b, &out.logits, self.dims.vocab, &mut ids, &mut lps)?;
        b.mark("sampling")?;
        let ids = ids.to_vec(b)?;
        let lps = lps.to_vec(b)?;
        Ok(ids.into_iter().zip(lps).collect())
    }
}

/// Sums a partial result over the ranks (nothing at world size 1).
fn reduce(comm: &mut Option<&mut NcclComm>, buf: &mut DeviceBuffer<bf16>) -> Result<(), GpuError> {
    if let Some(c) = comm.as_deref_mut() {
        if c.world_size() > 1 && !buf.is_empty() {
            c.all_reduce_sum_bf16(buf.slice_mut())?;
        }
    }
    Ok(())
}
