//! End-to-end tests of the audit plugin (`plugins/audit`, C, world `observer` of
//! mqtt-broker:plugin@0.2.0, built by `bash plugins/audit/build.sh`): a broker loads it with
//! the grants `kv`, `publish: {topics: ["audit/#"]}` and `tick: 200ms`; Mosquitto's own
//! command-line clients (`mosquitto_pub` / `mosquitto_sub`, Debian `mosquitto-clients`)
//! connect, subscribe, publish and disconnect over real loopback sockets, and a
//! `mosquitto_sub -t audit/summary` process reads the retained JSON summary the plugin
//! publishes on every tick: connects, disconnects by reason, messages and bytes published,
//! subscriptions, messages dropped for an offline persistent session (subscribed at QoS 0),
//! an expired session, config reloads in force and refused, clients. The per-client records
//! and the totals are read back from the key-value store's file (file persistence) and
//! survive a broker restart.
//!
//! Denials: without `tick` the plugin's tick is never called and nothing is published;
//! without `publish` it ticks but every summary is refused (counted, warned about once);
//! without `kv` it warns once and counts in its instance's memory (restarting from zero when
//! a reload replaces the instance); a store too small for every client keeps the totals
//! right. A tiny event queue under a burst drops events (counted) while every message still
//! reaches its subscriber.

mod common;

use common::clients::mosquitto;
use common::*;
use mqtt_broker::config::{Config, StorageType};
use mqtt_broker::events::BrokerEvent;
use mqtt_broker::plugins::{PluginConfig, PluginStats};
use mqtt_broker::BrokerHandle;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, mpsc};

/// How long one short-lived client process may run.
const PROCESS_LIMIT: Duration = Duration::from_secs(30);
/// How long a summary with the expected counts may take (ticks come every 200 ms).
const SUMMARY_WAIT: Duration = Duration::from_secs(10);
/// Every grant the plugin uses.
const GRANTS: &str = r#"capabilities: {kv: {}, publish: {topics: ["audit/#"]}, tick: 200ms}"#;
/// The summary watchers' client id, excluded from the counts (as is everything `quiet-`).
const WATCHER: &str = "audit-watch";
const EXCLUDE: &str = r#"{exclude: ["audit-watch", "quiet-"]}"#;

// ---------------------------------------------------------------------------------------
// The plugin, the broker and its log

/// A `plugins:` entry for the audit plugin (see [`plugin_entry`]).
fn audit(name: &str, config: &str, rest: &str) -> PluginConfig {
    plugin_entry(
        name,
        &built_plugin("plugins/audit/audit.wasm"),
        config,
        rest,
    )
}

async fn start(plugins: Vec<PluginConfig>, adjust: impl FnOnce(&mut Config)) -> BrokerHandle {
    log_buffer();
    start_broker(|c: &mut Config| {
        c.plugins = plugins;
        adjust(c);
    })
    .await
}

/// The stats of plugin `name` (of the configuration in force).
fn stats(broker: &BrokerHandle, name: &str) -> PluginStats {
    broker
        .plugin_stats()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no plugin {name} loaded"))
}

/// The plugin never failed.
fn assert_healthy(s: &PluginStats) {
    assert_eq!(
        (s.failures, s.traps, s.timeouts, s.degraded),
        (0, 0, 0, false),
        "{s:?}"
    );
}

