//! Wires the layers together: the shared broker state (runtime config, session registry,
//! subscription trie, retained store, counters), the routing of one message to its
//! subscribers, and the public `Broker::start` / `BrokerHandle` API for embedding.

use crate::config::{Config, ListenerConfig, TransportKind};
use crate::hooks::{AclAction, AclRequest, ClientInfo, SecurityChain};
use crate::metrics::{
    ByteStats, ConnectionStats, Counters, InflightStats, MessageStats, SessionStats, StatsSnapshot,
    SubscriptionStats,
};
use crate::protocol::QoS;
use crate::routing::{Message, RetainOutcome, RetainedStore, SubscriptionTrie};
use crate::session::state::OutboundState;
use crate::session::{DropReason, Session, SessionLimits};
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
use tokio::task::JoinHandle;
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
}

/// Builds the complete runtime state from a config: reads password and ACL files and loads
/// plugins. Pure with respect to the running broker, so a failure changes nothing.
pub(crate) fn build_runtime(config: Config, generation: u64) -> Result<Runtime, BrokerError> {
    config.validate(std::path::Path::new("<config>"))?;
    let security = crate::auth::build_security_chain(&config.security)?;
    let tls = transport::tls_configs(&config.effective_listeners())?;
    Ok(Runtime {
        config,
        generation,
        security,
        tls,
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
    /// Recent authentication failures per source address, for the back-off delay.
    pub auth_failures: Mutex<HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
    next_conn_id: AtomicU64,
    started_nanos: u128,
}

/// Result of attaching a connection to a session.
pub(crate) struct Attached {
    pub entry: Arc<SessionEntry>,
    pub session_present: bool,
}

impl Shared {
    pub(crate) fn new(runtime: Runtime) -> Shared {
        Shared {
            runtime: ArcSwap::from_pointee(runtime),
            auth_failures: Mutex::new(HashMap::new()),
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
                if clean_session || old.state.lock().clean_session {
                    self.discard_subscriptions(&old);
                    sessions.remove(client_id);
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
                    owner: Mutex::new(None),
                });
                sessions.insert(id, entry.clone());
                entry
            });
            *entry.client.lock() = client.clone();
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
        attached
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
            self.discard_subscriptions(entry);
            if sessions
                .get(&entry.client_id)
                .is_some_and(|e| Arc::ptr_eq(e, entry))
            {
                sessions.remove(&entry.client_id);
            }
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

    /// Adds or replaces a subscription of `entry` to `filter`.
    pub fn subscribe(&self, entry: &Arc<SessionEntry>, filter: &str, qos: QoS) {
        entry
            .state
            .lock()
            .subscriptions
            .insert(filter.to_owned(), qos);
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
        self.subscriptions
            .write()
            .remove(filter, &entry.client_id)
            .is_some()
    }

    /// Queues the retained messages matching a new subscription, flagged RETAIN=1 [MQTT-3.3.1-6].
    pub fn send_retained(&self, entry: &SessionEntry, filter: &str, granted: QoS) {
        let messages = self.retained.read().matching(filter);
        if messages.is_empty() {
            return;
        }
        let mut state = entry.state.lock();
        for m in messages {
            let qos = m.qos.min(granted);
            state.enqueue_retained(Message { qos, ..m });
        }
        drop(state);
        entry.wake.notify_one();
    }

    /// Routes a message to every matching subscriber and returns how many received it.
    ///
    /// Stores or deletes the retained message first when RETAIN is set [MQTT-3.3.1-5].
    pub fn publish(&self, msg: Message) -> usize {
        let runtime = self.runtime.load();
        if msg.retain {
            let limit = runtime.config.persistence.retained_message_limit;
            if self.retained.write().retain(&msg, limit) == RetainOutcome::LimitReached {
                Counters::inc(&self.counters.retained_refused_limit);
                warn!(topic = %msg.topic, limit, "retained message refused: retained_message_limit reached");
            }
        }
        let mut targets: Vec<(Arc<SessionEntry>, QoS)> = Vec::new();
        self.subscriptions
            .read()
            .for_each_match(&msg.topic, |_, sub| {
                targets.push((sub.session.clone(), sub.qos))
            });
        if targets.is_empty() {
            Counters::inc(&self.counters.dropped_no_subscribers);
            return 0;
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
                let allowed = runtime.security.authorize(&client, &request);
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
                    drop(state);
                    if online {
                        entry.wake.notify_one();
                    }
                }
                Err(DropReason::QueueFull) => {
                    drop(state);
                    Counters::inc(&self.counters.dropped_queue_full);
                    warn!(client_id = %entry.client_id, topic = %msg.topic, "message dropped: subscriber queue full (message_queue_limit)");
                }
                Err(DropReason::Qos0Offline) => Counters::inc(&self.counters.dropped_offline_qos0),
            }
        }
        count
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
        let listeners = config.effective_listeners();
        let shared = Arc::new(Shared::new(build_runtime(config, 1)?));
        let mut bound = Vec::new();
        let mut tasks = Vec::new();
        for l in &listeners {
            let listener = transport::bind(l)
                .await
                .map_err(|source| BrokerError::Bind {
                    name: l.display_name(),
                    addr: l.bind,
                    source,
                })?;
            let addr = listener.local_addr().unwrap_or(l.bind);
            info!(listener = %l.display_name(), %addr, "listening");
            bound.push(BoundListener {
                name: l.display_name(),
                transport: l.protocol,
                addr,
            });
            tasks.push(tokio::spawn(transport::accept_loop(
                listener,
                l.clone(),
                shared.clone(),
            )));
        }
        Ok(BrokerHandle {
            shared,
            listeners: bound,
            tasks,
        })
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
pub struct BrokerHandle {
    shared: Arc<Shared>,
    listeners: Vec<BoundListener>,
    tasks: Vec<JoinHandle<()>>,
}

impl BrokerHandle {
    /// Address of the first listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners[0].addr
    }

    /// Every bound listener.
    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
    }

    /// Counters and sizes right now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats()
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.shared.runtime.load().config.clone()
    }

    /// Stops accepting, closes every connection and waits (up to 10 s) for them to end.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Counters::get(&self.shared.counters.connections) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!("broker stopped");
    }

    /// Applies a new configuration to the running broker (listeners excepted).
    pub fn apply_config(&self, config: Config) -> Result<u64, BrokerError> {
        let generation = self.shared.runtime.load().generation + 1;
        let runtime = build_runtime(config, generation)?;
        self.shared.runtime.store(Arc::new(runtime));
        Ok(generation)
    }

    /// Convenience for tests and embedders: a listener config on loopback with a free port.
    pub fn loopback_listener() -> ListenerConfig {
        ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}
