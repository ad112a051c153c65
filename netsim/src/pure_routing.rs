//! The routing core and the sync core together, with no QUIC and no
//! SQLite: one deterministic discrete-event simulation per seed. Every node
//! runs a [`Router`] (the state machine the brokers run) and a [`Replica`]
//! (its registry: each node publishes one agent instance, and origins
//! resolve mentions from the replicated registry with
//! [`scout_mesh::resolve`]), a model store (the rows the router's `Write`s
//! say, committed in order, with the owner's unique invocation id) and
//! model executions that take a random simulated time.
//!
//! Faults come from the seed: message loss, duplication and reordering
//! (random latency), partitions that heal, crashes and restarts (volatile
//! state lost; committed rows kept; rows queued but not yet committed lost
//! as a suffix, like a store whose writer commits in order; at restart the
//! store's reconcile ends flights that were running, then
//! [`Router::restore`] rebuilds the router) and wall-clock jumps. After the
//! workload, everything heals and the run goes on until every delivery has
//! ended; [`check`] then judges the history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use rand::Rng;
use rand::rngs::StdRng;
use scout_mesh::lifecycle::{
    DeliveryPolicy, DeliveryState, EndpointState, FailureReason, FlightState, Harness,
    InvocationAction,
};
use scout_mesh::names::{AgentName, Label, NamePart};
use scout_mesh::output::FlightOutput;
use scout_mesh::resolve::{self, Candidate};
use scout_mesh::routing::{
    Choice, Directory, EventKind, ExecProgress, ExecResult, Facts, Invocation, Now, Output,
    PersistFailure, PersistId, RequestId, RestoredDelivery, RestoredFlight, Resumed, Router,
    SendFailure, StoredFlight, Submission, Write,
};
use scout_mesh::sync::{self, Replica, ReplicaIdentity, SigningKey, SyncConfig};
use scout_mesh::wire::{FlightUpdate, InstanceBody, MeshFrame, NodeId, RecordBody, SyncMessage};
use serde::Serialize;

use crate::seeds;
use crate::timeline::Timeline;

/// Fewest nodes in one schedule: with fewer, a partition has no sides.
pub const ROUTING_NODES_MIN: usize = 2;

/// Most nodes in one schedule: the swarm covers small meshes densely; the
/// sync core's scale is `pure`'s job.
pub const ROUTING_NODES_MAX: usize = 16;

/// The wall clock's epoch at simulated time zero (2023-11-14).
const EPOCH_UNIX_MS: u64 = 1_700_000_000_000;

/// How long an invocation stays wanted. Far beyond any schedule (the
/// workload, the longest fault and the quiet period), so a deadline never
/// ends work a healthy mesh could finish: a `timeout` at the origin is a
/// liveness failure of the run.
const DEADLINE_MS: u64 = 30 * 60 * 1000;

/// How long a request waits for its answer before the sender is told it
/// failed, like the transport's request timeout.
const REQUEST_TIMEOUT_MS: u64 = 1_500;

/// Longest a transaction waits in the store's queue before it commits: a
/// crash inside that window loses it (and everything queued after it).
const DISK_MS_MAX: u64 = 25;

/// The registry forms before the first submission: long enough for a few
/// anti-entropy rounds with every node's first record.
const WARMUP_MS: u64 = 5_000;

/// Simulated time between submissions on average, per invocation: keeps
/// the executions of a three-node mesh below saturation.
const SUBMIT_SPACING_MS: u64 = 60;

/// After the final heal, the longest the run waits for every delivery to
/// end; a run still busy then failed (deadlines are further away).
const QUIET_MAX_MS: u64 = 20 * 60 * 1000;

/// How often the quiet period looks whether everything has ended.
const QUIET_POLL_MS: u64 = 500;

/// Timer firings at one millisecond for one node at most, a guard against
/// a router that keeps asking for the same instant.
const TIMER_SPINS_MAX: u32 = 64;

/// The agent definitions nodes publish, one per node in turn: two, so a
/// logical mention has several instances to choose from (and to reroute
/// to) and is not always the local one.
const DEFINITIONS: [&str; 2] = ["fabric", "forge"];

/// A deliberately broken variant, to show the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Broken {
    /// The owner's duplicate guards are gone: the driver feeds
    /// `Facts::default()` instead of the stored flight, and the store has
    /// no unique invocation id.
    NoDuplicateGuard,
}

/// How one schedule is shaped.
#[derive(Debug, Clone)]
pub struct RoutingOptions {
    /// The seed: everything else is drawn from it.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Invocations submitted.
    pub invocations: usize,
    /// A broken variant, for tests.
    pub broken: Option<Broken>,
}

impl RoutingOptions {
    /// The command line that replays this schedule.
    pub fn replay(&self) -> String {
        let mut line = format!(
            "cargo run --release -p scout-netsim -- pure --routing --seed {} --nodes {} --invocations {}",
            self.seed, self.nodes, self.invocations
        );
        if self.broken.is_some() {
            line.push_str(" --broken-duplicate-guard");
        }
        line
    }
}

/// One broken rule, with what shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    /// The invariant.
    pub name: String,
    /// The counterexample.
    pub detail: String,
}

/// What one schedule did and whether it passed.
#[derive(Debug, Clone, Serialize)]
pub struct RoutingReport {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Invocations the workload asked for.
    pub invocations: usize,
    /// Invocations committed at their origin.
    pub submitted: usize,
    /// Mentions that resolved to nothing (the registry had not reached the
    /// origin), refused at submit like the broker's `AGENT_NOT_FOUND`.
    pub unresolved: usize,
    /// Final delivery states at the origins.
    pub completed: usize,
    /// See `completed`.
    pub failed: usize,
    /// See `completed`.
    pub cancelled: usize,
    /// Executions that started.
    pub executions: usize,
    /// Held executions that outlived a crash of their broker and were
    /// carried on after its restart.
    pub carried_on: usize,
    /// Reroutes committed.
    pub reroutes: usize,
    /// Faults: crashes, partitions, clock jumps.
    pub crashes: usize,
    /// See `crashes`.
    pub partitions: usize,
    /// See `crashes`.
    pub clock_jumps: usize,
    /// Requests sent between routers (duplicates included).
    pub requests: u64,
    /// Requests and replies lost.
    pub lost: u64,
    /// Requests delivered twice.
    pub duplicated: u64,
    /// Queued rows a crash lost.
    pub rows_lost: u64,
    /// Simulated ms of the whole run.
    pub sim_ms: u64,
    /// Simulated ms from the final heal until everything ended.
    pub settled_after_ms: Option<u64>,
    /// Events processed.
    pub events: u64,
    /// What broke.
    pub violations: Vec<Violation>,
    /// The command that replays it.
    pub replay: String,
}

