//! The scripted Gemini API (the `generativelanguage` v1beta surface that
//! Gemini CLI calls through `@google/genai`). Point the CLI at it with
//! [`env`] and an isolated home prepared by [`configure_home`].
//!
//! Routes (any API version prefix, `/v1beta/models/{model}:{method}`):
//! - `:streamGenerateContent?alt=sse`: the conversation. Each request takes
//!   the next [`Step`] and answers with server-sent events, one
//!   `GenerateContentResponse` per `data:` line: text or a `functionCall` in
//!   `candidates[0].content.parts`, then a last chunk with `finishReason`
//!   and `usageMetadata` from [`USAGE`].
//! - `:generateContent`: side calls. Gemini CLI 0.61 uses the non-streaming
//!   method only for its utility requests (every turn: model routing's
//!   complexity classifier on a flash-lite model; when they apply: the
//!   next-speaker check, history compression, loop detection); its
//!   conversation always streams.
//! - `:countTokens`: an estimate of four characters per token.
//! - Anything else: a 404 in Google's error shape.
//!
//! The rule for steps: only `:streamGenerateContent` requests consume a
//! step; side calls never do, so a script lists exactly the conversation's
//! answers whatever utility requests the CLI makes around them. A side call
//! that asks for JSON (`responseJsonSchema` or `responseSchema`) gets an
//! object built from the schema (the first `enum` value, so the
//! next-speaker check says `user` and the turn ends); one that asks for
//! text gets a fixed sentence. Side calls report no `usageMetadata`, so the
//! CLI's token totals are exactly [`USAGE`] times the conversation requests.
//!
//! Errors use Google's shape, `{"error":{"code":429,"message":"…",
//! "status":"RESOURCE_EXHAUSTED"}}`, with the step's HTTP status and a
//! `retry-after` header when the step has one. `Slow` streams one word per
//! chunk; `Hang` sends its first chunk and then keeps the stream open
//! without another byte.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::{ModelServer, Recorded, Shared, Step, USAGE};

/// The text answer of a side call that does not ask for JSON (a
/// compression summary, a session title).
pub const SIDE_CALL_TEXT: &str = "Scripted summary.";

/// The API key the tests give the CLI; the server accepts any key.
pub const API_KEY: &str = "scripted-gemini-key";

/// How deep the schema-shaped answer of a side call goes: far more than any
/// schema Gemini CLI sends (two levels), and a bound against a schema that
/// refers to itself.
const SCHEMA_DEPTH: usize = 8;

/// The routes of this API over `shared`.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let shared = shared.clone();
            async move { handle(&shared, method, uri, headers, body) }
        },
    )
}

/// The environment that runs Gemini CLI in `home` (prepared by
/// [`configure_home`]) against `server` with an API key.
/// `GOOGLE_GEMINI_BASE_URL` is honoured for the `gemini-api-key` auth type
/// (plain `http` only on loopback); the key travels as `x-goog-api-key`.
/// The other ways of choosing an account are blanked (the CLI treats an
/// empty variable as unset), so nothing of the machine's user leaks in.
pub fn env(server: &ModelServer, home: &Path) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME".to_owned(), home.display().to_string()),
        ("GOOGLE_GEMINI_BASE_URL".to_owned(), server.url()),
        ("GEMINI_API_KEY".to_owned(), API_KEY.to_owned()),
        // The machine's system settings (`/etc/gemini-cli`) stay out.
        (
            "GEMINI_CLI_SYSTEM_SETTINGS_PATH".to_owned(),
            home.join(".gemini/system-settings.json")
                .display()
                .to_string(),
        ),
    ];
    for blank in BLANKED {
        env.push(((*blank).to_owned(), String::new()));
    }
    env
}

/// Variables that would choose another account or endpoint than the
/// scripted server's.
pub const BLANKED: &[&str] = &[
    "GOOGLE_API_KEY",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_USE_GCA",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_VERTEX_BASE_URL",
    "GEMINI_MODEL",
    "GEMINI_CLI_TRUST_WORKSPACE",
    "CLOUD_SHELL",
    "GEMINI_CLI_USE_COMPUTE_ADC",
];

