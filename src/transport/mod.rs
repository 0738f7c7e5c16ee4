//! Listeners and the byte streams they produce: TCP, TLS, WebSocket and WebSocket over TLS.
//!
//! Every transport ends in an `AsyncRead + AsyncWrite` stream handed to
//! [`crate::connection::serve`], so sessions, routing and hooks never know how a client
//! arrived, except through the `transport` field of its `ClientInfo`.

pub(crate) mod listeners;
pub mod tls;
pub mod ws;

use crate::broker::Shared;
use crate::config::{ListenerConfig, TransportKind};
use crate::connection::{self, ConnectionInfo};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

/// Transport-layer failures.
#[derive(Debug, Error)]
pub enum TransportError {
    /// A certificate, key or CA file is missing or malformed.
    #[error("{path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A listener is configured inconsistently.
    #[error("{0}")]
    Config(String),
    /// A TLS or WebSocket handshake failed.
    #[error("{0}")]
    Handshake(String),
}

/// Binds a listener socket (with SO_REUSEADDR, so a restart can rebind at once).
pub(crate) async fn bind(cfg: &ListenerConfig) -> std::io::Result<TcpListener> {
    let socket = if cfg.bind.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(cfg.bind)?;
    socket.listen(1024)
}

/// Accepts connections until the task is aborted.
///
/// Per-connection settings (path, limits, client certificates) are read from the current
/// runtime at each accept, so a reload changes them without rebinding the socket.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    bound: ListenerConfig,
    shared: Arc<Shared>,
    connections: CancellationToken,
) {
    let listener_conns = Arc::new(AtomicUsize::new(0));
    let name: Arc<str> = bound.display_name().into();
    let bound = Arc::new(bound);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning; existing clients are unaffected.
                error!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            warn!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let runtime = shared.runtime.load();
        let cfg = runtime
            .listeners
            .get(&*name)
            .cloned()
            .unwrap_or_else(|| bound.clone());
        let over_listener_limit = cfg
            .max_connections
            .is_some_and(|max| listener_conns.load(Ordering::Relaxed) >= max);
        let connect_timeout = runtime.config.server.connect_timeout.get();
        drop(runtime);
        let info = ConnectionInfo {
            peer,
            transport: cfg.protocol,
            listener: name.clone(),
            listener_conns: listener_conns.clone(),
            over_listener_limit,
            deadline: Instant::now() + connect_timeout,
            tls_identity: None,
            use_identity_as_username: cfg.use_identity_as_username,
            cancel: connections.child_token(),
        };
        if cfg.protocol == TransportKind::Tcp {
            tokio::spawn(connection::serve(shared.clone(), stream, info));
        } else {
            let span = tracing::info_span!("handshake", %peer, transport = cfg.protocol.as_str());
            tokio::spawn(
                handshake(shared.clone(), cfg.clone(), name.clone(), stream, info).instrument(span),
            );
        }
    }
}

/// Completes TLS and/or WebSocket handshakes within the connect deadline, then serves MQTT.
async fn handshake(
    shared: Arc<Shared>,
    cfg: Arc<ListenerConfig>,
    name: Arc<str>,
    stream: TcpStream,
    mut info: ConnectionInfo,
) {
    let max_packet = shared.runtime.load().config.server.max_packet_size;
    let deadline = info.deadline;
    let result = tokio::time::timeout_at(deadline, async {
        match cfg.protocol {
            TransportKind::Tcp => unreachable_tcp(),
            TransportKind::Ws => {
                let ws = ws::accept(stream, &cfg.path, max_packet).await?;
                tokio::spawn(connection::serve(shared.clone(), ws, info));
                Ok(())
            }
            TransportKind::Tls | TransportKind::Wss => {
                // The acceptor comes from the current runtime, so a reload's new certificate
                // applies to the next handshake while established sessions continue.
                let acceptor = shared
                    .runtime
                    .load()
                    .tls
                    .get(&*name)
                    .cloned()
                    .ok_or_else(|| {
                        TransportError::Config("no TLS configuration for this listener".into())
                    })?;
                let tls = TlsAcceptor::from(acceptor)
                    .accept(stream)
                    .await
                    .map_err(|e| TransportError::Handshake(format!("TLS handshake failed: {e}")))?;
                info.tls_identity = tls::peer_identity(tls.get_ref().1);
                if cfg.protocol == TransportKind::Wss {
                    let ws = ws::accept(tls, &cfg.path, max_packet).await?;
                    tokio::spawn(connection::serve(shared.clone(), ws, info));
                } else {
                    tokio::spawn(connection::serve(shared.clone(), tls, info));
                }
                Ok(())
            }
        }
    })
    .await;
    match result {
        Ok(Ok(())) => debug!("handshake complete"),
        Ok(Err(e)) => info!(error = %e, "closing: handshake failed"),
        Err(_) => info!("closing: handshake not completed within connect_timeout"),
    }
}

fn unreachable_tcp() -> Result<(), TransportError> {
    Err(TransportError::Config(
        "plain TCP needs no handshake".into(),
    ))
}

/// Builds the TLS server configs of every TLS listener, keyed by listener name.
pub(crate) fn tls_configs(
    listeners: &[ListenerConfig],
) -> Result<
    std::collections::HashMap<String, Arc<tokio_rustls::rustls::ServerConfig>>,
    TransportError,
> {
    listeners
        .iter()
        .filter(|l| l.protocol.is_tls())
        .map(|l| Ok((l.display_name(), tls::server_config(l)?)))
        .collect()
}
