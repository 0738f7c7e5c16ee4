//! Tests of the MQTT 5 wire format: property-based round trips of every packet type with
//! the properties each may carry, and hand-made byte sequences for the property rules of
//! section 2.2.2 (lengths, duplicates, identifiers a packet may not carry).
//!
//! The generators only produce packets in the form the decoder returns them in: an empty
//! property list is `None`, a success acknowledgement or DISCONNECT without properties is
//! the plain packet, a CONNACK always has its reason code. Which properties a packet may
//! carry is restated here from Table 2-4 of the specification rather than taken from the
//! codec, so that the two are checked against each other.

use super::codec::proptests::{
    bytes, decode_split_stream, pid, qos, string, topic_filter, topic_name,
};
use super::codec::{decode, decode_with, encode_with, put_remaining_length};
use super::error::ProtocolError;
use super::packet::*;
use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use std::sync::Arc;

const V5: ProtocolLevel = ProtocolLevel::V5;

/// Largest value of a variable byte integer (section 1.5.5), hence of a subscription
/// identifier (3.3.2.3.8).
const MAX_VARINT: u32 = 268_435_455;

// ---------------------------------------------------------------------------------------
// Which properties each packet may carry (Table 2-4)
// ---------------------------------------------------------------------------------------

const ALL_IDS: [u8; 27] = [
    0x01, 0x02, 0x03, 0x08, 0x09, 0x0b, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1c,
    0x1f, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a,
];
const PUBLISH_IDS: &[u8] = &[0x01, 0x02, 0x03, 0x08, 0x09, 0x0b, 0x23, 0x26];
const WILL_IDS: &[u8] = &[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26];
const CONNECT_IDS: &[u8] = &[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27];
const CONNACK_IDS: &[u8] = &[
    0x11, 0x12, 0x13, 0x15, 0x16, 0x1a, 0x1c, 0x1f, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29,
    0x2a,
];
/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
const ACK_IDS: &[u8] = &[0x1f, 0x26];
const SUBSCRIBE_IDS: &[u8] = &[0x0b, 0x26];
const UNSUBSCRIBE_IDS: &[u8] = &[0x26];
const DISCONNECT_IDS: &[u8] = &[0x11, 0x1c, 0x1f, 0x26];
const AUTH_IDS: &[u8] = &[0x15, 0x16, 0x1f, 0x26];

/// Removes property `id` from `p`.
fn clear(p: &mut Properties, id: u8) {
    match id {
        0x01 => p.payload_format_indicator = None,
        0x02 => p.message_expiry_interval = None,
        0x03 => p.content_type = None,
        0x08 => p.response_topic = None,
        0x09 => p.correlation_data = None,
        0x0b => p.subscription_identifiers.clear(),
        0x11 => p.session_expiry_interval = None,
        0x12 => p.assigned_client_identifier = None,
        0x13 => p.server_keep_alive = None,
        0x15 => p.authentication_method = None,
        0x16 => p.authentication_data = None,
        0x17 => p.request_problem_information = None,
        0x18 => p.will_delay_interval = None,
        0x19 => p.request_response_information = None,
        0x1a => p.response_information = None,
        0x1c => p.server_reference = None,
        0x1f => p.reason_string = None,
        0x21 => p.receive_maximum = None,
        0x22 => p.topic_alias_maximum = None,
        0x23 => p.topic_alias = None,
        0x24 => p.maximum_qos = None,
        0x25 => p.retain_available = None,
        0x26 => p.user_properties.clear(),
        0x27 => p.maximum_packet_size = None,
        0x28 => p.wildcard_subscription_available = None,
        0x29 => p.subscription_identifier_available = None,
        0x2a => p.shared_subscription_available = None,
        other => panic!("no property {other:#04x}"),
    }
}

/// `p` with only the properties in `allowed`; `None` when nothing is left (as decoded).
fn restrict(mut p: Properties, allowed: &[u8]) -> Option<Box<Properties>> {
    for id in ALL_IDS {
        if !allowed.contains(&id) {
            clear(&mut p, id);
        }
    }
    (!p.is_empty()).then(|| Box::new(p))
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

fn flag() -> impl Strategy<Value = u8> {
    0u8..=1
}

fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    prop::option::weighted(0.3, s)
}

/// Name/value pairs from a small alphabet, so that names repeat (which is allowed).
fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[ab]{0,2}", "[a-z0-9é]{0,6}"), 0..4)
}

