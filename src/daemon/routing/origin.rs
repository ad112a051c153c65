//! The origin's side of routing: resolve, commit, then deliver with
//! retries, deferral, queries, deadlines and rerouting, until the owner
//! reports the flight finished. The result becomes a message of the
//! conversation.

use std::time::Duration;

use rusqlite::Connection;
use scout_mesh::lifecycle::{
    DeliveryPolicy, DeliveryState, EndpointState, FailureReason, FlightState,
};
use scout_mesh::names::AgentName;
use scout_mesh::resolve::{self, Candidate};
use scout_mesh::routing::{DeliveryPlan, Step};
use scout_mesh::wire::{FlightUpdate, INVOKE_BODY_BYTES_MAX, InvokeRequest, MeshFrame, NodeId};
use scout_net::transport::endpoint::request;
use tokio::sync::{oneshot, watch};

use super::{RouteError, Router, RoutingEvent, SubmitRequest, Submitted};
use crate::store::StoreError;
use crate::store::conversations::{Conversation, NewMessage};
use crate::store::deliveries::{AttemptOutcome, Delivery, NewDelivery};
use crate::store::invocations::{InsertOutcome, Invocation};

/// How often the dispatcher looks at every plan even when nothing woke it.
const DISPATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Unfinished deliveries recovered at start at most (older ones wait for
/// the next start); a broker with more has a bigger problem to look at.
const RECOVER_DELIVERIES_MAX: usize = 10_000;

/// One unfinished delivery.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The delivery row.
    pub delivery_id: String,
    /// The invocation, as committed.
    pub invocation: Invocation,
    /// The instance it goes to.
    pub instance: String,
    /// Why that instance.
    pub reason: String,
    /// Its owner.
    pub owner: NodeId,
    /// Whether the mention named a definition rather than one instance.
    pub logical: bool,
    /// The plan.
    pub plan: DeliveryPlan,
    /// The attempt running, if one is.
    pub attempt_in_flight: bool,
}

