//! The paged K/V checks of [`super::check`]: the paged write and both attention paths
//! against the CPU `paged_write` / `paged_attention_batch` on the same pool.

use half::bf16;

use super::attn::{self, PagedKvCache};
use super::attn_gemm::LongPath;
use super::batch::{PagedBatch, SeqSpec};
use super::check::{compare, merge, CheckResult, Rng};
use super::check_cases::{cpu, to_bf16};
use super::device::CudaBackend;
use super::error::CudaError;
use super::tensor::DeviceBuffer;
use crate::{AttentionShape, PagedKv, PagedSeq};

/// A pool for `seqs` (start_pos, n_tokens): each sequence gets its own shuffled blocks
/// (plus a few spare ones), positions `0..start_pos + n_tokens` hold random bf16 values,
/// every other slot NaN (so a read outside the sequences shows up as NaN).
struct TestPool {
    tables: Vec<Vec<u32>>,
    k: Vec<f32>,
    v: Vec<f32>,
    num_blocks: usize,
    block_size: usize,
    slot: usize,
}

impl TestPool {
    fn new(rng: &mut Rng, seqs: &[(usize, usize)], block_size: usize, slot: usize) -> TestPool {
        let per_seq: Vec<usize> = seqs
            .iter()
            .map(|&(s, n)| (s + n).div_ceil(block_size))
            .collect();
        let num_blocks = per_seq.iter().sum::<usize>() + 3;
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i + 1));
        }
        let mut next = ids.into_iter();
        let tables: Vec<Vec<u32>> = per_seq
            .iter()
            .map(|&c| next.by_ref().take(c).collect())
            .collect();
        let len = num_blocks * block_size * slot;
        let (mut k, mut v) = (vec![f32::NAN; len], vec![f32::NAN; len]);
        for (table, &(s, n)) in tables.iter().zip(seqs) {
            for p in 0..s + n {
                let at = (table[p / block_size] as usize * block_size + p % block_size) * slot;
                k[at..at + slot].copy_from_slice(&rng.bf16_vec(slot, -2.0, 2.0));
                v[at..at + slot].copy_from_slice(&rng.bf16_vec(slot, -1.0, 1.0));
            }
        }
        TestPool {
            tables,
            k,
            v,
            num_blocks,
            block_size,
            slot,
        }
    }

    fn upload(&self, b: &CudaBackend, kv_heads: usize) -> Result<PagedKvCache, CudaError> {
        let hd = self.slot / kv_heads;
        let mut c = PagedKvCache::new(b, self.num_blocks, self.block_size, kv_heads, hd)?;
        c.upload(b, &to_bf16(&self.k), &to_bf16(&self.v))?;
        Ok(c)
    }

    fn batch(&self, b: &CudaBackend, seqs: &[(usize, usize)]) -> Result<PagedBatch, CudaError> {
        let specs: Vec<SeqSpec<'_>> = self
            .tables
            .iter()
            .zip(seqs)
            .map(|(t, &(start_pos, n_tokens))| SeqSpec {
                block_table: t,
                start_pos,
                n_tokens,
            })
            .collect();
        PagedBatch::new(b, self.block_size, self.num_blocks, &specs)
    }

    /// The CPU `paged_attention_batch` over the same pool.
    fn cpu_attention(
        &self,
        q: &[f32],
        seqs: &[(usize, usize)],
        shape: AttentionShape,
    ) -> Result<Vec<f32>, CudaError> {
        let mut row = 0;
        let paged: Vec<PagedSeq<'_>> = self
            .tables
            .iter()
            .zip(seqs)
            .map(|(t, &(start_pos, n_tokens))| {
                row += n_tokens;
                PagedSeq {
                    block_table: t,
                    start_pos,
                    n_tokens,
                    row_offset: row - n_tokens,
                }
            })
            .collect();
        let kv = PagedKv {
            k: &self.k,
            v: &self.v,
            block_size: self.block_size,
        };
        let mut out = vec![0f32; q.len()];
        crate::paged_attention_batch(q, kv, &paged, shape, &mut out).map_err(cpu)?;
        Ok(out)
    }
}

