//! The simulated wall clock a broker reads (record and row timestamps,
//! hybrid logical clock stamps, invite expiry): the scenario's epoch, plus
//! the simulated time elapsed on the paused tokio clock, plus the node's
//! skew. The clock itself is `scout::env::SimulatedClock`, so the broker's
//! environment can read it; this module fixes the epoch.

use std::sync::Arc;

use tokio::time::Instant;

/// One node's clock. It survives the node's restarts, like a machine's
/// clock survives its broker's.
pub use scout::env::SimulatedClock as SimClock;

/// The Unix time, in milliseconds, at which every simulated run starts
/// (2026-01-01T00:00:00Z): fixed, so record timestamps reproduce.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// A node's clock reading [`EPOCH_MS`] at `start` (a paused-clock instant).
pub fn node_clock(start: Instant) -> Arc<SimClock> {
    Arc::new(SimClock::new(start, EPOCH_MS))
}
