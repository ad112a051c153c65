//! Approvals across a mesh of ten real brokers on loopback (real QUIC,
//! real SQLite files, each broker its own process):
//!
//! - visible: from the owner committing a new approval (`POST
//!   /v1/approvals` returning) until each member's approval stream
//!   (`GET /v1/approvals/stream`, SSE) shows it pending; per member, and
//!   the slowest member of each sample ("every member");
//! - decided: `POST /v1/approvals/{id}/deny` on another member, which the
//!   owner commits and answers over the mesh, until that call returns
//!   (the decision is back on the owner, committed, when it does), and
//!   until the owner's own stream shows it decided.
//!
//! ```sh
//! cargo bench --bench approvals
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Brokers in the mesh: the issue's figure is for ten.
const BROKERS: usize = 10;

/// Timed approvals.
const SAMPLES: usize = 200;

/// Untimed approvals first (connections and caches warm up).
const WARMUP: usize = 10;

/// How long one approval may take to be seen everywhere before the run
/// gives up: far above any figure, so it only fires on a real failure.
const SEEN_BOUND: Duration = Duration::from_secs(30);

/// One event read from a member's stream: which member, the approval, its
/// state and when it was read.
type Seen = (usize, String, String, Instant);

fn main() {
    let nodes = mesh();
    let (tx, rx) = mpsc::channel::<Seen>();
    for (idx, node) in nodes.iter().enumerate() {
        follow(idx, node, tx.clone());
    }
    let owner = &nodes[0];
    let agent = ureq::AgentBuilder::new().build();
    let mut visible_each = Vec::new();
    let mut visible_all = Vec::new();
    let mut decided_call = Vec::new();
    let mut decided_owner = Vec::new();
    for sample in 0..WARMUP + SAMPLES {
        // Drain what earlier samples left (decisions seen late).
        while rx.try_recv().is_ok() {}
        let asked = post(
            &agent,
            owner,
            "/v1/approvals",
            json!({ "agent": "@bench@n0#main", "action": "bench.sample", "summary": format!("sample {sample}") }),
        );
        let committed = Instant::now();
        let id = asked["id"].as_str().expect("id").to_owned();
        let mut seen = vec![None; BROKERS];
        let deadline = Instant::now() + SEEN_BOUND;
        while seen.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (member, approval, state, at) = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{id} was not seen on every member: {seen:?}"));
            if approval == id && state == "pending" && seen[member].is_none() {
                seen[member] = Some(at.saturating_duration_since(committed));
            }
        }
        // The member that answers takes turns, so every peer answers.
        let answerer = &nodes[1 + sample % (BROKERS - 1)];
        let started = Instant::now();
        let answered = post(
            &agent,
            answerer,
            &format!("/v1/approvals/{id}/deny"),
            json!({}),
        );
        let call = started.elapsed();
        assert_eq!(answered["state"], "denied", "{answered}");
        let on_owner = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (member, approval, state, at) = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{id}'s decision was not seen on its owner"));
            if member == 0 && approval == id && state == "denied" {
                break at.saturating_duration_since(started);
            }
        };
        if sample >= WARMUP {
            let each: Vec<Duration> = seen.iter().skip(1).map(|at| at.unwrap()).collect();
            visible_all.push(*each.iter().max().unwrap());
            visible_each.extend(each);
            decided_call.push(call);
            decided_owner.push(on_owner);
        }
    }
    println!(
        "approvals across {BROKERS} brokers on loopback, {SAMPLES} samples (ms)\n\
         {:<44} {:>8} {:>8} {:>8}",
        "", "p50", "p90", "p99"
    );
    row("visible on one member (each)", &mut visible_each);
    row("visible on every member (slowest)", &mut visible_all);
    row(
        "deny on a member, answered (owner committed)",
        &mut decided_call,
    );
    row(
        "deny on a member, seen on the owner's stream",
        &mut decided_owner,
    );
}

/// Ten brokers, every one joined through the first, all connected.
fn mesh() -> Vec<common::Node> {
    let mut first = common::Node::setup("n0", &[]);
    start_quiet(&mut first);
    let mut nodes = vec![first];
    for idx in 1..BROKERS {
        let mut node = common::Node::setup(&format!("n{idx}"), &[]);
        let joined = node.run(&["mesh", "join", &nodes[0].invite()]);
        assert_eq!(joined.code, 0, "{}", joined.stderr);
        start_quiet(&mut node);
        nodes.push(node);
    }
    common::wait_until("every broker connected to every other", || {
        nodes
            .iter()
            .all(|node| node.peers_in("connected").len() == BROKERS - 1)
            .then_some(())
    });
    nodes
}

fn start_quiet(node: &mut common::Node) {
    let mut command = node.sandbox.scout();
    command.env("LOG_LEVEL", "warn");
    node.broker = Some(common::BrokerProcess::start_command(command));
}

/// Reads member `idx`'s approval stream on a thread, sending each event.
fn follow(idx: usize, node: &common::Node, tx: mpsc::Sender<Seen>) {
    let url = format!("{}/v1/approvals/stream", node.broker().http_base());
    let token = node.sandbox.token();
    std::thread::spawn(move || {
        let response = ureq::get(&url)
            .set("Authorization", &format!("Bearer {token}"))
            .set("Accept", "text/event-stream")
            .call()
            .expect("stream");
        let reader = BufReader::new(response.into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let at = Instant::now();
            let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            let id = event["id"].as_str().unwrap_or_default().to_owned();
            let state = event["state"].as_str().unwrap_or_default().to_owned();
            if tx.send((idx, id, state, at)).is_err() {
                return;
            }
        }
    });
}

fn post(agent: &ureq::Agent, node: &common::Node, path: &str, body: Value) -> Value {
    let url = format!("{}{path}", node.broker().http_base());
    agent
        .post(&url)
        .set("Authorization", &format!("Bearer {}", node.sandbox.token()))
        .send_json(body)
        .unwrap_or_else(|err| panic!("POST {url}: {err}"))
        .into_json()
        .expect("json")
}

fn row(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |pct: usize| {
        let idx = (samples.len() * pct / 100).min(samples.len() - 1);
        samples[idx].as_secs_f64() * 1e3
    };
    println!("{name:<44} {:>8.2} {:>8.2} {:>8.2}", at(50), at(90), at(99));
}
