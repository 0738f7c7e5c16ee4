//! Soak test of the broker binary: mixed load for a configurable time, with the broker's
//! memory (RSS) and open file descriptors printed every minute.
//!
//! Ignored by default (it runs for minutes). Run it with
//!
//! ```sh
//! SOAK_MINUTES=10 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! `SOAK_MINUTES` (default 10) is the load time, `SOAK_WARMUP_MINUTES` (default 2, at most a
//! third of the run) the warm-up after which RSS and file descriptors must stop growing,
//! `SOAK_SAMPLE_SECS` (default 60) the sampling period. The broker is the real binary
//! (`CARGO_BIN_EXE_mqtt-broker`) in its own process, so RSS and `/proc/PID/fd` are its
//! alone. All traffic goes to 127.0.0.1, from a fixed number of clients.
//!
//! The load: clients connecting and disconnecting (gracefully and abruptly), persistent and
//! clean sessions, QoS 0/1/2 publishing, retained updates and deletions, wills. The test
//! fails if any QoS 1/2 message confirmed to a publisher is not delivered to the persistent
//! subscribers (across their reconnects), if a QoS 2 message is delivered twice, if a will is
//! lost or published after a DISCONNECT, or if RSS or descriptors grow after warm-up.

use bytes::{Bytes, BytesMut};
use mqtt_broker::protocol::*;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Persistent subscribers that check delivery.
const CHECKERS: usize = 3;
/// Publishers (alternately persistent and clean sessions).
const PUBLISHERS: usize = 4;
/// Short-lived clean-session subscribers.
const CHURNERS: usize = 6;
/// Clients with wills that come and go.
const WILL_CLIENTS: usize = 3;
/// Retained topics cycled through.
const RETAINED_TOPICS: u64 = 50;
/// Upper bound of clients connected at once (+1 for the retained updater).
const MAX_CLIENTS: usize = CHECKERS + PUBLISHERS + CHURNERS + WILL_CLIENTS + 1;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tiny deterministic PRNG (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// A minimal MQTT client over the broker's own codec.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

type Io<T> = std::io::Result<T>;

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed by broker")
}

impl Client {
    async fn connect(addr: SocketAddr, c: Connect) -> Io<(Client, ConnAck)> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            buf: BytesMut::new(),
        };
        client.send(&Packet::Connect(Box::new(c))).await?;
        match client.recv_timeout(Duration::from_secs(10)).await? {
            Packet::ConnAck(a) if a.code == ConnectReturnCode::Accepted => Ok((client, a)),
            other => panic!("connection refused: {other:?}"),
        }
    }

    async fn send(&mut self, p: &Packet) -> Io<()> {
        let mut out = BytesMut::new();
        encode(p, &mut out);
        self.stream.write_all(&out).await
    }

    /// Cancel-safe: bytes read stay in `buf`.
    async fn recv(&mut self) -> Io<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, usize::MAX)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
            {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(closed());
            }
        }
    }

    async fn recv_timeout(&mut self, d: Duration) -> Io<Packet> {
        tokio::time::timeout(d, self.recv())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
    }

    async fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect).await;
        let _ = self.stream.shutdown().await;
    }
}

fn connect(id: &str, clean: bool) -> Connect {
    Connect {
        bridge: false,
        properties: None,
        protocol: ProtocolLevel::V311,
        clean_session: clean,
        keep_alive: 30,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    }
}

fn publish(topic: &str, payload: Vec<u8>, qos: QoS, pid: Option<u16>, retain: bool) -> Packet {
    Packet::Publish(Publish {
        properties: None,
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        pid,
        payload: Bytes::from(payload),
    })
}

/// Everything the clients observed, checked at the end.
#[derive(Default)]
struct Ledger {
    /// QoS 1/2 messages a publisher got PUBACK/PUBREC for: (publisher, seq) -> QoS.
    confirmed: HashMap<(u64, u64), QoS>,
    /// Every (publisher, seq) ever sent, confirmed or not.
    sent: HashSet<(u64, u64)>,
    /// Per checker: how often each data message was delivered (QoS 2 dedup applied).
    delivered: Vec<HashMap<(u64, u64), u32>>,
    /// Wills that must arrive (abrupt closes) and must not (DISCONNECT).
    wills_expected: HashSet<u64>,
    wills_forbidden: HashSet<u64>,
    /// Per checker: wills received.
    wills_received: Vec<HashSet<u64>>,
    /// Problems seen by churners (duplicates within a connection, missing RETAIN flags).
    errors: Vec<String>,
}

struct Shared {
    addr: SocketAddr,
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
    published: AtomicU64,
    received: AtomicU64,
    reconnects: AtomicU64,
}

