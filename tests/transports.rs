//! TCP, TLS, WebSocket and WebSocket-over-TLS listeners in one broker: the same MQTT
//! behaviour on each, across transports, client certificates, and hostile handshakes.
//! Certificates are generated at test time (rcgen); no private key is committed.

mod common;
#[path = "common/http.rs"]
mod http;

use bytes::Bytes;
use common::*;
use mqtt_broker::config::{ListenerConfig, TransportKind};
use mqtt_broker::protocol::*;
use mqtt_broker::BrokerHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn tls_listener(pki: &TestPki, protocol: TransportKind) -> ListenerConfig {
    ListenerConfig {
        cert_file: Some(pki.path("server.pem")),
        key_file: Some(pki.path("server.key")),
        ..ListenerConfig::new(protocol, loopback())
    }
}

async fn four_listener_broker(pki: &TestPki) -> BrokerHandle {
    start_broker(|c| {
        c.listeners = vec![
            ListenerConfig::tcp(loopback()),
            tls_listener(pki, TransportKind::Tls),
            ListenerConfig::new(TransportKind::Ws, loopback()),
            tls_listener(pki, TransportKind::Wss),
        ];
    })
    .await
}

fn addr_of(broker: &BrokerHandle, t: TransportKind) -> SocketAddr {
    broker
        .listeners()
        .iter()
        .find(|l| l.transport == t)
        .unwrap()
        .addr
}

/// Opens an MQTT byte stream of the given transport.
async fn open(broker: &BrokerHandle, pki: &TestPki, t: TransportKind) -> Box<dyn ByteStream> {
    let addr = addr_of(broker, t);
    match t {
        TransportKind::Tcp => Box::new(TcpStream::connect(addr).await.unwrap()),
        TransportKind::Tls => tls_stream(addr, pki.client_config(None)).await.unwrap(),
        TransportKind::Ws => {
            let tcp = TcpStream::connect(addr).await.unwrap();
            ws_upgrade(tcp, &format!("ws://{addr}/mqtt")).await.unwrap()
        }
        TransportKind::Wss => {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(pki.client_config(None))
                .connect(name, tcp)
                .await
                .unwrap();
            ws_upgrade(tls, &format!("wss://localhost:{}/mqtt", addr.port()))
                .await
                .unwrap()
        }
        TransportKind::Bridge => unreachable!("no listener is a bridge"),
    }
}

async fn client(
    broker: &BrokerHandle,
    pki: &TestPki,
    t: TransportKind,
    connect: Connect,
) -> RawClient {
    let (c, ack) = RawClient::connect_over(open(broker, pki, t).await, connect).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted, "{t:?}");
    c
}

const ALL: [TransportKind; 4] = [
    TransportKind::Tcp,
    TransportKind::Tls,
    TransportKind::Ws,
    TransportKind::Wss,
];

