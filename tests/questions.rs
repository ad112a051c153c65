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
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// `method path` on `node` with `token` and `body`: status and JSON.
fn call(node: &Node, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    node.api(method, path, token, (method != "GET").then_some(body))
}

/// Adds `@asker` to `node`: a bash loop at a `ready>` prompt that writes
/// its `SCOUT_TOKEN` to `token.txt`, and for a line starting with `ask`
/// asks `Proceed? [y/N]` and creates a file named after the line only on
/// `y`; for a line starting with `hurry` it asks `Hurry? [y/N]` and
/// moves on by itself after a few seconds. Where its files go.
fn add_asker(node: &Node) -> PathBuf {
    let dir = node.sandbox.path().join("out");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "printf 'ready> '; while IFS= read -r line; do \
           printf '%s' \"$SCOUT_TOKEN\" > {dir}/token.tmp; mv {dir}/token.tmp {dir}/token.txt; \
           case \"$line\" in ask*) printf 'Proceed? [y/N] '; IFS= read -r answer; \
             if [ \"$answer\" = y ]; then echo yes > {dir}/\"$line\"; fi;; \
             hurry*) printf 'Hurry? [y/N] '; IFS= read -r -t 5 answer || echo;; esac; \
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
    wait_until(
        &format!("the question of {invocation} on {}", node.name),
        || {
            node.get("/v1/approvals")["approvals"]
                .as_array()?
                .iter()
                .find(|approval| approval["invocation"] == invocation)
                .cloned()
        },
    )
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
    // The person reads the question with what led to it on the terminal.
    assert_eq!(
        asked["summary"], "ready> ask-one\nProceed? [y/N]",
        "{asked}"
    );
    assert_eq!(asked["node"], "beta", "{asked}");
    assert_eq!(asked["agent"], "@asker@beta#main", "{asked}");
    assert_eq!(asked["state"], "pending", "{asked}");
    // The flight waits for the person meanwhile.
    wait_until("the flight to wait for the answer", || {
        (flight_state(&beta, &first).as_deref() == Some("waiting")).then_some(())
    });
    let id = asked["id"].as_str().unwrap().to_owned();
    // No standing rule answers a terminal's dialogs, here or from a peer.
    for (node, token) in [
        (&alpha, alpha.sandbox.token()),
        (&beta, beta.sandbox.token()),
    ] {
        let (status, refused) = call(
            node,
            "POST",
            &format!("/v1/approvals/{id}/approve"),
            &token,
            json!({ "always": true }),
        );
        assert_eq!(status, 400, "{refused}");
        assert_eq!(refused["error"]["code"], "ALWAYS_NOT_ALLOWED", "{refused}");
    }
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

    // The question leaves the screen unanswered (the program moved on, as
    // when someone answers in the terminal): the request is withdrawn.
    let third = send(&beta, "hurry");
    let asked = question_for(&alpha, &third);
    assert!(
        asked["summary"]
            .as_str()
            .unwrap()
            .ends_with("ready> hurry\nHurry? [y/N]"),
        "{asked}"
    );
    let id = asked["id"].as_str().unwrap().to_owned();
    let withdrawn = wait_until("the request to be withdrawn", || {
        beta.get("/v1/approvals")["approvals"]
            .as_array()?
            .iter()
            .find(|approval| approval["id"] == id.as_str() && approval["state"] == "expired")
            .cloned()
    });
    assert_eq!(withdrawn["decided_by"], "terminal", "{withdrawn}");
    wait_until("the flight to complete", || {
        (flight_state(&beta, &third).as_deref() == Some("completed")).then_some(())
    });
    let (status, late) = call(
        &alpha,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        &alpha.sandbox.token(),
        json!({}),
    );
    assert_eq!(
        status, 409,
        "an answer after the terminal's is refused: {late}"
    );
}

/// A terminal client of `node`'s session of `@asker`.
fn terminal(node: &Node) -> tungstenite::WebSocket<MaybeTlsStream<std::net::TcpStream>> {
    let agents = node.get("/agents");
    let id = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|agent| agent["name"].as_str().unwrap_or("").starts_with("@asker@"))
        .and_then(|agent| agent["id"].as_str())
        .unwrap_or_else(|| panic!("no session of @asker: {agents}"))
        .to_owned();
    let url = format!(
        "{}/ws/agents/{id}/terminal",
        node.broker().http_base().replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", node.sandbox.token()).parse().unwrap(),
    );
    let (ws, _) = tungstenite::connect(request).expect("terminal");
    ws
}

