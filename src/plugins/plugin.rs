//! One loaded plugin: its precompiled instance template, a pool of ready instances, the
//! sandboxed call path (deadline, memory cap, failure handling, degradation) and the hook
//! trait implementations the broker's `SecurityChain` calls.

use super::bindings::{self, authenticate, authorize, lifecycle, transform};
use super::bindings_v02 as v02;
use super::capabilities::{PluginCaps, Publisher};
use super::config::{OnError, PluginConfig};
use super::host::{coarse_clock, ArtifactSource, Limiter, PluginHost, StoreState, EPOCH_TICK};
use super::host_v02::CALL_HANDLE;
use super::version::Api;
use super::PluginError;
use crate::hooks::{
    AclRequest, AuthOutcome, Authenticator, Authorizer, ClientInfo, Credentials, Decision,
    DenyReason, TransformAction, TransformResult, Transformer,
};
use crate::model::Message;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};
use wasmtime::component::{Instance, InstancePre, Resource};
use wasmtime::Store;

/// Where [`WasmPlugin::deadline_ticks`] keeps `hook`'s deadline (as [`WasmPlugin::timeout`]).
fn deadline_index(hook: Hook) -> usize {
    match hook {
        Hook::Init => 0,
        Hook::Authenticate | Hook::EnhancedAuth => 1,
        Hook::Authorize | Hook::Transform | Hook::Event | Hook::Tick => 2,
    }
}

/// Most messages one `transform` call may add (bounds amplification by a buggy plugin).
pub const MAX_ADDITIONAL_MESSAGES: usize = 64;

/// Which hook a call is for (labels logs and picks the time limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Init,
    Authenticate,
    /// An `enhanced-auth` step (API 0.2).
    EnhancedAuth,
    Authorize,
    Transform,
    /// An event hook (API 0.2).
    Event,
    /// `timer.tick` (API 0.2).
    Tick,
}

impl Hook {
    fn as_str(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::Authenticate => "authenticate",
            Hook::EnhancedAuth => "enhanced-auth",
            Hook::Authorize => "authorize",
            Hook::Transform => "transform",
            Hook::Event => "event",
            Hook::Tick => "tick",
        }
    }
}

/// Why one call failed.
#[derive(Debug)]
enum CallFailure {
    /// The epoch deadline passed.
    Timeout,
    /// The instance asked for more memory or table space than allowed.
    OutOfMemory(String),
    /// Any other trap, or an invalid answer.
    Trap(String),
    /// The plugin is degraded and was not called.
    Degraded,
}

/// Export indices found at load time (API 0.1); `None` for hooks the component does not
/// export.
#[derive(Clone)]
struct Exports01 {
    lifecycle: Option<lifecycle::GuestIndices>,
    authenticate: Option<authenticate::GuestIndices>,
    authorize: Option<authorize::GuestIndices>,
    transform: Option<transform::GuestIndices>,
}

/// Export indices found at load time (API 0.2).
#[derive(Clone)]
struct Exports02 {
    lifecycle: Option<v02::lifecycle::GuestIndices>,
    authenticate: Option<v02::authenticate::GuestIndices>,
    enhanced_auth: Option<v02::enhanced_auth::GuestIndices>,
    authorize: Option<v02::authorize::GuestIndices>,
    transform: Option<v02::transform::GuestIndices>,
    fast_transform: Option<v02::fast_transform::GuestIndices>,
    connection_events: Option<v02::connection_events::GuestIndices>,
    subscription_events: Option<v02::subscription_events::GuestIndices>,
    message_events: Option<v02::message_events::GuestIndices>,
    delivery_events: Option<v02::delivery_events::GuestIndices>,
    broker_events: Option<v02::broker_events::GuestIndices>,
    timer: Option<v02::timer::GuestIndices>,
}

/// The exports of a component, per the API version it was built for.
#[derive(Clone)]
enum Exports {
    V01(Exports01),
    V02(Box<Exports02>),
}

/// Typed entry points of one instance (API 0.1).
struct Guests01 {
    authenticate: Option<authenticate::Guest>,
    authorize: Option<authorize::Guest>,
    transform: Option<transform::Guest>,
}

/// Typed entry points of one instance (API 0.2).
struct Guests02 {
    authenticate: Option<v02::authenticate::Guest>,
    enhanced_auth: Option<v02::enhanced_auth::Guest>,
    authorize: Option<v02::authorize::Guest>,
    transform: Option<v02::transform::Guest>,
    fast_transform: Option<v02::fast_transform::Guest>,
    connection_events: Option<v02::connection_events::Guest>,
    subscription_events: Option<v02::subscription_events::Guest>,
    message_events: Option<v02::message_events::Guest>,
    delivery_events: Option<v02::delivery_events::Guest>,
    broker_events: Option<v02::broker_events::Guest>,
    timer: Option<v02::timer::Guest>,
}

enum Guests {
    V01(Guests01),
    V02(Box<Guests02>),
}

/// A ready instance: its store and the typed entry points.
struct Slot {
    store: Store<StoreState>,
    guests: Guests,
    /// Calls made with this instance: every `PRECISE_TIMING_EVERY`th is timed exactly.
    calls: u32,
}

/// One call in this many is timed with the system clock for the slowest-call statistic;
/// the others use the coarse clock (reading the system clock twice cost a tenth of a call).
const PRECISE_TIMING_EVERY: u32 = 16;

/// Failure bookkeeping; locked only briefly and never during a call.
struct Health {
    recent: VecDeque<Instant>,
    degraded_since: Option<Instant>,
    last_probe: Option<Instant>,
    probing: bool,
    /// The last failures, for the dashboard's plugin page.
    errors: crate::history::HistoryRing<PluginFailure>,
}

/// A counter every thread calling a plugin bumps on every call: one cache line per group of
/// threads, so that two worker threads do not pass one line back and forth per message.
#[derive(Default)]
struct StripedCounter([PaddedU64; 8]);

/// An atomic counter on its own cache line.
#[derive(Default)]
#[repr(align(64))]
struct PaddedU64(AtomicU64);

