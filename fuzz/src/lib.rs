//! The checks behind every fuzz target, as plain functions of a byte slice.
//!
//! Each `fuzz_targets/*.rs` is a one-line call into this file, and `tests/fuzz_replay.rs`
//! includes the same file (`#[path]`) to replay the committed seeds and crash regressions
//! on stable Rust with `cargo test`, so a finding stays fixed without a fuzzer installed.
//! A check either returns or panics: a panic is a finding (a crash in the broker code, or
//! a broken invariant asserted here).

use bytes::{Bytes, BytesMut};
use mqtt_broker::protocol::codec::{decode, decode_with, encode, encode_with, peek_header};
use mqtt_broker::protocol::topic::{
    filter_matches, has_wildcard, validate_topic_filter, validate_topic_name, MAX_TOPIC_LEN,
};
use mqtt_broker::protocol::{Packet, ProtocolError, ProtocolLevel, QoS};
use mqtt_broker::routing::{Message, RetainedStore, SubscriptionTrie};
use mqtt_broker::session::state::OutboundState;
use mqtt_broker::session::{DropReason, InboundQos2, Session, SessionLimits};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

/// Names of the fuzz targets, which are also the directory names of their seeds.
pub const TARGETS: [&str; 5] = ["decode_stream", "decode_v5", "topics", "config", "session"];

/// Runs the check of `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "decode_stream" => decode_stream(data),
        "decode_v5" => decode_v5(data),
        "topics" => topics(data),
        "config" => config(data),
        "session" => session(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// decode_stream: the packet decoder over whole byte streams split at arbitrary points
// ---------------------------------------------------------------------------------------------

/// What decoding a stream produced: packets, the error that stopped it, bytes left over.
type Decoded = (Vec<Packet>, Option<ProtocolError>, usize);

fn decode_chunks<'a>(
    chunks: impl Iterator<Item = &'a [u8]>,
    max: usize,
    level: ProtocolLevel,
) -> Decoded {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decode_with(&mut buf, max, level) {
                Ok(Some(p)) => {
                    assert!(buf.len() < before, "a packet consumed no bytes");
                    out.push(p);
                }
                Ok(None) => {
                    // Waiting for more bytes must not consume any.
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                // What is left in the buffer after an error depends on how much had
                // arrived; the connection is closed then, so it does not matter.
                Err(e) => return (out, Some(e), 0),
            }
        }
    }
    (out, None, buf.len())
}

/// Byte 0 picks the maximum packet size, byte 1 seeds the split points; the rest is the
/// stream. Decoding it whole, in pseudo-random chunks and byte by byte must give the same
/// packets and the same error, and every packet must re-encode to itself.
pub fn decode_stream(data: &[u8]) {
    decode_stream_with(data, ProtocolLevel::V311)
}

// ---------------------------------------------------------------------------------------------
// decode_v5: the same over the packets of an MQTT 5 connection (properties, reason codes)
// ---------------------------------------------------------------------------------------------

/// [`decode_stream`] for a connection speaking MQTT 5 (`decode_with(.., V5)`): no panic, the
/// three feedings agree, and every decoded packet re-encodes (`encode_with(.., V5)`) to bytes
/// that decode to the same packet, in the normal form the decoder produces (no empty property
/// list, no success acknowledgement without properties in the MQTT 5 form, ...).
pub fn decode_v5(data: &[u8]) {
    decode_stream_with(data, ProtocolLevel::V5)
}

fn decode_stream_with(data: &[u8], level: ProtocolLevel) {
    let [sel, seed, stream @ ..] = data else {
        return;
    };
    let max = match sel % 4 {
        0 => usize::MAX,
        1 => 64,
        2 => 1024,
        _ => 2 + usize::from(*sel),
    };
    let whole = decode_chunks(std::iter::once(stream), max, level);

    // Chunk lengths 1..=16 from a xorshift generator seeded by byte 1.
    let mut state = u32::from(*seed) | 0x9e37_0000;
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = 1 + (state % 16) as usize;
        let end = (at + len).min(stream.len());
        cuts.push(&stream[at..end]);
        at = end;
    }
    assert_eq!(
        decode_chunks(cuts.into_iter(), max, level),
        whole,
        "split stream"
    );
    assert_eq!(
        decode_chunks(stream.chunks(1), max, level),
        whole,
        "byte by byte"
    );

    for p in &whole.0 {
        check_decoded_packet(p, max, level);
    }
    // The fixed-header parser on its own never claims more than 5 header bytes.
    if let Ok(Some(h)) = peek_header(stream) {
        assert!((2..=5).contains(&h.header_len));
        assert!(h.remaining_len <= mqtt_broker::protocol::codec::MAX_REMAINING_LENGTH);
    }
}

