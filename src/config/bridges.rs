//! The `bridges:` section: connections to remote MQTT brokers that forward topics both
//! ways (Mosquitto's `connection` blocks), and the checks that refuse an invalid one with
//! its name and key.

use super::{ByteSize, ConfigDuration};
use crate::protocol::{topic, QoS};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One `bridges:` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Names the bridge in logs, metrics, the admin API and the state topic.
    pub name: String,
    /// Remote brokers as `host:port`, tried in order (Mosquitto's `address`).
    pub addresses: Vec<String>,
    /// Start each reconnect with the address after the last one used instead of the first.
    #[serde(default)]
    pub round_robin: bool,
    /// MQTT version spoken to the remote: `3.1.1` (default) or `5`.
    #[serde(default)]
    pub protocol: BridgeProtocol,
    /// Client id on the remote (default `<node name>.<bridge name>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Clean session on the remote (default false: the remote keeps what the bridge
    /// subscribed to and queues for it while the link is down).
    #[serde(default)]
    pub clean_session: bool,
    /// User name on the remote.
    #[serde(default)]
    pub username: Option<String>,
    /// Password on the remote.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// Keep-alive on the remote connection.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: ConfigDuration,
    /// With 3.1.1, announce the bridge to the remote with protocol level 0x84 (Mosquitto's
    /// `try_private`) so that it does not send the bridge's own messages back; retried
    /// without when the remote refuses it.
    #[serde(default = "yes")]
    pub try_private: bool,
    /// TLS to the remote; plain TCP when absent.
    #[serde(default)]
    pub tls: Option<BridgeTls>,
    /// What to forward, in which direction.
    pub topics: Vec<TopicRule>,
    /// Publish the link state, retained, `1` when connected and `0` when not (locally, and
    /// on the remote as the bridge's will and on connect).
    #[serde(default = "yes")]
    pub notifications: bool,
    /// Where the state is published (default `$SYS/broker/connection/<client id>/state`,
    /// as Mosquitto).
    #[serde(default)]
    pub notification_topic: Option<String>,
    /// The bridge's own client id on this broker: ACL rules and plugins see it.
    #[serde(default)]
    pub local_client_id: Option<String>,
    /// The bridge's user name on this broker (ACL rules, plugins).
    #[serde(default)]
    pub local_username: Option<String>,
    /// The bridge's password on this broker, when authentication requires one.
    #[serde(default, skip_serializing)]
    pub local_password: Option<String>,
    /// First reconnect delay; doubles per failure up to `reconnect_max`, with jitter.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: ConfigDuration,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: ConfigDuration,
    /// QoS 1/2 messages sent to the remote and not yet acknowledged by it; the rest wait
    /// in the bridge's session on this broker (bounded by its queue limits, persisted with
    /// persistence on). An MQTT 5 remote's Receive Maximum lowers it. Keep it at most the
    /// remote's own limit: Mosquitto (`max_inflight_messages`, default 20) silently drops
    /// QoS 2 messages beyond it from 3.1.1 clients.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// QoS 1/2 messages the bridge's session on this broker queues while the remote is
    /// unreachable (instead of `performance.message_queue_limit`); beyond it new ones are
    /// dropped and counted (`mqtt_messages_dropped_total{reason="queue_full"}`).
    #[serde(default = "default_queue_max")]
    pub queue_max: usize,
    /// Payload bytes it queues (instead of `limits.max_queued_bytes`).
    #[serde(default = "default_queue_max_bytes")]
    pub queue_max_bytes: ByteSize,
}

/// MQTT version of a bridge's remote connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BridgeProtocol {
    /// MQTT 3.1.1.
    #[default]
    #[serde(rename = "3.1.1", alias = "mqttv311")]
    V311,
    /// MQTT 5.0.
    #[serde(rename = "5", alias = "5.0", alias = "mqttv50")]
    V5,
}

/// TLS settings of a bridge's remote connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BridgeTls {
    /// CA certificates (PEM) that sign the remote's certificate; the system's roots when
    /// absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for remotes that require one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name checked against the certificate and sent as SNI (default: the address's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// ALPN protocols offered (e.g. `x-amzn-mqtt-ca` for AWS IoT on 443).
    #[serde(default)]
    pub alpn: Vec<String>,
}

