//! Bytes in, packets out, and back: the MQTT 3.1.1 wire format (sections 1.5, 2 and 3).
//!
//! The decoder works on a growing buffer of received bytes. It only ever looks at bytes
//! that have arrived, refuses a packet whose declared size exceeds the configured maximum
//! before its body is buffered, and never allocates more than the bytes it was given.

use super::error::ProtocolError;
use super::packet::*;
use super::topic::{validate_topic_filter, validate_topic_name};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// Largest value the 4-byte remaining length can encode (section 2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Result of looking at the fixed header of the next packet in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// First byte: packet type and flags.
    pub first_byte: u8,
    /// Length of the fixed header in bytes (2 to 5).
    pub header_len: usize,
    /// Remaining length declared by the packet.
    pub remaining_len: usize,
}

impl FrameHeader {
    /// Total size of the packet in bytes.
    pub fn total_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Parses the fixed header at the start of `buf`, if enough bytes have arrived.
pub fn peek_header(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut value = 0usize;
    let mut multiplier = 1usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        value += (byte & 0x7f) as usize * multiplier;
        if byte & 0x80 == 0 {
            return Ok(Some(FrameHeader {
                first_byte: buf[0],
                header_len: 2 + i,
                remaining_len: value,
            }));
        }
        multiplier *= 128;
    }
    // A fifth length byte is malformed (section 2.2.3).
    Err(ProtocolError::MalformedRemainingLength)
}

/// Checks the first byte a client sends: it must start a CONNECT, whose fixed header byte
/// is exactly 0x10 (type 1, flags 0) [MQTT-3.1.0-1], [MQTT-2.2.2-2]. Lets a server close
/// a peer that does not speak MQTT at once instead of waiting for a whole "packet".
pub fn check_first_byte(buf: &[u8]) -> Result<(), ProtocolError> {
    match buf.first() {
        Some(&b) if b != 0x10 => Err(ProtocolError::NotConnect(b)),
        _ => Ok(()),
    }
}

/// Decodes one packet from the front of `buf`, removing its bytes.
///
/// Returns `Ok(None)` when more bytes are needed. A packet larger than `max_packet_size`
/// (fixed header included) is an error as soon as its header is seen.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, ProtocolError> {
    let Some(header) = peek_header(buf)? else {
        return Ok(None);
    };
    if header.total_len() > max_packet_size {
        return Err(ProtocolError::PacketTooLarge {
            size: header.total_len(),
            max: max_packet_size,
        });
    }
    if buf.len() < header.total_len() {
        return Ok(None);
    }
    buf.advance(header.header_len);
    let body = buf.split_to(header.remaining_len).freeze();
    decode_body(header.first_byte, body).map(Some)
}

