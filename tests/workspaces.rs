//! Worktrees agents made, end to end with real git and a real broker: a
//! worktree in the home's worktrees directory is an instance of its
//! definition that a mention reaches (running in the worktree), `scout
//! workspaces list` shows its state, and `remove` refuses uncommitted work
//! unless forced, after which the broker withdraws the instance. An
//! agent's request to remove one through the API waits for a person's
//! approval (`workspace.remove`); an operator's runs at once. The idle
//! cleanup removes a clean, merged, idle worktree and keeps dirty and
//! unmerged ones, on a broker whose clock is simulated.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Node, wait_until};

/// `git worktree add -b branch dir` in `repo`.
fn add_worktree(repo: &Path, branch: &str, dir: &Path) {
    git(
        repo,
        &["worktree", "add", "-q", "-b", branch, dir.to_str().unwrap()],
    );
}

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
    alpha.wait_for_instance("@fabric@alpha#main");

    let empty = alpha.run(&["workspaces", "list"]);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert!(
        empty.stdout.contains("no worktrees yet"),
        "{}",
        empty.stdout
    );

    // A worktree where the definition makes them.
    let tree = alpha.sandbox.home().join("worktrees/fabric/feature+x");
    add_worktree(&repo, "feature/x", &tree);
    alpha.wait_for_instance("@fabric@alpha#feature/x");
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
    alpha.wait_for_instance("@fabric@beta#main");

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
    add_worktree(&repo, "feature-z", &orphan);
    beta.start();
    alpha.wait_for_instance("@fabric@beta#feature-z");
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

/// How long, in simulated time, the idle cleanup test lets the broker run
/// at most: many rescan periods (60 s each).
const IDLE_CLEANUP_SIMULATED_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long, in real time, it waits at most for git to do the removal.
const IDLE_CLEANUP_WALL_MAX: std::time::Duration = std::time::Duration::from_secs(120);

/// The idle cleanup end to end, on a real broker (store, git, its config
/// watch) whose environment runs on simulated time: its wall clock starts
/// three days after the worktrees' last activity, and tokio's paused clock
/// brings the rescan round without waiting for it. With
/// `worktrees.idle_days = 1`, the clean, merged worktree goes (its branch
/// stays); a dirty one and one with unmerged commits stay, and so does
/// the repository's own checkout.
#[test]
fn idle_cleanup_removes_a_clean_merged_worktree_and_keeps_dirty_and_unmerged_ones() {
    use scout::daemon::{Broker, BrokerOptions};
    use scout::env::{Env, SimulatedClock};
    use scout::home::Home;

    let alpha = Node::setup("alpha", &[]);
    let repo = repository(alpha.sandbox.path());
    add_worktree_agent(&alpha, &repo);
    let home = Home::in_dir(alpha.sandbox.home());
    let mut settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.settings_path()).unwrap()).unwrap();
    settings["worktrees"] = serde_json::json!({ "idle_days": 1 });
    settings["discovery"] = serde_json::json!({ "mdns": false, "tailscale": { "enabled": false } });
    std::fs::write(home.settings_path(), settings.to_string()).unwrap();

    let trees = alpha.sandbox.home().join("worktrees/fabric");
    let add = |branch: &str| {
        let tree = trees.join(branch);
        add_worktree(&repo, branch, &tree);
        tree
    };
    let idle = add("idle");
    let dirty = add("dirty");
    std::fs::write(dirty.join("notes.txt"), "work in progress\n").unwrap();
    let unmerged = add("unmerged");
    std::fs::write(unmerged.join("README"), "changed\n").unwrap();
    git(&unmerged, &["commit", "-q", "-am", "not on main"]);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let real_now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let clock = std::sync::Arc::new(SimulatedClock::new(
            tokio::time::Instant::now(),
            real_now_ms + 3 * 86_400_000,
        ));
        let broker = Broker::start_with(
            &home,
            BrokerOptions {
                env: Some(Env::simulated(clock, 7)),
                serve_http: false,
                watch_config: true,
                ..BrokerOptions::default()
            },
        )
        .await
        .expect("the broker starts");
        let instances = || -> Vec<String> {
            broker
                .state()
                .agents
                .read()
                .unwrap()
                .iter()
                .map(|agent| agent.instance_name(&broker.state().node_name).to_string())
                .collect()
        };
        assert!(
            instances().contains(&"@fabric@alpha#idle".to_owned()),
            "{:?}",
            instances()
        );
        let simulated = tokio::time::Instant::now();
        let wall = std::time::Instant::now();
        while idle.exists() || instances().contains(&"@fabric@alpha#idle".to_owned()) {
            assert!(
                simulated.elapsed() < IDLE_CLEANUP_SIMULATED_MAX
                    && wall.elapsed() < IDLE_CLEANUP_WALL_MAX,
                "the idle worktree is still there: {:?}",
                instances()
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        assert!(dirty.join("notes.txt").is_file(), "the dirty one stays");
        assert!(unmerged.is_dir(), "the unmerged one stays");
        let left = instances();
        for kept in [
            "@fabric@alpha#main",
            "@fabric@alpha#dirty",
            "@fabric@alpha#unmerged",
        ] {
            assert!(left.contains(&kept.to_owned()), "{kept}: {left:?}");
        }
        broker.shutdown().await.expect("the broker stops");
    });
    // The branch and its commits are the user's: kept.
    git(
        &repo,
        &["rev-parse", "--verify", "--quiet", "refs/heads/idle"],
    );
    assert_eq!(
        worktree_count(&repo),
        3,
        "the repository, dirty and unmerged"
    );
}