/// Which way a topic rule forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From this broker to the remote.
    #[default]
    Out,
    /// From the remote to this broker.
    In,
    /// Both ways.
    Both,
}

impl Direction {
    /// Whether messages go to the remote.
    pub fn outbound(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
    /// Whether messages come from the remote.
    pub fn inbound(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One `topics:` entry, Mosquitto's `topic <pattern> [out|in|both [qos [local remote]]]`:
/// the local topic is `local_prefix + pattern`, the remote one `remote_prefix + pattern`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// Topic filter (may be empty when a prefix names the whole topic).
    pub pattern: String,
    /// Which way.
    #[serde(default)]
    pub direction: Direction,
    /// QoS of the bridge's subscriptions: forwarded messages get at most this QoS.
    #[serde(default)]
    pub qos: u8,
    /// Prepended to the pattern on this broker.
    #[serde(default)]
    pub local_prefix: String,
    /// Prepended to the pattern on the remote.
    #[serde(default)]
    pub remote_prefix: String,
}

impl TopicRule {
    /// The filter subscribed to on this broker.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }
    /// The filter subscribed to on the remote.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
    /// The subscription QoS.
    pub fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce)
    }
}

fn yes() -> bool {
    true
}
fn default_keep_alive() -> ConfigDuration {
    ConfigDuration::secs(60)
}
fn default_reconnect_min() -> ConfigDuration {
    ConfigDuration::secs(1)
}
fn default_reconnect_max() -> ConfigDuration {
    ConfigDuration::secs(60)
}
fn default_queue_max() -> usize {
    100_000
}
fn default_queue_max_bytes() -> ByteSize {
    ByteSize(256 * 1024 * 1024)
}
fn default_max_inflight() -> u16 {
    20
}

impl BridgeConfig {
    /// A bridge named `name` to `address` with no topics yet (embedding, tests).
    pub fn new(name: &str, address: &str) -> Self {
        BridgeConfig {
            name: name.to_owned(),
            addresses: vec![address.to_owned()],
            round_robin: false,
            protocol: BridgeProtocol::V311,
            client_id: None,
            clean_session: false,
            username: None,
            password: None,
            keep_alive: default_keep_alive(),
            try_private: true,
            tls: None,
            topics: Vec::new(),
            notifications: true,
            notification_topic: None,
            local_client_id: None,
            local_username: None,
            local_password: None,
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            max_inflight: default_max_inflight(),
            queue_max: default_queue_max(),
            queue_max_bytes: default_queue_max_bytes(),
        }
    }