/// The user settings the tests give Gemini CLI (`~/.gemini/settings.json`):
/// API-key auth selected (without it the CLI reads `GOOGLE_GEMINI_BASE_URL`
/// as a gateway and refuses the auth type), no telemetry, no usage
/// statistics, no update checks or nags, no session cleanup racing the
/// test, and one attempt per request so a scripted error fails the turn
/// instead of being retried ten times with backoff.
pub fn settings() -> Value {
    json!({
        "security": { "auth": { "selectedType": "gemini-api-key" } },
        "general": {
            "enableAutoUpdate": false,
            "enableAutoUpdateNotification": false,
            "maxAttempts": 1,
            "sessionRetention": { "enabled": false }
        },
        "privacy": { "usageStatisticsEnabled": false },
        "telemetry": { "enabled": false },
        "ide": { "enabled": false, "hasSeenNudge": true },
        "ui": { "hideTips": true }
    })
}

/// Writes [`settings`] into `home/.gemini/settings.json` and makes the
/// temp dir [`env`] names.
pub fn configure_home(home: &Path) {
    let dir = home.join(".gemini");
    std::fs::create_dir_all(&dir).expect("create ~/.gemini");
    std::fs::create_dir_all(home.join("tmp")).expect("create the temp dir");
    let text = serde_json::to_string_pretty(&settings()).expect("settings json");
    std::fs::write(dir.join("settings.json"), text).expect("write settings.json");
}

/// The requests that consumed a step (the conversation), in order.
pub fn conversation(requests: &[Recorded]) -> Vec<&Recorded> {
    requests
        .iter()
        .filter(|request| request.path.contains(":streamGenerateContent"))
        .collect()
}

/// Every text part of a request's `contents`, in order (the conversation
/// history the CLI sent).
pub fn texts(request: &Recorded) -> Vec<String> {
    let mut out = Vec::new();
    for content in request.body["contents"].as_array().into_iter().flatten() {
        for part in content["parts"].as_array().into_iter().flatten() {
            if let Some(text) = part["text"].as_str() {
                out.push(text.to_owned());
            }
        }
    }
    out
}

/// The `functionResponse` parts of a request's `contents` (tool results
/// the CLI sends back to the model).
pub fn function_responses(request: &Recorded) -> Vec<Value> {
    let mut out = Vec::new();
    for content in request.body["contents"].as_array().into_iter().flatten() {
        for part in content["parts"].as_array().into_iter().flatten() {
            if !part["functionResponse"].is_null() {
                out.push(part["functionResponse"].clone());
            }
        }
    }
    out
}

/// The names of the functions a request declares as tools.
pub fn declared_tools(request: &Recorded) -> Vec<String> {
    let mut out = Vec::new();
    for tool in request.body["tools"].as_array().into_iter().flatten() {
        for function in tool["functionDeclarations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(name) = function["name"].as_str() {
                out.push(name.to_owned());
            }
        }
    }
    out
}

fn handle(shared: &Shared, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| uri.path().to_owned());
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
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
        body: body.clone(),
    });
    let action = uri
        .path()
        .rsplit_once(':')
        .map(|(_, action)| action)
        .unwrap_or("");
    match (method, action) {
        (Method::POST, "streamGenerateContent") => stream(shared.next_step()),
        (Method::POST, "generateContent") => json_response(StatusCode::OK, side_call(&body)),
        (Method::POST, "countTokens") => json_response(
            StatusCode::OK,
            json!({ "totalTokens": count_tokens(&body) }),
        ),
        _ => error(
            404,
            &format!("{} is not a method of the scripted Gemini API", uri.path()),
            None,
        ),
    }
}

/// The answer to a conversation request.
fn stream(step: Step) -> Response {
    match step {
        Step::Text(text) => sse(vec![text_chunk(&text), finish_chunk()], false, None),
        Step::ToolCall { name, input } => {
            let call = json!({
                "candidates": [{
                    "content": {
                        "role": "model",
                        "parts": [{ "functionCall": { "name": name, "args": input } }]
                    },
                    "index": 0
                }]
            });
            sse(vec![call, finish_chunk()], false, None)
        }
        Step::Error {
            status,
            message,
            retry_after,
        } => error(status, &message, retry_after),
        Step::Slow { text, delay } => {
            let mut chunks: Vec<Value> = words(&text).iter().map(|word| text_chunk(word)).collect();
            chunks.push(finish_chunk());
            sse(chunks, false, Some(delay))
        }
        Step::Hang => sse(vec![text_chunk("Working on it")], true, None),
    }
}

