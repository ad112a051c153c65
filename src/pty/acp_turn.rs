//! Turns of an Agent Client Protocol session (`TurnStyle::Acp`): one
//! long-lived agent process per Scout session, spoken to over its standard
//! input and output (see `crate::adapter::acp` for the protocol).
//!
//! The process starts with the session's first turn (`initialize`), and
//! again after it died or was killed. Each Scout conversation has its own
//! ACP session: `session/new` the first time, the stored session id after
//! (the session runtime keeps it as the conversation's CLI session), and
//! `session/load` when the process was restarted in between and the agent
//! can load sessions. A turn is one `session/prompt`; the agent's updates
//! become [`TurnEvent`]s, and its permission requests go to the session's
//! [`PermissionAsker`] (the broker asks a person in the mesh) when it has
//! one and the agent is a broker's, else [`permission_choice`] answers.
//!
//! A turn given up while the agent works on its prompt (cancelled, or its
//! deadline passed: either way its future is dropped) sends
//! `session/cancel` and waits up to [`ACP_CANCEL_GRACE`] for the prompt to
//! end, refusing the permissions asked meanwhile; an agent that does not
//! stop by then is killed with its process group, and the next turn starts
//! a new one. The next turn waits for this, so an agent never works on two
//! prompts. Stopping the session kills the agent at once.
//!
//! Reads are cancel-safe (a line in progress stays in the reader), and a
//! write interrupted half-way marks the connection broken (the agent would
//! read a torn line), so a dropped turn never corrupts the stream.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use scout_mesh::output::FlightOutput;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{OwnedMutexGuard, mpsc};

use super::process::signal_tree;
use super::session::{TurnEvent, TurnFailure, TurnOutcome};
use crate::adapter::acp::{
    self, AgentCapabilities, Incoming, RpcError, SessionUpdate, permission_choice,
};
use crate::adapter::{FailureKind, TurnUsage};

/// How long a cancelled prompt may take to end after `session/cancel`
/// before the agent is killed. An agent aborts its model request and
/// answers `cancelled` within a second or two; ten seconds leaves room
/// for a slow machine without keeping the next turn waiting long.
pub const ACP_CANCEL_GRACE: Duration = Duration::from_secs(10);

/// A loaded session's replayed history has ended when the agent has been
/// quiet this long: replayed messages follow each other without a model
/// call in between, so a pause of this length means the replay is over.
const ACP_REPLAY_QUIET: Duration = Duration::from_millis(500);

/// The longest Scout waits for a loaded session's replay to end. A history
/// still arriving after that would show in the next turn's answer; ten
/// seconds of replay without a pause is far beyond any saved session.
const ACP_REPLAY_MAX: Duration = Duration::from_secs(10);

/// Longest line read from the agent. Tool results travel inside updates
/// and a replayed session (`session/load`) can be long; longer lines are
/// skipped, never buffered whole.
pub const ACP_LINE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long an agent whose pipes closed may take to exit and to finish
/// its stderr before the turn reports what it has: an exiting process is
/// gone in milliseconds, a process that closed its pipes and lives on is
/// not waited for long.
const ENDED_WAIT: Duration = Duration::from_secs(1);

/// Bytes of the agent's stderr kept for failure messages.
const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// ACP sessions one agent process keeps open. The session runtime
/// remembers at most this many conversations too; past it the least
/// recently used conversation starts over, so the set is cleared rather
/// than grown.
const LIVE_SESSIONS_MAX: usize = 256;

/// How the agent process is started.
#[derive(Debug, Clone)]
pub(crate) struct AcpSpawn<'a> {
    /// Who answers the agent's permission requests, when someone does.
    pub asker: Option<Arc<dyn PermissionAsker>>,
    /// Program and arguments.
    pub argv: &'a [String],
    /// Working directory, also the ACP sessions' `cwd`.
    pub cwd: &'a Path,
    /// Environment overrides.
    pub env: &'a [(String, String)],
    /// Broker variables not passed on.
    pub env_remove: &'a [String],
}

/// The action of an ACP agent's permission request.
pub const ACP_ACTION: &str = "tool.acp";

/// A tool call an agent asks permission for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRequest {
    /// The asking instance.
    pub agent: String,
    /// What kind of request it is, as people and standing rules see it
    /// ([`ACP_ACTION`], `tool.codex`).
    pub action: &'static str,
    /// What the tool call would do.
    pub summary: String,
}