impl StripedCounter {
    fn add_one(&self) {
        let i = super::pool::thread_index() % self.0.len();
        self.0[i].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

/// Counters of one plugin.
#[derive(Default)]
struct Counts {
    calls: StripedCounter,
    failures: AtomicU64,
    timeouts: AtomicU64,
    out_of_memory: AtomicU64,
    traps: AtomicU64,
    rejected_degraded: AtomicU64,
    instances_created: AtomicU64,
    instantiate_nanos: AtomicU64,
    slowest_call_nanos: AtomicU64,
}

/// A snapshot of one plugin's state and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginStats {
    /// Configured name.
    pub name: String,
    /// Hooks the component exports (`authenticate`, `authorize`, `transform`).
    pub hooks: Vec<&'static str>,
    /// Whether the compiled code came from the artifact cache.
    pub artifact: ArtifactSource,
    /// Hook calls attempted (including those refused while degraded).
    pub calls: u64,
    /// Calls that failed (trap, timeout, out of memory, invalid answer, degraded).
    pub failures: u64,
    /// Calls stopped at their time limit.
    pub timeouts: u64,
    /// Calls stopped at the memory limit.
    pub out_of_memory: u64,
    /// Other traps and invalid answers.
    pub traps: u64,
    /// Calls answered per `on_error` without running because the plugin was degraded.
    pub rejected_degraded: u64,
    /// Instances created (the first, plus replacements and pool growth).
    pub instances_created: u64,
    /// Mean time to create and `init` one instance, in microseconds.
    pub mean_instantiate_us: u64,
    /// Longest single hook call (successful or not), in microseconds: exact among the calls
    /// timed with the system clock (one in 16 per instance), and a lower bound, to the
    /// millisecond, for any other call that took more than 2 ms.
    pub slowest_call_us: u64,
    /// Whether the plugin is degraded now.
    pub degraded: bool,
    /// Largest linear memory (bytes, all memories of one instance) any instance reached.
    pub peak_memory_bytes: u64,
    /// Configured memory limit in bytes.
    pub memory_limit_bytes: u64,
    /// The last failures ([`RECENT_ERRORS`] at most), newest first.
    pub recent_errors: Vec<PluginFailure>,
    /// Plugin API version the component was built for.
    pub api: &'static str,
    /// Event hook calls made.
    pub events_delivered: u64,
    /// Events dropped because the plugin's queue (`events.queue`) was full.
    pub events_dropped: u64,
    /// `timer.tick` calls made.
    pub ticks: u64,
    /// HTTP requests made (capability `http`).
    pub http_requests: u64,
    /// Messages published (capability `publish`).
    pub published: u64,
    /// Capability calls refused: not granted, host or topic not allowed, over a limit.
    pub capability_denied: u64,
    /// Bytes in the plugin's key-value store (capability `kv`).
    pub kv_bytes: u64,
}

/// Failures a plugin remembers for the dashboard; older ones are counted only.
pub const RECENT_ERRORS: usize = 20;

/// One failed plugin call, as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginFailure {
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    /// Hook, client and what happened (never a payload or a password).
    pub error: String,
}

/// One loaded Wasm plugin; implements whichever hook traits its component exports.
pub struct WasmPlugin {
    name: Arc<str>,
    config: PluginConfig,
    init_pairs: Vec<(String, String)>,
    /// Epoch deadlines in ticks, per kind of call (`deadline_index`).
    deadline_ticks: [u64; 3],
    pre: InstancePre<StoreState>,
    exports: Exports,
    artifact: ArtifactSource,
    pool: super::pool::InstancePool<Slot>,
    health: Mutex<Health>,
    degraded: AtomicBool,
    counts: Counts,
    peak_memory: Arc<AtomicU64>,
    /// Where failures are announced, once the broker has handed its event bus over.
    events: std::sync::OnceLock<crate::events::EventBus>,
    /// Capabilities and their state (API 0.2).
    caps: Arc<PluginCaps>,
    /// The API version the component was built for.
    api: Api,
    /// Where messages the plugin publishes go, once the broker handed it over.
    publisher: std::sync::OnceLock<Publisher>,
    /// Event hook delivery counters.
    event_counts: EventCounts,
    /// Whether dropping unroutable published messages was logged.
    unrouted_warned: AtomicBool,
    /// The Authentication Methods the plugin serves (`enhanced-auth.methods`).
    methods: Vec<String>,
    /// The hooks the component exports (asked on every event and tick: kept, not rebuilt).
    hook_names: Vec<&'static str>,
}

/// Counters of event hook delivery.
#[derive(Default)]
struct EventCounts {
    delivered: AtomicU64,
    dropped: AtomicU64,
    ticks: AtomicU64,
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("name", &self.name)
            .field("hooks", &self.hooks())
            .finish()
    }
}

impl WasmPlugin {
    /// Compiles (or loads from cache), checks the interface version, links, and creates and
    /// initializes the first instance so that a bad config is refused now, not on first use.
    pub(crate) fn load(
        host: &PluginHost,
        config: &PluginConfig,
        kv: &super::capabilities::KvStores,
    ) -> Result<WasmPlugin, PluginError> {
        config
            .validate()
            .map_err(|(key, reason)| PluginError::Config {
                plugin: config.name.clone(),
                key,
                reason,
            })?;
        let (component, artifact) = host.component(config)?;
        let api = super::version::check(&config.name, host.engine(), &component)?;
        let pre = host
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link {
                plugin: config.name.clone(),
                message: format!("{e:#}"),
            })?;
        let exported: Vec<String> = component
            .component_type()
            .exports(host.engine())
            .map(|(n, _)| n.to_owned())
            .collect();
        let exports = find_exports(&config.name, api, &pre, &exported)?;
        if !exports.has_hooks() {
            return Err(PluginError::NoHooks {
                plugin: config.name.clone(),
                version: api.version(),
                exports: if exported.is_empty() {
                    "nothing".to_owned()
                } else {
                    exported.join(", ")
                },
            });
        }
        if exports.hooks().contains(&"transform") && exports.hooks().contains(&"fast-transform") {
            return Err(PluginError::Export {
                plugin: config.name.clone(),
                message: "it exports both transform and fast-transform: a message would be transformed twice; export one of them".into(),
            });
        }
        let caps = PluginCaps::new(config, kv).map_err(|message| PluginError::Config {
            plugin: config.name.clone(),
            key: "capabilities.kv".into(),
            reason: message,
        })?;
        if api == Api::V01 && !config.capabilities.is_empty() {
            return Err(PluginError::Config {
                plugin: config.name.clone(),
                key: "capabilities".into(),
                reason: format!(
                    "capabilities need plugin API 0.2 (wit/v0.2); this component is built for {}",
                    api.version()
                ),
            });
        }
        let pool_size = match config.limits.pool_size {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        let plugin = WasmPlugin {
            name: Arc::from(config.name.as_str()),
            caps: Arc::new(caps),
            api,
            publisher: std::sync::OnceLock::new(),
            event_counts: EventCounts::default(),
            unrouted_warned: AtomicBool::new(false),
            methods: Vec::new(),
            hook_names: exports.hooks(),
            config: config.clone(),
            init_pairs: config.init_pairs(),
            deadline_ticks: Self::deadline_ticks(&config.limits),
            pre,
            exports,
            artifact,
            pool: super::pool::InstancePool::new(pool_size),
            health: Mutex::new(Health {
                recent: VecDeque::new(),
                degraded_since: None,
                last_probe: None,
                probing: false,
                errors: crate::history::HistoryRing::new(RECENT_ERRORS),
            }),
            degraded: AtomicBool::new(false),
            counts: Counts::default(),
            peak_memory: Arc::new(AtomicU64::new(0)),
            events: std::sync::OnceLock::new(),
        };
        let first = plugin.instantiate().map_err(|e| match e {
            InstantiateError::Init(message) => PluginError::Init {
                plugin: config.name.clone(),
                message,
            },
            InstantiateError::Failed(f) => PluginError::Instantiate {
                plugin: config.name.clone(),
                message: describe(&f),
            },
        })?;
        plugin.pool.put(first);
        let mut plugin = plugin;
        if plugin.hooks().contains(&"enhanced-auth") {
            plugin.methods = plugin
                .query_methods()
                .map_err(|message| PluginError::Init {
                    plugin: config.name.clone(),
                    message,
                })?;
        }
        info!(plugin = %plugin.name, hooks = ?plugin.hooks(), methods = ?plugin.methods, artifact = ?artifact, "plugin loaded");
        Ok(plugin)
    }

