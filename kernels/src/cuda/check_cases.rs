//! The individual kernel checks of [`super::check`]: one function per kernel (or kernel
//! configuration), each building its own inputs, running the CUDA and the CPU kernel and
//! comparing.

use half::bf16;

use super::check::{compare, merge, CheckResult, Rng};
use super::device::CudaBackend;
use super::error::CudaError;
use super::gemm::matmul_bf16;
use super::ops;
use super::tensor::DeviceBuffer;
use crate::{KernelError, Matrix, RopeStyle, WeightData};

/// A CPU-reference failure, reported through the check's result.
pub(crate) fn cpu(e: KernelError) -> CudaError {
    CudaError::Shape(format!("CPU reference: {e}"))
}

pub(crate) fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

pub(crate) fn embedding(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let (rows, hidden, start, n) = (1000usize, 576usize, 500u32, 64usize);
    let table = rng.bf16_vec(rows * hidden, -1.0, 1.0);
    let end = start + rows as u32;
    let ids: Vec<u32> = (0..n)
        .map(|i| match i {
            0 => start - 1,
            1 => start,
            2 => end - 1,
            3 => end,
            _ => rng.below(2 * end as usize) as u32,
        })
        .collect();
    // The CPU forward pass's embed_tokens: rows of this rank's slice, zeros elsewhere.
    let m = Matrix::new(rows, hidden, WeightData::BF16(to_bf16(&table))).map_err(cpu)?;
    let mut want = vec![0f32; n * hidden];
    for (t, &id) in ids.iter().enumerate() {
        if (start..end).contains(&id) {
            let row = &mut want[t * hidden..(t + 1) * hidden];
            m.dequantize_row((id - start) as usize, row).map_err(cpu)?;
        }
    }
    let d_table = DeviceBuffer::from_f32(b, &table)?;
    let d_ids = DeviceBuffer::from_slice(b, &ids)?;
    let mut out = DeviceBuffer::filled(b, n * hidden, bf16::NAN)?;
    ops::embedding(b, &d_table, hidden, &d_ids, start, &mut out)?;
    let detail = format!("table [{rows}x{hidden}] from token {start}, {n} ids");
    Ok(compare("embedding", &out.to_f32(b)?, &want, detail))
}

/// The vectorized path (d a multiple of 8) and the scalar one.
pub(crate) fn rms_norm(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let vectorized = rms_norm_case(b, rng, 17, 2880)?;
    let scalar = rms_norm_case(b, rng, 5, 1001)?;
    Ok(super::check::merge("rms_norm", vectorized, scalar))
}

fn rms_norm_case(
    b: &CudaBackend,
    rng: &mut Rng,
    rows: usize,
    d: usize,
) -> Result<CheckResult, CudaError> {
    let eps = 1e-5f32;
    let x = rng.bf16_vec(rows * d, -2.0, 2.0);
    let w = rng.bf16_vec(d, 0.5, 1.5);
    let mut want = vec![0f32; rows * d];
    crate::rms_norm(&x, &w, eps, &mut want).map_err(cpu)?;
    let (dx, dw) = (
        DeviceBuffer::from_f32(b, &x)?,
        DeviceBuffer::from_f32(b, &w)?,
    );
    let mut out = DeviceBuffer::filled(b, rows * d, bf16::NAN)?;
    ops::rms_norm(b, &dx, &dw, eps, &mut out)?;
    Ok(compare(
        "rms_norm",
        &out.to_f32(b)?,
        &want,
        format!("[{rows}x{d}]"),
    ))
}

pub(crate) fn add_rms_norm(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let (rows, d, eps) = (9usize, 4096usize, 1e-6f32);
    let x = rng.bf16_vec(rows * d, -1.0, 1.0);
    let res = rng.bf16_vec(rows * d, -3.0, 3.0);
    let w = rng.bf16_vec(d, 0.5, 1.5);
    let mut want_res = res.clone();
    crate::add_inplace(&mut want_res, &x).map_err(cpu)?;
    let mut want = vec![0f32; rows * d];
    crate::rms_norm(&want_res, &w, eps, &mut want).map_err(cpu)?;
    let (dx, dw) = (
        DeviceBuffer::from_f32(b, &x)?,
        DeviceBuffer::from_f32(b, &w)?,
    );
    let mut dres = DeviceBuffer::from_f32(b, &res)?;
    let mut out = DeviceBuffer::filled(b, rows * d, bf16::NAN)?;
    ops::add_rms_norm(b, &dx, &mut dres, &dw, eps, &mut out)?;
    let o = compare(
        "add_rms_norm",
        &out.to_f32(b)?,
        &want,
        format!("out [{rows}x{d}]"),
    );
    let r = compare(
        "add_rms_norm",
        &dres.to_f32(b)?,
        &want_res,
        "residual".into(),
    );
    Ok(merge("add_rms_norm", o, r))
}

