//! Load generator for MQTT 3.1.1 and 5.0 brokers (this one, Mosquitto, any other), built to cost far
//! less per message than the broker it measures, so that the broker is the bottleneck.
//!
//! Scenarios (`loadgen <scenario> --help` lists every option), each bounded in time, each
//! printing ONE JSON line of results on stdout:
//!
//! - `fan-in`: N publishers -> 1 wildcard subscriber, QoS 0, delivered msg/s.
//! - `fan-out`: 1 publisher -> M subscribers, QoS 0, deliveries/s.
//! - `latency`: fixed rate at QoS 0, 1 or 2; p50/p99/p99.9 publish-to-receive, and loss and
//!   duplicate accounting from a sequence number in each payload.
//! - `idle`: K idle connections: connect rate and broker memory per connection.
//! - `filters`: one client with F wildcard filters: memory per filter, then throughput.
//! - `retained`: R retained messages, then how long a new `#` subscriber takes to get them.
//! - `connect-rate`: N connections, P at a time, each connect -> CONNACK -> DISCONNECT, over
//!   plain TCP or TLS (`--tls-ca`), with or without a user name and password: connects/s.
//! - `reconnect-storm`: persistent sessions across a broker restart, in two runs of the tool:
//!   `--phase prepare` creates S sessions (clean session off, QoS 1 subscription each) and
//!   queues K QoS 1 messages for each while they are away; the broker is restarted; then
//!   `--phase storm` reconnects all S at once and measures until every client has its CONNACK
//!   with session present and its K messages.
//!
//! With `--broker-pid` every scenario also reports the broker's CPU time (utime + stime from
//! `/proc/<pid>/stat`, so µs of broker CPU per message) and its resident memory (VmRSS
//! sampled every 50 ms, and VmHWM). Only loopback hosts are accepted: this tool floods
//! whatever it points at.
//!
//! Example: `cargo run --release --example loadgen -- fan-in --port 1883 --broker-pid "$(pgrep -n mqtt-broker)"`.
//! `examples/bench-vs-mosquitto.sh` runs every scenario against this broker and Mosquitto.
//!
//! Why it is cheap: payloads and whole PUBLISH packets are encoded once, up front, with the
//! crate's codec and written in batches of many packets per syscall; the receive side only
//! frames packets and reads the few payload bytes it needs instead of decoding topics into
//! owned strings; throughput clients send no keep-alive traffic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Args, Parser, Subcommand};
use mqtt_broker::config::parse_duration;
use mqtt_broker::protocol::codec::{decode_body_with, decode_with, encode_with, peek_header};
use mqtt_broker::protocol::{
    Connect, ConnectReturnCode, Packet, Properties, ProtocolLevel, Publish, QoS, SubAckCode,
    Subscribe,
};
use serde_json::{json, Value};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

/// Waits for every client task: what the successful ones returned, how many failed and the
/// first failure's text (a panicked task is an error of the whole run).
async fn join_counting<T: 'static>(
    tasks: &mut JoinSet<Res<T>>,
) -> Res<(Vec<T>, usize, Option<String>)> {
    let (mut done, mut errors, mut first_error) = (Vec::with_capacity(tasks.len()), 0, None);
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(v) => done.push(v),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Ok((done, errors, first_error))
}

fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(msg.into().into())
}

/// How long any single protocol step (CONNACK, SUBACK, PINGRESP) may take before the run
/// is declared broken; far above anything a healthy broker on loopback needs.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// PUBLISH packets per write in the throughput scenarios: large enough that the syscall
/// cost disappears, small enough to stay well inside the flow-control window.
const BATCH: usize = 50;
/// When a publisher has not seen its window move for this long, the messages in it are
/// written off as lost (a broker dropped them), so the run continues instead of stalling.
const STALL_AFTER: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "MQTT 3.1.1 / 5.0 load generator (loopback only); prints one JSON line per run"
)]
struct Cli {
    /// Async worker threads of the load generator itself. 1 runs everything on one thread
    /// (cheapest, leaves the other cores to the broker).
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    /// MQTT version every client speaks: 311 or 5.
    #[arg(long, default_value = "311", global = true, value_parser = ["311", "5"])]
    mqtt_version: String,
    /// MQTT 5 only: user properties (16-byte name, 16-byte value) on every PUBLISH sent.
    #[arg(long, default_value_t = 0, global = true)]
    user_properties: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

/// The protocol every client of this run speaks (set once from the command line).
static LEVEL: std::sync::OnceLock<ProtocolLevel> = std::sync::OnceLock::new();
/// The properties every PUBLISH of this run carries (MQTT 5 user properties), if any.
static PUBLISH_PROPS: std::sync::OnceLock<Option<Arc<Properties>>> = std::sync::OnceLock::new();

fn level() -> ProtocolLevel {
    *LEVEL.get().unwrap_or(&ProtocolLevel::V311)
}

fn encode(p: &Packet, out: &mut BytesMut) {
    encode_with(p, level(), out)
}

fn decode(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Packet>, mqtt_broker::protocol::ProtocolError> {
    decode_with(buf, max, level())
}

fn publish_props() -> Option<Arc<Properties>> {
    PUBLISH_PROPS.get().cloned().flatten()
}

#[derive(Args, Debug, Clone)]
struct Target {
    /// Broker host. Must be loopback: 127.0.0.0/8, ::1 or a name resolving only to them.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Port the subscribers of fan-in, fan-out and latency connect to instead of `port`:
    /// another node of a cluster, so that every message crosses nodes.
    #[arg(long)]
    sub_port: Option<u16>,
    /// PID of the broker process: adds its CPU time and memory to the results.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Free text copied into the JSON output (e.g. "mqtt-broker" or "mosquitto").
    #[arg(long, default_value = "")]
    label: String,
    /// Hard limit on the whole run; past it the run stops with an error.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    timeout: Duration,
}

#[derive(Args, Debug, Clone)]
struct Throughput {
    /// Measured time.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured time before it, for connections and caches to settle.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Payload size in bytes (at least 2: the publisher number).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// A publisher waits when it is more than this many messages ahead of what its
    /// (slowest) subscriber has received from it.
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// Keep-alive announced in CONNECT, seconds. 0 (no keep-alive traffic) suits runs far
    /// shorter than any timeout; rumqttd refuses 0, so comparisons with it need e.g. 60
    /// (longer than the run: the subscribers never send a packet).
    #[arg(long, default_value_t = 0)]
    keep_alive: u16,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N publishers -> one wildcard subscriber, QoS 0: delivered messages per second.
    FanIn {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: Throughput,
        /// Number of publishers.
        #[arg(long, default_value_t = 8)]
        publishers: usize,
    },
    /// One publisher -> M subscribers of the same topic, QoS 0: deliveries per second.
    FanOut {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: Throughput,
        /// Number of subscribers.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
    },
    /// Fixed publish rate; publish-to-receive latency percentiles and loss/duplicates.
    Latency {
        #[command(flatten)]
        target: Target,
        /// Messages per second.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// QoS of the PUBLISH and of the subscription: 0, 1 or 2.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        /// QoS 1/2: unacknowledged PUBLISH packets the publisher allows itself, as MQTT
        /// client libraries do. Mosquitto acknowledges but silently drops inbound QoS 2
        /// beyond its max_inflight_messages, so this must stay below that.
        #[arg(long, default_value_t = 16)]
        max_inflight: usize,
        /// Publishing time.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        duration: Duration,
        /// Messages of this first stretch count for loss but not for the percentiles.
        #[arg(long, value_parser = parse_duration, default_value = "500ms")]
        warmup: Duration,
        /// After the last PUBLISH, how long to wait for stragglers and acknowledgements.
        #[arg(long, value_parser = parse_duration, default_value = "3s")]
        drain: Duration,
        /// Payload size in bytes (at least 16: sequence number and timestamp).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// The subscriber keeps a persistent session (clean session off), so that a broker
        /// with persistence stores what it queues and has in flight for it.
        #[arg(long)]
        persistent: bool,
    },
    /// K idle connections: connect rate and broker memory per connection.
    Idle {
        #[command(flatten)]
        target: Target,
        /// Number of connections.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connection attempts in progress at once.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
        /// Keep-alive announced in CONNECT, seconds.
        #[arg(long, default_value_t = 60)]
        keep_alive: u16,
        /// How long to hold the connections (idle) before measuring memory; less than the
        /// keep-alive, so no PINGREQ is needed.
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        hold: Duration,
    },
    /// One subscriber with F filters mixing `+` and `#`: memory per filter, then QoS 0
    /// throughput to topics that each match one of them.
    Filters {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: Throughput,
        /// Number of filters: even i is `dev/{i}/+/temp`, odd i is `site/{i}/#`.
        #[arg(long, default_value_t = 100_000)]
        filters: usize,
        /// Filters per SUBSCRIBE packet.
        #[arg(long, default_value_t = 1000)]
        per_subscribe: usize,
        /// Number of publishers in the throughput phase.
        #[arg(long, default_value_t = 4)]
        publishers: usize,
    },
    /// R retained messages on distinct topics, then the time a new `#` subscriber takes to
    /// receive all of them.
    Retained {
        #[command(flatten)]
        target: Target,
        /// Number of retained messages (distinct topics).
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Leave the retained messages in the broker instead of deleting them at the end.
        #[arg(long)]
        keep: bool,
    },
    /// N connections, P at a time, each TCP (and TLS) connect -> CONNECT -> CONNACK ->
    /// DISCONNECT -> closed by the broker: connects per second and connect latency.
    ConnectRate {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        dial: Dial,
        /// Connections in total.
        #[arg(long, default_value_t = 5_000)]
        connections: usize,
        /// Connections in progress at once.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
    },
    /// Persistent sessions across a broker restart: `--phase prepare` creates the sessions
    /// and queues their messages, the broker is restarted (by the caller), `--phase storm`
    /// reconnects them all at once and measures until each has its session and messages.
    ReconnectStorm {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        dial: Dial,
        /// `prepare` (before the restart) or `storm` (after it).
        #[arg(long, value_enum)]
        phase: StormPhase,
        /// Number of persistent sessions (client ids `{prefix}-{i}`, topics `{prefix}/{i}`).
        #[arg(long, default_value_t = 15_000)]
        clients: usize,
        /// QoS 1 messages queued for each session while it is away.
        #[arg(long, default_value_t = 2)]
        messages: usize,
        /// Storm: clients reconnecting at once (each holds its slot until it has its
        /// messages; it then stays connected until the end).
        #[arg(long, default_value_t = 1_000)]
        parallel: usize,
        /// Prepare: session set-ups (connect, subscribe, disconnect) in progress at once.
        #[arg(long, default_value_t = 64)]
        prepare_parallel: usize,
        /// Prepare: QoS 1 PUBLISH packets awaiting PUBACK at once.
        #[arg(long, default_value_t = 500)]
        publish_window: usize,
        /// Payload size in bytes (at least 8: client number and message number).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Prefix of client ids and topics; both phases must use the same one.
        #[arg(long, default_value = "lgstorm")]
        prefix: String,
        /// Storm: how long a client whose session is present waits for its messages after
        /// CONNACK before they are counted missing.
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        message_wait: Duration,
    },
}

/// The two halves of `reconnect-storm`, run before and after the broker restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StormPhase {
    /// Create the sessions, then queue K messages for each while it is disconnected.
    Prepare,
    /// Reconnect every session at once; measure until all have their messages.
    Storm,
}

impl Scenario {
    fn target(&self) -> &Target {
        match self {
            Scenario::FanIn { target, .. }
            | Scenario::FanOut { target, .. }
            | Scenario::Latency { target, .. }
            | Scenario::Idle { target, .. }
            | Scenario::Filters { target, .. }
            | Scenario::Retained { target, .. }
            | Scenario::ConnectRate { target, .. }
            | Scenario::ReconnectStorm { target, .. } => target,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Scenario::FanIn { .. } => "fan-in",
            Scenario::FanOut { .. } => "fan-out",
            Scenario::Latency { .. } => "latency",
            Scenario::Idle { .. } => "idle",
            Scenario::Filters { .. } => "filters",
            Scenario::Retained { .. } => "retained",
            Scenario::ConnectRate { .. } => "connect-rate",
            Scenario::ReconnectStorm { .. } => "reconnect-storm",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let v5 = cli.mqtt_version == "5";
    let _ = LEVEL.set(if v5 {
        ProtocolLevel::V5
    } else {
        ProtocolLevel::V311
    });
    let props = (v5 && cli.user_properties > 0).then(|| {
        Arc::new(Properties {
            user_properties: (0..cli.user_properties)
                .map(|i| {
                    (
                        format!("name-{i:011}").into(),
                        format!("value-{i:010}").into(),
                    )
                })
                .collect(),
            ..Default::default()
        })
    });
    let _ = PUBLISH_PROPS.set(props);
    let target = cli.scenario.target().clone();
    let name = cli.scenario.name();
    let mut builder = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cli.threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match tokio::time::timeout(target.timeout, run(cli.scenario)).await {
            Ok(r) => r,
            Err(_) => fail(format!("run exceeded --timeout {:?}", target.timeout)),
        }
    });
    // Tasks still blocked on a socket must not keep the process alive.
    runtime.shutdown_background();
    let (mut line, code) = match outcome {
        Ok(v) => (v, ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("loadgen {name}: {e}");
            (json!({ "error": e.to_string() }), ExitCode::FAILURE)
        }
    };
    if let Value::Object(map) = &mut line {
        map.insert("scenario".into(), json!(name));
        map.insert("label".into(), json!(target.label));
        map.insert("port".into(), json!(target.port));
        map.insert("mqtt_version".into(), json!(level().as_str()));
        map.insert(
            "user_properties".into(),
            json!(publish_props().map_or(0, |p| p.user_properties.len())),
        );
    }
    println!("{line}");
    code
}

async fn run(scenario: Scenario) -> Res<Value> {
    let addr = loopback_addr(&scenario.target().host, scenario.target().port)?;
    let sub_addr = match scenario.target().sub_port {
        Some(p) => loopback_addr(&scenario.target().host, p)?,
        None => addr,
    };
    let pid = scenario.target().broker_pid;
    match scenario {
        Scenario::FanIn {
            load, publishers, ..
        } => fan_in((addr, sub_addr), pid, load, publishers).await,
        Scenario::FanOut {
            load, subscribers, ..
        } => fan_out((addr, sub_addr), pid, load, subscribers).await,
        Scenario::Latency {
            rate,
            qos,
            max_inflight,
            duration,
            warmup,
            drain,
            payload,
            persistent,
            ..
        } => {
            let qos = QoS::from_u8(qos).ok_or("qos must be 0, 1 or 2")?;
            latency(
                (addr, sub_addr),
                pid,
                rate,
                qos,
                max_inflight,
                duration,
                warmup,
                drain,
                payload,
                persistent,
            )
            .await
        }
        Scenario::Idle {
            connections,
            parallel,
            keep_alive,
            hold,
            ..
        } => idle(addr, pid, connections, parallel, keep_alive, hold).await,
        Scenario::Filters {
            load,
            filters,
            per_subscribe,
            publishers,
            ..
        } => filters_scenario(addr, pid, load, filters, per_subscribe, publishers).await,
        Scenario::Retained {
            messages,
            payload,
            keep,
            ..
        } => retained(addr, pid, messages, payload, keep).await,
        Scenario::ConnectRate {
            dial,
            connections,
            parallel,
            ..
        } => connect_rate(Dialer::new(addr, &dial)?, pid, connections, parallel).await,
        Scenario::ReconnectStorm {
            dial,
            phase,
            clients,
            messages,
            parallel,
            prepare_parallel,
            publish_window,
            payload,
            prefix,
            message_wait,
            ..
        } => {
            let storm = Storm {
                dialer: Dialer::new(addr, &dial)?,
                clients,
                messages,
                payload,
                prefix,
            };
            match phase {
                StormPhase::Prepare => {
                    storm_prepare(storm, pid, prepare_parallel, publish_window).await
                }
                StormPhase::Storm => storm_reconnect(storm, pid, parallel, message_wait).await,
            }
        }
    }
}

/// Resolves the host and refuses anything that is not loopback.
fn loopback_addr(host: &str, port: u16) -> Res<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    let Some(first) = addrs.first().copied() else {
        return fail(format!("{host} resolves to no address"));
    };
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return fail(format!(
            "refusing to load {host} ({}): only loopback addresses (127.0.0.0/8, ::1) are allowed",
            bad.ip()
        ));
    }
    Ok(first)
}

