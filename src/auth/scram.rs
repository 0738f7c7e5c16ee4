//! SCRAM-SHA-512 (RFC 5802, with SHA-512 as RFC 7677 does for SHA-256) as an MQTT 5
//! enhanced authentication method, served from Mosquitto password files.
//!
//! A `$7$` entry of a Mosquitto password file is PBKDF2-HMAC-SHA512(password, salt,
//! iterations) with a 64-byte output: exactly SCRAM's SaltedPassword. So the broker can run
//! SCRAM for every `$7$` user without knowing or storing anything else, and the password
//! never crosses the network. (`$6$` entries cannot: clients of those users keep sending a
//! password in CONNECT.)
//!
//! The exchange, in MQTT 5 packets (section 4.12):
//! 1. CONNECT with Authentication Method `SCRAM-SHA-512` and Data `n,,n=USER,r=CNONCE`;
//! 2. AUTH 0x18 with `r=CNONCE SNONCE,s=SALT,i=ITERATIONS`;
//! 3. AUTH 0x18 from the client with `c=biws,r=CNONCE SNONCE,p=PROOF`;
//! 4. CONNACK 0x00 with `v=SERVER SIGNATURE` (or AUTH 0x00 when re-authenticating).
//!
//! Pure: no I/O; the nonce comes from the operating system's random source.

use super::password::{PasswordFile, ScramSecret};
use crate::hooks::{AuthExchange, AuthStep, EnhancedAuthenticator};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha512};
use std::sync::Arc;

/// The method name in Authentication Method.
pub use crate::config::security::SCRAM_SHA_512;

