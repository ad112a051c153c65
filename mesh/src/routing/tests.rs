//! The router on a tiny in-memory world: a model store per node (the rows
//! the router asked to persist), a network that delivers, drops or repeats
//! requests as a test says, and executions that finish when told.

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::lifecycle::{DeliveryPolicy, DeliveryState, FlightState, InvocationAction};
use crate::output::FlightOutput;
use crate::wire::InvokeRequest;

fn node(n: u8) -> NodeId {
    NodeId::of_public_key(&[n; 32])
}

fn now(ms: u64) -> Now {
    Now {
        mono_ms: ms,
        unix_ms: 1_700_000_000_000 + ms,
    }
}

/// Rows a node committed, as the driver's store would hold them.
#[derive(Debug, Default, Clone)]
struct Rows {
    /// Invocation id -> (origin, flight state, result).
    flights: BTreeMap<String, (NodeId, FlightState, Option<FlightUpdate>)>,
    /// Invocation id -> (delivery id, invocation, choice, state, attempts).
    deliveries: BTreeMap<String, (String, Invocation, Choice, DeliveryState, u32)>,
    /// Result messages by invocation id.
    results: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Node {
    router: Router,
    rows: Rows,
    /// Executions asked for, in order.
    executed: Vec<String>,
    /// Of those, the ones carried on after a restart.
    resumed: Vec<String>,
    events: Vec<Event>,
}

#[derive(Debug)]
struct World {
    nodes: BTreeMap<NodeId, Node>,
    /// Requests on their way: (from, to, request id at the sender, frame).
    wire: VecDeque<(NodeId, NodeId, RequestId, MeshFrame)>,
    /// Replies on their way: (to, request id at the receiver, frame).
    replies: VecDeque<(NodeId, RequestId, MeshFrame)>,
    /// Inbound request id at a node -> (sender, sender's request id).
    inbound: BTreeMap<(NodeId, RequestId), (NodeId, RequestId)>,
    /// Drop every request to this node.
    cut: Option<NodeId>,
    /// Finish every execution at once.
    auto_finish: bool,
}

impl World {
    fn new(ids: &[NodeId]) -> World {
        let mut nodes = BTreeMap::new();
        for id in ids {
            let mut router = Router::new(id.clone(), Box::new(NoAlternatives), 7);
            for peer in ids {
                router.handle_peer_up(now(0), peer.clone());
            }
            nodes.insert(
                id.clone(),
                Node {
                    router,
                    rows: Rows::default(),
                    executed: Vec::new(),
                    resumed: Vec::new(),
                    events: Vec::new(),
                },
            );
        }
        World {
            nodes,
            wire: VecDeque::new(),
            replies: VecDeque::new(),
            inbound: BTreeMap::new(),
            cut: None,
            auto_finish: true,
        }
    }

    fn node(&mut self, id: &NodeId) -> &mut Node {
        self.nodes.get_mut(id).unwrap()
    }

    /// Drains every node's outputs and delivers everything until quiet.
    /// `node` restarts at `t` with `deliveries` and `flights` restored
    /// (its volatile state lost) and sees `peer` connected again.
    fn restart(
        &mut self,
        t: u64,
        node: &NodeId,
        peer: &NodeId,
        deliveries: Vec<RestoredDelivery>,
        flights: Vec<RestoredFlight>,
    ) {
        let mut router = Router::restore(
            node.clone(),
            Box::new(NoAlternatives),
            9,
            now(t),
            deliveries,
            flights,
        );
        router.handle_peer_up(now(t), peer.clone());
        self.node(node).router = router;
    }

    /// Runs `node`'s timers every 500 ms from `from` to 20 s, settling
    /// the network after each.
    fn tick_until_late(&mut self, node: &NodeId, from: u64) {
        for t in (from..20_000).step_by(500) {
            self.node(node).router.handle_timeout(now(t));
            self.settle(t);
        }
    }

