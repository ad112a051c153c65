//! Cases against the local HTTP surface: every route with every kind of
//! wrong token, foreign `Host` and `Origin` headers, hostile bodies, hostile
//! names and ids, prompts carrying terminal control sequences, and a flood
//! of idle and slowloris connections.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Node, wait_until};
use crate::raw_http::{RawRequest, RawResponse, encode_segment, send};
use crate::tally::{Check, Tally, ensure};

/// One route of the API, as `src/http` declares it. `{id}` stands for the
/// path parameter.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The method the route answers.
    pub method: &'static str,
    /// The path, `{id}` for the parameter.
    pub path: &'static str,
}

const fn route(method: &'static str, path: &'static str) -> Route {
    Route { method, path }
}

/// Every route of `src/http/{health,agents,mesh,invocations,inbox,work_orders,runtime,web,terminal_relay}.rs`
/// behind the token (the page, its assets and `/login` need none).
pub const ROUTES: &[Route] = &[
    route("GET", "/health"),
    route("GET", "/v1/agents"),
    route("GET", "/v1/peers"),
    route("GET", "/v1/mesh"),
    route("POST", "/v1/mesh/invites"),
    route("POST", "/v1/mesh/join"),
    route("POST", "/v1/mesh/revoke"),
    route("POST", "/v1/invocations"),
    route("GET", "/v1/invocations/{id}"),
    route("GET", "/v1/invocations/{id}/stream"),
    route("POST", "/v1/invocations/{id}/cancel"),
    route("GET", "/v1/flights"),
    route("GET", "/v1/usage"),
    route("GET", "/v1/inbox"),
    route("GET", "/v1/conversations"),
    route("GET", "/v1/conversations/{id}"),
    route("GET", "/v1/events/stream"),
    route("GET", "/v1/work-orders"),
    route("POST", "/v1/work-orders"),
    route("POST", "/v1/work-orders/run-now"),
    route("GET", "/v1/work-orders/{id}"),
    route("POST", "/v1/work-orders/{id}/cancel"),
    route("GET", "/agents"),
    route("POST", "/agents"),
    route("GET", "/agents/{id}"),
    route("DELETE", "/agents/{id}"),
    route("POST", "/agents/{id}/send"),
    route("POST", "/agents/{id}/take"),
    route("POST", "/agents/{id}/release"),
    route("GET", "/agents/{id}/logs"),
    route("GET", "/agents/{id}/stream"),
    route("GET", "/ws/agents/{id}/terminal"),
    route("GET", "/ws/events"),
    route("POST", "/v1/web/codes"),
    route("GET", "/v1/web/sessions"),
    route("POST", "/v1/web/sessions/{id}/revoke"),
    route("POST", "/v1/web/logout"),
    route("GET", "/v1/web/live"),
    route("GET", "/ws/mesh/agents/{id}/terminal"),
    route("GET", "/v1/tokens"),
    route("POST", "/v1/tokens"),
    route("POST", "/v1/tokens/{id}/revoke"),
    route("GET", "/v1/audit"),
    route("GET", "/v1/audit/verify"),
    route("GET", "/v1/approvals"),
    route("POST", "/v1/approvals"),
    route("GET", "/v1/approvals/stream"),
    route("GET", "/v1/approvals/rules"),
    route("POST", "/v1/approvals/rules/{id}/remove"),
    route("GET", "/v1/approvals/{id}"),
    route("GET", "/v1/approvals/{id}/wait"),
    route("POST", "/v1/approvals/{id}/approve"),
    route("POST", "/v1/approvals/{id}/deny"),
    route("POST", "/v1/approvals/{id}/token"),
    route("GET", "/v1/checkpoints"),
    route("GET", "/v1/checkpoints/{id}"),
    route("GET", "/v1/checkpoints/{id}/diff"),
    route("POST", "/v1/checkpoints/{id}/restore"),
    route("POST", "/v1/workspaces/remove"),
];