fn check_decoded_packet(p: &Packet, max: usize, level: ProtocolLevel) {
    let mut enc = BytesMut::new();
    encode_with(p, level, &mut enc);
    // Re-encoding may be shorter (a non-minimal length encoding is accepted), never longer.
    assert!(
        enc.len() <= max,
        "re-encoded packet larger than the maximum"
    );
    let again = decode_with(&mut enc, usize::MAX, level)
        .expect("a decoded packet re-encodes validly")
        .expect("a re-encoded packet is complete");
    assert_eq!(&again, p, "re-encoded packet decodes to itself");
    assert!(enc.is_empty(), "re-encoding has trailing bytes");
    // What the broker relies on after decoding.
    match p {
        Packet::Publish(pb) => {
            // MQTT 5: a topic alias may stand for an empty topic name (3.3.2.3.4).
            let alias = pb.properties.as_ref().and_then(|pr| pr.topic_alias);
            assert!(
                validate_topic_name(&pb.topic).is_ok() || (pb.topic.is_empty() && alias.is_some())
            );
            assert_eq!(pb.pid.is_some(), pb.qos != QoS::AtMostOnce);
            assert_ne!(pb.pid, Some(0), "[MQTT-2.3.1-1]");
            assert!(!(pb.dup && pb.qos == QoS::AtMostOnce), "[MQTT-3.3.1-2]");
        }
        Packet::Subscribe(s) => {
            assert!(!s.filters.is_empty(), "[MQTT-3.8.3-3]");
            assert_ne!(s.pid, 0);
            for (f, _) in &s.filters {
                assert!(validate_topic_filter(f).is_ok());
            }
        }
        Packet::Unsubscribe(u) => {
            assert!(!u.filters.is_empty(), "[MQTT-3.10.3-2]");
            assert_ne!(u.pid, 0);
            for f in &u.filters {
                assert!(validate_topic_filter(f).is_ok());
            }
        }
        Packet::Connect(c) => {
            assert!(!c.client_id.contains('\0'), "[MQTT-1.5.3-2]");
            if let Some(w) = &c.will {
                assert!(validate_topic_name(&w.topic).is_ok());
            }
            // A CONNECT names its own version, whatever the connection's; MQTT 5 allows a
            // password without a user name (3.1.2.9).
            assert!(
                c.password.is_none() || c.username.is_some() || c.protocol.is_v5(),
                "[MQTT-3.1.2-22]"
            );
        }
        Packet::PubAck(pid) | Packet::PubRec(pid) | Packet::PubRel(pid) | Packet::PubComp(pid) => {
            assert_ne!(*pid, 0, "[MQTT-2.3.1-1]")
        }
        _ => {}
    }
    if level.is_v5() {
        check_decoded_v5(p);
    } else {
        // Only a CONNECT (which names its own version) carries MQTT 5 fields on a 3.1.1
        // connection.
        assert!(
            !matches!(
                p,
                Packet::Ack(_) | Packet::DisconnectWithReason(_) | Packet::Auth(_)
            ),
            "an MQTT 5 packet decoded on a 3.1.1 connection"
        );
    }
}

/// What the broker relies on in a packet decoded on an MQTT 5 connection.
fn check_decoded_v5(p: &Packet) {
    use mqtt_broker::protocol::{reason, Properties, SubAckCode};
    // An empty property list decodes as `None`.
    let props = |o: Option<&Properties>| {
        if let Some(pr) = o {
            assert!(!pr.is_empty(), "Some(empty properties) in {}", p.name());
            assert!(
                !pr.subscription_identifiers.contains(&0),
                "subscription identifier 0"
            );
        }
    };
    match p {
        Packet::Connect(c) => {
            props(c.properties.as_deref());
            if let Some(w) = &c.will {
                props(w.properties.as_deref());
            }
            if let Some(pr) = &c.properties {
                assert_ne!(pr.receive_maximum, Some(0), "3.1.2.11.3");
                assert_ne!(pr.maximum_packet_size, Some(0), "3.1.2.11.4");
                assert!(pr.authentication_data.is_none() || pr.authentication_method.is_some());
            }
        }
        Packet::ConnAck(a) => {
            props(a.properties.as_deref());
            assert!(
                a.reason_code.is_some(),
                "an MQTT 5 CONNACK has its reason code"
            );
        }
        Packet::Publish(pb) => props(pb.properties.as_deref()),
        Packet::Ack(a) => {
            props(a.properties.as_deref());
            assert_ne!(a.pid, 0, "[MQTT-2.3.1-1]");
            assert!(
                a.reason != reason::SUCCESS || a.properties.is_some(),
                "a plain success acknowledgement decodes as PubAck(pid) and friends"
            );
        }
        Packet::Subscribe(s) => {
            props(s.properties.as_deref());
            assert_eq!(
                s.options.len(),
                s.filters.len(),
                "one option byte per filter"
            );
            if let Some(pr) = &s.properties {
                assert!(pr.subscription_identifiers.len() <= 1, "3.8.2.1.2");
            }
        }
        Packet::SubAck(s) => {
            props(s.properties.as_deref());
            for c in &s.codes {
                if let SubAckCode::Refused(code) = c {
                    assert!(*code > 0x80, "0x80 is SubAckCode::Failure");
                }
            }
        }
        Packet::Unsubscribe(u) => props(u.properties.as_deref()),
        Packet::UnsubAck(u) => props(u.properties.as_deref()),
        Packet::DisconnectWithReason(d) => {
            props(d.properties.as_deref());
            assert!(
                d.reason != reason::SUCCESS || d.properties.is_some(),
                "a plain normal disconnection decodes as Packet::Disconnect"
            );
        }
        Packet::Auth(a) => props(a.properties.as_deref()),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// topics: topic-name and topic-filter parsers, matching, the trie and the retained store
// ---------------------------------------------------------------------------------------------

/// An independent statement of the 4.7 rules for names.
fn reference_name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TOPIC_LEN && !s.contains(['+', '#', '\0'])
}

/// An independent statement of the 4.7 rules for filters.
fn reference_filter_ok(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_TOPIC_LEN || s.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = s.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| {
        if l.contains('#') {
            *l == "#" && i == levels.len() - 1
        } else {
            !l.contains('+') || *l == "+"
        }
    })
}

