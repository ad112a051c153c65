//! The origin's side of the [`Router`]: commit a submission, then deliver
//! it with retries, deferral, queries, deadlines and rerouting (the rules
//! are [`DeliveryPlan`]'s), until the owner reports the flight finished;
//! then record the answer and emit the end once.

use crate::lifecycle::{DeliveryPolicy, DeliveryState, FailureReason, FlightState};
use crate::output::FlightOutput;
use crate::wire::{ErrorCode, FlightUpdate, InvokeRequest, MeshFrame, NodeId};

use super::plan::{DeliveryPlan, Step, delivery_state_of};
use super::{
    AfterPersist, CancelStarted, Choice, Event, EventKind, Invocation, Now, Output, Refusal,
    RefusedKind, RequestId, RestoredDelivery, Router, SendFailure, Sent, Submission, Write,
    mono_deadline,
};

/// One unfinished delivery at its origin.
#[derive(Debug, Clone)]
pub(super) struct Delivery {
    pub(super) delivery_id: String,
    pub(super) invocation: Invocation,
    pub(super) choice: Choice,
    pub(super) logical: bool,
    pub(super) plan: DeliveryPlan,
    /// The submit rows are committed: nothing leaves before.
    pub(super) committed: bool,
    /// A send, query or reroute is outstanding: one at a time.
    pub(super) busy: bool,
    /// The final commit started: later reports are ignored.
    pub(super) finishing: bool,
}

impl Delivery {
    /// Whether the plan may act (committed, idle, not finishing).
    pub(super) fn ready(&self) -> bool {
        self.committed && !self.busy && !self.finishing && !self.plan.state.is_terminal()
    }

    fn invoke(&self) -> InvokeRequest {
        InvokeRequest {
            invocation_id: self.invocation.invocation_id.clone(),
            action: self.invocation.action,
            body: self.invocation.body.clone(),
            conversation_id: self.invocation.conversation_id.clone(),
            origin: self.invocation.origin.clone(),
            target: self.invocation.target.clone(),
            instance: self.choice.instance.clone(),
            resolve_reason: self.choice.reason.clone(),
            deadline_ms: self.invocation.deadline_unix_ms,
            policy: self.invocation.policy,
            from: self.invocation.from.clone(),
            chain: self.invocation.chain.clone(),
        }
    }
}

/// Why an owner's refusal failed the attempt.
fn refusal_reason(code: &ErrorCode) -> FailureReason {
    if *code == ErrorCode::AgentOffline {
        FailureReason::AgentOffline
    } else {
        FailureReason::PeerRejected
    }
}

/// Whether a mention names a definition rather than one exact instance
/// (`@def@node#workspace`): only such work may move to another instance.
pub fn is_logical(target: &str) -> bool {
    crate::names::AgentName::parse(target).is_ok_and(|name| !name.is_fully_qualified())
}

impl Router {
    /// A new invocation mentioned here: its rows are committed first
    /// (`Persist`), then it is delivered. Its `Delivery(Accepted)` event
    /// comes once committed; a failed commit drops it without an event.
    pub fn handle_submit(&mut self, now: Now, submission: Submission) {
        let Submission {
            invocation,
            delivery_id,
            choice,
            logical,
            author,
        } = submission;
        let id = invocation.invocation_id.clone();
        let plan = DeliveryPlan::new(
            now.mono_ms,
            mono_deadline(now, invocation.deadline_unix_ms),
            invocation.policy,
        );
        let wait_for_disk = invocation.policy.waits_for_disk();
        self.deliveries.insert(
            id.clone(),
            Delivery {
                delivery_id: delivery_id.clone(),
                invocation: invocation.clone(),
                choice: choice.clone(),
                logical,
                plan,
                committed: false,
                busy: false,
                finishing: false,
            },
        );
        self.persist(
            vec![Write::Submit {
                invocation,
                delivery_id,
                choice,
                author,
            }],
            wait_for_disk,
            AfterPersist::Submitted { invocation_id: id },
        );
    }

    pub(super) fn submitted(&mut self, now: Now, id: &str, ok: bool) {
        if !ok {
            self.deliveries.remove(id);
            return;
        }
        let Some(delivery) = self.deliveries.get_mut(id) else {
            return;
        };
        delivery.committed = true;
        self.emit(id, EventKind::Delivery(DeliveryState::Accepted));
        self.step(now, id);
    }

