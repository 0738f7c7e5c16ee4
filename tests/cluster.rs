//! Cluster mode over NATS JetStream (src/cluster), end to end: broker nodes started in
//! process against real `nats-server` processes (tests/common/nats.rs), MQTT clients over
//! real sockets. What crosses nodes (QoS 0 over core NATS, QoS 1/2 through the stream,
//! retained through the bucket), what a node does when NATS is partly or wholly gone, and
//! how the `cluster:` section is checked and reloaded.
//!
//! Every wait is bounded; waits that cross JetStream leader elections are generous
//! ([`ELECTION_WAIT`]), the others short.

mod common;

use common::nats::{cluster_config, NatsCluster};
use common::*;
use mqtt_broker::config::{ClusterConfig, ConfigDuration};
use mqtt_broker::protocol::*;
use mqtt_broker::BrokerHandle;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bound on what needs JetStream to elect a new leader (NATS raft followers wait out an
/// election timeout of several seconds first) or a NATS client to reconnect.
const ELECTION_WAIT: Duration = Duration::from_secs(25);

/// How long a node takes at most to see its NATS link go or come back in these tests.
const LINK_WAIT: Duration = Duration::from_secs(10);

/// Runs a test body on its own multi-threaded runtime (2 workers, as the machine has 2
/// cores), and bounds the runtime's shutdown: a broker whose workers are stuck (a deadlock)
/// fails its test with the panic that noticed it instead of hanging the test binary in the
/// runtime's drop.
fn run(test: impl std::future::Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test)));
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A broker node named `name` in the cluster `cluster`.
async fn start_node(name: &str, cluster: ClusterConfig) -> BrokerHandle {
    common::nats::start_node(name, cluster, |_| {}).await
}

/// An MQTT 5 CONNECT with Clean Start.
fn connect5(client_id: &str) -> Connect {
    Connect {
        protocol: ProtocolLevel::V5,
        ..connect_packet(client_id, true)
    }
}

/// Connects a 3.1.1 client with a clean session and subscribes `filters` (asserting the
/// granted QoS are the requested ones).
async fn subscriber(node: &BrokerHandle, id: &str, filters: &[(&str, QoS)]) -> RawClient {
    // Keep-alive off: a subscriber may wait out a JetStream election without a PINGREQ.
    let connect = Connect {
        keep_alive: 0,
        ..connect_packet(id, true)
    };
    let (mut c, ack) = try_connect(node.local_addr(), connect, ELECTION_WAIT)
        .await
        .unwrap_or_else(|e| panic!("CONNECT of {id}: {e}"));
    assert_eq!(ack.code, ConnectReturnCode::Accepted, "CONNACK of {id}");
    let codes = c.subscribe(1, filters).await;
    let want: Vec<SubAckCode> = filters
        .iter()
        .map(|(_, q)| SubAckCode::Granted(*q))
        .collect();
    assert_eq!(codes, want, "SUBACK of {id}");
    c
}

/// Plays the client's part of an incoming flow (PUBACK, PUBREC, PUBCOMP); returns the
/// PUBLISH when `p` is one. Panics on anything a subscriber should not get.
async fn answer(c: &mut RawClient, p: Packet) -> Option<Publish> {
    match p {
        Packet::Publish(p) => {
            match (p.qos, p.pid) {
                (QoS::AtLeastOnce, Some(pid)) => c.send(&Packet::PubAck(pid)).await,
                (QoS::ExactlyOnce, Some(pid)) => c.send(&Packet::PubRec(pid)).await,
                _ => {}
            }
            Some(p)
        }
        Packet::PubRel(pid) => {
            c.send(&Packet::PubComp(pid)).await;
            None
        }
        other => panic!("a subscriber got {other:?}"),
    }
}

/// Receives `n` PUBLISHes (acknowledging each as a client must); panics after `within`.
async fn take(c: &mut RawClient, n: usize, within: Duration) -> Vec<Publish> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(p)) => got.extend(answer(c, p).await),
            Ok(None) => panic!(
                "connection closed after {} of {n} messages: {got:?}",
                got.len()
            ),
            Err(()) => panic!("{} of {n} messages within {within:?}: {got:?}", got.len()),
        }
    }
    got
}

/// Reads until the PUBLISH `(topic, payload)` arrives, acknowledging what comes before it
/// (a retried QoS 1 publish may be delivered twice); returns what came before. Panics
/// with `context` when it has not arrived within `within`.
async fn expect_message(
    c: &mut RawClient,
    topic: &str,
    payload: &str,
    within: Duration,
    context: &str,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + within;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(p)) => {
                if let Some(p) = answer(c, p).await {
                    let got = texts(std::slice::from_ref(&p)).remove(0);
                    if got == (topic.to_string(), payload.to_string()) {
                        return before;
                    }
                    before.push(got);
                }
            }
            Ok(None) => {
                panic!("{context}: connection closed before {topic} {payload:?}; got {before:?}")
            }
            Err(()) => panic!(
                "{context}: {topic} {payload:?} not delivered within {within:?}; got {before:?}"
            ),
        }
    }
}

/// Asserts that no PUBLISH arrives for `d` (finishing flows already begun).
async fn quiet(c: &mut RawClient, d: Duration) {
    let deadline = Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(p)) => {
                if let Some(p) = answer(c, p).await {
                    panic!("expected no message, got {p:?}");
                }
            }
            Ok(None) => panic!("connection closed while expecting silence"),
            Err(()) => return,
        }
    }
}

