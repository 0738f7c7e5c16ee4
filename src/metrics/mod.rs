//! Counters the broker keeps about itself, and the snapshot `BrokerHandle::stats()` returns.
//!
//! Owns the counter and histogram types only; rendering them (Prometheus, `$SYS`) is the
//! operator surfaces' job in `crate::admin`, so this module imports nothing above `events`.
//!
//! Counters are relaxed atomics: cheap on the hot path, exact enough for monitoring.

pub mod ops;

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated by connections and routing.
#[derive(Debug, Default)]
pub struct Counters {
    /// Open connections, all transports.
    pub connections: AtomicU64,
    /// Open TCP connections.
    pub connections_tcp: AtomicU64,
    /// Open TLS connections.
    pub connections_tls: AtomicU64,
    /// Open WebSocket connections.
    pub connections_ws: AtomicU64,
    /// Open WebSocket-over-TLS connections.
    pub connections_wss: AtomicU64,
    /// Open connections of bridges to this broker.
    pub connections_bridge: AtomicU64,
    /// Connections ever accepted.
    pub connections_accepted: AtomicU64,
    /// Connections refused because `max_connections` was reached.
    pub connections_refused_limit: AtomicU64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: AtomicU64,
    /// Connections closed by keep-alive expiry.
    pub keep_alive_timeouts: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_in: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_out: AtomicU64,
    /// Bytes read from clients.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients.
    pub bytes_out: AtomicU64,
    /// Messages dropped because a subscriber's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages dropped for offline subscribers.
    pub dropped_offline_qos0: AtomicU64,
    /// Messages published to a topic nobody subscribed to.
    pub dropped_no_subscribers: AtomicU64,
    /// New retained topics refused because `retained_message_limit` was reached.
    pub retained_refused_limit: AtomicU64,
    /// Successful authentications.
    pub auth_success: AtomicU64,
    /// Failed authentications.
    pub auth_failure: AtomicU64,
    /// PUBLISH packets refused by the ACL (acknowledged and dropped).
    pub acl_denied_publish: AtomicU64,
    /// SUBSCRIBE filters refused by the ACL (SUBACK 0x80).
    pub acl_denied_subscribe: AtomicU64,
    /// Deliveries withheld because the subscriber may not read the topic.
    pub acl_denied_deliver: AtomicU64,
    /// Successful configuration reloads.
    pub reloads_ok: AtomicU64,
    /// Refused configuration reloads.
    pub reloads_failed: AtomicU64,
    /// Clients disconnected because a reload revoked their credentials.
    pub reauth_disconnects: AtomicU64,
    /// Will messages published.
    pub wills_published: AtomicU64,
    /// Operations counters: disconnect reasons, limits, per-QoS traffic, latency.
    pub ops: ops::OpsCounters,
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Increments a counter.
    #[inline]
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Decrements a counter.
    #[inline]
    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    #[inline]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Open connections per transport, in the seed's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct ConnectionStats {
    /// All transports.
    pub total: u64,
    /// Plain TCP.
    pub tcp: u64,
    /// TLS.
    pub tls: u64,
    /// WebSocket (the seed's `websocket`).
    pub websocket: u64,
    /// WebSocket over TLS.
    pub wss: u64,
    /// Bridges' own connections.
    pub bridge: u64,
}

/// Session counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct SessionStats {
    /// Sessions held, online or not.
    pub total: u64,
    /// Sessions with a connection attached.
    pub connected: u64,
}

/// Subscription counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct SubscriptionStats {
    /// (filter, client) pairs.
    pub total: u64,
}

/// Outbound messages awaiting acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct InflightStats {
    /// QoS 1 awaiting PUBACK.
    pub qos1: u64,
    /// QoS 2 awaiting PUBREC or PUBCOMP, plus inbound QoS 2 awaiting PUBREL.
    pub qos2: u64,
}

/// Message counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct MessageStats {
    /// Retained topics.
    pub retained: u64,
    /// Inflight QoS 1/2.
    pub inflight: InflightStats,
    /// Messages queued for sessions behind their inflight windows.
    pub queued: u64,
    /// PUBLISH packets received.
    pub received: u64,
    /// PUBLISH packets sent.
    pub sent: u64,
    /// Messages dropped because a subscriber queue was full.
    pub dropped_queue_full: u64,
}

/// Byte counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct ByteStats {
    /// Bytes read from clients.
    pub received: u64,
    /// Bytes written to clients.
    pub sent: u64,
}

/// A point-in-time view of the broker, shaped like the seed's `getStats()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct StatsSnapshot {
    /// Generation of the configuration in force (+1 per successful reload).
    pub config_generation: u64,
    /// Open connections.
    pub connections: ConnectionStats,
    /// Sessions.
    pub sessions: SessionStats,
    /// Subscriptions.
    pub subscriptions: SubscriptionStats,
    /// Messages.
    pub messages: MessageStats,
    /// Bytes.
    pub bytes: ByteStats,
}
