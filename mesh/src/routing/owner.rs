//! The owner's side of the [`Router`]: accept an invocation under its id
//! (committed before the acknowledgement), run each instance's queued
//! flights one at a time, report progress to the origin (which also asks
//! when a report is lost), and cancel on the origin's request.

use crate::lifecycle::{FailureReason, FlightState};
use crate::output::FlightOutput;
use crate::usage::Usage;
use crate::wire::{ErrorCode, FlightUpdate, InvokeAck, InvokeRequest, MeshFrame, NodeId};

use super::{
    AfterPersist, Event, EventKind, ExecProgress, ExecResult, Execute, Facts, Invocation, Now,
    Output, PersistFailure, Refusal, RefusedKind, RequestId, RestoredFlight, Router, Sent,
    StoredFlight, Write,
};

/// A flight this broker owns, while it is unfinished (or its end is being
/// recorded).
#[derive(Debug, Clone)]
pub(super) struct Flight {
    pub(super) invocation: Invocation,
    pub(super) instance: String,
    pub(super) state: FlightState,
    /// The accept is committed (or queued, for a policy that does not wait
    /// for the disk): it may be acknowledged and run.
    pub(super) committed: bool,
    /// Retries of the invoke that arrived before the accept committed,
    /// answered once it has.
    pub(super) waiting: Vec<RequestId>,
    /// The output so far (the result of a failed flight).
    pub(super) output: FlightOutput,
    /// The end being recorded, as the update the origin gets.
    pub(super) result: Option<FlightUpdate>,
    /// The end is recorded (kept in memory only until its execution
    /// reports its end).
    pub(super) recorded: bool,
    /// Output bytes the execution reports again after a restart that were
    /// recorded before it (see [`crate::routing::Resumed`]).
    pub(super) replayed_output_bytes: u64,
}

impl Flight {
    fn update(&self) -> FlightUpdate {
        match &self.result {
            Some(result) => result.clone(),
            None => FlightUpdate {
                invocation_id: self.invocation.invocation_id.clone(),
                state: self.state,
                output: FlightOutput::new(),
                failure_reason: None,
                detail: None,
                failure_code: None,
                usage: None,
            },
        }
    }
}

impl Router {
    pub(super) fn handle_invoke(
        &mut self,
        now: Now,
        request: RequestId,
        invoke: InvokeRequest,
        facts: Facts,
    ) {
        let id = invoke.invocation_id.clone();
        // A retry of an id this broker holds is answered from its flight,
        // even if the agent went away since: refusing it would let the
        // origin send the work elsewhere and run it twice.
        if let Some(flight) = self.flights.get_mut(&id) {
            if flight.invocation.origin != invoke.origin {
                self.refuse_not_origin(request, &invoke.origin, &id);
                return;
            }
            if !flight.committed {
                flight.waiting.push(request);
                return;
            }
            let state = flight.state;
            self.reply(request, ack(&id, true, state));
            return;
        }
        if let Some(stored) = facts.flight {
            if stored.origin != invoke.origin {
                self.refuse_not_origin(request, &invoke.origin, &id);
                return;
            }
            self.reply(request, ack(&id, true, stored.update.state));
            return;
        }
        // An id refused once stays refused: the origin took the refusal as
        // final, and may have sent the work elsewhere. So does one its
        // origin cancelled before it arrived (held back on its way).
        if let Some((refusal, only)) = self.refused.get(&id).cloned()
            && only.is_none_or(|origin| origin == invoke.origin)
        {
            self.reply(request, MeshFrame::error(refusal.code, refusal.message));
            return;
        }
        // The causal chain is checked again where the work would run, so a
        // loop is refused even when the origin's broker did not check it.
        if let Err(looped) = crate::mention::check(
            &invoke.chain,
            &invoke.instance,
            crate::mention::MENTION_DEPTH_MAX,
        ) {
            let refusal = Refusal {
                code: ErrorCode::from_word(crate::mention::MENTION_LOOP_CODE),
                message: looped.to_string(),
            };
            self.remember_refusal(&id, refusal.clone());
            self.reply(request, MeshFrame::error(refusal.code, refusal.message));
            return;
        }
        if let Err(refusal) = facts.admission {
            self.remember_refusal(&id, refusal.clone());
            self.reply(request, MeshFrame::error(refusal.code, refusal.message));
            return;
        }
        let local = invoke.origin == self.node;
        let invocation = Invocation {
            invocation_id: id.clone(),
            action: invoke.action,
            body: invoke.body,
            conversation_id: invoke.conversation_id,
            origin: invoke.origin,
            target: invoke.target,
            deadline_unix_ms: invoke.deadline_ms,
            policy: invoke.policy,
            created_unix_ms: now.unix_ms,
            from: invoke.from,
            chain: invoke.chain,
        };
        let wait_for_disk = invocation.policy.waits_for_disk();
        self.flights.insert(
            id.clone(),
            Flight {
                invocation: invocation.clone(),
                instance: invoke.instance.clone(),
                state: FlightState::Queued,
                committed: false,
                waiting: vec![request],
                output: FlightOutput::new(),
                result: None,
                recorded: false,
                replayed_output_bytes: 0,
            },
        );
        self.persist(
            vec![Write::AcceptFlight {
                invocation,
                instance: invoke.instance,
                resolve_reason: invoke.resolve_reason,
                local,
                at_unix_ms: now.unix_ms,
            }],
            wait_for_disk,
            AfterPersist::Accepted { invocation_id: id },
        );
    }

