//! The broker's core: the state every connection shares and the protocol engine that acts
//! on it, with no sockets, listeners or HTTP in sight.
//!
//! - [`runtime`]: the immutable [`Runtime`] derived from a config generation;
//! - [`registry`]: sessions by client id, attach/detach/takeover/expiry, and the lock order;
//! - [`router`]: the routing seam ([`router::Router`]) and its single-node implementation;
//! - [`engine`]: the sans-IO per-client protocol engine (packets in, actions out);
//! - [`mqtt5`]: what an MQTT 5 CONNECT negotiates (limits both ways, CONNACK properties);
//! - [`ops`]: the event bus, the connected-clients directory and readiness;
//! - [`backoff`]: the login back-off per source address;
//! - [`control`]: the narrow interface admin, metrics, `$SYS` and the watcher use;
//! - [`directory`]: which node owns a client's session (the cluster's interface).
//!
//! Depends only on leaf and layer modules below it (model, protocol, config, session,
//! routing, storage, hooks, metrics, events); the connection shell, the transports and the
//! server import it, never the other way round.

pub mod backoff;
pub mod control;
pub mod directory;
pub mod engine;
#[cfg(test)]
mod engine_tests;
pub mod mqtt5;
pub mod ops;
pub mod registry;
pub mod router;
pub mod runtime;

pub use runtime::{PendingRestart, ReloadStatus, Runtime, Token};

use crate::metrics::{
    ByteStats, ConnectionStats, Counters, InflightStats, MessageStats, SessionStats, StatsSnapshot,
    SubscriptionStats,
};
use crate::model::{ConnId, Message};
use crate::session::state::OutboundState;
use crate::session::Session;
use crate::storage::StorageHandle;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use registry::SessionRegistry;
use router::{LocalRouter, Routed, Router};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The services every component of the core reads: the runtime in force, the counters,
/// the storage writer and the operational state. Held by the router, the registry and the
/// engine alike, so none of them needs the whole [`Core`].
pub(crate) struct Services {
    /// The runtime in force; hot paths `load()` it, a reload swaps it whole.
    pub runtime: ArcSwap<Runtime>,
    /// Counters for stats and metrics.
    pub counters: Counters,
    /// The storage writer when persistence is on (`None`: memory only, nothing journaled).
    pub storage: Option<Arc<StorageHandle>>,
    /// Events, connected clients, readiness (see [`ops`]).
    pub ops: ops::OpsState,
}

impl Services {
    /// Submits the operations a session journaled; returns the ticket to wait for.
    pub fn persist(&self, state: &mut Session) -> Option<u64> {
        let storage = self.storage.as_ref()?;
        let ops = state.take_journal();
        (!ops.is_empty()).then(|| storage.submit(ops))
    }
}

/// The soft open-files limit of this process (`u64::MAX` where it cannot be read).
fn open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return u64::MAX;
    }
    lim.rlim_cur
}

/// Reload attempts the dashboard can look back on.
pub const RELOAD_HISTORY: usize = 50;

/// State shared by every task of one broker (see the module documentation).
pub(crate) struct Core {
    services: Arc<Services>,
    /// Where messages go (the single-node trie and retained store today).
    pub router: Arc<dyn Router>,
    /// Sessions by client id.
    pub registry: SessionRegistry,
    /// The login back-off.
    pub backoff: backoff::AuthBackoff,
    /// Cancelled when the broker shuts down: every listener's and connection's token is a
    /// child of it.
    pub shutdown: CancellationToken,
    /// Tells connections that a new generation is live (they re-check credentials).
    pub reload_tx: watch::Sender<u64>,
    /// Outcome of the last reload attempt.
    pub last_reload: Mutex<ReloadStatus>,
    /// The last reload attempts (the start counts as the first), for the dashboard.
    pub reload_history: Mutex<crate::history::HistoryRing<ReloadStatus>>,
    next_conn_id: AtomicU64,
    started_nanos: u128,
    /// The process's open-files limit (soft), read at start.
    fd_limit: u64,
    /// Whether the "near the open-files limit" warning is armed off (re-armed below 80 %).
    fd_warned: std::sync::atomic::AtomicBool,
    /// Event hook delivery to plugins, handed from generation to generation.
    plugin_routes: crate::plugins::EventRoutes,
    /// The cluster's session directory (`None`: a single node).
    pub directory: std::sync::OnceLock<Arc<dyn directory::SessionDirectory>>,
}

