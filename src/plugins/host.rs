//! The long-lived part of the plugin system: one `wasmtime::Engine` per broker, the epoch
//! ticker that bounds every call, the linker with the host functions, and the cache of
//! compiled components on disk.
//!
//! Loading a plugin set is a pure "config in, `PluginSet` or error out" operation on a
//! `PluginHost`, so a reload can build a new set off the hot path while the old one serves.

use super::bindings::{self, host::LogLevel};
use super::capabilities::{KvStores, PluginCaps, PublishQueue};
use super::config::PluginConfig;
use super::plugin::WasmPlugin;
use super::{PluginError, PluginSet};
use crate::hooks::ClientInfo;
use crate::model::Message;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The wasmtime version compiled in (pinned in Cargo.toml); part of the artifact cache key.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Interval of the epoch ticker: the granularity of per-call time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// A clock for per-call bookkeeping that costs one memory read instead of a system clock
/// read: the epoch ticker threads advance it every [`EPOCH_TICK`], so it lags real time by
/// up to a tick (more if the ticker is starved of CPU).
pub(crate) mod coarse_clock {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    static BASE: OnceLock<Instant> = OnceLock::new();
    static NANOS: AtomicU64 = AtomicU64::new(0);

    fn base() -> Instant {
        *BASE.get_or_init(Instant::now)
    }

    /// Reads the system clock into the coarse one (the ticker calls it every tick).
    pub fn advance() {
        let now = base().elapsed().as_nanos() as u64;
        NANOS.fetch_max(now, Ordering::Relaxed);
    }

    /// Nanoseconds since the clock's start, as of the last tick.
    pub fn nanos() -> u64 {
        NANOS.load(Ordering::Relaxed)
    }

    /// The instant a reading of [`nanos`] stands for.
    pub fn instant(nanos: u64) -> Instant {
        base() + Duration::from_nanos(nanos)
    }
}

/// Settings that change generated machine code, and so the compiled-artifact cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineSettings {
    /// Cranelift optimization level.
    pub opt_level: OptLevel,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            opt_level: OptLevel::Speed,
        }
    }
}

/// Cranelift optimization level (a copy of wasmtime's, so that it can be hashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptLevel {
    /// No optimizations: fastest compile.
    None,
    /// Optimize for speed.
    Speed,
    /// Optimize for speed and size.
    SpeedAndSize,
}

/// Where a component's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactSource {
    /// Deserialized from the on-disk cache.
    Cache,
    /// Compiled now (and written to the cache when possible).
    Compiled,
}

struct HostInner {
    engine: Engine,
    linker: Linker<StoreState>,
    settings: EngineSettings,
    /// Hex digest of everything besides the component that decides the compiled code.
    engine_key: String,
    cache_hits: AtomicU64,
    compiles: AtomicU64,
}

/// One Wasm engine, linker and artifact cache, shared by every plugin set of a broker.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("settings", &self.inner.settings)
            .field("engine_key", &self.inner.engine_key)
            .finish()
    }
}

impl PluginHost {
    /// Creates the engine (with epoch interruption) and starts its epoch ticker thread.
    pub fn new(settings: EngineSettings) -> Result<PluginHost, PluginError> {
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true);
        // Every call is bounded by an epoch deadline; a ticker thread advances the epoch.
        cfg.epoch_interruption(true);
        cfg.parallel_compilation(true);
        cfg.cranelift_opt_level(match settings.opt_level {
            OptLevel::None => wasmtime::OptLevel::None,
            OptLevel::Speed => wasmtime::OptLevel::Speed,
            OptLevel::SpeedAndSize => wasmtime::OptLevel::SpeedAndSize,
        });
        let engine = Engine::new(&cfg).map_err(|e| PluginError::Engine(e.to_string()))?;

