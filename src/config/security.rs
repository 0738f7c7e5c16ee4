//! The schema of `security:`'s inline parts: inline users and inline ACL rules, with the
//! checks that make a mistake fail at load time naming it.
//!
//! Owns only the shapes and their YAML (de)serialization; what they mean (password hashing,
//! rule evaluation) is `crate::auth`'s, which imports this module and not the other way round.

use crate::protocol::topic::validate_topic_filter;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Told to anyone who puts a plaintext `password` into the configuration.
pub const PLAINTEXT_REJECTED: &str = "plaintext passwords are not accepted; generate a hash with \
     `mqtt-broker passwd FILE USER` or `mosquitto_passwd`";

/// What the broker does when no rule decides (`security.acl_default` or similar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclDefault {
    /// Allow what no rule denies.
    Allow,
    /// Deny what no rule allows.
    Deny,
}

/// Operations an inline rule covers (`allow: publish|subscribe|all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleScope {
    /// Publishing only.
    Publish,
    /// Subscribing and receiving only.
    Subscribe,
    /// Both.
    All,
}

/// Whether an inline rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// The rule was written `allow: ...`.
    Allow,
    /// The rule was written `deny: ...`.
    Deny,
}

/// One inline rule: `{allow|deny: publish|subscribe|all, topic: FILTER, user?: NAME, client_id?: ID}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRule", into = "RawRule")]
pub struct AclRule {
    /// Allow or deny.
    pub effect: Effect,
    /// Which operations the rule covers.
    pub scope: RuleScope,
    /// Topic filter; whole levels `%c` and `%u` stand for the client id and username.
    pub topic: String,
    /// Only for this username (never for anonymous clients) when set.
    pub user: Option<String>,
    /// Only for this client id when set.
    pub client_id: Option<String>,
}

/// The YAML shape of [`AclRule`]; kept separate so that the either-allow-or-deny rule and topic
/// validity are checked at load time with a message naming the mistake.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allow: Option<RuleScope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deny: Option<RuleScope>,
    topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
}

impl TryFrom<RawRule> for AclRule {
    type Error = String;

    fn try_from(raw: RawRule) -> Result<Self, String> {
        let (effect, scope) = match (raw.allow, raw.deny) {
            (Some(s), None) => (Effect::Allow, s),
            (None, Some(s)) => (Effect::Deny, s),
            (Some(_), Some(_)) => {
                return Err(
                    "an ACL rule must have exactly one of `allow` or `deny`, not both".into(),
                )
            }
            (None, None) => return Err(
                "an ACL rule needs `allow: publish|subscribe|all` or `deny: publish|subscribe|all`"
                    .into(),
            ),
        };
        validate_topic_filter(&raw.topic)
            .map_err(|e| format!("invalid ACL topic filter `{}`: {e}", raw.topic))?;
        if raw.user.as_deref() == Some("") {
            return Err("ACL rule `user` must not be empty".into());
        }
        if raw.client_id.as_deref() == Some("") {
            return Err("ACL rule `client_id` must not be empty".into());
        }
        Ok(AclRule {
            effect,
            scope,
            topic: raw.topic,
            user: raw.user,
            client_id: raw.client_id,
        })
    }
}

impl From<AclRule> for RawRule {
    fn from(r: AclRule) -> Self {
        let (allow, deny) = match r.effect {
            Effect::Allow => (Some(r.scope), None),
            Effect::Deny => (None, Some(r.scope)),
        };
        RawRule {
            allow,
            deny,
            topic: r.topic,
            user: r.user,
            client_id: r.client_id,
        }
    }
}

/// A user given inline in the configuration (`security.users: [{username, password_hash}]`).
///
/// Deserialization refuses unknown keys, and refuses a `password` key with a message saying
/// how to produce a hash, so plaintext never silently ends up in a config file.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct UserConfig {
    /// Login name.
    pub username: String,
    /// `$7$...` or `$6$...` as written by `mosquitto_passwd` or `mqtt-broker passwd`.
    pub password_hash: String,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

// Hand-written instead of derived so that a `password` key gets its own explanatory error
// (a derived `deny_unknown_fields` would only say "unknown field").
impl<'de> Deserialize<'de> for UserConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const FIELDS: &[&str] = &["username", "password_hash"];

        struct UserVisitor;

        impl<'de> Visitor<'de> for UserVisitor {
            type Value = UserConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a user with `username` and `password_hash`")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UserConfig, A::Error> {
                let mut username: Option<String> = None;
                let mut password_hash: Option<String> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "username" => {
                            if username.is_some() {
                                return Err(de::Error::duplicate_field("username"));
                            }
                            username = Some(map.next_value()?);
                        }
                        "password_hash" => {
                            if password_hash.is_some() {
                                return Err(de::Error::duplicate_field("password_hash"));
                            }
                            password_hash = Some(map.next_value()?);
                        }
                        "password" => {
                            // Consume the value without keeping the plaintext anywhere.
                            let _: IgnoredAny = map.next_value()?;
                            return Err(de::Error::custom(PLAINTEXT_REJECTED));
                        }
                        other => return Err(de::Error::unknown_field(other, FIELDS)),
                    }
                }
                Ok(UserConfig {
                    username: username.ok_or_else(|| de::Error::missing_field("username"))?,
                    password_hash: password_hash
                        .ok_or_else(|| de::Error::missing_field("password_hash"))?,
                })
            }
        }

        deserializer.deserialize_struct("UserConfig", FIELDS, UserVisitor)
    }
}

/// The enhanced authentication method `security.auth_methods` may name (served by
/// `crate::auth::scram`).
pub const SCRAM_SHA_512: &str = "SCRAM-SHA-512";
