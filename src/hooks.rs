//! Extension points: authentication, authorization and message transforms.
//!
//! Each is a trait; the built-in password/ACL files (`crate::auth`) and Wasm plugins
//! (`crate::plugins`) are both implementations. A [`SecurityChain`] holds them in the
//! configured order and combines their answers: the first `Deny` wins, otherwise any
//! `Allow` allows, and when every hook abstains the configured default decides.
//! Calls are synchronous and bounded (plugins run under a per-call time limit), so they
//! never hold a lock that another connection needs.
//!
//! Owns the traits and the chain; must not import their implementations (`auth`,
//! `plugins`) or the broker's state.

pub use crate::model::ClientInfo;
use crate::model::Message;
use crate::protocol::{ConnectReturnCode, QoS};
use std::collections::HashMap;
use std::sync::Arc;

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

/// Why an authenticator refused a client; maps to a CONNACK return code (3.1.1) and
/// reason code (5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// 3.1.1 0x04 / 5 0x86: the user is known but the password is wrong.
    BadCredentials,
    /// 3.1.1 0x05 / 5 0x87: the client may not connect.
    NotAuthorized,
    /// 3.1.1 0x05 / 5 0x8A: the client is banned.
    Banned,
    /// 3.1.1 0x03 / 5 0x89: the server is busy; try again later.
    ServerBusy,
    /// 3.1.1 0x03 / 5 0x97: a quota of the client (or its account) is used up.
    QuotaExceeded,
    /// 3.1.1 0x03 / 5 0x9F: the client connects too often.
    ConnectionRateExceeded,
}

impl DenyReason {
    /// The CONNACK return code for this reason (MQTT 3.1 and 3.1.1).
    pub fn return_code(self) -> ConnectReturnCode {
        match self {
            DenyReason::BadCredentials => ConnectReturnCode::BadUsernameOrPassword,
            DenyReason::NotAuthorized | DenyReason::Banned => ConnectReturnCode::NotAuthorized,
            DenyReason::ServerBusy
            | DenyReason::QuotaExceeded
            | DenyReason::ConnectionRateExceeded => ConnectReturnCode::ServerUnavailable,
        }
    }

    /// The CONNACK reason code for this reason (MQTT 5, section 3.2.2.2).
    pub fn v5_reason(self) -> u8 {
        use crate::protocol::reason;
        match self {
            DenyReason::BadCredentials => reason::BAD_USERNAME_OR_PASSWORD,
            DenyReason::NotAuthorized => reason::NOT_AUTHORIZED,
            DenyReason::Banned => reason::BANNED,
            DenyReason::ServerBusy => reason::SERVER_BUSY,
            DenyReason::QuotaExceeded => reason::QUOTA_EXCEEDED,
            DenyReason::ConnectionRateExceeded => reason::CONNECTION_RATE_EXCEEDED,
        }
    }
}

/// A refused authentication: why, what the log says, and what an MQTT 5 client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reason (the CONNACK code).
    pub reason: DenyReason,
    /// For the broker's log (never sent to the client).
    pub log: String,
    /// Sent to an MQTT 5 client as the CONNACK's Reason String (never to 3.1.1 clients).
    pub reason_string: Option<String>,
}

impl Refusal {
    /// A refusal with a log message and nothing for the client.
    pub fn new(reason: DenyReason, log: impl Into<String>) -> Self {
        Refusal {
            reason,
            log: log.into(),
            reason_string: None,
        }
    }
}

/// Answer of one authenticator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// These credentials are good.
    Allow,
    /// Refuse the client.
    Deny(Refusal),
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
    /// Whether the answer depends only on the client and the request, so that it may be
    /// remembered for the rest of the connection (see [`AclCache`]). Policies that look at
    /// the clock or at outside state say no.
    fn cacheable(&self) -> bool {
        true
    }
    /// Answers one request and says whether this answer may be remembered: an answer
    /// standing in for a failed call (a plugin that trapped) must not outlive the failure.
    fn authorize_for_cache(
        &self,
        client: &ClientInfo,
        request: &AclRequest<'_>,
    ) -> (Decision, bool) {
        (self.authorize(client, request), self.cacheable())
    }
}

/// The chain's decisions for one client, remembered per topic until the client reconnects or
/// a reload publishes a new generation, so that a plugin authorizer runs once per topic and
/// not once per message.
#[derive(Debug, Default)]
pub struct AclCache {
    /// Generation of the runtime whose chain made the decisions.
    generation: u64,
    /// The client they were made for (held, so that its address cannot be reused).
    client: Option<Arc<ClientInfo>>,
    /// Per topic: which (action, QoS, retain) combinations are known, and which are allowed.
    /// Boxed and made on first use: every connection and session has a cache, most idle
    /// clients never fill it.
    entries: Option<Box<AclDecisions>>,
}

