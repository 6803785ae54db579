//! The retry budget of a destination: retries may add at most `ratio` of the original
//! requests of the last `ttl`, plus `min_retries_per_second` (over the same window).
//!
//! The algorithm is Finagle's, as in tower's `TpsBudget`: requests deposit, retries
//! withdraw, and the balance is kept in ten slots of `ttl / 10` that expire in turn. We keep
//! our own type because tower's stores the cost of a retry as the integer part of `1 / ratio`:
//! a 20% budget (1 / 0.2f32 = 4.99...) let 25% through in the e2e suite, and 40% would let
//! 50% through. Here a request deposits `ratio` in thousandths of a retry, exactly. It also
//! never panics on its input (tower's asserts on the ttl and rate; ours come from the
//! controller, which validates them, but a panic in the proxy is an outage).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Thousandths of a retry: the unit of the balance.
const UNIT: i64 = 1000;
/// Slots the window is divided into.
const SLOTS: usize = 10;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// See the module doc.
pub struct RetryBudget {
    /// Deposit per request, in thousandths of a retry.
    deposit: i64,
    /// Retries always allowed per window, in thousandths.
    reserve: i64,
    /// Balance of the current slot.
    current: AtomicI64,
    /// Balances of the last completed slots (a ring; the window is these plus the current
    /// slot, i.e. `ttl` to 1.1 `ttl`).
    slots: [AtomicI64; SLOTS],
    slot_ns: u64,
    /// When the current slot ends (ns since [`EPOCH`]); read without the lock.
    rotate_at: AtomicU64,
    /// Where the next completed slot goes (the oldest); locked only to rotate.
    rotation: Mutex<usize>,
}

impl RetryBudget {
    pub fn new(ttl: Duration, min_retries_per_second: u32, ratio: f32) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let slot_ns = u64::try_from(ttl.as_nanos() / SLOTS as u128).unwrap_or(u64::MAX);
        Self {
            deposit: (f64::from(ratio) * UNIT as f64).round() as i64,
            reserve: i64::from(min_retries_per_second)
                .saturating_mul(ttl.as_secs() as i64)
                .saturating_mul(UNIT),
            current: AtomicI64::new(0),
            slots: Default::default(),
            slot_ns,
            rotate_at: AtomicU64::new(now_ns().saturating_add(slot_ns)),
            rotation: Mutex::new(0),
        }
    }

    /// An original request: earns `ratio` of a retry.
    pub fn deposit(&self) {
        if self.deposit > 0 {
            self.rotate();
            self.current.fetch_add(self.deposit, Ordering::Relaxed);
        }
    }

    /// A retry: allowed (and charged) when the window's balance covers it.
    pub fn withdraw(&self) -> bool {
        self.rotate();
        if self.balance() >= UNIT {
            self.current.fetch_sub(UNIT, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    fn balance(&self) -> i64 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .fold(self.current.load(Ordering::Relaxed), i64::saturating_add)
            .saturating_add(self.reserve)
    }

    /// Moves to the next slot(s) when the current one is over, expiring the oldest.
    fn rotate(&self) {
        let now = now_ns();
        if now < self.rotate_at.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut index) = self.rotation.lock() else {
            return;
        };
        let due = self.rotate_at.load(Ordering::Relaxed);
        if now < due {
            return; // another caller rotated meanwhile
        }
        // Commit the current slot over the oldest committed one, then one empty slot per
        // further slot time that passed (at most all of them).
        let skipped = (now - due) / self.slot_ns.max(1);
        self.slots[*index].store(self.current.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        *index = (*index + 1) % SLOTS;
        for _ in 0..skipped.min(SLOTS as u64) {
            self.slots[*index].store(0, Ordering::Relaxed);
            *index = (*index + 1) % SLOTS;
        }
        self.rotate_at.store(
            due.saturating_add(self.slot_ns.saturating_mul(skipped + 1)),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries_allowed(b: &RetryBudget) -> u32 {
        let mut n = 0;
        while b.withdraw() {
            n += 1;
            assert!(n < 1_000_000);
        }
        n
    }

    #[test]
    fn ratio_is_exact() {
        for (ratio, requests, expected) in [(0.2, 1000, 200), (0.4, 1000, 400), (0.3, 1000, 300)] {
            let b = RetryBudget::new(Duration::from_secs(10), 0, ratio);
            for _ in 0..requests {
                b.deposit();
            }
            assert_eq!(retries_allowed(&b), expected, "ratio {ratio}");
        }
    }

    #[test]
    fn reserve_allows_min_per_second_over_the_window_without_requests() {
        let b = RetryBudget::new(Duration::from_secs(10), 10, 0.2);
        assert_eq!(retries_allowed(&b), 100);
        let none = RetryBudget::new(Duration::from_secs(10), 0, 0.0);
        none.deposit();
        assert!(!none.withdraw());
    }

    #[test]
    fn deposits_and_withdrawals_expire_with_the_window() {
        let b = RetryBudget::new(Duration::from_secs(1), 0, 1.0);
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.withdraw());
        std::thread::sleep(Duration::from_millis(1150));
        assert!(!b.withdraw(), "old deposits must expire");
        b.deposit();
        assert!(b.withdraw());
    }

    #[test]
    fn odd_input_does_not_panic() {
        for (ttl, min, ratio) in [
            (Duration::ZERO, u32::MAX, f32::NAN),
            (Duration::MAX, 0, f32::INFINITY),
            (Duration::from_millis(1), 1, -1.0),
        ] {
            let b = RetryBudget::new(ttl, min, ratio);
            b.deposit();
            let _ = b.withdraw();
        }
    }
}
