//! Group formation for [`TcpComm`](super::TcpComm): rank 0 accepts and verifies a connection from every other rank
//! (TLS handshake if configured, then hello / reply), the others dial rank 0 and wait for the group confirmation.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::conn::{map_io, Conn, Link};
use super::tls::{tls_error, TlsLink};
use super::wire::{Hello, Reply, Status, HELLO_LEN, REPLY_LEN, VERSION};
use super::{CommError, CommTls, TcpCommConfig};

/// Longest rank 0 waits for a freshly accepted connection to complete TLS and send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between accept polls (group formation only).
const ACCEPT_POLL: Duration = Duration::from_millis(1);
/// Pause between connection attempts to rank 0.
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// First bytes of a TLS handshake record (a ClientHello) and of a TLS alert record.
const TLS_HANDSHAKE: [u8; 2] = [0x16, 0x03];
const TLS_ALERT: [u8; 2] = [0x15, 0x03];

/// What rank 0 makes of one accepted connection.
enum Admission {
    /// Rank `.0` of the group.
    Admitted(usize, Link),
    /// Rejected or dropped (logged).
    Refused,
    /// Dropped because TLS failed (logged); kept for the error if the group then fails to form.
    TlsFailed(String),
}

/// Rank 0: accepts and verifies a connection from every other rank, then confirms the group to all of them.
pub(super) fn accept_all(
    listener: &TcpListener,
    config: &TcpCommConfig,
    session: u64,
    tls: Option<&CommTls>,
) -> Result<Vec<Conn>, CommError> {
    let deadline = Instant::now() + config.connect_timeout;
    let world = config.world_size;
    listener
        .set_nonblocking(true)
        .map_err(CommError::Listener)?;
    let mut slots: Vec<Option<Link>> = (0..world).map(|_| None).collect();
    let mut missing = world - 1;
    let mut tls_failure = None;
    let failure = loop {
        if missing == 0 {
            break None;
        }
        match listener.accept() {
            Ok((stream, addr)) => match admit(stream, addr, config, session, &slots, deadline, tls)
            {
                Admission::Admitted(rank, link) => {
                    slots[rank] = Some(link);
                    missing -= 1;
                }
                Admission::Refused => {}
                Admission::TlsFailed(why) => tls_failure = Some(format!("{addr} {why}")),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let peer = (1..world).find(|&r| slots[r].is_none()).unwrap_or(1);
                    break Some(formation_timeout(peer, config.connect_timeout, tls_failure));
                }
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(e) if is_transient_accept_error(&e) => {}
            Err(e) => break Some(CommError::Listener(e)),
        }
    };
    if let Some(err) = failure {
        warn!(error = %err, "tcp communicator: group formation failed");
        for link in slots.iter_mut().flatten() {
            let _ = send_reply(link, Status::GroupFailed, config, session);
        }
        return Err(err);
    }
    let mut conns = Vec::with_capacity(world - 1);
    for (rank, link) in slots.into_iter().enumerate().skip(1) {
        let mut link = link.expect("all ranks admitted");
        link.socket()
            .set_write_timeout(Some(config.op_timeout))
            .map_err(|source| CommError::Io { peer: rank, source })?;
        send_reply(&mut link, Status::Ok, config, session)
            .map_err(|e| map_io(e, "handshake", rank, config.op_timeout))?;
        conns.push(Conn::new(rank, link, config.op_timeout)?);
    }
    Ok(conns)
}

/// Rank 0's error when `peer` (the first missing rank) did not join in time: a TLS error naming the last connection
/// that failed TLS, if any (most likely the missing rank with the wrong certificate, CA or mode), else a timeout.
fn formation_timeout(peer: usize, after: Duration, tls_failure: Option<String>) -> CommError {
    match tls_failure {
        None => CommError::Timeout {
            op: "connect",
            peer,
            after,
        },
        Some(why) => CommError::Tls {
            peer,
            message: format!(
                "rank {peer} did not join within {after:?}; the connection from {why}"
            ),
        },
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::Interrupted | K::ConnectionAborted | K::ConnectionReset
    )
}

/// Rank 0: completes TLS (if configured), reads and checks the hello of a freshly accepted connection. Rejected or
/// broken connections are answered (if possible) and dropped.
fn admit(
    stream: TcpStream,
    addr: SocketAddr,
    config: &TcpCommConfig,
    session: u64,
    slots: &[Option<Link>],
    deadline: Instant,
    tls: Option<&CommTls>,
) -> Admission {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(1), HELLO_TIMEOUT);
    let mut link = match open(stream, wait, tls) {
        Ok(link) => link,
        Err(e) => match tls_error(&e) {
            Some(t) => {
                warn!(%addr, error = %t, "tcp communicator: dropping a connection that failed TLS");
                return Admission::TlsFailed(format!("failed the TLS handshake: {t}"));
            }
            None => {
                warn!(%addr, error = %e, "tcp communicator: dropping a connection that completed no handshake");
                return Admission::Refused;
            }
        },
    };
    let mut bytes = [0u8; HELLO_LEN];
    if let Err(e) = link.read_exact(&mut bytes) {
        warn!(%addr, error = %e, "tcp communicator: dropping a connection that sent no hello");
        return Admission::Refused;
    }
    let Some(hello) = Hello::decode(&bytes) else {
        if !link.is_tls() && bytes.starts_with(&TLS_HANDSHAKE) {
            warn!(%addr, "tcp communicator: dropping a TLS client (this rank's collective is plaintext)");
            return Admission::TlsFailed(
                "started a TLS handshake, but this rank's collective is plaintext".into(),
            );
        }
        warn!(%addr, "tcp communicator: dropping a connection that is not a weft collective peer");
        return Admission::Refused;
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
        debug!(%addr, rank, tls = link.is_tls(), "tcp communicator: rank connected");
        return Admission::Admitted(rank, link);
    };
    warn!(
        %addr,
        claimed_rank = hello.rank,
        claimed_session = hello.session,
        reason = status.describe(),
        "tcp communicator: rejecting handshake"
    );
    let _ = send_reply(&mut link, status, config, session);
    Admission::Refused
}

