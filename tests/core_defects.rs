//! Regression tests, over real sockets, for the defects fixed with the protocol engine:
//! a takeover that lost what the old connection had already sent, a peer that is not MQTT
//! held open for `connect_timeout`, and acknowledgements of the wrong kind ignored.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use mqtt_broker::protocol::*;
use std::time::{Duration, Instant};

/// A persistent client sends PUBLISH and then DISCONNECT and reconnects at once: the old
/// connection handles what its client had already sent before the takeover closes it, so
/// the PUBLISH is routed (and acknowledged) and the will is not published
/// [MQTT-3.14.4-3]. The publish rate makes it deterministic: the old connection has
/// stopped reading (over `publish_rate`) when the last PUBLISH and the DISCONNECT arrive,
/// so they wait unread in its socket when the new connection takes the session over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_handles_what_the_old_connection_already_sent_mqtt_3_14_4_3() {
    let broker = start_broker(|c| c.limits.publish_rate = 1).await;
    let addr = broker.local_addr();
    let (mut watcher, _) = RawClient::connect(addr, "watcher", true).await;
    watcher
        .subscribe(
            1,
            &[("data/#", QoS::AtLeastOnce), ("will/dev", QoS::AtMostOnce)],
        )
        .await;

    let mut first = connect_packet("dev", false);
    first.will = Some(LastWill {
        properties: None,
        topic: "will/dev".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
    });
    let (mut old, _) = RawClient::connect_with(addr, first).await;
    // The second PUBLISH is over the rate: the connection stops reading for about a second.
    old.send(&publish("data/1", b"1", QoS::AtLeastOnce, Some(1), false))
        .await;
    old.send(&publish("data/2", b"2", QoS::AtLeastOnce, Some(2), false))
        .await;
    assert_eq!(old.recv().await, Some(Packet::PubAck(1)));
    // PUBLISH 3 and DISCONNECT in one write, then the takeover at once.
    let mut tail = BytesMut::new();
    encode(
        &publish("data/3", b"3", QoS::AtLeastOnce, Some(3), false),
        &mut tail,
    );
    encode(&Packet::Disconnect, &mut tail);
    old.send_raw(&tail).await;
    let (_new, present) = RawClient::connect(addr, "dev", false).await;
    assert!(present);

    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < 3 && Instant::now() < deadline {
        let p = watcher.recv_publish().await;
        assert_ne!(
            &*p.topic, "will/dev",
            "the will was published although DISCONNECT was sent"
        );
        if let Some(pid) = p.pid {
            watcher.send(&Packet::PubAck(pid)).await;
        }
        got.push(p.payload);
    }
    assert_eq!(
        got,
        vec!["1", "2", "3"],
        "no PUBLISH the old connection had is lost"
    );
    watcher.expect_silence(Duration::from_millis(300)).await;
}

/// A peer that does not speak MQTT (an HTTP request or a TLS ClientHello on the plain MQTT
/// port) is closed as soon as its first byte shows it is not a CONNECT fixed header
/// [MQTT-3.1.0-1], not after `connect_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_mqtt_is_closed_at_once_mqtt_3_1_0_1() {
    let broker =
        start_broker(|c| c.server.connect_timeout = mqtt_broker::config::ConfigDuration::secs(10))
            .await;
    let addr = broker.local_addr();
    // The start of a TLS 1.2 ClientHello record.
    let client_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    let http: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    // A PUBLISH before CONNECT, split so that its body never completes.
    let publish_first: &[u8] = &[0x30, 0x7f, 0x00];
    for bytes in [http, client_hello, publish_first] {
        let mut c = RawClient::open(addr).await;
        let start = Instant::now();
        c.send_raw(bytes).await;
        match c.recv_within(Duration::from_secs(2)).await {
            Ok(None) => {}
            other => panic!("{bytes:?}: not closed at once: {other:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "closed after {:?}",
            start.elapsed()
        );
    }
    // A real client is unaffected, also one whose CONNECT arrives a byte at a time.
    let mut slow = RawClient::open(addr).await;
    let mut connect = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(connect_packet("slow", true))),
        &mut connect,
    );
    for b in connect.iter() {
        slow.send_raw(&[*b]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        matches!(slow.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Accepted)
    );
}

