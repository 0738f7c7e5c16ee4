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
use crate::model::{CloseReason, Message, Subscription};
use crate::protocol::topic::parse_shared;
use crate::protocol::{
    reason, Ack, AckKind, LastWill, Packet, Properties, Publish, QoS, RetainHandling, SubAck,
    SubAckCode, Subscribe, UnsubAck,
};
use crate::routing::trie::MAX_FILTER_LEVELS;
use crate::session::state::OutboundState;
use crate::session::InboundQos2;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// `Engine::logged` bit for PUBLISH to `$SYS` (above the `LimitKind` bits).
const SYS_LOGGED: u32 = 1 << 31;

/// What an MQTT 5 connection negotiated in CONNECT and CONNACK.
#[derive(Default)]
pub(crate) struct Negotiated {
    /// Topic aliases the client set, by alias number (section 3.3.2.3.4; index 0 unused).
    aliases: Vec<Option<Arc<str>>>,
    /// Highest alias the client may use (our Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// QoS 2 PUBLISHes the client may have unacknowledged (our Receive Maximum).
    pub receive_maximum: u16,
    /// Whether reason strings may be sent on acknowledgements (Request Problem Information).
    pub problem_information: bool,
    /// Will Delay Interval of the will, seconds.
    pub will_delay: u32,
    /// Whether the client's session may not outlive its connection (expiry 0 at CONNECT:
    /// a DISCONNECT may not set one [MQTT-3.14.2-2]).
    pub expiry_was_zero: bool,
    /// Whether the client holds a No Local subscription (its messages then carry their
    /// origin).
    no_local: bool,
    /// Highest topic alias we may send (the client's Topic Alias Maximum when
    /// `mqtt5.outbound_topic_aliases` is on; 0: none).
    pub outbound_alias_maximum: u16,
    /// Topics we assigned an alias to on this connection.
    outbound_aliases: std::collections::HashMap<Arc<str>, u16>,
    /// The enhanced authentication method of CONNECT (re-authentication uses it).
    pub auth_method: Option<String>,
    /// A re-authentication in progress.
    reauth: Option<Box<dyn crate::hooks::AuthExchange>>,
}

impl std::fmt::Debug for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Negotiated")
            .field("topic_alias_maximum", &self.topic_alias_maximum)
            .field("receive_maximum", &self.receive_maximum)
            .field("auth_method", &self.auth_method)
            .finish_non_exhaustive()
    }
}

impl Negotiated {
    /// The negotiated values; aliases start empty.
    pub fn new(
        topic_alias_maximum: u16,
        receive_maximum: u16,
        problem_information: bool,
        will_delay: u32,
        expiry_was_zero: bool,
    ) -> Self {
        Negotiated {
            aliases: Vec::new(),
            topic_alias_maximum,
            receive_maximum,
            problem_information,
            will_delay,
            expiry_was_zero,
            no_local: false,
            outbound_alias_maximum: 0,
            outbound_aliases: std::collections::HashMap::new(),
            auth_method: None,
            reauth: None,
        }
    }

    /// Replaces a PUBLISH's topic by an alias the client already knows, or assigns a new
    /// one while some are free (the first PUBLISH carries both, section 3.3.2.3.4).
    fn alias_outbound(&mut self, p: &mut Publish) {
        let known = self.outbound_aliases.get(&p.topic).copied();
        let alias = match known {
            Some(a) => a,
            None if self.outbound_aliases.len() < usize::from(self.outbound_alias_maximum) => {
                let a = self.outbound_aliases.len() as u16 + 1;
                self.outbound_aliases.insert(p.topic.clone(), a);
                a
            }
            None => return,
        };
        let mut props = p.properties.as_deref().cloned().unwrap_or_default();
        props.topic_alias = Some(alias);
        p.properties = Some(Arc::new(props));
        if known.is_some() {
            p.topic = Arc::from("");
        }
    }
}

/// A will whose publication waits for its Will Delay Interval (MQTT 5, 3.1.3.2.2): the
/// shell schedules it after the connection ends, cancelled if the client reconnects first.
#[derive(Debug, Clone)]
pub(crate) struct DeferredWill {
    /// The will.
    pub will: LastWill,
    /// How long to wait.
    pub delay: Duration,
}