/// Asks a person whether an agent may run a tool call. The broker's asker
/// makes an approval anyone in the mesh may answer and waits for it.
pub trait PermissionAsker: Send + Sync + std::fmt::Debug {
    /// Whether `request.agent` (an instance name) may do what
    /// `request.summary` says: `Some(true)` allowed, `Some(false)` refused,
    /// `None` when nobody can be asked (the default policy answers then).
    /// Neither ACP's nor Codex's answer carries a reason, so a person's
    /// note on a denial stays with the approval.
    fn ask(
        &self,
        request: PermissionRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<bool>> + Send>>;

    /// How to answer the dialog the terminal of `agent` shows, which
    /// `summary` describes (sanitised text, see `pty::question`):
    /// [`QuestionOutcome::Answer`] to type, [`QuestionOutcome::Withdrawn`]
    /// when the request was withdrawn because `gone` stayed `true` (the
    /// dialog left the screen or the person at the terminal took it), or
    /// [`QuestionOutcome::Unasked`] when nobody can be asked. The default
    /// asks nobody.
    ///
    /// [`QuestionOutcome::Answer`]: crate::pty::question::QuestionOutcome::Answer
    /// [`QuestionOutcome::Withdrawn`]: crate::pty::question::QuestionOutcome::Withdrawn
    /// [`QuestionOutcome::Unasked`]: crate::pty::question::QuestionOutcome::Unasked
    fn ask_question(
        &self,
        _agent: String,
        _summary: String,
        _gone: tokio::sync::watch::Receiver<bool>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = crate::pty::question::QuestionOutcome> + Send>,
    > {
        Box::pin(async { crate::pty::question::QuestionOutcome::Unasked })
    }
}

/// How an ACP turn ended, and the ACP session it used (to store as the
/// conversation's CLI session).
#[derive(Debug)]
pub(crate) struct AcpTurnResult {
    pub outcome: TurnOutcome,
    pub session_id: Option<String>,
}

/// The agent process of one Scout session, started on first use.
#[derive(Debug, Default)]
pub(crate) struct AcpSlot {
    agent: Arc<tokio::sync::Mutex<Option<AcpAgent>>>,
    /// The running agent's process group, and whether the slot is closed
    /// (the session stopped: no new agent starts). One lock, so a kill and
    /// a spawn never cross.
    process: Arc<Mutex<SlotProcess>>,
}

#[derive(Debug, Default)]
struct SlotProcess {
    pid: Option<u32>,
    closed: bool,
}

impl AcpSlot {
    /// Kills the agent's process group and keeps any new agent from
    /// starting: the session is stopping.
    pub(crate) fn close(&self) {
        let mut process = lock(&self.process);
        process.closed = true;
        if let Some(pid) = process.pid.take() {
            signal_tree(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Runs `prompt` in the ACP session `resume` (a new one when `None`),
    /// streaming events into `events`. `classify_failure` reads the
    /// agent's stderr when it ends without an answer.
    pub(crate) async fn run_turn(
        &self,
        spawn: &AcpSpawn<'_>,
        prompt: &str,
        resume: Option<&str>,
        events: &mpsc::Sender<TurnEvent>,
        classify_failure: &(dyn Fn(&str) -> FailureKind + Sync),
    ) -> AcpTurnResult {
        let guard = self.agent.clone().lock_owned().await;
        let mut session_id = resume.map(str::to_owned);
        let (mut guard, result) = self
            .prompt(guard, spawn, prompt, &mut session_id, events)
            .await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(failure) => {
                let detail = match guard.as_ref() {
                    Some(agent) => agent.stderr_tail(),
                    None => failure.stderr.clone(),
                };
                if failure.fatal {
                    self.drop_agent(&mut guard);
                }
                failure.into_outcome(&detail, classify_failure)
            }
        };
        AcpTurnResult {
            outcome,
            session_id,
        }
    }

    /// Starts the agent when needed, opens the ACP session and runs the
    /// prompt. The held agent is handed back with the result; a turn
    /// dropped during the prompt hands it to the cancel instead.
    async fn prompt(
        &self,
        mut guard: OwnedMutexGuard<Option<AcpAgent>>,
        spawn: &AcpSpawn<'_>,
        prompt: &str,
        session_id: &mut Option<String>,
        events: &mpsc::Sender<TurnEvent>,
    ) -> (
        OwnedMutexGuard<Option<AcpAgent>>,
        Result<TurnOutcome, AcpFailure>,
    ) {
        let opened = self
            .open(&mut guard, spawn, session_id.as_deref(), prompt)
            .await;
        let (id, prompt_id, cost_at_start) = match opened {
            Ok(opened) => opened,
            Err(failure) => return (guard, Err(failure)),
        };
        *session_id = Some(id.clone());
        let mut in_flight = PromptInFlight {
            guard: Some(guard),
            session_id: id.clone(),
            prompt_id,
        };
        let mut answer = TurnAnswer::new(events, cost_at_start);
        let result = in_flight
            .agent()
            .wait_response(prompt_id, &mut |session, update| {
                if session == id {
                    answer.on_update(update);
                }
            })
            .await;
        let mut guard = in_flight.finish();
        let result = match result {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => return (guard, Err(AcpFailure::rpc(error))),
            Err(failure) => return (guard, Err(failure)),
        };
        if let Some(cost) = answer.session_cost
            && let Some(agent) = guard.as_mut()
        {
            agent.costs.insert(id.clone(), cost);
        }
        let outcome = answer.finish(acp::parse_prompt_result(&result));
        (guard, Ok(outcome))
    }

    /// The agent (started when needed) with the turn's ACP session open
    /// and the prompt queued: the session id, the prompt's request id and
    /// the session's cost so far.
    async fn open(
        &self,
        guard: &mut OwnedMutexGuard<Option<AcpAgent>>,
        spawn: &AcpSpawn<'_>,
        resume: Option<&str>,
        prompt: &str,
    ) -> Result<(String, u64, Option<u64>), AcpFailure> {
        if guard.as_mut().is_none_or(|agent| !agent.usable()) {
            self.drop_agent(guard);
            let agent = self.start(spawn).await?;
            **guard = Some(agent);
        }
        let Some(agent) = guard.as_mut() else {
            return Err(AcpFailure::io("the ACP agent is gone".to_owned()));
        };
        let id = agent.open_session(spawn.cwd, resume).await?;
        let cost_at_start = agent.costs.get(&id).copied();
        let prompt_id =
            agent.queue_request(|request_id| acp::prompt_request(request_id, &id, prompt));
        Ok((id, prompt_id, cost_at_start))
    }

    async fn start(&self, spawn: &AcpSpawn<'_>) -> Result<AcpAgent, AcpFailure> {
        if lock(&self.process).closed {
            return Err(AcpFailure::stopped());
        }
        let mut agent = AcpAgent::spawn(spawn, self.process.clone())?;
        {
            let mut process = lock(&self.process);
            if process.closed {
                drop(process);
                // Stopped while it started; dropping it kills it.
                drop(agent);
                return Err(AcpFailure::stopped());
            }
            process.pid = agent.pid;
        }
        let result = match agent.call(acp::initialize_request, &mut |_, _| {}).await {
            Ok(Ok(result)) => result,
            // The agent goes with this function: keep what it said.
            Ok(Err(error)) => return Err(AcpFailure::rpc(error).with_stderr(&agent)),
            Err(failure) => return Err(failure.with_stderr(&agent)),
        };
        agent.capabilities = acp::parse_initialize_result(&result);
        tracing::debug!(pid = ?agent.pid, capabilities = ?agent.capabilities, "acp agent started");
        Ok(agent)
    }

    /// Drops the agent, which kills its process group.
    fn drop_agent(&self, guard: &mut OwnedMutexGuard<Option<AcpAgent>>) {
        drop(guard.take());
    }
}

/// Why a turn failed before the agent answered the prompt.
#[derive(Debug)]
struct AcpFailure {
    kind: Option<FailureKind>,
    message: String,
    /// The connection cannot be used any more (the process is gone, or a
    /// write was torn): kill it, start afresh next turn.
    fatal: bool,
    stopped: bool,
    /// The stderr of an agent that did not outlive the failure.
    stderr: String,
}

impl AcpFailure {
    fn rpc(error: RpcError) -> AcpFailure {
        AcpFailure {
            kind: Some(acp::failure_kind(&error)),
            message: format!("the agent answered with an error: {error}"),
            fatal: false,
            stopped: false,
            stderr: String::new(),
        }
    }

    fn with_stderr(mut self, agent: &AcpAgent) -> AcpFailure {
        self.stderr = agent.stderr_tail();
        self
    }

    fn io(message: String) -> AcpFailure {
        AcpFailure {
            kind: None,
            message,
            fatal: true,
            stopped: false,
            stderr: String::new(),
        }
    }

    fn stopped() -> AcpFailure {
        AcpFailure {
            kind: None,
            message: "the agent stopped".to_owned(),
            fatal: true,
            stopped: true,
            stderr: String::new(),
        }
    }

    fn into_outcome(
        self,
        stderr_tail: &str,
        classify: &(dyn Fn(&str) -> FailureKind + Sync),
    ) -> TurnOutcome {
        if self.stopped {
            return TurnOutcome::Failed {
                failure: TurnFailure::AgentStopped,
                message: self.message,
            };
        }
        let detail = stderr_tail.trim();
        let kind = self.kind.unwrap_or_else(|| classify(detail));
        let message = if detail.is_empty() || self.kind.is_some() {
            self.message
        } else {
            format!("{}: {detail}", self.message)
        };
        TurnOutcome::Failed {
            failure: match kind {
                FailureKind::Harness => TurnFailure::Harness,
                FailureKind::AuthRequired => TurnFailure::AuthRequired,
                FailureKind::OnboardingRequired => TurnFailure::OnboardingRequired,
            },
            message,
        }
    }
}

/// One agent process and its connection.
#[derive(Debug)]
struct AcpAgent {
    child: Child,
    pid: Option<u32>,
    /// The slot's record of the running process, cleared when this one
    /// goes.
    process: Arc<Mutex<SlotProcess>>,
    stdin: ChildStdin,
    reader: LineReader<BufReader<ChildStdout>>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    /// Reads stderr into the tail until the agent closes it.
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    next_id: u64,
    capabilities: AgentCapabilities,
    /// ACP sessions created or loaded in this process.
    live_sessions: HashSet<String>,
    /// Each ACP session's cost so far (micro-USD), as its last
    /// `usage_update` said: a turn's cost is the difference.
    costs: HashMap<String, u64>,
    /// Messages waiting to be written (a request and the answers to the
    /// agent's requests: a few at most, written before the next read).
    outgoing: Vec<Value>,
    /// Who answers permission requests, and the instance the agent is
    /// (its `SCOUT_AGENT`): both, or the default policy answers.
    asker: Option<(Arc<dyn PermissionAsker>, String)>,
    /// A write was interrupted half-way.
    torn: bool,
    /// The output ended.
    ended: bool,
    /// The MCP servers every session gets: the Scout server when the
    /// broker gave the session an identity.
    mcp_servers: Value,
}

impl AcpAgent {
    fn spawn(
        spawn: &AcpSpawn<'_>,
        process: Arc<Mutex<SlotProcess>>,
    ) -> Result<AcpAgent, AcpFailure> {
        let Some((program, args)) = spawn.argv.split_first() else {
            return Err(AcpFailure::io("the ACP agent has no command".to_owned()));
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .current_dir(spawn.cwd)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for name in spawn.env_remove {
            command.env_remove(name);
        }
        command.envs(spawn.env.iter().map(|(k, v)| (k, v)));
        command.env("NO_COLOR", "1");
        let mut child = crate::home::with_user_umask(|| command.spawn())
            .map_err(|err| AcpFailure::io(format!("cannot start `{program}`: {err}")))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(AcpFailure::io("the ACP agent has no pipes".to_owned()));
        };
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let stderr_task = tokio::spawn(keep_tail(stderr, stderr_tail.clone()));
        let agent_name = spawn
            .env
            .iter()
            .find(|(name, _)| name == crate::daemon::credentials::AGENT_VAR)
            .map(|(_, value)| value.clone());
        Ok(AcpAgent {
            asker: spawn.asker.clone().zip(agent_name),
            mcp_servers: crate::adapter::ScoutMcp::acp_servers(spawn.env),
            stderr_task: Some(stderr_task),
            pid: child.id(),
            process,
            child,
            stdin,
            reader: LineReader::new(BufReader::new(stdout)),
            stderr_tail,
            next_id: 0,
            capabilities: AgentCapabilities::default(),
            live_sessions: HashSet::new(),
            costs: HashMap::new(),
            outgoing: Vec::new(),
            torn: false,
            ended: false,
        })
    }

    /// Whether the connection can carry another turn.
    fn usable(&mut self) -> bool {
        !self.torn && !self.ended && matches!(self.child.try_wait(), Ok(None))
    }

    fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr_tail)).into_owned()
    }

    /// The ACP session for this turn: `resume` when this process has it
    /// open, loaded when the agent can load it, else a new one.
    async fn open_session(
        &mut self,
        cwd: &Path,
        resume: Option<&str>,
    ) -> Result<String, AcpFailure> {
        let mcp_servers = self.mcp_servers.clone();
        if let Some(resume) = resume {
            if self.live_sessions.contains(resume) {
                return Ok(resume.to_owned());
            }
            if self.capabilities.load_session {
                // The agent replays the session's history as updates;
                // they are not part of this turn.
                let loaded = self
                    .call(
                        |id| acp::load_session_request(id, resume, cwd, &mcp_servers),
                        &mut |_, _| {},
                    )
                    .await?;
                match loaded {
                    Ok(_) => {
                        self.drain_replay().await?;
                        self.remember_session(resume.to_owned());
                        return Ok(resume.to_owned());
                    }
                    Err(error) if acp::failure_kind(&error) == FailureKind::AuthRequired => {
                        return Err(AcpFailure::rpc(error));
                    }
                    Err(error) => {
                        tracing::info!(session = %resume, cause = %error, "the acp agent cannot load the session; starting a new one");
                    }
                }
            }
        }
        let result = self
            .call(
                |id| acp::new_session_request(id, cwd, &mcp_servers),
                &mut |_, _| {},
            )
            .await?
            .map_err(AcpFailure::rpc)?;
        let id = acp::parse_new_session_result(&result).ok_or_else(|| AcpFailure {
            kind: Some(FailureKind::Harness),
            message: "the agent answered session/new without a session id".to_owned(),
            fatal: false,
            stopped: false,
            stderr: String::new(),
        })?;
        self.remember_session(id.clone());
        Ok(id)
    }

    fn remember_session(&mut self, id: String) {
        if self.live_sessions.len() >= LIVE_SESSIONS_MAX {
            self.live_sessions.clear();
            self.costs.clear();
        }
        self.live_sessions.insert(id);
    }

    /// Sends a request and waits for its response.
    async fn call(
        &mut self,
        request: impl FnOnce(u64) -> Value,
        on_update: &mut (dyn FnMut(&str, SessionUpdate) + Send),
    ) -> Result<Result<Value, RpcError>, AcpFailure> {
        let id = self.queue_request(request);
        self.wait_response(id, on_update).await
    }

    /// Queues a request (written by the next wait) and returns its id.
    fn queue_request(&mut self, request: impl FnOnce(u64) -> Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.outgoing.push(request(id));
        id
    }

    /// Reads the history a loaded session replays, until the agent has
    /// been quiet for [`ACP_REPLAY_QUIET`] (at most [`ACP_REPLAY_MAX`]).
    /// Agents may answer `session/load` before their replay ends (Gemini CLI
    /// 0.61 streams it after the answer); replayed messages read later
    /// would count as the next prompt's answer.
    async fn drain_replay(&mut self) -> Result<(), AcpFailure> {
        let deadline = tokio::time::Instant::now() + ACP_REPLAY_MAX;
        loop {
            let quiet_until = (tokio::time::Instant::now() + ACP_REPLAY_QUIET).min(deadline);
            let line = match tokio::time::timeout_at(quiet_until, self.reader.next_line()).await {
                Err(_) => return Ok(()),
                Ok(Ok(LineRead::Line(line))) => line,
                Ok(Ok(LineRead::TooLong)) => continue,
                Ok(Ok(LineRead::Eof) | Err(_)) => return Err(self.ended_failure().await),
            };
            if let Incoming::Request { id, method, .. } = acp::parse_incoming(&line) {
                // Nothing is asked while a history replays; refuse it.
                self.outgoing
                    .push(acp::method_not_found_response(&id, &method));
                self.flush().await?;
            }
        }
    }

    /// Writes what is queued, then reads until the response to `id`,
    /// passing updates on and answering the agent's requests.
    async fn wait_response(
        &mut self,
        id: u64,
        on_update: &mut (dyn FnMut(&str, SessionUpdate) + Send),
    ) -> Result<Result<Value, RpcError>, AcpFailure> {
        self.flush().await?;
        loop {
            let line = match self.reader.next_line().await {
                Ok(LineRead::Line(line)) => line,
                Ok(LineRead::TooLong) => {
                    tracing::debug!(
                        bytes_max = ACP_LINE_BYTES_MAX,
                        "skipped a long line from the acp agent"
                    );
                    continue;
                }
                Ok(LineRead::Eof) | Err(_) => return Err(self.ended_failure().await),
            };
            match acp::parse_incoming(&line) {
                Incoming::Response { id: got, result } if got == id => return Ok(result),
                Incoming::Response { id: got, .. } => {
                    tracing::debug!(id = got, "a response to an earlier acp request");
                }
                Incoming::Update { session_id, update } => on_update(&session_id, update),
                Incoming::Request { id, method, params } => {
                    let reply = if method == "session/request_permission" {
                        let request = acp::parse_permission_request(&params);
                        let decided = match (&self.asker, &request.tool_call) {
                            (Some((asker, agent)), Some(tool)) => {
                                asker
                                    .ask(PermissionRequest {
                                        agent: agent.clone(),
                                        action: ACP_ACTION,
                                        summary: tool.line(),
                                    })
                                    .await
                            }
                            _ => None,
                        };
                        let choice = match decided {
                            Some(allowed) => person_choice(&request.options, allowed),
                            None => permission_choice(&request.options),
                        };
                        let reply = acp::permission_response(
                            &id,
                            choice.map(|option| option.option_id.as_str()),
                        );
                        tracing::debug!(?choice, "answered an acp permission request");
                        let chosen_kind = choice.map(|option| option.kind.clone());
                        on_update(
                            &request.session_id,
                            SessionUpdate::Permission {
                                tool: request.tool_call,
                                chosen_kind,
                            },
                        );
                        reply
                    } else {
                        acp::method_not_found_response(&id, &method)
                    };
                    self.outgoing.push(reply);
                    self.flush().await?;
                }
                Incoming::Ignored(what) => {
                    tracing::trace!(%what, "ignored a line from the acp agent");
                }
            }
        }
    }

    /// Writes the queued messages, one line each.
    async fn flush(&mut self) -> Result<(), AcpFailure> {
        if self.torn {
            return Err(AcpFailure::io(
                "the connection to the ACP agent broke".to_owned(),
            ));
        }
        while !self.outgoing.is_empty() {
            let message = self.outgoing.remove(0);
            let mut bytes = message.to_string().into_bytes();
            bytes.push(b'\n');
            // Marked torn until the whole line is written: a turn dropped
            // in between leaves the agent a partial line.
            self.torn = true;
            let written = match self.stdin.write_all(&bytes).await {
                Ok(()) => self.stdin.flush().await,
                Err(err) => Err(err),
            };
            if let Err(err) = written {
                tracing::debug!(cause = %err, "cannot write to the acp agent");
                return Err(self.ended_failure().await);
            }
            self.torn = false;
        }
        Ok(())
    }

    /// The failure of an agent whose pipes closed: how it exited and the
    /// end of its stderr, waiting a bounded time for both.
    async fn ended_failure(&mut self) -> AcpFailure {
        self.ended = true;
        let status = tokio::time::timeout(ENDED_WAIT, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
            .map_or_else(
                || "stopped answering".to_owned(),
                |status| format!("exited ({status})"),
            );
        // Awaited once: the handle is taken (a finished one must not be
        // polled again).
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(ENDED_WAIT, task).await;
        }
        AcpFailure::io(format!("the ACP agent {status} without finishing the turn"))
    }
}

impl Drop for AcpAgent {
    /// However the agent goes (replaced, failed, cancelled too slowly, or
    /// with its session), its whole process group goes with it: the agent
    /// may have started children (Gemini CLI relaunches itself), and
    /// `kill_on_drop` reaches only the first process. The process is not
    /// reaped before this (its `Child` is still here), so its id cannot
    /// name another process yet.
    fn drop(&mut self) {
        let Some(pid) = self.pid else {
            return;
        };
        signal_tree(pid, nix::sys::signal::Signal::SIGKILL);
        let mut process = lock(&self.process);
        if process.pid == Some(pid) {
            process.pid = None;
        }
    }
}

/// A prompt the agent is working on. Dropped before [`finish`] (the turn
/// was given up), it cancels the prompt in a task of its own that keeps
/// holding the agent, so the next turn waits for the cancel to end.
///
/// [`finish`]: PromptInFlight::finish
struct PromptInFlight {
    guard: Option<OwnedMutexGuard<Option<AcpAgent>>>,
    session_id: String,
    prompt_id: u64,
}

impl PromptInFlight {
    fn agent(&mut self) -> &mut AcpAgent {
        self.guard
            .as_mut()
            .and_then(|guard| guard.as_mut())
            .expect("the agent is held while its prompt runs")
    }

