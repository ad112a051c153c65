//! Swarm mode: each seed draws a random fault schedule over a random
//! workload, written as an ordinary scenario file (so a failure replays
//! with `scout-netsim run FILE --seed N`), always ending with a phase that
//! heals everything (partitions, link rules, held links, crashed nodes)
//! and then gives the replicas time to agree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use anyhow::Context as _;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::check::CheckResult;
use crate::net::{LatencyDistribution, LatencyPer, LinkPatch};
use crate::run::{self, RunOptions};
use crate::scenario::{
    ChecksSpec, FaultEntry, FlapSpec, HealSpec, LinkFaultSpec, MixSpec, NodesSpec, RestartSpec,
    Scenario, Sides, SkewSpec, ViewsSpec, WorkloadSpec, WorktreesSpec,
};
use crate::seeds;

/// The liveness phase after the final heal, in simulated milliseconds.
pub const LIVENESS_MS: u64 = 30_000;

/// The bound on convergence after the final heal in a swarm scenario.
/// Anti-entropy runs every 5 s ± 1 s and a dial backs off to at most 30 s,
/// so a link that healed is used again within one backoff; this leaves
/// room for that and a couple of rounds.
pub const SWARM_CONVERGE_WITHIN_MS: u64 = 25_000;

/// Workspaces a swarm's worktree definition is mentioned with: few enough
/// that mentions repeat (from several origins, across faults), so a second
/// worktree for one workspace would show.
pub const SWARM_WORKSPACES: usize = 3;

/// Nodes of a swarm scenario that make worktrees (the first ones). Every
/// agent change reloads its node's agents, and on a node with a worktree
/// definition that asks git for its worktrees: on every node, that
/// doubled a 7-broker swarm's wall time; on two, it is lost in the noise,
/// and two makers still disagree under a partition.
pub const SWARM_WORKTREE_NODES: usize = 2;

/// Every this many seeds (those divisible by it) get the worktree
/// definition and its mentions: on two nodes they still cost a quarter
/// more CPU per seed (git runs at every agent reload there), so half the
/// seeds carry them and CI's swarm stays within a tenth or so of its time.
pub const SWARM_WORKTREES_EVERY: u64 = 2;

/// The weight of new-workspace mentions in a swarm's workload, beside the
/// default mix's 12: about one operation in thirteen, so each seed makes a
/// few worktrees without its git calls costing the swarm noticeable time.
pub const SWARM_NEW_WORKSPACE_WEIGHT: u32 = 1;

/// The view sizes a swarm schedule draws from, (active, passive): the
/// smallest the views accept, one more, and production's.
pub const SWARM_VIEW_SIZES: [(usize, usize); 3] = [
    (scout_mesh::views::ACTIVE_VIEW_MIN, 8),
    (scout_mesh::views::ACTIVE_VIEW_MIN + 1, 12),
    (
        scout_mesh::views::ACTIVE_VIEW_MAX,
        scout_mesh::views::PASSIVE_VIEW_MAX,
    ),
];

/// Brokers in a swarm scenario at most (each seed runs real QUIC stacks).
pub const SWARM_NODES_MAX: usize = 32;

