//! The member watch against a real etcd: snapshot then events, exactly-once
//! resume across an etcd restart, and re-listing after compaction.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::proxy::Proxy;
use common::{config, delete_member, member, put_member, EtcdServer};
use etcd_client::CompactionOptions;
use weft_membership::{register, watch_members, MemberWatch, MembershipEvent};

async fn next(watch: &mut MemberWatch) -> MembershipEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("event in time")
        .expect("watch running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_exactly_once_across_an_etcd_restart() {
    let mut etcd = EtcdServer::start().await;
    let cfg = config(etcd.endpoint(), "/weft/resume", 10);
    let client = etcd.client().await;
    put_member(&client, &cfg, &member(0, "a")).await;

    let mut watch = watch_members(&cfg).await.expect("watch");
    assert_eq!(
        next(&mut watch).await,
        MembershipEvent::Snapshot(vec![member(0, "a")])
    );
    let reg = register(&cfg, member(1, "b")).await.expect("register");
    assert_eq!(next(&mut watch).await, MembershipEvent::Put(member(1, "b")));
    delete_member(&client, &cfg, 0).await;
    assert_eq!(next(&mut watch).await, MembershipEvent::Delete { rank: 0 });

    etcd.restart().await;
    let client = etcd.client().await;
    put_member(&client, &cfg, &member(2, "c")).await;
    put_member(&client, &cfg, &member(3, "d")).await;
    put_member(&client, &cfg, &member(2, "c2")).await;
    delete_member(&client, &cfg, 3).await;
    put_member(&client, &cfg, &member(9, "sentinel")).await;

    let expected = [
        MembershipEvent::Put(member(2, "c")),
        MembershipEvent::Put(member(3, "d")),
        MembershipEvent::Put(member(2, "c2")),
        MembershipEvent::Delete { rank: 3 },
        // Anything repeated or re-listed would come before the sentinel.
        MembershipEvent::Put(member(9, "sentinel")),
    ];
    for want in expected {
        assert_eq!(next(&mut watch).await, want);
    }
    // The registration rode out the restart (TTL 10 s).
    assert!(!reg.fenced());
    reg.shutdown().await.expect("shutdown");
    assert_eq!(next(&mut watch).await, MembershipEvent::Delete { rank: 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_when_its_revision_was_compacted() {
    let mut etcd = EtcdServer::start().await;
    let upstream: SocketAddr = format!("127.0.0.1:{}", etcd.client_port())
        .parse()
        .expect("addr");
    let proxy = Proxy::start(upstream).await;
    // The watcher reaches etcd only through the proxy; the test goes direct.
    let watch_cfg = config(proxy.endpoint(), "/weft/compact", 2);
    let cfg = config(etcd.endpoint(), "/weft/compact", 2);
    let client = etcd.client().await;
    put_member(&client, &cfg, &member(0, "a")).await;

    let mut watch = watch_members(&watch_cfg).await.expect("watch");
    assert_eq!(
        next(&mut watch).await,
        MembershipEvent::Snapshot(vec![member(0, "a")])
    );
    put_member(&client, &cfg, &member(1, "b")).await;
    assert_eq!(next(&mut watch).await, MembershipEvent::Put(member(1, "b")));

    // Hold the watcher off while etcd restarts, changes and compacts.
    proxy.cut();
    etcd.restart().await;
    let client = etcd.client().await;
    put_member(&client, &cfg, &member(2, "c")).await;
    delete_member(&client, &cfg, 0).await;
    let resp = client
        .kv_client()
        .put("/weft/other", "x", None)
        .await
        .expect("put");
    let rev = resp.header().expect("header").revision();
    client
        .kv_client()
        .compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    proxy.heal();

    assert_eq!(
        next(&mut watch).await,
        MembershipEvent::Snapshot(vec![member(1, "b"), member(2, "c")])
    );
    // And it watches on from the new listing.
    put_member(&client, &cfg, &member(3, "d")).await;
    assert_eq!(next(&mut watch).await, MembershipEvent::Put(member(3, "d")));
}
