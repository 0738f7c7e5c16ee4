//! Wires the layers together: the shared broker state (runtime config, session registry,
//! subscription trie, retained store, counters), the routing of one message to its
//! subscribers, and the public `Broker::start` / `BrokerHandle` API for embedding.

use crate::config::StorageType;
use crate::config::{Config, ListenerConfig, TransportKind};
use crate::hooks::{AclAction, AclCache, AclRequest, ClientInfo, SecurityChain};
use crate::metrics::ops::LimitKind;
use crate::metrics::{
    ByteStats, ConnectionStats, Counters, InflightStats, MessageStats, SessionStats, StatsSnapshot,
    SubscriptionStats,
};
use crate::protocol::QoS;
use crate::routing::{Message, RetainOutcome, RetainedStore, SubscriptionTrie};
use crate::session::state::OutboundState;
use crate::session::{DropReason, Session, SessionLimits};
use crate::storage::{FileStorage, Recovered, SessionRecord, Storage, StorageHandle, StorageOp};
use crate::transport;
use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Why the broker could not start.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A certificate or key file could not be loaded.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// A password or ACL file could not be loaded.
    #[error(transparent)]
    Security(#[from] crate::auth::SecurityConfigError),
    /// The store could not be opened or loaded.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A setting that cannot change while the broker runs was changed.
    #[error("`{0}` cannot change while the broker runs; restart to apply it (reload refused, nothing changed)")]
    NotReloadable(&'static str),
    /// A reload step failed unexpectedly.
    #[error("reload failed: {0}")]
    Reload(String),
    /// A Wasm plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] crate::plugins::PluginError),
    /// A listener could not be bound.
    #[error("cannot bind listener {name} on {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address that failed.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Everything derived from the configuration, swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// The validated configuration.
    pub config: Config,
    /// Increases with every successful (re)load.
    pub generation: u64,
    /// Authentication, authorization and transform hooks in call order.
    pub security: SecurityChain,
    /// TLS server configs of the TLS and WSS listeners, by listener name.
    pub tls: HashMap<String, Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Listener settings by name, read at each accept.
    pub listeners: HashMap<String, Arc<ListenerConfig>>,
    /// Bearer token of the admin API, from `admin.token_file`.
    pub admin_token: Option<crate::admin::Token>,
    /// The Wasm plugins of this generation (also in `security`), for stats.
    pub plugins: crate::plugins::PluginSet,
    /// What a client's authentication depends on (settings, password file content), so
    /// that a reload that changes none of it does not re-authenticate every client; `None`
    /// when a plugin authenticates (its answer may change with its file): always re-check.
    pub auth_fingerprint: Option<u64>,
}

/// See [`Runtime::auth_fingerprint`].
fn auth_fingerprint(config: &Config, plugins: &crate::plugins::PluginSet) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    if plugins.plugins().iter().any(|p| p.is_authenticator()) {
        return None;
    }
    let s = &config.security;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!(
        "{:?}",
        (
            s.require_auth,
            s.allow_anonymous,
            &s.password_file,
            &s.users
        )
    )
    .hash(&mut h);
    if let Some(path) = &s.password_file {
        // Already read successfully by the chain; unreadable now means "changed".
        std::fs::read(path).ok().hash(&mut h);
    }
    Some(h.finish())
}

/// Builds the complete runtime state from a config: reads password and ACL files and loads
/// plugins. Pure with respect to the running broker, so a failure changes nothing.
pub(crate) fn build_runtime(config: Config, generation: u64) -> Result<Runtime, BrokerError> {
    config.validate(std::path::Path::new("<config>"))?;
    let admin_token = crate::admin::load_token(&config.admin)?;
    let mut security = crate::auth::build_security_chain(&config.security)?;
    // Plugins come after the built-in checks, in list order.
    let plugins = crate::plugins::PluginSet::load_configured(&config.plugins)?;
    plugins.append_to(&mut security);
    let effective = config.effective_listeners();
    let tls = transport::tls_configs(&effective)?;
    let listeners = effective
        .into_iter()
        .map(|l| (l.display_name(), Arc::new(l)))
        .collect();
    let auth_fingerprint = auth_fingerprint(&config, &plugins);
    Ok(Runtime {
        auth_fingerprint,
        config,
        generation,
        security,
        tls,
        listeners,
        admin_token,
        plugins,
    })
}

impl Runtime {
    /// Per-session limits from `performance:`.
    pub fn session_limits(&self) -> SessionLimits {
        let p = &self.config.performance;
        SessionLimits {
            inflight_window: p.inflight_window_size,
            queue_limit: p.message_queue_limit,
            queue_qos0_offline: p.queue_qos0_offline,
            queue_bytes_limit: self.config.limits.max_queued_bytes,
        }
    }
}

/// The connection currently attached to a session.
#[derive(Debug)]
pub(crate) struct Owner {
    pub conn_id: u64,
    pub cancel: CancellationToken,
    pub done: watch::Receiver<bool>,
}

