//! The owner's side of routing: accept an invocation under its unique id
//! (committed before the acknowledgement), run queued flights of each
//! instance one at a time through the executor, and report progress to the
//! origin, which also asks when a report is lost.

use std::sync::Arc;
use std::time::Duration;

use scout_mesh::lifecycle::{FailureReason, FlightState};
use scout_mesh::names::AgentName;
use scout_mesh::wire::{
    FLIGHT_OUTPUT_BYTES_MAX, FlightUpdate, InvokeAck, InvokeRequest, MeshFrame, NodeId,
};
use scout_net::transport::endpoint::request;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::Router;
use super::executor::{ExecEvent, ExecOutcome, ExecRequest};
use crate::config::discover::LocalAgent;
use crate::store::flights::Flight;
use crate::store::invocations::{Accepted, Invocation};

/// How long a runner sleeps when nothing woke it, before it looks at the
/// store again (covers a lost wake-up).
const RUNNER_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Output is saved and sent to the origin in pieces of at most this many
/// bytes, or when this much time passed, whichever comes first: a fast
/// agent costs one commit per chunk, not per byte.
const OUTPUT_FLUSH_BYTES: usize = 16 * 1024;
const OUTPUT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Flights recovered per instance at start at most.
const RECOVER_FLIGHTS_MAX: usize = 10_000;

const _: () = assert!(OUTPUT_FLUSH_BYTES < FLIGHT_OUTPUT_BYTES_MAX);

fn unix(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The local agent behind an instance name, if this broker runs it.
fn local_agent(router: &Router, instance: &str) -> Option<LocalAgent> {
    let agents = router.inner.agents.read().ok()?;
    agents
        .iter()
        .find(|agent| agent.instance_name(&router.inner.node_name).to_string() == instance)
        .cloned()
}

/// Whether the local `agent` may start (see `config::trust`).
fn trusted(router: &Router, agent: &LocalAgent) -> Result<(), crate::config::trust::Untrusted> {
    crate::config::trust::check(&router.inner.mesh.shared().home, agent)
}

/// Accepts an invocation: commits it (or finds it already committed) and
/// answers. Never runs an id twice: the store's unique key decides.
pub async fn accept(router: &Router, invoke: InvokeRequest) -> MeshFrame {
    let instance_ok = AgentName::parse(&invoke.instance)
        .ok()
        .is_some_and(|name| name.node() == Some(&router.inner.node_name));
    if !instance_ok || local_agent(router, &invoke.instance).is_none() {
        // A retry of an id this broker holds is answered from its flight,
        // even if the agent went away since: refusing it would let the
        // origin send the work elsewhere and run it twice. (With the agent
        // here, the unique key in the write below answers retries.)
        if let Some(update) = flight_update(router, &invoke.invocation_id) {
            if let Some(refused) = not_its_origin(router, &invoke.origin, &invoke.invocation_id) {
                return refused;
            }
            return MeshFrame::InvokeAck(InvokeAck {
                invocation_id: invoke.invocation_id,
                duplicate: true,
                state: update.state,
            });
        }
        return MeshFrame::error(
            "AGENT_OFFLINE",
            format!("{} is not an agent of this broker", invoke.instance),
        );
    }
    // Text that would act on the agent's terminal is refused before it is
    // stored, whoever sent it.
    if let Err(err) = crate::pty::prompt::check_prompt(&invoke.body) {
        return MeshFrame::error(err.code(), err.to_string());
    }
    // An agent whose manifest the user has not trusted never starts; a
    // retry of an id already held is answered from its flight below.
    if let Some(Err(untrusted)) = local_agent(router, &invoke.instance).map(|a| trusted(router, &a))
        && flight_update(router, &invoke.invocation_id).is_none()
    {
        return MeshFrame::error(untrusted.code(), untrusted.to_string());
    }
    let invocation = Invocation {
        invocation_id: invoke.invocation_id.clone(),
        action: invoke.action,
        body: invoke.body,
        conversation_id: invoke.conversation_id,
        origin_node: invoke.origin.to_string(),
        target: invoke.target,
        deadline_ms: invoke.deadline_ms.map(unix),
        delivery_policy: invoke.policy,
        created_at_ms: unix(router.now_ms()),
    };
    let local = invoke.origin == router.inner.node_id;
    let origin = invoke.origin.clone();
    let instance = invoke.instance.clone();
    let reason = invoke.resolve_reason.clone();
    let env = router.inner.env.clone();
    let write = move |tx: &rusqlite::Transaction<'_>| {
        if local {
            // The origin stored the invocation already; only the flight is
            // new.
            return match Flight::get_for_invocation(tx, &invocation.invocation_id)? {
                Some(flight) => Ok(Accepted::Duplicate(Some(flight))),
                None => Flight::create(
                    tx,
                    &crate::store::flights::NewFlight {
                        flight_id: env.new_id(),
                        invocation_id: invocation.invocation_id.clone(),
                        chosen_instance: Some(instance),
                        resolve_reason: Some(reason),
                        created_at_ms: env.now_unix_ms_i64(),
                    },
                )
                .map(Accepted::New),
            };
        }
        Invocation::accept(tx, &invocation, Some(instance), Some(reason), &env)
    };
    if !invoke.policy.waits_for_disk() {
        // Acknowledged once queued in order behind every earlier write; the
        // runner sees the flight when it commits. The unique key still
        // decides whether it is new.
        let pending = match router.inner.store.enqueue(write).await {
            Ok(pending) => pending,
            Err(err) => return MeshFrame::error(err.code(), err.to_string()),
        };
        let router = router.clone();
        let instance = invoke.instance.clone();
        tokio::spawn(async move {
            match pending.await {
                Ok(accepted) => accepted_now(&router, &instance, &accepted),
                Err(err) => {
                    tracing::warn!(%instance, cause = %err, "an acknowledged best-effort invocation was not stored");
                }
            }
        });
        return MeshFrame::InvokeAck(InvokeAck {
            invocation_id: invoke.invocation_id,
            duplicate: false,
            state: FlightState::Queued,
        });
    }
    match router.inner.store.write(write).await {
        Ok(accepted) => {
            accepted_now(router, &invoke.instance, &accepted);
            MeshFrame::InvokeAck(match accepted {
                Accepted::New(flight) => InvokeAck {
                    invocation_id: flight.invocation_id,
                    duplicate: false,
                    state: flight.state,
                },
                Accepted::Duplicate(flight) => {
                    if let Some(refused) = not_its_origin(router, &origin, &invoke.invocation_id) {
                        return refused;
                    }
                    InvokeAck {
                        invocation_id: invoke.invocation_id,
                        duplicate: true,
                        state: flight.map(|f| f.state).unwrap_or(FlightState::Queued),
                    }
                }
            })
        }
        Err(err) => MeshFrame::error(err.code(), err.to_string()),
    }
}