/// A short id that keeps client ids and topics of concurrent runs apart.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
        .unwrap_or(0);
    format!("{:06x}", (nanos ^ std::process::id()) & 0xff_ffff)
}

// ---------------------------------------------------------------------------------------
// The broker process: CPU time and memory from /proc
// ---------------------------------------------------------------------------------------

/// Watches the broker process; every method returns `None` without a pid (or once the
/// process is gone), so the scenarios work against any broker.
struct Probe {
    pid: Option<u32>,
    peak_rss_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    /// Starts sampling VmRSS every 50 ms on a plain thread, so a busy async runtime does
    /// not delay the samples.
    fn start(pid: Option<u32>) -> Probe {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = pid.map(|pid| {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kb) = status_kb(pid, "VmRSS:") {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        });
        Probe {
            pid,
            peak_rss_kb: peak,
            stop,
            sampler,
        }
    }

    /// Resident memory now, in KiB.
    fn rss_kb(&self) -> Option<u64> {
        let kb = status_kb(self.pid?, "VmRSS:")?;
        self.peak_rss_kb.fetch_max(kb, Ordering::Relaxed);
        Some(kb)
    }

    /// CPU time (user + system) the broker has used so far, in seconds.
    fn cpu_s(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        // The command name (field 2) may contain spaces and parentheses: fields are
        // counted from after the last ')'. utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / clock_ticks())
    }

    /// A point of the run: time, broker CPU and the load generator's own CPU.
    fn mark(&self) -> Mark {
        Mark {
            at: Instant::now(),
            cpu: self.cpu_s(),
            own: own_cpu_s(),
        }
    }

    /// Stops sampling; the broker's memory figures for the JSON output.
    fn finish(mut self, start_rss_kb: Option<u64>) -> Value {
        let end = self.rss_kb();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
        let Some(pid) = self.pid else {
            return Value::Null;
        };
        json!({
            "pid": pid,
            "rss_start_kb": start_rss_kb,
            "rss_end_kb": end,
            "rss_peak_kb": self.peak_rss_kb.load(Ordering::Relaxed),
            "vm_hwm_kb": status_kb(pid, "VmHWM:"),
            "threads": status_kb(pid, "Threads:"),
            "cpu_total_s": self.cpu_s(),
        })
    }
}

/// One numeric field of `/proc/<pid>/status` (the `kB` unit, if any, is dropped).
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a process-wide constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time (user + system) this process has used, in seconds: shows that the load
/// generator costs far less per message than the broker it measures.
fn own_cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    cpu: Option<f64>,
    own: f64,
}

impl Mark {
    /// The load generator's CPU seconds between two marks.
    fn own_since(&self, earlier: &Mark) -> f64 {
        self.own - earlier.own
    }

    /// Broker CPU seconds between two marks.
    fn cpu_since(&self, earlier: &Mark) -> Option<f64> {
        Some(self.cpu? - earlier.cpu?)
    }

    fn secs_since(&self, earlier: &Mark) -> f64 {
        self.at.duration_since(earlier.at).as_secs_f64()
    }
}

/// Broker CPU µs per unit of work (message, delivery, connection), rounded for reading.
fn cpu_us_per(cpu_s: Option<f64>, units: u64) -> Option<f64> {
    let cpu = cpu_s?;
    (units > 0).then(|| round2(cpu * 1e6 / units as f64))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Raises the soft open-file limit to the hard limit (10,000 connections need 10,000 fds).
fn raise_nofile() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return None;
        }
    }
    Some(lim.rlim_cur)
}

// ---------------------------------------------------------------------------------------
// A raw MQTT connection
// ---------------------------------------------------------------------------------------

struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    /// Read granularity: small for control traffic (10,000 idle connections must not
    /// hold big buffers), large for subscribers that receive floods.
    chunk: usize,
}

