//! [`Conn`]: one blocking connection of a [`TcpComm`](super::TcpComm) group (plain TCP or TLS over TCP), framing
//! collective messages.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use super::tls::{tls_error, TlsLink};
use super::wire::{from_le_in_place, Header, HEADER_LEN};
use super::CommError;

/// Read-buffer size per connection: a header plus a typical activation payload arrive in one `read` call.
pub(super) const READ_BUF: usize = 256 * 1024;

/// The byte stream under a [`Conn`]: plain TCP, or TLS over TCP. Reads are buffered either way (for TLS, below
/// the record layer); timeouts are the socket's.
#[derive(Debug)]
pub(super) enum Link {
    Plain(BufReader<TcpStream>),
    Tls(Box<TlsLink>),
}

impl Link {
    pub fn plain(stream: TcpStream) -> Self {
        Link::Plain(BufReader::with_capacity(READ_BUF, stream))
    }

    pub fn socket(&self) -> &TcpStream {
        match self {
            Link::Plain(r) => r.get_ref(),
            Link::Tls(t) => t.socket(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Link::Tls(_))
    }

    pub fn write_all_vectored(&mut self, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        match self {
            Link::Plain(r) => write_all_vectored(r.get_ref(), bufs),
            Link::Tls(t) => t.write_all_vectored(bufs),
        }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all_vectored(&mut [IoSlice::new(bytes)])
    }

    /// Whether bytes from the peer are already buffered (never blocks).
    pub fn has_pending(&mut self) -> io::Result<bool> {
        match self {
            Link::Plain(r) => Ok(!r.buffer().is_empty()),
            Link::Tls(t) => t.has_pending(),
        }
    }

    /// Ends the outgoing stream: close_notify first under TLS if `clean`, then a FIN. The read side stays open.
    pub fn close_write(&mut self, clean: bool) {
        match self {
            Link::Plain(r) => {
                let _ = r.get_ref().shutdown(Shutdown::Write);
            }
            Link::Tls(t) => t.close_write(clean),
        }
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(r) => r.read(buf),
            Link::Tls(t) => t.read(buf),
        }
    }
}

/// One connection: on rank 0 to a rank > 0, on a rank > 0 to rank 0.
#[derive(Debug)]
pub(super) struct Conn {
    pub peer: usize,
    link: Link,
    /// False while (and after a failed) write: the outgoing stream may not be at a message boundary, so no abort
    /// may be sent on it.
    pub tx_clean: bool,
}

impl Conn {
    pub fn new(peer: usize, link: Link, op_timeout: Duration) -> Result<Self, CommError> {
        let io = |source| CommError::Io { peer, source };
        let stream = link.socket();
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(op_timeout)).map_err(io)?;
        stream.set_write_timeout(Some(op_timeout)).map_err(io)?;
        Ok(Conn {
            peer,
            link,
            tx_clean: true,
        })
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
        self.link
            .write_all_vectored(&mut bufs)
            .map_err(|e| map_io(e, op, self.peer, after))?;
        self.tx_clean = true;
        Ok(())
    }

    pub fn recv_header(&mut self, op: &'static str, after: Duration) -> Result<Header, CommError> {
        let mut b = [0u8; HEADER_LEN];
        self.recv_bytes(&mut b, op, after)?;
        Header::decode(&b).ok_or_else(|| {
            CommError::Protocol(format!(
                "{op}: rank {} sent a message with a bad magic number",
                self.peer
            ))
        })
    }

    pub fn recv_bytes(
        &mut self,
        dst: &mut [u8],
        op: &'static str,
        after: Duration,
    ) -> Result<(), CommError> {
        self.link
            .read_exact(dst)
            .map_err(|e| map_io(e, op, self.peer, after))
    }

    pub fn recv_f32(
        &mut self,
        dst: &mut [f32],
        op: &'static str,
        after: Duration,
    ) -> Result<(), CommError> {
        self.recv_bytes(bytemuck::cast_slice_mut(dst), op, after)?;
        from_le_in_place(dst);
        Ok(())
    }

    /// Whether the peer already sent more than was read (never blocks).
    pub fn has_pending(&mut self, op: &'static str, after: Duration) -> Result<bool, CommError> {
        self.link
            .has_pending()
            .map_err(|e| map_io(e, op, self.peer, after))
    }

    /// Ends the outgoing stream after an abort (close_notify under TLS when the stream is at a message boundary).
    pub fn close_write(&mut self) {
        self.link.close_write(self.tx_clean);
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
        _ => match tls_error(&e) {
            Some(t) => CommError::Tls {
                peer,
                message: format!("{op}: {t}"),
            },
            None => CommError::Io { peer, source: e },
        },
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