/// A retried id is answered only to the broker that first sent it: another
/// member reusing someone else's invocation id learns nothing of its flight
/// (`NOT_ORIGIN`). Read only for duplicates, never on the first accept.
fn not_its_origin(router: &Router, origin: &NodeId, invocation_id: &str) -> Option<MeshFrame> {
    super::peer_check::origin_refusal(router, origin, invocation_id)
}

/// After an accept committed: a new flight wakes its runner.
fn accepted_now(router: &Router, instance: &str, accepted: &Accepted) {
    if let Accepted::New(flight) = accepted {
        wake_runner(router, instance);
        router.emit(router.event(&flight.invocation_id, "flight", Some("queued".into()), None));
    }
}

/// Starts (once) and wakes the runner of an instance.
fn wake_runner(router: &Router, instance: &str) {
    let notify = {
        let mut runners = router
            .inner
            .runners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(notify) = runners.get(instance) {
            notify.clone()
        } else {
            let notify = Arc::new(Notify::new());
            runners.insert(instance.to_owned(), notify.clone());
            tokio::spawn(run_instance(
                router.clone(),
                instance.to_owned(),
                notify.clone(),
            ));
            notify
        }
    };
    notify.notify_one();
}

/// Takes the instance's queued flights from the store, oldest first, and
/// runs them one at a time.
async fn run_instance(router: Router, instance: String, notify: Arc<Notify>) {
    let mut shutdown = router.inner.shutdown.clone();
    loop {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let next = router
                .inner
                .store
                .read(|connection| Flight::next_queued(connection, &instance));
            match next {
                Ok(Some(flight)) => run_flight(&router, &instance, flight).await,
                Ok(None) => break,
                Err(err) => {
                    tracing::error!(%instance, cause = %err, "cannot read queued flights");
                    break;
                }
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(RUNNER_POLL_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

async fn transition(
    router: &Router,
    flight_id: &str,
    to: FlightState,
    failure: Option<(FailureReason, String)>,
) -> bool {
    let flight_id = flight_id.to_owned();
    let now = unix(router.now_ms());
    router
        .inner
        .store
        .write(move |tx| {
            Flight::transition(
                tx,
                &flight_id,
                to,
                failure.as_ref().map(|(r, d)| (*r, d.as_str())),
                now,
            )
            .map(|_| ())
        })
        .await
        .is_ok()
}

async fn run_flight(router: &Router, instance: &str, flight: Flight) {
    let id = flight.invocation_id.clone();
    let Ok(Some(invocation)) = router.inner.store.get_invocation(&id) else {
        let _ = transition(
            router,
            &flight.flight_id,
            FlightState::Failed,
            Some((FailureReason::Dispatch, "its invocation is missing".into())),
        )
        .await;
        return;
    };
    let origin = NodeId::parse(&invocation.origin_node).ok();
    let now = router.now_ms();
    let deadline = invocation.deadline_ms.and_then(|ms| u64::try_from(ms).ok());
    if deadline.is_some_and(|deadline| now >= deadline) {
        finish(
            router,
            &flight,
            origin.as_ref(),
            ExecOutcome::Failed {
                reason: FailureReason::Timeout,
                detail: "the deadline passed while the flight was queued".into(),
            },
            String::new(),
        )
        .await;
        return;
    }
    let Some(agent) = local_agent(router, instance) else {
        finish(
            router,
            &flight,
            origin.as_ref(),
            ExecOutcome::Failed {
                reason: FailureReason::AgentOffline,
                detail: format!("{instance} is no longer an agent of this broker"),
            },
            String::new(),
        )
        .await;
        return;
    };
    if let Err(untrusted) = trusted(router, &agent) {
        // Trust was withdrawn, or the manifest changed, since the accept.
        let detail = untrusted.to_string();
        let reason = FailureReason::PeerRejected;
        let outcome = ExecOutcome::Failed { reason, detail };
        finish(router, &flight, origin.as_ref(), outcome, String::new()).await;
        return;
    }
    let timeout = deadline
        .map(|deadline| Duration::from_millis(deadline.saturating_sub(now)))
        .unwrap_or(Duration::from_millis(super::DEFAULT_DEADLINE_MS));
    let execution = router.inner.executor.execute(ExecRequest {
        invocation_id: id.clone(),
        instance: instance.to_owned(),
        agent,
        prompt: invocation.body.clone(),
        timeout,
    });
    router
        .inner
        .running
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .insert(id.clone(), execution.cancel);
    let mut events = execution.events;
    let mut pending = String::new();
    let mut all_output = String::new();
    let mut last_flush = tokio::time::Instant::now();
    let mut state = FlightState::Queued;
    let outcome = loop {
        let event = tokio::time::timeout(OUTPUT_FLUSH_INTERVAL, events.recv()).await;
        match event {
            Ok(Some(ExecEvent::Waking)) if state == FlightState::Queued => {
                if transition(router, &flight.flight_id, FlightState::Waking, None).await {
                    state = FlightState::Waking;
                    report(router, origin.as_ref(), &id, state, String::new()).await;
                }
            }
            Ok(Some(ExecEvent::Started)) => {
                if transition(router, &flight.flight_id, FlightState::Running, None).await {
                    state = FlightState::Running;
                    report(router, origin.as_ref(), &id, state, String::new()).await;
                }
            }
            Ok(Some(ExecEvent::Output(text))) => pending.push_str(&text),
            Ok(Some(ExecEvent::Finished(outcome))) => break outcome,
            Ok(Some(ExecEvent::Waking)) => {}
            Ok(None) => {
                break ExecOutcome::Failed {
                    reason: FailureReason::HarnessError,
                    detail: "the executor stopped without an outcome".into(),
                };
            }
            Err(_) => {}
        }
        if !pending.is_empty()
            && (pending.len() >= OUTPUT_FLUSH_BYTES
                || last_flush.elapsed() >= OUTPUT_FLUSH_INTERVAL)
        {
            let chunk = std::mem::take(&mut pending);
            save_output(router, &flight.flight_id, &chunk).await;
            all_output.push_str(&chunk);
            report(router, origin.as_ref(), &id, state, chunk).await;
            last_flush = tokio::time::Instant::now();
        }
    };
    router
        .inner
        .running
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .remove(&id);
    if !pending.is_empty() {
        save_output(router, &flight.flight_id, &pending).await;
        all_output.push_str(&pending);
    }
    let current = router
        .inner
        .store
        .get_flight(&flight.flight_id)
        .ok()
        .flatten();
    if current.is_some_and(|flight| flight.state.is_terminal()) {
        // Cancelled meanwhile; the cancel already reported it.
        return;
    }
    finish(router, &flight, origin.as_ref(), outcome, all_output).await;
}

async fn save_output(router: &Router, flight_id: &str, chunk: &str) {
    let flight_id = flight_id.to_owned();
    let chunk = chunk.to_owned();
    let now = unix(router.now_ms());
    let _ = router
        .inner
        .store
        .write(move |tx| Flight::append_output(tx, &flight_id, &chunk, now))
        .await;
}

async fn finish(
    router: &Router,
    flight: &Flight,
    origin: Option<&NodeId>,
    outcome: ExecOutcome,
    output: String,
) {
    let id = flight.invocation_id.clone();
    let (state, failure, result) = match outcome {
        ExecOutcome::Completed { response } => (FlightState::Completed, None, response),
        ExecOutcome::Failed { reason, detail } => {
            (FlightState::Failed, Some((reason, detail)), output)
        }
        ExecOutcome::Cancelled => (
            FlightState::Cancelled,
            Some((FailureReason::Cancelled, "cancelled".to_owned())),
            output,
        ),
    };
    let flight_id = flight.flight_id.clone();
    let now = unix(router.now_ms());
    let saved_result = result.clone();
    let recorded = failure.clone();
    let saved = router
        .inner
        .store
        .write(move |tx| {
            let current = Flight::get(tx, &flight_id)?;
            if let Some(current) = current {
                let mut from = current.state;
                // A flight that never started is woken and run on paper, so
                // every stored transition stays a legal one.
                if matches!(from, FlightState::Queued | FlightState::Waking)
                    && state == FlightState::Completed
                {
                    Flight::transition(tx, &flight_id, FlightState::Running, None, now)?;
                    from = FlightState::Running;
                }
                if !from.is_terminal() {
                    Flight::transition(
                        tx,
                        &flight_id,
                        state,
                        recorded.as_ref().map(|(r, d)| (*r, d.as_str())),
                        now,
                    )?;
                    Flight::set_result(tx, &flight_id, &saved_result, now)?;
                }
            }
            Ok(())
        })
        .await;
    if let Err(err) = saved {
        tracing::error!(invocation = %id, cause = %err, "cannot record the end of a flight");
        return;
    }
    router.emit(router.event(&id, "flight", Some(state.to_string()), None));
    let update = FlightUpdate {
        invocation_id: id.clone(),
        state,
        output: truncate_output(result),
        failure_reason: failure.as_ref().map(|(reason, _)| *reason),
        detail: failure.map(|(_, detail)| detail),
    };
    deliver_update(router, origin, update).await;
}

fn truncate_output(mut text: String) -> String {
    if text.len() > FLIGHT_OUTPUT_BYTES_MAX {
        let mut cut = FLIGHT_OUTPUT_BYTES_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

async fn report(
    router: &Router,
    origin: Option<&NodeId>,
    id: &str,
    state: FlightState,
    output: String,
) {
    router.emit(router.event(
        id,
        "flight",
        Some(state.to_string()),
        (!output.is_empty()).then(|| output.clone()),
    ));
    deliver_update(
        router,
        origin,
        FlightUpdate {
            invocation_id: id.to_owned(),
            state,
            output,
            failure_reason: None,
            detail: None,
        },
    )
    .await;
}

/// Sends an update to the origin (or applies it here when local). Best
/// effort: the origin queries for what it missed.
async fn deliver_update(router: &Router, origin: Option<&NodeId>, update: FlightUpdate) {
    let Some(origin) = origin else {
        return;
    };
    if *origin == router.inner.node_id {
        super::origin::apply_update(router, update).await;
        return;
    }
    if let Some(connection) = super::origin::connection_to(router, origin) {
        let timeout = router.inner.mesh.shared().config.transport.request_timeout;
        if let Err(err) = request(&connection, &MeshFrame::FlightUpdate(update), timeout).await {
            tracing::debug!(%origin, cause = %err, "flight update not delivered; the origin will ask");
        }
    }
}

/// The flight of an invocation as an update (for queries).
pub fn flight_update(router: &Router, invocation_id: &str) -> Option<FlightUpdate> {
    let id = invocation_id.to_owned();
    let flight = router
        .inner
        .store
        .read(move |connection| Flight::get_for_invocation(connection, &id))
        .ok()
        .flatten()?;
    let output = if flight.state.is_terminal() {
        flight
            .result
            .clone()
            .unwrap_or_else(|| flight.output.clone())
    } else {
        String::new()
    };
    Some(FlightUpdate {
        invocation_id: flight.invocation_id,
        state: flight.state,
        output: truncate_output(output),
        failure_reason: flight.failure_reason,
        detail: flight.failure_detail,
    })
}

/// Cancels a flight this broker owns: stops it if it runs, ends it if it is
/// queued. `None` when there is no such flight.
pub async fn cancel_local(router: &Router, invocation_id: &str) -> Option<FlightUpdate> {
    let id = invocation_id.to_owned();
    let flight = router
        .inner
        .store
        .read(move |connection| Flight::get_for_invocation(connection, &id))
        .ok()
        .flatten()?;
    if !flight.state.is_terminal() {
        let cancel = router
            .inner
            .running
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(invocation_id);
        if let Some(cancel) = cancel {
            let _ = cancel.send(());
        }
        let _ = transition(
            router,
            &flight.flight_id,
            FlightState::Cancelled,
            Some((FailureReason::Cancelled, "cancelled on request".into())),
        )
        .await;
        router.emit(router.event(invocation_id, "flight", Some("cancelled".into()), None));
    }
    flight_update(router, invocation_id)
}

/// At start: wakes the runner of every instance with queued flights (the
/// store's reconcile already ended or re-queued interrupted ones).
pub async fn recover(router: &Router, _tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
    let queued = router.inner.store.read(|connection| {
        Flight::list_in_state(connection, FlightState::Queued, RECOVER_FLIGHTS_MAX)
    })?;
    let mut instances: Vec<String> = queued
        .into_iter()
        .filter_map(|flight| flight.chosen_instance)
        .collect();
    instances.sort();
    instances.dedup();
    if !instances.is_empty() {
        tracing::info!(instances = instances.len(), "resuming queued flights");
    }
    for instance in instances {
        wake_runner(router, &instance);
    }
    Ok(())
}

/// Answers a routing request from a connected peer.
pub async fn handle_request(router: &Router, from: &NodeId, frame: MeshFrame) -> MeshFrame {
    match frame {
        MeshFrame::Invoke(invoke) if invoke.origin == *from => accept(router, invoke).await,
        MeshFrame::Invoke(_) => {
            MeshFrame::error("BAD_INVOKE", "an invocation's origin must be its sender")
        }
        MeshFrame::FlightUpdate(update) => {
            super::peer_check::flight_update_from(router, from, update).await
        }
        MeshFrame::FlightQuery { invocation_id } => {
            match super::peer_check::origin_refusal(router, from, &invocation_id) {
                None => MeshFrame::FlightAck(flight_update(router, &invocation_id)),
                Some(refused) => refused,
            }
        }
        MeshFrame::Cancel { invocation_id } => {
            match super::peer_check::origin_refusal(router, from, &invocation_id) {
                None => MeshFrame::FlightAck(cancel_local(router, &invocation_id).await),
                Some(refused) => refused,
            }
        }
        other => MeshFrame::error(
            "UNEXPECTED_FRAME",
            format!("`{}` is not a routing request", other.name()),
        ),
    }
}
