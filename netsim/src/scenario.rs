//! Scenario files (`netsim/scenarios/*.toml`): the nodes, the link rules,
//! the workload, the timed faults and the checks' bounds, parsed into a
//! validated [`Plan`] the runner executes.
//!
//! A scenario is data, so a swarm seed's random schedule is written as one
//! (see [`crate::swarm`]) and replays with `scout-netsim run FILE --seed N`.
//! Every time is in milliseconds of simulated time after the mesh formed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::net::{HostSet, LinkPatch, LinkRule, LinkTable};

/// Brokers in one scenario at most: enough for the 1,000-broker benchmark,
/// while every host still fits one `/16` of addresses.
pub const NODES_MAX: usize = 1024;

/// The longest scenario, in simulated milliseconds (a day).
pub const DURATION_MS_MAX: u64 = 24 * 3600 * 1000;

/// Timed events (faults, after flaps are expanded, and explicit operations)
/// one scenario may hold at most.
pub const EVENTS_MAX: usize = 100_000;

/// Shortest sampling interval, in milliseconds: finer sampling only costs
/// time (every sample hashes every replica).
pub const SAMPLE_MS_MIN: u64 = 10;

/// A scenario file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in output paths.
    pub name: String,
    /// What the scenario shows.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The seed used when the command line gives none.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated time the scenario runs after the mesh formed.
    pub duration_ms: u64,
    /// How often every replica's state is sampled (convergence time,
    /// replication latency, the plot).
    #[serde(default = "default_sample_ms")]
    pub sample_ms: u64,
    /// The brokers.
    pub nodes: NodesSpec,
    /// What every link does by default.
    #[serde(default)]
    pub links: LinkPatch,
    /// Rules for some directed links, laid over the default in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_rules: Vec<LinkRuleSpec>,
    /// Sync tunables of every broker (default: production's).
    #[serde(default, skip_serializing_if = "SyncSpec::is_default")]
    pub sync: SyncSpec,
    /// Transport timeouts of every broker (default: production's).
    #[serde(default, skip_serializing_if = "TransportSpec::is_default")]
    pub transport: TransportSpec,
    /// Partial view sizes of every broker (default: production's, 7 and
    /// 30). Smaller ones make a handful of brokers a partial mesh.
    #[serde(default, skip_serializing_if = "ViewsSpec::is_default")]
    pub views: ViewsSpec,
    /// Random operations drawn from the workload stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSpec>,
    /// Explicit operations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<OpEntry>,
    /// How invocations run.
    #[serde(default, skip_serializing_if = "InvocationsSpec::is_default")]
    pub invocations: InvocationsSpec,
    /// A definition that makes worktrees on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktrees: Option<WorktreesSpec>,
    /// Timed faults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultEntry>,
    /// Bounds of the checks.
    #[serde(default)]
    pub checks: ChecksSpec,
}

fn default_seed() -> u64 {
    1
}

fn default_sample_ms() -> u64 {
    100
}

/// The brokers: `count` (named `n0`, `n1`, …) or explicit `names`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesSpec {
    /// How many, named `n0` … `n{count-1}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Or their names (DNS labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// Clock skew per node from the start, in milliseconds (ahead > 0).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skew_ms: BTreeMap<String, i64>,
    /// Nodes behind a NAT from the start: they can dial out and keep the
    /// connections they opened, but nobody can dial them (see
    /// `net::NAT_BINDING`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub behind_nat: Vec<String>,
}

/// A link rule for some directed links.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRuleSpec {
    /// Sending nodes (`"*"`: all).
    pub from: Vec<String>,
    /// Receiving nodes (`"*"`: all).
    pub to: Vec<String>,
    /// What changes on those links.
    pub set: LinkPatch,
}

/// Sync tunables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSpec {
    /// Mean anti-entropy interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_entropy_interval_ms: Option<u64>,
    /// Its jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_entropy_jitter_ms: Option<u64>,
    /// How long announcements to lazy peers are gathered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_delay_ms: Option<u64>,
    /// How long an announced record may be late before it is grafted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graft_timeout_ms: Option<u64>,
}

