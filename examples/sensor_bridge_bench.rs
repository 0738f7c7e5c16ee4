//! Throughput of raw QoS 0 sensor readings through the broker with the sensor-bridge plugin,
//! in JavaScript (plugins/sensor-bridge) and in C (plugins/sensor-bridge-c, same rules and
//! config), against the same load with no plugin, side by side in one run.
//!
//! N simulated devices (the firmware's topics and payloads: `sensors/{device}/temperature`,
//! `sensors/{device}/humidity`, the legacy `sensors_{device}/dht`, bare one-decimal
//! numbers, some garbage) publish as fast as the broker reads them for a fixed time; one
//! subscriber on `#` receives everything. With a bridge (the plugin entry of
//! config/sensor-bridge.yaml, for the C one with only `path` changed: split topics kept and
//! bridged, legacy topic replaced), each reading cycle of 3 raw messages in gives 5 out (2
//! raw, 3 structured or error); without it, 3 out. With `--replace-raw` every rule replaces
//! its raw message, so 3 in give 3 out with a bridge too.
//!
//! The load is a closed loop: devices write as fast as they can while fewer than 20,000
//! messages are on their way to the subscriber, so the run measures what the broker sustains
//! end to end rather than how much fits in socket buffers and queues. "in" is raw readings the
//! broker read per second (until it had read the last one); "out" is messages the subscriber
//! received per second (until the last one). Loopback only, bounded in time: about `runs` × 3
//! × (`duration` + a second), plus a few seconds of per-call measurements.
//!
//! ```sh
//! bash .ci/plugins.sh     # builds plugins/sensor-bridge/sensor-bridge.wasm and plugins/sensor-bridge-c/sensor-bridge-c.wasm
//! cargo run --release --example sensor_bridge_bench
//! cargo run --release --example sensor_bridge_bench -- --devices 200 --duration 10s --runs 3
//! cargo run --release --example sensor_bridge_bench -- --bridges c    # no plugin and C only
//! cargo run --release --example sensor_bridge_bench -- --replace-raw  # structured topics only
//! ```