    /// Hands over the broker's event bus (the first one handed over stays).
    pub(crate) fn set_events(&self, events: crate::events::EventBus) {
        let _ = self.events.set(events);
    }

    /// Configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hooks the component exports.
    pub fn hooks(&self) -> Vec<&'static str> {
        self.hook_names.clone()
    }

    fn exports_hook(&self, hook: &str) -> bool {
        self.hook_names.contains(&hook)
    }

    /// Whether the component exports `authenticate`.
    pub fn is_authenticator(&self) -> bool {
        self.exports_hook("authenticate")
    }

    /// Whether the component exports `authorize`.
    pub fn is_authorizer(&self) -> bool {
        self.exports_hook("authorize")
    }

    /// Whether the component exports `transform`.
    pub fn is_transformer(&self) -> bool {
        self.exports_hook("transform") || self.exports_hook("fast-transform")
    }

    /// The MQTT 5 Authentication Methods the plugin serves (`enhanced-auth`).
    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    /// The plugin API version the component was built for (`0.1.0`, `0.2.0`).
    pub fn api_version(&self) -> &'static str {
        self.api.version()
    }

    /// Whether the plugin is degraded (failing closed without being called).
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Counters and state now.
    pub fn stats(&self) -> PluginStats {
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let created = get(&c.instances_created);
        PluginStats {
            name: self.name.to_string(),
            hooks: self.hooks(),
            artifact: self.artifact,
            calls: c.calls.sum(),
            failures: get(&c.failures),
            timeouts: get(&c.timeouts),
            out_of_memory: get(&c.out_of_memory),
            traps: get(&c.traps),
            rejected_degraded: get(&c.rejected_degraded),
            instances_created: created,
            mean_instantiate_us: get(&c.instantiate_nanos) / created.max(1) / 1000,
            slowest_call_us: get(&c.slowest_call_nanos) / 1000,
            degraded: self.degraded(),
            peak_memory_bytes: self.peak_memory.load(Ordering::Relaxed),
            memory_limit_bytes: self.config.limits.memory.0,
            recent_errors: self.health.lock().errors.newest_first().cloned().collect(),
            api: self.api.version(),
            events_delivered: get(&self.event_counts.delivered),
            events_dropped: get(&self.event_counts.dropped),
            ticks: get(&self.event_counts.ticks),
            http_requests: get(&self.caps.counts.http_requests),
            published: get(&self.caps.counts.published),
            capability_denied: get(&self.caps.counts.denied),
            kv_bytes: self.caps.kv.as_ref().map_or(0, |k| k.size()),
        }
    }

    /// The epoch deadline of each kind of call, in ticks (see `deadline_index`).
    fn deadline_ticks(limits: &super::config::PluginLimits) -> [u64; 3] {
        let tick = EPOCH_TICK.as_nanos().max(1);
        // +1: the current tick may be about to end, so a deadline of n ticks could fire
        // after n-1 ticks' worth of time; this makes the limit a lower bound.
        let ticks = |d: Duration| d.as_nanos().div_ceil(tick) as u64 + 1;
        [
            ticks(limits.init_timeout.get()),
            ticks(limits.auth_timeout.get()),
            ticks(limits.call_timeout.get()),
        ]
    }

    fn timeout(&self, hook: Hook) -> Duration {
        let l = &self.config.limits;
        match hook {
            Hook::Init => l.init_timeout.get(),
            Hook::Authenticate | Hook::EnhancedAuth => l.auth_timeout.get(),
            Hook::Authorize | Hook::Transform | Hook::Event | Hook::Tick => l.call_timeout.get(),
        }
    }

    fn set_deadline(&self, store: &mut Store<StoreState>, hook: Hook) {
        store.set_epoch_deadline(self.deadline_ticks[deadline_index(hook)]);
    }

    /// Creates an instance and runs `init` on it.
    fn instantiate(&self) -> Result<Box<Slot>, InstantiateError> {
        let started = Instant::now();
        let limiter = Limiter {
            limit: usize::try_from(self.config.limits.memory.0).unwrap_or(usize::MAX),
            used: 0,
            hit_limit: false,
            peak: self.peak_memory.clone(),
        };
        let mut store = Store::new(
            self.pre.engine(),
            StoreState::new(self.name.clone(), limiter, self.caps.clone()),
        );
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        self.set_deadline(&mut store, Hook::Init);
        let fail = |store: &Store<StoreState>, e: wasmtime::Error| {
            InstantiateError::Failed(classify(store, e))
        };
        let instance: Instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| fail(&store, e))?;
        let init = match &self.exports {
            Exports::V01(e) => match &e.lifecycle {
                Some(idx) => {
                    let guest = idx
                        .load(&mut store, &instance)
                        .map_err(|e| fail(&store, e))?;
                    Some(
                        guest
                            .call_init(&mut store, &self.init_pairs)
                            .map_err(|e| fail(&store, e))?,
                    )
                }
                None => None,
            },
            Exports::V02(e) => match &e.lifecycle {
                Some(idx) => {
                    let guest = idx
                        .load(&mut store, &instance)
                        .map_err(|e| fail(&store, e))?;
                    let answer = guest
                        .call_init(&mut store, &self.init_pairs)
                        .map_err(|e| fail(&store, e))?;
                    Some(answer)
                }
                None => None,
            },
        };
        if let Some(Err(message)) = init {
            return Err(InstantiateError::Init(
                bindings::truncate(&message, 1024).to_owned(),
            ));
        }
        // Loading checks each export's type: a mismatch names the function and the type
        // this broker calls it with.
        macro_rules! load {
            ($idx:expr, $hook:literal) => {
                match $idx {
                    Some(i) => Some(i.load(&mut store, &instance).map_err(|e| {
                        InstantiateError::Failed(CallFailure::Trap(wrong_type(self.api, $hook, &e)))
                    })?),
                    None => None,
                }
            };
        }
        let guests = match &self.exports {
            Exports::V01(e) => Guests::V01(Guests01 {
                authenticate: load!(&e.authenticate, "authenticate"),
                authorize: load!(&e.authorize, "authorize"),
                transform: load!(&e.transform, "transform"),
            }),
            Exports::V02(e) => Guests::V02(Box::new(Guests02 {
                authenticate: load!(&e.authenticate, "authenticate"),
                enhanced_auth: load!(&e.enhanced_auth, "enhanced-auth"),
                authorize: load!(&e.authorize, "authorize"),
                transform: load!(&e.transform, "transform"),
                fast_transform: load!(&e.fast_transform, "fast-transform"),
                connection_events: load!(&e.connection_events, "connection-events"),
                subscription_events: load!(&e.subscription_events, "subscription-events"),
                message_events: load!(&e.message_events, "message-events"),
                delivery_events: load!(&e.delivery_events, "delivery-events"),
                broker_events: load!(&e.broker_events, "broker-events"),
                timer: load!(&e.timer, "timer"),
            })),
        };
        let slot = Box::new(Slot {
            store,
            guests,
            calls: 0,
        });
        self.counts
            .instances_created
            .fetch_add(1, Ordering::Relaxed);
        self.counts
            .instantiate_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(slot)
    }

    /// Runs one hook call in a pooled instance, bounded by the hook's deadline.
    ///
    /// The pool lock is held only to take an instance out and to put it back, never during
    /// the call. A failed instance is dropped; the next call creates a fresh one.
    fn call<R>(
        &self,
        client: Option<&ClientInfo>,
        message: Option<&Message>,
        hook: Hook,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, CallFailure> {
        self.counts.calls.add_one();
        let probe = if self.degraded.load(Ordering::Relaxed) {
            if !self.try_probe() {
                self.counts
                    .rejected_degraded
                    .fetch_add(1, Ordering::Relaxed);
                self.counts.failures.fetch_add(1, Ordering::Relaxed);
                return Err(CallFailure::Degraded);
            }
            true
        } else {
            false
        };
        let pooled = self.pool.take();
        let mut slot = match pooled {
            Some(s) => s,
            None => match self.instantiate() {
                Ok(s) => s,
                Err(InstantiateError::Failed(f)) => return Err(self.failed(client, hook, f, probe)),
                Err(InstantiateError::Init(m)) => {
                    return Err(self.failed(
                        client,
                        hook,
                        CallFailure::Trap(format!("init failed: {m}")),
                        probe,
                    ))
                }
            },
        };
        slot.calls = slot.calls.wrapping_add(1);
        let precise = (slot.calls % PRECISE_TIMING_EVERY == 1).then(Instant::now);
        let coarse_started = coarse_clock::nanos();
        {
            let state = slot.store.data_mut();
            state.call.begin(client, message);
            state.call.started = Some((coarse_started, self.timeout(hook)));
        }
        self.set_deadline(&mut slot.store, hook);
        let result = f(&mut slot);
        let published = {
            let state = slot.store.data_mut();
            state.call.end();
            state.client_id = None;
            if state.published.is_empty() {
                Vec::new()
            } else {
                std::mem::take(&mut state.published)
            }
        };
        let took = match precise {
            Some(at) => at.elapsed().as_nanos() as u64,
            // A lower bound: the coarse clock may have been about to advance at the start.
            None => coarse_clock::nanos()
                .saturating_sub(coarse_started)
                .saturating_sub(EPOCH_TICK.as_nanos() as u64),
        };
        // Read first: a store to the shared line on every call would bounce it between
        // the threads calling the plugin.
        if took > self.counts.slowest_call_nanos.load(Ordering::Relaxed) {
            self.counts
                .slowest_call_nanos
                .fetch_max(took, Ordering::Relaxed);
        }
        match result {
            Ok(Ok(value)) => {
                self.route(published);
                self.pool.put(slot);
                if probe {
                    self.recovered();
                }
                Ok(value)
            }
            Ok(Err(invalid)) => {
                // The instance is healthy but answered nonsense; keep it, count the failure.
                self.pool.put(slot);
                Err(self.failed(client, hook, CallFailure::Trap(invalid), probe))
            }
            Err(e) => {
                let failure = classify(&slot.store, e);
                // Dropping the slot discards the instance: its state may be corrupt.
                drop(slot);
                Err(self.failed(client, hook, failure, probe))
            }
        }
    }

    /// Decides whether a degraded plugin gets one probe call now.
    fn try_probe(&self) -> bool {
        let cooldown = self.config.limits.degraded_cooldown.get();
        let mut h = self.health.lock();
        let now = Instant::now();
        let due = h
            .last_probe
            .or(h.degraded_since)
            .is_none_or(|t| now.duration_since(t) >= cooldown);
        if due && !h.probing {
            h.probing = true;
            h.last_probe = Some(now);
            true
        } else {
            false
        }
    }

    fn recovered(&self) {
        let mut h = self.health.lock();
        h.probing = false;
        h.degraded_since = None;
        h.recent.clear();
        self.degraded.store(false, Ordering::Relaxed);
        info!(plugin = %self.name, "plugin recovered: a probe call succeeded; no longer degraded");
    }

    /// Counts and logs a failure, marks the plugin degraded when failures pile up.
    fn failed(
        &self,
        client: Option<&ClientInfo>,
        hook: Hook,
        failure: CallFailure,
        probe: bool,
    ) -> CallFailure {
        let c = &self.counts;
        c.failures.fetch_add(1, Ordering::Relaxed);
        match &failure {
            CallFailure::Timeout => c.timeouts.fetch_add(1, Ordering::Relaxed),
            CallFailure::OutOfMemory(_) => c.out_of_memory.fetch_add(1, Ordering::Relaxed),
            CallFailure::Trap(_) | CallFailure::Degraded => c.traps.fetch_add(1, Ordering::Relaxed),
        };
        let limit_ms = self.timeout(hook).as_secs_f64() * 1e3;
        let client_id = client.map_or("-", |c| &*c.client_id);
        warn!(
            plugin = %self.name,
            client_id,
            hook = hook.as_str(),
            on_error = ?self.config.on_error,
            limit_ms,
            memory_limit = self.config.limits.memory.0,
            "plugin call failed: {}",
            describe(&failure)
        );
        let error = match client {
            Some(c) => format!(
                "{} for client {}: {}",
                hook.as_str(),
                c.client_id,
                describe(&failure)
            ),
            None => format!("{}: {}", hook.as_str(), describe(&failure)),
        };
        if let Some(events) = self.events.get() {
            events.emit(|| crate::events::BrokerEvent::PluginError {
                plugin: self.name.to_string(),
                error: error.clone(),
            });
        }
        let limits = &self.config.limits;
        let now = Instant::now();
        let mut h = self.health.lock();
        h.errors.push(PluginFailure {
            at: super::host::unix_millis(),
            error,
        });
        if probe {
            h.probing = false;
            h.last_probe = Some(now);
        }
        h.recent.push_back(now);
        while h
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > limits.failure_window.get())
        {
            h.recent.pop_front();
        }
        if h.recent.len() >= limits.failures_to_degrade as usize && h.degraded_since.is_none() {
            h.degraded_since = Some(now);
            self.degraded.store(true, Ordering::Relaxed);
            error!(
                plugin = %self.name,
                failures = h.recent.len(),
                window = %limits.failure_window,
                cooldown = %limits.degraded_cooldown,
                on_error = ?self.config.on_error,
                "plugin degraded: too many failed calls; failing per on_error without calling it, probing again after the cooldown"
            );
        }
        failure
    }

    /// Whether `topic` (a topic name) is one this plugin asked to see (`topics:`).
    fn wants(&self, topic: &str) -> bool {
        let filters = &self.config.topics;
        filters.is_empty()
            || filters
                .iter()
                .any(|f| crate::protocol::topic::filter_matches(f, topic))
    }

    fn fail_closed(&self) -> bool {
        self.config.on_error != OnError::Pass
    }
}