impl SyncSpec {
    fn is_default(&self) -> bool {
        *self == SyncSpec::default()
    }
}

/// Partial view sizes (`[views]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewsSpec {
    /// Most active peers (connections kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<usize>,
    /// Most passive peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<usize>,
}

impl ViewsSpec {
    fn is_default(&self) -> bool {
        *self == ViewsSpec::default()
    }

    /// The sizes this asks for, checked.
    pub fn sizes(&self) -> Result<scout_mesh::views::ViewSizes, String> {
        let default = scout_mesh::views::ViewSizes::default();
        scout_mesh::views::ViewSizes::new(
            self.active.unwrap_or(default.active()),
            self.passive.unwrap_or(default.passive()),
        )
    }
}

/// Transport timeouts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSpec {
    /// A connection silent this long is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Keep-alive interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_ms: Option<u64>,
    /// Handshake deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_ms: Option<u64>,
    /// Request deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
}

impl TransportSpec {
    fn is_default(&self) -> bool {
        *self == TransportSpec::default()
    }
}

/// How invocations run: their deadline, and how long the in-process agents
/// work on one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationsSpec {
    /// An invocation not finished this long after it was submitted fails
    /// with `timeout`.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// `[min, max]` simulated milliseconds an agent works on one.
    #[serde(default = "default_work_ms")]
    pub work_ms: [u64; 2],
}

fn default_deadline_ms() -> u64 {
    60_000
}

fn default_work_ms() -> [u64; 2] {
    [200, 2_000]
}

impl Default for InvocationsSpec {
    fn default() -> InvocationsSpec {
        InvocationsSpec {
            deadline_ms: default_deadline_ms(),
            work_ms: default_work_ms(),
        }
    }
}

impl InvocationsSpec {
    fn is_default(&self) -> bool {
        *self == InvocationsSpec::default()
    }
}

/// Random operations: one every `interval_ms` (±50%), from `start_ms` to
/// `stop_ms`, on a node drawn at random, of a kind drawn by `mix` weight.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// First operation no earlier than this.
    #[serde(default)]
    pub start_ms: u64,
    /// No operation after this.
    pub stop_ms: u64,
    /// Mean time between operations.
    pub interval_ms: u64,
    /// Agent names per node the operations pick from (`a0`, `a1`, …).
    #[serde(default = "default_agents_per_node")]
    pub agents_per_node: usize,
    /// Shared definitions the edits pick from (`d0`, `d1`, …).
    #[serde(default = "default_definitions")]
    pub definitions: usize,
    /// Weight of each operation kind.
    #[serde(default)]
    pub mix: MixSpec,
}

fn default_agents_per_node() -> usize {
    6
}

fn default_definitions() -> usize {
    3
}

/// Weights of the operation kinds in a workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixSpec {
    /// Add an agent to a node's `relay-agents.json` (an instance appears).
    #[serde(default)]
    pub add_agent: u32,
    /// Change an agent's working directory (the instance record changes).
    #[serde(default)]
    pub update_agent: u32,
    /// Remove an agent (the instance is withdrawn: a tombstone).
    #[serde(default)]
    pub remove_agent: u32,
    /// Edit a shared definition (a multi-writer register).
    #[serde(default)]
    pub edit_definition: u32,
    /// Invoke an agent of some node from this one.
    #[serde(default)]
    pub invoke: u32,
    /// Mention a workspace of the worktree-making definition that may not
    /// exist yet (`@w#ws-2`), so an owner makes its worktree; needs a
    /// `[worktrees]` section.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub new_workspace: u32,
}

fn is_zero(weight: &u32) -> bool {
    *weight == 0
}

impl Default for MixSpec {
    fn default() -> MixSpec {
        MixSpec {
            add_agent: 4,
            update_agent: 3,
            remove_agent: 2,
            edit_definition: 1,
            invoke: 2,
            new_workspace: 0,
        }
    }
}

/// Workspaces one scenario's worktree definition may be mentioned with at
/// most: each made one is a real checkout on disk, and the broker refuses
/// more than `WORKTREES_PER_DEFINITION_MAX` per definition anyway.
pub const WORKSPACES_MAX: usize = 32;

