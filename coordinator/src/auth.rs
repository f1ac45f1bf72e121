//! API keys for the client APIs (`authorization: Bearer <key>`).
//!
//! Keys come from a file (one per line) or from the environment (read by
//! `main`, never by this library), never from the command line. Only
//! SHA-256 digests are kept; a presented key is hashed and compared with
//! every digest in constant time, so neither the key's content nor its
//! length shows in the timing. Nothing here logs a key.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the API key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the API key file {0} holds no key")]
    Empty(String),
    #[error("an API key must be at least 8 characters of visible ASCII")]
    Weak,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Wrong,
}

impl Denied {
    pub fn message(self) -> &'static str {
        match self {
            Denied::Missing => "missing API key: send the header `authorization: Bearer <key>`",
            Denied::Wrong => "invalid API key",
        }
    }
}

/// The accepted keys; empty means no key is required.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys, redacted)", self.digests.len())
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// No key required.
    pub fn open() -> Self {
        ApiKeys::default()
    }

    /// Keys from a file (one per line, blank lines and `#` comments
    /// skipped) and from an environment value the caller read (several
    /// keys separated by commas).
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<Self, AuthError> {
        let mut keys = ApiKeys::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let before = keys.digests.len();
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    keys.add(line)?;
                }
            }
            if keys.digests.len() == before {
                return Err(AuthError::Empty(path.display().to_string()));
            }
        }
        if let Some(v) = env_value {
            for k in v.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                keys.add(k)?;
            }
        }
        Ok(keys)
    }

    fn add(&mut self, key: &str) -> Result<(), AuthError> {
        if key.len() < 8 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::Weak);
        }
        self.digests.push(digest(key.as_bytes()));
        Ok(())
    }

    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Checks an `authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), Denied> {
        if !self.required() {
            return Ok(());
        }
        let Some(value) = authorization else {
            return Err(Denied::Missing);
        };
        let key = strip_bearer(value).ok_or(Denied::Missing)?;
        let d = digest(key);
        // Every digest is compared, so the time does not depend on which
        // key matched.
        let mut ok = subtle::Choice::from(0u8);
        for known in &self.digests {
            ok |= known.ct_eq(&d);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(Denied::Wrong)
        }
    }
}

fn strip_bearer(v: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let key = rest.trim_ascii();
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_file_and_env() {
        let dir = std::env::temp_dir().join(format!("weft-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("keys");
        std::fs::write(&f, "# ops\nfile-key-0001\n\n").unwrap();
        let keys = ApiKeys::load(Some(&f), Some("env-key-0001, env-key-0002")).unwrap();
        assert_eq!(keys.len(), 3);
        for k in ["file-key-0001", "env-key-0001", "env-key-0002"] {
            let h = format!("Bearer {k}");
            assert_eq!(keys.check(Some(h.as_bytes())), Ok(()), "{k}");
        }
        assert_eq!(keys.check(Some(b"bearer  env-key-0002 ")), Ok(()));
        assert_eq!(
            keys.check(Some(b"Bearer file-key-0002")),
            Err(Denied::Wrong)
        );
        assert_eq!(keys.check(Some(b"Bearer file-key-000")), Err(Denied::Wrong));
        assert_eq!(
            keys.check(Some(b"Basic file-key-0001")),
            Err(Denied::Missing)
        );
        assert_eq!(keys.check(Some(b"Bearer ")), Err(Denied::Missing));
        assert_eq!(keys.check(None), Err(Denied::Missing));
        assert!(!format!("{keys:?}").contains("key-0001"));
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(matches!(
            ApiKeys::load(Some(&f), None),
            Err(AuthError::Empty(_))
        ));
        assert!(matches!(
            ApiKeys::load(None, Some("short")),
            Err(AuthError::Weak)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_keys_means_open() {
        let keys = ApiKeys::load(None, None).unwrap();
        assert!(!keys.required());
        assert_eq!(keys.check(None), Ok(()));
    }
}