/// Publish/subscribe, QoS 2, retained and will behave identically on each transport.
#[tokio::test]
async fn same_scenario_on_every_transport() {
    let pki = TestPki::new("scenario");
    let broker = four_listener_broker(&pki).await;
    let mut alive = Vec::new();
    for t in ALL {
        let tag = t.as_str();
        let mut sub = client(
            &broker,
            &pki,
            t,
            connect_packet(&format!("sub-{tag}"), true),
        )
        .await;
        sub.subscribe(1, &[(&format!("{tag}/#"), QoS::ExactlyOnce)])
            .await;
        let mut with_will = connect_packet(&format!("pub-{tag}"), true);
        with_will.will = Some(LastWill {
            properties: None,
            topic: Arc::from(format!("{tag}/will").as_str()),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        let mut publ = client(&broker, &pki, t, with_will).await;
        publ.publish_qos2(&format!("{tag}/x"), b"exactly once", 1)
            .await;
        let p = sub.receive_qos2().await;
        assert_eq!(&p.payload[..], b"exactly once", "{tag}");
        // A payload far larger than one WebSocket frame or TLS record.
        let big = vec![b'z'; 200_000];
        publ.send(&publish(
            &format!("{tag}/big"),
            &big,
            QoS::AtMostOnce,
            None,
            true,
        ))
        .await;
        assert_eq!(sub.recv_publish().await.payload.len(), big.len(), "{tag}");
        let mut late = client(
            &broker,
            &pki,
            t,
            connect_packet(&format!("late-{tag}"), true),
        )
        .await;
        late.subscribe(1, &[(&format!("{tag}/big"), QoS::AtMostOnce)])
            .await;
        assert!(late.recv_publish().await.retain, "{tag}");
        drop(publ);
        let will = sub.recv_publish().await;
        assert_eq!(&*will.topic, format!("{tag}/will"), "{tag}");
        sub.send(&Packet::PubAck(will.pid.unwrap())).await;
        alive.push((sub, late));
    }
    let stats = broker.stats();
    assert_eq!(
        (
            stats.connections.tcp,
            stats.connections.tls,
            stats.connections.websocket,
            stats.connections.wss
        ),
        (2, 2, 2, 2)
    );
}

#[tokio::test]
async fn messages_cross_transports_both_ways() {
    let pki = TestPki::new("cross");
    let broker = four_listener_broker(&pki).await;
    let mut tcp = client(
        &broker,
        &pki,
        TransportKind::Tcp,
        connect_packet("tcp", true),
    )
    .await;
    let mut wss = client(
        &broker,
        &pki,
        TransportKind::Wss,
        connect_packet("wss", true),
    )
    .await;
    tcp.subscribe(1, &[("to-tcp", QoS::AtLeastOnce)]).await;
    wss.subscribe(1, &[("to-wss", QoS::AtLeastOnce)]).await;
    wss.publish_qos2("to-tcp", b"from wss", 1).await;
    let p = tcp.recv_publish().await;
    assert_eq!(&p.payload[..], b"from wss");
    tcp.send(&Packet::PubAck(p.pid.unwrap())).await;
    tcp.publish_qos2("to-wss", b"from tcp", 1).await;
    assert_eq!(&wss.recv_publish().await.payload[..], b"from tcp");
}

async fn mtls_broker(pki: &TestPki, identity_as_username: bool) -> BrokerHandle {
    start_broker(|c| {
        c.listeners = vec![ListenerConfig {
            client_ca_file: Some(pki.path("ca.pem")),
            require_client_cert: true,
            use_identity_as_username: identity_as_username,
            ..tls_listener(pki, TransportKind::Tls)
        }];
        if identity_as_username {
            c.security.require_auth = true;
            c.security.acl =
                serde_yaml_ng::from_str("- {allow: all, topic: 'dev/%u/#'}\n").unwrap();
        }
    })
    .await
}

/// A client that fails the TLS handshake never gets to MQTT: either the handshake errors or
/// the connection closes before a CONNACK.
async fn refused(addr: SocketAddr, config: Arc<tokio_rustls::rustls::ClientConfig>) -> bool {
    let Ok(stream) = tls_stream(addr, config).await else {
        return true;
    };
    let mut c = RawClient::over(stream);
    c.send_raw(&{
        let mut out = bytes::BytesMut::new();
        encode(
            &Packet::Connect(Box::new(connect_packet("x", true))),
            &mut out,
        );
        out.to_vec()
    })
    .await;
    !matches!(c.recv_within(WAIT).await, Ok(Some(Packet::ConnAck(_))))
}

#[tokio::test]
async fn mutual_tls_accepts_ca_signed_clients_only() {
    let pki = TestPki::new("mtls");
    pki.issue("device-1", vec![]);
    pki.rogue("rogue");
    let broker = mtls_broker(&pki, false).await;
    let addr = broker.local_addr();
    let stream = tls_stream(addr, pki.client_config(Some("device-1")))
        .await
        .unwrap();
    let (_c, ack) = RawClient::connect_over(stream, connect_packet("d1", true)).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    assert!(
        refused(addr, pki.client_config(Some("rogue"))).await,
        "rogue certificate accepted"
    );
    assert!(
        refused(addr, pki.client_config(None)).await,
        "client without certificate accepted"
    );
}

#[tokio::test]
async fn certificate_identity_becomes_the_username_for_auth_and_acl() {
    let pki = TestPki::new("identity");
    pki.issue("device-1", vec![]);
    let broker = mtls_broker(&pki, true).await;
    let stream = tls_stream(broker.local_addr(), pki.client_config(Some("device-1")))
        .await
        .unwrap();
    // The user name in CONNECT is ignored; the certificate's CN is used (and authenticates).
    let mut connect = connect_packet("d1", true);
    connect.username = Some("admin".into());
    let (mut c, ack) = RawClient::connect_over(stream, connect).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    let codes = c
        .subscribe(
            1,
            &[
                ("dev/device-1/cmd", QoS::AtMostOnce),
                ("dev/admin/cmd", QoS::AtMostOnce),
            ],
        )
        .await;
    assert_eq!(
        codes,
        vec![SubAckCode::Granted(QoS::AtMostOnce), SubAckCode::Failure]
    );
}

#[tokio::test]
async fn bad_tls_handshake_and_text_frame_do_not_disturb_others() {
    let pki = TestPki::new("hostile");
    let broker = four_listener_broker(&pki).await;
    let mut good_sub = client(
        &broker,
        &pki,
        TransportKind::Tcp,
        connect_packet("good-sub", true),
    )
    .await;
    good_sub.subscribe(1, &[("ok", QoS::ExactlyOnce)]).await;
    let mut good_pub = client(
        &broker,
        &pki,
        TransportKind::Wss,
        connect_packet("good-pub", true),
    )
    .await;

    // Garbage on the TLS port.
    let mut garbage = TcpStream::connect(addr_of(&broker, TransportKind::Tls))
        .await
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.0\r\n\r\n this is not TLS")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, garbage.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(n < 64, "TLS port answered garbage with data");
    good_pub.publish_qos2("ok", b"1", 1).await;
    assert_eq!(&good_sub.receive_qos2().await.payload[..], b"1");

    // A text frame after CONNECT closes that WebSocket connection [MQTT-6.0.0-1].
    let tcp = TcpStream::connect(addr_of(&broker, TransportKind::Ws))
        .await
        .unwrap();
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/mqtt", addr_of(&broker, TransportKind::Ws))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    let mut connect = bytes::BytesMut::new();
    encode(
        &Packet::Connect(Box::new(connect_packet("texter", true))),
        &mut connect,
    );
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        connect.freeze(),
    ))
    .await
    .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        "hello".into(),
    ))
    .await
    .unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None
                | Some(Err(_))
                | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "text frame did not close the connection");
    good_pub.publish_qos2("ok", b"2", 2).await;
    assert_eq!(&good_sub.receive_qos2().await.payload[..], b"2");

    // Both clients still exchange QoS 2 messages. (A TLS client that stalls mid-handshake is
    // tested by `tls_handshake_counts_against_connect_timeout` below and in tests/hostile.rs.)
    good_pub.publish_qos2("ok", b"3", 3).await;
    assert_eq!(&good_sub.receive_qos2().await.payload[..], b"3");
}

