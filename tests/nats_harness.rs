//! Self-test of the NATS JetStream harness (tests/common/nats.rs) against a real nats-server.

mod common;

use async_nats::jetstream::{self, kv::UpdateErrorKind, message::PublishMessage, stream};
use common::nats::{create_kv_bucket, NatsCluster};
use std::time::{Duration, Instant};

/// How long the stream may take to elect a new leader after its leader was killed: NATS raft
/// followers wait out an election timeout of several seconds first.
const REELECT: Duration = Duration::from_secs(20);

/// Publishes message `i` on `h.<i>` through `js` and awaits its ack, retrying until `deadline`.
/// The message id makes a retry of a publish that was stored after all a duplicate the
/// stream drops, so the count stays exact.
async fn publish_until(js: &jetstream::Context, i: usize, deadline: Instant) {
    let mut last = String::new();
    while Instant::now() < deadline {
        let publish = PublishMessage::build()
            .payload(format!("m{i}").into())
            .message_id(format!("m{i}"));
        match js.send_publish(format!("h.{i}"), publish).await {
            Ok(ack) => match ack.await {
                Ok(_) => return,
                Err(e) => last = format!("ack: {e}"),
            },
            Err(e) => last = format!("publish: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("message {i} not stored before the deadline: {last}");
}

/// The stream's message count, retrying until `deadline` (its leader may be changing).
async fn messages_until(js: &jetstream::Context, name: &str, deadline: Instant) -> u64 {
    let mut last = String::new();
    while Instant::now() < deadline {
        match js.get_stream(name).await {
            Ok(s) => match s.get_info().await {
                Ok(info) => return info.state.messages,
                Err(e) => last = format!("info: {e}"),
            },
            Err(e) => last = format!("get stream: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no stream info before the deadline: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_server_jetstream_cluster_replicates_and_survives_one_server_killed() {
    let mut cluster = NatsCluster::start(3).await;
    let mut clients = Vec::new();
    for url in cluster.urls() {
        clients.push(async_nats::connect(url).await.expect("connect"));
    }
    // Short API timeout: a request to a dead leader should fail and be retried promptly.
    let js0 = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(clients[0].clone());
    let created = js0
        .create_stream(stream::Config {
            name: "H".into(),
            subjects: vec!["h.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create an R3 stream");
    assert_eq!(created.cached_info().config.num_replicas, 3);
    let deadline = Instant::now() + common::WAIT;
    for i in 0..10 {
        publish_until(&js0, i, deadline).await;
    }
    assert_eq!(messages_until(&js0, "H", deadline).await, 10);

    cluster.kill(0);
    assert!(!cluster.is_running(0));
    let js1 = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(clients[1].clone());
    let killed = Instant::now();
    let deadline = killed + REELECT;
    for i in 10..20 {
        publish_until(&js1, i, deadline).await;
    }
    eprintln!(
        "10 more messages stored {:.1?} after server 0 was killed",
        killed.elapsed()
    );
    assert_eq!(messages_until(&js1, "H", deadline).await, 20);

    let restarting = Instant::now();
    cluster.restart(0).await;
    assert!(cluster.is_running(0));
    let accepting = restarting.elapsed();
    cluster.wait_jetstream(0).await;
    eprintln!(
        "server 0 accepts connections {accepting:.1?} after its restart, JetStream answers \
         through it after {:.1?}",
        restarting.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_value_bucket_compare_and_set_refuses_a_stale_revision() {
    let cluster = NatsCluster::start(1).await;
    let client = async_nats::connect(cluster.url(0)).await.expect("connect");
    let js = jetstream::new(client);
    let kv = create_kv_bucket(&js, "cas", 5, 1).await;

    let first = kv.create("k", "v1".into()).await.expect("create the key");
    assert!(
        kv.create("k", "again".into()).await.is_err(),
        "create of an existing key must fail"
    );
    let second = kv
        .update("k", "v2".into(), first)
        .await
        .expect("update at the current revision");
    assert!(second > first);

    let stale = kv
        .update("k", "v3".into(), first)
        .await
        .expect_err("update at a stale revision must fail");
    assert_eq!(stale.kind(), UpdateErrorKind::WrongLastRevision, "{stale}");
    assert_eq!(
        kv.get("k").await.expect("get").as_deref(),
        Some(&b"v2"[..]),
        "the refused update left the value alone"
    );
}
