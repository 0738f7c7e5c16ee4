//! Where messages go: the application message type, the subscription trie and the
//! retained-message store.

pub mod retained;
pub mod trie;

use crate::protocol::{Publish, QoS};
use bytes::Bytes;
use std::sync::Arc;

pub use retained::{RetainOutcome, RetainedStore};
pub use trie::SubscriptionTrie;

/// An application message as it travels through the broker.
///
/// Cheap to clone: the topic and payload are reference counted, so one published message
/// fans out to many subscribers without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload bytes.
    pub payload: Bytes,
    /// QoS (as published, or as granted for one subscriber).
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// When the broker routed it (set by `Shared::publish`), for the publish-to-deliver
    /// latency histogram; `None` for messages that are not timed (retained on subscribe).
    pub enqueued_at: Option<std::time::Instant>,
}

impl Message {
    /// Builds a message.
    pub fn new(topic: &str, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Message {
            topic: Arc::from(topic),
            payload,
            qos,
            retain,
            enqueued_at: None,
        }
    }

    /// Takes the message out of a received PUBLISH.
    pub fn from_publish(p: Publish) -> Self {
        Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            enqueued_at: None,
        }
    }

    /// The PUBLISH that carries this message with the given packet id and DUP flag.
    pub fn to_publish(&self, pid: Option<u16>, dup: bool) -> Publish {
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.clone(),
            pid,
            payload: self.payload.clone(),
        }
    }
}
