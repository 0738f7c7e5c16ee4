//! The immutable [`Runtime`]: everything derived from one configuration generation (limits,
//! security chain, TLS acceptors, listener settings, admin token, plugins), swapped whole by
//! a reload behind `arc-swap`.
//!
//! Owns the shape only; building one from a config (reading files, compiling plugins,
//! loading certificates) is the server's job (`crate::broker::build_runtime`), so this module
//! never imports the transport or plugin loaders.

use crate::config::{Config, ListenerConfig};
use crate::hooks::SecurityChain;
use crate::session::SessionLimits;
use std::collections::HashMap;
use std::sync::Arc;

/// Everything derived from the configuration, swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// The validated configuration.
    pub config: Config,
    /// Increases with every successful (re)load.
    pub generation: u64,
    /// Authentication, authorization and transform hooks in call order.
    pub security: SecurityChain,
    /// TLS server configs of the TLS and WSS listeners, by listener name.
    pub tls: HashMap<String, Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Listener settings by name, read at each accept.
    pub listeners: HashMap<String, Arc<ListenerConfig>>,
    /// Bearer token of the admin API, from `admin.token_file`.
    pub admin_token: Option<Token>,
    /// The Wasm plugins of this generation (also in `security`), for stats.
    pub plugins: crate::plugins::PluginSet,
    /// The plugins' key-value stores (capability `kv`), handed on from generation to
    /// generation.
    pub plugin_kv: Arc<crate::plugins::KvStores>,
    /// What a client's authentication depends on (settings, password file content), so
    /// that a reload that changes none of it does not re-authenticate every client; `None`
    /// when a plugin authenticates (its answer may change with its file): always re-check.
    pub auth_fingerprint: Option<u64>,
}

impl Runtime {
    /// Per-session limits from `performance:`.
    pub fn session_limits(&self) -> SessionLimits {
        let p = &self.config.performance;
        SessionLimits {
            inflight_window: p.inflight_window_size,
            queue_limit: p.message_queue_limit,
            queue_qos0_offline: p.queue_qos0_offline,
            queue_bytes_limit: self.config.limits.max_queued_bytes,
        }
    }

    /// The limits of the session of `client_id`: a bridge's own session queues what waits
    /// for its remote, up to the bridge's `queue_max` and `queue_max_bytes`.
    pub fn session_limits_for(&self, client_id: &str) -> SessionLimits {
        let mut limits = self.session_limits();
        if let Some(b) = self
            .config
            .bridges
            .iter()
            .find(|b| b.local_id() == client_id)
        {
            limits.queue_limit = b.queue_max;
            limits.queue_bytes_limit = usize::try_from(b.queue_max_bytes.0).unwrap_or(usize::MAX);
        }
        limits
    }
}

/// The admin API's bearer token; its `Debug` output never shows it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// Wraps the secret read from `admin.token_file`.
    pub fn new(secret: &str) -> Token {
        Token(Arc::from(secret))
    }

    /// The secret itself, for the comparison.
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Outcome of the last reload attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadStatus {
    /// Generation in force after the attempt.
    pub generation: u64,
    /// Whether the attempt succeeded.
    pub ok: bool,
    /// Why it failed (file, line and reason), if it did.
    pub error: Option<String>,
    /// When it happened.
    #[serde(serialize_with = "serialize_time")]
    pub at: std::time::SystemTime,
    /// Settings changed in the configuration that take effect only after a restart (like
    /// PostgreSQL's `pending_restart`); empty when the running broker is what the file says.
    pub pending_restart: Vec<PendingRestart>,
}

/// A setting whose change is applied only by a restart: the running value and the one the
/// configuration now asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingRestart {
    /// The config key, e.g. `persistence.path`.
    pub key: &'static str,
    /// The value in force (from the start).
    pub running: String,
    /// The value in the configuration.
    pub configured: String,
}

fn serialize_time<S: serde::Serializer>(
    t: &std::time::SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    s.serialize_u64(ms)
}
