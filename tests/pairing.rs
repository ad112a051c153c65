//! Pairing with a short code, end to end with real broker processes on
//! loopback: `scout mesh invite --short` on a running broker, `scout mesh
//! join ABCD-2345 --peer ADDR` on another home, the SPAKE2 exchange over
//! real QUIC, and the one-attempt rule (a wrong code burns the code, a used
//! or expired code is refused with its own code). Also `scout peers`
//! states: online, offline after a member stops, revoked after a
//! revocation. mDNS discovery of the inviter needs multicast between two
//! network stacks, which loopback test brokers do not have here; the
//! `--peer` path is the one these tests drive.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Node, wait_until};

/// Issues a short code on a running node: (code, expires_at_ms).
fn short_invite(node: &Node, ttl: &str) -> (String, u64) {
    let run = node.run(&["--json", "mesh", "invite", "--short", "--ttl", ttl]);
    assert_eq!(run.code, 0, "invite --short: {}", run.stderr);
    let json = run.json();
    let code = json["code"].as_str().expect("code").to_owned();
    let expires = json["expires_at_ms"].as_u64().expect("expires_at_ms");
    (code, expires)
}

/// A code of the same shape that differs from `code` in its first letter.
fn wrong_code(code: &str) -> String {
    let first = if code.starts_with('A') { 'B' } else { 'A' };
    format!("{first}{}", &code[1..])
}

/// The status word and last heartbeat `node` shows for the member `name`.
fn peer_status(node: &Node, name: &str) -> Option<(String, Option<u64>)> {
    let peers = node.get("/v1/peers");
    peers["peers"].as_array()?.iter().find_map(|peer| {
        (peer["name"] == name).then(|| {
            (
                peer["status"].as_str().unwrap_or_default().to_owned(),
                peer["last_heartbeat_ms"].as_u64(),
            )
        })
    })
}

/// Audit actions recorded in a stopped or running node's store.
fn audit_actions(node: &Node) -> Vec<String> {
    let path = node.sandbox.home().join("scout.db");
    let connection =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the store");
    let mut statement = connection
        .prepare("SELECT action FROM audit_log ORDER BY seq")
        .expect("audit query");
    statement
        .query_map([], |row| row.get::<_, String>(0))
        .expect("audit rows")
        .map(|row| row.expect("audit row"))
        .collect()
}

#[test]
fn a_short_code_pairs_two_brokers_once() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let (code, _) = short_invite(&alpha, "10m");
    assert_eq!(code.len(), 9, "ABCD-2345 shape: {code}");
    assert!(
        !code.contains(['0', 'O', '1', 'I']),
        "no ambiguous characters: {code}"
    );

    let mut beta = Node::setup("beta", &[]);
    let peer = alpha.mesh_addr();
    let joined = beta.run(&["mesh", "join", &code, "--peer", &peer]);
    assert_eq!(joined.code, 0, "beta join: {}", joined.stderr);
    beta.start();
    wait_until("alpha and beta to see each other online", || {
        let alpha_sees = peer_status(&alpha, "beta")?.0 == "online";
        let beta_sees = peer_status(&beta, "alpha")?.0 == "online";
        (alpha_sees && beta_sees).then_some(())
    });
    assert_eq!(
        alpha.get("/v1/mesh")["mesh_id"],
        beta.get("/v1/mesh")["mesh_id"]
    );

    // The same code a second time: refused as used, and nothing changes.
    let gamma = Node::setup("gamma", &[]);
    let again = gamma.run(&["mesh", "join", &code, "--peer", &peer]);
    assert_ne!(again.code, 0, "a used code must be refused");
    assert!(again.stderr.contains("INVITE_USED"), "{}", again.stderr);

    let actions = audit_actions(&alpha);
    for action in ["short_invite_issued", "admit_node", "short_invite_used"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
}

