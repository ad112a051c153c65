//! Pairing with a short code found by mDNS: two real brokers in network
//! namespaces joined by a bridge (multicast works there). The joiner is
//! given no address: it browses the LAN, asks the brokers it hears whether
//! they hold a code, and pairs with the one that does. Where namespaces
//! cannot be made (not root, no iproute2) the test prints why and passes
//! without running.

mod common;
mod discovery_support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BrokerProcess, wait_until};
use discovery_support::{Lan, namespaces_unavailable};
use serde_json::Value;

/// A broker home inside a namespace of `lan`.
struct NsBroker {
    idx: usize,
    home: PathBuf,
    dir: PathBuf,
    broker: Option<BrokerProcess>,
}

impl NsBroker {
    fn setup(lan: &Lan, root: &Path, idx: usize, name: &str) -> NsBroker {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let node = NsBroker {
            idx,
            home: dir.join("home"),
            dir,
            broker: None,
        };
        let run = node.run(
            lan,
            &[
                "setup",
                "--no-service",
                "--node-name",
                name,
                "--http-port",
                "0",
                "--mesh-port",
                "3101",
            ],
        );
        assert_eq!(run.0, 0, "setup {name}: {}", run.2);
        node
    }

    fn command(&self, lan: &Lan) -> Command {
        let mut command = lan.command(self.idx, Path::new(env!("CARGO_BIN_EXE_scout")));
        command
            .arg("--home")
            .arg(&self.home)
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env_remove("SCOUT_HOME")
            .env_remove("SCOUT_SEEDS")
            .env_remove("PORT")
            .env_remove("RUST_LOG")
            .env("SCOUT_DISCOVERY", "mdns")
            .env("LOG_LEVEL", "info")
            .stdin(std::process::Stdio::null());
        command
    }

    fn run(&self, lan: &Lan, args: &[&str]) -> (i32, String, String) {
        let output = self.command(lan).args(args).output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn json(&self, lan: &Lan, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let (code, stdout, stderr) = self.run(lan, &full);
        assert_eq!(code, 0, "scout {}: {stderr}", args.join(" "));
        serde_json::from_str(&stdout).unwrap()
    }

    fn start(&mut self, lan: &Lan) {
        self.broker = Some(BrokerProcess::start_command(self.command(lan)));
    }

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
