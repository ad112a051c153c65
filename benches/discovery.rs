//! Discovery benchmark (`cargo bench --bench discovery`).
//!
//! - mDNS: three brokers of one mesh, each in a network namespace on one
//!   bridge. Each round one of them restarts at a LAN address nobody knew;
//!   watchers inside the other two namespaces poll their broker's address
//!   book every 10 ms. Measured from the restart: until the new address is
//!   in every other book (source `mdns`), and until every other broker has
//!   it connected. Needs root and iproute2; otherwise says why and skips.
//! - Tailscale: a broker reads a stand-in tailscaled (unix socket) every
//!   `poll_interval_ms`; a peer is set offline and the time until its
//!   address leaves the book is measured, against the poll interval.
//!
//! Targets (BENCHMARKS.md): in the book ≤ 2 s and connected ≤ 3 s;
//! offline noticed within the poll interval.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/discovery_support/mod.rs"]
mod discovery_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{BrokerProcess, Node, wait_until};
use discovery_support::{
    FakeTailscaled, Lan, edit_settings, fixture, free_udp_port, namespaces_unavailable, only_peers,
    with_peer_at,
};
use scout_mesh::wire::Invite;
use serde_json::{Value, json};

const MDNS_ROUNDS: usize = 5;
const TAILSCALE_ROUNDS: usize = 8;
const TAILSCALE_POLL_INTERVAL_MS: u64 = 1000;

fn main() {
    mdns_bench();
    tailscale_bench();
}