    /// The prompt ended: the agent goes back to the turn.
    fn finish(mut self) -> OwnedMutexGuard<Option<AcpAgent>> {
        self.guard
            .take()
            .expect("finish is called once, on a prompt in flight")
    }
}

impl Drop for PromptInFlight {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        let session_id = std::mem::take(&mut self.session_id);
        let prompt_id = self.prompt_id;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Some(agent) = guard.take() {
                        *guard = cancel_prompt(agent, &session_id, prompt_id).await;
                    }
                });
            }
            Err(_) => drop(guard.take()),
        }
    }
}

/// Cancels the prompt `prompt_id`: `session/cancel`, then waits up to
/// [`ACP_CANCEL_GRACE`] for its answer (refusing the permissions asked
/// meanwhile). Returns the agent when it stopped in time; kills it
/// otherwise.
async fn cancel_prompt(mut agent: AcpAgent, session_id: &str, prompt_id: u64) -> Option<AcpAgent> {
    let cancelled = tokio::time::timeout(ACP_CANCEL_GRACE, async {
        agent.outgoing.push(acp::cancel_notification(session_id));
        agent.cancelling_wait(prompt_id).await
    })
    .await;
    match cancelled {
        Ok(Ok(())) => {
            tracing::debug!(session = %session_id, "acp prompt cancelled");
            Some(agent)
        }
        _ => {
            tracing::info!(session = %session_id, grace_ms = ACP_CANCEL_GRACE.as_millis() as u64, "the acp agent did not stop its prompt; killing it");
            drop(agent);
            None
        }
    }
}

