//! The broker's configuration: the YAML file's shape, its defaults and its validation.
//!
//! Every field is optional. Unknown keys, wrong types and out-of-range values are errors
//! that name the key (and, for YAML errors, the line), so that a typo never silently
//! falls back to a default. The same loader serves start-up, `--check-config` and live
//! reload.
//!
//! The schema only: owns the shapes and their validation; must not import the layers it
//! configures (auth, plugins, storage, transport). Reading the files a config names and
//! watching it for changes happen elsewhere (`crate::broker`, `crate::admin::watch`).

pub mod bridges;
pub mod cluster;
mod duration;
pub mod mosquitto;
mod ops;
pub mod plugins;
pub mod security;

pub use bridges::{BridgeConfig, BridgeProtocol, BridgeTls, Direction, TopicRule};
pub use cluster::ClusterConfig;
pub use duration::{parse_duration, ConfigDuration};
pub use plugins::{ByteSize, OnError, PluginConfig, PluginLimits};
pub use security::{AclDefault, AclRule, Effect, RuleScope, UserConfig};

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
    /// The admin HTTP API (metrics, probes, clients, reload).
    pub admin: AdminConfig,
    /// Per-client resource limits.
    pub limits: LimitsConfig,
    /// What the server announces to and enforces on MQTT 5 clients (live: new connections
    /// get new values).
    pub mqtt5: Mqtt5Config,
    /// Wasm plugins, in call order (after the built-in password/ACL checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginConfig>,
    /// This broker's name towards other brokers (bridges' client ids and loop prevention;
    /// default: the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Connections to remote brokers that forward topics (live: each bridge restarts
    /// alone when its entry changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<BridgeConfig>,
    /// Several nodes acting as one over NATS JetStream; absent: a single node, no NATS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
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
    /// Period of the `$SYS/broker/...` topics (0 = not published).
    pub sys_interval: ConfigDuration,
    /// Time a graceful shutdown may take before remaining connections are abandoned.
    pub shutdown_timeout: ConfigDuration,
    /// On shutdown, time between readiness turning 503 and listeners closing, so that load
    /// balancers stop sending new clients first.
    pub drain_delay: ConfigDuration,
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
            sys_interval: ConfigDuration::secs(10),
            shutdown_timeout: ConfigDuration::secs(10),
            drain_delay: ConfigDuration::secs(0),
        }
    }
}

pub use crate::model::TransportKind;

fn default_ws_path() -> String {
    "/mqtt".into()
}

fn is_default_ws_path(p: &String) -> bool {
    p == "/mqtt"
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
    /// HTTP path of the WebSocket endpoint (`ws`, `wss`); other paths get 404.
    #[serde(
        default = "default_ws_path",
        skip_serializing_if = "is_default_ws_path"
    )]
    pub path: String,
    /// PEM certificate chain (`tls`, `wss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key: PKCS#8, RSA or EC (`tls`, `wss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle used to verify client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `client_ca_file`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_client_cert: bool,
    /// Use the client certificate's subject CN as the user name (as Mosquitto does); the
    /// verified certificate then counts as authentication.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_identity_as_username: bool,
    /// When a reload removes this listener, also close the connections it accepted
    /// (otherwise they stay connected and only new connections are refused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
}

impl ListenerConfig {
    /// A plain TCP listener on `bind`.
    pub fn tcp(bind: SocketAddr) -> Self {
        ListenerConfig {
            name: None,
            bind,
            protocol: TransportKind::Tcp,
            max_connections: None,
            path: default_ws_path(),
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            require_client_cert: false,
            use_identity_as_username: false,
            drain: false,
        }
    }

