//! Leaf types shared by several layers: the application message, what the broker knows about
//! a client, the transport kind, where an outbound message is in its acknowledgement flow, and
//! why a connection closed.
//!
//! Owns nothing but these definitions; it imports only `protocol` and must never import a
//! layer above it (routing, session, core, connection, ...), so that every layer can use it.

use crate::protocol::{Properties, ProtocolLevel, Publish, QoS, SubscriptionOptions};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// User property that lists the brokers a message was bridged through, so that a bridge
/// never forwards a message back to a broker it has already been on (MQTT 5 links).
pub const BRIDGE_PATH_PROPERTY: &str = "mqtt-broker-path";
/// CONNECT / CONNACK user property with which our brokers tell each other their node name.
pub const BRIDGE_NODE_PROPERTY: &str = "mqtt-broker-node";

/// A process-unique number of one accepted connection (a client id can have several over
/// time, and for a moment two during a takeover).
pub type ConnId = u64;

/// An application message as it travels through the broker.
///
/// Cheap to clone: the topic and payload are reference counted, so one published message
/// fans out to many subscribers without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload bytes.
    pub payload: Bytes,
    /// QoS (as published, or as granted for one subscriber).
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// When the broker routed it (set by the router), for the publish-to-deliver
    /// latency histogram; `None` for messages that are not timed (retained on subscribe).
    pub enqueued_at: Option<std::time::Instant>,
    /// MQTT 5 extras (properties, expiry); `None` for a plain 3.1.1 message, so that one
    /// costs nothing more.
    pub props: Option<Arc<MessageProps>>,
}

/// What MQTT 5 adds to a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProps {
    /// PUBLISH properties forwarded to MQTT 5 subscribers (payload format, content type,
    /// response topic, correlation data, user properties in order); on a copy queued for
    /// one subscriber, also its subscription identifiers. Never a topic alias; the expiry
    /// interval is recomputed from `expires_at` when sent [MQTT-3.3.2-6]. Shared by every
    /// copy of a fanned-out message (`None`: no property).
    pub properties: Option<Arc<Properties>>,
    /// When the message expires; an expired message is never delivered [MQTT-3.3.2-5].
    pub expires_at: Option<SystemTime>,
    /// Client id of the publisher, kept only when it holds a No Local subscription
    /// [MQTT-3.8.3-3].
    pub origin: Option<Arc<str>>,
    /// On a copy queued for one subscriber through a shared subscription: that
    /// `$share/...` filter, so that the message goes to another member if this session
    /// ends before acknowledging it.
    pub shared: Option<Arc<str>>,
}

impl MessageProps {
    /// Replaces the subscription identifiers of a copy queued for one subscriber (the other
    /// properties stay shared unless there are identifiers to write).
    pub fn set_subscription_identifiers(&mut self, ids: Vec<u32>) {
        let has = self
            .properties
            .as_ref()
            .is_some_and(|p| !p.subscription_identifiers.is_empty());
        if ids.is_empty() && !has {
            return;
        }
        let p = Arc::make_mut(self.properties.get_or_insert_with(Default::default));
        p.subscription_identifiers = ids;
    }

    /// Whether nothing is set (a message with such props needs none).
    pub fn is_empty(&self) -> bool {
        self.properties.is_none()
            && self.expires_at.is_none()
            && self.origin.is_none()
            && self.shared.is_none()
    }
}

/// One subscription of a session: the maximum QoS and the MQTT 5 options and identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subscription {
    /// Maximum QoS granted.
    pub qos: QoS,
    /// No Local, Retain As Published, Retain Handling.
    pub options: SubscriptionOptions,
    /// Subscription identifier, sent back with every message it matches [MQTT-3.3.4-3].
    pub id: Option<u32>,
}

impl Subscription {
    /// A 3.1.1 subscription: only a QoS.
    pub fn qos(qos: QoS) -> Self {
        Subscription {
            qos,
            ..Default::default()
        }
    }
}

impl Message {
    /// Builds a message.
    pub fn new(topic: &str, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Message {
            topic: Arc::from(topic),
            payload,
            qos,
            retain,
            enqueued_at: None,
            props: None,
        }
    }