/// A definition that makes git worktrees on demand (`"worktrees": true`),
/// on every node or on the ones listed, over a real git repository in
/// each node's home; mentions of `@<definition>#ws-<k>` make them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorktreesSpec {
    /// The definition's name.
    #[serde(default = "default_worktree_definition")]
    pub definition: String,
    /// The nodes that have it (default: every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// How many workspace names the workload mentions (`ws-0` …).
    #[serde(default = "default_workspaces")]
    pub workspaces: usize,
}

fn default_worktree_definition() -> String {
    "w".to_owned()
}

fn default_workspaces() -> usize {
    4
}

/// The kinds of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Add an agent on the node.
    AddAgent,
    /// Change an agent's working directory.
    UpdateAgent,
    /// Remove an agent.
    RemoveAgent,
    /// Edit a shared definition from the node.
    EditDefinition,
    /// Invoke an agent (by name) from the node.
    Invoke,
}

impl OpKind {
    /// The word used in files and output.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::AddAgent => "add_agent",
            OpKind::UpdateAgent => "update_agent",
            OpKind::RemoveAgent => "remove_agent",
            OpKind::EditDefinition => "edit_definition",
            OpKind::Invoke => "invoke",
        }
    }
}

/// One explicit operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpEntry {
    /// When.
    pub at_ms: u64,
    /// On which node.
    pub node: String,
    /// What.
    pub op: OpKind,
    /// The agent or definition name (for `invoke`: the target, as a
    /// mention such as `@a1` or `@a1@n2`).
    pub name: String,
    /// The definition's description, or the invocation's prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Nodes on two sides of a cut, hold or heal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sides {
    /// Senders (`"*"`: all).
    pub from: Vec<String>,
    /// Receivers (`"*"`: all).
    pub to: Vec<String>,
}

/// `heal = "all"` or `heal = { from, to }` (both directions between them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HealSpec {
    /// `"all"`.
    All(String),
    /// Between two sets, both ways.
    Between(Sides),
}

/// `restart = "n2"` or `restart = { node = "n2", wipe_store = true }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RestartSpec {
    /// Restart with the store kept.
    Node(String),
    /// Restart, optionally after deleting the store (a lost disk).
    Detailed {
        /// The node.
        node: String,
        /// Delete `scout.db` (and its WAL) before starting.
        #[serde(default)]
        wipe_store: bool,
    },
}

/// A clock skew change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkewSpec {
    /// The node.
    pub node: String,
    /// Its clock's offset from true time from now on (ahead > 0).
    pub ms: i64,
}

/// A change of some links' rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFaultSpec {
    /// Senders (`"*"`: all).
    #[serde(default = "everyone")]
    pub from: Vec<String>,
    /// Receivers (`"*"`: all).
    #[serde(default = "everyone")]
    pub to: Vec<String>,
    /// What changes.
    pub set: LinkPatch,
}

fn everyone() -> Vec<String> {
    vec!["*".to_owned()]
}

/// A link that goes down and up: down for `down_ms` of every `period_ms`,
/// from the fault's time until `until_ms`, both ways between the sides.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlapSpec {
    /// One side.
    pub from: Vec<String>,
    /// The other side.
    pub to: Vec<String>,
    /// Length of one down-and-up cycle.
    pub period_ms: u64,
    /// How long the link is down in each cycle.
    pub down_ms: u64,
    /// When the flapping stops (the link is up from then on).
    pub until_ms: u64,
}

/// One timed fault: `at_ms` and exactly one action.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultEntry {
    /// When.
    pub at_ms: u64,
    /// Symmetric partition into groups; nodes not listed form one more group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<Vec<Vec<String>>>,
    /// One node cut off from all others, both ways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolate: Option<String>,
    /// One-way partition: nothing from `from` reaches `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<Sides>,
    /// Remove partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal: Option<HealSpec>,
    /// Crash a node: mute its socket, then drop its broker's tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash: Option<String>,
    /// Start a crashed node again on the same address and store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartSpec>,
    /// Set a node's clock skew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew: Option<SkewSpec>,
    /// Change link rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkFaultSpec>,
    /// Put every link back to the scenario's rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_links: Option<bool>,
    /// Hold links: datagrams queue until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Sides>,
    /// Release held links (`"all"` or `{ from, to }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<HealSpec>,
    /// A flapping link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flap: Option<FlapSpec>,
}

