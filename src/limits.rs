//! Per-client publish rate limiting: two token buckets (messages and payload bytes per
//! second). A client over its budget is not dropped or disconnected: its connection stops
//! reading the socket until the budget has refilled, so TCP flow control slows it down.
//!
//! Owns the arithmetic only (time is passed in); the engine decides when to charge.

use std::time::{Duration, Instant};

/// A token bucket holding up to one second of its rate, which may go into debt: a packet
/// larger than the whole bucket still passes, and the debt becomes the pause that follows.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(now: Instant) -> Self {
        TokenBucket {
            // Filled on first use, when the rate is known.
            tokens: f64::INFINITY,
            last: now,
        }
    }

    /// Takes `amount` tokens at `rate` per second (0 = unlimited); returns how long the
    /// client must pause before the bucket is out of debt.
    pub fn take(&mut self, rate: f64, amount: f64, now: Instant) -> Option<Duration> {
        if rate <= 0.0 {
            self.tokens = f64::INFINITY;
            return None;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        // A lowered rate (after a reload) caps the tokens saved under the old one.
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.tokens -= amount;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_pause_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        for _ in 0..10 {
            assert_eq!(b.take(10.0, 1.0, t0), None, "one second of burst");
        }
        let pause = b.take(10.0, 1.0, t0).expect("over budget");
        assert!((pause.as_secs_f64() - 0.1).abs() < 1e-9, "{pause:?}");
        assert_eq!(b.take(10.0, 1.0, t0 + Duration::from_millis(200)), None);
        assert_eq!(b.take(0.0, 1e9, t0), None, "0 = unlimited");
    }

    #[test]
    fn oversized_amount_passes_into_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        let pause = b.take(100.0, 300.0, t0).expect("debt");
        assert!((pause.as_secs_f64() - 2.0).abs() < 1e-9, "{pause:?}");
    }
}
