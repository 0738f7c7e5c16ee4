//! Persistence benchmark (issue 7): prints numbers, is not a timed test.
//!
//! `cargo run --release --example persist_bench -- throughput [SECONDS] [never|interval|always]`
//!   Persistent QoS 1 throughput through one broker (in-process, loopback): 8 publishers with a
//!   window of 16 unacknowledged messages each, one persistent subscriber acknowledging
//!   everything, for `memory` and for `file` with `sync: never | interval | always`.
//! `cargo run --release --example persist_bench -- recovery [RETAINED] [QUEUED]`
//!   Writes RETAINED retained messages (default 1,000,000) and QUEUED queued messages (default
//!   100,000, over 100 sessions) into a file store, then times a broker start (recovery) and
//!   reports the peak RSS of the process during recovery, its RSS right after (steady) and
//!   their ratio.

use bytes::Bytes;
use mqtt_broker::config::{Config, StorageType, SyncPolicy};
use mqtt_broker::protocol::*;
use mqtt_broker::routing::Message;
use mqtt_broker::storage::{FileStorage, SessionRecord, Storage, StorageOp, StoredMessage};
use mqtt_broker::{Broker, BrokerHandle};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/client.rs"]
mod client;
use client::Client;

fn base_config() -> Config {
    let mut c = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        ..Default::default()
    };
    c.performance.message_queue_limit = 1_000_000;
    // The per-client protection limits would cap the publishers, not the store.
    c.limits.publish_rate = 0;
    c.limits.publish_bytes_rate = 0;
    c.limits.max_queued_bytes = usize::MAX;
    c.admin.enabled = false;
    c.log.level = "warn".into();
    c
}

