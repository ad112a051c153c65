//! The local HTTP surface against hostile local clients, end to end with
//! the real `scout` binary: web pages (a foreign `Host` after DNS
//! rebinding, a foreign `Origin` on a cross-site request or WebSocket),
//! connection floods (idle and slowloris connections), and an impostor
//! listening where the CLI expects its broker.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{Node, Sandbox, WAIT_BOUND};
use serde_json::Value;

/// Largest response head or body read by the raw client: every answer of
/// these tests is a small JSON document.
const RAW_RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// An answer read off a raw socket.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    body: Value,
}

/// Sends `request` (a complete HTTP/1.1 request) and reads the status and
/// the JSON body (empty for a `101`, whose connection stays open).
fn raw(addr: SocketAddr, request: &str) -> RawAnswer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT_BOUND)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).expect("read head");
        assert!(
            n > 0,
            "closed before a head: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&chunk[..n]);
        assert!(bytes.len() < RAW_RESPONSE_BYTES_MAX, "head too long");
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    assert!(length < RAW_RESPONSE_BYTES_MAX, "body too long");
    while bytes.len() < head_end + length {
        let n = stream.read(&mut chunk).expect("read body");
        assert!(n > 0, "closed inside the body");
        bytes.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&bytes[head_end..head_end + length]).unwrap_or(Value::Null);
    RawAnswer { status, body }
}

/// One request of a route family: method, path, and whether it is a
/// WebSocket upgrade.
const FAMILIES: &[(&str, &str, bool)] = &[
    ("GET", "/health", false),
    (
        "GET",
        "/v1/hello?challenge=0000000000000000000000000000000000000000000000000000000000000000",
        false,
    ),
    ("GET", "/v1/agents", false),
    ("GET", "/v1/peers", false),
    ("GET", "/v1/mesh", false),
    ("POST", "/v1/mesh/invites", false),
    ("POST", "/v1/invocations", false),
    ("GET", "/v1/flights", false),
    ("GET", "/v1/conversations", false),
    ("GET", "/v1/events/stream", false),
    ("GET", "/v1/work-orders", false),
    ("GET", "/v1/checkpoints", false),
    ("POST", "/v1/checkpoints/x/restore", false),
    ("GET", "/agents", false),
    ("GET", "/agents/nope/logs", false),
    ("GET", "/ws/events", true),
    ("GET", "/ws/agents/nope/terminal", true),
    ("GET", "/no-such-route", false),
];

fn request(method: &str, path: &str, websocket: bool, headers: &[(&str, String)]) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if websocket {
        text.push_str(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
    } else {
        text.push_str("Connection: close\r\n");
    }
    if method == "POST" {
        text.push_str("Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    } else {
        text.push_str("\r\n");
    }
    text
}

fn broker_addr(node: &Node) -> SocketAddr {
    node.broker().ready["http_addr"]
        .as_str()
        .expect("http_addr")
        .parse()
        .expect("socket addr")
}

#[test]
fn foreign_hosts_and_origins_are_refused_on_every_route_before_the_token() {
    let mut node = Node::setup("guarded", &[]);
    node.start();
    let addr = broker_addr(&node);
    let port = addr.port();
    let token = format!("Bearer {}", node.sandbox.token());
    let local_host = format!("127.0.0.1:{port}");
    for &(method, path, websocket) in FAMILIES {
        for foreign_host in [
            format!("evil.example:{port}"),
            format!("localhost:{}", port.wrapping_add(1)),
            "localhost".to_owned(),
        ] {
            let answer = raw(
                addr,
                &request(
                    method,
                    path,
                    websocket,
                    &[
                        ("Host", foreign_host.clone()),
                        ("Authorization", token.clone()),
                    ],
                ),
            );
            assert_eq!(answer.status, 403, "{method} {path} Host {foreign_host}");
            assert_eq!(
                answer.body["error"]["code"], "FORBIDDEN_HOST",
                "{method} {path}"
            );
        }
        for foreign_origin in [
            "http://evil.example".to_owned(),
            format!("http://evil.example:{port}"),
            format!("https://localhost:{port}"),
            "null".to_owned(),
        ] {
            for authorization in [Some(token.clone()), None] {
                let mut headers = vec![
                    ("Host", local_host.clone()),
                    ("Origin", foreign_origin.clone()),
                ];
                if let Some(authorization) = &authorization {
                    headers.push(("Authorization", authorization.clone()));
                }
                let answer = raw(addr, &request(method, path, websocket, &headers));
                assert_eq!(
                    answer.status, 403,
                    "{method} {path} Origin {foreign_origin}"
                );
                assert_eq!(
                    answer.body["error"]["code"], "FORBIDDEN_ORIGIN",
                    "{method} {path} Origin {foreign_origin}"
                );
            }
        }
    }

    // The loopback names with the port, and pages served from them, pass.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let answer = raw(
            addr,
            &request(
                "GET",
                "/health",
                false,
                &[("Host", host.clone()), ("Origin", format!("http://{host}"))],
            ),
        );
        assert_eq!(answer.status, 200, "Host {host}");
        assert_eq!(answer.body["node"], "guarded");
    }
    let upgraded = raw(
        addr,
        &request(
            "GET",
            "/ws/events",
            true,
            &[
                ("Host", local_host.clone()),
                ("Origin", format!("http://localhost:{port}")),
                ("Authorization", token.clone()),
            ],
        ),
    );
    assert_eq!(upgraded.status, 101);
    // Without a foreign header, the token is what decides.
    let unauthorized = raw(
        addr,
        &request("GET", "/v1/agents", false, &[("Host", local_host)]),
    );
    assert_eq!(unauthorized.status, 401);
    assert_eq!(unauthorized.body["error"]["code"], "UNAUTHORIZED");
}

