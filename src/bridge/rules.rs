//! A bridge's topic rules with Mosquitto's `topic` semantics: which local topics go out
//! and under what name, which remote topics come in and under what name.

use crate::config::TopicRule;
use crate::protocol::topic::filter_matches;
use crate::protocol::QoS;

/// The compiled `topics:` of one bridge.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<TopicRule>,
}

impl RuleSet {
    /// Rules in config order (the first that matches a topic maps it).
    pub fn new(rules: Vec<TopicRule>) -> Self {
        RuleSet { rules }
    }

    /// Filters to subscribe to on this broker, with their QoS.
    pub fn local_subscriptions(&self) -> Vec<(String, QoS)> {
        dedup(
            self.rules
                .iter()
                .filter(|r| r.direction.outbound())
                .map(|r| (r.local_filter(), r.qos())),
        )
    }

    /// Filters to subscribe to on the remote, with their QoS.
    pub fn remote_subscriptions(&self) -> Vec<(String, QoS)> {
        dedup(
            self.rules
                .iter()
                .filter(|r| r.direction.inbound())
                .map(|r| (r.remote_filter(), r.qos())),
        )
    }

    /// The remote topic of a local one going out; `None` when no rule sends it.
    pub fn outbound(&self, local_topic: &str) -> Option<String> {
        self.rules
            .iter()
            .filter(|r| r.direction.outbound())
            .find(|r| filter_matches(&r.local_filter(), local_topic))
            .and_then(|r| {
                let rest = local_topic.strip_prefix(r.local_prefix.as_str())?;
                Some(format!("{}{rest}", r.remote_prefix))
            })
    }

    /// The local topic of a remote one coming in; `None` when no rule takes it.
    pub fn inbound(&self, remote_topic: &str) -> Option<String> {
        self.rules
            .iter()
            .filter(|r| r.direction.inbound())
            .find(|r| filter_matches(&r.remote_filter(), remote_topic))
            .and_then(|r| {
                let rest = remote_topic.strip_prefix(r.remote_prefix.as_str())?;
                Some(format!("{}{rest}", r.local_prefix))
            })
    }
}

/// One subscription per filter, at the highest QoS asked for it.
fn dedup(items: impl Iterator<Item = (String, QoS)>) -> Vec<(String, QoS)> {
    let mut out: Vec<(String, QoS)> = Vec::new();
    for (f, q) in items {
        match out.iter_mut().find(|(g, _)| *g == f) {
            Some((_, have)) => *have = (*have).max(q),
            None => out.push((f, q)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Direction;
    use proptest::prelude::*;

    fn rule(pattern: &str, direction: Direction, local: &str, remote: &str) -> TopicRule {
        TopicRule {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    /// Mosquitto's examples: `topic sensors/# out 1 edge/ site1/` sends `edge/sensors/t`
    /// as `site1/sensors/t`; `topic cmd/# in 1 "" site1/` takes `site1/cmd/x` as `cmd/x`.
    #[test]
    fn prefixes_are_swapped() {
        let rules = RuleSet::new(vec![
            rule("sensors/#", Direction::Out, "edge/", "site1/"),
            rule("cmd/#", Direction::In, "", "site1/"),
        ]);
        assert_eq!(
            rules.outbound("edge/sensors/t").as_deref(),
            Some("site1/sensors/t")
        );
        assert_eq!(rules.outbound("sensors/t"), None);
        assert_eq!(
            rules.outbound("edge/cmd/x"),
            None,
            "an in rule sends nothing out"
        );
        assert_eq!(rules.inbound("site1/cmd/x").as_deref(), Some("cmd/x"));
        assert_eq!(rules.inbound("site1/sensors/t"), None);
        assert_eq!(
            rules.local_subscriptions(),
            vec![("edge/sensors/#".to_owned(), QoS::AtLeastOnce)]
        );
        assert_eq!(
            rules.remote_subscriptions(),
            vec![("site1/cmd/#".to_owned(), QoS::AtLeastOnce)]
        );
    }

    /// An empty pattern remaps one topic: the prefixes are the whole names.
    #[test]
    fn empty_pattern_renames_one_topic() {
        let rules = RuleSet::new(vec![rule("", Direction::Both, "local/a", "remote/b")]);
        assert_eq!(rules.outbound("local/a").as_deref(), Some("remote/b"));
        assert_eq!(rules.inbound("remote/b").as_deref(), Some("local/a"));
        assert_eq!(rules.outbound("local/a/x"), None);
    }

    /// The first rule that matches decides.
    #[test]
    fn first_match_wins_and_wildcards_skip_dollar_topics() {
        let rules = RuleSet::new(vec![
            rule("a/#", Direction::Out, "", "one/"),
            rule("#", Direction::Out, "", "two/"),
        ]);
        assert_eq!(rules.outbound("a/b").as_deref(), Some("one/a/b"));
        assert_eq!(rules.outbound("c").as_deref(), Some("two/c"));
        // [MQTT-4.7.2-1]: `#` does not match a topic starting with `$`.
        assert_eq!(rules.outbound("$SYS/x"), None);
    }

    proptest! {
        /// Out then in through mirrored rules gives back the topic, whatever its levels.
        #[test]
        fn mapping_round_trips(levels in proptest::collection::vec("[a-z0-9 _$-]{0,6}", 1..5),
                               local in "([a-z]{1,4}/)?", remote in "([a-z]{1,4}/)?") {
            let topic = levels.join("/");
            prop_assume!(!topic.starts_with('$'));
            let rules = RuleSet::new(vec![rule("#", Direction::Both, &local, &remote)]);
            let local_topic = format!("{local}{topic}");
            if let Some(remote_topic) = rules.outbound(&local_topic) {
                prop_assert_eq!(rules.inbound(&remote_topic), Some(local_topic));
            }
        }
    }
}