    /// Takes the message out of a received PUBLISH; its properties, but the topic alias
    /// and subscription identifiers, travel with it, the expiry interval as a deadline.
    pub fn from_publish(p: Publish) -> Self {
        let props = p.properties.map(|mut arc| {
            if arc.topic_alias.is_some() || !arc.subscription_identifiers.is_empty() {
                // Only copied when shared, which a freshly decoded PUBLISH's are not.
                let p = Arc::make_mut(&mut arc);
                p.topic_alias = None;
                p.subscription_identifiers.clear();
            }
            let expires_at = arc
                .message_expiry_interval
                .map(|s| SystemTime::now() + std::time::Duration::from_secs(u64::from(s)));
            MessageProps {
                properties: (!arc.is_empty()).then_some(arc),
                expires_at,
                ..Default::default()
            }
        });
        Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            enqueued_at: None,
            props: props.filter(|p| !p.is_empty()).map(Arc::new),
        }
    }

    /// Whether the message expired by `now` [MQTT-3.3.2-5].
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.props
            .as_ref()
            .and_then(|p| p.expires_at)
            .is_some_and(|t| t <= now)
    }

    /// The PUBLISH that carries this message with the given packet id and DUP flag; the
    /// message expiry interval says what is left of it [MQTT-3.3.2-6].
    pub fn to_publish(&self, pid: Option<u16>, dup: bool) -> Publish {
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.clone(),
            pid,
            payload: self.payload.clone(),
            properties: self.publish_properties(),
        }
    }

    /// As [`Message::to_publish`], taking the topic and payload instead of sharing them (a
    /// fanned-out QoS 0 copy is sent once: no reference count is raised and dropped again).
    pub fn into_publish(self, pid: Option<u16>, dup: bool) -> Publish {
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            properties: self.publish_properties(),
            topic: self.topic,
            pid,
            payload: self.payload,
        }
    }

    /// The PUBLISH properties of this copy, with what is left of its expiry interval.
    fn publish_properties(&self) -> Option<Arc<Properties>> {
        self.props.as_ref().and_then(|m| {
            let shared = m.properties.as_ref()?;
            let Some(at) = m.expires_at else {
                // The common case: every copy shares the publisher's properties.
                return Some(shared.clone());
            };
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            let mut properties = (**shared).clone();
            properties.message_expiry_interval =
                Some(u32::try_from(left).unwrap_or(u32::MAX).max(1));
            Some(Arc::new(properties))
        })
    }
}

/// What the broker knows about a connected client, handed to every hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Client identifier (assigned by the broker when the client sent an empty one).
    pub client_id: Arc<str>,
    /// User name from CONNECT, or the TLS certificate identity when configured so.
    pub username: Option<String>,
    /// Remote address.
    pub peer: SocketAddr,
    /// Transport the client came in on.
    pub transport: TransportKind,
    /// Subject common name of a verified TLS client certificate.
    pub tls_identity: Option<String>,
    /// Protocol revision.
    pub protocol: ProtocolLevel,
    /// Clean session flag (Clean Start in MQTT 5).
    pub clean_session: bool,
}

/// Transport protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Plain TCP.
    #[default]
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// A bridge's own connection to this broker, inside the process (never a listener's).
    #[serde(skip)]
    Bridge,
}

impl TransportKind {
    /// Lower-case name used in logs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Ws => "ws",
            TransportKind::Wss => "wss",
            TransportKind::Bridge => "bridge",
        }
    }

    /// Whether the listener terminates TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, TransportKind::Tls | TransportKind::Wss)
    }

    /// Whether the listener speaks WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, TransportKind::Ws | TransportKind::Wss)
    }
}

/// Where an outbound QoS 1/2 message is in its acknowledgement flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundState {
    /// QoS 1: PUBLISH sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2: PUBLISH sent, waiting for PUBREC.
    AwaitPubRec,
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

/// Why a client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Disconnect,
    /// The client closed the socket without DISCONNECT.
    PeerClosed,
    /// Nothing received for 1.5 × keep-alive [MQTT-3.1.2-24].
    KeepAlive,
    /// A protocol violation.
    ProtocolError,
    /// A resource limit closed it (topic too long or too deep).
    Policy,
    /// Another connection with the same client id took the session over [MQTT-3.1.4-2].
    TakenOver,
    /// An operator disconnected it through the admin API.
    Admin,
    /// The broker is shutting down.
    Shutdown,
    /// Its listener was removed by a reload with `drain: true`.
    ListenerRemoved,
    /// A reload revoked its credentials.
    Revoked,
    /// A socket error.
    IoError,
    /// The node lost its cluster (NATS JetStream) and cannot store or route for it.
    ClusterUnavailable,
}

