//! The server: wires the layers together and is the public embedding API.
//!
//! `Broker::start` builds the [`Runtime`] ([`build`]), opens storage and recovers it, starts
//! the admin listener, binds the MQTT listeners and the periodic tasks; [`BrokerHandle`]
//! controls the running broker (stats, reload, shutdown) and implements the
//! [`Control`] interface the operator surfaces use. Reload ([`reload`]) and graceful
//! shutdown ([`shutdown`]) live beside it.
//!
//! Owns the running listeners. The only module that imports every layer; nothing imports
//! it but the binary and embedders.

mod build;
mod dashboard;
mod reload;
mod shutdown;
#[cfg(test)]
mod tests;

pub use crate::core::{ReloadStatus, Runtime};
pub(crate) use build::{build_runtime, build_runtime_with};

use crate::config::{Config, ListenerConfig, StorageType};
use crate::core::control::{
    AppliedConfig, BoxFuture, ClientDetail, ClientSummary, Control, TailLimits, TailMessage,
};
use crate::core::Core;
use crate::metrics::{Counters, StatsSnapshot};
use crate::model::{Message, TransportKind};
use crate::storage::{FileStorage, Storage, StorageHandle};
use crate::transport;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tracing::{info, warn};

/// Why the broker could not start, or a reload was refused.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A certificate or key file could not be loaded, or a listener could not be bound.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// A password or ACL file could not be loaded.
    #[error(transparent)]
    Security(#[from] crate::auth::SecurityConfigError),
    /// The store could not be opened or loaded.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A reload step failed unexpectedly.
    #[error("reload failed: {0}")]
    Reload(String),
    /// A Wasm plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] crate::plugins::PluginError),
    /// The cluster (NATS JetStream) could not be joined.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
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

/// What the server owns beside the core: the running listeners.
pub(crate) struct Server {
    /// Running listeners; the async lock also serializes reloads.
    listeners: tokio::sync::Mutex<Vec<transport::listeners::RunningListener>>,
    /// Snapshot of the bound listeners for synchronous readers.
    bound: Mutex<Vec<BoundListener>>,
    /// The configuration the broker started with: what restart-only settings run with.
    started: Config,
    /// Pending-restart settings already logged (key, configured value).
    pending_logged: Mutex<std::collections::HashSet<(&'static str, String)>>,
    /// Applied to every configuration read from the file (command-line options).
    overrides: Mutex<Option<ConfigOverrides>>,
    /// The running bridges to remote brokers.
    bridges: crate::bridge::Bridges,
    /// The cluster link's shared state when `cluster:` is configured.
    cluster: Option<Arc<crate::cluster::ClusterShared>>,
    /// Fingerprint of the config files the dashboard wrote and applied, so that the config
    /// watcher does not reload the same content a second time.
    applied_fingerprint: Arc<std::sync::atomic::AtomicU64>,
}

/// Changes applied to every configuration the broker reads from its file, so that
/// command-line options (`-p`, `-v`, `--log-file`) survive reloads.
pub type ConfigOverrides = Arc<dyn Fn(&mut Config) + Send + Sync>;

impl Server {
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
}

/// Control of a running broker.
#[derive(Clone)]
pub struct BrokerHandle {
    core: Arc<Core>,
    server: Arc<Server>,
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
    /// [`crate::storage::MemoryStorage`] shared with a previous broker in the same process).
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
        let started = config.clone();
        let runtime = build_runtime(config, 1)?;
        // A cluster node joins NATS before anything else: it never serves on its own, and
        // its persistent sessions live in JetStream (every batch stored when applied).
        let link = match &runtime.config.cluster {
            Some(c) => Some(crate::cluster::ClusterLink::connect(c, &runtime.config.node()).await?),
            None => None,
        };
        let (storage, mode) = match &link {
            Some(l) => (
                Some(l.session_store()),
                crate::storage::writer::SyncMode::Always,
            ),
            None => (
                storage,
                crate::storage::writer::SyncMode::from_config(&runtime.config.persistence),
            ),
        };
        // The writer thread only starts; nothing is written before recovery is done.
        let writer = storage
            .as_ref()
            .map(|s| Arc::new(StorageHandle::start(s.clone(), mode)));
        let cluster = link.as_ref().map(|l| l.shared());
        let mut local_router = None;
        let core = Arc::new(Core::with_router(runtime, writer, |local| {
            local_router = Some(local.clone());
            match &cluster {
                Some(shared) => Arc::new(crate::cluster::router::ClusterRouter::new(
                    local,
                    shared.clone(),
                )),
                None => local,
            }
        }));
        if let Some(l) = &link {
            let _ = core.directory.set(l.directory());
        }
        Core::install_plugins(&core, &core.runtime.load().plugins);
        let handle = BrokerHandle {
            core: core.clone(),
            server: Arc::new(Server {
                listeners: tokio::sync::Mutex::new(Vec::new()),
                bound: Mutex::new(Vec::new()),
                started,
                pending_logged: Mutex::new(Default::default()),
                overrides: Mutex::new(None),
                bridges: Default::default(),
                cluster,
                applied_fingerprint: Default::default(),
            }),
        };
        let control: Arc<dyn Control> = Arc::new(handle.clone());
        // The admin listener opens first, so that during a long recovery `/healthz` answers
        // and `/readyz` says 503 ("starting") instead of refusing connections.
        crate::admin::start(control.clone()).await;
        let stop_on_error = |e: BrokerError| {
            // Also stops bridges started before a listener failed to bind.
            core.shutdown.cancel();
            core.ops.stop.cancel();
            if let Some(h) = &core.storage {
                h.close();
            }
            e
        };
        // Recovery happens before any MQTT listener opens: clients only ever see a complete
        // state.
        if let Some(storage) = storage {
            let started = std::time::Instant::now();
            // Streamed into the live structures as it is read, so that recovery never holds
            // the whole store decoded next to them (peak memory).
            let into = core.clone();
            let (sessions, retained) = tokio::task::spawn_blocking(move || {
                let mut sink = crate::storage::FnSink::new(
                    |chunk| into.router.restore_retained(chunk),
                    |session| {
                        into.registry.recover(crate::storage::Recovered {
                            retained: Vec::new(),
                            sessions: vec![session],
                        })
                    },
                );
                storage
                    .load_into(&mut sink)
                    .map(|()| (sink.sessions, sink.retained))
            })
            .await
            .map_err(|e| stop_on_error(BrokerError::Reload(e.to_string())))?
            .map_err(|e| stop_on_error(e.into()))?;
            info!(
                sessions,
                retained,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "storage recovered"
            );
            // Sessions that expired while the broker was down go before any client can
            // reconnect to them.
            core.registry.expire_sessions();
            // Delayed wills that were waiting when the broker stopped (published at once if
            // already due).
            for entry in core.registry.entries() {
                core.schedule_will(entry);
            }
        }
        if let (Some(link), Some(local)) = (link, local_router) {
            let weak = Arc::downgrade(&core);
            let link_state = Arc::new(move |state: crate::cluster::LinkState| {
                let Some(core) = weak.upgrade() else {
                    return;
                };
                core.ops
                    .events
                    .emit(|| crate::events::BrokerEvent::ClusterLink {
                        state: match state {
                            crate::cluster::LinkState::Up => "up",
                            crate::cluster::LinkState::Down => "down",
                            crate::cluster::LinkState::Isolated => "isolated",
                        },
                    });
                let down = state != crate::cluster::LinkState::Up;
                core.ops
                    .cluster_down
                    .store(down, std::sync::atomic::Ordering::Relaxed);
                if state == crate::cluster::LinkState::Isolated {
                    let n = core.ops.close_all(|| {
                        crate::model::CloseReason::ClusterUnavailable(
                            "this node is cut off from its cluster".into(),
                        )
                    });
                    warn!(
                        clients = n,
                        "cluster: disconnected every client of this isolated node"
                    );
                }
            });
            link.run(Arc::downgrade(&core), local, link_state)
                .await
                .map_err(|e| stop_on_error(e.into()))?;
        }
        // Bridges start before the listeners: their sessions here subscribe first, so no
        // client can publish a message for a remote before its bridge listens.
        drop(
            handle
                .server
                .bridges
                .apply(&core, &core.runtime.load().config),
        );
        handle
            .server
            .bridges
            .wait_local_ready(Duration::from_secs(5))
            .await;
        let running = transport::listeners::start_all(&listeners, &core)
            .await
            .map_err(|e| stop_on_error(e.into()))?;
        let server = &handle.server;
        server.set_listeners(running, &mut *server.listeners.lock().await);
        let sweeper = core.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = sweeper.shutdown.cancelled() => break,
                    _ = tick.tick() => { sweeper.registry.expire_sessions(); }
                }
            }
        });
        let keep_alives = core.clone();
        tokio::spawn(async move {
            // Keep-alive deadlines are checked here for every connection; a connection is
            // closed at most one tick after 1.5 × its keep-alive [MQTT-3.1.2-24].
            let mut tick = tokio::time::interval(KEEP_ALIVE_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = keep_alives.ops.stop.cancelled() => break,
                    _ = tick.tick() => keep_alives.ops.expire_keep_alives(),
                }
            }
        });
        // Storage was recovered above, before any listener opened: now the broker is ready.
        core.ops.ready.store(true, Ordering::Relaxed);
        crate::admin::sys::spawn(control);
        Ok(handle)
    }
}