/// The input, as text, is a newline-separated list of candidate names and filters.
/// Validation must agree with the reference rules; the trie and the retained store must
/// agree with `filter_matches`; the ACL filter algebra must agree with matching.
pub fn topics(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let entries: Vec<&str> = text.split('\n').take(12).collect();
    for e in &entries {
        let name_ok = validate_topic_name(e).is_ok();
        let filter_ok = validate_topic_filter(e).is_ok();
        assert_eq!(name_ok, reference_name_ok(e), "name {e:?}");
        assert_eq!(filter_ok, reference_filter_ok(e), "filter {e:?}");
        if name_ok {
            assert!(filter_ok, "a valid name is a valid filter: {e:?}");
            assert!(!has_wildcard(e));
            assert!(filter_matches(e, e), "a name matches itself: {e:?}");
        }
    }
    let filters: Vec<&str> = entries
        .iter()
        .copied()
        .filter(|e| validate_topic_filter(e).is_ok())
        .collect();
    let mut names: Vec<String> = entries
        .iter()
        .filter(|e| validate_topic_name(e).is_ok())
        .map(|e| e.to_string())
        .collect();
    // Names built from the filters reach the wildcard branches more often.
    for f in &filters {
        let n = f.replace('+', "x").replace("/#", "").replace('#', "y");
        if validate_topic_name(&n).is_ok() {
            names.push(n);
        }
    }

    let mut trie: SubscriptionTrie<usize, String> = SubscriptionTrie::new();
    let mut retained = RetainedStore::new();
    for (i, f) in filters.iter().enumerate() {
        trie.insert(f, i, f.to_string());
    }
    for n in &names {
        let m = Message::new(n, Bytes::from_static(b"r"), QoS::AtLeastOnce, true);
        retained.retain(&m, usize::MAX);
    }
    for n in &names {
        let mut got = BTreeSet::new();
        trie.for_each_match(n, |k, _| {
            got.insert(*k);
        });
        let expected: BTreeSet<usize> = filters
            .iter()
            .enumerate()
            .filter(|(_, f)| filter_matches(f, n))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(got, expected, "trie vs reference for {n:?}");
    }
    for f in &filters {
        let got: BTreeSet<String> = retained
            .matching(f)
            .into_iter()
            .map(|m| m.topic.to_string())
            .collect();
        let expected: BTreeSet<String> = names
            .iter()
            .filter(|n| filter_matches(f, n))
            .cloned()
            .collect();
        assert_eq!(got, expected, "retained store vs reference for {f:?}");
        for g in &filters {
            let both = names
                .iter()
                .any(|n| filter_matches(f, n) && filter_matches(g, n));
            if both {
                assert!(
                    mqtt_broker::auth::acl::filters_overlap(f, g),
                    "{f:?} and {g:?} share a name but do not overlap"
                );
            }
            if mqtt_broker::auth::acl::filter_is_subset(f, g) {
                for n in names.iter().filter(|n| filter_matches(f, n)) {
                    assert!(filter_matches(g, n), "{f:?} ⊆ {g:?} but {n:?} escapes");
                }
            }
        }
    }
    for (i, f) in filters.iter().enumerate() {
        assert!(
            trie.remove(f, &i).is_some(),
            "inserted {f:?} is found again"
        );
    }
    assert!(trie.is_empty(), "removing every filter empties the trie");
}

// ---------------------------------------------------------------------------------------------
// config: the YAML config loader and the Mosquitto password and ACL file parsers
// ---------------------------------------------------------------------------------------------

/// Byte 0 picks the loader; the rest is the file text. An accepted config must print
/// (`--check-config`) as YAML that loads back to the same effective config.
pub fn config(data: &[u8]) {
    let [sel, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let path = Path::new("fuzz.yaml");
    match sel % 4 {
        0 | 1 => match mqtt_broker::Config::parse(text, path) {
            Ok(c) => {
                let yaml = c.to_yaml();
                let again = mqtt_broker::Config::parse(&yaml, path)
                    .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{yaml}"));
                let mut expected = c.clone();
                expected.listeners = c.effective_listeners();
                assert_eq!(again, expected, "printed config differs:\n{yaml}");
                // Not `Broker::check`: it reads the files a config names, and a fuzzed
                // config may name /dev/zero.
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("fuzz.yaml"), "error names the file: {msg}");
            }
        },
        2 => {
            if let Ok(acl) = mqtt_broker::auth::acl::AclFile::parse(text, path) {
                use mqtt_broker::auth::acl::Access;
                for line in text.lines().take(8) {
                    let word = line.rsplit(' ').next().unwrap_or("");
                    for user in [None, Some("alice"), Some(word)] {
                        let _ = acl.check_topic(user, word, Access::Read, word);
                        let _ = acl.check_topic(user, "c", Access::Write, word);
                        let _ = acl.check_subscribe(user, word, word);
                    }
                }
            }
        }
        _ => {
            let _ = mqtt_broker::auth::password::PasswordFile::parse(text, path);
            let _ = mqtt_broker::config::parse_duration(text);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// session: a sequence of arbitrary packets and events fed to one session state machine
// ---------------------------------------------------------------------------------------------

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte().unwrap_or(0), self.byte().unwrap_or(1)])
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// Message numbers are carried in the topic (`m/N`): PUBREC clears the payload.
fn msg_id(topic: &str) -> u32 {
    topic
        .strip_prefix("m/")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("foreign topic {topic:?} in the session output"))
}

