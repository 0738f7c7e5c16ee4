//! Live-reload benchmark (issue 6): prints numbers, is not a timed test.
//!
//! ```sh
//! cargo run --release --example reload_bench             # 10,000 clients, 20 reloads each way
//! cargo run --release --example reload_bench -- --help
//! ```
//!
//! Loopback only, bounded in time (`--timeout`, default 300 s; it takes about a minute). A
//! broker runs in this process from a YAML file and an ACL file in a temporary directory, as
//! `mqtt-broker --config` does (with the file watcher), and `--clients` idle clients, in a
//! child process (this program again, so that each process needs one descriptor per client,
//! not two), stay connected from start to end. Every change is written to a new file that is then renamed
//! over the old one, as editors do, and alternates between an ACL-file swap and a change of
//! limits and log level in the config file (no plugins are configured).
//!
//! 1. Reload latency, `--reloads` times each way: `BrokerHandle::reload_from_file` (the timed
//!    call: parse, validate, build and swap the runtime, apply limits to every session), then
//!    the file watcher (from the start of the write to the new generation live, polled every
//!    millisecond; includes the watcher's 250 ms debounce).
//! 2. Publish throughput around reloads: `--pairs` publishers, each to its own subscriber, as
//!    fast as the broker delivers (QoS 0 with a window of undelivered messages, then QoS 1
//!    with a window of unacknowledged ones), counted at the subscribers in 100 ms buckets:
//!    3 s before, 6 watcher reloads 1 s apart, 3 s after. The worst bucket is reported
//!    relative to the median bucket before the reloads.
//! 3. Disconnects: every idle client watches its socket, and the broker's connection count is
//!    compared with the number of clients: both must show that nobody was disconnected.
//!
//! Each process raises its open-file limit as far as it may; where that is not enough it says
//! so and asks for `ulimit -n 65536`.

use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use mqtt_broker::config::Config;
use mqtt_broker::protocol::*;
use mqtt_broker::{Broker, BrokerHandle};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

#[path = "common/client.rs"]
mod client;
use client::{publish_pid, raise_nofile, Client};

#[derive(Parser, Debug)]
#[command(
    name = "reload_bench",
    about = "Reload latency and publish throughput during reloads with many connected clients (loopback only)"
)]
struct Args {
    /// Idle clients connected from start to end.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Reloads timed each way (explicit call, file watcher).
    #[arg(long, default_value_t = 20)]
    reloads: usize,
    /// Publisher/subscriber pairs of the throughput phases.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Hard limit on the whole run, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Set `security.reauthorize_on_reload: false` (default true: after each reload every
    /// connection re-runs authentication with its credentials).
    #[arg(long)]
    no_reauthorize: bool,
    /// Internal: run as the idle-client process, connected to this address.
    #[arg(long, hide = true)]
    idle_child: Option<SocketAddr>,
}

/// Throughput bucket.
const BUCKET: Duration = Duration::from_millis(100);
/// Reloads during each throughput phase, and their spacing.
const PHASE_RELOADS: usize = 6;
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Measured time before and after the reloads of a throughput phase.
const STEADY: Duration = Duration::from_secs(3);
/// Pause after each timed reload, for the connections' re-checks to finish before the next.
const SETTLE: Duration = Duration::from_millis(300);
/// How long a reload may take before the run is declared broken.
const RELOAD_LIMIT: Duration = Duration::from_secs(10);
/// QoS 0: messages a publisher may be ahead of its subscriber; QoS 1: unacknowledged ones.
const QOS0_WINDOW: u64 = 4096;
const QOS1_WINDOW: usize = 64;
/// QoS 0 PUBLISH packets per write.
const QOS0_BATCH: u64 = 32;
const PAYLOAD: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Change {
    /// A new ACL file renamed over `acl` (the config is unchanged).
    Acl,
    /// `limits`, `performance.message_queue_limit` and `log.level` changed in the config file.
    LimitsAndLog,
}

impl Change {
    fn label(self) -> &'static str {
        match self {
            Change::Acl => "ACL file swap",
            Change::LimitsAndLog => "limits + log level",
        }
    }
}