impl Conn {
    /// TCP connect, CONNECT (MQTT 3.1.1, clean session), wait for an accepting CONNACK.
    async fn open(addr: SocketAddr, client_id: &str, keep_alive: u16) -> Res<Conn> {
        Conn::open_session(addr, client_id, keep_alive, true).await
    }

    /// [`Conn::open`] with the clean-session flag given.
    async fn open_session(
        addr: SocketAddr,
        client_id: &str,
        keep_alive: u16,
        clean_session: bool,
    ) -> Res<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut c = Conn {
            rd,
            wr,
            buf: BytesMut::new(),
            chunk: 4096,
        };
        c.send(&Packet::Connect(Box::new(Connect {
            bridge: false,
            properties: None,
            protocol: level(),
            clean_session,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        })))
        .await?;
        match c.next_packet().await? {
            Packet::ConnAck(a) if a.code == ConnectReturnCode::Accepted => Ok(c),
            Packet::ConnAck(a) => fail(format!("{client_id}: CONNACK refused: {:?}", a.code)),
            other => fail(format!(
                "{client_id}: expected CONNACK, got {}",
                other.name()
            )),
        }
    }

    async fn send(&mut self, p: &Packet) -> Res<()> {
        let mut out = BytesMut::new();
        encode(p, &mut out);
        self.wr.write_all(&out).await?;
        Ok(())
    }

    /// Reads more bytes; an error when the broker closed the connection.
    async fn read_more(&mut self) -> Res<usize> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            self.buf.reserve(self.chunk);
        }
        match self.rd.read_buf(&mut self.buf).await? {
            0 => fail("connection closed by the broker"),
            n => Ok(n),
        }
    }

    /// Like `read_more`, but returns `Ok(0)` when nothing arrived within `wait`.
    async fn read_within(&mut self, wait: Duration) -> Res<usize> {
        match tokio::time::timeout(wait, self.read_more()).await {
            Ok(r) => r,
            Err(_) => Ok(0),
        }
    }

    /// The next packet, fully decoded (for control packets, not the hot path).
    async fn next_packet(&mut self) -> Res<Packet> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(p) = decode(&mut self.buf, usize::MAX)? {
                return Ok(p);
            }
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(r) => r?,
                Err(_) => return fail("no answer from the broker within 30 s"),
            };
        }
    }

    /// SUBSCRIBE and wait for its SUBACK; every filter must be granted.
    async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Res<()> {
        self.send(&Packet::Subscribe(Subscribe {
            options: Vec::new(),
            properties: None,
            pid: 1,
            filters: filters.iter().map(|(f, q)| (f.to_string(), *q)).collect(),
        }))
        .await?;
        match self.next_packet().await? {
            Packet::SubAck(s) if s.codes.iter().all(|c| *c != SubAckCode::Failure) => Ok(()),
            Packet::SubAck(_) => fail("SUBSCRIBE refused (SUBACK 0x80)"),
            other => fail(format!("expected SUBACK, got {}", other.name())),
        }
    }

    /// Sends PINGREQ and waits for PINGRESP, skipping anything else. A broker handles the
    /// packets of one connection in order, so this proves all earlier ones were processed.
    async fn ping(&mut self) -> Res<()> {
        self.send(&Packet::PingReq).await?;
        loop {
            if let Packet::PingResp = self.next_packet().await? {
                return Ok(());
            }
        }
    }

    /// Sends DISCONNECT, ignoring errors (the run is over either way).
    async fn close(mut self) {
        let _ = self.send(&Packet::Disconnect).await;
        let _ = self.wr.shutdown().await;
    }
}

/// One packet framed in a receive buffer, without copying or validating its contents
/// beyond what is needed to find its parts.
enum Frame<'a> {
    Publish {
        first: u8,
        topic: &'a [u8],
        pid: Option<u16>,
        payload: &'a [u8],
    },
    Other {
        first: u8,
        body: &'a [u8],
    },
}

impl Frame<'_> {
    /// Full decode of a non-PUBLISH packet (acknowledgements: rare next to PUBLISH).
    fn decode_other(&self) -> Res<Option<Packet>> {
        match self {
            Frame::Other { first, body } => Ok(Some(decode_body_with(
                *first,
                Bytes::copy_from_slice(body),
                level(),
            )?)),
            Frame::Publish { .. } => Ok(None),
        }
    }
}

fn be16(b: &[u8], at: usize) -> Res<u16> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => fail("truncated packet"),
    }
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(s))
}

/// The next complete packet at the start of `buf` and its length, or `None` if incomplete.
fn next_frame(buf: &[u8]) -> Res<Option<(Frame<'_>, usize)>> {
    let Some(h) = peek_header(buf)? else {
        return Ok(None);
    };
    let total = h.total_len();
    let Some(body) = buf.get(h.header_len..total) else {
        return Ok(None);
    };
    let first = h.first_byte;
    if first >> 4 != 3 {
        return Ok(Some((Frame::Other { first, body }, total)));
    }
    let topic_len = be16(body, 0)? as usize;
    let mut at = 2 + topic_len;
    let Some(topic) = body.get(2..at) else {
        return fail("PUBLISH topic longer than the packet");
    };
    let pid = if (first >> 1) & 3 != 0 {
        let pid = be16(body, at)?;
        at += 2;
        Some(pid)
    } else {
        None
    };
    if level().is_v5() {
        // Skip the property list: a variable byte integer length, then the properties.
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let Some(&b) = body.get(at) else {
                return fail("truncated PUBLISH properties");
            };
            at += 1;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 || shift > 21 {
                break;
            }
        }
        at += len;
    }
    let payload = body.get(at..).unwrap_or_default();
    Ok(Some((
        Frame::Publish {
            first,
            topic,
            pid,
            payload,
        },
        total,
    )))
}

/// Hands every complete packet in `buf` to `f`, then removes them from `buf`.
fn for_each_frame(buf: &mut BytesMut, mut f: impl FnMut(Frame<'_>) -> Res<()>) -> Res<()> {
    let mut used = 0;
    while let Some((frame, len)) = next_frame(&buf[used..])? {
        f(frame)?;
        used += len;
    }
    buf.advance(used);
    Ok(())
}

fn publish_bytes(topic: &str, payload: Bytes, qos: QoS, pid: Option<u16>, retain: bool) -> Bytes {
    let mut out = BytesMut::new();
    encode(
        &Packet::Publish(Publish {
            properties: publish_props(),
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            pid,
            payload,
        }),
        &mut out,
    );
    out.freeze()
}

/// A throughput payload: the publisher number in the first two bytes, then filler.
fn tagged_payload(publisher: u16, size: usize) -> Bytes {
    let mut p = BytesMut::with_capacity(size.max(2));
    p.put_u16(publisher);
    p.resize(size.max(2), b'x');
    p.freeze()
}

// ---------------------------------------------------------------------------------------
// Throughput machinery shared by fan-in, fan-out and filters
// ---------------------------------------------------------------------------------------

/// What a publisher writes: pre-encoded batches of `BATCH` PUBLISH packets, cycled.
struct PublisherPlan {
    conn: Conn,
    batches: Vec<Bytes>,
    /// Received-message counters this publisher must stay within `window` of (the minimum
    /// counts: fan-out waits for its slowest subscriber).
    watch: Vec<Arc<AtomicU64>>,
}

/// State shared by the publishers and subscribers of one throughput run.
struct Shared {
    /// Publishers stop at the end of the measured window...
    stop_publishing: AtomicBool,
    /// ...subscribers once what was in flight has arrived.
    stop: AtomicBool,
    /// Subscribers signal it after each read, so a publisher waiting on its window wakes.
    progress: Notify,
    published: AtomicU64,
    delivered: AtomicU64,
    written_off: AtomicU64,
    stalls: AtomicU64,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            stop_publishing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            progress: Notify::new(),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            written_off: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
        })
    }
}

async fn run_publisher(plan: PublisherPlan, window: u64, shared: Arc<Shared>) -> Res<()> {
    let PublisherPlan {
        mut conn,
        batches,
        watch,
    } = plan;
    let per_batch = BATCH as u64;
    let mut sent = 0u64;
    let mut written_off = 0u64;
    let mut next = 0usize;
    let received = || watch.iter().map(|c| c.load(Ordering::Acquire)).min();
    let mut last_progress = (received().unwrap_or(0), Instant::now());
    while !shared.stop_publishing.load(Ordering::Relaxed) {
        let got = received().unwrap_or(sent);
        if got != last_progress.0 {
            last_progress = (got, Instant::now());
        }
        let in_flight = sent.saturating_sub(got + written_off);
        if in_flight + per_batch > window {
            if last_progress.1.elapsed() > STALL_AFTER {
                // The broker dropped messages (queue full): give the window back.
                written_off += in_flight;
                shared.written_off.fetch_add(in_flight, Ordering::Relaxed);
                shared.stalls.fetch_add(1, Ordering::Relaxed);
                last_progress.1 = Instant::now();
                continue;
            }
            let notified = shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if received().unwrap_or(sent) == got {
                // The timeout also bounds a missed wake-up and lets `stop` be seen.
                let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
            }
            continue;
        }
        let batch = &batches[next % batches.len()];
        next += 1;
        match tokio::time::timeout(STEP_TIMEOUT, conn.wr.write_all(batch)).await {
            Ok(r) => r?,
            Err(_) => return fail("publisher blocked for 30 s: the broker stopped reading"),
        }
        sent += per_batch;
        shared.published.fetch_add(per_batch, Ordering::Relaxed);
    }
    conn.close().await;
    Ok(())
}

/// Counts PUBLISH packets per publisher (payload bytes 0..2) until `stop`.
async fn run_counter(
    mut conn: Conn,
    counters: Vec<Arc<AtomicU64>>,
    shared: Arc<Shared>,
) -> Res<()> {
    conn.chunk = 256 * 1024;
    let mut local = vec![0u64; counters.len()];
    while !shared.stop.load(Ordering::Relaxed) {
        if conn.read_within(Duration::from_millis(100)).await? == 0 {
            continue;
        }
        for_each_frame(&mut conn.buf, |f| {
            if let Frame::Publish { payload, .. } = f {
                let id = be16(payload, 0)? as usize;
                match local.get_mut(id) {
                    Some(n) => *n += 1,
                    None => return fail("PUBLISH from an unknown publisher"),
                }
            }
            Ok(())
        })?;
        let mut total = 0;
        for (n, c) in local.iter_mut().zip(&counters) {
            if *n > 0 {
                c.fetch_add(*n, Ordering::Release);
                total += *n;
                *n = 0;
            }
        }
        shared.delivered.fetch_add(total, Ordering::Relaxed);
        shared.progress.notify_waiters();
    }
    conn.close().await;
    Ok(())
}

