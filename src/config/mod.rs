//! The broker's configuration: the YAML file's shape, its defaults and its validation.
//!
//! Every field is optional. Unknown keys, wrong types and out-of-range values are errors
//! that name the key (and, for YAML errors, the line), so that a typo never silently
//! falls back to a default. The same loader serves start-up, `--check-config` and live
//! reload.

mod duration;

pub use duration::{parse_duration, ConfigDuration};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// File (or `<inline>`).
        path: PathBuf,
        /// Parser message, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: invalid value for `{key}`: {reason}")]
    Invalid {
        /// File (or `<inline>`).
        path: PathBuf,
        /// Dotted key path, e.g. `server.port`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Default listener and connection settings.
    pub server: ServerConfig,
    /// Explicit listeners; when empty, one TCP listener on `server.host:server.port`.
    pub listeners: Vec<ListenerConfig>,
    /// Authentication and authorization.
    pub security: SecurityConfig,
    /// Retained-message and session storage.
    pub persistence: PersistenceConfig,
    /// Queues, windows and threads.
    pub performance: PerformanceConfig,
    /// Logging.
    pub log: LogConfig,
    /// Wasm plugins, in call order (after the built-in password/ACL checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<crate::plugins::PluginConfig>,
}

/// `server:` section (the seed's `server`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the default TCP listener.
    pub host: String,
    /// Port of the default TCP listener.
    pub port: u16,
    /// Connections accepted at once across all listeners; more get CONNACK 0x03.
    #[serde(alias = "maxConnections")]
    pub max_connections: usize,
    /// Idle timeout for clients that connect with keep-alive 0 (0 = never).
    pub keep_alive_timeout: ConfigDuration,
    /// Time allowed from TCP accept to a complete CONNECT.
    pub connect_timeout: ConfigDuration,
    /// Largest packet accepted, fixed header included.
    pub max_packet_size: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 1883,
            max_connections: 100_000,
            keep_alive_timeout: ConfigDuration::secs(0),
            connect_timeout: ConfigDuration::secs(10),
            max_packet_size: 1024 * 1024,
        }
    }
}

/// Transport protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Plain TCP.
    #[default]
    Tcp,
}

impl TransportKind {
    /// Lower-case name used in logs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
        }
    }
}

/// One entry of `listeners:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in logs; defaults to `protocol@bind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Address and port to bind (port 0 picks a free port, useful in tests).
    pub bind: SocketAddr,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: TransportKind,
    /// Connections this listener accepts at once (in addition to the global cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

impl ListenerConfig {
    /// A plain TCP listener on `bind`.
    pub fn tcp(bind: SocketAddr) -> Self {
        ListenerConfig {
            name: None,
            bind,
            protocol: TransportKind::Tcp,
            max_connections: None,
        }
    }

    /// The name to show in logs.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}@{}", self.protocol.as_str(), self.bind))
    }
}

/// `security:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Every client must present valid credentials (the seed's `requireAuth`).
    #[serde(alias = "requireAuth")]
    pub require_auth: bool,
    /// Clients without a user name may connect (ignored when `require_auth` is true).
    pub allow_anonymous: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            require_auth: false,
            allow_anonymous: true,
        }
    }
}

/// Storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    /// Everything in memory; nothing survives a restart.
    #[default]
    Memory,
}

/// `persistence:` section (the seed's `persistence`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// Whether state is persisted beyond memory (only `memory` exists today).
    pub enabled: bool,
    /// Backend.
    #[serde(alias = "storageType")]
    pub storage_type: StorageType,
    /// Maximum number of topics with a retained message.
    #[serde(alias = "retainedMessageLimit")]
    pub retained_message_limit: usize,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            enabled: false,
            storage_type: StorageType::Memory,
            retained_message_limit: 100_000,
        }
    }
}

