//! The login back-off: refusals from one source address are answered ever more slowly, so
//! that guessing passwords over many connections costs the guesser, not the broker.
//!
//! Owns the per-address failure counts; knows nothing of sockets or the chain that decided.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a failure is remembered.
const MEMORY: Duration = Duration::from_secs(600);
/// Addresses tracked before old entries are swept.
const MAX_ADDRESSES: usize = 100_000;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct AuthBackoff {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthBackoff {
    /// A login from `ip` proved a credential: its failures are forgotten. (An anonymous
    /// connect between guesses must not reset the delay, so only callers that checked a
    /// password or certificate call this.)
    pub fn succeeded(&self, ip: IpAddr) {
        let mut failures = self.failures.lock();
        if !failures.is_empty() {
            failures.remove(&ip);
        }
    }

    /// A login from `ip` failed: returns how long to wait before answering, doubling from
    /// `base` with each recent failure, at most `max`.
    pub fn failed(&self, ip: IpAddr, base: Duration, max: Duration) -> Duration {
        let mut failures = self.failures.lock();
        if failures.len() > MAX_ADDRESSES {
            failures.retain(|_, (_, at)| at.elapsed() < MEMORY);
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() > MEMORY {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
        let factor = 1u32 << (entry.0 - 1).min(16);
        // Saturating: a delay of years times 2^16 must not overflow (and panic).
        base.saturating_mul(factor).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets_on_success() {
        let b = AuthBackoff::default();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(b.failed(ip, base, max), Duration::from_millis(100));
        assert_eq!(b.failed(ip, base, max), Duration::from_millis(200));
        assert_eq!(b.failed(ip, base, max), max);
        b.succeeded(ip);
        assert_eq!(b.failed(ip, base, max), Duration::from_millis(100));
        let other: IpAddr = [127, 0, 0, 2].into();
        assert_eq!(b.failed(other, base, max), Duration::from_millis(100));
    }

    #[test]
    fn huge_delays_saturate() {
        let b = AuthBackoff::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..40 {
            let d = b.failed(ip, Duration::from_secs(u64::MAX / 4), Duration::MAX);
            assert!(d >= Duration::from_secs(u64::MAX / 4));
        }
    }
}
