//! Drives one client connection: reads bytes, decodes packets, feeds them to the session
//! and the router, and writes back what they produce.
//!
//! This is the thin async shell around the sans-IO [`crate::session::Session`]. It owns
//! the socket, the read and write buffers, the keep-alive timer and the connect timeout;
//! protocol decisions live in the codec and the session.

use crate::broker::{Runtime, SessionEntry, Shared};
use crate::config::TransportKind;
use crate::events::{BrokerEvent, DisconnectReason};
use crate::hooks::{AclAction, AclCache, AclRequest, ClientInfo, Credentials, DenyReason};
use crate::limits::TokenBucket;
use crate::metrics::ops::LimitKind;
use crate::metrics::Counters;
use crate::protocol::codec::{self, encode};
use crate::protocol::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, ProtocolError, Publish, QoS, SubAck,
    SubAckCode,
};
use crate::routing::trie::MAX_FILTER_LEVELS;
use crate::routing::Message;
use crate::session::InboundQos2;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

/// Stop taking more messages from the session once this much output is pending.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Stop reading from a client that does not read its acknowledgements.
const WRITE_HARD_LIMIT: usize = 1024 * 1024;
/// Read granularity; buffers grow only as bytes arrive.
const READ_CHUNK: usize = 4096;

/// Facts about an accepted connection that the transport knows.
pub(crate) struct ConnectionInfo {
    pub peer: SocketAddr,
    pub transport: TransportKind,
    pub listener: Arc<str>,
    pub listener_conns: Arc<AtomicUsize>,
    /// The listener's own `max_connections`, read at accept time.
    pub listener_max_connections: Option<usize>,
    /// CONNECT (and any TLS/WebSocket handshake before it) must complete by then.
    pub deadline: Instant,
    /// Subject CN of a verified TLS client certificate.
    pub tls_identity: Option<String>,
    /// Whether that CN replaces the user name and counts as authentication.
    pub use_identity_as_username: bool,
    /// Cancelled when the listener is removed with `drain: true`, or at shutdown.
    pub cancel: CancellationToken,
}

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT: the will is discarded [MQTT-3.14.4-3].
    Disconnect,
    /// The client closed the socket without DISCONNECT.
    PeerClosed,
    /// Nothing received for 1.5 × keep-alive [MQTT-3.1.2-24].
    KeepAlive,
    /// A protocol violation; the connection is closed [MQTT-4.8.0-1].
    Protocol(String),
    /// Another connection took the session over, or an operator/shutdown closed it.
    Cancelled,
    /// A reload revoked the client's credentials (`reauthorize_on_reload`).
    Revoked(String),
    /// A resource limit that closes the connection (topic too long or too deep).
    Policy(String),
    /// Socket error.
    Io(std::io::Error),
}

impl Close {
    fn publishes_will(&self) -> bool {
        !matches!(self, Close::Disconnect)
    }
}

/// Keeps the connection counters right however the task ends.
struct ConnGuard {
    shared: Arc<Shared>,
    transport: TransportKind,
    listener_conns: Arc<AtomicUsize>,
}

impl ConnGuard {
    /// Counts the connection; also says whether the listener was already at its own
    /// `max_connections` (decided on the count itself, so a burst of handshakes finishing
    /// together cannot slip past it).
    fn new(shared: Arc<Shared>, info: &ConnectionInfo) -> (Self, bool) {
        Counters::inc(&shared.counters.connections);
        Counters::inc(&shared.counters.connections_accepted);
        Counters::inc(transport_counter(&shared, info.transport));
        let before = info.listener_conns.fetch_add(1, Ordering::Relaxed);
        let over_listener_limit = info.listener_max_connections.is_some_and(|m| before >= m);
        let guard = ConnGuard {
            shared,
            transport: info.transport,
            listener_conns: info.listener_conns.clone(),
        };
        (guard, over_listener_limit)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        Counters::dec(&self.shared.counters.connections);
        Counters::dec(transport_counter(&self.shared, self.transport));
        self.listener_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

fn transport_counter(shared: &Shared, t: TransportKind) -> &std::sync::atomic::AtomicU64 {
    match t {
        TransportKind::Tcp => &shared.counters.connections_tcp,
        TransportKind::Tls => &shared.counters.connections_tls,
        TransportKind::Ws => &shared.counters.connections_ws,
        TransportKind::Wss => &shared.counters.connections_wss,
    }
}

/// Serves one accepted connection until it ends.
pub(crate) fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    info: ConnectionInfo,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    // Not an `async fn`: that would keep its arguments beside the inner future (the task's
    // allocation is the largest part of an idle connection's memory).
    let span = info_span!("conn", peer = %info.peer, transport = info.transport.as_str(), client_id = tracing::field::Empty);
    serve_inner(shared, stream, info).instrument(span)
}

async fn serve_inner<S>(shared: Arc<Shared>, stream: S, info: ConnectionInfo)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let runtime = shared.runtime.load_full();
    let cfg = &runtime.config.server;
    let over_global_limit =
        Counters::get(&shared.counters.connections) >= cfg.max_connections as u64;
    let (_guard, over_listener_limit) = ConnGuard::new(shared.clone(), &info);
    let (rd, wr) = tokio::io::split(stream);
    let mut conn = Conn {
        shared: shared.clone(),
        rd,
        wr,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        out: Vec::new(),
        max_packet_size: cfg.max_packet_size,
        password: None,
        certificate_verified: false,
        reload: shared.reload_tx.subscribe(),
        pending_ticket: None,
        logged: 0,
        rate_msgs: TokenBucket::new(std::time::Instant::now()),
        rate_bytes: TokenBucket::new(std::time::Instant::now()),
        throttle: None,
        acl_cache: AclCache::default(),
        auth_fingerprint: runtime.auth_fingerprint,
        client_id: Arc::from(""),
        client: Arc::new(ClientInfo {
            client_id: Arc::from(""),
            username: None,
            peer: info.peer,
            transport: info.transport,
            tls_identity: None,
            protocol: crate::protocol::ProtocolLevel::V311,
            clean_session: true,
        }),
    };

