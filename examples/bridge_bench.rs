//! Bridged QoS 1 throughput, local → remote, against a client publishing straight to the
//! remote, in the same run.
//!
//! Starts Debian's Mosquitto on a free loopback port as the remote and this broker
//! (embedded) with a bridge forwarding `bench/#` to it. One QoS 1 publisher keeps `window`
//! PUBLISH packets unacknowledged; one QoS 1 subscriber on the remote receives. "direct":
//! the publisher talks to Mosquitto; "bridged": to this broker, whose bridge forwards each
//! message to Mosquitto and acknowledges it here only once Mosquitto did. The rate is what
//! the subscriber received per second; every message is checked to arrive.
//!
//! ```sh
//! cargo run --release --example bridge_bench
//! cargo run --release --example bridge_bench -- --messages 50000 --runs 3 --max-inflight 20
//! ```

use bytes::{Bytes, BytesMut};
use clap::Parser;
use mqtt_broker::config::{BridgeConfig, Config, Direction, TopicRule};
use mqtt_broker::core::control::Control;
use mqtt_broker::protocol::{codec, Connect, Packet, ProtocolLevel, Publish, QoS, Subscribe};
use mqtt_broker::{Broker, BrokerHandle};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bridge_bench",
    about = "QoS 1 through a bridge vs straight to the remote"
)]
struct Cli {
    /// Messages per run.
    #[arg(long, default_value_t = 20_000)]
    messages: u32,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Unacknowledged PUBLISH packets the publisher keeps in flight.
    #[arg(long, default_value_t = 100)]
    window: u16,
    /// The bridge's `max_inflight` (Mosquitto's own limit is 20 by default).
    #[arg(long, default_value_t = 20)]
    max_inflight: u16,
    /// Runs of each mode (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Debian's Mosquitto on a free port; killed on drop.
struct Mosquitto(Child, u16);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_mosquitto() -> Res<Mosquitto> {
    let port = free_port()?;
    let conf = std::env::temp_dir().join(format!("bridge-bench-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nset_tcp_nodelay true\n"),
    )?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("mosquitto is required (apt-get install mosquitto): {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("mosquitto did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Mosquitto(child, port))
}

/// A minimal MQTT 3.1.1 client over one socket.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn connect(addr: SocketAddr, id: &str) -> Res<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            buf: BytesMut::new(),
        };
        c.send(&Packet::Connect(Box::new(Connect {
            bridge: false,
            protocol: ProtocolLevel::V311,
            clean_session: true,
            keep_alive: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: None,
        })))
        .await?;
        match c.recv().await? {
            Packet::ConnAck(_) => Ok(c),
            other => Err(format!("expected CONNACK, got {other:?}").into()),
        }
    }

    async fn send(&mut self, p: &Packet) -> Res<()> {
        let mut out = BytesMut::new();
        codec::encode(p, &mut out);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Res<Packet> {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, usize::MAX)? {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err("connection closed".into());
            }
        }
    }
}

/// Publishes `n` QoS 1 messages to `publish_to` keeping `window` in flight, while a
/// subscriber on `remote` receives them; returns messages per second at the subscriber.
async fn run(cli: &Cli, publish_to: SocketAddr, remote: SocketAddr, tag: &str) -> Res<f64> {
    let mut sub = Client::connect(remote, &format!("sub-{tag}")).await?;
    sub.send(&Packet::Subscribe(Subscribe::new(
        1,
        vec![("#".into(), QoS::AtLeastOnce)],
    )))
    .await?;
    let _ = sub.recv().await?;
    let n = cli.messages;
    let receiver = tokio::spawn(async move {
        let mut got = 0u32;
        let mut first = None;
        while got < n {
            match sub.recv().await? {
                Packet::Publish(p) => {
                    first.get_or_insert_with(Instant::now);
                    if let Some(pid) = p.pid {
                        sub.send(&Packet::PubAck(pid)).await?;
                    }
                    got += 1;
                }
                _ => continue,
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Instant::now())
    });
    let mut publisher = Client::connect(publish_to, &format!("pub-{tag}")).await?;
    let payload = Bytes::from(vec![b'x'; cli.payload]);
    let start = Instant::now();
    let mut in_flight = 0u32;
    let mut sent = 0u32;
    let topic: std::sync::Arc<str> = format!("bench/{tag}").into();
    while sent < n || in_flight > 0 {
        while sent < n && in_flight < u32::from(cli.window) {
            let pid = (sent % 65_000 + 1) as u16;
            publisher
                .send(&Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: topic.clone(),
                    pid: Some(pid),
                    payload: payload.clone(),
                    properties: None,
                }))
                .await?;
            sent += 1;
            in_flight += 1;
        }
        if let Packet::PubAck(_) = publisher.recv().await? {
            in_flight -= 1;
        }
    }
    let end = tokio::time::timeout(Duration::from_secs(120), receiver)
        .await
        .map_err(|_| "the subscriber did not get every message within 120 s")???;
    Ok(f64::from(n) / end.duration_since(start).as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match bench(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bridge_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(cli: &Cli) -> Res<()> {
    let mosquitto = start_mosquitto()?;
    let remote = SocketAddr::from(([127, 0, 0, 1], mosquitto.1));
    let mut bridge = BridgeConfig::new("bench", &remote.to_string());
    bridge.max_inflight = cli.max_inflight;
    bridge.topics = vec![TopicRule {
        pattern: "bench/#".into(),
        direction: Direction::Out,
        qos: 1,
        local_prefix: String::new(),
        remote_prefix: String::new(),
    }];
    let mut config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        bridges: vec![bridge],
        ..Default::default()
    };
    // Mosquitto has no per-client publish rate; ours (1000/s by default) would measure the
    // publisher's budget, not the bridge.
    config.limits.publish_rate = 0;
    config.limits.publish_bytes_rate = 0;
    let broker: BrokerHandle = Broker::start(config).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.bridges().first().map(|b| b.state) != Some("connected") {
        if Instant::now() > deadline {
            return Err("the bridge did not connect".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut direct, mut bridged) = (Vec::new(), Vec::new());
    for i in 0..cli.runs {
        direct.push(run(cli, remote, remote, &format!("d{i}")).await?);
        bridged.push(run(cli, broker.local_addr(), remote, &format!("b{i}")).await?);
    }
    let (d, b) = (median(direct.clone()), median(bridged.clone()));
    println!(
        "{}",
        serde_json::json!({
            "scenario": "bridge-qos1",
            "messages": cli.messages,
            "payload": cli.payload,
            "window": cli.window,
            "max_inflight": cli.max_inflight,
            "direct_msgs_per_s": d.round(),
            "bridged_msgs_per_s": b.round(),
            "ratio": (b / d * 100.0).round() / 100.0,
            "runs_direct": direct.iter().map(|v| v.round()).collect::<Vec<_>>(),
            "runs_bridged": bridged.iter().map(|v| v.round()).collect::<Vec<_>>(),
        })
    );
    broker.shutdown().await;
    Ok(())
}
