//! The routing driver: the one task that owns the pure routing core
//! ([`scout_mesh::routing::Router`]) and carries out what it decides.
//!
//! Inputs reach it as [`Command`]s (API calls, peer requests, execution
//! progress) and as completions of the work it started (commits, answers
//! from peers), plus time and peer connectivity. After each input it
//! drains the core's outputs in order:
//!
//! - `Persist`: the rows go to the store's writer in order; what depends
//!   on them is released by the core only when the driver reports the
//!   commit (at once for rows whose policy does not wait for the disk:
//!   they are queued ahead of every later write).
//! - `Send`: to a peer through `Mesh::request`; to this node, straight back
//!   into the core (a local delivery is an ordinary send to self).
//! - `Reply`, `Execute`, `StopExecution`, `Emit`, `Refused`.
//!
//! Commits and requests in flight are futures the driver polls itself (a
//! completion wakes it directly); the tasks it starts (execution
//! forwarders, work-order updates) live in its own `JoinSet`. Both are
//! dropped or shut down and joined when the driver stops; the driver itself
//! is joined by the broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use scout_mesh::lifecycle::DeliveryState;
use scout_mesh::routing::{
    self as core, CancelStarted, Event, EventKind, ExecProgress, Execute, Facts, Now, Output,
    PersistFailure, PersistId, RefusalCounts, RefusedKind, RequestId, SendFailure, Submission,
};
use scout_mesh::wire::{MeshFrame, NodeId};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::{RouteError, RouterParts, RoutingEvent};
use crate::api::{self, EventState};
use crate::daemon::mesh::Mesh;
use crate::daemon::mesh::reachability::Reachability;
use crate::daemon::runs::{self, LocalRuns, StartContext};
use crate::env::Env;
use crate::store::{Store, StoreError};

/// Commands queued for the driver at most; callers wait (API requests,
/// peers' streams, execution output) rather than grow memory.
pub const COMMANDS_MAX: usize = 4096;

/// How often the driver looks at peer connectivity and the plans' timers.
/// No plan acts sooner than `RETRY_BACKOFF_MS_MIN` after its last step.
const TICK: Duration = Duration::from_millis(50);

const _: () = assert!(TICK.as_millis() as u64 <= scout_mesh::routing::RETRY_BACKOFF_MS_MIN);

/// A refused peer is logged at most once per this interval.
const REFUSAL_LOG_INTERVAL_MS: u64 = 60_000;

/// Peers remembered for that rate limit at most; past it the memory is
/// cleared (a flood of distinct peers gets a few more lines, never memory).
const REFUSAL_LOG_PEERS_MAX: usize = 1024;

/// An input for the driver.
#[derive(Debug)]
pub enum Command {
    /// A new invocation mentioned here; answered once committed.
    Submit {
        /// Resolved and minted by the caller.
        submission: Submission,
        /// Told the first delivery state past `accepted`/`deferred`.
        acknowledged: Option<oneshot::Sender<DeliveryState>>,
        /// Told when the invocation is committed (or why not).
        reply: oneshot::Sender<Result<(), RouteError>>,
    },
    /// Cancel an invocation; answered when it has ended here.
    Cancel {
        /// The invocation.
        invocation_id: String,
        /// Told when done.
        reply: oneshot::Sender<Result<(), RouteError>>,
    },
    /// A routing request from a connected peer.
    Request {
        /// The peer.
        from: NodeId,
        /// The request.
        frame: MeshFrame,
        /// Told the answer.
        reply: oneshot::Sender<MeshFrame>,
    },
    /// Progress of an execution the core asked for.
    Exec {
        /// The invocation.
        invocation_id: String,
        /// What happened.
        progress: ExecProgress,
    },
    /// Look at connectivity and timers now.
    Kick,
}

/// What a task of the driver ended with.
enum Completion {
    Persisted {
        id: PersistId,
        result: Result<Result<(), PersistFailure>, StoreError>,
        submit: Option<String>,
        /// Flights whose end the rows record.
        finished: Vec<String>,
    },
    Response {
        request: RequestId,
        answer: Result<MeshFrame, SendFailure>,
    },
    Done,
}

