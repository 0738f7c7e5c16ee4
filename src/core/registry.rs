//! The session registry: finds a session by client id and hands it from one connection to
//! the next (attach, detach, takeover), ends clean sessions, expires persistent ones, and
//! rebuilds them from storage at start.
//!
//! Owns the sessions map and each session's owner and offline time (private fields, changed
//! only by the methods here). It must not touch sockets, the config file or the admin API.
//!
//! # Lock order
//!
//! Locks are only ever taken in this order, and a later one is never held while an earlier
//! one is taken:
//!
//! 1. `SessionRegistry::sessions` (the map),
//! 2. a session's `owner`,
//! 3. a session's `state`,
//! 4. the router's trie and retained store (`super::router`).
//!
//! A session's `client`, `acl_cache` and `offline_since` are leaves: held only for a copy or
//! a single update, with nothing else taken meanwhile. The router collects its targets under
//! the trie's read lock and releases it before taking any session's `state`, and the engine
//! releases `state` before it calls the router, so publish, subscribe, attach and detach all
//! agree with the order above. Keep it so when adding a method: take what you need, in order,
//! and drop it before calling into another component.

use super::router::Router;
use super::Services;
use crate::hooks::AclCache;
use crate::model::{ClientInfo, CloseReason, CloseSignal, ConnId, TransportKind};
use crate::session::{Session, SessionLimits};
use crate::storage::{Recovered, SessionRecord, StorageOp};
use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::info;

/// Wakes the connection attached to a session when something was queued for it: a flag and
/// the waker of one task (the connection's), so that an idle connection holds no future for
/// it and a burst of deliveries costs one wake-up, not one per message.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    pending: std::sync::atomic::AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl Wake {
    /// Marks the session as having work and wakes its task unless a wake-up is pending.
    pub fn notify_one(&self) {
        use std::sync::atomic::Ordering;
        // Already pending: the task has not taken the previous one yet and will see this.
        if !self.pending.load(Ordering::Acquire) && !self.pending.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Registers the task's waker; ready (and consumed) once something was queued.
    pub fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::sync::atomic::Ordering;
        self.waker.register(cx.waker());
        if self.pending.swap(false, Ordering::AcqRel) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Forgets the registered waker: the task is busy and will look at the flag when it
    /// waits again. Without it every message queued while the connection is writing would
    /// schedule its task again, and fan-out would send many small batches instead of few
    /// large ones (a `Notify` permit behaves so by itself).
    pub fn unregister(&self) {
        drop(self.waker.take());
    }

    /// Waits for [`Wake::notify_one`] (one waiting task at a time).
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }
}

/// The connection currently attached to a session.
#[derive(Debug)]
pub(crate) struct Owner {
    /// Process-unique connection number.
    pub conn_id: ConnId,
    /// Asks that connection to close (a takeover says why).
    pub close: Arc<CloseSignal>,
}

/// A session in the registry, shared between its connection and the routers that feed it.
#[derive(Debug)]
pub struct SessionEntry {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// The sans-IO session state.
    state: Mutex<Session>,
    /// Wakes the attached connection when messages were queued.
    pub(crate) wake: Wake,
    /// The client as last connected, for delivery-time ACL checks.
    client: Mutex<Arc<ClientInfo>>,
    /// Delivery decisions for that client (forgotten when it connects again).
    pub(crate) acl_cache: Mutex<AclCache>,
    /// When the last connection ended (for `persistence.session_expiry`); `None` while online.
    offline_since: Mutex<Option<SystemTime>>,
    owner: Mutex<Option<Owner>>,
}

impl SessionEntry {
    fn new(client: Arc<ClientInfo>, state: Session, offline_since: Option<SystemTime>) -> Self {
        SessionEntry {
            client_id: client.client_id.clone(),
            state: Mutex::new(state),
            wake: Wake::default(),
            client: Mutex::new(client),
            acl_cache: Mutex::new(AclCache::default()),
            offline_since: Mutex::new(offline_since),
            owner: Mutex::new(None),
        }
    }

