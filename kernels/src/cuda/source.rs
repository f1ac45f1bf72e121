//! CUDA C sources of the element-wise, norm, rotary and sampling kernels, compiled at run
//! time with NVRTC (see [`super::nvrtc`]). Every program is [`COMMON`] followed by its own
//! text; the attention programs live in [`super::source_attn`] and [`super::source_flash`],
//! the sampling program's in [`super::source_sampling`].
//!
//! Storage is bf16 kept as raw 16-bit words (`bf16_t`, converted with the bit operations
//! below, round-to-nearest-even like `half::bf16::from_f32`), so no CUDA header is needed:
//! NVRTC compiles these with its built-in declarations only. All arithmetic is f32 (f64
//! where noted). Every kernel guards its indices; blocks are multiples of 32 threads.

/// Helpers shared by every program: bf16 conversion, warp and block reductions.
pub(crate) const COMMON: &str = r#"
typedef unsigned short bf16_t;
typedef unsigned int u32;

#define WEFT_NEG_INF __uint_as_float(0xff800000u)
#define WEFT_FULL_MASK 0xffffffffu

__device__ __forceinline__ float bf2f(bf16_t v) {
    return __uint_as_float(((u32)v) << 16);
}

__device__ __forceinline__ bf16_t f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16_t)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

/* The low (first in memory) and high bf16 of a 32-bit word holding two of them. */
__device__ __forceinline__ float bf_lo(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf_hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ u32 bf_pack(float lo, float hi) {
    return ((u32)f2bf(lo)) | (((u32)f2bf(hi)) << 16);
}

__device__ __forceinline__ int weft_imin(int a, int b) { return a < b ? a : b; }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(WEFT_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(WEFT_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(WEFT_FULL_MASK, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
   `red` is a __shared__ scratch of 32 floats; every thread of the block must call this. */
__device__ float block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = (lane < nw) ? red[lane] : 0.0f;
    return warp_sum(v);
}

__device__ double block_sum_d(double v, double* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nw = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = (lane < nw) ? red[lane] : 0.0;
    return warp_sum_d(v);
}

__device__ float block_max(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = (lane < nw) ? red[lane] : WEFT_NEG_INF;
    return warp_max(v);
}
"#;

/// Embedding gather, RMS norm (plain and fused with the residual add), rotary embedding,
/// SiLU-multiply and the paged K/V write.
pub(crate) const ELEMENTWISE: &str = r#"
/* out[t] = table[ids[t] - vocab_start] when the id is in this rank's slice, else zeros.
   grid (n_tokens), block: any multiple of 32. */
extern "C" __global__ void weft_embedding(const bf16_t* __restrict__ table,
                                          const u32* __restrict__ ids,
                                          bf16_t* __restrict__ out, int n_tokens, int hidden,
                                          u32 vocab_start, u32 vocab_rows) {
    const int t = blockIdx.x;
    if (t >= n_tokens) return;
    const u32 id = ids[t];
    bf16_t* o = out + (size_t)t * hidden;
    if (id >= vocab_start && id - vocab_start < vocab_rows) {
        const bf16_t* row = table + (size_t)(id - vocab_start) * hidden;
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = row[i];
    } else {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = (bf16_t)0;
    }
}

/* Vectorized norms: a row of d (d % 8 == 0, d <= 8 * NORM_CHUNKS * blockDim.x) is read
   as 16-byte words of 8 bf16, every load of a thread issued before its first store, and
   kept in registers between the two passes. Row starts are 16-byte aligned because the
   buffers are (allocations are 256-byte aligned) and d % 8 == 0. */
#define NORM_CHUNKS 8

__device__ __forceinline__ bool norm_vectorized(int d) {
    return (d & 7) == 0 && d / 8 <= NORM_CHUNKS * (int)blockDim.x;
}

/* a + b per bf16 pair, rounded to bf16 (as the scalar path), adding the squares of the
   rounded sums to *ss. */
__device__ __forceinline__ u32 add_pair(u32 a, u32 b, float* ss) {
    const u32 p = bf_pack(bf_lo(b) + bf_lo(a), bf_hi(b) + bf_hi(a));
    const float lo = bf_lo(p), hi = bf_hi(p);
    *ss += lo * lo + hi * hi;
    return p;
}

__device__ __forceinline__ float sq_pair(u32 a) {
    const float lo = bf_lo(a), hi = bf_hi(a);
    return lo * lo + hi * hi;
}

__device__ __forceinline__ u32 scale_pair(u32 v, u32 w, float scale) {
    return bf_pack(bf_lo(v) * scale * bf_lo(w), bf_hi(v) * scale * bf_hi(w));
}

__device__ __forceinline__ uint4 scale8(uint4 v, uint4 w, float scale) {
    return make_uint4(scale_pair(v.x, w.x, scale), scale_pair(v.y, w.y, scale),
                      scale_pair(v.z, w.z, scale), scale_pair(v.w, w.w, scale));
}

/* out = x / sqrt(mean(x^2) + eps) * w per row of d. grid (rows), block multiple of 32. */
extern "C" __global__ void weft_rms_norm(const bf16_t* x, const bf16_t* __restrict__ w,
                                         bf16_t* out, int rows, int d, float eps) {
    __shared__ float red[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const bf16_t* xr = x + (size_t)r * d;
    bf16_t* orow = out + (size_t)r * d;
    float ss = 0.0f;
    if (norm_vectorized(d)) {
        const int nv = d / 8;
        uint4 xv[NORM_CHUNKS];
#pragma unroll
        for (int c = 0; c < NORM_CHUNKS; c++) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i < nv) {
                xv[c] = ((const uint4*)xr)[i];
                ss += sq_pair(xv[c].x) + sq_pair(xv[c].y) + sq_pair(xv[c].z) + sq_pair(xv[c].w);
            }
        }
        ss = block_sum(ss, red);
        const float scale = 1.0f / sqrtf(ss / (float)d + eps);
#pragma unroll
        for (int c = 0; c < NORM_CHUNKS; c++) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i < nv) ((uint4*)orow)[i] = scale8(xv[c], ((const uint4*)w)[i], scale);
        }
        return;
    }
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = bf2f(xr[i]);
        ss += v * v;
    }
    ss = block_sum(ss, red);
    const float scale = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        orow[i] = f2bf(bf2f(xr[i]) * scale * bf2f(w[i]));
    }
}