fn summary(label: &str, samples_ms: &mut [f64]) {
    samples_ms.sort_by(|a, b| a.total_cmp(b));
    let n = samples_ms.len();
    let median = samples_ms[n / 2];
    let max = samples_ms[n - 1];
    let min = samples_ms[0];
    println!("{label}: n={n} min {min:.0} ms, median {median:.0} ms, max {max:.0} ms");
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Polls a broker's `/v1/peers` from inside its namespace. Prints `ready`
/// once `name` shows as disconnected and `addr` is not in the book, then
/// the wall-clock instants at which `addr` entered the book with source
/// `mdns` and `name` was connected again, as JSON.
const WATCHER: &str = r#"
import json, sys, time, urllib.request
home, addr, name, deadline = sys.argv[1], sys.argv[2], sys.argv[3], time.time() + float(sys.argv[4])
runtime = json.load(open(home + "/broker.json"))
token = open(home + "/token").read().strip()
request = urllib.request.Request("http://%s/v1/peers" % runtime["http_addr"], headers={"Authorization": "Bearer " + token})
def poll():
    while time.time() < deadline:
        try:
            return json.load(urllib.request.urlopen(request, timeout=1))
        except Exception:
            time.sleep(0.01)
    return None
def in_book(peers):
    return any(a["addr"] == addr and "mdns" in a["sources"] for a in peers["addresses"])
def connected(peers):
    return any(p["name"] == name and p["state"] == "connected" for p in peers["peers"])
while True:
    peers = poll()
    if peers is None or not (in_book(peers) or connected(peers)):
        break
    time.sleep(0.01)
print("ready", flush=True)
seen = {"book": None, "connected": None}
while time.time() < deadline and (seen["book"] is None or seen["connected"] is None):
    peers = poll()
    if peers is None:
        break
    now = time.time()
    if seen["book"] is None and in_book(peers):
        seen["book"] = now
    if seen["connected"] is None and connected(peers):
        seen["connected"] = now
    time.sleep(0.005)
print(json.dumps(seen), flush=True)
"#;

struct NsHome {
    idx: usize,
    home: PathBuf,
    dir: PathBuf,
    broker: Option<BrokerProcess>,
}

impl NsHome {
    fn command(&self, lan: &Lan) -> Command {
        let mut command = lan.command(self.idx, Path::new(env!("CARGO_BIN_EXE_scout")));
        command
            .arg("--home")
            .arg(&self.home)
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env_remove("SCOUT_SEEDS")
            .env_remove("PORT")
            .env("SCOUT_DISCOVERY", "mdns")
            .env("LOG_LEVEL", "warn")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, lan: &Lan, args: &[&str]) -> String {
        let output = self.command(lan).args(args).output().expect("scout");
        assert!(
            output.status.success(),
            "scout {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn connected(&self, lan: &Lan) -> usize {
        let peers: Value =
            serde_json::from_str(&self.run(lan, &["--json", "peers"])).expect("json");
        peers["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .filter(|peer| peer["state"] == "connected")
            .count()
    }
}

fn mdns_bench() {
    if let Some(reason) = namespaces_unavailable() {
        println!("mdns: skipped ({reason})");
        return;
    }
    if Command::new("python3").arg("--version").output().is_err() {
        println!("mdns: skipped (the watcher needs python3)");
        return;
    }
    let lan = Lan::new("scout-dbench", 3);
    let root = tempfile::tempdir().expect("tmp");
    let script = root.path().join("watch.py");
    std::fs::write(&script, WATCHER).expect("script");
    let names = ["alpha", "beta", "gamma"];
    let mut homes: Vec<NsHome> = names
        .iter()
        .enumerate()
        .map(|(idx, name)| {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).expect("dir");
            let home = NsHome {
                idx,
                home: dir.join("home"),
                dir,
                broker: None,
            };
            home.run(
                &lan,
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
            home
        })
        .collect();
    for home in &mut homes {
        home.broker = Some(BrokerProcess::start_command(home.command(&lan)));
    }
    for idx in 1..homes.len() {
        let invite: Value =
            serde_json::from_str(&homes[0].run(&lan, &["--json", "mesh", "invite"])).expect("json");
        let mut invite = Invite::from_code(invite["code"].as_str().expect("code")).expect("code");
        invite.addresses = vec![format!("{}:3101", Lan::address(0, 0))];
        homes[idx].run(&lan, &["mesh", "join", &invite.to_code()]);
    }
    wait_until("a full mesh of three", || {
        homes
            .iter()
            .all(|home| home.connected(&lan) == 2)
            .then_some(())
    });
    println!("mdns: 3 brokers in 3 network namespaces on one bridge, {MDNS_ROUNDS} rounds");
    let (mut in_book, mut connected) = (Vec::new(), Vec::new());
    for round in 1..=MDNS_ROUNDS {
        let moving = round % homes.len();
        let others: Vec<usize> = (0..homes.len()).filter(|idx| *idx != moving).collect();
        if let Some(mut broker) = homes[moving].broker.take() {
            broker.stop_with(15);
        }
        let address = Lan::address(moving, round);
        lan.set_address(moving, &address);
        let mut watchers: Vec<_> = others
            .iter()
            .map(|idx| {
                let mut command = lan.command(*idx, Path::new("python3"));
                command
                    .arg(&script)
                    .arg(&homes[*idx].home)
                    .arg(format!("{address}:3101"))
                    .arg(names[moving])
                    .arg("20")
                    .stdout(Stdio::piped());
                let mut child = command.spawn().expect("watcher");
                let stdout = BufReader::new(child.stdout.take().expect("stdout"));
                (child, stdout)
            })
            .collect();
        for (_, stdout) in &mut watchers {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("watcher ready");
            assert_eq!(line.trim(), "ready", "watcher did not start");
        }
        let started = unix_now();
        homes[moving].broker = Some(BrokerProcess::start_command(homes[moving].command(&lan)));
        let (mut book_ms, mut connected_ms) = (0f64, 0f64);
        for (mut child, mut stdout) in watchers {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("watcher result");
            let _ = child.wait();
            let seen: Value = serde_json::from_str(&line).expect("watcher json");
            let book = seen["book"]
                .as_f64()
                .expect("address never reached the book");
            let link = seen["connected"].as_f64().expect("never connected");
            book_ms = book_ms.max((book - started) * 1000.0);
            connected_ms = connected_ms.max((link - started) * 1000.0);
        }
        println!(
            "  round {round}: {} restarted at {address}: in every book after {book_ms:.0} ms, connected to every broker after {connected_ms:.0} ms",
            names[moving]
        );
        in_book.push(book_ms);
        connected.push(connected_ms);
    }
    summary(
        "mdns: new address in every other book (from process start)",
        &mut in_book,
    );
    summary(
        "mdns: connected to every other broker (from process start)",
        &mut connected,
    );
    drop(homes);
    drop(lan);
}

fn tailscale_bench() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_udp_port();
    let status = |online: bool| {
        only_peers(
            with_peer_at(fixture(), "devbox", "127.0.0.2", online),
            &["devbox"],
        )
    };
    let fake = FakeTailscaled::start(&dir.path().join("tailscaled.sock"), &status(true));
    let mut node = Node::setup("laptop", &[]);
    edit_settings(&node.sandbox.home(), |settings| {
        settings["discovery"]["tailscale"]["socket"] = json!(fake.socket);
        settings["discovery"]["tailscale"]["poll_interval_ms"] = json!(TAILSCALE_POLL_INTERVAL_MS);
        settings["discovery"]["tailscale"]["mesh_port"] = json!(port);
    });
    let mut command = node.sandbox.scout();
    command
        .env("SCOUT_DISCOVERY", "tailscale")
        .env("LOG_LEVEL", "warn");
    node.broker = Some(BrokerProcess::start_command(command));
    let devbox = format!("127.0.0.2:{port}");
    let present = |node: &Node| {
        node.get("/v1/peers")["addresses"]
            .as_array()
            .expect("addresses")
            .iter()
            .any(|entry| entry["addr"] == devbox.as_str())
    };
    println!(
        "tailscale: one broker, stand-in tailscaled, poll_interval_ms {TAILSCALE_POLL_INTERVAL_MS}, {TAILSCALE_ROUNDS} rounds"
    );
    let mut gone = Vec::new();
    for round in 0..TAILSCALE_ROUNDS {
        fake.set_status(&status(true));
        wait_until("devbox online", || present(&node).then_some(()));
        // Offline at a different phase of the poll cycle each round.
        std::thread::sleep(Duration::from_millis(
            TAILSCALE_POLL_INTERVAL_MS * round as u64 / TAILSCALE_ROUNDS as u64,
        ));
        let started = Instant::now();
        fake.set_status(&status(false));
        loop {
            if !present(&node) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never retracted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        gone.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    summary(
        "tailscale: offline peer's address gone from the book",
        &mut gone,
    );
}