impl std::ops::Deref for Core {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

impl Core {
    /// A core with no sessions, routing on this node only (the tests' core; the broker
    /// builds its own with [`Core::with_router`]).
    #[cfg(test)]
    pub fn new(runtime: Runtime, storage: Option<Arc<StorageHandle>>) -> Core {
        Core::with_router(runtime, storage, |local| local)
    }

    /// A core with no sessions whose router `make` builds around this node's own (the
    /// cluster wraps it).
    pub fn with_router(
        runtime: Runtime,
        storage: Option<Arc<StorageHandle>>,
        make: impl FnOnce(Arc<LocalRouter>) -> Arc<dyn Router>,
    ) -> Core {
        let generation = runtime.generation;
        let services = Arc::new(Services {
            runtime: ArcSwap::from_pointee(runtime),
            counters: Counters::default(),
            storage,
            ops: ops::OpsState::default(),
        });
        let router = make(Arc::new(LocalRouter::new(services.clone())));
        let started = ReloadStatus {
            generation,
            ok: true,
            error: None,
            at: std::time::SystemTime::now(),
            pending_restart: Vec::new(),
        };
        let mut reload_history = crate::history::HistoryRing::new(RELOAD_HISTORY);
        reload_history.push(started.clone());
        Core {
            registry: SessionRegistry::new(services.clone(), router.clone()),
            router,
            services,
            backoff: backoff::AuthBackoff::default(),
            shutdown: CancellationToken::new(),
            reload_tx: watch::channel(generation).0,
            last_reload: Mutex::new(started),
            reload_history: Mutex::new(reload_history),
            next_conn_id: AtomicU64::new(1),
            fd_limit: open_files_limit(),
            fd_warned: std::sync::atomic::AtomicBool::new(false),
            plugin_routes: Default::default(),
            directory: std::sync::OnceLock::new(),
            started_nanos: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        }
    }