enum InstantiateError {
    /// `init` returned an error string.
    Init(String),
    /// Instantiation or `init` trapped, timed out or ran out of memory.
    Failed(CallFailure),
}

fn classify(store: &Store<StoreState>, e: wasmtime::Error) -> CallFailure {
    if store.data().limiter.hit_limit {
        return CallFailure::OutOfMemory(format!("{e:#}"));
    }
    if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
        return CallFailure::Timeout;
    }
    CallFailure::Trap(format!("{e:#}"))
}

fn describe(f: &CallFailure) -> String {
    match f {
        CallFailure::Timeout => "time limit exceeded".to_owned(),
        CallFailure::OutOfMemory(m) => format!("out of memory: {}", bindings::truncate(m, 300)),
        CallFailure::Trap(m) => format!("trap: {}", bindings::truncate(m, 300)),
        CallFailure::Degraded => "plugin is degraded".to_owned(),
    }
}

impl Authenticator for WasmPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn authenticate(&self, client: &ClientInfo, credentials: &Credentials<'_>) -> AuthOutcome {
        let r = match self.api {
            Api::V01 => {
                let info = bindings::client_info(client);
                let creds = bindings::credentials(credentials);
                self.call(Some(client), None, Hook::Authenticate, |slot| {
                    let Guests::V01(Guests01 {
                        authenticate: Some(g),
                        ..
                    }) = &slot.guests
                    else {
                        return Ok(Err("authenticate is not exported".into()));
                    };
                    g.call_authenticate(&mut slot.store, &info, &creds)
                        .map(|o| Ok(bindings::auth_outcome(o)))
                })
            }
            Api::V02 => {
                let creds = v02::wit::Credentials {
                    username: credentials.username.map(str::to_owned),
                    password: credentials.password.map(<[u8]>::to_vec),
                };
                self.call(Some(client), None, Hook::Authenticate, |slot| {
                    let Guests::V02(g) = &slot.guests else {
                        return Ok(Err("authenticate is not exported".into()));
                    };
                    let Some(g) = &g.authenticate else {
                        return Ok(Err("authenticate is not exported".into()));
                    };
                    g.call_authenticate(&mut slot.store, Resource::new_borrow(CALL_HANDLE), &creds)
                        .map(|o| Ok(v02::auth_outcome(o)))
                })
            }
        };
        match r {
            Ok(outcome) => outcome,
            Err(f) if self.fail_closed() => AuthOutcome::Deny(crate::hooks::Refusal::new(
                DenyReason::NotAuthorized,
                format!("plugin failed ({})", describe(&f)),
            )),
            Err(_) => AuthOutcome::Abstain,
        }
    }
}

