//! RMS norm and the element-wise kernels.

use rayon::prelude::*;

use crate::error::check_len;
use crate::KernelError;

/// Row count from which `rms_norm` splits rows across threads.
const PAR_ROWS: usize = 64;

/// Each row of `x` (`n x d`, `d = weight.len()`):
/// `out = x / sqrt(mean(x^2) + eps) * weight`, with the mean accumulated in f64.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    let d = weight.len();
    if d == 0 {
        return Err(KernelError::invalid("rms_norm", "weight is empty"));
    }
    if !x.len().is_multiple_of(d) {
        return Err(KernelError::BadLength {
            op: "rms_norm",
            what: "x",
            got: x.len(),
            multiple: d,
        });
    }
    check_len("rms_norm", "out", x.len(), out.len())?;
    let norm_row = |(xr, or): (&[f32], &mut [f32])| {
        let ss: f64 = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let scale = 1.0 / (ss / d as f64 + f64::from(eps)).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = (f64::from(v) * scale) as f32 * w;
        }
    };
    if x.len() / d >= PAR_ROWS {
        x.par_chunks(d)
            .zip(out.par_chunks_mut(d))
            .for_each(norm_row);
    } else {
        x.chunks(d).zip(out.chunks_mut(d)).for_each(norm_row);
    }
    Ok(())
}

/// `a[i] += b[i]`.
pub fn add_inplace(a: &mut [f32], b: &[f32]) -> Result<(), KernelError> {
    check_len("add_inplace", "b", a.len(), b.len())?;
    for (a, &b) in a.iter_mut().zip(b) {
        *a += b;
    }
    Ok(())
}

/// `gate[i] = silu(gate[i]) * up[i]` with `silu(x) = x / (1 + exp(-x))`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
    check_len("silu_mul", "up", gate.len(), up.len())?;
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
    Ok(())
}

/// Numerically stable in-place softmax (the maximum is subtracted before `exp`).
/// An empty slice is left alone; if every entry is `-inf` the result is uniform.
pub fn softmax_inplace(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        let u = 1.0 / x.len() as f32;
        x.fill(u);
        return;
    }
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}
