//! Routing: a mention typed on one broker runs on the broker that owns the
//! instance it resolves to, and the answer comes back.
//!
//! Every decision (send, retry, defer, reroute, accept, run, report, the
//! exactly-once rules) is made by the pure routing core,
//! [`scout_mesh::routing::Router`]. This directory is its driver and the
//! broker's face to it:
//!
//! - this file: [`Router`], the handle the API, the CLI's broker and
//!   netsim use (submit, cancel, subscribe), and start-up.
//! - [`driver`]: the one task that owns the core, feeds it inputs (API
//!   calls, peer requests, answers, commits, execution progress, peer
//!   connectivity, time) and carries out its outputs; joined at shutdown.
//!
//! Beside it, clients and seams of the router that are not the driver:
//! what a caller asks and how it becomes a submission the core takes
//! (`daemon::submissions`: checks, resolution, the mention chain, ids),
//! where a mention goes and which owners are reachable
//! (`daemon::mesh::directory`, `daemon::mesh::reachability`),
//! the core's rows as SQLite statements (`store::routing_rows`), this
//! machine's side of the work (`daemon::runs`: admission, starting an
//! execution through the executor seam, `daemon::executor`), work orders
//! (`daemon::work_orders`, a client of the router like the API, started
//! by the broker; the driver only tells the store when a delivery ends),
//! flight views (`daemon::flight_views`) and usage across the mesh
//! (`daemon::usage`). None of them is used by the driver except `runs`,
//! the executor seam and the rows, so the files have no cycle.
//!
//! Architecture invariant: every step that says "accepted" has been
//! committed first (the driver releases what depends on a `Persist` only
//! after its commit); the owner's store is the queue, so a restart loses
//! nothing and an id never runs twice. Nothing here reaches into the
//! mesh's connections or its shared state: the driver uses the mesh's
//! narrow API only (`request`, `connected`, `dialable_members`, `want`,
//! and `peers` for an origin's name).

pub mod driver;

use std::sync::{Arc, Mutex};

use scout_mesh::lifecycle::DeliveryState;
use scout_mesh::names::AgentName;
use scout_mesh::routing::Choice;
use scout_mesh::wire::{ErrorCode, MeshFrame, NodeId};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::mesh::{Mesh, directory};
pub use super::submissions::{
    CALLER_ID_CHARS_MAX, DEFAULT_DEADLINE_MS, RouteError, SubmitRequest, check_caller_id,
};
pub use crate::api::{
    AttemptView, DeliveryView, EventKind, EventState, FlightView, InvocationStatus, InvocationView,
    RoutingEvent, Submitted,
};
use crate::daemon::runs::LocalRuns;
use crate::daemon::submissions;
use crate::env::Env;
use crate::store::Store;
use driver::Command;

/// Routing events buffered for slow subscribers; one that falls further
/// behind loses the oldest (it is told so) instead of growing memory.
pub const EVENTS_BUFFER_MAX: usize = 1024;

/// The router: a handle to the driver task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    pub(crate) store: Store,
    pub(crate) mesh: Mesh,
    pub(crate) node_id: NodeId,
    /// Time, randomness and ids (the broker's environment).
    pub(crate) env: Env,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<RoutingEvent>,
    refusals: Arc<Mutex<scout_mesh::routing::RefusalCounts>>,
    /// One usage query read at a time (see [`crate::daemon::usage::USAGE_READS_AT_ONCE`]).
    pub(crate) usage_reads: Arc<tokio::sync::Semaphore>,
}

/// Everything the router needs from the broker.
#[derive(Debug)]
pub struct RouterParts {
    /// The store.
    pub store: Store,
    /// The mesh.
    pub mesh: Mesh,
    /// This node.
    pub node_id: NodeId,
    /// This machine's agents and what runs work on them.
    pub runs: LocalRuns,
    /// The broker's environment: clocks, retry jitter, ids.
    pub env: Env,
}

