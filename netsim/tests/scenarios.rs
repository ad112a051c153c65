//! Every shipped scenario passes, a seed reproduces its packet schedule,
//! a seed reproduces a run's whole history, and bad scenario files get
//! typed errors.

use std::path::{Path, PathBuf};

use scout_netsim::check::CheckStatus;
use scout_netsim::history::Outcome;
use scout_netsim::run::{self, RunOptions};
use scout_netsim::scenario::{OpKind, Scenario};

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_scenario_passes() {
    let files = scenario_files();
    let names: Vec<String> = files
        .iter()
        .map(|file| file.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "split-heal",
        "one-way",
        "flapping",
        "loss-30",
        "crash-restart",
        "long-offline",
        "clock-skew",
        "worktrees-partition",
        "views-20",
        "relay-no-direct-path",
        "relay-behind-nat",
        // Swarm counterexamples kept as files (what each caught is in its
        // header).
        "swarm-9061-double-execution",
        "swarm-9144-views-split",
    ] {
        assert!(
            names.iter().any(|name| name == wanted),
            "{wanted} is shipped"
        );
    }
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let reports = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let idx = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(file) = files.get(idx) else {
                        return;
                    };
                    let plan = Scenario::load(file).expect("valid scenario");
                    let report = run::run(
                        &plan,
                        &RunOptions {
                            source: Some(file.display().to_string()),
                            ..RunOptions::default()
                        },
                    )
                    .expect("the harness runs");
                    reports.lock().unwrap().push(report);
                }
            });
        }
    });
    let reports = reports.into_inner().unwrap();
    assert_eq!(reports.len(), files.len());
    let failed: Vec<String> = reports
        .iter()
        .filter(|report| !report.passed)
        .map(|report| report.summary())
        .collect();
    assert!(
        failed.is_empty(),
        "failed scenarios:\n{}",
        failed.join("\n")
    );
    for report in &reports {
        // Writes happened and were replicated.
        assert!(report.ops.ok > 0, "{}", report.scenario);
        assert_eq!(report.ops.unknown, 0, "{}", report.scenario);
        for check in &report.checks {
            assert_eq!(
                check.status,
                CheckStatus::Pass,
                "{}: {}",
                report.scenario,
                check.name
            );
        }
        // Invocations ran and came back.
        assert!(report.ops.invocation.count > 0, "{}", report.scenario);
    }
    let crash = reports
        .iter()
        .find(|report| report.scenario == "crash-restart")
        .expect("crash-restart ran");
    assert!(crash.network.dropped.get("host_down").copied().unwrap_or(0) > 0);
    assert!(
        crash.ops.failed > 0,
        "operations on crashed nodes fail with node_down"
    );
    // Brokers behind NATs are invoked, by brokers that cannot dial them,
    // and answer (through the relays they name).
    let nat = reports
        .iter()
        .find(|report| report.scenario == "relay-behind-nat")
        .expect("relay-behind-nat ran");
    assert!(nat.network.dropped.get("nat").copied().unwrap_or(0) > 0);
    let behind = [
        "n1", "n2", "n4", "n5", "n7", "n8", "n10", "n11", "n13", "n14", "n16", "n17", "n19", "n20",
    ];
    let reached = nat
        .ops_history
        .iter()
        .filter(|op| op.kind == OpKind::Invoke && op.outcome == Outcome::Ok)
        .filter(|op| {
            behind
                .iter()
                .any(|name| op.detail.contains(&format!("@{name}#")))
        })
        .count();
    assert!(reached >= 5, "{reached} invocations reached a NATed broker");
    let loss = reports
        .iter()
        .find(|report| report.scenario == "loss-30")
        .expect("loss-30 ran");
    let lost = loss.network.dropped.get("loss").copied().unwrap_or(0) as f64;
    assert!(
        lost > 0.1 * loss.network.sent as f64,
        "30% loss drops datagrams"
    );
}

/// Two brokers with no direct path between them still invoke each other's
/// agents: through a relay, each invocation completed once. (Without
/// relays these invocations never end: the check `invocations_complete`
/// fails with them `unknown`.)
#[test]
fn brokers_with_no_direct_path_invoke_each_other_through_a_relay() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/relay-no-direct-path.toml");
    let plan = Scenario::load(&file).expect("valid");
    let report = run::run(&plan, &RunOptions::default()).expect("runs");
    assert!(report.passed, "{}", report.summary());
    let between: Vec<_> = report
        .ops_history
        .iter()
        .filter(|op| op.kind == OpKind::Invoke && op.at_ms > 2_000)
        .filter(|op| {
            (op.node == "n1" && op.detail.contains("@n3#"))
                || (op.node == "n3" && op.detail.contains("@n1#"))
        })
        .collect();
    assert!(
        between.len() >= 2,
        "the workload invokes between the two: {between:?}"
    );
    for op in between {
        assert_eq!(op.outcome, Outcome::Ok, "{op:?}");
    }
    assert!(
        report
            .network
            .dropped
            .get("partition")
            .copied()
            .unwrap_or(0)
            > 0
    );
}