    pub(super) fn restore_delivery(&mut self, now: Now, restored: RestoredDelivery) {
        let RestoredDelivery {
            delivery_id,
            invocation,
            choice,
            state,
            attempts,
        } = restored;
        if state.is_terminal() {
            return;
        }
        if invocation.policy == DeliveryPolicy::Ephemeral {
            // Lost at restart, by its policy.
            self.persist(
                vec![Write::DeliveryState {
                    delivery_id,
                    state: DeliveryState::Failed,
                    failure: Some((
                        FailureReason::Dispatch,
                        "ephemeral delivery lost at restart, by its policy".into(),
                    )),
                    at_unix_ms: now.unix_ms,
                }],
                false,
                AfterPersist::Release(Vec::new()),
            );
            return;
        }
        // Attempts are recorded once their outcome is known, so an invoke
        // on its way when this broker stopped left no row: the plan counts
        // it as sent and keeps the work with this owner.
        let plan = DeliveryPlan::recovered(
            now.mono_ms,
            mono_deadline(now, invocation.deadline_unix_ms),
            invocation.policy,
            state,
            attempts,
        );
        let logical = is_logical(&invocation.target);
        self.deliveries.insert(
            invocation.invocation_id.clone(),
            Delivery {
                delivery_id,
                invocation,
                choice,
                logical,
                plan,
                committed: true,
                busy: false,
                finishing: false,
            },
        );
    }

    /// Acts on one delivery's plan now.
    pub(super) fn step(&mut self, now: Now, id: &str) {
        let Some(delivery) = self.deliveries.get(id) else {
            return;
        };
        if !delivery.ready() {
            return;
        }
        let may_reroute = delivery.plan.may_reroute(now.mono_ms, delivery.logical);
        let owner = delivery.choice.owner.clone();
        if may_reroute && self.try_reroute(now, id) {
            return;
        }
        let reachable = self.reachable(&owner);
        let jitter = self.jitter();
        let Some(delivery) = self.deliveries.get_mut(id) else {
            return;
        };
        let was_deferred = delivery.plan.state == DeliveryState::Deferred;
        match delivery.plan.step(now.mono_ms, reachable, jitter) {
            Step::Wait => {}
            Step::SendInvoke => {
                delivery.busy = true;
                let to = delivery.choice.owner.clone();
                let frame = MeshFrame::Invoke(delivery.invoke());
                self.send(
                    to,
                    frame,
                    Sent::Invoke {
                        invocation_id: id.to_owned(),
                        started_unix_ms: now.unix_ms,
                    },
                );
            }
            Step::Query => {
                delivery.busy = true;
                let to = delivery.choice.owner.clone();
                self.send(
                    to,
                    MeshFrame::FlightQuery {
                        invocation_id: id.to_owned(),
                    },
                    Sent::Query {
                        invocation_id: id.to_owned(),
                    },
                );
            }
            Step::Defer => {
                // Entering `deferred` is recorded as an attempt that found
                // the owner unreachable; staying deferred is not recorded
                // again.
                if !was_deferred {
                    let delivery_id = delivery.delivery_id.clone();
                    self.persist(
                        vec![
                            Write::Attempt {
                                delivery_id: delivery_id.clone(),
                                started_unix_ms: now.unix_ms,
                                failure: Some((
                                    FailureReason::PeerUnreachable,
                                    "the owner is not connected".into(),
                                )),
                                at_unix_ms: now.unix_ms,
                            },
                            Write::DeliveryState {
                                delivery_id,
                                state: DeliveryState::Deferred,
                                failure: None,
                                at_unix_ms: now.unix_ms,
                            },
                        ],
                        false,
                        AfterPersist::Release(Vec::new()),
                    );
                    self.emit(id, EventKind::Delivery(DeliveryState::Deferred));
                }
            }
            Step::Fail { reason, detail } => {
                self.finish(now, id, failed(id, reason, detail));
            }
        }
    }

    /// Moves a delivery to another instance when the directory has one
    /// with another owner; true when the move started.
    fn try_reroute(&mut self, now: Now, id: &str) -> bool {
        let Some(delivery) = self.deliveries.get(id) else {
            return false;
        };
        let Some(choice) = self
            .directory
            .alternative(&delivery.invocation.target, &delivery.choice.instance)
        else {
            return false;
        };
        if choice.owner == delivery.choice.owner {
            return false;
        }
        let choice = Choice {
            reason: format!("rerouted ({})", choice.reason),
            ..choice
        };
        let delivery_id = delivery.delivery_id.clone();
        if let Some(delivery) = self.deliveries.get_mut(id) {
            delivery.busy = true;
        }
        self.persist(
            vec![Write::Reroute {
                delivery_id,
                choice: choice.clone(),
                at_unix_ms: now.unix_ms,
            }],
            true,
            AfterPersist::Rerouted {
                invocation_id: id.to_owned(),
                choice,
            },
        );
        true
    }

