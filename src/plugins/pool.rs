//! The idle instances of one plugin. Each thread that calls the plugin prefers "its own"
//! slot (an atomic pointer only that thread usually swaps), so that two worker threads calling a
//! plugin for every message do not fight over one lock and its cache line; a shared list
//! holds what does not fit, and a thread whose slot is empty borrows from the others
//! before a new instance is created.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// A slot on its own cache line (64 bytes on the machines we run on): an idle instance, or
/// null. A pointer swap takes it and a compare-and-swap returns it: one atomic operation
/// each way (a lock took two).
#[repr(align(64))]
struct Padded<T>(AtomicPtr<T>);

/// Idle instances: per-thread slots plus an overflow list, `capacity` in all at most.
pub(crate) struct InstancePool<T> {
    slots: Box<[Padded<T>]>,
    overflow: Mutex<Vec<Box<T>>>,
    capacity: usize,
}

// SAFETY: the pool owns the `T`s its slots point to (each pointer comes from `Box::into_raw`
// and is turned back into a box by exactly one `swap` that took it), so sending or sharing
// the pool sends `T`s between threads, as a `Mutex<Vec<T>>` would.
unsafe impl<T: Send> Send for InstancePool<T> {}
unsafe impl<T: Send> Sync for InstancePool<T> {}

/// The number of the calling thread (threads are numbered as they first ask): its slot here,
/// its stripe of a plugin's call counter.
pub(crate) fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

impl<T> Padded<T> {
    /// Takes the slot's instance, if any.
    fn take(&self) -> Option<Box<T>> {
        let p = self.0.swap(std::ptr::null_mut(), Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Box::into_raw` in `offer`, and the swap
        // made this call its only owner.
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }

    /// Puts `t` into the slot if it is empty; gives it back otherwise.
    fn offer(&self, t: Box<T>) -> Result<(), Box<T>> {
        let p = Box::into_raw(t);
        match self.0.compare_exchange(
            std::ptr::null_mut(),
            p,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(()),
            // SAFETY: the exchange failed, so `p` was not stored and is still ours alone.
            Err(_) => Err(unsafe { Box::from_raw(p) }),
        }
    }

    fn is_full(&self) -> bool {
        !self.0.load(Ordering::Relaxed).is_null()
    }
}

impl<T> InstancePool<T> {
    /// A pool keeping at most `capacity` idle instances (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // More slots than instances: threads are numbered in the order they first call any
        // plugin, so two busy worker threads would often share a slot of a smaller array.
        let slots = (capacity * 4).clamp(8, 64);
        InstancePool {
            slots: (0..slots)
                .map(|_| Padded(AtomicPtr::new(std::ptr::null_mut())))
                .collect(),
            overflow: Mutex::new(Vec::new()),
            capacity,
        }
    }

    /// An idle instance, if any: the thread's own slot first, then the overflow list, then
    /// the other threads' slots.
    pub fn take(&self) -> Option<Box<T>> {
        let n = self.slots.len();
        let own = thread_index() % n;
        if let Some(t) = self.slots[own].take() {
            return Some(t);
        }
        if let Some(t) = self.overflow.lock().pop() {
            return Some(t);
        }
        (1..n).find_map(|k| self.slots[(own + k) % n].take())
    }

    /// Returns an instance after a call: into the thread's own slot when free, else the
    /// overflow list while the pool holds fewer than its capacity; else it is dropped.
    pub fn put(&self, t: Box<T>) {
        let own = thread_index() % self.slots.len();
        let Err(t) = self.slots[own].offer(t) else {
            return;
        };
        let held = self.slots.iter().filter(|s| s.is_full()).count();
        let mut overflow = self.overflow.lock();
        if held + overflow.len() < self.capacity {
            overflow.push(t);
        }
    }

    /// Idle instances now.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.slots.iter().filter(|s| s.is_full()).count() + self.overflow.lock().len()
    }
}

impl<T> Drop for InstancePool<T> {
    fn drop(&mut self) {
        for s in self.slots.iter() {
            drop(s.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::InstancePool;

    #[test]
    fn one_thread_gets_its_instance_back() {
        let p = InstancePool::new(2);
        p.put(Box::new(1));
        assert_eq!(p.take(), Some(Box::new(1)));
        assert_eq!(p.take(), None);
    }

    #[test]
    fn never_holds_more_than_its_capacity() {
        let p = InstancePool::new(2);
        for i in 0..5 {
            p.put(Box::new(i));
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
        std::thread::spawn(move || q.put(Box::new(7)))
            .join()
            .unwrap();
        // Not in this thread's slot: found in the other thread's, before creating one.
        assert_eq!(p.take(), Some(Box::new(7)));
    }
}
