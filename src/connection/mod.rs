//! The async shell of one client connection: moves bytes between a socket and the sans-IO
//! [`Engine`], and arms the engine's timers.
//!
//! It reads, decodes (the codec), feeds packets to the engine, waits for the receipts the
//! engine hands back (durability before acknowledgements), writes, and sleeps until the
//! next deadline, a wake-up from the session or a close signal. Protocol decisions live in
//! the engine ([`crate::core::engine`]); the CONNECT step in [`connect`].
//!
//! Owns the socket, the read and write buffers and the connection counters. Must not make
//! protocol decisions (ACL, limits, QoS flows) or touch another session.

mod connect;

use crate::core::engine::Engine;
use crate::core::registry::SessionEntry;
use crate::core::router::Receipt;
use crate::core::Core;
use crate::events::BrokerEvent;
use crate::metrics::Counters;
use crate::model::{CloseReason, CloseSignal, ConnId, Signal, TransportKind};
use crate::protocol::codec::{self, encode_with};
use crate::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, Packet, Properties, ProtocolError, ProtocolLevel,
};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

/// Stop taking more messages from the session once this much output is pending.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Stop reading from a client that does not read its acknowledgements.
const WRITE_HARD_LIMIT: usize = 1024 * 1024;
/// Read granularity; buffers grow only as bytes arrive.
const READ_CHUNK: usize = 4096;
/// How long a takeover waits for the previous connection to finish (and publish its will).
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// How long a connection the broker closes keeps handling what its client already sent.
const FINISH_INBOUND: Duration = Duration::from_millis(500);

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
    /// Its listener's token (a child of the broker's shutdown token, cancelled when the
    /// listener is removed with `drain: true`), shared by the listener's connections; the
    /// connection's `CloseSignal` keeps it as its parent.
    pub cancel: CancellationToken,
}

/// Keeps the connection counters right however the task ends.
struct ConnGuard {
    core: Arc<Core>,
    transport: TransportKind,
    listener_conns: Arc<AtomicUsize>,
}

impl ConnGuard {
    /// Counts the connection; also says whether the listener was already at its own
    /// `max_connections` (decided on the count itself, so a burst of handshakes finishing
    /// together cannot slip past it).
    fn new(core: Arc<Core>, info: &ConnectionInfo) -> (Self, bool) {
        Counters::inc(&core.counters.connections);
        Counters::inc(&core.counters.connections_accepted);
        core.note_connections(Counters::get(&core.counters.connections));
        Counters::inc(transport_counter(&core, info.transport));
        let before = info.listener_conns.fetch_add(1, Ordering::Relaxed);
        let over_listener_limit = info.listener_max_connections.is_some_and(|m| before >= m);
        let guard = ConnGuard {
            core,
            transport: info.transport,
            listener_conns: info.listener_conns.clone(),
        };
        (guard, over_listener_limit)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        Counters::dec(&self.core.counters.connections);
        Counters::dec(transport_counter(&self.core, self.transport));
        self.listener_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

fn transport_counter(core: &Core, t: TransportKind) -> &std::sync::atomic::AtomicU64 {
    match t {
        TransportKind::Tcp => &core.counters.connections_tcp,
        TransportKind::Tls => &core.counters.connections_tls,
        TransportKind::Ws => &core.counters.connections_ws,
        TransportKind::Wss => &core.counters.connections_wss,
        TransportKind::Bridge => &core.counters.connections_bridge,
    }
}

/// Detaches a connection from its session when dropped: on the normal path after the will
/// is published, and while unwinding if the task panics, so that the session is not left
/// owned by a dead connection (a clean one would leak; a takeover would wait for `done`).
struct Attachment {
    core: Arc<Core>,
    entry: Arc<SessionEntry>,
    conn_id: ConnId,
    close: Arc<CloseSignal>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // Normally already out of the admin API's list (before the will); not when unwinding.
        self.core.ops.unregister(self.conn_id);
        self.core.registry.detach(&self.entry, self.conn_id);
        self.close.finished();
    }
}

/// A connection past its CONNACK: what the connected-state loop and the close need, and
/// nothing else, since this is what an idle connection's task holds while it waits. The
/// CONNECT handling before it and the close after it run in futures of their own (boxed),
/// so their larger state is not reserved for the connection's whole life.
struct Connected<S> {
    conn: Conn<S>,
    engine: Engine,
    close: Arc<CloseSignal>,
    /// Boxed: only a reload reads them.
    credentials: Box<Credentials>,
    /// The cluster directory's token for this connection's will.
    will_token: Option<u64>,
    attachment: Attachment,
    /// Dropped last: the connection counters.
    _guard: ConnGuard,
}

/// Serves one accepted connection until it ends.
pub(crate) fn serve<S>(
    core: Arc<Core>,
    stream: S,
    info: ConnectionInfo,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Not an `async fn`, and the CONNECT step boxed: an async fn keeps its arguments for
    // its whole life, and the task's allocation is the largest part of an idle
    // connection's memory. Once connected, the task holds `Connected` and the wait of
    // `Conn::run`, nothing of the CONNECT step.
    let span = info_span!("conn", peer = %info.peer, transport = info.transport.as_str(), client_id = tracing::field::Empty);
    serve_connected(Box::pin(open(core, stream, info))).instrument(span)
}

async fn serve_connected<S, F>(opening: std::pin::Pin<Box<F>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: std::future::Future<Output = Option<Connected<S>>>,
{
    let Some(mut c) = opening.await else {
        return;
    };
    let reason = c
        .conn
        .run(&mut c.engine, &c.close, &mut c.credentials)
        .await;
    Box::pin(c.finish(reason)).await;
}

/// Reads the CONNECT, authenticates, attaches the session and queues the CONNACK; `None`
/// when the connection ended before (refused, timed out, closed).
async fn open<S>(core: Arc<Core>, stream: S, info: ConnectionInfo) -> Option<Connected<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (guard, over_listener_limit) = ConnGuard::new(core.clone(), &info);
    let runtime = core.runtime.load_full();
    let cfg = &runtime.config.server;
    // The guard already counted this connection.
    let over_global_limit = Counters::get(&core.counters.connections) > cfg.max_connections as u64;
    let mut conn = Conn {
        core: core.clone(),
        io: stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        out: Vec::new(),
        max_packet_size: cfg.max_packet_size,
        level: ProtocolLevel::V311,
        receipt: Receipt::ACCEPTED,
    };
    // [MQTT-3.1.0-1]: the first packet must be CONNECT, within connect_timeout; a first
    // byte that cannot start one closes the connection at once.
    let first = tokio::time::timeout_at(info.deadline, conn.read_connect()).await;
    let mut connect = match first {
        Err(_) => {
            Counters::inc(&core.counters.ops.connect_timeouts);
            info!(timeout = %cfg.connect_timeout, "closing: no CONNECT within connect_timeout");
            return None;
        }
        Ok(Err(CloseReason::Protocol(reason) | CloseReason::Refused { reason, .. })) => {
            Counters::inc(&core.counters.protocol_errors);
            warn!(peer = %info.peer, %reason, "closing before CONNECT: protocol error");
            // A refusing CONNACK (protocol level) may be pending.
            Box::pin(conn.flush_best_effort()).await;
            return None;
        }
        Ok(Err(CloseReason::PeerClosed)) => {
            debug!("closed by peer before CONNECT");
            return None;
        }
        Ok(Err(e)) => {
            debug!(reason = ?e, "closed before CONNECT");
            return None;
        }
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            Counters::inc(&core.counters.protocol_errors);
            warn!(
                packet = other.name(),
                "closing: first packet is not CONNECT [MQTT-3.1.0-1]"
            );
            return None;
        }
    };