/// The config file and the ACL file it names, in a fresh temporary directory.
struct Files {
    dir: PathBuf,
    config: PathBuf,
    acl: PathBuf,
    config_version: u32,
    acl_version: u32,
    changes: u32,
    reauthorize: bool,
}

/// Writes a new file next to `path` and renames it over `path`, as editors do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

impl Files {
    fn create(reauthorize: bool) -> Files {
        let dir = std::env::temp_dir().join(format!("mqtt-reload-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let files = Files {
            config: dir.join("broker.yaml"),
            acl: dir.join("acl"),
            dir,
            config_version: 0,
            acl_version: 0,
            changes: 0,
            reauthorize,
        };
        std::fs::write(&files.acl, acl_text(0)).expect("write");
        std::fs::write(&files.config, config_text(0, reauthorize)).expect("write");
        files
    }

    /// Makes the next change, alternating an ACL swap and a limits + log level change.
    fn next_change(&mut self) -> Change {
        self.changes += 1;
        if self.changes % 2 == 1 {
            self.acl_version += 1;
            replace(&self.acl, &acl_text(self.acl_version));
            Change::Acl
        } else {
            self.config_version += 1;
            replace(
                &self.config,
                &config_text(self.config_version, self.reauthorize),
            );
            Change::LimitsAndLog
        }
    }
}

/// The broker config, version `v`. `publish_rate: 0`: the default of 1,000 PUBLISH per
/// second per client would throttle the publishers.
fn config_text(v: u32, reauthorize: bool) -> String {
    let level = if v % 2 == 0 { "warn" } else { "error" };
    format!(
        "# reload_bench, version {v}\n\
         listeners:\n  - {{name: bench, bind: '127.0.0.1:0'}}\n\
         admin:\n  enabled: false\n\
         limits:\n  publish_rate: 0\n  publish_bytes_rate: 0\n  max_subscriptions: {}\n  max_queued_bytes: 268435456\n\
         performance:\n  message_queue_limit: {}\n\
         security:\n  acl_file: acl\n  reauthorize_on_reload: {reauthorize}\n\
         log:\n  level: {level}\n",
        100 + v,
        100_000 + v,
    )
}

/// The ACL file, version `v`: the benchmark's topics, and `probe/{v}` readable.
fn acl_text(v: u32) -> String {
    format!("# reload_bench ACL, version {v}\npattern readwrite bench/#\npattern read probe/{v}\n")
}

/// min, median, p99 (nearest rank), max.
fn summary(samples: &[Duration]) -> [Duration; 4] {
    let mut s = samples.to_vec();
    s.sort();
    let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    [s[0], rank(0.5), rank(0.99), s[s.len() - 1]]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn latency_rows(label: &str, samples: &[(Change, Duration)]) {
    let all: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    for (what, subset) in [
        ("all".to_string(), all),
        (
            Change::Acl.label().to_string(),
            samples
                .iter()
                .filter(|s| s.0 == Change::Acl)
                .map(|s| s.1)
                .collect(),
        ),
        (
            Change::LimitsAndLog.label().to_string(),
            samples
                .iter()
                .filter(|s| s.0 == Change::LimitsAndLog)
                .map(|s| s.1)
                .collect(),
        ),
    ] {
        if subset.is_empty() {
            continue;
        }
        let [min, med, p99, max] = summary(&subset);
        println!(
            "| {label} | {what} | {} | {} | {} | {} | {} |",
            subset.len(),
            ms(min),
            ms(med),
            ms(p99),
            ms(max)
        );
    }
}

/// Waits for generation `target`; returns the time since `start`.
async fn wait_generation(broker: &BrokerHandle, target: u64, start: Instant) -> Duration {
    while broker.generation() < target {
        if start.elapsed() > RELOAD_LIMIT {
            fail(&format!(
                "generation {target} not live after {RELOAD_LIMIT:?}: {:?}",
                broker.last_reload()
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

fn fail(why: &str) -> ! {
    eprintln!("reload_bench: {why}");
    std::process::exit(1);
}

// ---------------------------------------------------------------------------------------
// Idle clients
// ---------------------------------------------------------------------------------------

/// The idle clients, in the child process.
struct IdleClients {
    /// Clients whose socket was closed (or reset) by the broker.
    closed: Arc<AtomicU64>,
    /// Bytes received by clients that subscribed to nothing.
    unexpected: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

async fn connect_idle(addr: SocketAddr, n: usize) -> IdleClients {
    let closed = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(128));
    let mut connecting = Vec::with_capacity(n);
    for i in 0..n {
        let gate = gate.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            // Keep-alive 0: silent for the whole run without being closed for it.
            let c = Client::connect_with(addr, &format!("idle-{i}"), true, 0).await;
            // Closed with RST at the end: no TIME_WAIT pile-up between runs.
            let _ = c.stream.set_zero_linger();
            c.stream
        }));
    }
    let mut tasks = Vec::with_capacity(n);
    for c in connecting {
        let mut stream = c.await.expect("connect task");
        let (closed, unexpected) = (closed.clone(), unexpected.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(k) => {
                        unexpected.fetch_add(k as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    IdleClients {
        closed,
        unexpected,
        tasks,
    }
}

/// The child process: connects the idle clients, says `connected N`, then answers each
/// `report` line on stdin with `closed C unexpected B`, and exits when stdin closes.
async fn idle_child(addr: SocketAddr, n: usize) {
    if let Err(why) = raise_nofile(n as u64 + 256) {
        need_ulimit(&why);
    }
    let idle = connect_idle(addr, n).await;
    println!("connected {}", idle.tasks.len());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "report" {
            println!(
                "closed {} unexpected {}",
                idle.closed.load(Ordering::Relaxed),
                idle.unexpected.load(Ordering::Relaxed)
            );
        }
    }
    // The parent is done; exiting resets every connection (zero linger).
}

/// The idle-client process, seen from the benchmark.
struct Idle {
    _child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    connected: usize,
}

impl Idle {
    async fn start(addr: SocketAddr, n: usize, timeout: u64) -> Idle {
        let exe = std::env::current_exe().unwrap_or_else(|e| fail(&e.to_string()));
        let mut child = tokio::process::Command::new(exe)
            .args(["--idle-child", &addr.to_string()])
            .args([
                "--clients",
                &n.to_string(),
                "--timeout",
                &timeout.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("cannot start the client process: {e}")));
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = stdout.next_line().await.ok().flatten().unwrap_or_default();
        let Some(connected) = line.strip_prefix("connected ").and_then(|n| n.parse().ok()) else {
            fail("the client process did not connect its clients");
        };
        Idle {
            _child: child,
            stdin,
            stdout,
            connected,
        }
    }

    /// (closed connections, bytes received unasked) so far.
    async fn report(&mut self) -> (u64, u64) {
        self.stdin
            .write_all(b"report\n")
            .await
            .expect("client process");
        let line = self
            .stdout
            .next_line()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut words = line.split_whitespace().skip(1).step_by(2);
        let mut next = || words.next().and_then(|w| w.parse().ok());
        match (next(), next()) {
            (Some(c), Some(u)) => (c, u),
            _ => fail(&format!(
                "unexpected report from the client process: {line:?}"
            )),
        }
    }
}

fn need_ulimit(why: &str) -> ! {
    eprintln!(
        "reload_bench: {why}. Run `ulimit -n 65536` in this shell first (or pass a smaller \
         --clients)."
    );
    std::process::exit(2);
}

// ---------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------

struct Pair {
    received: AtomicU64,
    progress: Notify,
}

struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

fn publish_packet(topic: &str, qos: QoS, pid: Option<u16>) -> Packet {
    Packet::Publish(Publish {
        properties: None,
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pid,
        payload: Bytes::from(vec![b'x'; PAYLOAD]),
    })
}

/// Connects `pairs` subscribers and publishers and starts them; every delivered PUBLISH is
/// counted in `delivered`.
async fn start_traffic(
    addr: SocketAddr,
    pairs: usize,
    qos: QoS,
    delivered: Arc<AtomicU64>,
) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..pairs {
        let topic = format!("bench/{i}");
        let q = qos as u8;
        let mut sub = Client::connect_with(addr, &format!("sub-q{q}-{i}"), true, 0).await;
        let code = sub.subscribe(1, &topic, qos).await;
        if code != SubAckCode::Granted(qos) {
            fail(&format!("subscription to {topic} refused: {code:?}"));
        }
        let mut publ = Client::connect_with(addr, &format!("pub-q{q}-{i}"), true, 0).await;
        let pair = Arc::new(Pair {
            received: AtomicU64::new(0),
            progress: Notify::new(),
        });
        let (p, d) = (pair.clone(), delivered.clone());
        tasks.push(tokio::spawn(async move {
            let mut acks = BytesMut::new();
            loop {
                if !sub.read_more().await {
                    fail("a subscriber was disconnected");
                }
                let mut n = 0;
                sub.for_each_frame(|first, body| {
                    if first >> 4 == 3 {
                        n += 1;
                        if (first >> 1) & 3 == 1 {
                            acks.put_slice(&[0x40, 2]);
                            acks.put_u16(publish_pid(body));
                        }
                    }
                });
                if !acks.is_empty() {
                    sub.stream.write_all(&acks).await.expect("write");
                    acks.clear();
                }
                p.received.fetch_add(n, Ordering::Relaxed);
                d.fetch_add(n, Ordering::Relaxed);
                p.progress.notify_one();
            }
        }));
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            if qos == QoS::AtMostOnce {
                let mut batch = BytesMut::new();
                for _ in 0..QOS0_BATCH {
                    encode(&publish_packet(&topic, qos, None), &mut batch);
                }
                let batch = batch.freeze();
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if sent + QOS0_BATCH > pair.received.load(Ordering::Relaxed) + QOS0_WINDOW {
                        let _ = tokio::time::timeout(BUCKET, pair.progress.notified()).await;
                        continue;
                    }
                    publ.stream.write_all(&batch).await.expect("write");
                    sent += QOS0_BATCH;
                }
            } else {
                let mut pid: u16 = 0;
                let mut inflight = 0;
                let mut out = BytesMut::new();
                while !stop.load(Ordering::Relaxed) {
                    while inflight < QOS1_WINDOW {
                        pid = pid.checked_add(1).unwrap_or(1);
                        encode(&publish_packet(&topic, qos, Some(pid)), &mut out);
                        inflight += 1;
                    }
                    if !out.is_empty() {
                        publ.stream.write_all(&out).await.expect("write");
                        out.clear();
                    }
                    if !publ.read_more().await {
                        fail("a publisher was disconnected");
                    }
                    publ.for_each_frame(|first, _| {
                        if first >> 4 == 4 {
                            inflight -= 1;
                        }
                    });
                }
            }
        }));
    }
    Traffic { stop, tasks }
}

/// One 100 ms bucket: when it ended and the delivery rate in it.
struct Bucket {
    start: Instant,
    end: Instant,
    rate: f64,
}

/// One reload of a throughput phase.
struct Reload {
    change: Change,
    /// When the write began.
    written: Instant,
    live: Instant,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn throughput_phase(
    broker: &BrokerHandle,
    files: &mut Files,
    pairs: usize,
    qos: QoS,
) -> (Vec<Bucket>, Vec<Reload>) {
    let delivered = Arc::new(AtomicU64::new(0));
    let traffic = start_traffic(broker.local_addr(), pairs, qos, delivered.clone()).await;
    // Warm-up, not measured.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (delivered, sampling) = (delivered.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BUCKET);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let (mut at, mut count) = (Instant::now(), delivered.load(Ordering::Relaxed));
            let mut buckets = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                tick.tick().await;
                let (now, c) = (Instant::now(), delivered.load(Ordering::Relaxed));
                buckets.push(Bucket {
                    start: at,
                    end: now,
                    rate: (c - count) as f64 / (now - at).as_secs_f64(),
                });
                (at, count) = (now, c);
            }
            buckets
        })
    };
    tokio::time::sleep(STEADY).await;
    let mut reloads = Vec::new();
    for _ in 0..PHASE_RELOADS {
        let begin = Instant::now();
        let target = broker.generation() + 1;
        let written = Instant::now();
        let change = files.next_change();
        wait_generation(broker, target, written).await;
        reloads.push(Reload {
            change,
            written,
            live: Instant::now(),
        });
        tokio::time::sleep_until((begin + RELOAD_EVERY).into()).await;
    }
    tokio::time::sleep(STEADY).await;
    sampling.store(false, Ordering::Relaxed);
    let buckets = sampler.await.expect("sampler");
    let connections = broker.stats().connections.total;
    traffic.stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for t in traffic.tasks {
        t.abort();
    }
    println!("  (connections during the phase: {connections})");
    (buckets, reloads)
}

