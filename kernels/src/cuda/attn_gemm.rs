//! Prefill attention through cuBLAS. For each sequence with many new tokens, K and V of
//! its positions are gathered from the pool into contiguous buffers, each KV head
//! repeated for the query heads of its group (so every query head has its own K and V at
//! a uniform stride). Then, over all heads at once:
//!
//! * one strided-batched GEMM gives the scores `S = scale · Q Kᵀ` (f32);
//! * a causal softmax turns them into probabilities held as two bf16 terms, `P = P_hi +
//!   P_lo`, so nothing is lost to bf16 rounding where a few keys carry large weights;
//! * two more strided-batched GEMMs give `O = P_hi V + P_lo V` straight into the output.
//!
//! The tensor cores do the arithmetic; the tiled kernel (`attn.rs`) keeps the sequences
//! with few new tokens. Query rows are processed in chunks so the scores of all heads stay
//! under a limit ([`SCORE_ELEMS`] floats); a chunk's keys stop at its last query's
//! position, so with several chunks part of the masked half is never computed.

use std::ffi::c_int;

use cudarc::cublas::result as blas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::attn::PagedKvCache;
use super::attn_flash::{flash_seq, flash_supported, FlashHeads, FlashSeq};
use super::batch::PagedBatch;
use super::device::CudaBackend;
use super::error::{check_len, guarded, mul, to_i32, CudaError};
use super::ops::per_item;
use super::source::names;
use super::tensor::DeviceBuffer;

/// Sequences with at least this many new tokens take the GEMM path in `paged_attention`.
pub(crate) const GEMM_MIN_TOKENS: usize = 64;
/// The most f32 scores held at once (64 Mi floats: 256 MiB, plus half that twice for
/// the two bf16 probability terms).
const SCORE_ELEMS: usize = 1 << 26;
/// Threads of the gather and softmax kernels.
const THREADS: u32 = 256;

/// One strided-batched GEMM `C_i = alpha · op(A_i) · op(B_i)` in cuBLAS's column-major
/// terms; pointers are raw device addresses, element strides between batch members.
struct Strided {
    trans_a: cublasOperation_t,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: (u64, usize, i64),
    b: (u64, usize, i64),
    c: (u64, usize, i64),
    c_type: cudaDataType,
    batch: usize,
    /// 0: C is overwritten; 1: the product is added to C.
    beta: f32,
}

fn ci(v: usize) -> Result<c_int, CudaError> {
    c_int::try_from(v).map_err(|_| CudaError::Shape(format!("attention GEMM: {v} exceeds i32")))
}

fn gemm(b: &CudaBackend, g: &Strided) -> Result<(), CudaError> {
    let (m, n, k) = (ci(g.m)?, ci(g.n)?, ci(g.k)?);
    let (lda, ldb, ldc, batch) = (ci(g.a.1)?, ci(g.b.1)?, ci(g.c.1)?, ci(g.batch)?);
    guarded("attention GEMM", || {
        b.context().bind_to_thread()?;
        let handle = b.lock_blas();
        // SAFETY: the callers derive every pointer, leading dimension and stride from
        // buffers whose lengths they checked (see `seq_chunk`), all used on the handle's
        // stream; alpha and beta are host f32 scalars alive for the call (COMPUTE_32F).
        unsafe {
            blas::gemm_strided_batched_ex(
                *handle.handle(),
                g.trans_a,
                cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                (&g.alpha as *const f32).cast(),
                g.a.0 as *const _,
                cudaDataType::CUDA_R_16BF,
                lda,
                g.a.2,
                g.b.0 as *const _,
                cudaDataType::CUDA_R_16BF,
                ldb,
                g.b.2,
                (&g.beta as *const f32).cast(),
                g.c.0 as *mut _,
                g.c_type,
                ldc,
                g.c.2,
                batch,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }?;
        Ok(())
    })
}

/// Shapes of one call: query heads, head dim, query heads per KV head.
#[derive(Clone, Copy)]
struct Heads {
    n: usize,
    hd: usize,
    group: usize,
}

/// How the sequences with many new tokens are computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum LongPath {
    /// The tensor-core kernel (`source_flash.rs`), no score matrix.
    Flash,
    /// cuBLAS with the scores materialized, at most `score_limit` f32 at once (at least
    /// one query row per chunk whatever the limit).
    Gemm { score_limit: usize },
}

/// The best path this device and head size allow.
pub(crate) fn long_path(b: &CudaBackend, head_dim: usize) -> LongPath {
    if flash_supported(b, head_dim) {
        LongPath::Flash
    } else {
        LongPath::Gemm {
            score_limit: SCORE_ELEMS,
        }
    }
}