/// `(topic, payload)` of each message, for comparisons.
fn texts(got: &[Publish]) -> Vec<(String, String)> {
    got.iter()
        .map(|p| {
            (
                p.topic.to_string(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect()
}

/// Whether `p` acknowledges QoS 1 packet `pid` with success (3.1.1 or MQTT 5 form).
fn is_puback(p: &Packet, pid: u16) -> bool {
    match p {
        Packet::PubAck(id) => *id == pid,
        Packet::Ack(a) => a.kind == AckKind::PubAck && a.pid == pid && a.reason < 0x80,
        _ => false,
    }
}

/// Publishes at QoS 1 and asserts the PUBACK comes within `within`.
async fn publish1(c: &mut RawClient, topic: &str, payload: &[u8], pid: u16, within: Duration) {
    c.send(&publish(topic, payload, QoS::AtLeastOnce, Some(pid), false))
        .await;
    match c.recv_within(within).await {
        Ok(Some(p)) if is_puback(&p, pid) => {}
        other => panic!("expected PUBACK {pid} for {topic}, got {other:?}"),
    }
}

/// Publishes `payload` at QoS 1 on `node` until it is acknowledged, as a real client does:
/// a fresh connection per attempt (a node closes the connection of a PUBLISH it could not
/// get stored; a node between NATS servers refuses CONNECT for a moment). Panics after
/// `within`; returns the attempts it took.
async fn publish_until_acked(
    node: &BrokerHandle,
    id: &str,
    topic: &str,
    payload: &[u8],
    within: Duration,
) -> usize {
    let deadline = Instant::now() + within;
    let mut history = Vec::new();
    for attempt in 1.. {
        assert!(
            Instant::now() < deadline,
            "{topic} {payload:?} not acknowledged by {} within {within:?}: {history:?}",
            node.local_addr()
        );
        let left = deadline.saturating_duration_since(Instant::now());
        let mut c = match try_connect(node.local_addr(), connect_packet(id, true), left).await {
            Ok((c, ack)) if ack.code == ConnectReturnCode::Accepted => c,
            Ok((_, ack)) => {
                history.push(format!("CONNACK {:?}", ack.code));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                history.push(e);
                continue;
            }
        };
        c.send(&publish(topic, payload, QoS::AtLeastOnce, Some(1), false))
            .await;
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(p)) if is_puback(&p, 1) => {
                c.send(&Packet::Disconnect).await;
                return attempt;
            }
            other => history.push(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// Reads until the broker closes the connection; the packets before the close. Panics if
/// it is still open after `within`.
async fn until_closed(c: &mut RawClient, within: Duration) -> Vec<Packet> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(p)) => got.push(p),
            Ok(None) => return got,
            Err(()) => panic!("connection still open after {within:?}; received {got:?}"),
        }
    }
}

/// `GET /readyz` of the admin API at `admin`: status and body.
///
/// Over a plain blocking socket on its own thread, so that even a broker whose runtime is
/// stuck (every worker blocked) fails the test with this message instead of hanging it
/// unexplained.
async fn readyz(admin: SocketAddr) -> (u16, String) {
    admin_get(admin, "/readyz").await
}

/// Waits for the `BrokerEvent::ClusterLink` event with `state`.
async fn link_event(
    events: &mut tokio::sync::broadcast::Receiver<mqtt_broker::events::BrokerEvent>,
    state: &str,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(mqtt_broker::events::BrokerEvent::ClusterLink { state: s })) if s == state => {
                return
            }
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no cluster link event {state:?} within {within:?}"),
        }
    }
}