type Snapshot = Vec<(u16, u32, OutboundState)>;

fn snapshot(s: &Session) -> Snapshot {
    s.inflight()
        .map(|f| (f.pid, msg_id(&f.message.topic), f.state))
        .collect()
}

/// What the model expects of the session.
#[derive(Default)]
struct Model {
    next_id: u32,
    /// QoS 1/2 messages the session accepted, by id.
    accepted: BTreeMap<u32, QoS>,
    /// How often each message left the AwaitPubAck/AwaitPubRec state (delivered).
    completed: BTreeMap<u32, u32>,
    /// Messages sent for the first time (DUP=0).
    first_sent: HashSet<u32>,
    /// The last of them: ids grow in queue order, so first sends must too.
    last_first_sent: Option<u32>,
    /// Every message id the session took.
    enqueued: HashSet<u32>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    inbound: HashSet<u16>,
    online: bool,
    window: usize,
    /// The largest queue_limit in force so far (a reload never drops queued messages).
    queue_bound: usize,
    retained_enqueued: usize,
}

/// Checks one step: `before` is the inflight window before it, `out` what it emitted.
fn check_step(s: &Session, m: &mut Model, before: &Snapshot, out: &[Packet]) {
    let after = snapshot(s);
    let pids: HashSet<u16> = after.iter().map(|f| f.0).collect();
    assert_eq!(pids.len(), after.len(), "inflight packet ids are unique");
    assert!(!pids.contains(&0), "[MQTT-2.3.1-1] no packet id 0");
    if after.len() > before.len() {
        assert!(after.len() <= m.window, "inflight window exceeded");
    }
    assert!(
        s.queued() <= m.queue_bound + m.retained_enqueued,
        "queue exceeds its limit"
    );
    for (pid, id, state) in before {
        let now = after.iter().find(|f| f.0 == *pid);
        let delivered = match (state, now) {
            (OutboundState::AwaitPubAck, None) => true,
            (OutboundState::AwaitPubRec, Some(n)) => n.2 == OutboundState::AwaitPubComp,
            (OutboundState::AwaitPubRec, None) => panic!("QoS 2 message {id} vanished"),
            (_, Some(n)) => {
                assert_eq!(n.1, *id, "an inflight pid changed message");
                false
            }
            (OutboundState::AwaitPubComp, None) => false,
        };
        if delivered {
            let n = m.completed.entry(*id).or_default();
            *n += 1;
            assert!(*n <= 1, "message {id} delivered {n} times");
        }
    }
    for p in out {
        let Packet::Publish(p) = p else { continue };
        assert!(m.online, "PUBLISH emitted while offline");
        let id = msg_id(&p.topic);
        assert_eq!(p.pid.is_some(), p.qos != QoS::AtMostOnce);
        if p.dup {
            // A re-send is of a message still awaiting PUBACK/PUBREC [MQTT-4.4.0-1].
            let pid = p.pid.expect("DUP only with QoS > 0");
            assert!(
                before
                    .iter()
                    .chain(after.iter())
                    .any(|f| f.0 == pid && f.1 == id && f.2 != OutboundState::AwaitPubComp),
                "DUP PUBLISH of a message not awaiting acknowledgement"
            );
        } else {
            assert!(
                m.enqueued.contains(&id),
                "message {id} sent but never enqueued"
            );
            assert!(m.first_sent.insert(id), "message {id} first-sent twice");
            // First transmissions follow queue order (QoS 0 dropped offline leave gaps).
            assert!(
                m.last_first_sent < Some(id),
                "message {id} sent out of order"
            );
            m.last_first_sent = Some(id);
            if let Some(pid) = p.pid {
                assert!(
                    after.iter().any(|f| f.0 == pid && f.1 == id),
                    "sent QoS>0 PUBLISH not tracked in the window"
                );
            }
        }
    }
}

/// Small limits from one byte. Other limits (if any) keep their defaults, so the harness
/// does not need to change when the session gains one.
fn limits_from(b: u8, mut limits: SessionLimits) -> SessionLimits {
    limits.inflight_window = 1 + usize::from(b & 3);
    limits.queue_limit = 1 + usize::from((b >> 2) & 7);
    limits.queue_qos0_offline = b & 0x20 != 0;
    limits
}

