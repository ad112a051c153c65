//! A person in the loop of what agents do on their terminals and ask of
//! the broker, with real brokers and real terminals: a command agent on
//! `beta` runs a script that asks `Proceed? [y/N]`; the question becomes
//! an approval listed on `alpha`, the flight waits meanwhile, and the
//! answer given on `alpha` is typed into beta's terminal (the script
//! writes its file only on `y`). An agent asking for an operator token
//! gets an approval and picks the approved token up once. A deadline set
//! in `settings.json` expires an unanswered request.

mod common;

use std::path::{Path, PathBuf};

use common::{Node, wait_until};
use serde_json::{Value, json};

/// `method path` on `node` with `token` and `body`: status and JSON.
fn call(node: &Node, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    let url = format!("{}{path}", node.broker().http_base());
    let request = ureq::request(method, &url).set("Authorization", &format!("Bearer {token}"));
    let response = if method == "GET" {
        request.call()
    } else {
        request.send_json(body)
    };
    match response {
        Ok(response) => {
            let status = response.status();
            (status, response.into_json().unwrap_or_default())
        }
        Err(ureq::Error::Status(status, response)) => {
            (status, response.into_json().unwrap_or_default())
        }
        Err(err) => panic!("{method} {url}: {err}"),
    }
}

/// Adds `@asker` to `node`: a bash loop at a `ready>` prompt that writes
/// its `SCOUT_TOKEN` to `token.txt`, and for a line starting with `ask`
/// asks `Proceed? [y/N]` and creates a file named after the line only on
/// `y`. Where its files go.
fn add_asker(node: &Node) -> PathBuf {
    let dir = node.sandbox.path().join("out");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "printf 'ready> '; while IFS= read -r line; do \
           printf '%s' \"$SCOUT_TOKEN\" > {dir}/token.tmp; mv {dir}/token.tmp {dir}/token.txt; \
           case \"$line\" in ask*) printf 'Proceed? [y/N] '; IFS= read -r answer; \
             if [ \"$answer\" = y ]; then echo yes > {dir}/\"$line\"; fi;; esac; \
           echo \"done: $line\"; printf 'ready> '; done",
        dir = dir.display()
    );
    node.add_prompted_agent("asker", &["bash", "-c", &script]);
    dir
}

fn set_settings(home: &Path, field: &str, value: Value) {
    let path = home.join("settings.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("settings")).expect("json");
    settings[field] = value;
    std::fs::write(&path, serde_json::to_string_pretty(&settings).unwrap()).expect("write");
}

fn send(node: &Node, message: &str) -> String {
    let run = node.run(&["--json", "send", "@asker", message, "--timeout", "300"]);
    assert_eq!(run.code, 0, "send: {}", run.stderr);
    run.json()["invocation_id"]
        .as_str()
        .expect("invocation id")
        .to_owned()
}

fn flight_state(node: &Node, id: &str) -> Option<String> {
    let (status, body) = call(
        node,
        "GET",
        &format!("/v1/invocations/{id}"),
        &node.sandbox.token(),
        json!({}),
    );
    (status == 200)
        .then(|| body["flight"]["state"].as_str().map(str::to_owned))
        .flatten()
}

/// The approval asked in invocation `invocation`, once `node` lists it.
fn question_for(node: &Node, invocation: &str) -> Value {
    wait_until(&format!("the question of {invocation} on {}", node.name), || {
        node.get("/v1/approvals")["approvals"]
            .as_array()?
            .iter()
            .find(|approval| approval["invocation"] == invocation)
            .cloned()
    })
}

fn answer(node: &Node, id: &str, verb: &str) {
    let (status, body) = call(
        node,
        "POST",
        &format!("/v1/approvals/{id}/{verb}"),
        &node.sandbox.token(),
        json!({}),
    );
    assert_eq!(status, 200, "{verb}: {body}");
}

#[test]
fn a_terminal_question_is_answered_from_another_broker() {
    let mut beta = Node::setup("beta", &[]);
    let dir = add_asker(&beta);
    beta.start();
    let mut alpha = Node::setup("alpha", &[]);
    let joined = alpha.run(&["mesh", "join", &beta.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    alpha.start();
    wait_until("alpha and beta to see each other connected", || {
        (alpha.peers_in("connected") == ["beta"] && beta.peers_in("connected") == ["alpha"])
            .then_some(())
    });

    // Approved on alpha: `y` reaches the script, the flight completes.
    let first = send(&beta, "ask-one");
    let asked = question_for(&alpha, &first);
    assert_eq!(asked["action"], "terminal.question", "{asked}");
    assert_eq!(asked["summary"], "Proceed? [y/N]", "{asked}");
    assert_eq!(asked["node"], "beta", "{asked}");
    assert_eq!(asked["agent"], "@asker@beta#main", "{asked}");
    assert_eq!(asked["state"], "pending", "{asked}");
    // The flight waits for the person meanwhile.
    wait_until("the flight to wait for the answer", || {
        (flight_state(&beta, &first).as_deref() == Some("waiting")).then_some(())
    });
    let id = asked["id"].as_str().unwrap().to_owned();
    answer(&alpha, &id, "approve");
    wait_until("the approved flight to complete", || {
        (flight_state(&beta, &first).as_deref() == Some("completed")).then_some(())
    });
    assert!(dir.join("ask-one").exists());
    // One request for the one question, however often the screen redrew.
    let asked_for_first = beta.get("/v1/approvals")["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|approval| approval["invocation"] == first.as_str())
        .count();
    assert_eq!(asked_for_first, 1);

    // Denied on alpha: `n` reaches the script, which writes nothing.
    let second = send(&beta, "ask-two");
    let asked = question_for(&alpha, &second);
    let id = asked["id"].as_str().unwrap().to_owned();
    answer(&alpha, &id, "deny");
    wait_until("the denied flight to complete", || {
        (flight_state(&beta, &second).as_deref() == Some("completed")).then_some(())
    });
    assert!(!dir.join("ask-two").exists());
}

#[test]
fn the_settings_deadline_expires_unanswered_requests() {
    let mut node = Node::setup("solo", &[]);
    set_settings(
        &node.sandbox.home(),
        "approvals",
        json!({ "deadline_secs": 2 }),
    );
    node.start();
    let (status, asked) = call(
        &node,
        "POST",
        "/v1/approvals",
        &node.sandbox.token(),
        json!({ "action": "tool.Bash", "summary": "rm -rf build", "agent": "@someone" }),
    );
    assert_eq!(status, 201, "{asked}");
    let id = asked["id"].as_str().unwrap().to_owned();
    let expired = wait_until("the request to expire", || {
        let (_, view) = call(
            &node,
            "GET",
            &format!("/v1/approvals/{id}/wait?timeout_secs=30"),
            &node.sandbox.token(),
            json!({}),
        );
        (view["state"] == "expired").then_some(view)
    });
    assert_eq!(expired["decided_by"], "deadline", "{expired}");

    // A setting out of bounds keeps the broker from starting, naming it.
    let bad = Node::setup("bad", &[]);
    set_settings(
        &bad.sandbox.home(),
        "approvals",
        json!({ "deadline_secs": 0 }),
    );
    let up = bad.run(&["up"]);
    assert_ne!(up.code, 0);
    assert!(
        up.stderr.contains("approvals.deadline_secs"),
        "{}",
        up.stderr
    );
}
