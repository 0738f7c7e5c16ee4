//! The MQTT control packets (3.1, 3.1.1 and 5.0) as plain Rust values (section 3 of each
//! specification). MQTT 5 additions (properties, reason codes) are optional fields that a
//! 3.1.1 packet leaves empty.
//!
//! Nothing here does I/O or knows about broker state; [`super::codec`] turns these
//! values into bytes and back.

use bytes::Bytes;
pub use bytestring::ByteString;
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
    /// MQTT 5.0 (protocol name `MQTT`, level 5).
    V5,
}

impl ProtocolLevel {
    /// The level byte carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolLevel::V31 => 3,
            ProtocolLevel::V311 => 4,
            ProtocolLevel::V5 => 5,
        }
    }

    /// Whether packets carry MQTT 5 properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == ProtocolLevel::V5
    }

    /// Name used in logs and the admin API ("3.1", "3.1.1", "5.0").
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolLevel::V31 => "3.1",
            ProtocolLevel::V311 => "3.1.1",
            ProtocolLevel::V5 => "5.0",
        }
    }
}

/// MQTT 5 properties (section 2.2.2): every property any packet may carry, all optional.
///
/// One type for all packets keeps the codec small; which properties a packet may carry is
/// checked when decoding (a property not allowed there is a protocol error [MQTT-2.2.2-2]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01: 1 = the payload is UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02: seconds the message lives.
    pub message_expiry_interval: Option<u32>,
    /// 0x03: MIME type of the payload.
    pub content_type: Option<String>,
    /// 0x08: topic a responder publishes the response to.
    pub response_topic: Option<String>,
    /// 0x09: matches a response to its request.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: subscription identifiers (several on one PUBLISH, one on SUBSCRIBE).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11: seconds the session outlives the connection.
    pub session_expiry_interval: Option<u32>,
    /// 0x12: the client id the server assigned.
    pub assigned_client_identifier: Option<String>,
    /// 0x13: keep alive the server imposes.
    pub server_keep_alive: Option<u16>,
    /// 0x15: enhanced authentication method.
    pub authentication_method: Option<String>,
    /// 0x16: enhanced authentication data.
    pub authentication_data: Option<Bytes>,
    /// 0x17: 0 = no reason strings or user properties on failures, please.
    pub request_problem_information: Option<u8>,
    /// 0x18: seconds the will waits after the connection ends.
    pub will_delay_interval: Option<u32>,
    /// 0x19: 1 = the client asks for response information.
    pub request_response_information: Option<u8>,
    /// 0x1A: basis for response topics.
    pub response_information: Option<String>,
    /// 0x1C: another server the client may use.
    pub server_reference: Option<String>,
    /// 0x1F: human-readable diagnostic.
    pub reason_string: Option<String>,
    /// 0x21: QoS 1/2 PUBLISHes the sender will process at once.
    pub receive_maximum: Option<u16>,
    /// 0x22: highest topic alias the sender accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: topic alias of this PUBLISH.
    pub topic_alias: Option<u16>,
    /// 0x24: highest QoS the server supports.
    pub maximum_qos: Option<u8>,
    /// 0x25: whether the server supports retained messages.
    pub retain_available: Option<u8>,
    /// 0x26: name/value pairs, order kept [MQTT-3.3.2-18]. Decoded without a copy: the
    /// strings share the received packet's buffer, like the payload.
    pub user_properties: Vec<(ByteString, ByteString)>,
    /// 0x27: largest packet the sender accepts.
    pub maximum_packet_size: Option<u32>,
    /// 0x28: whether wildcard subscriptions are supported.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29: whether subscription identifiers are supported.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A: whether shared subscriptions are supported.
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

