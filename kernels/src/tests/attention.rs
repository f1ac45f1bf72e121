use super::{assert_close_abs, rng, uniform};
use crate::attention::attention_with;
use crate::isa::Isa;
use crate::{attention, AttentionShape, KernelError};

pub(super) fn ref_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttentionShape,
    n_tokens: usize,
    start: usize,
) -> Vec<f64> {
    let hd = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let kv_row = |p: usize, g: usize| (p * s.n_kv_heads + g) * hd;
    let mut out = vec![0f64; n_tokens * s.n_heads * hd];
    for t in 0..n_tokens {
        for h in 0..s.n_heads {
            let qo = (t * s.n_heads + h) * hd;
            let g = h / group;
            let len = start + t + 1;
            let scores: Vec<f64> = (0..len)
                .map(|p| {
                    let dot: f64 = (0..hd)
                        .map(|d| f64::from(q[qo + d]) * f64::from(k[kv_row(p, g) + d]))
                        .sum();
                    dot / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (p, ep) in e.iter().enumerate() {
                for d in 0..hd {
                    out[qo + d] += ep / sum * f64::from(v[kv_row(p, g) + d]);
                }
            }
        }
    }
    out
}

struct Case {
    shape: AttentionShape,
    n_tokens: usize,
    start: usize,
    extra: usize,
}

fn run_case(c: &Case, seed: u64) {
    let s = c.shape;
    let kv_len = c.start + c.n_tokens + c.extra;
    let mut r = rng(seed);
    let q = uniform(&mut r, c.n_tokens * s.n_heads * s.head_dim, -1.0, 1.0);
    let mut k = uniform(&mut r, kv_len * s.n_kv_heads * s.head_dim, -1.0, 1.0);
    let mut v = uniform(&mut r, k.len(), -1.0, 1.0);
    let want = ref_attention(&q, &k, &v, s, c.n_tokens, c.start);
    let ctx = format!("{s:?} n={} start={}", c.n_tokens, c.start);
    for isa in Isa::available() {
        let mut out = vec![f32::NAN; q.len()];
        attention_with(isa, &q, &k, &v, s, c.n_tokens, c.start, &mut out).expect("attention");
        assert_close_abs(&format!("{ctx} {isa:?}"), &out, &want, 2e-6);
        // Causality: cache slots past the last new token never matter...
        let mut k2 = k.clone();
        let mut v2 = v.clone();
        let row = s.n_kv_heads * s.head_dim;
        let first_future = c.start + c.n_tokens;
        k2[first_future * row..].iter_mut().for_each(|x| *x = 9.0);
        v2[first_future * row..].iter_mut().for_each(|x| *x = -9.0);
        // ...and the last token's key/value only matter to the last query.
        let last = first_future - 1;
        k2[last * row..(last + 1) * row]
            .iter_mut()
            .for_each(|x| *x += 3.0);
        v2[last * row..(last + 1) * row]
            .iter_mut()
            .for_each(|x| *x -= 5.0);
        let mut out2 = vec![f32::NAN; q.len()];
        attention_with(isa, &q, &k2, &v2, s, c.n_tokens, c.start, &mut out2).expect("attention");
        let tok = s.n_heads * s.head_dim;
        let split = (c.n_tokens - 1) * tok;
        assert_eq!(out[..split], out2[..split], "{ctx}: a future key leaked");
        assert_ne!(
            out[split..],
            out2[split..],
            "{ctx}: the last key must be attended"
        );
    }
    k.clear();
    v.clear();
}

#[test]
fn attention_gqa_and_mha_match_f64_reference() {
    let shapes = [
        AttentionShape {
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 64,
        },
        AttentionShape {
            n_heads: 4,
            n_kv_heads: 4,
            head_dim: 32,
        },
        AttentionShape {
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
        },
        AttentionShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 6,
        },
    ];
    let mut seed = 0;
    for shape in shapes {
        for (n_tokens, start, extra) in [(1, 0, 0), (1, 9, 3), (5, 0, 2), (5, 17, 0), (3, 40, 5)] {
            seed += 1;
            run_case(
                &Case {
                    shape,
                    n_tokens,
                    start,
                    extra,
                },
                seed,
            );
        }
    }
}

#[test]
fn attention_public_entry_and_errors() {
    let s = AttentionShape {
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let q = vec![0.1f32; 2 * 6 * 8];
    let kv = vec![0.2f32; 3 * 2 * 8];
    let mut out = vec![0f32; q.len()];
    attention(&q, &kv, &kv, s, 2, 1, &mut out).expect("valid");
    assert!(out.iter().all(|&x| (x - 0.2).abs() < 1e-6));
    let bad = AttentionShape { n_kv_heads: 4, ..s };
    let err = attention(&q, &kv, &kv, bad, 2, 1, &mut out).expect_err("6 % 4");
    assert!(matches!(err, KernelError::InvalidArgument { .. }), "{err}");
    let err = attention(&q, &kv, &kv, s, 2, 2, &mut out).expect_err("cache too short");
    assert!(err.to_string().contains("kv cache"), "{err}");
    let err = attention(&q, &kv[1..], &kv[1..], s, 2, 0, &mut out).expect_err("ragged k");
    assert!(matches!(err, KernelError::BadLength { .. }), "{err}");
    let err = attention(&q, &kv, &kv[..32], s, 2, 0, &mut out).expect_err("v != k");
    assert!(
        matches!(err, KernelError::ShapeMismatch { what: "v", .. }),
        "{err}"
    );
    let err = attention(&q[1..], &kv, &kv, s, 2, 0, &mut out).expect_err("q");
    assert!(
        matches!(err, KernelError::ShapeMismatch { what: "q", .. }),
        "{err}"
    );
    let zero = AttentionShape { head_dim: 0, ..s };
    assert!(attention(&[], &[], &[], zero, 0, 0, &mut []).is_err());
}
