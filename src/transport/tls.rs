//! TLS for `tls` and `wss` listeners: server configs built from PEM files (TLS 1.2 and 1.3
//! only, via rustls), optional client-certificate verification, and the client identity.

use super::TransportError;
use crate::config::{BridgeTls, ListenerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bad = |reason: String| TransportError::Certificate {
        key: field.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    read_key_for(path, "key_file")
}

fn read_key_for(path: &Path, field: &str) -> Result<PrivateKeyDer<'static>, TransportError> {
    let bad = |reason: String| TransportError::Certificate {
        key: field.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        bad(format!(
            "no usable private key (PKCS#8, RSA or EC PEM expected): {e}"
        ))
    })
}

/// Builds the rustls server config of one listener from its files.
///
/// Every problem names the file and the reason, so it can be reported at start, at
/// `--check-config` and on reload.
pub fn server_config(l: &ListenerConfig) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let (Some(cert_file), Some(key_file)) = (&l.cert_file, &l.key_file) else {
        return Err(TransportError::Config(format!(
            "listener {} needs cert_file and key_file",
            l.display_name()
        )));
    };
    let certs = read_certs(cert_file, "cert_file")?;
    let key = read_key(key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TransportError::Config(e.to_string()))?;
    let builder = match &l.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "client_ca_file")? {
                roots.add(c).map_err(|e| TransportError::Certificate {
                    key: "client_ca_file".to_owned(),
                    path: ca.clone(),
                    reason: format!("invalid CA certificate: {e}"),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if l.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| TransportError::Certificate {
                key: "client_ca_file".to_owned(),
                path: ca.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder
            .with_single_cert(certs, key)
            .map_err(|e| TransportError::Certificate {
                key: "key_file".to_owned(),
                path: key_file.clone(),
                reason: format!("key does not match the certificate or is unsupported: {e}"),
            })?;
    if l.protocol.is_websocket() {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}

/// Subject common name of the verified client certificate, if any.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Builds the rustls client config of a bridge's remote connection: the remote's
/// certificate checked against `ca_file` (the system's roots when absent), an optional
/// client certificate, ALPN. `key` prefixes the config keys named in errors.
pub fn client_config(
    tls: &BridgeTls,
    key: &str,
) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in read_certs(path, &format!("{key}.ca_file"))? {
                roots.add(cert).map_err(|e| TransportError::Certificate {
                    key: format!("{key}.ca_file"),
                    path: path.clone(),
                    reason: format!("unusable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            let certs = rustls_native_certs::load_native_certs().map_err(|e| {
                TransportError::Config(format!(
                    "{key}: cannot read the system's CA certificates ({e}); set {key}.ca_file"
                ))
            })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TransportError::Config(format!(
                    "{key}: the system has no CA certificates; set {key}.ca_file"
                )));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| TransportError::Config(e.to_string()))?
    .with_root_certificates(roots);
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(k)) => {
            let chain = read_certs(cert, &format!("{key}.cert_file"))?;
            let private = read_key_for(k, &format!("{key}.key_file"))?;
            builder.with_client_auth_cert(chain, private).map_err(|e| {
                TransportError::Certificate {
                    key: format!("{key}.key_file"),
                    path: k.clone(),
                    reason: format!("does not match cert_file: {e}"),
                }
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
