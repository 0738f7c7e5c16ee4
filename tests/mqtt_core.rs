//! MQTT 3.1.1 behaviour of the broker over real TCP sockets, one test per behaviour.
//! Raw-socket clients send exact packets; `rumqttc` stands in for an ordinary client library.

mod common;
#[path = "common/http.rs"]
mod http;

use bytes::Bytes;
use common::*;
use mqtt_broker::protocol::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn rumqttc_publish_subscribe_all_qos() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let mut opts = rumqttc::MqttOptions::new("rumqttc-sub", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe("sensors/#", rumqttc::QoS::ExactlyOnce)
        .await
        .unwrap();
    // Wait for the SUBACK before publishing.
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = events.poll().await.unwrap() {
            break;
        }
    }
    let (mut publisher, _) = RawClient::connect(addr, "pub", true).await;
    publisher
        .send(&publish("sensors/a", b"0", QoS::AtMostOnce, None, false))
        .await;
    publisher
        .send(&publish(
            "sensors/b",
            b"1",
            QoS::AtLeastOnce,
            Some(1),
            false,
        ))
        .await;
    assert_eq!(publisher.recv().await, Some(Packet::PubAck(1)));
    publisher.publish_qos2("sensors/c", b"2", 2).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let ev = tokio::time::timeout(WAIT, events.poll())
            .await
            .unwrap()
            .unwrap();
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
            got.push((p.topic.clone(), p.qos as u8, p.payload.to_vec()));
        }
    }
    assert_eq!(
        got,
        vec![
            ("sensors/a".to_string(), 0, b"0".to_vec()),
            ("sensors/b".to_string(), 1, b"1".to_vec()),
            ("sensors/c".to_string(), 2, b"2".to_vec()),
        ]
    );
    let stats = broker.stats();
    assert_eq!(stats.connections.total, 2);
    assert_eq!(stats.subscriptions.total, 1);
    assert!(stats.messages.received >= 3);
    broker.shutdown().await;
}

#[tokio::test]
async fn delivery_qos_is_minimum_of_publish_and_subscription() {
    let broker = start_broker(|_| {}).await;
    let (mut sub, _) = RawClient::connect(broker.local_addr(), "sub", true).await;
    sub.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let (mut publ, _) = RawClient::connect(broker.local_addr(), "pub", true).await;
    publ.publish_qos2("t", b"x", 7).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    publ.send(&publish("t", b"y", QoS::AtMostOnce, None, false))
        .await;
    let p2 = sub.recv_publish().await;
    assert_eq!((p2.qos, p2.pid), (QoS::AtMostOnce, None));
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_highest_qos_mqtt_3_3_5_1() {
    let broker = start_broker(|_| {}).await;
    let (mut sub, _) = RawClient::connect(broker.local_addr(), "sub", true).await;
    sub.subscribe(
        1,
        &[
            ("a/#", QoS::AtMostOnce),
            ("a/+", QoS::ExactlyOnce),
            ("a/b", QoS::AtLeastOnce),
        ],
    )
    .await;
    let (mut publ, _) = RawClient::connect(broker.local_addr(), "pub", true).await;
    publ.publish_qos2("a/b", b"once", 3).await;
    let p = sub.receive_qos2().await;
    assert_eq!(&p.payload[..], b"once");
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn inbound_qos2_duplicate_is_routed_once_across_reconnect_mqtt_4_3_3() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "sub", true).await;
    sub.subscribe(1, &[("q2", QoS::ExactlyOnce)]).await;

    let (mut publ, _) = RawClient::connect(addr, "pub", false).await;
    publ.send(&publish("q2", b"m", QoS::ExactlyOnce, Some(42), false))
        .await;
    assert_eq!(publ.recv().await, Some(Packet::PubRec(42)));
    // The publisher loses the connection before PUBREL and re-sends with DUP after reconnecting.
    drop(publ);
    let (mut publ, present) = RawClient::connect(addr, "pub", false).await;
    assert!(present);
    let mut again = publish("q2", b"m", QoS::ExactlyOnce, Some(42), false);
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    publ.send(&again).await;
    assert_eq!(publ.recv().await, Some(Packet::PubRec(42)));
    publ.send(&Packet::PubRel(42)).await;
    assert_eq!(publ.recv().await, Some(Packet::PubComp(42)));

    let p = sub.receive_qos2().await;
    assert_eq!(&p.payload[..], b"m");
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn outbound_qos2_resumes_with_pubrel_after_reconnect_mqtt_4_4_0_1() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "sub", false).await;
    sub.subscribe(1, &[("q2", QoS::ExactlyOnce)]).await;
    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    publ.publish_qos2("q2", b"first", 1).await;
    publ.publish_qos2("q2", b"second", 2).await;

    // Acknowledge the first with PUBREC only, ignore the second, then vanish.
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    sub.send(&Packet::PubRec(first.pid.unwrap())).await;
    assert_eq!(sub.recv().await, Some(Packet::PubRel(first.pid.unwrap())));
    drop(sub);

    let (mut sub, present) = RawClient::connect(addr, "sub", false).await;
    assert!(present, "session present [MQTT-3.2.2-2]");
    // Original order: PUBREL for the first, then the second PUBLISH again with DUP=1.
    assert_eq!(sub.recv().await, Some(Packet::PubRel(first.pid.unwrap())));
    let resent = sub.recv_publish().await;
    assert!(resent.dup);
    assert_eq!(resent.pid, second.pid);
    assert_eq!(&resent.payload[..], b"second");
    sub.send(&Packet::PubComp(first.pid.unwrap())).await;
    sub.send(&Packet::PubRec(resent.pid.unwrap())).await;
    assert_eq!(sub.recv().await, Some(Packet::PubRel(resent.pid.unwrap())));
    sub.send(&Packet::PubComp(resent.pid.unwrap())).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    let stats = broker.stats();
    assert_eq!(stats.messages.inflight.qos2, 0);
}

