//! Results of the collectives on healthy groups.

use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

#[test]
fn single_rank_ops() {
    let mut c = SingleRank;
    assert_eq!((c.rank(), c.world_size()), (0, 1));
    let mut buf = vec![1.5f32, -2.0];
    c.all_reduce_sum(&mut buf).unwrap();
    assert_eq!(buf, [1.5, -2.0]);
    let mut out = vec![0.0; 2];
    c.all_gather(&buf, &mut out).unwrap();
    assert_eq!(out, buf);
    assert!(matches!(
        c.all_gather(&buf, &mut [0.0; 3]),
        Err(CommError::InvalidArgument(_))
    ));
    c.broadcast(&mut buf, 0).unwrap();
    assert!(matches!(
        c.broadcast(&mut buf, 1),
        Err(CommError::InvalidRank {
            rank: 1,
            world_size: 1
        })
    ));
    c.barrier().unwrap();
    // Usable as a trait object.
    let d: &mut dyn Communicator = &mut c;
    d.barrier().unwrap();
}

#[test]
fn tcp_world_size_one() {
    let r = group(1, OP, |c| {
        let mut buf = vec![3.0f32; 4];
        c.all_reduce_sum(&mut buf).unwrap();
        let mut out = vec![0.0; 4];
        c.all_gather(&buf, &mut out).unwrap();
        c.broadcast(&mut buf, 0).unwrap();
        c.barrier().unwrap();
        (buf, out)
    });
    assert_eq!(r[0].0, vec![3.0; 4]);
    assert_eq!(r[0].1, vec![3.0; 4]);
}

#[test]
fn all_reduce_is_rank_ordered_and_bit_identical() {
    const SIZES: [usize; 6] = [0, 1, 7, 576, 8192, 70_000];
    for n in 2..=4 {
        let results = group(n, OP, |c| {
            let rank = c.rank();
            SIZES
                .iter()
                .enumerate()
                .map(|(k, &len)| {
                    let mut buf = data(rank, k as u64, len);
                    c.all_reduce_sum(&mut buf).unwrap();
                    buf
                })
                .collect::<Vec<_>>()
        });
        for (k, &len) in SIZES.iter().enumerate() {
            let inputs: Vec<Vec<f32>> = (0..n).map(|r| data(r, k as u64, len)).collect();
            let mut seq = inputs[0].clone();
            for input in &inputs[1..] {
                for (a, b) in seq.iter_mut().zip(input) {
                    *a += *b;
                }
            }
            for (rank, res) in results.iter().enumerate() {
                assert_eq!(
                    bits(&res[k]),
                    bits(&seq),
                    "n={n} len={len} rank={rank}: not the rank-order f32 sum"
                );
            }
            for i in 0..len {
                let exact: f64 = inputs.iter().map(|v| v[i] as f64).sum();
                let mag: f64 = inputs.iter().map(|v| (v[i] as f64).abs()).sum();
                let err = (results[0][k][i] as f64 - exact).abs();
                assert!(
                    err <= 4.0 * f32::EPSILON as f64 * mag,
                    "n={n} len={len} i={i}: {err} vs {mag}"
                );
            }
        }
    }
}

#[test]
fn all_gather_is_rank_major() {
    for n in 2..=4 {
        for len in [0usize, 1, 100, 50_000] {
            let results = group(n, OP, |c| {
                let local = data(c.rank(), 7, len);
                let mut out = vec![f32::NAN; len * n];
                c.all_gather(&local, &mut out).unwrap();
                out
            });
            let expect: Vec<f32> = (0..n).flat_map(|r| data(r, 7, len)).collect();
            for out in &results {
                assert_eq!(bits(out), bits(&expect), "n={n} len={len}");
            }
        }
    }
}

#[test]
fn broadcast_from_every_root() {
    for n in 2..=4 {
        let results = group(n, OP, |c| {
            (0..n)
                .map(|root| {
                    let mut buf = data(c.rank(), 100 + root as u64, 1000);
                    c.broadcast(&mut buf, root).unwrap();
                    buf
                })
                .collect::<Vec<_>>()
        });
        for root in 0..n {
            let expect = data(root, 100 + root as u64, 1000);
            for (rank, res) in results.iter().enumerate() {
                assert_eq!(
                    bits(&res[root]),
                    bits(&expect),
                    "n={n} root={root} rank={rank}"
                );
            }
        }
    }
}

#[test]
fn barrier_waits_for_the_slowest_rank() {
    const DELAY: Duration = Duration::from_millis(200);
    for slow in 0..3 {
        let waits = group(3, OP, |c| {
            c.barrier().unwrap();
            if c.rank() == slow {
                thread::sleep(DELAY);
            }
            let t = Instant::now();
            c.barrier().unwrap();
            t.elapsed()
        });
        for (rank, w) in waits.iter().enumerate() {
            if rank != slow {
                assert!(
                    *w >= DELAY - Duration::from_millis(20),
                    "slow={slow} rank={rank} waited only {w:?}"
                );
            }
        }
    }
}

#[test]
fn many_mixed_ops_stay_in_sync() {
    for n in [3, 4] {
        let results = group(n, OP, |c| {
            let rank = c.rank();
            let mut script = ChaCha8Rng::seed_from_u64(42); // same script on every rank
            let mut digest = Vec::new();
            for step in 0..500u64 {
                let len = script.random_range(0..3000usize);
                match script.random_range(0..4) {
                    0 => {
                        let mut buf = data(rank, step, len);
                        c.all_reduce_sum(&mut buf).unwrap();
                        digest.extend(bits(&buf));
                    }
                    1 => {
                        let local = data(rank, step, len);
                        let mut out = vec![0.0; len * n];
                        c.all_gather(&local, &mut out).unwrap();
                        digest.extend(bits(&out));
                    }
                    2 => {
                        let root = script.random_range(0..n);
                        let mut buf = data(rank, step, len);
                        c.broadcast(&mut buf, root).unwrap();
                        assert_eq!(bits(&buf), bits(&data(root, step, len)));
                        digest.extend(bits(&buf));
                    }
                    _ => c.barrier().unwrap(),
                }
            }
            digest
        });
        for r in 1..n {
            assert!(
                results[r] == results[0],
                "n={n}: rank {r} diverged from rank 0"
            );
        }
    }
}

/// Loopback latency; run with `cargo test --release -p weft-model comm::tests::ops::latency -- --ignored --nocapture`.
#[test]
#[ignore]
fn latency() {
    for n in [2, 4] {
        for len in [576usize, 8192, 50_000] {
            let iters = 2000;
            let r = group(n, OP, |c| {
                let mut buf = vec![1.0f32; len];
                let local = vec![1.0f32; len / n];
                let mut out = vec![0.0f32; (len / n) * n];
                c.barrier().unwrap();
                let t = Instant::now();
                for _ in 0..iters {
                    c.all_reduce_sum(&mut buf).unwrap();
                }
                let ar = t.elapsed() / iters;
                let t = Instant::now();
                for _ in 0..iters {
                    c.all_gather(&local, &mut out).unwrap();
                }
                (ar, t.elapsed() / iters)
            });
            println!(
                "n={n} len={len}: all_reduce {:?}/op, all_gather(total {len}) {:?}/op",
                r[0].0, r[0].1
            );
        }
    }
}
