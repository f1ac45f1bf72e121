use super::*;

fn params(temperature: f32, top_k: u32, top_p: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        seed,
        ..SamplingParams::greedy()
    }
}

fn no_history() -> TokenHistory<'static> {
    TokenHistory::default()
}

/// f64 log-softmax of a whole row, the test's own reference.
fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logits.iter().map(|&v| (v - max).exp()).sum();
    logits.iter().map(|&v| v - max - z.ln()).collect()
}

/// Deterministic pseudo-random logits (an LCG, independent of the code
/// under test), quantised so that ties occur.
fn lcg_logits(n: usize, seed: u64, levels: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % levels) as f32 * (8.0 / levels as f32) - 4.0
        })
        .collect()
}

/// Reference filtered distribution: full stable sort, then temperature,
/// top-k, top-p, min-p, renormalised; (token, probability) best first.
fn reference_dist(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f64)> {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| logits[b as usize].partial_cmp(&logits[a as usize]).unwrap());
    if p.top_k > 0 {
        idx.truncate(p.top_k as usize);
    }
    let t = p.temperature as f64;
    let max = logits[idx[0] as usize] as f64;
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i as usize] as f64 - max) / t).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let mut probs: Vec<(u32, f64)> = idx.iter().zip(&w).map(|(&i, &w)| (i, w / z)).collect();
    if p.top_p > 0.0 && p.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|&(_, q)| {
                acc += q;
                acc >= p.top_p as f64
            })
            .map_or(probs.len(), |n| n + 1);
        probs.truncate(keep);
    }
    if p.min_p > 0.0 {
        let pmax = probs[0].1;
        probs.retain(|&(_, q)| q >= p.min_p as f64 * pmax);
    }
    let total: f64 = probs.iter().map(|q| q.1).sum();
    probs.iter().map(|&(i, q)| (i, q / total)).collect()
}

/// Inverse CDF over a reference distribution.
fn reference_pick(dist: &[(u32, f64)], u: f64) -> u32 {
    let mut acc = 0.0;
    for &(tok, q) in dist {
        acc += q;
        if u < acc {
            return tok;
        }
    }
    dist.last().unwrap().0
}

#[test]
fn greedy_picks_argmax_and_lowest_on_tie() {
    let logits = [0.5, 3.0, -1.0, 3.0];
    let s = sample(&logits, &SamplingParams::greedy(), 7);
    assert_eq!(s.token, 1);
    // log-softmax reference in f64
    let z: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
    let want = 3.0f64 - z.ln();
    assert!((s.logprob as f64 - want).abs() < 1e-6);
}

