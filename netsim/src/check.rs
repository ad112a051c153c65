//! The checks, over the recorded history and a final read of every live
//! node's store. Each failure carries a counterexample a person can act
//! on: which nodes disagree and on which record, which write was lost.
//!
//! - `brokers_run`: the mesh formed, and every broker started and
//!   restarted when asked.
//! - `replicas_converge`: every live replica's store holds the same live
//!   records.
//! - `convergence_bound`: they agreed within the scenario's bound after the
//!   last fault (or the last write, if later), and stayed so.
//! - `matches_history`: what they agree on is what the history wrote: each
//!   node's instances are exactly the agents in its file, with the last
//!   working directory written; every definition shows only values someone
//!   wrote; every node has its node record and is a member.
//! - `stores_match_memory`: each broker's store holds what its replica
//!   holds in memory (nothing acknowledged lives only in memory).
//! - `invocations_complete`: every invocation the workload submitted ended
//!   at its origin, completed or failed with a recorded reason (none lost
//!   or stuck).
//! - `invocations_exactly_once`: no invocation id was executed twice by
//!   any agent of any node, across restarts; every completed one was
//!   executed exactly once and its answer is the one the origin recorded.
//! - `flights_finish`: every invocation an owner acknowledged is finished
//!   there after the final heal (its flight ended: completed, failed, or
//!   cancelled), and an owner whose acknowledgement the origin recorded
//!   holds the flight.
//! - `invocations_answered` (only in a scenario that sets
//!   `answered_within_ms`): every accepted invocation ended at its origin
//!   (completed, or failed with a reason) within that long, simulated,
//!   after it was submitted; one still open at the end counts until the
//!   end.
//! - `results_once`: the origin recorded each invocation's result once.
//! - `ends_agree`: a flight finished in one state: its owner never
//!   announced two different ends, what the owner stored is what it
//!   announced, and an origin that took its end from the owner agrees
//!   with the owner's flight.
//! - `worktrees_once`: with a definition that makes worktrees, each node's
//!   disk holds at most one worktree per workspace, each at the path that
//!   follows from its branch, no directory of the worktrees dir that git
//!   does not list, no worktree that no execution asked for, every
//!   worktree an execution asked for, and none made twice (a retried,
//!   rerouted or restarted execution finds the first). That every live
//!   replica holds exactly those worktrees as instances is part of
//!   `matches_history`.
//! - `no_panics`: no task of any broker panicked.

use std::collections::{BTreeMap, BTreeSet};

use scout_mesh::registry::Registry;
use scout_mesh::wire::{NodeId, RecordBody, RecordKind};
use serde::Serialize;

use crate::agent::{ExecEnd, ExecRecord, WorktreeRecord};
use crate::history::{EndRecord, EndSide, OpRecord, Outcome, Sample};
use crate::node::DiskWorktrees;
use crate::report::Convergence;
use crate::scenario::OpKind;

/// Differences listed in one counterexample at most.
const DIFFERENCES_SHOWN_MAX: usize = 5;

/// How long after the final heal (or its submission, if later) an
/// acknowledged invocation must have finished at its owner. A flight needs
/// no network to run: its owner's runner takes it from the store within a
/// poll (2 s), an agent works at most a few seconds, and a flight a crash
/// interrupted is ended when its broker starts again. Twenty seconds leaves
/// room for a queue of several flights on one instance.
pub const FINISH_GRACE_MS: u64 = 20_000;

/// Failure reasons an origin decides on its own, without word from the
/// owner: its deadline passed, the owner could not be reached on the one
/// try allowed, the delivery was lost at a restart by its policy, or it
/// was cancelled here. The owner's flight may end differently then.
const ORIGIN_OWN_REASONS: [&str; 4] = ["timeout", "peer_unreachable", "dispatch", "cancelled"];

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// It holds.
    Pass,
    /// It does not; `detail` has a counterexample.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Its name.
    pub name: &'static str,
    /// How it ended.
    pub status: CheckStatus,
    /// What was seen: the counterexample of a failure.
    pub detail: String,
}

