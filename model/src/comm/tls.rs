//! Mutual TLS for [`TcpComm`](super::TcpComm): the configuration ([`CommTls`]) and the TLS side of one connection
//! ([`TlsLink`]).
//!
//! Rank 0 is the TLS server and requires a client certificate that the cluster CA signed; every other rank is a
//! client that checks rank 0's certificate against the CA and a server name (by default the IP address of rank 0's
//! listener). The hello / reply handshake and every collective message run inside TLS.
//!
//! I/O stays blocking with the socket's read and write timeouts, so a stalled peer still surfaces as
//! `WouldBlock` / `TimedOut` from the socket. Writes bypass [`StreamOwned`]'s `Write` (which swallows transport
//! errors and may turn a blocked write into a blocking read): plaintext is encrypted into rustls' send buffer and
//! written out with [`ConnectionCommon::write_tls`] until it is empty, so a write error or timeout is reported
//! by the write that hit it.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig,
    ServerConnection, SideData, StreamOwned,
};

/// ALPN protocol of the collective: a TLS client of another protocol (a gRPC client dialling a comm port, a rank
/// dialling a gRPC port) fails the TLS handshake instead of exchanging bytes.
const ALPN: &[u8] = b"weft-comm/1";

/// Plaintext bytes rustls encrypts before they are written out: a 256 KiB activation goes out in one vectored
/// system call of 16 records rather than four of the 64 KiB default.
const SEND_BUFFER: usize = 1 << 20;

/// Why TLS material cannot be used for the collective.
#[derive(Debug, thiserror::Error)]
#[error("collective TLS: {0}")]
pub struct CommTlsError(String);