    /// A listener of another protocol on `bind`, without TLS files.
    pub fn new(protocol: TransportKind, bind: SocketAddr) -> Self {
        ListenerConfig {
            protocol,
            ..ListenerConfig::tcp(bind)
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
    /// After a reload, re-check every connected client's credentials with the new settings
    /// and disconnect those no longer accepted.
    pub reauthorize_on_reload: bool,
    /// Clients without a user name may connect (ignored when `require_auth` is true).
    pub allow_anonymous: bool,
    /// A Mosquitto `mosquitto_passwd` file (`$7$` PBKDF2-SHA512 or `$6$` SHA-512 hashes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Inline users with password hashes (never plaintext).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserConfig>,
    /// A Mosquitto ACL file (`user`, `topic`, `pattern` with `%c` / `%u`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<PathBuf>,
    /// Inline ACL rules, first match wins, evaluated before the ACL file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub acl: Vec<AclRule>,
    /// What happens when no rule decides: `deny` by default once any ACL exists, else `allow`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_default: Option<AclDefault>,
    /// Seed shorthand: make the default listener (`server.host:server.port`) TLS.
    #[serde(alias = "enableTLS", skip_serializing_if = "std::ops::Not::not")]
    pub enable_tls: bool,
    /// Seed shorthand: certificate chain of the default TLS listener.
    #[serde(alias = "certFile", skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Seed shorthand: private key of the default TLS listener.
    #[serde(alias = "keyFile", skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Per source address, each failed authentication doubles the delay before the refusing
    /// CONNACK, starting here (0 = no delay).
    pub auth_failure_delay: ConfigDuration,
    /// Upper bound of that delay.
    pub auth_failure_max_delay: ConfigDuration,
    /// MQTT 5 enhanced authentication methods offered (Authentication Method in CONNECT
    /// and AUTH): `SCRAM-SHA-512`, served from the `$7$` users of `password_file` and
    /// `users` (the password never crosses the network).
    pub auth_methods: Vec<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            require_auth: false,
            reauthorize_on_reload: true,
            allow_anonymous: true,
            password_file: None,
            users: Vec::new(),
            acl_file: None,
            acl: Vec::new(),
            acl_default: None,
            enable_tls: false,
            cert_file: None,
            key_file: None,
            auth_failure_delay: ConfigDuration::millis(100),
            auth_failure_max_delay: ConfigDuration::secs(10),
            auth_methods: Vec::new(),
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
    /// A crash-safe embedded database in `persistence.path`.
    File,
    /// The seed's external database: not offered (refused by validation with a message).
    Database,
}

/// When writes become durable (`persistence.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// Acknowledge QoS 1/2 only after the write is on disk; concurrent writes share an fsync.
    #[default]
    Always,
    /// Durable every `sync_interval`; a crash (`kill -9` or power loss) loses at most that window.
    Interval,
    /// No fsync per write; durable every 30 s and at shutdown, so a crash loses up to 30 s.
    Never,
}

/// `persistence:` section (the seed's `persistence`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// The seed's switch: `true` with no `storage_type` means `file`.
    pub enabled: bool,
    /// Backend: `memory` or `file`.
    #[serde(alias = "storageType")]
    pub storage_type: StorageType,
    /// Directory of the file store.
    pub path: PathBuf,
    /// Durability of writes.
    pub sync: SyncPolicy,
    /// fsync interval with `sync: interval`.
    pub sync_interval: ConfigDuration,
    /// Persistent sessions offline longer than this are removed with their queues (0 = never).
    pub session_expiry: ConfigDuration,
    /// Maximum number of topics with a retained message.
    #[serde(alias = "retainedMessageLimit")]
    pub retained_message_limit: usize,
    /// Memory the file store may use to cache its pages (`file` only).
    pub cache_size: ByteSize,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            enabled: false,
            storage_type: StorageType::Memory,
            path: PathBuf::from("data"),
            sync: SyncPolicy::Always,
            sync_interval: ConfigDuration::millis(100),
            session_expiry: ConfigDuration::secs(7 * 86_400),
            retained_message_limit: 100_000,
            cache_size: ByteSize(DEFAULT_STORE_CACHE_SIZE),
        }
    }
}

/// Default `persistence.cache_size`: the file store's page cache.
pub const DEFAULT_STORE_CACHE_SIZE: u64 = 256 * 1024 * 1024;

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

/// `mqtt5:` section: the server's MQTT 5 maxima and availability flags, sent in CONNACK.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt5Config {
    /// Receive Maximum: unacknowledged QoS 2 PUBLISHes a client may have in flight towards
    /// the broker; beyond it the client is disconnected with 0x93.
    pub receive_maximum: u16,
    /// Topic Alias Maximum: highest topic alias a client may use (0: none).
    pub topic_alias_maximum: u16,
    /// Highest keep alive (seconds) a client may use; a larger one, or 0, is replaced by
    /// this value and sent back as Server Keep Alive. 0: the client's value is kept.
    pub max_keep_alive: u16,
    /// Whether `$share/{group}/{filter}` subscriptions are accepted (3.1.1 clients too).
    pub shared_subscriptions: bool,
    /// Whether subscription identifiers are accepted.
    pub subscription_identifiers: bool,
    /// Whether wildcard subscriptions are accepted from MQTT 5 clients.
    pub wildcard_subscriptions: bool,
    /// Response Information sent to clients that request it (the root of their response
    /// topics); none when empty.
    pub response_information: String,
    /// Server Reference sent with CONNACK and DISCONNECT when set (another server the
    /// client may use).
    pub server_reference: String,
    /// How a shared subscription group picks the member for a message.
    pub shared_strategy: SharedStrategy,
    /// Send topic aliases to MQTT 5 clients that accept them (their Topic Alias Maximum):
    /// the first message on a topic carries the topic and an alias, later ones only the
    /// alias. Saves bandwidth on long topics; costs a small map per connection.
    pub outbound_topic_aliases: bool,
}