fn rope_check(b: &CudaBackend, rng: &mut Rng, style: RopeStyle) -> Result<CheckResult, CudaError> {
    let (n, heads, hd) = (37usize, 8usize, 128usize);
    let name = match style {
        RopeStyle::Half => "rope_half",
        RopeStyle::Interleaved => "rope_interleaved",
    };
    let mut x = rng.bf16_vec(n * heads * hd, -1.0, 1.0);
    let positions: Vec<u32> = (0..n)
        .map(|t| if t == 0 { 0 } else { rng.below(131_072) as u32 })
        .collect();
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| (1.0 / 500_000f64.powf(2.0 * i as f64 / hd as f64)) as f32)
        .collect();
    let mut dx = DeviceBuffer::from_f32(b, &x)?;
    let dpos = DeviceBuffer::from_slice(b, &positions)?;
    let dinv = DeviceBuffer::from_slice(b, &inv_freq)?;
    crate::rope(&mut x, n, heads, hd, &positions, &inv_freq, style).map_err(cpu)?;
    ops::rope(b, &mut dx, heads, hd, &dpos, &dinv, style)?;
    let detail = format!("[{n}x{heads}x{hd}] positions < 131072, theta 5e5 (in place)");
    Ok(compare(name, &dx.to_f32(b)?, &x, detail))
}

/// The fused split + rotary against the split and the CPU rotary of Q and K.
pub(crate) fn qkv_rope(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let (n, heads, kvh, hd) = (13usize, 12usize, 4usize, 64usize);
    let (qw, kvw) = (heads * hd, kvh * hd);
    let qkv = rng.bf16_vec(n * (qw + 2 * kvw), -1.0, 1.0);
    let positions: Vec<u32> = (0..n).map(|_| rng.below(131_072) as u32).collect();
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| (1.0 / 10_000f64.powf(2.0 * i as f64 / hd as f64)) as f32)
        .collect();
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for row in qkv.chunks_exact(qw + 2 * kvw) {
        q.extend_from_slice(&row[..qw]);
        k.extend_from_slice(&row[qw..qw + kvw]);
        v.extend_from_slice(&row[qw + kvw..]);
    }
    let style = RopeStyle::Half;
    crate::rope(&mut q, n, heads, hd, &positions, &inv_freq, style).map_err(cpu)?;
    crate::rope(&mut k, n, kvh, hd, &positions, &inv_freq, style).map_err(cpu)?;
    let dqkv = DeviceBuffer::from_f32(b, &qkv)?;
    let dpos = DeviceBuffer::from_slice(b, &positions)?;
    let dinv = DeviceBuffer::from_slice(b, &inv_freq)?;
    let mut dq = DeviceBuffer::filled(b, q.len(), bf16::NAN)?;
    let mut dk = DeviceBuffer::filled(b, k.len(), bf16::NAN)?;
    let mut dv = DeviceBuffer::filled(b, v.len(), bf16::NAN)?;
    let shape = crate::cuda::ops_fused::QkvShape {
        n_heads: heads,
        kv_heads: kvh,
        head_dim: hd,
    };
    crate::cuda::ops_fused::qkv_rope(
        b,
        &dqkv,
        shape,
        (&dpos, &dinv, style),
        (&mut dq, &mut dk, &mut dv),
    )?;
    let detail = format!("[{n}x({heads}+2x{kvh})x{hd}]");
    let rq = compare("qkv_rope", &dq.to_f32(b)?, &q, format!("q {detail}"));
    let rk = compare("qkv_rope", &dk.to_f32(b)?, &k, "k".into());
    let rv = compare("qkv_rope", &dv.to_f32(b)?, &v, "v".into());
    Ok(super::check::merge(
        "qkv_rope",
        super::check::merge("qkv_rope", rq, rk),
        rv,
    ))
}