    fn settle(&mut self, t: u64) {
        loop {
            let mut moved = false;
            let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
            for id in &ids {
                while let Some(output) = self.node(id).router.poll_output() {
                    moved = true;
                    self.act(t, id, output);
                }
            }
            if let Some((from, to, request, frame)) = self.wire.pop_front() {
                moved = true;
                if self.cut.as_ref() != Some(&to) {
                    let facts = self.facts(&to, &frame);
                    let inbound =
                        self.node(&to)
                            .router
                            .handle_request(now(t), from.clone(), frame, facts);
                    self.inbound.insert((to, inbound), (from, request));
                } else {
                    let failure = SendFailure {
                        detail: "unreachable".into(),
                    };
                    self.node(&from)
                        .router
                        .handle_response(now(t), request, Err(failure));
                }
            }
            if let Some((to, request, frame)) = self.replies.pop_front() {
                moved = true;
                self.node(&to)
                    .router
                    .handle_response(now(t), request, Ok(frame));
            }
            if !moved {
                return;
            }
        }
    }

    fn facts(&mut self, at: &NodeId, frame: &MeshFrame) -> Facts {
        let node = self.node(at);
        let needs = node.router.needs_stored(frame);
        let id = match frame {
            MeshFrame::Invoke(invoke) => invoke.invocation_id.clone(),
            MeshFrame::FlightQuery { invocation_id } | MeshFrame::Cancel { invocation_id } => {
                invocation_id.clone()
            }
            MeshFrame::FlightUpdate(update) => update.invocation_id.clone(),
            _ => String::new(),
        };
        let mut facts = Facts::default();
        if needs.flight
            && let Some((origin, state, result)) = node.rows.flights.get(&id)
        {
            facts.flight = Some(StoredFlight {
                origin: origin.clone(),
                update: result.clone().unwrap_or(FlightUpdate {
                    invocation_id: id.clone(),
                    state: *state,
                    output: FlightOutput::new(),
                    failure_reason: None,
                    detail: None,
                    failure_code: None,
                    usage: None,
                }),
            });
        }
        if needs.delivery_owners
            && let Some((_, _, choice, _, _)) = node.rows.deliveries.get(&id)
        {
            facts.delivery_owners.push(choice.owner.clone());
        }
        facts
    }

    fn act(&mut self, t: u64, at: &NodeId, output: Output) {
        match output {
            Output::Persist { id, writes, .. } => {
                let rows = &mut self.node(at).rows;
                let mut result = Ok(());
                for write in writes {
                    if let Err(failure) = apply(rows, write) {
                        result = Err(failure);
                    }
                }
                self.node(at).router.handle_persisted(now(t), id, result);
            }
            Output::Send { request, to, frame } => {
                self.wire.push_back((at.clone(), to, request, frame))
            }
            Output::Reply { request, frame } => {
                if let Some((to, their)) = self.inbound.remove(&(at.clone(), request)) {
                    self.replies.push_back((to, their, frame));
                }
            }
            Output::Execute(execute) => {
                let node = self.node(at);
                node.executed.push(execute.invocation_id.clone());
                if execute.resume {
                    node.resumed.push(execute.invocation_id.clone());
                }
                if self.auto_finish {
                    let router = &mut self.node(at).router;
                    router.handle_exec(now(t), &execute.invocation_id, ExecProgress::Started);
                    router.handle_exec(
                        now(t),
                        &execute.invocation_id,
                        ExecProgress::Finished(ExecResult::Completed {
                            response: format!("answer to {}", execute.prompt),
                            usage: None,
                        }),
                    );
                }
            }
            Output::StopExecution { invocation_id } => {
                self.node(at).router.handle_exec(
                    now(t),
                    &invocation_id,
                    ExecProgress::Finished(ExecResult::Cancelled),
                );
            }
            Output::Emit(event) => self.node(at).events.push(event),
            Output::Refused { .. } => {}
        }
    }

    fn submit(&mut self, t: u64, at: &NodeId, owner: &NodeId, id: &str, target: &str) {
        let submission = Submission {
            invocation: Invocation {
                invocation_id: id.into(),
                action: InvocationAction::Consult,
                body: format!("prompt {id}"),
                conversation_id: Some("c".into()),
                origin: at.clone(),
                target: target.into(),
                deadline_unix_ms: Some(now(t).unix_ms + 60_000),
                policy: DeliveryPolicy::Durable,
                created_unix_ms: now(t).unix_ms,
                from: None,
                chain: Vec::new(),
            },
            delivery_id: format!("{id}-delivery"),
            choice: Choice {
                instance: "@fabric@b#main".into(),
                reason: "exact".into(),
                owner: owner.clone(),
            },
            logical: false,
            author: "operator".into(),
        };
        self.node(at).router.handle_submit(now(t), submission);
        self.settle(t);
    }

