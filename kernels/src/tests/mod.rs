//! Tests against naive float64 references on seeded random inputs.

mod attention;
mod device;
mod invariance;
mod matmul;
mod matrix;
mod ops;
mod paged;
mod reference;
mod rope;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub(crate) fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Asserts `|got[i] - want[i]| <= tol[i]` for all `i`, with a readable failure.
#[track_caller]
pub(crate) fn assert_close(what: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &t)) in got.iter().zip(want).zip(tol).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= t,
            "{what}: element {i}: got {g}, want {w}, |err| {err:e} > tol {t:e}"
        );
    }
}

/// Same absolute tolerance for every element.
#[track_caller]
pub(crate) fn assert_close_abs(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_close(what, got, want, &vec![tol; want.len()]);
}
