//! Several broker nodes acting as one, over NATS JetStream: an existing, quorum-replicated
//! engine does the storing and replicating; this module maps MQTT onto it.
//!
//! - [`subject`]: the reversible topic ↔ subject/key mapping;
//! - [`router`]: the cluster's implementation of the routing seam;
//! - this file: the link to NATS (connect, create the stream and bucket, the publisher,
//!   acknowledgement and receiver tasks) and its statistics.
//!
//! What NATS holds, all named from `cluster.prefix` (`mqtt` by default):
//! - core subjects `mqtt.m.<topic>`: QoS 0 messages, fire and forget;
//! - stream `mqtt-messages` on `mqtt.q.>`: QoS 1/2 messages, replicated, kept for
//!   `message_max_age`;
//! - key-value bucket `mqtt-retained`: the retained message of each topic.
//!
//! Each node reads everything once: one subscription to `mqtt.m.>` and one ordered
//! consumer of the stream, whatever its clients subscribe to, and matches locally with its
//! own trie. That costs every node every message, but never a JetStream consumer per MQTT
//! subscription (NATS users report thousands of consumers as a scaling problem), never two
//! copies of one message to a node with overlapping subscriptions, and a subscription
//! change never waits for NATS.

pub mod router;
pub mod sessions;
pub mod shares;
pub mod subject;

use crate::config::ClusterConfig;
use crate::core::router::LocalRouter;
use crate::model::Message;
use crate::protocol::QoS;
use crate::storage::codec::{decode_message, encode_message};
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS could not be reached within `cluster.connect_timeout`.
    #[error("cannot connect to NATS ({servers}): {reason}")]
    Connect {
        /// The configured servers.
        servers: String,
        /// What the client said.
        reason: String,
    },
    /// A stream or bucket could not be created or opened.
    #[error("cannot set up JetStream {what}: {reason}")]
    Setup {
        /// Which stream or bucket.
        what: String,
        /// What JetStream said.
        reason: String,
    },
}

/// Names of everything this cluster uses in NATS.
#[derive(Debug, Clone)]
pub struct Names {
    /// Core subject prefix of QoS 0 messages (`<prefix>.m`).
    pub live: String,
    /// Subject prefix of the stream's QoS 1/2 messages (`<prefix>.q`).
    pub stored: String,
    /// The stream.
    pub stream: String,
    /// The retained bucket.
    pub retained: String,
    /// The bucket of session owners.
    pub owners: String,
    /// The bucket of persistent sessions' state.
    pub sessions: String,
    /// The bucket of node heartbeats and checkpoints.
    pub nodes: String,
    /// The bucket of connected clients' wills.
    pub wills: String,
    /// The bucket of shared subscription membership.
    pub shares: String,
}

impl Names {
    /// The names under `prefix`.
    pub fn new(prefix: &str) -> Names {
        Names {
            live: format!("{prefix}.m"),
            stored: format!("{prefix}.q"),
            stream: format!("{prefix}-messages"),
            retained: format!("{prefix}-retained"),
            owners: format!("{prefix}-owners"),
            sessions: format!("{prefix}-session-state"),
            nodes: format!("{prefix}-nodes"),
            wills: format!("{prefix}-wills"),
            shares: format!("{prefix}-shares"),
        }
    }
}

/// What the link tells the broker about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connected to NATS (again).
    Up,
    /// The NATS connection is lost: refuse new clients.
    Down,
    /// Lost for `isolation_timeout`: disconnect every client.
    Isolated,
}

/// Counters of the link, for `/metrics` and `/api/v1/cluster`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Whether the NATS connection is up.
    pub link_up: AtomicBool,
    /// Times the link went down.
    pub link_losses: AtomicU64,
    /// Messages sent to the cluster (core and stream).
    pub to_cluster: AtomicU64,
    /// Messages received from the cluster and delivered here.
    pub from_cluster: AtomicU64,
    /// QoS 1/2 messages JetStream did not store (their publishers were not acknowledged).
    pub publish_failures: AtomicU64,
    /// Messages from the cluster that could not be decoded (dropped, logged).
    pub undecodable: AtomicU64,
    /// Stream acknowledgements received, and their total and largest latency (µs).
    pub acks: AtomicU64,
    /// Sum of JetStream publish-to-acknowledgement latencies, µs.
    pub ack_latency_us_sum: AtomicU64,
    /// Largest JetStream publish-to-acknowledgement latency, µs.
    pub ack_latency_us_max: AtomicU64,
    /// Retained updates applied from the bucket.
    pub retained_updates: AtomicU64,
    /// Sessions this node gave to another node that their clients connected to.
    pub sessions_handed_over: AtomicU64,
    /// Wills of a dead node's clients this node published.
    pub wills_of_dead_nodes: AtomicU64,
}

