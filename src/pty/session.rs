//! One agent session: a harness's CLI on a terminal, its screen model, the
//! live output stream for terminal clients, its status, and the turns run
//! through it.
//!
//! A session task (the "pump") owns the output side: it takes chunks from
//! the reader thread, broadcasts them to subscribers (a slow subscriber
//! loses chunks and redraws from the screen model; nobody can make the
//! broker buffer without bound), feeds the running turn, and reads the
//! screen through the adapter at most every [`CLASSIFY_INTERVAL`] to learn
//! when the agent is ready, asks a question, wants a login, or finished a
//! turn.
//!
//! While a structured turn runs (in a second, piped process), its events
//! are rendered ([`super::transcript`]) onto a transcript channel beside
//! the terminal output, so terminal watchers see the turn as it streams.
//!
//! A person can hold the session ([`Session::take`], [`Session::release`]):
//! the hold is a place in the line of turns (the turn lock), so routed turns
//! queue behind the person and run, in order, once the hold is released.
//! Taking restarts the interactive CLI resumed on the conversation's CLI
//! session; releasing restarts it fresh, and the next structured turn
//! continues that CLI session, the person's turns included.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use scout_mesh::lifecycle::{FailureReason, Harness};
use scout_mesh::output::{FLIGHT_OUTPUT_BYTES_MAX, FlightOutput};
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::acp_turn::{AcpSlot, AcpSpawn};
use super::codex_turn::{AppServerRun, ApprovalAsker};
use super::error::RuntimeError;
use super::events::{EventKind, RuntimeEvent, rfc3339};
use super::held::{HolderPlacement, SessionRecord};
use super::marker::{SESSION_MARKER_VAR, stop_marked};
use super::process::{ExitInfo, OutputChunk, PtyProcess, SpawnSpec, signal_tree};
use super::question::{NewQuestion, QuestionOutcome, Questions, Shown};
use super::screen::{Screen, TermSize};
use super::text::{PlainText, Transcript};
use super::transcript::{TRANSCRIPT_CHUNK_BYTES_MAX, TranscriptRenderer, TurnAsker, TurnHeader};
use crate::adapter::codex_app::AppTurn;
use crate::adapter::{
    Adapter, AgentEnv, AuthStatus, FailureKind, ScreenState, ScreenView, StructuredEvent,
    TurnStyle, TurnUsage,
};
use crate::env::Env;
use crate::holder::journal::{self, HeldState, TurnExit, TurnRecord};

/// Output chunks kept for terminal and stream subscribers. A subscriber
/// more than this far behind skips ahead and redraws from the screen model.
/// The ring keeps its last chunks even without subscribers; chunks are
/// small unless output floods (then up to 32 KiB), so this is at most
/// 1 MiB per session.
pub const OUTPUT_BROADCAST_CHUNKS: usize = 32;

const _: () =
    assert!(OUTPUT_BROADCAST_CHUNKS * super::process::OUTPUT_CHUNK_BYTES_MAX <= 1024 * 1024);

/// Characters of a turn's transcript kept (the tail, when longer). The
/// answer made from it is then bounded by the one output rule
/// ([`FlightOutput`]); a character is at least one byte, so the transcript
/// never holds less than the answer may keep.
pub const TRANSCRIPT_CHARS_MAX: usize = FLIGHT_OUTPUT_BYTES_MAX;

/// Events of one turn queued for its consumer. Output events beyond this
/// are dropped (the final answer still carries all of it); the final
/// outcome is always delivered.
pub const TURN_EVENTS_MAX: usize = 256;

/// How often at most the screen is read through the adapter while output
/// flows: often enough that readiness shows within milliseconds, rare
/// enough that a fast stream costs little.
pub const CLASSIFY_INTERVAL: Duration = Duration::from_millis(10);

/// After the program and its group are gone, how long to wait for the
/// last output to arrive (a process outside the session may still hold the
/// terminal; it does not keep the session alive).
const DRAIN_AFTER_KILL: Duration = Duration::from_millis(500);

/// Bytes of a structured run's stderr kept for the failure message.
const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// Longest line of structured output parsed. Tool results can make long
/// lines; longer ones are skipped, never buffered whole.
pub const STRUCTURED_LINE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// How long a structured run may take to exit after its final event.
const STRUCTURED_EXIT_WAIT: Duration = Duration::from_secs(5);

/// How long a stop waits for the session task to finish after the kill.
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// Transcript chunks kept for terminal watchers. A structured turn sends a
/// chunk per event (a text delta, a tool line); a watcher further behind
/// loses lines of the transcript, never the CLI's screen. With chunks of at
/// most [`TRANSCRIPT_CHUNK_BYTES_MAX`] this is at most 1 MiB per session.
pub const TRANSCRIPT_BROADCAST_CHUNKS: usize = 128;

const _: () = assert!(TRANSCRIPT_BROADCAST_CHUNKS * TRANSCRIPT_CHUNK_BYTES_MAX <= 1024 * 1024);

/// Bytes of the running turn's rendered transcript kept for watchers who
/// attach mid-turn (the tail, when longer): a few screens of text.
pub const TRANSCRIPT_REPLAY_BYTES_MAX: usize = 64 * 1024;

/// How long taking a session waits for the turns ahead of it (a running
/// routed turn) before it answers that the agent is busy: below the CLI's
/// request timeout, so the person hears why.
pub const TAKE_WAIT: Duration = Duration::from_secs(20);

/// How long a restart of the interactive CLI waits for the session task to
/// drain the old program's output.
const RESTART_DRAIN_WAIT: Duration = Duration::from_secs(10);

/// What a session is doing, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Started, not ready yet.
    Starting,
    /// Waiting for a command.
    Ready,
    /// Working (a turn, or output the person started in the terminal).
    Busy,
    /// Asking a question or waiting for a login.
    Waiting,
    /// Stopped on request or exited cleanly.
    Stopped,
    /// Exited with a failure.
    Error,
}

/// An agent as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    /// `agent-<short uuid>`.
    pub id: String,
    /// The name it was given.
    pub name: String,
    /// The harness (`claude`, `codex`, `gemini`, `command`, `acp`).
    #[serde(rename = "type")]
    pub harness: Harness,
    /// Working directory.
    pub workdir: PathBuf,
    /// Status.
    pub status: AgentStatus,
    /// Process id of the CLI (also its process group).
    pub pid: u32,
    /// Program and arguments on the terminal.
    pub command: Vec<String>,
    /// When it was spawned.
    pub created_at: String,
    /// When it was first ready.
    pub ready_at: Option<String>,
    /// When it stopped.
    pub stopped_at: Option<String>,
    /// Its exit code, once stopped.
    pub exit_code: Option<u32>,
    /// Terminal columns.
    pub cols: u16,
    /// Terminal rows.
    pub rows: u16,
    /// `answer` or `login` while waiting.
    pub waiting_for: Option<&'static str>,
    /// The question it asks, while it asks one.
    pub question: Option<String>,
    /// The login URL, while it waits for a login and shows one.
    pub login_url: Option<String>,
    /// Whether its CLI is logged in.
    pub auth: AuthStatus,
    /// Why it failed, when it did.
    pub error: Option<ErrorInfo>,
    /// The person holding it, while one does (routed turns wait).
    pub held: Option<HoldInfo>,
    /// The holder process keeping the program across broker restarts,
    /// when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderView>,
}

/// A session's holder as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HolderView {
    /// The holder's process id.
    pub pid: u32,
    /// When it started.
    pub started_at: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
}

/// A failure as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    /// Stable code.
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

/// One event of a running turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// Output text as it arrives (best effort: dropped when the consumer
    /// lags; [`TurnOutcome`] carries the whole answer).
    Output(String),
    /// Tool activity of a structured run, one line.
    Tool(String),
    /// Tokens and cost the CLI reported so far in this turn (running total;
    /// the last one is the turn's).
    Usage(TurnUsage),
    /// The turn ended; always the last event.
    Finished(TurnOutcome),
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnOutcome {
    /// The agent answered and is ready again.
    Completed {
        /// The answer.
        response: String,
    },
    /// The agent asks a question; the next turn answers it.
    Waiting {
        /// The question.
        question: String,
        /// Output up to the question.
        response: String,
    },
    /// No answer.
    Failed {
        /// Why.
        failure: TurnFailure,
        /// What happened, for a person.
        message: String,
    },
}

/// Why a turn failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnFailure {
    /// The deadline passed.
    Timeout,
    /// The agent stopped (or was never running).
    AgentStopped,
    /// The CLI needs a login.
    AuthRequired,
    /// The CLI stops at its first-run setup on this account.
    OnboardingRequired,
    /// The CLI failed the turn or could not be run.
    Harness,
    /// The turn was cancelled ([`Session::cancel_turn`]).
    Cancelled,
}

impl TurnFailure {
    /// The delivery failure reason of the design's vocabulary.
    pub fn failure_reason(self) -> FailureReason {
        match self {
            TurnFailure::Timeout => FailureReason::Timeout,
            TurnFailure::AgentStopped => FailureReason::AgentOffline,
            TurnFailure::Cancelled => FailureReason::Cancelled,
            TurnFailure::AuthRequired | TurnFailure::OnboardingRequired | TurnFailure::Harness => {
                FailureReason::HarnessError
            }
        }
    }

    /// The stable code a person or a program acts on (`AUTH_REQUIRED`: log
    /// in; `ONBOARDING_REQUIRED`: run the CLI once by hand).
    pub fn code(self) -> &'static str {
        match self {
            TurnFailure::Timeout => "TIMEOUT",
            TurnFailure::AgentStopped => "AGENT_STOPPED",
            TurnFailure::AuthRequired => "AUTH_REQUIRED",
            TurnFailure::OnboardingRequired => "ONBOARDING_REQUIRED",
            TurnFailure::Harness => "HARNESS_ERROR",
            TurnFailure::Cancelled => "CANCELLED",
        }
    }

    fn of_kind(kind: FailureKind) -> TurnFailure {
        match kind {
            FailureKind::Harness => TurnFailure::Harness,
            FailureKind::AuthRequired => TurnFailure::AuthRequired,
            FailureKind::OnboardingRequired => TurnFailure::OnboardingRequired,
        }
    }
}

/// A turn in progress: its events, in order, ending with
/// [`TurnEvent::Finished`].
#[derive(Debug)]
pub struct Turn {
    /// Unique per session, for logs and `message` events.
    pub id: String,
    /// The events.
    pub events: mpsc::Receiver<TurnEvent>,
}

/// What a terminal client gets when it attaches.
#[derive(Debug)]
pub struct Attachment {
    /// Bytes that draw the current screen.
    pub redraw: Vec<u8>,
    /// Live output; chunks with `seq <= redraw_seq` are already drawn.
    pub output: broadcast::Receiver<OutputChunk>,
    /// The last chunk the redraw covers.
    pub redraw_seq: u64,
    /// The running structured turn's transcript so far, when one runs
    /// (its later chunks arrive on `transcript`).
    pub transcript_so_far: Option<Bytes>,
    /// Transcript chunks of structured turns from now on.
    pub transcript: broadcast::Receiver<TranscriptChunk>,
}

/// A piece of a structured turn's rendered transcript (see
/// [`super::transcript`]).
#[derive(Debug, Clone)]
pub enum TranscriptChunk {
    /// A turn starts: its header.
    Begin(Bytes),
    /// More of the turn.
    Text(Bytes),
    /// The turn's end line; the terminal view goes back to the CLI.
    End(Bytes),
}

/// A person holding the session, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldInfo {
    /// Who holds it.
    pub by: String,
    /// The Scout conversation taken over (`None`: the session's default).
    pub conversation: Option<String>,
    /// The CLI session the interactive CLI was resumed on, when there was
    /// one to resume and the harness can.
    pub cli_session: Option<String>,
    /// Since when.
    pub since: String,
}

/// A person's hold: its place in the line of turns, and what was resumed.
#[derive(Debug)]
struct Hold {
    info: HoldInfo,
    /// The turn lock, held for as long as the person holds the session.
    _turns: tokio::sync::OwnedMutexGuard<()>,
}

/// The running structured turn's transcript.
#[derive(Debug, Default)]
struct LiveTranscript {
    renderer: Option<TranscriptRenderer>,
    so_far: String,
}

/// Hands the session task the program that replaces the one on the
/// terminal (see [`Session::restart_interactive`]).
#[derive(Debug)]
struct Replacement {
    /// The task tells when the old program's output is all handled.
    drained: oneshot::Sender<()>,
    /// Then it takes the new program's output (`None`: there is none, the
    /// session ends).
    next: oneshot::Receiver<Option<mpsc::Receiver<OutputChunk>>>,
}

/// The program on the terminal and how it was started.
#[derive(Debug)]
struct OnTerminal {
    process: Arc<PtyProcess>,
    argv: Vec<String>,
}

