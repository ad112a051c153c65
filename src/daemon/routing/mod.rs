//! Routing: a mention typed on one broker runs on the broker that owns the
//! instance it resolves to, and the answer comes back.
//!
//! Code map:
//! - this file: [`Router`] (submit, cancel, the views behind `scout flights`
//!   and the API), the event bus, start-up recovery.
//! - [`origin`]: the origin's side: one [`scout_mesh::routing::DeliveryPlan`]
//!   per unfinished delivery, driven by a dispatcher task; updates from
//!   owners land here.
//! - [`owner`]: the owner's side: accept under `UNIQUE(invocation_id)`, a
//!   runner per instance that takes queued flights from the store in order,
//!   flight updates back to the origin, cancel and query.
//! - [`work_orders`]: queued work for an agent, dispatched as a durable
//!   invocation when due; cancel reaches the owner.
//! - [`peer_check`]: who may act on a flight over the mesh (only the
//!   origin queries or cancels, only the owner reports), and the counters
//!   of what was refused.
//! - [`executor`]: the seam to what runs the work (PTY sessions, or
//!   netsim's in-process agents).
//!
//! Architecture invariant: every step that says "accepted" has been
//! committed first; the owner's store is the queue (a flight is taken from
//! it, never from memory only), so a restart loses nothing and an id never
//! runs twice.

pub mod executor;
pub mod origin;
pub mod owner;
pub mod peer_check;
pub mod work_orders;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use scout_mesh::lifecycle::{
    DeliveryPolicy, DeliveryState, FailureReason, FlightState, InvocationAction,
};
use scout_mesh::names::Label;
use scout_mesh::wire::NodeId;
use serde::Serialize;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::task::JoinSet;

use super::mesh::Mesh;
use crate::config::discover::LocalAgent;
use crate::env::Env;
use crate::store::Store;
use executor::Executor;

/// Routing events buffered for slow subscribers; one that falls further
/// behind loses the oldest (it is told so) instead of growing memory.
pub const EVENTS_BUFFER_MAX: usize = 1024;

/// Default time an invocation may take when the caller gives no deadline.
pub const DEFAULT_DEADLINE_MS: u64 = 10 * 60 * 1000;

/// Something that happened to an invocation, for streams and `/v1/events`.
#[derive(Debug, Clone, Serialize)]
pub struct RoutingEvent {
    /// The invocation.
    pub invocation_id: String,
    /// `delivery` (origin side), `flight` (owner side) or `output`.
    pub kind: &'static str,
    /// The new state (a delivery or flight state word), when it changed.
    pub state: Option<String>,
    /// Output text, for `output` events and final results.
    pub output: Option<String>,
    /// Failure reason word, when it failed.
    pub failure_reason: Option<String>,
    /// For a person.
    pub detail: Option<String>,
    /// Unix ms.
    pub timestamp_ms: u64,
}

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
}

/// What `submit` committed.
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    /// The invocation id, the handle for everything after.
    pub invocation_id: String,
    /// The delivery at this broker.
    pub delivery_id: String,
    /// The instance chosen.
    pub instance: String,
    /// Why that instance.
    pub reason: String,
    /// The owner's node id.
    pub owner: String,
    /// The conversation.
    pub conversation_id: String,
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

/// Shared routing state.
#[derive(Debug)]
pub struct RouterInner {
    pub(crate) store: Store,
    pub(crate) mesh: Mesh,
    pub(crate) node_id: NodeId,
    pub(crate) node_name: Label,
    pub(crate) executor: Arc<dyn Executor>,
    pub(crate) agents: Arc<std::sync::RwLock<Vec<LocalAgent>>>,
    /// Ordered by invocation id, so the dispatcher visits plans (and draws
    /// their jitter) in the same order in every run of one seed.
    pub(crate) plans: Mutex<std::collections::BTreeMap<String, origin::Entry>>,
    pub(crate) dispatch: Notify,
    pub(crate) runners: Mutex<HashMap<String, Arc<Notify>>>,
    pub(crate) running: Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    pub(crate) events: broadcast::Sender<RoutingEvent>,
    /// Callers of [`Router::submit_acknowledged`], by invocation id.
    pub(crate) acknowledged: Mutex<HashMap<String, oneshot::Sender<DeliveryState>>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Time, randomness and ids (the broker's environment).
    pub(crate) env: Env,
    /// Flight traffic refused from peers that had no right to it.
    pub(crate) refusals: peer_check::PeerRefusals,
}

/// The router. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    pub(crate) inner: Arc<RouterInner>,
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
    /// Its name.
    pub node_name: Label,
    /// What runs work.
    pub executor: Arc<dyn Executor>,
    /// This machine's agents (shared with the config watcher).
    pub agents: Arc<std::sync::RwLock<Vec<LocalAgent>>>,
    /// The broker's environment: clocks, retry jitter, ids.
    pub env: Env,
}