#[tokio::test]
async fn websocket_wrong_path_gets_404_before_upgrade() {
    let broker =
        start_broker(|c| c.listeners = vec![ListenerConfig::new(TransportKind::Ws, loopback())])
            .await;
    let mut tcp = TcpStream::connect(broker.local_addr()).await.unwrap();
    tcp.write_all(
        b"GET /elsewhere HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
}

#[tokio::test]
async fn tls_handshake_counts_against_connect_timeout() {
    let pki = TestPki::new("stall");
    let broker = start_broker(|c| {
        c.server.connect_timeout = mqtt_broker::config::ConfigDuration::millis(300);
        c.listeners = vec![tls_listener(&pki, TransportKind::Tls)];
    })
    .await;
    let mut stalled = TcpStream::connect(broker.local_addr()).await.unwrap();
    // The first bytes of a ClientHello, then nothing.
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(3), stalled.read(&mut buf)).await;
    assert!(r.is_ok(), "stalled handshake was not closed");
}

#[tokio::test]
async fn missing_or_malformed_certificate_files_are_config_errors_naming_the_file() {
    let pki = TestPki::new("badfiles");
    let mut config = mqtt_broker::Config {
        listeners: vec![ListenerConfig {
            cert_file: Some(pki.path("nope.pem")),
            ..tls_listener(&pki, TransportKind::Tls)
        }],
        ..Default::default()
    };
    let err = mqtt_broker::Broker::start(config.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope.pem"), "{err}");
    std::fs::write(pki.path("garbage.key"), "not a key").unwrap();
    config.listeners[0].cert_file = Some(pki.path("server.pem"));
    config.listeners[0].key_file = Some(pki.path("garbage.key"));
    let err = mqtt_broker::Broker::start(config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("garbage.key"), "{err}");
}

/// Mosquitto's own client over TLS with `--cafile`, as the README tells users to run it.
#[tokio::test]
async fn mosquitto_pub_and_sub_over_tls() {
    let pki = TestPki::new("mosq-tls");
    let broker = start_broker(|c| c.listeners = vec![tls_listener(&pki, TransportKind::Tls)]).await;
    let port = broker.local_addr().port().to_string();
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            ca,
            "-t",
            "secure/#",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output();
    let publish = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let st = tokio::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "localhost",
                "-p",
                &port,
                "--cafile",
                ca,
                "-t",
                "secure/a",
                "-m",
                "tls works",
                "-q",
                "1",
            ])
            .status()
            .await
            .expect("mosquitto_pub is required (apt-get install mosquitto-clients)");
        assert!(st.success());
    };
    let (out, ()) = tokio::join!(sub, publish);
    let out = out.expect("mosquitto_sub is required (apt-get install mosquitto-clients)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tls works");
}

/// MQTT.js, as browsers use it, over ws:// against a TCP peer (run by .ci/run after `npm ci`).
#[tokio::test]
async fn mqtt_js_over_websocket_talks_to_tcp_client() {
    let js_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
    assert!(
        std::path::Path::new(js_dir)
            .join("node_modules/mqtt")
            .exists(),
        "MQTT.js is not installed: run `cd tests/js && npm ci` (.ci/run does this)"
    );
    let broker = start_broker(|c| {
        c.listeners = vec![
            ListenerConfig::tcp(loopback()),
            ListenerConfig::new(TransportKind::Ws, loopback()),
        ];
    })
    .await;
    let ws_port = addr_of(&broker, TransportKind::Ws).port().to_string();
    let mut device = client(
        &broker,
        &TestPki::new("js"),
        TransportKind::Tcp,
        connect_packet("esp8266", true),
    )
    .await;
    device
        .subscribe(1, &[("dashboard/cmd", QoS::AtLeastOnce)])
        .await;
    let node = tokio::process::Command::new("node")
        .arg(format!("{js_dir}/ws_e2e.mjs"))
        .arg(&ws_port)
        .output();
    let device_side = async {
        // The page subscribes to the device's readings, then sends a command.
        let cmd = device.recv_publish().await;
        assert_eq!(&cmd.payload[..], b"led=on");
        device.send(&Packet::PubAck(cmd.pid.unwrap())).await;
        device
            .send(&publish(
                "sensors_aloys/dht",
                b"25.5",
                QoS::AtMostOnce,
                None,
                false,
            ))
            .await;
    };
    let (out, ()) = tokio::join!(node, device_side);
    let out = out.expect("node is required");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("received sensors_aloys/dht 25.5"),
        "{stdout}"
    );
}

