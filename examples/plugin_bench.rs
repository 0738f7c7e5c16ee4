//! Benchmark of the Wasm plugin host: per-call cost of each hook of each example plugin,
//! instantiation and load times, and QoS 0 publish throughput through a broker with an
//! authorizer and a transformer plugin against the same broker without plugins.
//!
//! Build the example plugins first (`bash .ci/plugins.sh`), then:
//!
//! ```sh
//! cargo run --release --example plugin_bench            # everything
//! cargo run --release --example plugin_bench -- calls   # per-call costs only
//! cargo run --release --example plugin_bench -- publish # throughput only
//! ```

use bytes::BytesMut;
use mqtt_broker::config::{Config, TransportKind};
use mqtt_broker::hooks::{
    AclAction, AclRequest, Authenticator, Authorizer, ClientInfo, Credentials, Transformer,
};
use mqtt_broker::plugins::{ByteSize, PluginConfig, PluginHost, WasmPlugin};
use mqtt_broker::protocol::{codec, Connect, Packet, ProtocolLevel, Publish, QoS, Subscribe};
use mqtt_broker::routing::Message;
use mqtt_broker::{Broker, BrokerHandle};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example(name: &str) -> PathBuf {
    let p = root()
        .join("plugins")
        .join(name)
        .join(format!("{name}.wasm"));
    if !p.is_file() {
        eprintln!(
            "{} is missing: run `bash .ci/plugins.sh` first",
            p.display()
        );
        std::process::exit(2);
    }
    p
}

fn wat(name: &str) -> PathBuf {
    root().join("tests/wasm").join(format!("{name}.wat"))
}