impl Authorizer for WasmPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn authorize(&self, client: &ClientInfo, request: &AclRequest<'_>) -> Decision {
        self.authorize_for_cache(client, request).0
    }

    fn cacheable(&self) -> bool {
        self.config.cache_decisions
    }

    fn authorize_for_cache(
        &self,
        client: &ClientInfo,
        request: &AclRequest<'_>,
    ) -> (Decision, bool) {
        if request.action != crate::hooks::AclAction::Subscribe && !self.wants(request.topic) {
            return (Decision::Abstain, true);
        }
        let r = match self.api {
            Api::V01 => {
                let info = bindings::client_info(client);
                let req = bindings::acl_request(request);
                self.call(Some(client), None, Hook::Authorize, |slot| {
                    let Guests::V01(Guests01 {
                        authorize: Some(g), ..
                    }) = &slot.guests
                    else {
                        return Ok(Err("authorize is not exported".into()));
                    };
                    g.call_authorize(&mut slot.store, &info, &req)
                        .map(|d| Ok(bindings::decision(d)))
                })
            }
            Api::V02 => {
                let req = v02::acl_request(request);
                self.call(Some(client), None, Hook::Authorize, |slot| {
                    let Guests::V02(g) = &slot.guests else {
                        return Ok(Err("authorize is not exported".into()));
                    };
                    let Some(g) = &g.authorize else {
                        return Ok(Err("authorize is not exported".into()));
                    };
                    g.call_authorize(&mut slot.store, Resource::new_borrow(CALL_HANDLE), &req)
                        .map(|d| Ok(v02::decision(d)))
                })
            }
        };
        match r {
            Ok(d) => (d, self.config.cache_decisions),
            // An answer made up for a failed call holds only until the next request.
            Err(_) if self.fail_closed() => (Decision::Deny, false),
            Err(_) => (Decision::Abstain, false),
        }
    }
}

impl Transformer for WasmPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn transform(&self, client: &ClientInfo, message: &Message) -> TransformResult {
        if !self.wants(&message.topic) {
            return TransformResult::keep();
        }
        let r = match self.api {
            Api::V01 => {
                let info = bindings::client_info(client);
                let msg = bindings::message_to_wit(message);
                self.call(Some(client), None, Hook::Transform, |slot| {
                    let Guests::V01(Guests01 {
                        transform: Some(g), ..
                    }) = &slot.guests
                    else {
                        return Ok(Err("transform is not exported".into()));
                    };
                    let out = g.call_transform(&mut slot.store, &info, &msg)?;
                    Ok(convert_transform(out))
                })
            }
            Api::V02 if self.exports_hook("fast-transform") => self.fast_transform(client, message),
            Api::V02 => self.call(Some(client), Some(message), Hook::Transform, |slot| {
                let Guests::V02(g) = &slot.guests else {
                    return Ok(Err("transform is not exported".into()));
                };
                let Some(g) = &g.transform else {
                    return Ok(Err("transform is not exported".into()));
                };
                let out = g.call_transform(
                    &mut slot.store,
                    Resource::new_borrow(CALL_HANDLE),
                    Resource::new_borrow(CALL_HANDLE),
                )?;
                Ok(convert_transform_v02(out))
            }),
        };
        match r {
            Ok(t) => t,
            Err(_) if self.fail_closed() => TransformResult {
                action: TransformAction::Drop,
                additional: Vec::new(),
            },
            Err(_) => TransformResult::keep(),
        }
    }
}

impl WasmPlugin {
    /// A `fast-transform` call: the guest reads the message through `current` and hands
    /// its replacement and additional messages to `current.replace` / `current.add`.
    fn fast_transform(
        &self,
        client: &ClientInfo,
        message: &Message,
    ) -> Result<TransformResult, CallFailure> {
        use v02::fast_transform::Verdict;
        self.call(Some(client), Some(message), Hook::Transform, |slot| {
            let Guests::V02(g) = &slot.guests else {
                return Ok(Err("fast-transform is not exported".into()));
            };
            let Some(g) = &g.fast_transform else {
                return Ok(Err("fast-transform is not exported".into()));
            };
            slot.store.data_mut().call.output = Some(Default::default());
            let verdict = g.call_transform(&mut slot.store)?;
            let out = slot.store.data_mut().call.output.take().unwrap_or_default();
            let action = match verdict {
                Verdict::Keep => TransformAction::Keep,
                Verdict::Drop => TransformAction::Drop,
                Verdict::Replace => match out.replacement {
                    Some(m) => TransformAction::Replace(m),
                    None => {
                        return Ok(Err(
                            "fast-transform answered replace without calling current.replace"
                                .into(),
                        ))
                    }
                },
            };
            Ok(Ok(TransformResult {
                action,
                additional: out.additional,
            }))
        })
    }
}