/// Any combination of valid property values (restricted per packet by [`props`]).
///
/// The strategies here are boxed: unboxed, the value trees of these wide tuples are large
/// enough to overflow a test thread's stack in a debug build.
fn any_properties() -> BoxedStrategy<Properties> {
    let a = (
        opt(flag()),
        opt(any::<u32>()),
        opt(string()),
        opt(topic_name()),
        opt(bytes()),
        prop::collection::vec(1..=MAX_VARINT, 0..4),
        opt(any::<u32>()),
        opt(string()),
        opt(any::<u16>()),
        opt(string()),
    )
        .boxed();
    let b = (
        opt(bytes()),
        opt(flag()),
        opt(any::<u32>()),
        opt(flag()),
        opt(string()),
        opt(string()),
        opt(string()),
        // Receive maximum and maximum packet size 0 are protocol errors (3.1.2.11.3-4).
        opt(1u16..=u16::MAX),
        opt(any::<u16>()),
        // A topic alias of 0 is not permitted [MQTT-3.3.2-8].
        opt(1u16..=u16::MAX),
    )
        .boxed();
    let c = (
        opt(flag()),
        opt(flag()),
        user_properties(),
        opt(1u32..=u32::MAX),
        opt(flag()),
        opt(flag()),
        opt(flag()),
    )
        .boxed();
    (a, b, c)
        .prop_map(
            |(
                (pfi, mei, ct, rt, cd, sids, sei, aci, ska, am),
                (ad, rpi, wdi, rri, ri, sr, rs, rm, tam, ta),
                (mq, ra, up, mps, wsa, sia, ssa),
            )| Properties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                content_type: ct,
                response_topic: rt,
                correlation_data: cd,
                subscription_identifiers: sids,
                session_expiry_interval: sei,
                assigned_client_identifier: aci,
                server_keep_alive: ska,
                authentication_method: am,
                authentication_data: ad,
                request_problem_information: rpi,
                will_delay_interval: wdi,
                request_response_information: rri,
                response_information: ri,
                server_reference: sr,
                reason_string: rs,
                receive_maximum: rm,
                topic_alias_maximum: tam,
                topic_alias: ta,
                maximum_qos: mq,
                retain_available: ra,
                user_properties: up.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
                maximum_packet_size: mps,
                wildcard_subscription_available: wsa,
                subscription_identifier_available: sia,
                shared_subscription_available: ssa,
            },
        )
        .boxed()
}

/// A property list with only the properties in `allowed`, often absent.
fn props(allowed: &'static [u8]) -> BoxedStrategy<Option<Box<Properties>>> {
    prop_oneof![
        1 => Just(None),
        3 => any_properties().prop_map(move |p| restrict(p, allowed)),
    ]
    .boxed()
}

fn connect() -> BoxedStrategy<Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        opt((topic_name(), bytes(), qos(), any::<bool>(), props(WILL_IDS))),
        opt(string()),
        opt(bytes()),
        props(CONNECT_IDS),
    )
        .prop_map(
            |(clean_session, keep_alive, client_id, will, username, password, mut properties)| {
                // Authentication data without a method is a protocol error (3.1.2.11.10).
                if let Some(p) = properties.as_deref_mut() {
                    if p.authentication_data.is_some() && p.authentication_method.is_none() {
                        p.authentication_method = Some("SCRAM-SHA-1".into());
                    }
                }
                Packet::Connect(Box::new(Connect {
                    bridge: false,
                    protocol: V5,
                    clean_session,
                    keep_alive,
                    client_id,
                    will: will.map(|(topic, payload, qos, retain, properties)| LastWill {
                        topic: topic.into(),
                        payload,
                        qos,
                        retain,
                        properties,
                    }),
                    username,
                    // MQTT 5 allows a password without a user name (3.1.2.9).
                    password,
                    properties,
                }))
            },
        )
        .boxed()
}

/// CONNACK reason codes (3.2.2.2).
const CONNACK_REASONS: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8c, 0x90, 0x95, 0x97,
    0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9f,
];

fn connack() -> BoxedStrategy<Packet> {
    (
        any::<bool>(),
        prop::sample::select(CONNACK_REASONS),
        props(CONNACK_IDS),
    )
        .prop_map(|(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                // Session present is 0 with a failure code [MQTT-3.2.2-6].
                session_present: session_present && reason == reason::SUCCESS,
                code: ConnectReturnCode::from_v5_reason(reason),
                reason_code: Some(reason),
                properties,
            })
        })
        .boxed()
}

fn publish() -> BoxedStrategy<Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        pid(),
        bytes(),
        props(PUBLISH_IDS),
    )
        .prop_map(
            |(dup, qos, retain, topic, use_alias_only, pid, payload, properties)| {
                let qos0 = qos == QoS::AtMostOnce;
                let alias = properties.as_ref().and_then(|p| p.topic_alias);
                // With a topic alias the topic name may be empty (3.3.2.3.4).
                let topic = if alias.is_some() && use_alias_only {
                    String::new()
                } else {
                    topic
                };
                Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic: topic.into(),
                    pid: (!qos0).then_some(pid),
                    payload,
                    properties: properties.map(|p| Arc::new(*p)),
                }
            },
        )
        .boxed()
}

/// PUBACK and PUBREC reason codes (3.4.2.1, 3.5.2.1).
const PUBACK_REASONS: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// PUBREL and PUBCOMP reason codes (3.6.2.1, 3.7.2.1).
const PUBREL_REASONS: &[u8] = &[0x00, 0x92];
const ACK_KINDS: &[AckKind] = &[
    AckKind::PubAck,
    AckKind::PubRec,
    AckKind::PubRel,
    AckKind::PubComp,
];

