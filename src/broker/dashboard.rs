//! What the dashboard asks of a running broker beyond the original admin API: client
//! search and detail, subscription filters, the retained browser, the live tail, and
//! config validation and apply. The [`Control`](crate::core::control::Control) impl in
//! `super` delegates here, so that the wiring module stays small.

use super::{BrokerError, BrokerHandle};
use crate::config::Config;
use crate::core::control::{
    AppliedConfig, ClientDetail, ClientSummary, SubscriptionView, TailLimits, TailMessage,
};
use crate::core::ops::ClientRecord;
use crate::core::registry::SessionEntry;
use crate::core::Core;
use crate::hooks::{AclAction, AclRequest};
use crate::model::{ClientInfo, Subscription, TransportKind};
use crate::protocol::topic::{parse_shared, validate_topic_filter};
use crate::protocol::{Packet, ProtocolLevel, QoS};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// Messages a tail may have waiting for the browser; beyond it newer ones are skipped
/// (and counted) instead of growing memory behind a slow connection.
const TAIL_BUFFER: usize = 256;

/// Numbers the dashboard's tail sessions, so that concurrent tails are distinct clients.
static TAIL_SEQ: AtomicU64 = AtomicU64::new(1);

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The list view of one connected client.
pub(super) fn summary(
    client: &ClientInfo,
    since: SystemTime,
    entry: &SessionEntry,
) -> ClientSummary {
    let state = entry.state();
    ClientSummary {
        id: client.client_id.to_string(),
        address: client.peer.to_string(),
        transport: client.transport.as_str(),
        username: client.username.clone(),
        protocol: client.protocol.as_str(),
        clean_session: client.clean_session,
        session_expiry_interval: state.expiry_interval,
        connected_since: millis(since),
        subscriptions: state.subscriptions.len(),
        queue_depth: state.queued(),
        queued_bytes: state.queued_bytes(),
        inflight: state.inflight().count(),
    }
}

/// Whether a client matches a dashboard search (id, user name or address, ignoring case).
fn matches(record: &ClientRecord, needle: &str) -> bool {
    let c = &record.client;
    c.client_id.to_lowercase().contains(needle)
        || c.username
            .as_deref()
            .is_some_and(|u| u.to_lowercase().contains(needle))
        || c.peer.to_string().contains(needle)
}

impl BrokerHandle {
    /// See [`crate::core::control::Control::find_clients`].
    pub(super) fn find_clients_impl(
        &self,
        query: &str,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<ClientSummary>) {
        let needle = query.trim().to_lowercase();
        // Copy the page out first: session locks are never taken under the directory lock.
        let (total, page) = {
            let clients = self.core.ops.clients.lock();
            let mut total = 0;
            let mut page = Vec::new();
            for r in clients.values().filter(|r| matches(r, &needle)) {
                if total >= offset && page.len() < limit {
                    page.push((r.client.clone(), r.since, r.entry.clone()));
                }
                total += 1;
            }
            (total, page)
        };
        let views = page
            .iter()
            .map(|(client, since, entry)| summary(client, *since, entry))
            .collect();
        (total, views)
    }

    /// See [`crate::core::control::Control::client_detail`].
    pub(super) fn client_detail_impl(&self, client_id: &str) -> Option<ClientDetail> {
        let (found, connections) = {
            let clients = self.core.ops.clients.lock();
            let mut found = None;
            let mut n = 0;
            for r in clients
                .values()
                .filter(|r| &*r.client.client_id == client_id)
            {
                n += 1;
                // The newest connection is the one that owns the session.
                found = Some((r.client.clone(), r.since, r.entry.clone()));
            }
            (found, n)
        };
        let (client, since, entry) = found?;
        let summary = summary(&client, since, &entry);
        let subscription_filters = entry
            .state()
            .subscriptions
            .iter()
            .map(|(filter, sub)| SubscriptionView {
                filter: filter.clone(),
                qos: sub.qos as u8,
            })
            .collect();
        Some(ClientDetail {
            summary,
            subscription_filters,
            connections,
        })
    }