/// Validates and converts a plugin's transform answer (API 0.2).
fn convert_transform_v02(out: v02::wit::TransformResult) -> Result<TransformResult, String> {
    if out.additional.is_empty() && matches!(out.action, v02::wit::TransformAction::Keep) {
        // The common answer, without building anything.
        return Ok(TransformResult::keep());
    }
    if out.additional.len() > MAX_ADDITIONAL_MESSAGES {
        return Err(format!(
            "transform returned {} additional messages; at most {MAX_ADDITIONAL_MESSAGES} are allowed",
            out.additional.len()
        ));
    }
    let action = match out.action {
        v02::wit::TransformAction::Keep => TransformAction::Keep,
        v02::wit::TransformAction::Drop => TransformAction::Drop,
        v02::wit::TransformAction::Replace(m) => {
            TransformAction::Replace(v02::message_from_wit(m)?)
        }
    };
    let additional = out
        .additional
        .into_iter()
        .map(v02::message_from_wit)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TransformResult { action, additional })
}

/// Validates and converts a plugin's transform answer; any invalid message fails the call.
fn convert_transform(out: bindings::wit::TransformResult) -> Result<TransformResult, String> {
    if out.additional.len() > MAX_ADDITIONAL_MESSAGES {
        return Err(format!(
            "transform returned {} additional messages; at most {MAX_ADDITIONAL_MESSAGES} are allowed",
            out.additional.len()
        ));
    }
    let action = match out.action {
        bindings::wit::TransformAction::Keep => TransformAction::Keep,
        bindings::wit::TransformAction::Drop => TransformAction::Drop,
        bindings::wit::TransformAction::Replace(m) => {
            TransformAction::Replace(bindings::message_from_wit(m)?)
        }
    };
    let additional = out
        .additional
        .into_iter()
        .map(bindings::message_from_wit)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TransformResult { action, additional })
}

impl Exports {
    /// The hooks exported, by name.
    fn hooks(&self) -> Vec<&'static str> {
        let mut h = Vec::new();
        let mut add = |present: bool, name| {
            if present {
                h.push(name);
            }
        };
        match self {
            Exports::V01(e) => {
                add(e.authenticate.is_some(), "authenticate");
                add(e.authorize.is_some(), "authorize");
                add(e.transform.is_some(), "transform");
            }
            Exports::V02(e) => {
                add(e.authenticate.is_some(), "authenticate");
                add(e.enhanced_auth.is_some(), "enhanced-auth");
                add(e.authorize.is_some(), "authorize");
                add(e.transform.is_some(), "transform");
                add(e.fast_transform.is_some(), "fast-transform");
                add(e.connection_events.is_some(), "connection-events");
                add(e.subscription_events.is_some(), "subscription-events");
                add(e.message_events.is_some(), "message-events");
                add(e.delivery_events.is_some(), "delivery-events");
                add(e.broker_events.is_some(), "broker-events");
                add(e.timer.is_some(), "timer");
            }
        }
        h
    }

    fn has_hooks(&self) -> bool {
        !self.hooks().is_empty()
    }
}

/// Looks up each hook interface the component exports; an interface that is exported but
/// does not have the expected functions is an error naming it (a hook that is silently
/// ignored would be worse).
fn find_exports(
    plugin: &str,
    api: Api,
    pre: &InstancePre<StoreState>,
    exported: &[String],
) -> Result<Exports, PluginError> {
    fn one<I>(
        plugin: &str,
        api: Api,
        exported: &[String],
        interface: &'static str,
        found: wasmtime::Result<I>,
    ) -> Result<Option<I>, PluginError> {
        let prefix = format!("{}/{interface}@", bindings::PACKAGE);
        match found {
            Ok(i) => Ok(Some(i)),
            Err(e) if exported.iter().any(|n| n.starts_with(&prefix)) => Err(PluginError::Export {
                plugin: plugin.to_owned(),
                message: wrong_type(api, interface, &e),
            }),
            Err(_) => Ok(None),
        }
    }
    // Each hook interface: its indices when exported, an error when exported wrongly.
    macro_rules! find {
        ($interface:literal, $indices:ty) => {
            one(plugin, api, exported, $interface, <$indices>::new(pre))?
        };
    }
    Ok(match api {
        Api::V01 => Exports::V01(Exports01 {
            lifecycle: find!("lifecycle", lifecycle::GuestIndices),
            authenticate: find!("authenticate", authenticate::GuestIndices),
            authorize: find!("authorize", authorize::GuestIndices),
            transform: find!("transform", transform::GuestIndices),
        }),
        Api::V02 => Exports::V02(Box::new(Exports02 {
            lifecycle: find!("lifecycle", v02::lifecycle::GuestIndices),
            authenticate: find!("authenticate", v02::authenticate::GuestIndices),
            enhanced_auth: find!("enhanced-auth", v02::enhanced_auth::GuestIndices),
            authorize: find!("authorize", v02::authorize::GuestIndices),
            transform: find!("transform", v02::transform::GuestIndices),
            fast_transform: find!("fast-transform", v02::fast_transform::GuestIndices),
            connection_events: find!("connection-events", v02::connection_events::GuestIndices),
            subscription_events: find!(
                "subscription-events",
                v02::subscription_events::GuestIndices
            ),
            message_events: find!("message-events", v02::message_events::GuestIndices),
            delivery_events: find!("delivery-events", v02::delivery_events::GuestIndices),
            broker_events: find!("broker-events", v02::broker_events::GuestIndices),
            timer: find!("timer", v02::timer::GuestIndices),
        })),
    })
}

/// The functions of a hook interface as the WIT declares them, for error messages.
fn expected_signature(api: Api, interface: &str) -> &'static str {
    match (api, interface) {
        (_, "lifecycle") => "init: func(config: list<tuple<string, string>>) -> result<_, string>",
        (Api::V01, "authenticate") => "authenticate: func(client: client-info, credentials: credentials) -> auth-outcome",
        (Api::V01, "authorize") => "authorize: func(client: client-info, request: acl-request) -> decision",
        (Api::V01, "transform") => "transform: func(client: client-info, message: message) -> transform-result",
        (Api::V02, "authenticate") => "authenticate: func(client: borrow<client>, credentials: credentials) -> auth-outcome",
        (Api::V02, "authorize") => "authorize: func(client: borrow<client>, request: acl-request) -> decision",
        (Api::V02, "enhanced-auth") => "methods: func() -> list<string>; start: func(method: string, data: list<u8>) -> auth-step; continue-auth: func(method: string, data: list<u8>, state: list<u8>) -> auth-step; knows: func(method: string, username: string) -> bool",
        (Api::V02, "transform") => "transform: func(client: borrow<client>, message: borrow<message>) -> transform-result",
        (Api::V02, "fast-transform") => "transform: func() -> verdict (enum verdict { keep, drop, replace })",
        (Api::V02, "connection-events") => "connected: func(client: client-summary, session-present: bool); disconnected: func(client-id: string, reason: string); session-expired: func(client-id: string)",
        (Api::V02, "subscription-events") => "subscribed: func(client-id: string, filter: string, qos: qos); unsubscribed: func(client-id: string, filter: string)",
        (Api::V02, "message-events") => "published: func(client-id: string, topic: string, qos: qos, retain: bool, payload-size: u32, subscribers: u32); dropped: func(client-id: string, topic: string, reason: string)",
        (Api::V02, "delivery-events") => "delivered: func(client-id: string, topic: string, qos: qos); acknowledged: func(client-id: string, topic: string, qos: qos)",
        (Api::V02, "broker-events") => "config-reloaded: func(generation: u64, ok: bool, error: option<string>)",
        (Api::V02, "timer") => "tick: func(now-millis: u64)",
        _ => "(see the WIT)",
    }
}