impl Router {
    /// Starts routing: rebuilds the core from the store (unfinished
    /// deliveries, queued flights) and spawns the driver into `tasks`,
    /// which the broker joins at shutdown.
    pub async fn start(
        parts: RouterParts,
        shutdown: watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<Router> {
        let (commands, inbox) = mpsc::channel(driver::COMMANDS_MAX);
        let router = Router {
            store: parts.store.clone(),
            mesh: parts.mesh.clone(),
            node_id: parts.node_id.clone(),
            env: parts.env.clone(),
            commands,
            events: broadcast::channel(EVENTS_BUFFER_MAX).0,
            refusals: Arc::new(Mutex::new(Default::default())),
            usage_reads: Arc::new(tokio::sync::Semaphore::new(
                crate::daemon::usage::USAGE_READS_AT_ONCE,
            )),
        };
        let driver = driver::Driver::start(
            parts,
            router.commands.clone(),
            inbox,
            router.events.clone(),
            router.refusals.clone(),
        )?;
        tasks.spawn(driver.run(shutdown));
        Ok(router)
    }

    /// Resolves, commits and starts routing an invocation.
    pub async fn submit(&self, request: SubmitRequest) -> Result<Submitted, RouteError> {
        self.submit_with(self.env.new_id(), request, None).await
    }

    /// [`Router::submit`] under an invocation id the caller minted (a work
    /// order claims its id before it submits).
    pub(crate) async fn submit_as(
        &self,
        invocation_id: String,
        request: SubmitRequest,
    ) -> Result<Submitted, RouteError> {
        self.submit_with(invocation_id, request, None).await
    }

    /// [`Router::submit`], then waits until the delivery leaves `accepted`
    /// and `deferred`: the owner acknowledged it (`peer_acked` or later), or
    /// it ended (`failed`, `cancelled`). Returns the state it moved to
    /// (`failed` too when the broker stops first).
    pub async fn submit_acknowledged(
        &self,
        request: SubmitRequest,
    ) -> Result<(Submitted, DeliveryState), RouteError> {
        let (acknowledged, moved) = oneshot::channel();
        let submitted = self
            .submit_with(self.env.new_id(), request, Some(acknowledged))
            .await?;
        let state = moved.await.unwrap_or(DeliveryState::Failed);
        Ok((submitted, state))
    }

    async fn submit_with(
        &self,
        invocation_id: String,
        request: SubmitRequest,
        acknowledged: Option<oneshot::Sender<DeliveryState>>,
    ) -> Result<Submitted, RouteError> {
        let (submission, submitted) =
            submissions::prepare(&self.mesh, &self.env, &self.node_id, invocation_id, request)?;
        let (reply, committed) = oneshot::channel();
        self.command(Command::Submit {
            submission,
            acknowledged,
            reply,
        })
        .await?;
        committed.await.map_err(|_| stopping())??;
        Ok(submitted)
    }

    /// Cancels an invocation: at its owner, and here.
    pub async fn cancel(&self, invocation_id: &str) -> Result<(), RouteError> {
        let (reply, done) = oneshot::channel();
        self.command(Command::Cancel {
            invocation_id: invocation_id.to_owned(),
            reply,
        })
        .await?;
        done.await.map_err(|_| stopping())?
    }

    /// Answers a routing request from a connected peer. A usage query is
    /// a read of this broker's store, answered here without the core.
    pub async fn handle_peer_request(&self, from: NodeId, frame: MeshFrame) -> MeshFrame {
        if let MeshFrame::UsageQuery(query) = &frame {
            return self.answer_usage_query(query).await;
        }
        let (reply, answer) = oneshot::channel();
        if self
            .command(Command::Request { from, frame, reply })
            .await
            .is_err()
        {
            return MeshFrame::error(ErrorCode::NotReady, "this broker is stopping");
        }
        answer
            .await
            .unwrap_or_else(|_| MeshFrame::error(ErrorCode::NotReady, "this broker is stopping"))
    }

    /// Resolves a mention to an instance and its owner.
    pub fn choose(&self, query: &AgentName, exclude: Option<&str>) -> Result<Choice, RouteError> {
        Ok(directory::choose(
            &self.mesh,
            &self.node_id,
            query,
            exclude,
        )?)
    }

    /// Flight updates dropped and flight requests refused because the peer
    /// was not the invocation's owner or origin.
    pub fn refusal_counts(&self) -> scout_mesh::routing::RefusalCounts {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Routing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RoutingEvent> {
        self.events.subscribe()
    }

    /// Wakes the driver (a peer connected, say).
    pub fn kick(&self) {
        let _ = self.commands.try_send(Command::Kick);
    }

    /// The store routing writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Wall-clock unix ms, as the broker tells time.
    pub fn now_ms(&self) -> u64 {
        self.env.now_unix_ms()
    }

    async fn command(&self, command: Command) -> Result<(), RouteError> {
        self.commands.send(command).await.map_err(|_| stopping())
    }
}

/// The error of a call that reached a router that is stopping.
fn stopping() -> RouteError {
    RouteError::Stopping
}
