//! Topic access control: Mosquitto's `acl_file` format and the inline ACL rules of the YAML config.
//!
//! Two questions are answered for a client (username, client id):
//! - may it publish to / receive a message on a concrete topic name (`check_topic`,
//!   `decide_topic`), and
//! - may it SUBSCRIBE with a filter (`check_subscribe`, `decide_subscribe`).
//!
//! A SUBSCRIBE is granted when the filter can match *some* readable topic and is not entirely
//! inside a denied area; each message is then re-checked on delivery. So `#` can be granted to
//! a client that may only read `sensors/#`, and it will only ever receive `sensors/...`.
//! Mosquitto 2.x itself grants every SUBSCRIBE and relies on the delivery check alone; refusing
//! filters that can never deliver anything gives clients a useful SUBACK failure instead.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::config::security::{AclDefault, AclRule, Effect, RuleScope};
use crate::protocol::topic::{filter_matches, validate_topic_filter, validate_topic_name};

/// Kind of access asked for in an ACL file check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Subscribe to, and have messages delivered from, a topic.
    Read,
    /// Publish to a topic.
    Write,
}

/// Errors from loading or parsing an ACL file; they name the file, the line and the reason.
#[derive(Debug, Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A line is not acceptable.
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        /// The file (or a description of the source).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Filter algebra
// ---------------------------------------------------------------------------------------------

/// True when some topic name is matched by both valid filters `a` and `b`.
///
/// Honours [MQTT-4.7.2-1]: a wildcard in the first level never matches a `$`-name, so
/// `#` and `$SYS/#` do not overlap.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut la = a.split('/');
    let mut lb = b.split('/');
    let mut depth = 0usize;
    // Set when every common name must start with an empty level: then the parent that `#`
    // matches one level further down is the empty string, which is not a valid topic name.
    let mut first_empty = false;
    loop {
        let (x, y) = (la.next(), lb.next());
        if depth == 0 {
            if let (Some(x), Some(y)) = (x, y) {
                if dollar_vs_wildcard(x, y) || dollar_vs_wildcard(y, x) {
                    return false;
                }
            }
        }
        match (x, y) {
            (Some("#"), Some(_)) | (Some(_), Some("#")) => return true,
            // `a/#` also matches `a` itself, so it overlaps a filter ending there.
            (Some("#"), None) | (None, Some("#")) | (None, None) => {
                return !(depth == 1 && first_empty)
            }
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
        if depth == 0 {
            first_empty = x == Some("") || y == Some("");
        }
        depth += 1;
    }
}

/// True when every topic name matched by valid filter `a` is also matched by valid filter `b`.
pub fn filter_is_subset(a: &str, b: &str) -> bool {
    let mut la = a.split('/');
    let mut lb = b.split('/');
    let mut depth = 0usize;
    let mut first_empty = false;
    loop {
        let (x, y) = (la.next(), lb.next());
        if depth == 0 {
            // `$SYS/x` is not inside `#` or `+/x`: first-level wildcards skip `$`-names.
            if let (Some(x), Some(y)) = (x, y) {
                if dollar_vs_wildcard(x, y) {
                    return false;
                }
            }
        }
        match (x, y) {
            (_, Some("#")) | (None, None) => return true,
            (Some("#"), Some("+")) => {
                // `#` here also matches the parent, which `+` cannot. That only does not matter
                // when the parent would be the (invalid) empty name: then `#` ≡ `+/#`, as in
                // `#` ⊆ `+/#` and `/#` ⊆ `/+/#`.
                let no_parent = depth == 0 || (depth == 1 && first_empty);
                return no_parent && lb.next() == Some("#") && lb.next().is_none();
            }
            (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y && x != "+" => {}
            _ => return false,
        }
        if depth == 0 {
            first_empty = x == Some("");
        }
        depth += 1;
    }
}

/// `lit` is a first level naming `$`-topics and `wild` a first-level wildcard that cannot match them.
fn dollar_vs_wildcard(lit: &str, wild: &str) -> bool {
    lit.starts_with('$') && (wild == "+" || wild == "#")
}

// ---------------------------------------------------------------------------------------------
// %c / %u substitution
// ---------------------------------------------------------------------------------------------

/// A rule's topic after `%c`/`%u` substitution for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target<'a> {
    /// An ordinary filter.
    Filter(Cow<'a, str>),
    /// Matches every topic, `$`-topics included.
    Everything,
    /// Matches nothing for this client.
    Nothing,
}

impl Target<'_> {
    fn matches_name(&self, name: &str) -> bool {
        match self {
            Target::Filter(f) => filter_matches(f, name),
            Target::Everything => true,
            Target::Nothing => false,
        }
    }

    fn overlaps(&self, filter: &str) -> bool {
        match self {
            Target::Filter(f) => filters_overlap(f, filter),
            Target::Everything => true,
            Target::Nothing => false,
        }
    }

    /// Every topic `filter` can match is inside this target.
    fn contains(&self, filter: &str) -> bool {
        match self {
            Target::Filter(f) => filter_is_subset(filter, f),
            Target::Everything => true,
            Target::Nothing => false,
        }
    }
}