/// A session in the registry, shared between its connection and the routers that feed it.
#[derive(Debug)]
pub struct SessionEntry {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// The sans-IO session state.
    pub(crate) state: Mutex<Session>,
    /// Wakes the attached connection when messages were queued.
    pub(crate) wake: Notify,
    /// The client as last connected, for delivery-time ACL checks.
    pub(crate) client: Mutex<Arc<ClientInfo>>,
    /// Delivery decisions for that client (forgotten when it connects again).
    pub(crate) acl_cache: Mutex<AclCache>,
    /// When the last connection ended (for `persistence.session_expiry`); `None` while online.
    pub(crate) offline_since: Mutex<Option<std::time::SystemTime>>,
    pub(crate) owner: Mutex<Option<Owner>>,
}

/// One subscription as stored in the trie.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    pub qos: QoS,
    pub session: Arc<SessionEntry>,
}

/// State shared by every task of one broker.
pub(crate) struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub sessions: Mutex<HashMap<Arc<str>, Arc<SessionEntry>>>,
    pub subscriptions: RwLock<SubscriptionTrie<Arc<str>, Subscriber>>,
    pub retained: RwLock<RetainedStore>,
    pub counters: Counters,
    pub shutdown: CancellationToken,
    /// The storage writer when persistence is on (`None`: memory only, nothing journaled).
    pub storage: Option<Arc<StorageHandle>>,
    /// Running listeners; the async lock also serializes reloads.
    pub listeners: tokio::sync::Mutex<Vec<transport::listeners::RunningListener>>,
    /// Snapshot of the bound listeners for synchronous readers.
    pub bound: Mutex<Vec<BoundListener>>,
    /// Tells connections that a new generation is live (they re-check credentials).
    pub reload_tx: watch::Sender<u64>,
    /// Outcome of the last reload attempt.
    pub last_reload: Mutex<ReloadStatus>,
    /// Recent authentication failures per source address, for the back-off delay.
    pub auth_failures: Mutex<HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
    /// Events, client registry, readiness (see `crate::ops`).
    pub ops: crate::ops::OpsState,
    next_conn_id: AtomicU64,
    started_nanos: u128,
}

/// Result of attaching a connection to a session.
pub(crate) struct Attached {
    pub entry: Arc<SessionEntry>,
    pub session_present: bool,
}

impl Shared {
    pub(crate) fn new(runtime: Runtime, storage: Option<Arc<StorageHandle>>) -> Shared {
        let generation = runtime.generation;
        Shared {
            storage,
            listeners: tokio::sync::Mutex::new(Vec::new()),
            bound: Mutex::new(Vec::new()),
            reload_tx: watch::channel(generation).0,
            last_reload: Mutex::new(ReloadStatus {
                generation,
                ok: true,
                error: None,
                at: std::time::SystemTime::now(),
            }),
            runtime: ArcSwap::from_pointee(runtime),
            auth_failures: Mutex::new(HashMap::new()),
            ops: crate::ops::OpsState::default(),
            sessions: Mutex::new(HashMap::new()),
            subscriptions: RwLock::new(SubscriptionTrie::new()),
            retained: RwLock::new(RetainedStore::new()),
            counters: Counters::default(),
            shutdown: CancellationToken::new(),
            next_conn_id: AtomicU64::new(1),
            started_nanos: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        }
    }

    /// A process-unique connection number.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A client id for a client that sent an empty one [MQTT-3.1.3-6].
    pub fn assign_client_id(&self, conn_id: u64) -> String {
        format!(
            "auto-{:x}-{conn_id:x}",
            self.started_nanos & 0xffff_ffff_ffff
        )
    }

