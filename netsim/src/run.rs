//! Runs one scenario: real brokers over the simulated network, on a
//! current-thread tokio runtime whose clock is paused (it jumps to the next
//! timer whenever every task waits), so a minute of simulated time takes as
//! long as the work in it, and a seed reproduces the run.
//!
//! The run: write the homes, start every broker, form the mesh with real
//! invites and joins, then play the timeline (faults, operations, samples
//! of every replica), read every live node's store, and hand the history
//! to the checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng;
use rand::rngs::StdRng;
use scout::daemon::routing::SubmitRequest;
use scout_mesh::lifecycle::{DeliveryPolicy, DeliveryState, InvocationAction};
use scout_mesh::names::{Label, NamePart};
use scout_mesh::registry::Registry;
use scout_mesh::registry::founder_of;
use scout_mesh::sync::{Replica, ReplicaIdentity, SyncConfig};
use scout_mesh::views::ACTIVE_VIEW_MAX;
use scout_mesh::wire::{
    AdmissionBody, AdmissionMethod, DefinitionValue, NodeId, RecordBody, RecordKey, RecordKind,
};
use scout_net::transport::TransportConfig;
use tokio::time::Instant;

use crate::agent::{ExecLog, WorkTime};
use crate::check::{self, Expected, FinalState};
use crate::history::{EndLog, FaultMark, Latency, NodeSample, OpRecord, Outcome, Sample};
use crate::net::{HostSet, Network};
use crate::node::{BrokerConfig, SimNode, host_addr};
use crate::report::{Convergence, IdleTraffic, OpsSummary, RunReport};
use crate::scenario::{Action, Fault, Op, OpKind, Plan, Timed};
use crate::{panics, seeds};

/// How often formation checks whether the mesh is complete.
const FORMATION_POLL: Duration = Duration::from_millis(100);

/// Nodes that join the mesh at once while it forms: the first wave (the
/// founder's) is every node of a scenario up to this size; a larger mesh
/// joins in waves of this many, each once the previous one has published
/// itself, as machines of a company come online over time rather than all
/// through one broker in the same instant.
const FORMATION_WAVE: usize = 64;

/// Writes accepted at least this long before the first fault count as
/// made on a whole mesh (`replication_before_faults`).
const BEFORE_FAULTS_MARGIN_MS: u64 = 2_000;

/// The idle traffic is measured from this long after the mesh converged
/// for good (the last anti-entropy exchanges of the heal die down)...
const IDLE_SETTLE_MS: u64 = 5_000;

/// ...over at least this long, or not at all.
const IDLE_WINDOW_MIN_MS: u64 = 10_000;

/// How often (simulated) a mesh still forming says what it waits for.
const FORMATION_PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Active peers every broker must have for the mesh to count as formed
/// (fewer in a mesh with fewer other brokers), with the active views
/// forming one connected graph: short of a full view, which the views fill
/// over the following shuffles. Two, not more: with small views a broker
/// whose other peers are all full may keep two for good (views of 5 among
/// 9 brokers), connected all the same.
const FORMATION_ACTIVE_MIN: usize = 2;

/// How long a broker with work in flight gets to stop at the end of a run.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How a run is made.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The seed (default: the scenario's).
    pub seed: Option<u64>,
    /// Switch on scout-mesh's deliberately broken merge for this run (only
    /// in builds with the `broken-merge-for-tests` feature).
    pub broken_merge: bool,
    /// Keep the brokers' homes here instead of in a removed temp dir.
    pub homes_dir: Option<PathBuf>,
    /// The scenario file, for the replay command.
    pub source: Option<String>,
}

/// Runs `plan` on this thread and returns what happened. `Err` only for
/// problems of the harness itself (no temp dir, no runtime); a broken mesh
/// is a report with failed checks.
pub fn run(plan: &Plan, options: &RunOptions) -> anyhow::Result<RunReport> {
    panics::install();
    panics::take();
    let seed = options.seed.unwrap_or(plan.scenario.seed);
    if options.broken_merge && !scout_mesh::registry::broken_merge::set_for_this_thread(true) {
        anyhow::bail!(
            "this scout-netsim was built without the `broken-merge-for-tests` feature; \
             run it with `--features broken-merge-for-tests`"
        );
    }
    let temp;
    let root = match &options.homes_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("scout-netsim-")
                .tempdir()
                .context("cannot create a temp dir for the brokers' homes")?;
            temp.path().to_path_buf()
        }
    };
    // Git reports worktrees by their real path: the homes' path must be
    // one too, for the worktree checks to compare paths.
    let root = root.canonicalize().unwrap_or(root);
    let wall = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .context("cannot build the simulation runtime")?;
    let outcome = runtime.block_on(async {
        let mut sim = Sim::new(plan, seed, root)?;
        let report = sim.run().await;
        sim.finish().await;
        Ok::<_, anyhow::Error>(report)
    });
    // Tasks of crashed brokers still hold their stores; dropping the
    // runtime drops them before the homes go.
    drop(runtime);
    scout_mesh::registry::broken_merge::set_for_this_thread(false);
    let mut report = outcome?;
    let (n_panics, messages) = panics::take();
    check::no_panics(&mut report.checks, n_panics, &messages);
    report.panics = messages;
    report.passed = report.checks.iter().all(|check| check.passed());
    report.wall_ms = wall.elapsed().as_secs_f64() * 1000.0;
    report.replay = replay_command(options, seed, &plan.scenario.name);
    Ok(report)
}

/// The one command that replays a run.
pub fn replay_command(options: &RunOptions, seed: u64, name: &str) -> String {
    let file = options
        .source
        .clone()
        .unwrap_or_else(|| format!("netsim/scenarios/{name}.toml"));
    if options.broken_merge {
        format!(
            "cargo run --release -p scout-netsim --features broken-merge-for-tests -- run {file} --seed {seed} --broken-merge"
        )
    } else {
        format!("cargo run --release -p scout-netsim -- run {file} --seed {seed}")
    }
}

struct PendingWrite {
    op: usize,
    key: RecordKey,
    counter: u64,
    deleted: bool,
}

/// An invocation the workload submitted, until its origin says how it
/// ended.
struct PendingInvocation {
    op: usize,
    origin: usize,
    invocation_id: String,
}

