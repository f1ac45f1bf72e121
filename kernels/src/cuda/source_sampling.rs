//! CUDA C source of the sampling program (argmax and top-k with log-probabilities),
//! compiled at run time after [`super::source::COMMON`].

/// Argmax / top-k with log-probabilities over f32 logits rows.
pub(crate) const SAMPLING: &str = r#"
#define TOPK_MAX 20
#define TOPK_NONE 0xffffffffu

/* (va, ia) ranks before (vb, ib): larger logit first, lower id on ties. */
__device__ __forceinline__ bool ranks_before(float va, u32 ia, float vb, u32 ib) {
    return va > vb || (va == vb && ia < ib);
}

__device__ __forceinline__ void warp_best(float* v, u32* id) {
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(WEFT_FULL_MASK, *v, o);
        const u32 i2 = __shfl_xor_sync(WEFT_FULL_MASK, *id, o);
        if (ranks_before(v2, i2, *v, *id)) { *v = v2; *id = i2; }
    }
}

/* For each row of logits [rows, vocab]: the k (<= TOPK_MAX) best tokens (NaN left out,
   larger logit first, lower id on ties) and their log-softmax, computed like the CPU
   sampler: max over non-NaN logits, sum of exp(v - max) over non-NaN in f64, logprob =
   v - max - ln(sum). Missing entries (fewer than k non-NaN logits) get id `pad_id` and
   -inf. grid (rows), block 128 threads (any multiple of 32 up to 1024). */
extern "C" __global__ void weft_topk_logprobs(const float* __restrict__ logits, int rows,
                                              int vocab, int k, u32 pad_id,
                                              u32* __restrict__ out_ids,
                                              float* __restrict__ out_lp) {
    __shared__ float wv[32];
    __shared__ u32 wi[32];
    __shared__ float best_v[TOPK_MAX];
    __shared__ u32 best_i[TOPK_MAX];
    __shared__ double red[32];
    const int r = blockIdx.x;
    if (r >= rows || k < 1 || k > TOPK_MAX) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nw = (blockDim.x + 31) >> 5;
    const float* x = logits + (size_t)r * vocab;
    float tv[TOPK_MAX];
    u32 ti[TOPK_MAX];
    for (int j = 0; j < TOPK_MAX; j++) { tv[j] = WEFT_NEG_INF; ti[j] = TOPK_NONE; }
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = x[i];
        if (v != v || !ranks_before(v, (u32)i, tv[k - 1], ti[k - 1])) continue;
        int p = k - 1;
        while (p > 0 && ranks_before(v, (u32)i, tv[p - 1], ti[p - 1])) {
            tv[p] = tv[p - 1];
            ti[p] = ti[p - 1];
            p--;
        }
        tv[p] = v;
        ti[p] = (u32)i;
    }
    int head = 0;
    for (int round = 0; round < k; round++) {
        float v = head < k ? tv[head] : WEFT_NEG_INF;
        u32 id = head < k ? ti[head] : TOPK_NONE;
        warp_best(&v, &id);
        if (lane == 0) { wv[warp] = v; wi[warp] = id; }
        __syncthreads();
        if (warp == 0) {
            v = lane < nw ? wv[lane] : WEFT_NEG_INF;
            id = lane < nw ? wi[lane] : TOPK_NONE;
            warp_best(&v, &id);
            if (lane == 0) { best_v[round] = v; best_i[round] = id; }
        }
        __syncthreads();
        if (head < k && best_i[round] != TOPK_NONE && ti[head] == best_i[round]) head++;
    }
    const float mx = best_i[0] == TOPK_NONE ? WEFT_NEG_INF : best_v[0];
    double sum = 0.0;
    if (mx != WEFT_NEG_INF) {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const float v = x[i];
            if (v == v) sum += exp((double)v - (double)mx);
        }
    }
    sum = block_sum_d(sum, red);
    if ((int)threadIdx.x < k) {
        const int j = (int)threadIdx.x;
        const u32 id = best_i[j];
        float lp = WEFT_NEG_INF;
        if (id != TOPK_NONE && mx != WEFT_NEG_INF) {
            lp = (float)((double)best_v[j] - (double)mx - log(sum));
        }
        out_ids[(size_t)r * k + j] = id == TOPK_NONE ? pad_id : id;
        out_lp[(size_t)r * k + j] = lp;
    }
}

/* k = 1 of weft_topk_logprobs (with pad id 0) for wide blocks: the best non-NaN logit of
   each row (lower id on ties) and its log-softmax; a row of only NaN gives id 0 and -inf.
   grid (rows), block up to 1024 threads (a multiple of 32). */
extern "C" __global__ void weft_argmax_logprob(const float* __restrict__ logits, int rows,
                                               int vocab, u32* __restrict__ out_ids,
                                               float* __restrict__ out_lp) {
    __shared__ float wv[32];
    __shared__ u32 wi[32];
    __shared__ double red[32];
    __shared__ float top_v;
    __shared__ u32 top_i;
    const int r = blockIdx.x;
    if (r >= rows) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nw = (blockDim.x + 31) >> 5;
    const float* x = logits + (size_t)r * vocab;
    float bv = WEFT_NEG_INF;
    u32 bi = TOPK_NONE;
#pragma unroll 4
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = x[i];
        if (v == v && ranks_before(v, (u32)i, bv, bi)) { bv = v; bi = (u32)i; }
    }
    warp_best(&bv, &bi);
    if (lane == 0) { wv[warp] = bv; wi[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        float v = lane < nw ? wv[lane] : WEFT_NEG_INF;
        u32 id = lane < nw ? wi[lane] : TOPK_NONE;
        warp_best(&v, &id);
        if (lane == 0) { top_v = v; top_i = id; }
    }
    __syncthreads();
    const u32 id = top_i;
    const float mx = id == TOPK_NONE ? WEFT_NEG_INF : top_v;
    double sum = 0.0;
    if (mx != WEFT_NEG_INF) {
#pragma unroll 4
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const float v = x[i];
            if (v == v) sum += exp((double)v - (double)mx);
        }
    }
    sum = block_sum_d(sum, red);
    if (threadIdx.x == 0) {
        float lp = WEFT_NEG_INF;
        if (id != TOPK_NONE && mx != WEFT_NEG_INF) {
            lp = (float)((double)top_v - (double)mx - log(sum));
        }
        out_ids[r] = id == TOPK_NONE ? 0u : id;
        out_lp[r] = lp;
    }
}
"#;
