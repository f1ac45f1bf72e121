//! Inputs shared by the kernel benchmarks (`kernels.rs`, `hot.rs`).

use weft_kernels::{AttentionShape, DType, PagedKv, PagedSeq};

/// Deterministic pseudo-random bytes (xorshift) whose every value is finite,
/// with f16 scales of 0.01 for the quantized blocks.
pub fn weight_bytes(dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    let len = rows * dtype.row_bytes(cols).expect("shape");
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut b: Vec<u8> = (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8 & 0x3F // keeps every f16/bf16/f32 finite
        })
        .collect();
    if dtype.is_quantized() {
        for blk in b.chunks_exact_mut(dtype.block_bytes()) {
            blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    b
}

/// One decode step of `seqs` sequences with `kv` cached positions each, in
/// blocks of 16 placed interleaved (sequence i owns blocks i, i + seqs, ...).
pub struct DecodeCase {
    pub pool: Vec<f32>,
    pub tables: Vec<Vec<u32>>,
    pub q: Vec<f32>,
    pub kv: usize,
}

pub const BLOCK: usize = 16;

impl DecodeCase {
    pub fn new(s: AttentionShape, seqs: usize, kv: usize) -> Self {
        let per_seq = kv.div_ceil(BLOCK);
        DecodeCase {
            pool: vec![0.02f32; seqs * per_seq * BLOCK * s.n_kv_heads * s.head_dim],
            tables: (0..seqs)
                .map(|i| (0..per_seq).map(|b| (b * seqs + i) as u32).collect())
                .collect(),
            q: vec![0.01f32; seqs * s.n_heads * s.head_dim],
            kv,
        }
    }

    pub fn batch(&self) -> Vec<PagedSeq<'_>> {
        self.tables
            .iter()
            .enumerate()
            .map(|(i, t)| PagedSeq {
                block_table: t,
                start_pos: self.kv - 1,
                n_tokens: 1,
                row_offset: i,
            })
            .collect()
    }

    pub fn pool(&self) -> PagedKv<'_> {
        PagedKv {
            k: &self.pool,
            v: &self.pool,
            block_size: BLOCK,
        }
    }
}
