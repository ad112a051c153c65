//! The local runtime's routes, at the root as its API page has them:
//! `POST /agents`, `GET /agents`, `GET /agents/{id}`,
//! `POST /agents/{id}/send`, `GET /agents/{id}/logs?lines=N`,
//! `GET /agents/{id}/stream` (SSE), `DELETE /agents/{id}`,
//! `POST /agents/{id}/take` and `POST /agents/{id}/release` (a person holds
//! the agent; routed turns wait), and the WebSockets
//! `/ws/agents/{id}/terminal` (raw terminal I/O, JSON control frames, and
//! the transcript of structured turns) and `/ws/events[?agentId=]`.
//!
//! Nothing here buffers without bound: a WebSocket or SSE client that reads
//! too slowly skips output (and gets a fresh screen) or events (and is told
//! how many), and one that stops reading altogether is disconnected after
//! [`WS_SEND_TIMEOUT`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::stream::StreamExt;
use futures_util::{Sink, SinkExt, Stream};
use scout_mesh::lifecycle::Harness;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::error::{ApiError, JsonBody, PathId};
use crate::adapter::AdapterOptions;
use crate::daemon::BrokerState;
use crate::pty::events::{RuntimeEvent, rfc3339};
use crate::pty::manager::TIMEOUT_MS_MAX;
use crate::pty::process::OutputChunk;
use crate::pty::session::{Attachment, TranscriptChunk, wait_true};
use crate::pty::text::{PlainText, Utf8Decoder};
use crate::pty::transcript;
use crate::pty::{RuntimeError, Session, SpawnRequest, TermSize};

/// Lines `logs` returns unless `lines=` says otherwise.
pub const LOG_LINES_DEFAULT: usize = 100;

/// The most lines `logs` returns: more than a session keeps.
pub const LOG_LINES_MAX: usize = 10_000;

/// Largest WebSocket message accepted from a client: keystrokes and pastes,
/// never bulk data.
pub const WS_MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// Bytes the WebSocket layer may hold for one slow client before a send
/// waits; together with [`WS_SEND_TIMEOUT`] this bounds a stalled client.
pub const WS_WRITE_BUFFER_BYTES_MAX: usize = 1024 * 1024;

/// Output already queued for a terminal client is sent in one frame up to
/// this size: fewer frames (and system calls) under a flood.
pub const WS_FRAME_BYTES_TARGET: usize = 64 * 1024;

/// How long one send to a WebSocket client may wait before the client is
/// considered gone and disconnected.
pub const WS_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an idle SSE stream sends a comment, so proxies keep it open.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The routes of this family (at the root, behind the token check).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/agents", only(get(list).post(spawn)))
        .route("/agents/{id}", only(get(show).delete(stop)))
        .route("/agents/{id}/send", only(post(send)))
        .route("/agents/{id}/logs", only(get(logs)))
        .route("/agents/{id}/stream", only(get(stream)))
        .route("/agents/{id}/take", only(post(take)))
        .route("/agents/{id}/release", only(post(release)))
        .route("/ws/agents/{id}/terminal", only(get(terminal)))
        .route("/ws/events", only(get(events)))
}

/// Answers methods a route does not have in the API's error shape.
fn only(router: MethodRouter<Arc<BrokerState>>) -> MethodRouter<Arc<BrokerState>> {
    router.fallback(|request: axum::extract::Request| async move {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!(
                "{} is not allowed on {}",
                request.method(),
                request.uri().path()
            ),
        )
    })
}

