//! Listeners and the byte streams they produce: TCP, TLS, WebSocket and WebSocket over TLS.
//!
//! Every transport ends in an `AsyncRead + AsyncWrite` stream handed to
//! [`crate::connection::serve`], so sessions, routing and hooks never know how a client
//! arrived, except through the `transport` field of its `ClientInfo`.
//!
//! Owns the listening sockets and the handshakes; must not make protocol decisions. It
//! imports the connection shell and the core, never the server that starts it.

pub(crate) mod listeners;
pub mod tls;
pub mod ws;

use crate::config::ListenerConfig;
use crate::connection::{self, ConnectionInfo};
use crate::core::Core;
use crate::model::TransportKind;
use futures_util::FutureExt;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

/// Transport-layer failures.
#[derive(Debug, Error)]
pub enum TransportError {
    /// A certificate, key or CA file is missing or malformed.
    #[error("{key}: {path}: {reason}")]
    Certificate {
        /// The config key that names the file, e.g. `listeners[1].cert_file (listener tls)`.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A listener is configured inconsistently.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot bind listener {name} on {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address that failed.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
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
    core: Arc<Core>,
    connections: CancellationToken,
) {
    let listener_conns = Arc::new(AtomicUsize::new(0));
    let name: Arc<str> = bound.display_name().into();
    let bound = Arc::new(bound);
    // Failed accepts (usually EMFILE) are logged at most every 10 s, with how many there were.
    let mut failed_accepts = 0u64;
    let mut last_accept_log: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                failed_accepts += 1;
                if last_accept_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    error!(listener = %name, error = %e, failed_accepts, "accept failed (out of file descriptors? raise LimitNOFILE / ulimit -n); existing clients are unaffected");
                    last_accept_log = Some(tokio::time::Instant::now());
                    failed_accepts = 0;
                }
                // Back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            warn!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let runtime = core.runtime.load();
        let cfg = runtime
            .listeners
            .get(&*name)
            .cloned()
            .unwrap_or_else(|| bound.clone());
        let connect_timeout = runtime.config.server.connect_timeout.get();
        drop(runtime);
        let info = ConnectionInfo {
            peer,
            transport: cfg.protocol,
            listener: name.clone(),
            listener_conns: listener_conns.clone(),
            listener_max_connections: cfg.max_connections,
            deadline: Instant::now() + connect_timeout,
            tls_identity: None,
            use_identity_as_username: cfg.use_identity_as_username,
            cancel: connections.clone(),
        };
        if cfg.protocol == TransportKind::Tcp {
            spawn_guarded(peer, connection::serve(core.clone(), stream, info));
        } else {
            let span = tracing::info_span!("handshake", %peer, transport = cfg.protocol.as_str());
            spawn_guarded(
                peer,
                handshake(core.clone(), cfg.clone(), name.clone(), stream, info).instrument(span),
            );
        }
    }
}

/// Spawns a connection's task (handshake or MQTT) behind a panic boundary.
///
/// The broker must not panic on input, but a bug in it or in a library below it (TLS,
/// WebSocket) must end only the connection it happened in: the panic is caught here,
/// logged with the peer, and the task ends normally. The guards in `connection` release
/// the connection counters and detach the session while unwinding. (Needs `panic =
/// "unwind"`, the default; `panic = "abort"` in a profile would turn this into a crash.)
pub(crate) fn spawn_guarded<F>(peer: SocketAddr, task: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    // A combinator, not an `async` block: a block would hold `task` and the future awaiting
    // it side by side, doubling every connection's task allocation.
    tokio::spawn(AssertUnwindSafe(task).catch_unwind().map(move |outcome| {
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            error!(%peer, panic = %message, "connection task panicked: closed this connection only");
        }
    }))
}

/// Completes TLS and/or WebSocket handshakes within the connect deadline, then serves MQTT.
async fn handshake(
    core: Arc<Core>,
    cfg: Arc<ListenerConfig>,
    name: Arc<str>,
    stream: TcpStream,
    mut info: ConnectionInfo,
) {
    let max_packet = core.runtime.load().config.server.max_packet_size;
    let deadline = info.deadline;
    let result = tokio::time::timeout_at(deadline, async {
        match cfg.protocol {
            TransportKind::Tcp | TransportKind::Bridge => unreachable_tcp(),
            TransportKind::Ws => {
                let ws = ws::accept(stream, &cfg.path, max_packet).await?;
                spawn_guarded(info.peer, connection::serve(core.clone(), ws, info));
                Ok(())
            }
            TransportKind::Tls | TransportKind::Wss => {
                // The acceptor comes from the current runtime, so a reload's new certificate
                // applies to the next handshake while established sessions continue.
                let acceptor = core
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
                    spawn_guarded(info.peer, connection::serve(core.clone(), ws, info));
                } else {
                    spawn_guarded(info.peer, connection::serve(core.clone(), tls, info));
                }
                Ok(())
            }
        }
    })
    .await;
    match result {
        Ok(Ok(())) => debug!("handshake complete"),
        Ok(Err(e)) => info!(error = %e, "closing: handshake failed"),
        Err(_) => {
            crate::metrics::Counters::inc(&core.counters.ops.connect_timeouts);
            info!("closing: handshake not completed within connect_timeout")
        }
    }
}

fn unreachable_tcp() -> Result<(), TransportError> {
    Err(TransportError::Config(
        "plain TCP needs no handshake".into(),
    ))
}

/// Builds the TLS server configs of every TLS listener, keyed by listener name. `explicit`
/// says whether they come from `listeners:` (errors name `listeners[i].cert_file`) or from
/// the seed's `security.enableTLS` shorthand (errors name `security.cert_file`).
pub(crate) fn tls_configs(
    listeners: &[ListenerConfig],
    explicit: bool,
) -> Result<
    std::collections::HashMap<String, Arc<tokio_rustls::rustls::ServerConfig>>,
    TransportError,
> {
    listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.protocol.is_tls())
        .map(|(i, l)| {
            let config = tls::server_config(l).map_err(|e| match e {
                TransportError::Certificate { key, path, reason } => {
                    let key = if explicit {
                        format!("listeners[{i}].{key} (listener {})", l.display_name())
                    } else {
                        format!("security.{key}")
                    };
                    TransportError::Certificate { key, path, reason }
                }
                other => other,
            })?;
            Ok((l.display_name(), config))
        })
        .collect()
}