#[tokio::test]
async fn offline_persistent_session_queues_qos1_and_qos2_not_qos0() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut sub, present) = RawClient::connect(addr, "offline", false).await;
    assert!(!present);
    sub.subscribe(1, &[("q/#", QoS::ExactlyOnce)]).await;
    sub.send(&Packet::Disconnect).await;
    sub.expect_closed().await;

    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    publ.send(&publish("q/1", b"a", QoS::AtLeastOnce, Some(1), false))
        .await;
    publ.recv().await;
    publ.send(&publish("q/0", b"dropped", QoS::AtMostOnce, None, false))
        .await;
    publ.publish_qos2("q/2", b"b", 2).await;
    publ.send(&publish("q/1", b"c", QoS::AtLeastOnce, Some(3), false))
        .await;
    publ.recv().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(broker.stats().messages.queued, 3);

    let (mut sub, present) = RawClient::connect(addr, "offline", false).await;
    assert!(present);
    // The broker pipelines all three; answer each packet as it comes.
    let mut payloads = Vec::new();
    let mut open_flows = 0;
    while payloads.len() < 3 || open_flows > 0 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                payloads.push(p.payload.clone());
                match p.qos {
                    QoS::AtLeastOnce => sub.send(&Packet::PubAck(p.pid.unwrap())).await,
                    QoS::ExactlyOnce => {
                        open_flows += 1;
                        sub.send(&Packet::PubRec(p.pid.unwrap())).await;
                    }
                    QoS::AtMostOnce => panic!("QoS 0 was queued"),
                }
            }
            Some(Packet::PubRel(pid)) => {
                open_flows -= 1;
                sub.send(&Packet::PubComp(pid)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        payloads,
        vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")]
    );
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn clean_session_discards_state_mqtt_3_1_2_6() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut c, _) = RawClient::connect(addr, "c", false).await;
    c.subscribe(1, &[("x", QoS::AtLeastOnce)]).await;
    c.send(&Packet::Disconnect).await;
    c.expect_closed().await;
    let (mut c, present) = RawClient::connect(addr, "c", true).await;
    assert!(
        !present,
        "clean session never reports a session [MQTT-3.2.2-1]"
    );
    c.send(&Packet::Disconnect).await;
    c.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = broker.stats();
    assert_eq!(stats.sessions.total, 0);
    assert_eq!(stats.subscriptions.total, 0);
}