impl AcpAgent {
    /// Waits for the cancelled prompt's answer, refusing permissions.
    async fn cancelling_wait(&mut self, prompt_id: u64) -> Result<(), AcpFailure> {
        self.flush().await?;
        loop {
            let line = match self.reader.next_line().await {
                Ok(LineRead::Line(line)) => line,
                Ok(LineRead::TooLong) => continue,
                Ok(LineRead::Eof) | Err(_) => {
                    self.ended = true;
                    return Err(AcpFailure::io("the ACP agent ended".to_owned()));
                }
            };
            match acp::parse_incoming(&line) {
                Incoming::Response { id, .. } if id == prompt_id => return Ok(()),
                Incoming::Request { id, method, .. } => {
                    let reply = if method == "session/request_permission" {
                        acp::permission_response(&id, None)
                    } else {
                        acp::method_not_found_response(&id, &method)
                    };
                    self.outgoing.push(reply);
                    self.flush().await?;
                }
                _ => {}
            }
        }
    }
}

/// The option that says what a person decided: allow once, or refuse
/// (once, else always, else cancelled). A person's answer is never turned
/// into an "always" the agent would keep past this turn.
fn person_choice(
    options: &[acp::PermissionOption],
    allowed: bool,
) -> Option<&acp::PermissionOption> {
    let of_kind = |kind: &str| options.iter().find(|option| option.kind == kind);
    if allowed {
        of_kind("allow_once")
    } else {
        of_kind("reject_once").or_else(|| of_kind("reject_always"))
    }
}

