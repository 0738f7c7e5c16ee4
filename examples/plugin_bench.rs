//! Benchmark of the Wasm plugin host: per-call cost of each hook of each example plugin,
//! instantiation and load times, and QoS 0 publish throughput through a broker with an
//! authorizer and a transformer plugin against the same broker without plugins.
//!
//! Build the example plugins first (`bash .ci/plugins.sh`), then:
//!
//! ```sh
//! cargo run --release --example plugin_bench            # everything
//! cargo run --release --example plugin_bench -- calls   # per-call costs only
//! cargo run --release --example plugin_bench -- calls noop   # only plugins named *noop*
//! cargo run --release --example plugin_bench -- publish # throughput only
//! cargo run --release --example plugin_bench -- publish fast   # only no plugins and fast-transform
//! BENCH_WORKERS=1 cargo run --release --example plugin_bench -- publish   # one worker thread
//! ```

use bytes::BytesMut;
use mqtt_broker::config::{Config, TransportKind};
use mqtt_broker::events::BrokerEvent;
use mqtt_broker::hooks::{
    AclAction, AclRequest, AuthOutcome, Authenticator, Authorizer, ClientInfo, Credentials,
    Transformer,
};
use mqtt_broker::model::DisconnectReason;
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
    let mut jwt = PluginConfig::new("jwt-auth", example("jwt-auth"))
        .with("hs256_secret", "benchmark-secret-0123456789-0123456789");
    jwt.limits.memory = ByteSize(128 << 20);
    jwt.capabilities.kv = Some(mqtt_broker::plugins::config::KvGrant {
        max_bytes: ByteSize(1 << 20),
    });
    let mut http = PluginConfig::new("http-auth", example("http-auth"))
        .with("url", format!("http://{}/mqtt/auth", http_service()));
    http.limits.memory = ByteSize(128 << 20);
    http.capabilities.http = Some(mqtt_broker::plugins::config::HttpGrant {
        allow: vec!["127.0.0.1".into()],
        timeout: mqtt_broker::config::ConfigDuration::secs(2),
        max_response_bytes: ByteSize(1 << 16),
    });
    let publish = |topics: &str| {
        Some(mqtt_broker::plugins::config::PublishGrant {
            topics: vec![topics.into()],
            max_per_call: 4,
        })
    };
    let mut presence = PluginConfig::new("presence", example("presence"));
    presence.capabilities.publish = publish("presence/#");
    let mut receipts = PluginConfig::new("delivery-receipts", example("delivery-receipts"));
    receipts.capabilities.publish = publish("receipts/#");
    // The example config's rules (config/sensor-bridge.yaml), for both sensor bridges.
    let bridge = mqtt_broker::config::Config::load(&root().join("config/sensor-bridge.yaml"))
        .expect("config/sensor-bridge.yaml loads")
        .plugins
        .into_iter()
        .next()
        .expect("one plugin entry");
    let bridge_js = PluginConfig {
        path: example("sensor-bridge"),
        ..bridge.clone()
    };
    let bridge_c = PluginConfig {
        name: "sensor-bridge-c".into(),
        path: example("sensor-bridge-c"),
        ..bridge
    };
    vec![
        ("Python", auth),
        ("Python", jwt),
        ("Python", http),
        (
            "Zig",
            PluginConfig::new("zig-auth", example("zig-auth"))
                .with("tokens", r#"{"dev-1":"token-1"}"#),
        ),
        (
            "C",
            PluginConfig::new("device-acl", example("device-acl")).with("admin_users", "admin"),
        ),
        ("C", presence),
        ("C", receipts),
        ("JavaScript", bridge_js),
        ("C, API 0.2", bridge_c),
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
        ("C, API 0.2", noop("noop-fast-transform-0.2")),
    ]
}