/// How a session is set up.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Working directory (checked to exist).
    pub workdir: PathBuf,
    /// Environment overrides.
    pub env: Vec<(String, String)>,
    /// Broker variables not passed on.
    pub env_remove: Vec<String>,
    /// Initial terminal size.
    pub size: TermSize,
    /// Scrollback rows of the screen model.
    pub scrollback_rows: usize,
    /// How long a stopped program gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// The broker's environment: the wall clock of timestamps.
    pub broker_env: Env,
    /// Who answers an ACP agent's permission requests.
    pub permissions: Option<Arc<dyn crate::pty::PermissionAsker>>,
    /// Where the program's holder lives; `None`: the broker holds the
    /// terminal itself and the session ends with the broker.
    pub holders: Option<HolderPlacement>,
}

/// A running or finished agent session.
pub struct Session {
    config: SessionConfig,
    adapter: Box<dyn Adapter>,
    agent_env: AgentEnv,
    /// The value of [`SESSION_MARKER_VAR`] every process of this session
    /// inherits, to find the ones that leave its process group.
    marker: String,
    /// Unix ms.
    created_at: u64,
    /// Replaced only by [`Session::restart_interactive`].
    terminal: Mutex<OnTerminal>,
    replacement: Mutex<Option<Replacement>>,
    screen: Arc<Mutex<Screen>>,
    output: broadcast::Sender<OutputChunk>,
    transcript: broadcast::Sender<TranscriptChunk>,
    live_transcript: Mutex<LiveTranscript>,
    events: broadcast::Sender<RuntimeEvent>,
    state: Mutex<SessionState>,
    pty_turn: Mutex<Option<PtyTurn>>,
    /// The Agent Client Protocol agent of an `acp` session.
    acp: AcpSlot,
    turn_lock: Arc<tokio::sync::Mutex<()>>,
    finished: watch::Sender<bool>,
    ready: watch::Sender<bool>,
    /// Wakes the session task when a turn's deadlines change without output.
    wake: tokio::sync::Notify,
    /// Ends the running turn ([`Session::cancel_turn`]).
    cancel: tokio::sync::Notify,
    /// The last output chunk the session task has handled. The screen model
    /// runs ahead of it (the reader thread feeds the screen before queueing
    /// the chunk), so a decision read off the screen waits until the task
    /// has caught up with what that screen had seen.
    pumped_seq: AtomicU64,
    /// Where the next byte of terminal output lies in all the held program
    /// wrote ([`OUTPUT_OFFSET_UNKNOWN`] for a terminal of the broker's own
    /// or an older holder); moved on under the turn lock, with the turn's
    /// text, so a turn's start in it is exact.
    output_offset: AtomicU64,
    /// A routed terminal turn found running when the session came back
    /// after a restart, until its flight takes it (see
    /// [`Session::carry_on_pty`]).
    carried: Mutex<Option<CarriedTurn>>,
    /// The question on screen and the person asked about it, for sessions
    /// the broker gave an identity (see `pty::question`).
    questions: Arc<Mutex<Questions>>,
    /// Which program is on the terminal: bumped by every restart, so a
    /// dialog of the new program is a new question even when it reads the
    /// same.
    generation: AtomicU64,
    /// Held while a person's keystrokes or a remote answer go into the
    /// terminal, so an answer's last check and its keys never interleave
    /// with a person's typing.
    input_gate: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.config.id)
            .field("pid", &self.process().pid())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct SessionState {
    /// Unix ms.
    ready_at: Option<u64>,
    /// Unix ms.
    stopped_at: Option<u64>,
    exit: Option<ExitInfo>,
    stop_reason: Option<String>,
    screen_state: ScreenState,
    question: Option<String>,
    login_required: bool,
    login_url: Option<String>,
    auth: AuthStatus,
    error: Option<ErrorInfo>,
    turn_active: bool,
    /// The CLI's own session id for each Scout conversation.
    cli_sessions: CliSessions,
    /// How to stop the structured run in progress, which ends with the
    /// session.
    structured: Option<StructuredStop>,
    n_turns: u64,
    permit: Option<OwnedSemaphorePermit>,
    /// A person holding the session (see [`Session::take`]).
    held: Option<Hold>,
}

impl SessionState {
    fn status(&self) -> AgentStatus {
        if self.stopped_at.is_some() {
            return if self.error.is_some() {
                AgentStatus::Error
            } else {
                AgentStatus::Stopped
            };
        }
        if self.login_required || self.question.is_some() {
            AgentStatus::Waiting
        } else if self.turn_active
            || self.screen_state == ScreenState::Busy && self.ready_at.is_some()
        {
            AgentStatus::Busy
        } else if self.ready_at.is_none() {
            AgentStatus::Starting
        } else {
            AgentStatus::Ready
        }
    }
}

/// The turn being typed into the terminal.
struct PtyTurn {
    id: String,
    message: String,
    style: TurnStyle,
    plain: PlainText,
    transcript: Transcript,
    /// Where its text goes; `None` for a carried-on turn until its flight
    /// takes it (the text waits in `unclaimed`).
    events: Option<mpsc::Sender<TurnEvent>>,
    unclaimed: Option<Arc<Mutex<String>>>,
    /// Output bytes still to pass over before the turn's own (a carried-on
    /// turn begins inside the holder's replay).
    skip_bytes: u64,
    enter_sent_at: Option<Instant>,
    newline_after_enter: bool,
    last_output_at: Option<Instant>,
    /// Set when the screen showed the turn's end: the end takes effect once
    /// the output up to this chunk is in the transcript.
    end_at: Option<(u64, TurnEnd)>,
    done: oneshot::Sender<TurnOutcome>,
}

/// How a terminal turn ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TurnEnd {
    /// At the prompt.
    Prompt,
    /// At a question.
    Question(String),
}

