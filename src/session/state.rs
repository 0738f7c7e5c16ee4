//! One client's MQTT session as a sans-IO state machine (MQTT 3.1.1 sections 3.1.2.4, 4.3, 4.4, 4.6).
//!
//! Packets and messages go in, packets to send come out. It owns everything that must
//! survive a reconnect of a persistent session: subscriptions, the outbound queue, the
//! outbound inflight window and the inbound QoS 2 packet ids awaiting PUBREL. It never
//! touches a socket, a clock or another session, so it can be property-tested and stored.

use crate::model::{Message, Subscription};
use crate::protocol::codec::publish_packet_len;
use crate::protocol::{reason, Ack, AckKind, Packet, ProtocolLevel, QoS};
use crate::storage::{StorageOp, StoredMessage};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

/// Limits that bound one session's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Outbound QoS 1/2 messages that may await acknowledgement at once.
    pub inflight_window: usize,
    /// Messages that may wait in the outbound queue behind the window.
    pub queue_limit: usize,
    /// Whether QoS 0 messages are queued while the client is offline.
    pub queue_qos0_offline: bool,
    /// Payload bytes that may wait in the outbound queue (`limits.max_queued_bytes`).
    pub queue_bytes_limit: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            inflight_window: 32,
            queue_limit: 1000,
            queue_qos0_offline: false,
            queue_bytes_limit: 16 * 1024 * 1024,
        }
    }
}

pub use crate::model::OutboundState;

/// What the connected client said it can take (MQTT 5 CONNECT properties); a 3.1.1 client
/// gets the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Protocol revision of the attached connection.
    pub level: ProtocolLevel,
    /// Receive Maximum: unacknowledged QoS 1/2 PUBLISHes it accepts [MQTT-3.3.4-9].
    pub receive_maximum: u16,
    /// Maximum Packet Size: larger PUBLISHes are dropped for it [MQTT-3.1.2-25].
    pub max_packet_size: u32,
}

impl Default for Peer {
    fn default() -> Self {
        Peer {
            level: ProtocolLevel::V311,
            receive_maximum: u16::MAX,
            max_packet_size: u32::MAX,
        }
    }
}

/// Messages [`Session::drain`] discarded instead of sending, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Discarded {
    /// Expired before they could be sent [MQTT-3.3.2-5].
    pub expired: u32,
    /// Larger than the client's Maximum Packet Size [MQTT-3.1.2-25].
    pub too_large: u32,
}

/// One outbound message in the inflight window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inflight {
    /// Position in the session's outbound sequence (the storage key).
    pub seq: u64,
    /// Packet identifier assigned to it.
    pub pid: u16,
    /// The message, with the QoS granted to this subscriber.
    pub message: Message,
    /// Acknowledgement state.
    pub state: OutboundState,
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The outbound queue was at `queue_limit`.
    QueueFull,
    /// QoS 0 message for an offline client with QoS 0 queueing off.
    Qos0Offline,
    /// The queued payload bytes would exceed `queue_bytes_limit`.
    QueueBytesFull,
}

/// An acknowledgement of the wrong kind for an outbound message: PUBREC or PUBCOMP for a
/// QoS 1 delivery, PUBACK for a QoS 2 one, PUBCOMP before PUBREC. A protocol violation that
/// closes the connection [MQTT-4.8.0-1].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongAck {
    /// The packet id it named.
    pub pid: u16,
    /// The packet the client sent.
    pub got: &'static str,
    /// What that message was waiting for.
    pub awaiting: OutboundState,
}

impl std::fmt::Display for WrongAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let awaiting = match self.awaiting {
            OutboundState::AwaitPubAck => "PUBACK (QoS 1)",
            OutboundState::AwaitPubRec => "PUBREC (QoS 2)",
            OutboundState::AwaitPubComp => "PUBCOMP (QoS 2, after PUBREL)",
        };
        write!(
            f,
            "{} for packet id {} which awaits {awaiting} [MQTT-4.8.0-1]",
            self.got, self.pid
        )
    }
}

