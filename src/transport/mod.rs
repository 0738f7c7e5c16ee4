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
        let runtime = shared.runtime.load();
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
            cancel: connections.child_token(),
        };
        if cfg.protocol == TransportKind::Tcp {
            spawn_guarded(peer, connection::serve(shared.clone(), stream, info));
        } else {
            let span = tracing::info_span!("handshake", %peer, transport = cfg.protocol.as_str());
            spawn_guarded(
                peer,
                handshake(shared.clone(), cfg.clone(), name.clone(), stream, info).instrument(span),
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
                spawn_guarded(info.peer, connection::serve(shared.clone(), ws, info));
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
                    spawn_guarded(info.peer, connection::serve(shared.clone(), ws, info));
                } else {
                    spawn_guarded(info.peer, connection::serve(shared.clone(), tls, info));
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
            crate::metrics::Counters::inc(&shared.counters.ops.connect_timeouts);
            info!("closing: handshake not completed within connect_timeout")
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{build_runtime, Shared};
    use crate::config::Config;
    use crate::metrics::Counters;
    use crate::protocol::{encode, Connect, Packet, ProtocolLevel, QoS, Subscribe};
    use bytes::BytesMut;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

    /// Delivers `input`, then panics on the next read: a stand-in for a bug anywhere below
    /// or inside the connection task, after the session is attached.
    struct PanickingStream {
        input: Vec<u8>,
    }

    impl AsyncRead for PanickingStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.input.is_empty() {
                panic!("injected fault");
            }
            let n = self.input.len().min(buf.remaining());
            buf.put_slice(&self.input[..n]);
            self.input.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for PanickingStream {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn info(port: u16) -> ConnectionInfo {
        ConnectionInfo {
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            transport: TransportKind::Tcp,
            listener: "test".into(),
            listener_conns: Arc::new(AtomicUsize::new(0)),
            listener_max_connections: None,
            deadline: Instant::now() + Duration::from_secs(5),
            tls_identity: None,
            use_identity_as_username: false,
            cancel: CancellationToken::new(),
        }
    }

    fn connect_bytes(client_id: &str, clean_session: bool) -> BytesMut {
        let mut out = BytesMut::new();
        encode(
            &Packet::Connect(Box::new(Connect {
                protocol: ProtocolLevel::V311,
                clean_session,
                keep_alive: 0,
                client_id: client_id.into(),
                will: None,
                username: None,
                password: None,
            })),
            &mut out,
        );
        out
    }

    /// A panic inside a connection task is caught at the connection boundary and logged;
    /// the connection's counters are released, its session is detached (a clean one
    /// removed with its subscriptions), and the next connection of that client id is
    /// served at once instead of waiting for the dead one.
    #[tokio::test]
    async fn panic_in_a_connection_task_ends_only_that_connection() {
        let logs = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || WriteTo(sink.clone()))
            .finish();
        // The current-thread runtime runs every task on this thread, so a thread-local
        // subscriber sees the broker's lines.
        let _log = tracing::subscriber::set_default(subscriber);
        let shared = Arc::new(Shared::new(
            build_runtime(Config::default(), 1).unwrap(),
            None,
        ));

        for (id, clean) in [("persistent", false), ("clean", true)] {
            let mut input = connect_bytes(id, clean);
            encode(
                &Packet::Subscribe(Subscribe {
                    pid: 1,
                    filters: vec![("t/#".into(), QoS::AtLeastOnce)],
                }),
                &mut input,
            );
            let stream = PanickingStream {
                input: input.to_vec(),
            };
            let task = spawn_guarded(
                SocketAddr::from(([127, 0, 0, 1], 9)),
                connection::serve(shared.clone(), stream, info(9)),
            );
            task.await.expect("the panic does not escape the boundary");
        }
        let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.matches("connection task panicked").count(),
            2,
            "logged: {text}"
        );
        assert!(text.contains("injected fault") && text.contains("127.0.0.1:9"));
        assert_eq!(Counters::get(&shared.counters.connections), 0);
        let stats = shared.stats();
        assert_eq!(stats.sessions.total, 1, "the clean session is gone");
        assert_eq!(
            stats.sessions.connected, 0,
            "the persistent one is detached"
        );
        assert_eq!(
            stats.subscriptions.total, 1,
            "only the persistent subscription"
        );

        // The persistent client comes back: resumed at once, not after a takeover wait.
        let (mut client, server) = tokio::io::duplex(4096);
        let task = spawn_guarded(
            SocketAddr::from(([127, 0, 0, 1], 10)),
            connection::serve(shared.clone(), server, info(10)),
        );
        client
            .write_all(&connect_bytes("persistent", false))
            .await
            .unwrap();
        let mut connack = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(1), client.read_exact(&mut connack))
            .await
            .expect("CONNACK without waiting for the dead connection")
            .unwrap();
        assert_eq!(connack, [0x20, 2, 1, 0], "session present, accepted");
        drop(client);
        task.await.unwrap();
        assert_eq!(Counters::get(&shared.counters.connections), 0);
    }

    struct WriteTo(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for WriteTo {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
