//! The data structures of routing: the subscription trie and the retained-message store.
//!
//! Owns matching only; must not know sessions, sockets or storage. The routing seam that
//! uses them (`crate::core::router`) decides what a match means.

pub mod retained;
pub mod trie;

pub use crate::model::Message;

pub use retained::{RetainOutcome, RetainedStore};
pub use trie::SubscriptionTrie;
