//! The narrow control interface through which the operator surfaces (admin API, Prometheus
//! metrics, `$SYS` topics, the config watcher) reach a running broker: stats, clients,
//! disconnect, reload, and the few facts they report.
//!
//! Implemented by the server (`crate::broker::BrokerHandle`); the surfaces hold an
//! `Arc<dyn Control>` and never import the wiring module, so dependencies point one way.

use super::{ReloadStatus, Runtime};
use crate::metrics::{Counters, StatsSnapshot};
use crate::model::Message;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A boxed future, for the async methods of a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One connected client as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSummary {
    /// Client identifier.
    pub id: String,
    /// Remote address.
    pub address: String,
    /// Transport it came in on.
    pub transport: &'static str,
    /// User name, if any.
    pub username: Option<String>,
    /// Protocol version: "3.1", "3.1.1" or "5.0".
    pub protocol: &'static str,
    /// Clean session flag of its CONNECT (Clean Start for MQTT 5).
    pub clean_session: bool,
    /// MQTT 5 Session Expiry Interval in force (seconds); absent for 3.1.1 clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_expiry_interval: Option<u32>,
    /// Milliseconds since the Unix epoch.
    pub connected_since: u64,
    /// Subscriptions held.
    pub subscriptions: usize,
    /// Messages queued behind the inflight window.
    pub queue_depth: usize,
    /// Payload bytes queued.
    pub queued_bytes: usize,
    /// QoS 1/2 messages awaiting acknowledgement.
    pub inflight: usize,
}

/// This node's cluster link as the admin API and metrics show it (`None`: a single node).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSummary {
    /// This node's name.
    pub node: String,
    /// The NATS servers.
    pub servers: Vec<String>,
    /// The prefix of the cluster's subjects, stream and buckets.
    pub prefix: String,
    /// Replicas of the stream and buckets.
    pub replicas: usize,
    /// Whether the NATS connection is up.
    pub link_up: bool,
    /// Times the link was lost.
    pub link_losses: u64,
    /// Messages sent to the cluster.
    pub messages_to_cluster: u64,
    /// Messages received from the cluster and routed here.
    pub messages_from_cluster: u64,
    /// QoS 1/2 messages JetStream did not store (not acknowledged to their publishers).
    pub publish_failures: u64,
    /// JetStream acknowledgements received.
    pub jetstream_acks: u64,
    /// Their mean latency, microseconds.
    pub jetstream_ack_us_mean: u64,
    /// Their largest latency, microseconds.
    pub jetstream_ack_us_max: u64,
    /// Sum of their latencies, seconds (Prometheus summary).
    pub jetstream_ack_seconds_sum: f64,
    /// Retained updates applied from the bucket.
    pub retained_updates: u64,
    /// Messages from the cluster that did not decode.
    pub undecodable: u64,
    /// The other nodes this node has heard from, with the age of their last heartbeat
    /// (ms) and whether they count as alive.
    pub nodes: Vec<ClusterNode>,
    /// Client ids whose sessions this node owns.
    pub sessions_owned: usize,
    /// Sessions this node handed to other nodes.
    pub sessions_handed_over: u64,
    /// Wills of stopped nodes' clients this node published.
    pub wills_of_stopped_nodes: u64,
}

/// Another node of the cluster as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterNode {
    /// Its `node_name`.
    pub name: String,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// Whether it counts as alive (heartbeat within 3 s).
    pub alive: bool,
}

/// One bridge as the admin API and metrics show it.
#[derive(Debug, Clone, Serialize)]
pub struct BridgeSummary {
    /// Bridge name.
    pub name: String,
    /// `connected`, `connecting` (between attempts, or first attempt), or `stopped`.
    pub state: &'static str,
    /// The remote address in use, while connected.
    pub remote: Option<String>,
    /// MQTT version spoken to the remote.
    pub protocol: &'static str,
    /// Milliseconds since the Unix epoch of the current connection.
    pub connected_since: Option<u64>,
    /// Messages sent to the remote (QoS 1/2 once it acknowledged them).
    pub messages_out: u64,
    /// Messages received from the remote and published here.
    pub messages_in: u64,
    /// Messages not forwarded, by reason (`disconnected`, `loop`, `refused`, `no_rule`,
    /// `remote_slow`, `too_large`).
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
    /// QoS 1/2 messages waiting for the remote: held by the bridge plus queued in its
    /// session here.
    pub queue_depth: u64,
    /// Connections to the remote lost (or failed) since the bridge started.
    pub reconnects: u64,
    /// Why the last connection attempt or link failed.
    pub last_error: Option<String>,
}

/// One connected client in full, for the dashboard's client detail.
#[derive(Debug, Clone, Serialize)]
pub struct ClientDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub summary: ClientSummary,
    /// Its subscriptions: topic filter and granted QoS, in filter order.
    pub subscription_filters: Vec<SubscriptionView>,
    /// Connections under this client id right now (more than one only during a takeover).
    pub connections: usize,
}

