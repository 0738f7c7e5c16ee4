//! The subscription trie: topic filters split into levels, so that finding every
//! subscriber of a topic costs time proportional to the topic's depth, not to the
//! number of filters.

use std::collections::HashMap;
use std::hash::Hash;

/// Deepest topic filter (in levels) the broker subscribes to.
///
/// Matching and removal recurse once per level, and dropping a branch does too, so the
/// depth must stay far below what a task's stack holds: a SUBSCRIBE with a 30,000-level
/// filter (legal: 65,535 bytes of `+/+/...`) overflowed a worker's stack and aborted the
/// whole broker. Deeper filters are refused with SUBACK 0x80 (a topic *name* of any depth
/// is still routed: matching only walks levels that some filter has).
pub const MAX_FILTER_LEVELS: usize = 1_000;

/// A map from topic filters to subscribers, keyed per subscriber.
///
/// `K` identifies a subscriber (a client id); `V` is what a subscription carries
/// (granted QoS and a handle to the session). One subscriber holds at most one entry
/// per filter; subscribing again replaces it [MQTT-3.8.4-3].
#[derive(Debug)]
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

#[derive(Debug)]
struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers whose filter ends in `#` at this level.
    hash: HashMap<K, V>,
    /// Subscribers whose filter ends exactly at this level.
    exact: HashMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            hash: HashMap::new(),
            exact: HashMap::new(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }
}

impl<K: Hash + Eq + Clone, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone, V> SubscriptionTrie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        SubscriptionTrie {
            root: Node::default(),
            len: 0,
        }
    }

    /// Number of (filter, subscriber) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no subscription exists.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces the subscription of `key` to the (valid) `filter`; returns the old value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        let map = loop {
            let level = levels.next().unwrap_or("");
            let last = levels.peek().is_none();
            if level == "#" {
                break &mut node.hash;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
            if last {
                break &mut node.exact;
            }
        };
        let old = map.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value of `key`'s subscription to `filter`, for changing it in place.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        loop {
            let level = levels.next().unwrap_or("");
            let last = levels.peek().is_none();
            if level == "#" {
                return node.hash.get_mut(key);
            }
            node = if level == "+" {
                node.plus.as_deref_mut()?
            } else {
                node.children.get_mut(level)?
            };
            if last {
                return node.exact.get_mut(key);
            }
        }
    }

    /// Removes the subscription of `key` to `filter`; returns its value if it existed.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<K, V>, levels: &[&str], key: &K) -> Option<V> {
        let (level, rest) = levels.split_first()?;
        if *level == "#" {
            return node.hash.remove(key);
        }
        let removed;
        if *level == "+" {
            let child = node.plus.as_deref_mut()?;
            removed = if rest.is_empty() {
                child.exact.remove(key)
            } else {
                Self::remove_at(child, rest, key)
            };
            if child.is_empty() {
                node.plus = None;
            }
        } else {
            let child = node.children.get_mut(*level)?;
            removed = if rest.is_empty() {
                child.exact.remove(key)
            } else {
                Self::remove_at(child, rest, key)
            };
            if child.is_empty() {
                node.children.remove(*level);
            }
        }
        removed
    }

    /// Calls `f` for every subscription whose filter matches the (valid) topic name.
    ///
    /// A subscriber with several matching filters is reported once per filter; the
    /// caller merges them [MQTT-3.3.5-1].
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K, &V)) {
        // [MQTT-4.7.2-1]: first-level wildcards never match topics starting with '$'.
        let dollar = topic.starts_with('$');
        let levels: Vec<&str> = topic.split('/').collect();
        Self::walk(&self.root, &levels, !dollar, &mut f);
    }

    fn walk(node: &Node<K, V>, levels: &[&str], wildcards: bool, f: &mut impl FnMut(&K, &V)) {
        if wildcards {
            // "a/#" matches "a" itself and everything below it [MQTT-4.7.1-2].
            node.hash.iter().for_each(|(k, v)| f(k, v));
        }
        let Some((level, rest)) = levels.split_first() else {
            return;
        };
        let mut visit = |child: &Node<K, V>| {
            if rest.is_empty() {
                child.exact.iter().for_each(|(k, v)| f(k, v));
                child.hash.iter().for_each(|(k, v)| f(k, v));
            } else {
                Self::walk(child, rest, true, f);
            }
        };
        if wildcards {
            if let Some(plus) = &node.plus {
                visit(plus);
            }
        }
        if let Some(child) = node.children.get(*level) {
            visit(child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::filter_matches;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn matches(trie: &SubscriptionTrie<u32, String>, topic: &str) -> BTreeSet<(u32, String)> {
        let mut out = BTreeSet::new();
        trie.for_each_match(topic, |k, v| {
            out.insert((*k, v.clone()));
        });
        out
    }

    #[test]
    fn hash_matches_parent_level() {
        let mut t = SubscriptionTrie::new();
        t.insert("sport/#", 1, "sport/#".to_string());
        t.insert("#", 2, "#".to_string());
        t.insert("+", 3, "+".to_string());
        assert_eq!(matches(&t, "sport").len(), 3);
        assert_eq!(matches(&t, "sport/x/y").len(), 2);
        assert_eq!(matches(&t, "$SYS/x").len(), 0);
        assert_eq!(t.remove("sport/#", &1), Some("sport/#".to_string()));
        assert_eq!(t.remove("sport/#", &1), None);
        assert_eq!(t.len(), 2);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$s".to_string())
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..5),
            any::<bool>(),
        )
            .prop_filter_map("empty filter", |(mut levels, hash)| {
                if hash {
                    levels.push("#".to_string());
                }
                (!levels.is_empty()).then(|| levels.join("/"))
            })
    }

    proptest! {
        /// The trie reports exactly what the reference matcher accepts, and removal undoes insertion.
        #[test]
        fn trie_agrees_with_reference(filters in prop::collection::vec(filter(), 0..30),
                                      topics in prop::collection::vec(topic(), 1..20)) {
            let mut trie = SubscriptionTrie::new();
            for (i, f) in filters.iter().enumerate() {
                trie.insert(f, i as u32, f.clone());
            }
            for t in &topics {
                let expected: BTreeSet<(u32, String)> = filters
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| filter_matches(f, t))
                    .map(|(i, f)| (i as u32, f.clone()))
                    .collect();
                prop_assert_eq!(matches(&trie, t), expected);
            }
            for (i, f) in filters.iter().enumerate() {
                prop_assert!(trie.remove(f, &(i as u32)).is_some());
            }
            prop_assert!(trie.is_empty());
            prop_assert!(trie.root.is_empty());
        }
    }
}
