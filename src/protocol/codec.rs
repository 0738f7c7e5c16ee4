//! Bytes in, packets out, and back: the MQTT 3.1, 3.1.1 and 5.0 wire format (sections 1.5, 2
//! and 3). Packets after CONNECT depend on the connection's version, so the decoder and the
//! encoder take it ([`decode_with`], [`encode_with`]); the plain [`decode`] and [`encode`]
//! speak 3.1.1.
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

/// Decodes one MQTT 3.1 / 3.1.1 packet from the front of `buf`, removing its bytes (a
/// CONNECT of any version decodes too: it names its own version).
///
/// Returns `Ok(None)` when more bytes are needed. A packet larger than `max_packet_size`
/// (fixed header included) is an error as soon as its header is seen.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, ProtocolError> {
    decode_with(buf, max_packet_size, ProtocolLevel::V311)
}

/// Decodes one packet of a connection speaking `level` from the front of `buf`.
pub fn decode_with(
    buf: &mut BytesMut,
    max_packet_size: usize,
    level: ProtocolLevel,
) -> Result<Option<Packet>, ProtocolError> {
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
    decode_body_with(header.first_byte, body, level).map(Some)
}

/// Decodes an MQTT 3.1 / 3.1.1 packet body given the first byte of its fixed header.
pub fn decode_body(first_byte: u8, body: Bytes) -> Result<Packet, ProtocolError> {
    decode_body_with(first_byte, body, ProtocolLevel::V311)
}