/// How often keep-alive deadlines are checked (how late a silent client may be closed).
const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(100);

impl BrokerHandle {
    /// Address of the first listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.bound.lock()[0].addr
    }

    /// State and counters of each loaded Wasm plugin, in call order.
    pub fn plugin_stats(&self) -> Vec<crate::plugins::PluginStats> {
        self.core.runtime.load().plugins.stats()
    }

    /// Every bound listener, in configured order.
    pub fn listeners(&self) -> Vec<BoundListener> {
        self.server.bound.lock().clone()
    }

    /// Generation of the configuration in force (1 at start, +1 per successful reload).
    pub fn generation(&self) -> u64 {
        self.core.runtime.load().generation
    }

    /// Outcome of the last reload attempt.
    pub fn last_reload(&self) -> ReloadStatus {
        self.core.last_reload.lock().clone()
    }

    /// Applies a new configuration live, as one transaction (see the README's "Change config
    /// without restarting"). Returns the new generation, or why nothing changed.
    pub async fn reload(&self, config: Config) -> Result<u64, BrokerError> {
        reload::reload(&self.core, &self.server, config).await
    }

    /// Re-reads `path` and applies it live; a file that does not parse changes nothing.
    pub async fn reload_from_file(&self, path: &std::path::Path) -> Result<u64, BrokerError> {
        match Config::load(path) {
            Ok(mut config) => {
                let overrides = self.server.overrides.lock().clone();
                if let Some(apply) = overrides {
                    apply(&mut config);
                }
                self.reload(config).await
            }
            Err(e) => {
                let err = BrokerError::Config(e);
                reload::record(&self.core, Err(&err), None);
                Err(err)
            }
        }
    }

    /// Watches `path`, the files it names and the plugin directory, and reloads on change
    /// (debounced). Runs until the broker shuts down.
    pub fn watch_config(
        &self,
        path: std::path::PathBuf,
    ) -> Result<(), crate::admin::watch::WatchError> {
        self.set_config_path(path.clone());
        crate::admin::watch::spawn(
            Arc::new(self.clone()),
            path,
            self.server.applied_fingerprint.clone(),
        )
    }

    /// Counters and sizes right now.
    pub fn stats(&self) -> StatsSnapshot {
        self.core.stats()
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.core.runtime.load().config.clone()
    }

    /// Graceful shutdown: readiness turns 503, then (after `server.drain_delay`) listeners
    /// stop accepting and every connection is closed after acknowledging what it already
    /// sent; waits up to `server.shutdown_timeout` for them to end. Returns whether every
    /// connection ended in time.
    pub async fn shutdown(self) -> bool {
        shutdown::shutdown(&self.core, &self.server).await
    }

    /// Address of the admin HTTP listener, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.core.ops.admin_addr.lock()
    }

    /// A receiver of typed broker events (see [`crate::events`]): bounded; a receiver that
    /// falls behind by more than [`crate::events::EVENT_CAPACITY`] events gets
    /// `RecvError::Lagged(missed)` and continues with the oldest event still held, so a slow
    /// consumer never slows the broker.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<crate::events::BrokerEvent> {
        self.core.ops.events.subscribe()
    }

    /// Changes to apply to every configuration read from the file from now on (the
    /// binary's command-line options), so that a reload keeps them.
    pub fn set_config_overrides(&self, overrides: ConfigOverrides) {
        *self.server.overrides.lock() = Some(overrides);
    }

    /// Tells the broker which file it was started from, for `POST /api/v1/reload`.
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        *self.core.ops.config_path.lock() = Some(path);
    }

    /// Whether `/readyz` would answer 200: listeners bound and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.core.ops.is_ready()
    }

    /// Convenience for tests and embedders: a listener config on loopback with a free port.
    pub fn loopback_listener() -> ListenerConfig {
        ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

impl Control for BrokerHandle {
    fn stats(&self) -> StatsSnapshot {
        self.core.stats()
    }

    fn counters(&self) -> &Counters {
        &self.core.counters
    }

    fn runtime(&self) -> Arc<Runtime> {
        self.core.runtime.load_full()
    }

    fn persistent_sessions(&self) -> usize {
        self.core
            .registry
            .entries()
            .iter()
            .filter(|e| !e.state().clean_session)
            .count()
    }

    fn clients(&self, offset: usize, limit: usize) -> (usize, Vec<ClientSummary>) {
        // Copy the page out first: session locks are never taken under the directory lock.
        let (total, page) = {
            let clients = self.core.ops.clients.lock();
            let page: Vec<_> = clients
                .values()
                .skip(offset)
                .take(limit)
                .map(|r| (r.client.clone(), r.since, r.entry.clone()))
                .collect();
            (clients.len(), page)
        };
        let views = page
            .into_iter()
            .map(|(client, since, entry)| dashboard::summary(&client, since, &entry))
            .collect();
        (total, views)
    }

    fn find_clients(
        &self,
        query: &str,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<ClientSummary>) {
        self.find_clients_impl(query, offset, limit)
    }

    fn client_detail(&self, client_id: &str) -> Option<ClientDetail> {
        self.client_detail_impl(client_id)
    }

    fn subscription_filters(&self) -> Vec<(String, usize)> {
        self.subscription_filters_impl()
    }

    fn retained_page(&self, prefix: &str, offset: usize, limit: usize) -> (usize, Vec<Message>) {
        self.core.router.retained_page(prefix, offset, limit)
    }

    fn tail(
        &self,
        filter: &str,
        limits: TailLimits,
    ) -> Result<tokio::sync::mpsc::Receiver<TailMessage>, String> {
        self.tail_impl(filter, limits)
    }

    fn reload_history(&self) -> Vec<ReloadStatus> {
        self.core
            .reload_history
            .lock()
            .newest_first()
            .cloned()
            .collect()
    }

    fn validate_config<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.validate_config_impl(text)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn apply_config<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<AppliedConfig, String>> {
        Box::pin(self.apply_config_impl(text))
    }

    fn disconnect(&self, client_id: &str) -> usize {
        self.core.ops.kick(client_id)
    }

    fn reload_from_file<'a>(
        &'a self,
        path: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            BrokerHandle::reload_from_file(self, path)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn last_reload(&self) -> ReloadStatus {
        BrokerHandle::last_reload(self)
    }

    fn config_path(&self) -> Option<std::path::PathBuf> {
        self.core.ops.config_path.lock().clone()
    }

    fn is_ready(&self) -> bool {
        self.core.ops.is_ready()
    }

    fn is_draining(&self) -> bool {
        self.core.ops.draining.load(Ordering::Relaxed)
    }

    fn started(&self) -> (std::time::Instant, std::time::SystemTime) {
        (self.core.ops.started, self.core.ops.started_at)
    }

    fn bridges(&self) -> Vec<crate::core::control::BridgeSummary> {
        self.server.bridges.summaries(&self.core)
    }

    fn cluster(&self) -> Option<crate::core::control::ClusterSummary> {
        self.server.cluster.as_ref().map(|c| c.summary())
    }

    fn publish(&self, message: Message) {
        self.core.publish(message);
    }

    fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.core.reload_tx.subscribe()
    }

    fn shutting_down(&self) -> tokio_util::sync::CancellationToken {
        self.core.shutdown.clone()
    }

    fn stopped(&self) -> tokio_util::sync::CancellationToken {
        self.core.ops.stop.clone()
    }

    fn set_admin_addr(&self, addr: SocketAddr) {
        *self.core.ops.admin_addr.lock() = Some(addr);
    }
}