    fn final_state(&self, at: &NodeId, id: &str) -> Option<DeliveryState> {
        self.nodes[at]
            .events
            .iter()
            .filter(|event| event.invocation_id == id)
            .filter_map(|event| match event.kind {
                EventKind::Delivery(state) if state.is_terminal() => Some(state),
                _ => None,
            })
            .next_back()
    }
}

fn apply(rows: &mut Rows, write: Write) -> Result<(), PersistFailure> {
    match write {
        Write::Submit {
            invocation,
            delivery_id,
            choice,
            ..
        } => {
            rows.deliveries.insert(
                invocation.invocation_id.clone(),
                (delivery_id, invocation, choice, DeliveryState::Accepted, 0),
            );
        }
        Write::Attempt { delivery_id, .. } => {
            for row in rows.deliveries.values_mut() {
                if row.0 == delivery_id {
                    row.4 += 1;
                }
            }
        }
        Write::DeliveryState {
            delivery_id, state, ..
        } => {
            for row in rows.deliveries.values_mut() {
                if row.0 == delivery_id && row.3.can_transition_to(state) {
                    row.3 = state;
                }
            }
        }
        Write::Reroute {
            delivery_id,
            choice,
            ..
        } => {
            for row in rows.deliveries.values_mut() {
                if row.0 == delivery_id {
                    row.2 = choice.clone();
                    row.3 = DeliveryState::Accepted;
                }
            }
        }
        Write::FinishDelivery {
            invocation_id,
            state,
            body,
            ..
        } => {
            if let Some(row) = rows.deliveries.get_mut(&invocation_id)
                && !row.3.is_terminal()
            {
                row.3 = state;
            }
            rows.results.insert(invocation_id, body);
        }
        Write::AcceptFlight { invocation, .. } => {
            if let Some((origin, state, _)) = rows.flights.get(&invocation.invocation_id) {
                return Err(PersistFailure::Duplicate {
                    state: *state,
                    origin: origin.clone(),
                });
            }
            rows.flights.insert(
                invocation.invocation_id.clone(),
                (invocation.origin, FlightState::Queued, None),
            );
        }
        Write::FlightState {
            invocation_id: id,
            state,
            ..
        } => {
            if let Some(row) = rows.flights.get_mut(&id) {
                row.1 = state;
            }
        }
        Write::FlightOutput { .. } => {}
        Write::FinishFlight {
            invocation_id: id,
            state,
            failure,
            code,
            usage,
            result,
            ..
        } => {
            if let Some(row) = rows.flights.get_mut(&id)
                && !row.1.is_terminal()
            {
                row.1 = state;
                row.2 = Some(FlightUpdate {
                    invocation_id: id.clone(),
                    state,
                    output: result,
                    failure_reason: failure.as_ref().map(|(reason, _)| *reason),
                    detail: failure.map(|(_, detail)| detail),
                    failure_code: code,
                    usage,
                });
            }
        }
    }
    Ok(())
}

#[test]
fn a_local_delivery_is_a_send_to_self_and_runs_once() {
    let a = node(1);
    let mut world = World::new(std::slice::from_ref(&a));
    world.submit(0, &a, &a, "i1", "@fabric");
    assert_eq!(world.nodes[&a].executed, vec!["i1".to_owned()]);
    assert_eq!(world.final_state(&a, "i1"), Some(DeliveryState::Completed));
    assert_eq!(world.nodes[&a].rows.results["i1"], "answer to prompt i1");
    assert_eq!(world.nodes[&a].router.deliveries_in_progress(), 0);
    assert_eq!(world.nodes[&a].router.flights_in_progress(), 0);
}

#[test]
fn a_remote_delivery_completes_and_retries_never_run_twice() {
    let (a, b) = (node(1), node(2));
    let mut world = World::new(&[a.clone(), b.clone()]);
    world.auto_finish = false;
    world.submit(0, &a, &b, "i1", "@fabric@b#main");
    assert_eq!(world.nodes[&b].executed, vec!["i1".to_owned()]);
    // The ack was lost in a way: the origin sends the same invoke again.
    let invoke = MeshFrame::Invoke(InvokeRequest {
        invocation_id: "i1".into(),
        action: InvocationAction::Consult,
        body: "prompt i1".into(),
        conversation_id: Some("c".into()),
        origin: a.clone(),
        target: "@fabric@b#main".into(),
        instance: "@fabric@b#main".into(),
        resolve_reason: "exact".into(),
        deadline_ms: None,
        policy: DeliveryPolicy::Durable,
        from: None,
        chain: Vec::new(),
    });
    world
        .wire
        .push_back((a.clone(), b.clone(), RequestId(999_999), invoke.clone()));
    world.settle(1);
    assert_eq!(
        world.nodes[&b].executed.len(),
        1,
        "a retry never runs again"
    );
    let router = &mut world.node(&b).router;
    router.handle_exec(now(2), "i1", ExecProgress::Started);
    router.handle_exec(now(2), "i1", ExecProgress::Output("partial".into()));
    router.handle_exec(
        now(3),
        "i1",
        ExecProgress::Finished(ExecResult::Completed {
            response: "done".into(),
            usage: None,
        }),
    );
    world.settle(3);
    assert_eq!(world.final_state(&a, "i1"), Some(DeliveryState::Completed));
    assert!(
        world.nodes[&a]
            .events
            .iter()
            .any(|event| event.kind == EventKind::Output
                && event.output.as_deref() == Some("partial"))
    );
    // Long after, the retry is answered from the store.
    world
        .wire
        .push_back((a.clone(), b.clone(), RequestId(999_998), invoke));
    world.settle(4);
    assert_eq!(world.nodes[&b].executed.len(), 1);
    let finals = world.nodes[&a]
        .events
        .iter()
        .filter(|event| matches!(event.kind, EventKind::Delivery(state) if state.is_terminal()))
        .count();
    assert_eq!(finals, 1, "a delivery ends once");
}

#[test]
fn an_unreachable_owner_defers_and_a_returning_one_gets_the_work() {
    let (a, b) = (node(1), node(2));
    let mut world = World::new(&[a.clone(), b.clone()]);
    world.node(&a).router.handle_peer_down(&b);
    world.submit(0, &a, &b, "i1", "@fabric@b#main");
    assert!(world.nodes[&b].executed.is_empty());
    assert!(
        world.nodes[&a]
            .events
            .iter()
            .any(|event| event.kind == EventKind::Delivery(DeliveryState::Deferred))
    );
    world.node(&a).router.handle_peer_up(now(500), b.clone());
    world.settle(500);
    assert_eq!(world.nodes[&b].executed, vec!["i1".to_owned()]);
    assert_eq!(world.final_state(&a, "i1"), Some(DeliveryState::Completed));
}

#[test]
fn a_restarted_origin_finishes_without_running_twice() {
    let (a, b) = (node(1), node(2));
    let mut world = World::new(&[a.clone(), b.clone()]);
    world.auto_finish = false;
    world.submit(0, &a, &b, "i1", "@fabric@b#main");
    // The origin stops with the flight running; its volatile state is lost.
    let restored: Vec<RestoredDelivery> = world.nodes[&a]
        .rows
        .deliveries
        .values()
        .filter(|row| !row.3.is_terminal())
        .map(|row| RestoredDelivery {
            delivery_id: row.0.clone(),
            invocation: row.1.clone(),
            choice: row.2.clone(),
            state: row.3,
            attempts: row.4,
        })
        .collect();
    assert_eq!(restored.len(), 1);
    world.restart(10, &a, &b, restored, Vec::new());
    let router = &mut world.node(&b).router;
    router.handle_exec(
        now(11),
        "i1",
        ExecProgress::Finished(ExecResult::Completed {
            response: "done".into(),
            usage: None,
        }),
    );
    world.settle(11);
    // The update may reach the new router; if not, its queries find it.
    world.tick_until_late(&a, 12);
    assert_eq!(world.final_state(&a, "i1"), Some(DeliveryState::Completed));
    assert_eq!(world.nodes[&b].executed.len(), 1);
}

#[test]
fn an_owner_restarted_under_a_held_execution_carries_it_on_once() {
    let (a, b) = (node(1), node(2));
    let mut world = World::new(&[a.clone(), b.clone()]);
    world.auto_finish = false;
    world.submit(0, &a, &b, "i1", "@fabric@b#main");
    let router = &mut world.node(&b).router;
    router.handle_exec(now(1), "i1", ExecProgress::Started);
    router.handle_exec(now(1), "i1", ExecProgress::Output("hello ".into()));
    world.settle(1);
    assert_eq!(world.nodes[&b].rows.flights["i1"].1, FlightState::Running);

    // The owner restarts; the execution outlived it (a held turn), so its
    // running flight is restored to be carried on with the output so far.
    let invocation = world.nodes[&a].rows.deliveries["i1"].1.clone();
    let restored = RestoredFlight {
        invocation,
        instance: "@fabric@b#main".into(),
        resume: Some(Resumed { output_bytes: 6 }),
    };
    world.restart(10, &b, &a, Vec::new(), vec![restored]);
    world.settle(10);
    assert_eq!(world.nodes[&b].executed, ["i1", "i1"]);
    assert_eq!(
        world.nodes[&b].resumed,
        ["i1"],
        "re-attached, not run again"
    );

    // The execution reports its output again from the start, then its end.
    let router = &mut world.node(&b).router;
    router.handle_exec(now(11), "i1", ExecProgress::Output("hello wor".into()));
    router.handle_exec(now(11), "i1", ExecProgress::Output("ld".into()));
    router.handle_exec(
        now(11),
        "i1",
        ExecProgress::Finished(ExecResult::Completed {
            response: "hello world".into(),
            usage: None,
        }),
    );
    world.settle(11);
    world.tick_until_late(&a, 12);
    assert_eq!(world.final_state(&a, "i1"), Some(DeliveryState::Completed));
    assert_eq!(world.nodes[&b].rows.flights["i1"].1, FlightState::Completed);
    let output: String = world.nodes[&b]
        .events
        .iter()
        .filter(|event| event.invocation_id == "i1")
        .filter_map(|event| {
            event
                .output
                .as_ref()
                .map(|output| output.as_str().to_owned())
        })
        .collect();
    assert!(
        output.starts_with("hello world"),
        "output repeated: {output:?}"
    );
    assert_eq!(output.matches("hello").count(), 1, "{output:?}");
}

#[test]
fn only_the_origin_learns_about_a_flight() {
    let (a, b, c) = (node(1), node(2), node(3));
    let mut world = World::new(&[a.clone(), b.clone(), c.clone()]);
    world.auto_finish = false;
    world.submit(0, &a, &b, "i1", "@fabric@b#main");
    let facts = world.facts(
        &b,
        &MeshFrame::Cancel {
            invocation_id: "i1".into(),
        },
    );
    let request = world.node(&b).router.handle_request(
        now(1),
        c.clone(),
        MeshFrame::Cancel {
            invocation_id: "i1".into(),
        },
        facts,
    );
    let mut answer = None;
    while let Some(output) = world.node(&b).router.poll_output() {
        if let Output::Reply { request: r, frame } = output
            && r == request
        {
            answer = Some(frame);
        }
    }
    match answer {
        Some(MeshFrame::Error(error)) => assert_eq!(error.code, ErrorCode::NotOrigin),
        other => panic!("expected NOT_ORIGIN, got {other:?}"),
    }
    assert_eq!(world.nodes[&b].router.refusals().flight_requests_refused, 1);
}

#[test]
fn a_cancel_reaches_the_owner_and_ends_the_delivery_once() {
    let (a, b) = (node(1), node(2));
    let mut world = World::new(&[a.clone(), b.clone()]);
    world.auto_finish = false;
    world.submit(0, &a, &b, "i1", "@fabric@b#main");
    assert_eq!(
        world.node(&a).router.handle_cancel(now(1), "i1"),
        CancelStarted::Delivery
    );
    world.settle(1);
    assert_eq!(world.final_state(&a, "i1"), Some(DeliveryState::Cancelled));
    assert_eq!(world.nodes[&b].rows.flights["i1"].1, FlightState::Cancelled);
    assert_eq!(world.nodes[&b].router.flights_in_progress(), 0);
}

#[test]
fn a_refusal_of_the_only_invoke_fails_an_exact_mention() {
    let (a, b) = (node(1), node(2));
    let mut world = World::new(&[a.clone(), b.clone()]);
    // b's driver says the agent is not there.
    world.node(&b).router = Router::new(b.clone(), Box::new(NoAlternatives), 1);
    world.node(&b).router.handle_peer_up(now(0), a.clone());
    world.node(&a).router.handle_submit(
        now(0),
        Submission {
            invocation: Invocation {
                invocation_id: "i1".into(),
                action: InvocationAction::Consult,
                body: "p".into(),
                conversation_id: None,
                origin: a.clone(),
                target: "@fabric@b#main".into(),
                deadline_unix_ms: None,
                policy: DeliveryPolicy::Durable,
                created_unix_ms: 0,
                from: None,
                chain: Vec::new(),
            },
            delivery_id: "d1".into(),
            choice: Choice {
                instance: "@fabric@b#main".into(),
                reason: "exact".into(),
                owner: b.clone(),
            },
            logical: false,
            author: "operator".into(),
        },
    );
    // Deliver by hand with a refusing admission.
    while let Some(output) = world.node(&a).router.poll_output() {
        match output {
            Output::Persist { id, .. } => {
                world.node(&a).router.handle_persisted(now(0), id, Ok(()));
            }
            Output::Send { request, frame, .. } => {
                let facts = Facts {
                    admission: Err(Refusal::new(ErrorCode::AgentOffline, "no such agent")),
                    ..Facts::default()
                };
                let inbound = world
                    .node(&b)
                    .router
                    .handle_request(now(0), a.clone(), frame, facts);
                while let Some(answer) = world.node(&b).router.poll_output() {
                    if let Output::Reply { request: r, frame } = answer
                        && r == inbound
                    {
                        world
                            .node(&a)
                            .router
                            .handle_response(now(0), request, Ok(frame));
                    }
                }
            }
            Output::Emit(event) => world.node(&a).events.push(event),
            _ => {}
        }
    }
    assert_eq!(world.final_state(&a, "i1"), Some(DeliveryState::Failed));
    assert!(world.nodes[&b].executed.is_empty());
}

/// An invoke of `i1` to `@fabric@b#main` from `origin`.
fn invoke_i1_from(origin: &NodeId) -> MeshFrame {
    MeshFrame::Invoke(InvokeRequest {
        invocation_id: "i1".into(),
        action: InvocationAction::Consult,
        body: "p".into(),
        conversation_id: None,
        origin: origin.clone(),
        target: "@fabric".into(),
        instance: "@fabric@b#main".into(),
        resolve_reason: "exact".into(),
        deadline_ms: None,
        policy: DeliveryPolicy::Durable,
        from: None,
        chain: Vec::new(),
    })
}

#[test]
fn a_refused_id_stays_refused_when_an_earlier_invoke_arrives_late() {
    // The origin's first invoke is slow; its retry is refused (the agent
    // was away), and the origin takes that as final. When the slow first
    // invoke arrives after the agent is back, it must not run.
    let (a, b) = (node(1), node(2));
    let mut owner = Router::new(b.clone(), Box::new(NoAlternatives), 1);
    let invoke = invoke_i1_from(&a);
    let away = Facts {
        admission: Err(Refusal::new(ErrorCode::AgentOffline, "away")),
        ..Facts::default()
    };
    owner.handle_request(now(0), a.clone(), invoke.clone(), away);
    owner.handle_request(now(1), a.clone(), invoke, Facts::default());
    let mut refusals = 0;
    while let Some(output) = owner.poll_output() {
        match output {
            Output::Reply {
                frame: MeshFrame::Error(error),
                ..
            } => {
                assert_eq!(error.code, ErrorCode::AgentOffline);
                refusals += 1;
            }
            Output::Persist { .. } | Output::Execute(_) => panic!("a refused id was accepted"),
            _ => {}
        }
    }
    assert_eq!(refusals, 2);
}

#[test]
fn an_invoke_its_origin_cancelled_before_it_arrived_does_not_run() {
    // The origin cancels while its invoke is still on its way (a slow
    // stream, or a relay holding it back); the owner has never heard of
    // the id and says so. When the invoke arrives, it must not run; the
    // same id from another origin is not refused for it.
    let (a, b, c) = (node(1), node(2), node(3));
    let mut owner = Router::new(b.clone(), Box::new(NoAlternatives), 1);
    let cancel = MeshFrame::Cancel {
        invocation_id: "i1".into(),
    };
    owner.handle_request(now(0), a.clone(), cancel, Facts::default());
    owner.handle_request(now(1), a.clone(), invoke_i1_from(&a), Facts::default());
    let mut refused = 0;
    while let Some(output) = owner.poll_output() {
        match output {
            Output::Reply {
                frame: MeshFrame::Error(error),
                ..
            } => {
                assert_eq!(error.code, ErrorCode::InvocationNotFound);
                refused += 1;
            }
            Output::Persist { .. } | Output::Execute(_) => {
                panic!("an invoke cancelled before it arrived was accepted")
            }
            _ => {}
        }
    }
    assert_eq!(refused, 1);
    owner.handle_request(now(2), c.clone(), invoke_i1_from(&c), Facts::default());
    let mut accepted = false;
    while let Some(output) = owner.poll_output() {
        accepted |= matches!(output, Output::Persist { .. });
    }
    assert!(
        accepted,
        "one origin's cancel does not refuse another origin's invoke"
    );
}

/// A failed turn's code and what it used reach the origin with the
/// result: in the delivery's final row and its event, also when the origin
/// restarted and finds the result by asking the owner's store.
#[test]
fn a_failure_code_and_usage_reach_the_origin_even_after_its_restart() {
    let (a, b) = (node(1), node(2));
    let mut world = World::new(&[a.clone(), b.clone()]);
    world.auto_finish = false;
    world.submit(0, &a, &b, "i1", "@fabric@b#main");
    let restored: Vec<RestoredDelivery> = world.nodes[&a]
        .rows
        .deliveries
        .values()
        .filter(|row| !row.3.is_terminal())
        .map(|row| RestoredDelivery {
            delivery_id: row.0.clone(),
            invocation: row.1.clone(),
            choice: row.2.clone(),
            state: row.3,
            attempts: row.4,
        })
        .collect();
    // The origin stops before the end is reported; the owner's report
    // reaches nobody, so the new origin learns the end from a query.
    world.cut = Some(a.clone());
    let usage = crate::usage::Usage {
        input_tokens: 120,
        output_tokens: 30,
        cached_tokens: 100,
        cost_micro_usd: Some(4_200),
    };
    let code = crate::usage::FailureCode::parse("AUTH_REQUIRED").unwrap();
    world.node(&b).router.handle_exec(
        now(1),
        "i1",
        ExecProgress::Finished(ExecResult::Failed {
            reason: FailureReason::HarnessError,
            code: Some(code.clone()),
            detail: "Invalid API key · Please run /login".into(),
            usage: Some(usage),
        }),
    );
    world.settle(1);
    world.cut = None;
    world.restart(10, &a, &b, restored, Vec::new());
    world.tick_until_late(&a, 10);
    assert_eq!(world.final_state(&a, "i1"), Some(DeliveryState::Failed));
    let ended = world.nodes[&a]
        .events
        .iter()
        .find(|event| event.kind == EventKind::Delivery(DeliveryState::Failed))
        .expect("the delivery ended");
    assert_eq!(ended.code.as_ref(), Some(&code));
    assert_eq!(ended.usage, Some(usage));
    assert!(
        world.nodes[&a].rows.results["i1"].starts_with("[failed: harness_error, AUTH_REQUIRED]")
    );
    let owned = world.nodes[&b].rows.flights["i1"].2.clone().unwrap();
    assert_eq!(owned.failure_code, Some(code));
    assert_eq!(owned.usage, Some(usage));
}