    pub(super) fn accepted(&mut self, now: Now, id: &str, result: Result<(), PersistFailure>) {
        let Some(flight) = self.flights.get_mut(id) else {
            return;
        };
        let waiting = std::mem::take(&mut flight.waiting);
        match result {
            Ok(()) => {
                flight.committed = true;
                let instance = flight.instance.clone();
                for (n, request) in waiting.into_iter().enumerate() {
                    self.reply(request, ack(id, n > 0, FlightState::Queued));
                }
                self.emit(id, EventKind::Flight(FlightState::Queued));
                self.queues
                    .entry(instance.clone())
                    .or_default()
                    .push_back(id.to_owned());
                self.run_next(now, &instance);
            }
            Err(PersistFailure::Duplicate { state, origin }) => {
                // The store held it already (a race the in-memory view
                // missed): answered from the stored flight, never run again.
                let from = flight.invocation.origin.clone();
                self.flights.remove(id);
                for request in waiting {
                    if origin == from {
                        self.reply(request, ack(id, true, state));
                    } else {
                        self.refuse_not_origin(request, &from, id);
                    }
                }
            }
            Err(PersistFailure::Store { code, message }) => {
                self.flights.remove(id);
                for request in waiting {
                    self.reply(request, MeshFrame::error(code.as_str(), message.clone()));
                }
            }
        }
    }

    pub(super) fn restore_flight(&mut self, restored: RestoredFlight) {
        let id = restored.invocation.invocation_id.clone();
        let state = match restored.resume {
            // Its execution outlived the restart: it runs on, and its
            // instance's queue waits behind it as before.
            Some(_) => {
                self.executing.insert(restored.instance.clone(), id.clone());
                let execute = Execute {
                    invocation_id: id.clone(),
                    instance: restored.instance.clone(),
                    prompt: restored.invocation.body.clone(),
                    action: restored.invocation.action,
                    deadline_unix_ms: restored.invocation.deadline_unix_ms,
                    conversation_id: restored.invocation.conversation_id.clone(),
                    origin: restored.invocation.origin.clone(),
                    resume: true,
                };
                self.push(Output::Execute(execute));
                FlightState::Running
            }
            None => {
                self.queues
                    .entry(restored.instance.clone())
                    .or_default()
                    .push_back(id.clone());
                FlightState::Queued
            }
        };
        self.flights.insert(
            id,
            Flight {
                invocation: restored.invocation,
                instance: restored.instance,
                state,
                committed: true,
                waiting: Vec::new(),
                output: FlightOutput::new(),
                result: None,
                recorded: false,
                replayed_output_bytes: restored.resume.map_or(0, |resumed| resumed.output_bytes),
            },
        );
    }