    pub(super) fn rerouted(&mut self, now: Now, id: &str, choice: Choice, ok: bool) {
        let Some(delivery) = self.deliveries.get_mut(id) else {
            return;
        };
        delivery.busy = false;
        if !ok {
            // The move was not recorded: the work stays where it was, and
            // a plan that gave up on that owner ends it.
            if delivery.plan.state.is_terminal() {
                let detail = "the move to another instance could not be recorded".to_owned();
                self.finish(now, id, failed(id, FailureReason::Dispatch, detail));
            }
            return;
        }
        delivery.choice = choice;
        delivery.plan =
            DeliveryPlan::new(now.mono_ms, delivery.plan.deadline_ms, delivery.plan.policy);
        self.emit(id, EventKind::Delivery(DeliveryState::Accepted));
        self.step(now, id);
    }

    /// The answer to a request this router sent.
    pub fn handle_response(
        &mut self,
        now: Now,
        request: RequestId,
        answer: Result<MeshFrame, SendFailure>,
    ) {
        let Some(sent) = self.requests.remove(&request) else {
            return;
        };
        match sent {
            Sent::Invoke {
                invocation_id,
                started_unix_ms,
            } => self.invoke_answered(now, &invocation_id, started_unix_ms, answer),
            Sent::Query { invocation_id } => {
                if let Ok(MeshFrame::FlightAck(Some(update))) = answer
                    && update.invocation_id == invocation_id
                {
                    self.apply_update(now, update);
                }
                self.release(now, &invocation_id);
            }
            Sent::Cancel { invocation_id } => {
                let fallback = self
                    .deliveries
                    .get(&invocation_id)
                    .map(|delivery| delivery.plan.ever_sent)
                    .unwrap_or(true);
                let update = match answer {
                    Ok(MeshFrame::FlightAck(Some(update)))
                        if update.invocation_id == invocation_id && update.state.is_terminal() =>
                    {
                        update
                    }
                    _ => FlightUpdate {
                        invocation_id: invocation_id.clone(),
                        state: FlightState::Cancelled,
                        output: FlightOutput::new(),
                        failure_reason: Some(FailureReason::Cancelled),
                        detail: Some(if fallback {
                            "cancelled here; the owner could not be told yet".into()
                        } else {
                            "cancelled before it reached its owner".into()
                        }),
                        failure_code: None,
                        usage: None,
                    },
                };
                self.finish(now, &invocation_id, update);
            }
            Sent::Update => {}
        }
    }

    fn invoke_answered(
        &mut self,
        now: Now,
        id: &str,
        started_unix_ms: u64,
        answer: Result<MeshFrame, SendFailure>,
    ) {
        let Some(delivery) = self.deliveries.get(id) else {
            return;
        };
        let delivery_id = delivery.delivery_id.clone();
        // An owner that is starting does not route yet: that is no refusal.
        let answer = match answer {
            Ok(MeshFrame::Error(error)) if error.code == ErrorCode::NotReady => Err(SendFailure {
                detail: format!("{}: {}", error.code, error.message),
            }),
            other => other,
        };
        let attempt = |failure: Option<(FailureReason, String)>| Write::Attempt {
            delivery_id: delivery_id.clone(),
            started_unix_ms,
            failure,
            at_unix_ms: now.unix_ms,
        };
        match answer {
            Ok(MeshFrame::InvokeAck(ack)) if !(ack.duplicate && ack.state.is_terminal()) => {
                // The common case: the owner holds it. The delivery moves
                // to what the owner reported, announced at once (it is the
                // owner's committed fact) and recorded with the attempt.
                let moved = self
                    .deliveries
                    .get_mut(id)
                    .and_then(|delivery| delivery.plan.on_flight(now.mono_ms, ack.state));
                let mut writes = vec![attempt(None)];
                if let Some(state) = moved {
                    writes.push(Write::DeliveryState {
                        delivery_id: delivery_id.clone(),
                        state,
                        failure: None,
                        at_unix_ms: now.unix_ms,
                    });
                    self.emit(id, EventKind::Delivery(state));
                }
                self.persist(writes, false, AfterPersist::Release(Vec::new()));
                self.release(now, id);
            }
            Ok(MeshFrame::InvokeAck(_)) => {
                // A retry of finished work: the ack carries no answer, so
                // the end is taken from the owner's flight, answer included.
                self.persist(
                    vec![attempt(None)],
                    false,
                    AfterPersist::Release(Vec::new()),
                );
                let to = self.deliveries.get(id).map(|d| d.choice.owner.clone());
                if let Some(to) = to {
                    self.send(
                        to,
                        MeshFrame::FlightQuery {
                            invocation_id: id.to_owned(),
                        },
                        Sent::Query {
                            invocation_id: id.to_owned(),
                        },
                    );
                }
            }
            Ok(MeshFrame::Error(error)) => {
                let reason = refusal_reason(&error.code);
                let detail = format!("{}: {}", error.code, error.message);
                self.persist(
                    vec![attempt(Some((reason, detail.clone())))],
                    false,
                    AfterPersist::Release(Vec::new()),
                );
                // The plan decides whether the refusal proves the owner
                // holds nothing (it answered the only invoke that ever left).
                let may_reroute = self.deliveries.get_mut(id).is_some_and(|delivery| {
                    delivery.plan.on_rejected(reason);
                    delivery.plan.may_reroute(now.mono_ms, delivery.logical)
                });
                if may_reroute && self.try_reroute(now, id) {
                    return;
                }
                self.finish(now, id, failed(id, reason, detail));
            }
            other => {
                let detail = match other {
                    Ok(frame) => format!("unexpected answer `{}`", frame.name()),
                    Err(failure) => failure.detail,
                };
                let jitter = self.jitter();
                if let Some(delivery) = self.deliveries.get_mut(id) {
                    delivery.plan.on_send_failed(now.mono_ms, jitter);
                }
                self.persist(
                    vec![
                        attempt(Some((FailureReason::PeerUnreachable, detail))),
                        Write::DeliveryState {
                            delivery_id: delivery_id.clone(),
                            state: DeliveryState::Deferred,
                            failure: None,
                            at_unix_ms: now.unix_ms,
                        },
                    ],
                    false,
                    AfterPersist::Release(Vec::new()),
                );
                self.release(now, id);
            }
        }
    }