impl Default for Mqtt5Config {
    fn default() -> Self {
        Mqtt5Config {
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_keep_alive: 0,
            shared_subscriptions: true,
            subscription_identifiers: true,
            wildcard_subscriptions: true,
            response_information: String::new(),
            server_reference: String::new(),
            shared_strategy: SharedStrategy::RoundRobin,
            outbound_topic_aliases: false,
        }
    }
}

/// How a shared subscription group picks the member that gets a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// In turn, skipping members that are offline while any is online.
    #[default]
    RoundRobin,
    /// A random member, preferring online ones.
    Random,
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
    /// Append log lines to this file instead of stderr (reopened by every reload, so
    /// `logrotate` can move it away and send SIGHUP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Also send every line to the local syslog daemon or journald (`syslog_socket`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub syslog: bool,
    /// The syslog datagram socket.
    #[serde(default = "default_syslog_socket")]
    pub syslog_socket: PathBuf,
}

fn default_syslog_socket() -> PathBuf {
    PathBuf::from("/dev/log")
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            file: None,
            syslog: false,
            syslog_socket: default_syslog_socket(),
        }
    }
}

pub use ops::{AdminConfig, LimitsConfig, TopicLimit};

/// The levels `log.level` understands, alone or as `target=level`.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks `log.level` beyond what `tracing` parses: a bare word that is not a level (a
/// typo such as `warning` or `verbose`) would be taken as a target name and silently log
/// nothing else, so it is refused, with the level it probably meant.
fn check_log_level(filter: &str) -> Result<(), String> {
    let suggest = |word: &str| -> Option<&'static str> {
        match word.to_ascii_lowercase().as_str() {
            "warning" | "warnings" | "wrn" => Some("warn"),
            "verbose" | "debugging" | "dbg" => Some("debug"),
            "notice" | "information" | "informational" | "inf" => Some("info"),
            "err" | "errors" | "critical" | "crit" | "fatal" | "alert" | "emerg" => Some("error"),
            "all" | "trace_all" => Some("trace"),
            "none" | "quiet" | "silent" | "disable" | "disabled" => Some("off"),
            _ => None,
        }
    };
    let explain = |word: &str| {
        let levels = LOG_LEVELS.join(", ");
        match suggest(word) {
            Some(s) => format!("`{word}` is not a log level ({levels}); did you mean `{s}`?"),
            None => format!(
                "`{word}` is not a log level ({levels}); to set one module's level write `module=level`"
            ),
        }
    };
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level.trim(),
            // A bare `crate::module` names a target on purpose; a bare word must be a level.
            None if directive.contains("::") || directive.contains('[') => continue,
            None => directive,
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(explain(level));
        }
    }
    Ok(())
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Every file the configuration names (password, ACL, certificates, plugins): what a
    /// reload re-reads and the watcher follows.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = [
            &self.security.password_file,
            &self.security.acl_file,
            &self.security.cert_file,
            &self.security.key_file,
            &self.admin.token_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        for l in &self.listeners {
            files.extend(
                [&l.cert_file, &l.key_file, &l.client_ca_file]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        files.extend(self.plugins.iter().map(|p| p.path.clone()));
        files
    }

    /// Makes relative file paths relative to `base` (the config file's directory), so a config
    /// works whatever directory the broker is started from.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.persistence.path);
        for p in &mut self.plugins {
            resolve(&mut p.path);
            if let Some(dir) = &mut p.cache_dir {
                resolve(dir);
            }
        }
        for p in [
            &mut self.security.password_file,
            &mut self.security.acl_file,
            &mut self.security.cert_file,
            &mut self.security.key_file,
            &mut self.admin.token_file,
            &mut self.log.file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
        for l in &mut self.listeners {
            for p in [&mut l.cert_file, &mut l.key_file, &mut l.client_ca_file]
                .into_iter()
                .flatten()
            {
                resolve(p);
            }
        }
        for tls in self.bridges.iter_mut().filter_map(|b| b.tls.as_mut()) {
            for p in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file]
                .into_iter()
                .flatten()
            {
                resolve(p);
            }
        }
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
        let mut config = config;
        // The seed's `enabled: true` meant "persist"; without an explicit backend that is `file`.
        if config.persistence.enabled && !storage_type_given(text) {
            config.persistence.storage_type = StorageType::File;
        }
        config.validate(path)?;
        Ok(config)
    }

    /// `node_name`, or the host name when unset.
    pub fn node(&self) -> String {
        if let Some(n) = &self.node_name {
            return n.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().replace(['/', '+', '#', ','], "_"))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "mqtt-broker".to_owned())
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
            return invalid(
                "server.max_packet_size",
                "must be at most 268435460 bytes (the protocol maximum)",
            );
        }
        if self.mqtt5.receive_maximum == 0 {
            return invalid("mqtt5.receive_maximum", "must be between 1 and 65535");
        }
        if self.performance.message_queue_limit == 0 {
            return invalid("performance.message_queue_limit", "must be at least 1");
        }
        if self.performance.inflight_window_size == 0
            || self.performance.inflight_window_size > 65_535
        {
            return invalid(
                "performance.inflight_window_size",
                "must be between 1 and 65535",
            );
        }
        if self.persistence.storage_type == StorageType::Database {
            return invalid(
                "persistence.storage_type",
                "`database` is not offered yet; use `file` (an embedded, crash-safe store in persistence.path) or `memory`",
            );
        }
        if self.persistence.sync == SyncPolicy::Interval && self.persistence.sync_interval.is_zero()
        {
            return invalid(
                "persistence.sync_interval",
                "must be greater than 0 with sync: interval",
            );
        }
        if self.persistence.cache_size.0 < 1024 * 1024 {
            return invalid("persistence.cache_size", "must be at least 1MiB");
        }
        if self.persistence.retained_message_limit == 0 {
            return invalid("persistence.retained_message_limit", "must be at least 1");
        }
        let mut seen = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            // Listeners are keyed by name at run time (reload, metrics, TLS acceptors).
            if !names.insert(l.display_name()) {
                return invalid(
                    &format!("listeners[{i}].name"),
                    &format!(
                        "`{}` is used by another listener; names must be unique",
                        l.display_name()
                    ),
                );
            }
            if l.require_client_cert && l.client_ca_file.is_none() {
                return invalid(
                    &format!("listeners[{i}].require_client_cert"),
                    "needs client_ca_file (the CA that signs the client certificates)",
                );
            }
            // As in Mosquitto: the identity must come from a verified certificate, never from
            // the user name a client without one chose to send.
            if l.use_identity_as_username && !l.require_client_cert {
                return invalid(
                    &format!("listeners[{i}].use_identity_as_username"),
                    "needs require_client_cert: true (and client_ca_file)",
                );
            }
            if l.max_connections == Some(0) {
                return invalid(
                    &format!("listeners[{i}].max_connections"),
                    "must be at least 1",
                );
            }
            if l.bind.port() != 0 && !seen.insert(l.bind) {
                return invalid(
                    &format!("listeners[{i}].bind"),
                    "the same address is bound twice",
                );
            }
        }
        for method in &self.security.auth_methods {
            if method != security::SCRAM_SHA_512 {
                return invalid(
                    "security.auth_methods",
                    &format!("unknown method {method:?} (offered: SCRAM-SHA-512)"),
                );
            }
            if self.security.password_file.is_none() && self.security.users.is_empty() {
                return invalid(
                    "security.auth_methods",
                    "SCRAM-SHA-512 needs users: set security.password_file or security.users",
                );
            }
        }
        if self.security.auth_failure_max_delay < self.security.auth_failure_delay {
            return invalid(
                "security.auth_failure_max_delay",
                "must not be smaller than auth_failure_delay",
            );
        }
        if let Err((key, reason)) = bridges::validate_all(&self.bridges) {
            return invalid(&key, &reason);
        }
        if let Some(n) = &self.node_name {
            if n.is_empty() || n.contains(['/', '+', '#', ',']) {
                return invalid(
                    "node_name",
                    "must be non-empty without `/`, `+`, `#` or `,`",
                );
            }
        }
        if let Some(Err((key, reason))) = self.cluster.as_ref().map(ClusterConfig::validate) {
            return invalid(&key, &reason);
        }
        if self.cluster.is_some() && self.persistence.storage_type == StorageType::File {
            return invalid(
                "persistence.storage_type",
                "a cluster keeps sessions and retained messages in JetStream: use `memory` (the default) or remove `cluster:`",
            );
        }
        if let Err((key, reason)) = plugins::validate_all(&self.plugins) {
            return invalid(&key, &reason);
        }
        if let Err(reason) = check_log_level(&self.log.level) {
            return invalid("log.level", &reason);
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid("log.level", &e.to_string());
        }
        if let Err((key, reason)) = self.limits.validate() {
            return invalid(key, reason);
        }
        if self.server.shutdown_timeout.is_zero() {
            return invalid("server.shutdown_timeout", "must be greater than 0");
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
        let bind = SocketAddr::new(ip, self.server.port);
        if self.security.enable_tls {
            return vec![ListenerConfig {
                cert_file: self.security.cert_file.clone(),
                key_file: self.security.key_file.clone(),
                ..ListenerConfig::new(TransportKind::Tls, bind)
            }];
        }
        vec![ListenerConfig::tcp(bind)]
    }

    /// The effective config as YAML (what `--check-config` prints).
    pub fn to_yaml(&self) -> String {
        let mut effective = self.clone();
        effective.listeners = self.effective_listeners();
        serde_yaml_ng::to_string(&effective)
            .unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// Whether the YAML sets `persistence.storage_type` (or the seed's `storageType`) itself, as
/// opposed to a comment or another key merely containing the word.
fn storage_type_given(text: &str) -> bool {
    let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return false;
    };
    value
        .get("persistence")
        .is_some_and(|p| p.get("storage_type").is_some() || p.get("storageType").is_some())
}

