//! Cluster membership through etcd.
//!
//! Workers [`register`] their rank under `{prefix}/ranks/{rank}` with a
//! create-if-absent transaction, attached to a lease that a task of its own
//! keeps alive; a worker whose lease lapses fences itself
//! ([`Registration::fenced`], [`Registration::fence_signal`]) and must stop
//! serving steps. The coordinator [`watch_members`]: a consistent listing,
//! then a watch that resumes from the last delivered revision after a
//! reconnect and re-lists after compaction. The coordinator also
//! [`announce`]s where workers register (`{prefix}/coordinator`), which
//! workers read ([`CoordinatorRecord`]). Without etcd endpoints the
//! cluster keeps its embedded static membership (the callers decide).

#![warn(missing_docs)]

mod config;
mod coordinator;
mod error;
mod keepalive;
mod member;
mod register;
mod watch;

pub use config::{EtcdConfig, EtcdTls, TlsIdentity};
pub use coordinator::{announce, Announcement, CoordinatorInfo, CoordinatorRecord};
pub use error::MembershipError;
pub use member::MemberInfo;
pub use register::{register, register_succeeding, Registration};
pub use watch::{watch_members, MemberWatch, MembershipEvent, WATCH_CHANNEL_CAPACITY};