impl CheckResult {
    /// Whether the check holds.
    pub fn passed(&self) -> bool {
        self.status != CheckStatus::Fail
    }
}

fn push(checks: &mut Vec<CheckResult>, name: &'static str, failure: Option<String>, ok: String) {
    checks.push(match failure {
        Some(detail) => CheckResult {
            name,
            status: CheckStatus::Fail,
            detail,
        },
        None => CheckResult {
            name,
            status: CheckStatus::Pass,
            detail: ok,
        },
    });
}

/// A live node's state at the end.
#[derive(Debug, Clone)]
pub struct FinalState {
    /// Its registry as read from its store.
    pub registry: Result<Registry, String>,
    /// Its in-memory replica's state digest.
    pub memory_digest: u64,
}

/// What the history says every replica should hold.
#[derive(Debug, Clone)]
pub struct Expected {
    /// Node names by index.
    pub names: Vec<String>,
    /// Node ids by index.
    pub node_ids: Vec<NodeId>,
    /// Per node: its instances (full name) and their working directories.
    pub agents: Vec<BTreeMap<String, String>>,
    /// Per definition: every description written.
    pub definitions: BTreeMap<String, BTreeSet<String>>,
}

/// One node's worktrees at the end, for `worktrees_once`.
#[derive(Debug)]
pub struct NodeWorktrees {
    /// The node.
    pub node: String,
    /// What its disk holds, or why it could not be read.
    pub disk: Result<DiskWorktrees, String>,
}

/// `worktrees_once`.
pub fn worktrees(checks: &mut Vec<CheckResult>, nodes: &[NodeWorktrees], asked: &[WorktreeRecord]) {
    let mut failure = None;
    let mut total = 0;
    'nodes: for seen in nodes {
        let node = &seen.node;
        let disk = match &seen.disk {
            Ok(disk) => disk,
            Err(err) => {
                failure = Some(format!("{node}: cannot read its worktrees: {err}"));
                break;
            }
        };
        total += disk.listed.len();
        let mut branches = BTreeSet::new();
        for (path, branch) in &disk.listed {
            let Some(branch) = branch else {
                failure = Some(format!("{node}: worktree {} has no branch", path.display()));
                break 'nodes;
            };
            if !branches.insert(branch.as_str()) {
                failure = Some(format!(
                    "{node}: branch {branch} is checked out in two worktrees"
                ));
                break 'nodes;
            }
            let wanted = disk.dir.join(branch.replace('/', "+"));
            if *path != wanted {
                failure = Some(format!(
                    "{node}: the worktree of {branch} is at {}, not at {}",
                    path.display(),
                    wanted.display()
                ));
                break 'nodes;
            }
            let path_text = path.display().to_string();
            let made: Vec<&WorktreeRecord> = asked
                .iter()
                .filter(|record| record.node == *node && std::path::Path::new(&record.path) == path)
                .collect();
            if made.is_empty() {
                failure = Some(format!(
                    "{node}: worktree {path_text} was made, but no execution asked for it"
                ));
                break 'nodes;
            }
            let creations: Vec<String> = made
                .iter()
                .filter(|record| record.made)
                .map(|record| {
                    format!(
                        "{} (start {}) at {:.3} s",
                        record.invocation_id,
                        record.incarnation,
                        record.at_ms as f64 / 1000.0
                    )
                })
                .collect();
            if creations.len() > 1 {
                failure = Some(format!(
                    "{node}: worktree {path_text} was made {} times: {}",
                    creations.len(),
                    creations.join("; ")
                ));
                break 'nodes;
            }
        }
        if let Some(stray) = disk
            .entries
            .iter()
            .find(|entry| !disk.listed.iter().any(|(path, _)| path == *entry))
        {
            failure = Some(format!(
                "{node}: {} is in the worktrees dir, but git lists no worktree there",
                stray.display()
            ));
            break;
        }
        if let Some(lost) = asked.iter().find(|record| {
            record.node == *node
                && !disk
                    .listed
                    .iter()
                    .any(|(path, _)| path == std::path::Path::new(&record.path))
        }) {
            failure = Some(format!(
                "{node}: invocation {} had worktree {} made for {}, which is gone",
                lost.invocation_id, lost.path, lost.instance
            ));
            break;
        }
    }
    push(
        checks,
        "worktrees_once",
        failure,
        format!(
            "{total} worktrees on {} nodes, asked for {} times: one per workspace and node, each made once, none stray",
            nodes.len(),
            asked.len()
        ),
    );
}

