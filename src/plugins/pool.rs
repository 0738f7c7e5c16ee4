//! The idle instances of one plugin. Each thread that calls the plugin prefers "its own"
//! slot (a lock only that thread usually takes), so that two worker threads calling a
//! plugin for every message do not fight over one lock and its cache line; a shared list
//! holds what does not fit, and a thread whose slot is empty borrows from the others
//! before a new instance is created.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A lock on its own cache line (64 bytes on the machines we run on).
#[repr(align(64))]
struct Padded<T>(Mutex<Option<T>>);

/// Idle instances: per-thread slots plus an overflow list, `capacity` in all at most.
pub(crate) struct InstancePool<T> {
    slots: Box<[Padded<T>]>,
    overflow: Mutex<Vec<T>>,
    capacity: usize,
}

/// The slot index of the calling thread (threads are numbered as they first ask).
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

impl<T> InstancePool<T> {
    /// A pool keeping at most `capacity` idle instances (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // More slots than instances: threads are numbered in the order they first call any
        // plugin, so two busy worker threads would often share a slot of a smaller array.
        let slots = (capacity * 4).clamp(8, 64);
        InstancePool {
            slots: (0..slots).map(|_| Padded(Mutex::new(None))).collect(),
            overflow: Mutex::new(Vec::new()),
            capacity,
        }
    }

    /// An idle instance, if any: the thread's own slot first, then the overflow list, then
    /// the other threads' slots.
    pub fn take(&self) -> Option<T> {
        let n = self.slots.len();
        let own = thread_index() % n;
        if let Some(t) = self.slots[own].0.try_lock().and_then(|mut s| s.take()) {
            return Some(t);
        }
        if let Some(t) = self.overflow.lock().pop() {
            return Some(t);
        }
        (1..n).find_map(|k| {
            self.slots[(own + k) % n]
                .0
                .try_lock()
                .and_then(|mut s| s.take())
        })
    }

    /// Returns an instance after a call: into the thread's own slot when free, else the
    /// overflow list while the pool holds fewer than its capacity; else it is dropped.
    pub fn put(&self, t: T) {
        let own = thread_index() % self.slots.len();
        let t = match self.slots[own].0.try_lock() {
            Some(mut s) if s.is_none() => {
                *s = Some(t);
                return;
            }
            _ => t,
        };
        let held = self.slots.iter().filter(|s| s.0.lock().is_some()).count();
        let mut overflow = self.overflow.lock();
        if held + overflow.len() < self.capacity {
            overflow.push(t);
        }
    }

    /// Idle instances now.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.slots.iter().filter(|s| s.0.lock().is_some()).count() + self.overflow.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::InstancePool;

    #[test]
    fn one_thread_gets_its_instance_back() {
        let p = InstancePool::new(2);
        p.put(1);
        assert_eq!(p.take(), Some(1));
        assert_eq!(p.take(), None);
    }

    #[test]
    fn never_holds_more_than_its_capacity() {
        let p = InstancePool::new(2);
        for i in 0..5 {
            p.put(i);
        }
        assert_eq!(p.idle(), 2);
        assert!(p.take().is_some());
        assert!(p.take().is_some());
        assert_eq!(p.take(), None);
    }

    #[test]
    fn a_thread_borrows_what_another_returned() {
        let p = std::sync::Arc::new(InstancePool::new(4));
        let q = p.clone();
        std::thread::spawn(move || q.put(7)).join().unwrap();
        // Not in this thread's slot: found in the other thread's, before creating one.
        assert_eq!(p.take(), Some(7));
    }
}
