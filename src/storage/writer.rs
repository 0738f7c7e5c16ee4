//! The storage writer: one thread that applies journaled operations in batches.
//!
//! Every submission gets a ticket. The thread takes everything submitted while the previous
//! write was running and applies it as one transaction, so concurrent publishers share one
//! fsync (group commit). With `sync: always` a connection waits until its ticket is durable
//! before sending the PUBACK/PUBREC that promises the message is safe.

use super::{Storage, StorageOp};
use parking_lot::Mutex;
use std::cell::RefCell;
use std::collections::BTreeMap;
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

/// A group being collected on this thread (see [`StorageHandle::group`]).
struct OpenGroup {
    /// The handle it belongs to (several brokers may share a process).
    handle: usize,
    ticket: u64,
    ops: Vec<StorageOp>,
}

thread_local! {
    static GROUP: RefCell<Option<OpenGroup>> = const { RefCell::new(None) };
}

/// Sends the group's batch when dropped (also when unwinding, so the writer never waits
/// for a ticket forever).
pub struct StorageGroup<'a> {
    handle: &'a StorageHandle,
}

impl Drop for StorageGroup<'_> {
    fn drop(&mut self) {
        let Some(group) = GROUP.with(|g| g.borrow_mut().take()) else {
            return;
        };
        let s = self.handle.submitter.lock();
        if let Some(tx) = &s.tx {
            let _ = tx.send(Batch {
                ticket: group.ticket,
                ops: group.ops,
            });
        }
    }
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
    /// lock of the session the operations belong to, so per-session order is kept. Inside a
    /// [`StorageHandle::group`] on this thread, the operations join the group's batch.
    pub fn submit(&self, ops: Vec<StorageOp>) -> u64 {
        let me = self as *const StorageHandle as usize;
        // Moved into the group, not cloned: a message's topic and payload are shared, but
        // every clone still costs reference count traffic and an allocation for the Vec.
        let mut ops = Some(ops);
        let grouped = GROUP.with(|g| match g.borrow_mut().as_mut() {
            Some(group) if group.handle == me => {
                group.ops.extend(ops.take().into_iter().flatten());
                Some(group.ticket)
            }
            _ => None,
        });
        if let Some(ticket) = grouped {
            return ticket;
        }
        let ops = ops.unwrap_or_default();
        let mut s = self.submitter.lock();
        let ticket = s.next;
        s.next += 1;
        if let Some(tx) = &s.tx {
            let _ = tx.send(Batch { ticket, ops });
        }
        ticket
    }

    /// Collects every [`StorageHandle::submit`] this thread makes until the guard is dropped
    /// into one batch under one ticket, reserved now: they are written in one transaction,
    /// so a crash keeps all of them or none. For an inbound QoS 2 PUBLISH, whose packet id
    /// must never be stored without the copies routed to its subscribers: after a crash the
    /// client re-sends it, and a stored id would make the broker drop it as a duplicate.
    ///
    /// Tickets submitted meanwhile by other threads wait in the writer until this one
    /// arrives, so every session's operations still reach the store in order. The group must
    /// not span an `.await` (it belongs to the thread).
    pub fn group(&self) -> StorageGroup<'_> {
        let ticket = {
            let mut s = self.submitter.lock();
            let t = s.next;
            s.next += 1;
            t
        };
        let me = self as *const StorageHandle as usize;
        GROUP.with(|g| {
            *g.borrow_mut() = Some(OpenGroup {
                handle: me,
                ticket,
                ops: Vec::new(),
            })
        });
        StorageGroup { handle: self }
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
    // Batches that arrived before an earlier ticket, by ticket; the next ticket to apply.
    let mut held: BTreeMap<u64, Vec<StorageOp>> = BTreeMap::new();
    let mut next = 1u64;
    loop {
        // Block for more only when nothing is ready to apply.
        let first = if held.contains_key(&next) {
            rx.try_recv().ok()
        } else {
            match mode.checkpoint() {
                Some(every) => match rx.recv_timeout(every) {
                    Ok(b) => Some(b),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                _ => match rx.recv() {
                    Ok(b) => Some(b),
                    Err(_) => break,
                },
            }
        };
        if let Some(first) = first {
            held.insert(first.ticket, first.ops);
            // Group commit: everything that arrived meanwhile goes into the same transaction.
            while held.len() < 50_000 {
                match rx.try_recv() {
                    Ok(b) => {
                        held.insert(b.ticket, b.ops);
                    }
                    Err(_) => break,
                }
            }
        }
        if apply_ready(&*storage, mode, &mut held, &mut next, &durable) {
            dirty = mode != SyncMode::Always;
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
    while apply_ready(&*storage, mode, &mut held, &mut next, &durable) {}
    if let Err(e) = storage.sync() {
        error!(error = %e, "final storage fsync failed");
    }
}

/// Applies, as one transaction, the run of held batches from ticket `next` on (tickets in
/// order: one reserved by a group still being collected holds the later ones back until it
/// arrives, microseconds later), and announces the last one durable. Returns whether it
/// wrote anything.
fn apply_ready(
    storage: &dyn Storage,
    mode: SyncMode,
    held: &mut BTreeMap<u64, Vec<StorageOp>>,
    next: &mut u64,
    durable: &watch::Sender<u64>,
) -> bool {
    let mut ops = Vec::new();
    let mut max = None;
    while ops.len() < 50_000 {
        let Some(batch) = held.remove(next) else {
            break;
        };
        ops.extend(batch);
        max = Some(*next);
        *next += 1;
    }
    let Some(max) = max else {
        return false;
    };
    if ops.is_empty() {
        // Only empty groups: nothing to write, but their tickets are done.
        let _ = durable.send(max);
        return false;
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
    let _ = durable.send(max);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemoryStorage, StorageOp};

    fn put_retained(topic: &str) -> Vec<StorageOp> {
        vec![StorageOp::PutRetained(crate::model::Message::new(
            topic,
            bytes::Bytes::from_static(b"x"),
            crate::protocol::QoS::AtLeastOnce,
            true,
        ))]
    }

    /// A group's submits share its ticket and are written together; a ticket submitted by
    /// another thread while the group is open waits for it, so nothing is applied out of
    /// order and nothing of the group is durable without the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_is_one_batch_and_later_tickets_wait_for_it() {
        let storage = Arc::new(MemoryStorage::default());
        let handle = Arc::new(StorageHandle::start(storage.clone(), SyncMode::Always));
        let before = handle.submit(put_retained("a/1"));
        let group = handle.group();
        let t1 = handle.submit(put_retained("a/2"));
        // Another thread submits while the group is open: a later ticket, held back.
        let other = {
            let h = handle.clone();
            std::thread::spawn(move || h.submit(put_retained("b/9")))
                .join()
                .unwrap()
        };
        let t2 = handle.submit(put_retained("c/3"));
        assert_eq!(t1, t2, "one ticket for the whole group");
        assert!(before < t1 && t1 < other);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            *handle.durable.borrow() < other,
            "the later ticket is not applied before the group's"
        );
        drop(group);
        tokio::time::timeout(Duration::from_secs(5), handle.wait_durable(other))
            .await
            .expect("everything becomes durable once the group is sent");
        let recovered = storage.load().unwrap();
        let mut topics: Vec<String> = recovered
            .retained
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        topics.sort();
        assert_eq!(topics, ["a/1", "a/2", "b/9", "c/3"]);
        handle.close();
    }
}