/// `brokers_run`.
pub fn formed(checks: &mut Vec<CheckResult>, formed: bool, errors: &[String]) {
    let failure = if !formed || !errors.is_empty() {
        Some(errors.join("; "))
    } else {
        None
    };
    push(
        checks,
        "brokers_run",
        failure,
        "the mesh formed; every start and restart succeeded".into(),
    );
}

/// `connections_bounded`: no broker held more connections at any sample
/// than its active view and its on-demand connections allow.
pub fn connections_bounded(
    checks: &mut Vec<CheckResult>,
    max: &(usize, String, u64),
    views: scout_mesh::views::ViewSizes,
) {
    let bound = scout::daemon::mesh::views::connections_max(views);
    let (count, node, at_ms) = max;
    let failure = (*count > bound)
        .then(|| format!("{node} held {count} connections at {at_ms} ms; the bound is {bound}"));
    push(
        checks,
        "connections_bounded",
        failure,
        format!("at most {count} connections per broker (bound {bound})"),
    );
}

fn live<'a>(
    expected: &'a Expected,
    finals: &'a [Option<FinalState>],
) -> impl Iterator<Item = (usize, &'a str, &'a FinalState)> {
    finals
        .iter()
        .enumerate()
        .filter_map(|(idx, state)| Some((idx, expected.names[idx].as_str(), state.as_ref()?)))
}