pub(crate) fn paged_write(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let (kvh, hd, bs) = (4usize, 128usize, 16usize);
    let seqs = [(0usize, 20usize), (37, 1), (16, 16), (5, 40)];
    let mut pool = TestPool::new(rng, &seqs, bs, kvh * hd);
    pool.k.iter_mut().chain(pool.v.iter_mut()).for_each(|x| {
        if x.is_nan() {
            *x = 0.5;
        }
    });
    let total: usize = seqs.iter().map(|s| s.1).sum();
    let (k, v) = (
        rng.bf16_vec(total * pool.slot, -2.0, 2.0),
        rng.bf16_vec(total * pool.slot, -2.0, 2.0),
    );
    let mut cache = pool.upload(b, kvh)?;
    let batch = pool.batch(b, &seqs)?;
    let (dk, dv) = (
        DeviceBuffer::from_f32(b, &k)?,
        DeviceBuffer::from_f32(b, &v)?,
    );
    attn::paged_write(b, &mut cache, &batch, &dk, &dv)?;
    let shape = AttentionShape {
        n_heads: kvh,
        n_kv_heads: kvh,
        head_dim: hd,
    };
    let mut row = 0;
    for (t, &(start, n)) in pool.tables.iter().zip(&seqs) {
        let rows = row * pool.slot..(row + n) * pool.slot;
        crate::paged_write(
            &mut pool.k,
            &mut pool.v,
            bs,
            t,
            shape,
            start,
            &k[rows.clone()],
            &v[rows],
        )
        .map_err(cpu)?;
        row += n;
    }
    let detail = format!(
        "{} blocks of {bs} x {kvh} x {hd}, {total} rows",
        pool.num_blocks
    );
    let rk = compare(
        "paged_write",
        &cache.k().to_f32(b)?,
        &pool.k,
        format!("k pool, {detail}"),
    );
    let rv = compare(
        "paged_write",
        &cache.v().to_f32(b)?,
        &pool.v,
        "v pool".into(),
    );
    Ok(merge("paged_write", rk, rv))
}

/// Which attention entry point a check calls.
#[derive(Clone, Copy)]
enum Path {
    Decode,
    Tiled,
    Gemm,
    /// The tensor-core kernel (sm_80+, head_dim 64 or 128).
    Flash,
    /// `paged_attention`, which picks per batch and per sequence.
    Dispatch,
}

fn attention_check(
    b: &CudaBackend,
    rng: &mut Rng,
    name: &str,
    seqs: &[(usize, usize)],
    shape: AttentionShape,
    path: Path,
) -> Result<CheckResult, CudaError> {
    let bs = 16;
    let pool = TestPool::new(rng, seqs, bs, shape.n_kv_heads * shape.head_dim);
    let total: usize = seqs.iter().map(|s| s.1).sum();
    let q = rng.bf16_vec(total * shape.n_heads * shape.head_dim, -1.0, 1.0);
    let want = pool.cpu_attention(&q, seqs, shape)?;
    let cache = pool.upload(b, shape.n_kv_heads)?;
    let batch = pool.batch(b, seqs)?;
    let dq = DeviceBuffer::from_f32(b, &q)?;
    let mut out = DeviceBuffer::filled(b, q.len(), bf16::NAN)?;
    match path {
        Path::Decode => {
            attn::paged_attention_decode(b, &dq, &cache, &batch, shape.n_heads, &mut out)?
        }
        Path::Tiled => {
            attn::paged_attention_prefill(b, &dq, &cache, &batch, shape.n_heads, &mut out)?
        }
        Path::Gemm | Path::Flash => {
            let long = if matches!(path, Path::Flash) {
                LongPath::Flash
            } else {
                // A small score budget: the long sequence goes through in many chunks.
                LongPath::Gemm {
                    score_limit: 1 << 20,
                }
            };
            let all: Vec<usize> = (0..seqs.len()).collect();
            super::attn_gemm::prefill_gemm_seqs(
                b,
                &dq,
                &cache,
                &batch,
                shape.n_heads,
                (&all, long),
                &mut out,
            )?
        }
        Path::Dispatch => attn::paged_attention(b, &dq, &cache, &batch, shape.n_heads, &mut out)?,
    }
    let detail = format!(
        "heads {}/{} kv, head_dim {}, block {bs}, (start, tokens) {seqs:?}",
        shape.n_heads, shape.n_kv_heads, shape.head_dim
    );
    Ok(compare(name, &out.to_f32(b)?, &want, detail))
}

