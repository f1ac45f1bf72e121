//! CUDA C sources of the attention kernels over the paged K/V pool
//! `[num_blocks, block_size, kv_heads, head_dim]` (bf16, one pool for K and one for V).
//!
//! * Decode (one new token per sequence, already written to the pool): split-K /
//!   flash-decoding. `weft_paged_decode_part` gives each (sequence, KV head, group chunk of
//!   up to `DEC_GMAX` query heads, partition of `part_len <= DEC_PART_MAX` positions) one block of 128
//!   threads, which computes the partition's max, sum of exponentials and unnormalized
//!   `sum p * v`; `weft_paged_decode_reduce` merges the partitions of each (sequence, head).
//! * Prefill (any number of new tokens per sequence, already written to the pool, keys of
//!   every earlier position read from the pool too): tiled online softmax. A block of 128
//!   threads takes `PF_BQ` rows (token, query head of one KV head's group) of one
//!   sequence, stages 32-position K/V tiles in shared memory, and each warp keeps its rows'
//!   running max, sum and output in registers.
//!
//! Both are GQA-aware (the query heads of one KV head share each K/V load), need an even
//! `head_dim <= ATT_MAX_HD` (decode: a multiple of 8, read as 16-byte words), and skip (treat as masked) any block-table entry outside the
//! pool: the host validates the tables before a launch, the kernels never read out of
//! bounds even if it did not. Static shared memory: decode 8 KiB + 1 KiB + 32 KiB, prefill 41 KiB
//! (under the 48 KiB that needs no opt-in).
pub(crate) const ATTENTION: &str = r#"
#define ATT_MAX_HD 256
#define ATT_MAX_HP (ATT_MAX_HD / 2)
#define DEC_PART_MAX 128
#define DEC_THREADS 128
#define DEC_GMAX 8
#define PF_BQ 16
#define PF_BK 32
#define PF_ROWS_PER_WARP 4
#define PF_KSTRIDE (ATT_MAX_HP + 1)

/* The slot index (block * block_size + offset) of position t, or -1 if the table entry is
   missing or outside the pool. */
__device__ __forceinline__ long long slot_of(const int* table, int max_blocks, int t,
                                             int block_size, int num_blocks) {
    const int bi = t / block_size;
    if (bi >= max_blocks) return -1;
    const int blk = table[bi];
    if (blk < 0 || blk >= num_blocks) return -1;
    return (long long)blk * block_size + (t - bi * block_size);
}

/* What one decode block works on: DEC_GMAX (or fewer) query heads of one KV head, over
   positions t0..t0+n of one sequence. Rows are read as 16-byte words of 8 bf16 (hd % 8
   == 0, host-checked; rows are 16-byte aligned since the pools are). */
struct DecBlock {
    const int* table;
    const uint4* k;
    const uint4* v;
    int max_blocks, block_size, num_blocks, kv_heads, kvh, hd, t0, n, gcount;
};

__device__ __forceinline__ const uint4* dec_row(const DecBlock& B, const uint4* pool,
                                                long long slot) {
    return pool + ((size_t)slot * B.kv_heads + B.kvh) * (B.hd / 8);
}

__device__ __forceinline__ float dot8(const float* q, uint4 k) {
    return q[0] * bf_lo(k.x) + q[1] * bf_hi(k.x) + q[2] * bf_lo(k.y) + q[3] * bf_hi(k.y) +
           q[4] * bf_lo(k.z) + q[5] * bf_hi(k.z) + q[6] * bf_lo(k.w) + q[7] * bf_hi(k.w);
}

/* p_s[g][j] = scale * q_g . k_(t0+j) (or -inf for a position outside the pool): `lpp`
   lanes per position (the power of two at or above hd / 8), each one 16-byte word of the
   K row, so a warp reads 32 / lpp rows at once. */
