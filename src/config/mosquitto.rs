//! `mqtt-broker import-mosquitto`: reads a `mosquitto.conf` (Mosquitto 2.0 format, with its
//! `include_dir` files) and produces the equivalent YAML configuration, plus a note for
//! every option it cannot map and why, so that nothing is dropped silently.
//!
//! Owns the translation only: text in, a YAML document and notes out. The result is checked
//! by parsing it back as a [`Config`], so what it prints always loads.

use super::{Config, ConfigError};
use serde_yaml_ng::{Mapping, Value};
use std::path::{Path, PathBuf};

/// A translated configuration.
#[derive(Debug)]
pub struct Imported {
    /// The YAML document (only the keys the Mosquitto file set, or that differ by default).
    pub yaml: String,
    /// The configuration it describes (already validated).
    pub config: Config,
    /// One line per option that was not mapped, or mapped only approximately, with why.
    pub notes: Vec<String>,
}

/// One `listener` block (or the default listener of `port` / `bind_address`).
#[derive(Debug, Default, Clone)]
struct Listener {
    port: u16,
    address: Option<String>,
    websockets: bool,
    cert_file: Option<String>,
    key_file: Option<String>,
    ca_file: Option<String>,
    require_certificate: bool,
    use_identity_as_username: bool,
    max_connections: Option<i64>,
    /// Where it was declared (file:line), for notes.
    at: String,
}

/// The state of a translation in progress.
#[derive(Default)]
struct Import {
    root: Mapping,
    listeners: Vec<Listener>,
    /// The default listener (`port`, `bind_address`, TLS options outside a listener).
    default_listener: Option<Listener>,
    /// Index into `listeners` of the block being read, if any.
    current: Option<usize>,
    /// Inside a bridge `connection` block: its index in `bridges`.
    in_bridge: Option<usize>,
    /// The `bridges:` entries being built, one per `connection` block.
    bridges: Vec<Mapping>,
    per_listener_settings: bool,
    allow_anonymous: Option<bool>,
    log_types: Vec<String>,
    notes: Vec<String>,
    files: usize,
}

/// Reads `path` (and the files of its `include_dir`s) and translates it.
pub fn import(path: &Path) -> Result<Imported, ConfigError> {
    let mut state = Import::default();
    state.read_file(path)?;
    state.finish(path)
}

/// Translates the text of a `mosquitto.conf`; `path` labels notes and errors, and an
/// `include_dir` in it is read from the file system.
pub fn import_text(text: &str, path: &Path) -> Result<Imported, ConfigError> {
    let mut state = Import::default();
    state.read_text(text, path)?;
    state.finish(path)
}

/// Mosquitto's durations (`persistent_client_expiration`): a number with h, d, w, m or y.
fn mosquitto_duration_secs(v: &str) -> Option<u64> {
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "m" => 30 * 86_400,
        "y" => 365 * 86_400,
        _ => return None,
    };
    n.checked_mul(secs)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Sets `a.b.c` in a nested mapping.
fn set(root: &mut Mapping, key: &str, value: Value) {
    let mut parts = key.split('.').peekable();
    let mut map = root;
    while let Some(part) = parts.next() {
        let k = Value::String(part.to_owned());
        if parts.peek().is_none() {
            map.insert(k, value);
            return;
        }
        let entry = map
            .entry(k)
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !entry.is_mapping() {
            *entry = Value::Mapping(Mapping::new());
        }
        map = match entry {
            Value::Mapping(m) => m,
            _ => return,
        };
    }
}

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn number(n: u64) -> Value {
    Value::Number(n.into())
}

/// Splits on whitespace, keeping `"..."` together (`""` is an empty word), as Mosquitto's
/// `topic` lines are written.
fn split_quoted(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            out.push(chars.by_ref().take_while(|c| *c != '"').collect());
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(w);
        }
    }
    out
}

