//! Protocol mismatches, invalid local arguments, and peers that drop out or stall: every rank fails promptly.

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

fn assert_protocol(e: &CommError, what: &str) {
    assert!(
        matches!(e, CommError::Protocol(_)),
        "{what}: expected a protocol error, got {e:?}"
    );
}

#[test]
fn mismatched_lengths_are_protocol_errors() {
    // The odd one out is rank 0 (checked against each peer) or a peer (checked by rank 0).
    for odd in [0, 2] {
        let t = Instant::now();
        let results = group(3, OP, |c| {
            let mut ok = vec![1.0f32; 64];
            c.all_reduce_sum(&mut ok).unwrap();
            let mut buf = vec![1.0f32; if c.rank() == odd { 10 } else { 12 }];
            let err = c.all_reduce_sum(&mut buf).unwrap_err();
            let after = c.barrier().unwrap_err();
            (err, after)
        });
        assert!(
            t.elapsed() < OP,
            "mismatch must fail fast, not after the op timeout"
        );
        for (rank, (err, after)) in results.iter().enumerate() {
            assert_protocol(err, &format!("odd={odd} rank={rank}"));
            assert!(
                matches!(after, CommError::Poisoned(_)),
                "rank={rank}: {after:?}"
            );
        }
        let msg = results[0].0.to_string();
        assert!(msg.contains("length"), "{msg}");
    }
}

#[test]
fn mismatched_ops_and_roots_are_protocol_errors() {
    let t = Instant::now();
    let results = group(3, OP, |c| {
        let mut buf = vec![0.0f32; 8];
        let ops = if c.rank() == 1 {
            c.barrier()
        } else {
            c.all_reduce_sum(&mut buf)
        };
        ops.unwrap_err()
    });
    for (rank, e) in results.iter().enumerate() {
        assert_protocol(e, &format!("op mismatch rank={rank}"));
    }
    let results = group(2, OP, |c| {
        let mut buf = vec![0.0f32; 8];
        let root = c.rank(); // each rank thinks it is the root
        c.broadcast(&mut buf, root).unwrap_err()
    });
    for (rank, e) in results.iter().enumerate() {
        assert_protocol(e, &format!("root mismatch rank={rank}"));
    }
    assert!(t.elapsed() < OP);
}

#[test]
fn invalid_local_arguments_abort_the_group() {
    let t = Instant::now();
    let results = group(3, OP, |c| {
        let local = vec![1.0f32; 4];
        let mut out = vec![0.0f32; if c.rank() == 1 { 11 } else { 12 }];
        c.all_gather(&local, &mut out).unwrap_err()
    });
    assert!(t.elapsed() < OP);
    assert!(
        matches!(results[1], CommError::InvalidArgument(_)),
        "{:?}",
        results[1]
    );
    for rank in [0, 2] {
        assert!(
            matches!(results[rank], CommError::Aborted { by: 1, .. }),
            "rank {rank}: {:?}",
            results[rank]
        );
    }
    let results = group(2, OP, |c| c.broadcast(&mut [0.0; 3], 5).unwrap_err());
    for e in &results {
        assert!(
            matches!(
                e,
                CommError::InvalidRank {
                    rank: 5,
                    world_size: 2
                }
            ),
            "{e:?}"
        );
    }
}

/// A group of `n` where rank `quitter` drops its communicator after one all-reduce while the others start a
/// second one: each other rank's error and how long it took to come (`None` for the quitter).
pub(super) fn drop_out(
    n: usize,
    quitter: usize,
    tls: Option<&CommTls>,
) -> Vec<Option<(CommError, Duration)>> {
    owned_group(n, SHORT, tls, |rank, mut c| {
        let mut buf = vec![1.0f32; 1000];
        c.all_reduce_sum(&mut buf).unwrap();
        assert_eq!(buf[0], n as f32);
        if rank == quitter {
            drop(c);
            return None;
        }
        let t = Instant::now();
        let e = c.all_reduce_sum(&mut buf).unwrap_err();
        Some((e, t.elapsed()))
    })
}

#[test]
fn peer_that_drops_out_fails_the_others_within_op_timeout() {
    for (n, quitter) in [(2, 1), (3, 2), (3, 1), (3, 0), (4, 0)] {
        for (rank, r) in drop_out(n, quitter, None).into_iter().enumerate() {
            if let Some((e, el)) = r {
                assert!(
                    matches!(
                        e,
                        CommError::PeerClosed { .. }
                            | CommError::Aborted { .. }
                            | CommError::Timeout { .. }
                    ),
                    "n={n} quitter={quitter} rank={rank}: {e:?}"
                );
                assert!(
                    within_op_timeout(el),
                    "n={n} quitter={quitter} rank={rank}: took {el:?}"
                );
            }
        }
    }
}

#[test]
fn stalled_peer_times_out_within_op_timeout() {
    for (n, staller) in [(3, 2), (3, 0)] {
        let start = Barrier::new(n);
        let results = owned_group(n, SHORT, None, |rank, mut c| {
            start.wait();
            let mut buf = vec![1.0f32; 100];
            if rank == staller {
                // Alive but late: by the time it arrives the group has given up.
                thread::sleep(SHORT * 2 + Duration::from_millis(100));
                return c.all_reduce_sum(&mut buf);
            }
            let t = Instant::now();
            let e = c.all_reduce_sum(&mut buf).unwrap_err();
            let el = t.elapsed();
            assert!(
                within_op_timeout(el),
                "n={n} staller={staller} rank={rank}: took {el:?}"
            );
            Err(e)
        });
        for (rank, r) in results.iter().enumerate() {
            let e = r.as_ref().unwrap_err();
            if rank != staller {
                assert!(
                    matches!(e, CommError::Timeout { .. } | CommError::Aborted { .. }),
                    "n={n} staller={staller} rank={rank}: {e:?}"
                );
            }
        }
        // The late rank learns that the group was aborted (or that it is gone).
        let e = results[staller].as_ref().unwrap_err();
        assert!(
            matches!(
                e,
                CommError::Aborted { .. }
                    | CommError::PeerClosed { .. }
                    | CommError::Timeout { .. }
            ),
            "{e:?}"
        );
    }
}