/// Per topic: the (action, QoS, retain) bits known, and those allowed. Hashed with foldhash
/// (randomly seeded, like the standard hasher, at a fraction of SipHash's cost per lookup: it
/// is looked up for every message and delivery once an authorizer is configured).
type AclDecisions = HashMap<Arc<str>, (u32, u32), foldhash::fast::RandomState>;

impl AclCache {
    /// Most topics remembered per client; beyond it the cache starts over (a client that
    /// publishes to ever-new topics gains nothing from it and must not grow without bound).
    pub const MAX_TOPICS: usize = 1024;

    /// Forgets every decision and the client they were made for: a connection took the
    /// session over (maybe as someone else); the next check asks for the session's client.
    pub fn forget(&mut self) {
        self.entries = None;
        self.client = None;
    }

    /// Starts over for `client` in `generation`.
    fn reset(&mut self, generation: u64, client: Arc<ClientInfo>) {
        self.entries = None;
        self.generation = generation;
        self.client = Some(client);
    }

    fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    fn bit(request: &AclRequest<'_>) -> u32 {
        let action = match request.action {
            AclAction::Publish => 0,
            AclAction::Subscribe => 1,
            AclAction::Deliver => 2,
        };
        1 << (action * 6 + (request.qos as u32) * 2 + u32::from(request.retain))
    }
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

/// One step of an MQTT 5 enhanced authentication exchange (section 4.12).
pub enum AuthStep {
    /// Send this data to the client in AUTH 0x18 (continue authentication) and hand its
    /// answer to the exchange.
    Continue(Vec<u8>, Box<dyn AuthExchange>),
    /// Authenticated as `username`; `data` (if any) goes to the client in CONNACK, or in
    /// AUTH 0x00 after a re-authentication.
    Success {
        /// The authenticated user (the client's user name from now on).
        username: String,
        /// Final server data.
        data: Option<Vec<u8>>,
    },
    /// Refused; the text is for the broker's log.
    Failure(String),
}

/// An enhanced authentication exchange in progress: takes the client's next data.
pub trait AuthExchange: Send {
    /// The client's next AUTH data.
    fn next(self: Box<Self>, data: &[u8]) -> AuthStep;
}

/// An MQTT 5 enhanced authentication method (Authentication Method in CONNECT or AUTH):
/// a challenge/response exchange of AUTH packets, also used to re-authenticate.
pub trait EnhancedAuthenticator: Send + Sync {
    /// The method name clients put in Authentication Method (e.g. `SCRAM-SHA-512`).
    fn method(&self) -> &str;
    /// Starts an exchange with the client's first Authentication Data.
    fn start(&self, data: &[u8]) -> AuthStep;
    /// Whether `username` could still authenticate (checked for connected clients after a
    /// reload with `reauthorize_on_reload`).
    fn knows(&self, username: &str) -> bool;
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
    /// MQTT 5 enhanced authentication methods offered, by method name.
    pub enhanced: Vec<Arc<dyn EnhancedAuthenticator>>,
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
    /// The enhanced authentication method called `method`, if offered.
    pub fn enhanced(&self, method: &str) -> Option<&Arc<dyn EnhancedAuthenticator>> {
        self.enhanced.iter().find(|e| e.method() == method)
    }

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
    ) -> Result<(), Refusal> {
        let mut allowed_by = credentials
            .certificate_verified
            .then_some("tls-client-certificate");
        for a in &self.authenticators {
            match a.authenticate(client, credentials) {
                AuthOutcome::Deny(mut refusal) => {
                    refusal.log = format!("{}: {}", a.name(), refusal.log);
                    return Err(refusal);
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
                Err(Refusal::new(DenyReason::NotAuthorized, "unknown user"))
            }
            Some(_) => Ok(()),
            None if self.require_auth => Err(Refusal::new(
                DenyReason::NotAuthorized,
                "authentication required",
            )),
            None if !self.allow_anonymous => Err(Refusal::new(
                DenyReason::NotAuthorized,
                "anonymous clients are not allowed",
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

    /// [`Self::authorize`], also saying whether every answer that counted may be cached.
    fn decide(&self, client: &ClientInfo, request: &AclRequest<'_>) -> (bool, bool) {
        let mut allowed = false;
        let mut cacheable = true;
        for a in &self.authorizers {
            let (decision, may_cache) = a.authorize_for_cache(client, request);
            cacheable &= may_cache;
            match decision {
                Decision::Deny => return (false, cacheable),
                Decision::Allow => allowed = true,
                Decision::Abstain => {}
            }
        }
        (allowed || self.acl_default_allow, cacheable)
    }

    /// [`Self::authorize`], answered from `cache` when the same request was decided before
    /// in this `generation` and every authorizer allows caching.
    pub fn authorize_cached(
        &self,
        client: &Arc<ClientInfo>,
        request: &AclRequest<'_>,
        cache: &mut AclCache,
        generation: u64,
    ) -> bool {
        if self.authorizers.is_empty() {
            return self.acl_default_allow;
        }
        let same_client = cache
            .client
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, client));
        if cache.generation != generation || !same_client {
            cache.reset(generation, client.clone());
        }
        self.authorize_from(cache, request)
    }

    /// [`Self::authorize_cached`] with a session's cache, for a delivery to that session:
    /// the client is the one the cache was filled for, and `client` is asked only when the
    /// cache has none (new, or forgotten when another connection took the session over:
    /// see [`AclCache::forget`]). A cache hit then costs one lookup, without reading the
    /// session's client.
    pub fn authorize_cached_for_session(
        &self,
        request: &AclRequest<'_>,
        cache: &mut AclCache,
        generation: u64,
        client: impl FnOnce() -> Arc<ClientInfo>,
    ) -> bool {
        if self.authorizers.is_empty() {
            return self.acl_default_allow;
        }
        if cache.generation != generation || cache.client.is_none() {
            cache.reset(generation, client());
        }
        self.authorize_from(cache, request)
    }

    /// Answers from `cache` (made for its client in this generation) or decides and
    /// remembers the answer.
    fn authorize_from(&self, cache: &mut AclCache, request: &AclRequest<'_>) -> bool {
        let bit = AclCache::bit(request);
        if let Some((known, allowed)) = cache.entries.as_ref().and_then(|e| e.get(request.topic)) {
            if known & bit != 0 {
                return allowed & bit != 0;
            }
        }
        let Some(client) = cache.client.clone() else {
            // Not reached: both callers `reset` a cache without a client first. Deny rather
            // than panic should that ever change.
            return false;
        };
        let (allowed, cacheable) = self.decide(&client, request);
        if !cacheable {
            return allowed;
        }
        if cache.len() >= AclCache::MAX_TOPICS
            && !cache
                .entries
                .as_ref()
                .is_some_and(|e| e.contains_key(request.topic))
        {
            cache.entries = None;
        }
        let entry = cache
            .entries
            .get_or_insert_with(Default::default)
            .entry(Arc::from(request.topic))
            .or_insert((0, 0));
        entry.0 |= bit;
        if allowed {
            entry.1 |= bit;
        }
        allowed
    }

    /// Whether any authorizer is configured (so delivery checks can be skipped when none is).
    pub fn has_authorizers(&self) -> bool {
        !self.authorizers.is_empty() || !self.acl_default_allow
    }

    /// Runs the transformers in order; returns the messages to route (possibly none). An
    /// iterator, not a vector: the common answer, the message itself, then costs no
    /// allocation (this runs for every PUBLISH).
    pub fn transform(
        &self,
        client: &ClientInfo,
        message: Message,
    ) -> std::iter::Chain<std::option::IntoIter<Message>, std::vec::IntoIter<Message>> {
        if self.transformers.is_empty() {
            return Some(message).into_iter().chain(Vec::new());
        }
        let mut current = Some(message);
        let mut extra = Vec::new();
        for t in &self.transformers {
            let Some(m) = current.take() else { break };
            let result = t.transform(client, &m);
            if extra.is_empty() {
                // Usually the only transformer that adds: take its vector, no copy.
                extra = result.additional;
            } else {
                extra.extend(result.additional);
            }
            current = match result.action {
                TransformAction::Keep => Some(m),
                TransformAction::Drop => None,
                TransformAction::Replace(r) => Some(r),
            };
        }
        current.into_iter().chain(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TransportKind;
    use crate::protocol::ProtocolLevel;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Allows everything but `secret/...`, counting calls; `fail` makes it answer as a failed
    /// plugin does (deny, not cacheable).
    struct Counting {
        calls: AtomicU32,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Authorizer for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn authorize(&self, client: &ClientInfo, request: &AclRequest<'_>) -> Decision {
            self.authorize_for_cache(client, request).0
        }
        fn authorize_for_cache(
            &self,
            _: &ClientInfo,
            request: &AclRequest<'_>,
        ) -> (Decision, bool) {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.fail.load(Ordering::Relaxed) {
                return (Decision::Deny, false);
            }
            let d = if request.topic.starts_with("secret/") {
                Decision::Deny
            } else {
                Decision::Allow
            };
            (d, true)
        }
    }

    fn setup() -> (SecurityChain, Arc<Counting>, Arc<ClientInfo>) {
        let counting = Arc::new(Counting {
            calls: AtomicU32::new(0),
            fail: false.into(),
        });
        let mut chain = SecurityChain::open();
        chain.acl_default_allow = false;
        chain.authorizers.push(counting.clone());
        let client = Arc::new(ClientInfo {
            client_id: Arc::from("c"),
            username: None,
            peer: "127.0.0.1:1".parse().unwrap(),
            transport: TransportKind::Tcp,
            tls_identity: None,
            protocol: ProtocolLevel::V311,
            clean_session: true,
        });
        (chain, counting, client)
    }

    fn publish(topic: &str, qos: QoS) -> AclRequest<'_> {
        AclRequest {
            action: AclAction::Publish,
            topic,
            qos,
            retain: false,
        }
    }

    #[test]
    fn acl_cache_answers_repeats_without_calling_the_chain() {
        let (chain, counting, client) = setup();
        let mut cache = AclCache::default();
        for _ in 0..10 {
            assert!(chain.authorize_cached(
                &client,
                &publish("a/b", QoS::AtMostOnce),
                &mut cache,
                1
            ));
            assert!(!chain.authorize_cached(
                &client,
                &publish("secret/x", QoS::AtMostOnce),
                &mut cache,
                1
            ));
        }
        assert_eq!(counting.calls.load(Ordering::Relaxed), 2);
        // Another QoS or action is another question.
        assert!(chain.authorize_cached(&client, &publish("a/b", QoS::AtLeastOnce), &mut cache, 1));
        let deliver = AclRequest {
            action: AclAction::Deliver,
            ..publish("a/b", QoS::AtMostOnce)
        };
        assert!(chain.authorize_cached(&client, &deliver, &mut cache, 1));
        assert_eq!(counting.calls.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn acl_cache_is_dropped_on_a_new_generation_or_client() {
        let (chain, counting, client) = setup();
        let mut cache = AclCache::default();
        chain.authorize_cached(&client, &publish("a", QoS::AtMostOnce), &mut cache, 1);
        chain.authorize_cached(&client, &publish("a", QoS::AtMostOnce), &mut cache, 2);
        assert_eq!(
            counting.calls.load(Ordering::Relaxed),
            2,
            "a reload forgets"
        );
        let reconnected = Arc::new((*client).clone());
        chain.authorize_cached(&reconnected, &publish("a", QoS::AtMostOnce), &mut cache, 2);
        assert_eq!(
            counting.calls.load(Ordering::Relaxed),
            3,
            "a new connection forgets"
        );
    }

    #[test]
    fn a_session_cache_asks_for_its_client_only_when_it_has_none() {
        let (chain, counting, client) = setup();
        let mut cache = AclCache::default();
        let asked = AtomicU32::new(0);
        let ask = || {
            asked.fetch_add(1, Ordering::Relaxed);
            client.clone()
        };
        let deliver = |topic| AclRequest {
            action: AclAction::Deliver,
            ..publish(topic, QoS::AtMostOnce)
        };
        for _ in 0..5 {
            assert!(chain.authorize_cached_for_session(&deliver("a"), &mut cache, 1, ask));
            assert!(!chain.authorize_cached_for_session(&deliver("secret/x"), &mut cache, 1, ask));
        }
        assert_eq!(
            asked.load(Ordering::Relaxed),
            1,
            "hits never read the session's client"
        );
        assert_eq!(counting.calls.load(Ordering::Relaxed), 2);
        // A takeover forgets the client and its answers: both are asked again.
        cache.forget();
        assert!(chain.authorize_cached_for_session(&deliver("a"), &mut cache, 1, ask));
        assert_eq!(asked.load(Ordering::Relaxed), 2);
        assert_eq!(counting.calls.load(Ordering::Relaxed), 3);
        // So does a reload.
        assert!(chain.authorize_cached_for_session(&deliver("a"), &mut cache, 2, ask));
        assert_eq!(asked.load(Ordering::Relaxed), 3);
        assert_eq!(counting.calls.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn acl_cache_never_keeps_an_answer_for_a_failed_call() {
        let (chain, counting, client) = setup();
        let mut cache = AclCache::default();
        counting.fail.store(true, Ordering::Relaxed);
        assert!(!chain.authorize_cached(&client, &publish("a", QoS::AtMostOnce), &mut cache, 1));
        counting.fail.store(false, Ordering::Relaxed);
        assert!(chain.authorize_cached(&client, &publish("a", QoS::AtMostOnce), &mut cache, 1));
        assert_eq!(counting.calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn acl_cache_is_bounded() {
        let (chain, _, client) = setup();
        let mut cache = AclCache::default();
        for i in 0..(AclCache::MAX_TOPICS * 3) {
            let topic = format!("t/{i}");
            chain.authorize_cached(&client, &publish(&topic, QoS::AtMostOnce), &mut cache, 1);
            assert!(cache.len() <= AclCache::MAX_TOPICS);
        }
    }
}