/// The sequences `which` of `batch` through `path`.
pub(crate) fn prefill_gemm_seqs(
    b: &CudaBackend,
    q: &DeviceBuffer<bf16>,
    cache: &PagedKvCache,
    batch: &PagedBatch,
    n_heads: usize,
    (which, path): (&[usize], LongPath),
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    const OP: &str = "paged_attention_prefill_gemm";
    let (kv, hd) = (cache.n_kv_heads(), cache.head_dim());
    batch.check_pool(OP, cache.block_size(), cache.num_blocks())?;
    if n_heads == 0 || !n_heads.is_multiple_of(kv) {
        return Err(CudaError::Shape(format!(
            "{OP}: n_heads {n_heads} is not a positive multiple of n_kv_heads {kv}"
        )));
    }
    let rows = mul(OP, batch.total_tokens, mul(OP, n_heads, hd)?)?;
    check_len(OP, rows, q.len())?;
    check_len(OP, rows, out.len())?;
    let heads = Heads {
        n: n_heads,
        hd,
        group: n_heads / kv,
    };
    for &s in which {
        let [row, nt, start] = batch.spans[s];
        let (row, nt, start) = (row as usize, nt as usize, start as usize);
        if nt == 0 {
            continue;
        }
        let ctx = start + nt;
        let score_limit = match path {
            LongPath::Gemm { score_limit } => score_limit,
            LongPath::Flash => {
                let mut kc = DeviceBuffer::<bf16>::zeros(b, mul(OP, ctx, kv * hd)?)?;
                let mut vc = DeviceBuffer::<bf16>::zeros(b, mul(OP, ctx, kv * hd)?)?;
                gather(b, cache, batch, (s, ctx, 1), (&mut kc, &mut vc))?;
                b.mark("attention: K/V gather")?;
                let seq = FlashSeq {
                    first_row: row,
                    n: nt,
                    q_pos0: start,
                    ctx,
                };
                let h = FlashHeads {
                    n_heads,
                    kv_heads: kv,
                    head_dim: hd,
                };
                flash_seq(b, (q, &kc, &vc), seq, h, out)?;
                continue;
            }
        };
        let mut kc = DeviceBuffer::<bf16>::zeros(b, mul(OP, ctx, n_heads * hd)?)?;
        let mut vc = DeviceBuffer::<bf16>::zeros(b, mul(OP, ctx, n_heads * hd)?)?;
        gather(b, cache, batch, (s, ctx, heads.group), (&mut kc, &mut vc))?;
        let chunk = (score_limit / (n_heads * ctx).max(1)).clamp(1, nt);
        let mut r0 = 0;
        while r0 < nt {
            let n = chunk.min(nt - r0);
            let span = Span {
                first_row: row + r0,
                n,
                q_pos0: start + r0,
            };
            seq_chunk(b, (q, &kc, &vc), heads, span, out)?;
            r0 += n;
        }
    }
    Ok(())
}

/// Query rows `first_row..first_row + n` of one sequence, the first at `q_pos0`.
#[derive(Clone, Copy)]
struct Span {
    first_row: usize,
    n: usize,
    q_pos0: usize,
}

/// K and V of positions `0..ctx` of sequence `seq`, each KV head repeated `group` times:
/// `[ctx, kv_heads * group, head_dim]` each.
fn gather(
    b: &CudaBackend,
    cache: &PagedKvCache,
    batch: &PagedBatch,
    (seq, ctx, group): (usize, usize, usize),
    (kc, vc): (&mut DeviceBuffer<bf16>, &mut DeviceBuffer<bf16>),
) -> Result<(), CudaError> {
    let f = b.function(names::GATHER_KV)?;
    let (k_pool, v_pool) = (cache.k(), cache.v());
    let ints = [
        to_i32("seq", seq)?,
        to_i32("max_blocks", batch.max_blocks)?,
        to_i32("block_size", cache.block_size())?,
        to_i32("num_blocks", cache.num_blocks())?,
        to_i32("kv_heads", cache.n_kv_heads())?,
        to_i32("head_dim", cache.head_dim())?,
        to_i32("group", group)?,
        to_i32("ctx", ctx)?,
    ];
    let mut l = b.stream().launch_builder(&f);
    l.arg(k_pool.slice())
        .arg(v_pool.slice())
        .arg(batch.tables.slice());
    for v in &ints {
        l.arg(v);
    }
    l.arg(kc.slice_mut()).arg(vc.slice_mut());
    // SAFETY: arguments match `weft_gather_kv`; the pools hold num_blocks*block_size rows
    // of kv_heads*head_dim (PagedKvCache), tables num_seqs*max_blocks entries with seq <
    // num_seqs, kc/vc ctx*kv_heads*group*head_dim elements (allocated by the caller);
    // head_dim is even and slots outside the pool are skipped by the kernel.
    unsafe { l.launch(per_item(ctx, THREADS)?) }?;
    Ok(())
}

