//! The scripted OpenAI Responses API, as the Codex CLI speaks it with a
//! custom model provider (`wire_api = "responses"`, `base_url` ending in
//! `/v1`).
//!
//! Which requests consume a step: only `POST /v1/responses` (one model
//! request, the first of a turn or the follow-up that carries a tool's
//! output) takes the script's next [`Step`]. Everything else is recorded
//! and answered without touching the script:
//! - `GET /v1/models`: an empty model list (the CLI then uses its built-in
//!   metadata for the configured model);
//! - a WebSocket upgrade (`GET /v1/responses` with `upgrade: websocket`,
//!   which the CLI tries first when a provider says `supports_websockets`):
//!   `426 Upgrade Required`, after which the CLI falls back to HTTPS
//!   streaming;
//! - anything else: `404` in OpenAI's error shape.
//!
//! Answers stream as server-sent events: `response.created`,
//! `response.output_item.added`, `response.output_text.delta` (one, or one
//! per word for [`Step::Slow`]), `response.output_item.done` (the message,
//! or a `function_call` item for [`Step::ToolCall`]) and
//! `response.completed` with [`super::USAGE`]. [`Step::Hang`] sends
//! `response.created` and then nothing until the client goes away.
//! [`Step::Error`] answers with the step's status, OpenAI's error JSON
//! (`{"error": {"message", "type", "code", "param"}}`) and `retry-after`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Recorded, Shared, Step, USAGE};

/// Events queued between the answering task and the response body; a
/// scripted answer is a handful of events, so the writer never waits long.
const EVENTS_QUEUED_MAX: usize = 64;

/// Numbers response, message and call ids, so that every id the server
/// hands out is unique within the test process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id(prefix: &str) -> String {
    format!("{prefix}_{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// The routes of this API over `shared`.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    shared.record(Recorded {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let route = uri.path().trim_end_matches('/');
    let upgrade = headers
        .get("upgrade")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
    match (method, route) {
        (_, "/v1/responses" | "/responses") if upgrade => error_response(
            StatusCode::UPGRADE_REQUIRED,
            "this server streams over HTTPS only",
            None,
        ),
        (Method::POST, "/v1/responses" | "/responses") => answer(shared.next_step()),
        (Method::GET, "/v1/models" | "/models") => json_response(
            StatusCode::OK,
            &json!({ "object": "list", "data": [], "models": [] }),
        ),
        _ => error_response(
            StatusCode::NOT_FOUND,
            &format!("no route for {path} on the scripted server"),
            None,
        ),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

/// OpenAI's error shape, with the `type` and `code` the API uses for the
/// status, so the CLI reads it the way it reads the real service's.
fn error_response(status: StatusCode, message: &str, retry_after: Option<u64>) -> Response {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", "invalid_api_key"),
        404 => ("invalid_request_error", "not_found"),
        426 => ("invalid_request_error", "upgrade_required"),
        429 => ("requests", "rate_limit_exceeded"),
        _ => ("server_error", "server_error"),
    };
    let body = json!({
        "error": { "message": message, "type": kind, "code": code, "param": null }
    });
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(seconds) = retry_after {
        builder = builder.header("retry-after", seconds.to_string());
    }
    builder
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

/// One model request answered with `step`.
fn answer(step: Step) -> Response {
    if let Step::Error {
        status,
        message,
        retry_after,
    } = &step
    {
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error_response(status, message, *retry_after);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(EVENTS_QUEUED_MAX);
    tokio::spawn(stream_step(step, tx));
    super::event_stream(rx)
}

/// One server-sent event: its name and its JSON data, which repeats the
/// name as `type` the way the API does.
fn event(name: &str, mut data: Value) -> Bytes {
    data["type"] = Value::from(name);
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn usage() -> Value {
    json!({
        "input_tokens": USAGE.input_tokens,
        "input_tokens_details": { "cached_tokens": USAGE.cached_tokens },
        "output_tokens": USAGE.output_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": USAGE.input_tokens + USAGE.output_tokens,
    })
}

/// Writes the events of `step` into the body; stops quietly when the client
/// goes away.
async fn stream_step(step: Step, tx: mpsc::Sender<Bytes>) {
    let response_id = next_id("resp");
    let created = json!({
        "response": { "id": response_id, "object": "response", "status": "in_progress", "output": [] }
    });
    if tx.send(event("response.created", created)).await.is_err() {
        return;
    }
    let item = match step {
        Step::Text(text) => match stream_message(&tx, vec![text], None).await {
            Some(item) => item,
            None => return,
        },
        Step::Slow { text, delay } => {
            // Word by word, each word keeping the space that follows it, so
            // the deltas add up to the text.
            let words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
            match stream_message(&tx, words, Some(delay)).await {
                Some(item) => item,
                None => return,
            }
        }
        Step::ToolCall { name, input } => {
            let added = json!({
                "type": "function_call", "id": next_id("fc"), "call_id": next_id("call"),
                "name": name, "arguments": "", "status": "in_progress",
            });
            let mut done = added.clone();
            done["arguments"] = Value::from(input.to_string());
            done["status"] = Value::from("completed");
            let sent = tx
                .send(event(
                    "response.output_item.added",
                    json!({ "output_index": 0, "item": added }),
                ))
                .await;
            if sent.is_err()
                || tx
                    .send(event(
                        "response.output_item.done",
                        json!({ "output_index": 0, "item": done }),
                    ))
                    .await
                    .is_err()
            {
                return;
            }
            done
        }
        Step::Hang => {
            // Keep the body open until the client gives up on it.
            tx.closed().await;
            return;
        }
        Step::Error { .. } => return,
    };
    let completed = json!({
        "response": {
            "id": response_id, "object": "response", "status": "completed",
            "output": [item], "usage": usage(),
        }
    });
    let _ = tx.send(event("response.completed", completed)).await;
}

/// Streams an assistant message made of `parts` (one delta each, `delay`
/// apart) and returns the finished message item, or `None` when the client
/// went away.
async fn stream_message(
    tx: &mpsc::Sender<Bytes>,
    parts: Vec<String>,
    delay: Option<std::time::Duration>,
) -> Option<Value> {
    let message_id = next_id("msg");
    let added = json!({
        "type": "message", "id": message_id, "role": "assistant",
        "status": "in_progress", "content": [],
    });
    tx.send(event(
        "response.output_item.added",
        json!({ "output_index": 0, "item": added }),
    ))
    .await
    .ok()?;
    let mut text = String::new();
    for (idx, part) in parts.iter().enumerate() {
        if idx > 0
            && let Some(delay) = delay
        {
            tokio::time::sleep(delay).await;
        }
        text.push_str(part);
        tx.send(event(
            "response.output_text.delta",
            json!({
                "item_id": message_id, "output_index": 0, "content_index": 0, "delta": part,
            }),
        ))
        .await
        .ok()?;
    }
    let done = json!({
        "type": "message", "id": message_id, "role": "assistant", "status": "completed",
        "content": [{ "type": "output_text", "text": text, "annotations": [] }],
    });
    tx.send(event(
        "response.output_item.done",
        json!({ "output_index": 0, "item": done.clone() }),
    ))
    .await
    .ok()?;
    Some(done)
}