impl Session {
    /// Spawns the adapter's CLI on a terminal and starts the session task.
    /// `permit` holds one of the `MAX_AGENTS` slots until the session ends.
    pub fn start(
        config: SessionConfig,
        adapter: Box<dyn Adapter>,
        events: broadcast::Sender<RuntimeEvent>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Arc<Session>, RuntimeError> {
        let screen = Arc::new(Mutex::new(Screen::new(config.size, config.scrollback_rows)));
        let argv = adapter.interactive_argv();
        let marker = format!(
            "{}.{}.{:016x}",
            config.id,
            std::process::id(),
            config.broker_env.random::<u64>()
        );
        let mut env = config.env.clone();
        env.push((SESSION_MARKER_VAR.to_owned(), marker.clone()));
        let spec = SpawnSpec {
            argv: argv.clone(),
            cwd: config.workdir.clone(),
            env,
            env_remove: config.env_remove.clone(),
            size: config.size,
        };
        let created_at = config.broker_env.now_unix_ms();
        let (process, output_rx) = match &config.holders {
            None => PtyProcess::spawn(&spec, screen.clone()),
            Some(placement) => {
                let record = SessionRecord {
                    id: config.id.clone(),
                    name: config.name.clone(),
                    harness: adapter.harness(),
                    workdir: config.workdir.clone(),
                    env: spec.env.clone(),
                    env_remove: spec.env_remove.clone(),
                    size: config.size,
                    marker: marker.clone(),
                    created_at_ms: created_at,
                    argv: argv.clone(),
                    options: placement.options.clone(),
                };
                PtyProcess::spawn_held(&spec, screen.clone(), &placement.root, &record).or_else(
                    |err| {
                        // A session without a holder still works; it only
                        // ends with the broker, as before holders.
                        tracing::warn!(
                            agent = %config.id,
                            cause = %err,
                            "cannot hold the agent's terminal in a holder; the broker holds it and the session ends with the broker"
                        );
                        PtyProcess::spawn(&spec, screen.clone())
                    },
                )
            }
        }
        .map_err(|err| RuntimeError::SpawnFailed(err.to_string()))?;
        Ok(Session::assemble(
            config,
            adapter,
            events,
            Some(permit),
            (process, output_rx, argv),
            marker,
            created_at,
            screen,
            None,
        ))
    }

    /// Rebuilds a session whose program a holder kept while the broker
    /// restarted: attaches to the holder in `dir`, whose replayed scrollback
    /// rebuilds the screen. `permit` is `None` when no slot was free.
    pub fn adopt(
        config: SessionConfig,
        adapter: Box<dyn Adapter>,
        events: broadcast::Sender<RuntimeEvent>,
        permit: Option<OwnedSemaphorePermit>,
        record: SessionRecord,
        dir: &std::path::Path,
        carried: Option<TurnRecord>,
    ) -> Result<Arc<Session>, crate::holder::HolderError> {
        let screen = Arc::new(Mutex::new(Screen::new(config.size, config.scrollback_rows)));
        let (process, output_rx) = PtyProcess::attach_held(dir, screen.clone())?;
        Ok(Session::assemble(
            config,
            adapter,
            events,
            permit,
            (process, output_rx, record.argv),
            record.marker,
            record.created_at_ms,
            screen,
            carried,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: SessionConfig,
        adapter: Box<dyn Adapter>,
        events: broadcast::Sender<RuntimeEvent>,
        permit: Option<OwnedSemaphorePermit>,
        (process, output_rx, argv): (PtyProcess, mpsc::Receiver<OutputChunk>, Vec<String>),
        marker: String,
        created_at: u64,
        screen: Arc<Mutex<Screen>>,
        carried: Option<TurnRecord>,
    ) -> Arc<Session> {
        let output_offset = process.output_start().unwrap_or(OUTPUT_OFFSET_UNKNOWN);
        let agent_env = AgentEnv::new(&config.env);
        let auth = adapter.auth_status(&agent_env);
        let ready_at_spawn = adapter.ready_at_spawn();
        let (output, _) = broadcast::channel(OUTPUT_BROADCAST_CHUNKS);
        let (transcript, _) = broadcast::channel(TRANSCRIPT_BROADCAST_CHUNKS);
        let session = Arc::new(Session {
            adapter,
            agent_env,
            marker,
            created_at,
            terminal: Mutex::new(OnTerminal {
                process: Arc::new(process),
                argv,
            }),
            replacement: Mutex::new(None),
            screen,
            output,
            transcript,
            live_transcript: Mutex::new(LiveTranscript::default()),
            events,
            state: Mutex::new(SessionState {
                ready_at: None,
                stopped_at: None,
                exit: None,
                stop_reason: None,
                screen_state: ScreenState::Starting,
                question: None,
                login_required: false,
                login_url: None,
                auth,
                error: None,
                turn_active: false,
                cli_sessions: CliSessions::default(),
                structured: None,
                n_turns: 0,
                permit,
                held: None,
            }),
            pty_turn: Mutex::new(None),
            acp: AcpSlot::default(),
            turn_lock: Arc::new(tokio::sync::Mutex::new(())),
            finished: watch::channel(false).0,
            ready: watch::channel(false).0,
            wake: tokio::sync::Notify::new(),
            cancel: tokio::sync::Notify::new(),
            pumped_seq: AtomicU64::new(0),
            output_offset: AtomicU64::new(output_offset),
            carried: Mutex::new(None),
            questions: Arc::new(Mutex::new(Questions::default())),
            generation: AtomicU64::new(0),
            input_gate: tokio::sync::Mutex::new(()),
            config,
        });
        tracing::info!(
            agent = %session.config.id,
            pid = session.process().pid(),
            harness = %session.adapter.harness(),
            "agent started"
        );
        session.emit(EventKind::AgentStarted, json!({ "agent": session.info() }));
        if auth == AuthStatus::LoggedOut {
            session.emit(
                EventKind::LoginRequired,
                json!({ "agent": session.info(), "loginUrl": null }),
            );
        }
        if ready_at_spawn {
            session.mark_ready();
        }
        // Before the first output is pumped: the replay holds the turn's
        // output so far.
        if let Some(record) = carried {
            session.install_carried(record);
        }
        tokio::spawn(pump(session.clone(), output_rx));
        session
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The harness.
    pub fn harness(&self) -> Harness {
        self.adapter.harness()
    }

    /// Whether the session has ended.
    pub fn is_finished(&self) -> bool {
        *self.finished.borrow()
    }

    /// How the API shows this agent now.
    pub fn info(&self) -> AgentInfo {
        let size = self.lock_screen().size();
        let (pid, command, holder) = {
            let terminal = self.lock_terminal();
            (
                terminal.process.pid(),
                terminal.argv.clone(),
                terminal.process.holder(),
            )
        };
        let state = self.lock_state();
        let status = state.status();
        AgentInfo {
            id: self.config.id.clone(),
            name: self.config.name.clone(),
            harness: self.adapter.harness(),
            workdir: self.config.workdir.clone(),
            status,
            pid,
            command,
            created_at: rfc3339(self.created_at),
            ready_at: state.ready_at.map(rfc3339),
            stopped_at: state.stopped_at.map(rfc3339),
            exit_code: state.exit.as_ref().map(|exit| exit.code),
            cols: size.cols,
            rows: size.rows,
            waiting_for: if state.login_required {
                Some("login")
            } else if state.question.is_some() {
                Some("answer")
            } else {
                None
            },
            question: state.question.clone(),
            login_url: state.login_url.clone().filter(|_| state.login_required),
            auth: state.auth,
            error: state.error.clone(),
            held: state.held.as_ref().map(|hold| hold.info.clone()),
            holder: holder.map(|(pid, started_at_ms)| HolderView {
                pid,
                started_at: rfc3339(started_at_ms),
                uptime_secs: self
                    .config
                    .broker_env
                    .now_unix_ms()
                    .saturating_sub(started_at_ms)
                    / 1000,
            }),
        }
    }

    /// The last `n_lines` lines of scrollback and screen, as plain text.
    pub fn last_lines(&self, n_lines: usize) -> Vec<String> {
        self.lock_screen().last_lines(n_lines)
    }

    /// The current screen for a terminal client, and the live output after it.
    pub fn attach(&self) -> Attachment {
        // Under the screen lock no chunk can be processed, so the redraw and
        // the subscription meet exactly at `redraw_seq`.
        let screen = self.lock_screen();
        // Under the transcript lock no transcript chunk is sent, so the
        // transcript so far and the subscription meet too.
        let live = self.lock_live_transcript();
        Attachment {
            redraw: screen.redraw_bytes(),
            redraw_seq: screen.seq(),
            output: self.output.subscribe(),
            transcript_so_far: live
                .renderer
                .is_some()
                .then(|| Bytes::from(live.so_far.clone())),
            transcript: self.transcript.subscribe(),
        }
    }

    /// A fresh redraw for a client that fell behind: the bytes and the last
    /// chunk they cover.
    pub fn redraw(&self) -> (Vec<u8>, u64) {
        let screen = self.lock_screen();
        (screen.redraw_bytes(), screen.seq())
    }

    /// The queue of bytes typed into the terminal (of the program on it
    /// now: after a restart, the new one's).
    pub fn input(&self) -> mpsc::Sender<Bytes> {
        self.process().input().clone()
    }

    /// Types `bytes` a terminal client sent (a person's keystrokes) into
    /// the terminal. A person typing takes the dialog on screen from the
    /// mesh: its request is withdrawn and a remote answer is not typed.
    /// Reports the terminal sends by itself (focus, cursor position) are
    /// not a person. An error once the program's input is closed.
    pub async fn type_from_terminal(&self, bytes: Bytes) -> Result<(), RuntimeError> {
        let _gate = self.input_gate.lock().await;
        if !super::question::is_terminal_report(&bytes) {
            self.lock_questions().human_input(std::time::Instant::now());
        }
        self.input()
            .send(bytes)
            .await
            .map_err(|_| RuntimeError::AgentStopped(self.config.id.clone()))
    }

    /// Resizes the terminal and the screen model.
    pub fn resize(&self, size: TermSize) -> Result<(), RuntimeError> {
        if !size.is_valid() {
            return Err(RuntimeError::InvalidRequest(format!(
                "terminal size {}x{} is out of range (1-{} columns, 1-{} rows)",
                size.cols,
                size.rows,
                super::screen::COLS_MAX,
                super::screen::ROWS_MAX
            )));
        }
        self.lock_screen().resize(size);
        self.process()
            .resize(size)
            .map_err(|err| RuntimeError::InvalidRequest(format!("cannot resize: {err}")))
    }

    /// The value of `name` in the environment the session was given.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.config
            .env
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// A receiver that turns `true` once the session has ended.
    pub fn finished_watch(&self) -> watch::Receiver<bool> {
        self.finished.subscribe()
    }

    /// Stops the CLI and everything it started, and waits for the session
    /// to end. `reason` is what `agent_stopped` reports.
    pub async fn stop(&self, reason: &str) {
        let structured = {
            let mut state = self.lock_state();
            if state.stopped_at.is_none() && state.stop_reason.is_none() {
                state.stop_reason = Some(reason.to_owned());
            }
            state.structured.clone()
        };
        if let Some(structured) = structured {
            structured.stop();
        }
        self.acp.close();
        self.terminate_all().await;
        let mut finished = self.finished.subscribe();
        let _ = tokio::time::timeout(FINISH_WAIT, finished.wait_for(|done| *done)).await;
    }

    /// Stops the program with its process group and terminal session, then
    /// whatever else it started that left them (see [`super::marker`]).
    async fn terminate_all(&self) {
        self.process().terminate(self.config.stop_grace).await;
        stop_marked(&self.marker, self.config.stop_grace).await;
    }

    /// Starts a turn: `prompt` goes to the agent (typed into its terminal,
    /// or run in its CLI's structured mode), and the returned [`Turn`]
    /// streams output and ends with the outcome. Turns of one session run
    /// one at a time, in the order they were started; waiting for the
    /// previous one counts against `timeout`. Structured turns of one
    /// `conversation` continue the same CLI session, and never another
    /// conversation's; `None` is the session's own default conversation.
    pub fn run_turn(
        self: &Arc<Self>,
        prompt: String,
        timeout: Duration,
        conversation: Option<String>,
    ) -> Result<Turn, RuntimeError> {
        self.run_turn_from(prompt, timeout, conversation, TurnAsker::local_api())
    }

    /// [`Session::run_turn`], saying who asked (for the transcript terminal
    /// watchers see).
    pub fn run_turn_from(
        self: &Arc<Self>,
        prompt: String,
        timeout: Duration,
        conversation: Option<String>,
        asker: TurnAsker,
    ) -> Result<Turn, RuntimeError> {
        self.check_can_run_turn()?;
        let turn_id = {
            let mut state = self.lock_state();
            state.n_turns += 1;
            format!("{}-turn-{}", self.config.id, state.n_turns)
        };
        let held = HeldTurn::New {
            invocation_id: asker.invocation_id.clone(),
        };
        Ok(self.start_turn(turn_id, prompt, timeout, conversation, asker, held))
    }

    /// Carries on a structured turn that a holder ran while the broker was
    /// away (`dir`, see [`crate::holder::journal`]): its events are read
    /// from the journal, from the start, and it ends as the program did.
    /// The program is never started again.
    pub fn resume_turn(
        self: &Arc<Self>,
        dir: PathBuf,
        record: TurnRecord,
        timeout: Duration,
        asker: TurnAsker,
    ) -> Result<Turn, RuntimeError> {
        let turn_id = record.turn_id.clone();
        let prompt = record.prompt.clone();
        let conversation = record.conversation.clone();
        let style = self.adapter.turn_style();
        if let (Some(_), TurnStyle::PtyPrompt | TurnStyle::PtyQuiet(_)) = (record.terminal, style) {
            let invocation_id = record.invocation_id.clone().unwrap_or_default();
            return Ok(self.start_turn(
                turn_id,
                prompt,
                timeout,
                conversation,
                asker,
                HeldTurn::ResumeTerminal { invocation_id },
            ));
        }
        if record.terminal.is_some() || style != TurnStyle::Structured {
            return Err(RuntimeError::Harness(format!(
                "the {} harness has no held turn of this kind to carry on",
                self.adapter.harness()
            )));
        }
        Ok(self.start_turn(
            turn_id,
            prompt,
            timeout,
            conversation,
            asker,
            HeldTurn::Resume { dir, record },
        ))
    }

    fn start_turn(
        self: &Arc<Self>,
        turn_id: String,
        prompt: String,
        timeout: Duration,
        conversation: Option<String>,
        asker: TurnAsker,
        held: HeldTurn,
    ) -> Turn {
        let (events_tx, events_rx) = mpsc::channel(TURN_EVENTS_MAX);
        let session = self.clone();
        let id = turn_id.clone();
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout;
            let lock = session.turn_lock.clone();
            let run = async {
                if let Some(hold) = session.held() {
                    // Routed work waits for the person, and says so in its
                    // flight's output.
                    let _ = events_tx.try_send(TurnEvent::Output(format!(
                        "[waiting: {} holds this agent; the turn runs when they release it]\n",
                        hold.by
                    )));
                }
                let _guard = lock.lock_owned().await;
                session.set_turn_active(true);
                let work = async {
                    match session.adapter.turn_style() {
                        style @ (TurnStyle::Structured | TurnStyle::Acp) => {
                            session.transcript_begin(&TurnHeader {
                                turn_id: id.clone(),
                                asker,
                                conversation: conversation.clone(),
                                prompt: prompt.clone(),
                            });
                            if style == TurnStyle::Acp {
                                session
                                    .run_acp(&prompt, conversation.as_deref(), &events_tx)
                                    .await
                            } else {
                                session
                                    .run_structured(
                                        &id,
                                        &prompt,
                                        conversation.as_deref(),
                                        &events_tx,
                                        held,
                                    )
                                    .await
                            }
                        }
                        style => match held {
                            HeldTurn::New { invocation_id } => {
                                session
                                    .run_pty(
                                        &id,
                                        &prompt,
                                        style,
                                        &events_tx,
                                        invocation_id.as_deref(),
                                    )
                                    .await
                            }
                            HeldTurn::ResumeTerminal { invocation_id } => {
                                session
                                    .carry_on_pty(&id, &prompt, &invocation_id, &events_tx)
                                    .await
                            }
                            HeldTurn::Resume { .. } => harness_failure(
                                "a terminal turn has no journal to carry on".to_owned(),
                            ),
                        },
                    }
                };
                // Dropping the work ends it as a deadline does (an ACP
                // prompt gets `session/cancel`).
                let outcome = tokio::select! {
                    outcome = work => outcome,
                    () = session.cancel.notified() => {
                        session.abandon_pty_turn(&id);
                        TurnOutcome::Failed {
                            failure: TurnFailure::Cancelled,
                            message: "the turn was cancelled".to_owned(),
                        }
                    }
                };
                session.set_turn_active(false);
                outcome
            };
            let outcome = match tokio::time::timeout_at(deadline, run).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    session.abandon_pty_turn(&id);
                    session.set_turn_active(false);
                    TurnOutcome::Failed {
                        failure: TurnFailure::Timeout,
                        message: format!("the agent did not finish within {timeout_ms} ms"),
                    }
                }
            };
            if let TurnOutcome::Completed { response } = &outcome {
                session.emit(
                    EventKind::Message,
                    json!({ "message": {
                        "agentId": session.config.id,
                        "agentName": session.config.name,
                        "turnId": id,
                        "role": "assistant",
                        "content": response,
                    }}),
                );
            }
            tracing::debug!(agent = %session.config.id, turn = %id, ?outcome, "turn finished");
            session.transcript_end(&outcome);
            let _ = events_tx.send(TurnEvent::Finished(outcome)).await;
        });
        Turn {
            id: turn_id,
            events: events_rx,
        }
    }

    /// Cancels the running turn, if any: it ends `CANCELLED` (an ACP agent
    /// is asked to stop with `session/cancel`; the terminal of a terminal
    /// turn is left as it is). Turns queued behind it then run.
    pub fn cancel_turn(&self) {
        self.cancel.notify_waiters();
    }

    fn check_can_run_turn(&self) -> Result<(), RuntimeError> {
        if self.is_finished() || self.lock_state().stopped_at.is_some() {
            // A CLI that stopped at its first-run setup needs that setup,
            // not a restart.
            return Err(match self.lock_state().error.clone() {
                Some(error) if error.code == TurnFailure::OnboardingRequired.code() => {
                    RuntimeError::OnboardingRequired(error.message)
                }
                _ => RuntimeError::AgentStopped(self.config.id.clone()),
            });
        }
        let auth = self.adapter.auth_status(&self.agent_env);
        let mut state = self.lock_state();
        state.auth = auth;
        if state.login_required {
            return Err(RuntimeError::AuthRequired {
                message: format!(
                    "`{}` is waiting for a login; open the agent's terminal ({}) or {}",
                    self.adapter.program(),
                    state.login_url.as_deref().map_or_else(
                        || "no URL shown yet".to_owned(),
                        |url| format!("login URL {url}")
                    ),
                    self.adapter.login_hint()
                ),
                login_url: state.login_url.clone(),
            });
        }
        if self.adapter.turn_style() == TurnStyle::Structured && auth == AuthStatus::LoggedOut {
            return Err(RuntimeError::AuthRequired {
                message: format!(
                    "`{}` is not logged in: {}",
                    self.adapter.program(),
                    self.adapter.login_hint_for(&self.agent_env)
                ),
                login_url: None,
            });
        }
        Ok(())
    }

    async fn run_pty(
        &self,
        turn_id: &str,
        prompt: &str,
        style: TurnStyle,
        events: &mpsc::Sender<TurnEvent>,
        invocation_id: Option<&str>,
    ) -> TurnOutcome {
        let stopped = || TurnOutcome::Failed {
            failure: TurnFailure::AgentStopped,
            message: format!("agent `{}` stopped during the turn", self.config.id),
        };
        // Typing before the program shows its first prompt would make that
        // prompt look like the end of the turn.
        let mut ready = self.ready.subscribe();
        let mut finished = self.finished.subscribe();
        tokio::select! {
            () = wait_true(&mut ready) => {}
            () = wait_true(&mut finished) => return stopped(),
        }
        if self.lock_state().stopped_at.is_some() {
            return stopped();
        }
        let (done_tx, done_rx) = oneshot::channel();
        let output_start = {
            let mut guard = self.lock_turn();
            *guard = Some(PtyTurn::new(
                turn_id,
                prompt,
                style,
                Some(events.clone()),
                done_tx,
            ));
            self.output_offset.load(Ordering::SeqCst)
        };
        if let Some(invocation_id) = invocation_id {
            self.record_terminal_turn(turn_id, prompt, invocation_id, output_start);
        }
        // Prompts are checked where they enter the broker; stripping here
        // again means no path can put a paste end or a control key inside
        // the paste. A terminal's Enter key sends CR, also inside a paste.
        let body = crate::pty::prompt::strip_controls(prompt)
            .replace("\r\n", "\r")
            .replace('\n', "\r");
        let paste = self.lock_screen().bracketed_paste();
        let text = if paste {
            format!("\x1b[200~{body}\x1b[201~")
        } else {
            body
        };
        if self.input().send(Bytes::from(text)).await.is_err() {
            self.abandon_pty_turn(turn_id);
            return stopped();
        }
        tokio::time::sleep(self.adapter.enter_delay()).await;
        if let Some(turn) = self.lock_turn().as_mut() {
            turn.enter_sent_at = Some(Instant::now());
        }
        self.wake.notify_one();
        if self.input().send(Bytes::from_static(b"\r")).await.is_err() {
            self.abandon_pty_turn(turn_id);
            return stopped();
        }
        done_rx.await.unwrap_or_else(|_| stopped())
    }