/// Runs publishers against already-subscribed counters for warmup + duration, then lets
/// what is in flight arrive (up to 2 s). Returns the figures of the measured window.
async fn measure_throughput(
    probe: &Probe,
    load: &Throughput,
    publishers: Vec<PublisherPlan>,
    subscribers: Vec<(Conn, Vec<Arc<AtomicU64>>)>,
    shared: Arc<Shared>,
) -> Res<Value> {
    let mut tasks = JoinSet::new();
    for (conn, counters) in subscribers {
        tasks.spawn(run_counter(conn, counters, shared.clone()));
    }
    for plan in publishers {
        tasks.spawn(run_publisher(plan, load.window, shared.clone()));
    }
    let watch = async {
        tokio::time::sleep(load.warmup).await;
        let (d0, p0, m0) = (
            shared.delivered.load(Ordering::Relaxed),
            shared.published.load(Ordering::Relaxed),
            probe.mark(),
        );
        tokio::time::sleep(load.duration).await;
        let (d1, p1, m1) = (
            shared.delivered.load(Ordering::Relaxed),
            shared.published.load(Ordering::Relaxed),
            probe.mark(),
        );
        (
            d1 - d0,
            p1 - p0,
            m1.secs_since(&m0),
            m1.cpu_since(&m0),
            m1.own_since(&m0),
        )
    };
    // A task that fails (broker closed a connection) ends the run at once.
    let (delivered, published, secs, cpu, own) = tokio::select! {
        w = watch => w,
        Some(r) = tasks.join_next() => {
            r??;
            return fail("a client finished early");
        }
    };
    shared.stop_publishing.store(true, Ordering::Relaxed);
    // Publishers stop first; then give the last messages time to arrive.
    let drain_until = Instant::now() + Duration::from_secs(2);
    while shared.delivered.load(Ordering::Relaxed) + shared.written_off.load(Ordering::Relaxed)
        < shared.published.load(Ordering::Relaxed)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let total_published = shared.published.load(Ordering::Relaxed);
    let total_delivered = shared.delivered.load(Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(json!({
        "duration_s": round2(secs),
        "delivered_per_s": (delivered as f64 / secs).round(),
        "published_per_s": (published as f64 / secs).round(),
        "delivered": delivered,
        "published_total": total_published,
        "delivered_total": total_delivered,
        "stalls": shared.stalls.load(Ordering::Relaxed),
        "broker_cpu_s": cpu.map(round2),
        "broker_cpu_us_per_delivery": cpu_us_per(cpu, delivered),
        "broker_cpu_util": cpu.map(|c| round2(c / secs)),
        "loadgen_cpu_us_per_delivery": cpu_us_per(Some(own), delivered),
        "loadgen_cpu_util": round2(own / secs),
    }))
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Value::Object(a), Value::Object(b)) = (&mut a, b) {
        a.extend(b);
    }
    a
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// Publishers' and subscribers' addresses (the same node, or two nodes of a cluster).
type Addrs = (SocketAddr, SocketAddr);

async fn fan_in(
    (addr, sub_addr): Addrs,
    pid: Option<u32>,
    load: Throughput,
    n: usize,
) -> Res<Value> {
    if n == 0 || n > u16::MAX as usize {
        return fail("--publishers must be 1..65535");
    }
    let probe = Probe::start(pid);
    let rss0 = probe.rss_kb();
    let id = run_id();
    let mut sub = Conn::open(sub_addr, &format!("lg{id}-in-sub"), load.keep_alive).await?;
    sub.subscribe(&[(&format!("bench/{id}/in/+"), QoS::AtMostOnce)])
        .await?;
    let counters: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut publishers = Vec::with_capacity(n);
    for (i, counter) in counters.iter().enumerate() {
        let conn = Conn::open(addr, &format!("lg{id}-in-pub{i}"), load.keep_alive).await?;
        let packet = publish_bytes(
            &format!("bench/{id}/in/{i}"),
            tagged_payload(i as u16, load.payload),
            QoS::AtMostOnce,
            None,
            false,
        );
        publishers.push(PublisherPlan {
            conn,
            batches: vec![packet.repeat(BATCH).into()],
            watch: vec![counter.clone()],
        });
    }
    let shared = Shared::new();
    let r = measure_throughput(&probe, &load, publishers, vec![(sub, counters)], shared).await?;
    Ok(merge(
        json!({
            "publishers": n,
            "payload": load.payload,
            "window": load.window,
            "msgs_per_s": r["delivered_per_s"],
            "broker_cpu_us_per_msg": r["broker_cpu_us_per_delivery"],
            "broker_process": probe.finish(rss0),
        }),
        r,
    ))
}

async fn fan_out(
    (addr, sub_addr): Addrs,
    pid: Option<u32>,
    load: Throughput,
    m: usize,
) -> Res<Value> {
    if m == 0 {
        return fail("--subscribers must be at least 1");
    }
    let probe = Probe::start(pid);
    let rss0 = probe.rss_kb();
    let id = run_id();
    let topic = format!("bench/{id}/out");
    let mut subscribers = Vec::with_capacity(m);
    let mut watch = Vec::with_capacity(m);
    for i in 0..m {
        let mut conn = Conn::open(sub_addr, &format!("lg{id}-out-sub{i}"), load.keep_alive).await?;
        conn.subscribe(&[(&topic, QoS::AtMostOnce)]).await?;
        let counter = Arc::new(AtomicU64::new(0));
        watch.push(counter.clone());
        subscribers.push((conn, vec![counter]));
    }
    let conn = Conn::open(addr, &format!("lg{id}-out-pub"), load.keep_alive).await?;
    let packet = publish_bytes(
        &topic,
        tagged_payload(0, load.payload),
        QoS::AtMostOnce,
        None,
        false,
    );
    let publisher = PublisherPlan {
        conn,
        batches: vec![packet.repeat(BATCH).into()],
        watch,
    };
    let shared = Shared::new();
    let r = measure_throughput(&probe, &load, vec![publisher], subscribers, shared).await?;
    Ok(merge(
        json!({
            "subscribers": m,
            "payload": load.payload,
            "window": load.window,
            "deliveries_per_s": r["delivered_per_s"],
            "broker_process": probe.finish(rss0),
        }),
        r,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn latency(
    (addr, sub_addr): Addrs,
    pid: Option<u32>,
    rate: u64,
    qos: QoS,
    max_inflight: usize,
    duration: Duration,
    warmup: Duration,
    drain: Duration,
    payload: usize,
    persistent: bool,
) -> Res<Value> {
    if max_inflight == 0 || max_inflight > 65_000 {
        return fail("--max-inflight must be 1..65000");
    }
    if payload < 16 {
        return fail("--payload must be at least 16 bytes (sequence number and timestamp)");
    }
    if rate == 0 || rate > 1_000_000 {
        return fail("--rate must be 1..1000000");
    }
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let warmup_msgs = (rate as f64 * warmup.as_secs_f64()).round() as u64;
    let probe = Probe::start(pid);
    let rss0 = probe.rss_kb();
    let id = run_id();
    let topic = format!("bench/{id}/lat");
    let mut sub = Conn::open_session(sub_addr, &format!("lg{id}-lat-sub"), 0, !persistent).await?;
    sub.chunk = 64 * 1024;
    sub.subscribe(&[(&topic, qos)]).await?;
    let publisher = Conn::open(addr, &format!("lg{id}-lat-pub"), 0).await?;
    let clock = Instant::now();
    let done_publishing = Arc::new(Notify::new());

    let pub_task = tokio::spawn(latency_publisher(
        publisher,
        topic,
        qos,
        rate,
        max_inflight,
        total,
        payload,
        clock,
        drain,
        done_publishing.clone(),
    ));
    let m0 = probe.mark();
    let sub_task = tokio::spawn(latency_subscriber(
        sub,
        total,
        warmup_msgs,
        clock,
        drain,
        done_publishing,
    ));
    let PublisherReport {
        sent,
        acked,
        secs: send_secs,
        held_back,
    } = pub_task.await??;
    let rx = sub_task.await??;
    let m1 = probe.mark();
    let cpu = m1.cpu_since(&m0);

    let mut lat = rx.latencies_ns;
    lat.sort_unstable();
    let pct = |q: f64| -> Option<f64> {
        if lat.is_empty() {
            return None;
        }
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let rank = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        Some(round2(lat[rank - 1] as f64 / 1000.0))
    };
    let mean = if lat.is_empty() {
        None
    } else {
        Some(round2(
            lat.iter().map(|&l| l as f64).sum::<f64>() / lat.len() as f64 / 1000.0,
        ))
    };
    let lost = sent.saturating_sub(rx.unique);
    Ok(json!({
        "qos": qos as u8,
        "rate": rate,
        "payload": payload,
        "sent": sent,
        "achieved_rate": (sent as f64 / send_secs).round(),
        "max_inflight": max_inflight,
        "held_back_ticks": held_back,
        "acknowledged": if qos == QoS::AtMostOnce { Value::Null } else { json!(acked) },
        "received": rx.received,
        "received_unique": rx.unique,
        "lost": lost,
        "duplicates": rx.duplicates,
        "out_of_order": rx.out_of_order,
        "all_accounted_for": lost == 0 && rx.duplicates == 0 && (qos == QoS::AtMostOnce || acked == sent),
        "samples": lat.len(),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": lat.last().map(|&l| round2(l as f64 / 1000.0)),
        "mean_us": mean,
        "broker_cpu_s": cpu.map(round2),
        "broker_cpu_us_per_msg": cpu_us_per(cpu, sent),
        "loadgen_cpu_us_per_msg": cpu_us_per(Some(m1.own_since(&m0)), sent),
        "broker_process": probe.finish(rss0),
    }))
}

fn nanos_since(clock: Instant) -> u64 {
    clock.elapsed().as_nanos() as u64
}

struct PublisherReport {
    sent: u64,
    acked: u64,
    /// Seconds from the first to the last PUBLISH.
    secs: f64,
    /// Ticks on which due messages waited for the QoS 1/2 window.
    held_back: u64,
}

/// Publishes `total` messages at `rate`, each stamped at the moment it is encoded, with at
/// most `max_inflight` unacknowledged at QoS 1/2, and completes the QoS 1/2 flows.
#[allow(clippy::too_many_arguments)]
async fn latency_publisher(
    mut conn: Conn,
    topic: String,
    qos: QoS,
    rate: u64,
    max_inflight: usize,
    total: u64,
    payload: usize,
    clock: Instant,
    drain: Duration,
    done: Arc<Notify>,
) -> Res<PublisherReport> {
    let pid_slot = (qos != QoS::AtMostOnce).then_some(0u16);
    let template = publish_bytes(
        &topic,
        Bytes::from(vec![0u8; payload]),
        qos,
        pid_slot,
        false,
    );
    let payload_at = template.len() - payload;
    let pid_at = payload_at - 2;
    let mut in_use = vec![false; 65536];
    let mut next_pid: u16 = 1;
    let (mut seq, mut acked, mut in_flight, mut held_back) = (0u64, 0u64, 0usize, 0u64);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let start = Instant::now();
    let mut finished_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if seq == total {
            let at = *finished_at.get_or_insert_with(|| {
                done.notify_one();
                Instant::now()
            });
            if qos == QoS::AtMostOnce || acked == total || at.elapsed() > drain {
                break;
            }
        }
        tokio::select! {
            _ = tick.tick(), if seq < total => {}
            r = conn.read_within(Duration::from_millis(50)) => {
                if r? > 0 {
                    for_each_frame(&mut conn.buf, |f| {
                        match f.decode_other()? {
                            Some(Packet::PubAck(p)) | Some(Packet::PubComp(p))
                                if std::mem::replace(&mut in_use[p as usize], false) =>
                            {
                                acked += 1;
                                in_flight -= 1;
                            }
                            Some(Packet::PubRec(p)) => encode(&Packet::PubRel(p), &mut wbuf),
                            _ => {}
                        }
                        Ok(())
                    })?;
                }
            }
        }
        // Everything the schedule says is due, as far as the window allows (an
        // acknowledgement that opens the window sends the held-back messages at once).
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if seq < due && qos != QoS::AtMostOnce && in_flight >= max_inflight {
            held_back += 1;
        }
        while seq < due && (qos == QoS::AtMostOnce || in_flight < max_inflight) {
            let at = wbuf.len();
            wbuf.extend_from_slice(&template);
            if qos != QoS::AtMostOnce {
                // The window is below 65535, so a free packet id exists.
                while in_use[next_pid as usize] {
                    next_pid = next_pid.checked_add(1).unwrap_or(1);
                }
                in_use[next_pid as usize] = true;
                in_flight += 1;
                wbuf[at + pid_at..at + pid_at + 2].copy_from_slice(&next_pid.to_be_bytes());
                next_pid = next_pid.checked_add(1).unwrap_or(1);
            }
            let p = at + payload_at;
            wbuf[p..p + 8].copy_from_slice(&seq.to_be_bytes());
            wbuf[p + 8..p + 16].copy_from_slice(&nanos_since(clock).to_be_bytes());
            seq += 1;
        }
        if !wbuf.is_empty() {
            conn.wr.write_all(&wbuf).await?;
            wbuf.clear();
        }
    }
    let secs = finished_at
        .unwrap_or_else(Instant::now)
        .duration_since(start)
        .as_secs_f64();
    conn.close().await;
    Ok(PublisherReport {
        sent: seq,
        acked,
        secs: secs.max(1e-9),
        held_back,
    })
}

struct Received {
    latencies_ns: Vec<u64>,
    received: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
}

/// Receives the latency messages, acknowledges them per their QoS, and records latency
/// and sequence numbers; ends when all arrived, or `drain` after the publisher finished.
async fn latency_subscriber(
    mut conn: Conn,
    total: u64,
    warmup_msgs: u64,
    clock: Instant,
    drain: Duration,
    publisher_done: Arc<Notify>,
) -> Res<Received> {
    let mut seen = vec![false; total as usize];
    let mut rx = Received {
        latencies_ns: Vec::with_capacity(total as usize),
        received: 0,
        unique: 0,
        duplicates: 0,
        out_of_order: 0,
    };
    let mut highest: Option<u64> = None;
    let mut acks = BytesMut::new();
    let done = publisher_done.notified();
    tokio::pin!(done);
    let mut deadline: Option<Instant> = None;
    while rx.unique < total {
        if deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        tokio::select! {
            _ = &mut done, if deadline.is_none() => {
                deadline = Some(Instant::now() + drain);
                continue;
            }
            r = conn.read_within(Duration::from_millis(50)) => {
                if r? == 0 {
                    continue;
                }
            }
        }
        let now = nanos_since(clock);
        for_each_frame(&mut conn.buf, |f| {
            match f {
                Frame::Publish {
                    first,
                    pid,
                    payload,
                    ..
                } => {
                    let (Some(seq), Some(ts)) = (be64(payload, 0), be64(payload, 8)) else {
                        return fail("latency PUBLISH with a short payload");
                    };
                    rx.received += 1;
                    match seen.get_mut(seq as usize) {
                        Some(s) if *s => rx.duplicates += 1,
                        Some(s) => {
                            *s = true;
                            rx.unique += 1;
                            if seq >= warmup_msgs {
                                rx.latencies_ns.push(now.saturating_sub(ts));
                            }
                        }
                        None => return fail("latency PUBLISH with an unknown sequence number"),
                    }
                    if highest.is_some_and(|h| seq < h) {
                        rx.out_of_order += 1;
                    }
                    highest = highest.max(Some(seq));
                    match ((first >> 1) & 3, pid) {
                        (1, Some(p)) => encode(&Packet::PubAck(p), &mut acks),
                        (2, Some(p)) => encode(&Packet::PubRec(p), &mut acks),
                        _ => {}
                    }
                }
                other => {
                    if let Some(Packet::PubRel(p)) = other.decode_other()? {
                        encode(&Packet::PubComp(p), &mut acks);
                    }
                }
            }
            Ok(())
        })?;
        if !acks.is_empty() {
            conn.wr.write_all(&acks).await?;
            acks.clear();
        }
    }
    conn.close().await;
    Ok(rx)
}

async fn idle(
    addr: SocketAddr,
    pid: Option<u32>,
    k: usize,
    parallel: usize,
    keep_alive: u16,
    hold: Duration,
) -> Res<Value> {
    if keep_alive != 0 && hold.as_secs_f64() >= f64::from(keep_alive) * 0.9 {
        return fail("--hold must be shorter than the keep-alive (no PINGREQ is sent)");
    }
    let nofile = raise_nofile();
    let probe = Probe::start(pid);
    // Let the broker settle before the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = probe.rss_kb();
    let id = run_id();
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let m0 = probe.mark();
    let mut tasks = JoinSet::new();
    for i in 0..k {
        let gate = gate.clone();
        let client_id = format!("lg{id}-idle{i}");
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let t = Instant::now();
            let mut c = Conn::open(addr, &client_id, keep_alive).await?;
            let elapsed = t.elapsed();
            // Nothing more is read from it: keep the load generator's own memory small.
            c.buf = BytesMut::new();
            Ok::<_, Error>((c, elapsed))
        });
    }
    let (opened, errors, first_error) = join_counting(&mut tasks).await?;
    let mut conns = Vec::with_capacity(k);
    let mut connect_ns = Vec::with_capacity(k);
    for (c, d) in opened {
        conns.push(c);
        connect_ns.push(d.as_nanos() as u64);
    }
    let m1 = probe.mark();
    let secs = m1.secs_since(&m0);
    let cpu = m1.cpu_since(&m0);
    tokio::time::sleep(hold).await;
    let rss1 = probe.rss_kb();
    connect_ns.sort_unstable();
    let pct = |q: f64| {
        connect_ns
            .get(((q * connect_ns.len() as f64) as usize).min(connect_ns.len().saturating_sub(1)))
            .map(|&n| round2(n as f64 / 1000.0))
    };
    let ok = conns.len();
    let per_conn = match (rss0, rss1) {
        (Some(a), Some(b)) if ok > 0 => Some(((b as f64 - a as f64) * 1024.0 / ok as f64).round()),
        _ => None,
    };
    // Close with RST (zero linger): no TIME_WAIT pile-up of 10,000 sockets on loopback
    // between runs, and the broker still sees each connection end.
    for c in conns {
        let _ = c.rd.as_ref().set_zero_linger();
    }
    Ok(json!({
        "connections": k,
        "connected": ok,
        "errors": errors,
        "first_error": first_error,
        "parallel": parallel,
        "keep_alive": keep_alive,
        "nofile_limit": nofile,
        "connect_s": round2(secs),
        "connects_per_s": (ok as f64 / secs).round(),
        "connect_p50_us": pct(0.5),
        "connect_p99_us": pct(0.99),
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "bytes_per_conn": per_conn,
        "broker_cpu_s": cpu.map(round2),
        "broker_cpu_us_per_connect": cpu_us_per(cpu, ok as u64),
        "broker_process": probe.finish(rss0),
    }))
}

fn filter_for(i: usize) -> String {
    if i % 2 == 0 {
        format!("dev/{i}/+/temp")
    } else {
        format!("site/{i}/#")
    }
}

fn topic_matching(i: usize) -> String {
    if i % 2 == 0 {
        format!("dev/{i}/x/temp")
    } else {
        format!("site/{i}/a/b")
    }
}

/// A small deterministic generator (splitmix64), so runs publish the same topics.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

async fn filters_scenario(
    addr: SocketAddr,
    pid: Option<u32>,
    load: Throughput,
    f: usize,
    per_subscribe: usize,
    n_pub: usize,
) -> Res<Value> {
    if f == 0 || per_subscribe == 0 || n_pub == 0 || n_pub > u16::MAX as usize {
        return fail("--filters, --per-subscribe and --publishers must be positive");
    }
    let probe = Probe::start(pid);
    let id = run_id();
    let mut sub = Conn::open(addr, &format!("lg{id}-filters"), load.keep_alive).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = probe.rss_kb();
    let m0 = probe.mark();
    // Pipelined SUBSCRIBEs, at most 16 unanswered at once.
    let packets = f.div_ceil(per_subscribe);
    let (mut sent, mut acked, mut refused) = (0usize, 0usize, 0usize);
    while acked < packets {
        while sent < packets && sent - acked < 16 {
            let filters = (sent * per_subscribe..((sent + 1) * per_subscribe).min(f))
                .map(|i| (filter_for(i), QoS::AtMostOnce))
                .collect();
            let pid = (sent % 65535) as u16 + 1;
            sub.send(&Packet::Subscribe(Subscribe {
                options: Vec::new(),
                properties: None,
                pid,
                filters,
            }))
            .await?;
            sent += 1;
        }
        match sub.next_packet().await? {
            Packet::SubAck(s) => {
                acked += 1;
                refused += s
                    .codes
                    .iter()
                    .filter(|c| **c == SubAckCode::Failure)
                    .count();
            }
            other => return fail(format!("expected SUBACK, got {}", other.name())),
        }
    }
    let m1 = probe.mark();
    let subscribe_s = m1.secs_since(&m0);
    let subscribe_cpu = m1.cpu_since(&m0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = probe.rss_kb();
    let per_filter = match (rss0, rss1) {
        (Some(a), Some(b)) => Some(round2((b as f64 - a as f64) * 1024.0 / f as f64)),
        _ => None,
    };

    let counters: Vec<Arc<AtomicU64>> = (0..n_pub).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut rng = SplitMix(0x5eed);
    let mut publishers = Vec::with_capacity(n_pub);
    for (p, counter) in counters.iter().enumerate() {
        let conn = Conn::open(addr, &format!("lg{id}-filters-pub{p}"), load.keep_alive).await?;
        let payload = tagged_payload(p as u16, load.payload);
        // 64 batches of distinct random topics: 3,200 topics per publisher, spread over
        // the whole filter set.
        let batches = (0..64)
            .map(|_| {
                let mut b = BytesMut::new();
                for _ in 0..BATCH {
                    let i = (rng.next() % f as u64) as usize;
                    b.extend_from_slice(&publish_bytes(
                        &topic_matching(i),
                        payload.clone(),
                        QoS::AtMostOnce,
                        None,
                        false,
                    ));
                }
                b.freeze()
            })
            .collect();
        publishers.push(PublisherPlan {
            conn,
            batches,
            watch: vec![counter.clone()],
        });
    }
    let shared = Shared::new();
    let r = measure_throughput(&probe, &load, publishers, vec![(sub, counters)], shared).await?;
    Ok(merge(
        json!({
            "filters": f,
            "refused": refused,
            "subscribe_s": round2(subscribe_s),
            "filters_per_s": (f as f64 / subscribe_s).round(),
            "broker_cpu_us_per_filter": cpu_us_per(subscribe_cpu, f as u64),
            "rss_before_kb": rss0,
            "rss_after_subscribe_kb": rss1,
            "bytes_per_filter": per_filter,
            "publishers": n_pub,
            "payload": load.payload,
            "msgs_per_s": r["delivered_per_s"],
            "broker_cpu_us_per_msg": r["broker_cpu_us_per_delivery"],
            "broker_process": probe.finish(rss0),
        }),
        r,
    ))
}

async fn retained(
    addr: SocketAddr,
    pid: Option<u32>,
    r: usize,
    payload: usize,
    keep: bool,
) -> Res<Value> {
    let probe = Probe::start(pid);
    let id = run_id();
    let prefix = format!("bench/{id}/ret/");
    let topic = |i: usize| format!("{prefix}{}/{}", i / 1000, i % 1000);
    let mut publisher = Conn::open(addr, &format!("lg{id}-ret-pub"), 0).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = probe.rss_kb();
    let body = Bytes::from(vec![b'r'; payload.max(1)]);

    let m0 = probe.mark();
    let mut chunk = BytesMut::with_capacity(256 * 1024);
    for i in 0..r {
        encode(
            &Packet::Publish(Publish {
                properties: None,
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: topic(i).into(),
                pid: None,
                payload: body.clone(),
            }),
            &mut chunk,
        );
        if chunk.len() >= 240 * 1024 {
            publisher.wr.write_all(&chunk).await?;
            chunk.clear();
        }
    }
    publisher.wr.write_all(&chunk).await?;
    publisher.ping().await?;
    let m1 = probe.mark();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = probe.rss_kb();

    let mut sub = Conn::open(addr, &format!("lg{id}-ret-sub"), 0).await?;
    sub.chunk = 256 * 1024;
    let m2 = probe.mark();
    sub.send(&Packet::Subscribe(Subscribe {
        options: Vec::new(),
        properties: None,
        pid: 1,
        filters: vec![("#".into(), QoS::AtMostOnce)],
    }))
    .await?;
    let (mut got, mut other, mut first_at) = (0usize, 0usize, None);
    let prefix_bytes = prefix.as_bytes();
    let deadline = Instant::now() + Duration::from_secs(120);
    while got < r {
        if Instant::now() > deadline {
            return fail(format!(
                "the # subscriber received {got} of {r} retained messages in 120 s"
            ));
        }
        if sub.read_within(Duration::from_millis(200)).await? == 0 {
            continue;
        }
        for_each_frame(&mut sub.buf, |f| {
            if let Frame::Publish { first, topic, .. } = f {
                if first & 1 == 1 && topic.starts_with(prefix_bytes) {
                    got += 1;
                    first_at.get_or_insert_with(Instant::now);
                } else {
                    other += 1;
                }
            }
            Ok(())
        })?;
    }
    let m3 = probe.mark();
    let deliver_s = m3.secs_since(&m2);
    let deliver_cpu = m3.cpu_since(&m2);
    sub.close().await;

    if !keep {
        // Leave the broker as it was: an empty retained PUBLISH deletes the topic.
        chunk.clear();
        for i in 0..r {
            chunk.extend_from_slice(&publish_bytes(
                &topic(i),
                Bytes::new(),
                QoS::AtMostOnce,
                None,
                true,
            ));
            if chunk.len() >= 240 * 1024 {
                publisher.wr.write_all(&chunk).await?;
                chunk.clear();
            }
        }
        publisher.wr.write_all(&chunk).await?;
        publisher.ping().await?;
    }
    publisher.close().await;
    let per_msg = match (rss0, rss1) {
        (Some(a), Some(b)) if r > 0 => Some(round2((b as f64 - a as f64) * 1024.0 / r as f64)),
        _ => None,
    };
    Ok(json!({
        "messages": r,
        "payload": payload,
        "publish_s": round2(m1.secs_since(&m0)),
        "broker_cpu_us_per_retain": cpu_us_per(m1.cpu_since(&m0), r as u64),
        "bytes_per_retained": per_msg,
        "deliver_s": round2(deliver_s),
        "first_message_ms": first_at.map(|t| round2(t.duration_since(m2.at).as_secs_f64() * 1000.0)),
        "deliver_msgs_per_s": (got as f64 / deliver_s).round(),
        "other_messages": other,
        "broker_cpu_s": deliver_cpu.map(round2),
        "broker_cpu_us_per_msg": cpu_us_per(deliver_cpu, got as u64),
        "broker_process": probe.finish(rss0),
    }))
}

// ---------------------------------------------------------------------------------------
// connect-rate and reconnect-storm: connections over TCP or TLS, with credentials
// ---------------------------------------------------------------------------------------

/// How the clients of `connect-rate` and `reconnect-storm` reach the broker.
#[derive(Args, Debug, Clone)]
struct Dial {
    /// PEM file of the CA that signed the broker's certificate: connect with TLS (1.3 or
    /// 1.2, as the broker prefers; rustls with ring) and verify the broker against it.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Name the broker's certificate must carry: a DNS name or an IP address.
    #[arg(long, default_value = "127.0.0.1")]
    tls_server_name: String,
    /// Let TLS clients resume earlier sessions (abbreviated handshakes). By default every
    /// connection makes a full handshake, which is what handshakes/s means.
    #[arg(long)]
    tls_resumption: bool,
    /// User name in CONNECT.
    #[arg(long)]
    username: Option<String>,
    /// Password in CONNECT (needs --username). Visible in the process list: for test
    /// accounts only.
    #[arg(long)]
    password: Option<String>,
}

/// A byte stream to the broker: plain TCP, or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A [`Dial`] made ready: the address, the TLS client (if any) and the credentials that
/// every connection of the run uses.
struct Dialer {
    addr: SocketAddr,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    username: Option<String>,
    password: Option<Bytes>,
}

impl Dialer {
    fn new(addr: SocketAddr, dial: &Dial) -> Res<Arc<Dialer>> {
        if dial.password.is_some() && dial.username.is_none() {
            return fail("--password needs --username");
        }
        let tls = match &dial.tls_ca {
            None => None,
            Some(ca) => {
                let name = rustls_pki_types::ServerName::try_from(dial.tls_server_name.clone())
                    .map_err(|e| {
                        format!(
                            "--tls-server-name {:?} is neither a DNS name nor an IP address: {e}",
                            dial.tls_server_name
                        )
                    })?;
                Some((tls_connector(ca, dial.tls_resumption)?, name))
            }
        };
        Ok(Arc::new(Dialer {
            addr,
            tls,
            username: dial.username.clone(),
            password: dial.password.clone().map(Bytes::from),
        }))
    }

    fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// TCP connect, the TLS handshake when configured, CONNECT, and an accepting CONNACK,
    /// all within `STEP_TIMEOUT`. Returns the link and the CONNACK's session-present flag.
    async fn connect(
        &self,
        client_id: &str,
        clean_session: bool,
        keep_alive: u16,
    ) -> Res<(Link, bool)> {
        match tokio::time::timeout(
            STEP_TIMEOUT,
            self.connect_inner(client_id, clean_session, keep_alive),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => fail(format!("{client_id}: no CONNACK within 30 s")),
        }
    }

    async fn connect_inner(
        &self,
        client_id: &str,
        clean_session: bool,
        keep_alive: u16,
    ) -> Res<(Link, bool)> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("{client_id}: TCP connect: {e}"))?;
        tcp.set_nodelay(true)?;
        // Dropped with RST (zero linger), after [`Link::disconnect`] saw the broker close:
        // no TIME_WAIT on either side. Otherwise the next thousands of connections reuse
        // those loopback ports, and a SYN that meets a TIME_WAIT with a newer timestamp is
        // dropped (PAWS) and sent again only after 1 s, which would swamp the percentiles.
        tcp.set_zero_linger()?;
        let io: Box<dyn Stream> = match &self.tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("{client_id}: TLS handshake: {e}"))?,
            ),
            None => Box::new(tcp),
        };
        let mut link = Link {
            io,
            buf: BytesMut::with_capacity(256),
        };
        // An MQTT 5 session ends with the connection unless it asks for an expiry.
        let properties = (level().is_v5() && !clean_session).then(|| {
            Box::new(Properties {
                session_expiry_interval: Some(u32::MAX),
                ..Default::default()
            })
        });
        link.send(&Packet::Connect(Box::new(Connect {
            bridge: false,
            properties,
            protocol: level(),
            clean_session,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: self.username.clone(),
            password: self.password.clone(),
        })))
        .await?;
        match link.next_packet().await? {
            Packet::ConnAck(a) if a.code == ConnectReturnCode::Accepted => {
                Ok((link, a.session_present))
            }
            Packet::ConnAck(a) => fail(format!("{client_id}: CONNACK refused: {:?}", a.code)),
            other => fail(format!(
                "{client_id}: expected CONNACK, got {}",
                other.name()
            )),
        }
    }
}

