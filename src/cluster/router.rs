//! The cluster's [`Router`]: this node's trie and retained store ([`LocalRouter`]) for its
//! own subscribers, NATS for everything that crosses nodes.
//!
//! - QoS 0 is delivered here at once and published on core NATS (`<prefix>.m.<topic>`),
//!   which every other node subscribes to as a whole (the connection's `no_echo` keeps our
//!   own copy from coming back).
//! - QoS 1/2 go through the JetStream stream (`<prefix>.q.<topic>`) only: the publisher's
//!   PUBACK/PUBREC waits for the stream's acknowledgement (its receipt), and every node,
//!   this one included, delivers what its one consumer reads from the stream. A message is
//!   thus delivered anywhere only once it is stored, in the stream's order.
//! - A retained message (or its deletion) is also written to the retained bucket; every
//!   node's retained store is kept by watching that bucket, the only writer, so all nodes
//!   agree on the last value. A QoS 1/2 retained publish is acknowledged once the bucket
//!   stored it and this node's store shows it.
//!
//! Tickets: each message that needs storing gets the next ticket, handed to the publisher
//! task in ticket order; acknowledgements are awaited in the same order, so "done up to
//! ticket N" is one number (`done`), and failures are remembered by ticket.

use super::{ClusterShared, Outgoing};
use crate::core::registry::SessionEntry;
use crate::core::router::{LocalRouter, Receipt, Routed, Router};
use crate::model::{Message, Subscription};
use crate::protocol::QoS;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Routes through this node and the cluster (see the module documentation).
pub(crate) struct ClusterRouter {
    local: Arc<LocalRouter>,
    shared: Arc<ClusterShared>,
}

impl ClusterRouter {
    /// A router over this node's `local` one and the cluster link's shared state.
    pub fn new(local: Arc<LocalRouter>, shared: Arc<ClusterShared>) -> Self {
        ClusterRouter { local, shared }
    }
}

impl Router for ClusterRouter {
    fn publish(&self, mut msg: Message) -> Routed {
        if msg.topic.starts_with("$SYS/") {
            // Each node's `$SYS` tree is about itself: it stays on the node (retained
            // locally), or the nodes would overwrite each other's numbers.
            return self.local.route(msg, true);
        }
        msg.enqueued_at.get_or_insert_with(std::time::Instant::now);
        let id = self.shared.new_message_id();
        if msg.qos == QoS::AtMostOnce {
            let shared = &self.shared;
            let mut routed = self
                .local
                .route_at(msg.clone(), false, None, &|f| shared.serves_group(f, id));
            // A QoS 0 retained message is stored all the same, unacknowledged.
            self.shared.submit(Outgoing::live(msg, id), false);
            routed.remote = true;
            return routed;
        }
        let ticket = self.shared.submit(Outgoing::stored(msg, id), true);
        Routed {
            subscribers: 0,
            receipt: Receipt {
                storage: None,
                router: ticket.map(|t| (t, t)),
            },
            remote: true,
        }
    }

    fn subscribe(&self, session: &Arc<SessionEntry>, filter: &str, sub: Subscription) -> bool {
        let existed = self.local.subscribe(session, filter, sub);
        if !existed && filter.starts_with("$share/") {
            self.shared.shares.local_change(filter);
        }
        existed
    }

    fn unsubscribe(&self, session: &SessionEntry, filter: &str) -> bool {
        let removed = self.local.unsubscribe(session, filter);
        if removed && filter.starts_with("$share/") {
            self.shared.shares.local_change(filter);
        }
        removed
    }

    fn redistribute(&self, filter: &str, message: Message) {
        self.local.redistribute(filter, message)
    }

    fn retained(&self, filter: &str) -> Vec<Message> {
        self.local.retained(filter)
    }

    fn subscribe_with_retained(
        &self,
        session: &Arc<SessionEntry>,
        filter: &str,
        sub: Subscription,
        wants_retained: &dyn Fn(bool) -> bool,
    ) -> (bool, Vec<Message>) {
        let (existed, retained) =
            self.local
                .subscribe_with_retained(session, filter, sub, wants_retained);
        if !existed && filter.starts_with("$share/") {
            self.shared.shares.local_change(filter);
        }
        (existed, retained)
    }

    fn retained_page(&self, prefix: &str, offset: usize, limit: usize) -> (usize, Vec<Message>) {
        self.local.retained_page(prefix, offset, limit)
    }

    fn subscription_count(&self) -> usize {
        self.local.subscription_count()
    }

    fn retained_count(&self) -> usize {
        self.local.retained_count()
    }

    fn restore_retained(&self, _messages: Vec<Message>) {
        // The retained bucket is the cluster's truth; a node's local store only mirrors it.
    }

    fn accepted(
        &self,
        tickets: (u64, u64),
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let timeout = self.shared.publish_timeout() + Duration::from_secs(1);
            let mut done = self.shared.done.subscribe();
            let waited = tokio::time::timeout(timeout, done.wait_for(|d| *d >= tickets.1)).await;
            match waited {
                Ok(Ok(_)) => self.shared.failure_between(tickets.0, tickets.1),
                Ok(Err(_)) => Err("the cluster link has stopped".into()),
                Err(_) => Err(format!(
                    "JetStream did not confirm within {} ms",
                    timeout.as_millis()
                )),
            }
        })
    }
}