fn ack() -> BoxedStrategy<Packet> {
    (
        prop::sample::select(ACK_KINDS),
        pid(),
        any::<prop::sample::Index>(),
        props(ACK_IDS),
    )
        .prop_map(|(kind, pid, i, properties)| {
            let codes = match kind {
                AckKind::PubAck | AckKind::PubRec => PUBACK_REASONS,
                AckKind::PubRel | AckKind::PubComp => PUBREL_REASONS,
            };
            let reason = *i.get(codes);
            if reason == reason::SUCCESS && properties.is_none() {
                // The success form without properties is the plain packet (3.4.2.1).
                match kind {
                    AckKind::PubAck => Packet::PubAck(pid),
                    AckKind::PubRec => Packet::PubRec(pid),
                    AckKind::PubRel => Packet::PubRel(pid),
                    AckKind::PubComp => Packet::PubComp(pid),
                }
            } else {
                Packet::Ack(Ack {
                    kind,
                    pid,
                    reason,
                    properties,
                })
            }
        })
        .boxed()
}

fn subscription_options() -> impl Strategy<Value = SubscriptionOptions> {
    (any::<bool>(), any::<bool>(), 0u8..3).prop_map(|(no_local, rap, rh)| SubscriptionOptions {
        no_local,
        retain_as_published: rap,
        retain_handling: match rh {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            _ => RetainHandling::DoNotSend,
        },
    })
}

fn subscribe() -> BoxedStrategy<Packet> {
    (
        pid(),
        prop::collection::vec((topic_filter(), qos(), subscription_options()), 1..5),
        props(SUBSCRIBE_IDS),
    )
        .prop_map(|(pid, entries, mut properties)| {
            // At most one subscription identifier in SUBSCRIBE (3.8.2.1.2).
            if let Some(p) = properties.as_deref_mut() {
                p.subscription_identifiers.truncate(1);
            }
            let properties = properties.and_then(|p| (!p.is_empty()).then_some(p));
            Packet::Subscribe(Subscribe {
                pid,
                filters: entries.iter().map(|(f, q, _)| (f.clone(), *q)).collect(),
                options: entries.iter().map(|(_, _, o)| *o).collect(),
                properties,
            })
        })
        .boxed()
}

/// SUBACK failure reason codes other than 0x80 (3.9.3).
const SUBACK_REFUSALS: &[u8] = &[0x83, 0x87, 0x8f, 0x91, 0x97, 0x9e, 0xa1, 0xa2];

fn suback() -> BoxedStrategy<Packet> {
    let code = prop_oneof![
        qos().prop_map(SubAckCode::Granted),
        Just(SubAckCode::Failure),
        prop::sample::select(SUBACK_REFUSALS).prop_map(SubAckCode::Refused),
    ];
    (pid(), prop::collection::vec(code, 1..5), props(ACK_IDS))
        .prop_map(|(pid, codes, properties)| {
            Packet::SubAck(SubAck {
                pid,
                codes,
                properties,
            })
        })
        .boxed()
}

fn unsubscribe() -> BoxedStrategy<Packet> {
    (
        pid(),
        prop::collection::vec(topic_filter(), 1..5),
        props(UNSUBSCRIBE_IDS),
    )
        .prop_map(|(pid, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                pid,
                filters,
                properties,
            })
        })
        .boxed()
}

/// UNSUBACK reason codes (3.11.3).
const UNSUBACK_REASONS: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8f, 0x91];

fn unsuback() -> BoxedStrategy<Packet> {
    (
        pid(),
        prop::collection::vec(prop::sample::select(UNSUBACK_REASONS), 1..5),
        props(ACK_IDS),
    )
        .prop_map(|(pid, codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                pid,
                codes,
                properties,
            })
        })
        .boxed()
}

/// DISCONNECT reason codes (3.14.2.1).
const DISCONNECT_REASONS: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8b, 0x8d, 0x8e, 0x8f, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f, 0xa0, 0xa1, 0xa2,
];

fn disconnect() -> BoxedStrategy<Packet> {
    (
        prop::sample::select(DISCONNECT_REASONS),
        props(DISCONNECT_IDS),
    )
        .prop_map(|(reason, properties)| {
            if reason == reason::SUCCESS && properties.is_none() {
                Packet::Disconnect
            } else {
                Packet::DisconnectWithReason(Disconnect { reason, properties })
            }
        })
        .boxed()
}

/// AUTH reason codes (3.15.2.1).
const AUTH_REASONS: &[u8] = &[0x00, 0x18, 0x19];

fn auth() -> BoxedStrategy<Packet> {
    (prop::sample::select(AUTH_REASONS), props(AUTH_IDS))
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
        .boxed()
}

