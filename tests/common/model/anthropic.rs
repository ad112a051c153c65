//! The scripted Anthropic Messages API, as Claude Code (`claude`) calls it
//! through `ANTHROPIC_BASE_URL`.
//!
//! Routes:
//! - `POST /v1/messages` (Claude Code adds `?beta=true`): an answer, as
//!   server-sent events when the body says `"stream": true` (`message_start`
//!   with usage, `content_block_start`/`content_block_delta`/
//!   `content_block_stop` per text or `tool_use` block, the tool's input as
//!   one `input_json_delta`, `message_delta` with the stop reason and the
//!   output tokens, `message_stop`), else one JSON message.
//! - `POST /v1/messages/count_tokens`: `{"input_tokens": …}`.
//! - Anything else (the CLI's `HEAD /api/hello` reachability probe,
//!   telemetry batches when they are not turned off): `200 {}`.
//!
//! Which requests consume the script: a `POST /v1/messages` whose body
//! declares tools (a non-empty `tools` array) is a turn of the conversation
//! and takes the next [`Step`]. Claude Code's side calls to the model (a
//! session title, a quota probe, a summary) declare no tools; they get a
//! short text answer with zero usage and leave the script alone, so a test
//! scripts only the conversation. Every request, side calls included, is
//! recorded. What Claude Code 2.1.332 was seen to send, the TUI and `-p`
//! alike: one `HEAD /api/hello` per start, then only the conversation's
//! `POST /v1/messages?beta=true` (streaming, with its ~12 tools); with
//! `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC` (see [`claude_env`]) not even
//! the probe. The first-run reachability check goes to `api.anthropic.com`
//! itself, never here.
//!
//! Usage: every scripted answer reports [`super::USAGE`] in Anthropic's
//! terms: `input_tokens` is the uncached part (`USAGE.input_tokens -
//! USAGE.cached_tokens`), `cache_read_input_tokens` the cached part, and
//! `output_tokens` arrives with `message_delta` (the start says 1, as the
//! real API does before the first token).
//!
//! Errors use the API's shape, `{"type":"error","error":{"type":…,
//! "message":…}}`, with the step's status (`authentication_error` for 401,
//! `rate_limit_error` for 429, `api_error` otherwise) and its `retry-after`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Recorded, Shared, Step, USAGE};

/// Server-sent events buffered between the script and the connection: a
/// scripted answer is a handful of events, and a slow reader only delays
/// the script's task.
const SSE_EVENTS_BUFFERED_MAX: usize = 64;

/// The model named in answers when the request names none.
const DEFAULT_MODEL: &str = "claude-scripted";

/// The routes of this API over `shared`.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

/// Tool-use ids unique within the test process.
static NEXT_TOOL_USE: AtomicU64 = AtomicU64::new(1);

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.record(Recorded {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });
    match (method, uri.path()) {
        (Method::POST, "/v1/messages") => messages(&shared, &body).await,
        (Method::POST, "/v1/messages/count_tokens") => {
            axum::Json(json!({ "input_tokens": USAGE.input_tokens })).into_response()
        }
        _ => axum::Json(json!({})).into_response(),
    }
}

/// Whether a messages request is a turn of the conversation (see the
/// module documentation).
pub fn is_conversation_request(body: &Value) -> bool {
    body["tools"]
        .as_array()
        .is_some_and(|tools| !tools.is_empty())
}

async fn messages(shared: &Shared, body: &Value) -> Response {
    let model = body["model"].as_str().unwrap_or(DEFAULT_MODEL).to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let (step, usage) = if is_conversation_request(body) {
        (shared.next_step(), scripted_usage())
    } else {
        (Step::Text("ok".to_owned()), zero_usage())
    };
    if let Step::Error {
        status,
        message,
        retry_after,
    } = &step
    {
        return error_response(*status, message, *retry_after);
    }
    if stream {
        stream_answer(step, model, usage)
    } else {
        json_answer(step, model, usage).await
    }
}

fn scripted_usage() -> Value {
    json!({
        "input_tokens": USAGE.input_tokens - USAGE.cached_tokens,
        "cache_read_input_tokens": USAGE.cached_tokens,
        "cache_creation_input_tokens": 0,
        "output_tokens": USAGE.output_tokens,
    })
}

fn zero_usage() -> Value {
    json!({
        "input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "output_tokens": 0,
    })
}

fn error_response(status: u16, message: &str, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let mut response = (
        status,
        axum::Json(json!({
            "type": "error",
            "error": { "type": kind, "message": message },
        })),
    )
        .into_response();
    if let Some(seconds) = retry_after
        && let Ok(value) = seconds.to_string().parse()
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

fn message_id() -> String {
    format!(
        "msg_scripted_{}",
        NEXT_TOOL_USE.fetch_add(1, Ordering::Relaxed)
    )
}

/// The content block and stop reason of a step (errors are answered
/// before this).
fn content_of(step: &Step) -> (Value, &'static str) {
    match step {
        Step::ToolCall { name, input } => (
            json!({
                "type": "tool_use",
                "id": format!("toolu_scripted_{}", NEXT_TOOL_USE.fetch_add(1, Ordering::Relaxed)),
                "name": name,
                "input": input,
            }),
            "tool_use",
        ),
        Step::Text(text) | Step::Slow { text, .. } => {
            (json!({ "type": "text", "text": text }), "end_turn")
        }
        Step::Hang | Step::Error { .. } => (json!({ "type": "text", "text": "" }), "end_turn"),
    }
}

async fn json_answer(step: Step, model: String, usage: Value) -> Response {
    if step == Step::Hang {
        std::future::pending::<()>().await;
    }
    let (block, stop_reason) = content_of(&step);
    axum::Json(json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage,
    }))
    .into_response()
}

