//! Binary encoding of stored records. Hand-written and versioned by a leading byte, so the
//! format is explicit and a corrupt record is reported, never trusted.

use super::{SessionRecord, StorageError, StoredMessage};
use crate::model::{Message, MessageProps, OutboundState, Subscription};
use crate::protocol::codec::{decode_properties, encode_properties};
use crate::protocol::{QoS, RetainHandling, SubscriptionOptions};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Records of 3.1.1 messages and sessions.
const VERSION: u8 = 1;
/// Records with MQTT 5 extras: message properties, expiry and shared-subscription origin;
/// subscription options and identifiers, session expiry interval.
const VERSION_5: u8 = 2;

fn corrupt(table: &'static str, reason: &str) -> StorageError {
    StorageError::Corrupt {
        table,
        reason: reason.to_owned(),
    }
}

fn state_byte(s: Option<OutboundState>) -> u8 {
    match s {
        None => 0,
        Some(OutboundState::AwaitPubAck) => 1,
        Some(OutboundState::AwaitPubRec) => 2,
        Some(OutboundState::AwaitPubComp) => 3,
    }
}

/// Encodes a message with its optional packet id and state.
pub fn encode_message(m: &Message, pid: Option<u16>, state: Option<OutboundState>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message_into(&mut out, m, pid, state);
    out
}

/// [`encode_message`] into `out`, replacing what it held (the writer reuses one buffer for a
/// whole batch).
pub fn encode_message_into(
    out: &mut Vec<u8>,
    m: &Message,
    pid: Option<u16>,
    state: Option<OutboundState>,
) {
    out.clear();
    out.reserve(10 + m.topic.len() + m.payload.len());
    out.put_u8(if m.props.is_some() {
        VERSION_5
    } else {
        VERSION
    });
    out.put_u8(m.qos as u8);
    out.put_u8(m.retain as u8);
    out.put_u16(pid.unwrap_or(0));
    out.put_u8(state_byte(state));
    out.put_u16(m.topic.len() as u16);
    out.put_slice(m.topic.as_bytes());
    if let Some(p) = &m.props {
        let extras = encode_props(p);
        out.put_u32(extras.len() as u32);
        out.put_slice(&extras);
    }
    out.put_slice(&m.payload);
}

fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    let s = s.unwrap_or("");
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// Expiry as wall-clock milliseconds (0: none), the shared filter, the origin, then the
/// properties in their wire encoding.
fn encode_props(p: &MessageProps) -> BytesMut {
    let mut out = BytesMut::new();
    let expires_ms = p
        .expires_at
        .map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64)
        .map_or(0, |ms| ms.max(1));
    out.put_u64(expires_ms);
    put_opt_str(&mut out, p.shared.as_deref());
    put_opt_str(&mut out, p.origin.as_deref());
    encode_properties(
        p.properties.as_deref().unwrap_or(&Default::default()),
        &mut out,
    );
    out
}

fn take_opt_str(table: &'static str, b: &mut &[u8]) -> Result<Option<Arc<str>>, StorageError> {
    let s = take_str(table, b)?;
    Ok((!s.is_empty()).then(|| Arc::from(s)))
}

fn decode_props(table: &'static str, mut b: &[u8]) -> Result<MessageProps, StorageError> {
    if b.remaining() < 8 {
        return Err(corrupt(table, "truncated message extras"));
    }
    let expires_ms = b.get_u64();
    let shared = take_opt_str(table, &mut b)?;
    let origin = take_opt_str(table, &mut b)?;
    let properties = decode_properties(Bytes::copy_from_slice(b))
        .map_err(|e| corrupt(table, &format!("message properties: {e}")))?;
    Ok(MessageProps {
        properties: (!properties.is_empty()).then(|| Arc::new(properties)),
        expires_at: (expires_ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(expires_ms)),
        origin,
        shared,
    })
}

