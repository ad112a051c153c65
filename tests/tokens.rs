//! Scoped tokens end to end: tokens made with `scout tokens create` on a
//! real broker, used over real HTTP, listed, revoked and expired; the
//! secret never reaches the SQLite file.

mod common;

use common::{Node, wait_until};
use serde_json::{Value, json};

/// `method path` on `node`'s API with `token`; the status and JSON body
/// (`Null` when the body is not JSON).
fn call(node: &Node, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    node.api(method, path, token, body)
}

/// `scout --json tokens create ARGS` on `node`: the id and the secret.
fn create(node: &Node, args: &[&str]) -> (String, String) {
    let mut all = vec!["--json", "tokens", "create"];
    all.extend_from_slice(args);
    let run = node.run(&all);
    assert_eq!(run.code, 0, "tokens create {args:?}: {}", run.stderr);
    let created = run.json();
    (
        created["id"].as_str().expect("id").to_owned(),
        created["token"].as_str().expect("token").to_owned(),
    )
}

/// The listed token or session with `id`.
fn listed(node: &Node, id: &str) -> Value {
    let run = node.run(&["--json", "tokens", "list"]);
    assert_eq!(run.code, 0, "tokens list: {}", run.stderr);
    run.json()["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|token| token["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

fn assert_forbidden(answer: (u16, Value), needed: &str) {
    assert_eq!(answer.0, 403, "{answer:?}");
    assert_eq!(answer.1["error"]["code"], "FORBIDDEN_SCOPE", "{answer:?}");
    let message = answer.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("`{needed}`")), "{message}");
}

#[test]
fn each_scope_reaches_only_its_routes_and_revocation_ends_a_token() {
    let mut node = Node::setup("alpha", &[]);
    node.add_bash_agent("fabric");
    node.start();

    // Read: reads, nothing else.
    let (read_id, read) = create(&node, &["--scope", "read", "--name", "dashboard"]);
    assert!(read.starts_with("sct_"), "{read}");
    assert_eq!(call(&node, "GET", "/v1/agents", &read, None).0, 200);
    let send = json!({ "target": "@fabric", "message": "hi" });
    assert_forbidden(
        call(&node, "POST", "/v1/invocations", &read, Some(send.clone())),
        "agent",
    );
    assert_forbidden(
        call(
            &node,
            "POST",
            "/v1/mesh/revoke",
            &read,
            Some(json!({ "node": "x" })),
        ),
        "operator",
    );
    assert_forbidden(call(&node, "GET", "/v1/tokens", &read, None), "operator");

    // Agent: refused without the agent it acts as.
    let refused = node.run(&["tokens", "create", "--scope", "agent"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--agent"), "{}", refused.stderr);
    let (status, body) = call(
        &node,
        "POST",
        "/v1/tokens",
        &node.sandbox.token(),
        Some(json!({ "scope": "agent" })),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_REQUEST");
    let (_, agent) = create(&node, &["--scope", "agent", "--agent", "@fabric"]);
    assert_eq!(call(&node, "GET", "/v1/agents", &agent, None).0, 200);
    assert_forbidden(
        call(&node, "POST", "/agents", &agent, Some(json!({}))),
        "operator",
    );
    assert_forbidden(call(&node, "GET", "/v1/audit", &agent, None), "operator");
    // An agent asking for a token above its own scope asks a person: an
    // approval, and no token (`tests/questions.rs` answers one).
    let (status, asked) = call(
        &node,
        "POST",
        "/v1/tokens",
        &agent,
        Some(json!({ "scope": "operator" })),
    );
    assert_eq!(status, 202, "{asked}");
    assert_eq!(asked["approval"]["action"], "token.create", "{asked}");
    assert!(asked.get("token").is_none(), "{asked}");
    let (status, made) = call(
        &node,
        "POST",
        "/v1/tokens",
        &agent,
        Some(json!({ "scope": "read" })),
    );
    assert_eq!(status, 201, "{made}");

    // Operator: everything.
    let (_, operator) = create(&node, &["--scope", "operator"]);
    assert_eq!(call(&node, "GET", "/v1/tokens", &operator, None).0, 200);
    assert_eq!(call(&node, "GET", "/v1/audit", &operator, None).0, 200);

    // The list shows the read token's scope, name and last use.
    let shown = listed(&node, &read_id);
    assert_eq!(shown["scope"], "read");
    assert_eq!(shown["kind"], "token");
    assert_eq!(shown["name"], "dashboard");
    assert!(shown["last_used_at_ms"].as_i64().is_some(), "{shown}");
    assert!(shown["revoked_at_ms"].is_null(), "{shown}");

    // Revoked: 401, and listed as revoked.
    let revoke = node.run(&["tokens", "revoke", &read_id]);
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    let (status, body) = call(&node, "GET", "/v1/agents", &read, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    assert!(listed(&node, &read_id)["revoked_at_ms"].as_i64().is_some());
    let unknown = node.run(&["tokens", "revoke", "tok_000000000000"]);
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("TOKEN_NOT_FOUND"),
        "{}",
        unknown.stderr
    );

    // The secrets are nowhere in the store's files; their digests are.
    let home = node.sandbox.home();
    for file in ["scout.db", "scout.db-wal"] {
        let Ok(bytes) = std::fs::read(home.join(file)) else {
            continue;
        };
        for secret in [&read, &agent, &operator] {
            let hex = secret.trim_start_matches("sct_");
            assert!(
                !bytes
                    .windows(hex.len())
                    .any(|window| window == hex.as_bytes()),
                "{file} holds a token secret in plain text"
            );
        }
    }
    let connection = rusqlite::Connection::open_with_flags(
        home.join("scout.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open store");
    let digest: String = connection
        .query_row(
            "SELECT digest FROM api_tokens WHERE token_id = ?1",
            [&read_id],
            |row| row.get(0),
        )
        .expect("token row");
    use sha2::Digest;
    let expected: String = sha2::Sha256::digest(read.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(digest, expected);
}

#[test]
fn a_token_stops_working_when_its_ttl_runs_out() {
    let mut node = Node::setup("alpha", &[]);
    node.start();
    let (id, token) = create(&node, &["--scope", "read", "--ttl", "2s"]);
    let shown = listed(&node, &id);
    let lifetime_ms = shown["expires_at_ms"].as_i64().expect("expires")
        - shown["created_at_ms"].as_i64().expect("created");
    assert_eq!(lifetime_ms, 2000, "{shown}");
    let (status, body) = wait_until("the token to expire", || {
        let answer = call(&node, "GET", "/v1/agents", &token, None);
        (answer.0 != 200).then_some(answer)
    });
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
}

#[test]
fn browser_sessions_are_listed_and_revoked_as_tokens() {
    let mut node = Node::setup("alpha", &[]);
    node.start();
    let operator = node.sandbox.token();
    let (status, code) = call(&node, "POST", "/v1/web/codes", &operator, Some(json!({})));
    assert_eq!(status, 200, "{code}");
    let url = code["url"].as_str().expect("url").to_owned();
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let login = match agent.get(&url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("login: {err}"),
    };
    let cookie = login
        .header("set-cookie")
        .expect("session cookie")
        .to_owned();
    let session_id = cookie
        .split_once('=')
        .and_then(|(_, value)| value.split_once('.'))
        .map(|(id, _)| id.to_owned())
        .expect("session id");
    let shown = listed(&node, &session_id);
    assert_eq!(shown["kind"], "session", "{shown}");
    assert_eq!(shown["scope"], "operator", "{shown}");
    let revoke = node.run(&["tokens", "revoke", &session_id]);
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    assert!(listed(&node, &session_id).is_null());
}