/// Decodes a packet body given the first byte of its fixed header.
pub fn decode_body(first_byte: u8, body: Bytes) -> Result<Packet, ProtocolError> {
    let packet_type = first_byte >> 4;
    let flags = first_byte & 0x0f;
    let mut r = Reader { buf: body };
    // Reserved flag bits are fixed per packet type [MQTT-2.2.2-1], [MQTT-2.2.2-2].
    let expect_flags = |expected: u8, name: &'static str| {
        if flags == expected {
            Ok(())
        } else {
            Err(ProtocolError::InvalidFlags {
                packet: name,
                flags,
            })
        }
    };
    let packet = match packet_type {
        1 => {
            expect_flags(0, "CONNECT")?;
            Packet::Connect(Box::new(decode_connect(&mut r)?))
        }
        2 => {
            expect_flags(0, "CONNACK")?;
            let ack_flags = r.u8()?;
            if ack_flags & 0xfe != 0 {
                return Err(ProtocolError::Malformed("CONNACK reserved flags set"));
            }
            let code = ConnectReturnCode::from_u8(r.u8()?)
                .ok_or(ProtocolError::Malformed("unknown CONNACK return code"))?;
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
            })
        }
        3 => Packet::Publish(decode_publish(flags, &mut r)?),
        4 => {
            expect_flags(0, "PUBACK")?;
            Packet::PubAck(r.packet_id()?)
        }
        5 => {
            expect_flags(0, "PUBREC")?;
            Packet::PubRec(r.packet_id()?)
        }
        6 => {
            // [MQTT-3.6.1-1]
            expect_flags(0b0010, "PUBREL")?;
            Packet::PubRel(r.packet_id()?)
        }
        7 => {
            expect_flags(0, "PUBCOMP")?;
            Packet::PubComp(r.packet_id()?)
        }
        8 => {
            // [MQTT-3.8.1-1]
            expect_flags(0b0010, "SUBSCRIBE")?;
            let pid = r.packet_id()?;
            let mut filters = Vec::new();
            while r.has_remaining() {
                let filter = r.string()?;
                validate_topic_filter(&filter)?;
                let options = r.u8()?;
                // Upper six bits are reserved [MQTT-3.8.3-4].
                if options & 0xfc != 0 {
                    return Err(ProtocolError::Malformed(
                        "SUBSCRIBE options reserved bits set",
                    ));
                }
                let qos = QoS::from_u8(options).ok_or(ProtocolError::InvalidQoS)?;
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                // [MQTT-3.8.3-3]
                return Err(ProtocolError::Malformed("SUBSCRIBE without topic filters"));
            }
            Packet::Subscribe(Subscribe { pid, filters })
        }
        9 => {
            expect_flags(0, "SUBACK")?;
            let pid = r.packet_id()?;
            let mut codes = Vec::new();
            while r.has_remaining() {
                codes.push(match r.u8()? {
                    0x80 => SubAckCode::Failure,
                    v => SubAckCode::Granted(
                        QoS::from_u8(v).ok_or(ProtocolError::Malformed("bad SUBACK code"))?,
                    ),
                });
            }
            Packet::SubAck(SubAck { pid, codes })
        }
        10 => {
            // [MQTT-3.10.1-1]
            expect_flags(0b0010, "UNSUBSCRIBE")?;
            let pid = r.packet_id()?;
            let mut filters = Vec::new();
            while r.has_remaining() {
                let filter = r.string()?;
                validate_topic_filter(&filter)?;
                filters.push(filter);
            }
            if filters.is_empty() {
                // [MQTT-3.10.3-2]
                return Err(ProtocolError::Malformed(
                    "UNSUBSCRIBE without topic filters",
                ));
            }
            Packet::Unsubscribe(Unsubscribe { pid, filters })
        }
        11 => {
            expect_flags(0, "UNSUBACK")?;
            Packet::UnsubAck(r.packet_id()?)
        }
        12 => {
            expect_flags(0, "PINGREQ")?;
            Packet::PingReq
        }
        13 => {
            expect_flags(0, "PINGRESP")?;
            Packet::PingResp
        }
        14 => {
            expect_flags(0, "DISCONNECT")?;
            Packet::Disconnect
        }
        other => return Err(ProtocolError::InvalidPacketType(other)),
    };
    if r.has_remaining() {
        return Err(ProtocolError::TrailingBytes(packet.name()));
    }
    Ok(packet)
}

fn decode_connect(r: &mut Reader) -> Result<Connect, ProtocolError> {
    let name = r.string()?;
    let level = r.u8()?;
    // [MQTT-3.1.2-1]: a wrong protocol name is closed without CONNACK.
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolLevel::V311,
        ("MQIsdp", 3) => ProtocolLevel::V31,
        ("MQTT", _) | ("MQIsdp", _) => {
            // [MQTT-3.1.2-2]: answered with CONNACK 0x01.
            return Err(ProtocolError::UnsupportedProtocolLevel(level));
        }
        _ => return Err(ProtocolError::InvalidProtocolName(name)),
    };
    let flags = r.u8()?;
    // [MQTT-3.1.2-3]
    if flags & 0x01 != 0 {
        return Err(ProtocolError::Malformed("CONNECT reserved flag set"));
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]
        return Err(ProtocolError::Malformed(
            "will QoS or retain set without will flag",
        ));
    }
    // [MQTT-3.1.2-14]
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(ProtocolError::InvalidQoS)?;
    if password_flag && !username_flag {
        // [MQTT-3.1.2-22]
        return Err(ProtocolError::Malformed(
            "password flag set without user name flag",
        ));
    }
    let keep_alive = r.u16()?;
    // [MQTT-3.1.3-4]: the client id is a UTF-8 string.
    let client_id = r.string()?;
    let will = if will_flag {
        let topic = r.string()?;
        validate_topic_name(&topic)?;
        let payload = r.binary()?;
        Some(LastWill {
            topic: Arc::from(topic),
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_publish(flags: u8, r: &mut Reader) -> Result<Publish, ProtocolError> {
    let dup = flags & 0x08 != 0;
    // [MQTT-3.3.1-4]
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(ProtocolError::InvalidQoS)?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        // [MQTT-3.3.1-2]
        return Err(ProtocolError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string()?;
    // [MQTT-3.3.2-2]
    validate_topic_name(&topic)?;
    let pid = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic: Arc::from(topic),
        pid,
        payload,
    })
}

/// Cursor over a packet body that reports truncation instead of panicking.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn has_remaining(&self) -> bool {
        self.buf.has_remaining()
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        if self.buf.remaining() < 1 {
            return Err(ProtocolError::Truncated);
        }
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        if self.buf.remaining() < 2 {
            return Err(ProtocolError::Truncated);
        }
        Ok(self.buf.get_u16())
    }

    /// A non-zero packet identifier [MQTT-2.3.1-1].
    fn packet_id(&mut self) -> Result<u16, ProtocolError> {
        match self.u16()? {
            0 => Err(ProtocolError::ZeroPacketId),
            pid => Ok(pid),
        }
    }

    fn binary(&mut self) -> Result<Bytes, ProtocolError> {
        let len = self.u16()? as usize;
        if self.buf.remaining() < len {
            return Err(ProtocolError::Truncated);
        }
        Ok(self.buf.split_to(len))
    }

    /// A UTF-8 encoded string: well-formed [MQTT-1.5.3-1] and without U+0000 [MQTT-1.5.3-2].
    fn string(&mut self) -> Result<String, ProtocolError> {
        let raw = self.binary()?;
        let s = std::str::from_utf8(&raw).map_err(|_| ProtocolError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(ProtocolError::NullCharacter);
        }
        Ok(s.to_owned())
    }

    fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }
}

