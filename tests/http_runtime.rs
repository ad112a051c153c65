//! The local runtime's HTTP, SSE and WebSocket surface, end to end: the
//! real `scout up` in a temporary home, a real HTTP client and real
//! WebSocket clients, agents on real terminals (the test agent, and the
//! test agent linked as `claude` and `codex` on PATH).

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::Instant;

use common::runtime_api::{Api, Ws, answer, next_text, read_until, test_agent};
use common::{BrokerProcess, Sandbox, WAIT_BOUND, wait_until};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message};

impl Api {
    /// A WebSocket whose socket holds little, so a client that stops
    /// reading pushes back on the broker after a small amount of output.
    fn ws_small_buffer(&self, path: &str) -> Ws {
        use nix::sys::socket::{setsockopt, sockopt};
        let stream = TcpStream::connect(self.base.trim_start_matches("http://")).unwrap();
        setsockopt(&stream, sockopt::RcvBuf, &(64 * 1024)).unwrap();
        stream.set_read_timeout(Some(WAIT_BOUND)).unwrap();
        let url = format!("{}{path}", self.base.replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        let (ws, _) = tungstenite::client(request, MaybeTlsStream::Plain(stream)).unwrap();
        ws
    }
}

/// Reads event frames until the event `name` (for `agent_id`) arrives.
fn next_event(ws: &mut Ws, name: &str, agent_id: &str) -> Value {
    let deadline = Instant::now() + WAIT_BOUND;
    loop {
        assert!(Instant::now() < deadline, "no {name} event");
        let event: Value = serde_json::from_str(&next_text(ws)).unwrap();
        let about = event["data"]["agent"]["id"]
            .as_str()
            .or_else(|| event["data"]["message"]["agentId"].as_str());
        if event["event"] == name && about == Some(agent_id) {
            assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
            return event;
        }
    }
}

#[test]
fn the_seed_examples_work_with_the_token() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let broker = BrokerProcess::start(&sandbox);
    let api = Api::new(&broker, &sandbox);

    // curl http://localhost:3100/health (no token needed)
    let health: Value = ureq::get(&format!("{}/health", api.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["status"], "ok");

    // curl -X POST http://localhost:3100/agents -H "Content-Type: application/json" -d '{…}'
    let id = api.spawn_test_agent(sandbox.path());
    assert!(id.starts_with("agent-"), "{id}");

    // curl -X POST …/agents/agent-123/send -d '{"message": …, "timeout": 30000}'
    let (status, sent) = api.call(
        "POST",
        &format!("/agents/{id}/send"),
        Some(json!({"message": "What files are in this directory?", "timeout": 30000})),
    );
    assert_eq!(status, 200, "{sent}");
    assert_eq!(
        sent["response"],
        "you said: What files are in this directory?"
    );
    assert_eq!(sent["status"], "completed");

    // curl …/agents/agent-123/logs?lines=50
    let (status, logs) = api.call("GET", &format!("/agents/{id}/logs?lines=50"), None);
    assert_eq!(status, 200);
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line.as_str().unwrap())
        .collect();
    assert!(
        lines.contains(&"you said: What files are in this directory?"),
        "{lines:?}"
    );
    let (_, two) = api.call("GET", &format!("/agents/{id}/logs?lines=2"), None);
    assert_eq!(two["lines"].as_array().unwrap().len(), 2);

    // curl …/agents/agent-123 and the list
    let (status, agent) = api.call("GET", &format!("/agents/{id}"), None);
    assert_eq!(status, 200);
    assert_eq!(agent["name"], "my-agent");
    assert_eq!(agent["type"], "command");
    assert_eq!(agent["status"], "ready");
    assert!(agent["pid"].as_u64().unwrap() > 1);
    assert!(agent["createdAt"].as_str().unwrap().ends_with('Z'));
    let (_, list) = api.call("GET", "/agents", None);
    assert_eq!(list["agents"][0]["id"], id.as_str());
    // The broker's configured agents are still served under /v1.
    let (status, _) = api.call("GET", "/v1/agents", None);
    assert_eq!(status, 200);

