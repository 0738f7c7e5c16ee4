//! Sessions in a cluster: one owner node per client id, and persistent sessions' state in
//! JetStream so that another node can resume them.
//!
//! - Bucket `<prefix>-owners`: key = client id (escaped, see [`super::subject`]), value =
//!   the owning node's name. A node claims a client id with compare-and-set on the key's
//!   revision; the revision fences the previous owner, which watches the bucket, closes its
//!   connection for that client (taken over, [MQTT-3.1.4-2]), lets its journal reach
//!   JetStream, forgets the session and writes the hand-over marker.
//! - Bucket `<prefix>-session-state`: the journal of persistent sessions, the same
//!   operations the file store keeps ([`StorageOp`]): `<id>.r` the record (subscriptions,
//!   expiry, delayed will), `<id>.m.<seq>` each queued or in-flight message, `<id>.i.<pid>`
//!   each inbound QoS 2 id awaiting PUBREL, `<id>.h` the hand-over marker (the owner
//!   revision the old owner handed over to). [`JetStreamSessions`] is the node's
//!   [`Storage`]: sessions go through the ordinary storage writer.
//!
//! A node loads a session only when its client connects to it ([`ClusterDirectory::claim`]);
//! nothing is loaded at start.

use super::subject::{client_key, topic_from_tokens};
use super::ClusterShared;
use crate::core::directory::{ClaimMode, DirectoryFuture, SessionDirectory};
use crate::core::router::LocalRouter;
use crate::core::Core;
use crate::protocol::LastWill;
use crate::storage::codec::{
    decode_message, decode_session, decode_stored, encode_message, encode_session,
};
use crate::storage::{Recovered, RecoveredSession, Storage, StorageError, StorageOp};
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a new owner waits for the previous one to hand a session over before it
/// resumes what JetStream holds (the previous node may be gone).
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// The persistent sessions' journal in JetStream (see the module documentation). Retained
/// messages are not its business: the retained bucket holds them.
pub struct JetStreamSessions {
    js: jetstream::Context,
    bucket: String,
    stream: String,
    runtime: tokio::runtime::Handle,
}

impl JetStreamSessions {
    /// The journal in `bucket`, written from the storage writer's thread through `runtime`.
    pub fn new(js: jetstream::Context, bucket: String, runtime: tokio::runtime::Handle) -> Self {
        JetStreamSessions {
            stream: format!("KV_{bucket}"),
            js,
            bucket,
            runtime,
        }
    }

    /// The subject of one key.
    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket)
    }
}

/// A purge marker's headers: the key's earlier values are rolled up (removed).
fn purge_headers() -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("KV-Operation", "PURGE");
    h.insert("Nats-Rollup", "sub");
    h
}