/// Any valid MQTT 5 packet, in the form the decoder returns it.
fn packet() -> BoxedStrategy<Packet> {
    prop_oneof![
        connect(),
        connack(),
        publish().prop_map(Packet::Publish),
        ack(),
        subscribe(),
        suback(),
        unsubscribe(),
        unsuback(),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(),
        auth(),
    ]
    .boxed()
}

fn encode_v5(p: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    encode_with(p, V5, &mut out);
    out
}

/// Whether a decoded packet has the normal form the generators produce.
fn is_normalized(p: &Packet) -> bool {
    let some_empty = |o: Option<&Properties>| o.is_some_and(Properties::is_empty);
    match p {
        Packet::Connect(c) => {
            !some_empty(c.properties.as_deref())
                && !c
                    .will
                    .as_ref()
                    .is_some_and(|w| some_empty(w.properties.as_deref()))
        }
        Packet::ConnAck(a) => a.reason_code.is_some() && !some_empty(a.properties.as_deref()),
        Packet::Publish(p) => !some_empty(p.properties.as_deref()),
        Packet::Ack(a) => {
            !some_empty(a.properties.as_deref())
                && (a.reason != reason::SUCCESS || a.properties.is_some())
        }
        Packet::Subscribe(s) => {
            !some_empty(s.properties.as_deref()) && s.options.len() == s.filters.len()
        }
        Packet::SubAck(s) => !some_empty(s.properties.as_deref()),
        Packet::Unsubscribe(u) => !some_empty(u.properties.as_deref()),
        Packet::UnsubAck(u) => !some_empty(u.properties.as_deref()),
        Packet::DisconnectWithReason(d) => {
            !some_empty(d.properties.as_deref())
                && (d.reason != reason::SUCCESS || d.properties.is_some())
        }
        Packet::Auth(a) => !some_empty(a.properties.as_deref()),
        _ => true,
    }
}

/// Decodes whatever a decoder accepted again after re-encoding it: the decoder must only
/// hand out packets that the encoder reproduces.
fn assert_reencodes(p: &Packet) {
    assert!(is_normalized(p), "decoded packet not normalized: {p:?}");
    let mut enc = encode_v5(p);
    let again = decode_with(&mut enc, usize::MAX, V5)
        .unwrap_or_else(|e| panic!("re-encoded {p:?} does not decode: {e}"))
        .expect("re-encoded packet is complete");
    assert_eq!(&again, p);
    assert!(enc.is_empty());
}

