//! The plugin's decisions as plain Rust, with no Wasm types, so they are unit-tested natively
//! (`cargo test`) without a wasm target installed.

/// The parsed `config:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Topic prefixes that clients may read but not write.
    pub read_only_prefixes: Vec<String>,
    /// User names exempt from the policy.
    pub writers: Vec<String>,
}

/// What the client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// Delivery to a subscriber.
    Deliver,
}

/// The answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Explicitly denied.
    Deny,
    /// No opinion: the broker's other checks decide.
    Abstain,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Policy {
    /// Parses the key/value pairs the broker passes to `init`.
    pub fn from_config(pairs: &[(String, String)]) -> Result<Policy, String> {
        let mut policy = Policy::default();
        for (key, value) in pairs {
            match key.as_str() {
                "read_only_prefixes" => policy.read_only_prefixes = list(value),
                "writers" => policy.writers = list(value),
                other => return Err(format!("unknown config key `{other}`")),
            }
        }
        if policy.read_only_prefixes.is_empty() {
            return Err("config key `read_only_prefixes` must list at least one topic prefix".into());
        }
        Ok(policy)
    }

    /// Publishing under a read-only prefix is denied unless the user is a writer.
    pub fn decide(&self, action: Action, username: Option<&str>, topic: &str) -> Verdict {
        if action != Action::Publish {
            return Verdict::Abstain;
        }
        if username.is_some_and(|u| self.writers.iter().any(|w| w == u)) {
            return Verdict::Abstain;
        }
        if self.read_only_prefixes.iter().any(|p| topic.starts_with(p.as_str())) {
            Verdict::Deny
        } else {
            Verdict::Abstain
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let pairs = [
            ("read_only_prefixes".to_owned(), "config/, firmware/".to_owned()),
            ("writers".to_owned(), "ops".to_owned()),
        ];
        Policy::from_config(&pairs).expect("valid config")
    }

    #[test]
    fn parses_lists() {
        let p = policy();
        assert_eq!(p.read_only_prefixes, ["config/", "firmware/"]);
        assert_eq!(p.writers, ["ops"]);
    }

    #[test]
    fn refuses_bad_config() {
        assert!(Policy::from_config(&[]).is_err());
        assert!(Policy::from_config(&[("typo".into(), "x".into())]).is_err());
    }

    #[test]
    fn denies_publish_under_read_only_prefixes() {
        let p = policy();
        assert_eq!(p.decide(Action::Publish, Some("dev"), "config/site"), Verdict::Deny);
        assert_eq!(p.decide(Action::Publish, None, "firmware/v2"), Verdict::Deny);
        assert_eq!(p.decide(Action::Publish, Some("dev"), "devices/x"), Verdict::Abstain);
        assert_eq!(p.decide(Action::Subscribe, Some("dev"), "config/#"), Verdict::Abstain);
        assert_eq!(p.decide(Action::Publish, Some("ops"), "config/site"), Verdict::Abstain);
    }
}