/* residual += x (rounded to bf16), then out = rmsnorm(residual) * w.
   Each element is read and written by one thread only, so `out` may alias `x`. */
extern "C" __global__ void weft_add_rms_norm(const bf16_t* x, bf16_t* residual,
                                             const bf16_t* __restrict__ w, bf16_t* out,
                                             int rows, int d, float eps) {
    __shared__ float red[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const bf16_t* xr = x + (size_t)r * d;
    bf16_t* res = residual + (size_t)r * d;
    bf16_t* orow = out + (size_t)r * d;
    float ss = 0.0f;
    if (norm_vectorized(d)) {
        const int nv = d / 8;
        uint4 rv[NORM_CHUNKS];
#pragma unroll
        for (int c = 0; c < NORM_CHUNKS; c++) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i < nv) {
                const uint4 a = ((const uint4*)xr)[i];
                const uint4 b = ((const uint4*)res)[i];
                rv[c] = make_uint4(add_pair(a.x, b.x, &ss), add_pair(a.y, b.y, &ss),
                                   add_pair(a.z, b.z, &ss), add_pair(a.w, b.w, &ss));
            }
        }
#pragma unroll
        for (int c = 0; c < NORM_CHUNKS; c++) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i < nv) ((uint4*)res)[i] = rv[c];
        }
        ss = block_sum(ss, red);
        const float scale = 1.0f / sqrtf(ss / (float)d + eps);
#pragma unroll
        for (int c = 0; c < NORM_CHUNKS; c++) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i < nv) ((uint4*)orow)[i] = scale8(rv[c], ((const uint4*)w)[i], scale);
        }
        return;
    }
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const bf16_t s = f2bf(bf2f(res[i]) + bf2f(xr[i]));
        res[i] = s;
        const float v = bf2f(s);
        ss += v * v;
    }
    ss = block_sum(ss, red);
    const float scale = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        orow[i] = f2bf(bf2f(res[i]) * scale * bf2f(w[i]));
    }
}

#define ROPE_MAX_HALF 256
/* In place on x [n_tokens, n_heads, head_dim]; token t at position pos[t]. Pair i is
   (i, i + head_dim/2) (interleaved == 0) or (2i, 2i+1); angle = pos * inv_freq[i] in f64.
   grid (n_tokens), block multiple of 32; head_dim/2 <= ROPE_MAX_HALF (host-checked). */
