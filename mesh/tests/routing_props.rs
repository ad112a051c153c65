//! Property test of the routing core: an origin driving `DeliveryPlan`s
//! for logical mentions against two owners that accept by invocation id,
//! over links that drop and reorder messages and go down, with an agent
//! that leaves and comes back (its owner refuses meanwhile), rerouting to
//! the other owner when the plan allows it, and restarts of every side.
//! The origin's restart keeps only what its store keeps: the delivery's
//! state and owner, and the attempts whose outcome it recorded. Every
//! invocation ends at the origin, and no id is executed twice by the two
//! owners together.

use std::collections::BTreeMap;

use proptest::prelude::*;
use scout_mesh::lifecycle::{DeliveryPolicy, DeliveryState, FailureReason, FlightState};
use scout_mesh::routing::{DeliveryPlan, Step};

/// Owners in the model: the first choice and one other instance.
const OWNERS: usize = 2;

/// Messages name the invocation and the owner; an invoke and its refusal
/// also carry the origin's start and the attempt they belong to, because
/// the origin takes a refusal only as the answer of the attempt it waits
/// for (a request's answer never reaches a later attempt, nor a restarted
/// origin).
#[derive(Debug, Clone)]
enum Message {
    Invoke(usize, usize, u32, u32),
    Query(usize, usize),
    Ack(usize, usize, FlightState),
    Refused(usize, usize, u32, u32),
}

#[derive(Debug, Clone)]
enum Op {
    Tick(u64),
    Deliver(usize),
    Drop(usize),
    DuplicateAnswer(usize),
    LinkDown(usize),
    LinkUp(usize),
    AgentLeaves(usize),
    AgentReturns(usize),
    OwnerFinishes(usize),
    OwnerRestarts(usize),
    OriginRestarts,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..400).prop_map(Op::Tick),
        6 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::DuplicateAnswer),
        1 => (0..OWNERS).prop_map(Op::LinkDown),
        2 => (0..OWNERS).prop_map(Op::LinkUp),
        1 => (0..OWNERS).prop_map(Op::AgentLeaves),
        1 => (0..OWNERS).prop_map(Op::AgentReturns),
        2 => any::<usize>().prop_map(Op::OwnerFinishes),
        1 => (0..OWNERS).prop_map(Op::OwnerRestarts),
        1 => Just(Op::OriginRestarts),
    ]
}

struct Owner {
    /// Durable: the flights by invocation id.
    flights: BTreeMap<usize, FlightState>,
    /// Whether the agent is here; without it, unknown ids are refused.
    agent: bool,
    link_up: bool,
}

impl Owner {
    fn new() -> Owner {
        Owner {
            flights: BTreeMap::new(),
            agent: true,
            link_up: true,
        }
    }

    /// What the owner answers an invoke: its flight if it holds the id
    /// (even without the agent), a refusal when the agent is away, else a
    /// new flight, which starts executing.
    fn accept(
        &mut self,
        (id, owner, start, attempt): (usize, usize, u32, u32),
        executions: &mut BTreeMap<usize, u32>,
    ) -> Message {
        if let Some(state) = self.flights.get(&id) {
            return Message::Ack(id, owner, *state);
        }
        if !self.agent {
            return Message::Refused(id, owner, start, attempt);
        }
        self.flights.insert(id, FlightState::Running);
        *executions.entry(id).or_default() += 1;
        Message::Ack(id, owner, FlightState::Running)
    }

    fn restart(&mut self) {
        // What the store's reconcile does to flights a crash interrupted.
        for state in self.flights.values_mut() {
            if *state == FlightState::Running {
                *state = FlightState::Failed;
            }
        }
    }
}

/// One delivery at the origin: the plan in memory and what the store has.
struct Delivery {
    plan: DeliveryPlan,
    owner: usize,
    stored_state: DeliveryState,
    stored_owner: usize,
    recorded_attempts: u32,
}

struct World {
    now: u64,
    deliveries: Vec<Delivery>,
    owners: Vec<Owner>,
    /// Executions of each id, over both owners.
    executions: BTreeMap<usize, u32>,
    to_owner: Vec<Message>,
    to_origin: Vec<Message>,
    jitter: u64,
    /// The origin's start (restarts so far).
    start: u32,
}