/// What the router hands the publisher task.
pub(crate) struct Outgoing {
    message: Message,
    /// Through the stream (QoS 1/2) rather than core NATS.
    stored: bool,
    /// The message's cluster-wide id (see [`shares`]).
    id: u64,
}

impl Outgoing {
    /// A QoS 0 message for core NATS (and the bucket when retained).
    pub fn live(message: Message, id: u64) -> Outgoing {
        Outgoing {
            message,
            stored: false,
            id,
        }
    }

    /// A QoS 1/2 message for the stream (and the bucket when retained).
    pub fn stored(message: Message, id: u64) -> Outgoing {
        Outgoing {
            message,
            stored: true,
            id,
        }
    }
}

/// The header carrying a message's cluster-wide id.
const ID_HEADER: &str = "Mqtt-Id";

/// The id a message from NATS carries (0 when none).
fn message_id(headers: Option<&async_nats::HeaderMap>) -> u64 {
    headers
        .and_then(|h| h.get(ID_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

/// The queue into the publisher task: tickets are taken and messages sent under one lock,
/// so the task sees them in ticket order.
struct Submitter {
    next: u64,
    tx: mpsc::UnboundedSender<(Option<u64>, Outgoing)>,
}

/// State shared by the router, the tasks and the admin interface.
pub(crate) struct ClusterShared {
    submitter: Mutex<Submitter>,
    /// Every ticket up to this one is settled (stored or failed).
    pub done: watch::Sender<u64>,
    /// Settled tickets that failed, with why (the oldest are forgotten past a bound).
    failed: Mutex<std::collections::BTreeMap<u64, String>>,
    /// The stream position this node has delivered up to; held while a message from the
    /// stream is routed, and by a session resumed or handed over, so that a session is
    /// caught up or let go at an exact position.
    pub position: tokio::sync::Mutex<u64>,
    /// The same position, readable without waiting (heartbeat checkpoints).
    pub position_now: AtomicU64,
    /// Revision of the retained bucket this node's store reflects.
    retained_applied: watch::Sender<u64>,
    publish_timeout_ms: AtomicU64,
    isolation_timeout_ms: AtomicU64,
    /// The link's counters.
    pub stats: Arc<ClusterStats>,
    /// Shared subscription groups across nodes.
    pub shares: shares::Shares,
    /// Last heartbeat (Unix ms) of every other node, mirrored from the nodes bucket.
    pub heartbeats: Mutex<std::collections::HashMap<String, u64>>,
    /// Whether the NATS connection is up.
    nats_up: AtomicBool,
    /// Whether JetStream answered the last heartbeat.
    jetstream_up: AtomicBool,
    /// Tells the broker the link's state (readiness, refusing clients, isolation).
    health_callback: std::sync::OnceLock<Arc<dyn Fn(LinkState) + Send + Sync>>,
    /// How many client ids this node owns (kept by the directory).
    pub owned_sessions: AtomicU64,
    /// Source of message ids: this node's hash in the high bits, a counter below.
    next_id: AtomicU64,
    /// This node's name.
    pub node: String,
    /// The configuration the link started with.
    pub config: ClusterConfig,
    /// NATS names.
    pub names: Names,
}

/// Longest pull request of the node's stream consumer (see its creation).
const CONSUMER_PULL_EXPIRES: Duration = Duration::from_secs(2);

/// Failed tickets remembered at most (each connection waits within a second or so).
const FAILED_KEPT: usize = 65_536;

impl ClusterShared {
    /// Queues a message for the publisher task; returns its ticket when `ticket` is asked.
    pub fn submit(&self, out: Outgoing, ticket: bool) -> Option<u64> {
        let mut s = self.submitter.lock();
        let t = ticket.then(|| {
            let t = s.next;
            s.next += 1;
            t
        });
        if s.tx.send((t, out)).is_err() {
            drop(s);
            if let Some(t) = t {
                self.settle(t, Some("the cluster link has stopped".into()));
            }
        }
        t
    }

    /// A new cluster-wide message id.
    pub fn new_message_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `node` sent a heartbeat lately.
    pub fn alive(&self, node: &str) -> bool {
        let at = self.heartbeats.lock().get(node).copied();
        at.is_some_and(|at| heartbeat_is_recent(sessions::now_ms(), at))
    }

    /// Whether this node's members of the shared group `filter` get message `id`.
    pub fn serves_group(&self, filter: &str, id: u64) -> bool {
        self.shares.serves(filter, id, &|n| self.alive(n))
    }

    /// Records a ticket settled (in order), failed with why or stored.
    fn settle(&self, ticket: u64, failure: Option<String>) {
        if let Some(why) = failure {
            self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
            let mut f = self.failed.lock();
            f.insert(ticket, why);
            while f.len() > FAILED_KEPT {
                f.pop_first();
            }
        }
        self.done.send_if_modified(|d| {
            let moved = ticket > *d;
            *d = (*d).max(ticket);
            moved
        });
    }

    /// The first failure among settled tickets `first..=last`.
    pub fn failure_between(&self, first: u64, last: u64) -> Result<(), String> {
        match self.failed.lock().range(first..=last).next() {
            Some((_, why)) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// `cluster.publish_timeout` in force.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms.load(Ordering::Relaxed))
    }

    /// Applies the live part of a reloaded `cluster:` section.
    pub fn apply_live(&self, config: &ClusterConfig) {
        self.publish_timeout_ms.store(
            config.publish_timeout.get().as_millis() as u64,
            Ordering::Relaxed,
        );
        self.isolation_timeout_ms.store(
            config.isolation_timeout.get().as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// The link as the admin API and metrics show it.
    pub fn summary(&self) -> crate::core::control::ClusterSummary {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let acks = get(&s.acks);
        let sum = get(&s.ack_latency_us_sum);
        crate::core::control::ClusterSummary {
            node: self.node.clone(),
            servers: self.config.servers.clone(),
            prefix: self.config.prefix.clone(),
            replicas: self.config.replicas,
            link_up: s.link_up.load(Ordering::Relaxed),
            link_losses: get(&s.link_losses),
            messages_to_cluster: get(&s.to_cluster),
            messages_from_cluster: get(&s.from_cluster),
            publish_failures: get(&s.publish_failures),
            jetstream_acks: acks,
            jetstream_ack_us_mean: sum.checked_div(acks).unwrap_or(0),
            jetstream_ack_us_max: get(&s.ack_latency_us_max),
            jetstream_ack_seconds_sum: sum as f64 / 1e6,
            retained_updates: get(&s.retained_updates),
            undecodable: get(&s.undecodable),
            nodes: {
                let now = sessions::now_ms();
                let mut nodes: Vec<_> = self
                    .heartbeats
                    .lock()
                    .iter()
                    .map(|(name, at)| crate::core::control::ClusterNode {
                        name: name.clone(),
                        heartbeat_age_ms: now.saturating_sub(*at),
                        // Not `alive()`: it takes the lock held here.
                        alive: heartbeat_is_recent(now, *at),
                    })
                    .collect();
                nodes.sort_by(|a, b| a.name.cmp(&b.name));
                nodes
            },
            sessions_owned: self.owned_sessions.load(Ordering::Relaxed) as usize,
            sessions_handed_over: get(&s.sessions_handed_over),
            wills_of_stopped_nodes: get(&s.wills_of_dead_nodes),
        }
    }

    /// The NATS connection went down or came back.
    pub fn set_nats(self: &Arc<Self>, up: bool) {
        let was = self.nats_up.swap(up, Ordering::AcqRel);
        if was == up {
            return;
        }
        if up {
            info!("cluster: NATS connection is back");
        } else {
            warn!("cluster: lost the NATS connection; refusing new clients until it is back");
            let loss = self.stats.link_losses.fetch_add(1, Ordering::Relaxed) + 1;
            let shared = self.clone();
            tokio::spawn(async move {
                let wait = shared.isolation_timeout();
                tokio::time::sleep(wait).await;
                let same_loss = shared.stats.link_losses.load(Ordering::Relaxed) == loss;
                if same_loss && !shared.nats_up.load(Ordering::Acquire) {
                    warn!(
                        isolation_timeout_ms = wait.as_millis() as u64,
                        "cluster: still cut off from NATS; disconnecting every client so that they reconnect to another node"
                    );
                    if let Some(cb) = shared.health_callback.get() {
                        cb(LinkState::Isolated);
                    }
                }
            });
        }
        self.report_health();
    }

    /// JetStream answered (a heartbeat was stored) or did not: without it (no quorum) the
    /// node can neither store messages nor give sessions, so it refuses new clients; its
    /// connected clients stay (their QoS 1/2 publishes are refused one by one).
    pub fn set_jetstream(&self, up: bool) {
        let was = self.jetstream_up.swap(up, Ordering::AcqRel);
        if was != up {
            if up {
                info!("cluster: JetStream answers again");
            } else {
                warn!("cluster: JetStream does not answer (quorum lost?); refusing new clients until it does");
            }
            self.report_health();
        }
    }

    /// Publishes the combined state to the broker and the statistics.
    fn report_health(&self) {
        let up = self.nats_up.load(Ordering::Acquire) && self.jetstream_up.load(Ordering::Acquire);
        self.stats.link_up.store(up, Ordering::Relaxed);
        if let Some(cb) = self.health_callback.get() {
            cb(if up { LinkState::Up } else { LinkState::Down });
        }
    }

    /// `cluster.isolation_timeout` in force.
    pub fn isolation_timeout(&self) -> Duration {
        Duration::from_millis(self.isolation_timeout_ms.load(Ordering::Relaxed))
    }
}

/// A NATS connection with the stream and bucket this cluster uses, before the node's core
/// exists (so that the broker does not open its listeners without its cluster).
pub struct ClusterLink {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    retained: kv::Store,
    directory: Arc<sessions::ClusterDirectory>,
    shares_bucket: kv::Store,
    share_changes: mpsc::UnboundedReceiver<String>,
    events: mpsc::UnboundedReceiver<async_nats::Event>,
    shared: Arc<ClusterShared>,
    rx: mpsc::UnboundedReceiver<(Option<u64>, Outgoing)>,
}

impl ClusterLink {
    /// Connects to NATS (retrying within `connect_timeout`) and creates or opens the stream
    /// and the retained bucket.
    pub async fn connect(config: &ClusterConfig, node: &str) -> Result<ClusterLink, ClusterError> {
        let names = Names::new(&config.prefix);
        let (ev_tx, events) = mpsc::unbounded_channel();
        let servers: Vec<async_nats::ServerAddr> = config
            .servers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let connect_err = |reason: String| ClusterError::Connect {
            servers: config.servers.join(", "),
            reason,
        };
        let deadline = Instant::now() + config.connect_timeout.get();
        let client = loop {
            let options = options(config, node, ev_tx.clone())
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            match options.connect(servers.clone()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    warn!(error = %e, "cluster: NATS not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(connect_err(e.to_string())),
            }
        };
        let js = jetstream::new(client.clone());
        let setup = |what: &str, e: String| ClusterError::Setup {
            what: what.to_owned(),
            reason: e,
        };
        // JetStream may still be electing its leaders right after NATS starts: retry.
        let stream = retry_until(deadline, || {
            js.get_or_create_stream(stream::Config {
                name: names.stream.clone(),
                subjects: vec![format!("{}.>", names.stored)],
                max_age: config.message_max_age.get(),
                num_replicas: config.replicas,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
        })
        .await
        .map_err(|e| setup(&format!("stream {}", names.stream), e))?;
        // JetStream may still be electing its leaders right after NATS starts: retry.
        let bucket = |name: String| {
            let js = js.clone();
            async move {
                retry_until(deadline, || {
                    sessions::ensure_bucket(&js, &name, config.replicas)
                })
                .await
                .map_err(|e| setup(&format!("bucket {name}"), e))
            }
        };
        let retained = bucket(names.retained.clone()).await?;
        let owners = bucket(names.owners.clone()).await?;
        let session_state = bucket(names.sessions.clone()).await?;
        let nodes = bucket(names.nodes.clone()).await?;
        let shares = bucket(names.shares.clone()).await?;
        let wills = bucket(names.wills.clone()).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ClusterStats::default());
        let (node_shares, share_changes) = shares::Shares::new(node.to_owned());
        // Ids differ between nodes without coordination: a hash of the node's name in the
        // high bits.
        let node_bits = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        stats.link_up.store(true, Ordering::Relaxed);
        let shared = Arc::new(ClusterShared {
            submitter: Mutex::new(Submitter { next: 1, tx }),
            done: watch::channel(0).0,
            failed: Mutex::new(Default::default()),
            retained_applied: watch::channel(0).0,
            position: tokio::sync::Mutex::new(0),
            position_now: AtomicU64::new(0),
            publish_timeout_ms: AtomicU64::new(config.publish_timeout.get().as_millis() as u64),
            isolation_timeout_ms: AtomicU64::new(config.isolation_timeout.get().as_millis() as u64),
            stats,
            shares: node_shares,
            heartbeats: Mutex::new(Default::default()),
            owned_sessions: AtomicU64::new(0),
            nats_up: AtomicBool::new(true),
            jetstream_up: AtomicBool::new(true),
            health_callback: std::sync::OnceLock::new(),
            next_id: AtomicU64::new(node_bits << 32),
            node: node.to_owned(),
            config: config.clone(),
            names,
        });
        info!(servers = %config.servers.join(", "), node, stream = %shared.names.stream, "cluster: connected to NATS JetStream");
        let directory = Arc::new(sessions::ClusterDirectory::new(
            owners,
            session_state,
            nodes,
            wills,
            shared.clone(),
        ));
        Ok(ClusterLink {
            client,
            js,
            stream,
            retained,
            directory,
            shares_bucket: shares,
            share_changes,
            events,
            shared,
            rx,
        })
    }

    /// The store of persistent sessions (the node's [`crate::storage::Storage`] in a
    /// cluster).
    pub fn session_store(&self) -> Arc<dyn crate::storage::Storage> {
        Arc::new(sessions::JetStreamSessions::new(
            self.js.clone(),
            self.shared.names.sessions.clone(),
            tokio::runtime::Handle::current(),
        ))
    }

    /// The cluster's session directory.
    pub(crate) fn directory(&self) -> Arc<dyn crate::core::directory::SessionDirectory> {
        self.directory.clone()
    }

    /// The state the router and the admin interface share with the link's tasks.
    pub(crate) fn shared(&self) -> Arc<ClusterShared> {
        self.shared.clone()
    }

    /// Starts the tasks: publisher, acknowledgements, the two receivers and the retained
    /// watcher. Returns once this node's retained store holds the bucket's current state.
    pub(crate) async fn run(
        self,
        core: std::sync::Weak<crate::core::Core>,
        local: Arc<LocalRouter>,
        link_state: Arc<dyn Fn(LinkState) + Send + Sync>,
    ) -> Result<(), ClusterError> {
        let ClusterLink {
            client,
            js,
            stream,
            retained,
            directory,
            shares_bucket,
            share_changes,
            mut events,
            shared,
            rx,
        } = self;
        // Retained first: the node must know them before any client subscribes.
        let watch = retained
            .watch_with_history(">")
            .await
            .map_err(|e| ClusterError::Setup {
                what: format!("watch of bucket {}", shared.names.retained),
                reason: e.to_string(),
            })?;
        let initial = retained.status().await.map(|s| s.values()).unwrap_or(0);
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(watch_retained(
            watch,
            local.clone(),
            shared.clone(),
            initial,
            loaded_tx,
        ));
        let _ = tokio::time::timeout(shared.config.connect_timeout.get(), loaded_rx).await;

        let live = client
            .subscribe(format!("{}.>", shared.names.live))
            .await
            .map_err(|e| ClusterError::Setup {
                what: format!("subscription to {}.>", shared.names.live),
                reason: e.to_string(),
            })?;
        tokio::spawn(receive_live(live, local.clone(), shared.clone()));
        // Everything after what the stream holds now; the position starts there.
        let mut stream = stream;
        let last = stream
            .info()
            .await
            .map_err(|e| ClusterError::Setup {
                what: format!("stream {}", shared.names.stream),
                reason: e.to_string(),
            })?
            .state
            .last_sequence;
        *shared.position.lock().await = last;
        shared.position_now.store(last, Ordering::Release);
        let core_for_stop = core.clone();
        directory.start(core, local.clone(), stream.clone()).await;
        tokio::spawn(shares::publish_changes(
            share_changes,
            shares_bucket.clone(),
            local.clone(),
            shared.node.clone(),
        ));
        tokio::spawn(shares::watch(shares_bucket, shared.clone(), local.clone()));
        let messages = open_consumer(&stream, &shared, last)
            .await
            .map_err(|reason| ClusterError::Setup {
                what: format!("consumer of stream {}", shared.names.stream),
                reason,
            })?;
        tokio::spawn(receive_stored(
            stream.clone(),
            messages,
            local,
            shared.clone(),
        ));

        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        tokio::spawn(publish(rx, client.clone(), js, shared.clone(), ack_tx));
        tokio::spawn(settle_acks(ack_rx, shared.clone()));
        // The link ends with the broker: what is buffered is sent, then NATS is left.
        if let Some(stop) = core_for_stop.upgrade().map(|c| c.ops.stop.clone()) {
            let client = client.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                let _ = client.drain().await;
            });
        }

        let _ = shared.health_callback.set(link_state);
        let shared_ev = shared.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    async_nats::Event::Disconnected => shared_ev.set_nats(false),
                    async_nats::Event::Connected => shared_ev.set_nats(true),
                    other => info!(event = %other, "cluster: NATS event"),
                }
            }
        });
        Ok(())
    }
}

/// Whether a heartbeat written at `at` (Unix ms) is recent at `now`.
fn heartbeat_is_recent(now: u64, at: u64) -> bool {
    now.saturating_sub(at) < sessions::NODE_DEAD_AFTER.as_millis() as u64
}

/// Connection options from the config: credentials, TLS, this node's name, no echo.
async fn options(
    config: &ClusterConfig,
    node: &str,
    events: mpsc::UnboundedSender<async_nats::Event>,
) -> std::io::Result<async_nats::ConnectOptions> {
    let mut o = match &config.credentials {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path).await?,
        None => async_nats::ConnectOptions::new(),
    };
    if let (Some(u), Some(p)) = (&config.username, &config.password) {
        o = o.user_and_password(u.clone(), p.clone());
    } else if let Some(u) = &config.username {
        o = o.user_and_password(u.clone(), String::new());
    }
    if let Some(t) = &config.token {
        o = o.token(t.clone());
    }
    if let Some(ca) = &config.tls_ca {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(c), Some(k)) = (&config.tls_cert, &config.tls_key) {
        o = o.add_client_certificate(c.clone(), k.clone());
    }
    Ok(o.name(format!("mqtt-broker {node}"))
        // Our own QoS 0 publishes must not come back: this node delivered them already.
        .no_echo()
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(2))
        .max_reconnects(None)
        .event_callback(move |ev| {
            let events = events.clone();
            async move {
                let _ = events.send(ev);
            }
        }))
}