/// Draws the scenario of `seed` with `n_nodes` brokers.
pub fn draw(seed: u64, n_nodes: usize) -> Scenario {
    let mut rng = seeds::rng(seed, "swarm", 0);
    let names: Vec<String> = (0..n_nodes).map(|idx| format!("n{idx}")).collect();
    let fault_phase_ms = rng.gen_range(30_000..=60_000u64);
    let latency_low = rng.gen_range(1..=10) as f64;
    let latency_high = latency_low + rng.gen_range(5..=60) as f64;
    let distributions = [
        LatencyDistribution::Uniform,
        LatencyDistribution::Normal,
        LatencyDistribution::Pareto,
    ];
    // The shape of the mesh comes from a stream of its own, so the faults
    // and the workload a seed draws stay what they were: views of 4 or 5
    // make 6 to 9 brokers a partial mesh (7 is production's), and links
    // either draw a latency per datagram or keep one per pair of hosts.
    let mut shape = seeds::rng(seed, "swarm-shape", 0);
    let (active, passive) = SWARM_VIEW_SIZES[shape.gen_range(0..SWARM_VIEW_SIZES.len())];
    let latency_per = if shape.gen_bool(0.5) {
        LatencyPer::Link
    } else {
        LatencyPer::Datagram
    };
    let links = LinkPatch {
        latency_ms: Some([latency_low, latency_high]),
        distribution: Some(distributions[rng.gen_range(0..distributions.len())]),
        latency_per: Some(latency_per),
        ..LinkPatch::default()
    };
    let mut faults: Vec<FaultEntry> = Vec::new();
    let mut down_until: BTreeMap<usize, u64> = BTreeMap::new();
    let n_faults = rng.gen_range(3..=8);
    for _ in 0..n_faults {
        let at_ms = rng.gen_range(2_000..fault_phase_ms - 2_000);
        let fault_end = |rng: &mut StdRng, longest: u64| {
            (at_ms + rng.gen_range(1_000..=longest)).min(fault_phase_ms - 1_000)
        };
        match rng.gen_range(0..10) {
            0 | 1 => {
                let mut shuffled = names.clone();
                shuffled.shuffle(&mut rng);
                let cut_at = rng.gen_range(1..n_nodes.max(2));
                let (left, right) = shuffled.split_at(cut_at.min(shuffled.len()));
                if right.is_empty() {
                    continue;
                }
                faults.push(FaultEntry {
                    at_ms,
                    partition: Some(vec![left.to_vec(), right.to_vec()]),
                    ..FaultEntry::default()
                });
                faults.push(FaultEntry {
                    at_ms: fault_end(&mut rng, 20_000),
                    heal: Some(HealSpec::Between(Sides {
                        from: left.to_vec(),
                        to: right.to_vec(),
                    })),
                    ..FaultEntry::default()
                });
            }
            2 => {
                // One node's datagrams reach nobody, or (half the time)
                // one other node: then the two have no path between them
                // (QUIC needs both ways) while both reach the rest, and
                // routing between them goes through a relay.
                let from = pick(&mut rng, &names, 1);
                let mut to: Vec<String> = names
                    .iter()
                    .filter(|name| !from.contains(name))
                    .cloned()
                    .collect();
                if rng.gen_bool(0.5) {
                    to = pick(&mut rng, &to, 1);
                }
                faults.push(FaultEntry {
                    at_ms,
                    cut: Some(Sides {
                        from: from.clone(),
                        to,
                    }),
                    ..FaultEntry::default()
                });
            }
            3 => {
                let loss = rng.gen_range(5..=50) as f64 / 100.0;
                let from = if rng.gen_bool(0.5) {
                    vec!["*".to_owned()]
                } else {
                    pick(&mut rng, &names, 1)
                };
                faults.push(FaultEntry {
                    at_ms,
                    link: Some(LinkFaultSpec {
                        from,
                        to: vec!["*".to_owned()],
                        set: LinkPatch {
                            loss: Some(loss),
                            ..LinkPatch::default()
                        },
                    }),
                    ..FaultEntry::default()
                });
            }
            4 => {
                let slow = rng.gen_range(50..=400) as f64;
                faults.push(FaultEntry {
                    at_ms,
                    link: Some(LinkFaultSpec {
                        from: vec!["*".to_owned()],
                        to: pick(&mut rng, &names, 1),
                        set: LinkPatch {
                            latency_ms: Some([slow / 4.0, slow]),
                            distribution: Some(LatencyDistribution::Pareto),
                            duplicate: Some(rng.gen_range(0..=20) as f64 / 100.0),
                            reorder: Some(rng.gen_range(0..=30) as f64 / 100.0),
                            reorder_ms: Some(rng.gen_range(0..=200) as f64),
                            ..LinkPatch::default()
                        },
                    }),
                    ..FaultEntry::default()
                });
            }
            5 | 6 => {
                let node = rng.gen_range(0..n_nodes);
                if down_until
                    .get(&node)
                    .is_some_and(|until| *until + 1_000 > at_ms)
                {
                    continue;
                }
                let back = fault_end(&mut rng, 20_000);
                if back <= at_ms {
                    continue;
                }
                down_until.insert(node, back);
                faults.push(FaultEntry {
                    at_ms,
                    crash: Some(names[node].clone()),
                    ..FaultEntry::default()
                });
                faults.push(FaultEntry {
                    at_ms: back,
                    restart: Some(RestartSpec::Node(names[node].clone())),
                    ..FaultEntry::default()
                });
            }
            7 => {
                faults.push(FaultEntry {
                    at_ms,
                    skew: Some(SkewSpec {
                        node: names[rng.gen_range(0..n_nodes)].clone(),
                        ms: rng.gen_range(-120_000..=120_000),
                    }),
                    ..FaultEntry::default()
                });
            }
            8 => {
                let from = pick(&mut rng, &names, 1);
                let to = names
                    .iter()
                    .filter(|name| !from.contains(name))
                    .cloned()
                    .collect();
                let period_ms = rng.gen_range(1_000..=4_000);
                faults.push(FaultEntry {
                    at_ms,
                    flap: Some(FlapSpec {
                        from,
                        to,
                        period_ms,
                        down_ms: period_ms * rng.gen_range(3..=6) / 10,
                        until_ms: fault_end(&mut rng, 15_000).max(at_ms + 1),
                    }),
                    ..FaultEntry::default()
                });
            }
            _ => {
                let from = pick(&mut rng, &names, 1);
                faults.push(FaultEntry {
                    at_ms,
                    hold: Some(Sides {
                        from: from.clone(),
                        to: vec!["*".to_owned()],
                    }),
                    ..FaultEntry::default()
                });
                faults.push(FaultEntry {
                    at_ms: fault_end(&mut rng, 5_000),
                    release: Some(HealSpec::Between(Sides {
                        from,
                        to: vec!["*".to_owned()],
                    })),
                    ..FaultEntry::default()
                });
            }
        }
    }
    // The liveness phase: everything heals at once.
    let heal_at = fault_phase_ms;
    faults.push(FaultEntry {
        at_ms: heal_at,
        heal: Some(HealSpec::All("all".to_owned())),
        ..FaultEntry::default()
    });
    faults.push(FaultEntry {
        at_ms: heal_at,
        reset_links: Some(true),
        ..FaultEntry::default()
    });
    faults.push(FaultEntry {
        at_ms: heal_at,
        release: Some(HealSpec::All("all".to_owned())),
        ..FaultEntry::default()
    });
    faults.sort_by_key(|fault| fault.at_ms);
    let interval_ms = rng.gen_range(200..=800);
    let with_worktrees = seed.is_multiple_of(SWARM_WORKTREES_EVERY);
    Scenario {
        name: format!("swarm-{seed}"),
        description: format!(
            "Drawn by `scout-netsim swarm` from seed {seed} with {n_nodes} nodes: faults until {:.1} s, then everything heals.",
            heal_at as f64 / 1000.0
        ),
        seed,
        duration_ms: heal_at + LIVENESS_MS,
        sample_ms: 100,
        nodes: NodesSpec {
            count: Some(n_nodes),
            ..NodesSpec::default()
        },
        links,
        link_rules: Vec::new(),
        sync: Default::default(),
        transport: Default::default(),
        views: ViewsSpec {
            active: Some(active),
            passive: Some(passive),
        },
        workload: Some(WorkloadSpec {
            start_ms: 0,
            stop_ms: heal_at,
            interval_ms,
            agents_per_node: 6,
            definitions: 3,
            mix: MixSpec {
                new_workspace: if with_worktrees {
                    SWARM_NEW_WORKSPACE_WEIGHT
                } else {
                    0
                },
                ..MixSpec::default()
            },
        }),
        ops: Vec::new(),
        invocations: Default::default(),
        // The first nodes make worktrees of `@w`, drawn from no stream, so
        // the fault schedule of a seed stays what it was without them.
        worktrees: with_worktrees.then(|| WorktreesSpec {
            definition: "w".to_owned(),
            nodes: Some(names.iter().take(SWARM_WORKTREE_NODES).cloned().collect()),
            workspaces: SWARM_WORKSPACES,
        }),
        faults,
        checks: ChecksSpec {
            converge_within_ms: SWARM_CONVERGE_WITHIN_MS,
            ..ChecksSpec::default()
        },
    }
}

