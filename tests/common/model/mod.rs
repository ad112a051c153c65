//! Scripted model servers on 127.0.0.1: the real agent CLIs are pointed at
//! them (`ANTHROPIC_BASE_URL`, a Codex model provider's `base_url`,
//! Gemini's base URL), so the CLI is the real program and only the model's
//! answers are scripted. One server speaks one API ([`Api`]); a script is a
//! list of [`Step`]s, one per model request that asks for an answer, and
//! every request is recorded for the test to read.
//!
//! Each API lives in its own module and turns a [`Step`] into that API's
//! wire format (streaming and not): [`anthropic`] (Messages), [`openai`]
//! (Responses), [`gemini`] (generateContent).

pub mod anthropic;
pub mod gemini;
pub mod openai;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What the model does for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Answers with this text.
    Text(String),
    /// Asks the CLI to run a tool (for example `Bash` with
    /// `{"command": "echo hi"}`); the CLI's next request carries the result.
    ToolCall {
        /// The tool's name as the CLI declared it.
        name: String,
        /// Its arguments.
        input: Value,
    },
    /// Fails the request with this HTTP status and message, with a
    /// `retry-after` header (seconds) when given.
    Error {
        /// 401, 429, 500, ...
        status: u16,
        /// The API's error message.
        message: String,
        /// Seconds for `retry-after`.
        retry_after: Option<u64>,
    },
    /// Streams this text one word at a time, `delay` apart.
    Slow {
        /// The text.
        text: String,
        /// The pause between words.
        delay: Duration,
    },
    /// Starts answering and never finishes (for cancel tests).
    Hang,
}

/// Token counts every answer reports, so tests can check what Scout adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptedUsage {
    /// Input tokens (cached ones included).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
}

/// The usage every scripted answer reports.
pub const USAGE: ScriptedUsage = ScriptedUsage {
    input_tokens: 120,
    output_tokens: 30,
    cached_tokens: 40,
};

/// Which API a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Anthropic Messages (`POST /v1/messages`).
    Anthropic,
    /// OpenAI Responses (`POST /v1/responses`).
    OpenAi,
    /// Gemini (`POST /v1beta/models/{model}:streamGenerateContent`).
    Gemini,
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `POST /v1/messages`, ...
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Request headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Null` when it was not JSON).
    pub body: Value,
}

/// State shared by a server's handlers and the test.
#[derive(Debug, Default)]
pub struct Shared {
    script: Mutex<VecDeque<Step>>,
    fallback: Mutex<Option<Step>>,
    requests: Mutex<Vec<Recorded>>,
}

impl Shared {
    /// The step for the next model request: the script's next, or the
    /// fallback when the script is used up (`Text("ok")` unless set).
    pub fn next_step(&self) -> Step {
        let next = lock(&self.script).pop_front();
        next.unwrap_or_else(|| {
            lock(&self.fallback)
                .clone()
                .unwrap_or_else(|| Step::Text("ok".to_owned()))
        })
    }

    /// Records a request.
    pub fn record(&self, recorded: Recorded) {
        lock(&self.requests).push(recorded);
    }
}

/// A `text/event-stream` response whose body is what arrives on
/// `events`, until its sender is dropped (or the client goes away, which
/// fails the sender's next send). Every API streams through this.
pub fn event_stream(events: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> axum::response::Response {
    let body = futures_util::stream::unfold(events, |mut events| async move {
        events
            .recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), events))
    });
    axum::response::Response::builder()
        .status(axum::http::StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(axum::body::Body::from_stream(body))
        .expect("a valid response")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A running scripted server; stops when dropped.
pub struct ModelServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ModelServer {
    /// Starts a server for `api` answering with `steps` in order.
    pub fn start(api: Api, steps: Vec<Step>) -> ModelServer {
        let shared = Arc::new(Shared::default());
        *lock(&shared.script) = steps.into();
        let router = match api {
            Api::Anthropic => anthropic::router(shared.clone()),
            Api::OpenAi => openai::router(shared.clone()),
            Api::Gemini => gemini::router(shared.clone()),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind model server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        ModelServer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Appends steps to the script.
    pub fn push(&self, steps: impl IntoIterator<Item = Step>) {
        lock(&self.shared.script).extend(steps);
    }

    /// What to answer once the script is used up.
    pub fn set_fallback(&self, step: Step) {
        *lock(&self.shared.fallback) = Some(step);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Waits (with `bound`) until `done` holds for the recorded requests.
    pub fn wait_for(&self, bound: Duration, done: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let deadline = Instant::now() + bound;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "the model server did not see the expected requests within {bound:?}: {requests:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A hanging stream would keep graceful shutdown waiting; the thread
        // is left to end with the test process instead of joined.
        drop(self.thread.take());
    }
}

/// Asserts that `viewer`'s `scout usage --by node` shows `node` with
/// `flights` flights and the scripted [`USAGE`] of `requests` model
/// requests; the node's usage row, for further checks.
pub fn assert_node_usage(
    viewer: &super::Node,
    node: &str,
    flights: u64,
    requests: u64,
) -> serde_json::Value {
    let by_node = viewer.run(&["--json", "usage", "--since", "1d", "--by", "node"]);
    assert_eq!(by_node.code, 0, "{}", by_node.stderr);
    let totals = by_node.json();
    let row = totals["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|row| row["key"] == node)
        .unwrap_or_else(|| panic!("no row of {node}: {totals}"))
        .clone();
    assert_eq!(row["flights"], flights, "{totals}");
    let usage = &row["usage"];
    assert_eq!(
        (
            &usage["input_tokens"],
            &usage["output_tokens"],
            &usage["cached_tokens"]
        ),
        (
            &serde_json::json!(requests * USAGE.input_tokens),
            &serde_json::json!(requests * USAGE.output_tokens),
            &serde_json::json!(requests * USAGE.cached_tokens)
        ),
        "{totals}"
    );
    row
}
