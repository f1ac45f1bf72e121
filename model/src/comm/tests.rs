use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::wire::{Hello, Reply, Status, REPLY_LEN, VERSION};
use super::*;

const SESSION: u64 = 0x5eed_cafe_f00d_0001;
const CONNECT: Duration = Duration::from_secs(5);
const OP: Duration = Duration::from_secs(5);

fn listeners(n: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs = ls.iter().map(|l| l.local_addr().unwrap()).collect();
    (ls, addrs)
}

fn config(rank: usize, peers: &[SocketAddr], op_timeout: Duration) -> TcpCommConfig {
    TcpCommConfig {
        rank,
        world_size: peers.len(),
        peers: peers.to_vec(),
        connect_timeout: CONNECT,
        op_timeout,
    }
}

/// Forms a group of `n` ranks on threads and runs `f` on each; returns the results in rank order. The communicators
/// are dropped only after every thread has finished (so one rank's drop does not race the others' error paths).
fn group<R, F>(n: usize, op_timeout: Duration, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(&mut TcpComm) -> R + Sync,
{
    let (ls, addrs) = listeners(n);
    let out: Vec<(R, TcpComm)> = thread::scope(|s| {
        let handles: Vec<_> = ls
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                let (addrs, f) = (&addrs, &f);
                s.spawn(move || {
                    let mut comm =
                        TcpComm::connect(l, config(rank, addrs, op_timeout), SESSION).unwrap();
                    assert_eq!(comm.rank(), rank);
                    assert_eq!(comm.world_size(), n);
                    (f(&mut comm), comm)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    out.into_iter().map(|(r, _)| r).collect()
}

/// Values spanning several magnitudes so that the summation order shows in the low bits.
fn data(rank: usize, salt: u64, len: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(salt.wrapping_mul(1_000_003).wrapping_add(rank as u64));
    (0..len)
        .map(|_| rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-3..4)))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

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

const SHORT: Duration = Duration::from_millis(500);

/// Bound on how long a rank may take to notice a dead or stalled peer.
fn within_op_timeout(elapsed: Duration) -> bool {
    elapsed < SHORT + Duration::from_millis(400)
}

#[test]
fn peer_that_drops_out_fails_the_others_within_op_timeout() {
    for (n, quitter) in [(2, 1), (3, 2), (3, 1), (3, 0), (4, 0)] {
        let (ls, addrs) = listeners(n);
        thread::scope(|s| {
            let handles: Vec<_> = ls
                .into_iter()
                .enumerate()
                .map(|(rank, l)| {
                    let addrs = &addrs;
                    s.spawn(move || {
                        let mut c =
                            TcpComm::connect(l, config(rank, addrs, SHORT), SESSION).unwrap();
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
                })
                .collect();
            for (rank, h) in handles.into_iter().enumerate() {
                if let Some((e, el)) = h.join().unwrap() {
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
        });
    }
}

#[test]
fn stalled_peer_times_out_within_op_timeout() {
    for (n, staller) in [(3, 2), (3, 0)] {
        let start = Barrier::new(n);
        let results = {
            let (ls, addrs) = listeners(n);
            thread::scope(|s| {
                let handles: Vec<_> = ls
                    .into_iter()
                    .enumerate()
                    .map(|(rank, l)| {
                        let (addrs, start) = (&addrs, &start);
                        s.spawn(move || {
                            let mut c =
                                TcpComm::connect(l, config(rank, addrs, SHORT), SESSION).unwrap();
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
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        };
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

fn raw_hello(addr: SocketAddr, rank: u32, world: u32, session: u64) -> Result<TcpComm, CommError> {
    // A rank > 0 with a custom session, built through the public API.
    let dummy = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peers = vec![addr; world as usize];
    peers[rank as usize] = dummy.local_addr().unwrap();
    let cfg = TcpCommConfig {
        rank: rank as usize,
        world_size: world as usize,
        peers,
        connect_timeout: Duration::from_secs(2),
        op_timeout: OP,
    };
    TcpComm::connect(dummy, cfg, session)
}

/// Sends a hand-made hello to rank 0 and returns its (immediate) answer.
fn raw_reply(addr: SocketAddr, hello: Hello) -> Status {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(&hello.encode()).unwrap();
    let mut reply = [0u8; REPLY_LEN];
    s.read_exact(&mut reply).unwrap();
    Reply::decode(&reply).unwrap().status
}

#[test]
fn handshake_rejects_wrong_session_and_strays() {
    let (mut ls, addrs) = listeners(2);
    let l0 = ls.remove(0);
    let root = thread::spawn({
        let addrs = addrs.clone();
        move || TcpComm::connect(l0, config(0, &addrs, OP), SESSION)
    });
    // A stray connection that sends garbage, one that sends nothing and closes, a stale session, a wrong world
    // size and an out-of-range rank: all rejected or dropped, and rank 0 keeps waiting.
    {
        use std::io::Write;
        let mut s = TcpStream::connect(addrs[0]).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\nxxxxxxxxxxxxxxxxxxxx")
            .unwrap();
        drop(TcpStream::connect(addrs[0]).unwrap());
    }
    match raw_hello(addrs[0], 1, 2, SESSION + 1) {
        Err(CommError::HandshakeRejected { peer: 0, reason }) => {
            assert!(reason.contains("session"), "{reason}")
        }
        other => panic!("wrong session must be rejected, got {other:?}"),
    }
    assert!(matches!(
        raw_hello(addrs[0], 1, 3, SESSION),
        Err(CommError::HandshakeRejected { .. })
    ));
    assert_eq!(
        raw_reply(
            addrs[0],
            Hello {
                version: VERSION,
                rank: 5,
                world_size: 2,
                session: SESSION
            }
        ),
        Status::BadRank
    );
    // The legitimate rank 1 still gets in.
    let l1 = ls.remove(0);
    let mut c1 = TcpComm::connect(l1, config(1, &addrs, OP), SESSION).unwrap();
    let mut c0 = root.join().unwrap().unwrap();
    let t = thread::spawn(move || {
        let mut b = vec![2.0f32; 3];
        c1.all_reduce_sum(&mut b).unwrap();
        b
    });
    let mut b = vec![1.0f32; 3];
    c0.all_reduce_sum(&mut b).unwrap();
    assert_eq!(b, [3.0; 3]);
    assert_eq!(t.join().unwrap(), [3.0; 3]);
}

#[test]
fn handshake_checks_version_and_duplicates() {
    let (mut ls, addrs) = listeners(3);
    let l0 = ls.remove(0);
    let root = thread::spawn({
        let addrs = addrs.clone();
        move || TcpComm::connect(l0, config(0, &addrs, OP), SESSION)
    });
    let l1 = ls.remove(0);
    let a1 = addrs.clone();
    let r1 = thread::spawn(move || TcpComm::connect(l1, config(1, &a1, OP), SESSION));
    thread::sleep(Duration::from_millis(100));
    // Duplicate rank 1 and wrong protocol version get an immediate rejection (a reply, not silence).
    let dup = Hello {
        version: VERSION,
        rank: 1,
        world_size: 3,
        session: SESSION,
    };
    assert_eq!(raw_reply(addrs[0], dup), Status::DuplicateRank);
    let old = Hello {
        version: VERSION + 1,
        rank: 2,
        world_size: 3,
        session: SESSION,
    };
    assert_eq!(raw_reply(addrs[0], old), Status::WrongVersion);
    let l2 = ls.remove(0);
    let mut c2 = TcpComm::connect(l2, config(2, &addrs, OP), SESSION).unwrap();
    let mut c1 = r1.join().unwrap().unwrap();
    let mut c0 = root.join().unwrap().unwrap();
    let h1 = thread::spawn(move || c1.barrier());
    let h2 = thread::spawn(move || c2.barrier());
    c0.barrier().unwrap();
    h1.join().unwrap().unwrap();
    h2.join().unwrap().unwrap();
}

#[test]
fn group_formation_times_out_and_tells_connected_ranks() {
    let (mut ls, addrs) = listeners(3);
    let l0 = ls.remove(0);
    let l1 = ls.remove(0);
    let short = |rank| TcpCommConfig {
        connect_timeout: Duration::from_millis(400),
        ..config(rank, &addrs, OP)
    };
    let (c0, c1) = (short(0), short(1));
    let t = Instant::now();
    let root = thread::spawn(move || TcpComm::connect(l0, c0, SESSION));
    let r1 = TcpComm::connect(l1, c1, SESSION);
    let r0 = root.join().unwrap();
    assert!(
        matches!(
            r0,
            Err(CommError::Timeout {
                op: "connect",
                peer: 2,
                ..
            })
        ),
        "{r0:?}"
    );
    assert!(
        matches!(r1, Err(CommError::HandshakeRejected { peer: 0, .. })),
        "{r1:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn peers_retry_until_rank_zero_listens() {
    // Rank 0's port is free (connections refused) for a while before rank 0 binds it.
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr0 = probe.local_addr().unwrap();
    drop(probe);
    let (mut ls, mut addrs) = listeners(3);
    addrs[0] = addr0;
    drop(ls.remove(0));
    let handles: Vec<_> = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let addrs = addrs.clone();
            thread::spawn(move || {
                let mut c = TcpComm::connect(l, config(i + 1, &addrs, OP), SESSION)?;
                let mut b = vec![1.0f32; 5];
                c.all_reduce_sum(&mut b)?;
                Ok::<_, CommError>(b)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let l0 = TcpListener::bind(addr0).unwrap();
    let mut c0 = TcpComm::connect(l0, config(0, &addrs, OP), SESSION).unwrap();
    let mut b = vec![1.0f32; 5];
    c0.all_reduce_sum(&mut b).unwrap();
    assert_eq!(b, [3.0; 5]);
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), [3.0; 5]);
    }
}

#[test]
fn invalid_configs_are_rejected() {
    let (ls, addrs) = listeners(1);
    let l = ls.into_iter().next().unwrap();
    let bad_rank = TcpCommConfig {
        rank: 2,
        ..config(0, &[addrs[0], addrs[0]], OP)
    };
    assert!(matches!(
        TcpComm::connect(l.try_clone().unwrap(), bad_rank, SESSION),
        Err(CommError::InvalidRank {
            rank: 2,
            world_size: 2
        })
    ));
    let bad_peers = TcpCommConfig {
        world_size: 3,
        ..config(0, &[addrs[0], addrs[0]], OP)
    };
    assert!(matches!(
        TcpComm::connect(l.try_clone().unwrap(), bad_peers, SESSION),
        Err(CommError::InvalidArgument(_))
    ));
    let zero = TcpCommConfig {
        op_timeout: Duration::ZERO,
        ..config(0, &addrs, OP)
    };
    assert!(matches!(
        TcpComm::connect(l, zero, SESSION),
        Err(CommError::InvalidArgument(_))
    ));
    let cfg = TcpCommConfig::new(1, vec![addrs[0]; 4]);
    assert_eq!((cfg.world_size, cfg.op_timeout), (4, DEFAULT_OP_TIMEOUT));
}

/// Loopback latency; run with `cargo test --release -p weft-model comm::tests::latency -- --ignored --nocapture`.
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