fn has_placeholder(topic: &str) -> bool {
    topic.contains("%c") || topic.contains("%u")
}

/// Substitutes `%c` (client id) and `%u` (username) in a rule's topic for one client.
///
/// Like Mosquitto 2.0.x, placeholders are replaced anywhere, also inside a level (`dev-%c/x`;
/// checked against mosquitto 2.0.11, whose man page says otherwise), and a rule naming `%u`
/// never applies to a client without a username.
///
/// A value containing `+`, `#` or `/`, an empty value, or one that makes the first level start
/// with `$` would turn the rule into a different filter, letting a client pick its own rights
/// (CVE-2017-7650). Mosquitto then refuses access (for `+` and `#`). Here a granting rule simply
/// does not apply, while a denying rule is widened to everything below the levels before the
/// offending one, so a client can never slip out of a deny by choosing a strange name.
fn substitute<'a>(
    topic: &'a str,
    username: Option<&str>,
    client_id: &str,
    denying: bool,
) -> Target<'a> {
    if !has_placeholder(topic) {
        return Target::Filter(Cow::Borrowed(topic));
    }
    let mut out = String::with_capacity(topic.len() + client_id.len());
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let level_start = out.len();
        let mut unsafe_value = false;
        let mut rest = level;
        while let Some(pos) = rest.find('%') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            let value = match after.as_bytes().first() {
                Some(b'c') => Some(client_id),
                Some(b'u') => match username {
                    Some(u) => Some(u),
                    None => return Target::Nothing,
                },
                _ => None,
            };
            match value {
                Some(v) => {
                    unsafe_value |= v.is_empty() || v.contains(['+', '#', '/']);
                    out.push_str(v);
                    rest = &after[1..];
                }
                None => {
                    out.push('%');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        unsafe_value |= i == 0 && out.starts_with('$') && !level.starts_with('$');
        if unsafe_value {
            if !denying {
                return Target::Nothing;
            }
            if i == 0 {
                return Target::Everything;
            }
            out.truncate(level_start);
            out.push('#');
            return Target::Filter(Cow::Owned(out));
        }
    }
    Target::Filter(Cow::Owned(out))
}

// ---------------------------------------------------------------------------------------------
// Mosquitto acl_file
// ---------------------------------------------------------------------------------------------

/// Access word of an `acl_file` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileAccess {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl FileAccess {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "read" => Self::Read,
            "write" => Self::Write,
            "readwrite" => Self::ReadWrite,
            "deny" => Self::Deny,
            _ => return None,
        })
    }

    fn grants(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Self::ReadWrite, _) | (Self::Read, Access::Read) | (Self::Write, Access::Write)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileRule {
    access: FileAccess,
    topic: String,
}

/// A parsed Mosquitto `acl_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFile {
    /// `topic` lines before the first `user` line: clients without a username.
    anonymous: Vec<FileRule>,
    /// `topic` lines per `user` block (repeated blocks for one user are merged, as in Mosquitto).
    users: HashMap<String, Vec<FileRule>>,
    /// `pattern` lines, wherever they appear: every client.
    patterns: Vec<FileRule>,
}

/// Splits off the first space- or tab-separated word.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t']);
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim_start_matches([' ', '\t'])),
        None => (s, ""),
    }
}

