//! The collective over mutual TLS (certificates from scripts/make-test-certs.sh, which needs openssl): results equal
//! to the plaintext group's, certificates from another CA, the wrong server name, a plaintext rank against a TLS
//! rank 0 and the reverse, and peers that drop out or stall.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// The test PKI, read into memory (the temporary folder is gone once it is read).
struct Pki {
    ca: Vec<u8>,
    worker: (Vec<u8>, Vec<u8>),
    rogue: (Vec<u8>, Vec<u8>),
    rogue_ca: Vec<u8>,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-test-certs.sh");
        let out = Command::new(script)
            .arg(dir.path())
            .output()
            .expect("run make-test-certs.sh (needs openssl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
        Pki {
            ca: read("ca.pem"),
            worker: (read("worker.pem"), read("worker.key")),
            rogue: (read("rogue.pem"), read("rogue.key")),
            rogue_ca: read("rogue-ca.pem"),
        }
    })
}

/// The cluster's settings: the worker certificate (valid for 127.0.0.1 and localhost) and the cluster CA.
fn cluster() -> CommTls {
    let p = pki();
    CommTls::from_pem(&p.worker.0, &p.worker.1, &p.ca).unwrap()
}

/// A certificate another CA signed; trusting that CA (so it also refuses rank 0) or the cluster's.
fn rogue(trusts_rogue_ca: bool) -> CommTls {
    let p = pki();
    let ca = if trusts_rogue_ca { &p.rogue_ca } else { &p.ca };
    CommTls::from_pem(&p.rogue.0, &p.rogue.1, ca).unwrap()
}

