//! A throwaway PKI made with the openssl CLI: a CA, an etcd server
//! certificate for 127.0.0.1, and a client certificate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use etcd_client::{Certificate, Identity, TlsOptions};
use weft_membership::{EtcdTls, TlsIdentity};

/// The PKI's files (kept alive by the shared temp dir).
#[derive(Clone)]
pub struct Pki {
    dir: Arc<tempfile::TempDir>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed for the TLS test (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issues `name.pem`/`name.key` signed by the CA, with extensions `ext`.
fn issue(dir: &Path, name: &str, ext: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), ext).expect("write ext");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ]
        .into_iter()
        .chain([
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ])
        .collect::<Vec<_>>(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &ext_file,
        ],
    );
}

impl Pki {
    /// Makes the CA, the server and the client certificates.
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("pki dir");
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=weft-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        issue(
            d,
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        issue(d, "client", "extendedKeyUsage=clientAuth\n");
        Pki { dir: Arc::new(dir) }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// etcd flags: HTTPS for clients, client certificates required.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.path("server.pem").display()),
            format!("--key-file={}", self.path("server.key").display()),
            format!("--trusted-ca-file={}", self.path("ca.pem").display()),
            "--client-cert-auth".to_string(),
        ]
    }

    /// TLS options for a test's own etcd client.
    pub fn client_tls(&self) -> TlsOptions {
        let read = |n: &str| std::fs::read(self.path(n)).expect("read pki file");
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(read("client.pem"), read("client.key")))
    }

    /// The library's TLS config, with or without the client identity.
    pub fn etcd_tls(&self, with_identity: bool) -> EtcdTls {
        EtcdTls {
            ca_cert: self.path("ca.pem"),
            identity: with_identity.then(|| TlsIdentity {
                cert: self.path("client.pem"),
                key: self.path("client.key"),
            }),
            domain_name: None,
        }
    }
}