/// Connections opened by the flood test: as many as the benchmark's.
const FLOOD_CONNECTIONS: usize = 2_000;

/// Descriptors the test process keeps for everything else it opens.
const TEST_DESCRIPTORS_RESERVED: u64 = 256;

#[test]
fn idle_and_slowloris_connections_do_not_starve_health_and_get_closed() {
    let mut node = Node::setup("flooded", &[]);
    node.start();
    let addr = broker_addr(&node);
    let limit = scout::http::serve::raise_file_limit().unwrap_or(1024);
    let n_connections = FLOOD_CONNECTIONS
        .min(usize::try_from(limit.saturating_sub(TEST_DESCRIPTORS_RESERVED)).unwrap_or(0));
    assert!(
        n_connections >= 100,
        "the file limit {limit} is too low for this test"
    );
    let slow_head = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX-Slow:",
        addr.port()
    );
    let mut slowloris = Vec::new();
    let mut idle = Vec::new();
    for idx in 0..n_connections {
        let mut stream = TcpStream::connect(addr).expect("connect");
        if idx % 2 == 0 {
            stream
                .write_all(slow_head.as_bytes())
                .expect("partial head");
            slowloris.push(stream);
        } else {
            idle.push(stream);
        }
    }

    let health: Value = ureq::AgentBuilder::new()
        .timeout(WAIT_BOUND)
        .build()
        .get(&format!("http://{addr}/health"))
        .call()
        .expect("/health answers during the flood")
        .into_json()
        .expect("json");
    assert_eq!(health["node"], "flooded");

    // Every one of them is closed by the broker (header-read timeout, idle
    // timeout, or eviction to make room), within the bound.
    let deadline = Instant::now() + WAIT_BOUND;
    for (kind, streams) in [("slowloris", &mut slowloris), ("idle", &mut idle)] {
        for (idx, stream) in streams.iter_mut().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            assert!(!remaining.is_zero(), "{kind} connection {idx} still open");
            stream.set_read_timeout(Some(remaining)).expect("timeout");
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    // A response to the slowloris head may never come; an
                    // error answer before the close is fine.
                    Ok(_) => continue,
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        panic!("{kind} connection {idx} still open after {WAIT_BOUND:?}")
                    }
                    Err(_) => break,
                }
            }
        }
    }
    // And the broker still serves.
    let again: Value = ureq::get(&format!("http://{addr}/health"))
        .call()
        .expect("/health after the flood")
        .into_json()
        .expect("json");
    assert_eq!(again["node"], "flooded");
}

/// What an impostor on the broker's port answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impostor {
    /// A scout-like hello and health for the home's node name, with a
    /// proof it cannot compute.
    WrongProof,
    /// `404` with a JSON error.
    NotFound,
    /// Bytes that are not HTTP.
    NotHttp,
    /// Nothing at all; the connection stays open.
    Silent,
}

