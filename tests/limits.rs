//! Resource limits: each test crosses one limit with one client and checks that only that
//! client is affected, and that the refusal is counted in `/metrics`.

mod common;
#[path = "common/http.rs"]
mod http;

use common::*;
use http::*;
use mqtt_broker::config::{Config, ConfigDuration};
use mqtt_broker::protocol::*;
use mqtt_broker::BrokerHandle;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

async fn start(adjust: impl FnOnce(&mut Config)) -> (BrokerHandle, SocketAddr) {
    let broker = start_broker(|c| {
        c.admin.bind = "127.0.0.1:0".parse().unwrap();
        adjust(c)
    })
    .await;
    let admin = broker.admin_addr().expect("admin listener bound");
    (broker, admin)
}

async fn refusals(admin: SocketAddr, limit: &str) -> f64 {
    scrape(admin, None)
        .await
        .value(&format!("mqtt_limit_refusals_total{{limit=\"{limit}\"}}"))
}

/// A client still works: PINGREQ is answered.
async fn assert_alive(c: &mut RawClient) {
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn max_subscriptions_refuses_extra_filters_of_that_client_only() {
    let (broker, admin) = start(|c| c.limits.max_subscriptions = 2).await;
    let (mut a, _) = RawClient::connect(broker.local_addr(), "a", true).await;
    let (mut b, _) = RawClient::connect(broker.local_addr(), "b", true).await;
    let granted = SubAckCode::Granted(QoS::AtMostOnce);
    assert_eq!(
        a.subscribe(
            1,
            &[
                ("x/1", QoS::AtMostOnce),
                ("x/2", QoS::AtMostOnce),
                ("x/3", QoS::AtMostOnce)
            ]
        )
        .await,
        vec![granted, granted, SubAckCode::Failure]
    );
    // Re-subscribing to a held filter replaces it and is not an extra subscription.
    assert_eq!(
        a.subscribe(2, &[("x/2", QoS::AtLeastOnce)]).await,
        vec![SubAckCode::Granted(QoS::AtLeastOnce)]
    );
    assert_eq!(
        b.subscribe(1, &[("x/1", QoS::AtMostOnce), ("x/3", QoS::AtMostOnce)])
            .await,
        vec![granted, granted]
    );
    // a's granted subscriptions keep working.
    b.send(&publish("x/1", b"hi", QoS::AtMostOnce, None, false))
        .await;
    assert_eq!(&a.recv_publish().await.payload[..], b"hi");
    assert_eq!(&b.recv_publish().await.payload[..], b"hi");
    assert_eq!(refusals(admin, "max_subscriptions").await, 1.0);
    broker.shutdown().await;
}

#[tokio::test]
async fn topic_too_long_or_too_deep_closes_the_publisher_and_refuses_the_filter() {
    let (broker, admin) = start(|c| {
        c.limits.max_topic_length = 32;
        c.limits.max_topic_levels = 4;
    })
    .await;
    let (mut sub, _) = RawClient::connect(broker.local_addr(), "sub", true).await;
    let long = "l".repeat(33);
    let deep = "a/b/c/d/e";
    assert_eq!(
        sub.subscribe(
            1,
            &[
                ("ok/#", QoS::AtMostOnce),
                (long.as_str(), QoS::AtMostOnce),
                (deep, QoS::AtMostOnce)
            ]
        )
        .await,
        vec![
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Failure,
            SubAckCode::Failure
        ]
    );
    let (mut good, _) = RawClient::connect(broker.local_addr(), "good", true).await;
    for (id, topic) in [("long", long.as_str()), ("deep", deep)] {
        let (mut bad, _) = RawClient::connect(broker.local_addr(), id, true).await;
        bad.send(&publish(topic, b"x", QoS::AtLeastOnce, Some(1), false))
            .await;
        // Closed without PUBACK: the message was refused by policy.
        assert_eq!(bad.recv().await, None, "{id} must be closed");
    }
    good.send(&publish("ok/1", b"fine", QoS::AtMostOnce, None, false))
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"fine");
    assert_alive(&mut good).await;
    let m = scrape(admin, None).await;
    assert_eq!(
        m.value("mqtt_limit_refusals_total{limit=\"max_topic_length\"}"),
        2.0
    );
    assert_eq!(
        m.value("mqtt_limit_refusals_total{limit=\"max_topic_levels\"}"),
        2.0
    );
    let start = Instant::now();
    while scrape(admin, None)
        .await
        .value("mqtt_disconnects_total{reason=\"policy\"}")
        < 2.0
    {
        assert!(start.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.shutdown().await;
}

/// Sends `n` QoS 1 PUBLISH packets back to back and waits for every PUBACK; returns the time.
async fn blast(c: &mut RawClient, topic: &str, n: u16, payload: &[u8]) -> Duration {
    let start = Instant::now();
    let mut out = bytes::BytesMut::new();
    for pid in 1..=n {
        encode(
            &publish(topic, payload, QoS::AtLeastOnce, Some(pid), false),
            &mut out,
        );
    }
    c.send_raw(&out).await;
    for pid in 1..=n {
        match c.recv_within(Duration::from_secs(20)).await {
            Ok(Some(Packet::PubAck(got))) => assert_eq!(got, pid),
            other => panic!("expected PUBACK {pid}, got {other:?}"),
        }
    }
    start.elapsed()
}

#[tokio::test]
async fn publish_rate_slows_only_the_fast_publisher_and_drops_nothing() {
    let (broker, admin) = start(|c| {
        c.limits.publish_rate = 50;
        c.limits.publish_bytes_rate = 0;
    })
    .await;
    let (mut sub, _) = RawClient::connect(broker.local_addr(), "sub", true).await;
    sub.subscribe(1, &[("r/#", QoS::AtMostOnce)]).await;
    let (mut fast, _) = RawClient::connect(broker.local_addr(), "fast", true).await;
    let (mut other, _) = RawClient::connect(broker.local_addr(), "other", true).await;

    let blaster = tokio::spawn(async move {
        // 50 pass at once (one second of budget), the other 100 at 50/s: about 2 s.
        let took = blast(&mut fast, "r/fast", 150, b"x").await;
        (fast, took)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = blast(&mut other, "r/other", 5, b"y").await;
    assert!(
        took < Duration::from_millis(500),
        "other client slowed: {took:?}"
    );
    let (_fast, took) = blaster.await.unwrap();
    assert!(took >= Duration::from_millis(1700), "not limited: {took:?}");
    assert!(took < Duration::from_secs(5), "too slow: {took:?}");

    let mut fast_seen = 0;
    let mut other_seen = 0;
    while fast_seen + other_seen < 155 {
        match &sub.recv_publish().await.topic[..] {
            "r/fast" => fast_seen += 1,
            _ => other_seen += 1,
        }
    }
    assert_eq!((fast_seen, other_seen), (150, 5), "nothing dropped");
    assert!(refusals(admin, "publish_rate").await >= 1.0);
    assert_eq!(refusals(admin, "publish_bytes_rate").await, 0.0);
    broker.shutdown().await;
}

#[tokio::test]
async fn publish_bytes_rate_slows_only_the_heavy_publisher() {
    let (broker, admin) = start(|c| {
        c.limits.publish_rate = 0;
        c.limits.publish_bytes_rate = 20_000;
    })
    .await;
    let (mut heavy, _) = RawClient::connect(broker.local_addr(), "heavy", true).await;
    let (mut light, _) = RawClient::connect(broker.local_addr(), "light", true).await;
    let payload = vec![7u8; 10_000];
    let blaster = tokio::spawn(async move {
        // 20 kB of budget, then 10 kB every half second: 6 messages take about 2 s.
        blast(&mut heavy, "b/heavy", 6, &payload).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = blast(&mut light, "b/light", 3, b"small").await;
    assert!(
        took < Duration::from_millis(500),
        "light client slowed: {took:?}"
    );
    let took = blaster.await.unwrap();
    assert!(took >= Duration::from_millis(1500), "not limited: {took:?}");
    assert!(refusals(admin, "publish_bytes_rate").await >= 1.0);
    broker.shutdown().await;
}

#[tokio::test]
async fn max_queued_bytes_drops_for_the_full_subscriber_only() {
    let (broker, admin) = start(|c| {
        c.limits.max_queued_bytes = 1000;
        c.performance.inflight_window_size = 1;
    })
    .await;
    // `slow` never acknowledges: one message inflight, then its queue fills by bytes.
    let (mut slow, _) = RawClient::connect(broker.local_addr(), "slow", true).await;
    slow.subscribe(1, &[("q", QoS::AtLeastOnce)]).await;
    let (mut fine, _) = RawClient::connect(broker.local_addr(), "fine", true).await;
    fine.subscribe(1, &[("q", QoS::AtLeastOnce)]).await;
    let (mut publ, _) = RawClient::connect(broker.local_addr(), "pub", true).await;
    let payload = [1u8; 400];
    let mut first = None;
    for pid in 1..=5 {
        publ.send(&publish("q", &payload, QoS::AtLeastOnce, Some(pid), false))
            .await;
        assert_eq!(publ.recv().await, Some(Packet::PubAck(pid)));
        let p = fine.recv_publish().await;
        fine.send(&Packet::PubAck(p.pid.unwrap())).await;
        if pid == 1 {
            // The first one fills slow's inflight window; the rest queue behind it.
            first = Some(slow.recv_publish().await);
        }
    }
    // slow: 1 inflight + 2 queued (800 bytes); messages 4 and 5 would exceed 1000 bytes.
    let first = first.unwrap();
    slow.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(refusals(admin, "max_queued_bytes").await, 2.0);
    let m = scrape(admin, None).await;
    assert_eq!(
        m.value("mqtt_messages_dropped_total{reason=\"queue_bytes\"}"),
        2.0
    );
    let clients = get(admin, "/api/v1/clients").await.json();
    let slow_view = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "slow")
        .unwrap()
        .clone();
    assert_eq!(slow_view["queue_depth"], 2);
    assert_eq!(slow_view["queued_bytes"], 800);
    // Acknowledging releases the queued ones, in order.
    slow.send(&Packet::PubAck(first.pid.unwrap())).await;
    let second = slow.recv_publish().await;
    slow.send(&Packet::PubAck(second.pid.unwrap())).await;
    slow.recv_publish().await;
    assert_alive(&mut publ).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn core_limits_are_counted_in_metrics() {
    let (broker, admin) = start(|c| {
        c.server.max_packet_size = 1024;
        c.server.connect_timeout = ConfigDuration::millis(300);
        c.server.max_connections = 3;
    })
    .await;
    let (mut bystander, _) = RawClient::connect(broker.local_addr(), "bystander", true).await;
    // max_packet_size: the oversized client is closed.
    let (mut big, _) = RawClient::connect(broker.local_addr(), "big", true).await;
    big.send(&publish("p", &[0u8; 2000], QoS::AtMostOnce, None, false))
        .await;
    big.expect_closed().await;
    // connect_timeout: a silent socket is closed.
    let mut silent = RawClient::open(broker.local_addr()).await;
    silent.expect_closed().await;
    // max_connections: the fourth connection gets CONNACK 0x03.
    let start = Instant::now();
    while broker.stats().connections.total != 1 {
        assert!(start.elapsed() < WAIT, "closed connections still counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_two, _) = RawClient::connect(broker.local_addr(), "two", true).await;
    let (_three, _) = RawClient::connect(broker.local_addr(), "three", true).await;
    let (_four, ack) =
        RawClient::connect_with(broker.local_addr(), connect_packet("four", true)).await;
    assert_eq!(ack.code, ConnectReturnCode::ServerUnavailable);
    assert_alive(&mut bystander).await;
    let m = scrape(admin, None).await;
    for limit in ["max_packet_size", "connect_timeout", "max_connections"] {
        assert_eq!(
            m.value(&format!("mqtt_limit_refusals_total{{limit=\"{limit}\"}}")),
            1.0,
            "{limit}"
        );
    }
    assert_eq!(
        m.value("mqtt_messages_dropped_total{reason=\"oversized\"}"),
        1.0
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn limits_follow_a_live_reload() {
    let (broker, _admin) = start(|c| c.limits.max_subscriptions = 1).await;
    let (mut c, _) = RawClient::connect(broker.local_addr(), "c", true).await;
    assert_eq!(
        c.subscribe(1, &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce)])
            .await,
        vec![SubAckCode::Granted(QoS::AtMostOnce), SubAckCode::Failure]
    );
    let mut config = broker.config();
    config.limits.max_subscriptions = 3;
    config.limits.max_topic_levels = 1;
    broker.reload(config).await.expect("reload");
    // The connected client gets the new limits for its next packets: one more
    // subscription fits, a two-level filter no longer does.
    assert_eq!(
        c.subscribe(2, &[("b", QoS::AtMostOnce), ("c/d", QoS::AtMostOnce)])
            .await,
        vec![SubAckCode::Granted(QoS::AtMostOnce), SubAckCode::Failure]
    );
    c.send(&publish("x/y", b"deep", QoS::AtMostOnce, None, false))
        .await;
    assert_eq!(c.recv().await, None, "closed by the lowered level limit");
    broker.shutdown().await;
}