proptest! {
    /// Every MQTT 5 packet encodes and decodes back to itself.
    #[test]
    fn encode_decode_roundtrip_v5(p in packet()) {
        prop_assert!(is_normalized(&p));
        let mut buf = encode_v5(&p);
        let decoded = decode_with(&mut buf, usize::MAX, V5).unwrap().unwrap();
        prop_assert_eq!(decoded, p);
        prop_assert!(buf.is_empty());
    }

    /// A stream of MQTT 5 packets split at arbitrary points decodes to the same packets.
    #[test]
    fn split_stream_decodes_v5(
        ps in prop::collection::vec(packet(), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let (out, left) = decode_split_stream(&ps, &cuts, V5);
        prop_assert_eq!(out, ps);
        prop_assert_eq!(left, 0);
    }

    /// Every strict prefix of a valid MQTT 5 packet asks for more bytes and consumes none.
    #[test]
    fn truncated_packets_wait_for_more_v5(p in packet()) {
        let full = encode_v5(&p);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            prop_assert_eq!(decode_with(&mut buf, usize::MAX, V5), Ok(None));
            prop_assert_eq!(buf.len(), cut);
        }
    }

    /// Arbitrary bytes never panic the MQTT 5 decoder, and it consumes only what it was
    /// given; whatever it accepts re-encodes to itself.
    #[test]
    fn arbitrary_bytes_never_panic_v5(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&data[..]);
        let before = buf.len();
        while let Ok(Some(p)) = decode_with(&mut buf, 1024, V5) {
            prop_assert!(buf.len() < before);
            assert_reencodes(&p);
        }
        prop_assert!(buf.len() <= before);
    }

    /// Arbitrary bodies behind a well-formed fixed header of every packet type reach the
    /// body parsers (properties included) rather than stopping at the header: no panic,
    /// and whatever is accepted re-encodes to itself.
    #[test]
    fn arbitrary_bodies_never_panic_v5(
        first in any::<u8>(),
        body in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        let mut buf = frame(first, &body);
        if let Ok(Some(p)) = decode_with(&mut buf, usize::MAX, V5) {
            assert_reencodes(&p);
        }
    }

    /// Valid MQTT 5 packets with one byte changed never panic the decoder; whatever is
    /// accepted re-encodes to itself.
    #[test]
    fn mutated_packets_never_panic_v5(
        p in packet(),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut bytes = encode_v5(&p).to_vec();
        let i = at.index(bytes.len());
        bytes[i] = value;
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(p)) = decode_with(&mut buf, usize::MAX, V5) {
            assert_reencodes(&p);
        }
    }

    /// A PUBLISH with properties sent to a 3.1.1 subscriber loses its properties and is
    /// otherwise the same packet (3.1.1 has no properties field).
    #[test]
    fn v5_publish_encoded_for_v311_decodes_without_properties(p in publish()) {
        // A topic-alias-only PUBLISH is resolved by the broker before it is forwarded.
        let p = if p.topic.is_empty() {
            Publish { topic: "resolved/alias".into(), ..p }
        } else {
            p
        };
        let mut buf = BytesMut::new();
        encode_with(&Packet::Publish(p.clone()), ProtocolLevel::V311, &mut buf);
        let decoded = decode(&mut buf, usize::MAX).unwrap().unwrap();
        prop_assert_eq!(decoded, Packet::Publish(Publish { properties: None, ..p }));
        prop_assert!(buf.is_empty());
    }

    /// The MQTT 5 acknowledgements become the plain 3.1.1 ones for a 3.1.1 peer.
    #[test]
    fn v5_acks_encoded_for_v311_are_plain_acks(p in prop_oneof![ack(), suback(), unsuback()]) {
        let mut buf = BytesMut::new();
        encode_with(&p, ProtocolLevel::V311, &mut buf);
        let decoded = decode(&mut buf, usize::MAX).unwrap().unwrap();
        let expected = match p {
            Packet::Ack(a) => match a.kind {
                AckKind::PubAck => Packet::PubAck(a.pid),
                AckKind::PubRec => Packet::PubRec(a.pid),
                AckKind::PubRel => Packet::PubRel(a.pid),
                AckKind::PubComp => Packet::PubComp(a.pid),
            },
            Packet::SubAck(s) => Packet::SubAck(SubAck {
                pid: s.pid,
                // A specific refusal is 0x80 for 3.1.1 (3.9.3).
                codes: s
                    .codes
                    .iter()
                    .map(|c| match c {
                        SubAckCode::Refused(_) => SubAckCode::Failure,
                        c => *c,
                    })
                    .collect(),
                properties: None,
            }),
            Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck::new(u.pid)),
            plain => plain,
        };
        prop_assert_eq!(decoded, expected);
        prop_assert!(buf.is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// Hand-made packets
// ---------------------------------------------------------------------------------------

/// `body` behind a fixed header with first byte `first` and the right remaining length.
fn frame(first: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(first);
    put_remaining_length(&mut out, body.len());
    out.put_slice(body);
    out
}

/// Decodes one whole packet of an MQTT 5 connection.
fn decode_v5(mut buf: BytesMut) -> Result<Packet, ProtocolError> {
    let packet = decode_with(&mut buf, usize::MAX, V5)?.expect("a whole packet");
    assert!(buf.is_empty(), "the packet was consumed");
    Ok(packet)
}

/// A property list: its length (one byte: the tests keep it short), then `props`.
fn prop_list(props: &[u8]) -> Vec<u8> {
    assert!(props.len() < 128);
    let mut v = vec![props.len() as u8];
    v.extend_from_slice(props);
    v
}

/// A QoS 1 PUBLISH to `a/b`, packet id 1, payload `hi`, with a raw property section.
fn publish_raw(property_section: &[u8]) -> BytesMut {
    let mut body = vec![0, 3, b'a', b'/', b'b', 0, 1];
    body.extend_from_slice(property_section);
    body.extend_from_slice(b"hi");
    frame(0x32, &body)
}

/// A v5 CONNECT (clean start, keep alive 60, client id `c`) with a raw property section
/// and, when `will` is given, a will with that raw property section, topic `w`, payload `x`.
fn connect_raw(property_section: &[u8], will: Option<&[u8]>) -> BytesMut {
    let flags = if will.is_some() { 0x06 } else { 0x02 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 60];
    body.extend_from_slice(property_section);
    body.extend_from_slice(&[0, 1, b'c']);
    if let Some(w) = will {
        body.extend_from_slice(w);
        body.extend_from_slice(&[0, 1, b'w', 0, 1, b'x']);
    }
    frame(0x10, &body)
}

fn assert_malformed(buf: BytesMut) -> ProtocolError {
    let e = decode_v5(buf).expect_err("malformed");
    assert_eq!(e.reason_code(), reason::MALFORMED_PACKET, "{e:?}");
    e
}

fn assert_duplicate(buf: BytesMut, id: u8) {
    let e = decode_v5(buf).expect_err("duplicate property");
    assert_eq!(e, ProtocolError::DuplicateProperty(id));
    assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR);
}

fn assert_not_allowed(buf: BytesMut, id: u8) {
    let e = decode_v5(buf).expect_err("property not allowed");
    assert!(
        matches!(e, ProtocolError::PropertyNotAllowed { id: got, .. } if got == id),
        "{e:?}"
    );
    assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
}