/// Bytes drive events: connect, disconnect, enqueue at a QoS, enqueue a retained message,
/// acknowledge an inflight message correctly, decode and handle an arbitrary packet (as the
/// connection task would), acknowledge an arbitrary packet id, drain, change the limits.
/// After each step the session must match the model; at the end, after the client
/// acknowledges everything, every accepted QoS 1/2 message must have been delivered exactly
/// once.
pub fn session(data: &[u8]) {
    let mut input = Input(data);
    let mut limits = limits_from(input.byte().unwrap_or(0), SessionLimits::default());
    let mut s = Session::new("fuzz".into(), false, limits);
    let mut m = Model {
        window: limits.inflight_window,
        queue_bound: limits.queue_limit,
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 2_000 {
            break;
        }
        out.clear();
        let before = snapshot(&s);
        match op % 11 {
            0 => {
                s.connect(&mut out);
                m.online = true;
                // Unacknowledged messages are re-sent first, in order [MQTT-4.4.0-1].
                assert!(
                    out.len() >= before.len(),
                    "every inflight message is re-sent"
                );
                for (f, p) in before.iter().zip(out.iter()) {
                    match (f.2, p) {
                        (OutboundState::AwaitPubComp, Packet::PubRel(pid)) => {
                            assert_eq!(*pid, f.0)
                        }
                        (_, Packet::Publish(p)) => {
                            assert!(p.dup && p.pid == Some(f.0));
                        }
                        other => panic!("unexpected resend {other:?}"),
                    }
                }
            }
            1 => {
                s.disconnect();
                m.online = false;
            }
            2 | 3 => {
                let qos = QoS::from_u8(input.byte().unwrap_or(1) % 3).unwrap_or(QoS::AtLeastOnce);
                let id = m.next_id;
                m.next_id += 1;
                let full = s.queued() >= limits.queue_limit;
                let msg = Message::new(&format!("m/{id}"), Bytes::from_static(b"x"), qos, false);
                match s.enqueue(msg) {
                    Ok(()) => {
                        assert!(!full, "accepted beyond queue_limit");
                        m.enqueued.insert(id);
                        if qos != QoS::AtMostOnce {
                            m.accepted.insert(id, qos);
                        }
                    }
                    Err(DropReason::QueueFull) => assert!(full),
                    Err(DropReason::Qos0Offline) => {
                        assert!(!m.online && qos == QoS::AtMostOnce && !limits.queue_qos0_offline)
                    }
                    // Any other reason is unexpected for these one-byte messages.
                    #[allow(unreachable_patterns)]
                    Err(other) => panic!("message dropped: {other:?}"),
                }
                // The connection drains after being woken.
                s.drain(&mut out);
            }
            4 => {
                let qos = QoS::from_u8(input.byte().unwrap_or(2) % 3).unwrap_or(QoS::ExactlyOnce);
                let id = m.next_id;
                m.next_id += 1;
                s.enqueue_retained(Message::new(
                    &format!("m/{id}"),
                    Bytes::from_static(b"r"),
                    qos,
                    true,
                ));
                m.retained_enqueued += 1;
                m.enqueued.insert(id);
                if qos != QoS::AtMostOnce {
                    m.accepted.insert(id, qos);
                }
                s.drain(&mut out);
            }
            5 | 6 => {
                if !before.is_empty() {
                    let k = usize::from(input.byte().unwrap_or(0)) % before.len();
                    ack_correctly(&mut s, before[k], &mut out);
                }
            }
            7 => {
                let len = usize::from(input.byte().unwrap_or(0));
                let mut buf = BytesMut::from(input.take(len));
                if let Ok(Some(p)) = decode(&mut buf, usize::MAX) {
                    handle_packet(&mut s, &mut m, &before, p, &mut out);
                }
            }
            8 => {
                let kind = input.byte().unwrap_or(0);
                let pid = input.u16();
                if pid != 0 {
                    let p = match kind % 5 {
                        0 => Packet::PubAck(pid),
                        1 => Packet::PubRec(pid),
                        2 => Packet::PubComp(pid),
                        3 => Packet::PubRel(pid),
                        _ => Packet::Publish(mqtt_broker::protocol::Publish {
                            properties: None,
                            dup: kind & 0x10 != 0,
                            qos: QoS::ExactlyOnce,
                            retain: false,
                            topic: "in".into(),
                            pid: Some(pid),
                            payload: Bytes::new(),
                        }),
                    };
                    handle_packet(&mut s, &mut m, &before, p, &mut out);
                }
            }
            9 => s.drain(&mut out),
            _ => {
                // A reload changes the limits; nothing queued is dropped by it.
                let queued = s.queued();
                limits = limits_from(input.byte().unwrap_or(0), limits);
                s.set_limits(limits);
                m.window = limits.inflight_window;
                m.queue_bound = m.queue_bound.max(limits.queue_limit);
                assert_eq!(s.queued(), queued);
            }
        }
        if !m.online {
            assert!(
                !out.iter().any(|p| matches!(p, Packet::Publish(_))),
                "nothing is sent while offline"
            );
        }
        check_step(&s, &mut m, &before, &out);
    }

    // The client comes back and acknowledges everything; nothing may be lost or doubled.
    out.clear();
    let before = snapshot(&s);
    s.connect(&mut out);
    m.online = true;
    check_step(&s, &mut m, &before, &out);
    let bound = 4 * (m.next_id as usize + 8);
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < bound, "the session does not settle");
        out.clear();
        let before = snapshot(&s);
        if let Some(first) = before.first().copied() {
            ack_correctly(&mut s, first, &mut out);
        } else if s.has_sendable() {
            s.drain(&mut out);
        } else {
            break;
        }
        check_step(&s, &mut m, &before, &out);
    }
    assert_eq!(s.queued(), 0, "queue drained");
    for (id, qos) in &m.accepted {
        assert_eq!(
            m.completed.get(id).copied().unwrap_or(0),
            1,
            "QoS {qos:?} message {id} lost or duplicated"
        );
    }
}

/// Sends the acknowledgement the protocol expects for an inflight entry.
fn ack_correctly(s: &mut Session, f: (u16, u32, OutboundState), out: &mut Vec<Packet>) {
    let known = match f.2 {
        OutboundState::AwaitPubAck => s.puback(f.0, out),
        OutboundState::AwaitPubRec => s.pubrec(f.0, out),
        OutboundState::AwaitPubComp => s.pubcomp(f.0, out),
    };
    assert_eq!(
        known,
        Ok(true),
        "a correct acknowledgement was not recognised"
    );
}

