//! End-to-end revocation with real broker processes on loopback: a joiner
//! that revokes its own inviter cuts it off for good, and so does a broker
//! whose inviter is revoked by someone else. The inviter's key was pinned
//! when the joiner joined; the pin must neither let the revoked inviter
//! back in (in either TLS direction, after the hello, or on a live
//! connection) nor come back when the joiner restarts.

mod common;

use std::path::Path;

use common::{Node, wait_until};

/// `scout send @shell@beta "id > FILE"` from `node`, waiting at most
/// `timeout_s` seconds for the outcome.
fn send_id_to(node: &Node, file: &Path, timeout_s: &str) -> common::Run {
    send_id(node, "@shell@beta", file, timeout_s)
}

/// `scout send TARGET "id > FILE" --wait` from `node`.
fn send_id(node: &Node, target: &str, file: &Path, timeout_s: &str) -> common::Run {
    let prompt = format!("id > {}", file.display());
    node.run(&["send", target, &prompt, "--wait", "--timeout", timeout_s])
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
    let (alpha, mut beta) = common::inviter_and_shell_owner();

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

#[test]
fn a_broker_refuses_its_own_inviter_once_another_member_revoked_it() {
    // alpha founds; beta joins alpha; gamma joins with beta's code, so
    // gamma pinned beta's key.
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = Node::setup("beta", &[]);
    assert_eq!(beta.run(&["mesh", "join", &alpha.invite()]).code, 0);
    beta.start();
    wait_until("beta to connect to alpha", || {
        (alpha.peers_in("connected") == ["beta"]).then_some(())
    });
    let mut gamma = Node::setup("gamma", &[]);
    gamma.add_bash_agent("shell");
    let joined = gamma.run(&["mesh", "join", &beta.invite()]);
    assert_eq!(joined.code, 0, "gamma join: {}", joined.stderr);
    gamma.start();
    beta.wait_for_instance("@shell@gamma#main");
    wait_until("gamma to connect to both", || {
        (gamma.peers_in("connected") == ["alpha", "beta"]).then_some(())
    });

    let revoke = alpha.run(&["mesh", "revoke", "beta", "--reason", "laptop lost"]);
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    wait_until(
        "gamma to mark its inviter revoked and close its connection",
        || {
            (gamma.peers_in("revoked") == ["beta"] && gamma.peers_in("connected") == ["alpha"])
                .then_some(())
        },
    );
    let after = gamma.sandbox.path().join("after");
    let run = send_id(&beta, "@shell@gamma", &after, "3");
    assert_ne!(
        run.code, 0,
        "a revoked broker's send succeeded: {}",
        run.stdout
    );
    assert!(!after.exists(), "a revoked broker's command ran on gamma");
    assert_eq!(flights_on(&gamma), 0);

    let mut broker = gamma.broker.take().unwrap();
    assert_eq!(broker.stop_with(libc::SIGTERM), 0);
    drop(broker);
    gamma.start();
    wait_until("gamma to reconnect to alpha only", || {
        (gamma.peers_in("connected") == ["alpha"]).then_some(())
    });
    let restarted = gamma.sandbox.path().join("after-restart");
    let run = send_id(&beta, "@shell@gamma", &restarted, "3");
    assert_ne!(
        run.code, 0,
        "a revoked broker's send succeeded: {}",
        run.stdout
    );
    assert!(
        !restarted.exists(),
        "a revoked broker's command ran on gamma after its restart"
    );
    assert_eq!(flights_on(&gamma), 0);
    assert_eq!(gamma.peers_in("revoked"), ["beta"]);
}
