//! Operations: the admin HTTP API (metrics, probes, stats, clients, reload, token), typed
//! events, `$SYS` topics and graceful shutdown, driven over real sockets with a real
//! HTTP client.

mod common;
#[path = "common/http.rs"]
mod http;

use common::*;
use http::*;
use mqtt_broker::config::{Config, ConfigDuration};
use mqtt_broker::events::{BrokerEvent, DisconnectReason};
use mqtt_broker::protocol::*;
use mqtt_broker::{Broker, BrokerHandle};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mqtt-ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A broker whose admin listener is on a free loopback port.
async fn start(adjust: impl FnOnce(&mut Config)) -> (BrokerHandle, SocketAddr) {
    let broker = start_broker(|c| {
        c.admin.bind = "127.0.0.1:0".parse().unwrap();
        adjust(c)
    })
    .await;
    let admin = broker.admin_addr().expect("admin listener bound");
    (broker, admin)
}

/// Scrapes until `series` has `want`, for counters that move after a socket closes.
async fn wait_metric(admin: SocketAddr, token: Option<&str>, series: &str, want: f64) {
    let start = Instant::now();
    loop {
        let got = scrape(admin, token).await.try_value(series);
        if got == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{series} is {got:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives events until one matches, skipping others; panics after [`WAIT`].
async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<BrokerEvent>,
    mut want: impl FnMut(&BrokerEvent) -> bool,
) -> BrokerEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) if want(&e) => return e,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream error: {e}"),
            Err(_) => panic!("expected event did not arrive"),
        }
    }
}