    /// Starts the instance's next queued flight when none is executing.
    pub(super) fn run_next(&mut self, now: Now, instance: &str) {
        while !self.executing.contains_key(instance) {
            let Some(id) = self
                .queues
                .get_mut(instance)
                .and_then(|queue| queue.pop_front())
            else {
                self.queues.remove(instance);
                return;
            };
            let Some(flight) = self.flights.get(&id) else {
                continue;
            };
            // Only a committed flight runs. The queue may still hold the id
            // of an earlier flight of it that ended and was forgotten; a
            // retry of that id now in memory waits for its accept, which
            // queues it again (or finds the stored flight and drops it).
            if flight.state != FlightState::Queued || flight.result.is_some() || !flight.committed {
                continue;
            }
            if flight
                .invocation
                .deadline_unix_ms
                .is_some_and(|deadline| now.unix_ms >= deadline)
            {
                self.finish_flight(
                    now,
                    &id,
                    ExecResult::Failed {
                        reason: FailureReason::Timeout,
                        code: None,
                        detail: "the deadline passed while the flight was queued".into(),
                        usage: None,
                    },
                );
                continue;
            }
            // The agent gets the prompt only once `running` is committed:
            // a broker that dies after handing it over then finds the
            // flight running and ends it (the store's reconcile), instead
            // of finding it queued and running it a second time.
            self.executing.insert(instance.to_owned(), id.clone());
            let write = Write::FlightState {
                invocation_id: id.clone(),
                state: FlightState::Running,
                failure: None,
                at_unix_ms: now.unix_ms,
            };
            if let Some(flight) = self.flights.get_mut(&id) {
                flight.state = FlightState::Running;
            }
            self.persist(
                vec![write],
                true,
                AfterPersist::Dispatched { invocation_id: id },
            );
        }
    }

    /// The flight's `running` row is committed: the execution starts, and
    /// the origin hears the flight runs. A cancel that came meanwhile ends
    /// it here instead; a failed commit fails it without running it.
    pub(super) fn dispatched(&mut self, now: Now, id: &str, ok: bool) {
        let Some(flight) = self.flights.get(id) else {
            return;
        };
        let instance = flight.instance.clone();
        if !ok && flight.result.is_none() {
            self.executing.remove(&instance);
            self.finish_flight(
                now,
                id,
                ExecResult::Failed {
                    reason: FailureReason::HarnessError,
                    code: None,
                    detail: "the flight's start could not be recorded".into(),
                    usage: None,
                },
            );
            self.run_next(now, &instance);
            return;
        }
        if flight.result.is_some() || !ok {
            // Cancelled before the agent got the prompt: no execution will
            // report an end, so this is its end.
            self.handle_exec(now, id, ExecProgress::Finished(ExecResult::Cancelled));
            return;
        }
        let execute = Execute {
            invocation_id: id.to_owned(),
            instance,
            prompt: flight.invocation.body.clone(),
            action: flight.invocation.action,
            deadline_unix_ms: flight.invocation.deadline_unix_ms,
            conversation_id: flight.invocation.conversation_id.clone(),
            origin: flight.invocation.origin.clone(),
            resume: false,
        };
        let origin = flight.invocation.origin.clone();
        self.push(Output::Execute(execute));
        self.emit(id, EventKind::Flight(FlightState::Running));
        let send = self.update_to(
            origin,
            FlightUpdate {
                invocation_id: id.to_owned(),
                state: FlightState::Running,
                output: FlightOutput::new(),
                failure_reason: None,
                detail: None,
                failure_code: None,
                usage: None,
            },
        );
        self.push(send);
    }

    /// Progress of an execution this router asked for.
    pub fn handle_exec(&mut self, now: Now, invocation_id: &str, progress: ExecProgress) {
        let Some(flight) = self.flights.get_mut(invocation_id) else {
            return;
        };
        if let ExecProgress::Finished(result) = progress {
            let instance = flight.instance.clone();
            if self.executing.get(&instance).map(String::as_str) == Some(invocation_id) {
                self.executing.remove(&instance);
            }
            if flight.recorded {
                // Cancelled, and its end recorded already.
                self.flights.remove(invocation_id);
            } else if flight.result.is_none() {
                self.finish_flight(now, invocation_id, result);
            }
            self.run_next(now, &instance);
            return;
        }
        if flight.result.is_some() || flight.state.is_terminal() {
            return;
        }
        let (to, chunk) = match progress {
            ExecProgress::Waking if flight.state == FlightState::Queued => {
                (FlightState::Waking, String::new())
            }
            ExecProgress::Started
                if matches!(flight.state, FlightState::Queued | FlightState::Waking) =>
            {
                (FlightState::Running, String::new())
            }
            ExecProgress::Output(text) if !text.is_empty() => {
                // What a carried-on execution reports again is not new.
                let replayed = usize::try_from(flight.replayed_output_bytes)
                    .unwrap_or(usize::MAX)
                    .min(text.len());
                flight.replayed_output_bytes -= replayed as u64;
                let mut start = replayed;
                while !text.is_char_boundary(start) {
                    start += 1;
                }
                if start >= text.len() {
                    return;
                }
                (flight.state, text[start..].to_owned())
            }
            _ => return,
        };
        let mut writes = Vec::new();
        if to != flight.state {
            writes.push(Write::FlightState {
                invocation_id: flight.invocation.invocation_id.clone(),
                state: to,
                failure: None,
                at_unix_ms: now.unix_ms,
            });
            flight.state = to;
        }
        if !chunk.is_empty() {
            flight.output.push_str(&chunk);
            writes.push(Write::FlightOutput {
                invocation_id: flight.invocation.invocation_id.clone(),
                chunk: chunk.clone(),
                at_unix_ms: now.unix_ms,
            });
        }
        let origin = flight.invocation.origin.clone();
        let update = FlightUpdate {
            invocation_id: invocation_id.to_owned(),
            state: to,
            output: FlightOutput::from_text(&chunk),
            failure_reason: None,
            detail: None,
            failure_code: None,
            usage: None,
        };
        let event = Output::Emit(Event {
            invocation_id: invocation_id.to_owned(),
            kind: EventKind::Flight(to),
            output: (!chunk.is_empty()).then(|| FlightOutput::from_text(&chunk)),
            failure: None,
            code: None,
            usage: None,
        });
        let send = self.update_to(origin, update);
        self.persist(writes, true, AfterPersist::Release(vec![event, send]));
    }

