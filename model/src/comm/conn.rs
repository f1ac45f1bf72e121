//! [`Conn`]: one blocking TCP connection of a [`TcpComm`](super::TcpComm) group, framing collective messages.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::wire::{from_le_in_place, Header, HEADER_LEN};
use super::CommError;

/// Read-buffer size per connection: a header plus a typical activation payload arrive in one `read` call.
const READ_BUF: usize = 256 * 1024;

/// One connection: on rank 0 to a rank > 0, on a rank > 0 to rank 0.
#[derive(Debug)]
pub(super) struct Conn {
    pub peer: usize,
    pub reader: BufReader<TcpStream>,
    /// False while (and after a failed) write: the outgoing stream may not be at a message boundary, so no abort
    /// may be sent on it.
    pub tx_clean: bool,
}

impl Conn {
    pub fn new(peer: usize, stream: TcpStream, op_timeout: Duration) -> Result<Self, CommError> {
        let io = |source| CommError::Io { peer, source };
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(op_timeout)).map_err(io)?;
        stream.set_write_timeout(Some(op_timeout)).map_err(io)?;
        Ok(Conn {
            peer,
            reader: BufReader::with_capacity(READ_BUF, stream),
            tx_clean: true,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn send(
        &mut self,
        header: &Header,
        payload: &[u8],
        op: &'static str,
        after: Duration,
    ) -> Result<(), CommError> {
        let h = header.encode();
        let mut bufs = [IoSlice::new(&h), IoSlice::new(payload)];
        self.tx_clean = false;
        write_all_vectored(self.stream(), &mut bufs)
            .map_err(|e| map_io(e, op, self.peer, after))?;
        self.tx_clean = true;
        Ok(())
    }

    pub fn recv_header(&mut self, op: &'static str, after: Duration) -> Result<Header, CommError> {
        let mut b = [0u8; HEADER_LEN];
        self.reader
            .read_exact(&mut b)
            .map_err(|e| map_io(e, op, self.peer, after))?;
        Header::decode(&b).ok_or_else(|| {
            CommError::Protocol(format!(
                "{op}: rank {} sent a message with a bad magic number",
                self.peer
            ))
        })
    }

    pub fn recv_f32(
        &mut self,
        dst: &mut [f32],
        op: &'static str,
        after: Duration,
    ) -> Result<(), CommError> {
        self.reader
            .read_exact(bytemuck::cast_slice_mut(dst))
            .map_err(|e| map_io(e, op, self.peer, after))?;
        from_le_in_place(dst);
        Ok(())
    }
}

/// Maps an I/O error of a collective with `peer` to the error kinds callers act on.
pub(super) fn map_io(e: io::Error, op: &'static str, peer: usize, after: Duration) -> CommError {
    use io::ErrorKind as K;
    match e.kind() {
        K::WouldBlock | K::TimedOut => CommError::Timeout { op, peer, after },
        K::UnexpectedEof
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::NotConnected => CommError::PeerClosed { peer },
        _ => CommError::Io { peer, source: e },
    }
}

fn write_all_vectored(mut w: &TcpStream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