/// Bounds of the checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksSpec {
    /// Every live replica must agree within this long after the last fault
    /// (or the last operation, if later).
    #[serde(default = "default_converge_within_ms")]
    pub converge_within_ms: u64,
    /// The mesh must form (before the scenario's clock starts) within this.
    #[serde(default = "default_form_within_ms")]
    pub form_within_ms: u64,
    /// Every accepted invocation must end at its origin (completed, or
    /// failed with a reason) within this long (simulated) after it was
    /// submitted; unset, only that it ends is checked. For scenarios whose
    /// faults always leave a path.
    #[serde(default)]
    pub answered_within_ms: Option<u64>,
}

fn default_converge_within_ms() -> u64 {
    30_000
}

fn default_form_within_ms() -> u64 {
    120_000
}

impl Default for ChecksSpec {
    fn default() -> ChecksSpec {
        ChecksSpec {
            converge_within_ms: default_converge_within_ms(),
            form_within_ms: default_form_within_ms(),
            answered_within_ms: None,
        }
    }
}

/// A scenario that does not parse or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or does not match the format.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The scenario is well-formed but wrong (an unknown node, a fault
    /// without an action, a bound out of range).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl ScenarioError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ScenarioError::Read { .. } => "SCENARIO_UNREADABLE",
            ScenarioError::Parse { .. } => "SCENARIO_MALFORMED",
            ScenarioError::Invalid { .. } => "SCENARIO_INVALID",
        }
    }
}

/// A fault, resolved to host indices.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Block every link between different groups (both ways).
    Partition(Vec<HostSet>),
    /// Block every link from the first set to the second.
    Cut(HostSet, HostSet),
    /// Unblock links between the sets (both ways), or every link.
    Heal(Option<(HostSet, HostSet)>),
    /// Crash a node.
    Crash(usize),
    /// Restart a node.
    Restart {
        /// The node.
        node: usize,
        /// Delete its store first.
        wipe_store: bool,
    },
    /// Set a node's clock skew.
    Skew {
        /// The node.
        node: usize,
        /// The skew.
        ms: i64,
    },
    /// Patch link rules.
    Link(HostSet, HostSet, LinkPatch),
    /// Back to the scenario's link rules.
    ResetLinks,
    /// Hold links.
    Hold(HostSet, HostSet),
    /// Release held links (some, or all).
    Release(Option<(HostSet, HostSet)>),
}

impl Fault {
    /// Whether the fault restores something (heal, restart, reset,
    /// release): the bound on convergence counts from the last fault.
    pub fn is_healing(&self) -> bool {
        matches!(
            self,
            Fault::Heal(_) | Fault::Restart { .. } | Fault::ResetLinks | Fault::Release(_)
        )
    }
}

/// An operation, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// The node it runs on.
    pub node: usize,
    /// What.
    pub kind: OpKind,
    /// Agent or definition name, or the invocation's target.
    pub name: String,
    /// Description or prompt.
    pub text: Option<String>,
}

/// What happens at one moment of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A fault, with its one-line label.
    Fault(Fault, String),
    /// An explicit operation.
    Op(Op),
    /// An operation drawn from the workload.
    RandomOp,
}

/// One moment of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// Milliseconds after the scenario's start.
    pub at_ms: u64,
    /// What happens.
    pub action: Action,
}