    /// The send of a flight update to its origin (best effort: the origin
    /// queries for what it missed).
    fn update_to(&mut self, origin: NodeId, update: FlightUpdate) -> Output {
        let request = self.next_request();
        self.requests.insert(request, Sent::Update);
        Output::Send {
            request,
            to: origin,
            frame: MeshFrame::FlightUpdate(update),
        }
    }

    /// Records a flight's end; the origin hears of it after the commit.
    fn finish_flight(&mut self, now: Now, id: &str, result: ExecResult) {
        let Some(flight) = self.flights.get_mut(id) else {
            return;
        };
        let (state, failure, code, usage, text) = match result {
            ExecResult::Completed { response, usage } => (
                FlightState::Completed,
                None,
                None,
                usage,
                FlightOutput::from_text(&response),
            ),
            ExecResult::Failed {
                reason,
                code,
                detail,
                usage,
            } => (
                FlightState::Failed,
                Some((reason, detail)),
                code,
                usage,
                flight.output.clone(),
            ),
            ExecResult::Cancelled => (
                FlightState::Cancelled,
                Some((FailureReason::Cancelled, "cancelled on request".to_owned())),
                None,
                None,
                flight.output.clone(),
            ),
        };
        // Cut to the wire's limits here, so the origin never refuses the
        // report of an end over an agent's nonsense numbers.
        let usage = usage.map(Usage::clamped);
        let update = FlightUpdate {
            invocation_id: id.to_owned(),
            state,
            output: text.clone(),
            failure_reason: failure.as_ref().map(|(reason, _)| *reason),
            detail: failure.as_ref().map(|(_, detail)| detail.clone()),
            failure_code: code.clone(),
            usage,
        };
        flight.result = Some(update.clone());
        let write = Write::FinishFlight {
            invocation_id: flight.invocation.invocation_id.clone(),
            state,
            failure: failure.clone(),
            code: code.clone(),
            usage,
            result: text,
            at_unix_ms: now.unix_ms,
        };
        let origin = flight.invocation.origin.clone();
        let event = Output::Emit(Event {
            invocation_id: id.to_owned(),
            kind: EventKind::Flight(state),
            output: None,
            failure,
            code,
            usage,
        });
        let send = self.update_to(origin, update);
        self.persist(
            vec![write],
            true,
            AfterPersist::FlightFinished {
                invocation_id: id.to_owned(),
                release: vec![event, send],
            },
        );
    }

    /// A flight's end was recorded: the origin hears of it, and the flight
    /// is forgotten (the store answers retries and queries from now on)
    /// unless its execution has not reported its end yet (a cancel).
    pub(super) fn flight_finished(&mut self, id: &str, release: Vec<Output>, ok: bool) {
        if !ok {
            return;
        }
        for output in release {
            self.push(output);
        }
        let Some(flight) = self.flights.get_mut(id) else {
            return;
        };
        if self.executing.get(&flight.instance).map(String::as_str) == Some(id) {
            flight.recorded = true;
        } else {
            self.flights.remove(id);
        }
    }

