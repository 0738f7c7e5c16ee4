//! One bridge's task: its connection to this broker (in-process), its connection to the
//! remote (TCP or TLS, reconnected with backoff and jitter across the addresses), and the
//! loop that feeds both to the [`Relay`] and sends what it decides.

use super::relay::{Action, Relay, CONTROL_PID, NODE_PROPERTY};
use super::{BridgeStatus, RuleSet};
use crate::config::bridges::split_host_port;
use crate::config::{BridgeConfig, BridgeProtocol};
use crate::connection::{self, ConnectionInfo};
use crate::core::Core;
use crate::events::BrokerEvent;
use crate::model::{Message, TransportKind};
use crate::protocol::codec::{decode_with, encode_with};
use crate::protocol::{
    ByteString, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, Properties, ProtocolLevel,
    QoS, RetainHandling, SubAckCode, Subscribe, SubscriptionOptions,
};
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

/// Time allowed for TCP, TLS and CONNACK of one remote address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive of the in-process connection (pinged at half of it).
const LOCAL_KEEP_ALIVE: u16 = 60;
/// Bytes waiting to be written to one side beyond which QoS 0 messages to it are dropped.
const QOS0_WRITE_LIMIT: usize = 4 * 1024 * 1024;
/// Largest packet read from either side.
const MAX_PACKET: usize = 268_435_460;

/// What a bridge task needs.
pub(super) struct Params {
    pub core: Arc<Core>,
    pub config: BridgeConfig,
    pub node: String,
    pub status: Arc<BridgeStatus>,
    pub cancel: CancellationToken,
}

type Stream = Box<dyn AsyncReadWrite>;
trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// Runs a bridge until it is cancelled (removed, changed, or the broker stops).
pub(super) async fn run(p: Params) {
    let span = info_span!("bridge", bridge = %p.config.name);
    async move {
        publish_state(&p, false);
        let mut backoff = Backoff::new(&p.config);
        loop {
            match session(&p).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "bridge's connection to this broker ended; restarting it");
                    *p.status.last_error.lock() = Some(e);
                }
            }
            tokio::select! {
                _ = p.cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff.next()) => {}
            }
        }
        set_connected(&p, false, None, None);
    }
    .instrument(span)
    .await
}

