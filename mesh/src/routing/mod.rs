//! The routing core: one state machine, [`Router`], for both roles of an
//! invocation. The origin (the broker where it was mentioned) commits it and
//! delivers it to the owner of the instance it resolved to; the owner
//! commits it under its id, runs it once, and reports the flight back. Like
//! the sync [`crate::sync::Replica`], it does no IO: inputs come in through
//! `handle_*` with the time, outputs go out through [`Router::poll_output`],
//! and [`Router::poll_timeout`] says when to call [`Router::handle_timeout`].
//! The broker's driver (`src/daemon/routing/`) and netsim's pure swarm run
//! this same code.
//!
//! # Exactly once
//!
//! An invocation id is executed at most once in the whole mesh, and, unless
//! it fails or is cancelled, exactly once. Three rules keep it, and they
//! live only here:
//!
//! 1. **One id, one owner.** The origin reuses one invocation id for every
//!    attempt, and moves the work to another instance (a reroute) only when
//!    it can prove no owner holds it: no invoke ever left this broker, or
//!    the owner refused the only one that did, and the plan saw every
//!    invoke leave (a plan rebuilt after a restart never reroutes; see
//!    [`plan::DeliveryPlan::recovered`]).
//! 2. **Commit before acknowledge, commit before run.** The owner answers an
//!    invoke only after the flight's row is committed (or queued in order,
//!    for policies that do not wait for the disk), and runs only flights
//!    whose accept committed; the agent gets the prompt only once the
//!    flight's `running` row is committed. Its store is the queue: a flight is taken from
//!    a committed row, and one that was running when the broker died is
//!    ended, never run again (the store's reconcile at start).
//! 3. **A retry finds the first.** An invoke for an id the owner holds (in
//!    memory, or in its store: the driver passes what it stored) is
//!    answered from that flight, even when the agent went away since;
//!    refusing it would let the origin send the work elsewhere. Only the
//!    invocation's origin learns anything about its flight (`NOT_ORIGIN`),
//!    and only the owner it was sent to may report on it (`NOT_OWNER`).
//!
//! The origin finishes a delivery once: the first terminal report starts
//! the final commit, later ones are ignored, and the event is emitted after
//! the commit.
//!
//! # Legal transitions
//!
//! Deliveries and flights move only along
//! [`crate::lifecycle::DeliveryState::can_transition_to`] and
//! [`crate::lifecycle::FlightState::can_transition_to`]; the rows this core
//! asks to persist say the target state, and the driver's store refuses an
//! illegal move.
//!
//! # Time
//!
//! [`Now`] carries two clocks: `mono_ms` (monotonic, for retries, backoff,
//! queries and deadlines as durations, so a wall clock that jumps neither
//! stalls nor hurries them) and `unix_ms` (wall, for what is recorded and
//! for deadlines that cross brokers).

pub mod plan;

mod origin;
mod owner;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::lifecycle::{
    DeliveryPolicy, DeliveryState, FailureReason, FlightState, InvocationAction,
};
use crate::output::FlightOutput;
use crate::rng::SplitMix64;
use crate::usage::{FailureCode, Usage};
use crate::wire::{ErrorCode, FlightUpdate, MeshFrame, NodeId};

pub use plan::{
    DeliveryPlan, QUERY_INTERVAL_MS, REROUTE_AFTER_MS, RETRY_BACKOFF_MS_MAX, RETRY_BACKOFF_MS_MIN,
    Step, backoff_ms, delivery_state_of,
};

/// Invocation ids an owner remembers refusing, at most. A refused id stays
/// refused while remembered: an earlier invoke of it still on its way (a
/// stream slower than the origin's timeout) must not be accepted after the
/// origin took the refusal as final. A stream does not outlive its
/// connection, and an origin retries within minutes, so the most recent
/// 65,536 (a few megabytes) are plenty.
pub const REFUSED_IDS_MAX: usize = 65_536;

/// The time of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (any zero): durations.
    pub mono_ms: u64,
    /// Wall-clock unix milliseconds: what is recorded.
    pub unix_ms: u64,
}

/// One request between routers (or a router and itself): the same id in
/// [`Output::Send`] and [`Router::handle_response`], or in
/// [`Router::handle_request`] and [`Output::Reply`]. Both come from one
/// counter, so they never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// One batch of rows to commit: the same id in [`Output::Persist`] and
/// [`Router::handle_persisted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersistId(pub u64);