        let mut linker: Linker<StoreState> = Linker::new(&engine);
        // WASI preview 2 for toolchains that insist on importing it; the context each store
        // gets has nothing preopened, no environment, no arguments and no network.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(format!("linking WASI: {e}")))?;
        bindings::Full::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("linking host functions: {e}")))?;
        super::bindings_v02::BrokerSide::add_to_linker::<StoreState, HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| PluginError::Engine(format!("linking host functions (0.2): {e}")))?;
        super::host_v02::link_current_outputs(&mut linker)
            .map_err(|e| PluginError::Engine(format!("linking current.add/replace: {e}")))?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        settings.hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());

        let weak = engine.weak();
        coarse_clock::advance();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                // The thread ends with the last user of the engine.
                match weak.upgrade() {
                    Some(engine) => {
                        engine.increment_epoch();
                        coarse_clock::advance();
                    }
                    None => break,
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker: {e}")))?;

        Ok(PluginHost {
            inner: Arc::new(HostInner {
                engine,
                linker,
                settings,
                engine_key,
                cache_hits: AtomicU64::new(0),
                compiles: AtomicU64::new(0),
            }),
        })
    }

    /// The process-wide host with default settings, created on first use.
    ///
    /// One engine per process: every broker (and every reload) in it shares the compiled code,
    /// the epoch ticker and the artifact cache.
    pub fn shared() -> Result<&'static PluginHost, PluginError> {
        static SHARED: std::sync::OnceLock<PluginHost> = std::sync::OnceLock::new();
        if let Some(h) = SHARED.get() {
            return Ok(h);
        }
        let host = PluginHost::new(EngineSettings::default())?;
        Ok(SHARED.get_or_init(|| host))
    }

    /// The engine settings in force.
    pub fn settings(&self) -> EngineSettings {
        self.inner.settings
    }

    /// The Wasm engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<StoreState> {
        &self.inner.linker
    }

    /// Components loaded from the artifact cache so far.
    pub fn cache_hits(&self) -> u64 {
        self.inner.cache_hits.load(Ordering::Relaxed)
    }

    /// Components compiled so far.
    pub fn compiles(&self) -> u64 {
        self.inner.compiles.load(Ordering::Relaxed)
    }

    /// Loads every configured plugin, in order; any failure refuses the whole set. Their
    /// key-value stores are new and kept in memory.
    pub fn load(&self, configs: &[PluginConfig]) -> Result<PluginSet, PluginError> {
        self.load_with(configs, &Arc::new(KvStores::default()))
    }

    /// [`PluginHost::load`] with the key-value stores of a broker (kept across its reloads).
    pub fn load_with(
        &self,
        configs: &[PluginConfig],
        kv: &Arc<KvStores>,
    ) -> Result<PluginSet, PluginError> {
        let mut plugins = Vec::with_capacity(configs.len());
        for c in configs {
            if plugins.iter().any(|p: &Arc<WasmPlugin>| p.name() == c.name) {
                return Err(PluginError::DuplicateName(c.name.clone()));
            }
            plugins.push(Arc::new(WasmPlugin::load(self, c, kv)?));
        }
        Ok(PluginSet::new(plugins))
    }

    /// The compiled component for `config.path`, from the cache when possible.
    pub(crate) fn component(
        &self,
        config: &PluginConfig,
    ) -> Result<(Component, ArtifactSource), PluginError> {
        let plugin = &config.name;
        let path = &config.path;
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            plugin: plugin.clone(),
            path: path.clone(),
            source,
        })?;
        check_is_component(plugin, path, &bytes)?;
        let digest = Sha256::digest(&bytes);
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let key = format!("{hex}-{}-wasmtime{WASMTIME_VERSION}", self.inner.engine_key);
        let dir = cache_dir(config);
        let file = dir.join(format!("{key}.cwasm"));

        if file.is_file() {
            let started = Instant::now();
            // SAFETY: `deserialize_file` trusts the file to be a wasmtime artifact. The name
            // binds it to the component's SHA-256 and to this engine's configuration and
            // version, and wasmtime itself checks the version and configuration header; the
            // cache directory must be writable only by the broker's operator (documented).
            match unsafe { Component::deserialize_file(&self.inner.engine, &file) } {
                Ok(component) => {
                    self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
                    info!(plugin, artifact = %file.display(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "plugin loaded from the compiled-artifact cache");
                    return Ok((component, ArtifactSource::Cache));
                }
                Err(e) => {
                    warn!(plugin, artifact = %file.display(), error = %e, "cached artifact unusable; recompiling");
                }
            }
        }

        let started = Instant::now();
        let component =
            Component::new(&self.inner.engine, &bytes).map_err(|e| PluginError::Compile {
                plugin: plugin.clone(),
                path: path.clone(),
                message: format!("{e:#}"),
            })?;
        self.inner.compiles.fetch_add(1, Ordering::Relaxed);
        info!(plugin, path = %path.display(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "plugin compiled");
        match component.serialize() {
            Ok(artifact) => {
                if let Err(e) = write_atomically(&dir, &file, &artifact) {
                    // Not fatal: the broker works, it just compiles again next start.
                    warn!(plugin, dir = %dir.display(), error = %e, "cannot write the compiled-artifact cache");
                } else {
                    debug!(plugin, artifact = %file.display(), "compiled artifact cached");
                }
            }
            Err(e) => warn!(plugin, error = %e, "cannot serialize the compiled component"),
        }
        Ok((component, ArtifactSource::Compiled))
    }
}