/// Decodes a packet body of a connection speaking `level`.
pub fn decode_body_with(
    first_byte: u8,
    body: Bytes,
    level: ProtocolLevel,
) -> Result<Packet, ProtocolError> {
    let packet_type = first_byte >> 4;
    let flags = first_byte & 0x0f;
    let v5 = level.is_v5();
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
            let raw = r.u8()?;
            if v5 {
                let properties = r.properties(CONNACK_PROPS, "CONNACK")?;
                Packet::ConnAck(ConnAck {
                    session_present: ack_flags & 1 == 1,
                    code: ConnectReturnCode::from_v5_reason(raw),
                    reason_code: Some(raw),
                    properties,
                })
            } else {
                let code = ConnectReturnCode::from_u8(raw)
                    .ok_or(ProtocolError::Malformed("unknown CONNACK return code"))?;
                Packet::ConnAck(ConnAck::new(ack_flags & 1 == 1, code))
            }
        }
        3 => Packet::Publish(decode_publish(flags, &mut r, v5)?),
        4 => {
            expect_flags(0, "PUBACK")?;
            decode_ack(&mut r, AckKind::PubAck, v5)?
        }
        5 => {
            expect_flags(0, "PUBREC")?;
            decode_ack(&mut r, AckKind::PubRec, v5)?
        }
        6 => {
            // [MQTT-3.6.1-1]
            expect_flags(0b0010, "PUBREL")?;
            decode_ack(&mut r, AckKind::PubRel, v5)?
        }
        7 => {
            expect_flags(0, "PUBCOMP")?;
            decode_ack(&mut r, AckKind::PubComp, v5)?
        }
        8 => {
            // [MQTT-3.8.1-1]
            expect_flags(0b0010, "SUBSCRIBE")?;
            let pid = r.packet_id()?;
            let properties = if v5 {
                r.properties(SUBSCRIBE_PROPS, "SUBSCRIBE")?
            } else {
                None
            };
            if let Some(p) = &properties {
                if p.subscription_identifiers.len() > 1 {
                    return Err(ProtocolError::DuplicateProperty(0x0b));
                }
            }
            let mut filters = Vec::new();
            let mut options = Vec::new();
            while r.has_remaining() {
                let filter = r.string()?;
                validate_topic_filter(&filter)?;
                let byte = r.u8()?;
                let qos = QoS::from_u8(byte & 0x03).ok_or(ProtocolError::InvalidQoS)?;
                if v5 {
                    // Bits 6 and 7 are reserved, retain handling 3 is malformed
                    // [MQTT-3.8.3-5].
                    if byte & 0xc0 != 0 {
                        return Err(ProtocolError::Malformed(
                            "SUBSCRIBE options reserved bits set [MQTT-3.8.3-5]",
                        ));
                    }
                    let retain_handling = match (byte >> 4) & 0x03 {
                        0 => RetainHandling::SendAtSubscribe,
                        1 => RetainHandling::SendIfNew,
                        2 => RetainHandling::DoNotSend,
                        _ => return Err(ProtocolError::Malformed("retain handling 3")),
                    };
                    options.push(SubscriptionOptions {
                        no_local: byte & 0x04 != 0,
                        retain_as_published: byte & 0x08 != 0,
                        retain_handling,
                    });
                } else if byte & 0xfc != 0 {
                    // Upper six bits are reserved [MQTT-3.8.3-4].
                    return Err(ProtocolError::Malformed(
                        "SUBSCRIBE options reserved bits set",
                    ));
                }
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                // [MQTT-3.8.3-3]
                return Err(ProtocolError::Malformed("SUBSCRIBE without topic filters"));
            }
            Packet::Subscribe(Subscribe {
                pid,
                filters,
                options,
                properties,
            })
        }
        9 => {
            expect_flags(0, "SUBACK")?;
            let pid = r.packet_id()?;
            let properties = if v5 {
                r.properties(ACK_PROPS, "SUBACK")?
            } else {
                None
            };
            let mut codes = Vec::new();
            while r.has_remaining() {
                codes.push(match r.u8()? {
                    0x80 => SubAckCode::Failure,
                    v @ 0..=2 => SubAckCode::Granted(QoS::from_u8(v).unwrap_or_default()),
                    v if v5 && v > 0x80 => SubAckCode::Refused(v),
                    _ => return Err(ProtocolError::Malformed("bad SUBACK code")),
                });
            }
            Packet::SubAck(SubAck {
                pid,
                codes,
                properties,
            })
        }
        10 => {
            // [MQTT-3.10.1-1]
            expect_flags(0b0010, "UNSUBSCRIBE")?;
            let pid = r.packet_id()?;
            let properties = if v5 {
                r.properties(USER_PROPS, "UNSUBSCRIBE")?
            } else {
                None
            };
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
            Packet::Unsubscribe(Unsubscribe {
                pid,
                filters,
                properties,
            })
        }
        11 => {
            expect_flags(0, "UNSUBACK")?;
            let pid = r.packet_id()?;
            let mut ack = UnsubAck::new(pid);
            if v5 {
                ack.properties = r.properties(ACK_PROPS, "UNSUBACK")?;
                while r.has_remaining() {
                    ack.codes.push(r.u8()?);
                }
            }
            Packet::UnsubAck(ack)
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
            if v5 && r.has_remaining() {
                let reason = r.u8()?;
                let properties = if r.has_remaining() {
                    r.properties(DISCONNECT_PROPS, "DISCONNECT")?
                } else {
                    None
                };
                if reason == reason::SUCCESS && properties.is_none() {
                    Packet::Disconnect
                } else {
                    Packet::DisconnectWithReason(Disconnect { reason, properties })
                }
            } else {
                Packet::Disconnect
            }
        }
        15 if v5 => {
            expect_flags(0, "AUTH")?;
            let (reason, properties) = if r.has_remaining() {
                let reason = r.u8()?;
                let properties = if r.has_remaining() {
                    r.properties(AUTH_PROPS, "AUTH")?
                } else {
                    None
                };
                (reason, properties)
            } else {
                (reason::SUCCESS, None)
            };
            Packet::Auth(Auth { reason, properties })
        }
        other => return Err(ProtocolError::InvalidPacketType(other)),
    };
    if r.has_remaining() {
        return Err(ProtocolError::TrailingBytes(packet.name()));
    }
    Ok(packet)
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: a packet id and, in MQTT 5, an optional reason code
/// and properties (a remaining length of 2 means success without properties, 3.4.2.1).
fn decode_ack(r: &mut Reader, kind: AckKind, v5: bool) -> Result<Packet, ProtocolError> {
    let pid = r.packet_id()?;
    let (reason, properties) = if v5 && r.has_remaining() {
        let reason = r.u8()?;
        let properties = if r.has_remaining() {
            r.properties(ACK_PROPS, "acknowledgement")?
        } else {
            None
        };
        (reason, properties)
    } else {
        (reason::SUCCESS, None)
    };
    if reason == reason::SUCCESS && properties.is_none() {
        return Ok(kind.plain(pid));
    }
    Ok(Packet::Ack(Ack {
        kind,
        pid,
        reason,
        properties,
    }))
}