/// Handles a packet the way the connection task does (session-level effects only).
fn handle_packet(
    s: &mut Session,
    m: &mut Model,
    before: &Snapshot,
    p: Packet,
    out: &mut Vec<Packet>,
) {
    let has = |pid: u16, st: OutboundState| before.iter().any(|f| f.0 == pid && f.2 == st);
    let inflight = |pid: u16| before.iter().any(|f| f.0 == pid);
    match p {
        // An acknowledgement of the wrong kind for an inflight id is refused and changes
        // nothing (the connection closes) [MQTT-4.8.0-1]; an unknown id is ignored.
        Packet::PubAck(pid) => {
            let expected = if has(pid, OutboundState::AwaitPubAck) {
                Ok(true)
            } else if inflight(pid) {
                Err(())
            } else {
                Ok(false)
            };
            assert_eq!(s.puback(pid, out).map_err(|_| ()), expected);
        }
        Packet::PubRec(pid) => {
            let known =
                has(pid, OutboundState::AwaitPubRec) || has(pid, OutboundState::AwaitPubComp);
            if has(pid, OutboundState::AwaitPubAck) {
                assert!(s.pubrec(pid, out).is_err());
            } else {
                assert_eq!(s.pubrec(pid, out), Ok(known));
                // PUBREL answers even an unknown id, so the client can finish [MQTT-4.3.3-1].
                assert_eq!(out.last(), Some(&Packet::PubRel(pid)));
            }
        }
        Packet::PubComp(pid) => {
            let expected = if has(pid, OutboundState::AwaitPubComp) {
                Ok(true)
            } else if inflight(pid) {
                Err(())
            } else {
                Ok(false)
            };
            assert_eq!(s.pubcomp(pid, out).map_err(|_| ()), expected);
        }
        Packet::PubRel(pid) => {
            s.pubrel(pid, out);
            m.inbound.remove(&pid);
            assert_eq!(out.last(), Some(&Packet::PubComp(pid)), "[MQTT-4.3.3-2]");
        }
        Packet::Publish(p) if p.qos == QoS::ExactlyOnce => {
            let pid = p.pid.expect("QoS 2 has a pid");
            let expected = if m.inbound.insert(pid) {
                InboundQos2::New
            } else {
                InboundQos2::Duplicate
            };
            assert_eq!(s.inbound_qos2(pid), expected, "inbound QoS 2 exactly once");
            assert_eq!(s.inbound_qos2_pending(), m.inbound.len());
        }
        Packet::Subscribe(sub) => {
            for (f, q) in sub.filters {
                s.subscriptions
                    .insert(f, mqtt_broker::model::Subscription::qos(q));
            }
        }
        Packet::Unsubscribe(u) => {
            for f in &u.filters {
                s.subscriptions.remove(f);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds: valid packets and inputs that start each target somewhere meaningful
// ---------------------------------------------------------------------------------------------

fn valid_packets() -> Vec<Packet> {
    use mqtt_broker::protocol::*;
    let connect = |will: bool, user: bool| {
        Packet::Connect(Box::new(Connect {
            bridge: false,
            properties: None,
            protocol: ProtocolLevel::V311,
            clean_session: true,
            keep_alive: 60,
            client_id: "sensor-1".into(),
            will: will.then(|| LastWill {
                properties: None,
                topic: "status/sensor-1".into(),
                payload: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: user.then(|| "alice".into()),
            password: user.then(|| Bytes::from_static(b"secret")),
        }))
    };
    let publish = |qos: QoS, pid: Option<u16>, retain: bool| {
        Packet::Publish(Publish {
            properties: None,
            dup: false,
            qos,
            retain,
            topic: "sensors/kitchen/temp".into(),
            pid,
            payload: Bytes::from_static(b"21.5"),
        })
    };
    vec![
        connect(false, false),
        connect(true, true),
        Packet::ConnAck(ConnAck {
            properties: None,
            reason_code: None,
            session_present: true,
            code: ConnectReturnCode::Accepted,
        }),
        publish(QoS::AtMostOnce, None, false),
        publish(QoS::AtLeastOnce, Some(1), true),
        publish(QoS::ExactlyOnce, Some(2), false),
        Packet::PubAck(1),
        Packet::PubRec(2),
        Packet::PubRel(2),
        Packet::PubComp(2),
        Packet::Subscribe(Subscribe {
            options: Vec::new(),
            properties: None,
            pid: 3,
            filters: vec![
                ("sensors/+/temp".into(), QoS::ExactlyOnce),
                ("status/#".into(), QoS::AtLeastOnce),
            ],
        }),
        Packet::SubAck(SubAck {
            properties: None,
            pid: 3,
            codes: vec![SubAckCode::Granted(QoS::ExactlyOnce), SubAckCode::Failure],
        }),
        Packet::Unsubscribe(Unsubscribe {
            properties: None,
            pid: 4,
            filters: vec!["status/#".into()],
        }),
        Packet::UnsubAck(mqtt_broker::protocol::UnsubAck::new(4)),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect,
    ]
}

/// One valid packet of each MQTT 5 kind, with properties where the packet takes them.
fn valid_v5_packets() -> Vec<Packet> {
    use mqtt_broker::protocol::*;
    use std::sync::Arc;
    let user = |k: &str, v: &str| (k.into(), v.into());
    let publish = |qos: QoS, pid: Option<u16>, topic: &str, properties: Properties| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            pid,
            payload: Bytes::from_static(b"21.5"),
            properties: Some(Arc::new(properties)),
        })
    };
    let reason_string = |s: &str| {
        Some(Box::new(Properties {
            reason_string: Some(s.into()),
            user_properties: vec![user("trace", "1")],
            ..Properties::default()
        }))
    };
    vec![
        Packet::Connect(Box::new(Connect {
            bridge: false,
            protocol: ProtocolLevel::V5,
            clean_session: true,
            keep_alive: 60,
            client_id: "sensor-1".into(),
            will: Some(LastWill {
                topic: "status/sensor-1".into(),
                payload: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Some(Box::new(Properties {
                    will_delay_interval: Some(30),
                    payload_format_indicator: Some(1),
                    content_type: Some("text/plain".into()),
                    ..Properties::default()
                })),
            }),
            username: None,
            // MQTT 5 allows a password without a user name.
            password: Some(Bytes::from_static(b"token")),
            properties: Some(Box::new(Properties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(20),
                maximum_packet_size: Some(65536),
                topic_alias_maximum: Some(10),
                request_problem_information: Some(1),
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
                user_properties: vec![user("site", "kitchen")],
                ..Properties::default()
            })),
        })),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted,
            reason_code: Some(reason::SUCCESS),
            properties: Some(Box::new(Properties {
                assigned_client_identifier: Some("auto-1".into()),
                server_keep_alive: Some(30),
                topic_alias_maximum: Some(10),
                maximum_qos: Some(1),
                retain_available: Some(1),
                wildcard_subscription_available: Some(1),
                subscription_identifier_available: Some(1),
                shared_subscription_available: Some(0),
                ..Properties::default()
            })),
        }),
        publish(
            QoS::AtLeastOnce,
            Some(1),
            "sensors/kitchen/temp",
            Properties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(120),
                content_type: Some("text/plain".into()),
                response_topic: Some("replies/sensor-1".into()),
                correlation_data: Some(Bytes::from_static(b"req-7")),
                topic_alias: Some(3),
                user_properties: vec![user("a", "1"), user("b", "2"), user("a", "3")],
                ..Properties::default()
            },
        ),
        // Outbound: several subscription identifiers; inbound: a topic alias alone.
        publish(
            QoS::ExactlyOnce,
            Some(2),
            "sensors/kitchen/temp",
            Properties {
                subscription_identifiers: vec![1, 300, 268_435_455],
                ..Properties::default()
            },
        ),
        publish(
            QoS::AtMostOnce,
            None,
            "",
            Properties {
                topic_alias: Some(3),
                ..Properties::default()
            },
        ),
        Packet::Ack(Ack {
            kind: AckKind::PubAck,
            pid: 1,
            reason: reason::NO_MATCHING_SUBSCRIBERS,
            properties: None,
        }),
        Packet::Ack(Ack {
            kind: AckKind::PubRec,
            pid: 2,
            reason: reason::QUOTA_EXCEEDED,
            properties: reason_string("quota"),
        }),
        Packet::Ack(Ack {
            kind: AckKind::PubRel,
            pid: 2,
            reason: reason::PACKET_IDENTIFIER_NOT_FOUND,
            properties: None,
        }),
        Packet::Ack(Ack {
            kind: AckKind::PubComp,
            pid: 2,
            reason: reason::SUCCESS,
            properties: reason_string("done"),
        }),
        Packet::Subscribe(Subscribe {
            pid: 3,
            filters: vec![
                ("sensors/+/temp".into(), QoS::ExactlyOnce),
                ("status/#".into(), QoS::AtLeastOnce),
            ],
            options: vec![
                SubscriptionOptions {
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendIfNew,
                },
                SubscriptionOptions {
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::DoNotSend,
                },
            ],
            properties: Some(Box::new(Properties {
                subscription_identifiers: vec![300],
                user_properties: vec![user("k", "v")],
                ..Properties::default()
            })),
        }),
        Packet::SubAck(SubAck {
            pid: 3,
            codes: vec![
                SubAckCode::Granted(QoS::ExactlyOnce),
                SubAckCode::Refused(reason::NOT_AUTHORIZED),
                SubAckCode::Failure,
            ],
            properties: reason_string("acl"),
        }),
        Packet::Unsubscribe(Unsubscribe {
            pid: 4,
            filters: vec!["status/#".into(), "nothing/here".into()],
            properties: Some(Box::new(Properties {
                user_properties: vec![user("k", "v")],
                ..Properties::default()
            })),
        }),
        Packet::UnsubAck(UnsubAck {
            pid: 4,
            codes: vec![reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED],
            properties: None,
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::DisconnectWithReason(Disconnect {
            reason: reason::DISCONNECT_WITH_WILL,
            properties: Some(Box::new(Properties {
                session_expiry_interval: Some(0),
                reason_string: Some("bye".into()),
                ..Properties::default()
            })),
        }),
        Packet::DisconnectWithReason(Disconnect {
            reason: reason::SERVER_MOVED,
            properties: Some(Box::new(Properties {
                server_reference: Some("other.example:1883".into()),
                ..Properties::default()
            })),
        }),
        Packet::Disconnect,
        Packet::Auth(Auth {
            reason: reason::CONTINUE_AUTHENTICATION,
            properties: Some(Box::new(Properties {
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"server-first")),
                ..Properties::default()
            })),
        }),
    ]
}