    /// Called with the number of open connections whenever one is accepted: warns once
    /// when they come within 10 % of what the open-files limit allows (each connection is
    /// one file; 64 are kept for listeners, the store and plugins), and only when that limit
    /// is below `server.max_connections` (otherwise that refuses first). Re-armed below 80 %.
    pub fn note_connections(&self, open: u64) {
        let usable = self.fd_limit.saturating_sub(64);
        let max = self.runtime.load().config.server.max_connections as u64;
        if usable == 0 || usable >= max {
            return;
        }
        if open * 10 >= usable * 9 {
            if !self.fd_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    open_connections = open,
                    open_files_limit = self.fd_limit,
                    max_connections = max,
                    "connections are near the open-files limit: new ones will fail to be accepted at about {usable}; raise it (LimitNOFILE= in the systemd unit, ulimit -n) or lower server.max_connections"
                );
            }
        } else if open * 10 < usable * 8 {
            self.fd_warned.store(false, Ordering::Relaxed);
        }
    }

    /// A process-unique connection number.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A client id for a client that sent an empty one [MQTT-3.1.3-6].
    pub fn assign_client_id(&self, conn_id: ConnId) -> String {
        format!(
            "auto-{:x}-{conn_id:x}",
            self.started_nanos & 0xffff_ffff_ffff
        )
    }

    /// Publishes an MQTT 5 will once its delay has passed, unless a connection attaches to
    /// the session meanwhile [MQTT-3.1.3-9]. The will is kept in the session (and stored with
    /// a persistent one), so that it survives a restart of the broker.
    pub(crate) fn publish_will_later(
        self: &Arc<Self>,
        entry: Arc<registry::SessionEntry>,
        deferred: engine::DeferredWill,
    ) {
        let due = std::time::SystemTime::now() + deferred.delay;
        let due_ms = due
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        entry.state().pending_will = Some(Box::new(crate::storage::StoredWill {
            will: deferred.will,
            due_ms,
        }));
        self.registry.persist_record(&entry);
        self.schedule_will(entry);
    }

    /// Arms the timer of a session's pending will (after a disconnect, or for a session
    /// recovered from storage); when it fires, the will is published if it is still pending
    /// and due, and nobody is attached.
    pub(crate) fn schedule_will(self: &Arc<Self>, entry: Arc<registry::SessionEntry>) {
        let Some(due_ms) = entry.state().pending_will.as_ref().map(|w| w.due_ms) else {
            return;
        };
        let core = self.clone();
        tokio::spawn(async move {
            let due = std::time::UNIX_EPOCH + std::time::Duration::from_millis(due_ms);
            let wait = due
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = core.shutdown.cancelled() => return,
            }
            let will = {
                let mut state = entry.state();
                // Another disconnect may have replaced it with a later one (its own timer
                // publishes that); a reconnect cleared it.
                if entry.is_attached()
                    || state.pending_will.as_ref().map(|w| w.due_ms) != Some(due_ms)
                {
                    None
                } else {
                    state.pending_will.take()
                }
            };
            match will {
                Some(w) => {
                    core.registry.persist_record(&entry);
                    engine::publish_will(&core, &entry.client(), &w.will);
                }
                None => {
                    tracing::debug!(client_id = %entry.client_id, "delayed will not published: the client reconnected or disconnected again");
                }
            }
        });
    }

    /// Routes a message the broker itself publishes (wills, `$SYS`).
    pub fn publish(&self, msg: Message) -> Routed {
        self.router.publish(msg)
    }

    /// Puts a generation's plugins to work: hands them the event bus and where their
    /// messages go, and points the event routes at them (from now on they, not the
    /// previous generation, get the events). Called just before the generation goes live.
    pub fn install_plugins(core: &Arc<Core>, plugins: &crate::plugins::PluginSet) {
        plugins.attach(&core.ops.events, &Core::plugin_publisher(core));
        core.plugin_routes.switch_to(plugins, &core.ops.events);
    }

    /// Where plugins' published messages go: routed as the broker's own (no ACL, no
    /// transform); nowhere once the broker is gone.
    pub fn plugin_publisher(core: &Arc<Core>) -> crate::plugins::Publisher {
        let weak = Arc::downgrade(core);
        Arc::new(move |msg| {
            if let Some(core) = weak.upgrade() {
                core.publish(msg);
            }
        })
    }

    /// A snapshot of the counters and registry sizes.
    pub fn stats(&self) -> StatsSnapshot {
        let c = &self.counters;
        let (mut connected, mut qos1, mut qos2, mut queued) = (0, 0, 0, 0);
        let sessions = self.registry.entries();
        for entry in &sessions {
            let s = entry.state();
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
                bridge: Counters::get(&c.connections_bridge),
            },
            sessions: SessionStats {
                total: sessions.len() as u64,
                connected,
            },
            subscriptions: SubscriptionStats {
                total: self.router.subscription_count() as u64,
            },
            messages: MessageStats {
                retained: self.router.retained_count() as u64,
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

/// A core on the default configuration, for unit tests.
#[cfg(test)]
pub(crate) fn test_core() -> Core {
    let config = crate::config::Config::default();
    let security = crate::auth::build_security_chain(&config.security).expect("valid security");
    let runtime = Runtime {
        config,
        generation: 1,
        security,
        tls: std::collections::HashMap::new(),
        listeners: std::collections::HashMap::new(),
        admin_token: None,
        plugins: Default::default(),
        plugin_kv: Default::default(),
        auth_fingerprint: None,
    };
    Core::new(runtime, None)
}