const JS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");

fn require_mqtt_js() {
    assert!(
        std::path::Path::new(JS_DIR)
            .join("node_modules/mqtt")
            .exists(),
        "MQTT.js is not installed: run `cd tests/js && npm ci` (.ci/run does this)"
    );
}

/// Runs a command to completion within `limit` (killed if it takes longer).
async fn run_bounded(
    mut cmd: tokio::process::Command,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    cmd.kill_on_drop(true);
    tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// Waits until the broker counts `want` open connections (they close asynchronously).
async fn wait_connections(broker: &BrokerHandle, want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let total = broker.stats().connections.total;
        if total == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{total} connections open, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The publish/subscribe, QoS 0/1/2, retained (set, delivered later, deleted) and will
/// scenario of `tests/js/scenario.mjs`, driven by MQTT.js over each of the four listeners of
/// one broker: mqtt://, mqtts:// and wss:// verified against the test CA, ws://.
#[tokio::test]
async fn mqtt_js_scenario_on_every_transport() {
    require_mqtt_js();
    let pki = TestPki::new("js-scenario");
    let broker = four_listener_broker(&pki).await;
    // TestPki writes the CA certificate as a PEM file in its temporary directory.
    let ca = pki.path("ca.pem");
    for t in ALL {
        let addr = addr_of(&broker, t);
        let url = match t {
            TransportKind::Tcp => format!("mqtt://{addr}"),
            TransportKind::Tls => format!("mqtts://{addr}"),
            TransportKind::Ws => format!("ws://{addr}/mqtt"),
            TransportKind::Wss => format!("wss://{addr}/mqtt"),
            TransportKind::Bridge => unreachable!("no listener is a bridge"),
        };
        let mut node = tokio::process::Command::new("node");
        node.arg(format!("{JS_DIR}/scenario.mjs"))
            .arg(&url)
            .arg(&ca);
        let out = run_bounded(node, Duration::from_secs(60), "node scenario.mjs").await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "MQTT.js scenario failed on {url} ({}):\n{stdout}\n{stderr}",
            out.status
        );
        for step in [
            "ok subscribed at QoS 2",
            "ok QoS 0 received at QoS 0",
            "ok QoS 1 received at QoS 1",
            "ok QoS 2 received at QoS 2",
            "ok retained message delivered to a later subscriber with the retain flag",
            "ok empty retained payload deleted the retained message",
            "ok will published after the publisher's connection was destroyed",
        ] {
            assert!(
                stdout.contains(step),
                "{url}: missing `{step}` in\n{stdout}"
            );
        }
        assert!(
            stdout.contains(&format!("scenario passed {url}")),
            "{url}:\n{stdout}"
        );
        // Every MQTT.js connection of the run is gone from the broker.
        wait_connections(&broker, 0).await;
    }
}

mod ws_bytes {
    //! Hand-encoded MQTT 3.1.1 packets for the WebSocket framing test.

    /// CONNECT, protocol MQTT level 4, clean session, keep-alive 30, client id "wsf".
    pub const CONNECT: &[u8] = &[
        0x10, 0x0f, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x1e, 0x00, 0x03, b'w',
        b's', b'f',
    ];
    /// CONNECT, protocol MQIsdp level 3 (MQTT 3.1), clean session, keep-alive 30, id "v31".
    pub const CONNECT_V31: &[u8] = &[
        0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x1e, 0x00,
        0x03, b'v', b'3', b'1',
    ];
    /// CONNACK, no session present, accepted.
    pub const CONNACK_ACCEPTED: &[u8] = &[0x20, 0x02, 0x00, 0x00];
    /// SUBSCRIBE packet id 1, "a/b" at QoS 1.
    pub const SUBSCRIBE: &[u8] = &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01];
    /// PUBLISH QoS 1, packet id 2, "a/b", payload "hi".
    pub const PUBLISH_QOS1: &[u8] = &[
        0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x02, b'h', b'i',
    ];
    /// PUBLISH QoS 0, "a/b", payload "after ping".
    pub const PUBLISH_QOS0: &[u8] = &[
        0x30, 0x0f, 0x00, 0x03, b'a', b'/', b'b', b'a', b'f', b't', b'e', b'r', b' ', b'p', b'i',
        b'n', b'g',
    ];
    pub const PINGREQ: &[u8] = &[0xc0, 0x00];
    pub const PINGRESP: &[u8] = &[0xd0, 0x00];

    /// PUBACK for `pid`.
    pub fn puback(pid: u16) -> Vec<u8> {
        let [hi, lo] = pid.to_be_bytes();
        vec![0x40, 0x02, hi, lo]
    }
}