fn parse_data(p: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(p).ok()?;
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.split(':').next()?.parse().ok()?))
}

/// A persistent subscriber: receives data and wills, acknowledges correctly (QoS 2 exactly
/// once, with its packet-id state kept across reconnects), and disconnects and comes back
/// every few seconds, sometimes abruptly.
async fn checker(shared: Arc<Shared>, k: usize, stop_reconnecting: Arc<AtomicBool>) {
    let id = format!("soak-check-{k}");
    let mut rng = Rng(0x1234_5678 + k as u64);
    let mut pending_qos2: HashSet<u16> = HashSet::new();
    let mut first = true;
    loop {
        let (mut c, ack) = Client::connect(shared.addr, connect(&id, false))
            .await
            .expect("checker connects");
        if first {
            // Subscribe once: the persistent session keeps the subscription.
            c.send(&Packet::Subscribe(Subscribe {
                options: Vec::new(),
                properties: None,
                pid: 1,
                filters: vec![
                    ("soak/data/#".into(), QoS::ExactlyOnce),
                    ("soak/will/#".into(), QoS::AtLeastOnce),
                ],
            }))
            .await
            .unwrap();
            first = false;
        } else {
            assert!(
                ack.session_present,
                "{id}: persistent session lost [MQTT-3.2.2-2]"
            );
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let online_for = rng.ms(3_000, 12_000);
        let until = Instant::now() + online_for;
        let abrupt = rng.next() % 2 == 0;
        loop {
            let stopping = stop_reconnecting.load(Ordering::Relaxed);
            let deadline = if stopping {
                Instant::now() + Duration::from_secs(3)
            } else {
                until
            };
            let p = tokio::select! {
                p = c.recv() => p,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if stopping { return; }
                    break;
                }
            };
            let p = match p {
                Ok(p) => p,
                Err(e) => panic!("{id}: connection lost: {e}"),
            };
            match p {
                Packet::Publish(p) => {
                    let deliver = match (p.qos, p.pid) {
                        (QoS::ExactlyOnce, Some(pid)) => {
                            c.send(&Packet::PubRec(pid)).await.unwrap();
                            // A DUP of a pending id is the same message again [MQTT-4.3.3-2].
                            pending_qos2.insert(pid)
                        }
                        (QoS::AtLeastOnce, Some(pid)) => {
                            c.send(&Packet::PubAck(pid)).await.unwrap();
                            true
                        }
                        _ => true,
                    };
                    if !deliver {
                        continue;
                    }
                    shared.received.fetch_add(1, Ordering::Relaxed);
                    let mut ledger = shared.ledger.lock().unwrap();
                    if p.topic.starts_with("soak/will/") {
                        if let Ok(n) = std::str::from_utf8(&p.payload).unwrap_or("").parse() {
                            ledger.wills_received[k].insert(n);
                        }
                    } else if p.qos != QoS::AtMostOnce {
                        let key = parse_data(&p.payload).expect("data payload");
                        *ledger.delivered[k].entry(key).or_default() += 1;
                    }
                }
                Packet::PubRel(pid) => {
                    pending_qos2.remove(&pid);
                    c.send(&Packet::PubComp(pid)).await.unwrap();
                }
                Packet::SubAck(_) | Packet::PingResp => {}
                other => panic!("{id}: unexpected {other:?}"),
            }
        }
        if abrupt {
            drop(c);
        } else {
            c.disconnect().await;
        }
        tokio::time::sleep(rng.ms(200, 2_000)).await;
    }
}

