//! The CONNECT step of a connection: limits, client identifier, authentication (off the
//! async workers, with the login back-off), before the session is attached.
//!
//! Owns nothing across connections; reads the runtime and writes the back-off and counters
//! through the core. Must not attach sessions or route messages (that is the engine's).

use crate::core::{Core, Runtime};
use crate::hooks::{ClientInfo, Credentials, DenyReason, Refusal};
use crate::metrics::Counters;
use crate::protocol::{ConnAck, Connect, ProtocolLevel};
use std::sync::Arc;
use tracing::warn;

/// Runs the authentication chain off the async workers (password hashing and plugins are
/// deliberately slow), and delays refusals per source address to slow password guessing.
pub(super) async fn authenticate(
    core: &Arc<Core>,
    runtime: &Arc<Runtime>,
    client: &Arc<ClientInfo>,
    connect: &Connect,
    certificate_verified: bool,
) -> Result<(), ConnAck> {
    let result = if runtime.security.authenticators.is_empty() {
        // Only the anonymous / certificate rules apply: cheap, so no hop to a blocking thread
        // (which costs more than the check and limits the connect rate).
        let credentials = Credentials {
            username: client.username.as_deref(),
            password: connect.password.as_deref(),
            certificate_verified,
        };
        runtime.security.authenticate(client, &credentials)
    } else {
        let (rt, c, password) = (runtime.clone(), client.clone(), connect.password.clone());
        tokio::task::spawn_blocking(move || {
            let credentials = Credentials {
                username: c.username.as_deref(),
                password: password.as_deref(),
                certificate_verified,
            };
            rt.security.authenticate(&c, &credentials)
        })
        .await
        .unwrap_or_else(|_| {
            Err(Refusal::new(
                DenyReason::NotAuthorized,
                "authentication panicked",
            ))
        })
    };
    let ip = client.peer.ip();
    match result {
        Ok(()) => {
            Counters::inc(&core.counters.auth_success);
            // Only a login that proved a credential clears the address's failure count.
            if connect.password.is_some() || certificate_verified {
                core.backoff.succeeded(ip);
            }
            Ok(())
        }
        Err(refusal) => {
            let why = &refusal.log;
            let reason = refusal.reason;
            Counters::inc(&core.counters.auth_failure);
            core.ops
                .events
                .emit(|| crate::events::BrokerEvent::AuthFailed {
                    client_id: client.client_id.clone(),
                    username: client.username.clone(),
                    peer: client.peer,
                    reason: why.clone(),
                });
            let cfg = &runtime.config.security;
            let delay = core.backoff.failed(
                ip,
                cfg.auth_failure_delay.get(),
                cfg.auth_failure_max_delay.get(),
            );
            // The password itself is never logged.
            warn!(
                username = client.username.as_deref().unwrap_or(""),
                reason = %why,
                code = reason.return_code() as u8,
                delay_ms = delay.as_millis() as u64,
                "authentication failed"
            );
            tokio::time::sleep(delay).await;
            Err(refusal_connack(connect, &refusal))
        }
    }
}

/// After a reload: with `reauthorize_on_reload`, re-runs the authentication chain with the
/// credentials this client connected with; `Err` says why they are no longer accepted.
pub(super) async fn recheck(
    runtime: Arc<Runtime>,
    client: Arc<ClientInfo>,
    password: Option<bytes::Bytes>,
    certificate_verified: bool,
) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let credentials = Credentials {
            username: client.username.as_deref(),
            password: password.as_deref(),
            certificate_verified,
        };
        runtime
            .security
            .authenticate(&client, &credentials)
            .map_err(|r| r.log)
    })
    .await
    .unwrap_or_else(|_| Err("authentication panicked".into()))
}

/// The CONNACK refusing `connect`: the 3.1.1 return code, or for an MQTT 5 client the
/// reason code and the authenticator's Reason String, left out when it would make the
/// CONNACK larger than the client's Maximum Packet Size [MQTT-3.2.2-19].
fn refusal_connack(connect: &Connect, refusal: &Refusal) -> ConnAck {
    let mut ack = ConnAck::new(false, refusal.reason.return_code());
    if connect.protocol != ProtocolLevel::V5 {
        return ack;
    }
    ack.reason_code = Some(refusal.reason.v5_reason());
    if let Some(text) = &refusal.reason_string {
        let limit = connect
            .properties
            .as_ref()
            .and_then(|p| p.maximum_packet_size)
            .map_or(usize::MAX, |m| m as usize);
        // Fixed header (2), flags and code (2), property length (1), 0x1F, length (2).
        if text.len() + 7 <= limit {
            ack.properties = Some(Box::new(crate::protocol::Properties {
                reason_string: Some(text.clone()),
                ..Default::default()
            }));
        }
    }
    ack
}
