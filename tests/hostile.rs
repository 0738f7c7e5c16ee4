//! Hostile clients over raw sockets: malformed packets, protocol abuse, huge topics, huge
//! subscription sets, clients that stop reading and peers that stall in a handshake.
//!
//! For every case the suite checks what issue 9 asks of the broker: only the offending
//! connection is closed (or refused), a log line names its peer and the reason, nothing it
//! held (connection, session, queue, task) outlives it, and a well-behaved publisher and
//! subscriber connected beside it keep exchanging QoS 2 messages the whole time, in order,
//! without loss or duplication.
//!
//! Logs are captured in-process: the broker runs inside the test binary, so a global
//! `tracing` subscriber writing into a buffer sees every line it logs, and each line
//! carries the peer address the test knows from its own socket.

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use mqtt_broker::config::{ConfigDuration, ListenerConfig, TransportKind};
use mqtt_broker::protocol::*;
use mqtt_broker::BrokerHandle;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Log capture
// ---------------------------------------------------------------------------------------------

/// Waits until a log line about `peer` contains `needle`; returns that line.
async fn expect_log(peer: SocketAddr, needle: &str) -> String {
    let tag = format!("peer={peer} ");
    let deadline = Instant::now() + WAIT;
    loop {
        {
            let logs = log_buffer().lock().unwrap_or_else(|e| e.into_inner());
            let text = String::from_utf8_lossy(&logs);
            if let Some(line) = text
                .lines()
                .find(|l| l.contains(&tag) && l.contains(needle))
            {
                return line.to_string();
            }
        }
        if Instant::now() > deadline {
            let logs = log_buffer().lock().unwrap_or_else(|e| e.into_inner());
            let text = String::from_utf8_lossy(&logs);
            let about: Vec<&str> = text.lines().filter(|l| l.contains(&tag)).collect();
            panic!("no log line for {peer} containing {needle:?}; lines about it: {about:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The well-behaved neighbours
// ---------------------------------------------------------------------------------------------

/// A publisher and a subscriber exchanging numbered QoS 2 messages in a background task.
/// Any loss, duplicate, reordering, stall (5 s) or disconnect panics that task.
struct Bystander {
    progress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

impl Bystander {
    const CLIENTS: u64 = 2;

    async fn start(addr: SocketAddr) -> Bystander {
        // With a user name, so that they also pass where anonymous clients are refused.
        let named = |id: &str| Connect {
            username: Some("bystander".into()),
            ..connect_packet(id, true)
        };
        let (mut publ, a) = RawClient::connect_with(addr, named("bystander-pub")).await;
        let (mut sub, b) = RawClient::connect_with(addr, named("bystander-sub")).await;
        assert_eq!(
            (a.code, b.code),
            (ConnectReturnCode::Accepted, ConnectReturnCode::Accepted)
        );
        let codes = sub
            .subscribe(1, &[("bystander/flow", QoS::ExactlyOnce)])
            .await;
        assert_eq!(codes, vec![SubAckCode::Granted(QoS::ExactlyOnce)]);
        let progress = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (progress.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                seq += 1;
                let pid = (seq % 65_535 + 1) as u16;
                publ.publish_qos2("bystander/flow", &seq.to_be_bytes(), pid)
                    .await;
                let got = sub.receive_qos2().await;
                assert_eq!(
                    &got.payload[..],
                    &seq.to_be_bytes(),
                    "bystander message lost, duplicated or reordered"
                );
                p.store(seq, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Still connected at the end: a ping round trip on both.
            for c in [&mut publ, &mut sub] {
                c.send(&Packet::PingReq).await;
                assert_eq!(c.recv().await, Some(Packet::PingResp));
            }
            seq
        });
        let b = Bystander {
            progress,
            stop,
            task,
        };
        b.assert_progress().await;
        b
    }

    /// Waits for a few more completed exchanges.
    async fn assert_progress(&self) {
        let start = self.progress.load(Ordering::Relaxed);
        let deadline = Instant::now() + WAIT;
        while self.progress.load(Ordering::Relaxed) < start + 3 {
            assert!(
                !self.task.is_finished(),
                "the bystander task ended (panicked?)"
            );
            assert!(
                Instant::now() < deadline,
                "bystander QoS 2 exchange stalled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the exchange and returns how many messages went through.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.await {
            Ok(n) => n,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// What the bystander subscriber may have queued at any instant (it receives one message at
/// a time): `stats().messages.queued` sums every session, so bounds on an offender's queue
/// allow for it.
const BYSTANDER_QUEUE: u64 = 1;

/// Waits until only the bystanders remain: no connection or session of an offender is left.
async fn expect_only_bystanders(broker: &BrokerHandle) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = broker.stats();
        if s.connections.total == Bystander::CLIENTS
            && s.sessions.total == Bystander::CLIENTS
            && s.messages.queued == 0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "offender state left behind: {:?}",
            (s.connections, s.sessions, s.messages.queued)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Packet builders for bytes the codec would never produce
// ---------------------------------------------------------------------------------------------

/// A length-prefixed UTF-8 string field (any bytes).
fn s(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// A packet: first byte, remaining length, body.
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(first);
    mqtt_broker::protocol::codec::put_remaining_length(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

/// CONNECT with a given protocol name, level, flags and payload fields (already encoded).
fn connect_raw(name: &[u8], level: u8, flags: u8, fields: &[Vec<u8>]) -> Vec<u8> {
    let mut body = s(name);
    body.extend([level, flags, 0, 60]);
    for f in fields {
        body.extend_from_slice(f);
    }
    pkt(0x10, &body)
}

/// CONNECT 3.1.1 with clean session and the given client id bytes.
fn connect_id(id: &[u8]) -> Vec<u8> {
    connect_raw(b"MQTT", 4, 0x02, &[s(id)])
}

/// PUBLISH with a raw first byte, topic bytes and optional packet id.
fn publish_raw(first: u8, topic: &[u8], pid: Option<u16>) -> Vec<u8> {
    let mut body = s(topic);
    if let Some(pid) = pid {
        body.extend(pid.to_be_bytes());
    }
    body.extend_from_slice(b"payload");
    pkt(first, &body)
}

/// SUBSCRIBE with a raw first byte and (filter bytes, options byte) pairs.
fn subscribe_raw(first: u8, pid: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for (f, o) in filters {
        body.extend(s(f));
        body.push(*o);
    }
    pkt(first, &body)
}

/// UNSUBSCRIBE with a raw first byte.
fn unsubscribe_raw(first: u8, pid: u16, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for f in filters {
        body.extend(s(f));
    }
    pkt(first, &body)
}

/// Invalid UTF-8: a lone continuation byte pattern [MQTT-1.5.3-1].
const BAD_UTF8: &[u8] = b"a\xc3\x28";
/// UTF-16 surrogate U+D800 encoded in UTF-8, which is ill-formed [MQTT-1.5.3-1].
const SURROGATE: &[u8] = b"\xed\xa0\x80";
/// Overlong encoding of U+0000 (modified UTF-8), ill-formed [MQTT-1.5.3-1].
const OVERLONG_NUL: &[u8] = b"a\xc0\x80";
/// A string containing U+0000 [MQTT-1.5.3-2].
const NUL: &[u8] = b"a\0b";

// ---------------------------------------------------------------------------------------------
// The table of malformed and abusive inputs
// ---------------------------------------------------------------------------------------------

/// When the hostile bytes are sent.
#[derive(Clone, Copy, PartialEq)]
enum When {
    /// As the first bytes of the connection.
    BeforeConnect,
    /// After a valid CONNECT was accepted.
    AfterConnect,
    /// After a valid MQTT 5 CONNECT was accepted: the broker says why in a DISCONNECT with
    /// this reason code before it closes.
    AfterConnectV5(u8),
}

struct Case {
    name: &'static str,
    when: When,
    bytes: Vec<u8>,
    /// What the reason in the log line says.
    log: &'static str,
    /// A packet the broker must send before closing (a refusing CONNACK).
    reply: Option<ConnectReturnCode>,
}

fn case(name: &'static str, when: When, bytes: Vec<u8>, log: &'static str) -> Case {
    Case {
        name,
        when,
        bytes,
        log,
        reply: None,
    }
}

fn cases(max_packet_size: usize) -> Vec<Case> {
    use When::*;
    let will = |topic: &[u8]| {
        connect_raw(
            b"MQTT",
            4,
            0x02 | 0x04 | 0x08,
            &[s(b"hostile-will"), s(topic), s(b"gone")],
        )
    };
    let user = |name: &[u8]| connect_raw(b"MQTT", 4, 0x82, &[s(b"hostile-user"), s(name)]);
    let valid_connect = connect_id(b"second");
    // MQTT 5 PUBLISH (QoS 0) to `topic` with raw property bytes.
    let publish5 = |topic: &[u8], props: &[u8]| {
        let mut body = s(topic);
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(b"payload");
        pkt(0x30, &body)
    };
    // Receive Maximum (1024 by default) + 1 QoS 2 PUBLISHes without PUBREL.
    let over_receive_maximum: Vec<u8> = (1..=1025u16)
        .flat_map(|pid| {
            let mut body = s(b"q");
            body.extend(pid.to_be_bytes());
            body.push(0);
            pkt(0x34, &body)
        })
        .collect();
    let mut v = vec![
        // --- MQTT 5 ---------------------------------------------------------------------
        case(
            "MQTT 5: AUTH before CONNECT [MQTT-3.1.0-1]",
            BeforeConnect,
            vec![0xf0, 0],
            "invalid packet type 15",
        ),
        case(
            "MQTT 5: a second authentication method in CONNECT (2.2.2.2)",
            BeforeConnect,
            {
                let mut body = s(b"MQTT");
                body.extend([5, 0x02, 0, 60]);
                body.extend([11, 0x15, 0, 3, b'a', b'b', b'c', 0x15, 0, 2, b'd', b'e']);
                body.extend(s(b"two-methods"));
                pkt(0x10, &body)
            },
            "included more than once",
        ),
        case(
            "MQTT 5: topic alias 0 [MQTT-3.3.2-8]",
            AfterConnectV5(0x94),
            publish5(b"t", &[0x23, 0, 0]),
            "topic alias 0 outside",
        ),
        case(
            "MQTT 5: topic alias beyond the maximum [MQTT-3.3.2-9]",
            AfterConnectV5(0x94),
            publish5(b"t", &[0x23, 0xff, 0xff]),
            "topic alias 65535 outside",
        ),
        case(
            "MQTT 5: receive maximum exceeded [MQTT-3.3.4-9]",
            AfterConnectV5(0x93),
            over_receive_maximum,
            "more than Receive Maximum",
        ),
        case(
            "MQTT 5: packet over the maximum packet size (3.1.2.11.4)",
            AfterConnectV5(0x95),
            {
                let mut head = vec![0x30];
                let mut len = BytesMut::new();
                mqtt_broker::protocol::codec::put_remaining_length(&mut len, max_packet_size + 1);
                head.extend_from_slice(&len);
                head
            },
            "packet too large",
        ),
        case(
            "MQTT 5: a property twice in PUBLISH (3.3.2.3)",
            AfterConnectV5(0x82),
            publish5(b"t", &[0x03, 0, 1, b'a', 0x03, 0, 1, b'b']),
            "included more than once",
        ),
        case(
            "MQTT 5: a CONNECT property in PUBLISH (2.2.2.2)",
            AfterConnectV5(0x81),
            publish5(b"t", &[0x11, 0, 0, 0, 10]),
            "is not allowed in PUBLISH",
        ),
        case(
            "MQTT 5: AUTH without an authentication method in CONNECT (4.12)",
            AfterConnectV5(0x82),
            vec![0xf0, 0x01, 0x19],
            "AUTH without an Authentication Method",
        ),
        // --- Before CONNECT -------------------------------------------------------------
        case(
            "PINGREQ before CONNECT [MQTT-3.1.0-1]",
            BeforeConnect,
            vec![0xc0, 0],
            "first packet is not CONNECT",
        ),
        case(
            "PUBLISH before CONNECT [MQTT-3.1.0-1]",
            BeforeConnect,
            publish_raw(0x30, b"t", None),
            "first packet is not CONNECT",
        ),
        case(
            "SUBSCRIBE before CONNECT [MQTT-3.1.0-1]",
            BeforeConnect,
            subscribe_raw(0x82, 1, &[(b"#", 0)]),
            "first packet is not CONNECT",
        ),
        case(
            "DISCONNECT before CONNECT [MQTT-3.1.0-1]",
            BeforeConnect,
            vec![0xe0, 0],
            "first packet is not CONNECT",
        ),
        case(
            "protocol name MQXX [MQTT-3.1.2-1]",
            BeforeConnect,
            connect_raw(b"MQXX", 4, 2, &[s(b"x")]),
            "invalid protocol name",
        ),
        case(
            "protocol name in lower case [MQTT-3.1.2-1]",
            BeforeConnect,
            connect_raw(b"mqtt", 4, 2, &[s(b"x")]),
            "invalid protocol name",
        ),
        case(
            "empty protocol name [MQTT-3.1.2-1]",
            BeforeConnect,
            connect_raw(b"", 4, 2, &[s(b"x")]),
            "invalid protocol name",
        ),
        case(
            "protocol name with U+0000 [MQTT-1.5.3-2]",
            BeforeConnect,
            connect_raw(b"MQ\0TT", 4, 2, &[s(b"x")]),
            "U+0000",
        ),
        case(
            "protocol name not UTF-8 [MQTT-1.5.3-1]",
            BeforeConnect,
            connect_raw(b"\xff\xfe", 4, 2, &[s(b"x")]),
            "not valid UTF-8",
        ),
        case(
            "CONNECT fixed-header flags set [MQTT-2.2.2-2]",
            BeforeConnect,
            {
                let mut c = connect_id(b"x");
                c[0] = 0x11;
                c
            },
            "invalid fixed header flags",
        ),
        case(
            "CONNECT reserved flag [MQTT-3.1.2-3]",
            BeforeConnect,
            connect_raw(b"MQTT", 4, 0x03, &[s(b"x")]),
            "CONNECT reserved flag set",
        ),
        case(
            "will QoS without will flag [MQTT-3.1.2-13]",
            BeforeConnect,
            connect_raw(b"MQTT", 4, 0x0a, &[s(b"x")]),
            "will QoS or retain set without will flag",
        ),
        case(
            "will retain without will flag [MQTT-3.1.2-15]",
            BeforeConnect,
            connect_raw(b"MQTT", 4, 0x22, &[s(b"x")]),
            "will QoS or retain set without will flag",
        ),
        case(
            "will QoS 3 [MQTT-3.1.2-14]",
            BeforeConnect,
            connect_raw(b"MQTT", 4, 0x1e, &[s(b"x"), s(b"w"), s(b"p")]),
            "invalid QoS 3",
        ),
        case(
            "password without user name [MQTT-3.1.2-22]",
            BeforeConnect,
            connect_raw(b"MQTT", 4, 0x42, &[s(b"x"), s(b"pw")]),
            "password flag set without user name flag",
        ),
        case(
            "client id not UTF-8 [MQTT-1.5.3-1]",
            BeforeConnect,
            connect_id(BAD_UTF8),
            "not valid UTF-8",
        ),
        case(
            "client id with a UTF-16 surrogate [MQTT-1.5.3-1]",
            BeforeConnect,
            connect_id(SURROGATE),
            "not valid UTF-8",
        ),
        case(
            "client id with an overlong U+0000 [MQTT-1.5.3-1]",
            BeforeConnect,
            connect_id(OVERLONG_NUL),
            "not valid UTF-8",
        ),
        case(
            "client id with U+0000 [MQTT-1.5.3-2]",
            BeforeConnect,
            connect_id(NUL),
            "U+0000",
        ),
        case(
            "will topic not UTF-8 [MQTT-1.5.3-1]",
            BeforeConnect,
            will(BAD_UTF8),
            "not valid UTF-8",
        ),
        case(
            "will topic with U+0000 [MQTT-1.5.3-2]",
            BeforeConnect,
            will(NUL),
            "U+0000",
        ),
        case(
            "will topic with a wildcard [MQTT-3.3.2-2]",
            BeforeConnect,
            will(b"status/#"),
            "wildcard",
        ),
        case(
            "empty will topic [MQTT-4.7.3-1]",
            BeforeConnect,
            will(b""),
            "topic is empty",
        ),
        case(
            "user name not UTF-8 [MQTT-1.5.3-1]",
            BeforeConnect,
            user(BAD_UTF8),
            "not valid UTF-8",
        ),
        case(
            "user name with U+0000 [MQTT-1.5.3-2]",
            BeforeConnect,
            user(NUL),
            "U+0000",
        ),
        case(
            "CONNECT truncated (length shorter than fields)",
            BeforeConnect,
            pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0]),
            "packet truncated",
        ),
        case(
            "CONNECT with trailing bytes",
            BeforeConnect,
            {
                let mut b = s(b"MQTT");
                b.extend([4, 2, 0, 60]);
                b.extend(s(b"x"));
                b.extend([1, 2, 3]);
                pkt(0x10, &b)
            },
            "unexpected bytes after CONNECT",
        ),
        case(
            "five-byte remaining length before CONNECT",
            BeforeConnect,
            vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x01],
            "malformed remaining length",
        ),
        case(
            "reserved packet type 0 before CONNECT",
            BeforeConnect,
            vec![0x00, 0],
            "invalid packet type 0",
        ),
        case(
            "oversized CONNECT, refused from its header",
            BeforeConnect,
            vec![0x10, 0xff, 0xff, 0xff, 0x7f],
            "packet too large",
        ),
        case(
            "oversized CONNECT, body fully sent",
            BeforeConnect,
            // A well-formed CONNECT whose password alone nearly fills the maximum: the header
            // declares more than max_packet_size and every body byte follows in the same write.
            {
                let password = vec![b'p'; max_packet_size - 8];
                assert!(password.len() <= 65_535, "fits a string field");
                let c = connect_raw(
                    b"MQTT",
                    4,
                    0xc2,
                    &[s(b"big-connect"), s(b"user"), s(&password)],
                );
                assert!(c.len() > max_packet_size);
                c
            },
            "packet too large",
        ),
        // --- After CONNECT --------------------------------------------------------------
        case(
            "second CONNECT [MQTT-3.1.0-2]",
            AfterConnect,
            valid_connect,
            "second CONNECT",
        ),
        case(
            "five-byte remaining length [2.2.3]",
            AfterConnect,
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            "malformed remaining length",
        ),
        case(
            "remaining length of five continuation bytes",
            AfterConnect,
            vec![0xc0, 0x80, 0x80, 0x80, 0x80, 0x80],
            "malformed remaining length",
        ),
        case(
            "oversized PUBLISH, refused from its header",
            AfterConnect,
            pkt(0x30, &vec![b'x'; max_packet_size])[..6].to_vec(),
            "packet too large",
        ),
        case(
            "oversized PUBLISH, body fully sent",
            AfterConnect,
            {
                let mut body = s(b"big/publish");
                body.extend(vec![b'x'; max_packet_size]);
                pkt(0x30, &body)
            },
            "packet too large",
        ),
        case(
            "PUBLISH QoS 3 [MQTT-3.3.1-4]",
            AfterConnect,
            publish_raw(0x36, b"t", Some(1)),
            "invalid QoS 3",
        ),
        case(
            "PUBLISH DUP with QoS 0 [MQTT-3.3.1-2]",
            AfterConnect,
            publish_raw(0x38, b"t", None),
            "DUP set on a QoS 0 PUBLISH",
        ),
        case(
            "'#' in a PUBLISH topic [MQTT-3.3.2-2]",
            AfterConnect,
            publish_raw(0x30, b"a/#", None),
            "wildcard",
        ),
        case(
            "'+' in a PUBLISH topic [MQTT-3.3.2-2]",
            AfterConnect,
            publish_raw(0x32, b"a/+/b", Some(1)),
            "wildcard",
        ),
        case(
            "empty PUBLISH topic [MQTT-4.7.3-1]",
            AfterConnect,
            publish_raw(0x30, b"", None),
            "topic is empty",
        ),
        case(
            "PUBLISH topic not UTF-8 [MQTT-1.5.3-1]",
            AfterConnect,
            publish_raw(0x30, BAD_UTF8, None),
            "not valid UTF-8",
        ),
        case(
            "PUBLISH topic with U+0000 [MQTT-1.5.3-2]",
            AfterConnect,
            publish_raw(0x30, NUL, None),
            "U+0000",
        ),
        case(
            "PUBLISH QoS 1 with packet id 0 [MQTT-2.3.1-1]",
            AfterConnect,
            publish_raw(0x32, b"t", Some(0)),
            "packet identifier 0",
        ),
        case(
            "PUBLISH QoS 2 with packet id 0 [MQTT-2.3.1-1]",
            AfterConnect,
            publish_raw(0x34, b"t", Some(0)),
            "packet identifier 0",
        ),
        case(
            "PUBLISH QoS 1 without room for its packet id",
            AfterConnect,
            pkt(0x32, &s(b"t")),
            "packet truncated",
        ),
        case(
            "SUBSCRIBE with flags 0000 [MQTT-3.8.1-1]",
            AfterConnect,
            subscribe_raw(0x80, 1, &[(b"t", 0)]),
            "invalid fixed header flags",
        ),
        case(
            "SUBSCRIBE with no filters [MQTT-3.8.3-3]",
            AfterConnect,
            pkt(0x82, &[0, 1]),
            "SUBSCRIBE without topic filters",
        ),
        case(
            "SUBSCRIBE '#' not last [MQTT-4.7.1-2]",
            AfterConnect,
            subscribe_raw(0x82, 1, &[(b"a/#/b", 0)]),
            "'#' must be the last",
        ),
        case(
            "SUBSCRIBE '#' not a whole level [MQTT-4.7.1-2]",
            AfterConnect,
            subscribe_raw(0x82, 1, &[(b"a#", 0)]),
            "'#' must be the last",
        ),
        case(
            "SUBSCRIBE '+' not a whole level [MQTT-4.7.1-3]",
            AfterConnect,
            subscribe_raw(0x82, 1, &[(b"a/b+", 0)]),
            "'+' must occupy a whole level",
        ),
        case(
            "SUBSCRIBE empty filter [MQTT-4.7.3-1]",
            AfterConnect,
            subscribe_raw(0x82, 1, &[(b"", 0)]),
            "topic is empty",
        ),
        case(
            "SUBSCRIBE filter not UTF-8 [MQTT-1.5.3-1]",
            AfterConnect,
            subscribe_raw(0x82, 1, &[(BAD_UTF8, 0)]),
            "not valid UTF-8",
        ),
        case(
            "SUBSCRIBE filter with U+0000 [MQTT-1.5.3-2]",
            AfterConnect,
            subscribe_raw(0x82, 1, &[(NUL, 0)]),
            "U+0000",
        ),
        case(
            "SUBSCRIBE requested QoS 3 [MQTT-3.8.3-4]",
            AfterConnect,
            subscribe_raw(0x82, 1, &[(b"t", 3)]),
            "invalid QoS 3",
        ),
        case(
            "SUBSCRIBE reserved option bits [MQTT-3.8.3-4]",
            AfterConnect,
            subscribe_raw(0x82, 1, &[(b"t", 0x41)]),
            "SUBSCRIBE options reserved bits set",
        ),
        case(
            "SUBSCRIBE packet id 0 [MQTT-2.3.1-1]",
            AfterConnect,
            subscribe_raw(0x82, 0, &[(b"t", 0)]),
            "packet identifier 0",
        ),
        case(
            "SUBSCRIBE filter without its options byte",
            AfterConnect,
            pkt(0x82, &[0, 1, 0, 1, b't']),
            "packet truncated",
        ),
        case(
            "one bad filter among good ones [MQTT-4.7.3-1]",
            AfterConnect,
            subscribe_raw(0x82, 1, &[(b"ok/1", 1), (b"", 1), (b"ok/2", 1)]),
            "topic is empty",
        ),
        case(
            "UNSUBSCRIBE with flags 0000 [MQTT-3.10.1-1]",
            AfterConnect,
            unsubscribe_raw(0xa0, 1, &[b"t"]),
            "invalid fixed header flags",
        ),
        case(
            "UNSUBSCRIBE with no filters [MQTT-3.10.3-2]",
            AfterConnect,
            pkt(0xa2, &[0, 1]),
            "UNSUBSCRIBE without topic filters",
        ),
        case(
            "UNSUBSCRIBE empty filter [MQTT-4.7.3-1]",
            AfterConnect,
            unsubscribe_raw(0xa2, 1, &[b""]),
            "topic is empty",
        ),
        case(
            "UNSUBSCRIBE empty filter among good ones [MQTT-4.7.3-1]",
            AfterConnect,
            unsubscribe_raw(0xa2, 1, &[b"ok/1", b"", b"ok/2"]),
            "topic is empty",
        ),
        case(
            "UNSUBSCRIBE filter not UTF-8 [MQTT-1.5.3-1]",
            AfterConnect,
            unsubscribe_raw(0xa2, 1, &[BAD_UTF8]),
            "not valid UTF-8",
        ),
        case(
            "UNSUBSCRIBE filter with U+0000 [MQTT-1.5.3-2]",
            AfterConnect,
            unsubscribe_raw(0xa2, 1, &[NUL]),
            "U+0000",
        ),
        case(
            "UNSUBSCRIBE '#' not last [MQTT-4.7.1-2]",
            AfterConnect,
            unsubscribe_raw(0xa2, 1, &[b"#/a"]),
            "'#' must be the last",
        ),
        case(
            "UNSUBSCRIBE packet id 0 [MQTT-2.3.1-1]",
            AfterConnect,
            unsubscribe_raw(0xa2, 0, &[b"t"]),
            "packet identifier 0",
        ),
        case(
            "PUBREL with flags 0000 [MQTT-3.6.1-1]",
            AfterConnect,
            vec![0x60, 2, 0, 1],
            "invalid fixed header flags",
        ),
        case(
            "PUBREL with flags 0001 [MQTT-3.6.1-1]",
            AfterConnect,
            vec![0x61, 2, 0, 1],
            "invalid fixed header flags",
        ),
        case(
            "PUBREL with flags 0011 [MQTT-3.6.1-1]",
            AfterConnect,
            vec![0x63, 2, 0, 1],
            "invalid fixed header flags",
        ),
        case(
            "PUBREL with flags 0110 [MQTT-3.6.1-1]",
            AfterConnect,
            vec![0x66, 2, 0, 1],
            "invalid fixed header flags",
        ),
        case(
            "PUBREL with DUP-like flags 1010 [MQTT-3.6.1-1]",
            AfterConnect,
            vec![0x6a, 2, 0, 1],
            "invalid fixed header flags",
        ),
        case(
            "PUBREL with flags 1111 [MQTT-3.6.1-1]",
            AfterConnect,
            vec![0x6f, 2, 0, 1],
            "invalid fixed header flags",
        ),
        case(
            "PUBACK with flags set [MQTT-2.2.2-2]",
            AfterConnect,
            vec![0x41, 2, 0, 1],
            "invalid fixed header flags",
        ),
        case(
            "PUBREC with flags set [MQTT-2.2.2-2]",
            AfterConnect,
            vec![0x52, 2, 0, 1],
            "invalid fixed header flags",
        ),
        case(
            "PUBCOMP with flags set [MQTT-2.2.2-2]",
            AfterConnect,
            vec![0x7f, 2, 0, 1],
            "invalid fixed header flags",
        ),
        case(
            "PUBACK packet id 0 [MQTT-2.3.1-1]",
            AfterConnect,
            vec![0x40, 2, 0, 0],
            "packet identifier 0",
        ),
        case(
            "PUBREL packet id 0 [MQTT-2.3.1-1]",
            AfterConnect,
            vec![0x62, 2, 0, 0],
            "packet identifier 0",
        ),
        // [MQTT-2.3.1-1] forbids packet id 0 in PUBLISH (QoS > 0), SUBSCRIBE and UNSUBSCRIBE;
        // an acknowledgement carries the id of the PUBLISH it answers [MQTT-2.3.1-6], so an
        // acknowledgement with id 0 answers no packet that could exist: a protocol violation.
        case(
            "PUBREC packet id 0 [MQTT-2.3.1-1], [MQTT-2.3.1-6]",
            AfterConnect,
            vec![0x50, 2, 0, 0],
            "packet identifier 0",
        ),
        case(
            "PUBCOMP packet id 0 [MQTT-2.3.1-1], [MQTT-2.3.1-6]",
            AfterConnect,
            vec![0x70, 2, 0, 0],
            "packet identifier 0",
        ),
        case(
            "PUBACK with a three-byte body",
            AfterConnect,
            vec![0x40, 3, 0, 1, 9],
            "unexpected bytes after PUBACK",
        ),
        case(
            "PUBACK with a one-byte body",
            AfterConnect,
            vec![0x40, 1, 0],
            "packet truncated",
        ),
        case(
            "PINGREQ with a body",
            AfterConnect,
            vec![0xc0, 1, 0],
            "unexpected bytes after PINGREQ",
        ),
        case(
            "PINGREQ with flags set [MQTT-2.2.2-2]",
            AfterConnect,
            vec![0xc1, 0],
            "invalid fixed header flags",
        ),
        case(
            "DISCONNECT with flags set [MQTT-2.2.2-2]",
            AfterConnect,
            vec![0xe8, 0],
            "invalid fixed header flags",
        ),
        case(
            "reserved packet type 0",
            AfterConnect,
            vec![0x00, 0],
            "invalid packet type 0",
        ),
        case(
            "reserved packet type 15",
            AfterConnect,
            vec![0xf0, 0],
            "invalid packet type 15",
        ),
        case(
            "CONNACK from a client",
            AfterConnect,
            vec![0x20, 2, 0, 0],
            "CONNACK is a server-to-client packet",
        ),
        case(
            "SUBACK from a client",
            AfterConnect,
            vec![0x90, 3, 0, 1, 0],
            "SUBACK is a server-to-client packet",
        ),
        case(
            "UNSUBACK from a client",
            AfterConnect,
            vec![0xb0, 2, 0, 1],
            "UNSUBACK is a server-to-client packet",
        ),
        case(
            "PINGRESP from a client",
            AfterConnect,
            vec![0xd0, 0],
            "PINGRESP is a server-to-client packet",
        ),
        case(
            "garbage after a valid PUBLISH in one write",
            AfterConnect,
            [publish_raw(0x30, b"t", None), vec![0xff; 8]].concat(),
            "malformed remaining length",
        ),
    ];
    // Refused with a CONNACK return code, then closed.
    for (name, bytes, log, code) in [
        (
            "protocol level 6 [MQTT-3.1.2-2]",
            connect_raw(b"MQTT", 6, 2, &[s(b"x")]),
            "unsupported protocol level 6",
            ConnectReturnCode::UnacceptableProtocolVersion,
        ),
        (
            "protocol level 0 [MQTT-3.1.2-2]",
            connect_raw(b"MQTT", 0, 2, &[s(b"x")]),
            "unsupported protocol level 0",
            ConnectReturnCode::UnacceptableProtocolVersion,
        ),
        (
            "MQIsdp with level 4 [MQTT-3.1.2-2]",
            connect_raw(b"MQIsdp", 4, 2, &[s(b"x")]),
            "unsupported protocol level 4",
            ConnectReturnCode::UnacceptableProtocolVersion,
        ),
        (
            "empty client id without clean session [MQTT-3.1.3-8]",
            connect_raw(b"MQTT", 4, 0, &[s(b"")]),
            "empty client id without clean session",
            ConnectReturnCode::IdentifierRejected,
        ),
    ] {
        v.push(Case {
            name,
            when: When::BeforeConnect,
            bytes,
            log,
            reply: Some(code),
        });
    }
    v
}

/// Opens a raw TCP client and returns it with its local address (the broker's `peer`).
async fn open_raw(addr: SocketAddr) -> (RawClient, SocketAddr) {
    let stream = TcpStream::connect(addr).await.expect("tcp connect");
    stream.set_nodelay(true).unwrap();
    let local = stream.local_addr().unwrap();
    (RawClient::over(Box::new(stream)), local)
}

/// Every malformed or abusive input of the table closes only its own connection, with a
/// log line naming the peer and the reason [MQTT-4.8.0-1], while the bystanders keep
/// exchanging QoS 2 messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_abusive_packets_close_only_the_offender() {
    log_buffer();
    const MAX: usize = 64 * 1024;
    let broker = start_broker(|c| c.server.max_packet_size = MAX).await;
    let addr = broker.local_addr();
    let bystander = Bystander::start(addr).await;
    let cases = cases(MAX);
    assert!(cases.len() >= 40, "the suite covers at least 40 inputs");
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {}", c.name);
        let (mut bad, peer) = open_raw(addr).await;
        if c.when != When::BeforeConnect {
            let mut connect = connect_packet("offender", true);
            if matches!(c.when, When::AfterConnectV5(_)) {
                connect.protocol = ProtocolLevel::V5;
            }
            bad.send(&Packet::Connect(Box::new(connect))).await;
            match bad.recv().await {
                Some(Packet::ConnAck(a)) => assert_eq!(a.code, ConnectReturnCode::Accepted),
                other => panic!("{}: no CONNACK: {other:?}", c.name),
            }
        }
        bad.send_raw(&c.bytes).await;
        if let When::AfterConnectV5(code) = c.when {
            // Acknowledgements of what was accepted before the violation may come first.
            loop {
                match bad.recv_within(WAIT).await {
                    Ok(Some(Packet::DisconnectWithReason(d))) => {
                        assert_eq!(d.reason, code, "{}", c.name);
                        break;
                    }
                    Ok(Some(Packet::PubRec(_) | Packet::Ack(_))) => continue,
                    other => panic!("{}: expected DISCONNECT {code:#04x}, got {other:?}", c.name),
                }
            }
        }
        if let Some(code) = c.reply {
            match bad.recv_within(WAIT).await {
                Ok(Some(Packet::ConnAck(a))) => assert_eq!(a.code, code, "{}", c.name),
                other => panic!("{}: expected CONNACK {code:?}, got {other:?}", c.name),
            }
        }
        match bad.recv_within(WAIT).await {
            Ok(None) => {}
            other => panic!("{}: connection not closed: {other:?}", c.name),
        }
        let line = expect_log(peer, c.log).await;
        assert!(
            line.contains("WARN") || line.contains("INFO"),
            "{}: logged at warn/info: {line}",
            c.name
        );
        bystander.assert_progress().await;
        expect_only_bystanders(&broker).await;
    }
    let exchanged = bystander.finish().await;
    assert!(exchanged >= 3 * cases.len() as u64);
    eprintln!(
        "hostile table: {} inputs, bystanders exchanged {exchanged} QoS 2 messages meanwhile",
        cases.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Abusive but well-formed clients
// ---------------------------------------------------------------------------------------------

/// A topic name of exactly 65,535 bytes (the largest a UTF-8 string field holds) with
/// 30,000 levels. Before the fix, subscribing to a filter that deep and publishing to it
/// overflowed a worker's stack (the trie recurses per level) and aborted the whole broker.
/// Now filters deeper than `MAX_FILTER_LEVELS` (1,000) get SUBACK 0x80 with a log line, the
/// deepest allowed filter works, and the 30,000-level topic itself is routed, retained and
/// delivered like any other, while the bystanders keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_of_65535_bytes_with_30000_levels() {
    log_buffer();
    // The operator limits (limits.max_topic_*) are opened wide so that what is tested here is
    // the trie's own depth guard, which no configuration can lift.
    let broker = start_broker(|c| {
        c.server.max_packet_size = 256 * 1024;
        c.limits.max_topic_length = 65_535;
        c.limits.max_topic_levels = 1_000_000;
    })
    .await;
    let addr = broker.local_addr();
    let bystander = Bystander::start(addr).await;

    let levels = DEEP_LEVELS;
    let topic = deep_topic();
    let deep_plus = format!("{}#", "+/".repeat(levels - 1));
    let max_levels = mqtt_broker::routing::trie::MAX_FILTER_LEVELS;
    let deepest_allowed = format!("{}#", "+/".repeat(max_levels - 1));

    let (mut sub, sub_peer) = open_raw(addr).await;
    sub.send(&Packet::Connect(Box::new(connect_packet("deep-sub", true))))
        .await;
    assert!(matches!(sub.recv().await, Some(Packet::ConnAck(_))));
    let codes = sub
        .subscribe(
            1,
            &[
                (topic.as_str(), QoS::ExactlyOnce),
                (deep_plus.as_str(), QoS::AtLeastOnce),
                (deepest_allowed.as_str(), QoS::ExactlyOnce),
                ("a/#", QoS::AtMostOnce),
            ],
        )
        .await;
    assert_eq!(
        codes,
        vec![
            SubAckCode::Failure,
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::ExactlyOnce),
            SubAckCode::Granted(QoS::AtMostOnce),
        ],
        "[MQTT-3.9.3-1]: one code per filter, in order"
    );
    expect_log(
        sub_peer,
        "subscription refused: topic filter has too many levels",
    )
    .await;
    let (mut publ, _) = RawClient::connect(addr, "deep-pub", true).await;
    // Overlapping subscriptions deliver once, at the highest granted QoS [MQTT-3.3.5-1].
    publ.publish_qos2(&topic, b"deep", 7).await;
    let got = sub.receive_qos2().await;
    assert_eq!(&*got.topic, topic.as_str());
    assert_eq!(&got.payload[..], b"deep");
    bystander.assert_progress().await;

    // Retained, then delivered to a new subscriber.
    publ.send(&publish(&topic, b"kept", QoS::AtLeastOnce, Some(8), true))
        .await;
    assert_eq!(publ.recv().await, Some(Packet::PubAck(8)));
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"kept");
    assert_eq!(
        p.qos,
        QoS::AtLeastOnce,
        "minimum of publish and subscription QoS"
    );
    sub.send(&Packet::PubAck(p.pid.unwrap())).await;
    let (mut late, _) = RawClient::connect(addr, "deep-late", true).await;
    // Not `#`: the bystanders' messages would race the retained one.
    late.subscribe(1, &[("a/#", QoS::AtMostOnce)]).await;
    let r = late.recv_publish().await;
    assert!(r.retain && &*r.topic == topic.as_str(), "[MQTT-3.3.1-6]");
    bystander.assert_progress().await;

    // Unsubscribing (the refused filters too) and disconnecting empty the trie again.
    sub.send(&Packet::Unsubscribe(Unsubscribe {
        properties: None,
        pid: 2,
        filters: vec![topic.clone(), deep_plus, deepest_allowed, "a/#".into()],
    }))
    .await;
    assert_eq!(
        sub.recv().await,
        Some(Packet::UnsubAck(mqtt_broker::protocol::UnsubAck::new(2)))
    );
    publ.send(&publish(&topic, b"", QoS::AtMostOnce, None, true))
        .await;
    for c in [&mut sub, &mut publ, &mut late] {
        c.send(&Packet::Disconnect).await;
        c.expect_closed().await;
    }
    expect_only_bystanders(&broker).await;
    assert_eq!(broker.stats().subscriptions.total, 1);
    assert_eq!(broker.stats().messages.retained, 0);
    bystander.finish().await;
}

const MAX_TOPIC: usize = 65_535;
const DEEP_LEVELS: usize = 30_000;

/// A topic name of exactly [`MAX_TOPIC`] bytes with [`DEEP_LEVELS`] levels: `a/a/.../abbb...`.
fn deep_topic() -> String {
    let mut topic = "a/".repeat(DEEP_LEVELS - 1);
    topic.push('a');
    topic.push_str(&"b".repeat(MAX_TOPIC - topic.len()));
    assert_eq!(topic.len(), MAX_TOPIC);
    assert_eq!(topic.split('/').count(), DEEP_LEVELS);
    topic
}

/// Batch `batch` (0..10) of the 100,000 subscriptions: 10,000 distinct filters, subscription
/// `n` asking for QoS `n % 3`.
fn hog_filters(batch: u32) -> Vec<(String, QoS)> {
    (0..10_000u32)
        .map(|i| {
            let n = batch * 10_000 + i;
            // Mix exact filters and wildcards so the trie grows in breadth and depth.
            let f = match n % 4 {
                0 => format!("hog/{n}"),
                1 => format!("hog/{n}/+/x"),
                2 => format!("hog/+/{n}/#"),
                _ => format!("hog/{}/{}/{n}", n % 97, n % 13),
            };
            (f, QoS::from_u8((n % 3) as u8).unwrap())
        })
        .collect()
}

/// 100,000 subscriptions from one client (in 10 SUBSCRIBE packets of 10,000 filters) are
/// granted within a bounded time, routing to one of them still works, the bystanders are not
/// starved meanwhile, and a disconnect removes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_subscriptions_from_one_client() {
    log_buffer();
    // limits.max_subscriptions (default 1000) is lifted: this measures the trie, not the limit.
    let broker = start_broker(|c| c.limits.max_subscriptions = 200_000).await;
    let addr = broker.local_addr();
    let bystander = Bystander::start(addr).await;
    let (mut hog, _) = RawClient::connect(addr, "sub-hog", true).await;
    let started = Instant::now();
    for batch in 0..10u32 {
        let filters = hog_filters(batch);
        let pid = batch as u16 + 1;
        hog.send(&Packet::Subscribe(Subscribe {
            options: Vec::new(),
            properties: None,
            pid,
            filters,
        }))
        .await;
        match hog.recv_within(Duration::from_secs(30)).await {
            Ok(Some(Packet::SubAck(s))) => {
                assert_eq!(s.pid, pid);
                assert_eq!(s.codes.len(), 10_000, "[MQTT-3.9.3-1]");
            }
            other => panic!("no SUBACK for batch {batch}: {other:?}"),
        }
        bystander.assert_progress().await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "100,000 subscriptions took {took:?}"
    );
    assert_eq!(broker.stats().subscriptions.total, 100_000 + 1);

    // Routing through the big trie still works: hog/4 (exact) and hog/+/4/# match.
    let (mut publ, _) = RawClient::connect(addr, "hog-pub", true).await;
    publ.publish_qos2("hog/4", b"found", 1).await;
    let p = hog.recv_publish().await;
    assert_eq!((&*p.topic, &p.payload[..]), ("hog/4", &b"found"[..]));
    if let Some(pid) = p.pid {
        if p.qos == QoS::AtLeastOnce {
            hog.send(&Packet::PubAck(pid)).await;
        } else {
            hog.send(&Packet::PubRec(pid)).await;
            assert_eq!(hog.recv().await, Some(Packet::PubRel(pid)));
            hog.send(&Packet::PubComp(pid)).await;
        }
    }
    bystander.assert_progress().await;
    hog.send(&Packet::Disconnect).await;
    hog.expect_closed().await;
    drop(publ);
    expect_only_bystanders(&broker).await;
    assert_eq!(broker.stats().subscriptions.total, 1, "[MQTT-3.1.2-6]");
    eprintln!("100,000 subscriptions granted in {took:?}");
    bystander.finish().await;
}

/// Every log line about `peer` containing all of `needles`.
fn log_lines(peer: SocketAddr, needles: &[&str]) -> Vec<String> {
    let tag = format!("peer={peer} ");
    let logs = log_buffer().lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains(&tag) && needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Waits until a log line about `peer` contains every one of `needles`; returns it.
async fn expect_log_all(peer: SocketAddr, needles: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = log_lines(peer, needles).into_iter().next() {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line for {peer} containing all of {needles:?}; lines about it: {:#?}",
            log_lines(peer, &[])
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The shipped defaults of the limits the two big inputs run into (`src/config/ops.rs`).
fn assert_shipped_limits(broker: &BrokerHandle) {
    let l = broker.config().limits;
    assert_eq!(
        (l.max_topic_length, l.max_topic_levels, l.max_subscriptions),
        (1024, 32, 1000),
        "the shipped defaults of limits.max_topic_length / max_topic_levels / max_subscriptions"
    );
}

/// The 65,535-byte, 30,000-level topic again, under the shipped default limits
/// (`limits.max_topic_length` 1024, `limits.max_topic_levels` 32): as a SUBSCRIBE filter it
/// gets SUBACK 0x80 (the trie's depth guard refuses it before the limits are looked at),
/// a filter just over either limit gets 0x80 with a log line naming that limit, and a
/// PUBLISH to the topic (or to a topic just over either limit) closes the publisher's
/// connection with a log line saying which limit, without routing or retaining it. The
/// subscriber stays connected, and the bystanders keep exchanging QoS 2 messages throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_of_65535_bytes_with_30000_levels_refused_under_default_limits() {
    log_buffer();
    let broker = start_broker(|_| {}).await;
    assert_shipped_limits(&broker);
    assert!(
        broker.config().server.max_packet_size > MAX_TOPIC + 16,
        "the default max_packet_size lets the topic through the decoder"
    );
    let addr = broker.local_addr();
    let bystander = Bystander::start(addr).await;

    let topic = deep_topic();
    // 1 level, one byte over max_topic_length.
    let too_long = "l".repeat(1025);
    // 33 levels in 65 bytes: one level over max_topic_levels.
    let too_deep = format!("{}d", "d/".repeat(32));
    // Exactly 32 levels: allowed. Matches every topic of 31 levels or more.
    let at_limit = format!("{}#", "+/".repeat(31));

    let (mut sub, sub_peer) = open_raw(addr).await;
    sub.send(&Packet::Connect(Box::new(connect_packet("deep-sub", true))))
        .await;
    assert!(
        matches!(sub.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Accepted)
    );
    let codes = sub
        .subscribe(
            1,
            &[
                (topic.as_str(), QoS::ExactlyOnce),
                (too_long.as_str(), QoS::AtLeastOnce),
                (too_deep.as_str(), QoS::AtLeastOnce),
                (at_limit.as_str(), QoS::AtLeastOnce),
                ("a/#", QoS::AtMostOnce),
                ("l/#", QoS::AtMostOnce),
            ],
        )
        .await;
    assert_eq!(
        codes,
        vec![
            SubAckCode::Failure,
            SubAckCode::Failure,
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::AtLeastOnce),
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Granted(QoS::AtMostOnce),
        ],
        "[MQTT-3.9.3-1]: one code per filter, in order"
    );
    expect_log(
        sub_peer,
        "subscription refused: topic filter has too many levels",
    )
    .await;
    expect_log_all(sub_peer, &["limit reached", "max_topic_length"]).await;
    expect_log_all(sub_peer, &["limit reached", "max_topic_levels"]).await;
    assert_eq!(broker.stats().subscriptions.total, 1 + 3);
    bystander.assert_progress().await;

    // PUBLISH beyond the limits: closed, logged with the limit, never routed nor retained.
    for (name, t, log) in [
        (
            "deep-pub",
            topic.as_str(),
            "PUBLISH topic beyond limits.max_topic_length (65535 bytes)",
        ),
        (
            "long-pub",
            too_long.as_str(),
            "PUBLISH topic beyond limits.max_topic_length (1025 bytes)",
        ),
        (
            "levels-pub",
            too_deep.as_str(),
            "PUBLISH topic beyond limits.max_topic_levels",
        ),
    ] {
        let (mut publ, peer) = open_raw(addr).await;
        publ.send(&Packet::Connect(Box::new(connect_packet(name, true))))
            .await;
        assert!(
            matches!(publ.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Accepted)
        );
        publ.send(&publish(t, b"refused", QoS::ExactlyOnce, Some(7), true))
            .await;
        match publ.recv_within(WAIT).await {
            Ok(None) => {}
            other => panic!("{name}: expected the connection closed, got {other:?}"),
        }
        let line = expect_log_all(peer, &["closing: resource limit", log]).await;
        assert!(line.contains("WARN"), "{name}: logged at warn: {line}");
        bystander.assert_progress().await;
    }
    // Nothing reached the subscriber (its `a/#`, `l/#` and 32-level filters match all three
    // topics), nothing was retained, and the subscriber itself is still connected.
    sub.expect_silence(Duration::from_millis(300)).await;
    sub.send(&Packet::PingReq).await;
    assert_eq!(sub.recv().await, Some(Packet::PingResp));
    assert_eq!(broker.stats().messages.retained, 0);
    // The deepest topic the limits allow is still delivered.
    let allowed = format!("{}a", "a/".repeat(31));
    let (mut publ, _) = RawClient::connect(addr, "allowed-pub", true).await;
    publ.publish_qos2(&allowed, b"ok", 1).await;
    let p = sub.recv_publish().await;
    assert_eq!((&*p.topic, &p.payload[..]), (allowed.as_str(), &b"ok"[..]));
    assert_eq!(
        p.qos,
        QoS::AtLeastOnce,
        "highest granted QoS [MQTT-3.3.5-1]"
    );
    sub.send(&Packet::PubAck(p.pid.unwrap())).await;
    bystander.assert_progress().await;

    for c in [&mut sub, &mut publ] {
        c.send(&Packet::Disconnect).await;
        c.expect_closed().await;
    }
    expect_only_bystanders(&broker).await;
    assert_eq!(broker.stats().subscriptions.total, 1);
    bystander.finish().await;
}

/// The same 100,000 subscriptions from one client under the shipped default
/// `limits.max_subscriptions` (1000): the first 1,000 filters are granted, every later new
/// filter gets SUBACK 0x80 [MQTT-3.9.3-1] (re-subscribing a held filter is still granted),
/// the refusal is logged once for the connection (not 99,000 times), routing to a granted
/// filter works and a refused one receives nothing, and the bystanders keep exchanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_subscriptions_refused_beyond_default_max_subscriptions() {
    log_buffer();
    let broker = start_broker(|_| {}).await;
    assert_shipped_limits(&broker);
    const LIMIT: u32 = 1000;
    let addr = broker.local_addr();
    let bystander = Bystander::start(addr).await;
    let (mut hog, hog_peer) = open_raw(addr).await;
    hog.send(&Packet::Connect(Box::new(connect_packet("sub-hog", true))))
        .await;
    assert!(
        matches!(hog.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Accepted)
    );
    let started = Instant::now();
    for batch in 0..10u32 {
        let filters = hog_filters(batch);
        let want: Vec<SubAckCode> = filters
            .iter()
            .enumerate()
            .map(|(i, (_, q))| {
                if batch * 10_000 + (i as u32) < LIMIT {
                    SubAckCode::Granted(*q)
                } else {
                    SubAckCode::Failure
                }
            })
            .collect();
        let pid = batch as u16 + 1;
        hog.send(&Packet::Subscribe(Subscribe {
            options: Vec::new(),
            properties: None,
            pid,
            filters,
        }))
        .await;
        match hog.recv_within(Duration::from_secs(30)).await {
            Ok(Some(Packet::SubAck(s))) => {
                assert_eq!(s.pid, pid);
                assert_eq!(s.codes.len(), 10_000, "[MQTT-3.9.3-1]");
                if let Some(i) = (0..s.codes.len()).find(|&i| s.codes[i] != want[i]) {
                    panic!(
                        "batch {batch}, filter {i}: {:?}, expected {:?}",
                        s.codes[i], want[i]
                    );
                }
            }
            other => panic!("no SUBACK for batch {batch}: {other:?}"),
        }
        bystander.assert_progress().await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "100,000 SUBSCRIBE filters took {took:?}"
    );
    assert_eq!(broker.stats().subscriptions.total, LIMIT as u64 + 1);
    // At the limit, replacing a held subscription is granted; a new one still is not.
    let codes = hog
        .subscribe(
            11,
            &[("hog/0", QoS::ExactlyOnce), ("hog/new", QoS::AtMostOnce)],
        )
        .await;
    assert_eq!(
        codes,
        vec![SubAckCode::Granted(QoS::ExactlyOnce), SubAckCode::Failure]
    );
    assert_eq!(broker.stats().subscriptions.total, LIMIT as u64 + 1);
    // Logged with the limit's name, once for this connection.
    expect_log_all(hog_peer, &["limit reached", "max_subscriptions"]).await;
    let lines = log_lines(hog_peer, &["limit reached"]);
    assert_eq!(
        lines.len(),
        1,
        "one log line, not one per refusal: {lines:#?}"
    );

    // hog/5000 was refused, hog/4 granted at QoS 1: only the latter arrives.
    let (mut publ, _) = RawClient::connect(addr, "hog-pub", true).await;
    publ.publish_qos2("hog/5000", b"refused filter", 1).await;
    publ.publish_qos2("hog/4", b"found", 2).await;
    let p = hog.recv_publish().await;
    assert_eq!((&*p.topic, &p.payload[..]), ("hog/4", &b"found"[..]));
    assert_eq!(p.qos, QoS::AtLeastOnce);
    hog.send(&Packet::PubAck(p.pid.unwrap())).await;
    hog.expect_silence(Duration::from_millis(200)).await;
    bystander.assert_progress().await;

    hog.send(&Packet::Disconnect).await;
    hog.expect_closed().await;
    drop(publ);
    expect_only_bystanders(&broker).await;
    assert_eq!(broker.stats().subscriptions.total, 1, "[MQTT-3.1.2-6]");
    bystander.finish().await;
}

/// Oversized packets over WebSocket close only that connection, like over TCP: a header
/// declaring more than `max_packet_size` with its body following in WebSocket messages below
/// the frame limit (refused by the MQTT decoder from the header), and a whole oversized packet
/// in one WebSocket message (refused by the WebSocket layer, whose message limit is
/// `max_packet_size`), before and after CONNECT. Each is logged with the peer and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packets_over_websocket_close_only_the_offender() {
    log_buffer();
    const MAX: usize = 4096;
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let broker = start_broker(|c| {
        c.server.max_packet_size = MAX;
        c.listeners = vec![
            ListenerConfig::tcp(lo),
            ListenerConfig::new(TransportKind::Ws, lo),
        ];
    })
    .await;
    let bystander = Bystander::start(broker.local_addr()).await;
    let ws = listener_addr(&broker, TransportKind::Ws);
    let big_publish = {
        let mut body = s(b"big/ws");
        body.extend(vec![b'x'; MAX]);
        pkt(0x30, &body)
    };
    let big_connect = connect_raw(
        b"MQTT",
        4,
        0xc2,
        &[s(b"big-ws"), s(b"user"), s(&[b'p'; MAX])],
    );
    let chunks = |p: &[u8]| p.chunks(1024).map(<[u8]>::to_vec).collect::<Vec<_>>();
    let cases: Vec<(&str, When, Vec<Vec<u8>>, &str)> = vec![
        (
            "PUBLISH header over the limit, body in small messages",
            When::AfterConnect,
            chunks(&big_publish),
            "packet too large",
        ),
        (
            "PUBLISH over the limit in one WebSocket message",
            When::AfterConnect,
            vec![big_publish.clone()],
            "WebSocket message of",
        ),
        (
            "CONNECT header over the limit, body in small messages",
            When::BeforeConnect,
            chunks(&big_connect),
            "packet too large",
        ),
        (
            "CONNECT over the limit in one WebSocket message",
            When::BeforeConnect,
            vec![big_connect.clone()],
            "WebSocket message of",
        ),
    ];
    for (name, when, messages, log) in cases {
        eprintln!("websocket case: {name}");
        let tcp = TcpStream::connect(ws).await.unwrap();
        let peer = tcp.local_addr().unwrap();
        let stream = ws_upgrade(tcp, &format!("ws://{ws}/mqtt"))
            .await
            .unwrap_or_else(|e| panic!("{name}: upgrade: {e}"));
        let mut bad = RawClient::over(stream);
        if when == When::AfterConnect {
            bad.send(&Packet::Connect(Box::new(connect_packet(
                "ws-offender",
                true,
            ))))
            .await;
            match bad.recv().await {
                Some(Packet::ConnAck(a)) => assert_eq!(a.code, ConnectReturnCode::Accepted),
                other => panic!("{name}: no CONNACK: {other:?}"),
            }
        }
        for m in &messages {
            // One write is one WebSocket message.
            bad.send_raw(m).await;
        }
        match bad.recv_within(WAIT).await {
            Ok(None) => {}
            other => panic!("{name}: connection not closed: {other:?}"),
        }
        let line = expect_log(peer, log).await;
        assert!(
            line.contains("WARN") || line.contains("INFO"),
            "{name}: logged at warn/info: {line}"
        );
        bystander.assert_progress().await;
        expect_only_bystanders(&broker).await;
    }
    bystander.finish().await;
}

/// A subscriber to a busy topic that stops reading its socket: the broker stops draining
/// its session once the write buffer passes its high-water mark, its queue stays within
/// `message_queue_limit` (the excess is dropped, counted and logged), the publisher is never
/// blocked, and others keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_that_stops_reading_on_a_busy_topic_is_bounded() {
    log_buffer();
    const LIMIT: usize = 200;
    let broker = start_broker(|c| {
        c.performance.message_queue_limit = LIMIT;
        c.performance.inflight_window_size = 8;
    })
    .await;
    let addr = broker.local_addr();
    let bystander = Bystander::start(addr).await;
    // Keep-alive 0: the broker may not close it for idling, only bound it.
    let mut stuck_connect = connect_packet("stuck", true);
    stuck_connect.keep_alive = 0;
    let (mut stuck, _) = RawClient::connect_with(addr, stuck_connect).await;
    stuck
        .subscribe(
            1,
            &[("busy/q0", QoS::AtMostOnce), ("busy/q1", QoS::AtLeastOnce)],
        )
        .await;
    // From here on the stuck client never reads.
    let (mut publ, _) = RawClient::connect(addr, "busy-pub", true).await;
    let payload = vec![0x5a; 8 * 1024];
    let started = Instant::now();
    // 32 MiB of QoS 0 and 4,000 QoS 1 messages: far beyond socket buffers and the queue.
    for i in 0..4_000u32 {
        publ.send(&publish("busy/q0", &payload, QoS::AtMostOnce, None, false))
            .await;
        let pid = (i % 60_000 + 1) as u16;
        publ.send(&publish(
            "busy/q1",
            &payload[..64],
            QoS::AtLeastOnce,
            Some(pid),
            false,
        ))
        .await;
        // The publisher is acknowledged at full speed whatever the subscriber does.
        assert_eq!(publ.recv().await, Some(Packet::PubAck(pid)));
        if i % 500 == 0 {
            let s = broker.stats();
            assert!(
                s.messages.queued <= LIMIT as u64 + BYSTANDER_QUEUE,
                "queue grew to {}",
                s.messages.queued
            );
        }
    }
    bystander.assert_progress().await;
    let s = broker.stats();
    assert!(
        s.messages.queued <= LIMIT as u64 + BYSTANDER_QUEUE,
        "queue grew to {}",
        s.messages.queued
    );
    assert!(s.messages.inflight.qos1 <= 8, "inflight window exceeded");
    assert!(s.messages.dropped_queue_full > 0, "the excess is dropped");
    assert!(started.elapsed() < Duration::from_secs(120));
    // The drop is logged naming the subscriber: the line belongs to the publisher's span, so
    // the subscriber is the event's `subscriber` field (with its peer).
    {
        let logs = log_buffer().lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&logs);
        assert!(
            text.lines().any(|l| l.contains("subscriber queue full")
                && l.contains("subscriber=stuck")
                && l.contains("subscriber_peer=")),
            "no log line about the full queue of `stuck`"
        );
    }
    // Its connection is still open (it broke no rule) until it goes away.
    assert_eq!(broker.stats().connections.total, Bystander::CLIENTS + 2);
    drop(stuck);
    drop(publ);
    expect_only_bystanders(&broker).await;
    bystander.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Slow and stuck peers: nothing held beyond its limit and timeout
// ---------------------------------------------------------------------------------------------

/// Tasks alive in this test's runtime (the broker runs in it).
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until the runtime is back to `baseline` tasks.
async fn expect_tasks_back_to(baseline: usize, what: &str) {
    let deadline = Instant::now() + WAIT;
    while alive_tasks() > baseline {
        assert!(
            Instant::now() < deadline,
            "{what}: {} tasks alive, {baseline} before",
            alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until EOF or error; returns how long the peer kept the socket open.
async fn wait_closed(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("peer still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// Slowloris: 40 clients each dribble a CONNECT one byte every 100 ms. Each is closed at
/// `connect_timeout` [MQTT-3.1.0-1] with a log line, and its task and connection are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connect_is_closed_at_connect_timeout() {
    log_buffer();
    let broker = start_broker(|c| c.server.connect_timeout = ConfigDuration::millis(800)).await;
    let addr = broker.local_addr();
    let bystander = Bystander::start(addr).await;
    let baseline = alive_tasks();
    let mut connect = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(connect_packet("slowloris", true))),
        &mut connect,
    );
    let connect = connect.to_vec();
    let mut peers = Vec::new();
    for _ in 0..40 {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let peer = s.local_addr().unwrap();
        let bytes = connect.clone();
        peers.push((
            peer,
            tokio::spawn(async move {
                // Never the whole packet: stops one byte short; gives up once refused.
                for b in &bytes[..bytes.len() - 1] {
                    if s.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if s.try_read(&mut [0u8; 1]).is_ok() {
                        break;
                    }
                }
                wait_closed(&mut s, Duration::from_secs(5)).await;
                started.elapsed()
            }),
        ));
    }
    bystander.assert_progress().await;
    for (peer, task) in peers {
        let open_for = task.await.unwrap();
        // 800 ms timeout; the CONNECT would have taken 2 s to arrive.
        assert!(
            open_for < Duration::from_millis(1_700),
            "{peer} held for {open_for:?}"
        );
        expect_log(peer, "no CONNECT within connect_timeout").await;
    }
    expect_tasks_back_to(baseline, "slowloris").await;
    expect_only_bystanders(&broker).await;
    bystander.finish().await;
}

/// Bystanders on TCP, plus a WebSocket and a TLS listener.
async fn broker_with_ws_and_tls(pki: &TestPki) -> BrokerHandle {
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    start_broker(|c| {
        c.server.connect_timeout = ConfigDuration::millis(800);
        c.listeners = vec![
            ListenerConfig::tcp(lo),
            ListenerConfig::new(TransportKind::Ws, lo),
            ListenerConfig {
                cert_file: Some(pki.path("server.pem")),
                key_file: Some(pki.path("server.key")),
                ..ListenerConfig::new(TransportKind::Tls, lo)
            },
        ];
    })
    .await
}

fn listener_addr(broker: &BrokerHandle, t: TransportKind) -> SocketAddr {
    broker
        .listeners()
        .iter()
        .find(|l| l.transport == t)
        .expect("listener")
        .addr
}

/// WebSocket clients that never complete the HTTP upgrade (a partial request, a complete
/// request line without the blank line, or nothing at all) are closed at `connect_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_never_completed_is_closed_at_connect_timeout() {
    log_buffer();
    let pki = TestPki::new("hostile-ws");
    let broker = broker_with_ws_and_tls(&pki).await;
    let bystander = Bystander::start(broker.local_addr()).await;
    let ws = listener_addr(&broker, TransportKind::Ws);
    let baseline = alive_tasks();
    let partials: [&[u8]; 3] = [
        b"",
        b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n",
        b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n",
    ];
    let mut peers = Vec::new();
    for i in 0..30 {
        let mut s = TcpStream::connect(ws).await.unwrap();
        s.write_all(partials[i % 3]).await.unwrap();
        peers.push(s);
    }
    bystander.assert_progress().await;
    for mut s in peers {
        let peer = s.local_addr().unwrap();
        let open_for = wait_closed(&mut s, Duration::from_secs(5)).await;
        assert!(
            open_for < Duration::from_secs(3),
            "{peer} held for {open_for:?}"
        );
        expect_log(peer, "handshake not completed within connect_timeout").await;
    }
    expect_tasks_back_to(baseline, "stalled WebSocket upgrades").await;
    expect_only_bystanders(&broker).await;
    bystander.finish().await;
}

/// TLS clients that stall mid-handshake: one after sending half a ClientHello record, one
/// after a whole ClientHello (having read the server's flight, never sending Finished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_stalled_midway_is_closed_at_connect_timeout() {
    use tokio_rustls::rustls;
    log_buffer();
    let pki = TestPki::new("hostile-tls");
    let broker = broker_with_ws_and_tls(&pki).await;
    let bystander = Bystander::start(broker.local_addr()).await;
    let tls = listener_addr(&broker, TransportKind::Tls);
    let baseline = alive_tasks();
    let mut peers = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(tls).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(pki.client_config(None), name).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        if i % 2 == 0 {
            s.write_all(&hello[..hello.len() / 2]).await.unwrap();
        } else {
            s.write_all(&hello).await.unwrap();
            // The server answers with its flight; read some of it, then go silent.
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0 && buf[0] == 0x16, "server sent a handshake record");
        }
        peers.push(s);
    }
    bystander.assert_progress().await;
    for mut s in peers {
        let peer = s.local_addr().unwrap();
        let open_for = wait_closed(&mut s, Duration::from_secs(5)).await;
        assert!(
            open_for < Duration::from_secs(3),
            "{peer} held for {open_for:?}"
        );
        expect_log(peer, "handshake not completed within connect_timeout").await;
    }
    expect_tasks_back_to(baseline, "stalled TLS handshakes").await;
    expect_only_bystanders(&broker).await;
    bystander.finish().await;
}

/// A subscriber that never reads (nor writes) with a keep-alive: flooded, bounded by its
/// queue limit, then closed by keep-alive expiry [MQTT-3.1.2-24] although its socket is
/// full; its task, connection, session and queue are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_that_never_reads_is_released_at_keep_alive() {
    log_buffer();
    const LIMIT: usize = 100;
    let broker = start_broker(|c| c.performance.message_queue_limit = LIMIT).await;
    let addr = broker.local_addr();
    let bystander = Bystander::start(addr).await;
    let baseline = alive_tasks();
    let (mut deaf, peer) = open_raw(addr).await;
    let mut c = connect_packet("deaf", true);
    c.keep_alive = 1;
    deaf.send(&Packet::Connect(Box::new(c))).await;
    assert!(matches!(deaf.recv().await, Some(Packet::ConnAck(_))));
    deaf.send(&Packet::Subscribe(Subscribe {
        options: Vec::new(),
        properties: None,
        pid: 1,
        filters: vec![("flood".into(), QoS::AtMostOnce)],
    }))
    .await;
    let (mut publ, _) = RawClient::connect(addr, "flooder", true).await;
    let payload = vec![1u8; 16 * 1024];
    for i in 0..1_500u16 {
        publ.send(&publish(
            "flood",
            &payload,
            QoS::AtLeastOnce,
            Some(i + 1),
            false,
        ))
        .await;
        assert_eq!(publ.recv().await, Some(Packet::PubAck(i + 1)));
    }
    assert!(broker.stats().messages.queued <= LIMIT as u64 + BYSTANDER_QUEUE);
    bystander.assert_progress().await;
    // 1.5 × keep-alive after its last packet, it is gone without having read a byte more.
    expect_log(peer, "keep-alive expired").await;
    drop(publ);
    expect_only_bystanders(&broker).await;
    expect_tasks_back_to(baseline, "deaf subscriber").await;
    drop(deaf);
    bystander.finish().await;
}