/// MQTT 5 reason codes (section 2.4) the broker sends or acts on.
pub mod reason {
    /// 0x00 success / normal disconnection / granted QoS 0.
    pub const SUCCESS: u8 = 0x00;
    /// 0x04 disconnect with will message.
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// 0x10 no matching subscribers.
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// 0x11 no subscription existed.
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// 0x18 continue authentication.
    pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
    /// 0x19 re-authenticate.
    pub const REAUTHENTICATE: u8 = 0x19;
    /// 0x80 unspecified error.
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    /// 0x81 malformed packet.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// 0x82 protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// 0x83 implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    /// 0x84 unsupported protocol version.
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    /// 0x85 client identifier not valid.
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    /// 0x86 bad user name or password.
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    /// 0x87 not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// 0x8A banned.
    pub const BANNED: u8 = 0x8A;
    /// 0x88 server unavailable.
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// 0x89 server busy.
    pub const SERVER_BUSY: u8 = 0x89;
    /// 0x8B server shutting down.
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// 0x8C bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    /// 0x8D keep alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// 0x8E session taken over.
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// 0x8F topic filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// 0x90 topic name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// 0x92 packet identifier not found.
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    /// 0x93 receive maximum exceeded.
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// 0x94 topic alias invalid.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// 0x95 packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// 0x96 message rate too high.
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    /// 0x97 quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// 0x98 administrative action.
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    /// 0x99 payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// 0x9A retain not supported.
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    /// 0x9B QoS not supported.
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    /// 0x9C use another server.
    pub const USE_ANOTHER_SERVER: u8 = 0x9C;
    /// 0x9D server moved.
    pub const SERVER_MOVED: u8 = 0x9D;
    /// 0x9E shared subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    /// 0x9F connection rate exceeded.
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    /// 0xA1 subscription identifiers not supported.
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    /// 0xA2 wildcard subscriptions not supported.
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;
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
    /// MQTT 5 will properties (will delay interval and the PUBLISH properties).
    pub properties: Option<Box<Properties>>,
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
    /// MQTT 5 CONNECT properties.
    pub properties: Option<Box<Properties>>,
    /// Bit 7 of a 3.1/3.1.1 protocol level (0x83, 0x84): the client is another broker's
    /// bridge (Mosquitto's `try_private`), to be sent neither its own messages back nor
    /// retained flags rewritten.
    pub bridge: bool,
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

    /// The MQTT 5 reason code with the same meaning (section 3.2.2.2).
    pub fn v5_reason(self) -> u8 {
        match self {
            ConnectReturnCode::Accepted => reason::SUCCESS,
            ConnectReturnCode::UnacceptableProtocolVersion => reason::UNSUPPORTED_PROTOCOL_VERSION,
            ConnectReturnCode::IdentifierRejected => reason::CLIENT_IDENTIFIER_NOT_VALID,
            ConnectReturnCode::ServerUnavailable => reason::SERVER_UNAVAILABLE,
            ConnectReturnCode::BadUsernameOrPassword => reason::BAD_USERNAME_OR_PASSWORD,
            ConnectReturnCode::NotAuthorized => reason::NOT_AUTHORIZED,
        }
    }

    /// The 3.1.1 return code closest to an MQTT 5 reason code.
    pub fn from_v5_reason(code: u8) -> Self {
        match code {
            reason::SUCCESS => ConnectReturnCode::Accepted,
            reason::UNSUPPORTED_PROTOCOL_VERSION => ConnectReturnCode::UnacceptableProtocolVersion,
            reason::CLIENT_IDENTIFIER_NOT_VALID => ConnectReturnCode::IdentifierRejected,
            reason::BAD_USERNAME_OR_PASSWORD => ConnectReturnCode::BadUsernameOrPassword,
            reason::NOT_AUTHORIZED | reason::BANNED => ConnectReturnCode::NotAuthorized,
            _ => ConnectReturnCode::ServerUnavailable,
        }
    }
}

/// CONNACK (section 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// Return code.
    pub code: ConnectReturnCode,
    /// MQTT 5 reason code when more specific than `code` (sent to MQTT 5 clients only).
    pub reason_code: Option<u8>,
    /// MQTT 5 CONNACK properties.
    pub properties: Option<Box<Properties>>,
}

