//! A client of one broker's local runtime API (`/agents`, its WebSockets)
//! for the end-to-end tests, and the test agent it spawns.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

use super::{BrokerProcess, Sandbox, WAIT_BOUND, wait_until};

/// A WebSocket to the broker.
pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// The test agent, built next to the `scout` binary.
pub fn test_agent() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_scout")).with_file_name("scout-test-agent");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p scout-test-agent` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// A client of one broker's API, with its token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    http: ureq::Agent,
}

impl Api {
    pub fn new(broker: &BrokerProcess, sandbox: &Sandbox) -> Api {
        Api {
            base: broker.http_base(),
            token: sandbox.token(),
            // A send may run as long as its own timeout; the bound is for hangs.
            http: ureq::AgentBuilder::new().timeout(2 * WAIT_BOUND).build(),
        }
    }

    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.http
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let request = self.request(method, path);
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        answer(result)
    }

    pub fn raw(&self, request: ureq::Request, body: &str) -> (u16, Value) {
        answer(request.send_string(body))
    }

    pub fn spawn_test_agent(&self, workdir: &Path) -> String {
        let (status, agent) = self.call(
            "POST",
            "/agents",
            Some(json!({
                "name": "my-agent",
                "type": "command",
                "workdir": workdir,
                "command": [test_agent()],
                "promptPattern": "^>$",
            })),
        );
        assert_eq!(status, 201, "{agent}");
        let id = agent["id"].as_str().unwrap().to_owned();
        self.wait_status(&id, "ready");
        id
    }

    pub fn wait_status(&self, id: &str, status: &str) -> Value {
        wait_until(&format!("{id} to be {status}"), || {
            let (_, agent) = self.call("GET", &format!("/agents/{id}"), None);
            (agent["status"] == status).then_some(agent)
        })
    }

    pub fn ws(&self, path_and_query: &str, with_header: bool) -> Result<Ws, tungstenite::Error> {
        let url = format!("{}{path_and_query}", self.base.replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        if with_header {
            request.headers_mut().insert(
                "Authorization",
                format!("Bearer {}", self.token).parse().unwrap(),
            );
        }
        let (mut ws, _) = tungstenite::connect(request)?;
        if let MaybeTlsStream::Plain(stream) = ws.get_mut() {
            stream.set_read_timeout(Some(WAIT_BOUND)).unwrap();
        }
        Ok(ws)
    }
}

pub fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match result {
        Ok(response) => (
            response.status(),
            response.into_json().unwrap_or(Value::Null),
        ),
        Err(ureq::Error::Status(status, response)) => {
            (status, response.into_json().unwrap_or(Value::Null))
        }
        Err(err) => panic!("transport error: {err}"),
    }
}

/// The next text frame (panics on anything else).
pub fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a frame") {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Reads frames (text, or binary read as UTF-8) until what was read
/// contains `needle`; returns everything read.
pub fn read_until(ws: &mut Ws, needle: &str) -> String {
    let deadline = Instant::now() + WAIT_BOUND;
    let mut seen = String::new();
    while !seen.contains(needle) {
        assert!(
            Instant::now() < deadline,
            "never saw {needle:?} in {seen:?}"
        );
        match ws.read().expect("a frame") {
            Message::Text(text) => seen.push_str(&text),
            Message::Binary(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected output, got {other:?}"),
        }
    }
    seen
}