    /// Attaches connection `conn_id` to the session of `client_id`, taking it over from any
    /// connection that holds it [MQTT-3.1.4-2] and discarding it first if `clean_session`
    /// [MQTT-3.1.2-6]. Waits (bounded) for a previous connection to finish, so that its
    /// will is published before the new connection is acknowledged.
    pub async fn attach(
        &self,
        client: &Arc<ClientInfo>,
        conn_id: u64,
        cancel: CancellationToken,
        done: watch::Receiver<bool>,
    ) -> Attached {
        let limits = self.runtime.load().session_limits();
        let client_id: &str = &client.client_id;
        let clean_session = client.clean_session;
        let (attached, previous) = {
            let mut sessions = self.sessions.lock();
            let existing = sessions.get(client_id).cloned();
            let mut previous = None;
            let mut reuse = None;
            if let Some(old) = existing {
                previous = old.owner.lock().take();
                // An expired session is gone even if the periodic sweep has not run yet.
                let expired = previous.is_none() && self.is_expired(&old);
                if expired {
                    info!(
                        client_id,
                        "persistent session expired (persistence.session_expiry)"
                    );
                }
                if clean_session || expired || old.state.lock().clean_session {
                    self.remove_session(&mut sessions, &old);
                } else {
                    reuse = Some(old);
                }
            }
            let session_present = reuse.is_some();
            let entry = reuse.unwrap_or_else(|| {
                let id: Arc<str> = Arc::from(client_id);
                let entry = Arc::new(SessionEntry {
                    client_id: id.clone(),
                    state: Mutex::new(Session::new(id.clone(), clean_session, limits)),
                    wake: Notify::new(),
                    client: Mutex::new(client.clone()),
                    acl_cache: Mutex::new(AclCache::default()),
                    offline_since: Mutex::new(None),
                    owner: Mutex::new(None),
                });
                if !clean_session && self.storage.is_some() {
                    entry.state.lock().enable_persistence();
                }
                sessions.insert(id, entry.clone());
                entry
            });
            *entry.client.lock() = client.clone();
            *entry.offline_since.lock() = None;
            *entry.owner.lock() = Some(Owner {
                conn_id,
                cancel,
                done,
            });
            (
                Attached {
                    entry,
                    session_present,
                },
                previous,
            )
        };
        if let Some(prev) = previous {
            info!(client_id, "taking over session from an existing connection");
            prev.cancel.cancel();
            let mut done = prev.done;
            let _ = tokio::time::timeout(Duration::from_secs(5), done.wait_for(|d| *d)).await;
        }
        attached.entry.state.lock().set_limits(limits);
        if !clean_session {
            self.persist_record(&attached.entry);
        }
        attached
    }

    /// Submits the operations a session journaled; returns the ticket to wait for.
    pub fn persist(&self, state: &mut Session) -> Option<u64> {
        let storage = self.storage.as_ref()?;
        let ops = state.take_journal();
        (!ops.is_empty()).then(|| storage.submit(ops))
    }

