//! The coordinator's record against a real etcd: announced, replaced by a newer
//! announcement, renewed past its TTL, and gone once the announcer stops.

mod common;

use std::time::Duration;

use common::{config, wait_until, EtcdServer};
use weft_membership::{announce, CoordinatorInfo, CoordinatorRecord};

fn info(instance: &str) -> CoordinatorInfo {
    CoordinatorInfo {
        url: format!("https://10.0.0.{}:50052", instance.len()),
        instance: instance.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_announcement_wins_and_lapses_when_dropped() {
    let etcd = EtcdServer::start().await;
    let cfg = config(etcd.endpoint(), "/weft/coord", 2);
    let record = CoordinatorRecord::connect(&cfg).await.expect("connect");
    assert_eq!(record.read().await.expect("read"), None);

    let first = announce(cfg.clone(), info("a"));
    wait_until("announced", Duration::from_secs(10), || async {
        record.read().await.ok().flatten() == Some(info("a"))
    })
    .await;
    // A restarted coordinator replaces the record at once.
    let second = announce(cfg.clone(), info("bb"));
    wait_until("replaced", Duration::from_secs(10), || async {
        record.read().await.ok().flatten() == Some(info("bb"))
    })
    .await;
    drop(first);
    // Renewed past three TTLs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(record.read().await.expect("read"), Some(info("bb")));
    // Stopped: the record lapses with its lease.
    drop(second);
    wait_until("lapsed", Duration::from_secs(10), || async {
        record.read().await.ok().flatten().is_none()
    })
    .await;
}
