//! CUDA C source of the tensor-core prefill attention (flash-attention style): causal GQA
//! attention of one sequence's new tokens over its K/V, gathered contiguous
//! (`[ctx, kv_heads, hd]`, see `weft_gather_kv` with group 1), without materializing the
//! score matrix. A block of 4 warps takes 64 query rows of one head (16 per warp); K/V
//! tiles of 64 keys are staged in shared memory (V transposed); scores and `P V` run on
//! `mma.sync.m16n8k16` bf16 with f32 accumulation and an online softmax in registers.
//! The probabilities enter `P V` as two bf16 terms (hi + lo), so bf16 rounding loses
//! nothing where a few keys carry large weights. Needs sm_80 or newer (the host checks);
//! built for older devices the kernels compile to nothing and are never launched.
//! `hd` is 64 or 128 (one kernel each).
pub(crate) const FLASH: &str = r#"
#define FL_ROWS 64
#define FL_KEYS 64
#define FL_THREADS 128

__device__ __forceinline__ void fl_mma(float* c, const u32* a, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/* Where one block works: rows row0 .. row0 + 63 of the sequence's n new tokens (query
   row r at position q_pos0 + r), head h on KV head h / group, keys 0..ctx. */
struct FlArgs {
    const bf16_t* q;
    const bf16_t* kc;
    const bf16_t* vc;
    bf16_t* out;
    int n, q_pos0, ctx, n_heads, kv_heads, group, first_row;
    float scale_log2;
};

/* Stages keys k0 .. k0 + 63 of KV head kvh: K as rows [key][HD] (stride HD + 8), V
   transposed [HD][key] (stride 72); keys at or past ctx are zeros. */
template <int HD>
__device__ __forceinline__ void fl_load_tile(const FlArgs& A, int kvh, int k0, bf16_t* k_s,
                                             bf16_t* vt_s) {
    const int nv = HD / 8;
    /* K: consecutive threads take consecutive 16-byte words of a row. */
    for (int i = threadIdx.x; i < FL_KEYS * nv; i += blockDim.x) {
        const int j = i / nv, c = i - j * nv;
        const int key = k0 + j;
        uint4 kw = make_uint4(0u, 0u, 0u, 0u);
        if (key < A.ctx) kw = ((const uint4*)A.kc)[((size_t)key * A.kv_heads + kvh) * nv + c];
        *(uint4*)(k_s + j * (HD + 8) + c * 8) = kw;
    }
    /* V: consecutive threads take consecutive keys, so the transposed 16-bit stores of a
       warp fall on consecutive addresses (no bank conflicts). */
    for (int i = threadIdx.x; i < FL_KEYS * nv; i += blockDim.x) {
        const int c = i / FL_KEYS, j = i - c * FL_KEYS;
        const int key = k0 + j;
        uint4 vw = make_uint4(0u, 0u, 0u, 0u);
        if (key < A.ctx) vw = ((const uint4*)A.vc)[((size_t)key * A.kv_heads + kvh) * nv + c];
        const u32 w[4] = {vw.x, vw.y, vw.z, vw.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            vt_s[(c * 8 + 2 * e) * (FL_KEYS + 8) + j] = (bf16_t)(w[e] & 0xffffu);
            vt_s[(c * 8 + 2 * e + 1) * (FL_KEYS + 8) + j] = (bf16_t)(w[e] >> 16);
        }
    }
}

template <int HD>
__device__ void fl_prefill(const FlArgs& A) {
    __shared__ __align__(16) bf16_t k_s[FL_KEYS * (HD + 8)];
    __shared__ __align__(16) bf16_t vt_s[HD * (FL_KEYS + 8)];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int h = blockIdx.y, kvh = h / A.group;
    const int row0 = blockIdx.x * FL_ROWS;
    const int wrow = row0 + warp * 16;
    const int rows[2] = {wrow + g, wrow + g + 8};
    const size_t ld = (size_t)A.n_heads * HD;
    /* Q fragments (A operand), zeros for rows past n. */
    u32 qa[HD / 16][4];
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
#pragma unroll
        for (int rr = 0; rr < 4; rr++) {
            const int r = rows[rr & 1];
            const int col = ks * 16 + tq * 2 + (rr >> 1) * 8;
            qa[ks][rr] = r < A.n ? *(const u32*)(A.q + (A.first_row + r) * ld + (size_t)h * HD + col)
                                 : 0u;
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; d++) { o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f; }
    float m[2] = {WEFT_NEG_INF, WEFT_NEG_INF}, l[2] = {0.0f, 0.0f};
    const int last_pos = A.q_pos0 + weft_imin(row0 + FL_ROWS, A.n) - 1;
    const int kend = weft_imin(A.ctx, last_pos + 1);
    for (int k0 = 0; k0 < kend; k0 += FL_KEYS) {
        __syncthreads(); /* the previous tile is no longer read */
        fl_load_tile<HD>(A, kvh, k0, k_s, vt_s);
        __syncthreads();
        float s[FL_KEYS / 8][4];
#pragma unroll
        for (int nt = 0; nt < FL_KEYS / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const bf16_t* kr = k_s + (nt * 8 + g) * (HD + 8) + tq * 2;
#pragma unroll
            for (int ks = 0; ks < HD / 16; ks++) {
                fl_mma(s[nt], qa[ks], *(const u32*)(kr + ks * 16), *(const u32*)(kr + ks * 16 + 8));
            }
        }
        float mt[2] = {WEFT_NEG_INF, WEFT_NEG_INF};
#pragma unroll
        for (int nt = 0; nt < FL_KEYS / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = k0 + nt * 8 + tq * 2 + (e & 1);
                const int pos = A.q_pos0 + rows[e >> 1];
                float v = s[nt][e] * A.scale_log2;
                if (key > pos || key >= A.ctx) v = WEFT_NEG_INF;
                s[nt][e] = v;
                mt[e >> 1] = fmaxf(mt[e >> 1], v);
            }
        }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(WEFT_FULL_MASK, mt[r], 1));
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(WEFT_FULL_MASK, mt[r], 2));
            const float mn = fmaxf(m[r], mt[r]);
            alpha[r] = (m[r] == WEFT_NEG_INF) ? 0.0f : exp2f(m[r] - mn);
            m[r] = mn;
            l[r] *= alpha[r];
        }