/// The HTTP status of each runtime error.
pub fn api_error(err: RuntimeError) -> ApiError {
    let status = match &err {
        RuntimeError::AgentNotFound(_) => StatusCode::NOT_FOUND,
        RuntimeError::InvalidRequest(_) | RuntimeError::InvalidPrompt(_) => StatusCode::BAD_REQUEST,
        RuntimeError::InvalidWorkdir { .. } | RuntimeError::CliNotFound { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        // Not 401: that is the broker's own token. The agent's CLI needs a
        // login before the request can succeed.
        RuntimeError::AuthRequired { .. } | RuntimeError::OnboardingRequired(_) => {
            StatusCode::FAILED_DEPENDENCY
        }
        RuntimeError::MaxAgents { .. } => StatusCode::TOO_MANY_REQUESTS,
        RuntimeError::SpawnFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        RuntimeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        RuntimeError::AgentStopped(_)
        | RuntimeError::AgentHeld { .. }
        | RuntimeError::AgentBusy(_)
        | RuntimeError::AgentNotHeld(_)
        | RuntimeError::Cancelled(_) => StatusCode::CONFLICT,
        RuntimeError::Harness(_) => StatusCode::BAD_GATEWAY,
        RuntimeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, err.code(), err.to_string())
}

impl From<RuntimeError> for ApiError {
    fn from(err: RuntimeError) -> ApiError {
        api_error(err)
    }
}

/// A `command` given as an array or as one string split on blanks.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CommandField {
    Argv(Vec<String>),
    Line(String),
}

/// The body of `POST /agents`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpawnBody {
    name: Option<String>,
    #[serde(rename = "type")]
    harness: Option<String>,
    workdir: Option<String>,
    command: Option<CommandField>,
    ready_pattern: Option<String>,
    prompt_pattern: Option<String>,
    question_pattern: Option<String>,
    env: Option<BTreeMap<String, String>>,
    cols: Option<u16>,
    rows: Option<u16>,
}