use bytes::{Bytes, BytesMut};
use clap::Parser;
use mqtt_broker::config::TransportKind;
use mqtt_broker::config::{parse_duration, Config};
use mqtt_broker::hooks::{ClientInfo, Transformer};
use mqtt_broker::plugins::{PluginConfig, PluginHost};
use mqtt_broker::protocol::{
    codec, Connect, LastWill, Packet, ProtocolLevel, Publish, QoS, Subscribe,
};
use mqtt_broker::routing::Message;
use mqtt_broker::{Broker, BrokerHandle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sensor_bridge_bench",
    about = "QoS 0 sensor readings through the broker with the JavaScript and C sensor bridges and without a plugin"
)]
struct Cli {
    /// Simulated devices (one TCP connection each).
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// How long the devices publish in each run.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    duration: Duration,
    /// Runs of each setup (alternating: no plugin, JS bridge, C bridge, no plugin, ...).
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Fraction of readings replaced by garbage (`nan`, empty, `999.9`, text).
    #[arg(long, default_value_t = 0.05)]
    garbage_rate: f64,
    /// Reading cycles (3 messages each) per socket write.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Worker threads of the broker's runtime (the devices and the subscriber get one more).
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    /// The JavaScript sensor-bridge component (default: the example config's path).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// The C sensor-bridge component.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/sensor-bridge-c/sensor-bridge-c.wasm"))]
    c_plugin: PathBuf,
    /// Which bridges to measure beside no plugin: `js,c` (both), `js` or `c`.
    #[arg(long, default_value = "js,c", value_parser = ["js,c", "c,js", "js", "c"])]
    bridges: String,
    /// Also measure this component as "shape only": the bridge's output shape without its work
    /// (plugins/sensor-bridge-c/ceiling.c, built by its build.sh into gen/ceiling.wasm), the
    /// most any transformer producing those messages can reach.
    #[arg(long)]
    ceiling: Option<PathBuf>,
    /// Every rule of the example config replaces its raw message (`replace: true`): 3
    /// messages out per 3 in with a bridge, as in a deployment that wants only the
    /// structured topics (default: the example config as it is, 5 out per 3 in).
    #[arg(long)]
    replace_raw: bool,
    /// Only the per-call costs (`calls`) or only the throughput runs (`throughput`).
    #[arg(long, value_parser = ["calls", "throughput"])]
    only: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.devices == 0 || cli.devices > 5000 || cli.batch == 0 || cli.runs == 0 {
        eprintln!("sensor_bridge_bench: --devices 1..=5000, --batch and --runs at least 1");
        return ExitCode::from(2);
    }
    // The plugin entry of config/sensor-bridge.yaml (the README's example rules).
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/sensor-bridge.yaml");
    let mut bridge = match Config::load(&example) {
        Ok(c) => match c.plugins.into_iter().next() {
            Some(p) => p,
            None => {
                eprintln!("{}: no plugin entry", example.display());
                return ExitCode::FAILURE;
            }
        },
        Err(e) => {
            eprintln!("sensor_bridge_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &cli.plugin {
        bridge.path = path.clone();
    }
    if cli.replace_raw {
        if let Some(serde_yaml_ng::Value::Sequence(rules)) = bridge.config.get_mut("rules") {
            for rule in rules {
                if let serde_yaml_ng::Value::Mapping(rule) = rule {
                    rule.insert("replace".into(), true.into());
                }
            }
        }
    }
    // On a busy 2-core machine a descheduled thread can overrun the 10 ms default; the
    // benchmark reports failures rather than measure deadline misses.
    bridge.limits.call_timeout = mqtt_broker::config::ConfigDuration(Duration::from_millis(100));
    // The C bridge: the same entry (same `config:`), another component.
    let mut c_bridge = bridge.clone();
    c_bridge.path = cli.c_plugin.clone();
    let ceiling = cli.ceiling.as_ref().map(|path| {
        let mut entry = bridge.clone();
        entry.name = "ceiling".into();
        entry.path = path.clone();
        // ceiling.c reads only this key: drop every raw message it adds to.
        entry
            .config
            .insert("replace_raw".into(), cli.replace_raw.into());
        entry
    });
    // (name, plugin entry, build command) of each setup, in the order runs alternate.
    let mut setups: Vec<(&str, Option<PluginConfig>)> = vec![("no plugin", None)];
    if cli.bridges.contains("js") {
        setups.push(("sensor-bridge (JS)", Some(bridge)));
    }
    if cli.bridges.contains('c') {
        setups.push(("sensor-bridge-c (C)", Some(c_bridge)));
    }
    if let Some(entry) = ceiling {
        setups.push(("shape only (ceiling)", Some(entry)));
    }
    for (_, entry) in &setups {
        if let Some(entry) = entry {
            if !entry.path.is_file() {
                eprintln!(
                    "{} is missing: run `bash .ci/plugins.sh` first (or the plugin's own build.sh)",
                    entry.path.display()
                );
                return ExitCode::from(2);
            }
        }
    }

    if cli.only.as_deref() != Some("throughput") {
        for (name, entry) in &setups {
            if let Some(entry) = entry {
                per_call_costs(name, entry);
            }
        }
    }
    if cli.only.as_deref() == Some("calls") {
        return ExitCode::SUCCESS;
    }

    let broker_rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.worker_threads.max(1))
        .thread_name("broker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sensor_bridge_bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client_rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("devices")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sensor_bridge_bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    println!(
        "== sensor-bridge throughput (JS and C): {} devices, QoS 0, {:?} per run, {} run(s) per setup, garbage {:.0} %, broker on {} worker thread(s), {} CPU(s)",
        cli.devices,
        cli.duration,
        cli.runs,
        cli.garbage_rate * 100.0,
        cli.worker_threads,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    );
    println!(
        "{:<22} {:>12} {:>12} {:>10} {:>10} {:>8} {:>12} {:>9}",
        "setup", "in msg/s", "out msg/s", "in", "out", "lost", "plugin calls", "failures"
    );
    let mut results: Vec<(usize, Outcome)> = Vec::new();
    for run in 0..cli.runs {
        for (setup, (name, entry)) in setups.iter().enumerate() {
            let with_bridge = entry.is_some();
            let plugins: Vec<PluginConfig> = entry.iter().cloned().collect();
            let broker = match broker_rt.block_on(start(plugins)) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("sensor_bridge_bench: broker: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let outcome = client_rt.block_on(measure(&cli, &broker, with_bridge, run as u64));
            let stats = broker.plugin_stats();
            let calls: u64 = stats.iter().map(|s| s.calls).sum();
            let failures: u64 = stats.iter().map(|s| s.failures).sum();
            println!(
                "{:<22} {:>12.0} {:>12.0} {:>10} {:>10} {:>8} {:>12} {:>9}",
                name,
                outcome.in_rate,
                outcome.out_rate,
                outcome.sent,
                outcome.delivered,
                outcome.expected.saturating_sub(outcome.delivered),
                calls,
                failures
            );
            let dropped = broker.stats().messages.dropped_queue_full;
            if dropped > 0 {
                println!("    ({dropped} messages dropped on a full queue)");
            }
            results.push((setup, outcome));
            broker_rt.block_on(broker.shutdown());
        }
    }
    let mean = |setup: usize, f: fn(&Outcome) -> f64| {
        let v: Vec<f64> = results
            .iter()
            .filter(|r| r.0 == setup)
            .map(|r| f(&r.1))
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (in0, out0) = (mean(0, |o| o.in_rate), mean(0, |o| o.out_rate));
    println!(
        "\nmeans                {:>14} {:>14}",
        "in msg/s", "out msg/s"
    );
    for (setup, (name, _)) in setups.iter().enumerate() {
        let (i, o) = (mean(setup, |o| o.in_rate), mean(setup, |o| o.out_rate));
        println!("{name:<20} {i:>14.0} {o:>14.0}");
    }
    for (setup, (name, _)) in setups.iter().enumerate().skip(1) {
        let (i, o) = (mean(setup, |o| o.in_rate), mean(setup, |o| o.out_rate));
        println!(
            "ratio {name} / no plugin: in {:.1} %, out {:.1} %",
            100.0 * i / in0.max(1.0),
            100.0 * o / out0.max(1.0)
        );
    }
    let index = |name: &str| setups.iter().position(|s| s.0 == name);
    if let (Some(js), Some(c)) = (index("sensor-bridge (JS)"), index("sensor-bridge-c (C)")) {
        println!(
            "C bridge / JS bridge: in {:.1}x",
            mean(c, |o| o.in_rate) / mean(js, |o| o.in_rate).max(1.0)
        );
    }
    if cli.replace_raw {
        println!("(--replace-raw: out carries 3 messages per 3 in, with a bridge and without)");
    } else {
        println!("(out carries 5 messages per 3 in with a bridge, 3 per 3 without)");
    }
    ExitCode::SUCCESS
}

async fn start(plugins: Vec<PluginConfig>) -> Result<BrokerHandle, mqtt_broker::BrokerError> {
    let mut config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        plugins,
        ..Default::default()
    };
    // The defaults throttle each client to 1000 publishes and 1 MiB per second: lift them,
    // so the rate measures the broker, and leave room for bursts to the one subscriber.
    config.limits.publish_rate = 0;
    config.limits.publish_bytes_rate = 0;
    config.limits.max_queued_bytes = 512 << 20;
    config.performance.message_queue_limit = 2_000_000;
    Broker::start(config).await
}

struct Outcome {
    in_rate: f64,
    out_rate: f64,
    sent: u64,
    delivered: u64,
    expected: u64,
}

fn encode(p: &Packet) -> BytesMut {
    let mut b = BytesMut::new();
    codec::encode(p, &mut b);
    b
}

/// CONNECT as PubSubClient sends it for the firmware (level 4, clean, keep-alive 15, will).
async fn connect(
    addr: std::net::SocketAddr,
    id: &str,
    will: Option<&str>,
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let c = Connect {
        bridge: false,
        properties: None,
        protocol: ProtocolLevel::V311,
        clean_session: true,
        keep_alive: 15,
        client_id: id.into(),
        will: will.map(|topic| LastWill {
            properties: None,
            topic: topic.into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        username: None,
        password: None,
    };
    s.write_all(&encode(&Packet::Connect(Box::new(c)))).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack != [0x20, 2, 0, 0] {
        return Err(std::io::Error::other(format!("CONNACK {ack:?}")));
    }
    Ok(s)
}

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

/// `batch` reading cycles of one device, encoded once and written again and again.
fn device_batch(name: &str, batch: usize, garbage_rate: f64, rng: &mut Rng) -> BytesMut {
    const GARBAGE: [&str; 6] = ["nan", "", "999.9", "-999.9", "ERR", "25,5"];
    let mut out = BytesMut::new();
    let mut t = 18.0 + rng.unit() * 8.0;
    let mut h = 35.0 + rng.unit() * 30.0;
    let value = |v: f64, rng: &mut Rng| -> String {
        if rng.unit() < garbage_rate {
            GARBAGE[(rng.next() % GARBAGE.len() as u64) as usize].to_string()
        } else {
            format!("{v:.1}")
        }
    };
    for _ in 0..batch {
        t = (t + (rng.unit() - 0.5) * 0.6).clamp(-40.0, 80.0);
        h = (h + (rng.unit() - 0.5) * 2.0).clamp(0.0, 100.0);
        let tv = value(t, rng);
        let hv = value(h, rng);
        for (topic, payload) in [
            (format!("sensors/{name}/temperature"), &tv),
            (format!("sensors/{name}/humidity"), &hv),
            (format!("sensors_{name}/dht"), &tv),
        ] {
            codec::encode(
                &Packet::Publish(Publish {
                    properties: None,
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: topic.into(),
                    pid: None,
                    payload: Bytes::copy_from_slice(payload.as_bytes()),
                }),
                &mut out,
            );
        }
    }
    out
}

async fn measure(cli: &Cli, broker: &BrokerHandle, with_bridge: bool, seed: u64) -> Outcome {
    let addr = broker.local_addr();
    let received_before = broker.stats().messages.received;

    // The subscriber: counts every PUBLISH and remembers when the last one came.
    let mut sub = match connect(addr, "dashboard", None).await {
        Ok(s) => s,
        Err(e) => panic!("subscriber cannot connect: {e}"),
    };
    sub.write_all(&encode(&Packet::Subscribe(Subscribe {
        options: Vec::new(),
        properties: None,
        pid: 1,
        filters: vec![("#".into(), QoS::AtMostOnce)],
    })))
    .await
    .expect("subscribe");
    let mut suback = [0u8; 5];
    sub.read_exact(&mut suback).await.expect("SUBACK");
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(1 << 20);
            let mut last = Instant::now();
            let mut got_any = false;
            loop {
                // Until the first message the devices are still connecting; after it, three
                // quiet seconds mean everything has arrived.
                let quiet = Duration::from_secs(if got_any { 3 } else { 30 });
                match tokio::time::timeout(quiet, sub.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        let mut k = 0;
                        while let Ok(Some(p)) = codec::decode(&mut buf, usize::MAX) {
                            if matches!(p, Packet::Publish(_)) {
                                k += 1;
                            }
                        }
                        if k > 0 {
                            got_any = true;
                            delivered.fetch_add(k, Ordering::Relaxed);
                            last = Instant::now();
                        }
                    }
                    _ => return last,
                }
            }
        })
    };

