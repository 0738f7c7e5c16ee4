//! A bounded history: the newest `capacity` entries, oldest dropped first. Used for what an
//! operator looks back on (reload attempts, a plugin's recent errors), where an unbounded
//! list would let a flapping config or a failing plugin grow memory without end.
//!
//! A leaf: imports nothing of the crate.

use std::collections::VecDeque;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct HistoryRing<T> {
    entries: VecDeque<T>,
    capacity: usize,
}

impl<T> HistoryRing<T> {
    /// An empty ring keeping at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        HistoryRing {
            entries: VecDeque::with_capacity(capacity.min(64)),
            capacity,
        }
    }

    /// Appends `entry`, dropping the oldest one when full.
    pub fn push(&mut self, entry: T) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Entries held, at most the capacity.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, newest first (what an operator reads first).
    pub fn newest_first(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().rev()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_entries_and_lists_them_newest_first() {
        let mut ring = HistoryRing::new(3);
        assert!(ring.is_empty());
        for i in 1..=5 {
            ring.push(i);
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.newest_first().copied().collect::<Vec<_>>(), [5, 4, 3]);
    }

    #[test]
    fn a_zero_capacity_still_keeps_the_last_entry() {
        let mut ring = HistoryRing::new(0);
        ring.push("a");
        ring.push("b");
        assert_eq!(ring.newest_first().copied().collect::<Vec<_>>(), ["b"]);
    }
}
