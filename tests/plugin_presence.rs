//! End-to-end tests of the presence plugin (`plugins/presence`, C, world
//! `connection-observer` of mqtt-broker:plugin@0.2.0, built by
//! `bash plugins/presence/build.sh`): a broker loads it with the `publish` grant, Mosquitto's
//! own command-line clients (`mosquitto_pub` / `mosquitto_sub`, Debian `mosquitto-clients`)
//! come and go over real loopback sockets, and a `mosquitto_sub -t 'presence/#' -v` process
//! watches the retained presence messages: online on connect, offline with the reason on a
//! clean disconnect, a killed client and a silent one (keep-alive), no offline for a session
//! take-over, the retained state for a late subscriber, nothing for excluded client-id
//! prefixes, the retained message cleared when a session expires. Without the grant, or with one that does not cover the prefix, nothing
//! is published, the plugin warns once naming the denied capability, and it never fails.

mod common;

use common::*;
use mqtt_broker::config::Config;
use mqtt_broker::events::BrokerEvent;
use mqtt_broker::plugins::{PluginConfig, PluginStats};
use mqtt_broker::BrokerHandle;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, mpsc};

/// How long one short-lived client process may run.
const PROCESS_LIMIT: Duration = Duration::from_secs(30);
/// Client-id prefixes the plugin is told to skip in these tests.
const EXCLUDE: &str = r#"["quiet-", "$bridge/"]"#;

// ---------------------------------------------------------------------------------------
// The plugin, the broker and its log

/// A `plugins:` entry for the presence plugin; `capabilities` is the whole `capabilities:`
/// line (empty: no grant). See [`plugin_entry`].
fn presence(name: &str, config: &str, capabilities: &str) -> PluginConfig {
    plugin_entry(
        name,
        &built_plugin("plugins/presence/presence.wasm"),
        config,
        capabilities,
    )
}

/// The grant the plugin needs for its default prefix.
const GRANT: &str = r#"capabilities: {publish: {topics: ["presence/#"]}}"#;