fn unix(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Candidates from the registry, with owners this broker cannot reach
/// shown as unreachable so reachable ones win.
fn candidates(router: &Router, exclude: Option<&str>) -> Vec<(Candidate, NodeId)> {
    let mesh = &router.inner.mesh;
    let connected: std::collections::HashSet<String> = mesh
        .peers()
        .into_iter()
        .filter(|peer| peer.state == "connected")
        .map(|peer| peer.node_id)
        .collect();
    let own = router.inner.node_id.clone();
    mesh.with_registry(|registry| {
        registry
            .instances()
            .into_iter()
            .filter(|entry| exclude.is_none_or(|name| entry.name.to_string() != name))
            .map(|entry| {
                let is_local = *entry.origin == own;
                let state = if is_local || connected.contains(entry.origin.as_str()) {
                    entry.body.endpoint_state
                } else {
                    EndpointState::Unreachable
                };
                (
                    Candidate {
                        name: entry.name.clone(),
                        is_local,
                        state,
                        active_flights: entry.body.active_flights,
                    },
                    entry.origin.clone(),
                )
            })
            .collect()
    })
}

/// Resolves `target` to an instance and its owner.
pub(crate) fn choose(
    router: &Router,
    query: &AgentName,
    exclude: Option<&str>,
) -> Result<(String, String, NodeId), RouteError> {
    let pairs = candidates(router, exclude);
    let list: Vec<Candidate> = pairs
        .iter()
        .map(|(candidate, _)| candidate.clone())
        .collect();
    let resolution = resolve::resolve(query, &list)?;
    let owner = pairs
        .into_iter()
        .find(|(candidate, _)| candidate.name == resolution.chosen)
        .map(|(_, owner)| owner)
        .unwrap_or_else(|| router.inner.node_id.clone());
    Ok((
        resolution.chosen.to_string(),
        resolution.reason.as_str().to_owned(),
        owner,
    ))
}

/// Commits and starts routing.
pub async fn submit(
    router: &Router,
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
        super::check_caller_id("conversation_id", conversation_id)?;
    }
    let query = AgentName::parse_lenient(&request.target)?;
    let (instance, reason, owner) = choose(router, &query, None)?;
    let now = router.now_ms();
    let deadline_ms = request
        .deadline_ms
        .or(Some(now.saturating_add(super::DEFAULT_DEADLINE_MS)));
    let invocation = Invocation {
        invocation_id: router.inner.env.new_id(),
        action: request.action,
        body: request.body.clone(),
        conversation_id: Some(
            request
                .conversation_id
                .clone()
                .unwrap_or_else(|| router.inner.env.new_id()),
        ),
        origin_node: router.inner.node_id.to_string(),
        target: query.to_string(),
        deadline_ms: deadline_ms.map(unix),
        delivery_policy: request.policy,
        created_at_ms: unix(now),
    };
    let delivery_id = router.inner.env.new_id();
    let committed = {
        let invocation = invocation.clone();
        let invocation_id = invocation.invocation_id.clone();
        let delivery_id = delivery_id.clone();
        let instance = instance.clone();
        let owner = owner.to_string();
        let author = request.author.clone();
        let reason = reason.clone();
        let write = move |tx: &rusqlite::Transaction<'_>| {
            if Invocation::insert(tx, &invocation)? == InsertOutcome::Duplicate {
                return Err(StoreError::AlreadyExists {
                    kind: "invocation",
                    id: invocation.invocation_id.clone(),
                });
            }
            Delivery::create(
                tx,
                &NewDelivery {
                    delivery_id,
                    invocation_id: invocation.invocation_id.clone(),
                    target: instance,
                    owner_node: Some(owner),
                    resolve_reason: Some(reason),
                    created_at_ms: invocation.created_at_ms,
                },
            )?;
            let conversation_id = invocation.conversation_id.clone().unwrap_or_default();
            Conversation::append_message(
                tx,
                &NewMessage {
                    message_id: format!("{}-request", invocation.invocation_id),
                    conversation_id,
                    author,
                    body: invocation.body.clone(),
                    invocation_id: Some(invocation.invocation_id.clone()),
                    created_at_ms: invocation.created_at_ms,
                },
            )?;
            Ok(())
        };
        let store = &router.inner.store;
        if request.policy.waits_for_disk() {
            store.write(write).await
        } else {
            // Queued in order ahead of every later write about it, and not
            // waited for: the policy does not ask for the disk.
            let pending = store.enqueue(write).await?;
            tokio::spawn(async move {
                if let Err(err) = pending.await {
                    tracing::warn!(invocation = %invocation_id, cause = %err, "a best-effort invocation was not stored");
                }
            });
            Ok(())
        }
    };
    committed?;
    let plan = DeliveryPlan::new(
        router.plan_now(),
        router.plan_deadline(deadline_ms),
        request.policy,
    );
    let submitted = Submitted {
        invocation_id: invocation.invocation_id.clone(),
        delivery_id: delivery_id.clone(),
        instance: instance.clone(),
        reason: reason.clone(),
        owner: owner.to_string(),
        conversation_id: invocation.conversation_id.clone().unwrap_or_default(),
    };
    router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .insert(
            invocation.invocation_id.clone(),
            Entry {
                delivery_id,
                invocation,
                instance,
                reason,
                owner,
                logical: !query.is_fully_qualified(),
                plan,
                attempt_in_flight: false,
            },
        );
    router.emit(router.event(
        &submitted.invocation_id,
        "delivery",
        Some("accepted".into()),
        None,
    ));
    if let Some(acknowledged) = acknowledged {
        router.on_acknowledged(&submitted.invocation_id, acknowledged);
    }
    dispatch_now(router, &submitted.invocation_id);
    Ok(submitted)
}