    /// See [`crate::core::control::Control::subscription_filters`].
    pub(super) fn subscription_filters_impl(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for entry in self.core.registry.entries() {
            for filter in entry.state().subscriptions.keys() {
                *counts.entry(filter.clone()).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }

    /// See [`crate::core::control::Control::tail`].
    pub(super) fn tail_impl(
        &self,
        filter: &str,
        limits: TailLimits,
    ) -> Result<tokio::sync::mpsc::Receiver<TailMessage>, String> {
        validate_topic_filter(filter).map_err(|e| format!("invalid topic filter: {e}"))?;
        if parse_shared(filter).is_some() {
            // A tail must only look: joining a group would take messages from its members.
            return Err("a live tail cannot join a shared subscription ($share/...)".into());
        }
        let runtime = self.core.runtime.load_full();
        let user = runtime.config.admin.dashboard_user.trim();
        let seq = TAIL_SEQ.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(ClientInfo {
            client_id: Arc::from(format!("$dashboard-tail-{seq}")),
            username: (!user.is_empty()).then(|| user.to_owned()),
            peer: self
                .admin_addr()
                .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            transport: TransportKind::Tcp,
            tls_identity: None,
            protocol: ProtocolLevel::V311,
            clean_session: true,
        });
        let request = AclRequest {
            action: AclAction::Subscribe,
            topic: filter,
            qos: QoS::AtMostOnce,
            retain: false,
        };
        if !runtime.security.authorize(&client, &request) {
            warn!(%filter, user, "dashboard live tail refused by the ACL");
            return Err(format!(
                "the ACL does not let the dashboard identity (user `{user}`, admin.dashboard_user) subscribe to `{filter}`"
            ));
        }
        let entry = SessionEntry::detached(client, runtime.session_limits());
        let filter = filter.to_owned();
        self.core
            .router
            .subscribe(&entry, &filter, Subscription::qos(QoS::AtMostOnce));
        info!(%filter, client_id = %entry.client_id, "dashboard live tail started");
        let (tx, rx) = tokio::sync::mpsc::channel(TAIL_BUFFER);
        let core = self.core.clone();
        tokio::spawn(run_tail(core, entry, filter, limits, tx));
        Ok(rx)
    }

    /// See [`crate::core::control::Control::validate_config`]: what `--check-config` runs.
    pub(super) async fn validate_config_impl(&self, text: &str) -> Result<Config, BrokerError> {
        let path = self.config_path_or_default();
        let overrides = self.server.overrides.lock().clone();
        let text = text.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut config = Config::parse(&text, &path)?;
            if let Some(dir) = path.parent() {
                config.resolve_paths(dir);
            }
            if let Some(apply) = overrides {
                apply(&mut config);
            }
            super::Broker::check(config.clone())?;
            Ok(config)
        })
        .await
        .map_err(|e| BrokerError::Reload(format!("validation stopped unexpectedly: {e}")))?
    }

    /// See [`crate::core::control::Control::apply_config`].
    pub(super) async fn apply_config_impl(&self, text: &str) -> Result<AppliedConfig, String> {
        let config = match self.validate_config_impl(text).await {
            Ok(c) => c,
            Err(e) => {
                // An attempt like any other: in the reload history, counted, logged.
                super::reload::record(&self.core, Err(&e), None);
                return Err(e.to_string());
            }
        };
        let Some(path) = self.core.ops.config_path.lock().clone() else {
            // Started without a file: applied live, and said so (nothing to write).
            let generation = self.reload(config).await.map_err(|e| e.to_string())?;
            info!(generation, "configuration applied from the dashboard (not saved: the broker runs without a config file)");
            return Ok(AppliedConfig {
                generation,
                saved_to: None,
            });
        };
        let previous =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        write_atomically(&path, text.as_bytes())?;
        // The config watcher (when running) sees this write within its debounce: it is being
        // applied here, so the watcher must not apply it a second time.
        let applied = crate::admin::watch::files_fingerprint(&path, &config);
        self.server
            .applied_fingerprint
            .store(applied, std::sync::atomic::Ordering::Release);
        match BrokerHandle::reload_from_file(self, &path).await {
            Ok(generation) => {
                info!(generation, path = %path.display(), "configuration written and applied from the dashboard");
                Ok(AppliedConfig {
                    generation,
                    saved_to: Some(path),
                })
            }
            Err(e) => {
                // Refused (a listener that cannot bind, a file that changed meanwhile): the
                // file goes back to what the running broker was started from.
                if let Err(restore) = write_atomically(&path, &previous) {
                    tracing::error!(path = %path.display(), error = %restore, "cannot restore the config file after a refused reload");
                    return Err(format!(
                        "{e}; and restoring the previous file failed: {restore}"
                    ));
                }
                Err(e.to_string())
            }
        }
    }

    /// The config file, or where relative paths of a config typed into the dashboard of a
    /// broker without one are taken from (the working directory).
    fn config_path_or_default(&self) -> PathBuf {
        self.core
            .ops
            .config_path
            .lock()
            .clone()
            .unwrap_or_else(|| PathBuf::from("./<dashboard>"))
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so that
/// the broker (and its watcher) never read a half-written config. Blocking, but a config
/// file is small and this runs once per apply from the dashboard.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let tmp = path.with_file_name(format!(".{name}.dashboard-tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        // Keep the permissions of the file being replaced.
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// Forwards what reaches the tail's session to the receiver until a limit is reached, the
/// receiver is gone or the broker stops; then unsubscribes.
async fn run_tail(
    core: Arc<Core>,
    entry: Arc<SessionEntry>,
    filter: String,
    limits: TailLimits,
    tx: tokio::sync::mpsc::Sender<TailMessage>,
) {
    let deadline = tokio::time::Instant::now() + limits.max_duration;
    let mut sent = 0usize;
    let mut skipped = 0u64;
    let mut out = Vec::new();
    'tail: while sent < limits.max_messages {
        tokio::select! {
            _ = entry.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tx.closed() => break,
            _ = core.shutdown.cancelled() => break,
        }
        entry.state().drain(&mut out);
        for packet in out.drain(..) {
            let Packet::Publish(p) = packet else { continue };
            let message = TailMessage {
                topic: p.topic,
                payload: p.payload,
                at: millis(SystemTime::now()),
            };
            match tx.try_send(message) {
                Ok(()) => sent += 1,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => skipped += 1,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break 'tail,
            }
            if sent >= limits.max_messages {
                break 'tail;
            }
        }
    }
    core.router.unsubscribe(&entry, &filter);
    info!(%filter, client_id = %entry.client_id, sent, skipped, "dashboard live tail ended");
}
