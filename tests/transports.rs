//! TCP, TLS, WebSocket and WebSocket-over-TLS listeners in one broker: the same MQTT
//! behaviour on each, across transports, client certificates, and hostile handshakes.
//! Certificates are generated at test time (rcgen); no private key is committed.

mod common;

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

    // A TLS client that stalls mid-handshake is closed after connect_timeout without effect.
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