#[test]
fn a_wrong_code_burns_the_short_code_and_the_long_code_still_works() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let (code, _) = short_invite(&alpha, "10m");
    let peer = alpha.mesh_addr();

    let mallory = Node::setup("mallory", &[]);
    let guess = mallory.run(&["mesh", "join", &wrong_code(&code), "--peer", &peer]);
    assert_ne!(guess.code, 0, "a wrong code must fail");
    assert!(guess.stderr.contains("PAIRING_FAILED"), "{}", guess.stderr);

    // The right code after the failed guess: the code is burned.
    let beta = Node::setup("beta", &[]);
    let late = beta.run(&["mesh", "join", &code, "--peer", &peer]);
    assert_ne!(late.code, 0, "a burned code must be refused");
    assert!(late.stderr.contains("INVITE_USED"), "{}", late.stderr);
    assert!(
        audit_actions(&alpha)
            .iter()
            .any(|action| action == "short_invite_burned")
    );

    // A join without a code holder to find: a typed error with the way out.
    let lost = beta.run(&["mesh", "join", "ABCD-2345"]);
    assert_ne!(lost.code, 0);
    assert!(lost.stderr.contains("INVITER_NOT_FOUND"), "{}", lost.stderr);
    assert!(lost.stderr.contains("--peer"), "{}", lost.stderr);

    // The broker kept serving, and the long code works as before.
    let mut beta = beta;
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "long-code join: {}", joined.stderr);
    beta.start();
    wait_until("alpha to see beta online", || {
        (peer_status(&alpha, "beta")?.0 == "online").then_some(())
    });
    assert!(peer_status(&alpha, "mallory").is_none());
}

#[test]
fn an_expired_short_code_is_refused() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let (code, expires_at_ms) = short_invite(&alpha, "1s");
    wait_until("the short code to expire", || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        (now > expires_at_ms).then_some(())
    });
    let beta = Node::setup("beta", &[]);
    let late = beta.run(&["mesh", "join", &code, "--peer", &alpha.mesh_addr()]);
    assert_ne!(late.code, 0, "an expired code must be refused");
    assert!(late.stderr.contains("INVITE_EXPIRED"), "{}", late.stderr);
}

#[test]
fn a_running_joiner_pairs_through_its_broker() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let (code, _) = short_invite(&alpha, "10m");
    let mut beta = Node::setup("beta", &[]);
    beta.start();
    let joined = beta.run(&[
        "--json",
        "mesh",
        "join",
        &code.to_lowercase(),
        "--peer",
        &alpha.mesh_addr(),
    ]);
    assert_eq!(joined.code, 0, "beta join: {}", joined.stderr);
    assert_eq!(joined.json()["via_broker"], true);
    wait_until("alpha and beta to see each other online", || {
        let alpha_sees = peer_status(&alpha, "beta")?.0 == "online";
        let beta_sees = peer_status(&beta, "alpha")?.0 == "online";
        (alpha_sees && beta_sees).then_some(())
    });
}