/// The error for an exported hook interface whose functions do not have the WIT's types.
fn wrong_type(api: Api, interface: &str, e: &wasmtime::Error) -> String {
    let wit = match api {
        Api::V01 => "wit/plugin.wit",
        Api::V02 => "wit/v0.2/plugin.wit",
    };
    format!(
        "its export `{}/{interface}@{}` does not match what this broker calls: expected `{}` ({wit}); wasmtime says: {}",
        bindings::PACKAGE,
        api.version(),
        expected_signature(api, interface),
        bindings::truncate(&format!("{e:#}"), 300)
    )
}

impl WasmPlugin {
    /// Hands over the broker's event bus (failures are reported on it) and where messages
    /// the plugin publishes go.
    pub(crate) fn attach(&self, events: crate::events::EventBus, publisher: Publisher) {
        self.set_events(events);
        let _ = self.publisher.set(publisher);
    }

    /// Whether the plugin exports event hooks or a granted tick (it needs an event route).
    pub(crate) fn wants_route(&self) -> bool {
        self.hook_names.iter().any(|h| h.ends_with("-events")) || self.tick_interval().is_some()
    }

    /// Whether the plugin exports the per-delivery events.
    pub(crate) fn wants_deliveries(&self) -> bool {
        self.exports_hook("delivery-events")
    }

    /// How often `timer.tick` is called: the grant, when the plugin exports `timer`.
    pub(crate) fn tick_interval(&self) -> Option<Duration> {
        match (self.config.capabilities.tick, self.exports_hook("timer")) {
            (Some(t), true) => Some(t.get()),
            _ => None,
        }
    }

    /// Logs a tick grant without `timer`, or `timer` without a grant (once, at attach).
    pub(crate) fn check_tick_grant(&self) {
        match (self.config.capabilities.tick, self.exports_hook("timer")) {
            (None, true) => {
                info!(plugin = %self.name, "the plugin exports timer.tick but `capabilities.tick` is not granted: it is not called")
            }
            (Some(_), false) => {
                warn!(plugin = %self.name, "`capabilities.tick` is granted but the plugin does not export timer.tick")
            }
            _ => {}
        }
    }

    /// Most events waiting for this plugin (`events.queue`).
    pub(crate) fn event_queue_limit(&self) -> usize {
        self.config.events.queue
    }

