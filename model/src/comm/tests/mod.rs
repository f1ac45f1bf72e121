//! Tests of the collectives: [`ops`] checks results, [`failures`] protocol errors and dead or stalled peers,
//! [`formation`] the handshake and group formation, [`tls`] all of that over mutual TLS.

mod failures;
mod formation;
mod ops;
mod tls;

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
    group_with(n, op_timeout, None, f)
}

/// [`group`], over mutual TLS when `tls` is given (every rank with the same settings).
fn group_with<R, F>(n: usize, op_timeout: Duration, tls: Option<&CommTls>, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(&mut TcpComm) -> R + Sync,
{
    let out: Vec<(R, TcpComm)> = owned_group(n, op_timeout, tls, |rank, mut comm| {
        assert_eq!(comm.rank(), rank);
        assert_eq!(comm.world_size(), n);
        (f(&mut comm), comm)
    });
    out.into_iter().map(|(r, _)| r).collect()
}

/// Forms a group of `n` ranks on threads (over mutual TLS when `tls` is given) and runs `f(rank, comm)` on each;
/// `f` owns the communicator, so it can drop it. Returns the results in rank order.
fn owned_group<R, F>(n: usize, op_timeout: Duration, tls: Option<&CommTls>, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize, TcpComm) -> R + Sync,
{
    let (ls, addrs) = listeners(n);
    thread::scope(|s| {
        let handles: Vec<_> = ls
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                let (addrs, f) = (&addrs, &f);
                s.spawn(move || {
                    let cfg = config(rank, addrs, op_timeout);
                    f(
                        rank,
                        TcpComm::connect_with_tls(l, cfg, SESSION, tls).unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Op timeout of the dead / stalled peer tests.
const SHORT: Duration = Duration::from_millis(500);

/// Bound on how long a rank may take to notice a dead or stalled peer.
fn within_op_timeout(elapsed: Duration) -> bool {
    elapsed < SHORT + Duration::from_millis(400)
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