/// The routes a `read` token may use: the GETs that read.
const READ_ROUTES: &[&str] = &[
    "/v1/agents",
    "/v1/peers",
    "/v1/invocations/{id}",
    "/v1/invocations/{id}/stream",
    "/v1/flights",
    "/v1/conversations",
    "/v1/conversations/{id}",
    "/v1/inbox",
    "/v1/work-orders",
    "/v1/work-orders/{id}",
    "/v1/audit/verify",
    "/v1/approvals",
    "/v1/approvals/stream",
    "/v1/approvals/rules",
    "/v1/approvals/{id}",
    "/v1/approvals/{id}/wait",
    "/v1/checkpoints",
    "/v1/checkpoints/{id}",
    "/v1/checkpoints/{id}/diff",
];

impl Route {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn is_websocket(&self) -> bool {
        self.path.starts_with("/ws/")
    }

    /// The request of this route with `id` in the path, and an empty JSON
    /// object as body for POSTs (a body no route acts on harmfully).
    fn request(&self, id: &str) -> RawRequest {
        let request = RawRequest::new(self.method, &self.path.replace("{id}", id));
        if self.method == "POST" {
            request.json(&json!({}))
        } else {
            request
        }
    }
}

/// The broker under test and what the cases need from it.
pub struct Target {
    /// The node (home, token, running broker).
    pub node: Node,
    /// The HTTP address.
    pub addr: SocketAddr,
    /// The API token.
    pub token: String,
    /// A runtime agent's id (`POST /agents`), for routes that need one.
    pub runtime_id: String,
}

impl Target {
    /// Starts a broker with a bash agent `@shell` and a runtime agent.
    pub fn start(name: &str) -> Target {
        let mut node = Node::setup(name, &[]);
        // Added before the start: the broker reads it at startup, with no
        // dependence on when its file watcher takes its first look.
        node.add_bash_agent("shell");
        node.start();
        let addr: SocketAddr = node.broker().ready["http_addr"]
            .as_str()
            .expect("http_addr")
            .parse()
            .expect("address");
        let token = node.sandbox.token();
        let instance = format!("@shell@{name}#main");
        wait_until("the broker to publish @shell", || {
            node.instances().contains(&instance).then_some(())
        });
        let workdir = node.sandbox.path().display().to_string();
        let spawned = send(
            addr,
            &RawRequest::new("POST", "/agents")
                .bearer(&token)
                .json(&json!({
                    "name": "runtime-bash",
                    "type": "command",
                    "command": ["bash"],
                    "workdir": workdir,
                })),
        )
        .expect("spawn a runtime agent");
        assert_eq!(spawned.status, 201, "{}", spawned.summary());
        let runtime_id = spawned.json().expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        Target {
            node,
            addr,
            token,
            runtime_id,
        }
    }