/// Acknowledgements of the wrong kind close the connection [MQTT-4.8.0-1]: PUBREC or
/// PUBCOMP for a QoS 1 delivery, PUBACK for a QoS 2 one, PUBCOMP before PUBREC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_of_the_wrong_kind_closes_mqtt_4_8_0_1() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    type Ack = fn(u16) -> Packet;
    let cases: [(QoS, Ack); 4] = [
        (QoS::AtLeastOnce, Packet::PubRec),
        (QoS::AtLeastOnce, Packet::PubComp),
        (QoS::ExactlyOnce, Packet::PubAck),
        (QoS::ExactlyOnce, Packet::PubComp),
    ];
    for (i, (qos, wrong)) in cases.into_iter().enumerate() {
        let id = format!("sub{i}");
        let (mut sub, _) = RawClient::connect(addr, &id, true).await;
        sub.subscribe(1, &[("t", QoS::ExactlyOnce)]).await;
        let pid = 10 + i as u16;
        match qos {
            QoS::ExactlyOnce => publ.publish_qos2("t", b"x", pid).await,
            _ => {
                publ.send(&publish("t", b"x", qos, Some(pid), false)).await;
                assert_eq!(publ.recv().await, Some(Packet::PubAck(pid)));
            }
        }
        let delivered = sub.recv_publish().await;
        assert_eq!(delivered.qos, qos);
        let ack = wrong(delivered.pid.expect("pid"));
        sub.send(&ack).await;
        sub.expect_closed().await;
    }
    // An acknowledgement for an id the broker does not know is still ignored.
    let (mut c, _) = RawClient::connect(addr, "unknown", true).await;
    let mut raw = BytesMut::new();
    raw.put_slice(&[0x40, 2, 0x12, 0x34]);
    c.send_raw(&raw).await;
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
}

/// A message published with RETAIN while another client subscribes to its topic reaches the
/// subscriber once: as the retained message of the new subscription [MQTT-3.3.1-6] or as a
/// live message, never both (the broker used to store it, let the subscription in and read
/// the retained store, and only then collect the subscribers of the message). Racy by
/// nature, so it is tried many times; each round must give exactly one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_retained_while_a_client_subscribes_arrives_once() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut publisher, _) = RawClient::connect(addr, "retainer", true).await;
    let rounds = 150;
    let mut subscribers = Vec::new();
    for i in 0..rounds {
        let (sub, _) = RawClient::connect(addr, &format!("sub-{i}"), true).await;
        subscribers.push(sub);
    }
    for (i, sub) in subscribers.iter_mut().enumerate() {
        let topic = format!("race/{i}");
        // Both sides at once: the PUBLISH and the SUBSCRIBE race inside the broker.
        let publish = publish(&topic, b"v", QoS::AtMostOnce, None, true);
        let subscribe = Packet::Subscribe(Subscribe {
            options: Vec::new(),
            properties: None,
            pid: 1,
            filters: vec![(topic.clone(), QoS::AtMostOnce)],
        });
        tokio::join!(publisher.send(&publish), sub.send(&subscribe));
    }
    // Each subscriber is read on its own task: the quiet periods overlap.
    let readers: Vec<_> = subscribers
        .into_iter()
        .enumerate()
        .map(|(i, mut sub)| {
            tokio::spawn(async move {
                // The server may send matching PUBLISHes before the SUBACK (section 3.8.4).
                let (mut copies, mut acked) = (0, false);
                while let Ok(Some(p)) = sub
                    .recv_within(Duration::from_millis(if copies == 0 || !acked {
                        3000
                    } else {
                        200
                    }))
                    .await
                {
                    match p {
                        Packet::Publish(p) => {
                            assert_eq!(&*p.topic, format!("race/{i}"));
                            copies += 1;
                        }
                        Packet::SubAck(a) => {
                            assert_eq!(a.codes, vec![SubAckCode::Granted(QoS::AtMostOnce)]);
                            acked = true;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                assert!(acked, "race/{i}: SUBACK");
                (i, copies)
            })
        })
        .collect();
    for r in readers {
        let (i, copies) = r.await.expect("reader");
        assert_eq!(copies, 1, "race/{i}: one copy, retained or live");
    }
    broker.shutdown().await;
}