    // From here on packets are read and written in the client's protocol revision.
    conn.level = connect.protocol;
    let v5 = connect.protocol.is_v5();
    let refuse = |code| Packet::ConnAck(ConnAck::new(false, code));
    // MQTT 5 enhanced authentication (section 4.12): the AUTH exchange comes before CONNACK.
    // Boxed, as every rare path: its state must not enlarge every connection's future.
    let wants_enhanced = v5
        && connect
            .properties
            .as_ref()
            .is_some_and(|p| p.authentication_method.is_some());
    let enhanced = if wants_enhanced {
        match Box::pin(enhanced_connect(
            &core, &runtime, &mut conn, &connect, &info,
        ))
        .await
        {
            Some(e) => Some(e),
            None => return None,
        }
    } else {
        None
    };
    if connect.will.as_ref().is_some_and(|w| w.retain) && !runtime.config.limits.retain_available {
        if v5 {
            // Retain Available is 0 and the will asks to be retained: refused (3.2.2.3.5).
            warn!(client_id = %connect.client_id, "refusing connection: retained will while limits.retain_available is false (CONNACK 0x9A)");
            let mut ack = ConnAck::new(false, ConnectReturnCode::NotAuthorized);
            ack.reason_code = Some(crate::protocol::reason::RETAIN_NOT_SUPPORTED);
            conn.send_and_close(Packet::ConnAck(ack)).await;
            return None;
        }
        // 3.1.1 cannot be told: the will is published, but not retained.
        info!(client_id = %connect.client_id, "retained will while limits.retain_available is false: it will be published without RETAIN");
        if let Some(w) = connect.will.as_mut() {
            w.retain = false;
        }
    }
    if over_global_limit || over_listener_limit {
        Counters::inc(&core.counters.connections_refused_limit);
        warn!(client_id = %connect.client_id, listener = %info.listener, "refusing connection: max_connections reached");
        conn.send_and_close(refuse(ConnectReturnCode::ServerUnavailable))
            .await;
        return None;
    }
    if core
        .ops
        .cluster_down
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        // A node cut off from NATS could neither store nor route for the session: the
        // client is sent to try another node (through its load balancer).
        warn!(client_id = %connect.client_id, "refusing connection: this node is cut off from its cluster (CONNACK server unavailable)");
        conn.send_and_close(refuse(ConnectReturnCode::ServerUnavailable))
            .await;
        return None;
    }
    let conn_id = core.next_conn_id();
    let mut assigned = false;
    let client_id = if connect.client_id.is_empty() {
        // MQTT 5 assigns an id whatever Clean Start says [MQTT-3.1.3-7].
        if !connect.clean_session && !v5 {
            // [MQTT-3.1.3-8]
            Counters::inc(&core.counters.ops.connects_identifier_rejected);
            info!("refusing connection: empty client id without clean session");
            conn.send_and_close(refuse(ConnectReturnCode::IdentifierRejected))
                .await;
            return None;
        }
        // [MQTT-3.1.3-6]
        assigned = true;
        core.assign_client_id(conn_id)
    } else {
        connect.client_id.clone()
    };
    tracing::Span::current().record("client_id", client_id.as_str());
    let identity_as_username = info.use_identity_as_username && info.tls_identity.is_some();
    let client = Arc::new(crate::hooks::ClientInfo {
        client_id: Arc::from(client_id.as_str()),
        username: if let Some(e) = &enhanced {
            // The user the enhanced authentication proved.
            Some(e.user.clone())
        } else if identity_as_username {
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
    if enhanced.is_some() {
        // Authenticated by the AUTH exchange; the password chain has nothing to check.
        Counters::inc(&core.counters.auth_success);
        core.backoff.succeeded(info.peer.ip());
    } else if let Err(ack) = Box::pin(connect::authenticate(
        &core,
        &runtime,
        &client,
        &connect,
        identity_as_username,
    ))
    .await
    {
        conn.send_and_close(Packet::ConnAck(ack)).await;
        return None;
    }

    let negotiation = v5.then(|| {
        crate::core::mqtt5::negotiate(
            &runtime.config,
            &connect,
            assigned.then_some(client_id.as_str()),
        )
    });
    if let Some(directory) = core.directory.get() {
        use crate::core::directory::ClaimMode;
        let mode = if connect.clean_session {
            ClaimMode::Discard
        } else if core.registry.get(&client.client_id).is_some() {
            ClaimMode::Keep
        } else {
            ClaimMode::Load
        };
        if let Err(why) = directory.claim(&client.client_id, mode).await {
            warn!(reason = %why, "refusing connection: the cluster could not give this node the session (CONNACK server unavailable)");
            conn.send_and_close(refuse(ConnectReturnCode::ServerUnavailable))
                .await;
            return None;
        }
    }
    let close = Arc::new(CloseSignal::new(info.cancel.clone()));
    let attached = core.registry.attach(
        &client,
        conn_id,
        close.clone(),
        negotiation.as_ref().map(|n| n.session_expiry),
    );
    // From here on the session is detached however the task ends, a panic included.
    let attachment = Attachment {
        core: core.clone(),
        entry: attached.entry.clone(),
        conn_id,
        close: close.clone(),
    };
    if let Some(previous) = attached.previous {
        // The previous connection handles what its client already sent, publishes its
        // will and detaches; only then is this one acknowledged.
        let _ = tokio::time::timeout(TAKEOVER_WAIT, previous.close.wait_finished()).await;
    }
    // In a cluster, another node publishes the will should this one die.
    let will_token = match core.directory.get() {
        Some(d) => d.will_armed(&client, connect.will.as_ref()).await,
        None => None,
    };
    // [MQTT-3.2.2-1], [MQTT-3.2.2-2]: session present only when a stored session resumed.
    let mut connack = ConnAck::new(attached.session_present, ConnectReturnCode::Accepted);
    let (keep_alive, negotiated) = match negotiation {
        Some(n) => {
            attached.entry.state().set_peer(n.peer);
            let mut props = n.connack;
            let mut negotiated = n.negotiated;
            if let Some(e) = &enhanced {
                props.authentication_method = Some(e.method.clone());
                props.authentication_data = e.data.clone().map(bytes::Bytes::from);
                negotiated.auth_method = Some(e.method.clone());
            }
            connack.properties = Some(Box::new(props));
            (n.keep_alive, Some(negotiated))
        }
        None => {
            attached
                .entry
                .state()
                .set_peer(crate::session::state::Peer::default());
            (connect.keep_alive, None)
        }
    };
    let mut engine = Engine::with_v5(
        client.clone(),
        attached.entry.clone(),
        connect.will.clone(),
        keep_alive,
        cfg.keep_alive_timeout.get(),
        std::time::Instant::now(),
        negotiated,
    );
    engine.set_bridge(connect.bridge && !v5);
    engine.connected(&core, Packet::ConnAck(connack));
    core.ops
        .register(conn_id, &client, &attached.entry, close.clone());
    Counters::inc(&core.counters.ops.connects_accepted);
    core.ops.events.emit(|| BrokerEvent::ClientConnected {
        client_id: client.client_id.clone(),
        peer: client.peer,
        transport: client.transport,
        username: client.username.clone(),
        clean_session: client.clean_session,
        session_present: attached.session_present,
        protocol: client.protocol,
    });
    info!(
        protocol = connect.protocol.as_str(),
        keep_alive,
        clean_session = connect.clean_session,
        session_present = attached.session_present,
        username = connect.username.as_deref().unwrap_or(""),
        "client connected"
    );

    let credentials = Credentials {
        password: connect.password.clone(),
        certificate_verified: identity_as_username,
        fingerprint: runtime.auth_fingerprint,
        enhanced: enhanced.map(|e| e.method.into_boxed_str()),
    };
    Some(Connected {
        conn,
        engine,
        close,
        credentials: Box::new(credentials),
        will_token,
        attachment,
        _guard: guard,
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connected<S> {
    /// Ends the connection: handles what the client had already sent when the broker closes,
    /// tells an MQTT 5 client why, flushes, publishes or defers the will and detaches.
    async fn finish(self, mut reason: CloseReason) {
        let Connected {
            mut conn,
            mut engine,
            will_token,
            attachment,
            _guard,
            ..
        } = self;
        let core = conn.core.clone();
        if reason.finishes_inbound() {
            // Closed by the broker (takeover, admin, listener removal, shutdown): what the
            // client had already sent is handled first, so an acknowledged PUBLISH is not
            // lost and a DISCONNECT in flight still discards the will [MQTT-3.14.4-3].
            if let Some(client_reason) = conn.finish_inbound(&mut engine).await {
                reason = client_reason;
            }
        }
        if conn.level.is_v5() {
            // An MQTT 5 client is told why the server closes (section 3.14.2.1).
            if let Some(code) = reason.v5_disconnect_code() {
                conn.out.push(server_disconnect(&core, code, &reason));
            }
        }
        conn.flush_best_effort().await;
        core.ops.unregister(attachment.conn_id);
        let deferred = engine.closed(&core, &reason);
        if let (Some(d), Some(token)) = (core.directory.get(), will_token) {
            d.will_done(&engine.entry().client_id, token);
        }
        // Detaches only after the will is published, so a takeover sees it first.
        drop(attachment);
        if let Some(will) = deferred {
            core.publish_will_later(engine.entry().clone(), will);
        }
    }
}

/// Counts the non-success MQTT 5 reason codes of a packet sent to a client.
fn count_reason_codes(core: &Core, p: &Packet) {
    let counts = &core.counters.ops.reason_codes_sent;
    let count = |code: u8| {
        if code != crate::protocol::reason::SUCCESS {
            counts.inc(code);
        }
    };
    match p {
        Packet::ConnAck(a) => count(a.v5_reason()),
        Packet::Ack(a) => count(a.reason),
        Packet::SubAck(s) => {
            for c in &s.codes {
                if let crate::protocol::SubAckCode::Refused(code) = c {
                    count(*code);
                } else if *c == crate::protocol::SubAckCode::Failure {
                    count(0x80);
                }
            }
        }
        Packet::UnsubAck(u) => u.codes.iter().for_each(|&c| count(c)),
        Packet::DisconnectWithReason(d) => count(d.reason),
        _ => {}
    }
}

/// The DISCONNECT an MQTT 5 client gets when the server closes: the reason code, the
/// reason (a protocol violation's text) and the configured Server Reference when the code
/// points elsewhere.
fn server_disconnect(core: &Core, code: u8, reason: &CloseReason) -> Packet {
    let mut props = Properties {
        reason_string: reason.violation().map(str::to_owned),
        ..Default::default()
    };
    if matches!(code, 0x9C | 0x9D | 0x8B) {
        let reference = core.runtime.load().config.mqtt5.server_reference.clone();
        if !reference.is_empty() {
            props.server_reference = Some(reference);
        }
    }
    Packet::DisconnectWithReason(Disconnect {
        reason: code,
        properties: (!props.is_empty()).then(|| Box::new(props)),
    })
}

/// The user an enhanced authentication proved, its method and the final server data.
struct Enhanced {
    method: String,
    user: String,
    data: Option<Vec<u8>>,
}

/// Runs the enhanced authentication of an MQTT 5 CONNECT (section 4.12); `None` when the
/// connection was refused (CONNACK 0x8C for a method not offered, 0x86 for a failed
/// exchange, after the login back-off) or timed out.
async fn enhanced_connect<S: AsyncRead + AsyncWrite + Unpin>(
    core: &Arc<Core>,
    runtime: &Arc<crate::core::Runtime>,
    conn: &mut Conn<S>,
    connect: &crate::protocol::Connect,
    info: &ConnectionInfo,
) -> Option<Box<Enhanced>> {
    let props = connect.properties.as_deref()?;
    let method = props.authentication_method.clone()?;
    let Some(auth) = runtime.security.enhanced(&method).cloned() else {
        // A method we do not offer: 0x8C.
        Counters::inc(&core.counters.ops.connects_bad_auth_method);
        warn!(client_id = %connect.client_id, %method, "refusing connection: enhanced authentication method not offered (security.auth_methods; CONNACK 0x8C)");
        let mut ack = ConnAck::new(false, ConnectReturnCode::NotAuthorized);
        ack.reason_code = Some(crate::protocol::reason::BAD_AUTHENTICATION_METHOD);
        conn.send_and_close(Packet::ConnAck(ack)).await;
        return None;
    };
    let data = props.authentication_data.clone().unwrap_or_default();
    let exchange = conn.auth_exchange(auth.start(&data), &method);
    match tokio::time::timeout_at(info.deadline, exchange).await {
        Ok(Ok((user, data))) => Some(Box::new(Enhanced { method, user, data })),
        Ok(Err(why)) => {
            Counters::inc(&core.counters.auth_failure);
            core.ops.events.emit(|| BrokerEvent::AuthFailed {
                client_id: Arc::from(connect.client_id.as_str()),
                username: connect.username.clone(),
                peer: info.peer,
                reason: why.clone(),
            });
            let cfg = &runtime.config.security;
            let delay = core.backoff.failed(
                info.peer.ip(),
                cfg.auth_failure_delay.get(),
                cfg.auth_failure_max_delay.get(),
            );
            warn!(client_id = %connect.client_id, %method, reason = %why, "refusing connection: enhanced authentication failed (CONNACK 0x86)");
            tokio::time::sleep(delay).await;
            let mut ack = ConnAck::new(false, ConnectReturnCode::BadUsernameOrPassword);
            ack.properties = Some(Box::new(Properties {
                authentication_method: Some(method),
                ..Default::default()
            }));
            conn.send_and_close(Packet::ConnAck(ack)).await;
            None
        }
        Err(_) => {
            Counters::inc(&core.counters.ops.connect_timeouts);
            info!(%method, "closing: enhanced authentication not finished within connect_timeout");
            None
        }
    }
}

/// What a reload re-check needs of the CONNECT (never logged).
struct Credentials {
    password: Option<bytes::Bytes>,
    certificate_verified: bool,
    /// `Runtime::auth_fingerprint` this client was last authenticated against.
    fingerprint: Option<u64>,
    /// The enhanced authentication method it proved itself with, if any.
    enhanced: Option<Box<str>>,
}

struct Conn<S> {
    core: Arc<Core>,
    /// The stream, whole: reads and writes are polled from one task, one at a time.
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Packets to encode into `wbuf`, in order, once `receipt` is satisfied.
    out: Vec<Packet>,
    max_packet_size: usize,
    /// The client's protocol revision (packets after CONNECT depend on it).
    level: ProtocolLevel,
    /// What must be accepted (durable) before `out` is written.
    receipt: Receipt,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Reads until the first packet is decoded. A complete packet (or a decoding error) is
    /// reported as it is; while a packet is incomplete, a first byte that cannot start a
    /// CONNECT closes the connection at once instead of waiting for more [MQTT-3.1.0-1].
    async fn read_connect(&mut self) -> Result<Packet, CloseReason> {
        loop {
            if let Some(p) = self.decode_one()? {
                return Ok(p);
            }
            if let Err(e) = codec::check_first_byte(&self.rbuf) {
                return Err(CloseReason::Protocol(e.to_string()));
            }
            self.read_more().await?;
        }
    }

    fn decode_one(&mut self) -> Result<Option<Packet>, CloseReason> {
        let v5 = self.level.is_v5();
        // A violation carries its MQTT 5 reason code for the DISCONNECT (0x81 malformed,
        // 0x82 protocol error, 0x95 packet too large).
        let violation = |e: ProtocolError| {
            if v5 {
                CloseReason::Refused {
                    code: e.reason_code(),
                    reason: e.to_string(),
                }
            } else {
                CloseReason::Protocol(e.to_string())
            }
        };
        match codec::decode_with(&mut self.rbuf, self.max_packet_size, self.level) {
            Ok(p) => Ok(p),
            Err(e @ ProtocolError::PacketTooLarge { .. }) => {
                Counters::inc(&self.core.counters.ops.oversized_packets);
                Err(violation(e))
            }
            Err(ProtocolError::UnsupportedProtocolLevel(level)) => {
                // [MQTT-3.1.2-2]: answer CONNACK 0x01, then close.
                self.out.push(Packet::ConnAck(ConnAck::new(
                    false,
                    ConnectReturnCode::UnacceptableProtocolVersion,
                )));
                Err(CloseReason::Protocol(format!(
                    "unsupported protocol level {level} (CONNACK 0x01 sent)"
                )))
            }
            Err(e) => Err(violation(e)),
        }
    }

    async fn read_more(&mut self) -> Result<(), CloseReason> {
        match std::future::poll_fn(|cx| poll_read_lazily(&mut self.io, &mut self.rbuf, cx)).await {
            Ok(0) => Err(CloseReason::PeerClosed),
            Ok(n) => {
                Counters::add(&self.core.counters.bytes_in, n as u64);
                Ok(())
            }
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// A read error: a WebSocket violation is the client's protocol error (logged at warn,
    /// an oversized message counted like an oversized packet), anything else is I/O.
    fn read_error(&self, e: std::io::Error) -> CloseReason {
        match crate::model::WsViolation::of(&e) {
            Some(v) => {
                if matches!(v, crate::model::WsViolation::TooLarge { .. }) {
                    Counters::inc(&self.core.counters.ops.oversized_packets);
                }
                CloseReason::Protocol(v.to_string())
            }
            None => CloseReason::Io(e.to_string()),
        }
    }

    /// Takes the engine's output (and the receipt it must wait for).
    fn collect(&mut self, engine: &mut Engine) {
        let receipt = engine.drain_output_into(&mut self.out, &self.core.ops.events);
        self.receipt = self.receipt.and(receipt);
    }

    /// Waits until what the pending output depends on is accepted: with `sync: always` an
    /// acknowledgement waits for the store, in a cluster for JetStream. An error: the
    /// router will never accept it, and the pending acknowledgements must not be sent.
    async fn await_receipt(&mut self) -> Result<(), String> {
        let receipt = std::mem::take(&mut self.receipt);
        if let Some(tickets) = receipt.router {
            self.core.router.accepted(tickets).await?;
        }
        if let (Some(ticket), Some(storage)) = (receipt.storage, &self.core.storage) {
            storage.wait_durable(ticket).await;
        }
        Ok(())
    }

    /// Encodes pending packets into the write buffer; returns how many were PUBLISH.
    fn encode_out(&mut self) -> u64 {
        let mut published = 0;
        let v5 = self.level.is_v5();
        for p in self.out.drain(..) {
            match &p {
                Packet::Publish(p) => {
                    published += 1;
                    self.core
                        .counters
                        .ops
                        .publish(false, p.qos, p.payload.len());
                }
                other if v5 => count_reason_codes(&self.core, other),
                _ => {}
            }
            encode_with(&p, self.level, &mut self.wbuf);
        }
        if published > 0 {
            Counters::add(&self.core.counters.messages_out, published);
        }
        published
    }

    /// Records publish-to-deliver latency of the messages the session just handed out.
    fn observe_latency(&self, engine: &Engine) {
        let stamps = engine.take_delivered_stamps();
        let now = std::time::Instant::now();
        for at in stamps {
            self.core
                .counters
                .ops
                .deliver_latency
                .observe(now.saturating_duration_since(at));
        }
    }

    /// Decodes and hands buffered packets to the engine until the buffer is empty or the
    /// publish rate pauses the client.
    fn process_buffered(&mut self, engine: &mut Engine) -> Result<(), CloseReason> {
        while engine.read_paused_until().is_none() {
            match self.decode_one()? {
                Some(p) => engine.handle(&self.core, p, std::time::Instant::now())?,
                None => break,
            }
        }
        Ok(())
    }

    /// When the broker closes the connection: handles what the client had already sent
    /// (briefly waiting for bytes in flight), so that every QoS 1/2 PUBLISH it sent is
    /// acknowledged before the close. Bounded in time so a chatty client cannot hold the
    /// close up. Returns the client's own reason if it ended the connection meanwhile
    /// (DISCONNECT, a protocol error).
    async fn finish_inbound(&mut self, engine: &mut Engine) -> Option<CloseReason> {
        let until = Instant::now() + FINISH_INBOUND;
        loop {
            // The publish-rate pause does not hold a closing connection.
            while let Some(p) = match self.decode_one() {
                Ok(p) => p,
                Err(e) => return Some(e),
            } {
                if let Err(e) = engine.handle(&self.core, p, std::time::Instant::now()) {
                    self.collect(engine);
                    return Some(e);
                }
            }
            self.collect(engine);
            let wait =
                Duration::from_millis(20).min(until.saturating_duration_since(Instant::now()));
            let read =
                std::future::poll_fn(|cx| poll_read_lazily(&mut self.io, &mut self.rbuf, cx));
            match tokio::time::timeout(wait, read).await {
                Ok(Ok(n)) if n > 0 => {
                    Counters::add(&self.core.counters.bytes_in, n as u64);
                }
                _ => return None,
            }
        }
    }

    /// Runs an enhanced authentication exchange before CONNACK: AUTH 0x18 packets both ways
    /// until the method succeeds (the user and the final data for CONNACK) or fails.
    async fn auth_exchange(
        &mut self,
        mut step: crate::hooks::AuthStep,
        method: &str,
    ) -> Result<(String, Option<Vec<u8>>), String> {
        use crate::hooks::AuthStep;
        loop {
            let exchange = match step {
                AuthStep::Success { username, data } => return Ok((username, data)),
                AuthStep::Failure(why) => return Err(why),
                AuthStep::Continue(data, exchange) => {
                    self.out.push(crate::protocol::Auth::packet(
                        crate::protocol::reason::CONTINUE_AUTHENTICATION,
                        method,
                        Some(data),
                    ));
                    self.encode_out();
                    let wbuf = std::mem::take(&mut self.wbuf);
                    self.io
                        .write_all(&wbuf)
                        .await
                        .map_err(|e| format!("writing AUTH: {e}"))?;
                    self.io
                        .flush()
                        .await
                        .map_err(|e| format!("writing AUTH: {e}"))?;
                    exchange
                }
            };
            let packet = loop {
                match self.decode_one() {
                    Ok(Some(p)) => break p,
                    Ok(None) => self
                        .read_more()
                        .await
                        .map_err(|e| format!("reading AUTH: {e:?}"))?,
                    Err(e) => return Err(format!("{e:?}")),
                }
            };
            step = match packet {
                Packet::Auth(a)
                    if a.reason == crate::protocol::reason::CONTINUE_AUTHENTICATION
                        && a.properties
                            .as_ref()
                            .and_then(|p| p.authentication_method.as_deref())
                            == Some(method) =>
                {
                    let data = a
                        .properties
                        .and_then(|p| p.authentication_data)
                        .unwrap_or_default();
                    exchange.next(&data)
                }
                other => {
                    return Err(format!(
                        "expected AUTH 0x18 with method {method}, got {} (section 4.12)",
                        other.name()
                    ))
                }
            };
        }
    }

    /// Sends one packet (e.g. a refusing CONNACK) and closes.
    async fn send_and_close(&mut self, p: Packet) {
        self.out.push(p);
        Box::pin(self.flush_best_effort()).await;
    }

    /// Writes whatever is pending, giving up after a short time.
    async fn flush_best_effort(&mut self) {
        // Acknowledgements still pending (e.g. from the last reads) promise durability too.
        if self.await_receipt().await.is_err() {
            self.out.retain(|p| !p.is_publish_ack());
        }
        self.encode_out();
        let wbuf = std::mem::take(&mut self.wbuf);
        let write = async {
            self.io.write_all(&wbuf).await?;
            self.io.shutdown().await
        };
        if tokio::time::timeout(Duration::from_secs(1), write)
            .await
            .is_ok()
        {
            Counters::add(&self.core.counters.bytes_out, wbuf.len() as u64);
        }
    }

    /// The connected-state loop: returns why the connection closes.
    ///
    /// One hand-written wait ([`Conn::poll_event`]) instead of a `select!` over a future
    /// per cause: the session's wake-up and the close/keep-alive/reload signal only
    /// register this task's waker, so an idle connection's task stays small.
    async fn run(
        &mut self,
        engine: &mut Engine,
        close: &CloseSignal,
        credentials: &mut Credentials,
    ) -> CloseReason {
        // Packets that arrived in the same read as CONNECT are already buffered: handle them
        // now, not when the client happens to send more.
        if let Err(close) = self.process_buffered(engine) {
            self.collect(engine);
            return close;
        }
        if close.parent().is_cancelled() {
            // Cancelled before `OpsState::close_cancelled` could see this connection.
            close.parent_cancelled();
        }
        // The keep-alive deadline is watched by the broker's sweep (through `close`); only
        // a client over its publish rate gets a timer of its own, while paused.
        let mut keep_alive_at: Option<std::time::Instant> = None;
        let mut pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        // TLS and WebSocket streams buffer internally: flush once the write buffer is drained.
        let mut needs_flush = false;
        loop {
            self.collect(engine);
            if !self.receipt.is_accepted() {
                // Boxed: only `sync: always` and a cluster wait here.
                if let Err(why) = Box::pin(self.await_receipt()).await {
                    engine.unacknowledged(&self.core, &self.out);
                    self.out.retain(|p| !p.is_publish_ack());
                    return CloseReason::ClusterUnavailable(why);
                }
            }
            if self.encode_out() > 0 {
                self.observe_latency(engine);
            }
            if self.wbuf.is_empty() && !needs_flush {
                // Nothing to write: an idle connection keeps no write buffer or packet list.
                release(&mut self.wbuf);
                if self.out.capacity() > 0 {
                    self.out = Vec::new();
                }
                engine.release_output();
            }
            let keep_alive = engine.keep_alive_deadline();
            if keep_alive != keep_alive_at {
                close.set_deadline(keep_alive);
                keep_alive_at = keep_alive;
            }
            match (
                engine.read_paused_until().map(Instant::from_std),
                &mut pause,
            ) {
                (None, _) => pause = None,
                (Some(at), Some(timer)) => {
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                }
                (Some(at), None) => pause = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            let wait = Wait {
                paused: pause.is_some(),
                needs_flush,
            };
            // The engine is not `Sync` (the poll closure may only hold `Sync` references).
            let wake = &engine.entry().wake;
            let event =
                std::future::poll_fn(|cx| self.poll_event(cx, wake, close, pause.as_mut(), wait))
                    .await;
            // Busy from here on: what the session queues meanwhile is taken in this batch
            // or the next, without scheduling the task again.
            wake.unregister();
            match event {
                Event::Closed => {
                    return close
                        .reason()
                        .unwrap_or(if self.core.shutdown.is_cancelled() {
                            CloseReason::Shutdown
                        } else {
                            CloseReason::ListenerRemoved
                        });
                }
                Event::Wrote(r) => match r {
                    Ok(Some(0)) => return CloseReason::PeerClosed,
                    Ok(Some(n)) => {
                        let _ = self.wbuf.split_to(n);
                        needs_flush = true;
                        Counters::add(&self.core.counters.bytes_out, n as u64);
                    }
                    Ok(None) => needs_flush = false,
                    Err(e) => return CloseReason::Io(e.to_string()),
                },
                Event::Read(r) => match r {
                    Ok(0) => return CloseReason::PeerClosed,
                    Ok(n) => {
                        Counters::add(&self.core.counters.bytes_in, n as u64);
                        if let Err(close) = self.process_buffered(engine) {
                            self.collect(engine);
                            return close;
                        }
                    }
                    Err(e) => return self.read_error(e),
                },
                Event::Paused => {
                    // Over the publish rate: the socket was not read until the budget
                    // refilled.
                    pause = None;
                    let _ = engine.on_timer(std::time::Instant::now());
                    if let Err(close) = self.process_buffered(engine) {
                        self.collect(engine);
                        return close;
                    }
                }
                Event::KeepAlive => {
                    keep_alive_at = None;
                    if let Err(close) = engine.on_timer(std::time::Instant::now()) {
                        return close;
                    }
                }
                Event::Wake => engine.on_wake(&self.core),
                Event::Reload => {
                    self.max_packet_size = self.core.runtime.load().config.server.max_packet_size;
                    let (core, client) = (self.core.clone(), engine.client().clone());
                    if let Err(why) = Box::pin(recheck(core, client, credentials)).await {
                        return CloseReason::Revoked(why);
                    }
                }
            }
        }
    }

    /// Polls every cause that moves a connected client on, in priority order: a close, a
    /// keep-alive verdict or a reload, the pending write, the socket (unless the client is
    /// paused or does not read its acknowledgements), the end of a pause, and the session's
    /// wake-up (unless enough output is pending).
    fn poll_event(
        &mut self,
        cx: &mut std::task::Context<'_>,
        wake: &crate::core::registry::Wake,
        close: &CloseSignal,
        pause: Option<&mut std::pin::Pin<Box<tokio::time::Sleep>>>,
        wait: Wait,
    ) -> std::task::Poll<Event> {
        use std::future::Future;
        use std::task::Poll;
        // A signal is consumed when polled: it is acted on now, ahead of the socket (a
        // keep-alive verdict left behind a ready write would never come again).
        match close.poll_signal(cx) {
            Poll::Ready(Signal::Close) => return Poll::Ready(Event::Closed),
            Poll::Ready(Signal::Timer) => return Poll::Ready(Event::KeepAlive),
            Poll::Ready(Signal::Reload) => return Poll::Ready(Event::Reload),
            Poll::Pending => {}
        }
        if !self.wbuf.is_empty() || wait.needs_flush {
            let io = std::pin::Pin::new(&mut self.io);
            let r = if self.wbuf.is_empty() {
                io.poll_flush(cx).map(|r| r.map(|()| None))
            } else {
                io.poll_write(cx, &self.wbuf).map(|r| r.map(Some))
            };
            if let Poll::Ready(r) = r {
                return Poll::Ready(Event::Wrote(r));
            }
        }
        if self.wbuf.len() < WRITE_HARD_LIMIT && !wait.paused {
            if let Poll::Ready(r) = poll_read_lazily(&mut self.io, &mut self.rbuf, cx) {
                return Poll::Ready(Event::Read(r));
            }
        }
        if pause.is_some_and(|p| p.as_mut().poll(cx).is_ready()) {
            return Poll::Ready(Event::Paused);
        }
        if self.wbuf.len() < WRITE_HIGH_WATER && wake.poll(cx).is_ready() {
            return Poll::Ready(Event::Wake);
        }
        Poll::Pending
    }
}

/// What [`Conn::poll_event`] waits for besides the socket and the signals.
#[derive(Clone, Copy)]
struct Wait {
    /// Over the publish rate: the socket is not read until the pause ends.
    paused: bool,
    /// The stream has written bytes to flush.
    needs_flush: bool,
}

/// What moved a connected client on.
enum Event {
    /// A close was asked for (takeover, admin, listener removal, shutdown).
    Closed,
    /// Bytes written (`Some(n)`) or flushed (`None`).
    Wrote(std::io::Result<Option<usize>>),
    /// Bytes read into the read buffer.
    Read(std::io::Result<usize>),
    /// The publish-rate pause ended.
    Paused,
    /// The keep-alive deadline passed (the broker's sweep says so).
    KeepAlive,
    /// The session has something to send.
    Wake,
    /// The runtime was replaced.
    Reload,
}

/// After a reload, with `reauthorize_on_reload`: re-runs the authentication chain with the
/// credentials this client connected with, unless nothing it depends on changed (10,000
/// clients re-checked at once dip the throughput after a reload).
async fn recheck(
    core: Arc<Core>,
    client: Arc<crate::hooks::ClientInfo>,
    credentials: &mut Credentials,
) -> Result<(), String> {
    let runtime = core.runtime.load_full();
    if !runtime.config.security.reauthorize_on_reload {
        return Ok(());
    }
    let fingerprint = runtime.auth_fingerprint;
    if fingerprint.is_some() && fingerprint == credentials.fingerprint {
        return Ok(());
    }
    credentials.fingerprint = fingerprint;
    if let Some(method) = &credentials.enhanced {
        // No password to re-check: the method must still be offered and know the user.
        let user = client.username.as_deref().unwrap_or("");
        return match runtime.security.enhanced(method) {
            Some(auth) if auth.knows(user) => Ok(()),
            Some(_) => Err(format!("user `{user}` is no longer known to {method}")),
            None => Err(format!("{method} is no longer offered")),
        };
    }
    connect::recheck(
        runtime,
        client,
        credentials.password.clone(),
        credentials.certificate_verified,
    )
    .await
}

/// Reads what the peer has sent into `buf`, holding no buffer while it waits.
///
/// An idle connection is the common case for an IoT fleet, and a read buffer reserved ahead
/// of the read would be most of its memory. So an empty `buf` gives its allocation back, and
/// the read goes into a buffer on the stack of this `poll` call (not into the task's
/// future), whose bytes are then appended to `buf`. A partly received packet keeps its
/// buffer, which grows in `READ_CHUNK` steps.
fn poll_read_lazily<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::io::Result<usize>> {
    use std::task::Poll;
    release(buf);
    if !buf.is_empty() {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(READ_CHUNK);
        }
        return tokio_util::io::poll_read_buf(std::pin::Pin::new(rd), cx, buf);
    }
    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = tokio::io::ReadBuf::uninit(&mut stack);
    match std::pin::Pin::new(rd).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let filled = rb.filled();
            if !filled.is_empty() {
                buf.reserve(READ_CHUNK.max(filled.len()));
                buf.extend_from_slice(filled);
            }
            Poll::Ready(Ok(filled.len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Gives back the allocation of an empty buffer.
fn release(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    /// An idle connection's memory is mostly its task: the future of [`super::serve`] once
    /// connected. Tokio rounds a task's allocation up to 128 bytes; this keeps the future
    /// within the budget the fleet-scale measurements were made with (README, "Idle
    /// connections"), so that a new field in a connection's state is a conscious choice.
    #[test]
    fn the_future_of_a_connection_stays_within_its_memory_budget() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let core = std::sync::Arc::new(crate::core::test_core());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address");
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let info = super::ConnectionInfo {
                peer: addr,
                transport: crate::model::TransportKind::Tcp,
                listener: "test".into(),
                listener_conns: Default::default(),
                listener_max_connections: None,
                deadline: tokio::time::Instant::now(),
                tls_identity: None,
                use_identity_as_username: false,
                cancel: Default::default(),
            };
            let future = super::serve(core, stream, info);
            let size = std::mem::size_of_val(&future);
            assert!(
                size <= BUDGET,
                "a connection's future is {size} bytes, budget {BUDGET}"
            );
        });
    }

    const BUDGET: usize = 768;
}
