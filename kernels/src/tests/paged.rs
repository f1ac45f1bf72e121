//! Paged attention: against the f64 reference, bit-identical to the contiguous kernel,
//! and invariant to chunking, batching, block placement and threads.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::attention::ref_attention;
use super::invariance::pool;
use super::{assert_close_abs, rng, uniform};
use crate::attention::attention_with;
use crate::isa::Isa;
use crate::paged::batch_with;
use crate::{
    paged_attention, paged_attention_batch, paged_write, AttentionShape, KernelError, PagedKv,
    PagedSeq,
};

const GQA_9_3: AttentionShape = AttentionShape {
    n_heads: 9,
    n_kv_heads: 3,
    head_dim: 64,
};
const GQA_8_2: AttentionShape = AttentionShape {
    n_heads: 8,
    n_kv_heads: 2,
    head_dim: 128,
};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A K/V pool filled with NaN (any read of an unwritten slot poisons the result).
struct TestPool {
    k: Vec<f32>,
    v: Vec<f32>,
    block_size: usize,
    shape: AttentionShape,
}

impl TestPool {
    fn new(num_blocks: usize, block_size: usize, shape: AttentionShape) -> Self {
        let len = num_blocks * block_size * shape.n_kv_heads * shape.head_dim;
        TestPool {
            k: vec![f32::NAN; len],
            v: vec![f32::NAN; len],
            block_size,
            shape,
        }
    }

    fn kv(&self) -> PagedKv<'_> {
        PagedKv {
            k: &self.k,
            v: &self.v,
            block_size: self.block_size,
        }
    }

    /// Writes positions `start..start + n` of the contiguous `k`/`v` through `table`.
    fn write(&mut self, table: &[u32], k: &[f32], v: &[f32], start: usize, n: usize) {
        let row = self.shape.n_kv_heads * self.shape.head_dim;
        let r = start * row..(start + n) * row;
        let (bs, s) = (self.block_size, self.shape);
        paged_write(
            &mut self.k,
            &mut self.v,
            bs,
            table,
            s,
            start,
            &k[r.clone()],
            &v[r],
        )
        .expect("paged_write");
    }
}

/// `n` distinct block ids drawn at random from `0..num_blocks`.
fn random_table(r: &mut ChaCha8Rng, n: usize, num_blocks: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    ids.shuffle(r);
    ids.truncate(n);
    ids
}

/// Random contiguous q/k/v of one sequence.
fn random_seq(r: &mut ChaCha8Rng, s: AttentionShape, n: usize, kv_len: usize) -> [Vec<f32>; 3] {
    let q = uniform(r, n * s.n_heads * s.head_dim, -1.0, 1.0);
    let k = uniform(r, kv_len * s.n_kv_heads * s.head_dim, -1.0, 1.0);
    let v = uniform(r, k.len(), -1.0, 1.0);
    [q, k, v]
}

#[test]
fn paged_matches_reference_and_contiguous_bits() {
    let mut seed = 0;
    for shape in [GQA_9_3, GQA_8_2] {
        for bs in [16, 4] {
            for (n, start) in [(1, 0), (1, 40), (7, 0), (5, 33), (20, 3)] {
                seed += 1;
                let mut r = rng(200 + seed);
                let kv_len = start + n;
                let [q, k, v] = random_seq(&mut r, shape, n, kv_len);
                let blocks = kv_len.div_ceil(bs);
                let table = random_table(&mut r, blocks, blocks + 6);
                let mut p = TestPool::new(blocks + 6, bs, shape);
                p.write(&table, &k, &v, 0, kv_len);
                let want = ref_attention(&q, &k, &v, shape, n, start);
                let ctx = format!("{shape:?} bs={bs} n={n} start={start}");
                for isa in Isa::available() {
                    let seq = PagedSeq {
                        block_table: &table,
                        start_pos: start,
                        n_tokens: n,
                        row_offset: 0,
                    };
                    let mut out = vec![f32::NAN; q.len()];
                    batch_with("test", isa, &q, p.kv(), &[seq], shape, &mut out).expect("paged");
                    assert_close_abs(&format!("{ctx} {isa:?}"), &out, &want, 2e-6);
                    let mut contiguous = vec![f32::NAN; q.len()];
                    attention_with(isa, &q, &k, &v, shape, n, start, &mut contiguous)
                        .expect("attention");
                    assert!(
                        bits(&out) == bits(&contiguous),
                        "{ctx} {isa:?}: != contiguous"
                    );
                }
                let mut out = vec![f32::NAN; q.len()];
                paged_attention(&q, p.kv(), &table, shape, n, start, &mut out).expect("public");
                assert_close_abs(&format!("{ctx} public"), &out, &want, 2e-6);
            }
        }
    }
}