/// Runs `f` until it succeeds or `deadline` passes; the last error.
async fn retry_until<T, E: std::fmt::Display, F, Fut>(
    deadline: Instant,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                warn!(error = %e, "cluster: JetStream not ready yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A message as it crosses nodes: the storage codec's encoding (topic, QoS, retain,
/// MQTT 5 properties and expiry, payload).
fn encode(m: &Message) -> Bytes {
    Bytes::from(encode_message(m, None, None))
}

/// The message a node received, or why it is dropped.
fn decode(payload: &[u8]) -> Option<Message> {
    decode_message("cluster", payload).ok().map(|(m, _, _)| m)
}

/// Pending acknowledgements, in ticket order.
struct Pending {
    ticket: Option<u64>,
    sent: Instant,
    acks: Vec<(jetstream::context::PublishAckFuture, bool)>,
}

/// Sends what the router queued, in order; hands the acknowledgement futures on.
async fn publish(
    mut rx: mpsc::UnboundedReceiver<(Option<u64>, Outgoing)>,
    client: async_nats::Client,
    js: jetstream::Context,
    shared: Arc<ClusterShared>,
    acks: mpsc::UnboundedSender<Pending>,
) {
    let names = shared.names.clone();
    while let Some((ticket, out)) = rx.recv().await {
        let m = &out.message;
        let tokens = subject::topic_tokens(&m.topic);
        let body = encode(m);
        let mut pending = Pending {
            ticket,
            sent: Instant::now(),
            acks: Vec::new(),
        };
        let mut failure = None;
        if m.retain {
            let key = format!("$KV.{}.{tokens}", names.retained);
            let sent = if m.payload.is_empty() {
                // Deleting: a purge marker rolls up every earlier value of the key.
                let mut h = async_nats::HeaderMap::new();
                h.insert("KV-Operation", "PURGE");
                h.insert("Nats-Rollup", "sub");
                js.publish_with_headers(key, h, Bytes::new()).await
            } else {
                js.publish(key, body.clone()).await
            };
            match sent {
                Ok(f) => pending.acks.push((f, true)),
                Err(e) => failure = Some(format!("retained bucket: {e}")),
            }
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ID_HEADER, out.id.to_string().as_str());
        if out.stored {
            let subject = format!("{}.{tokens}", names.stored);
            match js.publish_with_headers(subject, headers, body).await {
                Ok(f) => pending.acks.push((f, false)),
                Err(e) => failure = Some(format!("stream: {e}")),
            }
        } else if let Err(e) = client
            .publish_with_headers(format!("{}.{tokens}", names.live), headers, body)
            .await
        {
            warn!(error = %e, topic = %m.topic, "cluster: QoS 0 message not sent to the other nodes");
        }
        shared.stats.to_cluster.fetch_add(1, Ordering::Relaxed);
        match failure {
            Some(why) => {
                if let Some(t) = ticket {
                    // Earlier tickets settle first: queue the failure behind them.
                    let _ = acks.send(Pending {
                        ticket: Some(t),
                        sent: pending.sent,
                        acks: Vec::new(),
                    });
                    shared.failed.lock().insert(t, why);
                }
            }
            None => {
                let _ = acks.send(pending);
            }
        }
    }
}

/// Awaits acknowledgements in ticket order and settles the tickets.
async fn settle_acks(mut rx: mpsc::UnboundedReceiver<Pending>, shared: Arc<ClusterShared>) {
    while let Some(p) = rx.recv().await {
        let mut failure = None;
        for (ack, retained) in p.acks {
            match ack.await {
                Ok(a) => {
                    let us = p.sent.elapsed().as_micros() as u64;
                    let s = &shared.stats;
                    s.acks.fetch_add(1, Ordering::Relaxed);
                    s.ack_latency_us_sum.fetch_add(us, Ordering::Relaxed);
                    s.ack_latency_us_max.fetch_max(us, Ordering::Relaxed);
                    if retained && p.ticket.is_some() {
                        // Read-your-write on this node: a subscriber here after the PUBACK
                        // sees the new retained message.
                        let mut applied = shared.retained_applied.subscribe();
                        let _ = tokio::time::timeout(
                            shared.publish_timeout(),
                            applied.wait_for(|r| *r >= a.sequence),
                        )
                        .await;
                    }
                }
                Err(e) => failure = Some(format!("JetStream did not store it: {e}")),
            }
        }
        if let Some(t) = p.ticket {
            let earlier = shared.failed.lock().remove(&t);
            shared.settle(t, failure.or(earlier));
        } else if let Some(why) = failure {
            warn!(reason = %why, "cluster: a QoS 0 retained message was not stored");
        }
    }
}

/// Delivers QoS 0 messages from the other nodes.
async fn receive_live(
    mut sub: async_nats::Subscriber,
    local: Arc<LocalRouter>,
    shared: Arc<ClusterShared>,
) {
    while let Some(m) = sub.next().await {
        deliver_here(&local, &shared, &m.payload, message_id(m.headers.as_ref()));
    }
}

/// Delivers QoS 1/2 messages from the stream (every node's, this one's included).
async fn receive_stored(
    mut stream: stream::Stream,
    mut messages: consumer::pull::Ordered,
    local: Arc<LocalRouter>,
    shared: Arc<ClusterShared>,
) {
    let mut watchdog = tokio::time::interval(STALL_CHECK);
    let mut stalled_since: Option<Instant> = None;
    loop {
        let m = tokio::select! {
            m = messages.next() => m,
            _ = watchdog.tick() => {
                // The consumer lives on one NATS server; when that server dies the client
                // may take a minute to notice. If the stream has moved on and this node
                // has not for a while, read from a new consumer after the last position.
                let pos = shared.position_now.load(Ordering::Acquire);
                let behind = match stream.info().await {
                    Ok(info) => info.state.last_sequence > pos,
                    Err(_) => false,
                };
                if !behind {
                    stalled_since = None;
                    continue;
                }
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() < STALL_CHECK * 2 {
                    continue;
                }
                match open_consumer(&stream, &shared, pos).await {
                    Ok(fresh) => {
                        warn!(position = pos, "cluster: the message stream consumer stalled (its NATS server gone?); reading from a new one");
                        messages = fresh;
                        stalled_since = None;
                    }
                    Err(e) => warn!(error = %e, "cluster: cannot recreate the message stream consumer yet"),
                }
                continue;
            }
        };
        let Some(m) = m else { break };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cluster: reading the message stream");
                continue;
            }
        };
        let Ok(seq) = m.info().map(|i| i.stream_sequence) else {
            continue;
        };
        let mut pos = shared.position.lock().await;
        if seq <= *pos {
            // Already delivered (the consumer was recreated after a gap).
            continue;
        }
        stalled_since = None;
        match decode(&m.payload) {
            Some(msg) => {
                shared.stats.from_cluster.fetch_add(1, Ordering::Relaxed);
                let id = message_id(m.headers.as_ref());
                local.route_at(msg, false, Some(seq), &|f| shared.serves_group(f, id));
            }
            None => {
                shared.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                warn!(
                    seq,
                    "cluster: dropped a stream message that does not decode"
                );
            }
        }
        *pos = seq;
        shared.position_now.store(seq, Ordering::Release);
    }
    warn!("cluster: the message stream consumer ended");
}

