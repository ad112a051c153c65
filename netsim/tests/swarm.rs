//! Swarm mode: random fault schedules pass on the real code, and a
//! deliberately broken merge is caught with a replay command that
//! reproduces the failure.

use scout_netsim::run::{self, RunOptions};
use scout_netsim::scenario::Scenario;
use scout_netsim::swarm::{self, SwarmOptions};

fn options(
    dir: &std::path::Path,
    first_seed: u64,
    end_seed: u64,
    broken_merge: bool,
) -> SwarmOptions {
    SwarmOptions {
        first_seed,
        end_seed,
        nodes: 4,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        out_dir: dir.to_path_buf(),
        broken_merge,
    }
}

#[test]
fn a_small_swarm_passes_and_writes_replayable_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let report = swarm::run_swarm(&options(dir.path(), 1, 4, false), |_| {}).unwrap();
    assert_eq!(report.seeds, 3);
    for result in &report.results {
        assert!(
            result.passed,
            "seed {}: {:?} {:?}",
            result.seed, result.error, result.failures
        );
        let plan =
            Scenario::load(std::path::Path::new(&result.file)).expect("the written file loads");
        assert_eq!(plan.scenario.seed, result.seed);
        assert!(result.replay.contains(&format!("--seed {}", result.seed)));
    }
}

#[test]
fn a_broken_merge_is_caught_and_its_replay_reproduces_it() {
    let dir = tempfile::tempdir().unwrap();
    let report = swarm::run_swarm(&options(dir.path(), 1, 3, true), |_| {}).unwrap();
    let failed = report
        .results
        .iter()
        .find(|result| !result.passed)
        .expect("the swarm catches the broken merge");
    assert!(failed.error.is_none(), "{:?}", failed.error);
    assert!(!failed.failures.is_empty());
    assert!(
        failed.replay.contains("--broken-merge")
            && failed.replay.contains("--features broken-merge-for-tests"),
        "{}",
        failed.replay
    );
    assert!(failed.replay.contains(&failed.file));

    // What the replay command runs: the written file with the seed.
    let plan = Scenario::load(std::path::Path::new(&failed.file)).unwrap();
    let replayed = run::run(
        &plan,
        &RunOptions {
            seed: Some(failed.seed),
            broken_merge: true,
            source: Some(failed.file.clone()),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(!replayed.passed);
    let replayed_names: Vec<&str> = replayed.failures().map(|check| check.name).collect();
    let failed_names: Vec<&str> = failed.failures.iter().map(|check| check.name).collect();
    assert_eq!(replayed_names, failed_names);
    assert_eq!(replayed.schedule_digest.to_string(), failed.schedule_digest);

    // The switch is per thread and off again: the same seed passes.
    let clean = run::run(
        &plan,
        &RunOptions {
            seed: Some(failed.seed),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(clean.passed, "{}", clean.summary());
}
