use super::{assert_close_abs, rng, uniform};
use crate::{rope, KernelError, RopeStyle};

fn inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64) as f32)
        .collect()
}

/// The pair indices `(a, b)` of pair `i` in a head.
fn pair(style: RopeStyle, i: usize, head_dim: usize) -> (usize, usize) {
    match style {
        RopeStyle::Half => (i, i + head_dim / 2),
        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
    }
}

fn ref_rope(
    x: &[f32],
    n_heads: usize,
    hd: usize,
    pos: &[u32],
    f: &[f32],
    style: RopeStyle,
) -> Vec<f64> {
    let mut out: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..n_heads {
            let base = (t * n_heads + h) * hd;
            for (i, &fi) in f.iter().enumerate() {
                let angle = f64::from(p) * f64::from(fi);
                let (ia, ib) = pair(style, i, hd);
                let (a, b) = (out[base + ia], out[base + ib]);
                out[base + ia] = a * angle.cos() - b * angle.sin();
                out[base + ib] = a * angle.sin() + b * angle.cos();
            }
        }
    }
    out
}

#[test]
fn rope_matches_f64_reference_both_styles() {
    let mut r = rng(11);
    let cases: [(usize, usize, &[u32]); 3] = [
        (3, 64, &[0, 5, 17]),
        (1, 8, &[32767]),
        (2, 32, &[0, 1, 2, 3, 100, 200, 300, 4000, 9, 10, 11, 12]),
    ];
    for style in [RopeStyle::Half, RopeStyle::Interleaved] {
        for &(n_heads, hd, pos) in &cases {
            let f = inv_freq(hd, 10000.0);
            let mut x = uniform(&mut r, pos.len() * n_heads * hd, -1.0, 1.0);
            let want = ref_rope(&x, n_heads, hd, pos, &f, style);
            rope(&mut x, pos.len(), n_heads, hd, pos, &f, style).expect("rope");
            assert_close_abs(&format!("rope {style:?} {n_heads}x{hd}"), &x, &want, 2e-6);
        }
    }
}

/// Interleaved RoPE on a head whose dims are permuted `half[i] -> 2i`,
/// `half[i + hd/2] -> 2i + 1` equals the same permutation of Half RoPE.
#[test]
fn rope_half_and_interleaved_are_related_by_permutation() {
    let (n_tokens, n_heads, hd) = (4, 3, 16);
    let pos = [0u32, 7, 8, 1234];
    let f = inv_freq(hd, 500000.0);
    let x = uniform(&mut rng(12), n_tokens * n_heads * hd, -1.0, 1.0);
    let permute = |v: &[f32]| -> Vec<f32> {
        let mut p = vec![0f32; v.len()];
        for (src, dst) in v.chunks(hd).zip(p.chunks_mut(hd)) {
            for i in 0..hd / 2 {
                dst[2 * i] = src[i];
                dst[2 * i + 1] = src[i + hd / 2];
            }
        }
        p
    };
    let mut half = x.clone();
    rope(&mut half, n_tokens, n_heads, hd, &pos, &f, RopeStyle::Half).expect("half");
    let mut inter = permute(&x);
    rope(
        &mut inter,
        n_tokens,
        n_heads,
        hd,
        &pos,
        &f,
        RopeStyle::Interleaved,
    )
    .expect("inter");
    assert_eq!(permute(&half), inter);
    // Position 0 is the identity.
    let mut y = x[..n_heads * hd].to_vec();
    rope(&mut y, 1, n_heads, hd, &[0], &f, RopeStyle::Half).expect("pos 0");
    assert_eq!(y, x[..n_heads * hd]);
}

#[test]
fn rope_rejects_bad_shapes() {
    let f = inv_freq(8, 10000.0);
    let mut x = vec![0f32; 16];
    let odd = rope(&mut x[..14], 2, 1, 7, &[0, 1], &f[..3], RopeStyle::Half);
    assert!(matches!(odd, Err(KernelError::InvalidArgument { .. })));
    let short_freq = rope(&mut x, 2, 1, 8, &[0, 1], &f[..3], RopeStyle::Half);
    assert!(matches!(
        short_freq,
        Err(KernelError::ShapeMismatch {
            what: "inv_freq",
            ..
        })
    ));
    let bad_pos = rope(&mut x, 2, 1, 8, &[0], &f, RopeStyle::Interleaved);
    assert!(matches!(
        bad_pos,
        Err(KernelError::ShapeMismatch {
            what: "positions",
            ..
        })
    ));
    let bad_x = rope(&mut x, 3, 1, 8, &[0, 1, 2], &f, RopeStyle::Half);
    assert!(matches!(
        bad_x,
        Err(KernelError::ShapeMismatch { what: "x", .. })
    ));
}