/// An invocation, as its origin committed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Minted by the origin; the handle for everything after.
    pub invocation_id: String,
    /// What is asked.
    pub action: InvocationAction,
    /// The prompt.
    pub body: String,
    /// The conversation at the origin.
    pub conversation_id: Option<String>,
    /// The origin broker.
    pub origin: NodeId,
    /// The name as mentioned (`@fabric`).
    pub target: String,
    /// Unix ms after which the work is no longer wanted.
    pub deadline_unix_ms: Option<u64>,
    /// How hard to try.
    pub policy: DeliveryPolicy,
    /// When the origin accepted it, unix ms.
    pub created_unix_ms: u64,
    /// The instance that sent it, when an agent did.
    pub from: Option<String>,
    /// The causal chain that led to it, oldest first (see
    /// [`crate::mention`]).
    pub chain: Vec<String>,
}

/// Where a mention resolved: an instance and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The instance (`@fabric@devbox#main`).
    pub instance: String,
    /// Why that one (a resolve reason word).
    pub reason: String,
    /// The broker that owns it.
    pub owner: NodeId,
}

/// A new invocation at its origin: committed by the router, then delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The invocation (its `origin` is this router's node).
    pub invocation: Invocation,
    /// The delivery's row id (minted by the driver).
    pub delivery_id: String,
    /// Where it resolved.
    pub choice: Choice,
    /// Whether the mention named a definition rather than one instance (only
    /// such work may be rerouted).
    pub logical: bool,
    /// Who asked (the request message's author).
    pub author: String,
}

/// Where the origin finds another instance for work it may reroute. The
/// driver answers from the replicated registry; the pure swarm from its
/// model. It is a read, never an effect.
pub trait Directory: std::fmt::Debug + Send {
    /// Another instance `target` could mean, other than `exclude`, when one
    /// is there to try.
    fn alternative(&self, target: &str, exclude: &str) -> Option<Choice>;
}

/// A directory with no alternatives: nothing is ever rerouted.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAlternatives;

impl Directory for NoAlternatives {
    fn alternative(&self, _target: &str, _exclude: &str) -> Option<Choice> {
        None
    }
}

/// Why a request was refused, with its stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code.
    pub code: ErrorCode,
    /// For a person.
    pub message: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(code: impl Into<ErrorCode>, message: impl Into<String>) -> Refusal {
        Refusal {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A flight as the owner's store holds it, read by the driver for an
/// invocation the router does not hold in memory (finished long ago, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFlight {
    /// The invocation's origin, as the owner recorded it at accept.
    pub origin: NodeId,
    /// The flight as an update (its result when terminal).
    pub update: FlightUpdate,
}

/// What the driver read from the store for a request: only what the
/// router asks for through [`Router::needs_stored`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The stored flight of the invocation, if any.
    pub flight: Option<StoredFlight>,
    /// Owners of stored deliveries of the invocation (for a late update).
    pub delivery_owners: Vec<NodeId>,
    /// For an invoke: whether this broker may take it (its agent, trusted,
    /// a clean prompt). The driver checks what lives outside the core.
    pub admission: Result<(), Refusal>,
}

impl Default for Facts {
    fn default() -> Facts {
        Facts {
            flight: None,
            delivery_owners: Vec::new(),
            admission: Ok(()),
        }
    }
}

/// What the driver must read from the store before [`Router::handle_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// The stored flight ([`Facts::flight`]).
    pub flight: bool,
    /// The stored deliveries' owners ([`Facts::delivery_owners`]).
    pub delivery_owners: bool,
    /// The admission check ([`Facts::admission`]).
    pub admission: bool,
    /// The stored flight, but only when the admission check refused.
    pub flight_when_refused: bool,
}

/// Why a request failed before an answer came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// For a person (and the attempt's record).
    pub detail: String,
}

/// Why a persist failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistFailure {
    /// An accept found the id in the store already, in this state.
    Duplicate {
        /// The stored flight's state.
        state: FlightState,
        /// Its origin as recorded.
        origin: NodeId,
    },
    /// The store failed.
    Store {
        /// Its stable code.
        code: String,
        /// For a person.
        message: String,
    },
}