#pragma unroll
        for (int d = 0; d < HD / 8; d++) {
            o[d][0] *= alpha[0];
            o[d][1] *= alpha[0];
            o[d][2] *= alpha[1];
            o[d][3] *= alpha[1];
        }
#pragma unroll
        for (int nt = 0; nt < FL_KEYS / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float mr = m[e >> 1];
                const float p = (mr == WEFT_NEG_INF || s[nt][e] == WEFT_NEG_INF)
                                    ? 0.0f : exp2f(s[nt][e] - mr);
                s[nt][e] = p;
                l[e >> 1] += p;
            }
        }
#pragma unroll
        for (int kk = 0; kk < FL_KEYS / 16; kk++) {
            const float* p0 = s[2 * kk];
            const float* p1 = s[2 * kk + 1];
            const float pv[8] = {p0[0], p0[1], p0[2], p0[3], p1[0], p1[1], p1[2], p1[3]};
            u32 hi[4], lo[4];
#pragma unroll
            for (int rr = 0; rr < 4; rr++) {
                const float a = pv[2 * rr], b = pv[2 * rr + 1];
                hi[rr] = bf_pack(a, b);
                lo[rr] = bf_pack(a - bf_lo(hi[rr]), b - bf_hi(hi[rr]));
            }
#pragma unroll
            for (int d = 0; d < HD / 8; d++) {
                const bf16_t* vr = vt_s + (d * 8 + g) * (FL_KEYS + 8) + kk * 16 + tq * 2;
                const u32 b0 = *(const u32*)vr, b1 = *(const u32*)(vr + 8);
                fl_mma(o[d], hi, b0, b1);
                fl_mma(o[d], lo, b0, b1);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(WEFT_FULL_MASK, l[r], 1);
        l[r] += __shfl_xor_sync(WEFT_FULL_MASK, l[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (rows[r] >= A.n) continue;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        bf16_t* orow = A.out + (A.first_row + rows[r]) * ld + (size_t)h * HD;
#pragma unroll
        for (int d = 0; d < HD / 8; d++) {
            *(u32*)(orow + d * 8 + tq * 2) = bf_pack(o[d][2 * r] * inv, o[d][2 * r + 1] * inv);
        }
    }
}

#define FL_KERNEL(NAME, HD)                                                                 \
    extern "C" __global__ void __launch_bounds__(FL_THREADS) NAME(                         \
        const bf16_t* __restrict__ q, const bf16_t* __restrict__ kc,                        \
        const bf16_t* __restrict__ vc, bf16_t* __restrict__ out, int n, int q_pos0,         \
        int ctx, int n_heads, int kv_heads, int first_row, float scale) {                   \
        if (blockDim.x != FL_THREADS || kv_heads < 1 || n_heads % kv_heads) return;          \
        FlArgs A;                                                                           \
        A.q = q; A.kc = kc; A.vc = vc; A.out = out;                                          \
        A.n = n; A.q_pos0 = q_pos0; A.ctx = ctx; A.n_heads = n_heads;                       \
        A.kv_heads = kv_heads; A.group = n_heads / kv_heads; A.first_row = first_row;       \
        A.scale_log2 = scale * 1.4426950408889634f;                                        \
        fl_prefill<HD>(A);                                                                  \
    }

FL_KERNEL(weft_flash_prefill_64, 64)
FL_KERNEL(weft_flash_prefill_128, 128)
"#;