/// Rebuilds plans of unfinished deliveries from the store.
pub async fn recover(router: &Router) -> anyhow::Result<()> {
    let rows = router.inner.store.read(|connection| {
        let mut rows = Vec::new();
        for state in [
            DeliveryState::Accepted,
            DeliveryState::Deferred,
            DeliveryState::PeerAcked,
            DeliveryState::Running,
        ] {
            for delivery in Delivery::list_in_state(connection, state, RECOVER_DELIVERIES_MAX)? {
                let Some(invocation) = Invocation::get(connection, &delivery.invocation_id)? else {
                    continue;
                };
                let attempts = Delivery::list_attempts(connection, &delivery.delivery_id)?.len();
                rows.push((delivery, invocation, attempts));
            }
        }
        Ok(rows)
    })?;
    let mut lost = Vec::new();
    let mut recovered = Vec::new();
    for (delivery, invocation, attempts) in rows {
        let Some(owner) = delivery
            .owner_node
            .as_deref()
            .and_then(|id| NodeId::parse(id).ok())
        else {
            continue;
        };
        if invocation.delivery_policy == DeliveryPolicy::Ephemeral {
            lost.push(delivery.delivery_id.clone());
            continue;
        }
        // Attempts are recorded once their outcome is known, so an invoke
        // on its way when this broker stopped left no row: the plan counts
        // it as sent and keeps the work with this owner.
        let plan = DeliveryPlan::recovered(
            router.plan_now(),
            router.plan_deadline(invocation.deadline_ms.and_then(|ms| u64::try_from(ms).ok())),
            invocation.delivery_policy,
            delivery.state,
            u32::try_from(attempts).unwrap_or(u32::MAX),
        );
        let logical =
            AgentName::parse(&invocation.target).is_ok_and(|name| !name.is_fully_qualified());
        recovered.push(Entry {
            delivery_id: delivery.delivery_id,
            instance: delivery.target,
            reason: "recovered".into(),
            owner,
            logical,
            invocation,
            plan,
            attempt_in_flight: false,
        });
    }
    router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .extend(
            recovered
                .into_iter()
                .map(|entry| (entry.invocation.invocation_id.clone(), entry)),
        );
    for delivery_id in lost {
        let now = unix(router.now_ms());
        router
            .inner
            .store
            .write(move |tx| {
                Delivery::transition(
                    tx,
                    &delivery_id,
                    DeliveryState::Failed,
                    Some((
                        FailureReason::Dispatch,
                        "ephemeral delivery lost at restart, by its policy",
                    )),
                    now,
                )
                .map(|_| ())
            })
            .await?;
    }
    let n = router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .len();
    if n > 0 {
        tracing::info!(deliveries = n, "resuming unfinished deliveries");
    }
    Ok(())
}

/// Runs plans until shutdown.
pub async fn dispatch_loop(router: Router, mut shutdown: watch::Receiver<bool>) {
    let mut last_work_orders = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = router.inner.dispatch.notified() => {}
            _ = tokio::time::sleep(DISPATCH_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        dispatch_once(&router).await;
        if last_work_orders.elapsed() >= super::work_orders::WORK_ORDER_POLL_INTERVAL {
            last_work_orders = tokio::time::Instant::now();
            super::work_orders::dispatch_due(&router).await;
        }
    }
}

async fn dispatch_once(router: &Router) {
    let now = router.plan_now();
    let work: Vec<(String, Step)> = {
        let mut plans = router
            .inner
            .plans
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        plans
            .iter_mut()
            .filter_map(|(id, entry)| next_step(router, entry, now).map(|step| (id.clone(), step)))
            .collect()
    };
    for (id, step) in work {
        let router = router.clone();
        tokio::spawn(async move {
            run_step(&router, &id, step).await;
        });
    }
}

/// Starts a delivery just submitted at once, without waiting for the
/// dispatcher's next pass.
fn dispatch_now(router: &Router, id: &str) {
    let now = router.plan_now();
    let step = router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get_mut(id)
        .and_then(|entry| next_step(router, entry, now));
    if let Some(step) = step {
        let router = router.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            run_step(&router, &id, step).await;
        });
    }
}

/// What to do now for one delivery, if anything; a send or a query marks
/// the entry busy until it ends.
fn next_step(router: &Router, entry: &mut Entry, now: u64) -> Option<Step> {
    if entry.attempt_in_flight {
        return None;
    }
    // A logical mention stuck on an unreachable owner that never got it
    // moves to another instance, when there is one. The move marks the
    // entry busy too: a second pass must not move it again (or send it)
    // while the first move is being recorded.
    if entry.plan.may_reroute(now, entry.logical) && choose_other(router, entry).is_some() {
        entry.attempt_in_flight = true;
        return Some(Step::Wait);
    }
    let reachable = entry.owner == router.inner.node_id
        || connection_to(router, &entry.owner).is_some_and(|c| c.close_reason().is_none());
    let jitter = router.jitter();
    match entry.plan.step(now, reachable, jitter) {
        Step::Wait => None,
        step @ (Step::SendInvoke | Step::Query) => {
            entry.attempt_in_flight = true;
            Some(step)
        }
        step @ (Step::Defer | Step::Fail { .. }) => Some(step),
    }
}

