//! [`TcpComm`]: collectives over TCP between CPU ranks, star topology centred on rank 0.
//!
//! Every collective is two phases: each rank > 0 sends a *request* (header + its data, if the op needs any) to rank
//! 0; rank 0 reads the requests in rank order, checks each header against its own call, computes the result and
//! sends a *response* (header + data) to every rank > 0. Because ranks > 0 only write and then read, and rank 0
//! first reads everything and then writes, no two sides ever block on full socket buffers against each other.
//!
//! With [`CommTls`] every connection is mutual TLS (rank 0 the server, the others clients); the protocol inside is
//! the same.
//!
//! All-reduce sums in rank order in f32 on rank 0 (`((b0 + b1) + b2) + ...`, element-wise) and ships the result
//! bits, so every rank holds bit-identical values.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::conn::Conn;
use super::handshake::{accept_all, connect_to_root};
use super::wire::{
    le_bytes, truncate_utf8, Header, OpCode, ABORT_OTHER, ABORT_PROTOCOL, MAX_REASON,
};
use super::{check_gather_len, check_root, CommError, CommTls, Communicator};

/// Default [`TcpCommConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`TcpCommConfig::op_timeout`].
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct TcpCommConfig {
    pub rank: usize,
    pub world_size: usize,
    /// Listener addresses indexed by rank, including this rank. With the star topology only `peers[0]` is dialled;
    /// the others are checked for count only.
    pub peers: Vec<SocketAddr>,
    /// Bounds each phase of group formation: rank 0 waits this long for all ranks to connect; a rank > 0 retries
    /// connecting to rank 0 this long, then waits as long again for rank 0 to confirm the whole group.
    pub connect_timeout: Duration,
    /// Bound on every blocking read or write inside a collective, i.e. on how long a rank waits for the slowest
    /// other rank to arrive at the same collective. Must exceed the compute skew between ranks.
    pub op_timeout: Duration,
}

impl TcpCommConfig {
    /// `world_size = peers.len()` and the default timeouts.
    pub fn new(rank: usize, peers: Vec<SocketAddr>) -> Self {
        TcpCommConfig {
            rank,
            world_size: peers.len(),
            peers,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            op_timeout: DEFAULT_OP_TIMEOUT,
        }
    }

    fn validate(&self) -> Result<(), CommError> {
        if self.world_size == 0 {
            return Err(CommError::InvalidArgument(
                "world_size must be at least 1".into(),
            ));
        }
        if self.rank >= self.world_size {
            return Err(CommError::InvalidRank {
                rank: self.rank,
                world_size: self.world_size,
            });
        }
        if u32::try_from(self.world_size).is_err() {
            return Err(CommError::InvalidArgument(format!(
                "world_size {} is too large",
                self.world_size
            )));
        }
        if self.peers.len() != self.world_size {
            return Err(CommError::InvalidArgument(format!(
                "{} peer addresses for world size {}",
                self.peers.len(),
                self.world_size
            )));
        }
        if self.connect_timeout.is_zero() || self.op_timeout.is_zero() {
            return Err(CommError::InvalidArgument(
                "connect_timeout and op_timeout must be non-zero".into(),
            ));
        }
        Ok(())
    }
}

/// One collective call as every rank must issue it.
#[derive(Clone, Copy, Debug)]
struct Call {
    op: OpCode,
    seq: u64,
    len: usize,
    root: usize,
}

impl Call {
    /// Elements a rank sends to rank 0.
    fn request_payload(&self, from: usize) -> usize {
        match self.op {
            OpCode::AllReduceSum | OpCode::AllGather => self.len,
            OpCode::Broadcast if from == self.root => self.len,
            _ => 0,
        }
    }

    /// Elements rank 0 sends to rank `to`.
    fn response_payload(&self, to: usize, world_size: usize) -> usize {
        match self.op {
            OpCode::AllReduceSum => self.len,
            OpCode::AllGather => self.len * world_size,
            OpCode::Broadcast if to != self.root => self.len,
            _ => 0,
        }
    }

    fn header(&self, from: usize, payload: usize) -> Header {
        Header {
            op: self.op as u16,
            kind: 0,
            root: self.root as u32,
            from: from as u32,
            seq: self.seq,
            len: self.len as u64,
            payload: payload as u64,
        }
    }
}