impl Router {
    /// Starts routing: recovers unfinished deliveries and flights from the
    /// store, and spawns the dispatcher and the runners into `tasks`.
    pub async fn start(
        parts: RouterParts,
        shutdown: watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<Router> {
        let router = Router {
            inner: Arc::new(RouterInner {
                store: parts.store,
                mesh: parts.mesh,
                node_id: parts.node_id,
                node_name: parts.node_name,
                executor: parts.executor,
                agents: parts.agents,
                plans: Mutex::new(std::collections::BTreeMap::new()),
                dispatch: Notify::new(),
                runners: Mutex::new(HashMap::new()),
                running: Mutex::new(HashMap::new()),
                events: broadcast::channel(EVENTS_BUFFER_MAX).0,
                acknowledged: Mutex::new(HashMap::new()),
                shutdown: shutdown.clone(),
                env: parts.env,
                refusals: peer_check::PeerRefusals::default(),
            }),
        };
        origin::recover(&router).await?;
        owner::recover(&router, tasks).await?;
        tasks.spawn(origin::dispatch_loop(router.clone(), shutdown));
        Ok(router)
    }

    /// Resolves, commits and starts routing an invocation.
    pub async fn submit(&self, request: SubmitRequest) -> Result<Submitted, RouteError> {
        origin::submit(self, request, None).await
    }

    /// [`Router::submit`], then waits until the delivery leaves `accepted`
    /// and `deferred`: the owner acknowledged it (`peer_acked` or later), or
    /// it ended (`failed`, `cancelled`). Returns the state it moved to
    /// (`failed` too when the broker stops first).
    pub async fn submit_acknowledged(
        &self,
        request: SubmitRequest,
    ) -> Result<(Submitted, DeliveryState), RouteError> {
        let (acknowledged, moved) = tokio::sync::oneshot::channel();
        let submitted = origin::submit(self, request, Some(acknowledged)).await?;
        let state = moved.await.unwrap_or(DeliveryState::Failed);
        Ok((submitted, state))
    }

    /// Registers `waiter` for the first move of `invocation_id` out of
    /// `accepted`/`deferred`.
    fn on_acknowledged(&self, invocation_id: &str, waiter: oneshot::Sender<DeliveryState>) {
        self.inner
            .acknowledged
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(invocation_id.to_owned(), waiter);
    }

    /// Cancels an invocation: at its owner, and here.
    pub async fn cancel(&self, invocation_id: &str) -> Result<(), RouteError> {
        origin::cancel(self, invocation_id).await
    }

    /// Flight updates dropped and flight requests refused because the peer
    /// was not the invocation's owner or origin.
    pub fn refusal_counts(&self) -> peer_check::RefusalCounts {
        self.inner.refusals.counts()
    }

    /// Routing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RoutingEvent> {
        self.inner.events.subscribe()
    }

    /// Wakes the dispatcher (a peer connected, say).
    pub fn kick(&self) {
        self.inner.dispatch.notify_one();
    }

    pub(crate) fn emit(&self, event: RoutingEvent) {
        if event.kind == "delivery"
            && let Some(state) = event
                .state
                .as_deref()
                .and_then(|s| s.parse::<DeliveryState>().ok())
            && !matches!(state, DeliveryState::Accepted | DeliveryState::Deferred)
        {
            let waiter = self
                .inner
                .acknowledged
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .remove(&event.invocation_id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(state);
            }
        }
        let _ = self.inner.events.send(event);
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.env.now_unix_ms()
    }

    /// Milliseconds on the monotonic clock the delivery plans run on.
    /// Retries, backoff, queries and deadlines are durations there, so a
    /// wall clock that jumps (a laptop resuming, NTP stepping) neither
    /// stalls nor hurries them.
    pub(crate) fn plan_now(&self) -> u64 {
        self.inner.env.now_mono_ms()
    }

    /// A wall-clock deadline (unix ms) as a point on the plans' clock.
    pub(crate) fn plan_deadline(&self, deadline_ms: Option<u64>) -> Option<u64> {
        deadline_ms.map(|deadline| {
            self.plan_now()
                .saturating_add(deadline.saturating_sub(self.now_ms()))
        })
    }

    pub(crate) fn jitter(&self) -> f64 {
        self.inner.env.random_f64()
    }

    /// An event for `invocation_id`.
    pub(crate) fn event(
        &self,
        invocation_id: &str,
        kind: &'static str,
        state: Option<String>,
        output: Option<String>,
    ) -> RoutingEvent {
        RoutingEvent {
            invocation_id: invocation_id.to_owned(),
            kind,
            state,
            output,
            failure_reason: None,
            detail: None,
            timestamp_ms: self.now_ms(),
        }
    }
}

/// The status of one invocation, as `scout flights ID` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationStatus {
    /// The invocation.
    pub invocation: InvocationView,
    /// The delivery at this broker (when it originated here).
    pub delivery: Option<DeliveryView>,
    /// The flight (when this broker owns it).
    pub flight: Option<FlightView>,
}

/// An invocation as shown.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationView {
    /// Id.
    pub invocation_id: String,
    /// Action word.
    pub action: String,
    /// The prompt.
    pub body: String,
    /// The mention.
    pub target: String,
    /// The origin's node id.
    pub origin: String,
    /// Conversation.
    pub conversation_id: Option<String>,
    /// Policy word.
    pub policy: String,
    /// Deadline, unix ms.
    pub deadline_ms: Option<i64>,
    /// Created, unix ms.
    pub created_at_ms: i64,
}