/// The device's seeded fill against the same counter-based generator on the host.
pub(crate) fn fill_random(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let (n, key, scale, offset) = (100_003usize, rng.below(1 << 30) as u64, 0.02f32, 0.5f32);
    let want: Vec<f32> = (0..n as u64)
        .map(|i| {
            let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let u = (z >> 40) as f32 * (1.0 / 8_388_608.0) - 1.0;
            bf16::from_f32(offset + scale * u).to_f32()
        })
        .collect();
    let mut out = DeviceBuffer::filled(b, n, bf16::NAN)?;
    crate::cuda::ops_fused::fill_random(b, &mut out, key, scale, offset)?;
    Ok(compare(
        "fill_random",
        &out.to_f32(b)?,
        &want,
        format!("{n} values, key {key}"),
    ))
}

pub(crate) fn rope_half(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    rope_check(b, rng, RopeStyle::Half)
}

pub(crate) fn rope_interleaved(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    rope_check(b, rng, RopeStyle::Interleaved)
}

pub(crate) fn silu_mul(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    // Odd: the scalar path (the fused check below takes the bf16-pair path).
    let n = 9 * 11008 + 1;
    let mut gate = rng.bf16_vec(n, -6.0, 6.0);
    let up = rng.bf16_vec(n, -2.0, 2.0);
    let (dg, du) = (
        DeviceBuffer::from_f32(b, &gate)?,
        DeviceBuffer::from_f32(b, &up)?,
    );
    let mut out = DeviceBuffer::filled(b, n, bf16::NAN)?;
    ops::silu_mul(b, &dg, &du, &mut out)?;
    crate::silu_mul(&mut gate, &up).map_err(cpu)?;
    Ok(compare(
        "silu_mul",
        &out.to_f32(b)?,
        &gate,
        format!("{n} elements"),
    ))
}

pub(crate) fn silu_mul_fused(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let (rows, d) = (7usize, 4864usize);
    let gate_up = rng.bf16_vec(rows * 2 * d, -6.0, 6.0);
    let mut gate: Vec<f32> = Vec::with_capacity(rows * d);
    let mut up: Vec<f32> = Vec::with_capacity(rows * d);
    for row in gate_up.chunks_exact(2 * d) {
        gate.extend_from_slice(&row[..d]);
        up.extend_from_slice(&row[d..]);
    }
    let dgu = DeviceBuffer::from_f32(b, &gate_up)?;
    let mut out = DeviceBuffer::filled(b, rows * d, bf16::NAN)?;
    ops::silu_mul_fused(b, &dgu, d, &mut out)?;
    crate::silu_mul(&mut gate, &up).map_err(cpu)?;
    Ok(compare(
        "silu_mul_fused",
        &out.to_f32(b)?,
        &gate,
        format!("gate_up [{rows}x{}]", 2 * d),
    ))
}

fn matmul_check<O: super::gemm::GemmOut>(
    b: &CudaBackend,
    rng: &mut Rng,
    name: &str,
    (m, n, k): (usize, usize, usize),
    poison: O,
    widen: fn(&[O]) -> Vec<f32>,
) -> Result<CheckResult, CudaError> {
    let a = rng.bf16_vec(m * k, -1.0, 1.0);
    let w = rng.bf16_vec(n * k, -1.0, 1.0);
    let wm = Matrix::new(n, k, WeightData::BF16(to_bf16(&w))).map_err(cpu)?;
    let mut want = vec![0f32; m * n];
    crate::matmul(&wm, &a, m, &mut want).map_err(cpu)?;
    let (da, dw) = (
        DeviceBuffer::from_f32(b, &a)?,
        DeviceBuffer::from_f32(b, &w)?,
    );
    let mut out = DeviceBuffer::filled(b, m * n, poison)?;
    matmul_bf16(b, &da, &dw, m, n, k, &mut out)?;
    let got = widen(&out.to_vec(b)?);
    Ok(compare(
        name,
        &got,
        &want,
        format!("[{m}x{k}] x [{n}x{k}]^T"),
    ))
}

pub(crate) fn matmul_bf16_out(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let widen = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect();
    matmul_check(b, rng, "matmul_bf16", (37, 1000, 576), bf16::NAN, widen)
}

pub(crate) fn matmul_f32_out(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    let widen = |v: &[f32]| v.to_vec();
    matmul_check(
        b,
        rng,
        "matmul_bf16_f32_out",
        (1, 4096, 4096),
        f32::NAN,
        widen,
    )
}

/// Logits rows exercising the sampler's rules: ties at the top, NaN, -inf, a row of NaN.
fn logits(rng: &mut Rng, rows: usize, vocab: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..rows * vocab)
        .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 160.0).round() / 8.0 - 10.0)
        .collect();
    if rows >= 4 {
        x[vocab + 3] = f32::NAN;
        x[vocab + 17] = f32::NEG_INFINITY;
        x[2 * vocab + 7] = 30.0;
        x[2 * vocab + 3000] = 30.0;
        x[3 * vocab..4 * vocab].fill(f32::NAN);
    }
    x
}