/// `text` split after each run of spaces, so the pieces join back to it.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if ch != ' ' && current.ends_with(' ') {
            out.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn text_chunk(text: &str) -> Value {
    json!({
        "candidates": [{
            "content": { "role": "model", "parts": [{ "text": text }] },
            "index": 0
        }]
    })
}

/// The last chunk of an answer: why it stopped and what it cost.
fn finish_chunk() -> Value {
    json!({
        "candidates": [{
            "content": { "role": "model", "parts": [{ "text": "" }] },
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": usage_metadata(),
        "modelVersion": "scripted-gemini"
    })
}

fn usage_metadata() -> Value {
    json!({
        "promptTokenCount": USAGE.input_tokens,
        "candidatesTokenCount": USAGE.output_tokens,
        "cachedContentTokenCount": USAGE.cached_tokens,
        "totalTokenCount": USAGE.input_tokens + USAGE.output_tokens,
    })
}

/// A server-sent-events response of `chunks`, `delay` apart; with `hang`
/// the stream stays open after the last chunk.
fn sse(chunks: Vec<Value>, hang: bool, delay: Option<Duration>) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(chunks.len().max(1));
    tokio::spawn(async move {
        for (index, chunk) in chunks.iter().enumerate() {
            if index > 0
                && let Some(delay) = delay
            {
                tokio::time::sleep(delay).await;
            }
            let line = format!("data: {chunk}\r\n\r\n");
            if sender.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
        if hang {
            // Holding the sender keeps the response open until the client
            // goes away (the send fails then) or the server stops.
            sender.closed().await;
        }
    });
    super::event_stream(receiver)
}

/// Google's error shape with `status`'s canonical code name.
fn error(status: u16, message: &str, retry_after: Option<u64>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "error": {
            "code": code.as_u16(),
            "message": message,
            "status": status_name(code.as_u16()),
        }
    });
    let mut response = json_response(code, body);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The `google.rpc.Code` name Google's APIs send with an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The answer to a side call: JSON shaped by the requested schema, or text.
fn side_call(body: &Value) -> Value {
    let config = &body["generationConfig"];
    let schema = [&config["responseJsonSchema"], &config["responseSchema"]]
        .into_iter()
        .find(|schema| schema.is_object());
    let text = match schema {
        Some(schema) => from_schema(schema, 0).to_string(),
        None => SIDE_CALL_TEXT.to_owned(),
    };
    json!({
        "candidates": [{
            "content": { "role": "model", "parts": [{ "text": text }] },
            "finishReason": "STOP",
            "index": 0
        }],
        "modelVersion": "scripted-gemini"
    })
}

/// A value that satisfies `schema` (JSON Schema or Gemini's OpenAPI subset,
/// whose type names are upper case): every property, the first `enum`
/// value, the smallest allowed number.
fn from_schema(schema: &Value, depth: usize) -> Value {
    if depth > SCHEMA_DEPTH {
        return Value::Null;
    }
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.clone();
    }
    let kind = schema["type"]
        .as_str()
        .unwrap_or("object")
        .to_ascii_lowercase();
    match kind.as_str() {
        "object" => {
            let mut object = serde_json::Map::new();
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                object.insert(name.clone(), from_schema(property, depth + 1));
            }
            Value::Object(object)
        }
        "array" => json!([from_schema(&schema["items"], depth + 1)]),
        "integer" | "number" => schema
            .get("minimum")
            .filter(|minimum| minimum.is_number())
            .cloned()
            .unwrap_or(json!(1)),
        "boolean" => json!(false),
        _ => json!("scripted"),
    }
}

/// About four characters per token over every text of the request.
fn count_tokens(body: &Value) -> u64 {
    let mut chars = 0usize;
    for content in body["contents"].as_array().into_iter().flatten() {
        for part in content["parts"].as_array().into_iter().flatten() {
            chars += part["text"].as_str().map_or(0, str::len);
        }
    }
    (chars as u64).div_ceil(4)
}