    /// Writes a persistent session's record (subscriptions, user name, last seen).
    pub fn persist_record(&self, entry: &SessionEntry) -> Option<u64> {
        let storage = self.storage.as_ref()?;
        let record = {
            let state = entry.state.lock();
            if state.clean_session {
                return None;
            }
            SessionRecord {
                username: entry.client.lock().username.clone(),
                subscriptions: state
                    .subscriptions
                    .iter()
                    .map(|(f, q)| (f.clone(), *q))
                    .collect(),
                last_seen_ms: entry
                    .offline_since
                    .lock()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64),
            }
        };
        Some(storage.submit(vec![StorageOp::PutSession {
            client_id: entry.client_id.clone(),
            record,
        }]))
    }

    /// Forgets a session: its subscriptions, registry entry and stored state.
    fn remove_session(
        &self,
        sessions: &mut HashMap<Arc<str>, Arc<SessionEntry>>,
        entry: &Arc<SessionEntry>,
    ) {
        let was_persistent = !entry.state.lock().clean_session;
        self.discard_subscriptions(entry);
        if sessions
            .get(&entry.client_id)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            sessions.remove(&entry.client_id);
        }
        if was_persistent {
            if let Some(storage) = &self.storage {
                storage.submit(vec![StorageOp::DeleteSession(entry.client_id.clone())]);
            }
        }
    }

    /// Removes persistent sessions offline for longer than `persistence.session_expiry`.
    pub fn expire_sessions(&self) -> usize {
        if self
            .runtime
            .load()
            .config
            .persistence
            .session_expiry
            .is_zero()
        {
            return 0;
        }
        let mut sessions = self.sessions.lock();
        let expired: Vec<Arc<SessionEntry>> = sessions
            .values()
            .filter(|e| e.owner.lock().is_none() && self.is_expired(e))
            .cloned()
            .collect();
        for e in &expired {
            info!(client_id = %e.client_id, "persistent session expired (persistence.session_expiry)");
            self.remove_session(&mut sessions, e);
        }
        expired.len()
    }

    /// Whether a session has been offline for `persistence.session_expiry` (never when 0).
    fn is_expired(&self, entry: &SessionEntry) -> bool {
        let expiry = self.runtime.load().config.persistence.session_expiry.get();
        !expiry.is_zero()
            && entry.offline_since.lock().is_some_and(|t| {
                std::time::SystemTime::now()
                    .duration_since(t)
                    .unwrap_or_default()
                    >= expiry
            })
    }

    /// Detaches connection `conn_id` from its session; a clean session ends here [MQTT-3.1.2-6].
    pub fn detach(&self, entry: &Arc<SessionEntry>, conn_id: u64) {
        let mut sessions = self.sessions.lock();
        {
            let mut owner = entry.owner.lock();
            match owner.as_ref() {
                Some(o) if o.conn_id == conn_id => *owner = None,
                // Taken over: the new owner decides what happens to the session.
                _ => return,
            }
        }
        let clean = {
            let mut state = entry.state.lock();
            state.disconnect();
            state.clean_session
        };
        if clean {
            self.remove_session(&mut sessions, entry);
        } else {
            *entry.offline_since.lock() = Some(std::time::SystemTime::now());
            drop(sessions);
            self.persist_record(entry);
        }
    }

    /// Removes every subscription of a session from the trie.
    fn discard_subscriptions(&self, entry: &Arc<SessionEntry>) {
        let filters: Vec<String> = std::mem::take(&mut entry.state.lock().subscriptions)
            .into_keys()
            .collect();
        let mut trie = self.subscriptions.write();
        for f in filters {
            trie.remove(&f, &entry.client_id);
        }
    }

    /// Adds or replaces a subscription of `entry` to `filter`; returns a storage ticket.
    pub fn subscribe(&self, entry: &Arc<SessionEntry>, filter: &str, qos: QoS) -> Option<u64> {
        entry
            .state
            .lock()
            .subscriptions
            .insert(filter.to_owned(), qos);
        self.insert_subscription(entry, filter, qos);
        self.persist_record(entry)
    }

    fn insert_subscription(&self, entry: &Arc<SessionEntry>, filter: &str, qos: QoS) {
        self.subscriptions.write().insert(
            filter,
            entry.client_id.clone(),
            Subscriber {
                qos,
                session: entry.clone(),
            },
        );
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, entry: &Arc<SessionEntry>, filter: &str) -> bool {
        entry.state.lock().subscriptions.remove(filter);
        let existed = self
            .subscriptions
            .write()
            .remove(filter, &entry.client_id)
            .is_some();
        if existed {
            self.persist_record(entry);
        }
        existed
    }

    /// Queues the retained messages matching a new subscription, flagged RETAIN=1 [MQTT-3.3.1-6].
    pub fn send_retained(&self, entry: &SessionEntry, filter: &str, granted: QoS) -> Option<u64> {
        let mut messages = self.retained.read().matching(filter);
        // Retained messages obey read rights like live ones: a subscription that is granted
        // because it overlaps a readable area must not replay the unreadable topics it matches.
        let runtime = self.runtime.load();
        if !messages.is_empty() && runtime.security.has_authorizers() {
            let client = entry.client.lock().clone();
            let mut cache = entry.acl_cache.lock();
            messages.retain(|m| {
                let request = AclRequest {
                    action: AclAction::Deliver,
                    topic: &m.topic,
                    qos: m.qos.min(granted),
                    retain: true,
                };
                let allowed = runtime.security.authorize_cached(
                    &client,
                    &request,
                    &mut cache,
                    runtime.generation,
                );
                if !allowed {
                    Counters::inc(&self.counters.acl_denied_deliver);
                }
                allowed
            });
        }
        if messages.is_empty() {
            return None;
        }
        let mut state = entry.state.lock();
        let now = std::time::Instant::now();
        for m in messages {
            let qos = m.qos.min(granted);
            // Latency is measured from this subscription, not from when the message was retained.
            state.enqueue_retained(Message {
                qos,
                enqueued_at: Some(now),
                ..m
            });
        }
        let ticket = self.persist(&mut state);
        drop(state);
        entry.wake.notify_one();
        ticket
    }

    /// Routes a message to every matching subscriber and returns how many received it.
    pub fn publish(&self, msg: Message) -> usize {
        self.publish_tracked(msg).0
    }

    /// Routes a message; also returns the storage ticket of what it wrote (retained message,
    /// persistent subscribers' queues), which must be durable before the publisher is
    /// acknowledged.
    ///
    /// Stores or deletes the retained message first when RETAIN is set [MQTT-3.3.1-5].
    pub fn publish_tracked(&self, mut msg: Message) -> (usize, Option<u64>) {
        msg.enqueued_at.get_or_insert_with(std::time::Instant::now);
        let runtime = self.runtime.load();
        let mut ticket = None;
        if msg.retain {
            let limit = runtime.config.persistence.retained_message_limit;
            let outcome = self.retained.write().retain(&msg, limit);
            match outcome {
                RetainOutcome::LimitReached => {
                    Counters::inc(&self.counters.retained_refused_limit);
                    warn!(topic = %msg.topic, limit, "retained message refused: retained_message_limit reached");
                }
                RetainOutcome::Added | RetainOutcome::Replaced => {
                    if let Some(st) = &self.storage {
                        ticket = Some(st.submit(vec![StorageOp::PutRetained(Message {
                            retain: true,
                            ..msg.clone()
                        })]));
                    }
                }
                RetainOutcome::Removed => {
                    if let Some(st) = &self.storage {
                        ticket =
                            Some(st.submit(vec![StorageOp::DeleteRetained(msg.topic.clone())]));
                    }
                }
                RetainOutcome::NothingToRemove => {}
            }
        }
        let mut targets: Vec<(Arc<SessionEntry>, QoS)> = Vec::new();
        self.subscriptions
            .read()
            .for_each_match(&msg.topic, |_, sub| {
                targets.push((sub.session.clone(), sub.qos))
            });
        if targets.is_empty() {
            // The broker's own `$SYS` updates are not client messages nobody wanted.
            if !msg.topic.starts_with("$SYS/") {
                Counters::inc(&self.counters.dropped_no_subscribers);
            }
            return (0, ticket);
        }
        // One delivery per client, at the highest QoS of its matching subscriptions [MQTT-3.3.5-1].
        if targets.len() > 1 {
            targets.sort_by(|a, b| {
                Arc::as_ptr(&a.0)
                    .cmp(&Arc::as_ptr(&b.0))
                    .then(b.1.cmp(&a.1))
            });
            targets.dedup_by(|later, first| Arc::ptr_eq(&later.0, &first.0));
        }
        // A wildcard subscription never leaks a topic its client may not read.
        if runtime.security.has_authorizers() {
            targets.retain(|(entry, granted)| {
                let client = entry.client.lock().clone();
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
                    Counters::inc(&self.counters.acl_denied_deliver);
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
            let mut state = entry.state.lock();
            match state.enqueue(delivered) {
                Ok(()) => {
                    let online = state.is_online();
                    if let Some(t) = self.persist(&mut state) {
                        ticket = Some(t);
                    }
                    drop(state);
                    if online {
                        entry.wake.notify_one();
                    }
                }
                Err(DropReason::QueueFull) => {
                    drop(state);
                    Counters::inc(&self.counters.dropped_queue_full);
                    self.counters.ops.limit(LimitKind::MessageQueueLimit);
                    if self
                        .ops
                        .first_warning(&entry.client_id, LimitKind::MessageQueueLimit)
                    {
                        // Logged in the publisher's span: name the subscriber it is about.
                        let peer = entry.client.lock().peer;
                        warn!(subscriber = %entry.client_id, subscriber_peer = %peer, topic = %msg.topic, "message dropped: subscriber queue full (message_queue_limit); logged once per connection, counted in /metrics");
                    }
                }
                Err(DropReason::QueueBytesFull) => {
                    drop(state);
                    self.counters.ops.limit(LimitKind::MaxQueuedBytes);
                    if self
                        .ops
                        .first_warning(&entry.client_id, LimitKind::MaxQueuedBytes)
                    {
                        let peer = entry.client.lock().peer;
                        warn!(subscriber = %entry.client_id, subscriber_peer = %peer, topic = %msg.topic, "message dropped: subscriber queue holds limits.max_queued_bytes; logged once per connection, counted in /metrics");
                    }
                }
                Err(DropReason::Qos0Offline) => Counters::inc(&self.counters.dropped_offline_qos0),
            }
        }
        (count, ticket)
    }

    /// A snapshot of the counters and registry sizes.
    pub fn stats(&self) -> StatsSnapshot {
        let c = &self.counters;
        let (mut connected, mut qos1, mut qos2, mut queued) = (0, 0, 0, 0);
        let sessions: Vec<Arc<SessionEntry>> = self.sessions.lock().values().cloned().collect();
        for entry in &sessions {
            let s = entry.state.lock();
            if s.is_online() {
                connected += 1;
            }
            queued += s.queued() as u64;
            qos2 += s.inbound_qos2_pending() as u64;
            for f in s.inflight() {
                match f.state {
                    OutboundState::AwaitPubAck => qos1 += 1,
                    _ => qos2 += 1,
                }
            }
        }
        StatsSnapshot {
            config_generation: self.runtime.load().generation,
            connections: ConnectionStats {
                total: Counters::get(&c.connections),
                tcp: Counters::get(&c.connections_tcp),
                tls: Counters::get(&c.connections_tls),
                websocket: Counters::get(&c.connections_ws),
                wss: Counters::get(&c.connections_wss),
            },
            sessions: SessionStats {
                total: sessions.len() as u64,
                connected,
            },
            subscriptions: SubscriptionStats {
                total: self.subscriptions.read().len() as u64,
            },
            messages: MessageStats {
                retained: self.retained.read().len() as u64,
                inflight: InflightStats { qos1, qos2 },
                queued,
                received: Counters::get(&c.messages_in),
                sent: Counters::get(&c.messages_out),
                dropped_queue_full: Counters::get(&c.dropped_queue_full),
            },
            bytes: ByteStats {
                received: Counters::get(&c.bytes_in),
                sent: Counters::get(&c.bytes_out),
            },
        }
    }
}

/// Entry point for running a broker inside another program.
pub struct Broker;

impl Broker {
    /// Builds everything a config describes (files, plugins) without binding listeners:
    /// what `--check-config` runs.
    pub fn check(config: Config) -> Result<(), BrokerError> {
        build_runtime(config, 0).map(|_| ())
    }

    /// Validates `config`, binds every listener and starts serving.
    ///
    /// Returns once all listeners are bound, so that clients can connect immediately.
    pub async fn start(config: Config) -> Result<BrokerHandle, BrokerError> {
        let storage: Option<Arc<dyn Storage>> = match config.persistence.storage_type {
            StorageType::File => {
                let path = config.persistence.path.clone();
                let cache = config.persistence.cache_size.0;
                let opened =
                    tokio::task::spawn_blocking(move || FileStorage::open_with_cache(&path, cache))
                        .await
                        .map_err(|e| BrokerError::Reload(e.to_string()))??;
                info!(path = %opened.path().display(), "file persistence enabled");
                Some(Arc::new(opened))
            }
            _ => None,
        };
        Broker::start_inner(config, storage).await
    }

    /// Like [`Broker::start`], on a storage backend the embedder provides (e.g. a
    /// [`MemoryStorage`] shared with a previous broker in the same process).
    pub async fn start_with_storage(
        config: Config,
        storage: Arc<dyn Storage>,
    ) -> Result<BrokerHandle, BrokerError> {
        Broker::start_inner(config, Some(storage)).await
    }

    async fn start_inner(
        config: Config,
        storage: Option<Arc<dyn Storage>>,
    ) -> Result<BrokerHandle, BrokerError> {
        let listeners = config.effective_listeners();
        let runtime = build_runtime(config, 1)?;
        let mode = runtime.config.persistence.sync_mode();
        // The writer thread only starts; nothing is written before recovery is done.
        let handle = storage
            .as_ref()
            .map(|s| Arc::new(StorageHandle::start(s.clone(), mode)));
        let shared = Arc::new(Shared::new(runtime, handle));
        shared.runtime.load().plugins.set_events(&shared.ops.events);
        // The admin listener opens first, so that during a long recovery `/healthz` answers
        // and `/readyz` says 503 ("starting") instead of refusing connections.
        crate::admin::start(&shared).await;
        let stop_on_error = |e: BrokerError| {
            shared.ops.stop.cancel();
            if let Some(h) = &shared.storage {
                h.close();
            }
            e
        };
        // Recovery happens before any MQTT listener opens: clients only ever see a complete
        // state.
        if let Some(storage) = storage {
            let started = std::time::Instant::now();
            let recovered = tokio::task::spawn_blocking(move || storage.load())
                .await
                .map_err(|e| stop_on_error(BrokerError::Reload(e.to_string())))?
                .map_err(|e| stop_on_error(e.into()))?;
            info!(
                sessions = recovered.sessions.len(),
                retained = recovered.retained.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "storage recovered"
            );
            shared.recover(recovered);
            // Sessions that expired while the broker was down go before any client can
            // reconnect to them.
            shared.expire_sessions();
        }
        let running = transport::listeners::start_all(&listeners, &shared)
            .await
            .map_err(&stop_on_error)?;
        shared.set_listeners(running, &mut *shared.listeners.lock().await);
        let sweeper = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = sweeper.shutdown.cancelled() => break,
                    _ = tick.tick() => { sweeper.expire_sessions(); }
                }
            }
        });
        // Storage was recovered above, before any listener opened: now the broker is ready.
        shared.ops.ready.store(true, Ordering::Relaxed);
        crate::metrics::sys::spawn(&shared);
        Ok(BrokerHandle { shared })
    }
}

