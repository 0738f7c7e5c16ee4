//! Bridges: connections from this broker to remote MQTT brokers that forward topics both
//! ways (the `bridges:` config, Mosquitto's `connection` blocks).
//!
//! A bridge is two MQTT client connections and a relay between them. Its side on this
//! broker is an ordinary client session reached through an in-process stream
//! ([`crate::connection::serve`]), so authentication, ACLs and transform plugins apply to
//! what it carries, and its persistent session is what stores messages while the remote
//! is down ([`relay`]). The other side is a TCP or TLS connection to the remote
//! ([`link`]), reconnected with backoff and jitter across its addresses.
//!
//! [`Bridges`] keeps the running set in step with the config: on reload only the bridges
//! whose entry changed restart; nothing else is touched.

mod link;
pub mod relay;
pub mod rules;

pub use rules::RuleSet;

use crate::config::{BridgeConfig, BridgeProtocol, Config};
use crate::core::control::BridgeSummary;
use crate::core::Core;
use parking_lot::Mutex;
use relay::DropReason;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How long stopping a bridge waits for it to say goodbye to the remote.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// Drop reasons in the order metrics list them.
const DROP_REASONS: [&str; 6] = [
    "disconnected",
    "loop",
    "refused",
    "no_rule",
    "remote_slow",
    "too_large",
];

/// Live state and counters of one bridge, shared by its task and the operator surfaces.
#[derive(Debug, Default)]
pub struct BridgeStatus {
    connected: AtomicBool,
    /// Its session here exists and is subscribed.
    local_ready: AtomicBool,
    remote: Mutex<Option<String>>,
    since: Mutex<Option<SystemTime>>,
    last_error: Mutex<Option<String>>,
    messages_out: AtomicU64,
    messages_in: AtomicU64,
    dropped: [AtomicU64; 6],
    reconnects: AtomicU64,
    pending: AtomicU64,
}

impl BridgeStatus {
    fn drop_counter(&self, reason: &str) -> &AtomicU64 {
        let i = DROP_REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        &self.dropped[i]
    }

    fn count_drop(&self, reason: DropReason) {
        self.drop_counter(reason.as_str())
            .fetch_add(1, Ordering::Relaxed);
    }
}

struct Running {
    config: BridgeConfig,
    node: String,
    status: Arc<BridgeStatus>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The running bridges.
#[derive(Default)]
pub(crate) struct Bridges {
    running: Mutex<Vec<Running>>,
}

impl Bridges {
    /// Starts, stops and restarts bridges so that the running set matches `config`: a
    /// bridge whose entry (and the node name) is unchanged keeps running untouched.
    pub fn apply(&self, core: &Arc<Core>, config: &Config) -> Vec<JoinHandle<()>> {
        let node = config.node();
        let mut running = self.running.lock();
        let mut stopped = Vec::new();
        let mut keep = Vec::new();
        for r in running.drain(..) {
            let same = r.node == node && config.bridges.contains(&r.config);
            if same {
                keep.push(r);
            } else {
                info!(bridge = %r.config.name, "bridge stopped (removed or changed)");
                r.cancel.cancel();
                stopped.push(r.task);
            }
        }
        for b in &config.bridges {
            if keep.iter().any(|r| r.config == *b) {
                continue;
            }
            let status = Arc::new(BridgeStatus::default());
            let cancel = core.shutdown.child_token();
            let task = tokio::spawn(link::run(link::Params {
                core: core.clone(),
                config: b.clone(),
                node: node.clone(),
                status: status.clone(),
                cancel: cancel.clone(),
            }));
            info!(bridge = %b.name, addresses = ?b.addresses, "bridge started");
            keep.push(Running {
                config: b.clone(),
                node: node.clone(),
                status,
                cancel,
                task,
            });
        }
        // Config order, as the admin API lists them.
        keep.sort_by_key(|r| config.bridges.iter().position(|b| b.name == r.config.name));
        *running = keep;
        stopped
    }

    /// Waits until every bridge's session here is subscribed (at most `limit`), so that
    /// clients connecting afterwards cannot publish before a bridge listens.
    pub async fn wait_local_ready(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let waiting = self
                .running
                .lock()
                .iter()
                .filter(|r| !r.status.local_ready.load(Ordering::Relaxed))
                .map(|r| r.config.name.clone())
                .collect::<Vec<_>>();
            if waiting.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(bridges = ?waiting, "bridges not subscribed here yet; opening the listeners anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every bridge (each tells its remote it is going) and waits briefly for them.
    pub async fn stop_all(&self) {
        let tasks: Vec<_> = self
            .running
            .lock()
            .drain(..)
            .map(|r| {
                r.cancel.cancel();
                r.task
            })
            .collect();
        wait(tasks).await;
    }

    /// What the admin API and metrics show.
    pub fn summaries(&self, core: &Core) -> Vec<BridgeSummary> {
        let running = self.running.lock();
        running
            .iter()
            .map(|r| {
                let s = &r.status;
                let connected = s.connected.load(Ordering::Relaxed);
                let queued_here = core
                    .registry
                    .get(&r.config.local_id())
                    .map(|e| e.state().queued() as u64)
                    .unwrap_or(0);
                BridgeSummary {
                    name: r.config.name.clone(),
                    state: if connected {
                        "connected"
                    } else if r.task.is_finished() {
                        "stopped"
                    } else {
                        "connecting"
                    },
                    remote: if connected {
                        s.remote.lock().clone()
                    } else {
                        None
                    },
                    protocol: match r.config.protocol {
                        BridgeProtocol::V311 => "3.1.1",
                        BridgeProtocol::V5 => "5.0",
                    },
                    connected_since: (*s.since.lock())
                        .filter(|_| connected)
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as u64),
                    messages_out: s.messages_out.load(Ordering::Relaxed),
                    messages_in: s.messages_in.load(Ordering::Relaxed),
                    dropped: DROP_REASONS
                        .iter()
                        .zip(&s.dropped)
                        .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
                        .collect(),
                    queue_depth: s.pending.load(Ordering::Relaxed) + queued_here,
                    reconnects: s.reconnects.load(Ordering::Relaxed),
                    last_error: s.last_error.lock().clone(),
                }
            })
            .collect()
    }
}

/// Waits for stopped bridge tasks, at most [`STOP_WAIT`].
pub(crate) async fn wait(tasks: Vec<JoinHandle<()>>) {
    let all = futures_util::future::join_all(tasks);
    let _ = tokio::time::timeout(STOP_WAIT, all).await;
}
