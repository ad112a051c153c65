//! Hybrid logical clock: timestamps that follow wall time when clocks agree
//! and still order causally related events when they do not.
//!
//! Every replicated record carries an [`Hlc`] saying when its origin made the
//! change. Which version of a record wins is decided by its sequence number,
//! not by this clock, so a wrong clock can never make an old value win; the
//! timestamp is what people and the routing layer read as "updated at".
//!
//! The clock never reads the system time: the caller passes `now_ms`. A remote
//! timestamp too far in the future ([`HLC_SKEW_MS_MAX`]) is refused with a
//! typed [`ClockSkew`], so one broker with a broken clock cannot drag every
//! other broker's timestamps into the future.

use serde::{Deserialize, Serialize};

/// How far ahead of local wall time a remote timestamp may be before the
/// clock refuses to follow it, in milliseconds. A minute is far more than NTP
/// drift between healthy machines, and small enough that timestamps stay
/// meaningful to people when one machine's clock is wrong.
pub const HLC_SKEW_MS_MAX: u64 = 60_000;

/// A hybrid logical clock timestamp: wall time in milliseconds, then a
/// counter that orders events within the same millisecond (or while the
/// local wall clock lags behind a timestamp already seen).
///
/// Part of the sync wire format (see [`crate::wire`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch, as the caller's clock said.
    pub wall_ms: u64,
    /// Orders events that share `wall_ms`.
    pub logical: u32,
}

impl Hlc {
    /// The next timestamp after `self` with the same wall time, moving to the
    /// next millisecond if the logical counter is exhausted.
    fn tick(self) -> Hlc {
        match self.logical.checked_add(1) {
            Some(logical) => Hlc {
                wall_ms: self.wall_ms,
                logical,
            },
            // Four billion events in one millisecond only happen when a peer
            // sent a hostile timestamp; borrowing a millisecond keeps the
            // clock monotonic without panicking. At the very end of time the
            // clock stops rather than wrapping.
            None => match self.wall_ms.checked_add(1) {
                Some(wall_ms) => Hlc {
                    wall_ms,
                    logical: 0,
                },
                None => self,
            },
        }
    }
}

/// A remote timestamp that is too far ahead of local wall time to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "remote clock is {ahead_ms} ms ahead of local wall time (limit {HLC_SKEW_MS_MAX} ms); \
     not following it"
)]
pub struct ClockSkew {
    /// The timestamp that was refused.
    pub remote: Hlc,
    /// Local wall time when it was refused.
    pub local_wall_ms: u64,
    /// How far ahead the remote timestamp is, in milliseconds.
    pub ahead_ms: u64,
}

impl ClockSkew {
    /// The stable code of this error.
    pub const CODE: &'static str = "CLOCK_SKEW";

    /// The stable code of this error, [`ClockSkew::CODE`].
    pub fn code(&self) -> &'static str {
        Self::CODE
    }
}