    /// A query from the origin: where is the flight?
    pub(super) fn handle_query(
        &mut self,
        request: RequestId,
        from: &NodeId,
        id: &str,
        facts: Facts,
    ) {
        match self.flight_view(id, facts.flight) {
            Some((origin, _)) if origin != *from => self.refuse_not_origin(request, from, id),
            Some((_, update)) => self.reply(request, MeshFrame::FlightAck(Some(update))),
            None => self.reply(request, MeshFrame::FlightAck(None)),
        }
    }

    /// A cancel from the origin.
    pub(super) fn handle_remote_cancel(
        &mut self,
        now: Now,
        request: RequestId,
        from: &NodeId,
        id: &str,
        facts: Facts,
    ) {
        match self.flight_view(id, facts.flight) {
            Some((origin, _)) if origin != *from => self.refuse_not_origin(request, from, id),
            Some(_) => {
                self.cancel_flight(now, id);
                // Answered after the cancel's commit, with the flight as it
                // then is.
                let update = self
                    .flights
                    .get(id)
                    .map(Flight::update)
                    .or_else(|| self.flight_view(id, None).map(|(_, update)| update));
                self.persist(
                    Vec::new(),
                    true,
                    AfterPersist::Release(vec![Output::Reply {
                        request,
                        frame: MeshFrame::FlightAck(update),
                    }]),
                );
            }
            None => {
                // Cancelled before it arrived: an invoke of it still on
                // its way (a slow stream, a relay holding it) must not
                // run. Only its origin's invoke is refused, so nobody
                // else can cancel an id in advance.
                let refusal = Refusal {
                    code: ErrorCode::InvocationNotFound,
                    message: "cancelled by its origin before it arrived".to_owned(),
                };
                self.remember_refusal_of(id, refusal, Some(from.clone()));
                self.reply(request, MeshFrame::FlightAck(None));
            }
        }
    }

    /// The flight of `id` as (origin, update): from memory, else from the
    /// store's copy the driver read.
    fn flight_view(
        &self,
        id: &str,
        stored: Option<StoredFlight>,
    ) -> Option<(NodeId, FlightUpdate)> {
        if let Some(flight) = self.flights.get(id) {
            return Some((flight.invocation.origin.clone(), flight.update()));
        }
        stored.map(|stored| (stored.origin, stored.update))
    }

    /// Cancels a flight held here: stops it if it executes, ends it if it
    /// waits. False when no unfinished flight of `id` is held.
    pub(super) fn cancel_flight(&mut self, now: Now, id: &str) -> bool {
        let Some(flight) = self.flights.get(id) else {
            return false;
        };
        if flight.result.is_some() || flight.state.is_terminal() || !flight.committed {
            // Ending already: its end is still to be recorded (the caller
            // hears of it with that) unless it was recorded, in which case
            // there is nothing in progress here.
            return flight.committed && !flight.recorded;
        }
        let executing = self.executing.get(&flight.instance).map(String::as_str) == Some(id);
        if executing {
            self.push(Output::StopExecution {
                invocation_id: id.to_owned(),
            });
        }
        self.finish_flight(now, id, ExecResult::Cancelled);
        true
    }

    fn remember_refusal(&mut self, id: &str, refusal: Refusal) {
        self.remember_refusal_of(id, refusal, None);
    }

    /// Remembers `id` refused (to `only` that origin, when given).
    fn remember_refusal_of(&mut self, id: &str, refusal: Refusal, only: Option<NodeId>) {
        if self
            .refused
            .insert(id.to_owned(), (refusal, only))
            .is_none()
        {
            self.refused_order.push_back(id.to_owned());
        }
        while self.refused_order.len() > super::REFUSED_IDS_MAX {
            if let Some(oldest) = self.refused_order.pop_front() {
                self.refused.remove(&oldest);
            }
        }
    }

    fn refuse_not_origin(&mut self, request: RequestId, from: &NodeId, id: &str) {
        self.refusals.flight_requests_refused += 1;
        self.push(Output::Refused {
            peer: from.clone(),
            invocation_id: id.to_owned(),
            kind: RefusedKind::Request,
        });
        self.reply(
            request,
            MeshFrame::error(
                ErrorCode::NotOrigin,
                "only the origin of an invocation may query or cancel its flight",
            ),
        );
    }
}

fn ack(id: &str, duplicate: bool, state: FlightState) -> MeshFrame {
    MeshFrame::InvokeAck(InvokeAck {
        invocation_id: id.to_owned(),
        duplicate,
        state,
    })
}
