//! The admin HTTP listener: Prometheus metrics, liveness and readiness probes, and a small
//! JSON API (stats, connected clients, disconnect a client, reload the config file).
//!
//! Built directly on hyper 1 (HTTP/1.1 only): a handful of fixed routes need no router
//! framework. The listener is bound at start (`admin.bind`, loopback by default) and an
//! optional bearer token (`admin.token_file`, re-read on every reload) protects every
//! endpoint except the probes, which orchestrators call without credentials.

//!
//! Also here, because they are the other operator surfaces and reach the broker the same
//! way: the Prometheus rendering ([`prometheus`]), the `$SYS` topics ([`sys`]) and the
//! config watcher ([`watch`]). All of them hold an `Arc<dyn Control>`
//! ([`crate::core::control`]) and never import the server module that wires them.

mod api;
mod assets;
pub mod prometheus;
mod routes;
pub(crate) mod sys;
pub mod watch;

use crate::config::AdminConfig;
use crate::core::control::Control;
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

/// Binds the admin listener (when enabled) and serves it until the broker has shut down.
///
/// A bind failure is logged at error level but does not stop the broker: devices keep
/// their MQTT service when, say, another process holds the metrics port.
/// `BrokerHandle::admin_addr()` is then `None`.
pub(crate) async fn start(control: Arc<dyn Control>) {
    let cfg: AdminConfig = control.runtime().config.admin.clone();
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
    control.set_admin_addr(addr);
    info!(%addr, token = cfg.token_file.is_some(), "admin API listening");
    tokio::spawn(accept_loop(listener, control));
}

async fn accept_loop(listener: TcpListener, control: Arc<dyn Control>) {
    let stop = control.stopped();
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
        let control = control.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(routes::handle(&control, req).await) }
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

/// The response body type of every route: a whole body, or a stream (the live tail).
type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A response body that is all there at once.
fn full(bytes: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    Full::new(bytes.into()).boxed()
}
