//! mqtt-broker plugin template in Rust: an authorizer that makes topic prefixes read-only.
//!
//! The decisions live in `policy.rs` (plain Rust, unit-tested natively); this file only
//! adapts them to the WIT interface. Build with `bash build.sh` (needs the
//! `wasm32-unknown-unknown` Rust target and `wasm-tools`).

pub mod policy;

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::policy::{Action, Policy, Verdict};
    use std::sync::OnceLock;

    wit_bindgen::generate!({
        path: "../../wit",
        world: "authorizer",
    });

    use exports::mqtt_broker::plugin::authorize::Guest as Authorize;
    use exports::mqtt_broker::plugin::lifecycle::Guest as Lifecycle;
    use mqtt_broker::plugin::host::{log, LogLevel};
    use mqtt_broker::plugin::types::{AclAction, AclRequest, ClientInfo, Decision};

    /// Set once by `init`; each instance has its own.
    static POLICY: OnceLock<Policy> = OnceLock::new();

    struct Plugin;

    impl Lifecycle for Plugin {
        fn init(config: Vec<(String, String)>) -> Result<(), String> {
            let policy = Policy::from_config(&config)?;
            log(
                LogLevel::Info,
                &format!("read-only prefixes: {:?}", policy.read_only_prefixes),
            );
            POLICY
                .set(policy)
                .map_err(|_| "init called twice".to_owned())
        }
    }

    impl Authorize for Plugin {
        fn authorize(client: ClientInfo, request: AclRequest) -> Decision {
            // Fail closed if the broker somehow calls before init.
            let Some(policy) = POLICY.get() else {
                return Decision::Deny;
            };
            let action = match request.action {
                AclAction::Publish => Action::Publish,
                AclAction::Subscribe => Action::Subscribe,
                AclAction::Deliver => Action::Deliver,
            };
            match policy.decide(action, client.username.as_deref(), &request.topic) {
                Verdict::Deny => Decision::Deny,
                Verdict::Abstain => Decision::Abstain,
            }
        }
    }

    export!(Plugin);
}