#[tokio::test]
async fn metrics_move_as_clients_connect_publish_and_get_refused() {
    let (broker, admin) = start(|c| c.limits.max_topic_levels = 3).await;
    let before = scrape(admin, None).await;
    assert_eq!(before.value("mqtt_connections{transport=\"tcp\"}"), 0.0);
    assert_eq!(before.value("mqtt_config_generation"), 1.0);
    assert!(before.value("process_resident_memory_bytes") > 1e6);
    assert!(before.value("process_open_fds") > 0.0);

    let (mut sub, _) = RawClient::connect(broker.local_addr(), "sub", true).await;
    sub.subscribe(1, &[("t/#", QoS::AtLeastOnce)]).await;
    let (mut publ, _) = RawClient::connect(broker.local_addr(), "pub", true).await;
    publ.send(&publish("t/a", b"hello", QoS::AtLeastOnce, Some(7), false))
        .await;
    assert_eq!(publ.recv().await, Some(Packet::PubAck(7)));
    let got = sub.recv_publish().await;
    sub.send(&Packet::PubAck(got.pid.unwrap())).await;
    publ.send(&publish("t/b", b"zero", QoS::AtMostOnce, None, false))
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"zero");

    let m = scrape(admin, None).await;
    assert_eq!(m.value("mqtt_connections{transport=\"tcp\"}"), 2.0);
    assert_eq!(m.value("mqtt_connects_total{result=\"accepted\"}"), 2.0);
    assert_eq!(m.value("mqtt_sessions{state=\"connected\"}"), 2.0);
    assert_eq!(m.value("mqtt_subscriptions"), 1.0);
    assert_eq!(m.value("mqtt_messages_received_total{qos=\"1\"}"), 1.0);
    assert_eq!(m.value("mqtt_messages_received_total{qos=\"0\"}"), 1.0);
    assert_eq!(m.value("mqtt_messages_sent_total{qos=\"1\"}"), 1.0);
    assert_eq!(m.value("mqtt_payload_bytes_received_total{qos=\"1\"}"), 5.0);
    assert_eq!(m.value("mqtt_auth_total{result=\"success\"}"), 2.0);
    assert_eq!(
        m.value("mqtt_publish_deliver_latency_seconds_count"),
        2.0,
        "one latency sample per delivered message"
    );
    assert_eq!(
        m.value("mqtt_publish_deliver_latency_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    assert!(m.value("mqtt_bytes_received_total") > 0.0);

    // Refusals: a PUBLISH to $SYS is dropped, a too-deep filter gets 0x80, an unrouted
    // message counts as having no subscribers.
    publ.send(&publish(
        "$SYS/fake",
        b"x",
        QoS::AtLeastOnce,
        Some(8),
        false,
    ))
    .await;
    assert_eq!(publ.recv().await, Some(Packet::PubAck(8)));
    assert_eq!(
        publ.subscribe(2, &[("a/b/c/d", QoS::AtMostOnce)]).await,
        vec![SubAckCode::Failure]
    );
    publ.send(&publish(
        "nobody/here",
        b"x",
        QoS::AtLeastOnce,
        Some(9),
        false,
    ))
    .await;
    assert_eq!(publ.recv().await, Some(Packet::PubAck(9)));
    let m = scrape(admin, None).await;
    assert_eq!(
        m.value("mqtt_messages_dropped_total{reason=\"sys_topic\"}"),
        1.0
    );
    assert_eq!(
        m.value("mqtt_limit_refusals_total{limit=\"max_topic_levels\"}"),
        1.0
    );
    assert_eq!(
        m.value("mqtt_messages_dropped_total{reason=\"no_subscribers\"}"),
        1.0
    );

    publ.send(&Packet::Disconnect).await;
    publ.expect_closed().await;
    wait_metric(
        admin,
        None,
        "mqtt_disconnects_total{reason=\"disconnect\"}",
        1.0,
    )
    .await;
    drop(sub);
    wait_metric(
        admin,
        None,
        "mqtt_disconnects_total{reason=\"peer_closed\"}",
        1.0,
    )
    .await;
    wait_metric(admin, None, "mqtt_connections{transport=\"tcp\"}", 0.0).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn auth_failures_are_counted_and_emitted() {
    let (broker, admin) = start(|c| c.security.allow_anonymous = false).await;
    let mut events = broker.events();
    let (_c, ack) =
        RawClient::connect_with(broker.local_addr(), connect_packet("anon", true)).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    let m = scrape(admin, None).await;
    assert_eq!(m.value("mqtt_auth_total{result=\"failure\"}"), 1.0);
    assert_eq!(m.value("mqtt_connects_total{result=\"auth_failed\"}"), 1.0);
    assert_eq!(m.value("mqtt_connects_total{result=\"accepted\"}"), 0.0);
    let e = next_event(&mut events, |e| matches!(e, BrokerEvent::AuthFailed { .. })).await;
    let BrokerEvent::AuthFailed { client_id, .. } = e else {
        unreachable!()
    };
    assert_eq!(&*client_id, "anon");
    broker.shutdown().await;
}

#[tokio::test]
async fn probes_stats_and_clients_api() {
    let (broker, admin) = start(|_| {}).await;
    assert_eq!(get(admin, "/healthz").await.status, 200);
    let ready = get(admin, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert!(broker.is_ready());

    let mut clients = Vec::new();
    for (i, id) in ["c1", "c2", "c3"].iter().enumerate() {
        let (mut c, _) = RawClient::connect(broker.local_addr(), id, i != 1).await;
        let filters: Vec<(String, QoS)> = (0..=i)
            .map(|n| (format!("{id}/{n}"), QoS::AtLeastOnce))
            .collect();
        let refs: Vec<(&str, QoS)> = filters.iter().map(|(f, q)| (f.as_str(), *q)).collect();
        c.subscribe(1, &refs).await;
        clients.push(c);
    }
    let stats = get(admin, "/api/v1/stats").await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.content_type, "application/json");
    let s = stats.json();
    assert_eq!(s["connections"]["total"], 3);
    assert_eq!(s["connections"]["tcp"], 3);
    assert_eq!(s["connections"]["websocket"], 0);
    assert_eq!(s["sessions"]["total"], 3);
    assert_eq!(s["sessions"]["connected"], 3);
    assert_eq!(s["subscriptions"]["total"], 6);
    assert_eq!(s["messages"]["inflight"]["qos1"], 0);
    assert_eq!(s["messages"]["retained"], 0);
    assert_eq!(
        serde_json::to_value(broker.stats()).unwrap()["subscriptions"],
        s["subscriptions"],
        "the same numbers as BrokerHandle::stats()"
    );

    let page1 = get(admin, "/api/v1/clients?limit=2").await.json();
    assert_eq!(page1["total"], 3);
    let list = page1["clients"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], "c1");
    assert_eq!(list[0]["transport"], "tcp");
    assert_eq!(list[0]["subscriptions"], 1);
    assert_eq!(list[0]["queue_depth"], 0);
    assert!(list[0]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(list[0]["connected_since"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(list[1]["id"], "c2");
    assert_eq!(list[1]["clean_session"], false);
    let page2 = get(admin, "/api/v1/clients?offset=2&limit=2").await.json();
    let list = page2["clients"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "c3");
    assert_eq!(list[0]["subscriptions"], 3);
    assert_eq!(
        get(admin, "/api/v1/clients?limit=x").await.status,
        400,
        "a malformed page is refused"
    );

    // Disconnect c2 through the API: only c2 is closed.
    let mut events = broker.events();
    let r = request(admin, "DELETE", "/api/v1/clients/c2", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    clients[1].expect_closed().await;
    let e = next_event(&mut events, |e| {
        matches!(e, BrokerEvent::ClientDisconnected { .. })
    })
    .await;
    assert!(
        matches!(&e, BrokerEvent::ClientDisconnected { client_id, reason: DisconnectReason::Admin, .. } if &**client_id == "c2"),
        "{e:?}"
    );
    for i in [0, 2] {
        let c = &mut clients[i];
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Some(Packet::PingResp));
    }
    wait_metric(admin, None, "mqtt_disconnects_total{reason=\"admin\"}", 1.0).await;
    assert_eq!(
        request(admin, "DELETE", "/api/v1/clients/c2", None)
            .await
            .status,
        404
    );
    let s = get(admin, "/api/v1/stats").await.json();
    assert_eq!(s["sessions"]["total"], 3, "c2's persistent session is kept");
    assert_eq!(s["sessions"]["connected"], 2);
    assert_eq!(get(admin, "/nope").await.status, 404);
    assert_eq!(request(admin, "POST", "/metrics", None).await.status, 405);
    broker.shutdown().await;
}

#[tokio::test]
async fn bearer_token_is_required_except_for_probes() {
    let dir = temp_dir("token");
    std::fs::write(dir.join("token"), "s3cret\n").unwrap();
    let cfg = dir.join("broker.yaml");
    let yaml = |token: &str| {
        format!(
            "listeners:\n  - bind: '127.0.0.1:0'\nadmin:\n  bind: '127.0.0.1:0'\n  token_file: {token}\n"
        )
    };
    std::fs::write(&cfg, yaml("token")).unwrap();
    let broker = Broker::start(Config::load(&cfg).unwrap()).await.unwrap();
    broker.set_config_path(cfg.clone());
    let admin = broker.admin_addr().unwrap();

    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.status, 200);
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/api/v1/stats"),
        ("GET", "/api/v1/clients"),
        ("DELETE", "/api/v1/clients/x"),
        ("POST", "/api/v1/reload"),
        ("GET", "/api/v1/reload"),
    ] {
        let r = request(admin, method, path, None).await;
        assert_eq!(r.status, 401, "{method} {path} without a token");
        let r = request(admin, method, path, Some("wrong")).await;
        assert_eq!(r.status, 401, "{method} {path} with a wrong token");
    }
    assert_eq!(
        scrape(admin, Some("s3cret"))
            .await
            .value("mqtt_config_generation"),
        1.0
    );
    assert_eq!(
        request(admin, "GET", "/api/v1/stats", Some("s3cret"))
            .await
            .status,
        200
    );
    // The token file is re-read by a reload: the new token works, the old one no longer does.
    std::fs::write(dir.join("token2"), "n3w\n").unwrap();
    std::fs::write(&cfg, yaml("token2")).unwrap();
    let r = request(admin, "POST", "/api/v1/reload", Some("s3cret")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["generation"], 2);
    assert_eq!(
        request(admin, "GET", "/api/v1/stats", Some("s3cret"))
            .await
            .status,
        401
    );
    assert_eq!(
        request(admin, "GET", "/api/v1/stats", Some("n3w"))
            .await
            .status,
        200
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn reload_endpoint_reports_status_and_metrics() {
    let dir = temp_dir("reload");
    let cfg = dir.join("broker.yaml");
    let base = "listeners:\n  - {name: main, bind: '127.0.0.1:0'}\nadmin:\n  bind: '127.0.0.1:0'\n";
    std::fs::write(&cfg, base).unwrap();
    let broker = Broker::start(Config::load(&cfg).unwrap()).await.unwrap();
    let admin = broker.admin_addr().unwrap();
    let mut events = broker.events();

    // Not told its config file yet: nothing to re-read.
    assert_eq!(
        request(admin, "POST", "/api/v1/reload", None).await.status,
        409
    );
    broker.set_config_path(cfg.clone());

    std::fs::write(&cfg, format!("{base}limits:\n  max_subscriptions: 5\n")).unwrap();
    let r = request(admin, "POST", "/api/v1/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let status = r.json();
    assert_eq!(status["ok"], true);
    assert_eq!(status["generation"], 2);
    assert_eq!(broker.config().limits.max_subscriptions, 5);
    let e = next_event(&mut events, |e| {
        matches!(e, BrokerEvent::ConfigReloaded { .. })
    })
    .await;
    assert_eq!(
        e,
        BrokerEvent::ConfigReloaded {
            generation: 2,
            ok: true,
            error: None
        }
    );

    std::fs::write(&cfg, format!("{base}limits:\n  max_subscriptions: 0\n")).unwrap();
    let r = request(admin, "POST", "/api/v1/reload", None).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let status = r.json();
    assert_eq!(status["ok"], false);
    assert_eq!(status["generation"], 2);
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("limits.max_subscriptions"),
        "{status}"
    );
    let last = get(admin, "/api/v1/reload").await.json();
    assert_eq!(last, status);

    let m = scrape(admin, None).await;
    assert_eq!(m.value("mqtt_config_last_reload_successful"), 0.0);

    // Moving the admin listener needs a restart: the reload applies the rest and records
    // `admin.bind` as pending (issue 21: a reload never gets stuck).
    std::fs::write(&cfg, base.replace("'127.0.0.1:0'\n", "'127.0.0.1:1'\n")).unwrap();
    let r = request(admin, "POST", "/api/v1/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let status = r.json();
    assert_eq!(status["generation"], 3);
    assert_eq!(
        status["pending_restart"][0]["key"], "admin.bind",
        "{status}"
    );

    let m = scrape(admin, None).await;
    assert_eq!(m.value("mqtt_config_generation"), 3.0);
    assert_eq!(m.value("mqtt_config_reloads_total{result=\"ok\"}"), 2.0);
    assert_eq!(m.value("mqtt_config_reloads_total{result=\"error\"}"), 1.0);
    assert_eq!(m.value("mqtt_config_last_reload_successful"), 1.0);
    assert_eq!(m.value("mqtt_config_pending_restart"), 1.0);
    broker.shutdown().await;
}

#[tokio::test]
async fn readyz_turns_503_as_soon_as_shutdown_starts() {
    let (broker, admin) = start(|c| {
        c.server.drain_delay = ConfigDuration::millis(600);
        c.server.shutdown_timeout = ConfigDuration::secs(5);
    })
    .await;
    let (mut client, _) = RawClient::connect(broker.local_addr(), "c", true).await;
    assert_eq!(get(admin, "/readyz").await.status, 200);
    let stopping = tokio::spawn(broker.clone().shutdown());
    let start = Instant::now();
    loop {
        let r = get(admin, "/readyz").await;
        if r.status == 503 {
            assert_eq!(r.body, "shutting down\n");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "readyz still 200"
        );
    }
    // Alive but not ready while draining; MQTT keeps being served during the drain delay.
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(scrape(admin, None).await.value("mqtt_ready"), 0.0);
    client.send(&Packet::PingReq).await;
    assert_eq!(client.recv().await, Some(Packet::PingResp));
    client.expect_closed().await;
    assert!(stopping.await.unwrap(), "every connection ended in time");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(!broker.is_ready());
}

#[tokio::test]
async fn events_describe_the_session_lifecycle_and_lagging_is_reported() {
    let (broker, _admin) = start(|c| c.limits.publish_rate = 0).await;
    let mut events = broker.events();
    let mut lagging = broker.events();

    let (mut sub, _) = RawClient::connect(broker.local_addr(), "sub", false).await;
    let e = next_event(&mut events, |_| true).await;
    assert!(
        matches!(&e, BrokerEvent::ClientConnected { client_id, clean_session: false, session_present: false, .. } if &**client_id == "sub"),
        "{e:?}"
    );
    sub.subscribe(1, &[("e/+", QoS::AtLeastOnce)]).await;
    assert_eq!(
        next_event(&mut events, |_| true).await,
        BrokerEvent::Subscribed {
            client_id: "sub".into(),
            filter: "e/+".into(),
            qos: QoS::AtLeastOnce
        }
    );
    let (mut publ, _) = RawClient::connect(broker.local_addr(), "pub", true).await;
    next_event(&mut events, |e| {
        matches!(e, BrokerEvent::ClientConnected { .. })
    })
    .await;
    publ.send(&publish("e/1", b"abc", QoS::AtLeastOnce, Some(1), true))
        .await;
    assert_eq!(publ.recv().await, Some(Packet::PubAck(1)));
    assert_eq!(
        next_event(&mut events, |_| true).await,
        BrokerEvent::MessagePublished {
            client_id: "pub".into(),
            topic: "e/1".into(),
            qos: QoS::AtLeastOnce,
            retain: true,
            payload_len: 3,
            subscribers: 1
        }
    );
    sub.send(&Packet::Unsubscribe(Unsubscribe {
        properties: None,
        pid: 2,
        filters: vec!["e/+".into()],
    }))
    .await;
    next_event(
        &mut events,
        |e| matches!(e, BrokerEvent::Unsubscribed { filter, .. } if filter == "e/+"),
    )
    .await;
    sub.send(&Packet::Disconnect).await;
    let e = next_event(&mut events, |e| {
        matches!(e, BrokerEvent::ClientDisconnected { .. })
    })
    .await;
    assert!(
        matches!(&e, BrokerEvent::ClientDisconnected { client_id, reason: DisconnectReason::Disconnect, .. } if &**client_id == "sub"),
        "{e:?}"
    );

    // The receiver nobody read fell behind: it is told how many events it missed, and
    // the broker was not held up by it.
    let started = Instant::now();
    for i in 0..1200u32 {
        publ.send(&publish(
            "e/2",
            &i.to_be_bytes(),
            QoS::AtMostOnce,
            None,
            false,
        ))
        .await;
    }
    publ.send(&Packet::PingReq).await;
    assert_eq!(publ.recv().await, Some(Packet::PingResp));
    assert!(started.elapsed() < Duration::from_secs(3));
    match lagging.recv().await {
        Err(RecvError::Lagged(n)) => assert!(n >= 1200 - 1024, "missed {n}"),
        other => panic!("expected Lagged, got {other:?}"),
    }
    assert!(lagging.recv().await.is_ok(), "continues after the gap");
    broker.shutdown().await;
}

#[tokio::test]
async fn sys_topics_are_published_and_clients_cannot_publish_there() {
    let (broker, _admin) = start(|c| c.server.sys_interval = ConfigDuration::millis(200)).await;
    let (mut sys, _) = RawClient::connect(broker.local_addr(), "sys", true).await;
    sys.subscribe(1, &[("$SYS/#", QoS::AtMostOnce)]).await;
    let (mut all, _) = RawClient::connect(broker.local_addr(), "all", true).await;
    all.subscribe(1, &[("#", QoS::AtMostOnce)]).await;

    let mut seen = std::collections::HashMap::new();
    let deadline = Instant::now() + WAIT;
    // The load averages come last, from the second interval on.
    while !seen.contains_key("$SYS/broker/load/connections/15min") {
        assert!(Instant::now() < deadline, "load topics missing: {seen:?}");
        let p = sys.recv_publish().await;
        seen.insert(
            p.topic.to_string(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        );
    }
    assert!(seen["$SYS/broker/version"].starts_with("mqtt-broker version "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    assert_eq!(seen["$SYS/broker/clients/connected"], "2");
    assert_eq!(seen["$SYS/broker/subscriptions/count"], "2");
    for t in [
        "$SYS/broker/clients/total",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/bytes/received",
        "$SYS/broker/load/bytes/sent/15min",
    ] {
        assert!(seen.contains_key(t), "{t} missing: {seen:?}");
    }
    // [MQTT-4.7.2-1]: `#` does not match `$SYS` topics.
    all.expect_silence(Duration::from_millis(300)).await;

    // A client's PUBLISH to $SYS is acknowledged and dropped.
    let (mut evil, _) = RawClient::connect(broker.local_addr(), "evil", true).await;
    evil.send(&publish(
        "$SYS/broker/version",
        b"fake",
        QoS::AtLeastOnce,
        Some(3),
        true,
    ))
    .await;
    assert_eq!(evil.recv().await, Some(Packet::PubAck(3)));
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        if let Ok(Some(Packet::Publish(p))) = sys.recv_within(Duration::from_millis(50)).await {
            assert_ne!(&p.payload[..], b"fake");
        }
    }
    let (mut late, _) = RawClient::connect(broker.local_addr(), "late", true).await;
    late.subscribe(1, &[("$SYS/broker/version", QoS::AtMostOnce)])
        .await;
    let retained = late.recv_publish().await;
    assert!(retained.retain);
    assert_ne!(&retained.payload[..], b"fake");
    broker.shutdown().await;
}

#[tokio::test]
async fn sys_interval_zero_publishes_nothing() {
    let (broker, _admin) = start(|c| c.server.sys_interval = ConfigDuration::secs(0)).await;
    let (mut sys, _) = RawClient::connect(broker.local_addr(), "sys", true).await;
    sys.subscribe(1, &[("$SYS/#", QoS::AtMostOnce)]).await;
    sys.expect_silence(Duration::from_millis(1500)).await;
    assert_eq!(broker.stats().messages.retained, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn admin_can_be_disabled_and_a_taken_port_does_not_stop_the_broker() {
    let broker = start_broker(|c| c.admin.enabled = false).await;
    assert_eq!(broker.admin_addr(), None);
    let (_c, _) = RawClient::connect(broker.local_addr(), "c", true).await;
    broker.shutdown().await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let broker = start_broker(|c| c.admin.bind = addr).await;
    assert_eq!(broker.admin_addr(), None);
    let (_c, _) = RawClient::connect(broker.local_addr(), "c", true).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn acl_denials_are_counted_by_reason() {
    let (broker, admin) = start(|c| {
        c.security.acl = serde_yaml_ng::from_str(
            "- {deny: publish, topic: 'forbidden/#'}\n- {deny: subscribe, topic: 'private/#', client_id: watcher}\n- {allow: all, topic: '#'}\n",
        )
        .unwrap();
    })
    .await;
    let before = scrape(admin, None).await;
    for reason in ["acl_denied_publish", "acl_denied_deliver"] {
        assert_eq!(
            before.value(&format!(
                "mqtt_messages_dropped_total{{reason=\"{reason}\"}}"
            )),
            0.0
        );
    }
    // `watcher` may subscribe to `#` but not read `private/...` through it.
    let (mut watcher, _) = RawClient::connect(broker.local_addr(), "watcher", true).await;
    assert_eq!(
        watcher.subscribe(1, &[("#", QoS::AtLeastOnce)]).await,
        vec![SubAckCode::Granted(QoS::AtLeastOnce)]
    );
    let (mut publ, _) = RawClient::connect(broker.local_addr(), "pub", true).await;

    // A denied PUBLISH is acknowledged, dropped and counted.
    publ.send(&publish(
        "forbidden/x",
        b"no",
        QoS::AtLeastOnce,
        Some(1),
        false,
    ))
    .await;
    assert_eq!(publ.recv().await, Some(Packet::PubAck(1)));
    wait_metric(
        admin,
        None,
        "mqtt_messages_dropped_total{reason=\"acl_denied_publish\"}",
        1.0,
    )
    .await;
    // A delivery the subscriber may not read is dropped and counted.
    publ.send(&publish(
        "private/x",
        b"secret",
        QoS::AtLeastOnce,
        Some(2),
        false,
    ))
    .await;
    assert_eq!(publ.recv().await, Some(Packet::PubAck(2)));
    wait_metric(
        admin,
        None,
        "mqtt_messages_dropped_total{reason=\"acl_denied_deliver\"}",
        1.0,
    )
    .await;
    // Neither reached the watcher; an allowed message does.
    publ.send(&publish("open/x", b"ok", QoS::AtLeastOnce, Some(3), false))
        .await;
    assert_eq!(publ.recv().await, Some(Packet::PubAck(3)));
    let p = watcher.recv_publish().await;
    assert_eq!((&*p.topic, &p.payload[..]), ("open/x", &b"ok"[..]));
    watcher.send(&Packet::PubAck(p.pid.unwrap())).await;
    watcher.expect_silence(Duration::from_millis(200)).await;

    let m = scrape(admin, None).await;
    assert_eq!(
        m.value("mqtt_messages_dropped_total{reason=\"acl_denied_publish\"}"),
        1.0
    );
    assert_eq!(
        m.value("mqtt_messages_dropped_total{reason=\"acl_denied_deliver\"}"),
        1.0
    );
    assert_eq!(m.value("mqtt_messages_received_total{qos=\"1\"}"), 3.0);
    assert_eq!(m.value("mqtt_messages_sent_total{qos=\"1\"}"), 1.0);
    broker.shutdown().await;
}

#[tokio::test]
async fn persistent_session_and_inflight_gauges() {
    let (broker, admin) = start(|_| {}).await;
    let addr = broker.local_addr();
    let gauge = |m: &Metrics, series: &str| m.value(series);
    let m = scrape(admin, None).await;
    assert_eq!(gauge(&m, "mqtt_sessions_persistent"), 0.0);

    // A persistent session counts; a clean one does not.
    let (mut slow, _) = RawClient::connect(addr, "slow", false).await;
    let (mut publ, _) = RawClient::connect(addr, "pub", true).await;
    let m = scrape(admin, None).await;
    assert_eq!(gauge(&m, "mqtt_sessions_persistent"), 1.0);
    assert_eq!(gauge(&m, "mqtt_sessions{state=\"connected\"}"), 2.0);
    assert_eq!(gauge(&m, "mqtt_inflight_messages{qos=\"1\"}"), 0.0);
    assert_eq!(gauge(&m, "mqtt_inflight_messages{qos=\"2\"}"), 0.0);

    // A QoS 1 subscriber that does not acknowledge: three messages in flight.
    slow.subscribe(
        1,
        &[("inf/q1", QoS::AtLeastOnce), ("inf/q2", QoS::ExactlyOnce)],
    )
    .await;
    let mut pending = Vec::new();
    for pid in 1..=3u16 {
        publ.send(&publish("inf/q1", b"x", QoS::AtLeastOnce, Some(pid), false))
            .await;
        assert_eq!(publ.recv().await, Some(Packet::PubAck(pid)));
        let p = slow.recv_publish().await;
        assert_eq!(p.qos, QoS::AtLeastOnce);
        pending.push(p.pid.unwrap());
    }
    wait_metric(admin, None, "mqtt_inflight_messages{qos=\"1\"}", 3.0).await;
    let s = get(admin, "/api/v1/stats").await.json();
    assert_eq!(s["messages"]["inflight"]["qos1"], 3);
    let clients = get(admin, "/api/v1/clients").await.json();
    let slow_row = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "slow")
        .cloned()
        .unwrap();
    assert_eq!(slow_row["inflight"], 3, "{slow_row}");

    // QoS 2 outbound: in flight until PUBCOMP, through PUBREC/PUBREL.
    publ.publish_qos2("inf/q2", b"y", 10).await;
    let p = slow.recv_publish().await;
    assert_eq!(p.qos, QoS::ExactlyOnce);
    let q2 = p.pid.unwrap();
    wait_metric(admin, None, "mqtt_inflight_messages{qos=\"2\"}", 1.0).await;
    slow.send(&Packet::PubRec(q2)).await;
    assert_eq!(slow.recv().await, Some(Packet::PubRel(q2)));
    assert_eq!(
        scrape(admin, None)
            .await
            .value("mqtt_inflight_messages{qos=\"2\"}"),
        1.0,
        "awaiting PUBCOMP"
    );
    slow.send(&Packet::PubComp(q2)).await;
    wait_metric(admin, None, "mqtt_inflight_messages{qos=\"2\"}", 0.0).await;

    // QoS 2 inbound: counted while the broker awaits the publisher's PUBREL.
    publ.send(&publish("nobody", b"z", QoS::ExactlyOnce, Some(20), false))
        .await;
    assert_eq!(publ.recv().await, Some(Packet::PubRec(20)));
    wait_metric(admin, None, "mqtt_inflight_messages{qos=\"2\"}", 1.0).await;
    publ.send(&Packet::PubRel(20)).await;
    assert_eq!(publ.recv().await, Some(Packet::PubComp(20)));
    wait_metric(admin, None, "mqtt_inflight_messages{qos=\"2\"}", 0.0).await;

    // Acknowledging drains the QoS 1 window.
    for pid in pending {
        slow.send(&Packet::PubAck(pid)).await;
    }
    wait_metric(admin, None, "mqtt_inflight_messages{qos=\"1\"}", 0.0).await;

    // Offline, the persistent session is still counted; a clean reconnect discards it.
    slow.send(&Packet::Disconnect).await;
    slow.expect_closed().await;
    wait_metric(admin, None, "mqtt_sessions{state=\"disconnected\"}", 1.0).await;
    let m = scrape(admin, None).await;
    assert_eq!(gauge(&m, "mqtt_sessions_persistent"), 1.0);
    assert_eq!(gauge(&m, "mqtt_sessions{state=\"connected\"}"), 1.0);
    let (_slow, present) = RawClient::connect(addr, "slow", true).await;
    assert!(!present);
    let m = scrape(admin, None).await;
    assert_eq!(gauge(&m, "mqtt_sessions_persistent"), 0.0);
    assert_eq!(gauge(&m, "mqtt_sessions{state=\"disconnected\"}"), 0.0);
    broker.shutdown().await;
}

/// A SIGTERM sent the moment the listener accepts (the binary may still be finishing its
/// start-up) is a graceful stop: it was caught, the broker says so and exits 0, instead of
/// the default action killing it with nothing flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_is_a_graceful_stop() {
    const BIN: &str = env!("CARGO_BIN_EXE_mqtt-broker");
    let dir = temp_dir("early-term");
    let port = free_port();
    let cfg = dir.join("broker.yaml");
    std::fs::write(
        &cfg,
        format!("server:\n  host: 127.0.0.1\n  port: {port}\n  sys_interval: 0\nadmin:\n  bind: '127.0.0.1:0'\n"),
    )
    .unwrap();
    let err = dir.join("stderr.log");
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&err).unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}\n{log}");
    assert!(log.contains("shutting down gracefully"), "{log}");
}

/// `log.format: json`: the broker binary writes one JSON object per line, each with a
/// message, and a line about a client carries its client id, address and transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_and_carry_the_client_id() {
    const BIN: &str = env!("CARGO_BIN_EXE_mqtt-broker");
    let dir = temp_dir("json-log");
    let port = free_port();
    let cfg = dir.join("broker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n  sys_interval: 0\nadmin:\n  bind: '127.0.0.1:0'\nlog:\n  level: info\n  format: json\n"
        ),
    )
    .unwrap();
    let (out, err) = (dir.join("stdout.log"), dir.join("stderr.log"));
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id() as i32;
    let guard = Kill(&mut child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut c, _) = RawClient::connect(addr, "json-client", true).await;
    c.send(&Packet::Disconnect).await;
    c.expect_closed().await;
    // SIGTERM: a graceful stop, so every line is written.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = Instant::now();
    loop {
        if guard.0.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "broker did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(guard);

    let stderr = std::fs::read_to_string(&err).unwrap();
    let stdout = std::fs::read_to_string(&out).unwrap();
    let mut lines = Vec::new();
    for line in stderr.lines().chain(stdout.lines()) {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}\n{stderr}"));
        assert!(v.is_object(), "{line}");
        let message = v["fields"]["message"]
            .as_str()
            .or(v["message"].as_str())
            .unwrap_or_else(|| panic!("log line without a message: {line}"));
        lines.push((message.to_owned(), v));
    }
    assert!(lines.len() >= 3, "{stderr}");
    for want in ["client connected", "client disconnected"] {
        let (_, v) = lines
            .iter()
            .find(|(m, _)| m == want)
            .unwrap_or_else(|| panic!("no {want:?} line in:\n{stderr}"));
        assert_eq!(v["span"]["client_id"], "json-client", "{v}");
        assert_eq!(v["span"]["transport"], "tcp", "{v}");
        assert!(
            v["span"]["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{v}"
        );
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
    }
}

/// A store whose recovery waits until the test lets it go.
struct SlowRecovery {
    inner: mqtt_broker::storage::MemoryStorage,
    gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl mqtt_broker::storage::Storage for SlowRecovery {
    fn apply(
        &self,
        ops: &[mqtt_broker::storage::StorageOp],
        durable: bool,
    ) -> Result<(), mqtt_broker::storage::StorageError> {
        self.inner.apply(ops, durable)
    }
    fn sync(&self) -> Result<(), mqtt_broker::storage::StorageError> {
        self.inner.sync()
    }
    fn load(&self) -> Result<mqtt_broker::storage::Recovered, mqtt_broker::storage::StorageError> {
        let _ = self
            .gate
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(20));
        self.inner.load()
    }
}

#[tokio::test]
async fn probes_answer_while_storage_recovers() {
    // A free port for the admin listener, known before the broker returns from start.
    let admin: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (release, gate) = std::sync::mpsc::channel();
    let storage = std::sync::Arc::new(SlowRecovery {
        inner: mqtt_broker::storage::MemoryStorage::default(),
        gate: std::sync::Mutex::new(gate),
    });
    let config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        admin: mqtt_broker::config::AdminConfig {
            bind: admin,
            ..Default::default()
        },
        ..Default::default()
    };
    let starting = tokio::spawn(Broker::start_with_storage(config, storage));
    // While recovery runs: alive, not ready.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "admin listener not up during recovery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(admin, "/healthz").await.status, 200);
    let ready = get(admin, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        !starting.is_finished(),
        "start returned before recovery finished"
    );
    release.send(()).unwrap();
    let broker = starting.await.unwrap().expect("broker starts");
    assert_eq!(get(admin, "/readyz").await.status, 200);
    let (_c, _) = RawClient::connect(broker.local_addr(), "after-recovery", true).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_will_to_sys_is_refused() {
    let (broker, _admin) = start(|c| c.server.sys_interval = ConfigDuration::millis(0)).await;
    let addr = broker.local_addr();
    let (mut sys, _) = RawClient::connect(addr, "sys-watch", true).await;
    sys.subscribe(1, &[("$SYS/#", QoS::AtMostOnce)]).await;
    let mut c = connect_packet("evil-will", true);
    c.will = Some(LastWill {
        properties: None,
        topic: "$SYS/broker/version".into(),
        payload: bytes::Bytes::from_static(b"fake"),
        qos: QoS::AtLeastOnce,
        retain: true,
    });
    let (evil, ack) = RawClient::connect_with(addr, c).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    drop(evil); // abrupt close: the will would be published now
    sys.expect_silence(Duration::from_millis(400)).await;
    let (mut late, _) = RawClient::connect(addr, "sys-late", true).await;
    late.subscribe(1, &[("$SYS/broker/version", QoS::AtMostOnce)])
        .await;
    late.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn mqtt5_clients_show_their_protocol_and_reason_codes_are_counted() {
    let (broker, admin) = start(|_| {}).await;
    let connect = Connect {
        bridge: false,
        protocol: ProtocolLevel::V5,
        clean_session: false,
        keep_alive: 30,
        client_id: "five".into(),
        will: None,
        username: None,
        password: None,
        properties: Some(Box::new(Properties {
            session_expiry_interval: Some(120),
            ..Default::default()
        })),
    };
    let (mut v5, ack) = RawClient::connect_with(broker.local_addr(), connect).await;
    assert_eq!(ack.v5_reason(), 0);
    let (_v3, _) = RawClient::connect(broker.local_addr(), "three", true).await;
    // Nobody subscribes: PUBACK 0x10, twice.
    for pid in 1..=2 {
        v5.send(&publish("nobody", b"x", QoS::AtLeastOnce, Some(pid), false))
            .await;
        assert!(matches!(v5.recv().await, Some(Packet::Ack(a)) if a.reason == 0x10));
    }
    wait_metric(
        admin,
        None,
        r#"mqtt5_reason_codes_sent_total{code="0x10"}"#,
        2.0,
    )
    .await;
    let list = get(admin, "/api/v1/clients").await.json();
    let clients = list["clients"].as_array().unwrap();
    let five = clients.iter().find(|c| c["id"] == "five").unwrap();
    assert_eq!(five["protocol"], "5.0");
    assert_eq!(five["session_expiry_interval"], 120);
    let three = clients.iter().find(|c| c["id"] == "three").unwrap();
    assert_eq!(three["protocol"], "3.1.1");
    assert!(three.get("session_expiry_interval").is_none());
    broker.shutdown().await;
}