__device__ __forceinline__ void dec_scores(const DecBlock& B, const float* q_s, float* p_s,
                                           float scale) {
    const int nv = B.hd / 8;
    int lpp = 1;
    while (lpp < nv) lpp <<= 1;
    const int per_warp = 32 / lpp;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int sub = lane / lpp, li = lane - sub * lpp;
    for (int j0 = warp * per_warp; j0 < B.n; j0 += nwarps * per_warp) {
        const int j = j0 + sub;
        const long long slot =
            j < B.n ? slot_of(B.table, B.max_blocks, B.t0 + j, B.block_size, B.num_blocks) : -1;
        uint4 kw = make_uint4(0u, 0u, 0u, 0u);
        if (slot >= 0 && li < nv) kw = dec_row(B, B.k, slot)[li];
        float dots[DEC_GMAX];
#pragma unroll
        for (int g = 0; g < DEC_GMAX; g++) {
            dots[g] = (g < B.gcount && li < nv) ? dot8(q_s + g * ATT_MAX_HD + li * 8, kw) : 0.0f;
        }
        for (int o = lpp / 2; o > 0; o >>= 1) {
#pragma unroll
            for (int g = 0; g < DEC_GMAX; g++) dots[g] += __shfl_xor_sync(WEFT_FULL_MASK, dots[g], o);
        }
        if (li == 0 && j < B.n) {
#pragma unroll
            for (int g = 0; g < DEC_GMAX; g++) {
                if (g < B.gcount) p_s[g * DEC_PART_MAX + j] = slot >= 0 ? dots[g] * scale : WEFT_NEG_INF;
            }
        }
    }
}

/* Softmax inside the partition, one warp per query head: p_s becomes exp(s - m), and
   (m, sum) goes to part_ml[2 * (ml0 + g * max_parts)]. */
__device__ __forceinline__ void dec_softmax(const DecBlock& B, float* p_s, float* part_ml,
                                            size_t ml0, int max_parts) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (int g = warp; g < B.gcount; g += nwarps) {
        float m = WEFT_NEG_INF;
        for (int j = lane; j < B.n; j += 32) m = fmaxf(m, p_s[g * DEC_PART_MAX + j]);
        m = warp_max(m);
        float l = 0.0f;
        for (int j = lane; j < B.n; j += 32) {
            const float s = p_s[g * DEC_PART_MAX + j];
            const float p = s == WEFT_NEG_INF ? 0.0f : expf(s - m);
            p_s[g * DEC_PART_MAX + j] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0) {
            const size_t o = ml0 + (size_t)g * max_parts;
            part_ml[2 * o] = m;
            part_ml[2 * o + 1] = l;
        }
    }
}

/* part_acc[(ml0 + g * max_parts) * hd + d] = sum_j p_s[g][j] * v_(t0+j)[d]. Thread =
   (position group tg, 16-byte column c): ngroups = blockDim / (hd / 8) groups each sum
   every ngroups-th position; their partial sums meet in red (ngroups * gcount * hd <=
   DEC_THREADS * DEC_GMAX * 8 floats). */