    /// A session of the broker's own that no client owns and the registry does not hold
    /// (the dashboard's live tail): online from the start, so QoS 0 messages are queued
    /// for it, and gone when its last holder drops it.
    pub(crate) fn detached(client: Arc<ClientInfo>, limits: SessionLimits) -> Arc<Self> {
        let mut state = Session::new(client.client_id.clone(), true, limits);
        // Nothing is inflight or queued yet: connecting only marks it online.
        state.connect(&mut Vec::new());
        Arc::new(SessionEntry::new(client, state, None))
    }

    /// Whether a connection is attached now.
    pub(crate) fn is_attached(&self) -> bool {
        self.owner.lock().is_some()
    }

    /// Locks the session state (step 3 of the lock order).
    pub(crate) fn state(&self) -> MutexGuard<'_, Session> {
        self.state.lock()
    }

    /// The client as it last connected.
    pub(crate) fn client(&self) -> Arc<ClientInfo> {
        self.client.lock().clone()
    }

    /// The connection number of the attached connection, if any.
    #[cfg(test)]
    pub(crate) fn owner_conn(&self) -> Option<ConnId> {
        self.owner.lock().as_ref().map(|o| o.conn_id)
    }
}

/// Result of attaching a connection to a session.
pub(crate) struct Attached {
    /// The session the connection now owns.
    pub entry: Arc<SessionEntry>,
    /// Whether a stored session was resumed [MQTT-3.2.2-2].
    pub session_present: bool,
    /// The connection it was taken from: it has been told to close (`TakenOver`); wait for
    /// its `close.wait_finished()` before acknowledging the new connection, so its will goes first.
    pub previous: Option<Owner>,
}

/// See the module documentation.
pub(crate) struct SessionRegistry {
    services: Arc<Services>,
    router: Arc<dyn Router>,
    sessions: Mutex<HashMap<Arc<str>, Arc<SessionEntry>>>,
}