impl RoutingReport {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "pure routing seed {}: {} nodes, {} invocations ({} committed, {} unresolved)\n  \
             ended: {} completed, {} failed, {} cancelled; {} executions ({} carried on over a restart), {} reroutes\n  \
             faults: {} crashes, {} partitions, {} clock jumps; {} requests, {} lost, {} duplicated, {} queued rows lost in crashes\n  \
             {:.1} s simulated, settled {} after the final heal, {} events\n  {}\n",
            self.seed,
            self.nodes,
            self.invocations,
            self.submitted,
            self.unresolved,
            self.completed,
            self.failed,
            self.cancelled,
            self.executions,
            self.carried_on,
            self.reroutes,
            self.crashes,
            self.partitions,
            self.clock_jumps,
            self.requests,
            self.lost,
            self.duplicated,
            self.rows_lost,
            self.sim_ms as f64 / 1000.0,
            self.settled_after_ms
                .map_or("never".to_owned(), |ms| format!(
                    "{:.1} s",
                    ms as f64 / 1000.0
                )),
            self.events,
            if self.passed() { "PASS" } else { "FAIL" },
        );
        for violation in &self.violations {
            text.push_str(&format!("  {}: {}\n", violation.name, violation.detail));
        }
        if !self.passed() {
            text.push_str(&format!("  replay: {}\n", self.replay));
        }
        text
    }
}

// ---------------------------------------------------------------------
// The directory: the replicated registry as a node sees it.

/// One instance of the registry, with its owner.
#[derive(Debug, Clone)]
struct Instance {
    name: AgentName,
    owner: NodeId,
}

/// What a node's resolve reads: the registry's instances and which owners
/// it is connected to. Shared between the driver (which refreshes it) and
/// the router's [`Directory`].
#[derive(Debug, Default)]
struct View {
    node: Option<NodeId>,
    instances: Vec<Instance>,
    connected: BTreeSet<NodeId>,
}

impl View {
    /// Candidates, with owners this node cannot reach shown unreachable so
    /// reachable ones win (as the broker's `candidates` does).
    fn candidates(&self, exclude: Option<&str>) -> Vec<(Candidate, NodeId)> {
        self.instances
            .iter()
            .filter(|instance| exclude.is_none_or(|name| instance.name.to_string() != name))
            .map(|instance| {
                let is_local = self.node.as_ref() == Some(&instance.owner);
                let state = if is_local || self.connected.contains(&instance.owner) {
                    EndpointState::Idle
                } else {
                    EndpointState::Unreachable
                };
                (
                    Candidate {
                        name: instance.name.clone(),
                        is_local,
                        state,
                        active_flights: 0,
                        worktrees: false,
                    },
                    instance.owner.clone(),
                )
            })
            .collect()
    }

    fn choose(&self, target: &str, exclude: Option<&str>) -> Option<Choice> {
        let query = AgentName::parse_lenient(target).ok()?;
        let pairs = self.candidates(exclude);
        let list: Vec<Candidate> = pairs
            .iter()
            .map(|(candidate, _)| candidate.clone())
            .collect();
        let resolution = resolve::resolve(&query, &list).ok()?;
        let owner = pairs
            .into_iter()
            .find(|(candidate, _)| candidate.name == resolution.chosen)
            .map(|(_, owner)| owner)?;
        Some(Choice {
            instance: resolution.chosen.to_string(),
            reason: resolution.reason.as_str().to_owned(),
            owner,
        })
    }
}

/// The router's directory over the node's [`View`].
#[derive(Debug, Clone)]
struct RegistryDirectory(Arc<Mutex<View>>);

impl Directory for RegistryDirectory {
    fn alternative(&self, target: &str, exclude: &str) -> Option<Choice> {
        let view = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        view.choose(target, Some(exclude))
    }
}

// ---------------------------------------------------------------------
// The model store.

#[derive(Debug, Clone)]
struct DeliveryRow {
    delivery_id: String,
    invocation: Invocation,
    choice: Choice,
    state: DeliveryState,
    attempts: u32,
    /// Result messages appended to the conversation.
    results: u32,
    /// The failure reason of the final state.
    failure: Option<FailureReason>,
    /// The result message's body (the answer, for a completed delivery).
    body: String,
}

#[derive(Debug, Clone)]
struct FlightRow {
    invocation: Invocation,
    instance: String,
    state: FlightState,
    result: Option<FlightUpdate>,
    /// Output bytes recorded.
    output_bytes: u64,
}

/// Committed rows of one node, as its store would hold them.
#[derive(Debug, Clone, Default)]
struct Rows {
    deliveries: BTreeMap<String, DeliveryRow>,
    delivery_ids: BTreeMap<String, String>,
    flights: BTreeMap<String, FlightRow>,
}

/// One queued transaction.
#[derive(Debug)]
struct Pending {
    commit_at_ms: u64,
    id: PersistId,
    writes: Vec<Write>,
    /// The router waits for the commit (otherwise it was told at once).
    reported_at_commit: bool,
}

// ---------------------------------------------------------------------
// Events.

#[derive(Debug)]
enum Event {
    /// A routing request arrives.
    Request {
        from: usize,
        from_inc: u32,
        to: usize,
        to_inc: u32,
        request: RequestId,
        frame: MeshFrame,
    },
    /// An answer (or the sender's timeout) arrives at the sender.
    Response {
        to: usize,
        inc: u32,
        request: RequestId,
        answer: Result<MeshFrame, SendFailure>,
    },
    RouterTimer {
        node: usize,
        inc: u32,
        at_ms: u64,
    },
    Commit {
        node: usize,
        inc: u32,
    },
    Exec {
        node: usize,
        inc: u32,
        invocation_id: String,
        token: u64,
        progress: ExecProgress,
    },
    Sync {
        from: usize,
        to: usize,
        message: SyncMessage,
    },
    SyncTimer {
        node: usize,
        at_ms: u64,
    },
    Submit(usize),
    Cancel(usize),
    Partition(Vec<u8>),
    Heal,
    Crash(usize),
    Restart(usize),
    ClockJump {
        node: usize,
        delta_ms: i64,
    },
}

// ---------------------------------------------------------------------
// Nodes.

struct Execution {
    token: u64,
    stopped: bool,
    /// Held by a process of its own (a held turn): it outlives a crash of
    /// its broker, and what it reports while no broker listens waits in
    /// the node's backlog (the journal) for the next one to carry it on.
    held: bool,
    /// A broker listens (false from a crash until the restart re-attaches).
    attached: bool,
    /// Output reported so far: a re-attaching broker reads it again.
    emitted: String,
}

/// Share of executions that are held (one in `HELD_ONE_IN`).
const HELD_ONE_IN: u64 = 3;

struct Node {
    id: NodeId,
    router: Router,
    replica: Replica,
    view: Arc<Mutex<View>>,
    rows: Rows,
    queue: std::collections::VecDeque<Pending>,
    /// When the last queued transaction commits: the store commits in
    /// order.
    last_commit_ms: u64,
    up: bool,
    incarnation: u32,
    /// The wall clock's offset from simulated time (clock jumps).
    unix_offset_ms: i64,
    router_timer: Option<u64>,
    timer_spins: (u64, u32),
    sync_timer: Option<u64>,
    executions: BTreeMap<String, Execution>,
    /// Progress of held executions reported while no broker listened, in
    /// order.
    held_backlog: std::collections::VecDeque<(String, ExecProgress)>,
    /// Inbound request at this incarnation -> (sender, its incarnation,
    /// its request id).
    inbound: BTreeMap<RequestId, (usize, u32, RequestId)>,
    instances_seen: usize,
}

/// One workload item.
#[derive(Debug, Clone)]
struct Work {
    origin: usize,
    target: String,
    policy: DeliveryPolicy,
    cancel_after_ms: Option<u64>,
}

