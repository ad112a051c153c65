//! Pairing with a short code found among the tailnet's peers: a stand-in
//! tailscaled (a real HTTP server on a unix socket) lists the inviter as a
//! peer at a loopback address, and the joiner, given no address, asks it
//! for its peers, finds the broker holding the code and pairs with it.

mod common;
mod discovery_support;

use common::{Node, wait_until};
use discovery_support::{FakeTailscaled, edit_settings, fixture, only_peers, with_peer_at};
use serde_json::json;

#[test]
fn a_joiner_finds_the_short_code_holder_among_tailnet_peers() {
    let dir = tempfile::tempdir().unwrap();
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let port: u16 = alpha
        .mesh_addr()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("alpha's mesh port");
    let status = with_peer_at(fixture(), "devbox", "127.0.0.1", true);
    let fake = FakeTailscaled::start(
        &dir.path().join("tailscaled.sock"),
        &only_peers(status, &["devbox"]),
    );
    let run = alpha.run(&["--json", "mesh", "invite", "--short"]);
    assert_eq!(run.code, 0, "invite --short: {}", run.stderr);
    let code = run.json()["code"].as_str().expect("code").to_owned();

    let mut beta = Node::setup("beta", &[]);
    edit_settings(&beta.sandbox.home(), |settings| {
        settings["discovery"]["tailscale"]["socket"] = json!(fake.socket);
        settings["discovery"]["tailscale"]["mesh_port"] = json!(port);
    });
    let joined = beta
        .sandbox
        .scout()
        .env("SCOUT_DISCOVERY", "tailscale")
        .args(["mesh", "join", &code])
        .output()
        .expect("run scout");
    assert!(
        joined.status.success(),
        "join by the tailnet: {}",
        String::from_utf8_lossy(&joined.stderr)
    );
    assert!(fake.requests().0 >= 1, "the joiner asked tailscaled");
    beta.start();
    wait_until("alpha to see beta online", || {
        let peers = alpha.get("/v1/peers");
        peers["peers"]
            .as_array()?
            .iter()
            .any(|peer| peer["name"] == "beta" && peer["status"] == "online")
            .then_some(())
    });
}