/// Result of an inbound QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundQos2 {
    /// First time this packet id is seen: route the message.
    New,
    /// A re-delivery of a message already routed: only acknowledge it [MQTT-4.3.3-2].
    Duplicate,
}

/// A client's session state.
#[derive(Debug, Clone)]
pub struct Session {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Whether the session ends when the connection does.
    pub clean_session: bool,
    /// Topic filters and their subscriptions (granted QoS, MQTT 5 options, identifier).
    pub subscriptions: BTreeMap<String, Subscription>,
    /// MQTT 5 Session Expiry Interval in seconds; `None`: a 3.1.1 session, whose expiry is
    /// `persistence.session_expiry`.
    pub expiry_interval: Option<u32>,
    /// An MQTT 5 will waiting for its delay (cleared when a connection attaches).
    pub pending_will: Option<Box<crate::storage::StoredWill>>,
    limits: SessionLimits,
    peer: Peer,
    discarded: Discarded,
    online: bool,
    next_pid: u16,
    next_seq: u64,
    inflight: VecDeque<Inflight>,
    queue: VecDeque<(u64, Message)>,
    /// Payload bytes in `queue`.
    queued_bytes: usize,
    /// Routing times of messages handed to the wire since the last `take_delivered_stamps`.
    delivered_stamps: Vec<std::time::Instant>,
    inbound_qos2: HashSet<u16>,
    /// Whether state changes are journaled for storage (persistent session, file store).
    persist: bool,
    journal: Vec<StorageOp>,
}

impl Session {
    /// A fresh, offline session.
    pub fn new(client_id: Arc<str>, clean_session: bool, limits: SessionLimits) -> Self {
        Session {
            client_id,
            clean_session,
            subscriptions: BTreeMap::new(),
            expiry_interval: None,
            pending_will: None,
            limits,
            peer: Peer::default(),
            discarded: Discarded::default(),
            online: false,
            next_pid: 1,
            next_seq: 1,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            delivered_stamps: Vec::new(),
            inbound_qos2: HashSet::new(),
            persist: false,
            journal: Vec::new(),
        }
    }

    /// Rebuilds a persistent session from storage: messages in sequence order, those with a
    /// packet id back in the inflight window, the rest queued; inbound QoS 2 ids restored.
    pub fn restore(
        client_id: Arc<str>,
        limits: SessionLimits,
        subscriptions: BTreeMap<String, Subscription>,
        mut messages: Vec<StoredMessage>,
        inbound: Vec<u16>,
    ) -> Self {
        let mut s = Session::new(client_id, false, limits);
        s.subscriptions = subscriptions;
        s.persist = true;
        messages.sort_by_key(|m| m.seq);
        for m in messages {
            s.next_seq = s.next_seq.max(m.seq + 1);
            match (m.pid, m.state) {
                (Some(pid), Some(state)) => s.inflight.push_back(Inflight {
                    seq: m.seq,
                    pid,
                    message: m.message,
                    state,
                }),
                _ => {
                    s.queued_bytes += m.message.payload.len();
                    s.queue.push_back((m.seq, m.message));
                }
            }
        }
        s.inbound_qos2 = inbound.into_iter().collect();
        s
    }

    /// Journals every later state change for storage (a persistent session on a file store).
    pub fn enable_persistence(&mut self) {
        self.persist = !self.clean_session;
    }

    /// Whether state changes are journaled (the session is stored).
    pub fn persistence_enabled(&self) -> bool {
        self.persist
    }

    /// Takes every QoS 1/2 message, inflight or queued, that reached this session through
    /// a shared subscription, with that `$share/...` filter (the session is ending).
    pub fn take_shared_messages(&mut self) -> Vec<(Arc<str>, Message)> {
        let shared_of = |m: &Message| {
            m.props
                .as_ref()
                .and_then(|p| p.shared.clone())
                .filter(|_| m.qos != QoS::AtMostOnce)
        };
        let mut out = Vec::new();
        for f in &self.inflight {
            // A QoS 2 message past PUBREC has reached its client.
            if f.state != OutboundState::AwaitPubComp {
                if let Some(filter) = shared_of(&f.message) {
                    out.push((filter, f.message.clone()));
                }
            }
        }
        for (_, m) in &self.queue {
            if let Some(filter) = shared_of(m) {
                out.push((filter, m.clone()));
            }
        }
        out
    }