#[tokio::test]
async fn will_published_on_abrupt_close_and_discarded_on_disconnect() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut watcher, _) = RawClient::connect(addr, "watcher", true).await;
    watcher
        .subscribe(1, &[("status/#", QoS::AtLeastOnce)])
        .await;

    let with_will = |id: &str| {
        let mut c = connect_packet(id, true);
        c.will = Some(LastWill {
            properties: None,
            topic: Arc::from(format!("status/{id}").as_str()),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
        });
        c
    };
    let (polite, _) = RawClient::connect_with(addr, with_will("polite")).await;
    let mut polite = polite;
    polite.send(&Packet::Disconnect).await;
    polite.expect_closed().await;
    watcher.expect_silence(Duration::from_millis(300)).await;

    let (rude, _) = RawClient::connect_with(addr, with_will("rude")).await;
    drop(rude);
    let p = watcher.recv_publish().await;
    assert_eq!(&*p.topic, "status/rude");
    assert_eq!(&p.payload[..], b"offline");
    assert!(
        !p.retain,
        "forwarded to an existing subscriber without RETAIN [MQTT-3.3.1-9]"
    );
    watcher.send(&Packet::PubAck(p.pid.unwrap())).await;
    // The will was retained: a new subscriber gets it with RETAIN=1.
    let (mut late, _) = RawClient::connect(addr, "late", true).await;
    late.subscribe(1, &[("status/rude", QoS::AtMostOnce)]).await;
    let r = late.recv_publish().await;
    assert!(r.retain);
}

#[tokio::test]
async fn second_connection_with_same_id_takes_over_mqtt_3_1_4_2() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut watcher, _) = RawClient::connect(addr, "watcher", true).await;
    watcher.subscribe(1, &[("will/dev", QoS::AtMostOnce)]).await;
    let mut first = connect_packet("dev", false);
    first.will = Some(LastWill {
        properties: None,
        topic: "will/dev".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
    });
    let (mut old, _) = RawClient::connect_with(addr, first).await;
    old.subscribe(1, &[("cmd", QoS::AtLeastOnce)]).await;
    let (mut new, present) = RawClient::connect(addr, "dev", false).await;
    assert!(present);
    old.expect_closed().await;
    // The old connection's will is published on takeover.
    assert_eq!(&watcher.recv_publish().await.payload[..], b"gone");
    // The session (and its subscription) continues on the new connection.
    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    publ.send(&publish("cmd", b"go", QoS::AtLeastOnce, Some(1), false))
        .await;
    let p = new.recv_publish().await;
    assert_eq!(&p.payload[..], b"go");
    assert_eq!(broker.stats().sessions.connected, 3);
}

#[tokio::test]
async fn keep_alive_expiry_closes_and_publishes_will_mqtt_3_1_2_24() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut watcher, _) = RawClient::connect(addr, "watcher", true).await;
    watcher.subscribe(1, &[("ka", QoS::AtMostOnce)]).await;
    let mut c = connect_packet("sleepy", true);
    c.keep_alive = 1;
    c.will = Some(LastWill {
        properties: None,
        topic: "ka".into(),
        payload: Bytes::from_static(b"timed out"),
        qos: QoS::AtMostOnce,
        retain: false,
    });
    let (mut sleepy, _) = RawClient::connect_with(addr, c).await;
    let start = tokio::time::Instant::now();
    // A PINGREQ resets the timer and is answered.
    sleepy.send(&Packet::PingReq).await;
    assert_eq!(sleepy.recv().await, Some(Packet::PingResp));
    sleepy.expect_closed().await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400),
        "closed too early: {elapsed:?}"
    );
    // The broker-wide keep-alive sweep runs every 100 ms: 1.5 s plus a tick, with slack
    // for a busy machine.
    assert!(
        elapsed < Duration::from_millis(2600),
        "closed too late: {elapsed:?}"
    );
    assert_eq!(&watcher.recv_publish().await.payload[..], b"timed out");
}

