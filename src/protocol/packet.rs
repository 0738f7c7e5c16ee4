//! The MQTT 3.1.1 control packets as plain Rust values (section 3 of the specification).
//!
//! Nothing here does I/O or knows about broker state; [`super::codec`] turns these
//! values into bytes and back.

use bytes::Bytes;
use std::sync::Arc;

/// Quality of service level of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// At most once delivery.
    #[default]
    AtMostOnce = 0,
    /// At least once delivery.
    AtLeastOnce = 1,
    /// Exactly once delivery.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is not a QoS level [MQTT-3.3.1-4].
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Which protocol revision a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolLevel {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (protocol name `MQTT`, level 4).
    V311,
}

impl ProtocolLevel {
    /// The level byte carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolLevel::V31 => 3,
            ProtocolLevel::V311 => 4,
        }
    }
}

/// A will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic the will is published to.
    pub topic: Arc<str>,
    /// Will payload.
    pub payload: Bytes,
    /// QoS the will is published with.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
}

/// CONNECT (section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol revision.
    pub protocol: ProtocolLevel,
    /// Clean session flag.
    pub clean_session: bool,
    /// Keep-alive in seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    /// Client identifier, possibly empty.
    pub client_id: String,
    /// Optional will message.
    pub will: Option<LastWill>,
    /// Optional user name.
    pub username: Option<String>,
    /// Optional password (binary data).
    pub password: Option<Bytes>,
}

/// CONNACK return codes (section 3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectReturnCode {
    /// 0x00 connection accepted.
    Accepted = 0,
    /// 0x01 unacceptable protocol version.
    UnacceptableProtocolVersion = 1,
    /// 0x02 identifier rejected.
    IdentifierRejected = 2,
    /// 0x03 server unavailable.
    ServerUnavailable = 3,
    /// 0x04 bad user name or password.
    BadUsernameOrPassword = 4,
    /// 0x05 not authorized.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// Parses a return code byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        use ConnectReturnCode::*;
        Some(match v {
            0 => Accepted,
            1 => UnacceptableProtocolVersion,
            2 => IdentifierRejected,
            3 => ServerUnavailable,
            4 => BadUsernameOrPassword,
            5 => NotAuthorized,
            _ => return None,
        })
    }
}

/// CONNACK (section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// Return code.
    pub code: ConnectReturnCode,
}

/// PUBLISH (section 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag: this may be a re-delivery.
    pub dup: bool,
    /// Delivery QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (never a filter).
    pub topic: Arc<str>,
    /// Packet identifier, present exactly when QoS > 0.
    pub pid: Option<u16>,
    /// Application payload.
    pub payload: Bytes,
}

/// One SUBACK return code (section 3.9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubAckCode {
    /// Subscription granted at this maximum QoS.
    Granted(QoS),
    /// 0x80: subscription refused.
    Failure,
}

/// SUBSCRIBE (section 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub pid: u16,
    /// Topic filters with their requested QoS, in packet order.
    pub filters: Vec<(String, QoS)>,
}

/// SUBACK (section 3.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE being acknowledged.
    pub pid: u16,
    /// One code per requested filter, in the same order [MQTT-3.9.3-1].
    pub codes: Vec<SubAckCode>,
}

/// UNSUBSCRIBE (section 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub pid: u16,
    /// Topic filters to remove.
    pub filters: Vec<String>,
}

/// Any MQTT 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client request to connect.
    Connect(Box<Connect>),
    /// Connect acknowledgment.
    ConnAck(ConnAck),
    /// Publish message.
    Publish(Publish),
    /// Publish acknowledgment (QoS 1).
    PubAck(u16),
    /// Publish received (QoS 2, part 1).
    PubRec(u16),
    /// Publish release (QoS 2, part 2).
    PubRel(u16),
    /// Publish complete (QoS 2, part 3).
    PubComp(u16),
    /// Subscribe request.
    Subscribe(Subscribe),
    /// Subscribe acknowledgment.
    SubAck(SubAck),
    /// Unsubscribe request.
    Unsubscribe(Unsubscribe),
    /// Unsubscribe acknowledgment.
    UnsubAck(u16),
    /// Ping request.
    PingReq,
    /// Ping response.
    PingResp,
    /// Client is disconnecting.
    Disconnect,
}

impl Packet {
    /// Short upper-case name used in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect => "DISCONNECT",
        }
    }
}