async fn spawn(
    State(state): State<Arc<BrokerState>>,
    JsonBody(body): JsonBody<SpawnBody>,
) -> Result<Response, ApiError> {
    let Some(harness_word) = body.harness else {
        return Err(invalid(
            "`type` is required: one of claude, codex, gemini, command, acp",
        ));
    };
    let harness: Harness = harness_word
        .parse()
        .map_err(|err: scout_mesh::lifecycle::UnknownWord| invalid(&err.to_string()))?;
    let command = body.command.map(|command| match command {
        CommandField::Argv(argv) => argv,
        CommandField::Line(line) => line.split_whitespace().map(str::to_owned).collect(),
    });
    let size = match (body.cols, body.rows) {
        (None, None) => None,
        (cols, rows) => Some(TermSize {
            cols: cols.unwrap_or(TermSize::DEFAULT.cols),
            rows: rows.unwrap_or(TermSize::DEFAULT.rows),
        }),
    };
    let request = SpawnRequest {
        name: body.name,
        harness,
        workdir: body.workdir,
        options: AdapterOptions {
            command,
            ready_pattern: body.ready_pattern,
            prompt_pattern: body.prompt_pattern,
            question_pattern: body.question_pattern,
            mcp: None,
        },
        env: body.env.unwrap_or_default().into_iter().collect(),
        size,
    };
    let info = state.runtime.spawn(request).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list(State(state): State<Arc<BrokerState>>) -> Json<serde_json::Value> {
    Json(json!({ "agents": state.runtime.list() }))
}

async fn show(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    Ok(Json(state.runtime.info(&id)?).into_response())
}

/// `agent.stop` is human-gated: an agent's request becomes an approval.
async fn stop(
    State(state): State<Arc<BrokerState>>,
    caller: Option<axum::Extension<crate::daemon::credentials::AgentCaller>>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    // An unknown session is a 404 for everyone, before any approval.
    state.runtime.session(&id)?;
    let gate = crate::daemon::approvals::Gate::AgentStop { id: id.clone() };
    super::approvals::gate(&state, caller, gate, || async {
        Ok(state.runtime.stop(&id).await?)
    })
    .await
}

/// The body of `POST /agents/{id}/send`.
#[derive(Debug, Deserialize)]
struct SendBody {
    message: Option<String>,
    /// Milliseconds.
    timeout: Option<u64>,
}

async fn send(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
    JsonBody(body): JsonBody<SendBody>,
) -> Result<Response, ApiError> {
    // An unknown agent is a 404 whatever the body says.
    state.runtime.session(&id)?;
    let Some(message) = body.message.filter(|message| !message.trim().is_empty()) else {
        return Err(invalid("`message` is required and must not be empty"));
    };
    let timeout = match body.timeout {
        None => None,
        Some(ms) if (1..=TIMEOUT_MS_MAX).contains(&ms) => Some(Duration::from_millis(ms)),
        Some(ms) => {
            return Err(invalid(&format!(
                "`timeout` {ms} is out of range (1 to {TIMEOUT_MS_MAX} milliseconds)"
            )));
        }
    };
    let outcome = state.runtime.send(&id, message, timeout).await?;
    let status = if outcome.question.is_some() {
        "waiting"
    } else {
        "completed"
    };
    Ok(Json(json!({
        "id": id,
        "turnId": outcome.turn_id,
        "status": status,
        "response": outcome.response,
        "question": outcome.question,
    }))
    .into_response())
}

/// The body of `POST /agents/{id}/take`.
#[derive(Debug, Deserialize)]
struct TakeBody {
    /// Who takes it (for the API and the waiting turns' notice).
    by: Option<String>,
    /// The Scout conversation to take over; the most recent one when absent.
    conversation: Option<String>,
}

/// Longest `by` of a take, in characters: a person's name or a host.
const TAKE_BY_CHARS_MAX: usize = 100;

/// Longest `conversation` of a take, in characters: conversation ids are
/// UUIDs; this leaves room for other schemes without taking any size.
const TAKE_CONVERSATION_CHARS_MAX: usize = 200;

/// `POST /agents/{id}/take`: a person holds the agent (see
/// [`Session::take`]); answers the hold.
async fn take(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
    JsonBody(body): JsonBody<TakeBody>,
) -> Result<Response, ApiError> {
    let session = state.runtime.session(&id)?;
    let by = body
        .by
        .map(|by| by.trim().to_owned())
        .filter(|by| !by.is_empty())
        .unwrap_or_else(|| "a person".to_owned());
    if by.chars().count() > TAKE_BY_CHARS_MAX || by.chars().any(char::is_control) {
        return Err(invalid(&format!(
            "`by` must be at most {TAKE_BY_CHARS_MAX} characters without control characters"
        )));
    }
    let conversation = body.conversation.filter(|id| !id.is_empty());
    if conversation.as_ref().is_some_and(|id| {
        id.chars().count() > TAKE_CONVERSATION_CHARS_MAX || id.chars().any(char::is_control)
    }) {
        return Err(invalid(&format!(
            "`conversation` must be at most {TAKE_CONVERSATION_CHARS_MAX} characters without control characters"
        )));
    }
    let hold = session.take(by, conversation).await?;
    Ok(Json(json!({ "id": id, "held": hold })).into_response())
}

/// `POST /agents/{id}/release`: the person hands the agent back.
async fn release(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let session = state.runtime.session(&id)?;
    let hold = session.release().await?;
    Ok(Json(json!({ "id": id, "released": hold })).into_response())
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    lines: Option<String>,
}

async fn logs(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|err| invalid(&err.body_text()))?;
    let n_lines = match query.lines.as_deref() {
        None => LOG_LINES_DEFAULT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=LOG_LINES_MAX).contains(n))
            .ok_or_else(|| {
                invalid(&format!(
                    "`lines` must be a number from 1 to {LOG_LINES_MAX}, not `{text}`"
                ))
            })?,
    };
    let lines = state.runtime.logs(&id, n_lines)?;
    Ok(Json(json!({ "id": id, "lines": lines })).into_response())
}

/// `GET /agents/{id}/stream`: Server-Sent Events. `agent` (the agent, first
/// and on every change), `output` (`{"text"}`, the terminal output without
/// escape sequences), this agent's runtime events under their own names
/// (`question`, `login_required`, `message`, ...), `lagged` (`{"skipped"}`)
/// when the client fell behind, and a last `agent` when it stops.
async fn stream(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let session = state.runtime.session(&id)?;
    let attachment = session.attach();
    let events = state.runtime.subscribe();
    let first = sse_json("agent", &session.info());
    let stream = SseStream {
        finished: session.finished_watch(),
        session,
        output: attachment.output,
        skip_through: attachment.redraw_seq,
        events,
        plain: PlainText::new(),
        pending: std::collections::VecDeque::new(),
        done: false,
    };
    let events = futures_util::stream::once(async move { Ok(first) }).chain(
        futures_util::stream::unfold(stream, |mut stream| async move {
            stream
                .next_event()
                .await
                .map(|event| (Ok::<_, Infallible>(event), stream))
        }),
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response())
}