/// Waits (bounded) until `check` holds for the plugin's stats; returns them.
async fn wait_stats(
    broker: &BrokerHandle,
    name: &str,
    what: &str,
    check: impl Fn(&PluginStats) -> bool,
) -> PluginStats {
    let deadline = Instant::now() + SUMMARY_WAIT;
    loop {
        let s = stats(broker, name);
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {SUMMARY_WAIT:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------
// Mosquitto's clients

/// Runs a client process to its end (feeding it `stdin`), bounded; asserts it succeeded.
async fn run(mut cmd: Command, stdin: Option<String>) -> Output {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn a mosquitto client");
    if let Some(text) = stdin {
        let mut input = child.stdin.take().expect("piped stdin");
        input.write_all(text.as_bytes()).await.expect("write stdin");
        // Dropped: EOF, which ends `mosquitto_pub -l`.
    }
    let out = tokio::time::timeout(PROCESS_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish in {PROCESS_LIMIT:?}"))
        .expect("run a mosquitto client");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mosquitto_pub -i ID -t TOPIC -q QOS -l`: one message per line of `lines`, then a clean
/// DISCONNECT. Returns the payload bytes sent.
async fn publish_lines(
    broker: &BrokerHandle,
    id: &str,
    topic: &str,
    qos: &str,
    lines: &[String],
    extra: &[&str],
) -> u64 {
    let mut args = vec!["-i", id, "-t", topic, "-q", qos, "-l"];
    args.extend_from_slice(extra);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    run(mosquitto("mosquitto_pub", broker, &args), Some(text)).await;
    lines.iter().map(|l| l.len() as u64).sum()
}

/// `n` lines `{stem}-{i}`.
fn numbered(stem: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{stem}-{i}")).collect()
}

/// Waits (bounded) for an event matching `pred`.
async fn wait_event(
    events: &mut broadcast::Receiver<BrokerEvent>,
    what: &str,
    pred: impl Fn(&BrokerEvent) -> bool,
) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(ev) if pred(&ev) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("broker stopped"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} did not happen within {WAIT:?}"));
}

fn subscribed_by(id: &str) -> impl Fn(&BrokerEvent) -> bool + '_ {
    move |ev| matches!(ev, BrokerEvent::Subscribed { client_id, .. } if &**client_id == id)
}

fn disconnected(id: &str) -> impl Fn(&BrokerEvent) -> bool + '_ {
    move |ev| matches!(ev, BrokerEvent::ClientDisconnected { client_id, .. } if &**client_id == id)
}

/// A `mosquitto_sub -v -t audit/summary` process; its output lines arrive through a channel.
struct Summaries {
    /// Killed when dropped.
    _child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// The last summary read, for failure messages.
    last: Option<Value>,
}

impl Summaries {
    /// Starts the watcher (client id [`WATCHER`]) and returns once it is subscribed.
    async fn start(broker: &BrokerHandle) -> Summaries {
        let mut events = broker.events();
        let mut child = mosquitto(
            "mosquitto_sub",
            broker,
            &["-i", WATCHER, "-v", "-t", "audit/#"],
        )
        .spawn()
        .expect("spawn mosquitto_sub");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        wait_event(
            &mut events,
            "the summary watcher's SUBSCRIBE",
            subscribed_by(WATCHER),
        )
        .await;
        Summaries {
            _child: child,
            lines,
            last: None,
        }
    }

    /// The next summary, by `deadline` (`None` when nothing came).
    async fn next_by(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        let line = tokio::time::timeout_at(deadline, self.lines.recv())
            .await
            .ok()?;
        let line = line.expect("the summary watcher exited");
        let (topic, payload) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not a `mosquitto_sub -v` line: {line:?}"));
        assert_eq!(
            topic, "audit/summary",
            "the plugin published elsewhere: {line}"
        );
        let v: Value = serde_json::from_str(payload)
            .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {payload}"));
        self.last = Some(v.clone());
        Some(v)
    }

    /// Waits for a summary whose counts (all but `at`) are exactly `want`; then checks that
    /// the next two summaries say the same (nothing is counted late or twice) and returns
    /// the last one.
    async fn expect(&mut self, want: Counts) -> Value {
        let want = &want.json();
        let deadline = tokio::time::Instant::now() + SUMMARY_WAIT;
        loop {
            let Some(v) = self.next_by(deadline).await else {
                panic!(
                    "no summary with {want} within {SUMMARY_WAIT:?}; the last one: {}",
                    self.last.as_ref().map_or("none".into(), Value::to_string)
                );
            };
            if counts(&v) == *want {
                break;
            }
        }
        let mut v = Value::Null;
        for _ in 0..2 {
            let deadline = tokio::time::Instant::now() + WAIT;
            v = self.next_by(deadline).await.expect("summaries keep coming");
            assert_eq!(counts(&v), *want, "the counts changed afterwards");
        }
        v
    }

    /// Asserts that nothing arrives for `d`.
    async fn expect_silence(&mut self, d: Duration) {
        if let Ok(line) = tokio::time::timeout(d, self.lines.recv()).await {
            panic!("expected no summary, got {line:?}");
        }
    }
}

/// A summary without its `at`, which it must have (a time in milliseconds, not in the future).
fn counts(v: &Value) -> Value {
    let mut v = v.clone();
    let at = v
        .as_object_mut()
        .and_then(|o| o.remove("at"))
        .unwrap_or_else(|| panic!("summary without `at`"));
    let at = at
        .as_u64()
        .unwrap_or_else(|| panic!("`at` is not a time: {at}"));
    assert!(
        at > 1_600_000_000_000 && at <= now_ms(),
        "`at` {at} is not a recent time"
    );
    v
}

/// What a summary should say (all but `at`); every disconnect is a clean one (`disconnect`).
#[derive(Default, Clone, Copy)]
struct Counts {
    connects: u64,
    disconnects: u64,
    published: u64,
    bytes: u64,
    subscriptions: u64,
    dropped: u64,
    reloads: u64,
    reload_failures: u64,
    expired: u64,
    clients: u64,
}

impl Counts {
    fn json(&self) -> Value {
        let disconnects = match self.disconnects {
            0 => json!({}),
            n => json!({ "disconnect": n }),
        };
        json!({
            "connects": self.connects,
            "disconnects": disconnects,
            "published": self.published,
            "bytes": self.bytes,
            "subscriptions": self.subscriptions,
            "dropped": self.dropped,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "expired": self.expired,
            "clients": self.clients,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The key-value store's file

/// A temporary directory for a broker's file store, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("mqtt-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The plugin's stored entries (`<persistence.path>/plugin-kv/<name>.json`: key → base64).
fn kv_file(dir: &Path, plugin: &str) -> Option<serde_json::Map<String, Value>> {
    let bytes = std::fs::read(dir.join("plugin-kv").join(format!("{plugin}.json"))).ok()?;
    let v: Value = serde_json::from_slice(&bytes).expect("the store file is JSON");
    Some(
        v.as_object()
            .expect("the store file is a JSON object")
            .clone(),
    )
}

fn kv_value(entries: &serde_json::Map<String, Value>, key: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let text = entries.get(key)?.as_str().expect("base64 text");
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("valid base64"),
    )
}

/// A per-client record decoded: [connects, published, bytes, subscriptions, dropped].
fn client_record(bytes: &[u8]) -> [u64; 5] {
    assert_eq!(bytes.len(), 41, "a record is 41 bytes: {bytes:?}");
    assert_eq!(bytes[0], 1, "record version");
    let mut out = [0; 5];
    for (k, field) in out.iter_mut().enumerate() {
        let at = 1 + 8 * k;
        *field = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    }
    out
}

/// Waits (bounded) until the store file holds `want` for every key given; returns its entries.
async fn wait_kv_file(
    dir: &Path,
    plugin: &str,
    want: &[(&str, [u64; 5])],
) -> serde_json::Map<String, Value> {
    let deadline = Instant::now() + SUMMARY_WAIT;
    loop {
        let entries = kv_file(dir, plugin).unwrap_or_default();
        let got: Vec<Option<[u64; 5]>> = want
            .iter()
            .map(|(k, _)| kv_value(&entries, k).map(|b| client_record(&b)))
            .collect();
        if want
            .iter()
            .zip(&got)
            .all(|((_, w), g)| g.as_ref() == Some(w))
        {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "the store file did not come to hold {want:?} in {SUMMARY_WAIT:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Tests

/// Clients connect, subscribe, publish and disconnect; messages for an offline persistent
/// session subscribed at QoS 0 are dropped; a session expires; the config is reloaded (once
/// in force, once refused): each shows in the summary, exactly once, within a bounded time;
/// the counts carry over the reload (they live in the key-value store) and the replaced
/// plugin counts nothing more. A late subscriber gets the summary retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_clients_messages_drops_expiries_and_reloads() {
    let name = "audit-main";
    let broker = start(vec![audit(name, EXCLUDE, GRANTS)], |_| {}).await;
    let mut summaries = Summaries::start(&broker).await;
    // Nothing yet (the watcher is excluded).
    let mut want = Counts::default();
    summaries.expect(want).await;

    // A subscriber waits for 5 messages, a publisher sends them (35 bytes), both leave.
    let mut events = broker.events();
    let args = ["-i", "sub-1", "-q", "1", "-t", "audit-test/data", "-C", "5"];
    let sub = mosquitto("mosquitto_sub", &broker, &args)
        .spawn()
        .expect("spawn mosquitto_sub");
    wait_event(&mut events, "sub-1's SUBSCRIBE", subscribed_by("sub-1")).await;
    let lines = numbered("hello", 5);
    let bytes = publish_lines(&broker, "pub-1", "audit-test/data", "1", &lines, &[]).await;
    assert_eq!(bytes, 35);
    let out = tokio::time::timeout(PROCESS_LIMIT, sub.wait_with_output())
        .await
        .expect("sub-1 ends after 5 messages")
        .expect("run mosquitto_sub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sub-1: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    want.connects = 2;
    want.disconnects = 2;
    want.published = 5;
    want.bytes = 35;
    want.subscriptions = 1;
    want.clients = 2;
    summaries.expect(want).await;

    // A persistent session subscribed at QoS 0 goes offline: the 5 messages for it are
    // dropped (`offline QoS 0`: performance.queue_qos0_offline is off).
    let args = [
        "-i",
        "keeper",
        "-c",
        "-q",
        "0",
        "-t",
        "audit-test/queued",
        "-E",
    ];
    run(mosquitto("mosquitto_sub", &broker, &args), None).await;
    wait_event(&mut events, "keeper's DISCONNECT", disconnected("keeper")).await;
    let lines = numbered("q", 5);
    let bytes = publish_lines(&broker, "pub-2", "audit-test/queued", "1", &lines, &[]).await;
    assert_eq!(bytes, 15);
    want.connects = 4;
    want.disconnects = 4;
    want.published = 10;
    want.bytes = 50;
    want.subscriptions = 2;
    want.dropped = 5;
    want.clients = 4;
    summaries.expect(want).await;

    // An MQTT 5 session that expires 1 s after its client leaves; the client comes back
    // later and finds it gone.
    let one = ["e".to_owned()];
    let session = ["-V", "mqttv5", "-c", "-x", "1"];
    publish_lines(&broker, "exp-1", "audit-test/e", "1", &one, &session).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    publish_lines(
        &broker,
        "exp-1",
        "audit-test/e",
        "1",
        &one,
        &["-V", "mqttv5"],
    )
    .await;
    want.connects = 6;
    want.disconnects = 6;
    want.published = 12;
    want.bytes = 52;
    want.expired = 1;
    want.clients = 5;
    summaries.expect(want).await;

    // Excluded clients count for nothing.
    let lines = numbered("x", 3);
    publish_lines(&broker, "quiet-1", "audit-test/data", "1", &lines, &[]).await;
    summaries.expect(want).await;

    // A reload in force (a new plugin instance) and a refused one; the counts carry over.
    broker.reload(broker.config()).await.expect("reload");
    let mut bad = broker.config();
    bad.server.port = 0;
    assert!(broker.reload(bad).await.is_err(), "port 0 is refused");
    want.reloads = 1;
    want.reload_failures = 1;
    summaries.expect(want).await;
    // The replaced plugin counts no more: a client after the reload is counted once.
    let later = ["later".to_owned()];
    publish_lines(&broker, "pub-1", "audit-test/data", "1", &later, &[]).await;
    want.connects = 7;
    want.disconnects = 7;
    want.published = 13;
    want.bytes = 57;
    summaries.expect(want).await;

    // A late subscriber gets the summary at once, retained.
    let args = [
        "-i",
        "quiet-late",
        "-t",
        "audit/summary",
        "-C",
        "1",
        "-W",
        "5",
        "-F",
        "%r %p",
    ];
    let out = run(mosquitto("mosquitto_sub", &broker, &args), None).await;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (retained, payload) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(retained, "1", "{line}");
    let v: Value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{payload}: {e}"));
    assert_eq!(counts(&v), want.json());

    let s = stats(&broker, name);
    assert_healthy(&s);
    assert!(s.ticks > 0 && s.published > 0 && s.kv_bytes > 0, "{s:?}");
    assert_eq!(s.capability_denied, 0, "{s:?}");
    let warnings = log_lines(&[name, "WARN"]);
    assert!(warnings.is_empty(), "{warnings:#?}");
    drop(summaries);
    broker.shutdown().await;
}

/// With file persistence the per-client records (`c/<client id>`, 41 bytes) and the totals
/// are written to `<persistence.path>/plugin-kv/<name>.json`, and a restarted broker's
/// plugin carries on from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_records_and_totals_survive_a_restart() {
    let name = "audit-persist";
    let tmp = TempDir::new("persist");
    let data = tmp.0.join("data");
    let configure = |c: &mut Config| {
        c.persistence.storage_type = StorageType::File;
        c.persistence.path = data.clone();
    };
    let broker = start(vec![audit(name, EXCLUDE, GRANTS)], configure).await;
    let mut summaries = Summaries::start(&broker).await;
    let mut events = broker.events();
    let args = ["-i", "dev-b", "-c", "-q", "1", "-t", "audit-test/b", "-E"];
    run(mosquitto("mosquitto_sub", &broker, &args), None).await;
    wait_event(&mut events, "dev-b's DISCONNECT", disconnected("dev-b")).await;
    let lines = ["abc", "abcd", "ab"].map(String::from);
    publish_lines(&broker, "dev-a", "audit-test/a", "1", &lines, &[]).await;
    let mut want = Counts {
        connects: 2,
        disconnects: 2,
        published: 3,
        bytes: 9,
        subscriptions: 1,
        clients: 2,
        ..Counts::default()
    };
    let last = summaries.expect(want).await;
    // [connects, published, bytes, subscriptions, dropped]
    let records = [("c/dev-a", [1, 3, 9, 0, 0]), ("c/dev-b", [1, 0, 0, 1, 0])];
    let entries = wait_kv_file(&data, name, &records).await;
    let stored = kv_value(&entries, "totals").expect("totals stored");
    let totals: Value = serde_json::from_slice(&stored).expect("the stored totals are JSON");
    assert_eq!(totals, counts(&last));
    // Nothing for the excluded watcher.
    assert!(!entries.keys().any(|k| k.contains(WATCHER)), "{entries:?}");
    drop(summaries);
    broker.shutdown().await;

    // A restarted broker: its plugin continues from the stored counts.
    let broker = start(vec![audit(name, EXCLUDE, GRANTS)], configure).await;
    let mut summaries = Summaries::start(&broker).await;
    summaries.expect(want).await;
    let z = ["z".to_owned()];
    publish_lines(&broker, "dev-a", "audit-test/a", "1", &z, &[]).await;
    want.connects = 3;
    want.disconnects = 3;
    want.published = 4;
    want.bytes = 10;
    summaries.expect(want).await;
    wait_kv_file(&data, name, &[("c/dev-a", [2, 4, 10, 0, 0])]).await;
    assert_healthy(&stats(&broker, name));
    drop(summaries);
    broker.shutdown().await;
}

/// Without `tick` the broker never calls the plugin's tick: after more than a second there
/// have been no ticks and no summary, though the events were delivered and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tick_nothing_is_published() {
    let name = "audit-notick";
    let grants = r#"capabilities: {kv: {}, publish: {topics: ["audit/#"]}}"#;
    let broker = start(vec![audit(name, EXCLUDE, grants)], |_| {}).await;
    let mut summaries = Summaries::start(&broker).await;
    let lines = numbered("m", 3);
    publish_lines(&broker, "dev-1", "audit-test/x", "1", &lines, &[]).await;
    // The watcher's connect and subscribe, dev-1's connect, 3 publishes and disconnect.
    wait_stats(&broker, name, "the events' delivery", |s| {
        s.events_delivered >= 7
    })
    .await;
    summaries.expect_silence(Duration::from_millis(1_200)).await;
    let s = stats(&broker, name);
    assert_eq!((s.ticks, s.published), (0, 0), "{s:?}");
    assert_healthy(&s);
    assert!(s.kv_bytes > 0, "counted all the same: {s:?}");
    drop(summaries);
    broker.shutdown().await;
}

/// Without `publish` the plugin ticks but every summary is refused: counted as denied,
/// warned about once (naming the grant), nothing reaches a subscriber, nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_publish_ticks_happen_and_summaries_are_denied() {
    let name = "audit-nopublish";
    let grants = "capabilities: {kv: {}, tick: 200ms}";
    let broker = start(vec![audit(name, EXCLUDE, grants)], |_| {}).await;
    let mut summaries = Summaries::start(&broker).await;
    let lines = numbered("m", 3);
    publish_lines(&broker, "dev-1", "audit-test/x", "1", &lines, &[]).await;
    summaries.expect_silence(Duration::from_millis(1_200)).await;
    let s = wait_stats(&broker, name, "three ticks", |s| s.ticks >= 3).await;
    assert_eq!(s.published, 0, "{s:?}");
    assert!(s.capability_denied >= 3, "one denial per tick: {s:?}");
    assert_healthy(&s);
    let warnings = log_lines(&[name, "cannot publish the summary"]);
    assert_eq!(warnings.len(), 1, "one warning: {warnings:#?}");
    let w = &warnings[0];
    assert!(
        w.contains("WARN") && w.contains("capability `publish`"),
        "{w}"
    );
    drop(summaries);
    broker.shutdown().await;
}

/// Without `kv` the plugin warns once and counts in its instance's memory: the summaries
/// are right; a reload replaces the instance and the counts restart from zero (the new
/// instance counts the reload itself, and what follows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kv_counts_are_kept_in_memory() {
    let name = "audit-nokv";
    let grants = r#"capabilities: {publish: {topics: ["audit/#"]}, tick: 200ms}"#;
    let broker = start(vec![audit(name, EXCLUDE, grants)], |_| {}).await;
    let mut summaries = Summaries::start(&broker).await;
    let lines = numbered("m", 3);
    publish_lines(&broker, "dev-1", "audit-test/x", "0", &lines, &[]).await;
    publish_lines(&broker, "dev-2", "audit-test/x", "0", &["n-0".into()], &[]).await;
    let want = Counts {
        connects: 2,
        disconnects: 2,
        published: 4,
        bytes: 12,
        clients: 2,
        ..Counts::default()
    };
    summaries.expect(want).await;
    let warnings = log_lines(&[name, "key-value store is not usable"]);
    assert_eq!(warnings.len(), 1, "one warning: {warnings:#?}");
    let w = &warnings[0];
    assert!(w.contains("WARN") && w.contains("capability `kv`"), "{w}");
    let s = stats(&broker, name);
    assert_healthy(&s);
    assert_eq!(s.kv_bytes, 0, "{s:?}");
    assert_eq!(s.capability_denied, 1, "only init tried the store: {s:?}");

    broker.reload(broker.config()).await.expect("reload");
    let mut want = Counts {
        reloads: 1,
        ..Counts::default()
    };
    summaries.expect(want).await;
    let after = ["after".to_owned()];
    publish_lines(&broker, "dev-1", "audit-test/x", "0", &after, &[]).await;
    want.connects = 1;
    want.disconnects = 1;
    want.published = 1;
    want.bytes = 5;
    want.clients = 1;
    summaries.expect(want).await;
    assert_healthy(&stats(&broker, name));
    drop(summaries);
    broker.shutdown().await;
}

/// A burst through a plugin with an 8-event queue: every message reaches the subscriber
/// (the plugin is never on the message path), the events that did not fit are dropped and
/// counted, and the summary counts what was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_queue_drops_events_not_messages() {
    const N: usize = 5_000;
    let name = "audit-burst";
    let entry = audit(name, EXCLUDE, &format!("{GRANTS}\nevents: {{queue: 8}}"));
    let broker = start(vec![entry], |c| c.performance.message_queue_limit = 100_000).await;
    let mut summaries = Summaries::start(&broker).await;
    let mut events = broker.events();
    let count = N.to_string();
    let args = ["-i", "sink", "-q", "1", "-t", "audit-burst/#", "-C", &count];
    let sub = mosquitto("mosquitto_sub", &broker, &args)
        .spawn()
        .expect("spawn mosquitto_sub");
    wait_event(&mut events, "sink's SUBSCRIBE", subscribed_by("sink")).await;
    drop(events);
    let started = Instant::now();
    let lines = numbered("b", N);
    publish_lines(&broker, "burst", "audit-burst/x", "0", &lines, &[]).await;
    let out = tokio::time::timeout(PROCESS_LIMIT, sub.wait_with_output())
        .await
        .expect("the subscriber gets every message")
        .expect("run mosquitto_sub");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sink: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let received: Vec<&str> = stdout.lines().collect();
    assert!(received.iter().eq(lines.iter()), "every message, in order");

    // Drained: every publish was either counted by the plugin or its event dropped.
    let s = wait_stats(&broker, name, "a dropped event", |s| s.events_dropped > 0).await;
    let deadline = tokio::time::Instant::now() + SUMMARY_WAIT;
    let published = loop {
        let Some(v) = summaries.next_by(deadline).await else {
            panic!(
                "no summary accounts for every publish; the last: {:?}, {s:?}",
                summaries.last
            );
        };
        let dropped = stats(&broker, name).events_dropped;
        let published = v["published"].as_u64().expect("published");
        assert!(published <= N as u64, "{v}");
        if published + dropped >= N as u64 {
            break published;
        }
    };
    let s = stats(&broker, name);
    assert_healthy(&s);
    assert!(s.events_dropped > 0 && published < N as u64, "{s:?}");
    // Nothing leaks per event: the instance never grew past its first pages.
    assert!(s.peak_memory_bytes <= 256 * 1024, "{s:?}");
    eprintln!(
        "burst of {N}: all delivered in {took:?}; the plugin counted {published}, {} events dropped, {} delivered, peak memory {} bytes",
        s.events_dropped, s.events_delivered, s.peak_memory_bytes
    );
    drop(summaries);
    broker.shutdown().await;
}

/// A key-value store too small for every client: the records that do not fit are refused
/// (warned about once), the clients are still counted in the totals, which stay right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_keeps_the_totals_right() {
    let name = "audit-small";
    // The totals take about 170 bytes, each record here 48: room for 3 clients.
    let grants =
        r#"capabilities: {kv: {max_bytes: 320}, publish: {topics: ["audit/#"]}, tick: 200ms}"#;
    let broker = start(vec![audit(name, EXCLUDE, grants)], |_| {}).await;
    let mut summaries = Summaries::start(&broker).await;
    for id in ["dev-1", "dev-2", "dev-3", "dev-4", "dev-5"] {
        publish_lines(&broker, id, "audit-test/x", "0", &["p".into()], &[]).await;
    }
    let want = Counts {
        connects: 5,
        disconnects: 5,
        published: 5,
        bytes: 5,
        clients: 3,
        ..Counts::default()
    };
    summaries.expect(want).await;
    let warnings = log_lines(&[name, "cannot store"]);
    assert_eq!(warnings.len(), 1, "one warning: {warnings:#?}");
    let w = &warnings[0];
    assert!(w.contains("c/dev-4") && w.contains("max_bytes"), "{w}");
    let s = stats(&broker, name);
    assert_healthy(&s);
    assert!(s.kv_bytes <= 320, "{s:?}");
    drop(summaries);
    broker.shutdown().await;
}