/// The rustls client of `--tls-ca`: that CA only, TLS 1.3 and 1.2, ring (as the broker).
fn tls_connector(ca: &std::path::Path, resumption: bool) -> Res<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let pem = std::fs::read(ca).map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--tls-ca {}: not PEM: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--tls-ca {}: unusable CA: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return fail(format!(
            "--tls-ca {}: no CERTIFICATE block found",
            ca.display()
        ));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    if !resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One connection of `connect-rate` or `reconnect-storm`, TCP or TLS. Packets are fully
/// decoded: these scenarios count connections and a few messages, not floods.
struct Link {
    io: Box<dyn Stream>,
    buf: BytesMut,
}

impl Link {
    async fn send(&mut self, p: &Packet) -> Res<()> {
        let mut out = BytesMut::new();
        encode(p, &mut out);
        self.write(&out).await
    }

    /// Writes and flushes (TLS buffers records until flushed).
    async fn write(&mut self, bytes: &[u8]) -> Res<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next packet, or `None` if none arrived by `deadline`.
    async fn packet_by(&mut self, deadline: tokio::time::Instant) -> Res<Option<Packet>> {
        loop {
            if let Some(p) = decode(&mut self.buf, usize::MAX)? {
                return Ok(Some(p));
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => return fail("connection closed by the broker"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Ok(None),
            }
        }
    }

    /// The next packet, within `STEP_TIMEOUT`.
    async fn next_packet(&mut self) -> Res<Packet> {
        match self
            .packet_by(tokio::time::Instant::now() + STEP_TIMEOUT)
            .await?
        {
            Some(p) => Ok(p),
            None => fail("no answer from the broker within 30 s"),
        }
    }

    /// SUBSCRIBE to one filter and wait for its SUBACK, which must grant `qos`.
    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Res<()> {
        self.send(&Packet::Subscribe(Subscribe {
            options: Vec::new(),
            properties: None,
            pid: 1,
            filters: vec![(filter.to_string(), qos)],
        }))
        .await?;
        match self.next_packet().await? {
            Packet::SubAck(s) if s.codes == [SubAckCode::Granted(qos)] => Ok(()),
            Packet::SubAck(s) => fail(format!("SUBSCRIBE {filter}: SUBACK {:?}", s.codes)),
            other => fail(format!("expected SUBACK, got {}", other.name())),
        }
    }

    /// DISCONNECT, then wait (up to `STEP_TIMEOUT`) until the broker closes the connection:
    /// by then it has done all its work for it. False if it did not close in time.
    async fn disconnect(mut self) -> bool {
        if self.send(&Packet::Disconnect).await.is_err() {
            return true; // already closed
        }
        let wait = async {
            let mut scratch = [0u8; 512];
            // EOF, or an error (a TLS peer that closes without close_notify): closed.
            while let Ok(n) = self.io.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::time::timeout(STEP_TIMEOUT, wait).await.is_ok()
    }
}

/// Nearest-rank percentile of sorted nanoseconds, in µs.
fn percentile_us(sorted_ns: &[u64], q: f64) -> Option<f64> {
    if sorted_ns.is_empty() {
        return None;
    }
    let rank = ((q * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    Some(round2(sorted_ns[rank - 1] as f64 / 1000.0))
}

/// Connections the kernel dropped because a listen queue was full (TcpExt ListenDrops of
/// `/proc/net/netstat`, for the whole network namespace). Such a client's SYN is sent again
/// after 1 s (then 3 s, ...), which then dominates the connect latency percentiles.
fn listen_drops() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == "ListenDrops")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// [`listen_drops`] since an earlier reading.
fn listen_drops_since(before: Option<u64>) -> Option<u64> {
    Some(listen_drops()?.saturating_sub(before?))
}

/// The open-file limit must hold `needed` sockets (plus a margin for everything else).
fn require_nofile(needed: usize) -> Res<Option<u64>> {
    let limit = raise_nofile();
    if let Some(l) = limit {
        if (l as usize) < needed + 64 {
            return fail(format!(
                "the open-file limit is {l}, below the {needed} sockets this run holds (+64); \
                 lower the count or raise the hard limit"
            ));
        }
    }
    Ok(limit)
}

/// connect-rate: `n` connections, `parallel` at a time, each TCP connect (+ TLS handshake)
/// -> CONNECT -> CONNACK -> DISCONNECT -> the broker closes it.
async fn connect_rate(
    dialer: Arc<Dialer>,
    pid: Option<u32>,
    n: usize,
    parallel: usize,
) -> Res<Value> {
    if n == 0 || parallel == 0 {
        return fail("--connections and --parallel must be positive");
    }
    let nofile = require_nofile(parallel)?;
    let probe = Probe::start(pid);
    let id = run_id();
    // One connection first: a wrong CA, name or password is then one clear error instead
    // of N, and the broker's lazily built state is not part of the measurement.
    let (link, _) = dialer
        .connect(&format!("lg{id}-cr-check"), true, 60)
        .await
        .map_err(|e| format!("the first connection failed: {e}"))?;
    link.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = probe.rss_kb();
    let gate = Arc::new(Semaphore::new(parallel));
    let drops0 = listen_drops();
    let m0 = probe.mark();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (gate, dialer) = (gate.clone(), dialer.clone());
        let client_id = format!("lg{id}-cr{i}");
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let t = Instant::now();
            let (link, _) = dialer.connect(&client_id, true, 60).await?;
            let connack = t.elapsed();
            let closed = link.disconnect().await;
            Ok::<_, Error>((connack, t.elapsed(), closed))
        });
    }
    let (cycles, errors, first_error) = join_counting(&mut tasks).await?;
    let (mut connack_ns, mut cycle_ns) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut close_timeouts = 0usize;
    for (connack, cycle, closed) in cycles {
        connack_ns.push(connack.as_nanos() as u64);
        cycle_ns.push(cycle.as_nanos() as u64);
        close_timeouts += usize::from(!closed);
    }
    let m1 = probe.mark();
    let drops = listen_drops_since(drops0);
    let secs = m1.secs_since(&m0);
    let cpu = m1.cpu_since(&m0);
    let ok = connack_ns.len();
    connack_ns.sort_unstable();
    cycle_ns.sort_unstable();
    Ok(json!({
        "connections": n,
        "connected": ok,
        "errors": errors,
        "first_error": first_error,
        "close_timeouts": close_timeouts,
        "listen_drops": drops,
        "parallel": parallel,
        "tls": dialer.is_tls(),
        "authenticated": dialer.username.is_some(),
        "nofile_limit": nofile,
        "connect_s": round2(secs),
        "connects_per_s": (ok as f64 / secs).round(),
        "connect_p50_us": percentile_us(&connack_ns, 0.5),
        "connect_p99_us": percentile_us(&connack_ns, 0.99),
        "connect_max_us": percentile_us(&connack_ns, 1.0),
        "cycle_p50_us": percentile_us(&cycle_ns, 0.5),
        "cycle_p99_us": percentile_us(&cycle_ns, 0.99),
        "broker_cpu_s": cpu.map(round2),
        "broker_cpu_us_per_connect": cpu_us_per(cpu, ok as u64),
        "broker_cpu_util": cpu.map(|c| round2(c / secs)),
        "loadgen_cpu_us_per_connect": cpu_us_per(Some(m1.own_since(&m0)), ok as u64),
        "broker_process": probe.finish(rss0),
    }))
}