struct SseStream {
    session: Arc<Session>,
    output: broadcast::Receiver<OutputChunk>,
    skip_through: u64,
    events: broadcast::Receiver<RuntimeEvent>,
    finished: watch::Receiver<bool>,
    plain: PlainText,
    pending: std::collections::VecDeque<Event>,
    done: bool,
}

impl SseStream {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                chunk = self.output.recv() => match chunk {
                    Ok(chunk) => self.on_output(&chunk),
                    Err(RecvError::Lagged(n_skipped)) => {
                        return Some(sse_json("lagged", &json!({ "skipped": n_skipped })));
                    }
                    Err(RecvError::Closed) => self.done = true,
                },
                event = self.events.recv() => match event {
                    Ok(event) => self.on_event(&event),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => self.done = true,
                },
                () = wait_true(&mut self.finished) => {
                    // Everything the agent said before it stopped goes out
                    // first, then its final state.
                    while let Ok(chunk) = self.output.try_recv() {
                        self.on_output(&chunk);
                    }
                    while let Ok(event) = self.events.try_recv() {
                        self.on_event(&event);
                    }
                    self.pending.push_back(sse_json("agent", &self.session.info()));
                    self.done = true;
                }
            }
        }
    }

    fn on_output(&mut self, chunk: &OutputChunk) {
        if chunk.seq <= self.skip_through {
            return;
        }
        let text = self.plain.feed(&chunk.bytes);
        if !text.is_empty() {
            self.pending
                .push_back(sse_json("output", &json!({ "text": text })));
        }
    }

    fn on_event(&mut self, event: &RuntimeEvent) {
        if event.agent_id != self.session.id() {
            return;
        }
        let name = serde_json::to_value(event.event)
            .ok()
            .and_then(|name| name.as_str().map(str::to_owned))
            .unwrap_or_else(|| "event".to_owned());
        self.pending.push_back(sse_json(&name, event));
    }
}

fn sse_json(name: &str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(value)
        .unwrap_or_else(|_| Event::default().event(name).data("{}"))
}

pub(crate) type WsResult =
    Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

pub(crate) fn upgrade(ws: WsResult) -> Result<WebSocketUpgrade, ApiError> {
    let ws = ws.map_err(|err| {
        ApiError::new(
            err.status(),
            "WEBSOCKET_REQUIRED",
            format!("this route is a WebSocket: {}", err.body_text()),
        )
    })?;
    Ok(ws
        .max_message_size(WS_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_MESSAGE_BYTES_MAX)
        .max_write_buffer_size(WS_WRITE_BUFFER_BYTES_MAX))
}

/// `/ws/agents/{id}/terminal`: first `{"type":"connected",…}`, then the
/// current screen, then the terminal's output as it comes, as text frames.
/// While a structured turn runs, the view switches to its transcript (see
/// [`crate::pty::transcript`]): the CLI's output is held back, and once
/// the turn has ended and the CLI draws again, the CLI's screen is drawn
/// again from the screen model.
/// From the client, text and binary frames are typed into the terminal,
/// except JSON control frames: `{"type":"resize","cols":…,"rows":…}` and
/// `{"type":"input","data":"…"}`.
async fn terminal(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
    ws: WsResult,
) -> Result<Response, ApiError> {
    let session = state.runtime.session(&id)?;
    let ws = upgrade(ws)?;
    // Attach before the handshake completes, so nothing written after the
    // client sees "connected" is missed.
    let attachment = session.attach();
    Ok(ws.on_upgrade(move |socket| async move {
        let (sink, stream) = socket.split();
        serve_terminal(session, attachment, sink, stream).await;
    }))
}

