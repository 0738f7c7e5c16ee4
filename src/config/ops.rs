//! The operations sections of the configuration: `admin:` (the HTTP admin API) and
//! `limits:` (per-client resource limits). Kept apart from `mod.rs` so that the schema of
//! the MQTT core and the schema of operations can change independently.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// `admin:` section: the HTTP listener for metrics, probes and the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether the admin listener runs.
    pub enabled: bool,
    /// Address of the admin listener; loopback by default so that it is not exposed.
    pub bind: SocketAddr,
    /// A file whose first line is the bearer token every endpoint but `/healthz` and
    /// `/readyz` requires. Without it the API is open to whoever can reach `bind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The user name the dashboard's live tail subscribes as: the ACL (rules, ACL file,
    /// plugins) decides what it may read, as for a device with that name.
    pub dashboard_user: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 9100)),
            token_file: None,
            dashboard_user: "dashboard".into(),
        }
    }
}

/// `limits:` section: what one client may ask of the broker. Every value is read from the
/// runtime in force, so a reload applies to new work at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Subscriptions one session may hold; a SUBSCRIBE filter beyond it gets SUBACK 0x80.
    pub max_subscriptions: usize,
    /// Longest topic name or filter in bytes. A PUBLISH beyond it closes the connection; a
    /// SUBSCRIBE filter beyond it gets 0x80.
    pub max_topic_length: usize,
    /// Most topic levels (`/`-separated parts), with the same consequences.
    pub max_topic_levels: usize,
    /// PUBLISH packets per second one client may send (0 = unlimited). Beyond it the broker
    /// stops reading that client's socket until the budget refills: nothing is dropped.
    pub publish_rate: u32,
    /// PUBLISH payload bytes per second one client may send (0 = unlimited), enforced the
    /// same way.
    pub publish_bytes_rate: u64,
    /// Payload bytes queued per session behind its inflight window (in addition to
    /// `performance.message_queue_limit`); beyond it new messages for it are dropped.
    pub max_queued_bytes: usize,
    /// Whether retained messages are supported; when false, a PUBLISH with RETAIN=1 closes
    /// the connection, as Mosquitto's `retain_available false` does for 3.1.1 clients.
    pub retain_available: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_subscriptions: 1000,
            max_topic_length: 1024,
            max_topic_levels: 32,
            publish_rate: 1000,
            publish_bytes_rate: 1024 * 1024,
            max_queued_bytes: 16 * 1024 * 1024,
            retain_available: true,
        }
    }
}

impl LimitsConfig {
    /// Range checks; returns the offending key and why.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.max_subscriptions == 0 {
            return Err(("limits.max_subscriptions", "must be at least 1"));
        }
        // A topic is a UTF-8 string with a 2-byte length prefix [MQTT-1.5.3].
        if self.max_topic_length == 0 || self.max_topic_length > 65_535 {
            return Err(("limits.max_topic_length", "must be between 1 and 65535"));
        }
        if self.max_topic_levels == 0 {
            return Err(("limits.max_topic_levels", "must be at least 1"));
        }
        if self.max_queued_bytes == 0 {
            return Err(("limits.max_queued_bytes", "must be at least 1"));
        }
        Ok(())
    }

    /// Why `topic` (a name or a filter) is beyond the topic limits, if it is.
    pub fn check_topic(&self, topic: &str) -> Option<TopicLimit> {
        if topic.len() > self.max_topic_length {
            return Some(TopicLimit::Length);
        }
        // Counting separators stops early for absurd topics instead of splitting them all.
        if topic
            .bytes()
            .filter(|b| *b == b'/')
            .nth(self.max_topic_levels.saturating_sub(1))
            .is_some()
        {
            return Some(TopicLimit::Levels);
        }
        None
    }
}

/// Which topic limit a topic crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicLimit {
    /// `limits.max_topic_length`.
    Length,
    /// `limits.max_topic_levels`.
    Levels,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_limits() {
        let l = LimitsConfig {
            max_topic_length: 10,
            max_topic_levels: 3,
            ..Default::default()
        };
        assert_eq!(l.check_topic("a/b/c"), None);
        assert_eq!(l.check_topic("a/b/c/d"), Some(TopicLimit::Levels));
        assert_eq!(l.check_topic("0123456789"), None);
        assert_eq!(l.check_topic("0123456789a"), Some(TopicLimit::Length));
        assert_eq!(l.check_topic("//"), None, "three empty levels");
        assert_eq!(l.check_topic("///"), Some(TopicLimit::Levels));
    }
}