impl ConnAck {
    /// A CONNACK with a 3.1.1 return code and no MQTT 5 extras.
    pub fn new(session_present: bool, code: ConnectReturnCode) -> Self {
        ConnAck {
            session_present,
            code,
            reason_code: None,
            properties: None,
        }
    }

    /// The MQTT 5 reason code this CONNACK carries.
    pub fn v5_reason(&self) -> u8 {
        self.reason_code.unwrap_or_else(|| self.code.v5_reason())
    }
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
    /// MQTT 5 PUBLISH properties (shared by every copy of a fanned-out message).
    pub properties: Option<Arc<Properties>>,
}

/// One SUBACK return code (section 3.9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubAckCode {
    /// Subscription granted at this maximum QoS.
    Granted(QoS),
    /// 0x80: subscription refused.
    Failure,
    /// An MQTT 5 refusal with a specific reason code (0x80 to a 3.1.1 client).
    Refused(u8),
}

impl SubAckCode {
    /// The byte sent to a client of `level`.
    pub fn byte(self, level: ProtocolLevel) -> u8 {
        match self {
            SubAckCode::Granted(q) => q as u8,
            SubAckCode::Failure => 0x80,
            SubAckCode::Refused(code) if level.is_v5() => code,
            SubAckCode::Refused(_) => 0x80,
        }
    }
}

/// What a SUBSCRIBE asks the server to do with retained messages (MQTT 5, 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at every subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist.
    SendIfNew = 1,
    /// 2: never send them.
    DoNotSend = 2,
}

/// MQTT 5 subscription options beyond the maximum QoS (section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Do not send the subscriber its own messages [MQTT-3.8.3-3].
    pub no_local: bool,
    /// Forward the RETAIN flag as published [MQTT-3.3.1-12].
    pub retain_as_published: bool,
    /// When retained messages are sent.
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE (section 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub pid: u16,
    /// Topic filters with their requested QoS, in packet order.
    pub filters: Vec<(String, QoS)>,
    /// MQTT 5 options of each filter, in the same order (empty from a 3.1.1 client: all
    /// default).
    pub options: Vec<SubscriptionOptions>,
    /// MQTT 5 SUBSCRIBE properties (subscription identifier, user properties).
    pub properties: Option<Box<Properties>>,
}

impl Subscribe {
    /// A SUBSCRIBE with default options and no properties.
    pub fn new(pid: u16, filters: Vec<(String, QoS)>) -> Self {
        Subscribe {
            pid,
            filters,
            options: Vec::new(),
            properties: None,
        }
    }

    /// The options of the filter at `index`.
    pub fn options_of(&self, index: usize) -> SubscriptionOptions {
        self.options.get(index).copied().unwrap_or_default()
    }
}

/// SUBACK (section 3.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE being acknowledged.
    pub pid: u16,
    /// One code per requested filter, in the same order [MQTT-3.9.3-1].
    pub codes: Vec<SubAckCode>,
    /// MQTT 5 SUBACK properties (reason string, user properties).
    pub properties: Option<Box<Properties>>,
}

/// UNSUBSCRIBE (section 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub pid: u16,
    /// Topic filters to remove.
    pub filters: Vec<String>,
    /// MQTT 5 UNSUBSCRIBE properties (user properties).
    pub properties: Option<Box<Properties>>,
}

/// UNSUBACK (section 3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE being acknowledged.
    pub pid: u16,
    /// MQTT 5: one reason code per filter, in order (not sent to 3.1.1 clients).
    pub codes: Vec<u8>,
    /// MQTT 5 UNSUBACK properties.
    pub properties: Option<Box<Properties>>,
}

impl UnsubAck {
    /// An UNSUBACK without MQTT 5 reason codes (what a 3.1.1 client gets).
    pub fn new(pid: u16) -> Self {
        UnsubAck {
            pid,
            codes: Vec::new(),
            properties: None,
        }
    }
}

/// Which acknowledgement of the PUBLISH flows an [`Ack`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckKind {
    /// PUBACK.
    PubAck,
    /// PUBREC.
    PubRec,
    /// PUBREL.
    PubRel,
    /// PUBCOMP.
    PubComp,
}

