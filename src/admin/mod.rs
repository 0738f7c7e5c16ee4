//! The admin HTTP listener: Prometheus metrics, liveness and readiness probes, and a small
//! JSON API (stats, connected clients, disconnect a client, reload the config file).
//!
//! Built directly on hyper 1 (HTTP/1.1 only): a handful of fixed routes need no router
//! framework. The listener is bound at start (`admin.bind`, loopback by default) and an
//! optional bearer token (`admin.token_file`, re-read on every reload) protects every
//! endpoint except the probes, which orchestrators call without credentials.

mod routes;

use crate::broker::{BrokerError, Shared};
use crate::config::{AdminConfig, ConfigError};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

/// The admin API's bearer token; its `Debug` output never shows it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// The secret itself, for the comparison.
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Reads the admin bearer token: the first line of `admin.token_file`, trimmed.
pub(crate) fn load_token(cfg: &AdminConfig) -> Result<Option<Token>, ConfigError> {
    let Some(path) = &cfg.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.clone(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.clone(),
            key: "admin.token_file".into(),
            reason: "the file is empty; its first line must be the token".into(),
        });
    }
    Ok(Some(Token(Arc::from(token))))
}

/// Refuses a reload that changes where the admin listener runs: it is bound once at start
/// (the token file, in contrast, is re-read by every reload).
pub(crate) fn check_reload(current: &AdminConfig, new: &AdminConfig) -> Result<(), BrokerError> {
    if current.enabled != new.enabled {
        return Err(BrokerError::NotReloadable("admin.enabled"));
    }
    if current.bind != new.bind {
        return Err(BrokerError::NotReloadable("admin.bind"));
    }
    Ok(())
}

/// Binds the admin listener (when enabled) and serves it until the broker has shut down.
///
/// A bind failure is logged at error level but does not stop the broker: devices keep
/// their MQTT service when, say, another process holds the metrics port.
/// `BrokerHandle::admin_addr()` is then `None`.
pub(crate) async fn start(shared: &Arc<Shared>) {
    let cfg = shared.runtime.load().config.admin.clone();
    if !cfg.enabled {
        return;
    }
    let listener = match TcpListener::bind(cfg.bind).await {
        Ok(l) => l,
        Err(e) => {
            error!(addr = %cfg.bind, error = %e, "cannot bind the admin listener; metrics, probes and the admin API are unavailable");
            return;
        }
    };
    let addr = listener.local_addr().unwrap_or(cfg.bind);
    *shared.ops.admin_addr.lock() = Some(addr);
    info!(%addr, token = cfg.token_file.is_some(), "admin API listening");
    tokio::spawn(accept_loop(listener, shared.clone()));
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let stop = shared.ops.stop.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(routes::handle(&shared, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                // A client that never finishes its headers is dropped (slowloris).
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!(%peer, error = %e, "admin connection ended with an error");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The response body type of every route.
type Body = Full<Bytes>;
