//! Bridges to remote brokers, against Debian's Mosquitto (`mosquitto`, installed by
//! `.ci/run`) started on free loopback ports, and between two of our brokers: both
//! directions at QoS 0/1/2 with prefixes, store and forward across a remote restart and a
//! `kill -9` of our broker, TLS with a client certificate, loop prevention, live reload.

mod common;
#[path = "common/http.rs"]
mod http;

use common::*;
use mqtt_broker::config::{
    BridgeConfig, BridgeProtocol, BridgeTls, Config, ConfigDuration, Direction, TopicRule,
};
use mqtt_broker::core::control::{BridgeSummary, Control};
use mqtt_broker::protocol::*;
use mqtt_broker::BrokerHandle;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's Mosquitto on a free loopback port; killed on drop.
struct Mosquitto {
    child: Option<std::process::Child>,
    port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    /// Starts it with `extra` appended to a config that listens on `port` (0: a free one).
    fn start(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        let port = if port == 0 { free_port() } else { port };
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n{extra}\n"),
        )
        .unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            conf,
        };
        m.restart();
        m
    }

    /// (Re)starts it with the same config and port.
    fn restart(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is required (apt-get install mosquitto; .ci/run does this)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (Mosquitto saves its persistence file), and waits for the exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mqtt-bridge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rule(pattern: &str, direction: Direction, qos: u8, local: &str, remote: &str) -> TopicRule {
    TopicRule {
        pattern: pattern.into(),
        direction,
        qos,
        local_prefix: local.into(),
        remote_prefix: remote.into(),
    }
}

/// A bridge named `name` to `address` with fast reconnects (tests wait for them).
fn bridge(name: &str, address: &str, topics: Vec<TopicRule>) -> BridgeConfig {
    let mut b = BridgeConfig::new(name, address);
    b.topics = topics;
    b.reconnect_min = ConfigDuration::millis(100);
    b.reconnect_max = ConfigDuration::millis(500);
    b
}

fn summary(handle: &BrokerHandle, name: &str) -> BridgeSummary {
    handle
        .bridges()
        .into_iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("bridge {name} is listed"))
}

/// Waits until the bridge's state is `state`.
async fn wait_state(handle: &BrokerHandle, name: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = summary(handle, name);
        if s.state == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bridge {name} never became {state}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives `n` PUBLISH packets (acknowledging QoS 1/2), within `limit`.
async fn receive(client: &mut RawClient, n: usize, limit: Duration) -> Vec<Publish> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.recv_within(left).await {
            Ok(Some(Packet::Publish(p))) => {
                ack_publish(client, &p).await;
                got.push(p);
            }
            Ok(Some(Packet::PubRel(pid))) => client.send_lossy(&Packet::PubComp(pid)).await,
            Ok(Some(_)) => {}
            Ok(None) | Err(()) => break,
        }
    }
    got
}

async fn ack_publish(client: &mut RawClient, p: &Publish) {
    match (p.qos, p.pid) {
        (QoS::AtLeastOnce, Some(pid)) => client.send_lossy(&Packet::PubAck(pid)).await,
        (QoS::ExactlyOnce, Some(pid)) => client.send_lossy(&Packet::PubRec(pid)).await,
        _ => {}
    }
}

/// Publishes at `qos` and waits for the acknowledgement (QoS 2 completed).
async fn publish_acked(client: &mut RawClient, topic: &str, payload: &[u8], qos: QoS, pid: u16) {
    match qos {
        QoS::AtMostOnce => {
            client
                .send(&publish(topic, payload, qos, None, false))
                .await
        }
        QoS::AtLeastOnce => {
            client
                .send(&publish(topic, payload, qos, Some(pid), false))
                .await;
            assert_eq!(client.recv().await, Some(Packet::PubAck(pid)));
        }
        QoS::ExactlyOnce => client.publish_qos2(topic, payload, pid).await,
    }
}