    // curl -N …/agents/agent-123/stream (SSE)
    let stream = api
        .request("GET", &format!("/agents/{id}/stream"))
        .call()
        .unwrap();
    assert_eq!(stream.content_type(), "text/event-stream");
    let mut stream = BufReader::new(stream.into_reader());
    let mut read_sse_until = |needle: &str| {
        let mut seen = String::new();
        let mut line = String::new();
        while !seen.contains(needle) {
            line.clear();
            assert!(
                stream.read_line(&mut line).unwrap() > 0,
                "stream ended: {seen}"
            );
            seen.push_str(&line);
        }
        seen
    };
    let first = read_sse_until("\n\n");
    assert!(first.starts_with("event: agent\ndata: {"), "{first}");
    let (status, _) = api.call(
        "POST",
        &format!("/agents/{id}/send"),
        Some(json!({"message": "streamed to sse"})),
    );
    assert_eq!(status, 200);
    // Output and events travel separately: wait for both.
    let mut seen = read_sse_until("you said: streamed to sse");
    if !seen.contains("event: message") {
        seen.push_str(&read_sse_until("event: message"));
    }
    assert!(seen.contains("event: output"), "{seen}");

    // curl -X DELETE …/agents/agent-123
    let (status, stopped) = api.call("DELETE", &format!("/agents/{id}"), None);
    assert_eq!(status, 200);
    assert_eq!(stopped["status"], "stopped");
    let seen = read_sse_until("\"status\":\"stopped\"");
    assert!(seen.contains("event: agent_stopped"), "{seen}");

    let (status, err) = api.call(
        "POST",
        &format!("/agents/{id}/send"),
        Some(json!({"message": "still there?"})),
    );
    assert_eq!(status, 409);
    assert_eq!(err["error"]["code"], "AGENT_STOPPED");
    // A stopped agent keeps its logs until it is deleted again.
    let (status, _) = api.call("GET", &format!("/agents/{id}/logs"), None);
    assert_eq!(status, 200);
    let (status, _) = api.call("DELETE", &format!("/agents/{id}"), None);
    assert_eq!(status, 200);
    let (status, err) = api.call("GET", &format!("/agents/{id}"), None);
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "AGENT_NOT_FOUND");
}

