//! Built-in authentication and authorization, compatible with Mosquitto's `password_file` and
//! `acl_file` formats, plus the inline `security.users` / ACL rule types of the YAML config.
//!
//! Everything here is pure or nearly so (reading and atomically writing one file); the broker
//! decides the order in which inline rules, the ACL file and the default policy are consulted.
//!
//! The YAML shapes of inline users and rules live in `crate::config::security`; this module
//! gives them meaning and must not import the broker's state.

pub mod acl;
pub mod builtin;
pub mod password;
pub mod scram;

pub use acl::{
    filter_is_subset, filters_overlap, Access, AclDefault, AclError, AclFile, AclRule, Action,
    Effect, InlineAcl, RuleScope,
};
pub use builtin::{build_security_chain, SecurityConfigError};
pub use password::{
    create_with_user, delete_user, hash_password, hash_password_with_salt, set_user,
    upgrade_plaintext, AuthError, HashError, PasswordCheck, PasswordFile, PasswordHash, UserConfig,
};