/// The answer of a turn, built from its updates.
struct TurnAnswer<'a> {
    events: &'a mpsc::Sender<TurnEvent>,
    text: FlightOutput,
    seen_tools: HashSet<String>,
    cost_at_start: Option<u64>,
    session_cost: Option<u64>,
    usage: TurnUsage,
}

/// Tool calls of one turn told apart; past this many, further tools are
/// still reported but may repeat.
const TURN_TOOLS_MAX: usize = 1024;

impl<'a> TurnAnswer<'a> {
    fn new(events: &'a mpsc::Sender<TurnEvent>, cost_at_start: Option<u64>) -> TurnAnswer<'a> {
        TurnAnswer {
            events,
            text: FlightOutput::new(),
            seen_tools: HashSet::new(),
            cost_at_start,
            session_cost: None,
            usage: TurnUsage::default(),
        }
    }

    fn on_update(&mut self, update: SessionUpdate) {
        match update {
            SessionUpdate::MessageChunk(text) => {
                self.text.push_str(&text);
                let _ = self.events.try_send(TurnEvent::Output(text));
            }
            SessionUpdate::Tool(tool) => {
                if self.seen_tools.len() >= TURN_TOOLS_MAX {
                    self.seen_tools.clear();
                }
                // A tool is reported once, when first seen (a `tool_call`,
                // or a permission request for one that was never announced).
                if self.seen_tools.insert(tool.id.clone()) {
                    let _ = self.events.try_send(TurnEvent::Tool(tool.line()));
                }
            }
            SessionUpdate::Permission { tool, chosen_kind } => {
                // The tool counts as seen: its later updates add nothing.
                let line = tool.map_or_else(
                    || "a tool".to_owned(),
                    |tool| {
                        self.seen_tools.insert(tool.id.clone());
                        tool.line()
                    },
                );
                let answer = match chosen_kind.as_deref() {
                    Some("allow_once") => "allowed once",
                    Some("allow_always") => "allowed always",
                    Some(_) => "refused",
                    None => "cancelled",
                };
                let _ = self
                    .events
                    .try_send(TurnEvent::Tool(format!("{line} (permission: {answer})")));
            }
            SessionUpdate::Usage {
                cost_micro_usd: Some(cost),
            } => {
                self.session_cost = Some(cost);
                self.usage.cost_micro_usd =
                    Some(cost.saturating_sub(self.cost_at_start.unwrap_or(0)));
                let _ = self.events.try_send(TurnEvent::Usage(self.usage));
            }
            SessionUpdate::ThoughtChunk(_)
            | SessionUpdate::Plan(_)
            | SessionUpdate::Usage { .. }
            | SessionUpdate::Other(_) => {}
        }
    }

    fn finish(mut self, done: acp::PromptResult) -> TurnOutcome {
        if let Some(tokens) = done.usage {
            self.usage = TurnUsage {
                cost_micro_usd: self.usage.cost_micro_usd,
                ..tokens
            };
            let _ = self.events.try_send(TurnEvent::Usage(self.usage));
        }
        let response = FlightOutput::from_text(self.text.as_str().trim()).into_string();
        match done.stop_reason.as_str() {
            "refusal" => TurnOutcome::Failed {
                failure: TurnFailure::Harness,
                message: "the agent refused to continue".to_owned(),
            },
            "cancelled" => TurnOutcome::Failed {
                failure: TurnFailure::Harness,
                message: "the agent cancelled the turn".to_owned(),
            },
            // `end_turn`, and the limits (`max_tokens`,
            // `max_turn_requests`): the answer is what the agent said.
            _ => TurnOutcome::Completed { response },
        }
    }
}

/// One read of a [`LineReader`].
pub(crate) enum LineRead {
    Line(String),
    TooLong,
    Eof,
}

/// Reads lines of at most [`ACP_LINE_BYTES_MAX`], keeping a line in
/// progress across dropped reads (cancel-safe).
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    reader: R,
    line: Vec<u8>,
    too_long: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub(crate) fn new(reader: R) -> LineReader<R> {
        LineReader {
            reader,
            line: Vec::new(),
            too_long: false,
        }
    }

