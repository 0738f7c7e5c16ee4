//! Counters added for operations: disconnects by reason, connect outcomes, limit refusals,
//! per-QoS traffic and the publish-to-deliver latency histogram. They live in
//! [`super::Counters::ops`] so that the core counters stay as they are.

use crate::events::DisconnectReason;
use crate::protocol::QoS;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A resource limit that refused or slowed something, for `mqtt_limit_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// `limits.max_subscriptions`: SUBACK 0x80.
    MaxSubscriptions,
    /// `limits.max_topic_length`: PUBLISH closes, SUBSCRIBE filter 0x80.
    MaxTopicLength,
    /// `limits.max_topic_levels`: same.
    MaxTopicLevels,
    /// `limits.publish_rate`: the reader paused.
    PublishRate,
    /// `limits.publish_bytes_rate`: the reader paused.
    PublishBytesRate,
    /// `limits.max_queued_bytes`: message for that subscriber dropped.
    MaxQueuedBytes,
    /// `performance.message_queue_limit`: message for that subscriber dropped.
    MessageQueueLimit,
}

impl LimitKind {
    /// Every kind, in metrics order.
    pub const ALL: [LimitKind; 7] = [
        LimitKind::MaxSubscriptions,
        LimitKind::MaxTopicLength,
        LimitKind::MaxTopicLevels,
        LimitKind::PublishRate,
        LimitKind::PublishBytesRate,
        LimitKind::MaxQueuedBytes,
        LimitKind::MessageQueueLimit,
    ];

    /// The config key, used as the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::MaxSubscriptions => "max_subscriptions",
            LimitKind::MaxTopicLength => "max_topic_length",
            LimitKind::MaxTopicLevels => "max_topic_levels",
            LimitKind::PublishRate => "publish_rate",
            LimitKind::PublishBytesRate => "publish_bytes_rate",
            LimitKind::MaxQueuedBytes => "max_queued_bytes",
            LimitKind::MessageQueueLimit => "message_queue_limit",
        }
    }

    /// Bit used to log a refusal once per client.
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// Upper bounds (seconds) of the latency histogram buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// A lock-free Prometheus-style histogram of durations.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (`LATENCY_BUCKETS` then `+Inf`), sum in seconds, count.
    pub fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, sum, total)
    }
}

/// One counter per MQTT 5 reason code (index = code).
#[derive(Debug)]
pub struct ReasonCodeCounts(Box<[AtomicU64; 256]>);

impl Default for ReasonCodeCounts {
    fn default() -> Self {
        ReasonCodeCounts(Box::new(std::array::from_fn(|_| AtomicU64::new(0))))
    }
}

impl ReasonCodeCounts {
    /// Counts one `code` sent.
    pub fn inc(&self, code: u8) {
        self.0[usize::from(code)].fetch_add(1, Ordering::Relaxed);
    }

    /// Every code sent at least once, with its count.
    pub fn nonzero(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0..=255u8).filter_map(|c| {
            let n = self.0[usize::from(c)].load(Ordering::Relaxed);
            (n > 0).then_some((c, n))
        })
    }
}

/// Per-QoS counters (index = QoS level).
pub type PerQos = [AtomicU64; 3];

/// Operations counters (see the module doc).
#[derive(Debug, Default)]
pub struct OpsCounters {
    /// Connections that ended after CONNACK 0, by [`DisconnectReason::index`].
    pub disconnects: [AtomicU64; DisconnectReason::ALL.len()],
    /// CONNECTs accepted (CONNACK 0).
    pub connects_accepted: AtomicU64,
    /// CONNECTs refused for an empty client id without clean session (CONNACK 0x02).
    pub connects_identifier_rejected: AtomicU64,
    /// MQTT 5 CONNECTs refused for an authentication method the broker does not offer
    /// (CONNACK 0x8C).
    pub connects_bad_auth_method: AtomicU64,
    /// MQTT 5 reason codes other than success sent to clients (CONNACK, acknowledgements,
    /// SUBACK and UNSUBACK entries, DISCONNECT), by code.
    pub reason_codes_sent: ReasonCodeCounts,
    /// Messages not sent because they expired first (MQTT 5 Message Expiry Interval).
    pub expired_messages: AtomicU64,
    /// Messages not sent because they exceed the client's Maximum Packet Size.
    pub dropped_too_large_for_client: AtomicU64,
    /// Connections closed because CONNECT (or a handshake) did not complete in time.
    pub connect_timeouts: AtomicU64,
    /// Connections closed because a packet exceeded `max_packet_size`.
    pub oversized_packets: AtomicU64,
    /// Refusals per [`LimitKind`] (in `LimitKind::ALL` order).
    pub limits: [AtomicU64; LimitKind::ALL.len()],
    /// PUBLISH to `$SYS/...` from clients: acknowledged and dropped.
    pub sys_publish_denied: AtomicU64,
    /// PUBLISH packets received per QoS.
    pub messages_in: PerQos,
    /// PUBLISH packets sent per QoS.
    pub messages_out: PerQos,
    /// Payload bytes received per QoS.
    pub payload_bytes_in: PerQos,
    /// Payload bytes sent per QoS.
    pub payload_bytes_out: PerQos,
    /// Time from routing a client's PUBLISH to writing it to a subscriber.
    pub deliver_latency: LatencyHistogram,
}

impl OpsCounters {
    /// Counts a refusal by `kind`.
    #[inline]
    pub fn limit(&self, kind: LimitKind) {
        self.limits[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection end.
    #[inline]
    pub fn disconnect(&self, reason: DisconnectReason) {
        self.disconnects[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one PUBLISH in or out.
    #[inline]
    pub fn publish(&self, inbound: bool, qos: QoS, payload_len: usize) {
        let (m, b) = if inbound {
            (&self.messages_in, &self.payload_bytes_in)
        } else {
            (&self.messages_out, &self.payload_bytes_out)
        };
        m[qos as usize].fetch_add(1, Ordering::Relaxed);
        b[qos as usize].fetch_add(payload_len as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(100));
        let (b, sum, count) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!(b[0], 1);
        assert_eq!(b[5], 2, "<= 5 ms");
        assert_eq!(b[LATENCY_BUCKETS.len() - 1], 2, "<= 60 s");
        assert_eq!(b[LATENCY_BUCKETS.len()], 3, "+Inf");
        assert!((sum - 100.00305).abs() < 1e-6, "{sum}");
    }
}