type WsClient = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a WebSocket to the broker's `/mqtt` offering `subprotocol`; returns the socket and
/// the subprotocol the broker selected.
async fn ws_client(addr: SocketAddr, subprotocol: &str) -> (WsClient, Option<String>) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", subprotocol.parse().unwrap());
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("WebSocket upgrade timed out")
        .expect("WebSocket upgrade");
    let selected = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, selected)
}

async fn ws_send(ws: &mut WsClient, frame: &[u8]) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        Bytes::copy_from_slice(frame),
    ))
    .await
    .expect("send binary frame");
}

/// The next WebSocket message (pings from the broker are answered by tungstenite itself).
async fn ws_next(ws: &mut WsClient) -> tokio_tungstenite::tungstenite::Message {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("timed out waiting for a WebSocket message")
        .expect("WebSocket closed")
        .expect("WebSocket error")
}

/// Reads binary messages until exactly `n` MQTT packets have arrived; returns their bytes
/// decoded, with any bytes of a following packet left in `buf`.
async fn ws_packets(ws: &mut WsClient, buf: &mut bytes::BytesMut, n: usize) -> Vec<Packet> {
    use tokio_tungstenite::tungstenite::Message;
    let mut packets = Vec::new();
    loop {
        while packets.len() < n {
            match decode(buf, usize::MAX).expect("broker sent a valid packet") {
                Some(p) => packets.push(p),
                None => break,
            }
        }
        if packets.len() == n {
            return packets;
        }
        match ws_next(ws).await {
            Message::Binary(data) => buf.extend_from_slice(&data),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
}

/// WebSocket framing against a third-party client (tungstenite): one MQTT packet split over
/// several binary frames, several packets in one frame, packet boundaries inside frames, a
/// WebSocket Ping answered with a Pong while the MQTT session stays up, and the `mqttv3.1`
/// subprotocol selected when offered.
#[tokio::test]
async fn websocket_framing_with_a_third_party_client() {
    use tokio_tungstenite::tungstenite::Message;
    use ws_bytes::*;
    let broker =
        start_broker(|c| c.listeners = vec![ListenerConfig::new(TransportKind::Ws, loopback())])
            .await;
    let addr = broker.local_addr();
    let (mut ws, selected) = ws_client(addr, "mqtt").await;
    assert_eq!(selected.as_deref(), Some("mqtt"));

    // CONNECT split over three frames; the first holds only the fixed header's first byte.
    ws_send(&mut ws, &CONNECT[..1]).await;
    ws_send(&mut ws, &CONNECT[1..6]).await;
    ws_send(&mut ws, &CONNECT[6..]).await;
    let mut buf = bytes::BytesMut::new();
    let connack = ws_packets(&mut ws, &mut buf, 1).await;
    let mut expected = bytes::BytesMut::from(CONNACK_ACCEPTED);
    assert_eq!(
        connack,
        vec![decode(&mut expected, usize::MAX).unwrap().unwrap()]
    );

    // SUBSCRIBE, PUBLISH QoS 1 and PINGREQ in a single frame.
    ws_send(&mut ws, &[SUBSCRIBE, PUBLISH_QOS1, PINGREQ].concat()).await;
    let got = ws_packets(&mut ws, &mut buf, 4).await;
    assert_eq!(
        got[0],
        Packet::SubAck(SubAck {
            properties: None,
            pid: 1,
            codes: vec![SubAckCode::Granted(QoS::AtLeastOnce)]
        }),
        "{got:?}"
    );
    assert!(got.contains(&Packet::PubAck(2)), "{got:?}");
    assert!(got.contains(&Packet::PingResp), "{got:?}");
    let delivered = got
        .iter()
        .find_map(|p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("own PUBLISH not delivered: {got:?}"));
    assert_eq!(
        (&*delivered.topic, &delivered.payload[..], delivered.qos),
        ("a/b", &b"hi"[..], QoS::AtLeastOnce)
    );

    // PUBACK + PINGREQ cut into frames whose boundaries fall inside both packets.
    let both = [&puback(delivered.pid.unwrap())[..], PINGREQ].concat();
    ws_send(&mut ws, &both[..3]).await;
    ws_send(&mut ws, &both[3..5]).await;
    ws_send(&mut ws, &both[5..]).await;
    let got = ws_packets(&mut ws, &mut buf, 1).await;
    let mut pingresp = bytes::BytesMut::from(PINGRESP);
    assert_eq!(
        got,
        vec![decode(&mut pingresp, usize::MAX).unwrap().unwrap()]
    );

    // A WebSocket Ping is answered with a Pong carrying the same payload...
    {
        use futures_util::SinkExt;
        ws.send(Message::Ping(Bytes::from_static(b"still there?")))
            .await
            .unwrap();
    }
    match ws_next(&mut ws).await {
        Message::Pong(data) => assert_eq!(&data[..], b"still there?"),
        other => panic!("expected a Pong, got {other:?}"),
    }
    // ...and the MQTT session goes on over the same connection.
    ws_send(&mut ws, &[PUBLISH_QOS0, PINGREQ].concat()).await;
    // (The PINGRESP and the routed PUBLISH may come in either order.)
    let got = ws_packets(&mut ws, &mut buf, 2).await;
    assert!(got.contains(&Packet::PingResp), "{got:?}");
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"after ping")),
        "{got:?}"
    );
    assert!(buf.is_empty(), "unexpected bytes: {buf:?}");
    assert_eq!(broker.stats().connections.websocket, 1);

    // The `mqttv3.1` subprotocol is selected when the client offers it, and an MQTT 3.1
    // (MQIsdp) client connects and reaches the subscriber above.
    let (mut v31, selected) = ws_client(addr, "mqttv3.1").await;
    assert_eq!(selected.as_deref(), Some("mqttv3.1"));
    ws_send(&mut v31, CONNECT_V31).await;
    let mut v31_buf = bytes::BytesMut::new();
    let got = ws_packets(&mut v31, &mut v31_buf, 1).await;
    let mut expected = bytes::BytesMut::from(CONNACK_ACCEPTED);
    assert_eq!(
        got,
        vec![decode(&mut expected, usize::MAX).unwrap().unwrap()]
    );
    ws_send(&mut v31, PUBLISH_QOS1).await;
    assert_eq!(
        ws_packets(&mut v31, &mut v31_buf, 1).await,
        vec![Packet::PubAck(2)]
    );
    let got = ws_packets(&mut ws, &mut buf, 1).await;
    match &got[0] {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"hi"),
        other => panic!("expected the PUBLISH from the 3.1 client, got {other:?}"),
    }
    assert_eq!(broker.stats().connections.websocket, 2);
}