impl DisconnectReason {
    /// Every reason, in metrics order.
    pub const ALL: [DisconnectReason; 12] = [
        DisconnectReason::Disconnect,
        DisconnectReason::PeerClosed,
        DisconnectReason::KeepAlive,
        DisconnectReason::ProtocolError,
        DisconnectReason::Policy,
        DisconnectReason::TakenOver,
        DisconnectReason::Admin,
        DisconnectReason::Shutdown,
        DisconnectReason::ListenerRemoved,
        DisconnectReason::Revoked,
        DisconnectReason::IoError,
        DisconnectReason::ClusterUnavailable,
    ];

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Disconnect => "disconnect",
            DisconnectReason::PeerClosed => "peer_closed",
            DisconnectReason::KeepAlive => "keep_alive",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::Policy => "policy",
            DisconnectReason::TakenOver => "taken_over",
            DisconnectReason::Admin => "admin",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::ListenerRemoved => "listener_removed",
            DisconnectReason::Revoked => "revoked",
            DisconnectReason::IoError => "io_error",
            DisconnectReason::ClusterUnavailable => "cluster_unavailable",
        }
    }

    /// Position in [`DisconnectReason::ALL`] (and in the metrics counter array).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A client's violation of the WebSocket mapping, handed to the connection inside an
/// `io::Error` so that it is logged and counted as the protocol error it is.
#[derive(Debug, thiserror::Error)]
pub enum WsViolation {
    /// A WebSocket message over `max_packet_size` (tungstenite refuses it before buffering).
    #[error("packet larger than max_packet_size: WebSocket message of {size} bytes > {max} bytes")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The limit (`server.max_packet_size`).
        max: usize,
    },
    /// A text frame [MQTT-6.0.0-1].
    #[error("text WebSocket frame: MQTT needs binary frames [MQTT-6.0.0-1]")]
    TextFrame,
}

impl WsViolation {
    /// The violation carried by an I/O error from `transport::ws::WsByteStream`, if it is one.
    pub fn of(e: &std::io::Error) -> Option<&WsViolation> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<WsViolation>())
    }
}

/// Why a connection closes, decided where it happens and carried to the log line, the
/// [`DisconnectReason`] of the event and the metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT: the will is discarded [MQTT-3.14.4-3].
    Disconnect,
    /// The client sent DISCONNECT with reason 0x04: the will is published (MQTT 5, 3.14.2.1).
    DisconnectWithWill,
    /// The client closed the socket without DISCONNECT.
    PeerClosed,
    /// Nothing received for 1.5 × keep-alive [MQTT-3.1.2-24].
    KeepAlive,
    /// A protocol violation, with the statement it breaks where there is one [MQTT-4.8.0-1].
    Protocol(String),
    /// A resource limit that closes the connection (topic too long or too deep).
    Policy(String),
    /// Another connection with the same client id took the session over [MQTT-3.1.4-2].
    TakenOver,
    /// An operator disconnected the client through the admin API.
    Admin,
    /// The broker is shutting down.
    Shutdown,
    /// Its listener was removed by a reload with `drain: true`.
    ListenerRemoved,
    /// A reload revoked the client's credentials (`reauthorize_on_reload`), with why.
    Revoked(String),
    /// A socket error.
    Io(String),
    /// The cluster did not store what the client published (or the node lost it): closed
    /// without acknowledging, so that the client sends it again, to another node if need be.
    ClusterUnavailable(String),
    /// A violation with a specific MQTT 5 reason code for the DISCONNECT (0x81 malformed,
    /// 0x93 receive maximum exceeded, 0x94 topic alias invalid, 0x95 packet too large,
    /// 0x9A retain not supported, ...), counted as a protocol error.
    Refused {
        /// Reason code sent to an MQTT 5 client.
        code: u8,
        /// What happened, for the log.
        reason: String,
    },
}