type HmacSha512 = Hmac<Sha512>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 64] {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha512::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// SCRAM-SHA-512 over the users of the configured password files.
pub struct ScramSha512 {
    sources: Arc<Vec<PasswordFile>>,
}

impl ScramSha512 {
    /// Serves the `$7$` users of these password sources (the first that lists a user wins).
    pub fn new(sources: Arc<Vec<PasswordFile>>) -> Self {
        ScramSha512 { sources }
    }

    fn secret(&self, user: &str) -> Option<ScramSecret> {
        self.sources.iter().find_map(|s| s.scram_secret(user))
    }
}

impl EnhancedAuthenticator for ScramSha512 {
    fn method(&self) -> &str {
        SCRAM_SHA_512
    }

    fn knows(&self, username: &str) -> bool {
        self.secret(username).is_some()
    }

    fn start(&self, data: &[u8]) -> AuthStep {
        let Ok(first) = std::str::from_utf8(data) else {
            return AuthStep::Failure("SCRAM client-first-message is not UTF-8".into());
        };
        // gs2 header: no channel binding ("n,,"), no authorization identity.
        let Some(bare) = first.strip_prefix("n,,") else {
            return AuthStep::Failure(
                "SCRAM client-first-message must start with \"n,,\" (no channel binding)".into(),
            );
        };
        let (mut user, mut cnonce) = (None, None);
        for attr in bare.split(',') {
            if let Some(v) = attr.strip_prefix("n=") {
                user = Some(v.replace("=2C", ",").replace("=3D", "="));
            } else if let Some(v) = attr.strip_prefix("r=") {
                cnonce = Some(v.to_owned());
            }
        }
        let (Some(user), Some(cnonce)) = (user, cnonce) else {
            return AuthStep::Failure("SCRAM client-first-message without n= or r=".into());
        };
        if cnonce.is_empty() {
            return AuthStep::Failure("SCRAM client nonce is empty".into());
        }
        let Some(secret) = self.secret(&user) else {
            // Unknown user or a `$6$` entry: refused without telling which.
            return AuthStep::Failure(format!(
                "SCRAM: no PBKDF2 (`$7$`) password entry for user `{user}`"
            ));
        };
        let mut raw = [0u8; 18];
        if getrandom::getrandom(&mut raw).is_err() {
            return AuthStep::Failure("no random source for the SCRAM nonce".into());
        }
        let nonce = format!("{cnonce}{}", b64().encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            b64().encode(&secret.salt),
            secret.iterations
        );
        let exchange = Exchange {
            user,
            nonce,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            salted: secret.salted_password,
        };
        AuthStep::Continue(server_first.into_bytes(), Box::new(exchange))
    }
}

/// After server-first: waiting for the client's proof.
struct Exchange {
    user: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
    salted: [u8; 64],
}

impl AuthExchange for Exchange {
    fn next(self: Box<Self>, data: &[u8]) -> AuthStep {
        let Ok(last) = std::str::from_utf8(data) else {
            return AuthStep::Failure("SCRAM client-final-message is not UTF-8".into());
        };
        // `c=biws` is base64 of the "n,," header: no channel binding.
        let Some((without_proof, proof)) = last.rsplit_once(",p=") else {
            return AuthStep::Failure("SCRAM client-final-message without a proof".into());
        };
        if !without_proof.starts_with("c=biws,") {
            return AuthStep::Failure("SCRAM channel binding must be c=biws".into());
        }
        if without_proof.strip_prefix("c=biws,r=") != Some(self.nonce.as_str()) {
            return AuthStep::Failure("SCRAM nonce does not match".into());
        }
        let Ok(proof) = b64().decode(proof) else {
            return AuthStep::Failure("SCRAM proof is not base64".into());
        };
        if proof.len() != 64 {
            return AuthStep::Failure("SCRAM proof has the wrong length".into());
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_key = hmac(&self.salted, b"Client Key");
        let stored_key = Sha512::digest(client_key);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let recovered: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(&Sha512::digest(&recovered)[..], &stored_key[..]).into();
        if !matches {
            return AuthStep::Failure(format!("SCRAM: wrong password for user `{}`", self.user));
        }
        let server_key = hmac(&self.salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        AuthStep::Success {
            username: self.user,
            data: Some(format!("v={}", b64().encode(server_signature)).into_bytes()),
        }
    }
}

/// The client side of SCRAM-SHA-512, for tests and tools: the messages a client sends and
/// the check of the server's signature.
pub mod client {
    use super::*;

    /// `n,,n=USER,r=NONCE`.
    pub fn first(user: &str, nonce: &str) -> String {
        format!("n,,n={user},r={nonce}")
    }

    /// From server-first, the client-final-message and the server signature to expect.
    pub fn last(
        user: &str,
        password: &str,
        client_nonce: &str,
        server_first: &str,
    ) -> Option<(String, String)> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v.to_owned());
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = b64().decode(v).ok();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let (nonce, salt, iterations) = (nonce?, salt?, iterations?);
        if !nonce.starts_with(client_nonce) {
            return None;
        }
        let mut salted = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, iterations, &mut salted);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("n={user},r={client_nonce},{server_first},{without_proof}");
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha512::digest(client_key);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_signature = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
        Some((
            format!("{without_proof},p={}", b64().encode(proof)),
            format!("v={}", b64().encode(server_signature)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::hash_password_with_salt;

    fn scram() -> ScramSha512 {
        let file = PasswordFile::parse(
            &format!(
                "alice:{}\n",
                hash_password_with_salt(b"secret", b"0123456789ab", 101)
            ),
            std::path::Path::new("test"),
        )
        .unwrap();
        ScramSha512::new(Arc::new(vec![file]))
    }

    fn run(password: &str) -> AuthStep {
        let s = scram();
        let AuthStep::Continue(server_first, exchange) =
            s.start(client::first("alice", "cnonce").as_bytes())
        else {
            panic!("server-first expected")
        };
        let server_first = String::from_utf8(server_first).unwrap();
        let (last, _) = client::last("alice", password, "cnonce", &server_first).unwrap();
        exchange.next(last.as_bytes())
    }

    #[test]
    fn right_password_succeeds_with_the_server_signature() {
        let s = scram();
        let AuthStep::Continue(server_first, exchange) =
            s.start(client::first("alice", "abc").as_bytes())
        else {
            panic!("server-first expected")
        };
        let server_first = String::from_utf8(server_first).unwrap();
        assert!(server_first.starts_with("r=abc"));
        assert!(server_first.ends_with(",i=101"));
        let (last, expected) = client::last("alice", "secret", "abc", &server_first).unwrap();
        match exchange.next(last.as_bytes()) {
            AuthStep::Success { username, data } => {
                assert_eq!(username, "alice");
                assert_eq!(data, Some(expected.into_bytes()));
            }
            _ => panic!("success expected"),
        }
    }

    #[test]
    fn wrong_password_unknown_user_and_garbage_fail() {
        assert!(matches!(run("wrong"), AuthStep::Failure(_)));
        let s = scram();
        assert!(matches!(
            s.start(client::first("mallory", "n").as_bytes()),
            AuthStep::Failure(_)
        ));
        assert!(matches!(
            s.start(b"p=tls-unique,,n=alice,r=x"),
            AuthStep::Failure(_)
        ));
        assert!(matches!(s.start(b"\xff"), AuthStep::Failure(_)));
        let AuthStep::Continue(_, exchange) = s.start(client::first("alice", "n").as_bytes())
        else {
            panic!()
        };
        assert!(matches!(
            exchange.next(b"c=biws,r=other,p=AAAA"),
            AuthStep::Failure(_)
        ));
    }
}
