//! The record a worker stores under its rank key, and key parsing.

use serde::{Deserialize, Serialize};

use crate::error::MembershipError;

/// What a registered worker publishes about itself (JSON under
/// `{prefix}/ranks/{rank}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The tensor-parallel rank the worker holds.
    pub rank: u32,
    /// `host:port` of the worker's cluster API.
    pub address: String,
    /// The worker's device, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// A free-form id of this worker process (tells a restarted worker apart).
    pub instance: String,
}

impl MemberInfo {
    /// The JSON value stored in etcd.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, MembershipError> {
        serde_json::to_vec(self)
            .map_err(|e| MembershipError::Invalid(format!("cannot encode member info: {e}")))
    }

    /// Decodes a stored value, checking it names the rank its key names.
    pub(crate) fn decode(key_rank: u32, value: &[u8]) -> Result<Self, MembershipError> {
        let info: MemberInfo = serde_json::from_slice(value).map_err(|e| {
            MembershipError::Invalid(format!("member record of rank {key_rank}: {e}"))
        })?;
        if info.rank != key_rank {
            return Err(MembershipError::Invalid(format!(
                "member record under rank {key_rank} claims rank {}",
                info.rank
            )));
        }
        Ok(info)
    }
}

/// The rank named by a key under `ranks_prefix`, if it is one.
pub(crate) fn rank_of_key(ranks_prefix: &str, key: &[u8]) -> Option<u32> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(ranks_prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let m = MemberInfo {
            rank: 2,
            address: "10.0.0.2:7000".into(),
            device: "cuda:0".into(),
            instance: "w2-a".into(),
        };
        let v = m.encode().expect("encode");
        assert_eq!(MemberInfo::decode(2, &v).expect("decode"), m);
        assert!(MemberInfo::decode(3, &v).is_err());
        assert!(MemberInfo::decode(2, b"{not json").is_err());
    }

    #[test]
    fn parses_rank_keys() {
        let p = "/weft/c/ranks/";
        assert_eq!(rank_of_key(p, b"/weft/c/ranks/12"), Some(12));
        assert_eq!(rank_of_key(p, b"/weft/c/ranks/"), None);
        assert_eq!(rank_of_key(p, b"/weft/c/ranks/+1"), None);
        assert_eq!(rank_of_key(p, b"/weft/c/ranks/1/x"), None);
        assert_eq!(rank_of_key(p, b"/weft/d/ranks/1"), None);
        assert_eq!(rank_of_key(p, &[0xff, 0xfe]), None);
    }
}