/// One subscription of a session.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SubscriptionView {
    /// Topic filter (a `$share/...` filter as subscribed).
    pub filter: String,
    /// Granted QoS (0, 1 or 2).
    pub qos: u8,
}

/// One message of the dashboard's live tail.
#[derive(Debug, Clone)]
pub struct TailMessage {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload bytes.
    pub payload: bytes::Bytes,
    /// Milliseconds since the Unix epoch when the tail received it.
    pub at: u64,
}

/// Bounds of one live tail: it ends after this many messages or this long, whichever
/// comes first, so that a forgotten browser tab never holds a subscription for ever.
#[derive(Debug, Clone, Copy)]
pub struct TailLimits {
    /// Messages delivered before the tail ends.
    pub max_messages: usize,
    /// Time before the tail ends.
    pub max_duration: Duration,
}

/// What a configuration applied from the dashboard did.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedConfig {
    /// Generation in force afterwards.
    pub generation: u64,
    /// The file written, or `None` when the broker runs without one (the change then lasts
    /// until the broker stops).
    pub saved_to: Option<PathBuf>,
}

/// See the module documentation.
pub trait Control: Send + Sync + 'static {
    /// Counters and registry sizes right now.
    fn stats(&self) -> StatsSnapshot;
    /// The live counters.
    fn counters(&self) -> &Counters;
    /// The runtime in force.
    fn runtime(&self) -> Arc<Runtime>;
    /// Sessions that outlive their connection.
    fn persistent_sessions(&self) -> usize;
    /// Connected clients in connection order: the total and the page asked for.
    fn clients(&self, offset: usize, limit: usize) -> (usize, Vec<ClientSummary>);
    /// Connected clients whose id, user name or address contains `query` (case-insensitive),
    /// in connection order: how many match and the page asked for.
    fn find_clients(&self, query: &str, offset: usize, limit: usize)
        -> (usize, Vec<ClientSummary>);
    /// The connected client `client_id` in full, if connected.
    fn client_detail(&self, client_id: &str) -> Option<ClientDetail>;
    /// Every subscription filter held by a session (online or not) and how many hold it.
    fn subscription_filters(&self) -> Vec<(String, usize)>;
    /// Retained messages whose topic starts with `prefix`, in topic order: the total and the
    /// page asked for.
    fn retained_page(&self, prefix: &str, offset: usize, limit: usize) -> (usize, Vec<Message>);
    /// Starts a read-only subscription to `filter` as the dashboard identity
    /// (`admin.dashboard_user`), subject to its ACL; ends at `limits` or when the receiver
    /// is dropped. The error says why it was refused.
    fn tail(
        &self,
        filter: &str,
        limits: TailLimits,
    ) -> Result<tokio::sync::mpsc::Receiver<TailMessage>, String>;
    /// The last reload attempts, newest first (the start is the oldest).
    fn reload_history(&self) -> Vec<ReloadStatus>;
    /// Checks YAML `text` as `--check-config` does (parse, validate, load every file and
    /// plugin it names), relative paths taken from the config file's directory.
    fn validate_config<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Validates `text`, writes it atomically over the config file and reloads; when
    /// refused, the file keeps its previous content and the error says why.
    fn apply_config<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<AppliedConfig, String>>;
    /// Disconnects every connection of `client_id` (reason: admin); returns how many.
    fn disconnect(&self, client_id: &str) -> usize;
    /// Re-reads `path` and applies it live; the error says why nothing changed.
    fn reload_from_file<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<u64, String>>;
    /// Outcome of the last reload attempt.
    fn last_reload(&self) -> ReloadStatus;
    /// The file the broker was started from, if any.
    fn config_path(&self) -> Option<PathBuf>;
    /// Whether `/readyz` answers 200.
    fn is_ready(&self) -> bool;
    /// Whether a shutdown has begun (`/readyz` says so instead of "starting").
    fn is_draining(&self) -> bool;
    /// When the broker started (monotonic, wall clock).
    fn started(&self) -> (Instant, SystemTime);
    /// Publishes a message as the broker (`$SYS`).
    fn publish(&self, message: Message);
    /// Changes to the generation in force.
    fn reloads(&self) -> watch::Receiver<u64>;
    /// Cancelled when the broker begins to shut down.
    fn shutting_down(&self) -> CancellationToken;
    /// Cancelled at the very end of a shutdown (stops the admin listener and `$SYS`).
    fn stopped(&self) -> CancellationToken;
    /// Records where the admin listener is bound.
    fn set_admin_addr(&self, addr: SocketAddr);
    /// The configured bridges and how they are doing.
    fn bridges(&self) -> Vec<BridgeSummary>;
    /// The cluster link, when this node is part of a cluster.
    fn cluster(&self) -> Option<ClusterSummary>;
}