    /// The client id used on the remote.
    pub fn remote_client_id(&self, node: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("{node}.{}", self.name))
    }

    /// The client id used on this broker.
    pub fn local_id(&self) -> String {
        self.local_client_id
            .clone()
            .unwrap_or_else(|| format!("$bridge/{}", self.name))
    }

    /// The state topic.
    pub fn state_topic(&self, node: &str) -> String {
        self.notification_topic.clone().unwrap_or_else(|| {
            format!(
                "$SYS/broker/connection/{}/state",
                self.remote_client_id(node)
            )
        })
    }

    /// Checks values that types alone cannot express; `Err` is (key suffix, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, r: String| Err((k.to_owned(), r));
        if self.name.trim().is_empty() || self.name.contains(['/', '+', '#']) {
            return err("name", "must be non-empty without `/`, `+` or `#`".into());
        }
        if self.addresses.is_empty() {
            return err("addresses", "must list at least one host:port".into());
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if split_host_port(a).is_none() {
                return err(
                    &format!("addresses[{i}]"),
                    format!("`{a}` is not host:port (IPv6 as [::1]:1883)"),
                );
            }
        }
        if self.topics.is_empty() {
            return err("topics", "must list at least one topic rule".into());
        }
        for (i, t) in self.topics.iter().enumerate() {
            let key = |k: &str| format!("topics[{i}].{k}");
            if t.qos > 2 {
                return err(&key("qos"), "must be 0, 1 or 2".into());
            }
            if t.pattern.is_empty() && t.local_prefix.is_empty() && t.remote_prefix.is_empty() {
                return err(
                    &key("pattern"),
                    "may be empty only when a prefix names the topic".into(),
                );
            }
            for (k, prefix) in [
                ("local_prefix", &t.local_prefix),
                ("remote_prefix", &t.remote_prefix),
            ] {
                if prefix.contains(['+', '#']) {
                    return err(&key(k), "must not contain wildcards".into());
                }
            }
            for (k, filter) in [
                ("pattern", t.local_filter()),
                ("pattern", t.remote_filter()),
            ] {
                if let Err(e) = topic::validate_topic_filter(&filter) {
                    return err(
                        &key(k),
                        format!("`{filter}` is not a valid topic filter: {e}"),
                    );
                }
            }
        }
        if self.keep_alive.get() > std::time::Duration::from_secs(65535) {
            return err("keep_alive", "must be at most 65535s".into());
        }
        if self.reconnect_min.is_zero() {
            return err("reconnect_min", "must be greater than 0".into());
        }
        if self.reconnect_max < self.reconnect_min {
            return err("reconnect_max", "must be at least reconnect_min".into());
        }
        if self.max_inflight == 0 {
            return err("max_inflight", "must be at least 1".into());
        }
        if self.queue_max == 0 {
            return err("queue_max", "must be at least 1".into());
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return err(
                    "tls",
                    "cert_file and key_file go together (a client certificate needs its key)"
                        .into(),
                );
            }
        }
        if let Some(t) = &self.notification_topic {
            if topic::validate_topic_name(t).is_err() {
                return err(
                    "notification_topic",
                    format!("`{t}` is not a valid topic name"),
                );
            }
        }
        Ok(())
    }
}

/// Splits `host:port` (`[v6]:port`); `None` when malformed.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || (host.contains(':') && !s.starts_with('[')) {
        return None;
    }
    Some((host.to_owned(), port))
}

/// Validates the whole `bridges:` list; `Err` is (dotted key, reason).
pub fn validate_all(bridges: &[BridgeConfig]) -> Result<(), (String, String)> {
    let mut names = std::collections::HashSet::new();
    for (i, b) in bridges.iter().enumerate() {
        let at = |key: String| format!("bridges[{i}] ({}).{key}", b.name);
        b.validate().map_err(|(key, reason)| (at(key), reason))?;
        if !names.insert(b.name.as_str()) {
            return Err((at("name".into()), format!("`{}` is used twice", b.name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, direction: Direction) -> TopicRule {
        TopicRule {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("a.example:8883"),
            Some(("a.example".into(), 8883))
        );
        assert_eq!(split_host_port("[::1]:1883"), Some(("::1".into(), 1883)));
        assert_eq!(split_host_port("::1:1883"), None);
        assert_eq!(split_host_port("host"), None);
        assert_eq!(split_host_port("host:0"), None);
    }

    #[test]
    fn an_invalid_bridge_is_named_with_its_key() {
        let mut b = BridgeConfig::new("cloud", "127.0.0.1:1883");
        b.topics.push(rule("sensors/#", Direction::Out));
        assert_eq!(validate_all(std::slice::from_ref(&b)), Ok(()));
        let mut bad = b.clone();
        bad.topics[0].qos = 3;
        let (key, _) = validate_all(&[bad]).unwrap_err();
        assert_eq!(key, "bridges[0] (cloud).topics[0].qos");
        let mut bad = b.clone();
        bad.topics[0].local_prefix = "a/+/".into();
        assert!(validate_all(&[bad]).is_err());
        let mut bad = b.clone();
        bad.addresses = vec!["nohost".into()];
        assert_eq!(
            validate_all(&[bad]).unwrap_err().0,
            "bridges[0] (cloud).addresses[0]"
        );
        assert_eq!(
            validate_all(&[b.clone(), b]).unwrap_err().0,
            "bridges[1] (cloud).name"
        );
    }
}
