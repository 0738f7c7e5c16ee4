//! Shared subscriptions across nodes: every node reads every message, so each node must
//! know whether it is the one whose members get a given message of a group.
//!
//! Bucket `<prefix>-shares`: key `<$share filter>.<node>` (both escaped), value = how many
//! of that node's sessions are members. Every node mirrors the bucket; for each message the
//! nodes with members of the group (and a live heartbeat) are sorted and the message id,
//! which the publishing node put in the message's `Mqtt-Id` header, picks one of them the
//! same way on every node. Within the chosen node the group's own strategy picks the member.
//! While views differ (a member joined a moment ago), a node that does not find itself in
//! the view serves its members anyway: a message may then reach two members, never none.

use super::subject::{client_key, topic_from_tokens};
use super::ClusterShared;
use crate::core::router::LocalRouter;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::warn;

/// The cluster-wide membership of shared subscription groups.
pub(crate) struct Shares {
    /// `$share/...` filter → nodes with members, sorted.
    members: RwLock<HashMap<String, Vec<String>>>,
    /// Shared filters whose local membership changed, for the publishing task.
    changed: mpsc::UnboundedSender<String>,
    node: String,
}

impl Shares {
    /// Membership for `node`; the receiver is the publishing task's input.
    pub fn new(node: String) -> (Shares, mpsc::UnboundedReceiver<String>) {
        let (changed, rx) = mpsc::unbounded_channel();
        (
            Shares {
                members: RwLock::new(HashMap::new()),
                changed,
                node,
            },
            rx,
        )
    }

    /// This node's membership of `filter` changed.
    pub fn local_change(&self, filter: &str) {
        let _ = self.changed.send(filter.to_owned());
    }

    /// Whether this node serves the group `filter` for the message `id`.
    pub fn serves(&self, filter: &str, id: u64, alive: &dyn Fn(&str) -> bool) -> bool {
        let members = self.members.read();
        let Some(nodes) = members.get(filter) else {
            return true;
        };
        let live: Vec<&String> = nodes
            .iter()
            .filter(|n| **n == self.node || alive(n))
            .collect();
        if !live.iter().any(|n| **n == self.node) {
            return true;
        }
        // A multiplicative hash spreads consecutive ids over the nodes.
        let pick = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % live.len();
        *live[pick] == self.node
    }

    /// Applies one entry of the bucket.
    fn apply(&self, filter: String, node: String, members: u64) {
        let mut all = self.members.write();
        let nodes = all.entry(filter.clone()).or_default();
        nodes.retain(|n| *n != node);
        if members > 0 {
            nodes.push(node);
            nodes.sort();
        }
        if nodes.is_empty() {
            all.remove(&filter);
        }
    }
}

/// The key of `filter` on `node`.
fn key(filter: &str, node: &str) -> String {
    format!("{}.{}", client_key(filter), client_key(node))
}

/// Publishes this node's member counts as they change.
pub(crate) async fn publish_changes(
    mut rx: mpsc::UnboundedReceiver<String>,
    bucket: kv::Store,
    local: Arc<LocalRouter>,
    node: String,
) {
    while let Some(filter) = rx.recv().await {
        let n = local.shared_members(&filter);
        let k = key(&filter, &node);
        let done = if n > 0 {
            bucket
                .put(&k, Bytes::from(n.to_string()))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            bucket.purge(&k).await.map_err(|e| e.to_string())
        };
        if let Err(e) = done {
            warn!(filter, error = %e, "cluster: shared subscription membership not published; other nodes may also deliver this group's messages");
        }
    }
}

/// Mirrors the bucket into `shared.shares`; this node's own entries that its sessions no
/// longer back (a previous run's) are corrected.
pub(crate) async fn watch(bucket: kv::Store, shared: Arc<ClusterShared>, local: Arc<LocalRouter>) {
    let mut watch = match bucket.watch_with_history(">").await {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cluster: cannot watch shared subscription membership; each node serves its own members");
            return;
        }
    };
    while let Some(entry) = watch.next().await {
        let Ok(entry) = entry else { continue };
        let Some((f, n)) = entry.key.split_once('.') else {
            continue;
        };
        let (Ok(filter), Ok(node)) = (topic_from_tokens(f), topic_from_tokens(n)) else {
            continue;
        };
        let members = match entry.operation {
            kv::Operation::Put => std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            _ => 0,
        };
        if node == shared.node && members as usize != local.shared_members(&filter) {
            shared.shares.local_change(&filter);
        }
        shared.shares.apply(filter, node, members);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_goes_to_one_node_and_the_nodes_take_turns() {
        let views: Vec<Shares> = ["a", "b", "c"]
            .iter()
            .map(|n| Shares::new(n.to_string()).0)
            .collect();
        for v in &views {
            for n in ["a", "b", "c"] {
                v.apply("$share/g/t".into(), n.into(), 1);
            }
        }
        let mut per_node = [0; 3];
        for id in 0..3000u64 {
            let serving: Vec<usize> = (0..3)
                .filter(|i| views[*i].serves("$share/g/t", id, &|_| true))
                .collect();
            assert_eq!(serving.len(), 1, "message {id}: {serving:?}");
            per_node[serving[0]] += 1;
        }
        assert!(per_node.iter().all(|n| *n > 800), "{per_node:?}");
    }

    #[test]
    fn a_node_without_heartbeat_is_skipped_and_an_unknown_group_is_served_here() {
        let (v, _) = Shares::new("a".into());
        v.apply("$share/g/t".into(), "a".into(), 1);
        v.apply("$share/g/t".into(), "b".into(), 2);
        for id in 0..100 {
            assert!(v.serves("$share/g/t", id, &|n| n != "b"));
        }
        assert!(v.serves("$share/other/t", 7, &|_| true));
        v.apply("$share/g/t".into(), "a".into(), 0);
        // Not in the view (yet): serve anyway rather than lose the message.
        assert!(v.serves("$share/g/t", 1, &|_| true));
    }
}