__device__ __forceinline__ void dec_pv(const DecBlock& B, const float* p_s, float* red,
                                       float* part_acc, size_t ml0, int max_parts) {
    const int nv = B.hd / 8;
    const int ngroups = blockDim.x / nv;
    const int tg = threadIdx.x / nv, c = threadIdx.x - tg * nv;
    float acc[DEC_GMAX][8];
#pragma unroll
    for (int g = 0; g < DEC_GMAX; g++) {
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.0f;
    }
    if (tg < ngroups) {
#pragma unroll 4
        for (int j = tg; j < B.n; j += ngroups) {
            const long long slot =
                slot_of(B.table, B.max_blocks, B.t0 + j, B.block_size, B.num_blocks);
            if (slot < 0) continue;
            const uint4 w = dec_row(B, B.v, slot)[c];
            const float v[8] = {bf_lo(w.x), bf_hi(w.x), bf_lo(w.y), bf_hi(w.y),
                                bf_lo(w.z), bf_hi(w.z), bf_lo(w.w), bf_hi(w.w)};
#pragma unroll
            for (int g = 0; g < DEC_GMAX; g++) {
                if (g < B.gcount) {
                    const float p = p_s[g * DEC_PART_MAX + j];
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[g][e] += p * v[e];
                }
            }
        }
#pragma unroll
        for (int g = 0; g < DEC_GMAX; g++) {
            if (g < B.gcount) {
#pragma unroll
                for (int e = 0; e < 8; e++) red[(tg * B.gcount + g) * B.hd + c * 8 + e] = acc[g][e];
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < B.gcount * B.hd; i += blockDim.x) {
        const int g = i / B.hd, d = i - g * B.hd;
        float s = 0.0f;
        for (int u = 0; u < ngroups; u++) s += red[(u * B.gcount + g) * B.hd + d];
        part_acc[(ml0 + (size_t)g * max_parts) * B.hd + d] = s;
    }
}

/* grid (num_seqs, kv_heads * gchunks, max_parts), block DEC_THREADS threads.
   q [num_seqs, n_heads, hd]; part_ml [num_seqs, n_heads, max_parts, 2] (max, sum);
   part_acc [num_seqs, n_heads, max_parts, hd]. Sequence s attends positions
   0..ctx_lens[s]. */
extern "C" __global__ void weft_paged_decode_part(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k_pool,
    const bf16_t* __restrict__ v_pool, const int* __restrict__ block_tables,
    const int* __restrict__ ctx_lens, float* __restrict__ part_ml,
    float* __restrict__ part_acc, int n_heads, int kv_heads, int hd, int block_size,
    int num_blocks, int max_blocks, int max_parts, int part_len, float scale) {
    __shared__ float q_s[DEC_GMAX * ATT_MAX_HD];
    __shared__ float p_s[DEC_GMAX * DEC_PART_MAX];
    __shared__ float red_s[DEC_THREADS * DEC_GMAX * 8];
    const int seq = blockIdx.x, part = blockIdx.z;
    const int group = n_heads / kv_heads;
    const int gchunks = (group + DEC_GMAX - 1) / DEC_GMAX;
    const int kvh = blockIdx.y / gchunks, g0 = (blockIdx.y - kvh * gchunks) * DEC_GMAX;
    const int ctx = ctx_lens[seq];
    const int t0 = part * part_len;
    if (kvh >= kv_heads || t0 >= ctx || part >= max_parts || hd > ATT_MAX_HD || (hd & 7) ||
        blockDim.x != DEC_THREADS || part_len < 1 || part_len > DEC_PART_MAX)
        return;
    DecBlock B;
    B.table = block_tables + (size_t)seq * max_blocks;
    B.k = (const uint4*)k_pool;
    B.v = (const uint4*)v_pool;
    B.max_blocks = max_blocks;
    B.block_size = block_size;
    B.num_blocks = num_blocks;
    B.kv_heads = kv_heads;
    B.kvh = kvh;
    B.hd = hd;
    B.t0 = t0;
    B.n = weft_imin(part_len, ctx - t0);
    B.gcount = weft_imin(DEC_GMAX, group - g0);
    const int h0 = kvh * group + g0;
    for (int i = threadIdx.x; i < B.gcount * hd; i += blockDim.x) {
        const int g = i / hd, d = i - g * hd;
        q_s[g * ATT_MAX_HD + d] = bf2f(q[((size_t)seq * n_heads + h0 + g) * hd + d]);
    }
    __syncthreads();
    dec_scores(B, q_s, p_s, scale);
    __syncthreads();
    const size_t ml0 = ((size_t)seq * n_heads + h0) * max_parts + part;
    dec_softmax(B, p_s, part_ml, ml0, max_parts);
    __syncthreads();
    dec_pv(B, p_s, red_s, part_acc, ml0, max_parts);
}

/* Merges the partitions: grid (num_seqs, n_heads), block 128 threads. */
extern "C" __global__ void weft_paged_decode_reduce(
    const float* __restrict__ part_ml, const float* __restrict__ part_acc,
    const int* __restrict__ ctx_lens, bf16_t* __restrict__ out, int n_heads, int hd,
    int max_parts, int part_len) {
    __shared__ float red[32];
    const int seq = blockIdx.x, h = blockIdx.y;
    if (h >= n_heads || part_len < 1) return;
    const int ctx = ctx_lens[seq];
    const int nparts = ctx <= 0 ? 0 : weft_imin((ctx + part_len - 1) / part_len, max_parts);
    const size_t base = ((size_t)seq * n_heads + h) * max_parts;
    float m = WEFT_NEG_INF;
    for (int p = threadIdx.x; p < nparts; p += blockDim.x) m = fmaxf(m, part_ml[2 * (base + p)]);
    m = block_max(m, red);
    float l = 0.0f;
    for (int p = threadIdx.x; p < nparts; p += blockDim.x) {
        const float mp = part_ml[2 * (base + p)];
        if (mp != WEFT_NEG_INF) l += expf(mp - m) * part_ml[2 * (base + p) + 1];
    }
    l = block_sum(l, red);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    bf16_t* o = out + ((size_t)seq * n_heads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int p = 0; p < nparts; p++) {
            const float mp = part_ml[2 * (base + p)];
            if (mp != WEFT_NEG_INF) a += expf(mp - m) * part_acc[(base + p) * hd + d];
        }
        o[d] = f2bf(a * inv);
    }
}

/* What one prefill block works on: PF_BQ rows of one sequence and one KV head. */
struct PfBlock {
    const int* table;
    const u32* k32;
    const u32* v32;
    int max_blocks, block_size, num_blocks, kv_heads, kvh, hp, kstride, kend;
};

/* Stages positions k0..k0+PF_BK (those below kend and inside the pool; zeros otherwise)
   of this KV head into k_s (row stride kstride) and v_s (row stride ATT_MAX_HP). */
__device__ __forceinline__ void pf_load_tile(const PfBlock& B, int k0, u32* k_s, u32* v_s) {
    for (int i = threadIdx.x; i < PF_BK * B.hp; i += blockDim.x) {
        const int j = i / B.hp, pi = i - j * B.hp;
        u32 kw = 0, vw = 0;
        if (k0 + j < B.kend) {
            const long long slot =
                slot_of(B.table, B.max_blocks, k0 + j, B.block_size, B.num_blocks);
            if (slot >= 0) {
                const size_t off = ((size_t)slot * B.kv_heads + B.kvh) * B.hp + pi;
                kw = B.k32[off];
                vw = B.v32[off];
            }
        }
        k_s[j * B.kstride + pi] = kw;
        v_s[j * ATT_MAX_HP + pi] = vw;
    }
}

/* One online-softmax step of one query row (qr, at position qp) over the staged tile
   starting at k0 (k0 <= qp): lane j scores position k0 + j, then m, l and the row's
   output pairs (lane + 32c) are updated. Called by a whole warp. */
__device__ __forceinline__ void pf_row_step(const PfBlock& B, const u32* qr, const u32* k_s,
                                            const u32* v_s, int k0, int qp, float scale,
                                            float& m, float& l, float (&acc)[4][2]) {
    const int lane = threadIdx.x & 31;
    float s = WEFT_NEG_INF;
    if (k0 + lane <= qp) {
        const u32* kr = k_s + lane * B.kstride;
        float dot = 0.0f;
        for (int pi = 0; pi < B.hp; pi++) {
            const u32 a = qr[pi], b = kr[pi];
            dot += bf_lo(a) * bf_lo(b) + bf_hi(a) * bf_hi(b);
        }
        s = dot * scale;
    }
    const float mn = fmaxf(m, warp_max(s));
    const float p = s == WEFT_NEG_INF ? 0.0f : expf(s - mn);
    const float alpha = m == WEFT_NEG_INF ? 0.0f : expf(m - mn);
    l = l * alpha + warp_sum(p);
    m = mn;
#pragma unroll
    for (int c = 0; c < 4; c++) { acc[c][0] *= alpha; acc[c][1] *= alpha; }
    const int jn = weft_imin(PF_BK, qp - k0 + 1);
    for (int j = 0; j < jn; j++) {
        const float pj = __shfl_sync(WEFT_FULL_MASK, p, j);
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int pi = lane + 32 * c;
            if (pi < B.hp) {
                const u32 w = v_s[j * ATT_MAX_HP + pi];
                acc[c][0] += pj * bf_lo(w);
                acc[c][1] += pj * bf_hi(w);
            }
        }
    }
}