#[test]
fn greedy_tie_created_by_penalty_goes_to_lowest_id() {
    // token 2 at 3.5 loses 0.5 of presence penalty and ties token 1 at 3.0.
    let logits = [1.0, 3.0, 3.5, 0.0];
    let p = SamplingParams {
        presence_penalty: 0.5,
        top_logprobs: 2,
        ..SamplingParams::greedy()
    };
    let out = sample_full(
        &logits,
        &p,
        &TokenHistory {
            prompt: &[],
            output: &[2],
        },
        0,
    );
    assert_eq!(out.token, 1);
    let want = log_softmax(&[1.0, 3.0, 3.0, 0.0]);
    assert!((out.logprob as f64 - want[1]).abs() < 1e-6);
    assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn same_seed_and_position_give_same_token() {
    let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
    let p = params(1.0, 0, 1.0, 42);
    let a: Vec<u32> = (0..50).map(|pos| sample(&logits, &p, pos).token).collect();
    let b: Vec<u32> = (0..50).map(|pos| sample(&logits, &p, pos).token).collect();
    assert_eq!(a, b);
    // positions differ, so draws differ somewhere
    assert!(a.iter().any(|&t| t != a[0]));
    let other: Vec<u32> = (0..50)
        .map(|pos| sample(&logits, &params(1.0, 0, 1.0, 43), pos).token)
        .collect();
    assert_ne!(a, other);
}

#[test]
fn sample_full_is_deterministic_with_every_option() {
    let logits = lcg_logits(5000, 3, 1000);
    let prompt: Vec<u32> = (0..300).map(|i| (i * 17) % 5000).collect();
    let output: Vec<u32> = (0..200).map(|i| (i * 31) % 700).collect();
    let h = TokenHistory {
        prompt: &prompt,
        output: &output,
    };
    let p = SamplingParams {
        temperature: 0.8,
        top_k: 200,
        top_p: 0.9,
        seed: 77,
        min_p: 0.02,
        repetition_penalty: 1.3,
        presence_penalty: 0.4,
        frequency_penalty: 0.2,
        top_logprobs: 5,
    };
    let a: Vec<SampleOutput> = (0..40)
        .map(|pos| sample_full(&logits, &p, &h, pos))
        .collect();
    let b: Vec<SampleOutput> = (0..40)
        .map(|pos| sample_full(&logits, &p, &h, pos))
        .collect();
    assert_eq!(a, b);
    assert!(a.iter().any(|o| o.token != a[0].token));
}

#[test]
fn top_k_and_top_p_restrict_the_support() {
    let logits = [5.0, 4.0, 3.0, -10.0, -10.0];
    for pos in 0..200 {
        let t = sample(&logits, &params(2.0, 2, 1.0, 9), pos).token;
        assert!(t < 2, "top_k=2 gave token {t}");
    }
    // probs at T=1: ~[0.665, 0.245, 0.090, ...]; top_p 0.7 keeps two.
    for pos in 0..200 {
        let t = sample(&logits, &params(1.0, 0, 0.7, 9), pos).token;
        assert!(t < 2, "top_p=0.7 gave token {t}");
    }
}

#[test]
fn sampling_frequencies_follow_softmax() {
    let logits = [1.0f32, 0.0, -1.0];
    let p = params(1.0, 0, 1.0, 1234);
    let n = 20_000u64;
    let mut counts = [0u32; 3];
    for pos in 0..n {
        counts[sample(&logits, &p, pos).token as usize] += 1;
    }
    let z: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
    for (i, &c) in counts.iter().enumerate() {
        let want = (logits[i] as f64).exp() / z;
        let got = c as f64 / n as f64;
        assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
    }
}

#[test]
fn repetition_penalty_matches_hand_computation() {
    let mut logits = [2.0f32, -1.0, 0.5, 3.0, -0.5, 0.0];
    let p = SamplingParams {
        repetition_penalty: 2.0,
        ..SamplingParams::greedy()
    };
    // 0 and 1 from the prompt, 1 again and 4, 5 from the output, 99 out of range.
    let h = TokenHistory {
        prompt: &[0, 1, 0],
        output: &[1, 4, 5, 99],
    };
    penalty::apply(&mut logits, &p, &h);
    assert_eq!(logits, [1.0, -2.0, 0.5, 3.0, -1.0, 0.0]);
    // penalty below 1 boosts instead
    let mut logits = [2.0f32, -1.0];
    let p = SamplingParams {
        repetition_penalty: 0.5,
        ..SamplingParams::greedy()
    };
    penalty::apply(
        &mut logits,
        &p,
        &TokenHistory {
            prompt: &[0, 1],
            output: &[],
        },
    );
    assert_eq!(logits, [4.0, -0.5]);
}

#[test]
fn frequency_and_presence_penalties_match_hand_computation() {
    let mut logits = [1.0f32, 2.0, 3.0, 4.0];
    let p = SamplingParams {
        frequency_penalty: 0.5,
        presence_penalty: 1.25,
        ..SamplingParams::greedy()
    };
    // the prompt does not count for these two
    let h = TokenHistory {
        prompt: &[3, 3, 3],
        output: &[2, 0, 2, 2],
    };
    penalty::apply(&mut logits, &p, &h);
    let want = [1.0 - 0.5 - 1.25, 2.0, 3.0 - 1.5 - 1.25, 4.0];
    for (g, w) in logits.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{logits:?} vs {want:?}");
    }
}

#[test]
fn penalties_compose_and_reach_logprobs() {
    let logits = [3.0f32, -2.0, 1.0, 0.5];
    let p = SamplingParams {
        repetition_penalty: 1.5,
        frequency_penalty: 0.25,
        presence_penalty: 0.5,
        top_logprobs: 4,
        ..SamplingParams::greedy()
    };
    let h = TokenHistory {
        prompt: &[1],
        output: &[0, 0, 3],
    };
    let out = sample_full(&logits, &p, &h, 5);
    // repetition first: 3/1.5 = 2, -2*1.5 = -3, 0.5/1.5; then additive.
    let pen = [2.0 - 0.5 - 0.5, -3.0, 1.0, 0.5 / 1.5 - 0.25 - 0.5];
    let want = log_softmax(&pen);
    assert_eq!(out.token, 0); // 1.0 ties token 2's 1.0: lower id wins
    let ids: Vec<u32> = out.top.iter().map(|t| t.0).collect();
    assert_eq!(ids, vec![0, 2, 3, 1]);
    for &(tok, lp) in &out.top {
        assert!((lp as f64 - want[tok as usize]).abs() < 1e-5, "{tok}: {lp}");
    }
    assert!((out.logprob as f64 - want[0]).abs() < 1e-5);
}