/// What the checker reads.
#[derive(Debug, Default)]
struct History {
    /// Invocation -> (node, incarnation) of every execution that started.
    started: BTreeMap<String, Vec<(usize, u32)>>,
    /// Invocation -> executions that completed.
    completed: BTreeMap<String, u32>,
    /// Invocation -> terminal `Delivery` events at its origin, with the
    /// incarnation.
    finals: BTreeMap<String, Vec<(DeliveryState, u32)>>,
    /// Invocation -> its origin, for committed submissions.
    origins: BTreeMap<String, usize>,
    /// Flights finished a second time in another state: (node, invocation,
    /// first, second).
    refinished: Vec<(usize, String, FlightState, FlightState)>,
    /// Invocations cancelled by the workload.
    cancelled: BTreeSet<String>,
    reroutes: usize,
    /// Invocation -> output bytes its execution produced.
    produced: BTreeMap<String, u64>,
}

struct Sim {
    seed: u64,
    broken: Option<Broken>,
    nodes: Vec<Node>,
    index: BTreeMap<NodeId, usize>,
    /// Partition group of each node (equal groups talk).
    groups: Vec<u8>,
    /// Links as the routers and replicas were last told.
    linked: BTreeSet<(usize, usize)>,
    queue: Timeline<Event>,
    now_ms: u64,
    rng: StdRng,
    latency_ms: (u64, u64),
    loss: f64,
    duplication: f64,
    work: Vec<Work>,
    next_token: u64,
    history: History,
    report: RoutingReport,
}

fn node_key(seed: u64, idx: usize) -> SigningKey {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&seeds::derive(seed, "routing-node", idx as u64).to_le_bytes());
    secret[8..16].copy_from_slice(&(idx as u64).to_le_bytes());
    SigningKey::from_bytes(&secret)
}

impl Sim {
    fn push(&mut self, at_ms: u64, event: Event) {
        self.queue.push(at_ms, event);
    }

    fn now(&self, node: usize) -> Now {
        let unix = (EPOCH_UNIX_MS + self.now_ms) as i64 + self.nodes[node].unix_offset_ms;
        Now {
            mono_ms: self.now_ms,
            unix_ms: unix.max(0) as u64,
        }
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        a == b || self.linked.contains(&(a.min(b), a.max(b)))
    }

    fn latency(&mut self) -> u64 {
        self.rng.gen_range(self.latency_ms.0..=self.latency_ms.1)
    }

    /// Brings the routers' and replicas' view of links up to date with
    /// who is up and the partition.
    fn relink(&mut self) {
        let n = self.nodes.len();
        for a in 0..n {
            for b in (a + 1)..n {
                let want = self.nodes[a].up && self.nodes[b].up && self.groups[a] == self.groups[b];
                let have = self.linked.contains(&(a, b));
                if want == have {
                    continue;
                }
                if want {
                    self.linked.insert((a, b));
                } else {
                    self.linked.remove(&(a, b));
                }
                for (x, y) in [(a, b), (b, a)] {
                    let now = self.now(x);
                    let peer = self.nodes[y].id.clone();
                    let node = &mut self.nodes[x];
                    {
                        let mut view = node.view.lock().unwrap_or_else(|e| e.into_inner());
                        if want {
                            view.connected.insert(peer.clone());
                        } else {
                            view.connected.remove(&peer);
                        }
                    }
                    if want {
                        node.router.handle_peer_up(now, peer.clone());
                        let _ = node.replica.handle_connected(now.mono_ms, peer);
                    } else {
                        node.router.handle_peer_down(&peer);
                        node.replica.handle_disconnected(&peer);
                    }
                }
                self.drain(a);
                self.drain(b);
            }
        }
    }

    /// Acts on a node's outputs (router and replica) and re-arms its
    /// timers.
    fn drain(&mut self, node: usize) {
        if !self.nodes[node].up {
            return;
        }
        while let Some(output) = self.nodes[node].router.poll_output() {
            self.act(node, output);
        }
        while let Some(output) = self.nodes[node].replica.poll_output() {
            if let sync::Output::Send { to, message } = output
                && let Some(&to) = self.index.get(&to)
                && self.linked(node, to)
            {
                let at = self.now_ms + self.latency();
                self.push(
                    at,
                    Event::Sync {
                        from: node,
                        to,
                        message,
                    },
                );
            }
        }
        let inc = self.nodes[node].incarnation;
        if let Some(at) = self.nodes[node].router.poll_timeout() {
            let at = at.max(self.now_ms);
            if self.nodes[node].router_timer.is_none_or(|armed| at < armed) {
                self.nodes[node].router_timer = Some(at);
                self.push(
                    at,
                    Event::RouterTimer {
                        node,
                        inc,
                        at_ms: at,
                    },
                );
            }
        }
        if let Some(at) = self.nodes[node].replica.poll_timeout() {
            let at = at.max(self.now_ms);
            if self.nodes[node].sync_timer.is_none_or(|armed| at < armed) {
                self.nodes[node].sync_timer = Some(at);
                self.push(at, Event::SyncTimer { node, at_ms: at });
            }
        }
    }

