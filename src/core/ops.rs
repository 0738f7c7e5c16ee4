//! Operational state shared by the broker's tasks: the event bus, the directory of connected
//! clients the admin API lists and disconnects, readiness and shutdown flags, and the
//! config file path a `POST /api/v1/reload` re-reads.
//!
//! Owns only that bookkeeping; it never closes a connection itself but asks through the
//! connection's [`CloseSignal`], and never touches session state or routing.

use super::registry::SessionEntry;
use crate::events::EventBus;
use crate::metrics::ops::LimitKind;
use crate::model::{ClientInfo, CloseReason, CloseSignal, ConnId};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Bound on the once-per-client warning memory; past it, warnings may repeat.
const WARNED_MAX: usize = 100_000;

/// A connected client as the admin API shows it.
#[derive(Debug)]
pub(crate) struct ClientRecord {
    /// The client as it connected.
    pub client: Arc<ClientInfo>,
    /// When CONNECT was accepted.
    pub since: SystemTime,
    /// Its session, for subscription and queue counts.
    pub entry: Arc<SessionEntry>,
    /// Asks the connection to close.
    pub close: Arc<CloseSignal>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct OpsState {
    /// Typed events for `BrokerHandle::events()`.
    pub events: EventBus,
    /// Connected clients by connection number (ordered, so pages are stable).
    pub clients: Mutex<BTreeMap<ConnId, ClientRecord>>,
    /// Listeners are bound and storage recovered.
    pub ready: AtomicBool,
    /// A shutdown has begun: readiness is 503 from now on.
    pub draining: AtomicBool,
    /// This cluster node has lost NATS: readiness is 503 and new clients are refused
    /// until it is back (a node never serves sessions on its own).
    pub cluster_down: AtomicBool,
    /// The file `POST /api/v1/reload` re-reads.
    pub config_path: Mutex<Option<PathBuf>>,
    /// Bound address of the admin listener.
    pub admin_addr: Mutex<Option<SocketAddr>>,
    /// Stops the admin listener and the `$SYS` task at the very end of a shutdown.
    pub stop: CancellationToken,
    /// (client id, limit) pairs already logged for session-scoped refusals.
    warned: Mutex<HashSet<(Arc<str>, LimitKind)>>,
    /// Process-relative start, for uptime.
    pub started: Instant,
    /// Wall-clock start.
    pub started_at: SystemTime,
}

impl Default for OpsState {
    fn default() -> Self {
        OpsState {
            events: EventBus::default(),
            clients: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            cluster_down: AtomicBool::new(false),
            config_path: Mutex::new(None),
            admin_addr: Mutex::new(None),
            stop: CancellationToken::new(),
            warned: Mutex::new(HashSet::new()),
            started: Instant::now(),
            started_at: SystemTime::now(),
        }
    }
}

/// Removes a client from the registry when its connection ends, however it ends.
impl OpsState {
    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && !self.cluster_down.load(Ordering::Relaxed)
    }

    /// Records an accepted client; a new connection also resets its once-only warnings.
    pub fn register(
        &self,
        conn_id: ConnId,
        client: &Arc<ClientInfo>,
        entry: &Arc<SessionEntry>,
        close: Arc<CloseSignal>,
    ) {
        self.clients.lock().insert(
            conn_id,
            ClientRecord {
                client: client.clone(),
                since: SystemTime::now(),
                entry: entry.clone(),
                close,
            },
        );
        self.warned
            .lock()
            .retain(|(id, _)| **id != *client.client_id);
    }

    /// Forgets connection `conn_id` (it has ended).
    pub fn unregister(&self, conn_id: ConnId) {
        self.clients.lock().remove(&conn_id);
    }

    /// Disconnects every connection of `client_id`; returns how many there were.
    pub fn kick(&self, client_id: &str) -> usize {
        let clients = self.clients.lock();
        let mut n = 0;
        for r in clients
            .values()
            .filter(|r| &*r.client.client_id == client_id)
        {
            r.close.close(CloseReason::Admin);
            n += 1;
        }
        n
    }

    /// Closes every connection with the reason `why` makes; returns how many there were.
    pub fn close_all(&self, why: impl Fn() -> CloseReason) -> usize {
        let clients = self.clients.lock();
        for r in clients.values() {
            r.close.close(why());
        }
        clients.len()
    }

    /// Closes every connection whose listener's token was cancelled (listener removed with
    /// `drain: true`, or shutdown): connections hold no future on that token, they are told
    /// here. One registering after this sweep sees the token itself.
    pub fn close_cancelled(&self) {
        for r in self.clients.lock().values() {
            if r.close.parent().is_cancelled() {
                r.close.parent_cancelled();
            }
        }
    }

    /// Wakes the connections whose keep-alive deadline passed (run a few times a second:
    /// one sweep instead of a timer in every idle connection).
    pub fn expire_keep_alives(&self) {
        let now = crate::model::monotonic_ms(std::time::Instant::now());
        for r in self.clients.lock().values() {
            r.close.expire(now);
        }
    }

    /// Tells every connection that the runtime was replaced (each re-checks its client).
    pub fn reloaded(&self) {
        for r in self.clients.lock().values() {
            r.close.reloaded();
        }
    }

    /// Whether a session-scoped refusal of `kind` for `client_id` should be logged now:
    /// true the first time per connection.
    pub fn first_warning(&self, client_id: &Arc<str>, kind: LimitKind) -> bool {
        let mut warned = self.warned.lock();
        if warned.len() >= WARNED_MAX {
            warned.clear();
        }
        warned.insert((client_id.clone(), kind))
    }
}