/// One connection to this broker, and the remote links made while it lasts. `Ok` when
/// cancelled; `Err` says why this broker's side ended.
async fn session(p: &Params) -> Result<(), String> {
    let cfg = &p.config;
    let rules = Arc::new(RuleSet::new(cfg.topics.clone()));
    let mut local = open_local(p, &rules).await?;
    let remote_v5 = cfg.protocol == BridgeProtocol::V5;
    let mut relay = Relay::new(rules.clone(), remote_v5, &p.node);
    let private_ok = Arc::new(AtomicBool::new(cfg.try_private));
    let mut remote: Option<Link> = None;
    let mut connecting: Option<Pin<Box<dyn Future<Output = Connected> + Send>>> = Some(Box::pin(
        connect_remote(p.config.clone(), p.node.clone(), 0, private_ok.clone()),
    ));
    let mut next_address = 0usize;
    let mut retry_at: Option<Instant> = None;
    let mut backoff = Backoff::new(cfg);
    let mut local_ping =
        tokio::time::interval(Duration::from_secs(u64::from(LOCAL_KEEP_ALIVE) / 2));
    let keep_alive = cfg.keep_alive.get();
    let mut remote_ping = tokio::time::interval(if keep_alive.is_zero() {
        Duration::from_secs(3600)
    } else {
        keep_alive
    });
    loop {
        let mut lost: Option<String> = None;
        tokio::select! {
            _ = p.cancel.cancelled() => {
                if let Some(link) = remote.take() {
                    goodbye(p, link);
                }
                local.send(&Packet::Disconnect, ProtocolLevel::V5);
                return Ok(());
            }
            r = local.reader.next() => {
                let packets = r.map_err(|e| format!("this broker closed the bridge's connection: {e}"))?;
                for packet in packets {
                    match packet {
                        Packet::SubAck(ack) => check_suback(p, "this broker", &ack.codes),
                        Packet::PingResp => {}
                        Packet::Disconnect | Packet::DisconnectWithReason(_) => {
                            return Err("this broker disconnected the bridge".into());
                        }
                        other => relay.from_local(other),
                    }
                }
            }
            r = next_remote(remote.as_mut()) => match r {
                Ok(packets) => {
                    if let Some(link) = remote.as_mut() {
                        link.awaiting_pong = false;
                    }
                    for packet in packets {
                        match packet {
                            Packet::SubAck(ack) => check_suback(p, "the remote", &ack.codes),
                            Packet::PingResp => {}
                            Packet::Disconnect => lost = Some("the remote disconnected".into()),
                            Packet::DisconnectWithReason(d) => {
                                lost = Some(format!("the remote disconnected (reason 0x{:02x})", d.reason));
                            }
                            other => relay.from_remote(other),
                        }
                    }
                }
                Err(e) => lost = Some(e),
            },
            done = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                next_address = done.next_address;
                match done.result {
                    Ok((link, connack)) => {
                        backoff.reset();
                        remote = Some(on_connected(p, &rules, &mut relay, link, connack));
                        remote_ping.reset();
                    }
                    Err(e) => {
                        warn!(error = %e, "bridge cannot reach the remote; retrying");
                        p.status.reconnects.fetch_add(1, Ordering::Relaxed);
                        *p.status.last_error.lock() = Some(e);
                        retry_at = Some(Instant::now() + backoff.next());
                    }
                }
            }
            _ = sleep_until(retry_at), if retry_at.is_some() && connecting.is_none() => {
                retry_at = None;
                connecting = Some(Box::pin(connect_remote(
                    p.config.clone(),
                    p.node.clone(),
                    next_address,
                    private_ok.clone(),
                )));
            }
            _ = local_ping.tick() => local.send(&Packet::PingReq, ProtocolLevel::V5),
            _ = remote_ping.tick(), if !keep_alive.is_zero() => {
                if let Some(link) = remote.as_mut() {
                    if link.awaiting_pong {
                        lost = Some("keep-alive timeout: no answer from the remote".into());
                    } else {
                        link.awaiting_pong = true;
                        link.send(&Packet::PingReq, link.level);
                    }
                }
            }
        }
        apply(p, &mut relay, &mut local, remote.as_mut());
        if let Some(link) = &remote {
            if link.failed.load(Ordering::Relaxed) {
                lost.get_or_insert_with(|| "cannot write to the remote".into());
            }
        }
        if let Some(reason) = lost {
            if remote.take().is_some() {
                warn!(%reason, "bridge lost the remote; reconnecting");
                relay.remote_lost();
                p.status.reconnects.fetch_add(1, Ordering::Relaxed);
                set_connected(p, false, None, Some(reason));
                retry_at = Some(Instant::now() + backoff.next());
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_remote(link: Option<&mut Link>) -> Result<Vec<Packet>, String> {
    match link {
        Some(link) => link.reader.next().await,
        None => std::future::pending().await,
    }
}

/// Sends what the relay decided and counts it.
fn apply(p: &Params, relay: &mut Relay, local: &mut Link, mut remote: Option<&mut Link>) {
    let s = &p.status;
    for action in relay.take_actions() {
        match action {
            Action::ToLocal(packet) => {
                if is_qos0(&packet) && local.queued.load(Ordering::Relaxed) > QOS0_WRITE_LIMIT {
                    s.drop_counter("remote_slow")
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                local.send(&packet, ProtocolLevel::V5);
            }
            Action::ToRemote(packet) => match remote.as_deref_mut() {
                Some(link) => {
                    if is_qos0(&packet) && link.queued.load(Ordering::Relaxed) > QOS0_WRITE_LIMIT {
                        s.drop_counter("remote_slow")
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let level = link.level;
                    link.send(&packet, level);
                }
                None => debug!("relay sent to a remote that is gone"),
            },
            Action::Forwarded => {
                s.messages_out.fetch_add(1, Ordering::Relaxed);
            }
            Action::Received => {
                s.messages_in.fetch_add(1, Ordering::Relaxed);
            }
            Action::Dropped(reason) => s.count_drop(reason),
        }
    }
    s.pending.store(relay.pending() as u64, Ordering::Relaxed);
}

fn is_qos0(p: &Packet) -> bool {
    matches!(p, Packet::Publish(p) if p.qos == QoS::AtMostOnce)
}

fn check_suback(p: &Params, side: &str, codes: &[SubAckCode]) {
    if codes.iter().any(|c| !matches!(c, SubAckCode::Granted(_))) {
        let e = format!("{side} refused some of the bridge's subscriptions: {codes:?}");
        warn!(error = %e, "bridge subscription refused (check the ACL for the bridge's identity)");
        *p.status.last_error.lock() = Some(e);
    }
}

/// The remote accepted: subscribe, tell the relay, publish the state.
fn on_connected(
    p: &Params,
    rules: &RuleSet,
    relay: &mut Relay,
    mut link: Link,
    connack: ConnAck,
) -> Link {
    let cfg = &p.config;
    let props = connack.properties.as_deref();
    let remote_node: Option<Arc<str>> = props.and_then(|props| {
        props
            .user_properties
            .iter()
            .find(|(k, _)| &**k == NODE_PROPERTY)
            .map(|(_, v)| Arc::from(&**v))
    });
    let window = props
        .and_then(|p| p.receive_maximum)
        .unwrap_or(u16::MAX)
        .min(cfg.max_inflight);
    info!(remote = %link.address, session_present = connack.session_present, "bridge connected to the remote");
    if cfg.notifications {
        // On the remote too, as Mosquitto does; its will says 0 when the link dies.
        let topic = cfg.state_topic(&p.node);
        let level = link.level;
        link.send(&state_publish(&topic, true), level);
    }
    let subs = rules.remote_subscriptions();
    if !subs.is_empty() {
        let level = link.level;
        link.send(&subscribe(subs), level);
    }
    let max_packet = props.and_then(|p| p.maximum_packet_size);
    relay.remote_connected(connack.session_present, window, max_packet, remote_node);
    let address = link.address.clone();
    set_connected(p, true, Some(address), None);
    link
}

/// Says goodbye to the remote: state 0 (the will is not published on a normal DISCONNECT).
fn goodbye(p: &Params, mut link: Link) {
    let level = link.level;
    if p.config.notifications {
        link.send(&state_publish(&p.config.state_topic(&p.node), false), level);
    }
    link.send(&Packet::Disconnect, level);
    set_connected(p, false, None, None);
}

fn state_publish(topic: &str, up: bool) -> Packet {
    Packet::Publish(crate::protocol::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: topic.into(),
        pid: None,
        payload: Bytes::from_static(if up { b"1" } else { b"0" }),
        properties: None,
    })
}

/// Records the link state: status, the local state topic, an event.
fn set_connected(p: &Params, up: bool, remote: Option<String>, error: Option<String>) {
    let s = &p.status;
    let was = s.connected.swap(up, Ordering::Relaxed);
    if up {
        *s.remote.lock() = remote.clone();
        *s.since.lock() = Some(SystemTime::now());
    }
    if let Some(e) = &error {
        *s.last_error.lock() = Some(e.clone());
    }
    if was == up {
        return;
    }
    publish_state(p, up);
    let name: Arc<str> = p.config.name.as_str().into();
    p.core.ops.events.emit(|| BrokerEvent::BridgeState {
        name,
        connected: up,
        remote,
        error,
    });
}

/// Publishes the link state here, retained.
fn publish_state(p: &Params, up: bool) {
    if p.config.notifications {
        p.core.publish(Message::new(
            &p.config.state_topic(&p.node),
            Bytes::from_static(if up { b"1" } else { b"0" }),
            QoS::AtLeastOnce,
            true,
        ));
    }
}

fn subscribe(filters: Vec<(String, QoS)>) -> Packet {
    let options = vec![
        SubscriptionOptions {
            // Never the bridge's own messages back [MQTT-3.8.3-3]: no ping-pong.
            no_local: true,
            // Forwarded messages keep their RETAIN flag, as Mosquitto's bridges do.
            retain_as_published: true,
            // A resumed subscription does not resend every retained message.
            retain_handling: RetainHandling::SendIfNew,
        };
        filters.len()
    ];
    let mut s = Subscribe::new(CONTROL_PID, filters);
    s.options = options;
    Packet::Subscribe(s)
}

/// One side's connection: a packet reader and a writer task.
struct Link {
    reader: Reader,
    tx: mpsc::UnboundedSender<Bytes>,
    /// Bytes handed to the writer and not yet written.
    queued: Arc<AtomicUsize>,
    /// Set by the writer when a write failed.
    failed: Arc<AtomicBool>,
    level: ProtocolLevel,
    address: String,
    awaiting_pong: bool,
}

impl Link {
    fn new(stream: Stream, level: ProtocolLevel, address: String, rbuf: BytesMut) -> Link {
        let (rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let queued = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let (q, f) = (queued.clone(), failed.clone());
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                let n = bytes.len();
                if wr.write_all(&bytes).await.is_err() {
                    f.store(true, Ordering::Relaxed);
                    break;
                }
                q.fetch_sub(n, Ordering::Relaxed);
                if rx.is_empty() && wr.flush().await.is_err() {
                    f.store(true, Ordering::Relaxed);
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        Link {
            reader: Reader {
                rd: Box::new(rd),
                buf: rbuf,
                level,
                pending: Vec::new(),
            },
            tx,
            queued,
            failed,
            level,
            address,
            awaiting_pong: false,
        }
    }

    fn send(&mut self, packet: &Packet, level: ProtocolLevel) {
        let mut buf = BytesMut::new();
        encode_with(packet, level, &mut buf);
        self.queued.fetch_add(buf.len(), Ordering::Relaxed);
        if self.tx.send(buf.freeze()).is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
    }
}

/// Decodes packets from one side.
struct Reader {
    rd: Box<dyn AsyncRead + Unpin + Send>,
    buf: BytesMut,
    level: ProtocolLevel,
    /// Decoded after the one a handshake waited for (a resumed session's messages can
    /// arrive in the same read as its CONNACK).
    pending: Vec<Packet>,
}

impl Reader {
    /// The next packet alone (handshakes); what came with it is kept for [`Reader::next`].
    async fn next_one(&mut self) -> Result<Packet, String> {
        let mut packets = self.next().await?.into_iter();
        let first = packets.next().ok_or("no packet")?;
        self.pending.extend(packets);
        Ok(first)
    }

    /// The next packets; cancel-safe (bytes stay in the buffer).
    async fn next(&mut self) -> Result<Vec<Packet>, String> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        loop {
            let mut packets = Vec::new();
            while let Some(p) =
                decode_with(&mut self.buf, MAX_PACKET, self.level).map_err(|e| e.to_string())?
            {
                packets.push(p);
            }
            if !packets.is_empty() {
                return Ok(packets);
            }
            let n = self
                .rd
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
        }
    }
}

/// Opens the bridge's connection to this broker: CONNECT as the bridge's identity,
/// persistent session, subscriptions of the outbound rules.
async fn open_local(p: &Params, rules: &RuleSet) -> Result<Link, String> {
    let cfg = &p.config;
    let (client, server) = tokio::io::duplex(256 * 1024);
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    let info = ConnectionInfo {
        peer,
        transport: TransportKind::Bridge,
        listener: format!("bridge:{}", cfg.name).into(),
        listener_conns: Arc::new(AtomicUsize::new(0)),
        listener_max_connections: None,
        deadline: Instant::now() + CONNECT_TIMEOUT,
        tls_identity: None,
        use_identity_as_username: false,
        cancel: p.core.shutdown.child_token(),
    };
    crate::transport::spawn_guarded(peer, connection::serve(p.core.clone(), server, info));
    let properties = Properties {
        // As long as this broker keeps sessions: this one stores what waits for the remote.
        session_expiry_interval: Some(u32::MAX),
        receive_maximum: Some(cfg.max_inflight),
        ..Properties::default()
    };
    let connect = Connect {
        bridge: false,
        protocol: ProtocolLevel::V5,
        clean_session: false,
        keep_alive: LOCAL_KEEP_ALIVE,
        client_id: cfg.local_id(),
        will: None,
        username: cfg.local_username.clone(),
        password: cfg.local_password.clone().map(Bytes::from),
        properties: Some(Box::new(properties)),
    };
    let mut link = Link::new(
        Box::new(client),
        ProtocolLevel::V5,
        "this broker".into(),
        BytesMut::new(),
    );
    link.send(&Packet::Connect(Box::new(connect)), ProtocolLevel::V5);
    let connack = tokio::time::timeout(CONNECT_TIMEOUT, link.reader.next_one())
        .await
        .map_err(|_| "no CONNACK from this broker".to_string())??;
    match connack {
        Packet::ConnAck(c) if c.code == ConnectReturnCode::Accepted => {}
        Packet::ConnAck(c) => {
            return Err(format!(
                "this broker refused the bridge's connection (reason 0x{:02x}): check local_username/local_password and the ACL",
                c.reason_code.unwrap_or(c.code as u8)
            ))
        }
        other => return Err(format!("unexpected answer to CONNECT: {other:?}")),
    }
    let subs = rules.local_subscriptions();
    if !subs.is_empty() {
        link.send(&subscribe(subs), ProtocolLevel::V5);
        // Subscribed once SUBACK is back: from then on nothing published here for the
        // remote is missed. Messages of a resumed session that come first are kept.
        let mut early = Vec::new();
        loop {
            let packet = tokio::time::timeout(CONNECT_TIMEOUT, link.reader.next_one())
                .await
                .map_err(|_| "no SUBACK from this broker".to_string())??;
            match packet {
                Packet::SubAck(ack) => {
                    check_suback(p, "this broker", &ack.codes);
                    break;
                }
                other => early.push(other),
            }
        }
        early.append(&mut link.reader.pending);
        link.reader.pending = early;
    }
    p.status.local_ready.store(true, Ordering::Relaxed);
    Ok(link)
}

/// The outcome of a round of connection attempts.
struct Connected {
    result: Result<(Link, ConnAck), String>,
    /// Where the next round starts (round robin).
    next_address: usize,
}

/// Tries the addresses in turn (from the first, or from `start` with `round_robin`) until
/// one accepts.
async fn connect_remote(
    cfg: BridgeConfig,
    node: String,
    start: usize,
    private_ok: Arc<AtomicBool>,
) -> Connected {
    let n = cfg.addresses.len();
    let first = if cfg.round_robin { start % n.max(1) } else { 0 };
    let mut errors = Vec::new();
    for i in 0..n {
        let index = (first + i) % n;
        let address = &cfg.addresses[index];
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            connect_one(&cfg, &node, address, &private_ok),
        )
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        match attempt {
            Ok(done) => {
                return Connected {
                    result: Ok(done),
                    next_address: index + 1,
                }
            }
            Err(e) => errors.push(format!("{address}: {e}")),
        }
    }
    Connected {
        result: Err(errors.join("; ")),
        next_address: first + 1,
    }
}

async fn connect_one(
    cfg: &BridgeConfig,
    node: &str,
    address: &str,
    private_ok: &AtomicBool,
) -> Result<(Link, ConnAck), String> {
    loop {
        let private = cfg.protocol == BridgeProtocol::V311 && private_ok.load(Ordering::Relaxed);
        let stream = open_stream(cfg, address).await?;
        let level = match cfg.protocol {
            BridgeProtocol::V311 => ProtocolLevel::V311,
            BridgeProtocol::V5 => ProtocolLevel::V5,
        };
        let mut link = Link::new(stream, level, address.to_owned(), BytesMut::new());
        let mut connect = remote_connect(cfg, node);
        connect.bridge = private;
        link.send(&Packet::Connect(Box::new(connect)), level);
        let Packet::ConnAck(connack) = link.reader.next_one().await? else {
            return Err("the remote did not answer CONNECT with CONNACK".into());
        };
        match connack.code {
            ConnectReturnCode::Accepted => return Ok((link, connack)),
            ConnectReturnCode::UnacceptableProtocolVersion if private => {
                // Not a Mosquitto-style broker: connect as an ordinary client.
                info!(remote = %address, "the remote refused the bridge flag (try_private); connecting without it");
                private_ok.store(false, Ordering::Relaxed);
            }
            code => {
                return Err(format!(
                    "refused by the remote: {code:?}{}",
                    connack
                        .reason_code
                        .map(|r| format!(" (reason 0x{r:02x})"))
                        .unwrap_or_default()
                ))
            }
        }
    }
}

/// TCP, then TLS when configured.
async fn open_stream(cfg: &BridgeConfig, address: &str) -> Result<Stream, String> {
    let (host, port) =
        split_host_port(address).ok_or_else(|| format!("`{address}` is not host:port"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &cfg.tls else {
        return Ok(Box::new(tcp));
    };
    // Built per attempt: renewed certificate files are picked up without a reload.
    let config = crate::transport::tls::client_config(tls, "tls").map_err(|e| e.to_string())?;
    let name = tls.server_name.clone().unwrap_or(host);
    let server_name = rustls_pki_types::ServerName::try_from(name.clone())
        .map_err(|e| format!("`{name}` is not a valid TLS server name: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    Ok(Box::new(stream))
}

/// The CONNECT sent to the remote.
fn remote_connect(cfg: &BridgeConfig, node: &str) -> Connect {
    let v5 = cfg.protocol == BridgeProtocol::V5;
    let will = cfg.notifications.then(|| LastWill {
        topic: cfg.state_topic(node).into(),
        payload: Bytes::from_static(b"0"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: None,
    });
    let properties = v5.then(|| {
        Box::new(Properties {
            session_expiry_interval: (!cfg.clean_session).then_some(u32::MAX),
            receive_maximum: Some(cfg.max_inflight),
            user_properties: vec![(
                ByteString::from(NODE_PROPERTY),
                ByteString::from(node.to_owned()),
            )],
            ..Properties::default()
        })
    });
    Connect {
        bridge: false,
        protocol: if v5 {
            ProtocolLevel::V5
        } else {
            ProtocolLevel::V311
        },
        clean_session: cfg.clean_session,
        keep_alive: u16::try_from(cfg.keep_alive.get().as_secs()).unwrap_or(u16::MAX),
        client_id: cfg.remote_client_id(node),
        will,
        username: cfg.username.clone(),
        password: cfg.password.clone().map(Bytes::from),
        properties,
    }
}

/// Reconnect delays: doubling from `reconnect_min` to `reconnect_max`, each drawn between
/// half and all of the current step (jitter, so that a fleet of edges does not reconnect
/// in lockstep after the remote comes back).
struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    fn new(cfg: &BridgeConfig) -> Self {
        Backoff {
            min: cfg.reconnect_min.get(),
            max: cfg.reconnect_max.get(),
            step: cfg.reconnect_min.get(),
        }
    }

    fn reset(&mut self) {
        self.step = self.min;
    }

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let mut b = [0u8; 4];
        let r = match getrandom::getrandom(&mut b) {
            Ok(()) => f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX),
            Err(_) => 1.0,
        };
        step.mul_f64(0.5 + 0.5 * r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut cfg = BridgeConfig::new("b", "127.0.0.1:1883");
        cfg.reconnect_min = crate::config::ConfigDuration::secs(1);
        cfg.reconnect_max = crate::config::ConfigDuration::secs(4);
        let mut b = Backoff::new(&cfg);
        let d: Vec<Duration> = (0..5).map(|_| b.next()).collect();
        for (got, step) in d.iter().zip([1, 2, 4, 4, 4]) {
            let step = Duration::from_secs(step);
            assert!(
                *got >= step / 2 && *got <= step,
                "{got:?} within [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_secs(1));
    }
}
