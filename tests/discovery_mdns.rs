//! mDNS between real brokers in network namespaces joined by a bridge
//! (multicast works there). The test makes the namespaces itself and
//! removes them even when it fails; where namespaces cannot be made (not
//! root, no iproute2) it prints why and passes without running.
//!
//! Two brokers of different meshes hear each other and skip each other's
//! records (discovery is not trust). Once one joins the other's mesh with
//! an invite, both move to new LAN addresses and restart: with no seeds,
//! and the addresses they knew gone, they find each other by mDNS alone,
//! connect, and share agents.

mod common;
mod discovery_support;

use std::io::Write as _;

use common::wait_until;
use discovery_support::{Lan, NsBroker, namespaces_unavailable};
use scout_mesh::wire::Invite;

/// An address and the sources that named it.
type Address = (String, Vec<String>);

/// What these tests ask of a broker in a namespace.
trait DiscoveryNs {
    /// Connected peers, with the sources of the address each is reached at.
    fn connected(&self, lan: &Lan) -> Vec<(String, Vec<Address>)>;
    /// Instance names this broker knows.
    fn instances(&self, lan: &Lan) -> Vec<String>;
}

impl DiscoveryNs for NsBroker {
    /// Connected peers, with the sources of the address each is reached at.
    fn connected(&self, lan: &Lan) -> Vec<(String, Vec<Address>)> {
        let peers = self.json(lan, &["peers"]);
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|peer| peer["state"] == "connected")
            .map(|peer| {
                let addresses = peer["addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|addr| {
                        let sources = addr["sources"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|s| s.as_str().unwrap().to_owned())
                            .collect();
                        (addr["addr"].as_str().unwrap().to_owned(), sources)
                    })
                    .collect();
                (peer["name"].as_str().unwrap().to_owned(), addresses)
            })
            .collect()
    }

    fn instances(&self, lan: &Lan) -> Vec<String> {
        self.json(lan, &["agents", "list"])["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|instance| instance["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[test]
fn brokers_in_two_namespaces_find_each_other_by_mdns_and_share_agents() {
    if let Some(reason) = namespaces_unavailable() {
        // Written to the handle, not with `eprintln!`, so the test harness
        // does not swallow it: a skip must be visible.
        let _ = writeln!(
            std::io::stderr(),
            "discovery_mdns skipped: network namespaces cannot be made here ({reason})"
        );
        return;
    }
    // Declared first so it is dropped last, after the brokers are killed.
    let lan = Lan::new("scout-mdns", 2);
    let root = tempfile::tempdir().unwrap();
    let mut alpha = NsBroker::setup(&lan, root.path(), 0, "alpha");
    let mut beta = NsBroker::setup(&lan, root.path(), 1, "beta");
    alpha.start(&lan);
    beta.start(&lan);

    // Different meshes: each hears the other and skips it.
    for (node, other) in [(&alpha, "beta"), (&beta, "alpha")] {
        wait_until(&format!("{other}'s record to be heard and skipped"), || {
            node.broker()
                .stderr_line_matching("mDNS record skipped: WRONG_MESH")
                .filter(|line| line.contains(other))
        });
    }
    assert!(alpha.connected(&lan).is_empty());

    // Admission decides: beta joins with an invite naming alpha's LAN address.
    let code = alpha.json(&lan, &["mesh", "invite"])["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut invite = Invite::from_code(&code).unwrap();
    invite.addresses = vec![format!("{}:3101", Lan::address(0, 0))];
    let (status, _, stderr) = beta.run(&lan, &["mesh", "join", &invite.to_code()]);
    assert_eq!(status, 0, "join: {stderr}");
    wait_until("alpha and beta to connect", || {
        (alpha.connected(&lan).len() == 1 && beta.connected(&lan).len() == 1).then_some(())
    });

    // New addresses for both, so everything they learned is stale; no seeds.
    alpha.stop();
    beta.stop();
    lan.set_address(0, &Lan::address(0, 1));
    lan.set_address(1, &Lan::address(1, 1));
    let cwd = alpha.dir.display().to_string();
    let (status, _, stderr) = alpha.run(
        &lan,
        &[
            "agents",
            "add",
            "fabric",
            "--cwd",
            &cwd,
            "--workspace",
            "main",
            "--command",
            "bash",
        ],
    );
    assert_eq!(status, 0, "{stderr}");
    alpha.start(&lan);
    beta.start(&lan);

    // Each reaches the other at its new address, which only mDNS told it
    // (a peer's hello may tell it too once connected, hence `learned`).
    for (node, other, other_idx) in [(&beta, "alpha", 0), (&alpha, "beta", 1)] {
        let now_at = format!("{}:3101", Lan::address(other_idx, 1));
        wait_until(
            &format!("{other} connected at {now_at}, found by mDNS"),
            || {
                node.connected(&lan)
                    .into_iter()
                    .find_map(|(name, addresses)| {
                        (name == other)
                            .then(|| {
                                addresses.into_iter().find(|(addr, sources)| {
                                    *addr == now_at && sources.contains(&"mdns".to_owned())
                                })
                            })
                            .flatten()
                    })
            },
        );
    }
    wait_until("beta to see @fabric@alpha#main", || {
        beta.instances(&lan)
            .contains(&"@fabric@alpha#main".to_owned())
            .then_some(())
    });
}
