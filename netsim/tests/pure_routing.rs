//! The pure routing swarm: the routing core and the sync core under fault
//! schedules with no QUIC and no store. A small swarm passes, a schedule
//! replays exactly, the seeds that found the owner's start window stay
//! green, and a variant without the owner's duplicate guards is caught.

use scout_netsim::pure_routing::{self, Broken, RoutingOptions};
use scout_netsim::pure_swarm::{self, PureSwarmOptions};

/// Invocations per schedule in these tests: enough for retries, crashes
/// and partitions to meet, small enough for a debug build.
const TEST_INVOCATIONS: usize = 200;

#[test]
fn a_small_pure_routing_swarm_passes() {
    let report = pure_swarm::run(
        &PureSwarmOptions {
            first_seed: 1,
            end_seed: 51,
            nodes: (3, 9),
            invocations: TEST_INVOCATIONS,
            jobs: 2,
            broken: None,
        },
        |_| {},
    );
    assert_eq!(report.schedules, 50);
    assert_eq!(report.failed, 0, "{}", report.summary());
    assert!(report.executions > 0);
}

#[test]
fn a_schedule_replays_exactly() {
    let options = RoutingOptions {
        seed: 7,
        nodes: 5,
        invocations: TEST_INVOCATIONS,
        broken: None,
    };
    let first = pure_routing::run(&options);
    let second = pure_routing::run(&options);
    assert_eq!(first.events, second.events);
    assert_eq!(first.sim_ms, second.sim_ms);
    assert_eq!(first.completed, second.completed);
    assert_eq!(first.executions, second.executions);
}

/// Before the owner committed `running` ahead of the prompt, each of these
/// schedules crashed an owner between an execution's start and the commit
/// of its `running` row: the restarted owner found the flight queued and
/// ran it again.
#[test]
fn an_owner_that_dies_after_the_prompt_never_runs_it_again() {
    for (seed, nodes) in [(126, 3), (154, 3), (106, 4), (87, 6)] {
        let report = pure_routing::run(&RoutingOptions {
            seed,
            nodes,
            invocations: 1_000,
            broken: None,
        });
        assert!(report.passed(), "{}", report.summary());
    }
}

/// Seed 3858 (4 nodes): an invocation queued behind another was
/// cancelled and forgotten, a late retry of its id came in, and when the
/// queue moved on the owner started that retry before its accept had
/// committed; the store then found the id cancelled, the flight was
/// dropped while marked executing, and its instance's queue (49 flights)
/// stood still for good. Only a committed flight runs now.
#[test]
fn a_retry_of_a_cancelled_queued_id_never_starts_before_its_accept() {
    let report = pure_routing::run(&RoutingOptions {
        seed: 3858,
        nodes: 4,
        invocations: 1_000,
        broken: None,
    });
    assert!(report.passed(), "{}", report.summary());
}

#[test]
fn a_broken_duplicate_guard_is_caught_with_its_seed() {
    let report = pure_swarm::run(
        &PureSwarmOptions {
            first_seed: 1,
            end_seed: 11,
            nodes: (3, 9),
            invocations: TEST_INVOCATIONS,
            jobs: 2,
            broken: Some(Broken::NoDuplicateGuard),
        },
        |_| {},
    );
    let caught = report.failures.iter().find(|failure| {
        failure
            .violations
            .iter()
            .any(|violation| violation.name == "executed_at_most_once")
    });
    let Some(caught) = caught else {
        panic!("no double execution caught: {}", report.summary());
    };
    assert!(caught.replay.contains(&format!("--seed {}", caught.seed)));
    assert!(caught.replay.contains("--broken-duplicate-guard"));
}