/// Publishes `topics.0` at `qos` through `publisher` and checks that `subscriber` gets it
/// once, as `topics.1`, with its payload and QoS.
async fn crosses(
    publisher: &mut RawClient,
    subscriber: &mut RawClient,
    topics: (&str, &str),
    qos: QoS,
    pid: u16,
) {
    let payload = format!("{} at {qos:?}", topics.0);
    publish_acked(publisher, topics.0, payload.as_bytes(), qos, pid).await;
    let got = receive(subscriber, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{} at {qos:?}", topics.0);
    assert_eq!(&*got[0].topic, topics.1);
    assert_eq!(got[0].payload, payload.as_bytes());
    assert_eq!(got[0].qos, qos);
}

/// Both directions at QoS 0, 1 and 2, with Mosquitto's prefix semantics, and the state
/// topic on both brokers.
#[tokio::test]
async fn both_directions_at_every_qos_through_mosquitto() {
    let dir = temp("both");
    let remote = Mosquitto::start(&dir, 0, "");
    let mut b = bridge(
        "cloud",
        &remote.address(),
        vec![
            rule("sensors/#", Direction::Out, 2, "", "edge1/"),
            rule("cmd/#", Direction::In, 2, "", "edge1/"),
        ],
    );
    b.client_id = Some("edge1-bridge".into());
    let handle = start_broker(|c| {
        c.bridges = vec![b];
        c.admin.bind = "127.0.0.1:0".parse().unwrap();
    })
    .await;
    wait_state(&handle, "cloud", "connected").await;

    let (mut cloud_sub, _) = RawClient::connect(remote.addr(), "cloud-sub", true).await;
    cloud_sub
        .subscribe(1, &[("edge1/sensors/#", QoS::ExactlyOnce)])
        .await;
    let (mut local_sub, _) = RawClient::connect(handle.local_addr(), "local-sub", true).await;
    local_sub.subscribe(1, &[("cmd/#", QoS::ExactlyOnce)]).await;
    let (mut local_pub, _) = RawClient::connect(handle.local_addr(), "local-pub", true).await;
    let (mut cloud_pub, _) = RawClient::connect(remote.addr(), "cloud-pub", true).await;

    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let pid = 10 + i as u16;
        let out = ("sensors/dht", "edge1/sensors/dht");
        let inbound = ("edge1/cmd/relay", "cmd/relay");
        crosses(&mut local_pub, &mut cloud_sub, out, qos, pid).await;
        crosses(&mut cloud_pub, &mut local_sub, inbound, qos, pid).await;
    }
    // A topic no rule names stays local.
    publish_acked(&mut local_pub, "private/x", b"x", QoS::AtLeastOnce, 30).await;
    assert!(receive(&mut cloud_sub, 1, Duration::from_millis(300))
        .await
        .is_empty());

    // The state topic, retained on both brokers (Mosquitto's notification topic).
    let state = "$SYS/broker/connection/edge1-bridge/state";
    for addr in [handle.local_addr(), remote.addr()] {
        let (mut c, _) = RawClient::connect(addr, "state-reader", true).await;
        c.subscribe(1, &[(state, QoS::AtLeastOnce)]).await;
        let got = receive(&mut c, 1, Duration::from_secs(5)).await;
        assert_eq!(got[0].payload, &b"1"[..], "state on {addr}");
        assert!(got[0].retain);
    }

    let s = summary(&handle, "cloud");
    assert_eq!(s.messages_out, 3);
    assert_eq!(s.messages_in, 3);
    assert_eq!(s.queue_depth, 0);
    let metrics = http::scrape(handle.admin_addr().expect("admin listener"), None).await;
    assert_eq!(
        metrics.value("mqtt_bridge_messages_total{bridge=\"cloud\",direction=\"out\"}"),
        3.0
    );
    assert_eq!(
        metrics.value("mqtt_bridge_connected{bridge=\"cloud\"}"),
        1.0
    );
    assert_eq!(metrics.value("mqtt_connections{transport=\"bridge\"}"), 1.0);
    let api = http::get(handle.admin_addr().unwrap(), "/api/v1/bridges")
        .await
        .json();
    assert_eq!(api["bridges"][0]["name"], "cloud");
    assert_eq!(api["bridges"][0]["state"], "connected");
    handle.shutdown().await;
}

/// The topics of `v`, sorted.
fn sorted_topics(v: Vec<Publish>) -> Vec<String> {
    let mut t: Vec<String> = v.iter().map(|p| p.topic.to_string()).collect();
    t.sort();
    t
}

/// Sequence numbers in payloads `n`, counted.
fn tally(got: &[Publish]) -> BTreeMap<u32, usize> {
    let mut seen = BTreeMap::new();
    for p in got {
        let n: u32 = std::str::from_utf8(&p.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("numeric payload");
        *seen.entry(n).or_insert(0) += 1;
    }
    seen
}

/// A persistent subscriber that reconnects until it has every message numbered in `wanted`
/// or `limit` passes; returns every message it took delivery of (earlier ones redelivered
/// at least once too). A QoS 2 message is taken once: a resent PUBLISH whose packet id
/// awaits PUBREL is the same message [MQTT-4.3.3-2].
async fn collect_across_restarts(
    addr: SocketAddr,
    id: &str,
    wanted: std::ops::RangeInclusive<u32>,
    limit: Duration,
) -> Vec<Publish> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut awaiting_rel = std::collections::HashSet::new();
    let missing = |got: &[Publish]| {
        let seen = tally(got);
        wanted.clone().any(|n| !seen.contains_key(&n))
    };
    while missing(&got) && Instant::now() < deadline {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mut c, ack) =
            RawClient::connect_over(Box::new(stream), connect_packet(id, false)).await;
        if ack.code != ConnectReturnCode::Accepted {
            continue;
        }
        if !ack.session_present {
            awaiting_rel.clear();
        }
        while missing(&got) {
            match c.recv_within(Duration::from_secs(3)).await {
                Ok(Some(Packet::Publish(p))) => {
                    ack_publish(&mut c, &p).await;
                    if p.qos == QoS::ExactlyOnce && !awaiting_rel.insert(p.pid.unwrap_or(0)) {
                        continue;
                    }
                    got.push(p);
                }
                Ok(Some(Packet::PubRel(pid))) => {
                    awaiting_rel.remove(&pid);
                    c.send_lossy(&Packet::PubComp(pid)).await;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(()) => break,
            }
        }
    }
    got
}

