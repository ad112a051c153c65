//! What a run reports: the human summary on stdout and `results.json`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::check::{CheckResult, CheckStatus};
use crate::history::{FaultMark, Latency, OpRecord, Sample};
use crate::net::{NetStats, ScheduleDigest};

/// Operations by outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpsSummary {
    /// Every operation.
    pub total: usize,
    /// Accepted and replicated to every live node.
    pub ok: usize,
    /// Refused.
    pub failed: usize,
    /// Accepted but not seen everywhere by the end.
    pub unknown: usize,
    /// Invocations submitted.
    pub invocations: usize,
    /// Registry writes: from acceptance until every live replica held it.
    pub replication: Latency,
    /// The same for writes made on a whole mesh: accepted at least 2 s
    /// before the first fault (every write, without faults).
    pub replication_before_faults: Latency,
    /// Completed invocations: from submission until the origin had the
    /// answer.
    pub invocation: Latency,
}

/// When the replicas agreed again.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Convergence {
    /// The last fault, in simulated ms after the start.
    pub last_fault_ms: u64,
    /// The last operation.
    pub last_op_ms: u64,
    /// The first sample from which every live replica agreed to the end.
    pub converged_at_ms: Option<u64>,
    /// `converged_at_ms` minus the later of the last fault and the last
    /// operation.
    pub after_ms: Option<u64>,
    /// The scenario's bound on `after_ms`.
    pub bound_ms: u64,
}

/// What the live brokers sent once the mesh had converged and nothing was
/// happening: anti-entropy, view shuffles, keep-alives.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleTraffic {
    /// The window measured, in simulated ms after the start.
    pub from_ms: u64,
    /// Its end.
    pub to_ms: u64,
    /// Bytes sent per second, averaged over the live brokers.
    pub mean_bytes_per_s: f64,
    /// The most any one live broker sent per second.
    pub max_bytes_per_s: f64,
}

/// Everything one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// The seed.
    pub seed: u64,
    /// Brokers.
    pub nodes: usize,
    /// Their names, by index (the order of every per-node list).
    pub node_names: Vec<String>,
    /// Whether every check passed.
    pub passed: bool,
    /// Simulated milliseconds of the scenario (after formation).
    pub sim_ms: u64,
    /// Simulated milliseconds the mesh took to form (`None`: it did not).
    pub formation_ms: Option<u64>,
    /// Simulated milliseconds of the whole run (formation included).
    pub simulated_ms: u64,
    /// Wall-clock milliseconds of the whole run.
    pub wall_ms: f64,
    /// Datagram counters.
    pub network: NetStats,
    /// Digest of the packet schedule: the same seed gives the same digest.
    pub schedule_digest: ScheduleDigest,
    /// The live replicas' final state digest (of the first live node).
    pub state_digest: Option<u64>,
    /// Operations by outcome.
    pub ops: OpsSummary,
    /// Convergence after the last fault.
    pub convergence: Convergence,
    /// Traffic once converged, when the run leaves a long enough quiet
    /// end.
    pub idle: Option<IdleTraffic>,
    /// Every check.
    pub checks: Vec<CheckResult>,
    /// The faults as they happened.
    pub faults: Vec<FaultMark>,
    /// Every operation.
    pub ops_history: Vec<OpRecord>,
    /// The replicas' states over time.
    pub samples: Vec<Sample>,
    /// Panic messages, if any.
    pub panics: Vec<String>,
    /// The command that replays this run.
    pub replay: String,
}

impl RunReport {
    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|check| !check.passed())
    }

    /// Simulated time over wall time.
    pub fn speedup(&self) -> f64 {
        if self.wall_ms > 0.0 {
            self.simulated_ms as f64 / self.wall_ms
        } else {
            0.0
        }
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let _ = writeln!(
            out,
            "{verdict} {} (seed {}, {} nodes)",
            self.scenario, self.seed, self.nodes
        );
        let _ = writeln!(
            out,
            "  time        {:.1} s simulated ({}) in {:.2} s wall ({:.0}x)",
            self.simulated_ms as f64 / 1000.0,
            match self.formation_ms {
                Some(ms) => format!(
                    "mesh formed in {:.1} s, then {:.1} s of scenario",
                    ms as f64 / 1000.0,
                    self.sim_ms as f64 / 1000.0
                ),
                None => "the mesh did not form".to_owned(),
            },
            self.wall_ms / 1000.0,
            self.speedup()
        );
        let net = &self.network;
        let dropped: Vec<String> = net
            .dropped
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  datagrams   {} sent, {} delivered, {} dropped{}{}",
            net.sent,
            net.delivered,
            net.dropped_total(),
            if dropped.is_empty() {
                String::new()
            } else {
                format!(" ({})", dropped.join(", "))
            },
            if net.duplicated + net.held > 0 {
                format!(", {} duplicated, {} held", net.duplicated, net.held)
            } else {
                String::new()
            }
        );
        let ops = &self.ops;
        let latency = &ops.replication;
        let _ = writeln!(
            out,
            "  operations  {} ok, {} failed, {} unknown ({} invocations); writes on every live node after p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            ops.ok,
            ops.failed,
            ops.unknown,
            ops.invocations,
            latency.p50_ms,
            latency.p99_ms,
            latency.max_ms
        );
        if let (Some(_), Some(first)) = (
            self.faults.first(),
            Some(&ops.replication_before_faults).filter(|latency| latency.count > 0),
        ) {
            let _ = writeln!(
                out,
                "  whole mesh  {} writes before the first fault on every live node after p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                first.count, first.p50_ms, first.p99_ms, first.max_ms
            );
        }
        if ops.invocation.count > 0 {
            let latency = &ops.invocation;
            let _ = writeln!(
                out,
                "  invocations {} completed; answer back after p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                latency.count, latency.p50_ms, latency.p99_ms, latency.max_ms
            );
        }
        let convergence = &self.convergence;
        let _ = writeln!(
            out,
            "  convergence {} (last fault at {:.1} s, last write at {:.1} s, bound {} ms)",
            match convergence.after_ms {
                Some(after) => format!("{after} ms after the last heal"),
                None => "never".to_owned(),
            },
            convergence.last_fault_ms as f64 / 1000.0,
            convergence.last_op_ms as f64 / 1000.0,
            convergence.bound_ms
        );
        if let Some(idle) = &self.idle {
            let _ = writeln!(
                out,
                "  idle        {:.0} B/s sent per live broker (max {:.0}) from {:.1} s to {:.1} s, once converged",
                idle.mean_bytes_per_s,
                idle.max_bytes_per_s,
                idle.from_ms as f64 / 1000.0,
                idle.to_ms as f64 / 1000.0
            );
        }
        let _ = writeln!(out, "  schedule    {}", self.schedule_digest);
        for check in &self.checks {
            let status = match check.status {
                CheckStatus::Pass => "pass",
                CheckStatus::Fail => "FAIL",
            };
            let _ = writeln!(out, "  {status:<7} {:<25} {}", check.name, check.detail);
        }
        if !self.passed {
            let _ = writeln!(out, "  seed        {}", self.seed);
            let _ = writeln!(out, "  replay      {}", self.replay);
        }
        out
    }
}

/// Writes `results.json` (and returns its path) into `dir`.
pub fn write_results(dir: &Path, value: &impl Serialize) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("results.json");
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
