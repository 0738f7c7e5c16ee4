//! The storage writer: one thread that applies journaled operations in batches.
//!
//! Every submission gets a ticket. The thread takes everything submitted while the previous
//! write was running and applies it as one transaction, so concurrent publishers share one
//! fsync (group commit). With `sync: always` a connection waits until its ticket is durable
//! before sending the PUBACK/PUBREC that promises the message is safe.

use super::{Storage, StorageOp};
use parking_lot::Mutex;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{error, info};

/// When a write becomes durable (`persistence.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Acknowledge only after the write is on disk (fsync), shared by concurrent writers.
    Always,
    /// Write at once, make durable at this interval: a crash (`kill -9` or power loss) loses
    /// at most that window.
    Interval(Duration),
    /// No fsync in the write path; the store is made durable every [`NEVER_CHECKPOINT`] and at
    /// shutdown (like Mosquitto's autosave), so a crash loses at most that window.
    Never,
}

/// How often `sync: never` still makes the store durable. The file store's unsynced commits
/// do not survive a crash at all (redb's `Durability::None`), so without a checkpoint a
/// `kill -9` would lose everything since start.
pub const NEVER_CHECKPOINT: Duration = Duration::from_secs(30);

impl SyncMode {
    /// The mode `persistence.sync` and `persistence.sync_interval` ask for.
    pub fn from_config(p: &crate::config::PersistenceConfig) -> SyncMode {
        use crate::config::SyncPolicy;
        match p.sync {
            SyncPolicy::Always => SyncMode::Always,
            SyncPolicy::Interval => SyncMode::Interval(p.sync_interval.get()),
            SyncPolicy::Never => SyncMode::Never,
        }
    }

    /// How often writes are made durable when it is not done per write.
    fn checkpoint(self) -> Option<Duration> {
        match self {
            SyncMode::Always => None,
            SyncMode::Interval(every) => Some(every),
            SyncMode::Never => Some(NEVER_CHECKPOINT),
        }
    }
}

struct Batch {
    ticket: u64,
    ops: Vec<StorageOp>,
}

struct Submitter {
    next: u64,
    tx: Option<mpsc::Sender<Batch>>,
}

/// Hands journaled operations to the writer thread and tells when they are durable.
pub struct StorageHandle {
    submitter: Mutex<Submitter>,
    durable: watch::Receiver<u64>,
    mode: SyncMode,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl StorageHandle {
    /// Starts the writer thread over a backend.
    pub fn start(storage: Arc<dyn Storage>, mode: SyncMode) -> StorageHandle {
        let (tx, rx) = mpsc::channel::<Batch>();
        let (durable_tx, durable) = watch::channel(0u64);
        let thread = std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || writer(storage, mode, rx, durable_tx))
            .ok();
        StorageHandle {
            submitter: Mutex::new(Submitter {
                next: 1,
                tx: Some(tx),
            }),
            durable,
            mode,
            thread: Mutex::new(thread),
        }
    }

    /// Queues operations; returns the ticket to wait for. Callers submit while holding the
    /// lock of the session the operations belong to, so per-session order is kept.
    pub fn submit(&self, ops: Vec<StorageOp>) -> u64 {
        let mut s = self.submitter.lock();
        let ticket = s.next;
        s.next += 1;
        if let Some(tx) = &s.tx {
            let _ = tx.send(Batch { ticket, ops });
        }
        ticket
    }

    /// Waits until the ticket's operations are durable (only with `sync: always`; the other
    /// modes acknowledge without waiting, as documented).
    pub async fn wait_durable(&self, ticket: u64) {
        if self.mode != SyncMode::Always {
            return;
        }
        let mut rx = self.durable.clone();
        let _ = rx.wait_for(|d| *d >= ticket).await;
    }

    /// Writes what is pending, makes it durable and stops the writer thread.
    pub fn close(&self) {
        self.submitter.lock().tx = None;
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

fn writer(
    storage: Arc<dyn Storage>,
    mode: SyncMode,
    rx: mpsc::Receiver<Batch>,
    durable: watch::Sender<u64>,
) {
    let mut last_sync = Instant::now();
    let mut dirty = false;
    loop {
        let first = match mode.checkpoint() {
            Some(every) => match rx.recv_timeout(every) {
                Ok(b) => Some(b),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            _ => match rx.recv() {
                Ok(b) => Some(b),
                Err(_) => break,
            },
        };
        if let Some(first) = first {
            let mut max = first.ticket;
            let mut ops = first.ops;
            // Group commit: everything that arrived meanwhile goes into the same transaction.
            while ops.len() < 50_000 {
                match rx.try_recv() {
                    Ok(b) => {
                        max = b.ticket;
                        ops.extend(b.ops);
                    }
                    Err(_) => break,
                }
            }
            let mut failing = false;
            while let Err(e) = storage.apply(&ops, mode == SyncMode::Always) {
                if !failing {
                    error!(error = %e, "storage write failed; retrying (acknowledgements of persistent messages wait)");
                    failing = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if failing {
                info!("storage writes succeed again");
            }
            dirty = mode != SyncMode::Always;
            let _ = durable.send(max);
        }
        if let Some(every) = mode.checkpoint() {
            if dirty && last_sync.elapsed() >= every {
                if let Err(e) = storage.sync() {
                    error!(error = %e, "storage fsync failed");
                }
                dirty = false;
                last_sync = Instant::now();
            }
        }
    }
    if let Err(e) = storage.sync() {
        error!(error = %e, "final storage fsync failed");
    }
}
