//! The built-in hooks: password checks from `security.password_file` and `security.users`,
//! and ACL decisions from inline `security.acl` rules and `security.acl_file`.
//!
//! They implement the same traits as Wasm plugins and come first in the chain.

use super::acl::AclDefault;
use super::acl::{Access, AclFile, Action, InlineAcl};
use super::password::{PasswordCheck, PasswordFile};
use crate::config::SecurityConfig;
use crate::hooks::{
    AclAction, AclRequest, AuthOutcome, Authenticator, Authorizer, ClientInfo, Credentials,
    Decision, DenyReason, SecurityChain,
};
use std::sync::Arc;
use thiserror::Error;

/// A password or ACL source that could not be loaded.
#[derive(Debug, Error)]
pub enum SecurityConfigError {
    /// The password file or an inline user is invalid; `key` names the config key.
    #[error("{key}: {source}")]
    Password {
        /// `security.password_file` or `security.users`.
        key: &'static str,
        /// What is wrong.
        source: super::password::AuthError,
    },
    /// The ACL file is invalid.
    #[error("security.acl_file: {0}")]
    Acl(#[from] super::acl::AclError),
}

/// Checks user names and passwords against the password file and inline users.
pub struct PasswordAuthenticator {
    sources: Arc<Vec<PasswordFile>>,
}

impl Authenticator for PasswordAuthenticator {
    fn name(&self) -> &str {
        "password-file"
    }

    fn authenticate(&self, _client: &ClientInfo, credentials: &Credentials<'_>) -> AuthOutcome {
        let Some(username) = credentials.username else {
            return AuthOutcome::Abstain;
        };
        if credentials.certificate_verified && credentials.password.is_none() {
            // The certificate already authenticated this user (Mosquitto's use_identity_as_username).
            return AuthOutcome::Abstain;
        }
        let password = credentials.password.unwrap_or(&[]);
        for source in self.sources.iter() {
            match source.verify(username, password) {
                PasswordCheck::Ok => return AuthOutcome::Allow,
                PasswordCheck::BadPassword => {
                    return AuthOutcome::Deny(crate::hooks::Refusal::new(
                        DenyReason::BadCredentials,
                        "wrong password",
                    ))
                }
                PasswordCheck::UnknownUser => {}
            }
        }
        AuthOutcome::Abstain
    }
}

/// Inline `security.acl` rules: the first matching rule decides.
pub struct InlineAclAuthorizer {
    rules: InlineAcl,
}

impl Authorizer for InlineAclAuthorizer {
    fn name(&self) -> &str {
        "acl-rules"
    }

    fn authorize(&self, client: &ClientInfo, request: &AclRequest<'_>) -> Decision {
        let user = client.username.as_deref();
        let verdict = match request.action {
            AclAction::Publish => {
                self.rules
                    .decide_topic(user, &client.client_id, Action::Publish, request.topic)
            }
            AclAction::Deliver => {
                self.rules
                    .decide_topic(user, &client.client_id, Action::Subscribe, request.topic)
            }
            AclAction::Subscribe => {
                self.rules
                    .decide_subscribe(user, &client.client_id, request.topic)
            }
        };
        match verdict {
            Some(true) => Decision::Allow,
            Some(false) => Decision::Deny,
            None => Decision::Abstain,
        }
    }
}

/// A Mosquitto ACL file: authoritative, as in Mosquitto, so what it does not grant is denied.
pub struct AclFileAuthorizer {
    file: AclFile,
}

impl Authorizer for AclFileAuthorizer {
    fn name(&self) -> &str {
        "acl-file"
    }

    fn authorize(&self, client: &ClientInfo, request: &AclRequest<'_>) -> Decision {
        let user = client.username.as_deref();
        let allowed = match request.action {
            AclAction::Publish => {
                self.file
                    .check_topic(user, &client.client_id, Access::Write, request.topic)
            }
            AclAction::Deliver => {
                self.file
                    .check_topic(user, &client.client_id, Access::Read, request.topic)
            }
            AclAction::Subscribe => {
                self.file
                    .check_subscribe(user, &client.client_id, request.topic)
            }
        };
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

/// Builds the chain of built-in hooks from `security:` (plugins are appended by the caller).
///
/// Reads the password and ACL files, so it runs off the hot path: at start and on reload.
pub fn build_security_chain(
    security: &SecurityConfig,
) -> Result<SecurityChain, SecurityConfigError> {
    let mut chain = SecurityChain {
        require_auth: security.require_auth,
        allow_anonymous: security.allow_anonymous,
        ..Default::default()
    };
    let mut sources = Vec::new();
    if let Some(path) = &security.password_file {
        sources.push(
            PasswordFile::load(path).map_err(|source| SecurityConfigError::Password {
                key: "security.password_file",
                source,
            })?,
        );
    }
    if !security.users.is_empty() {
        sources.push(PasswordFile::from_users(&security.users).map_err(|source| {
            SecurityConfigError::Password {
                key: "security.users",
                source,
            }
        })?);
    }
    if !sources.is_empty() {
        let sources = Arc::new(sources);
        chain.refuse_unknown_users = true;
        if security
            .auth_methods
            .iter()
            .any(|m| m == super::scram::SCRAM_SHA_512)
        {
            chain
                .enhanced
                .push(Arc::new(super::scram::ScramSha512::new(sources.clone())));
        }
        chain
            .authenticators
            .push(Arc::new(PasswordAuthenticator { sources }));
    }
    let mut any_acl = false;
    if !security.acl.is_empty() {
        any_acl = true;
        chain.authorizers.push(Arc::new(InlineAclAuthorizer {
            rules: InlineAcl::new(security.acl.clone()),
        }));
    }
    if let Some(path) = &security.acl_file {
        any_acl = true;
        chain.authorizers.push(Arc::new(AclFileAuthorizer {
            file: AclFile::load(path)?,
        }));
    }
    // Without any ACL the broker is open; once rules exist, what they do not allow is denied
    // unless the operator says otherwise (Mosquitto behaves the same with an acl_file).
    chain.acl_default_allow = match security.acl_default {
        Some(AclDefault::Allow) => true,
        Some(AclDefault::Deny) => false,
        None => !any_acl,
    };
    Ok(chain)
}