    fn send(&self, request: &RawRequest) -> Result<RawResponse, String> {
        send(self.addr, request)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `/health` answers `ok`.
    pub fn healthy(&self) -> Check {
        let answer = self.send(&RawRequest::new("GET", "/health"))?;
        ensure(
            answer.status == 200 && answer.json().is_some_and(|body| body["status"] == "ok"),
            || format!("/health answered {}", answer.summary()),
        )
    }
}

fn expect_code(answer: &RawResponse, status: u16, code: &str) -> Check {
    ensure(
        answer.status == status && answer.code().as_deref() == Some(code),
        || format!("expected {status} {code}, got {}", answer.summary()),
    )
}

/// Never a 5xx, always the typed error shape.
fn expect_typed_4xx(answer: &RawResponse) -> Check {
    ensure(answer.is_typed_client_error(), || {
        format!("expected a typed 4xx error, got {}", answer.summary())
    })
}

/// A change made to a request.
type Variant = Box<dyn Fn(RawRequest) -> RawRequest>;

/// Routes × token variants: 401 `UNAUTHORIZED` everywhere but `/health`.
pub fn tokens(tally: &Tally, target: &Target) {
    let token = target.token.clone();
    let upper = token.to_ascii_uppercase();
    // The token is lower-case hex, so lower-casing it changes nothing;
    // changing the case of one letter is the nearest wrong token.
    let one_letter_case = {
        let mut chars: Vec<char> = token.chars().collect();
        if let Some(letter) = chars.iter_mut().find(|ch| ch.is_ascii_alphabetic()) {
            *letter = if letter.is_ascii_lowercase() {
                letter.to_ascii_uppercase()
            } else {
                letter.to_ascii_lowercase()
            };
        }
        chars.into_iter().collect::<String>()
    };
    let variants: Vec<(&str, Variant)> = vec![
        ("no token", Box::new(|request| request)),
        (
            "wrong token",
            Box::new(|request: RawRequest| request.bearer(&"deadbeef".repeat(8))),
        ),
        ("short token (a prefix)", {
            let short = token[..token.len() / 2].to_owned();
            Box::new(move |request: RawRequest| request.bearer(&short))
        }),
        ("token with a suffix", {
            let long = format!("{token}0");
            Box::new(move |request: RawRequest| request.bearer(&long))
        }),
        ("token upper-cased", {
            let upper = upper.clone();
            Box::new(move |request: RawRequest| request.bearer(&upper))
        }),
        ("token with one letter's case changed", {
            let mixed = one_letter_case.clone();
            Box::new(move |request: RawRequest| request.bearer(&mixed))
        }),
        ("token without the Bearer scheme", {
            let token = token.clone();
            Box::new(move |request: RawRequest| request.header("Authorization", &token))
        }),
        ("token in the query", {
            let token = token.clone();
            Box::new(move |mut request: RawRequest| {
                request.target = format!("{}?token={token}", request.target);
                request
            })
        }),
    ];
    for route in ROUTES {
        for (variant, apply) in &variants {
            let request = apply(route.request("no-such-id"));
            let name = format!("token: {} with {variant}", route.name());
            tally.case(name, || {
                let answer = target.send(&request)?;
                if route.path == "/health" {
                    ensure(answer.status == 200, || {
                        format!("/health needs no token, got {}", answer.summary())
                    })
                } else {
                    expect_code(&answer, 401, "UNAUTHORIZED")
                }
            });
        }
        // The control: the right token gets past the check.
        tally.case(
            format!("token: {} with the right token", route.name()),
            || {
                let answer = target.send(&route.request("no-such-id").bearer(&target.token))?;
                ensure(answer.status != 401, || {
                    format!("the right token was refused: {}", answer.summary())
                })
            },
        );
    }
    // A query token is only for GETs that upgrade or stream; a POST that
    // claims to stream must not be authorised by its URL.
    for route in ROUTES.iter().filter(|route| route.method == "POST") {
        let mut request = route
            .request("no-such-id")
            .header("Accept", "text/event-stream")
            .websocket();
        request.target = format!("{}?token={}", request.target, target.token);
        tally.case(
            format!(
                "token: {} with the token in the query and stream/upgrade headers",
                route.name()
            ),
            || expect_code(&target.send(&request)?, 401, "UNAUTHORIZED"),
        );
    }
}

/// Routes × created tokens: a `read` token passes only on the reads and
/// gets a typed 403 naming the scope elsewhere; a made-up, a revoked and a
/// cut-short created token get 401 everywhere.
pub fn scopes(tally: &Tally, target: &Target) {
    let create = |scope: &str| -> Result<(String, String), String> {
        let answer = target.send(
            &RawRequest::new("POST", "/v1/tokens")
                .bearer(&target.token)
                .json(&json!({ "scope": scope })),
        )?;
        let body = answer.json().ok_or_else(|| answer.summary())?;
        match (body["id"].as_str(), body["token"].as_str()) {
            (Some(id), Some(token)) => Ok((id.to_owned(), token.to_owned())),
            _ => Err(answer.summary()),
        }
    };
    let (read, revoked) = match (create("read"), create("read")) {
        (Ok((_, read)), Ok((revoked_id, revoked))) => {
            let revoke = RawRequest::new("POST", &format!("/v1/tokens/{revoked_id}/revoke"))
                .bearer(&target.token)
                .json(&json!({}));
            tally.case("scopes: revoke a created token", || {
                let answer = target.send(&revoke)?;
                ensure(answer.status == 200, || answer.summary())
            });
            (read, revoked)
        }
        (Err(err), _) | (_, Err(err)) => {
            tally.case("scopes: create read tokens", || Err(err.clone()));
            return;
        }
    };
    let made_up = format!("sct_{}", "ab".repeat(32));
    let cut_short = read[..read.len() - 1].to_owned();
    for route in ROUTES.iter().filter(|route| route.path != "/health") {
        let reads = route.method == "GET" && READ_ROUTES.contains(&route.path);
        tally.case(
            format!("scopes: {} with a read token", route.name()),
            || {
                let answer = target.send(&route.request("no-such-id").bearer(&read))?;
                if reads {
                    ensure(answer.status != 401 && answer.status != 403, || {
                        format!("a read token was refused a read: {}", answer.summary())
                    })
                } else {
                    expect_code(&answer, 403, "FORBIDDEN_SCOPE")
                }
            },
        );
        for (variant, token) in [
            ("a made-up created token", &made_up),
            ("a revoked token", &revoked),
            ("a created token cut short", &cut_short),
        ] {
            tally.case(format!("scopes: {} with {variant}", route.name()), || {
                let answer = target.send(&route.request("no-such-id").bearer(token))?;
                expect_code(&answer, 401, "UNAUTHORIZED")
            });
        }
    }
}

/// Routes × foreign `Host` and `Origin` headers, with the right token.
pub fn hosts_and_origins(tally: &Tally, target: &Target) {
    let port = target.port();
    let foreign_hosts = [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1:{}", if port == 1 { 2 } else { 1 }),
    ];
    let foreign_origins = [
        "http://evil.example".to_owned(),
        format!("http://localhost:{}", if port == 1 { 2 } else { 1 }),
        format!("https://evil.example:{port}"),
        "null".to_owned(),
    ];
    let allowed_hosts = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    let allowed_origins = [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
    ];
    for route in ROUTES {
        // The terminal WebSocket gets a real agent, so only the header
        // check can refuse it; every other path id is unknown, so nothing
        // is changed if the check is missing.
        let id = if route.is_websocket() {
            target.runtime_id.as_str()
        } else {
            "no-such-id"
        };
        let base = || {
            let request = route.request(id).bearer(&target.token);
            if route.is_websocket() {
                request.websocket()
            } else {
                request
            }
        };
        for host in &foreign_hosts {
            let request = base().header("Host", host);
            tally.case(format!("host: {} with Host `{host}`", route.name()), || {
                expect_code(&target.send(&request)?, 403, "FORBIDDEN_HOST")
            });
        }
        for origin in &foreign_origins {
            let request = base().header("Origin", origin);
            tally.case(
                format!("origin: {} with Origin `{origin}`", route.name()),
                || expect_code(&target.send(&request)?, 403, "FORBIDDEN_ORIGIN"),
            );
        }
        tally.case(
            format!("host: {} with the loopback Hosts and Origins", route.name()),
            || {
                for host in &allowed_hosts {
                    let answer = target.send(&base().header("Host", host))?;
                    if answer.status == 403 {
                        return Err(format!("Host `{host}` refused: {}", answer.summary()));
                    }
                }
                for origin in &allowed_origins {
                    let answer = target.send(&base().header("Origin", origin))?;
                    if answer.status == 403 {
                        return Err(format!("Origin `{origin}` refused: {}", answer.summary()));
                    }
                }
                Ok(())
            },
        );
    }
}

/// Depth of the nested JSON documents: far beyond any parser's recursion
/// limit.
const JSON_DEPTH: usize = 10_000;

/// Size of the oversized bodies: ten times the broker's limit.
const HUGE_BODY_BYTES: usize = 10 * 1024 * 1024;

/// A hostile body: its label, its content type (if any), its bytes, and
/// whether it is sent chunked.
type BodyCase = (
    &'static str,
    Option<(&'static str, &'static str)>,
    Vec<u8>,
    bool,
);

/// POST routes × hostile bodies: a typed 4xx, and the broker keeps serving.
pub fn bodies(tally: &Tally, target: &Target) {
    let huge = {
        let mut body = b"{\"target\":\"".to_vec();
        body.resize(HUGE_BODY_BYTES, b'a');
        body.extend_from_slice(b"\"}");
        body
    };
    let deep_array = format!("{}{}", "[".repeat(JSON_DEPTH), "]".repeat(JSON_DEPTH)).into_bytes();
    let deep_object = format!(
        "{}1{}",
        "{\"target\":".repeat(JSON_DEPTH),
        "}".repeat(JSON_DEPTH)
    )
    .into_bytes();
    // The same deep value in every field any POST route reads, so each
    // route parses one of them, whatever its body type.
    let deep_value = format!("{}{}", "[".repeat(JSON_DEPTH), "]".repeat(JSON_DEPTH));
    let deep_in_field = format!(
        "{{{}}}",
        [
            "target", "message", "body", "code", "node", "name", "type", "ttl_ms"
        ]
        .iter()
        .map(|field| format!("\"{field}\":{deep_value}"))
        .collect::<Vec<_>>()
        .join(",")
    )
    .into_bytes();
    let bad_utf8_string =
        b"{\"target\":\"@a\xff\xfe\",\"message\":\"\xc3\x28\",\"code\":\"\xed\xa0\x80\"}".to_vec();
    let bad_utf8_raw = vec![0xff, 0xfe, 0x00, 0x80, 0xc0, 0xaf];
    let json_type = ("Content-Type", "application/json");
    let cases: Vec<BodyCase> = vec![
        ("a 10 MB body", Some(json_type), huge.clone(), false),
        ("a 10 MB chunked body", Some(json_type), huge, true),
        ("a 10,000-deep array", Some(json_type), deep_array, false),
        ("a 10,000-deep object", Some(json_type), deep_object, false),
        ("a 10,000-deep value in a field", Some(json_type), deep_in_field, false),
        ("invalid UTF-8 in strings", Some(json_type), bad_utf8_string, false),
        ("invalid UTF-8 bytes", Some(json_type), bad_utf8_raw, false),
        ("no content type", None, b"{}".to_vec(), false),
        ("text/plain", Some(("Content-Type", "text/plain")), b"{}".to_vec(), false),
        (
            "a form content type",
            Some(("Content-Type", "application/x-www-form-urlencoded")),
            b"target=%40a&message=hi".to_vec(),
            false,
        ),
        (
            "a multipart content type",
            Some(("Content-Type", "multipart/form-data; boundary=x")),
            b"--x\r\n\r\n{}\r\n--x--\r\n".to_vec(),
            false,
        ),
        ("an array", Some(json_type), b"[]".to_vec(), false),
        ("null", Some(json_type), b"null".to_vec(), false),
        ("a string", Some(json_type), b"\"hello\"".to_vec(), false),
        ("a number", Some(json_type), b"42".to_vec(), false),
        (
            "fields of the wrong type",
            Some(json_type),
            br#"{"target":1,"message":[],"body":{},"code":true,"node":null,"name":5,"ttl_ms":"soon","type":7}"#.to_vec(),
            false,
        ),
        (
            "an unknown field",
            Some(json_type),
            br#"{"ttl_ms":1000,"bogus":1}"#.to_vec(),
            false,
        ),
        ("an empty body", Some(json_type), Vec::new(), false),
    ];
    for route in ROUTES.iter().filter(|route| route.method == "POST") {
        let id = if route.path == "/agents/{id}/send" {
            target.runtime_id.as_str()
        } else {
            "no-such-id"
        };
        for (label, content_type, body, chunked) in &cases {
            let mut request = RawRequest::new(route.method, &route.path.replace("{id}", id))
                .bearer(&target.token)
                .body(body.clone());
            request.chunked = *chunked;
            if let Some((name, value)) = content_type {
                request = request.header(name, value);
            }
            tally.case(format!("body: {} with {label}", route.name()), || {
                expect_typed_4xx(&target.send(&request)?)
            });
        }
    }
    tally.case(
        "body: the broker keeps serving after the hostile bodies",
        || target.healthy(),
    );
}

/// The hostile values put into every name and id.
pub fn bad_names() -> Vec<(&'static str, String)> {
    vec![
        ("NUL", "a\u{0}b".to_owned()),
        ("ESC sequence", "a\u{1b}[31mb".to_owned()),
        ("newline", "a\nb".to_owned()),
        ("DEL", "a\u{7f}b".to_owned()),
        ("C1 CSI", "a\u{9b}b".to_owned()),
        ("right-to-left override", "a\u{202e}b".to_owned()),
        ("a 10 KB string", "a".repeat(10 * 1024)),
        ("`../..`", "../..".to_owned()),
        ("`%2e%2e%2f`", "%2e%2e%2f".to_owned()),
        ("an absolute path", "/etc/passwd".to_owned()),
        ("an empty string", String::new()),
        ("blanks", "   ".to_owned()),
    ]
}

/// A request body around a hostile value.
type BodyOf = Box<dyn Fn(&str) -> Value>;

/// Name fields in bodies and ids in paths × hostile values: typed 4xx.
pub fn names(tally: &Tally, target: &Target) {
    let fields: Vec<(&str, &str, BodyOf)> = vec![
        (
            "invocation target agent",
            "/v1/invocations",
            Box::new(|v| json!({"target": format!("@{v}"), "message": "true"})),
        ),
        (
            "invocation target node",
            "/v1/invocations",
            Box::new(|v| json!({"target": format!("@shell@{v}"), "message": "true"})),
        ),
        (
            "invocation target workspace",
            "/v1/invocations",
            Box::new(|v| json!({"target": format!("@shell#{v}"), "message": "true"})),
        ),
        (
            "invocation target as a whole",
            "/v1/invocations",
            Box::new(|v| json!({"target": v, "message": "true"})),
        ),
        (
            "invocation conversation id",
            "/v1/invocations",
            Box::new(|v| json!({"target": "@shell", "message": "true", "conversation_id": v})),
        ),
        (
            "work order target",
            "/v1/work-orders",
            Box::new(|v| json!({"target": format!("@{v}"), "body": "true"})),
        ),
        (
            "run-now target",
            "/v1/work-orders/run-now",
            Box::new(|v| json!({"target": format!("@shell@{v}"), "body": "true"})),
        ),
        (
            "revoke node",
            "/v1/mesh/revoke",
            Box::new(|v| json!({"node": v})),
        ),
    ];
    for (field, path, body_of) in &fields {
        for (label, value) in bad_names() {
            let body = body_of(&value);
            let request = RawRequest::new("POST", path)
                .bearer(&target.token)
                .json(&body);
            tally.case(format!("name: {field} with {label}"), || {
                expect_typed_4xx(&target.send(&request)?)
            });
        }
    }
    // Runtime agent names are free text (not paths, not mesh names), so
    // only control characters and size are hostile there.
    for (label, value) in bad_names().into_iter().filter(|(label, _)| {
        [
            "NUL",
            "ESC sequence",
            "newline",
            "DEL",
            "C1 CSI",
            "a 10 KB string",
        ]
        .contains(label)
    }) {
        let request = RawRequest::new("POST", "/agents")
            .bearer(&target.token)
            .json(&json!({
                "name": value, "type": "command", "command": ["true"],
                "workdir": target.node.sandbox.path(),
            }));
        tally.case(format!("name: runtime agent name with {label}"), || {
            expect_typed_4xx(&target.send(&request)?)
        });
    }
    let id_routes: Vec<Route> = ROUTES
        .iter()
        .filter(|route| route.path.contains("{id}"))
        .copied()
        .collect();
    let mut segments: Vec<(String, String)> = bad_names()
        .into_iter()
        .map(|(label, value)| (label.to_owned(), encode_segment(&value)))
        .collect();
    for raw in [
        "../..",
        "%2e%2e%2f",
        "..%2f..%2fetc%2fpasswd",
        "%00",
        "/etc/passwd",
        "%ff%fe",
    ] {
        segments.push((format!("raw `{raw}` in the URL"), raw.to_owned()));
    }
    for route in &id_routes {
        for (label, segment) in &segments {
            let mut request = RawRequest::new(route.method, &route.path.replace("{id}", segment))
                .bearer(&target.token);
            if route.path == "/agents/{id}/send" {
                request = request.json(&json!({"message": "true", "timeout": 1000}));
            } else if route.method == "POST" {
                request = request.json(&json!({}));
            }
            if route.is_websocket() {
                request = request.websocket();
            }
            tally.case(format!("id: {} with {label}", route.name()), || {
                expect_typed_4xx(&target.send(&request)?)
            });
        }
    }
    tally.case("name: the broker keeps serving after hostile names", || {
        target.healthy()
    });
}

/// Prompts with control characters, with a tab/newline/return control.
pub fn prompts(tally: &Tally, target: &Target) {
    let hostile = [
        ("bracketed-paste end", "x\u{1b}[201~echo pasted"),
        ("bracketed-paste start", "x\u{1b}[200~echo pasted"),
        ("a bare ESC", "x\u{1b}y"),
        ("an OSC title sequence", "x\u{1b}]0;owned\u{7}y"),
        ("NUL", "x\u{0}y"),
        ("BEL", "x\u{7}y"),
        ("backspace", "x\u{8}y"),
        ("vertical tab", "x\u{b}y"),
        ("form feed", "x\u{c}y"),
        ("ctrl-C", "x\u{3}y"),
        ("ctrl-D", "x\u{4}y"),
        ("ctrl-U", "x\u{15}y"),
        ("C1 CSI", "x\u{9b}31my"),
        ("C1 NEL", "x\u{85}y"),
        ("C1 OSC", "x\u{9d}0;owned\u{9c}y"),
    ];
    let runtime_send = format!("/agents/{}/send", target.runtime_id);
    let routes: Vec<(&str, String, BodyOf)> = vec![
        (
            "POST /v1/invocations",
            "/v1/invocations".to_owned(),
            Box::new(|prompt| json!({"target": "@shell", "message": prompt, "timeout_ms": 5000})),
        ),
        (
            "POST /v1/work-orders",
            "/v1/work-orders".to_owned(),
            Box::new(|prompt| json!({"target": "@shell", "body": prompt, "timeout_ms": 5000})),
        ),
        (
            "POST /v1/work-orders/run-now",
            "/v1/work-orders/run-now".to_owned(),
            Box::new(|prompt| json!({"target": "@shell", "body": prompt, "timeout_ms": 5000})),
        ),
        (
            "POST /agents/{id}/send",
            runtime_send,
            Box::new(|prompt| json!({"message": prompt, "timeout": 2000})),
        ),
    ];
    for (route_name, path, body_of) in &routes {
        for (label, prompt) in hostile {
            let request = RawRequest::new("POST", path)
                .bearer(&target.token)
                .json(&body_of(prompt));
            tally.case(format!("prompt: {route_name} with {label}"), || {
                expect_code(&target.send(&request)?, 400, "INVALID_PROMPT")
            });
        }
        let request = RawRequest::new("POST", path)
            .bearer(&target.token)
            .json(&body_of("echo tab\there\r\nand a second line"));
        tally.case(
            format!("prompt: {route_name} accepts tab, newline and return"),
            || {
                let answer = target.send(&request)?;
                ensure(
                    answer.status < 500 && answer.code().as_deref() != Some("INVALID_PROMPT"),
                    || format!("a plain prompt was refused: {}", answer.summary()),
                )
            },
        );
    }
}

/// Idle connections held open at once.
const IDLE_CONNECTIONS: usize = 2_000;

/// Slowloris connections: each sends its request head one byte at a time
/// and never finishes it.
const SLOWLORIS_CONNECTIONS: usize = 64;

/// How long one connection attempt may take before the flood counts as
/// refused by the broker.
const CONNECT_BOUND: Duration = Duration::from_secs(10);

/// Files the test process holds besides the flood's sockets (pipes of the
/// brokers it runs, other groups' connections), with room to spare.
const FILES_HELD_OTHERWISE_MAX: usize = 512;

/// Pause between two rounds of slowloris bytes: the attack's own pace.
const SLOWLORIS_ROUND_PAUSE: Duration = Duration::from_millis(200);

/// 2,000 idle and 64 slowloris connections at once; `/health` still answers.
pub fn flood(tally: &Tally, target: &Target, open_files_limit: u64) {
    let names = [
        "flood: 2,000 idle connections open",
        "flood: /health answers with every idle and slowloris connection open",
        "flood: a token route answers during the flood",
        "flood: /health answers after the flood",
    ];
    let needed = (IDLE_CONNECTIONS + SLOWLORIS_CONNECTIONS + FILES_HELD_OTHERWISE_MAX) as u64;
    if open_files_limit < needed {
        let reason = format!(
            "this process may open {open_files_limit} files (its hard limit); the flood needs {needed}"
        );
        println!("skipping the connection flood: {reason}");
        for name in names {
            tally.skip(name, reason.clone());
        }
        return;
    }
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut open_error = None;
    for _ in 0..IDLE_CONNECTIONS {
        match TcpStream::connect_timeout(&target.addr, CONNECT_BOUND) {
            Ok(stream) => idle.push(stream),
            Err(err) => {
                open_error = Some(err.to_string());
                break;
            }
        }
    }
    tally.case(names[0], || {
        ensure(idle.len() == IDLE_CONNECTIONS, || {
            format!("opened {} then: {open_error:?}", idle.len())
        })
    });
    let head = format!("GET /health HTTP/1.1\r\nHost: {}\r\nX-Slow: ", target.addr);
    let mut slow = Vec::new();
    for _ in 0..SLOWLORIS_CONNECTIONS {
        let Ok(mut stream) = TcpStream::connect_timeout(&target.addr, CONNECT_BOUND) else {
            break;
        };
        let _ = stream.set_nodelay(true);
        for byte in head.as_bytes() {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
        }
        slow.push(stream);
    }
    let n_slow = slow.len();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let trickle = std::thread::spawn(move || {
        // One more header byte per connection per round, until told to stop.
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(SLOWLORIS_ROUND_PAUSE)
        {
            for stream in &mut slow {
                let _ = stream.write_all(b"a");
            }
        }
        slow
    });
    tally.case(
        "flood: /health answers with every idle and slowloris connection open",
        || {
            ensure(n_slow == SLOWLORIS_CONNECTIONS, || {
                format!("only {n_slow} slowloris connections opened")
            })?;
            target.healthy()
        },
    );
    tally.case(names[2], || {
        let answer = target.send(&RawRequest::new("GET", "/v1/agents").bearer(&target.token))?;
        ensure(answer.status == 200, || answer.summary())
    });
    let _ = stop_tx.send(());
    let slow = trickle.join().unwrap_or_default();
    drop(slow);
    drop(idle);
    tally.case("flood: /health answers after the flood", || {
        target.healthy()
    });
}