    fn act(&mut self, node: usize, output: Output) {
        let inc = self.nodes[node].incarnation;
        match output {
            Output::Persist {
                id,
                writes,
                wait_for_disk,
            } => {
                let disk = self.rng.gen_range(0..=DISK_MS_MAX);
                let at = self.nodes[node].last_commit_ms.max(self.now_ms + disk);
                self.nodes[node].last_commit_ms = at;
                self.nodes[node].queue.push_back(Pending {
                    commit_at_ms: at,
                    id,
                    writes,
                    reported_at_commit: wait_for_disk,
                });
                self.push(at, Event::Commit { node, inc });
                if !wait_for_disk {
                    // Queued in order and reported at once, by the policy.
                    let now = self.now(node);
                    self.nodes[node].router.handle_persisted(now, id, Ok(()));
                }
            }
            Output::Send { request, to, frame } => {
                let Some(&to) = self.index.get(&to) else {
                    return;
                };
                self.report.requests += 1;
                let to_inc = self.nodes[to].incarnation;
                if to == node {
                    // A local delivery: in process, never lost.
                    self.push(
                        self.now_ms,
                        Event::Request {
                            from: node,
                            from_inc: inc,
                            to,
                            to_inc,
                            request,
                            frame,
                        },
                    );
                    return;
                }
                if !self.linked(node, to) {
                    let at = self.now_ms + 1;
                    self.push(
                        at,
                        Event::Response {
                            to: node,
                            inc,
                            request,
                            answer: Err(SendFailure {
                                detail: "not connected".into(),
                            }),
                        },
                    );
                    return;
                }
                let timeout_at = self.now_ms + REQUEST_TIMEOUT_MS;
                self.push(
                    timeout_at,
                    Event::Response {
                        to: node,
                        inc,
                        request,
                        answer: Err(SendFailure {
                            detail: "the request timed out".into(),
                        }),
                    },
                );
                let copies = if self.rng.gen_bool(self.duplication) {
                    self.report.duplicated += 1;
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    if self.rng.gen_bool(self.loss) {
                        self.report.lost += 1;
                        continue;
                    }
                    let at = self.now_ms + self.latency();
                    self.push(
                        at,
                        Event::Request {
                            from: node,
                            from_inc: inc,
                            to,
                            to_inc,
                            request,
                            frame: frame.clone(),
                        },
                    );
                }
            }
            Output::Reply { request, frame } => {
                let Some((to, to_inc, their)) = self.nodes[node].inbound.remove(&request) else {
                    return;
                };
                if to != node && self.rng.gen_bool(self.loss) {
                    self.report.lost += 1;
                    return;
                }
                let at = if to == node {
                    self.now_ms
                } else {
                    self.now_ms + self.latency()
                };
                // A reply travels back on the request's connection: checked
                // at arrival.
                self.push(
                    at,
                    Event::Response {
                        to,
                        inc: to_inc,
                        request: their,
                        answer: Ok(frame),
                    },
                );
            }
            Output::Execute(execute) if execute.resume => {
                self.resume_execution(node, &execute.invocation_id);
            }
            Output::Execute(execute) => {
                let token = self.next_token;
                self.next_token += 1;
                let id = execute.invocation_id;
                // Drawn from its own stream, so the main draws (and every
                // seed's schedule) stay as they were.
                let held =
                    seeds::derive(self.seed, "routing-held", token).is_multiple_of(HELD_ONE_IN);
                self.nodes[node].executions.insert(
                    id.clone(),
                    Execution {
                        token,
                        stopped: false,
                        held,
                        attached: true,
                        emitted: String::new(),
                    },
                );
                let mut at = self.now_ms + self.rng.gen_range(1..=10);
                if self.rng.gen_bool(0.2) {
                    self.push(at, self.exec(node, &id, token, ExecProgress::Waking));
                    at += self.rng.gen_range(1..=20);
                }
                self.push(at, self.exec(node, &id, token, ExecProgress::Started));
                if self.rng.gen_bool(0.3) {
                    at += self.rng.gen_range(1..=40);
                    let text = format!("partial {id}");
                    *self.history.produced.entry(id.clone()).or_default() += text.len() as u64;
                    let chunk = ExecProgress::Output(text);
                    self.push(at, self.exec(node, &id, token, chunk));
                }
                at += self.rng.gen_range(5..=150);
                let result = {
                    // Usage and a code ride along with every end, so the swarm
                    // carries them through queries, restarts and duplicates
                    // like the rest of the result (no draw: a seed replays as
                    // it did before they existed).
                    let usage = Some(scout_mesh::usage::Usage {
                        input_tokens: id.len() as u64,
                        output_tokens: 1,
                        cached_tokens: 0,
                        cost_micro_usd: Some(1),
                    });
                    if self.rng.gen_bool(0.08) {
                        ExecResult::Failed {
                            reason: FailureReason::HarnessError,
                            code: scout_mesh::usage::FailureCode::parse("HARNESS_ERROR").ok(),
                            detail: "the agent failed".into(),
                            usage,
                        }
                    } else {
                        ExecResult::Completed {
                            response: format!("answer {id}"),
                            usage,
                        }
                    }
                };
                self.push(
                    at,
                    self.exec(node, &id, token, ExecProgress::Finished(result)),
                );
            }
            Output::StopExecution { invocation_id } => {
                let Some(execution) = self.nodes[node].executions.get_mut(&invocation_id) else {
                    return;
                };
                if execution.stopped {
                    return;
                }
                execution.stopped = true;
                let token = execution.token;
                let at = self.now_ms + 1;
                let event = self.exec(
                    node,
                    &invocation_id,
                    token,
                    ExecProgress::Finished(ExecResult::Cancelled),
                );
                self.push(at, event);
            }
            Output::Emit(event) => {
                if let EventKind::Delivery(state) = event.kind
                    && state.is_terminal()
                {
                    self.history
                        .finals
                        .entry(event.invocation_id)
                        .or_default()
                        .push((state, inc));
                }
            }
            Output::Refused { .. } => {}
        }
    }

    /// Hands an execution's progress to the node's router (the execution
    /// is known, and a broker listens).
    fn exec_progress(&mut self, node: usize, invocation_id: String, progress: ExecProgress) {
        let inc = self.nodes[node].incarnation;
        let n = &mut self.nodes[node];
        let Some(execution) = n.executions.get_mut(&invocation_id) else {
            return;
        };
        let stopped = execution.stopped;
        let finished = matches!(progress, ExecProgress::Finished(_));
        if stopped && !matches!(progress, ExecProgress::Finished(ExecResult::Cancelled)) {
            return;
        }
        if let ExecProgress::Output(text) = &progress {
            execution.emitted.push_str(text);
        }
        if finished {
            n.executions.remove(&invocation_id);
        }
        match &progress {
            ExecProgress::Started => self
                .history
                .started
                .entry(invocation_id.clone())
                .or_default()
                .push((node, inc)),
            ExecProgress::Finished(ExecResult::Completed { .. }) => {
                *self
                    .history
                    .completed
                    .entry(invocation_id.clone())
                    .or_default() += 1;
            }
            _ => {}
        }
        let now = self.now(node);
        self.nodes[node]
            .router
            .handle_exec(now, &invocation_id, progress);
        self.drain(node);
    }

    /// A restarted node's router carries on a held execution: it reads
    /// the execution's output again from the start, then what the
    /// execution reported while no broker listened, in order.
    fn resume_execution(&mut self, node: usize, invocation_id: &str) {
        let n = &mut self.nodes[node];
        let Some(execution) = n.executions.get_mut(invocation_id) else {
            // Nothing outlived the crash: the execution is gone.
            let now = self.now(node);
            self.nodes[node].router.handle_exec(
                now,
                invocation_id,
                ExecProgress::Finished(ExecResult::Failed {
                    reason: FailureReason::HarnessError,
                    code: None,
                    detail: "holder lost".into(),
                    usage: None,
                }),
            );
            self.drain(node);
            return;
        };
        execution.attached = true;
        self.report.carried_on += 1;
        let replay = std::mem::take(&mut execution.emitted);
        let backlog: Vec<(String, ExecProgress)> = {
            let (mine, others): (Vec<_>, Vec<_>) = n
                .held_backlog
                .drain(..)
                .partition(|(id, _)| id == invocation_id);
            n.held_backlog.extend(others);
            mine
        };
        if !replay.is_empty() {
            self.exec_progress(node, invocation_id.to_owned(), ExecProgress::Output(replay));
        }
        for (id, progress) in backlog {
            self.exec_progress(node, id, progress);
        }
    }

    fn exec(&self, node: usize, id: &str, token: u64, progress: ExecProgress) -> Event {
        Event::Exec {
            node,
            inc: self.nodes[node].incarnation,
            invocation_id: id.to_owned(),
            token,
            progress,
        }
    }

    /// What the driver reads from the store for a request.
    fn facts(&self, node: usize, frame: &MeshFrame) -> Facts {
        let router = &self.nodes[node].router;
        let needs = router.needs_stored(frame);
        let id = match frame {
            MeshFrame::Invoke(invoke) => invoke.invocation_id.as_str(),
            MeshFrame::FlightQuery { invocation_id } | MeshFrame::Cancel { invocation_id } => {
                invocation_id.as_str()
            }
            MeshFrame::FlightUpdate(update) => update.invocation_id.as_str(),
            _ => "",
        };
        let rows = &self.nodes[node].rows;
        let mut facts = Facts::default();
        if needs.flight
            && self.broken != Some(Broken::NoDuplicateGuard)
            && let Some(row) = rows.flights.get(id)
        {
            facts.flight = Some(StoredFlight {
                origin: row.invocation.origin.clone(),
                update: row.result.clone().unwrap_or(FlightUpdate {
                    invocation_id: id.to_owned(),
                    state: row.state,
                    output: FlightOutput::new(),
                    failure_reason: None,
                    detail: None,
                    failure_code: None,
                    usage: None,
                }),
            });
        }
        if needs.delivery_owners
            && let Some(row) = rows.deliveries.get(id)
        {
            facts.delivery_owners.push(row.choice.owner.clone());
        }
        facts
    }