    async fn run_structured(
        &self,
        turn_id: &str,
        prompt: &str,
        conversation: Option<&str>,
        events: &mpsc::Sender<TurnEvent>,
        held: HeldTurn,
    ) -> TurnOutcome {
        let resuming = match &held {
            HeldTurn::Resume { record, .. } => Some(record.resumed),
            HeldTurn::New { .. } => None,
            HeldTurn::ResumeTerminal { .. } => {
                return harness_failure(
                    "a structured turn is not typed into a terminal".to_owned(),
                );
            }
        };
        let resume = match resuming {
            // A carried-on turn continued its CLI session, or not, before
            // the restart; what is remembered now does not change that.
            Some(resumed) => resumed.then(String::new),
            None => self.lock_state().cli_sessions.get(conversation),
        };
        // A broker's agent whose CLI can send its approval requests out
        // runs that way, so a person is asked (see `codex_turn`).
        let asking = match resuming {
            Some(_) => None,
            None => self.approval_asker().zip(self.adapter.asking_command()),
        };
        let invocation = match (&asking, resuming) {
            (_, Some(_)) => None,
            (Some((_, argv)), None) => Some(crate::adapter::Invocation {
                argv: argv.clone(),
                stdin: None,
            }),
            (None, None) => self.adapter.invocation(prompt, resume.as_deref()),
        };
        if invocation.is_none() && resuming.is_none() {
            return harness_failure(format!(
                "the {} harness has no structured mode",
                self.adapter.harness()
            ));
        }
        // Runs that only write events are held when the broker has holders,
        // so they outlive a restart; a run that talks back (the app server)
        // is the broker's own child.
        let placement = self.config.holders.clone();
        let started = match (held, invocation, placement) {
            (HeldTurn::Resume { dir, record }, _, Some(placement)) => {
                tracing::info!(agent = %self.config.id, turn = %turn_id, "carrying on a held turn");
                StructuredRun::held(dir, record, &placement)
            }
            (HeldTurn::Resume { .. }, _, None) => {
                return harness_failure("this broker holds no turns to carry on".to_owned());
            }
            (HeldTurn::New { invocation_id }, Some(invocation), Some(placement))
                if asking.is_none() =>
            {
                let record = TurnRecord {
                    invocation_id,
                    session_id: self.config.id.clone(),
                    turn_id: turn_id.to_owned(),
                    conversation: conversation.map(str::to_owned),
                    prompt: prompt.to_owned(),
                    program: invocation.argv[0].clone(),
                    resumed: resume.is_some(),
                    terminal: None,
                };
                self.start_held(record, invocation, &placement).await
            }
            (HeldTurn::New { .. }, Some(invocation), _) => {
                self.start_direct(&invocation, asking.is_some())
            }
            (HeldTurn::New { .. }, None, _) => {
                return harness_failure("the structured run has nothing to run".to_owned());
            }
            (HeldTurn::ResumeTerminal { .. }, _, _) => {
                return harness_failure(
                    "a structured turn is not typed into a terminal".to_owned(),
                );
            }
        };
        let mut run = match started {
            Ok(run) => run,
            Err(message) => return harness_failure(message),
        };
        let stopping = {
            let mut state = self.lock_state();
            state.structured = Some(run.stopper());
            state.stop_reason.is_some() || state.stopped_at.is_some()
        };
        let _forget = ForgetStructuredPid(self);
        if stopping {
            // The session stopped while this run started; the guard kills it.
            return self.stopped_during_turn();
        }
        tracing::debug!(agent = %self.config.id, turn = %turn_id, pid = ?run.pid(), "structured run started");
        let program = run.program().to_owned();
        let (mut app, mut reader) = match run.take_output() {
            Err(message) => return harness_failure(message),
            Ok(RunOutput::Lines(reader)) => (None, Some(BufReader::new(reader))),
            Ok(RunOutput::App { stdin, stdout }) => match asking {
                Some((asker, _)) => {
                    let turn = AppTurn::new(prompt, &self.config.workdir, resume.as_deref());
                    (Some(AppServerRun::start(turn, stdin, stdout, asker)), None)
                }
                None => return harness_failure("the app server has nobody to ask".to_owned()),
            },
        };
        let classify = |text: &str| self.adapter.classify_failure(text);
        let mut line = Vec::new();
        let mut answer = StructuredAnswer::default();
        let mut outcome = None;
        while outcome.is_none() {
            let parsed = if let Some(app) = app.as_mut() {
                // A session that stops kills the server, but a turn waiting
                // for a person would wait on: the wait is dropped (and its
                // request withdrawn) when the session ends.
                let mut finished = self.finished.subscribe();
                tokio::select! {
                    events = app.next_events(&classify) => match events {
                        Some(events) => events,
                        None => break,
                    },
                    _ = finished.wait_for(|done| *done) => break,
                }
            } else if let Some(reader) = reader.as_mut() {
                match read_line_bounded(reader, &mut line, STRUCTURED_LINE_BYTES_MAX).await {
                    Ok(LineRead::Line) => {}
                    Ok(LineRead::TooLong) => continue,
                    Ok(LineRead::Eof) | Err(_) => break,
                }
                self.adapter
                    .parse_line(String::from_utf8_lossy(&line).trim_end())
            } else {
                break;
            };
            for event in parsed {
                match event {
                    StructuredEvent::Session(id) if self.adapter.resume_only_completed() => {
                        answer.cli_session = Some(id);
                    }
                    StructuredEvent::Session(id) => {
                        self.lock_state().cli_sessions.insert(conversation, id);
                    }
                    StructuredEvent::TextDelta(delta) => {
                        answer.deltas.push_str(&delta);
                        answer.delta_since_message = true;
                        self.tap(events, TurnEvent::Output(delta));
                    }
                    StructuredEvent::Message(message) => {
                        if !answer.delta_since_message {
                            self.tap(events, TurnEvent::Output(format!("{message}\n")));
                        }
                        answer.delta_since_message = false;
                        answer.last_message = Some(message);
                    }
                    StructuredEvent::Tool(tool) => {
                        self.tap(events, TurnEvent::Tool(tool));
                    }
                    StructuredEvent::Notice(notice) => answer.last_notice = Some(notice),
                    StructuredEvent::Completed { result } => {
                        outcome = Some(TurnOutcome::Completed {
                            response: answer.response(result),
                        });
                    }
                    StructuredEvent::Usage(usage) => {
                        answer.usage = answer.usage.plus(usage);
                        self.tap(events, TurnEvent::Usage(answer.usage));
                    }
                    StructuredEvent::Failed { message, kind } => {
                        outcome = Some(TurnOutcome::Failed {
                            failure: TurnFailure::of_kind(kind),
                            message,
                        });
                    }
                }
            }
        }
        if let (Some(TurnOutcome::Completed { .. }), Some(id)) =
            (&outcome, answer.cli_session.take())
        {
            self.lock_state().cli_sessions.insert(conversation, id);
        }
        if let Some(outcome) = outcome {
            match app {
                Some(app) => {
                    // The app server's turn is over: its input closes
                    // (after the last answers) and it exits on its own in
                    // moments. The outcome does not wait for that; the
                    // server gets the bounded time to finish its writes,
                    // then its group is killed.
                    drop(app);
                    tokio::spawn(async move {
                        let _ = run.wait_exit(STRUCTURED_EXIT_WAIT).await;
                        drop(run);
                    });
                }
                // A CLI run writes its session as it exits.
                None => {
                    let _ = run.wait_exit(STRUCTURED_EXIT_WAIT).await;
                    run.finished();
                }
            }
            return outcome;
        }
        let status = run.wait_exit(STRUCTURED_EXIT_WAIT).await;
        if self.lock_state().stop_reason.is_some()
            || self.lock_state().stopped_at.is_some()
            || self.is_finished()
        {
            return self.stopped_during_turn();
        }
        if status == RunEnd::Lost {
            run.finished();
            return harness_failure(format!(
                "{}: `{program}` was running in a holder that was killed",
                super::held::HOLDER_LOST
            ));
        }
        let tail = run.stderr_tail().await;
        run.finished();
        let detail = [tail.trim(), answer.last_notice.as_deref().unwrap_or("")]
            .into_iter()
            .filter(|text| !text.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let meaning = match &status {
            RunEnd::Exited(exit) => exit.code.and_then(|code| self.adapter.exit_meaning(code)),
            _ => None,
        };
        let how = match (&status, meaning) {
            (RunEnd::Exited(exit), _) if exit.journal_full => format!(
                "wrote more than {} MiB of events and was stopped",
                crate::holder::journal::JOURNAL_BYTES_MAX / (1024 * 1024)
            ),
            (RunEnd::Exited(exit), Some((_, meaning))) => format!("exited ({exit}: {meaning})"),
            (RunEnd::Exited(exit), None) => format!("exited ({exit})"),
            _ => "stopped answering".to_owned(),
        };
        let message = format!(
            "`{program}` {how} without finishing the turn{}",
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        );
        // A CLI that no longer has the session to continue (deleted by its
        // own cleanup, or by hand) would refuse every later turn of the
        // conversation: forget it, so the next turn starts a new one.
        let forgotten = resume.is_some() && self.adapter.resume_refused(&detail);
        if forgotten {
            self.lock_state().cli_sessions.remove(conversation);
        }
        let message = if forgotten {
            format!(
                "{message} (the CLI no longer has this conversation's session; the next turn starts a new one)"
            )
        } else {
            message
        };
        // A documented exit code says more than words on stderr, unless it
        // only says "failed".
        let kind = match meaning {
            Some((kind, _)) if kind != FailureKind::Harness => kind,
            _ => self.adapter.classify_failure(&detail),
        };
        TurnOutcome::Failed {
            failure: TurnFailure::of_kind(kind),
            message,
        }
    }

    /// Starts a structured run as the broker's own child (`talks`: its
    /// input stays open, for the app server's conversation).
    fn start_direct(
        &self,
        invocation: &crate::adapter::Invocation,
        talks: bool,
    ) -> Result<StructuredRun, String> {
        let mut command = tokio::process::Command::new(&invocation.argv[0]);
        command
            .args(&invocation.argv[1..])
            .current_dir(&self.config.workdir)
            .stdin(if invocation.stdin.is_some() || talks {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for name in &self.config.env_remove {
            command.env_remove(name);
        }
        command.envs(self.structured_env());
        let mut child = crate::home::with_user_umask(|| command.spawn())
            .map_err(|err| format!("cannot start `{}`: {err}", invocation.argv[0]))?;
        let group = GroupKill(child.id());
        if let Some(text) = invocation.stdin.clone()
            && let Some(mut stdin) = child.stdin.take()
        {
            tokio::spawn(async move {
                let _ = stdin.write_all(text.as_bytes()).await;
            });
        }
        let stderr_tail = child
            .stderr
            .take()
            .map(|stderr| tokio::spawn(read_tail(stderr)));
        Ok(StructuredRun::Direct {
            program: invocation.argv[0].clone(),
            child,
            stderr_tail,
            group,
        })
    }

    /// Starts a structured run in a holder of its own, which journals its
    /// events (see [`crate::holder::journal`]).
    async fn start_held(
        &self,
        record: TurnRecord,
        invocation: crate::adapter::Invocation,
        placement: &HolderPlacement,
    ) -> Result<StructuredRun, String> {
        let spec = crate::holder::HolderSpec {
            argv: invocation.argv.clone(),
            cwd: self.config.workdir.clone(),
            env: self
                .structured_env()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            env_remove: self.config.env_remove.clone(),
            rows: 0,
            cols: 0,
            journal: true,
            stdin: invocation.stdin.clone(),
        };
        let turns = placement.turns.clone();
        let record_for_dir = record.clone();
        let started = tokio::task::spawn_blocking(move || {
            let dir = journal::create(&turns, &record_for_dir)?;
            crate::holder::start(&dir, &spec)
                .inspect_err(|_| journal::remove(&dir))
                .map(|_| dir)
        })
        .await
        .map_err(|err| format!("the holder's start stopped: {err}"))?;
        match started {
            Ok(dir) => StructuredRun::held(dir, record, placement),
            Err(err) => Err(format!(
                "cannot start `{}` ({}): {err}",
                invocation.argv[0],
                err.code()
            )),
        }
    }

    /// The environment of a structured run, on top of the broker's.
    fn structured_env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.config
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .chain([
                (SESSION_MARKER_VAR, self.marker.as_str()),
                ("NO_COLOR", "1"),
            ])
    }

    /// Hands a structured turn's event to its consumer and to the
    /// transcript terminal watchers see.
    fn tap(&self, events: &mpsc::Sender<TurnEvent>, event: TurnEvent) {
        self.transcript_event(&event);
        let _ = events.try_send(event);
    }

    /// A structured turn starts: its transcript begins.
    fn transcript_begin(&self, header: &TurnHeader) {
        let cols = self.lock_screen().size().cols;
        let mut live = self.lock_live_transcript();
        let mut renderer = TranscriptRenderer::new(cols);
        let text = renderer.begin(header);
        live.renderer = Some(renderer);
        live.so_far.clear();
        push_bounded(&mut live.so_far, &text);
        let _ = self
            .transcript
            .send(TranscriptChunk::Begin(Bytes::from(text)));
    }

    fn transcript_event(&self, event: &TurnEvent) {
        let mut live = self.lock_live_transcript();
        let Some(renderer) = live.renderer.as_mut() else {
            return;
        };
        let text = renderer.event(event);
        if text.is_empty() {
            return;
        }
        push_bounded(&mut live.so_far, &text);
        let _ = self
            .transcript
            .send(TranscriptChunk::Text(Bytes::from(text)));
    }

    /// The turn ended: its transcript ends (when it had begun).
    fn transcript_end(&self, outcome: &TurnOutcome) {
        let mut live = self.lock_live_transcript();
        let Some(mut renderer) = live.renderer.take() else {
            return;
        };
        live.so_far.clear();
        let text = renderer.event(&TurnEvent::Finished(outcome.clone()));
        let _ = self
            .transcript
            .send(TranscriptChunk::End(Bytes::from(text)));
    }

    /// The person holding the session, while one does.
    pub fn held(&self) -> Option<HoldInfo> {
        self.lock_state()
            .held
            .as_ref()
            .map(|hold| hold.info.clone())
    }

    /// A person takes the session over: they get in line behind the turns
    /// already queued (waiting at most [`TAKE_WAIT`]), and the interactive
    /// CLI is restarted resumed on the CLI session of `conversation` (the
    /// most recently used one when `None`) when there is one and the
    /// harness can resume. Routed turns wait until [`Session::release`].
    pub async fn take(
        self: &Arc<Self>,
        by: String,
        conversation: Option<String>,
    ) -> Result<HoldInfo, RuntimeError> {
        if self.is_finished() {
            return Err(RuntimeError::AgentStopped(self.config.id.clone()));
        }
        if let Some(hold) = self.held() {
            return Err(RuntimeError::AgentHeld {
                id: self.config.id.clone(),
                by: hold.by,
            });
        }
        let turns = self.turn_lock.clone().lock_owned();
        let Ok(turns) = tokio::time::timeout(TAKE_WAIT, turns).await else {
            return Err(match self.held() {
                Some(hold) => RuntimeError::AgentHeld {
                    id: self.config.id.clone(),
                    by: hold.by,
                },
                None => RuntimeError::AgentBusy(self.config.id.clone()),
            });
        };
        let (conversation, cli_session) = {
            let state = self.lock_state();
            match conversation {
                Some(conversation) => {
                    let cli_session = state.cli_sessions.get(Some(&conversation));
                    (Some(conversation), cli_session)
                }
                None => match state.cli_sessions.latest() {
                    Some((conversation, cli_session)) => (conversation, Some(cli_session)),
                    None => (None, None),
                },
            }
        };
        let resume = cli_session
            .as_deref()
            .and_then(|id| self.adapter.interactive_resume_argv(id));
        if let Some(argv) = resume.clone() {
            self.restart_interactive(argv).await?;
        }
        let info = HoldInfo {
            by,
            conversation,
            cli_session: cli_session.filter(|_| resume.is_some()),
            since: rfc3339(self.config.broker_env.now_unix_ms()),
        };
        tracing::info!(agent = %self.config.id, by = %info.by, cli_session = ?info.cli_session, "taken over by a person");
        let mut state = self.lock_state();
        // The session may have stopped while the take waited; a hold on it
        // would keep the queued turns from hearing so.
        if state.stop_reason.is_some() || state.stopped_at.is_some() {
            return Err(RuntimeError::AgentStopped(self.config.id.clone()));
        }
        state.held = Some(Hold {
            info: info.clone(),
            _turns: turns,
        });
        Ok(info)
    }

    /// The person hands the session back: a resumed interactive CLI is
    /// restarted fresh, then the turns waiting run, continuing the CLI
    /// session (which now holds the person's turns too).
    pub async fn release(&self) -> Result<HoldInfo, RuntimeError> {
        let Some(hold) = self.lock_state().held.take() else {
            return Err(RuntimeError::AgentNotHeld(self.config.id.clone()));
        };
        if hold.info.cli_session.is_some() && !self.is_finished() {
            let argv = self.adapter.interactive_argv();
            if let Err(err) = self.restart_interactive(argv).await {
                tracing::warn!(agent = %self.config.id, cause = %err, "cannot restart the CLI after a release");
            }
        }
        tracing::info!(agent = %self.config.id, by = %hold.info.by, "released by a person");
        // Dropping the hold lets the waiting turns run.
        Ok(hold.info.clone())
    }

    /// Replaces the program on the terminal with `argv`: the old one is
    /// stopped and its output drained by the session task, the terminal
    /// view is reset, and the new one starts on the same screen model and
    /// output stream. Only while the caller holds the turn lock, so no turn
    /// reads the terminal meanwhile.
    async fn restart_interactive(&self, argv: Vec<String>) -> Result<(), RuntimeError> {
        let (drained_tx, drained_rx) = oneshot::channel();
        let (next_tx, next_rx) = oneshot::channel();
        {
            let state = self.lock_state();
            if state.stop_reason.is_some() || state.stopped_at.is_some() {
                return Err(RuntimeError::AgentStopped(self.config.id.clone()));
            }
            *self.lock_replacement() = Some(Replacement {
                drained: drained_tx,
                next: next_rx,
            });
        }
        let old = self.process();
        old.terminate(self.config.stop_grace).await;
        if tokio::time::timeout(RESTART_DRAIN_WAIT, drained_rx)
            .await
            .is_err()
        {
            let _ = next_tx.send(None);
            return Err(RuntimeError::SpawnFailed(
                "the old CLI's output did not drain".to_owned(),
            ));
        }
        if self.lock_state().stop_reason.is_some() {
            let _ = next_tx.send(None);
            return Err(RuntimeError::AgentStopped(self.config.id.clone()));
        }
        // A full reset, for the screen model and for every watcher: the
        // old program may have left modes set (alternate screen, colours).
        let size = {
            let mut screen = self.lock_screen();
            let seq = screen.process(super::transcript::TERMINAL_RESET);
            let _ = self.output.send(OutputChunk {
                seq,
                bytes: Bytes::from_static(super::transcript::TERMINAL_RESET),
            });
            self.pumped_seq.store(seq, Ordering::SeqCst);
            screen.size()
        };
        let mut env = self.config.env.clone();
        env.push((SESSION_MARKER_VAR.to_owned(), self.marker.clone()));
        let spec = SpawnSpec {
            argv: argv.clone(),
            cwd: self.config.workdir.clone(),
            env,
            env_remove: self.config.env_remove.clone(),
            size,
        };
        let screen = self.screen.clone();
        let spawned = tokio::task::spawn_blocking(move || PtyProcess::spawn(&spec, screen)).await;
        match spawned {
            Ok(Ok((process, output_rx))) => {
                tracing::info!(agent = %self.config.id, pid = process.pid(), ?argv, "CLI restarted");
                self.generation.fetch_add(1, Ordering::SeqCst);
                *self.lock_terminal() = OnTerminal {
                    process: Arc::new(process),
                    argv,
                };
                let _ = next_tx.send(Some(output_rx));
                Ok(())
            }
            Ok(Err(err)) => {
                let _ = next_tx.send(None);
                Err(RuntimeError::SpawnFailed(err.to_string()))
            }
            Err(err) => {
                let _ = next_tx.send(None);
                Err(RuntimeError::SpawnFailed(format!(
                    "the spawner stopped: {err}"
                )))
            }
        }
    }

    /// The program on the terminal now.
    fn process(&self) -> Arc<PtyProcess> {
        self.lock_terminal().process.clone()
    }

    /// Who answers this session's approval requests: the broker's asker,
    /// for an agent with an instance name to ask as.
    fn approval_asker(&self) -> Option<ApprovalAsker> {
        let asker = self.config.permissions.clone()?;
        let agent = self
            .config
            .env
            .iter()
            .find(|(name, _)| name == crate::daemon::credentials::AGENT_VAR)
            .map(|(_, value)| value.clone())?;
        Some(ApprovalAsker { asker, agent })
    }

    /// A turn of an Agent Client Protocol agent (see `acp_turn`), in the
    /// ACP session of `conversation`.
    async fn run_acp(
        &self,
        prompt: &str,
        conversation: Option<&str>,
        events: &mpsc::Sender<TurnEvent>,
    ) -> TurnOutcome {
        let Some(argv) = self.adapter.acp_command() else {
            return harness_failure(format!(
                "the {} harness does not speak the Agent Client Protocol",
                self.adapter.harness()
            ));
        };
        let resume = self.lock_state().cli_sessions.get(conversation);
        // The agent and what it starts carry the session's marker, so that
        // what leaves its process group still ends with the session.
        let mut env = self.config.env.clone();
        env.push((SESSION_MARKER_VAR.to_owned(), self.marker.clone()));
        let spawn = AcpSpawn {
            asker: self.config.permissions.clone(),
            argv: &argv,
            cwd: &self.config.workdir,
            env: &env,
            env_remove: &self.config.env_remove,
        };
        let classify = |text: &str| self.adapter.classify_failure(text);
        // The turn's events pass through the transcript on their way out,
        // as a structured turn's do.
        let (tap_tx, mut tap_rx) = mpsc::channel(TURN_EVENTS_MAX);
        let run = async {
            let turn = self
                .acp
                .run_turn(&spawn, prompt, resume.as_deref(), &tap_tx, &classify)
                .await;
            drop(tap_tx);
            turn
        };
        let forward = async {
            while let Some(event) = tap_rx.recv().await {
                self.tap(events, event);
            }
        };
        let (turn, ()) = tokio::join!(run, forward);
        if let Some(session_id) = turn.session_id {
            self.lock_state()
                .cli_sessions
                .insert(conversation, session_id);
        }
        let stopping = {
            let state = self.lock_state();
            state.stop_reason.is_some() || state.stopped_at.is_some()
        };
        match turn.outcome {
            TurnOutcome::Failed { .. } if stopping => TurnOutcome::Failed {
                failure: TurnFailure::AgentStopped,
                message: format!("agent `{}` stopped during the turn", self.config.id),
            },
            outcome => outcome,
        }
    }

    fn abandon_pty_turn(&self, turn_id: &str) {
        let mut turn = self.lock_turn();
        if turn.as_ref().is_some_and(|turn| turn.id == turn_id) {
            *turn = None;
        }
    }

    /// Records where a routed terminal turn began in the held program's
    /// output (see [`journal::TerminalTurn`]), so a broker that restarts
    /// while it runs carries it on. Nothing is recorded for a terminal of
    /// the broker's own, or one whose holder does not count its output.
    fn record_terminal_turn(
        &self,
        turn_id: &str,
        prompt: &str,
        invocation_id: &str,
        output_start: u64,
    ) {
        let Some(placement) = self.config.holders.as_ref() else {
            return;
        };
        if output_start == OUTPUT_OFFSET_UNKNOWN {
            return;
        }
        let record = TurnRecord {
            invocation_id: Some(invocation_id.to_owned()),
            session_id: self.config.id.clone(),
            turn_id: turn_id.to_owned(),
            conversation: None,
            prompt: prompt.to_owned(),
            program: self.adapter.program().to_owned(),
            resumed: false,
            terminal: Some(journal::TerminalTurn { output_start }),
        };
        if let Err(err) = journal::record_terminal(&placement.turns, &record) {
            tracing::warn!(agent = %self.config.id, turn = %turn_id, code = err.code(), cause = %err, "cannot record a terminal turn; a restart would end it as interrupted");
        }
    }

    /// Puts back the routed terminal turn `record` that was running when
    /// the last broker stopped, before the holder's replay is pumped: the
    /// turn's text is taken from where it began in the replay, and the
    /// turn ends as any terminal turn does (at the prompt, a question, or
    /// quiet). Its flight takes it with [`Session::carry_on_pty`].
    fn install_carried(&self, record: TurnRecord) {
        let (Some(terminal), Some(invocation_id)) = (record.terminal, record.invocation_id) else {
            return;
        };
        let style = self.adapter.turn_style();
        if !matches!(style, TurnStyle::PtyPrompt | TurnStyle::PtyQuiet(_)) {
            return;
        }
        let replay_start = self.output_offset.load(Ordering::SeqCst);
        if replay_start == OUTPUT_OFFSET_UNKNOWN || terminal.output_start < replay_start {
            // The turn's beginning is no longer in the holder's
            // scrollback: its output cannot be given whole, so the flight
            // fails (no carried turn) rather than report a part as all.
            tracing::warn!(agent = %self.config.id, turn = %record.turn_id, "a terminal turn's beginning is past the scrollback; it cannot be carried on");
            return;
        }
        let (done_tx, done_rx) = oneshot::channel();
        let unclaimed = Arc::new(Mutex::new(String::new()));
        let mut guard = self.lock_turn();
        *guard = Some(PtyTurn {
            unclaimed: Some(unclaimed.clone()),
            skip_bytes: terminal.output_start - replay_start,
            // Its Enter went in before the restart.
            enter_sent_at: Some(Instant::now()),
            ..PtyTurn::new(&record.turn_id, &record.prompt, style, None, done_tx)
        });
        drop(guard);
        self.lock_state().turn_active = true;
        *lock(&self.carried) = Some(CarriedTurn {
            invocation_id,
            turn_id: record.turn_id,
            unclaimed,
            done: done_rx,
        });
    }

    /// Takes over the carried-on terminal turn of `invocation_id` (see
    /// [`Session::install_carried`]): its text so far, then the rest as it
    /// comes, then its end. `prompt` is the flight's (the echo of it is
    /// left out of the answer).
    async fn carry_on_pty(
        &self,
        turn_id: &str,
        prompt: &str,
        invocation_id: &str,
        events: &mpsc::Sender<TurnEvent>,
    ) -> TurnOutcome {
        let carried = {
            let mut carried = lock(&self.carried);
            match carried.as_ref() {
                Some(found) if found.invocation_id == invocation_id && found.turn_id == turn_id => {
                    carried.take()
                }
                _ => None,
            }
        };
        let Some(carried) = carried else {
            return harness_failure(format!(
                "{}: the terminal turn was not found when agent `{}` came back (its beginning may be past the scrollback)",
                super::held::HOLDER_LOST,
                self.config.id
            ));
        };
        {
            // Under the turn lock, so no text is sent twice or lost
            // between what waited and what comes next.
            let mut guard = self.lock_turn();
            let so_far = std::mem::take(&mut *lock(&carried.unclaimed));
            if !so_far.is_empty() {
                let _ = events.try_send(TurnEvent::Output(so_far));
            }
            if let Some(turn) = guard.as_mut().filter(|turn| turn.id == turn_id) {
                turn.message = prompt.to_owned();
                turn.events = Some(events.clone());
                turn.unclaimed = None;
            }
        }
        tracing::info!(agent = %self.config.id, turn = %turn_id, "carrying on a terminal turn");
        carried.done.await.unwrap_or_else(|_| TurnOutcome::Failed {
            failure: TurnFailure::AgentStopped,
            message: format!("agent `{}` stopped during the turn", self.config.id),
        })
    }

    fn set_turn_active(&self, active: bool) {
        self.lock_state().turn_active = active;
    }

    fn mark_ready(&self) {
        let newly_ready = {
            let mut state = self.lock_state();
            if state.ready_at.is_none() && state.stopped_at.is_none() {
                state.ready_at = Some(self.config.broker_env.now_unix_ms());
                true
            } else {
                false
            }
        };
        if newly_ready {
            self.ready.send_replace(true);
            tracing::info!(agent = %self.config.id, "agent ready");
            self.emit(EventKind::AgentReady, json!({ "agent": self.info() }));
        }
    }

    /// Output from the terminal (called by the session task, in order).
    fn on_output(&self, chunk: &OutputChunk) {
        {
            let mut guard = self.lock_turn();
            if let Some(turn) = guard.as_mut() {
                let skip = usize::try_from(turn.skip_bytes)
                    .unwrap_or(usize::MAX)
                    .min(chunk.bytes.len());
                turn.skip_bytes -= skip as u64;
                let text = turn.plain.feed(&chunk.bytes[skip..]);
                if !text.is_empty() {
                    turn.transcript.push_str(&text);
                    if let Some(enter_sent_at) = turn.enter_sent_at {
                        turn.last_output_at = Some(Instant::now().max(enter_sent_at));
                        if text.contains('\n') {
                            turn.newline_after_enter = true;
                        }
                    }
                    match (&turn.events, &turn.unclaimed) {
                        (Some(events), _) => {
                            let _ = events.try_send(TurnEvent::Output(text));
                        }
                        (None, Some(unclaimed)) => {
                            let mut unclaimed = lock(unclaimed);
                            if unclaimed.len() < FLIGHT_OUTPUT_BYTES_MAX {
                                unclaimed.push_str(&text);
                            }
                        }
                        (None, None) => {}
                    }
                }
            }
            let offset = self.output_offset.load(Ordering::SeqCst);
            if offset != OUTPUT_OFFSET_UNKNOWN {
                self.output_offset
                    .store(offset + chunk.bytes.len() as u64, Ordering::SeqCst);
            }
        }
        self.pumped_seq.store(chunk.seq, Ordering::SeqCst);
        self.end_turn_if_caught_up();
    }

    /// Ends the terminal turn whose end the screen showed, once the output
    /// the screen had seen by then is all in the transcript.
    fn end_turn_if_caught_up(&self) {
        let pumped = self.pumped_seq.load(Ordering::SeqCst);
        let ended = {
            let mut guard = self.lock_turn();
            let due = guard
                .as_ref()
                .and_then(|turn| turn.end_at.as_ref())
                .is_some_and(|(seq, _)| *seq <= pumped);
            if due { guard.take() } else { None }
        };
        if let Some(mut turn) = ended {
            match turn.end_at.take() {
                Some((_, TurnEnd::Question(question))) => turn.pause(question),
                _ => turn.complete(true),
            }
        }
    }

    /// When the running turn ends for lack of output, if it is a quiet-style
    /// turn that has sent its Enter.
    fn quiet_deadline(&self) -> Option<Instant> {
        // A person is being asked the question on screen: the turn waits
        // for their answer, however quiet the program is meanwhile.
        if self.lock_questions().asking() {
            return None;
        }
        let guard = self.lock_turn();
        let turn = guard.as_ref()?;
        let TurnStyle::PtyQuiet(quiet) = turn.style else {
            return None;
        };
        let since = turn.last_output_at.or(turn.enter_sent_at)?;
        Some(since + quiet)
    }

    fn on_quiet(&self) {
        let due = self
            .quiet_deadline()
            .is_some_and(|deadline| Instant::now() >= deadline);
        if due {
            let turn = self.lock_turn().take();
            if let Some(turn) = turn {
                turn.complete(false);
            }
        }
    }

    /// Reads the screen through the adapter and acts on what it shows.
    fn classify(self: &Arc<Self>) {
        let (text, cursor_line, seen_seq) = {
            let screen = self.lock_screen();
            (screen.text(), screen.cursor_line(), screen.seq())
        };
        let shown = self.adapter.classify(ScreenView {
            text: &text,
            cursor_line: &cursor_line,
        });
        let dialog = match &shown {
            ScreenState::Question(question) => {
                super::question::dialog(&text, question, self.generation.load(Ordering::SeqCst))
            }
            _ => None,
        };
        let mut emit = Vec::new();
        {
            let mut state = self.lock_state();
            if state.stopped_at.is_some() {
                return;
            }
            match &shown {
                ScreenState::LoginRequired { url } => {
                    if !state.login_required || state.login_url != *url {
                        emit.push((EventKind::LoginRequired, Some(url.clone()), None));
                    }
                    state.login_required = true;
                    state.login_url = url.clone();
                    state.question = None;
                }
                ScreenState::Question(question) => {
                    if state.question.as_ref() != Some(question) {
                        emit.push((EventKind::Question, None, Some(question.clone())));
                    }
                    state.question = Some(question.clone());
                    state.login_required = false;
                }
                ScreenState::Ready | ScreenState::Busy | ScreenState::Starting => {
                    if shown != ScreenState::Starting {
                        state.login_required = false;
                        state.question = None;
                    }
                }
            }
            state.screen_state = shown.clone();
        }
        if shown == ScreenState::Ready {
            self.mark_ready();
        }
        let asked = self.question_asker().is_some();
        if asked {
            match (&shown, &dialog) {
                (ScreenState::Question(_), Some(dialog)) => {
                    let now = std::time::Instant::now();
                    let new = self.lock_questions().shown(dialog, now);
                    match new {
                        Shown::Same => {}
                        Shown::LookAgainAt(at) => self.look_again_at(at),
                        Shown::Ask(new) => self.ask_question(new),
                        Shown::Limited { first } => {
                            if first {
                                tracing::warn!(
                                    agent = %self.config.id,
                                    per_window = super::question::QUESTIONS_PER_WINDOW_MAX,
                                    window_secs = super::question::QUESTION_RATE_WINDOW.as_secs(),
                                    "the terminal asks questions faster than people are asked; the next ones are left to the terminal"
                                );
                            }
                        }
                    }
                }
                (ScreenState::Starting, _) => {}
                _ => self.lock_questions().cleared(),
            }
        }
        for (kind, url, question) in emit {
            let agent = self.info();
            match kind {
                EventKind::LoginRequired => {
                    tracing::info!(agent = %self.config.id, url = ?url.as_ref().and_then(|u| u.as_ref()), "agent needs a login");
                    self.emit(kind, json!({ "agent": agent, "loginUrl": url.flatten() }));
                }
                _ => self.emit(kind, json!({ "agent": agent, "question": question })),
            }
        }
        // The running terminal turn ends at the prompt (after its Enter was
        // echoed) or pauses at a question, once its output is all in.
        {
            let mut guard = self.lock_turn();
            if let Some(turn) = guard.as_mut()
                && turn.end_at.is_none()
                && turn.enter_sent_at.is_some()
            {
                turn.end_at = match &shown {
                    ScreenState::Ready
                        if turn.style == TurnStyle::PtyPrompt && turn.newline_after_enter =>
                    {
                        Some((seen_seq, TurnEnd::Prompt))
                    }
                    // A person is asked through the broker and the answer is
                    // typed into the terminal: the turn goes on, unless
                    // nobody could be asked.
                    ScreenState::Question(_)
                        if asked && self.lock_questions().left_to_terminal().is_none() =>
                    {
                        None
                    }
                    ScreenState::Question(question) => {
                        Some((seen_seq, TurnEnd::Question(question.clone())))
                    }
                    _ => None,
                };
            }
        }
        self.end_turn_if_caught_up();
    }

    /// The broker's asker and the instance this session runs, when the
    /// broker gave it an identity: its screen's questions go to a person.
    fn question_asker(&self) -> Option<(Arc<dyn crate::pty::PermissionAsker>, String)> {
        let asker = self.config.permissions.clone()?;
        let agent = self
            .config
            .env
            .iter()
            .find(|(name, _)| name == crate::daemon::credentials::AGENT_VAR)
            .map(|(_, value)| value.clone())?;
        Some((asker, agent))
    }

    /// Reads the screen again at `at`, when a new dialog's debounce is
    /// over: a program waiting for an answer prints nothing that would.
    fn look_again_at(self: &Arc<Self>, at: std::time::Instant) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(Instant::from_std(at)).await;
            if let Some(session) = weak.upgrade() {
                session.classify();
            }
        });
    }

    /// Asks a person about the dialog on screen and types their answer,
    /// while the dialog is still the one on screen and nobody typed into
    /// the terminal since it showed.
    fn ask_question(self: &Arc<Self>, new: NewQuestion) {
        let Some((asker, agent)) = self.question_asker() else {
            return;
        };
        let yes = self.adapter.answer_keys(&new.question, true);
        let no = self.adapter.answer_keys(&new.question, false);
        let weak = Arc::downgrade(self);
        let questions = self.questions.clone();
        tracing::info!(agent = %self.config.id, question = %new.question, "the terminal asks a question");
        tokio::spawn(async move {
            let outcome = asker.ask_question(agent, new.summary, new.gone).await;
            let answer = match outcome {
                QuestionOutcome::Answer(answer) => answer,
                QuestionOutcome::Withdrawn => {
                    lock(&questions).finish(new.id);
                    return;
                }
                QuestionOutcome::Unasked => {
                    lock(&questions).unasked(new.id);
                    // The running turn pauses at the question, as it does
                    // when no broker asks.
                    if let Some(session) = weak.upgrade() {
                        session.classify();
                    }
                    return;
                }
            };
            let Some(session) = weak.upgrade() else {
                return;
            };
            let keys = if answer { yes } else { no };
            if !session.type_answer(new.id, keys).await {
                tracing::info!(
                    agent = %session.config.id,
                    "an answer from the mesh was not typed: the dialog changed or a person typed in the terminal"
                );
                lock(&questions).finish(new.id);
            }
        });
    }

    /// Types `keys`, the answer to episode `id`, if the dialog on screen is
    /// still that episode's and nobody typed in the terminal since it
    /// showed. The check and the write happen under the input gate (no
    /// person's keystrokes between them) and the screen's lock (the screen
    /// checked is the latest one). Whether the keys were typed.
    async fn type_answer(&self, id: u64, keys: &'static [u8]) -> bool {
        let _gate = self.input_gate.lock().await;
        let input = self.input();
        let Ok(permit) = input.reserve().await else {
            return false;
        };
        let typed = {
            let screen = self.lock_screen();
            let (text, cursor_line) = (screen.text(), screen.cursor_line());
            let on_screen = match self.adapter.classify(ScreenView {
                text: &text,
                cursor_line: &cursor_line,
            }) {
                ScreenState::Question(question) => super::question::dialog(
                    &text,
                    &question,
                    self.generation.load(Ordering::SeqCst),
                )
                .map(|dialog| dialog.key),
                _ => None,
            };
            let typed = self.lock_questions().answer(id, on_screen);
            if typed {
                permit.send(Bytes::from_static(keys));
            }
            typed
        };
        if typed {
            // The program's reaction to the answer starts a new quiet
            // period of the running turn.
            if let Some(turn) = self.lock_turn().as_mut()
                && turn.enter_sent_at.is_some()
            {
                turn.last_output_at = Some(Instant::now());
            }
            self.wake.notify_one();
        }
        typed
    }

    fn lock_questions(&self) -> MutexGuard<'_, Questions> {
        lock(&self.questions)
    }

    /// The session ended: record why, tell subscribers, fail the running
    /// turn, free the slot.
    fn finish(&self) {
        let exit = self.process().exited();
        // What the CLI last showed says why it exited, when it stopped at
        // its first-run setup or a login: a code to act on, not a bare exit.
        let screen_text = self.lock_screen().text();
        let exit_kind = self.adapter.classify_failure(&screen_text);
        let (reason, error, permit) = {
            let mut state = self.lock_state();
            state.stopped_at = Some(self.config.broker_env.now_unix_ms());
            state.exit = exit.clone();
            state.login_required = false;
            state.question = None;
            let requested = state.stop_reason.take();
            // Nobody can answer an ended session's question.
            self.lock_questions().cleared();
            let failed = exit
                .as_ref()
                .is_some_and(|exit| exit.code != 0 || exit.signal.is_some());
            let how = match &exit {
                Some(ExitInfo {
                    signal: Some(signal),
                    ..
                }) if signal == super::held::HOLDER_LOST => signal.clone(),
                Some(ExitInfo {
                    signal: Some(signal),
                    ..
                }) => format!("killed by {signal}"),
                Some(exit) => format!("exited with code {}", exit.code),
                None => "ended".to_owned(),
            };
            let holder_lost = exit
                .as_ref()
                .is_some_and(|exit| exit.signal.as_deref() == Some(super::held::HOLDER_LOST));
            let (reason, error) = match requested {
                Some(reason) => (reason, None),
                // The program may still run, but nothing of ours can reach
                // it: a harness failure, whatever the screen last showed.
                None if holder_lost => (
                    how.clone(),
                    Some(ErrorInfo {
                        code: TurnFailure::Harness.code(),
                        message: format!(
                            "{}: the process holding the agent's terminal is gone",
                            super::held::HOLDER_LOST
                        ),
                    }),
                ),
                None if failed => (how.clone(), Some(self.exit_error(exit_kind, &how))),
                None => (how, None),
            };
            state.error = error.clone();
            // Nobody holds a stopped session; the turns waiting behind the
            // hold run and hear that it stopped.
            state.held = None;
            if let Some(structured) = &state.structured {
                structured.stop();
            }
            self.acp.close();
            (reason, error, state.permit.take())
        };
        drop(permit);
        // Whatever the session started that left its process group (a
        // daemon of the CLI's) ends with it.
        let marker = self.marker.clone();
        let grace = self.config.stop_grace;
        tokio::spawn(async move { stop_marked(&marker, grace).await });
        if let Some(turn) = self.lock_turn().take() {
            let _ = turn.done.send(match self.stopped_during_turn() {
                _ if reason == super::held::HOLDER_LOST => TurnOutcome::Failed {
                    failure: TurnFailure::Harness,
                    message: format!(
                        "{}: agent `{}` lost its terminal during the turn",
                        super::held::HOLDER_LOST,
                        self.config.id
                    ),
                },
                TurnOutcome::Failed {
                    failure: TurnFailure::AgentStopped,
                    message,
                } => TurnOutcome::Failed {
                    failure: TurnFailure::AgentStopped,
                    message: format!("{message} ({reason})"),
                },
                outcome => outcome,
            });
        }
        let agent = self.info();
        if let Some(error) = error {
            tracing::warn!(agent = %self.config.id, cause = %error.message, "agent failed");
            self.emit(
                EventKind::AgentError,
                json!({ "agent": agent, "error": error }),
            );
        }
        tracing::info!(agent = %self.config.id, %reason, "agent stopped");
        self.emit(
            EventKind::AgentStopped,
            json!({ "agent": agent, "reason": reason }),
        );
        self.finished.send_replace(true);
    }

    /// How a turn ends when the session stops under it: with the session's
    /// `ONBOARDING_REQUIRED` when its CLI stopped at its first-run setup
    /// (the one thing to do is that setup), else as stopped.
    fn stopped_during_turn(&self) -> TurnOutcome {
        match self.lock_state().error.clone() {
            Some(error) if error.code == TurnFailure::OnboardingRequired.code() => {
                TurnOutcome::Failed {
                    failure: TurnFailure::OnboardingRequired,
                    message: error.message,
                }
            }
            _ => TurnOutcome::Failed {
                failure: TurnFailure::AgentStopped,
                message: format!("agent `{}` stopped during the turn", self.config.id),
            },
        }
    }

    /// The error of a CLI that exited with a failure, `kind` read off its
    /// last screen.
    fn exit_error(&self, kind: FailureKind, how: &str) -> ErrorInfo {
        let program = self.adapter.program();
        match kind {
            FailureKind::OnboardingRequired => ErrorInfo {
                code: TurnFailure::OnboardingRequired.code(),
                message: format!(
                    "`{program}` {how} at its first-run setup: {}",
                    self.adapter.onboarding_hint()
                ),
            },
            FailureKind::AuthRequired => ErrorInfo {
                code: TurnFailure::AuthRequired.code(),
                message: format!(
                    "`{program}` {how} asking for a login: {}",
                    self.adapter.login_hint()
                ),
            },
            FailureKind::Harness => ErrorInfo {
                code: "AGENT_EXITED",
                message: format!("`{program}` {how}"),
            },
        }
    }

    fn emit(&self, kind: EventKind, data: serde_json::Value) {
        let _ = self.events.send(RuntimeEvent::new(
            &self.config.broker_env,
            kind,
            &self.config.id,
            data,
        ));
    }

    fn lock_state(&self) -> MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_terminal(&self) -> MutexGuard<'_, OnTerminal> {
        self.terminal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_replacement(&self) -> MutexGuard<'_, Option<Replacement>> {
        self.replacement
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_live_transcript(&self) -> MutexGuard<'_, LiveTranscript> {
        self.live_transcript
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_turn(&self) -> MutexGuard<'_, Option<PtyTurn>> {
        self.pty_turn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_screen(&self) -> MutexGuard<'_, Screen> {
        self.screen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl PtyTurn {
    /// A turn about to be typed: no output seen, no Enter sent yet.
    fn new(
        id: &str,
        message: &str,
        style: TurnStyle,
        events: Option<mpsc::Sender<TurnEvent>>,
        done: oneshot::Sender<TurnOutcome>,
    ) -> PtyTurn {
        PtyTurn {
            id: id.to_owned(),
            message: message.to_owned(),
            style,
            plain: PlainText::new(),
            transcript: Transcript::new(TRANSCRIPT_CHARS_MAX),
            events,
            unclaimed: None,
            skip_bytes: 0,
            enter_sent_at: None,
            newline_after_enter: false,
            last_output_at: None,
            end_at: None,
            done,
        }
    }

    fn response(&self, drop_prompt_line: bool) -> String {
        let mut lines = self.transcript.lines();
        // The terminal echoes what was typed: drop those leading lines.
        let mut typed = self
            .message
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .peekable();
        while let (Some(first), Some(expected)) = (lines.first(), typed.peek()) {
            if first.contains(expected) {
                lines.remove(0);
                typed.next();
            } else {
                break;
            }
        }
        if drop_prompt_line {
            lines.pop();
        }
        while lines.last().is_some_and(|line| line.trim().is_empty()) {
            lines.pop();
        }
        while lines.first().is_some_and(|line| line.trim().is_empty()) {
            lines.remove(0);
        }
        FlightOutput::from_text(lines.join("\n")).into_string()
    }

    fn complete(self, drop_prompt_line: bool) {
        let response = self.response(drop_prompt_line);
        let _ = self.done.send(TurnOutcome::Completed { response });
    }

    fn pause(self, question: String) {
        let response = self.response(false);
        let _ = self.done.send(TurnOutcome::Waiting { question, response });
    }
}

