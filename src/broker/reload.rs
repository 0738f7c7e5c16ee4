//! Live reload: a new configuration applied as one transaction. The complete runtime (files,
//! certificates, plugins) is built and new listeners bound first; only when all of it
//! succeeded is the runtime swapped in one store. Any error leaves the running state
//! untouched and is recorded (status, event, counter, log).

use super::{build_runtime, BrokerError, Server};
use crate::config::Config;
use crate::core::{Core, ReloadStatus, Runtime};
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
    let result = reload_locked(core, server, &current, config, &mut running).await;
    record(core, result.as_ref().map(|g| *g));
    result
}

/// Records the outcome of a reload attempt: status, event, counter and log line.
pub(super) fn record(core: &Core, result: Result<u64, &BrokerError>) {
    let generation = core.runtime.load().generation;
    let status = ReloadStatus {
        generation,
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| e.to_string()),
        at: std::time::SystemTime::now(),
    };
    *core.last_reload.lock() = status.clone();
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
    if config.performance.worker_threads != current.config.performance.worker_threads {
        return Err(BrokerError::NotReloadable("performance.worker_threads"));
    }
    super::build::check_reload(&current.config.admin, &config.admin)?;
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
            return Err(e.into());
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
    runtime.plugins.set_events(&core.ops.events);
    core.runtime.store(Arc::new(runtime));
    let now_running = transport::listeners::commit(plan, core).await;
    server.set_listeners(now_running, running);
    // Lowered limits apply to new work; nothing already queued is dropped.
    core.registry.set_limits(limits);
    crate::logging::apply(&core.runtime.load().config.log);
    let _ = core.reload_tx.send(generation);
    Ok(generation)
}