/// 37 tokens prefilled at once, in chunks of 10 + 20 + 7, and one by one (each chunk
/// written to a fresh pool just before it is attended): bit-identical outputs.
#[test]
fn paged_prefill_is_chunking_invariant() {
    for (shape, bs) in [(GQA_9_3, 16), (GQA_8_2, 4)] {
        let mut r = rng(300 + bs as u64);
        let total = 37;
        let [q, k, v] = random_seq(&mut r, shape, total, total);
        let blocks = total.div_ceil(bs);
        let table = random_table(&mut r, blocks, blocks * 2);
        let row = shape.n_heads * shape.head_dim;
        let run = |chunks: &[usize]| {
            let mut p = TestPool::new(blocks * 2, bs, shape);
            let mut out = vec![f32::NAN; q.len()];
            let mut start = 0;
            for &c in chunks {
                p.write(&table, &k, &v, start, c);
                let rows = start * row..(start + c) * row;
                paged_attention(
                    &q[rows.clone()],
                    p.kv(),
                    &table,
                    shape,
                    c,
                    start,
                    &mut out[rows],
                )
                .expect("paged");
                start += c;
            }
            bits(&out)
        };
        let whole = run(&[37]);
        assert!(run(&[10, 20, 7]) == whole, "{shape:?}: 10+20+7 != 37");
        assert!(run(&[1; 37]) == whole, "{shape:?}: one by one != 37");
        assert!(!whole.contains(&f32::NAN.to_bits()), "unwritten slot read");
    }
}

/// One sequence alone vs inside a batch of 6 (decodes and prefills, different block
/// placement and row offset), with 1 and 2 threads: bit-identical.
#[test]
fn paged_batch_is_invariant_to_the_other_sequences_placement_and_threads() {
    let shape = GQA_9_3;
    let bs = 4;
    let mut r = rng(400);
    // (n_tokens, start_pos) of the 6 sequences; ours is index 2.
    let specs = [(1, 30), (12, 0), (3, 21), (1, 0), (1, 57), (8, 8)];
    let num_blocks = 64;
    let mut p = TestPool::new(num_blocks, bs, shape);
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    ids.shuffle(&mut r);
    let (mut qs, mut tables, mut seq_data) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = 0;
    for &(n, start) in &specs {
        let [q, k, v] = random_seq(&mut r, shape, n, start + n);
        let nb = (start + n).div_ceil(bs);
        let table = ids[next..next + nb].to_vec();
        next += nb;
        p.write(&table, &k, &v, 0, start + n);
        qs.extend_from_slice(&q);
        tables.push(table);
        seq_data.push((q, k, v));
    }
    let mut row = 0;
    let seqs: Vec<PagedSeq<'_>> = specs
        .iter()
        .zip(&tables)
        .map(|(&(n, start), t)| {
            row += n;
            PagedSeq {
                block_table: t,
                start_pos: start,
                n_tokens: n,
                row_offset: row - n,
            }
        })
        .collect();
    let (q2, k2, v2) = &seq_data[2];
    let (n2, start2) = specs[2];
    // Alone: a different pool, with its blocks at other places.
    let alone_table: Vec<u32> = (0..(start2 + n2).div_ceil(bs) as u32).rev().collect();
    let mut alone_pool = TestPool::new(16, bs, shape);
    alone_pool.write(&alone_table, k2, v2, 0, start2 + n2);
    let row_len = shape.n_heads * shape.head_dim;
    for threads in [1, 2] {
        pool(threads).install(|| {
            let mut alone = vec![f32::NAN; q2.len()];
            let kv = alone_pool.kv();
            paged_attention(q2, kv, &alone_table, shape, n2, start2, &mut alone).expect("alone");
            let mut all = vec![f32::NAN; qs.len()];
            paged_attention_batch(&qs, p.kv(), &seqs, shape, &mut all).expect("batch");
            let mine = seqs[2].row_offset * row_len..(seqs[2].row_offset + n2) * row_len;
            assert!(bits(&all[mine]) == bits(&alone), "threads={threads}");
            // Every sequence of the batch also matches the contiguous kernel.
            for (s, (q, k, v)) in seqs.iter().zip(&seq_data) {
                let mut c = vec![0f32; q.len()];
                attention(q, k, v, shape, s.n_tokens, s.start_pos, &mut c);
                let rows = s.row_offset * row_len..(s.row_offset + s.n_tokens) * row_len;
                assert!(bits(&all[rows]) == bits(&c), "seq at row {}", s.row_offset);
            }
        });
    }
}

fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttentionShape,
    n: usize,
    st: usize,
    o: &mut [f32],
) {
    crate::attention(q, k, v, s, n, st, o).expect("attention");
}