/// The session task: see the module documentation. It pumps the program
/// on the terminal until it is gone, then the one that replaced it, if any.
async fn pump(session: Arc<Session>, mut output_rx: mpsc::Receiver<OutputChunk>) {
    loop {
        pump_program(&session, output_rx).await;
        let replacement = session.lock_replacement().take();
        let Some(replacement) = replacement else {
            break;
        };
        let _ = replacement.drained.send(());
        match replacement.next.await {
            Ok(Some(next)) => output_rx = next,
            _ => break,
        }
    }
    session.classify();
    session.finish();
}

/// Pumps one program's output until it has exited and its output is drained.
async fn pump_program(session: &Arc<Session>, mut output_rx: mpsc::Receiver<OutputChunk>) {
    let process = session.process();
    let mut exit = process.exit_watch();
    let mut output_open = true;
    let mut exited = false;
    let mut cleanup: Option<tokio::task::JoinHandle<()>> = None;
    let mut drain_until: Option<Instant> = None;
    let mut dirty = true;
    let mut last_classify = Instant::now() - CLASSIFY_INTERVAL;
    loop {
        if exited && (!output_open || drain_until.is_some_and(|until| Instant::now() >= until)) {
            break;
        }
        let classify_at = dirty.then_some(last_classify + CLASSIFY_INTERVAL);
        let quiet_at = session.quiet_deadline();
        tokio::select! {
            chunk = output_rx.recv(), if output_open => match chunk {
                Some(chunk) => {
                    session.on_output(&chunk);
                    let _ = session.output.send(chunk);
                    dirty = true;
                }
                None => output_open = false,
            },
            _ = exit.wait_for(Option::is_some), if !exited => {
                exited = true;
                // The program is gone; whatever it started in its group or
                // session goes too, while the last output drains.
                // Only this program's group and session: the session may go
                // on with a replacement (a person's take or release), and
                // when it does not, `finish` stops the rest of its marked
                // processes after recording why it ended (a structured run
                // killed before that would hide the reason).
                let process = process.clone();
                let grace = session.config.stop_grace;
                cleanup = Some(tokio::spawn(async move {
                    process.terminate(grace).await;
                }));
            }
            joined = async { cleanup.as_mut().expect("guarded").await }, if cleanup.is_some() => {
                let _ = joined;
                cleanup = None;
                drain_until = Some(Instant::now() + DRAIN_AFTER_KILL);
            }
            () = sleep_until_some(classify_at), if classify_at.is_some() => {
                session.classify();
                dirty = false;
                last_classify = Instant::now();
            }
            () = sleep_until_some(quiet_at), if quiet_at.is_some() => session.on_quiet(),
            () = sleep_until_some(drain_until), if drain_until.is_some() => {}
            () = session.wake.notified() => {}
        }
        // Read the screen as soon as the burst is over, not a tick later.
        if dirty && output_rx.is_empty() && Instant::now() >= last_classify + CLASSIFY_INTERVAL {
            session.classify();
            dirty = false;
            last_classify = Instant::now();
        }
    }
    if let Some(cleanup) = cleanup {
        let _ = cleanup.await;
    }
}