impl AckKind {
    /// The plain (success, no properties) acknowledgement of this kind.
    pub fn plain(self, pid: u16) -> Packet {
        match self {
            AckKind::PubAck => Packet::PubAck(pid),
            AckKind::PubRec => Packet::PubRec(pid),
            AckKind::PubRel => Packet::PubRel(pid),
            AckKind::PubComp => Packet::PubComp(pid),
        }
    }
}

/// An MQTT 5 PUBACK, PUBREC, PUBREL or PUBCOMP with a reason code other than success or
/// with properties (sections 3.4 to 3.7). The success forms without properties are the
/// plain `Packet::PubAck(pid)` and friends, identical on the wire in every version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Which acknowledgement.
    pub kind: AckKind,
    /// Packet identifier.
    pub pid: u16,
    /// Reason code.
    pub reason: u8,
    /// Reason string and user properties.
    pub properties: Option<Box<Properties>>,
}

/// An MQTT 5 DISCONNECT with a reason code or properties (section 3.14); the plain
/// `Packet::Disconnect` is a normal disconnection (0x00) without properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code.
    pub reason: u8,
    /// Session expiry interval (client only), reason string, server reference, user
    /// properties.
    pub properties: Option<Box<Properties>>,
}

/// AUTH (MQTT 5, section 3.15): one step of enhanced authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// 0x00 success, 0x18 continue authentication, 0x19 re-authenticate.
    pub reason: u8,
    /// Authentication method and data, reason string, user properties.
    pub properties: Option<Box<Properties>>,
}

impl Auth {
    /// An AUTH packet of `method` with `reason` and, when given, data.
    pub fn packet(reason: u8, method: &str, data: Option<Vec<u8>>) -> Packet {
        Packet::Auth(Auth {
            reason,
            properties: Some(Box::new(Properties {
                authentication_method: Some(method.to_owned()),
                authentication_data: data.map(Bytes::from),
                ..Default::default()
            })),
        })
    }
}

/// Any MQTT control packet.
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
    UnsubAck(UnsubAck),
    /// Ping request.
    PingReq,
    /// Ping response.
    PingResp,
    /// Client is disconnecting (normal disconnection).
    Disconnect,
    /// MQTT 5 publish-flow acknowledgement with a reason code or properties.
    Ack(Ack),
    /// MQTT 5 DISCONNECT with a reason code or properties, from either side.
    DisconnectWithReason(Disconnect),
    /// MQTT 5 enhanced authentication exchange.
    Auth(Auth),
}

impl Packet {
    /// Whether this acknowledges a PUBLISH the client sent (PUBACK or PUBREC): the promise
    /// that the broker owns the message.
    pub fn is_publish_ack(&self) -> bool {
        matches!(self.ack_of(), Some((AckKind::PubAck | AckKind::PubRec, _)))
    }

    /// The kind and packet id of a PUBACK, PUBREC, PUBREL or PUBCOMP, plain or MQTT 5.
    pub fn ack_of(&self) -> Option<(AckKind, u16)> {
        match self {
            Packet::PubAck(pid) => Some((AckKind::PubAck, *pid)),
            Packet::PubRec(pid) => Some((AckKind::PubRec, *pid)),
            Packet::PubRel(pid) => Some((AckKind::PubRel, *pid)),
            Packet::PubComp(pid) => Some((AckKind::PubComp, *pid)),
            Packet::Ack(a) => Some((a.kind, a.pid)),
            _ => None,
        }
    }

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
            Packet::Disconnect | Packet::DisconnectWithReason(_) => "DISCONNECT",
            Packet::Ack(a) => match a.kind {
                AckKind::PubAck => "PUBACK",
                AckKind::PubRec => "PUBREC",
                AckKind::PubRel => "PUBREL",
                AckKind::PubComp => "PUBCOMP",
            },
            Packet::Auth(_) => "AUTH",
        }
    }
}
