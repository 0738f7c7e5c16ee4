//! Helpers shared by the integration tests: start a broker on an ephemeral loopback port,
//! and a raw MQTT client over a real TCP socket that sends exactly the bytes a test wants.
#![allow(dead_code)]

pub mod clients;
pub mod logs;
pub mod nats;
#[allow(unused_imports)]
pub use logs::{log_buffer, log_lines};

use bytes::BytesMut;
use mqtt_broker::config::Config;
use mqtt_broker::protocol::*;
use mqtt_broker::{Broker, BrokerHandle};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A loopback port nobody listens on right now (for configs and child processes that need
/// the port before the broker starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);

/// Starts a broker on 127.0.0.1 with a free port, after letting the test adjust the config.
pub async fn start_broker(adjust: impl FnOnce(&mut Config)) -> BrokerHandle {
    let mut config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        ..Default::default()
    };
    adjust(&mut config);
    Broker::start(config).await.expect("broker starts")
}

/// A CONNECT packet with the given id and clean-session flag, keep-alive 30 s.
pub fn connect_packet(client_id: &str, clean_session: bool) -> Connect {
    Connect {
        bridge: false,
        properties: None,
        protocol: ProtocolLevel::V311,
        clean_session,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

/// A PUBLISH packet.
pub fn publish(topic: &str, payload: &[u8], qos: QoS, pid: Option<u16>, retain: bool) -> Packet {
    Packet::Publish(Publish {
        properties: None,
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        pid,
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

/// Any byte stream a test client can speak MQTT over (TCP, TLS, WebSocket).
pub trait ByteStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ByteStream for T {}

/// A client that speaks MQTT byte by byte over a real socket.
pub struct RawClient {
    pub stream: Box<dyn ByteStream>,
    buf: BytesMut,
    /// Protocol revision: set by the CONNECT it sends (packets after it depend on it).
    pub level: mqtt_broker::protocol::ProtocolLevel,
}

impl RawClient {
    /// Opens a TCP connection.
    pub async fn open(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        RawClient::over(Box::new(stream))
    }

    /// Uses an already established stream (TLS, WebSocket).
    pub fn over(stream: Box<dyn ByteStream>) -> RawClient {
        RawClient {
            stream,
            buf: BytesMut::new(),
            level: mqtt_broker::protocol::ProtocolLevel::V311,
        }
    }

    /// Sends CONNECT over an established stream and returns the CONNACK.
    pub async fn connect_over(
        stream: Box<dyn ByteStream>,
        connect: Connect,
    ) -> (RawClient, ConnAck) {
        let mut c = RawClient::over(stream);
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Some(Packet::ConnAck(ack)) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Opens a connection, sends CONNECT and returns the CONNACK.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let mut c = RawClient::open(addr).await;
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Some(Packet::ConnAck(ack)) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and asserts the connection was accepted.
    pub async fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> (RawClient, bool) {
        let (c, ack) = RawClient::connect_with(addr, connect_packet(client_id, clean)).await;
        assert_eq!(ack.code, ConnectReturnCode::Accepted);
        (c, ack.session_present)
    }

    /// Sends one packet.
    pub async fn send(&mut self, p: &Packet) {
        if let Packet::Connect(c) = p {
            self.level = c.protocol;
        }
        let mut out = BytesMut::new();
        mqtt_broker::protocol::codec::encode_with(p, self.level, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    /// Sends one packet, ignoring a write error: for clients that outlive broker crashes,
    /// which learn of a dead connection from their next read and reconnect.
    pub async fn send_lossy(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        mqtt_broker::protocol::codec::encode_with(p, self.level, &mut out);
        let _ = self.stream.write_all(&out).await;
    }

    /// Sends raw bytes; errors (the broker may already have closed) are ignored.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Receives the next packet, or `None` if the broker closed the connection.
    /// Panics if nothing arrives within [`WAIT`].
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .await
            .expect("timed out waiting for a packet")
    }

    /// `Err` on timeout, `Ok(None)` on close.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Some(p) =
                mqtt_broker::protocol::codec::decode_with(&mut self.buf, usize::MAX, self.level)
                    .expect("broker sent a valid packet")
            {
                return Ok(Some(p));
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Asserts that nothing arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(p) = self.recv_within(d).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Asserts the broker closes the connection within [`WAIT`] (packets before it are skipped).
    pub async fn expect_closed(&mut self) {
        loop {
            match self.recv_within(WAIT).await {
                Ok(None) => return,
                Ok(Some(_)) => continue,
                Err(()) => panic!("connection was not closed"),
            }
        }
    }

    /// Subscribes and returns the SUBACK codes.
    pub async fn subscribe(&mut self, pid: u16, filters: &[(&str, QoS)]) -> Vec<SubAckCode> {
        self.send(&Packet::Subscribe(Subscribe {
            options: Vec::new(),
            properties: None,
            pid,
            filters: filters.iter().map(|(f, q)| (f.to_string(), *q)).collect(),
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(s)) => {
                assert_eq!(s.pid, pid);
                s.codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Receives a PUBLISH, panicking on anything else.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Publishes at QoS 2 and completes the flow, asserting each acknowledgement.
    pub async fn publish_qos2(&mut self, topic: &str, payload: &[u8], pid: u16) {
        self.send(&publish(topic, payload, QoS::ExactlyOnce, Some(pid), false))
            .await;
        assert_eq!(self.recv().await, Some(Packet::PubRec(pid)));
        self.send(&Packet::PubRel(pid)).await;
        assert_eq!(self.recv().await, Some(Packet::PubComp(pid)));
    }

    /// Receives a QoS 2 PUBLISH and completes the flow; returns it.
    pub async fn receive_qos2(&mut self) -> Publish {
        let p = self.recv_publish().await;
        assert_eq!(p.qos, QoS::ExactlyOnce);
        let pid = p.pid.expect("pid");
        self.send(&Packet::PubRec(pid)).await;
        assert_eq!(self.recv().await, Some(Packet::PubRel(pid)));
        self.send(&Packet::PubComp(pid)).await;
        p
    }
}

/// A throw-away PKI for TLS tests: a CA, a server certificate for localhost/127.0.0.1, and
/// client certificates, written as PEM files into a temporary directory.
pub struct TestPki {
    pub dir: std::path::PathBuf,
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
}

impl TestPki {
    /// Creates the CA and the server certificate.
    pub fn new(name: &str) -> TestPki {
        let dir = std::env::temp_dir().join(format!("mqtt-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mqtt-broker test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let pki = TestPki {
            dir,
            ca_params,
            ca_key,
        };
        pki.issue("server", vec!["localhost".into(), "127.0.0.1".into()]);
        pki
    }

    /// Issues a certificate signed by the CA; writes NAME.pem and NAME.key.
    pub fn issue(&self, name: &str, sans: Vec<String>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// A self-signed certificate no CA vouches for; writes NAME.pem and NAME.key.
    pub fn rogue(&self, name: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// Path of a file in the PKI directory.
    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.join(file)
    }

    /// A rustls client config trusting the CA, optionally presenting client certificate NAME.
    pub fn client_config(
        &self,
        client_cert: Option<&str>,
    ) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client_cert {
            Some(name) => {
                let certs = CertificateDer::pem_file_iter(self.path(&format!("{name}.pem")))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        std::sync::Arc::new(config)
    }
}

/// Opens a TLS connection to `addr` (server name "localhost").
pub async fn tls_stream(
    addr: SocketAddr,
    config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
) -> std::io::Result<Box<dyn ByteStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}

/// Performs a WebSocket upgrade (subprotocol `mqtt`) over `stream` and returns the MQTT byte stream.
pub async fn ws_upgrade<S>(stream: S, url: &str) -> Result<Box<dyn ByteStream>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap()),
        Some("mqtt")
    );
    Ok(Box::new(mqtt_broker::transport::ws::WsByteStream::new(ws)))
}

/// The device-fleet simulator binary (`src/bin/esp8266-sim.rs`), which cargo builds before
/// the integration tests.
pub fn simulator() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_esp8266-sim"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// One PUBLISH as a watching client received it.
pub struct Seen {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// Collects every PUBLISH until `stop` fires and the broker has been quiet for 300 ms.
pub async fn collect(
    mut client: RawClient,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut stopping = false;
    loop {
        if !stopping {
            stopping = stop.try_recv().is_ok();
        }
        let wait = if stopping { 300 } else { 50 };
        match client.recv_within(Duration::from_millis(wait)).await {
            Ok(Some(Packet::Publish(p))) => seen.push(Seen {
                topic: p.topic.to_string(),
                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                retain: p.retain,
            }),
            Ok(Some(_)) => {}
            Ok(None) => panic!("broker closed the watcher connection"),
            Err(()) if stopping => return seen,
            Err(()) => {}
        }
    }
}

/// The broker binary started by [`start_binary`]; killed with SIGKILL when dropped.
pub struct Child(pub std::process::Child);

impl Child {
    /// SIGKILL, and waits until the process is gone.
    pub fn kill_9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Starts the broker binary with `--config cfg` and waits until it accepts on `port`.
pub fn start_binary(cfg: &std::path::Path, port: u16) -> Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-broker"))
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the broker binary");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Child(child)
}

/// A built example or test plugin component, `path` relative to the repository root; fails
/// (never skips) with the build command when it was not built.
pub fn built_plugin(path: &str) -> std::path::PathBuf {
    let full = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    assert!(
        full.is_file(),
        "{} is missing: build the example plugins with `bash .ci/plugins.sh`",
        full.display()
    );
    full
}

/// A `plugins:` entry parsed from YAML as the broker's config file is: `config` is the flow
/// map of its `config:` section, `rest` further lines of the entry (`capabilities: ...`,
/// `events: ...`; empty: none).
pub fn plugin_entry(
    name: &str,
    path: &std::path::Path,
    config: &str,
    rest: &str,
) -> mqtt_broker::plugins::PluginConfig {
    let path = serde_json::to_string(path).expect("path as a YAML string");
    let yaml = format!("name: {name}\npath: {path}\nconfig: {config}\n{rest}\n");
    serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("plugin entry {yaml:?}: {e}"))
}

/// Opens a connection and sends CONNECT: the CONNACK, or what came instead within `within`.
/// Never panics on a refused or closed connection (the node may be gone).
pub async fn try_connect(
    addr: SocketAddr,
    connect: Connect,
    within: Duration,
) -> Result<(RawClient, ConnAck), String> {
    let stream = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("TCP connect to {addr} timed out"))?
        .map_err(|e| format!("TCP connect to {addr}: {e}"))?;
    stream.set_nodelay(true).ok();
    let mut c = RawClient::over(Box::new(stream));
    c.level = connect.protocol;
    c.send_lossy(&Packet::Connect(Box::new(connect))).await;
    match c.recv_within(within).await {
        Ok(Some(Packet::ConnAck(ack))) => Ok((c, ack)),
        Ok(other) => Err(format!("instead of CONNACK: {other:?}")),
        Err(()) => Err(format!("no CONNACK within {within:?}")),
    }
}