/// Appends to a replay buffer, keeping its last
/// [`TRANSCRIPT_REPLAY_BYTES_MAX`] bytes (cut at a line start when there
/// is one, so no escape sequence is cut in half).
fn push_bounded(buffer: &mut String, text: &str) {
    buffer.push_str(text);
    if buffer.len() <= TRANSCRIPT_REPLAY_BYTES_MAX {
        return;
    }
    let mut cut = buffer.len() - TRANSCRIPT_REPLAY_BYTES_MAX;
    while !buffer.is_char_boundary(cut) {
        cut += 1;
    }
    let cut = buffer[cut..]
        .find('\n')
        .map_or(cut, |newline| cut + newline + 1);
    buffer.drain(..cut);
}

/// Returns once `watch` holds `true` (or its sender is gone).
pub(crate) async fn wait_true(watch: &mut watch::Receiver<bool>) {
    loop {
        if *watch.borrow_and_update() {
            return;
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn harness_failure(message: String) -> TurnOutcome {
    TurnOutcome::Failed {
        failure: TurnFailure::Harness,
        message,
    }
}

/// The answer of a structured run, assembled from its events.
/// Scout conversations an agent session remembers the CLI session of. An
/// agent that has talked in more conversations forgets the least recently
/// used; a turn in a forgotten conversation starts a new CLI session.
const CLI_SESSIONS_MAX: usize = 256;

/// The CLI session id of each Scout conversation (`None`: the session's
/// default conversation, for turns that name none), least recently used
/// first.
#[derive(Debug, Default)]
struct CliSessions {
    entries: Vec<(Option<String>, String)>,
}

impl CliSessions {
    fn get(&self, conversation: Option<&str>) -> Option<String> {
        self.entries
            .iter()
            .find(|(key, _)| key.as_deref() == conversation)
            .map(|(_, id)| id.clone())
    }

    fn remove(&mut self, conversation: Option<&str>) {
        self.entries
            .retain(|(key, _)| key.as_deref() != conversation);
    }

    /// The most recently used conversation and its CLI session.
    fn latest(&self) -> Option<(Option<String>, String)> {
        self.entries.last().cloned()
    }

    fn insert(&mut self, conversation: Option<&str>, cli_session: String) {
        self.entries
            .retain(|(key, _)| key.as_deref() != conversation);
        if self.entries.len() >= CLI_SESSIONS_MAX {
            self.entries.remove(0);
        }
        self.entries
            .push((conversation.map(str::to_owned), cli_session));
    }
}

#[derive(Debug, Default)]
struct StructuredAnswer {
    /// The run's CLI session, kept until the run completes when the
    /// adapter continues only completed runs.
    cli_session: Option<String>,
    usage: TurnUsage,
    /// The streamed text, bounded like a flight's output: a model that
    /// streams without end cannot grow the broker's memory.
    deltas: FlightOutput,
    delta_since_message: bool,
    last_message: Option<String>,
    last_notice: Option<String>,
}

impl StructuredAnswer {
    /// The CLI's own final result when it gives one, else the streamed
    /// text, else its last complete message.
    fn response(&self, result: Option<String>) -> String {
        let text = result
            .filter(|result| !result.is_empty())
            .or_else(|| {
                (!self.deltas.as_str().trim().is_empty()).then(|| self.deltas.as_str().to_owned())
            })
            .or_else(|| self.last_message.clone())
            .unwrap_or_default();
        FlightOutput::from_text(text.trim()).into_string()
    }
}

/// Clears the session's record of its structured run when the run ends.
struct ForgetStructuredPid<'a>(&'a Session);

impl Drop for ForgetStructuredPid<'_> {
    fn drop(&mut self) {
        self.0.lock_state().structured = None;
    }
}

/// Whether a structured turn is new or carried on from before a restart.
pub(crate) enum HeldTurn {
    /// A new turn; `invocation_id` when routing runs it (its held
    /// directory then stays until the flight's end is committed).
    New { invocation_id: Option<String> },
    /// A turn a holder ran on while the broker was away.
    Resume { dir: PathBuf, record: TurnRecord },
    /// A routed terminal turn that went on in its session's held terminal
    /// while the broker was away (see [`Session::carry_on_pty`]).
    ResumeTerminal { invocation_id: String },
}

/// A carried-on terminal turn waiting for its flight to take it.
struct CarriedTurn {
    invocation_id: String,
    turn_id: String,
    /// The turn's text so far, while nobody takes it.
    unclaimed: Arc<Mutex<String>>,
    done: oneshot::Receiver<TurnOutcome>,
}

/// [`Session::output_offset`] when it is not known.
const OUTPUT_OFFSET_UNKNOWN: u64 = u64::MAX;

/// A structured run in progress: the broker's own child, or a holder's.
enum StructuredRun {
    Direct {
        program: String,
        child: tokio::process::Child,
        stderr_tail: Option<tokio::task::JoinHandle<String>>,
        group: GroupKill,
    },
    Held {
        program: String,
        dir: PathBuf,
        kill: HeldKill,
    },
}

/// Where a structured run's events come from.
enum RunOutput {
    /// One JSON event per line.
    Lines(Pin<Box<dyn AsyncRead + Send>>),
    /// The app server's pipes, for a conversation.
    App {
        stdin: tokio::process::ChildStdin,
        stdout: tokio::process::ChildStdout,
    },
}

/// How a structured run's program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunEnd {
    Exited(TurnExit),
    /// It did not end within the wait.
    Running,
    /// Its holder was killed before it recorded the end.
    Lost,
}

