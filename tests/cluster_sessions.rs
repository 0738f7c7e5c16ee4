//! Sessions in cluster mode (src/cluster/sessions.rs, src/cluster/shares.rs), end to end:
//! one owner node per client id, persistent sessions that follow their client to another
//! node, survive the kill -9 of their node without losing (or, at QoS 2, duplicating)
//! acknowledged messages, wills of a dead node's clients published once, and shared
//! subscriptions whose members are spread over several nodes.
//!
//! Tests that kill a node run the broker binary as child processes (`ChildCluster`),
//! SIGKILLed by the test and on drop; the others run nodes in process. NATS is a real
//! `nats-server` (tests/common/nats.rs). The tests of this file take a lock so they run one
//! at a time even without `--test-threads=1`: each starts NATS and several brokers, and
//! several at once on a small machine would measure the machine. Every wait is bounded, and
//! every test as a whole ([`TEST_BOUND`]).

mod common;

use common::nats::NatsCluster;
use common::*;
use mqtt_broker::config::ClusterConfig;
use mqtt_broker::protocol::*;
use mqtt_broker::BrokerHandle;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The tests of this file run one at a time (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound on one test, start of NATS and brokers included.
const TEST_BOUND: Duration = Duration::from_secs(60);

/// How long a node is given to answer `/readyz` 200 after its process starts.
const START_WAIT: Duration = Duration::from_secs(30);

/// Bound on a reconnection to a surviving node: the new owner waits up to 3 s for the dead
/// node's hand-over, then loads the session and replays the stream.
const RESUME_WAIT: Duration = Duration::from_secs(15);

/// Runs one test body under [`SERIAL`] and [`TEST_BOUND`]; prints how long it took.
async fn bounded(name: &str, body: impl Future<Output = ()>) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    if tokio::time::timeout(TEST_BOUND, body).await.is_err() {
        panic!("{name} did not finish within {TEST_BOUND:?}");
    }
    eprintln!("{name}: {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// Nodes in process
// ---------------------------------------------------------------------------------------

/// A `cluster:` section with one replica, as the config file's would be parsed.
fn cluster_config(servers: &[String], prefix: &str) -> ClusterConfig {
    common::nats::cluster_config(servers, prefix, 1, "")
}

/// A broker node named `name` of `cluster`, in this process, with room to queue what the
/// tests publish.
async fn start_node(name: &str, cluster: ClusterConfig) -> BrokerHandle {
    common::nats::start_node(name, cluster, |c| {
        c.performance.message_queue_limit = 100_000
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Nodes as child processes
// ---------------------------------------------------------------------------------------

/// One broker process of a [`ChildCluster`].
struct ChildNode {
    name: String,
    port: u16,
    admin: u16,
    log: PathBuf,
    /// `None` once killed.
    child: Option<std::process::Child>,
}

impl ChildNode {
    /// Its MQTT listener.
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL, and waits until the process is gone.
    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its log lines that contain `needle`.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// The last `n` lines of its log.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Broker binaries (`--config` in a temporary directory), each logging to its own file;
/// every process is killed on drop, and a failing test prints their logs.
struct ChildCluster {
    dir: PathBuf,
    nodes: Vec<ChildNode>,
}

impl ChildCluster {
    /// Starts one node per name against the NATS `servers` under `prefix`, and waits until
    /// each answers `/readyz` with 200.
    async fn start(names: &[&str], servers: &[String], prefix: &str) -> ChildCluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "cluster-sessions-{}-{prefix}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the nodes' directory");
        let mut cluster = ChildCluster {
            dir,
            nodes: Vec::new(),
        };
        let ports = free_ports(2 * names.len());
        for (i, name) in names.iter().enumerate() {
            let (port, admin) = (ports[2 * i], ports[2 * i + 1]);
            let yaml = format!(
                "node_name: {name}\n\
                 server:\n  host: 127.0.0.1\n  port: {port}\n  sys_interval: 0\n\
                 admin:\n  enabled: true\n  bind: \"127.0.0.1:{admin}\"\n\
                 log:\n  level: \"mqtt_broker=info\"\n\
                 performance:\n  message_queue_limit: 100000\n\
                 cluster:\n  servers: {servers}\n  prefix: {prefix}\n  replicas: 1\n  connect_timeout: 20s\n",
                servers = serde_json::to_string(servers).expect("URLs as a YAML list"),
            );
            let config = cluster.dir.join(format!("{name}.yaml"));
            std::fs::write(&config, yaml).expect("write a node's config");
            let log = cluster.dir.join(format!("{name}.log"));
            let out = std::fs::File::create(&log).expect("create a node's log");
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-broker"));
            cmd.arg("--config")
                .arg(&config)
                .env_remove("RUST_LOG")
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone().expect("clone the log handle"))
                .stderr(out);
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe and touches no memory of the parent. A
                // test process killed by a timeout runs no destructors; the kernel then
                // kills the broker.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
            }
            let child = cmd.spawn().expect("start the broker binary");
            cluster.nodes.push(ChildNode {
                name: (*name).to_owned(),
                port,
                admin,
                log,
                child: Some(child),
            });
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    /// Polls node `i`'s `/readyz` until 200; panics (with its log) after [`START_WAIT`].
    async fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + START_WAIT;
        let admin = SocketAddr::from(([127, 0, 0, 1], self.nodes[i].admin));
        loop {
            if http_status(admin, "/readyz").await == Some(200) {
                return;
            }
            let node = &mut self.nodes[i];
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "node {} exited during start ({status}):\n{}",
                    node.name,
                    node.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {} not ready within {START_WAIT:?}:\n{}",
                node.name,
                node.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `i`.
    fn node(&self, i: usize) -> &ChildNode {
        &self.nodes[i]
    }

    /// SIGKILLs node `i`.
    fn kill_9(&mut self, i: usize) {
        self.nodes[i].kill_9();
    }

    /// Lines of every node's log containing `needle`, each prefixed with the node.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.log_lines(needle)
                    .into_iter()
                    .map(move |l| format!("[{}] {l}", n.name))
            })
            .collect()
    }
}

impl Drop for ChildCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill_9();
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("--- broker node {} ---\n{}", n.name, n.log_tail(60));
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `count` distinct free loopback ports (all held until every one is picked).
fn free_ports(count: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// The status of `GET path` on `addr`, or `None` when nothing answers (yet).
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

// ---------------------------------------------------------------------------------------
// MQTT clients
// ---------------------------------------------------------------------------------------

/// An MQTT 5 CONNECT; `expiry` is the Session Expiry Interval (seconds).
fn connect5(client_id: &str, clean_start: bool, expiry: Option<u32>) -> Connect {
    Connect {
        protocol: ProtocolLevel::V5,
        properties: expiry.map(|s| {
            Box::new(Properties {
                session_expiry_interval: Some(s),
                ..Default::default()
            })
        }),
        ..connect_packet(client_id, clean_start)
    }
}

/// Connects, retrying until a CONNACK accepts the connection; panics after `within`.
/// Returns the client, its CONNACK and how long it took.
async fn connect_until_accepted(
    addr: SocketAddr,
    connect: Connect,
    within: Duration,
) -> (RawClient, ConnAck, Duration) {
    let started = Instant::now();
    let deadline = started + within;
    let mut history = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{} not accepted by {addr} within {within:?}: {history:?}",
            connect.client_id
        );
        match try_connect(addr, connect.clone(), left).await {
            Ok((c, ack)) if ack.v5_reason() == reason::SUCCESS => {
                return (c, ack, started.elapsed())
            }
            Ok((_, ack)) => history.push(format!("CONNACK {ack:?}")),
            Err(e) => history.push(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscribes `filter` at `qos` and asserts it is granted.
async fn subscribe(c: &mut RawClient, filter: &str, qos: QoS) {
    let codes = c.subscribe(1, &[(filter, qos)]).await;
    assert_eq!(codes, vec![SubAckCode::Granted(qos)], "SUBACK of {filter}");
}

/// Whether `p` acknowledges packet `pid` with `kind` (3.1.1 or MQTT 5 form, success only).
fn is_ack(p: &Packet, kind: AckKind, pid: u16) -> bool {
    match (p, kind) {
        (Packet::PubAck(id), AckKind::PubAck)
        | (Packet::PubRec(id), AckKind::PubRec)
        | (Packet::PubComp(id), AckKind::PubComp) => *id == pid,
        (Packet::Ack(a), _) => a.kind == kind && a.pid == pid && a.reason < 0x80,
        _ => false,
    }
}

/// Publishes at QoS 1 and asserts the PUBACK.
async fn publish1(c: &mut RawClient, topic: &str, payload: &str, pid: u16) {
    c.send(&publish(
        topic,
        payload.as_bytes(),
        QoS::AtLeastOnce,
        Some(pid),
        false,
    ))
    .await;
    match c.recv_within(WAIT).await {
        Ok(Some(p)) if is_ack(&p, AckKind::PubAck, pid) => {}
        other => panic!("expected PUBACK {pid} for {topic} {payload}, got {other:?}"),
    }
}

/// What a subscribing client handed to its application, playing the receiver's part of
/// every flow. At QoS 2 it keeps the packet ids it sent PUBREC for until their PUBREL (as
/// part of its session, across reconnections): a PUBLISH with one of them is the same
/// message sent again ([MQTT-4.3.3], receiver method B), not a new delivery.
#[derive(Default)]
struct Inbox {
    /// Payloads delivered to the application, in arrival order.
    delivered: Vec<String>,
    /// Topics of the deliveries, same order.
    topics: Vec<String>,
    /// QoS 2 ids awaiting PUBREL, with their payload.
    awaiting_rel: HashMap<u16, String>,
    /// QoS 2 PUBLISHes that were such re-sends (not delivered again).
    resent: usize,
    /// QoS 2 PUBLISHes reusing an id awaiting PUBREL for another payload (a broker bug).
    id_conflicts: Vec<(u16, String, String)>,
    /// PUBLISHes with DUP set.
    dup_flagged: usize,
}

impl Inbox {
    /// Plays the client's part for `p` (acknowledgements are written lossily: the node may
    /// be gone). `Err` for a packet a subscriber must not get.
    async fn handle(&mut self, c: &mut RawClient, p: Packet) -> Result<(), String> {
        match p {
            Packet::Publish(p) => {
                let text = String::from_utf8_lossy(&p.payload).into_owned();
                if p.dup {
                    self.dup_flagged += 1;
                }
                match (p.qos, p.pid) {
                    (QoS::AtMostOnce, _) => self.deliver(&p.topic, text),
                    (QoS::AtLeastOnce, Some(pid)) => {
                        self.deliver(&p.topic, text);
                        c.send_lossy(&Packet::PubAck(pid)).await;
                    }
                    (QoS::ExactlyOnce, Some(pid)) => {
                        match self.awaiting_rel.get(&pid) {
                            Some(held) if *held == text => self.resent += 1,
                            Some(held) => {
                                self.id_conflicts.push((pid, held.clone(), text.clone()));
                                self.awaiting_rel.insert(pid, text.clone());
                                self.deliver(&p.topic, text);
                            }
                            None => {
                                self.awaiting_rel.insert(pid, text.clone());
                                self.deliver(&p.topic, text);
                            }
                        }
                        c.send_lossy(&Packet::PubRec(pid)).await;
                    }
                    _ => return Err(format!("PUBLISH at QoS > 0 without packet id: {p:?}")),
                }
            }
            Packet::PubRel(pid) => {
                self.awaiting_rel.remove(&pid);
                c.send_lossy(&Packet::PubComp(pid)).await;
            }
            Packet::Ack(a) if a.kind == AckKind::PubRel => {
                self.awaiting_rel.remove(&a.pid);
                c.send_lossy(&Packet::PubComp(a.pid)).await;
            }
            other => return Err(format!("a subscriber got {other:?}")),
        }
        Ok(())
    }

    fn deliver(&mut self, topic: &str, payload: String) {
        self.topics.push(topic.to_owned());
        self.delivered.push(payload);
    }

    /// Payloads delivered more than once, with how many times.
    fn duplicates(&self) -> BTreeMap<String, usize> {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for p in &self.delivered {
            *count.entry(p.clone()).or_default() += 1;
        }
        count.retain(|_, n| *n > 1);
        count
    }
}

/// Receives until `n` messages were delivered; panics after `within`.
async fn receive(c: &mut RawClient, inbox: &mut Inbox, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while inbox.delivered.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(p)) => inbox.handle(c, p).await.unwrap(),
            Ok(None) => panic!(
                "connection closed after {} of {n} messages: {:?}",
                inbox.delivered.len(),
                inbox.delivered
            ),
            Err(()) => panic!(
                "{} of {n} messages within {within:?}: {:?}",
                inbox.delivered.len(),
                inbox.delivered
            ),
        }
    }
}

/// Keeps answering for `d` (finishing flows, catching late copies).
async fn drain(c: &mut RawClient, inbox: &mut Inbox, d: Duration) {
    let deadline = Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(p)) => inbox.handle(c, p).await.unwrap(),
            Ok(None) => panic!("connection closed while draining"),
            Err(()) => return,
        }
    }
}