impl SessionRegistry {
    /// An empty registry whose sessions subscribe through `router`.
    pub fn new(services: Arc<Services>, router: Arc<dyn Router>) -> Self {
        SessionRegistry {
            services,
            router,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Every session, as a snapshot (for stats and metrics).
    pub fn entries(&self) -> Vec<Arc<SessionEntry>> {
        self.sessions.lock().values().cloned().collect()
    }

    /// The session of `client_id`, if there is one.
    pub fn get(&self, client_id: &str) -> Option<Arc<SessionEntry>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// Attaches connection `conn_id` to the session of `client.client_id`, taking it over
    /// from any connection that holds it [MQTT-3.1.4-2] and discarding it first if
    /// `clean_session` [MQTT-3.1.2-6]. Sans-IO: the previous owner is told to close and
    /// handed back, for the caller to wait on.
    ///
    /// `expiry_interval` is an MQTT 5 client's Session Expiry Interval (already capped):
    /// there, `clean_session` is Clean Start (discard first) and the session ends with the
    /// connection only when the interval is 0. `None` (3.1.1): `clean_session` decides both.
    pub fn attach(
        &self,
        client: &Arc<ClientInfo>,
        conn_id: ConnId,
        close: Arc<CloseSignal>,
        expiry_interval: Option<u32>,
    ) -> Attached {
        let limits = self
            .services
            .runtime
            .load()
            .session_limits_for(&client.client_id);
        let client_id: &str = &client.client_id;
        let clean_session = client.clean_session;
        // Whether the session ends with this connection.
        let ends_with_connection = match expiry_interval {
            Some(secs) => secs == 0,
            None => clean_session,
        };
        let mut sessions = self.sessions.lock();
        let mut previous = None;
        let mut reuse = None;
        if let Some(old) = sessions.get(client_id).cloned() {
            previous = old.owner.lock().take();
            // An expired session is gone even if the periodic sweep has not run yet.
            let expired = previous.is_none() && self.is_expired(&old);
            if expired {
                info!(
                    client_id,
                    "persistent session expired (persistence.session_expiry)"
                );
                self.services
                    .ops
                    .events
                    .emit(|| crate::events::BrokerEvent::SessionExpired {
                        client_id: old.client_id.clone(),
                    });
            }
            if clean_session || expired || old.state.lock().clean_session {
                self.remove_locked(&mut sessions, &old);
            } else {
                reuse = Some(old);
            }
        }
        let session_present = reuse.is_some();
        let entry = reuse.unwrap_or_else(|| {
            let state = Session::new(client.client_id.clone(), ends_with_connection, limits);
            let entry = Arc::new(SessionEntry::new(client.clone(), state, None));
            sessions.insert(entry.client_id.clone(), entry.clone());
            entry
        });
        {
            // A resumed session takes this connection's expiry (MQTT 5 may change it).
            let mut state = entry.state.lock();
            // The client is back before its will's delay passed: no will [MQTT-3.1.3-9].
            state.pending_will = None;
            state.clean_session = ends_with_connection;
            state.expiry_interval = expiry_interval;
            if !ends_with_connection && self.services.storage.is_some() {
                state.enable_persistence();
            }
        }
        *entry.client.lock() = client.clone();
        // After the client: a delivery between the two may fill the cache for the previous
        // client, and this clears it (see `SecurityChain::authorize_cached_for_session`).
        entry.acl_cache.lock().forget();
        *entry.offline_since.lock() = None;
        *entry.owner.lock() = Some(Owner { conn_id, close });
        drop(sessions);
        if let Some(prev) = &previous {
            info!(client_id, "taking over session from an existing connection");
            prev.close.close(CloseReason::TakenOver);
        }
        entry.state.lock().set_limits(limits);
        if !ends_with_connection {
            self.persist_record(&entry);
        }
        Attached {
            entry,
            session_present,
            previous,
        }
    }

    /// Detaches connection `conn_id` from its session; a clean session ends here
    /// [MQTT-3.1.2-6]. A connection whose session was taken over changes nothing.
    pub fn detach(&self, entry: &Arc<SessionEntry>, conn_id: ConnId) {
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
            self.remove_locked(&mut sessions, entry);
        } else {
            *entry.offline_since.lock() = Some(SystemTime::now());
            drop(sessions);
            self.persist_record(entry);
        }
    }

    /// Forgets a session: its subscriptions, registry entry and stored state.
    fn remove_locked(
        &self,
        sessions: &mut HashMap<Arc<str>, Arc<SessionEntry>>,
        entry: &Arc<SessionEntry>,
    ) {
        let (was_persistent, filters, shared) = {
            let mut state = entry.state.lock();
            (
                !state.clean_session || state.persistence_enabled(),
                std::mem::take(&mut state.subscriptions),
                state.take_shared_messages(),
            )
        };
        for filter in filters.keys() {
            self.router.unsubscribe(entry, filter);
        }
        // What reached this session through a shared subscription and was not acknowledged
        // goes to another member of the group, not nowhere.
        for (filter, message) in shared {
            self.router.redistribute(&filter, message);
        }
        if sessions
            .get(&entry.client_id)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            sessions.remove(&entry.client_id);
        }
        if was_persistent {
            if let Some(storage) = &self.services.storage {
                storage.submit(vec![StorageOp::DeleteSession(entry.client_id.clone())]);
            }
        }
    }

    /// Removes persistent sessions offline for longer than `persistence.session_expiry`.
    pub fn expire_sessions(&self) -> usize {
        let mut sessions = self.sessions.lock();
        let expired: Vec<Arc<SessionEntry>> = sessions
            .values()
            .filter(|e| e.owner.lock().is_none() && self.is_expired(e))
            .cloned()
            .collect();
        for e in &expired {
            info!(client_id = %e.client_id, "persistent session expired (persistence.session_expiry)");
            self.services
                .ops
                .events
                .emit(|| crate::events::BrokerEvent::SessionExpired {
                    client_id: e.client_id.clone(),
                });
            self.remove_locked(&mut sessions, e);
        }
        expired.len()
    }

    /// `persistence.session_expiry` in force (zero: sessions never expire).
    fn session_expiry(&self) -> Duration {
        self.services
            .runtime
            .load()
            .config
            .persistence
            .session_expiry
            .get()
    }

