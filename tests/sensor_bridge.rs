//! The two sensor bridges, end to end: the JavaScript one (plugins/sensor-bridge, plugin API
//! 0.1, built with jco) and the C one (plugins/sensor-bridge-c, plugin API 0.2), both built by
//! `bash .ci/plugins.sh`, with the `plugins:` entry of config/sensor-bridge.yaml (only its
//! `path` differs between them). For each: the ESP8266 fleet simulator (src/bin/esp8266-sim.rs,
//! run as a binary the way tests/esp8266_sim.rs does) publishing valid and garbage readings
//! over real sockets, every valid reading arriving exactly once as structured JSON on
//! `home/...` and every garbage one on the error topic with a reason; a rule change in the
//! config file taking effect live; an invalid rule refused with a message naming it. And what
//! the C port must keep of the JavaScript one: byte-for-byte the same messages for the same
//! input (compared through two brokers), and the QoS and retain flag of the raw message.

mod common;

use common::*;
use mqtt_broker::config::Config;
use mqtt_broker::plugins::PluginConfig;
use mqtt_broker::protocol::{Packet, QoS};
use mqtt_broker::{Broker, BrokerError, BrokerHandle};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One of the two bridges: the same rules, config and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bridge {
    /// plugins/sensor-bridge (JavaScript, API 0.1).
    Js,
    /// plugins/sensor-bridge-c (C, API 0.2).
    C,
}

impl Bridge {
    /// The plugin's name (and folder).
    fn name(self) -> &'static str {
        match self {
            Bridge::Js => "sensor-bridge",
            Bridge::C => "sensor-bridge-c",
        }
    }

    /// The plugin API version the component speaks.
    fn api(self) -> &'static str {
        match self {
            Bridge::Js => "0.1.0",
            Bridge::C => "0.2.0",
        }
    }

    /// The hook it exports: the compiled bridge uses the cheaper `fast-transform`.
    fn hook(self) -> &'static str {
        match self {
            Bridge::Js => "transform",
            Bridge::C => "fast-transform",
        }
    }

    /// The built component; fails (never skips) when it was not built.
    fn component(self) -> PathBuf {
        let name = self.name();
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("plugins/{name}/{name}.wasm"));
        assert!(
            path.is_file(),
            "{} is missing: build it with `bash plugins/{name}/build.sh` \
             (or all example plugins with `bash .ci/plugins.sh`)",
            path.display()
        );
        path
    }

    /// The `plugins:` entry of config/sensor-bridge.yaml (the example the README documents:
    /// the firmware's split topics, raw kept, and its legacy topic, raw replaced), with only
    /// `path` changed for the C bridge: the `config:` section works unchanged.
    fn entry(self) -> PluginConfig {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/sensor-bridge.yaml");
        let config = Config::load(&file).expect("config/sensor-bridge.yaml loads");
        let mut entry = config.plugins.into_iter().next().expect("one plugin entry");
        assert_eq!(entry.name, "sensor-bridge");
        assert!(
            entry.path.ends_with("sensor-bridge.wasm"),
            "the example is the JavaScript bridge's entry: {}",
            entry.path.display()
        );
        entry.path = self.component();
        entry
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

async fn start(plugins: Vec<PluginConfig>) -> BrokerHandle {
    // Broker and plugin logs in the test output (shown for failing tests).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("mqtt_broker=info")
        .with_test_writer()
        .try_init();
    start_broker(|c: &mut Config| c.plugins = plugins).await
}

/// What the bridge must say about a garbage payload the simulator sends.
fn expected_reason(raw: &str) -> &'static str {
    match raw {
        "" => "empty value",
        "999.9" | "-999.9" => "out of range",
        _ => "not a number",
    }
}