/// `0..n` as payload strings.
fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// Load across a node kill
// ---------------------------------------------------------------------------------------

/// What a publisher under load saw.
struct Published {
    /// Sequence numbers whose PUBACK (QoS 1) or PUBREC (QoS 2) arrived.
    acked: Vec<u64>,
    /// Acknowledged after the subscriber's node was killed.
    acked_after_kill: usize,
    elapsed: Duration,
}

/// Publishes `count` numbered messages to `topic` at `qos` on one connection, `window` of
/// them unacknowledged at most; `acks` counts acknowledgements as they come. Panics if the
/// connection ends (the publisher's node stays up in these tests) or after `within`.
#[allow(clippy::too_many_arguments)]
async fn publish_numbered(
    addr: SocketAddr,
    topic: &str,
    qos: QoS,
    count: u64,
    window: usize,
    acks: Arc<AtomicUsize>,
    killed: watch::Receiver<bool>,
    within: Duration,
) -> Published {
    let started = Instant::now();
    let deadline = started + within;
    let (mut c, _, _) =
        connect_until_accepted(addr, connect_packet("load-publisher", true), WAIT).await;
    let mut next = 0u64;
    let mut next_pid = 0u16;
    // Packet id -> sequence, until PUBACK / PUBREC; then (QoS 2) until PUBCOMP.
    let mut unacked: HashMap<u16, u64> = HashMap::new();
    let mut releasing: HashSet<u16> = HashSet::new();
    let mut acked = Vec::with_capacity(count as usize);
    let mut acked_after_kill = 0;
    while (acked.len() as u64) < count || !releasing.is_empty() {
        while next < count && unacked.len() + releasing.len() < window {
            next_pid = next_pid % 60_000 + 1;
            unacked.insert(next_pid, next);
            c.send(&publish(
                topic,
                next.to_string().as_bytes(),
                qos,
                Some(next_pid),
                false,
            ))
            .await;
            next += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let p = match c.recv_within(left).await {
            Ok(Some(p)) => p,
            Ok(None) => panic!(
                "the publisher's node closed its connection after {} acknowledgements",
                acked.len()
            ),
            Err(()) => panic!(
                "{} of {count} acknowledged within {within:?}; waiting for {unacked:?}",
                acked.len()
            ),
        };
        let (kind, pid) = match &p {
            Packet::PubAck(pid) => (AckKind::PubAck, *pid),
            Packet::PubRec(pid) => (AckKind::PubRec, *pid),
            Packet::PubComp(pid) => (AckKind::PubComp, *pid),
            Packet::Ack(a) if a.reason < 0x80 => (a.kind, a.pid),
            other => panic!("the publisher got {other:?}"),
        };
        match kind {
            AckKind::PubAck | AckKind::PubRec => {
                let seq = unacked
                    .remove(&pid)
                    .unwrap_or_else(|| panic!("{kind:?} for unknown packet id {pid}"));
                acked.push(seq);
                acks.fetch_add(1, Ordering::Relaxed);
                if *killed.borrow() {
                    acked_after_kill += 1;
                }
                if kind == AckKind::PubRec {
                    releasing.insert(pid);
                    c.send(&Packet::PubRel(pid)).await;
                }
            }
            AckKind::PubComp => {
                assert!(
                    releasing.remove(&pid),
                    "PUBCOMP for unknown packet id {pid}"
                );
            }
            AckKind::PubRel => panic!("the publisher got PUBREL {pid}"),
        }
    }
    c.send(&Packet::Disconnect).await;
    Published {
        acked,
        acked_after_kill,
        elapsed: started.elapsed(),
    }
}

/// What a subscriber that lost its node saw.
struct Consumed {
    inbox: Inbox,
    /// Deliveries before the connection to the first node ended.
    before_kill: usize,
    /// Session present on the reconnection.
    session_present: bool,
    /// From the end of the first connection to the CONNACK of the second.
    reconnect: Duration,
    /// Acknowledged messages never delivered (filled in when the target is known).
    missing: Vec<String>,
}

/// Consumes as persistent client `id` on `c` (already subscribed) and, once that connection
/// ends (its node was killed), on `then` with the same session. Stops once every payload of
/// `target` (sent when the publisher is done) is delivered and a further `linger` brought
/// nothing new, or at `deadline` (with `missing` filled in).
#[allow(clippy::too_many_arguments)]
async fn consume_across_kill(
    mut c: RawClient,
    then: SocketAddr,
    id: String,
    protocol_connect: Connect,
    progress: Arc<AtomicUsize>,
    mut target: watch::Receiver<Option<Arc<Vec<String>>>>,
    linger: Duration,
    deadline: Instant,
) -> Consumed {
    let mut out = Consumed {
        inbox: Inbox::default(),
        before_kill: 0,
        session_present: false,
        reconnect: Duration::ZERO,
        missing: Vec::new(),
    };
    let mut moved = false;
    let mut received: HashSet<String> = HashSet::new();
    let mut missing: Option<HashSet<String>> = None;
    let mut complete_at: Option<Instant> = None;
    loop {
        if missing.is_none() {
            if let Some(t) = target.borrow_and_update().clone() {
                missing = Some(
                    t.iter()
                        .filter(|p| !received.contains(*p))
                        .cloned()
                        .collect(),
                );
            }
        }
        if complete_at.is_none() && missing.as_ref().is_some_and(|m| m.is_empty()) {
            complete_at = Some(Instant::now());
        }
        if complete_at.is_some_and(|t| t.elapsed() >= linger) {
            return out;
        }
        if Instant::now() >= deadline {
            out.missing = missing.map(|m| m.into_iter().collect()).unwrap_or_default();
            out.missing
                .sort_by_key(|p| p.parse::<u64>().unwrap_or(u64::MAX));
            return out;
        }
        match c.recv_within(Duration::from_millis(100)).await {
            Ok(Some(p)) => {
                let before = out.inbox.delivered.len();
                out.inbox.handle(&mut c, p).await.unwrap();
                if out.inbox.delivered.len() > before {
                    let payload = out.inbox.delivered[before].clone();
                    if let Some(m) = &mut missing {
                        m.remove(&payload);
                    }
                    received.insert(payload);
                    progress.fetch_add(1, Ordering::Relaxed);
                    if complete_at.is_some() {
                        // Something new after completion: linger from here.
                        complete_at = Some(Instant::now());
                    }
                }
            }
            Ok(None) if !moved => {
                moved = true;
                out.before_kill = out.inbox.delivered.len();
                let lost = Instant::now();
                let left = deadline.saturating_duration_since(lost).min(RESUME_WAIT);
                let (c2, ack, _) =
                    connect_until_accepted(then, protocol_connect.clone(), left).await;
                out.session_present = ack.session_present;
                out.reconnect = lost.elapsed();
                c = c2;
            }
            Ok(None) => panic!("{id}: the second node closed the connection too"),
            Err(()) => {}
        }
    }
}

/// Subscriber on node A (killed mid-stream), publisher on node B, `count` messages at
/// `qos`: returns what each side saw, with the nodes' logs of the resumption.
async fn kill_under_load(prefix: &str, qos: QoS, count: u64) -> (Published, Consumed, Vec<String>) {
    let nats = NatsCluster::start(1).await;
    let mut nodes = ChildCluster::start(&["a", "b"], &nats.urls(), prefix).await;
    let (a, b) = (nodes.node(0).addr(), nodes.node(1).addr());
    let id = "load-subscriber".to_string();
    let connect = connect_packet(&id, false);
    let (mut sub, ack, _) = connect_until_accepted(a, connect.clone(), WAIT).await;
    assert!(!ack.session_present, "a new client id has no session");
    subscribe(&mut sub, "load/#", qos).await;

    let progress = Arc::new(AtomicUsize::new(0));
    let acks = Arc::new(AtomicUsize::new(0));
    let (target_tx, target_rx) = watch::channel(None);
    let (killed_tx, killed_rx) = watch::channel(false);
    let deadline = Instant::now() + Duration::from_secs(40);
    let consumer = tokio::spawn(consume_across_kill(
        sub,
        b,
        id,
        connect,
        progress.clone(),
        target_rx,
        Duration::from_secs(2),
        deadline,
    ));
    let publisher = tokio::spawn(publish_numbered(
        b,
        "load/x",
        qos,
        count,
        16,
        acks.clone(),
        killed_rx,
        Duration::from_secs(35),
    ));
    // Kill A once its subscriber has consumed a quarter: mid-stream, the publisher busy.
    let kill_at = (count / 4) as usize;
    let wait_until = Instant::now() + Duration::from_secs(20);
    while progress.load(Ordering::Relaxed) < kill_at {
        assert!(
            Instant::now() < wait_until,
            "the subscriber on A consumed only {} messages ({} acknowledged)",
            progress.load(Ordering::Relaxed),
            acks.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (consumed_at_kill, acked_at_kill) = (
        progress.load(Ordering::Relaxed),
        acks.load(Ordering::Relaxed),
    );
    nodes.kill_9(0);
    killed_tx.send_replace(true);
    eprintln!(
        "{prefix}: killed node a after {consumed_at_kill} consumed, {acked_at_kill} acknowledged"
    );
    let published = publisher.await.expect("publisher task");
    let mut acked: Vec<String> = published.acked.iter().map(u64::to_string).collect();
    acked.sort_by_key(|p| p.parse::<u64>().unwrap_or(u64::MAX));
    target_tx.send_replace(Some(Arc::new(acked)));
    let consumed = consumer.await.expect("consumer task");
    let mut logs = nodes.log_lines("resumed the session");
    logs.extend(nodes.log_lines("did not hand the session over"));
    (published, consumed, logs)
}

/// Out-of-order deliveries: first deliveries of a payload that arrived after a larger one.
fn out_of_order(delivered: &[String]) -> usize {
    let mut seen = HashSet::new();
    let mut highest = None;
    let mut late = 0;
    for p in delivered {
        if !seen.insert(p.as_str()) {
            continue;
        }
        let n: u64 = p.parse().unwrap_or(0);
        if highest.is_some_and(|h| n < h) {
            late += 1;
        }
        highest = highest.max(Some(n));
    }
    late
}

/// One line about a load run.
fn summary(prefix: &str, p: &Published, c: &Consumed) -> String {
    let dups = c.inbox.duplicates();
    format!(
        "{prefix}: {} acknowledged in {:.1?} ({} after the kill); subscriber delivered {} \
         ({} before the kill), session present {} after {:.1?}, duplicates {} {:?}, \
         QoS 2 re-sends {}, DUP-flagged {}, out of order {}, missing {} {:?}, id conflicts {:?}",
        p.acked.len(),
        p.elapsed,
        p.acked_after_kill,
        c.inbox.delivered.len(),
        c.before_kill,
        c.session_present,
        c.reconnect,
        dups.len(),
        dups.iter().take(20).collect::<Vec<_>>(),
        c.inbox.resent,
        c.inbox.dup_flagged,
        out_of_order(&c.inbox.delivered),
        c.missing.len(),
        c.missing.iter().take(20).collect::<Vec<_>>(),
        c.inbox.id_conflicts.iter().take(5).collect::<Vec<_>>(),
    )
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// A persistent session follows its client from node A to node B: CONNACK session present,
/// the QoS 1 messages queued while it was offline delivered in order and once, its
/// subscription in force on B. A client still connected to A is taken over by a connection
/// with the same id on B: A closes its connection (MQTT 5: DISCONNECT 0x8E, session taken
/// over [MQTT-3.1.4-3]), and its unacknowledged QoS 1 messages are sent again by B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_node_takes_its_session_with_it() {
    bounded(
        "a_client_moving_to_another_node_takes_its_session_with_it",
        async {
            let nats = NatsCluster::start(1).await;
            let cfg = cluster_config(&nats.urls(), "move");
            let a = start_node("move-a", cfg.clone()).await;
            let b = start_node("move-b", cfg).await;

            // Offline queue: subscribe on A, leave, 10 messages published (on B), come back on B.
            let (mut s1, present) = RawClient::connect(a.local_addr(), "mover", false).await;
            assert!(!present);
            subscribe(&mut s1, "move/#", QoS::AtLeastOnce).await;
            s1.send(&Packet::Disconnect).await;
            s1.expect_closed().await;
            let (mut publisher, _) = RawClient::connect(b.local_addr(), "move-pub", true).await;
            for i in 0..10u16 {
                publish1(&mut publisher, "move/q", &i.to_string(), i + 1).await;
            }
            // Let A queue them in the offline session (its consumer reads within milliseconds).
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (mut s1, ack, took) =
                connect_until_accepted(b.local_addr(), connect_packet("mover", false), RESUME_WAIT)
                    .await;
            eprintln!("mover: CONNACK from b {took:.1?} after CONNECT");
            assert!(ack.session_present, "the session came along: {ack:?}");
            let mut inbox = Inbox::default();
            receive(&mut s1, &mut inbox, 10, WAIT).await;
            assert_eq!(inbox.delivered, numbered(0..10), "queued messages in order");
            // The subscription is B's now: a new message reaches the client there, once.
            publish1(&mut publisher, "move/live", "live", 20).await;
            receive(&mut s1, &mut inbox, 11, WAIT).await;
            drain(&mut s1, &mut inbox, Duration::from_secs(1)).await;
            assert_eq!(inbox.delivered.len(), 11, "{:?}", inbox.delivered);
            assert_eq!(inbox.delivered[10], "live");
            // A holds nothing of it any more: its own publisher's messages reach the client on
            // B, not a ghost session on A.
            let (mut pub_a, _) = RawClient::connect(a.local_addr(), "move-pub-a", true).await;
            publish1(&mut pub_a, "move/from-a", "from-a", 1).await;
            receive(&mut s1, &mut inbox, 12, WAIT).await;
            drain(&mut s1, &mut inbox, Duration::from_secs(1)).await;
            assert_eq!(inbox.delivered.len(), 12, "{:?}", inbox.delivered);
            let handed = log_lines(&["session handed over", "client_id=\"mover\""]);
            eprintln!("{handed:?}");
            assert!(!handed.is_empty(), "A logged no hand-over of mover");

            // Take-over while connected, MQTT 5, persistent: 3 messages in flight on A (never
            // acknowledged), then the same client id connects to B.
            let (mut m_a, ack) =
                RawClient::connect_with(a.local_addr(), connect5("m5", false, Some(300))).await;
            assert_eq!(ack.v5_reason(), reason::SUCCESS);
            subscribe(&mut m_a, "take/#", QoS::AtLeastOnce).await;
            for i in 0..3u16 {
                publish1(&mut publisher, "take/q", &format!("t{i}"), 30 + i).await;
            }
            let mut unacked = Vec::new();
            while unacked.len() < 3 {
                match m_a.recv().await {
                    Some(Packet::Publish(p)) => {
                        unacked.push(String::from_utf8_lossy(&p.payload).into_owned())
                    }
                    other => panic!("m5 on A expected PUBLISH, got {other:?}"),
                }
            }
            assert_eq!(unacked, ["t0", "t1", "t2"]);
            let (mut m_b, ack, took) = connect_until_accepted(
                b.local_addr(),
                connect5("m5", false, Some(300)),
                RESUME_WAIT,
            )
            .await;
            eprintln!("m5: CONNACK from b {took:.1?} after CONNECT (taken over from a)");
            assert!(ack.session_present, "m5's session came along: {ack:?}");
            // A's connection: DISCONNECT 0x8E, then closed.
            let mut before = Vec::new();
            let reason_code = loop {
                match m_a.recv_within(WAIT).await {
                    Ok(Some(Packet::DisconnectWithReason(d))) => break Some(d.reason),
                    Ok(Some(p)) => before.push(p),
                    Ok(None) => break None,
                    Err(()) => panic!("A kept m5's connection open after the take-over"),
                }
            };
            assert_eq!(
                reason_code,
                Some(reason::SESSION_TAKEN_OVER),
                "A's connection of m5 must end with DISCONNECT 0x8E; packets before: {before:?}"
            );
            m_a.expect_closed().await;
            // B sends the 3 unacknowledged messages again, in order, then nothing more.
            let mut m_inbox = Inbox::default();
            receive(&mut m_b, &mut m_inbox, 3, WAIT).await;
            drain(&mut m_b, &mut m_inbox, Duration::from_secs(1)).await;
            assert_eq!(m_inbox.delivered, ["t0", "t1", "t2"]);
            eprintln!(
                "m5: re-sent by b with DUP set on {} of 3",
                m_inbox.dup_flagged
            );
            // The subscription came along too.
            publish1(&mut publisher, "take/after", "t3", 40).await;
            receive(&mut m_b, &mut m_inbox, 4, WAIT).await;
            assert_eq!(m_inbox.delivered[3], "t3");

            // 3.1.1: the old connection is closed (3.1.1 has no server DISCONNECT).
            let (mut old, _) = RawClient::connect(a.local_addr(), "m311", true).await;
            let (_new, _, _) =
                connect_until_accepted(b.local_addr(), connect_packet("m311", true), RESUME_WAIT)
                    .await;
            old.expect_closed().await;

            a.shutdown().await;
            b.shutdown().await;
        },
    )
    .await;
}

/// Node A is killed (SIGKILL) while it holds two persistent sessions with 20 QoS 1 messages
/// each: s1 offline (20 queued), s2 connected but never acknowledging (20 in flight); 20
/// more are published while no node holds the sessions; both connect to B: session
/// present, all 40 in order, none twice (s2's 20 sent again, as unacknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_persistent_sessions_resume_on_another_node_without_loss() {
    bounded(
        "a_killed_node_s_persistent_sessions_resume_on_another_node_without_loss",
        async {
            let nats = NatsCluster::start(1).await;
            let mut nodes = ChildCluster::start(&["a", "b"], &nats.urls(), "killed").await;
            let (a, b) = (nodes.node(0).addr(), nodes.node(1).addr());
            let (mut s1, ack, _) =
                connect_until_accepted(a, connect_packet("s1", false), WAIT).await;
            assert!(!ack.session_present);
            subscribe(&mut s1, "k/#", QoS::AtLeastOnce).await;
            s1.send(&Packet::Disconnect).await;
            s1.expect_closed().await;
            // s2 stays connected to A and never acknowledges: its 20 are in flight there.
            let (mut s2, _, _) = connect_until_accepted(a, connect_packet("s2", false), WAIT).await;
            subscribe(&mut s2, "k/#", QoS::AtLeastOnce).await;

            let (mut publisher, _, _) =
                connect_until_accepted(b, connect_packet("k-pub", true), WAIT).await;
            for i in 0..20u16 {
                publish1(&mut publisher, "k/q", &i.to_string(), i + 1).await;
            }
            let mut in_flight = Vec::new();
            while in_flight.len() < 20 {
                match s2.recv().await {
                    Some(Packet::Publish(p)) => {
                        in_flight.push(String::from_utf8_lossy(&p.payload).into_owned())
                    }
                    other => panic!("s2 on A expected PUBLISH, got {other:?}"),
                }
            }
            assert_eq!(in_flight, numbered(0..20));
            // A journals them into the sessions and checkpoints (every 500 ms).
            tokio::time::sleep(Duration::from_millis(1500)).await;
            nodes.kill_9(0);
            s2.expect_closed().await;
            for i in 20..40u16 {
                publish1(&mut publisher, "k/q", &i.to_string(), i + 1).await;
            }

            let (mut s1, ack, took) =
                connect_until_accepted(b, connect_packet("s1", false), RESUME_WAIT).await;
            eprintln!("s1: CONNACK from b {took:.1?} after CONNECT (a killed)");
            assert!(ack.session_present, "s1's session resumed on b: {ack:?}");
            let mut inbox = Inbox::default();
            receive(&mut s1, &mut inbox, 40, Duration::from_secs(10)).await;
            drain(&mut s1, &mut inbox, Duration::from_secs(2)).await;
            for l in nodes.log_lines("resumed the session") {
                eprintln!("{l}");
            }
            assert_eq!(
                inbox.delivered,
                numbered(0..40),
                "all 40, in order, once (duplicates: {:?})",
                inbox.duplicates()
            );
            // s2: its 20 unacknowledged sent again, then the 20 published after the kill.
            let (mut s2, ack, took) =
                connect_until_accepted(b, connect_packet("s2", false), RESUME_WAIT).await;
            eprintln!("s2: CONNACK from b {took:.1?} after CONNECT (a killed)");
            assert!(ack.session_present, "s2's session resumed on b: {ack:?}");
            let mut inbox2 = Inbox::default();
            receive(&mut s2, &mut inbox2, 40, Duration::from_secs(10)).await;
            drain(&mut s2, &mut inbox2, Duration::from_secs(1)).await;
            eprintln!("s2: DUP set on {} of 40", inbox2.dup_flagged);
            assert_eq!(
                inbox2.delivered,
                numbered(0..40),
                "s2: the 20 in flight again and the 20 new, in order, once (duplicates: {:?})",
                inbox2.duplicates()
            );
            // Both still subscribed on b.
            publish1(&mut publisher, "k/after", "after", 100).await;
            receive(&mut s1, &mut inbox, 41, WAIT).await;
            assert_eq!(inbox.delivered[40], "after");
            receive(&mut s2, &mut inbox2, 41, WAIT).await;
            assert_eq!(inbox2.delivered[40], "after");
        },
    )
    .await;
}

/// A publisher on B sends QoS 1 continuously; the persistent subscriber on A consumes; A is
/// killed mid-stream; the subscriber reconnects to B and carries on. Every message B
/// acknowledged is delivered at least once (duplicates are QoS 1's right, and reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_qos1_message_is_lost_when_the_subscriber_s_node_is_killed_under_load() {
    bounded(
        "no_acknowledged_qos1_message_is_lost_when_the_subscriber_s_node_is_killed_under_load",
        async {
            let (published, consumed, logs) =
                kill_under_load("load1", QoS::AtLeastOnce, 2000).await;
            eprintln!("{}", summary("qos1", &published, &consumed));
            for l in &logs {
                eprintln!("{l}");
            }
            assert_eq!(published.acked.len(), 2000);
            assert!(consumed.session_present, "the session resumed on b");
            assert!(
                consumed.missing.is_empty(),
                "acknowledged QoS 1 messages never delivered: {} {:?}",
                consumed.missing.len(),
                consumed.missing.iter().take(50).collect::<Vec<_>>()
            );
        },
    )
    .await;
}

/// The same at QoS 2 (publisher and subscription): no acknowledged (PUBREC'd) message is
/// lost, and none is delivered twice to the subscriber's application. The subscriber plays
/// the QoS 2 receiver by the book across its reconnection (ids awaiting PUBREL kept), so a
/// duplicate here is one the broker sent as a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_is_delivered_exactly_once_across_a_node_kill() {
    bounded("qos2_is_delivered_exactly_once_across_a_node_kill", async {
        let (published, consumed, logs) = kill_under_load("load2", QoS::ExactlyOnce, 2000).await;
        eprintln!("{}", summary("qos2", &published, &consumed));
        for l in &logs {
            eprintln!("{l}");
        }
        assert_eq!(published.acked.len(), 2000);
        assert!(consumed.session_present, "the session resumed on b");
        let dups = consumed.inbox.duplicates();
        assert!(
            consumed.missing.is_empty()
                && dups.is_empty()
                && consumed.inbox.id_conflicts.is_empty(),
            "QoS 2 across a node kill: missing {} {:?}; delivered twice {} {:?}; id conflicts {:?}",
            consumed.missing.len(),
            consumed.missing.iter().take(50).collect::<Vec<_>>(),
            dups.len(),
            dups.iter().take(50).collect::<Vec<_>>(),
            consumed
                .inbox
                .id_conflicts
                .iter()
                .take(10)
                .collect::<Vec<_>>(),
        );
    })
    .await;
}