impl CloseReason {
    /// The reason code of the DISCONNECT an MQTT 5 client is sent, or `None` when the
    /// client ended the connection itself (section 3.14.2.1).
    pub fn v5_disconnect_code(&self) -> Option<u8> {
        Some(match self {
            CloseReason::Disconnect
            | CloseReason::DisconnectWithWill
            | CloseReason::PeerClosed
            | CloseReason::Io(_) => return None,
            CloseReason::KeepAlive => 0x8D,
            CloseReason::Protocol(_) => 0x82,
            CloseReason::Policy(_) => 0x97,
            CloseReason::TakenOver => 0x8E,
            CloseReason::Admin => 0x98,
            CloseReason::Shutdown | CloseReason::ListenerRemoved => 0x8B,
            CloseReason::Revoked(_) => 0x87,
            // "Use another server": any other node serves the client's session.
            CloseReason::ClusterUnavailable(_) => 0x9C,
            CloseReason::Refused { code, .. } => *code,
        })
    }

    /// Whether the will message is published [MQTT-3.1.2-8]: always but after DISCONNECT.
    pub fn publishes_will(&self) -> bool {
        !matches!(self, CloseReason::Disconnect)
    }

    /// The text of a protocol violation or refusal, if this is one.
    pub fn violation(&self) -> Option<&str> {
        match self {
            CloseReason::Protocol(r) | CloseReason::Refused { reason: r, .. } => Some(r),
            _ => None,
        }
    }

    /// Whether the connection first handles what its client had already sent (so that a
    /// PUBLISH or DISCONNECT in flight is not lost): when the broker, not the client or the
    /// socket, ends it.
    pub fn finishes_inbound(&self) -> bool {
        matches!(
            self,
            CloseReason::TakenOver
                | CloseReason::Admin
                | CloseReason::Shutdown
                | CloseReason::ListenerRemoved
        )
    }

    /// The kind used by events and metrics.
    pub fn kind(&self) -> DisconnectReason {
        match self {
            CloseReason::Disconnect | CloseReason::DisconnectWithWill => {
                DisconnectReason::Disconnect
            }
            CloseReason::PeerClosed => DisconnectReason::PeerClosed,
            CloseReason::KeepAlive => DisconnectReason::KeepAlive,
            CloseReason::Protocol(_) => DisconnectReason::ProtocolError,
            CloseReason::Policy(_) => DisconnectReason::Policy,
            CloseReason::TakenOver => DisconnectReason::TakenOver,
            CloseReason::Admin => DisconnectReason::Admin,
            CloseReason::Shutdown => DisconnectReason::Shutdown,
            CloseReason::ListenerRemoved => DisconnectReason::ListenerRemoved,
            CloseReason::Revoked(_) => DisconnectReason::Revoked,
            CloseReason::Io(_) => DisconnectReason::IoError,
            CloseReason::ClusterUnavailable(_) => DisconnectReason::ClusterUnavailable,
            CloseReason::Refused { .. } => DisconnectReason::ProtocolError,
        }
    }
}

/// The small control block between a connection's task and the rest of the broker: where a
/// close decided elsewhere (takeover, admin, reload) is written, how a reload is announced,
/// and how a takeover learns that the connection has finished.
///
/// Kept compact on purpose (one per connection, IoT fleets hold many idle ones): the task
/// registers its waker here instead of holding a future per cause. `parent` is the
/// listener's token (a child of the broker's shutdown token, removed with `drain: true`),
/// shared by all of the listener's connections rather than a child token per connection;
/// whoever cancels it also calls `OpsState::close_cancelled`, which raises the close here
/// without a reason, and the connection tells which parent it was. The first reason set wins: a connection that is being taken over while the
/// broker shuts down reports the one that reached it first.
#[derive(Debug, Default)]
pub struct CloseSignal {
    /// Boxed: written once, and only for a close decided elsewhere.
    reason: parking_lot::Mutex<Option<Box<CloseReason>>>,
    /// `CLOSE` | `RELOAD` | `DONE` | `TIMER`.
    flags: std::sync::atomic::AtomicU8,
    /// The connection's keep-alive deadline in milliseconds of [`monotonic_ms`] (0: none),
    /// watched by one broker-wide sweep instead of a timer per connection.
    deadline: std::sync::atomic::AtomicU64,
    /// The connection task, woken for `CLOSE` and `RELOAD`.
    waker: futures_util::task::AtomicWaker,
    /// Wakes whoever waits for `DONE` (a takeover).
    done: tokio::sync::Notify,
    parent: tokio_util::sync::CancellationToken,
}