    // The devices: connect all, then publish their batch again and again until the end.
    let mut rng = Rng(0x5eed ^ seed);
    let mut streams = Vec::with_capacity(cli.devices);
    for i in 0..cli.devices {
        let name = format!("esp{i:04}");
        let s = connect(
            addr,
            &format!("{name}-{:06x}", rng.next() & 0xff_ffff),
            Some(&format!("sensors/{name}/status")),
        )
        .await
        .unwrap_or_else(|e| panic!("device {i} cannot connect: {e}"));
        let batch = device_batch(&name, cli.batch, cli.garbage_rate, &mut rng).freeze();
        streams.push((s, batch));
    }
    // Closed loop: a device writes its next batch only while fewer than WINDOW messages the
    // subscriber should have got are still on their way, so the run measures the rate the
    // broker sustains end to end instead of filling socket buffers and queues.
    const WINDOW: u64 = 20_000;
    let out_per_cycle: u64 = if with_bridge && !cli.replace_raw {
        5
    } else {
        3
    };
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + cli.duration;
    let per_write = 3 * cli.batch as u64;
    let mut tasks = Vec::new();
    for (mut s, batch) in streams {
        let (sent, delivered) = (sent.clone(), delivered.clone());
        tasks.push(tokio::spawn(async move {
            'run: while Instant::now() < end {
                while (sent.load(Ordering::Relaxed) / 3) * out_per_cycle
                    > delivered.load(Ordering::Relaxed) + WINDOW
                {
                    if Instant::now() >= end {
                        break 'run;
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                sent.fetch_add(per_write, Ordering::Relaxed);
                if s.write_all(&batch).await.is_err() {
                    break;
                }
            }
            s
        }));
    }
    let mut keep = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            keep.push(s);
        }
    }
    let sent = sent.load(Ordering::Relaxed);
    // "In" ends when the broker has read the last reading written (at most WINDOW behind).
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.stats().messages.received - received_before < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let in_elapsed = started.elapsed();
    let last_out = counter.await.unwrap_or_else(|_| Instant::now());
    drop(keep);
    let delivered = delivered.load(Ordering::Relaxed);
    let cycles = sent / 3;
    Outcome {
        in_rate: sent as f64 / in_elapsed.as_secs_f64(),
        out_rate: delivered as f64 / last_out.duration_since(started).as_secs_f64(),
        sent,
        delivered,
        expected: cycles * out_per_cycle,
    }
}