/// Two clients with wills are connected to A; A is killed; the subscribers to the will
/// topics on B and on C each get each will exactly once (one surviving node publishes it,
/// ~3 s after A's last heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_s_client_wills_are_published_once() {
    bounded("a_dead_node_s_client_wills_are_published_once", async {
        let nats = NatsCluster::start(1).await;
        let mut nodes = ChildCluster::start(&["a", "b", "c"], &nats.urls(), "wills").await;
        let (a, b, c) = (
            nodes.node(0).addr(),
            nodes.node(1).addr(),
            nodes.node(2).addr(),
        );
        let mut watchers = Vec::new();
        for (name, addr) in [("watch-b", b), ("watch-c", c)] {
            let (mut w, _, _) =
                connect_until_accepted(addr, connect_packet(name, true), WAIT).await;
            subscribe(&mut w, "will/#", QoS::AtLeastOnce).await;
            watchers.push((name, w, Inbox::default()));
        }
        let mut holders = Vec::new();
        for id in ["w1", "w2"] {
            let mut connect = connect_packet(id, true);
            connect.keep_alive = 60;
            connect.will = Some(LastWill {
                topic: format!("will/{id}").into(),
                payload: bytes::Bytes::from(format!("{id} is gone")),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
            });
            let (h, _, _) = connect_until_accepted(a, connect, WAIT).await;
            holders.push(h);
        }
        // The wills are recorded in the cluster; a heartbeat or two of A's is seen.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        nodes.kill_9(0);
        let killed = Instant::now();
        drop(holders);

        let mut arrival = Vec::new();
        for (name, w, inbox) in &mut watchers {
            receive(w, inbox, 2, Duration::from_secs(15)).await;
            arrival.push((*name, killed.elapsed()));
        }
        // Long enough for every other node's dead-node check to have run several times.
        for (_, w, inbox) in &mut watchers {
            drain(w, inbox, Duration::from_secs(4)).await;
        }
        let published = nodes.log_lines("published the wills of its clients");
        eprintln!("wills: both watchers had both wills at {arrival:?} after the kill");
        for l in &published {
            eprintln!("{l}");
        }
        for (name, _, inbox) in &watchers {
            let mut got: Vec<(String, String)> = inbox
                .topics
                .iter()
                .cloned()
                .zip(inbox.delivered.iter().cloned())
                .collect();
            got.sort();
            assert_eq!(
                got,
                [
                    ("will/w1".to_string(), "w1 is gone".to_string()),
                    ("will/w2".to_string(), "w2 is gone".to_string())
                ],
                "{name}: each will exactly once; dead-node logs: {published:?}"
            );
        }
    })
    .await;
}