#[tokio::test]
async fn keep_alive_expires_for_a_client_that_only_receives_mqtt_3_1_2_24() {
    // A subscriber kept busy with deliveries (the broker always has something to write) but
    // sending nothing itself is still closed at 1.5 × its keep-alive: the keep-alive verdict
    // must not be lost behind the writes.
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let mut c = connect_packet("busy-listener", true);
    c.keep_alive = 1;
    let (mut listener, _) = RawClient::connect_with(addr, c).await;
    listener.subscribe(1, &[("flood/#", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = RawClient::connect(addr, "flooder", true).await;
    let start = tokio::time::Instant::now();
    let flood = tokio::spawn(async move {
        let packet = publish("flood/x", &[7u8; 64], QoS::AtMostOnce, None, false);
        while start.elapsed() < Duration::from_secs(6) {
            for _ in 0..50 {
                publisher.send_lossy(&packet).await;
            }
            tokio::task::yield_now().await;
        }
    });
    let mut received = 0usize;
    let closed_after = loop {
        match listener.recv_within(Duration::from_secs(6)).await {
            Ok(Some(_)) => received += 1,
            Ok(None) => break start.elapsed(),
            Err(()) => panic!("the listener was never closed ({received} messages received)"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "still open after {:?} without sending a packet ({received} messages received)",
            start.elapsed()
        );
    };
    flood.abort();
    assert!(
        received > 100,
        "the flood did not reach the listener: {received}"
    );
    assert!(
        closed_after >= Duration::from_millis(1400),
        "closed too early: {closed_after:?}"
    );
}

#[tokio::test]
async fn keep_alive_counts_whole_packets_not_trickled_bytes_mqtt_3_1_2_24() {
    use tokio::io::AsyncWriteExt;
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let mut c = connect_packet("trickler", true);
    c.keep_alive = 1;
    let (mut trickler, _) = RawClient::connect_with(addr, c).await;
    let start = tokio::time::Instant::now();
    // One PUBLISH, a byte every 250 ms: bytes keep arriving, but no Control Packet does
    // within 1.5 x keep-alive, so the broker must close.
    let mut bytes = bytes::BytesMut::new();
    encode(
        &publish("ka/slow", b"0123456789", QoS::AtMostOnce, None, false),
        &mut bytes,
    );
    let mut closed = false;
    for b in bytes.iter() {
        if trickler.stream.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        if let Ok(None) = trickler.recv_within(Duration::from_millis(250)).await {
            closed = true;
            break;
        }
    }
    let elapsed = start.elapsed();
    assert!(
        closed,
        "still connected after the whole packet was trickled in"
    );
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_millis(3500),
        "closed after {elapsed:?}, expected about 1.5 s"
    );
}

#[tokio::test]
async fn retained_messages_replace_delete_and_flag_mqtt_3_3_1() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    publ.send(&publish("r/a", b"1", QoS::AtMostOnce, None, true))
        .await;
    publ.send(&publish("r/a", b"2", QoS::AtMostOnce, None, true))
        .await;
    publ.send(&publish("r/b", b"3", QoS::AtMostOnce, None, true))
        .await;
    publ.send(&publish("r/b", b"", QoS::AtMostOnce, None, true))
        .await;
    publ.send(&Packet::PingReq).await;
    assert_eq!(publ.recv().await, Some(Packet::PingResp));
    assert_eq!(broker.stats().messages.retained, 1);

    let (mut sub, _) = RawClient::connect(addr, "sub", true).await;
    sub.subscribe(1, &[("r/#", QoS::AtLeastOnce)]).await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (&*p.topic, &p.payload[..], p.retain),
        ("r/a", &b"2"[..], true)
    );
    // Retained message was published at QoS 0: delivered at QoS 0.
    assert_eq!(p.qos, QoS::AtMostOnce);
    sub.expect_silence(Duration::from_millis(200)).await;
    // Re-subscribing re-sends retained messages [MQTT-3.8.4-3].
    sub.subscribe(2, &[("r/a", QoS::AtMostOnce)]).await;
    assert!(sub.recv_publish().await.retain);
}

#[tokio::test]
async fn retained_limit_refuses_new_topics_but_updates_existing() {
    let broker = start_broker(|c| c.persistence.retained_message_limit = 2).await;
    let (mut publ, _) = RawClient::connect(broker.local_addr(), "pub", true).await;
    for (t, v) in [("a", "1"), ("b", "1"), ("c", "1"), ("a", "2")] {
        publ.send(&publish(t, v.as_bytes(), QoS::AtLeastOnce, Some(1), true))
            .await;
        assert_eq!(publ.recv().await, Some(Packet::PubAck(1)));
    }
    let (mut sub, _) = RawClient::connect(broker.local_addr(), "sub", true).await;
    sub.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
    let mut got = [sub.recv_publish().await, sub.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(&*got[0].topic, "a");
    assert_eq!(&got[0].payload[..], b"2");
    assert_eq!(&*got[1].topic, "b");
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn dollar_topics_not_matched_by_leading_wildcards_mqtt_4_7_2_1() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut all, _) = RawClient::connect(addr, "all", true).await;
    all.subscribe(1, &[("#", QoS::AtMostOnce), ("+/x", QoS::AtMostOnce)])
        .await;
    let (mut dollar, _) = RawClient::connect(addr, "dollar", true).await;
    dollar.subscribe(1, &[("$app/#", QoS::AtMostOnce)]).await;
    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    publ.send(&publish("$app/x", b"d", QoS::AtMostOnce, None, false))
        .await;
    publ.send(&publish("plain/x", b"p", QoS::AtMostOnce, None, false))
        .await;
    assert_eq!(&dollar.recv_publish().await.payload[..], b"d");
    assert_eq!(&all.recv_publish().await.payload[..], b"p");
    all.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_is_always_acknowledged() {
    let broker = start_broker(|_| {}).await;
    let (mut c, _) = RawClient::connect(broker.local_addr(), "c", true).await;
    c.subscribe(1, &[("u", QoS::AtMostOnce)]).await;
    c.send(&Packet::Unsubscribe(Unsubscribe {
        properties: None,
        pid: 2,
        filters: vec!["u".into(), "never".into()],
    }))
    .await;
    assert_eq!(
        c.recv().await,
        Some(Packet::UnsubAck(mqtt_broker::protocol::UnsubAck::new(2)))
    );
    c.send(&publish("u", b"x", QoS::AtMostOnce, None, false))
        .await;
    c.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(broker.stats().subscriptions.total, 0);
}

#[tokio::test]
async fn empty_client_id_assigned_with_clean_session_refused_without_mqtt_3_1_3_8() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (_c, ack) = RawClient::connect_with(addr, connect_packet("", true)).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    let (mut c, ack) = RawClient::connect_with(addr, connect_packet("", false)).await;
    assert_eq!(ack.code, ConnectReturnCode::IdentifierRejected);
    c.expect_closed().await;
}

#[tokio::test]
async fn mqtt_3_1_level_3_accepted_and_level_6_refused_mqtt_3_1_2_2() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let mut old = connect_packet("old-device", true);
    old.protocol = ProtocolLevel::V31;
    let (mut c, ack) = RawClient::connect_with(addr, old).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));

    // Level 5 is MQTT 5 (tests/mqtt5.rs); a level no version has is refused.
    let mut v6 = RawClient::open(addr).await;
    v6.send_raw(&[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 0, 0])
        .await;
    assert_eq!(
        v6.recv().await,
        Some(Packet::ConnAck(ConnAck {
            properties: None,
            reason_code: None,
            session_present: false,
            code: ConnectReturnCode::UnacceptableProtocolVersion
        }))
    );
    v6.expect_closed().await;
}

