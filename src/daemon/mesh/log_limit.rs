//! A small rate limiter for log lines that a peer can cause over and over
//! (refused handshakes, refused dials, a failing local service): at most
//! one line per key and interval, and the next line says how many were
//! suppressed in between.
//!
//! Keys are stable facts (an address and an error code), never message
//! text: an error whose wording changes between attempts (a reset, then a
//! broken pipe) is still the same key. Time comes in as an argument, so the
//! limiter is a pure value that tests drive with chosen instants.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// How often one key is logged at most: the README promises refusals once a
/// minute per address, which keeps a stranger retrying every second to one
/// line a minute.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Keys remembered at most. Past this, keys whose interval has passed are
/// forgotten; if every key is still fresh, a new key's line is suppressed
/// (a flood from more addresses than this must not flood the log either).
pub const LOG_KEYS_MAX: usize = 1024;

/// One line to write now, with how many lines of its key were suppressed
/// since the last one written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Lines of this key suppressed since the last one written.
    pub suppressed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    logged_at: Instant,
    suppressed: u64,
}

/// The limiter: one entry per key.
#[derive(Debug)]
pub struct LogLimiter<K> {
    interval: Duration,
    keys_max: usize,
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Default for LogLimiter<K> {
    fn default() -> LogLimiter<K> {
        LogLimiter::new(LOG_INTERVAL, LOG_KEYS_MAX)
    }
}

impl<K: Hash + Eq + Clone> LogLimiter<K> {
    /// A limiter writing one line per key and `interval`, remembering at
    /// most `keys_max` keys.
    pub fn new(interval: Duration, keys_max: usize) -> LogLimiter<K> {
        LogLimiter {
            interval,
            keys_max,
            entries: HashMap::new(),
        }
    }

    /// Whether a line of `key` is written at `now`: `Some` with the count
    /// suppressed since the last one, or `None` to suppress it.
    pub fn check(&mut self, key: K, now: Instant) -> Option<Admitted> {
        if let Some(entry) = self.entries.get_mut(&key) {
            if now.saturating_duration_since(entry.logged_at) < self.interval {
                entry.suppressed = entry.suppressed.saturating_add(1);
                return None;
            }
            let suppressed = entry.suppressed;
            *entry = Entry {
                logged_at: now,
                suppressed: 0,
            };
            return Some(Admitted { suppressed });
        }
        if self.entries.len() >= self.keys_max {
            let interval = self.interval;
            self.entries
                .retain(|_, entry| now.saturating_duration_since(entry.logged_at) < interval);
            if self.entries.len() >= self.keys_max {
                return None;
            }
        }
        self.entries.insert(
            key,
            Entry {
                logged_at: now,
                suppressed: 0,
            },
        );
        Some(Admitted { suppressed: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_interval_with_the_suppressed_count() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(Duration::from_secs(60), 16);
        let key = ("10.0.0.1", "UNKNOWN_PEER");
        assert_eq!(limiter.check(key, start), Some(Admitted { suppressed: 0 }));
        for second in 1..=59 {
            assert_eq!(
                limiter.check(key, start + Duration::from_secs(second)),
                None
            );
        }
        // Another code from the same address is another key.
        assert!(
            limiter
                .check(("10.0.0.1", "REVOKED_PEER"), start + Duration::from_secs(1))
                .is_some()
        );
        assert_eq!(
            limiter.check(key, start + Duration::from_secs(60)),
            Some(Admitted { suppressed: 59 })
        );
        assert_eq!(limiter.check(key, start + Duration::from_secs(61)), None);
    }

    #[test]
    fn a_full_limiter_forgets_stale_keys_and_suppresses_new_ones_while_all_are_fresh() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(Duration::from_secs(60), 2);
        assert!(limiter.check(1, start).is_some());
        assert!(limiter.check(2, start).is_some());
        assert!(limiter.check(3, start + Duration::from_secs(1)).is_none());
        assert!(limiter.check(3, start + Duration::from_secs(61)).is_some());
    }
}
