//! Worktrees agents made, end to end with real git and a real broker: a
//! worktree in the home's worktrees directory is an instance of its
//! definition that a mention reaches (running in the worktree), `scout
//! workspaces list` shows its state, and `remove` refuses uncommitted work
//! unless forced, after which the broker withdraws the instance.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Node, wait_until};

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

#[test]
fn a_worktree_is_an_instance_that_can_be_listed_and_removed() {
    let mut alpha = Node::setup("alpha", &[]);
    let repo = repository(alpha.sandbox.path());
    add_worktree_agent(&alpha, &repo);
    alpha.start();
    wait_until("@fabric#main", || {
        alpha
            .instances()
            .contains(&"@fabric@alpha#main".to_owned())
            .then_some(())
    });

    let empty = alpha.run(&["workspaces", "list"]);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert!(
        empty.stdout.contains("no worktrees yet"),
        "{}",
        empty.stdout
    );

    // A worktree where the definition makes them.
    let tree = alpha.sandbox.home().join("worktrees/fabric/feature+x");
    git(
        &repo,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "feature/x",
            tree.to_str().unwrap(),
        ],
    );
    wait_until("@fabric#feature/x", || {
        alpha
            .instances()
            .contains(&"@fabric@alpha#feature/x".to_owned())
            .then_some(())
    });
    let pwd = alpha.run(&[
        "send",
        "@fabric#feature/x",
        "pwd",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(pwd.code, 0, "{}", pwd.stderr);
    assert_eq!(
        Path::new(pwd.stdout.lines().next().unwrap_or_default())
            .canonicalize()
            .unwrap_or_else(|err| panic!("{:?}: {err}", pwd.stdout)),
        tree.canonicalize().unwrap()
    );

    let listed = alpha
        .run(&["--json", "workspaces", "list", "@fabric"])
        .json();
    let spaces = listed["workspaces"].as_array().unwrap();
    assert_eq!(spaces.len(), 1, "{listed}");
    assert_eq!(spaces[0]["branch"], "feature/x");
    assert_eq!(spaces[0]["dirty"], false);
    assert_eq!(spaces[0]["base"], "main");

    std::fs::write(tree.join("README"), "changed\n").unwrap();
    let refused = alpha.run(&["workspaces", "remove", "@fabric#feature/x"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("uncommitted changes"),
        "{}",
        refused.stderr
    );
    assert!(tree.join("README").is_file());

    let removed = alpha.run(&["workspaces", "remove", "@fabric#feature/x", "--force"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert!(!tree.exists());
    wait_until("@fabric#feature/x to be withdrawn", || {
        (!alpha
            .instances()
            .contains(&"@fabric@alpha#feature/x".to_owned()))
        .then_some(())
    });
    // The branch and its commits are the user's: kept.
    git(
        &repo,
        &["rev-parse", "--verify", "--quiet", "refs/heads/feature/x"],
    );

    let unknown = alpha.run(&["workspaces", "remove", "@fabric#nope"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    let no_workspace = alpha.run(&["workspaces", "remove", "@fabric"]);
    assert_eq!(no_workspace.code, 2, "{}", no_workspace.stderr);
}

/// A repository with one commit on `main`, in `dir/app`.
fn repository(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("app");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    repo
}

/// Adds `@fabric`, a bash agent in `repo` that makes worktrees.
fn add_worktree_agent(node: &Node, repo: &Path) {
    let add = node.run(&[
        "agents",
        "add",
        "fabric",
        "--cwd",
        repo.to_str().unwrap(),
        "--worktrees",
        "--command",
        "bash",
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
}

fn worktree_count(repo: &Path) -> usize {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["worktree", "list", "--porcelain"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.starts_with("worktree "))
        .count()
}

#[test]
fn a_mention_of_a_new_workspace_makes_its_worktree_on_the_owner() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = Node::setup("beta", &[]);
    let repo = repository(beta.sandbox.path());
    add_worktree_agent(&beta, &repo);
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    beta.start();
    wait_until("alpha to see @fabric@beta#main", || {
        alpha
            .instances()
            .contains(&"@fabric@beta#main".to_owned())
            .then_some(())
    });

    let tree = beta.sandbox.home().join("worktrees/fabric/feature-x");
    let pwd = alpha.run(&[
        "send",
        "@fabric#feature-x",
        "pwd",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(pwd.code, 0, "{}", pwd.stderr);
    let answered = pwd.stdout.lines().next().unwrap_or_default().to_owned();
    assert_eq!(
        Path::new(&answered)
            .canonicalize()
            .unwrap_or_else(|err| panic!("{answered:?}: {err}")),
        tree.canonicalize().unwrap()
    );
    for node in [&alpha, &beta] {
        wait_until(&format!("{} to see the new instance", node.name), || {
            node.instances()
                .contains(&"@fabric@beta#feature-x".to_owned())
                .then_some(())
        });
    }

    // Again: the same worktree and instance.
    let again = alpha.run(&[
        "send",
        "@fabric#feature-x",
        "pwd",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.starts_with(&answered), "{}", again.stdout);
    assert_eq!(worktree_count(&repo), 2, "the repository and one worktree");
    let listed = beta.run(&["--json", "workspaces", "list"]).json();
    assert_eq!(
        listed["workspaces"].as_array().unwrap().len(),
        1,
        "{listed}"
    );

    // The resolution says why the work went where it went.
    let sent = alpha.run(&[
        "--json",
        "send",
        "@fabric#feature-y",
        "true",
        "--timeout",
        "60",
    ]);
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    let sent = sent.json();
    assert_eq!(sent["reason"], "new_worktree", "{sent}");
    assert_eq!(sent["instance"], "@fabric@beta#feature-y", "{sent}");

    // A branch git refuses fails the flight with git's reason; nothing is made.
    let bad = alpha.run(&["send", "@fabric#HEAD", "pwd", "--wait", "--timeout", "60"]);
    assert_ne!(bad.code, 0, "{}", bad.stdout);
    assert!(bad.stderr.contains("branch name"), "{}", bad.stderr);
    wait_until("feature-y's worktree", || {
        (worktree_count(&repo) == 3).then_some(())
    });

    // The owner dies right after git made a worktree, before anything
    // else knew of it: after the restart that worktree is the instance, and
    // the next mention uses it rather than making another.
    let mut broker = beta.broker.take().unwrap();
    assert_ne!(broker.stop_with(libc::SIGKILL), 0);
    drop(broker);
    let orphan = beta.sandbox.home().join("worktrees/fabric/feature-z");
    git(
        &repo,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "feature-z",
            orphan.to_str().unwrap(),
        ],
    );
    beta.start();
    wait_until("alpha to see @fabric@beta#feature-z", || {
        alpha
            .instances()
            .contains(&"@fabric@beta#feature-z".to_owned())
            .then_some(())
    });
    let reused = alpha.run(&[
        "send",
        "@fabric#feature-z",
        "pwd",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(reused.code, 0, "{}", reused.stderr);
    let answered = reused.stdout.lines().next().unwrap_or_default();
    assert_eq!(
        Path::new(answered).canonicalize().unwrap(),
        orphan.canonicalize().unwrap()
    );
    assert_eq!(worktree_count(&repo), 4, "no second worktree for feature-z");
}