#[test]
fn peers_show_online_offline_and_revoked_with_the_last_heartbeat() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let peer = alpha.mesh_addr();
    let mut beta = Node::setup("beta", &[]);
    let (code, _) = short_invite(&alpha, "10m");
    assert_eq!(beta.run(&["mesh", "join", &code, "--peer", &peer]).code, 0);
    let mut gamma = Node::setup("gamma", &[]);
    assert_eq!(gamma.run(&["mesh", "join", &alpha.invite()]).code, 0);
    beta.start();
    gamma.start();
    wait_until("alpha to see beta and gamma online", || {
        let beta_online = peer_status(&alpha, "beta")?.0 == "online";
        let gamma_online = peer_status(&alpha, "gamma")?.0 == "online";
        (beta_online && gamma_online).then_some(())
    });
    let (_, heartbeat) = peer_status(&alpha, "beta").expect("beta");
    assert!(heartbeat.is_some(), "an online member has a heartbeat");

    let revoke = alpha.run(&["mesh", "revoke", "gamma"]);
    assert_eq!(revoke.code, 0, "revoke: {}", revoke.stderr);
    wait_until("alpha to show gamma revoked", || {
        (peer_status(&alpha, "gamma")?.0 == "revoked").then_some(())
    });

    beta.broker.as_mut().expect("beta runs").stop_with(15);
    let heartbeat = wait_until("alpha to show beta offline", || {
        let (status, heartbeat) = peer_status(&alpha, "beta")?;
        (status == "offline").then_some(heartbeat)
    });
    assert!(
        heartbeat.is_some(),
        "an offline member keeps its last heartbeat"
    );

    let table = alpha.run(&["peers"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("LAST HEARTBEAT"), "{}", table.stdout);
    assert!(table.stdout.contains("offline"), "{}", table.stdout);
    assert!(table.stdout.contains("revoked"), "{}", table.stdout);
    let json = alpha.run(&["--json", "peers"]).json();
    let statuses: Vec<&str> = json["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter_map(|peer| peer["status"].as_str())
        .collect();
    assert!(
        statuses.contains(&"offline") && statuses.contains(&"revoked"),
        "{json}"
    );
}

#[test]
fn only_brokers_holding_a_code_are_tried_and_the_first_failure_stops_the_search() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let (code, _) = short_invite(&alpha, "10m");
    let mut bystander = Node::setup("bystander", &[]);
    bystander.start();
    let mut decoy = Node::setup("decoy", &[]);
    decoy.start();

    // A broker that holds a code of its own answers first (as a hostile
    // LAN peer would): the attempt there fails, and the search stops
    // before alpha, whose code stays valid.
    let _ = short_invite(&decoy, "10m");
    let gamma = Node::setup("gamma", &[]);
    let fooled = gamma.run(&[
        "mesh",
        "join",
        &code,
        "--peer",
        &decoy.mesh_addr(),
        "--peer",
        &alpha.mesh_addr(),
    ]);
    assert_ne!(fooled.code, 0);
    assert!(
        fooled.stderr.contains("PAIRING_FAILED"),
        "{}",
        fooled.stderr
    );

    // A broker without a code is skipped without an attempt; alpha's code
    // was never tried, so it still works.
    let mut gamma = gamma;
    let joined = gamma.run(&[
        "mesh",
        "join",
        &code,
        "--peer",
        &bystander.mesh_addr(),
        "--peer",
        &alpha.mesh_addr(),
    ]);
    assert_eq!(joined.code, 0, "gamma join: {}", joined.stderr);
    gamma.start();
    wait_until("alpha to see gamma online", || {
        (peer_status(&alpha, "gamma")?.0 == "online").then_some(())
    });
    assert!(peer_status(&bystander, "gamma").is_none());
}

#[test]
fn two_joiners_racing_for_one_code_admit_one() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let (code, _) = short_invite(&alpha, "10m");
    let peer = alpha.mesh_addr();
    let beta = Node::setup("beta", &[]);
    let gamma = Node::setup("gamma", &[]);
    let (beta, gamma) = (&beta.sandbox, &gamma.sandbox);
    let (first, second) = std::thread::scope(|scope| {
        let one = scope.spawn(|| beta.run(&["mesh", "join", &code, "--peer", &peer]));
        let two = scope.spawn(|| gamma.run(&["mesh", "join", &code, "--peer", &peer]));
        (one.join().expect("beta"), two.join().expect("gamma"))
    });
    let winners = [&first, &second].iter().filter(|run| run.code == 0).count();
    assert_eq!(
        winners, 1,
        "exactly one joiner wins: {} / {}",
        first.stderr, second.stderr
    );
    let loser = if first.code == 0 { &second } else { &first };
    assert!(
        loser.stderr.contains("INVITE_USED"),
        "the other is told the code is taken: {}",
        loser.stderr
    );
    // Alpha admitted exactly one of them.
    let admitted = audit_actions(&alpha)
        .iter()
        .filter(|action| *action == "admit_node")
        .count();
    assert_eq!(admitted, 1);
}

#[test]
fn short_codes_need_a_running_inviter_and_a_valid_shape() {
    let node = Node::setup("alpha", &[]);
    let offline = node.run(&["mesh", "invite", "--short"]);
    assert_ne!(offline.code, 0);
    assert!(
        offline.stderr.contains("BROKER_NOT_RUNNING"),
        "{}",
        offline.stderr
    );
    let typo = node.run(&["mesh", "join", "ABCD-234O", "--peer", "127.0.0.1:9"]);
    assert_ne!(typo.code, 0);
    assert!(
        typo.stderr.contains("INVALID_SHORT_CODE") && typo.stderr.contains("never use"),
        "{}",
        typo.stderr
    );
}
