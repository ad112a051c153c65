//! Property test of the routing core: an origin driving `DeliveryPlan`s
//! against an owner that accepts by invocation id, over a link that drops,
//! duplicates and reorders messages and goes down, with restarts of both
//! sides. Every invocation ends at the origin, and the owner executes each
//! id exactly once.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use scout_mesh::lifecycle::{DeliveryPolicy, DeliveryState, FlightState};
use scout_mesh::routing::{DeliveryPlan, Step};

#[derive(Debug, Clone)]
enum Message {
    Invoke(usize),
    Ack(usize, FlightState),
    Query(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Tick(u64),
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    LinkDown,
    LinkUp,
    OwnerFinishes(usize),
    OwnerRestarts,
    OriginRestarts,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..400).prop_map(Op::Tick),
        6 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::Duplicate),
        1 => Just(Op::LinkDown),
        2 => Just(Op::LinkUp),
        2 => any::<usize>().prop_map(Op::OwnerFinishes),
        1 => Just(Op::OwnerRestarts),
        1 => Just(Op::OriginRestarts),
    ]
}

#[derive(Default)]
struct Owner {
    /// Durable: the flights by invocation id.
    flights: BTreeMap<usize, FlightState>,
    /// How many times each id started executing.
    executions: BTreeMap<usize, u32>,
}

impl Owner {
    fn accept(&mut self, id: usize) -> FlightState {
        if let Some(state) = self.flights.get(&id) {
            return *state;
        }
        self.flights.insert(id, FlightState::Running);
        *self.executions.entry(id).or_default() += 1;
        FlightState::Running
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

struct World {
    now: u64,
    link_up: bool,
    plans: Vec<DeliveryPlan>,
    owner: Owner,
    to_owner: Vec<Message>,
    to_origin: Vec<Message>,
    jitter: u64,
}

impl World {
    fn new(n: usize) -> World {
        World {
            now: 0,
            link_up: true,
            plans: (0..n)
                .map(|_| DeliveryPlan::new(0, None, DeliveryPolicy::Durable))
                .collect(),
            owner: Owner::default(),
            to_owner: Vec::new(),
            to_origin: Vec::new(),
            jitter: 7,
        }
    }

    fn next_jitter(&mut self) -> f64 {
        self.jitter = self
            .jitter
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1);
        (self.jitter >> 11) as f64 / (1u64 << 53) as f64
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        for id in 0..self.plans.len() {
            let jitter = self.next_jitter();
            match self.plans[id].step(self.now, self.link_up, jitter) {
                Step::SendInvoke => self.to_owner.push(Message::Invoke(id)),
                Step::Query => self.to_owner.push(Message::Query(id)),
                Step::Wait | Step::Defer => {}
                Step::Fail { reason, detail } => {
                    panic!("no deadline, yet failed: {reason} {detail}")
                }
            }
        }
    }

    fn deliver(&mut self, pick: usize) {
        if !self.link_up {
            return;
        }
        let total = self.to_owner.len() + self.to_origin.len();
        if total == 0 {
            return;
        }
        let idx = pick % total;
        if idx < self.to_owner.len() {
            match self.to_owner.remove(idx) {
                Message::Invoke(id) | Message::Query(id) => {
                    let state = self.owner.accept_or_query(id);
                    if let Some(state) = state {
                        self.to_origin.push(Message::Ack(id, state));
                    }
                }
                Message::Ack(..) => {}
            }
        } else if let Message::Ack(id, state) = self.to_origin.remove(idx - self.to_owner.len()) {
            self.plans[id].on_flight(self.now, state);
        }
    }

    fn all_done(&self) -> bool {
        self.plans.iter().all(|plan| plan.state.is_terminal())
    }
}

impl Owner {
    fn accept_or_query(&mut self, id: usize) -> Option<FlightState> {
        Some(self.accept(id))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

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
                    let total = world.to_owner.len() + world.to_origin.len();
                    if total > 0 {
                        let idx = pick % total;
                        if idx < world.to_owner.len() {
                            world.to_owner.remove(idx);
                        } else {
                            world.to_origin.remove(idx - world.to_owner.len());
                        }
                    }
                }
                Op::Duplicate(pick) => {
                    let total = world.to_owner.len() + world.to_origin.len();
                    if total > 0 {
                        let idx = pick % total;
                        if idx < world.to_owner.len() {
                            world.to_owner.push(world.to_owner[idx].clone());
                        } else {
                            let message = world.to_origin[idx - world.to_owner.len()].clone();
                            world.to_origin.push(message);
                        }
                    }
                }
                Op::LinkDown => world.link_up = false,
                Op::LinkUp => world.link_up = true,
                Op::OwnerFinishes(pick) => {
                    let running: Vec<usize> = world
                        .owner
                        .flights
                        .iter()
                        .filter(|(_, state)| **state == FlightState::Running)
                        .map(|(id, _)| *id)
                        .collect();
                    if !running.is_empty() {
                        let id = running[pick % running.len()];
                        world.owner.flights.insert(id, FlightState::Completed);
                        world.to_origin.push(Message::Ack(id, FlightState::Completed));
                    }
                }
                Op::OwnerRestarts => {
                    world.owner.restart();
                    world.to_owner.clear();
                }
                Op::OriginRestarts => {
                    // Plans are durable; what was in flight is lost.
                    world.to_origin.clear();
                }
            }
            for (id, count) in &world.owner.executions {
                prop_assert!(*count <= 1, "invocation {id} executed {count} times");
            }
        }
        // Liveness: the link heals and the owner finishes what runs.
        world.link_up = true;
        let mut rounds = 0;
        while !world.all_done() {
            rounds += 1;
            prop_assert!(rounds < 10_000, "deliveries never finished: {:?}", world.plans);
            world.tick(500);
            while !world.to_owner.is_empty() || !world.to_origin.is_empty() {
                world.deliver(0);
            }
            let running: Vec<usize> = world
                .owner
                .flights
                .iter()
                .filter(|(_, state)| **state == FlightState::Running)
                .map(|(id, _)| *id)
                .collect();
            for id in running {
                world.owner.flights.insert(id, FlightState::Completed);
            }
        }
        let accepted: BTreeSet<usize> = world.owner.flights.keys().copied().collect();
        prop_assert_eq!(accepted.len(), n, "every invocation reached the owner");
        for id in 0..n {
            prop_assert_eq!(world.owner.executions.get(&id).copied(), Some(1), "invocation {} runs once", id);
            let state = world.plans[id].state;
            prop_assert!(
                state == DeliveryState::Completed || state == DeliveryState::Failed,
                "invocation {id} ended {state}"
            );
            let flight = world.owner.flights[&id];
            prop_assert_eq!(
                scout_mesh::routing::delivery_state_of(flight),
                state,
                "the origin agrees with the owner"
            );
        }
    }
}