/// `max_connections` of a listener refuses the connection beyond it with CONNACK 0x03
/// (server unavailable) and closes it, while other listeners, and the clients already
/// connected, carry on; a freed slot is usable again.
#[tokio::test]
async fn per_listener_max_connections_refuses_only_on_that_listener() {
    let pki = TestPki::new("listener-limit");
    let broker = start_broker(|c| {
        c.listeners = vec![
            ListenerConfig {
                max_connections: Some(2),
                ..ListenerConfig::tcp(loopback())
            },
            ListenerConfig {
                max_connections: Some(1),
                ..tls_listener(&pki, TransportKind::Tls)
            },
            ListenerConfig::new(TransportKind::Ws, loopback()),
        ];
    })
    .await;
    let refused_on = |t: TransportKind, id: &'static str| {
        let (broker, pki) = (&broker, &pki);
        async move {
            let (mut c, ack) =
                RawClient::connect_over(open(broker, pki, t).await, connect_packet(id, true)).await;
            assert_eq!(
                ack.code,
                ConnectReturnCode::ServerUnavailable,
                "{t:?} beyond max_connections"
            );
            assert!(!ack.session_present);
            c.expect_closed().await;
        }
    };

    let tcp1 = client(
        &broker,
        &pki,
        TransportKind::Tcp,
        connect_packet("tcp1", true),
    )
    .await;
    let mut tcp2 = client(
        &broker,
        &pki,
        TransportKind::Tcp,
        connect_packet("tcp2", true),
    )
    .await;
    refused_on(TransportKind::Tcp, "tcp3").await;
    let _tls1 = client(
        &broker,
        &pki,
        TransportKind::Tls,
        connect_packet("tls1", true),
    )
    .await;
    refused_on(TransportKind::Tls, "tls2").await;
    // The unlimited WebSocket listener accepts beyond both limits.
    let mut ws = Vec::new();
    for i in 0..3 {
        ws.push(
            client(
                &broker,
                &pki,
                TransportKind::Ws,
                connect_packet(&format!("ws{i}"), true),
            )
            .await,
        );
    }
    // The clients within the limit are unaffected.
    ws[0].subscribe(1, &[("limit/#", QoS::AtLeastOnce)]).await;
    tcp2.publish_qos2("limit/a", b"still here", 1).await;
    let p = ws[0].recv_publish().await;
    assert_eq!(&p.payload[..], b"still here");
    ws[0].send(&Packet::PubAck(p.pid.unwrap())).await;
    let stats = broker.stats();
    assert_eq!(
        (
            stats.connections.tcp,
            stats.connections.tls,
            stats.connections.websocket
        ),
        (2, 1, 3)
    );

    // Once a TCP client leaves, its slot is free again.
    drop(tcp1);
    wait_connections(&broker, 5).await;
    let _tcp4 = client(
        &broker,
        &pki,
        TransportKind::Tcp,
        connect_packet("tcp4", true),
    )
    .await;
    refused_on(TransportKind::Tcp, "tcp5").await;
}