/// A real HTTP server on loopback that records every request head.
struct ImpostorServer {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl ImpostorServer {
    fn start(kind: Impostor, node_name: &str) -> ImpostorServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind impostor");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let body = serde_json::json!({
            "status": "ok",
            "node": node_name,
            "node_id": "0123456789abcdef0123456789abcdef",
            "pid": 1,
            "port": addr.port(),
            "proof": "00".repeat(32),
        })
        .to_string();
        // The thread ends with the test process; the listener is never
        // closed before, so the port stays the impostor's.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(WAIT_BOUND));
                let mut bytes = Vec::new();
                let mut chunk = [0u8; 4096];
                while !bytes.windows(4).any(|w| w == b"\r\n\r\n")
                    && bytes.len() < RAW_RESPONSE_BYTES_MAX
                {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                    }
                }
                recorded
                    .lock()
                    .expect("heads")
                    .push(String::from_utf8_lossy(&bytes).into_owned());
                let answer = match kind {
                    Impostor::WrongProof => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Impostor::NotFound => {
                        let body = r#"{"error":{"code":"NOT_FOUND","message":"no"}}"#;
                        format!(
                            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    Impostor::NotHttp => "SSH-2.0-OpenSSH_9.6\r\n".to_owned(),
                    Impostor::Silent => {
                        held.push(stream);
                        continue;
                    }
                };
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        ImpostorServer { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }
}

/// Points the home at `addr`: through `broker.json` as a broker would have
/// left it, or through the configured `http_port` with no `broker.json`.
fn point_home_at(sandbox: &Sandbox, addr: SocketAddr, through_runtime_file: bool) {
    let runtime_path = sandbox.home().join("broker.json");
    if through_runtime_file {
        let runtime =
            serde_json::json!({ "pid": 1, "http_addr": addr.to_string(), "instance": "" });
        std::fs::write(&runtime_path, runtime.to_string()).expect("broker.json");
    } else {
        let _ = std::fs::remove_file(&runtime_path);
        let settings_path = sandbox.home().join("settings.json");
        let mut settings: Value =
            serde_json::from_str(&std::fs::read_to_string(&settings_path).expect("settings"))
                .expect("settings json");
        settings["http_port"] = Value::from(addr.port());
        std::fs::write(&settings_path, settings.to_string()).expect("settings");
    }
}

#[test]
fn the_cli_never_sends_its_token_to_an_impostor_on_the_broker_port() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let token = sandbox.token();
    let cases = [
        (Impostor::WrongProof, true, "without proof"),
        (Impostor::WrongProof, false, "without proof"),
        (Impostor::NotFound, true, "HTTP 404"),
        (Impostor::NotHttp, true, "not HTTP"),
        (Impostor::Silent, true, "no HTTP answer"),
    ];
    for (kind, through_runtime_file, found) in cases {
        let impostor = ImpostorServer::start(kind, "laptop");
        point_home_at(&sandbox, impostor.addr, through_runtime_file);
        for args in [
            &["peers"][..],
            &["agents", "list"][..],
            &["mesh", "invite"][..],
        ] {
            let run = sandbox.run(args);
            assert_eq!(run.code, 1, "{kind:?} {args:?}: {}", run.stderr);
            assert!(
                run.stderr.contains("BROKER_MISMATCH")
                    && run.stderr.contains(&impostor.addr.to_string())
                    && run.stderr.contains(found),
                "{kind:?} {args:?}: {}",
                run.stderr
            );
        }
        let heads = impostor.heads();
        assert!(!heads.is_empty(), "{kind:?}: the impostor was never asked");
        for head in heads {
            assert!(
                !head.to_ascii_lowercase().contains("authorization") && !head.contains(&token),
                "{kind:?}: the token reached the impostor: {head}"
            );
        }
    }
}

#[test]
fn nothing_listening_means_no_broker_not_a_mismatch() {
    let sandbox = Sandbox::new();
    sandbox.setup("quiet");
    let free = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    point_home_at(&sandbox, free, true);
    let run = sandbox.run(&["--json", "peers"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("BROKER_MISMATCH"), "{}", run.stderr);
    assert_eq!(run.json()["broker_running"], false);
}

#[test]
fn the_broker_proves_it_holds_the_token_and_broker_json_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut node = Node::setup("proven", &[]);
    node.start();
    let addr = broker_addr(&node);
    let runtime_path = node.sandbox.home().join("broker.json");
    let mode = std::fs::metadata(&runtime_path)
        .expect("broker.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "broker.json mode {mode:o}");
    let runtime: Value =
        serde_json::from_str(&std::fs::read_to_string(&runtime_path).expect("read")).expect("json");
    assert_eq!(runtime["pid"], node.broker().child.id());
    assert_eq!(runtime["instance"].as_str().map(str::len), Some(32));

    let challenge = [0x5au8; scout::http::hello::CHALLENGE_BYTES];
    let hello: Value = ureq::get(&format!(
        "http://{addr}/v1/hello?challenge={}",
        "5a".repeat(scout::http::hello::CHALLENGE_BYTES)
    ))
    .call()
    .expect("hello")
    .into_json()
    .expect("json");
    assert_eq!(hello["node"], "proven");
    assert_eq!(hello["port"], addr.port());
    assert_eq!(hello["pid"], node.broker().child.id());
    let proof = hello["proof"].as_str().expect("proof");
    assert!(scout::http::hello::verify(
        &node.sandbox.token(),
        &challenge,
        addr.port(),
        proof
    ));
    assert!(!scout::http::hello::verify(
        "another token",
        &challenge,
        addr.port(),
        proof
    ));
    let bad = ureq::get(&format!("http://{addr}/v1/hello?challenge=abc")).call();
    match bad {
        Err(ureq::Error::Status(400, response)) => {
            let body: Value = response.into_json().expect("json");
            assert_eq!(body["error"]["code"], "INVALID_CHALLENGE");
        }
        other => panic!("a short challenge was not refused: {other:?}"),
    }

    let run = node.run(&["--json", "peers"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["broker_running"], true);
}