/// Options with no equivalent here, and why.
fn unsupported(option: &str) -> Option<&'static str> {
    Some(match option {
        "capath" => "a CA directory is not supported; concatenate the certificates into one `cafile`",
        "crlfile" => "certificate revocation lists are not supported",
        "ciphers" | "ciphers_tls1.3" => "the TLS cipher suites are rustls's safe defaults and cannot be changed",
        "tls_version" => "TLS 1.2 and 1.3 are always offered (rustls); older versions are not supported",
        "tls_engine" | "tls_engine_kpass_sha1" | "tls_keyform" => "OpenSSL engines are not supported (rustls)",
        "dhparamfile" => "not needed: rustls uses ECDHE only",
        "psk_hint" | "psk_file" => "TLS pre-shared keys are not supported",
        "http_dir" => "the WebSocket listener serves no files",
        "mount_point" => "mount points are not supported",
        "socket_domain" => "write the listener's address as IPv4 or IPv6 instead",
        "bind_interface" => "bind to the interface's address instead",
        "websockets_log_level" | "websockets_headers_size" => "not needed: WebSocket logging and limits follow the broker's",
        "accept_protocol_versions" => "MQTT 3.1 and 3.1.1 are always accepted",
        "auth_plugin" | "plugin" | "global_plugin" | "plugin_load" | "plugin_use" => {
            "Mosquitto plugins cannot be loaded; write a WebAssembly plugin instead (plugins/README.md)"
        }
        "auth_opt" | "plugin_opt" => "belongs to a Mosquitto plugin, which cannot be loaded",
        "auto_id_prefix" => "assigned client ids start with `auto-`",
        "clientid_prefixes" => "use an ACL or an authentication plugin to restrict client ids",
        "check_retain_source" => "retained messages are not re-checked against the publisher's current ACL",
        "upgrade_outgoing_qos" => "not supported: messages are delivered at the lower of publish and subscription QoS, as the specification says",
        "max_inflight_bytes" => "the inflight window is bounded in messages (max_inflight_messages)",
        "memory_limit" => "not supported: queues and the retained store are bounded by their own limits",
        "autosave_on_changes" => "the file store writes every change (group commit); only the sync policy is configurable",
        "retain_expiry_interval" | "persistent_client_expiration_interval" => "not supported",
        "set_tcp_nodelay" => "TCP_NODELAY is always set",
        "log_timestamp" | "log_timestamp_format" => "log lines always carry an RFC 3339 timestamp",
        "connection_messages" => "connects and disconnects are always logged at info level",
        "websockets_origin" => "not supported",
        "enable_control_api" => "the admin HTTP API (admin:) serves that purpose",
        "allow_duplicate_messages" => "overlapping subscriptions always deliver one copy [MQTT-3.3.5-1]",
        _ => return None,
    })
}

impl Import {
    fn note(&mut self, at: &str, msg: String) {
        self.notes.push(format!("{at}: {msg}"));
    }

    fn read_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        self.files += 1;
        if self.files > 256 {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key: "include_dir".into(),
                reason: "more than 256 files included; is an include_dir including itself?".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.read_text(&text, path)
    }

