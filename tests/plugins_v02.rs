//! Plugin API 0.2 on the host side, with no particular example plugin in mind: 0.1 and 0.2
//! components in one broker serving real `mosquitto_pub` / `mosquitto_sub` clients, the
//! errors for a component whose export has the wrong type or that exports no hook, the
//! `capabilities:` config checks, and MQTT 5 message properties as a 0.2 transform sees
//! them. Event hooks and each capability are tested end to end with the example plugins
//! (tests/plugin_presence.rs, plugin_audit.rs, plugin_auth_examples.rs).

mod common;

use common::*;
use mqtt_broker::config::Config;
use mqtt_broker::plugins::PluginConfig;
use mqtt_broker::{Broker, BrokerHandle};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A do-nothing plugin of plugins/noop; fails (never skips) when it was not built.
fn noop(name: &str) -> PluginConfig {
    PluginConfig::new(name, built_plugin(&format!("plugins/noop/{name}.wasm")))
}

/// A test component of tests/wasm (committed as text).
fn fixture(name: &str) -> PluginConfig {
    PluginConfig::new(name, root().join("tests/wasm").join(format!("{name}.wat")))
}

async fn start_err(plugins: Vec<PluginConfig>) -> String {
    let config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        plugins,
        ..Default::default()
    };
    match Broker::start(config).await {
        Ok(_) => panic!("the broker started with a component it should refuse"),
        Err(e) => e.to_string(),
    }
}