    /// Journals that the session has seen the cluster's message stream up to `seq` (a
    /// persistent session only).
    pub fn journal_stream_mark(&mut self, seq: u64) {
        if self.persist {
            self.journal.push(StorageOp::StreamMark {
                client_id: self.client_id.clone(),
                seq,
            });
        }
    }

    /// Takes the storage operations journaled since the last call.
    pub fn take_journal(&mut self) -> Vec<StorageOp> {
        std::mem::take(&mut self.journal)
    }

    fn journal_put(
        &mut self,
        seq: u64,
        message: &Message,
        pid: Option<u16>,
        state: Option<OutboundState>,
    ) {
        // QoS 0 is at most once: losing it in a crash is within its contract.
        if self.persist && message.qos != QoS::AtMostOnce {
            self.journal.push(StorageOp::PutMessage {
                client_id: self.client_id.clone(),
                stored: StoredMessage {
                    seq,
                    message: message.clone(),
                    pid,
                    state,
                },
            });
        }
    }

    fn journal(&mut self, op: impl FnOnce(Arc<str>) -> StorageOp) {
        if self.persist {
            self.journal.push(op(self.client_id.clone()));
        }
    }

    /// Applies new limits (after a config reload); queued messages are never dropped by it.
    pub fn set_limits(&mut self, limits: SessionLimits) {
        self.limits = limits;
    }

    /// What the attaching client can take (its MQTT 5 CONNECT properties).
    pub fn set_peer(&mut self, peer: Peer) {
        self.peer = peer;
    }

    /// What the attached client can take.
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// Takes the counts of messages discarded instead of sent since the last call.
    pub fn take_discarded(&mut self) -> Discarded {
        std::mem::take(&mut self.discarded)
    }

    /// Inflight QoS 1/2 messages allowed: the configured window, within the client's
    /// Receive Maximum [MQTT-3.3.4-7].
    fn window(&self) -> usize {
        self.limits
            .inflight_window
            .min(usize::from(self.peer.receive_maximum))
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Number of messages waiting behind the inflight window.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Payload bytes waiting behind the inflight window.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Routing times of the messages sent since the last call, for the latency histogram.
    pub fn take_delivered_stamps(&mut self) -> Vec<std::time::Instant> {
        std::mem::take(&mut self.delivered_stamps)
    }

    /// The inflight window, oldest first.
    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    /// Whether an inbound QoS 2 packet id awaits PUBREL.
    pub fn has_inbound(&self, pid: u16) -> bool {
        self.inbound_qos2.contains(&pid)
    }

    /// Number of inbound QoS 2 messages awaiting PUBREL.
    pub fn inbound_qos2_pending(&self) -> usize {
        self.inbound_qos2.len()
    }

    /// A connection attached: re-sends every unacknowledged PUBLISH (DUP=1) and PUBREL in
    /// the original order, before anything new [MQTT-4.4.0-1], then what the window allows.
    pub fn connect(&mut self, out: &mut Vec<Packet>) {
        self.online = true;
        for f in &self.inflight {
            out.push(match f.state {
                OutboundState::AwaitPubAck | OutboundState::AwaitPubRec => {
                    Packet::Publish(f.message.to_publish(Some(f.pid), true))
                }
                OutboundState::AwaitPubComp => Packet::PubRel(f.pid),
            });
        }
        self.drain(out);
    }

    /// The connection ended; the session keeps its state for the next one.
    pub fn disconnect(&mut self) {
        self.online = false;
        // QoS 0 messages are not kept for an offline client unless configured.
        if !self.limits.queue_qos0_offline {
            self.queue.retain(|(_, m)| m.qos != QoS::AtMostOnce);
            self.queued_bytes = self.queue.iter().map(|(_, m)| m.payload.len()).sum();
        }
        // Nobody takes them while offline; a resend after reconnect is not a first delivery.
        self.delivered_stamps = Vec::new();
    }

    fn push_queue(&mut self, message: Message) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued_bytes += message.payload.len();
        self.journal_put(seq, &message, None, None);
        self.queue.push_back((seq, message));
    }