/// Who failed first and why; forwarded in abort messages.
#[derive(Clone, Debug)]
struct AbortInfo {
    by: usize,
    kind: u16,
    reason: String,
}

/// Collectives over TCP; see the module docs. Build with [`TcpComm::connect`].
pub struct TcpComm {
    rank: usize,
    world_size: usize,
    session: u64,
    op_timeout: Duration,
    /// Rank 0: one per rank 1..world_size, in rank order. Other ranks: the connection to rank 0.
    conns: Vec<Conn>,
    /// Number of collectives started.
    seq: u64,
    /// Rank 0's receive buffer for all-reduce contributions.
    scratch: Vec<f32>,
    /// Set when an abort was received during the current call, so that it is relayed rather than re-originated.
    received_abort: Option<AbortInfo>,
    poisoned: Option<String>,
}

impl std::fmt::Debug for TcpComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpComm")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("session", &self.session)
            .field("seq", &self.seq)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl TcpComm {
    /// `listener` is this rank's already-bound listener (its address is `peers[rank]`). Forms a star around rank 0:
    /// rank 0 accepts a connection from every other rank; the others connect to `peers[0]`, retrying until
    /// `connect_timeout` since ranks start at different times. The handshake checks protocol version, rank, world
    /// size and `session`; rank 0 rejects (and keeps waiting past) stray or stale connections. `connect` returns on
    /// every rank only once the whole group is formed. A rank > 0 drops its listener unused. The connections are
    /// plain TCP: see [`TcpComm::connect_with_tls`].
    pub fn connect(
        listener: TcpListener,
        config: TcpCommConfig,
        session: u64,
    ) -> Result<Self, CommError> {
        Self::connect_with_tls(listener, config, session, None)
    }

    /// [`TcpComm::connect`], over mutual TLS when `tls` is given (every rank of the group must agree): rank 0
    /// accepts only ranks presenting a certificate the cluster CA signed (a connection that fails TLS is dropped
    /// like a stray one, and named in the error if the group then fails to form); a rank > 0 checks rank 0's
    /// certificate against the CA and the IP address of `peers[0]` (or [`CommTls::with_server_name`]'s name). The
    /// handshake and every collective message run inside TLS.
    pub fn connect_with_tls(
        listener: TcpListener,
        config: TcpCommConfig,
        session: u64,
        tls: Option<&CommTls>,
    ) -> Result<Self, CommError> {
        config.validate()?;
        let started = Instant::now();
        let conns = if config.world_size == 1 {
            Vec::new()
        } else if config.rank == 0 {
            accept_all(&listener, &config, session, tls)?
        } else {
            drop(listener);
            vec![connect_to_root(&config, session, tls)?]
        };
        info!(
            rank = config.rank,
            world_size = config.world_size,
            session,
            tls = tls.is_some(),
            elapsed = ?started.elapsed(),
            "tcp communicator connected"
        );
        Ok(TcpComm {
            rank: config.rank,
            world_size: config.world_size,
            session,
            op_timeout: config.op_timeout,
            conns,
            seq: 0,
            scratch: Vec::new(),
            received_abort: None,
            poisoned: None,
        })
    }

    /// The session token the group was formed with.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Whether an earlier error made this communicator unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn begin(&mut self, op: OpCode, len: usize, root: usize) -> Result<Call, CommError> {
        if let Some(p) = &self.poisoned {
            return Err(CommError::Poisoned(p.clone()));
        }
        let call = Call {
            op,
            seq: self.seq,
            len,
            root,
        };
        self.seq += 1;
        Ok(call)
    }

    fn finish(&mut self, call: Call, result: Result<(), CommError>) -> Result<(), CommError> {
        if let Err(e) = &result {
            self.poison(call, e);
        }
        result
    }

    /// Marks the communicator unusable and tells the other ranks (best effort): a rank > 0 tells rank 0 if it
    /// failed first; rank 0 tells every rank except the one that failed first.
    fn poison(&mut self, call: Call, e: &CommError) {
        let info = self.received_abort.take().unwrap_or_else(|| AbortInfo {
            by: self.rank,
            kind: if matches!(e, CommError::Protocol(_)) {
                ABORT_PROTOCOL
            } else {
                ABORT_OTHER
            },
            reason: match e {
                CommError::Protocol(m) => m.clone(),
                other => other.to_string(),
            },
        });
        warn!(rank = self.rank, op = call.op.name(), seq = call.seq, error = %e, "collective failed; communicator poisoned");
        self.poisoned = Some(e.to_string());
        let reason = truncate_utf8(&info.reason, MAX_REASON);
        let header = Header {
            op: OpCode::Abort as u16,
            kind: info.kind,
            root: 0,
            from: info.by as u32,
            seq: call.seq,
            len: 0,
            payload: reason.len() as u64,
        };
        let notify = self.rank == 0 || info.by == self.rank;
        for conn in &mut self.conns {
            if notify && conn.peer != info.by && conn.tx_clean {
                let _ = conn.send(&header, reason.as_bytes(), "abort", self.op_timeout);
            }
            // FIN (after close_notify under TLS) after the abort; the read side stays open so unread data does not
            // turn into a reset that could destroy the abort before the peer reads it.
            conn.close_write();
        }
    }

    /// Reads and checks the header of rank `conns[i].peer`'s request (rank 0) or of rank 0's response (rank > 0).
    fn recv_checked(
        &mut self,
        i: usize,
        call: Call,
        expect_payload: usize,
    ) -> Result<(), CommError> {
        let op = call.op.name();
        let after = self.op_timeout;
        let conn = &mut self.conns[i];
        let peer = conn.peer;
        let h = conn.recv_header(op, after)?;
        if h.op == OpCode::Abort as u16 {
            let n = usize::try_from(h.payload).unwrap_or(usize::MAX);
            if n > MAX_REASON {
                return Err(CommError::Protocol(format!(
                    "{op}: rank {peer} sent an abort with a {n}-byte reason"
                )));
            }
            let mut bytes = vec![0u8; n];
            conn.recv_bytes(&mut bytes, op, after)?;
            let info = AbortInfo {
                by: h.from as usize,
                kind: h.kind,
                reason: String::from_utf8_lossy(&bytes).into_owned(),
            };
            let err = if info.kind == ABORT_PROTOCOL {
                CommError::Protocol(format!("{} (detected by rank {})", info.reason, info.by))
            } else {
                CommError::Aborted {
                    by: info.by,
                    reason: info.reason.clone(),
                }
            };
            self.received_abort = Some(info);
            return Err(err);
        }
        let want = call.header(peer, expect_payload);
        if h == want {
            return Ok(());
        }
        let me = self.rank;
        let mismatch = if h.from != want.from {
            format!(
                "connection to rank {peer} carries a message from rank {}",
                h.from
            )
        } else if h.op != want.op || h.seq != want.seq {
            format!(
                "rank {me} is in {} (collective #{}) but rank {peer} is in {} (collective #{})",
                op,
                call.seq,
                OpCode::name_of(h.op),
                h.seq
            )
        } else if h.len != want.len {
            format!(
                "{op} #{}: length {} on rank {me} but {} on rank {peer}",
                call.seq, call.len, h.len
            )
        } else if h.root != want.root {
            format!(
                "{op} #{}: root {} on rank {me} but {} on rank {peer}",
                call.seq, call.root, h.root
            )
        } else {
            format!(
                "{op} #{}: rank {peer} announced {} payload elements, expected {}",
                call.seq, h.payload, want.payload
            )
        };
        Err(CommError::Protocol(mismatch))
    }

    /// Rank 0, after reading rank `conns[i].peer`'s request: a rank sends nothing more before it has the response
    /// unless it gave up (timeout, local error) and sent an abort. If bytes are already buffered, fail now rather
    /// than complete a collective the other rank has abandoned. Cheap: it only looks at what was already received
    /// (under TLS it decrypts records already in the read buffer).
    fn check_nothing_pending(&mut self, i: usize, call: Call) -> Result<(), CommError> {
        if !self.conns[i].has_pending(call.op.name(), self.op_timeout)? {
            return Ok(());
        }
        self.recv_checked(i, call, call.request_payload(self.conns[i].peer))?;
        Err(CommError::Protocol(format!(
            "{} #{}: rank {} sent a second request before the response",
            call.op.name(),
            call.seq,
            self.conns[i].peer
        )))
    }

    /// Rank > 0: sends this rank's request for `call`.
    fn send_request(&mut self, call: Call, payload: &[f32]) -> Result<(), CommError> {
        debug_assert_eq!(payload.len(), call.request_payload(self.rank));
        let header = call.header(self.rank, payload.len());
        let bytes = le_bytes(payload);
        self.conns[0].send(&header, &bytes, call.op.name(), self.op_timeout)
    }

    /// Rank 0: sends the response for `call` to every rank, `result` to those that receive data.
    fn send_responses(&mut self, call: Call, result: &[f32]) -> Result<(), CommError> {
        let bytes = le_bytes(result);
        for conn in &mut self.conns {
            let n = call.response_payload(conn.peer, self.world_size);
            let payload = if n == 0 { &[][..] } else { &bytes[..] };
            debug_assert_eq!(payload.len(), n * 4);
            conn.send(&call.header(0, n), payload, call.op.name(), self.op_timeout)?;
        }
        Ok(())
    }

    fn all_reduce_inner(&mut self, call: Call, buf: &mut [f32]) -> Result<(), CommError> {
        if self.rank == 0 {
            self.scratch.resize(buf.len(), 0.0);
            for i in 0..self.conns.len() {
                self.recv_checked(i, call, call.len)?;
                self.conns[i].recv_f32(&mut self.scratch, call.op.name(), self.op_timeout)?;
                self.check_nothing_pending(i, call)?;
                for (acc, x) in buf.iter_mut().zip(&self.scratch) {
                    *acc += *x;
                }
            }
            self.send_responses(call, buf)
        } else {
            self.send_request(call, buf)?;
            self.recv_checked(0, call, call.len)?;
            self.conns[0].recv_f32(buf, call.op.name(), self.op_timeout)
        }
    }

    fn all_gather_inner(
        &mut self,
        call: Call,
        local: &[f32],
        out: &mut [f32],
    ) -> Result<(), CommError> {
        check_gather_len(local.len(), out.len(), self.world_size)?;
        let n = local.len();
        if self.rank == 0 {
            out[..n].copy_from_slice(local);
            for i in 0..self.conns.len() {
                self.recv_checked(i, call, n)?;
                let r = self.conns[i].peer;
                self.conns[i].recv_f32(
                    &mut out[r * n..(r + 1) * n],
                    call.op.name(),
                    self.op_timeout,
                )?;
                self.check_nothing_pending(i, call)?;
            }
            self.send_responses(call, out)
        } else {
            self.send_request(call, local)?;
            self.recv_checked(0, call, out.len())?;
            self.conns[0].recv_f32(out, call.op.name(), self.op_timeout)
        }
    }

    fn broadcast_inner(&mut self, call: Call, buf: &mut [f32]) -> Result<(), CommError> {
        check_root(call.root, self.world_size)?;
        if self.rank == 0 {
            for i in 0..self.conns.len() {
                let peer = self.conns[i].peer;
                self.recv_checked(i, call, call.request_payload(peer))?;
                if peer == call.root {
                    self.conns[i].recv_f32(buf, call.op.name(), self.op_timeout)?;
                }
                self.check_nothing_pending(i, call)?;
            }
            self.send_responses(call, buf)
        } else {
            let is_root = self.rank == call.root;
            self.send_request(call, if is_root { buf } else { &[] })?;
            self.recv_checked(0, call, call.response_payload(self.rank, self.world_size))?;
            if !is_root {
                self.conns[0].recv_f32(buf, call.op.name(), self.op_timeout)?;
            }
            Ok(())
        }
    }

    fn barrier_inner(&mut self, call: Call) -> Result<(), CommError> {
        if self.rank == 0 {
            for i in 0..self.conns.len() {
                self.recv_checked(i, call, 0)?;
                self.check_nothing_pending(i, call)?;
            }
            self.send_responses(call, &[])
        } else {
            self.send_request(call, &[])?;
            self.recv_checked(0, call, 0)
        }
    }
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        let call = self.begin(OpCode::AllReduceSum, buf.len(), 0)?;
        let r = self.all_reduce_inner(call, buf);
        self.finish(call, r)
    }

    fn all_gather(&mut self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        let call = self.begin(OpCode::AllGather, local.len(), 0)?;
        let r = self.all_gather_inner(call, local, out);
        self.finish(call, r)
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        let call = self.begin(OpCode::Broadcast, buf.len(), root)?;
        let r = self.broadcast_inner(call, buf);
        self.finish(call, r)
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        let call = self.begin(OpCode::Barrier, 0, 0)?;
        let r = self.barrier_inner(call);
        self.finish(call, r)
    }
}
