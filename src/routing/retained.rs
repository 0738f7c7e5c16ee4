//! Retained messages: the last retained message per topic, handed to new subscribers.

use super::Message;
use crate::protocol::topic::{filter_matches, has_wildcard};
use std::collections::HashMap;
use std::sync::Arc;

/// Outcome of storing a retained message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    /// A new topic now has a retained message.
    Added,
    /// The retained message of an existing topic was replaced.
    Replaced,
    /// An empty payload removed the topic's retained message [MQTT-3.3.1-10].
    Removed,
    /// An empty payload for a topic that had none: nothing to do [MQTT-3.3.1-11].
    NothingToRemove,
    /// The cap on retained topics was reached; the new topic was not stored.
    LimitReached,
}

/// The retained messages, one per topic.
#[derive(Debug, Default)]
pub struct RetainedStore {
    messages: HashMap<Arc<str>, Message>,
}

impl RetainedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of topics with a retained message.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Stores, replaces or deletes the retained message for `msg.topic`.
    ///
    /// `limit` caps the number of retained topics: beyond it new topics are refused while
    /// existing ones still update or delete.
    pub fn retain(&mut self, msg: &Message, limit: usize) -> RetainOutcome {
        if msg.payload.is_empty() {
            return match self.messages.remove(&msg.topic) {
                Some(_) => RetainOutcome::Removed,
                None => RetainOutcome::NothingToRemove,
            };
        }
        let stored = Message {
            retain: true,
            // Sent again on later subscribes: that is not publish-to-deliver latency.
            enqueued_at: None,
            ..msg.clone()
        };
        let len = self.messages.len();
        match self.messages.get_mut(&msg.topic) {
            Some(slot) => {
                *slot = stored;
                RetainOutcome::Replaced
            }
            None if len >= limit => RetainOutcome::LimitReached,
            None => {
                self.messages.insert(msg.topic.clone(), stored);
                RetainOutcome::Added
            }
        }
    }

    /// Every retained message whose topic matches `filter`.
    /// An expired message is never sent [MQTT-3.3.2-5].
    pub fn matching(&self, filter: &str) -> Vec<Message> {
        let now = std::time::SystemTime::now();
        if !has_wildcard(filter) {
            return self
                .messages
                .get(filter)
                .filter(|m| !m.is_expired(now))
                .cloned()
                .into_iter()
                .collect();
        }
        self.messages
            .values()
            .filter(|m| filter_matches(filter, &m.topic) && !m.is_expired(now))
            .cloned()
            .collect()
    }

    /// Iterates over all retained messages.
    pub fn iter(&self) -> impl Iterator<Item = &Message> {
        self.messages.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use bytes::Bytes;

    fn msg(topic: &str, payload: &'static [u8]) -> Message {
        Message::new(topic, Bytes::from_static(payload), QoS::AtLeastOnce, true)
    }

    #[test]
    fn replace_delete_and_cap() {
        let mut s = RetainedStore::new();
        assert_eq!(s.retain(&msg("a", b"1"), 2), RetainOutcome::Added);
        assert_eq!(s.retain(&msg("a", b"2"), 2), RetainOutcome::Replaced);
        assert_eq!(s.retain(&msg("b", b"1"), 2), RetainOutcome::Added);
        assert_eq!(s.retain(&msg("c", b"1"), 2), RetainOutcome::LimitReached);
        assert_eq!(s.retain(&msg("b", b"3"), 2), RetainOutcome::Replaced);
        assert_eq!(s.retain(&msg("a", b""), 2), RetainOutcome::Removed);
        assert_eq!(s.retain(&msg("a", b""), 2), RetainOutcome::NothingToRemove);
        assert_eq!(s.matching("#").len(), 1);
        assert_eq!(&s.matching("b")[0].payload[..], b"3");
    }
}