/// A local HTTP service for http-auth that allows everybody (keep-alive, so that a call
/// measures a request on an open connection, as in production).
fn http_service() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Read, Write};
    static ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                    let mut conn = conn;
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let answer = br#"{"result":"allow"}"#;
                        // One write: a head and a body in two would meet Nagle's algorithm
                        // and the client's delayed ACK (40 ms per request).
                        let mut response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            answer.len()
                        )
                        .into_bytes();
                        response.extend_from_slice(answer);
                        if conn.write_all(&response).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    })
}

/// An HS256 JWT for jwt-auth, valid for an hour, allowing `devices/<client id>/#`.
fn jwt_token(secret: &str) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64(format!(
        r#"{{"sub":"dev-1","exp":{exp},"publish":["devices/%c/#"],"subscribe":["devices/%c/#"]}}"#
    )
    .as_bytes());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{header}.{claims}").as_bytes());
    format!("{header}.{claims}.{}", b64(&mac.finalize().into_bytes()))
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
        "{:<19} {:<11} {:<13} {:>11} {:>14} {:>16}",
        "plugin", "language", "hook", "ns/call", "load (cache)", "instantiate+init"
    );
    // `calls NAME`: only the plugins whose name contains NAME.
    let only = std::env::args().nth(2).unwrap_or_default();
    for (language, config) in configs() {
        if !config.name.contains(&only) {
            continue;
        }
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
            // Each authenticator gets credentials it accepts: the benchmark measures the
            // accepting path.
            let jwt;
            let creds = match plugin.name() {
                "jwt-auth" => {
                    jwt = jwt_token("benchmark-secret-0123456789-0123456789");
                    Credentials {
                        username: Some("dev-1"),
                        password: Some(jwt.as_bytes()),
                        certificate_verified: false,
                    }
                }
                "zig-auth" => Credentials {
                    username: Some("dev-1"),
                    password: Some(b"token-1"),
                    certificate_verified: false,
                },
                _ => creds,
            };
            let outcome = plugin.authenticate(&c, &creds);
            assert_eq!(
                outcome,
                AuthOutcome::Allow,
                "{} accepts the benchmark's client",
                plugin.name()
            );
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
            // The sensor bridges are measured on a reading their rules turn into JSON.
            let reading = Message::new(
                "sensors/aloys/temperature",
                bytes::Bytes::from_static(b"25.5"),
                QoS::AtMostOnce,
                false,
            );
            let m = if plugin.name().starts_with("sensor-bridge") {
                let out = plugin.transform(&c, &reading);
                assert_eq!(
                    out.additional.len(),
                    1,
                    "{} bridges the reading",
                    plugin.name()
                );
                &reading
            } else {
                &message
            };
            let hook = if plugin.hooks().contains(&"fast-transform") {
                "fast-transform"
            } else {
                "transform"
            };
            rows.push((
                hook,
                per_call(budget, || {
                    let _ = plugin.transform(&c, m);
                }),
            ));
        }
        let hooks = plugin.hooks();
        if hooks.contains(&"connection-events") {
            let connected = BrokerEvent::ClientConnected {
                client_id: c.client_id.clone(),
                peer: c.peer,
                transport: c.transport,
                username: c.username.clone(),
                clean_session: true,
                session_present: false,
                protocol: ProtocolLevel::V5,
            };
            let disconnected = BrokerEvent::ClientDisconnected {
                client_id: c.client_id.clone(),
                peer: c.peer,
                reason: DisconnectReason::Disconnect,
            };
            rows.push(("connected", per_call(budget, || plugin.deliver(&connected))));
            rows.push((
                "disconnected",
                per_call(budget, || plugin.deliver(&disconnected)),
            ));
        }
        if hooks.contains(&"delivery-events") {
            let delivered = BrokerEvent::MessageDelivered {
                client_id: c.client_id.clone(),
                topic: Arc::from("cmd/dev-1/reboot"),
                qos: QoS::AtLeastOnce,
            };
            let acked = BrokerEvent::MessageAcknowledged {
                client_id: c.client_id.clone(),
                topic: Arc::from("cmd/dev-1/reboot"),
                qos: QoS::AtLeastOnce,
            };
            rows.push(("delivered", per_call(budget, || plugin.deliver(&delivered))));
            rows.push(("acknowledged", per_call(budget, || plugin.deliver(&acked))));
        }
        for (hook, ns) in rows {
            println!(
                "{:<19} {:<11} {:<13} {:>11.0} {:>11.2} ms {:>13} µs",
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
        .worker_threads(
            std::env::var("BENCH_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        )
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // A million messages: about a second per setup, long enough for a stable rate.
        let total = 1_000_000;
        let publishers = 4;
        println!("\n== QoS 0 publish throughput: {publishers} publishers, 1 subscriber, {total} messages, 2 worker threads");
        let acl = PluginConfig::new("device-acl", example("device-acl")).with("admin_users", "admin");
        let keep = PluginConfig::new("keep", wat("keep"));
        let v01 = vec![noop("noop-acl-0.1"), noop("noop-transform-0.1")];
        let v02 = vec![noop("noop-acl-0.2"), noop("noop-transform-0.2")];
        let fast = vec![noop("noop-acl-0.2"), noop("noop-fast-transform-0.2")];
        let mut setups: Vec<(&str, String, Vec<PluginConfig>)> = Vec::new();
        for round in 1..=3 {
            let r = |what: &str| format!("{what} (round {round})");
            setups.push(("none", r("no plugins"), vec![]));
            setups.push(("0.1", r("noop acl + transform, C, API 0.1"), v01.clone()));
            setups.push(("0.2", r("noop acl + transform, C, API 0.2"), v02.clone()));
            setups.push(("fast", r("noop acl + fast-transform, C, API 0.2"), fast.clone()));
            // Each half of it alone: what the authorizer costs with its decisions cached, and
            // what the transformer costs.
            setups.push(("acl-only", r("noop acl only, C, API 0.2"), fast[..1].to_vec()));
            setups.push(("fast-only", r("noop fast-transform only, C, API 0.2"), fast[1..].to_vec()));
            setups.push((
                "acl",
                r("device-acl (C) + keep (WAT), API 0.1"),
                vec![acl.clone(), keep.clone()],
            ));
        }
        // `publish KIND`: only KIND (0.1, 0.2, fast, acl-only, fast-only, acl) beside no
        // plugins; a KIND ending in `*` selects every kind starting with what precedes it.
        let only = std::env::args().nth(2).unwrap_or_default();
        setups.retain(|(kind, _, _)| {
            only.is_empty()
                || *kind == "none"
                || *kind == only
                || only.strip_suffix('*').is_some_and(|p| kind.starts_with(p))
        });
        // Interleaved and repeated, so that a drift of the machine's speed affects all alike.
        let mut rates = Vec::new();
        for (kind, name, plugins) in setups {
            let broker = start(plugins).await;
            let (rate, n, elapsed) = throughput(&broker, publishers, total).await;
            let calls: u64 = broker.plugin_stats().iter().map(|s| s.calls).sum();
            let failures: u64 = broker.plugin_stats().iter().map(|s| s.failures).sum();
            println!(
                "{name:<56} {rate:>10.0} msg/s delivered ({n} in {:.2} s; plugin calls {calls}, failures {failures})",
                elapsed.as_secs_f64()
            );
            for s in broker.plugin_stats() {
                for e in &s.recent_errors {
                    println!("  {} failed: {e:?}", s.name);
                }
            }
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
            ("fast", "noop acl + fast-transform, API 0.2"),
            ("acl-only", "noop acl only, API 0.2"),
            ("fast-only", "noop fast-transform only, API 0.2"),
            ("acl", "device-acl + keep, API 0.1"),
        ] {
            if !rates.iter().any(|r| r.0 == kind) {
                continue;
            }
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
