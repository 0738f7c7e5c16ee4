//! The delivery-receipts plugin (plugins/delivery-receipts, C, plugin API 0.2 world
//! `delivery-observer`, built by `bash .ci/plugins.sh`) end to end with Debian's
//! `mosquitto_sub` / `mosquitto_pub`: a QoS 1 delivery acknowledged by a device makes one
//! receipt on `receipts/<client-id>`, a QoS 0 delivery none, a receipt acknowledged by its
//! own QoS 1 subscriber no receipt of a receipt; without the `publish` grant no receipt is
//! published and the denial is counted.

mod common;

use common::*;
use mqtt_broker::plugins::PluginConfig;
use mqtt_broker::BrokerHandle;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn receipts_plugin(grant: bool) -> PluginConfig {
    let path = built_plugin("plugins/delivery-receipts/delivery-receipts.wasm");
    let mut p = PluginConfig::new("receipts", path);
    if grant {
        p.capabilities.publish = Some(mqtt_broker::plugins::config::PublishGrant {
            topics: vec!["receipts/#".into()],
            max_per_call: 4,
        });
    }
    p
}

fn client(program: &str, broker: &BrokerHandle, args: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.arg("20")
        .arg(program)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.local_addr().port().to_string(),
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits (bounded) until `ok` holds for the plugin's stats.
async fn wait_stats(
    broker: &BrokerHandle,
    ok: impl Fn(&mqtt_broker::plugins::PluginStats) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = broker.plugin_stats()[0].clone();
        if ok(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "plugin stats never got there: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_qos1_delivery_makes_exactly_one_receipt() {
    let broker = start_broker(|c| c.plugins = vec![receipts_plugin(true)]).await;
    // The receipt watcher subscribes at QoS 1 (it acknowledges receipts too) and stops after
    // its second message or 4 s: exactly one must come.
    let watcher = client(
        "mosquitto_sub",
        &broker,
        &[
            "-i",
            "watcher",
            "-q",
            "1",
            "-t",
            "receipts/#",
            "-v",
            "-W",
            "4",
        ],
    )
    .spawn()
    .expect("mosquitto_sub");
    let device = client(
        "mosquitto_sub",
        &broker,
        &[
            "-i", "dev+1", "-q", "1", "-t", "cmd/#", "-C", "2", "-W", "10",
        ],
    )
    .spawn()
    .expect("mosquitto_sub");
    tokio::time::sleep(Duration::from_millis(600)).await;
    for (qos, msg) in [("0", "no-receipt"), ("1", "reboot")] {
        let out = client(
            "mosquitto_pub",
            &broker,
            &["-q", qos, "-t", "cmd/dev-1/x", "-m", msg],
        )
        .output()
        .expect("mosquitto_pub");
        assert!(out.status.success(), "{out:?}");
    }
    let device = device.wait_with_output().expect("device");
    assert_eq!(
        String::from_utf8_lossy(&device.stdout),
        "no-receipt\nreboot\n"
    );
    let watcher = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .expect("join")
        .expect("watcher");
    let text = String::from_utf8_lossy(&watcher.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one receipt, none for QoS 0 or for the receipt itself: {text}"
    );
    let (topic, json) = lines[0].split_once(' ').expect("topic and payload");
    // `+` in the client id becomes `_`: one topic level per client.
    assert_eq!(topic, "receipts/dev_1");
    let v: serde_json::Value = serde_json::from_str(json).expect("JSON receipt");
    assert_eq!(v["client_id"], "dev+1");
    assert_eq!(v["topic"], "cmd/dev-1/x");
    assert_eq!(v["qos"], 1);
    assert!(v["at"].as_u64().unwrap_or(0) > 1_700_000_000_000, "{v}");
    // Deliveries: two to the device, one receipt to the watcher; acknowledgements: the
    // device's and the watcher's.
    wait_stats(&broker, |s| s.events_delivered >= 5 && s.published == 1).await;
    let s = broker.plugin_stats()[0].clone();
    assert_eq!(
        (s.failures, s.capability_denied, s.events_dropped),
        (0, 0, 0),
        "{s:?}"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_publish_grant_no_receipt_is_published() {
    let broker = start_broker(|c| c.plugins = vec![receipts_plugin(false)]).await;
    let watcher = client(
        "mosquitto_sub",
        &broker,
        &["-t", "receipts/#", "-v", "-W", "3"],
    )
    .spawn()
    .expect("mosquitto_sub");
    let device = client(
        "mosquitto_sub",
        &broker,
        &[
            "-i", "dev-2", "-q", "1", "-t", "cmd/#", "-C", "1", "-W", "10",
        ],
    )
    .spawn()
    .expect("mosquitto_sub");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let out = client(
        "mosquitto_pub",
        &broker,
        &["-q", "1", "-t", "cmd/dev-2/x", "-m", "hi"],
    )
    .output()
    .expect("mosquitto_pub");
    assert!(out.status.success(), "{out:?}");
    let device = device.wait_with_output().expect("device");
    assert_eq!(
        String::from_utf8_lossy(&device.stdout),
        "hi\n",
        "delivery unaffected"
    );
    wait_stats(&broker, |s| s.capability_denied >= 1).await;
    let watcher = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .expect("join")
        .expect("watcher");
    assert_eq!(
        String::from_utf8_lossy(&watcher.stdout),
        "",
        "no receipt without the grant"
    );
    let s = broker.plugin_stats()[0].clone();
    assert_eq!(
        (s.published, s.failures),
        (0, 0),
        "a denied capability is not a failed call: {s:?}"
    );
    broker.shutdown().await;
}
