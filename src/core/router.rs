//! The routing seam: one [`Router`] interface that the protocol engine hands messages and
//! subscription changes to, and its single-node implementation, [`LocalRouter`] (the topic
//! trie and the retained store of `crate::routing`).
//!
//! A router says when a message is *accepted* through the [`Receipt`] it returns: the engine
//! acknowledges a QoS 1/2 PUBLISH (PUBACK/PUBREC) only once that receipt is satisfied. The
//! local router's receipt is the storage writer's ticket (immediate without persistence); a
//! router that stores messages elsewhere (the cluster) returns one that completes when its
//! store confirms.
//!
//! Owns the trie and the retained store. Delivery into a matching session (delivery ACL,
//! queue limits, wake-up) goes through [`deliver`], which a cluster router reuses for the
//! messages it receives from other nodes. Must not touch sockets or the session registry's
//! map (see the lock order in `super::registry`).

use super::registry::SessionEntry;
use super::Services;
use crate::config::SharedStrategy;
use crate::hooks::{AclAction, AclRequest};
use crate::metrics::ops::LimitKind;
use crate::metrics::Counters;
use crate::model::{Message, Subscription};
use crate::protocol::topic::parse_shared;
use crate::protocol::QoS;

use crate::routing::{RetainOutcome, RetainedStore, SubscriptionTrie};
use crate::session::DropReason;
use crate::storage::StorageOp;
use parking_lot::RwLock;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tracing::warn;

/// When what a router was handed is accepted (stored where it must be): every ticket it
/// names must be satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Receipt {
    /// The storage writer's ticket to wait for (durable with `sync: always`).
    pub storage: Option<u64>,
    /// The first and last of the router's own tickets (the cluster: stored by JetStream),
    /// see [`Router::accepted`].
    pub router: Option<(u64, u64)>,
}

impl Receipt {
    /// Accepted already.
    pub const ACCEPTED: Receipt = Receipt {
        storage: None,
        router: None,
    };

    /// The later of two receipts (both must be satisfied; tickets complete in order).
    pub fn and(self, other: Receipt) -> Receipt {
        let router = match (self.router, other.router) {
            (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
            (a, b) => a.or(b),
        };
        Receipt {
            storage: self.storage.max(other.storage),
            router,
        }
    }

    /// A storage ticket as a receipt.
    pub fn from_ticket(ticket: Option<u64>) -> Receipt {
        Receipt {
            storage: ticket,
            router: None,
        }
    }

    /// Whether nothing needs waiting for.
    pub fn is_accepted(&self) -> bool {
        *self == Receipt::ACCEPTED
    }
}

/// What routing one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// How many sessions it was queued for.
    pub subscribers: usize,
    /// When it is accepted.
    pub receipt: Receipt,
    /// Also handed to other nodes, whose subscribers `subscribers` does not count.
    pub remote: bool,
}

