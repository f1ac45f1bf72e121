//! Mutual TLS on the cluster API (coordinator <-> workers).
//!
//! With `--tls-cert`, `--tls-key` and `--tls-ca`, every cluster connection
//! is TLS in both directions: each side presents its certificate and
//! accepts only peers whose certificate the cluster CA signed. On top of
//! that a worker serves its `Worker` RPCs (load, step, health, shutdown)
//! only to the coordinator: the client certificate must be exactly the one
//! given with `--coordinator-cert`. `scripts/make-test-certs.sh` makes a
//! test CA and certificates.
//!
//! The collective between CPU ranks (activations) then runs over mutual TLS
//! too, with the same certificate, key and CA: rank 0 admits only ranks
//! presenting a certificate the CA signed, and the other ranks check that
//! rank 0's certificate names the IP address of rank 0's comm listener (or
//! `--comm-tls-name`). `--comm-plaintext` keeps the collective in clear.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tonic::{Request, Status};
use weft_model::comm::CommTls;

/// The TLS flags shared by the coordinator and the workers.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// This process's certificate (PEM) for mutual TLS on the cluster API;
    /// needs --tls-key and --tls-ca.
    #[arg(long, env = "WEFT_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM). Only the path is given here, never the key.
    #[arg(long, env = "WEFT_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed.
    #[arg(long, env = "WEFT_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
}

/// TLS on the collective between CPU ranks (with cluster TLS only).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CommTlsArgs {
    /// With cluster TLS: the name rank 0's certificate must carry on the
    /// collective (a DNS name, e.g. a service's) instead of the IP address
    /// of rank 0's comm listener, for certificates that do not name each
    /// host.
    #[arg(long, env = "WEFT_COMM_TLS_NAME", requires = "tls_cert")]
    pub comm_tls_name: Option<String>,
    /// With cluster TLS: keep the collective between ranks in clear anyway
    /// (activations, which reveal prompts, cross the network unencrypted,
    /// and any host that reaches a comm port may try to join a group).
    #[arg(long, env = "WEFT_COMM_PLAINTEXT", default_value_t = false)]
    pub comm_plaintext: bool,
}

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// The first certificate of a PEM file, in DER.
pub fn cert_der(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(path)?;
    let cert = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| TlsError::File {
            path: path.to_owned(),
            message: "no certificate in the file".into(),
        })?
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            message: format!("bad PEM: {e:?}"),
        })?;
    Ok(cert.as_ref().to_vec())
}

/// Loaded TLS material of one process.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    identity: Identity,
    ca: Certificate,
    /// The files, for handing on to local workers.
    pub args: TlsArgs,
}

impl ClusterTls {
    /// `None` when the flags ask for no TLS.
    pub fn load(args: &TlsArgs) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca)
        else {
            return Ok(None);
        };
        // Fail early on a file that is not a certificate.
        cert_der(cert)?;
        cert_der(ca)?;
        Ok(Some(Self {
            identity: Identity::from_pem(read(cert)?, read(key)?),
            ca: Certificate::from_pem(read(ca)?),
            args: args.clone(),
        }))
    }

    /// A server that requires a client certificate signed by the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// Mutual TLS for the collective between ranks, from the same files;
    /// `name` overrides the name checked on rank 0's certificate.
    pub fn comm(&self, name: Option<&str>) -> Result<CommTls, TlsError> {
        let (Some(cert), Some(key), Some(ca)) =
            (&self.args.tls_cert, &self.args.tls_key, &self.args.tls_ca)
        else {
            return Err(TlsError::Config(
                "collective TLS needs --tls-cert, --tls-key and --tls-ca".into(),
            ));
        };
        let comm = CommTls::from_pem(&read(cert)?, &read(key)?, &read(ca)?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        match name {
            Some(n) => comm
                .with_server_name(n)
                .map_err(|e| TlsError::Config(e.to_string())),
            None => Ok(comm),
        }
    }

    /// A client that presents this identity and trusts only the CA.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
    }
}

/// Mutual TLS on the collective between CPU ranks: on with cluster TLS, with
/// the same files, unless `--comm-plaintext` (then a warning, once).
pub fn comm_tls(tls: Option<&ClusterTls>, args: &CommTlsArgs) -> Result<Option<CommTls>, TlsError> {
    let Some(t) = tls else {
        return Ok(None);
    };
    if args.comm_plaintext {
        if let Some(name) = &args.comm_tls_name {
            return Err(TlsError::Config(format!(
                "--comm-tls-name {name:?} has no use with --comm-plaintext"
            )));
        }
        tracing::warn!(
            "--comm-plaintext: the collective between ranks (activations) runs in clear \
             although the cluster API uses TLS"
        );
        return Ok(None);
    }
    t.comm(args.comm_tls_name.as_deref()).map(Some)
}

/// The URL of a cluster service at `addr`: https with TLS.
pub fn url(addr: &str, tls: Option<&ClusterTls>) -> String {
    match tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    }
}

/// How long a connection attempt to a cluster peer may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connects to a cluster service, over mutual TLS when configured.
pub async fn connect(url: &str, tls: Option<&ClusterTls>) -> Result<Channel, TlsError> {
    // A bounded connect: an unreachable host (a link down) drops SYNs silently, and a
    // caller that retries must get its error back well before the kernel gives up.
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| TlsError::Config(format!("{url}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(t) = tls {
        endpoint = endpoint
            .tls_config(t.client())
            .map_err(|e| TlsError::Config(e.to_string()))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| TlsError::Config(format!("cannot connect to {url}: {}", chain(&e))))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

/// Lets through only requests whose TLS client certificate is exactly the
/// coordinator's.
#[derive(Clone, Debug)]
pub struct PinnedPeer {
    der: Arc<Vec<u8>>,
}

impl PinnedPeer {
    pub fn new(der: Vec<u8>) -> Self {
        Self { der: Arc::new(der) }
    }

    /// A tonic interceptor: PERMISSION_DENIED for any other peer.
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let certs = req.peer_certs();
        let first = certs.as_ref().and_then(|c| c.first());
        match first {
            Some(c) if c.as_ref() == self.der.as_slice() => Ok(req),
            Some(_) => Err(Status::permission_denied(
                "only the coordinator may call this worker",
            )),
            None => Err(Status::unauthenticated("a client certificate is required")),
        }
    }
}