/* Prefill / chunked prefill. grid (ceil(max_rows / PF_BQ), kv_heads, num_seqs), block 128
   threads (4 warps x PF_ROWS_PER_WARP rows = PF_BQ). seq_info [num_seqs, 3] = (first row
   in q/out, n_tokens, start_pos). Row r of a sequence's block range is (token r / group,
   query head kvh * group + r % group); token t at position start_pos + t attends
   positions 0..=start_pos + t. q, out [total_tokens, n_heads, hd]. */
extern "C" __global__ void weft_paged_prefill(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k_pool,
    const bf16_t* __restrict__ v_pool, const int* __restrict__ block_tables,
    const int* __restrict__ seq_info, bf16_t* __restrict__ out, int n_heads, int kv_heads,
    int hd, int block_size, int num_blocks, int max_blocks, float scale) {
    __shared__ u32 q_s[PF_BQ * ATT_MAX_HP];
    __shared__ u32 k_s[PF_BK * PF_KSTRIDE];
    __shared__ u32 v_s[PF_BK * ATT_MAX_HP];
    const int seq = blockIdx.z, kvh = blockIdx.y, row0 = blockIdx.x * PF_BQ;
    const int row_off = seq_info[3 * seq], nt = seq_info[3 * seq + 1];
    const int sp = seq_info[3 * seq + 2];
    const int group = n_heads / kv_heads;
    const int nrows = nt * group;
    if (row0 >= nrows || kvh >= kv_heads || hd > ATT_MAX_HD || (hd & 1)) return;
    PfBlock B;
    B.table = block_tables + (size_t)seq * max_blocks;
    B.k32 = (const u32*)k_pool;
    B.v32 = (const u32*)v_pool;
    B.max_blocks = max_blocks;
    B.block_size = block_size;
    B.num_blocks = num_blocks;
    B.kv_heads = kv_heads;
    B.kvh = kvh;
    B.hp = hd / 2;
    B.kstride = B.hp | 1; /* odd: lanes reading different rows hit different banks */
    B.kend = sp + (weft_imin(row0 + PF_BQ, nrows) - 1) / group + 1;
    for (int i = threadIdx.x; i < PF_BQ * B.hp; i += blockDim.x) {
        const int r = i / B.hp, pi = i - r * B.hp;
        const int rr = row0 + r;
        u32 w = 0;
        if (rr < nrows) {
            const int t = rr / group, g = rr - t * group;
            w = ((const u32*)(q + ((size_t)(row_off + t) * n_heads + kvh * group + g) * hd))[pi];
        }
        q_s[r * ATT_MAX_HP + pi] = w;
    }
    const int warp = threadIdx.x >> 5;
    float m[PF_ROWS_PER_WARP], l[PF_ROWS_PER_WARP], acc[PF_ROWS_PER_WARP][4][2];
#pragma unroll
    for (int i = 0; i < PF_ROWS_PER_WARP; i++) {
        m[i] = WEFT_NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < 4; c++) { acc[i][c][0] = 0.0f; acc[i][c][1] = 0.0f; }
    }
    for (int k0 = 0; k0 < B.kend; k0 += PF_BK) {
        __syncthreads(); /* the previous tile is consumed (and q_s is written, first time) */
        pf_load_tile(B, k0, k_s, v_s);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < PF_ROWS_PER_WARP; i++) {
            const int r = warp * PF_ROWS_PER_WARP + i;
            if (row0 + r >= nrows) continue;
            const int qp = sp + (row0 + r) / group;
            if (k0 > qp) continue;
            pf_row_step(B, q_s + r * ATT_MAX_HP, k_s, v_s, k0, qp, scale, m[i], l[i], acc[i]);
        }
    }
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < PF_ROWS_PER_WARP; i++) {
        const int rr = row0 + warp * PF_ROWS_PER_WARP + i;
        if (rr >= nrows) continue;
        const int t = rr / group, g = rr - t * group;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        u32* o = (u32*)(out + ((size_t)(row_off + t) * n_heads + kvh * group + g) * hd);
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int pi = lane + 32 * c;
            if (pi < B.hp) o[pi] = bf_pack(acc[i][c][0] * inv, acc[i][c][1] * inv);
        }
    }
}
/* The GEMM prefill path (attn_gemm.rs): K and V of positions 0..ctx of sequence `seq`
   gathered from the pools into contiguous [ctx, kv_heads * group, hd] buffers, KV head j
   repeated for query heads j * group .. (j + 1) * group (zeros for a slot outside the
   pool). grid (ctx), block any multiple of 32; hd even. */
