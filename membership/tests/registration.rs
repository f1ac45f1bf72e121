//! Registration against a real etcd: create-if-absent ranks, keep-alive,
//! self-fencing, and a lapsed lease removing the key.

mod common;

use std::time::{Duration, Instant};

use common::{config, key_exists, member, wait_until, EtcdServer};
use weft_membership::{
    register, register_succeeding, watch_members, MembershipError, MembershipEvent,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rank_is_create_if_absent() {
    let etcd = EtcdServer::start().await;
    let cfg = config(etcd.endpoint(), "/weft/create", 2);
    let client = etcd.client().await;

    let a = register(&cfg, member(0, "a"))
        .await
        .expect("first registration");
    match register(&cfg, member(0, "b")).await {
        Err(MembershipError::RankTaken { rank: 0, holder }) => {
            let holder = holder.expect("holder record");
            assert_eq!(*holder, member(0, "a"), "RankTaken names the first holder");
        }
        other => panic!("expected RankTaken, got {other:?}"),
    }
    let c = register(&cfg, member(1, "c")).await.expect("another rank");
    // The losing attempt revoked its lease: only a's and c's are left.
    let mut leases: Vec<i64> = client
        .lease_client()
        .leases()
        .await
        .expect("list leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    leases.sort_unstable();
    let mut expected = vec![a.lease_id(), c.lease_id()];
    expected.sort_unstable();
    assert_eq!(leases, expected);

    a.shutdown().await.expect("clean shutdown");
    assert!(
        !key_exists(&client, &cfg.rank_key(0)).await,
        "shutdown deletes the key"
    );
    let b = register(&cfg, member(0, "b"))
        .await
        .expect("rank free again");
    assert!(!b.fenced() && !c.fenced());
    b.shutdown().await.expect("shutdown b");
    c.shutdown().await.expect("shutdown c");
    let left = client.lease_client().leases().await.expect("leases");
    assert!(left.leases().is_empty(), "shutdown revokes the leases");
}

/// A worker restarted on its predecessor's address takes the rank over at once;
/// a worker of another address still cannot; the predecessor's lease is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_on_the_same_address_takes_over_at_once() {
    let etcd = EtcdServer::start().await;
    // Waiting out this TTL would fail the 5 s bound below; renewals every 3 s.
    let cfg = config(etcd.endpoint(), "/weft/succeed", 9);
    let client = etcd.client().await;
    let dead = register(&cfg, member(0, "old"))
        .await
        .expect("first holder");

    let mut elsewhere = member(0, "other");
    elsewhere.address = "10.0.0.99:7000".into();
    match register_succeeding(&cfg, elsewhere).await {
        Err(MembershipError::RankTaken { rank: 0, .. }) => {}
        other => panic!("another address must not take the rank: {other:?}"),
    }
    match register(&cfg, member(0, "new")).await {
        Err(MembershipError::RankTaken { rank: 0, .. }) => {}
        other => panic!("plain register never takes over: {other:?}"),
    }

    let started = Instant::now();
    let new = register_succeeding(&cfg, member(0, "new"))
        .await
        .expect("the successor takes over");
    assert!(started.elapsed() < Duration::from_secs(5));
    let got = client
        .kv_client()
        .get(cfg.rank_key(0), None)
        .await
        .expect("get");
    let kv = got.kvs().first().expect("the rank is held");
    assert_eq!(
        kv.lease(),
        new.lease_id(),
        "held under the successor's lease"
    );
    assert!(String::from_utf8_lossy(kv.value()).contains("\"new\""));
    // The predecessor's lease is gone: were it alive, it would fence itself.
    wait_until(
        "the predecessor fences",
        Duration::from_secs(10),
        || async { dead.fenced() },
    )
    .await;
    assert!(!new.fenced());
    new.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_holds_the_rank_past_three_ttls() {
    let etcd = EtcdServer::start().await;
    let cfg = config(etcd.endpoint(), "/weft/keepalive", 2);
    let client = etcd.client().await;
    let reg = register(&cfg, member(3, "k")).await.expect("register");
    assert_eq!(reg.ttl(), Duration::from_secs(2));

    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(7_000) {
        assert!(!reg.fenced(), "fenced after {:?}", start.elapsed());
        let resp = client.kv_client().get(reg.key(), None).await.expect("get");
        let kv = resp.kvs().first().expect("key present");
        assert_eq!(kv.lease(), reg.lease_id());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    reg.check().expect("still serving");
    reg.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_when_etcd_stops_answering() {
    let mut etcd = EtcdServer::start().await;
    let cfg = config(etcd.endpoint(), "/weft/sigstop", 2);
    let reg = register(&cfg, member(0, "s")).await.expect("register");
    let mut signal = reg.fence_signal();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!reg.fenced());

    etcd.pause();
    let stopped = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), signal.wait_for(|f| *f))
        .await
        .expect("fenced within TTL + 1 s")
        .expect("signal");
    let took = stopped.elapsed();
    assert!(took <= Duration::from_secs(3), "fenced after {took:?}");
    assert!(matches!(
        reg.check(),
        Err(MembershipError::Fenced { rank: 0 })
    ));
    etcd.resume();

    // Fencing is final, and the abandoned key goes away once etcd runs again.
    let client = etcd.client().await;
    wait_until("the fenced key to go", Duration::from_secs(5), || async {
        !key_exists(&client, &cfg.rank_key(0)).await
    })
    .await;
    assert!(reg.fenced());
    reg.shutdown().await.expect("shutdown after fencing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_when_the_lease_is_revoked() {
    let etcd = EtcdServer::start().await;
    let cfg = config(etcd.endpoint(), "/weft/revoke", 2);
    let reg = register(&cfg, member(1, "r")).await.expect("register");
    let client = etcd.client().await;
    client
        .lease_client()
        .revoke(reg.lease_id())
        .await
        .expect("revoke from another client");
    let took = wait_until("fencing after revoke", Duration::from_secs(3), || async {
        reg.fenced()
    })
    .await;
    assert!(took <= Duration::from_secs(3));
    // The rank is free for a successor, and the fenced one's shutdown leaves it be.
    let next = register(&cfg, member(1, "r2")).await.expect("successor");
    reg.shutdown().await.expect("shutdown fenced");
    assert!(
        key_exists(&client, &cfg.rank_key(1)).await,
        "successor's key kept"
    );
    assert!(!next.fenced());
    next.shutdown().await.expect("shutdown successor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_fences_then_its_key_lapses() {
    let etcd = EtcdServer::start().await;
    let cfg = config(etcd.endpoint(), "/weft/lapse", 2);
    let client = etcd.client().await;
    let reg = register(&cfg, member(2, "h")).await.expect("register");
    let mut watch = watch_members(&cfg).await.expect("watch");
    assert_eq!(
        watch.recv().await,
        Some(MembershipEvent::Snapshot(vec![member(2, "h")]))
    );

    reg.pause_keepalive();
    let paused = Instant::now();
    let event = tokio::time::timeout(Duration::from_secs(5), watch.recv())
        .await
        .expect("Delete within TTL + lease expiry check")
        .expect("event");
    assert_eq!(event, MembershipEvent::Delete { rank: 2 });
    // The worker fenced itself no later than etcd dropped its key.
    assert!(reg.fenced(), "key lapsed before the worker fenced");
    assert!(
        paused.elapsed() >= Duration::from_millis(1_000),
        "lapsed too early"
    );
    assert!(!key_exists(&client, &cfg.rank_key(2)).await);
    drop(reg);
}