/// Buggy or impatient firmware writes CONNECT, SUBSCRIBE and PUBLISH in one segment
/// without waiting for CONNACK (allowed: [MQTT-3.1.4-5] only forbids the server from
/// processing data after a refused CONNECT). The packets behind CONNECT must be handled at
/// once, not left in the buffer until the client happens to send something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_pipelined_behind_connect_are_handled_at_once() {
    log_buffer();
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();
    let bystander = Bystander::start(addr).await;
    let (mut c, _) = open_raw(addr).await;
    let mut burst = BytesMut::new();
    let mut connect = connect_packet("pipeliner", true);
    connect.keep_alive = 0;
    for p in [
        Packet::Connect(Box::new(connect)),
        Packet::Subscribe(Subscribe {
            options: Vec::new(),
            properties: None,
            pid: 1,
            filters: vec![("pipe/#".into(), QoS::AtLeastOnce)],
        }),
        publish("pipe/a", b"to myself", QoS::AtLeastOnce, Some(2), false),
    ] {
        encode(&p, &mut burst);
    }
    c.send_raw(&burst).await;
    assert!(
        matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Accepted)
    );
    let mut got = Vec::new();
    // SUBACK, PUBACK and the delivered PUBLISH, in some order, without sending anything more.
    for _ in 0..3 {
        match c.recv_within(Duration::from_secs(2)).await {
            Ok(Some(p)) => got.push(p),
            other => panic!("pipelined packets not handled: got {got:?} then {other:?}"),
        }
    }
    assert!(got
        .iter()
        .any(|p| matches!(p, Packet::SubAck(s) if s.pid == 1)));
    assert!(got.contains(&Packet::PubAck(2)));
    assert!(got
        .iter()
        .any(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"to myself")));
    bystander.assert_progress().await;
    drop(c);
    expect_only_bystanders(&broker).await;
    bystander.finish().await;
}