/// Runs a mosquitto client to completion (bounded by its own `-W` or by `timeout`).
fn mosquitto(program: &str, broker: &BrokerHandle, args: &[&str]) -> std::process::Output {
    let port = broker.local_addr().port().to_string();
    Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (apt install mosquitto-clients): {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_01_and_02_plugins_serve_real_clients_side_by_side() {
    let broker = start_broker(|c| {
        c.plugins = vec![noop("noop-acl-0.1"), noop("noop-transform-0.2")];
    })
    .await;
    let b = broker.clone();
    let sub = tokio::task::spawn_blocking(move || {
        mosquitto(
            "mosquitto_sub",
            &b,
            &[
                "-V", "mqttv5", "-t", "both/#", "-C", "3", "-W", "10", "-v", "-F", "%t %p %P",
            ],
        )
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = broker.clone();
    tokio::task::spawn_blocking(move || {
        // One MQTT 5 publisher with a user property, two 3.1.1 ones.
        let out = mosquitto(
            "mosquitto_pub",
            &b,
            &[
                "-V",
                "mqttv5",
                "-t",
                "both/v5",
                "-m",
                "five",
                "-D",
                "publish",
                "user-property",
                "k",
                "v",
            ],
        );
        assert!(out.status.success(), "{out:?}");
        for i in 0..2 {
            let out = mosquitto(
                "mosquitto_pub",
                &b,
                &["-t", "both/v311", "-m", &format!("m{i}")],
            );
            assert!(out.status.success(), "{out:?}");
        }
    })
    .await
    .expect("publishers");
    let out = sub.await.expect("subscriber");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "subscriber: {out:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines.contains(&"both/v5 five k:v"),
        "the 0.2 transform kept the message and its user property: {text}"
    );
    assert!(lines.contains(&"both/v311 m0 "), "{text}");
    let stats = broker.plugin_stats();
    let by_name = |n: &str| {
        stats
            .iter()
            .find(|s| s.name == n)
            .expect("plugin loaded")
            .clone()
    };
    let acl = by_name("noop-acl-0.1");
    let transform = by_name("noop-transform-0.2");
    assert_eq!(acl.api, "0.1.0");
    assert_eq!(transform.api, "0.2.0");
    assert!(acl.calls >= 2, "{acl:?}");
    assert_eq!(
        transform.calls, 3,
        "one transform call per message: {transform:?}"
    );
    assert_eq!(acl.failures + transform.failures, 0, "{stats:?}");
    broker.shutdown().await;
}

#[tokio::test]
async fn an_export_of_the_wrong_type_is_named_with_the_type_the_broker_calls() {
    let err = start_err(vec![fixture("v02-wrong-signature")]).await;
    assert!(
        err.contains("v02-wrong-signature"),
        "names the plugin: {err}"
    );
    assert!(
        err.contains("mqtt-broker:plugin/authorize@0.2.0"),
        "names the export: {err}"
    );
    assert!(
        err.contains("authorize: func(client: borrow<client>, request: acl-request) -> decision"),
        "gives the expected type: {err}"
    );
    assert!(
        err.contains("wit/v0.2/plugin.wit"),
        "says where the type is defined: {err}"
    );
}

#[tokio::test]
async fn a_component_without_hooks_says_what_it_exports() {
    let err = start_err(vec![fixture("v02-no-hooks")]).await;
    assert!(err.contains("exports none of the hooks"), "{err}");
    assert!(
        err.contains("it exports: mqtt-broker:plugin/lifecycle@0.2.0"),
        "lists what it does export: {err}"
    );
}

#[tokio::test]
async fn capabilities_are_refused_for_an_api_01_component() {
    let mut p = noop("noop-acl-0.1");
    p.capabilities.kv = Some(mqtt_broker::plugins::config::KvGrant {
        max_bytes: mqtt_broker::plugins::ByteSize(1024),
    });
    let err = start_err(vec![p]).await;
    assert!(err.contains("capabilities need plugin API 0.2"), "{err}");
}

#[test]
fn invalid_capability_grants_are_refused_naming_the_key() {
    let cases = [
        ("http: {allow: []}", "plugins[0].capabilities.http.allow"),
        (
            "http: {allow: [\"http://x/y\"]}",
            "plugins[0].capabilities.http.allow[0]",
        ),
        (
            "publish: {topics: [\"a/#/b\"]}",
            "plugins[0].capabilities.publish.topics[0]",
        ),
        ("tick: 1ms", "plugins[0].capabilities.tick"),
        ("kv: {max_bytes: 0}", "plugins[0].capabilities.kv.max_bytes"),
        ("shell: true", "shell"),
    ];
    for (grant, key) in cases {
        let yaml = format!(
            "plugins:\n  - name: p\n    path: plugins/noop/noop-acl-0.2.wasm\n    capabilities: {{{grant}}}\n"
        );
        let err = match Config::parse(&yaml, std::path::Path::new("test.yaml")) {
            Ok(_) => panic!("accepted `{grant}`"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(key),
            "`{grant}` must be refused naming {key}: {err}"
        );
    }
    let ok = "plugins:\n  - name: p\n    path: x.wasm\n    capabilities: {kv: {}, tick: 5s, publish: {topics: [\"a/#\"]}, http: {allow: [\"127.0.0.1:80\"], timeout: 2s}}\n";
    let config = Config::parse(ok, std::path::Path::new("test.yaml")).expect("valid grants");
    let caps = &config.plugins[0].capabilities;
    assert_eq!(
        caps.kv.as_ref().map(|k| k.max_bytes.0),
        Some(1 << 20),
        "default kv size"
    );
    assert_eq!(caps.tick.map(|t| t.get()), Some(Duration::from_secs(5)));
}

/// The presence plugin (plugins/presence), for a test of event delivery across reloads.
fn presence() -> PluginConfig {
    let mut p = PluginConfig::new("presence", built_plugin("plugins/presence/presence.wasm"));
    p.capabilities.publish = Some(mqtt_broker::plugins::config::PublishGrant {
        topics: vec!["presence/#".into()],
        max_per_call: 4,
    });
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_one_generation_of_a_plugin_across_reloads() {
    let config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        plugins: vec![presence()],
        ..Default::default()
    };
    let broker = Broker::start(config.clone()).await.expect("broker starts");
    let b = broker.clone();
    let watcher = tokio::task::spawn_blocking(move || {
        mosquitto("mosquitto_sub", &b, &["-t", "presence/#", "-v", "-W", "6"])
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Reloads (each loads a new generation of the plugin) while clients come and go.
    let reloader = {
        let b = broker.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..15 {
                b.reload(config.clone()).await.expect("reload");
                n += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            n
        })
    };
    let b = broker.clone();
    let clients = 20;
    tokio::task::spawn_blocking(move || {
        for i in 0..clients {
            let out = mosquitto(
                "mosquitto_pub",
                &b,
                &["-i", &format!("gen-{i}"), "-t", "x", "-m", "y"],
            );
            assert!(out.status.success(), "{out:?}");
        }
    })
    .await
    .expect("clients");
    assert_eq!(reloader.await.expect("reloader"), 15);
    let out = watcher.await.expect("watcher");
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 0..clients {
        let topic = format!("presence/gen-{i} ");
        let online = text
            .lines()
            .filter(|l| l.starts_with(&topic) && l.contains("\"online\":true"))
            .count();
        let offline = text
            .lines()
            .filter(|l| l.starts_with(&topic) && l.contains("\"online\":false"))
            .count();
        assert_eq!(
            (online, offline),
            (1, 1),
            "gen-{i}: one online and one offline message, whichever generation was current:\n{text}"
        );
    }
    broker.shutdown().await;
}

/// plugins/noop/echo.wasm: republishes each event hook call on `echo/<event>`.
fn echo(tick: Option<Duration>) -> PluginConfig {
    let mut p = noop("echo");
    p.capabilities.publish = Some(mqtt_broker::plugins::config::PublishGrant {
        topics: vec!["echo/#".into()],
        max_per_call: 4,
    });
    p.capabilities.tick = tick.map(mqtt_broker::config::ConfigDuration);
    p
}

/// A `mosquitto_sub` on `echo/#` that runs for `secs` seconds, started before the test acts.
async fn echo_watcher(
    broker: &BrokerHandle,
    secs: u32,
) -> tokio::task::JoinHandle<std::process::Output> {
    let b = broker.clone();
    let w = secs.to_string();
    let watcher = tokio::task::spawn_blocking(move || {
        mosquitto("mosquitto_sub", &b, &["-t", "echo/#", "-v", "-W", &w])
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hooks_get_each_event_with_its_fields() {
    let config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        plugins: vec![echo(Some(Duration::from_millis(300)))],
        ..Default::default()
    };
    let broker = Broker::start(config.clone()).await.expect("broker starts");
    let watcher = echo_watcher(&broker, 5).await;
    let b = broker.clone();
    tokio::task::spawn_blocking(move || {
        // A persistent QoS 0 subscriber that goes away: the next message is dropped for it.
        let out = mosquitto(
            "mosquitto_sub",
            &b,
            &["-i", "away", "-c", "-q", "0", "-t", "d/#", "-W", "1"],
        );
        assert!(!out.status.success() || out.stdout.is_empty(), "{out:?}");
        let sub = std::process::Command::new("timeout")
            .args(["10", "mosquitto_sub", "-h", "127.0.0.1", "-p"])
            .arg(b.local_addr().port().to_string())
            .args(["-i", "s1", "-q", "1", "-t", "t/#", "-C", "1"])
            .spawn()
            .expect("mosquitto_sub");
        std::thread::sleep(Duration::from_millis(400));
        for (topic, qos) in [("t/a", "1"), ("d/x", "0")] {
            let out = mosquitto(
                "mosquitto_pub",
                &b,
                &["-i", "p1", "-q", qos, "-t", topic, "-m", "hello"],
            );
            assert!(out.status.success(), "{out:?}");
        }
        let out = sub.wait_with_output().expect("subscriber");
        assert!(out.status.success(), "{out:?}");
    })
    .await
    .expect("clients");
    broker.reload(config.clone()).await.expect("reload");
    let mut broken = config.clone();
    broken.plugins[0].path = root().join("plugins/noop/missing.wasm");
    assert!(
        broker.reload(broken).await.is_err(),
        "a missing component is refused"
    );
    let out = watcher.await.expect("watcher");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let has = |line: &str| text.lines().any(|l| l == line);
    let starts = |prefix: &str| text.lines().any(|l| l.starts_with(prefix));
    // protocol level: 1 = MQTT 3.1.1 (the WIT enum's index).
    assert!(has("echo/connected s1 0 1"), "{text}");
    assert!(has("echo/subscribed s1 t/# 1"), "{text}");
    assert!(
        has("echo/published p1 t/a 1 0 5 1"),
        "client, topic, QoS, retain, size, subscribers:\n{text}"
    );
    assert!(has("echo/disconnected s1 disconnect"), "{text}");
    assert!(has("echo/dropped away d/x offline QoS 0"), "{text}");
    assert!(has("echo/config-reloaded 2 1"), "{text}");
    assert!(
        starts("echo/config-reloaded 2 0 "),
        "a refused reload, with its error:\n{text}"
    );
    let tick_ms = text
        .lines()
        .find_map(|l| l.strip_prefix("echo/tick "))
        .and_then(|ms| ms.parse::<u64>().ok());
    assert!(
        tick_ms.is_some_and(|ms| ms > 1_700_000_000_000),
        "ticks carry the time in ms:\n{text}"
    );
    // In order: the subscriber's events come as they happened.
    let pos = |line: &str| text.lines().position(|l| l == line).unwrap_or(usize::MAX);
    assert!(pos("echo/connected s1 0 1") < pos("echo/subscribed s1 t/# 1"));
    assert!(pos("echo/subscribed s1 t/# 1") < pos("echo/disconnected s1 disconnect"));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reload_is_reported_once_across_plugin_generations() {
    let config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        plugins: vec![echo(None)],
        ..Default::default()
    };
    let broker = Broker::start(config.clone()).await.expect("broker starts");
    let watcher = echo_watcher(&broker, 4).await;
    for _ in 0..10 {
        broker.reload(config.clone()).await.expect("reload");
    }
    let out = watcher.await.expect("watcher");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut reloads: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("echo/config-reloaded "))
        .collect();
    reloads.sort_unstable();
    let expected: Vec<String> = (2..=11)
        .map(|g| format!("echo/config-reloaded {g} 1"))
        .collect();
    let mut expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(
        reloads, expected,
        "one event per reload, to one generation:\n{text}"
    );
    broker.shutdown().await;
}

/// An MQTT 5 CONNECT (raw client) with enhanced authentication `method` and first `data`.
fn connect5_auth(client_id: &str, method: &str, data: &str) -> mqtt_broker::protocol::Connect {
    mqtt_broker::protocol::Connect {
        bridge: false,
        protocol: mqtt_broker::protocol::ProtocolLevel::V5,
        clean_session: true,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: auth_props(method, data),
    }
}

fn auth_props(method: &str, data: &str) -> Option<Box<mqtt_broker::protocol::Properties>> {
    Some(Box::new(mqtt_broker::protocol::Properties {
        authentication_method: Some(method.into()),
        authentication_data: Some(bytes::Bytes::copy_from_slice(data.as_bytes())),
        ..Default::default()
    }))
}

/// The data of the AUTH packet the broker sends next, which must carry `reason`.
async fn expect_auth(c: &mut RawClient, reason: u8) -> String {
    match c.recv().await {
        Some(mqtt_broker::protocol::Packet::Auth(a)) => {
            assert_eq!(a.reason, reason, "{a:?}");
            let p = a.properties.expect("AUTH properties");
            assert_eq!(p.authentication_method.as_deref(), Some("TEST-CHALLENGE"));
            String::from_utf8(p.authentication_data.expect("data").to_vec()).expect("UTF-8")
        }
        other => panic!("expected AUTH {reason:#04x}, got {other:?}"),
    }
}

async fn send_auth(c: &mut RawClient, reason: u8, data: &str) {
    c.send(&mqtt_broker::protocol::Packet::Auth(
        mqtt_broker::protocol::Auth {
            reason,
            properties: auth_props("TEST-CHALLENGE", data),
        },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_serves_an_enhanced_authentication_method_section_4_12() {
    use mqtt_broker::protocol::{reason, Packet};
    let broker = start_broker(|c| {
        c.plugins = vec![noop("challenge-auth").with("secret", "open-sesame")];
        c.security.auth_failure_delay = mqtt_broker::config::ConfigDuration::millis(0);
    })
    .await;
    let stats = broker.plugin_stats();
    assert_eq!(stats[0].hooks, vec!["enhanced-auth"]);
    let addr = broker.local_addr();

    // CONNECT -> AUTH 0x18 (challenge) -> AUTH 0x18 (answer) -> CONNACK 0x00 with data.
    let mut c = RawClient::open(addr).await;
    c.send(&Packet::Connect(Box::new(connect5_auth(
        "dev-a",
        "TEST-CHALLENGE",
        "alice",
    ))))
    .await;
    assert_eq!(
        expect_auth(&mut c, reason::CONTINUE_AUTHENTICATION).await,
        "nonce-for-alice"
    );
    send_auth(&mut c, reason::CONTINUE_AUTHENTICATION, "alice:open-sesame").await;
    let ack = match c.recv().await {
        Some(Packet::ConnAck(a)) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    assert_eq!(ack.v5_reason(), reason::SUCCESS);
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(p.authentication_method.as_deref(), Some("TEST-CHALLENGE"));
    assert_eq!(
        p.authentication_data.as_deref(),
        Some(&b"welcome alice"[..])
    );
    // The exchange's user is the client's user name from now on.
    let (_, clients) = mqtt_broker::core::control::Control::clients(&broker, 0, 100);
    let client = clients
        .into_iter()
        .find(|c| c.id == "dev-a")
        .expect("listed");
    assert_eq!(client.username.as_deref(), Some("alice"));

    // Re-authentication: AUTH 0x19 -> 0x18 -> 0x18 -> AUTH 0x00 with data.
    send_auth(&mut c, reason::REAUTHENTICATE, "alice").await;
    assert_eq!(
        expect_auth(&mut c, reason::CONTINUE_AUTHENTICATION).await,
        "nonce-for-alice"
    );
    send_auth(&mut c, reason::CONTINUE_AUTHENTICATION, "alice:open-sesame").await;
    assert_eq!(expect_auth(&mut c, reason::SUCCESS).await, "welcome alice");
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));

    // A wrong answer at CONNECT: CONNACK 0x86.
    let mut c = RawClient::open(addr).await;
    c.send(&Packet::Connect(Box::new(connect5_auth(
        "dev-b",
        "TEST-CHALLENGE",
        "bob",
    ))))
    .await;
    assert_eq!(
        expect_auth(&mut c, reason::CONTINUE_AUTHENTICATION).await,
        "nonce-for-bob"
    );
    send_auth(&mut c, reason::CONTINUE_AUTHENTICATION, "bob:guess").await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.v5_reason(), reason::BAD_USERNAME_OR_PASSWORD),
        other => panic!("expected CONNACK 0x86, got {other:?}"),
    }
    // A method nobody serves: CONNACK 0x8C.
    let mut c = RawClient::open(addr).await;
    c.send(&Packet::Connect(Box::new(connect5_auth(
        "dev-c", "OTHER", "x",
    ))))
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.v5_reason(), reason::BAD_AUTHENTICATION_METHOD),
        other => panic!("expected CONNACK 0x8C, got {other:?}"),
    }
    assert_eq!(broker.plugin_stats()[0].failures, 0);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_refusal_carries_its_reason_code_and_reason_string() {
    use mqtt_broker::protocol::{reason, ConnectReturnCode, Packet};
    let broker = start_broker(|c| {
        c.plugins = vec![noop("refuse-auth")];
        c.security.auth_failure_delay = mqtt_broker::config::ConfigDuration::millis(0);
    })
    .await;
    let addr = broker.local_addr();
    let connack = |protocol, user: &str| {
        let user = user.to_owned();
        async move {
            let mut c = RawClient::open(addr).await;
            let mut connect = connect_packet(&format!("c-{user}"), true);
            connect.protocol = protocol;
            connect.username = Some(user);
            c.send(&Packet::Connect(Box::new(connect))).await;
            match c.recv().await {
                Some(Packet::ConnAck(a)) => a,
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
    };
    use mqtt_broker::protocol::ProtocolLevel::{V311, V5};
    // MQTT 5: the plugin's reason code, and its Reason String when it gave one.
    let banned = connack(V5, "banned").await;
    assert_eq!(banned.v5_reason(), reason::BANNED);
    assert_eq!(
        banned
            .properties
            .as_ref()
            .and_then(|p| p.reason_string.as_deref()),
        Some("banned: ask the operator")
    );
    let busy = connack(V5, "busy").await;
    assert_eq!(busy.v5_reason(), reason::SERVER_BUSY);
    assert!(busy
        .properties
        .as_ref()
        .and_then(|p| p.reason_string.as_ref())
        .is_none());
    // MQTT 3.1.1: the nearest return code, no properties.
    let banned = connack(V311, "banned").await;
    assert_eq!(banned.code, ConnectReturnCode::NotAuthorized);
    assert!(banned.properties.is_none());
    assert_eq!(
        connack(V311, "busy").await.code,
        ConnectReturnCode::ServerUnavailable
    );
    // Everyone else: the plugin abstains and the default (anonymous allowed) decides.
    assert_eq!(connack(V5, "alice").await.v5_reason(), reason::SUCCESS);
    // A real MQTT 5 client reports the refusal.
    let b = broker.clone();
    let out = tokio::task::spawn_blocking(move || {
        mosquitto(
            "mosquitto_pub",
            &b,
            &["-V", "mqttv5", "-u", "banned", "-t", "t", "-m", "m"],
        )
    })
    .await
    .expect("mosquitto_pub");
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        said.contains("banned"),
        "mosquitto_pub names the reason: {said}"
    );
    broker.shutdown().await;
}

// --- fast-transform: plugins/noop/fast-rules.wasm (plugins/noop/fast.c) applies one rule per
// topic prefix, reading and producing everything through the `current` interface.

/// plugins/noop/fast-rules.wasm: fast-transform rules by topic prefix (see plugins/noop/fast.c).
fn fast_rules() -> PluginConfig {
    noop("fast-rules")
}

/// A `mosquitto_sub` (QoS 2) on `filters`, started before the test publishes: it stops after
/// `count` messages or `secs` seconds. Each message is a line `topic|payload|qos|retain`.
async fn fast_subscriber(
    broker: &BrokerHandle,
    filters: &[&str],
    count: usize,
    secs: u32,
) -> tokio::task::JoinHandle<std::process::Output> {
    let b = broker.clone();
    let mut args: Vec<String> = ["-q", "2", "-F", "%t|%p|%q|%r", "-C"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(count.to_string());
    args.push("-W".into());
    args.push(secs.to_string());
    for f in filters {
        args.push("-t".into());
        args.push((*f).to_owned());
    }
    let sub = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mosquitto("mosquitto_sub", &b, &args)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    sub
}

/// Runs each `mosquitto_pub` command line (arguments split on whitespace) in turn, each to
/// completion, asserting success.
async fn publish_all(broker: &BrokerHandle, runs: &[&str]) {
    let b = broker.clone();
    let runs: Vec<String> = runs.iter().map(|r| r.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        for run in runs {
            let args: Vec<&str> = run.split_whitespace().collect();
            let out = mosquitto("mosquitto_pub", &b, &args);
            assert!(out.status.success(), "mosquitto_pub {run}: {out:?}");
        }
    })
    .await
    .expect("publishers");
}

/// The lines a subscriber printed, sorted (messages from different publishers may arrive in
/// either order); asserts it got all it waited for.
async fn received_sorted(sub: tokio::task::JoinHandle<std::process::Output>) -> Vec<String> {
    let out = sub.await.expect("subscriber");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the subscriber got every message it waited for within its time limit:\n{text}\n{out:?}"
    );
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort_unstable();
    lines
}

fn sorted(lines: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    v.sort_unstable();
    v
}

fn stats_of(broker: &BrokerHandle, name: &str) -> mqtt_broker::plugins::PluginStats {
    broker
        .plugin_stats()
        .into_iter()
        .find(|s| s.name == name)
        .expect("plugin loaded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_transform_drops_replaces_and_adds_messages() {
    let broker = start_broker(|c| c.plugins = vec![fast_rules()]).await;
    assert_eq!(
        stats_of(&broker, "fast-rules").hooks,
        vec!["fast-transform"]
    );
    let filters = ["fast/#", "replaced/#", "added/#"];
    // The last message published (fast/other) is counted in: had a dropped or replaced
    // original got through, the subscriber would stop before it and miss an expected line.
    let sub = fast_subscriber(&broker, &filters, 7, 15).await;
    publish_all(
        &broker,
        &[
            "-i p-drop -q 1 -t fast/drop/a -m gone",
            "-i p-replace -q 1 -t fast/replace/r1 -m hello",
            "-i p-retain -q 2 -r -t fast/replace/kept -m sticky",
            "-i p-add -q 2 -t fast/add/abc -m x",
            "-i p-add0 -q 0 -t fast/add/z -m y",
            "-i p-other -q 1 -t fast/other -m plain",
        ],
    )
    .await;
    let lines = received_sorted(sub).await;
    assert_eq!(
        lines,
        sorted(&[
            // Replaced: payload + " " + client id, the original's QoS (and retain, below).
            "replaced/r1|hello p-replace|1|0",
            "replaced/kept|sticky p-retain|2|0",
            // Kept, plus an added message: the topic's length at the message's QoS.
            "fast/add/abc|x|2|0",
            "added/abc|12|2|0",
            "fast/add/z|y|0|0",
            "added/z|10|0|0",
            // No rule: kept unchanged.
            "fast/other|plain|1|0",
        ]),
        "fast/drop/a dropped; fast/replace/* replaced; fast/add/* kept and added to"
    );
    // The replacement kept the retain flag: it (and not the original) is the retained
    // message a later subscriber gets.
    let b = broker.clone();
    let out = tokio::task::spawn_blocking(move || {
        let args = "-q 2 -F %t|%p|%q|%r -W 2 -t fast/# -t replaced/# -t added/#";
        mosquitto("mosquitto_sub", &b, &args.split(' ').collect::<Vec<_>>())
    })
    .await
    .expect("late subscriber");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec!["replaced/kept|sticky p-retain|2|1"],
        "the only retained message: {out:?}"
    );
    let stats = stats_of(&broker, "fast-rules");
    assert_eq!(stats.calls, 6, "one call per published message: {stats:?}");
    assert_eq!(stats.failures, 0, "{stats:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_transform_read_message_gives_topic_payload_qos_retain_and_arrival_in_one_call() {
    let broker = start_broker(|c| c.plugins = vec![fast_rules()]).await;
    // fast/read/X adds read/X (QoS 0, not retained) whose payload is what
    // current.read-message gave: `<topic>|<payload>|<qos>|<retain>|<received-millis>`.
    let sub = fast_subscriber(&broker, &["fast/read/#", "read/#"], 6, 15).await;
    let unix_millis = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64
    };
    let before = unix_millis();
    publish_all(
        &broker,
        &[
            "-i p-read2 -q 2 -r -t fast/read/two -m v2",
            "-i p-read1 -q 1 -t fast/read/one -m 25.5",
            "-i p-read0 -q 0 -t fast/read/empty -n",
        ],
    )
    .await;
    let received = received_sorted(sub).await;
    // Only now: a QoS 0 publisher may exit before the broker has read its message.
    let after = unix_millis();
    // The time of arrival (the last field of each read/ payload, before the subscriber's
    // `|<qos>|<retain>`) lies between the first publish and the last delivery.
    let mut lines: Vec<String> = received
        .into_iter()
        .map(|line| {
            if !line.starts_with("read/") {
                return line;
            }
            let fields: Vec<&str> = line.split('|').collect();
            let n = fields.len();
            assert!(n >= 3, "{line}");
            let ms: u64 = fields[n - 3].parse().expect("received-millis is a number");
            assert!(
                (before..=after).contains(&ms),
                "received-millis {ms} outside {before}..={after}: {line}"
            );
            [&fields[..n - 3], &fields[n - 2..]].concat().join("|")
        })
        .collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        sorted(&[
            // Forwarded live to an existing subscriber: RETAIN 0 [MQTT-3.3.1-9].
            "fast/read/two|v2|2|0",
            "read/two|fast/read/two|v2|2|1|0|0",
            "fast/read/one|25.5|1|0",
            "read/one|fast/read/one|25.5|1|0|0|0",
            "fast/read/empty||0|0",
            "read/empty|fast/read/empty||0|0|0|0",
        ]),
        "each added message carries the original's topic, payload, QoS and retain flag"
    );
    let stats = stats_of(&broker, "fast-rules");
    assert_eq!(stats.calls, 3, "{stats:?}");
    assert_eq!(stats.failures, 0, "{stats:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_transform_answer_replace_without_a_replacement_is_a_failed_call() {
    use mqtt_broker::plugins::OnError;
    // The default on_error (deny: fail closed) drops the message; `pass` keeps it unchanged.
    for on_error in [None, Some(OnError::Pass)] {
        let mut plugin = fast_rules();
        if let Some(e) = on_error {
            plugin.on_error = e;
        }
        let kept = plugin.on_error == OnError::Pass;
        let broker = start_broker(|c| c.plugins = vec![plugin]).await;
        let expected: &[&str] = if kept {
            &["fast/noreplace/x|original|1|0", "fast/other|after|1|0"]
        } else {
            &["fast/other|after|1|0"]
        };
        let sub = fast_subscriber(&broker, &["fast/#"], expected.len(), 15).await;
        publish_all(
            &broker,
            &[
                "-i p-noreplace -q 1 -t fast/noreplace/x -m original",
                // After the failure the plugin still serves (it is not degraded by one).
                "-i p-after -q 1 -t fast/other -m after",
            ],
        )
        .await;
        let lines = received_sorted(sub).await;
        assert_eq!(lines, sorted(expected), "on_error {on_error:?}");
        let stats = stats_of(&broker, "fast-rules");
        assert_eq!(
            (stats.calls, stats.failures, stats.traps),
            (2, 1, 1),
            "on_error {on_error:?}: one failed call of two: {stats:?}"
        );
        assert!(!stats.degraded, "{stats:?}");
        let error = &stats
            .recent_errors
            .first()
            .expect("the failure is listed")
            .error;
        assert!(
            error.contains("p-noreplace")
                && error
                    .contains("fast-transform answered replace without calling current.replace"),
            "names the client and what went wrong: {error}"
        );
        broker.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_transform_limits_and_validates_added_messages() {
    let mut plugin = fast_rules();
    // 65 host calls in one plugin call: a generous time limit, so that a busy machine running
    // a debug build does not turn this test into one of timeouts.
    plugin.limits.call_timeout = mqtt_broker::config::ConfigDuration::secs(2);
    let broker = start_broker(|c| c.plugins = vec![plugin]).await;
    // 64 added + 1 error replacement, 1 error replacement, 1 kept.
    let sub = fast_subscriber(
        &broker,
        &["toomany/#", "badtopic/#", "bad/#", "fast/#"],
        67,
        15,
    )
    .await;
    publish_all(
        &broker,
        &[
            "-i p-many -q 1 -t fast/toomany/x -m m",
            "-i p-bad -q 1 -t fast/badtopic/x -m m",
            "-i p-other -q 1 -t fast/other -m plain",
        ],
    )
    .await;
    let out = sub.await.expect("subscriber");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "all 67 messages came:\n{text}\n{out:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    // The first 64 current.add calls succeeded, and their messages came in the order added.
    let added: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("toomany/added|"))
        .collect();
    let expected: Vec<String> = (0..64).map(|i| format!("{i}|1|0")).collect();
    assert_eq!(added, expected, "64 added messages, in order:\n{text}");
    // The 65th returned an error, which the plugin routed instead of the message.
    let too_many: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("toomany/error|"))
        .collect();
    assert_eq!(too_many.len(), 1, "{text}");
    assert!(
        too_many[0].contains("64") && too_many[0].ends_with("|1|0"),
        "the error names the limit: {}",
        too_many[0]
    );
    // An added message with a wildcard in its topic is refused with an error.
    let bad: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("badtopic/error|"))
        .collect();
    assert_eq!(bad.len(), 1, "{text}");
    assert!(
        bad[0].starts_with("plugin produced an invalid topic name \"bad/+/topic\"")
            && bad[0].ends_with("|1|0"),
        "the error names the topic: {}",
        bad[0]
    );
    assert!(lines.contains(&"fast/other|plain|1|0"), "{text}");
    assert!(
        !lines.iter().any(|l| l.starts_with("bad/")
            || l.starts_with("fast/toomany")
            || l.starts_with("fast/badtopic")),
        "no invalid message and no replaced original:\n{text}"
    );
    let stats = stats_of(&broker, "fast-rules");
    assert_eq!(
        (stats.calls, stats.failures),
        (3, 0),
        "an error returned to the plugin is not a failed call: {stats:?}"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_transform_sees_mqtt5_user_properties() {
    let broker = start_broker(|c| c.plugins = vec![fast_rules()]).await;
    let sub = fast_subscriber(&broker, &["fast/#", "props/#"], 4, 15).await;
    publish_all(
        &broker,
        &[
            // MQTT 5, a name repeated: all of them, in the order sent.
            "-V mqttv5 -i p5 -t fast/props/five -m m5 -D publish user-property a 1 \
             -D publish user-property b 2 -D publish user-property a 3",
            // MQTT 3.1.1: no properties.
            "-i p3 -t fast/props/three -m m3",
        ],
    )
    .await;
    let lines = received_sorted(sub).await;
    assert_eq!(
        lines,
        sorted(&[
            "fast/props/five|m5|0|0",
            "props/five|a=1;b=2;a=3|0|0",
            "fast/props/three|m3|0|0",
            "props/three||0|0",
        ])
    );
    assert_eq!(stats_of(&broker, "fast-rules").failures, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_component_exporting_transform_and_fast_transform_is_refused() {
    let both = noop("both-transforms");
    let err = start_err(vec![both.clone()]).await;
    assert!(err.contains("both-transforms"), "names the plugin: {err}");
    assert!(
        err.contains("it exports both transform and fast-transform"),
        "says why: {err}"
    );
    // Nor is it taken by a reload: the broker keeps the plugins it had.
    let config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        plugins: vec![fast_rules()],
        ..Default::default()
    };
    let broker = Broker::start(config.clone()).await.expect("broker starts");
    let mut refused = config.clone();
    refused.plugins = vec![both];
    let err = broker
        .reload(refused)
        .await
        .expect_err("a reload with the component is refused")
        .to_string();
    assert!(
        err.contains("it exports both transform and fast-transform"),
        "{err}"
    );
    let names: Vec<String> = broker.plugin_stats().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["fast-rules"]);
    broker.shutdown().await;
}

/// What a transform makes of a message is still that client's message: a No Local
/// subscriber [MQTT-3.8.3-3] does not get its own message back as a replacement or as an
/// added message, while another client does. paho-mqtt (MQTT 5) on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_covers_what_a_transform_made_of_a_clients_message_mqtt_3_8_3_3() {
    const SCRIPT: &str = r#"
import json, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions
host, port = sys.argv[1], int(sys.argv[2])
got = {"self": [], "other": []}
def client(cid, key):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got[key].append(m.topic + "|" + m.payload.decode())
    c.connect(host, port)
    c.loop_start()
    return c
me, other = client("nl-self", "self"), client("nl-other", "other")
filters = ["fast/#", "replaced/#", "added/#"]
me.subscribe([(f, SubscribeOptions(qos=1, noLocal=True)) for f in filters])
other.subscribe([(f, SubscribeOptions(qos=1)) for f in filters[1:]])
time.sleep(0.5)
for c, topic, payload in [(me, "fast/replace/x", "mine"), (me, "fast/add/y", "z"), (other, "fast/replace/o", "theirs")]:
    c.publish(topic, payload, qos=1).wait_for_publish(5)
deadline = time.time() + 5
while len(got["other"]) < 3 and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
print(json.dumps({k: sorted(v) for k, v in got.items()}))
"#;
    let broker = start_broker(|c| c.plugins = vec![fast_rules()]).await;
    let port = broker.local_addr().port().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("python3")
            .args(["-c", SCRIPT, "127.0.0.1", &port])
            .output(),
    )
    .await
    .expect("the paho script finishes within 30 s")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{out:?}");
    let got: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON");
    assert_eq!(
        got["other"],
        serde_json::json!([
            "added/y|10",
            "replaced/o|theirs nl-other",
            "replaced/x|mine nl-self"
        ]),
        "{got}"
    );
    assert_eq!(
        got["self"],
        serde_json::json!(["replaced/o|theirs nl-other"]),
        "its own replaced and added messages are not sent back: {got}"
    );
    broker.shutdown().await;
}