extern "C" __global__ void weft_gather_kv(
    const bf16_t* __restrict__ k_pool, const bf16_t* __restrict__ v_pool,
    const int* __restrict__ block_tables, int seq, int max_blocks, int block_size,
    int num_blocks, int kv_heads, int hd, int group, int ctx, bf16_t* __restrict__ k_out,
    bf16_t* __restrict__ v_out) {
    const int t = blockIdx.x;
    if (t >= ctx || (hd & 1) || group < 1) return;
    const long long slot =
        slot_of(block_tables + (size_t)seq * max_blocks, max_blocks, t, block_size, num_blocks);
    const int hp = hd / 2, words = kv_heads * group * hp;
    u32* kd = (u32*)(k_out + (size_t)t * kv_heads * group * hd);
    u32* vd = (u32*)(v_out + (size_t)t * kv_heads * group * hd);
    const size_t src = (size_t)(slot < 0 ? 0 : slot) * kv_heads * hp;
    const u32* ks = (const u32*)k_pool + src;
    const u32* vs = (const u32*)v_pool + src;
    for (int i = threadIdx.x; i < words; i += blockDim.x) {
        const int h = i / hp, d = i - h * hp;
        const int from = (h / group) * hp + d;
        kd[i] = slot < 0 ? 0u : ks[from];
        vd[i] = slot < 0 ? 0u : vs[from];
    }
}