/// An invocation whose origin reported its end.
#[derive(Debug, Clone)]
pub(crate) struct SettledInvocation {
    pub(crate) op: usize,
    pub(crate) origin: usize,
    pub(crate) invocation_id: String,
}

struct Sim<'p> {
    plan: &'p Plan,
    seed: u64,
    net: Network,
    nodes: Vec<SimNode>,
    config: BrokerConfig,
    t0: Instant,
    workload: StdRng,
    ops: Vec<OpRecord>,
    pending: Vec<PendingWrite>,
    invocations: Vec<PendingInvocation>,
    settled: Vec<SettledInvocation>,
    invocation_latencies: Vec<f64>,
    definitions: BTreeMap<String, BTreeSet<String>>,
    /// Nodes whose store a restart wiped.
    wiped: BTreeSet<String>,
    faults: Vec<FaultMark>,
    samples: Vec<Sample>,
    /// Bytes each host had sent, at every sample (for the idle traffic).
    sent_by_sample: Vec<(u64, Vec<u64>)>,
    errors: Vec<String>,
    formation_ms: Option<u64>,
    /// The most connections one broker held at a sample: (count, node, ms).
    max_connections: (usize, String, u64),
    driver: Option<tokio::task::JoinHandle<()>>,
}

impl<'p> Sim<'p> {
    fn new(plan: &'p Plan, seed: u64, root: PathBuf) -> anyhow::Result<Sim<'p>> {
        let addresses: Vec<_> = (0..plan.names.len()).map(host_addr).collect();
        let net = Network::new(
            seeds::derive(seed, "network", 0),
            &addresses,
            plan.links.clone(),
        );
        for (idx, name) in plan.names.iter().enumerate() {
            if plan.scenario.nodes.behind_nat.contains(name) {
                net.put_behind_nat(idx);
            }
        }
        let start = net.start();
        let mut nodes = Vec::new();
        for (idx, name) in plan.names.iter().enumerate() {
            let clock = crate::clock::node_clock(start);
            nodes.push(SimNode::prepare(&root, idx, name, seed, clock)?);
        }
        let scenario = &plan.scenario;
        if let Some(worktrees) = &scenario.worktrees {
            for node in &mut nodes {
                let listed = worktrees
                    .nodes
                    .as_ref()
                    .is_none_or(|names| names.contains(&node.name));
                if listed {
                    node.add_worktree_agent(&worktrees.definition)?;
                }
            }
        }
        // As in every broker: the replica syncs with its active view.
        let mut sync = SyncConfig {
            partial_view: true,
            ..SyncConfig::default()
        };
        if let Some(ms) = scenario.sync.anti_entropy_interval_ms {
            sync.anti_entropy_interval_ms = ms;
        }
        if let Some(ms) = scenario.sync.anti_entropy_jitter_ms {
            sync.anti_entropy_jitter_ms = ms;
        }
        if let Some(ms) = scenario.sync.announce_delay_ms {
            sync.announce_delay_ms = ms;
        }
        if let Some(ms) = scenario.sync.graft_timeout_ms {
            sync.graft_timeout_ms = ms;
        }
        let mut transport = TransportConfig::default();
        let t = &scenario.transport;
        if let Some(ms) = t.idle_timeout_ms {
            transport.idle_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = t.keep_alive_ms {
            transport.keep_alive = Duration::from_millis(ms);
        }
        if let Some(ms) = t.handshake_timeout_ms {
            transport.handshake_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = t.request_timeout_ms {
            transport.request_timeout = Duration::from_millis(ms);
        }
        Ok(Sim {
            plan,
            seed,
            net,
            nodes,
            config: BrokerConfig {
                seed,
                sync,
                transport,
                // Checked when the scenario was planned.
                views: scenario.views.sizes().unwrap_or_default(),
                work: WorkTime {
                    min_ms: scenario.invocations.work_ms[0],
                    max_ms: scenario.invocations.work_ms[1],
                },
                executions: ExecLog::default(),
                ends: EndLog::default(),
                start,
            },
            t0: start,
            workload: seeds::rng(seed, "workload", 0),
            ops: Vec::new(),
            pending: Vec::new(),
            invocations: Vec::new(),
            settled: Vec::new(),
            invocation_latencies: Vec::new(),
            definitions: BTreeMap::new(),
            wiped: BTreeSet::new(),
            faults: Vec::new(),
            samples: Vec::new(),
            sent_by_sample: Vec::new(),
            errors: Vec::new(),
            formation_ms: None,
            max_connections: (0, String::new(), 0),
            driver: None,
        })
    }

    async fn run(&mut self) -> RunReport {
        self.driver = Some(self.net.spawn_driver());
        let formed_at = Instant::now();
        match self.form().await {
            Ok(()) => self.formation_ms = Some(ms_between(formed_at, Instant::now())),
            Err(err) => {
                self.errors.push(format!("the mesh did not form: {err:#}"));
                return self.report(Vec::new());
            }
        }
        self.t0 = Instant::now();
        for (name, skew) in &self.plan.scenario.nodes.skew_ms {
            if let Some(node) = self.nodes.iter().find(|node| &node.name == name) {
                node.clock.set_skew_ms(*skew);
            }
        }
        let timeline = self.timeline();
        let duration_ms = self.plan.scenario.duration_ms;
        let sample_ms = self.plan.scenario.sample_ms;
        let mut next_sample_ms = 0;
        let mut events = timeline.into_iter().peekable();
        loop {
            // At one moment, events happen before the sample.
            if let Some(event) = events.next_if(|event| event.at_ms <= next_sample_ms) {
                tokio::time::sleep_until(self.t0 + Duration::from_millis(event.at_ms)).await;
                self.apply(event).await;
                continue;
            }
            if next_sample_ms > duration_ms {
                break;
            }
            tokio::time::sleep_until(self.t0 + Duration::from_millis(next_sample_ms)).await;
            self.sample(next_sample_ms);
            next_sample_ms += sample_ms;
        }
        let finals = self.final_reads();
        self.report(finals)
    }

    /// The plan's timeline with the workload's slots jittered (±50% of the
    /// interval) from the workload stream.
    fn timeline(&mut self) -> Vec<Timed> {
        let mut timeline = self.plan.timeline.clone();
        if let Some(workload) = &self.plan.scenario.workload {
            let half = workload.interval_ms / 2;
            for timed in &mut timeline {
                if timed.action == Action::RandomOp && half > 0 {
                    let shift = self.workload.gen_range(0..=2 * half);
                    timed.at_ms = (timed.at_ms + shift)
                        .saturating_sub(half)
                        .clamp(workload.start_ms, workload.stop_ms);
                }
            }
        }
        timeline.sort_by_key(|timed| timed.at_ms);
        timeline
    }

    /// Forms the mesh: the first node founds it and admits every other
    /// node by key (an allow-list admission, replicated like any record);
    /// the others start as after a join, with bootstrap peers to dial
    /// first (the founder and two earlier nodes, so that joins enter the
    /// partial views at several places; past [`FORMATION_WAVE`] nodes, in
    /// waves, see there), and catch up before they publish themselves.
    async fn form(&mut self) -> anyhow::Result<()> {
        let bound = Duration::from_millis(self.plan.scenario.checks.form_within_ms);
        let started = Instant::now();
        self.nodes[0].start(&self.net, &self.config).await?;
        let founder = self.nodes[0].mesh().context("the founder is down")?.clone();
        let shared = founder.shared();
        let now = shared.now_ms();
        let founder_id = self.nodes[0].node_id.clone();
        for node in &self.nodes[1..] {
            let admission = RecordBody::Admission(AdmissionBody {
                public_key: node.public_key,
                node_name: node.name.clone(),
                admitted_by: founder_id.clone(),
                method: AdmissionMethod::AllowList,
            });
            shared
                .with_replica(|replica| replica.put(now, node.node_id.as_str(), admission))
                .map_err(|err| anyhow::anyhow!("cannot admit {}: {err}", node.name))?;
        }
        let mut next_progress = started + FORMATION_PROGRESS_EVERY;
        let n_nodes = self.nodes.len();
        let mut wave_start = 1;
        while wave_start < n_nodes {
            let wave_end = (wave_start + FORMATION_WAVE).min(n_nodes);
            for idx in wave_start..wave_end {
                // The first wave joins through the founder and each other;
                // a later one through nodes of earlier waves (which hold
                // every admission), a few joiners on each, so no broker
                // takes a whole wave's catch-up at once.
                let mut bootstrap: Vec<usize> = if wave_start == 1 {
                    vec![0, idx / 2, idx - 1]
                } else {
                    vec![idx / 2, idx - FORMATION_WAVE, (idx * 7) % wave_start]
                };
                bootstrap.sort_unstable();
                bootstrap.dedup();
                let peers: Vec<_> = bootstrap
                    .iter()
                    .map(|peer| (host_addr(*peer), self.nodes[*peer].public_key))
                    .collect();
                self.nodes[idx].enter_mesh(&founder.mesh_id(), &peers)?;
                self.nodes[idx].start(&self.net, &self.config).await?;
            }
            if wave_end < n_nodes {
                while let Some(idx) = (wave_start..wave_end).find(|idx| !self.published(*idx)) {
                    if started.elapsed() > bound {
                        anyhow::bail!(
                            "not formed within {} ms: {} has not published its node record",
                            bound.as_millis(),
                            self.nodes[idx].name
                        );
                    }
                    if Instant::now() >= next_progress {
                        eprintln!(
                            "  forming: {:.0} s simulated, {wave_start} of {n_nodes} nodes joined",
                            started.elapsed().as_secs_f64()
                        );
                        next_progress += FORMATION_PROGRESS_EVERY;
                    }
                    tokio::time::sleep(FORMATION_POLL).await;
                }
            }
            wave_start = wave_end;
        }
        loop {
            match self.formation_gap() {
                None => return Ok(()),
                Some(gap) if started.elapsed() > bound => {
                    anyhow::bail!(
                        "not formed within {} ms: {gap}{}",
                        bound.as_millis(),
                        self.stranded_nodes()
                    )
                }
                Some(gap) => {
                    // A large mesh takes a while to form: say what it waits
                    // for, so a long run is not a silent one.
                    if Instant::now() >= next_progress {
                        eprintln!(
                            "  forming: {:.0} s simulated, waiting for: {gap}",
                            started.elapsed().as_secs_f64()
                        );
                        next_progress += FORMATION_PROGRESS_EVERY;
                    }
                    tokio::time::sleep(FORMATION_POLL).await
                }
            }
        }
    }

    /// Whether node `idx` runs and holds its own node record: it caught up
    /// with a peer and published itself.
    fn published(&self, idx: usize) -> bool {
        let node = &self.nodes[idx];
        node.mesh().is_some_and(|mesh| {
            mesh.with_registry(|registry| registry.node(&node.node_id).is_some())
        })
    }

    /// What keeps the mesh from being formed, or `None` once every node
    /// knows every member and node record, holds the same registry, and
    /// has a few peers in its active view (all of them in a mesh small
    /// enough for one view to hold everyone, up to [`FORMATION_ACTIVE_MIN`]),
    /// and the active views form one connected graph.
    fn formation_gap(&self) -> Option<String> {
        let n_nodes = self.nodes.len();
        let peers_wanted = (n_nodes - 1).min(FORMATION_ACTIVE_MIN);
        // The cheap checks first, on every node: a registry's digest costs
        // a pass over all of it, and this runs every poll while a large
        // mesh forms.
        for node in &self.nodes {
            let Some(mesh) = node.mesh() else {
                return Some(format!("{} is down", node.name));
            };
            let (members, node_records) =
                mesh.with_registry(|registry| (registry.members().len(), registry.nodes().len()));
            if members != n_nodes || node_records != n_nodes {
                return Some(format!(
                    "{} knows {members} members and {node_records} node records of {n_nodes}",
                    node.name
                ));
            }
            let active = mesh.active_view().len();
            if active < peers_wanted {
                return Some(format!(
                    "{} has {active} of {peers_wanted} peers in its active view",
                    node.name
                ));
            }
        }
        let mut digests = BTreeSet::new();
        for node in &self.nodes {
            let Some(mesh) = node.mesh() else {
                return Some(format!("{} is down", node.name));
            };
            digests.insert(mesh.with_registry(|registry| registry.state_digest()));
            if digests.len() > 1 {
                return Some("the registries differ".to_owned());
            }
        }
        self.views_split()
    }

    /// Whether the running nodes' active views fall into more than one
    /// connected group: the size of the group of the first node, if so.
    fn views_split(&self) -> Option<String> {
        let index: BTreeMap<&NodeId, usize> = self
            .nodes
            .iter()
            .map(|node| (&node.node_id, node.idx))
            .collect();
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|idx| self.nodes[*idx].mesh().is_some())
            .collect();
        let first = *running.first()?;
        let mut seen = BTreeSet::from([first]);
        let mut todo = vec![first];
        while let Some(idx) = todo.pop() {
            let Some(mesh) = self.nodes[idx].mesh() else {
                continue;
            };
            for peer in mesh.active_view() {
                if let Some(&peer_idx) = index.get(&peer)
                    && self.nodes[peer_idx].mesh().is_some()
                    && seen.insert(peer_idx)
                {
                    todo.push(peer_idx);
                }
            }
        }
        (seen.len() < running.len()).then(|| {
            format!(
                "the active views are split: {} of {} running nodes reach {}",
                seen.len(),
                running.len(),
                self.nodes[first].name
            )
        })
    }

    /// For a mesh that did not form: the nodes that know the fewest node
    /// records, with their connections and how many peers their replica
    /// syncs with. Only called once the run has failed (it touches the
    /// replicas, which wakes their drivers).
    fn stranded_nodes(&self) -> String {
        let n_nodes = self.nodes.len();
        let mut known: Vec<(usize, &SimNode)> = self
            .nodes
            .iter()
            .filter_map(|node| {
                let records = node
                    .mesh()?
                    .with_registry(|registry| registry.nodes().len());
                Some((records, node))
            })
            .filter(|(records, _)| *records < n_nodes)
            .collect();
        known.sort_by_key(|(records, node)| (*records, node.idx));
        let shown: Vec<String> = known
            .iter()
            .take(5)
            .filter_map(|(records, node)| {
                let mesh = node.mesh()?;
                let syncing = mesh
                    .shared()
                    .with_replica(|replica| replica.connected_peers().count());
                Some(format!(
                    "{} ({records} node records, {} connections, {} active peers, syncing with {syncing})",
                    node.name,
                    mesh.connection_bytes().len(),
                    mesh.active_view().len()
                ))
            })
            .collect();
        if shown.is_empty() {
            return String::new();
        }
        format!(
            "; {} nodes lack node records, fewest first: {} (a replica syncs with its active view, at most {ACTIVE_VIEW_MAX} peers)",
            known.len(),
            shown.join(", ")
        )
    }

    async fn apply(&mut self, event: Timed) {
        match event.action {
            Action::Fault(fault, label) => {
                let healing = fault.is_healing();
                self.fault(fault).await;
                self.faults.push(FaultMark {
                    at_ms: event.at_ms,
                    label,
                    healing,
                });
            }
            Action::Op(op) => self.op(op, event.at_ms).await,
            Action::RandomOp => {
                let op = self.draw_op();
                self.op(op, event.at_ms).await;
            }
        }
    }

    async fn fault(&mut self, fault: Fault) {
        let all: HostSet = (0..self.nodes.len()).collect();
        match fault {
            Fault::Partition(groups) => {
                let listed: HostSet = groups.iter().flatten().copied().collect();
                let mut groups = groups;
                let rest: HostSet = all.difference(&listed).copied().collect();
                if !rest.is_empty() {
                    groups.push(rest);
                }
                for (a_idx, a) in groups.iter().enumerate() {
                    for (b_idx, b) in groups.iter().enumerate() {
                        if a_idx != b_idx {
                            self.net.block(a, b);
                        }
                    }
                }
            }
            Fault::Cut(from, to) => self.net.block(&from, &to),
            Fault::Heal(None) => self.net.heal_all(),
            Fault::Heal(Some((a, b))) => {
                self.net.unblock(&a, &b);
                self.net.unblock(&b, &a);
            }
            Fault::Crash(idx) => {
                if self.nodes[idx].is_up() {
                    self.nodes[idx].crash(&self.net);
                }
            }
            Fault::Restart { node, wipe_store } => {
                if self.nodes[node].is_up() {
                    self.nodes[node].crash(&self.net);
                }
                if wipe_store {
                    self.wiped.insert(self.nodes[node].name.clone());
                    if let Err(err) = self.nodes[node].wipe_store() {
                        self.errors.push(format!("{err:#}"));
                    }
                }
                if let Err(err) = self.nodes[node].start(&self.net, &self.config).await {
                    self.errors.push(format!(
                        "{} did not restart: {err:#}",
                        self.nodes[node].name
                    ));
                }
            }
            Fault::Skew { node, ms } => self.nodes[node].clock.set_skew_ms(ms),
            Fault::Link(from, to, patch) => self.net.patch_links(&from, &to, patch),
            Fault::ResetLinks => self.net.reset_links(),
            Fault::Hold(from, to) => self.net.hold(&from, &to),
            Fault::Release(None) => self.net.release_all(),
            Fault::Release(Some((from, to))) => self.net.release(&from, &to),
        }
    }

    /// Draws the next workload operation: a node, a kind by weight, and a
    /// name that makes the kind meaningful in the node's current state.
    fn draw_op(&mut self) -> Op {
        let Some(workload) = self.plan.scenario.workload.clone() else {
            unreachable!("random operations come from a workload");
        };
        let node = self.workload.gen_range(0..self.nodes.len());
        let mix = &workload.mix;
        let weights = [
            (OpKind::AddAgent, mix.add_agent),
            (OpKind::UpdateAgent, mix.update_agent),
            (OpKind::RemoveAgent, mix.remove_agent),
            (OpKind::EditDefinition, mix.edit_definition),
            (OpKind::Invoke, mix.invoke),
        ];
        let total: u32 = weights.iter().map(|(_, weight)| weight).sum::<u32>() + mix.new_workspace;
        let mut pick = self.workload.gen_range(0..total);
        if pick >= total - mix.new_workspace
            && let Some(worktrees) = &self.plan.scenario.worktrees
        {
            // A workspace that may not exist yet, named by its definition
            // only: the origin's resolution picks the node that makes it.
            let workspace = self.workload.gen_range(0..worktrees.workspaces);
            return Op {
                node,
                kind: OpKind::Invoke,
                name: format!("@{}#ws-{workspace}", worktrees.definition),
                text: Some(format!("task {}", self.ops.len())),
            };
        }
        let mut kind = OpKind::AddAgent;
        for (candidate, weight) in weights {
            if pick < weight {
                kind = candidate;
                break;
            }
            pick -= weight;
        }
        let present: Vec<String> = self.nodes[node].agents.keys().cloned().collect();
        let absent: Vec<String> = (0..workload.agents_per_node)
            .map(|idx| format!("a{idx}"))
            .filter(|name| !self.nodes[node].agents.contains_key(name))
            .collect();
        let kind = match kind {
            OpKind::AddAgent if absent.is_empty() => OpKind::UpdateAgent,
            OpKind::UpdateAgent | OpKind::RemoveAgent if present.is_empty() => OpKind::AddAgent,
            other => other,
        };
        let name = match kind {
            OpKind::AddAgent => absent[self.workload.gen_range(0..absent.len())].clone(),
            OpKind::UpdateAgent | OpKind::RemoveAgent => {
                present[self.workload.gen_range(0..present.len())].clone()
            }
            OpKind::EditDefinition => {
                format!("d{}", self.workload.gen_range(0..workload.definitions))
            }
            OpKind::Invoke => {
                // An agent that exists somewhere, named exactly or only by
                // its definition (then routing picks the instance).
                let agents: Vec<(usize, String)> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .flat_map(|(idx, node)| {
                        node.agents.keys().map(move |agent| (idx, agent.clone()))
                    })
                    .collect();
                let exact = self.workload.gen_bool(0.5);
                if agents.is_empty() {
                    "@a0".to_owned()
                } else {
                    let (target, agent) = &agents[self.workload.gen_range(0..agents.len())];
                    if exact {
                        format!("@{agent}@{}", self.nodes[*target].name)
                    } else {
                        format!("@{agent}")
                    }
                }
            }
        };
        let text = match kind {
            OpKind::EditDefinition => Some(format!(
                "edited by {} (op {})",
                self.nodes[node].name,
                self.ops.len()
            )),
            OpKind::Invoke => Some(format!("task {}", self.ops.len())),
            _ => None,
        };
        Op {
            node,
            kind,
            name,
            text,
        }
    }

    async fn op(&mut self, op: Op, at_ms: u64) {
        let id = self.ops.len() as u64;
        let node = &mut self.nodes[op.node];
        let mut record = OpRecord {
            id,
            at_ms,
            node: node.name.clone(),
            kind: op.kind,
            name: op.name.clone(),
            outcome: Outcome::Ok,
            detail: String::new(),
            counter: None,
            replicated_after_ms: None,
        };
        if op.kind == OpKind::Invoke {
            let Some(broker) = node.broker.as_ref() else {
                record.outcome = Outcome::Failed;
                record.detail = "node_down".to_owned();
                self.ops.push(record);
                return;
            };
            let router = broker.state().router.clone();
            let deadline_ms = broker
                .state()
                .mesh
                .shared()
                .now_ms()
                .saturating_add(self.plan.scenario.invocations.deadline_ms);
            let submitted = router
                .submit(SubmitRequest {
                    target: op.name.clone(),
                    body: op.text.clone().unwrap_or_default(),
                    action: InvocationAction::Execute,
                    policy: DeliveryPolicy::Durable,
                    deadline_ms: Some(deadline_ms),
                    conversation_id: None,
                    author: "netsim".to_owned(),
                    from: None,
                    parent_chain: Vec::new(),
                    reply_to: None,
                })
                .await;
            match submitted {
                Ok(submitted) => {
                    // Unknown until the origin says how it ended.
                    record.outcome = Outcome::Unknown;
                    record.detail = format!(
                        "{} to {} ({})",
                        submitted.invocation_id, submitted.instance, submitted.reason
                    );
                    self.invocations.push(PendingInvocation {
                        op: self.ops.len(),
                        origin: op.node,
                        invocation_id: submitted.invocation_id,
                    });
                }
                Err(err) => {
                    record.outcome = Outcome::Failed;
                    record.detail = format!("{}: {err}", err.code());
                }
            }
            self.ops.push(record);
            return;
        }
        let Some(mesh) = node.mesh().cloned() else {
            record.outcome = Outcome::Failed;
            record.detail = "node_down".to_owned();
            self.ops.push(record);
            return;
        };
        let written: Result<Option<(RecordKey, u64, bool)>, String> = match op.kind {
            OpKind::AddAgent | OpKind::UpdateAgent | OpKind::RemoveAgent => {
                let before = node.agents.clone();
                match op.kind {
                    OpKind::RemoveAgent => {
                        node.agents.remove(&op.name);
                        record.detail = "removed".to_owned();
                    }
                    _ => {
                        let version = node.agents.get(&op.name).map_or(0, |version| version + 1);
                        node.agents.insert(op.name.clone(), version);
                        record.detail =
                            format!("cwd {}", SimNode::agent_cwd(&op.name, version).display());
                    }
                }
                if before == node.agents {
                    record.detail = "no change".to_owned();
                    Ok(None)
                } else {
                    match node.write_agents() {
                        Ok(()) => {
                            node.reload_agents();
                            let key = RecordKey {
                                origin: node.node_id.clone(),
                                kind: RecordKind::Instance,
                                name: node.instance_name(&op.name),
                            };
                            let found = mesh.with_registry(|registry| {
                                registry
                                    .get(&key)
                                    .map(|stored| (stored.dot.counter, stored.body.is_none()))
                            });
                            match found {
                                Some((counter, deleted)) => Ok(Some((key, counter, deleted))),
                                None => Err("the broker did not publish the change".to_owned()),
                            }
                        }
                        Err(err) => {
                            node.agents = before;
                            Err(format!("{err:#}"))
                        }
                    }
                }
            }
            OpKind::EditDefinition => {
                let text = op.text.clone().unwrap_or_default();
                record.detail = text.clone();
                match Label::parse(&op.name, NamePart::Definition) {
                    Err(err) => Err(err.to_string()),
                    Ok(label) => {
                        let shared = mesh.shared();
                        let now = shared.now_ms();
                        let value = DefinitionValue {
                            description: text.clone(),
                            aliases: Vec::new(),
                        };
                        match shared
                            .with_replica(|replica| replica.edit_definition(now, &label, value))
                        {
                            Ok(written) => {
                                self.definitions
                                    .entry(op.name.clone())
                                    .or_default()
                                    .insert(text);
                                Ok(Some((written.key, written.dot.counter, false)))
                            }
                            Err(err) => Err(format!("{}: {err}", err.code())),
                        }
                    }
                }
            }
            OpKind::Invoke => Ok(None),
        };
        match written {
            Ok(Some((key, counter, deleted))) => {
                record.counter = Some(counter);
                self.pending.push(PendingWrite {
                    op: self.ops.len(),
                    key,
                    counter,
                    deleted,
                });
            }
            Ok(None) => {}
            Err(detail) => {
                record.outcome = Outcome::Failed;
                record.detail = detail;
            }
        }
        self.ops.push(record);
    }

    fn sample(&mut self, t_ms: u64) {
        // A node that made a worktree since the last sample publishes its
        // instance, as its config watch would on the changed directory.
        for node in &self.nodes {
            if node
                .worktrees_changed
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                node.reload_agents();
            }
        }
        let sent = self
            .net
            .stats()
            .hosts
            .iter()
            .map(|host| host.sent_bytes)
            .collect();
        self.sent_by_sample.push((t_ms, sent));
        let mut nodes = Vec::with_capacity(self.nodes.len());
        let mut digests = BTreeSet::new();
        let mut seen_by_all = vec![true; self.pending.len()];
        for node in &self.nodes {
            let Some(mesh) = node.mesh() else {
                nodes.push(None);
                continue;
            };
            let connections = mesh.connection_bytes().len();
            if connections > self.max_connections.0 {
                self.max_connections = (connections, node.name.clone(), t_ms);
            }
            let pending = &self.pending;
            let state = mesh.with_registry(|registry| {
                for (idx, write) in pending.iter().enumerate() {
                    if seen_by_all[idx] && !holds(registry, write) {
                        seen_by_all[idx] = false;
                    }
                }
                NodeSample {
                    records: registry
                        .records()
                        .filter(|record| record.body.is_some())
                        .count(),
                    digest: registry.state_digest(),
                }
            });
            digests.insert(state.digest);
            nodes.push(Some(state));
        }
        let mut still_pending = Vec::new();
        for (write, seen) in std::mem::take(&mut self.pending)
            .into_iter()
            .zip(seen_by_all)
        {
            if seen {
                let op = &mut self.ops[write.op];
                op.replicated_after_ms = Some(t_ms.saturating_sub(op.at_ms));
            } else {
                still_pending.push(write);
            }
        }
        self.pending = still_pending;
        self.settle_invocations(t_ms);
        self.samples.push(Sample {
            t_ms,
            nodes,
            distinct_states: digests.len(),
            partitioned: !self.net.blocked().is_empty(),
        });
    }

    /// Marks the submitted invocations whose origin now reports an end.
    fn settle_invocations(&mut self, t_ms: u64) {
        let mut still_pending = Vec::new();
        for invocation in std::mem::take(&mut self.invocations) {
            let outcome = self.nodes[invocation.origin]
                .broker
                .as_ref()
                .and_then(|broker| broker.state().router.outcome(&invocation.invocation_id));
            match outcome {
                Some((state, reason)) => {
                    let op = &mut self.ops[invocation.op];
                    let latency_ms = t_ms.saturating_sub(op.at_ms);
                    if state == DeliveryState::Completed {
                        op.outcome = Outcome::Ok;
                        self.invocation_latencies.push(latency_ms as f64);
                    } else {
                        op.outcome = Outcome::Failed;
                        op.detail = format!(
                            "{}; ended {state} ({})",
                            op.detail,
                            reason.map_or("no reason".to_owned(), |reason| reason.to_string())
                        );
                    }
                    op.replicated_after_ms = Some(latency_ms);
                    self.settled.push(SettledInvocation {
                        op: invocation.op,
                        origin: invocation.origin,
                        invocation_id: invocation.invocation_id,
                    });
                }
                None => still_pending.push(invocation),
            }
        }
        self.invocations = still_pending;
    }

    /// Reads every live node's registry from its store, and its replica's
    /// digest from memory.
    fn final_reads(&self) -> Vec<Option<FinalState>> {
        self.nodes
            .iter()
            .map(|node| {
                let broker = node.broker.as_ref()?;
                let memory_digest = broker.state().mesh.registry_digest().1;
                let stored = broker.state().store.read(scout::store::mesh::load_registry);
                let name = Label::parse(&node.name, NamePart::Node).ok()?;
                let signing_key = scout::identity::load_node_key(&node.home.node_key_path())
                    .ok()?
                    .signing_key()
                    .clone();
                let identity = ReplicaIdentity {
                    signing_key,
                    node_name: name,
                    founder: founder_of(&broker.state().mesh.mesh_id()),
                };
                Some(match stored {
                    Ok(stored) => {
                        let replica = Replica::restore(
                            identity,
                            SyncConfig::default(),
                            stored.records,
                            stored.vv,
                        );
                        FinalState {
                            registry: Ok(replica.registry().clone()),
                            memory_digest,
                        }
                    }
                    Err(err) => FinalState {
                        registry: Err(format!("{}: {err}", err.code())),
                        memory_digest,
                    },
                })
            })
            .collect()
    }

    /// What the live brokers sent per second once the mesh had converged
    /// for good ([`IDLE_SETTLE_MS`] after it), to the end; `None` when that
    /// leaves less than [`IDLE_WINDOW_MIN_MS`].
    fn idle_traffic(&self, converged_at_ms: Option<u64>) -> Option<IdleTraffic> {
        let from_ms = converged_at_ms? + IDLE_SETTLE_MS;
        let (start_ms, start) = self
            .sent_by_sample
            .iter()
            .find(|(t_ms, _)| *t_ms >= from_ms)?;
        let (end_ms, end) = self.sent_by_sample.last()?;
        let window_ms = end_ms.checked_sub(*start_ms)?;
        if window_ms < IDLE_WINDOW_MIN_MS {
            return None;
        }
        let per_broker: Vec<f64> = self
            .nodes
            .iter()
            .filter(|node| node.is_up())
            .filter_map(|node| {
                let sent = end.get(node.idx)?.checked_sub(*start.get(node.idx)?)?;
                Some(sent as f64 * 1000.0 / window_ms as f64)
            })
            .collect();
        if per_broker.is_empty() {
            return None;
        }
        Some(IdleTraffic {
            from_ms: *start_ms,
            to_ms: *end_ms,
            mean_bytes_per_s: per_broker.iter().sum::<f64>() / per_broker.len() as f64,
            max_bytes_per_s: per_broker.iter().copied().fold(0.0, f64::max),
        })
    }

    fn report(&mut self, finals: Vec<Option<FinalState>>) -> RunReport {
        let scenario = &self.plan.scenario;
        let formed = self.formation_ms.is_some();
        for write in &self.pending {
            self.ops[write.op].outcome = Outcome::Unknown;
        }
        let last_op_ms = self.ops.iter().map(|op| op.at_ms).max().unwrap_or(0);
        let settle_from_ms = self.plan.last_fault_ms.max(last_op_ms);
        let converged_at_ms = converged_at(&self.samples, settle_from_ms);
        let convergence = Convergence {
            last_fault_ms: self.plan.last_fault_ms,
            last_op_ms,
            converged_at_ms,
            after_ms: converged_at_ms.map(|at| at - settle_from_ms),
            bound_ms: scenario.checks.converge_within_ms,
        };
        let expected = Expected {
            names: self.nodes.iter().map(|node| node.name.clone()).collect(),
            node_ids: self.nodes.iter().map(|node| node.node_id.clone()).collect(),
            agents: self
                .nodes
                .iter()
                .map(|node| {
                    let mut agents: BTreeMap<String, String> = node
                        .agents
                        .iter()
                        .map(|(agent, version)| {
                            (
                                node.instance_name(agent),
                                SimNode::agent_cwd(agent, *version).display().to_string(),
                            )
                        })
                        .collect();
                    agents.extend(worktree_instances(node));
                    agents
                })
                .collect(),
            definitions: self.definitions.clone(),
        };
        let mut checks = Vec::new();
        check::formed(&mut checks, formed, &self.errors);
        check::connections_bounded(&mut checks, &self.max_connections, self.config.views);
        if formed {
            check::replicas_converge(&mut checks, &expected, &finals);
            check::convergence_bound(&mut checks, &convergence, &self.samples);
            check::matches_history(&mut checks, &expected, &finals, &self.ops);
            check::stores_match_memory(&mut checks, &expected, &finals);
        }
        let disks: Vec<check::NodeWorktrees> = self
            .nodes
            .iter()
            .filter_map(|node| {
                let disk = node.disk_worktrees()?;
                Some(check::NodeWorktrees {
                    node: node.name.clone(),
                    disk: disk.map_err(|err| format!("{err:#}")),
                })
            })
            .collect();
        if !disks.is_empty() {
            check::worktrees(&mut checks, &disks, &self.config.executions.worktrees());
        }
        let ends = self.invocation_ends();
        check::invocations(
            &mut checks,
            &self.ops,
            &ends,
            &self.config.executions.records(),
        );
        if let Some(bound_ms) = scenario.checks.answered_within_ms {
            check::invocations_answered(&mut checks, &self.ops, scenario.duration_ms, bound_ms);
        }
        let flights = self.final_flights(&ends);
        let (announced, missed) = self.config.ends.records();
        check::ends(
            &mut checks,
            &self.ops,
            &ends,
            &flights,
            &announced,
            &check::EndsContext {
                missed_events: missed,
                end_ms: ms_between(self.t0, Instant::now()),
                last_fault_ms: self.plan.last_fault_ms,
                live: self
                    .nodes
                    .iter()
                    .filter(|node| node.is_up())
                    .map(|node| node.name.clone())
                    .collect(),
                wiped: self.wiped.clone(),
            },
        );
        let state_digest = finals
            .iter()
            .flatten()
            .find_map(|state| state.registry.as_ref().ok())
            .map(Registry::state_digest);
        let latencies: Vec<f64> = self
            .ops
            .iter()
            .filter(|op| op.kind != OpKind::Invoke)
            .filter_map(|op| op.replicated_after_ms)
            .map(|ms| ms as f64)
            .collect();
        let first_fault_ms = scenario.faults.iter().map(|fault| fault.at_ms).min();
        let healthy: Vec<f64> = self
            .ops
            .iter()
            .filter(|op| op.kind != OpKind::Invoke)
            .filter(|op| {
                first_fault_ms.is_none_or(|first| op.at_ms + BEFORE_FAULTS_MARGIN_MS <= first)
            })
            .filter_map(|op| op.replicated_after_ms)
            .map(|ms| ms as f64)
            .collect();
        let idle = self.idle_traffic(converged_at_ms);
        let count = |outcome| self.ops.iter().filter(|op| op.outcome == outcome).count();
        RunReport {
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            seed: self.seed,
            nodes: self.nodes.len(),
            node_names: self.nodes.iter().map(|node| node.name.clone()).collect(),
            passed: false,
            sim_ms: if formed { scenario.duration_ms } else { 0 },
            formation_ms: self.formation_ms,
            simulated_ms: ms_between(self.net.start(), Instant::now()),
            wall_ms: 0.0,
            network: self.net.stats(),
            schedule_digest: self.net.digest(),
            state_digest,
            ops: OpsSummary {
                total: self.ops.len(),
                ok: count(Outcome::Ok),
                failed: count(Outcome::Failed),
                unknown: count(Outcome::Unknown),
                invocations: self
                    .ops
                    .iter()
                    .filter(|op| op.kind == OpKind::Invoke)
                    .count(),
                replication: Latency::of(latencies),
                replication_before_faults: Latency::of(healthy),
                invocation: Latency::of(self.invocation_latencies.clone()),
            },
            convergence,
            idle,
            checks,
            faults: self.faults.clone(),
            ops_history: self.ops.clone(),
            samples: self.samples.clone(),
            panics: Vec::new(),
            replay: String::new(),
        }
    }

    /// How every submitted invocation ended, from its origin's store.
    fn invocation_ends(&self) -> Vec<check::InvocationEnd> {
        let mut ends = Vec::new();
        let settled = self
            .settled
            .iter()
            .map(|settled| (settled.op, settled.origin, settled.invocation_id.clone()));
        let unsettled = self
            .invocations
            .iter()
            .map(|pending| (pending.op, pending.origin, pending.invocation_id.clone()));
        for (op, origin, invocation_id) in settled.chain(unsettled) {
            let status = self.nodes[origin]
                .broker
                .as_ref()
                .map(|broker| broker.state().router.status(&invocation_id));
            let end = match status {
                None => check::InvocationEnd {
                    invocation_id,
                    op,
                    state: None,
                    terminal: false,
                    reason: None,
                    result: None,
                    acknowledged: false,
                    owner: None,
                },
                Some(Err(err)) => check::InvocationEnd {
                    invocation_id,
                    op,
                    state: Some(format!("unreadable ({}: {err})", err.code())),
                    terminal: false,
                    reason: None,
                    result: None,
                    acknowledged: false,
                    owner: None,
                },
                Some(Ok(status)) => {
                    let delivery = status.delivery;
                    let state = delivery.as_ref().map_or_else(
                        || "no delivery".to_owned(),
                        |delivery| delivery.state.to_string(),
                    );
                    let terminal = delivery
                        .as_ref()
                        .is_some_and(|delivery| delivery.state.is_terminal());
                    // An attempt succeeds when the owner acknowledged it,
                    // and only the delivery's current owner can have: a
                    // delivery moves on only when no owner holds it.
                    let acknowledged = delivery.as_ref().is_some_and(|delivery| {
                        delivery
                            .attempts
                            .iter()
                            .any(|attempt| attempt.outcome.as_deref() == Some("succeeded"))
                    });
                    let owner = delivery
                        .as_ref()
                        .and_then(|delivery| delivery.owner.as_deref())
                        .and_then(|id| {
                            self.nodes
                                .iter()
                                .find(|node| node.node_id.as_str() == id)
                                .map(|node| node.name.clone())
                        });
                    check::InvocationEnd {
                        invocation_id,
                        op,
                        state: Some(state),
                        terminal,
                        reason: delivery
                            .as_ref()
                            .and_then(|d| d.failure_reason.map(|reason| reason.to_string())),
                        result: delivery.and_then(|d| d.result),
                        acknowledged,
                        owner,
                    }
                }
            };
            ends.push(end);
        }
        ends.sort_by_key(|end| end.op);
        ends
    }

    /// The flight every live node holds for each submitted invocation,
    /// read from its store at the end.
    fn final_flights(&self, ends: &[check::InvocationEnd]) -> Vec<check::FlightSeen> {
        let mut flights = Vec::new();
        for node in &self.nodes {
            let Some(broker) = node.broker.as_ref() else {
                continue;
            };
            for end in ends {
                let Ok(status) = broker.state().router.status(&end.invocation_id) else {
                    continue;
                };
                if let Some(flight) = status.flight {
                    let terminal = flight.state.is_terminal();
                    flights.push(check::FlightSeen {
                        invocation_id: end.invocation_id.clone(),
                        node: node.name.clone(),
                        state: flight.state.to_string(),
                        terminal,
                    });
                }
            }
        }
        flights
    }

    /// Stops the live brokers and the network (the end of the run).
    async fn finish(&mut self) {
        for node in &mut self.nodes {
            if node.is_up()
                && tokio::time::timeout(SHUTDOWN_GRACE, node.shutdown())
                    .await
                    .is_err()
            {
                tracing::warn!(node = %node.name, "broker did not stop in time");
            }
        }
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
        self.net.clear();
    }
}

/// The instances a node's worktree agent has by its disk: the agent's own
/// (in its repository) and one per worktree it made, with the working
/// directory the broker's discovery gives each. A worktree on disk with no
/// instance in the registries fails `matches_history`.
fn worktree_instances(node: &SimNode) -> Vec<(String, String)> {
    let Some((definition, repo)) = &node.worktree_agent else {
        return Vec::new();
    };
    let mut instances = vec![(node.instance_name(definition), repo.display().to_string())];
    let (Some(dir), Ok(label)) = (
        node.worktrees_dir(),
        Label::parse(definition, NamePart::Definition),
    ) else {
        return instances;
    };
    let Some(root) = dir.parent() else {
        return instances;
    };
    let worktrees = scout::worktree::Worktrees::new(root, &label, repo, None);
    for (branch, cwd) in worktrees.checked_out().unwrap_or_default() {
        if let Some(instance) = node.workspace_instance(&branch) {
            instances.push((instance, cwd.display().to_string()));
        }
    }
    instances
}

/// Whether `registry` holds the write (its record, or a newer version of
/// the key; for a delete, a collected tombstone counts; a manifest of the
/// origin numbered above the write says what became of it).
fn holds(registry: &Registry, write: &PendingWrite) -> bool {
    match registry.get(&write.key) {
        Some(record) => record.dot.counter >= write.counter,
        None => {
            write.deleted
                || registry
                    .manifest(&write.key.origin)
                    .is_some_and(|(counter, _)| counter > write.counter)
        }
    }
}

/// The first sample time at or after `from_ms` from which every sample
/// shows one state among the live replicas.
fn converged_at(samples: &[Sample], from_ms: u64) -> Option<u64> {
    let last_divergent = samples
        .iter()
        .rposition(|sample| sample.distinct_states != 1);
    let candidate = match last_divergent {
        Some(idx) => samples.get(idx + 1)?,
        None => samples.first()?,
    };
    let at = candidate.t_ms.max(from_ms);
    samples
        .iter()
        .find(|sample| sample.t_ms >= at)
        .map(|sample| sample.t_ms)
}

fn ms_between(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.duration_since(from).as_millis()).unwrap_or(u64::MAX)
}