/// Runs `f` repeatedly for about `budget` and returns nanoseconds per call.
fn per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        for _ in 0..20 {
            f();
        }
        n += 20;
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

/// The cost of one `transform` call of `bridge` per kind of message, on one thread.
fn per_call_costs(name: &str, bridge: &PluginConfig) {
    let host = match PluginHost::new(Default::default()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("sensor_bridge_bench: engine: {e}");
            return;
        }
    };
    let set = match host.load(std::slice::from_ref(bridge)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sensor_bridge_bench: {e}");
            return;
        }
    };
    let Some(plugin) = set.plugins().first() else {
        return;
    };
    let client = ClientInfo {
        client_id: Arc::from("esp0000-1a2b3c"),
        username: None,
        peer: std::net::SocketAddr::from(([127, 0, 0, 1], 50000)),
        transport: TransportKind::Tcp,
        tls_identity: None,
        protocol: ProtocolLevel::V311,
        clean_session: true,
    };
    println!("== per-call cost of {name}'s transform (one thread, instance from the pool)");
    for (what, topic, payload) in [
        ("valid reading, kept", "sensors/esp0000/temperature", "25.5"),
        ("garbage reading", "sensors/esp0000/humidity", "nan"),
        ("legacy, replaced", "sensors_esp0000/dht", "25.5"),
        ("topic of no rule", "sensors/esp0000/status", "online"),
    ] {
        let m = Message::new(
            topic,
            Bytes::from_static(payload.as_bytes()),
            QoS::AtMostOnce,
            false,
        );
        let ns = per_call(Duration::from_secs(1), || {
            let _ = plugin.transform(&client, &m);
        });
        println!(
            "{what:<22} {topic:<30} {payload:<8} {:>9.1} µs/call",
            ns / 1000.0
        );
    }
    let s = plugin.stats();
    if s.failures > 0 {
        println!("    ({} of {} calls failed)", s.failures, s.calls);
        if let Some(last) = s.recent_errors.first() {
            println!("    (last failure: {last:?})");
        }
    }
    println!();
}