#[test]
fn bad_requests_get_their_codes_and_the_broker_keeps_serving() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let mut command = sandbox.scout();
    command.env("MAX_AGENTS", "1");
    let broker = BrokerProcess::start_command(command);
    let api = Api::new(&broker, &sandbox);
    let file = sandbox.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();

    // The token: none, wrong, or in the query of a request that is neither
    // a WebSocket nor an event stream.
    let anonymous = |method: &str, path: &str| {
        answer(
            ureq::request(method, &format!("{}{path}", api.base))
                .set("Content-Type", "application/json")
                .send_string("{}"),
        )
    };
    assert_eq!(anonymous("GET", "/agents").0, 401);
    assert_eq!(
        anonymous("POST", "/agents").1["error"]["code"],
        "UNAUTHORIZED"
    );
    assert_eq!(
        anonymous("POST", &format!("/agents?token={}", api.token)).0,
        401
    );
    let (status, _) = answer(
        ureq::get(&format!("{}/agents", api.base))
            .set("Authorization", "Bearer wrong")
            .call(),
    );
    assert_eq!(status, 401);

    let post = || {
        api.request("POST", "/agents")
            .set("Content-Type", "application/json")
    };
    let agent = test_agent();
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".to_owned(), 400, "INVALID_JSON"),
        (json!({"name": "x"}).to_string(), 400, "INVALID_REQUEST"),
        (json!({"name": "x", "type": "cobol"}).to_string(), 400, "INVALID_REQUEST"),
        (json!({"type": "command"}).to_string(), 400, "INVALID_REQUEST"),
        (
            json!({"type": "command", "command": ["cat"], "workdir": sandbox.path().join("nope")}).to_string(),
            422,
            "INVALID_WORKDIR",
        ),
        (
            json!({"type": "command", "command": ["cat"], "workdir": file}).to_string(),
            422,
            "INVALID_WORKDIR",
        ),
        (
            json!({"type": "command", "command": ["no-such-cli"], "workdir": sandbox.path()}).to_string(),
            422,
            "CLI_NOT_FOUND",
        ),
        (
            json!({"type": "command", "command": [agent], "promptPattern": "(", "workdir": sandbox.path()}).to_string(),
            400,
            "INVALID_REQUEST",
        ),
    ];
    for (body, status, code) in cases {
        let (got_status, error) = api.raw(post(), &body);
        assert_eq!(
            (got_status, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{error}"
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // An oversized body is refused before it is read (the client may see
    // its write cut short, as curl does, but gets the answer).
    let (status, error) = oversized_post(&api, "/agents", 2 * 1024 * 1024);
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (413, Some("BODY_TOO_LARGE")),
        "{error}"
    );

    let id = api.spawn_test_agent(sandbox.path());
    // MAX_AGENTS=1: a second agent is refused, clearly.
    let (status, error) = api.call(
        "POST",
        "/agents",
        Some(json!({"type": "command", "command": ["cat"], "workdir": sandbox.path()})),
    );
    assert_eq!(status, 429);
    assert_eq!(error["error"]["code"], "MAX_AGENTS");

    let checks: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        (
            "GET",
            "/agents/agent-nope".into(),
            None,
            404,
            "AGENT_NOT_FOUND",
        ),
        (
            "DELETE",
            "/agents/agent-nope".into(),
            None,
            404,
            "AGENT_NOT_FOUND",
        ),
        (
            "GET",
            "/agents/agent-nope/logs".into(),
            None,
            404,
            "AGENT_NOT_FOUND",
        ),
        (
            "POST",
            "/agents/agent-nope/send".into(),
            Some(json!({"message": "hi"})),
            404,
            "AGENT_NOT_FOUND",
        ),
        (
            "POST",
            format!("/agents/{id}/send"),
            Some(json!({"message": ""})),
            400,
            "INVALID_REQUEST",
        ),
        (
            "POST",
            format!("/agents/{id}/send"),
            Some(json!({"message": "hi", "timeout": 0})),
            400,
            "INVALID_REQUEST",
        ),
        (
            "POST",
            format!("/agents/{id}/send"),
            Some(json!({"message": 5})),
            400,
            "INVALID_REQUEST",
        ),
        (
            "GET",
            format!("/agents/{id}/logs?lines=abc"),
            None,
            400,
            "INVALID_REQUEST",
        ),
        (
            "GET",
            format!("/agents/{id}/logs?lines=0"),
            None,
            400,
            "INVALID_REQUEST",
        ),
        ("PUT", "/agents".into(), None, 405, "METHOD_NOT_ALLOWED"),
        (
            "GET",
            format!("/ws/agents/{id}/terminal"),
            None,
            400,
            "WEBSOCKET_REQUIRED",
        ),
        (
            "POST",
            format!("/agents/{id}/send"),
            Some(json!({"message": "slow 1000", "timeout": 200})),
            504,
            "TIMEOUT",
        ),
    ];
    for (method, path, body, status, code) in checks {
        let (got_status, error) = api.call(method, &path, body);
        assert_eq!(
            (got_status, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {error}"
        );
    }
    // Everything else kept working.
    let health = ureq::get(&format!("{}/health", api.base)).call().unwrap();
    assert_eq!(health.status(), 200);
    let (status, _) = api.call("DELETE", &format!("/agents/{id}"), None);
    assert_eq!(status, 200);
    // The slot is free again.
    let (status, _) = api.call(
        "POST",
        "/agents",
        Some(json!({"type": "command", "command": ["cat"], "workdir": sandbox.path()})),
    );
    assert_eq!(status, 201);
}

#[test]
fn websockets_carry_the_terminal_and_the_events() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let broker = BrokerProcess::start(&sandbox);
    let api = Api::new(&broker, &sandbox);

    // Browsers cannot set headers on a WebSocket: the token may be a query
    // parameter there, and only there.
    let mut events = api
        .ws(&format!("/ws/events?token={}", api.token), false)
        .unwrap();
    let connected: Value = serde_json::from_str(&next_text(&mut events)).unwrap();
    assert_eq!(connected["event"], "connected");
    match api.ws("/ws/events", false) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }

    let id = api.spawn_test_agent(sandbox.path());
    let started = next_event(&mut events, "agent_started", &id);
    assert_eq!(started["data"]["agent"]["name"], "my-agent");
    next_event(&mut events, "agent_ready", &id);
    let mut filtered = api
        .ws(
            &format!("/ws/events?agentId={id}&token={}", api.token),
            false,
        )
        .unwrap();
    next_text(&mut filtered);

    let mut terminal = api.ws(&format!("/ws/agents/{id}/terminal"), true).unwrap();
    let hello: Value = serde_json::from_str(&next_text(&mut terminal)).unwrap();
    assert_eq!(hello["type"], "connected");
    read_until(&mut terminal, "scout test agent ready");

    terminal.send(Message::text("hello ws\r")).unwrap();
    read_until(&mut terminal, "you said: hello ws");
    terminal
        .send(Message::text(
            json!({"type": "resize", "cols": 100, "rows": 40}).to_string(),
        ))
        .unwrap();
    wait_until("the resize", || {
        let (_, agent) = api.call("GET", &format!("/agents/{id}"), None);
        (agent["cols"] == 100 && agent["rows"] == 40).then_some(())
    });

    // A late joiner sees the screen as it is.
    let mut late = api
        .ws(
            &format!("/ws/agents/{id}/terminal?token={}", api.token),
            false,
        )
        .unwrap();
    assert!(next_text(&mut late).contains("\"connected\""));
    read_until(&mut late, "you said: hello ws");

    // A question and its answer, seen on the event socket.
    let (status, asked) = api.call(
        "POST",
        &format!("/agents/{id}/send"),
        Some(json!({"message": "ask"})),
    );
    assert_eq!(status, 200);
    assert_eq!(asked["status"], "waiting");
    let question = next_event(&mut filtered, "question", &id);
    assert_eq!(
        question["data"]["question"],
        "Allow write to notes.txt? [y/n]"
    );
    let (_, answered) = api.call(
        "POST",
        &format!("/agents/{id}/send"),
        Some(json!({"message": "y"})),
    );
    assert_eq!(answered["response"], "Permission granted: wrote notes.txt");
    let message = next_event(&mut filtered, "message", &id);
    assert_eq!(
        message["data"]["message"]["content"],
        "Permission granted: wrote notes.txt"
    );

    match api.ws("/ws/agents/agent-nope/terminal", true) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }

    let (status, _) = api.call("DELETE", &format!("/agents/{id}"), None);
    assert_eq!(status, 200);
    let exit = read_until(&mut terminal, "\"type\":\"exit\"");
    assert!(exit.contains("\"status\":\"stopped\""), "{exit}");
    let stopped = next_event(&mut events, "agent_stopped", &id);
    assert_eq!(stopped["data"]["reason"], "stopped");
}

