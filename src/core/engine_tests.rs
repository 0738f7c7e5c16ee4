//! Tests of the protocol engine without a socket or a tokio runtime: a real core (registry,
//! local router, security chain built from a config) and engines fed packets by hand, the
//! way a connection shell would.

use super::engine::Engine;
use super::{Core, Runtime};
use crate::config::{AclRule, Config, Effect, RuleScope};
use crate::hooks::ClientInfo;
use crate::model::{CloseReason, CloseSignal, DisconnectReason, TransportKind};
use crate::protocol::{
    reason, ConnAck, ConnectReturnCode, LastWill, Packet, ProtocolLevel, Publish, QoS, SubAck,
    SubAckCode, Subscribe, Unsubscribe,
};
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn core_with(config: Config) -> Core {
    let security = crate::auth::build_security_chain(&config.security).expect("valid security");
    let runtime = Runtime {
        config,
        generation: 1,
        security,
        tls: HashMap::new(),
        listeners: HashMap::new(),
        admin_token: None,
        plugins: Default::default(),
        plugin_kv: Default::default(),
        auth_fingerprint: None,
    };
    Core::new(runtime, None)
}

/// A client attached to its session, as the shell does it after authentication.
struct Client {
    engine: Engine,
    close: Arc<CloseSignal>,
    conn_id: crate::model::ConnId,
}

fn connect(core: &Core, id: &str, clean: bool, will: Option<LastWill>) -> (Client, bool) {
    let client = Arc::new(ClientInfo {
        client_id: Arc::from(id),
        username: None,
        peer: SocketAddr::from(([127, 0, 0, 1], 1883)),
        transport: TransportKind::Tcp,
        tls_identity: None,
        protocol: ProtocolLevel::V311,
        clean_session: clean,
    });
    let conn_id = core.next_conn_id();
    let close = Arc::new(CloseSignal::default());
    let attached = core.registry.attach(&client, conn_id, close.clone(), None);
    let mut engine = Engine::new(
        client,
        attached.entry.clone(),
        will,
        0,
        Duration::ZERO,
        Instant::now(),
    );
    engine.connected(
        core,
        Packet::ConnAck(ConnAck {
            properties: None,
            reason_code: None,
            session_present: attached.session_present,
            code: ConnectReturnCode::Accepted,
        }),
    );
    let c = Client {
        engine,
        close,
        conn_id,
    };
    (c, attached.session_present)
}

impl Client {
    fn send(&mut self, core: &Core, p: Packet) -> Result<(), CloseReason> {
        self.engine.handle(core, p, Instant::now())
    }

    /// What the shell would write now: the engine's output after a wake-up.
    fn output(&mut self, core: &Core) -> Vec<Packet> {
        self.engine.on_wake(core);
        self.engine.take_output().0
    }

    fn detach(self, core: &Core, reason: CloseReason) {
        let mut engine = self.engine;
        engine.closed(core, &reason);
        core.registry.detach(engine.entry(), self.conn_id);
    }
}

fn publish(topic: &str, payload: &str, qos: QoS, pid: Option<u16>) -> Packet {
    Packet::Publish(Publish {
        properties: None,
        dup: false,
        qos,
        retain: false,
        topic: Arc::from(topic),
        pid,
        payload: Bytes::from(payload.to_owned()),
    })
}

fn subscribe(pid: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        options: Vec::new(),
        properties: None,
        pid,
        filters: filters.iter().map(|(f, q)| (f.to_string(), *q)).collect(),
    })
}