/// The interface between the protocol engine and wherever messages go.
pub(crate) trait Router: Send + Sync {
    /// Routes a message to every matching subscriber, storing or deleting the retained
    /// message first when RETAIN is set [MQTT-3.3.1-5].
    fn publish(&self, message: Message) -> Routed;
    /// Adds or replaces `session`'s subscription to `filter` (a `$share/{group}/...` filter
    /// joins that group); returns whether it replaced one.
    fn subscribe(&self, session: &Arc<SessionEntry>, filter: &str, sub: Subscription) -> bool;
    /// Removes `session`'s subscription to `filter`; returns whether it existed.
    fn unsubscribe(&self, session: &SessionEntry, filter: &str) -> bool;
    /// Hands a message that reached a session through the shared subscription `filter` to
    /// another member of the group (its session ended before it was acknowledged).
    fn redistribute(&self, filter: &str, message: Message);
    /// The retained messages matching `filter`, for a new subscription [MQTT-3.3.1-6].
    fn retained(&self, filter: &str) -> Vec<Message>;
    /// [`Router::subscribe`], and the retained messages matching `filter` when
    /// `wants_retained(existed)` says so. An implementation makes the two atomic with
    /// respect to publishes with RETAIN, so that a retained message published meanwhile
    /// reaches the new subscription once: as retained or live, never both.
    fn subscribe_with_retained(
        &self,
        session: &Arc<SessionEntry>,
        filter: &str,
        sub: Subscription,
        wants_retained: &dyn Fn(bool) -> bool,
    ) -> (bool, Vec<Message>) {
        let existed = self.subscribe(session, filter, sub);
        let retained = if wants_retained(existed) {
            self.retained(filter)
        } else {
            Vec::new()
        };
        (existed, retained)
    }
    /// The retained messages whose topic starts with `prefix`, in topic order: how many
    /// there are and the page asked for (the dashboard's retained browser).
    fn retained_page(&self, prefix: &str, offset: usize, limit: usize) -> (usize, Vec<Message>);
    /// Number of subscriptions.
    fn subscription_count(&self) -> usize;
    /// Number of retained messages.
    fn retained_count(&self) -> usize;
    /// Loads retained messages recovered from storage (no journaling).
    fn restore_retained(&self, messages: Vec<Message>);
    /// Waits until the router's own tickets `(first, last)` (`Receipt::router`) are all
    /// accepted; an error says why one never will be (the publisher's connection is then
    /// closed unacknowledged, so that the client sends the message again).
    fn accepted(
        &self,
        _tickets: (u64, u64),
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// One subscription as stored in the trie.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    /// Granted QoS, options and identifier.
    pub sub: Subscription,
    /// The subscribing session.
    pub session: Arc<SessionEntry>,
}

/// One session that a message is to be delivered to, through one of its subscriptions.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The session.
    pub session: Arc<SessionEntry>,
    /// The matching subscription.
    pub sub: Subscription,
    /// The `$share/...` filter, when the match came through a shared subscription.
    pub shared: Option<Arc<str>>,
}

/// The members of one shared subscription group (`$share/{group}/{filter}`): each message
/// goes to one of them, in turn (round robin), preferring connected members.
#[derive(Debug, Default)]
pub(crate) struct SharedGroup {
    /// The whole `$share/...` filter.
    filter: Arc<str>,
    members: Vec<Subscriber>,
    next: std::sync::atomic::AtomicUsize,
}

impl SharedGroup {
    /// The member whose turn it is (`mqtt5.shared_strategy`): the next connected one, else
    /// the next one at all (its session queues the message until it reconnects).
    fn pick(&self, strategy: SharedStrategy) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = match strategy {
            SharedStrategy::RoundRobin => turn,
            // A multiplicative hash of the turn: cheap, evenly spread, no shared RNG state.
            SharedStrategy::Random => {
                (turn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as usize >> 17
            }
        };
        let mut fallback = None;
        for m in (0..n).map(|i| &self.members[(start + i) % n]) {
            if m.session.state().is_online() {
                return Some(m);
            }
            fallback.get_or_insert(m);
        }
        fallback
    }
}

/// The single-node router: a subscription trie and a retained store in this process.
pub(crate) struct LocalRouter {
    services: Arc<Services>,
    subscriptions: RwLock<SubscriptionTrie<Arc<str>, Subscriber>>,
    /// Shared subscriptions, keyed by share name under their topic filter.
    shared: RwLock<SubscriptionTrie<Arc<str>, SharedGroup>>,
    /// Number of shared groups: while 0 (the common case) a publish does not touch
    /// `shared` (a second lock per message cost 3.1.1 fan-in 15 %).
    shared_groups: std::sync::atomic::AtomicUsize,
    retained: RwLock<RetainedStore>,
    /// Orders retained publishes (storing the message and collecting its subscribers)
    /// against new subscriptions (inserting them and reading the retained messages), so
    /// that a subscriber gets a concurrently retained message once. Plain publishes do not
    /// take it.
    retain_order: parking_lot::Mutex<()>,
    /// How many sessions the last message matched: the next one's target list is sized so
    /// (a hint; racing publishers may overwrite each other's).
    targets_hint: std::sync::atomic::AtomicUsize,
}