#[test]
fn paged_errors_instead_of_panicking() {
    let s = AttentionShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let bs = 4;
    let p = TestPool::new(3, bs, s);
    let q = vec![0.5f32; 2 * 4 * 8];
    let mut out = vec![0f32; q.len()];
    let msg = |e: KernelError| e.to_string();
    // Positions 0..=9 need 3 blocks.
    let e = paged_attention(&q, p.kv(), &[0, 1], s, 2, 8, &mut out).expect_err("short");
    assert!(msg(e).contains("block table has 2 entries"));
    let e = paged_attention(&q, p.kv(), &[0, 1, 3], s, 2, 8, &mut out).expect_err("id");
    assert!(msg(e).contains("names block 3"));
    let e = paged_attention(&q, p.kv(), &[0, 1, u32::MAX], s, 2, 8, &mut out).expect_err("max");
    assert!(matches!(e, KernelError::InvalidArgument { .. }));
    let e = paged_attention(&q[1..], p.kv(), &[0, 1, 2], s, 2, 8, &mut out).expect_err("q");
    assert!(matches!(e, KernelError::ShapeMismatch { what: "q", .. }));
    let bad_kv = PagedKv {
        k: &p.k[1..],
        ..p.kv()
    };
    let e = paged_attention(&q, bad_kv, &[0, 1, 2], s, 2, 8, &mut out).expect_err("pool");
    assert!(matches!(e, KernelError::BadLength { .. }));
    let zero_bs = PagedKv {
        block_size: 0,
        ..p.kv()
    };
    assert!(paged_attention(&q, zero_bs, &[0, 1, 2], s, 2, 8, &mut out).is_err());
    let seq = |row_offset, n_tokens| PagedSeq {
        block_table: &[0, 1, 2],
        start_pos: 0,
        n_tokens,
        row_offset,
    };
    let e = paged_attention_batch(&q, p.kv(), &[seq(0, 2), seq(1, 1)], s, &mut out);
    assert!(msg(e.expect_err("overlap")).contains("overlaps"));
    let e = paged_attention_batch(&q, p.kv(), &[seq(1, 2)], s, &mut out);
    assert!(msg(e.expect_err("rows")).contains("needs rows up to 3"));
    let e = paged_attention_batch(&q, p.kv(), &[seq(0, 1)], s, &mut out[1..]);
    assert!(matches!(
        e,
        Err(KernelError::ShapeMismatch { what: "out", .. })
    ));
    let mut kp = p.k.clone();
    let mut vp = p.v.clone();
    let kv = vec![1f32; 16];
    let e = paged_write(&mut kp, &mut vp, bs, &[0, 1], s, 8, &kv, &kv).expect_err("short");
    assert!(msg(e).contains("block table"));
    let e = paged_write(&mut kp, &mut vp, bs, &[0, 1, 7], s, 8, &kv, &kv).expect_err("id");
    assert!(msg(e).contains("names block 7"));
    let e = paged_write(&mut kp, &mut vp, bs, &[0], s, 0, &kv[1..], &kv[1..]).expect_err("k");
    assert!(matches!(e, KernelError::BadLength { what: "k", .. }));
    let e = paged_write(&mut kp, &mut vp, bs, &[0], s, 0, &kv, &kv[..8]).expect_err("v");
    assert!(matches!(e, KernelError::ShapeMismatch { what: "v", .. }));
    let e = paged_write(&mut kp, &mut vp[1..], bs, &[0], s, 0, &kv, &kv).expect_err("pool");
    assert!(matches!(
        e,
        KernelError::ShapeMismatch { what: "v pool", .. }
    ));
    // An empty batch and a zero-token sequence are no-ops.
    paged_attention_batch(&[], p.kv(), &[], s, &mut []).expect("empty");
    paged_attention_batch(
        &q,
        p.kv(),
        &[PagedSeq {
            block_table: &[],
            ..seq(0, 0)
        }],
        s,
        &mut out,
    )
    .expect("zero tokens");
}

#[test]
fn paged_write_round_trips() {
    let s = AttentionShape {
        n_heads: 6,
        n_kv_heads: 3,
        head_dim: 16,
    };
    let (bs, num_blocks) = (4, 10);
    let mut r = rng(500);
    let table = random_table(&mut r, 6, num_blocks);
    let total = 23;
    let [_, k, v] = random_seq(&mut r, s, 0, total);
    let mut p = TestPool::new(num_blocks, bs, s);
    for (start, n) in [(0, 5), (5, 1), (6, 11), (17, 6)] {
        p.write(&table, &k, &v, start, n);
    }
    let slot = s.n_kv_heads * s.head_dim;
    let mut touched = vec![false; p.k.len() / slot];
    for pos in 0..total {
        let at = table[pos / bs] as usize * bs + pos % bs;
        touched[at] = true;
        let got = (
            &p.k[at * slot..(at + 1) * slot],
            &p.v[at * slot..(at + 1) * slot],
        );
        assert_eq!(got.0, &k[pos * slot..(pos + 1) * slot], "k at {pos}");
        assert_eq!(got.1, &v[pos * slot..(pos + 1) * slot], "v at {pos}");
    }
    for (i, t) in touched.iter().enumerate() {
        if !t {
            assert!(
                p.k[i * slot..(i + 1) * slot].iter().all(|x| x.is_nan()),
                "slot {i}"
            );
        }
    }
}
