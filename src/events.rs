//! Typed broker events for embedders: `BrokerHandle::events()` hands out a receiver of a
//! bounded broadcast channel.
//!
//! A slow consumer never slows the broker: the channel keeps the newest
//! [`EVENT_CAPACITY`] events, and a receiver that fell further behind gets
//! `Err(RecvError::Lagged(n))` from `recv()`, telling it how many events it missed, and then
//! continues with the oldest event still held. Emitting costs one atomic load until the
//! first receiver is handed out: events are only built from then on.
//!
//! Owns the event types and the bus; must not import anything above `model` and `protocol`.

use crate::model::TransportKind;
use crate::protocol::QoS;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events held for receivers; older ones are overwritten (the receiver is told how many).
pub const EVENT_CAPACITY: usize = 1024;

pub use crate::model::DisconnectReason;

/// Something that happened in the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEvent {
    /// A client completed CONNECT and was accepted (the seed's `clientConnected`).
    ClientConnected {
        /// Client identifier.
        client_id: Arc<str>,
        /// Remote address.
        peer: SocketAddr,
        /// Transport it came in on.
        transport: TransportKind,
        /// User name, if any.
        username: Option<String>,
        /// The clean-session flag of its CONNECT.
        clean_session: bool,
        /// Whether a stored session was resumed.
        session_present: bool,
        /// Protocol revision.
        protocol: crate::protocol::ProtocolLevel,
    },
    /// A persistent session ended without its client coming back (expiry).
    SessionExpired {
        /// Client identifier.
        client_id: Arc<str>,
    },
    /// A PUBLISH was handed to a client's connection to write (only emitted while some
    /// listener asked for deliveries: see [`EventBus::want_deliveries`]).
    MessageDelivered {
        /// The client it was sent to.
        client_id: Arc<str>,
        /// Topic name.
        topic: Arc<str>,
        /// QoS it was sent with.
        qos: QoS,
    },
    /// A client acknowledged a QoS 1 (PUBACK) or QoS 2 (PUBCOMP) delivery (only while some
    /// listener asked for deliveries).
    MessageAcknowledged {
        /// The client.
        client_id: Arc<str>,
        /// Topic name.
        topic: Arc<str>,
        /// QoS it was sent with.
        qos: QoS,
    },
    /// A message was dropped instead of delivered to a client.
    MessageDropped {
        /// The client it was for.
        client_id: Arc<str>,
        /// Topic name.
        topic: Arc<str>,
        /// Why (`queue full`, `offline QoS 0`, `too large for the client`).
        reason: &'static str,
    },
    /// A connected client's connection ended.
    ClientDisconnected {
        /// Client identifier.
        client_id: Arc<str>,
        /// Remote address.
        peer: SocketAddr,
        /// Why.
        reason: DisconnectReason,
    },
    /// A SUBSCRIBE filter was granted.
    Subscribed {
        /// Client identifier.
        client_id: Arc<str>,
        /// Topic filter.
        filter: String,
        /// Granted QoS.
        qos: QoS,
    },
    /// An UNSUBSCRIBE filter was processed.
    Unsubscribed {
        /// Client identifier.
        client_id: Arc<str>,
        /// Topic filter.
        filter: String,
    },
    /// A client's PUBLISH was routed (the seed's `messagePublished`).
    MessagePublished {
        /// Publisher's client identifier.
        client_id: Arc<str>,
        /// Topic name.
        topic: Arc<str>,
        /// QoS as published.
        qos: QoS,
        /// Retain flag.
        retain: bool,
        /// Payload size in bytes.
        payload_len: usize,
        /// Subscribers it was queued for.
        subscribers: usize,
    },
    /// A client was refused by authentication.
    AuthFailed {
        /// Client identifier from CONNECT.
        client_id: Arc<str>,
        /// User name from CONNECT.
        username: Option<String>,
        /// Remote address.
        peer: SocketAddr,
        /// Why (never the password).
        reason: String,
    },
    /// A bridge's link to its remote broker came up or went down.
    BridgeState {
        /// Bridge name.
        name: Arc<str>,
        /// Whether it is connected now.
        connected: bool,
        /// The remote address (connected) or the one last tried.
        remote: Option<String>,
        /// Why it went down or could not connect.
        error: Option<String>,
    },
    /// This cluster node's link to NATS came up, went down, or stayed down for
    /// `cluster.isolation_timeout` (the node then disconnected its clients).
    ClusterLink {
        /// `up`, `down` or `isolated`.
        state: &'static str,
    },
    /// A configuration reload was attempted.
    ConfigReloaded {
        /// Generation in force afterwards.
        generation: u64,
        /// Whether it succeeded.
        ok: bool,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// A plugin failed (trapped, timed out, or returned garbage): the seed's `error`.
    PluginError {
        /// Plugin name.
        plugin: String,
        /// What happened.
        error: String,
    },
}

/// The sending side, owned by the broker (clones share the channel: plugins hold one).
#[derive(Debug, Clone)]
pub(crate) struct EventBus {
    tx: broadcast::Sender<BrokerEvent>,
    /// Set once a receiver was ever handed out: until then emitting costs one atomic load
    /// (asking the channel for its receiver count would take its lock on every message).
    active: std::sync::Arc<AtomicBool>,
    /// Set once a listener asked for per-delivery events (one per message and subscriber,
    /// too many to build for listeners that ignore them).
    deliveries: std::sync::Arc<AtomicBool>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(EVENT_CAPACITY).0,
            active: std::sync::Arc::new(AtomicBool::new(false)),
            deliveries: std::sync::Arc::new(AtomicBool::new(false)),
        }
    }
}

impl EventBus {
    /// A new receiver that sees events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BrokerEvent> {
        let rx = self.tx.subscribe();
        self.active.store(true, Ordering::Release);
        rx
    }

    /// Asks for [`BrokerEvent::MessageDelivered`] and [`BrokerEvent::MessageAcknowledged`]
    /// from now on.
    pub fn want_deliveries(&self) {
        self.deliveries.store(true, Ordering::Release);
    }

    /// Whether per-delivery events are wanted.
    #[inline]
    pub fn deliveries_wanted(&self) -> bool {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Sends the event built by `make`, building it only once somebody has listened.
    #[inline]
    pub fn emit(&self, make: impl FnOnce() -> BrokerEvent) {
        if self.active.load(Ordering::Acquire) {
            // An error only means every receiver went away.
            let _ = self.tx.send(make());
        }
    }
}