impl LocalRouter {
    /// An empty router.
    pub fn new(services: Arc<Services>) -> Self {
        LocalRouter {
            services,
            subscriptions: RwLock::new(SubscriptionTrie::new()),
            shared: RwLock::new(SubscriptionTrie::new()),
            shared_groups: std::sync::atomic::AtomicUsize::new(0),
            retained: RwLock::new(RetainedStore::new()),
            retain_order: parking_lot::Mutex::new(()),
            targets_hint: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Stores, replaces or deletes the retained message of `msg.topic`; returns the ticket.
    fn retain(&self, msg: &Message) -> Option<u64> {
        let s = &self.services;
        let limit = s.runtime.load().config.persistence.retained_message_limit;
        let outcome = self.retained.write().retain(msg, limit);
        match outcome {
            RetainOutcome::LimitReached => {
                Counters::inc(&s.counters.retained_refused_limit);
                warn!(topic = %msg.topic, limit, "retained message refused: retained_message_limit reached");
                None
            }
            RetainOutcome::Added | RetainOutcome::Replaced => s.storage.as_ref().map(|st| {
                st.submit(vec![StorageOp::PutRetained(Message {
                    retain: true,
                    ..msg.clone()
                })])
            }),
            RetainOutcome::Removed => s
                .storage
                .as_ref()
                .map(|st| st.submit(vec![StorageOp::DeleteRetained(msg.topic.clone())])),
            RetainOutcome::NothingToRemove => None,
        }
    }

    /// Delivers `msg` to this node's matching subscribers; with `store_retained`, stores or
    /// deletes the retained message first when RETAIN is set. A cluster stores retained
    /// messages through [`LocalRouter::apply_retained`] instead, in the cluster's order.
    pub fn route(&self, msg: Message, store_retained: bool) -> Routed {
        self.route_at(msg, store_retained, None, &|_| true)
    }

    /// [`LocalRouter::route`] of a message read at `seq` of the cluster's stream (see
    /// [`deliver_at`]); a shared subscription group (its `$share/...` filter) gets the
    /// message here only if `serves_group` says this node serves it this time (a cluster
    /// gives each message to one node's members).
    pub fn route_at(
        &self,
        mut msg: Message,
        store_retained: bool,
        seq: Option<u64>,
        serves_group: &dyn Fn(&str) -> bool,
    ) -> Routed {
        msg.enqueued_at.get_or_insert_with(std::time::Instant::now);
        let mut receipt = Receipt::ACCEPTED;
        let _order = msg.retain.then(|| self.retain_order.lock());
        if msg.retain && store_retained {
            receipt = Receipt::from_ticket(self.retain(&msg));
        }
        // Sized like the last message's matches: one allocation, not one per doubling.
        let hint = self.targets_hint.load(std::sync::atomic::Ordering::Relaxed);
        let mut targets: Vec<Target> = Vec::with_capacity(hint);
        self.subscriptions
            .read()
            .for_each_match(&msg.topic, |_, s| {
                targets.push(Target {
                    session: s.session.clone(),
                    sub: s.sub,
                    shared: None,
                })
            });
        if self
            .shared_groups
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            let strategy = self.services.runtime.load().config.mqtt5.shared_strategy;
            self.shared.read().for_each_match(&msg.topic, |_, group| {
                if !serves_group(&group.filter) {
                    return;
                }
                if let Some(m) = group.pick(strategy) {
                    targets.push(Target {
                        session: m.session.clone(),
                        sub: m.sub,
                        shared: Some(group.filter.clone()),
                    });
                }
            });
        }
        drop(_order);
        if targets.len() != hint {
            self.targets_hint.store(
                targets.len().min(4096),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let (subscribers, delivered) = deliver_at(&self.services, &msg, targets, seq);
        Routed {
            subscribers,
            receipt: receipt.and(delivered),
            remote: false,
        }
    }

    /// Delivers a message read at `seq` of the cluster's stream to one session, through
    /// whichever of its (non-shared) subscriptions match: a resumed session catching up on
    /// what was published while no node held it.
    pub fn deliver_to(&self, entry: &Arc<SessionEntry>, mut msg: Message, seq: u64) -> usize {
        msg.enqueued_at.get_or_insert_with(std::time::Instant::now);
        let targets: Vec<Target> = entry
            .state()
            .subscriptions
            .iter()
            .filter(|(f, _)| {
                parse_shared(f).is_none() && crate::protocol::topic::filter_matches(f, &msg.topic)
            })
            .map(|(_, sub)| Target {
                session: entry.clone(),
                sub: *sub,
                shared: None,
            })
            .collect();
        deliver_at(&self.services, &msg, targets, Some(seq)).0
    }

    /// How many of this node's sessions belong to the shared subscription `filter`
    /// (`$share/{group}/{filter}`).
    pub fn shared_members(&self, filter: &str) -> usize {
        let Some(Ok(shared)) = parse_shared(filter) else {
            return 0;
        };
        let key: Arc<str> = Arc::from(shared.group);
        self.shared
            .write()
            .get_mut(shared.filter, &key)
            .map_or(0, |g| g.members.len())
    }

    /// Stores, replaces or (empty payload) deletes a retained message without delivering
    /// it, ordered against new subscriptions like a retained publish.
    pub fn apply_retained(&self, msg: &Message) {
        let _order = self.retain_order.lock();
        self.retain(msg);
    }
}

impl Router for LocalRouter {
    fn publish(&self, msg: Message) -> Routed {
        self.route(msg, true)
    }

    fn subscribe(&self, session: &Arc<SessionEntry>, filter: &str, sub: Subscription) -> bool {
        let subscriber = Subscriber {
            sub,
            session: session.clone(),
        };
        let Some(Ok(shared)) = parse_shared(filter) else {
            return self
                .subscriptions
                .write()
                .insert(filter, session.client_id.clone(), subscriber)
                .is_some();
        };
        let mut trie = self.shared.write();
        let group_key: Arc<str> = Arc::from(shared.group);
        if trie.get_mut(shared.filter, &group_key).is_none() {
            self.shared_groups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            trie.insert(
                shared.filter,
                group_key.clone(),
                SharedGroup {
                    filter: Arc::from(filter),
                    ..Default::default()
                },
            );
        }
        let Some(group) = trie.get_mut(shared.filter, &group_key) else {
            return false;
        };
        match group
            .members
            .iter_mut()
            .find(|m| m.session.client_id == session.client_id)
        {
            Some(existing) => {
                *existing = subscriber;
                true
            }
            None => {
                group.members.push(subscriber);
                false
            }
        }
    }

    fn unsubscribe(&self, session: &SessionEntry, filter: &str) -> bool {
        let Some(Ok(shared)) = parse_shared(filter) else {
            return self
                .subscriptions
                .write()
                .remove(filter, &session.client_id)
                .is_some();
        };
        let mut trie = self.shared.write();
        let group_key: Arc<str> = Arc::from(shared.group);
        let Some(group) = trie.get_mut(shared.filter, &group_key) else {
            return false;
        };
        let before = group.members.len();
        group
            .members
            .retain(|m| m.session.client_id != session.client_id);
        let removed = group.members.len() < before;
        if group.members.is_empty() {
            trie.remove(shared.filter, &group_key);
            self.shared_groups
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        removed
    }

    fn redistribute(&self, filter: &str, message: Message) {
        let Some(Ok(shared)) = parse_shared(filter) else {
            return;
        };
        let strategy = self.services.runtime.load().config.mqtt5.shared_strategy;
        let target = {
            let mut trie = self.shared.write();
            let group_key: Arc<str> = Arc::from(shared.group);
            trie.get_mut(shared.filter, &group_key).and_then(|group| {
                group.pick(strategy).map(|m| Target {
                    session: m.session.clone(),
                    sub: m.sub,
                    shared: Some(group.filter.clone()),
                })
            })
        };
        match target {
            Some(t) => {
                deliver(&self.services, &message, vec![t]);
            }
            None => {
                Counters::inc(&self.services.counters.dropped_no_subscribers);
                warn!(topic = %message.topic, %filter, "shared subscription has no member left: unacknowledged message dropped");
            }
        }
    }

    fn retained(&self, filter: &str) -> Vec<Message> {
        self.retained.read().matching(filter)
    }

    fn subscribe_with_retained(
        &self,
        session: &Arc<SessionEntry>,
        filter: &str,
        sub: Subscription,
        wants_retained: &dyn Fn(bool) -> bool,
    ) -> (bool, Vec<Message>) {
        let _order = self.retain_order.lock();
        let existed = self.subscribe(session, filter, sub);
        let retained = if wants_retained(existed) {
            self.retained(filter)
        } else {
            Vec::new()
        };
        (existed, retained)
    }

    fn retained_page(&self, prefix: &str, offset: usize, limit: usize) -> (usize, Vec<Message>) {
        // Names only under the lock (reference counts), sorted outside it: a big store
        // never holds up retained publishes for a sort.
        let mut topics: Vec<Arc<str>> = self
            .retained
            .read()
            .iter()
            .filter(|m| m.topic.starts_with(prefix))
            .map(|m| m.topic.clone())
            .collect();
        topics.sort_unstable();
        let total = topics.len();
        let page: Vec<Arc<str>> = topics.into_iter().skip(offset).take(limit).collect();
        let store = self.retained.read();
        let messages = page
            .iter()
            .filter_map(|t| store.matching(t).into_iter().next())
            .collect();
        (total, messages)
    }

    fn subscription_count(&self) -> usize {
        self.subscriptions.read().len()
    }

    fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    fn restore_retained(&self, messages: Vec<Message>) {
        let mut retained = self.retained.write();
        for m in messages {
            retained.retain(&m, usize::MAX);
        }
    }
}

/// Queues `msg` for each matching session: one delivery per client at the highest QoS of
/// its matching subscriptions [MQTT-3.3.5-1] (one per subscription when they carry different
/// subscription identifiers, [MQTT-3.3.4-5]), after No Local [MQTT-3.8.3-3] and the
/// delivery ACL (a wildcard subscription never leaks a topic its client may not read). A
/// shared subscription's delivery is its own: it is not merged with the client's other
/// matches. Returns how many sessions took it and the receipt of what that journaled.
pub(crate) fn deliver(s: &Services, msg: &Message, targets: Vec<Target>) -> (usize, Receipt) {
    deliver_at(s, msg, targets, None)
}

/// [`deliver`] a message read at `seq` of the cluster's stream: each receiving persistent
/// session journals that it has seen the stream up to there.
fn deliver_at(
    s: &Services,
    msg: &Message,
    mut targets: Vec<Target>,
    seq: Option<u64>,
) -> (usize, Receipt) {
    let mut receipt = Receipt::ACCEPTED;
    if let Some(origin) = msg.props.as_ref().and_then(|p| p.origin.as_deref()) {
        targets.retain(|t| !(t.sub.options.no_local && &*t.session.client_id == origin));
    }
    if targets.is_empty() {
        // The broker's own `$SYS` updates are not client messages nobody wanted.
        if !msg.topic.starts_with("$SYS/") {
            Counters::inc(&s.counters.dropped_no_subscribers);
        }
        return (0, receipt);
    }
    // One delivery per (session, shared filter): the matches of one session are adjacent
    // after sorting, highest QoS first; they are merged in place, with no second list.
    if targets.len() > 1 {
        // Unstable: matches equal in all three keys are interchangeable, and the stable sort
        // allocates a scratch buffer per message (a fan-out to 100 sessions sorts 100).
        targets.sort_unstable_by(|a, b| {
            Arc::as_ptr(&a.session)
                .cmp(&Arc::as_ptr(&b.session))
                .then_with(|| a.shared.cmp(&b.shared))
                .then(b.sub.qos.cmp(&a.sub.qos))
        });
    }
    let runtime = s.runtime.load();
    let mut count = 0;
    let mut i = 0;
    while i < targets.len() {
        let first = &targets[i];
        let group_len = targets[i..]
            .iter()
            .take_while(|t| Arc::ptr_eq(&t.session, &first.session) && t.shared == first.shared)
            .count();
        let group = &targets[i..i + group_len];
        i += group_len;
        let entry = &first.session;
        let granted = first.sub.qos;
        if runtime.security.has_authorizers() {
            let request = AclRequest {
                action: AclAction::Deliver,
                topic: &msg.topic,
                qos: msg.qos.min(granted),
                retain: false,
            };
            let allowed = runtime.security.authorize_cached_for_session(
                &request,
                &mut entry.acl_cache.lock(),
                runtime.generation,
                || entry.client(),
            );
            if !allowed {
                Counters::inc(&s.counters.acl_denied_deliver);
                continue;
            }
        }
        count += 1;
        // Several matching subscriptions with different identifiers: one copy each, with its
        // own identifier [MQTT-3.3.4-5] (one copy with all of them, [MQTT-3.3.4-4], is legal
        // too, but libmosquitto and so mosquitto_sub refuse a PUBLISH carrying several).
        let mut ids: Vec<u32> = group.iter().filter_map(|t| t.sub.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > 1 {
            for t in group {
                let copy = delivery(
                    msg,
                    t.sub.qos,
                    t.sub.options.retain_as_published,
                    t.sub.id.into_iter().collect(),
                    &t.shared,
                );
                receipt = receipt.and(enqueue(s, entry, msg, copy, seq));
            }
            continue;
        }
        let keep_retain = group.iter().any(|t| t.sub.options.retain_as_published);
        let delivered = delivery(msg, granted, keep_retain, ids, &first.shared);
        receipt = receipt.and(enqueue(s, entry, msg, delivered, seq));
    }
    (count, receipt)
}

/// The copy of `msg` queued for one subscriber: delivery QoS is the minimum of publish and
/// subscription QoS; RETAIN is cleared on ordinary forwarding [MQTT-3.3.1-9] unless Retain
/// As Published [MQTT-3.3.1-12]; the subscription identifiers and the shared subscription
/// it came through go with it.
fn delivery(
    msg: &Message,
    granted: QoS,
    keep_retain: bool,
    ids: Vec<u32>,
    shared: &Option<Arc<str>>,
) -> Message {
    let mut delivered = Message {
        qos: msg.qos.min(granted),
        retain: msg.retain && keep_retain,
        ..msg.clone()
    };
    if !ids.is_empty() || shared.is_some() {
        let mut props = delivered.props.as_deref().cloned().unwrap_or_default();
        props.set_subscription_identifiers(ids);
        props.shared = shared.clone();
        delivered.props = Some(Arc::new(props));
    }
    delivered
}

/// Queues one copy for a session, waking its connection; a refused copy is counted.
fn enqueue(
    s: &Services,
    entry: &Arc<SessionEntry>,
    msg: &Message,
    delivered: Message,
    seq: Option<u64>,
) -> Receipt {
    let mut receipt = Receipt::ACCEPTED;
    let mut state = entry.state();
    match state.enqueue(delivered) {
        Ok(()) => {
            if let Some(seq) = seq {
                state.journal_stream_mark(seq);
            }
            let online = state.is_online();
            receipt = Receipt::from_ticket(s.persist(&mut state));
            drop(state);
            if online {
                entry.wake.notify_one();
            }
        }
        Err(reason) => {
            drop(state);
            s.count_drop(entry, msg, reason);
        }
    }
    receipt
}

impl Services {
    /// Counts (and logs once per connection) a message a subscriber's session refused.
    fn count_drop(&self, entry: &SessionEntry, msg: &Message, reason: DropReason) {
        self.ops
            .events
            .emit(|| crate::events::BrokerEvent::MessageDropped {
                client_id: entry.client_id.clone(),
                topic: msg.topic.clone(),
                reason: match reason {
                    DropReason::Qos0Offline => "offline QoS 0",
                    DropReason::QueueFull => "queue full",
                    DropReason::QueueBytesFull => "queue bytes full",
                },
            });
        let kind = match reason {
            DropReason::Qos0Offline => {
                Counters::inc(&self.counters.dropped_offline_qos0);
                return;
            }
            DropReason::QueueFull => {
                Counters::inc(&self.counters.dropped_queue_full);
                LimitKind::MessageQueueLimit
            }
            DropReason::QueueBytesFull => LimitKind::MaxQueuedBytes,
        };
        self.counters.ops.limit(kind);
        if self.ops.first_warning(&entry.client_id, kind) {
            // Logged in the publisher's span: name the subscriber it is about.
            let peer = entry.client().peer;
            match kind {
                LimitKind::MessageQueueLimit => {
                    warn!(subscriber = %entry.client_id, subscriber_peer = %peer, topic = %msg.topic, "message dropped: subscriber queue full (message_queue_limit); logged once per connection, counted in /metrics")
                }
                _ => {
                    warn!(subscriber = %entry.client_id, subscriber_peer = %peer, topic = %msg.topic, "message dropped: subscriber queue holds limits.max_queued_bytes; logged once per connection, counted in /metrics")
                }
            }
        }
    }
}
