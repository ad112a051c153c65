//! Many pure routing schedules ([`crate::pure_routing`]) on every core: one
//! per seed of a range, the node count cycling through a range, each
//! checked on its own. A failure names its seed and the command that
//! replays it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::pure_routing::{self, Broken, RoutingOptions, RoutingReport};

/// Invocations per schedule unless asked otherwise: the workload the
/// exactly-once claim is made for.
pub const INVOCATIONS_DEFAULT: usize = 1_000;

/// Failed schedules kept in full in the report; the rest are counted.
const FAILURES_KEPT_MAX: usize = 50;

/// How a pure swarm is shaped.
#[derive(Debug, Clone)]
pub struct PureSwarmOptions {
    /// First seed.
    pub first_seed: u64,
    /// Seed after the last.
    pub end_seed: u64,
    /// Node counts, inclusive; seed `s` runs `min + s % (max - min + 1)`.
    pub nodes: (usize, usize),
    /// Invocations per schedule.
    pub invocations: usize,
    /// Threads.
    pub jobs: usize,
    /// A broken variant, for tests.
    pub broken: Option<Broken>,
}

/// What a pure swarm found.
#[derive(Debug, Clone, Serialize)]
pub struct PureSwarmReport {
    /// Schedules run.
    pub schedules: u64,
    /// Schedules that failed.
    pub failed: u64,
    /// Invocations committed over all schedules.
    pub invocations: u64,
    /// Executions over all schedules.
    pub executions: u64,
    /// Held executions carried on over a restart, over all schedules.
    pub carried_on: u64,
    /// Events over all schedules.
    pub events: u64,
    /// Wall seconds.
    pub wall_s: f64,
    /// Schedules per wall second.
    pub schedules_per_s: f64,
    /// The first failures, in seed order.
    pub failures: Vec<RoutingReport>,
}

/// The node count of `seed`.
pub fn nodes_of(seed: u64, nodes: (usize, usize)) -> usize {
    let (min, max) = (nodes.0.min(nodes.1), nodes.0.max(nodes.1));
    min + (seed % (max - min + 1) as u64) as usize
}

/// Runs every seed of the range; `each` sees every report as it ends (from
/// the worker threads, in no particular order).
pub fn run(options: &PureSwarmOptions, each: impl Fn(&RoutingReport) + Sync) -> PureSwarmReport {
    let wall = std::time::Instant::now();
    let next = AtomicU64::new(options.first_seed);
    let totals = Mutex::new((0u64, 0u64, 0u64, 0u64, 0u64, Vec::new(), 0u64));
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= options.end_seed {
                        return;
                    }
                    let report = pure_routing::run(&RoutingOptions {
                        seed,
                        nodes: nodes_of(seed, options.nodes),
                        invocations: options.invocations,
                        broken: options.broken,
                    });
                    each(&report);
                    let mut totals = totals.lock().unwrap_or_else(|e| e.into_inner());
                    totals.0 += 1;
                    totals.2 += report.submitted as u64;
                    totals.3 += report.executions as u64;
                    totals.4 += report.events;
                    totals.6 += report.carried_on as u64;
                    if !report.passed() {
                        totals.1 += 1;
                        totals.5.push(report);
                    }
                }
            });
        }
    });
    let (schedules, failed, invocations, executions, events, mut failures, carried_on) =
        totals.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|report: &RoutingReport| report.seed);
    failures.truncate(FAILURES_KEPT_MAX);
    let wall_s = wall.elapsed().as_secs_f64();
    PureSwarmReport {
        schedules,
        failed,
        invocations,
        executions,
        carried_on,
        events,
        wall_s,
        schedules_per_s: schedules as f64 / wall_s.max(1e-9),
        failures,
    }
}

impl PureSwarmReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "pure routing swarm: {} schedules, {} failed; {} invocations, {} executions ({} carried on over a restart), {} events\n  \
             {:.1} s wall: {:.1} schedules/s\n",
            self.schedules,
            self.failed,
            self.invocations,
            self.executions,
            self.carried_on,
            self.events,
            self.wall_s,
            self.schedules_per_s
        );
        for failure in &self.failures {
            text.push_str(&format!(
                "  FAIL seed {} ({} nodes): {}\n    replay: {}\n",
                failure.seed,
                failure.nodes,
                failure
                    .violations
                    .first()
                    .map(|v| format!("{}: {}", v.name, v.detail))
                    .unwrap_or_default(),
                failure.replay
            ));
        }
        text
    }
}