    // [MQTT-3.1.0-1]: the first packet must be CONNECT, within connect_timeout.
    let first = tokio::time::timeout_at(info.deadline, conn.read_packet()).await;
    let connect = match first {
        Err(_) => {
            Counters::inc(&shared.counters.ops.connect_timeouts);
            info!(timeout = %cfg.connect_timeout, "closing: no CONNECT within connect_timeout");
            return;
        }
        Ok(Err(Close::Protocol(reason))) => {
            Counters::inc(&shared.counters.protocol_errors);
            warn!(%reason, "closing before CONNECT: protocol error");
            // A refusing CONNACK (protocol level) may be pending.
            Box::pin(conn.flush_best_effort()).await;
            return;
        }
        Ok(Err(Close::PeerClosed)) => {
            debug!("closed by peer before CONNECT");
            return;
        }
        Ok(Err(e)) => {
            debug!(reason = ?e, "closed before CONNECT");
            return;
        }
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            Counters::inc(&shared.counters.protocol_errors);
            warn!(
                packet = other.name(),
                "closing: first packet is not CONNECT [MQTT-3.1.0-1]"
            );
            return;
        }
    };

    let refuse = |code| {
        Packet::ConnAck(ConnAck {
            session_present: false,
            code,
        })
    };
    if over_global_limit || over_listener_limit {
        Counters::inc(&shared.counters.connections_refused_limit);
        warn!(client_id = %connect.client_id, listener = %info.listener, "refusing connection: max_connections reached");
        conn.send_and_close(refuse(ConnectReturnCode::ServerUnavailable))
            .await;
        return;
    }
    let conn_id = shared.next_conn_id();
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session {
            // [MQTT-3.1.3-8]
            Counters::inc(&shared.counters.ops.connects_identifier_rejected);
            info!("refusing connection: empty client id without clean session");
            conn.send_and_close(refuse(ConnectReturnCode::IdentifierRejected))
                .await;
            return;
        }
        // [MQTT-3.1.3-6]
        shared.assign_client_id(conn_id)
    } else {
        connect.client_id.clone()
    };
    tracing::Span::current().record("client_id", client_id.as_str());
    conn.client_id = Arc::from(client_id.as_str());
    let identity_as_username = info.use_identity_as_username && info.tls_identity.is_some();
    let client = Arc::new(ClientInfo {
        client_id: conn.client_id.clone(),
        username: if identity_as_username {
            info.tls_identity.clone()
        } else {
            connect.username.clone()
        },
        peer: info.peer,
        transport: info.transport,
        tls_identity: info.tls_identity.clone(),
        protocol: connect.protocol,
        clean_session: connect.clean_session,
    });
    if let Err(code) = Box::pin(authenticate(
        &shared,
        &runtime,
        &client,
        &connect,
        identity_as_username,
    ))
    .await
    {
        conn.send_and_close(refuse(code)).await;
        return;
    }
    conn.client = client.clone();
    conn.password = connect.password.clone();
    conn.certificate_verified = identity_as_username;

    let cancel = info.cancel.clone();
    let (done_tx, done_rx) = watch::channel(false);
    // Boxed, like the other one-off steps: the task's future is as large as its largest
    // await, and every idle connection pays for that size.
    let attached = Box::pin(shared.attach(&client, conn_id, cancel.clone(), done_rx)).await;
    let entry = attached.entry;
    // From here on the session is detached however the task ends, a panic included.
    let attachment = Attachment {
        shared: shared.clone(),
        entry: entry.clone(),
        conn_id,
        done: done_tx,
    };
    // [MQTT-3.2.2-1], [MQTT-3.2.2-2]: session present only when a stored session resumed.
    conn.out.push(Packet::ConnAck(ConnAck {
        session_present: attached.session_present,
        code: ConnectReturnCode::Accepted,
    }));
    {
        let mut state = entry.state.lock();
        state.connect(&mut conn.out);
        let ticket = shared.persist(&mut state);
        conn.note(ticket);
    }
    let registration = shared
        .ops
        .register(conn_id, &client, &entry, cancel.clone());
    Counters::inc(&shared.counters.ops.connects_accepted);
    shared.ops.events.emit(|| BrokerEvent::ClientConnected {
        client_id: client.client_id.clone(),
        peer: client.peer,
        transport: client.transport,
        username: client.username.clone(),
        clean_session: client.clean_session,
        session_present: attached.session_present,
    });
    info!(
        keep_alive = connect.keep_alive,
        clean_session = connect.clean_session,
        session_present = attached.session_present,
        username = connect.username.as_deref().unwrap_or(""),
        "client connected"
    );

    let idle_limit = if connect.keep_alive > 0 {
        Some(Duration::from_millis(u64::from(connect.keep_alive) * 1500))
    } else if !cfg.keep_alive_timeout.is_zero() {
        Some(cfg.keep_alive_timeout.get())
    } else {
        None
    };
    let reason = conn.run(&entry, &cancel, idle_limit).await;
    if matches!(reason, Close::Cancelled) && shared.shutdown.is_cancelled() {
        Box::pin(conn.finish_inbound(&entry)).await;
    }
    Box::pin(conn.flush_best_effort()).await;
    let why = disconnect_reason(&reason, &shared, &entry, conn_id, registration.kicked());
    drop(registration);
    shared.counters.ops.disconnect(why);
    shared.ops.events.emit(|| BrokerEvent::ClientDisconnected {
        client_id: client.client_id.clone(),
        peer: client.peer,
        reason: why,
    });

    match &reason {
        Close::Disconnect => info!("client disconnected"),
        Close::PeerClosed => info!("connection closed by client without DISCONNECT"),
        Close::KeepAlive => {
            Counters::inc(&shared.counters.keep_alive_timeouts);
            warn!(
                keep_alive = connect.keep_alive,
                "closing: keep-alive expired"
            );
        }
        Close::Protocol(r) => {
            Counters::inc(&shared.counters.protocol_errors);
            warn!(reason = %r, "closing: protocol error");
        }
        Close::Cancelled => info!(reason = why.as_str(), "closing: connection cancelled"),
        Close::Policy(r) => warn!(reason = %r, "closing: resource limit"),
        Close::Io(e) => info!(error = %e, "connection error"),
        Close::Revoked(why) => {
            Counters::inc(&shared.counters.reauth_disconnects);
            warn!(reason = %why, "closing: credentials no longer accepted after reload");
        }
    }
    if reason.publishes_will() {
        if let Some(will) = &connect.will {
            publish_will(&shared, &client, will);
        }
    }
    // Detaches only after the will is published, so a takeover sees it first.
    drop(attachment);
}

