//! Graceful shutdown of the `mqtt-broker` binary: SIGTERM with clients connected and QoS 1
//! traffic in flight ends with exit code 0 within `shutdown_timeout`, every client sees
//! its connection closed, and every publisher got a PUBACK for each message the broker
//! received. A second signal exits at once.

mod common;

use common::*;
use mqtt_broker::protocol::*;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-broker");

/// The broker binary on a free loopback port with `extra` YAML; killed on drop.
struct Process {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    cfg: std::path::PathBuf,
    starts: u32,
}

impl Process {
    fn start(name: &str, extra: &str) -> Process {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("mqtt-shutdown-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("broker.yaml");
        std::fs::write(
            &cfg,
            format!(
                "server:\n  host: 127.0.0.1\n  port: {port}\n{extra}admin:\n  bind: '127.0.0.1:0'\nlimits:\n  publish_rate: 0\n"
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join("stderr.log");
        let child = Process::spawn(&cfg, &log, addr);
        Process {
            child,
            addr,
            log,
            cfg,
            starts: 1,
        }
    }

    /// Starts the binary on `cfg` and waits until it accepts connections on `addr`.
    fn spawn(cfg: &std::path::Path, log: &std::path::Path, addr: SocketAddr) -> Child {
        let child = Command::new(BIN)
            .arg("--config")
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Starts the binary again, on the same config, port and data directory, once the
    /// previous process has exited; its log goes to a new file.
    fn restart(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "previous process still running"
        );
        self.starts += 1;
        self.log = self
            .cfg
            .with_file_name(format!("stderr-{}.log", self.starts));
        self.child = Process::spawn(&self.cfg, &self.log, self.addr);
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for the process to exit; returns its exit code and how long it took.
    async fn wait_exit(&mut self, limit: Duration) -> (i32, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "broker did not exit within {limit:?}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes QoS 1 messages one after another (each after the previous PUBACK) until the
/// broker closes the connection; returns (sent, acknowledged pids in order).
async fn publisher(addr: SocketAddr, id: String) -> (u16, Vec<u16>) {
    let (mut c, _) = RawClient::connect(addr, &id, true).await;
    let mut sent = 0u16;
    let mut acked = Vec::new();
    for pid in 1..u16::MAX {
        let mut bytes = bytes::BytesMut::new();
        encode(
            &publish(
                &format!("load/{id}"),
                &pid.to_be_bytes(),
                QoS::AtLeastOnce,
                Some(pid),
                false,
            ),
            &mut bytes,
        );
        // The broker may close at any moment: a failed write is not an error here.
        c.send_raw(&bytes).await;
        sent = pid;
        match c.recv_within(Duration::from_secs(10)).await {
            Ok(Some(Packet::PubAck(p))) => acked.push(p),
            Ok(None) => break,
            other => panic!("{id}: expected PUBACK {pid}, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (sent, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_qos1_traffic_exits_zero_within_the_timeout() {
    let mut broker = Process::start("term", "  shutdown_timeout: 5s\n");
    let addr = broker.addr;
    let (mut sub, _) = RawClient::connect(addr, "sub", false).await;
    sub.subscribe(1, &[("load/#", QoS::AtLeastOnce)]).await;
    let subscriber = tokio::spawn(async move {
        let mut received = 0;
        loop {
            match sub.recv_within(Duration::from_secs(10)).await {
                Ok(Some(Packet::Publish(p))) => {
                    received += 1;
                    let mut b = bytes::BytesMut::new();
                    encode(&Packet::PubAck(p.pid.unwrap()), &mut b);
                    sub.send_raw(&b).await;
                }
                Ok(Some(other)) => panic!("subscriber got {other:?}"),
                Ok(None) => return received,
                Err(()) => panic!("subscriber connection was not closed"),
            }
        }
    });
    let publishers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(publisher(addr, format!("pub{i}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;

    broker.signal("-TERM");
    let (code, took) = broker.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(code, 0, "exit code");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    for p in publishers {
        let (sent, acked) = p.await.unwrap();
        assert!(sent > 5, "traffic was flowing ({sent} sent)");
        // Acknowledged in order with no gap...
        let expected: Vec<u16> = (1..=acked.len() as u16).collect();
        assert_eq!(acked, expected);
        // ...and only a message still on the wire when the connection closed can be
        // unacknowledged: the broker never received it, and the client re-sends it on its
        // next connection [MQTT-4.4.0-1].
        assert!(
            sent as usize - acked.len() <= 1,
            "sent {sent}, acknowledged {}",
            acked.len()
        );
    }
    let received = subscriber.await.unwrap();
    assert!(
        received > 0,
        "the subscriber received traffic before the close"
    );
    let log = std::fs::read_to_string(&broker.log).unwrap();
    assert!(log.contains("shutdown started"), "{log}");
    assert!(log.contains("broker stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    // A long drain delay keeps the first shutdown busy.
    let mut broker = Process::start("second", "  shutdown_timeout: 60s\n  drain_delay: 30s\n");
    let (mut c, _) = RawClient::connect(broker.addr, "c", true).await;
    broker.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(broker.child.try_wait().unwrap().is_none(), "still draining");
    // Still serving during the drain delay.
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    broker.signal("-INT");
    let (code, took) = broker.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(code, 130);
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// How a [`receive`] loop ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// The broker closed the connection.
    Closed,
    /// `until` passed (the caller then drops the connection without DISCONNECT).
    Deadline,
    /// Nothing arrived for the quiet period.
    Quiet,
}

/// Receives QoS 1 PUBLISHes on `load/<publisher>` (payload: the publisher's packet id),
/// acknowledging each, and appends (topic, id) to `got` in arrival order.
async fn receive(
    c: &mut RawClient,
    got: &mut Vec<(String, u16)>,
    until: Instant,
    quiet: Option<Duration>,
) -> Ending {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ending::Deadline;
        }
        let wait = quiet.map_or(left, |q| q.min(left));
        match c.recv_within(wait).await {
            Ok(Some(Packet::Publish(p))) => {
                assert_eq!(p.qos, QoS::AtLeastOnce, "{p:?}");
                let id = u16::from_be_bytes(p.payload[..].try_into().expect("2-byte payload"));
                got.push((p.topic.to_string(), id));
                let mut b = bytes::BytesMut::new();
                encode(&Packet::PubAck(p.pid.unwrap()), &mut b);
                c.send_raw(&b).await;
            }
            Ok(Some(other)) => panic!("subscriber got {other:?}"),
            Ok(None) => return Ending::Closed,
            Err(()) if quiet.is_some() && Instant::now() < until => return Ending::Quiet,
            Err(()) => {}
        }
    }
}

/// SIGTERM with file persistence: the broker exits 0 within `shutdown_timeout`, and after a
/// restart of the binary on the same data directory every message a publisher got a PUBACK
/// for reaches each persistent QoS 1 subscriber (at least once, in order per publisher),
/// whether the subscriber was online at the SIGTERM (messages in flight) or offline
/// (messages queued); nothing that was never sent appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_file_persistence_loses_no_acknowledged_message() {
    let mut broker = Process::start(
        "persist",
        "  shutdown_timeout: 5s\npersistence:\n  storage_type: file\n  path: data\n  sync: always\nperformance:\n  message_queue_limit: 100000\n",
    );
    let addr = broker.addr;
    let subscribe = |id: &'static str| async move {
        let (mut c, present) = RawClient::connect(addr, id, false).await;
        assert!(!present);
        assert_eq!(
            c.subscribe(1, &[("load/#", QoS::AtLeastOnce)]).await,
            vec![SubAckCode::Granted(QoS::AtLeastOnce)]
        );
        c
    };
    // `offline` leaves after 200 ms and stays away: its messages queue up in the store.
    // `online` leaves for 200 ms, comes back and is connected at the SIGTERM.
    let mut offline = subscribe("offline").await;
    let mut online = subscribe("online").await;
    let t0 = Instant::now();
    let offline_task = tokio::spawn(async move {
        let mut got = Vec::new();
        let end = receive(
            &mut offline,
            &mut got,
            t0 + Duration::from_millis(200),
            None,
        )
        .await;
        assert_eq!(end, Ending::Deadline);
        drop(offline);
        got
    });
    let online_task = tokio::spawn(async move {
        let mut got = Vec::new();
        let end = receive(&mut online, &mut got, t0 + Duration::from_millis(200), None).await;
        assert_eq!(end, Ending::Deadline);
        drop(online);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (mut again, present) = RawClient::connect(addr, "online", false).await;
        assert!(present, "persistent session kept while offline");
        let end = receive(&mut again, &mut got, Instant::now() + WAIT * 3, None).await;
        assert_eq!(end, Ending::Closed, "the shutdown closes the subscriber");
        got
    });
    let publishers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(publisher(addr, format!("pub{i}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;

    broker.signal("-TERM");
    let (code, took) = broker.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(code, 0, "exit code");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let mut acked_by = Vec::new();
    for (i, p) in publishers.into_iter().enumerate() {
        let (sent, acked) = p.await.unwrap();
        assert!(sent > 5, "traffic was flowing ({sent} sent)");
        let expected: Vec<u16> = (1..=acked.len() as u16).collect();
        assert_eq!(acked, expected, "acknowledged in order with no gap");
        assert!(
            sent as usize - acked.len() <= 1,
            "sent {sent}, acked {acked:?}"
        );
        acked_by.push((format!("load/pub{i}"), sent, acked.len() as u16));
    }
    let mut receipts = [
        ("offline", offline_task.await.unwrap()),
        ("online", online_task.await.unwrap()),
    ];
    let log = std::fs::read_to_string(&broker.log).unwrap();
    assert!(log.contains("broker stopped"), "{log}");

    let before_restart: Vec<usize> = receipts.iter().map(|(_, got)| got.len()).collect();
    broker.restart();
    for (id, got) in &mut receipts {
        let (mut c, present) = RawClient::connect(broker.addr, id, false).await;
        assert!(present, "{id}: persistent session survived the restart");
        let end = receive(
            &mut c,
            got,
            Instant::now() + Duration::from_secs(20),
            Some(Duration::from_secs(1)),
        )
        .await;
        assert_eq!(end, Ending::Quiet, "{id}");
    }
    eprintln!(
        "acknowledged: {acked_by:?}; (received before, after the restart): {:?}",
        receipts
            .iter()
            .zip(&before_restart)
            .map(|((id, got), n)| (id, *n, got.len() - n))
            .collect::<Vec<_>>()
    );
    assert!(
        receipts[0].1.len() > before_restart[0],
        "the offline subscriber's queue was delivered after the restart"
    );

    for (id, got) in &receipts {
        for (topic, sent, acked) in &acked_by {
            let ids: Vec<u16> = got
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, i)| *i)
                .collect();
            for i in &ids {
                assert!(
                    (1..=*sent).contains(i),
                    "{id} received {topic} #{i}, which was never sent"
                );
            }
            for want in 1..=*acked {
                assert!(
                    ids.contains(&want),
                    "{id} never received acknowledged {topic} #{want} ({} of {acked} acknowledged arrived)",
                    ids.iter().collect::<std::collections::HashSet<_>>().len()
                );
            }
            // In order: each first receipt comes after the previous first receipt.
            let mut seen = std::collections::HashSet::new();
            let firsts: Vec<u16> = ids.iter().copied().filter(|i| seen.insert(*i)).collect();
            assert!(
                firsts.windows(2).all(|w| w[0] < w[1]),
                "{id}: {topic} out of order: {firsts:?}"
            );
        }
        assert!(
            got.iter()
                .all(|(t, _)| acked_by.iter().any(|(topic, _, _)| topic == t)),
            "{id} received a message on an unknown topic"
        );
    }
    broker.signal("-TERM");
    let (code, _) = broker.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(code, 0);
}