impl Storage for JetStreamSessions {
    fn apply(&self, ops: &[StorageOp], _durable: bool) -> Result<(), StorageError> {
        let io = |e: &dyn std::fmt::Display| StorageError::Io(format!("JetStream: {e}"));
        self.runtime.block_on(async {
            // Sent in order, acknowledgements awaited after: one round trip per batch.
            let mut acks = Vec::with_capacity(ops.len());
            // A session's stream mark is written once per batch: the last one counts.
            let mut marks: Vec<(Arc<str>, u64)> = Vec::new();
            // The stream position of each message put in this batch (see `PutMessage`).
            let mut positions: Vec<(String, u64)> = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                let sent = match op {
                    StorageOp::PutRetained(_) | StorageOp::DeleteRetained(_) => continue,
                    StorageOp::StreamMark { client_id, seq } => {
                        match marks.iter_mut().find(|(c, _)| c == client_id) {
                            Some(m) => m.1 = m.1.max(*seq),
                            None => marks.push((client_id.clone(), *seq)),
                        }
                        continue;
                    }
                    StorageOp::PutSession { client_id, record } => {
                        let key = format!("{}.r", client_key(client_id));
                        let body = Bytes::from(encode_session(record));
                        self.js.publish(self.subject(&key), body).await
                    }
                    StorageOp::DeleteSession(client_id) => {
                        marks.retain(|(c, _)| c != client_id);
                        // Everything of the client at once; earlier sends are stored first
                        // (one connection, in order).
                        for a in acks.drain(..) {
                            let a: jetstream::context::PublishAckFuture = a;
                            a.await.map_err(|e| io(&e))?;
                        }
                        let filter = self.subject(&format!("{}.>", client_key(client_id)));
                        let stream = self
                            .js
                            .get_stream_no_info(&self.stream)
                            .await
                            .map_err(|e| io(&e))?;
                        stream.purge().filter(filter).await.map_err(|e| io(&e))?;
                        continue;
                    }
                    StorageOp::PutMessage { client_id, stored } => {
                        let key = format!("{}.m.{}", client_key(client_id), stored.seq);
                        // The stream position the copy was routed from (the mark journaled
                        // right after it, or an earlier put of the same message in this
                        // batch) goes with it: the marks are written at the end of the
                        // batch, and a node killed before that must not leave messages
                        // stored that a resume replays again (QoS 2 exactly once).
                        let position = match ops.get(i + 1) {
                            Some(StorageOp::StreamMark { client_id: c, seq }) if c == client_id => {
                                Some(*seq)
                            }
                            _ => positions.iter().find(|(k, _)| *k == key).map(|(_, p)| *p),
                        };
                        if let Some(p) = position {
                            positions.push((key.clone(), p));
                        }
                        let body = encode_positioned(
                            position,
                            &encode_message(&stored.message, stored.pid, stored.state),
                        );
                        self.js.publish(self.subject(&key), body).await
                    }
                    StorageOp::DeleteMessage { client_id, seq } => {
                        let key = format!("{}.m.{seq}", client_key(client_id));
                        self.js
                            .publish_with_headers(self.subject(&key), purge_headers(), Bytes::new())
                            .await
                    }
                    StorageOp::PutInbound { client_id, pid } => {
                        let key = format!("{}.i.{pid}", client_key(client_id));
                        self.js.publish(self.subject(&key), Bytes::new()).await
                    }
                    StorageOp::DeleteInbound { client_id, pid } => {
                        let key = format!("{}.i.{pid}", client_key(client_id));
                        self.js
                            .publish_with_headers(self.subject(&key), purge_headers(), Bytes::new())
                            .await
                    }
                };
                acks.push(sent.map_err(|e| io(&e))?);
            }
            for (client_id, seq) in marks {
                let key = format!("{}.w", client_key(&client_id));
                let sent = self
                    .js
                    .publish(self.subject(&key), Bytes::from(seq.to_string()))
                    .await;
                acks.push(sent.map_err(|e| io(&e))?);
            }
            for a in acks {
                a.await.map_err(|e| io(&e))?;
            }
            Ok(())
        })
    }

    fn sync(&self) -> Result<(), StorageError> {
        // Every batch is stored (and replicated) by JetStream before `apply` returns.
        Ok(())
    }

    fn load(&self) -> Result<Recovered, StorageError> {
        // A cluster node loads a session when its client connects ([`ClusterDirectory`]).
        Ok(Recovered::default())
    }
}

/// One session's stored state, or `None` when nothing is stored.
async fn load_session(
    state: &kv::Store,
    client_id: &str,
) -> Result<Option<RecoveredSession>, String> {
    let ck = client_key(client_id);
    let Some(record) = state
        .get(format!("{ck}.r"))
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let record = decode_session(&record).map_err(|e| e.to_string())?;
    let mut session = RecoveredSession {
        client_id: Arc::from(client_id),
        record,
        messages: Vec::new(),
        inbound: Vec::new(),
        stream_mark: 0,
    };
    let mut watch = state
        .watch_with_history(format!("{ck}.>"))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The highest stream position among the stored messages: the session has seen the
    // stream at least that far, even if its mark was not written.
    let mut positions = 0u64;
    loop {
        let next = tokio::time::timeout_at(deadline, watch.next())
            .await
            .map_err(|_| "timed out reading the session from JetStream".to_string())?;
        let Some(entry) = next else { break };
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.operation == kv::Operation::Put {
            let rest = &entry.key[ck.len() + 1..];
            if let Some(seq) = rest.strip_prefix("m.") {
                if let Ok(seq) = seq.parse() {
                    let (position, body) = decode_positioned(&entry.value);
                    let m = decode_stored(seq, body).map_err(|e| e.to_string())?;
                    session.messages.push(m);
                    positions = positions.max(position.unwrap_or(0));
                }
            } else if let Some(pid) = rest.strip_prefix("i.") {
                if let Ok(pid) = pid.parse() {
                    session.inbound.push(pid);
                }
            } else if rest == "w" {
                session.stream_mark = parse_u64(&entry.value);
            }
        }
        if entry.delta == 0 {
            break;
        }
    }
    session.stream_mark = session.stream_mark.max(positions);
    Ok(Some(session))
}