/// Members of `$share/g/jobs/#` on two nodes (two on A, one on B); 300 QoS 1 messages
/// from A: each reaches exactly one member across the cluster, and members on both nodes
/// get some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_members_on_several_nodes_get_each_message_once() {
    bounded(
        "shared_subscription_members_on_several_nodes_get_each_message_once",
        async {
            let nats = NatsCluster::start(1).await;
            let cfg = cluster_config(&nats.urls(), "shares");
            let a = start_node("share-a", cfg.clone()).await;
            let b = start_node("share-b", cfg).await;
            let mut members = Vec::new();
            for (name, node) in [("a1", &a), ("a2", &a), ("b1", &b)] {
                let (mut c, _) = RawClient::connect(node.local_addr(), name, true).await;
                subscribe(&mut c, "$share/g/jobs/#", QoS::AtLeastOnce).await;
                members.push((name, c));
            }
            wait_share_membership(&nats.url(0), "shares", 2).await;

            let counter = Arc::new(AtomicUsize::new(0));
            let (stop_tx, stop_rx) = watch::channel(false);
            let tasks: Vec<_> = members
                .into_iter()
                .map(|(name, c)| {
                    let counter = counter.clone();
                    let stop = stop_rx.clone();
                    (name, tokio::spawn(gather(c, counter, stop)))
                })
                .collect();
            let (mut publisher, _) = RawClient::connect(a.local_addr(), "jobs-pub", true).await;
            for i in 0..300u16 {
                publish1(
                    &mut publisher,
                    &format!("jobs/{}", i % 7),
                    &i.to_string(),
                    i + 1,
                )
                .await;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while counter.load(Ordering::Relaxed) < 300 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Late second copies, if any, come now.
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop_tx.send_replace(true);
            let mut per_member = Vec::new();
            let mut all = Inbox::default();
            for (name, task) in tasks {
                let inbox = task.await.expect("member task");
                per_member.push((name, inbox.delivered.len()));
                all.delivered.extend(inbox.delivered);
            }
            let dups = all.duplicates();
            let got: HashSet<&String> = all.delivered.iter().collect();
            let missing: Vec<String> = numbered(0..300)
                .into_iter()
                .filter(|p| !got.contains(p))
                .collect();
            eprintln!(
                "shares: per member {per_member:?}, total {}, duplicates {}, missing {}",
                all.delivered.len(),
                dups.len(),
                missing.len()
            );
            assert!(
                dups.is_empty(),
                "messages that reached two members: {dups:?}"
            );
            assert!(missing.is_empty(), "messages no member got: {missing:?}");
            assert_eq!(all.delivered.len(), 300);
            let on_a = per_member[0].1 + per_member[1].1;
            let on_b = per_member[2].1;
            assert!(
                on_a > 0 && on_b > 0,
                "both nodes' members get some: {per_member:?}"
            );
            a.shutdown().await;
            b.shutdown().await;
        },
    )
    .await;
}