/// Appends the variable-length remaining-length encoding of `len` (section 2.2.3); public
/// so that tests can frame hand-made, even malformed, packet bodies.
pub fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_string(out: &mut BytesMut, s: &str) {
    put_binary(out, s.as_bytes());
}

fn put_binary(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn put_ack(out: &mut BytesMut, first: u8, pid: u16) {
    out.put_u8(first);
    out.put_u8(2);
    out.put_u16(pid);
}

/// Size in bytes of the body (variable header + payload) of a PUBLISH.
pub fn publish_body_len(topic: &str, qos: QoS, payload_len: usize) -> usize {
    2 + topic.len() + if qos == QoS::AtMostOnce { 0 } else { 2 } + payload_len
}

/// Appends one PUBLISH packet to `out`.
pub fn encode_publish(p: &Publish, out: &mut BytesMut) {
    let body = publish_body_len(&p.topic, p.qos, p.payload.len());
    out.reserve(body + 5);
    let mut first = 0x30 | ((p.qos as u8) << 1);
    if p.dup {
        first |= 0x08;
    }
    if p.retain {
        first |= 0x01;
    }
    out.put_u8(first);
    put_remaining_length(out, body);
    put_string(out, &p.topic);
    if let Some(pid) = p.pid {
        out.put_u16(pid);
    }
    out.put_slice(&p.payload);
}

/// Appends the encoding of `packet` to `out`.
///
/// The caller is responsible for only encoding well-formed packets (strings shorter
/// than 64 KiB, packet ids present where required); the broker builds every packet it
/// sends from values that already passed validation.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    match packet {
        Packet::Connect(c) => {
            let mut body = BytesMut::new();
            match c.protocol {
                ProtocolLevel::V311 => put_string(&mut body, "MQTT"),
                ProtocolLevel::V31 => put_string(&mut body, "MQIsdp"),
            }
            body.put_u8(c.protocol.level());
            let mut flags = 0u8;
            if c.clean_session {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            body.put_u8(flags);
            body.put_u16(c.keep_alive);
            put_string(&mut body, &c.client_id);
            if let Some(w) = &c.will {
                put_string(&mut body, &w.topic);
                put_binary(&mut body, &w.payload);
            }
            if let Some(u) = &c.username {
                put_string(&mut body, u);
            }
            if let Some(p) = &c.password {
                put_binary(&mut body, p);
            }
            out.put_u8(0x10);
            put_remaining_length(out, body.len());
            out.put_slice(&body);
        }
        Packet::ConnAck(a) => {
            out.put_u8(0x20);
            out.put_u8(2);
            out.put_u8(a.session_present as u8);
            out.put_u8(a.code as u8);
        }
        Packet::Publish(p) => encode_publish(p, out),
        Packet::PubAck(pid) => put_ack(out, 0x40, *pid),
        Packet::PubRec(pid) => put_ack(out, 0x50, *pid),
        Packet::PubRel(pid) => put_ack(out, 0x62, *pid),
        Packet::PubComp(pid) => put_ack(out, 0x70, *pid),
        Packet::Subscribe(s) => {
            let len = 2 + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
            out.put_u8(0x82);
            put_remaining_length(out, len);
            out.put_u16(s.pid);
            for (f, q) in &s.filters {
                put_string(out, f);
                out.put_u8(*q as u8);
            }
        }
        Packet::SubAck(s) => {
            out.put_u8(0x90);
            put_remaining_length(out, 2 + s.codes.len());
            out.put_u16(s.pid);
            for c in &s.codes {
                out.put_u8(match c {
                    SubAckCode::Granted(q) => *q as u8,
                    SubAckCode::Failure => 0x80,
                });
            }
        }
        Packet::Unsubscribe(u) => {
            let len = 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
            out.put_u8(0xa2);
            put_remaining_length(out, len);
            out.put_u16(u.pid);
            for f in &u.filters {
                put_string(out, f);
            }
        }
        Packet::UnsubAck(pid) => put_ack(out, 0xb0, *pid),
        Packet::PingReq => out.put_slice(&[0xc0, 0]),
        Packet::PingResp => out.put_slice(&[0xd0, 0]),
        Packet::Disconnect => out.put_slice(&[0xe0, 0]),
    }
}