    /// Commits the node's queued transactions whose time came, in order.
    fn commit(&mut self, node: usize) {
        loop {
            let due = self.nodes[node]
                .queue
                .front()
                .is_some_and(|pending| pending.commit_at_ms <= self.now_ms);
            if !due {
                return;
            }
            let Some(pending) = self.nodes[node].queue.pop_front() else {
                return;
            };
            let result = self.apply(node, pending.writes);
            if pending.reported_at_commit {
                let now = self.now(node);
                self.nodes[node]
                    .router
                    .handle_persisted(now, pending.id, result);
                self.drain(node);
            }
        }
    }

    /// Applies one transaction to the node's rows.
    fn apply(&mut self, node: usize, writes: Vec<Write>) -> Result<(), PersistFailure> {
        let broken = self.broken;
        // The only write that can fail is an accept of an id the store
        // holds: the transaction then changes nothing.
        for write in &writes {
            if let Write::AcceptFlight { invocation, .. } = write
                && broken != Some(Broken::NoDuplicateGuard)
                && let Some(row) = self.nodes[node].rows.flights.get(&invocation.invocation_id)
            {
                return Err(PersistFailure::Duplicate {
                    state: row.state,
                    origin: row.invocation.origin.clone(),
                });
            }
        }
        for write in writes {
            let rows = &mut self.nodes[node].rows;
            match write {
                Write::Submit {
                    invocation,
                    delivery_id,
                    choice,
                    ..
                } => {
                    let id = invocation.invocation_id.clone();
                    rows.delivery_ids.insert(delivery_id.clone(), id.clone());
                    self.history.origins.insert(id.clone(), node);
                    rows.deliveries.insert(
                        id,
                        DeliveryRow {
                            delivery_id,
                            invocation,
                            choice,
                            state: DeliveryState::Accepted,
                            attempts: 0,
                            results: 0,
                            failure: None,
                            body: String::new(),
                        },
                    );
                }
                Write::Attempt { delivery_id, .. } => {
                    if let Some(row) = delivery_row(rows, &delivery_id) {
                        row.attempts += 1;
                    }
                }
                Write::DeliveryState {
                    delivery_id,
                    state,
                    failure,
                    ..
                } => {
                    if let Some(row) = delivery_row(rows, &delivery_id)
                        && row.state.can_transition_to(state)
                    {
                        row.state = state;
                        row.failure = failure.map(|(reason, _)| reason);
                    }
                }
                Write::Reroute {
                    delivery_id,
                    choice,
                    ..
                } => {
                    if let Some(row) = delivery_row(rows, &delivery_id)
                        && !row.state.is_terminal()
                    {
                        row.choice = choice;
                        row.state = DeliveryState::Accepted;
                        self.history.reroutes += 1;
                    }
                }
                Write::FinishDelivery {
                    delivery_id,
                    state,
                    failure,
                    body,
                    ..
                } => {
                    if let Some(row) = delivery_row(rows, &delivery_id) {
                        if !row.state.is_terminal() {
                            row.state = state;
                            row.failure = failure.map(|(reason, _)| reason);
                        }
                        row.results += 1;
                        row.body = body;
                    }
                }
                Write::AcceptFlight {
                    invocation,
                    instance,
                    ..
                } => {
                    let id = invocation.invocation_id.clone();
                    rows.flights.insert(
                        id,
                        FlightRow {
                            invocation,
                            instance,
                            state: FlightState::Queued,
                            result: None,
                            output_bytes: 0,
                        },
                    );
                }
                Write::FlightState {
                    invocation_id,
                    state,
                    ..
                } => {
                    if let Some(row) = rows.flights.get_mut(&invocation_id)
                        && row.state.can_transition_to(state)
                    {
                        row.state = state;
                    }
                }
                Write::FlightOutput {
                    invocation_id,
                    chunk,
                    ..
                } => {
                    if let Some(row) = rows.flights.get_mut(&invocation_id) {
                        row.output_bytes += chunk.len() as u64;
                    }
                }
                Write::FinishFlight {
                    invocation_id,
                    state,
                    failure,
                    code,
                    usage,
                    result,
                    ..
                } => {
                    let Some(row) = rows.flights.get_mut(&invocation_id) else {
                        continue;
                    };
                    if row.state.is_terminal() {
                        if row.state != state {
                            let id = row.invocation.invocation_id.clone();
                            let first = row.state;
                            self.history.refinished.push((node, id, first, state));
                        }
                        continue;
                    }
                    row.state = state;
                    row.result = Some(FlightUpdate {
                        invocation_id: row.invocation.invocation_id.clone(),
                        state,
                        output: result,
                        failure_reason: failure.as_ref().map(|(reason, _)| *reason),
                        detail: failure.map(|(_, detail)| detail),
                        failure_code: code,
                        usage,
                    });
                }
            }
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Request {
                from,
                from_inc,
                to,
                to_inc,
                request,
                frame,
            } => {
                if !self.nodes[to].up
                    || self.nodes[to].incarnation != to_inc
                    || self.nodes[from].incarnation != from_inc
                    || !self.linked(from, to)
                {
                    return;
                }
                let facts = self.facts(to, &frame);
                let now = self.now(to);
                let sender = self.nodes[from].id.clone();
                let inbound = self.nodes[to]
                    .router
                    .handle_request(now, sender, frame, facts);
                self.nodes[to]
                    .inbound
                    .insert(inbound, (from, from_inc, request));
                self.drain(to);
            }
            Event::Response {
                to,
                inc,
                request,
                answer,
            } => {
                if !self.nodes[to].up || self.nodes[to].incarnation != inc {
                    return;
                }
                let now = self.now(to);
                self.nodes[to].router.handle_response(now, request, answer);
                self.drain(to);
            }
            Event::RouterTimer { node, inc, at_ms } => {
                let n = &mut self.nodes[node];
                if !n.up || n.incarnation != inc || n.router_timer != Some(at_ms) {
                    return;
                }
                n.router_timer = None;
                if n.timer_spins.0 == self.now_ms {
                    n.timer_spins.1 += 1;
                } else {
                    n.timer_spins = (self.now_ms, 0);
                }
                if n.timer_spins.1 > TIMER_SPINS_MAX {
                    // Asked again and again for this instant: try later.
                    n.router_timer = Some(self.now_ms + 1);
                    self.push(
                        self.now_ms + 1,
                        Event::RouterTimer {
                            node,
                            inc,
                            at_ms: self.now_ms + 1,
                        },
                    );
                    return;
                }
                let now = self.now(node);
                self.nodes[node].router.handle_timeout(now);
                self.drain(node);
            }
            Event::Commit { node, inc } => {
                if self.nodes[node].up && self.nodes[node].incarnation == inc {
                    self.commit(node);
                }
            }
            Event::Exec {
                node,
                inc,
                invocation_id,
                token,
                progress,
            } => {
                let n = &mut self.nodes[node];
                let Some(execution) = n.executions.get(&invocation_id) else {
                    return;
                };
                if execution.token != token {
                    return;
                }
                if execution.held && !(n.up && execution.attached) {
                    n.held_backlog.push_back((invocation_id, progress));
                    return;
                }
                if !execution.held && (!n.up || n.incarnation != inc) {
                    return;
                }
                self.exec_progress(node, invocation_id, progress);
            }
            Event::Sync { from, to, message } => {
                if !self.linked(from, to) || !self.nodes[to].up {
                    return;
                }
                let sender = self.nodes[from].id.clone();
                self.nodes[to]
                    .replica
                    .handle_message(self.now_ms, sender, message);
                self.refresh_view(to);
                self.drain(to);
            }
            Event::SyncTimer { node, at_ms } => {
                if self.nodes[node].sync_timer != Some(at_ms) {
                    return;
                }
                self.nodes[node].sync_timer = None;
                if !self.nodes[node].up {
                    return;
                }
                self.nodes[node].replica.handle_timeout(self.now_ms);
                self.drain(node);
            }
            Event::Submit(idx) => self.submit(idx),
            Event::Cancel(idx) => {
                let work = self.work[idx].clone();
                let id = invocation_id(idx);
                if !self.nodes[work.origin].up {
                    return;
                }
                self.history.cancelled.insert(id.clone());
                let now = self.now(work.origin);
                self.nodes[work.origin].router.handle_cancel(now, &id);
                self.drain(work.origin);
            }
            Event::Partition(groups) => {
                self.groups = groups;
                self.report.partitions += 1;
                self.relink();
            }
            Event::Heal => {
                self.groups = vec![0; self.nodes.len()];
                self.relink();
            }
            Event::Crash(node) => self.crash(node),
            Event::Restart(node) => self.restart(node),
            Event::ClockJump { node, delta_ms } => {
                self.nodes[node].unix_offset_ms += delta_ms;
                self.report.clock_jumps += 1;
            }
        }
    }