    /// Whether a session has been offline for its expiry: an MQTT 5 session's own interval
    /// (0xFFFFFFFF: never), else `persistence.session_expiry` (never when 0).
    fn is_expired(&self, entry: &SessionEntry) -> bool {
        let expiry = match entry.state.lock().expiry_interval {
            Some(u32::MAX) => Duration::ZERO,
            // An interval of 0 ends the session with the connection; a resumed one whose
            // DISCONNECT set 0 is gone at once.
            Some(0) => Duration::from_nanos(1),
            Some(secs) => Duration::from_secs(u64::from(secs)),
            None => self.session_expiry(),
        };
        !expiry.is_zero()
            && entry
                .offline_since
                .lock()
                .is_some_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() >= expiry)
    }

    /// First step of giving a session to another node (the cluster): its connection, if
    /// any, is closed as taken over [MQTT-3.1.4-2] and waited for (it finishes what its
    /// client sent, publishes its will, journals).
    pub async fn close_for_hand_over(&self, client_id: &str) {
        let Some(entry) = self.get(client_id) else {
            return;
        };
        let previous = entry.owner.lock().take();
        if let Some(prev) = previous {
            prev.close.close(CloseReason::TakenOver);
            let _ = tokio::time::timeout(Duration::from_secs(5), prev.close.wait_finished()).await;
        }
    }

    /// Last step of giving a session to another node: it leaves this node, its stored
    /// state kept for the new owner (not deleted, its shared-subscription messages not
    /// redistributed: they go with it). Returns whether this node held it.
    pub fn forget(&self, client_id: &str) -> bool {
        let mut sessions = self.sessions.lock();
        let Some(entry) = sessions.remove(client_id) else {
            return false;
        };
        let filters = std::mem::take(&mut entry.state.lock().subscriptions);
        for filter in filters.keys() {
            self.router.unsubscribe(&entry, filter);
        }
        true
    }

    /// Writes a persistent session's record (subscriptions, user name, last seen); returns
    /// the storage ticket.
    pub fn persist_record(&self, entry: &SessionEntry) -> Option<u64> {
        let storage = self.services.storage.as_ref()?;
        let record = {
            let state = entry.state.lock();
            if state.clean_session {
                return None;
            }
            SessionRecord {
                username: entry.client.lock().username.clone(),
                subscriptions: state
                    .subscriptions
                    .iter()
                    .map(|(f, sub)| (f.clone(), *sub))
                    .collect(),
                expiry_interval: state.expiry_interval,
                pending_will: state.pending_will.as_deref().cloned(),
                last_seen_ms: entry
                    .offline_since
                    .lock()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64),
            }
        };
        Some(storage.submit(vec![StorageOp::PutSession {
            client_id: entry.client_id.clone(),
            record,
        }]))
    }

    /// Applies new per-session limits to every session (after a reload); nothing already
    /// queued is dropped.
    pub fn set_limits(&self, runtime: &crate::core::Runtime) {
        for s in self.entries() {
            let mut state = s.state.lock();
            let limits = runtime.session_limits_for(&state.client_id);
            state.set_limits(limits);
        }
    }

    /// Rebuilds persistent sessions (with their subscriptions) from storage.
    pub fn recover(&self, recovered: Recovered) {
        let runtime = self.services.runtime.load();
        let mut sessions = self.sessions.lock();
        for r in recovered.sessions {
            let limits = runtime.session_limits_for(&r.client_id);
            let subscriptions = r.record.subscriptions.iter().cloned().collect();
            let client = Arc::new(ClientInfo {
                client_id: r.client_id.clone(),
                username: r.record.username.clone(),
                peer: SocketAddr::from(([0, 0, 0, 0], 0)),
                transport: TransportKind::Tcp,
                tls_identity: None,
                protocol: crate::protocol::ProtocolLevel::V311,
                clean_session: false,
            });
            let last_seen = match r.record.last_seen_ms {
                0 => SystemTime::now(),
                ms => std::time::UNIX_EPOCH + Duration::from_millis(ms),
            };
            let mut state = Session::restore(
                r.client_id.clone(),
                limits,
                subscriptions,
                r.messages,
                r.inbound,
            );
            state.expiry_interval = r.record.expiry_interval;
            state.pending_will = r.record.pending_will.clone().map(Box::new);
            let entry = Arc::new(SessionEntry::new(client, state, Some(last_seen)));
            for (f, sub) in &r.record.subscriptions {
                self.router.subscribe(&entry, f, *sub);
            }
            sessions.insert(r.client_id, entry);
        }
    }
}
