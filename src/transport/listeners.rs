//! The set of running listeners and how a reload changes it: new listeners are bound,
//! removed ones stop accepting (and close their clients only when the config says
//! `drain: true`), unchanged ones are never touched.

use super::TransportError;
use super::{accept_loop, bind};
use crate::config::ListenerConfig;
use crate::core::Core;
use crate::model::TransportKind;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// A bound listener with its accept task.
pub(crate) struct RunningListener {
    /// The listener's config as bound.
    pub config: ListenerConfig,
    /// Name used as its key.
    pub name: String,
    /// Actual address (the real port when 0 was configured).
    pub addr: SocketAddr,
    /// Cancelling it closes this listener's connections.
    pub connections: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningListener {
    /// Stops accepting; with `drain`, also closes every connection it accepted.
    pub fn stop(self, drain: bool) {
        self.task.abort();
        if drain {
            self.connections.cancel();
        }
        info!(listener = %self.name, addr = %self.addr, drain, "listener stopped");
    }

    /// Whether a desired listener can keep this socket: same name, address and protocol.
    /// Other settings (path, limits, certificates) are read from the runtime per connection.
    pub fn matches(&self, desired: &ListenerConfig) -> bool {
        self.name == desired.display_name()
            && self.config.bind == desired.bind
            && self.config.protocol == desired.protocol
    }

    /// Transport protocol.
    pub fn transport(&self) -> TransportKind {
        self.config.protocol
    }
}

/// Starts accepting on a bound socket.
fn run_listener(config: &ListenerConfig, socket: TcpListener, core: &Arc<Core>) -> RunningListener {
    let name = config.display_name();
    let addr = socket.local_addr().unwrap_or(config.bind);
    let connections = core.shutdown.child_token();
    let task = tokio::spawn(accept_loop(
        socket,
        config.clone(),
        core.clone(),
        connections.clone(),
    ));
    info!(listener = %name, %addr, protocol = config.protocol.as_str(), "listening");
    RunningListener {
        config: config.clone(),
        name,
        addr,
        connections,
        task,
    }
}

async fn bind_checked(config: &ListenerConfig) -> Result<TcpListener, TransportError> {
    bind(config).await.map_err(|source| TransportError::Bind {
        name: config.display_name(),
        addr: config.bind,
        source,
    })
}

/// A listener change, prepared but not yet in force.
pub(crate) struct ListenerPlan {
    keep: Vec<RunningListener>,
    gone: Vec<RunningListener>,
    bound: Vec<(ListenerConfig, TcpListener)>,
    /// New listeners whose address is still held by a listener being removed.
    rebind: Vec<ListenerConfig>,
    desired: Vec<ListenerConfig>,
}

/// Phase one of a change: binds every new listener. On error nothing has changed and
/// `running` is handed back untouched.
pub(crate) async fn prepare(
    running: Vec<RunningListener>,
    desired: &[ListenerConfig],
) -> Result<ListenerPlan, (Vec<RunningListener>, TransportError)> {
    let (mut keep, gone): (Vec<_>, Vec<_>) = running
        .into_iter()
        .partition(|r| desired.iter().any(|d| r.matches(d)));
    // A kept socket takes the latest settings (e.g. `drain` for its eventual removal).
    for r in &mut keep {
        if let Some(d) = desired.iter().find(|d| r.matches(d)) {
            r.config = d.clone();
        }
    }
    let mut bound = Vec::new();
    let mut rebind = Vec::new();
    for d in desired
        .iter()
        .filter(|d| !keep.iter().any(|r| r.matches(d)))
    {
        match bind_checked(d).await {
            Ok(socket) => bound.push((d.clone(), socket)),
            Err(_) if gone.iter().any(|g| g.config.bind == d.bind) => rebind.push(d.clone()),
            Err(e) => {
                drop(bound);
                return Err((keep.into_iter().chain(gone).collect(), e));
            }
        }
    }
    Ok(ListenerPlan {
        keep,
        gone,
        bound,
        rebind,
        desired: desired.to_vec(),
    })
}

/// Phase two: starts the new listeners and stops the removed ones. A listener that changes
/// protocol on the same address can only bind once the old one is gone; if that fails the
/// old one is restored and the failure logged.
pub(crate) async fn commit(plan: ListenerPlan, core: &Arc<Core>) -> Vec<RunningListener> {
    let ListenerPlan {
        mut keep,
        gone,
        bound,
        rebind,
        desired,
    } = plan;
    for (config, socket) in bound {
        keep.push(run_listener(&config, socket, core));
    }
    for g in gone {
        let replacement = rebind.iter().find(|d| d.bind == g.config.bind).cloned();
        let old = g.config.clone();
        let drain = g.config.drain;
        g.stop(drain);
        if drain {
            core.ops.close_cancelled();
        }
        if let Some(new) = replacement {
            match bind_checked(&new).await {
                Ok(socket) => keep.push(run_listener(&new, socket, core)),
                Err(e) => {
                    error!(error = %e, "cannot bind the changed listener; keeping the old one");
                    if let Ok(socket) = bind_checked(&old).await {
                        keep.push(run_listener(&old, socket, core));
                    }
                }
            }
        }
    }
    // Keep the configured order so that `local_addr()` stays the first listener.
    keep.sort_by_key(|r| {
        desired
            .iter()
            .position(|d| r.matches(d))
            .unwrap_or(usize::MAX)
    });
    keep
}

/// Binds every listener of a fresh broker.
pub(crate) async fn start_all(
    desired: &[ListenerConfig],
    core: &Arc<Core>,
) -> Result<Vec<RunningListener>, TransportError> {
    match prepare(Vec::new(), desired).await {
        Ok(plan) => Ok(commit(plan, core).await),
        Err((_, e)) => Err(e),
    }
}