/// The clock of one broker: remembers the last timestamp it issued or
/// observed, so timestamps never go backwards even when wall time does.
#[derive(Debug, Clone, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock that has issued nothing yet.
    pub fn new() -> HlcClock {
        HlcClock::default()
    }

    /// A clock that continues after `last`, the newest timestamp this broker
    /// issued before a restart, so timestamps stay monotonic across restarts
    /// even if wall time went back meanwhile.
    pub fn resume(last: Hlc) -> HlcClock {
        HlcClock { last }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A timestamp for a local event at wall time `now_ms`, greater than every
    /// timestamp issued or observed before.
    pub fn now(&mut self, now_ms: u64) -> Hlc {
        self.last = if now_ms > self.last.wall_ms {
            Hlc {
                wall_ms: now_ms,
                logical: 0,
            }
        } else {
            self.last.tick()
        };
        self.last
    }

    /// Takes a remote timestamp into account, so that later local timestamps
    /// order after it, and returns the clock's new timestamp.
    ///
    /// A remote more than [`HLC_SKEW_MS_MAX`] ahead of `now_ms` is refused
    /// and leaves the clock unchanged.
    pub fn observe(&mut self, now_ms: u64, remote: Hlc) -> Result<Hlc, ClockSkew> {
        let ahead_ms = remote.wall_ms.saturating_sub(now_ms);
        if ahead_ms > HLC_SKEW_MS_MAX {
            return Err(ClockSkew {
                remote,
                local_wall_ms: now_ms,
                ahead_ms,
            });
        }
        let wall_ms = now_ms.max(self.last.wall_ms).max(remote.wall_ms);
        let from_last = wall_ms == self.last.wall_ms;
        let from_remote = wall_ms == remote.wall_ms;
        self.last = match (from_last, from_remote) {
            (true, true) => Hlc {
                wall_ms,
                logical: self.last.logical.max(remote.logical),
            }
            .tick(),
            (true, false) => self.last.tick(),
            (false, true) => remote.tick(),
            (false, false) => Hlc {
                wall_ms,
                logical: 0,
            },
        };
        Ok(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hlc(wall_ms: u64, logical: u32) -> Hlc {
        Hlc { wall_ms, logical }
    }

    #[test]
    fn now_follows_wall_time_and_never_goes_back() {
        let mut clock = HlcClock::new();
        assert_eq!(clock.now(1_000), hlc(1_000, 0));
        assert_eq!(clock.now(1_000), hlc(1_000, 1));
        assert_eq!(clock.now(2_000), hlc(2_000, 0));
        // Wall time stepped back (NTP correction): the clock keeps counting.
        assert_eq!(clock.now(1_500), hlc(2_000, 1));
        assert_eq!(clock.last(), hlc(2_000, 1));
    }

    #[test]
    fn observe_orders_after_the_remote() {
        let mut clock = HlcClock::new();
        clock.now(1_000);
        // A peer slightly ahead: local timestamps move past it.
        assert_eq!(clock.observe(1_000, hlc(1_200, 5)).unwrap(), hlc(1_200, 6));
        assert!(clock.now(1_100) > hlc(1_200, 5));
        // A peer behind: nothing to follow, the clock still ticks.
        let before = clock.last();
        assert!(clock.observe(1_100, hlc(500, 9)).unwrap() > before);
        // Same wall time on both sides: the larger logical wins, plus one.
        let mut clock = HlcClock::new();
        clock.now(3_000);
        assert_eq!(clock.observe(3_000, hlc(3_000, 7)).unwrap(), hlc(3_000, 8));
        // Local wall time ahead of both: a fresh millisecond.
        assert_eq!(clock.observe(4_000, hlc(3_500, 2)).unwrap(), hlc(4_000, 0));
    }

    #[test]
    fn a_remote_too_far_ahead_is_refused() {
        let mut clock = HlcClock::new();
        clock.now(10_000);
        let remote = hlc(10_000 + HLC_SKEW_MS_MAX + 1, 0);
        let err = clock.observe(10_000, remote).unwrap_err();
        assert_eq!(err.ahead_ms, HLC_SKEW_MS_MAX + 1);
        assert_eq!(err.remote, remote);
        assert_eq!(err.code(), "CLOCK_SKEW");
        assert!(err.to_string().contains("60001 ms ahead"), "{err}");
        // Refusing leaves the clock where it was.
        assert_eq!(clock.last(), hlc(10_000, 0));
        // Exactly at the limit is still followed.
        let edge = hlc(10_000 + HLC_SKEW_MS_MAX, 3);
        assert_eq!(clock.observe(10_000, edge).unwrap(), hlc(edge.wall_ms, 4));
    }

    #[test]
    fn skewed_clocks_still_order_causally() {
        // Broker a's wall clock is 30 s ahead of broker b's.
        let mut a = HlcClock::new();
        let mut b = HlcClock::new();
        let sent = a.now(130_000);
        let seen = b.observe(100_000, sent).unwrap();
        let reply = b.now(100_001);
        assert!(seen > sent && reply > sent);
        let back = a.observe(130_000, reply).unwrap();
        assert!(back > reply);
    }

    #[test]
    fn a_hostile_logical_counter_does_not_panic() {
        let mut clock = HlcClock::new();
        let next = clock.observe(5, hlc(5, u32::MAX)).unwrap();
        assert_eq!(next, hlc(6, 0));
        let max = hlc(u64::MAX, u32::MAX);
        let mut clock = HlcClock::resume(max);
        assert_eq!(clock.now(0), max);
        let mut resumed = HlcClock::resume(hlc(9_000, 4));
        assert_eq!(resumed.now(1_000), hlc(9_000, 5));
    }
}
