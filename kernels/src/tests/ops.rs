use super::{assert_close_abs, rng, uniform};
use crate::{add_inplace, rms_norm, silu_mul, softmax_inplace, KernelError};

fn ref_rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    let d = w.len();
    x.chunks(d)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / d as f64;
            let s = 1.0 / (ms + f64::from(eps)).sqrt();
            row.iter()
                .zip(w)
                .map(move |(&v, &wv)| f64::from(v) * s * f64::from(wv))
        })
        .collect()
}

#[test]
fn rms_norm_matches_f64_reference() {
    let mut r = rng(1);
    for (n, d) in [(1, 576), (3, 64), (70, 96), (2, 1)] {
        let x = uniform(&mut r, n * d, -3.0, 3.0);
        let w = uniform(&mut r, d, 0.5, 1.5);
        let mut out = vec![0f32; n * d];
        rms_norm(&x, &w, 1e-5, &mut out).expect("rms_norm");
        // Output magnitude is O(few); f32 rounding of two products.
        assert_close_abs(
            &format!("rms_norm {n}x{d}"),
            &out,
            &ref_rms_norm(&x, &w, 1e-5),
            1e-5,
        );
    }
    // A zero row stays finite thanks to eps.
    let mut out = [1f32; 4];
    rms_norm(&[0.0; 4], &[1.0; 4], 1e-6, &mut out).expect("zeros");
    assert_eq!(out, [0.0; 4]);
}

#[test]
fn rms_norm_rejects_bad_shapes() {
    let mut out = vec![0f32; 6];
    assert!(matches!(
        rms_norm(&[1.0; 6], &[1.0; 4], 1e-5, &mut out),
        Err(KernelError::BadLength { .. })
    ));
    assert!(matches!(
        rms_norm(&[1.0; 8], &[1.0; 4], 1e-5, &mut out),
        Err(KernelError::ShapeMismatch { what: "out", .. })
    ));
    assert!(rms_norm(&[], &[], 1e-5, &mut []).is_err());
}

#[test]
fn add_inplace_adds_and_checks_length() {
    let mut r = rng(2);
    let mut a = uniform(&mut r, 100, -1.0, 1.0);
    let b = uniform(&mut r, 100, -1.0, 1.0);
    let want: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| f64::from(x) + f64::from(y))
        .collect();
    add_inplace(&mut a, &b).expect("add");
    assert_close_abs("add_inplace", &a, &want, 1e-6);
    assert!(matches!(
        add_inplace(&mut a, &b[..99]),
        Err(KernelError::ShapeMismatch { .. })
    ));
}

#[test]
fn silu_mul_matches_f64_reference() {
    let mut r = rng(3);
    let mut gate = uniform(&mut r, 257, -12.0, 12.0);
    gate.extend([-100.0, 100.0, 0.0, -1e4, 1e4]);
    let up = uniform(&mut r, gate.len(), -2.0, 2.0);
    let want: Vec<f64> = gate
        .iter()
        .zip(&up)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            g / (1.0 + (-g).exp()) * f64::from(u)
        })
        .collect();
    let tol: Vec<f64> = want.iter().map(|w| 1e-6 * w.abs().max(1.0)).collect();
    silu_mul(&mut gate, &up).expect("silu_mul");
    assert!(gate.iter().all(|v| v.is_finite()));
    super::assert_close("silu_mul", &gate, &want, &tol);
    assert!(silu_mul(&mut gate, &up[1..]).is_err());
}

#[test]
fn softmax_is_stable_and_matches_f64() {
    let mut r = rng(4);
    for (n, scale) in [(1, 1.0), (10, 1.0), (333, 30.0)] {
        let mut x = uniform(&mut r, n, -scale, scale);
        let max = x.iter().copied().fold(f64::MIN, |m, v| m.max(f64::from(v)));
        let e: Vec<f64> = x.iter().map(|&v| (f64::from(v) - max).exp()).collect();
        let s: f64 = e.iter().sum();
        let want: Vec<f64> = e.iter().map(|v| v / s).collect();
        softmax_inplace(&mut x);
        assert_close_abs(&format!("softmax {n}"), &x, &want, 1e-6);
    }
    // Huge logits do not overflow.
    let mut x = [1000.0f32, 1001.0, f32::NEG_INFINITY];
    softmax_inplace(&mut x);
    let e = (-1f64).exp();
    assert_close_abs(
        "softmax large",
        &x,
        &[e / (1.0 + e), 1.0 / (1.0 + e), 0.0],
        1e-6,
    );
    let mut all_masked = [f32::NEG_INFINITY; 4];
    softmax_inplace(&mut all_masked);
    assert_eq!(all_masked, [0.25; 4]);
    softmax_inplace(&mut []);
}
