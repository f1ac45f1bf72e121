//! Wire format of [`super::TcpComm`]: the handshake messages and the per-message header. All integers and f32
//! payloads are little-endian.

use std::borrow::Cow;

/// Protocol version, checked in the handshake.
pub(super) const VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------------------------------
// Handshake

const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"WEFTHELO");
const REPLY_MAGIC: u64 = u64::from_le_bytes(*b"WEFTRPLY");
pub(super) const HELLO_LEN: usize = 28;
pub(super) const REPLY_LEN: usize = 28;

/// Sent by a rank > 0 to rank 0 right after connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hello {
    pub version: u32,
    pub rank: u32,
    pub world_size: u32,
    pub session: u64,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..8].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.rank.to_le_bytes());
        b[16..20].copy_from_slice(&self.world_size.to_le_bytes());
        b[20..28].copy_from_slice(&self.session.to_le_bytes());
        b
    }

    /// `None` if the bytes are not a hello of this protocol.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Option<Self> {
        (u64_at(b, 0) == HELLO_MAGIC).then(|| Hello {
            version: u32_at(b, 8),
            rank: u32_at(b, 12),
            world_size: u32_at(b, 16),
            session: u64_at(b, 20),
        })
    }
}

/// Rank 0's answer to a [`Hello`]. A rejection is sent right away; the acceptance only once every rank has
/// connected, so that `connect` returns on all ranks at about the same time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Ok = 0,
    WrongSession = 1,
    WrongWorldSize = 2,
    BadRank = 3,
    DuplicateRank = 4,
    WrongVersion = 5,
    GroupFailed = 6,
}

impl Status {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::WrongSession,
            2 => Status::WrongWorldSize,
            3 => Status::BadRank,
            4 => Status::DuplicateRank,
            5 => Status::WrongVersion,
            6 => Status::GroupFailed,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Status::Ok => "accepted",
            Status::WrongSession => "wrong session token",
            Status::WrongWorldSize => "wrong world size",
            Status::BadRank => "rank out of range",
            Status::DuplicateRank => "another connection already holds this rank",
            Status::WrongVersion => "protocol version mismatch",
            Status::GroupFailed => "rank 0 failed to form the group",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reply {
    pub version: u32,
    pub status: Status,
    pub world_size: u32,
    pub session: u64,
}

impl Reply {
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[0..8].copy_from_slice(&REPLY_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(self.status as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.world_size.to_le_bytes());
        b[20..28].copy_from_slice(&self.session.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; REPLY_LEN]) -> Option<Self> {
        if u64_at(b, 0) != REPLY_MAGIC {
            return None;
        }
        Some(Reply {
            version: u32_at(b, 8),
            status: Status::from_u32(u32_at(b, 12))?,
            world_size: u32_at(b, 16),
            session: u64_at(b, 20),
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Collective messages

const MSG_MAGIC: u32 = u32::from_le_bytes(*b"WFTC");
pub(super) const HEADER_LEN: usize = 40;

/// Longest abort reason sent or accepted, in bytes.
pub(super) const MAX_REASON: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpCode {
    AllReduceSum = 1,
    AllGather = 2,
    Broadcast = 3,
    Barrier = 4,
    /// The sender (or, relayed by rank 0, rank `from`) failed; the payload is a UTF-8 reason.
    Abort = 0xff,
}

impl OpCode {
    pub fn name(self) -> &'static str {
        match self {
            OpCode::AllReduceSum => "all_reduce_sum",
            OpCode::AllGather => "all_gather",
            OpCode::Broadcast => "broadcast",
            OpCode::Barrier => "barrier",
            OpCode::Abort => "abort",
        }
    }

    pub fn name_of(raw: u16) -> Cow<'static, str> {
        match raw {
            1 => Cow::Borrowed("all_reduce_sum"),
            2 => Cow::Borrowed("all_gather"),
            3 => Cow::Borrowed("broadcast"),
            4 => Cow::Borrowed("barrier"),
            0xff => Cow::Borrowed("abort"),
            other => Cow::Owned(format!("unknown op {other}")),
        }
    }
}

/// `kind` of an abort whose cause is a protocol mismatch (the receivers report [`super::CommError::Protocol`]).
pub(super) const ABORT_PROTOCOL: u16 = 1;
/// `kind` of any other abort (the receivers report [`super::CommError::Aborted`]).
pub(super) const ABORT_OTHER: u16 = 2;

/// Header of every message after the handshake. A request (rank > 0 to rank 0) and the response describe the
/// collective the sender is executing; the receiver checks every field against its own call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub op: u16,
    /// Abort kind; 0 otherwise.
    pub kind: u16,
    /// Broadcast root; 0 otherwise.
    pub root: u32,
    /// Sending rank (for a relayed abort: the rank that failed first).
    pub from: u32,
    /// Per-communicator collective counter, identical on every rank.
    pub seq: u64,
    /// The collective's length argument (buf / local length).
    pub len: u64,
    /// Number of payload elements (f32) that follow; bytes for an abort.
    pub payload: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MSG_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&self.op.to_le_bytes());
        b[6..8].copy_from_slice(&self.kind.to_le_bytes());
        b[8..12].copy_from_slice(&self.root.to_le_bytes());
        b[12..16].copy_from_slice(&self.from.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b[32..40].copy_from_slice(&self.payload.to_le_bytes());
        b
    }

    /// `None` if the magic is wrong (the stream is not at a message boundary, or not this protocol).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Option<Self> {
        (u32_at(b, 0) == MSG_MAGIC).then(|| Header {
            op: u16::from_le_bytes([b[4], b[5]]),
            kind: u16::from_le_bytes([b[6], b[7]]),
            root: u32_at(b, 8),
            from: u32_at(b, 12),
            seq: u64_at(b, 16),
            len: u64_at(b, 24),
            payload: u64_at(b, 32),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

// ---------------------------------------------------------------------------------------------------------------
// f32 payloads

/// The little-endian bytes of `buf` (borrowed on little-endian targets).
pub(super) fn le_bytes(buf: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(buf))
    } else {
        Cow::Owned(buf.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// Converts f32s just read as little-endian bytes into native order (a no-op on little-endian targets).
pub(super) fn from_le_in_place(buf: &mut [f32]) {
    if cfg!(target_endian = "big") {
        for x in buf {
            *x = f32::from_bits(u32::from_le(x.to_bits()));
        }
    }
}

/// Truncates `s` to at most `max` bytes on a char boundary.
pub(super) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
