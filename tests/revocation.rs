//! End-to-end revocation with real broker processes on loopback: a joiner
//! that revokes its own inviter cuts it off for good. The inviter's key was
//! pinned when the joiner joined; the pin must neither let the revoked
//! inviter back in (in either TLS direction, after the hello, or on a live
//! connection) nor come back when the joiner restarts.

mod common;

use std::path::Path;

use common::{Node, wait_until};

/// Alpha founds the mesh; beta joins with alpha's invite and owns
/// `@shell@beta#main`, a bash agent.
fn inviter_and_joiner() -> (Node, Node) {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = Node::setup("beta", &[]);
    beta.add_bash_agent("shell");
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "beta join: {}", joined.stderr);
    beta.start();
    wait_until("alpha to see @shell@beta", || {
        alpha
            .instances()
            .contains(&"@shell@beta#main".to_owned())
            .then_some(())
    });
    (alpha, beta)
}

/// `scout send @shell@beta "id > FILE"` from `node`, waiting at most
/// `timeout_s` seconds for the outcome.
fn send_id_to(node: &Node, file: &Path, timeout_s: &str) -> common::Run {
    let prompt = format!("id > {}", file.display());
    node.run(&[
        "send",
        "@shell@beta",
        &prompt,
        "--wait",
        "--timeout",
        timeout_s,
    ])
}

fn flights_on(node: &Node) -> usize {
    node.get("/v1/flights").as_array().map_or(0, Vec::len)
}

fn mesh_file(node: &Node) -> serde_json::Value {
    let text = std::fs::read_to_string(node.sandbox.home().join("mesh.json")).expect("mesh.json");
    serde_json::from_str(&text).expect("mesh.json is JSON")
}

#[test]
fn a_joiner_that_revokes_its_inviter_cuts_it_off_across_restarts() {
    let (alpha, mut beta) = inviter_and_joiner();

    // Before the revocation the path works: alpha's work runs on beta.
    let before = beta.sandbox.path().join("before");
    let run = alpha.run(&["send", "@shell@beta", &format!("id > {}", before.display())]);
    assert_eq!(run.code, 0, "send: {}", run.stderr);
    wait_until("alpha's command to run on beta", || {
        before.exists().then_some(())
    });
    assert_eq!(flights_on(&beta), 1);

    // Admissions have synced: the inviter's key is no longer pinned in
    // mesh.json, so no restart can pin it again.
    wait_until("beta to unpin alpha in mesh.json", || {
        let file = mesh_file(&beta);
        let bootstrap = file["bootstrap"].as_array()?.clone();
        (!bootstrap.is_empty() && bootstrap.iter().all(|peer| peer["pinned"] == false))
            .then_some(())
    });

    let revoke = beta.run(&["mesh", "revoke", "alpha", "--reason", "inviter lost"]);
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    wait_until("beta to mark alpha revoked", || {
        (beta.peers_in("revoked") == ["alpha"]).then_some(())
    });
    wait_until("the connection between alpha and beta to close", || {
        (beta.peers_in("connected").is_empty() && alpha.peers_in("connected").is_empty())
            .then_some(())
    });

    let after = beta.sandbox.path().join("after");
    let run = send_id_to(&alpha, &after, "3");
    assert_ne!(
        run.code, 0,
        "a revoked broker's send succeeded: {}",
        run.stdout
    );
    assert!(!after.exists(), "a revoked broker's command ran on beta");
    assert_eq!(
        flights_on(&beta),
        1,
        "beta accepted work from a revoked broker"
    );

    // A restart of beta changes nothing: no pin comes back.
    let mut broker = beta.broker.take().unwrap();
    assert_eq!(broker.stop_with(libc::SIGTERM), 0);
    drop(broker);
    beta.start();
    assert_eq!(beta.peers_in("revoked"), ["alpha"]);
    let file = mesh_file(&beta);
    assert!(
        file["bootstrap"]
            .as_array()
            .is_some_and(|peers| peers.iter().all(|peer| peer["pinned"] == false)),
        "{file}"
    );
    let restarted = beta.sandbox.path().join("after-restart");
    let run = send_id_to(&alpha, &restarted, "3");
    assert_ne!(
        run.code, 0,
        "a revoked broker's send succeeded: {}",
        run.stdout
    );
    assert!(
        !restarted.exists(),
        "a revoked broker's command ran on beta after its restart"
    );
    assert_eq!(
        flights_on(&beta),
        1,
        "beta accepted work from a revoked broker"
    );
    assert!(beta.peers_in("connected").is_empty());
    assert!(alpha.peers_in("connected").is_empty());
    assert_eq!(beta.peers_in("revoked"), ["alpha"]);
}
