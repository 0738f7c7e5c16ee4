//! The per-client protocol engine: everything that happens after a client is authenticated,
//! as a sans-IO state machine (the shape of quinn-proto).
//!
//! Packets and the current time go in ([`Engine::handle`], [`Engine::on_wake`],
//! [`Engine::on_timer`]); what to do comes out: packets to send ([`Engine::take_output`]),
//! the [`Receipt`] that must be satisfied before they are written (an acknowledgement is
//! sent only once the router and the store accepted the message), the deadlines to arm
//! (keep-alive, publish-rate pause) and a close with its [`CloseReason`]. Messages and
//! subscription changes go to the [`Router`](super::router::Router) seam; session state
//! changes are journaled through the storage writer.
//!
//! It covers SUBSCRIBE/UNSUBSCRIBE (filter depth, topic limits, `max_subscriptions`, ACL,
//! SUBACK, retained replay), PUBLISH in both directions with the QoS 1/2 flows, the `$SYS`
//! refusal, transforms, publish-rate decisions, keep-alive and the will.
//!
//! Owns one client's protocol state (ACL cache, rate budgets, once-only log bits, output);
//! must not touch a socket, a timer or a tokio runtime, so it runs in unit tests and
//! proptest as it runs in the broker.

use super::registry::SessionEntry;
use super::router::Receipt;
use super::Core;
use crate::hooks::{AclAction, AclCache, AclRequest, ClientInfo};
use crate::limits::TokenBucket;
use crate::metrics::ops::LimitKind;
use crate::metrics::Counters;
use crate::model::{CloseReason, Message};
use crate::protocol::{LastWill, Packet, Publish, QoS, SubAck, SubAckCode, Subscribe};
use crate::routing::trie::MAX_FILTER_LEVELS;
use crate::session::InboundQos2;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// `Engine::logged` bit for PUBLISH to `$SYS` (above the `LimitKind` bits).
const SYS_LOGGED: u32 = 1 << 31;

/// See the module documentation.
pub(crate) struct Engine {
    client: Arc<ClientInfo>,
    entry: Arc<SessionEntry>,
    will: Option<LastWill>,
    /// Longest silence allowed (1.5 × keep-alive [MQTT-3.1.2-24]), if any.
    idle_limit: Option<Duration>,
    /// When the keep-alive expires unless a whole packet arrives first.
    idle_deadline: Option<Instant>,
    /// Reading is paused until then: the client is over its publish rate.
    throttle: Option<Instant>,
    /// This connection's PUBLISH decisions of the authorizer chain.
    acl_cache: AclCache,
    rate_msgs: TokenBucket,
    rate_bytes: TokenBucket,
    /// `LimitKind::bit`s of the refusals already logged for this connection.
    logged: u32,
    /// Packets to send, in order.
    out: Vec<Packet>,
    /// What must be accepted before `out` may be written.
    receipt: Receipt,
}

impl Engine {
    /// An engine for a client attached to `entry`; `keep_alive` is CONNECT's (seconds) and
    /// `idle_timeout` the server's fallback for clients that sent 0 (zero: none).
    pub fn new(
        client: Arc<ClientInfo>,
        entry: Arc<SessionEntry>,
        will: Option<LastWill>,
        keep_alive: u16,
        idle_timeout: Duration,
        now: Instant,
    ) -> Engine {
        let idle_limit = if keep_alive > 0 {
            Some(Duration::from_millis(u64::from(keep_alive) * 1500))
        } else if !idle_timeout.is_zero() {
            Some(idle_timeout)
        } else {
            None
        };
        Engine {
            client,
            entry,
            will,
            idle_limit,
            idle_deadline: idle_limit.map(|d| now + d),
            throttle: None,
            acl_cache: AclCache::default(),
            rate_msgs: TokenBucket::new(now),
            rate_bytes: TokenBucket::new(now),
            logged: 0,
            out: Vec::new(),
            receipt: Receipt::Accepted,
        }
    }