/// Serves one terminal client of `session` (attached as `attachment`):
/// `connected`, the screen (or the running turn's transcript so far), then
/// live output to `sink`; keystrokes, `input` and `resize` from `stream`.
/// The client is a WebSocket here, or a viewer on another broker through
/// [`super::terminal_relay`]: both get the same frames, lag handling and
/// views.
pub(crate) async fn serve_terminal<S, R, E>(
    session: Arc<Session>,
    attachment: Attachment,
    sink: S,
    stream: R,
) where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let mut writer = TerminalWriter {
        sink,
        decoder: Utf8Decoder::new(),
    };
    let connected = json!({
        "type": "connected",
        "agentId": session.id(),
        "status": session.info().status,
        "cols": session.info().cols,
        "rows": session.info().rows,
    });
    let first = match &attachment.transcript_so_far {
        Some(so_far) => {
            let rows = session.info().rows;
            let mut text = transcript::enter_sequence(rows);
            text.push_str(&String::from_utf8_lossy(so_far));
            text.into_bytes()
        }
        None => attachment.redraw.clone(),
    };
    if writer.send_text(connected.to_string()).await.is_err()
        || writer.send_output(&first).await.is_err()
    {
        return;
    }
    let reading = read_terminal_input(stream, session.clone());
    let writing = write_terminal_output(
        writer,
        session.clone(),
        TerminalFeeds {
            output: attachment.output,
            skip_through: attachment.redraw_seq,
            transcript: attachment.transcript,
            view: if attachment.transcript_so_far.is_some() {
                View::Transcript
            } else {
                View::Cli
            },
        },
    );
    // Whichever side ends first ends the connection.
    tokio::select! {
        () = reading => {}
        () = writing => {}
    }
}

struct TerminalWriter<S> {
    sink: S,
    decoder: Utf8Decoder,
}

/// The client stopped reading (or left); the connection is dropped.
struct Gone;

impl<S: Sink<Message> + Unpin> TerminalWriter<S> {
    async fn send(&mut self, message: Message) -> Result<(), Gone> {
        match tokio::time::timeout(WS_SEND_TIMEOUT, self.sink.send(message)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), Gone> {
        self.send(Message::Text(Utf8Bytes::from(text))).await
    }

    async fn send_output(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        let text = self.decoder.decode(bytes);
        self.send_decoded(text).await
    }

    async fn send_output_owned(&mut self, bytes: Vec<u8>) -> Result<(), Gone> {
        let text = self.decoder.decode_owned(bytes);
        self.send_decoded(text).await
    }

    async fn send_decoded(&mut self, text: String) -> Result<(), Gone> {
        if text.is_empty() {
            return Ok(());
        }
        self.send_text(text).await
    }

    /// Too far behind: skip to a fresh copy of the screen, and say so.
    async fn resync(
        &mut self,
        session: &Session,
        skip_through: &mut u64,
        n_skipped: u64,
    ) -> Result<(), Gone> {
        let (redraw, seq) = session.redraw();
        *skip_through = seq;
        self.decoder = Utf8Decoder::new();
        let notice = json!({ "type": "lagged", "skipped": n_skipped });
        self.send_text(notice.to_string()).await?;
        self.send_output(&redraw).await
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason.to_owned()),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

/// What a terminal client is sent from.
struct TerminalFeeds {
    output: broadcast::Receiver<OutputChunk>,
    /// Output chunks up to this one are already on the client's screen.
    skip_through: u64,
    transcript: broadcast::Receiver<TranscriptChunk>,
    view: View,
}

/// What a terminal client's screen shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// The CLI's screen, kept up to date.
    Cli,
    /// A running structured turn's transcript; the CLI's output is held
    /// back (the screen model keeps it).
    Transcript,
    /// The transcript of a turn that ended. It stays until the CLI draws
    /// again (a person typing, the CLI's own updates), so the end of a
    /// turn can be read; then the CLI's screen comes back.
    TranscriptEnded,
}

impl<S: Sink<Message> + Unpin> TerminalWriter<S> {
    /// A transcript chunk: the view switches to the transcript at its
    /// start (the CLI's screen scrolls up) and stays there after its end.
    async fn send_transcript(
        &mut self,
        session: &Session,
        feeds: &mut TerminalFeeds,
        chunk: TranscriptChunk,
    ) -> Result<(), Gone> {
        match (chunk, feeds.view) {
            (TranscriptChunk::Begin(text), view) => {
                feeds.view = View::Transcript;
                let mut out = match view {
                    View::Cli => transcript::enter_sequence(session.info().rows).into_bytes(),
                    View::Transcript | View::TranscriptEnded => b"\r\n".to_vec(),
                };
                out.extend_from_slice(&text);
                self.send_output_owned(out).await
            }
            (TranscriptChunk::Text(text), View::Transcript) => self.send_output(&text).await,
            (TranscriptChunk::End(text), View::Transcript) => {
                feeds.view = View::TranscriptEnded;
                self.send_output(&text).await
            }
            (TranscriptChunk::Text(_) | TranscriptChunk::End(_), _) => Ok(()),
        }
    }