/// Outcome of the last reload attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadStatus {
    /// Generation in force after the attempt.
    pub generation: u64,
    /// Whether the attempt succeeded.
    pub ok: bool,
    /// Why it failed (file, line and reason), if it did.
    pub error: Option<String>,
    /// When it happened.
    #[serde(serialize_with = "serialize_time")]
    pub at: std::time::SystemTime,
}

fn serialize_time<S: serde::Serializer>(
    t: &std::time::SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    s.serialize_u64(ms)
}

impl Shared {
    /// Rebuilds retained messages and persistent sessions (with their subscriptions) from storage.
    fn recover(&self, recovered: Recovered) {
        let limits = self.runtime.load().session_limits();
        let mut retained = self.retained.write();
        for m in recovered.retained {
            retained.retain(&m, usize::MAX);
        }
        drop(retained);
        let mut sessions = self.sessions.lock();
        for r in recovered.sessions {
            let subscriptions = r.record.subscriptions.iter().cloned().collect();
            let client = Arc::new(ClientInfo {
                client_id: r.client_id.clone(),
                username: r.record.username.clone(),
                peer: SocketAddr::from(([0, 0, 0, 0], 0)),
                transport: TransportKind::Tcp,
                tls_identity: None,
                protocol: crate::protocol::ProtocolLevel::V311,
                clean_session: false,
            });
            let last_seen = match r.record.last_seen_ms {
                0 => std::time::SystemTime::now(),
                ms => std::time::UNIX_EPOCH + Duration::from_millis(ms),
            };
            let entry = Arc::new(SessionEntry {
                client_id: r.client_id.clone(),
                state: Mutex::new(Session::restore(
                    r.client_id.clone(),
                    limits,
                    subscriptions,
                    r.messages,
                    r.inbound,
                )),
                wake: Notify::new(),
                client: Mutex::new(client),
                acl_cache: Mutex::new(AclCache::default()),
                offline_since: Mutex::new(Some(last_seen)),
                owner: Mutex::new(None),
            });
            for (f, q) in &r.record.subscriptions {
                self.insert_subscription(&entry, f, *q);
            }
            sessions.insert(r.client_id, entry);
        }
    }