/// Marks a stored message body that carries its stream position (the codec's own versions
/// are small numbers, so the byte is unambiguous).
const POSITIONED: u8 = 0xFE;

/// A stored message body with its stream position in front, when it has one.
fn encode_positioned(position: Option<u64>, message: &[u8]) -> Bytes {
    let Some(p) = position else {
        return Bytes::copy_from_slice(message);
    };
    let mut out = Vec::with_capacity(9 + message.len());
    out.push(POSITIONED);
    out.extend_from_slice(&p.to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// The stream position and the message body of a stored value.
fn decode_positioned(value: &[u8]) -> (Option<u64>, &[u8]) {
    match value {
        [POSITIONED, rest @ ..] if rest.len() >= 8 => {
            let (p, body) = rest.split_at(8);
            let p = u64::from_be_bytes(p.try_into().unwrap_or([0; 8]));
            (Some(p), body)
        }
        _ => (None, value),
    }
}

/// What the node needs once it runs: its core, its own router and the message stream.
struct Running {
    core: Weak<Core>,
    local: Arc<LocalRouter>,
    stream: stream::Stream,
}

/// The cluster's [`SessionDirectory`], the watcher of claims by other nodes, and the
/// node's heartbeat with its stream checkpoint.
pub(crate) struct ClusterDirectory {
    owners: kv::Store,
    state: kv::Store,
    /// Heartbeats and checkpoints of nodes: key = node (escaped), value = `<position>
    /// <unix ms>`: every message of the stream up to `position` has been journaled by that
    /// node's sessions.
    nodes: kv::Store,
    /// Wills of clients connected anywhere: key = client id (escaped), value = the node,
    /// the user name and the will as a message (see [`encode_will`]).
    wills: kv::Store,
    node: String,
    /// Client ids (escaped) this node owns, as far as it knows.
    owned: Mutex<HashSet<String>>,
    /// This node's checkpoint from before it started (its sessions of a previous run
    /// resume from there).
    previous_checkpoint: Mutex<u64>,
    running: std::sync::OnceLock<Running>,
    shared: Arc<ClusterShared>,
}

/// A node whose heartbeat is older than this is taken for dead: its sessions are resumed
/// without waiting for a hand-over.
pub(crate) const NODE_DEAD_AFTER: Duration = Duration::from_secs(3);

/// Period of the heartbeat and checkpoint.
const HEARTBEAT: Duration = Duration::from_millis(500);

impl ClusterDirectory {
    /// A directory over the owners, session-state and nodes buckets.
    pub fn new(
        owners: kv::Store,
        state: kv::Store,
        nodes: kv::Store,
        wills: kv::Store,
        shared: Arc<ClusterShared>,
    ) -> Self {
        ClusterDirectory {
            owners,
            state,
            nodes,
            wills,
            node: shared.node.clone(),
            owned: Mutex::new(HashSet::new()),
            previous_checkpoint: Mutex::new(0),
            running: std::sync::OnceLock::new(),
            shared,
        }
    }

    /// Starts the claim watcher and the heartbeat, once the node's core exists.
    pub async fn start(
        self: Arc<Self>,
        core: Weak<Core>,
        local: Arc<LocalRouter>,
        stream: stream::Stream,
    ) {
        if let Ok(Some((pos, _))) = self.node_state(&self.node).await {
            *self.previous_checkpoint.lock() = pos;
        }
        let _ = self.running.set(Running {
            core: core.clone(),
            local,
            stream,
        });
        // Alive from now on for the other nodes; the previous run's clients' wills are due
        // (their connections ended when it stopped).
        self.write_heartbeat(self.shared.position_now.load(Ordering::Acquire))
            .await;
        if let Some(c) = core.upgrade() {
            let n = self.publish_wills_of(&c, &self.node).await;
            if n > 0 {
                info!(
                    wills = n,
                    "cluster: published the wills of the clients of this node's previous run"
                );
            }
        }
        tokio::spawn(self.clone().watch_claims(core.clone()));
        tokio::spawn(self.clone().watch_dead_nodes(core.clone()));
        tokio::spawn(self.heartbeat(core));
    }

    /// Notes that this node owns `ck`.
    fn own(&self, ck: &str) {
        let mut owned = self.owned.lock();
        owned.insert(ck.to_owned());
        self.shared
            .owned_sessions
            .store(owned.len() as u64, Ordering::Relaxed);
    }

    /// Notes that this node no longer owns `ck`; returns whether it did.
    fn disown(&self, ck: &str) -> bool {
        let mut owned = self.owned.lock();
        let had = owned.remove(ck);
        self.shared
            .owned_sessions
            .store(owned.len() as u64, Ordering::Relaxed);
        had
    }

    /// A node's last checkpoint and heartbeat age.
    async fn node_state(&self, node: &str) -> Result<Option<(u64, Duration)>, String> {
        let v = self
            .nodes
            .get(client_key(node))
            .await
            .map_err(|e| e.to_string())?;
        Ok(v.map(|v| {
            let text = String::from_utf8_lossy(&v);
            let mut parts = text.split_whitespace();
            let pos = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let at: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let age = Duration::from_millis(now_ms().saturating_sub(at));
            (pos, age)
        }))
    }

    /// Every [`HEARTBEAT`]: once everything routed up to the current stream position is
    /// journaled, writes that position and the time.
    async fn heartbeat(self: Arc<Self>, core: Weak<Core>) {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let Some(core) = core.upgrade() else { return };
            // Read before the flush: everything routed up to it is in the flushed journal.
            let pos = self.shared.position_now.load(Ordering::Acquire);
            if let Some(storage) = &core.storage {
                storage.wait_durable(storage.submit(Vec::new())).await;
            }
            drop(core);
            self.write_heartbeat(pos).await;
        }
    }

    /// Writes this node's checkpoint `pos` and the time.
    async fn write_heartbeat(&self, pos: u64) {
        let value = Bytes::from(format!("{pos} {}", now_ms()));
        match self.nodes.put(client_key(&self.node), value).await {
            Ok(_) => self.shared.set_jetstream(true),
            Err(e) => {
                warn!(error = %e, "cluster: heartbeat not written");
                self.shared.set_jetstream(false);
            }
        }
    }

    /// Every [`HEARTBEAT`]: finds nodes whose heartbeat stopped and publishes the wills of
    /// their clients, each once across the cluster (whoever deletes the will's key with
    /// its revision publishes it).
    async fn watch_dead_nodes(self: Arc<Self>, core: Weak<Core>) {
        let mut watch = match self.nodes.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cluster: cannot watch node heartbeats; wills of stopped nodes will not be published");
                return;
            }
        };
        let shared = self.shared.clone();
        let me = self.node.clone();
        tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                let Ok(node) = topic_from_tokens(&entry.key) else {
                    continue;
                };
                let at = String::from_utf8_lossy(&entry.value)
                    .split_whitespace()
                    .nth(1)
                    .and_then(|a| a.parse::<u64>().ok())
                    .unwrap_or(0);
                if node != me {
                    shared.heartbeats.lock().insert(node, at);
                }
            }
        });
        let mut handled: HashSet<(String, u64)> = HashSet::new();
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let now = now_ms();
            let dead: Vec<String> = self
                .shared
                .heartbeats
                .lock()
                .iter()
                .filter(|(_, at)| Duration::from_millis(now.saturating_sub(**at)) > NODE_DEAD_AFTER)
                .filter(|(node, at)| handled.insert(((*node).clone(), **at)))
                .map(|(node, _)| node.clone())
                .collect();
            if dead.is_empty() {
                continue;
            }
            let Some(core) = core.upgrade() else { return };
            for node in dead {
                let n = self.publish_wills_of(&core, &node).await;
                info!(node, wills = n, "cluster: a node stopped sending heartbeats; published the wills of its clients");
            }
        }
    }

    /// Publishes the wills `node` recorded; returns how many this node published.
    async fn publish_wills_of(&self, core: &Core, node: &str) -> usize {
        let mut watch = match self.wills.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, node, "cluster: cannot read the wills of a stopped node");
                return 0;
            }
        };
        let mut published = 0;
        loop {
            // The bucket's current entries arrive at once; silence means the end of them.
            let next = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
            let Ok(Some(Ok(entry))) = next else { break };
            let last = entry.delta == 0;
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let Some((owner, username, will)) = decode_will(&entry.value) else {
                continue;
            };
            if owner != node {
                continue;
            }
            // Only the node that removes the key publishes.
            if let Err(e) = self
                .wills
                .delete_expect_revision(&entry.key, Some(entry.revision))
                .await
            {
                tracing::debug!(error = %e, key = %entry.key, "cluster: another node publishes this will");
                continue;
            }
            let Ok(client_id) = topic_from_tokens(&entry.key) else {
                continue;
            };
            let client = crate::hooks::ClientInfo {
                client_id: Arc::from(client_id.as_str()),
                username,
                peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                transport: crate::model::TransportKind::Tcp,
                tls_identity: None,
                protocol: crate::protocol::ProtocolLevel::V311,
                clean_session: true,
            };
            crate::core::engine::publish_will(core, &client, &will);
            self.shared
                .stats
                .wills_of_dead_nodes
                .fetch_add(1, Ordering::Relaxed);
            published += 1;
            if last {
                break;
            }
        }
        published
    }

    /// Takes ownership of `ck` by compare-and-set; returns the new revision and the
    /// previous owner.
    async fn take_ownership(&self, ck: &str) -> Result<(u64, Option<String>), String> {
        let value = Bytes::from(self.node.clone());
        let mut last = String::new();
        for _ in 0..10 {
            let current = self.owners.entry(ck).await.map_err(|e| e.to_string())?;
            let attempt = match current {
                Some(e) if e.operation == kv::Operation::Put => {
                    let previous = String::from_utf8_lossy(&e.value).into_owned();
                    self.owners
                        .update(ck, value.clone(), e.revision)
                        .await
                        .map(|rev| (rev, Some(previous)))
                        .map_err(|e| e.to_string())
                }
                _ => self
                    .owners
                    .create(ck, value.clone())
                    .await
                    .map(|rev| (rev, None))
                    .map_err(|e| e.to_string()),
            };
            match attempt {
                Ok(r) => return Ok(r),
                // Another node claimed it meanwhile: read again.
                Err(e) => last = e,
            }
        }
        Err(format!("could not claim the client id: {last}"))
    }

    /// The stream position up to which the previous owner journaled the session: from its
    /// hand-over marker for `revision`, or (it is dead, or did not answer within
    /// [`HANDOVER_WAIT`]) from its last checkpoint.
    async fn await_handover(&self, ck: &str, previous: &str, revision: u64) -> u64 {
        let started = Instant::now();
        let key = format!("{ck}.h");
        let checkpoint = self.node_state(previous).await.ok().flatten();
        let dead = checkpoint.is_none_or(|(_, age)| age > NODE_DEAD_AFTER);
        while !dead && started.elapsed() < HANDOVER_WAIT {
            if let Ok(Some(v)) = self.state.get(&key).await {
                let text = String::from_utf8_lossy(&v);
                let mut parts = text.split_whitespace();
                let handed: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                if handed >= revision {
                    return parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pos = checkpoint.map_or(0, |(p, _)| p);
        warn!(
            previous_owner = previous,
            dead,
            checkpoint = pos,
            "cluster: the previous node did not hand the session over (down?); resuming what JetStream holds and replaying the stream from its checkpoint"
        );
        pos
    }

    /// Deletes everything stored for `ck`.
    async fn discard(&self, ck: &str) -> Result<(), String> {
        self.state
            .stream
            .purge()
            .filter(format!("$KV.{}.{ck}.>", self.state.name))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Watches the owners bucket: when another node claims a client id this node owns,
    /// hands the session over (see the module documentation).
    async fn watch_claims(self: Arc<Self>, core: Weak<Core>) {
        let mut watch = match self.owners.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cluster: cannot watch session owners; takeovers by other nodes will not close connections here");
                return;
            }
        };
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { continue };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let owner = String::from_utf8_lossy(&entry.value).into_owned();
            if owner == self.node {
                self.own(&entry.key);
                continue;
            }
            if !self.disown(&entry.key) {
                continue;
            }
            let Some(core) = core.upgrade() else { return };
            let this = self.clone();
            tokio::spawn(async move {
                this.hand_over(&core, &entry.key, &owner, entry.revision)
                    .await
            });
        }
    }

    /// Gives the session of `ck` to `new_owner`: closes its connection here, forgets it
    /// at an exact stream position, lets the journal reach JetStream, writes the marker
    /// (`<revision> <position>`).
    async fn hand_over(&self, core: &Core, ck: &str, new_owner: &str, revision: u64) {
        let Ok(client_id) = topic_from_tokens(ck) else {
            return;
        };
        core.registry.close_for_hand_over(&client_id).await;
        let (had, pos) = {
            let pos = self.shared.position.lock().await;
            (core.registry.forget(&client_id), *pos)
        };
        // A session of this node's previous run, never resumed here: its journal covers
        // the stream up to that run's last checkpoint.
        let pos = if had {
            pos
        } else {
            *self.previous_checkpoint.lock()
        };
        if let Some(storage) = &core.storage {
            storage.wait_durable(storage.submit(Vec::new())).await;
        }
        let marker = Bytes::from(format!("{revision} {pos}"));
        if let Err(e) = self.state.put(format!("{ck}.h"), marker).await {
            warn!(client_id, error = %e, "cluster: cannot write the hand-over marker; the new owner waits for it");
        }
        if had {
            self.shared
                .stats
                .sessions_handed_over
                .fetch_add(1, Ordering::Relaxed);
            info!(
                client_id,
                new_owner,
                position = pos,
                "cluster: session handed over to another node"
            );
        }
    }

    /// Loads `client_id`'s stored session into this node and catches it up on the stream
    /// after `from`, then lets it receive live: the stream receiver waits meanwhile, so the
    /// session misses nothing and gets nothing twice.
    async fn resume(&self, client_id: &str, from: u64) -> Result<(), String> {
        let Some(mut stored) = load_session(&self.state, client_id).await? else {
            return Ok(());
        };
        let running = self
            .running
            .get()
            .ok_or_else(|| "the cluster link is not running yet".to_string())?;
        let core = running
            .core
            .upgrade()
            .ok_or_else(|| "the broker is stopping".to_string())?;
        let from = from.max(stored.stream_mark);
        stored.stream_mark = from;
        let queued = stored.messages.len();
        // This node's receiver must have reached `from`, or it would deliver again what
        // the session already has.
        let deadline = Instant::now() + HANDOVER_WAIT;
        let pos = loop {
            let pos = self.shared.position.lock().await;
            if *pos >= from || Instant::now() > deadline {
                break pos;
            }
            drop(pos);
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let upto = *pos;
        core.registry.recover(Recovered {
            retained: Vec::new(),
            sessions: vec![stored],
        });
        let mut replayed = 0;
        if from > 0 && from < upto {
            if let Some(entry) = core.registry.get(client_id) {
                replayed = replay(
                    &running.stream,
                    &self.shared,
                    &running.local,
                    &entry,
                    from,
                    upto,
                )
                .await?;
            }
        }
        drop(pos);
        info!(
            client_id,
            queued, replayed, from, upto, "cluster: resumed the session the cluster stored"
        );
        Ok(())
    }
}

/// Delivers to `entry` what the stream holds after `from` up to `upto`.
async fn replay(
    stream: &stream::Stream,
    shared: &ClusterShared,
    local: &LocalRouter,
    entry: &Arc<crate::core::registry::SessionEntry>,
    from: u64,
    upto: u64,
) -> Result<usize, String> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", shared.names.stored),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut delivered = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| "timed out replaying the message stream".to_string())?;
        let Some(m) = next else { break };
        let m = m.map_err(|e| e.to_string())?;
        let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
        if seq > upto {
            break;
        }
        if let Some(msg) = super::decode(&m.payload) {
            delivered += local.deliver_to(entry, msg, seq);
        }
        if seq == upto {
            break;
        }
    }
    Ok(delivered)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A will as the wills bucket keeps it: `[u16 node length][node][u16 user length][user]`,