#[cfg(test)]
mod tests {
    /// A typo in `log.level` is refused with the level it probably meant, instead of
    /// silently logging nothing (issue 21).
    #[test]
    fn log_level_typos_are_refused_with_a_suggestion() {
        for (text, ok) in [
            ("info", true),
            ("WARN", true),
            ("mqtt_broker=debug,info", true),
            ("mqtt_broker::connection=trace", true),
            ("off", true),
            ("warning", false),
            ("verbose", false),
            ("notice", false),
            ("mqtt_broker=warning", false),
            ("loud", false),
        ] {
            let yaml = format!("log:\n  level: \"{text}\"\n");
            let r = Config::parse(&yaml, Path::new("t.yaml"));
            assert_eq!(r.is_ok(), ok, "{text}: {r:?}");
        }
        let err = Config::parse("log:\n  level: warning\n", Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("log.level") && err.contains("did you mean `warn`"),
            "{err}"
        );
        let err = Config::parse("log:\n  format: jsn\n", Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("jsn") && err.contains("json"), "{err}");
    }

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
        let err = parse("server:\n  port: 1883\n  prot: 1\n")
            .unwrap_err()
            .to_string();
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
        let err = parse("performance:\n  message_queue_limit: 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("performance.message_queue_limit"), "{err}");
    }

