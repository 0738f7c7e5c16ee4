//! The `plugins:` section of the broker config: which components to load, their settings,
//! their sandbox limits and what a failed call means.

use crate::config::ConfigDuration;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Default memory limit per plugin instance.
pub const DEFAULT_MEMORY: u64 = 64 * 1024 * 1024;
/// Default time limit for `authorize` and `transform` calls.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(10);
/// Default time limit for `authenticate` calls (which may do real cryptography).
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_millis(100);
/// Default time limit for `init` (interpreted guests set themselves up here).
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(2);

/// One entry of `plugins:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Name used in logs, stats and metrics; unique within the list.
    pub name: String,
    /// The `.wasm` component (a `.wat` text component is accepted too, for tests).
    pub path: PathBuf,
    /// Handed to the plugin's `init` as key/value pairs (scalars as text, maps and lists as JSON).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, serde_yaml_ng::Value>,
    /// Sandbox limits.
    #[serde(default)]
    pub limits: PluginLimits,
    /// What a failed call (trap, timeout, out of memory, degraded plugin) means.
    #[serde(default)]
    pub on_error: OnError,
    /// Where compiled artifacts are cached; default: `.cache/` beside the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Whether the plugin's `authorize` answers may be remembered per connection and topic
    /// until the client reconnects or the config reloads (default true). Set false for a
    /// policy that depends on the time or on state outside the request.
    #[serde(default = "yes")]
    pub cache_decisions: bool,
    /// Topic filters (`+`/`#` allowed) this plugin's `authorize` (publish and deliver) and
    /// `transform` are called for; other topics pass it by (abstain / keep) without a call.
    /// Empty (the default): every topic. SUBSCRIBE requests always reach the plugin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Host capabilities granted to the plugin (plugin API 0.2); each is denied unless
    /// listed here.
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub capabilities: Capabilities,
    /// Event hooks delivery (plugin API 0.2).
    #[serde(default, skip_serializing_if = "EventsConfig::is_default")]
    pub events: EventsConfig,
}

/// Host capabilities a plugin may use; `None` = not granted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Outbound HTTP(S) to the listed hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpGrant>,
    /// A key-value store of the plugin's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvGrant>,
    /// Publishing messages to the listed topic filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishGrant>,
    /// A call of the plugin's `timer.tick` at this interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<ConfigDuration>,
}

impl Capabilities {
    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self == &Capabilities::default()
    }
}

/// The `http` grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Hosts requests may go to: `name` (any port) or `name:port`; names compare without
    /// case, IPv6 addresses in brackets (`[::1]:8080`).
    pub allow: Vec<String>,
    /// Longest a request may take (the hook's own time limit may cut it shorter).
    #[serde(default = "default_http_timeout")]
    pub timeout: ConfigDuration,
    /// Response bodies are cut at this size.
    #[serde(default = "default_http_max_response")]
    pub max_response_bytes: ByteSize,
}

fn default_http_timeout() -> ConfigDuration {
    ConfigDuration::secs(5)
}

fn default_http_max_response() -> ByteSize {
    ByteSize(1 << 20)
}

impl HttpGrant {
    /// Whether `host` (lowercase, IPv6 in brackets) on `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.allow.iter().any(|entry| {
            let entry = entry.trim().to_ascii_lowercase();
            match split_port(&entry) {
                Some((h, p)) => h == host && p == port,
                None => entry == host,
            }
        })
    }
}

/// `host:port` → (host, port); `None` for a bare host (also a bare or bracketed IPv6).
fn split_port(entry: &str) -> Option<(&str, u16)> {
    let (h, p) = entry.rsplit_once(':')?;
    if h.contains(':') && !(h.starts_with('[') && h.ends_with(']')) {
        return None;
    }
    Some((h, p.parse().ok()?))
}

/// The `kv` grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvGrant {
    /// Most bytes (keys plus values) the store may hold.
    #[serde(default = "default_kv_max")]
    pub max_bytes: ByteSize,
}

fn default_kv_max() -> ByteSize {
    ByteSize(1 << 20)
}

/// The `publish` grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishGrant {
    /// Topic filters the plugin may publish to.
    pub topics: Vec<String>,
    /// Most messages one hook call may publish.
    #[serde(default = "default_publish_per_call")]
    pub max_per_call: usize,
}

fn default_publish_per_call() -> usize {
    64
}

/// How event hooks are delivered to one plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events waiting for the plugin; beyond it the oldest are dropped and counted
    /// (`events_dropped`).
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { queue: 4096 }
    }
}

