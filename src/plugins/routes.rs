//! Event hook delivery: one route per plugin name and broker, kept from one configuration
//! generation to the next, so that a reload hands the route to the new plugin at once and
//! every event reaches exactly one generation of it (delivering from each generation's own
//! subscription would hand the events around a reload to both).
//!
//! A route is a forwarding task on the event bus that keeps what the plugin handles in a
//! bounded queue (full: the oldest event is dropped and counted), and a thread that calls
//! the plugin's hooks in order and its `timer.tick`. Neither ever waits for the plugin on
//! a connection's path.

use super::plugin::WasmPlugin;
use super::PluginSet;
use crate::events::{BrokerEvent, EventBus};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// How often an idle route thread looks whether its plugin is still loaded.
const CHECK: Duration = Duration::from_millis(500);

/// The event routes of one broker, by plugin name.
#[derive(Default)]
pub struct EventRoutes {
    routes: Mutex<HashMap<String, Arc<Route>>>,
}

impl std::fmt::Debug for EventRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.routes.lock().keys()).finish()
    }
}

/// The route of one plugin name.
struct Route {
    /// The generation of the plugin that gets the events now.
    current: Mutex<Weak<WasmPlugin>>,
    queue: Mutex<VecDeque<BrokerEvent>>,
    ready: Condvar,
    /// Set when no plugin of this name is configured any more: the route ends.
    closed: AtomicBool,
}

impl Route {
    fn plugin(&self) -> Option<Arc<WasmPlugin>> {
        self.current.lock().upgrade()
    }

    /// Queues `ev` for the current plugin when it handles it.
    fn offer(&self, ev: BrokerEvent) {
        let Some(plugin) = self.plugin() else { return };
        if !plugin.handles(&ev) {
            return;
        }
        let mut q = self.queue.lock();
        if q.len() >= plugin.event_queue_limit() {
            q.pop_front();
            plugin.count_dropped_events(1);
        }
        q.push_back(ev);
        drop(q);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

impl EventRoutes {
    /// Points the route of each plugin of `set` that has event hooks or a tick at it
    /// (creating routes as needed) and closes the routes of plugins no longer configured.
    /// Called when `set` goes into force.
    pub(crate) fn switch_to(&self, set: &PluginSet, events: &EventBus) {
        let mut routes = self.routes.lock();
        let mut wanted = Vec::new();
        for plugin in set.plugins() {
            plugin.check_tick_grant();
            if !plugin.wants_route() {
                continue;
            }
            if plugin.wants_deliveries() {
                events.want_deliveries();
            }
            wanted.push(plugin.name().to_owned());
            match routes.get(plugin.name()) {
                Some(route) if !route.closed.load(Ordering::Acquire) => {
                    *route.current.lock() = Arc::downgrade(plugin)
                }
                _ => {
                    let route = Arc::new(Route {
                        current: Mutex::new(Arc::downgrade(plugin)),
                        queue: Mutex::new(VecDeque::new()),
                        ready: Condvar::new(),
                        closed: AtomicBool::new(false),
                    });
                    if start(&route, plugin.name(), events) {
                        routes.insert(plugin.name().to_owned(), route);
                    }
                }
            }
        }
        routes.retain(|name, route| {
            let keep = wanted.contains(name);
            if !keep {
                route.close();
            }
            keep
        });
    }
}

/// Starts a route's forwarding task and thread; false when the thread cannot start.
fn start(route: &Arc<Route>, name: &str, events: &EventBus) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let mut bus = events.subscribe();
            let r = route.clone();
            handle.spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                while !r.closed.load(Ordering::Acquire) {
                    match bus.recv().await {
                        Ok(ev) => r.offer(ev),
                        Err(RecvError::Lagged(n)) => {
                            if let Some(p) = r.plugin() {
                                p.count_dropped_events(n);
                            }
                        }
                        Err(RecvError::Closed) => {
                            // The broker is gone.
                            r.close();
                            break;
                        }
                    }
                }
            });
        }
        Err(_) => warn!(
            plugin = name,
            "no async runtime: event hooks are not delivered"
        ),
    }
    let r = route.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("plugin-{name}"))
        .spawn(move || run(&r));
    if let Err(e) = spawned {
        error!(plugin = name, "cannot start the plugin's event thread: {e}");
        route.close();
        return false;
    }
    true
}

/// The route's thread: delivers queued events in order and calls the tick, to whichever
/// generation of the plugin is current; ends when the route is closed.
fn run(route: &Route) {
    let mut next_tick: Option<Instant> = None;
    while !route.closed.load(Ordering::Acquire) {
        let Some(every) = route.plugin().map(|p| p.tick_interval()) else {
            // No generation of the plugin is loaded: the broker is gone.
            route.close();
            break;
        };
        let now = Instant::now();
        match (every, next_tick) {
            (None, _) => next_tick = None,
            (Some(e), None) => next_tick = Some(now + e),
            (Some(e), Some(at)) if at <= now => {
                if let Some(p) = route.plugin() {
                    p.tick();
                }
                // A tick that overran does not make the next ones come in a burst.
                next_tick = Some((at + e).max(Instant::now()));
                continue;
            }
            _ => {}
        }
        let event = {
            let mut q = route.queue.lock();
            if q.is_empty() {
                let wait = next_tick.map_or(CHECK, |t| t.saturating_duration_since(now).min(CHECK));
                route.ready.wait_for(&mut q, wait);
            }
            q.pop_front()
        };
        // Whichever generation is current now gets it (a reload may have switched).
        if let (Some(ev), Some(p)) = (event, route.plugin()) {
            p.deliver(&ev);
        }
    }
}