async fn run_step(router: &Router, id: &str, step: Step) {
    let Some(entry) = router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(id)
        .cloned()
    else {
        return;
    };
    match step {
        Step::SendInvoke => send_invoke(router, entry).await,
        Step::Query => query(router, entry).await,
        Step::Defer => {
            // Entering `deferred` is recorded as an attempt that found the
            // owner unreachable; staying deferred is not recorded again.
            let delivery_id = entry.delivery_id.clone();
            let now = unix(router.now_ms());
            let recorded = router
                .inner
                .store
                .write(move |tx| {
                    let Some(current) = Delivery::get(tx, &delivery_id)? else {
                        return Ok(());
                    };
                    if current.state == DeliveryState::Deferred || current.state.is_terminal() {
                        return Ok(());
                    }
                    let attempt = Delivery::start_attempt(tx, &delivery_id, now)?;
                    Delivery::finish_attempt(
                        tx,
                        &delivery_id,
                        attempt,
                        AttemptOutcome::Failed,
                        Some((FailureReason::PeerUnreachable, "the owner is not connected")),
                        now,
                    )?;
                    Delivery::transition(tx, &delivery_id, DeliveryState::Deferred, None, now)
                        .map(|_| ())
                })
                .await;
            if let Err(err) = recorded {
                tracing::debug!(invocation = %id, cause = %err, "deferral not recorded");
            }
            router.emit(router.event(id, "delivery", Some("deferred".into()), None));
        }
        Step::Fail { reason, detail } => {
            finish(
                router,
                &entry.invocation.invocation_id,
                FlightUpdate {
                    invocation_id: entry.invocation.invocation_id.clone(),
                    state: FlightState::Failed,
                    output: String::new(),
                    failure_reason: Some(reason),
                    detail: Some(detail),
                },
            )
            .await
        }
        Step::Wait => {
            reroute(router, entry).await;
            release(router, id);
        }
    }
}

/// Moves a logical mention whose owner never got it to another instance.
async fn reroute(router: &Router, entry: Entry) {
    let now = router.now_ms();
    let Ok(query) = AgentName::parse(&entry.invocation.target) else {
        return;
    };
    let Ok((instance, reason, owner)) = choose(router, &query, Some(&entry.instance)) else {
        return;
    };
    if owner == entry.owner {
        return;
    }
    let delivery_id = entry.delivery_id.clone();
    let owner_text = owner.to_string();
    let target = instance.clone();
    let reason = format!("rerouted ({reason})");
    let recorded_reason = reason.clone();
    let moved = router
        .inner
        .store
        .write(move |tx| {
            if Delivery::get(tx, &delivery_id)?.is_some_and(|d| d.state == DeliveryState::Failed) {
                Delivery::transition(tx, &delivery_id, DeliveryState::Accepted, None, unix(now))
                    .ok();
            }
            Delivery::reroute(
                tx,
                &delivery_id,
                &target,
                &owner_text,
                &recorded_reason,
                unix(now),
            )
            .map(|_| ())
        })
        .await;
    if moved.is_err() {
        return;
    }
    tracing::info!(invocation = %entry.invocation.invocation_id, from = %entry.instance, to = %instance, "rerouted: the first owner never received it");
    if let Some(current) = router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get_mut(&entry.invocation.invocation_id)
    {
        current.instance = instance;
        current.reason = reason;
        current.owner = owner;
        current.plan = DeliveryPlan::new(
            router.plan_now(),
            current.plan.deadline_ms,
            current.plan.policy,
        );
    }
    router.kick();
}

fn invoke_request(router: &Router, entry: &Entry) -> InvokeRequest {
    InvokeRequest {
        invocation_id: entry.invocation.invocation_id.clone(),
        action: entry.invocation.action,
        body: entry.invocation.body.clone(),
        conversation_id: entry.invocation.conversation_id.clone(),
        origin: router.inner.node_id.clone(),
        target: entry.invocation.target.clone(),
        instance: entry.instance.clone(),
        resolve_reason: entry.reason.clone(),
        deadline_ms: entry
            .invocation
            .deadline_ms
            .and_then(|ms| u64::try_from(ms).ok()),
        policy: entry.invocation.delivery_policy,
    }
}

