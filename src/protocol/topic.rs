//! Topic names and topic filters: validation and matching (MQTT 3.1.1 section 4.7).
//!
//! Pure functions over `&str`, shared by the codec (validation), the routing trie
//! (reference semantics) and the ACL checks.

use thiserror::Error;

/// Longest topic name or filter the wire format can carry (a UTF-8 string has a 16-bit length).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Topic names and filters must be at least one character long [MQTT-4.7.3-1].
    #[error("topic is empty")]
    Empty,
    /// A topic name in PUBLISH must not contain wildcards [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard character")]
    WildcardInName,
    /// `#` must be last and occupy a whole level [MQTT-4.7.1-2].
    #[error("'#' must be the last character and occupy a whole level")]
    BadMultiLevelWildcard,
    /// `+` must occupy a whole level [MQTT-4.7.1-3].
    #[error("'+' must occupy a whole level")]
    BadSingleLevelWildcard,
    /// Topics must not contain U+0000 [MQTT-4.7.3-2].
    #[error("topic contains U+0000")]
    NullCharacter,
    /// Longer than the wire format or a configured limit allows.
    #[error("topic is longer than {0} bytes")]
    TooLong(usize),
}

/// A shared subscription's filter split into its group and the filter it applies
/// (`$share/{group}/{filter}`, MQTT 5 section 4.8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// Share name: the group whose members take turns.
    pub group: &'a str,
    /// The topic filter the group subscribes to.
    pub filter: &'a str,
}

/// Splits `$share/{group}/{filter}`; `None` for an ordinary filter, `Err` for a shared one
/// that is malformed: an empty group or one with a wildcard [MQTT-4.8.2-2], or no filter
/// after it [MQTT-4.8.2-1].
pub fn parse_shared(filter: &str) -> Option<Result<SharedFilter<'_>, &'static str>> {
    let rest = filter.strip_prefix("$share/")?;
    let Some((group, filter)) = rest.split_once('/') else {
        return Some(Err(
            "shared subscription without a topic filter [MQTT-4.8.2-1]",
        ));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Some(Err("share name empty or with a wildcard [MQTT-4.8.2-2]"));
    }
    if filter.is_empty() {
        return Some(Err(
            "shared subscription without a topic filter [MQTT-4.8.2-1]",
        ));
    }
    Some(Ok(SharedFilter { group, filter }))
}

/// Checks a topic name as used in PUBLISH and will messages.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(MAX_TOPIC_LEN));
    }
    for b in name.bytes() {
        match b {
            b'+' | b'#' => return Err(TopicError::WildcardInName),
            0 => return Err(TopicError::NullCharacter),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a topic filter as used in SUBSCRIBE and UNSUBSCRIBE.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(MAX_TOPIC_LEN));
    }
    if filter.as_bytes().contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') {
            if level != "#" || levels.peek().is_some() {
                return Err(TopicError::BadMultiLevelWildcard);
            }
        } else if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevelWildcard);
        }
    }
    Ok(())
}

/// True when `filter` contains a wildcard.
pub fn has_wildcard(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

/// Does the (valid) topic `filter` match the (valid) topic `name`?
///
/// This is the reference semantics; the routing trie must agree with it.
/// Wildcards at the first level never match names starting with `$` [MQTT-4.7.2-1].
pub fn filter_matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            // "sport/#" also matches "sport" itself [MQTT-4.7.1-2].
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("a/b").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "+/+", "/+", "a/+/b", "+/#", "$SYS/#"] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a/#/b", "a#", "#/", "a+", "+a/b", ""] {
            assert!(validate_topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_mqtt_4_7() {
        assert!(filter_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1"
        ));
        assert!(filter_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(filter_matches("sport/#", "sport"));
        assert!(filter_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!filter_matches(
            "sport/tennis/+",
            "sport/tennis/player1/ranking"
        ));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        // [MQTT-4.7.2-1]
        assert!(!filter_matches("#", "$SYS/broker"));
        assert!(!filter_matches("+/broker", "$SYS/broker"));
        assert!(filter_matches("$SYS/#", "$SYS/broker"));
    }
}