    /// Counts events dropped for this plugin.
    pub(crate) fn count_dropped_events(&self, n: u64) {
        self.event_counts.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the plugin exports the hook for `ev`.
    pub(crate) fn handles(&self, ev: &crate::events::BrokerEvent) -> bool {
        use crate::events::BrokerEvent as E;
        let Exports::V02(e) = &self.exports else {
            return false;
        };
        match ev {
            E::ClientConnected { .. } | E::ClientDisconnected { .. } | E::SessionExpired { .. } => {
                e.connection_events.is_some()
            }
            E::Subscribed { .. } | E::Unsubscribed { .. } => e.subscription_events.is_some(),
            E::MessagePublished { .. } | E::MessageDropped { .. } => e.message_events.is_some(),
            E::MessageDelivered { .. } | E::MessageAcknowledged { .. } => {
                e.delivery_events.is_some()
            }
            E::ConfigReloaded { .. } => e.broker_events.is_some(),
            _ => false,
        }
    }

    /// Calls the event hook for `ev` now, on this thread. The broker calls it from the
    /// plugin's event thread; benchmarks call it directly.
    pub fn deliver(&self, ev: &crate::events::BrokerEvent) {
        use crate::events::BrokerEvent as E;
        let r = self.call(None, None, Hook::Event, |slot| {
            let Guests::V02(g) = &slot.guests else {
                return Ok(Err("not an API 0.2 plugin".into()));
            };
            // The plugin's log lines name the client the event is about.
            slot.store.data_mut().client_id = event_client_id(ev);
            let store = &mut slot.store;
            let done = match (ev, &**g) {
                (
                    E::ClientConnected {
                        client_id,
                        peer,
                        transport,
                        username,
                        clean_session,
                        session_present,
                        protocol,
                    },
                    Guests02 {
                        connection_events: Some(h),
                        ..
                    },
                ) => {
                    let summary = v02::wit::ClientSummary {
                        client_id: client_id.to_string(),
                        username: username.clone(),
                        peer_address: peer.to_string(),
                        transport: v02::transport(*transport),
                        protocol_level: v02::protocol_level(*protocol),
                        clean_start: *clean_session,
                    };
                    h.call_connected(store, &summary, *session_present)
                }
                (
                    E::ClientDisconnected {
                        client_id, reason, ..
                    },
                    Guests02 {
                        connection_events: Some(h),
                        ..
                    },
                ) => h.call_disconnected(store, client_id, reason.as_str()),
                (
                    E::SessionExpired { client_id },
                    Guests02 {
                        connection_events: Some(h),
                        ..
                    },
                ) => h.call_session_expired(store, client_id),
                (
                    E::Subscribed {
                        client_id,
                        filter,
                        qos,
                    },
                    Guests02 {
                        subscription_events: Some(h),
                        ..
                    },
                ) => h.call_subscribed(store, client_id, filter, v02::qos_to_wit(*qos)),
                (
                    E::Unsubscribed { client_id, filter },
                    Guests02 {
                        subscription_events: Some(h),
                        ..
                    },
                ) => h.call_unsubscribed(store, client_id, filter),
                (
                    E::MessagePublished {
                        client_id,
                        topic,
                        qos,
                        retain,
                        payload_len,
                        subscribers,
                    },
                    Guests02 {
                        message_events: Some(h),
                        ..
                    },
                ) => h.call_published(
                    store,
                    client_id,
                    topic,
                    v02::qos_to_wit(*qos),
                    *retain,
                    u32::try_from(*payload_len).unwrap_or(u32::MAX),
                    u32::try_from(*subscribers).unwrap_or(u32::MAX),
                ),
                (
                    E::MessageDropped {
                        client_id,
                        topic,
                        reason,
                    },
                    Guests02 {
                        message_events: Some(h),
                        ..
                    },
                ) => h.call_dropped(store, client_id, topic, reason),
                (
                    E::MessageDelivered {
                        client_id,
                        topic,
                        qos,
                    },
                    Guests02 {
                        delivery_events: Some(h),
                        ..
                    },
                ) => h.call_delivered(store, client_id, topic, v02::qos_to_wit(*qos)),
                (
                    E::MessageAcknowledged {
                        client_id,
                        topic,
                        qos,
                    },
                    Guests02 {
                        delivery_events: Some(h),
                        ..
                    },
                ) => h.call_acknowledged(store, client_id, topic, v02::qos_to_wit(*qos)),
                (
                    E::ConfigReloaded {
                        generation,
                        ok,
                        error,
                    },
                    Guests02 {
                        broker_events: Some(h),
                        ..
                    },
                ) => h.call_config_reloaded(store, *generation, *ok, error.as_deref()),
                _ => return Ok(Ok(())),
            };
            done.map(Ok)
        });
        if r.is_ok() {
            self.event_counts.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls `timer.tick` now, on this thread (the broker calls it from the plugin's event
    /// thread).
    pub fn tick(&self) {
        let now = super::host::unix_millis();
        let r = self.call(None, None, Hook::Tick, |slot| {
            let Guests::V02(g) = &slot.guests else {
                return Ok(Err("not an API 0.2 plugin".into()));
            };
            let Some(t) = &g.timer else {
                return Ok(Err("timer is not exported".into()));
            };
            t.call_tick(&mut slot.store, now).map(Ok)
        });
        if r.is_ok() {
            self.event_counts.ticks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Routes messages the plugin published during a call.
    fn route(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        match self.publisher.get() {
            Some(publish) => {
                for m in messages {
                    self.caps.counts.published.fetch_add(1, Ordering::Relaxed);
                    publish(m);
                }
            }
            None => {
                if !self.unrouted_warned.swap(true, Ordering::Relaxed) {
                    warn!(
                        plugin = %self.name,
                        count = messages.len(),
                        "messages the plugin published are dropped: it is not attached to a running broker (logged once)"
                    );
                }
            }
        }
    }
}

/// The client an event is about, if any.
fn event_client_id(ev: &crate::events::BrokerEvent) -> Option<Arc<str>> {
    use crate::events::BrokerEvent as E;
    match ev {
        E::ClientConnected { client_id, .. }
        | E::ClientDisconnected { client_id, .. }
        | E::SessionExpired { client_id }
        | E::Subscribed { client_id, .. }
        | E::Unsubscribed { client_id, .. }
        | E::MessagePublished { client_id, .. }
        | E::MessageDelivered { client_id, .. }
        | E::MessageAcknowledged { client_id, .. }
        | E::MessageDropped { client_id, .. } => Some(client_id.clone()),
        _ => None,
    }
}

/// Longest `state` an enhanced-auth step may hand over to the next one.
pub const MAX_AUTH_STATE: usize = 4096;

/// One call of the `enhanced-auth` interface.
enum AuthCall<'a> {
    Start(&'a [u8]),
    Continue(&'a [u8], &'a [u8]),
}

impl WasmPlugin {
    /// Asks the plugin for its Authentication Methods (at load); `Err` says what is wrong.
    fn query_methods(&self) -> Result<Vec<String>, String> {
        let methods = self
            .call(None, None, Hook::EnhancedAuth, |slot| {
                let Guests::V02(g) = &slot.guests else {
                    return Ok(Err("not an API 0.2 plugin".into()));
                };
                let Some(e) = &g.enhanced_auth else {
                    return Ok(Err("enhanced-auth is not exported".into()));
                };
                e.call_methods(&mut slot.store).map(Ok)
            })
            .map_err(|f| format!("enhanced-auth.methods failed: {}", describe(&f)))?;
        if methods.is_empty() {
            return Err("enhanced-auth.methods returned no method".into());
        }
        for (i, m) in methods.iter().enumerate() {
            if m.is_empty() || m.len() > 64 || m.chars().any(char::is_control) {
                return Err(format!(
                    "enhanced-auth.methods: {:?} is not a method name (1 to 64 characters, no control characters)",
                    bindings::truncate(m, 80)
                ));
            }
            if methods[..i].contains(m) {
                return Err(format!("enhanced-auth.methods names {m:?} twice"));
            }
        }
        Ok(methods)
    }

    /// One step of an exchange, as the broker's [`AuthStep`](crate::hooks::AuthStep).
    fn auth_step(self: &Arc<Self>, method: &str, call: AuthCall<'_>) -> crate::hooks::AuthStep {
        use crate::hooks::AuthStep;
        let r = self.call(None, None, Hook::EnhancedAuth, |slot| {
            let Guests::V02(g) = &slot.guests else {
                return Ok(Err("not an API 0.2 plugin".into()));
            };
            let Some(e) = &g.enhanced_auth else {
                return Ok(Err("enhanced-auth is not exported".into()));
            };
            match call {
                AuthCall::Start(data) => e.call_start(&mut slot.store, method, data),
                AuthCall::Continue(data, state) => {
                    e.call_continue_auth(&mut slot.store, method, data, state)
                }
            }
            .map(Ok)
        });
        use v02::enhanced_auth::AuthStep as Step;
        match r {
            Ok(Step::Challenge(c)) if c.state.len() > MAX_AUTH_STATE => AuthStep::Failure(format!(
                "{}: enhanced-auth returned a state of {} bytes (at most {MAX_AUTH_STATE})",
                self.name,
                c.state.len()
            )),
            Ok(Step::Challenge(c)) => AuthStep::Continue(
                c.data,
                Box::new(PluginExchange {
                    plugin: self.clone(),
                    method: method.to_owned(),
                    state: c.state,
                }),
            ),
            Ok(Step::Success(s)) => AuthStep::Success {
                username: s.username,
                data: s.data,
            },
            Ok(Step::Fail(d)) => AuthStep::Failure(format!(
                "{}: {}",
                self.name,
                bindings::truncate(&d.message, 512)
            )),
            Err(f) => AuthStep::Failure(format!("{}: plugin failed ({})", self.name, describe(&f))),
        }
    }
}

/// One Authentication Method served by a plugin, as the broker's security chain sees it.
pub struct PluginAuthMethod {
    plugin: Arc<WasmPlugin>,
    method: String,
}

impl PluginAuthMethod {
    /// The method `method` of `plugin`.
    pub fn new(plugin: Arc<WasmPlugin>, method: String) -> Self {
        PluginAuthMethod { plugin, method }
    }
}

impl crate::hooks::EnhancedAuthenticator for PluginAuthMethod {
    fn method(&self) -> &str {
        &self.method
    }

    fn start(&self, data: &[u8]) -> crate::hooks::AuthStep {
        self.plugin.auth_step(&self.method, AuthCall::Start(data))
    }

    fn knows(&self, username: &str) -> bool {
        let method = &self.method;
        self.plugin
            .call(None, None, Hook::EnhancedAuth, |slot| {
                let Guests::V02(g) = &slot.guests else {
                    return Ok(Err("not an API 0.2 plugin".into()));
                };
                let Some(e) = &g.enhanced_auth else {
                    return Ok(Err("enhanced-auth is not exported".into()));
                };
                e.call_knows(&mut slot.store, method, username).map(Ok)
            })
            // A failed call cannot vouch for the user.
            .unwrap_or(false)
    }
}

/// An exchange in progress: the plugin's state for its next step.
struct PluginExchange {
    plugin: Arc<WasmPlugin>,
    method: String,
    state: Vec<u8>,
}

impl crate::hooks::AuthExchange for PluginExchange {
    fn next(self: Box<Self>, data: &[u8]) -> crate::hooks::AuthStep {
        self.plugin
            .auth_step(&self.method, AuthCall::Continue(data, &self.state))
    }
}