/// One row change to commit. A [`Output::Persist`] holds the rows of one
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Origin: a new invocation, its delivery and the request message.
    Submit {
        /// The invocation.
        invocation: Invocation,
        /// The delivery row.
        delivery_id: String,
        /// Where it goes.
        choice: Choice,
        /// The request message's author.
        author: String,
    },
    /// Origin: one invoke sent, with its outcome, recorded once known.
    Attempt {
        /// The delivery.
        delivery_id: String,
        /// When the invoke left, unix ms.
        started_unix_ms: u64,
        /// Why it failed; `None` when the owner acknowledged it.
        failure: Option<(FailureReason, String)>,
        /// When it ended, unix ms.
        at_unix_ms: u64,
    },
    /// Origin: the delivery moves, when the move is still legal.
    DeliveryState {
        /// The delivery.
        delivery_id: String,
        /// Its new state.
        state: DeliveryState,
        /// Why, when it failed.
        failure: Option<(FailureReason, String)>,
        /// When, unix ms.
        at_unix_ms: u64,
    },
    /// Origin: the work goes to another instance (back to `accepted`).
    Reroute {
        /// The delivery.
        delivery_id: String,
        /// The new instance and owner.
        choice: Choice,
        /// When, unix ms.
        at_unix_ms: u64,
    },
    /// Origin: the end: the final state (unless already final) and the
    /// answer or failure as the conversation's result message.
    FinishDelivery {
        /// The delivery.
        delivery_id: String,
        /// The invocation.
        invocation_id: String,
        /// Its conversation.
        conversation_id: String,
        /// The final state.
        state: DeliveryState,
        /// Why, when it failed or was cancelled.
        failure: Option<(FailureReason, String)>,
        /// The failed turn's stable code, when the owner reported one.
        code: Option<FailureCode>,
        /// What the flight used, when the owner reported it.
        usage: Option<Usage>,
        /// The result message's author (the instance).
        author: String,
        /// The result message.
        body: String,
        /// When, unix ms.
        at_unix_ms: u64,
    },
    /// Owner: the invocation (unless it originated here: the origin stored
    /// it) and its queued flight, under the invocation's unique id.
    AcceptFlight {
        /// The invocation.
        invocation: Invocation,
        /// The instance that runs it.
        instance: String,
        /// Why that instance.
        resolve_reason: String,
        /// Whether the origin is this broker.
        local: bool,
        /// When, unix ms.
        at_unix_ms: u64,
    },
    /// Owner: the flight moves.
    FlightState {
        /// The flight's invocation (one flight per invocation at its owner).
        invocation_id: String,
        /// Its new state.
        state: FlightState,
        /// Why, when it failed or was cancelled.
        failure: Option<(FailureReason, String)>,
        /// When, unix ms.
        at_unix_ms: u64,
    },
    /// Owner: output arrived.
    FlightOutput {
        /// The flight's invocation (one flight per invocation at its owner).
        invocation_id: String,
        /// The new text.
        chunk: String,
        /// When, unix ms.
        at_unix_ms: u64,
    },
    /// Owner: the end, with the result. A flight that never started is
    /// moved through `running` on paper, so every stored move stays legal;
    /// one already final is left as it is.
    FinishFlight {
        /// The flight's invocation (one flight per invocation at its owner).
        invocation_id: String,
        /// The final state.
        state: FlightState,
        /// Why, when it failed or was cancelled.
        failure: Option<(FailureReason, String)>,
        /// The failed turn's stable code, when the execution gave one.
        code: Option<FailureCode>,
        /// What the flight used, when its agent reported it.
        usage: Option<Usage>,
        /// The answer (or the output so far, when it failed).
        result: FlightOutput,
        /// When, unix ms.
        at_unix_ms: u64,
    },
}