/// The seed's shorthand `server.port` + `security.enableTLS`/`certFile`/`keyFile` (paths
/// relative to the config file) opens exactly one TLS listener, and TLS clients use it.
#[tokio::test]
async fn seed_tls_shorthand_opens_one_tls_listener() {
    let pki = TestPki::new("seed-tls");
    let port = free_port();
    let cfg = pki.path("broker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n\
             security:\n  enableTLS: true\n  certFile: server.pem\n  keyFile: server.key\n\
             admin:\n  enabled: false\n"
        ),
    )
    .unwrap();
    let config = mqtt_broker::Config::load(&cfg).expect("seed TLS shorthand loads");
    let effective = config.effective_listeners();
    assert_eq!(effective.len(), 1, "{effective:?}");
    assert_eq!(effective[0].protocol, TransportKind::Tls);
    assert_eq!(effective[0].cert_file, Some(pki.path("server.pem")));
    assert_eq!(effective[0].key_file, Some(pki.path("server.key")));
    let broker = mqtt_broker::Broker::start(config)
        .await
        .expect("broker starts");
    let listeners = broker.listeners();
    assert_eq!(listeners.len(), 1, "{listeners:?}");
    assert_eq!(listeners[0].transport, TransportKind::Tls);
    let addr = listeners[0].addr;
    assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], port)));

    let pki = &pki;
    let tls = |id: &'static str| async move {
        let stream = tls_stream(addr, pki.client_config(None))
            .await
            .expect("TLS handshake");
        let (c, ack) = RawClient::connect_over(stream, connect_packet(id, true)).await;
        assert_eq!(ack.code, ConnectReturnCode::Accepted);
        c
    };
    let mut sub = tls("seed-sub").await;
    sub.subscribe(1, &[("seed/#", QoS::ExactlyOnce)]).await;
    let mut publ = tls("seed-pub").await;
    publ.publish_qos2("seed/tls", b"over the shorthand", 1)
        .await;
    assert_eq!(&sub.receive_qos2().await.payload[..], b"over the shorthand");
    assert_eq!(broker.stats().connections.tls, 2);

    // The port speaks TLS only: a plain MQTT CONNECT gets no CONNACK.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let mut connect = bytes::BytesMut::new();
    encode(
        &Packet::Connect(Box::new(connect_packet("plain", true))),
        &mut connect,
    );
    plain.write_all(&connect).await.unwrap();
    let mut reply = [0u8; 2];
    let n = tokio::time::timeout(WAIT, plain.read(&mut reply))
        .await
        .expect("the TLS port neither answered nor closed")
        .unwrap_or(0);
    assert!(
        n == 0 || reply[0] != 0x20,
        "plain MQTT got a CONNACK on the TLS port"
    );
}

/// Runs `mqtt-broker --check-config FILE`.
async fn check_config(file: &std::path::Path) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtt-broker"));
    cmd.arg("--check-config").arg(file);
    run_bounded(cmd, Duration::from_secs(30), "mqtt-broker --check-config").await
}

/// `--check-config` on a config whose certificate or key file is missing or malformed exits
/// 1 with a message naming the file, for `listeners:` and for the seed shorthand; the same
/// config with good files exits 0.
#[tokio::test]
async fn check_config_names_a_missing_or_malformed_certificate_file() {
    let pki = TestPki::new("check-config");
    std::fs::write(pki.path("garbage-cert.pem"), "this is not a certificate\n").unwrap();
    std::fs::write(
        pki.path("broken-cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(pki.path("garbage-key.pem"), "this is not a key\n").unwrap();
    let listener = |cert: &str, key: &str| {
        format!(
            "listeners:\n  - bind: 127.0.0.1:0\n    protocol: tls\n    cert_file: {cert}\n    key_file: {key}\n"
        )
    };
    let seed = |cert: &str, key: &str| {
        format!(
            "server:\n  port: 18883\nsecurity:\n  enableTLS: true\n  certFile: {cert}\n  keyFile: {key}\n"
        )
    };
    let cases = [
        (
            "missing-cert",
            listener("missing-cert.pem", "server.key"),
            "missing-cert.pem",
            "listeners[0].cert_file (listener ",
        ),
        (
            "garbage-cert",
            listener("garbage-cert.pem", "server.key"),
            "garbage-cert.pem",
            "listeners[0].cert_file",
        ),
        (
            "broken-cert",
            listener("broken-cert.pem", "server.key"),
            "broken-cert.pem",
            "listeners[0].cert_file",
        ),
        (
            "missing-key",
            listener("server.pem", "missing-key.pem"),
            "missing-key.pem",
            "listeners[0].key_file (listener ",
        ),
        (
            "garbage-key",
            listener("server.pem", "garbage-key.pem"),
            "garbage-key.pem",
            "listeners[0].key_file",
        ),
        (
            "seed-missing-cert",
            seed("missing-seed.pem", "server.key"),
            "missing-seed.pem",
            "security.cert_file",
        ),
        (
            "seed-garbage-key",
            seed("server.pem", "garbage-key.pem"),
            "garbage-key.pem",
            "security.key_file",
        ),
    ];
    for (name, yaml, file, key) in cases {
        let cfg = pki.path(&format!("{name}.yaml"));
        std::fs::write(&cfg, &yaml).unwrap();
        let out = check_config(&cfg).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: exit status {}; stderr:\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains(&pki.path(file).display().to_string()),
            "{name}: the error does not name {file}:\n{stderr}"
        );
        assert!(
            stderr.contains(key),
            "{name}: the error does not name the key {key}:\n{stderr}"
        );
    }
    // The same shapes with good files pass.
    for (name, yaml) in [
        ("good-listener", listener("server.pem", "server.key")),
        ("good-seed", seed("server.pem", "server.key")),
    ] {
        let cfg = pki.path(&format!("{name}.yaml"));
        std::fs::write(&cfg, &yaml).unwrap();
        let out = check_config(&cfg).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("protocol: tls"), "{name}:\n{stdout}");
    }
}