/// `GET path` of the admin API on its own thread (so that a stuck runtime fails the test
/// instead of hanging it): the status and the body.
async fn admin_get(admin: SocketAddr, path: &'static str) -> (u16, String) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let get = || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&admin, WAIT)?;
            s.set_read_timeout(Some(WAIT))?;
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
            s.write_all(request.as_bytes())?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        };
        let _ = tx.send(get());
    });
    let reply = match rx.recv_timeout(WAIT + Duration::from_secs(1)) {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => panic!("GET {path} of {admin}: {e} (the admin API is stuck?)"),
        Err(_) => panic!("GET {path} of {admin}: no answer within {WAIT:?}"),
    };
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path} of {admin}: not HTTP: {reply:?}"));
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// Polls `/readyz` until it answers `status`; panics after `within`.
async fn wait_readyz(admin: SocketAddr, status: u16, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let r = readyz(admin).await;
        if r.0 == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz of {admin} still {r:?} after {within:?}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Subscribes a fresh client to `filter` on `node` and returns the retained messages it is
/// sent (RETAIN set, right after the SUBACK, from the node's own store).
///
/// Copies without RETAIN are left out: a QoS 1/2 message reaches the subscribers of the
/// publisher's own node from the stream, a moment after its PUBACK, so a subscription made
/// right after the PUBACK may get it live as well as retained (reported with `eprintln!`).
async fn retained_on(node: &BrokerHandle, filter: &str) -> Vec<Publish> {
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    let id = format!("retained-probe-{}", PROBES.fetch_add(1, Ordering::Relaxed));
    let (mut c, _) = RawClient::connect(node.local_addr(), &id, true).await;
    c.subscribe(1, &[(filter, QoS::AtLeastOnce)]).await;
    let mut got = Vec::new();
    while let Ok(Some(p)) = c.recv_within(Duration::from_millis(300)).await {
        got.extend(answer(&mut c, p).await);
    }
    c.send(&Packet::Disconnect).await;
    let (retained, live): (Vec<Publish>, Vec<Publish>) = got.into_iter().partition(|p| p.retain);
    if !live.is_empty() {
        eprintln!(
            "{id} on {}: also live: {:?}",
            node.local_addr(),
            texts(&live)
        );
    }
    retained
}

/// Polls [`retained_on`] until `check` accepts what it returns; panics after `within`.
async fn wait_retained(
    node: &BrokerHandle,
    filter: &str,
    within: Duration,
    check: impl Fn(&[Publish]) -> bool,
) -> Vec<Publish> {
    let deadline = Instant::now() + within;
    loop {
        let got = retained_on(node, filter).await;
        if check(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "retained under {filter} on {} still {got:?} after {within:?}",
            node.local_addr()
        );
    }
}

/// Two nodes on a 3-server JetStream cluster with 3 replicas: a subscriber on B gets the
/// QoS 0, 1 and 2 messages published on A, each at the minimum of its QoS and the granted
/// one [MQTT-3.8.4-6], and A completes each publisher flow (PUBACK for QoS 1 [MQTT-4.3.2-2],
/// PUBREC then PUBCOMP for QoS 2 [MQTT-4.3.3-2]).
#[test]
fn qos_0_1_2_cross_nodes_at_the_granted_qos_on_a_3_server_jetstream_cluster() {
    run(async {
        let nats = NatsCluster::start(3).await;
        let cfg = cluster_config(&nats.urls(), "xqos", 3, "");
        let a = start_node("a", cfg.clone()).await;
        let b = start_node("b", cfg).await;
        let mut at2 = subscriber(&b, "at2", &[("x/#", QoS::ExactlyOnce)]).await;
        let mut at1 = subscriber(&b, "at1", &[("x/#", QoS::AtLeastOnce)]).await;
        let (mut publisher, _) = RawClient::connect(a.local_addr(), "pub", true).await;

        publish1(&mut publisher, "x/1", b"one", 1, WAIT).await;
        publisher.publish_qos2("x/2", b"two", 2).await;
        let got2 = take(&mut at2, 2, WAIT).await;
        let got1 = take(&mut at1, 2, WAIT).await;
        let qos = |got: &[Publish]| {
            got.iter()
                .map(|p| (p.topic.to_string(), p.qos))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            qos(&got2),
            [
                ("x/1".into(), QoS::AtLeastOnce),
                ("x/2".into(), QoS::ExactlyOnce)
            ]
        );
        assert_eq!(
            qos(&got1),
            [
                ("x/1".into(), QoS::AtLeastOnce),
                ("x/2".into(), QoS::AtLeastOnce)
            ]
        );
        assert_eq!(texts(&got2), texts(&got1));
        assert_eq!(got2[1].payload.as_ref(), b"two");

        // QoS 0 is at most once: B's interest may reach A's NATS server a moment after B
        // subscribed, so the publisher sends again until one copy arrives.
        let deadline = Instant::now() + WAIT;
        let first = loop {
            assert!(
                Instant::now() < deadline,
                "no QoS 0 message crossed within {WAIT:?}"
            );
            publisher
                .send(&publish("x/0", b"zero", QoS::AtMostOnce, None, false))
                .await;
            if let Ok(Some(p)) = at2.recv_within(Duration::from_millis(200)).await {
                // (Or the PUBREL of the QoS 2 flow above.)
                if let Some(p) = answer(&mut at2, p).await {
                    break p;
                }
            }
        };
        assert_eq!(
            (&*first.topic, first.qos, first.payload.as_ref()),
            ("x/0", QoS::AtMostOnce, &b"zero"[..])
        );
        let zero = take(&mut at1, 1, WAIT).await;
        assert_eq!((&*zero[0].topic, zero[0].qos), ("x/0", QoS::AtMostOnce));

        // Operations: each node reports its link, its traffic both ways, JetStream's
        // acknowledgements and the other node (alive), in the API and in the metrics.
        for (name, node, other) in [("a", &a, "b"), ("b", &b, "a")] {
            let admin = node.admin_addr().expect("admin API");
            let (status, body) = admin_get(admin, "/api/v1/cluster").await;
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(v["node"], name, "{v}");
            assert_eq!(v["link_up"], true, "{v}");
            // Only A has a publisher (each node's `$SYS` stays on it).
            let sent = v["messages_to_cluster"].as_u64();
            assert!(
                if name == "a" {
                    sent > Some(0)
                } else {
                    sent == Some(0)
                },
                "{v}"
            );
            assert!(v["messages_from_cluster"].as_u64() > Some(0), "{v}");
            let peers = v["nodes"].as_array().expect("nodes");
            assert!(
                peers
                    .iter()
                    .any(|n| n["name"] == other && n["alive"] == true),
                "{name} sees {other} alive: {v}"
            );
            let (status, metrics) = admin_get(admin, "/metrics").await;
            assert_eq!(status, 200);
            for line in [
                "mqtt_cluster_link_up 1",
                "mqtt_cluster_messages_total{direction=\"out\"}",
                "mqtt_cluster_messages_total{direction=\"in\"}",
                "mqtt_cluster_jetstream_ack_seconds_count",
                "mqtt_cluster_sessions_owned",
                "mqtt_cluster_undecodable_total 0",
            ] {
                assert!(metrics.contains(line), "{name}'s /metrics lacks {line}");
            }
            let peer_up = format!("mqtt_cluster_node_up{{node=\"{other}\"}} 1");
            assert!(
                metrics.contains(&peer_up),
                "{name}'s /metrics lacks {peer_up}"
            );
        }
        // A acknowledged its clients' QoS 1/2 messages after JetStream's acknowledgements.
        let (_, body) = admin_get(a.admin_addr().expect("admin API"), "/api/v1/cluster").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert!(v["jetstream_acks"].as_u64() >= Some(2), "{v}");
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// 200 QoS 1 messages from one publisher on A, alternating between two topics, reach a
/// subscriber on B in the order they were published (each topic is an Ordered Topic
/// [MQTT-4.6.0-6]; the cluster keeps the publisher's order across topics too, all going
/// through one stream), and A acknowledges them in order [MQTT-4.6.0-2].
#[test]
fn per_publisher_order_is_kept_across_nodes() {
    run(async {
        const N: usize = 200;
        let nats = NatsCluster::start(1).await;
        let cfg = cluster_config(&nats.urls(), "order", 1, "");
        let a = start_node("a", cfg.clone()).await;
        let b = start_node("b", cfg).await;
        let mut sub = subscriber(&b, "sub", &[("o/+", QoS::AtLeastOnce)]).await;
        let reader = tokio::spawn(async move { take(&mut sub, N, Duration::from_secs(30)).await });

        let (mut publisher, _) = RawClient::connect(a.local_addr(), "pub", true).await;
        let sent: Vec<(String, String)> = (0..N)
            .map(|i| (format!("o/{}", ["a", "b"][i % 2]), format!("m{i}")))
            .collect();
        for (i, (topic, payload)) in sent.iter().enumerate() {
            let pid = i as u16 + 1;
            publisher
                .send(&publish(
                    topic,
                    payload.as_bytes(),
                    QoS::AtLeastOnce,
                    Some(pid),
                    false,
                ))
                .await;
        }
        let mut acks = Vec::new();
        while acks.len() < N {
            match publisher.recv_within(Duration::from_secs(30)).await {
                Ok(Some(Packet::PubAck(pid))) => acks.push(pid),
                other => panic!("after {} PUBACKs: {other:?}", acks.len()),
            }
        }
        assert_eq!(acks, (1..=N as u16).collect::<Vec<_>>(), "PUBACK order");
        let got = reader.await.expect("the reader");
        assert_eq!(texts(&got), sent, "order on node B");
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// One copy per subscription match per session: a client whose subscriptions `t/#` and
/// `t/+` both match gets each message once (the broker delivers one copy per session, as
/// MQTT 5 requires [MQTT-3.3.4-2] and 3.1.1 allows), on the other node and on the
/// publisher's own node (whose QoS 0 copy must not come back from NATS, nor its QoS 1 copy
/// be delivered both locally and from the stream); two subscribers get one copy each.
#[test]
fn one_copy_per_subscriber_with_overlapping_subscriptions() {
    run(async {
        let nats = NatsCluster::start(1).await;
        let cfg = cluster_config(&nats.urls(), "copies", 1, "");
        let a = start_node("a", cfg.clone()).await;
        let b = start_node("b", cfg).await;
        let overlap = [("t/#", QoS::AtLeastOnce), ("t/+", QoS::AtLeastOnce)];
        let mut on_b = subscriber(&b, "overlap-b", &overlap).await;
        let mut on_a = subscriber(&a, "overlap-a", &overlap).await;
        let mut plain1 = subscriber(&b, "plain1", &[("t/+", QoS::AtLeastOnce)]).await;
        let mut plain2 = subscriber(&b, "plain2", &[("t/#", QoS::AtLeastOnce)]).await;
        let (mut publisher, _) = RawClient::connect(a.local_addr(), "pub", true).await;
        publisher
            .send(&publish("t/zero", b"0", QoS::AtMostOnce, None, false))
            .await;
        publish1(&mut publisher, "t/one", b"1", 1, WAIT).await;
        publisher
            .send(&publish("t/zero", b"0b", QoS::AtMostOnce, None, false))
            .await;
        publish1(&mut publisher, "t/one", b"1b", 2, WAIT).await;
        let want = [
            ("t/zero", "0"),
            ("t/one", "1"),
            ("t/zero", "0b"),
            ("t/one", "1b"),
        ];
        for (name, c) in [
            ("overlap-b", &mut on_b),
            ("overlap-a", &mut on_a),
            ("plain1", &mut plain1),
            ("plain2", &mut plain2),
        ] {
            let mut got = texts(&take(c, 4, WAIT).await);
            // QoS 0 and QoS 1 take different paths between nodes: compare as sets per QoS.
            got.sort();
            let mut want: Vec<(String, String)> = want
                .iter()
                .map(|(t, p)| (t.to_string(), p.to_string()))
                .collect();
            want.sort();
            assert_eq!(got, want, "{name}");
            quiet(c, Duration::from_millis(500)).await;
        }
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Topics that are not NATS subject tokens as they stand (empty levels, `.`, `*`, `>`,
/// spaces, `=`, UTF-8) cross nodes unchanged at QoS 0 and 1, and `+`/`#` filters on the
/// other node match them as MQTT says [MQTT-4.7.1-2, MQTT-4.7.1-3]: `+` matches an empty
/// level, and a filter with a space matches it literally.
#[test]
fn topics_nats_cannot_carry_as_is_cross_nodes_intact_and_match_wildcards() {
    run(async {
        let nats = NatsCluster::start(1).await;
        let cfg = cluster_config(&nats.urls(), "topics", 1, "");
        let a = start_node("a", cfg.clone()).await;
        let b = start_node("b", cfg).await;
        // (topic, the one filter of `specific` it must match)
        let cases = [
            ("/a//b/", "+/a/+/b/+"),
            ("dots/a.b.c", "dots/+"),
            ("star/*", "star/+"),
            ("gt/>", "gt/#"),
            ("space/a b", "space/a b"),
            ("température/é", "température/+"),
            ("eq/a=b=3D", "eq/+"),
            ("mix/.*>/ /=", "mix/+/+/+"),
            ("trailing/", "trailing/+"),
        ];
        let mut all = subscriber(&b, "all", &[("#", QoS::AtLeastOnce)]).await;
        let filters: Vec<(&str, QoS)> = cases.iter().map(|(_, f)| (*f, QoS::AtLeastOnce)).collect();
        let mut specific = subscriber(&b, "specific", &filters).await;
        let (mut publisher, _) = RawClient::connect(a.local_addr(), "pub", true).await;
        let mut sent = Vec::new();
        for (i, (topic, _)) in cases.iter().enumerate() {
            let q0 = format!("q0-{i}");
            publisher
                .send(&publish(topic, q0.as_bytes(), QoS::AtMostOnce, None, false))
                .await;
            let q1 = format!("q1-{i}");
            publish1(&mut publisher, topic, q1.as_bytes(), i as u16 + 1, WAIT).await;
            sent.push((topic.to_string(), q0));
            sent.push((topic.to_string(), q1));
        }
        sent.sort();
        for (name, c) in [("all", &mut all), ("specific", &mut specific)] {
            let mut got = texts(&take(c, sent.len(), WAIT).await);
            got.sort();
            assert_eq!(got, sent, "{name}");
            quiet(c, Duration::from_millis(300)).await;
        }
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Retained messages live in the cluster: retained on A (QoS 1, and QoS 0), a new
/// subscriber on B is sent it with RETAIN set [MQTT-3.3.1-6, MQTT-3.3.1-8]; a node started
/// afterwards has it as soon as it listens; an empty retained PUBLISH on B deletes it
/// [MQTT-3.3.1-10, MQTT-3.3.1-11] for new subscribers everywhere. The publisher's node
/// shows its own write as soon as it acknowledged it. (Only copies with RETAIN count: see
/// [`retained_on`] for the live copy a subscription made right after a PUBACK may get.)
#[test]
fn retained_messages_are_shared_by_every_node_and_deleted_everywhere() {
    run(async {
        let nats = NatsCluster::start(1).await;
        let cfg = cluster_config(&nats.urls(), "retained", 1, "");
        let a = start_node("a", cfg.clone()).await;
        let b = start_node("b", cfg.clone()).await;
        let (mut pa, _) = RawClient::connect(a.local_addr(), "pub-a", true).await;
        pa.send(&publish("r/t", b"v1", QoS::AtLeastOnce, Some(1), true))
            .await;
        assert_eq!(pa.recv().await, Some(Packet::PubAck(1)));
        pa.send(&publish("r/q0", b"zero", QoS::AtMostOnce, None, true))
            .await;

        let retained = |got: &[Publish]| {
            let mut v: Vec<(String, String, bool)> = got
                .iter()
                .map(|p| {
                    (
                        p.topic.to_string(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                        p.retain,
                    )
                })
                .collect();
            v.sort();
            v
        };
        let both = vec![
            ("r/q0".to_string(), "zero".to_string(), true),
            ("r/t".to_string(), "v1".to_string(), true),
        ];
        // Read-your-write on the publisher's node for the acknowledged (QoS 1) one.
        let on_a = retained(&retained_on(&a, "r/t").await);
        assert_eq!(
            on_a,
            vec![("r/t".into(), "v1".into(), true)],
            "on A right after the PUBACK"
        );
        let on_b = wait_retained(&b, "r/#", WAIT, |got| retained(got) == both).await;
        assert_eq!(retained(&on_b), both);

        // A node started now loads the bucket before it opens its listeners.
        let c = start_node("c", cfg).await;
        assert_eq!(
            retained(&retained_on(&c, "r/#").await),
            both,
            "on C right after its start"
        );

        let (mut pb, _) = RawClient::connect(b.local_addr(), "pub-b", true).await;
        pb.send(&publish("r/t", b"", QoS::AtLeastOnce, Some(1), true))
            .await;
        assert_eq!(pb.recv().await, Some(Packet::PubAck(1)));
        let left = vec![("r/q0".to_string(), "zero".to_string(), true)];
        assert_eq!(
            retained(&retained_on(&b, "r/#").await),
            left,
            "on B right after the PUBACK"
        );
        for (name, node) in [("A", &a), ("C", &c)] {
            let got = wait_retained(node, "r/#", WAIT, |got| retained(got) == left).await;
            assert_eq!(retained(&got), left, "on {name}");
        }
        for n in [a, b, c] {
            n.shutdown().await;
        }
    });
}

/// One NATS server of three killed, the one that holds the nodes' read positions (each
/// node reads the stream through one consumer, which lives on one server; often the
/// stream's leader too): both nodes, connected to all three servers, keep serving QoS 1
/// both ways within [`ELECTION_WAIT`] (publishers retry, as real clients do, until
/// acknowledged; subscribers keep their connections).
#[test]
fn one_nats_server_of_three_killed_both_nodes_keep_serving_qos1() {
    run(async {
        let mut nats = NatsCluster::start(3).await;
        let cfg = cluster_config(&nats.urls(), "survive", 3, "publish_timeout: 2s\n");
        let a = start_node("a", cfg.clone()).await;
        let b = start_node("b", cfg).await;
        let mut sub_a = subscriber(&a, "sub-a", &[("k/#", QoS::AtLeastOnce)]).await;
        let mut sub_b = subscriber(&b, "sub-b", &[("k/#", QoS::AtLeastOnce)]).await;
        publish_until_acked(&a, "pub-a", "k/before", b"a0", WAIT).await;
        assert_eq!(
            texts(&take(&mut sub_b, 1, WAIT).await),
            [("k/before".into(), "a0".into())]
        );
        assert_eq!(
            texts(&take(&mut sub_a, 1, WAIT).await),
            [("k/before".into(), "a0".into())]
        );

        // The server to kill: the one holding most of the nodes' read positions (each
        // node's consumer of the stream lives on one server), else the stream's leader.
        // Server names are n1, n2, n3.
        let client = async_nats::connect(nats.url(0))
            .await
            .expect("connect to NATS");
        let stream = async_nats::jetstream::new(client)
            .get_stream("survive-messages")
            .await
            .expect("the cluster's stream");
        let mut hosts = std::collections::BTreeMap::<String, usize>::new();
        let mut consumers = stream.consumers();
        while let Some(c) = futures_util::StreamExt::next(&mut consumers).await {
            let c = c.expect("consumer info");
            if let Some(host) = c.cluster.and_then(|c| c.leader) {
                *hosts.entry(host).or_default() += 1;
            }
        }
        assert!(
            hosts.values().sum::<usize>() >= 2,
            "each node reads the stream through a consumer: {hosts:?}"
        );
        let victim = hosts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(host, _)| host.clone())
            .expect("a consumer host");
        let leader = stream
            .get_info()
            .await
            .expect("stream info")
            .cluster
            .and_then(|c| c.leader);
        eprintln!(
            "consumers of the stream on {hosts:?}, stream leader {leader:?}: killing {victim}"
        );
        let victim = victim
            .trim_start_matches('n')
            .parse::<usize>()
            .expect("server names are n<i>")
            - 1;
        nats.kill(victim);
        let killed = Instant::now();

        let tries_a = publish_until_acked(&a, "pub-a", "k/from-a", b"a1", ELECTION_WAIT).await;
        let acked_a = killed.elapsed();
        expect_message(
            &mut sub_b,
            "k/from-a",
            "a1",
            ELECTION_WAIT,
            &format!(
                "subscriber on B, message stored by A {acked_a:.1?} after n{} was killed",
                victim + 1
            ),
        )
        .await;
        let tries_b = publish_until_acked(&b, "pub-b", "k/from-b", b"b1", ELECTION_WAIT).await;
        let acked_b = killed.elapsed();
        let before = expect_message(
            &mut sub_a,
            "k/from-b",
            "b1",
            ELECTION_WAIT,
            &format!(
                "subscriber on A, message stored by B {acked_b:.1?} after n{} was killed",
                victim + 1
            ),
        )
        .await;
        // Only copies of A's own message may come first (a retried publish).
        assert!(
            before.iter().all(|m| m.0 == "k/from-a"),
            "unexpected messages on A: {before:?}"
        );
        eprintln!(
            "killed n{}: A acknowledged after {tries_a} attempt(s), B after {tries_b}; \
             both ways in {:.1?}",
            victim + 1,
            killed.elapsed()
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// A node cut off from NATS (its only server killed; the servers do not advertise each
/// other, so it cannot reconnect elsewhere): within seconds its `/readyz` answers 503 and
/// it refuses new connections (CONNACK 0x03 to 3.1.1 [MQTT-3.2.2-6 return code 3], 0x88
/// to MQTT 5), while the node connected to the two other servers keeps serving; after
/// `cluster.isolation_timeout` the cut-off node disconnects its clients (MQTT 5: DISCONNECT
/// 0x9C, use another server); once its server is back it is ready and serving again.
#[test]
fn a_node_cut_off_from_nats_refuses_clients_and_disconnects_them_until_nats_is_back() {
    run(async {
        const ISOLATION: Duration = Duration::from_secs(1);
        let mut nats = NatsCluster::start_without_advertising(3).await;
        let urls = nats.urls();
        let extra = "publish_timeout: 2s\nisolation_timeout: 1s\n";
        let a = start_node("a", cluster_config(&urls[..1], "cutoff", 3, extra)).await;
        let b = start_node("b", cluster_config(&urls[1..], "cutoff", 3, extra)).await;
        let admin_a = a.admin_addr().expect("admin API of A");
        let admin_b = b.admin_addr().expect("admin API of B");
        assert_eq!(readyz(admin_a).await.0, 200);
        let mut sub_b = subscriber(&b, "sub-b", &[("c/#", QoS::AtLeastOnce)]).await;
        publish_until_acked(&a, "pub-a", "c/before", b"x", WAIT).await;
        assert_eq!(
            texts(&take(&mut sub_b, 1, WAIT).await),
            [("c/before".into(), "x".into())]
        );
        let (mut v5, ack) = RawClient::connect_with(a.local_addr(), connect5("v5-on-a")).await;
        assert_eq!(ack.v5_reason(), reason::SUCCESS);
        let (mut v311, _) = RawClient::connect(a.local_addr(), "v311-on-a", true).await;

        let mut events = a.events();
        nats.kill(0);
        let killed = Instant::now();
        let (_, body) = wait_readyz(admin_a, 503, LINK_WAIT).await;
        assert!(body.contains("cluster"), "/readyz body: {body:?}");
        link_event(&mut events, "down", LINK_WAIT).await;
        let (_, ack) =
            RawClient::connect_with(a.local_addr(), connect_packet("new-311", true)).await;
        assert_eq!(
            ack.code,
            ConnectReturnCode::ServerUnavailable,
            "3.1.1 CONNECT to A"
        );
        let (_, ack) = RawClient::connect_with(a.local_addr(), connect5("new-v5")).await;
        assert_eq!(
            ack.v5_reason(),
            reason::SERVER_UNAVAILABLE,
            "MQTT 5 CONNECT to A: {ack:?}"
        );

        // Clients already connected are sent away after the isolation timeout.
        let got = until_closed(&mut v5, ISOLATION + LINK_WAIT).await;
        let closed_after = killed.elapsed();
        assert!(
        got.iter().any(|p| matches!(p, Packet::DisconnectWithReason(d) if d.reason == reason::USE_ANOTHER_SERVER)),
        "MQTT 5 client of A got {got:?} before the close, expected DISCONNECT 0x9C"
    );
        assert!(
            closed_after >= ISOLATION,
            "disconnected {closed_after:?} after the loss, before isolation_timeout {ISOLATION:?}"
        );
        until_closed(&mut v311, WAIT).await;
        link_event(&mut events, "isolated", WAIT).await;

        // B, on the two other servers, still serves (once JetStream re-elected the leaders
        // n1 held, during which B is not ready either).
        wait_readyz(admin_b, 200, ELECTION_WAIT).await;
        publish_until_acked(&b, "pub-b", "c/during", b"y", ELECTION_WAIT).await;
        expect_message(
            &mut sub_b,
            "c/during",
            "y",
            ELECTION_WAIT,
            "subscriber on B while A is cut off",
        )
        .await;

        nats.restart(0).await;
        wait_readyz(admin_a, 200, ELECTION_WAIT).await;
        link_event(&mut events, "up", WAIT).await;
        let (mut back, ack) =
            try_connect(a.local_addr(), connect_packet("back", true), ELECTION_WAIT)
                .await
                .unwrap_or_else(|e| panic!("CONNECT to A once NATS is back: {e}"));
        assert_eq!(
            ack.code,
            ConnectReturnCode::Accepted,
            "CONNECT to A once NATS is back"
        );
        back.send(&Packet::Disconnect).await;
        // And it routes again, both ways.
        let mut sub_a = subscriber(&a, "sub-a", &[("c/#", QoS::AtLeastOnce)]).await;
        publish_until_acked(&a, "pub-a", "c/after", b"z", ELECTION_WAIT).await;
        for (name, sub) in [("B", &mut sub_b), ("A", &mut sub_a)] {
            let before = expect_message(
                sub,
                "c/after",
                "z",
                ELECTION_WAIT,
                &format!("subscriber on {name} after A is back"),
            )
            .await;
            // (B's subscriber may get a second copy of a retried c/during first.)
            assert!(
                before.iter().all(|m| m.0 == "c/during"),
                "on {name} before c/after: {before:?}"
            );
        }
        publish_until_acked(&b, "pub-b", "c/after-b", b"w", ELECTION_WAIT).await;
        expect_message(
            &mut sub_a,
            "c/after-b",
            "w",
            ELECTION_WAIT,
            "subscriber on A, message from B, after A is back",
        )
        .await;
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// With no NATS server left, a node acknowledges nothing: a QoS 1 PUBLISH gets no PUBACK
/// and its connection is closed within `publish_timeout` + 1 s (MQTT 5: DISCONNECT 0x9C,
/// and a QoS 2 PUBLISH no PUBREC), so that the client sends it again elsewhere; the
/// message reaches no subscriber, not even on the same node.
#[test]
fn without_jetstream_no_publish_is_acknowledged_and_nothing_is_delivered() {
    run(async {
        const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
        let mut nats = NatsCluster::start(1).await;
        // Isolation much later than the publish timeout: the close below is the publish's.
        let extra = "publish_timeout: 1s\nisolation_timeout: 60s\n";
        let node = start_node("a", cluster_config(&nats.urls(), "nojs", 1, extra)).await;
        let admin = node.admin_addr().expect("admin API");
        let mut sub = subscriber(&node, "sub", &[("n/#", QoS::AtLeastOnce)]).await;
        let (mut p311, _) = RawClient::connect(node.local_addr(), "p311", true).await;
        let (mut p5, ack) = RawClient::connect_with(node.local_addr(), connect5("p5")).await;
        assert_eq!(ack.v5_reason(), reason::SUCCESS);
        publish1(&mut p311, "n/before", b"ok", 1, WAIT).await;
        assert_eq!(
            texts(&take(&mut sub, 1, WAIT).await),
            [("n/before".into(), "ok".into())]
        );

        nats.kill(0);
        wait_readyz(admin, 503, LINK_WAIT).await;
        let bound = PUBLISH_TIMEOUT + Duration::from_secs(1) + Duration::from_millis(1500);

        let sent = Instant::now();
        p311.send(&publish("n/lost", b"1", QoS::AtLeastOnce, Some(2), false))
            .await;
        let got = until_closed(&mut p311, bound).await;
        let took = sent.elapsed();
        assert!(
            !got.iter().any(|p| p.is_publish_ack()),
            "3.1.1 publisher acknowledged without JetStream: {got:?}"
        );
        assert!(got.is_empty(), "3.1.1 publisher got {got:?}");
        assert!(
            took >= PUBLISH_TIMEOUT,
            "closed after {took:?}, before publish_timeout"
        );

        p5.send(&publish("n/lost", b"2", QoS::ExactlyOnce, Some(3), false))
            .await;
        let got = until_closed(&mut p5, bound).await;
        assert!(
            !got.iter().any(|p| p.is_publish_ack()),
            "MQTT 5 publisher acknowledged without JetStream: {got:?}"
        );
        assert!(
            matches!(got.as_slice(), [Packet::DisconnectWithReason(d)] if d.reason == reason::USE_ANOTHER_SERVER),
            "MQTT 5 publisher got {got:?}, expected DISCONNECT 0x9C only"
        );
        quiet(&mut sub, Duration::from_secs(1)).await;
        node.shutdown().await;
    });
}

/// A reload that changes `cluster.replicas` (or the prefix, the servers, the node's name)
/// is refused with the key named and changes nothing, the node routing on; one that
/// changes `cluster.publish_timeout` or `cluster.isolation_timeout` is applied.
#[test]
fn reload_refuses_cluster_changes_but_the_timeouts_and_names_the_key() {
    run(async {
        let nats = NatsCluster::start(1).await;
        let cfg = cluster_config(&nats.urls(), "reload", 1, "");
        let a = start_node("a", cfg.clone()).await;
        let b = start_node("b", cfg).await;
        let mut sub = subscriber(&b, "sub", &[("l/#", QoS::AtLeastOnce)]).await;
        let (mut publisher, _) = RawClient::connect(a.local_addr(), "pub", true).await;
        let generation = a.generation();
        let running = a.config();

        type Change = fn(&mut mqtt_broker::config::Config);
        let refused: [(&str, Change); 4] = [
            ("cluster.replicas", |c| {
                c.cluster.as_mut().unwrap().replicas = 3
            }),
            ("cluster.prefix", |c| {
                c.cluster.as_mut().unwrap().prefix = "other".into()
            }),
            ("cluster.servers", |c| {
                c.cluster
                    .as_mut()
                    .unwrap()
                    .servers
                    .push("nats://127.0.0.1:1".into())
            }),
            ("node_name", |c| c.node_name = Some("renamed".into())),
        ];
        for (i, (key, change)) in refused.iter().enumerate() {
            let mut config = running.clone();
            change(&mut config);
            let err = a.reload(config).await.expect_err(key).to_string();
            assert!(err.contains(key), "refusal of a {key} change: {err}");
            assert_eq!(a.generation(), generation, "{key} refused, nothing applied");
            assert_eq!(a.config(), running);
            let payload = format!("after-{key}");
            publish1(
                &mut publisher,
                "l/x",
                payload.as_bytes(),
                i as u16 + 1,
                WAIT,
            )
            .await;
            let got = take(&mut sub, 1, WAIT).await;
            assert_eq!(texts(&got), [("l/x".to_string(), payload)]);
        }

        let mut config = running.clone();
        let c = config.cluster.as_mut().unwrap();
        c.publish_timeout = ConfigDuration::secs(9);
        c.isolation_timeout = ConfigDuration::secs(7);
        let applied = a.reload(config).await.expect("timeouts change live");
        assert_eq!(applied, generation + 1);
        let now = a.config().cluster.expect("still a cluster node");
        assert_eq!(
            (now.publish_timeout, now.isolation_timeout),
            (ConfigDuration::secs(9), ConfigDuration::secs(7))
        );
        publish1(&mut publisher, "l/x", b"after-timeouts", 10, WAIT).await;
        assert_eq!(
            texts(&take(&mut sub, 1, WAIT).await),
            [("l/x".into(), "after-timeouts".into())]
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// `--check-config` refuses an invalid `cluster:` section with the key named (exit 1), and
/// accepts a valid one without reaching NATS (nothing listens at the URL).
#[test]
fn check_config_names_the_invalid_cluster_key() {
    let dir = std::env::temp_dir().join(format!("mqtt-cluster-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, yaml: &str| {
        let path = dir.join(name);
        std::fs::write(&path, yaml).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-broker"))
            .arg("--check-config")
            .arg(&path)
            .output()
            .expect("run mqtt-broker --check-config")
    };
    for (name, section, key) in [
        (
            "no-servers.yaml",
            "servers: []\n  prefix: mqtt",
            "cluster.servers",
        ),
        (
            "replicas.yaml",
            "servers: [\"nats://127.0.0.1:4222\"]\n  replicas: 7",
            "cluster.replicas",
        ),
        (
            "prefix.yaml",
            "servers: [\"nats://127.0.0.1:4222\"]\n  prefix: \"a.b\"",
            "cluster.prefix",
        ),
    ] {
        let out = check(name, &format!("node_name: n1\ncluster:\n  {section}\n"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(key),
            "{name}: stderr does not name {key}: {err}"
        );
    }
    let unused = free_port();
    let out = check(
        "valid.yaml",
        &format!(
            "node_name: n1\ncluster:\n  servers: [\"nats://127.0.0.1:{unused}\"]\n  replicas: 3\n"
        ),
    );
    assert!(
        out.status.success(),
        "a valid cluster section: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
