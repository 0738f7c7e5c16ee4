//! A fleet of simulated ESP8266 + DHT sensors (firmware/esp8266-dht) speaking MQTT the
//! way PubSubClient does, to try the broker with realistic device traffic before real
//! boards: N devices (default 50, up to 10,000), each one TCP connection.
//!
//! Per device, exactly as the sketch: CONNECT at protocol level 4, clean session,
//! keep-alive 15 s, client id `{device}-{6 hex}`, will `{prefix}{device}/status` =
//! `offline` (QoS 1, retained); right after CONNACK a retained `online` there; then every
//! interval, at QoS 0, `{prefix}{device}/temperature`, `{prefix}{device}/humidity` and the
//! legacy `sensors_{device}/dht` (the temperature), as bare one-decimal numbers (`25.5`).
//! PINGREQ follows PubSubClient's rule (nothing received or nothing sent for a whole
//! keep-alive; a second one unanswered closes the connection), and a lost connection is
//! retried with the firmware's backoff (1 s doubling to 60 s, each wait cut by up to 25 %
//! at random, back to 1 s after 30 s connected).
//!
//! Faults on demand: `--disconnect-rate` drops connections without DISCONNECT so the
//! broker publishes the will; `--garbage-rate` sends what broken sensors and old sketches
//! send (`nan`, an empty payload, `999.9`, non-numeric text).
//!
//! Output: the publish rate on stderr every `--report-every`, one JSON summary on stdout at
//! the end, and with `--log-readings FILE` one JSON line per message actually written to
//! the socket (`kind`: `valid`, `garbage`, `status`) and per forced drop (`kind`: `drop`),
//! so a test can compare them with what a subscriber received (tests/esp8266_sim.rs).
//!
//! Run: `cargo run --release --bin esp8266-sim -- --port 1883 --devices 200 --interval 1s --duration 30s`.
//! A binary target, not an example, so that building it compiles no dev-dependencies.
//! Loopback only, like every load tool in examples/.

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use mqtt_broker::config::parse_duration;
use mqtt_broker::protocol::{
    decode, encode, Connect, ConnectReturnCode, LastWill, Packet, ProtocolLevel, Publish, QoS,
};
use serde_json::json;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

/// PubSubClient's `MQTT_SOCKET_TIMEOUT` as the sketch sets it: TCP connect, then CONNACK.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// Firmware reconnect backoff (`RECONNECT_MIN_MS`, `RECONNECT_MAX_MS`).
const BACKOFF_MIN_MS: u64 = 1000;
const BACKOFF_MAX_MS: u64 = 60_000;
/// The sketch's `STABLE_CONNECTION_MS`: connected this long, the backoff starts over.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);
/// Most devices one run may simulate (each is a socket and a task).
const MAX_DEVICES: usize = 10_000;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "esp8266-sim",
    about = "Simulated ESP8266 + DHT sensor fleet (PubSubClient behaviour), loopback only"
)]
struct Cli {
    /// Broker host; must be loopback (127.0.0.0/8, ::1, or a name resolving only to them).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Number of devices (1 to 10,000).
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// Time between two readings of a device (the sketch's PUBLISH_INTERVAL_MS).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    interval: Duration,
    /// How long the fleet runs; then every connected device sends DISCONNECT.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    duration: Duration,
    /// Random spread of each reading time, as a fraction of the interval (0 = lockstep
    /// like identical firmware booted together; real boards drift).
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// Devices boot at random times within this span (a whole fleet powering up at once
    /// is --ramp 0).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    ramp: Duration,
    /// Probability, at each reading time, that the device instead drops its connection
    /// without DISCONNECT (the broker then publishes its will), and reconnects with backoff.
    #[arg(long, default_value_t = 0.0)]
    disconnect_rate: f64,
    /// How a drop looks to the broker.
    #[arg(long, value_enum, default_value_t = DropMode::Fin)]
    disconnect_mode: DropMode,
    /// Probability that a value is replaced by garbage: `nan`, empty, out of range
    /// (`999.9`, `-999.9`) or non-numeric text.
    #[arg(long, default_value_t = 0.0)]
    garbage_rate: f64,
    /// Topic prefix (the sketch's TOPIC_PREFIX, with its trailing '/').
    #[arg(long, default_value = "sensors/")]
    prefix: String,
    /// Prefix of the legacy topic `{legacy-prefix}{device}/dht`.
    #[arg(long, default_value = "sensors_")]
    legacy_prefix: String,
    /// Do not publish the legacy topic (the sketch's PUBLISH_LEGACY_TOPIC 0).
    #[arg(long)]
    no_legacy: bool,
    /// Device ids are this plus a number: esp0000, esp0001, ...
    #[arg(long, default_value = "esp")]
    device_prefix: String,
    /// Keep-alive in seconds (the sketch's MQTT_KEEPALIVE_S).
    #[arg(long, default_value_t = 15)]
    keep_alive: u16,
    /// User name sent in CONNECT.
    #[arg(long)]
    username: Option<String>,
    /// Password sent in CONNECT (only with --username, as in MQTT 3.1.1).
    #[arg(long, requires = "username")]
    password: Option<String>,
    /// Print the publish rate to stderr this often.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    report_every: Duration,
    /// Write every message sent and every forced drop as a JSON line to FILE.
    #[arg(long, value_name = "FILE")]
    log_readings: Option<std::path::PathBuf>,
    /// Seed of the random choices (readings, faults, chip ids); default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DropMode {
    /// Close the socket (TCP FIN) without DISCONNECT: the broker sees the end at once.
    Fin,
    /// Reset the connection (TCP RST), as when the device's network stack is torn down.
    Rst,
    /// Go silent with the socket open, as a hung or unpowered board: the broker notices
    /// only after 1.5 x keep-alive.
    Silent,
}