impl World {
    fn new(n: usize) -> World {
        World {
            now: 0,
            deliveries: (0..n)
                .map(|_| Delivery {
                    plan: DeliveryPlan::new(0, None, DeliveryPolicy::Durable),
                    owner: 0,
                    stored_state: DeliveryState::Accepted,
                    stored_owner: 0,
                    recorded_attempts: 0,
                })
                .collect(),
            owners: (0..OWNERS).map(|_| Owner::new()).collect(),
            executions: BTreeMap::new(),
            to_owner: Vec::new(),
            to_origin: Vec::new(),
            jitter: 7,
            start: 0,
        }
    }

    fn next_jitter(&mut self) -> f64 {
        self.jitter = self
            .jitter
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1);
        (self.jitter >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Moves a delivery to the other owner, as the origin's reroute does
    /// (the store records the new owner, the plan starts afresh).
    fn reroute(&mut self, id: usize) {
        let delivery = &mut self.deliveries[id];
        delivery.owner = (delivery.owner + 1) % OWNERS;
        delivery.stored_owner = delivery.owner;
        delivery.stored_state = DeliveryState::Accepted;
        delivery.plan = DeliveryPlan::new(self.now, None, DeliveryPolicy::Durable);
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        for id in 0..self.deliveries.len() {
            if self.deliveries[id].plan.may_reroute(self.now, true) {
                self.reroute(id);
            }
            let jitter = self.next_jitter();
            let owner = self.deliveries[id].owner;
            let connected = self.owners[owner].link_up;
            let delivery = &mut self.deliveries[id];
            match delivery.plan.step(self.now, connected, jitter) {
                // The attempt is recorded only once its outcome is known.
                Step::SendInvoke => self.to_owner.push(Message::Invoke(
                    id,
                    owner,
                    self.start,
                    delivery.plan.attempts,
                )),
                Step::Query => self.to_owner.push(Message::Query(id, owner)),
                Step::Defer => {
                    if delivery.stored_state != DeliveryState::Deferred {
                        delivery.stored_state = DeliveryState::Deferred;
                        delivery.recorded_attempts += 1;
                    }
                }
                Step::Wait => {}
                Step::Fail { reason, detail } => {
                    panic!("no deadline, yet failed: {reason} {detail}")
                }
            }
        }
    }

    fn total(&self) -> usize {
        self.to_owner.len() + self.to_origin.len()
    }

    fn deliver(&mut self, pick: usize) {
        let total = self.total();
        if total == 0 {
            return;
        }
        let idx = pick % total;
        if idx < self.to_owner.len() {
            let owner = match &self.to_owner[idx] {
                Message::Invoke(_, owner, ..) | Message::Query(_, owner) => *owner,
                _ => return,
            };
            if !self.owners[owner].link_up {
                return;
            }
            match self.to_owner.remove(idx) {
                Message::Invoke(id, owner, start, attempt) => {
                    let answer = self.owners[owner]
                        .accept((id, owner, start, attempt), &mut self.executions);
                    self.to_origin.push(answer);
                }
                Message::Query(id, _) => {
                    if let Some(state) = self.owners[owner].flights.get(&id) {
                        self.to_origin.push(Message::Ack(id, owner, *state));
                    }
                }
                _ => {}
            }
            return;
        }
        let idx = idx - self.to_owner.len();
        let owner = match &self.to_origin[idx] {
            Message::Ack(_, owner, _) | Message::Refused(_, owner, ..) => *owner,
            _ => return,
        };
        if !self.owners[owner].link_up {
            return;
        }
        match self.to_origin.remove(idx) {
            // Only the delivery's current owner reports on it.
            Message::Ack(id, owner, state) if self.deliveries[id].owner == owner => {
                let delivery = &mut self.deliveries[id];
                delivery.plan.on_flight(self.now, state);
                delivery.recorded_attempts += 1;
                delivery.stored_state = delivery.plan.state;
            }
            Message::Refused(id, owner, start, attempt)
                if self.deliveries[id].owner == owner
                    && start == self.start
                    && attempt == self.deliveries[id].plan.attempts =>
            {
                let delivery = &mut self.deliveries[id];
                if delivery.plan.state.is_terminal() {
                    return;
                }
                delivery.plan.on_rejected(FailureReason::AgentOffline);
                delivery.recorded_attempts += 1;
                if delivery.plan.may_reroute(self.now, true) {
                    self.reroute(id);
                } else {
                    delivery.stored_state = DeliveryState::Failed;
                }
            }
            _ => {}
        }
    }

    /// The origin restarts: what was on its way to it is lost, and its
    /// plans are rebuilt from its store.
    fn origin_restarts(&mut self) {
        self.start += 1;
        self.to_origin.clear();
        for delivery in &mut self.deliveries {
            delivery.owner = delivery.stored_owner;
            delivery.plan = if delivery.stored_state.is_terminal() {
                let mut plan = DeliveryPlan::new(self.now, None, DeliveryPolicy::Durable);
                plan.state = delivery.stored_state;
                plan
            } else {
                DeliveryPlan::recovered(
                    self.now,
                    None,
                    DeliveryPolicy::Durable,
                    delivery.stored_state,
                    delivery.recorded_attempts,
                )
            };
        }
    }

    fn all_done(&self) -> bool {
        self.deliveries
            .iter()
            .all(|delivery| delivery.plan.state.is_terminal())
    }

    fn finish_running(&mut self, owner: usize, pick: Option<usize>) {
        let running: Vec<usize> = self.owners[owner]
            .flights
            .iter()
            .filter(|(_, state)| **state == FlightState::Running)
            .map(|(id, _)| *id)
            .collect();
        let chosen: Vec<usize> = match pick {
            Some(pick) if !running.is_empty() => vec![running[pick % running.len()]],
            Some(_) => Vec::new(),
            None => running,
        };
        for id in chosen {
            self.owners[owner]
                .flights
                .insert(id, FlightState::Completed);
            self.to_origin
                .push(Message::Ack(id, owner, FlightState::Completed));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_invocation_ends_and_runs_exactly_once(
        n in 1usize..8,
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let mut world = World::new(n);
        for op in ops {
            match op {
                Op::Tick(ms) => world.tick(ms),
                Op::Deliver(pick) => world.deliver(pick),
                Op::Drop(pick) => {
                    let total = world.total();
                    if total > 0 {
                        let idx = pick % total;
                        if idx < world.to_owner.len() {
                            world.to_owner.remove(idx);
                        } else {
                            world.to_origin.remove(idx - world.to_owner.len());
                        }
                    }
                }
                // QUIC hands a stream over at most once, so an invoke is
                // never duplicated on the way (the origin's retries are
                // attempts of their own); answers may come twice, as an
                // ack and a later query answer do.
                Op::DuplicateAnswer(pick) => {
                    if !world.to_origin.is_empty() {
                        let message = world.to_origin[pick % world.to_origin.len()].clone();
                        world.to_origin.push(message);
                    }
                }
                Op::LinkDown(owner) => world.owners[owner].link_up = false,
                Op::LinkUp(owner) => world.owners[owner].link_up = true,
                Op::AgentLeaves(owner) => world.owners[owner].agent = false,
                Op::AgentReturns(owner) => world.owners[owner].agent = true,
                Op::OwnerFinishes(pick) => world.finish_running(pick % OWNERS, Some(pick / OWNERS)),
                Op::OwnerRestarts(owner) => {
                    world.owners[owner].restart();
                    world.to_owner.retain(|message| {
                        !matches!(message, Message::Invoke(_, o, ..) | Message::Query(_, o) if *o == owner)
                    });
                }
                Op::OriginRestarts => world.origin_restarts(),
            }
            for (id, count) in &world.executions {
                prop_assert!(*count <= 1, "invocation {id} executed {count} times");
            }
        }
        // Liveness: links heal, agents come back, owners finish what runs.
        for owner in &mut world.owners {
            owner.link_up = true;
            owner.agent = true;
        }
        let mut rounds = 0;
        while !world.all_done() {
            rounds += 1;
            let plans: Vec<&DeliveryPlan> = world.deliveries.iter().map(|d| &d.plan).collect();
            prop_assert!(rounds < 10_000, "deliveries never finished: {:?}", plans);
            world.tick(500);
            while world.total() > 0 {
                world.deliver(0);
            }
            for owner in 0..OWNERS {
                world.finish_running(owner, None);
            }
        }
        for (id, count) in &world.executions {
            prop_assert!(*count <= 1, "invocation {id} executed {count} times");
        }
        for (id, delivery) in world.deliveries.iter().enumerate() {
            let state = delivery.plan.state;
            prop_assert!(
                state == DeliveryState::Completed || state == DeliveryState::Failed,
                "invocation {id} ended {state}"
            );
            if state == DeliveryState::Completed {
                let flight = world.owners[delivery.owner].flights.get(&id).copied();
                prop_assert_eq!(
                    flight,
                    Some(FlightState::Completed),
                    "invocation {} completed at the origin, so at its owner",
                    id
                );
            }
        }
    }
}
