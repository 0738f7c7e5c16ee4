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
use crate::hooks::{AclAction, AclRequest};
use crate::metrics::ops::LimitKind;
use crate::metrics::Counters;
use crate::model::Message;
use crate::protocol::QoS;
use crate::routing::{RetainOutcome, RetainedStore, SubscriptionTrie};
use crate::session::DropReason;
use crate::storage::StorageOp;
use parking_lot::RwLock;
use std::sync::Arc;
use tracing::warn;

/// When what a router was handed is accepted (stored where it must be).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Receipt {
    /// Accepted already.
    #[default]
    Accepted,
    /// Accepted once the storage writer reports this ticket durable.
    Storage(u64),
}

impl Receipt {
    /// The later of two receipts (both must be satisfied).
    pub fn and(self, other: Receipt) -> Receipt {
        match (self, other) {
            (Receipt::Storage(a), Receipt::Storage(b)) => Receipt::Storage(a.max(b)),
            (Receipt::Storage(a), Receipt::Accepted) | (Receipt::Accepted, Receipt::Storage(a)) => {
                Receipt::Storage(a)
            }
            (Receipt::Accepted, Receipt::Accepted) => Receipt::Accepted,
        }
    }

    /// A storage ticket as a receipt.
    pub fn from_ticket(ticket: Option<u64>) -> Receipt {
        ticket.map_or(Receipt::Accepted, Receipt::Storage)
    }
}

/// What routing one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// How many sessions it was queued for.
    pub subscribers: usize,
    /// When it is accepted.
    pub receipt: Receipt,
}

/// The interface between the protocol engine and wherever messages go.
pub(crate) trait Router: Send + Sync {
    /// Routes a message to every matching subscriber, storing or deleting the retained
    /// message first when RETAIN is set [MQTT-3.3.1-5].
    fn publish(&self, message: Message) -> Routed;
    /// Adds or replaces `session`'s subscription to `filter` at `qos`.
    fn subscribe(&self, session: &Arc<SessionEntry>, filter: &str, qos: QoS);
    /// Removes `session`'s subscription to `filter`; returns whether it existed.
    fn unsubscribe(&self, session: &SessionEntry, filter: &str) -> bool;
    /// The retained messages matching `filter`, for a new subscription [MQTT-3.3.1-6].
    fn retained(&self, filter: &str) -> Vec<Message>;
    /// Number of subscriptions.
    fn subscription_count(&self) -> usize;
    /// Number of retained messages.
    fn retained_count(&self) -> usize;
    /// Loads retained messages recovered from storage (no journaling).
    fn restore_retained(&self, messages: Vec<Message>);
}

/// One subscription as stored in the trie.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    /// Granted QoS.
    pub qos: QoS,
    /// The subscribing session.
    pub session: Arc<SessionEntry>,
}

/// The single-node router: a subscription trie and a retained store in this process.
pub(crate) struct LocalRouter {
    services: Arc<Services>,
    subscriptions: RwLock<SubscriptionTrie<Arc<str>, Subscriber>>,
    retained: RwLock<RetainedStore>,
}

impl LocalRouter {
    /// An empty router.
    pub fn new(services: Arc<Services>) -> Self {
        LocalRouter {
            services,
            subscriptions: RwLock::new(SubscriptionTrie::new()),
            retained: RwLock::new(RetainedStore::new()),
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
}

impl Router for LocalRouter {
    fn publish(&self, mut msg: Message) -> Routed {
        msg.enqueued_at.get_or_insert_with(std::time::Instant::now);
        let mut receipt = Receipt::Accepted;
        if msg.retain {
            receipt = Receipt::from_ticket(self.retain(&msg));
        }
        let mut targets: Vec<(Arc<SessionEntry>, QoS)> = Vec::new();
        self.subscriptions
            .read()
            .for_each_match(&msg.topic, |_, sub| {
                targets.push((sub.session.clone(), sub.qos))
            });
        let (subscribers, delivered) = deliver(&self.services, &msg, targets);
        Routed {
            subscribers,
            receipt: receipt.and(delivered),
        }
    }

    fn subscribe(&self, session: &Arc<SessionEntry>, filter: &str, qos: QoS) {
        self.subscriptions.write().insert(
            filter,
            session.client_id.clone(),
            Subscriber {
                qos,
                session: session.clone(),
            },
        );
    }

    fn unsubscribe(&self, session: &SessionEntry, filter: &str) -> bool {
        self.subscriptions
            .write()
            .remove(filter, &session.client_id)
            .is_some()
    }

    fn retained(&self, filter: &str) -> Vec<Message> {
        self.retained.read().matching(filter)
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
/// its matching subscriptions [MQTT-3.3.5-1], after the delivery ACL (a wildcard
/// subscription never leaks a topic its client may not read). Returns how many sessions
/// took it and the receipt of what that journaled.
pub(crate) fn deliver(
    s: &Services,
    msg: &Message,
    mut targets: Vec<(Arc<SessionEntry>, QoS)>,
) -> (usize, Receipt) {
    let mut receipt = Receipt::Accepted;
    if targets.is_empty() {
        // The broker's own `$SYS` updates are not client messages nobody wanted.
        if !msg.topic.starts_with("$SYS/") {
            Counters::inc(&s.counters.dropped_no_subscribers);
        }
        return (0, receipt);
    }
    if targets.len() > 1 {
        targets.sort_by(|a, b| {
            Arc::as_ptr(&a.0)
                .cmp(&Arc::as_ptr(&b.0))
                .then(b.1.cmp(&a.1))
        });
        targets.dedup_by(|later, first| Arc::ptr_eq(&later.0, &first.0));
    }
    let runtime = s.runtime.load();
    if runtime.security.has_authorizers() {
        targets.retain(|(entry, granted)| {
            let client = entry.client();
            let request = AclRequest {
                action: AclAction::Deliver,
                topic: &msg.topic,
                qos: msg.qos.min(*granted),
                retain: false,
            };
            let allowed = runtime.security.authorize_cached(
                &client,
                &request,
                &mut entry.acl_cache.lock(),
                runtime.generation,
            );
            if !allowed {
                Counters::inc(&s.counters.acl_denied_deliver);
            }
            allowed
        });
    }
    let count = targets.len();
    for (entry, granted) in targets {
        // Delivery QoS is the minimum of publish and subscription QoS; RETAIN is cleared on
        // ordinary forwarding [MQTT-3.3.1-9].
        let delivered = Message {
            qos: msg.qos.min(granted),
            retain: false,
            ..msg.clone()
        };
        let mut state = entry.state();
        match state.enqueue(delivered) {
            Ok(()) => {
                let online = state.is_online();
                receipt = receipt.and(Receipt::from_ticket(s.persist(&mut state)));
                drop(state);
                if online {
                    entry.wake.notify_one();
                }
            }
            Err(reason) => {
                drop(state);
                s.count_drop(&entry, msg, reason);
            }
        }
    }
    (count, receipt)
}

impl Services {
    /// Counts (and logs once per connection) a message a subscriber's session refused.
    fn count_drop(&self, entry: &SessionEntry, msg: &Message, reason: DropReason) {
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