    fn set_listeners(
        &self,
        running: Vec<transport::listeners::RunningListener>,
        slot: &mut Vec<transport::listeners::RunningListener>,
    ) {
        *self.bound.lock() = running
            .iter()
            .map(|r| BoundListener {
                name: r.name.clone(),
                transport: r.transport(),
                addr: r.addr,
            })
            .collect();
        *slot = running;
    }

    /// Applies a new configuration as one transaction: builds the complete runtime (files,
    /// certificates, plugins) and binds new listeners first; only when all of it succeeded is
    /// the runtime swapped in one store. Any error leaves the running state untouched.
    pub async fn reload(self: &Arc<Self>, config: Config) -> Result<u64, BrokerError> {
        let mut running = self.listeners.lock().await;
        let current = self.runtime.load_full();
        let result = self.reload_locked(&current, config, &mut running).await;
        let mut status = self.last_reload.lock();
        *status = ReloadStatus {
            generation: self.runtime.load().generation,
            ok: result.is_ok(),
            error: result.as_ref().err().map(|e| e.to_string()),
            at: std::time::SystemTime::now(),
        };
        let event = status.clone();
        drop(status);
        self.ops
            .events
            .emit(|| crate::events::BrokerEvent::ConfigReloaded {
                generation: event.generation,
                ok: event.ok,
                error: event.error,
            });
        match &result {
            Ok(generation) => {
                Counters::inc(&self.counters.reloads_ok);
                info!(generation, "configuration reloaded");
            }
            Err(e) => {
                Counters::inc(&self.counters.reloads_failed);
                tracing::error!(error = %e, generation = current.generation, "configuration reload refused; the running configuration stays in force");
            }
        }
        result
    }