#[tokio::test]
async fn max_connections_refused_with_connack_3() {
    let broker = start_broker(|c| c.server.max_connections = 2).await;
    let addr = broker.local_addr();
    let (_a, _) = RawClient::connect(addr, "a", true).await;
    let (_b, _) = RawClient::connect(addr, "b", true).await;
    let (mut c, ack) = RawClient::connect_with(addr, connect_packet("c", true)).await;
    assert_eq!(ack.code, ConnectReturnCode::ServerUnavailable);
    c.expect_closed().await;
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_d, _) = RawClient::connect(addr, "d", true).await;
}

#[tokio::test]
async fn oversized_packet_closes_only_that_connection() {
    let broker = start_broker(|c| c.server.max_packet_size = 1024).await;
    let addr = broker.local_addr();
    let (mut good, _) = RawClient::connect(addr, "good", true).await;
    good.subscribe(1, &[("t", QoS::AtMostOnce)]).await;
    let (mut big, _) = RawClient::connect(addr, "big", true).await;
    // Declares ~256 MB; refused from the header alone.
    big.send_raw(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await;
    big.expect_closed().await;
    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    publ.send(&publish("t", &[7u8; 900], QoS::AtMostOnce, None, false))
        .await;
    assert_eq!(good.recv_publish().await.payload.len(), 900);
}

#[tokio::test]
async fn subscriber_queue_limit_drops_and_counts() {
    let broker = start_broker(|c| {
        c.performance.message_queue_limit = 3;
        c.performance.inflight_window_size = 1;
    })
    .await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "slow", true).await;
    sub.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    for i in 1..=10u16 {
        publ.send(&publish(
            "t",
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            Some(i),
            false,
        ))
        .await;
        assert_eq!(publ.recv().await, Some(Packet::PubAck(i)));
    }
    // One inflight + three queued reach the subscriber; six were dropped.
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = sub.recv_publish().await;
        got.push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
        sub.send(&Packet::PubAck(p.pid.unwrap())).await;
    }
    assert_eq!(got, vec![1, 2, 3, 4]);
    sub.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(broker.stats().messages.dropped_queue_full, 6);
}