/// POSTs a JSON body of `n_bytes` over a raw connection, carrying on when
/// the server answers (and closes) before the body is written.
fn oversized_post(api: &Api, path: &str, n_bytes: usize) -> (u16, Value) {
    use std::io::{Read, Write};
    let addr = api.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT_BOUND)).unwrap();
    let body = format!("{{\"name\": \"{}\"}}", "x".repeat(n_bytes));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        api.token,
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()));
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_terminal_client_that_stops_reading_costs_bounded_memory() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let broker = BrokerProcess::start(&sandbox);
    let api = Api::new(&broker, &sandbox);
    let id = api.spawn_test_agent(sandbox.path());
    let mut stalled = api.ws_small_buffer(&format!("/ws/agents/{id}/terminal"));
    next_text(&mut stalled);
    let rss_before = rss_kib(broker.child.id());

    // 8 MiB of output while that client reads nothing: more than its
    // socket buffers, the broker's (up to 4 MiB) and the output ring can
    // hold.
    let (status, sent) = api.call(
        "POST",
        &format!("/agents/{id}/send"),
        Some(json!({"message": "flood 8192", "timeout": 60000})),
    );
    assert_eq!(status, 200, "{sent}");
    assert!(sent["response"].as_str().unwrap().ends_with("flood done"));
    let health = ureq::get(&format!("{}/health", api.base)).call().unwrap();
    assert_eq!(health.status(), 200);
    let growth_kib = rss_kib(broker.child.id()).saturating_sub(rss_before);
    assert!(
        growth_kib < 32 * 1024,
        "the broker grew by {growth_kib} KiB"
    );

    // The stalled client skipped output: it is told so, or it was dropped
    // (a read that times out is neither).
    loop {
        match stalled.read() {
            Ok(Message::Text(text)) if text.contains("\"type\":\"lagged\"") => break,
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the stalled client was neither told nor dropped")
            }
            Err(_) => break,
        }
    }
}