/// The driver: the core and everything waiting on it.
pub struct Driver {
    core: core::Router,
    store: Store,
    mesh: Mesh,
    node_id: NodeId,
    runs: LocalRuns,
    commands: mpsc::Sender<Command>,
    inbox: mpsc::Receiver<Command>,
    events: broadcast::Sender<RoutingEvent>,
    refusals: Arc<Mutex<RefusalCounts>>,
    tasks: JoinSet<Completion>,
    /// Commits and requests in flight, polled by the driver itself: each
    /// completion wakes the driver directly, without a task in between.
    pending: FuturesUnordered<BoxFuture<'static, Completion>>,
    /// Peers' requests waiting for the core's reply.
    replies: HashMap<RequestId, oneshot::Sender<MeshFrame>>,
    /// Requests to self: the core's inbound id -> its outbound id.
    local: HashMap<RequestId, RequestId>,
    submits: HashMap<String, oneshot::Sender<Result<(), RouteError>>>,
    acknowledged: HashMap<String, oneshot::Sender<DeliveryState>>,
    cancels: HashMap<String, Vec<oneshot::Sender<Result<(), RouteError>>>>,
    /// Cancels of flights owned here (no delivery here), by invocation.
    flight_cancels: HashMap<String, Vec<oneshot::Sender<Result<(), RouteError>>>>,
    /// Executions running, by invocation: send to stop one.
    running: HashMap<String, oneshot::Sender<()>>,
    /// Peers reachable at the last look (see `refresh_peers`).
    reachable: Reachability,
    env: Env,
    refusal_log: HashMap<NodeId, u64>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("node", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Rebuilds the core from the store: unfinished deliveries (which never
    /// reroute) and queued flights (which start at once).
    pub fn start(
        parts: RouterParts,
        commands: mpsc::Sender<Command>,
        inbox: mpsc::Receiver<Command>,
        events: broadcast::Sender<RoutingEvent>,
        refusals: Arc<Mutex<RefusalCounts>>,
    ) -> anyhow::Result<Driver> {
        let (deliveries, flights) = parts.store.read(crate::store::routing_rows::restore)?;
        if !deliveries.is_empty() {
            tracing::info!(
                deliveries = deliveries.len(),
                "resuming unfinished deliveries"
            );
        }
        if !flights.is_empty() {
            tracing::info!(flights = flights.len(), "resuming queued flights");
        }
        let now = Now {
            mono_ms: parts.env.now_mono_ms(),
            unix_ms: parts.env.now_unix_ms(),
        };
        let directory = crate::daemon::mesh::directory::MeshDirectory {
            mesh: parts.mesh.clone(),
            own: parts.node_id.clone(),
        };
        let core = core::Router::restore(
            parts.node_id.clone(),
            Box::new(directory),
            parts.env.random_u64(),
            now,
            deliveries,
            flights,
        );
        Ok(Driver {
            core,
            store: parts.store,
            mesh: parts.mesh,
            node_id: parts.node_id,
            runs: parts.runs,
            commands,
            inbox,
            events,
            refusals,
            tasks: JoinSet::new(),
            pending: FuturesUnordered::new(),
            replies: HashMap::new(),
            local: HashMap::new(),
            submits: HashMap::new(),
            acknowledged: HashMap::new(),
            cancels: HashMap::new(),
            flight_cancels: HashMap::new(),
            running: HashMap::new(),
            reachable: Reachability::default(),
            env: parts.env.clone(),
            refusal_log: HashMap::new(),
        })
    }

    /// Runs until shutdown, then stops and joins every task it started.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.refresh_peers();
        // Plans act on the tick: retries, deferrals, queries and deadlines
        // are all at least `RETRY_BACKOFF_MS_MIN` apart, so looking every
        // `TICK` costs them at most that much, and the driver never scans
        // every delivery after every event (thousands may wait for their
        // answers while acknowledgements stream in).
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.drain().await;
            // Biased: the branches are looked at in this order, so a
            // simulated run of one seed takes the same path every time
            // (an unbiased select draws from a random source). Timers
            // first, completions before new commands, so a flood of
            // requests waits in the bounded inbox rather than starving
            // the work already under way.
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tick.tick() => {
                    self.refresh_peers();
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    self.completed(done);
                }
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match done {
                        Ok(completion) => self.completed(completion),
                        Err(err) if err.is_panic() => {
                            tracing::error!(cause = %err, "a routing task panicked");
                        }
                        Err(_) => {}
                    }
                }
                Some(command) = self.inbox.recv() => self.command(command),
            }
        }
        // Executions are not cancelled: an agent held by a holder goes on
        // working for the next broker to carry on, and the runtime's own
        // shutdown stops those the broker holds itself.
        self.running.clear();
        self.tasks.shutdown().await;
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: self.env.now_mono_ms(),
            unix_ms: self.env.now_unix_ms(),
        }
    }

    /// Tells the core which peers came and went since the last look, and
    /// asks the mesh to keep connections to the owners it waits on.
    fn refresh_peers(&mut self) {
        self.look_at_peers(false);
    }

    /// [`Driver::refresh_peers`]; `dialable_now` also reads the dialable
    /// members when they were read less than an interval ago (a submit to
    /// an owner not known reachable).
    fn look_at_peers(&mut self, dialable_now: bool) {
        self.mesh.want(self.core.owners_awaited());
        let changes = self
            .reachable
            .look(&self.mesh, self.env.now_mono_ms(), dialable_now);
        let now = self.now();
        for peer in changes.gone {
            self.core.handle_peer_down(&peer);
        }
        for peer in changes.came {
            self.core.handle_peer_up(now, peer);
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Submit {
                submission,
                acknowledged,
                reply,
            } => {
                // The owner's connection may have come up since the last
                // look: a new delivery goes at once, not after a deferral.
                let owner = &submission.choice.owner;
                if *owner != self.node_id && !self.reachable.contains(owner) {
                    self.look_at_peers(true);
                }
                let id = submission.invocation.invocation_id.clone();
                self.submits.insert(id.clone(), reply);
                if let Some(acknowledged) = acknowledged {
                    self.acknowledged.insert(id, acknowledged);
                }
                self.core.handle_submit(now, submission);
            }
            Command::Cancel {
                invocation_id,
                reply,
            } => match self.core.handle_cancel(now, &invocation_id) {
                CancelStarted::Delivery => {
                    self.cancels.entry(invocation_id).or_default().push(reply);
                }
                CancelStarted::Flight => {
                    // Answered once the cancellation is recorded.
                    self.flight_cancels
                        .entry(invocation_id)
                        .or_default()
                        .push(reply);
                }
                CancelStarted::NotHere => {
                    // One that finished is cancelled already, as far as a
                    // caller is concerned; one never seen is not found.
                    let id = invocation_id.clone();
                    let known = self
                        .store
                        .read(move |c| crate::store::flights::Flight::get_for_invocation(c, &id));
                    let _ = reply.send(match known {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err(RouteError::UnknownInvocation(invocation_id)),
                        Err(err) => Err(RouteError::Store(err)),
                    });
                }
            },
            Command::Request { from, frame, reply } => {
                let facts = self.facts(&frame);
                let inbound = self.core.handle_request(now, from, frame, facts);
                self.replies.insert(inbound, reply);
            }
            Command::Exec {
                invocation_id,
                progress,
            } => {
                if matches!(progress, ExecProgress::Finished(_)) {
                    self.running.remove(&invocation_id);
                }
                self.core.handle_exec(now, &invocation_id, progress);
            }
            Command::Kick => {
                self.refresh_peers();
                self.core.handle_timeout(now);
            }
        }
    }

    fn completed(&mut self, completion: Completion) {
        match completion {
            Completion::Persisted {
                id,
                result,
                submit,
                finished,
            } => {
                if matches!(result, Ok(Ok(()))) {
                    self.forget(&finished);
                }
                self.persisted(id, result, submit);
            }
            Completion::Response { request, answer } => {
                let now = self.now();
                self.core.handle_response(now, request, answer);
            }
            Completion::Done => {}
        }
    }

    fn persisted(
        &mut self,
        id: PersistId,
        result: Result<Result<(), PersistFailure>, StoreError>,
        submit: Option<String>,
    ) {
        let result = match result {
            Ok(result) => result,
            Err(err) => {
                tracing::error!(cause = %err, "a routing commit failed");
                let failure = PersistFailure::Store {
                    code: err.code().to_owned(),
                    message: err.to_string(),
                };
                if let Some(waiter) = submit.and_then(|id| self.submits.remove(&id)) {
                    let _ = waiter.send(Err(RouteError::Store(err)));
                }
                Err(failure)
            }
        };
        let now = self.now();
        self.core.handle_persisted(now, id, result);
    }

    /// Carries out the core's outputs until it has none.
    async fn drain(&mut self) {
        while let Some(output) = self.core.poll_output() {
            self.act(output).await;
        }
    }

    async fn act(&mut self, output: Output) {
        match output {
            Output::Persist {
                id,
                writes,
                wait_for_disk,
            } => self.persist(id, writes, wait_for_disk).await,
            Output::Send { request, to, frame } if to == self.node_id => {
                let facts = self.facts(&frame);
                let now = self.now();
                let inbound = self
                    .core
                    .handle_request(now, self.node_id.clone(), frame, facts);
                self.local.insert(inbound, request);
            }
            Output::Send { request, to, frame } => {
                let mesh = self.mesh.clone();
                self.pending.push(Box::pin(async move {
                    let answer = mesh
                        .request(&to, &frame)
                        .await
                        .map_err(|detail| SendFailure { detail });
                    Completion::Response { request, answer }
                }));
            }
            Output::Reply { request, frame } => {
                if let Some(outbound) = self.local.remove(&request) {
                    let now = self.now();
                    self.core.handle_response(now, outbound, Ok(frame));
                } else if let Some(reply) = self.replies.remove(&request) {
                    let _ = reply.send(frame);
                }
            }
            Output::Execute(execute) => self.execute(execute),
            Output::StopExecution { invocation_id } => {
                if let Some(cancel) = self.running.remove(&invocation_id) {
                    let _ = cancel.send(());
                }
            }
            Output::Emit(event) => self.emit(event),
            Output::Refused {
                peer,
                invocation_id,
                kind,
            } => {
                *self
                    .refusals
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = self.core.refusals();
                let now = self.now().unix_ms;
                if self.may_log_refusal(&peer, now) {
                    match kind {
                        RefusedKind::Update => {
                            tracing::warn!(%peer, invocation = %invocation_id, "dropped a flight update from a peer that is not the invocation's owner (logged once a minute per peer)")
                        }
                        RefusedKind::Request => {
                            tracing::warn!(%peer, invocation = %invocation_id, "refused a flight query or cancel from a peer that is not the invocation's origin (logged once a minute per peer)")
                        }
                    }
                }
            }
        }
    }

    /// A flight's end is committed: its execution's keepsakes go (a held
    /// turn's journal; see [`crate::holder::journal`]).
    fn forget(&self, finished: &[String]) {
        for invocation_id in finished {
            self.runs.executor.forget(invocation_id);
        }
    }

    async fn persist(&mut self, id: PersistId, writes: Vec<core::Write>, wait_for_disk: bool) {
        let submit = writes.iter().find_map(|write| match write {
            core::Write::Submit { invocation, .. } => Some(invocation.invocation_id.clone()),
            _ => None,
        });
        let finished: Vec<String> = writes
            .iter()
            .filter_map(|write| match write {
                core::Write::FinishFlight { invocation_id, .. } => Some(invocation_id.clone()),
                _ => None,
            })
            .collect();
        let env = self.env.clone();
        let queued = self
            .store
            .enqueue(move |tx| crate::store::routing_rows::commit(tx, &env, &writes))
            .await;
        let pending = match queued {
            Ok(pending) => pending,
            Err(err) => {
                self.persisted(id, Err(err), submit);
                return;
            }
        };
        if wait_for_disk {
            self.pending.push(Box::pin(async move {
                Completion::Persisted {
                    id,
                    result: pending.await,
                    submit,
                    finished,
                }
            }));
        } else {
            // Queued in order ahead of every later write, and not waited
            // for: the policy does not ask for the disk.
            let executor = self.runs.executor.clone();
            self.pending.push(Box::pin(async move {
                match pending.await {
                    Ok(Ok(())) => {
                        for invocation_id in &finished {
                            executor.forget(invocation_id);
                        }
                    }
                    Ok(Err(_)) => {}
                    Err(err) => {
                        tracing::warn!(cause = %err, "routing rows of a policy that does not wait for the disk were not stored");
                    }
                }
                Completion::Done
            }));
            self.persisted(id, Ok(Ok(())), None);
        }
    }

    /// What the core asked to know about the invocation `frame` names.
    fn facts(&self, frame: &MeshFrame) -> Facts {
        let needs = self.core.needs_stored(frame);
        let id = match frame {
            MeshFrame::Invoke(invoke) => invoke.invocation_id.clone(),
            MeshFrame::FlightQuery { invocation_id } | MeshFrame::Cancel { invocation_id } => {
                invocation_id.clone()
            }
            MeshFrame::FlightUpdate(update) => update.invocation_id.clone(),
            _ => return Facts::default(),
        };
        let mut facts = if needs.flight || needs.delivery_owners {
            // A failed read leaves the facts empty: an accept then meets the
            // store's unique key, which answers a duplicate all the same.
            self.store
                .read(|connection| crate::store::routing_rows::facts(connection, &id, needs))
                .unwrap_or_default()
        } else {
            Facts::default()
        };
        if needs.admission
            && let MeshFrame::Invoke(invoke) = frame
        {
            facts.admission = self.runs.admission(invoke);
            if facts.admission.is_err() && needs.flight_when_refused {
                let needs = core::Needs {
                    flight: true,
                    ..core::Needs::default()
                };
                facts.flight = self
                    .store
                    .read(|connection| crate::store::routing_rows::facts(connection, &id, needs))
                    .unwrap_or_default()
                    .flight;
            }
        }
        facts
    }

    fn execute(&mut self, execute: Execute) {
        let now = self.now();
        let id = execute.invocation_id.clone();
        let origin_node = if execute.origin == self.node_id {
            Some(self.runs.node_name.to_string())
        } else {
            self.mesh
                .peers()
                .into_iter()
                .find(|peer| peer.node_id == execute.origin.to_string())
                .map(|peer| peer.name)
        };
        let context = StartContext {
            now_unix_ms: now.unix_ms,
            origin_node,
            default_timeout: Duration::from_millis(super::DEFAULT_DEADLINE_MS),
        };
        let execution = match self.runs.start(execute, context) {
            Ok(execution) => execution,
            Err(result) => {
                self.core
                    .handle_exec(now, &id, ExecProgress::Finished(result));
                return;
            }
        };
        self.running.insert(id.clone(), execution.cancel);
        let commands = self.commands.clone();
        self.tasks.spawn(async move {
            let send = |progress: ExecProgress| {
                let commands = commands.clone();
                let invocation_id = id.clone();
                async move {
                    let _ = commands
                        .send(Command::Exec {
                            invocation_id,
                            progress,
                        })
                        .await;
                }
            };
            runs::forward(execution.events, send).await;
            Completion::Done
        });
    }

    fn emit(&mut self, event: Event) {
        let id = event.invocation_id.clone();
        if let EventKind::Delivery(state) = event.kind {
            if state == DeliveryState::Accepted
                && let Some(waiter) = self.submits.remove(&id)
            {
                let _ = waiter.send(Ok(()));
            }
            if !matches!(state, DeliveryState::Accepted | DeliveryState::Deferred)
                && let Some(waiter) = self.acknowledged.remove(&id)
            {
                let _ = waiter.send(state);
            }
            if state.is_terminal() {
                // A work order follows its invocation; whoever cancelled
                // hears back once the work order shows it too.
                let cancels = self.cancels.remove(&id).unwrap_or_default();
                let store = self.store.clone();
                let now = self.now().unix_ms;
                let finished = id.clone();
                self.tasks.spawn(async move {
                    crate::store::work_orders::follow_delivery(&store, now, &finished, state).await;
                    for waiter in cancels {
                        let _ = waiter.send(Ok(()));
                    }
                    Completion::Done
                });
            }
        }
        if let EventKind::Flight(state) = event.kind
            && state.is_terminal()
        {
            for waiter in self.flight_cancels.remove(&id).unwrap_or_default() {
                let _ = waiter.send(Ok(()));
            }
        }
        let (kind, state) = match event.kind {
            EventKind::Delivery(state) => {
                (api::EventKind::Delivery, Some(EventState::Delivery(state)))
            }
            EventKind::Flight(state) => (api::EventKind::Flight, Some(EventState::Flight(state))),
            EventKind::Output => (api::EventKind::Output, None),
        };
        let _ = self.events.send(RoutingEvent {
            invocation_id: id,
            kind,
            state,
            output: event.output,
            failure_reason: event.failure.as_ref().map(|(reason, _)| *reason),
            detail: event.failure.map(|(_, detail)| detail),
            timestamp_ms: self.now().unix_ms,
            failure_code: event.code,
            usage: event.usage,
        });
    }

    fn may_log_refusal(&mut self, peer: &NodeId, now_ms: u64) -> bool {
        if let Some(at) = self.refusal_log.get(peer)
            && now_ms.saturating_sub(*at) < REFUSAL_LOG_INTERVAL_MS
            // A clock that stepped back must not silence the peer forever.
            && now_ms >= *at
        {
            return false;
        }
        if self.refusal_log.len() >= REFUSAL_LOG_PEERS_MAX && !self.refusal_log.contains_key(peer) {
            self.refusal_log.clear();
        }
        self.refusal_log.insert(peer.clone(), now_ms);
        true
    }
}
