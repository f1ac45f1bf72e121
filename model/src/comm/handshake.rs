//! Group formation for [`TcpComm`](super::TcpComm): rank 0 accepts and verifies a connection from every other rank
//! (hello / reply handshake), the others dial rank 0 and wait for the group confirmation.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::conn::{map_io, Conn};
use super::wire::{Hello, Reply, Status, HELLO_LEN, REPLY_LEN, VERSION};
use super::{CommError, TcpCommConfig};

/// Longest rank 0 waits for a freshly accepted connection to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between accept polls (group formation only).
const ACCEPT_POLL: Duration = Duration::from_millis(1);
/// Pause between connection attempts to rank 0.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// Rank 0: accepts and verifies a connection from every other rank, then confirms the group to all of them.
pub(super) fn accept_all(
    listener: &TcpListener,
    config: &TcpCommConfig,
    session: u64,
) -> Result<Vec<Conn>, CommError> {
    let deadline = Instant::now() + config.connect_timeout;
    let world = config.world_size;
    listener
        .set_nonblocking(true)
        .map_err(CommError::Listener)?;
    let mut slots: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    let mut missing = world - 1;
    let failure = loop {
        if missing == 0 {
            break None;
        }
        match listener.accept() {
            Ok((stream, addr)) => {
                if let Some((rank, stream)) = admit(stream, addr, config, session, &slots, deadline)
                {
                    slots[rank] = Some(stream);
                    missing -= 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let peer = (1..world).find(|&r| slots[r].is_none()).unwrap_or(1);
                    break Some(CommError::Timeout {
                        op: "connect",
                        peer,
                        after: config.connect_timeout,
                    });
                }
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(e) if is_transient_accept_error(&e) => {}
            Err(e) => break Some(CommError::Listener(e)),
        }
    };
    if let Some(err) = failure {
        warn!(error = %err, "tcp communicator: group formation failed");
        for stream in slots.iter().flatten() {
            let _ = send_reply(stream, Status::GroupFailed, config, session);
        }
        return Err(err);
    }
    let mut conns = Vec::with_capacity(world - 1);
    for (rank, stream) in slots.into_iter().enumerate().skip(1) {
        let stream = stream.expect("all ranks admitted");
        stream
            .set_write_timeout(Some(config.op_timeout))
            .map_err(|source| CommError::Io { peer: rank, source })?;
        send_reply(&stream, Status::Ok, config, session)
            .map_err(|e| map_io(e, "handshake", rank, config.op_timeout))?;
        conns.push(Conn::new(rank, stream, config.op_timeout)?);
    }
    Ok(conns)
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::Interrupted | K::ConnectionAborted | K::ConnectionReset
    )
}

/// Rank 0: reads and checks the hello of a freshly accepted connection. Returns its rank if admitted; rejected or
/// broken connections are answered (if possible) and dropped.
fn admit(
    stream: TcpStream,
    addr: SocketAddr,
    config: &TcpCommConfig,
    session: u64,
    slots: &[Option<TcpStream>],
    deadline: Instant,
) -> Option<(usize, TcpStream)> {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(1), HELLO_TIMEOUT);
    let setup = || -> io::Result<[u8; HELLO_LEN]> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(wait))?;
        stream.set_write_timeout(Some(wait))?;
        let mut b = [0u8; HELLO_LEN];
        (&stream).read_exact(&mut b)?;
        Ok(b)
    };
    let bytes = match setup() {
        Ok(b) => b,
        Err(e) => {
            warn!(%addr, error = %e, "tcp communicator: dropping a connection that sent no hello");
            return None;
        }
    };
    let Some(hello) = Hello::decode(&bytes) else {
        warn!(%addr, "tcp communicator: dropping a connection that is not a weft collective peer");
        return None;
    };
    let rank = hello.rank as usize;
    let status = if hello.version != VERSION {
        Status::WrongVersion
    } else if hello.session != session {
        Status::WrongSession
    } else if hello.world_size as usize != config.world_size {
        Status::WrongWorldSize
    } else if rank == 0 || rank >= config.world_size {
        Status::BadRank
    } else if slots[rank].is_some() {
        Status::DuplicateRank
    } else {
        debug!(%addr, rank, "tcp communicator: rank connected");
        return Some((rank, stream));
    };
    warn!(
        %addr,
        claimed_rank = hello.rank,
        claimed_session = hello.session,
        reason = status.describe(),
        "tcp communicator: rejecting handshake"
    );
    let _ = send_reply(&stream, status, config, session);
    None
}

fn send_reply(
    mut stream: &TcpStream,
    status: Status,
    config: &TcpCommConfig,
    session: u64,
) -> io::Result<()> {
    let reply = Reply {
        version: VERSION,
        status,
        world_size: config.world_size as u32,
        session,
    };
    stream.write_all(&reply.encode())
}

/// Rank > 0: connects to rank 0 (retrying), says hello and waits for the group confirmation.
pub(super) fn connect_to_root(config: &TcpCommConfig, session: u64) -> Result<Conn, CommError> {
    let addr = config.peers[0];
    let timeout = config.connect_timeout;
    let deadline = Instant::now() + timeout;
    let stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CommError::Timeout {
                op: "connect",
                peer: 0,
                after: timeout,
            });
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => break s,
            Err(e) => {
                debug!(%addr, error = %e, "tcp communicator: rank 0 not reachable yet; retrying");
                std::thread::sleep(
                    CONNECT_RETRY.min(deadline.saturating_duration_since(Instant::now())),
                );
            }
        }
    };
    let hs = |e: io::Error| map_io(e, "handshake", 0, timeout);
    stream.set_nodelay(true).map_err(hs)?;
    // Rank 0 confirms only once every rank has connected: wait up to a full connect_timeout for that.
    stream.set_read_timeout(Some(timeout)).map_err(hs)?;
    stream.set_write_timeout(Some(timeout)).map_err(hs)?;
    let hello = Hello {
        version: VERSION,
        rank: config.rank as u32,
        world_size: config.world_size as u32,
        session,
    };
    (&stream).write_all(&hello.encode()).map_err(hs)?;
    let mut b = [0u8; REPLY_LEN];
    (&stream).read_exact(&mut b).map_err(hs)?;
    let reply = Reply::decode(&b).ok_or_else(|| {
        CommError::Protocol(format!(
            "handshake: {addr} answered with something that is not a reply"
        ))
    })?;
    if reply.status != Status::Ok {
        return Err(CommError::HandshakeRejected {
            peer: 0,
            reason: reply.status.describe().to_string(),
        });
    }
    if reply.version != VERSION
        || reply.session != session
        || reply.world_size as usize != config.world_size
    {
        return Err(CommError::HandshakeRejected {
            peer: 0,
            reason: format!(
                "rank 0 confirmed version {} session {} world size {}, expected {VERSION} {session} {}",
                reply.version, reply.session, reply.world_size, config.world_size
            ),
        });
    }
    Conn::new(0, stream, config.op_timeout)
}