#[test]
fn claude_and_codex_on_path_run_through_scout_up_and_doctor_reports_them() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let bin = sandbox.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in ["claude", "codex"] {
        std::os::unix::fs::symlink(test_agent(), bin.join(name)).unwrap();
    }
    // Claude is logged in (its credentials file in HOME, the sandbox);
    // Codex is not.
    std::fs::create_dir_all(sandbox.path().join(".claude")).unwrap();
    std::fs::write(sandbox.path().join(".claude/.credentials.json"), "{}").unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    let doctor = sandbox
        .scout()
        .env("PATH", &path)
        .args(["--json", "doctor"])
        .output()
        .unwrap();
    let doctor: Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let check = |name: &str| {
        doctor["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no check {name}: {doctor}"))
    };
    let claude = check("cli:claude");
    assert_eq!(claude["status"], "ok", "{claude}");
    assert!(
        claude["message"]
            .as_str()
            .unwrap()
            .contains("claude 0.0.0-test"),
        "{claude}"
    );
    assert!(
        claude["message"].as_str().unwrap().contains("logged in"),
        "{claude}"
    );
    let codex = check("cli:codex");
    assert_eq!(codex["status"], "warn", "{codex}");
    assert!(
        codex["hint"].as_str().unwrap().contains("codex login"),
        "{codex}"
    );

    let mut command = sandbox.scout();
    command.env("PATH", &path);
    let broker = BrokerProcess::start_command(command);
    let api = Api::new(&broker, &sandbox);
    let mut events = api.ws("/ws/events", true).unwrap();
    next_text(&mut events);

    let (status, agent) = api.call(
        "POST",
        "/agents",
        Some(json!({"name": "my-claude", "type": "claude", "workdir": sandbox.path()})),
    );
    assert_eq!(status, 201, "{agent}");
    let claude_id = agent["id"].as_str().unwrap().to_owned();
    api.wait_status(&claude_id, "ready");
    let (status, sent) = api.call(
        "POST",
        &format!("/agents/{claude_id}/send"),
        Some(json!({"message": "What files are in this directory?", "timeout": 30000})),
    );
    assert_eq!(status, 200, "{sent}");
    assert_eq!(
        sent["response"],
        "you said: What files are in this directory?"
    );

    let (status, agent) = api.call(
        "POST",
        "/agents",
        Some(json!({"name": "my-codex", "type": "codex", "workdir": sandbox.path()})),
    );
    assert_eq!(status, 201, "{agent}");
    let codex_id = agent["id"].as_str().unwrap().to_owned();
    let login = loop {
        let event = next_event(&mut events, "login_required", &codex_id);
        if !event["data"]["loginUrl"].is_null() {
            break event;
        }
    };
    assert!(
        login["data"]["loginUrl"]
            .as_str()
            .unwrap()
            .starts_with("https://auth.openai.com/oauth/authorize"),
        "{login}"
    );
    let (status, error) = api.call(
        "POST",
        &format!("/agents/{codex_id}/send"),
        Some(json!({"message": "hello"})),
    );
    assert_eq!(status, 424, "{error}");
    assert_eq!(error["error"]["code"], "AUTH_REQUIRED");
}