impl StructuredRun {
    fn held(dir: PathBuf, record: TurnRecord, placement: &HolderPlacement) -> Result<Self, String> {
        Ok(StructuredRun::Held {
            program: record.program.clone(),
            kill: HeldKill {
                dir: dir.clone(),
                detaching: placement.detaching.clone(),
                remove: record.invocation_id.is_none(),
                done: false,
            },
            dir,
        })
    }

    /// The program's process group, when the broker started it (a held
    /// program's pid is the holder's to know: a pid read from its
    /// directory, which the program can write, is never signalled).
    fn pid(&self) -> Option<u32> {
        match self {
            StructuredRun::Direct { group, .. } => group.0,
            StructuredRun::Held { .. } => None,
        }
    }

    /// How to stop the run from outside the turn (the session stops).
    fn stopper(&self) -> StructuredStop {
        match self {
            StructuredRun::Direct { group, .. } => StructuredStop::Group(group.0),
            StructuredRun::Held { dir, .. } => StructuredStop::Held(dir.clone()),
        }
    }

    fn program(&self) -> &str {
        match self {
            StructuredRun::Direct { program, .. } | StructuredRun::Held { program, .. } => program,
        }
    }

    fn take_output(&mut self) -> Result<RunOutput, String> {
        match self {
            StructuredRun::Direct { child, .. } => {
                let stdout = child
                    .stdout
                    .take()
                    .ok_or_else(|| "the structured run has no output".to_owned())?;
                match child.stdin.take() {
                    Some(stdin) => Ok(RunOutput::App { stdin, stdout }),
                    None => Ok(RunOutput::Lines(Box::pin(stdout))),
                }
            }
            StructuredRun::Held { dir, .. } => journal::JournalReader::open(dir)
                .map(|reader| RunOutput::Lines(Box::pin(reader)))
                .map_err(|err| format!("cannot read the turn's journal: {err}")),
        }
    }

