//! MQTT 5.0 over real sockets, byte for byte: CONNECT/CONNACK negotiation, reason codes on
//! every acknowledgement, server DISCONNECT codes, PUBLISH properties, subscription options,
//! topic aliases, receive maximum and maximum packet size both ways, session and message
//! expiry, the will delay, shared subscriptions, 3.1.1 interoperation and persistence.
//!
//! Each test names the section or normative statement it checks. Real MQTT 5 client
//! libraries are driven in `tests/mqtt5_clients.rs`.

mod common;

use bytes::Bytes;
use common::*;
use mqtt_broker::config::{AclRule, Effect, RuleScope, StorageType};
use mqtt_broker::protocol::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// An MQTT 5 CONNECT (Clean Start as `clean`) with the given properties.
fn connect5(client_id: &str, clean: bool, props: Properties) -> Connect {
    Connect {
        bridge: false,
        protocol: ProtocolLevel::V5,
        clean_session: clean,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: (!props.is_empty()).then(|| Box::new(props)),
    }
}

/// Connects an MQTT 5 client and asserts success.
async fn open5(addr: SocketAddr, id: &str, clean: bool, props: Properties) -> (RawClient, ConnAck) {
    let (c, ack) = RawClient::connect_with(addr, connect5(id, clean, props)).await;
    assert_eq!(ack.v5_reason(), reason::SUCCESS, "CONNACK {ack:?}");
    (c, ack)
}

fn expiry(secs: u32) -> Properties {
    Properties {
        session_expiry_interval: Some(secs),
        ..Default::default()
    }
}

/// Subscribes one filter with options and an optional identifier; returns the SUBACK.
async fn subscribe5(
    c: &mut RawClient,
    pid: u16,
    filter: &str,
    qos: QoS,
    options: SubscriptionOptions,
    id: Option<u32>,
) -> SubAck {
    c.send(&Packet::Subscribe(Subscribe {
        pid,
        filters: vec![(filter.into(), qos)],
        options: vec![options],
        properties: id.map(|id| {
            Box::new(Properties {
                subscription_identifiers: vec![id],
                ..Default::default()
            })
        }),
    }))
    .await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => s,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn publish5(topic: &str, payload: &[u8], qos: QoS, pid: Option<u16>, props: Properties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pid,
        payload: Bytes::copy_from_slice(payload),
        properties: (!props.is_empty()).then(|| Arc::new(props)),
    })
}