#[cfg(test)]
mod first_byte_tests {
    use super::*;

    #[test]
    fn only_a_connect_header_may_come_first_mqtt_3_1_0_1() {
        assert_eq!(check_first_byte(b""), Ok(()));
        assert_eq!(check_first_byte(&[0x10, 0x0c]), Ok(()));
        // HTTP, a TLS ClientHello, a PUBLISH, a CONNECT with reserved flags set.
        for b in [b'G', 0x16, 0x30, 0x12] {
            assert_eq!(check_first_byte(&[b]), Err(ProtocolError::NotConnect(b)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: Packet) {
        let mut buf = BytesMut::new();
        encode(&p, &mut buf);
        let decoded = decode(&mut buf, usize::MAX).unwrap().unwrap();
        assert_eq!(decoded, p);
        assert!(buf.is_empty());
    }

    #[test]
    fn simple_roundtrips() {
        roundtrip(Packet::PingReq);
        roundtrip(Packet::PubRel(7));
        roundtrip(Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a/b".into(),
            pid: Some(10),
            payload: Bytes::from_static(b"25.5"),
        }));
    }

    #[test]
    fn remaining_length_boundaries() {
        for (len, bytes) in [
            (0usize, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xff, 0xff, 0x7f]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING_LENGTH, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = BytesMut::new();
            put_remaining_length(&mut out, len);
            assert_eq!(&out[..], &bytes[..]);
            let mut framed = vec![0x30];
            framed.extend_from_slice(&bytes);
            let h = peek_header(&framed).unwrap().unwrap();
            assert_eq!(h.remaining_len, len);
        }
        // A fifth length byte is malformed.
        assert_eq!(
            peek_header(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(ProtocolError::MalformedRemainingLength)
        );
    }

    #[test]
    fn oversized_packet_refused_before_body_arrives() {
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0x7f][..]);
        assert!(matches!(
            decode(&mut buf, 1024),
            Err(ProtocolError::PacketTooLarge { .. })
        ));
    }

    #[test]
    fn protocol_level_5_is_unsupported_mqtt_3_1_2_2() {
        let mut buf =
            BytesMut::from(&[0x10u8, 12, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0][..]);
        assert_eq!(
            decode(&mut buf, 1024),
            Err(ProtocolError::UnsupportedProtocolLevel(5))
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn qos() -> impl Strategy<Value = QoS> {
        (0u8..3).prop_map(|q| QoS::from_u8(q).unwrap())
    }

    fn string() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 é/_-]{0,20}"
    }

    fn topic_name() -> impl Strategy<Value = String> {
        "[a-z0-9$/é]{1,20}"
    }