/// Short connect timeout of the tests where a group must fail to form.
const CONNECT_SHORT: Duration = Duration::from_millis(1500);
/// Forms a group where rank r uses `tls[r]` (None: plaintext); returns each rank's outcome.
fn try_group(tls: &[Option<CommTls>]) -> Vec<Result<TcpComm, CommError>> {
    let (ls, addrs) = listeners(tls.len());
    thread::scope(|s| {
        let handles: Vec<_> = ls
            .into_iter()
            .zip(tls)
            .enumerate()
            .map(|(rank, (l, t))| {
                let addrs = &addrs;
                s.spawn(move || {
                    let cfg = TcpCommConfig {
                        connect_timeout: CONNECT_SHORT,
                        ..config(rank, addrs, OP)
                    };
                    TcpComm::connect_with_tls(l, cfg, SESSION, t.as_ref())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// [`owned_group`] over mutual TLS with the cluster's certificates.
fn run_tls_group<R, F>(n: usize, op_timeout: Duration, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize, TcpComm) -> R + Sync,
{
    owned_group(n, op_timeout, Some(&cluster()), f)
}

fn tls_message(r: &Result<TcpComm, CommError>, peer: usize, what: &str) -> String {
    match r {
        Err(CommError::Tls { peer: p, message }) if *p == peer => message.clone(),
        other => panic!("{what}: expected a TLS error naming rank {peer}, got {other:?}"),
    }
}

/// Sizes up to 4 MiB: a message spans many TLS records and several fills of the send buffer.
const SIZES: [usize; 6] = [0, 1, 7, 576, 70_000, 1 << 20];

/// (all-reduce, all-gather, broadcast) results of every size.
type Outputs = Vec<(Vec<f32>, Vec<f32>, Vec<f32>)>;

fn every_op(c: &mut TcpComm) -> Outputs {
    let (rank, n) = (c.rank(), c.world_size());
    SIZES
        .iter()
        .enumerate()
        .map(|(k, &len)| {
            let k = k as u64;
            let mut sum = data(rank, k, len);
            c.all_reduce_sum(&mut sum).unwrap();
            let mut gathered = vec![0.0; len * n];
            c.all_gather(&data(rank, 100 + k, len), &mut gathered)
                .unwrap();
            let root = k as usize % n;
            let mut bcast = if rank == root {
                data(rank, 200 + k, len)
            } else {
                vec![0.0; len]
            };
            c.broadcast(&mut bcast, root).unwrap();
            c.barrier().unwrap();
            (sum, gathered, bcast)
        })
        .collect()
}

#[test]
fn tls_group_matches_plaintext_group_and_f64_reference() {
    let n = 3;
    let tls = cluster();
    let plain = group(n, OP, every_op);
    let secure = group_with(n, OP, Some(&tls), every_op);
    for (k, &len) in SIZES.iter().enumerate() {
        let k64 = k as u64;
        let inputs: Vec<Vec<f32>> = (0..n).map(|r| data(r, k64, len)).collect();
        let gathered: Vec<f32> = (0..n).flat_map(|r| data(r, 100 + k64, len)).collect();
        let bcast = data(k % n, 200 + k64, len);
        for rank in 0..n {
            let (s, g, b) = &secure[rank][k];
            let (ps, pg, pb) = &plain[rank][k];
            assert_eq!(bits(s), bits(ps), "all_reduce size {len} rank {rank}");
            assert_eq!(bits(s), bits(&secure[0][k].0), "ranks differ, size {len}");
            assert_eq!(bits(g), bits(pg), "all_gather size {len} rank {rank}");
            assert_eq!(
                bits(g),
                bits(&gathered),
                "all_gather size {len} rank {rank}"
            );
            assert_eq!(bits(b), bits(pb), "broadcast size {len} rank {rank}");
            assert_eq!(bits(b), bits(&bcast), "broadcast size {len} rank {rank}");
        }
        // The f32 sum in rank order is within a few ulps of the f64 sum.
        for (i, got) in secure[0][k].0.iter().enumerate() {
            let exact: f64 = inputs.iter().map(|v| f64::from(v[i])).sum();
            let scale: f64 = inputs.iter().map(|v| f64::from(v[i]).abs()).sum();
            let tol = 4.0 * f64::from(f32::EPSILON) * scale + 1e-30;
            assert!(
                (f64::from(*got) - exact).abs() <= tol,
                "size {len} element {i}: {got} vs {exact}"
            );
        }
    }
}

#[test]
fn certificate_from_another_ca_cannot_join() {
    for trusts_rogue_ca in [false, true] {
        let what = format!("rogue rank 2 trusting the rogue CA: {trusts_rogue_ca}");
        let t = Instant::now();
        let r = try_group(&[
            Some(cluster()),
            Some(cluster()),
            Some(rogue(trusts_rogue_ca)),
        ]);
        let elapsed = t.elapsed();
        // Rank 0 drops the rogue, waits out the connect timeout for rank 2 and says why it failed.
        let msg = tls_message(&r[0], 2, &what);
        assert!(msg.contains("failed the TLS handshake"), "{what}: {msg}");
        assert!(
            msg.contains(if trusts_rogue_ca {
                "alert"
            } else {
                "certificate"
            }),
            "{what}: {msg}"
        );
        assert!(
            matches!(r[1], Err(CommError::HandshakeRejected { peer: 0, .. })),
            "{what}: rank 1 must learn that the group failed: {:?}",
            r[1]
        );
        let rogue_msg = tls_message(&r[2], 0, &what);
        if trusts_rogue_ca {
            assert!(rogue_msg.contains("certificate"), "{what}: {rogue_msg}");
        }
        assert!(
            elapsed >= CONNECT_SHORT && elapsed < CONNECT_SHORT + Duration::from_secs(2),
            "{what}: took {elapsed:?}"
        );
    }
}

#[test]
fn rank_zero_certificate_must_carry_the_server_name() {
    // Certificates name 127.0.0.1 and localhost: the default (rank 0's IP) and "localhost" pass.
    let named = cluster().with_server_name("localhost").unwrap();
    let r = try_group(&[Some(cluster()), Some(named.clone()), Some(named)]);
    assert!(r.iter().all(|c| c.is_ok()), "{r:?}");
    // Any other name fails on the rank that checks it; rank 0 sees the refusal.
    let wrong = cluster().with_server_name("rank0.weft.invalid").unwrap();
    let r = try_group(&[Some(cluster()), Some(wrong)]);
    let msg = tls_message(&r[1], 0, "rank 1");
    assert!(msg.contains("not valid for name"), "{msg}");
    let msg = tls_message(&r[0], 1, "rank 0");
    assert!(msg.contains("failed the TLS handshake"), "{msg}");
    assert!(CommTls::from_pem(b"", b"", b"").is_err());
    assert!(cluster().with_server_name("not a name!").is_err());
}

#[test]
fn plaintext_rank_cannot_join_a_tls_group() {
    let t = Instant::now();
    let r = try_group(&[Some(cluster()), None]);
    let msg = tls_message(&r[1], 0, "plaintext rank 1");
    assert!(msg.contains("TLS alert"), "{msg}");
    let msg = tls_message(&r[0], 1, "TLS rank 0");
    assert!(msg.contains("failed the TLS handshake"), "{msg}");
    assert!(t.elapsed() < CONNECT_SHORT + Duration::from_secs(2));
}

#[test]
fn tls_rank_cannot_join_a_plaintext_group() {
    let t = Instant::now();
    let r = try_group(&[None, Some(cluster())]);
    let msg = tls_message(&r[1], 0, "TLS rank 1");
    assert!(msg.contains("TLS handshake"), "{msg}");
    let msg = tls_message(&r[0], 1, "plaintext rank 0");
    assert!(msg.contains("plaintext"), "{msg}");
    assert!(t.elapsed() < CONNECT_SHORT + Duration::from_secs(2));
}

#[test]
fn tls_peer_that_drops_out_is_peer_closed() {
    for quitter in [0, 1] {
        let r = super::failures::drop_out(2, quitter, Some(&cluster()));
        let (e, el) = r[1 - quitter].as_ref().unwrap();
        assert!(
            matches!(e, CommError::PeerClosed { peer } if *peer == quitter),
            "quitter {quitter}: {e:?}"
        );
        assert!(within_op_timeout(*el), "quitter {quitter}: took {el:?}");
    }
}

#[test]
fn tls_stalled_peer_times_out() {
    for staller in [0, 1] {
        let r = run_tls_group(2, SHORT, |rank, mut c| {
            let mut buf = vec![1.0f32; 100];
            c.barrier().unwrap();
            if rank == staller {
                thread::sleep(SHORT * 2 + Duration::from_millis(100));
                return (c.all_reduce_sum(&mut buf).unwrap_err(), Duration::ZERO);
            }
            let t = Instant::now();
            let e = c.all_reduce_sum(&mut buf).unwrap_err();
            (e, t.elapsed())
        });
        let (e, el) = &r[1 - staller];
        assert!(
            matches!(e, CommError::Timeout { peer, .. } if *peer == staller),
            "staller {staller}: {e:?}"
        );
        assert!(within_op_timeout(*el), "staller {staller}: took {el:?}");
        // The late rank reads the abort its partner sent before close_notify.
        let (e, _) = &r[staller];
        assert!(
            matches!(e, CommError::Aborted { by, .. } if *by == 1 - staller),
            "staller {staller}: {e:?}"
        );
    }
}

#[test]
fn tls_mismatch_aborts_every_rank_promptly() {
    let t = Instant::now();
    let results = run_tls_group(3, OP, |rank, mut c| {
        let mut ok = vec![1.0f32; 64];
        c.all_reduce_sum(&mut ok).unwrap();
        let mut buf = vec![1.0f32; if rank == 2 { 10 } else { 12 }];
        let err = c.all_reduce_sum(&mut buf).unwrap_err();
        (err, c.barrier().unwrap_err())
    });
    assert!(t.elapsed() < OP, "a mismatch must fail fast");
    for (rank, (err, after)) in results.iter().enumerate() {
        assert!(
            matches!(err, CommError::Protocol(_)),
            "rank {rank}: {err:?}"
        );
        assert!(
            matches!(after, CommError::Poisoned(_)),
            "rank {rank}: {after:?}"
        );
    }
}