/// Rank 0: blocking I/O bounded by `wait` on a freshly accepted connection, and the TLS handshake if configured.
fn open(stream: TcpStream, wait: Duration, tls: Option<&CommTls>) -> io::Result<Link> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(wait))?;
    stream.set_write_timeout(Some(wait))?;
    match tls {
        None => Ok(Link::plain(stream)),
        Some(t) => {
            let mut link = t.accept(stream)?;
            link.handshake()?;
            Ok(Link::Tls(Box::new(link)))
        }
    }
}

fn send_reply(
    link: &mut Link,
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
    link.write_all(&reply.encode())
}

/// Rank > 0: connects to rank 0 (retrying), completes TLS if configured, says hello and waits for the group
/// confirmation.
pub(super) fn connect_to_root(
    config: &TcpCommConfig,
    session: u64,
    tls: Option<&CommTls>,
) -> Result<Conn, CommError> {
    let addr = config.peers[0];
    let timeout = config.connect_timeout;
    let stream = dial(addr, timeout)?;
    let hs = |e: io::Error| map_io(e, "handshake", 0, timeout);
    stream.set_nodelay(true).map_err(hs)?;
    // Rank 0 confirms only once every rank has connected: wait up to a full connect_timeout for that.
    stream.set_read_timeout(Some(timeout)).map_err(hs)?;
    stream.set_write_timeout(Some(timeout)).map_err(hs)?;
    let mut link = match tls {
        None => Link::plain(stream),
        Some(t) => Link::Tls(Box::new(tls_handshake(t, stream, addr, timeout)?)),
    };
    let hello = Hello {
        version: VERSION,
        rank: config.rank as u32,
        world_size: config.world_size as u32,
        session,
    };
    link.write_all(&hello.encode()).map_err(hs)?;
    let b = read_reply(&mut link, addr, timeout)?;
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
    Conn::new(0, link, config.op_timeout)
}

/// Rank > 0: connects to rank 0, retrying until `timeout` since ranks start at different times.
fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, CommError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CommError::Timeout {
                op: "connect",
                peer: 0,
                after: timeout,
            });
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok(s),
            Err(e) => {
                debug!(%addr, error = %e, "tcp communicator: rank 0 not reachable yet; retrying");
                std::thread::sleep(
                    CONNECT_RETRY.min(deadline.saturating_duration_since(Instant::now())),
                );
            }
        }
    }
}

/// Rank > 0: the TLS handshake with rank 0 (rank 0's certificate checked). Under TLS 1.3 rank 0 checks this rank's
/// certificate after the client's side of the handshake is done: a refusal arrives as an alert in place of the
/// reply.
fn tls_handshake(
    tls: &CommTls,
    stream: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TlsLink, CommError> {
    let failed = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CommError::Timeout {
            op: "handshake",
            peer: 0,
            after: timeout,
        },
        _ => CommError::Tls {
            peer: 0,
            message: match tls_error(&e) {
                Some(t) => format!("TLS handshake with {addr} failed: {t}"),
                None => format!(
                    "TLS handshake with {addr} failed: {e} (is rank 0's collective plaintext?)"
                ),
            },
        },
    };
    let mut link = tls.dial(stream, addr.ip()).map_err(failed)?;
    link.handshake().map_err(failed)?;
    Ok(link)
}

/// Rank > 0: reads rank 0's reply. A plaintext rank whose rank 0 runs TLS gets a TLS alert instead: say so.
fn read_reply(
    link: &mut Link,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<[u8; REPLY_LEN], CommError> {
    let mut b = [0u8; REPLY_LEN];
    let mut got = 0;
    let err = loop {
        if got == REPLY_LEN {
            return Ok(b);
        }
        match link.read(&mut b[got..]) {
            Ok(0) => break io::Error::from(io::ErrorKind::UnexpectedEof),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break e,
        }
    };
    if !link.is_tls() && b[..got].starts_with(&TLS_ALERT) {
        return Err(CommError::Tls {
            peer: 0,
            message: format!(
                "rank 0 at {addr} answered with a TLS alert: its collective runs over TLS, this rank's is plaintext"
            ),
        });
    }
    Err(map_io(err, "handshake", 0, timeout))
}