/// The remote stopped and restarted under QoS 1 and QoS 2 load: every message this broker
/// acknowledged reaches the remote's subscriber, at least once for QoS 1 and exactly once
/// for QoS 2.
#[tokio::test]
async fn remote_restart_under_load_loses_nothing_acknowledged() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let dir = temp(&format!("restart{}", qos as u8));
        let mut remote = Mosquitto::start(
            &dir,
            0,
            &format!(
                "persistence true\npersistence_location {}/\nmax_queued_messages 100000\n",
                dir.display()
            ),
        );
        // The subscriber's persistent session exists before any message.
        let sub_id = "cloud-archiver";
        {
            let (mut c, _) = RawClient::connect(remote.addr(), sub_id, false).await;
            c.subscribe(1, &[("site/#", qos)]).await;
        }
        let handle = start_broker(|c| {
            c.bridges = vec![bridge(
                "cloud",
                &remote.address(),
                vec![rule("data/#", Direction::Out, qos as u8, "", "site/")],
            )]
        })
        .await;
        wait_state(&handle, "cloud", "connected").await;
        let collector = tokio::spawn(collect_across_restarts(
            remote.addr(),
            sub_id,
            0..=599,
            Duration::from_secs(40),
        ));

        let (mut publisher, _) = RawClient::connect(handle.local_addr(), "meter", true).await;
        for i in 0..600u32 {
            if i == 200 {
                remote.stop();
            }
            if i == 400 {
                remote.restart();
            }
            let pid = (i % 60000 + 1) as u16;
            publish_acked(
                &mut publisher,
                "data/meter",
                i.to_string().as_bytes(),
                qos,
                pid,
            )
            .await;
        }
        let got = collector.await.unwrap();
        let seen = tally(&got);
        let missing: Vec<u32> = (0..600).filter(|i| !seen.contains_key(i)).collect();
        assert!(
            missing.is_empty(),
            "QoS {qos:?}: lost {} messages: {missing:?}",
            missing.len()
        );
        if qos == QoS::ExactlyOnce {
            let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
            assert!(twice.is_empty(), "QoS 2 delivered twice: {twice:?}");
        }
        assert!(summary(&handle, "cloud").reconnects >= 1);
        handle.shutdown().await;
    }
}

/// This broker killed with `kill -9` while the remote is down, then restarted: every
/// message it acknowledged while the remote was down reaches the remote's subscriber once
/// both are back (the bridge's session on this broker is in the persistent store).
#[tokio::test]
async fn kill_9_while_the_remote_is_down_loses_nothing_acknowledged() {
    let dir = temp("kill9");
    let mut remote = Mosquitto::start(
        &dir.join("remote"),
        0,
        &format!(
            "persistence true\npersistence_location {}/\nmax_queued_messages 100000\n",
            dir.join("remote").display()
        ),
    );
    let sub_id = "cloud-archiver";
    {
        let (mut c, _) = RawClient::connect(remote.addr(), sub_id, false).await;
        c.subscribe(1, &[("site/#", QoS::AtLeastOnce)]).await;
    }
    let port = free_port();
    let admin = free_port();
    let cfg = dir.join("broker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n\
             persistence:\n  storage_type: file\n  path: data\n\
             admin:\n  bind: 127.0.0.1:{admin}\n\
             log:\n  file: broker.log\n\
             bridges:\n  - name: cloud\n    addresses: [\"{}\"]\n    reconnect_min: 100ms\n    reconnect_max: 500ms\n    topics:\n      - pattern: \"data/#\"\n        direction: out\n        qos: 1\n        remote_prefix: site/\n",
            remote.address(),
        ),
    )
    .unwrap();
    let mut broker = start_binary(&cfg, port);
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    // Link up: a first message goes through.
    let (mut publisher, _) = RawClient::connect(local, "meter", true).await;
    publish_acked(&mut publisher, "data/meter", b"0", QoS::AtLeastOnce, 1).await;
    let first =
        collect_across_restarts(remote.addr(), sub_id, 0..=0, Duration::from_secs(10)).await;
    assert_eq!(tally(&first).len(), 1, "the link works before the test");

    remote.stop();
    // Once the bridge has seen the remote go (a message sent while Mosquitto is exiting
    // may be acknowledged by it and not saved: that would be the remote's loss).
    let deadline = Instant::now() + Duration::from_secs(10);
    while http::get(admin_addr, "/api/v1/bridges").await.json()["bridges"][0]["state"]
        == "connected"
    {
        assert!(
            Instant::now() < deadline,
            "the bridge did not notice the remote stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 1..=300u32 {
        publish_acked(
            &mut publisher,
            "data/meter",
            i.to_string().as_bytes(),
            QoS::AtLeastOnce,
            (i + 1) as u16,
        )
        .await;
    }
    broker.kill_9();
    remote.restart();
    let _broker = start_binary(&cfg, port);
    // Message 0 may come again (at least once): what counts is 1..=300.
    let got =
        collect_across_restarts(remote.addr(), sub_id, 1..=300, Duration::from_secs(30)).await;
    let seen = tally(&got);
    let missing: Vec<u32> = (1..=300).filter(|i| !seen.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "lost {} acknowledged messages: {missing:?}",
        missing.len()
    );
}