/// One chunk of query rows, every KV head: scores, softmax, `P V` into `out`.
fn seq_chunk(
    b: &CudaBackend,
    (q, kc, vc): (
        &DeviceBuffer<bf16>,
        &DeviceBuffer<bf16>,
        &DeviceBuffer<bf16>,
    ),
    h: Heads,
    span: Span,
    out: &mut DeviceBuffer<bf16>,
) -> Result<(), CudaError> {
    const OP: &str = "paged_attention_prefill_gemm";
    let kend = span.q_pos0 + span.n;
    let per_head = mul(OP, span.n, kend)?;
    let mut scores = DeviceBuffer::<f32>::scratch(b, mul(OP, h.n, per_head)?)?;
    let mut p_hi = DeviceBuffer::<bf16>::zeros(b, mul(OP, h.n, per_head)?)?;
    let mut p_lo = DeviceBuffer::<bf16>::zeros(b, mul(OP, h.n, per_head)?)?;
    // Raw addresses (the backend keeps no per-buffer events, so the guards are no-ops);
    // every buffer outlives the calls below, all queued on the backend's stream.
    let stream = b.stream().clone();
    let q_ptr = q.slice().device_ptr(&stream).0;
    let k_ptr = kc.slice().device_ptr(&stream).0;
    let v_ptr = vc.slice().device_ptr(&stream).0;
    let o_ptr = out.slice_mut().device_ptr_mut(&stream).0;
    let s_ptr = scores.slice_mut().device_ptr_mut(&stream).0;
    let hi_ptr = p_hi.slice_mut().device_ptr_mut(&stream).0;
    let lo_ptr = p_lo.slice_mut().device_ptr_mut(&stream).0;
    // q, out, kc and vc all hold rows of n_heads * head_dim; head h at column h * hd.
    let ld = h.n * h.hd;
    let bf = std::mem::size_of::<bf16>() as u64;
    let rows = ((span.first_row * ld) as u64) * bf;
    let head = h.hd as i64;
    // Row-major S[n, kend] = Q[n, hd] · K[kend, hd]ᵀ per head, as column-major Sᵀ = Kᵀ' Q.
    gemm(
        b,
        &Strided {
            trans_a: cublasOperation_t::CUBLAS_OP_T,
            m: kend,
            n: span.n,
            k: h.hd,
            alpha: 1.0 / (h.hd as f32).sqrt(),
            a: (k_ptr, ld, head),
            b: (q_ptr + rows, ld, head),
            c: (s_ptr, kend, per_head as i64),
            c_type: cudaDataType::CUDA_R_32F,
            batch: h.n,
            beta: 0.0,
        },
    )?;
    softmax(b, &scores, (&mut p_hi, &mut p_lo), h.n, span, kend)?;
    // Row-major O[n, hd] = P[n, kend] · V[kend, hd], as column-major Oᵀ = Vᵀ Pᵀ: first the
    // P_hi term, then P_lo's added.
    for (p_ptr, beta) in [(hi_ptr, 0.0), (lo_ptr, 1.0)] {
        gemm(
            b,
            &Strided {
                trans_a: cublasOperation_t::CUBLAS_OP_N,
                m: h.hd,
                n: span.n,
                k: kend,
                alpha: 1.0,
                a: (v_ptr, ld, head),
                b: (p_ptr, kend, per_head as i64),
                c: (o_ptr + rows, ld, head),
                c_type: cudaDataType::CUDA_R_16BF,
                batch: h.n,
                beta,
            },
        )?;
    }
    Ok(())
}

fn softmax(
    b: &CudaBackend,
    scores: &DeviceBuffer<f32>,
    (p_hi, p_lo): (&mut DeviceBuffer<bf16>, &mut DeviceBuffer<bf16>),
    heads: usize,
    span: Span,
    kend: usize,
) -> Result<(), CudaError> {
    let f = b.function(names::CAUSAL_SOFTMAX)?;
    let (n, kend_i, pos0) = (
        to_i32("rows", span.n)?,
        to_i32("keys", kend)?,
        to_i32("position", span.q_pos0)?,
    );
    let mut l = b.stream().launch_builder(&f);
    l.arg(scores.slice())
        .arg(p_hi.slice_mut())
        .arg(p_lo.slice_mut())
        .arg(&n)
        .arg(&kend_i)
        .arg(&pos0);
    let cfg = LaunchConfig {
        grid_dim: (n as u32, to_i32("heads", heads)? as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `weft_causal_softmax(const float*, bf16*, bf16*, int, int,
    // int)`; scores, p_hi and p_lo hold heads*n*kend elements (allocated by the caller);
    // heads is under the grid.y limit (attention_shape bounds it).
    unsafe { l.launch(cfg) }?;
    Ok(())
}