extern "C" __global__ void weft_rope(bf16_t* x, const u32* __restrict__ pos,
                                     const float* __restrict__ inv_freq, int n_tokens,
                                     int n_heads, int head_dim, int interleaved) {
    __shared__ float cs[2 * ROPE_MAX_HALF];
    const int t = blockIdx.x;
    const int half = head_dim / 2;
    if (t >= n_tokens || half > ROPE_MAX_HALF) return;
    const double p = (double)pos[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double s, c;
        sincos(p * (double)inv_freq[i], &s, &c);
        cs[2 * i] = (float)c;
        cs[2 * i + 1] = (float)s;
    }
    __syncthreads();
    bf16_t* xt = x + (size_t)t * n_heads * head_dim;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx - h * half;
        const int ia = interleaved ? 2 * i : i;
        const int ib = interleaved ? 2 * i + 1 : i + half;
        bf16_t* xh = xt + (size_t)h * head_dim;
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float a = bf2f(xh[ia]), b = bf2f(xh[ib]);
        xh[ia] = f2bf(a * c - b * s);
        xh[ib] = f2bf(a * s + b * c);
    }
}

/* The fused split + rotary of a merged Q/K/V projection: qkv [n_tokens, (n_heads + 2 *
   kv_heads) * head_dim] (the Q, K and V columns of each row in that order) into q
   [n_tokens, n_heads, head_dim] and k, v [n_tokens, kv_heads, head_dim], q and k rotated
   as weft_rope does. grid (n_tokens), block multiple of 32; head_dim/2 <= ROPE_MAX_HALF. */
extern "C" __global__ void weft_qkv_rope(const bf16_t* __restrict__ qkv,
                                         const u32* __restrict__ pos,
                                         const float* __restrict__ inv_freq,
                                         bf16_t* __restrict__ q, bf16_t* __restrict__ k,
                                         bf16_t* __restrict__ v, int n_tokens, int n_heads,
                                         int kv_heads, int head_dim, int interleaved) {
    __shared__ float cs[2 * ROPE_MAX_HALF];
    const int t = blockIdx.x;
    const int half = head_dim / 2;
    if (t >= n_tokens || half > ROPE_MAX_HALF) return;
    const double p = (double)pos[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double s, c;
        sincos(p * (double)inv_freq[i], &s, &c);
        cs[2 * i] = (float)c;
        cs[2 * i + 1] = (float)s;
    }
    __syncthreads();
    const size_t qw = (size_t)n_heads * head_dim, kvw = (size_t)kv_heads * head_dim;
    const bf16_t* row = qkv + (size_t)t * (qw + 2 * kvw);
    const int rot_heads = n_heads + kv_heads;
    for (int idx = threadIdx.x; idx < rot_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx - h * half;
        const int ia = interleaved ? 2 * i : i;
        const int ib = interleaved ? 2 * i + 1 : i + half;
        const bf16_t* src = row + (size_t)h * head_dim;
        bf16_t* dst = h < n_heads ? q + (size_t)t * qw + (size_t)h * head_dim
                                  : k + (size_t)t * kvw + (size_t)(h - n_heads) * head_dim;
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float a = bf2f(src[ia]), b = bf2f(src[ib]);
        dst[ia] = f2bf(a * c - b * s);
        dst[ib] = f2bf(a * s + b * c);
    }
    const bf16_t* vs = row + qw + kvw;
    bf16_t* vd = v + (size_t)t * kvw;
    for (int i = threadIdx.x; i < (int)kvw; i += blockDim.x) vd[i] = vs[i];
}

/* Seeded random bf16 values without files: out[i] = offset + scale * u_i, u_i uniform in
   -1 <= u < 1, from splitmix64 of (key, i). 1-D grid-stride loop. */
extern "C" __global__ void weft_fill_random(bf16_t* __restrict__ out, long long n,
                                            unsigned long long key, float scale,
                                            float offset) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)n; i += step) {
        unsigned long long z = key + 0x9e3779b97f4a7c15ull * (unsigned long long)(i + 1);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        const float u = (float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f;
        out[i] = f2bf(offset + scale * u);
    }
}

__device__ __forceinline__ float silu_times(float g, float u) {
    return g / (1.0f + expf(-g)) * u;
}

/* out[r, i] = silu(gate[r*stride + i]) * up[r*stride + i] for r < rows, i < d.
   1-D grid-stride loop; bf16 pairs (32-bit words, 32-bit index arithmetic) when d and
   stride are even, the inputs 4-byte aligned and the pairs fit in 32 bits. */