impl EventsConfig {
    fn is_default(&self) -> bool {
        self == &EventsConfig::default()
    }
}

fn yes() -> bool {
    true
}

impl PluginConfig {
    /// A plugin entry with default limits and no config, for tests and embedders.
    pub fn new(name: &str, path: impl Into<PathBuf>) -> Self {
        PluginConfig {
            name: name.to_owned(),
            path: path.into(),
            config: BTreeMap::new(),
            limits: PluginLimits::default(),
            on_error: OnError::default(),
            cache_dir: None,
            cache_decisions: true,
            topics: Vec::new(),
            capabilities: Capabilities::default(),
            events: EventsConfig::default(),
        }
    }

    /// Adds one `config:` entry (builder style).
    pub fn with(mut self, key: &str, value: impl Into<serde_yaml_ng::Value>) -> Self {
        self.config.insert(key.to_owned(), value.into());
        self
    }

    /// The `config:` map flattened into the key/value list that `init` receives.
    pub fn init_pairs(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_yaml_ng::Value::Null => String::new(),
                    serde_yaml_ng::Value::Bool(b) => b.to_string(),
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    serde_yaml_ng::Value::String(s) => s.clone(),
                    // Nested values travel as JSON so that every guest language can parse them.
                    other => serde_json::to_string(other).unwrap_or_default(),
                };
                (k.clone(), text)
            })
            .collect()
    }

    /// Checks values that types alone cannot express; `Err` is (key suffix, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, r: &str| Err((k.to_owned(), r.to_owned()));
        if self.name.trim().is_empty() {
            return err("name", "must not be empty");
        }
        if self.path.as_os_str().is_empty() {
            return err("path", "must name a .wasm component");
        }
        let l = &self.limits;
        if l.memory.0 < 64 * 1024 {
            return err("limits.memory", "must be at least 64KiB (one Wasm page)");
        }
        if l.memory.0 > 4 * 1024 * 1024 * 1024 {
            return err("limits.memory", "must be at most 4GiB (32-bit Wasm memory)");
        }
        for (key, d) in [
            ("limits.call_timeout", l.call_timeout),
            ("limits.auth_timeout", l.auth_timeout),
            ("limits.init_timeout", l.init_timeout),
        ] {
            if d.is_zero() {
                return err(key, "must be greater than 0");
            }
            if d.get() > Duration::from_secs(60) {
                return err(key, "must be at most 60s");
            }
        }
        if l.failures_to_degrade == 0 {
            return err("limits.failures_to_degrade", "must be at least 1");
        }
        if l.failure_window.is_zero() {
            return err("limits.failure_window", "must be greater than 0");
        }
        if l.pool_size > 1024 {
            return err("limits.pool_size", "must be at most 1024");
        }
        for (i, filter) in self.topics.iter().enumerate() {
            if let Err(e) = crate::protocol::topic::validate_topic_filter(filter) {
                return Err((
                    format!("topics[{i}]"),
                    format!("{filter:?} is not a valid topic filter: {e}"),
                ));
            }
        }
        let caps = &self.capabilities;
        if let Some(http) = &caps.http {
            if http.allow.is_empty() {
                return err("capabilities.http.allow", "must list at least one host");
            }
            for (i, h) in http.allow.iter().enumerate() {
                let h = h.trim();
                if h.is_empty() || h.contains('/') || h.contains('*') {
                    return Err((
                        format!("capabilities.http.allow[{i}]"),
                        format!("{h:?} is not a host name or host:port"),
                    ));
                }
            }
            if http.timeout.is_zero() || http.timeout.get() > Duration::from_secs(60) {
                return err("capabilities.http.timeout", "must be between 1ms and 60s");
            }
        }
        if let Some(kv) = &caps.kv {
            if kv.max_bytes.0 == 0 || kv.max_bytes.0 > 1 << 30 {
                return err("capabilities.kv.max_bytes", "must be between 1 and 1GiB");
            }
        }
        if let Some(p) = &caps.publish {
            if p.topics.is_empty() {
                return err(
                    "capabilities.publish.topics",
                    "must list at least one topic filter",
                );
            }
            for (i, filter) in p.topics.iter().enumerate() {
                if let Err(e) = crate::protocol::topic::validate_topic_filter(filter) {
                    return Err((
                        format!("capabilities.publish.topics[{i}]"),
                        format!("{filter:?} is not a valid topic filter: {e}"),
                    ));
                }
            }
            if p.max_per_call == 0 || p.max_per_call > 10_000 {
                return err(
                    "capabilities.publish.max_per_call",
                    "must be between 1 and 10000",
                );
            }
        }
        if let Some(t) = caps.tick {
            if t.get() < Duration::from_millis(10) {
                return err("capabilities.tick", "must be at least 10ms");
            }
        }
        if self.events.queue == 0 || self.events.queue > 1_000_000 {
            return err("events.queue", "must be between 1 and 1000000");
        }
        Ok(())
    }
}

