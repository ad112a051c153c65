//! End-to-end routing with real broker processes on loopback and real PTY
//! agents: a mention on one broker runs on another and the answer comes
//! back; the owner killed with work queued and in flight loses and repeats
//! nothing; an unreachable owner ends in a clear timeout; cancelling a
//! running work order stops the agent's process; a mention that matches
//! nothing lists the nearest names; a terminal turn running when its
//! owner broker is killed finishes after the restart, once.

mod common;

use std::path::{Path, PathBuf};

use common::{Node, wait_until};

/// Two brokers in one mesh: alpha (the origin) and beta (the owner of
/// `@worker`, a bash loop that logs every line it gets to `log`, waits
/// `delay` seconds, then answers).
fn two_brokers(delay: &str) -> (Node, Node, PathBuf) {
    two_brokers_answering(&format!("sleep {delay}; echo \"done: $line\""))
}

/// [`two_brokers`] with `answer`, shell run for each `$line`, as the
/// worker's answer.
fn two_brokers_answering(answer: &str) -> (Node, Node, PathBuf) {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = Node::setup("beta", &[]);
    let log = beta.sandbox.path().join("worker.log");
    let script = format!(
        "printf 'ready> '; while IFS= read -r line; do echo \"$line\" >> {}; {answer}; printf 'ready> '; done",
        log.display()
    );
    beta.add_prompted_agent("worker", &["bash", "-c", &script]);
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    beta.start();
    alpha.wait_for_instance("@worker@beta#main");
    (alpha, beta, log)
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn beta_flight_reason(node: &Node, id: &str) -> serde_json::Value {
    let status = node.get(&format!("/v1/invocations/{id}"));
    assert!(status["flight"]["resolve_reason"].is_string(), "{status}");
    status["flight"]["resolve_reason"].clone()
}

fn delivery_state(node: &Node, id: &str) -> Option<String> {
    let status = node.get(&format!("/v1/invocations/{id}"));
    status["delivery"]["state"].as_str().map(str::to_owned)
}

fn submit(node: &Node, target: &str, message: &str, timeout_s: u64) -> String {
    let run = node.run(&[
        "--json",
        "send",
        target,
        message,
        "--timeout",
        &timeout_s.to_string(),
    ]);
    assert_eq!(run.code, 0, "send: {}", run.stderr);
    run.json()["invocation_id"].as_str().expect("id").to_owned()
}

#[test]
fn a_mention_runs_on_the_owner_and_the_answer_comes_back() {
    let (alpha, beta, log) = two_brokers("0");
    let run = alpha.run(&[
        "send",
        "@worker",
        "hello from alpha",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains("done: hello from alpha"),
        "{}",
        run.stdout
    );
    assert_eq!(log_lines(&log), ["hello from alpha"]);

    // The exchange is in a conversation at the origin.
    let flights = alpha.get("/v1/flights");
    let id = flights[0]["invocation_id"].as_str().unwrap().to_owned();
    let status = alpha.get(&format!("/v1/invocations/{id}"));
    assert_eq!(status["delivery"]["state"], "completed");
    assert_eq!(status["delivery"]["target"], "@worker@beta#main");
    // Why that instance, at the origin as at the owner.
    assert_eq!(
        status["delivery"]["resolve_reason"],
        beta_flight_reason(&beta, &id)
    );
    let conversation = status["invocation"]["conversation_id"].as_str().unwrap();
    let shown = alpha.run(&["conversations", "show", conversation]);
    assert!(
        shown.stdout.contains("hello from alpha") && shown.stdout.contains("@worker@beta#main"),
        "{}",
        shown.stdout
    );
}

#[test]
fn killing_the_owner_loses_and_repeats_nothing() {
    let (alpha, mut beta, log) = two_brokers("2");
    let ids: Vec<String> = (1..=3)
        .map(|n| submit(&alpha, "@worker", &format!("job-{n}"), 120))
        .collect();
    wait_until("job-1 to be running on beta", || {
        (log_lines(&log) == ["job-1"]).then_some(())
    });

    let mut broker = beta.broker.take().unwrap();
    assert_ne!(broker.stop_with(libc::SIGKILL), 0);
    drop(broker);
    beta.start();

    for id in &ids {
        wait_until(&format!("invocation {id} to end"), || {
            delivery_state(&alpha, id)
                .filter(|state| matches!(state.as_str(), "completed" | "failed" | "cancelled"))
        });
    }
    let states: Vec<String> = ids
        .iter()
        .map(|id| delivery_state(&alpha, id).unwrap())
        .collect();
    // The flight that was running when its broker died goes on in the
    // agent's held terminal and finishes after the restart; it is never
    // run again. The queued ones run after it.
    assert_eq!(states, ["completed", "completed", "completed"]);
    let first = alpha.get(&format!("/v1/invocations/{}", ids[0]));
    assert!(
        first["delivery"]["result"]
            .as_str()
            .unwrap_or_default()
            .contains("done: job-1"),
        "{first}"
    );
    let mut lines = log_lines(&log);
    lines.sort();
    assert_eq!(
        lines,
        ["job-1", "job-2", "job-3"],
        "each job reached the agent exactly once"
    );
    let second = alpha.get(&format!("/v1/invocations/{}", ids[1]));
    assert!(
        second["delivery"]["result"]
            .as_str()
            .unwrap_or_default()
            .contains("done: job-2"),
        "{second}"
    );
}

#[test]
fn an_unreachable_owner_ends_in_a_timeout() {
    let (alpha, mut beta, log) = two_brokers("0");
    let mut broker = beta.broker.take().unwrap();
    assert_ne!(broker.stop_with(libc::SIGKILL), 0);
    drop(broker);
    wait_until("alpha to notice", || {
        alpha.peers_in("connected").is_empty().then_some(())
    });
    let run = alpha.run(&["send", "@worker", "anyone?", "--wait", "--timeout", "2"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("timeout"), "{}", run.stderr);
    assert!(log_lines(&log).is_empty());
    let flights = alpha.get("/v1/flights");
    let id = flights[0]["invocation_id"].as_str().unwrap();
    let status = alpha.get(&format!("/v1/invocations/{id}"));
    assert_eq!(status["delivery"]["failure_reason"], "timeout");
    assert!(
        status["delivery"]["attempts"]
            .as_array()
            .is_some_and(|attempts| !attempts.is_empty()),
        "{status}"
    );
}

#[test]
fn cancel_stops_the_running_agent() {
    let (alpha, beta, log) = two_brokers("30");
    let id = submit(&alpha, "@worker", "long job", 120);
    wait_until("the job to run", || {
        (log_lines(&log) == ["long job"]).then_some(())
    });
    let sessions = beta.get("/agents");
    let pid = sessions
        .as_array()
        .or(sessions["agents"].as_array())
        .and_then(|list| list.first().cloned())
        .and_then(|agent| agent["pid"].as_u64())
        .expect("a running session");
    let cancelled = ureq::post(&format!(
        "{}/v1/invocations/{id}/cancel",
        alpha.broker().http_base()
    ))
    .set(
        "Authorization",
        &format!("Bearer {}", alpha.sandbox.token()),
    )
    .send_json(serde_json::json!({}))
    .unwrap();
    assert_eq!(cancelled.status(), 200);
    assert_eq!(delivery_state(&alpha, &id).as_deref(), Some("cancelled"));
    wait_until("the agent's process to be gone", || {
        (!Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.contains(") Z ")))
        .then_some(())
    });
}

#[test]
fn a_mention_that_matches_nothing_lists_the_nearest_names() {
    let (alpha, _beta, _log) = two_brokers("0");
    let run = alpha.run(&["send", "@wroker", "hi"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("AGENT_NOT_FOUND"), "{}", run.stderr);
    assert!(run.stderr.contains("@worker@beta#main"), "{}", run.stderr);
    let bad = alpha.run(&["send", "@Bad_Name", "hi"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[test]
fn cancelling_a_running_work_order_stops_the_agent() {
    let (alpha, beta, log) = two_brokers("30");
    let run = alpha.run(&[
        "--json",
        "work-orders",
        "run-now",
        "@worker",
        "long job",
        "--timeout",
        "120",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let order = run.json();
    assert_eq!(order["state"], "running", "{order}");
    let order_id = order["work_order_id"].as_str().unwrap().to_owned();
    let id = order["invocation_id"].as_str().unwrap().to_owned();
    wait_until("the job to run", || {
        (log_lines(&log) == ["long job"]).then_some(())
    });
    let sessions = beta.get("/agents");
    let pid = sessions
        .as_array()
        .or(sessions["agents"].as_array())
        .and_then(|list| list.first().cloned())
        .and_then(|agent| agent["pid"].as_u64())
        .expect("a running session");

    let cancelled = alpha.run(&["--json", "work-orders", "cancel", &order_id]);
    assert_eq!(cancelled.code, 0, "{}", cancelled.stderr);
    assert_eq!(cancelled.json()["state"], "cancelled");
    assert_eq!(delivery_state(&alpha, &id).as_deref(), Some("cancelled"));
    let listed = alpha.run(&["work-orders", "list"]);
    assert!(listed.stdout.contains("cancelled"), "{}", listed.stdout);
    wait_until("the agent's process to be gone", || {
        (!Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.contains(") Z ")))
        .then_some(())
    });

    // A scheduled work order waits, and can be cancelled before it runs.
    let later = alpha.run(&[
        "--json",
        "work-orders",
        "enqueue",
        "@worker",
        "later",
        "--in",
        "1h",
    ]);
    assert_eq!(later.code, 0, "{}", later.stderr);
    assert_eq!(later.json()["state"], "queued");
    let later_id = later.json()["work_order_id"].as_str().unwrap().to_owned();
    let cancelled = alpha.run(&["--json", "work-orders", "cancel", &later_id]);
    assert_eq!(cancelled.json()["state"], "cancelled");
    assert_eq!(log_lines(&log), ["long job"]);
}

#[test]
fn a_work_order_claimed_before_a_crash_runs_once_after_the_restart() {
    use scout::store::work_orders::{NewWorkOrder, WorkOrder, WorkOrderState};
    use scout::store::{Store, StoreOptions};

    let (mut alpha, _beta, log) = two_brokers("0");
    let finished = submit(&alpha, "@worker", "earlier job", 60);
    wait_until("the earlier job to complete", || {
        (delivery_state(&alpha, &finished).as_deref() == Some("completed")).then_some(())
    });
    let mut broker = alpha.broker.take().unwrap();
    assert_ne!(broker.stop_with(libc::SIGKILL), 0);
    drop(broker);

    // What a broker that died between claiming a work order and committing
    // its invocation leaves behind: the order `running`, with the id its
    // invocation was to have, and no such invocation. And one that died
    // after an order's invocation ended, before the order followed it.
    let path = alpha.sandbox.home().join("scout.db");
    let (store, _) = Store::open(&path, StoreOptions::default()).unwrap();
    let followed = finished.clone();
    store
        .write_blocking(move |tx| {
            WorkOrder::create(
                tx,
                &NewWorkOrder {
                    work_order_id: "wo-claimed".into(),
                    target: "@worker".into(),
                    body: "claimed job".into(),
                    owner_node: String::new(),
                    schedule: None,
                    created_at_ms: 1,
                },
            )?;
            WorkOrder::transition(
                tx,
                "wo-claimed",
                WorkOrderState::Running,
                Some("inv-claimed"),
                2,
            )?;
            WorkOrder::create(
                tx,
                &NewWorkOrder {
                    work_order_id: "wo-followed".into(),
                    target: "@worker".into(),
                    body: "earlier job".into(),
                    owner_node: String::new(),
                    schedule: None,
                    created_at_ms: 1,
                },
            )?;
            WorkOrder::transition(
                tx,
                "wo-followed",
                WorkOrderState::Running,
                Some(&followed),
                2,
            )
        })
        .unwrap();
    store.close().unwrap();

    alpha.start();
    wait_until("the claimed work order to complete", || {
        let order = alpha.get("/v1/work-orders/wo-claimed");
        (order["state"] == "completed").then_some(())
    });
    assert_eq!(
        delivery_state(&alpha, "inv-claimed").as_deref(),
        Some("completed")
    );
    assert_eq!(
        alpha.get("/v1/work-orders/wo-followed")["state"],
        "completed"
    );
    assert_eq!(
        log_lines(&log),
        ["earlier job", "claimed job"],
        "each job ran exactly once"
    );
}

/// A ten-second turn of a real program on a terminal, routed from alpha,
/// outlives beta: beta is SIGKILLed while the program streams its lines,
/// started again, and the turn finishes at alpha with every line once and
/// in order, its flight completed once (never failed as interrupted),
/// the program the same process, and the message typed into it once.
#[test]
fn a_running_terminal_turn_outlives_its_owner_broker_and_finishes_once() {
    let (alpha, mut beta, log) =
        two_brokers_answering("for n in $(seq 1 40); do echo \"$line-$n\"; sleep 0.25; done");

    let id = submit(&alpha, "@worker", "line", 120);
    common::wait_until("the program to stream its first lines on beta", || {
        // Beta may not have the flight yet (404).
        let (_, status) = beta.api(
            "GET",
            &format!("/v1/invocations/{id}"),
            &beta.sandbox.token(),
            None,
        );
        status["flight"]["output"]
            .as_str()
            .is_some_and(|output| output.contains("line-3"))
            .then_some(())
    });
    let sessions_before = beta.sessions();
    assert_eq!(sessions_before.len(), 1, "{sessions_before:?}");

    let mut broker = beta.broker.take().unwrap();
    assert_ne!(broker.stop_with(libc::SIGKILL), 0);
    drop(broker);
    beta.start();

    wait_until("the turn to end at alpha", || {
        delivery_state(&alpha, &id)
            .filter(|state| matches!(state.as_str(), "completed" | "failed" | "cancelled"))
    });
    let status = alpha.get(&format!("/v1/invocations/{id}"));
    assert_eq!(status["delivery"]["state"], "completed", "{status}");
    let result = status["delivery"]["result"].as_str().unwrap_or_default();
    let lines: Vec<&str> = result.lines().map(str::trim).collect();
    let expected: Vec<String> = (1..=40).map(|n| format!("line-{n}")).collect();
    assert_eq!(lines, expected, "{status}");

    // Beta's flight: completed, its output whole and not repeated by the
    // carrying on.
    let owner = beta.get(&format!("/v1/invocations/{id}"));
    assert_eq!(owner["flight"]["state"], "completed", "{owner}");
    let output = owner["flight"]["output"].as_str().unwrap_or_default();
    for n in [1, 3, 20, 40] {
        assert_eq!(
            output.matches(&format!("line-{n}\r")).count(),
            1,
            "line-{n} in {output:?}"
        );
    }
    beta.assert_not_reconciled(&id);
    // The same program, given the message once.
    assert_eq!(beta.sessions(), sessions_before);
    assert_eq!(log_lines(&log), ["line"]);
    // The turn's record went once the flight's end was recorded.
    beta.wait_for_no_held_turns();
}