/// Regression: the back-off before refusing a login multiplied the configured delay by up to
/// 2^16 with `Duration * u32`, which panics on overflow. With a delay of years (valid config)
/// the 11th consecutive failure from one address panicked its connection task. It now
/// saturates; the refused clients wait (they are refused, nothing else) and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_auth_failure_delay_does_not_overflow() {
    log_buffer();
    let years = ConfigDuration(Duration::from_secs(18_446_744_073_709_551));
    let broker = start_broker(|c| {
        c.security.allow_anonymous = false;
        c.security.auth_failure_delay = years;
        c.security.auth_failure_max_delay = years;
    })
    .await;
    let addr = broker.local_addr();
    let bystander = Bystander::start(addr).await;
    let mut anonymous = Vec::new();
    for i in 0..14 {
        let (mut c, peer) = open_raw(addr).await;
        c.send(&Packet::Connect(Box::new(connect_packet(
            &format!("anon-{i}"),
            true,
        ))))
        .await;
        expect_log(peer, "authentication failed").await;
        anonymous.push((c, peer));
    }
    bystander.assert_progress().await;
    for (c, peer) in &mut anonymous {
        // Refused clients are held in the back-off, not answered, and not crashed.
        c.expect_silence(Duration::from_millis(20)).await;
        let logs = log_buffer().lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&logs);
        let tag = format!("peer={peer} ");
        assert!(
            !text
                .lines()
                .any(|l| l.contains(&tag) && l.contains("panicked")),
            "{peer} panicked"
        );
    }
    assert_eq!(
        broker.stats().connections.total,
        Bystander::CLIENTS + anonymous.len() as u64
    );
    bystander.finish().await;
}
