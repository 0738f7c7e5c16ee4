//! Why a sequence of bytes is not a valid MQTT packet.

use super::topic::TopicError;
use thiserror::Error;

/// A violation of the wire format or of a normative statement about packet contents.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The remaining length used more than four bytes (section 2.2.3).
    #[error("malformed remaining length (more than 4 bytes)")]
    MalformedRemainingLength,
    /// The declared packet size exceeds the configured maximum.
    #[error("packet too large: {size} bytes declared, maximum is {max}")]
    PacketTooLarge {
        /// Declared total size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Packet type 0 or 15.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Fixed-header flags that the packet type reserves [MQTT-2.2.2-2].
    #[error("invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidFlags {
        /// Packet type name.
        packet: &'static str,
        /// Received flag bits.
        flags: u8,
    },
    /// Protocol name other than `MQTT` or `MQIsdp` [MQTT-3.1.2-1].
    #[error("invalid protocol name {0:?}")]
    InvalidProtocolName(String),
    /// Protocol level other than 3 or 4 [MQTT-3.1.2-2].
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// A string that is not well-formed UTF-8 [MQTT-1.5.3-1].
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A string containing U+0000 [MQTT-1.5.3-2].
    #[error("string contains U+0000")]
    NullCharacter,
    /// QoS bits set to 3.
    #[error("invalid QoS 3")]
    InvalidQoS,
    /// A topic name or filter that is not acceptable.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// Packet identifier 0 [MQTT-2.3.1-1].
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// The packet body ended early.
    #[error("packet truncated")]
    Truncated,
    /// Bytes left over after the packet body was parsed.
    #[error("unexpected bytes after {0} body")]
    TrailingBytes(&'static str),
    /// The first byte a client sent is not a CONNECT fixed header [MQTT-3.1.0-1] (an HTTP
    /// request or a TLS ClientHello on the plain MQTT port, say).
    #[error("first byte {0:#04x} is not a CONNECT fixed header: not MQTT [MQTT-3.1.0-1]")]
    NotConnect(u8),
    /// Any other specific violation.
    #[error("{0}")]
    Malformed(&'static str),
    /// A property identifier that this packet may not carry (MQTT 5, section 2.2.2.2).
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// Property identifier.
        id: u8,
        /// Packet type name.
        packet: &'static str,
    },
    /// A property that may appear once appeared twice (MQTT 5, section 2.2.2.2).
    #[error("property {0:#04x} included more than once")]
    DuplicateProperty(u8),
    /// A well-formed packet that breaks a rule of the protocol (MQTT 5 reason code 0x82).
    #[error("{0}")]
    ProtocolViolation(&'static str),
}

impl ProtocolError {
    /// The MQTT 5 reason code a server sends in DISCONNECT (or CONNACK) for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            ProtocolError::DuplicateProperty(_) | ProtocolError::ProtocolViolation(_) => 0x82,
            ProtocolError::PacketTooLarge { .. } => 0x95,
            ProtocolError::UnsupportedProtocolLevel(_) => 0x84,
            _ => 0x81,
        }
    }
}