/// What an execution reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecProgress {
    /// The harness had to be started first. The flight is already
    /// `running` (committed before the execution began), so this changes
    /// nothing; it is kept for executors that report it.
    Waking,
    /// The agent has the prompt (the flight is `running` already).
    Started,
    /// Output as it arrives.
    Output(String),
    /// The end; the last report of an execution.
    Finished(ExecResult),
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecResult {
    /// The agent answered.
    Completed {
        /// The answer.
        response: String,
        /// Tokens and cost, when the agent reported them.
        usage: Option<Usage>,
    },
    /// No answer.
    Failed {
        /// Why.
        reason: FailureReason,
        /// The stable code a person acts on (`AUTH_REQUIRED`), when the
        /// executor knows one.
        code: Option<FailureCode>,
        /// For a person.
        detail: String,
        /// Tokens and cost spent before it failed, when reported.
        usage: Option<Usage>,
    },
    /// Stopped on request.
    Cancelled,
}

/// Run this flight (the owner's side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute {
    /// The invocation.
    pub invocation_id: String,
    /// The instance that runs it.
    pub instance: String,
    /// The prompt.
    pub prompt: String,
    /// What is asked.
    pub action: InvocationAction,
    /// Unix ms after which the work is no longer wanted.
    pub deadline_unix_ms: Option<u64>,
    /// The conversation at the origin: an agent keeps one CLI session per
    /// conversation, so turns of one conversation continue each other and
    /// turns of another never see them.
    pub conversation_id: Option<String>,
    /// The broker the invocation came from (shown to whoever watches the
    /// agent run it).
    pub origin: NodeId,
    /// The execution started before a restart and outlived it: re-attach
    /// to it, never start the work again.
    pub resume: bool,
}

/// What an [`Event`] says changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The origin's delivery moved.
    Delivery(DeliveryState),
    /// The owner's flight moved (or produced output, in its state).
    Flight(FlightState),
    /// Output reached the origin.
    Output,
}

/// Something that happened to an invocation, for streams and waiters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The invocation.
    pub invocation_id: String,
    /// What.
    pub kind: EventKind,
    /// Output text (for output, and a delivery's final answer).
    pub output: Option<FlightOutput>,
    /// Why it failed or was cancelled.
    pub failure: Option<(FailureReason, String)>,
    /// The failed turn's stable code, when known.
    pub code: Option<FailureCode>,
    /// What the flight used, on its end, when reported.
    pub usage: Option<Usage>,
}

/// Which request of a peer was refused, for the driver's (rate-limited) log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedKind {
    /// A flight update from a peer that is not the owner (or for an
    /// invocation not known here).
    Update,
    /// A query, cancel or retry from a peer that is not the origin.
    Request,
}

/// What the router asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Commit these rows in one transaction, then call
    /// [`Router::handle_persisted`]. When `wait_for_disk` is false (the
    /// policy does not ask for the disk), queue them in order behind every
    /// earlier write and report at once. Nothing that depends on the rows
    /// is released before that call.
    Persist {
        /// Its id.
        id: PersistId,
        /// The rows.
        writes: Vec<Write>,
        /// Whether the commit must be durable before it is reported.
        wait_for_disk: bool,
    },
    /// Send `frame` to `to` (this node included: a local delivery is an
    /// ordinary send to self) and report the answer with
    /// [`Router::handle_response`].
    Send {
        /// Its id.
        request: RequestId,
        /// The peer.
        to: NodeId,
        /// The request.
        frame: MeshFrame,
    },
    /// Answer the request [`Router::handle_request`] received as `request`.
    Reply {
        /// Its id.
        request: RequestId,
        /// The answer.
        frame: MeshFrame,
    },
    /// Run a flight; report its progress with [`Router::handle_exec`].
    Execute(Execute),
    /// Stop the execution of this invocation (it was cancelled); its
    /// `Finished` report still comes.
    StopExecution {
        /// The invocation.
        invocation_id: String,
    },
    /// Tell subscribers.
    Emit(Event),
    /// A peer was refused something (counted in [`Router::refusals`]).
    Refused {
        /// The peer.
        peer: NodeId,
        /// The invocation it named.
        invocation_id: String,
        /// What was refused.
        kind: RefusedKind,
    },
}

/// Counters of what peers were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefusalCounts {
    /// Flight updates dropped: not from the owner, or for an invocation
    /// not known here.
    pub flight_updates_dropped: u64,
    /// Queries, cancels and retries refused: not from the origin.
    pub flight_requests_refused: u64,
}