    async fn reload_locked(
        self: &Arc<Self>,
        current: &Arc<Runtime>,
        config: Config,
        running: &mut Vec<transport::listeners::RunningListener>,
    ) -> Result<u64, BrokerError> {
        if config.performance.worker_threads != current.config.performance.worker_threads {
            return Err(BrokerError::NotReloadable("performance.worker_threads"));
        }
        crate::admin::check_reload(&current.config.admin, &config.admin)?;
        let generation = current.generation + 1;
        // Reading files and compiling plugins is slow: keep it off the async workers.
        let runtime = tokio::task::spawn_blocking(move || build_runtime(config, generation))
            .await
            .map_err(|e| BrokerError::Reload(e.to_string()))??;
        let desired = runtime.config.effective_listeners();
        let plan = match transport::listeners::prepare(std::mem::take(running), &desired).await {
            Ok(plan) => plan,
            Err((unchanged, e)) => {
                *running = unchanged;
                return Err(e);
            }
        };
        let limits = runtime.session_limits();
        let old = &current.config.persistence;
        let new = &runtime.config.persistence;
        if (
            old.storage_type,
            &old.path,
            old.sync,
            old.sync_interval,
            old.cache_size,
        ) != (
            new.storage_type,
            &new.path,
            new.sync,
            new.sync_interval,
            new.cache_size,
        ) {
            *running = transport::listeners::abandon(plan);
            return Err(BrokerError::NotReloadable(
                "persistence (storage_type, path, sync, cache_size)",
            ));
        }
        runtime.plugins.set_events(&self.ops.events);
        self.runtime.store(Arc::new(runtime));
        let now_running = transport::listeners::commit(plan, self).await;
        self.set_listeners(now_running, running);
        // Lowered limits apply to new work; nothing already queued is dropped.
        let sessions: Vec<Arc<SessionEntry>> = self.sessions.lock().values().cloned().collect();
        for s in sessions {
            s.state.lock().set_limits(limits);
        }
        crate::logging::apply(&self.runtime.load().config.log);
        let _ = self.reload_tx.send(generation);
        Ok(generation)
    }
}

/// A listener the broker has bound.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// Listener name.
    pub name: String,
    /// Transport protocol.
    pub transport: TransportKind,
    /// Actual address (with the real port when 0 was configured).
    pub addr: SocketAddr,
}

/// Control of a running broker.
#[derive(Clone)]
pub struct BrokerHandle {
    shared: Arc<Shared>,
}

