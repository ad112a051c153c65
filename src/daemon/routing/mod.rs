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
//! - [`resolve`]: where a mention goes, from the replicated registry.
//!
//! Beside it, clients and seams of the router that are not the driver:
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
pub mod resolve;

use std::sync::{Arc, Mutex};

use scout_mesh::lifecycle::{DeliveryPolicy, DeliveryState, InvocationAction};
use scout_mesh::names::AgentName;
use scout_mesh::routing::{Choice, Invocation, Submission};
use scout_mesh::wire::{ErrorCode, INVOKE_BODY_BYTES_MAX, MeshFrame, NodeId};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::mesh::Mesh;
pub use crate::api::{
    AttemptView, DeliveryView, EventKind, EventState, FlightView, InvocationStatus, InvocationView,
    RoutingEvent, Submitted,
};
use crate::daemon::runs::LocalRuns;
use crate::env::Env;
use crate::store::Store;
use driver::Command;

/// Routing events buffered for slow subscribers; one that falls further
/// behind loses the oldest (it is told so) instead of growing memory.
pub const EVENTS_BUFFER_MAX: usize = 1024;

/// Default time an invocation may take when the caller gives no deadline.
pub const DEFAULT_DEADLINE_MS: u64 = 10 * 60 * 1000;

/// What the caller asks to run.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// A mention: `@fabric`, `@fabric@devbox`, `@fabric#main`, a full name.
    pub target: String,
    /// The prompt.
    pub body: String,
    /// What is asked.
    pub action: InvocationAction,
    /// How hard to try.
    pub policy: DeliveryPolicy,
    /// Unix ms after which the work is no longer wanted.
    pub deadline_ms: Option<u64>,
    /// The conversation to add it to (a new one when absent).
    pub conversation_id: Option<String>,
    /// Who asked (for the conversation).
    pub author: String,
    /// The agent instance that sends it, when an agent does (through its
    /// credential); absent for a person.
    pub from: Option<String>,
    /// The causal chain of the invocation the sender is running, which
    /// this one extends (empty for a person or an agent between turns).
    pub parent_chain: Vec<String>,
    /// The sender of the invocation the agent is running, when this one is
    /// in the same conversation: mentioning it back is a reply, which goes
    /// back down the chain instead of closing a loop.
    pub reply_to: Option<String>,
}

/// Why routing refused a request.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The target is not a valid name.
    #[error(transparent)]
    InvalidName(#[from] scout_mesh::names::NameError),
    /// Nothing matches the target.
    #[error(transparent)]
    NotFound(#[from] scout_mesh::resolve::ResolveError),
    /// The body is too large.
    #[error("the message is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No such invocation.
    #[error("no invocation `{0}`")]
    UnknownInvocation(String),
    /// An id given by the caller (a conversation to continue) is not one
    /// this broker could have made.
    #[error("{0}")]
    InvalidId(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The broker is stopping.
    #[error("the broker is stopping")]
    Stopping,
    /// The mention would loop or chain too deep (`MENTION_LOOP`).
    #[error(transparent)]
    MentionLoop(#[from] scout_mesh::mention::MentionLoop),
}

impl RouteError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            RouteError::InvalidName(err) => err.code(),
            RouteError::NotFound(err) => err.code(),
            RouteError::TooLarge { .. } => "BODY_TOO_LARGE",
            RouteError::UnknownInvocation(_) => "INVOCATION_NOT_FOUND",
            RouteError::InvalidId(_) => "INVALID_ID",
            RouteError::Store(err) => err.code(),
            RouteError::Stopping => "STOPPING",
            RouteError::MentionLoop(err) => err.code(),
        }
    }
}

/// Characters an id given by a caller may have at most: the ids brokers
/// mint are UUIDs (36 characters); room for other tools' ids, not for text.
pub const CALLER_ID_CHARS_MAX: usize = 128;

/// Checks an id a caller supplies (`conversation_id`): 1 to
/// [`CALLER_ID_CHARS_MAX`] of `A-Za-z0-9._:-`, not starting with `.`, so it
/// can never carry a path, a control character or a terminal escape into
/// the store, the logs or another broker.
pub fn check_caller_id(field: &str, id: &str) -> Result<(), RouteError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if id.is_empty()
        || id.len() > CALLER_ID_CHARS_MAX
        || id.starts_with('.')
        || !id.chars().all(allowed)
    {
        return Err(RouteError::InvalidId(format!(
            "`{field}` must be 1 to {CALLER_ID_CHARS_MAX} characters of A-Z, a-z, 0-9, `.`, `_`, `:` and `-`, not starting with `.`"
        )));
    }
    Ok(())
}

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
        if request.body.len() > INVOKE_BODY_BYTES_MAX {
            return Err(RouteError::TooLarge {
                len: request.body.len(),
                max: INVOKE_BODY_BYTES_MAX,
            });
        }
        if let Some(conversation_id) = &request.conversation_id {
            check_caller_id("conversation_id", conversation_id)?;
        }
        let query = AgentName::parse_lenient(&request.target)?;
        let choice = self.choose(&query, None)?;
        // Refused here, before anything is stored, so a loop leaves no
        // invocation behind; the owner checks the chain again.
        let chain = if request.reply_to.as_deref() == Some(choice.instance.as_str()) {
            scout_mesh::mention::reply(&request.parent_chain, &choice.instance)
        } else {
            scout_mesh::mention::extend(
                &request.parent_chain,
                request.from.as_deref(),
                &choice.instance,
                scout_mesh::mention::MENTION_DEPTH_MAX,
            )?
        };
        let now = self.now_ms();
        let invocation = Invocation {
            invocation_id,
            action: request.action,
            body: request.body,
            conversation_id: Some(request.conversation_id.unwrap_or_else(|| self.env.new_id())),
            origin: self.node_id.clone(),
            target: query.to_string(),
            deadline_unix_ms: Some(
                request
                    .deadline_ms
                    .unwrap_or(now.saturating_add(DEFAULT_DEADLINE_MS)),
            ),
            policy: request.policy,
            created_unix_ms: now,
            from: request.from,
            chain,
        };
        let submitted = Submitted {
            invocation_id: invocation.invocation_id.clone(),
            delivery_id: self.env.new_id(),
            instance: choice.instance.clone(),
            reason: choice.reason.clone(),
            owner: choice.owner.to_string(),
            conversation_id: invocation.conversation_id.clone().unwrap_or_default(),
        };
        let submission = Submission {
            invocation,
            delivery_id: submitted.delivery_id.clone(),
            choice,
            logical: !query.is_fully_qualified(),
            author: request.author,
        };
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
        resolve::choose(&self.mesh, &self.node_id, query, exclude)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_are_plain_tokens() {
        for good in [
            "0192a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b",
            "conv_1",
            "a:b.c-d",
            "x",
        ] {
            assert!(check_caller_id("conversation_id", good).is_ok(), "{good}");
        }
        let long = "a".repeat(CALLER_ID_CHARS_MAX + 1);
        for bad in [
            "",
            " ",
            "../..",
            ".hidden",
            "a/b",
            "a\u{1b}[2J",
            "a\0b",
            "tab\t",
            long.as_str(),
        ] {
            let err = check_caller_id("conversation_id", bad).unwrap_err();
            assert_eq!(err.code(), "INVALID_ID", "{bad:?}");
        }
    }
}