/// Waits until a log line mentions `plugin` and contains `needle`; returns it.
async fn expect_log(plugin: &str, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = log_lines(&[plugin, needle]).into_iter().next() {
            return line;
        }
        if Instant::now() > deadline {
            panic!(
                "no log line for {plugin} containing {needle:?}; its lines: {:#?}",
                log_lines(&[plugin, ""])
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(plugins: Vec<PluginConfig>) -> BrokerHandle {
    log_buffer();
    start_broker(|c: &mut Config| c.plugins = plugins).await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------
// Mosquitto's clients

/// `mosquitto_pub` or `mosquitto_sub` aimed at the broker (output piped, killed on drop).
fn mosquitto(tool: &str, broker: &BrokerHandle) -> Command {
    common::clients::mosquitto(tool, broker, &[])
}

/// Runs `mosquitto_pub` (connect, one QoS 1 message, clean DISCONNECT) with `args` added.
async fn mosquitto_pub(broker: &BrokerHandle, args: &[&str]) {
    let mut cmd = mosquitto("mosquitto_pub", broker);
    cmd.args(["-t", "presence-test/hello", "-m", "hi", "-q", "1"])
        .args(args);
    let out = tokio::time::timeout(PROCESS_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("mosquitto_pub {args:?} did not finish"))
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a `mosquitto_sub` that stays connected (subscribed to `presence-test/#`) until
/// killed, with `args` added.
fn mosquitto_sub_held(broker: &BrokerHandle, args: &[&str]) -> Child {
    mosquitto("mosquitto_sub", broker)
        .args(["-t", "presence-test/#", "-q", "1"])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn mosquitto_sub")
}

/// Waits for `count` SUBSCRIBE filters of `client_id` to be granted.
async fn subscribed(events: &mut broadcast::Receiver<BrokerEvent>, client_id: &str, count: usize) {
    let mut seen = 0;
    tokio::time::timeout(WAIT, async {
        while seen < count {
            match events.recv().await {
                Ok(BrokerEvent::Subscribed { client_id: id, .. }) if &*id == client_id => seen += 1,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("broker stopped"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{client_id} did not subscribe within {WAIT:?}"));
}

/// A `mosquitto_sub -v` process watching presence topics; its output lines arrive through a
/// channel.
struct Watcher {
    /// Killed when the watcher is dropped.
    _child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Messages read while looking for another topic, in arrival order.
    pending: VecDeque<(String, String)>,
}

impl Watcher {
    /// Starts `mosquitto_sub -i ID -q 1 -v -t FILTER...` and returns once it is subscribed.
    async fn start(broker: &BrokerHandle, id: &str, filters: &[&str]) -> Watcher {
        let mut events = broker.events();
        let mut cmd = mosquitto("mosquitto_sub", broker);
        cmd.args(["-i", id, "-q", "1", "-v"]);
        for f in filters {
            cmd.args(["-t", f]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
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
        subscribed(&mut events, id, filters.len()).await;
        Watcher {
            _child: child,
            lines,
            pending: VecDeque::new(),
        }
    }

    /// Reads one line as (topic, payload) by `deadline`; `mosquitto_sub -v` prints an empty
    /// payload as `(null)`.
    async fn read(&mut self, deadline: tokio::time::Instant) -> (String, String) {
        let line = tokio::time::timeout_at(deadline, self.lines.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the watcher saw nothing more in time (unclaimed: {:?})",
                    self.pending
                )
            })
            .expect("the watcher exited");
        let (topic, payload) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not a `mosquitto_sub -v` line: {line:?}"));
        (topic.to_owned(), payload.to_owned())
    }

    /// The next message on any topic, as (topic, payload).
    async fn next(&mut self) -> (String, String) {
        match self.pending.pop_front() {
            Some(m) => m,
            None => self.read(tokio::time::Instant::now() + WAIT).await,
        }
    }

    /// The payload of the next message on `topic`, waiting at most `limit`; messages on
    /// other topics are kept for later (each plugin delivers its events in order, but two
    /// plugins' messages interleave).
    async fn payload_on(&mut self, topic: &str, limit: Duration) -> String {
        if let Some(i) = self.pending.iter().position(|(t, _)| t == topic) {
            return self.pending.remove(i).expect("found").1;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (t, payload) = self.read(deadline).await;
            if t == topic {
                return payload;
            }
            self.pending.push_back((t, payload));
        }
    }

    /// The next message on `topic`, which must be JSON; returns the JSON.
    async fn expect_within(&mut self, topic: &str, limit: Duration) -> Value {
        let payload = self.payload_on(topic, limit).await;
        serde_json::from_str(&payload)
            .unwrap_or_else(|e| panic!("{topic}: payload is not JSON ({e}): {payload:?}"))
    }

    async fn expect(&mut self, topic: &str) -> Value {
        self.expect_within(topic, WAIT).await
    }

    /// Asserts that no message is pending and nothing arrives for `d`.
    async fn expect_silence(&mut self, d: Duration) {
        assert!(
            self.pending.is_empty(),
            "unexpected presence messages: {:?}",
            self.pending
        );
        if let Ok(line) = tokio::time::timeout(d, self.lines.recv()).await {
            panic!("expected no presence message, got {line:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Payload checks

/// Asserts an online payload; returns its `since`.
fn check_online(
    v: &Value,
    client_id: &str,
    username: Option<&str>,
    protocol: &str,
    since_min: u64,
) -> u64 {
    assert_eq!(v["client_id"], client_id, "{v}");
    assert_eq!(v["online"], true, "{v}");
    match username {
        Some(u) => assert_eq!(v["username"], u, "{v}"),
        None => assert!(v["username"].is_null(), "{v}"),
    }
    assert_eq!(v["protocol"], protocol, "{v}");
    let peer = v["peer"].as_str().unwrap_or_else(|| panic!("peer: {v}"));
    let port = peer
        .strip_prefix("127.0.0.1:")
        .unwrap_or_else(|| panic!("peer {peer:?} is not a loopback address"));
    assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "{v}");
    check_since(v, since_min)
}

/// Asserts an offline payload; returns its reason.
fn check_offline(v: &Value, client_id: &str, since_min: u64) -> String {
    assert_eq!(v["client_id"], client_id, "{v}");
    assert_eq!(v["online"], false, "{v}");
    assert!(
        v.get("username").is_none() && v.get("peer").is_none(),
        "{v}"
    );
    check_since(v, since_min);
    let reason = v["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("reason: {v}"));
    assert!(!reason.is_empty(), "{v}");
    reason.to_owned()
}

/// `since` is a time in milliseconds between `min` and now.
fn check_since(v: &Value, min: u64) -> u64 {
    let since = v["since"].as_u64().unwrap_or_else(|| panic!("since: {v}"));
    let now = now_ms();
    assert!(
        since >= min && since <= now,
        "since {since} not in [{min}, {now}]: {v}"
    );
    since
}

// ---------------------------------------------------------------------------------------
// Tests

/// Clients of each protocol revision connect and disconnect cleanly; the watcher sees online
/// then offline for each, with user name, peer, protocol and times; awkward characters in the
/// client id and user name arrive as correct JSON; excluded prefixes produce nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_and_offline_follow_clean_connections() {
    let broker = start(vec![presence(
        "presence-clean",
        &format!("{{exclude: {EXCLUDE}}}"),
        GRANT,
    )])
    .await;
    let mut watcher = Watcher::start(&broker, "quiet-watcher", &["presence/#"]).await;

    for (id, version, protocol, user) in [
        ("dev-5", "mqttv5", "5", Some("alice")),
        ("dev-311", "mqttv311", "3.1.1", None),
        ("dev-31", "mqttv31", "3.1", Some("bob")),
        // JSON's special characters in both strings (a valid topic level nonetheless);
        // control characters, which libmosquitto refuses to send, are left to test.sh.
        (
            r#"dev"q\x"#,
            "mqttv311",
            "3.1.1",
            Some(r#""quoted" \ café"#),
        ),
    ] {
        let before = now_ms();
        let mut args = vec!["-i", id, "-V", version];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        mosquitto_pub(&broker, &args).await;
        let topic = format!("presence/{id}");
        let online = watcher.expect(&topic).await;
        let since = check_online(&online, id, user, protocol, before);
        let offline = watcher.expect(&topic).await;
        let reason = check_offline(&offline, id, since);
        // The broker's label for a clean DISCONNECT.
        assert_eq!(reason, "disconnect", "{offline}");
    }

    // Excluded prefixes: nothing at all; the next client's messages come first.
    mosquitto_pub(&broker, &["-i", "quiet-probe"]).await;
    mosquitto_pub(&broker, &["-i", "$bridge/edge-1", "-V", "mqttv5"]).await;
    mosquitto_pub(&broker, &["-i", "dev-after"]).await;
    let v = watcher.expect("presence/dev-after").await;
    assert_eq!(v["online"], true, "{v}");
    let v = watcher.expect("presence/dev-after").await;
    assert_eq!(v["online"], false, "{v}");
    watcher.expect_silence(Duration::from_millis(300)).await;

    // A second connection with the same client id takes the session over: the client never
    // went offline, so the old connection's end (`taken_over`) is not reported.
    let (mut first, _) = RawClient::connect(broker.local_addr(), "dev-twin", true).await;
    let v = watcher.expect("presence/dev-twin").await;
    check_online(&v, "dev-twin", None, "3.1.1", 0);
    mosquitto_pub(&broker, &["-i", "dev-twin", "-u", "second"]).await;
    first.expect_closed().await;
    let v = watcher.expect("presence/dev-twin").await;
    check_online(&v, "dev-twin", Some("second"), "3.1.1", 0);
    let v = watcher.expect("presence/dev-twin").await;
    assert_eq!(check_offline(&v, "dev-twin", 0), "disconnect", "{v}");
    watcher.expect_silence(Duration::from_millis(300)).await;

    let s = stats(&broker, "presence-clean");
    assert_eq!(
        (s.api, s.hooks.as_slice()),
        ("0.2.0", &["connection-events"][..]),
        "{s:?}"
    );
    assert_eq!((s.failures, s.traps, s.degraded), (0, 0, false), "{s:?}");
    // Five clients reported with two messages each, the twins with three; nothing refused.
    assert_eq!((s.published, s.capability_denied), (13, 0), "{s:?}");
    assert!(
        log_lines(&["presence-clean", "cannot publish"]).is_empty(),
        "granted, yet: {:?}",
        log_lines(&["presence-clean", "cannot publish"])
    );
    drop(watcher);
    broker.shutdown().await;
}

/// A killed client (socket closed without DISCONNECT) and a frozen one (keep-alive runs out)
/// go offline with reasons other than a clean disconnect; a late subscriber gets every
/// client's retained state, online or offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_and_retained_state_for_late_subscribers() {
    let broker = start(vec![presence(
        "presence-lost",
        &format!("{{exclude: {EXCLUDE}}}"),
        GRANT,
    )])
    .await;
    let mut watcher = Watcher::start(&broker, "quiet-watcher", &["presence/#"]).await;

    // A clean one, for comparison.
    mosquitto_pub(&broker, &["-i", "dev-clean"]).await;
    watcher.expect("presence/dev-clean").await;
    let clean = watcher.expect("presence/dev-clean").await;
    let clean_reason = check_offline(&clean, "dev-clean", 0);

    // Killed (SIGKILL): the kernel closes the socket, no DISCONNECT.
    let before = now_ms();
    let mut killed = mosquitto_sub_held(&broker, &["-i", "dev-kill"]);
    let since = check_online(
        &watcher.expect("presence/dev-kill").await,
        "dev-kill",
        None,
        "3.1.1",
        before,
    );
    killed.kill().await.expect("kill mosquitto_sub");
    let v = watcher.expect("presence/dev-kill").await;
    let reason = check_offline(&v, "dev-kill", since);
    assert_ne!(reason, clean_reason, "{v}");
    // The socket closed (FIN), or was reset if unread bytes were left.
    assert!(
        ["peer_closed", "io_error"].contains(&reason.as_str()),
        "{v}"
    );

    // Frozen (SIGSTOP) with a 5 s keep-alive: the broker gives up after 1.5 × 5 s.
    let mut frozen = mosquitto_sub_held(&broker, &["-i", "dev-frozen", "-k", "5", "-V", "mqttv5"]);
    let since = check_online(
        &watcher.expect("presence/dev-frozen").await,
        "dev-frozen",
        None,
        "5",
        before,
    );
    let pid = frozen.id().expect("running") as libc::pid_t;
    // SAFETY: signals a child process this test spawned and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let v = watcher
        .expect_within("presence/dev-frozen", Duration::from_secs(20))
        .await;
    let reason = check_offline(&v, "dev-frozen", since);
    assert_eq!(reason, "keep_alive", "{v}");
    assert!(
        now_ms() - since >= 7_000,
        "offline before 1.5 × keep-alive: {v}"
    );
    frozen.kill().await.expect("kill the frozen mosquitto_sub");
    // Its socket closing now changes nothing: the connection is gone already.

    // One that stays.
    let mut staying = mosquitto_sub_held(&broker, &["-i", "dev-here", "-u", "carol"]);
    watcher.expect("presence/dev-here").await;

    // A late subscriber gets the last state of each, retained.
    let out = tokio::time::timeout(
        PROCESS_LIMIT,
        mosquitto("mosquitto_sub", &broker)
            .args(["-i", "quiet-late", "-t", "presence/#", "-F", "%r %t %p"])
            .args(["-C", "4", "-W", "10"])
            .output(),
    )
    .await
    .expect("late mosquitto_sub finishes")
    .expect("run mosquitto_sub");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "late subscriber ({}): {stdout}",
        out.status
    );
    let mut state = BTreeMap::new();
    for line in stdout.lines() {
        let mut parts = line.splitn(3, ' ');
        let (retain, topic, payload) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        assert_eq!(retain, "1", "not retained: {line}");
        let v: Value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{line}: {e}"));
        state.insert(topic.to_owned(), v);
    }
    assert_eq!(
        state.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "presence/dev-clean",
            "presence/dev-frozen",
            "presence/dev-here",
            "presence/dev-kill"
        ],
        "{stdout}"
    );
    for (topic, online) in [
        ("presence/dev-clean", false),
        ("presence/dev-frozen", false),
        ("presence/dev-kill", false),
        ("presence/dev-here", true),
    ] {
        assert_eq!(state[topic]["online"], online, "{topic}: {}", state[topic]);
    }
    assert_eq!(state["presence/dev-here"]["username"], "carol");

    staying.kill().await.expect("kill mosquitto_sub");
    let v = watcher.expect("presence/dev-here").await;
    assert_eq!(v["online"], false, "{v}");
    let s = stats(&broker, "presence-lost");
    assert_eq!((s.failures, s.traps, s.degraded), (0, 0, false), "{s:?}");
    assert_eq!((s.published, s.capability_denied), (8, 0), "{s:?}");
    drop(watcher);
    broker.shutdown().await;
}

/// With `clear_on_expiry: true`, an expired MQTT 5 session (Session Expiry Interval 1 s)
/// clears its client's retained presence message (an empty retained payload); a second
/// instance with the default (false) keeps it. The broker notices the expiry when the client
/// comes back (or at its periodic sweep): the clear comes before the new online message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_clears_the_retained_state_when_asked() {
    let broker = start(vec![
        presence("presence-expiry", "{clear_on_expiry: true}", GRANT),
        presence(
            "presence-keep",
            "{prefix: keep/presence}",
            r#"capabilities: {publish: {topics: ["keep/presence/#"]}}"#,
        ),
    ])
    .await;
    let mut watcher = Watcher::start(
        &broker,
        "watcher",
        &["presence/dev-exp", "keep/presence/dev-exp"],
    )
    .await;
    // A persistent session that expires 1 s after the client leaves.
    let session = ["-i", "dev-exp", "-V", "mqttv5", "-c", "-x", "1"];
    mosquitto_pub(&broker, &session).await;
    for topic in ["presence/dev-exp", "keep/presence/dev-exp"] {
        assert_eq!(watcher.expect(topic).await["online"], true);
        assert_eq!(watcher.expect(topic).await["online"], false);
    }
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // The client comes back to find its session gone.
    mosquitto_pub(&broker, &["-i", "dev-exp", "-V", "mqttv5"]).await;
    assert_eq!(
        watcher.payload_on("presence/dev-exp", WAIT).await,
        "(null)",
        "the retained presence message is cleared first"
    );
    for topic in ["presence/dev-exp", "keep/presence/dev-exp"] {
        assert_eq!(watcher.expect(topic).await["online"], true);
        assert_eq!(watcher.expect(topic).await["online"], false);
    }
    watcher.expect_silence(Duration::from_millis(300)).await;
    for s in broker.plugin_stats() {
        assert_eq!((s.failures, s.traps, s.degraded), (0, 0, false), "{s:?}");
    }
    drop(watcher);
    broker.shutdown().await;
}

/// Runs clients past a broker whose presence plugin may not publish to its topics: nothing
/// is published, every attempt is counted as a denied capability call, the plugin logs one
/// warning containing the host's reason `why` (and not one per event), and no call fails.
async fn check_denied(broker: &BrokerHandle, plugin: &str, filters: &[&str], why: &str) {
    let mut watcher = Watcher::start(broker, "watcher", filters).await;
    for id in ["dev-1", "dev-2", "dev-3"] {
        mosquitto_pub(broker, &["-i", id]).await;
    }
    let warning = expect_log(plugin, "cannot publish").await;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(why), "{warning}");
    // The three clients' six events and the watcher's own have been delivered: still
    // nothing published, each attempt refused, and still the one warning.
    let s = wait_for_events(broker, plugin, 7).await;
    assert_eq!(s.published, 0, "{s:?}");
    assert!(s.capability_denied >= 7, "{s:?}");
    assert_eq!((s.failures, s.traps, s.degraded), (0, 0, false), "{s:?}");
    watcher.expect_silence(Duration::from_millis(500)).await;
    let warnings = log_lines(&[plugin, "cannot publish"]);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    drop(watcher);
}

/// Waits until the plugin has been handed at least `n` events; returns its stats then.
async fn wait_for_events(broker: &BrokerHandle, plugin: &str, n: u64) -> PluginStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = stats(broker, plugin);
        if s.events_delivered >= n {
            return s;
        }
        assert!(Instant::now() < deadline, "{n} events expected: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stats of plugin `name`.
fn stats(broker: &BrokerHandle, name: &str) -> PluginStats {
    broker
        .plugin_stats()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no plugin {name}"))
}

/// No `capabilities:` at all: every publish is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_grant_nothing_is_published() {
    let broker = start(vec![presence("presence-nogrant", "{}", "")]).await;
    check_denied(
        &broker,
        "presence-nogrant",
        &["presence/#"],
        "capability `publish` is not granted",
    )
    .await;
    broker.shutdown().await;
}

/// A grant for other topics does not cover the prefix; a second instance of the plugin whose
/// prefix its grant covers publishes as usual next to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_for_other_topics_is_denied_too() {
    let broker = start(vec![
        presence(
            "presence-narrow",
            "{}",
            r#"capabilities: {publish: {topics: ["status/#", "presence/+/x"]}}"#,
        ),
        presence(
            "presence-site",
            "{prefix: site/presence}",
            r#"capabilities: {publish: {topics: ["site/#"]}}"#,
        ),
    ])
    .await;
    let mut site = Watcher::start(&broker, "site-watcher", &["site/presence/#"]).await;
    check_denied(
        &broker,
        "presence-narrow",
        &["presence/#", "status/#"],
        "capabilities.publish.topics allows",
    )
    .await;
    // The other instance reported everyone, in order, watchers included.
    let mut seen = Vec::new();
    while seen.len() < 9 {
        let (topic, payload) = site.next().await;
        let v: Value = serde_json::from_str(&payload).expect("JSON");
        seen.push(format!("{topic} {}", v["online"]));
    }
    assert_eq!(
        seen,
        [
            "site/presence/site-watcher true",
            "site/presence/watcher true",
            "site/presence/dev-1 true",
            "site/presence/dev-1 false",
            "site/presence/dev-2 true",
            "site/presence/dev-2 false",
            "site/presence/dev-3 true",
            "site/presence/dev-3 false",
            "site/presence/watcher false",
        ]
    );
    drop(site);
    broker.shutdown().await;
}