    /// The outstanding request of a delivery ended.
    fn release(&mut self, _now: Now, id: &str) {
        if let Some(delivery) = self.deliveries.get_mut(id) {
            delivery.busy = false;
        }
    }

    /// A flight update from the owner (pushed, or answering a query). One
    /// for an invocation with no delivery in progress here changes nothing.
    pub(super) fn apply_update(&mut self, now: Now, update: FlightUpdate) {
        let id = update.invocation_id.clone();
        let Some(delivery) = self.deliveries.get_mut(&id) else {
            return;
        };
        if delivery.finishing {
            return;
        }
        if update.state.is_terminal() {
            self.finish(now, &id, update);
            return;
        }
        let moved = delivery.plan.on_flight(now.mono_ms, update.state);
        let delivery_id = delivery.delivery_id.clone();
        if !update.output.is_empty() {
            self.push(Output::Emit(Event {
                invocation_id: id.clone(),
                kind: EventKind::Output,
                output: Some(update.output),
                failure: None,
                code: None,
                usage: None,
            }));
        }
        if let Some(state) = moved {
            self.persist(
                vec![Write::DeliveryState {
                    delivery_id,
                    state,
                    failure: None,
                    at_unix_ms: now.unix_ms,
                }],
                false,
                AfterPersist::Release(Vec::new()),
            );
            self.emit(&id, EventKind::Delivery(state));
        }
    }

    /// A flight update from a peer: applied only when it comes from the
    /// owner this invocation was sent to.
    pub(super) fn handle_update_from(
        &mut self,
        now: Now,
        request: RequestId,
        from: &NodeId,
        update: FlightUpdate,
        facts: &super::Facts,
    ) {
        let id = update.invocation_id.clone();
        let verdict = match self.deliveries.get(&id) {
            Some(delivery) if delivery.choice.owner == *from => None,
            Some(_) => Some(Refusal::new(
                ErrorCode::NotOwner,
                "only the owner of a flight reports on it",
            )),
            None if facts.delivery_owners.is_empty() => Some(Refusal::new(
                ErrorCode::InvocationNotFound,
                "no delivery of that invocation here",
            )),
            // A late report of a delivery that ended here: harmless.
            None if facts.delivery_owners.contains(from) => {
                self.reply(request, MeshFrame::FlightAck(None));
                return;
            }
            None => Some(Refusal::new(
                ErrorCode::NotOwner,
                "only the owner of a flight reports on it",
            )),
        };
        match verdict {
            None => {
                self.apply_update(now, update);
                self.reply(request, MeshFrame::FlightAck(None));
            }
            Some(refusal) => {
                self.refusals.flight_updates_dropped += 1;
                self.push(Output::Refused {
                    peer: from.clone(),
                    invocation_id: id,
                    kind: RefusedKind::Update,
                });
                self.reply(request, MeshFrame::error(refusal.code, refusal.message));
            }
        }
    }