fn report_phase(title: &str, buckets: &[Bucket], reloads: &[Reload]) -> f64 {
    let first_write = reloads[0].written;
    let after = reloads[reloads.len() - 1].written + RELOAD_EVERY;
    let before: Vec<f64> = buckets
        .iter()
        .filter(|b| b.end <= first_write)
        .map(|b| b.rate)
        .collect();
    let during: Vec<&Bucket> = buckets
        .iter()
        .filter(|b| b.end > first_write && b.start < after)
        .collect();
    let later: Vec<f64> = buckets
        .iter()
        .filter(|b| b.start >= after)
        .map(|b| b.rate)
        .collect();
    let base = median(before.clone());
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let during_rates: Vec<f64> = during.iter().map(|b| b.rate).collect();
    let worst = min(&during_rates);
    println!("\n### {title}\n");
    println!("| phase | buckets | median msg/s | worst bucket msg/s | worst / median before |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in [
        ("before reloads", &before),
        ("during reloads", &during_rates),
        ("after reloads", &later),
    ] {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.2} |",
            v.len(),
            median(v.clone()),
            min(v),
            min(v) / base
        );
    }
    println!("\nPer reload (worst bucket from the write to 500 ms after the new generation went live):\n");
    println!("| # | change | write to live, ms | worst bucket msg/s | / median before |");
    println!("|---:|---|---:|---:|---:|");
    for (i, r) in reloads.iter().enumerate() {
        let w: Vec<f64> = buckets
            .iter()
            .filter(|b| b.end > r.written && b.start < r.live + Duration::from_millis(500))
            .map(|b| b.rate)
            .collect();
        println!(
            "| {} | {} | {} | {:.0} | {:.2} |",
            i + 1,
            r.change.label(),
            ms(r.live - r.written),
            min(&w),
            min(&w) / base
        );
    }
    let timeline: Vec<String> = during
        .iter()
        .map(|b| {
            let mark = if reloads.iter().any(|r| r.live > b.start && r.live <= b.end) {
                "*"
            } else {
                ""
            };
            format!("{:.0}{mark}", b.rate / 1000.0)
        })
        .collect();
    println!(
        "\nBuckets during the reloads, k msg/s (* = a new generation went live in it):\n{}",
        timeline.join(" ")
    );
    worst / base
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run(args: Args) -> bool {
    let started = Instant::now();
    let mut files = Files::create(!args.no_reauthorize);
    let config = Config::load(&files.config).unwrap_or_else(|e| fail(&e.to_string()));
    // The broker's own logging, so that a log level change reloads a real filter.
    mqtt_broker::logging::init(&config.log);
    let broker = Broker::start(config)
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
    let addr = broker.local_addr();
    println!(
        "reload_bench: {} clients, reauthorize_on_reload: {}, {} CPU(s), load average {}",
        args.clients,
        !args.no_reauthorize,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );

    let t = Instant::now();
    let mut idle = Idle::start(addr, args.clients, args.timeout).await;
    let connected = broker.stats().connections.total;
    println!(
        "connected {} idle clients in {:.1} s (broker connections: {connected})",
        idle.connected,
        t.elapsed().as_secs_f64()
    );

    // 1. Latency.
    let mut explicit = Vec::new();
    for _ in 0..args.reloads {
        let change = files.next_change();
        let t = Instant::now();
        if let Err(e) = broker.reload_from_file(&files.config).await {
            fail(&format!("reload refused: {e}"));
        }
        explicit.push((change, t.elapsed()));
        tokio::time::sleep(SETTLE).await;
    }
    broker
        .watch_config(files.config.clone())
        .unwrap_or_else(|e| fail(&e.to_string()));
    let mut watched = Vec::new();
    for _ in 0..args.reloads {
        let target = broker.generation() + 1;
        // From the start of the write: a delay of this thread between the rename and the
        // first poll must not shorten the measurement.
        let start = Instant::now();
        let change = files.next_change();
        watched.push((change, wait_generation(&broker, target, start).await));
        tokio::time::sleep(SETTLE).await;
    }
    println!("\n### Reload latency, {} connected clients\n", args.clients);
    println!("| trigger | change | reloads | min ms | median ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    latency_rows("`reload_from_file` call", &explicit);
    latency_rows("file watcher: write to generation live", &watched);

    // 2. Throughput.
    let (b0, r0) = throughput_phase(&broker, &mut files, args.pairs, QoS::AtMostOnce).await;
    let worst0 = report_phase(
        &format!(
            "QoS 0 throughput, {} publishers → {} subscribers, {} idle clients",
            args.pairs, args.pairs, args.clients
        ),
        &b0,
        &r0,
    );
    let (b1, r1) = throughput_phase(&broker, &mut files, args.pairs, QoS::AtLeastOnce).await;
    let worst1 = report_phase(
        &format!(
            "QoS 1 throughput, {} publishers → {} subscribers, {} idle clients",
            args.pairs, args.pairs, args.clients
        ),
        &b1,
        &r1,
    );

    // The ACL swaps were applied: only the newest probe topic is readable.
    let mut probe = Client::connect_with(addr, "probe", true, 0).await;
    let v = files.acl_version;
    let acl_ok = probe
        .subscribe(1, &format!("probe/{v}"), QoS::AtMostOnce)
        .await
        == SubAckCode::Granted(QoS::AtMostOnce)
        && probe
            .subscribe(2, &format!("probe/{}", v - 1), QoS::AtMostOnce)
            .await
            == SubAckCode::Failure;
    drop(probe);

    // 3. Disconnects. The traffic clients are gone; wait for the broker to count them out.
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.stats().connections.total > args.clients as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connections = broker.stats().connections.total;
    let (closed, unexpected) = idle.report().await;
    let generation = broker.generation();
    let status = broker.last_reload();
    println!("\n### Result\n");
    println!(
        "- reloads: {} successful (generation {generation}), last status ok: {}",
        generation - 1,
        status.ok
    );
    println!(
        "- ACL swaps in force (probe/{v} readable, probe/{} not): {acl_ok}",
        v - 1
    );
    println!(
        "- worst 100 ms bucket during reloads / median before: QoS 0 {worst0:.2}, QoS 1 {worst1:.2}"
    );
    println!(
        "- disconnects among the {} idle clients: {closed} (broker connections at start {connected}, at end {connections}; bytes they received unasked: {unexpected})",
        args.clients
    );
    println!(
        "- run time {:.0} s, load average after {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    let _ = std::fs::remove_dir_all(&files.dir);
    closed == 0
        && connected == args.clients as u64
        && connections == connected
        && acl_ok
        && status.ok
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let limit = Duration::from_secs(args.timeout);
    if let Some(addr) = args.idle_child {
        let _ = tokio::time::timeout(limit, idle_child(addr, args.clients)).await;
        return;
    }
    // The broker's side of every connection: one descriptor per client.
    if let Err(why) = raise_nofile(args.clients as u64 + args.pairs as u64 * 4 + 256) {
        need_ulimit(&why);
    }
    match tokio::time::timeout(limit, run(args)).await {
        Ok(true) => std::process::exit(0),
        Ok(false) => fail("FAILED: see the result above"),
        Err(_) => fail(&format!("did not finish within {limit:?}")),
    }
}
