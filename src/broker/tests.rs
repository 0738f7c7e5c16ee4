//! A panic inside a connection task, over the real transport boundary and connection shell.

use super::build_runtime;
use crate::config::Config;
use crate::connection::{self, ConnectionInfo};
use crate::core::Core;
use crate::metrics::Counters;
use crate::model::TransportKind;
use crate::protocol::{encode, Connect, Packet, ProtocolLevel, QoS, Subscribe};
use crate::transport::spawn_guarded;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
            bridge: false,
            properties: None,
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
    let core = Arc::new(Core::new(
        build_runtime(Config::default(), 1).unwrap(),
        None,
    ));

    for (id, clean) in [("persistent", false), ("clean", true)] {
        let mut input = connect_bytes(id, clean);
        encode(
            &Packet::Subscribe(Subscribe {
                options: Vec::new(),
                properties: None,
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
            connection::serve(core.clone(), stream, info(9)),
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
    assert_eq!(Counters::get(&core.counters.connections), 0);
    let stats = core.stats();
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
        connection::serve(core.clone(), server, info(10)),
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
    assert_eq!(Counters::get(&core.counters.connections), 0);
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