/// A validated scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenario as written (for the results and for replay).
    pub scenario: Scenario,
    /// Node names, by index.
    pub names: Vec<String>,
    /// Link rules by index.
    pub links: LinkTable,
    /// Everything timed, in order (faults before operations at one time,
    /// each in file order).
    pub timeline: Vec<Timed>,
    /// When the last fault happens (0 without faults).
    pub last_fault_ms: u64,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Plan, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        Scenario::parse(&text, &shown)?.plan(&shown)
    }

    /// Parses TOML (`path` only names the source in errors).
    pub fn parse(text: &str, path: &str) -> Result<Scenario, ScenarioError> {
        toml::from_str(text).map_err(|err| ScenarioError::Parse {
            path: path.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })
    }

    /// The scenario as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The node names.
    pub fn node_names(&self) -> Vec<String> {
        match (&self.nodes.names, self.nodes.count) {
            (Some(names), _) => names.clone(),
            (None, Some(count)) => (0..count).map(|idx| format!("n{idx}")).collect(),
            (None, None) => Vec::new(),
        }
    }

    /// Validates the scenario and resolves names to indices.
    pub fn plan(self, path: &str) -> Result<Plan, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid {
            path: path.to_owned(),
            message,
        };
        if self.nodes.names.is_some() && self.nodes.count.is_some() {
            return Err(invalid("nodes: give `count` or `names`, not both".into()));
        }
        self.views
            .sizes()
            .map_err(|err| invalid(format!("views: {err}")))?;
        let names = self.node_names();
        if names.is_empty() || names.len() > NODES_MAX {
            return Err(invalid(format!(
                "nodes: {} nodes; a scenario has 1 to {NODES_MAX}",
                names.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for name in &names {
            scout_mesh::names::Label::parse(name, scout_mesh::names::NamePart::Node)
                .map_err(|err| invalid(format!("nodes: `{name}`: {err}")))?;
            if !seen.insert(name.clone()) {
                return Err(invalid(format!("nodes: `{name}` is listed twice")));
            }
        }
        if self.duration_ms == 0 || self.duration_ms > DURATION_MS_MAX {
            return Err(invalid(format!(
                "duration_ms is {}; it must be between 1 and {DURATION_MS_MAX}",
                self.duration_ms
            )));
        }
        if self.sample_ms < SAMPLE_MS_MIN || self.sample_ms > self.duration_ms {
            return Err(invalid(format!(
                "sample_ms is {}; it must be between {SAMPLE_MS_MIN} and duration_ms",
                self.sample_ms
            )));
        }
        let index = |name: &str, what: &str| -> Result<usize, ScenarioError> {
            names
                .iter()
                .position(|known| known == name)
                .ok_or_else(|| invalid(format!("{what}: no node `{name}`")))
        };
        let set = |list: &[String], what: &str| -> Result<HostSet, ScenarioError> {
            let mut hosts = HostSet::new();
            for name in list {
                if name == "*" {
                    hosts.extend(0..names.len());
                } else {
                    hosts.insert(index(name, what)?);
                }
            }
            if hosts.is_empty() {
                return Err(invalid(format!("{what}: names no node")));
            }
            Ok(hosts)
        };
        for name in &self.nodes.behind_nat {
            index(name, "nodes.behind_nat")?;
        }
        for (name, skew) in &self.nodes.skew_ms {
            index(name, "nodes.skew_ms")?;
            check_skew(*skew).map_err(|message| invalid(format!("nodes.skew_ms: {message}")))?;
        }

        if let Some(problem) = self.links.problem() {
            return Err(invalid(format!("links: {problem}")));
        }
        let mut default = LinkRule::default();
        self.links.apply(&mut default);
        let mut links = LinkTable {
            default,
            patches: Vec::new(),
        };
        for (idx, rule) in self.link_rules.iter().enumerate() {
            let what = format!("link_rules[{idx}]");
            if let Some(problem) = rule.set.problem() {
                return Err(invalid(format!("{what}: {problem}")));
            }
            links.patches.push((
                set(&rule.from, &what)?,
                set(&rule.to, &what)?,
                rule.set.clone(),
            ));
        }

        let mut timeline = Vec::new();
        for (idx, entry) in self.faults.iter().enumerate() {
            let what = format!("faults[{idx}] (at_ms {})", entry.at_ms);
            if entry.at_ms > self.duration_ms {
                return Err(invalid(format!("{what}: after the end of the scenario")));
            }
            for (at_ms, fault, label) in resolve_fault(entry, &what, path, &set, &index)? {
                timeline.push(Timed {
                    at_ms,
                    action: Action::Fault(fault, label),
                });
            }
        }
        for (idx, entry) in self.ops.iter().enumerate() {
            let what = format!("ops[{idx}] (at_ms {})", entry.at_ms);
            if entry.at_ms > self.duration_ms {
                return Err(invalid(format!("{what}: after the end of the scenario")));
            }
            let node = index(&entry.node, &what)?;
            check_op_name(entry.op, &entry.name)
                .map_err(|message| invalid(format!("{what}: {message}")))?;
            timeline.push(Timed {
                at_ms: entry.at_ms,
                action: Action::Op(Op {
                    node,
                    kind: entry.op,
                    name: entry.name.clone(),
                    text: entry.text.clone(),
                }),
            });
        }
        if let Some(worktrees) = &self.worktrees {
            scout_mesh::names::Label::parse(
                &worktrees.definition,
                scout_mesh::names::NamePart::Definition,
            )
            .map_err(|err| invalid(format!("worktrees.definition: {err}")))?;
            if !(1..=WORKSPACES_MAX).contains(&worktrees.workspaces) {
                return Err(invalid(format!(
                    "worktrees.workspaces is {}; it must be between 1 and {WORKSPACES_MAX}",
                    worktrees.workspaces
                )));
            }
            for name in worktrees.nodes.iter().flatten() {
                index(name, "worktrees.nodes")?;
            }
        }
        let [work_min, work_max] = self.invocations.work_ms;
        if self.invocations.deadline_ms == 0 || work_min > work_max || work_max > DURATION_MS_MAX {
            return Err(invalid(
                "invocations: deadline_ms must be positive and work_ms a [min, max] range".into(),
            ));
        }
        if let Some(workload) = &self.workload {
            if workload.interval_ms == 0 || workload.stop_ms > self.duration_ms {
                return Err(invalid(
                    "workload: interval_ms must be positive and stop_ms within duration_ms".into(),
                ));
            }
            if !(1..=64).contains(&workload.agents_per_node)
                || !(1..=64).contains(&workload.definitions)
            {
                return Err(invalid(
                    "workload: agents_per_node and definitions must be between 1 and 64".into(),
                ));
            }
            let mix = &workload.mix;
            if mix.add_agent
                + mix.update_agent
                + mix.remove_agent
                + mix.edit_definition
                + mix.invoke
                + mix.new_workspace
                == 0
            {
                return Err(invalid("workload.mix: every weight is 0".into()));
            }
            if mix.new_workspace > 0 && self.worktrees.is_none() {
                return Err(invalid(
                    "workload.mix: new_workspace needs a [worktrees] section".into(),
                ));
            }
            // Evenly spaced slots; the ±50% jitter is drawn when the run
            // reaches each one, from the workload's own stream.
            let mut at_ms = workload.start_ms;
            while at_ms <= workload.stop_ms {
                timeline.push(Timed {
                    at_ms,
                    action: Action::RandomOp,
                });
                at_ms += workload.interval_ms;
            }
        }
        if timeline.len() > EVENTS_MAX {
            return Err(invalid(format!(
                "{} timed events; at most {EVENTS_MAX}",
                timeline.len()
            )));
        }
        // Stable: faults (pushed first) stay before operations at one time.
        timeline.sort_by_key(|timed| timed.at_ms);
        let last_fault_ms = timeline
            .iter()
            .filter(|timed| matches!(timed.action, Action::Fault(..)))
            .map(|timed| timed.at_ms)
            .max()
            .unwrap_or(0);
        Ok(Plan {
            scenario: self,
            names,
            links,
            timeline,
            last_fault_ms,
        })
    }
}

/// The largest clock skew a scenario may set, in milliseconds (a day).
pub const SKEW_MS_MAX: i64 = 24 * 3600 * 1000;

fn check_skew(skew: i64) -> Result<(), String> {
    if skew.abs() > SKEW_MS_MAX {
        return Err(format!("{skew} ms; at most a day either way"));
    }
    Ok(())
}

fn check_op_name(kind: OpKind, name: &str) -> Result<(), String> {
    match kind {
        OpKind::Invoke => scout_mesh::names::AgentName::parse(name)
            .map(|_| ())
            .map_err(|err| format!("`{name}`: {err}")),
        _ => scout_mesh::names::Label::parse(name, scout_mesh::names::NamePart::Definition)
            .map(|_| ())
            .map_err(|err| format!("`{name}`: {err}")),
    }
}

type Resolved = Vec<(u64, Fault, String)>;

/// Resolves node names (or `"*"`) to a host set; the `&str` says where.
type SetResolver<'a> = dyn Fn(&[String], &str) -> Result<HostSet, ScenarioError> + 'a;

/// Resolves one node name to its index; the second `&str` says where.
type IndexResolver<'a> = dyn Fn(&str, &str) -> Result<usize, ScenarioError> + 'a;

fn resolve_fault(
    entry: &FaultEntry,
    what: &str,
    path: &str,
    set: &SetResolver<'_>,
    index: &IndexResolver<'_>,
) -> Result<Resolved, ScenarioError> {
    let invalid = |message: String| ScenarioError::Invalid {
        path: path.to_owned(),
        message,
    };
    let mut out: Resolved = Vec::new();
    let at = entry.at_ms;
    let mut n_actions = 0;
    if let Some(groups) = &entry.partition {
        n_actions += 1;
        let mut resolved = Vec::new();
        for group in groups {
            resolved.push(set(group, what)?);
        }
        let label = format!(
            "partition {}",
            groups
                .iter()
                .map(|group| group.join(","))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        out.push((at, Fault::Partition(resolved), label));
    }
    if let Some(node) = &entry.isolate {
        n_actions += 1;
        out.push((
            at,
            Fault::Partition(vec![HostSet::from([index(node, what)?])]),
            format!("isolate {node}"),
        ));
    }
    if let Some(sides) = &entry.cut {
        n_actions += 1;
        out.push((
            at,
            Fault::Cut(set(&sides.from, what)?, set(&sides.to, what)?),
            format!("cut {} -> {}", sides.from.join(","), sides.to.join(",")),
        ));
    }
    if let Some(heal) = &entry.heal {
        n_actions += 1;
        let (fault, label) = match heal {
            HealSpec::All(word) if word == "all" => (Fault::Heal(None), "heal all".to_owned()),
            HealSpec::All(word) => {
                return Err(invalid(format!(
                    "{what}: heal = \"{word}\"; use \"all\" or {{ from, to }}"
                )));
            }
            HealSpec::Between(sides) => (
                Fault::Heal(Some((set(&sides.from, what)?, set(&sides.to, what)?))),
                format!("heal {} <-> {}", sides.from.join(","), sides.to.join(",")),
            ),
        };
        out.push((at, fault, label));
    }
    if let Some(node) = &entry.crash {
        n_actions += 1;
        out.push((
            at,
            Fault::Crash(index(node, what)?),
            format!("crash {node}"),
        ));
    }
    if let Some(restart) = &entry.restart {
        n_actions += 1;
        let (node, wipe_store) = match restart {
            RestartSpec::Node(node) => (node, false),
            RestartSpec::Detailed { node, wipe_store } => (node, *wipe_store),
        };
        let label = if wipe_store {
            format!("restart {node} (store wiped)")
        } else {
            format!("restart {node}")
        };
        out.push((
            at,
            Fault::Restart {
                node: index(node, what)?,
                wipe_store,
            },
            label,
        ));
    }
    if let Some(skew) = &entry.skew {
        n_actions += 1;
        check_skew(skew.ms).map_err(|message| invalid(format!("{what}: skew: {message}")))?;
        out.push((
            at,
            Fault::Skew {
                node: index(&skew.node, what)?,
                ms: skew.ms,
            },
            format!("skew {} {:+} ms", skew.node, skew.ms),
        ));
    }
    if let Some(link) = &entry.link {
        n_actions += 1;
        if let Some(problem) = link.set.problem() {
            return Err(invalid(format!("{what}: link: {problem}")));
        }
        out.push((
            at,
            Fault::Link(
                set(&link.from, what)?,
                set(&link.to, what)?,
                link.set.clone(),
            ),
            format!(
                "link {} -> {}: {}",
                link.from.join(","),
                link.to.join(","),
                describe_patch(&link.set)
            ),
        ));
    }
    if entry.reset_links == Some(true) {
        n_actions += 1;
        out.push((at, Fault::ResetLinks, "reset links".to_owned()));
    }
    if let Some(sides) = &entry.hold {
        n_actions += 1;
        out.push((
            at,
            Fault::Hold(set(&sides.from, what)?, set(&sides.to, what)?),
            format!("hold {} -> {}", sides.from.join(","), sides.to.join(",")),
        ));
    }
    if let Some(release) = &entry.release {
        n_actions += 1;
        let (fault, label) = match release {
            HealSpec::All(word) if word == "all" => {
                (Fault::Release(None), "release all".to_owned())
            }
            HealSpec::All(word) => {
                return Err(invalid(format!(
                    "{what}: release = \"{word}\"; use \"all\" or {{ from, to }}"
                )));
            }
            HealSpec::Between(sides) => (
                Fault::Release(Some((set(&sides.from, what)?, set(&sides.to, what)?))),
                format!("release {} -> {}", sides.from.join(","), sides.to.join(",")),
            ),
        };
        out.push((at, fault, label));
    }
    if let Some(flap) = &entry.flap {
        n_actions += 1;
        if flap.period_ms == 0 || flap.down_ms == 0 || flap.down_ms >= flap.period_ms {
            return Err(invalid(format!(
                "{what}: flap: need 0 < down_ms < period_ms"
            )));
        }
        if flap.until_ms <= at {
            return Err(invalid(format!(
                "{what}: flap: until_ms must be after at_ms"
            )));
        }
        let (a, b) = (set(&flap.from, what)?, set(&flap.to, what)?);
        let sides = format!("{} <-> {}", flap.from.join(","), flap.to.join(","));
        let mut down_at = at;
        while down_at < flap.until_ms {
            out.push((
                down_at,
                Fault::Partition(vec![a.clone(), b.clone()]),
                format!("flap down {sides}"),
            ));
            let up_at = (down_at + flap.down_ms).min(flap.until_ms);
            out.push((
                up_at,
                Fault::Heal(Some((a.clone(), b.clone()))),
                format!("flap up {sides}"),
            ));
            down_at += flap.period_ms;
        }
    }
    match n_actions {
        1 => Ok(out),
        0 => Err(invalid(format!(
            "{what}: no action (partition, isolate, cut, heal, crash, restart, skew, link, reset_links, hold, release, flap)"
        ))),
        _ => Err(invalid(format!(
            "{what}: {n_actions} actions; one per entry"
        ))),
    }
}

fn describe_patch(patch: &LinkPatch) -> String {
    let mut parts = Vec::new();
    if let Some([min, max]) = patch.latency_ms {
        parts.push(format!("latency {min}-{max} ms"));
    }
    if let Some(distribution) = patch.distribution {
        parts.push(format!("{distribution:?}").to_lowercase());
    }
    if patch.latency_per == Some(crate::net::LatencyPer::Link) {
        parts.push("latency per link".to_owned());
    }
    if let Some(loss) = patch.loss {
        parts.push(format!("loss {:.0}%", loss * 100.0));
    }
    if let Some(duplicate) = patch.duplicate {
        parts.push(format!("dup {:.0}%", duplicate * 100.0));
    }
    if let Some(reorder) = patch.reorder {
        parts.push(format!("reorder {:.0}%", reorder * 100.0));
    }
    if let Some(ms) = patch.reorder_ms {
        parts.push(format!("reorder up to {ms} ms"));
    }
    if let Some(mtu) = patch.mtu_bytes {
        parts.push(format!("mtu {mtu}"));
    }
    if let Some(queue) = patch.queue_max {
        parts.push(format!("queue {queue}"));
    }
    parts.join(", ")
}