/// The cache directory of one plugin: configured, or `.cache/` beside the component.
pub fn cache_dir(config: &PluginConfig) -> PathBuf {
    match &config.cache_dir {
        Some(d) => d.clone(),
        None => config
            .path
            .parent()
            .map(|p| p.join(".cache"))
            .unwrap_or_else(|| PathBuf::from(".cache")),
    }
}

fn write_atomically(dir: &Path, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // A unique temporary name, so that two brokers starting at once do not interleave: the
    // process id alone is not enough, since one process may run several brokers (embedders,
    // the test suite), which then wrote the same temporary file and renamed a mix of both.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        file.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

/// Refuses core modules and other files early, with a hint, instead of a parser error.
fn check_is_component(plugin: &str, path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let not = |why: &str| {
        Err(PluginError::NotComponent {
            plugin: plugin.to_owned(),
            path: path.to_owned(),
            reason: why.to_owned(),
        })
    };
    if bytes.starts_with(b"\0asm") {
        // Bytes 4..8: version and layer; a component has layer 1.
        return match bytes.get(6..8) {
            Some([1, 0]) => Ok(()),
            Some([0, 0]) => not("it is a core Wasm module, not a component (wrap it with `wasm-tools component new`)"),
            _ => not("unknown Wasm binary layer"),
        };
    }
    let is_wat = path.extension().is_some_and(|e| e == "wat");
    if is_wat && std::str::from_utf8(bytes).is_ok() {
        return Ok(());
    }
    not("not a Wasm binary (and not a .wat text file)")
}

/// Per-instance state inside a wasmtime `Store`.
pub(crate) struct StoreState {
    /// Plugin name, for log lines.
    pub plugin: Arc<str>,
    /// Client an event call is about, for log lines (calls about a connected client find
    /// it in `call`).
    pub client_id: Option<Arc<str>>,
    /// Memory accounting.
    pub limiter: Limiter,
    /// The client and message of the call in progress (API 0.2 resources read them).
    pub call: CallContext,
    /// Capabilities of the plugin (API 0.2).
    pub caps: Arc<PluginCaps>,
    /// Messages published during the call in progress.
    pub published: PublishQueue,
    wasi: WasiCtx,
    table: ResourceTable,
}

/// What the call in progress is about: the client and message the API 0.2 resources read.
///
/// Borrowed, not copied: copying a client (two strings) and a message on every call cost
/// more than the call itself. The pointers are set by `WasmPlugin::call` from references
/// that outlive the guest call, and reset before it returns; a store is used by one thread
/// at a time (it is taken out of the pool for the call), and the guest can run only inside
/// that call, so a host function never sees a dangling pointer.
pub(crate) struct CallContext {
    client: *const ClientInfo,
    message: *const Message,
    /// When the call began (on the coarse clock) and how long it may take (bounds HTTP
    /// requests).
    pub started: Option<(u64, Duration)>,
    /// What a `fast-transform` call gave to `current.replace` and `current.add`; `None`
    /// outside such a call.
    pub output: Option<TransformOutput>,
}

/// The answer a `fast-transform` call builds through `current.replace` and `current.add`.
#[derive(Default)]
pub(crate) struct TransformOutput {
    /// The last message given to `current.replace`.
    pub replacement: Option<Message>,
    /// The messages given to `current.add`, in order.
    pub additional: Vec<Message>,
}

// SAFETY: see the type's documentation; the pointees are `Sync` and only read.
unsafe impl Send for CallContext {}

impl Default for CallContext {
    fn default() -> Self {
        CallContext {
            client: std::ptr::null(),
            message: std::ptr::null(),
            started: None,
            output: None,
        }
    }
}

impl CallContext {
    /// Lends the call's client and message to the host functions, until [`Self::end`].
    pub fn begin(&mut self, client: Option<&ClientInfo>, message: Option<&Message>) {
        self.client = client.map_or(std::ptr::null(), |c| c as *const ClientInfo);
        self.message = message.map_or(std::ptr::null(), |m| m as *const Message);
    }

    /// Ends the loan of [`Self::begin`].
    pub fn end(&mut self) {
        self.client = std::ptr::null();
        self.message = std::ptr::null();
        self.started = None;
        self.output = None;
    }

    /// The call's client.
    pub fn client(&self) -> Option<&ClientInfo> {
        // SAFETY: non-null only between `begin` and `end`, while the referent lives.
        unsafe { self.client.as_ref() }
    }

    /// The call's message (`transform` only).
    pub fn message(&self) -> Option<&Message> {
        // SAFETY: as for `client`.
        unsafe { self.message.as_ref() }
    }

    /// When the call's time limit ends.
    pub fn deadline(&self) -> Option<Instant> {
        // The coarse start lags by up to a tick: the deadline errs on the early side.
        self.started
            .map(|(at, limit)| coarse_clock::instant(at) + limit)
    }
}

impl StoreState {
    /// Fresh state with an empty WASI context.
    pub fn new(plugin: Arc<str>, limiter: Limiter, caps: Arc<PluginCaps>) -> Self {
        // Nothing preopened, no env, no args, stdio to the void, sockets refused.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        StoreState {
            plugin,
            client_id: None,
            limiter,
            call: CallContext::default(),
            caps,
            published: Vec::new(),
            wasi,
            table: ResourceTable::new(),
        }
    }
}