/// Prometheus `/metrics` counts open connections per transport
/// (`mqtt_connections{transport="tcp"|"tls"|"ws"|"wss"}`) while clients are connected on
/// each, and follows them as they leave.
#[tokio::test]
async fn metrics_count_connections_per_transport() {
    let pki = TestPki::new("metrics");
    let broker = start_broker(|c| {
        c.admin.bind = "127.0.0.1:0".parse().unwrap();
        c.listeners = vec![
            ListenerConfig::tcp(loopback()),
            tls_listener(&pki, TransportKind::Tls),
            ListenerConfig::new(TransportKind::Ws, loopback()),
            tls_listener(&pki, TransportKind::Wss),
        ];
    })
    .await;
    let admin = broker.admin_addr().expect("admin listener bound");
    let series = |t: &str| format!("mqtt_connections{{transport=\"{t}\"}}");
    // Distinct counts per transport, so that a label mix-up cannot pass.
    let want = [
        (TransportKind::Tcp, 1),
        (TransportKind::Tls, 2),
        (TransportKind::Ws, 3),
        (TransportKind::Wss, 4),
    ];
    let mut clients = Vec::new();
    for (t, n) in want {
        for i in 0..n {
            let id = format!("{}-{i}", t.as_str());
            clients.push((t, client(&broker, &pki, t, connect_packet(&id, true)).await));
        }
    }
    let m = http::scrape(admin, None).await;
    for (t, n) in want {
        assert_eq!(m.value(&series(t.as_str())), n as f64, "{}", m.0);
    }

    // Two TLS, one WS and three WSS clients leave; the gauges follow.
    let mut left = [
        (TransportKind::Tls, 2),
        (TransportKind::Ws, 1),
        (TransportKind::Wss, 3),
    ];
    clients.retain(|(t, _)| match left.iter_mut().find(|(k, _)| k == t) {
        Some((_, n)) if *n > 0 => {
            *n -= 1;
            false
        }
        _ => true,
    });
    let want_after = [("tcp", 1.0), ("tls", 0.0), ("ws", 2.0), ("wss", 1.0)];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = http::scrape(admin, None).await;
        let got: Vec<_> = want_after
            .iter()
            .map(|(t, _)| m.try_value(&series(t)))
            .collect();
        if got.iter().zip(want_after).all(|(g, (_, w))| *g == Some(w)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauges {got:?}, expected {want_after:?}:\n{}",
            m.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(clients.len(), 4);
}

/// A TLS client that connects by IP address sends the IP as SNI (OpenSSL, so Mosquitto's
/// clients, do): that is ordinary use, not a problem, and logs no warning (issue 21).
#[tokio::test]
async fn tls_client_connecting_by_ip_logs_no_warning() {
    let pki = TestPki::new("sni-ip");
    let port = free_port();
    let cfg = pki.path("broker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n  - bind: 127.0.0.1:{port}\n    protocol: tls\n    cert_file: {}\n    key_file: {}\n",
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        ),
    )
    .unwrap();
    let mut broker = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtt-broker"))
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut publ = tokio::process::Command::new("mosquitto_pub");
    publ.args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"])
        .arg(pki.path("ca.pem"))
        .args(["-t", "sni/test", "-m", "x", "-q", "1"]);
    let out = run_bounded(publ, Duration::from_secs(20), "mosquitto_pub over TLS").await;
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = broker.start_kill();
    let log = broker.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&log.stderr);
    assert!(
        stderr.contains("client connected"),
        "the client got through: {stderr}"
    );
    let warnings: Vec<_> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warnings.is_empty(),
        "warnings in ordinary use: {warnings:#?}"
    );
}