/// What [`Router::handle_cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelStarted {
    /// A delivery of this broker: it ends with a `Delivery` event.
    Delivery,
    /// A flight this broker owns (another broker's invocation, or a local
    /// one with no delivery here): cancelled.
    Flight,
    /// Neither is in progress here (it may have finished: ask the store).
    NotHere,
}

/// A delivery rebuilt from the origin's store at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredDelivery {
    /// The delivery row.
    pub delivery_id: String,
    /// Its invocation.
    pub invocation: Invocation,
    /// Where it goes now.
    pub choice: Choice,
    /// Its stored state (not terminal).
    pub state: DeliveryState,
    /// Attempt rows recorded.
    pub attempts: u32,
}

/// A queued flight rebuilt from the owner's store at start (the store's
/// reconcile already ended the ones that were running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredFlight {
    /// Its invocation.
    pub invocation: Invocation,
    /// The instance that runs it.
    pub instance: String,
    /// `Some` for a flight that was running when the broker stopped and
    /// whose execution outlived it (held by a process of its own): it is
    /// carried on, not run again. `None` for a queued flight.
    pub resume: Option<Resumed>,
}

/// A running flight carried on after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Bytes of output recorded before the restart. The execution reports
    /// its output again from the start; these bytes are not recorded or
    /// sent twice.
    pub output_bytes: u64,
}

/// Work the router waits on for a persist.
#[derive(Debug)]
enum AfterPersist {
    /// An origin's submit: delivery may start.
    Submitted { invocation_id: String },
    /// An owner's accept: answer and queue.
    Accepted { invocation_id: String },
    /// A reroute recorded: the delivery starts over with its new owner.
    Rerouted {
        invocation_id: String,
        choice: Choice,
    },
    /// A delivery's end recorded.
    Finished { invocation_id: String, event: Event },
    /// A flight's end recorded: tell the origin, then forget it.
    FlightFinished {
        invocation_id: String,
        release: Vec<Output>,
    },
    /// An owner's `running` row: the execution may start.
    Dispatched { invocation_id: String },
    /// Plain outputs to release after the commit.
    Release(Vec<Output>),
}

/// What a request the router sent was for.
#[derive(Debug, Clone)]
enum Sent {
    Invoke {
        invocation_id: String,
        started_unix_ms: u64,
    },
    Query {
        invocation_id: String,
    },
    Cancel {
        invocation_id: String,
    },
    /// A flight update to an origin: best effort (the origin asks).
    Update,
}

/// The routing state machine of one broker.
#[derive(Debug)]
pub struct Router {
    node: NodeId,
    directory: Box<dyn Directory>,
    rng: SplitMix64,
    connected: BTreeSet<NodeId>,
    /// Origin side: unfinished deliveries by invocation id (ordered, so
    /// every run of one seed visits them, and draws jitter, in one order).
    deliveries: BTreeMap<String, origin::Delivery>,
    /// Owner side: flights in memory (unfinished, or being finished).
    flights: BTreeMap<String, owner::Flight>,
    /// Queued flights per instance, oldest first.
    queues: BTreeMap<String, VecDeque<String>>,
    /// The flight executing per instance (one at a time).
    executing: BTreeMap<String, String>,
    /// Owner side: ids refused lately, with their refusal, oldest first
    /// in `refused_order`; with `Some(origin)`, refused to that origin
    /// only (an id its origin cancelled before it arrived).
    refused: BTreeMap<String, (Refusal, Option<NodeId>)>,
    refused_order: VecDeque<String>,
    persists: BTreeMap<PersistId, AfterPersist>,
    requests: BTreeMap<RequestId, Sent>,
    next_id: u64,
    outputs: VecDeque<Output>,
    refusals: RefusalCounts,
}

impl Router {
    /// A router for `node` with nothing in progress. `seed` drives retry
    /// jitter, so a simulated run replays exactly.
    pub fn new(node: NodeId, directory: Box<dyn Directory>, seed: u64) -> Router {
        Router {
            node,
            directory,
            rng: SplitMix64::new(seed),
            connected: BTreeSet::new(),
            deliveries: BTreeMap::new(),
            flights: BTreeMap::new(),
            queues: BTreeMap::new(),
            executing: BTreeMap::new(),
            refused: BTreeMap::new(),
            refused_order: VecDeque::new(),
            persists: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_id: 1,
            outputs: VecDeque::new(),
            refusals: RefusalCounts::default(),
        }
    }