    /// Offers a message routed to this subscriber (already at its granted QoS).
    pub fn enqueue(&mut self, message: Message) -> Result<(), DropReason> {
        if !self.online && message.qos == QoS::AtMostOnce && !self.limits.queue_qos0_offline {
            return Err(DropReason::Qos0Offline);
        }
        if self.queue.len() >= self.limits.queue_limit {
            return Err(DropReason::QueueFull);
        }
        // An empty queue always takes one message, so a single payload larger than the
        // limit still reaches a subscriber that keeps up.
        if !self.queue.is_empty()
            && self.queued_bytes + message.payload.len() > self.limits.queue_bytes_limit
        {
            return Err(DropReason::QueueBytesFull);
        }
        self.push_queue(message);
        Ok(())
    }

    /// Queues a retained message for a new subscription.
    ///
    /// Not subject to `queue_limit`: the retained set is already bounded by
    /// `retained_message_limit`, and a subscriber must receive all of it [MQTT-3.3.1-6].
    pub fn enqueue_retained(&mut self, message: Message) {
        self.push_queue(message);
    }

    /// Moves queued messages onto the wire while the inflight window allows, in queue order.
    pub fn drain(&mut self, out: &mut Vec<Packet>) {
        if !self.online {
            return;
        }
        let window = self.window();
        while let Some((_, front)) = self.queue.front() {
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                break;
            }
            let Some((seq, message)) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes = self.queued_bytes.saturating_sub(message.payload.len());
            let may_discard = message.props.is_some() || self.peer.max_packet_size != u32::MAX;
            if may_discard && self.discard_unsendable(seq, &message) {
                continue;
            }
            // Bounded: the connection takes them after every drain.
            if let Some(at) = message.enqueued_at {
                if self.delivered_stamps.len() < 4096 {
                    self.delivered_stamps.push(at);
                }
            }
            match message.qos {
                QoS::AtMostOnce => out.push(Packet::Publish(message.into_publish(None, false))),
                qos => {
                    let pid = self.allocate_pid();
                    out.push(Packet::Publish(message.to_publish(Some(pid), false)));
                    let state = if qos == QoS::AtLeastOnce {
                        OutboundState::AwaitPubAck
                    } else {
                        OutboundState::AwaitPubRec
                    };
                    // The packet id is stored before the PUBLISH leaves (the caller waits for
                    // the journal), so a restart re-sends it with the same id [MQTT-4.4.0-1].
                    self.journal_put(seq, &message, Some(pid), Some(state));
                    self.inflight.push_back(Inflight {
                        seq,
                        pid,
                        message,
                        state,
                    });
                }
            }
        }
    }

    /// Drops a queued message that expired or that the client cannot take; returns
    /// whether it did. A dropped QoS 1/2 message counts as delivered [MQTT-3.1.2-25].
    fn discard_unsendable(&mut self, seq: u64, message: &Message) -> bool {
        // The clock is read only for a message that can expire.
        let expired = message
            .props
            .as_ref()
            .is_some_and(|p| p.expires_at.is_some())
            && message.is_expired(std::time::SystemTime::now());
        let too_large = !expired
            && self.peer.max_packet_size != u32::MAX
            && publish_packet_len(&message.to_publish(Some(1), false), self.peer.level)
                > self.peer.max_packet_size as usize;
        if !(expired || too_large) {
            return false;
        }
        if expired {
            self.discarded.expired += 1;
        } else {
            self.discarded.too_large += 1;
        }
        if message.qos != QoS::AtMostOnce {
            self.journal(|client_id| StorageOp::DeleteMessage { client_id, seq });
        }
        true
    }

    /// Whether there is anything to hand to [`Session::drain`] right now.
    pub fn has_sendable(&self) -> bool {
        match self.queue.front() {
            None => false,
            Some((_, m)) => m.qos == QoS::AtMostOnce || self.inflight.len() < self.window(),
        }
    }

    /// Picks a packet id not used by any inflight message [MQTT-2.3.1-2].
    fn allocate_pid(&mut self) -> u16 {
        loop {
            let pid = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            // The window is far below 65535, so a free id is always found quickly.
            if !self.inflight.iter().any(|f| f.pid == pid) {
                return pid;
            }
        }
    }

    fn position(&self, pid: u16, state: OutboundState) -> Option<usize> {
        self.inflight
            .iter()
            .position(|f| f.pid == pid && f.state == state)
    }

    /// The state of the inflight message with this packet id, if any.
    fn state_of(&self, pid: u16) -> Option<OutboundState> {
        self.inflight.iter().find(|f| f.pid == pid).map(|f| f.state)
    }

    /// PUBACK from the client: the QoS 1 message is delivered. Returns whether it was known;
    /// a PUBACK for a QoS 2 delivery is the client's protocol violation.
    pub fn puback(&mut self, pid: u16, out: &mut Vec<Packet>) -> Result<bool, WrongAck> {
        let known = match self.position(pid, OutboundState::AwaitPubAck) {
            Some(i) => self.complete(i),
            None => {
                if let Some(awaiting) = self.state_of(pid) {
                    return Err(WrongAck {
                        pid,
                        got: "PUBACK",
                        awaiting,
                    });
                }
                false
            }
        };
        self.drain(out);
        Ok(known)
    }

    /// PUBREC from the client: answer PUBREL [MQTT-4.3.3-1]. Returns whether it was known;
    /// a PUBREC for a QoS 1 delivery is the client's protocol violation.
    pub fn pubrec(&mut self, pid: u16, out: &mut Vec<Packet>) -> Result<bool, WrongAck> {
        let known = match self.state_of(pid) {
            Some(OutboundState::AwaitPubRec) => {
                let i = self
                    .position(pid, OutboundState::AwaitPubRec)
                    .unwrap_or_default();
                let f = &mut self.inflight[i];
                // The message itself is no longer needed once the client has it.
                f.message.payload = bytes::Bytes::new();
                f.state = OutboundState::AwaitPubComp;
                let (seq, message) = (f.seq, f.message.clone());
                self.journal_put(seq, &message, Some(pid), Some(OutboundState::AwaitPubComp));
                true
            }
            // A repeated PUBREC (the client did not see our PUBREL): answer it again.
            Some(OutboundState::AwaitPubComp) => true,
            Some(awaiting @ OutboundState::AwaitPubAck) => {
                return Err(WrongAck {
                    pid,
                    got: "PUBREC",
                    awaiting,
                })
            }
            None => false,
        };
        // Answer even an unknown id so that the client can finish its flow; an MQTT 5
        // client is told it was unknown (0x92).
        out.push(self.ack(AckKind::PubRel, pid, known));
        Ok(known)
    }

    /// An MQTT 5 PUBREC with a failure reason (0x80 and above): the QoS 2 flow ends there,
    /// no PUBREL is sent (section 4.3.3). Returns whether the id was known.
    pub fn pubrec_failed(&mut self, pid: u16, out: &mut Vec<Packet>) -> bool {
        let known = match self.position(pid, OutboundState::AwaitPubRec) {
            Some(i) => self.complete(i),
            None => false,
        };
        self.drain(out);
        known
    }

    /// A plain acknowledgement, or for an MQTT 5 client one saying the packet id was not
    /// found (0x92).
    fn ack(&self, kind: AckKind, pid: u16, known: bool) -> Packet {
        if known || !self.peer.level.is_v5() {
            return kind.plain(pid);
        }
        Packet::Ack(Ack {
            kind,
            pid,
            reason: reason::PACKET_IDENTIFIER_NOT_FOUND,
            properties: None,
        })
    }

    /// PUBCOMP from the client: the QoS 2 flow is complete. Returns whether it was known;
    /// a PUBCOMP for a QoS 1 delivery, or before PUBREC, is the client's protocol violation.
    pub fn pubcomp(&mut self, pid: u16, out: &mut Vec<Packet>) -> Result<bool, WrongAck> {
        let known = match self.position(pid, OutboundState::AwaitPubComp) {
            Some(i) => self.complete(i),
            None => {
                if let Some(awaiting) = self.state_of(pid) {
                    return Err(WrongAck {
                        pid,
                        got: "PUBCOMP",
                        awaiting,
                    });
                }
                false
            }
        };
        self.drain(out);
        Ok(known)
    }

    /// Removes a finished inflight message.
    fn complete(&mut self, i: usize) -> bool {
        match self.inflight.remove(i) {
            Some(f) => {
                self.journal(|client_id| StorageOp::DeleteMessage {
                    client_id,
                    seq: f.seq,
                });
                true
            }
            None => false,
        }
    }

    /// An inbound QoS 2 PUBLISH: records its id until PUBREL (the caller answers PUBREC).
    pub fn inbound_qos2(&mut self, pid: u16) -> InboundQos2 {
        if self.inbound_qos2.insert(pid) {
            self.journal(|client_id| StorageOp::PutInbound { client_id, pid });
            InboundQos2::New
        } else {
            InboundQos2::Duplicate
        }
    }

    /// Forgets an inbound QoS 2 id whose PUBREC refused the message (MQTT 5: the flow
    /// ends with a failure PUBREC, no PUBREL follows).
    pub fn forget_inbound(&mut self, pid: u16) {
        if self.inbound_qos2.remove(&pid) {
            self.journal(|client_id| StorageOp::DeleteInbound { client_id, pid });
        }
    }

    /// PUBREL from the client: forget the id and answer PUBCOMP [MQTT-4.3.3-2].
    pub fn pubrel(&mut self, pid: u16, out: &mut Vec<Packet>) {
        let known = self.inbound_qos2.remove(&pid);
        if known {
            self.journal(|client_id| StorageOp::DeleteInbound { client_id, pid });
        }
        out.push(self.ack(AckKind::PubComp, pid, known));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Publish;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn msg(n: u32, qos: QoS) -> Message {
        Message::new("t", Bytes::from(n.to_string()), qos, false)
    }

    fn publishes(out: &[Packet]) -> Vec<&Publish> {
        out.iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn resend_in_order_with_dup_mqtt_4_4_0_1() {
        let limits = SessionLimits {
            inflight_window: 2,
            ..Default::default()
        };
        let mut s = Session::new("c".into(), false, limits);
        let mut out = Vec::new();
        s.connect(&mut out);
        s.enqueue(msg(1, QoS::AtLeastOnce)).unwrap();
        s.enqueue(msg(2, QoS::ExactlyOnce)).unwrap();
        s.enqueue(msg(3, QoS::AtLeastOnce)).unwrap();
        s.drain(&mut out);
        assert_eq!(publishes(&out).len(), 2, "window of 2");
        let pid2 = publishes(&out)[1].pid.unwrap();
        out.clear();
        s.pubrec(pid2, &mut out).unwrap();
        assert_eq!(out, vec![Packet::PubRel(pid2)]);
        s.disconnect();
        out.clear();
        s.connect(&mut out);
        // PUBLISH 1 (DUP), then PUBREL for 2, in original order; 3 still waits for the window.
        assert!(matches!(&out[0], Packet::Publish(p) if p.dup && &p.payload[..] == b"1"));
        assert_eq!(out[1], Packet::PubRel(pid2));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn qos0_not_queued_offline_by_default() {
        let mut s = Session::new("c".into(), false, SessionLimits::default());
        assert_eq!(
            s.enqueue(msg(1, QoS::AtMostOnce)),
            Err(DropReason::Qos0Offline)
        );
        assert!(s.enqueue(msg(1, QoS::AtLeastOnce)).is_ok());
    }

    #[test]
    fn queued_bytes_limit() {
        let limits = SessionLimits {
            queue_bytes_limit: 10,
            ..Default::default()
        };
        let mut s = Session::new("c".into(), false, limits);
        let big = |n| Message::new("t", Bytes::from(vec![0u8; n]), QoS::AtLeastOnce, false);
        assert!(
            s.enqueue(big(20)).is_ok(),
            "an empty queue takes one message"
        );
        assert_eq!(s.enqueue(big(1)), Err(DropReason::QueueBytesFull));
        let mut out = Vec::new();
        s.connect(&mut out);
        assert_eq!(s.queued_bytes(), 0);
        s.enqueue(big(6)).unwrap();
        s.enqueue(big(4)).unwrap();
        assert_eq!(s.queued_bytes(), 10);
        assert_eq!(s.enqueue(big(1)), Err(DropReason::QueueBytesFull));
        s.drain(&mut out);
        assert_eq!(s.queued_bytes(), 0, "both went inflight");
    }

    #[test]
    fn inbound_qos2_exactly_once() {
        let mut s = Session::new("c".into(), false, SessionLimits::default());
        let mut out = Vec::new();
        assert_eq!(s.inbound_qos2(9), InboundQos2::New);
        assert_eq!(s.inbound_qos2(9), InboundQos2::Duplicate);
        s.pubrel(9, &mut out);
        assert_eq!(out, vec![Packet::PubComp(9)]);
        assert_eq!(s.inbound_qos2(9), InboundQos2::New);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Enqueue(u8),
        AckOldest,
        AckRandom(u16),
        Reconnect,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3).prop_map(Op::Enqueue),
            3 => Just(Op::AckOldest),
            1 => any::<u16>().prop_map(Op::AckRandom),
            1 => Just(Op::Reconnect),
        ]
    }

    proptest! {
        /// Whatever the client acknowledges and whenever it reconnects, the window is never
        /// exceeded, packet ids are unique and non-zero, every QoS 1/2 message is completed
        /// exactly once, and first transmissions happen in enqueue order.
        #[test]
        fn outbound_flow_invariants(ops in prop::collection::vec(op(), 1..200), window in 1usize..5) {
            let limits = SessionLimits { inflight_window: window, queue_limit: 10_000, queue_qos0_offline: true, ..Default::default() };
            let mut s = Session::new("c".into(), false, limits);
            let mut out = Vec::new();
            s.connect(&mut out);
            let mut next = 0u32;
            let mut enqueued_qos12 = Vec::new();
            let mut first_sent = Vec::new();
            let mut completed = Vec::new();
            for op in ops {
                out.clear();
                match op {
                    Op::Enqueue(q) => {
                        let qos = QoS::from_u8(q).unwrap();
                        if qos != QoS::AtMostOnce { enqueued_qos12.push(next); }
                        s.enqueue(msg(next, qos)).unwrap();
                        next += 1;
                        s.drain(&mut out);
                    }
                    Op::AckOldest => {
                        let oldest = s.inflight().next().cloned();
                        if let Some(f) = oldest {
                            let n: u32 = std::str::from_utf8(&f.message.payload).unwrap_or("0").parse().unwrap_or(u32::MAX);
                            match f.state {
                                OutboundState::AwaitPubAck => { prop_assert_eq!(s.puback(f.pid, &mut out), Ok(true)); completed.push(n); }
                                OutboundState::AwaitPubRec => { prop_assert_eq!(s.pubrec(f.pid, &mut out), Ok(true)); completed.push(n); }
                                OutboundState::AwaitPubComp => { prop_assert_eq!(s.pubcomp(f.pid, &mut out), Ok(true)); }
                            }
                        }
                    }
                    Op::AckRandom(pid) => {
                        // A PUBACK naming a QoS 2 message is refused and changes nothing.
                        let before = s.inflight().count();
                        if s.puback(pid, &mut out).is_err() { prop_assert_eq!(s.inflight().count(), before); }
                    }
                    Op::Reconnect => { s.disconnect(); s.connect(&mut out); }
                }
                for p in publishes(&out) {
                    if !p.dup && p.qos != QoS::AtMostOnce {
                        first_sent.push(std::str::from_utf8(&p.payload).unwrap().parse::<u32>().unwrap());
                    }
                }
                prop_assert!(s.inflight().count() <= window);
                let pids: HashSet<u16> = s.inflight().map(|f| f.pid).collect();
                prop_assert_eq!(pids.len(), s.inflight().count());
                prop_assert!(!pids.contains(&0));
            }
            prop_assert_eq!(&first_sent[..], &enqueued_qos12[..first_sent.len()]);
            let mut c = completed.clone();
            c.dedup();
            prop_assert_eq!(c.len(), completed.len());
        }
    }
}