const CLOSE: u8 = 1;
const RELOAD: u8 = 2;
const DONE: u8 = 4;
const TIMER: u8 = 8;

/// Milliseconds since the first call in this process (never 0), on the monotonic clock.
pub fn monotonic_ms(at: std::time::Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    at.saturating_duration_since(epoch).as_millis() as u64 + 1
}

/// What a connection's task is told through its [`CloseSignal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Close (a reason may be written, see [`CloseSignal::reason`]).
    Close,
    /// Its keep-alive deadline passed.
    Timer,
    /// The runtime was replaced.
    Reload,
}

impl CloseSignal {
    /// A signal whose connection also closes when `parent` (its listener's token) fires.
    pub fn new(parent: tokio_util::sync::CancellationToken) -> Self {
        CloseSignal {
            parent,
            ..Default::default()
        }
    }

    /// Asks the connection to close for `reason` (the first reason set is kept).
    pub fn close(&self, reason: CloseReason) {
        {
            let mut slot = self.reason.lock();
            if slot.is_none() {
                *slot = Some(Box::new(reason));
            }
        }
        self.raise(CLOSE);
    }

    /// Tells the connection that its listener's token was cancelled: it closes without a
    /// reason written here (it tells shutdown from listener removal itself).
    pub fn parent_cancelled(&self) {
        self.raise(CLOSE);
    }

    /// Tells the connection that the runtime was replaced (a reload): it re-checks its
    /// client against the new one.
    pub fn reloaded(&self) {
        self.raise(RELOAD);
    }

    fn raise(&self, flag: u8) {
        self.flags
            .fetch_or(flag, std::sync::atomic::Ordering::AcqRel);
        self.waker.wake();
    }

    /// The reason set with [`CloseSignal::close`], if any.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.lock().as_deref().cloned()
    }

    /// Sets the keep-alive deadline the broker's sweep watches (`None`: no keep-alive).
    pub fn set_deadline(&self, at: Option<std::time::Instant>) {
        let ms = at.map_or(0, monotonic_ms);
        self.deadline
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// For the broker's sweep: wakes the connection if its deadline passed by `now_ms`
    /// (cleared, so that it is woken once per deadline).
    pub fn expire(&self, now_ms: u64) {
        use std::sync::atomic::Ordering;
        let at = self.deadline.load(Ordering::Relaxed);
        if at != 0
            && at <= now_ms
            && self
                .deadline
                .compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.raise(TIMER);
        }
    }

    /// The listener's token: the connection closes when it fires.
    pub fn parent(&self) -> &tokio_util::sync::CancellationToken {
        &self.parent
    }

    /// For the connection task: registers its waker, then reports a close asked for here,
    /// else a passed deadline or a reload (each consumed).
    pub fn poll_signal(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Signal> {
        use std::sync::atomic::Ordering;
        use std::task::Poll;
        self.waker.register(cx.waker());
        let flags = self.flags.load(Ordering::Acquire);
        if flags & CLOSE != 0 {
            return Poll::Ready(Signal::Close);
        }
        for (flag, signal) in [(TIMER, Signal::Timer), (RELOAD, Signal::Reload)] {
            if flags & flag != 0 {
                self.flags.fetch_and(!flag, Ordering::AcqRel);
                return Poll::Ready(signal);
            }
        }
        Poll::Pending
    }

    /// Marks the connection finished (detached, its will published) and wakes a waiting
    /// takeover.
    pub fn finished(&self) {
        self.flags
            .fetch_or(DONE, std::sync::atomic::Ordering::AcqRel);
        self.done.notify_waiters();
    }

    /// Waits until [`CloseSignal::finished`] was called.
    pub async fn wait_finished(&self) {
        loop {
            let notified = self.done.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.flags.load(std::sync::atomic::Ordering::Acquire) & DONE != 0 {
                return;
            }
            notified.await;
        }
    }
}
