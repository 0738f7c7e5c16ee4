//! Live reload: a new configuration applied as one transaction. The complete runtime (files,
//! certificates, plugins) is built and new listeners bound first; only when all of it
//! succeeded is the runtime swapped in one store. Any error leaves the running state
//! untouched and is recorded (status, event, counter, log).
//!
//! A reload never gets stuck on a setting that only a restart can apply (the thread pool,
//! the admin listener, the store): everything else is applied, and such settings are
//! recorded as pending ([`PendingRestart`]), logged once with their running and configured
//! values, shown by `GET /api/v1/reload` and counted by `mqtt_config_pending_restart`.

use super::{build_runtime_with, BrokerError, Server};
use crate::config::Config;
use crate::config::StorageType;
use crate::core::{Core, PendingRestart, ReloadStatus, Runtime};
use crate::metrics::Counters;
use crate::transport;
use std::sync::Arc;
use tracing::info;

/// Applies `config` (see the module documentation); returns the new generation.
pub(super) async fn reload(
    core: &Arc<Core>,
    server: &Server,
    config: Config,
) -> Result<u64, BrokerError> {
    let mut running = server.listeners.lock().await;
    let current = core.runtime.load_full();
    let pending = restart_only_changes(&server.started, &config);
    let result = reload_locked(core, server, &current, config, &mut running).await;
    if result.is_ok() {
        log_pending_once(server, &pending);
        record(core, result.as_ref().map(|g| *g), Some(pending));
    } else {
        record(core, result.as_ref().map(|g| *g), None);
    }
    result
}

/// The `cluster:` key whose change a reload refuses: joining or leaving a cluster, or
/// another NATS, prefix or replication, would strand this node's sessions and streams.
/// `publish_timeout` is read live.
fn cluster_change(running: &Config, new: &Config) -> Option<String> {
    match (&running.cluster, &new.cluster) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => Some("cluster".into()),
        (Some(_), Some(_)) if running.node() != new.node() => Some("node_name".into()),
        (Some(a), Some(b)) => a.changed_key(b).map(|k| format!("cluster.{k}")),
    }
}

/// The settings that differ between the running broker (as started) and `new` but are only
/// applied by a restart. A storage setting that has no effect (no file store before or
/// after) is not pending.
pub(super) fn restart_only_changes(running: &Config, new: &Config) -> Vec<PendingRestart> {
    let mut pending = Vec::new();
    let mut diff = |key: &'static str, a: String, b: String| {
        if a != b {
            pending.push(PendingRestart {
                key,
                running: a,
                configured: b,
            });
        }
    };
    diff(
        "performance.worker_threads",
        running.performance.worker_threads.to_string(),
        new.performance.worker_threads.to_string(),
    );
    diff(
        "admin.enabled",
        running.admin.enabled.to_string(),
        new.admin.enabled.to_string(),
    );
    if running.admin.enabled && new.admin.enabled {
        diff(
            "admin.bind",
            running.admin.bind.to_string(),
            new.admin.bind.to_string(),
        );
    }
    let (a, b) = (&running.persistence, &new.persistence);
    let kind = |t: StorageType| format!("{t:?}").to_lowercase();
    diff(
        "persistence.storage_type",
        kind(a.storage_type),
        kind(b.storage_type),
    );
    if a.storage_type == StorageType::File && b.storage_type == StorageType::File {
        diff(
            "persistence.path",
            a.path.display().to_string(),
            b.path.display().to_string(),
        );
        diff(
            "persistence.sync",
            format!("{:?}", a.sync).to_lowercase(),
            format!("{:?}", b.sync).to_lowercase(),
        );
        diff(
            "persistence.sync_interval",
            a.sync_interval.to_string(),
            b.sync_interval.to_string(),
        );
        diff(
            "persistence.cache_size",
            a.cache_size.to_string(),
            b.cache_size.to_string(),
        );
    }
    pending
}

/// Logs each pending setting once (per configured value), naming its key and both values.
fn log_pending_once(server: &Server, pending: &[PendingRestart]) {
    let mut logged = server.pending_logged.lock();
    for p in pending {
        if logged.insert((p.key, p.configured.clone())) {
            tracing::warn!(
                key = p.key,
                running = %p.running,
                configured = %p.configured,
                "setting changed; it takes effect after a restart (pending restart); everything else was applied"
            );
        }
    }
}

/// Records the outcome of a reload attempt: status, event, counter and log line. A failed
/// attempt keeps the pending-restart list of the configuration in force (`None`).
pub(super) fn record(
    core: &Core,
    result: Result<u64, &BrokerError>,
    pending: Option<Vec<PendingRestart>>,
) {
    let generation = core.runtime.load().generation;
    let pending_restart =
        pending.unwrap_or_else(|| core.last_reload.lock().pending_restart.clone());
    let status = ReloadStatus {
        generation,
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| e.to_string()),
        at: std::time::SystemTime::now(),
        pending_restart,
    };
    *core.last_reload.lock() = status.clone();
    core.reload_history.lock().push(status.clone());
    core.ops
        .events
        .emit(|| crate::events::BrokerEvent::ConfigReloaded {
            generation: status.generation,
            ok: status.ok,
            error: status.error,
        });
    match result {
        Ok(generation) => {
            Counters::inc(&core.counters.reloads_ok);
            info!(generation, "configuration reloaded");
        }
        Err(e) => {
            Counters::inc(&core.counters.reloads_failed);
            tracing::error!(error = %e, generation, "configuration reload refused; the running configuration stays in force");
        }
    }
}

async fn reload_locked(
    core: &Arc<Core>,
    server: &Server,
    current: &Arc<Runtime>,
    config: Config,
    running: &mut Vec<transport::listeners::RunningListener>,
) -> Result<u64, BrokerError> {
    let generation = current.generation + 1;
    if let Some(key) = cluster_change(&current.config, &config) {
        return Err(BrokerError::Reload(format!(
            "{key} cannot change while the node runs (restart the node to apply it); nothing was changed"
        )));
    }
    // Reading files and compiling plugins is slow: keep it off the async workers.
    let kv = current.plugin_kv.clone();
    let runtime =
        tokio::task::spawn_blocking(move || build_runtime_with(config, generation, Some(kv)))
            .await
            .map_err(|e| BrokerError::Reload(e.to_string()))??;
    let desired = runtime.config.effective_listeners();
    let plan = match transport::listeners::prepare(std::mem::take(running), &desired).await {
        Ok(plan) => plan,
        Err((unchanged, e)) => {
            *running = unchanged;
            return Err(e.into());
        }
    };
    crate::core::Core::install_plugins(core, &runtime.plugins);
    if let (Some(link), Some(c)) = (&server.cluster, &runtime.config.cluster) {
        link.apply_live(c);
    }
    core.runtime.store(Arc::new(runtime));
    let now_running = transport::listeners::commit(plan, core).await;
    server.set_listeners(now_running, running);
    // Lowered limits apply to new work; nothing already queued is dropped.
    core.registry.set_limits(&core.runtime.load());
    crate::logging::apply(&core.runtime.load().config.log);
    // Only bridges whose entry changed restart; the stopped ones say goodbye meanwhile.
    let stopped = server.bridges.apply(core, &core.runtime.load().config);
    tokio::spawn(crate::bridge::wait(stopped));
    let _ = core.reload_tx.send(generation);
    core.ops.reloaded();
    Ok(generation)
}
