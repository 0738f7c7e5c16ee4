//! What an MQTT 5 CONNECT negotiates (section 3.1.2.11 and 3.2.2.3): the session expiry,
//! keep alive, receive maximum, packet size and topic alias limits both ways, and the
//! CONNACK properties that tell the client what the server allows.
//!
//! Pure: a CONNECT and the config in, the values for the engine, the session and the
//! CONNACK out. The connection shell calls it once per MQTT 5 CONNECT.

use super::engine::Negotiated;
use crate::config::Config;
use crate::protocol::{Connect, Properties};
use crate::session::state::Peer;

/// The outcome of negotiating one MQTT 5 CONNECT.
#[derive(Debug)]
pub(crate) struct Negotiation {
    /// Session Expiry Interval in force (the client's, capped by
    /// `persistence.session_expiry`).
    pub session_expiry: u32,
    /// Keep alive in force, seconds (the client's, or the server's when it imposes one).
    pub keep_alive: u16,
    /// What the client can take, for its session's outbound flow.
    pub peer: Peer,
    /// The engine's MQTT 5 state.
    pub negotiated: Negotiated,
    /// CONNACK properties.
    pub connack: Properties,
}

/// Negotiates an MQTT 5 CONNECT against `config`; `assigned` is the client id the server
/// assigned when the client sent an empty one [MQTT-3.2.2-16].
///
/// Boxed: the connection task keeps its locals in its future, for as long as the
/// connection lives; an idle connection should not pay for CONNACK properties.
pub(crate) fn negotiate(
    config: &Config,
    connect: &Connect,
    assigned: Option<&str>,
) -> Box<Negotiation> {
    let mqtt5 = &config.mqtt5;
    let empty = Properties::default();
    let requested = connect.properties.as_deref().unwrap_or(&empty);
    let mut connack = Properties::default();

    // Session expiry: absent means 0 (3.1.2.11.2); capped by the operator's expiry, which
    // is then sent back (3.2.2.3.2) (0 in config: sessions never expire, no cap).
    let wanted = requested.session_expiry_interval.unwrap_or(0);
    let cap = config.persistence.session_expiry.get().as_secs();
    let session_expiry = if cap > 0 && u64::from(wanted) > cap {
        let capped = u32::try_from(cap).unwrap_or(u32::MAX - 1);
        connack.session_expiry_interval = Some(capped);
        capped
    } else {
        wanted
    };

    // Keep alive: the server may impose its own (Server Keep Alive, [MQTT-3.2.2-21]).
    let mut keep_alive = connect.keep_alive;
    if mqtt5.max_keep_alive > 0 && (keep_alive == 0 || keep_alive > mqtt5.max_keep_alive) {
        keep_alive = mqtt5.max_keep_alive;
        connack.server_keep_alive = Some(keep_alive);
    }

    if let Some(id) = assigned {
        connack.assigned_client_identifier = Some(id.to_owned());
    }
    connack.receive_maximum = Some(mqtt5.receive_maximum);
    connack.topic_alias_maximum =
        (mqtt5.topic_alias_maximum > 0).then_some(mqtt5.topic_alias_maximum);
    connack.maximum_packet_size = u32::try_from(config.server.max_packet_size).ok();
    // Absent means available: only what is off is said (3.2.2.3.5 and following).
    if !config.limits.retain_available {
        connack.retain_available = Some(0);
    }
    if !mqtt5.wildcard_subscriptions {
        connack.wildcard_subscription_available = Some(0);
    }
    if !mqtt5.subscription_identifiers {
        connack.subscription_identifier_available = Some(0);
    }
    if !mqtt5.shared_subscriptions {
        connack.shared_subscription_available = Some(0);
    }
    // Response Information only when asked for [MQTT-3.1.2-28].
    if requested.request_response_information == Some(1) && !mqtt5.response_information.is_empty() {
        connack.response_information = Some(mqtt5.response_information.clone());
    }
    // Another of our brokers bridging in says its node name; ours tells it which broker it
    // reached, so that it never forwards a message back to where it came from.
    if requested
        .user_properties
        .iter()
        .any(|(k, _)| &**k == crate::model::BRIDGE_NODE_PROPERTY)
    {
        connack.user_properties.push((
            crate::model::BRIDGE_NODE_PROPERTY.into(),
            config.node().into(),
        ));
    }
    if !mqtt5.server_reference.is_empty() {
        connack.server_reference = Some(mqtt5.server_reference.clone());
    }

    let peer = Peer {
        level: connect.protocol,
        receive_maximum: requested.receive_maximum.unwrap_or(u16::MAX),
        max_packet_size: requested.maximum_packet_size.unwrap_or(u32::MAX),
    };
    let will_delay = connect
        .will
        .as_ref()
        .and_then(|w| w.properties.as_ref())
        .and_then(|p| p.will_delay_interval)
        .unwrap_or(0);
    let mut negotiated = Negotiated::new(
        mqtt5.topic_alias_maximum,
        mqtt5.receive_maximum,
        requested.request_problem_information != Some(0),
        will_delay,
        session_expiry == 0,
    );
    if mqtt5.outbound_topic_aliases {
        // The client's Topic Alias Maximum bounds the aliases we send [MQTT-3.3.2-10].
        negotiated.outbound_alias_maximum = requested.topic_alias_maximum.unwrap_or(0);
    }
    Box::new(Negotiation {
        session_expiry,
        keep_alive,
        peer,
        negotiated,
        connack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolLevel;

    fn connect(props: Properties, keep_alive: u16) -> Connect {
        Connect {
            bridge: false,
            protocol: ProtocolLevel::V5,
            clean_session: true,
            keep_alive,
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
            properties: Some(Box::new(props)),
        }
    }

    #[test]
    fn session_expiry_is_capped_by_config_and_sent_back() {
        let mut config = Config::default();
        config.persistence.session_expiry = crate::config::ConfigDuration::secs(3600);
        let n = negotiate(
            &config,
            &connect(
                Properties {
                    session_expiry_interval: Some(u32::MAX),
                    ..Default::default()
                },
                60,
            ),
            None,
        );
        assert_eq!(n.session_expiry, 3600);
        assert_eq!(n.connack.session_expiry_interval, Some(3600));
        // Within the cap: kept, and not repeated in CONNACK.
        let n = negotiate(
            &config,
            &connect(
                Properties {
                    session_expiry_interval: Some(10),
                    ..Default::default()
                },
                60,
            ),
            None,
        );
        assert_eq!(n.session_expiry, 10);
        assert_eq!(n.connack.session_expiry_interval, None);
    }

    #[test]
    fn server_keep_alive_replaces_zero_or_larger_mqtt_3_2_2_21() {
        let mut config = Config::default();
        config.mqtt5.max_keep_alive = 120;
        let n = negotiate(&config, &connect(Properties::default(), 0), None);
        assert_eq!(
            (n.keep_alive, n.connack.server_keep_alive),
            (120, Some(120))
        );
        let n = negotiate(&config, &connect(Properties::default(), 30), None);
        assert_eq!((n.keep_alive, n.connack.server_keep_alive), (30, None));
    }

    #[test]
    fn client_limits_become_the_peer_and_ours_go_in_connack() {
        let config = Config::default();
        let n = negotiate(
            &config,
            &connect(
                Properties {
                    receive_maximum: Some(5),
                    maximum_packet_size: Some(1000),
                    request_problem_information: Some(0),
                    ..Default::default()
                },
                60,
            ),
            Some("auto-1"),
        );
        assert_eq!(n.peer.receive_maximum, 5);
        assert_eq!(n.peer.max_packet_size, 1000);
        assert!(!n.negotiated.problem_information);
        assert_eq!(
            n.connack.assigned_client_identifier.as_deref(),
            Some("auto-1")
        );
        assert_eq!(
            n.connack.receive_maximum,
            Some(config.mqtt5.receive_maximum)
        );
        assert_eq!(
            n.connack.topic_alias_maximum,
            Some(config.mqtt5.topic_alias_maximum)
        );
        assert_eq!(n.connack.retain_available, None);
    }
}