/// A delivery as shown.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    /// State word.
    pub state: String,
    /// The instance it went to.
    pub target: String,
    /// The owner's node id.
    pub owner: Option<String>,
    /// Why that instance was chosen.
    pub resolve_reason: Option<String>,
    /// Failure reason word.
    pub failure_reason: Option<String>,
    /// For a person.
    pub failure_detail: Option<String>,
    /// Attempts so far, each with its outcome.
    pub attempts: Vec<AttemptView>,
    /// The answer, once completed (from the conversation).
    pub result: Option<String>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    /// Number, from 1.
    pub attempt: i64,
    /// Started, unix ms.
    pub started_at_ms: i64,
    /// `succeeded`, `failed`, or none while running.
    pub outcome: Option<String>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// For a person.
    pub failure_detail: Option<String>,
}

/// A flight as shown.
#[derive(Debug, Clone, Serialize)]
pub struct FlightView {
    /// State word.
    pub state: String,
    /// The instance.
    pub instance: Option<String>,
    /// Why that instance.
    pub resolve_reason: Option<String>,
    /// Output so far.
    pub output: String,
    /// The result, once finished.
    pub result: Option<String>,
    /// Failure reason word.
    pub failure_reason: Option<String>,
    /// For a person.
    pub failure_detail: Option<String>,
}

impl Router {
    /// Everything known here about one invocation.
    pub fn status(&self, invocation_id: &str) -> Result<InvocationStatus, RouteError> {
        use crate::store::deliveries::Delivery;
        use crate::store::flights::Flight;
        use crate::store::invocations::Invocation;
        let store = &self.inner.store;
        let id = invocation_id.to_owned();
        store
            .read(move |connection| {
                let invocation = Invocation::get(connection, &id)?.ok_or_else(|| {
                    crate::store::StoreError::NotFound {
                        kind: "invocation",
                        id: id.clone(),
                    }
                })?;
                let delivery = match Delivery::list_for_invocation(connection, &id)?
                    .into_iter()
                    .last()
                {
                    Some(delivery) => {
                        let attempts = Delivery::list_attempts(connection, &delivery.delivery_id)?
                            .into_iter()
                            .map(|attempt| AttemptView {
                                attempt: attempt.attempt,
                                started_at_ms: attempt.started_at_ms,
                                outcome: attempt.outcome.map(|outcome| outcome.as_str().to_owned()),
                                failure_reason: attempt.failure_reason.map(|r| r.to_string()),
                                failure_detail: attempt.failure_detail,
                            })
                            .collect();
                        let result = origin::result_message(connection, &invocation)?;
                        Some(DeliveryView {
                            state: delivery.state.to_string(),
                            target: delivery.target,
                            owner: delivery.owner_node,
                            resolve_reason: delivery.resolve_reason,
                            failure_reason: delivery.failure_reason.map(|r| r.to_string()),
                            failure_detail: delivery.failure_detail,
                            attempts,
                            result,
                        })
                    }
                    None => None,
                };
                let flight =
                    Flight::get_for_invocation(connection, &id)?.map(|flight| FlightView {
                        state: flight.state.to_string(),
                        instance: flight.chosen_instance,
                        resolve_reason: flight.resolve_reason,
                        output: flight.output,
                        result: flight.result,
                        failure_reason: flight.failure_reason.map(|r| r.to_string()),
                        failure_detail: flight.failure_detail,
                    });
                Ok(InvocationStatus {
                    invocation: InvocationView {
                        invocation_id: invocation.invocation_id,
                        action: invocation.action.to_string(),
                        body: invocation.body,
                        target: invocation.target,
                        origin: invocation.origin_node,
                        conversation_id: invocation.conversation_id,
                        policy: invocation.delivery_policy.to_string(),
                        deadline_ms: invocation.deadline_ms,
                        created_at_ms: invocation.created_at_ms,
                    },
                    delivery,
                    flight,
                })
            })
            .map_err(|err| match err {
                crate::store::StoreError::NotFound { .. } => {
                    RouteError::UnknownInvocation(invocation_id.to_owned())
                }
                other => RouteError::Store(other),
            })
    }

    /// The final delivery state of an invocation that originated here, if
    /// it finished.
    pub fn outcome(&self, invocation_id: &str) -> Option<(DeliveryState, Option<FailureReason>)> {
        let id = invocation_id.to_owned();
        self.inner
            .store
            .read(move |connection| {
                Ok(
                    crate::store::deliveries::Delivery::list_for_invocation(connection, &id)?
                        .into_iter()
                        .last()
                        .filter(|delivery| delivery.state.is_terminal())
                        .map(|delivery| (delivery.state, delivery.failure_reason)),
                )
            })
            .ok()
            .flatten()
    }

    /// Whether a flight state is terminal (helper for callers).
    pub fn is_terminal(state: FlightState) -> bool {
        state.is_terminal()
    }
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
