//! The simulated wall clock a broker's mesh reads (hybrid logical clock
//! timestamps, invite expiry): the scenario's epoch, plus the simulated
//! time elapsed on the paused tokio clock, plus the node's skew.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::time::Instant;

/// The Unix time, in milliseconds, at which every simulated run starts
/// (2026-01-01T00:00:00Z): fixed, so record timestamps reproduce.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// One node's clock. It survives the node's restarts, like a machine's
/// clock survives its broker's.
#[derive(Debug)]
pub struct SimClock {
    start: Instant,
    skew_ms: AtomicI64,
}

impl SimClock {
    /// A clock reading [`EPOCH_MS`] at `start` (a paused-clock instant).
    pub fn new(start: Instant) -> SimClock {
        SimClock {
            start,
            skew_ms: AtomicI64::new(0),
        }
    }

    /// Sets how far this node's clock is ahead (positive) or behind.
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
    }

    /// The current skew in milliseconds.
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }
}

impl scout::daemon::mesh::Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let elapsed_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        EPOCH_MS
            .saturating_add(elapsed_ms)
            .saturating_add_signed(self.skew_ms())
    }
}
