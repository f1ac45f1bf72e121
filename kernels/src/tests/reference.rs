//! Independent test-side encoders and decoders of the weight formats: the GGML layouts
//! are written again here from the spec, without calling the crate's dequantization.

use half::{bf16, f16};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::DType;

/// Random little-endian weight bytes of `rows x cols` in `dtype`.
pub(crate) fn random_bytes(
    rng: &mut ChaCha8Rng,
    dtype: DType,
    rows: usize,
    cols: usize,
) -> Vec<u8> {
    let n = rows * cols;
    let mut out = Vec::new();
    match dtype {
        DType::F32 => (0..n).for_each(|_| out.extend(rng.random_range(-1f32..1.0).to_le_bytes())),
        DType::F16 => (0..n)
            .for_each(|_| out.extend(f16::from_f32(rng.random_range(-1f32..1.0)).to_le_bytes())),
        DType::BF16 => (0..n)
            .for_each(|_| out.extend(bf16::from_f32(rng.random_range(-1f32..1.0)).to_le_bytes())),
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => {
            for _ in 0..n / 32 {
                let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                let d = f16::from_f32(sign * rng.random_range(0.002f32..0.05));
                out.extend(d.to_le_bytes());
                if dtype == DType::Q4_1 {
                    out.extend(f16::from_f32(rng.random_range(-0.2f32..0.2)).to_le_bytes());
                }
                let qs_len = if dtype == DType::Q8_0 { 32 } else { 16 };
                out.extend((0..qs_len).map(|_| rng.random::<u8>()));
            }
        }
    }
    out
}

fn f16_at(b: &[u8], i: usize) -> f64 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f64()
}

/// ggml nibble `j` of a 16-byte `qs`.
fn nib(qs: &[u8], j: usize) -> f64 {
    f64::from(if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    })
}

/// Decodes weight bytes to f64 with the formulas of the spec.
pub(crate) fn decode(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DType::F16 => bytes.chunks_exact(2).map(|c| f16_at(c, 0)).collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| {
                f64::from(f32::from_bits(
                    u32::from(u16::from_le_bytes([c[0], c[1]])) << 16,
                ))
            })
            .collect(),
        DType::Q8_0 => bytes
            .chunks_exact(34)
            .flat_map(|b| (0..32).map(move |j| f64::from(b[2 + j] as i8) * f16_at(b, 0)))
            .collect(),
        DType::Q4_0 => bytes
            .chunks_exact(18)
            .flat_map(|b| (0..32).map(move |j| (nib(&b[2..], j) - 8.0) * f16_at(b, 0)))
            .collect(),
        DType::Q4_1 => bytes
            .chunks_exact(20)
            .flat_map(|b| (0..32).map(move |j| nib(&b[4..], j) * f16_at(b, 0) + f16_at(b, 2)))
            .collect(),
    }
}

/// `out[i*rows + r] = sum_c w[r*cols + c] * x[i*cols + c]` in f64, and the matching
/// `sum_c |w| |x|` (the natural scale of the rounding error).
pub(crate) fn matmul(w: &[f64], x: &[f32], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / cols;
    let mut out = vec![0f64; n * rows];
    let mut abs = vec![0f64; n * rows];
    for i in 0..n {
        for r in 0..rows {
            for c in 0..cols {
                let p = w[r * cols + c] * f64::from(x[i * cols + c]);
                out[i * rows + r] += p;
                abs[i * rows + r] += p.abs();
            }
        }
    }
    (out, abs)
}