pub(crate) fn decode(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let seqs: Vec<(usize, usize)> = [1usize, 33, 256, 257, 700, 1500]
        .iter()
        .map(|&c| (c - 1, 1))
        .collect();
    let shape = AttentionShape {
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
    };
    attention_check(b, rng, "paged_attention_decode", &seqs, shape, Path::Decode)
}

pub(crate) fn decode_gqa16(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let seqs: Vec<(usize, usize)> = [5usize, 600, 64].iter().map(|&c| (c - 1, 1)).collect();
    let shape = AttentionShape {
        n_heads: 32,
        n_kv_heads: 2,
        head_dim: 64,
    };
    attention_check(
        b,
        rng,
        "paged_attention_decode_gqa16",
        &seqs,
        shape,
        Path::Decode,
    )
}

pub(crate) fn prefill(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let seqs = [(0usize, 45usize), (100, 37), (7, 1), (300, 20)];
    let shape = AttentionShape {
        n_heads: 16,
        n_kv_heads: 4,
        head_dim: 128,
    };
    attention_check(b, rng, "paged_attention_prefill", &seqs, shape, Path::Tiled)
}

/// Every sequence through the cuBLAS path: fresh prompts, a cached prefix, one token;
/// the 700-token prompt in chunks of 46 query rows; the last sequence's rows see more
/// keys than the softmax keeps in registers (its three-pass path).
pub(crate) fn prefill_gemm(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let seqs = [(0usize, 700usize), (100, 70), (7, 1), (0, 64), (4000, 100)];
    let shape = AttentionShape {
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
    };
    attention_check(
        b,
        rng,
        "paged_attention_prefill_gemm",
        &seqs,
        shape,
        Path::Gemm,
    )
}

/// The tensor-core kernel on the same kinds of sequences, at head_dim 128 and 64; where
/// the device cannot run it (before sm_80), the check reports itself skipped.
pub(crate) fn prefill_flash(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    if !super::attn_flash::flash_supported(b, 128) {
        return Ok(CheckResult {
            name: "paged_attention_flash".into(),
            max_rel_err: 0.0,
            has_nan: false,
            passed: true,
            detail: "SKIPPED: the device is older than sm_80 (mma.sync bf16)".into(),
        });
    }
    let seqs = [(0usize, 300usize), (100, 70), (7, 1), (0, 64), (2000, 65)];
    let shape = AttentionShape {
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
    };
    let a = attention_check(b, rng, "paged_attention_flash", &seqs, shape, Path::Flash)?;
    let seqs = [(0usize, 130usize), (33, 3), (5, 80)];
    let shape = AttentionShape {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let c = attention_check(b, rng, "paged_attention_flash", &seqs, shape, Path::Flash)?;
    Ok(super::check::merge("paged_attention_flash", a, c))
}

/// `paged_attention` on a mixed batch: long sequences through cuBLAS, the rest through
/// the tiled kernel with the long ones masked out.
pub(crate) fn prefill_mixed(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let seqs = [(0usize, 200usize), (50, 3), (10, 80), (5, 1)];
    let shape = AttentionShape {
        n_heads: 12,
        n_kv_heads: 4,
        head_dim: 64,
    };
    attention_check(
        b,
        rng,
        "paged_attention_mixed",
        &seqs,
        shape,
        Path::Dispatch,
    )
}

#[cfg(test)]
mod tests {
    use super::TestPool;
    use crate::cuda::check::Rng;
    use crate::AttentionShape;

    /// The CPU reference reads only the sequences' positions: the NaN the pool holds
    /// everywhere else (to catch stray reads on the device) never reaches its output.
    #[test]
    fn the_cpu_reference_ignores_the_poisoned_slots() {
        let seqs = [(0usize, 45usize), (100, 37), (7, 1), (299, 1)];
        let shape = AttentionShape {
            n_heads: 8,
            n_kv_heads: 2,
            head_dim: 64,
        };
        let mut rng = Rng::new(3);
        let pool = TestPool::new(&mut rng, &seqs, 16, 2 * 64);
        assert!(pool.k.iter().any(|v| v.is_nan()));
        let total: usize = seqs.iter().map(|s| s.1).sum();
        let q = rng.bf16_vec(total * 8 * 64, -1.0, 1.0);
        let out = pool.cpu_attention(&q, &seqs, shape).expect("cpu attention");
        assert!(out.iter().all(|v| v.is_finite()));
        let used: usize = pool.tables.iter().map(Vec::len).sum();
        assert_eq!(pool.num_blocks, used + 3);
    }
}