fn encoded(p: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, &mut out);
    out.to_vec()
}

fn encoded_v5(p: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_with(p, ProtocolLevel::V5, &mut out);
    out.to_vec()
}

/// The seed corpus of `target`, as (file name, bytes).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let packets = valid_packets();
    let mut seeds = Vec::new();
    match target {
        "decode_stream" => {
            for (i, p) in packets.iter().enumerate() {
                let mut s = vec![0u8, i as u8];
                s.extend(encoded(p));
                seeds.push((format!("packet-{i:02}-{}", p.name().to_lowercase()), s));
            }
            // A whole client session as one stream, with each maximum-size selector.
            for sel in 0..4u8 {
                let mut s = vec![sel, 7];
                for p in &packets {
                    s.extend(encoded(p));
                }
                seeds.push((format!("stream-max{sel}"), s));
            }
        }
        "decode_v5" => {
            // The same layout as decode_stream's seeds, with MQTT 5 packets.
            let packets = valid_v5_packets();
            for (i, p) in packets.iter().enumerate() {
                let mut s = vec![0u8, i as u8];
                s.extend(encoded_v5(p));
                seeds.push((format!("packet-{i:02}-{}", p.name().to_lowercase()), s));
            }
            for sel in 0..4u8 {
                let mut s = vec![sel, 7];
                for p in &packets {
                    s.extend(encoded_v5(p));
                }
                seeds.push((format!("stream-max{sel}"), s));
            }
        }
        "topics" => {
            let lists = [
                "sport/tennis/player1\nsport/tennis/player1/#\nsport/#\nsport/tennis/+\n+/+\n/+\n#",
                "$SYS/broker/load\n$SYS/#\n#\n+/broker/load\n+\n/finance\n+/+",
                "a/b/c\na/+/c\na/#\n+/b/#\na//c\n/\n//",
                "sensors/kitchen/temp\nsensors/+/temp\nsensors/#\nsensors/kitchen/#",
            ];
            for (i, l) in lists.iter().enumerate() {
                seeds.push((format!("list-{i}"), l.as_bytes().to_vec()));
            }
        }
        "config" => {
            let example = include_str!("../../config/broker.yaml");
            let mut s = vec![0u8];
            s.extend(example.as_bytes());
            seeds.push(("broker-yaml".into(), s));
            let snippets = [
                "server:\n  port: 1883\n  max_connections: 10\n  connect_timeout: 500ms\n  max_packet_size: 65536\n",
                "listeners:\n  - bind: 127.0.0.1:0\n    protocol: tcp\n  - bind: 127.0.0.1:0\n    protocol: ws\n    path: /mqtt\n",
                "security:\n  allow_anonymous: false\n  acl:\n    - allow: publish\n      topic: sensors/#\n      user: alice\n  acl_default: deny\n",
                "performance:\n  messageQueueLimit: 10\n  inflightWindowSize: 2\n  queue_qos0_offline: true\npersistence:\n  retained_message_limit: 5\nlog:\n  level: debug\n  format: json\n",
            ];
            for (i, y) in snippets.iter().enumerate() {
                let mut s = vec![1u8];
                s.extend(y.as_bytes());
                seeds.push((format!("yaml-{i}"), s));
            }
            let acl = "# comment\ntopic read $SYS/#\nuser alice\ntopic readwrite sensors/#\ntopic deny sensors/secret\npattern write devices/%c/#\npattern read users/%u/#\n";
            let mut s = vec![2u8];
            s.extend(acl.as_bytes());
            seeds.push(("acl-file".into(), s));
            let passwd = "alice:$6$c2FsdA==$dGVzdA==\nbob:$7$101$c2FsdHNhbHQ=$aGFzaA==\n";
            let mut s = vec![3u8];
            s.extend(passwd.as_bytes());
            seeds.push(("password-file".into(), s));
        }
        "session" => {
            // limits, connect, enqueue QoS 1/2/0, retained, ack, packets from the wire.
            let mut s = vec![0x2d, 0, 2, 1, 2, 2, 3, 0, 4, 2, 5, 0, 6, 0, 1, 0, 9];
            for p in [
                Packet::PubAck(1),
                Packet::PubRec(2),
                Packet::PubComp(2),
                Packet::PubRel(9),
            ] {
                let e = encoded(&p);
                s.push(7);
                s.push(e.len() as u8);
                s.extend(e);
            }
            let qos2_in = encoded(&Packet::Publish(mqtt_broker::protocol::Publish {
                properties: None,
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "in".into(),
                pid: Some(9),
                payload: Bytes::from_static(b"x"),
            }));
            s.push(7);
            s.push(qos2_in.len() as u8);
            s.extend(qos2_in);
            s.extend([8, 3, 0, 9, 1, 0, 2, 2, 2, 2, 10, 0x07, 0, 5, 0]);
            seeds.push(("mixed".into(), s));
            seeds.push((
                "reconnect-midflow".into(),
                vec![0x01, 0, 2, 2, 2, 2, 2, 1, 5, 0, 1, 0, 6, 0, 6, 0, 1, 0],
            ));
        }
        other => panic!("unknown fuzz target {other}"),
    }
    seeds
}