#define SM_PER_THREAD 16

/* Causal softmax of the GEMM prefill path: s [heads, n, kend] f32 scores (already
   scaled) in, probabilities out as two bf16 terms p_hi + p_lo [heads, n, kend] (p_hi the
   rounded probability, p_lo what rounding left), so the P.V GEMMs lose no more than f32
   would. Row i of a head is the query at position q_pos0 + i, which sees keys
   0..=q_pos0 + i; later keys get probability 0. Rows of up to SM_PER_THREAD * blockDim
   allowed keys are read once and kept in registers; longer ones take three passes.
   grid (n, heads), block any multiple of 32 up to 1024. */
extern "C" __global__ void weft_causal_softmax(const float* __restrict__ s,
                                               bf16_t* __restrict__ p_hi,
                                               bf16_t* __restrict__ p_lo, int n, int kend,
                                               int q_pos0) {
    __shared__ float red[32];
    const int i = blockIdx.x, h = blockIdx.y;
    if (i >= n) return;
    const size_t base = ((size_t)h * n + i) * kend;
    const float* row = s + base;
    const int allowed = weft_imin(kend, q_pos0 + i + 1);
    if (allowed <= SM_PER_THREAD * (int)blockDim.x) {
        /* One read of the row, kept in registers. */
        float v[SM_PER_THREAD];
        float m = WEFT_NEG_INF;
#pragma unroll
        for (int u = 0; u < SM_PER_THREAD; u++) {
            const int c = threadIdx.x + u * blockDim.x;
            v[u] = c < allowed ? row[c] : WEFT_NEG_INF;
            m = fmaxf(m, v[u]);
        }
        m = block_max(m, red);
        float l = 0.0f;
#pragma unroll
        for (int u = 0; u < SM_PER_THREAD; u++) {
            const int c = threadIdx.x + u * blockDim.x;
            v[u] = c < allowed ? expf(v[u] - m) : 0.0f;
            l += v[u];
        }
        l = block_sum(l, red);
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int u = 0; u < SM_PER_THREAD; u++) {
            const int c = threadIdx.x + u * blockDim.x;
            if (c < kend) {
                const float p = v[u] * inv;
                const bf16_t hi = f2bf(p);
                p_hi[base + c] = hi;
                p_lo[base + c] = f2bf(p - bf2f(hi));
            }
        }
        for (int c = SM_PER_THREAD * blockDim.x + threadIdx.x; c < kend; c += blockDim.x) {
            p_hi[base + c] = (bf16_t)0;
            p_lo[base + c] = (bf16_t)0;
        }
        return;
    }
    float m = WEFT_NEG_INF;
    for (int c = threadIdx.x; c < allowed; c += blockDim.x) m = fmaxf(m, row[c]);    m = block_max(m, red);
    float l = 0.0f;
    for (int c = threadIdx.x; c < allowed; c += blockDim.x) l += expf(row[c] - m);
    l = block_sum(l, red);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int c = threadIdx.x; c < kend; c += blockDim.x) {
        const float p = c < allowed ? expf(row[c] - m) * inv : 0.0f;
        const bf16_t hi = f2bf(p);
        p_hi[base + c] = hi;
        p_lo[base + c] = f2bf(p - bf2f(hi));
    }
}
"#;