async fn send_invoke(router: &Router, entry: Entry) {
    let id = entry.invocation.invocation_id.clone();
    // The attempt is recorded once its outcome is known, start and end in
    // one commit, so the invoke never waits for our disk. An origin that
    // crashes meanwhile resends under the same id after its restart.
    let started_at_ms = unix(router.now_ms());
    let answer = if entry.owner == router.inner.node_id {
        Ok(super::owner::accept(router, invoke_request(router, &entry)).await)
    } else {
        match connection_to(router, &entry.owner) {
            Some(connection) => request(
                &connection,
                &MeshFrame::Invoke(invoke_request(router, &entry)),
                router.inner.mesh.shared().config.transport.request_timeout,
            )
            .await
            .map_err(|err| format!("{}: {err}", err.code())),
            None => Err("the owner is not connected".to_owned()),
        }
    };
    // An owner that is starting does not route yet: that is no refusal.
    let answer = match answer {
        Ok(MeshFrame::Error(error)) if error.code == "NOT_READY" => {
            Err(format!("{}: {}", error.code, error.message))
        }
        other => other,
    };
    let failure = match &answer {
        Ok(MeshFrame::InvokeAck(_)) => None,
        Ok(MeshFrame::Error(error)) => Some((
            refusal_reason(&error.code),
            format!("{}: {}", error.code, error.message),
        )),
        Ok(other) => Some((
            FailureReason::PeerRejected,
            format!("unexpected answer `{}`", other.name()),
        )),
        Err(err) => Some((FailureReason::PeerUnreachable, err.clone())),
    };
    let attempt = Attempt {
        started_at_ms,
        failure,
    };
    match answer {
        Ok(MeshFrame::InvokeAck(ack)) if !(ack.duplicate && ack.state.is_terminal()) => {
            // The common case: the owner holds it. The delivery moves to
            // what the owner reported, announced at once and recorded with
            // the attempt in one commit.
            let moved = {
                let now = router.plan_now();
                let mut plans = router
                    .inner
                    .plans
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                plans
                    .get_mut(&id)
                    .and_then(|current| current.plan.on_flight(now, ack.state))
            };
            if let Some(state) = moved {
                router.emit(router.event(&id, "delivery", Some(state.to_string()), None));
            }
            let _ = set_state(router, &entry, moved, Some(attempt)).await;
        }
        Ok(MeshFrame::InvokeAck(_)) => {
            // A retry of finished work: the ack carries no answer, so the
            // end is taken from the owner's flight, answer included.
            let _ = set_state(router, &entry, None, Some(attempt)).await;
            query(router, entry).await;
        }
        Ok(MeshFrame::Error(error)) => {
            let _ = set_state(router, &entry, None, Some(attempt)).await;
            let reason = refusal_reason(&error.code);
            // The plan decides whether the refusal proves the owner holds
            // nothing (it answered the only invoke that ever left here).
            let may_reroute = {
                let now = router.plan_now();
                let mut plans = router
                    .inner
                    .plans
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                plans.get_mut(&id).is_some_and(|current| {
                    current.plan.on_rejected(reason);
                    current.plan.may_reroute(now, current.logical)
                })
            };
            let rerouted = may_reroute && choose_other(router, &entry).is_some();
            if rerouted {
                reroute(router, entry).await;
            } else {
                finish(
                    router,
                    &id,
                    FlightUpdate {
                        invocation_id: id.clone(),
                        state: FlightState::Failed,
                        output: String::new(),
                        failure_reason: Some(reason),
                        detail: Some(format!("{}: {}", error.code, error.message)),
                    },
                )
                .await;
            }
        }
        _ => {
            let jitter = router.jitter();
            let now = router.plan_now();
            if let Some(current) = router
                .inner
                .plans
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .get_mut(&id)
            {
                current.plan.on_send_failed(now, jitter);
            }
            let _ = set_state(router, &entry, Some(DeliveryState::Deferred), Some(attempt)).await;
        }
    }
    release(router, &id);
}

/// Why an owner's refusal of an invoke failed the attempt.
fn refusal_reason(code: &str) -> FailureReason {
    if code == "AGENT_OFFLINE" {
        FailureReason::AgentOffline
    } else {
        FailureReason::PeerRejected
    }
}

/// One invoke sent to the owner, once its outcome is known.
struct Attempt {
    /// When it was sent, unix ms.
    started_at_ms: i64,
    /// Why it failed; `None` when the owner acknowledged it.
    failure: Option<(FailureReason, String)>,
}

