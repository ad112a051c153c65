//! `scout-netsim`: runs scenarios, swarms of random fault schedules, the
//! pure sync core at scale, and the benchmarks.
//!
//! ```text
//! scout-netsim run SCENARIO... [--seed N] [--out DIR] [--plot] [--json]
//! scout-netsim swarm --seeds A..B [--nodes N] [--jobs J] [--out DIR]
//! scout-netsim pure [--nodes 1000] [--views] [--latency-ms 20..80] [--writers W]
//! scout-netsim pure --routing --seed S --nodes N [--invocations K]
//! scout-netsim pure-swarm --seeds A..B [--nodes 3..9] [--invocations K] [--jobs J]
//! scout-netsim bench [PART]
//! ```
//!
//! Exit codes: 0 every check passed, 1 a check failed (or the harness
//! could not run), 2 a usage or scenario error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use scout_netsim::report::{self, RunReport};
use scout_netsim::run::{self, RunOptions};
use scout_netsim::scenario::{Scenario, ScenarioError};
use scout_netsim::{plot, pure, pure_routing, pure_swarm, swarm};

#[derive(Debug, Parser)]
#[command(
    name = "scout-netsim",
    version,
    about = "Real Scout brokers over a simulated network: partitions, crashes, checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scenario files and check them.
    Run {
        /// Scenario files (`netsim/scenarios/*.toml`).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// The seed (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Where results go (default: target/netsim/NAME-seedN).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write convergence.svg.
        #[arg(long)]
        plot: bool,
        /// Print the whole report as JSON instead of the summary.
        #[arg(long)]
        json: bool,
        /// Keep the brokers' homes (stores, keys) in the output directory.
        #[arg(long)]
        keep_homes: bool,
        /// Switch on scout-mesh's deliberately broken merge (needs
        /// `--features broken-merge-for-tests`).
        #[arg(long)]
        broken_merge: bool,
    },
    /// Draw and run a random fault schedule for every seed of a range.
    Swarm {
        /// Seeds, as `A..B` (B excluded) or one number.
        #[arg(long, value_parser = parse_seeds)]
        seeds: (u64, u64),
        /// Brokers per scenario.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Seeds run at once (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Where scenario files and results go.
        #[arg(long, default_value = "target/netsim/swarm")]
        out: PathBuf,
        /// Print the swarm report as JSON at the end.
        #[arg(long)]
        json: bool,
        /// Switch on scout-mesh's deliberately broken merge (needs
        /// `--features broken-merge-for-tests`).
        #[arg(long)]
        broken_merge: bool,
    },
    /// The sync core alone (no QUIC, no store) at scale: partition, heal,
    /// rounds and bytes until every replica converges. With `--routing`,
    /// one schedule of the routing core and the sync core under faults,
    /// checked for exactly-once.
    Pure {
        /// Replicas (default 1000; with `--routing`, 5).
        #[arg(long)]
        nodes: Option<usize>,
        /// Run one routing schedule instead of the sync-scale run.
        #[arg(long)]
        routing: bool,
        /// Invocations of the routing schedule.
        #[arg(long, default_value_t = pure_swarm::INVOCATIONS_DEFAULT)]
        invocations: usize,
        /// Drop the owner's duplicate guards, to see the checker catch it.
        #[arg(long)]
        broken_duplicate_guard: bool,
        /// Random peers per node (ring neighbours come on top).
        #[arg(long, default_value_t = 4)]
        peers: usize,
        /// Connect each node to its active view only (partial views),
        /// with pushes forwarded along the views.
        #[arg(long)]
        views: bool,
        /// Nodes that write, spread evenly (default: every node up to
        /// 1,000; past that, 1,000,000 / nodes of them).
        #[arg(long)]
        writers: Option<usize>,
        /// One-way link latency range in ms, as `A..B`.
        #[arg(long, value_parser = parse_latency_range, default_value = "2..40")]
        latency_ms: (u64, u64),
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pure routing schedules (routing and sync cores, no QUIC, no store)
    /// for every seed of a range, on every core.
    PureSwarm {
        /// Seeds, as `A..B` (B excluded) or one number.
        #[arg(long, value_parser = parse_seeds)]
        seeds: (u64, u64),
        /// Node counts, as `A..B` (both included) or one number; seed `s`
        /// runs `A + s % (B - A + 1)` nodes.
        #[arg(long, value_parser = parse_node_range, default_value = "3..9")]
        nodes: (usize, usize),
        /// Invocations per schedule.
        #[arg(long, default_value_t = pure_swarm::INVOCATIONS_DEFAULT)]
        invocations: usize,
        /// Schedules run at once (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Drop the owner's duplicate guards, to see the swarm catch it.
        #[arg(long)]
        broken_duplicate_guard: bool,
        /// Print the report as JSON at the end.
        #[arg(long)]
        json: bool,
    },
    /// The benchmarks of BENCHMARKS.md (all, or the parts whose name
    /// contains PART: ten, hundred, pure, swarm; `thousand`, 1,000 real
    /// brokers, runs only when named: it takes hours on two cores).
    Bench {
        /// Filter.
        part: Option<String>,
    },
}

