//! The broker's environment: the one place that reads clocks, draws
//! randomness and mints ids.
//!
//! Everything in a broker that needs the time, a random number or a fresh
//! id asks an [`Env`]. `scout up` runs on [`Env::system`] (the real clocks,
//! uuid v7 ids, randomness seeded from the operating system); netsim runs
//! every broker on [`Env::simulated`] (a [`SimulatedClock`] over tokio's
//! paused time, ids and randomness from the run's seed), so two runs of one
//! seed make the same choices in the same order.
//!
//! Two clocks, for two questions. [`Env::now_unix_ms`] is the wall clock:
//! what goes into rows, records and timestamps other machines read, and
//! what may jump (NTP steps, a laptop resuming, a simulated skew).
//! [`Env::now_mono_ms`] counts from the moment the environment was made
//! and never goes backwards; retries, backoff and deadline durations run on
//! it, so a wall clock that jumps neither stalls nor hurries them.
//!
//! Architecture invariant: no code outside this file reads a clock for a
//! timestamp, draws from an entropy source or mints an id. (Key material
//! in `identity.rs` is the deliberate exception: it comes straight from
//! the operating system.) Secrets drawn here ([`Env::secret_bytes`]) come
//! from the operating system too, seeded or not: a seed replays a run's
//! choices, never its keys.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::distributions::{Distribution, Standard};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Time, randomness and ids for one broker. Cheap to clone: clones share
/// the clocks and the random streams.
#[derive(Debug, Clone)]
pub struct Env {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    wall: WallClock,
    /// Zero of [`Env::now_mono_ms`]. Tokio's clock, so a paused runtime
    /// (netsim, tests) moves it only as simulated time passes.
    started: tokio::time::Instant,
    /// The seed the random streams came from, when the caller gave one.
    seed: Option<u64>,
    /// Random numbers (jitter, invite secrets, sync seeds).
    random: Mutex<StdRng>,
    /// Where ids come from. A stream of its own, so a component that draws
    /// one more random number does not change every id after it.
    ids: Ids,
}

#[derive(Debug)]
enum WallClock {
    /// The operating system's clock.
    System,
    /// netsim's clock: an epoch plus simulated time plus a skew.
    Simulated(Arc<SimulatedClock>),
}

#[derive(Debug)]
enum Ids {
    /// uuid v7 from the system clock and the operating system's randomness.
    System,
    /// uuid v7 built from the simulated wall clock and a seeded stream
    /// (boxed: the generator's state is large beside the empty variant).
    Seeded(Box<Mutex<StdRng>>),
}

/// Names the id stream's seed apart from the random stream's seed, so the
/// two never coincide for one run seed.
const IDS_SEED_SALT: u64 = 0x6964_735f_7374_726d;

impl Env {
    /// The production environment: the system's wall clock, uuid v7 ids,
    /// and random numbers from a generator seeded with `seed`, or with the
    /// operating system's randomness when `seed` is `None` (what `scout up`
    /// does). A seed makes only the random numbers repeat; clocks and ids
    /// stay real.
    pub fn system(seed: Option<u64>) -> Env {
        let random = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Env::build(WallClock::System, seed, random, Ids::System)
    }

    /// netsim's environment: wall time from `clock`, monotonic time from
    /// tokio's (paused) clock, and ids and random numbers from `seed`.
    pub fn simulated(clock: Arc<SimulatedClock>, seed: u64) -> Env {
        Env::build(
            WallClock::Simulated(clock),
            Some(seed),
            StdRng::seed_from_u64(seed),
            Ids::Seeded(Box::new(Mutex::new(StdRng::seed_from_u64(
                seed ^ IDS_SEED_SALT,
            )))),
        )
    }

    fn build(wall: WallClock, seed: Option<u64>, random: StdRng, ids: Ids) -> Env {
        Env {
            inner: Arc::new(Inner {
                wall,
                started: tokio::time::Instant::now(),
                seed,
                random: Mutex::new(random),
                ids,
            }),
        }
    }

    /// Wall-clock unix milliseconds: for timestamps, never for measuring
    /// how long something took.
    pub fn now_unix_ms(&self) -> u64 {
        match &self.inner.wall {
            WallClock::System => {
                let since_epoch = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
            }
            WallClock::Simulated(clock) => clock.now_unix_ms(),
        }
    }

    /// [`Env::now_unix_ms`] in the store's column type.
    pub fn now_unix_ms_i64(&self) -> i64 {
        i64::try_from(self.now_unix_ms()).unwrap_or(i64::MAX)
    }