    fn refresh_view(&mut self, node: usize) {
        let count = self.nodes[node].replica.registry().instances().len();
        if count == self.nodes[node].instances_seen {
            return;
        }
        self.nodes[node].instances_seen = count;
        let instances: Vec<Instance> = self.nodes[node]
            .replica
            .registry()
            .instances()
            .into_iter()
            .map(|entry| Instance {
                name: entry.name.clone(),
                owner: entry.origin.clone(),
            })
            .collect();
        let mut view = self.nodes[node]
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        view.instances = instances;
    }

    fn submit(&mut self, idx: usize) {
        let mut work = self.work[idx].clone();
        if !self.nodes[work.origin].up {
            // The workload goes to a node that is up.
            let Some(up) = (0..self.nodes.len()).find(|&n| self.nodes[n].up) else {
                self.report.unresolved += 1;
                return;
            };
            work.origin = up;
            self.work[idx].origin = up;
        }
        let origin = work.origin;
        let choice = {
            let view = self.nodes[origin]
                .view
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            view.choose(&work.target, None)
        };
        let Some(choice) = choice else {
            self.report.unresolved += 1;
            return;
        };
        let now = self.now(origin);
        let id = invocation_id(idx);
        let logical = !work.target.contains('#');
        let submission = Submission {
            invocation: Invocation {
                invocation_id: id.clone(),
                action: InvocationAction::Consult,
                body: format!("prompt {id}"),
                conversation_id: Some(format!("c{idx}")),
                origin: self.nodes[origin].id.clone(),
                target: work.target.clone(),
                deadline_unix_ms: Some(now.unix_ms + DEADLINE_MS),
                policy: work.policy,
                created_unix_ms: now.unix_ms,
                from: None,
                chain: Vec::new(),
            },
            delivery_id: format!("{id}-d"),
            choice,
            logical,
            author: "operator".into(),
        };
        self.nodes[origin].router.handle_submit(now, submission);
        self.drain(origin);
        if let Some(after) = work.cancel_after_ms {
            self.push(self.now_ms + after, Event::Cancel(idx));
        }
    }

    fn crash(&mut self, node: usize) {
        if !self.nodes[node].up {
            return;
        }
        self.report.crashes += 1;
        // Queued transactions whose commit time came are on disk; the rest
        // (a suffix, since the store commits in order) are lost.
        self.commit(node);
        let lost = self.nodes[node].queue.len() as u64;
        self.report.rows_lost += lost;
        let n = &mut self.nodes[node];
        n.queue.clear();
        n.last_commit_ms = 0;
        n.up = false;
        // Held executions outlive the crash; the others die with it.
        n.executions.retain(|_, execution| execution.held);
        for execution in n.executions.values_mut() {
            execution.attached = false;
        }
        n.inbound.clear();
        n.router_timer = None;
        self.relink();
    }

    fn restart(&mut self, node: usize) {
        if self.nodes[node].up {
            return;
        }
        let now = self.now(node);
        let held: BTreeSet<String> = self.nodes[node].executions.keys().cloned().collect();
        reconcile(&mut self.nodes[node].rows, &held);
        let rows = &self.nodes[node].rows;
        let deliveries: Vec<RestoredDelivery> = rows
            .deliveries
            .values()
            .filter(|row| !row.state.is_terminal())
            .map(|row| RestoredDelivery {
                delivery_id: row.delivery_id.clone(),
                invocation: row.invocation.clone(),
                choice: row.choice.clone(),
                state: row.state,
                attempts: row.attempts,
            })
            .collect();
        let flights: Vec<RestoredFlight> = rows
            .flights
            .iter()
            .filter(|(_, row)| {
                matches!(
                    row.state,
                    FlightState::Queued | FlightState::Running | FlightState::Waiting
                )
            })
            .map(|(_, row)| RestoredFlight {
                invocation: row.invocation.clone(),
                instance: row.instance.clone(),
                // Still running after reconcile: its execution is held.
                resume: (row.state != FlightState::Queued).then_some(Resumed {
                    output_bytes: row.output_bytes,
                }),
            })
            .collect();
        let n = &mut self.nodes[node];
        n.incarnation += 1;
        n.up = true;
        let directory = RegistryDirectory(n.view.clone());
        let router_seed = seeds::derive(self.seed, "routing-router", node as u64)
            ^ u64::from(n.incarnation).rotate_left(32);
        n.router = Router::restore(
            n.id.clone(),
            Box::new(directory),
            router_seed,
            now,
            deliveries,
            flights,
        );
        self.relink();
        self.drain(node);
    }

    /// Whether every router, execution and store queue is idle.
    fn quiet(&self) -> bool {
        self.nodes.iter().all(|node| {
            node.up
                && node.router.deliveries_in_progress() == 0
                && node.router.flights_in_progress() == 0
                && node.executions.is_empty()
                && node.queue.is_empty()
        })
    }

    fn run_until(&mut self, until_ms: u64) {
        while let Some((at, event)) = self.queue.pop_until(until_ms) {
            self.now_ms = self.now_ms.max(at);
            self.report.events += 1;
            self.handle(event);
        }
        self.now_ms = self.now_ms.max(until_ms);
    }
}

