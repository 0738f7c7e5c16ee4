//! The reversible mapping between MQTT topics (and client ids) and NATS subject tokens and
//! key-value keys.
//!
//! An MQTT topic level may hold any UTF-8 but `+`, `#` and NUL, and may be empty; a NATS
//! subject token may not be empty nor hold `.`, `*`, `>` or whitespace, and a key-value key
//! allows only `[-/_=.A-Za-z0-9]`. Each level becomes one token: letters, digits, `-` and
//! `_` stay as they are, every other byte becomes `=HH` (upper-case hex), and an empty level
//! becomes a lone `=`. `=` is the only escape character and never stands for itself, so
//! decoding is unambiguous, and the output is valid both as subject tokens and as a key.
//! MQTT wildcards map to NATS wildcards (`+` → `*`, `#` → `>`), so a filter's subject
//! matches exactly the subjects of the topics the filter matches (apart from `#` also
//! matching its parent level, which NATS' `>` does not: callers add the parent).

use std::fmt::Write;

/// Appends the token of one topic level to `out`.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for b in level.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
}

/// The subject tokens of a topic name, `.`-separated (no prefix).
pub fn topic_tokens(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_level(&mut out, level);
    }
    out
}

/// The subject filter tokens of an MQTT topic filter: `+` → `*`, `#` → `>`.
pub fn filter_tokens(filter: &str) -> String {
    let mut out = String::with_capacity(filter.len() + 8);
    for (i, level) in filter.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match level {
            "+" => out.push('*'),
            "#" => out.push('>'),
            _ => push_level(&mut out, level),
        }
    }
    out
}

/// A token that is not what [`push_level`] writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an encoded topic: {0}")]
pub struct BadToken(pub String);

/// The topic whose tokens are `tokens` (the inverse of [`topic_tokens`]).
pub fn topic_from_tokens(tokens: &str) -> Result<String, BadToken> {
    let bad = || BadToken(tokens.to_owned());
    let mut bytes = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        if token == "=" {
            continue;
        }
        if token.is_empty() {
            return Err(bad());
        }
        let mut t = token.as_bytes();
        while let Some((&c, rest)) = t.split_first() {
            if c == b'=' {
                let hex = rest.get(..2).ok_or_else(bad)?;
                let s = std::str::from_utf8(hex).map_err(|_| bad())?;
                bytes.push(u8::from_str_radix(s, 16).map_err(|_| bad())?);
                t = &rest[2..];
            } else if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
                bytes.push(c);
                t = rest;
            } else {
                return Err(bad());
            }
        }
    }
    String::from_utf8(bytes).map_err(|_| bad())
}

/// A client id as one key-value key token (the same escaping as a topic level; `/` is a
/// byte like any other here).
pub fn client_key(client_id: &str) -> String {
    let mut out = String::with_capacity(client_id.len() + 4);
    push_level(&mut out, client_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What NATS accepts in a subject token and in a key-value key.
    fn is_valid_token(t: &str) -> bool {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b))
    }

    #[test]
    fn readable_topics_stay_readable() {
        assert_eq!(topic_tokens("sensors/aloys/dht"), "sensors.aloys.dht");
        assert_eq!(topic_tokens("a-b/c_d"), "a-b.c_d");
    }

    #[test]
    fn empty_levels_dollar_topics_and_reserved_characters_are_escaped() {
        assert_eq!(topic_tokens("/a//b/"), "=.a.=.b.=");
        assert_eq!(topic_tokens("$SYS/x"), "=24SYS.x");
        assert_eq!(topic_tokens("a.b/*/>/ /="), "a=2Eb.=2A.=3E.=20.=3D");
        assert_eq!(topic_tokens("température"), "temp=C3=A9rature");
    }

    #[test]
    fn wildcards_become_nats_wildcards() {
        assert_eq!(filter_tokens("a/+/c/#"), "a.*.c.>");
        assert_eq!(filter_tokens("+/x.y"), "*.x=2Ey");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for t in ["", "a..b", "=4", "=ZZ", "a*b", "=FF"] {
            assert!(topic_from_tokens(t).is_err(), "{t:?}");
        }
    }

    proptest! {
        /// Any topic name round-trips, and its tokens are valid NATS subject tokens and
        /// key-value key characters.
        #[test]
        fn any_topic_round_trips(levels in proptest::collection::vec("[^+#\u{0}/]{0,6}", 1..6)) {
            let topic = levels.join("/");
            let tokens = topic_tokens(&topic);
            prop_assert!(tokens.split('.').all(is_valid_token), "{tokens}");
            prop_assert_eq!(topic_from_tokens(&tokens), Ok(topic));
        }

        /// Distinct topics get distinct subjects (the mapping is injective).
        #[test]
        fn distinct_topics_get_distinct_subjects(a in "[a-c/.=]{1,6}", b in "[a-c/.=]{1,6}") {
            prop_assume!(a != b);
            prop_assert_ne!(topic_tokens(&a), topic_tokens(&b));
        }

        /// A filter's subject matches (NATS rules) the subject of every topic it matches
        /// (MQTT rules), and only those, except `#`'s parent level.
        #[test]
        fn filter_subjects_match_like_mqtt_filters(
            topic in proptest::collection::vec("[ab.]{0,2}", 1..4),
            filter in proptest::collection::vec(prop_oneof!["[ab.]{0,2}", Just("+".to_string())], 1..4),
            hash in any::<bool>(),
        ) {
            let topic = topic.join("/");
            let mut filter = filter.join("/");
            if hash { filter.push_str("/#"); }
            let mqtt = crate::protocol::topic::filter_matches(&filter, &topic);
            let nats = nats_matches(&filter_tokens(&filter), &topic_tokens(&topic));
            // `#` also matches its parent level, which a subscriber adds as a second subject.
            let parent = hash
                && nats_matches(&filter_tokens(filter.trim_end_matches("/#")), &topic_tokens(&topic));
            prop_assert_eq!(mqtt, nats || parent, "filter {} topic {}", filter, topic);
        }
    }

    /// NATS subject matching: `*` one token, `>` one or more trailing tokens.
    fn nats_matches(filter: &str, subject: &str) -> bool {
        let f: Vec<&str> = filter.split('.').collect();
        let s: Vec<&str> = subject.split('.').collect();
        for (i, ft) in f.iter().enumerate() {
            match *ft {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if i < s.len() && s[i] == t => {}
                _ => return false,
            }
        }
        f.len() == s.len()
    }
}