fn decode_connect(r: &mut Reader) -> Result<Connect, ProtocolError> {
    let name = r.string()?;
    let level = r.u8()?;
    // [MQTT-3.1.2-1]: a wrong protocol name is closed without CONNACK.
    // Bit 7 on 3.1 / 3.1.1 marks a bridge (a Mosquitto extension that Mosquitto, EMQX and
    // others send with `try_private`); MQTT 5 bridges use No Local instead.
    let bridge =
        level & 0x80 != 0 && matches!((name.as_str(), level & 0x7f), ("MQTT", 4) | ("MQIsdp", 3));
    let protocol = match (name.as_str(), level & if bridge { 0x7f } else { 0xff }) {
        ("MQTT", 4) => ProtocolLevel::V311,
        ("MQTT", 5) => ProtocolLevel::V5,
        ("MQIsdp", 3) => ProtocolLevel::V31,
        ("MQTT", _) | ("MQIsdp", _) => {
            // [MQTT-3.1.2-2]: answered with CONNACK 0x01.
            return Err(ProtocolError::UnsupportedProtocolLevel(level));
        }
        _ => return Err(ProtocolError::InvalidProtocolName(name)),
    };
    let v5 = protocol.is_v5();
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
    if password_flag && !username_flag && !v5 {
        // [MQTT-3.1.2-22]; MQTT 5 allows a password without a user name.
        return Err(ProtocolError::Malformed(
            "password flag set without user name flag",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        r.properties(CONNECT_PROPS, "CONNECT")?
    } else {
        None
    };
    if let Some(p) = &properties {
        // 0 is a protocol error for both (3.1.2.11.3, 3.1.2.11.4).
        if p.receive_maximum == Some(0) {
            return Err(ProtocolError::ProtocolViolation("receive maximum 0"));
        }
        if p.maximum_packet_size == Some(0) {
            return Err(ProtocolError::ProtocolViolation("maximum packet size 0"));
        }
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(ProtocolError::ProtocolViolation(
                "authentication data without authentication method",
            ));
        }
    }
    // [MQTT-3.1.3-4]: the client id is a UTF-8 string.
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            r.properties(WILL_PROPS, "will properties")?
        } else {
            None
        };
        let topic = r.string()?;
        validate_topic_name(&topic)?;
        let payload = r.binary()?;
        Some(LastWill {
            topic: Arc::from(topic),
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
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
        properties,
        bridge,
    })
}

fn decode_publish(flags: u8, r: &mut Reader, v5: bool) -> Result<Publish, ProtocolError> {
    let dup = flags & 0x08 != 0;
    // [MQTT-3.3.1-4]
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(ProtocolError::InvalidQoS)?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        // [MQTT-3.3.1-2]
        return Err(ProtocolError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string()?;
    let pid = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    let properties = if v5 {
        r.properties_value(PUBLISH_PROPS, "PUBLISH")?.map(Arc::new)
    } else {
        None
    };
    let alias = properties.as_ref().and_then(|p| p.topic_alias);
    // MQTT 5: an empty topic name is allowed when a topic alias stands for it (3.3.2.3.4);
    // the engine resolves it. Otherwise [MQTT-3.3.2-2].
    if !(topic.is_empty() && alias.is_some()) {
        validate_topic_name(&topic)?;
    }
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic: Arc::from(topic),
        pid,
        payload,
        properties,
    })
}