/// `POST path` on `node` with `token` and `body`: status and JSON.
fn post(node: &Node, path: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let url = format!("{}{path}", node.broker().http_base());
    let response = ureq::post(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(body);
    match response {
        Ok(response) => (response.status(), response.into_json().unwrap_or_default()),
        Err(ureq::Error::Status(status, response)) => {
            (status, response.into_json().unwrap_or_default())
        }
        Err(err) => panic!("POST {url}: {err}"),
    }
}

/// The approval `id` once it has an outcome on `node`.
fn approval_outcome(node: &Node, id: &str) -> String {
    wait_until(&format!("approval {id} to run"), || {
        let list = node.get("/v1/approvals");
        list["approvals"]
            .as_array()?
            .iter()
            .find(|approval| approval["id"] == id)?["outcome"]
            .as_str()
            .filter(|outcome| *outcome != "running")
            .map(str::to_owned)
    })
}

/// An agent asks to remove a worktree: `202` with a `workspace.remove`
/// approval, and nothing is removed until a person approves. Approved,
/// the removal runs once with the usual refusals (a dirty worktree stays)
/// unless the agent asked for `force`. An operator's request removes at
/// once, or is refused with the same codes; a name that means no worktree
/// is refused for everyone before any approval.
#[test]
fn an_agent_asking_to_remove_a_worktree_needs_an_approval() {
    let mut alpha = Node::setup("alpha", &[]);
    let repo = repository(alpha.sandbox.path());
    add_worktree_agent(&alpha, &repo);
    alpha.start();
    alpha.wait_for_instance("@fabric@alpha#main");
    // The agent's own credential, from its session in a new worktree.
    let asked = alpha.run(&[
        "send",
        "@fabric#feature-x",
        "printf '%s\\n' \"$SCOUT_TOKEN\"",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(asked.code, 0, "{}", asked.stderr);
    let agent_token = asked
        .stdout
        .lines()
        .find(|line| line.starts_with("sat_"))
        .unwrap_or_else(|| panic!("no credential in {:?}", asked.stdout))
        .to_owned();
    let tree = alpha.sandbox.home().join("worktrees/fabric/feature-x");
    assert!(tree.is_dir());
    std::fs::write(tree.join("notes.txt"), "work in progress\n").unwrap();
    let operator = alpha.sandbox.token();
    let remove = |token: &str, instance: &str, force: bool| {
        post(
            &alpha,
            "/v1/workspaces/remove",
            token,
            serde_json::json!({ "instance": instance, "force": force }),
        )
    };

    // Nothing to approve: no such worktree, another node's, no workspace.
    for (instance, status, code) in [
        ("@fabric#nope", 404, "NOT_FOUND"),
        ("@fabric@beta#feature-x", 400, "NOT_LOCAL"),
        ("@fabric", 400, "INVALID_NAME"),
    ] {
        let (got, body) = remove(&agent_token, instance, false);
        assert_eq!(got, status, "{instance}: {body}");
        assert_eq!(body["error"]["code"], code, "{instance}: {body}");
    }

    // The agent asks; a person approves; the dirty worktree is refused.
    let (status, body) = remove(&agent_token, "@fabric#feature-x", false);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "approval_required", "{body}");
    assert_eq!(body["approval"]["action"], "workspace.remove", "{body}");
    assert_eq!(
        body["approval"]["agent"], "@fabric@alpha#feature-x",
        "{body}"
    );
    let id = body["approval"]["id"].as_str().unwrap().to_owned();
    assert!(tree.is_dir(), "nothing happens before the approval");
    let approved = alpha.run(&["approve", &id]);
    assert_eq!(approved.code, 0, "{}", approved.stderr);
    let outcome = approval_outcome(&alpha, &id);
    assert!(outcome.contains("WORKSPACE_DIRTY"), "{outcome}");
    assert!(tree.join("notes.txt").is_file(), "the dirty worktree stays");

    // With force, approved: removed once; a second answer changes nothing.
    let (status, body) = remove(&agent_token, "@fabric#feature-x", true);
    assert_eq!(status, 202, "{body}");
    let id = body["approval"]["id"].as_str().unwrap().to_owned();
    let approved = alpha.run(&["approve", &id]);
    assert_eq!(approved.code, 0, "{}", approved.stderr);
    let outcome = approval_outcome(&alpha, &id);
    assert!(outcome.contains("removed the worktree"), "{outcome}");
    assert!(!tree.exists());
    let again = alpha.run(&["approve", &id]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("ALREADY_DECIDED"), "{}", again.stderr);
    wait_until("@fabric#feature-x to be withdrawn", || {
        (!alpha
            .instances()
            .contains(&"@fabric@alpha#feature-x".to_owned()))
        .then_some(())
    });
    git(
        &repo,
        &["rev-parse", "--verify", "--quiet", "refs/heads/feature-x"],
    );

    // An operator removes directly, with the same refusals.
    let other = alpha.sandbox.home().join("worktrees/fabric/feature-y");
    add_worktree(&repo, "feature-y", &other);
    alpha.wait_for_instance("@fabric@alpha#feature-y");
    std::fs::write(other.join("README"), "changed\n").unwrap();
    let (status, body) = remove(&operator, "@fabric#feature-y", false);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "WORKSPACE_DIRTY", "{body}");
    git(&other, &["checkout", "--", "README"]);
    let (status, body) = remove(&operator, "@fabric@alpha#feature-y", false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], "@fabric@alpha#feature-y", "{body}");
    assert!(!other.exists());
    assert!(
        !alpha
            .instances()
            .contains(&"@fabric@alpha#feature-y".to_owned()),
        "the broker reloaded its agents with the removal"
    );
}