/// then the storage codec's message (topic, QoS, retain, properties, payload).
fn encode_will(node: &str, username: Option<&str>, will: &LastWill) -> Bytes {
    let mut message =
        crate::model::Message::new(&will.topic, will.payload.clone(), will.qos, will.retain);
    if let Some(p) = &will.properties {
        message.props = Some(Arc::new(crate::model::MessageProps {
            properties: Some(Arc::new((**p).clone())),
            ..Default::default()
        }));
    }
    let user = username.unwrap_or("");
    let mut out = Vec::with_capacity(8 + node.len() + user.len() + will.payload.len());
    for s in [node, user] {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&encode_message(&message, None, None));
    Bytes::from(out)
}

/// The node, user name and will of [`encode_will`].
fn decode_will(b: &[u8]) -> Option<(String, Option<String>, LastWill)> {
    let mut rest = b;
    let mut take = || {
        let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
        let s = std::str::from_utf8(rest.get(2..2 + len)?).ok()?.to_owned();
        rest = &rest[2 + len..];
        Some(s)
    };
    let node = take()?;
    let user = take()?;
    let (m, _, _) = decode_message("wills", rest).ok()?;
    let properties = m
        .props
        .as_ref()
        .and_then(|p| p.properties.as_deref().cloned())
        .map(Box::new);
    Some((
        node,
        (!user.is_empty()).then_some(user),
        LastWill {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            properties,
        },
    ))
}