    pub(crate) async fn next_line(&mut self) -> std::io::Result<LineRead> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                let read = if self.too_long {
                    LineRead::TooLong
                } else if self.line.is_empty() {
                    LineRead::Eof
                } else {
                    LineRead::Line(String::from_utf8_lossy(&self.line).into_owned())
                };
                self.line.clear();
                self.too_long = false;
                return Ok(read);
            }
            let (part, found_newline) = match available.iter().position(|byte| *byte == b'\n') {
                Some(idx) => (&available[..idx], true),
                None => (available, false),
            };
            if !self.too_long && self.line.len() + part.len() <= ACP_LINE_BYTES_MAX {
                self.line.extend_from_slice(part);
            } else {
                self.too_long = true;
                self.line.clear();
            }
            let consumed = part.len() + usize::from(found_newline);
            self.reader.consume(consumed);
            if found_newline {
                let read = if std::mem::take(&mut self.too_long) {
                    LineRead::TooLong
                } else {
                    LineRead::Line(String::from_utf8_lossy(&self.line).into_owned())
                };
                self.line.clear();
                return Ok(read);
            }
        }
    }
}

/// Keeps the last [`STDERR_TAIL_BYTES`] of a stream in `tail`.
async fn keep_tail<R: tokio::io::AsyncRead + Unpin>(mut reader: R, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n_read) => {
                let mut tail = lock(&tail);
                tail.extend_from_slice(&buf[..n_read]);
                if tail.len() > STDERR_TAIL_BYTES {
                    let excess = tail.len() - STDERR_TAIL_BYTES;
                    tail.drain(..excess);
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_survive_a_dropped_read() {
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut lines = LineReader::new(BufReader::new(reader));
        writer.write_all(b"{\"half\":").await.unwrap();
        // A read that finds half a line and is given up keeps the half.
        let gave_up = tokio::time::timeout(Duration::from_millis(50), lines.next_line()).await;
        assert!(gave_up.is_err());
        writer.write_all(b"1}\nnext\n").await.unwrap();
        let Ok(LineRead::Line(line)) = lines.next_line().await else {
            panic!("no line");
        };
        assert_eq!(line, "{\"half\":1}");
        let Ok(LineRead::Line(line)) = lines.next_line().await else {
            panic!("no line");
        };
        assert_eq!(line, "next");
        drop(writer);
        assert!(matches!(lines.next_line().await, Ok(LineRead::Eof)));
    }

    #[tokio::test]
    async fn long_lines_are_skipped() {
        let mut input = vec![b'x'; ACP_LINE_BYTES_MAX + 1];
        input.extend_from_slice(b"\nshort\n");
        let mut lines = LineReader::new(BufReader::new(input.as_slice()));
        assert!(matches!(lines.next_line().await, Ok(LineRead::TooLong)));
        assert!(matches!(lines.next_line().await, Ok(LineRead::Line(line)) if line == "short"));
        assert!(matches!(lines.next_line().await, Ok(LineRead::Eof)));
    }

    #[test]
    fn the_answer_reports_each_tool_once_and_the_turn_cost() {
        let (events_tx, mut events_rx) = mpsc::channel(16);
        let mut answer = TurnAnswer::new(&events_tx, Some(1_000));
        answer.on_update(SessionUpdate::MessageChunk("Hel".to_owned()));
        let tool = acp::ToolCall {
            id: "t1".to_owned(),
            title: Some("echo hi".to_owned()),
            kind: Some("execute".to_owned()),
            status: Some("pending".to_owned()),
        };
        answer.on_update(SessionUpdate::Tool(tool.clone()));
        answer.on_update(SessionUpdate::Tool(acp::ToolCall {
            status: Some("completed".to_owned()),
            ..tool
        }));
        answer.on_update(SessionUpdate::Usage {
            cost_micro_usd: Some(1_500),
        });
        answer.on_update(SessionUpdate::MessageChunk("lo ".to_owned()));
        let outcome = answer.finish(acp::PromptResult {
            stop_reason: "end_turn".to_owned(),
            usage: Some(TurnUsage {
                input_tokens: 10,
                output_tokens: 2,
                cached_tokens: 0,
                cost_micro_usd: None,
            }),
        });
        assert_eq!(
            outcome,
            TurnOutcome::Completed {
                response: "Hello".to_owned()
            }
        );
        let mut seen = Vec::new();
        while let Ok(event) = events_rx.try_recv() {
            seen.push(event);
        }
        assert_eq!(
            seen,
            [
                TurnEvent::Output("Hel".to_owned()),
                TurnEvent::Tool("$ echo hi".to_owned()),
                TurnEvent::Usage(TurnUsage {
                    cost_micro_usd: Some(500),
                    ..TurnUsage::default()
                }),
                TurnEvent::Output("lo ".to_owned()),
                TurnEvent::Usage(TurnUsage {
                    input_tokens: 10,
                    output_tokens: 2,
                    cached_tokens: 0,
                    cost_micro_usd: Some(500),
                }),
            ]
        );
    }
}