    /// Ends a delivery once: the final state and the answer (or the
    /// failure) as the conversation's result, in one commit; the event
    /// after it.
    pub(super) fn finish(&mut self, now: Now, id: &str, update: FlightUpdate) {
        let Some(delivery) = self.deliveries.get_mut(id) else {
            return;
        };
        if delivery.finishing {
            return;
        }
        delivery.finishing = true;
        let state = delivery_state_of(update.state);
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
        // A code says why a turn failed; it means nothing on another end.
        let code = match state {
            DeliveryState::Failed => update.failure_code.clone(),
            _ => None,
        };
        let body = match state {
            DeliveryState::Completed => update.output.to_string(),
            DeliveryState::Cancelled => "[cancelled]".to_owned(),
            _ => format!(
                "[failed: {}{}] {}",
                failure
                    .as_ref()
                    .map(|(reason, _)| reason.to_string())
                    .unwrap_or_default(),
                code.as_ref()
                    .map(|code| format!(", {code}"))
                    .unwrap_or_default(),
                update.detail.clone().unwrap_or_default()
            ),
        };
        let write = Write::FinishDelivery {
            delivery_id: delivery.delivery_id.clone(),
            invocation_id: id.to_owned(),
            conversation_id: delivery
                .invocation
                .conversation_id
                .clone()
                .unwrap_or_default(),
            state,
            failure: failure.clone(),
            code: code.clone(),
            usage: update.usage,
            author: delivery.choice.instance.clone(),
            body,
            at_unix_ms: now.unix_ms,
        };
        let event = Event {
            invocation_id: id.to_owned(),
            kind: EventKind::Delivery(state),
            output: Some(update.output),
            failure,
            code,
            usage: update.usage,
        };
        self.persist(
            vec![write],
            true,
            AfterPersist::Finished {
                invocation_id: id.to_owned(),
                event,
            },
        );
    }

    pub(super) fn finished(&mut self, now: Now, id: &str, event: Event, ok: bool) {
        if !ok {
            // Not recorded: the delivery stays, and the next query (or
            // report) finishes it again; a plan that ended itself (a
            // deadline) waits for a restart, which resumes it from the
            // store.
            if let Some(delivery) = self.deliveries.get_mut(id) {
                delivery.finishing = false;
                delivery.busy = false;
                delivery.plan.next_action_at_ms = now.mono_ms;
            }
            return;
        }
        self.deliveries.remove(id);
        self.push(Output::Emit(event));
    }

    /// Cancels an invocation: a delivery of this broker is cancelled at
    /// its owner (an ordinary request, to self for a local one) and ends
    /// with its `Delivery` event; a flight this broker owns for another
    /// origin is cancelled here.
    pub fn handle_cancel(&mut self, now: Now, invocation_id: &str) -> CancelStarted {
        if let Some(delivery) = self.deliveries.get_mut(invocation_id) {
            if delivery.finishing {
                return CancelStarted::Delivery;
            }
            if !delivery.plan.ever_sent && delivery.committed {
                // Nothing ever left: no owner holds it.
                self.finish(
                    now,
                    invocation_id,
                    FlightUpdate {
                        invocation_id: invocation_id.to_owned(),
                        state: FlightState::Cancelled,
                        output: FlightOutput::new(),
                        failure_reason: Some(FailureReason::Cancelled),
                        detail: Some("cancelled before it reached its owner".into()),
                        failure_code: None,
                        usage: None,
                    },
                );
                return CancelStarted::Delivery;
            }
            delivery.busy = true;
            let to = delivery.choice.owner.clone();
            self.send(
                to,
                MeshFrame::Cancel {
                    invocation_id: invocation_id.to_owned(),
                },
                Sent::Cancel {
                    invocation_id: invocation_id.to_owned(),
                },
            );
            return CancelStarted::Delivery;
        }
        if self.cancel_flight(now, invocation_id) {
            return CancelStarted::Flight;
        }
        CancelStarted::NotHere
    }
}

/// A failed flight as an update, for ending a delivery.
fn failed(id: &str, reason: FailureReason, detail: String) -> FlightUpdate {
    FlightUpdate {
        invocation_id: id.to_owned(),
        state: FlightState::Failed,
        output: FlightOutput::new(),
        failure_reason: Some(reason),
        detail: Some(detail),
        failure_code: None,
        usage: None,
    }
}