impl SessionDirectory for ClusterDirectory {
    fn will_armed<'a>(
        &'a self,
        client: &'a crate::hooks::ClientInfo,
        will: Option<&'a LastWill>,
    ) -> DirectoryFuture<'a, Option<u64>> {
        Box::pin(async move {
            let key = client_key(&client.client_id);
            match will {
                Some(w) => {
                    let value = encode_will(&self.node, client.username.as_deref(), w);
                    match self.wills.put(&key, value).await {
                        Ok(rev) => Some(rev),
                        Err(e) => {
                            warn!(error = %e, "cluster: will not recorded; it is published only if this node sees the connection end");
                            None
                        }
                    }
                }
                // A will recorded by an earlier connection stays: that connection ended
                // without DISCONNECT when its node died, so its will is due.
                None => None,
            }
        })
    }

    fn will_done(&self, client_id: &str, token: u64) {
        let wills = self.wills.clone();
        let key = client_key(client_id);
        tokio::spawn(async move {
            // Only if it is still this connection's will.
            let _ = wills.delete_expect_revision(&key, Some(token)).await;
        });
    }

    fn claim<'a>(
        &'a self,
        client_id: &'a str,
        mode: ClaimMode,
    ) -> DirectoryFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let ck = client_key(client_id);
            let (revision, previous) = self.take_ownership(&ck).await?;
            self.own(&ck);
            let from = match previous.as_deref() {
                Some(prev) if prev != self.node => self.await_handover(&ck, prev, revision).await,
                // This node held it in a previous run.
                Some(_) => *self.previous_checkpoint.lock(),
                None => 0,
            };
            match mode {
                ClaimMode::Keep => Ok(()),
                ClaimMode::Discard => self.discard(&ck).await,
                ClaimMode::Load => self.resume(client_id, from).await,
            }
        })
    }
}