/// A broker behind a NAT is reached from its first node record on: with
/// this seed n5 published its first record before its active view held
/// anyone, named no relay, and invocations of its agent waited 13 to
/// 17.5 s for it to name one (`invocations_answered` failed).
#[test]
fn a_broker_behind_a_nat_is_reached_from_its_first_record() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/relay-behind-nat.toml");
    let plan = Scenario::load(&file).expect("valid");
    let report = run::run(
        &plan,
        &RunOptions {
            seed: Some(6),
            ..RunOptions::default()
        },
    )
    .expect("runs");
    assert!(report.passed, "{}", report.summary());
    let answered = report
        .checks
        .iter()
        .find(|check| check.name == "invocations_answered")
        .expect("the scenario bounds the answers");
    assert_eq!(answered.status, CheckStatus::Pass, "{}", answered.detail);
    let to_n5 = report
        .ops_history
        .iter()
        .filter(|op| op.kind == OpKind::Invoke && op.node != "n5" && op.detail.contains("@n5#"))
        .count();
    assert!(to_n5 >= 3, "the workload invokes n5's agent from others");
}

#[test]
fn a_seed_reproduces_the_packet_schedule() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/flapping.toml");
    let plan = Scenario::load(&file).expect("valid");
    let options = |seed| RunOptions {
        seed: Some(seed),
        ..RunOptions::default()
    };
    let first = run::run(&plan, &options(7)).expect("runs");
    let again = run::run(&plan, &options(7)).expect("runs");
    let other = run::run(&plan, &options(8)).expect("runs");
    assert!(first.passed && again.passed && other.passed);
    assert_eq!(first.schedule_digest, again.schedule_digest);
    assert_eq!(first.state_digest, again.state_digest);
    assert_eq!(first.network.sent, again.network.sent);
    assert_ne!(first.schedule_digest, other.schedule_digest);
}

/// The whole history of a run (every operation with its outcome and
/// detail, every fault, every sample, every check) repeats with the seed:
/// the brokers' clocks, ids and random choices all come from their
/// simulated environments. Only the wall-clock duration may differ.
#[test]
fn a_seed_reproduces_the_whole_history() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/crash-restart.toml");
    let plan = Scenario::load(&file).expect("valid");
    let options = RunOptions {
        seed: Some(11),
        ..RunOptions::default()
    };
    let history = || {
        let report = run::run(&plan, &options).expect("runs");
        assert!(report.passed, "{}", report.summary());
        assert!(
            report
                .ops_history
                .iter()
                .any(|op| op.kind == OpKind::Invoke),
            "the scenario routes invocations, so ids are minted"
        );
        let mut json = serde_json::to_value(&report).expect("serializes");
        json.as_object_mut().expect("an object").remove("wall_ms");
        json
    };
    assert_eq!(history(), history());
}

#[test]
fn bad_scenarios_get_typed_errors() {
    let base = r#"
name = "bad"
duration_ms = 1000
[nodes]
count = 2
"#;
    let parse = |extra: &str| {
        Scenario::parse(&format!("{base}{extra}"), "bad.toml").and_then(|s| s.plan("bad.toml"))
    };
    assert!(parse("").is_ok());
    let unknown_field = parse("[links]\nlos = 0.3\n").unwrap_err();
    assert_eq!(unknown_field.code(), "SCENARIO_MALFORMED");
    assert!(unknown_field.to_string().contains("los"), "{unknown_field}");
    let unknown_node = parse("[[faults]]\nat_ms = 10\ncrash = \"n7\"\n").unwrap_err();
    assert_eq!(unknown_node.code(), "SCENARIO_INVALID");
    assert!(
        unknown_node.to_string().contains("no node `n7`"),
        "{unknown_node}"
    );
    let two_actions =
        parse("[[faults]]\nat_ms = 10\ncrash = \"n1\"\nrestart = \"n1\"\n").unwrap_err();
    assert!(
        two_actions.to_string().contains("one per entry"),
        "{two_actions}"
    );
    let no_action = parse("[[faults]]\nat_ms = 10\n").unwrap_err();
    assert!(no_action.to_string().contains("no action"), "{no_action}");
    let bad_loss = parse("[links]\nloss = 1.5\n").unwrap_err();
    assert!(bad_loss.to_string().contains("probability"), "{bad_loss}");
    let late = parse("[[faults]]\nat_ms = 5000\nheal = \"all\"\n").unwrap_err();
    assert!(late.to_string().contains("after the end"), "{late}");
    let no_worktrees =
        parse("[workload]\nstop_ms = 500\ninterval_ms = 100\nmix = { new_workspace = 1 }\n")
            .unwrap_err();
    assert!(
        no_worktrees.to_string().contains("[worktrees]"),
        "{no_worktrees}"
    );
    let too_many = parse("[worktrees]\nworkspaces = 1000\n").unwrap_err();
    assert!(too_many.to_string().contains("workspaces"), "{too_many}");
    assert!(parse("[views]\nactive = 4\npassive = 8\n").is_ok());
    let tiny_view = parse("[views]\nactive = 3\n").unwrap_err();
    assert_eq!(tiny_view.code(), "SCENARIO_INVALID");
    assert!(
        tiny_view
            .to_string()
            .contains("views: an active view holds 4 to 16"),
        "{tiny_view}"
    );
}

#[test]
fn the_readme_example_is_a_valid_scenario() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = readme
        .split("### Scenario files")
        .nth(1)
        .expect("the scenario format section");
    let example = section
        .split("```toml")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml example");
    let plan = Scenario::parse(example, "README.md")
        .and_then(|scenario| scenario.plan("README.md"))
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(plan.names.len(), 5);
    assert_eq!(plan.last_fault_ms, 35_000);
}

/// The benchmark scenarios (`netsim/benches`, run by `scout-netsim bench`
/// and by CI) are too slow for this suite, but each must at least load.
#[test]
fn every_benchmark_scenario_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).expect("benches dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            Scenario::load(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            loaded += 1;
        }
    }
    assert!(loaded >= 5, "only {loaded} benchmark scenarios");
}
