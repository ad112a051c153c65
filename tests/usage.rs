//! Usage and failure codes across two real brokers: a claude-style agent
//! (the repository's test agent under the name `claude`, in its structured
//! stream-json mode, which reports tokens and cost like the real CLI) runs
//! on beta; flights mentioned on alpha record the agent's usage on both
//! sides, `scout flights ID` on alpha shows it, `scout usage` on alpha
//! totals beta's flights, and the codes of failed turns (the CLI failing
//! the turn, and the session refusing one for a missing login) reach alpha.

mod common;

use std::path::{Path, PathBuf};

use common::{Node, wait_until};
use serde_json::json;

/// How long one routed turn of the test agent may take: it answers in
/// milliseconds, but a loaded machine starts processes slowly.
const TURN_TIMEOUT_S: &str = "120";

fn test_agent() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_scout")).with_file_name("scout-test-agent");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p scout-test-agent` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// The credential file the test agent's claude persona (and the claude
/// adapter) take as a login, under the broker's HOME.
fn credentials(node: &Node) -> PathBuf {
    node.sandbox
        .path()
        .join(".claude")
        .join(".credentials.json")
}

/// Alpha (the origin) and beta, which runs `@coder`, a claude agent whose
/// program is the test agent linked as `claude`, logged in.
fn two_brokers() -> (Node, Node) {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = Node::setup("beta", &[]);
    let bin = beta.sandbox.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let claude = bin.join("claude");
    std::os::unix::fs::symlink(test_agent(), &claude).unwrap();
    std::fs::create_dir_all(credentials(&beta).parent().unwrap()).unwrap();
    std::fs::write(credentials(&beta), "{}").unwrap();
    let cwd = beta.sandbox.path().display().to_string();
    let add = beta.run(&[
        "agents",
        "add",
        "coder",
        "--cwd",
        &cwd,
        "--workspace",
        "main",
        "--harness",
        "claude",
        "--command",
        claude.to_str().unwrap(),
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    beta.start();
    alpha.wait_for_instance("@coder@beta#main");
    (alpha, beta)
}

/// `scout send … --wait` on `node`; returns the run and the invocation id
/// (from the first line `--json` prints).
fn send_wait(node: &Node, message: &str) -> (common::Run, String) {
    let run = node.run(&[
        "--json",
        "send",
        "@coder",
        message,
        "--wait",
        "--timeout",
        TURN_TIMEOUT_S,
    ]);
    let first = run.stdout.lines().next().unwrap_or_default();
    let submitted: serde_json::Value = serde_json::from_str(first)
        .unwrap_or_else(|err| panic!("no submit line ({err}): {}\n{}", run.stdout, run.stderr));
    let id = submitted["invocation_id"].as_str().expect("id").to_owned();
    (run, id)
}

/// What the test agent's claude persona reports for every turn.
fn one_turn() -> serde_json::Value {
    json!({
        "input_tokens": 113,
        "output_tokens": 7,
        "cached_tokens": 100,
        "cost_micro_usd": 4200
    })
}

#[test]
fn usage_and_failure_codes_travel_back_to_the_origin_and_add_up() {
    let (alpha, beta) = two_brokers();

    // A completed turn: its usage is on beta's flight and alpha's delivery.
    let (run, completed) = send_wait(&alpha, "hello");
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let at_alpha = alpha.get(&format!("/v1/invocations/{completed}"));
    assert_eq!(at_alpha["delivery"]["state"], "completed", "{at_alpha}");
    assert_eq!(at_alpha["delivery"]["usage"], one_turn(), "{at_alpha}");
    let at_beta = beta.get(&format!("/v1/invocations/{completed}"));
    assert_eq!(at_beta["flight"]["state"], "completed", "{at_beta}");
    assert_eq!(at_beta["flight"]["usage"], one_turn(), "{at_beta}");
    let shown = alpha.run(&["flights", &completed]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown
            .stdout
            .contains("usage    113 in (100 cached), 7 out, $0.0042"),
        "{}",
        shown.stdout
    );

    // The CLI fails the turn: a harness error with its code, and the
    // tokens the failed turn used.
    let (run, failed) = send_wait(&alpha, "fail");
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr
            .contains("failed (harness_error, HARNESS_ERROR): the model refused"),
        "{}",
        run.stderr
    );
    let at_alpha = alpha.get(&format!("/v1/invocations/{failed}"));
    assert_eq!(at_alpha["delivery"]["failure_code"], "HARNESS_ERROR");
    assert_eq!(at_alpha["delivery"]["usage"], one_turn(), "{at_alpha}");

    // Logged out: the session refuses the turn before it starts, and the
    // person on alpha reads AUTH_REQUIRED with the CLI's hint.
    std::fs::remove_file(credentials(&beta)).unwrap();
    let (run, refused) = send_wait(&alpha, "hello again");
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr
            .contains("failed (harness_error, AUTH_REQUIRED): ")
            && run.stderr.contains("is not logged in")
            && run.stderr.contains("claude auth"),
        "{}",
        run.stderr
    );
    let at_alpha = alpha.get(&format!("/v1/invocations/{refused}"));
    assert_eq!(at_alpha["delivery"]["failure_code"], "AUTH_REQUIRED");
    assert_eq!(at_alpha["delivery"]["failure_reason"], "harness_error");
    let at_beta = beta.get(&format!("/v1/invocations/{refused}"));
    assert_eq!(at_beta["flight"]["failure_code"], "AUTH_REQUIRED");
    let shown = alpha.run(&["flights", &refused]);
    assert!(
        shown
            .stdout
            .contains("failed   harness_error (AUTH_REQUIRED): "),
        "{}",
        shown.stdout
    );
    let listed = alpha.get("/v1/flights");
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["invocation_id"] == refused.as_str())
        .expect("listed");
    assert_eq!(row["failure_code"], "AUTH_REQUIRED");
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["invocation_id"] == completed.as_str())
        .expect("listed");
    assert_eq!(row["usage"], one_turn(), "{row}");

    // Alpha totals beta's three flights (two failed; the refused one used
    // nothing), and nobody is missing.
    let by_node = alpha.run(&["--json", "usage", "--since", "1d", "--by", "node"]);
    assert_eq!(by_node.code, 0, "{}", by_node.stderr);
    let totals = by_node.json();
    let beta_row = totals["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["node_id"] == beta.node_id().as_str())
        .unwrap_or_else(|| panic!("no row of beta: {totals}"));
    assert_eq!(beta_row["key"], "beta");
    assert_eq!(beta_row["flights"], 3, "{totals}");
    assert_eq!(beta_row["failed"], 2, "{totals}");
    assert_eq!(
        beta_row["usage"],
        json!({
            "input_tokens": 226,
            "output_tokens": 14,
            "cached_tokens": 200,
            "cost_micro_usd": 8400
        })
    );
    assert_eq!(totals["total"]["flights"], 3, "{totals}");
    assert_eq!(totals["missing"], json!([]), "{totals}");
    let table = alpha.run(&["usage", "--by", "agent"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("@coder@beta#main"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("$0.0084"), "{}", table.stdout);

    // A window that is no duration is a usage error, named by its code.
    let bad = alpha.run(&["usage", "--since", "1w"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("`1w` is not a duration"),
        "{}",
        bad.stderr
    );
}

/// A member that stopped is listed as missing, not silently left out.
#[test]
fn a_member_that_does_not_answer_is_listed_as_missing() {
    let (alpha, mut beta) = two_brokers();
    let (run, _) = send_wait(&alpha, "hello");
    assert_eq!(run.code, 0, "{}", run.stderr);
    beta.broker.as_mut().unwrap().stop_with(libc::SIGTERM);
    let totals = wait_until("alpha to see beta gone", || {
        let totals = alpha.get("/v1/usage?since=1d&by=node");
        (!totals["missing"].as_array().unwrap().is_empty()).then_some(totals)
    });
    let missing = &totals["missing"][0];
    assert_eq!(missing["name"], "beta", "{totals}");
    assert!(missing["reason"].is_string(), "{totals}");
    assert!(
        totals["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["key"] != "beta"),
        "{totals}"
    );
}