    /// The client this engine serves.
    pub fn client(&self) -> &Arc<ClientInfo> {
        &self.client
    }

    /// The session it is attached to.
    pub fn entry(&self) -> &Arc<SessionEntry> {
        &self.entry
    }

    /// The session is attached: CONNACK, then every unacknowledged PUBLISH (DUP=1) and
    /// PUBREL in the original order, then what the window allows [MQTT-4.4.0-1].
    pub fn connected(&mut self, core: &Core, connack: Packet) {
        self.out.push(connack);
        let mut state = self.entry.state();
        state.connect(&mut self.out);
        let ticket = core.persist(&mut state);
        drop(state);
        self.note(Receipt::from_ticket(ticket));
    }

    /// Packets to write and the receipt that must be satisfied first; the receipt is reset.
    #[cfg(test)]
    pub fn take_output(&mut self) -> (Vec<Packet>, Receipt) {
        (
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.receipt),
        )
    }

    /// Appends pending packets to `buf`, keeping `buf`'s allocation (the shell's hot path).
    pub fn drain_output_into(&mut self, buf: &mut Vec<Packet>) -> Receipt {
        if buf.is_empty() {
            // The common case: hand the whole buffer over, no copy, no new allocation.
            std::mem::swap(buf, &mut self.out);
        } else {
            buf.append(&mut self.out);
        }
        std::mem::take(&mut self.receipt)
    }

    /// Drops the output buffer's allocation (an idle connection keeps none).
    pub fn release_output(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = Vec::new();
        }
    }

    /// When the keep-alive expires unless a packet arrives; `None`: no keep-alive. Not
    /// armed while reading is paused (a paused client is not idle).
    pub fn keep_alive_deadline(&self) -> Option<Instant> {
        if self.throttle.is_some() {
            None
        } else {
            self.idle_deadline
        }
    }

    /// Until when the socket must not be read (the client is over its publish rate).
    pub fn read_paused_until(&self) -> Option<Instant> {
        self.throttle
    }

    /// A timer fired: ends a publish-rate pause, or expires the keep-alive.
    pub fn on_timer(&mut self, now: Instant) -> Result<(), CloseReason> {
        if let Some(until) = self.throttle {
            if now >= until {
                self.throttle = None;
                // A paused client was not idle.
                self.touch(now);
            }
            return Ok(());
        }
        match self.idle_deadline {
            Some(d) if now >= d => Err(CloseReason::KeepAlive),
            _ => Ok(()),
        }
    }

    /// The session was woken (messages were queued for it): moves what the inflight window
    /// allows onto the wire.
    pub fn on_wake(&mut self, core: &Core) {
        let mut state = self.entry.state();
        state.drain(&mut self.out);
        let ticket = core.persist(&mut state);
        drop(state);
        self.note(Receipt::from_ticket(ticket));
    }

    /// Routing times of the messages just handed out, for the latency histogram.
    pub fn take_delivered_stamps(&self) -> Vec<Instant> {
        self.entry.state().take_delivered_stamps()
    }

    fn touch(&mut self, now: Instant) {
        if let Some(d) = self.idle_limit {
            self.idle_deadline = Some(now + d);
        }
    }

    fn note(&mut self, receipt: Receipt) {
        self.receipt = self.receipt.and(receipt);
    }

    /// Runs one session transition under its lock and journals what it changed.
    fn with_session<R>(
        &mut self,
        core: &Core,
        f: impl FnOnce(&mut crate::session::Session, &mut Vec<Packet>) -> R,
    ) -> R {
        let mut state = self.entry.state();
        let r = f(&mut state, &mut self.out);
        let ticket = core.persist(&mut state);
        drop(state);
        self.note(Receipt::from_ticket(ticket));
        r
    }

    /// Handles one packet from the connected client. A whole packet counts for the
    /// keep-alive, however slowly its bytes arrived [MQTT-3.1.2-24].
    pub fn handle(&mut self, core: &Core, packet: Packet, now: Instant) -> Result<(), CloseReason> {
        self.touch(now);
        match packet {
            Packet::Publish(p) => self.handle_publish(core, p, now)?,
            Packet::PubAck(pid) => {
                self.with_session(core, |s, out| s.puback(pid, out))
                    .map_err(|e| CloseReason::Protocol(e.to_string()))?;
            }
            Packet::PubRec(pid) => {
                self.with_session(core, |s, out| s.pubrec(pid, out))
                    .map_err(|e| CloseReason::Protocol(e.to_string()))?;
            }
            Packet::PubComp(pid) => {
                self.with_session(core, |s, out| s.pubcomp(pid, out))
                    .map_err(|e| CloseReason::Protocol(e.to_string()))?;
            }
            Packet::PubRel(pid) => self.with_session(core, |s, out| s.pubrel(pid, out)),
            Packet::Subscribe(s) => self.handle_subscribe(core, s),
            Packet::Unsubscribe(u) => {
                for f in &u.filters {
                    self.entry.state().subscriptions.remove(f.as_str());
                    if core.router.unsubscribe(&self.entry, f) {
                        let ticket = core.registry.persist_record(&self.entry);
                        self.note(Receipt::from_ticket(ticket));
                    }
                    core.ops
                        .events
                        .emit(|| crate::events::BrokerEvent::Unsubscribed {
                            client_id: self.client.client_id.clone(),
                            filter: f.clone(),
                        });
                }
                // UNSUBACK even when nothing matched [MQTT-3.10.4-5].
                self.out.push(Packet::UnsubAck(u.pid));
            }
            // [MQTT-3.12.4-1]
            Packet::PingReq => self.out.push(Packet::PingResp),
            Packet::Disconnect => return Err(CloseReason::Disconnect),
            Packet::Connect(_) => {
                return Err(CloseReason::Protocol(
                    "second CONNECT [MQTT-3.1.0-2]".into(),
                ))
            }
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => {
                return Err(CloseReason::Protocol(format!(
                    "{} is a server-to-client packet [MQTT-4.8.0-1]",
                    other.name()
                )))
            }
        }
        Ok(())
    }

    fn handle_subscribe(&mut self, core: &Core, s: Subscribe) {
        let runtime = core.runtime.load();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut granted = Vec::with_capacity(s.filters.len());
        let limits = &runtime.config.limits;
        for (filter, requested) in &s.filters {
            let levels = filter.bytes().filter(|&b| b == b'/').count() + 1;
            if levels > MAX_FILTER_LEVELS {
                // Refused like a denied filter [MQTT-3.9.3-1]; see MAX_FILTER_LEVELS.
                warn!(
                    levels,
                    max = MAX_FILTER_LEVELS,
                    "subscription refused: topic filter has too many levels"
                );
                codes.push(SubAckCode::Failure);
                continue;
            }
            if let Some(over) = limits.check_topic(filter) {
                self.refuse(
                    core,
                    topic_limit_kind(over),
                    "SUBSCRIBE filter refused with 0x80",
                );
                codes.push(SubAckCode::Failure);
                continue;
            }
            let request = AclRequest {
                action: AclAction::Subscribe,
                topic: filter,
                qos: *requested,
                retain: false,
            };
            if !runtime.security.authorize(&self.client, &request) {
                // A refused filter gets 0x80; the others are still granted [MQTT-3.9.3-1].
                Counters::inc(&core.counters.acl_denied_subscribe);
                warn!(%filter, "subscription denied by ACL");
                codes.push(SubAckCode::Failure);
                continue;
            }
            // Replacing an existing subscription never counts against the limit.
            let admitted = {
                let mut state = self.entry.state();
                let held = state.subscriptions.len();
                if state.subscriptions.contains_key(filter.as_str())
                    || held < limits.max_subscriptions
                {
                    state.subscriptions.insert(filter.clone(), *requested);
                    true
                } else {
                    false
                }
            };
            if !admitted {
                self.refuse(
                    core,
                    LimitKind::MaxSubscriptions,
                    "SUBSCRIBE filter refused with 0x80",
                );
                codes.push(SubAckCode::Failure);
                continue;
            }
            // The broker supports every QoS, so the grant is what was asked [MQTT-3.9.3-2].
            core.router.subscribe(&self.entry, filter, *requested);
            let ticket = core.registry.persist_record(&self.entry);
            self.note(Receipt::from_ticket(ticket));
            core.ops
                .events
                .emit(|| crate::events::BrokerEvent::Subscribed {
                    client_id: self.client.client_id.clone(),
                    filter: filter.clone(),
                    qos: *requested,
                });
            codes.push(SubAckCode::Granted(*requested));
            granted.push((filter, *requested));
        }
        // SUBACK first, then the retained messages [MQTT-3.8.4-1], [MQTT-3.8.4-3].
        self.out.push(Packet::SubAck(SubAck { pid: s.pid, codes }));
        for (filter, qos) in granted {
            self.queue_retained(core, filter, qos);
        }
        debug!(filters = ?s.filters, "subscribed");
    }

    /// Queues the retained messages matching a new subscription, flagged RETAIN=1
    /// [MQTT-3.3.1-6], after the delivery ACL: a subscription granted because it overlaps
    /// a readable area must not replay the unreadable topics it matches.
    fn queue_retained(&mut self, core: &Core, filter: &str, granted: QoS) {
        let mut messages = core.router.retained(filter);
        let runtime = core.runtime.load();
        if !messages.is_empty() && runtime.security.has_authorizers() {
            let mut cache = self.entry.acl_cache.lock();
            messages.retain(|m| {
                let request = AclRequest {
                    action: AclAction::Deliver,
                    topic: &m.topic,
                    qos: m.qos.min(granted),
                    retain: true,
                };
                let allowed = runtime.security.authorize_cached(
                    &self.client,
                    &request,
                    &mut cache,
                    runtime.generation,
                );
                if !allowed {
                    Counters::inc(&core.counters.acl_denied_deliver);
                }
                allowed
            });
        }
        if messages.is_empty() {
            return;
        }
        let mut state = self.entry.state();
        let now = Instant::now();
        for m in messages {
            let qos = m.qos.min(granted);
            // Latency is measured from this subscription, not from when it was retained.
            state.enqueue_retained(Message {
                qos,
                enqueued_at: Some(now),
                ..m
            });
        }
        // Sent after the SUBACK: the shell drains the session after this packet.
        state.drain(&mut self.out);
        let ticket = core.persist(&mut state);
        drop(state);
        self.note(Receipt::from_ticket(ticket));
    }

    fn handle_publish(&mut self, core: &Core, p: Publish, now: Instant) -> Result<(), CloseReason> {
        Counters::inc(&core.counters.messages_in);
        core.counters.ops.publish(true, p.qos, p.payload.len());
        let (over, retain_available) = {
            let runtime = core.runtime.load();
            let limits = &runtime.config.limits;
            (limits.check_topic(&p.topic), limits.retain_available)
        };
        if p.retain && !retain_available {
            return Err(CloseReason::Policy(
                "PUBLISH with RETAIN=1 while retained messages are off (limits.retain_available: false)".into(),
            ));
        }
        if let Some(over) = over {
            let kind = topic_limit_kind(over);
            core.counters.ops.limit(kind);
            return Err(CloseReason::Policy(format!(
                "PUBLISH topic beyond limits.{} ({} bytes)",
                kind.as_str(),
                p.topic.len()
            )));
        }
        self.charge_publish(core, p.payload.len(), now);
        match (p.qos, p.pid) {
            (QoS::AtMostOnce, _) => {
                self.route(core, p);
            }
            (QoS::AtLeastOnce, Some(pid)) => {
                let receipt = self.route(core, p);
                // [MQTT-4.3.2-2]: PUBACK once the broker owns the message: written only
                // after the receipt is satisfied.
                self.note(receipt);
                self.out.push(Packet::PubAck(pid));
            }
            (QoS::ExactlyOnce, Some(pid)) => {
                // Method B of 4.3.3: keep the packet id until PUBREL, route only the first
                // copy; PUBREC waits for the routing receipt like PUBACK.
                let first = self.with_session(core, |s, out| s.inbound_qos2(pid, out));
                if first == InboundQos2::New {
                    let receipt = self.route(core, p);
                    self.note(receipt);
                }
            }
            // The codec guarantees a packet id for QoS > 0.
            (_, None) => {}
        }
        Ok(())
    }

    /// Checks the ACL, runs transforms and routes the result; returns the routing receipt.
    /// A refused PUBLISH is still acknowledged by the caller (3.1.1 has no negative
    /// acknowledgement) but goes nowhere.
    fn route(&mut self, core: &Core, p: Publish) -> Receipt {
        if is_sys_topic(&p.topic) {
            Counters::inc(&core.counters.ops.sys_publish_denied);
            if self.logged & SYS_LOGGED == 0 {
                self.logged |= SYS_LOGGED;
                warn!(topic = %p.topic, "PUBLISH to $SYS refused: acknowledged and dropped (logged once per connection)");
            }
            return Receipt::Accepted;
        }
        let runtime = core.runtime.load();
        let request = AclRequest {
            action: AclAction::Publish,
            topic: &p.topic,
            qos: p.qos,
            retain: p.retain,
        };
        if !runtime.security.authorize_cached(
            &self.client,
            &request,
            &mut self.acl_cache,
            runtime.generation,
        ) {
            Counters::inc(&core.counters.acl_denied_publish);
            warn!(topic = %p.topic, "publish denied by ACL; acknowledged and dropped");
            return Receipt::Accepted;
        }
        let mut receipt = Receipt::Accepted;
        for message in runtime
            .security
            .transform(&self.client, Message::from_publish(p))
        {
            // A transform may produce anything; only valid topic names are routed.
            if let Err(e) = crate::protocol::topic::validate_topic_name(&message.topic) {
                warn!(topic = %message.topic, error = %e, "transform produced an invalid topic; dropped");
                continue;
            }
            let (topic, qos, retain, len) = (
                message.topic.clone(),
                message.qos,
                message.retain,
                message.payload.len(),
            );
            let routed = core.router.publish(message);
            receipt = receipt.and(routed.receipt);
            core.ops
                .events
                .emit(|| crate::events::BrokerEvent::MessagePublished {
                    client_id: self.client.client_id.clone(),
                    topic,
                    qos,
                    retain,
                    payload_len: len,
                    subscribers: routed.subscribers,
                });
        }
        receipt
    }

    /// Charges one PUBLISH to the client's rate budgets; pauses reading when over them.
    fn charge_publish(&mut self, core: &Core, payload_len: usize, now: Instant) {
        let (msgs, bytes) = {
            let runtime = core.runtime.load();
            let l = &runtime.config.limits;
            (f64::from(l.publish_rate), l.publish_bytes_rate as f64)
        };
        let by_count = self.rate_msgs.take(msgs, 1.0, now);
        let by_bytes = self.rate_bytes.take(bytes, payload_len as f64, now);
        let pause = match (by_count, by_bytes) {
            (None, None) => return,
            (Some(a), None) => {
                self.refuse(core, LimitKind::PublishRate, "publish_rate: reading paused");
                a
            }
            (a, Some(b)) => {
                self.refuse(
                    core,
                    LimitKind::PublishBytesRate,
                    "publish_bytes_rate: reading paused",
                );
                a.map_or(b, |a| a.max(b))
            }
        };
        self.throttle = Some(now + pause);
    }

    /// Logs a refusal the first time it happens on this connection; always counts it.
    fn refuse(&mut self, core: &Core, kind: LimitKind, detail: &str) {
        core.counters.ops.limit(kind);
        if self.logged & kind.bit() == 0 {
            self.logged |= kind.bit();
            warn!(
                limit = kind.as_str(),
                detail, "limit reached; further refusals of this kind are not logged for this connection but counted in /metrics"
            );
        }
    }

    /// The connection is closing for `reason`: logs it, counts it, emits the event and
    /// publishes the will unless the client sent DISCONNECT [MQTT-3.14.4-3].
    pub fn closed(&mut self, core: &Core, reason: &CloseReason) {
        let kind = reason.kind();
        core.counters.ops.disconnect(kind);
        core.ops
            .events
            .emit(|| crate::events::BrokerEvent::ClientDisconnected {
                client_id: self.client.client_id.clone(),
                peer: self.client.peer,
                reason: kind,
            });
        match reason {
            CloseReason::Disconnect => info!("client disconnected"),
            CloseReason::PeerClosed => info!("connection closed by client without DISCONNECT"),
            CloseReason::KeepAlive => {
                Counters::inc(&core.counters.keep_alive_timeouts);
                warn!(
                    limit_ms = self.idle_limit.map_or(0, |d| d.as_millis() as u64),
                    "closing: keep-alive expired"
                );
            }
            CloseReason::Protocol(r) => {
                Counters::inc(&core.counters.protocol_errors);
                warn!(reason = %r, "closing: protocol error");
            }
            CloseReason::Policy(r) => warn!(reason = %r, "closing: resource limit"),
            CloseReason::Io(e) => info!(error = %e, "connection error"),
            CloseReason::Revoked(why) => {
                Counters::inc(&core.counters.reauth_disconnects);
                warn!(reason = %why, "closing: credentials no longer accepted after reload");
            }
            CloseReason::TakenOver
            | CloseReason::Admin
            | CloseReason::Shutdown
            | CloseReason::ListenerRemoved => {
                info!(reason = kind.as_str(), "closing: connection cancelled")
            }
        }
        if reason.publishes_will() {
            if let Some(will) = self.will.take() {
                publish_will(core, &self.client, &will);
            }
        }
    }
}

