//! Checkpoints before risk, end to end: a real broker runs `execute` work
//! on a bash agent whose workspace is a real git repository; the broker
//! checkpoints the worktree first, `scout checkpoints list` and `show`
//! report it, and `restore` brings a deleted file back while the user's
//! index, HEAD and stash list stay exactly as they were. An agent may not
//! restore on its own, and a workspace outside git gets no checkpoint.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Node, wait_until};
use serde_json::Value;

/// Runs git in `dir` and returns its output; the test fails if git does.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A repository with two committed files, a stash entry and a staged
/// change: the user's state the broker must not touch.
fn repository(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("precious.txt"), "keep me\n").unwrap();
    std::fs::write(dir.join("notes.md"), "v1\n").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "first"]);
    std::fs::write(dir.join("notes.md"), "stashed\n").unwrap();
    git(dir, &["stash", "-q"]);
    std::fs::write(dir.join("notes.md"), "v2, staged\n").unwrap();
    git(dir, &["add", "notes.md"]);
}

/// HEAD, what is staged, and the stash list.
fn user_state(dir: &Path) -> (String, String, String) {
    (
        git(dir, &["rev-parse", "HEAD"]),
        git(dir, &["diff", "--cached"]),
        git(dir, &["stash", "list", "--format=%H %gd %s"]),
    )
}

fn send(node: &Node, target: &str, command: &str) -> String {
    let run = node.run(&["send", target, command, "--wait", "--timeout", "120"]);
    assert_eq!(run.code, 0, "send: {}", run.stderr);
    run.stdout
}

/// The broker's SQLite file, opened read-only beside the running broker.
fn store(node: &Node) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        node.sandbox.home().join("scout.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store")
}

/// The audit actions recorded about `subject`, oldest first, read from
/// the broker's SQLite file.
fn audited(node: &Node, subject: &str) -> Vec<String> {
    let connection = store(node);
    let mut statement = connection
        .prepare("SELECT action FROM audit_log WHERE subject = ?1 ORDER BY seq")
        .unwrap();
    statement
        .query_map([subject], |row| row.get(0))
        .unwrap()
        .map(|row| row.unwrap())
        .collect()
}

fn list(node: &Node, agent: &str) -> Vec<Value> {
    let run = node.run(&["--json", "checkpoints", "list", agent]);
    assert_eq!(run.code, 0, "list: {}", run.stderr);
    run.json()["checkpoints"].as_array().expect("rows").clone()
}

#[test]
fn execute_work_is_checkpointed_and_restored_without_touching_index_head_or_stash() {
    let mut node = Node::setup("solo", &[]);
    let repo = node.sandbox.path().join("repo");
    repository(&repo);
    node.add_bash_agent_in("coder", &repo);
    node.start();
    let before = user_state(&repo);

    // The agent deletes a tracked file and makes a new one.
    send(
        &node,
        "@coder",
        "rm precious.txt && echo later > made-later.txt && echo done-$((40+2))",
    );
    assert!(!repo.join("precious.txt").exists());

    let rows = wait_until("the checkpoint", || {
        let rows = list(&node, "@coder");
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    let id = row["id"].as_str().expect("id").to_owned();
    assert!(row["instance"].as_str().unwrap().starts_with("@coder@solo"));
    assert_eq!(row["ref"], format!("refs/scout/checkpoints/{id}"));
    // The staged notes.md differed from HEAD when it was taken.
    assert_eq!(row["files_changed"], 1);
    let commit = row["commit"].as_str().expect("commit");
    assert_eq!(
        git(
            &repo,
            &["rev-parse", &format!("refs/scout/checkpoints/{id}")]
        )
        .trim(),
        commit
    );
    let human = node.run(&["checkpoints", "list"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains(&id), "{}", human.stdout);

    let show = node.run(&["checkpoints", "show", &id]);
    assert_eq!(show.code, 0, "show: {}", show.stderr);
    assert!(show.stdout.contains("precious.txt"), "{}", show.stdout);
    assert!(show.stdout.contains("deleted file mode"), "{}", show.stdout);
    assert!(show.stdout.contains("-keep me"), "{}", show.stdout);

    // An agent asks to restore: a gated action, so it gets an approval and
    // nothing is written until a person approves it.
    let token_line = send(&node, "@coder", "echo tok=$SCOUT_TOKEN");
    let token = token_line
        .split("tok=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|token| !token.is_empty() && !token.starts_with('$'))
        .expect("the agent's token")
        .to_owned();
    let url = format!("{}/v1/checkpoints/{id}/restore", node.broker().http_base());
    let asked = ureq::post(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(serde_json::json!({}))
        .expect("the gated request");
    assert_eq!(asked.status(), 202);
    let asked: Value = asked.into_json().unwrap();
    assert_eq!(asked["approval"]["action"], "checkpoint.restore", "{asked}");
    let approval = asked["approval"]["id"].as_str().unwrap().to_owned();
    assert!(!repo.join("precious.txt").exists());

    let approved = node.run(&["approve", &approval]);
    assert_eq!(approved.code, 0, "approve: {}", approved.stderr);
    let shown = wait_until("the approved restore to run", || {
        let shown = node.run(&["--json", "approvals", "show", &approval]);
        let view = shown.json();
        view["outcome"]
            .as_str()
            .is_some_and(|outcome| outcome != "running")
            .then_some(view)
    });
    let outcome = shown["outcome"].as_str().unwrap();
    assert!(outcome.contains("1 files written"), "{outcome}");
    assert_eq!(
        std::fs::read_to_string(repo.join("precious.txt")).unwrap(),
        "keep me\n"
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("notes.md")).unwrap(),
        "v2, staged\n"
    );
    assert!(repo.join("made-later.txt").exists(), "later files stay");
    assert_eq!(user_state(&repo), before, "HEAD, index and stash untouched");
    assert_eq!(
        audited(&node, &id),
        ["checkpoint_created", "checkpoint_restored"]
    );
    // The restore took its own checkpoint first, so it can be undone.
    let rows = list(&node, "@coder");
    assert!(
        rows.iter()
            .any(|row| row["id"].as_str().unwrap().starts_with("before-restore-")),
        "{rows:?}"
    );

    // The worktree moved away: the checkpoint says so with its code.
    std::fs::rename(&repo, node.sandbox.path().join("moved")).unwrap();
    let gone = node.run(&["checkpoints", "restore", &id]);
    assert_ne!(gone.code, 0);
    assert!(gone.stderr.contains("WORKSPACE_GONE"), "{}", gone.stderr);

    let unknown = node.run(&["checkpoints", "show", "no-such-checkpoint"]);
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("CHECKPOINT_NOT_FOUND"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn a_workspace_outside_git_runs_without_a_checkpoint() {
    let mut node = Node::setup("plainnode", &[]);
    let plain = node.sandbox.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    node.add_bash_agent_in("plain", &plain);
    node.start();
    let out = send(&node, "@plain", "echo ran-$((1+1)) > out.txt; cat out.txt");
    assert!(out.contains("ran-2"), "{out}");
    assert!(list(&node, "@plain").is_empty());
    let skipped: i64 = store(&node)
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action = 'checkpoint_skipped'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(skipped, 1, "the skipped checkpoint is audited");
    let all = node.run(&["checkpoints", "list"]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    assert!(all.stdout.contains("no checkpoints"), "{}", all.stdout);
}