/// Property sets allowed per packet (section 2.2.2.2), as bit masks over identifiers.
const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    m
}
const PUBLISH_PROPS: u64 = mask(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x0b, 0x23, 0x26]);
const WILL_PROPS: u64 = mask(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26]);
const CONNECT_PROPS: u64 = mask(&[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27]);
const CONNACK_PROPS: u64 = mask(&[
    0x11, 0x12, 0x13, 0x15, 0x16, 0x1a, 0x1c, 0x1f, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29,
    0x2a,
]);
const ACK_PROPS: u64 = mask(&[0x1f, 0x26]);
const SUBSCRIBE_PROPS: u64 = mask(&[0x0b, 0x26]);
const USER_PROPS: u64 = mask(&[0x26]);
const DISCONNECT_PROPS: u64 = mask(&[0x11, 0x1c, 0x1f, 0x26]);
const AUTH_PROPS: u64 = mask(&[0x15, 0x16, 0x1f, 0x26]);

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

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        if self.buf.remaining() < 4 {
            return Err(ProtocolError::Truncated);
        }
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer (section 1.5.5): at most four bytes.
    fn varint(&mut self) -> Result<u32, ProtocolError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtocolError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
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

    /// Like [`Reader::string`], but sharing the packet's buffer instead of copying.
    fn shared_string(&mut self) -> Result<ByteString, ProtocolError> {
        let raw = self.binary()?;
        if raw.contains(&0) {
            return Err(ProtocolError::NullCharacter);
        }
        ByteString::try_from(raw).map_err(|_| ProtocolError::InvalidUtf8)
    }

    fn flag(&mut self) -> Result<u8, ProtocolError> {
        match self.u8()? {
            v @ (0 | 1) => Ok(v),
            _ => Err(ProtocolError::ProtocolViolation(
                "a 0-or-1 property has another value",
            )),
        }
    }

    /// An MQTT 5 property list (section 2.2.2): its length, then properties, each allowed
    /// in `allowed` and, except user properties and subscription identifiers, at most once.
    /// `None` when the list is empty.
    fn properties(
        &mut self,
        allowed: u64,
        packet: &'static str,
    ) -> Result<Option<Box<Properties>>, ProtocolError> {
        Ok(self.properties_value(allowed, packet)?.map(Box::new))
    }

    /// [`Reader::properties`] without the box (a PUBLISH puts them in an `Arc` at once).
    fn properties_value(
        &mut self,
        allowed: u64,
        packet: &'static str,
    ) -> Result<Option<Properties>, ProtocolError> {
        let len = self.varint()? as usize;
        if len == 0 {
            return Ok(None);
        }
        if self.buf.remaining() < len {
            return Err(ProtocolError::Malformed(
                "property length beyond the end of the packet",
            ));
        }
        let mut r = Reader {
            buf: self.buf.split_to(len),
        };
        let mut p = Properties::default();
        let mut seen = 0u64;
        while r.has_remaining() {
            let id = r.varint()?;
            let bit = if id < 64 { 1u64 << id } else { 0 };
            let id = u8::try_from(id).unwrap_or(0xff);
            if allowed & bit == 0 {
                return Err(ProtocolError::PropertyNotAllowed { id, packet });
            }
            if seen & bit != 0 && id != 0x26 && id != 0x0b {
                return Err(ProtocolError::DuplicateProperty(id));
            }
            seen |= bit;
            match id {
                0x01 => p.payload_format_indicator = Some(r.flag()?),
                0x02 => p.message_expiry_interval = Some(r.u32()?),
                0x03 => p.content_type = Some(r.string()?),
                0x08 => {
                    let topic = r.string()?;
                    // [MQTT-3.3.2-14]: a topic name, without wildcards.
                    validate_topic_name(&topic)?;
                    p.response_topic = Some(topic);
                }
                0x09 => p.correlation_data = Some(r.binary()?),
                0x0b => {
                    let v = r.varint()?;
                    if v == 0 {
                        // 3.3.2.3.8 / 3.8.2.1.2
                        return Err(ProtocolError::ProtocolViolation(
                            "subscription identifier 0",
                        ));
                    }
                    p.subscription_identifiers.push(v);
                }
                0x11 => p.session_expiry_interval = Some(r.u32()?),
                0x12 => p.assigned_client_identifier = Some(r.string()?),
                0x13 => p.server_keep_alive = Some(r.u16()?),
                0x15 => p.authentication_method = Some(r.string()?),
                0x16 => p.authentication_data = Some(r.binary()?),
                0x17 => p.request_problem_information = Some(r.flag()?),
                0x18 => p.will_delay_interval = Some(r.u32()?),
                0x19 => p.request_response_information = Some(r.flag()?),
                0x1a => p.response_information = Some(r.string()?),
                0x1c => p.server_reference = Some(r.string()?),
                0x1f => p.reason_string = Some(r.string()?),
                0x21 => p.receive_maximum = Some(r.u16()?),
                0x22 => p.topic_alias_maximum = Some(r.u16()?),
                0x23 => p.topic_alias = Some(r.u16()?),
                0x24 => p.maximum_qos = Some(r.flag()?),
                0x25 => p.retain_available = Some(r.flag()?),
                0x26 => {
                    let k = r.shared_string()?;
                    let v = r.shared_string()?;
                    p.user_properties.push((k, v));
                }
                0x27 => p.maximum_packet_size = Some(r.u32()?),
                0x28 => p.wildcard_subscription_available = Some(r.flag()?),
                0x29 => p.subscription_identifier_available = Some(r.flag()?),
                0x2a => p.shared_subscription_available = Some(r.flag()?),
                _ => return Err(ProtocolError::PropertyNotAllowed { id, packet }),
            }
        }
        Ok(Some(p))
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

/// Bytes the variable byte integer encoding of `len` takes.
fn varint_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
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

/// Size of the encoded property list (without its length prefix).
fn properties_len(p: &Properties) -> usize {
    let s = |v: &Option<String>| v.as_ref().map_or(0, |v| 3 + v.len());
    let b = |v: &Option<Bytes>| v.as_ref().map_or(0, |v| 3 + v.len());
    let n8 = |v: Option<u8>| v.map_or(0, |_| 2);
    let n16 = |v: Option<u16>| v.map_or(0, |_| 3);
    let n32 = |v: Option<u32>| v.map_or(0, |_| 5);
    n8(p.payload_format_indicator)
        + n32(p.message_expiry_interval)
        + s(&p.content_type)
        + s(&p.response_topic)
        + b(&p.correlation_data)
        + p.subscription_identifiers
            .iter()
            .map(|&v| 1 + varint_len(v as usize))
            .sum::<usize>()
        + n32(p.session_expiry_interval)
        + s(&p.assigned_client_identifier)
        + n16(p.server_keep_alive)
        + s(&p.authentication_method)
        + b(&p.authentication_data)
        + n8(p.request_problem_information)
        + n32(p.will_delay_interval)
        + n8(p.request_response_information)
        + s(&p.response_information)
        + s(&p.server_reference)
        + s(&p.reason_string)
        + n16(p.receive_maximum)
        + n16(p.topic_alias_maximum)
        + n16(p.topic_alias)
        + n8(p.maximum_qos)
        + n8(p.retain_available)
        + p.user_properties
            .iter()
            .map(|(k, v)| 5 + k.len() + v.len())
            .sum::<usize>()
        + n32(p.maximum_packet_size)
        + n8(p.wildcard_subscription_available)
        + n8(p.subscription_identifier_available)
        + n8(p.shared_subscription_available)
}

/// Size of a property list with its length prefix (1 byte when there is none).
fn properties_field_len(p: Option<&Properties>) -> usize {
    let len = p.map_or(0, properties_len);
    varint_len(len) + len
}

/// Appends a property list with its length prefix.
fn put_properties(out: &mut BytesMut, p: Option<&Properties>) {
    let Some(p) = p else {
        out.put_u8(0);
        return;
    };
    put_remaining_length(out, properties_len(p));
    let s = |out: &mut BytesMut, id: u8, v: &Option<String>| {
        if let Some(v) = v {
            out.put_u8(id);
            put_string(out, v);
        }
    };
    let b = |out: &mut BytesMut, id: u8, v: &Option<Bytes>| {
        if let Some(v) = v {
            out.put_u8(id);
            put_binary(out, v);
        }
    };
    let n8 = |out: &mut BytesMut, id: u8, v: Option<u8>| {
        if let Some(v) = v {
            out.put_u8(id);
            out.put_u8(v);
        }
    };
    let n16 = |out: &mut BytesMut, id: u8, v: Option<u16>| {
        if let Some(v) = v {
            out.put_u8(id);
            out.put_u16(v);
        }
    };
    let n32 = |out: &mut BytesMut, id: u8, v: Option<u32>| {
        if let Some(v) = v {
            out.put_u8(id);
            out.put_u32(v);
        }
    };
    n8(out, 0x01, p.payload_format_indicator);
    n32(out, 0x02, p.message_expiry_interval);
    s(out, 0x03, &p.content_type);
    s(out, 0x08, &p.response_topic);
    b(out, 0x09, &p.correlation_data);
    for &v in &p.subscription_identifiers {
        out.put_u8(0x0b);
        put_remaining_length(out, v as usize);
    }
    n32(out, 0x11, p.session_expiry_interval);
    s(out, 0x12, &p.assigned_client_identifier);
    n16(out, 0x13, p.server_keep_alive);
    s(out, 0x15, &p.authentication_method);
    b(out, 0x16, &p.authentication_data);
    n8(out, 0x17, p.request_problem_information);
    n32(out, 0x18, p.will_delay_interval);
    n8(out, 0x19, p.request_response_information);
    s(out, 0x1a, &p.response_information);
    s(out, 0x1c, &p.server_reference);
    s(out, 0x1f, &p.reason_string);
    n16(out, 0x21, p.receive_maximum);
    n16(out, 0x22, p.topic_alias_maximum);
    n16(out, 0x23, p.topic_alias);
    n8(out, 0x24, p.maximum_qos);
    n8(out, 0x25, p.retain_available);
    for (k, v) in &p.user_properties {
        out.put_u8(0x26);
        put_string(out, k);
        put_string(out, v);
    }
    n32(out, 0x27, p.maximum_packet_size);
    n8(out, 0x28, p.wildcard_subscription_available);
    n8(out, 0x29, p.subscription_identifier_available);
    n8(out, 0x2a, p.shared_subscription_available);
}

/// Appends an MQTT 5 property list with its length prefix (for storage, which keeps a
/// message's properties as they travel on the wire).
pub fn encode_properties(p: &Properties, out: &mut BytesMut) {
    put_properties(out, Some(p));
}

/// Decodes what [`encode_properties`] wrote (any property allowed).
pub fn decode_properties(b: Bytes) -> Result<Properties, ProtocolError> {
    let mut r = Reader { buf: b };
    let p = r.properties_value(u64::MAX, "stored properties")?;
    if r.has_remaining() {
        return Err(ProtocolError::TrailingBytes("properties"));
    }
    Ok(p.unwrap_or_default())
}

/// Size in bytes of the body (variable header + payload) of a 3.1.1 PUBLISH.
pub fn publish_body_len(topic: &str, qos: QoS, payload_len: usize) -> usize {
    2 + topic.len() + if qos == QoS::AtMostOnce { 0 } else { 2 } + payload_len
}

/// Size in bytes of a whole PUBLISH (fixed header included) as sent to a client of `level`:
/// what is compared with the client's maximum packet size [MQTT-3.1.2-24].
pub fn publish_packet_len(p: &Publish, level: ProtocolLevel) -> usize {
    let mut body = publish_body_len(&p.topic, p.qos, p.payload.len());
    if level.is_v5() {
        body += properties_field_len(p.properties.as_deref());
    }
    1 + varint_len(body) + body
}

/// Appends one 3.1.1 PUBLISH packet to `out`.
pub fn encode_publish(p: &Publish, out: &mut BytesMut) {
    encode_publish_with(p, ProtocolLevel::V311, out)
}

/// Appends one PUBLISH packet for a client of `level` (properties only for MQTT 5).
pub fn encode_publish_with(p: &Publish, level: ProtocolLevel, out: &mut BytesMut) {
    let v5 = level.is_v5();
    let mut body = publish_body_len(&p.topic, p.qos, p.payload.len());
    if v5 {
        body += properties_field_len(p.properties.as_deref());
    }
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
    if v5 {
        put_properties(out, p.properties.as_deref());
    }
    out.put_slice(&p.payload);
}

/// Appends the 3.1.1 encoding of `packet` to `out` (a CONNECT in its own version).
///
/// The caller is responsible for only encoding well-formed packets (strings shorter
/// than 64 KiB, packet ids present where required); the broker builds every packet it
/// sends from values that already passed validation.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    encode_with(packet, ProtocolLevel::V311, out)
}