async fn throughput(label: &str, config: Config, seconds: u64) -> f64 {
    let broker = Broker::start(config).await.expect("start");
    let addr = broker.local_addr();
    let mut sub = Client::connect(addr, "bench-sub", false).await;
    sub.send(&Packet::Subscribe(Subscribe {
        options: Vec::new(),
        properties: None,
        pid: 1,
        filters: vec![("bench/#".into(), QoS::AtLeastOnce)],
    }))
    .await;
    let _ = sub.recv().await;
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let sub_task = tokio::spawn(async move {
        while let Some(p) = sub.recv().await {
            if let Packet::Publish(p) = p {
                r.fetch_add(1, Ordering::Relaxed);
                if let Some(pid) = p.pid {
                    sub.send(&Packet::PubAck(pid)).await;
                }
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut pubs = Vec::new();
    for i in 0..8 {
        let (stop, acked) = (stop.clone(), acked.clone());
        pubs.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, &format!("bench-pub-{i}"), true).await;
            let payload = Bytes::from(vec![b'x'; 64]);
            let topic: Arc<str> = Arc::from(format!("bench/{i}").as_str());
            let mut next: u16 = 1;
            let mut outstanding = 0;
            while !stop.load(Ordering::Relaxed) || outstanding > 0 {
                while outstanding < 16 && !stop.load(Ordering::Relaxed) {
                    c.send(&Packet::Publish(Publish {
                        properties: None,
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: topic.clone(),
                        pid: Some(next),
                        payload: payload.clone(),
                    }))
                    .await;
                    next = next.checked_add(1).unwrap_or(1);
                    outstanding += 1;
                }
                match c.recv().await {
                    Some(Packet::PubAck(_)) => {
                        outstanding -= 1;
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let n = acked.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for p in pubs {
        let _ = p.await;
    }
    let rate = n as f64 / elapsed;
    println!(
        "{{\"scenario\":\"persistent_qos1\",\"backend\":\"{label}\",\"publishers\":8,\"window\":16,\"acked_per_s\":{rate:.0},\"delivered\":{}}}",
        received.load(Ordering::Relaxed)
    );
    sub_task.abort();
    broker.shutdown().await;
    rate
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Resident memory now (`VmRSS`).
fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

async fn recovery(retained: usize, queued: usize) {
    let dir = std::env::temp_dir().join(format!("mqtt-persist-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write_start = Instant::now();
    {
        let store = FileStorage::open(&dir).expect("open");
        let payload = Bytes::from(vec![b'r'; 64]);
        for chunk in (0..retained).collect::<Vec<_>>().chunks(50_000) {
            let ops: Vec<StorageOp> = chunk
                .iter()
                .map(|i| {
                    StorageOp::PutRetained(Message::new(
                        &format!("sensors/{}/{}", i / 1000, i % 1000),
                        payload.clone(),
                        QoS::AtLeastOnce,
                        true,
                    ))
                })
                .collect();
            store.apply(&ops, false).expect("write");
        }
        let sessions = 100;
        let mut ops = Vec::new();
        for s in 0..sessions {
            let id: Arc<str> = Arc::from(format!("device-{s}").as_str());
            ops.push(StorageOp::PutSession {
                client_id: id.clone(),
                record: SessionRecord {
                    expiry_interval: None,
                    pending_will: None,
                    username: None,
                    subscriptions: vec![(
                        "cmd/#".into(),
                        mqtt_broker::model::Subscription::qos(QoS::AtLeastOnce),
                    )],
                    last_seen_ms: 0,
                },
            });
            for q in 0..queued / sessions {
                ops.push(StorageOp::PutMessage {
                    client_id: id.clone(),
                    stored: StoredMessage {
                        seq: q as u64 + 1,
                        message: Message::new("cmd/x", payload.clone(), QoS::AtLeastOnce, false),
                        pid: None,
                        state: None,
                    },
                });
            }
        }
        store.apply(&ops, true).expect("write");
    }
    let written = write_start.elapsed();
    println!(
        "wrote {retained} retained and {queued} queued messages in {:.1} s; recovering in a fresh process",
        written.as_secs_f64()
    );
    // Recovery runs in a child process, so that its peak memory is recovery's alone and not
    // the write phase's above.
    let status = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("recover-only")
        .arg(&dir)
        .arg(retained.to_string())
        .status()
        .expect("run the recovery process");
    assert!(status.success(), "recovery process failed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts a broker on an existing store and reports how long recovery took and the peak RSS
/// of this process (which did nothing else).
async fn recover_only(dir: std::path::PathBuf, retained: usize) {
    let mut config = base_config();
    config.persistence.storage_type = StorageType::File;
    config.persistence.path = dir;
    config.persistence.retained_message_limit = retained.max(1);
    let rss_before = peak_rss_kib();
    let start = Instant::now();
    let broker = Broker::start(config).await.expect("start");
    let elapsed = start.elapsed();
    // Peak and steady are read before anything else runs: the peak is recovery's, and the
    // steady state is what the recovered broker keeps (retained store, sessions, page cache).
    let peak = peak_rss_kib() as f64 / 1024.0;
    let steady = rss_kib() as f64 / 1024.0;
    // glibc keeps freed heap pages mapped, so VmRSS right after recovery still counts what
    // recovery freed; trimmed, it is the memory the recovered state really holds.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let live = rss_kib() as f64 / 1024.0;
    let stats = broker.stats();
    println!(
        "{{\"scenario\":\"recovery\",\"retained\":{},\"queued\":{},\"sessions\":{},\"recovery_ms\":{},\"peak_rss_mib\":{peak:.0},\"steady_rss_mib\":{steady:.0},\"peak_over_steady\":{:.2},\"live_rss_mib\":{live:.0},\"peak_over_live\":{:.2},\"rss_before_mib\":{:.0}}}",
        stats.messages.retained,
        stats.messages.queued,
        stats.sessions.total,
        elapsed.as_millis(),
        peak / steady.max(1.0),
        peak / live.max(1.0),
        rss_before as f64 / 1024.0,
    );
    broker.shutdown().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("recover-only") => {
            let dir = std::path::PathBuf::from(args.get(2).expect("store directory"));
            let retained = args
                .get(3)
                .and_then(|a| a.parse().ok())
                .unwrap_or(1_000_000);
            recover_only(dir, retained).await;
        }
        Some("recovery") => {
            let retained = args
                .get(2)
                .and_then(|a| a.parse().ok())
                .unwrap_or(1_000_000);
            let queued = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100_000);
            recovery(retained, queued).await;
        }
        _ => {
            let seconds = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
            // An optional third argument runs only the file modes whose name contains it (e.g.
            // `always`, to profile one), after the memory baseline.
            let only = args.get(3).cloned().unwrap_or_default();
            let memory = throughput("memory", base_config(), seconds).await;
            let mut results = vec![("memory", memory)];
            for (label, sync) in [
                ("file, sync: never", SyncPolicy::Never),
                ("file, sync: interval", SyncPolicy::Interval),
                ("file, sync: always", SyncPolicy::Always),
            ] {
                if !label.contains(only.as_str()) {
                    continue;
                }
                let dir = std::env::temp_dir().join(format!(
                    "mqtt-persist-bench-{}-{:?}",
                    std::process::id(),
                    sync
                ));
                let _ = std::fs::remove_dir_all(&dir);
                let mut config = base_config();
                config.persistence.storage_type = StorageType::File;
                config.persistence.path = dir.clone();
                config.persistence.sync = sync;
                results.push((label, throughput(label, config, seconds).await));
                let _ = std::fs::remove_dir_all(&dir);
            }
            println!("\n| backend | persistent QoS 1 acked msg/s | vs memory |\n|---|---|---|");
            for (label, rate) in &results {
                println!("| {label} | {rate:.0} | {:.2} |", rate / memory);
            }
        }
    }
}