/// See the module documentation.
pub(crate) struct Engine {
    client: Arc<ClientInfo>,
    /// MQTT 5 state; `None` for 3.1 / 3.1.1 (which keeps an idle connection small).
    v5: Option<Box<Negotiated>>,
    entry: Arc<SessionEntry>,
    /// Boxed: most clients have none, and an idle connection keeps its engine.
    will: Option<Box<LastWill>>,
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
    /// Another broker's 3.1/3.1.1 bridge (protocol level bit 7): every subscription is No
    /// Local and Retain As Published, as Mosquitto treats bridges.
    bridge: bool,
    /// Packets to send, in order.
    out: Vec<Packet>,
    /// What must be accepted before `out` may be written.
    receipt: Receipt,
}

impl Engine {
    /// An engine for a client attached to `entry`; `keep_alive` is CONNECT's (seconds) and
    /// `idle_timeout` the server's fallback for clients that sent 0 (zero: none).
    #[cfg(test)]
    pub fn new(
        client: Arc<ClientInfo>,
        entry: Arc<SessionEntry>,
        will: Option<LastWill>,
        keep_alive: u16,
        idle_timeout: Duration,
        now: Instant,
    ) -> Engine {
        Engine::with_v5(client, entry, will, keep_alive, idle_timeout, now, None)
    }