    /// Back from a transcript to the CLI's screen: the transcript goes up
    /// into the client's scrollback and the screen model is drawn.
    async fn leave_transcript(
        &mut self,
        session: &Session,
        feeds: &mut TerminalFeeds,
    ) -> Result<(), Gone> {
        feeds.view = View::Cli;
        let (redraw, seq) = session.redraw();
        feeds.skip_through = seq;
        let mut out = transcript::leave_sequence(session.info().rows).into_bytes();
        out.extend_from_slice(&redraw);
        self.send_output_owned(out).await
    }
}

async fn write_terminal_output<S: Sink<Message> + Unpin>(
    mut writer: TerminalWriter<S>,
    session: Arc<Session>,
    mut feeds: TerminalFeeds,
) {
    enum Step {
        Chunk(Result<OutputChunk, RecvError>),
        Transcript(Result<TranscriptChunk, RecvError>),
        Finished,
    }
    let mut finished = session.finished_watch();
    loop {
        let step = tokio::select! {
            chunk = feeds.output.recv() => Step::Chunk(chunk),
            chunk = feeds.transcript.recv() => Step::Transcript(chunk),
            () = wait_true(&mut finished) => Step::Finished,
        };
        let output = &mut feeds.output;
        let skip_through = &mut feeds.skip_through;
        let sent = match step {
            Step::Transcript(Ok(chunk)) => {
                writer.send_transcript(&session, &mut feeds, chunk).await
            }
            // Lost transcript lines stay lost; the CLI's screen is whole.
            Step::Transcript(Err(RecvError::Lagged(_))) => Ok(()),
            Step::Transcript(Err(RecvError::Closed)) => return,
            // The CLI's screen waits in the model while the transcript shows.
            Step::Chunk(Ok(_) | Err(RecvError::Lagged(_))) if feeds.view == View::Transcript => {
                Ok(())
            }
            Step::Chunk(Ok(chunk)) if feeds.view == View::TranscriptEnded => {
                if chunk.seq > feeds.skip_through {
                    writer.leave_transcript(&session, &mut feeds).await
                } else {
                    Ok(())
                }
            }
            Step::Chunk(Err(RecvError::Lagged(_))) if feeds.view == View::TranscriptEnded => {
                writer.leave_transcript(&session, &mut feeds).await
            }
            Step::Chunk(Ok(chunk)) if chunk.seq > *skip_through => {
                // Whatever else is already queued goes in the same frame:
                // fewer, larger frames under a flood.
                let mut batch = chunk.bytes.to_vec();
                let mut lagged = None;
                while batch.len() < WS_FRAME_BYTES_TARGET {
                    match output.try_recv() {
                        Ok(more) if more.seq > *skip_through => {
                            batch.extend_from_slice(&more.bytes);
                        }
                        Ok(_) => {}
                        Err(broadcast::error::TryRecvError::Lagged(n_skipped)) => {
                            lagged = Some(n_skipped);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                match (writer.send_output_owned(batch).await, lagged) {
                    (Ok(()), Some(n_skipped)) => {
                        writer.resync(&session, skip_through, n_skipped).await
                    }
                    (sent, _) => sent,
                }
            }
            Step::Chunk(Ok(_)) => Ok(()),
            Step::Chunk(Err(RecvError::Lagged(n_skipped))) => {
                writer.resync(&session, skip_through, n_skipped).await
            }
            Step::Chunk(Err(RecvError::Closed)) => return,
            Step::Finished => {
                // Flush what is left, then say goodbye.
                while let Ok(chunk) = output.try_recv() {
                    if chunk.seq > *skip_through && writer.send_output(&chunk.bytes).await.is_err()
                    {
                        return;
                    }
                }
                let info = session.info();
                let exit = json!({
                    "type": "exit",
                    "agentId": info.id,
                    "status": info.status,
                    "exitCode": info.exit_code,
                });
                let _ = writer.send_text(exit.to_string()).await;
                writer.close(1000, "agent stopped").await;
                return;
            }
        };
        if sent.is_err() {
            tracing::info!(agent = %session.id(), "terminal client stopped reading; disconnected");
            writer.close(1008, "client too slow").await;
            return;
        }
    }
}

/// A control frame from a terminal client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Resize { cols: u16, rows: u16 },
    Input { data: String },
}

async fn read_terminal_input<R, E>(mut stream: R, session: Arc<Session>)
where
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    while let Some(Ok(message)) = stream.next().await {
        let bytes = match message {
            Message::Text(text) => {
                let text = text.as_str();
                match text
                    .starts_with('{')
                    .then(|| serde_json::from_str::<Control>(text))
                {
                    Some(Ok(Control::Resize { cols, rows })) => {
                        if let Err(err) = session.resize(TermSize { rows, cols }) {
                            tracing::debug!(agent = %session.id(), cause = %err, "resize refused");
                        }
                        continue;
                    }
                    Some(Ok(Control::Input { data })) => Bytes::from(data),
                    // Not a control frame: keystrokes that happen to look like JSON.
                    _ => Bytes::copy_from_slice(text.as_bytes()),
                }
            }
            Message::Binary(bytes) => bytes,
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if bytes.is_empty() {
            continue;
        }
        // A full input queue waits here, so a client typing faster than the
        // program reads is slowed down, not buffered.
        if session.type_from_terminal(bytes).await.is_err() {
            break;
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsQuery {
    agent_id: Option<String>,
}

/// `/ws/events[?agentId=]`: runtime events as `{event, data, timestamp}`
/// text frames, after a first `connected` one.
async fn events(
    State(state): State<Arc<BrokerState>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    ws: WsResult,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|err| invalid(&err.body_text()))?;
    let ws = upgrade(ws)?;
    // Subscribe before the handshake completes: every event after the
    // client is connected reaches it.
    let mut events = state.runtime.subscribe();
    let mut closed = state.runtime.closed_watch();
    let filter = query.agent_id.filter(|id| !id.is_empty());
    let env = state.env.clone();
    Ok(ws.on_upgrade(move |socket| async move {
        let (sink, mut stream) = socket.split();
        let mut writer = TerminalWriter {
            sink,
            decoder: Utf8Decoder::new(),
        };
        let connected = json!({
            "event": "connected",
            "data": { "agentId": filter },
            "timestamp": rfc3339(env.now_unix_ms()),
        });
        if writer.send_text(connected.to_string()).await.is_err() {
            return;
        }
        enum Step {
            Event(Result<RuntimeEvent, RecvError>),
            ClientLeft,
            Closed,
            Nothing,
        }
        loop {
            let step = tokio::select! {
                event = events.recv() => Step::Event(event),
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => Step::ClientLeft,
                    Some(Ok(_)) => Step::Nothing,
                },
                () = wait_true(&mut closed) => Step::Closed,
            };
            let sent = match step {
                Step::Event(Ok(event))
                    if filter.as_ref().is_none_or(|id| *id == event.agent_id) =>
                {
                    match serde_json::to_string(&event) {
                        Ok(text) => writer.send_text(text).await,
                        Err(_) => Ok(()),
                    }
                }
                Step::Event(Ok(_)) | Step::Nothing => Ok(()),
                Step::Event(Err(RecvError::Lagged(n_skipped))) => {
                    let notice = json!({
                        "event": "events_dropped",
                        "data": { "count": n_skipped },
                        "timestamp": rfc3339(env.now_unix_ms()),
                    });
                    writer.send_text(notice.to_string()).await
                }
                Step::Event(Err(RecvError::Closed)) | Step::ClientLeft => return,
                Step::Closed => {
                    writer.close(1001, "broker shutting down").await;
                    return;
                }
            };
            if sent.is_err() {
                tracing::info!("events client stopped reading; disconnected");
                writer.close(1008, "client too slow").await;
                return;
            }
        }
    }))
}

fn invalid(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
}