/// Malformed input closes only the offending connection [MQTT-4.8.0-1]; a client beside it
/// keeps exchanging QoS 2 messages.
#[tokio::test]
async fn malformed_packets_close_only_that_connection() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut good, _) = RawClient::connect(addr, "good", true).await;
    good.subscribe(1, &[("ok", QoS::ExactlyOnce)]).await;
    let connect = {
        let mut out = bytes::BytesMut::new();
        encode(
            &Packet::Connect(Box::new(connect_packet("bad", true))),
            &mut out,
        );
        out.to_vec()
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "packet before CONNECT [MQTT-3.1.0-1]",
            vec![0xc0, 0x00],
            false,
        ),
        (
            "wrong protocol name [MQTT-3.1.2-1]",
            vec![0x10, 12, 0, 4, b'M', b'Q', b'X', b'X', 4, 2, 0, 60, 0, 0],
            false,
        ),
        (
            "reserved CONNECT flag [MQTT-3.1.2-3]",
            vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 3, 0, 60, 0, 0],
            false,
        ),
        (
            "password without user name [MQTT-3.1.2-22]",
            vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 60, 0, 0],
            false,
        ),
        (
            "five-byte remaining length",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            true,
        ),
        ("second CONNECT [MQTT-3.1.0-2]", connect.clone(), true),
        (
            "PUBLISH QoS 3 [MQTT-3.3.1-4]",
            vec![0x36, 5, 0, 1, b't', 0, 1],
            true,
        ),
        (
            "wildcard in topic name [MQTT-3.3.2-2]",
            vec![0x30, 4, 0, 2, b'a', b'#'],
            true,
        ),
        (
            "invalid UTF-8 topic [MQTT-1.5.3-1]",
            vec![0x30, 4, 0, 2, 0xc3, 0x28],
            true,
        ),
        (
            "U+0000 in topic [MQTT-1.5.3-2]",
            vec![0x30, 4, 0, 2, b'a', 0],
            true,
        ),
        (
            "packet id 0 [MQTT-2.3.1-1]",
            vec![0x32, 5, 0, 1, b't', 0, 0],
            true,
        ),
        (
            "SUBSCRIBE bad flags [MQTT-3.8.1-1]",
            vec![0x80, 6, 0, 1, 0, 1, b't', 0],
            true,
        ),
        (
            "SUBSCRIBE without filters [MQTT-3.8.3-3]",
            vec![0x82, 2, 0, 1],
            true,
        ),
        (
            "'#' not last [MQTT-4.7.1-2]",
            vec![0x82, 8, 0, 1, 0, 3, b'#', b'/', b'a', 0],
            true,
        ),
        (
            "empty topic filter [MQTT-4.7.3-1]",
            vec![0x82, 5, 0, 1, 0, 0, 0],
            true,
        ),
        ("PUBREL bad flags [MQTT-3.6.1-1]", vec![0x60, 2, 0, 1], true),
        ("reserved packet type", vec![0xf0, 0], true),
        ("server-only packet CONNACK", vec![0x20, 2, 0, 0], true),
    ];
    for (i, (name, bytes, after_connect)) in cases.into_iter().enumerate() {
        let mut bad = if after_connect {
            RawClient::connect(addr, "bad", true).await.0
        } else {
            RawClient::open(addr).await
        };
        bad.send_raw(&bytes).await;
        match bad.recv_within(WAIT).await {
            Ok(None) => {}
            other => panic!("{name}: connection not closed: {other:?}"),
        }
        let mut publ = RawClient::connect(addr, "pub", true).await.0;
        publ.publish_qos2("ok", name.as_bytes(), (i + 1) as u16)
            .await;
        assert_eq!(
            &good.receive_qos2().await.payload[..],
            name.as_bytes(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn connect_timeout_closes_silent_socket() {
    let broker = start_broker(|c| {
        c.server.connect_timeout = mqtt_broker::config::ConfigDuration::millis(300)
    })
    .await;
    let mut silent = RawClient::open(broker.local_addr()).await;
    // A partial CONNECT (slowloris) must not keep the socket open.
    silent.send_raw(&[0x10, 20, 0]).await;
    match silent.recv_within(Duration::from_secs(2)).await {
        Ok(None) => {}
        other => panic!("not closed: {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_closes_clients() {
    let broker = start_broker(|_| {}).await;
    let (mut c, _) = RawClient::connect(broker.local_addr(), "c", true).await;
    broker.shutdown().await;
    c.expect_closed().await;
}

/// The will is published when the server closes the connection for a protocol error
/// [MQTT-3.1.2-8] (section 3.1.2.5 lists "the Server closes the Network Connection because
/// of a protocol error" among the cases), whatever the error: a wildcard in a PUBLISH topic,
/// a second CONNECT, a reserved packet type, PUBREL with wrong flags.
#[tokio::test]
async fn will_published_when_closed_for_protocol_error_mqtt_3_1_2_8() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut watcher, _) = RawClient::connect(addr, "watcher", true).await;
    watcher
        .subscribe(1, &[("status/#", QoS::AtLeastOnce)])
        .await;
    let second_connect = {
        let mut out = bytes::BytesMut::new();
        encode(
            &Packet::Connect(Box::new(connect_packet("again", true))),
            &mut out,
        );
        out.to_vec()
    };
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "wildcard-topic",
            vec![0x30, 6, 0, 4, b'a', b'/', b'#', b'x'],
        ),
        ("second-connect", second_connect),
        ("reserved-type", vec![0xf0, 0]),
        ("pubrel-flags", vec![0x60, 2, 0, 1]),
    ];
    for (id, bad) in cases {
        let mut c = connect_packet(id, true);
        c.will = Some(LastWill {
            properties: None,
            topic: Arc::from(format!("status/{id}").as_str()),
            payload: Bytes::from(format!("{id} lost")),
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        let (mut offender, ack) = RawClient::connect_with(addr, c).await;
        assert_eq!(ack.code, ConnectReturnCode::Accepted);
        offender.send_raw(&bad).await;
        match offender.recv_within(WAIT).await {
            Ok(None) => {}
            other => panic!("{id}: connection not closed: {other:?}"),
        }
        let p = watcher.recv_publish().await;
        assert_eq!(&*p.topic, format!("status/{id}"), "{id}");
        assert_eq!(&p.payload[..], format!("{id} lost").as_bytes(), "{id}");
        assert_eq!(p.qos, QoS::AtLeastOnce, "{id}: the will's QoS");
        assert!(!p.retain, "{id}");
        watcher.send(&Packet::PubAck(p.pid.unwrap())).await;
    }
    watcher.expect_silence(Duration::from_millis(200)).await;
}

/// `performance.queue_qos0_offline`: off (the default), QoS 0 messages for an offline
/// persistent session are dropped; on, they are queued like QoS 1/2 and delivered in order
/// on reconnect.
#[tokio::test]
async fn queue_qos0_offline_queues_qos0_for_persistent_sessions_only_when_enabled() {
    for enabled in [false, true] {
        let broker = start_broker(|c| c.performance.queue_qos0_offline = enabled).await;
        assert!(
            !mqtt_broker::config::Config::default()
                .performance
                .queue_qos0_offline,
            "off by default"
        );
        let addr = broker.local_addr();
        let (mut sub, _) = RawClient::connect(addr, "offline0", false).await;
        sub.subscribe(1, &[("q0/#", QoS::AtLeastOnce)]).await;
        sub.send(&Packet::Disconnect).await;
        sub.expect_closed().await;

        let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
        publ.send(&publish("q0/a", b"zero-1", QoS::AtMostOnce, None, false))
            .await;
        publ.send(&publish("q0/b", b"one", QoS::AtLeastOnce, Some(1), false))
            .await;
        assert_eq!(publ.recv().await, Some(Packet::PubAck(1)));
        publ.send(&publish("q0/a", b"zero-2", QoS::AtMostOnce, None, false))
            .await;
        publ.send(&Packet::PingReq).await;
        assert_eq!(publ.recv().await, Some(Packet::PingResp));
        let queued = if enabled { 3 } else { 1 };
        assert_eq!(broker.stats().messages.queued, queued, "enabled={enabled}");

        let (mut sub, present) = RawClient::connect(addr, "offline0", false).await;
        assert!(present);
        let mut got = Vec::new();
        for _ in 0..queued {
            let p = sub.recv_publish().await;
            if let Some(pid) = p.pid {
                sub.send(&Packet::PubAck(pid)).await;
            }
            got.push((p.qos, String::from_utf8_lossy(&p.payload).into_owned()));
        }
        let want: Vec<(QoS, String)> = if enabled {
            vec![
                (QoS::AtMostOnce, "zero-1".into()),
                (QoS::AtLeastOnce, "one".into()),
                (QoS::AtMostOnce, "zero-2".into()),
            ]
        } else {
            vec![(QoS::AtLeastOnce, "one".into())]
        };
        assert_eq!(got, want, "enabled={enabled}");
        sub.expect_silence(Duration::from_millis(200)).await;
        broker.shutdown().await;
    }
}

/// Captures what the broker logs on this thread: with the default current-thread runtime
/// of `#[tokio::test]`, the broker's tasks run here, and other tests are not affected.
struct LogCapture {
    buf: Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl LogCapture {
    fn start() -> LogCapture {
        #[derive(Clone)]
        struct W(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = W(buf.clone());
        let guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_env_filter("mqtt_broker=info")
                .with_ansi(false)
                .with_writer(move || w.clone())
                .finish(),
        );
        LogCapture { buf, _guard: guard }
    }

    /// Lines containing every one of `needles`.
    fn lines(&self, needles: &[&str]) -> Vec<String> {
        let logs = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&logs)
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }
}

/// `persistence.retained_message_limit`: a new retained topic beyond the cap is refused (not
/// stored, so a later subscriber does not get it), logged and counted in /metrics, while
/// the message itself is still delivered to current subscribers and existing retained
/// topics still update.
#[tokio::test]
async fn retained_limit_refusal_is_logged_counted_and_still_delivered_live() {
    let logs = LogCapture::start();
    let broker = start_broker(|c| {
        c.persistence.retained_message_limit = 2;
        c.admin.bind = "127.0.0.1:0".parse().unwrap();
    })
    .await;
    let admin = broker.admin_addr().expect("admin listener bound");
    let addr = broker.local_addr();
    let (mut live, _) = RawClient::connect(addr, "live", true).await;
    live.subscribe(1, &[("cap/#", QoS::AtLeastOnce)]).await;
    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    for (i, (t, v)) in [
        ("cap/a", "a1"),
        ("cap/b", "b1"),
        ("cap/c", "c1"),
        ("cap/a", "a2"),
    ]
    .into_iter()
    .enumerate()
    {
        let pid = i as u16 + 1;
        publ.send(&publish(t, v.as_bytes(), QoS::AtLeastOnce, Some(pid), true))
            .await;
        // Acknowledged like any PUBLISH: the refusal concerns only the retained copy.
        assert_eq!(publ.recv().await, Some(Packet::PubAck(pid)));
        // The current subscriber gets every message, the refused one included, without
        // RETAIN (ordinary forwarding [MQTT-3.3.1-9]).
        let p = live.recv_publish().await;
        assert_eq!((&*p.topic, &p.payload[..]), (t, v.as_bytes()));
        assert!(!p.retain);
        live.send(&Packet::PubAck(p.pid.unwrap())).await;
    }
    assert_eq!(broker.stats().messages.retained, 2);

    // Stored: cap/a (updated) and cap/b; cap/c was refused.
    let (mut late, _) = RawClient::connect(addr, "late", true).await;
    late.subscribe(1, &[("cap/#", QoS::AtMostOnce)]).await;
    let mut got = [late.recv_publish().await, late.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    let got: Vec<(&str, &[u8], bool)> = got
        .iter()
        .map(|p| (&*p.topic, &p.payload[..], p.retain))
        .collect();
    assert_eq!(
        got,
        vec![("cap/a", &b"a2"[..], true), ("cap/b", &b"b1"[..], true)]
    );
    late.expect_silence(Duration::from_millis(200)).await;

    // Counted (once) ...
    let m = http::scrape(admin, None).await;
    assert_eq!(
        m.value("mqtt_limit_refusals_total{limit=\"retained_message_limit\"}"),
        1.0
    );
    assert_eq!(
        m.value("mqtt_messages_dropped_total{reason=\"retained_limit\"}"),
        1.0
    );
    // ... and logged with the topic and the limit.
    let lines = logs.lines(&["retained_message_limit reached", "cap/c"]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("limit=2"),
        "{}",
        lines[0]
    );
    assert!(logs
        .lines(&["retained_message_limit reached", "cap/a"])
        .is_empty());
    broker.shutdown().await;
}