fn publishes(out: &[Packet]) -> Vec<&Publish> {
    out.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn connack_then_suback_then_retained_mqtt_3_8_4_1() {
    let core = core_with(Config::default());
    let (mut p, _) = connect(&core, "pub", true, None);
    assert_eq!(
        p.engine.take_output().0,
        vec![Packet::ConnAck(ConnAck {
            properties: None,
            reason_code: None,
            session_present: false,
            code: ConnectReturnCode::Accepted
        })]
    );
    let mut retained = publish("r/1", "kept", QoS::AtLeastOnce, Some(1));
    if let Packet::Publish(x) = &mut retained {
        x.retain = true;
    }
    p.send(&core, retained).unwrap();
    assert_eq!(p.engine.take_output().0, vec![Packet::PubAck(1)]);

    let (mut s, _) = connect(&core, "sub", true, None);
    s.engine.take_output();
    s.send(&core, subscribe(7, &[("r/#", QoS::AtMostOnce)]))
        .unwrap();
    let out = s.engine.take_output().0;
    assert_eq!(
        out[0],
        Packet::SubAck(SubAck {
            properties: None,
            pid: 7,
            codes: vec![SubAckCode::Granted(QoS::AtMostOnce)]
        })
    );
    let replay = publishes(&out[1..]);
    assert_eq!(replay.len(), 1, "{out:?}");
    assert!(
        replay[0].retain,
        "retained replay has RETAIN=1 [MQTT-3.3.1-6]"
    );
    assert_eq!(&replay[0].payload[..], b"kept");
}

/// SUBSCRIBE with several filters, some refused (ACL, too deep, over max_subscriptions):
/// each refused one gets 0x80, the others are granted [MQTT-3.9.3-1].
#[test]
fn subscribe_with_some_filters_denied_mqtt_3_9_3_1() {
    let mut config = Config::default();
    config.security.acl = vec![AclRule {
        effect: Effect::Deny,
        scope: RuleScope::Subscribe,
        topic: "secret/#".into(),
        user: None,
        client_id: None,
    }];
    config.security.acl_default = Some(crate::config::AclDefault::Allow);
    config.limits.max_subscriptions = 2;
    let core = core_with(config);
    let (mut s, _) = connect(&core, "s", true, None);
    s.engine.take_output();
    let deep = vec!["a"; crate::routing::trie::MAX_FILTER_LEVELS + 1].join("/");
    s.send(
        &core,
        subscribe(
            1,
            &[
                ("a/b", QoS::AtLeastOnce),
                ("secret/x", QoS::AtMostOnce),
                (&deep, QoS::AtMostOnce),
                ("c", QoS::ExactlyOnce),
                ("d", QoS::AtMostOnce),
                ("a/b", QoS::ExactlyOnce),
            ],
        ),
    )
    .unwrap();
    let out = s.engine.take_output().0;
    let Packet::SubAck(ack) = &out[0] else {
        panic!("SUBACK expected")
    };
    let wire: Vec<u8> = ack
        .codes
        .iter()
        .map(|c| c.byte(ProtocolLevel::V311))
        .collect();
    assert_eq!(wire, vec![1, 0x80, 0x80, 2, 0x80, 2]);
    assert_eq!(
        out,
        vec![Packet::SubAck(SubAck {
            properties: None,
            pid: 1,
            codes: vec![
                SubAckCode::Granted(QoS::AtLeastOnce),
                // 0x80 to this 3.1.1 client; the reasons an MQTT 5 client is told.
                SubAckCode::Refused(reason::NOT_AUTHORIZED),
                SubAckCode::Refused(reason::TOPIC_FILTER_INVALID),
                SubAckCode::Granted(QoS::ExactlyOnce),
                // Over max_subscriptions (2) ...
                SubAckCode::Refused(reason::QUOTA_EXCEEDED),
                // ... but replacing a held filter does not count against it.
                SubAckCode::Granted(QoS::ExactlyOnce),
            ]
        })]
    );
    assert_eq!(core.router.subscription_count(), 2);
    s.send(
        &core,
        Packet::Unsubscribe(Unsubscribe {
            properties: None,
            pid: 2,
            filters: vec!["a/b".into(), "never".into()],
        }),
    )
    .unwrap();
    // UNSUBACK even when nothing matched [MQTT-3.10.4-5].
    assert_eq!(
        s.engine.take_output().0,
        vec![Packet::UnsubAck(crate::protocol::UnsubAck::new(2))]
    );
    assert_eq!(core.router.subscription_count(), 1);
}

/// Builds an acknowledgement packet for a packet id.
type WrongAckPacket = fn(u16) -> Packet;

/// The wrong acknowledgement for an outbound message closes the connection
/// [MQTT-4.8.0-1]: PUBREC or PUBCOMP for QoS 1, PUBACK for QoS 2, PUBCOMP before PUBREC.
#[test]
fn wrong_kind_of_acknowledgement_closes_mqtt_4_8_0_1() {
    let cases: [(QoS, WrongAckPacket); 4] = [
        (QoS::AtLeastOnce, Packet::PubRec),
        (QoS::AtLeastOnce, Packet::PubComp),
        (QoS::ExactlyOnce, Packet::PubAck),
        (QoS::ExactlyOnce, Packet::PubComp),
    ];
    for (qos, wrong) in cases {
        let core = core_with(Config::default());
        let (mut s, _) = connect(&core, "s", true, None);
        s.send(&core, subscribe(1, &[("t", QoS::ExactlyOnce)]))
            .unwrap();
        s.engine.take_output();
        let (mut p, _) = connect(&core, "p", true, None);
        p.send(&core, publish("t", "x", qos, Some(3))).unwrap();
        let out = s.output(&core);
        let pid = publishes(&out)[0].pid.unwrap();
        let packet = wrong(pid);
        let name = packet.name();
        match s.send(&core, packet) {
            Err(CloseReason::Protocol(why)) => {
                assert!(
                    why.contains("[MQTT-4.8.0-1]") && why.contains(name),
                    "{why}"
                )
            }
            other => panic!("{name} for a {qos:?} delivery: {other:?}"),
        }
        // An acknowledgement of an unknown packet id is ignored, as before.
        let (mut u, _) = connect(&core, "u", true, None);
        assert!(u.send(&core, Packet::PubAck(999)).is_ok());
        assert!(u.send(&core, Packet::PubComp(998)).is_ok());
    }
}

#[test]
fn keep_alive_deadline_is_one_and_a_half_times_keep_alive_mqtt_3_1_2_24() {
    let core = core_with(Config::default());
    let (c, _) = connect(&core, "k", true, None);
    let t0 = Instant::now();
    let mut e = Engine::new(
        c.engine.client().clone(),
        c.engine.entry().clone(),
        None,
        10,
        Duration::ZERO,
        t0,
    );
    assert_eq!(e.keep_alive_deadline(), Some(t0 + Duration::from_secs(15)));
    assert!(e.on_timer(t0 + Duration::from_secs(14)).is_ok());
    // A whole packet re-arms it.
    let t1 = t0 + Duration::from_secs(14);
    e.handle(&core, Packet::PingReq, t1).unwrap();
    assert_eq!(e.take_output().0, vec![Packet::PingResp]);
    assert_eq!(e.keep_alive_deadline(), Some(t1 + Duration::from_secs(15)));
    assert!(e.on_timer(t0 + Duration::from_secs(20)).is_ok());
    assert_eq!(
        e.on_timer(t1 + Duration::from_secs(15)),
        Err(CloseReason::KeepAlive)
    );
    // Keep-alive 0: only the server's idle timeout, if any, applies.
    let none = Engine::new(
        c.engine.client().clone(),
        c.engine.entry().clone(),
        None,
        0,
        Duration::ZERO,
        t0,
    );
    assert_eq!(none.keep_alive_deadline(), None);
    let idle = Engine::new(
        c.engine.client().clone(),
        c.engine.entry().clone(),
        None,
        0,
        Duration::from_secs(60),
        t0,
    );
    assert_eq!(
        idle.keep_alive_deadline(),
        Some(t0 + Duration::from_secs(60))
    );
}

#[test]
fn publish_rate_pauses_reading_and_keep_alive() {
    let mut config = Config::default();
    config.limits.publish_rate = 1;
    let core = core_with(config);
    let (mut p, _) = connect(&core, "fast", true, None);
    let t0 = Instant::now();
    let mut e = Engine::new(
        p.engine.client().clone(),
        p.engine.entry().clone(),
        None,
        10,
        Duration::ZERO,
        t0,
    );
    for _ in 0..3 {
        e.handle(&core, publish("t", "x", QoS::AtMostOnce, None), t0)
            .unwrap();
    }
    let until = e
        .read_paused_until()
        .expect("over the rate: reading paused");
    assert!(until > t0);
    assert_eq!(e.keep_alive_deadline(), None, "a paused client is not idle");
    e.on_timer(until).unwrap();
    assert_eq!(e.read_paused_until(), None);
    assert_eq!(
        e.keep_alive_deadline(),
        Some(until + Duration::from_secs(15))
    );
    assert_eq!(p.send(&core, Packet::PingReq), Ok(()));
}

/// Every close the engine decides carries its reason; only DISCONNECT discards the will.
#[test]
fn the_reason_of_every_close() {
    let mut config = Config::default();
    config.limits.max_topic_length = 16;
    let core = core_with(config);
    let cases: Vec<(Packet, CloseReason)> = vec![
        (Packet::Disconnect, CloseReason::Disconnect),
        (
            Packet::Connect(Box::new(crate::protocol::Connect {
                bridge: false,
                properties: None,
                protocol: ProtocolLevel::V311,
                clean_session: true,
                keep_alive: 0,
                client_id: "x".into(),
                will: None,
                username: None,
                password: None,
            })),
            CloseReason::Protocol("second CONNECT [MQTT-3.1.0-2]".into()),
        ),
        (
            Packet::PingResp,
            CloseReason::Protocol("PINGRESP is a server-to-client packet [MQTT-4.8.0-1]".into()),
        ),
        (
            publish("a/very/long/topic/name", "x", QoS::AtMostOnce, None),
            CloseReason::Policy("PUBLISH topic beyond limits.max_topic_length (22 bytes)".into()),
        ),
    ];
    for (packet, expected) in cases {
        let (mut c, _) = connect(&core, "c", true, None);
        assert_eq!(c.send(&core, packet), Err(expected));
    }
    for (reason, kind, will) in [
        (CloseReason::Disconnect, DisconnectReason::Disconnect, false),
        (CloseReason::PeerClosed, DisconnectReason::PeerClosed, true),
        (CloseReason::KeepAlive, DisconnectReason::KeepAlive, true),
        (
            CloseReason::Protocol("p".into()),
            DisconnectReason::ProtocolError,
            true,
        ),
        (
            CloseReason::Policy("p".into()),
            DisconnectReason::Policy,
            true,
        ),
        (CloseReason::TakenOver, DisconnectReason::TakenOver, true),
        (CloseReason::Admin, DisconnectReason::Admin, true),
        (CloseReason::Shutdown, DisconnectReason::Shutdown, true),
        (
            CloseReason::ListenerRemoved,
            DisconnectReason::ListenerRemoved,
            true,
        ),
        (
            CloseReason::Revoked("r".into()),
            DisconnectReason::Revoked,
            true,
        ),
        (CloseReason::Io("e".into()), DisconnectReason::IoError, true),
    ] {
        assert_eq!(reason.kind(), kind);
        let core = core_with(Config::default());
        let (mut watcher, _) = connect(&core, "w", true, None);
        watcher
            .send(&core, subscribe(1, &[("will/#", QoS::AtMostOnce)]))
            .unwrap();
        watcher.engine.take_output();
        let last_will = LastWill {
            properties: None,
            topic: Arc::from("will/c"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
        };
        let (c, _) = connect(&core, "c", true, Some(last_will));
        c.detach(&core, reason.clone());
        let got = publishes(&watcher.output(&core)).len();
        assert_eq!(got == 1, will, "will after {reason:?}");
        assert_eq!(
            crate::metrics::Counters::get(&core.counters.ops.disconnects[kind.index()]),
            1
        );
    }
}

/// A second connection with the same client id takes the session over [MQTT-3.1.4-2]: the
/// first is told to close with `TakenOver`; a persistent session is resumed with its
/// subscriptions and its queued messages.
#[test]
fn takeover_closes_the_previous_connection_and_resumes_the_session() {
    let core = core_with(Config::default());
    let (mut first, present) = connect(&core, "dev", false, None);
    assert!(!present);
    first
        .send(&core, subscribe(1, &[("cmd/#", QoS::AtLeastOnce)]))
        .unwrap();
    first.engine.take_output();
    assert_eq!(first.close.reason(), None);

    let (second, present) = connect(&core, "dev", false, None);
    assert!(present, "session present [MQTT-3.2.2-2]");
    assert_eq!(first.close.reason(), Some(CloseReason::TakenOver));
    // The old connection detaching afterwards changes nothing for the new owner.
    let old_conn = first.conn_id;
    let entry = first.engine.entry().clone();
    core.registry.detach(&entry, old_conn);
    assert_eq!(entry.owner_conn(), Some(second.conn_id));

    let (mut p, _) = connect(&core, "p", true, None);
    p.send(&core, publish("cmd/x", "go", QoS::AtLeastOnce, Some(1)))
        .unwrap();
    let mut second = second;
    let out = second.output(&core);
    assert_eq!(publishes(&out).len(), 1, "subscription survived: {out:?}");

    // A clean connection discards it [MQTT-3.1.2-6].
    let (_third, present) = connect(&core, "dev", true, None);
    assert!(!present);
    assert_eq!(second.close.reason(), Some(CloseReason::TakenOver));
    assert_eq!(core.router.subscription_count(), 0);
}

/// What the subscriber's client does with one inflight message.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The publisher sends a message at this QoS (0..=2).
    Publish(u8),
    /// The publisher re-sends its last QoS 2 PUBLISH (DUP) before PUBREL.
    Duplicate,
    /// The publisher releases (PUBREL) one of its QoS 2 messages, picked by index.
    Release(usize),
    /// The subscriber acknowledges one of its inflight messages, picked by index.
    Ack(usize),
    /// The subscriber reconnects (persistent session).
    Reconnect,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..3).prop_map(Step::Publish),
        1 => Just(Step::Duplicate),
        2 => any::<usize>().prop_map(Step::Release),
        5 => any::<usize>().prop_map(Step::Ack),
        1 => Just(Step::Reconnect),
    ]
}