impl Sim {
    /// Fills the report's tallies from the history and the final rows.
    fn tally(&mut self) {
        self.report.submitted = self.history.origins.len();
        self.report.executions = self.history.started.values().map(Vec::len).sum();
        self.report.reroutes = self.history.reroutes;
        for (id, &origin) in &self.history.origins {
            match self.nodes[origin]
                .rows
                .deliveries
                .get(id)
                .map(|row| row.state)
            {
                Some(DeliveryState::Completed) => self.report.completed += 1,
                Some(DeliveryState::Failed) => self.report.failed += 1,
                Some(DeliveryState::Cancelled) => self.report.cancelled += 1,
                _ => {}
            }
        }
    }
}

fn delivery_row<'a>(rows: &'a mut Rows, delivery_id: &str) -> Option<&'a mut DeliveryRow> {
    let id = rows.delivery_ids.get(delivery_id)?;
    rows.deliveries.get_mut(id)
}

/// The store's reconcile at start: a flight the agent may have seen
/// (running, waiting) fails as interrupted and is never run again; one
/// that was only waking goes back to the queue; an unfinished local
/// delivery of a failed flight fails with it.
/// The store's restart rule (`src/store/reconcile.rs`): a running flight
/// fails as interrupted unless its execution is `held` (outlived the
/// crash), and a waking one goes back to the queue.
fn reconcile(rows: &mut Rows, held: &BTreeSet<String>) {
    for (id, row) in rows.flights.iter_mut() {
        match row.state {
            FlightState::Running | FlightState::Waiting if held.contains(id) => {}
            FlightState::Running | FlightState::Waiting => {
                row.state = FlightState::Failed;
                row.result = Some(FlightUpdate {
                    invocation_id: id.clone(),
                    state: FlightState::Failed,
                    output: FlightOutput::new(),
                    failure_reason: Some(FailureReason::HarnessError),
                    detail: Some("interrupted by a restart".into()),
                    failure_code: None,
                    usage: None,
                });
            }
            FlightState::Waking => row.state = FlightState::Queued,
            _ => {}
        }
    }
    for (id, row) in rows.deliveries.iter_mut() {
        if let Some(flight) = rows.flights.get(id)
            && flight.state == FlightState::Failed
            && !row.state.is_terminal()
            && row.state.can_transition_to(DeliveryState::Failed)
        {
            row.state = DeliveryState::Failed;
            row.failure = Some(FailureReason::HarnessError);
        }
    }
}

fn invocation_id(idx: usize) -> String {
    format!("i{idx}")
}

/// Runs one schedule and checks it.
pub fn run(options: &RoutingOptions) -> RoutingReport {
    let n_nodes = options.nodes.clamp(ROUTING_NODES_MIN, ROUTING_NODES_MAX);
    let seed = options.seed;
    let mut nodes = Vec::with_capacity(n_nodes);
    let mut ids = Vec::with_capacity(n_nodes);
    for idx in 0..n_nodes {
        ids.push(NodeId::of_public_key(
            &node_key(seed, idx).verifying_key().to_bytes(),
        ));
    }
    for (idx, id) in ids.iter().enumerate() {
        let name = Label::parse(&format!("p{idx}"), NamePart::Node).expect("a valid label");
        let identity = ReplicaIdentity {
            signing_key: node_key(seed, idx),
            node_name: name,
            founder: ids[0].clone(),
        };
        let config = SyncConfig {
            seed: seeds::derive(seed, "routing-sync", idx as u64),
            ..SyncConfig::default()
        };
        let view = Arc::new(Mutex::new(View {
            node: Some(id.clone()),
            ..View::default()
        }));
        let router = Router::new(
            id.clone(),
            Box::new(RegistryDirectory(view.clone())),
            seeds::derive(seed, "routing-router", idx as u64),
        );
        nodes.push(Node {
            id: id.clone(),
            router,
            replica: Replica::new(identity, config),
            view,
            rows: Rows::default(),
            queue: std::collections::VecDeque::new(),
            last_commit_ms: 0,
            up: true,
            incarnation: 0,
            unix_offset_ms: 0,
            router_timer: None,
            timer_spins: (0, 0),
            sync_timer: None,
            executions: BTreeMap::new(),
            held_backlog: std::collections::VecDeque::new(),
            inbound: BTreeMap::new(),
            instances_seen: 0,
        });
    }
    let mut rng = seeds::rng(seed, "routing-schedule", 0);
    let latency_max = rng.gen_range(5..=80);
    let loss = rng.gen_range(0.0..0.05);
    let duplication = rng.gen_range(0.0..0.03);
    let mut sim = Sim {
        seed,
        broken: options.broken,
        index: ids
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect(),
        nodes,
        groups: vec![0; n_nodes],
        linked: BTreeSet::new(),
        queue: Timeline::default(),
        now_ms: 0,
        rng: seeds::rng(seed, "routing-net", 0),
        latency_ms: (1, latency_max),
        loss,
        duplication,
        work: Vec::new(),
        next_token: 1,
        history: History::default(),
        report: RoutingReport {
            seed,
            nodes: n_nodes,
            invocations: options.invocations,
            submitted: 0,
            unresolved: 0,
            completed: 0,
            failed: 0,
            cancelled: 0,
            executions: 0,
            reroutes: 0,
            crashes: 0,
            carried_on: 0,
            partitions: 0,
            clock_jumps: 0,
            requests: 0,
            lost: 0,
            duplicated: 0,
            rows_lost: 0,
            sim_ms: 0,
            settled_after_ms: None,
            events: 0,
            violations: Vec::new(),
            replay: RoutingOptions {
                nodes: n_nodes,
                ..options.clone()
            }
            .replay(),
        },
    };
    // Every node publishes its agent, then the mesh forms.
    for idx in 0..n_nodes {
        let name = format!("@{}@p{idx}#main", DEFINITIONS[idx % DEFINITIONS.len()]);
        let body = RecordBody::Instance(InstanceBody {
            harness: Harness::Command,
            workspace: "main".to_owned(),
            cwd: format!("/srv/p{idx}"),
            endpoint_state: EndpointState::Idle,
            active_flights: 0,
            worktrees: false,
        });
        if let Err(err) = sim.nodes[idx].replica.put(0, &name, body) {
            tracing::error!(%name, cause = %err, "pure routing publish refused");
        }
        sim.refresh_view(idx);
    }
    sim.relink();
    for idx in 0..n_nodes {
        sim.drain(idx);
    }

    // The workload.
    let window_ms = (options.invocations as u64 * SUBMIT_SPACING_MS).max(10_000);
    let start = WARMUP_MS;
    let end = start + window_ms;
    let mut work_rng = seeds::rng(seed, "routing-work", 0);
    for idx in 0..options.invocations {
        let origin = work_rng.gen_range(0..n_nodes);
        let definition = DEFINITIONS[work_rng.gen_range(0..DEFINITIONS.len())];
        let target = if work_rng.gen_bool(0.5) {
            format!("@{definition}")
        } else {
            let owner = work_rng.gen_range(0..n_nodes);
            format!("@{}@p{owner}#main", DEFINITIONS[owner % DEFINITIONS.len()])
        };
        let policy = if work_rng.gen_bool(0.5) {
            DeliveryPolicy::Durable
        } else {
            DeliveryPolicy::MustAck
        };
        let cancel_after_ms = work_rng.gen_bool(0.02).then(|| work_rng.gen_range(0..300));
        sim.work.push(Work {
            origin,
            target,
            policy,
            cancel_after_ms,
        });
        let at = work_rng.gen_range(start..end);
        sim.push(at, Event::Submit(idx));
    }

    // The faults.
    let mut fault_rng = seeds::rng(seed, "routing-faults", 0);
    for _ in 0..fault_rng.gen_range(1..=5) {
        let at = fault_rng.gen_range(start..end);
        let groups: Vec<u8> = (0..n_nodes).map(|_| fault_rng.gen_range(0..2)).collect();
        sim.push(at, Event::Partition(groups));
        let heal = at + fault_rng.gen_range(500..=10_000);
        sim.push(heal.min(end), Event::Heal);
    }
    for _ in 0..fault_rng.gen_range(1..=4) {
        let node = fault_rng.gen_range(0..n_nodes);
        let at = fault_rng.gen_range(start..end);
        sim.push(at, Event::Crash(node));
        sim.push(at + fault_rng.gen_range(200..=6_000), Event::Restart(node));
    }
    for _ in 0..fault_rng.gen_range(0..=3) {
        let node = fault_rng.gen_range(0..n_nodes);
        let at = fault_rng.gen_range(start..end);
        let delta_ms = fault_rng.gen_range(-120_000..=120_000);
        sim.push(at, Event::ClockJump { node, delta_ms });
    }

    // Run the workload, then heal everything and wait for quiet.
    sim.run_until(end);
    let heal_at = end + 6_001;
    sim.run_until(heal_at);
    for node in 0..n_nodes {
        sim.restart(node);
    }
    sim.groups = vec![0; n_nodes];
    sim.relink();
    let mut settled = None;
    while sim.now_ms < heal_at + QUIET_MAX_MS {
        let next = sim.now_ms + QUIET_POLL_MS;
        sim.run_until(next);
        if sim.quiet() {
            settled = Some(sim.now_ms - heal_at);
            break;
        }
    }
    sim.report.settled_after_ms = settled;
    sim.report.sim_ms = sim.now_ms;
    sim.tally();
    let violations = check(&sim);
    sim.report.violations = violations;
    sim.report
}