/// Detaches a connection from its session when dropped: on the normal path after the will
/// is published, and while unwinding if the task panics, so that the session is not left
/// owned by a dead connection (a clean one would leak; a takeover would wait for `done`).
struct Attachment {
    shared: Arc<Shared>,
    entry: Arc<SessionEntry>,
    conn_id: u64,
    done: watch::Sender<bool>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.shared.detach(&self.entry, self.conn_id);
        let _ = self.done.send(true);
    }
}

/// Classifies how a connected client's connection ended, for metrics and events.
fn disconnect_reason(
    close: &Close,
    shared: &Shared,
    entry: &SessionEntry,
    conn_id: u64,
    kicked: bool,
) -> DisconnectReason {
    match close {
        Close::Disconnect => DisconnectReason::Disconnect,
        Close::PeerClosed => DisconnectReason::PeerClosed,
        Close::KeepAlive => DisconnectReason::KeepAlive,
        Close::Protocol(_) => DisconnectReason::ProtocolError,
        Close::Policy(_) => DisconnectReason::Policy,
        Close::Revoked(_) => DisconnectReason::Revoked,
        Close::Io(_) => DisconnectReason::IoError,
        Close::Cancelled if shared.shutdown.is_cancelled() => DisconnectReason::Shutdown,
        Close::Cancelled if kicked => DisconnectReason::Admin,
        Close::Cancelled => {
            let owner = entry.owner.lock().as_ref().map(|o| o.conn_id);
            if owner == Some(conn_id) {
                DisconnectReason::ListenerRemoved
            } else {
                DisconnectReason::TakenOver
            }
        }
    }
}