/// Publishes a will message like any other PUBLISH [MQTT-3.1.2-8], subject to the `$SYS`
/// refusal and the publish ACL.
fn publish_will(core: &Core, client: &ClientInfo, will: &LastWill) {
    if is_sys_topic(&will.topic) {
        Counters::inc(&core.counters.ops.sys_publish_denied);
        warn!(topic = %will.topic, "will message to $SYS refused; not published");
        return;
    }
    let runtime = core.runtime.load();
    let request = AclRequest {
        action: AclAction::Publish,
        topic: &will.topic,
        qos: will.qos,
        retain: will.retain,
    };
    if !runtime.security.authorize(client, &request) {
        Counters::inc(&core.counters.acl_denied_publish);
        warn!(topic = %will.topic, "will message denied by ACL; not published");
        return;
    }
    Counters::inc(&core.counters.wills_published);
    info!(topic = %will.topic, "publishing will message");
    core.publish(Message {
        topic: will.topic.clone(),
        payload: will.payload.clone(),
        qos: will.qos,
        retain: will.retain,
        enqueued_at: None,
    });
}

/// Only the broker publishes `$SYS` topics: client PUBLISHes and wills there are refused.
fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// The metrics kind of a crossed topic limit.
fn topic_limit_kind(over: crate::config::TopicLimit) -> LimitKind {
    match over {
        crate::config::TopicLimit::Length => LimitKind::MaxTopicLength,
        crate::config::TopicLimit::Levels => LimitKind::MaxTopicLevels,
    }
}