#[test]
fn a_person_typing_in_the_terminal_takes_the_question() {
    let mut node = Node::setup("solo", &[]);
    let dir = add_asker(&node);
    node.start();
    let invocation = send(&node, "ask-typed");
    let asked = question_for(&node, &invocation);
    let id = asked["id"].as_str().unwrap().to_owned();
    assert_eq!(asked["state"], "pending", "{asked}");
    // A person types into the terminal (not yet an answer): the question
    // is theirs, and the mesh's request is withdrawn.
    let mut ws = terminal(&node);
    ws.send(Message::text("x")).unwrap();
    let withdrawn = wait_until("the request to be withdrawn", || {
        node.get("/v1/approvals")["approvals"]
            .as_array()?
            .iter()
            .find(|approval| approval["id"] == id.as_str() && approval["state"] == "expired")
            .cloned()
    });
    assert_eq!(withdrawn["decided_by"], "terminal", "{withdrawn}");
    let (status, late) = call(
        &node,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        &node.sandbox.token(),
        json!({}),
    );
    assert_eq!(status, 409, "{late}");
    // The person finishes their answer (`x`, not `y`): nothing is written.
    ws.send(Message::text("\r")).unwrap();
    wait_until("the flight to complete", || {
        (flight_state(&node, &invocation).as_deref() == Some("completed")).then_some(())
    });
    assert!(!dir.join("ask-typed").exists());
}

