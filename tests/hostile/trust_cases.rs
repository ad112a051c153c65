//! Cases about trust decisions that outlive one request: a member that
//! revoked its inviter never runs the inviter's work again, even after a
//! restart; and a repository's manifest never starts a command the user has
//! not trusted, nor one that changed since.

use std::path::Path;

use serde_json::json;

use crate::common::{Node, wait_until};
use crate::procs::run_scout;
use crate::tally::{Check, Tally, ensure};

/// Seconds a `send --wait` may run in these cases: enough for a bash agent
/// to answer, short enough to keep the battery quick when it is refused.
const SEND_TIMEOUT_S: &str = "10";

/// B joins A's mesh, B revokes A: A's work never runs on B, before or after
/// B restarts.
pub fn revoked_inviter(tally: &Tally) {
    let mut alpha = Node::setup("inviter", &[]);
    alpha.start();
    let mut beta = Node::setup("revoker", &[]);
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "join: {}", joined.stderr);
    // Added before the start, so the broker publishes it from its first
    // read of the file.
    beta.add_bash_agent("shell");
    beta.start();
    wait_until("revoker to connect to inviter", || {
        (alpha.peers_in("connected") == ["revoker"]).then_some(())
    });
    wait_until("inviter to see @shell@revoker", || {
        alpha
            .instances()
            .contains(&"@shell@revoker#main".to_owned())
            .then_some(())
    });
    let revoke = beta.run(&["mesh", "revoke", "inviter", "--reason", "hostile test"]);
    assert_eq!(revoke.code, 0, "revoke: {}", revoke.stderr);
    wait_until("revoker to mark inviter revoked", || {
        (beta.peers_in("revoked") == ["inviter"]).then_some(())
    });
    let file = beta.sandbox.path().join("revoked-inviter-ran");
    let command = format!("touch {}", file.display());
    let attempt = |alpha: &Node| -> Check {
        let run = run_scout(
            &alpha.sandbox.home(),
            alpha.sandbox.path(),
            &[
                "send",
                "@shell@revoker",
                &command,
                "--wait",
                "--timeout",
                SEND_TIMEOUT_S,
            ],
        )?;
        ensure(run.code != 0, || {
            format!(
                "the revoked inviter's send succeeded: {}{}",
                run.stdout, run.stderr
            )
        })?;
        ensure(!file.exists(), || {
            "the revoked inviter's command ran".to_owned()
        })
    };
    tally.case("revocation: the revoked inviter's send fails", || {
        attempt(&alpha)
    });
    tally.case(
        "revocation: still refused after the revoker restarts",
        || {
            let mut broker = beta.broker.take().ok_or("no broker")?;
            let code = broker.stop_with(libc::SIGTERM);
            drop(broker);
            ensure(code == 0, || format!("the revoker stopped with {code}"))?;
            beta.start();
            wait_until(
                "revoker to list inviter as revoked after the restart",
                || (beta.peers_in("revoked") == ["inviter"]).then_some(()),
            );
            attempt(&alpha)
        },
    );
    tally.case("revocation: the command never ran", || {
        ensure(!file.exists(), || format!("{} exists", file.display()))
    });
}

fn write_manifest(repo: &Path, marker: &Path) {
    let manifest = json!({
        "version": 1,
        "name": "proj",
        "agents": [{
            "name": "builder",
            "harness": "command",
            "command": ["bash", "-c", format!("touch {}; exec bash", marker.display())],
            "workspace": "main",
        }],
    });
    std::fs::write(
        repo.join(".openscout/project.json"),
        serde_json::to_string_pretty(&manifest).expect("json"),
    )
    .expect("write the manifest");
}

/// A manifest's command runs only after `scout agents trust PATH`, and
/// again only after a changed manifest is trusted anew.
pub fn manifests(tally: &Tally) {
    let mut node = Node::setup("manifests", &[]);
    let workspace = node.sandbox.path().join("ws");
    let repo = workspace.join("proj");
    std::fs::create_dir_all(repo.join(".openscout")).expect("repo");
    let marker = node.sandbox.path().join("manifest-command-ran");
    let changed_marker = node.sandbox.path().join("changed-manifest-command-ran");
    write_manifest(&repo, &marker);
    let settings_path = node.sandbox.home().join("settings.json");
    let mut settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings_path).expect("settings"))
            .expect("json");
    settings["workspace_roots"] = json!([workspace]);
    std::fs::write(&settings_path, settings.to_string()).expect("settings");
    node.start();
    let home = node.sandbox.home();
    let cwd = node.sandbox.path().to_owned();
    let send = || {
        run_scout(
            &home,
            &cwd,
            &[
                "send",
                "@builder",
                "echo hi",
                "--wait",
                "--timeout",
                SEND_TIMEOUT_S,
            ],
        )
    };
    let untrusted = |what: &Path| -> Check {
        let run = send()?;
        let listed = run_scout(&home, &cwd, &["agents", "list"])?;
        let said = format!(
            "{}{}{}{}",
            run.stdout, run.stderr, listed.stdout, listed.stderr
        );
        ensure(run.code != 0, || {
            format!(
                "the untrusted manifest's agent answered: {}{}",
                run.stdout, run.stderr
            )
        })?;
        ensure(!what.exists(), || "the untrusted command ran".to_owned())?;
        ensure(said.contains("UNTRUSTED_MANIFEST"), || {
            format!("no UNTRUSTED_MANIFEST in the send or the agent list: {said}")
        })
    };
    tally.case(
        "manifest: an untrusted manifest's command does not start",
        || untrusted(&marker),
    );
    let repo_arg = repo.display().to_string();
    tally.case("manifest: `scout agents trust PATH` lets it start", || {
        let trust = run_scout(&home, &cwd, &["agents", "trust", &repo_arg])?;
        ensure(trust.code == 0, || {
            format!("trust: exit {}: {}", trust.code, trust.stderr)
        })?;
        let run = send()?;
        ensure(run.code == 0, || {
            format!("send after trust: {}{}", run.stdout, run.stderr)
        })?;
        ensure(marker.exists(), || {
            "the trusted command did not run".to_owned()
        })
    });
    tally.case("manifest: a changed manifest is untrusted again", || {
        write_manifest(&repo, &changed_marker);
        // The broker notices the change on its own schedule; poll (bounded)
        // until it reports the manifest untrusted.
        let noticed = wait_for_untrusted(&home, &cwd);
        ensure(noticed, || {
            "the changed manifest was never reported untrusted".to_owned()
        })?;
        untrusted(&changed_marker)
    });
}

/// Polls (bounded) until the broker reports the manifest untrusted, in its
/// agent list or in the refusal of a send.
fn wait_for_untrusted(home: &Path, cwd: &Path) -> bool {
    let deadline = std::time::Instant::now() + crate::common::WAIT_BOUND;
    let says_untrusted = |args: &[&str]| {
        run_scout(home, cwd, args)
            .is_ok_and(|run| format!("{}{}", run.stdout, run.stderr).contains("UNTRUSTED_MANIFEST"))
    };
    while std::time::Instant::now() < deadline {
        if says_untrusted(&["agents", "list"])
            || says_untrusted(&[
                "send",
                "@builder",
                "echo hi",
                "--wait",
                "--timeout",
                SEND_TIMEOUT_S,
            ])
        {
            return true;
        }
        // Another process's state can only be polled.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    false
}