/// Appends an MQTT 5 "reason code + properties" tail of an acknowledgement, DISCONNECT or
/// AUTH packet: omitted entirely when the reason is success and there are no properties.
fn put_reason_tail(
    out: &mut BytesMut,
    first: u8,
    head: &[u8],
    reason: u8,
    props: Option<&Properties>,
) {
    let short = reason == reason::SUCCESS && props.is_none();
    let len = head.len()
        + if short {
            0
        } else {
            1 + if props.is_some() {
                properties_field_len(props)
            } else {
                0
            }
        };
    out.put_u8(first);
    put_remaining_length(out, len);
    out.put_slice(head);
    if !short {
        out.put_u8(reason);
        if props.is_some() {
            put_properties(out, props);
        }
    }
}

/// Appends the encoding of `packet` for a connection speaking `level` to `out`; MQTT 5
/// fields are left out for 3.1 / 3.1.1 (an MQTT 5 acknowledgement becomes the plain one).
pub fn encode_with(packet: &Packet, level: ProtocolLevel, out: &mut BytesMut) {
    let v5 = level.is_v5();
    match packet {
        Packet::Connect(c) => {
            let cv5 = c.protocol.is_v5();
            let mut body = BytesMut::new();
            match c.protocol {
                ProtocolLevel::V311 | ProtocolLevel::V5 => put_string(&mut body, "MQTT"),
                ProtocolLevel::V31 => put_string(&mut body, "MQIsdp"),
            }
            body.put_u8(c.protocol.level() | if c.bridge && !cv5 { 0x80 } else { 0 });
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
            if cv5 {
                put_properties(&mut body, c.properties.as_deref());
            }
            put_string(&mut body, &c.client_id);
            if let Some(w) = &c.will {
                if cv5 {
                    put_properties(&mut body, w.properties.as_deref());
                }
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
            if v5 {
                let props = a.properties.as_deref();
                put_remaining_length(out, 2 + properties_field_len(props));
                out.put_u8(a.session_present as u8);
                out.put_u8(a.v5_reason());
                put_properties(out, props);
            } else {
                out.put_u8(2);
                out.put_u8(a.session_present as u8);
                out.put_u8(a.code as u8);
            }
        }
        Packet::Publish(p) => encode_publish_with(p, level, out),
        Packet::PubAck(pid) => put_ack(out, 0x40, *pid),
        Packet::PubRec(pid) => put_ack(out, 0x50, *pid),
        Packet::PubRel(pid) => put_ack(out, 0x62, *pid),
        Packet::PubComp(pid) => put_ack(out, 0x70, *pid),
        Packet::Ack(a) => {
            let first = match a.kind {
                AckKind::PubAck => 0x40,
                AckKind::PubRec => 0x50,
                AckKind::PubRel => 0x62,
                AckKind::PubComp => 0x70,
            };
            if v5 {
                put_reason_tail(
                    out,
                    first,
                    &a.pid.to_be_bytes(),
                    a.reason,
                    a.properties.as_deref(),
                );
            } else {
                put_ack(out, first, a.pid);
            }
        }
        Packet::Subscribe(s) => {
            let props = if v5 {
                properties_field_len(s.properties.as_deref())
            } else {
                0
            };
            let len = 2 + props + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
            out.put_u8(0x82);
            put_remaining_length(out, len);
            out.put_u16(s.pid);
            if v5 {
                put_properties(out, s.properties.as_deref());
            }
            for (i, (f, q)) in s.filters.iter().enumerate() {
                put_string(out, f);
                let mut byte = *q as u8;
                if v5 {
                    let o = s.options_of(i);
                    byte |= (o.no_local as u8) << 2
                        | (o.retain_as_published as u8) << 3
                        | (o.retain_handling as u8) << 4;
                }
                out.put_u8(byte);
            }
        }
        Packet::SubAck(s) => {
            let props = if v5 {
                properties_field_len(s.properties.as_deref())
            } else {
                0
            };
            out.put_u8(0x90);
            put_remaining_length(out, 2 + props + s.codes.len());
            out.put_u16(s.pid);
            if v5 {
                put_properties(out, s.properties.as_deref());
            }
            for c in &s.codes {
                out.put_u8(c.byte(level));
            }
        }
        Packet::Unsubscribe(u) => {
            let props = if v5 {
                properties_field_len(u.properties.as_deref())
            } else {
                0
            };
            let len = 2 + props + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
            out.put_u8(0xa2);
            put_remaining_length(out, len);
            out.put_u16(u.pid);
            if v5 {
                put_properties(out, u.properties.as_deref());
            }
            for f in &u.filters {
                put_string(out, f);
            }
        }
        Packet::UnsubAck(u) => {
            if v5 {
                let props = u.properties.as_deref();
                out.put_u8(0xb0);
                put_remaining_length(out, 2 + properties_field_len(props) + u.codes.len());
                out.put_u16(u.pid);
                put_properties(out, props);
                out.put_slice(&u.codes);
            } else {
                put_ack(out, 0xb0, u.pid);
            }
        }
        Packet::PingReq => out.put_slice(&[0xc0, 0]),
        Packet::PingResp => out.put_slice(&[0xd0, 0]),
        Packet::Disconnect => out.put_slice(&[0xe0, 0]),
        Packet::DisconnectWithReason(d) => {
            if v5 {
                put_reason_tail(out, 0xe0, &[], d.reason, d.properties.as_deref());
            } else {
                // 3.1.1 has no server DISCONNECT: nothing is sent, the socket just closes.
            }
        }
        Packet::Auth(a) => {
            if v5 {
                put_reason_tail(out, 0xf0, &[], a.reason, a.properties.as_deref());
            }
        }
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
            properties: None,
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
    fn bridge_bit_on_3_1_and_3_1_1_marks_a_bridge() {
        for (name, level, protocol) in [
            (&b"MQTT"[..], 0x84u8, ProtocolLevel::V311),
            (&b"MQIsdp"[..], 0x83, ProtocolLevel::V31),
        ] {
            let mut body = vec![0u8, name.len() as u8];
            body.extend_from_slice(name);
            body.extend_from_slice(&[level, 2, 0, 60, 0, 1, b'b']);
            let mut buf = BytesMut::from(&[0x10u8, body.len() as u8][..]);
            buf.extend_from_slice(&body);
            let Ok(Some(Packet::Connect(c))) = decode(&mut buf, 1024) else {
                panic!("level {level:#x} decodes");
            };
            assert!(c.bridge);
            assert_eq!(c.protocol, protocol);
            let mut out = BytesMut::new();
            encode(&Packet::Connect(c.clone()), &mut out);
            assert_eq!(
                decode(&mut out, 1024),
                Ok(Some(Packet::Connect(c))),
                "round trip"
            );
        }
        // Bit 7 does not make an unknown level known.
        let mut buf = BytesMut::from(
            &[
                0x10u8, 13, 0, 4, b'M', b'Q', b'T', b'T', 0x86, 2, 0, 60, 0, 1, b'b',
            ][..],
        );
        assert_eq!(
            decode(&mut buf, 1024),
            Err(ProtocolError::UnsupportedProtocolLevel(0x86))
        );
    }

    #[test]
    fn protocol_level_6_is_unsupported_mqtt_3_1_2_2() {
        let mut buf =
            BytesMut::from(&[0x10u8, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 0][..]);
        assert_eq!(
            decode(&mut buf, 1024),
            Err(ProtocolError::UnsupportedProtocolLevel(6))
        );
    }
}

/// Strategies shared by the 3.1.1 and the MQTT 5 codec tests (`super::codec_v5_tests`).
#[cfg(test)]
pub(super) mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes `ps` for `level`, feeds the bytes to the decoder in pieces cut at `cuts`, and
    /// returns what it decoded and how many bytes it left in its buffer.
    pub(crate) fn decode_split_stream(
        ps: &[Packet],
        cuts: &[prop::sample::Index],
        level: ProtocolLevel,
    ) -> (Vec<Packet>, usize) {
        let mut all = BytesMut::new();
        for p in ps {
            encode_with(p, level, &mut all);
        }
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
            while let Some(p) = decode_with(&mut buf, usize::MAX, level).unwrap() {
                out.push(p);
            }
        }
        (out, buf.len())
    }

    pub(crate) fn qos() -> impl Strategy<Value = QoS> {
        (0u8..3).prop_map(|q| QoS::from_u8(q).unwrap())
    }

    pub(crate) fn string() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 é/_-]{0,20}"
    }

    pub(crate) fn topic_name() -> impl Strategy<Value = String> {
        "[a-z0-9$/é]{1,20}"
    }

    pub(crate) fn topic_filter() -> impl Strategy<Value = String> {
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

    pub(crate) fn bytes() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    pub(crate) fn pid() -> impl Strategy<Value = u16> {
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
                    bridge: false,
                    properties: None,
                    protocol: if v31 {
                        ProtocolLevel::V31
                    } else {
                        ProtocolLevel::V311
                    },
                    clean_session,
                    keep_alive,
                    client_id,
                    will: will.map(|(t, p, qos, retain)| LastWill {
                        properties: None,
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
                    properties: None,
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
                properties: None,
                reason_code: None,
                session_present: sp,
                code: ConnectReturnCode::from_u8(c).unwrap()
            })),
            publish,
            pid().prop_map(Packet::PubAck),
            pid().prop_map(Packet::PubRec),
            pid().prop_map(Packet::PubRel),
            pid().prop_map(Packet::PubComp),
            (pid(), prop::collection::vec((topic_filter(), qos()), 1..5)).prop_map(
                |(pid, filters)| Packet::Subscribe(Subscribe {
                    options: Vec::new(),
                    properties: None,
                    pid,
                    filters
                })
            ),
            (pid(), prop::collection::vec(code, 0..5)).prop_map(|(pid, codes)| Packet::SubAck(
                SubAck {
                    properties: None,
                    pid,
                    codes
                }
            )),
            (pid(), prop::collection::vec(topic_filter(), 1..5)).prop_map(|(pid, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    properties: None,
                    pid,
                    filters,
                })
            }),
            pid().prop_map(|p| Packet::UnsubAck(UnsubAck::new(p))),
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
            let (out, left) = decode_split_stream(&ps, &cuts, ProtocolLevel::V311);
            prop_assert_eq!(out, ps);
            prop_assert_eq!(left, 0);
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