/// Decodes what [`encode_message`] wrote.
pub fn decode_message(
    table: &'static str,
    mut b: &[u8],
) -> Result<(Message, Option<u16>, Option<OutboundState>), StorageError> {
    if b.remaining() < 8 {
        return Err(corrupt(table, "bad header"));
    }
    let version = b.get_u8();
    if version != VERSION && version != VERSION_5 {
        return Err(corrupt(table, "bad header"));
    }
    let qos = QoS::from_u8(b.get_u8()).ok_or_else(|| corrupt(table, "bad QoS"))?;
    let retain = b.get_u8() == 1;
    let pid = match b.get_u16() {
        0 => None,
        p => Some(p),
    };
    let state = match b.get_u8() {
        0 => None,
        1 => Some(OutboundState::AwaitPubAck),
        2 => Some(OutboundState::AwaitPubRec),
        3 => Some(OutboundState::AwaitPubComp),
        _ => return Err(corrupt(table, "bad state")),
    };
    let len = b.get_u16() as usize;
    if b.remaining() < len {
        return Err(corrupt(table, "truncated topic"));
    }
    let topic = std::str::from_utf8(&b[..len]).map_err(|_| corrupt(table, "topic is not UTF-8"))?;
    let mut rest = &b[len..];
    let mut props = None;
    if version == VERSION_5 {
        if rest.remaining() < 4 {
            return Err(corrupt(table, "truncated message extras"));
        }
        let n = rest.get_u32() as usize;
        if rest.remaining() < n {
            return Err(corrupt(table, "truncated message extras"));
        }
        props = Some(Arc::new(decode_props(table, &rest[..n])?));
        rest = &rest[n..];
    }
    let mut message = Message::new(topic, Bytes::copy_from_slice(rest), qos, retain);
    message.props = props;
    Ok((message, pid, state))
}

/// Decodes a stored outbound message under its sequence number.
pub fn decode_stored(seq: u64, b: &[u8]) -> Result<StoredMessage, StorageError> {
    let (message, pid, state) = decode_message("messages", b)?;
    Ok(StoredMessage {
        seq,
        message,
        pid,
        state,
    })
}

/// Encodes a session record.
pub fn encode_session(r: &SessionRecord) -> Vec<u8> {
    let mut out = Vec::new();
    encode_session_into(&mut out, r);
    out
}

/// [`encode_session`] into `out`, replacing what it held.
pub fn encode_session_into(out: &mut Vec<u8>, r: &SessionRecord) {
    out.clear();
    out.put_u8(VERSION_5);
    out.put_u64(r.last_seen_ms);
    match &r.username {
        Some(u) => {
            out.put_u8(1);
            out.put_u16(u.len() as u16);
            out.put_slice(u.as_bytes());
        }
        None => out.put_u8(0),
    }
    out.put_u32(r.subscriptions.len() as u32);
    for (f, sub) in &r.subscriptions {
        out.put_u8(sub.qos as u8);
        let o = sub.options;
        out.put_u8(
            o.no_local as u8 | (o.retain_as_published as u8) << 1 | (o.retain_handling as u8) << 2,
        );
        out.put_u32(sub.id.unwrap_or(0));
        out.put_u16(f.len() as u16);
        out.put_slice(f.as_bytes());
    }
    match r.expiry_interval {
        Some(s) => {
            out.put_u8(1);
            out.put_u32(s);
        }
        None => out.put_u8(0),
    }
    match &r.pending_will {
        Some(w) => {
            out.put_u8(1);
            out.put_u64(w.due_ms);
            out.put_u8(w.will.qos as u8);
            out.put_u8(w.will.retain as u8);
            out.put_u16(w.will.topic.len() as u16);
            out.put_slice(w.will.topic.as_bytes());
            out.put_u32(w.will.payload.len() as u32);
            out.put_slice(&w.will.payload);
            let mut props = BytesMut::new();
            encode_properties(
                w.will.properties.as_deref().unwrap_or(&Default::default()),
                &mut props,
            );
            out.put_slice(&props);
        }
        None => out.put_u8(0),
    }
}