/// The CPU sampler's ranking and log-softmax (NaN left out, ties by lower id, f64 sum).
fn cpu_topk(row: &[f32], k: usize, pad: u32) -> (Vec<u32>, Vec<f32>) {
    let mut c: Vec<(f32, u32)> = row
        .iter()
        .zip(0u32..)
        .filter(|(v, _)| !v.is_nan())
        .map(|(&v, i)| (v, i))
        .collect();
    c.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
    let max = f64::from(row.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    let sum: f64 = row
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| (f64::from(v) - max).exp())
        .sum();
    let lp = |v: f32| {
        if max == f64::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            (f64::from(v) - max - sum.ln()) as f32
        }
    };
    (0..k)
        .map(|j| {
            c.get(j)
                .map_or((pad, f32::NEG_INFINITY), |&(v, i)| (i, lp(v)))
        })
        .unzip()
}

fn sampling_check(
    b: &CudaBackend,
    rng: &mut Rng,
    name: &str,
    k: usize,
) -> Result<CheckResult, CudaError> {
    let (rows, vocab) = (4usize, 50_000usize);
    let x = logits(rng, rows, vocab);
    let pad = if k == 1 { 0 } else { ops::TOPK_NONE };
    let (mut want_ids, mut want_lp) = (Vec::new(), Vec::new());
    for row in x.chunks_exact(vocab) {
        let (i, l) = cpu_topk(row, k, pad);
        want_ids.extend(i);
        want_lp.extend(l);
    }
    let dx = DeviceBuffer::from_slice(b, &x)?;
    let mut ids = DeviceBuffer::filled(b, rows * k, 0xDEAD_BEEFu32)?;
    let mut lp = DeviceBuffer::filled(b, rows * k, f32::NAN)?;
    if k == 1 {
        ops::argmax_logprob(b, &dx, vocab, &mut ids, &mut lp)?;
    } else {
        ops::topk_logprobs(b, &dx, vocab, k, &mut ids, &mut lp)?;
    }
    let got_ids = ids.to_vec(b)?;
    let bad = got_ids
        .iter()
        .zip(&want_ids)
        .filter(|(g, w)| g != w)
        .count();
    let mut r = compare(
        name,
        &lp.to_vec(b)?,
        &want_lp,
        format!("[{rows}x{vocab}] k {k}"),
    );
    if bad > 0 {
        r.passed = false;
        r.has_nan |= got_ids.contains(&0xDEAD_BEEF);
        r.detail = format!("{} ids differ from the CPU ranking; {}", bad, r.detail);
    }
    Ok(r)
}

pub(crate) fn argmax(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    sampling_check(b, rng, "argmax_logprob", 1)
}

pub(crate) fn topk(b: &CudaBackend, rng: &mut Rng) -> Result<CheckResult, CudaError> {
    sampling_check(b, rng, "topk_logprobs", ops::TOPK_MAX)
}

#[cfg(test)]
mod tests {
    use super::{cpu_topk, logits, Rng};

    #[test]
    fn cpu_topk_ranks_like_the_sampler() {
        let row = [1.0f32, f32::NAN, 3.0, 3.0, f32::NEG_INFINITY, -1.0];
        let (ids, lp) = cpu_topk(&row, 6, u32::MAX);
        assert_eq!(ids, [2, 3, 0, 5, 4, u32::MAX]);
        let sum: f64 = [1.0f64, 3.0, 3.0, -1.0]
            .iter()
            .map(|v| (v - 3.0).exp())
            .sum();
        assert!((f64::from(lp[0]) + sum.ln()).abs() < 1e-6);
        assert_eq!((lp[4], lp[5]), (f32::NEG_INFINITY, f32::NEG_INFINITY));
        let (ids, lp) = cpu_topk(&[f32::NAN; 3], 1, 0);
        assert_eq!((ids[0], lp[0]), (0, f32::NEG_INFINITY));
    }

    #[test]
    fn check_logits_have_ties_nan_and_a_nan_row() {
        let x = logits(&mut Rng::new(1), 4, 5000);
        assert!(x[5000 + 3].is_nan() && x[2 * 5000 + 7] == x[2 * 5000 + 3000]);
        assert!(x[3 * 5000..].iter().all(|v| v.is_nan()));
        assert!(x[..5000].iter().all(|v| v.is_finite()));
    }
}
