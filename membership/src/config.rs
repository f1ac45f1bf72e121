//! Where etcd is and how to talk to it, and the choice between static
//! membership and etcd.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::error::MembershipError;

/// How to reach etcd and where the cluster's membership lives in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// etcd client endpoints: `host:port` or `http(s)://host:port`.
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster, e.g. `/weft/<cluster>` (no trailing `/`);
    /// ranks live under `{prefix}/ranks/{rank}`.
    pub prefix: String,
    /// Lease time-to-live of a registration (whole seconds, rounded up; etcd
    /// may grant more than asked, never less).
    pub lease_ttl: Duration,
    /// Limit on establishing a connection to an endpoint.
    pub connect_timeout: Duration,
    /// Limit on each request (and on opening a stream); also the HTTP/2
    /// keep-alive timeout that detects a silent server under a watch.
    pub request_timeout: Duration,
    /// TLS to etcd (server verification, optionally a client identity for
    /// mutual TLS); `None` talks plain HTTP/2.
    pub tls: Option<EtcdTls>,
}

/// TLS settings for the connection to etcd (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificate(s) that sign the etcd servers' certificates.
    pub ca_cert: PathBuf,
    /// Client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<TlsIdentity>,
    /// Server name to verify instead of the endpoint's host.
    pub domain_name: Option<String>,
}

/// A client certificate and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// The client certificate chain.
    pub cert: PathBuf,
    /// The client's private key.
    pub key: PathBuf,
}

impl EtcdConfig {
    /// A config with a 10 s lease, a 3 s connect timeout and a 5 s request
    /// timeout, without TLS.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            lease_ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            tls: None,
        }
    }

    /// Checks the values a connection and the key layout rely on.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let invalid = |m: &str| Err(MembershipError::Invalid(m.to_string()));
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return invalid("etcd endpoints must be non-empty");
        }
        let p = &self.prefix;
        if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 {
            return invalid("etcd prefix must start with '/' and not end with '/'");
        }
        if self.lease_ttl.is_zero() || self.lease_ttl > Duration::from_secs(i32::MAX as u64) {
            return invalid("lease TTL must be between 1 s and 2^31 s");
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return invalid("etcd timeouts must be positive");
        }
        Ok(())
    }

    /// The lease TTL in whole seconds, rounded up, at least 1.
    pub(crate) fn ttl_secs(&self) -> i64 {
        let ms = self.lease_ttl.as_millis().max(1);
        let secs = ms.div_ceil(1000);
        i64::try_from(secs).unwrap_or(i64::from(i32::MAX))
    }

    /// `{prefix}/ranks/`: the prefix every member key starts with.
    pub fn ranks_prefix(&self) -> String {
        format!("{}/ranks/", self.prefix)
    }

    /// `{prefix}/ranks/{rank}`: the key a rank registers under.
    pub fn rank_key(&self, rank: u32) -> String {
        format!("{}{rank}", self.ranks_prefix())
    }

    fn connect_options(&self) -> Result<ConnectOptions, MembershipError> {
        // HTTP/2 pings notice a server that stopped answering (crashed host,
        // SIGSTOP) under a long-lived watch or keep-alive stream.
        let ping = (self.request_timeout / 2).max(Duration::from_millis(200));
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(ping, self.request_timeout)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            opts = opts.with_tls(tls.options()?);
        }
        Ok(opts)
    }
}

impl EtcdTls {
    fn options(&self) -> Result<TlsOptions, MembershipError> {
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| MembershipError::Invalid(format!("cannot read {}: {e}", p.display())))
        };
        let mut opts =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read(&self.ca_cert)?));
        if let Some(id) = &self.identity {
            opts = opts.identity(Identity::from_pem(read(&id.cert)?, read(&id.key)?));
        }
        if let Some(name) = &self.domain_name {
            opts = opts.domain_name(name.clone());
        }
        Ok(opts)
    }
}

/// Opens a client to the configured endpoints. Connections are made lazily,
/// so every request made with the client must be bounded with [`timed`].
pub(crate) async fn connect(cfg: &EtcdConfig) -> Result<Client, MembershipError> {
    cfg.validate()?;
    let opts = cfg.connect_options()?;
    timed(
        "connect",
        cfg.connect_timeout,
        Client::connect(&cfg.endpoints, Some(opts)),
    )
    .await
}

/// Runs an etcd call with a time limit, classifying both failure kinds.
pub(crate) async fn timed<T>(
    op: &'static str,
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, MembershipError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(MembershipError::from_etcd(op, e)),
        Err(_) => Err(MembershipError::timeout(op, limit)),
    }
}

/// Exponential backoff between reconnect attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The delay to wait now; the one after it doubles, up to the maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the minimum after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_lays_out_keys() {
        let mut cfg = EtcdConfig::new(vec!["127.0.0.1:2379".into()], "/weft/c1");
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.rank_key(3), "/weft/c1/ranks/3");
        cfg.lease_ttl = Duration::from_millis(1500);
        assert_eq!(cfg.ttl_secs(), 2);
        cfg.prefix = "/weft/".into();
        assert!(matches!(cfg.validate(), Err(MembershipError::Invalid(_))));
        cfg.prefix = "/weft".into();
        cfg.endpoints.clear();
        assert!(matches!(cfg.validate(), Err(MembershipError::Invalid(_))));
    }

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(300));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