/// TLS to the remote with a client certificate (Mosquitto `require_certificate true`); a
/// bridge without one is refused by the remote and says why.
#[tokio::test]
async fn tls_to_the_remote_with_a_client_certificate() {
    let dir = temp("tls");
    let pki = TestPki::new("bridge-tls");
    pki.issue("edge1", vec!["edge1".into()]);
    let port = free_port();
    let remote = Mosquitto::start(
        &dir,
        port,
        &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.path("ca.pem").display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        ),
    );
    let tls = |client: bool| BridgeTls {
        ca_file: Some(pki.path("ca.pem")),
        cert_file: client.then(|| pki.path("edge1.pem")),
        key_file: client.then(|| pki.path("edge1.key")),
        server_name: Some("localhost".into()),
        alpn: Vec::new(),
    };
    let mut good = bridge(
        "secure",
        &remote.address(),
        vec![rule("sensors/#", Direction::Out, 1, "", "edge1/")],
    );
    good.tls = Some(tls(true));
    let mut anonymous = good.clone();
    anonymous.name = "no-cert".into();
    anonymous.tls = Some(tls(false));
    let handle = start_broker(|c| c.bridges = vec![good, anonymous]).await;
    wait_state(&handle, "secure", "connected").await;

    // The remote's subscriber, over TLS as well.
    let stream = tls_stream(remote.addr(), pki.client_config(Some("edge1")))
        .await
        .expect("TLS to mosquitto");
    let (mut cloud_sub, ack) =
        RawClient::connect_over(stream, connect_packet("cloud-sub", true)).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    cloud_sub
        .subscribe(1, &[("edge1/#", QoS::AtLeastOnce)])
        .await;
    let (mut local_pub, _) = RawClient::connect(handle.local_addr(), "dev", true).await;
    publish_acked(&mut local_pub, "sensors/t", b"21.5", QoS::AtLeastOnce, 1).await;
    let got = receive(&mut cloud_sub, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&*got[0].topic, "edge1/sensors/t");

    let refused = summary(&handle, "no-cert");
    assert_ne!(refused.state, "connected");
    let deadline = Instant::now() + Duration::from_secs(10);
    while summary(&handle, "no-cert").last_error.is_none() {
        assert!(Instant::now() < deadline, "no error recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown().await;
}

/// Starts one of our brokers named `node` on `port`, bridged to `other` with `rules` (MQTT 5).
async fn node(node: &str, port: u16, other: u16, rules: Vec<TopicRule>) -> BrokerHandle {
    let mut b = bridge(&format!("to-{other}"), &format!("127.0.0.1:{other}"), rules);
    b.protocol = BridgeProtocol::V5;
    let config = Config {
        listeners: vec![mqtt_broker::config::ListenerConfig::tcp(SocketAddr::from(
            ([127, 0, 0, 1], port),
        ))],
        node_name: Some(node.into()),
        bridges: vec![b],
        ..Default::default()
    };
    mqtt_broker::Broker::start(config)
        .await
        .expect("broker starts")
}

/// Publishes `t/from-a` on `a` and `t/from-b` on `b` (after a warm-up message that proves
/// every link and subscription is in place), and returns the topics each subscriber got.
async fn exchange(a: &BrokerHandle, b: &BrokerHandle) -> (Vec<String>, Vec<String>) {
    let (mut sub_a, _) = RawClient::connect(a.local_addr(), "sub-a", true).await;
    sub_a.subscribe(1, &[("t/#", QoS::AtLeastOnce)]).await;
    let (mut sub_b, _) = RawClient::connect(b.local_addr(), "sub-b", true).await;
    sub_b.subscribe(1, &[("t/#", QoS::AtLeastOnce)]).await;
    let (mut pub_a, _) = RawClient::connect(a.local_addr(), "pub-a", true).await;
    let (mut pub_b, _) = RawClient::connect(b.local_addr(), "pub-b", true).await;
    // Subscriptions travel through the links asynchronously: wait until a message crosses
    // both ways before counting.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (publisher, subscriber) in [(&mut pub_a, &mut sub_b), (&mut pub_b, &mut sub_a)] {
        loop {
            publish_acked(publisher, "t/warmup", b"w", QoS::AtLeastOnce, 1).await;
            if !receive(subscriber, 1, Duration::from_millis(300))
                .await
                .is_empty()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the link never carried a message"
            );
        }
    }
    // Drain the warm-up copies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(Some(p)) = sub_a.recv_within(Duration::from_millis(50)).await {
        if let Packet::Publish(p) = p {
            ack_publish(&mut sub_a, &p).await
        }
    }
    while let Ok(Some(p)) = sub_b.recv_within(Duration::from_millis(50)).await {
        if let Packet::Publish(p) = p {
            ack_publish(&mut sub_b, &p).await
        }
    }
    publish_acked(&mut pub_a, "t/from-a", b"1", QoS::AtLeastOnce, 2).await;
    publish_acked(&mut pub_b, "t/from-b", b"2", QoS::AtLeastOnce, 3).await;
    (
        sorted_topics(receive(&mut sub_a, 10, Duration::from_secs(2)).await),
        sorted_topics(receive(&mut sub_b, 10, Duration::from_secs(2)).await),
    )
}

