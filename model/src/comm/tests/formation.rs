//! Group formation: the handshake, stray and stale connections, connect timeouts and retries, invalid configs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::comm::wire::{Hello, Reply, Status, REPLY_LEN, VERSION};

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