/// Counts of equal keys, to compare what was sent and what arrived as multisets.
fn multiset<K: std::hash::Hash + Eq>(items: impl IntoIterator<Item = K>) -> HashMap<K, usize> {
    let mut m = HashMap::new();
    for k in items {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_readings_become_structured_json_and_garbage_is_reported_js() {
    fleet_readings(Bridge::Js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_readings_become_structured_json_and_garbage_is_reported_c() {
    fleet_readings(Bridge::C).await;
}

async fn fleet_readings(bridge: Bridge) {
    // First, as building it may take minutes: the watcher below would hit its keep-alive.
    let simulator = simulator();
    let mut entry = bridge.entry();
    // The deadline is wall-clock: on a loaded CI machine a descheduled thread may overrun
    // the 10 ms default, and this test is about what the bridge publishes.
    entry.limits.call_timeout = mqtt_broker::config::ConfigDuration(Duration::from_millis(500));
    let broker = start(vec![entry]).await;
    let addr = broker.local_addr();
    let started_ms = now_ms();

    let (mut watcher, _) = RawClient::connect(addr, "bridge-watcher", true).await;
    watcher
        .subscribe(
            1,
            &[
                ("home/#", QoS::AtMostOnce),
                ("sensors/#", QoS::AtMostOnce),
                ("+/dht", QoS::AtMostOnce),
            ],
        )
        .await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let collector = tokio::spawn(collect(watcher, stop_rx));

    let log = std::env::temp_dir().join(format!(
        "{}-test-{}.jsonl",
        bridge.name(),
        std::process::id()
    ));
    let output = tokio::process::Command::new(&simulator)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--devices",
            "4",
            "--interval",
            "150ms",
            "--duration",
            "2s",
            "--ramp",
            "100ms",
            "--garbage-rate",
            "0.25",
            "--seed",
            "11",
            "--report-every",
            "1s",
            "--log-readings",
        ])
        .arg(&log)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("simulator finishes by itself")
        .expect("simulator runs");
    assert!(
        output.status.success(),
        "simulator failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = stop_tx.send(());
    let seen = collector.await.expect("collector");
    let finished_ms = now_ms();

    let lines = std::fs::read_to_string(&log).expect("readings log");
    let _ = std::fs::remove_file(&log);
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let readings: Vec<&Value> = events
        .iter()
        .filter(|e| matches!(e["kind"].as_str(), Some("valid" | "garbage")))
        .collect();
    let valid = readings.iter().filter(|e| e["kind"] == "valid").count();
    let garbage = readings.len() - valid;
    assert!(valid >= 60, "too few valid readings: {valid}");
    assert!(garbage >= 10, "too few garbage readings: {garbage}");

    // What each logged reading must produce on home/...: (topic, quantity, expected value)
    // for valid ones, (topic, raw payload) for garbage ones.
    let mut expect_values: Vec<(String, String, String)> = Vec::new();
    let mut expect_errors: Vec<(String, String)> = Vec::new();
    let mut expect_raw: Vec<(String, String)> = Vec::new();
    for e in &readings {
        let (device, topic, payload) = (text(e, "device"), text(e, "topic"), text(e, "payload"));
        let (out, quantity, decimals) = if topic == format!("sensors_{device}/dht") {
            (
                format!("home/{device}/legacy/temperature"),
                "temperature",
                1,
            )
        } else if let Some(q) = topic.strip_prefix(&format!("sensors/{device}/")) {
            // The split rule keeps the raw message.
            expect_raw.push((topic.clone(), payload.clone()));
            match q {
                "temperature" => (format!("home/{device}/temperature"), "temperature", 1),
                "humidity" => (format!("home/{device}/humidity"), "humidity", 0),
                other => panic!("unexpected reading topic {other}"),
            }
        } else {
            panic!("unexpected reading topic {topic}");
        };
        if e["kind"] == "valid" {
            let v: f64 = payload.parse().expect("a valid reading is a number");
            // Half away from zero, as the plugin rounds (f64::round does the same).
            let scale = 10f64.powi(decimals);
            let rounded = (v * scale).round() / scale;
            expect_values.push((out, quantity.to_string(), format!("{rounded}")));
        } else {
            expect_errors.push((format!("{out}/error"), payload));
        }
    }

    let mut got_values = Vec::new();
    let mut got_errors = Vec::new();
    let mut got_raw = Vec::new();
    let mut statuses = 0;
    for s in &seen {
        if s.topic.starts_with("home/") {
            let json: Value = serde_json::from_str(&s.payload)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", s.topic, s.payload));
            let ts = json["ts"]
                .as_u64()
                .unwrap_or_else(|| panic!("no ts: {json}"));
            assert!(
                (started_ms..=finished_ms).contains(&ts),
                "ts {ts} outside the run ({started_ms}..={finished_ms})"
            );
            let device = s.topic.split('/').nth(1).unwrap_or_default();
            assert_eq!(json["device"], device, "{}: {json}", s.topic);
            if s.topic.ends_with("/error") {
                let raw = json["raw"]
                    .as_str()
                    .expect("raw payload in the error")
                    .to_string();
                let reason = json["reason"].as_str().expect("reason");
                assert!(
                    reason.starts_with(expected_reason(&raw)),
                    "{}: raw {raw:?}: reason {reason:?}",
                    s.topic
                );
                let quantity = json["quantity"].as_str().expect("quantity");
                assert!(s.topic.contains(quantity), "{}: {json}", s.topic);
                let source = json["topic"].as_str().expect("source topic");
                assert!(source.contains(device), "{source} vs {}", s.topic);
                // The exact byte layout of the README.
                assert_eq!(
                    s.payload,
                    format!(
                        r#"{{"device":"{device}","quantity":"{quantity}","topic":"{source}","raw":{},"reason":{},"ts":{ts}}}"#,
                        json["raw"], json["reason"]
                    )
                );
                got_errors.push((s.topic.clone(), raw));
            } else {
                let obj = json.as_object().expect("a JSON object");
                let quantity = if s.topic.ends_with("/humidity") {
                    "humidity"
                } else {
                    "temperature"
                };
                let unit = if quantity == "humidity" { "%" } else { "C" };
                let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                assert_eq!(keys.len(), 4, "{json}");
                assert_eq!(json["unit"], unit, "{json}");
                let value = json[quantity]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{quantity} is a number: {json}"));
                got_values.push((s.topic.clone(), quantity.to_string(), format!("{value}")));
                // The exact byte layout of the README.
                assert_eq!(
                    s.payload,
                    format!(
                        r#"{{"device":"{device}","{quantity}":{},"unit":"{unit}","ts":{ts}}}"#,
                        json[quantity]
                    )
                );
            }
        } else if s.topic.ends_with("/status") {
            statuses += 1;
        } else if s.topic.starts_with("sensors/") {
            got_raw.push((s.topic.clone(), s.payload.clone()));
        } else {
            panic!("the legacy raw topic must be dropped (replace: true): {s:?}");
        }
    }

    assert_eq!(
        got_values.len(),
        valid,
        "one structured reading per valid reading"
    );
    assert_eq!(
        multiset(got_values),
        multiset(expect_values),
        "every valid reading exactly once, with the right value"
    );
    assert_eq!(got_errors.len(), garbage, "one error per garbage reading");
    assert_eq!(multiset(got_errors), multiset(expect_errors));
    assert_eq!(
        multiset(got_raw),
        multiset(expect_raw),
        "the split rule keeps every raw message"
    );
    assert!(statuses >= 4, "status messages pass through untouched");
    eprintln!(
        "bridged {valid} valid and {garbage} garbage readings; {statuses} statuses passed through"
    );

    let stats = &broker.plugin_stats()[0];
    assert_eq!(stats.hooks, vec![bridge.hook()]);
    assert_eq!(stats.api, bridge.api());
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert_eq!(
        stats.calls as usize,
        readings.len() + statuses,
        "one call per published message"
    );
    broker.shutdown().await;
}

fn temp_dir(bridge: Bridge, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{}-{name}-{}", bridge.name(), std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Writes by rename, as editors and ConfigMaps do.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// A whole broker config with one bridge rule for `sensors/{device}/temperature`.
fn broker_yaml(bridge: Bridge, output: &str, replace: bool, parser: &str) -> String {
    format!(
        "listeners:\n  - {{name: main, bind: '127.0.0.1:0'}}\n\
         plugins:\n  - name: {}\n    path: {}\n    config:\n      rules:\n\
         \x20       - name: dht\n          topic: 'sensors/{{device}}/temperature'\n\
         \x20         parser: {parser}\n          quantity: temperature\n\
         \x20         output: '{output}'\n          unit: C\n          replace: {replace}\n\
         \x20   limits: {{call_timeout: 500ms}}\n",
        bridge.name(),
        bridge.component().display()
    )
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes one reading and returns what the `#` subscriber gets within 300 ms of quiet.
async fn exchange(publisher: &mut RawClient, sub: &mut RawClient, payload: &[u8]) -> Vec<Seen> {
    publisher
        .send(&publish(
            "sensors/aloys/temperature",
            payload,
            QoS::AtMostOnce,
            None,
            false,
        ))
        .await;
    let mut got = Vec::new();
    while let Ok(Some(p)) = sub.recv_within(Duration::from_millis(300)).await {
        match p {
            Packet::Publish(p) => got.push(Seen {
                topic: p.topic.to_string(),
                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                retain: p.retain,
            }),
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    got
}

fn topics(seen: &[Seen]) -> Vec<&str> {
    seen.iter().map(|s| s.topic.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_change_in_the_config_file_takes_effect_live_js() {
    live_rule_change(Bridge::Js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_change_in_the_config_file_takes_effect_live_c() {
    live_rule_change(Bridge::C).await;
}

async fn live_rule_change(bridge: Bridge) {
    let dir = temp_dir(bridge, "reload");
    let cfg = dir.join("broker.yaml");
    write_config(
        &cfg,
        &broker_yaml(bridge, "home/{device}/{quantity}", false, "plain"),
    );
    let broker = Broker::start(Config::load(&cfg).expect("config loads"))
        .await
        .expect("broker starts");
    broker.watch_config(cfg.clone()).expect("watch");
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "dashboard", true).await;
    sub.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
    let (mut device, _) = RawClient::connect(addr, "aloys-1a2b3c", true).await;

    let got = exchange(&mut device, &mut sub, b"25.5").await;
    assert_eq!(
        topics(&got),
        ["home/aloys/temperature", "sensors/aloys/temperature"]
    );
    let json: Value = serde_json::from_str(&got[0].payload).expect("JSON");
    assert_eq!(json["temperature"], 25.5);

    // New output topic, raw dropped: through the file watcher, with the clients connected.
    write_config(
        &cfg,
        &broker_yaml(bridge, "house/{device}/{quantity}", true, "plain"),
    );
    wait_until("the watcher reloads", Duration::from_secs(60), || {
        broker.generation() == 2
    })
    .await;
    assert!(broker.last_reload().ok, "{:?}", broker.last_reload());
    let got = exchange(&mut device, &mut sub, b"26.0").await;
    assert_eq!(topics(&got), ["house/aloys/temperature"], "{got:?}");
    let json: Value = serde_json::from_str(&got[0].payload).expect("JSON");
    assert_eq!(json["temperature"], 26.0);
    assert_eq!(json["device"], "aloys");
    // "26.0" has as many decimals as asked for (none set): the value as sent, as JSON prints it.
    assert!(got[0].payload.contains(r#""temperature":26,"#), "{got:?}");

    // An invalid rule is refused, naming the rule and the key; the rules in force stay.
    write_config(
        &cfg,
        &broker_yaml(bridge, "house/{device}/{quantity}", true, "xml"),
    );
    wait_until(
        "the refused reload is reported",
        Duration::from_secs(60),
        || broker.last_reload().error.is_some(),
    )
    .await;
    let status = broker.last_reload();
    assert!(!status.ok);
    let error = status.error.unwrap_or_default();
    assert!(
        error.contains(bridge.name())
            && error.contains(
                "rules[0] (dht): key `parser`: unknown parser `xml` (use plain, kv, csv or json)"
            ),
        "{error}"
    );
    assert_eq!(broker.generation(), 2);
    let got = exchange(&mut device, &mut sub, b"nan").await;
    assert_eq!(topics(&got), ["house/aloys/temperature/error"], "{got:?}");

    // Neither client was ever disconnected.
    assert_eq!(broker.stats().connections.total, 2);
    device.send(&Packet::PingReq).await;
    assert_eq!(device.recv().await, Some(Packet::PingResp));
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_invalid_rule_is_refused_with_a_message_naming_it_js() {
    invalid_rule(Bridge::Js).await;
}

#[tokio::test]
async fn an_invalid_rule_is_refused_with_a_message_naming_it_c() {
    invalid_rule(Bridge::C).await;
}

async fn invalid_rule(bridge: Bridge) {
    let mut entry = bridge.entry();
    let rules = entry.config.get_mut("rules").expect("rules");
    rules[1]["round"] = serde_yaml_ng::Value::from("lots");
    let mut config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        ..Default::default()
    };
    config.plugins = vec![entry];
    // The same message from both bridges.
    let expected = "plugin sensor-bridge: init refused the config: rules[1] (legacy): key `round`: must be a number";
    match Broker::start(config.clone()).await {
        Err(e @ BrokerError::Plugin(_)) => assert_eq!(e.to_string(), expected),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a broker started with an invalid rule"),
    }
    // `--check-config` runs the same checks.
    let err = Broker::check(config).expect_err("check refuses it");
    assert_eq!(err.to_string(), expected);
}

/// The example rules plus the README's kv, csv and JSON examples, every topic handed to the
/// plugin (no `topics:` filter).
fn all_parsers_entry(path: PathBuf) -> PluginConfig {
    let mut entry = Bridge::C.entry();
    entry.path = path;
    entry.topics.clear();
    entry.limits.call_timeout = mqtt_broker::config::ConfigDuration(Duration::from_millis(500));
    let mut rules: Vec<serde_yaml_ng::Value> =
        serde_yaml_ng::from_value(entry.config["rules"].clone()).expect("rules are a list");
    let more: Vec<serde_yaml_ng::Value> = serde_yaml_ng::from_str(
        r#"
- topic: "dht/{device}"
  parser: kv
  fields: {t: temperature, h: humidity}
  output: "home/{device}/{quantity}"
  quantities:
    temperature: {unit: C, min: -40, max: 80}
    humidity: {unit: "%", min: 0, max: 100}
- topic: "{site}/station/{device}/csv"
  parser: csv
  columns: [null, temperature, humidity, pressure]
  output: "weather/{site}/{device}/{quantity}"
  error_topic: "weather/{site}/errors"
  quantities:
    pressure: {unit: hPa, round: 0}
- topic: "tele/{device}/SENSOR"
  parser: json
  fields: {"AM2301.Temperature": temperature, "AM2301.Humidity": humidity}
  output: "home/{device}/{quantity}"
  round: 1
  replace: true
"#,
    )
    .expect("YAML rules");
    rules.extend(more);
    entry
        .config
        .insert("rules".into(), serde_yaml_ng::Value::Sequence(rules));
    entry
        .config
        .insert("max_payload".into(), serde_yaml_ng::Value::from(64));
    entry
}

/// Readings that exercise rounding, ranges, number syntax, escaping, every parser and the
/// payload-wide failures.
fn parity_inputs() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |t: &str, p: &[u8]| v.push((t.to_string(), p.to_vec()));
    for p in [
        "25.5", "25.46", "25.45", "-0.04", "-0", "1e1", "+4", ".5", "5.", " 21.5\n", "80", "80.04",
        "80.06", "-40", "-40.06", "999.9", "nan", "NaN", "inf", "", "  ", "ERR", "25,5", "0x10",
        "1e999", "25.5C", "1.005", "9.96", "0.05",
    ]
    .into_iter()
    .chain(["0.1234567890123456789", "123456789012345678"])
    {
        add("sensors/esp0001/temperature", p.as_bytes());
        add("sensors/esp0001/humidity", p.as_bytes());
        add("sensors_esp0001/dht", p.as_bytes());
    }
    add("sensors/esp0001/status", b"online");
    add("sensors/k\u{fc}\"che/temperature", b"21");
    add("sensors/esp0001/temperature", b"2\xff5");
    add("sensors/esp0001/temperature", &[b'1'; 100]);
    add(
        "sensors/esp0001/humidity",
        "\u{1F321}".repeat(20).as_bytes(),
    );
    for p in [
        "t=25.5,h=40.1",
        " h: 40.1 , x=1,, t=25.5",
        "t=nan,h=40.1",
        "t=1,t=2,h=3",
        "t=25.5",
        "garbage",
        "",
    ] {
        add("dht/aloys", p.as_bytes());
    }
    for p in [
        "1700000000,21.5,nan,1013.4",
        "1,2",
        "",
        "1,21.04,55.55,1013.5",
    ] {
        add("lab/station/ws1/csv", p.as_bytes());
    }
    for p in [
        r#"{"Time":"2026-11-25T20:00:00","AM2301":{"Temperature":21.46,"Humidity":40}}"#,
        r#"{"AM2301":{"Temperature":"21.46","Humidity":null}}"#,
        r#"{"AM2301":{"Temperature":[1],"Humidity":true}}"#,
        r#"{"AM2301":{}}"#,
        r#"{"AM2301":{"Temperature":1e400,"Humidity":-0.04}}"#,
        r#"[1]"#,
        r#"25.5"#,
        r#"{"AM2301":{"Temperature":"\ud83c","Humidity":1}}"#,
    ] {
        add("tele/plug1/SENSOR", p.as_bytes());
    }
    v
}

/// Publishes `inputs` to a broker with `entry`, then a marker no rule matches; returns every
/// PUBLISH the `#` subscriber got before the marker, with `"ts":<n>` made `"ts":0`.
async fn bridged(entry: PluginConfig, inputs: &[(String, Vec<u8>)]) -> Vec<Seen> {
    let broker = start(vec![entry]).await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "dashboard", true).await;
    sub.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
    let (mut device, _) = RawClient::connect(addr, "esp0001-1a2b3c", true).await;
    for (topic, payload) in inputs {
        device
            .send(&publish(topic, payload, QoS::AtMostOnce, None, false))
            .await;
    }
    device
        .send(&publish("end", b"", QoS::AtMostOnce, None, false))
        .await;
    let mut got = Vec::new();
    loop {
        let p = sub.recv_publish().await;
        let topic = p.topic.to_string();
        if topic == "end" {
            break;
        }
        got.push(Seen {
            topic,
            payload: zero_ts(&String::from_utf8_lossy(&p.payload)),
            retain: p.retain,
        });
    }
    let stats = &broker.plugin_stats()[0];
    assert_eq!(stats.failures, 0, "{stats:?}");
    broker.shutdown().await;
    got
}

/// Replaces the value of every `"ts":` with 0 (the broker's clock differs between runs).
fn zero_ts(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\"ts\":") {
        out.push_str(&rest[..i + 5]);
        rest = rest[i + 5..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('0');
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_bridge_publishes_what_the_javascript_bridge_publishes_byte_for_byte() {
    let inputs = parity_inputs();
    let c = bridged(all_parsers_entry(Bridge::C.component()), &inputs).await;
    let js = bridged(all_parsers_entry(Bridge::Js.component()), &inputs).await;
    // JSON.parse's error texts differ between JavaScript engines and from the C parser's:
    // the rest of each message must be the same bytes.
    let engine_neutral = |s: &Seen| {
        let payload = match s.payload.find("unparsable JSON: ") {
            Some(i) => {
                let end = s.payload[i..]
                    .find("\",\"ts\"")
                    .map_or(s.payload.len(), |e| i + e);
                format!("{}unparsable JSON: …{}", &s.payload[..i], &s.payload[end..])
            }
            None => s.payload.clone(),
        };
        (s.topic.clone(), payload, s.retain)
    };
    let c_set: Vec<_> = c.iter().map(engine_neutral).collect();
    let js_set: Vec<_> = js.iter().map(engine_neutral).collect();
    assert!(
        c_set.len() > inputs.len(),
        "the bridge adds messages: {} for {} inputs",
        c_set.len(),
        inputs.len()
    );
    for (i, (a, b)) in c_set.iter().zip(js_set.iter()).enumerate() {
        assert_eq!(a, b, "message {i} differs (C left, JavaScript right)");
    }
    assert_eq!(c_set.len(), js_set.len(), "as many messages");
    eprintln!(
        "{} inputs gave the same {} messages from both bridges",
        inputs.len(),
        c_set.len()
    );
    // Spot checks of documented bytes.
    assert!(c.iter().any(|s| s.topic == "home/esp0001/temperature"
        && s.payload == r#"{"device":"esp0001","temperature":25.5,"unit":"C","ts":0}"#));
    assert!(c.iter().any(|s| s.topic == "home/esp0001/temperature/error"
        && s.payload
            == r#"{"device":"esp0001","quantity":"temperature","topic":"sensors/esp0001/temperature","raw":"nan","reason":"not a number: \"nan\"","ts":0}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_readings_keep_the_qos_and_retain_flag_and_errors_are_never_retained() {
    let broker = start(vec![Bridge::C.entry()]).await;
    let addr = broker.local_addr();
    let (mut device, _) = RawClient::connect(addr, "aloys-1a2b3c", true).await;
    // A retained QoS 1 reading and a retained garbage one; each PUBACK means the broker has
    // taken the message over, bridged messages included ([MQTT-4.3.2-2]: the receiver
    // acknowledges with PUBACK after taking ownership).
    device
        .send(&publish(
            "sensors/aloys/temperature",
            b"25.46",
            QoS::AtLeastOnce,
            Some(1),
            true,
        ))
        .await;
    assert_eq!(device.recv().await, Some(Packet::PubAck(1)));
    device
        .send(&publish(
            "sensors/aloys/humidity",
            b"nan",
            QoS::AtLeastOnce,
            Some(2),
            true,
        ))
        .await;
    assert_eq!(device.recv().await, Some(Packet::PubAck(2)));

    // A dashboard subscribing afterwards gets the retained messages with RETAIN set
    // ([MQTT-3.3.1-8]): the raw readings and the structured one, but no retained error
    // report (an error is an event, not state).
    let (mut dashboard, _) = RawClient::connect(addr, "dashboard", true).await;
    dashboard.subscribe(1, &[("#", QoS::AtLeastOnce)]).await;
    let mut retained = Vec::new();
    while let Ok(Some(Packet::Publish(p))) = dashboard.recv_within(Duration::from_millis(500)).await
    {
        assert!(p.retain, "only retained messages here: {p:?}");
        assert_eq!(p.qos, QoS::AtLeastOnce, "{p:?}");
        if let Some(pid) = p.pid {
            dashboard.send(&Packet::PubAck(pid)).await;
        }
        retained.push(p.topic.to_string());
    }
    retained.sort();
    assert_eq!(
        retained,
        [
            "home/aloys/temperature",
            "sensors/aloys/humidity",
            "sensors/aloys/temperature"
        ]
    );

    // Live: a QoS 1 reading reaches a QoS 1 subscription at QoS 1, the bridged message too
    // (delivery QoS is the minimum of the two, [MQTT-3.8.4-6]); RETAIN is 0 on messages sent
    // because of an existing subscription ([MQTT-3.3.1-9]).
    device
        .send(&publish(
            "sensors/aloys/humidity",
            b"41.5",
            QoS::AtLeastOnce,
            Some(3),
            false,
        ))
        .await;
    assert_eq!(device.recv().await, Some(Packet::PubAck(3)));
    let mut live = Vec::new();
    for _ in 0..2 {
        let p = dashboard.recv_publish().await;
        assert_eq!(p.qos, QoS::AtLeastOnce, "{p:?}");
        assert!(!p.retain, "{p:?}");
        dashboard
            .send(&Packet::PubAck(p.pid.expect("QoS 1 has a packet id")))
            .await;
        live.push((
            p.topic.to_string(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        ));
    }
    live.sort();
    assert_eq!(live[0].0, "home/aloys/humidity");
    assert!(
        live[0]
            .1
            .starts_with(r#"{"device":"aloys","humidity":42,"unit":"%","ts":"#),
        "{live:?}"
    );
    assert_eq!(
        live[1],
        ("sensors/aloys/humidity".to_string(), "41.5".to_string())
    );
    broker.shutdown().await;
}