proptest! {
    /// QoS 1 and 2 both ways with acknowledgements in random order and reconnects: the
    /// publisher gets exactly one PUBACK / PUBREC per packet (and PUBCOMP per PUBREL); the
    /// subscriber receives every QoS 1/2 message at least once and every QoS 2 message
    /// first-sent exactly once, in publish order, even when the publisher re-sends a QoS 2
    /// PUBLISH before releasing it [MQTT-4.3.3-2], [MQTT-4.6.0-2].
    #[test]
    fn qos_flows_both_ways_with_random_acknowledgements(steps in prop::collection::vec(step(), 1..120)) {
        let core = core_with(Config::default());
        let (mut sub, _) = connect(&core, "sub", false, None);
        sub.send(&core, subscribe(1, &[("t", QoS::ExactlyOnce)])).unwrap();
        sub.engine.take_output();
        let (mut publ, _) = connect(&core, "pub", true, None);
        publ.engine.take_output();

        let mut next_pid = 1u16;
        let mut seq = 0u32;
        let mut published: Vec<(u32, QoS)> = Vec::new();
        let mut unreleased: Vec<u16> = Vec::new();
        let mut last_qos2: Option<(u16, u32)> = None;
        // Subscriber side: packet id -> (payload number, waiting for PUBREC or PUBCOMP).
        let mut inflight: BTreeMap<u16, (u32, bool)> = BTreeMap::new();
        let mut first_seen: Vec<u32> = Vec::new();
        let mut completed: Vec<u32> = Vec::new();

        for s in steps {
            match s {
                Step::Publish(q) => {
                    let qos = QoS::from_u8(q).unwrap();
                    let pid = (qos != QoS::AtMostOnce).then(|| { let p = next_pid; next_pid += 1; p });
                    publ.send(&core, publish("t", &seq.to_string(), qos, pid)).unwrap();
                    let out = publ.engine.take_output().0;
                    match qos {
                        QoS::AtMostOnce => prop_assert!(out.is_empty()),
                        QoS::AtLeastOnce => prop_assert_eq!(out, vec![Packet::PubAck(pid.unwrap())]),
                        QoS::ExactlyOnce => {
                            prop_assert_eq!(out, vec![Packet::PubRec(pid.unwrap())]);
                            unreleased.push(pid.unwrap());
                            last_qos2 = Some((pid.unwrap(), seq));
                        }
                    }
                    published.push((seq, qos));
                    seq += 1;
                }
                Step::Duplicate => {
                    if let Some((pid, n)) = last_qos2.filter(|(pid, _)| unreleased.contains(pid)) {
                        let mut p = publish("t", &n.to_string(), QoS::ExactlyOnce, Some(pid));
                        if let Packet::Publish(x) = &mut p { x.dup = true; }
                        publ.send(&core, p).unwrap();
                        prop_assert_eq!(publ.engine.take_output().0, vec![Packet::PubRec(pid)]);
                    }
                }
                Step::Release(i) => {
                    if !unreleased.is_empty() {
                        let pid = unreleased.remove(i % unreleased.len());
                        publ.send(&core, Packet::PubRel(pid)).unwrap();
                        prop_assert_eq!(publ.engine.take_output().0, vec![Packet::PubComp(pid)]);
                    }
                }
                Step::Ack(i) => {
                    if !inflight.is_empty() {
                        let pid = *inflight.keys().nth(i % inflight.len()).unwrap();
                        let (n, awaiting_comp) = inflight[&pid];
                        let packet = if awaiting_comp { Packet::PubComp(pid) } else {
                            // QoS 1 entries are stored with awaiting_comp = false and n's QoS.
                            let qos = published.iter().find(|(m, _)| *m == n).map(|x| x.1).unwrap();
                            if qos == QoS::AtLeastOnce { Packet::PubAck(pid) } else { Packet::PubRec(pid) }
                        };
                        let was_rec = matches!(packet, Packet::PubRec(_));
                        sub.send(&core, packet).unwrap();
                        if was_rec {
                            inflight.insert(pid, (n, true));
                            completed.push(n);
                        } else {
                            if !awaiting_comp { completed.push(n); }
                            inflight.remove(&pid);
                        }
                    }
                }
                Step::Reconnect => {
                    let old = std::mem::replace(&mut sub, connect(&core, "sub", false, None).0);
                    drop(old);
                }
            }
            for p in sub.output(&core) {
                match p {
                    Packet::Publish(p) if p.qos != QoS::AtMostOnce => {
                        let n: u32 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                        let pid = p.pid.unwrap();
                        if !p.dup {
                            first_seen.push(n);
                        } else {
                            prop_assert!(first_seen.contains(&n), "a DUP re-send of something sent before");
                        }
                        inflight.entry(pid).or_insert((n, false));
                    }
                    Packet::PubRel(pid) => {
                        prop_assert!(inflight.get(&pid).is_some_and(|(_, comp)| *comp));
                    }
                    _ => {}
                }
            }
        }
        // Every QoS 1/2 message went out exactly once as a first transmission, in order,
        // up to what the inflight window has let out so far.
        let expected: Vec<u32> = published.iter().filter(|(_, q)| *q != QoS::AtMostOnce).map(|(n, _)| *n).collect();
        prop_assert_eq!(&first_seen[..], &expected[..first_seen.len()]);
        let mut c = completed.clone();
        c.sort_unstable();
        c.dedup();
        prop_assert_eq!(c.len(), completed.len(), "no message completed twice");
    }
}
