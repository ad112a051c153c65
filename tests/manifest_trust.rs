//! A repository's `.openscout/project.json` runs its commands only once the
//! user trusts it, with the real CLI and real brokers: `scout agents list`
//! says which agents will not start and how to trust them; invoking one
//! fails with `UNTRUSTED_MANIFEST` and runs nothing, locally and when routed
//! from another broker; `scout agents trust` lets it run; a changed manifest
//! needs trust again; `scout agents untrust` withdraws it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Node, Run, Sandbox};

/// A repository under `root` whose manifest declares `@builder`, a bash loop
/// that appends every prompt to `ran.log` in the repository, then answers.
fn repository_with_command(root: &Path) -> PathBuf {
    let repo = root.join("code/app");
    fs::create_dir_all(repo.join(".git")).unwrap();
    fs::write(repo.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    fs::create_dir_all(repo.join(".openscout")).unwrap();
    let script = "printf 'ready> '; while IFS= read -r line; do echo \"$line\" >> ran.log; echo \"done: $line\"; printf 'ready> '; done";
    let manifest = serde_json::json!({
        "version": 1,
        "name": "app",
        "agents": [{"name": "builder", "harness": "command", "command": ["bash", "-c", script]}],
    });
    fs::write(
        repo.join(".openscout/project.json"),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
    repo
}

fn manifest(repo: &Path) -> PathBuf {
    fs::canonicalize(repo.join(".openscout/project.json")).unwrap()
}

/// A node whose workspace root holds that repository.
fn node_with_repository(name: &str) -> (Node, PathBuf) {
    let sandbox = Sandbox::new();
    let repo = repository_with_command(sandbox.path());
    let root = sandbox.path().join("code").display().to_string();
    let run = sandbox.run(&[
        "setup",
        "--node-name",
        name,
        "--http-port",
        "0",
        "--mesh-port",
        "0",
        "--workspace-root",
        &root,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let node = Node {
        sandbox,
        broker: None,
        name: name.to_owned(),
    };
    (node, repo)
}

fn send(node: &Node, target: &str, message: &str) -> Run {
    node.run(&["send", target, message, "--wait", "--timeout", "60"])
}

fn ran(repo: &Path) -> Vec<String> {
    fs::read_to_string(repo.join("ran.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_manifest_command_runs_only_while_its_manifest_is_trusted() {
    let (mut node, repo) = node_with_repository("laptop");
    let manifest = manifest(&repo);

    // Listed, with the reason and the fix.
    let list = node.run(&["--json", "agents", "list"]).json();
    let untrusted = &list["untrusted"][0];
    assert_eq!(untrusted["name"], "@builder@laptop#main", "{list}");
    assert_eq!(untrusted["why"], "not_trusted");
    assert_eq!(untrusted["manifest"], manifest.display().to_string());
    let fix = untrusted["fix"].as_str().unwrap();
    assert!(
        fix.starts_with(&format!("scout agents trust {}", manifest.display())),
        "{fix}"
    );
    let human = node.run(&["agents", "list"]);
    assert!(
        human
            .stdout
            .contains("untrusted: @builder@laptop#main will not start")
            && human.stdout.contains("UNTRUSTED_MANIFEST"),
        "{}",
        human.stdout
    );
    let doctor = node.run(&["--json", "doctor"]).json();
    let check = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "manifests")
        .cloned()
        .unwrap();
    assert_eq!(check["status"], "warn", "{check}");

    // Invoking it fails and runs nothing.
    node.start();
    let refused = send(&node, "@builder", "first");
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("UNTRUSTED_MANIFEST"),
        "{}",
        refused.stderr
    );
    assert!(ran(&repo).is_empty());

    // Trusted: it runs. The repository directory names its manifest.
    let trusted = node.run(&["--json", "agents", "trust", &repo.display().to_string()]);
    assert_eq!(trusted.code, 0, "{}", trusted.stderr);
    assert_eq!(trusted.json()["trusted"], manifest.display().to_string());
    let list = node.run(&["--json", "agents", "list"]).json();
    assert!(list.get("untrusted").is_none(), "{list}");
    let answered = send(&node, "@builder", "second");
    assert_eq!(answered.code, 0, "{}\n{}", answered.stdout, answered.stderr);
    assert!(
        answered.stdout.contains("done: second"),
        "{}",
        answered.stdout
    );
    assert_eq!(ran(&repo), ["second"]);

    // Untrusted again: refused again, before anything is typed.
    let untrust = node.run(&["agents", "untrust", &manifest.display().to_string()]);
    assert_eq!(untrust.code, 0, "{}", untrust.stderr);
    let refused = send(&node, "@builder", "third");
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("UNTRUSTED_MANIFEST"),
        "{}",
        refused.stderr
    );
    assert_eq!(ran(&repo), ["second"]);
    let again = node.run(&["agents", "untrust", &manifest.display().to_string()]);
    assert_eq!(again.code, 1, "{}", again.stdout);
}

#[test]
fn a_changed_manifest_needs_trust_again() {
    let (mut node, repo) = node_with_repository("laptop");
    let manifest = manifest(&repo);
    let trusted = node.run(&["agents", "trust", &manifest.display().to_string()]);
    assert_eq!(trusted.code, 0, "{}", trusted.stderr);
    assert!(
        trusted.stdout.contains("may run: @builder@laptop#main"),
        "{}",
        trusted.stdout
    );

    // The repository changes the command after it was trusted.
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(
        &manifest,
        text.replace(">> ran.log", ">> ran.log; touch changed"),
    )
    .unwrap();
    let list = node.run(&["--json", "agents", "list"]).json();
    assert_eq!(list["untrusted"][0]["why"], "changed", "{list}");
    assert!(
        list["untrusted"][0]["message"]
            .as_str()
            .unwrap()
            .contains("changed since it was trusted"),
        "{list}"
    );

    node.start();
    let refused = send(&node, "@builder", "hello");
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("UNTRUSTED_MANIFEST") && refused.stderr.contains("changed"),
        "{}",
        refused.stderr
    );
    assert!(ran(&repo).is_empty());
    assert!(!repo.join("changed").exists());
}

#[test]
fn an_owner_refuses_a_routed_invocation_of_an_untrusted_agent() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let (mut beta, repo) = node_with_repository("beta");
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    beta.start();
    alpha.wait_for_instance("@builder@beta#main");

    let refused = send(&alpha, "@builder", "from alpha");
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("UNTRUSTED_MANIFEST"),
        "{}",
        refused.stderr
    );
    assert!(ran(&repo).is_empty());
    // The flight at the origin records the owner's reason.
    let flights = alpha.get("/v1/flights");
    let id = flights[0]["invocation_id"].as_str().unwrap();
    let status = alpha.get(&format!("/v1/invocations/{id}"));
    assert_eq!(status["delivery"]["state"], "failed", "{status}");
    assert!(
        status["delivery"]["failure_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("UNTRUSTED_MANIFEST"),
        "{status}"
    );

    // Trusted on its owner, the same agent answers the other broker.
    let trusted = beta.run(&["agents", "trust", &repo.display().to_string()]);
    assert_eq!(trusted.code, 0, "{}", trusted.stderr);
    let answered = send(&alpha, "@builder", "again");
    assert_eq!(answered.code, 0, "{}\n{}", answered.stdout, answered.stderr);
    assert_eq!(ran(&repo), ["again"]);
}