fn sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn stream_answer(step: Step, model: String, usage: Value) -> Response {
    let (events, rx) = mpsc::channel::<Bytes>(SSE_EVENTS_BUFFERED_MAX);
    tokio::spawn(async move {
        // A send fails only when the client has gone; the script then ends.
        let _ = write_events(&events, step, model, usage).await;
    });
    super::event_stream(rx)
}

type Closed = mpsc::error::SendError<Bytes>;

async fn write_events(
    events: &mpsc::Sender<Bytes>,
    step: Step,
    model: String,
    usage: Value,
) -> Result<(), Closed> {
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(usage["output_tokens"].as_u64().map_or(0, |n| n.min(1)));
    let start = json!({
        "type": "message_start",
        "message": {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": start_usage,
        },
    });
    events.send(sse("message_start", &start)).await?;
    if step == Step::Hang {
        // Keep the connection open, silent, until the client goes away.
        events.closed().await;
        return Ok(());
    }
    let (block, stop_reason) = content_of(&step);
    let empty_block = match block["type"].as_str() {
        Some("tool_use") => json!({
            "type": "tool_use", "id": block["id"], "name": block["name"], "input": {},
        }),
        _ => json!({ "type": "text", "text": "" }),
    };
    events
        .send(sse(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": 0, "content_block": empty_block }),
        ))
        .await?;
    for delta in deltas(&step, &block) {
        if let Some(pause) = delta.pause {
            tokio::time::sleep(pause).await;
        }
        events
            .send(sse(
                "content_block_delta",
                &json!({ "type": "content_block_delta", "index": 0, "delta": delta.delta }),
            ))
            .await?;
    }
    events
        .send(sse(
            "content_block_stop",
            &json!({ "type": "content_block_stop", "index": 0 }),
        ))
        .await?;
    events
        .send(sse(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": { "stop_reason": stop_reason, "stop_sequence": null },
                "usage": usage,
            }),
        ))
        .await?;
    events
        .send(sse("message_stop", &json!({ "type": "message_stop" })))
        .await
}

struct Delta {
    pause: Option<Duration>,
    delta: Value,
}

/// The deltas of a step's one content block: the tool's input as one JSON
/// fragment, a text whole, or a slow text word by word.
fn deltas(step: &Step, block: &Value) -> Vec<Delta> {
    match step {
        Step::ToolCall { input, .. } => vec![Delta {
            pause: None,
            delta: json!({ "type": "input_json_delta", "partial_json": input.to_string() }),
        }],
        Step::Slow { text, delay } => text
            .split_inclusive(' ')
            .enumerate()
            .map(|(idx, word)| Delta {
                pause: (idx > 0).then_some(*delay),
                delta: json!({ "type": "text_delta", "text": word }),
            })
            .collect(),
        _ => vec![Delta {
            pause: None,
            delta: json!({ "type": "text_delta", "text": block["text"] }),
        }],
    }
}

/// The API key tests give Claude Code. Twenty characters at most, so that
/// the CLI's record of an approved key (the key's last 20 characters) is
/// the whole key.
pub const CLAUDE_API_KEY: &str = "sk-scripted-key";

/// Retries of a failed model request Claude Code makes before it gives up
/// (`CLAUDE_CODE_MAX_RETRIES`): one, so error tests end quickly yet still
/// go through the CLI's retry path.
pub const CLAUDE_MAX_RETRIES: &str = "1";

/// The environment that points Claude Code at the server at `base_url`: its
/// own `home` (config in `home/.claude`), `key` (`None`: no credentials at
/// all, also none inherited from the machine), and none of the traffic a
/// test does not script (auto-update, telemetry, error reports, other
/// non-essential calls).
pub fn claude_env(
    base_url: &str,
    home: &std::path::Path,
    key: Option<&str>,
) -> Vec<(String, String)> {
    [
        ("HOME", home.display().to_string()),
        (
            "CLAUDE_CONFIG_DIR",
            home.join(".claude").display().to_string(),
        ),
        ("ANTHROPIC_BASE_URL", base_url.to_owned()),
        ("ANTHROPIC_API_KEY", key.unwrap_or("").to_owned()),
        ("ANTHROPIC_AUTH_TOKEN", String::new()),
        ("CLAUDE_CODE_OAUTH_TOKEN", String::new()),
        ("DISABLE_AUTOUPDATER", "1".to_owned()),
        ("DISABLE_TELEMETRY", "1".to_owned()),
        ("DISABLE_ERROR_REPORTING", "1".to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
        ("CLAUDE_CODE_MAX_RETRIES", CLAUDE_MAX_RETRIES.to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// Records in `home/.claude/.claude.json` what a person's first
/// interactive run would: onboarding done, `key` approved, `workdir`
/// trusted. Without these the TUI stops at its first-run screens (or exits
/// where `api.anthropic.com` is unreachable).
pub fn finish_claude_onboarding(home: &std::path::Path, workdir: &std::path::Path, key: &str) {
    let config = json!({
        "hasCompletedOnboarding": true,
        "customApiKeyResponses": { "approved": [key], "rejected": [] },
        "projects": { workdir.display().to_string(): { "hasTrustDialogAccepted": true } },
    });
    std::fs::create_dir_all(home.join(".claude")).expect("claude config dir");
    std::fs::write(home.join(".claude/.claude.json"), config.to_string())
        .expect("write .claude.json");
}