/// Receives on `c` (counting deliveries in `counter`) until `stop` is set and nothing came
/// for 200 ms.
async fn gather(mut c: RawClient, counter: Arc<AtomicUsize>, stop: watch::Receiver<bool>) -> Inbox {
    let mut inbox = Inbox::default();
    loop {
        match c.recv_within(Duration::from_millis(200)).await {
            Ok(Some(p)) => {
                let before = inbox.delivered.len();
                inbox.handle(&mut c, p).await.unwrap();
                counter.fetch_add(inbox.delivered.len() - before, Ordering::Relaxed);
            }
            Ok(None) => panic!("a shared subscription member's connection closed"),
            Err(()) if *stop.borrow() => return inbox,
            Err(()) => {}
        }
    }
}

/// Waits until the shares bucket of `prefix` lists `nodes` entries (each node with members
/// published its count); panics after [`WAIT`].
async fn wait_share_membership(url: &str, prefix: &str, nodes: usize) {
    use futures_util::StreamExt;
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let bucket = js
        .get_key_value(format!("{prefix}-shares"))
        .await
        .expect("the shares bucket");
    let deadline = Instant::now() + WAIT;
    loop {
        let mut keys = Vec::new();
        if let Ok(mut stream) = bucket.keys().await {
            while let Some(Ok(k)) = stream.next().await {
                keys.push(k);
            }
        }
        if keys.len() >= nodes {
            // Every node's watcher applies it within milliseconds.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shared membership in the bucket: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