/// How often the stream receiver checks that it keeps up with the stream.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// The node's consumer of the message stream, from after `after`.
async fn open_consumer(
    stream: &stream::Stream,
    shared: &ClusterShared,
    after: u64,
) -> Result<consumer::pull::Ordered, String> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", shared.names.stored),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            // Short pulls and heartbeats (half of this) let the client notice sooner that
            // the consumer's server is gone.
            max_expires: CONSUMER_PULL_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// Routes one message from the cluster to this node's subscribers (retained messages are
/// stored by the bucket watcher, not here).
fn deliver_here(local: &LocalRouter, shared: &ClusterShared, payload: &[u8], id: u64) {
    match decode(payload) {
        Some(msg) => {
            shared.stats.from_cluster.fetch_add(1, Ordering::Relaxed);
            local.route_at(msg, false, None, &|f| shared.serves_group(f, id));
        }
        None => {
            shared.stats.undecodable.fetch_add(1, Ordering::Relaxed);
            warn!("cluster: dropped a message that does not decode (another broker version on the same prefix?)");
        }
    }
}

/// Mirrors the retained bucket into this node's retained store; reports when the state
/// at start (`initial` values) is loaded.
async fn watch_retained(
    mut watch: kv::Watch,
    local: Arc<LocalRouter>,
    shared: Arc<ClusterShared>,
    initial: u64,
    loaded: tokio::sync::oneshot::Sender<()>,
) {
    let mut loaded = Some(loaded);
    if initial == 0 {
        if let Some(l) = loaded.take() {
            let _ = l.send(());
        }
    }
    while let Some(entry) = watch.next().await {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "cluster: watching the retained bucket");
                continue;
            }
        };
        let message = match entry.operation {
            kv::Operation::Put => decode(&entry.value),
            kv::Operation::Delete | kv::Operation::Purge => subject::topic_from_tokens(&entry.key)
                .ok()
                .map(|t| Message::new(t.as_str(), Bytes::new(), QoS::AtMostOnce, true)),
        };
        match message {
            Some(mut m) => {
                m.retain = true;
                local.apply_retained(&m);
                shared
                    .stats
                    .retained_updates
                    .fetch_add(1, Ordering::Relaxed);
            }
            None => {
                shared.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                warn!(key = %entry.key, "cluster: a retained entry does not decode; ignored");
            }
        }
        shared.retained_applied.send_replace(entry.revision);
        if entry.delta == 0 {
            if let Some(l) = loaded.take() {
                let _ = l.send(());
            }
        }
    }
    warn!("cluster: the retained bucket watch ended");
}