#[test]
fn penalties_change_the_greedy_pick() {
    let greedy = SamplingParams::greedy();
    let pick = |logits: &[f32], p: SamplingParams, output: &[u32]| {
        sample_full(
            logits,
            &p,
            &TokenHistory {
                prompt: &[],
                output,
            },
            0,
        )
        .token
    };
    assert_eq!(pick(&[3.0, 2.9], greedy, &[0]), 0);
    let presence = SamplingParams {
        presence_penalty: 0.5,
        ..greedy
    };
    assert_eq!(pick(&[3.0, 2.9], presence, &[0]), 1);
    let freq = SamplingParams {
        frequency_penalty: 0.04,
        ..greedy
    };
    assert_eq!(pick(&[3.0, 2.9], freq, &[0, 0]), 0); // 2.92 still wins
    assert_eq!(pick(&[3.0, 2.9], freq, &[0, 0, 0]), 1); // 2.88 loses
    let rep = SamplingParams {
        repetition_penalty: 1.2,
        ..greedy
    };
    assert_eq!(pick(&[3.0, 2.9], rep, &[0]), 1); // 2.5
    assert_eq!(pick(&[-1.0, -1.1], rep, &[0]), 1); // -1.2: multiplied
                                                   // repetition also looks at the prompt
    let out = sample_full(
        &[3.0, 2.9],
        &rep,
        &TokenHistory {
            prompt: &[0],
            output: &[],
        },
        0,
    );
    assert_eq!(out.token, 1);
}

#[test]
fn top_logprobs_are_ordered_log_softmax_values() {
    let logits = lcg_logits(3000, 11, 40); // 40 levels: many ties
    let p = SamplingParams {
        top_logprobs: 25,
        ..params(0.7, 0, 1.0, 5)
    };
    let out = sample_full(&logits, &p, &no_history(), 9);
    let wide: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    let lsm = log_softmax(&wide);
    let mut want: Vec<u32> = (0..3000).collect();
    want.sort_by(|&a, &b| {
        wide[b as usize]
            .partial_cmp(&wide[a as usize])
            .unwrap()
            .then(a.cmp(&b))
    });
    want.truncate(25);
    let got: Vec<u32> = out.top.iter().map(|t| t.0).collect();
    assert_eq!(got, want);
    for &(tok, lp) in &out.top {
        assert!((lp as f64 - lsm[tok as usize]).abs() < 1e-5);
    }
    assert!((out.logprob as f64 - lsm[out.token as usize]).abs() < 1e-5);
    // more than the vocabulary: all of it; NaN is never listed
    let small = [0.0f32, f32::NAN, 1.0];
    let p = SamplingParams {
        top_logprobs: 10,
        ..SamplingParams::greedy()
    };
    let out = sample_full(&small, &p, &no_history(), 0);
    assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 0]);
}

#[test]
fn min_p_keeps_exactly_the_tokens_above_the_post_temperature_threshold() {
    let logits = [0.0f32, -1.0, -2.0, -3.0, -4.0];
    // min_p 0.2: ratios at T=1 are e^-1 = .37, e^-2 = .14 -> keep {0, 1};
    // at T=2 they are e^-.5, e^-1, e^-1.5 = .22, e^-2 = .14 -> keep {0..=3}.
    for (t, support) in [(1.0f32, 2usize), (2.0, 4)] {
        let p = SamplingParams {
            min_p: 0.2,
            ..params(t, 0, 1.0, 31)
        };
        let mut seen = [0u32; 5];
        for pos in 0..2000 {
            seen[sample(&logits, &p, pos).token as usize] += 1;
        }
        assert!(seen[..support].iter().all(|&c| c > 0), "T={t}: {seen:?}");
        assert!(seen[support..].iter().all(|&c| c == 0), "T={t}: {seen:?}");
    }
}

/// Chi-square of observed counts against the reference filtered
/// distribution; fails on any count outside its support.
fn chi_square(logits: &[f32], p: &SamplingParams, draws: u64) -> (f64, usize) {
    let dist = reference_dist(logits, p);
    let mut counts = vec![0u64; logits.len()];
    for pos in 0..draws {
        counts[sample(logits, p, pos).token as usize] += 1;
    }
    let mut chi2 = 0.0;
    for &(tok, q) in &dist {
        let expect = q * draws as f64;
        let d = counts[tok as usize] as f64 - expect;
        chi2 += d * d / expect;
        counts[tok as usize] = 0;
    }
    assert!(
        counts.iter().all(|&c| c == 0),
        "draws outside the support: {counts:?}"
    );
    (chi2, dist.len() - 1)
}