    /// Waits (at most `bound`) for the program's end.
    async fn wait_exit(&mut self, bound: Duration) -> RunEnd {
        match self {
            StructuredRun::Direct { child, .. } => {
                match tokio::time::timeout(bound, child.wait()).await {
                    Ok(Ok(status)) => RunEnd::Exited(TurnExit {
                        code: status.code(),
                        signal: std::os::unix::process::ExitStatusExt::signal(&status),
                        journal_full: false,
                    }),
                    _ => RunEnd::Running,
                }
            }
            StructuredRun::Held { dir, .. } => {
                let deadline = Instant::now() + bound;
                loop {
                    let dir = dir.clone();
                    let state = tokio::task::spawn_blocking(move || journal::state(&dir))
                        .await
                        .unwrap_or(HeldState::Lost);
                    match state {
                        HeldState::Exited(exit) => return RunEnd::Exited(exit),
                        HeldState::Lost => return RunEnd::Lost,
                        HeldState::Running if Instant::now() >= deadline => {
                            return RunEnd::Running;
                        }
                        HeldState::Running => tokio::time::sleep(HELD_EXIT_POLL).await,
                    }
                }
            }
        }
    }

    async fn stderr_tail(&mut self) -> String {
        match self {
            StructuredRun::Direct { stderr_tail, .. } => match stderr_tail.take() {
                Some(task) => task.await.unwrap_or_default(),
                None => String::new(),
            },
            StructuredRun::Held { dir, .. } => journal::stderr_tail(dir),
        }
    }

    /// The turn is over: what is left of the run is stopped, and a held
    /// turn that no flight waits for is removed.
    fn finished(&mut self) {
        if let StructuredRun::Held { kill, .. } = self {
            kill.done = true;
        }
    }
}

/// How often a held turn's end is looked for once its output ended.
const HELD_EXIT_POLL: Duration = Duration::from_millis(20);

/// Stops a held turn's program when the turn ends without it (timed out,
/// cancelled, the session stopped), and removes the turn's directory when
/// no flight waits for it. A broker that is shutting down leaves the turn
/// running: the next broker carries it on.
struct HeldKill {
    dir: PathBuf,
    detaching: Arc<AtomicBool>,
    /// Remove the directory at the end (no flight waits for it).
    remove: bool,
    /// The turn took the program's end.
    done: bool,
}

impl Drop for HeldKill {
    fn drop(&mut self) {
        if self.detaching.load(Ordering::SeqCst) && !self.done {
            return;
        }
        if journal::state(&self.dir) == HeldState::Running {
            journal::stop(&self.dir);
        }
        if self.remove {
            journal::remove(&self.dir);
        }
    }
}

/// How a session stops its structured run in progress.
#[derive(Debug, Clone)]
enum StructuredStop {
    /// The broker's own child: its process group is killed.
    Group(Option<u32>),
    /// A held run: its holder is told to stop it (see [`journal::stop`]).
    Held(PathBuf),
}

impl StructuredStop {
    fn stop(&self) {
        match self {
            StructuredStop::Group(Some(pid)) => {
                signal_tree(*pid, nix::sys::signal::Signal::SIGKILL);
            }
            StructuredStop::Group(None) => {}
            StructuredStop::Held(dir) => journal::stop(dir),
        }
    }
}

/// Kills a structured run's whole process group when the run ends, however
/// it ends (finished, failed, timed out and dropped).
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            signal_tree(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

enum LineRead {
    Line,
    TooLong,
    Eof,
}

/// Reads one line into `line` (without the newline), never holding more
/// than `bytes_max`: a longer line is consumed and reported as too long.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    bytes_max: usize,
) -> std::io::Result<LineRead> {
    line.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if too_long {
                LineRead::TooLong
            } else if line.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (part, found_newline) = match available.iter().position(|byte| *byte == b'\n') {
            Some(idx) => (&available[..idx], true),
            None => (available, false),
        };
        if !too_long && line.len() + part.len() <= bytes_max {
            line.extend_from_slice(part);
        } else {
            too_long = true;
            line.clear();
        }
        let consumed = part.len() + usize::from(found_newline);
        reader.consume(consumed);
        if found_newline {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

/// The last [`STDERR_TAIL_BYTES`] of a stream, as text.
async fn read_tail<R: tokio::io::AsyncRead + Unpin>(mut reader: R) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n_read) => {
                tail.extend_from_slice(&buf[..n_read]);
                if tail.len() > STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// A lock of the session's small state (the questions, a carried-on
/// turn's text); a panic while it was held leaves nothing half done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_lines_skip_what_is_too_long() {
        let input: &[u8] = b"short\n0123456789abcdef\nlast";
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        assert!(matches!(
            read_line_bounded(&mut reader, &mut line, 8).await.unwrap(),
            LineRead::Line
        ));
        assert_eq!(line, b"short");
        assert!(matches!(
            read_line_bounded(&mut reader, &mut line, 8).await.unwrap(),
            LineRead::TooLong
        ));
        assert!(matches!(
            read_line_bounded(&mut reader, &mut line, 8).await.unwrap(),
            LineRead::Line
        ));
        assert_eq!(line, b"last");
        assert!(matches!(
            read_line_bounded(&mut reader, &mut line, 8).await.unwrap(),
            LineRead::Eof
        ));
    }

    #[test]
    fn the_transcript_replay_keeps_whole_lines_of_its_tail() {
        let mut buffer = String::new();
        let line = format!("{}\r\n", "é".repeat(100));
        for _ in 0..(TRANSCRIPT_REPLAY_BYTES_MAX / line.len() + 10) {
            push_bounded(&mut buffer, &line);
        }
        assert!(buffer.len() <= TRANSCRIPT_REPLAY_BYTES_MAX);
        assert!(buffer.starts_with('é'), "cut at a line start");
        assert!(buffer.ends_with("é\r\n"));
    }

    #[test]
    fn the_latest_cli_session_is_the_most_recently_used() {
        let mut sessions = CliSessions::default();
        assert_eq!(sessions.latest(), None);
        sessions.insert(Some("a"), "cli-a".to_owned());
        sessions.insert(None, "cli-default".to_owned());
        sessions.insert(Some("a"), "cli-a".to_owned());
        assert_eq!(
            sessions.latest(),
            Some((Some("a".to_owned()), "cli-a".to_owned()))
        );
    }

    #[test]
    fn structured_answer_prefers_the_result() {
        let mut answer = StructuredAnswer::default();
        assert_eq!(answer.response(None), "");
        answer.last_message = Some("last message".to_owned());
        assert_eq!(answer.response(None), "last message");
        answer.deltas = FlightOutput::from_text("streamed text");
        assert_eq!(answer.response(None), "streamed text");
        assert_eq!(answer.response(Some("final".to_owned())), "final");
    }

    #[test]
    fn pty_response_drops_the_echo_and_the_prompt() {
        let (done, _) = oneshot::channel();
        let (events, _) = mpsc::channel(1);
        let mut turn = PtyTurn::new(
            "t",
            "echo one\necho two",
            TurnStyle::PtyPrompt,
            Some(events),
            done,
        );
        turn.transcript
            .push_str("echo one\r\n> echo two\r\none\r\ntwo\r\n\r\nbash-5.2$ ");
        assert_eq!(turn.response(true), "one\ntwo");
    }
}
