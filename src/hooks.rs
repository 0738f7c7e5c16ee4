//! Extension points: authentication, authorization and message transforms.
//!
//! Each is a trait; the built-in password/ACL files (`crate::auth`) and Wasm plugins
//! (`crate::plugins`) are both implementations. A [`SecurityChain`] holds them in the
//! configured order and combines their answers: the first `Deny` wins, otherwise any
//! `Allow` allows, and when every hook abstains the configured default decides.
//! Calls are synchronous and bounded (plugins run under a per-call time limit), so they
//! never hold a lock that another connection needs.

use crate::config::TransportKind;
use crate::protocol::{ConnectReturnCode, ProtocolLevel, QoS};
use crate::routing::Message;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the broker knows about a connected client, handed to every hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Client identifier (assigned by the broker when the client sent an empty one).
    pub client_id: Arc<str>,
    /// User name from CONNECT, or the TLS certificate identity when configured so.
    pub username: Option<String>,
    /// Remote address.
    pub peer: SocketAddr,
    /// Transport the client came in on.
    pub transport: TransportKind,
    /// Subject common name of a verified TLS client certificate.
    pub tls_identity: Option<String>,
    /// Protocol revision.
    pub protocol: ProtocolLevel,
    /// Clean session flag.
    pub clean_session: bool,
}

/// Credentials presented in CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// User name.
    pub username: Option<&'a str>,
    /// Password bytes (never logged).
    pub password: Option<&'a [u8]>,
    /// The user name is the subject of a client certificate the TLS layer verified
    /// (`use_identity_as_username`), which counts as authentication.
    pub certificate_verified: bool,
}

/// Why an authenticator refused a client; maps to a CONNACK return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// CONNACK 0x04: the user is known but the password is wrong.
    BadCredentials,
    /// CONNACK 0x05: the client may not connect.
    NotAuthorized,
}

impl DenyReason {
    /// The CONNACK return code for this reason.
    pub fn return_code(self) -> ConnectReturnCode {
        match self {
            DenyReason::BadCredentials => ConnectReturnCode::BadUsernameOrPassword,
            DenyReason::NotAuthorized => ConnectReturnCode::NotAuthorized,
        }
    }
}

/// Answer of one authenticator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// These credentials are good.
    Allow,
    /// Refuse the client, with a reason for the log.
    Deny(DenyReason, String),
    /// No opinion (e.g. a user this source does not know).
    Abstain,
}

/// Decides whether a client may connect.
pub trait Authenticator: Send + Sync {
    /// Name used in logs and metrics.
    fn name(&self) -> &str;
    /// Checks the credentials of a connecting client.
    fn authenticate(&self, client: &ClientInfo, credentials: &Credentials<'_>) -> AuthOutcome;
}

/// What a client is trying to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclAction {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE with a topic filter.
    Subscribe,
    /// Receive a message on a topic name through one of its subscriptions.
    Deliver,
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct AclRequest<'a> {
    /// The action.
    pub action: AclAction,
    /// Topic name (publish, deliver) or filter (subscribe).
    pub topic: &'a str,
    /// QoS of the message or requested subscription.
    pub qos: QoS,
    /// Retain flag of the message (false for subscribe).
    pub retain: bool,
}

/// Answer of one authorizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Permitted (a later hook may still deny).
    Allow,
    /// Refused; the chain stops here.
    Deny,
    /// No opinion.
    Abstain,
}

/// Decides whether a client may publish, subscribe or receive.
pub trait Authorizer: Send + Sync {
    /// Name used in logs and metrics.
    fn name(&self) -> &str;
    /// Answers one request.
    fn authorize(&self, client: &ClientInfo, request: &AclRequest<'_>) -> Decision;
}

/// What a transformer does with the message it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformAction {
    /// Route the message unchanged.
    Keep,
    /// Do not route it.
    Drop,
    /// Route this message instead.
    Replace(Message),
}

/// Result of one transformer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformResult {
    /// Fate of the original message.
    pub action: TransformAction,
    /// Further messages to route (e.g. a structured copy of a raw reading).
    pub additional: Vec<Message>,
}

impl TransformResult {
    /// Keep the message, add nothing.
    pub fn keep() -> Self {
        TransformResult {
            action: TransformAction::Keep,
            additional: Vec::new(),
        }
    }
}