#[test]
fn a_question_nobody_can_be_asked_pauses_the_turn() {
    let mut node = Node::setup("solo", &[]);
    add_asker(&node);
    node.start();
    // The agent has as many approvals waiting as it may: its terminal's
    // question cannot be asked of anyone.
    let mut filled = 0;
    loop {
        let (status, body) = call(
            &node,
            "POST",
            "/v1/approvals",
            &node.sandbox.token(),
            json!({ "action": "tool.Bash", "summary": format!("step {filled}"), "agent": "@asker@solo#main" }),
        );
        if status == 429 {
            assert_eq!(body["error"]["code"], "TOO_MANY_APPROVALS", "{body}");
            break;
        }
        assert_eq!(status, 201, "{body}");
        filled += 1;
        assert!(filled <= 64, "the pending limit never held");
    }
    // The turn pauses at the question as it does without a broker: the
    // flight ends with the question in its answer.
    let invocation = send(&node, "ask-full");
    let flight = wait_until("the flight to end at the question", || {
        let (status, body) = call(
            &node,
            "GET",
            &format!("/v1/invocations/{invocation}"),
            &node.sandbox.token(),
            json!({}),
        );
        (status == 200 && body["flight"]["state"] == "completed").then_some(body)
    });
    assert!(
        flight
            .to_string()
            .contains("the agent asks: Proceed? [y/N]"),
        "{flight}"
    );
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

/// The agent asks for an operator token: the approval id.
fn agent_asks_for_token(node: &Node, agent_token: &str) -> String {
    let (status, body) = call(
        node,
        "POST",
        "/v1/tokens",
        agent_token,
        json!({ "scope": "operator", "name": "deploy" }),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "approval_required", "{body}");
    assert_eq!(body["approval"]["action"], "token.create", "{body}");
    assert_eq!(body["approval"]["agent"], "@asker@solo#main", "{body}");
    assert!(body.get("token").is_none(), "{body}");
    let id = body["approval"]["id"].as_str().unwrap().to_owned();
    // No ttl asked: an hour, shown to the person in their units.
    assert!(
        body["approval"]["summary"]
            .as_str()
            .unwrap()
            .contains("for 1 h)"),
        "{body}"
    );
    assert!(
        body["pickup"]
            .as_str()
            .unwrap()
            .contains(&format!("POST /v1/approvals/{id}/token")),
        "{body}"
    );
    id
}

/// `POST /v1/approvals/{id}/token` with `token`.
fn pick_up(node: &Node, id: &str, token: &str) -> (u16, Value) {
    call(
        node,
        "POST",
        &format!("/v1/approvals/{id}/token"),
        token,
        json!({}),
    )
}

#[test]
fn an_agent_gets_an_operator_token_only_once_and_only_if_approved() {
    let mut node = Node::setup("solo", &[]);
    let dir = add_asker(&node);
    node.start();
    let run = node.run(&["send", "@asker", "hello", "--wait", "--timeout", "60"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let agent_token = wait_until("the agent to write its credential", || {
        std::fs::read_to_string(dir.join("token.txt"))
            .ok()
            .filter(|token| !token.is_empty())
    });
    let operator = node.sandbox.token();
    // The agent's own credential cannot reach operator routes.
    assert_eq!(
        call(&node, "GET", "/v1/mesh", &agent_token, json!({})).0,
        403
    );

    // Approved: the agent that asked picks the token up, once.
    let id = agent_asks_for_token(&node, &agent_token);
    let (status, pending) = call(
        &node,
        "GET",
        &format!("/v1/approvals/{id}"),
        &agent_token,
        json!({}),
    );
    assert_eq!(status, 200, "{pending}");
    assert_eq!(pending["state"], "pending", "{pending}");
    assert!(pending.get("token").is_none(), "{pending}");
    let (status, early) = pick_up(&node, &id, &agent_token);
    assert_eq!(status, 409, "{early}");
    assert_eq!(early["error"]["code"], "APPROVAL_NOT_APPROVED", "{early}");
    answer(&node, &id, "approve");
    // The operator sees the decision, never a secret.
    let (_, seen) = call(
        &node,
        "GET",
        &format!("/v1/approvals/{id}"),
        &operator,
        json!({}),
    );
    assert!(seen.get("token").is_none(), "{seen}");
    // Reading and waiting never hand the token over.
    let (status, waited) = call(
        &node,
        "GET",
        &format!("/v1/approvals/{id}/wait?timeout_secs=60"),
        &agent_token,
        json!({}),
    );
    assert_eq!(status, 200, "{waited}");
    assert_eq!(waited["state"], "approved", "{waited}");
    assert!(waited.get("token").is_none(), "{waited}");
    // Only the agent that asked picks it up; the operator cannot.
    let (status, refused) = pick_up(&node, &id, &operator);
    assert_eq!(status, 403, "{refused}");
    let (status, picked) = pick_up(&node, &id, &agent_token);
    assert_eq!(status, 200, "{picked}");
    assert_eq!(picked["state"], "approved", "{picked}");
    assert_eq!(picked["token"]["scope"], "operator", "{picked}");
    let secret = picked["token"]["token"]
        .as_str()
        .expect("secret")
        .to_owned();
    let token_id = picked["token"]["id"].as_str().expect("token id").to_owned();
    let (status, mesh) = call(&node, "GET", "/v1/mesh", &secret, json!({}));
    assert_eq!(
        status, 200,
        "the picked-up token has the operator scope: {mesh}"
    );
    let expires = picked["token"]["expires_at_ms"].as_i64().expect("expiry");
    let lasts = expires - picked["created_unix_ms"].as_i64().unwrap();
    assert!(
        lasts > 0 && lasts <= 2 * 3600 * 1000,
        "an hour's token: {picked}"
    );
    let (status, again) = pick_up(&node, &id, &agent_token);
    assert_eq!(status, 410, "{again}");
    assert_eq!(again["error"]["code"], "TOKEN_ALREADY_HANDED", "{again}");
    // The token's making is audited, naming the approval and the agent.
    let made = common::store::audit_actions(&node.sandbox.home(), &token_id);
    assert!(
        made.iter().any(|(actor, action)| action == "token_create"
            && actor.contains(&id)
            && actor.contains("@asker@solo#main")),
        "{made:?}"
    );
    let decided = common::store::audit_actions(&node.sandbox.home(), &id);
    assert!(
        decided
            .iter()
            .any(|(_, action)| action == "approval_approved"),
        "{decided:?}"
    );

    // Denied: no token.
    let denied = agent_asks_for_token(&node, &agent_token);
    answer(&node, &denied, "deny");
    let (status, view) = pick_up(&node, &denied, &agent_token);
    assert_eq!(status, 409, "{view}");
    assert_eq!(view["error"]["code"], "APPROVAL_NOT_APPROVED", "{view}");

    // A ttl past the cap is cut to a day, and the person reads so.
    let (status, body) = call(
        &node,
        "POST",
        "/v1/tokens",
        &agent_token,
        json!({ "scope": "operator", "ttl_ms": 30u64 * 24 * 3600 * 1000 }),
    );
    assert_eq!(status, 202, "{body}");
    assert!(
        body["approval"]["summary"]
            .as_str()
            .unwrap()
            .contains("for 1 d)"),
        "{body}"
    );
    let tokens = node.get("/v1/tokens");
    let operator_tokens = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|token| token["kind"] == "token" && token["scope"] == "operator")
        .count();
    assert_eq!(operator_tokens, 1, "{tokens}");
}
