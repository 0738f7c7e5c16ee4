//! Binary encoding of stored records. Hand-written and versioned by a leading byte, so the
//! format is explicit and a corrupt record is reported, never trusted.

use super::{SessionRecord, StorageError, StoredMessage};
use crate::model::Message;
use crate::model::OutboundState;
use crate::protocol::QoS;
use bytes::{Buf, BufMut, Bytes};

const VERSION: u8 = 1;

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
    let mut out = Vec::with_capacity(8 + m.topic.len() + m.payload.len());
    out.put_u8(VERSION);
    out.put_u8(m.qos as u8);
    out.put_u8(m.retain as u8);
    out.put_u16(pid.unwrap_or(0));
    out.put_u8(state_byte(state));
    out.put_u16(m.topic.len() as u16);
    out.put_slice(m.topic.as_bytes());
    out.put_slice(&m.payload);
    out
}

/// Decodes what [`encode_message`] wrote.
pub fn decode_message(
    table: &'static str,
    mut b: &[u8],
) -> Result<(Message, Option<u16>, Option<OutboundState>), StorageError> {
    if b.remaining() < 8 || b.get_u8() != VERSION {
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
    let message = Message::new(topic, Bytes::copy_from_slice(&b[len..]), qos, retain);
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
    out.put_u8(VERSION);
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
    for (f, q) in &r.subscriptions {
        out.put_u8(*q as u8);
        out.put_u16(f.len() as u16);
        out.put_slice(f.as_bytes());
    }
    out
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
    if b.remaining() < 14 || b.get_u8() != VERSION {
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
        let q = QoS::from_u8(b.get_u8()).ok_or_else(|| corrupt(T, "bad QoS"))?;
        subscriptions.push((take_str(T, &mut b)?, q));
    }
    Ok(SessionRecord {
        username,
        subscriptions,
        last_seen_ms,
    })
}
