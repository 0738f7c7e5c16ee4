//! Graceful shutdown: readiness turns 503, listeners stop accepting after the drain delay,
//! every connection handles what its client already sent and closes (reason: shutdown),
//! and the store is made durable before the process may exit.

use super::Server;
use crate::core::Core;
use crate::metrics::Counters;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{info, warn};

/// The graceful shutdown behind `BrokerHandle::shutdown` (see its documentation).
pub(super) async fn shutdown(core: &Arc<Core>, server: &Server) -> bool {
    let (timeout, drain_delay) = {
        let runtime = core.runtime.load();
        let s = &runtime.config.server;
        (s.shutdown_timeout.get(), s.drain_delay.get())
    };
    let deadline = tokio::time::Instant::now() + timeout;
    core.ops.draining.store(true, Ordering::Relaxed);
    info!(
        timeout = ?timeout,
        connections = Counters::get(&core.counters.connections),
        "shutdown started: readiness is now 503"
    );
    if !drain_delay.is_zero() {
        tokio::time::sleep(drain_delay.min(timeout)).await;
    }
    for l in std::mem::take(&mut *server.listeners.lock().await) {
        l.stop(false);
    }
    // Bridges tell their remotes they are going (state 0) while this broker still routes.
    server.bridges.stop_all().await;
    // Each connection acknowledges what it already received, flushes and closes.
    core.shutdown.cancel();
    core.ops.close_cancelled();
    while Counters::get(&core.counters.connections) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let remaining = Counters::get(&core.counters.connections);
    if let Some(storage) = core.storage.clone() {
        // Everything journaled is written and made durable before the process may exit.
        let _ = tokio::task::spawn_blocking(move || storage.close()).await;
    }
    core.ops.stop.cancel();
    if remaining > 0 {
        warn!(
            remaining,
            "shutdown_timeout elapsed; remaining connections abandoned"
        );
    } else {
        info!("broker stopped");
    }
    remaining == 0
}