/// What both phases of `reconnect-storm` agree on.
struct Storm {
    dialer: Arc<Dialer>,
    clients: usize,
    messages: usize,
    payload: usize,
    prefix: String,
}

impl Storm {
    fn client_id(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    fn topic(&self, i: usize) -> String {
        format!("{}/{i}", self.prefix)
    }

    fn check(&self) -> Res<()> {
        if self.clients == 0 || self.clients > u32::MAX as usize {
            return fail("--clients must be 1..4294967295");
        }
        if self.messages == 0 || self.messages > u32::MAX as usize {
            return fail("--messages must be 1..4294967295");
        }
        if self.payload < 8 {
            return fail("--payload must be at least 8 bytes (client and message number)");
        }
        if self.prefix.is_empty() || self.prefix.contains(['+', '#', '/']) {
            return fail("--prefix must be non-empty, without '+', '#' or '/'");
        }
        Ok(())
    }
}

/// reconnect-storm, first phase: the sessions (clean session off, one QoS 1 subscription
/// each, then DISCONNECT), then `messages` QoS 1 messages for each, published once all are
/// disconnected, so the broker queues them; exits when every PUBLISH has its PUBACK.
async fn storm_prepare(
    storm: Storm,
    pid: Option<u32>,
    parallel: usize,
    window: usize,
) -> Res<Value> {
    storm.check()?;
    if parallel == 0 || window == 0 || window > 65_000 {
        return fail("--prepare-parallel must be positive and --publish-window 1..65000");
    }
    let nofile = require_nofile(parallel)?;
    let probe = Probe::start(pid);
    let rss0 = probe.rss_kb();
    let storm = Arc::new(storm);
    let gate = Arc::new(Semaphore::new(parallel));
    let drops0 = listen_drops();
    let m0 = probe.mark();
    let mut tasks = JoinSet::new();
    for i in 0..storm.clients {
        let (gate, storm) = (gate.clone(), storm.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let id = storm.client_id(i);
            let (mut link, present) = storm.dialer.connect(&id, false, 60).await?;
            link.subscribe(&storm.topic(i), QoS::AtLeastOnce)
                .await
                .map_err(|e| format!("{id}: {e}"))?;
            // The broker must have taken the client offline before the messages come.
            if !link.disconnect().await {
                return fail(format!("{id}: the broker did not close after DISCONNECT"));
            }
            Ok::<_, Error>(present)
        });
    }
    let mut stale = 0usize;
    while let Some(r) = tasks.join_next().await {
        // Every session is needed: the first failure ends the phase.
        stale += usize::from(r??);
    }
    let m1 = probe.mark();