fn pick(rng: &mut StdRng, names: &[String], count: usize) -> Vec<String> {
    names
        .choose_multiple(rng, count.min(names.len()))
        .cloned()
        .collect()
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    /// First seed.
    pub first_seed: u64,
    /// One past the last seed.
    pub end_seed: u64,
    /// Brokers per scenario.
    pub nodes: usize,
    /// Seeds run at once (threads).
    pub jobs: usize,
    /// Where scenario files and results go.
    pub out_dir: PathBuf,
    /// Switch on the deliberately broken merge.
    pub broken_merge: bool,
}

/// One seed's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Whether every check passed.
    pub passed: bool,
    /// The scenario file written for it.
    pub file: String,
    /// Failed checks with their counterexamples.
    pub failures: Vec<CheckResult>,
    /// Why the harness could not run it, if so.
    pub error: Option<String>,
    /// The replay command.
    pub replay: String,
    /// Simulated milliseconds (formation included).
    pub sim_ms: u64,
    /// Wall milliseconds.
    pub wall_ms: f64,
    /// The schedule digest.
    pub schedule_digest: String,
    /// Convergence after the final heal.
    pub converged_after_ms: Option<u64>,
}

/// A whole swarm's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmReport {
    /// Seeds run.
    pub seeds: usize,
    /// Seeds that failed.
    pub failed: usize,
    /// Wall seconds.
    pub wall_s: f64,
    /// Seeds per minute of wall time.
    pub seeds_per_minute: f64,
    /// Every seed, in seed order.
    pub results: Vec<SeedResult>,
}