/// The hand-made packets below are valid when their properties are: the failures that
/// follow come from the property under test and nothing else.
#[test]
fn hand_made_packets_are_valid_without_the_fault() {
    let Packet::Publish(p) = decode_v5(publish_raw(&prop_list(&[0x03, 0, 1, b't']))).unwrap()
    else {
        panic!("a PUBLISH");
    };
    assert_eq!(p.topic.as_ref(), "a/b");
    assert_eq!(p.pid, Some(1));
    assert_eq!(&p.payload[..], b"hi");
    assert_eq!(p.properties.unwrap().content_type.as_deref(), Some("t"));

    let session_expiry = [0x11, 0, 0, 0, 10];
    let will_delay = [0x18, 0, 0, 0, 5];
    let Packet::Connect(c) = decode_v5(connect_raw(
        &prop_list(&session_expiry),
        Some(&prop_list(&will_delay)),
    ))
    .unwrap() else {
        panic!("a CONNECT");
    };
    assert_eq!(c.protocol, V5);
    assert_eq!(c.client_id, "c");
    assert_eq!(c.properties.unwrap().session_expiry_interval, Some(10));
    let will = c.will.unwrap();
    assert_eq!(will.topic.as_ref(), "w");
    assert_eq!(will.properties.unwrap().will_delay_interval, Some(5));
}

/// No properties is a property length of zero [MQTT-2.2.2-1]; it decodes as `None`, and
/// `None` encodes as that single zero byte.
#[test]
fn no_properties_is_property_length_zero_mqtt_2_2_2_1() {
    let Packet::Publish(p) = decode_v5(publish_raw(&[0])).unwrap() else {
        panic!("a PUBLISH");
    };
    assert_eq!(p.properties, None);
    assert_eq!(&encode_v5(&Packet::Publish(p))[..], &publish_raw(&[0])[..]);
    // An explicitly empty list is the same thing on the wire.
    let empty = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        pid: Some(1),
        payload: Bytes::from_static(b"hi"),
        properties: Some(Arc::new(Properties::default())),
    });
    assert_eq!(&encode_v5(&empty)[..], &publish_raw(&[0])[..]);
}

// (e) Malformed property lengths and values: Malformed Packet, 0x81 (2.2.2.1, 1.5).

#[test]
fn property_length_beyond_the_packet_is_malformed_2_2_2_1() {
    // Property length 10, but only the 2-byte payload follows.
    let e = assert_malformed(publish_raw(&[10]));
    assert!(matches!(e, ProtocolError::Malformed(_)), "{e:?}");
    // The same in a PUBACK, where nothing at all follows the property length.
    assert_malformed(frame(0x40, &[0, 1, 0x10, 5]));
    // In CONNECT: the list would run into the client id and past the end.
    assert_malformed(connect_raw(&[40, 0x11, 0, 0, 0, 1], None));
    // In the will properties.
    assert_malformed(connect_raw(&[0], Some(&[50, 0x18, 0, 0, 0, 1])));
    // In DISCONNECT and AUTH.
    assert_malformed(frame(0xe0, &[0x80, 3, 0x1f, 0]));
    assert_malformed(frame(0xf0, &[0x18, 9]));
}

#[test]
fn property_length_of_five_bytes_is_malformed_1_5_5() {
    // A variable byte integer uses at most four bytes (1.5.5).
    assert_malformed(publish_raw(&[0xff, 0xff, 0xff, 0xff, 0x7f]));
}

#[test]
fn property_value_cut_by_the_property_length_is_malformed_2_2_2_2() {
    // Message expiry interval is a four-byte integer; the list ends after two.
    let e = assert_malformed(publish_raw(&prop_list(&[0x02, 0, 0])));
    assert_eq!(e, ProtocolError::Truncated);
    // A content type declaring 5 bytes with 2 in the list.
    assert_malformed(publish_raw(&prop_list(&[0x03, 0, 5, b'a', b'b'])));
    // A user property with its name and no value.
    assert_malformed(publish_raw(&prop_list(&[0x26, 0, 1, b'k'])));
    // A subscription identifier whose variable byte integer does not end.
    assert_malformed(publish_raw(&prop_list(&[0x0b, 0x80, 0x80])));
    // A two-byte receive maximum with one byte, in CONNECT.
    assert_malformed(connect_raw(&prop_list(&[0x21, 0]), None));
    // A reason string cut short in a PUBACK.
    assert_malformed(frame(0x40, &[0, 1, 0x80, 3, 0x1f, 0, 4]));
}

#[test]
fn property_identifier_alone_is_malformed_2_2_2_2() {
    // An identifier with no value at all.
    assert_malformed(publish_raw(&prop_list(&[0x23])));
}

#[test]
fn string_property_not_utf8_is_malformed_mqtt_1_5_4_1() {
    let e = assert_malformed(publish_raw(&prop_list(&[0x03, 0, 2, 0xc3, 0x28])));
    assert_eq!(e, ProtocolError::InvalidUtf8);
    // U+0000 in a user property name [MQTT-1.5.4-2].
    let e = assert_malformed(publish_raw(&prop_list(&[0x26, 0, 1, 0, 0, 0])));
    assert_eq!(e, ProtocolError::NullCharacter);
}

// (f) Duplicated properties: Protocol Error, 0x82 ("It is a Protocol Error to include
// the ... more than once", in each property's section).