extern "C" __global__ void weft_silu_mul(const bf16_t* gate, const bf16_t* up,
                                         bf16_t* __restrict__ out, int rows, int d,
                                         int stride) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t pairs = (size_t)rows * (size_t)(d / 2);
    if ((d & 1) == 0 && (stride & 1) == 0 && ((size_t)gate & 3) == 0 &&
        ((size_t)up & 3) == 0 && pairs <= 0xffffffffull && step <= 0xffffffffull) {
        const u32 hp = (u32)d / 2, hs = (u32)stride / 2, n = (u32)pairs;
        const u32* g32 = (const u32*)gate;
        const u32* u32p = (const u32*)up;
        u32* o32 = (u32*)out;
        for (u32 idx = (u32)first; idx < n; idx += (u32)step) {
            const u32 r = idx / hp, i = idx - r * hp;
            const u32 g = g32[(size_t)r * hs + i], u = u32p[(size_t)r * hs + i];
            o32[idx] = bf_pack(silu_times(bf_lo(g), bf_lo(u)), silu_times(bf_hi(g), bf_hi(u)));
        }
        return;
    }
    const size_t n = (size_t)rows * (size_t)d;
    for (size_t idx = first; idx < n; idx += step) {
        const size_t r = idx / (size_t)d, i = idx - r * (size_t)d;
        const float g = bf2f(gate[r * (size_t)stride + i]);
        const float u = bf2f(up[r * (size_t)stride + i]);
        out[idx] = f2bf(silu_times(g, u));
    }
}

/* Copies row t of k/v ([n_tokens, row_elems]) to slot slots[t] of the pools
   ([num_slots, row_elems], num_slots = num_blocks * block_size). grid (n_tokens). */
extern "C" __global__ void weft_paged_write(const bf16_t* __restrict__ k,
                                            const bf16_t* __restrict__ v,
                                            bf16_t* __restrict__ k_pool,
                                            bf16_t* __restrict__ v_pool,
                                            const long long* __restrict__ slots, int n_tokens,
                                            int row_elems, long long num_slots) {
    const int t = blockIdx.x;
    if (t >= n_tokens) return;
    const long long s = slots[t];
    if (s < 0 || s >= num_slots) return;
    const bf16_t* ks = k + (size_t)t * row_elems;
    const bf16_t* vs = v + (size_t)t * row_elems;
    bf16_t* kd = k_pool + (size_t)s * row_elems;
    bf16_t* vd = v_pool + (size_t)s * row_elems;
    for (int i = threadIdx.x; i < row_elems; i += blockDim.x) {
        kd[i] = ks[i];
        vd[i] = vs[i];
    }
}
"#;

/// Kernel (function) names, as the programs define them.
pub(crate) mod names {
    pub const EMBEDDING: &str = "weft_embedding";
    pub const RMS_NORM: &str = "weft_rms_norm";
    pub const ADD_RMS_NORM: &str = "weft_add_rms_norm";
    pub const ROPE: &str = "weft_rope";
    pub const QKV_ROPE: &str = "weft_qkv_rope";
    pub const FILL_RANDOM: &str = "weft_fill_random";
    pub const SILU_MUL: &str = "weft_silu_mul";
    pub const PAGED_WRITE: &str = "weft_paged_write";
    pub const TOPK_LOGPROBS: &str = "weft_topk_logprobs";
    pub const ARGMAX_LOGPROB: &str = "weft_argmax_logprob";
    pub const DECODE_PART: &str = "weft_paged_decode_part";
    pub const DECODE_REDUCE: &str = "weft_paged_decode_reduce";
    pub const PREFILL: &str = "weft_paged_prefill";
    pub const GATHER_KV: &str = "weft_gather_kv";
    pub const CAUSAL_SOFTMAX: &str = "weft_causal_softmax";
    pub const FLASH_64: &str = "weft_flash_prefill_64";
    pub const FLASH_128: &str = "weft_flash_prefill_128";
}

/// One NVRTC program: its source parts (concatenated) and the kernels it defines.
pub(crate) struct Program {
    pub name: &'static str,
    pub parts: &'static [&'static str],
    pub functions: &'static [&'static str],
}

impl Program {
    pub(crate) fn source(&self) -> String {
        self.parts.concat()
    }
}