#[test]
fn sampling_frequencies_follow_the_filtered_distribution() {
    let logits = [2.0f32, 1.7, 1.5, 1.0, 0.8, 0.2, -0.5, -3.0];
    let cases = [
        params(0.7, 4, 1.0, 1),
        params(1.3, 0, 0.8, 2),
        SamplingParams {
            min_p: 0.15,
            ..params(1.0, 0, 1.0, 3)
        },
        SamplingParams {
            min_p: 0.1,
            ..params(1.5, 6, 0.95, 4)
        },
    ];
    for p in cases {
        let (chi2, df) = chi_square(&logits, &p, 30_000);
        // 99.99th percentile of chi-square for df <= 7 is below 30.
        assert!(df >= 2, "case {p:?} filtered too much to be a test");
        assert!(
            chi2 < 30.0,
            "{p:?}: chi2 {chi2} with {df} degrees of freedom"
        );
    }
}

#[test]
fn picks_match_a_full_sort_reference_on_a_large_vocabulary() {
    let logits = lcg_logits(50_000, 17, 20_000);
    let cases = [
        params(1.0, 0, 1.0, 1),
        params(0.6, 0, 1.0, 2),
        params(1.0, 50, 1.0, 3),
        params(0.9, 40, 0.9, 4),
        params(1.2, 0, 0.95, 5),
        SamplingParams {
            min_p: 0.05,
            ..params(1.0, 0, 1.0, 6)
        },
        SamplingParams {
            min_p: 0.3,
            ..params(0.8, 1000, 0.99, 7)
        },
    ];
    for p in cases {
        let dist = reference_dist(&logits, &p);
        for pos in 0..30 {
            let want = reference_pick(&dist, uniform(p.seed, pos));
            assert_eq!(sample(&logits, &p, pos).token, want, "{p:?} at {pos}");
        }
    }
}

/// The sampler this module had before penalties and min-p: the same seeded
/// requests must still give the same tokens.
fn legacy_pick(logits: &[f32], p: &SamplingParams, position: u64) -> u32 {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    if p.top_k > 0 && (p.top_k as usize) < idx.len() {
        idx.truncate(p.top_k as usize);
    }
    let t = p.temperature as f64;
    let max = logits[idx[0] as usize] as f64;
    let mut probs: Vec<(u32, f64)> = idx
        .iter()
        .map(|&i| (i, ((logits[i as usize] as f64 - max) / t).exp()))
        .collect();
    let total: f64 = probs.iter().map(|q| q.1).sum();
    probs.iter_mut().for_each(|q| q.1 /= total);
    if p.top_p > 0.0 && p.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|q| {
                acc += q.1;
                acc >= p.top_p as f64
            })
            .map_or(probs.len(), |n| n + 1);
        probs.truncate(keep);
        let total: f64 = probs.iter().map(|q| q.1).sum();
        probs.iter_mut().for_each(|q| q.1 /= total);
    }
    reference_pick(&probs, uniform(p.seed, position))
}

#[test]
fn seeded_picks_match_the_previous_sampler() {
    let logits = lcg_logits(2000, 23, 300);
    for p in [
        params(1.0, 0, 1.0, 8),
        params(0.5, 20, 1.0, 9),
        params(1.1, 0, 0.9, 10),
        params(2.0, 64, 0.5, 11),
    ] {
        for pos in 0..200 {
            assert_eq!(
                sample(&logits, &p, pos).token,
                legacy_pick(&logits, &p, pos),
                "{p:?} at {pos}"
            );
        }
    }
}

#[test]
fn degenerate_rows_do_not_panic() {
    let p = SamplingParams {
        min_p: 0.5,
        top_logprobs: 3,
        ..params(1.0, 3, 0.5, 1)
    };
    for row in [
        vec![],
        vec![f32::NAN; 4],
        vec![f32::NEG_INFINITY; 4],
        vec![1.0, f32::NAN],
    ] {
        let out = sample_full(
            &row,
            &p,
            &TokenHistory {
                prompt: &[7, 0],
                output: &[0, 9],
            },
            3,
        );
        assert!((out.token as usize) < row.len().max(1));
    }
    // min_p above 1 still keeps the most likely token
    let p = SamplingParams {
        min_p: 5.0,
        ..params(1.0, 0, 1.0, 1)
    };
    assert_eq!(sample(&[0.0, 1.0, 0.5], &p, 0).token, 1);
}