/// Publishes bursts of QoS 0/1/2 messages, completing every flow, then disconnects for a
/// while. Odd publishers use persistent sessions.
async fn publisher(shared: Arc<Shared>, k: u64) {
    let id = format!("soak-pub-{k}");
    let mut rng = Rng(0xabcdef + k);
    let mut seq = 0u64;
    let mut pid = 0u16;
    let topic = format!("soak/data/{k}");
    while !shared.stop.load(Ordering::Relaxed) {
        let (mut c, _) = Client::connect(shared.addr, connect(&id, k % 2 == 0))
            .await
            .expect("publisher connects");
        let burst = rng.range(50, 400);
        for _ in 0..burst {
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            seq += 1;
            let qos = QoS::from_u8((seq % 3) as u8).unwrap();
            let payload = format!("{k}:{seq}:{}", "x".repeat(rng.range(0, 200) as usize));
            pid = pid % 65_000 + 1;
            let p = (qos != QoS::AtMostOnce).then_some(pid);
            shared.ledger.lock().unwrap().sent.insert((k, seq));
            c.send(&publish(&topic, payload.into_bytes(), qos, p, false))
                .await
                .unwrap();
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    assert_eq!(
                        c.recv_timeout(Duration::from_secs(10)).await.unwrap(),
                        Packet::PubAck(pid)
                    );
                }
                QoS::ExactlyOnce => {
                    assert_eq!(
                        c.recv_timeout(Duration::from_secs(10)).await.unwrap(),
                        Packet::PubRec(pid)
                    );
                    c.send(&Packet::PubRel(pid)).await.unwrap();
                    assert_eq!(
                        c.recv_timeout(Duration::from_secs(10)).await.unwrap(),
                        Packet::PubComp(pid)
                    );
                }
            }
            if qos != QoS::AtMostOnce {
                shared
                    .ledger
                    .lock()
                    .unwrap()
                    .confirmed
                    .insert((k, seq), qos);
            }
            shared.published.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(rng.ms(2, 8)).await;
        }
        c.disconnect().await;
        tokio::time::sleep(rng.ms(100, 1_500)).await;
    }
}

/// Clean-session subscribers that come and go: wildcard data subscriptions at a random QoS,
/// and the retained topics; nothing arrives before SUBACK, live data never has RETAIN=1.
async fn churner(shared: Arc<Shared>, k: u64) {
    let mut rng = Rng(0x5eed + k);
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("soak-churn-{k}-{n}");
        let Ok((mut c, _)) = Client::connect(shared.addr, connect(&id, true)).await else {
            panic!("{id}: connect failed");
        };
        let qos = QoS::from_u8((rng.next() % 3) as u8).unwrap();
        let retained = rng.next() % 2 == 0;
        let filter = if retained {
            "soak/retained/#"
        } else {
            "soak/data/+"
        };
        c.send(&Packet::Subscribe(Subscribe {
            options: Vec::new(),
            properties: None,
            pid: 1,
            filters: vec![(filter.into(), qos)],
        }))
        .await
        .unwrap();
        let until = Instant::now() + rng.ms(300, 3_000);
        let mut seen_qos2 = HashSet::new();
        let mut got_suback = false;
        loop {
            let p = tokio::select! {
                p = c.recv() => p,
                _ = tokio::time::sleep_until(until.into()) => break,
            };
            let Ok(p) = p else {
                shared
                    .ledger
                    .lock()
                    .unwrap()
                    .errors
                    .push(format!("{id}: connection lost"));
                break;
            };
            match p {
                Packet::SubAck(_) => got_suback = true,
                Packet::Publish(p) => {
                    if !got_suback {
                        // [MQTT-3.8.4-1]: SUBACK comes before anything the subscription sends.
                        shared
                            .ledger
                            .lock()
                            .unwrap()
                            .errors
                            .push(format!("{id}: PUBLISH before SUBACK"));
                    }
                    if !retained && p.retain {
                        // [MQTT-3.3.1-9]: RETAIN is cleared on ordinary forwarding.
                        shared
                            .ledger
                            .lock()
                            .unwrap()
                            .errors
                            .push(format!("{id}: RETAIN=1 on a live message"));
                    }
                    match (p.qos, p.pid) {
                        (QoS::AtLeastOnce, Some(pid)) => {
                            c.send(&Packet::PubAck(pid)).await.unwrap()
                        }
                        (QoS::ExactlyOnce, Some(pid)) => {
                            if !retained {
                                let key = parse_data(&p.payload);
                                if !p.dup && !seen_qos2.insert(key) {
                                    shared
                                        .ledger
                                        .lock()
                                        .unwrap()
                                        .errors
                                        .push(format!("{id}: QoS 2 duplicate {key:?}"));
                                }
                            }
                            c.send(&Packet::PubRec(pid)).await.unwrap()
                        }
                        _ => {}
                    }
                    shared.received.fetch_add(1, Ordering::Relaxed);
                }
                Packet::PubRel(pid) => c.send(&Packet::PubComp(pid)).await.unwrap(),
                _ => {}
            }
        }
        if rng.next() % 3 == 0 {
            drop(c);
        } else {
            c.disconnect().await;
        }
        tokio::time::sleep(rng.ms(50, 500)).await;
    }
}