#[test]
fn duplicate_content_type_in_publish_is_protocol_error_3_3_2_3_9() {
    assert_duplicate(
        publish_raw(&prop_list(&[0x03, 0, 1, b'x', 0x03, 0, 1, b'y'])),
        0x03,
    );
}

#[test]
fn duplicate_session_expiry_in_connect_is_protocol_error_3_1_2_11_2() {
    assert_duplicate(
        connect_raw(&prop_list(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]), None),
        0x11,
    );
}

#[test]
fn duplicate_properties_are_protocol_errors_wherever_they_appear() {
    // Topic alias twice in PUBLISH (3.3.2.3.4), not adjacent.
    assert_duplicate(
        publish_raw(&prop_list(&[0x23, 0, 1, 0x01, 1, 0x23, 0, 2])),
        0x23,
    );
    // Payload format indicator twice (3.3.2.3.2).
    assert_duplicate(publish_raw(&prop_list(&[0x01, 0, 0x01, 1])), 0x01);
    // Will delay interval twice in the will properties (3.1.3.2.2).
    assert_duplicate(
        connect_raw(
            &[0],
            Some(&prop_list(&[0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 1])),
        ),
        0x18,
    );
    // Reason string twice in a PUBACK (3.4.2.2.2).
    assert_duplicate(
        frame(0x40, &[0, 1, 0x80, 7, 0x1f, 0, 1, b'a', 0x1f, 0, 0]),
        0x1f,
    );
    // Two subscription identifiers in SUBSCRIBE (3.8.2.1.2).
    let mut body = vec![0, 1];
    body.extend(prop_list(&[0x0b, 1, 0x0b, 2]));
    body.extend([0, 1, b'a', 1]);
    assert_duplicate(frame(0x82, &body), 0x0b);
    // Server reference twice in DISCONNECT (3.14.2.2.5).
    assert_duplicate(
        frame(0xe0, &[0x9c, 8, 0x1c, 0, 1, b'a', 0x1c, 0, 1, b'b']),
        0x1c,
    );
    // Authentication method twice in AUTH (3.15.2.2.2).
    assert_duplicate(
        frame(0xf0, &[0x18, 8, 0x15, 0, 1, b'a', 0x15, 0, 1, b'a']),
        0x15,
    );
}

#[test]
fn user_properties_repeat_and_keep_their_order_mqtt_3_3_2_18() {
    // Three user properties, the same name twice, around another property.
    let list = prop_list(&[
        0x26, 0, 1, b'k', 0, 1, b'1', //
        0x03, 0, 1, b't', //
        0x26, 0, 1, b'j', 0, 1, b'2', //
        0x26, 0, 1, b'k', 0, 1, b'3',
    ]);
    let Packet::Publish(p) = decode_v5(publish_raw(&list)).unwrap() else {
        panic!("a PUBLISH");
    };
    let props = p.properties.clone().unwrap();
    let pairs: Vec<(&str, &str)> = props
        .user_properties
        .iter()
        .map(|(k, v)| (&**k, &**v))
        .collect();
    assert_eq!(pairs, [("k", "1"), ("j", "2"), ("k", "3")]);
    assert_eq!(props.content_type.as_deref(), Some("t"));
    // And they go out again in the same order.
    let mut again = encode_v5(&Packet::Publish(p.clone()));
    assert_eq!(
        decode_with(&mut again, usize::MAX, V5).unwrap(),
        Some(Packet::Publish(p))
    );
    // User properties repeat in CONNECT and in acknowledgements as well.
    let user = [0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0];
    let Packet::Connect(c) = decode_v5(connect_raw(&prop_list(&user), None)).unwrap() else {
        panic!("a CONNECT");
    };
    assert_eq!(c.properties.unwrap().user_properties.len(), 2);
    let mut body = vec![0, 1, 0x10];
    body.extend(prop_list(&user));
    let Packet::Ack(a) = decode_v5(frame(0x40, &body)).unwrap() else {
        panic!("a PUBACK with a reason");
    };
    assert_eq!(a.properties.unwrap().user_properties.len(), 2);
}

#[test]
fn several_subscription_identifiers_in_publish_are_allowed_3_3_2_3_8() {
    // 1, 128 (two bytes) and the largest value, 268,435,455 (four bytes).
    let list = prop_list(&[0x0b, 1, 0x0b, 0x80, 0x01, 0x0b, 0xff, 0xff, 0xff, 0x7f]);
    let Packet::Publish(p) = decode_v5(publish_raw(&list)).unwrap() else {
        panic!("a PUBLISH");
    };
    assert_eq!(
        p.properties.as_ref().unwrap().subscription_identifiers,
        [1, 128, MAX_VARINT]
    );
    assert_eq!(&encode_v5(&Packet::Publish(p))[..], &publish_raw(&list)[..]);
}