/// Runs the authentication chain off the async workers (password hashing and plugins are
/// deliberately slow), and delays refusals per source address to slow password guessing.
async fn authenticate(
    shared: &Arc<Shared>,
    runtime: &Arc<Runtime>,
    client: &Arc<ClientInfo>,
    connect: &Connect,
    certificate_verified: bool,
) -> Result<(), ConnectReturnCode> {
    let result = if runtime.security.authenticators.is_empty() {
        // Only the anonymous / certificate rules apply: cheap, so no hop to a blocking thread
        // (which costs more than the check and limits the connect rate).
        let credentials = Credentials {
            username: client.username.as_deref(),
            password: connect.password.as_deref(),
            certificate_verified,
        };
        runtime.security.authenticate(client, &credentials)
    } else {
        // Password hashing and plugins are deliberately slow: off the async workers.
        let (rt, c, password) = (runtime.clone(), client.clone(), connect.password.clone());
        tokio::task::spawn_blocking(move || {
            let credentials = Credentials {
                username: c.username.as_deref(),
                password: password.as_deref(),
                certificate_verified,
            };
            rt.security.authenticate(&c, &credentials)
        })
        .await
        .unwrap_or_else(|_| Err((DenyReason::NotAuthorized, "authentication panicked".into())))
    };
    let ip = client.peer.ip();
    match result {
        Ok(()) => {
            Counters::inc(&shared.counters.auth_success);
            // Only a login that proved a credential clears the address's failure count: an
            // anonymous connect in between guesses must not reset the delay.
            let proved_credential = connect.password.is_some() || certificate_verified;
            if proved_credential {
                let mut failures = shared.auth_failures.lock();
                if !failures.is_empty() {
                    failures.remove(&ip);
                }
            }
            Ok(())
        }
        Err((reason, why)) => {
            Counters::inc(&shared.counters.auth_failure);
            shared
                .ops
                .events
                .emit(|| crate::events::BrokerEvent::AuthFailed {
                    client_id: client.client_id.clone(),
                    username: client.username.clone(),
                    peer: client.peer,
                    reason: why.clone(),
                });
            let delay = {
                let cfg = &runtime.config.security;
                let mut failures = shared.auth_failures.lock();
                if failures.len() > 100_000 {
                    failures.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(600));
                }
                let entry = failures.entry(ip).or_insert((0, std::time::Instant::now()));
                if entry.1.elapsed() > Duration::from_secs(600) {
                    entry.0 = 0;
                }
                entry.0 = entry.0.saturating_add(1);
                entry.1 = std::time::Instant::now();
                let factor = 1u32 << (entry.0 - 1).min(16);
                // Saturating: a delay of years times 2^16 must not overflow (and panic).
                (cfg.auth_failure_delay.get().saturating_mul(factor))
                    .min(cfg.auth_failure_max_delay.get())
            };
            // The password itself is never logged.
            warn!(
                username = client.username.as_deref().unwrap_or(""),
                reason = %why,
                code = reason.return_code() as u8,
                delay_ms = delay.as_millis() as u64,
                "authentication failed"
            );
            tokio::time::sleep(delay).await;
            Err(reason.return_code())
        }
    }
}

/// Writes pending bytes (`Some(n)`), or flushes when nothing is pending (`None`).
async fn write_or_flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    wbuf: &BytesMut,
) -> std::io::Result<Option<usize>> {
    if wbuf.is_empty() {
        wr.flush().await.map(|()| None)
    } else {
        wr.write(wbuf).await.map(Some)
    }
}

