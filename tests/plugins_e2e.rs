//! End-to-end tests of the example plugins (plugins/*), built from source by
//! `bash .ci/plugins.sh`, loaded by a broker and exercised over real sockets by real MQTT
//! clients: device-auth (Python), device-acl (C) and topic-rewrite (JavaScript).

mod common;

use common::*;
use hmac::{Hmac, Mac};
use mqtt_broker::config::Config;
use mqtt_broker::plugins::{ArtifactSource, PluginConfig};
use mqtt_broker::protocol::*;
use mqtt_broker::BrokerHandle;
use sha2::Sha256;
use std::path::PathBuf;
use std::time::Duration;

const SECRET: &str = "fleet-secret-for-tests-0123456789";

/// The built component of an example plugin; fails (never skips) when it was not built.
fn component(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(name)
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the example plugins with `bash .ci/plugins.sh`",
        path.display()
    );
    path
}

fn device_auth() -> PluginConfig {
    let mut p = PluginConfig::new("device-auth", component("device-auth"))
        .with("secret", SECRET)
        .with("abstain_users", "admin");
    // CPython inside needs more than the 64 MiB default.
    p.limits.memory = mqtt_broker::plugins::ByteSize(128 << 20);
    p
}

fn device_acl() -> PluginConfig {
    PluginConfig::new("device-acl", component("device-acl")).with("admin_users", "admin")
}

fn topic_rewrite(mode: &str) -> PluginConfig {
    PluginConfig::new("topic-rewrite", component("topic-rewrite"))
        .with(
            "rules",
            r#"{"devices/": "fleet/", "legacy/sensors/": "sensors/"}"#,
        )
        .with("mode", mode)
}

