//! Live reload: config edits (through the file watcher, with real writes and renames) take
//! effect while clients stay connected; invalid edits change nothing but the reload status.

mod common;
#[path = "common/http.rs"]
mod http;

use common::*;
use mqtt_broker::config::{Config, ListenerConfig, TransportKind};
use mqtt_broker::protocol::*;
use mqtt_broker::{Broker, BrokerHandle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mqtt-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `text` to `path` by rename (as editors and ConfigMaps do) or in place.
fn write(path: &Path, text: &str, rename: bool) {
    if rename {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    } else {
        std::fs::write(path, text).unwrap();
    }
}

async fn start_watching(path: &Path) -> BrokerHandle {
    let broker = Broker::start(Config::load(path).unwrap()).await.unwrap();
    broker.watch_config(path.to_path_buf()).unwrap();
    broker
}

/// How long an edit may take to be visible (issue 6: "each valid change is observable by a
/// client within 2 seconds"): the 250 ms debounce plus a reload of a few milliseconds leave a
/// wide margin on a machine that runs this process.
const VISIBLE_WITHIN: Duration = Duration::from_secs(2);
/// However frozen the machine, an edit not visible after this long is a failure.
const HARD_LIMIT: Duration = Duration::from_secs(20);
/// A wake-up this late means nothing in the process could run (see [`frozen`]).
const FREEZE: Duration = Duration::from_millis(20);

/// Total time so far during which this process was not run at all: the machine (or the VM
/// it runs in) was overloaded. Measured by a plain OS thread that sleeps 1 ms at a time and
/// adds up every wake-up that came at least [`FREEZE`] late. The kernel wakes a thread that
/// slept within a few milliseconds even when every core is busy with this process's own
/// threads, so what it counts is time taken by others, not by the broker: it is not a
/// tokio thread and touches no broker state, so a broker bug (a blocked async worker, a lock
/// held too long, a slow reload) cannot make it late. That is why time it counts can be
/// excluded from a latency budget without weakening the budget.
fn frozen() -> Duration {
    static FROZEN_US: AtomicU64 = AtomicU64::new(0);
    static METER: std::sync::Once = std::sync::Once::new();
    METER.call_once(|| {
        std::thread::Builder::new()
            .name("freeze-meter".into())
            .spawn(|| loop {
                let t = Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                let late = t.elapsed().saturating_sub(Duration::from_millis(1));
                if late >= FREEZE {
                    FROZEN_US.fetch_add(late.as_micros() as u64, Ordering::Relaxed);
                }
            })
            .unwrap();
    });
    Duration::from_micros(FROZEN_US.load(Ordering::Relaxed))
}

/// The [`VISIBLE_WITHIN`] budget of one edit, started when its file write has completed.
/// Wall-clock time minus the time the process was frozen. On machines shared with compilers
/// this test failed now and then with "not within 2 s". Measured there: a change normally
/// becomes visible after 250-300 ms (about 500 ms with the test squeezed onto a quarter of one
/// core), and the slow ones, up to 1.8 s, were whole-process stalls: the freeze meter counted
/// 1.7 s of them, and the process used 0.03 s of CPU in those 1.8 s. Time in which the
/// process did run still counts in full, including the debounce, the reload, and the
/// client's round trip through a broker busy with 200 clients.
struct Budget {
    start: Instant,
    frozen_at_start: Duration,
}

impl Budget {
    fn start() -> Budget {
        Budget {
            frozen_at_start: frozen(),
            start: Instant::now(),
        }
    }

    /// (time counted against the budget, wall-clock time, time frozen).
    fn spent(&self) -> (Duration, Duration, Duration) {
        let wall = self.start.elapsed();
        let frozen = frozen().saturating_sub(self.frozen_at_start);
        (wall.saturating_sub(frozen), wall, frozen)
    }

    fn check(&self, what: &str) {
        let (spent, wall, frozen) = self.spent();
        assert!(
            spent < VISIBLE_WITHIN && wall < HARD_LIMIT,
            "not within {VISIBLE_WITHIN:?}: {what} ({wall:?} since the write, of which the process was frozen {frozen:?})"
        );
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let budget = Budget::start();
    while !f() {
        budget.check(what);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const BASE: &str = "listeners:\n  - {name: main, bind: '127.0.0.1:0'}\n";

#[tokio::test]
async fn acl_edit_turns_a_denied_subscription_into_an_allowed_one() {
    let dir = temp_dir("acl");
    let cfg = dir.join("broker.yaml");
    let acl = dir.join("acl");
    write(&acl, "user alice\ntopic read public/#\n", false);
    write(&cfg, &format!("{BASE}security:\n  acl_file: acl\n"), false);
    let broker = start_watching(&cfg).await;
    let mut c = RawClient::connect_with(broker.local_addr(), {
        let mut c = connect_packet("alice", true);
        c.username = Some("alice".into());
        c
    })
    .await
    .0;
    assert_eq!(
        c.subscribe(1, &[("private/x", QoS::AtMostOnce)]).await,
        vec![SubAckCode::Failure]
    );
    write(
        &acl,
        "user alice\ntopic read public/#\ntopic read private/#\n",
        true,
    );
    wait_for("ACL reload", || broker.generation() == 2).await;
    assert_eq!(
        c.subscribe(2, &[("private/x", QoS::AtMostOnce)]).await,
        vec![SubAckCode::Granted(QoS::AtMostOnce)]
    );
    // The client was never disconnected.
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn a_slow_in_place_write_is_read_only_once_closed() {
    let dir = temp_dir("slow");
    let cfg = dir.join("broker.yaml");
    let text = format!("{BASE}security:\n  acl:\n    - {{allow: subscribe, topic: 'a/#'}}\n");
    write(&cfg, &text, false);
    let broker = start_watching(&cfg).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // An in-place write that pauses after truncating (a stalled writer, a big file): the
    // empty file in between is a valid config (all defaults, no ACL) and must not be applied.
    let mut f = std::fs::File::create(&cfg).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        broker.generation(),
        1,
        "a truncated, unfinished file was applied"
    );
    std::io::Write::write_all(&mut f, format!("{text}log:\n  level: warn\n").as_bytes()).unwrap();
    drop(f);
    wait_for("the finished write", || broker.generation() == 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(broker.generation(), 2);
    assert!(broker.last_reload().ok);
}

#[tokio::test]
async fn invalid_edits_change_nothing_and_report_why() {
    let dir = temp_dir("invalid");
    let cfg = dir.join("broker.yaml");
    write(&cfg, BASE, false);
    let broker = start_watching(&cfg).await;
    let (mut c, _) = RawClient::connect(broker.local_addr(), "stays", true).await;
    for (bad, expect) in [
        ("listeners: [\n", "while parsing"),
        (&*format!("{BASE}server:\n  max_connections: many\n"), "max_connections"),
        (&*format!("{BASE}server:\n  max_conections: 5\n"), "max_conections"),
        (&*format!("{BASE}security:\n  acl_file: missing.acl\n"), "missing.acl"),
        (
            "listeners:\n  - {name: main, bind: '127.0.0.1:0'}\n  - {name: t, bind: '127.0.0.1:0', protocol: tls, cert_file: nope.pem, key_file: nope.key}\n",
            "nope.pem",
        ),
    ] {
        let before = broker.last_reload().at;
        write(&cfg, bad, true);
        wait_for("a reload attempt", || broker.last_reload().at != before).await;
        let status = broker.last_reload();
        assert!(!status.ok, "{bad}");
        assert!(status.error.as_deref().unwrap_or("").contains(expect), "{bad}: {status:?}");
        assert_eq!(broker.generation(), 1);
    }
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    assert_eq!(broker.stats().connections.total, 1);
}

#[tokio::test]
async fn revoked_credentials_disconnect_only_that_client() {
    let dir = temp_dir("revoke");
    let cfg = dir.join("broker.yaml");
    let users = |names: &[&str]| {
        let mut s = String::from("security:\n  require_auth: true\n  users:\n");
        for n in names {
            s += &format!(
                "    - {{username: {n}, password_hash: '{}'}}\n",
                mqtt_broker::auth::hash_password(b"pw")
            );
        }
        s
    };
    write(&cfg, &format!("{BASE}{}", users(&["keep", "drop"])), false);
    let broker = start_watching(&cfg).await;
    let login = |u: &str| {
        let mut c = connect_packet(u, true);
        c.username = Some(u.into());
        c.password = Some(bytes::Bytes::from_static(b"pw"));
        c
    };
    let (mut keep, ack) = RawClient::connect_with(broker.local_addr(), login("keep")).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    let (mut dropped, _) = RawClient::connect_with(broker.local_addr(), login("drop")).await;
    write(&cfg, &format!("{BASE}{}", users(&["keep"])), true);
    dropped.expect_closed().await;
    keep.send(&Packet::PingReq).await;
    assert_eq!(keep.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn listeners_are_added_and_removed_live() {
    let broker = start_broker(|_| {}).await;
    let first = broker.local_addr();
    let (mut old_client, _) = RawClient::connect(first, "old", true).await;
    let mut config = broker.config();
    config.listeners = vec![ListenerConfig {
        name: Some("second".into()),
        ..ListenerConfig::new(TransportKind::Ws, "127.0.0.1:0".parse().unwrap())
    }];
    broker.reload(config.clone()).await.unwrap();
    let listeners = broker.listeners();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0].transport, TransportKind::Ws);
    // Removed without drain: existing clients stay, new connections are refused.
    old_client.send(&Packet::PingReq).await;
    assert_eq!(old_client.recv().await, Some(Packet::PingResp));
    assert!(tokio::net::TcpStream::connect(first).await.is_err());
    let ws = tokio::net::TcpStream::connect(listeners[0].addr)
        .await
        .unwrap();
    let stream = ws_upgrade(ws, &format!("ws://{}/mqtt", listeners[0].addr))
        .await
        .unwrap();
    let (_c, ack) = RawClient::connect_over(stream, connect_packet("ws", true)).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    // Removing a listener with `drain: true` closes its clients.
    config.listeners[0].drain = true;
    broker.reload(config.clone()).await.unwrap();
    config.listeners = vec![BrokerHandle::loopback_listener()];
    broker.reload(config).await.unwrap();
    let mut c = _c;
    c.expect_closed().await;
    old_client.send(&Packet::PingReq).await;
    assert_eq!(old_client.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn tls_certificate_swap_applies_to_new_handshakes_only() {
    let old_pki = TestPki::new("reload-old");
    let new_pki = TestPki::new("reload-new");
    let broker = start_broker(|c| {
        c.listeners = vec![ListenerConfig {
            cert_file: Some(old_pki.path("server.pem")),
            key_file: Some(old_pki.path("server.key")),
            ..ListenerConfig::new(TransportKind::Tls, "127.0.0.1:0".parse().unwrap())
        }]
    })
    .await;
    let addr = broker.local_addr();
    let (mut established, _) = RawClient::connect_over(
        tls_stream(addr, old_pki.client_config(None)).await.unwrap(),
        connect_packet("e", true),
    )
    .await;
    let mut config = broker.config();
    config.listeners[0].cert_file = Some(new_pki.path("server.pem"));
    config.listeners[0].key_file = Some(new_pki.path("server.key"));
    broker.reload(config).await.unwrap();
    assert_eq!(broker.local_addr(), addr, "the socket was not rebound");
    assert!(tls_stream(addr, new_pki.client_config(None)).await.is_ok());
    assert!(
        tls_stream(addr, old_pki.client_config(None)).await.is_err(),
        "old certificate still served"
    );
    established.send(&Packet::PingReq).await;
    assert_eq!(established.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn lowered_queue_limit_applies_to_new_messages_without_dropping_queued_ones() {
    let broker = start_broker(|c| c.performance.message_queue_limit = 10).await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "offline", false).await;
    sub.subscribe(1, &[("q", QoS::AtLeastOnce)]).await;
    sub.send(&Packet::Disconnect).await;
    sub.expect_closed().await;
    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    for i in 1..=5u16 {
        publ.send(&publish("q", b"x", QoS::AtLeastOnce, Some(i), false))
            .await;
        publ.recv().await;
    }
    let mut config = broker.config();
    config.performance.message_queue_limit = 2;
    broker.reload(config).await.unwrap();
    for i in 6..=7u16 {
        publ.send(&publish("q", b"y", QoS::AtLeastOnce, Some(i), false))
            .await;
        publ.recv().await;
    }
    let stats = broker.stats();
    assert_eq!(
        stats.messages.queued, 5,
        "queued messages kept, new ones refused"
    );
    assert_eq!(stats.messages.dropped_queue_full, 2);
    assert_eq!(stats.config_generation, 2);
}

/// 200 clients on TCP and WebSocket exchange QoS 1 messages while the config file is
/// rewritten 50 times (valid and invalid, in place and by rename; ACL, log level, limits and
/// plugin set; the TLS certificate swap has its own test above): no disconnects, no lost
/// messages, and each valid change is visible to a client within 2 s (of time the process
/// was run, see [`Budget`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rewrites_under_load_lose_nothing() {
    let dir = temp_dir("load");
    let cfg = dir.join("broker.yaml");
    // Every other valid change also swaps the plugin set: a transformer that passes every
    // message through is loaded, then removed again, under the QoS 1 load. (An authorizer
    // would change what the probe below observes: an `allow` plugin allows every topic.)
    // Its call timeout is generous: the limit is wall-clock time, and compiling the
    // component during a reload on this 2-core machine can keep a worker thread off the CPU
    // for more than the default 10 ms; the call then fails and `on_error: deny` drops the
    // message by design. This test is about reloads, not about that limit.
    let plugins = format!(
        "plugins:\n  - {{name: keep, path: '{}', limits: {{call_timeout: 1s}}}}\n",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/wasm/keep.wat")
            .display()
    );
    let config_text = |n: u32, level: &str, limit: u32| {
        format!(
            "listeners:\n  - {{name: tcp, bind: '127.0.0.1:0'}}\n  - {{name: ws, bind: '127.0.0.1:0', protocol: ws}}\n\
             log:\n  level: {level}\nperformance:\n  message_queue_limit: {limit}\n\
             security:\n  acl:\n    - {{allow: all, topic: 'load/#'}}\n    - {{allow: subscribe, topic: 'probe/{n}'}}\n{}",
            if n % 4 == 3 { plugins.as_str() } else { "" }
        )
    };
    write(&cfg, &config_text(0, "warn", 1000), false);
    let broker = start_watching(&cfg).await;
    let listeners = broker.listeners();
    let (tcp, ws) = (listeners[0].addr, listeners[1].addr);
    let open = |i: usize, id: String| async move {
        let stream: Box<dyn ByteStream> = if i % 2 == 0 {
            Box::new(tokio::net::TcpStream::connect(tcp).await.unwrap())
        } else {
            ws_upgrade(
                tokio::net::TcpStream::connect(ws).await.unwrap(),
                &format!("ws://{ws}/mqtt"),
            )
            .await
            .unwrap()
        };
        let (c, ack) = RawClient::connect_over(stream, connect_packet(&id, true)).await;
        assert_eq!(ack.code, ConnectReturnCode::Accepted);
        c
    };
    const PAIRS: usize = 100;
    const END: u32 = u32::MAX;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for i in 0..PAIRS {
        let mut sub = open(i, format!("sub-{i}")).await;
        sub.subscribe(1, &[(&format!("load/{i}"), QoS::AtLeastOnce)])
            .await;
        subs.push(tokio::spawn(async move {
            let mut next = 0u32;
            loop {
                // The end is the publisher's END message (QoS 1 on one topic keeps its
                // order), not a silence, so a stalled machine cannot end a subscriber early.
                match sub.recv_within(Duration::from_secs(30)).await {
                    Ok(Some(Packet::Publish(p))) => {
                        let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                        if seq == END {
                            sub.send(&Packet::PubAck(p.pid.unwrap())).await;
                            return next;
                        }
                        // QoS 1 may repeat, never skip.
                        assert!(seq <= next, "sub {i}: expected {next}, got {seq}");
                        if seq == next {
                            next += 1;
                        }
                        sub.send(&Packet::PubAck(p.pid.unwrap())).await;
                    }
                    Ok(Some(other)) => panic!("sub {i}: unexpected {other:?}"),
                    Ok(None) => panic!("sub {i} was disconnected"),
                    Err(()) => panic!("sub {i}: nothing received for 30 s"),
                }
            }
        }));
    }
    let mut pubs = Vec::new();
    for i in 0..PAIRS {
        let mut publ = open(i + 1, format!("pub-{i}")).await;
        let (stop, sent) = (stop.clone(), sent.clone());
        pubs.push(tokio::spawn(async move {
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let pid = (seq % 60_000 + 1) as u16;
                publ.send(&publish(
                    &format!("load/{i}"),
                    &seq.to_be_bytes(),
                    QoS::AtLeastOnce,
                    Some(pid),
                    false,
                ))
                .await;
                match publ.recv().await {
                    Some(Packet::PubAck(p)) if p == pid => {}
                    other => panic!("pub {i}: expected PUBACK {pid}, got {other:?}"),
                }
                seq += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            publ.send(&publish(
                &format!("load/{i}"),
                &END.to_be_bytes(),
                QoS::AtLeastOnce,
                Some(60_001),
                false,
            ))
            .await;
            assert_eq!(publ.recv().await, Some(Packet::PubAck(60_001)));
            seq
        }));
    }
    let (mut probe, _) = RawClient::connect(tcp, "probe", true).await;
    let mut probe_pid = 1u16;
    let mut slowest = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for n in 1..=50u32 {
        let rename = n % 3 == 0;
        if n % 2 == 1 {
            let level = if n % 4 == 1 { "info" } else { "warn" };
            let before = broker.generation();
            write(&cfg, &config_text(n, level, 1000 + n), rename);
            let budget = Budget::start();
            // The change is visible to a client: probe/n becomes subscribable.
            loop {
                probe_pid += 1;
                let codes = probe
                    .subscribe(probe_pid, &[(&format!("probe/{n}"), QoS::AtMostOnce)])
                    .await;
                if codes == vec![SubAckCode::Granted(QoS::AtMostOnce)] {
                    break;
                }
                budget.check(&format!("change {n} visible to a client"));
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            slowest = slowest.max(budget.spent());
            assert_eq!(broker.generation(), before + 1);
            let loaded: Vec<String> = broker.plugin_stats().into_iter().map(|p| p.name).collect();
            let expected: &[&str] = if n % 4 == 3 { &["keep"] } else { &[] };
            assert_eq!(loaded, expected, "plugin set of change {n}");
            // The runtime is swapped before the reload status is written: let the status
            // catch up, or the next step would take this success for its own outcome.
            wait_for("the reload status", || {
                let status = broker.last_reload();
                status.ok && status.generation == before + 1
            })
            .await;
        } else {
            let bad = match n % 6 {
                0 => "listeners: [".to_string(),
                2 => format!("{}server:\n  port: 0\n", config_text(n, "info", 5)),
                _ => format!("{}bogus_key: 1\n", config_text(n, "info", 5)),
            };
            let before = broker.last_reload().at;
            write(&cfg, &bad, rename);
            let generation = broker.generation();
            wait_for("a refused reload", || broker.last_reload().at != before).await;
            assert!(!broker.last_reload().ok, "change {n}: {bad}");
            assert_eq!(broker.generation(), generation);
        }
    }
    let (spent, wall, frozen) = slowest;
    eprintln!(
        "slowest valid change: visible after {spent:?} of run time ({wall:?} wall clock, {frozen:?} frozen)"
    );
    assert_eq!(
        broker.stats().connections.total,
        2 * PAIRS as u64 + 1,
        "someone was disconnected"
    );
    stop.store(true, Ordering::Relaxed);
    let mut expected = Vec::new();
    for p in pubs {
        expected.push(p.await.unwrap());
    }
    for (i, s) in subs.into_iter().enumerate() {
        let received = s.await.unwrap();
        assert_eq!(received, expected[i], "pair {i} lost messages");
    }
    assert!(sent.load(Ordering::Relaxed) > 1000);
    assert_eq!(broker.stats().config_generation, 26);
}

#[tokio::test]
async fn password_file_edit_takes_effect_live() {
    let dir = temp_dir("passwd");
    let cfg = dir.join("broker.yaml");
    let passwd = dir.join("passwd");
    let line = |user: &str, pw: &[u8]| format!("{user}:{}\n", mqtt_broker::auth::hash_password(pw));
    write(&passwd, &line("erin", b"old-pw"), false);
    write(
        &cfg,
        &format!("{BASE}security:\n  require_auth: true\n  password_file: passwd\n  auth_failure_delay: 1ms\n"),
        false,
    );
    let broker = start_watching(&cfg).await;
    let login = |u: &str, pw: &'static [u8]| {
        let mut c = connect_packet(u, true);
        c.username = Some(u.into());
        c.password = Some(bytes::Bytes::from_static(pw));
        c
    };
    let (mut erin, ack) =
        RawClient::connect_with(broker.local_addr(), login("erin", b"old-pw")).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    // Only the password file changes (as `mosquitto_passwd` or `mqtt-broker passwd` would).
    write(
        &passwd,
        &(line("erin", b"new-pw") + &line("frank", b"f-pw")),
        true,
    );
    wait_for("password file reload", || broker.generation() == 2).await;
    // erin's old password is no longer accepted: her connection is closed on reload...
    erin.expect_closed().await;
    let addr = broker.local_addr();
    let code = |c| async move { RawClient::connect_with(addr, c).await.1.code };
    assert_eq!(
        code(login("erin", b"old-pw")).await,
        ConnectReturnCode::BadUsernameOrPassword
    );
    // ...and the new entries work.
    assert_eq!(
        code(login("erin", b"new-pw")).await,
        ConnectReturnCode::Accepted
    );
    assert_eq!(
        code(login("frank", b"f-pw")).await,
        ConnectReturnCode::Accepted
    );
}

/// A reload never gets stuck on a setting only a restart applies (issue 21): everything else
/// in the same edit is applied, the setting is reported as pending (key, running and
/// configured value) in the reload status, `GET /api/v1/reload` and
/// `mqtt_config_pending_restart`, and reverting it clears it. Storage settings without a
/// file store have no effect and are not pending.
#[tokio::test]
async fn restart_only_settings_are_pending_and_never_block_a_reload() {
    let broker = start_broker(|c| {
        c.admin.enabled = true;
        c.admin.bind = "127.0.0.1:0".parse().unwrap();
    })
    .await;
    let admin = broker.admin_addr().expect("admin listener");
    let started = broker.config();

    // Memory storage: path and cache size do nothing, so they are not pending.
    let mut config = started.clone();
    config.persistence.path = "/elsewhere".into();
    config.persistence.cache_size = mqtt_broker::plugins::ByteSize(64 * 1024 * 1024);
    config.limits.max_subscriptions = 7;
    assert_eq!(broker.reload(config.clone()).await.unwrap(), 2);
    assert!(broker.last_reload().pending_restart.is_empty());
    assert_eq!(broker.config().limits.max_subscriptions, 7);

    // Restart-only settings next to a live one: the live one applies, the others are pending.
    config.performance.worker_threads = 3;
    config.persistence.storage_type = mqtt_broker::config::StorageType::File;
    config.limits.max_subscriptions = 9;
    assert_eq!(broker.reload(config.clone()).await.unwrap(), 3);
    assert_eq!(broker.config().limits.max_subscriptions, 9);
    let status = broker.last_reload();
    let keys: Vec<_> = status.pending_restart.iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        ["performance.worker_threads", "persistence.storage_type"]
    );
    assert_eq!(status.pending_restart[1].running, "memory");
    assert_eq!(status.pending_restart[1].configured, "file");

    let reply = http::get(admin, "/api/v1/reload").await.json();
    assert_eq!(
        reply["pending_restart"][0]["key"],
        "performance.worker_threads"
    );
    assert_eq!(reply["pending_restart"][0]["running"], "0");
    assert_eq!(reply["pending_restart"][0]["configured"], "3");
    let metrics = http::scrape(admin, None).await;
    assert_eq!(metrics.value("mqtt_config_pending_restart"), 2.0);

    // A refused edit keeps the pending list of the configuration in force.
    let mut bad = config.clone();
    bad.server.port = 0;
    assert!(broker.reload(bad).await.is_err());
    assert_eq!(broker.last_reload().pending_restart.len(), 2);

    // Reverting the file clears them.
    assert_eq!(broker.reload(started).await.unwrap(), 4);
    assert!(broker.last_reload().pending_restart.is_empty());
    let metrics = http::scrape(admin, None).await;
    assert_eq!(metrics.value("mqtt_config_pending_restart"), 0.0);
}