/// The pending will at the end of a version 2 session record.
fn decode_will(b: &mut &[u8]) -> Result<Option<super::StoredWill>, StorageError> {
    const T: &str = "sessions";
    if b.remaining() < 1 || b.get_u8() == 0 {
        return Ok(None);
    }
    if b.remaining() < 10 {
        return Err(corrupt(T, "truncated will"));
    }
    let due_ms = b.get_u64();
    let qos = QoS::from_u8(b.get_u8()).ok_or_else(|| corrupt(T, "bad will QoS"))?;
    let retain = b.get_u8() == 1;
    let topic = take_str(T, b)?;
    if b.remaining() < 4 {
        return Err(corrupt(T, "truncated will payload"));
    }
    let n = b.get_u32() as usize;
    if b.remaining() < n {
        return Err(corrupt(T, "truncated will payload"));
    }
    let payload = Bytes::copy_from_slice(&b[..n]);
    b.advance(n);
    let properties = decode_properties(Bytes::copy_from_slice(b))
        .map_err(|e| corrupt(T, &format!("will properties: {e}")))?;
    b.advance(b.remaining());
    Ok(Some(super::StoredWill {
        will: crate::protocol::LastWill {
            topic: Arc::from(topic),
            payload,
            qos,
            retain,
            properties: (!properties.is_empty()).then(|| Box::new(properties)),
        },
        due_ms,
    }))
}

fn take_str(table: &'static str, b: &mut &[u8]) -> Result<String, StorageError> {
    if b.remaining() < 2 {
        return Err(corrupt(table, "truncated string"));
    }
    let len = b.get_u16() as usize;
    if b.remaining() < len {
        return Err(corrupt(table, "truncated string"));
    }
    let s = std::str::from_utf8(&b[..len])
        .map_err(|_| corrupt(table, "string is not UTF-8"))?
        .to_owned();
    b.advance(len);
    Ok(s)
}

/// Decodes a session record.
pub fn decode_session(mut b: &[u8]) -> Result<SessionRecord, StorageError> {
    const T: &str = "sessions";
    if b.remaining() < 14 {
        return Err(corrupt(T, "bad header"));
    }
    let version = b.get_u8();
    if version != VERSION && version != VERSION_5 {
        return Err(corrupt(T, "bad header"));
    }
    let last_seen_ms = b.get_u64();
    let username = match b.get_u8() {
        0 => None,
        _ => Some(take_str(T, &mut b)?),
    };
    if b.remaining() < 4 {
        return Err(corrupt(T, "truncated"));
    }
    let n = b.get_u32() as usize;
    let mut subscriptions = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        if b.remaining() < 1 {
            return Err(corrupt(T, "truncated subscription"));
        }
        let qos = QoS::from_u8(b.get_u8()).ok_or_else(|| corrupt(T, "bad QoS"))?;
        let mut sub = Subscription::qos(qos);
        if version == VERSION_5 {
            if b.remaining() < 5 {
                return Err(corrupt(T, "truncated subscription"));
            }
            let o = b.get_u8();
            sub.options = SubscriptionOptions {
                no_local: o & 1 != 0,
                retain_as_published: o & 2 != 0,
                retain_handling: match (o >> 2) & 3 {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    _ => RetainHandling::DoNotSend,
                },
            };
            sub.id = Some(b.get_u32()).filter(|&id| id != 0);
        }
        subscriptions.push((take_str(T, &mut b)?, sub));
    }
    let mut expiry_interval = None;
    let mut pending_will = None;
    if version == VERSION_5 {
        if b.remaining() >= 1 && b.get_u8() == 1 {
            if b.remaining() < 4 {
                return Err(corrupt(T, "truncated expiry"));
            }
            expiry_interval = Some(b.get_u32());
        }
        pending_will = decode_will(&mut b)?;
    }
    Ok(SessionRecord {
        username,
        subscriptions,
        last_seen_ms,
        expiry_interval,
        pending_will,
    })
}