    fn topic_filter() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof!["[a-z0-9]{0,5}", Just("+".to_string())], 1..5)
            .prop_flat_map(|levels| {
                let base = levels.join("/");
                let base = if base.is_empty() {
                    "e".to_string()
                } else {
                    base
                };
                prop_oneof![Just(base.clone()), Just(format!("{base}/#"))]
            })
    }

    fn bytes() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn pid() -> impl Strategy<Value = u16> {
        1u16..=u16::MAX
    }

    pub(crate) fn packet() -> impl Strategy<Value = Packet> {
        let connect = (
            any::<bool>(),
            any::<bool>(),
            any::<u16>(),
            string(),
            prop::option::of((topic_name(), bytes(), qos(), any::<bool>())),
            prop::option::of((string(), prop::option::of(bytes()))),
        )
            .prop_map(|(v31, clean_session, keep_alive, client_id, will, auth)| {
                let (username, password) = match auth {
                    Some((u, p)) => (Some(u), p),
                    None => (None, None),
                };
                Packet::Connect(Box::new(Connect {
                    protocol: if v31 {
                        ProtocolLevel::V31
                    } else {
                        ProtocolLevel::V311
                    },
                    clean_session,
                    keep_alive,
                    client_id,
                    will: will.map(|(t, p, qos, retain)| LastWill {
                        topic: t.into(),
                        payload: p,
                        qos,
                        retain,
                    }),
                    username,
                    password,
                }))
            });
        let publish = (
            any::<bool>(),
            qos(),
            any::<bool>(),
            topic_name(),
            pid(),
            bytes(),
        )
            .prop_map(|(dup, qos, retain, topic, pid, payload)| {
                let qos0 = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic: topic.into(),
                    pid: (!qos0).then_some(pid),
                    payload,
                })
            });
        let code = prop_oneof![
            qos().prop_map(SubAckCode::Granted),
            Just(SubAckCode::Failure)
        ];
        prop_oneof![
            connect,
            (any::<bool>(), 0u8..6).prop_map(|(sp, c)| Packet::ConnAck(ConnAck {
                session_present: sp,
                code: ConnectReturnCode::from_u8(c).unwrap()
            })),
            publish,
            pid().prop_map(Packet::PubAck),
            pid().prop_map(Packet::PubRec),
            pid().prop_map(Packet::PubRel),
            pid().prop_map(Packet::PubComp),
            (pid(), prop::collection::vec((topic_filter(), qos()), 1..5))
                .prop_map(|(pid, filters)| Packet::Subscribe(Subscribe { pid, filters })),
            (pid(), prop::collection::vec(code, 0..5))
                .prop_map(|(pid, codes)| Packet::SubAck(SubAck { pid, codes })),
            (pid(), prop::collection::vec(topic_filter(), 1..5))
                .prop_map(|(pid, filters)| Packet::Unsubscribe(Unsubscribe { pid, filters })),
            pid().prop_map(Packet::UnsubAck),
            Just(Packet::PingReq),
            Just(Packet::PingResp),
            Just(Packet::Disconnect),
        ]
    }

    proptest! {
        /// Every packet encodes and decodes back to itself.
        #[test]
        fn encode_decode_roundtrip(p in packet()) {
            let mut buf = BytesMut::new();
            encode(&p, &mut buf);
            let decoded = decode(&mut buf, usize::MAX).unwrap().unwrap();
            prop_assert_eq!(decoded, p);
            prop_assert!(buf.is_empty());
        }

        /// A stream of packets split at arbitrary points decodes to the same packets.
        #[test]
        fn split_stream_decodes(ps in prop::collection::vec(packet(), 1..8), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let mut all = BytesMut::new();
            for p in &ps { encode(p, &mut all); }
            let all = all.freeze();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(all.len() + 1)).collect();
            points.push(all.len());
            points.sort();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut start = 0;
            for end in points {
                buf.extend_from_slice(&all[start..end]);
                start = end;
                while let Some(p) = decode(&mut buf, usize::MAX).unwrap() { out.push(p); }
            }
            prop_assert_eq!(out, ps);
        }

        /// Arbitrary bytes never panic, and the decoder consumes only what it was given.
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            let before = buf.len();
            while let Ok(Some(_)) = decode(&mut buf, 1024) {
                prop_assert!(buf.len() < before);
            }
            prop_assert!(buf.len() <= before);
        }

        /// Every strict prefix of a valid packet asks for more bytes instead of failing.
        #[test]
        fn truncated_packets_wait_for_more(p in packet()) {
            let mut full = BytesMut::new();
            encode(&p, &mut full);
            for cut in 0..full.len() {
                let mut buf = BytesMut::from(&full[..cut]);
                prop_assert_eq!(decode(&mut buf, usize::MAX).unwrap(), None);
                prop_assert_eq!(buf.len(), cut);
            }
        }
    }
}