/// Mutual TLS settings of a [`TcpComm`](super::TcpComm) group: the server side (used when this rank is rank 0), the
/// client side (used by the other ranks) and the name to check on rank 0's certificate. Cheap to clone.
#[derive(Clone)]
pub struct CommTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for CommTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl CommTls {
    /// Mutual TLS 1.3 with the ring provider: this rank presents `cert_chain` (PEM, leaf first) with `key` (PEM)
    /// and accepts only peers whose certificate a CA in `ca` (PEM) signed. Rank 0 requires a client certificate.
    pub fn from_pem(cert_chain: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, CommTlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CommTlsError(format!("certificate: bad PEM: {e}")))?;
        if chain.is_empty() {
            return Err(CommTlsError("no certificate in the certificate PEM".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| CommTlsError(format!("private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| CommTlsError(format!("CA: bad PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| CommTlsError(format!("CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(CommTlsError("no certificate in the CA PEM".into()));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = &[&rustls::version::TLS13];
        let cfg = |e: rustls::Error| CommTlsError(e.to_string());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| CommTlsError(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(cfg)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(cfg)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        // Groups are formed rarely: every connection is a full handshake with both certificates checked.
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(cfg)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(cfg)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.resumption = Resumption::disabled();
        Ok(CommTls {
            server: Arc::new(server),
            client: Arc::new(client),
            server_name: None,
        })
    }

    /// Checks rank 0's certificate for `name` (a DNS name, or an IP address literal) instead of the IP address of
    /// rank 0's listener: for certificates that name a service rather than each host.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, CommTlsError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| CommTlsError(format!("server name {name:?}: {e}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// The name rank 0's certificate must carry when rank 0 listens on `root`.
    fn server_name_for(&self, root: IpAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(root.into()))
    }

    /// Rank 0: a server connection over `stream`; the handshake is left to [`TlsLink::handshake`].
    pub(super) fn accept(&self, stream: TcpStream) -> io::Result<TlsLink> {
        let mut conn = ServerConnection::new(self.server.clone()).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(SEND_BUFFER));
        Ok(TlsLink::Server(StreamOwned::new(
            conn,
            BufSock::new(stream),
        )))
    }

    /// Rank > 0: a client connection to rank 0 over `stream`; the handshake is left to [`TlsLink::handshake`].
    pub(super) fn dial(&self, stream: TcpStream, root: IpAddr) -> io::Result<TlsLink> {
        let name = self.server_name_for(root);
        let mut conn =
            ClientConnection::new(self.client.clone(), name).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(SEND_BUFFER));
        Ok(TlsLink::Client(StreamOwned::new(
            conn,
            BufSock::new(stream),
        )))
    }
}

/// The socket under TLS. rustls reads at most a few KiB per call; the buffer turns a large message into few system
/// calls (at the price of one copy of the ciphertext). Writes go straight to the socket.
#[derive(Debug)]
pub(super) struct BufSock(BufReader<TcpStream>);

impl BufSock {
    fn new(stream: TcpStream) -> Self {
        BufSock(BufReader::with_capacity(super::conn::READ_BUF, stream))
    }
}

impl Read for BufSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for BufSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.get_ref().write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.get_ref().write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One TLS connection of a group: rank 0's end (server) or a rank > 0's end (client).
#[derive(Debug)]
pub(super) enum TlsLink {
    Server(StreamOwned<ServerConnection, BufSock>),
    Client(StreamOwned<ClientConnection, BufSock>),
}

/// Runs `$body` with `$s` bound to the `StreamOwned` of either side.
macro_rules! either {
    ($link:expr, $s:ident => $body:expr) => {
        match $link {
            TlsLink::Server($s) => $body,
            TlsLink::Client($s) => $body,
        }
    };
}

impl TlsLink {
    pub fn socket(&self) -> &TcpStream {
        either!(self, s => s.sock.0.get_ref())
    }

    /// Completes the TLS handshake (both certificates checked) within the socket's timeouts.
    pub fn handshake(&mut self) -> io::Result<()> {
        either!(self, s => handshake(s))
    }

    /// Encrypts and writes all of `bufs`.
    pub fn write_all_vectored(&mut self, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        either!(self, s => write_all_vectored(&mut s.conn, &mut s.sock, bufs))
    }

    /// Whether the peer has sent anything not read yet, looking only at what was already received (never blocks).
    pub fn has_pending(&mut self) -> io::Result<bool> {
        either!(self, s => has_pending(&mut s.conn, &mut s.sock))
    }

    /// Sends close_notify (only when `clean`: the outgoing stream is at a message boundary) and shuts the
    /// socket's write side.
    pub fn close_write(&mut self, clean: bool) {
        either!(self, s => {
            if clean {
                s.conn.send_close_notify();
                let _ = flush(&mut s.conn, &mut s.sock);
            }
            let _ = s.sock.0.get_ref().shutdown(Shutdown::Write);
        })
    }
}

impl Read for TlsLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        either!(self, s => s.read(buf))
    }
}

fn handshake<C, S>(s: &mut StreamOwned<C, BufSock>) -> io::Result<()>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    while s.conn.is_handshaking() {
        let (read, written) = s.conn.complete_io(&mut s.sock)?;
        if read == 0 && written == 0 && s.conn.is_handshaking() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    flush(&mut s.conn, &mut s.sock)
}

fn write_all_vectored<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    sock: &mut BufSock,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = conn.writer().write_vectored(bufs)?;
        if n == 0 && !conn.wants_write() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
        if bufs.is_empty() || n == 0 {
            flush(conn, sock)?;
        }
    }
    Ok(())
}

/// Writes out every TLS record rustls has queued.
fn flush<S: SideData>(conn: &mut ConnectionCommon<S>, sock: &mut BufSock) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn has_pending<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    sock: &mut BufSock,
) -> io::Result<bool> {
    loop {
        let state = conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
            return Ok(true);
        }
        if sock.0.buffer().is_empty() {
            return Ok(false);
        }
        // Served from the buffer: no system call, no blocking.
        if conn.read_tls(sock)? == 0 {
            return Ok(true);
        }
    }
}

/// The rustls error inside an I/O error from a TLS connection, if that is what it is.
pub(super) fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}