    #[test]
    fn seed_camel_case_aliases() {
        let c =
            parse("server:\n  maxConnections: 5\nperformance:\n  inflightWindowSize: 7\n").unwrap();
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
    fn seed_persistence_enabled_means_file_unless_a_backend_is_set() {
        // A comment mentioning storage_type must not count as setting it.
        let c = parse("persistence:\n  # storage_type: memory is the default\n  enabled: true\n")
            .unwrap();
        assert_eq!(c.persistence.storage_type, StorageType::File);
        let c = parse("persistence:\n  enabled: true\n  storage_type: memory\n").unwrap();
        assert_eq!(c.persistence.storage_type, StorageType::Memory);
        let c = parse("persistence:\n  enabled: true\n  storageType: memory\n").unwrap();
        assert_eq!(c.persistence.storage_type, StorageType::Memory);
    }

    #[test]
    fn listener_names_are_unique_and_client_identity_needs_a_verified_certificate() {
        let err = parse(
            "listeners:\n  - {name: edge, bind: 127.0.0.1:1883, protocol: tcp}\n  - {name: edge, bind: 127.0.0.1:8080, protocol: ws}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("listeners[1].name") && err.contains("unique"),
            "{err}"
        );
        let err = parse(
            "listeners:\n  - {bind: 127.0.0.1:8883, protocol: tls, cert_file: c.pem, key_file: k.pem, use_identity_as_username: true}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("listeners[0].use_identity_as_username"),
            "{err}"
        );
        let err = parse(
            "listeners:\n  - {bind: 127.0.0.1:8883, protocol: tls, cert_file: c.pem, key_file: k.pem, require_client_cert: true}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("client_ca_file"), "{err}");
    }

    #[test]
    fn persistence_cache_size_parses_units_and_has_a_floor() {
        let c = parse("persistence:\n  cache_size: 64MiB\n").unwrap();
        assert_eq!(c.persistence.cache_size.0, 64 * 1024 * 1024);
        let err = parse("persistence:\n  cache_size: 1000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("persistence.cache_size"), "{err}");
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/broker.yaml");
        Config::load(&path).unwrap();
    }
}
