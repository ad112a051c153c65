//! The hash-chained audit log end to end: token and mesh actions on real
//! brokers produce chained rows with their actors; `scout audit verify`
//! passes, and fails with `AUDIT_CHAIN_BROKEN` naming the seq once a row
//! of the real SQLite file is edited or deleted while the broker is down.

mod common;

use common::{Node, wait_until};
use serde_json::Value;

/// `scout --json audit ARGS` on `node`: the entries.
fn entries(node: &Node, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "audit"];
    all.extend_from_slice(args);
    let run = node.run(&all);
    assert_eq!(run.code, 0, "audit {args:?}: {}", run.stderr);
    run.json()["entries"].as_array().expect("entries").clone()
}

fn seq_of(entries: &[Value], action: &str) -> i64 {
    entries
        .iter()
        .find(|entry| entry["action"] == action)
        .and_then(|entry| entry["seq"].as_i64())
        .unwrap_or_else(|| panic!("no {action} in {entries:?}"))
}

/// Restarts `node`'s broker after `change` ran on its store file.
fn with_broker_stopped(node: &mut Node, change: impl FnOnce(&rusqlite::Connection)) {
    let mut broker = node.broker.take().expect("broker");
    broker.stop_with(15);
    drop(broker);
    let connection =
        rusqlite::Connection::open(node.sandbox.home().join("scout.db")).expect("open");
    change(&connection);
    drop(connection);
    node.start();
}

fn verify(node: &Node) -> common::Run {
    node.run(&["audit", "verify"])
}

#[test]
fn token_actions_are_chained_and_tampering_is_found() {
    let mut node = Node::setup("alpha", &[]);
    node.start();
    let created = node.run(&["--json", "tokens", "create", "--scope", "read"]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    let created = created.json();
    let id = created["id"].as_str().expect("id").to_owned();
    let token = created["token"].as_str().expect("token").to_owned();
    for _ in 0..2 {
        let url = format!("{}/v1/agents", node.broker().http_base());
        ureq::get(&url)
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .expect("read with the token");
    }
    assert_eq!(node.run(&["tokens", "revoke", &id]).code, 0);

    let log = entries(&node, &[]);
    let actions: Vec<&str> = log
        .iter()
        .filter_map(|entry| entry["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["token_create", "token_first_use", "token_revoke"],
        "{log:?}"
    );
    assert_eq!(log[0]["actor"], "operator");
    assert_eq!(log[1]["actor"], format!("token:{id}"));
    assert!(log.iter().all(|entry| entry["subject"] == id.as_str()));
    assert_eq!(log[0]["prev_hash"], "0".repeat(64));
    for pair in log.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "{pair:?}");
    }
    let filtered = entries(&node, &["--action", "token_revoke", "--since", "1h"]);
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    assert_eq!(entries(&node, &["--actor", "token"]).len(), 1);

    let verified = verify(&node);
    assert_eq!(verified.code, 0, "{}", verified.stderr);

    // An edited row breaks the chain at that row.
    let first_use = seq_of(&log, "token_first_use");
    with_broker_stopped(&mut node, |connection| {
        connection
            .execute(
                "UPDATE audit_log SET actor = 'operator' WHERE seq = ?1",
                [first_use],
            )
            .expect("edit");
    });
    let broken = verify(&node);
    assert_eq!(broken.code, 1, "{}", broken.stderr);
    assert!(
        broken.stderr.contains("AUDIT_CHAIN_BROKEN"),
        "{}",
        broken.stderr
    );
    assert!(
        broken.stderr.contains(&format!("seq {first_use}")),
        "{}",
        broken.stderr
    );

    // Put back, it holds again; a deleted row breaks it at the next one.
    let actor = format!("token:{id}");
    with_broker_stopped(&mut node, |connection| {
        connection
            .execute(
                "UPDATE audit_log SET actor = ?1 WHERE seq = ?2",
                rusqlite::params![actor, first_use],
            )
            .expect("restore");
    });
    assert_eq!(verify(&node).code, 0);
    with_broker_stopped(&mut node, |connection| {
        connection
            .execute("DELETE FROM audit_log WHERE seq = ?1", [first_use])
            .expect("delete");
    });
    let broken = verify(&node);
    assert_eq!(broken.code, 1, "{}", broken.stderr);
    assert!(
        broken.stderr.contains("AUDIT_CHAIN_BROKEN"),
        "{}",
        broken.stderr
    );
    assert!(
        broken.stderr.contains(&format!("seq {}", first_use + 1)),
        "{}",
        broken.stderr
    );
}

#[test]
fn admissions_and_mesh_revocations_are_audited() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let beta = Node::setup("beta", &[]);
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "beta join: {}", joined.stderr);
    let beta_id = wait_until("alpha to record the admission", || {
        entries(&alpha, &["--action", "admit_node"])
            .first()
            .and_then(|entry| entry["subject"].as_str().map(str::to_owned))
    });
    let admitted = entries(&alpha, &["--action", "admit_node"]);
    assert_eq!(admitted[0]["actor"], alpha.node_id(), "{admitted:?}");
    let revoke = alpha.run(&["mesh", "revoke", "beta", "--reason", "laptop lost"]);
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    let revoked = entries(&alpha, &["--action", "mesh_revoke"]);
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["subject"], beta_id.as_str());
    assert_eq!(revoked[0]["actor"], "operator");
    assert_eq!(revoked[0]["detail"]["reason"], "laptop lost");
    // The gated route the operator ran directly is audited too.
    let gated = entries(&alpha, &["--action", "gated_action"]);
    assert_eq!(gated.len(), 1, "{gated:?}");
    assert_eq!(gated[0]["subject"], "/v1/mesh/revoke");
    assert_eq!(gated[0]["actor"], "operator");
    assert_eq!(verify(&alpha).code, 0);
}