/// Updates and sometimes deletes retained messages.
async fn retainer(shared: Arc<Shared>) {
    let mut rng = Rng(0x7e7a1);
    let (mut c, _) = Client::connect(shared.addr, connect("soak-retainer", true))
        .await
        .unwrap();
    let mut pid = 0u16;
    let mut i = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        i += 1;
        pid = pid % 65_000 + 1;
        let topic = format!("soak/retained/{}", i % RETAINED_TOPICS);
        // One update in ten deletes the topic's retained message [MQTT-3.3.1-10].
        let payload = if rng.next() % 10 == 0 {
            Vec::new()
        } else {
            format!("r{i}:{}", "v".repeat(rng.range(0, 500) as usize)).into_bytes()
        };
        c.send(&publish(&topic, payload, QoS::AtLeastOnce, Some(pid), true))
            .await
            .unwrap();
        assert_eq!(
            c.recv_timeout(Duration::from_secs(10)).await.unwrap(),
            Packet::PubAck(pid)
        );
        tokio::time::sleep(rng.ms(20, 100)).await;
    }
    c.disconnect().await;
}

/// Clients with a will that either vanish (the will must be published) or DISCONNECT (it
/// must not be) [MQTT-3.1.2-8], [MQTT-3.14.4-3].
async fn will_client(shared: Arc<Shared>, k: u64) {
    let mut rng = Rng(0x3111 + k);
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let will_id = k * 1_000_000 + n;
        let mut c = connect(&format!("soak-will-{k}"), true);
        c.will = Some(LastWill {
            properties: None,
            topic: format!("soak/will/{k}").into(),
            payload: Bytes::from(will_id.to_string()),
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        let (client, _) = Client::connect(shared.addr, c).await.unwrap();
        tokio::time::sleep(rng.ms(200, 2_000)).await;
        let abrupt = rng.next() % 2 == 0;
        {
            let mut ledger = shared.ledger.lock().unwrap();
            if abrupt {
                ledger.wills_expected.insert(will_id);
            } else {
                ledger.wills_forbidden.insert(will_id);
            }
        }
        if abrupt {
            drop(client);
        } else {
            client.disconnect().await;
        }
        tokio::time::sleep(rng.ms(100, 800)).await;
    }
}

/// The broker's resident set size (KiB) and open descriptors.
fn sample(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("broker alive");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count();
    (rss, fds)
}

struct BrokerProcess(std::process::Child);

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker() -> (BrokerProcess, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("mqtt-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("soak.yaml");
    // A queue limit far above what a checker's offline window accumulates: any loss is a bug.
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - bind: 127.0.0.1:{port}\n    protocol: tcp\n\
             performance:\n  message_queue_limit: 1000000\n  worker_threads: 2\n\
             log:\n  level: warn\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-broker"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("broker binary starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "broker did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (BrokerProcess(child), addr)
}

#[test]
#[ignore = "runs for SOAK_MINUTES (default 10): cargo test --release --test soak -- --ignored --nocapture"]
fn soak_mixed_load_without_growth_or_loss() {
    let minutes = env_f64("SOAK_MINUTES", 10.0);
    let warmup = env_f64("SOAK_WARMUP_MINUTES", 2.0).min(minutes / 3.0);
    let sample_every = Duration::from_secs_f64(env_f64("SOAK_SAMPLE_SECS", 60.0));
    let run_for = Duration::from_secs_f64(minutes * 60.0);
    let warmup = Duration::from_secs_f64(warmup * 60.0);

    let (broker, addr) = start_broker();
    let pid = broker.0.id();
    // Let the idle broker settle, then remember its descriptors (listener, epoll, ...).
    std::thread::sleep(Duration::from_millis(300));
    let (idle_rss, idle_fds) = sample(pid);
    println!("soak: broker pid {pid} on {addr}; idle rss={idle_rss} KiB fds={idle_fds}; {minutes} min, warm-up {warmup:?}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shared = Arc::new(Shared {
        addr,
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger {
            delivered: vec![HashMap::new(); CHECKERS],
            wills_received: vec![HashSet::new(); CHECKERS],
            ..Default::default()
        }),
        published: AtomicU64::new(0),
        received: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
    });
    let stop_checkers = Arc::new(AtomicBool::new(false));

    let samples = rt.block_on(async {
        // Checkers first: everything published afterwards must reach them.
        let mut checkers = Vec::new();
        for k in 0..CHECKERS {
            checkers.push(tokio::spawn(checker(shared.clone(), k, stop_checkers.clone())));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut load = Vec::new();
        for k in 0..PUBLISHERS as u64 {
            load.push(tokio::spawn(publisher(shared.clone(), k)));
        }
        for k in 0..CHURNERS as u64 {
            load.push(tokio::spawn(churner(shared.clone(), k)));
        }
        for k in 0..WILL_CLIENTS as u64 {
            load.push(tokio::spawn(will_client(shared.clone(), k)));
        }
        load.push(tokio::spawn(retainer(shared.clone())));

        let started = Instant::now();
        let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
        let mut next = started;
        while started.elapsed() < run_for {
            if Instant::now() >= next {
                let (rss, fds) = sample(pid);
                let t = started.elapsed();
                println!(
                    "soak t={:>5.1} min rss={rss} KiB fds={fds} published={} received={} checker_reconnects={}",
                    t.as_secs_f64() / 60.0,
                    shared.published.load(Ordering::Relaxed),
                    shared.received.load(Ordering::Relaxed),
                    shared.reconnects.load(Ordering::Relaxed),
                );
                samples.push((t, rss, fds));
                next += sample_every;
            }
            for h in load.iter().chain(checkers.iter()) {
                assert!(!h.is_finished(), "a load task ended early (panicked?)");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (rss, fds) = sample(pid);
        samples.push((started.elapsed(), rss, fds));
        println!("soak t={:>5.1} min rss={rss} KiB fds={fds} (end of load)", started.elapsed().as_secs_f64() / 60.0);
        shared.stop.store(true, Ordering::Relaxed);
        for h in load {
            h.await.expect("load task");
        }
        // Checkers reconnect one last time if offline, and drain until quiet for 3 s.
        stop_checkers.store(true, Ordering::Relaxed);
        for h in checkers {
            tokio::time::timeout(Duration::from_secs(60), h)
                .await
                .expect("checkers drain")
                .expect("checker task");
        }
        samples
    });
    drop(rt);

    // Every client is gone: descriptors must be back to the idle broker's.
    std::thread::sleep(Duration::from_secs(2));
    let (end_rss, end_fds) = sample(pid);
    println!("soak: after all clients left rss={end_rss} KiB fds={end_fds}");

    let ledger = shared.ledger.lock().unwrap();
    let mut problems = ledger.errors.clone();
    for (k, delivered) in ledger.delivered.iter().enumerate() {
        let mut lost = 0;
        for (key, qos) in &ledger.confirmed {
            match (delivered.get(key).copied().unwrap_or(0), qos) {
                (0, _) => lost += 1,
                (n, QoS::ExactlyOnce) if n > 1 => problems.push(format!(
                    "checker {k}: QoS 2 message {key:?} delivered {n} times"
                )),
                _ => {}
            }
        }
        if lost > 0 {
            problems.push(format!(
                "checker {k}: {lost} confirmed QoS 1/2 messages lost"
            ));
        }
        let phantom = delivered
            .keys()
            .filter(|k| !ledger.sent.contains(k))
            .count();
        if phantom > 0 {
            problems.push(format!("checker {k}: {phantom} messages nobody sent"));
        }
        let wills = &ledger.wills_received[k];
        let missing = ledger.wills_expected.difference(wills).count();
        let wrong = ledger.wills_forbidden.intersection(wills).count();
        if missing > 0 || wrong > 0 {
            problems.push(format!(
                "checker {k}: {missing} wills missing, {wrong} wills after DISCONNECT"
            ));
        }
    }
    println!(
        "soak: {} QoS 1/2 messages confirmed, {} sent in all, {} wills expected, {} forbidden",
        ledger.confirmed.len(),
        ledger.sent.len(),
        ledger.wills_expected.len(),
        ledger.wills_forbidden.len()
    );

    // Growth after warm-up: the first sample at or after warm-up is the reference.
    let reference = samples
        .iter()
        .find(|(t, _, _)| *t >= warmup)
        .or(samples.last())
        .copied()
        .expect("samples");
    let last = *samples.last().unwrap();
    let first = samples[0];
    println!(
        "soak: RSS first={} KiB, after warm-up={} KiB, last={} KiB; fds first={}, after warm-up={}, last={}",
        first.1, reference.1, last.1, first.2, reference.2, last.2
    );
    // Allocator noise allowance: 10 % or 4 MiB, whichever is larger.
    let allowance = (reference.1 / 10).max(4 * 1024);
    if last.1 > reference.1 + allowance {
        problems.push(format!(
            "RSS grew after warm-up: {} KiB -> {} KiB",
            reference.1, last.1
        ));
    }
    for (t, _, fds) in &samples {
        // A client that reconnects may briefly hold two sockets (the old one closing).
        if *fds > idle_fds + 2 * MAX_CLIENTS {
            problems.push(format!(
                "{fds} descriptors at {t:?} with at most {MAX_CLIENTS} clients"
            ));
        }
    }
    if end_fds > idle_fds {
        problems.push(format!(
            "descriptors leaked: {idle_fds} idle before, {end_fds} after"
        ));
    }
    drop(broker);
    assert!(problems.is_empty(), "soak failed:\n{}", problems.join("\n"));
}