/// Two of our brokers each forwarding `t/#` out to the other (the classic bridge loop):
/// a message reaches the other broker once and does not come back, thanks to the path.
#[tokio::test]
async fn two_brokers_bridged_to_each_other_do_not_loop() {
    let (port_a, port_b) = (free_port(), free_port());
    let a = node(
        "a",
        port_a,
        port_b,
        vec![rule("t/#", Direction::Out, 1, "", "")],
    )
    .await;
    let b = node(
        "b",
        port_b,
        port_a,
        vec![rule("t/#", Direction::Out, 1, "", "")],
    )
    .await;
    let (on_a, on_b) = exchange(&a, &b).await;
    assert_eq!(on_a, vec!["t/from-a", "t/from-b"], "each once on a");
    assert_eq!(on_b, vec!["t/from-a", "t/from-b"], "each once on b");
    let loops = summary(&a, &format!("to-{port_b}")).dropped["loop"]
        + summary(&b, &format!("to-{port_a}")).dropped["loop"];
    assert!(
        loops >= 2,
        "the path stopped the messages from going back ({loops})"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// One bridge in both directions between two of our brokers: no echo of the bridge's own
/// messages (No Local on both sides).
#[tokio::test]
async fn one_bridge_both_ways_does_not_echo() {
    let (port_a, port_b) = (free_port(), free_port());
    let b = mqtt_broker::Broker::start(Config {
        listeners: vec![mqtt_broker::config::ListenerConfig::tcp(SocketAddr::from(
            ([127, 0, 0, 1], port_b),
        ))],
        node_name: Some("b".into()),
        ..Default::default()
    })
    .await
    .expect("b starts");
    let a = node(
        "a",
        port_a,
        port_b,
        vec![rule("t/#", Direction::Both, 1, "", "")],
    )
    .await;
    let (on_a, on_b) = exchange(&a, &b).await;
    assert_eq!(on_a, vec!["t/from-a", "t/from-b"], "each once on a");
    assert_eq!(on_b, vec!["t/from-a", "t/from-b"], "each once on b");
    a.shutdown().await;
    b.shutdown().await;
}

/// Adding and removing a bridge by reload touches nobody else: a publisher under load
/// stays connected, the other bridge keeps its link; an invalid bridge is refused with its
/// name and key, and the running set stays.
#[tokio::test]
async fn reload_adds_and_removes_bridges_under_load() {
    let dir = temp("reload");
    let remote = Mosquitto::start(&dir, 0, "");
    let first = bridge(
        "first",
        &remote.address(),
        vec![rule("a/#", Direction::Out, 1, "", "one/")],
    );
    let second = bridge(
        "second",
        &remote.address(),
        vec![rule("a/#", Direction::Out, 1, "", "two/")],
    );
    let base = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        bridges: vec![first.clone()],
        ..Default::default()
    };
    let handle = mqtt_broker::Broker::start(base.clone()).await.unwrap();
    wait_state(&handle, "first", "connected").await;
    let (mut cloud_sub, _) = RawClient::connect(remote.addr(), "cloud-sub", true).await;
    cloud_sub
        .subscribe(
            1,
            &[("one/#", QoS::AtLeastOnce), ("two/#", QoS::AtLeastOnce)],
        )
        .await;

    // Load: a publisher that must never be disconnected.
    let addr = handle.local_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut c, _) = RawClient::connect(addr, "loader", true).await;
            let mut pid = 0u16;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                pid = pid % 60000 + 1;
                c.send(&publish("load/x", b"x", QoS::AtLeastOnce, Some(pid), false))
                    .await;
                match c.recv().await {
                    Some(Packet::PubAck(p)) => assert_eq!(p, pid),
                    other => panic!("loader lost its connection: {other:?}"),
                }
            }
            pid
        })
    };

    let mut events = handle.events();
    let mut with_both = base.clone();
    with_both.bridges.push(second.clone());
    handle.reload(with_both).await.expect("adding a bridge");
    wait_state(&handle, "second", "connected").await;
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(mqtt_broker::BrokerEvent::BridgeState {
                name, connected, ..
            }) = events.recv().await
            {
                return (name, connected);
            }
        }
    })
    .await
    .expect("a BridgeState event");
    assert_eq!((&*event.0, event.1), ("second", true));
    let (mut local_pub, _) = RawClient::connect(addr, "dev", true).await;
    publish_acked(&mut local_pub, "a/1", b"x", QoS::AtLeastOnce, 1).await;
    let mut got: Vec<String> = receive(&mut cloud_sub, 2, Duration::from_secs(5))
        .await
        .iter()
        .map(|p| p.topic.to_string())
        .collect();
    got.sort();
    assert_eq!(got, vec!["one/a/1", "two/a/1"]);

    let mut invalid = base.clone();
    invalid.bridges.push(second.clone());
    invalid.bridges[1].topics[0].qos = 3;
    let err = handle.reload(invalid).await.expect_err("qos 3 is refused");
    assert!(
        err.to_string()
            .contains("bridges[1] (second).topics[0].qos"),
        "{err}"
    );
    assert_eq!(
        summary(&handle, "second").state,
        "connected",
        "running set kept"
    );

    handle
        .reload(base.clone())
        .await
        .expect("removing a bridge");
    assert!(handle.bridges().iter().all(|b| b.name != "second"));
    publish_acked(&mut local_pub, "a/2", b"x", QoS::AtLeastOnce, 2).await;
    let got = receive(&mut cloud_sub, 2, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1, "only the first bridge forwards now");
    assert_eq!(&*got[0].topic, "one/a/2");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.expect("the loader was never disconnected");
    assert!(sent > 0);
    assert_eq!(
        summary(&handle, "first").reconnects,
        0,
        "the first link was not touched"
    );
    handle.shutdown().await;
}