/// Reads what the peer has sent into `buf`, holding no buffer while it waits.
///
/// An idle connection is the common case for an IoT fleet, and a read buffer reserved ahead
/// of the read would be most of its memory. So an empty `buf` gives its allocation back, and
/// the read goes into a buffer on the stack of this `poll` call (not into the task's
/// future), whose bytes are then appended to `buf`. A partly received packet keeps its
/// buffer, which grows in `READ_CHUNK` steps.
async fn read_lazily<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    release(buf);
    if !buf.is_empty() {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(READ_CHUNK);
        }
        return rd.read_buf(buf).await;
    }
    std::future::poll_fn(|cx| {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = tokio::io::ReadBuf::uninit(&mut stack);
        match std::pin::Pin::new(&mut *rd).poll_read(cx, &mut rb) {
            std::task::Poll::Ready(Ok(())) => {
                let filled = rb.filled();
                if !filled.is_empty() {
                    buf.reserve(READ_CHUNK.max(filled.len()));
                    buf.extend_from_slice(filled);
                }
                std::task::Poll::Ready(Ok(filled.len()))
            }
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
}

/// Gives back the allocation of an empty buffer.
fn release(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

/// Publishes a will message like any other PUBLISH [MQTT-3.1.2-8].
fn publish_will(shared: &Shared, client: &ClientInfo, will: &LastWill) {
    if is_sys_topic(&will.topic) {
        Counters::inc(&shared.counters.ops.sys_publish_denied);
        warn!(topic = %will.topic, "will message to $SYS refused; not published");
        return;
    }
    let runtime = shared.runtime.load();
    let request = AclRequest {
        action: AclAction::Publish,
        topic: &will.topic,
        qos: will.qos,
        retain: will.retain,
    };
    if !runtime.security.authorize(client, &request) {
        Counters::inc(&shared.counters.acl_denied_publish);
        warn!(topic = %will.topic, "will message denied by ACL; not published");
        return;
    }
    Counters::inc(&shared.counters.wills_published);
    info!(topic = %will.topic, "publishing will message");
    shared.publish(Message {
        topic: will.topic.clone(),
        payload: will.payload.clone(),
        qos: will.qos,
        retain: will.retain,
        enqueued_at: None,
    });
}

struct Conn<S> {
    shared: Arc<Shared>,
    rd: ReadHalf<S>,
    wr: WriteHalf<S>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Packets produced by the session and handlers, encoded into `wbuf` in order.
    out: Vec<Packet>,
    max_packet_size: usize,
    client_id: Arc<str>,
    client: Arc<ClientInfo>,
    /// Kept to re-check the client after a reload; never logged.
    password: Option<bytes::Bytes>,
    certificate_verified: bool,
    reload: watch::Receiver<u64>,
    /// Storage ticket that must be durable before the pending output is written.
    pending_ticket: Option<u64>,
    /// `LimitKind::bit`s of the refusals already logged for this connection.
    logged: u32,
    rate_msgs: TokenBucket,
    rate_bytes: TokenBucket,
    /// Reading is paused until then: the client is over its publish rate.
    throttle: Option<Instant>,
    /// This connection's PUBLISH decisions of the authorizer chain.
    acl_cache: AclCache,
    /// `Runtime::auth_fingerprint` this client was last authenticated against.
    auth_fingerprint: Option<u64>,
}

impl<S: AsyncRead + AsyncWrite> Conn<S> {
    /// Reads until one whole packet is decoded.
    async fn read_packet(&mut self) -> Result<Packet, Close> {
        loop {
            if let Some(p) = self.decode_one()? {
                return Ok(p);
            }
            self.read_more().await?;
        }
    }

    fn decode_one(&mut self) -> Result<Option<Packet>, Close> {
        match codec::decode(&mut self.rbuf, self.max_packet_size) {
            Ok(p) => Ok(p),
            Err(e @ ProtocolError::PacketTooLarge { .. }) => {
                Counters::inc(&self.shared.counters.ops.oversized_packets);
                Err(Close::Protocol(e.to_string()))
            }
            Err(ProtocolError::UnsupportedProtocolLevel(level)) => {
                // [MQTT-3.1.2-2]: answer CONNACK 0x01, then close.
                self.out.push(Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::UnacceptableProtocolVersion,
                }));
                Err(Close::Protocol(format!(
                    "unsupported protocol level {level} (CONNACK 0x01 sent)"
                )))
            }
            Err(e) => Err(Close::Protocol(e.to_string())),
        }
    }

    async fn read_more(&mut self) -> Result<(), Close> {
        match read_lazily(&mut self.rd, &mut self.rbuf).await {
            Ok(0) => Err(Close::PeerClosed),
            Ok(n) => {
                Counters::add(&self.shared.counters.bytes_in, n as u64);
                Ok(())
            }
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// A read error: a WebSocket violation is the client's protocol error (logged at warn,
    /// an oversized message counted like an oversized packet), anything else is I/O.
    fn read_error(&self, e: std::io::Error) -> Close {
        match crate::transport::ws::WsViolation::of(&e) {
            Some(v) => {
                if matches!(v, crate::transport::ws::WsViolation::TooLarge { .. }) {
                    Counters::inc(&self.shared.counters.ops.oversized_packets);
                }
                Close::Protocol(v.to_string())
            }
            None => Close::Io(e),
        }
    }

    /// Encodes pending packets into the write buffer; returns how many were PUBLISH.
    fn encode_out(&mut self) -> u64 {
        let mut published = 0;
        for p in self.out.drain(..) {
            if let Packet::Publish(p) = &p {
                published += 1;
                self.shared
                    .counters
                    .ops
                    .publish(false, p.qos, p.payload.len());
            }
            encode(&p, &mut self.wbuf);
        }
        if published > 0 {
            Counters::add(&self.shared.counters.messages_out, published);
        }
        published
    }

    /// Records publish-to-deliver latency of the messages the session just handed out.
    fn observe_latency(&self, entry: &SessionEntry) {
        let stamps = entry.state.lock().take_delivered_stamps();
        let now = std::time::Instant::now();
        for at in stamps {
            self.shared
                .counters
                .ops
                .deliver_latency
                .observe(now.saturating_duration_since(at));
        }
    }

    /// Logs a refusal the first time it happens on this connection; always counts it.
    fn refuse(&mut self, kind: LimitKind, detail: &str) {
        self.shared.counters.ops.limit(kind);
        if self.logged & kind.bit() == 0 {
            self.logged |= kind.bit();
            warn!(
                limit = kind.as_str(),
                detail, "limit reached; further refusals of this kind are not logged for this connection but counted in /metrics"
            );
        }
    }

    /// Decodes and handles buffered packets until the buffer is empty or the publish rate
    /// pauses the client; returns how many packets were handled.
    fn process_buffered(&mut self, entry: &Arc<SessionEntry>) -> Result<usize, Close> {
        let mut handled = 0;
        while self.throttle.is_none() {
            match self.decode_one()? {
                Some(p) => {
                    self.handle(entry, p)?;
                    handled += 1;
                }
                None => break,
            }
        }
        Ok(handled)
    }

    /// At shutdown: handles what the client had already sent (briefly waiting for more
    /// bytes in flight), so that every QoS 1/2 PUBLISH it sent is acknowledged before the
    /// close. Bounded in time so a chatty client cannot hold the shutdown up.
    async fn finish_inbound(&mut self, entry: &Arc<SessionEntry>) {
        let until = Instant::now() + Duration::from_millis(500);
        self.throttle = None;
        loop {
            if self.process_buffered(entry).is_err() {
                return;
            }
            let wait =
                Duration::from_millis(20).min(until.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, read_lazily(&mut self.rd, &mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {
                    Counters::add(&self.shared.counters.bytes_in, n as u64);
                }
                _ => return,
            }
        }
    }

    /// Charges one PUBLISH to the client's rate budgets; pauses reading when over them.
    fn charge_publish(&mut self, payload_len: usize) {
        let (msgs, bytes) = {
            let runtime = self.shared.runtime.load();
            let l = &runtime.config.limits;
            (f64::from(l.publish_rate), l.publish_bytes_rate as f64)
        };
        let now = std::time::Instant::now();
        let by_count = self.rate_msgs.take(msgs, 1.0, now);
        let by_bytes = self.rate_bytes.take(bytes, payload_len as f64, now);
        let pause = match (by_count, by_bytes) {
            (None, None) => return,
            (Some(a), None) => {
                self.refuse(LimitKind::PublishRate, "publish_rate: reading paused");
                a
            }
            (a, Some(b)) => {
                self.refuse(
                    LimitKind::PublishBytesRate,
                    "publish_bytes_rate: reading paused",
                );
                a.map_or(b, |a| a.max(b))
            }
        };
        self.throttle = Some(Instant::now() + pause);
    }

    /// Sends one packet (e.g. a refusing CONNACK) and closes.
    async fn send_and_close(&mut self, p: Packet) {
        self.out.push(p);
        Box::pin(self.flush_best_effort()).await;
    }

    /// Writes whatever is pending, giving up after a short time.
    async fn flush_best_effort(&mut self) {
        // Acknowledgements still pending (e.g. from the shutdown's last reads) promise
        // durability too.
        if let (Some(ticket), Some(storage)) = (self.pending_ticket.take(), &self.shared.storage) {
            storage.wait_durable(ticket).await;
        }
        self.encode_out();
        let wbuf = std::mem::take(&mut self.wbuf);
        let write = async {
            self.wr.write_all(&wbuf).await?;
            self.wr.shutdown().await
        };
        if tokio::time::timeout(Duration::from_secs(1), write)
            .await
            .is_ok()
        {
            Counters::add(&self.shared.counters.bytes_out, wbuf.len() as u64);
        }
    }

    /// The connected-state loop.
    async fn run(
        &mut self,
        entry: &Arc<SessionEntry>,
        cancel: &CancellationToken,
        idle_limit: Option<Duration>,
    ) -> Close {
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut deadline = idle_limit.map_or(far_future, |d| Instant::now() + d);
        // Packets that arrived in the same read as CONNECT are already buffered: handle them
        // now, not when the client happens to send more.
        if let Err(close) = self.process_buffered(entry) {
            return close;
        }
        // TLS and WebSocket streams buffer internally: flush once the write buffer is drained.
        let mut needs_flush = false;
        loop {
            // Acknowledgements promise durability: with `sync: always` they wait for the store.
            if let (Some(ticket), Some(storage)) =
                (self.pending_ticket.take(), &self.shared.storage)
            {
                storage.wait_durable(ticket).await;
            }
            if self.encode_out() > 0 {
                self.observe_latency(entry);
            }
            if self.wbuf.is_empty() && !needs_flush {
                // Nothing to write: an idle connection keeps no write buffer or packet list.
                release(&mut self.wbuf);
                if self.out.capacity() > 0 {
                    self.out = Vec::new();
                }
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Close::Cancelled,
                r = write_or_flush(&mut self.wr, &self.wbuf), if !self.wbuf.is_empty() || needs_flush => match r {
                    Ok(Some(0)) => return Close::PeerClosed,
                    Ok(Some(n)) => {
                        let _ = self.wbuf.split_to(n);
                        needs_flush = true;
                        Counters::add(&self.shared.counters.bytes_out, n as u64);
                    }
                    Ok(None) => needs_flush = false,
                    Err(e) => return Close::Io(e),
                },
                r = read_lazily(&mut self.rd, &mut self.rbuf), if self.wbuf.len() < WRITE_HARD_LIMIT && self.throttle.is_none() => match r {
                    Ok(0) => return Close::PeerClosed,
                    Ok(n) => {
                        Counters::add(&self.shared.counters.bytes_in, n as u64);
                        match self.process_buffered(entry) {
                            // Keep-alive counts whole Control Packets, not bytes: a client
                            // trickling one packet a byte at a time is still idle
                            // [MQTT-3.1.2-24].
                            Ok(handled) if handled > 0 => {
                                if let Some(d) = idle_limit {
                                    deadline = Instant::now() + d;
                                }
                            }
                            Ok(_) => {}
                            Err(close) => return close,
                        }
                    }
                    Err(e) => return self.read_error(e),
                },
                // Over the publish rate: the socket is not read until the budget refills.
                _ = tokio::time::sleep_until(self.throttle.unwrap_or(far_future)), if self.throttle.is_some() => {
                    self.throttle = None;
                    // A paused client was not idle.
                    if let Some(d) = idle_limit {
                        deadline = Instant::now() + d;
                    }
                    if let Err(close) = self.process_buffered(entry) {
                        return close;
                    }
                },
                _ = entry.wake.notified(), if self.wbuf.len() < WRITE_HIGH_WATER => {
                    self.with_session(entry, |s, out| s.drain(out));
                }
                _ = tokio::time::sleep_until(deadline), if idle_limit.is_some() && self.throttle.is_none() => return Close::KeepAlive,
                _ = self.reload.changed() => {
                    if let Err(why) = Box::pin(self.recheck()).await {
                        return Close::Revoked(why);
                    }
                }
            }
        }
    }

    /// After a reload: picks up new limits and, with `reauthorize_on_reload`, re-runs the
    /// authentication chain with the credentials this client connected with.
    async fn recheck(&mut self) -> Result<(), String> {
        let runtime = self.shared.runtime.load_full();
        self.max_packet_size = runtime.config.server.max_packet_size;
        if !runtime.config.security.reauthorize_on_reload {
            return Ok(());
        }
        // Nothing authentication depends on changed since this client was last checked: no
        // re-check (10,000 clients re-checked at once dip the throughput after a reload).
        let fingerprint = runtime.auth_fingerprint;
        if fingerprint.is_some() && fingerprint == self.auth_fingerprint {
            return Ok(());
        }
        self.auth_fingerprint = fingerprint;
        let (client, password, verified) = (
            self.client.clone(),
            self.password.clone(),
            self.certificate_verified,
        );
        tokio::task::spawn_blocking(move || {
            let credentials = Credentials {
                username: client.username.as_deref(),
                password: password.as_deref(),
                certificate_verified: verified,
            };
            runtime
                .security
                .authenticate(&client, &credentials)
                .map_err(|(_, why)| why)
        })
        .await
        .unwrap_or_else(|_| Err("authentication panicked".into()))
    }

    /// Remembers a storage ticket the pending output depends on.
    fn note(&mut self, ticket: Option<u64>) {
        if let Some(t) = ticket {
            self.pending_ticket = Some(self.pending_ticket.map_or(t, |p| p.max(t)));
        }
    }

    /// Runs one session transition under its lock and submits what it journaled.
    fn with_session<R>(
        &mut self,
        entry: &SessionEntry,
        f: impl FnOnce(&mut crate::session::Session, &mut Vec<Packet>) -> R,
    ) -> R {
        let mut state = entry.state.lock();
        let r = f(&mut state, &mut self.out);
        let ticket = self.shared.persist(&mut state);
        drop(state);
        self.note(ticket);
        r
    }

    /// Handles one packet from a connected client.
    fn handle(&mut self, entry: &Arc<SessionEntry>, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.handle_publish(entry, p)?,
            Packet::PubAck(pid) => {
                self.with_session(entry, |s, out| s.puback(pid, out));
            }
            Packet::PubRec(pid) => {
                self.with_session(entry, |s, out| s.pubrec(pid, out));
            }
            Packet::PubComp(pid) => {
                self.with_session(entry, |s, out| s.pubcomp(pid, out));
            }
            Packet::PubRel(pid) => self.with_session(entry, |s, out| s.pubrel(pid, out)),
            Packet::Subscribe(s) => {
                let runtime = self.shared.runtime.load();
                let mut codes = Vec::with_capacity(s.filters.len());
                let mut granted = Vec::with_capacity(s.filters.len());
                let limits = &runtime.config.limits;
                for (filter, requested) in &s.filters {
                    let levels = filter.bytes().filter(|&b| b == b'/').count() + 1;
                    if levels > MAX_FILTER_LEVELS {
                        // Refused like a denied filter [MQTT-3.9.3-1]; see MAX_FILTER_LEVELS.
                        warn!(
                            levels,
                            max = MAX_FILTER_LEVELS,
                            "subscription refused: topic filter has too many levels"
                        );
                        codes.push(SubAckCode::Failure);
                        continue;
                    }
                    if let Some(over) = limits.check_topic(filter) {
                        let kind = topic_limit_kind(over);
                        self.refuse(kind, "SUBSCRIBE filter refused with 0x80");
                        codes.push(SubAckCode::Failure);
                        continue;
                    }
                    let request = AclRequest {
                        action: AclAction::Subscribe,
                        topic: filter,
                        qos: *requested,
                        retain: false,
                    };
                    if !runtime.security.authorize(&self.client, &request) {
                        // A refused filter gets 0x80; the others are still granted [MQTT-3.9.3-1].
                        Counters::inc(&self.shared.counters.acl_denied_subscribe);
                        warn!(%filter, "subscription denied by ACL");
                        codes.push(SubAckCode::Failure);
                        continue;
                    }
                    let held = {
                        let state = entry.state.lock();
                        (!state.subscriptions.contains_key(filter.as_str()))
                            .then(|| state.subscriptions.len())
                    };
                    // Replacing an existing subscription never counts against the limit.
                    if held.is_some_and(|n| n >= limits.max_subscriptions) {
                        self.refuse(
                            LimitKind::MaxSubscriptions,
                            "SUBSCRIBE filter refused with 0x80",
                        );
                        codes.push(SubAckCode::Failure);
                        continue;
                    }
                    // The broker supports every QoS, so the grant is what was asked [MQTT-3.9.3-2].
                    let ticket = self.shared.subscribe(entry, filter, *requested);
                    self.note(ticket);
                    self.shared.ops.events.emit(|| BrokerEvent::Subscribed {
                        client_id: self.client_id.clone(),
                        filter: filter.clone(),
                        qos: *requested,
                    });
                    codes.push(SubAckCode::Granted(*requested));
                    granted.push((filter, *requested));
                }
                // SUBACK first, then the retained messages [MQTT-3.8.4-1], [MQTT-3.8.4-3].
                self.out.push(Packet::SubAck(SubAck { pid: s.pid, codes }));
                for (filter, qos) in granted {
                    let ticket = self.shared.send_retained(entry, filter, qos);
                    self.note(ticket);
                }
                debug!(filters = ?s.filters, "subscribed");
            }
            Packet::Unsubscribe(u) => {
                for f in &u.filters {
                    self.shared.unsubscribe(entry, f);
                    self.shared.ops.events.emit(|| BrokerEvent::Unsubscribed {
                        client_id: self.client_id.clone(),
                        filter: f.clone(),
                    });
                }
                // UNSUBACK even when nothing matched [MQTT-3.10.4-5].
                self.out.push(Packet::UnsubAck(u.pid));
            }
            // [MQTT-3.12.4-1]
            Packet::PingReq => self.out.push(Packet::PingResp),
            Packet::Disconnect => return Err(Close::Disconnect),
            // [MQTT-3.1.0-2]
            Packet::Connect(_) => {
                return Err(Close::Protocol("second CONNECT [MQTT-3.1.0-2]".into()))
            }
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => {
                return Err(Close::Protocol(format!(
                    "{} is a server-to-client packet",
                    other.name()
                )))
            }
        }
        Ok(())
    }

    fn handle_publish(&mut self, entry: &Arc<SessionEntry>, p: Publish) -> Result<(), Close> {
        Counters::inc(&self.shared.counters.messages_in);
        self.shared
            .counters
            .ops
            .publish(true, p.qos, p.payload.len());
        let over = self
            .shared
            .runtime
            .load()
            .config
            .limits
            .check_topic(&p.topic);
        if let Some(over) = over {
            let kind = topic_limit_kind(over);
            self.shared.counters.ops.limit(kind);
            return Err(Close::Policy(format!(
                "PUBLISH topic beyond limits.{} ({} bytes)",
                kind.as_str(),
                p.topic.len()
            )));
        }
        self.charge_publish(p.payload.len());
        match (p.qos, p.pid) {
            (QoS::AtMostOnce, _) => self.route(p),
            (QoS::AtLeastOnce, Some(pid)) => {
                self.route(p);
                // [MQTT-4.3.2-2]: PUBACK after taking ownership of the message.
                self.out.push(Packet::PubAck(pid));
            }
            (QoS::ExactlyOnce, Some(pid)) => {
                // Method B of 4.3.3: keep the packet id until PUBREL, route only the first copy.
                let first = self.with_session(entry, |s, out| s.inbound_qos2(pid, out));
                if first == InboundQos2::New {
                    self.route(p);
                }
            }
            // The codec guarantees a packet id for QoS > 0.
            (_, None) => {}
        }
        Ok(())
    }

    /// Checks the ACL, runs transforms and routes the result. A refused PUBLISH is still
    /// acknowledged by the caller (3.1.1 has no negative acknowledgement) but goes nowhere.
    fn route(&mut self, p: Publish) {
        if is_sys_topic(&p.topic) {
            Counters::inc(&self.shared.counters.ops.sys_publish_denied);
            if self.logged & SYS_LOGGED == 0 {
                self.logged |= SYS_LOGGED;
                warn!(topic = %p.topic, "PUBLISH to $SYS refused: acknowledged and dropped (logged once per connection)");
            }
            return;
        }
        let runtime = self.shared.runtime.load();
        let request = AclRequest {
            action: AclAction::Publish,
            topic: &p.topic,
            qos: p.qos,
            retain: p.retain,
        };
        if !runtime.security.authorize_cached(
            &self.client,
            &request,
            &mut self.acl_cache,
            runtime.generation,
        ) {
            Counters::inc(&self.shared.counters.acl_denied_publish);
            warn!(topic = %p.topic, "publish denied by ACL; acknowledged and dropped");
            return;
        }
        for message in runtime
            .security
            .transform(&self.client, Message::from_publish(p))
        {
            // A transform may produce anything; only valid topic names are routed.
            if let Err(e) = crate::protocol::topic::validate_topic_name(&message.topic) {
                warn!(topic = %message.topic, error = %e, "transform produced an invalid topic; dropped");
                continue;
            }
            let (topic, qos, retain, len) = (
                message.topic.clone(),
                message.qos,
                message.retain,
                message.payload.len(),
            );
            let (subscribers, ticket) = self.shared.publish_tracked(message);
            self.note(ticket);
            self.shared
                .ops
                .events
                .emit(|| BrokerEvent::MessagePublished {
                    client_id: self.client_id.clone(),
                    topic,
                    qos,
                    retain,
                    payload_len: len,
                    subscribers,
                });
        }
    }
}

/// Only the broker publishes `$SYS` topics: client PUBLISHes and wills there are refused.
fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// `Conn::logged` bit for PUBLISH to `$SYS` (above the `LimitKind` bits).
const SYS_LOGGED: u32 = 1 << 31;

/// The metrics kind of a crossed topic limit.
fn topic_limit_kind(over: crate::config::TopicLimit) -> LimitKind {
    match over {
        crate::config::TopicLimit::Length => LimitKind::MaxTopicLength,
        crate::config::TopicLimit::Levels => LimitKind::MaxTopicLevels,
    }
}
