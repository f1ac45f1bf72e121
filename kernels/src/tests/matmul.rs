use super::reference::{decode, matmul as ref_matmul, random_bytes};
use super::{assert_close, rng, uniform};
use crate::isa::Isa;
use crate::matmul::{self as mm, matmul_with};
use crate::{f16, matmul, DType, KernelError, Matrix};

/// Relative tolerance against `sum |w||x|` for f32 accumulation.
const RTOL: f64 = 1e-5;

fn check_matmul(dtype: DType, rows: usize, cols: usize, n: usize, seed: u64) {
    let mut r = rng(seed);
    let bytes = random_bytes(&mut r, dtype, rows, cols);
    let w_ref = decode(dtype, &bytes);
    let w = Matrix::from_bytes(dtype, rows, cols, &bytes).expect("valid matrix");
    let x = uniform(&mut r, n * cols, -1.0, 1.0);
    let (want, abs) = ref_matmul(&w_ref, &x, rows, cols);
    let tol: Vec<f64> = abs.iter().map(|a| RTOL * a + 1e-7).collect();
    for isa in Isa::available() {
        let mut out = vec![f32::NAN; n * rows];
        matmul_with(isa, &w, &x, n, &mut out).expect("matmul");
        let what = format!("{dtype} {rows}x{cols} n={n} {isa:?}");
        assert_close(&what, &out, &want, &tol);
    }
}

#[test]
fn matmul_all_dtypes_match_f64_reference() {
    let shapes = [
        (3, 64),
        (100, 576),
        (1, 32),
        (37, 96),
        (300, 128),
        (17, 1536),
    ];
    for (di, dtype) in DType::ALL.into_iter().enumerate() {
        for (si, &(rows, cols)) in shapes.iter().enumerate() {
            for n in [1, 2, 7] {
                check_matmul(dtype, rows, cols, n, (di * 100 + si * 10 + n) as u64);
            }
        }
    }
}

#[test]
fn matmul_float_types_with_odd_cols() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (rows, cols) in [(5, 1), (3, 13), (100, 67), (9, 45), (64, 1000)] {
            for n in [1, 3] {
                check_matmul(dtype, rows, cols, n, (rows * cols + n) as u64);
            }
        }
    }
}

#[test]
fn matmul_public_entry_point_matches() {
    let mut r = rng(7);
    let bytes = random_bytes(&mut r, DType::Q4_1, 50, 64);
    let w = Matrix::from_bytes(DType::Q4_1, 50, 64, &bytes).expect("valid");
    let x = uniform(&mut r, 64 * 2, -1.0, 1.0);
    let (want, abs) = ref_matmul(&decode(DType::Q4_1, &bytes), &x, 50, 64);
    let mut out = vec![0f32; 100];
    matmul(&w, &x, 2, &mut out).expect("matmul");
    let tol: Vec<f64> = abs.iter().map(|a| RTOL * a + 1e-7).collect();
    assert_close("public matmul", &out, &want, &tol);
}

#[test]
fn matmul_rejects_bad_shapes() {
    let w = Matrix::from_f32(4, 8, vec![0.5; 32]).expect("valid");
    let mut out = vec![0f32; 8];
    let err = matmul(&w, &[1.0; 15], 2, &mut out).expect_err("short x");
    assert!(matches!(
        err,
        KernelError::ShapeMismatch {
            what: "x",
            expected: 16,
            got: 15,
            ..
        }
    ));
    let err = matmul(&w, &[1.0; 16], 2, &mut out[..7]).expect_err("short out");
    assert!(matches!(
        err,
        KernelError::ShapeMismatch { what: "out", .. }
    ));
    assert!(err.to_string().contains("out"), "readable message: {err}");
    // n = 0 is a valid no-op.
    matmul(&w, &[], 0, &mut []).expect("empty batch");
}

#[test]
fn simd_path_is_exercised_when_available() {
    #[cfg(target_arch = "x86_64")]
    {
        let has = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        assert_eq!(Isa::available().contains(&Isa::Avx2), has);
        if !has {
            eprintln!("note: this CPU lacks AVX2/FMA/F16C; only the portable path is tested");
        }
    }
    assert!(Isa::available().contains(&Isa::Scalar));
    assert!(!crate::cpu_isa().is_empty());
}

/// Each dispatched kernel agrees with f64 on every length 0..=80 (SIMD tails included).
#[test]
fn float_dot_and_axpy_kernels_all_lengths() {
    let mut r = rng(99);
    for len in 0..=80 {
        let a = uniform(&mut r, len, -1.0, 1.0);
        let b = uniform(&mut r, len, -1.0, 1.0);
        let h: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
        let bh: Vec<half::bf16> = a.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let dot =
            |w: &dyn Fn(usize) -> f64| -> f64 { (0..len).map(|i| w(i) * f64::from(b[i])).sum() };
        let want_f32 = dot(&|i| f64::from(a[i]));
        let want_f16 = dot(&|i| h[i].to_f64());
        let want_bf16 = dot(&|i| bh[i].to_f64());
        let tol = 1e-5 * len as f64 + 1e-7;
        for isa in Isa::available() {
            let ctx = format!("len {len} {isa:?}");
            assert!(
                (f64::from(mm::dot_f32(isa, &a, &b)) - want_f32).abs() <= tol,
                "f32 {ctx}"
            );
            assert!(
                (f64::from(mm::dot_f16(isa, &h, &b)) - want_f16).abs() <= tol,
                "f16 {ctx}"
            );
            assert!(
                (f64::from(mm::dot_bf16(isa, &bh, &b)) - want_bf16).abs() <= tol,
                "bf16 {ctx}"
            );
            let mut y = b.clone();
            mm::axpy(isa, 0.75, &a, &mut y);
            let want: Vec<f64> = (0..len)
                .map(|i| f64::from(b[i]) + 0.75 * f64::from(a[i]))
                .collect();
            super::assert_close_abs(&format!("axpy {ctx}"), &y, &want, 1e-6);
        }
    }
}