impl BrokerHandle {
    /// Address of the first listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.bound.lock()[0].addr
    }

    /// State and counters of each loaded Wasm plugin, in call order.
    pub fn plugin_stats(&self) -> Vec<crate::plugins::PluginStats> {
        self.shared.runtime.load().plugins.stats()
    }

    /// Every bound listener, in configured order.
    pub fn listeners(&self) -> Vec<BoundListener> {
        self.shared.bound.lock().clone()
    }

    /// Generation of the configuration in force (1 at start, +1 per successful reload).
    pub fn generation(&self) -> u64 {
        self.shared.runtime.load().generation
    }

    /// Outcome of the last reload attempt.
    pub fn last_reload(&self) -> ReloadStatus {
        self.shared.last_reload.lock().clone()
    }

    /// Applies a new configuration live, as one transaction (see the README's "Change config
    /// without restarting"). Returns the new generation, or why nothing changed.
    pub async fn reload(&self, config: Config) -> Result<u64, BrokerError> {
        self.shared.reload(config).await
    }

    /// Re-reads `path` and applies it live; a file that does not parse changes nothing.
    pub async fn reload_from_file(&self, path: &std::path::Path) -> Result<u64, BrokerError> {
        match Config::load(path) {
            Ok(config) => self.shared.reload(config).await,
            Err(e) => {
                let err = BrokerError::Config(e);
                Counters::inc(&self.shared.counters.reloads_failed);
                tracing::error!(error = %err, "configuration reload refused; the running configuration stays in force");
                *self.shared.last_reload.lock() = ReloadStatus {
                    generation: self.generation(),
                    ok: false,
                    error: Some(err.to_string()),
                    at: std::time::SystemTime::now(),
                };
                self.shared
                    .ops
                    .events
                    .emit(|| crate::events::BrokerEvent::ConfigReloaded {
                        generation: self.generation(),
                        ok: false,
                        error: Some(err.to_string()),
                    });
                Err(err)
            }
        }
    }

    /// Watches `path`, the files it names and the plugin directory, and reloads on change
    /// (debounced). Runs until the broker shuts down.
    pub fn watch_config(
        &self,
        path: std::path::PathBuf,
    ) -> Result<(), crate::config::watch::WatchError> {
        self.set_config_path(path.clone());
        crate::config::watch::spawn(self.clone(), path)
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        BrokerHandle { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Counters and sizes right now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats()
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.shared.runtime.load().config.clone()
    }

    /// Graceful shutdown: readiness turns 503, then (after `server.drain_delay`) listeners
    /// stop accepting and every connection is closed after acknowledging what it already
    /// sent; waits up to `server.shutdown_timeout` for them to end. Returns whether every
    /// connection ended in time.
    pub async fn shutdown(self) -> bool {
        crate::ops::shutdown(&self.shared).await
    }

    /// Address of the admin HTTP listener, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.shared.ops.admin_addr.lock()
    }

    /// A receiver of typed broker events (see [`crate::events`]): bounded; a receiver that
    /// falls behind by more than [`crate::events::EVENT_CAPACITY`] events gets
    /// `RecvError::Lagged(missed)` and continues with the oldest event still held, so a slow
    /// consumer never slows the broker.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<crate::events::BrokerEvent> {
        self.shared.ops.events.subscribe()
    }

    /// Tells the broker which file it was started from, for `POST /api/v1/reload`.
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        *self.shared.ops.config_path.lock() = Some(path);
    }

    /// Whether `/readyz` would answer 200: listeners bound and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.shared.ops.is_ready()
    }

    /// Convenience for tests and embedders: a listener config on loopback with a free port.
    pub fn loopback_listener() -> ListenerConfig {
        ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(config: Config) -> Option<u64> {
        build_runtime(config, 1)
            .expect("valid config")
            .auth_fingerprint
    }

    /// A reload re-authenticates connected clients only when something authentication
    /// depends on changed: an ACL or limits edit does not, a password file edit does.
    #[test]
    fn auth_fingerprint_follows_what_authentication_depends_on() {
        let dir = std::env::temp_dir().join(format!("mqtt-broker-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwords = dir.join("passwd");
        let line = |user: &str| {
            format!(
                "{user}:{}\n",
                crate::auth::password::hash_password_with_salt(b"pw", b"0123456789abcdef", 10)
            )
        };
        std::fs::write(&passwords, line("alice")).unwrap();
        let mut config = Config::default();
        config.security.password_file = Some(passwords.clone());
        let base = fingerprint(config.clone());
        assert!(base.is_some());

        let mut acl_and_limits = config.clone();
        acl_and_limits.security.acl_default = Some(crate::auth::acl::AclDefault::Deny);
        acl_and_limits.limits.publish_rate = 7;
        assert_eq!(fingerprint(acl_and_limits), base);

        let mut anonymous = config.clone();
        anonymous.security.allow_anonymous = !anonymous.security.allow_anonymous;
        assert_ne!(fingerprint(anonymous), base);

        std::fs::write(&passwords, line("bob")).unwrap();
        assert_ne!(
            fingerprint(config),
            base,
            "the password file's content counts"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