/// The bridge is a client of the hook chain: the ACL for its user name limits what it
/// carries, both ways (here it may not read `secret/#`, which stays local, nor publish
/// `cmd/admin/#` here).
#[tokio::test]
async fn the_acl_limits_what_a_bridge_carries() {
    let dir = temp("acl");
    let remote = Mosquitto::start(&dir, 0, "");
    let mut b = bridge(
        "cloud",
        &remote.address(),
        vec![
            rule("open/#", Direction::Out, 1, "", "edge/"),
            rule("secret/#", Direction::Out, 1, "", "edge/"),
            rule("cmd/#", Direction::In, 1, "", "edge/"),
        ],
    );
    b.local_username = Some("bridge".into());
    let handle = start_broker(|c| {
        c.bridges = vec![b];
        c.security.acl = serde_yaml_ng::from_str(
            "- {deny: subscribe, topic: \"secret/#\", user: bridge}\n- {deny: publish, topic: \"cmd/admin/#\", user: bridge}\n",
        )
        .expect("acl rules");
        c.security.acl_default = Some(mqtt_broker::config::AclDefault::Allow);
    })
    .await;
    wait_state(&handle, "cloud", "connected").await;
    let (mut cloud_sub, _) = RawClient::connect(remote.addr(), "cloud-sub", true).await;
    cloud_sub
        .subscribe(1, &[("edge/#", QoS::AtLeastOnce)])
        .await;
    let (mut dev, _) = RawClient::connect(handle.local_addr(), "dev", true).await;
    dev.subscribe(1, &[("cmd/#", QoS::AtLeastOnce)]).await;
    publish_acked(&mut dev, "secret/key", b"k", QoS::AtLeastOnce, 1).await;
    publish_acked(&mut dev, "open/t", b"t", QoS::AtLeastOnce, 2).await;
    let got = receive(&mut cloud_sub, 2, Duration::from_secs(2)).await;
    let topics: Vec<&str> = got.iter().map(|p| &*p.topic).collect();
    assert_eq!(
        topics,
        vec!["edge/open/t"],
        "{:?}",
        summary(&handle, "cloud")
    );
    assert!(
        summary(&handle, "cloud")
            .last_error
            .is_some_and(|e| e.contains("refused some of the bridge's subscriptions")),
        "the refused subscription is reported"
    );

    let (mut cloud_pub, _) = RawClient::connect(remote.addr(), "cloud-pub", true).await;
    publish_acked(
        &mut cloud_pub,
        "edge/cmd/admin/reboot",
        b"now",
        QoS::AtLeastOnce,
        1,
    )
    .await;
    publish_acked(&mut cloud_pub, "edge/cmd/light", b"on", QoS::AtLeastOnce, 2).await;
    let got = receive(&mut dev, 2, Duration::from_secs(2)).await;
    let topics: Vec<&str> = got.iter().map(|p| &*p.topic).collect();
    assert_eq!(topics, vec!["cmd/light"]);
    handle.shutdown().await;
}

/// The README's edge-to-cloud example, as shipped (`config/edge-to-cloud.yaml`: the sensor
/// bridge plugin and a TLS bridge), against Mosquitto with the example certificates on a
/// free port: a raw reading published at the edge arrives at the cloud as the plugin's
/// JSON, the raw reading stays local, and a command comes back.
#[tokio::test]
async fn the_edge_to_cloud_example_forwards_the_sensor_bridges_json() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let plugin = root.join("plugins/sensor-bridge/sensor-bridge.wasm");
    assert!(
        plugin.is_file(),
        "{} is missing: build the example plugins with `bash .ci/plugins.sh`",
        plugin.display()
    );
    let certs = root.join("config/certs");
    let remote = Mosquitto::start(
        &temp("edge-cloud"),
        0,
        &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            certs.join("example-ca.pem").display(),
            certs.join("example-server.pem").display(),
            certs.join("example-server.key").display()
        ),
    );
    let mut config =
        Config::load(&root.join("config/edge-to-cloud.yaml")).expect("the example loads");
    // Free ports instead of 1883 and 8883; everything else as shipped.
    config.listeners = vec![BrokerHandle::loopback_listener()];
    config.admin.enabled = false;
    config.bridges[0].addresses = vec![remote.address()];
    config.bridges[0].reconnect_min = ConfigDuration::millis(100);
    let handle = mqtt_broker::Broker::start(config)
        .await
        .expect("the example starts");
    wait_state(&handle, "cloud", "connected").await;

    let tls = mqtt_broker::transport::tls::client_config(
        &BridgeTls {
            ca_file: Some(certs.join("example-ca.pem")),
            ..Default::default()
        },
        "test",
    )
    .expect("client TLS config");
    let stream = tls_stream(remote.addr(), tls)
        .await
        .expect("TLS to mosquitto");
    let (mut cloud, _) = RawClient::connect_over(stream, connect_packet("cloud-app", true)).await;
    cloud.subscribe(1, &[("site/#", QoS::AtLeastOnce)]).await;

    let (mut device, _) = RawClient::connect(handle.local_addr(), "aloys", true).await;
    device.subscribe(1, &[("cmd/#", QoS::AtLeastOnce)]).await;
    publish_acked(
        &mut device,
        "sensors/aloys/temperature",
        b"25.54",
        QoS::AtLeastOnce,
        1,
    )
    .await;
    let got = receive(&mut cloud, 2, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1, "only the JSON goes to the cloud: {got:?}");
    assert_eq!(&*got[0].topic, "site/edge-1/home/aloys/temperature");
    let json: serde_json::Value = serde_json::from_slice(&got[0].payload).expect("JSON");
    assert_eq!(json["device"], "aloys");
    assert_eq!(json["temperature"], 25.5);
    assert_eq!(json["unit"], "C");

    let (mut operator, _) = {
        let tls = mqtt_broker::transport::tls::client_config(
            &BridgeTls {
                ca_file: Some(certs.join("example-ca.pem")),
                ..Default::default()
            },
            "test",
        )
        .expect("client TLS config");
        let stream = tls_stream(remote.addr(), tls)
            .await
            .expect("TLS to mosquitto");
        RawClient::connect_over(stream, connect_packet("operator", true)).await
    };
    publish_acked(
        &mut operator,
        "site/edge-1/cmd/aloys/led",
        b"on",
        QoS::AtLeastOnce,
        1,
    )
    .await;
    let got = receive(&mut device, 1, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&*got[0].topic, "cmd/aloys/led");
    handle.shutdown().await;
}