fn choose_other(router: &Router, entry: &Entry) -> Option<NodeId> {
    let query = AgentName::parse(&entry.invocation.target).ok()?;
    let (_, _, owner) = choose(router, &query, Some(&entry.instance)).ok()?;
    (owner != entry.owner).then_some(owner)
}

fn release(router: &Router, id: &str) {
    if let Some(entry) = router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get_mut(id)
    {
        entry.attempt_in_flight = false;
    }
}

async fn query(router: &Router, entry: Entry) {
    let id = entry.invocation.invocation_id.clone();
    let answer = if entry.owner == router.inner.node_id {
        super::owner::flight_update(router, &id)
    } else {
        flight_from_owner(
            router,
            &entry.owner,
            MeshFrame::FlightQuery {
                invocation_id: id.clone(),
            },
        )
        .await
    };
    if let Some(update) = answer {
        apply_update(router, update).await;
    }
    release(router, &id);
}

/// Asks a remote owner about a flight (a query, a cancel) and takes the
/// flight it reports; `None` when it is not connected, does not answer or
/// does not hold it.
async fn flight_from_owner(
    router: &Router,
    owner: &NodeId,
    frame: MeshFrame,
) -> Option<FlightUpdate> {
    let connection = connection_to(router, owner)?;
    let timeout = router.inner.mesh.shared().config.transport.request_timeout;
    match request(&connection, &frame, timeout).await {
        Ok(MeshFrame::FlightAck(update)) => update,
        _ => None,
    }
}

/// The live connection to a peer, if any.
pub(super) fn connection_to(router: &Router, owner: &NodeId) -> Option<quinn::Connection> {
    router
        .inner
        .mesh
        .shared()
        .peers
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(owner)
        .map(|peer| peer.connection.clone())
}

/// The owner a delivery in progress goes to.
pub fn owner_of(router: &Router, invocation_id: &str) -> Option<NodeId> {
    router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(invocation_id)
        .map(|entry| entry.owner.clone())
}

/// An update from the owner (pushed, or answering a query). One for an
/// invocation with no delivery in progress here changes nothing and emits
/// nothing; who may send one is checked by [`super::peer_check`].
pub async fn apply_update(router: &Router, update: FlightUpdate) {
    let id = update.invocation_id.clone();
    let known = router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .contains_key(&id);
    if !known {
        return;
    }
    if !update.output.is_empty() && !update.state.is_terminal() {
        router.emit(router.event(&id, "output", None, Some(update.output.clone())));
    }
    if update.state.is_terminal() {
        finish(router, &id, update).await;
        return;
    }
    let now = router.plan_now();
    let moved = {
        let mut plans = router
            .inner
            .plans
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(entry) = plans.get_mut(&id) else {
            return;
        };
        entry
            .plan
            .on_flight(now, update.state)
            .map(|state| (entry.clone(), state))
    };
    if let Some((entry, state)) = moved {
        let _ = set_state(router, &entry, Some(state), None).await;
        router.emit(router.event(&id, "delivery", Some(state.to_string()), None));
    }
}

/// Records, in one commit, an attempt (when given) and a move of the
/// delivery to `state` (when given and still allowed).
async fn set_state(
    router: &Router,
    entry: &Entry,
    state: Option<DeliveryState>,
    attempt: Option<Attempt>,
) -> Result<(), StoreError> {
    let delivery_id = entry.delivery_id.clone();
    let now = unix(router.now_ms());
    router
        .inner
        .store
        .write(move |tx| {
            // A delivery that ended meanwhile takes no further attempts.
            if let Some(attempt) = &attempt
                && let Ok(number) = Delivery::start_attempt(tx, &delivery_id, attempt.started_at_ms)
            {
                let (outcome, failure) = match &attempt.failure {
                    None => (AttemptOutcome::Succeeded, None),
                    Some((reason, detail)) => {
                        (AttemptOutcome::Failed, Some((*reason, detail.as_str())))
                    }
                };
                Delivery::finish_attempt(tx, &delivery_id, number, outcome, failure, now)?;
            }
            let Some(state) = state else {
                return Ok(());
            };
            match Delivery::get(tx, &delivery_id)? {
                Some(current)
                    if current.state == state || !current.state.can_transition_to(state) =>
                {
                    Ok(())
                }
                Some(_) => Delivery::transition(tx, &delivery_id, state, None, now).map(|_| ()),
                None => Ok(()),
            }
        })
        .await
}