    /// A router rebuilt from the store after a start: unfinished deliveries
    /// (whose plans never reroute: see [`DeliveryPlan::recovered`]) and
    /// queued flights, which start running at once.
    pub fn restore(
        node: NodeId,
        directory: Box<dyn Directory>,
        seed: u64,
        now: Now,
        deliveries: Vec<RestoredDelivery>,
        flights: Vec<RestoredFlight>,
    ) -> Router {
        let mut router = Router::new(node, directory, seed);
        for restored in deliveries {
            router.restore_delivery(now, restored);
        }
        for restored in flights {
            router.restore_flight(restored);
        }
        let instances: Vec<String> = router.queues.keys().cloned().collect();
        for instance in instances {
            router.run_next(now, &instance);
        }
        router
    }

    /// This router's node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The next output to act on.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Monotonic ms when [`Router::handle_timeout`] has work, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.deliveries
            .values()
            .filter(|delivery| delivery.ready())
            .map(|delivery| {
                let next = delivery.plan.next_action_at_ms;
                delivery
                    .plan
                    .deadline_ms
                    .map_or(next, |deadline| next.min(deadline))
            })
            .min()
    }

    /// Counters of what peers were refused.
    pub fn refusals(&self) -> RefusalCounts {
        self.refusals
    }

    /// Unfinished deliveries this router originates.
    pub fn deliveries_in_progress(&self) -> usize {
        self.deliveries.len()
    }

    /// Flights this router holds in memory (unfinished).
    pub fn flights_in_progress(&self) -> usize {
        self.flights.len()
    }

    /// The owners of this node's unfinished deliveries, other than itself:
    /// the shell keeps connections to them, or dials them until it can.
    pub fn owners_awaited(&self) -> BTreeSet<NodeId> {
        self.deliveries
            .values()
            .map(|delivery| &delivery.choice.owner)
            .filter(|owner| **owner != self.node)
            .cloned()
            .collect()
    }

    /// A peer's connection came up: deliveries waiting for it go now.
    pub fn handle_peer_up(&mut self, now: Now, peer: NodeId) {
        self.connected.insert(peer.clone());
        let waiting: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, delivery)| delivery.choice.owner == peer)
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            if let Some(delivery) = self.deliveries.get_mut(&id) {
                delivery.plan.next_action_at_ms = delivery.plan.next_action_at_ms.min(now.mono_ms);
            }
            self.step(now, &id);
        }
    }

    /// A peer's connection went down.
    pub fn handle_peer_down(&mut self, peer: &NodeId) {
        self.connected.remove(peer);
    }

    /// Acts on every delivery whose time came.
    pub fn handle_timeout(&mut self, now: Now) {
        let due: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, delivery)| {
                delivery.ready()
                    && (delivery.plan.next_action_at_ms <= now.mono_ms
                        || delivery
                            .plan
                            .deadline_ms
                            .is_some_and(|deadline| deadline <= now.mono_ms))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.step(now, &id);
        }
    }

    /// A commit finished (or, for `wait_for_disk: false`, was queued).
    pub fn handle_persisted(
        &mut self,
        now: Now,
        id: PersistId,
        result: Result<(), PersistFailure>,
    ) {
        let Some(after) = self.persists.remove(&id) else {
            return;
        };
        match after {
            AfterPersist::Submitted { invocation_id } => {
                self.submitted(now, &invocation_id, result.is_ok())
            }
            AfterPersist::Accepted { invocation_id } => self.accepted(now, &invocation_id, result),
            AfterPersist::Rerouted {
                invocation_id,
                choice,
            } => self.rerouted(now, &invocation_id, choice, result.is_ok()),
            AfterPersist::Finished {
                invocation_id,
                event,
            } => self.finished(now, &invocation_id, event, result.is_ok()),
            AfterPersist::FlightFinished {
                invocation_id,
                release,
            } => self.flight_finished(&invocation_id, release, result.is_ok()),
            AfterPersist::Dispatched { invocation_id } => {
                self.dispatched(now, &invocation_id, result.is_ok())
            }
            AfterPersist::Release(outputs) => {
                if result.is_ok() {
                    for output in outputs {
                        self.push(output);
                    }
                }
            }
        }
    }

    /// What the driver must read from its store before handing `frame`
    /// from a peer to [`Router::handle_request`].
    pub fn needs_stored(&self, frame: &MeshFrame) -> Needs {
        match frame {
            // An accept meets the store's unique key, which answers a
            // duplicate at the commit (`PersistFailure::Duplicate`): the
            // stored flight is read first only when the invoke would be
            // refused, since a retry of an id held here is answered even
            // when its agent went away.
            MeshFrame::Invoke(invoke) => Needs {
                flight_when_refused: !self.flights.contains_key(&invoke.invocation_id),
                admission: true,
                ..Needs::default()
            },
            MeshFrame::FlightQuery { invocation_id } | MeshFrame::Cancel { invocation_id } => {
                Needs {
                    flight: !self.flights.contains_key(invocation_id),
                    ..Needs::default()
                }
            }
            MeshFrame::FlightUpdate(update) => Needs {
                delivery_owners: !self.deliveries.contains_key(&update.invocation_id),
                ..Needs::default()
            },
            _ => Needs::default(),
        }
    }

    /// A request from `from` (this node for a local delivery); the answer
    /// comes as [`Output::Reply`] with the returned id.
    pub fn handle_request(
        &mut self,
        now: Now,
        from: NodeId,
        frame: MeshFrame,
        facts: Facts,
    ) -> RequestId {
        let request = self.next_request();
        match frame {
            MeshFrame::Invoke(invoke) if invoke.origin != from => self.reply(
                request,
                MeshFrame::error(
                    ErrorCode::BadInvoke,
                    "an invocation's origin must be its sender",
                ),
            ),
            MeshFrame::Invoke(invoke) => self.handle_invoke(now, request, invoke, facts),
            MeshFrame::FlightUpdate(update) => {
                self.handle_update_from(now, request, &from, update, &facts)
            }
            MeshFrame::FlightQuery { invocation_id } => {
                self.handle_query(request, &from, &invocation_id, facts)
            }
            MeshFrame::Cancel { invocation_id } => {
                self.handle_remote_cancel(now, request, &from, &invocation_id, facts)
            }
            other => self.reply(
                request,
                MeshFrame::error(
                    ErrorCode::UnexpectedFrame,
                    format!("`{}` is not a routing request", other.name()),
                ),
            ),
        }
        request
    }

    fn next_request(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        id
    }

    fn next_persist(&mut self) -> PersistId {
        let id = PersistId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Queues an output. Never dropped: a lost `Persist` would lose
    /// accepted work. The queue stays small because every driver drains it
    /// after each input, and each input adds a bounded number of outputs.
    fn push(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    fn reply(&mut self, request: RequestId, frame: MeshFrame) {
        self.push(Output::Reply { request, frame });
    }

    fn emit(&mut self, invocation_id: &str, kind: EventKind) {
        self.push(Output::Emit(Event {
            invocation_id: invocation_id.to_owned(),
            kind,
            output: None,
            failure: None,
            code: None,
            usage: None,
        }));
    }

    /// Queues a commit and what to do after it.
    fn persist(&mut self, writes: Vec<Write>, wait_for_disk: bool, after: AfterPersist) {
        let id = self.next_persist();
        self.persists.insert(id, after);
        self.push(Output::Persist {
            id,
            writes,
            wait_for_disk,
        });
    }

    fn send(&mut self, to: NodeId, frame: MeshFrame, sent: Sent) {
        let request = self.next_request();
        self.requests.insert(request, sent);
        self.push(Output::Send { request, to, frame });
    }

    /// Jitter in 0..1 from the router's own PRNG.
    fn jitter(&mut self) -> f64 {
        self.rng.unit()
    }

    /// Whether `peer` can be reached now (this node always can).
    fn reachable(&self, peer: &NodeId) -> bool {
        *peer == self.node || self.connected.contains(peer)
    }
}

/// A deadline in unix ms as a point on the monotonic clock of `now`.
fn mono_deadline(now: Now, deadline_unix_ms: Option<u64>) -> Option<u64> {
    deadline_unix_ms.map(|deadline| {
        now.mono_ms
            .saturating_add(deadline.saturating_sub(now.unix_ms))
    })
}