/// Runs every seed on `jobs` threads; `on_result` sees each result as it
/// finishes (in completion order).
pub fn run_swarm(
    options: &SwarmOptions,
    mut on_result: impl FnMut(&SeedResult),
) -> anyhow::Result<SwarmReport> {
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("cannot create {}", options.out_dir.display()))?;
    let wall = std::time::Instant::now();
    let next = AtomicU64::new(options.first_seed);
    let (sender, receiver) = mpsc::channel::<SeedResult>();
    let mut results = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1) {
            let sender = sender.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= options.end_seed {
                        return;
                    }
                    if sender.send(run_seed(options, seed)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(sender);
        for result in receiver {
            on_result(&result);
            results.push(result);
        }
    });
    results.sort_by_key(|result| result.seed);
    let wall_s = wall.elapsed().as_secs_f64();
    Ok(SwarmReport {
        seeds: results.len(),
        failed: results.iter().filter(|result| !result.passed).count(),
        wall_s,
        seeds_per_minute: if wall_s > 0.0 {
            results.len() as f64 * 60.0 / wall_s
        } else {
            0.0
        },
        results,
    })
}

/// Draws, writes and runs one seed.
pub fn run_seed(options: &SwarmOptions, seed: u64) -> SeedResult {
    let scenario = draw(seed, options.nodes);
    let file = options.out_dir.join(format!("{}.toml", scenario.name));
    let shown = file.display().to_string();
    let run_options = RunOptions {
        seed: Some(seed),
        broken_merge: options.broken_merge,
        homes_dir: None,
        source: Some(shown.clone()),
    };
    let replay = run::replay_command(&run_options, seed, &scenario.name);
    let failed = |error: String| SeedResult {
        seed,
        passed: false,
        file: shown.clone(),
        failures: Vec::new(),
        error: Some(error),
        replay: replay.clone(),
        sim_ms: 0,
        wall_ms: 0.0,
        schedule_digest: String::new(),
        converged_after_ms: None,
    };
    if let Err(err) = write_scenario(&file, &scenario) {
        return failed(format!("{err:#}"));
    }
    let plan = match scenario.plan(&shown) {
        Ok(plan) => plan,
        Err(err) => return failed(err.to_string()),
    };
    match run::run(&plan, &run_options) {
        Ok(report) => SeedResult {
            seed,
            passed: report.passed,
            file: shown,
            failures: report.failures().cloned().collect(),
            error: None,
            replay: report.replay.clone(),
            sim_ms: report.simulated_ms,
            wall_ms: report.wall_ms,
            schedule_digest: report.schedule_digest.to_string(),
            converged_after_ms: report.convergence.after_ms,
        },
        Err(err) => failed(format!("{err:#}")),
    }
}

/// Writes a scenario file with a header saying where it came from.
pub fn write_scenario(path: &Path, scenario: &Scenario) -> anyhow::Result<()> {
    let text = format!(
        "# Drawn by `scout-netsim swarm` (seed {}); replay with\n# cargo run --release -p scout-netsim -- run {} --seed {}\n\n{}",
        scenario.seed,
        path.display(),
        scenario.seed,
        scenario.to_toml()
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_scenarios_are_valid_reproducible_and_end_healed() {
        for seed in 0..50 {
            let scenario = draw(seed, 5);
            assert_eq!(scenario.to_toml(), draw(seed, 5).to_toml());
            let text = scenario.to_toml();
            let parsed = Scenario::parse(&text, "drawn").expect("parses");
            let plan = parsed.plan("drawn").expect("valid");
            let heal_at = plan.scenario.duration_ms - LIVENESS_MS;
            assert_eq!(plan.last_fault_ms, heal_at, "seed {seed}");
            let last: Vec<&str> = plan
                .timeline
                .iter()
                .filter_map(|timed| match &timed.action {
                    crate::scenario::Action::Fault(_, label) if timed.at_ms == heal_at => {
                        Some(label.as_str())
                    }
                    _ => None,
                })
                .collect();
            assert!(last.contains(&"heal all"), "seed {seed}: {last:?}");
            assert!(last.contains(&"reset links"), "seed {seed}: {last:?}");
            assert!(last.contains(&"release all"), "seed {seed}: {last:?}");
        }
    }
}