/// `replicas_converge`.
pub fn replicas_converge(
    checks: &mut Vec<CheckResult>,
    expected: &Expected,
    finals: &[Option<FinalState>],
) {
    let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    let mut failure = None;
    for (idx, name, state) in live(expected, finals) {
        match &state.registry {
            Ok(registry) => groups.entry(registry.state_digest()).or_default().push(idx),
            Err(err) => {
                failure = Some(format!("{name}: its store cannot be read: {err}"));
                break;
            }
        }
    }
    let n_live = groups.values().map(Vec::len).sum::<usize>();
    if failure.is_none() && groups.len() > 1 {
        let mut by_size: Vec<&Vec<usize>> = groups.values().collect();
        by_size.sort_by_key(|members| std::cmp::Reverse(members.len()));
        let reference = by_size[0][0];
        let other = by_size[1][0];
        let registry = |idx: usize| {
            finals[idx]
                .as_ref()
                .and_then(|state| state.registry.as_ref().ok())
        };
        let diff = match (registry(reference), registry(other)) {
            (Some(a), Some(b)) => describe_difference(
                a,
                b,
                &expected.names[reference],
                &expected.names[other],
                expected,
            ),
            _ => String::new(),
        };
        let sides: Vec<String> = by_size
            .iter()
            .map(|members| {
                members
                    .iter()
                    .map(|idx| expected.names[*idx].clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        failure = Some(format!(
            "{} different registries among {n_live} live nodes ({}); {diff}",
            groups.len(),
            sides.join(" | ")
        ));
    }
    push(
        checks,
        "replicas_converge",
        failure,
        format!("{n_live} live replicas hold identical registries"),
    );
}

/// The first few records on which two registries differ.
fn describe_difference(
    a: &Registry,
    b: &Registry,
    a_name: &str,
    b_name: &str,
    expected: &Expected,
) -> String {
    let live = |registry: &Registry| -> BTreeMap<_, _> {
        registry
            .records()
            .filter(|record| record.body.is_some())
            .map(|record| (record.key.clone(), record.clone()))
            .collect()
    };
    let (a_live, b_live) = (live(a), live(b));
    let keys: BTreeSet<_> = a_live.keys().chain(b_live.keys()).cloned().collect();
    let mut lines = Vec::new();
    let origin_name = |origin: &NodeId| {
        expected
            .node_ids
            .iter()
            .position(|id| id == origin)
            .map_or_else(|| origin.to_string(), |idx| expected.names[idx].clone())
    };
    for key in keys {
        let (left, right) = (a_live.get(&key), b_live.get(&key));
        let show = |record: Option<&scout_mesh::wire::Record>| match record {
            None => "nothing".to_owned(),
            Some(record) => format!("seq {} ({})", record.dot.counter, body_summary(record)),
        };
        let differs = match (left, right) {
            (Some(l), Some(r)) => l != r,
            _ => true,
        };
        if differs {
            lines.push(format!(
                "{} {} `{}` of {}: {a_name} has {}, {b_name} has {}",
                key.kind,
                "record",
                key.name,
                origin_name(&key.origin),
                show(left),
                show(right)
            ));
        }
        if lines.len() >= DIFFERENCES_SHOWN_MAX {
            break;
        }
    }
    lines.join("; ")
}

fn body_summary(record: &scout_mesh::wire::Record) -> String {
    match &record.body {
        Some(RecordBody::Instance(instance)) => format!("cwd {}", instance.cwd),
        Some(RecordBody::Definition(_)) => "definition".to_owned(),
        Some(RecordBody::Node(node)) => format!("node {}", node.node_name),
        Some(_) => record.key.kind.to_string(),
        None => "deleted".to_owned(),
    }
}

/// `convergence_bound`.
pub fn convergence_bound(
    checks: &mut Vec<CheckResult>,
    convergence: &Convergence,
    samples: &[Sample],
) {
    let from = convergence.last_fault_ms.max(convergence.last_op_ms);
    let failure = match convergence.after_ms {
        None => {
            let distinct = samples.last().map_or(0, |sample| sample.distinct_states);
            Some(format!(
                "live replicas never settled on one state after {:.1} s (the last fault or write); at the end they held {distinct} different states",
                from as f64 / 1000.0
            ))
        }
        Some(after) if after > convergence.bound_ms => Some(format!(
            "converged {after} ms after the last fault or write (at {:.1} s), over the bound of {} ms",
            from as f64 / 1000.0,
            convergence.bound_ms
        )),
        Some(_) => None,
    };
    push(
        checks,
        "convergence_bound",
        failure,
        format!(
            "converged {} ms after the last fault or write (bound {} ms)",
            convergence.after_ms.unwrap_or(0),
            convergence.bound_ms
        ),
    );
}

/// `matches_history`.
pub fn matches_history(
    checks: &mut Vec<CheckResult>,
    expected: &Expected,
    finals: &[Option<FinalState>],
    ops: &[OpRecord],
) {
    let mut failure = None;
    'nodes: for (_, name, state) in live(expected, finals) {
        let Ok(registry) = &state.registry else {
            continue;
        };
        for (origin_idx, origin) in expected.node_ids.iter().enumerate() {
            let origin_name = &expected.names[origin_idx];
            if !registry.is_member(origin) {
                failure = Some(format!("{name}: {origin_name} is not a member"));
                break 'nodes;
            }
            if registry.node(origin).is_none() {
                failure = Some(format!("{name}: no node record of {origin_name}"));
                break 'nodes;
            }
            // Only live origins: a node down at the end may not have
            // pushed its last writes, which is not a replication fault.
            if finals[origin_idx].is_none() {
                continue;
            }
            let held: BTreeMap<&str, &str> = registry
                .records()
                .filter(|record| {
                    record.key.origin == *origin && record.key.kind == RecordKind::Instance
                })
                .filter_map(|record| match &record.body {
                    Some(RecordBody::Instance(instance)) => {
                        Some((record.key.name.as_str(), instance.cwd.as_str()))
                    }
                    _ => None,
                })
                .collect();
            let wanted = &expected.agents[origin_idx];
            let names: BTreeSet<&str> = held
                .keys()
                .copied()
                .chain(wanted.keys().map(String::as_str))
                .collect();
            for instance in names {
                let (have, want) = (held.get(instance).copied(), wanted.get(instance));
                if have == want.map(String::as_str) {
                    continue;
                }
                let last = last_write(ops, origin_name, instance);
                failure = Some(format!(
                    "{name} holds {} for {instance}, but {origin_name}'s agents say {}{last}",
                    have.map_or("no instance".to_owned(), |cwd| format!("cwd {cwd}")),
                    want.map_or("it was removed".to_owned(), |cwd| format!("cwd {cwd}")),
                ));
                break 'nodes;
            }
        }
        for (definition, written) in &expected.definitions {
            let shown = registry.definition(definition);
            if shown.is_empty() {
                failure = Some(format!(
                    "{name} shows no value of definition {definition}, which was edited {} times",
                    written.len()
                ));
                break 'nodes;
            }
            if let Some(stray) = shown
                .iter()
                .find(|value| !written.contains(&value.description))
            {
                failure = Some(format!(
                    "{name} shows definition {definition} = {:?}, which nobody wrote",
                    stray.description
                ));
                break 'nodes;
            }
        }
    }
    push(
        checks,
        "matches_history",
        failure,
        "every live replica holds exactly the agents, definitions and nodes the history wrote"
            .into(),
    );
}

/// The last accepted write of `instance` on `origin`, for a counterexample.
fn last_write(ops: &[OpRecord], origin: &str, instance: &str) -> String {
    let agent = instance
        .strip_prefix('@')
        .and_then(|rest| rest.split('@').next())
        .unwrap_or_default();
    ops.iter()
        .rev()
        .find(|op| {
            op.node == origin
                && op.name == agent
                && matches!(
                    op.kind,
                    OpKind::AddAgent | OpKind::UpdateAgent | OpKind::RemoveAgent
                )
                && op.counter.is_some()
        })
        .map(|op| {
            format!(
                " (last write: op #{} at {:.3} s, {} {} on {}: {}, seq {})",
                op.id,
                op.at_ms as f64 / 1000.0,
                op.kind.as_str(),
                op.name,
                op.node,
                op.detail,
                op.counter.unwrap_or(0)
            )
        })
        .unwrap_or_default()
}

/// `stores_match_memory`.
pub fn stores_match_memory(
    checks: &mut Vec<CheckResult>,
    expected: &Expected,
    finals: &[Option<FinalState>],
) {
    let mut failure = None;
    for (_, name, state) in live(expected, finals) {
        if let Ok(registry) = &state.registry
            && registry.state_digest() != state.memory_digest
        {
            failure = Some(format!(
                "{name}: the store's registry (digest {:016x}) differs from the replica in memory ({:016x})",
                registry.state_digest(),
                state.memory_digest
            ));
            break;
        }
    }
    push(
        checks,
        "stores_match_memory",
        failure,
        "every live broker's store holds what its replica holds".into(),
    );
}

/// An invocation as the run saw it end (or not).
#[derive(Debug, Clone)]
pub struct InvocationEnd {
    /// The invocation.
    pub invocation_id: String,
    /// The operation that submitted it (its history entry).
    pub op: usize,
    /// Its origin's delivery state at the end, `None` if the origin is
    /// down (then nothing can be said).
    pub state: Option<String>,
    /// Whether that state is terminal.
    pub terminal: bool,
    /// The failure reason recorded with a failed or cancelled end.
    pub reason: Option<String>,
    /// The answer the origin recorded, for a completed one.
    pub result: Option<String>,
    /// Whether the origin recorded an attempt the owner acknowledged.
    pub acknowledged: bool,
    /// The node name of the delivery's owner, if known.
    pub owner: Option<String>,
}

/// A flight a live node holds at the end, read from its store.
#[derive(Debug, Clone)]
pub struct FlightSeen {
    /// The invocation.
    pub invocation_id: String,
    /// The node holding it.
    pub node: String,
    /// Its state word.
    pub state: String,
    /// Whether that state is terminal.
    pub terminal: bool,
}

/// What the end checks need to know about the run besides the records.
#[derive(Debug, Clone)]
pub struct EndsContext {
    /// Events the listeners missed (then a missing end proves nothing).
    pub missed_events: u64,
    /// Simulated ms from the scenario's start to the final reads.
    pub end_ms: u64,
    /// The last fault (the final heal in a swarm scenario).
    pub last_fault_ms: u64,
    /// Nodes live at the end.
    pub live: BTreeSet<String>,
    /// Nodes whose store was wiped during the run (they may have lost
    /// what they acknowledged, by the fault's design).
    pub wiped: BTreeSet<String>,
}

/// `invocations_answered`: every accepted invocation ended at its origin
/// (completed, or failed with a reason) within `bound_ms` of its
/// submission, simulated; one still open at the end has waited until
/// `end_ms`, the scenario's end. Invocations refused at submission (no
/// such agent, origin down) were never accepted and are not judged.
pub fn invocations_answered(
    checks: &mut Vec<CheckResult>,
    ops: &[OpRecord],
    end_ms: u64,
    bound_ms: u64,
) {
    let waits = ops
        .iter()
        .filter(|op| op.kind == OpKind::Invoke)
        .filter_map(|op| match (op.replicated_after_ms, op.outcome) {
            (Some(after), _) => Some((after, true, op)),
            (None, Outcome::Unknown) => Some((end_ms.saturating_sub(op.at_ms), false, op)),
            (None, _) => None,
        });
    let (mut count, mut slowest) = (0, None);
    for wait in waits {
        count += 1;
        if slowest.as_ref().is_none_or(|(ms, _, _)| wait.0 > *ms) {
            slowest = Some(wait);
        }
    }
    let failure = slowest
        .filter(|(ms, _, _)| *ms > bound_ms)
        .map(|(ms, ended, op)| {
            let when = if ended {
                format!("ended {ms} ms later")
            } else {
                format!("was still open {ms} ms later, at the end")
            };
            format!(
                "the invocation of `{}` from {} at {:.1} s ({}) {when}; the bound is {bound_ms} ms",
                op.name,
                op.node,
                op.at_ms as f64 / 1000.0,
                op.detail
            )
        });
    let slowest_ms = slowest.map_or(0, |(ms, _, _)| ms);
    push(
        checks,
        "invocations_answered",
        failure,
        format!("{count} accepted, the slowest ended after {slowest_ms} ms (bound {bound_ms} ms)"),
    );
}

/// `invocations_complete` and `invocations_exactly_once`.
pub fn invocations(
    checks: &mut Vec<CheckResult>,
    ops: &[OpRecord],
    ends: &[InvocationEnd],
    executions: &[ExecRecord],
) {
    let describe = |end: &InvocationEnd| describe_invocation(ops, end);
    let mut lost = None;
    let (mut completed, mut failed, mut unknown) = (0, 0, 0);
    for end in ends {
        match (&end.state, end.terminal) {
            (None, _) => unknown += 1,
            (Some(state), false) => {
                lost.get_or_insert_with(|| {
                    format!(
                        "{} never finished: its delivery is still `{state}` at the end",
                        describe(end)
                    )
                });
            }
            (Some(state), true) if state == "completed" => completed += 1,
            (Some(state), true) => {
                if end.reason.is_none() {
                    lost.get_or_insert_with(|| {
                        format!(
                            "{} ended `{state}` without a recorded reason",
                            describe(end)
                        )
                    });
                }
                failed += 1;
            }
        }
    }
    push(
        checks,
        "invocations_complete",
        lost,
        format!(
            "{} accepted: {completed} completed, {failed} ended with a recorded reason{}",
            ends.len(),
            if unknown > 0 {
                format!(", {unknown} unknown (origin down at the end)")
            } else {
                String::new()
            }
        ),
    );

    let mut runs: BTreeMap<&str, Vec<&ExecRecord>> = BTreeMap::new();
    for execution in executions {
        runs.entry(execution.invocation_id.as_str())
            .or_default()
            .push(execution);
    }
    let mut failure = None;
    for (id, list) in &runs {
        if list.len() > 1 {
            let where_ = list
                .iter()
                .map(|run| {
                    format!(
                        "{} (start {}) at {:.3} s, {:?}",
                        run.node,
                        run.incarnation,
                        run.started_ms as f64 / 1000.0,
                        run.end
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            failure = Some(format!(
                "invocation {id} was executed {} times: {where_}",
                list.len()
            ));
            break;
        }
        if !ends.iter().any(|end| end.invocation_id == *id) {
            failure = Some(format!(
                "invocation {id} was executed on {} but never submitted",
                list[0].node
            ));
            break;
        }
    }
    if failure.is_none() {
        for end in ends {
            if end.state.as_deref() != Some("completed") {
                continue;
            }
            let list = runs
                .get(end.invocation_id.as_str())
                .cloned()
                .unwrap_or_default();
            let done: Vec<&&ExecRecord> = list
                .iter()
                .filter(|run| run.end == ExecEnd::Completed)
                .collect();
            if done.len() != 1 {
                failure = Some(format!(
                    "{} completed at its origin, but {} agent executions completed",
                    describe(end),
                    done.len()
                ));
                break;
            }
            if end.result != done[0].response {
                failure = Some(format!(
                    "{} completed with answer {:?}, but the agent answered {:?}",
                    describe(end),
                    end.result,
                    done[0].response
                ));
                break;
            }
        }
    }
    push(
        checks,
        "invocations_exactly_once",
        failure,
        format!(
            "{} executions: no invocation ran twice, every completed one ran exactly once and its answer came back",
            executions.len()
        ),
    );
}

/// `flights_finish`, `results_once` and `ends_agree`.
pub fn ends(
    checks: &mut Vec<CheckResult>,
    ops: &[OpRecord],
    ends: &[InvocationEnd],
    flights: &[FlightSeen],
    announced: &[EndRecord],
    context: &EndsContext,
) {
    let describe = |end: &InvocationEnd| describe_invocation(ops, end);
    let mut held: BTreeMap<&str, Vec<&FlightSeen>> = BTreeMap::new();
    for flight in flights {
        held.entry(flight.invocation_id.as_str())
            .or_default()
            .push(flight);
    }
    let mut by_side: BTreeMap<(&str, EndSide), Vec<&EndRecord>> = BTreeMap::new();
    for record in announced {
        by_side
            .entry((record.invocation_id.as_str(), record.side))
            .or_default()
            .push(record);
    }
    let show = |records: &[&EndRecord]| {
        records
            .iter()
            .map(|record| {
                format!(
                    "`{}` on {} (start {}) at {:.3} s",
                    record.state,
                    record.node,
                    record.incarnation,
                    record.at_ms as f64 / 1000.0
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };

    // flights_finish
    let mut failure = None;
    let (mut judged, mut too_late) = (0, 0);
    for end in ends {
        let submitted_ms = ops[end.op].at_ms;
        if context.end_ms
            < context
                .last_fault_ms
                .max(submitted_ms)
                .saturating_add(FINISH_GRACE_MS)
        {
            too_late += 1;
            continue;
        }
        judged += 1;
        let flights = held
            .get(end.invocation_id.as_str())
            .map_or(&[][..], Vec::as_slice);
        if let Some(open) = flights.iter().find(|flight| !flight.terminal) {
            failure = Some(format!(
                "{} was acknowledged by {}, whose flight is still `{}` at the end, {:.1} s after the final heal",
                describe(end),
                open.node,
                open.state,
                context.end_ms.saturating_sub(context.last_fault_ms) as f64 / 1000.0
            ));
            break;
        }
        if end.acknowledged
            && let Some(owner) = &end.owner
            && context.live.contains(owner)
            && !context.wiped.contains(owner)
            && !flights.iter().any(|flight| &flight.node == owner)
        {
            failure = Some(format!(
                "{}: its origin recorded {owner}'s acknowledgement, but {owner} holds no flight for it",
                describe(end)
            ));
            break;
        }
    }
    push(
        checks,
        "flights_finish",
        failure,
        format!(
            "{judged} invocations judged: every acknowledged one finished at its owner{}",
            if too_late > 0 {
                format!(
                    "; {too_late} submitted within {} s of the end not judged",
                    FINISH_GRACE_MS / 1000
                )
            } else {
                String::new()
            }
        ),
    );

    // results_once
    let mut failure = None;
    let mut recorded = 0;
    for ((id, side), records) in &by_side {
        if *side != EndSide::Delivery {
            continue;
        }
        recorded += 1;
        if records.len() > 1 {
            failure = Some(format!(
                "the result of invocation {id} was recorded at its origin {} times: {}",
                records.len(),
                show(records)
            ));
            break;
        }
    }
    push(
        checks,
        "results_once",
        failure,
        format!(
            "{recorded} results recorded at their origins, each once{}",
            missed_note(context.missed_events)
        ),
    );

    // ends_agree
    let mut failure = None;
    'ends: for end in ends {
        let id = end.invocation_id.as_str();
        let owned = by_side
            .get(&(id, EndSide::Flight))
            .map_or(&[][..], Vec::as_slice);
        let states: BTreeSet<&str> = owned.iter().map(|record| record.state.as_str()).collect();
        if states.len() > 1 {
            failure = Some(format!(
                "{} finished in {} different states: {}",
                describe(end),
                states.len(),
                show(owned)
            ));
            break;
        }
        let flights = held.get(id).map_or(&[][..], Vec::as_slice);
        for flight in flights.iter().filter(|flight| flight.terminal) {
            if let Some(record) = owned
                .iter()
                .find(|record| record.node == flight.node && record.state != flight.state)
            {
                failure = Some(format!(
                    "{}: {} announced its flight `{}` at {:.3} s, but its store says `{}`",
                    describe(end),
                    flight.node,
                    record.state,
                    record.at_ms as f64 / 1000.0,
                    flight.state
                ));
                break 'ends;
            }
            let from_owner = match end.state.as_deref() {
                Some("completed") => true,
                Some("failed") => end
                    .reason
                    .as_deref()
                    .is_some_and(|reason| !ORIGIN_OWN_REASONS.contains(&reason)),
                _ => false,
            };
            let agrees = match end.state.as_deref() {
                Some("completed") => flight.state == "completed",
                Some("failed") => flight.state != "completed",
                _ => true,
            };
            if from_owner && !agrees {
                failure = Some(format!(
                    "{} ended `{}`{} at its origin, but {}'s flight ended `{}`",
                    describe(end),
                    end.state.as_deref().unwrap_or_default(),
                    end.reason
                        .as_deref()
                        .map(|reason| format!(" ({reason})"))
                        .unwrap_or_default(),
                    flight.node,
                    flight.state
                ));
                break 'ends;
            }
        }
    }
    push(
        checks,
        "ends_agree",
        failure,
        format!(
            "every flight finished in one state, and origins agree with their owners{}",
            missed_note(context.missed_events)
        ),
    );
}

fn missed_note(missed: u64) -> String {
    if missed > 0 {
        format!(" ({missed} routing events missed by the listeners)")
    } else {
        String::new()
    }
}

/// `no_panics`.
pub fn no_panics(checks: &mut Vec<CheckResult>, n_panics: usize, messages: &[String]) {
    let failure = (n_panics > 0).then(|| {
        format!(
            "{n_panics} panics; first: {}",
            messages.first().map_or("", String::as_str)
        )
    });
    push(checks, "no_panics", failure, "no task panicked".into());
}

/// How a counterexample names an invocation: its id and the operation
/// that submitted it.
fn describe_invocation(ops: &[OpRecord], end: &InvocationEnd) -> String {
    let op = &ops[end.op];
    format!(
        "invocation {} ({} from {} at {:.3} s)",
        end.invocation_id,
        op.name,
        op.node,
        op.at_ms as f64 / 1000.0
    )
}