#[test]
fn subscription_identifier_zero_is_protocol_error_3_3_2_3_8() {
    let e = decode_v5(publish_raw(&prop_list(&[0x0b, 0]))).unwrap_err();
    assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR, "{e:?}");
    let mut body = vec![0, 1];
    body.extend(prop_list(&[0x0b, 0]));
    body.extend([0, 1, b'a', 1]);
    let e = decode_v5(frame(0x82, &body)).unwrap_err();
    assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR, "{e:?}");
}

// (g) Properties a packet may not carry: Malformed Packet, 0x81 (2.2.2.2).

#[test]
fn session_expiry_in_publish_is_malformed_2_2_2_2() {
    assert_not_allowed(publish_raw(&prop_list(&[0x11, 0, 0, 0, 1])), 0x11);
}

#[test]
fn topic_alias_in_connect_is_malformed_2_2_2_2() {
    assert_not_allowed(connect_raw(&prop_list(&[0x23, 0, 1]), None), 0x23);
}

#[test]
fn will_delay_in_publish_is_malformed_2_2_2_2() {
    assert_not_allowed(publish_raw(&prop_list(&[0x18, 0, 0, 0, 1])), 0x18);
}

#[test]
fn properties_outside_their_packets_are_malformed_2_2_2_2() {
    // Will delay belongs to the will properties, not to CONNECT's.
    assert_not_allowed(connect_raw(&prop_list(&[0x18, 0, 0, 0, 1]), None), 0x18);
    // Session expiry belongs to CONNECT's, not to the will properties.
    assert_not_allowed(
        connect_raw(&[0], Some(&prop_list(&[0x11, 0, 0, 0, 1]))),
        0x11,
    );
    // Topic alias is for PUBLISH only, not for the will message.
    assert_not_allowed(connect_raw(&[0], Some(&prop_list(&[0x23, 0, 1]))), 0x23);
    // Server-only properties from a client.
    assert_not_allowed(connect_raw(&prop_list(&[0x24, 1]), None), 0x24);
    assert_not_allowed(connect_raw(&prop_list(&[0x1f, 0, 0]), None), 0x1f);
    // A subscription identifier in CONNACK, a receive maximum in PUBACK.
    let mut body = vec![0, 0];
    body.extend(prop_list(&[0x0b, 1]));
    assert_not_allowed(frame(0x20, &body), 0x0b);
    assert_not_allowed(frame(0x40, &[0, 1, 0x10, 3, 0x21, 0, 1]), 0x21);
    // A reason string in SUBSCRIBE and UNSUBSCRIBE, a subscription identifier in
    // UNSUBSCRIBE.
    for (first, list) in [
        (0x82, prop_list(&[0x1f, 0, 0])),
        (0xa2, prop_list(&[0x1f, 0, 0])),
        (0xa2, prop_list(&[0x0b, 1])),
    ] {
        let mut body = vec![0, 1];
        body.extend(&list);
        body.extend([0, 1, b'a']);
        if first == 0x82 {
            body.push(1);
        }
        assert_not_allowed(frame(first, &body), list[1]);
    }
    // A subscription identifier in SUBACK and UNSUBACK.
    for first in [0x90, 0xb0] {
        let mut body = vec![0, 1];
        body.extend(prop_list(&[0x0b, 1]));
        body.push(0);
        assert_not_allowed(frame(first, &body), 0x0b);
    }
    // Topic alias in DISCONNECT, session expiry in AUTH.
    assert_not_allowed(frame(0xe0, &[0x80, 3, 0x23, 0, 1]), 0x23);
    assert_not_allowed(frame(0xf0, &[0x18, 5, 0x11, 0, 0, 0, 1]), 0x11);
}

#[test]
fn unknown_property_identifiers_are_malformed_2_2_2_2() {
    // 0x00, an unassigned 0x04, 0x2B (one past the last), and 0x7F.
    for id in [0x00, 0x04, 0x2b, 0x7f] {
        assert_not_allowed(publish_raw(&prop_list(&[id, 0])), id);
    }
    // An identifier needing two bytes as a variable byte integer (128).
    let e = assert_malformed(publish_raw(&prop_list(&[0x80, 0x01, 0])));
    assert!(
        matches!(e, ProtocolError::PropertyNotAllowed { .. }),
        "{e:?}"
    );
}

#[test]
fn subscribe_options_reserved_bits_are_malformed_mqtt_3_8_3_5() {
    for options in [0x40u8, 0x80, 0x30] {
        let mut body = vec![0, 1, 0, 0, 1, b'a'];
        body.push(options | 1);
        let e = assert_malformed(frame(0x82, &body));
        assert!(matches!(e, ProtocolError::Malformed(_)), "{e:?}");
    }
    // Bits 2 to 5 are options in MQTT 5.
    let Packet::Subscribe(s) = decode_v5(frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x2e])).unwrap() else {
        panic!("a SUBSCRIBE");
    };
    assert_eq!(s.filters, [("a".to_string(), QoS::ExactlyOnce)]);
    assert_eq!(
        s.options,
        [SubscriptionOptions {
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        }]
    );
}
