//! The `cluster:` section: several broker nodes acting as one over NATS JetStream (which
//! stores and replicates; we never run consensus of our own), and the checks that refuse an
//! invalid one with the key named. Without the section the broker is a single node and
//! needs no NATS.

use super::ConfigDuration;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `cluster:`: where NATS is and how this node names what it creates there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port` or `tls://host:port`); the client reconnects
    /// to any of them.
    pub servers: Vec<String>,
    /// Prefix of every subject, stream and bucket the cluster uses, so that several
    /// clusters can share one NATS deployment (letters, digits, `-`, `_`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Replicas of each JetStream stream and bucket (1 to 5; 3 survives one NATS server
    /// lost).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// User name on NATS.
    #[serde(default)]
    pub username: Option<String>,
    /// Password on NATS.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// Token on NATS (instead of a user name and password).
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// A NATS `.creds` file (JWT + NKey), instead of the above.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// CA certificate (PEM) that NATS servers' certificates chain to; implies TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for NATS servers that require one.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// How long a QoS 1/2 PUBLISH waits for JetStream to store it before the publisher's
    /// connection is closed without an acknowledgement (it sends again).
    #[serde(default = "default_publish_timeout")]
    pub publish_timeout: ConfigDuration,
    /// How long JetStream keeps a QoS 1/2 message after storing it (nodes read it within
    /// milliseconds; the age bounds the stream's disk).
    #[serde(default = "default_message_max_age")]
    pub message_max_age: ConfigDuration,
    /// How long a node cut off from NATS keeps its clients: then it disconnects them all
    /// (MQTT 5: reason 0x9C, use another server) so that they reconnect to a node that is
    /// part of the cluster. Meanwhile it refuses new clients and acknowledges no QoS 1/2
    /// message.
    #[serde(default = "default_isolation_timeout")]
    pub isolation_timeout: ConfigDuration,
    /// How long to wait for NATS at start before giving up (the node does not serve
    /// without its cluster).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
}

fn default_prefix() -> String {
    "mqtt".into()
}

fn default_replicas() -> usize {
    3
}

fn default_publish_timeout() -> ConfigDuration {
    ConfigDuration::secs(5)
}

fn default_message_max_age() -> ConfigDuration {
    ConfigDuration::secs(3600)
}

fn default_isolation_timeout() -> ConfigDuration {
    ConfigDuration::secs(5)
}

fn default_connect_timeout() -> ConfigDuration {
    ConfigDuration::secs(30)
}

impl ClusterConfig {
    /// Checks what types cannot say; `Err((key, reason))` names the key under `cluster.`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((format!("cluster.{key}"), reason.to_owned()));
        if self.servers.is_empty() {
            return bad("servers", "must list at least one NATS server URL");
        }
        for (i, s) in self.servers.iter().enumerate() {
            if let Err(e) = s.parse::<async_nats::ServerAddr>() {
                return bad(
                    &format!("servers[{i}]"),
                    &format!("`{s}` is not a NATS URL: {e}"),
                );
            }
        }
        if self.prefix.is_empty()
            || !self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(
                "prefix",
                "must be non-empty letters, digits, `-` or `_` (it names NATS subjects, streams and buckets)",
            );
        }
        if !(1..=5).contains(&self.replicas) {
            return bad("replicas", "must be 1 to 5 (JetStream's limit)");
        }
        if self.password.is_some() && self.username.is_none() {
            return bad("password", "needs `username`");
        }
        let methods = [
            self.username.is_some(),
            self.token.is_some(),
            self.credentials.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return bad(
                "credentials",
                "use one of `username`/`password`, `token` or `credentials`",
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert", "`tls_cert` and `tls_key` go together");
        }
        for (key, path) in [
            ("credentials", &self.credentials),
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ] {
            if let Some(p) = path {
                if let Err(e) = std::fs::metadata(p) {
                    return bad(key, &format!("cannot read {}: {e}", p.display()));
                }
            }
        }
        if self.publish_timeout.is_zero() {
            return bad("publish_timeout", "must be more than 0");
        }
        if self.message_max_age.get() < std::time::Duration::from_secs(1) {
            return bad("message_max_age", "must be at least 1s");
        }
        Ok(())
    }

    /// The first key whose value differs from `other`'s: none of them changes while the
    /// node runs (it would mean another cluster, or other streams), so a reload that
    /// changes one is refused with that key named. `publish_timeout` and
    /// `isolation_timeout` change live.
    pub fn changed_key(&self, other: &ClusterConfig) -> Option<&'static str> {
        let keys: [(&'static str, bool); 12] = [
            ("servers", self.servers != other.servers),
            ("prefix", self.prefix != other.prefix),
            ("replicas", self.replicas != other.replicas),
            ("username", self.username != other.username),
            ("password", self.password != other.password),
            ("token", self.token != other.token),
            ("credentials", self.credentials != other.credentials),
            ("tls_ca", self.tls_ca != other.tls_ca),
            ("tls_cert", self.tls_cert != other.tls_cert),
            ("tls_key", self.tls_key != other.tls_key),
            (
                "message_max_age",
                self.message_max_age != other.message_max_age,
            ),
            (
                "connect_timeout",
                self.connect_timeout != other.connect_timeout,
            ),
        ];
        keys.into_iter()
            .find(|(_, changed)| *changed)
            .map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> ClusterConfig {
        serde_yaml_ng::from_str(yaml).expect("valid YAML")
    }

    #[test]
    fn defaults_fill_everything_but_the_servers() {
        let c = parse("servers: [\"nats://127.0.0.1:4222\"]");
        assert_eq!(c.prefix, "mqtt");
        assert_eq!(c.replicas, 3);
        assert_eq!(c.publish_timeout, ConfigDuration::secs(5));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn invalid_entries_are_refused_with_the_key_named() {
        let cases = [
            ("servers: []", "cluster.servers"),
            (
                "servers: [\"nats://a:1\"]\nprefix: \"a.b\"",
                "cluster.prefix",
            ),
            ("servers: [\"nats://a:1\"]\nreplicas: 7", "cluster.replicas"),
            ("servers: [\"nats://a:1\"]\npassword: x", "cluster.password"),
            (
                "servers: [\"nats://a:1\"]\nusername: u\ntoken: t",
                "cluster.credentials",
            ),
            (
                "servers: [\"nats://a:1\"]\ntls_ca: /nonexistent/ca.pem",
                "cluster.tls_ca",
            ),
            (
                "servers: [\"nats://a:1\"]\npublish_timeout: 0",
                "cluster.publish_timeout",
            ),
        ];
        for (yaml, key) in cases {
            let err = parse(yaml).validate().expect_err(yaml);
            assert_eq!(err.0, key, "{yaml}: {}", err.1);
        }
    }

    #[test]
    fn a_changed_key_is_named_and_the_publish_timeout_may_change() {
        let a = parse("servers: [\"nats://a:1\"]");
        let mut b = a.clone();
        b.publish_timeout = ConfigDuration::secs(9);
        assert_eq!(a.changed_key(&b), None);
        b.replicas = 1;
        assert_eq!(a.changed_key(&b), Some("replicas"));
    }
}