/// The invariants, over the history and the final rows.
///
/// 1. An invocation's execution starts at most once in the whole mesh, and
///    completes at most once; at most one owner commits it.
/// 2. After the final heal everything settles: every delivery committed at
///    its origin ends (a terminal row), and every flight an owner committed
///    ends.
/// 3. The origin emits at most one terminal `Delivery` event per invocation,
///    across its restarts, and appends at most one result message.
/// 4. A flight is never finished in two different states.
/// 5. The origin's final state agrees with the owner's: a completed
///    delivery has a completed flight with the same answer; a completed
///    flight's delivery is completed, unless the workload cancelled the
///    invocation (a cancel that could not reach the owner ends the
///    delivery at the origin alone). No delivery fails by its deadline
///    (it is far beyond the run).
/// 6. A completed flight recorded its execution's output once: all of it,
///    and nothing twice (an execution carried on over a restart reports
///    its output again from the start).
fn check(sim: &Sim) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut add = |name: &str, detail: String| {
        if violations.len() < 20 {
            violations.push(Violation {
                name: name.to_owned(),
                detail,
            });
        }
    };
    for (id, starts) in &sim.history.started {
        if starts.len() > 1 {
            add(
                "executed_at_most_once",
                format!(
                    "{id} started {} times (node, incarnation): {starts:?}",
                    starts.len()
                ),
            );
        }
    }
    for (id, count) in &sim.history.completed {
        if *count > 1 {
            add(
                "completed_at_most_once",
                format!("{id} completed {count} times"),
            );
        }
    }
    for (idx, node) in sim.nodes.iter().enumerate() {
        for (id, row) in &node.rows.flights {
            let produced = sim.history.produced.get(id).copied().unwrap_or(0);
            if row.state == FlightState::Completed && row.output_bytes != produced {
                add(
                    "output_recorded_once",
                    format!(
                        "p{idx} recorded {} output bytes of {id}, whose execution produced {produced}",
                        row.output_bytes
                    ),
                );
            }
        }
    }
    if sim.report.settled_after_ms.is_none() {
        let stuck: Vec<String> = sim
            .nodes
            .iter()
            .enumerate()
            .map(|(idx, node)| {
                format!(
                    "p{idx}: {} deliveries, {} flights, {} executions",
                    node.router.deliveries_in_progress(),
                    node.router.flights_in_progress(),
                    node.executions.len()
                )
            })
            .collect();
        add(
            "settles_after_heal",
            format!(
                "still busy {} s after the final heal: {}",
                QUIET_MAX_MS / 1000,
                stuck.join("; ")
            ),
        );
    }
    for (node, id, first, second) in &sim.history.refinished {
        add(
            "flight_finished_once",
            format!("p{node}: {id} finished {first} then {second}"),
        );
    }
    // Owners per invocation, from the final rows.
    let mut owners: BTreeMap<&str, Vec<(usize, &FlightRow)>> = BTreeMap::new();
    for (idx, node) in sim.nodes.iter().enumerate() {
        for (id, row) in &node.rows.flights {
            owners.entry(id.as_str()).or_default().push((idx, row));
            if !row.state.is_terminal() {
                add(
                    "flight_ends",
                    format!("p{idx}: {id} still {} after the final heal", row.state),
                );
            }
        }
    }
    for (id, held) in &owners {
        if held.len() > 1 {
            let at: Vec<String> = held.iter().map(|(idx, _)| format!("p{idx}")).collect();
            add("one_owner", format!("{id} accepted by {}", at.join(", ")));
        }
    }
    for (id, events) in &sim.history.finals {
        if events.len() > 1 {
            add(
                "one_final_event",
                format!("{id}: terminal delivery events {events:?}"),
            );
        }
    }
    for (id, &origin) in &sim.history.origins {
        let Some(row) = sim.nodes[origin].rows.deliveries.get(id) else {
            continue;
        };
        if row.results > 1 {
            add(
                "one_result_message",
                format!("{id}: {} result messages at p{origin}", row.results),
            );
        }
        if !row.state.is_terminal() {
            add(
                "delivery_ends",
                format!("p{origin}: {id} still {} after the final heal", row.state),
            );
            continue;
        }
        if row.failure == Some(FailureReason::Timeout) {
            add(
                "no_deadline_reached",
                format!("p{origin}: {id} failed by its deadline"),
            );
        }
        let flight = owners.get(id.as_str()).and_then(|held| held.first());
        match (row.state, flight) {
            (DeliveryState::Completed, Some((owner, flight))) => {
                let answer = flight.result.as_ref().map(|r| r.output.as_str());
                if flight.state != FlightState::Completed || answer != Some(row.body.as_str()) {
                    add(
                        "origin_agrees_with_owner",
                        format!(
                            "{id}: completed at p{origin} with {:?}, flight at p{owner} {} with {answer:?}",
                            row.body, flight.state
                        ),
                    );
                }
            }
            (DeliveryState::Completed, None) => add(
                "origin_agrees_with_owner",
                format!("{id}: completed at p{origin} but no owner holds a flight"),
            ),
            (state, Some((owner, flight)))
                if flight.state == FlightState::Completed
                    && !sim.history.cancelled.contains(id) =>
            {
                add(
                    "origin_agrees_with_owner",
                    format!(
                        "{id}: {state} at p{origin} ({:?}) but completed at p{owner}",
                        row.failure
                    ),
                );
            }
            _ => {}
        }
    }
    violations
}