/// The next packet must be a DISCONNECT with `code`; then the connection closes.
async fn expect_disconnect(c: &mut RawClient, code: u8) -> Option<Box<Properties>> {
    loop {
        match c.recv().await {
            Some(Packet::DisconnectWithReason(d)) => {
                assert_eq!(d.reason, code, "DISCONNECT reason code: {d:?}");
                c.expect_closed().await;
                return d.properties;
            }
            Some(Packet::PubAck(_) | Packet::PubRec(_)) => continue,
            other => panic!("expected DISCONNECT {code:#04x}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn connack_announces_the_server_limits_and_assigns_an_id_mqtt_3_2_2_16() {
    let broker = start_broker(|c| {
        c.mqtt5.topic_alias_maximum = 5;
        c.mqtt5.receive_maximum = 7;
        c.mqtt5.shared_subscriptions = false;
        c.mqtt5.response_information = "resp/".into();
    })
    .await;
    let (_c, ack) = open5(
        broker.local_addr(),
        "",
        true,
        Properties {
            request_response_information: Some(1),
            ..Default::default()
        },
    )
    .await;
    let p = ack.properties.expect("CONNACK properties");
    let assigned = p.assigned_client_identifier.expect("assigned id");
    assert!(!assigned.is_empty());
    assert_eq!(p.topic_alias_maximum, Some(5));
    assert_eq!(p.receive_maximum, Some(7));
    assert_eq!(p.shared_subscription_available, Some(0));
    assert_eq!(p.response_information.as_deref(), Some("resp/"));
    assert_eq!(
        p.maximum_packet_size,
        Some(broker.config().server.max_packet_size as u32)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn enhanced_authentication_method_not_offered_gets_0x8c() {
    let broker = start_broker(|_| {}).await;
    let (mut c, ack) = RawClient::connect_with(
        broker.local_addr(),
        connect5(
            "scram",
            true,
            Properties {
                authentication_method: Some("SCRAM-SHA-1".into()),
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(ack.v5_reason(), reason::BAD_AUTHENTICATION_METHOD);
    c.expect_closed().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn acknowledgements_carry_reason_codes_mqtt_3_4_2_1() {
    let broker = start_broker(|c| {
        c.security.acl = vec![
            AclRule {
                effect: Effect::Deny,
                scope: RuleScope::All,
                topic: "secret/#".into(),
                user: None,
                client_id: None,
            },
            AclRule {
                effect: Effect::Allow,
                scope: RuleScope::All,
                topic: "#".into(),
                user: None,
                client_id: None,
            },
        ];
        c.limits.max_subscriptions = 2;
    })
    .await;
    let addr = broker.local_addr();
    let (mut c, _) = open5(addr, "acks", true, Properties::default()).await;
    // No subscriber: success, but 0x10 says nobody took it.
    c.send(&publish5(
        "nobody/here",
        b"x",
        QoS::AtLeastOnce,
        Some(1),
        Properties::default(),
    ))
    .await;
    match c.recv().await {
        Some(Packet::Ack(a)) => {
            assert_eq!((a.kind, a.pid, a.reason), (AckKind::PubAck, 1, 0x10))
        }
        other => panic!("expected PUBACK 0x10, got {other:?}"),
    }
    // Denied by the ACL: 0x87 with a reason string (problem information is on by default).
    c.send(&publish5(
        "secret/x",
        b"x",
        QoS::ExactlyOnce,
        Some(2),
        Properties::default(),
    ))
    .await;
    match c.recv().await {
        Some(Packet::Ack(a)) => {
            assert_eq!((a.kind, a.pid, a.reason), (AckKind::PubRec, 2, 0x87));
            assert!(a.properties.and_then(|p| p.reason_string).is_some());
        }
        other => panic!("expected PUBREC 0x87, got {other:?}"),
    }
    // A failed PUBREC ends the flow: the id is free again for a new message.
    c.send(&publish5(
        "nobody/2",
        b"x",
        QoS::ExactlyOnce,
        Some(2),
        Properties::default(),
    ))
    .await;
    assert!(
        matches!(c.recv().await, Some(Packet::Ack(a)) if a.kind == AckKind::PubRec && a.reason == 0x10)
    );
    c.send(&Packet::PubRel(2)).await;
    assert_eq!(c.recv().await, Some(Packet::PubComp(2)));
    // PUBREL for an unknown id: PUBCOMP 0x92.
    c.send(&Packet::PubRel(9)).await;
    assert!(
        matches!(c.recv().await, Some(Packet::Ack(a)) if a.kind == AckKind::PubComp && a.reason == reason::PACKET_IDENTIFIER_NOT_FOUND)
    );
    // Payload Format Indicator 1 with a payload that is not UTF-8: 0x99.
    c.send(&publish5(
        "t",
        &[0xff, 0xfe],
        QoS::AtLeastOnce,
        Some(3),
        Properties {
            payload_format_indicator: Some(1),
            ..Default::default()
        },
    ))
    .await;
    assert!(
        matches!(c.recv().await, Some(Packet::Ack(a)) if a.reason == reason::PAYLOAD_FORMAT_INVALID)
    );

    // SUBACK: granted, not authorized, malformed shared filter, then over the quota.
    c.send(&Packet::Subscribe(Subscribe {
        pid: 4,
        filters: vec![
            ("a/#".into(), QoS::AtLeastOnce),
            ("secret/#".into(), QoS::AtMostOnce),
            ("$share//x".into(), QoS::AtMostOnce),
            ("b".into(), QoS::ExactlyOnce),
            ("c".into(), QoS::ExactlyOnce),
        ],
        options: Vec::new(),
        properties: None,
    }))
    .await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => assert_eq!(
            s.codes,
            vec![
                SubAckCode::Granted(QoS::AtLeastOnce),
                SubAckCode::Refused(reason::NOT_AUTHORIZED),
                SubAckCode::Refused(reason::TOPIC_FILTER_INVALID),
                SubAckCode::Granted(QoS::ExactlyOnce),
                SubAckCode::Refused(reason::QUOTA_EXCEEDED),
            ]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // UNSUBACK: one reason code per filter [MQTT-3.11.3-1].
    c.send(&Packet::Unsubscribe(Unsubscribe {
        pid: 5,
        filters: vec!["a/#".into(), "never".into()],
        properties: None,
    }))
    .await;
    match c.recv().await {
        Some(Packet::UnsubAck(u)) => {
            assert_eq!(
                u.codes,
                vec![reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED]
            )
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn no_reason_strings_when_problem_information_is_off_mqtt_3_1_2_29() {
    let broker = start_broker(|_| {}).await;
    let (mut c, _) = open5(
        broker.local_addr(),
        "quiet",
        true,
        Properties {
            request_problem_information: Some(0),
            ..Default::default()
        },
    )
    .await;
    c.send(&publish5(
        "$SYS/x",
        b"x",
        QoS::AtLeastOnce,
        Some(1),
        Properties::default(),
    ))
    .await;
    match c.recv().await {
        Some(Packet::Ack(a)) => assert_eq!((a.reason, a.properties), (0x87, None)),
        other => panic!("expected PUBACK 0x87, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn publish_properties_reach_v5_subscribers_in_order_and_not_311_ones() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut v5, _) = open5(addr, "sub5", true, Properties::default()).await;
    let ack = subscribe5(
        &mut v5,
        1,
        "req/#",
        QoS::AtLeastOnce,
        Default::default(),
        Some(42),
    )
    .await;
    assert_eq!(ack.codes, vec![SubAckCode::Granted(QoS::AtLeastOnce)]);
    let (mut v3, _) = RawClient::connect(addr, "sub3", true).await;
    v3.subscribe(1, &[("req/#", QoS::AtLeastOnce)]).await;
    let (mut publ, _) = open5(addr, "pub5", true, Properties::default()).await;
    let props = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("resp/pub5".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        message_expiry_interval: Some(3600),
        ..Default::default()
    };
    publ.send(&publish5(
        "req/x",
        b"{}",
        QoS::AtLeastOnce,
        Some(1),
        props.clone(),
    ))
    .await;
    assert_eq!(publ.recv().await, Some(Packet::PubAck(1)));
    let got = v5.recv_publish().await;
    let p = got.properties.expect("properties forwarded");
    assert_eq!(
        p.user_properties, props.user_properties,
        "order kept [MQTT-3.3.2-18]"
    );
    assert_eq!(p.content_type, props.content_type);
    assert_eq!(p.response_topic, props.response_topic);
    assert_eq!(p.correlation_data, props.correlation_data);
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.subscription_identifiers, vec![42], "[MQTT-3.3.4-3]");
    let left = p.message_expiry_interval.expect("expiry forwarded");
    assert!((3590..=3600).contains(&left), "{left}");
    // The 3.1.1 subscriber gets the same message without properties.
    let got3 = v3.recv_publish().await;
    assert_eq!((&*got3.topic, &got3.payload[..]), ("req/x", &b"{}"[..]));
    // And a 3.1.1 PUBLISH reaches the MQTT 5 subscriber.
    let (mut p3, _) = RawClient::connect(addr, "pub3", true).await;
    p3.send(&publish("req/y", b"old", QoS::AtMostOnce, None, false))
        .await;
    let got = v5.recv_publish().await;
    assert_eq!(&got.payload[..], b"old");
    assert_eq!(
        got.properties.map(|p| p.subscription_identifiers.clone()),
        Some(vec![42])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn overlapping_subscriptions_with_identifiers_mqtt_3_3_4_5() {
    let broker = start_broker(|_| {}).await;
    let (mut c, _) = open5(broker.local_addr(), "ids", true, Properties::default()).await;
    subscribe5(
        &mut c,
        1,
        "a/+",
        QoS::AtMostOnce,
        Default::default(),
        Some(1),
    )
    .await;
    subscribe5(
        &mut c,
        2,
        "a/#",
        QoS::AtLeastOnce,
        Default::default(),
        Some(2),
    )
    .await;
    subscribe5(
        &mut c,
        3,
        "a/b",
        QoS::AtMostOnce,
        Default::default(),
        Some(2),
    )
    .await;
    let (mut p, _) = RawClient::connect(broker.local_addr(), "p", true).await;
    p.send(&publish("a/b", b"x", QoS::AtLeastOnce, Some(1), false))
        .await;
    // Different identifiers: one copy per subscription, each with its own identifier
    // [MQTT-3.3.4-5] (libmosquitto refuses a PUBLISH with several).
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = c.recv_publish().await;
        if let Some(pid) = m.pid {
            c.send(&Packet::PubAck(pid)).await;
        }
        let ids = m.properties.expect("ids").subscription_identifiers.clone();
        got.push((ids, m.qos));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (vec![1], QoS::AtMostOnce),
            (vec![2], QoS::AtMostOnce),
            (vec![2], QoS::AtLeastOnce)
        ]
    );
    c.expect_silence(Duration::from_millis(200)).await;
    // One identifier (or none) among the matches: one copy at the highest QoS [MQTT-3.3.5-1].
    subscribe5(
        &mut c,
        4,
        "z/+",
        QoS::AtMostOnce,
        Default::default(),
        Some(9),
    )
    .await;
    subscribe5(&mut c, 5, "z/#", QoS::AtLeastOnce, Default::default(), None).await;
    p.send(&publish("z/b", b"x", QoS::AtLeastOnce, Some(2), false))
        .await;
    let m = c.recv_publish().await;
    assert_eq!(m.qos, QoS::AtLeastOnce);
    assert_eq!(
        m.properties.map(|p| p.subscription_identifiers.clone()),
        Some(vec![9])
    );
    c.send(&Packet::PubAck(m.pid.unwrap())).await;
    c.expect_silence(Duration::from_millis(200)).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn subscription_options_no_local_retain_as_published_retain_handling() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut c, _) = open5(addr, "opts", true, Properties::default()).await;
    // No Local: own messages are not sent back [MQTT-3.8.3-3].
    let no_local = SubscriptionOptions {
        no_local: true,
        ..Default::default()
    };
    subscribe5(&mut c, 1, "chat/#", QoS::AtMostOnce, no_local, None).await;
    c.send(&publish5(
        "chat/1",
        b"mine",
        QoS::AtMostOnce,
        None,
        Properties::default(),
    ))
    .await;
    let (mut other, _) = RawClient::connect(addr, "other", true).await;
    other
        .send(&publish("chat/1", b"theirs", QoS::AtMostOnce, None, false))
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"theirs");

    // Retain As Published keeps RETAIN=1 on forwarding [MQTT-3.3.1-12]; without it the
    // flag is cleared [MQTT-3.3.1-13].
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..Default::default()
    };
    subscribe5(&mut c, 2, "keep/#", QoS::AtMostOnce, rap, None).await;
    subscribe5(
        &mut c,
        3,
        "drop/#",
        QoS::AtMostOnce,
        Default::default(),
        None,
    )
    .await;
    other
        .send(&publish("keep/1", b"k", QoS::AtMostOnce, None, true))
        .await;
    assert!(c.recv_publish().await.retain);
    other
        .send(&publish("drop/1", b"d", QoS::AtMostOnce, None, true))
        .await;
    assert!(!c.recv_publish().await.retain);

    // Retain Handling: 0 sends retained messages at every subscribe, 1 only when the
    // subscription is new, 2 never [MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11].
    let rh = |retain_handling| SubscriptionOptions {
        retain_handling,
        ..Default::default()
    };
    let (mut fresh, _) = open5(addr, "fresh", true, Properties::default()).await;
    subscribe5(
        &mut fresh,
        1,
        "keep/#",
        QoS::AtMostOnce,
        rh(RetainHandling::DoNotSend),
        None,
    )
    .await;
    fresh.expect_silence(Duration::from_millis(200)).await;
    subscribe5(
        &mut fresh,
        2,
        "drop/#",
        QoS::AtMostOnce,
        rh(RetainHandling::SendIfNew),
        Some(9),
    )
    .await;
    let r = fresh.recv_publish().await;
    assert!(r.retain);
    assert_eq!(
        r.properties.map(|p| p.subscription_identifiers.clone()),
        Some(vec![9])
    );
    subscribe5(
        &mut fresh,
        3,
        "drop/#",
        QoS::AtMostOnce,
        rh(RetainHandling::SendIfNew),
        None,
    )
    .await;
    fresh.expect_silence(Duration::from_millis(200)).await;
    subscribe5(
        &mut fresh,
        4,
        "drop/#",
        QoS::AtMostOnce,
        rh(RetainHandling::SendAtSubscribe),
        None,
    )
    .await;
    assert!(fresh.recv_publish().await.retain);
    broker.shutdown().await;
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error_mqtt_3_8_3_4() {
    let broker = start_broker(|_| {}).await;
    let (mut c, _) = open5(broker.local_addr(), "nl", true, Properties::default()).await;
    c.send(&Packet::Subscribe(Subscribe {
        pid: 1,
        filters: vec![("$share/g/x".into(), QoS::AtMostOnce)],
        options: vec![SubscriptionOptions {
            no_local: true,
            ..Default::default()
        }],
        properties: None,
    }))
    .await;
    expect_disconnect(&mut c, reason::PROTOCOL_ERROR).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn inbound_topic_alias_sets_and_uses_mqtt_3_3_2_3_4() {
    let broker = start_broker(|c| c.mqtt5.topic_alias_maximum = 2).await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "s", true).await;
    sub.subscribe(1, &[("long/topic/name", QoS::AtMostOnce)])
        .await;
    let (mut c, _) = open5(addr, "alias", true, Properties::default()).await;
    let alias = |a| Properties {
        topic_alias: Some(a),
        ..Default::default()
    };
    c.send(&publish5(
        "long/topic/name",
        b"1",
        QoS::AtMostOnce,
        None,
        alias(1),
    ))
    .await;
    c.send(&publish5("", b"2", QoS::AtMostOnce, None, alias(1)))
        .await;
    for want in [&b"1"[..], b"2"] {
        let p = sub.recv_publish().await;
        assert_eq!((&*p.topic, &p.payload[..]), ("long/topic/name", want));
    }
    // Beyond our maximum: DISCONNECT 0x94 [MQTT-3.3.2-9].
    c.send(&publish5("x", b"3", QoS::AtMostOnce, None, alias(3)))
        .await;
    expect_disconnect(&mut c, reason::TOPIC_ALIAS_INVALID).await;
    // Alias 0 is invalid too [MQTT-3.3.2-8].
    let (mut c, _) = open5(addr, "alias0", true, Properties::default()).await;
    c.send(&publish5("x", b"3", QoS::AtMostOnce, None, alias(0)))
        .await;
    expect_disconnect(&mut c, reason::TOPIC_ALIAS_INVALID).await;
    // An alias used before it was set is a protocol error.
    let (mut c, _) = open5(addr, "alias-unset", true, Properties::default()).await;
    c.send(&publish5("", b"3", QoS::AtMostOnce, None, alias(2)))
        .await;
    expect_disconnect(&mut c, reason::PROTOCOL_ERROR).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn receive_maximum_is_enforced_inbound_and_honoured_outbound_mqtt_3_3_4_9() {
    let broker = start_broker(|c| c.mqtt5.receive_maximum = 2).await;
    let addr = broker.local_addr();
    // Outbound: the client allows 2 unacknowledged QoS 1 messages [MQTT-3.3.4-7].
    let (mut sub, _) = open5(
        addr,
        "slow",
        true,
        Properties {
            receive_maximum: Some(2),
            ..Default::default()
        },
    )
    .await;
    subscribe5(&mut sub, 1, "q", QoS::AtLeastOnce, Default::default(), None).await;
    let (mut p, _) = RawClient::connect(addr, "p", true).await;
    for i in 1..=5u16 {
        p.send(&publish("q", &[i as u8], QoS::AtLeastOnce, Some(i), false))
            .await;
        assert_eq!(p.recv().await, Some(Packet::PubAck(i)));
    }
    let a = sub.recv_publish().await;
    let b = sub.recv_publish().await;
    sub.expect_silence(Duration::from_millis(300)).await;
    sub.send(&Packet::PubAck(a.pid.unwrap())).await;
    let c = sub.recv_publish().await;
    assert_eq!((a.payload[0], b.payload[0], c.payload[0]), (1, 2, 3));
    sub.expect_silence(Duration::from_millis(200)).await;

    // Inbound: a third unacknowledged QoS 2 PUBLISH is over our maximum of 2.
    let (mut c, _) = open5(addr, "greedy", true, Properties::default()).await;
    for pid in 1..=2u16 {
        c.send(&publish5(
            "x",
            b"1",
            QoS::ExactlyOnce,
            Some(pid),
            Properties::default(),
        ))
        .await;
        assert!(matches!(c.recv().await, Some(Packet::Ack(a)) if a.kind == AckKind::PubRec));
    }
    c.send(&publish5(
        "x",
        b"1",
        QoS::ExactlyOnce,
        Some(3),
        Properties::default(),
    ))
    .await;
    expect_disconnect(&mut c, reason::RECEIVE_MAXIMUM_EXCEEDED).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn maximum_packet_size_both_ways_mqtt_3_1_2_25() {
    let broker = start_broker(|c| c.server.max_packet_size = 256).await;
    let addr = broker.local_addr();
    // Outbound: a message larger than the client allows is dropped for it, and counted.
    let (mut small, _) = open5(
        addr,
        "small",
        true,
        Properties {
            maximum_packet_size: Some(64),
            ..Default::default()
        },
    )
    .await;
    subscribe5(
        &mut small,
        1,
        "m",
        QoS::AtLeastOnce,
        Default::default(),
        None,
    )
    .await;
    let (mut p, _) = RawClient::connect(addr, "p", true).await;
    p.send(&publish(
        "m",
        &[b'x'; 100],
        QoS::AtLeastOnce,
        Some(1),
        false,
    ))
    .await;
    p.recv().await;
    p.send(&publish("m", b"fits", QoS::AtLeastOnce, Some(2), false))
        .await;
    p.recv().await;
    assert_eq!(&small.recv_publish().await.payload[..], b"fits");
    // Inbound: over our maximum is DISCONNECT 0x95.
    let (mut big, _) = open5(addr, "big", true, Properties::default()).await;
    big.send(&publish5(
        "m",
        &[b'y'; 300],
        QoS::AtMostOnce,
        None,
        Properties::default(),
    ))
    .await;
    expect_disconnect(&mut big, reason::PACKET_TOO_LARGE).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn server_disconnect_reason_codes_mqtt_3_14_2_1() {
    let broker = start_broker(|c| c.limits.retain_available = false).await;
    let addr = broker.local_addr();
    // Session taken over: 0x8E, also by a 3.1.1 connection with the same id.
    let (mut first, _) = open5(addr, "dup", true, Properties::default()).await;
    let (_second, _) = RawClient::connect(addr, "dup", true).await;
    expect_disconnect(&mut first, reason::SESSION_TAKEN_OVER).await;
    // And the other way round: the 3.1.1 connection is just closed (it has no DISCONNECT).
    let (mut old, _) = RawClient::connect(addr, "dup2", true).await;
    let (_new, _) = open5(addr, "dup2", true, Properties::default()).await;
    old.expect_closed().await;
    // Keep alive timeout: 0x8D.
    let mut c5 = connect5("sleepy", true, Properties::default());
    c5.keep_alive = 1;
    let (mut sleepy, _) = RawClient::connect_with(addr, c5).await;
    expect_disconnect(&mut sleepy, reason::KEEP_ALIVE_TIMEOUT).await;
    // Retain not supported: 0x9A.
    let (mut r, _) = open5(addr, "retainer", true, Properties::default()).await;
    r.send(&publish("x", b"1", QoS::AtMostOnce, None, true))
        .await;
    expect_disconnect(&mut r, reason::RETAIN_NOT_SUPPORTED).await;
    // Malformed packet: 0x81 (a PUBLISH whose topic is cut short).
    let (mut m, _) = open5(addr, "malformed", true, Properties::default()).await;
    m.send_raw(&[0x30, 0x03, 0x00, 0x05, b'a']).await;
    expect_disconnect(&mut m, reason::MALFORMED_PACKET).await;
    // A second CONNECT, AUTH without a method: 0x82.
    let (mut twice, _) = open5(addr, "twice", true, Properties::default()).await;
    twice
        .send(&Packet::Connect(Box::new(connect5(
            "twice",
            true,
            Properties::default(),
        ))))
        .await;
    expect_disconnect(&mut twice, reason::PROTOCOL_ERROR).await;
    let (mut auth, _) = open5(addr, "auth", true, Properties::default()).await;
    auth.send(&Packet::Auth(Auth {
        reason: reason::REAUTHENTICATE,
        properties: None,
    }))
    .await;
    expect_disconnect(&mut auth, reason::PROTOCOL_ERROR).await;
    // Shutdown: 0x8B.
    let (mut last, _) = open5(addr, "last", true, Properties::default()).await;
    let stop = tokio::spawn(broker.shutdown());
    expect_disconnect(&mut last, reason::SERVER_SHUTTING_DOWN).await;
    stop.await.unwrap();
}

#[tokio::test]
async fn session_expiry_interval_keeps_or_ends_the_session_mqtt_3_1_2_11_2() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    // Expiry 0 (the default): the session ends with the connection.
    let (mut c, _) = open5(addr, "brief", false, Properties::default()).await;
    subscribe5(&mut c, 1, "x", QoS::AtLeastOnce, Default::default(), None).await;
    c.send(&Packet::Disconnect).await;
    c.expect_closed().await;
    let (_c, ack) = open5(addr, "brief", false, Properties::default()).await;
    assert!(!ack.session_present);
    // Expiry 60: kept across connections, with what was queued meanwhile; Clean Start 0.
    let (mut c, _) = open5(addr, "kept", false, expiry(60)).await;
    subscribe5(
        &mut c,
        1,
        "x",
        QoS::AtLeastOnce,
        Default::default(),
        Some(5),
    )
    .await;
    c.send(&Packet::Disconnect).await;
    c.expect_closed().await;
    let (mut p, _) = RawClient::connect(addr, "p", true).await;
    p.send(&publish("x", b"queued", QoS::AtLeastOnce, Some(1), false))
        .await;
    p.recv().await;
    let (mut c, ack) = open5(addr, "kept", false, expiry(60)).await;
    assert!(ack.session_present);
    let got = c.recv_publish().await;
    assert_eq!(&got.payload[..], b"queued");
    assert_eq!(
        got.properties.map(|p| p.subscription_identifiers.clone()),
        Some(vec![5])
    );
    c.send(&Packet::PubAck(got.pid.unwrap())).await;
    // DISCONNECT may shorten it to 0: then the session is gone at once.
    c.send(&Packet::DisconnectWithReason(Disconnect {
        reason: 0,
        properties: Some(Box::new(expiry(0))),
    }))
    .await;
    c.expect_closed().await;
    let (_c, ack) = open5(addr, "kept", false, expiry(60)).await;
    assert!(!ack.session_present);
    // A session that was to end with its connection may not be extended [MQTT-3.14.2-2].
    let (mut c, _) = open5(addr, "zero", true, Properties::default()).await;
    c.send(&Packet::DisconnectWithReason(Disconnect {
        reason: 0,
        properties: Some(Box::new(expiry(60))),
    }))
    .await;
    expect_disconnect(&mut c, reason::PROTOCOL_ERROR).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn session_expiry_elapses_and_is_capped_by_config() {
    let broker = start_broker(|c| {
        c.persistence.session_expiry = mqtt_broker::config::ConfigDuration::secs(3600)
    })
    .await;
    let addr = broker.local_addr();
    let (mut c, ack) = open5(addr, "capped", false, expiry(u32::MAX)).await;
    assert_eq!(
        ack.properties.and_then(|p| p.session_expiry_interval),
        Some(3600),
        "the cap is sent back"
    );
    c.send(&Packet::Disconnect).await;
    c.expect_closed().await;
    let (mut c, _) = open5(addr, "short", false, expiry(1)).await;
    c.send(&Packet::Disconnect).await;
    c.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_c, ack) = open5(addr, "short", false, expiry(1)).await;
    assert!(!ack.session_present, "expired after 1 s");
    let (_c, ack) = open5(addr, "capped", false, expiry(60)).await;
    assert!(ack.session_present);
    broker.shutdown().await;
}

fn will(delay: u32) -> LastWill {
    LastWill {
        topic: "wills/w".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Some(Box::new(Properties {
            will_delay_interval: Some(delay),
            user_properties: vec![("why".into(), "test".into())],
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn will_delay_and_disconnect_with_will_mqtt_3_1_3_9() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut watcher, _) = open5(addr, "watcher", true, Properties::default()).await;
    subscribe5(
        &mut watcher,
        1,
        "wills/#",
        QoS::AtLeastOnce,
        Default::default(),
        None,
    )
    .await;

    // DISCONNECT 0x04: the will is published, with its properties.
    let mut c = connect5("w1", true, Properties::default());
    c.will = Some(will(0));
    let (mut w1, _) = RawClient::connect_with(addr, c).await;
    w1.send(&Packet::DisconnectWithReason(Disconnect {
        reason: reason::DISCONNECT_WITH_WILL,
        properties: None,
    }))
    .await;
    let got = watcher.recv_publish().await;
    assert_eq!(&got.payload[..], b"gone");
    let props = got.properties.expect("will properties");
    assert_eq!(props.user_properties, vec![("why".into(), "test".into())]);
    assert_eq!(props.will_delay_interval, None);
    watcher.send(&Packet::PubAck(got.pid.unwrap())).await;

    // A delayed will waits its delay after the connection drops...
    let mut c = connect5("w2", false, expiry(60));
    c.will = Some(will(1));
    let (w2, _) = RawClient::connect_with(addr, c).await;
    drop(w2);
    watcher.expect_silence(Duration::from_millis(600)).await;
    let got = watcher.recv_publish().await;
    assert_eq!(&got.payload[..], b"gone");
    watcher.send(&Packet::PubAck(got.pid.unwrap())).await;

    // ... and is not published if the client reconnects before it passes.
    let mut c = connect5("w3", false, expiry(60));
    c.will = Some(will(1));
    let (w3, _) = RawClient::connect_with(addr, c).await;
    drop(w3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_w3, ack) = open5(addr, "w3", false, expiry(60)).await;
    assert!(ack.session_present);
    watcher.expect_silence(Duration::from_millis(1500)).await;

    // The will goes when the session ends, if that is first.
    let mut c = connect5("w4", false, Properties::default());
    c.will = Some(will(30));
    let (w4, _) = RawClient::connect_with(addr, c).await;
    drop(w4);
    let got = watcher.recv_publish().await;
    assert_eq!(&got.payload[..], b"gone");
    broker.shutdown().await;
}

#[tokio::test]
async fn expired_messages_are_never_delivered_mqtt_3_3_2_5() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let (mut p, _) = open5(addr, "p", true, Properties::default()).await;
    let short = Properties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    // Retained with a 1 s lifetime.
    p.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "r/1".into(),
        pid: Some(1),
        payload: Bytes::from_static(b"stale"),
        properties: Some(Arc::new(short.clone())),
    }))
    .await;
    p.recv().await;
    // Queued for an offline session with a 1 s lifetime, and one with 100 s.
    let (mut s, _) = open5(addr, "offline", false, expiry(60)).await;
    subscribe5(&mut s, 1, "q/#", QoS::AtLeastOnce, Default::default(), None).await;
    s.send(&Packet::Disconnect).await;
    s.expect_closed().await;
    p.send(&publish5(
        "q/short",
        b"short",
        QoS::AtLeastOnce,
        Some(2),
        short,
    ))
    .await;
    p.recv().await;
    let long = Properties {
        message_expiry_interval: Some(100),
        ..Default::default()
    };
    p.send(&publish5(
        "q/long",
        b"long",
        QoS::AtLeastOnce,
        Some(3),
        long,
    ))
    .await;
    p.recv().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut s, _) = open5(addr, "offline", false, expiry(60)).await;
    let got = s.recv_publish().await;
    assert_eq!(&got.payload[..], b"long", "the expired one was skipped");
    let left = got
        .properties
        .and_then(|p| p.message_expiry_interval)
        .unwrap();
    assert!(
        left <= 98,
        "expiry counts down while queued [MQTT-3.3.2-6]: {left}"
    );
    s.send(&Packet::PubAck(got.pid.unwrap())).await;
    let (mut late, _) = open5(addr, "late", true, Properties::default()).await;
    subscribe5(
        &mut late,
        1,
        "r/#",
        QoS::AtLeastOnce,
        Default::default(),
        None,
    )
    .await;
    late.expect_silence(Duration::from_millis(300)).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_subscription_round_robin_and_redistribution_mqtt_4_8_2() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    // A 3.1.1 member and an MQTT 5 member of the same group.
    let (mut a, _) = RawClient::connect(addr, "a", true).await;
    a.subscribe(1, &[("$share/g/jobs/#", QoS::AtLeastOnce)])
        .await;
    let (mut b, _) = open5(addr, "b", true, Properties::default()).await;
    subscribe5(
        &mut b,
        1,
        "$share/g/jobs/#",
        QoS::AtLeastOnce,
        Default::default(),
        None,
    )
    .await;
    // An ordinary subscriber still gets everything.
    let (mut all, _) = RawClient::connect(addr, "all", true).await;
    all.subscribe(1, &[("jobs/#", QoS::AtMostOnce)]).await;
    let (mut p, _) = RawClient::connect(addr, "p", true).await;
    for i in 1..=10u16 {
        p.send(&publish(
            "jobs/x",
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            Some(i),
            false,
        ))
        .await;
        assert_eq!(p.recv().await, Some(Packet::PubAck(i)));
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let m = a.recv_publish().await;
        a.send(&Packet::PubAck(m.pid.unwrap())).await;
        seen.push(u16::from_be_bytes([m.payload[0], m.payload[1]]));
        let m = b.recv_publish().await;
        b.send(&Packet::PubAck(m.pid.unwrap())).await;
        seen.push(u16::from_be_bytes([m.payload[0], m.payload[1]]));
    }
    seen.sort();
    assert_eq!(
        seen,
        (1..=10).collect::<Vec<_>>(),
        "each message to exactly one member"
    );
    for _ in 0..10 {
        all.recv_publish().await;
    }
    a.expect_silence(Duration::from_millis(100)).await;
    b.expect_silence(Duration::from_millis(100)).await;

    // A member that leaves with unacknowledged messages: they go to the other member.
    for i in 11..=14u16 {
        p.send(&publish(
            "jobs/x",
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            Some(i),
            false,
        ))
        .await;
        p.recv().await;
    }
    let mut got_b = Vec::new();
    for _ in 0..2 {
        let m = b.recv_publish().await;
        got_b.push(u16::from_be_bytes([m.payload[0], m.payload[1]]));
        b.send(&Packet::PubAck(m.pid.unwrap())).await;
    }
    // `a` received its two but never acknowledges them, and goes away.
    a.recv_publish().await;
    a.recv_publish().await;
    drop(a);
    for _ in 0..2 {
        let m = b.recv_publish().await;
        got_b.push(u16::from_be_bytes([m.payload[0], m.payload[1]]));
        b.send(&Packet::PubAck(m.pid.unwrap())).await;
    }
    got_b.sort();
    assert_eq!(
        got_b,
        vec![11, 12, 13, 14],
        "none lost when a member leaves"
    );
    // Retained messages are not sent for a shared subscription.
    p.send(&publish("jobs/r", b"kept", QoS::AtMostOnce, None, true))
        .await;
    let (mut c, _) = open5(addr, "c", true, Properties::default()).await;
    subscribe5(
        &mut c,
        1,
        "$share/h/jobs/#",
        QoS::AtLeastOnce,
        Default::default(),
        None,
    )
    .await;
    c.expect_silence(Duration::from_millis(200)).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_subscriptions_can_be_turned_off_0x9e() {
    let broker = start_broker(|c| c.mqtt5.shared_subscriptions = false).await;
    let (mut c, _) = open5(broker.local_addr(), "c", true, Properties::default()).await;
    let ack = subscribe5(
        &mut c,
        1,
        "$share/g/x",
        QoS::AtMostOnce,
        Default::default(),
        None,
    )
    .await;
    assert_eq!(
        ack.codes,
        vec![SubAckCode::Refused(
            reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
        )]
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_session_state_survives_a_restart_with_properties_and_options() {
    let dir = std::env::temp_dir().join(format!("mqtt5-persist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = |dir: &std::path::Path| {
        let mut c = mqtt_broker::config::Config {
            listeners: vec![mqtt_broker::BrokerHandle::loopback_listener()],
            ..Default::default()
        };
        c.persistence.storage_type = StorageType::File;
        c.persistence.path = dir.to_path_buf();
        c
    };
    let broker = mqtt_broker::Broker::start(config(&dir)).await.unwrap();
    let addr = broker.local_addr();
    let (mut s, _) = open5(addr, "dev", false, expiry(3600)).await;
    let opts = SubscriptionOptions {
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendIfNew,
    };
    subscribe5(&mut s, 1, "cmd/#", QoS::AtLeastOnce, opts, Some(77)).await;
    s.send(&Packet::Disconnect).await;
    s.expect_closed().await;
    let (mut p, _) = open5(addr, "p", true, Properties::default()).await;
    let props = Properties {
        user_properties: vec![("k".into(), "v".into())],
        correlation_data: Some(Bytes::from_static(b"c1")),
        message_expiry_interval: Some(600),
        ..Default::default()
    };
    p.send(&publish5("cmd/1", b"on", QoS::AtLeastOnce, Some(1), props))
        .await;
    p.recv().await;
    broker.shutdown().await;

    let broker = mqtt_broker::Broker::start(config(&dir)).await.unwrap();
    let addr = broker.local_addr();
    let (mut s, ack) = open5(addr, "dev", false, expiry(3600)).await;
    assert!(ack.session_present);
    let got = s.recv_publish().await;
    let p = got.properties.expect("properties survived");
    assert_eq!(p.user_properties, vec![("k".into(), "v".into())]);
    assert_eq!(p.correlation_data.as_deref(), Some(&b"c1"[..]));
    assert_eq!(p.subscription_identifiers, vec![77]);
    assert!(p.message_expiry_interval.is_some_and(|s| s <= 600));
    s.send(&Packet::PubAck(got.pid.unwrap())).await;
    // The restored subscription keeps its identifier and No Local.
    s.send(&publish5(
        "cmd/2",
        b"own",
        QoS::AtMostOnce,
        None,
        Properties::default(),
    ))
    .await;
    let (mut p, _) = open5(addr, "p", true, Properties::default()).await;
    p.send(&publish5(
        "cmd/3",
        b"theirs",
        QoS::AtMostOnce,
        None,
        Properties::default(),
    ))
    .await;
    let got = s.recv_publish().await;
    assert_eq!(&got.payload[..], b"theirs");
    assert_eq!(
        got.properties.map(|p| p.subscription_identifiers.clone()),
        Some(vec![77])
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn outbound_topic_aliases_when_configured_mqtt_3_3_2_10() {
    let broker = start_broker(|c| c.mqtt5.outbound_topic_aliases = true).await;
    let addr = broker.local_addr();
    let (mut s, _) = open5(
        addr,
        "aliased",
        true,
        Properties {
            topic_alias_maximum: Some(2),
            ..Default::default()
        },
    )
    .await;
    subscribe5(&mut s, 1, "t/#", QoS::AtMostOnce, Default::default(), None).await;
    let (mut p, _) = RawClient::connect(addr, "p", true).await;
    for topic in ["t/a", "t/b", "t/c", "t/a", "t/b", "t/c"] {
        p.send(&publish(topic, b"x", QoS::AtMostOnce, None, false))
            .await;
    }
    let mut seen = Vec::new();
    for _ in 0..6 {
        let m = s.recv_publish().await;
        seen.push((
            m.topic.to_string(),
            m.properties.and_then(|p| p.topic_alias),
        ));
    }
    let alias_of = |i: usize| seen[i].1;
    assert_eq!(
        seen[0],
        ("t/a".into(), Some(1)),
        "first use: topic and alias"
    );
    assert_eq!(seen[1], ("t/b".into(), Some(2)));
    assert_eq!(
        seen[2],
        ("t/c".into(), None),
        "no alias left [MQTT-3.3.2-10]"
    );
    assert_eq!(seen[3], ("".into(), alias_of(0)), "then the alias alone");
    assert_eq!(seen[4], ("".into(), alias_of(1)));
    assert_eq!(seen[5], ("t/c".into(), None));
    // Off by default, and never to a client that did not allow aliases.
    let (mut plain, _) = open5(addr, "plain", true, Properties::default()).await;
    subscribe5(
        &mut plain,
        1,
        "t/#",
        QoS::AtMostOnce,
        Default::default(),
        None,
    )
    .await;
    p.send(&publish("t/a", b"x", QoS::AtMostOnce, None, false))
        .await;
    s.recv_publish().await;
    let m = plain.recv_publish().await;
    assert_eq!((&*m.topic, m.properties), ("t/a", None));
    broker.shutdown().await;
}

#[tokio::test]
async fn hostile_v5_openings_are_closed() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    // AUTH before CONNECT [MQTT-3.1.0-1].
    let mut c = RawClient::open(addr).await;
    c.send_raw(&[0xf0, 0x00]).await;
    c.expect_closed().await;
    // A CONNECT with two authentication methods: a protocol error, no session.
    let mut body = bytes::BytesMut::new();
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30]);
    body.extend_from_slice(&[10, 0x15, 0, 3, b'a', b'b', b'c', 0x15, 0, 1, b'd']);
    body.extend_from_slice(&[0, 1, b'x']);
    let mut raw = bytes::BytesMut::new();
    raw.extend_from_slice(&[0x10]);
    mqtt_broker::protocol::codec::put_remaining_length(&mut raw, body.len());
    raw.extend_from_slice(&body);
    let mut c = RawClient::open(addr).await;
    c.send_raw(&raw).await;
    c.expect_closed().await;
    // Receive Maximum 0 in CONNECT is a protocol error too.
    let mut c = RawClient::open(addr).await;
    c.send(&Packet::Connect(Box::new(connect5(
        "rm0",
        true,
        Properties {
            receive_maximum: Some(0),
            ..Default::default()
        },
    ))))
    .await;
    c.expect_closed().await;
    // The broker still serves.
    open5(addr, "after", true, Properties::default()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_state_survives_kill_9() {
    let dir = std::env::temp_dir().join(format!("mqtt5-kill9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let cfg = dir.join("broker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n  - bind: 127.0.0.1:{port}\nadmin:\n  enabled: false\npersistence:\n  storage_type: file\n  path: {}\n  sync: always\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut broker = start_binary(&cfg, port);
    let (mut s, _) = open5(addr, "dev", false, expiry(3600)).await;
    subscribe5(
        &mut s,
        1,
        "cmd/#",
        QoS::ExactlyOnce,
        Default::default(),
        Some(5),
    )
    .await;
    drop(s);
    let (mut p, _) = open5(addr, "p", true, Properties::default()).await;
    let props = Properties {
        user_properties: vec![("k".into(), "v".into())],
        response_topic: Some("resp/dev".into()),
        ..Default::default()
    };
    p.send(&publish5("cmd/1", b"on", QoS::AtLeastOnce, Some(1), props))
        .await;
    assert_eq!(p.recv().await, Some(Packet::PubAck(1)), "acknowledged");
    // SIGKILL right after the acknowledgement: with sync: always it is on disk.
    broker.kill_9();
    let _broker = start_binary(&cfg, port);
    let (mut s, ack) = open5(addr, "dev", false, expiry(3600)).await;
    assert!(ack.session_present);
    let got = s.recv_publish().await;
    assert_eq!(&got.payload[..], b"on");
    let p = got.properties.expect("properties survived kill -9");
    assert_eq!(p.user_properties, vec![("k".into(), "v".into())]);
    assert_eq!(p.response_topic.as_deref(), Some("resp/dev"));
    assert_eq!(p.subscription_identifiers, vec![5]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SCRAM-SHA-512 client written here from RFC 5802 (independently of the broker's
/// `auth::scram`): the client-final-message for `server_first` and the server signature to
/// expect.
fn scram_client_final(
    user: &str,
    password: &str,
    cnonce: &str,
    server_first: &str,
) -> (String, String) {
    use base64::Engine as _;
    use hmac::Mac;
    use sha2::Digest;
    let b64 = base64::engine::general_purpose::STANDARD;
    let field = |k: &str| {
        server_first
            .split(',')
            .find_map(|a| a.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {server_first}"))
            .to_string()
    };
    let (nonce, salt, iterations) = (field("r="), field("s="), field("i="));
    assert!(nonce.starts_with(cnonce), "server nonce extends ours");
    let salt = b64.decode(salt).unwrap();
    let mut salted = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(
        password.as_bytes(),
        &salt,
        iterations.parse().unwrap(),
        &mut salted,
    );
    let hmac = |key: &[u8], data: &[u8]| {
        let mut m = hmac::Hmac::<sha2::Sha512>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    };
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("n={user},r={cnonce},{server_first},{without_proof}");
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = sha2::Sha512::digest(&client_key);
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let server_signature = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
    (
        format!("{without_proof},p={}", b64.encode(proof)),
        format!("v={}", b64.encode(server_signature)),
    )
}

fn auth_props(data: &str) -> Option<Box<Properties>> {
    Some(Box::new(Properties {
        authentication_method: Some("SCRAM-SHA-512".into()),
        authentication_data: Some(Bytes::copy_from_slice(data.as_bytes())),
        ..Default::default()
    }))
}

/// The server's data of an AUTH packet with `reason`.
async fn expect_auth(c: &mut RawClient, reason: u8) -> String {
    match c.recv().await {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason, reason);
            let p = a.properties.expect("AUTH properties");
            assert_eq!(p.authentication_method.as_deref(), Some("SCRAM-SHA-512"));
            String::from_utf8(p.authentication_data.expect("data").to_vec()).unwrap()
        }
        other => panic!("expected AUTH {reason:#04x}, got {other:?}"),
    }
}

#[tokio::test]
async fn scram_sha_512_enhanced_authentication_and_reauthentication_section_4_12() {
    let hash = mqtt_broker::auth::hash_password_with_salt(b"s3cret", b"fixed-salt-1", 101);
    let broker = start_broker(|c| {
        c.security.users = vec![mqtt_broker::config::UserConfig {
            username: "alice".into(),
            password_hash: hash,
        }];
        c.security.auth_methods = vec!["SCRAM-SHA-512".into()];
        c.security.auth_failure_delay = mqtt_broker::config::ConfigDuration::millis(0);
    })
    .await;
    let addr = broker.local_addr();
    // CONNECT carries client-first; no user name or password in CONNECT at all.
    let connect = |cnonce: &str| {
        let mut c = connect5("scram-dev", true, Properties::default());
        c.properties = auth_props(&format!("n,,n=alice,r={cnonce}"));
        c
    };
    let mut c = RawClient::open(addr).await;
    c.send(&Packet::Connect(Box::new(connect("rOprNGfwEbeRWgbNEkqO"))))
        .await;
    let server_first = expect_auth(&mut c, reason::CONTINUE_AUTHENTICATION).await;
    let (last, server_signature) =
        scram_client_final("alice", "s3cret", "rOprNGfwEbeRWgbNEkqO", &server_first);
    c.send(&Packet::Auth(Auth {
        reason: reason::CONTINUE_AUTHENTICATION,
        properties: auth_props(&last),
    }))
    .await;
    let ack = match c.recv().await {
        Some(Packet::ConnAck(a)) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    assert_eq!(ack.v5_reason(), reason::SUCCESS);
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(p.authentication_method.as_deref(), Some("SCRAM-SHA-512"));
    assert_eq!(
        p.authentication_data.as_deref(),
        Some(server_signature.as_bytes()),
        "the server proves it knows the password too"
    );
    // Re-authentication while connected: AUTH 0x19 ... AUTH 0x00.
    c.send(&Packet::Auth(Auth {
        reason: reason::REAUTHENTICATE,
        properties: auth_props("n,,n=alice,r=again"),
    }))
    .await;
    let server_first = expect_auth(&mut c, reason::CONTINUE_AUTHENTICATION).await;
    let (last, server_signature) = scram_client_final("alice", "s3cret", "again", &server_first);
    c.send(&Packet::Auth(Auth {
        reason: reason::CONTINUE_AUTHENTICATION,
        properties: auth_props(&last),
    }))
    .await;
    assert_eq!(expect_auth(&mut c, reason::SUCCESS).await, server_signature);
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    // A failed re-authentication ends the connection with 0x87.
    c.send(&Packet::Auth(Auth {
        reason: reason::REAUTHENTICATE,
        properties: auth_props("n,,n=alice,r=third"),
    }))
    .await;
    let server_first = expect_auth(&mut c, reason::CONTINUE_AUTHENTICATION).await;
    let (last, _) = scram_client_final("alice", "wrong", "third", &server_first);
    c.send(&Packet::Auth(Auth {
        reason: reason::CONTINUE_AUTHENTICATION,
        properties: auth_props(&last),
    }))
    .await;
    expect_disconnect(&mut c, reason::NOT_AUTHORIZED).await;

    // A wrong password at CONNECT: CONNACK 0x86.
    let mut c = RawClient::open(addr).await;
    c.send(&Packet::Connect(Box::new(connect("n2")))).await;
    let server_first = expect_auth(&mut c, reason::CONTINUE_AUTHENTICATION).await;
    let (last, _) = scram_client_final("alice", "guess", "n2", &server_first);
    c.send(&Packet::Auth(Auth {
        reason: reason::CONTINUE_AUTHENTICATION,
        properties: auth_props(&last),
    }))
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.v5_reason(), reason::BAD_USERNAME_OR_PASSWORD),
        other => panic!("expected CONNACK 0x86, got {other:?}"),
    }
    c.expect_closed().await;
    // Another method: 0x8C; AUTH from a client that connected without a method: 0x82.
    let mut other = connect("n3");
    other.properties.as_mut().unwrap().authentication_method = Some("SCRAM-SHA-1".into());
    let (_c, ack) = RawClient::connect_with(addr, other).await;
    assert_eq!(ack.v5_reason(), reason::BAD_AUTHENTICATION_METHOD);
    let (mut plain, _) = open5(addr, "plain", true, Properties::default()).await;
    plain
        .send(&Packet::Auth(Auth {
            reason: reason::REAUTHENTICATE,
            properties: auth_props("n,,n=alice,r=x"),
        }))
        .await;
    expect_disconnect(&mut plain, reason::PROTOCOL_ERROR).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn delayed_will_survives_kill_9() {
    let dir = std::env::temp_dir().join(format!("mqtt5-will9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let cfg = dir.join("broker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n  - bind: 127.0.0.1:{port}\nadmin:\n  enabled: false\npersistence:\n  storage_type: file\n  path: {}\n  sync: always\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut broker = start_binary(&cfg, port);
    let mut c = connect5("dying", false, expiry(60));
    c.will = Some(will(2));
    let (dying, _) = RawClient::connect_with(addr, c).await;
    drop(dying);
    // The will waits (2 s) in the stored session when the broker is killed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.kill_9();
    let _broker = start_binary(&cfg, port);
    let (mut watcher, _) = open5(addr, "watcher", true, Properties::default()).await;
    subscribe5(
        &mut watcher,
        1,
        "wills/#",
        QoS::AtLeastOnce,
        Default::default(),
        None,
    )
    .await;
    let got = watcher.recv_publish().await;
    assert_eq!(&got.payload[..], b"gone");
    assert_eq!(
        got.properties.map(|p| p.user_properties.clone()),
        Some(vec![("why".into(), "test".into())])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn mqtt5_settings_reload_live_for_new_connections() {
    let broker = start_broker(|c| c.mqtt5.topic_alias_maximum = 5).await;
    let addr = broker.local_addr();
    let (mut before, ack) = open5(addr, "before", true, Properties::default()).await;
    assert_eq!(ack.properties.and_then(|p| p.topic_alias_maximum), Some(5));
    let mut config = broker.config();
    config.mqtt5.topic_alias_maximum = 9;
    config.mqtt5.shared_subscriptions = false;
    broker.reload(config).await.expect("reload accepted");
    let (_after, ack) = open5(addr, "after", true, Properties::default()).await;
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(
        p.topic_alias_maximum,
        Some(9),
        "new connections get the new value"
    );
    assert_eq!(p.shared_subscription_available, Some(0));
    // The connection made before keeps what its CONNACK announced: alias 5 is still fine,
    // and it was never told anything about 9.
    before
        .send(&publish5(
            "t",
            b"x",
            QoS::AtLeastOnce,
            Some(1),
            Properties {
                topic_alias: Some(5),
                ..Default::default()
            },
        ))
        .await;
    assert!(matches!(before.recv().await, Some(Packet::Ack(a)) if a.pid == 1));
    // An invalid value is refused with the key and the running one stays.
    let mut bad = broker.config();
    bad.mqtt5.receive_maximum = 0;
    let err = broker
        .reload(bad)
        .await
        .expect_err("receive_maximum 0 refused");
    assert!(err.to_string().contains("mqtt5.receive_maximum"), "{err}");
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_will_without_retain_available_3_2_2_3_5() {
    let broker = start_broker(|c| c.limits.retain_available = false).await;
    let addr = broker.local_addr();
    let retained_will = LastWill {
        retain: true,
        properties: None,
        ..will(0)
    };
    // MQTT 5: refused with 0x9A.
    let mut c = connect5("w5", true, Properties::default());
    c.will = Some(retained_will.clone());
    let (mut c, ack) = RawClient::connect_with(addr, c).await;
    assert_eq!(ack.v5_reason(), reason::RETAIN_NOT_SUPPORTED);
    c.expect_closed().await;
    // 3.1.1 cannot be told: accepted, and the will goes out without RETAIN.
    let (mut watcher, _) = RawClient::connect(addr, "watcher", true).await;
    watcher.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    let mut c3 = connect_packet("w3", true);
    c3.will = Some(retained_will);
    let (c3, ack) = RawClient::connect_with(addr, c3).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    drop(c3);
    let got = watcher.recv_publish().await;
    assert_eq!(&got.payload[..], b"gone");
    watcher.send(&Packet::PubAck(got.pid.unwrap())).await;
    let (mut late, _) = RawClient::connect(addr, "late", true).await;
    late.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    late.expect_silence(Duration::from_millis(300)).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn the_acl_sees_the_filter_a_shared_subscription_stands_for() {
    let broker = start_broker(|c| {
        c.security.acl = vec![AclRule {
            effect: Effect::Allow,
            scope: RuleScope::All,
            topic: "jobs/#".into(),
            user: None,
            client_id: None,
        }];
    })
    .await;
    let (mut c, _) = RawClient::connect(broker.local_addr(), "worker", true).await;
    let codes = c
        .subscribe(
            1,
            &[
                ("$share/g/jobs/#", QoS::AtLeastOnce),
                ("$share/g/secret/#", QoS::AtLeastOnce),
            ],
        )
        .await;
    assert_eq!(
        codes,
        // 0x80 on the wire for this 3.1.1 client.
        vec![SubAckCode::Granted(QoS::AtLeastOnce), SubAckCode::Failure]
    );
    broker.shutdown().await;
}
