//! Registration and watch over mutual TLS to etcd.

mod common;

use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{config, key_exists, member, EtcdServer};
use weft_membership::{register, watch_members, MembershipError, MembershipEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_watches_over_mutual_tls() {
    let pki = Pki::generate();
    let etcd = EtcdServer::start_tls(pki.clone()).await;
    let mut cfg = config(etcd.endpoint(), "/weft/tls", 2);
    cfg.tls = Some(pki.etcd_tls(true));

    let reg = register(&cfg, member(0, "t"))
        .await
        .expect("register over mTLS");
    let mut watch = watch_members(&cfg).await.expect("watch over mTLS");
    let first = tokio::time::timeout(Duration::from_secs(5), watch.recv()).await;
    assert_eq!(
        first.expect("snapshot in time"),
        Some(MembershipEvent::Snapshot(vec![member(0, "t")]))
    );
    // Keep-alives flow over TLS too: still unfenced after two TTLs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    reg.check().expect("not fenced");
    reg.shutdown().await.expect("shutdown");
    let client = etcd.client().await;
    assert!(!key_exists(&client, &cfg.rank_key(0)).await);

    // Without a client certificate etcd refuses the connection.
    cfg.tls = Some(pki.etcd_tls(false));
    let start = Instant::now();
    match register(&cfg, member(1, "anon")).await {
        Err(e @ MembershipError::Unavailable { .. }) => assert!(e.is_retryable()),
        other => panic!("expected Unavailable without a client certificate, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "bounded by the timeouts"
    );

    // A CA file that does not exist is a configuration error.
    let mut bad = pki.etcd_tls(true);
    bad.ca_cert = etcd.dir().join("missing-ca.pem");
    cfg.tls = Some(bad);
    assert!(matches!(
        register(&cfg, member(1, "x")).await,
        Err(MembershipError::Invalid(_))
    ));
}