fn parse_seeds(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("`{text}` is not a seed range; write A..B (B excluded) or one seed");
    match text.split_once("..") {
        Some((first, end)) => {
            let first: u64 = first.trim().parse().map_err(|_| bad())?;
            let end: u64 = end.trim().parse().map_err(|_| bad())?;
            if end <= first {
                return Err(format!("`{text}`: the range is empty"));
            }
            Ok((first, end))
        }
        None => {
            let seed: u64 = text.trim().parse().map_err(|_| bad())?;
            Ok((seed, seed.saturating_add(1)))
        }
    }
}

fn parse_latency_range(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("`{text}` is not a latency range; write A..B in ms (both included)");
    let (min, max) = text.split_once("..").ok_or_else(bad)?;
    let min: u64 = min.trim().parse().map_err(|_| bad())?;
    let max: u64 = max.trim().parse().map_err(|_| bad())?;
    if min > max || max > 10_000 {
        return Err(bad());
    }
    Ok((min, max))
}

fn parse_node_range(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{text}` is not a node range; write A..B (both included) or one number");
    let (min, max) = match text.split_once("..") {
        Some((min, max)) => (
            min.trim().parse::<usize>().map_err(|_| bad())?,
            max.trim().parse::<usize>().map_err(|_| bad())?,
        ),
        None => {
            let n = text.trim().parse::<usize>().map_err(|_| bad())?;
            (n, n)
        }
    };
    let range = pure_routing::ROUTING_NODES_MIN..=pure_routing::ROUTING_NODES_MAX;
    if min > max || !range.contains(&min) || !range.contains(&max) {
        return Err(format!(
            "`{text}`: node counts run from {} to {}",
            pure_routing::ROUTING_NODES_MIN,
            pure_routing::ROUTING_NODES_MAX
        ));
    }
    Ok((min, max))
}

/// A usage or configuration error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("caused by: {cause}");
            }
            let usage = err.downcast_ref::<UsageError>().is_some()
                || err.downcast_ref::<ScenarioError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Logs go to stderr; brokers under faults warn a lot, so only errors show
/// unless `RUST_LOG` asks for more.
fn init_logging() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| tracing_subscriber::EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

fn dispatch(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Run {
            scenarios,
            seed,
            out,
            plot,
            json,
            keep_homes,
            broken_merge,
        } => {
            if broken_merge && !scout_mesh::registry::broken_merge::set_for_this_thread(false) {
                return Err(UsageError(
                    "--broken-merge needs a build with `--features broken-merge-for-tests`".into(),
                )
                .into());
            }
            let mut all_passed = true;
            for path in &scenarios {
                let plan = Scenario::load(path)?;
                let seed = seed.unwrap_or(plan.scenario.seed);
                let out_dir = match (&out, scenarios.len()) {
                    (Some(dir), 1) => dir.clone(),
                    (Some(dir), _) => dir.join(format!("{}-seed{seed}", plan.scenario.name)),
                    (None, _) => PathBuf::from("target/netsim")
                        .join(format!("{}-seed{seed}", plan.scenario.name)),
                };
                let options = RunOptions {
                    seed: Some(seed),
                    broken_merge,
                    homes_dir: keep_homes.then(|| out_dir.join("homes")),
                    source: Some(path.display().to_string()),
                };
                let report = run::run(&plan, &options)?;
                all_passed &= report.passed;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.summary());
                }
                let results = report::write_results(&out_dir, &report)?;
                if !json {
                    println!("  results     {}", results.display());
                }
                if plot {
                    let svg = out_dir.join("convergence.svg");
                    std::fs::write(&svg, plot::svg(&report))
                        .with_context(|| format!("cannot write {}", svg.display()))?;
                    if !json {
                        println!("  plot        {}", svg.display());
                    }
                }
            }
            Ok(all_passed)
        }
        Command::Swarm {
            seeds,
            nodes,
            jobs,
            out,
            json,
            broken_merge,
        } => {
            if !(2..=swarm::SWARM_NODES_MAX).contains(&nodes) {
                return Err(UsageError(format!(
                    "--nodes {nodes}: a swarm runs 2 to {} brokers",
                    swarm::SWARM_NODES_MAX
                ))
                .into());
            }
            let options = swarm::SwarmOptions {
                first_seed: seeds.0,
                end_seed: seeds.1,
                nodes,
                jobs: jobs.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
                }),
                out_dir: out.clone(),
                broken_merge,
            };
            if broken_merge && !scout_mesh::registry::broken_merge::set_for_this_thread(false) {
                return Err(UsageError(
                    "--broken-merge needs a build with `--features broken-merge-for-tests`".into(),
                )
                .into());
            }
            let report = swarm::run_swarm(&options, |result| {
                if json {
                    return;
                }
                if result.passed {
                    println!(
                        "pass seed {:>6}  {:5.1} s simulated in {:5.2} s, converged {} ms after the heal",
                        result.seed,
                        result.sim_ms as f64 / 1000.0,
                        result.wall_ms / 1000.0,
                        result.converged_after_ms.unwrap_or(0)
                    );
                } else {
                    println!("FAIL seed {}", result.seed);
                    if let Some(error) = &result.error {
                        println!("  error: {error}");
                    }
                    for failure in &result.failures {
                        println!("  {}: {}", failure.name, failure.detail);
                    }
                    println!("  replay: {}", result.replay);
                }
            })?;
            let results = report::write_results(&out, &report)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "swarm: {} seeds, {} failed, {:.1} s wall ({:.1} seeds per minute); results {}",
                    report.seeds,
                    report.failed,
                    report.wall_s,
                    report.seeds_per_minute,
                    results.display()
                );
                for failed in report.results.iter().filter(|result| !result.passed) {
                    println!("  seed {} failed; replay: {}", failed.seed, failed.replay);
                }
            }
            Ok(report.failed == 0)
        }
        Command::Pure {
            nodes,
            routing: true,
            invocations,
            broken_duplicate_guard,
            seed,
            json,
            ..
        } => {
            let nodes = nodes.unwrap_or(5);
            if !(pure_routing::ROUTING_NODES_MIN..=pure_routing::ROUTING_NODES_MAX).contains(&nodes)
            {
                return Err(UsageError(format!(
                    "--nodes {nodes}: a routing schedule runs {} to {} nodes",
                    pure_routing::ROUTING_NODES_MIN,
                    pure_routing::ROUTING_NODES_MAX
                ))
                .into());
            }
            let report = pure_routing::run(&pure_routing::RoutingOptions {
                seed,
                nodes,
                invocations,
                broken: broken_duplicate_guard.then_some(pure_routing::Broken::NoDuplicateGuard),
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.summary());
            }
            Ok(report.passed())
        }
        Command::PureSwarm {
            seeds,
            nodes,
            invocations,
            jobs,
            broken_duplicate_guard,
            json,
        } => {
            let options = pure_swarm::PureSwarmOptions {
                first_seed: seeds.0,
                end_seed: seeds.1,
                nodes,
                invocations,
                jobs: jobs.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
                }),
                broken: broken_duplicate_guard.then_some(pure_routing::Broken::NoDuplicateGuard),
            };
            let report = pure_swarm::run(&options, |result| {
                if !json && !result.passed() {
                    print!("{}", result.summary());
                }
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.summary());
            }
            Ok(report.failed == 0)
        }
        Command::Pure {
            nodes,
            peers,
            views,
            writers,
            latency_ms,
            seed,
            json,
            ..
        } => {
            let nodes = nodes.unwrap_or(1000);
            if !(2..=pure::PURE_NODES_MAX).contains(&nodes) {
                return Err(UsageError(format!(
                    "--nodes {nodes}: between 2 and {}",
                    pure::PURE_NODES_MAX
                ))
                .into());
            }
            let report = pure::run(&pure::PureOptions {
                nodes,
                random_peers: peers,
                seed,
                views,
                latency_ms,
                writers,
                ..pure::PureOptions::default()
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.summary());
            }
            Ok(report.identical_digests && report.converged_after_ms.is_some())
        }
        Command::Bench { part } => bench(part.as_deref()),
    }
}

/// The benchmark scenario files shipped with the crate.
fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join(name)
}

fn bench(filter: Option<&str>) -> anyhow::Result<bool> {
    let wants = |part: &str| filter.is_none_or(|filter| part.contains(filter));
    let mut all_passed = true;
    let mut run_file = |file: &str| -> anyhow::Result<RunReport> {
        let path = shipped(file);
        let plan = Scenario::load(&path)?;
        let report = run::run(
            &plan,
            &RunOptions {
                source: Some(path.display().to_string()),
                ..RunOptions::default()
            },
        )?;
        all_passed &= report.passed;
        Ok(report)
    };
    if wants("ten") {
        println!("ten: 10 brokers, 60 simulated seconds with partitions (bench-10.toml), 3 runs");
        let mut walls = Vec::new();
        for _ in 0..3 {
            let report = run_file("bench-10.toml")?;
            walls.push(report.wall_ms);
            println!(
                "  {} in {:.2} s wall ({:.1} s simulated incl. {:.1} s forming; {} datagrams; converged {} ms after the heal)",
                if report.passed { "pass" } else { "FAIL" },
                report.wall_ms / 1000.0,
                report.simulated_ms as f64 / 1000.0,
                report.formation_ms.unwrap_or(0) as f64 / 1000.0,
                report.network.sent,
                report.convergence.after_ms.unwrap_or(0)
            );
        }
        walls.sort_by(f64::total_cmp);
        println!(
            "  best {:.2} s, median {:.2} s wall (goal <= 2 s: {})",
            walls[0] / 1000.0,
            walls[1] / 1000.0,
            if walls[1] <= 2000.0 { "met" } else { "NOT met" }
        );
    }
    if wants("hundred") {
        for (file, what) in [("bench-100.toml", "100 brokers")] {
            println!("hundred: {what}, real QUIC, split in halves for 30 s, then healed ({file})");
            let report = run_file(file)?;
            println!(
                "  {} in {:.1} s wall: formed in {} simulated; converged {} after the heal; {} datagrams",
                if report.passed { "pass" } else { "FAIL" },
                report.wall_ms / 1000.0,
                report
                    .formation_ms
                    .map_or("(did not form)".to_owned(), |ms| format!(
                        "{:.1} s",
                        ms as f64 / 1000.0
                    )),
                report
                    .convergence
                    .after_ms
                    .map_or("never".to_owned(), |ms| format!(
                        "{:.1} s simulated",
                        ms as f64 / 1000.0
                    )),
                report.network.sent
            );
            for failure in report.failures() {
                println!("  {}: {}", failure.name, failure.detail);
            }
        }
    }
    if filter.is_some_and(|filter| "thousand".contains(filter)) {
        let file = "bench-1000.toml";
        println!(
            "thousand: 1,000 brokers, real QUIC, 20-80 ms links with 1% loss, split in halves for 60 s, healed, a tenth crashed and restarted ({file})"
        );
        let report = run_file(file)?;
        print!("{}", report.summary());
    }
    if wants("pure") {
        println!("pure: 1,000 replicas of the sync core, split in halves, then healed");
        let report = pure::run(&pure::PureOptions::default());
        all_passed &= report.identical_digests && report.converged_after_ms.is_some();
        print!("  {}", report.summary());
    }
    if wants("swarm") {
        let jobs = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        println!("swarm: seeds 1..17, 5 brokers each, {jobs} at once");
        let out = std::env::temp_dir().join("scout-netsim-bench-swarm");
        let report = swarm::run_swarm(
            &swarm::SwarmOptions {
                first_seed: 1,
                end_seed: 17,
                nodes: 5,
                jobs,
                out_dir: out,
                broken_merge: false,
            },
            |_| {},
        )?;
        all_passed &= report.failed == 0;
        println!(
            "  {} seeds ({} failed) in {:.1} s wall: {:.1} seeds per minute",
            report.seeds, report.failed, report.wall_s, report.seeds_per_minute
        );
    }
    Ok(all_passed)
}
