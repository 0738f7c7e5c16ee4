//! The ESP8266 fleet simulator (src/bin/esp8266-sim.rs) against a real broker: a
//! `sensors/#` (+ legacy `+/dht`) subscriber must receive every reading the simulator says
//! it sent, each device's `online` status must be retained, and every forced drop must
//! make the broker publish that device's `offline` will.
//!
//! The simulator is an example binary, which a test cannot import; `cargo test` builds
//! examples before running tests, into `target/<profile>/examples/`, next to the
//! `deps/` directory this test executable lives in.

mod common;

use common::*;
use mqtt_broker::protocol::{Packet, QoS};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_readings_statuses_and_wills_reach_a_subscriber() {
    // First, as building it may take minutes: the watcher below would hit its keep-alive.
    let simulator = simulator();
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr();

    let (mut watcher, _) = RawClient::connect(addr, "fleet-watcher", true).await;
    watcher
        .subscribe(
            1,
            &[("sensors/#", QoS::AtMostOnce), ("+/dht", QoS::AtMostOnce)],
        )
        .await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let collector = tokio::spawn(collect(watcher, stop_rx));

    let log = std::env::temp_dir().join(format!("esp8266-sim-test-{}.jsonl", std::process::id()));
    let output = tokio::process::Command::new(&simulator)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--devices",
            "5",
            "--interval",
            "200ms",
            "--duration",
            "2s",
            "--ramp",
            "100ms",
            "--disconnect-rate",
            "0.15",
            "--garbage-rate",
            "0.2",
            "--seed",
            "7",
            "--report-every",
            "1s",
            "--log-readings",
        ])
        .arg(&log)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("simulator finishes by itself")
        .expect("simulator runs");
    assert!(
        output.status.success(),
        "simulator failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON summary on stdout");
    let _ = stop_tx.send(());
    let seen = collector.await.expect("collector");

    let lines = std::fs::read_to_string(&log).expect("readings log");
    let _ = std::fs::remove_file(&log);
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let field = |e: &serde_json::Value, k: &str| e[k].as_str().unwrap_or_default().to_string();

    // Every reading written by a device was delivered (QoS 0, but loopback loses nothing
    // and every drop closes the socket only after the bytes were written).
    let mut received: HashMap<(String, String), usize> = HashMap::new();
    for s in &seen {
        *received
            .entry((s.topic.clone(), s.payload.clone()))
            .or_default() += 1;
    }
    let readings: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| matches!(e["kind"].as_str(), Some("valid" | "garbage")))
        .collect();
    let valid = readings.iter().filter(|e| e["kind"] == "valid").count();
    assert!(valid >= 20, "too few valid readings logged: {valid}");
    assert_eq!(
        summary["readings_valid"].as_u64(),
        Some(valid as u64),
        "summary and log agree"
    );
    let mut missing = Vec::new();
    for e in &readings {
        let key = (field(e, "topic"), field(e, "payload"));
        match received.get_mut(&key) {
            Some(n) if *n > 0 => *n -= 1,
            _ => missing.push(key),
        }
    }
    assert!(missing.is_empty(), "readings never delivered: {missing:?}");
    // Readings use the firmware's formats and topics.
    for e in readings.iter().filter(|e| e["kind"] == "valid") {
        let (topic, payload) = (field(e, "topic"), field(e, "payload"));
        assert!(
            topic.starts_with("sensors/") || topic.starts_with("sensors_"),
            "{topic}"
        );
        let value: f64 = payload.parse().expect("valid reading is a number");
        assert_eq!(format!("{value:.1}"), payload, "one decimal");
    }

    // Per device: each drop produced an `offline` will, each (re)connect an `online`.
    let drops = events.iter().filter(|e| e["kind"] == "drop").count();
    assert!(drops >= 1, "the seeded run forces at least one drop");
    let mut devices: Vec<String> = events.iter().map(|e| field(e, "device")).collect();
    devices.sort();
    devices.dedup();
    assert_eq!(devices.len(), 5);
    let mut last_state = HashMap::new();
    for device in &devices {
        let topic = format!("sensors/{device}/status");
        let logged = |kind: &str| {
            events
                .iter()
                .filter(|e| e["device"] == device.as_str() && e["kind"] == kind)
                .count()
        };
        let statuses: Vec<&str> = seen
            .iter()
            .filter(|s| s.topic == topic)
            .map(|s| s.payload.as_str())
            .collect();
        let online = statuses.iter().filter(|p| **p == "online").count();
        let offline = statuses.iter().filter(|p| **p == "offline").count();
        assert_eq!(online, logged("status"), "{device}: online per connect");
        assert_eq!(offline, logged("drop"), "{device}: one will per drop");
        let last = events
            .iter()
            .rev()
            .find(|e| {
                e["device"] == device.as_str()
                    && matches!(e["kind"].as_str(), Some("status" | "drop"))
            })
            .expect("device connected at least once");
        last_state.insert(
            topic,
            if last["kind"] == "drop" {
                "offline"
            } else {
                "online"
            },
        );
    }

    // The retained status is each device's last state: `online` unless it was dropped and
    // had not reconnected when the run ended (a clean DISCONNECT discards the will).
    let (mut late, _) = RawClient::connect(addr, "late-watcher", true).await;
    late.subscribe(1, &[("sensors/+/status", QoS::AtLeastOnce)])
        .await;
    let mut retained = HashMap::new();
    while retained.len() < devices.len() {
        match late.recv().await {
            Some(Packet::Publish(p)) => {
                assert!(p.retain, "status delivered on subscribe is retained");
                if let Some(pid) = p.pid {
                    late.send(&Packet::PubAck(pid)).await;
                }
                retained.insert(
                    p.topic.to_string(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                );
            }
            other => panic!("expected a retained status, got {other:?}"),
        }
    }
    for (topic, state) in &last_state {
        assert_eq!(
            retained.get(topic).map(String::as_str),
            Some(*state),
            "{topic}"
        );
    }
    broker.shutdown().await;
}