/// Creates (or opens) a key-value bucket's stream as the key-value convention (ADR-8) has
/// it: the client's `create_key_value` first reads account limits in a form Debian's
/// nats-server 2.9 does not send.
pub(crate) async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.get_key_value(bucket).await.map_err(|e| e.to_string())
}

/// A number written as text (0 when it is not one).
fn parse_u64(b: &[u8]) -> u64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{decode_positioned, encode_positioned};

    #[test]
    fn a_stored_message_keeps_its_stream_position_and_old_values_still_decode() {
        let body = crate::storage::codec::encode_message(
            &crate::model::Message {
                topic: "a/b".into(),
                payload: bytes::Bytes::from_static(b"x"),
                qos: crate::protocol::QoS::ExactlyOnce,
                retain: false,
                enqueued_at: None,
                props: None,
            },
            Some(7),
            None,
        );
        let stored = encode_positioned(Some(720), &body);
        assert_eq!(decode_positioned(&stored), (Some(720), &body[..]));
        // A value written without a position (or by an earlier version) is the message.
        let plain = encode_positioned(None, &body);
        assert_eq!(decode_positioned(&plain), (None, &body[..]));
        let decoded =
            crate::storage::codec::decode_stored(3, decode_positioned(&stored).1).expect("decodes");
        assert_eq!(decoded.pid, Some(7));
    }
}