impl AclFile {
    /// Parses ACL file text; `source` is only used to name the file in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Self, AclError> {
        let mut acl = AclFile::default();
        let mut current_user: Option<String> = None;
        for (idx, raw) in text.lines().enumerate() {
            let err = |reason: String| AclError::Parse {
                path: source.to_path_buf(),
                line: idx + 1,
                reason,
            };
            // Mosquitto 2.x trims surrounding whitespace and skips blank and `#` lines.
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (directive, rest) = split_word(line);
            match directive {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a username".into()));
                    }
                    // The username is everything after `user`, spaces included (as Mosquitto).
                    acl.users.entry(rest.to_string()).or_default();
                    current_user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (first, remainder) = split_word(rest);
                    if first.is_empty() {
                        return Err(err(format!("`{directive}` needs a topic")));
                    }
                    // `topic X` alone means readwrite on X; with more words the first one must be
                    // the access type and the topic is the rest, spaces included (Mosquitto).
                    let (access, topic) = if remainder.is_empty() {
                        (FileAccess::ReadWrite, first)
                    } else {
                        let access = FileAccess::parse(first).ok_or_else(|| {
                            err(format!(
                                "invalid access type `{first}` (expected read, write, readwrite or deny)"
                            ))
                        })?;
                        (access, remainder)
                    };
                    validate_topic_filter(topic)
                        .map_err(|e| err(format!("invalid topic filter `{topic}`: {e}")))?;
                    let rule = FileRule {
                        access,
                        topic: topic.to_string(),
                    };
                    if directive == "pattern" {
                        acl.patterns.push(rule);
                    } else {
                        match &current_user {
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown directive `{other}` (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<Self, AclError> {
        let text = fs::read_to_string(path).map_err(|source| AclError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// True when the file holds no rule at all (everything would be denied).
    pub fn is_empty(&self) -> bool {
        self.anonymous.is_empty()
            && self.patterns.is_empty()
            && self.users.values().all(Vec::is_empty)
    }

    /// The rules that concern one client, each resolved to a target.
    fn rules_for<'a>(
        &'a self,
        username: Option<&'a str>,
        client_id: &'a str,
    ) -> impl Iterator<Item = (FileAccess, Target<'a>)> + 'a {
        let topic_rules: &[FileRule] = match username {
            None => &self.anonymous,
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or(&[]),
        };
        let fixed = topic_rules
            .iter()
            .map(|r| (r.access, Target::Filter(Cow::Borrowed(r.topic.as_str()))));
        let patterns = self.patterns.iter().map(move |r| {
            let t = substitute(&r.topic, username, client_id, r.access == FileAccess::Deny);
            (r.access, t)
        });
        fixed.chain(patterns)
    }

    /// May this client publish to (`Write`) or receive a message on (`Read`) the topic name?
    ///
    /// Any matching `deny` wins, otherwise any matching rule granting `access` allows, otherwise
    /// denied. (Mosquitto 2.x applies this per group, user rules before patterns; applying it
    /// across both means a `pattern deny` cannot be overridden by a user's `topic` line.)
    pub fn check_topic(
        &self,
        username: Option<&str>,
        client_id: &str,
        access: Access,
        topic: &str,
    ) -> bool {
        if validate_topic_name(topic).is_err() {
            return false;
        }
        let mut granted = false;
        for (a, target) in self.rules_for(username, client_id) {
            if !target.matches_name(topic) {
                continue;
            }
            if a == FileAccess::Deny {
                return false;
            }
            granted |= a.grants(access);
        }
        granted
    }

    /// May this client SUBSCRIBE with `filter`?
    ///
    /// Granted when the filter overlaps a readable rule and is not wholly inside a `deny`
    /// rule; deliveries are then filtered with [`AclFile::check_topic`].
    pub fn check_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        if validate_topic_filter(filter).is_err() {
            return false;
        }
        let mut granted = false;
        for (a, target) in self.rules_for(username, client_id) {
            if a == FileAccess::Deny {
                if target.contains(filter) {
                    return false;
                }
            } else if a.grants(Access::Read) && !granted {
                granted = target.overlaps(filter);
            }
        }
        granted
    }
}

// ---------------------------------------------------------------------------------------------
// Inline YAML rules
// ---------------------------------------------------------------------------------------------

/// Operation being checked against inline rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE with a filter, and delivery of each message to the subscriber.
    Subscribe,
}

/// Whether rules of `scope` apply to `action`.
fn scope_covers(scope: RuleScope, action: Action) -> bool {
    matches!(
        (scope, action),
        (RuleScope::All, _)
            | (RuleScope::Publish, Action::Publish)
            | (RuleScope::Subscribe, Action::Subscribe)
    )
}

/// Whether a rule is meant for this client (its `user` and `client_id` conditions).
fn rule_applies_to(rule: &AclRule, username: Option<&str>, client_id: &str) -> bool {
    let user_ok = match &rule.user {
        Some(u) => username == Some(u.as_str()),
        None => true,
    };
    let client_ok = match &rule.client_id {
        Some(c) => c == client_id,
        None => true,
    };
    user_ok && client_ok
}

/// The rule's topic filter with `%c` / `%u` substituted for this client.
fn rule_target<'a>(rule: &'a AclRule, username: Option<&str>, client_id: &str) -> Target<'a> {
    substitute(
        &rule.topic,
        username,
        client_id,
        rule.effect == Effect::Deny,
    )
}

/// Ordered inline rules; the first rule that matches decides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InlineAcl {
    rules: Vec<AclRule>,
}

impl From<Vec<AclRule>> for InlineAcl {
    fn from(rules: Vec<AclRule>) -> Self {
        Self { rules }
    }
}

impl InlineAcl {
    /// Wraps rules in evaluation order.
    pub fn new(rules: Vec<AclRule>) -> Self {
        Self { rules }
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> &[AclRule] {
        &self.rules
    }

    /// True when there are no rules (every decision is `None`).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Verdict of the first rule matching a concrete topic name (`Some(true)` = allow), or `None`.
    ///
    /// Use `Action::Publish` for PUBLISH and `Action::Subscribe` for delivering a message to a
    /// subscriber. A name containing wildcards is never legitimate here and is refused.
    pub fn decide_topic(
        &self,
        username: Option<&str>,
        client_id: &str,
        action: Action,
        topic: &str,
    ) -> Option<bool> {
        if validate_topic_name(topic).is_err() {
            return Some(false);
        }
        self.rules
            .iter()
            .filter(|r| scope_covers(r.scope, action) && rule_applies_to(r, username, client_id))
            .find(|r| rule_target(r, username, client_id).matches_name(topic))
            .map(|r| r.effect == Effect::Allow)
    }

    /// Verdict of the first rule deciding a SUBSCRIBE filter (`Some(true)` = allow), or `None`.
    ///
    /// An `allow` rule decides when it overlaps the filter (some topic is readable; deliveries
    /// are re-checked with [`InlineAcl::decide_topic`]). A `deny` rule decides when the filter
    /// lies wholly inside it.
    ///
    /// A `deny` that only partly overlaps the filter is passed over rather than deciding: with
    /// `[deny secret/#, allow #]`, refusing `#` outright would make the broad allow useless, and
    /// letting it through is safe because every message from `secret/...` still meets the deny
    /// first in `decide_topic`. Stopping evaluation there (returning `None`) would instead hand
    /// the decision to the ACL file or default policy, ignoring rules the operator wrote.
    pub fn decide_subscribe(
        &self,
        username: Option<&str>,
        client_id: &str,
        filter: &str,
    ) -> Option<bool> {
        if validate_topic_filter(filter).is_err() {
            return Some(false);
        }
        for rule in &self.rules {
            if !scope_covers(rule.scope, Action::Subscribe)
                || !rule_applies_to(rule, username, client_id)
            {
                continue;
            }
            let target = rule_target(rule, username, client_id);
            match rule.effect {
                Effect::Allow if target.overlaps(filter) => return Some(true),
                Effect::Deny if target.contains(filter) => return Some(false),
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACL: &str = "\
# Anonymous clients (no username): everything before the first `user` line.
topic read public/#
topic deny public/secret
topic read $SYS/broker/uptime

user alice
topic readwrite sensors/#
topic deny sensors/private/#
topic write cmd/alice
  topic   read   room/with space/+

user bob
topic read sensors/#
topic write sensors/bob/#

user reader
topic read sensors/#

user admin
topic $SYS/#
topic #

# Patterns apply to every client, wherever they appear.
pattern read devices/%c/config
pattern write devices/%c/state
pattern readwrite users/%u/#
pattern deny users/%u/locked
pattern read literal-%c/x
pattern write %c/status

# A second block for bob is merged into the first, as in Mosquitto.
user bob
topic read news
";

    fn acl() -> AclFile {
        AclFile::parse(ACL, Path::new("test.acl")).expect("parses")
    }

    use Access::{Read as R, Write as W};

    #[test]
    fn acl_file_topic_table() {
        let acl = acl();
        #[rustfmt::skip]
        let table: &[(Option<&str>, &str, Access, &str, bool)] = &[
            // anonymous
            (None, "anon1", R, "public/news", true),
            (None, "anon1", R, "public", true),
            (None, "anon1", R, "public/secret", false),
            (None, "anon1", W, "public/news", false),
            (None, "anon1", R, "$SYS/broker/uptime", true),
            (None, "anon1", R, "$SYS/broker/load", false),
            (None, "anon1", R, "devices/anon1/config", true),
            (None, "anon1", W, "devices/anon1/config", false),
            (None, "anon1", R, "users/anon1/inbox", false), // %u never applies without a username
            (None, "anon1", R, "sensors/t", false),
            // alice
            (Some("alice"), "c-alice", R, "sensors/t", true),
            (Some("alice"), "c-alice", W, "sensors/t/x", true),
            (Some("alice"), "c-alice", R, "sensors/private/x", false),
            (Some("alice"), "c-alice", W, "sensors/private", false),
            (Some("alice"), "c-alice", W, "cmd/alice", true),
            (Some("alice"), "c-alice", R, "cmd/alice", false),
            (Some("alice"), "c-alice", R, "room/with space/1", true),
            (Some("alice"), "c-alice", W, "room/with space/1", false),
            (Some("alice"), "c-alice", R, "public/news", false), // anonymous rules are not hers
            (Some("alice"), "c-alice", R, "users/alice/inbox", true),
            (Some("alice"), "c-alice", W, "users/alice/inbox", true),
            (Some("alice"), "c-alice", W, "users/alice/locked", false),
            (Some("alice"), "c-alice", R, "users/bob/inbox", false),
            (Some("alice"), "c-alice", R, "devices/c-alice/config", true),
            (Some("alice"), "c-alice", W, "devices/c-alice/config", false),
            (Some("alice"), "c-alice", W, "devices/c-alice/state", true),
            (Some("alice"), "c-alice", R, "devices/c-alice/state", false),
            (Some("alice"), "c-alice", R, "devices/other/config", false),
            (Some("alice"), "c-alice", R, "literal-c-alice/x", true), // inside a level too (2.0.x)
            (Some("alice"), "c-alice", R, "literal-%c/x", false),
            (Some("alice"), "c-alice", W, "c-alice/status", true),
            (Some("alice"), "c-alice", R, "$SYS/broker/uptime", false),
            // bob, including his second block
            (Some("bob"), "b", W, "sensors/bob/t", true),
            (Some("bob"), "b", W, "sensors/t", false),
            (Some("bob"), "b", R, "sensors/t", true),
            (Some("bob"), "b", R, "news", true),
            // admin: `#` does not reach `$SYS`, its own rule does
            (Some("admin"), "a", R, "$SYS/broker/load", true),
            (Some("admin"), "a", W, "anything/at/all", true),
            (Some("admin"), "a", W, "users/admin/locked", false), // pattern deny applies to all
            // a user without a block still gets patterns
            (Some("mallory"), "m", R, "sensors/t", false),
            (Some("mallory"), "m", W, "users/mallory/x", true),
            // dangerous client ids / usernames never widen a grant (CVE-2017-7650)
            (None, "+", R, "devices/x/config", false),
            (None, "#", R, "devices/x/config", false),
            (None, "a/b", R, "devices/a/b/config", false),
            (None, "$SYS", W, "$SYS/status", false),
            (None, "dev1", W, "dev1/status", true),
            (Some("x/y"), "c", R, "users/x/y/z", false),
            // ...and widen a deny instead: `users/%u/locked` becomes `users/#` for `x/y`
            (Some("x/y"), "c", R, "users/p", false),
            (Some("x/y"), "c", R, "devices/c/config", true),
            // wildcard "names" are never granted
            (Some("admin"), "a", W, "a/+", false),
        ];
        for &(user, cid, access, topic, want) in table {
            assert_eq!(
                acl.check_topic(user, cid, access, topic),
                want,
                "{user:?} {cid} {access:?} {topic}"
            );
        }
    }

    #[test]
    fn acl_file_subscribe_table() {
        let acl = acl();
        #[rustfmt::skip]
        let table: &[(Option<&str>, &str, &str, bool)] = &[
            // reader may read only sensors/# (plus pattern areas): `#` overlaps, `other/x` not
            (Some("reader"), "r", "#", true),
            (Some("reader"), "r", "other/x", false),
            (Some("reader"), "r", "sensors/+/temp", true),
            (Some("reader"), "r", "+/x/temp", true),
            (Some("reader"), "r", "$SYS/#", false),
            (Some("alice"), "c-alice", "#", true),
            (Some("alice"), "c-alice", "sensors/private/#", false), // wholly denied
            (Some("alice"), "c-alice", "sensors/private", false),
            (Some("alice"), "c-alice", "sensors/+/x", true),        // partly denied: deliveries filtered
            (Some("alice"), "c-alice", "other/x", false),
            (Some("alice"), "c-alice", "cmd/alice", false),         // write-only
            (Some("alice"), "c-alice", "+/alice/inbox", true),
            (Some("alice"), "c-alice", "users/alice/locked", false),
            (Some("alice"), "c-alice", "devices/c-alice/#", true),
            (None, "anon1", "#", true),
            (None, "anon1", "public/secret", false),
            (None, "anon1", "public/+", true),
            (None, "anon1", "$SYS/#", true),
            (None, "anon1", "$SYS/broker/+", true),
            (None, "anon1", "$SYS/+/load", false),
            (None, "anon1", "$SYS/broker/load", false),
            (Some("admin"), "a", "$SYS/#", true),
            (Some("admin"), "a", "users/admin/locked", false),
            (None, "+", "devices/+/config", false),
            (Some("x/y"), "c", "users/#", false),
            (Some("alice"), "c-alice", "bad/#/filter", false),
        ];
        for &(user, cid, filter, want) in table {
            assert_eq!(
                acl.check_subscribe(user, cid, filter),
                want,
                "{user:?} {cid} SUBSCRIBE {filter}"
            );
        }
    }

    #[test]
    fn acl_file_edge_syntax() {
        // `topic X` alone is readwrite; `topic read` alone is the topic "read" (Mosquitto does this).
        let acl = AclFile::parse("topic a/b\ntopic read\r\n\t\n", Path::new("x")).expect("ok");
        assert!(acl.check_topic(None, "c", W, "a/b") && acl.check_topic(None, "c", R, "a/b"));
        assert!(acl.check_topic(None, "c", W, "read"));
        assert!(AclFile::parse("", Path::new("x")).expect("ok").is_empty());
        assert!(!AclFile::parse("", Path::new("x"))
            .expect("ok")
            .check_topic(None, "c", R, "a"));
    }

    #[test]
    fn acl_file_errors_name_file_line_reason() {
        let cases = [
            ("topic read a\nusr bob\n", 2, "unknown directive `usr`"),
            ("topic readonly a/b\n", 1, "invalid access type `readonly`"),
            ("\n\ntopic\n", 3, "`topic` needs a topic"),
            ("pattern \t \n", 1, "`pattern` needs a topic"),
            ("user\n", 1, "`user` needs a username"),
            ("topic read a/#/b\n", 1, "invalid topic filter `a/#/b`"),
            ("pattern read a/%c+\n", 1, "invalid topic filter"),
            (
                "topic read a # trailing comment\n",
                1,
                "invalid topic filter",
            ),
        ];
        for (text, line, reason) in cases {
            let msg = AclFile::parse(text, Path::new("/etc/mqtt/acl"))
                .expect_err(text)
                .to_string();
            assert!(msg.starts_with(&format!("/etc/mqtt/acl:{line}: ")), "{msg}");
            assert!(msg.contains(reason), "{msg} lacks {reason}");
        }
        let err = AclFile::load(Path::new("/nonexistent/acl")).expect_err("missing");
        assert!(err.to_string().starts_with("/nonexistent/acl: "), "{err}");
    }

    #[test]
    fn substitution() {
        let t = |topic, u, c, deny| substitute(topic, u, c, deny);
        let f = |s: &str| Target::Filter(Cow::Owned(s.to_string()));
        assert_eq!(t("a/%c/%u", Some("u"), "c", false), f("a/c/u"));
        assert_eq!(t("a/%u", None, "c", false), Target::Nothing);
        assert_eq!(t("a/%u", None, "c", true), Target::Nothing);
        assert_eq!(t("a/%c", None, "", false), Target::Nothing);
        assert_eq!(t("a/%c/b", None, "x/y", false), Target::Nothing);
        assert_eq!(t("a/%c/b", None, "x/y", true), f("a/#"));
        assert_eq!(t("%c/b", None, "+", true), Target::Everything);
        assert_eq!(t("%c/b", None, "$x", false), Target::Nothing);
        assert_eq!(t("b/%c", None, "$x", false), f("b/$x"));
        assert_eq!(t("a%c/%cb-%u", Some("u"), "x", false), f("ax/xb-u"));
        assert_eq!(t("a/%%c/%x%", None, "x", false), f("a/%x/%x%"));
        assert_eq!(t("a/%u", Some(""), "c", true), f("a/#"));
        assert_eq!(t("pre-%c/b", None, "a/b", true), Target::Everything);
        assert_eq!(t("x/pre-%c/b", None, "#", true), f("x/#"));
        assert_eq!(t("$SYS/%c", None, "c", false), f("$SYS/c"));
        assert_eq!(t("no/placeholder", None, "c", false), f("no/placeholder"));
    }

    // --- filter algebra, checked exhaustively against filter_matches on a small universe ---

    fn all_filters() -> Vec<String> {
        let levels = ["a", "", "$s", "+", "#"];
        let mut out: Vec<String> = Vec::new();
        let mut frontier: Vec<String> = levels.iter().map(|s| s.to_string()).collect();
        for _ in 0..3 {
            out.extend(frontier.iter().cloned());
            frontier = frontier
                .iter()
                .filter(|f| !f.ends_with('#'))
                .flat_map(|f| levels.iter().map(move |l| format!("{f}/{l}")))
                .collect();
        }
        out.retain(|f| validate_topic_filter(f).is_ok());
        out
    }

    fn all_names() -> Vec<String> {
        let levels = ["a", "", "$s", "z"];
        let mut out: Vec<String> = Vec::new();
        let mut frontier: Vec<String> = levels.iter().map(|s| s.to_string()).collect();
        for _ in 0..4 {
            out.extend(frontier.iter().cloned());
            frontier = frontier
                .iter()
                .flat_map(|f| levels.iter().map(move |l| format!("{f}/{l}")))
                .collect();
        }
        out.retain(|n| validate_topic_name(n).is_ok());
        out
    }

    #[test]
    fn overlap_and_subset_agree_with_matching() {
        let filters = all_filters();
        let names = all_names();
        let sets: Vec<Vec<bool>> = filters
            .iter()
            .map(|f| names.iter().map(|n| filter_matches(f, n)).collect())
            .collect();
        for (i, a) in filters.iter().enumerate() {
            for (j, b) in filters.iter().enumerate() {
                let overlap = sets[i].iter().zip(&sets[j]).any(|(x, y)| *x && *y);
                let subset = sets[i].iter().zip(&sets[j]).all(|(x, y)| !*x || *y);
                assert_eq!(filters_overlap(a, b), overlap, "overlap {a:?} {b:?}");
                assert_eq!(filter_is_subset(a, b), subset, "subset {a:?} ⊆ {b:?}");
            }
        }
    }

    // --- inline rules ---

    const INLINE: &str = r##"
- deny: all
  topic: secret/#
- allow: subscribe
  topic: sensors/#
  user: alice
- allow: publish
  topic: devices/%c/state
- allow: all
  topic: users/%u/#
- deny: publish
  topic: "#"
  client_id: readonly-1
- allow: publish
  topic: "open/#"
- deny: subscribe
  topic: "#"
"##;

    fn inline() -> InlineAcl {
        serde_yaml_ng::from_str(INLINE).expect("parses")
    }

    /// (username, client id, action, topic, expected verdict)
    type InlineTopicCase = (
        Option<&'static str>,
        &'static str,
        Action,
        &'static str,
        Option<bool>,
    );

    #[test]
    fn inline_topic_first_match() {
        use Action::{Publish as P, Subscribe as S};
        let acl = inline();
        #[rustfmt::skip]
        let table: &[InlineTopicCase] = &[
            (Some("alice"), "c1", S, "secret/x", Some(false)),
            (Some("alice"), "c1", S, "sensors/t", Some(true)),
            (Some("alice"), "c1", P, "sensors/t", None),
            (Some("bob"), "c2", S, "sensors/t", Some(false)), // user-scoped rule skipped, `#` deny
            (None, "c2", S, "sensors/t", Some(false)),
            (Some("bob"), "dev7", P, "devices/dev7/state", Some(true)),
            (Some("bob"), "dev7", P, "devices/dev8/state", None),
            (Some("bob"), "dev7", P, "secret/devices", Some(false)),
            (Some("bob"), "c", P, "users/bob/x", Some(true)),
            (Some("bob"), "c", S, "users/bob/x", Some(true)),
            (None, "c", P, "users/bob/x", None),
            (Some("bob"), "readonly-1", P, "open/x", Some(false)),
            (Some("bob"), "readonly-2", P, "open/x", Some(true)),
            (Some("bob"), "c", S, "$SYS/x", None), // `#` does not reach `$SYS`
            (Some("a/b"), "c", P, "users/a/b/x", None), // dangerous username: grant refused
            (Some("bob"), "c", P, "open/+", Some(false)),
        ];
        for &(user, cid, action, topic, want) in table {
            assert_eq!(
                acl.decide_topic(user, cid, action, topic),
                want,
                "{user:?} {cid} {action:?} {topic}"
            );
        }
    }

    #[test]
    fn inline_subscribe_first_match() {
        let acl = inline();
        #[rustfmt::skip]
        let table: &[(Option<&str>, &str, &str, Option<bool>)] = &[
            (Some("alice"), "c", "#", Some(true)),          // partial deny skipped, sensors/# overlaps
            (Some("alice"), "c", "secret/+", Some(false)),  // wholly inside `deny all secret/#`
            (Some("alice"), "c", "other/x", Some(false)),   // final `deny subscribe #`
            (Some("alice"), "c", "sensors/+/t", Some(true)),
            (Some("bob"), "c", "#", Some(true)),            // overlaps users/bob/#
            (Some("bob"), "c", "sensors/#", Some(false)),
            (None, "c", "#", Some(false)),
            (Some("bob"), "c", "$SYS/#", None),
            (Some("bob"), "c", "bad#", Some(false)),
        ];
        for &(user, cid, filter, want) in table {
            assert_eq!(
                acl.decide_subscribe(user, cid, filter),
                want,
                "{user:?} {cid} SUBSCRIBE {filter}"
            );
        }
    }

    #[test]
    fn inline_rule_yaml_errors_and_round_trip() {
        let bad = [
            (
                "- allow: all\n  deny: all\n  topic: a\n",
                "exactly one of `allow` or `deny`",
            ),
            ("- topic: a\n", "needs `allow: publish|subscribe|all`"),
            ("- allow: read\n  topic: a\n", "unknown variant `read`"),
            (
                "- allow: all\n  topic: a\n  username: x\n",
                "unknown field `username`",
            ),
            (
                "- allow: all\n  topic: a/#/b\n",
                "invalid ACL topic filter `a/#/b`",
            ),
            ("- allow: all\n", "missing field `topic`"),
            (
                "- allow: all\n  topic: a\n  user: ''\n",
                "`user` must not be empty",
            ),
        ];
        for (yaml, want) in bad {
            let msg = serde_yaml_ng::from_str::<InlineAcl>(yaml)
                .expect_err(yaml)
                .to_string();
            assert!(msg.contains(want), "{msg} lacks {want}");
        }
        let acl = inline();
        let back = serde_yaml_ng::to_string(&acl).expect("serialize");
        assert_eq!(
            serde_yaml_ng::from_str::<InlineAcl>(&back).expect("reparse"),
            acl
        );
        assert_eq!(
            serde_yaml_ng::from_str::<AclDefault>("deny").expect("default"),
            AclDefault::Deny
        );
    }
}
