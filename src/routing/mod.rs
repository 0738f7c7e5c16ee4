//! Where messages go: the application message type, the subscription trie and the
//! retained-message store.

pub mod retained;
pub mod trie;

pub use crate::model::Message;

pub use retained::{RetainOutcome, RetainedStore};
pub use trie::SubscriptionTrie;