    fn read_text(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{}:{}", path.display(), i + 1);
            let (option, value) = match line.split_once(char::is_whitespace) {
                Some((o, v)) => (o, v.trim()),
                None => (line, ""),
            };
            self.option(option, value, &at)?;
        }
        Ok(())
    }

    /// The listener options apply to: the current `listener` block, or the default one.
    fn listener(&mut self) -> &mut Listener {
        match self.current {
            Some(i) => &mut self.listeners[i],
            None => self.default_listener.get_or_insert_with(|| Listener {
                port: 1883,
                at: "default listener".into(),
                ..Default::default()
            }),
        }
    }

    fn option(&mut self, option: &str, value: &str, at: &str) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: PathBuf::from(at),
            key: option.to_owned(),
            reason,
        };
        let number_of = |v: &str| -> Result<i64, ConfigError> {
            v.parse::<i64>()
                .map_err(|_| invalid(format!("`{v}` is not a number")))
        };
        let bool_of = |v: &str| -> Result<bool, ConfigError> {
            parse_bool(v).ok_or_else(|| invalid(format!("`{v}` is not true or false")))
        };
        if option == "connection" {
            let mut m = Mapping::new();
            set(&mut m, "name", string(value));
            set(&mut m, "topics", Value::Sequence(Vec::new()));
            self.bridges.push(m);
            self.in_bridge = Some(self.bridges.len() - 1);
            self.current = None;
            return Ok(());
        }
        if option == "listener" {
            self.in_bridge = None;
        } else if let Some(i) = self.in_bridge {
            return self.bridge_option(i, option, value, at);
        }
        match option {
            "listener" => {
                let mut parts = value.split_whitespace();
                let port = parts
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| invalid(format!("`{value}`: expected `listener PORT [ADDRESS]`")))?;
                if port == 0 {
                    return Err(invalid(
                        "port 0 (a Unix socket listener) is not supported".into(),
                    ));
                }
                let address = parts.next().map(str::to_owned);
                self.listeners.push(Listener {
                    port,
                    address,
                    at: at.to_owned(),
                    ..Default::default()
                });
                self.current = Some(self.listeners.len() - 1);
            }
            "port" => self.listener().port = number_of(value)? as u16,
            "bind_address" => self.listener().address = Some(value.to_owned()),
            "protocol" => match value {
                "mqtt" => self.listener().websockets = false,
                "websockets" => self.listener().websockets = true,
                other => return Err(invalid(format!("unknown protocol `{other}`"))),
            },
            "certfile" => self.listener().cert_file = Some(value.to_owned()),
            "keyfile" => self.listener().key_file = Some(value.to_owned()),
            "cafile" => self.listener().ca_file = Some(value.to_owned()),
            "require_certificate" => self.listener().require_certificate = bool_of(value)?,
            "use_identity_as_username" | "use_subject_as_username" => {
                let on = bool_of(value)?;
                if option == "use_subject_as_username" && on {
                    self.note(at, "use_subject_as_username: the certificate's common name is used as the user name, not the whole subject".into());
                }
                self.listener().use_identity_as_username = on;
            }
            "max_connections" => {
                let n = number_of(value)?;
                match self.current {
                    Some(_) => self.listener().max_connections = Some(n),
                    None if n >= 0 => set(&mut self.root, "server.max_connections", number(n as u64)),
                    None => {}
                }
            }
            "per_listener_settings" => self.per_listener_settings = bool_of(value)?,
            "allow_anonymous" => {
                let on = bool_of(value)?;
                if self.current.is_some()
                    && self.per_listener_settings
                    && self.allow_anonymous.is_some_and(|a| a != on)
                {
                    self.note(at, "allow_anonymous differs between listeners; security settings are global here, the last one is used".into());
                }
                self.allow_anonymous = Some(on);
            }
            "password_file" | "acl_file" => {
                if self.current.is_some() && self.per_listener_settings {
                    self.note(at, format!("{option} of one listener (per_listener_settings) applies to every listener here"));
                }
                self.path_note(at, value);
                set(&mut self.root, &format!("security.{option}"), string(value));
            }
            "persistence" => {
                let kind = if bool_of(value)? { "file" } else { "memory" };
                set(&mut self.root, "persistence.storage_type", string(kind));
            }
            "persistence_location" => {
                self.path_note(at, value);
                set(&mut self.root, "persistence.path", string(value));
            }
            "persistence_file" => self.note(
                at,
                format!("persistence_file {value}: the file store is a directory (persistence.path); the file name is not used"),
            ),
            "autosave_interval" => {
                let n = number_of(value)?;
                if n > 0 {
                    set(&mut self.root, "persistence.sync", string("interval"));
                    set(&mut self.root, "persistence.sync_interval", string(&format!("{n}s")));
                    self.note(at, format!("autosave_interval {n}: mapped to persistence.sync: interval with sync_interval {n}s (every change is written at once and made durable at that interval)"));
                }
            }
            "persistent_client_expiration" => match mosquitto_duration_secs(value) {
                Some(secs) => set(&mut self.root, "persistence.session_expiry", string(&format!("{secs}s"))),
                None => return Err(invalid(format!("`{value}` is not a duration like 1h, 2d, 1w, 1m or 1y"))),
            },
            "max_queued_messages" => match number_of(value)? {
                n if n > 0 => set(&mut self.root, "performance.message_queue_limit", number(n as u64)),
                _ => self.note(at, "max_queued_messages 0 (no limit): every queue stays bounded here; performance.message_queue_limit keeps its default".into()),
            },
            "max_queued_bytes" => match number_of(value)? {
                n if n > 0 => set(&mut self.root, "limits.max_queued_bytes", number(n as u64)),
                _ => {}
            },
            "max_inflight_messages" => match number_of(value)? {
                n if n > 0 => set(&mut self.root, "performance.inflight_window_size", number(n as u64)),
                _ => self.note(at, "max_inflight_messages 0 (no limit): performance.inflight_window_size keeps its default".into()),
            },
            "queue_qos0_messages" => {
                let on = bool_of(value)?;
                set(&mut self.root, "performance.queue_qos0_offline", Value::Bool(on));
            }
            "message_size_limit" => {
                let n = number_of(value)?;
                if n > 0 {
                    // The payload limit plus room for the topic and the header.
                    let packet = n as u64 + 65_542;
                    set(&mut self.root, "server.max_packet_size", number(packet));
                    self.note(at, format!("message_size_limit {n} (payload) mapped to server.max_packet_size {packet} (whole packet: payload plus the largest topic and header)"));
                }
            }
            "max_packet_size" => {
                let n = number_of(value)?;
                if n > 0 {
                    set(&mut self.root, "server.max_packet_size", number(n as u64));
                }
            }
            "max_keepalive" => {
                let n = number_of(value)?.clamp(0, i64::from(u16::MAX)) as u64;
                set(&mut self.root, "mqtt5.max_keep_alive", number(n));
                self.note(at, format!("max_keepalive {value} -> mqtt5.max_keep_alive: MQTT 5 clients get it as Server Keep Alive; Mosquitto also refuses 3.1.1 clients asking for more (CONNACK 0x02), this broker accepts them"));
            }
            "retain_available" => {
                let on = bool_of(value)?;
                set(&mut self.root, "limits.retain_available", Value::Bool(on));
            }
            "allow_zero_length_clientid" => {
                if !bool_of(value)? {
                    self.note(at, "allow_zero_length_clientid false: clients with an empty id and clean session get an assigned id [MQTT-3.1.3-6]".into());
                }
            }
            "sys_interval" => {
                let n = number_of(value)?;
                set(&mut self.root, "server.sys_interval", string(&format!("{}s", n.max(0))));
            }
            "log_type" => self.log_types.push(value.to_owned()),
            "log_dest" => {
                let mut parts = value.splitn(2, char::is_whitespace);
                match (parts.next().unwrap_or(""), parts.next().map(str::trim)) {
                    ("file", Some(file)) => {
                        self.path_note(at, file);
                        set(&mut self.root, "log.file", string(file));
                    }
                    ("syslog", _) => set(&mut self.root, "log.syslog", Value::Bool(true)),
                    ("stderr", _) => {}
                    ("stdout", _) => self.note(at, "log_dest stdout: the log goes to stderr (or log.file)".into()),
                    ("topic", _) => self.note(at, "log_dest topic: the log is not published on $SYS/broker/log; use the admin event stream or log.file".into()),
                    ("dlt", _) => self.note(at, "log_dest dlt is not supported".into()),
                    ("none", _) => set(&mut self.root, "log.level", string("off")),
                    (other, _) => return Err(invalid(format!("unknown log destination `{other}`"))),
                }
            }
            "user" => self.note(at, format!("user {value}: run the broker as that user (the systemd unit's User=, examples/mqtt-broker.service)")),
            "pid_file" => self.note(at, format!("pid_file {value}: pass --pid-file {value} on the command line")),
            "include_dir" => {
                let dir = Path::new(value);
                let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
                    Ok(entries) => entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                        .collect(),
                    Err(e) => {
                        self.note(at, format!("include_dir {value}: cannot read it ({e}); nothing included"));
                        Vec::new()
                    }
                };
                // Mosquitto reads them in alphabetical order.
                files.sort();
                let current = self.current;
                for f in files {
                    self.read_file(&f)?;
                }
                self.current = current;
            }
            other => match unsupported(other) {
                Some(why) => self.note(at, format!("{other} is not imported: {why}")),
                None => self.note(at, format!("{other} is not imported: unknown option")),
            },
        }
        Ok(())
    }

    /// One option of a `connection` block, into `bridges[i]`.
    fn bridge_option(
        &mut self,
        i: usize,
        option: &str,
        value: &str,
        at: &str,
    ) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: PathBuf::from(at),
            key: option.to_owned(),
            reason,
        };
        let bool_of = |v: &str| -> Result<bool, ConfigError> {
            parse_bool(v).ok_or_else(|| invalid(format!("`{v}` is not true or false")))
        };
        let secs_of = |v: &str| -> Result<u64, ConfigError> {
            v.parse::<u64>()
                .map_err(|_| invalid(format!("`{v}` is not a number of seconds")))
        };
        let name = self.bridges[i]
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut note = None;
        let b = &mut self.bridges[i];
        match option {
            "address" | "addresses" => {
                // Mosquitto's default port; several addresses are tried in order.
                let list = value
                    .split_whitespace()
                    .map(|a| {
                        if crate::config::bridges::split_host_port(a).is_some() {
                            string(a)
                        } else {
                            string(&format!("{a}:1883"))
                        }
                    })
                    .collect();
                set(b, "addresses", Value::Sequence(list));
            }
            "round_robin" => set(b, "round_robin", Value::Bool(bool_of(value)?)),
            "bridge_protocol_version" => {
                let v = match value {
                    "mqttv50" => "5",
                    "mqttv311" => "3.1.1",
                    "mqttv31" => {
                        note =
                            Some("MQTT 3.1 bridges are not offered: imported as 3.1.1".to_owned());
                        "3.1.1"
                    }
                    other => return Err(invalid(format!("unknown version `{other}`"))),
                };
                set(b, "protocol", string(v));
            }
            "remote_clientid" | "clientid" => set(b, "client_id", string(value)),
            "remote_username" | "username" => set(b, "username", string(value)),
            "remote_password" | "password" => set(b, "password", string(value)),
            "local_clientid" => set(b, "local_client_id", string(value)),
            "local_username" => set(b, "local_username", string(value)),
            "local_password" => set(b, "local_password", string(value)),
            "cleansession" => set(b, "clean_session", Value::Bool(bool_of(value)?)),
            "keepalive_interval" => {
                set(b, "keep_alive", string(&format!("{}s", secs_of(value)?)));
            }
            "try_private" => set(b, "try_private", Value::Bool(bool_of(value)?)),
            "notifications" => set(b, "notifications", Value::Bool(bool_of(value)?)),
            "notification_topic" => set(b, "notification_topic", string(value)),
            "restart_timeout" => {
                // `constant` or `base cap` (Mosquitto's backoff with jitter).
                let mut parts = value.split_whitespace();
                let base = secs_of(parts.next().unwrap_or(""))?.max(1);
                let cap = match parts.next() {
                    Some(c) => secs_of(c)?.max(base),
                    None => base,
                };
                set(b, "reconnect_min", string(&format!("{base}s")));
                set(b, "reconnect_max", string(&format!("{cap}s")));
            }
            "topic" => {
                let words = split_quoted(value);
                let pattern = words.first().cloned().unwrap_or_default();
                let mut t = Mapping::new();
                set(&mut t, "pattern", string(&pattern));
                if let Some(d) = words.get(1) {
                    if !matches!(d.as_str(), "in" | "out" | "both") {
                        return Err(invalid(format!("direction `{d}` is not in, out or both")));
                    }
                    set(&mut t, "direction", string(d));
                }
                if let Some(q) = words.get(2) {
                    let q = q
                        .parse::<u64>()
                        .ok()
                        .filter(|q| *q <= 2)
                        .ok_or_else(|| invalid(format!("QoS `{q}` is not 0, 1 or 2")))?;
                    set(&mut t, "qos", number(q));
                }
                for (key, w) in [
                    ("local_prefix", words.get(3)),
                    ("remote_prefix", words.get(4)),
                ] {
                    if let Some(w) = w.filter(|w| !w.is_empty()) {
                        set(&mut t, key, string(w));
                    }
                }
                if let Some(Value::Sequence(topics)) = b.get_mut("topics") {
                    topics.push(Value::Mapping(t));
                }
            }
            "bridge_cafile" => set(b, "tls.ca_file", string(value)),
            "bridge_certfile" => set(b, "tls.cert_file", string(value)),
            "bridge_keyfile" => set(b, "tls.key_file", string(value)),
            "bridge_alpn" => set(b, "tls.alpn", Value::Sequence(vec![string(value)])),
            "bridge_capath" => {
                set(b, "tls.alpn", Value::Sequence(Vec::new()));
                note = Some(
                    "bridge_capath: the system's CA certificates are used (no tls.ca_file)".into(),
                );
            }
            "start_type" if value == "automatic" => {}
            "bridge_attempt_unsubscribe" | "bridge_outgoing_retain" | "local_cleansession" => {
                note = Some(format!(
                    "{option} is not imported: the bridge keeps Mosquitto's default behaviour"
                ));
            }
            other => {
                note = Some(format!(
                    "{other} {value} is not imported: no equivalent for bridges here"
                ));
            }
        }
        if let Some(n) = note {
            self.note(at, format!("bridge {name}: {n}"));
        }
        Ok(())
    }

    fn path_note(&mut self, at: &str, path: &str) {
        if Path::new(path).is_relative() {
            self.note(at, format!("relative path `{path}`: Mosquitto reads it from its working directory, this broker from the directory of the YAML file; make it absolute if they differ"));
        }
    }

    fn finish(mut self, source: &Path) -> Result<Imported, ConfigError> {
        let local_only = self.listeners.is_empty() && self.default_listener.is_none();
        let mut listeners = Vec::new();
        if local_only {
            // Mosquitto 2 without a listener: local only mode, anonymous clients allowed.
            self.notes.push(format!(
                "{}: no listener configured: Mosquitto runs in local only mode (127.0.0.1:1883, anonymous allowed); imported as that",
                source.display()
            ));
            listeners.push(Listener {
                port: 1883,
                address: Some("127.0.0.1".into()),
                at: "local only mode".into(),
                ..Default::default()
            });
            if self.allow_anonymous.is_none() {
                self.allow_anonymous = Some(true);
            }
        }
        listeners.extend(self.default_listener.take());
        listeners.append(&mut self.listeners);
        // Mosquitto 2 refuses anonymous clients once a listener is configured.
        let anonymous = self.allow_anonymous.unwrap_or(false);
        set(
            &mut self.root,
            "security.allow_anonymous",
            Value::Bool(anonymous),
        );

        let mut seq = Vec::new();
        for (i, l) in listeners.iter().enumerate() {
            let address = match l.address.as_deref() {
                None => "0.0.0.0".to_owned(),
                Some(a) if a.contains(':') && !a.starts_with('[') => format!("[{a}]"),
                Some("localhost") => "127.0.0.1".to_owned(),
                Some(a) => a.to_owned(),
            };
            if l.address.is_none() {
                self.notes.push(format!("{}: listener {} without an address: bound on 0.0.0.0 (IPv4); Mosquitto also binds IPv6 — add a listener on [::]:{} for it", l.at, l.port, l.port));
            }
            let tls = l.cert_file.is_some() || l.key_file.is_some();
            let protocol = match (l.websockets, tls) {
                (false, false) => "tcp",
                (false, true) => "tls",
                (true, false) => "ws",
                (true, true) => "wss",
            };
            let mut m = Mapping::new();
            set(&mut m, "name", string(&format!("{protocol}-{}", l.port)));
            set(&mut m, "bind", string(&format!("{address}:{}", l.port)));
            set(&mut m, "protocol", string(protocol));
            for (key, v) in [("cert_file", &l.cert_file), ("key_file", &l.key_file)] {
                if let Some(v) = v {
                    set(&mut m, key, string(v));
                }
            }
            if let Some(ca) = &l.ca_file {
                if tls {
                    set(&mut m, "client_ca_file", string(ca));
                }
            }
            if l.require_certificate {
                set(&mut m, "require_client_cert", Value::Bool(true));
            }
            if l.use_identity_as_username {
                set(&mut m, "use_identity_as_username", Value::Bool(true));
            }
            if let Some(n) = l.max_connections.filter(|n| *n >= 0) {
                set(&mut m, "max_connections", number(n as u64));
            }
            if tls && (l.cert_file.is_none() || l.key_file.is_none()) {
                self.notes.push(format!(
                    "{}: listener {} has only one of certfile and keyfile; both are needed for TLS",
                    l.at, l.port
                ));
            }
            if l.ca_file.is_some() && !tls {
                self.notes.push(format!(
                    "{}: cafile on a listener without TLS is ignored",
                    l.at
                ));
            }
            let _ = i;
            seq.push(Value::Mapping(m));
        }
        set(&mut self.root, "listeners", Value::Sequence(seq));

        if !self.bridges.is_empty() {
            let list = std::mem::take(&mut self.bridges)
                .into_iter()
                .map(Value::Mapping)
                .collect();
            set(&mut self.root, "bridges", Value::Sequence(list));
        }
        if !self.log_types.is_empty() {
            // The most verbose type wins.
            let rank = |t: &str| match t {
                "all" | "debug" => 4,
                "information" | "notice" | "subscribe" | "unsubscribe" | "websockets" => 3,
                "warning" => 2,
                "error" => 1,
                _ => 0,
            };
            let level = match self.log_types.iter().map(|t| rank(t)).max().unwrap_or(0) {
                4 => "debug",
                3 => "info",
                2 => "warn",
                1 => "error",
                _ => "off",
            };
            set(&mut self.root, "log.level", string(level));
        }
        let yaml = serde_yaml_ng::to_string(&Value::Mapping(self.root)).map_err(|e| {
            ConfigError::Parse {
                path: source.to_owned(),
                message: e.to_string(),
            }
        })?;
        // What is printed must load; relative paths are left as written.
        let config = Config::parse(&yaml, Path::new("<imported>"))?;
        Ok(Imported {
            yaml,
            config,
            notes: self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(text: &str) -> Imported {
        import_text(text, Path::new("mosquitto.conf")).expect("imports")
    }

    #[test]
    fn listeners_tls_websockets_and_security() {
        let i = import(
            "listener 1883\nlistener 8883 127.0.0.1\ncertfile /c.pem\nkeyfile /k.pem\ncafile /ca.pem\nrequire_certificate true\nuse_identity_as_username true\nlistener 9001\nprotocol websockets\nmax_connections 10\nallow_anonymous false\npassword_file /etc/mosquitto/passwd\nacl_file /etc/mosquitto/acl\n",
        );
        let l = &i.config.listeners;
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].bind.to_string(), "0.0.0.0:1883");
        assert_eq!(l[1].protocol, crate::model::TransportKind::Tls);
        assert_eq!(l[1].bind.to_string(), "127.0.0.1:8883");
        assert!(l[1].require_client_cert && l[1].use_identity_as_username);
        assert_eq!(l[1].client_ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(l[2].protocol, crate::model::TransportKind::Ws);
        assert_eq!(l[2].max_connections, Some(10));
        assert!(!i.config.security.allow_anonymous);
        assert_eq!(
            i.config.security.password_file.as_deref(),
            Some(Path::new("/etc/mosquitto/passwd"))
        );
        assert!(i.notes.iter().any(|n| n.contains("IPv6")), "{:?}", i.notes);
    }

    #[test]
    fn no_listener_is_local_only_mode_with_anonymous_clients() {
        let i = import("persistence true\npersistence_location /var/lib/mosquitto/\n");
        assert_eq!(i.config.listeners[0].bind.to_string(), "127.0.0.1:1883");
        assert!(i.config.security.allow_anonymous);
        assert_eq!(
            i.config.persistence.storage_type,
            crate::config::StorageType::File
        );
    }

    #[test]
    fn limits_logging_and_durations() {
        let i = import(
            "listener 1883 127.0.0.1\nmax_queued_messages 200\nmax_inflight_messages 5\nmax_queued_bytes 1000000\nqueue_qos0_messages true\nmax_packet_size 4096\nmax_keepalive 120\nretain_available false\nsys_interval 30\npersistent_client_expiration 2d\nlog_type error\nlog_type warning\nlog_type information\nlog_dest syslog\nlog_dest file /var/log/mqtt.log\n",
        );
        let c = &i.config;
        assert_eq!(c.performance.message_queue_limit, 200);
        assert_eq!(c.performance.inflight_window_size, 5);
        assert_eq!(c.limits.max_queued_bytes, 1_000_000);
        assert!(c.performance.queue_qos0_offline);
        assert_eq!(c.server.max_packet_size, 4096);
        assert!(i.notes.iter().any(|n| n.contains("max_keepalive 120")));
        assert_eq!(c.mqtt5.max_keep_alive, 120);
        assert!(!c.limits.retain_available);
        assert_eq!(c.server.sys_interval.get().as_secs(), 30);
        assert_eq!(c.persistence.session_expiry.get().as_secs(), 2 * 86_400);
        assert_eq!(c.log.level, "info");
        assert!(c.log.syslog);
        assert_eq!(c.log.file.as_deref(), Some(Path::new("/var/log/mqtt.log")));
    }

    #[test]
    fn every_option_not_mapped_is_noted_with_a_reason() {
        let i = import(
            "listener 1883\nuser mosquitto\npid_file /run/m.pid\ncapath /etc/ssl/certs\nauth_plugin /usr/lib/x.so\nfrobnicate yes\nconnection cloud\naddress broker.example.com:1883\ntopic # out 1\n",
        );
        for needle in [
            "user mosquitto",
            "--pid-file",
            "capath",
            "auth_plugin",
            "frobnicate is not imported: unknown option",
        ] {
            assert!(
                i.notes.iter().any(|n| n.contains(needle)),
                "{needle}: {:#?}",
                i.notes
            );
        }
        assert_eq!(i.config.bridges.len(), 1);
    }

    /// A `connection` block becomes a `bridges:` entry with Mosquitto's meanings.
    #[test]
    fn bridge_connection_blocks_are_imported() {
        let i = import(
            "listener 1883\nconnection cloud\naddress broker.example.com:8883 backup.example.com\nround_robin true\nbridge_protocol_version mqttv50\nremote_clientid edge-7\nremote_username edge\nremote_password s3cret\ncleansession false\nkeepalive_interval 30\nrestart_timeout 2 60\nbridge_cafile /etc/ssl/ca.pem\nbridge_certfile /etc/edge.pem\nbridge_keyfile /etc/edge.key\ntopic sensors/# out 1 \"\" site7/\ntopic \"\" in 2 cmd/local cmd/remote\ntopic # both\nbridge_outgoing_retain false\n",
        );
        let b = &i.config.bridges[0];
        assert_eq!(b.name, "cloud");
        assert_eq!(
            b.addresses,
            vec!["broker.example.com:8883", "backup.example.com:1883"]
        );
        assert!(b.round_robin);
        assert_eq!(b.protocol, crate::config::BridgeProtocol::V5);
        assert_eq!(b.client_id.as_deref(), Some("edge-7"));
        assert_eq!(b.password.as_deref(), Some("s3cret"));
        assert_eq!(b.keep_alive.get().as_secs(), 30);
        assert_eq!(b.reconnect_min.get().as_secs(), 2);
        assert_eq!(b.reconnect_max.get().as_secs(), 60);
        let tls = b.tls.as_ref().expect("TLS from bridge_cafile");
        assert_eq!(tls.cert_file.as_deref(), Some(Path::new("/etc/edge.pem")));
        assert_eq!(b.topics.len(), 3);
        assert_eq!(b.topics[0].remote_filter(), "site7/sensors/#");
        assert_eq!(b.topics[0].local_filter(), "sensors/#");
        assert_eq!(b.topics[1].pattern, "");
        assert_eq!(b.topics[1].local_prefix, "cmd/local");
        assert_eq!(b.topics[1].qos, 2);
        assert_eq!(b.topics[2].direction, crate::config::Direction::Both);
        assert!(
            i.notes
                .iter()
                .any(|n| n.contains("bridge cloud: bridge_outgoing_retain")),
            "{:#?}",
            i.notes
        );
        assert!(i.yaml.contains("s3cret"), "the password is carried over");
    }

    #[test]
    fn bad_values_name_the_line_and_option() {
        let e = import_text("listener abc\n", Path::new("m.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.conf:1") && e.contains("listener"), "{e}");
        let e = import_text("persistent_client_expiration 5x\n", Path::new("m.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("persistent_client_expiration"), "{e}");
    }
}