/// A bridge carries a whole fleet's messages: the per-client publish rate does not throttle
/// what it brings in, and its session queues up to its own `queue_max` (not the per-client
/// `performance.message_queue_limit`) while the remote is down.
#[tokio::test]
async fn a_bridge_is_not_limited_like_one_device() {
    let dir = temp("limits");
    let mut remote = Mosquitto::start(&dir, 0, "");
    let mut b = bridge(
        "cloud",
        &remote.address(),
        vec![
            rule("cmd/#", Direction::In, 1, "", "edge/"),
            rule("data/#", Direction::Out, 1, "", "edge/"),
        ],
    );
    b.queue_max = 500;
    let mut config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        bridges: vec![b],
        ..Default::default()
    };
    config.limits.publish_rate = 5;
    let handle = mqtt_broker::Broker::start(config.clone()).await.unwrap();
    wait_state(&handle, "cloud", "connected").await;
    let (mut dev, _) = RawClient::connect(handle.local_addr(), "dev", true).await;
    dev.subscribe(1, &[("cmd/#", QoS::AtLeastOnce)]).await;
    let (mut cloud_pub, _) = RawClient::connect(remote.addr(), "cloud-pub", true).await;
    let started = Instant::now();
    for i in 0..100u16 {
        publish_acked(
            &mut cloud_pub,
            "edge/cmd/x",
            i.to_string().as_bytes(),
            QoS::AtLeastOnce,
            i + 1,
        )
        .await;
    }
    let got = receive(&mut dev, 100, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 100);
    // At 5 messages/s the hundred would take 19 s.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Devices may publish freely now; each session but the bridge's queues at most 70.
    config.limits.publish_rate = 0;
    config.performance.message_queue_limit = 70;
    handle.reload(config).await.expect("reload");
    remote.stop();
    wait_state(&handle, "cloud", "connecting").await;
    let (mut meter, _) = RawClient::connect(handle.local_addr(), "meter", true).await;
    for i in 0..100u16 {
        publish_acked(
            &mut meter,
            "data/x",
            i.to_string().as_bytes(),
            QoS::AtLeastOnce,
            i + 1,
        )
        .await;
    }
    // 20 held by the bridge (max_inflight) and 80 queued in its session: over 70.
    let s = summary(&handle, "cloud");
    assert_eq!(s.queue_depth, 100, "{s:?}");
    handle.shutdown().await;
}

