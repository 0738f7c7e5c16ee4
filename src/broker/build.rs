//! Building a [`Runtime`] from a config: reads the password, ACL, token and certificate
//! files and loads the plugins. Pure with respect to the running broker, so a failure
//! changes nothing; `--check-config`, start-up and every reload run the same code.

use super::BrokerError;
use crate::config::{AdminConfig, Config, ConfigError};
use crate::core::{Runtime, Token};
use crate::transport;
use std::sync::Arc;

/// See [`Runtime::auth_fingerprint`].
fn auth_fingerprint(config: &Config, plugins: &crate::plugins::PluginSet) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    if plugins.plugins().iter().any(|p| p.is_authenticator()) {
        return None;
    }
    let s = &config.security;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!(
        "{:?}",
        (
            s.require_auth,
            s.allow_anonymous,
            &s.password_file,
            &s.users
        )
    )
    .hash(&mut h);
    if let Some(path) = &s.password_file {
        // Already read successfully by the chain; unreadable now means "changed".
        std::fs::read(path).ok().hash(&mut h);
    }
    Some(h.finish())
}

/// Builds the complete runtime state from a config: reads password and ACL files and loads
/// plugins. Pure with respect to the running broker, so a failure changes nothing.
pub(crate) fn build_runtime(config: Config, generation: u64) -> Result<Runtime, BrokerError> {
    build_runtime_with(config, generation, None)
}

/// [`build_runtime`] keeping the plugins' key-value stores of the running generation.
pub(crate) fn build_runtime_with(
    config: Config,
    generation: u64,
    plugin_kv: Option<Arc<crate::plugins::KvStores>>,
) -> Result<Runtime, BrokerError> {
    config.validate(std::path::Path::new("<config>"))?;
    // With file persistence a plugin's store is written beside the broker's own.
    let plugin_kv = plugin_kv.unwrap_or_else(|| {
        let p = &config.persistence;
        let dir =
            (p.storage_type == crate::config::StorageType::File).then(|| p.path.join("plugin-kv"));
        Arc::new(crate::plugins::KvStores::new(dir))
    });
    let admin_token = load_token(&config.admin)?;
    let mut security = crate::auth::build_security_chain(&config.security)?;
    // Plugins come after the built-in checks, in list order.
    let plugins = crate::plugins::PluginSet::load_configured(&config.plugins, &plugin_kv)?;
    plugins.append_to(&mut security);
    // A bridge's TLS files are checked now, so that a broken one refuses the config; the
    // bridge reads them again at each connection attempt (renewed certificates apply).
    for (i, b) in config.bridges.iter().enumerate() {
        if let Some(tls) = &b.tls {
            transport::tls::client_config(tls, &format!("bridges[{i}] ({}).tls", b.name))?;
        }
    }
    let effective = config.effective_listeners();
    let tls = transport::tls_configs(&effective, !config.listeners.is_empty())?;
    let listeners = effective
        .into_iter()
        .map(|l| (l.display_name(), Arc::new(l)))
        .collect();
    let auth_fingerprint = auth_fingerprint(&config, &plugins);
    Ok(Runtime {
        auth_fingerprint,
        config,
        generation,
        security,
        tls,
        listeners,
        admin_token,
        plugins,
        plugin_kv,
    })
}

/// Reads the admin bearer token: the first line of `admin.token_file`, trimmed.
pub(crate) fn load_token(cfg: &AdminConfig) -> Result<Option<Token>, ConfigError> {
    let Some(path) = &cfg.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        path: path.clone(),
        key: "admin.token_file".into(),
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.clone(),
            key: "admin.token_file".into(),
            reason: "the file is empty; its first line must be the token".into(),
        });
    }
    Ok(Some(Token::new(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(config: Config) -> Option<u64> {
        build_runtime(config, 1)
            .expect("valid config")
            .auth_fingerprint
    }

    /// A reload re-authenticates connected clients only when something authentication
    /// depends on changed: an ACL or limits edit does not, a password file edit does.
    #[test]
    fn auth_fingerprint_follows_what_authentication_depends_on() {
        let dir = std::env::temp_dir().join(format!("mqtt-broker-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwords = dir.join("passwd");
        let line = |user: &str| {
            format!(
                "{user}:{}\n",
                crate::auth::password::hash_password_with_salt(b"pw", b"0123456789abcdef", 10)
            )
        };
        std::fs::write(&passwords, line("alice")).unwrap();
        let mut config = Config::default();
        config.security.password_file = Some(passwords.clone());
        let base = fingerprint(config.clone());
        assert!(base.is_some());

        let mut acl_and_limits = config.clone();
        acl_and_limits.security.acl_default = Some(crate::auth::acl::AclDefault::Deny);
        acl_and_limits.limits.publish_rate = 7;
        assert_eq!(fingerprint(acl_and_limits), base);

        let mut anonymous = config.clone();
        anonymous.security.allow_anonymous = !anonymous.security.allow_anonymous;
        assert_ne!(fingerprint(anonymous), base);

        std::fs::write(&passwords, line("bob")).unwrap();
        assert_ne!(
            fingerprint(config),
            base,
            "the password file's content counts"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