/// `performance:` section (the seed's `performance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceConfig {
    /// Messages queued per session behind the inflight window; newer ones are dropped.
    #[serde(alias = "messageQueueLimit")]
    pub message_queue_limit: usize,
    /// Outbound QoS 1/2 messages awaiting acknowledgement per client.
    #[serde(alias = "inflightWindowSize")]
    pub inflight_window_size: usize,
    /// Async worker threads; 0 = one per CPU core.
    #[serde(alias = "workerThreads")]
    pub worker_threads: usize,
    /// Queue QoS 0 messages for offline persistent sessions.
    pub queue_qos0_offline: bool,
}

impl Default for PerformanceConfig {
    fn default() -> Self {
        PerformanceConfig {
            message_queue_limit: 1000,
            inflight_window_size: 32,
            worker_threads: 0,
            queue_qos0_offline: false,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `log:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `mqtt_broker=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates YAML text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // An empty file is the all-defaults config.
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks ranges and consistency that types alone cannot express.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key: key.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if self.server.port == 0 {
            return invalid("server.port", "must be between 1 and 65535");
        }
        if self.listeners.is_empty() && self.server.host.parse::<std::net::IpAddr>().is_err() {
            return invalid("server.host", "must be an IP address such as 0.0.0.0 or ::");
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be at least 1");
        }
        if self.server.connect_timeout.is_zero() {
            return invalid("server.connect_timeout", "must be greater than 0");
        }
        if self.server.max_packet_size < 64 {
            return invalid("server.max_packet_size", "must be at least 64 bytes");
        }
        if self.server.max_packet_size > crate::protocol::codec::MAX_REMAINING_LENGTH + 5 {
            return invalid("server.max_packet_size", "must be at most 268435460 bytes (the protocol maximum)");
        }
        if self.performance.message_queue_limit == 0 {
            return invalid("performance.message_queue_limit", "must be at least 1");
        }
        if self.performance.inflight_window_size == 0 || self.performance.inflight_window_size > 65_535 {
            return invalid("performance.inflight_window_size", "must be between 1 and 65535");
        }
        if self.persistence.retained_message_limit == 0 {
            return invalid("persistence.retained_message_limit", "must be at least 1");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.max_connections == Some(0) {
                return invalid(&format!("listeners[{i}].max_connections"), "must be at least 1");
            }
            if l.bind.port() != 0 && !seen.insert(l.bind) {
                return invalid(&format!("listeners[{i}].bind"), "the same address is bound twice");
            }
        }
        if let Err((key, reason)) = crate::plugins::config::validate_all(&self.plugins) {
            return invalid(&key, &reason);
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid("log.level", &e.to_string());
        }
        Ok(())
    }

    /// The listeners to open: `listeners:` if given, otherwise TCP on `server.host:server.port`.
    pub fn effective_listeners(&self) -> Vec<ListenerConfig> {
        if !self.listeners.is_empty() {
            return self.listeners.clone();
        }
        let ip = self
            .server
            .host
            .parse()
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        vec![ListenerConfig::tcp(SocketAddr::new(ip, self.server.port))]
    }

    /// The effective config as YAML (what `--check-config` prints).
    pub fn to_yaml(&self) -> String {
        let mut effective = self.clone();
        effective.listeners = self.effective_listeners();
        serde_yaml_ng::to_string(&effective).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("{}").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("server:\n  port: 1883\n  prot: 1\n").unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn wrong_type_names_line() {
        let err = parse("server:\n  port: lots\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn out_of_range_names_key() {
        let err = parse("server:\n  port: 0\n").unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");
        let err = parse("performance:\n  message_queue_limit: 0\n").unwrap_err().to_string();
        assert!(err.contains("performance.message_queue_limit"), "{err}");
    }

    #[test]
    fn seed_camel_case_aliases() {
        let c = parse("server:\n  maxConnections: 5\nperformance:\n  inflightWindowSize: 7\n").unwrap();
        assert_eq!(c.server.max_connections, 5);
        assert_eq!(c.performance.inflight_window_size, 7);
    }

    #[test]
    fn effective_config_roundtrips() {
        let c = parse("server:\n  connect_timeout: 500ms\n").unwrap();
        let again = parse(&c.to_yaml()).unwrap();
        assert_eq!(again.server, c.server);
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/broker.yaml");
        Config::load(&path).unwrap();
    }
}
