//! The relay's acknowledgement chains, driven packet by packet without sockets.

use super::*;
use crate::config::{Direction, TopicRule};
use bytes::Bytes;

fn relay(remote_v5: bool) -> Relay {
    let rules = RuleSet::new(vec![TopicRule {
        pattern: "#".into(),
        direction: Direction::Both,
        qos: 2,
        local_prefix: "edge/".into(),
        remote_prefix: "site/".into(),
    }]);
    Relay::new(Arc::new(rules), remote_v5, "edge-node")
}

fn publish(topic: &str, qos: QoS, pid: Option<u16>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pid,
        payload: Bytes::from_static(b"25.5"),
        properties: None,
    })
}

fn to_remote(actions: &[Action]) -> Vec<Packet> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToRemote(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn to_local(actions: &[Action]) -> Vec<Packet> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToLocal(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn sent_pid(p: &Packet) -> (u16, bool, &str) {
    match p {
        Packet::Publish(p) => (p.pid.unwrap_or(0), p.dup, &p.topic),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// QoS 1 out: this broker's PUBLISH is acknowledged only after the remote's PUBACK.
#[test]
fn qos1_out_is_acknowledged_locally_after_the_remote() {
    let mut r = relay(false);
    r.remote_connected(false, 100, None, None);
    r.from_local(publish("edge/t", QoS::AtLeastOnce, Some(7)));
    let a = r.take_actions();
    assert!(to_local(&a).is_empty(), "no local ack before the remote's");
    let sent = to_remote(&a);
    let (pid, dup, topic) = sent_pid(&sent[0]);
    assert_eq!((dup, topic), (false, "site/t"));
    r.from_remote(Packet::PubAck(pid));
    let a = r.take_actions();
    assert_eq!(to_local(&a), vec![Packet::PubAck(7)]);
    assert!(a.contains(&Action::Forwarded));
    assert_eq!(r.pending(), 0);
}

/// While the remote is down QoS 0 is dropped and counted, QoS 1 waits and goes out on
/// reconnect.
#[test]
fn store_and_forward_while_the_remote_is_down() {
    let mut r = relay(false);
    r.from_local(publish("edge/a", QoS::AtMostOnce, None));
    r.from_local(publish("edge/b", QoS::AtLeastOnce, Some(1)));
    let a = r.take_actions();
    assert_eq!(a, vec![Action::Dropped(DropReason::Disconnected)]);
    assert_eq!(r.pending(), 1);
    r.remote_connected(false, 100, None, None);
    let sent = to_remote(&r.take_actions());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent_pid(&sent[0]).2, "site/b");
}

/// [MQTT-4.4.0-1]: on a resumed session, unacknowledged messages are resent with DUP and
/// their packet ids; on a new session they are sent again as new messages.
#[test]
fn resend_on_reconnect() {
    let mut r = relay(false);
    r.remote_connected(false, 100, None, None);
    r.from_local(publish("edge/a", QoS::AtLeastOnce, Some(1)));
    let first = sent_pid(&to_remote(&r.take_actions())[0]).0;
    r.remote_lost();
    r.remote_connected(true, 100, None, None);
    let again = to_remote(&r.take_actions());
    assert_eq!(sent_pid(&again[0]).0, first);
    assert!(sent_pid(&again[0]).1, "DUP set on the resend");
    r.remote_lost();
    r.remote_connected(false, 100, None, None);
    let fresh = to_remote(&r.take_actions());
    assert!(!sent_pid(&fresh[0]).1, "a new session gets a new message");
    r.from_remote(Packet::PubAck(sent_pid(&fresh[0]).0));
    assert_eq!(to_local(&r.take_actions()), vec![Packet::PubAck(1)]);
}

/// QoS 2 out: PUBREC here follows the remote's PUBREC; PUBCOMP frees the remote id.
#[test]
fn qos2_out_flow() {
    let mut r = relay(false);
    r.remote_connected(false, 100, None, None);
    r.from_local(publish("edge/a", QoS::ExactlyOnce, Some(9)));
    let pid = sent_pid(&to_remote(&r.take_actions())[0]).0;
    r.from_remote(Packet::PubRec(pid));
    let a = r.take_actions();
    assert_eq!(to_remote(&a), vec![Packet::PubRel(pid)]);
    assert_eq!(to_local(&a), vec![Packet::PubRec(9)]);
    r.from_local(Packet::PubRel(9));
    assert_eq!(to_local(&r.take_actions()), vec![Packet::PubComp(9)]);
    assert_eq!(r.pending(), 1, "waiting for the remote's PUBCOMP");
    r.remote_lost();
    r.remote_connected(true, 100, None, None);
    assert_eq!(to_remote(&r.take_actions()), vec![Packet::PubRel(pid)]);
    r.from_remote(Packet::PubComp(pid));
    assert_eq!(r.pending(), 0);
}

/// QoS 1 in: the remote's PUBLISH is acknowledged to it after this broker's PUBACK.
#[test]
fn qos1_in_is_acknowledged_to_the_remote_after_routing() {
    let mut r = relay(false);
    r.remote_connected(false, 100, None, None);
    r.from_remote(publish("site/cmd", QoS::AtLeastOnce, Some(3)));
    let a = r.take_actions();
    assert!(to_remote(&a).is_empty());
    let local = to_local(&a);
    let (lpid, _, topic) = sent_pid(&local[0]);
    assert_eq!(topic, "edge/cmd");
    r.from_local(Packet::PubAck(lpid));
    assert_eq!(to_remote(&r.take_actions()), vec![Packet::PubAck(3)]);
}

/// [MQTT-4.3.3-2]: a QoS 2 message the remote resends is published here once.
#[test]
fn qos2_in_is_published_once() {
    let mut r = relay(false);
    r.remote_connected(false, 100, None, None);
    r.from_remote(publish("site/cmd", QoS::ExactlyOnce, Some(4)));
    let local = to_local(&r.take_actions());
    let lpid = sent_pid(&local[0]).0;
    r.from_remote(publish("site/cmd", QoS::ExactlyOnce, Some(4)));
    assert!(
        to_local(&r.take_actions()).is_empty(),
        "not published twice"
    );
    r.from_local(Packet::PubRec(lpid));
    let a = r.take_actions();
    assert_eq!(to_local(&a), vec![Packet::PubRel(lpid)]);
    assert_eq!(to_remote(&a), vec![Packet::PubRec(4)]);
    r.from_remote(publish("site/cmd", QoS::ExactlyOnce, Some(4)));
    let a = r.take_actions();
    assert!(to_local(&a).is_empty());
    assert_eq!(to_remote(&a), vec![Packet::PubRec(4)]);
    r.from_remote(Packet::PubRel(4));
    assert_eq!(to_remote(&r.take_actions()), vec![Packet::PubComp(4)]);
    r.from_local(Packet::PubComp(lpid));
    r.from_remote(publish("site/cmd", QoS::ExactlyOnce, Some(4)));
    assert_eq!(
        to_local(&r.take_actions()).len(),
        1,
        "a new message with a freed id"
    );
}

/// The remote's receive maximum bounds what is in flight to it.
#[test]
fn remote_window_is_honoured() {
    let mut r = relay(true);
    r.remote_connected(false, 2, None, None);
    for pid in 1..=3 {
        r.from_local(publish("edge/a", QoS::AtLeastOnce, Some(pid)));
    }
    let sent = to_remote(&r.take_actions());
    assert_eq!(sent.len(), 2);
    r.from_remote(Packet::PubAck(sent_pid(&sent[0]).0));
    let a = r.take_actions();
    assert_eq!(to_local(&a), vec![Packet::PubAck(1)]);
    assert_eq!(to_remote(&a).len(), 1, "the third goes once a slot frees");
}

/// MQTT 5 links carry the path: a message is never sent back to a broker it was on, and
/// this node is added to what it forwards.
#[test]
fn loop_prevention_by_path() {
    let mut r = relay(true);
    r.remote_connected(false, 100, None, Some("cloud".into()));
    let mut props = Properties::default();
    props
        .user_properties
        .push((PATH_PROPERTY.into(), "cloud".into()));
    r.from_local(Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "edge/a".into(),
        pid: Some(5),
        payload: Bytes::new(),
        properties: Some(Arc::new(props)),
    }));
    let a = r.take_actions();
    assert!(a.contains(&Action::Dropped(DropReason::Loop)));
    assert_eq!(to_local(&a), vec![Packet::PubAck(5)], "dropped, not held");
    assert!(to_remote(&a).is_empty());

    r.from_local(publish("edge/b", QoS::AtMostOnce, None));
    let sent = to_remote(&r.take_actions());
    let Packet::Publish(p) = &sent[0] else {
        panic!("expected PUBLISH")
    };
    let props = p.properties.as_deref().expect("path property");
    assert_eq!(
        props.user_properties,
        vec![(PATH_PROPERTY.into(), "edge-node".into())]
    );
}

/// A message larger than the remote's Maximum Packet Size is dropped and counted, and
/// acknowledged here: sent, it would close the link at every attempt.
#[test]
fn larger_than_the_remote_takes_is_dropped() {
    let mut r = relay(true);
    r.remote_connected(false, 100, Some(64), None);
    r.from_local(Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "edge/big".into(),
        pid: Some(3),
        payload: Bytes::from(vec![0u8; 100]),
        properties: None,
    }));
    let a = r.take_actions();
    assert!(a.contains(&Action::Dropped(DropReason::TooLarge)));
    assert_eq!(to_local(&a), vec![Packet::PubAck(3)]);
    assert!(to_remote(&a).is_empty());
    r.from_local(publish("edge/small", QoS::AtLeastOnce, Some(4)));
    assert_eq!(to_remote(&r.take_actions()).len(), 1);
}