/// Ends a delivery: the final state, and the answer (or the failure) as a
/// message of the conversation, in one commit.
async fn finish(router: &Router, id: &str, update: FlightUpdate) {
    let entry = router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(id)
        .cloned();
    let Some(entry) = entry else {
        return;
    };
    let state = scout_mesh::routing::delivery_state_of(update.state);
    let failure = match (state, update.failure_reason) {
        (DeliveryState::Failed, reason) => Some((
            reason.unwrap_or(FailureReason::HarnessError),
            update.detail.clone().unwrap_or_default(),
        )),
        (DeliveryState::Cancelled, _) => Some((
            FailureReason::Cancelled,
            update.detail.clone().unwrap_or_default(),
        )),
        _ => None,
    };
    let body = match state {
        DeliveryState::Completed => update.output.clone(),
        DeliveryState::Cancelled => "[cancelled]".to_owned(),
        _ => format!(
            "[failed: {}] {}",
            failure
                .as_ref()
                .map(|(reason, _)| reason.to_string())
                .unwrap_or_default(),
            update.detail.clone().unwrap_or_default()
        ),
    };
    let delivery_id = entry.delivery_id.clone();
    let conversation_id = entry.invocation.conversation_id.clone().unwrap_or_default();
    let author = entry.instance.clone();
    let now = unix(router.now_ms());
    let invocation_id = id.to_owned();
    let recorded_failure = failure.clone();
    let result = router
        .inner
        .store
        .write(move |tx| {
            if let Some(current) = Delivery::get(tx, &delivery_id)?
                && !current.state.is_terminal()
            {
                Delivery::transition(
                    tx,
                    &delivery_id,
                    state,
                    recorded_failure
                        .as_ref()
                        .map(|(reason, detail)| (*reason, detail.as_str())),
                    now,
                )?;
            }
            Conversation::append_message(
                tx,
                &NewMessage {
                    message_id: format!("{invocation_id}-result"),
                    conversation_id,
                    author,
                    body,
                    invocation_id: Some(invocation_id.clone()),
                    created_at_ms: now,
                },
            )?;
            Ok(())
        })
        .await;
    if let Err(err) = result {
        tracing::error!(invocation = %id, cause = %err, "cannot record the end of a delivery");
        return;
    }
    router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .remove(id);
    super::work_orders::on_delivery_finished(router, id, state).await;
    router.emit(RoutingEvent {
        invocation_id: id.to_owned(),
        kind: "delivery",
        state: Some(state.to_string()),
        output: Some(update.output),
        failure_reason: failure.as_ref().map(|(reason, _)| reason.to_string()),
        detail: failure.map(|(_, detail)| detail),
        timestamp_ms: router.now_ms(),
    });
}

/// Cancels an invocation.
pub async fn cancel(router: &Router, invocation_id: &str) -> Result<(), RouteError> {
    let entry = router
        .inner
        .plans
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(invocation_id)
        .cloned();
    let Some(entry) = entry else {
        // Not a delivery of ours in progress: maybe a flight we own.
        if super::owner::cancel_local(router, invocation_id)
            .await
            .is_some()
        {
            return Ok(());
        }
        return Err(RouteError::UnknownInvocation(invocation_id.to_owned()));
    };
    let update = if entry.owner == router.inner.node_id {
        super::owner::cancel_local(router, invocation_id).await
    } else {
        flight_from_owner(
            router,
            &entry.owner,
            MeshFrame::Cancel {
                invocation_id: invocation_id.to_owned(),
            },
        )
        .await
    };
    let update = update.unwrap_or(FlightUpdate {
        invocation_id: invocation_id.to_owned(),
        state: FlightState::Cancelled,
        output: String::new(),
        failure_reason: Some(FailureReason::Cancelled),
        detail: Some(if entry.plan.ever_sent {
            "cancelled here; the owner could not be told yet".into()
        } else {
            "cancelled before it reached its owner".into()
        }),
    });
    finish(router, invocation_id, update).await;
    Ok(())
}

/// The answer recorded for an invocation that originated here.
pub fn result_message(
    connection: &Connection,
    invocation: &Invocation,
) -> Result<Option<String>, StoreError> {
    Ok(
        Conversation::get_message(connection, &format!("{}-result", invocation.invocation_id))?
            .map(|message| message.body),
    )
}
