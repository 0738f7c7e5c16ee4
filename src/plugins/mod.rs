//! Sandboxed WebAssembly plugins: components implementing the `mqtt-broker:plugin` WIT
//! interface (`wit/plugin.wit`) that authenticate clients, authorize publish / subscribe /
//! deliver, and transform messages.
//!
//! [`PluginHost`] owns the long-lived engine, epoch ticker and compiled-artifact cache;
//! [`PluginHost::load`] turns the `plugins:` config into a [`PluginSet`] (or an error), whose
//! plugins are appended to the broker's [`SecurityChain`]. Each plugin runs in its own
//! instances with a memory cap and a per-call deadline; a failed call is answered per the
//! plugin's `on_error` and its instance replaced.
//!
//! Owns the Wasm engine and the plugin instances; must not import the broker's state (a
//! plugin sees the broker only through the hook traits and the event bus).

pub mod bindings;
pub mod bindings_v02;
pub(crate) mod capabilities;
pub mod host;
mod host_v02;
pub mod plugin;
mod pool;
mod routes;
pub mod version;

/// The `plugins:` config schema lives with the rest of the config.
pub use crate::config::plugins as config;
pub use crate::config::plugins::{ByteSize, OnError, PluginConfig, PluginLimits};
pub use capabilities::{KvStores, Publisher};
pub use host::{ArtifactSource, EngineSettings, OptLevel, PluginHost};
pub use plugin::{PluginFailure, PluginStats, WasmPlugin};
pub use routes::EventRoutes;

use crate::hooks::SecurityChain;
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;

/// Why a plugin (and so the plugin set) could not be loaded.
#[derive(Debug, Error)]
pub enum PluginError {
    /// The Wasm engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// A `plugins:` entry is invalid.
    #[error("plugin {plugin}: invalid value for `{key}`: {reason}")]
    Config {
        /// Plugin name.
        plugin: String,
        /// Key within the entry.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Two entries share a name.
    #[error("plugin name {0:?} is used twice")]
    DuplicateName(String),
    /// The component file could not be read.
    #[error("plugin {plugin}: `path`: cannot read {path}: {source}")]
    Read {
        /// Plugin name.
        plugin: String,
        /// File.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not a component.
    #[error("plugin {plugin}: {path} is not a WebAssembly component: {reason}")]
    NotComponent {
        /// Plugin name.
        plugin: String,
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Compilation failed (invalid Wasm, or a feature the host does not enable).
    #[error("plugin {plugin}: cannot compile {path}: {message}")]
    Compile {
        /// Plugin name.
        plugin: String,
        /// File.
        path: PathBuf,
        /// Compiler message.
        message: String,
    },
    /// The component was built for an interface version this broker does not speak.
    #[error("plugin {plugin}: built for {found} ({interface}), but this broker speaks {supported}; rebuild the plugin against the broker's wit/ folder")]
    Version {
        /// Plugin name.
        plugin: String,
        /// The import or export that carries the version.
        interface: String,
        /// Version found in the component.
        found: String,
        /// Version the host speaks.
        supported: String,
    },
    /// An import cannot be satisfied (e.g. WASI HTTP, or a host function that does not exist).
    #[error("plugin {plugin}: cannot link: {message}")]
    Link {
        /// Plugin name.
        plugin: String,
        /// Linker message.
        message: String,
    },
    /// The component exports none of the hooks.
    #[error("plugin {plugin}: exports none of the hooks of mqtt-broker:plugin@{version} (authenticate, authorize, transform, or an event interface); it exports: {exports}")]
    NoHooks {
        /// Plugin name.
        plugin: String,
        /// Version the host looked for.
        version: &'static str,
        /// What the component does export.
        exports: String,
    },
    /// An exported hook interface does not have the functions and types of the WIT.
    #[error("plugin {plugin}: {message}")]
    Export {
        /// Plugin name.
        plugin: String,
        /// Which export, what was expected, and what wasmtime found.
        message: String,
    },
    /// Creating the first instance trapped, timed out or ran out of memory.
    #[error("plugin {plugin}: cannot instantiate: {message}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// What happened.
        message: String,
    },
    /// The plugin's `init` refused its config.
    #[error("plugin {plugin}: init refused the config: {message}")]
    Init {
        /// Plugin name.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
}

/// The loaded plugins of one configuration generation, in call order.
#[derive(Clone, Default)]
pub struct PluginSet {
    plugins: Vec<Arc<WasmPlugin>>,
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|p| p.name()))
            .finish()
    }
}

impl PluginSet {
    pub(crate) fn new(plugins: Vec<Arc<WasmPlugin>>) -> Self {
        PluginSet { plugins }
    }

    /// Loads `configs` with `host` (see [`PluginHost::load`]).
    pub fn load(configs: &[PluginConfig], host: &PluginHost) -> Result<PluginSet, PluginError> {
        host.load(configs)
    }

    /// Loads `configs` with the process-wide [`PluginHost::shared`]; an empty list loads
    /// nothing and does not start the engine.
    pub fn load_configured(
        configs: &[PluginConfig],
        kv: &Arc<KvStores>,
    ) -> Result<PluginSet, PluginError> {
        if configs.is_empty() {
            return Ok(PluginSet::default());
        }
        PluginHost::shared()?.load_with(configs, kv)
    }

    /// Whether no plugin is loaded.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The plugins in call order.
    pub fn plugins(&self) -> &[Arc<WasmPlugin>] {
        &self.plugins
    }

    /// Appends each plugin to the chains of the hooks it exports, after what is there.
    pub fn append_to(&self, chain: &mut SecurityChain) {
        for p in &self.plugins {
            if p.is_authenticator() {
                chain.authenticators.push(p.clone());
            }
            // After the built-in methods (SCRAM-SHA-512), which win a name clash.
            for method in p.methods() {
                chain.enhanced.push(Arc::new(plugin::PluginAuthMethod::new(
                    p.clone(),
                    method.clone(),
                )));
            }
            if p.is_authorizer() {
                chain.authorizers.push(p.clone());
            }
            if p.is_transformer() {
                chain.transformers.push(p.clone());
            }
        }
    }

    /// Hands every plugin the broker's event bus (failures are reported on it, event hooks
    /// read it) and where messages they publish go; starts event threads where needed.
    pub(crate) fn attach(&self, events: &crate::events::EventBus, publisher: &Publisher) {
        for p in &self.plugins {
            p.attach(events.clone(), publisher.clone());
        }
    }

    /// Stats of every plugin, in call order.
    pub fn stats(&self) -> Vec<PluginStats> {
        self.plugins.iter().map(|p| p.stats()).collect()
    }
}