/// Validates the whole `plugins:` list; `Err` is (dotted key, reason).
pub fn validate_all(plugins: &[PluginConfig]) -> Result<(), (String, String)> {
    let mut names = std::collections::HashSet::new();
    for (i, p) in plugins.iter().enumerate() {
        p.validate()
            .map_err(|(key, reason)| (format!("plugins[{i}].{key}"), reason))?;
        if !names.insert(p.name.as_str()) {
            return Err((
                format!("plugins[{i}].name"),
                format!("`{}` is used twice", p.name),
            ));
        }
    }
    Ok(())
}

/// Sandbox limits of one plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Linear memory (and tables) per instance: bytes, or a string such as `64MiB`.
    pub memory: ByteSize,
    /// Time limit of one `authorize` or `transform` call.
    pub call_timeout: ConfigDuration,
    /// Time limit of one `authenticate` call.
    pub auth_timeout: ConfigDuration,
    /// Time limit of instantiation plus `init`.
    pub init_timeout: ConfigDuration,
    /// Failures within `failure_window` that mark the plugin degraded.
    pub failures_to_degrade: u32,
    /// Window over which failures are counted.
    pub failure_window: ConfigDuration,
    /// How long a degraded plugin fails closed before one call probes it again.
    pub degraded_cooldown: ConfigDuration,
    /// Idle instances kept ready; 0 = one per CPU core (the async worker count).
    pub pool_size: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory: ByteSize(DEFAULT_MEMORY),
            call_timeout: ConfigDuration(DEFAULT_CALL_TIMEOUT),
            auth_timeout: ConfigDuration(DEFAULT_AUTH_TIMEOUT),
            init_timeout: ConfigDuration(DEFAULT_INIT_TIMEOUT),
            failures_to_degrade: 20,
            failure_window: ConfigDuration::secs(10),
            degraded_cooldown: ConfigDuration::secs(30),
            pool_size: 0,
        }
    }
}

/// What a failed plugin call means for the request it was answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: refuse the connection (CONNACK 0x05), deny the action, drop the message.
    #[default]
    Deny,
    /// Fail open: abstain from the decision (the rest of the chain decides), keep the message.
    Pass,
    /// Same as `deny`; reads better on a transformer.
    Drop,
}

/// A size in bytes; in YAML an integer or a string with a unit (`512KiB`, `64MiB`, `1GiB`,
/// also `KB`/`MB`/`GB`, meaning the binary units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"64MiB"`, `"512k"`, `"1048576"`.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size such as 64MiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => return Err(format!("unknown size unit `{other}` (use KiB, MiB or GiB)")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n % (1 << 30) == 0 {
            write!(f, "{}GiB", n >> 30)
        } else if n >= 1 << 20 && n % (1 << 20) == 0 {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n % (1 << 10) == 0 {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, or a string such as 64MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("size must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("512k"), Ok(ByteSize(512 << 10)));
        assert_eq!(ByteSize::parse("1048576"), Ok(ByteSize(1 << 20)));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }

    #[test]
    fn yaml_entry_parses_and_flattens() {
        let yaml = "name: a\npath: x.wasm\nconfig:\n  secret: s3\n  n: 4\n  map: {k: [1, 2]}\nlimits:\n  memory: 8MiB\n  call_timeout: 5ms\non_error: pass\n";
        let c: PluginConfig = serde_yaml_ng::from_str(yaml).expect("parses");
        assert_eq!(c.limits.memory, ByteSize(8 << 20));
        assert_eq!(c.limits.call_timeout, ConfigDuration::millis(5));
        assert_eq!(c.on_error, OnError::Pass);
        let pairs = c.init_pairs();
        assert_eq!(
            pairs,
            vec![
                ("map".to_owned(), r#"{"k":[1,2]}"#.to_owned()),
                ("n".to_owned(), "4".to_owned()),
                ("secret".to_owned(), "s3".to_owned()),
            ]
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = serde_yaml_ng::from_str::<PluginConfig>("name: a\npath: x\nlimts: {}\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("limts"), "{err}");
    }
}