/// Rewrites, drops or adds messages before routing.
pub trait Transformer: Send + Sync {
    /// Name used in logs and metrics.
    fn name(&self) -> &str;
    /// Transforms one published message.
    fn transform(&self, client: &ClientInfo, message: &Message) -> TransformResult;
}

/// The configured hooks in call order, and how to combine their answers.
#[derive(Clone, Default)]
pub struct SecurityChain {
    /// Authenticators in call order.
    pub authenticators: Vec<Arc<dyn Authenticator>>,
    /// Authorizers in call order.
    pub authorizers: Vec<Arc<dyn Authorizer>>,
    /// Transformers in call order.
    pub transformers: Vec<Arc<dyn Transformer>>,
    /// Every client must be allowed by some authenticator.
    pub require_auth: bool,
    /// Clients without a user name may connect (when `require_auth` is off).
    pub allow_anonymous: bool,
    /// A user name no authenticator accepted is refused (as Mosquitto does once a password
    /// file exists), even when `require_auth` is off.
    pub refuse_unknown_users: bool,
    /// Decision when every authorizer abstains.
    pub acl_default_allow: bool,
}

impl std::fmt::Debug for SecurityChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: Vec<&str>| v.join(",");
        f.debug_struct("SecurityChain")
            .field(
                "authenticators",
                &names(self.authenticators.iter().map(|a| a.name()).collect()),
            )
            .field(
                "authorizers",
                &names(self.authorizers.iter().map(|a| a.name()).collect()),
            )
            .field(
                "transformers",
                &names(self.transformers.iter().map(|a| a.name()).collect()),
            )
            .field("require_auth", &self.require_auth)
            .field("acl_default_allow", &self.acl_default_allow)
            .finish()
    }
}

impl SecurityChain {
    /// An open broker: everybody may connect and do anything.
    pub fn open() -> Self {
        SecurityChain {
            allow_anonymous: true,
            acl_default_allow: true,
            ..Default::default()
        }
    }

    /// Runs the authenticators; `Err` carries the reason and a log message.
    pub fn authenticate(
        &self,
        client: &ClientInfo,
        credentials: &Credentials<'_>,
    ) -> Result<(), (DenyReason, String)> {
        let mut allowed_by = credentials
            .certificate_verified
            .then_some("tls-client-certificate");
        for a in &self.authenticators {
            match a.authenticate(client, credentials) {
                AuthOutcome::Deny(reason, why) => {
                    return Err((reason, format!("{}: {why}", a.name())))
                }
                AuthOutcome::Allow => allowed_by = allowed_by.or(Some(a.name())),
                AuthOutcome::Abstain => {}
            }
        }
        if allowed_by.is_some() {
            return Ok(());
        }
        match credentials.username {
            Some(_) if self.require_auth || self.refuse_unknown_users => {
                Err((DenyReason::NotAuthorized, "unknown user".into()))
            }
            Some(_) => Ok(()),
            None if self.require_auth => {
                Err((DenyReason::NotAuthorized, "authentication required".into()))
            }
            None if !self.allow_anonymous => Err((
                DenyReason::NotAuthorized,
                "anonymous clients are not allowed".into(),
            )),
            None => Ok(()),
        }
    }

    /// Runs the authorizers: the first `Deny` wins, any `Allow` allows, else the default.
    pub fn authorize(&self, client: &ClientInfo, request: &AclRequest<'_>) -> bool {
        let mut allowed = false;
        for a in &self.authorizers {
            match a.authorize(client, request) {
                Decision::Deny => return false,
                Decision::Allow => allowed = true,
                Decision::Abstain => {}
            }
        }
        allowed || self.acl_default_allow
    }

    /// Whether any authorizer is configured (so delivery checks can be skipped when none is).
    pub fn has_authorizers(&self) -> bool {
        !self.authorizers.is_empty() || !self.acl_default_allow
    }

    /// Runs the transformers in order; returns the messages to route (possibly none).
    pub fn transform(&self, client: &ClientInfo, message: Message) -> Vec<Message> {
        if self.transformers.is_empty() {
            return vec![message];
        }
        let mut current = Some(message);
        let mut extra = Vec::new();
        for t in &self.transformers {
            let Some(m) = current.take() else { break };
            let result = t.transform(client, &m);
            extra.extend(result.additional);
            current = match result.action {
                TransformAction::Keep => Some(m),
                TransformAction::Drop => None,
                TransformAction::Replace(r) => Some(r),
            };
        }
        current.into_iter().chain(extra).collect()
    }
}
