//! Worktrees made on demand under partitions, loss and crashes: real
//! brokers over the simulated network, each with a real git repository
//! and a definition that makes worktrees, mentioned with new workspaces
//! from several origins at once and again after the heal. Every invocation
//! runs once, each node holds at most one worktree per workspace (made
//! once), and every replica holds exactly the worktrees on disk as
//! instances. A run repeats with its seed; the check itself catches a
//! worktree made twice, a stray directory and a lost worktree.

use std::path::{Path, PathBuf};

use scout_netsim::agent::WorktreeRecord;
use scout_netsim::check::{self, CheckStatus, NodeWorktrees};
use scout_netsim::node::DiskWorktrees;
use scout_netsim::run::{self, RunOptions};
use scout_netsim::scenario::Scenario;

fn scenario() -> scout_netsim::scenario::Plan {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/worktrees-partition.toml");
    Scenario::load(&file).expect("valid scenario")
}

#[test]
fn new_workspaces_under_partitions_are_made_once_and_registered() {
    let plan = scenario();
    let history = |seed| {
        // The worktrees' paths are in the instance records, so the homes
        // are at the same place on every run of a seed.
        let homes = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("worktrees-seed-{seed}"));
        match std::fs::remove_dir_all(&homes) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("cannot clear {}: {err}", homes.display()),
        }
        let report = run::run(
            &plan,
            &RunOptions {
                seed: Some(seed),
                homes_dir: Some(homes),
                ..RunOptions::default()
            },
        )
        .expect("the harness runs");
        assert!(report.passed, "{}", report.summary());
        let worktrees = report
            .checks
            .iter()
            .find(|check| check.name == "worktrees_once")
            .expect("the worktree check ran");
        assert_eq!(worktrees.status, CheckStatus::Pass);
        // The same new workspace was asked for from both sides of the
        // partition, and at least one mention made a worktree.
        let split: Vec<_> = report
            .ops_history
            .iter()
            .filter(|op| op.name == "@w#split-0")
            .collect();
        assert!(split.len() >= 2, "{split:?}");
        assert!(
            report
                .ops_history
                .iter()
                .any(|op| op.detail.contains("(new_worktree)")),
            "some mention resolved to a new worktree"
        );
        let mut json = serde_json::to_value(&report).expect("serializes");
        json.as_object_mut().expect("an object").remove("wall_ms");
        json
    };
    assert_eq!(history(3), history(3), "a seed repeats the run");
    history(17);
}

fn record(node: &str, path: &Path, made: bool, invocation: &str) -> WorktreeRecord {
    WorktreeRecord {
        invocation_id: invocation.to_owned(),
        node: node.to_owned(),
        incarnation: 1,
        instance: format!("@w@{node}#ws-0"),
        path: path.display().to_string(),
        made,
        at_ms: 0,
    }
}

fn judge(disk: DiskWorktrees, asked: &[WorktreeRecord]) -> Option<String> {
    let mut checks = Vec::new();
    check::worktrees(
        &mut checks,
        &[NodeWorktrees {
            node: "n1".to_owned(),
            disk: Ok(disk),
        }],
        asked,
    );
    assert_eq!(checks.len(), 1);
    (checks[0].status == CheckStatus::Fail).then(|| checks[0].detail.clone())
}

#[test]
fn the_worktree_check_catches_doubles_strays_and_losses() {
    let dir = PathBuf::from("/homes/n1/worktrees/w");
    let ws0 = dir.join("ws-0");
    let one = DiskWorktrees {
        dir: dir.clone(),
        listed: vec![(ws0.clone(), Some("ws-0".to_owned()))],
        entries: vec![ws0.clone()],
    };
    // Made once, found once more: fine.
    assert_eq!(
        judge(
            one.clone(),
            &[
                record("n1", &ws0, true, "i1"),
                record("n1", &ws0, false, "i2")
            ]
        ),
        None
    );
    // Made twice.
    let twice = judge(
        one.clone(),
        &[
            record("n1", &ws0, true, "i1"),
            record("n1", &ws0, true, "i2"),
        ],
    )
    .expect("fails");
    assert!(twice.contains("made 2 times"), "{twice}");
    // Nobody asked for it.
    let unasked = judge(one.clone(), &[]).expect("fails");
    assert!(unasked.contains("no execution asked"), "{unasked}");
    // A directory git does not know.
    let mut stray = one.clone();
    stray.entries.push(dir.join("ws-9"));
    let stray = judge(stray, &[record("n1", &ws0, true, "i1")]).expect("fails");
    assert!(stray.contains("git lists no worktree"), "{stray}");
    // One branch in two worktrees.
    let mut doubled = one.clone();
    doubled
        .listed
        .push((dir.join("other"), Some("ws-0".to_owned())));
    let doubled = judge(doubled, &[record("n1", &ws0, true, "i1")]).expect("fails");
    assert!(doubled.contains("two worktrees"), "{doubled}");
    // Asked for and gone.
    let gone = DiskWorktrees {
        dir,
        listed: Vec::new(),
        entries: Vec::new(),
    };
    let lost = judge(gone, &[record("n1", &ws0, true, "i1")]).expect("fails");
    assert!(lost.contains("which is gone"), "{lost}");
}