impl DropMode {
    fn name(self) -> &'static str {
        match self {
            DropMode::Fin => "fin",
            DropMode::Rst => "rst",
            DropMode::Silent => "silent",
        }
    }
}

/// Fleet-wide counters, printed periodically and in the summary.
#[derive(Default)]
struct Stats {
    connected: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    publishes: AtomicU64,
    readings_valid: AtomicU64,
    readings_garbage: AtomicU64,
    statuses: AtomicU64,
    bytes_out: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
    drops: AtomicU64,
    connections_lost: AtomicU64,
    keep_alive_timeouts: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[path = "../../examples/common/rng.rs"]
mod rng;
use rng::Rng;

/// Everything every device task needs, shared.
struct Fleet {
    cli: Cli,
    addr: SocketAddr,
    start: Instant,
    end: Instant,
    stats: Stats,
    log: Option<std::sync::mpsc::Sender<String>>,
}

impl Fleet {
    fn log(&self, line: serde_json::Value) {
        if let Some(tx) = &self.log {
            let _ = tx.send(line.to_string());
        }
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = check(&cli) {
        eprintln!("esp8266-sim: {e}");
        return ExitCode::from(2);
    }
    let addr = match loopback_addr(&cli.host, cli.port) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("esp8266-sim: {e}");
            return ExitCode::from(2);
        }
    };
    raise_nofile();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("esp8266-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    // The log is written by its own thread, so devices never wait on the disk.
    let (log_tx, log_thread) = match &cli.log_readings {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => {
                let (tx, rx) = std::sync::mpsc::channel::<String>();
                let t = std::thread::spawn(move || {
                    let mut w = std::io::BufWriter::new(file);
                    for line in rx {
                        let _ = writeln!(w, "{line}");
                    }
                    let _ = w.flush();
                });
                (Some(tx), Some(t))
            }
            Err(e) => {
                eprintln!("esp8266-sim: cannot create {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => (None, None),
    };

    let summary = runtime.block_on(run(cli, addr, log_tx));
    runtime.shutdown_timeout(Duration::from_secs(2));
    if let Some(t) = log_thread {
        let _ = t.join();
    }
    println!("{summary}");
    ExitCode::SUCCESS
}

fn check(cli: &Cli) -> Result<(), String> {
    if cli.devices == 0 || cli.devices > MAX_DEVICES {
        return Err(format!("--devices must be 1..={MAX_DEVICES}"));
    }
    for (name, v) in [
        ("--jitter", cli.jitter),
        ("--disconnect-rate", cli.disconnect_rate),
        ("--garbage-rate", cli.garbage_rate),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("{name} must be between 0 and 1"));
        }
    }
    if cli.interval < Duration::from_millis(10) {
        return Err("--interval must be at least 10ms".into());
    }
    if cli.keep_alive == 0 {
        return Err("--keep-alive must be at least 1 (PubSubClient always sends one)".into());
    }
    if cli.report_every.is_zero() {
        return Err("--report-every must be positive".into());
    }
    for (name, v) in [
        ("--prefix", &cli.prefix),
        ("--legacy-prefix", &cli.legacy_prefix),
        ("--device-prefix", &cli.device_prefix),
    ] {
        if v.contains(['+', '#']) {
            return Err(format!("{name} must not contain MQTT wildcards"));
        }
    }
    if cli.device_prefix.contains(['/', ' ']) {
        return Err("--device-prefix must be one topic level (no '/' or spaces)".into());
    }
    Ok(())
}

fn loopback_addr(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    match addrs.first() {
        None => Err(format!("{host} resolves to no address")),
        Some(_) if addrs.iter().any(|a| !a.ip().is_loopback()) => Err(format!(
            "refusing {host}: only loopback addresses (127.0.0.0/8, ::1) are allowed"
        )),
        Some(a) => Ok(*a),
    }
}

/// 10,000 devices need 10,000 sockets: raise the soft open-file limit to the hard one.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn run(
    cli: Cli,
    addr: SocketAddr,
    log: Option<std::sync::mpsc::Sender<String>>,
) -> serde_json::Value {
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let start = Instant::now();
    let fleet = Arc::new(Fleet {
        end: start + cli.duration,
        cli,
        addr,
        start,
        stats: Stats::default(),
        log,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..fleet.cli.devices {
        tasks.spawn(device(fleet.clone(), i, seed));
    }
    let reporter = tokio::spawn(report(fleet.clone()));
    while tasks.join_next().await.is_some() {}
    reporter.abort();
    let secs = fleet.start.elapsed().as_secs_f64();
    let s = &fleet.stats;
    let publishes = get(&s.publishes);
    let summary = json!({
        "devices": fleet.cli.devices,
        "duration_s": (secs * 100.0).round() / 100.0,
        "interval_ms": fleet.cli.interval.as_millis() as u64,
        "seed": seed,
        "connects": get(&s.connects),
        "connect_failures": get(&s.connect_failures),
        "publishes": publishes,
        "publish_rate": (publishes as f64 / secs * 10.0).round() / 10.0,
        "readings_valid": get(&s.readings_valid),
        "readings_garbage": get(&s.readings_garbage),
        "statuses_online": get(&s.statuses),
        "drops": get(&s.drops),
        "disconnect_mode": fleet.cli.disconnect_mode.name(),
        "connections_lost": get(&s.connections_lost),
        "keep_alive_timeouts": get(&s.keep_alive_timeouts),
        "pings": get(&s.pings),
        "pongs": get(&s.pongs),
        "bytes_out": get(&s.bytes_out),
    });
    // Dropping the fleet closes the log channel, so its thread finishes.
    drop(fleet);
    summary
}

async fn report(fleet: Arc<Fleet>) {
    let every = fleet.cli.report_every;
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    let mut last = (0u64, Instant::now());
    loop {
        tick.tick().await;
        let s = &fleet.stats;
        let published = get(&s.publishes);
        let now = Instant::now();
        let rate = (published - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
        last = (published, now);
        eprintln!(
            "[{:7.1}s] connected {}/{}, published {} ({:.1} msg/s), connects {}, failures {}, drops {}, lost {}",
            fleet.start.elapsed().as_secs_f64(),
            get(&s.connected),
            fleet.cli.devices,
            published,
            rate,
            get(&s.connects),
            get(&s.connect_failures),
            get(&s.drops),
            get(&s.connections_lost),
        );
    }
}

/// One simulated board: boot, then connect / run / back off until the fleet's end.
async fn device(fleet: Arc<Fleet>, index: usize, seed: u64) {
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0xa076_1d64_78bd_642f));
    let name = format!("{}{:04}", fleet.cli.device_prefix, index);
    // The low 24 bits of the chip id, as `ESP.getChipId() & 0xFFFFFF`.
    let client_id = format!("{name}-{:06x}", rng.next() & 0xff_ffff);
    let mut sensor = Sensor::new(&mut rng);
    let boot = fleet.start + fleet.cli.ramp.mul_f64(rng.unit());
    sleep_until(boot.min(fleet.end)).await;

    let mut backoff_ms = BACKOFF_MIN_MS;
    while Instant::now() < fleet.end {
        let (outcome, connected_for) = match connect(&fleet, &name, &client_id).await {
            Ok(conn) => {
                inc(&fleet.stats.connects);
                fleet.stats.connected.fetch_add(1, Ordering::Relaxed);
                let since = Instant::now();
                let o = session(&fleet, conn, &name, &client_id, &mut rng, &mut sensor).await;
                fleet.stats.connected.fetch_sub(1, Ordering::Relaxed);
                (o, since.elapsed())
            }
            Err(_) => {
                inc(&fleet.stats.connect_failures);
                (Outcome::Lost, Duration::ZERO)
            }
        };
        if outcome == Outcome::Finished {
            return;
        }
        if connected_for >= STABLE_CONNECTION {
            backoff_ms = BACKOFF_MIN_MS;
        }
        // scheduleRetry(): wait backoff minus up to 25 % jitter, then double it.
        let wait = backoff_ms - rng.below(backoff_ms / 4 + 1);
        backoff_ms = if backoff_ms >= BACKOFF_MAX_MS / 2 {
            BACKOFF_MAX_MS
        } else {
            backoff_ms * 2
        };
        sleep_until((Instant::now() + Duration::from_millis(wait)).min(fleet.end)).await;
    }
}

/// A DHT22 that drifts slowly, read once per interval.
struct Sensor {
    temperature: f64,
    humidity: f64,
}

impl Sensor {
    fn new(rng: &mut Rng) -> Sensor {
        Sensor {
            temperature: 18.0 + rng.unit() * 8.0,
            humidity: 35.0 + rng.unit() * 30.0,
        }
    }

    fn read(&mut self, rng: &mut Rng) -> (String, String) {
        self.temperature = (self.temperature + (rng.unit() - 0.5) * 0.6).clamp(-40.0, 80.0);
        self.humidity = (self.humidity + (rng.unit() - 0.5) * 2.0).clamp(0.0, 100.0);
        // dtostrf(value, 1, 1, buf): one decimal, no padding.
        (
            format!("{:.1}", self.temperature),
            format!("{:.1}", self.humidity),
        )
    }
}

/// What a broken sensor or a sloppy sketch puts on the wire.
fn garbage(rng: &mut Rng) -> &'static str {
    const GARBAGE: [&str; 8] = ["nan", "", "999.9", "-999.9", "ERR", "25,5", "hot", "NaN"];
    GARBAGE[rng.below(GARBAGE.len() as u64) as usize]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The run is over and the device disconnected cleanly.
    Finished,
    /// The connection ended (forced drop, broker closed it, keep-alive timeout).
    Lost,
}

struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
}

fn status_topic(fleet: &Fleet, name: &str) -> String {
    format!("{}{name}/status", fleet.cli.prefix)
}

/// `PubSubClient::connect(id, user, pass, willTopic, 1, true, "offline", true)`.
async fn connect(fleet: &Fleet, name: &str, client_id: &str) -> Result<Conn, String> {
    let attempt = async {
        let stream = TcpStream::connect(fleet.addr)
            .await
            .map_err(|e| e.to_string())?;
        // PubSubClient writes each packet with one write(); with Nagle off, as lwIP sends
        // small segments at once too.
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut out = BytesMut::new();
        encode(
            &Packet::Connect(Box::new(Connect {
                bridge: false,
                properties: None,
                protocol: ProtocolLevel::V311,
                clean_session: true,
                keep_alive: fleet.cli.keep_alive,
                client_id: client_id.into(),
                will: Some(LastWill {
                    properties: None,
                    topic: status_topic(fleet, name).into(),
                    payload: Bytes::from_static(b"offline"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                }),
                username: fleet.cli.username.clone(),
                password: fleet.cli.password.clone().map(Bytes::from),
            })),
            &mut out,
        );
        wr.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut conn = Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(256),
        };
        loop {
            match decode(&mut conn.buf, 64 * 1024).map_err(|e| e.to_string())? {
                Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Accepted => {
                    return Ok(conn)
                }
                Some(Packet::ConnAck(a)) => return Err(format!("CONNACK {:?}", a.code)),
                Some(other) => return Err(format!("{} before CONNACK", other.name())),
                None => {}
            }
            match conn.rd.read_buf(&mut conn.buf).await {
                Ok(0) => return Err("closed before CONNACK".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(SOCKET_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err("no CONNACK within the socket timeout".into()),
    }
}

/// A QoS 0 PUBLISH as PubSubClient's `publish(topic, payload, retained)` sends it.
fn publish_packet(topic: &str, payload: &str, retain: bool) -> BytesMut {
    let mut out = BytesMut::new();
    encode(
        &Packet::Publish(Publish {
            properties: None,
            dup: false,
            qos: QoS::AtMostOnce,
            retain,
            topic: topic.into(),
            pid: None,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }),
        &mut out,
    );
    out
}

/// The connected part of the sketch's `loop()`: readings every interval, keep-alive,
/// incoming packets; ends at the fleet's end (DISCONNECT) or when the connection is lost.
async fn session(
    fleet: &Fleet,
    mut conn: Conn,
    name: &str,
    client_id: &str,
    rng: &mut Rng,
    sensor: &mut Sensor,
) -> Outcome {
    let cli = &fleet.cli;
    let stats = &fleet.stats;
    let keep_alive = Duration::from_secs(u64::from(cli.keep_alive));
    let status = status_topic(fleet, name);
    let t_topic = format!("{}{name}/temperature", cli.prefix);
    let h_topic = format!("{}{name}/humidity", cli.prefix);
    let legacy = format!("{}{name}/dht", cli.legacy_prefix);

    // Right after connect: the retained "online".
    if send(fleet, &mut conn, &publish_packet(&status, "online", true))
        .await
        .is_err()
    {
        inc(&stats.connections_lost);
        return Outcome::Lost;
    }
    inc(&stats.statuses);
    fleet.log(
        json!({"t_ms": fleet.ms(), "device": name, "client_id": client_id,
        "topic": status, "payload": "online", "retain": true, "kind": "status"}),
    );

    let mut last_in = Instant::now();
    let mut last_out = Instant::now();
    let mut ping_outstanding = false;
    // First reading at once (publishDue), then every interval.
    let mut next_reading = Instant::now();
    loop {
        let now = Instant::now();
        if now >= fleet.end {
            let _ = send(fleet, &mut conn, &{
                let mut b = BytesMut::new();
                encode(&Packet::Disconnect, &mut b);
                b
            })
            .await;
            let _ = conn.wr.shutdown().await;
            return Outcome::Finished;
        }

        // PubSubClient::loop(): nothing heard or nothing sent for a keep-alive.
        if now.duration_since(last_in) > keep_alive || now.duration_since(last_out) > keep_alive {
            if ping_outstanding {
                inc(&stats.keep_alive_timeouts);
                return Outcome::Lost;
            }
            let mut b = BytesMut::new();
            encode(&Packet::PingReq, &mut b);
            if send(fleet, &mut conn, &b).await.is_err() {
                inc(&stats.connections_lost);
                return Outcome::Lost;
            }
            inc(&stats.pings);
            last_out = now;
            last_in = now;
            ping_outstanding = true;
        }

        if now >= next_reading {
            if rng.unit() < cli.disconnect_rate {
                inc(&stats.drops);
                fleet.log(
                    json!({"t_ms": fleet.ms(), "device": name, "client_id": client_id,
                    "kind": "drop", "mode": cli.disconnect_mode.name()}),
                );
                drop_connection(fleet, conn).await;
                return Outcome::Lost;
            }
            let (t, h) = sensor.read(rng);
            let value = |v: String, rng: &mut Rng| -> (String, &'static str) {
                if rng.unit() < cli.garbage_rate {
                    (garbage(rng).to_string(), "garbage")
                } else {
                    (v, "valid")
                }
            };
            let (t, t_kind) = value(t, rng);
            let (h, h_kind) = value(h, rng);
            let mut messages = vec![
                (t_topic.as_str(), &t, t_kind),
                (h_topic.as_str(), &h, h_kind),
            ];
            if !cli.no_legacy {
                messages.push((legacy.as_str(), &t, t_kind));
            }
            for (topic, payload, kind) in messages {
                if send(fleet, &mut conn, &publish_packet(topic, payload, false))
                    .await
                    .is_err()
                {
                    inc(&stats.connections_lost);
                    return Outcome::Lost;
                }
                inc(if kind == "valid" {
                    &stats.readings_valid
                } else {
                    &stats.readings_garbage
                });
                fleet.log(
                    json!({"t_ms": fleet.ms(), "device": name, "client_id": client_id,
                    "topic": topic, "payload": payload, "kind": kind}),
                );
            }
            last_out = Instant::now();
            let spread = 1.0 + cli.jitter * (rng.unit() * 2.0 - 1.0);
            next_reading = now + cli.interval.mul_f64(spread.max(0.01));
        }

        let ping_due = last_in.min(last_out) + keep_alive + Duration::from_millis(1);
        let wake = next_reading.min(ping_due).min(fleet.end);
        tokio::select! {
            _ = sleep_until(wake) => {}
            r = conn.rd.read_buf(&mut conn.buf) => match r {
                Ok(n) if n > 0 => {
                    last_in = Instant::now();
                    loop {
                        match decode(&mut conn.buf, 64 * 1024) {
                            Ok(Some(Packet::PingResp)) => {
                                inc(&stats.pongs);
                                ping_outstanding = false;
                            }
                            // A device that subscribes to nothing gets nothing else; a
                            // broker that sends it anyway is ignored, as PubSubClient does.
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => {
                                inc(&stats.connections_lost);
                                return Outcome::Lost;
                            }
                        }
                    }
                }
                _ => {
                    inc(&stats.connections_lost);
                    return Outcome::Lost;
                }
            }
        }
    }
}

async fn send(fleet: &Fleet, conn: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
    // PubSubClient's write blocks at most the socket timeout.
    match tokio::time::timeout(SOCKET_TIMEOUT, conn.wr.write_all(bytes)).await {
        Ok(r) => r?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    }
    if bytes.first().is_some_and(|b| b >> 4 == 3) {
        inc(&fleet.stats.publishes);
    }
    fleet
        .stats
        .bytes_out
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Ends the connection without DISCONNECT, so the broker publishes the will.
async fn drop_connection(fleet: &Fleet, mut conn: Conn) {
    match fleet.cli.disconnect_mode {
        DropMode::Fin => {
            let _ = conn.wr.shutdown().await;
        }
        DropMode::Rst => {
            let _ = conn.rd.as_ref().set_zero_linger();
        }
        DropMode::Silent => {
            // Hold the socket without a word until the broker gives up on the keep-alive
            // (1.5 x keep-alive) or the run ends; what the broker sends is discarded.
            let deadline = fleet.end;
            loop {
                tokio::select! {
                    _ = sleep_until(deadline) => break,
                    r = conn.rd.read_buf(&mut conn.buf) => {
                        conn.buf.clear();
                        if !matches!(r, Ok(n) if n > 0) {
                            break;
                        }
                    }
                }
            }
        }
    }
}