/// Every program of the backend; each kernel name appears in exactly one.
pub(crate) const PROGRAMS: &[Program] = &[
    Program {
        name: "weft_elementwise",
        parts: &[COMMON, ELEMENTWISE],
        functions: &[
            names::EMBEDDING,
            names::RMS_NORM,
            names::ADD_RMS_NORM,
            names::ROPE,
            names::QKV_ROPE,
            names::FILL_RANDOM,
            names::SILU_MUL,
            names::PAGED_WRITE,
        ],
    },
    Program {
        name: "weft_sampling",
        parts: &[COMMON, super::source_sampling::SAMPLING],
        functions: &[names::TOPK_LOGPROBS, names::ARGMAX_LOGPROB],
    },
    Program {
        name: "weft_attention",
        parts: &[
            COMMON,
            super::source_attn::ATTENTION,
            super::source_flash::FLASH,
        ],
        functions: &[
            names::DECODE_PART,
            names::DECODE_REDUCE,
            names::PREFILL,
            names::GATHER_KV,
            names::CAUSAL_SOFTMAX,
            names::FLASH_64,
            names::FLASH_128,
        ],
    },
];

/// The program that defines kernel `name`.
pub(crate) fn program_of(name: &str) -> Option<&'static Program> {
    PROGRAMS.iter().find(|p| p.functions.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::{names, PROGRAMS};

    /// The value of `#define name value` in `src`.
    fn define(src: &str, name: &str) -> Option<usize> {
        src.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("#define ")?.strip_prefix(name)?;
            rest.trim().parse().ok()
        })
    }

    #[test]
    fn every_kernel_is_defined_once_in_its_program() {
        let all = [
            names::EMBEDDING,
            names::RMS_NORM,
            names::ADD_RMS_NORM,
            names::ROPE,
            names::QKV_ROPE,
            names::FILL_RANDOM,
            names::SILU_MUL,
            names::PAGED_WRITE,
            names::TOPK_LOGPROBS,
            names::ARGMAX_LOGPROB,
            names::DECODE_PART,
            names::DECODE_REDUCE,
            names::PREFILL,
            names::GATHER_KV,
            names::CAUSAL_SOFTMAX,
            names::FLASH_64,
            names::FLASH_128,
        ];
        for name in all {
            let owners: Vec<_> = PROGRAMS
                .iter()
                .filter(|p| p.functions.contains(&name))
                .collect();
            assert_eq!(owners.len(), 1, "{name}");
            // Declared directly, or through the flash kernels' macro.
            let decl = format!("extern \"C\" __global__ void {name}(");
            let by_macro = format!("FL_KERNEL({name},");
            let src = owners[0].source();
            assert_eq!(
                src.matches(&decl).count() + src.matches(&by_macro).count(),
                1,
                "{name}"
            );
        }
        let listed: usize = PROGRAMS.iter().map(|p| p.functions.len()).sum();
        assert_eq!(listed, all.len());
    }

    #[test]
    fn sources_are_balanced_and_header_free() {
        for p in PROGRAMS {
            let src = p.source();
            for (open, close) in [('{', '}'), ('(', ')'), ('[', ']')] {
                assert_eq!(
                    src.matches(open).count(),
                    src.matches(close).count(),
                    "{}",
                    p.name
                );
            }
            assert!(
                !src.contains("#include"),
                "{}: NVRTC built-ins only",
                p.name
            );
            assert!(!src.contains('\0'), "{}", p.name);
        }
    }

    #[test]
    fn host_constants_match_the_sources() {
        let attn = super::super::source_attn::ATTENTION;
        assert_eq!(
            define(attn, "DEC_PART_MAX"),
            Some(super::super::attn::DEC_PART_MAX)
        );
        assert_eq!(define(attn, "DEC_GMAX"), Some(super::super::attn::DEC_GMAX));
        assert_eq!(define(attn, "PF_BQ"), Some(super::super::attn::PF_BQ));
        let max_hd = super::super::attn::ATTENTION_MAX_HEAD_DIM;
        assert_eq!(define(attn, "ATT_MAX_HD"), Some(max_hd));
        assert_eq!(
            define(super::super::source_sampling::SAMPLING, "TOPK_MAX"),
            Some(super::super::ops::TOPK_MAX)
        );
        assert_eq!(
            define(super::ELEMENTWISE, "ROPE_MAX_HALF"),
            Some(super::super::ops::ROPE_MAX_HALF)
        );
        // The decode kernel sizes its shared p.V reduction buffer for this block size (and
        // refuses any other).
        assert_eq!(
            define(attn, "DEC_THREADS"),
            Some(super::super::attn::ATT_THREADS as usize)
        );
    }
}