    /// An engine for an MQTT 5 client (with what CONNECT/CONNACK negotiated), or a 3.1.1
    /// one when `v5` is `None`.
    pub fn with_v5(
        client: Arc<ClientInfo>,
        entry: Arc<SessionEntry>,
        will: Option<LastWill>,
        keep_alive: u16,
        idle_timeout: Duration,
        now: Instant,
        v5: Option<Negotiated>,
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
            v5: v5.map(Box::new),
            entry,
            will: will.map(Box::new),
            idle_limit,
            idle_deadline: idle_limit.map(|d| now + d),
            throttle: None,
            acl_cache: AclCache::default(),
            rate_msgs: TokenBucket::new(now),
            rate_bytes: TokenBucket::new(now),
            logged: 0,
            bridge: false,
            out: Vec::new(),
            receipt: Receipt::ACCEPTED,
        }
    }

    /// Marks the client as another broker's bridge (its CONNECT had protocol level bit 7).
    pub fn set_bridge(&mut self, bridge: bool) {
        self.bridge = bridge;
    }

    /// The client this engine serves.
    pub fn client(&self) -> &Arc<ClientInfo> {
        &self.client
    }

    /// Whether an MQTT 5 acknowledgement may carry a reason string.
    fn problem_information(&self) -> bool {
        self.v5.as_ref().is_some_and(|v| v.problem_information)
    }

    /// A publish-flow acknowledgement with `code`: the plain one for success or a 3.1.1
    /// client, else an MQTT 5 one with the reason code (and string, when the client allows).
    fn ack(&self, kind: AckKind, pid: u16, code: u8, why: &str) -> Packet {
        if code == reason::SUCCESS || self.v5.is_none() {
            return kind.plain(pid);
        }
        Packet::Ack(Ack {
            kind,
            pid,
            reason: code,
            properties: self.reason_string(why),
        })
    }

    /// A Reason String property, when the client allows them and there is one.
    fn reason_string(&self, why: &str) -> Option<Box<Properties>> {
        (self.problem_information() && !why.is_empty()).then(|| {
            Box::new(Properties {
                reason_string: Some(why.to_owned()),
                ..Default::default()
            })
        })
    }

    /// The session it is attached to.
    pub fn entry(&self) -> &Arc<SessionEntry> {
        &self.entry
    }

    /// The session is attached: CONNACK, then every unacknowledged PUBLISH (DUP=1) and
    /// PUBREL in the original order, then what the window allows [MQTT-4.4.0-1].
    pub fn connected(&mut self, core: &Core, connack: Packet) {
        self.out.push(connack);
        let entry = self.entry.clone();
        let mut state = entry.state();
        if let Some(v5) = &mut self.v5 {
            // A resumed session may hold No Local subscriptions already.
            v5.no_local = state.subscriptions.values().any(|s| s.options.no_local);
        }
        state.connect(&mut self.out);
        self.settle(core, state);
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
    pub fn drain_output_into(
        &mut self,
        buf: &mut Vec<Packet>,
        events: &crate::events::EventBus,
    ) -> Receipt {
        if events.deliveries_wanted() {
            for p in &self.out {
                if let Packet::Publish(p) = p {
                    events.emit(|| crate::events::BrokerEvent::MessageDelivered {
                        client_id: self.entry.client_id.clone(),
                        topic: p.topic.clone(),
                        qos: p.qos,
                    });
                }
            }
        }
        if let Some(v5) = self.v5.as_mut().filter(|v| v.outbound_alias_maximum > 0) {
            for p in &mut self.out {
                if let Packet::Publish(p) = p {
                    v5.alias_outbound(p);
                }
            }
        }
        if buf.is_empty() {
            // The common case: hand the whole buffer over, no copy, no new allocation.
            std::mem::swap(buf, &mut self.out);
        } else {
            buf.append(&mut self.out);
        }
        std::mem::take(&mut self.receipt)
    }

    /// Reports a PUBACK / PUBCOMP for an inflight delivery as an event, when wanted.
    fn note_ack(&self, core: &Core, pid: u16, awaiting: OutboundState) {
        let events = &core.ops.events;
        if !events.deliveries_wanted() {
            return;
        }
        let acked = self
            .entry
            .state()
            .inflight()
            .find(|f| f.pid == pid && f.state == awaiting)
            .map(|f| (f.message.topic.clone(), f.message.qos));
        if let Some((topic, qos)) = acked {
            events.emit(|| crate::events::BrokerEvent::MessageAcknowledged {
                client_id: self.entry.client_id.clone(),
                topic,
                qos,
            });
        }
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
        let entry = self.entry.clone();
        let mut state = entry.state();
        state.drain(&mut self.out);
        self.settle(core, state);
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

    /// After a session transition: journals what it changed and counts the messages it
    /// discarded instead of sending (expired, too large for the client); releases the lock.
    fn settle(
        &mut self,
        core: &Core,
        mut state: parking_lot::MutexGuard<'_, crate::session::Session>,
    ) {
        let discarded = state.take_discarded();
        let ticket = core.persist(&mut state);
        drop(state);
        if discarded.expired > 0 {
            Counters::add(
                &core.counters.ops.expired_messages,
                u64::from(discarded.expired),
            );
        }
        if discarded.too_large > 0 {
            Counters::add(
                &core.counters.ops.dropped_too_large_for_client,
                u64::from(discarded.too_large),
            );
        }
        self.note(Receipt::from_ticket(ticket));
    }

    /// Runs one session transition under its lock and journals what it changed.
    fn with_session<R>(
        &mut self,
        core: &Core,
        f: impl FnOnce(&mut crate::session::Session, &mut Vec<Packet>) -> R,
    ) -> R {
        let entry = self.entry.clone();
        let mut state = entry.state();
        let r = f(&mut state, &mut self.out);
        self.settle(core, state);
        r
    }

    /// The router refused what the pending acknowledgements promised: the QoS 2 packet ids
    /// among them are forgotten, so that the client's re-sent PUBLISH is routed as new
    /// (method B of 4.3.3 stores the id before routing). The acknowledgements are not sent.
    pub fn unacknowledged(&mut self, core: &Core, pending: &[Packet]) {
        for p in pending {
            if let Some((AckKind::PubRec, pid)) = p.ack_of() {
                self.with_session(core, |s, _| s.forget_inbound(pid));
            }
        }
    }

    /// Handles one packet from the connected client. A whole packet counts for the
    /// keep-alive, however slowly its bytes arrived [MQTT-3.1.2-24].
    pub fn handle(&mut self, core: &Core, packet: Packet, now: Instant) -> Result<(), CloseReason> {
        self.touch(now);
        match packet {
            Packet::Publish(p) => self.handle_publish(core, p, now)?,
            Packet::PubAck(pid) => {
                self.note_ack(core, pid, OutboundState::AwaitPubAck);
                self.with_session(core, |s, out| s.puback(pid, out))
                    .map_err(|e| CloseReason::Protocol(e.to_string()))?;
            }
            Packet::PubRec(pid) => {
                self.with_session(core, |s, out| s.pubrec(pid, out))
                    .map_err(|e| CloseReason::Protocol(e.to_string()))?;
            }
            Packet::PubComp(pid) => {
                self.note_ack(core, pid, OutboundState::AwaitPubComp);
                self.with_session(core, |s, out| s.pubcomp(pid, out))
                    .map_err(|e| CloseReason::Protocol(e.to_string()))?;
            }
            Packet::PubRel(pid) => self.with_session(core, |s, out| s.pubrel(pid, out)),
            Packet::Ack(a) => {
                let pid = a.pid;
                match a.kind {
                    AckKind::PubAck => self.note_ack(core, pid, OutboundState::AwaitPubAck),
                    AckKind::PubComp => self.note_ack(core, pid, OutboundState::AwaitPubComp),
                    _ => {}
                }
                let r = match a.kind {
                    AckKind::PubAck => self.with_session(core, |s, out| s.puback(pid, out)),
                    // A failure PUBREC ends the QoS 2 flow: no PUBREL (section 4.3.3).
                    AckKind::PubRec if a.reason >= 0x80 => {
                        Ok(self.with_session(core, |s, out| s.pubrec_failed(pid, out)))
                    }
                    AckKind::PubRec => self.with_session(core, |s, out| s.pubrec(pid, out)),
                    AckKind::PubComp => self.with_session(core, |s, out| s.pubcomp(pid, out)),
                    AckKind::PubRel => {
                        self.with_session(core, |s, out| s.pubrel(pid, out));
                        Ok(true)
                    }
                };
                r.map_err(|e| CloseReason::Protocol(e.to_string()))?;
            }
            Packet::Subscribe(s) => self.handle_subscribe(core, s)?,
            Packet::Unsubscribe(u) => {
                let mut codes = Vec::with_capacity(u.filters.len());
                for f in &u.filters {
                    let held = self
                        .entry
                        .state()
                        .subscriptions
                        .remove(f.as_str())
                        .is_some();
                    let existed = core.router.unsubscribe(&self.entry, f) || held;
                    if existed {
                        let ticket = core.registry.persist_record(&self.entry);
                        self.note(Receipt::from_ticket(ticket));
                    }
                    codes.push(if existed {
                        reason::SUCCESS
                    } else {
                        reason::NO_SUBSCRIPTION_EXISTED
                    });
                    core.ops
                        .events
                        .emit(|| crate::events::BrokerEvent::Unsubscribed {
                            client_id: self.client.client_id.clone(),
                            filter: f.clone(),
                        });
                }
                // UNSUBACK even when nothing matched [MQTT-3.10.4-5]; an MQTT 5 one with a
                // reason code per filter [MQTT-3.11.3-1].
                let mut ack = UnsubAck::new(u.pid);
                if self.v5.is_some() {
                    ack.codes = codes;
                }
                self.out.push(Packet::UnsubAck(ack));
            }
            // [MQTT-3.12.4-1]
            Packet::PingReq => self.out.push(Packet::PingResp),
            Packet::Disconnect => return Err(CloseReason::Disconnect),
            Packet::DisconnectWithReason(d) => return Err(self.client_disconnect(core, &d)),
            Packet::Auth(a) => self.reauthenticate(core, a)?,
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

    /// Re-authentication (section 4.12.1): AUTH 0x19 starts an exchange with the method of
    /// CONNECT, AUTH 0x18 continues it; success is AUTH 0x00, failure DISCONNECT 0x87. AUTH
    /// without a method in CONNECT, or with another method, is a protocol error.
    fn reauthenticate(&mut self, core: &Core, a: crate::protocol::Auth) -> Result<(), CloseReason> {
        use crate::hooks::AuthStep;
        let Some(v5) = self.v5.as_mut() else {
            return Err(CloseReason::Protocol(
                "AUTH from an MQTT 3.1.1 client".into(),
            ));
        };
        let Some(method) = v5.auth_method.clone() else {
            return Err(CloseReason::Protocol(
                "AUTH without an Authentication Method in CONNECT (section 4.12)".into(),
            ));
        };
        let props = a.properties.unwrap_or_default();
        if props.authentication_method.as_deref() != Some(method.as_str()) {
            return Err(CloseReason::Protocol(
                "AUTH with another Authentication Method than CONNECT's (section 4.12)".into(),
            ));
        }
        let data = props.authentication_data.unwrap_or_default();
        let step = match (a.reason, v5.reauth.take()) {
            (reason::REAUTHENTICATE, None) => {
                let runtime = core.runtime.load();
                match runtime.security.enhanced(&method) {
                    Some(auth) => auth.start(&data),
                    None => AuthStep::Failure(format!("{method} is no longer offered")),
                }
            }
            (reason::CONTINUE_AUTHENTICATION, Some(exchange)) => exchange.next(&data),
            _ => {
                return Err(CloseReason::Protocol(format!(
                    "AUTH reason {:#04x} out of sequence (section 4.12.1)",
                    a.reason
                )))
            }
        };
        let auth = |reason, data| crate::protocol::Auth::packet(reason, &method, data);
        match step {
            AuthStep::Continue(data, exchange) => {
                v5.reauth = Some(exchange);
                self.out
                    .push(auth(reason::CONTINUE_AUTHENTICATION, Some(data)));
                Ok(())
            }
            AuthStep::Success { username, data } => {
                if self.client.username.as_deref() != Some(username.as_str()) {
                    return Err(CloseReason::Refused {
                        code: reason::NOT_AUTHORIZED,
                        reason: format!("re-authenticated as another user (`{username}`)"),
                    });
                }
                Counters::inc(&core.counters.auth_success);
                info!(%method, "client re-authenticated");
                self.out.push(auth(reason::SUCCESS, data));
                Ok(())
            }
            AuthStep::Failure(why) => {
                Counters::inc(&core.counters.auth_failure);
                Err(CloseReason::Refused {
                    code: reason::NOT_AUTHORIZED,
                    reason: format!("re-authentication failed: {why}"),
                })
            }
        }
    }

    /// A client's DISCONNECT with a reason code or properties (MQTT 5, 3.14): 0x00 discards
    /// the will, any other code publishes it; a Session Expiry Interval updates the
    /// session's, but may not make a session that was to end with the connection outlive
    /// it [MQTT-3.14.2-2].
    fn client_disconnect(&mut self, core: &Core, d: &crate::protocol::Disconnect) -> CloseReason {
        if let Some(secs) = d
            .properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
        {
            if secs != 0 && self.v5.as_ref().is_some_and(|v| v.expiry_was_zero) {
                return CloseReason::Protocol(
                    "DISCONNECT sets a Session Expiry Interval after CONNECT set 0 [MQTT-3.14.2-2]"
                        .into(),
                );
            }
            let mut state = self.entry.state();
            state.expiry_interval = Some(secs);
            state.clean_session = secs == 0;
            drop(state);
            let ticket = core.registry.persist_record(&self.entry);
            self.note(Receipt::from_ticket(ticket));
        }
        if d.reason == reason::SUCCESS {
            CloseReason::Disconnect
        } else {
            CloseReason::DisconnectWithWill
        }
    }

    /// Decides one filter of a SUBSCRIBE: `Ok(granted)` or `Err(code)` (0x80 to a 3.1.1
    /// client). A No Local shared subscription is a protocol error [MQTT-3.8.3-4].
    fn admit_filter(
        &mut self,
        core: &Core,
        runtime: &super::Runtime,
        filter: &str,
        sub: Subscription,
    ) -> Result<Result<Vec<Message>, u8>, CloseReason> {
        let limits = &runtime.config.limits;
        let mqtt5 = &runtime.config.mqtt5;
        let levels = filter.bytes().filter(|&b| b == b'/').count() + 1;
        if levels > MAX_FILTER_LEVELS {
            // Refused like a denied filter [MQTT-3.9.3-1]; see MAX_FILTER_LEVELS.
            warn!(
                levels,
                max = MAX_FILTER_LEVELS,
                "subscription refused: topic filter has too many levels"
            );
            return Ok(Err(reason::TOPIC_FILTER_INVALID));
        }
        let topic_filter = match parse_shared(filter) {
            None => filter,
            Some(Err(why)) => {
                warn!(%filter, why, "subscription refused: malformed shared subscription");
                return Ok(Err(reason::TOPIC_FILTER_INVALID));
            }
            Some(Ok(shared)) => {
                if sub.options.no_local {
                    return Err(CloseReason::Protocol(
                        "No Local on a shared subscription [MQTT-3.8.3-4]".into(),
                    ));
                }
                if !mqtt5.shared_subscriptions {
                    return Ok(Err(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED));
                }
                shared.filter
            }
        };
        if self.v5.is_some() {
            if !mqtt5.wildcard_subscriptions && topic_filter.contains(['+', '#']) {
                return Ok(Err(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED));
            }
            if sub.id.is_some() && !mqtt5.subscription_identifiers {
                return Ok(Err(reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED));
            }
        }
        // Limits and the ACL apply to the filter a shared subscription stands for:
        // `sensors/#` in an ACL allows `$share/group/sensors/#`.
        if let Some(over) = limits.check_topic(topic_filter) {
            self.refuse(
                core,
                topic_limit_kind(over),
                "SUBSCRIBE filter refused with 0x80",
            );
            return Ok(Err(reason::TOPIC_FILTER_INVALID));
        }
        let request = AclRequest {
            action: AclAction::Subscribe,
            topic: topic_filter,
            qos: sub.qos,
            retain: false,
        };
        if !runtime.security.authorize(&self.client, &request) {
            // A refused filter gets 0x80; the others are still granted [MQTT-3.9.3-1].
            Counters::inc(&core.counters.acl_denied_subscribe);
            warn!(%filter, "subscription denied by ACL");
            return Ok(Err(reason::NOT_AUTHORIZED));
        }
        // Replacing an existing subscription never counts against the limit.
        let admitted = {
            let mut state = self.entry.state();
            let held = state.subscriptions.len();
            if state.subscriptions.contains_key(filter) || held < limits.max_subscriptions {
                state.subscriptions.insert(filter.to_owned(), sub);
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
            return Ok(Err(reason::QUOTA_EXCEEDED));
        }
        // Retained messages: not for a shared subscription (section 4.8.2), and as Retain
        // Handling says [MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]. Read with the
        // insertion, so that one published with RETAIN meanwhile arrives once.
        let wants_retained = |existed: bool| {
            parse_shared(filter).is_none()
                && match sub.options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                }
        };
        let (_, retained) =
            core.router
                .subscribe_with_retained(&self.entry, filter, sub, &wants_retained);
        Ok(Ok(retained))
    }

    fn handle_subscribe(&mut self, core: &Core, s: Subscribe) -> Result<(), CloseReason> {
        let runtime = core.runtime.load();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut granted = Vec::with_capacity(s.filters.len());
        let id = s
            .properties
            .as_ref()
            .and_then(|p| p.subscription_identifiers.first().copied());
        for (i, (filter, requested)) in s.filters.iter().enumerate() {
            let mut options = s.options_of(i);
            if self.bridge && parse_shared(filter).is_none() {
                // What the bridge itself published is never sent back to it, and retained
                // messages keep their flag on the other broker.
                options.no_local = true;
                options.retain_as_published = true;
            }
            let sub = Subscription {
                qos: *requested,
                options,
                id,
            };
            match self.admit_filter(core, &runtime, filter, sub)? {
                Err(code) => codes.push(SubAckCode::Refused(code)),
                Ok(retained) => {
                    if sub.options.no_local {
                        if let Some(v5) = &mut self.v5 {
                            v5.no_local = true;
                        }
                    }
                    let ticket = core.registry.persist_record(&self.entry);
                    self.note(Receipt::from_ticket(ticket));
                    core.ops
                        .events
                        .emit(|| crate::events::BrokerEvent::Subscribed {
                            client_id: self.client.client_id.clone(),
                            filter: filter.clone(),
                            qos: *requested,
                        });
                    // The broker supports every QoS, so the grant is what was asked
                    // [MQTT-3.9.3-2].
                    codes.push(SubAckCode::Granted(*requested));
                    if !retained.is_empty() {
                        granted.push((sub, retained));
                    }
                }
            }
        }
        drop(runtime);
        // SUBACK first, then the retained messages [MQTT-3.8.4-1], [MQTT-3.8.4-3].
        self.out.push(Packet::SubAck(SubAck {
            pid: s.pid,
            codes,
            properties: None,
        }));
        for (sub, retained) in granted {
            self.queue_retained(core, sub, retained);
        }
        debug!(filters = ?s.filters, "subscribed");
        Ok(())
    }

    /// Queues the retained messages matching a new subscription, flagged RETAIN=1
    /// [MQTT-3.3.1-6], after the delivery ACL: a subscription granted because it overlaps
    /// a readable area must not replay the unreadable topics it matches.
    fn queue_retained(&mut self, core: &Core, sub: Subscription, mut messages: Vec<Message>) {
        let granted = sub.qos;
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
        let entry = self.entry.clone();
        let mut state = entry.state();
        let now = Instant::now();
        for m in messages {
            let qos = m.qos.min(granted);
            // Latency is measured from this subscription, not from when it was retained.
            let mut m = Message {
                qos,
                enqueued_at: Some(now),
                ..m
            };
            if let Some(id) = sub.id {
                // The subscription identifier goes with retained messages too [MQTT-3.3.4-3].
                let mut props = m.props.as_deref().cloned().unwrap_or_default();
                props.set_subscription_identifiers(vec![id]);
                m.props = Some(Arc::new(props));
            }
            state.enqueue_retained(m);
        }
        // Sent after the SUBACK: the shell drains the session after this packet.
        state.drain(&mut self.out);
        self.settle(core, state);
    }

    /// Resolves an MQTT 5 Topic Alias (section 3.3.2.3.4): a PUBLISH with a topic name sets
    /// the alias, one with an empty name uses it. An alias of 0 or above our maximum is
    /// 0x94 [MQTT-3.3.2-8], [MQTT-3.3.2-9]; an unknown one a protocol error.
    fn resolve_alias(&mut self, p: &mut Publish) -> Result<(), CloseReason> {
        let Some(alias) = p.properties.as_ref().and_then(|pr| pr.topic_alias) else {
            return Ok(());
        };
        let Some(v5) = self.v5.as_mut() else {
            return Ok(());
        };
        if alias == 0 || alias > v5.topic_alias_maximum {
            return Err(CloseReason::Refused {
                code: reason::TOPIC_ALIAS_INVALID,
                reason: format!(
                    "topic alias {alias} outside 1..={} [MQTT-3.3.2-8], [MQTT-3.3.2-9]",
                    v5.topic_alias_maximum
                ),
            });
        }
        let slot = usize::from(alias);
        if p.topic.is_empty() {
            match v5.aliases.get(slot).and_then(|t| t.clone()) {
                Some(topic) => p.topic = topic,
                None => {
                    return Err(CloseReason::Protocol(format!(
                        "topic alias {alias} used before it was set (section 3.3.4)"
                    )))
                }
            }
        } else {
            if v5.aliases.len() <= slot {
                v5.aliases.resize(slot + 1, None);
            }
            v5.aliases[slot] = Some(p.topic.clone());
        }
        Ok(())
    }

    fn handle_publish(
        &mut self,
        core: &Core,
        mut p: Publish,
        now: Instant,
    ) -> Result<(), CloseReason> {
        self.resolve_alias(&mut p)?;
        Counters::inc(&core.counters.messages_in);
        core.counters.ops.publish(true, p.qos, p.payload.len());
        let (over, retain_available) = {
            let runtime = core.runtime.load();
            let limits = &runtime.config.limits;
            (limits.check_topic(&p.topic), limits.retain_available)
        };
        if p.retain && !retain_available {
            return Err(CloseReason::Refused {
                code: reason::RETAIN_NOT_SUPPORTED,
                reason: "PUBLISH with RETAIN=1 while retained messages are off (limits.retain_available: false) (section 3.3.1.3)".into(),
            });
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
                let (receipt, code, why) = self.route(core, p);
                // [MQTT-4.3.2-2]: PUBACK once the broker owns the message: written only
                // after the receipt is satisfied.
                self.note(receipt);
                let ack = self.ack(AckKind::PubAck, pid, code, why);
                self.out.push(ack);
            }
            (QoS::ExactlyOnce, Some(pid)) => {
                if let Some(v5) = &self.v5 {
                    // [MQTT-3.3.4-9]: more unacknowledged QoS 2 PUBLISHes than our Receive
                    // Maximum.
                    let max = usize::from(v5.receive_maximum);
                    let pending = self.entry.state().inbound_qos2_pending();
                    if pending >= max && !self.entry.state().has_inbound(pid) {
                        return Err(CloseReason::Refused {
                            code: reason::RECEIVE_MAXIMUM_EXCEEDED,
                            reason: format!(
                                "more than Receive Maximum ({max}) QoS 2 PUBLISHes unacknowledged [MQTT-3.3.4-9]"
                            ),
                        });
                    }
                }
                // Method B of 4.3.3: keep the packet id until PUBREL, route only the first
                // copy; PUBREC waits for the routing receipt like PUBACK. The stored id and
                // the routed copies are written in one transaction: an id stored without
                // them would make the client's re-sent PUBLISH (after a crash) look like a
                // duplicate, and the message would be lost.
                let group = core.storage.as_ref().map(|s| s.group());
                let first = self.with_session(core, |s, _| s.inbound_qos2(pid));
                let (code, why) = if first == InboundQos2::New {
                    let (receipt, code, why) = self.route(core, p);
                    self.note(receipt);
                    (code, why)
                } else {
                    (reason::SUCCESS, "")
                };
                if code >= 0x80 {
                    // A failure PUBREC ends the flow: no PUBREL will come for this id.
                    self.with_session(core, |s, _| s.forget_inbound(pid));
                }
                drop(group);
                let ack = self.ack(AckKind::PubRec, pid, code, why);
                self.out.push(ack);
            }
            // The codec guarantees a packet id for QoS > 0.
            (_, None) => {}
        }
        Ok(())
    }

    /// Checks the ACL, runs transforms and routes the result; returns the routing receipt
    /// and the reason code of the acknowledgement. A refused PUBLISH is still acknowledged
    /// (3.1.1 has no negative acknowledgement; MQTT 5 says 0x87) but goes nowhere.
    fn route(&mut self, core: &Core, p: Publish) -> (Receipt, u8, &'static str) {
        if is_sys_topic(&p.topic) {
            Counters::inc(&core.counters.ops.sys_publish_denied);
            if self.logged & SYS_LOGGED == 0 {
                self.logged |= SYS_LOGGED;
                warn!(topic = %p.topic, "PUBLISH to $SYS refused: acknowledged and dropped (logged once per connection)");
            }
            return (
                Receipt::ACCEPTED,
                reason::NOT_AUTHORIZED,
                "only the broker publishes to $SYS",
            );
        }
        let format_invalid = p
            .properties
            .as_ref()
            .is_some_and(|pr| pr.payload_format_indicator == Some(1))
            && std::str::from_utf8(&p.payload).is_err();
        if format_invalid {
            // The publisher said UTF-8 but it is not (section 3.3.2.3.2).
            return (
                Receipt::ACCEPTED,
                reason::PAYLOAD_FORMAT_INVALID,
                "Payload Format Indicator is 1 but the payload is not UTF-8",
            );
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
            return (
                Receipt::ACCEPTED,
                reason::NOT_AUTHORIZED,
                "publish to this topic not authorized",
            );
        }
        let message = Message::from_publish(p);
        // Marked with the publisher for No Local and bridge loop prevention: every message
        // routed for it, including what a transform made of it [MQTT-3.8.3-3].
        let mark_origin = self.bridge || self.v5.as_ref().is_some_and(|v| v.no_local);
        let mut receipt = Receipt::ACCEPTED;
        let mut subscribers = 0;
        let mut remote = false;
        for mut message in runtime.security.transform(&self.client, message) {
            if mark_origin {
                let mut props = message.props.as_deref().cloned().unwrap_or_default();
                props.origin = Some(self.client.client_id.clone());
                message.props = Some(Arc::new(props));
            }
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
            subscribers += routed.subscribers;
            remote |= routed.remote;
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
        if subscribers == 0 && !remote {
            // Success all the same: an MQTT 5 client is told nobody took it (never in a
            // cluster: this node cannot see the other nodes' subscribers).
            (receipt, reason::NO_MATCHING_SUBSCRIBERS, "")
        } else {
            (receipt, reason::SUCCESS, "")
        }
    }

    /// Charges one PUBLISH to the client's rate budgets; pauses reading when over them.
    fn charge_publish(&mut self, core: &Core, payload_len: usize, now: Instant) {
        if self.client.transport == crate::model::TransportKind::Bridge {
            // A bridge carries a whole remote fleet's messages: a device's budget would
            // throttle the link. It is bounded by the remote's flow control instead.
            return;
        }
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
    /// publishes the will unless the client sent DISCONNECT [MQTT-3.14.4-3]. An MQTT 5 will
    /// with a delay, of a session that outlives the connection, is handed back for the
    /// shell to publish later (section 3.1.3.2.2).
    pub fn closed(&mut self, core: &Core, reason: &CloseReason) -> Option<DeferredWill> {
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
            CloseReason::DisconnectWithWill => {
                info!("client disconnected asking for its will (DISCONNECT 0x04 or an error code)")
            }
            CloseReason::Refused { code, reason } => {
                Counters::inc(&core.counters.protocol_errors);
                warn!(reason = %reason, code = format_args!("{code:#04x}"), "closing: protocol error");
            }
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
            CloseReason::ClusterUnavailable(why) => {
                warn!(reason = %why, "closing: cluster unavailable, nothing unstored was acknowledged")
            }
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
        if !reason.publishes_will() {
            return None;
        }
        let will = self.will.take()?;
        let delay = self.v5.as_ref().map_or(0, |v| v.will_delay);
        if delay > 0 {
            // The will waits for its delay or the end of the session, whichever is first
            // [MQTT-3.1.3-9]; a session that ends with the connection ends now.
            let session_expiry = self.entry.state().expiry_interval.unwrap_or(0);
            let delay = delay.min(session_expiry);
            if delay > 0 {
                return Some(DeferredWill {
                    will: *will,
                    delay: Duration::from_secs(u64::from(delay)),
                });
            }
        }
        publish_will(core, &self.client, &will);
        None
    }
}

/// Publishes a will message like any other PUBLISH [MQTT-3.1.2-8], subject to the `$SYS`
/// refusal and the publish ACL; an MQTT 5 will carries its properties.
pub(crate) fn publish_will(core: &Core, client: &ClientInfo, will: &LastWill) {
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
    let properties = will.properties.as_ref().map(|p| {
        let mut p = (**p).clone();
        p.will_delay_interval = None;
        Arc::new(p)
    });
    core.publish(Message::from_publish(Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic.clone(),
        pid: None,
        payload: will.payload.clone(),
        properties,
    }));
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