fn configs() -> Vec<(&'static str, PluginConfig)> {
    let mut auth = PluginConfig::new("device-auth", example("device-auth"))
        .with("secret", "benchmark-secret-0123456789");
    auth.limits.memory = ByteSize(128 << 20);
    vec![
        ("Python", auth),
        (
            "C",
            PluginConfig::new("device-acl", example("device-acl")).with("admin_users", "admin"),
        ),
        (
            "JavaScript",
            PluginConfig::new("topic-rewrite", example("topic-rewrite"))
                .with("rules", r#"{"devices/": "fleet/"}"#),
        ),
        ("WAT", PluginConfig::new("allow", wat("allow"))),
        ("WAT", PluginConfig::new("keep", wat("keep"))),
        ("C, API 0.1", noop("noop-acl-0.1")),
        ("C, API 0.1", noop("noop-transform-0.1")),
        ("C, API 0.2", noop("noop-acl-0.2")),
        ("C, API 0.2", noop("noop-transform-0.2")),
    ]
}

/// A do-nothing plugin of plugins/noop (built by its build.sh, run by .ci/plugins.sh).
fn noop(name: &str) -> PluginConfig {
    let p = root().join("plugins/noop").join(format!("{name}.wasm"));
    if !p.is_file() {
        eprintln!(
            "{} is missing: run `bash .ci/plugins.sh` first",
            p.display()
        );
        std::process::exit(2);
    }
    PluginConfig::new(name, p)
}

fn client() -> ClientInfo {
    ClientInfo {
        client_id: Arc::from("dev-1"),
        username: Some("dev-1".into()),
        peer: "127.0.0.1:50000".parse().expect("address"),
        transport: TransportKind::Tcp,
        tls_identity: None,
        protocol: ProtocolLevel::V311,
        clean_session: true,
    }
}

/// Runs `f` repeatedly for about `budget` and returns nanoseconds per call.
fn per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..50 {
        f();
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        for _ in 0..50 {
            f();
        }
        n += 50;
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

fn bench_calls() {
    let host = PluginHost::new(Default::default()).expect("engine");
    let c = client();
    let password = {
        // device-auth's expected password, so the benchmark measures the accepting path.
        use hmac::{Hmac, Mac};
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(b"benchmark-secret-0123456789").expect("key");
        mac.update(b"dev-1");
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let creds = Credentials {
        username: Some("dev-1"),
        password: Some(password.as_bytes()),
        certificate_verified: false,
    };
    let publish = AclRequest {
        action: AclAction::Publish,
        topic: "devices/dev-1/temp",
        qos: QoS::AtMostOnce,
        retain: false,
    };
    let message = Message::new(
        "devices/dev-1/temp",
        bytes::Bytes::from_static(br#"{"celsius":21.5}"#),
        QoS::AtMostOnce,
        false,
    );
    let budget = Duration::from_secs(2);
    println!("\n== per-call cost (one thread, instance from the pool)");
    println!(
        "{:<14} {:<11} {:<13} {:>11} {:>14} {:>16}",
        "plugin", "language", "hook", "ns/call", "load (cache)", "instantiate+init"
    );
    for (language, config) in configs() {
        // First load compiles (or reuses) the artifact; the timed loads read the cache.
        drop(host.load(std::slice::from_ref(&config)).expect("loads"));
        let mut loads = Vec::new();
        let mut set = None;
        for _ in 0..3 {
            let started = Instant::now();
            let s = host.load(std::slice::from_ref(&config)).expect("loads");
            loads.push(started.elapsed());
            set = Some(s);
        }
        let set = set.expect("loaded");
        let plugin: &Arc<WasmPlugin> = &set.plugins()[0];
        let load_ms = loads.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3 / 3.0;
        let instantiate_us = plugin.stats().mean_instantiate_us;
        let mut rows = Vec::new();
        if plugin.is_authenticator() {
            rows.push((
                "authenticate",
                per_call(budget, || {
                    let _ = plugin.authenticate(&c, &creds);
                }),
            ));
        }
        if plugin.is_authorizer() {
            rows.push((
                "authorize",
                per_call(budget, || {
                    let _ = plugin.authorize(&c, &publish);
                }),
            ));
        }
        if plugin.is_transformer() {
            rows.push((
                "transform",
                per_call(budget, || {
                    let _ = plugin.transform(&c, &message);
                }),
            ));
        }
        for (hook, ns) in rows {
            println!(
                "{:<14} {:<11} {:<13} {:>11.0} {:>11.2} ms {:>13} µs",
                plugin.name(),
                language,
                hook,
                ns,
                load_ms,
                instantiate_us
            );
        }
        // On an oversubscribed machine a descheduled thread can overrun a wall-clock deadline;
        // report such failures rather than hide them.
        let s = plugin.stats();
        if s.failures > 0 {
            println!(
                "    ({} of {} calls failed: {} timeouts; slowest call {} µs)",
                s.failures, s.calls, s.timeouts, s.slowest_call_us
            );
        }
    }
}

fn encode(p: &Packet) -> BytesMut {
    let mut b = BytesMut::new();
    codec::encode(p, &mut b);
    b
}

async fn connect(addr: std::net::SocketAddr, id: &str, user: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let c = Connect {
        bridge: false,
        properties: None,
        protocol: ProtocolLevel::V311,
        clean_session: true,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: user.map(str::to_owned),
        password: None,
    };
    s.write_all(&encode(&Packet::Connect(Box::new(c))))
        .await
        .expect("write");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.expect("CONNACK");
    assert_eq!(ack, [0x20, 2, 0, 0], "connection accepted");
    s
}

/// Publishes `total` QoS 0 messages from `publishers` clients and counts what one subscriber
/// receives; returns (messages delivered per second, delivered, elapsed).
async fn throughput(
    broker: &BrokerHandle,
    publishers: usize,
    total: usize,
) -> (f64, usize, Duration) {
    let addr = broker.local_addr();
    let mut sub = connect(addr, "ops", Some("admin")).await;
    sub.write_all(&encode(&Packet::Subscribe(Subscribe {
        options: Vec::new(),
        properties: None,
        pid: 1,
        filters: vec![("devices/#".into(), QoS::AtMostOnce)],
    })))
    .await
    .expect("subscribe");
    let mut suback = [0u8; 5];
    sub.read_exact(&mut suback).await.expect("SUBACK");
    assert_eq!(suback[4], 0, "subscription granted: {suback:?}");

    let per = total / publishers;
    let counter = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(1 << 20);
        let mut n = 0usize;
        let started = Instant::now();
        let mut last = started;
        loop {
            match tokio::time::timeout(Duration::from_millis(500), sub.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {
                    while let Ok(Some(p)) = codec::decode(&mut buf, usize::MAX) {
                        if matches!(p, Packet::Publish(_)) {
                            n += 1;
                            last = Instant::now();
                        }
                    }
                    if n >= per * publishers {
                        break;
                    }
                }
            }
        }
        (n, last.duration_since(started))
    });
    let mut tasks = Vec::new();
    for i in 0..publishers {
        tasks.push(tokio::spawn(async move {
            let id = format!("dev-{i}");
            let mut s = connect(addr, &id, None).await;
            let packet = encode(&Packet::Publish(Publish {
                properties: None,
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: format!("devices/{id}/temp").into(),
                pid: None,
                payload: bytes::Bytes::from_static(br#"{"celsius":21.5}"#),
            }));
            // Batches of 100 packets per write, as a busy gateway would send them.
            let mut batch = BytesMut::new();
            for _ in 0..100 {
                batch.extend_from_slice(&packet);
            }
            for _ in 0..per / 100 {
                s.write_all(&batch).await.expect("publish");
            }
            s
        }));
    }
    let mut keep = Vec::new();
    for t in tasks {
        keep.push(t.await.expect("publisher"));
    }
    let (n, elapsed) = counter.await.expect("counter");
    (n as f64 / elapsed.as_secs_f64(), n, elapsed)
}

async fn start(plugins: Vec<PluginConfig>) -> BrokerHandle {
    let mut config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        plugins,
        ..Default::default()
    };
    // Room for bursts, so that the rate measures the broker and not queue-full drops.
    config.performance.message_queue_limit = 100_000;
    // The per-client protection limits would measure themselves, not the plugins.
    config.limits.publish_rate = 0;
    config.limits.publish_bytes_rate = 0;
    Broker::start(config).await.expect("broker starts")
}

fn bench_publish() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let total = 200_000;
        let publishers = 4;
        println!("\n== QoS 0 publish throughput: {publishers} publishers, 1 subscriber, {total} messages, 2 worker threads");
        let acl = PluginConfig::new("device-acl", example("device-acl")).with("admin_users", "admin");
        let keep = PluginConfig::new("keep", wat("keep"));
        let v01 = vec![noop("noop-acl-0.1"), noop("noop-transform-0.1")];
        let v02 = vec![noop("noop-acl-0.2"), noop("noop-transform-0.2")];
        // Interleaved and repeated, so that a drift of the machine's speed affects all alike.
        let setups: Vec<(&str, &str, Vec<PluginConfig>)> = vec![
            ("none", "no plugins", vec![]),
            ("0.1", "noop acl + transform, C, API 0.1", v01.clone()),
            ("0.2", "noop acl + transform, C, API 0.2", v02.clone()),
            ("acl", "device-acl (C) + keep (WAT), API 0.1", vec![acl.clone(), keep.clone()]),
            ("none", "no plugins (again)", vec![]),
            ("0.1", "noop acl + transform, C, API 0.1 (again)", v01),
            ("0.2", "noop acl + transform, C, API 0.2 (again)", v02),
            ("acl", "device-acl (C) + keep (WAT), API 0.1 (again)", vec![acl, keep]),
        ];
        let mut rates = Vec::new();
        for (kind, name, plugins) in setups {
            let broker = start(plugins).await;
            let (rate, n, elapsed) = throughput(&broker, publishers, total).await;
            let calls: u64 = broker.plugin_stats().iter().map(|s| s.calls).sum();
            let failures: u64 = broker.plugin_stats().iter().map(|s| s.failures).sum();
            println!(
                "{name:<46} {rate:>10.0} msg/s delivered ({n} in {:.2} s; plugin calls {calls}, failures {failures})",
                elapsed.as_secs_f64()
            );
            rates.push((kind, rate));
            broker.shutdown().await;
        }
        let mean = |k: &str| {
            let v: Vec<f64> = rates.iter().filter(|r| r.0 == k).map(|r| r.1).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        for (kind, what) in [
            ("0.1", "noop acl + transform, API 0.1"),
            ("0.2", "noop acl + transform, API 0.2"),
            ("acl", "device-acl + keep, API 0.1"),
        ] {
            println!(
                "ratio {what:<32} / no plugins: {:>4.0} % (goal for compiled do-nothing plugins: at least 80 %)",
                100.0 * mean(kind) / mean("none")
            );
        }
    });
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    if what.is_empty() || what == "calls" {
        bench_calls();
    }
    if what.is_empty() || what == "publish" {
        bench_publish();
    }
}