impl StoreState {
    /// The client id plugin log lines carry: the call's client, or the event's.
    pub fn log_client_id(&self) -> &str {
        match (&self.client_id, self.call.client()) {
            (Some(id), _) => id,
            (None, Some(c)) => &c.client_id,
            (None, None) => "",
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Longest plugin log message kept; the rest is cut (plugins are untrusted in size).
const MAX_LOG_BYTES: usize = 2048;

impl bindings::host::Host for StoreState {
    fn log(&mut self, level: LogLevel, message: String) {
        let plugin = &*self.plugin;
        let client_id = self.log_client_id();
        let message = bindings::truncate(&message, MAX_LOG_BYTES);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, client_id, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, client_id, "{message}"),
            LogLevel::Info => tracing::info!(plugin, client_id, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, client_id, "{message}"),
            LogLevel::Error => tracing::error!(plugin, client_id, "{message}"),
        }
    }

    fn now_millis(&mut self) -> u64 {
        unix_millis()
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 before it): `host.now-millis`.
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl bindings::wit::Host for StoreState {}

/// Caps the linear memory and tables of one instance, and remembers the peak.
pub(crate) struct Limiter {
    /// Bytes of linear memory allowed across all memories of the instance.
    pub limit: usize,
    /// Bytes granted so far.
    pub used: usize,
    /// Set when a growth was refused, to classify the resulting trap.
    pub hit_limit: bool,
    /// Highest `used` of any instance of this plugin (shared with the plugin's stats).
    pub peak: Arc<AtomicU64>,
}

/// Table elements allowed per table (each costs a pointer on the host).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.used.saturating_sub(current).saturating_add(desired);
        if after > self.limit {
            self.hit_limit = true;
            // An error (rather than `Ok(false)`) traps at once, so a guest that ignores a
            // failed `memory.grow` cannot spin until its deadline.
            wasmtime::bail!(
                "memory limit exceeded: {desired} bytes requested, {} allowed",
                self.limit
            );
        }
        self.used = after;
        self.peak.fetch_max(after as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.hit_limit = true;
            wasmtime::bail!(
                "table limit exceeded: {desired} elements requested, {MAX_TABLE_ELEMENTS} allowed"
            );
        }
        Ok(true)
    }
}