/// The password device-auth expects: lowercase hex HMAC-SHA256(secret, client id).
fn device_password(client_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(client_id.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn connect_as(client_id: &str, username: Option<&str>, password: Option<&str>) -> Connect {
    Connect {
        username: username.map(str::to_owned),
        password: password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
        ..connect_packet(client_id, true)
    }
}

async fn start(plugins: Vec<PluginConfig>) -> BrokerHandle {
    // Broker and plugin logs in the test output (shown for failing tests).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("mqtt_broker=info")
        .with_test_writer()
        .try_init();
    start_broker(|c: &mut Config| c.plugins = plugins).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_auth_python_checks_hmac_credentials() {
    let broker = start(vec![device_auth()]).await;
    let addr = broker.local_addr();
    assert_eq!(broker.plugin_stats()[0].hooks, vec!["authenticate"]);

    // A real client library with valid credentials connects and works.
    let mut opts = rumqttc::MqttOptions::new("sensor-17", addr.ip().to_string(), addr.port());
    opts.set_credentials("sensor-17", device_password("sensor-17"));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    let ack = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => return a,
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    client.disconnect().await.expect("disconnect");

    // Wrong password: CONNACK 0x04 (bad user name or password).
    let (_, ack) = RawClient::connect_with(
        addr,
        connect_as(
            "sensor-17",
            Some("sensor-17"),
            Some(&device_password("sensor-18")),
        ),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::BadUsernameOrPassword);
    // No password: 0x04.
    let (_, ack) =
        RawClient::connect_with(addr, connect_as("sensor-17", Some("sensor-17"), None)).await;
    assert_eq!(ack.code, ConnectReturnCode::BadUsernameOrPassword);
    // User name differs from the client id: 0x05 (not authorized), even with its own password.
    let (_, ack) = RawClient::connect_with(
        addr,
        connect_as(
            "sensor-17",
            Some("sensor-18"),
            Some(&device_password("sensor-18")),
        ),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    // Upper-case hex is the same password.
    let upper = device_password("sensor-17").to_uppercase();
    let (_, ack) = RawClient::connect_with(
        addr,
        connect_as("sensor-17", Some("sensor-17"), Some(&upper)),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);

    let s = &broker.plugin_stats()[0];
    assert_eq!(s.failures, 0, "{s:?}");
    assert!(s.calls >= 5, "{s:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_acl_c_confines_devices_to_their_topics() {
    let broker = start(vec![device_acl()]).await;
    let addr = broker.local_addr();
    let admin = connect_as("ops-console", Some("admin"), None);
    let (mut ops, ack) = RawClient::connect_with(addr, admin).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    // The admin may subscribe to everything.
    assert_eq!(
        ops.subscribe(1, &[("#", QoS::AtLeastOnce)]).await,
        vec![SubAckCode::Granted(QoS::AtLeastOnce)]
    );

    let (mut a, _) = RawClient::connect(addr, "dev-a", true).await;
    // A may not subscribe to B's commands, nor to everybody's; it may subscribe to its own.
    assert_eq!(
        a.subscribe(
            2,
            &[
                ("commands/dev-b/#", QoS::AtLeastOnce),
                ("commands/#", QoS::AtLeastOnce),
                ("commands/dev-a/#", QoS::AtLeastOnce)
            ]
        )
        .await,
        vec![
            SubAckCode::Failure,
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::AtLeastOnce)
        ]
    );
    // A may not publish under B's topic: acknowledged (3.1.1 has no negative PUBACK) but not routed.
    a.send(&publish(
        "devices/dev-b/temp",
        b"spoofed",
        QoS::AtLeastOnce,
        Some(3),
        false,
    ))
    .await;
    assert_eq!(a.recv().await, Some(Packet::PubAck(3)));
    ops.expect_silence(Duration::from_millis(300)).await;
    // A publishes under its own tree: routed.
    a.send(&publish(
        "devices/dev-a/temp",
        b"21.5",
        QoS::AtLeastOnce,
        Some(4),
        false,
    ))
    .await;
    assert_eq!(a.recv().await, Some(Packet::PubAck(4)));
    let got = ops.recv_publish().await;
    assert_eq!(
        (&*got.topic, &got.payload[..]),
        ("devices/dev-a/temp", &b"21.5"[..])
    );
    ops.send(&Packet::PubAck(got.pid.expect("pid"))).await;
    // The admin commands A.
    ops.send(&publish(
        "commands/dev-a/reboot",
        b"now",
        QoS::AtLeastOnce,
        Some(5),
        false,
    ))
    .await;
    let cmd = a.recv_publish().await;
    assert_eq!(&*cmd.topic, "commands/dev-a/reboot");

    let s = &broker.plugin_stats()[0];
    assert_eq!(s.hooks, vec!["authorize"]);
    assert_eq!(s.failures, 0, "{s:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_rewrite_js_rewrites_and_stamps() {
    let broker = start(vec![topic_rewrite("replace")]).await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "sub", true).await;
    sub.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = RawClient::connect(addr, "pub", true).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    publisher
        .send(&publish(
            "legacy/sensors/t1",
            br#"{"celsius":21.5}"#,
            QoS::AtMostOnce,
            None,
            false,
        ))
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(
        &*got.topic, "sensors/t1",
        "rewritten by the longest matching prefix"
    );
    let json: serde_json::Value = serde_json::from_slice(&got.payload).expect("JSON payload");
    assert_eq!(json["celsius"], 21.5);
    let stamped = json["broker_time"]
        .as_u64()
        .expect("stamped with broker_time");
    assert!(
        stamped >= before && stamped < before + 60_000,
        "{stamped} vs {before}"
    );
    // Non-JSON payloads are moved, not stamped; unmatched topics are untouched.
    publisher
        .send(&publish(
            "legacy/sensors/raw",
            b"\x01\x02",
            QoS::AtMostOnce,
            None,
            false,
        ))
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(
        (&*got.topic, &got.payload[..]),
        ("sensors/raw", &b"\x01\x02"[..])
    );
    publisher
        .send(&publish("other/x", b"{}", QoS::AtMostOnce, None, false))
        .await;
    let got = sub.recv_publish().await;
    assert_eq!((&*got.topic, &got.payload[..]), ("other/x", &b"{}"[..]));
    sub.expect_silence(Duration::from_millis(200)).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_plugins_together_auth_acl_and_bridge_copy() {
    let broker = start(vec![device_auth(), device_acl(), topic_rewrite("copy")]).await;
    let addr = broker.local_addr();
    let stats = broker.plugin_stats();
    assert_eq!(
        stats.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["device-auth", "device-acl", "topic-rewrite"]
    );

    let (mut ops, ack) =
        RawClient::connect_with(addr, connect_as("ops", Some("admin"), None)).await;
    assert_eq!(
        ack.code,
        ConnectReturnCode::Accepted,
        "device-auth abstains for admin"
    );
    ops.subscribe(1, &[("#", QoS::AtMostOnce)]).await;

    let pw = device_password("dev-a");
    let (mut a, ack) =
        RawClient::connect_with(addr, connect_as("dev-a", Some("dev-a"), Some(&pw))).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    let (_, ack) =
        RawClient::connect_with(addr, connect_as("dev-b", Some("dev-b"), Some(&pw))).await;
    assert_eq!(
        ack.code,
        ConnectReturnCode::BadUsernameOrPassword,
        "A's password does not work for B"
    );

    // Copy mode: the raw reading is kept and a stamped copy added under the new prefix.
    a.send(&publish(
        "devices/dev-a/temp",
        br#"{"t":1}"#,
        QoS::AtMostOnce,
        None,
        false,
    ))
    .await;
    let first = ops.recv_publish().await;
    let second = ops.recv_publish().await;
    assert_eq!(
        (&*first.topic, &first.payload[..]),
        ("devices/dev-a/temp", &br#"{"t":1}"#[..])
    );
    assert_eq!(&*second.topic, "fleet/dev-a/temp");
    let json: serde_json::Value = serde_json::from_slice(&second.payload).expect("JSON");
    assert!(json["broker_time"].is_u64(), "{json}");
    // The ACL runs before the transform: a spoofed publish produces nothing at all.
    a.send(&publish(
        "devices/dev-b/temp",
        br#"{"t":2}"#,
        QoS::AtMostOnce,
        None,
        false,
    ))
    .await;
    ops.expect_silence(Duration::from_millis(300)).await;

    for s in broker.plugin_stats() {
        assert_eq!(s.failures, 0, "{s:?}");
        assert!(s.calls > 0, "{s:?}");
        assert!(s.peak_memory_bytes <= s.memory_limit_bytes, "{s:?}");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn python_component_restart_loads_from_cache() {
    // Loaded once (maybe compiled, maybe from an earlier run's cache); the next start must
    // come from the cache.
    let first = start(vec![device_auth()]).await;
    first.shutdown().await;
    let second = start(vec![device_auth()]).await;
    assert_eq!(second.plugin_stats()[0].artifact, ArtifactSource::Cache);
    second.shutdown().await;
}