    let total = storm.clients * storm.messages;
    let (mut publisher, _) = storm
        .dialer
        .connect(&format!("{}-pub", storm.prefix), true, 60)
        .await?;
    let mut in_use = vec![false; 65536];
    let (mut next_pid, mut sent, mut acked, mut in_flight) = (1u16, 0usize, 0usize, 0usize);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    while acked < total {
        // Refill the window when it is half empty: one write for many PUBLISH packets.
        if sent < total && in_flight <= window / 2 {
            while sent < total && in_flight < window {
                // Message j of every client before message j + 1 of any.
                let (j, i) = (sent / storm.clients, sent % storm.clients);
                while in_use[next_pid as usize] {
                    next_pid = next_pid.checked_add(1).unwrap_or(1);
                }
                in_use[next_pid as usize] = true;
                let mut payload = BytesMut::with_capacity(storm.payload);
                payload.put_u32(i as u32);
                payload.put_u32(j as u32);
                payload.resize(storm.payload, b'q');
                encode(
                    &Packet::Publish(Publish {
                        properties: None,
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: storm.topic(i).into(),
                        pid: Some(next_pid),
                        payload: payload.freeze(),
                    }),
                    &mut wbuf,
                );
                next_pid = next_pid.checked_add(1).unwrap_or(1);
                sent += 1;
                in_flight += 1;
            }
            publisher.write(&wbuf).await?;
            wbuf.clear();
        }
        match publisher.next_packet().await? {
            Packet::PubAck(p) if std::mem::replace(&mut in_use[p as usize], false) => {
                acked += 1;
                in_flight -= 1;
            }
            _ => {}
        }
    }
    publisher.disconnect().await;
    let m2 = probe.mark();
    Ok(json!({
        "phase": "prepare",
        "clients": storm.clients,
        "messages_per_client": storm.messages,
        "payload": storm.payload,
        "prefix": storm.prefix,
        "tls": storm.dialer.is_tls(),
        "stale_sessions": stale,
        "sessions_s": round2(m1.secs_since(&m0)),
        "listen_drops": listen_drops_since(drops0),
        "published": sent,
        "acknowledged": acked,
        "publish_s": round2(m2.secs_since(&m1)),
        "broker_cpu_us_per_session": cpu_us_per(m1.cpu_since(&m0), storm.clients as u64),
        "broker_cpu_us_per_message": cpu_us_per(m2.cpu_since(&m1), total as u64),
        "nofile_limit": nofile,
        "broker_process": probe.finish(rss0),
    }))
}