/// Mosquitto bridging *into* this broker (`connection` with `topic t/# both`, its default
/// `try_private true`): the 0x84 bridge flag is accepted, so nothing Mosquitto's bridge
/// publishes here is sent back to it, and each message arrives once on each broker.
#[tokio::test]
async fn mosquitto_bridging_into_this_broker_is_not_echoed() {
    let handle = start_broker(|_| {}).await;
    let dir = temp("mosq-into-us");
    let remote = Mosquitto::start(
        &dir,
        0,
        &format!(
            "connection to-ours\naddress {}\ntopic t/# both 1\nrestart_timeout 1\n",
            handle.local_addr()
        ),
    );
    // Mosquitto's bridge is up once it holds its subscription here.
    let deadline = Instant::now() + Duration::from_secs(15);
    while handle.stats().subscriptions.total < 1 {
        assert!(
            Instant::now() < deadline,
            "Mosquitto's bridge never subscribed here"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (clients, _) = {
        let (total, list) = mqtt_broker::core::control::Control::clients(&handle, 0, 10);
        (list, total)
    };
    assert!(clients.iter().any(|c| c.protocol == "3.1.1"), "{clients:?}");

    let (mut ours, _) = RawClient::connect(handle.local_addr(), "ours-sub", true).await;
    ours.subscribe(1, &[("t/#", QoS::AtLeastOnce)]).await;
    let (mut theirs, _) = RawClient::connect(remote.addr(), "theirs-sub", true).await;
    theirs.subscribe(1, &[("t/#", QoS::AtLeastOnce)]).await;
    let (mut pub_theirs, _) = RawClient::connect(remote.addr(), "theirs-pub", true).await;
    let (mut pub_ours, _) = RawClient::connect(handle.local_addr(), "ours-pub", true).await;
    publish_acked(
        &mut pub_theirs,
        "t/from-mosquitto",
        b"1",
        QoS::AtLeastOnce,
        1,
    )
    .await;
    publish_acked(&mut pub_ours, "t/from-ours", b"2", QoS::AtLeastOnce, 1).await;
    assert_eq!(
        sorted_topics(receive(&mut ours, 10, Duration::from_secs(2)).await),
        vec!["t/from-mosquitto", "t/from-ours"],
        "each once here"
    );
    assert_eq!(
        sorted_topics(receive(&mut theirs, 10, Duration::from_secs(2)).await),
        vec!["t/from-mosquitto", "t/from-ours"],
        "each once on Mosquitto"
    );
    handle.shutdown().await;
}

/// An MQTT 5 bridge to Mosquitto: both directions, and a message's MQTT 5 properties (user
/// properties, content type) arrive at the remote's MQTT 5 subscriber, with the path this
/// broker adds.
#[tokio::test]
async fn mqtt5_bridge_to_mosquitto_carries_properties() {
    let dir = temp("v5");
    let remote = Mosquitto::start(&dir, 0, "");
    let mut b = bridge(
        "cloud",
        &remote.address(),
        vec![
            rule("up/#", Direction::Out, 1, "", "edge/"),
            rule("down/#", Direction::In, 1, "", "edge/"),
        ],
    );
    b.protocol = BridgeProtocol::V5;
    let handle = start_broker(|c| {
        c.bridges = vec![b];
        c.node_name = Some("edge-9".into());
    })
    .await;
    wait_state(&handle, "cloud", "connected").await;

    let v5 = |id: &str| {
        let mut c = connect_packet(id, true);
        c.protocol = ProtocolLevel::V5;
        c
    };
    let (mut cloud, ack) = RawClient::connect_with(remote.addr(), v5("cloud-app")).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    cloud.subscribe(1, &[("edge/#", QoS::AtLeastOnce)]).await;
    let (mut dev, _) = RawClient::connect_with(handle.local_addr(), v5("dev")).await;
    dev.subscribe(1, &[("down/#", QoS::AtLeastOnce)]).await;

    let props = Properties {
        content_type: Some("application/json".into()),
        user_properties: vec![("trace".into(), "abc".into())],
        ..Properties::default()
    };
    dev.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "up/t".into(),
        pid: Some(1),
        payload: bytes::Bytes::from_static(b"{}"),
        properties: Some(std::sync::Arc::new(props)),
    }))
    .await;
    let got = receive(&mut cloud, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&*got[0].topic, "edge/up/t");
    let p = got[0]
        .properties
        .as_deref()
        .expect("MQTT 5 properties at the remote");
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    let users: Vec<(String, String)> = p
        .user_properties
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        users,
        vec![
            ("trace".to_string(), "abc".to_string()),
            ("mqtt-broker-path".to_string(), "edge-9".to_string())
        ]
    );

    let (mut cloud_pub, _) = RawClient::connect(remote.addr(), "cloud-pub", true).await;
    publish_acked(&mut cloud_pub, "edge/down/led", b"on", QoS::AtLeastOnce, 2).await;
    let got = receive(&mut dev, 2, Duration::from_secs(3)).await;
    let topics: Vec<&str> = got.iter().map(|p| &*p.topic).collect();
    assert_eq!(topics, vec!["down/led"]);
    handle.shutdown().await;
}

/// Mosquitto with `max_packet_size 200` announces it to MQTT 5 clients: the bridge drops a
/// larger message (counted as `too_large`) instead of being disconnected for it, and what
/// follows goes through on the same link.
#[tokio::test]
async fn a_message_too_large_for_the_remote_is_dropped_not_retried() {
    let dir = temp("too-large");
    let remote = Mosquitto::start(&dir, 0, "max_packet_size 200\n");
    let mut b = bridge(
        "cloud",
        &remote.address(),
        vec![rule("up/#", Direction::Out, 1, "", "edge/")],
    );
    b.protocol = BridgeProtocol::V5;
    let handle = start_broker(|c| c.bridges = vec![b]).await;
    wait_state(&handle, "cloud", "connected").await;
    let (mut cloud, _) = RawClient::connect(remote.addr(), "cloud-app", true).await;
    cloud.subscribe(1, &[("edge/#", QoS::AtLeastOnce)]).await;
    let (mut dev, _) = RawClient::connect(handle.local_addr(), "dev", true).await;
    publish_acked(&mut dev, "up/big", &[b'x'; 500], QoS::AtLeastOnce, 1).await;
    publish_acked(&mut dev, "up/small", b"ok", QoS::AtLeastOnce, 2).await;
    let got = receive(&mut cloud, 2, Duration::from_secs(2)).await;
    let topics: Vec<&str> = got.iter().map(|p| &*p.topic).collect();
    assert_eq!(topics, vec!["edge/up/small"]);
    let s = summary(&handle, "cloud");
    assert_eq!(s.dropped["too_large"], 1, "{s:?}");
    assert_eq!(s.reconnects, 0, "the link was never dropped: {s:?}");
    handle.shutdown().await;
}
