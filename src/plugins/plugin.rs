//! One loaded plugin: its precompiled instance template, a pool of ready instances, the
//! sandboxed call path (deadline, memory cap, failure handling, degradation) and the hook
//! trait implementations the broker's `SecurityChain` calls.

use super::bindings::{self, authenticate, authorize, lifecycle, transform};
use super::config::{OnError, PluginConfig};
use super::host::{ArtifactSource, Limiter, PluginHost, StoreState, EPOCH_TICK};
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
use wasmtime::component::{Instance, InstancePre};
use wasmtime::Store;

/// Most messages one `transform` call may add (bounds amplification by a buggy plugin).
pub const MAX_ADDITIONAL_MESSAGES: usize = 64;

/// Which hook a call is for (labels logs and picks the time limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Init,
    Authenticate,
    Authorize,
    Transform,
}

impl Hook {
    fn as_str(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::Authenticate => "authenticate",
            Hook::Authorize => "authorize",
            Hook::Transform => "transform",
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

/// Export indices found at load time; `None` for hooks the component does not export.
#[derive(Clone)]
struct Exports {
    lifecycle: Option<lifecycle::GuestIndices>,
    authenticate: Option<authenticate::GuestIndices>,
    authorize: Option<authorize::GuestIndices>,
    transform: Option<transform::GuestIndices>,
}

/// A ready instance: its store and the typed entry points.
struct Slot {
    store: Store<StoreState>,
    authenticate: Option<authenticate::Guest>,
    authorize: Option<authorize::Guest>,
    transform: Option<transform::Guest>,
}

/// Failure bookkeeping; locked only briefly and never during a call.
struct Health {
    recent: VecDeque<Instant>,
    degraded_since: Option<Instant>,
    last_probe: Option<Instant>,
    probing: bool,
    /// The last failures, for the dashboard's plugin page.
    errors: crate::history::HistoryRing<PluginFailure>,
}

/// Counters of one plugin.
#[derive(Default)]
struct Counts {
    calls: AtomicU64,
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
    /// Longest single hook call (successful or not), in microseconds.
    pub slowest_call_us: u64,
    /// Whether the plugin is degraded now.
    pub degraded: bool,
    /// Largest linear memory (bytes, all memories of one instance) any instance reached.
    pub peak_memory_bytes: u64,
    /// Configured memory limit in bytes.
    pub memory_limit_bytes: u64,
    /// The last failures ([`RECENT_ERRORS`] at most), newest first.
    pub recent_errors: Vec<PluginFailure>,
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
    pre: InstancePre<StoreState>,
    exports: Exports,
    artifact: ArtifactSource,
    pool: Mutex<Vec<Slot>>,
    pool_size: usize,
    health: Mutex<Health>,
    degraded: AtomicBool,
    counts: Counts,
    peak_memory: Arc<AtomicU64>,
    /// Where failures are announced, once the broker has handed its event bus over.
    events: std::sync::OnceLock<crate::events::EventBus>,
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
    ) -> Result<WasmPlugin, PluginError> {
        config
            .validate()
            .map_err(|(key, reason)| PluginError::Config {
                plugin: config.name.clone(),
                key,
                reason,
            })?;
        let (component, artifact) = host.component(config)?;
        super::version::check(&config.name, host.engine(), &component)?;
        let pre = host
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link {
                plugin: config.name.clone(),
                message: format!("{e:#}"),
            })?;
        let exports = Exports {
            lifecycle: lifecycle::GuestIndices::new(&pre).ok(),
            authenticate: authenticate::GuestIndices::new(&pre).ok(),
            authorize: authorize::GuestIndices::new(&pre).ok(),
            transform: transform::GuestIndices::new(&pre).ok(),
        };
        if exports.authenticate.is_none()
            && exports.authorize.is_none()
            && exports.transform.is_none()
        {
            return Err(PluginError::NoHooks {
                plugin: config.name.clone(),
                version: bindings::VERSION,
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
            config: config.clone(),
            init_pairs: config.init_pairs(),
            pre,
            exports,
            artifact,
            pool: Mutex::new(Vec::with_capacity(pool_size)),
            pool_size,
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
        plugin.pool.lock().push(first);
        info!(plugin = %plugin.name, hooks = ?plugin.hooks(), artifact = ?artifact, "plugin loaded");
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
        let mut h = Vec::new();
        if self.exports.authenticate.is_some() {
            h.push("authenticate");
        }
        if self.exports.authorize.is_some() {
            h.push("authorize");
        }
        if self.exports.transform.is_some() {
            h.push("transform");
        }
        h
    }

    /// Whether the component exports `authenticate`.
    pub fn is_authenticator(&self) -> bool {
        self.exports.authenticate.is_some()
    }

    /// Whether the component exports `authorize`.
    pub fn is_authorizer(&self) -> bool {
        self.exports.authorize.is_some()
    }

    /// Whether the component exports `transform`.
    pub fn is_transformer(&self) -> bool {
        self.exports.transform.is_some()
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
            calls: get(&c.calls),
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
        }
    }

    fn timeout(&self, hook: Hook) -> Duration {
        let l = &self.config.limits;
        match hook {
            Hook::Init => l.init_timeout.get(),
            Hook::Authenticate => l.auth_timeout.get(),
            Hook::Authorize | Hook::Transform => l.call_timeout.get(),
        }
    }

    fn set_deadline(&self, store: &mut Store<StoreState>, hook: Hook) {
        let tick = EPOCH_TICK.as_nanos().max(1);
        // +1: the current tick may be about to end, so a deadline of n ticks could fire
        // after n-1 ticks' worth of time; this makes the limit a lower bound.
        let ticks = self.timeout(hook).as_nanos().div_ceil(tick) as u64 + 1;
        store.set_epoch_deadline(ticks);
    }

    /// Creates an instance and runs `init` on it.
    fn instantiate(&self) -> Result<Slot, InstantiateError> {
        let started = Instant::now();
        let limiter = Limiter {
            limit: usize::try_from(self.config.limits.memory.0).unwrap_or(usize::MAX),
            used: 0,
            hit_limit: false,
            peak: self.peak_memory.clone(),
        };
        let mut store = Store::new(
            self.pre.engine(),
            StoreState::new(self.name.clone(), limiter),
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
        if let Some(idx) = &self.exports.lifecycle {
            let guest = idx
                .load(&mut store, &instance)
                .map_err(|e| fail(&store, e))?;
            let answer = guest
                .call_init(&mut store, &self.init_pairs)
                .map_err(|e| fail(&store, e))?;
            if let Err(message) = answer {
                return Err(InstantiateError::Init(
                    bindings::truncate(&message, 1024).to_owned(),
                ));
            }
        }
        let load_err = |store: &Store<StoreState>, e| fail(store, e);
        let slot = Slot {
            authenticate: match &self.exports.authenticate {
                Some(i) => Some(
                    i.load(&mut store, &instance)
                        .map_err(|e| load_err(&store, e))?,
                ),
                None => None,
            },
            authorize: match &self.exports.authorize {
                Some(i) => Some(
                    i.load(&mut store, &instance)
                        .map_err(|e| load_err(&store, e))?,
                ),
                None => None,
            },
            transform: match &self.exports.transform {
                Some(i) => Some(
                    i.load(&mut store, &instance)
                        .map_err(|e| load_err(&store, e))?,
                ),
                None => None,
            },
            store,
        };
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
        client: &ClientInfo,
        hook: Hook,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, CallFailure> {
        self.counts.calls.fetch_add(1, Ordering::Relaxed);
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
        let pooled = self.pool.lock().pop();
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
        slot.store.data_mut().client_id = Some(client.client_id.clone());
        self.set_deadline(&mut slot.store, hook);
        let started = Instant::now();
        let result = f(&mut slot);
        self.counts
            .slowest_call_nanos
            .fetch_max(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(Ok(value)) => {
                slot.store.data_mut().client_id = None;
                {
                    let mut pool = self.pool.lock();
                    if pool.len() < self.pool_size {
                        pool.push(slot);
                    }
                }
                if probe {
                    self.recovered();
                }
                Ok(value)
            }
            Ok(Err(invalid)) => {
                // The instance is healthy but answered nonsense; keep it, count the failure.
                slot.store.data_mut().client_id = None;
                let mut pool = self.pool.lock();
                if pool.len() < self.pool_size {
                    pool.push(slot);
                }
                drop(pool);
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
        client: &ClientInfo,
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
        warn!(
            plugin = %self.name,
            client_id = %client.client_id,
            hook = hook.as_str(),
            on_error = ?self.config.on_error,
            limit_ms,
            memory_limit = self.config.limits.memory.0,
            "plugin call failed: {}; instance discarded",
            describe(&failure)
        );
        let error = format!(
            "{} for client {}: {}",
            hook.as_str(),
            client.client_id,
            describe(&failure)
        );
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
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
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
        let info = bindings::client_info(client);
        let creds = bindings::credentials(credentials);
        let r = self.call(client, Hook::Authenticate, |slot| {
            let Some(g) = &slot.authenticate else {
                return Ok(Err("authenticate is not exported".into()));
            };
            g.call_authenticate(&mut slot.store, &info, &creds).map(Ok)
        });
        match r {
            Ok(outcome) => bindings::auth_outcome(outcome),
            Err(f) if self.fail_closed() => AuthOutcome::Deny(
                DenyReason::NotAuthorized,
                format!("plugin failed ({})", describe(&f)),
            ),
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
        let info = bindings::client_info(client);
        let req = bindings::acl_request(request);
        let r = self.call(client, Hook::Authorize, |slot| {
            let Some(g) = &slot.authorize else {
                return Ok(Err("authorize is not exported".into()));
            };
            g.call_authorize(&mut slot.store, &info, &req).map(Ok)
        });
        match r {
            Ok(d) => (bindings::decision(d), self.config.cache_decisions),
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
        let info = bindings::client_info(client);
        let msg = bindings::message_to_wit(message);
        let r = self.call(client, Hook::Transform, |slot| {
            let Some(g) = &slot.transform else {
                return Ok(Err("transform is not exported".into()));
            };
            let out = g.call_transform(&mut slot.store, &info, &msg)?;
            Ok(convert_transform(out))
        });
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