    /// Milliseconds since this environment was made (the broker started),
    /// on a clock that never goes backwards and ignores wall-clock steps.
    pub fn now_mono_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The monotonic clock as a tokio instant, for code that keeps
    /// instants (rate limits, the address book's backoff, rescan
    /// intervals). Tokio's clock, so it follows a paused runtime.
    pub fn now_instant(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    /// A fresh time-ordered id (uuid v7) for a new row or record.
    pub fn new_id(&self) -> String {
        match &self.inner.ids {
            Ids::System => uuid::Uuid::now_v7().to_string(),
            Ids::Seeded(stream) => {
                let random: [u8; 10] = lock(stream).r#gen();
                uuid::Builder::from_unix_timestamp_millis(self.now_unix_ms(), &random)
                    .into_uuid()
                    .to_string()
            }
        }
    }

    /// A random `u64`.
    pub fn random_u64(&self) -> u64 {
        self.random()
    }

    /// A random `f64` in `[0, 1)`, the unit jitter is drawn in.
    pub fn random_f64(&self) -> f64 {
        self.random()
    }

    /// 32 bytes for a secret (an ephemeral key), always from the operating
    /// system: never the seeded stream, so nobody rebuilds it from a seed.
    pub fn secret_bytes(&self) -> [u8; 32] {
        use rand::RngCore as _;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        bytes
    }

    /// A random value of any type the standard distribution covers.
    pub fn random<T>(&self) -> T
    where
        Standard: Distribution<T>,
    {
        lock(&self.inner.random).r#gen()
    }

    /// The seed this environment's randomness replays, if it was given
    /// one. Components with a generator of their own (the QUIC endpoint)
    /// take a seed only then, and the operating system's randomness
    /// otherwise, exactly as without an environment.
    pub fn replay_seed(&self) -> Option<u64> {
        self.inner.seed
    }
}

/// A simulated wall clock: an epoch, plus the simulated time elapsed on
/// tokio's paused clock, plus a skew that scenarios may change at any
/// time (also backwards). It outlives the broker it serves, like a
/// machine's clock outlives its broker's restarts.
#[derive(Debug)]
pub struct SimulatedClock {
    start: tokio::time::Instant,
    epoch_ms: u64,
    skew_ms: AtomicI64,
}

impl SimulatedClock {
    /// A clock reading `epoch_ms` at `start` (an instant of tokio's clock).
    pub fn new(start: tokio::time::Instant, epoch_ms: u64) -> SimulatedClock {
        SimulatedClock {
            start,
            epoch_ms,
            skew_ms: AtomicI64::new(0),
        }
    }

    /// Sets how far this clock is ahead (positive) or behind.
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
    }

    /// The current skew in milliseconds.
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }

    /// Unix milliseconds on this clock.
    pub fn now_unix_ms(&self) -> u64 {
        let elapsed_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.epoch_ms
            .saturating_add(elapsed_ms)
            .saturating_add_signed(self.skew_ms())
    }
}

/// A poisoned stream is still a stream: a panic elsewhere leaves no
/// generator half-updated in a way that matters.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH_MS: u64 = 1_767_225_600_000;

    #[test]
    fn monotonic_time_ignores_a_wall_clock_stepped_back() {
        let clock = Arc::new(SimulatedClock::new(tokio::time::Instant::now(), EPOCH_MS));
        let env = Env::simulated(clock.clone(), 7);
        let wall_before = env.now_unix_ms();
        let mono_before = env.now_mono_ms();
        clock.set_skew_ms(-3_600_000);
        let wall_after = env.now_unix_ms();
        let mono_after = env.now_mono_ms();
        assert!(wall_after < wall_before, "the wall clock went back");
        assert!(mono_after >= mono_before, "monotonic time never goes back");
        // Stepped forward again, far ahead: monotonic time does not jump.
        clock.set_skew_ms(86_400_000);
        assert!(env.now_unix_ms() > wall_before + 86_000_000);
        assert!(env.now_mono_ms() < 86_000_000);
    }

    #[test]
    fn simulated_ids_and_numbers_repeat_with_the_seed() {
        let start = tokio::time::Instant::now();
        let draw = |seed| {
            // Real time passes between the two draws and may move the
            // ids' millisecond part, so only their random part is compared.
            let env = Env::simulated(Arc::new(SimulatedClock::new(start, EPOCH_MS)), seed);
            let ids: Vec<String> = (0..4).map(|_| env.new_id()[14..].to_owned()).collect();
            let numbers: Vec<u64> = (0..4).map(|_| env.random_u64()).collect();
            (ids, numbers)
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn system_ids_are_uuid_v7_and_distinct() {
        let env = Env::system(None);
        let first = uuid::Uuid::parse_str(&env.new_id()).unwrap();
        let second = uuid::Uuid::parse_str(&env.new_id()).unwrap();
        assert_eq!(first.get_version_num(), 7);
        assert_ne!(first, second);
        assert_eq!(env.replay_seed(), None);
        assert_eq!(
            Env::system(Some(5)).random_u64(),
            Env::system(Some(5)).random_u64()
        );
    }
}
