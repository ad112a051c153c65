//! Pairing with a short code found by mDNS: two real brokers in network
//! namespaces joined by a bridge (multicast works there). The joiner is
//! given no address: it browses the LAN, asks the brokers it hears whether
//! they hold a code, and pairs with the one that does. Where namespaces
//! cannot be made (not root, no iproute2) the test prints why and passes
//! without running.

mod common;
mod discovery_support;

use std::io::Write as _;

use common::wait_until;
use discovery_support::{Lan, NsBroker, namespaces_unavailable};

/// What these tests ask of a broker in a namespace.
trait PairingNs {
    /// Names of the members this broker shows online.
    fn online(&self, lan: &Lan) -> Vec<String>;
}

impl PairingNs for NsBroker {
    /// Names of the members this broker shows online.
    fn online(&self, lan: &Lan) -> Vec<String> {
        self.json(lan, &["peers"])["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|peer| peer["status"] == "online")
            .map(|peer| peer["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[test]
fn a_joiner_finds_the_short_code_holder_by_mdns() {
    if let Some(reason) = namespaces_unavailable() {
        // Written to the handle, not with `eprintln!`, so the test harness
        // does not swallow it: a skip must be visible.
        let _ = writeln!(
            std::io::stderr(),
            "pairing_mdns skipped: network namespaces cannot be made here ({reason})"
        );
        return;
    }
    // Declared first so it is dropped last, after the brokers are killed.
    let lan = Lan::new("scout-pair", 2);
    let root = tempfile::tempdir().unwrap();
    let mut alpha = NsBroker::setup(&lan, root.path(), 0, "alpha");
    let mut beta = NsBroker::setup(&lan, root.path(), 1, "beta");
    alpha.start(&lan);
    let code = alpha.json(&lan, &["mesh", "invite", "--short"])["code"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, _, stderr) = beta.run(&lan, &["mesh", "join", &code]);
    assert_eq!(status, 0, "join by mDNS: {stderr}");
    beta.start(&lan);
    wait_until("alpha and beta to see each other online", || {
        (alpha.online(&lan) == ["beta"] && beta.online(&lan) == ["alpha"]).then_some(())
    });
}