/// How one client of the storm fared.
struct Reconnected {
    link: Link,
    session_present: bool,
    /// Distinct queued messages received, and repeats of them.
    got: usize,
    duplicates: usize,
    /// Since the storm began: CONNACK, and the last queued message (or giving up).
    connack_at: Duration,
    done_at: Duration,
    /// From this client's own connect attempt to its CONNACK, and to its last message.
    own_connack: Duration,
    own: Duration,
}

/// reconnect-storm, second phase: every client reconnects (clean session off), `parallel`
/// at a time, expects session present, and acknowledges its queued messages; each stays
/// connected until all are done. Measures until the last client has all its messages.
async fn storm_reconnect(
    storm: Storm,
    pid: Option<u32>,
    parallel: usize,
    message_wait: Duration,
) -> Res<Value> {
    storm.check()?;
    if parallel == 0 {
        return fail("--parallel must be positive");
    }
    let nofile = require_nofile(storm.clients)?;
    let probe = Probe::start(pid);
    let rss0 = probe.rss_kb();
    let storm = Arc::new(storm);
    let gate = Arc::new(Semaphore::new(parallel));
    let drops0 = listen_drops();
    let m0 = probe.mark();
    let mut tasks = JoinSet::new();
    for i in 0..storm.clients {
        let (gate, storm) = (gate.clone(), storm.clone());
        let start = m0.at;
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let t = Instant::now();
            let id = storm.client_id(i);
            let (mut link, session_present) = storm.dialer.connect(&id, false, 60).await?;
            let own_connack = t.elapsed();
            let connack_at = start.elapsed();
            let (mut seen, mut got, mut duplicates) = (vec![false; storm.messages], 0, 0);
            let topic = storm.topic(i);
            let deadline = tokio::time::Instant::now() + message_wait;
            // Without the session its messages are gone: nothing to wait for.
            while session_present && got < storm.messages {
                let Some(packet) = link.packet_by(deadline).await? else {
                    break;
                };
                let Packet::Publish(p) = packet else {
                    continue;
                };
                if p.topic.as_ref() != topic.as_str() || p.payload.len() < 8 {
                    return fail(format!("{id}: unexpected PUBLISH on {:?}", p.topic));
                }
                let (c, j) = (
                    u32::from_be_bytes([p.payload[0], p.payload[1], p.payload[2], p.payload[3]]),
                    u32::from_be_bytes([p.payload[4], p.payload[5], p.payload[6], p.payload[7]]),
                );
                match seen.get_mut(j as usize) {
                    Some(s) if c as usize == i && !*s => {
                        *s = true;
                        got += 1;
                    }
                    Some(_) if c as usize == i => duplicates += 1,
                    _ => return fail(format!("{id}: PUBLISH of another run (message {c}/{j})")),
                }
                if let Some(pid) = p.pid {
                    link.send(&Packet::PubAck(pid)).await?;
                }
            }
            Ok::<_, Error>(Reconnected {
                link,
                session_present,
                got,
                duplicates,
                connack_at,
                done_at: start.elapsed(),
                own_connack,
                own: t.elapsed(),
            })
        });
    }
    let (done, errors, first_error) = join_counting(&mut tasks).await?;
    let m1 = probe.mark();
    let drops = listen_drops_since(drops0);
    let secs = m1.secs_since(&m0);
    let cpu = m1.cpu_since(&m0);
    // Memory with every session connected again.
    let rss_connected = probe.rss_kb();
    let present = done.iter().filter(|c| c.session_present).count();
    let complete = done
        .iter()
        .filter(|c| c.session_present && c.got == storm.messages)
        .count();
    let received: usize = done.iter().map(|c| c.got).sum();
    let duplicates: usize = done.iter().map(|c| c.duplicates).sum();
    let expected = storm.clients * storm.messages;
    let secs_of = |d: Option<Duration>| d.map(|d| round2(d.as_secs_f64()));
    let all_connack = done.iter().map(|c| c.connack_at).max();
    let all_done = done.iter().map(|c| c.done_at).max();
    let mut own: Vec<u64> = done.iter().map(|c| c.own.as_nanos() as u64).collect();
    own.sort_unstable();
    let mut own_connack: Vec<u64> = done
        .iter()
        .map(|c| c.own_connack.as_nanos() as u64)
        .collect();
    own_connack.sort_unstable();
    let ms = |us: Option<f64>| us.map(|u| round2(u / 1000.0));
    let all_ok = errors == 0 && complete == storm.clients;
    let connected = storm.clients - errors;
    for c in done {
        // Leave the sessions as they are (persistent); no need to wait for the broker.
        let mut link = c.link;
        let _ = link.send(&Packet::Disconnect).await;
    }
    Ok(json!({
        "phase": "storm",
        "clients": storm.clients,
        "messages_per_client": storm.messages,
        "parallel": parallel,
        "tls": storm.dialer.is_tls(),
        "complete": all_ok,
        // The headline: until the last client had CONNACK with session present and all
        // its queued messages (only meaningful when `complete`).
        "storm_s": if all_ok { json!(secs_of(all_done)) } else { Value::Null },
        "elapsed_s": round2(secs),
        "all_connack_s": secs_of(all_connack),
        "connects_per_s": all_connack.map(|d| (connected as f64 / d.as_secs_f64()).round()),
        "sessions_present": present,
        "sessions_missing": connected - present,
        "clients_complete": complete,
        "messages_expected": expected,
        "messages_received": received,
        "messages_missing": expected.saturating_sub(received),
        "duplicates": duplicates,
        "errors": errors,
        "first_error": first_error,
        "listen_drops": drops,
        "connack_p50_ms": ms(percentile_us(&own_connack, 0.5)),
        "connack_p99_ms": ms(percentile_us(&own_connack, 0.99)),
        "client_p50_ms": ms(percentile_us(&own, 0.5)),
        "client_p99_ms": ms(percentile_us(&own, 0.99)),
        "client_max_ms": ms(percentile_us(&own, 1.0)),
        "broker_cpu_s": cpu.map(round2),
        "broker_cpu_us_per_client": cpu_us_per(cpu, storm.clients as u64),
        "loadgen_cpu_s": round2(m1.own_since(&m0)),
        "rss_connected_kb": rss_connected,
        "nofile_limit": nofile,
        "broker_process": probe.finish(rss0),
    }))
}
