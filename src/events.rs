//! Typed broker events for embedders: `BrokerHandle::events()` hands out a receiver of a
//! bounded broadcast channel.
//!
//! A slow consumer never slows the broker: the channel keeps the newest
//! [`EVENT_CAPACITY`] events, and a receiver that fell further behind gets
//! `Err(RecvError::Lagged(n))` from `recv()`, telling it how many events it missed, and then
//! continues with the oldest event still held. Emitting costs one atomic load until the
//! first receiver is handed out: events are only built from then on.

use crate::config::TransportKind;
use crate::protocol::QoS;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events held for receivers; older ones are overwritten (the receiver is told how many).
pub const EVENT_CAPACITY: usize = 1024;

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
}

impl DisconnectReason {
    /// Every reason, in metrics order.
    pub const ALL: [DisconnectReason; 11] = [
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
        }
    }

    /// Position in [`DisconnectReason::ALL`] (and in the metrics counter array).
    pub fn index(self) -> usize {
        self as usize
    }
}

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
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(EVENT_CAPACITY).0,
            active: std::sync::Arc::new(AtomicBool::new(false)),
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

    /// Sends the event built by `make`, building it only once somebody has listened.
    #[inline]
    pub fn emit(&self, make: impl FnOnce() -> BrokerEvent) {
        if self.active.load(Ordering::Acquire) {
            // An error only means every receiver went away.
            let _ = self.tx.send(make());
        }
    }
}
