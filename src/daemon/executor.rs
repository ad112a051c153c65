//! How an owner runs an invocation on one of its agents: the [`Executor`]
//! seam. The broker's executor runs the agent's CLI in a PTY session
//! through the session manager (spawning, that is waking, the session when
//! it is not running); netsim substitutes an in-process one. Durable work
//! semantics above it are the same for every harness and every executor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scout_mesh::lifecycle::FailureReason;
use scout_mesh::usage::{FailureCode, Usage};
use tokio::sync::{mpsc, oneshot};

use crate::adapter::{AdapterOptions, TurnUsage};
use crate::config::discover::LocalAgent;
use crate::daemon::credentials::AgentCredentials;
use crate::env::Env;
use crate::pty::{RuntimeError, SessionManager, SpawnRequest, TurnEvent, TurnOutcome};

/// Events of one execution buffered at most; output beyond it waits, which
/// slows the reader of the PTY, never memory.
pub const EXEC_EVENTS_MAX: usize = 256;

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The invocation (for logs).
    pub invocation_id: String,
    /// The instance name (`@fabric@devbox#main`).
    pub instance: String,
    /// The agent as configured on this machine.
    pub agent: LocalAgent,
    /// The prompt.
    pub prompt: String,
    /// The conversation it belongs to (the agent's CLI session continues
    /// per conversation).
    pub conversation_id: Option<String>,
    /// The name of the node the invocation came from, when known.
    pub origin_node: Option<String>,
    /// How long the turn may take.
    pub timeout: Duration,
    /// The instance is a new workspace of a definition that makes
    /// worktrees: make (or find) its worktree before starting it.
    pub make_worktree: bool,
    /// The execution started before the broker restarted and outlived it:
    /// re-attach to it, never start the work again.
    pub resume: bool,
}

/// Progress of one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// The agent's harness had to be started first (the flight is `waking`).
    Waking,
    /// The agent has the prompt (the flight is `running`).
    Started,
    /// Output as it arrives.
    Output(String),
    /// The end; always the last event.
    Finished(ExecOutcome),
}

/// How an execution ended: the routing core's own type, so what an
/// executor reports is what the core takes.
pub use scout_mesh::routing::ExecResult as ExecOutcome;

/// A running execution.
#[derive(Debug)]
pub struct Execution {
    /// Its events, ending with `Finished`.
    pub events: mpsc::Receiver<ExecEvent>,
    /// Send to stop it (the agent's process is stopped).
    pub cancel: oneshot::Sender<()>,
}

/// Runs invocations on this machine's agents.
pub trait Executor: Send + Sync + std::fmt::Debug + 'static {
    /// Starts running `request`; failures arrive as `Finished(Failed)`.
    fn execute(&self, request: ExecRequest) -> Execution;

    /// Whether the agents it runs work in real directories, so `execute`
    /// work gets a git checkpoint of the agent's worktree first
    /// (`crate::daemon::checkpoints`). In-process executors have none.
    fn checkpoints_workspaces(&self) -> bool {
        false
    }

    /// The flight of `invocation_id` has its end committed: whatever the
    /// executor kept so the execution could outlive a restart goes.
    fn forget(&self, _invocation_id: &str) {}
}

/// The broker's executor: one PTY session per agent instance, spawned on
/// first use and reused while it runs.
#[derive(Debug)]
pub struct PtyExecutor {
    sessions: Arc<SessionManager>,
    by_instance: Arc<Mutex<HashMap<String, Spawned>>>,
    credentials: Option<(Arc<AgentCredentials>, Env)>,
}

/// The session an instance runs in, with the credential it was given.
#[derive(Debug, Clone)]
struct Spawned {
    session_id: String,
    token: Option<String>,
}

impl PtyExecutor {
    /// An executor over the broker's session manager. With `credentials`,
    /// every session it spawns gets an agent credential of its own (minted
    /// with the environment's randomness), revoked when the session ends.
    pub fn new(
        sessions: Arc<SessionManager>,
        credentials: Option<(Arc<AgentCredentials>, Env)>,
    ) -> PtyExecutor {
        let by_instance = adopted_instances(&sessions, credentials.as_ref());
        PtyExecutor {
            sessions,
            by_instance: Arc::new(Mutex::new(by_instance)),
            credentials,
        }
    }
}

/// Whether a session can run work (it has not stopped or failed).
fn is_live(info: &crate::pty::AgentInfo) -> bool {
    !matches!(
        info.status,
        crate::pty::AgentStatus::Stopped | crate::pty::AgentStatus::Error
    )
}

/// The instances whose sessions came back with their holders after a
/// restart: routing reuses them instead of starting a second agent in the
/// same directory, and each keeps its credential (from its environment),
/// so what the agent sends is still recorded as from its instance.
fn adopted_instances(
    sessions: &Arc<SessionManager>,
    credentials: Option<&(Arc<AgentCredentials>, Env)>,
) -> HashMap<String, Spawned> {
    let mut by_instance = HashMap::new();
    for info in sessions.list() {
        if !is_live(&info) {
            continue;
        }
        let Ok(session) = sessions.session(&info.id) else {
            continue;
        };
        let token = credentials.and_then(|(credentials, _)| {
            let token = session.env_var(super::credentials::TOKEN_VAR)?;
            credentials.restore(&info.name, token).then(|| {
                revoke_when_finished(sessions, &info.id, credentials.clone(), token.to_owned());
                token.to_owned()
            })
        });
        by_instance.insert(
            info.name.clone(),
            Spawned {
                session_id: info.id.clone(),
                token,
            },
        );
    }
    by_instance
}

impl Executor for PtyExecutor {
    fn execute(&self, request: ExecRequest) -> Execution {
        let (events_tx, events) = mpsc::channel(EXEC_EVENTS_MAX);
        let (cancel, cancelled) = oneshot::channel();
        let sessions = self.sessions.clone();
        let by_instance = self.by_instance.clone();
        let credentials = self.credentials.clone();
        tokio::spawn(async move {
            let outcome = run_on_session(
                &sessions,
                &by_instance,
                credentials.as_ref(),
                request,
                &events_tx,
                cancelled,
            )
            .await;
            let _ = events_tx.send(ExecEvent::Finished(outcome)).await;
        });
        Execution { events, cancel }
    }

    fn checkpoints_workspaces(&self) -> bool {
        true
    }

    fn forget(&self, invocation_id: &str) {
        self.sessions.forget_turn(invocation_id);
    }
}

async fn run_on_session(
    sessions: &SessionManager,
    by_instance: &Mutex<HashMap<String, Spawned>>,
    credentials: Option<&(Arc<AgentCredentials>, Env)>,
    request: ExecRequest,
    events: &mpsc::Sender<ExecEvent>,
    mut cancelled: oneshot::Receiver<()>,
) -> ExecOutcome {
    // A turn that outlived the last broker is carried on in the session
    // it ran in (re-attached at start), or in a new one if that is gone.
    let held = if request.resume {
        match sessions.held_turn(&request.invocation_id) {
            // The record sits beside what the program runs and can be
            // rewritten by it: what the turn was asked comes from the
            // flight, which the store kept.
            Some((dir, mut record)) => {
                record.prompt = request.prompt.clone();
                record.conversation = request.conversation_id.clone();
                Some((dir, record))
            }
            None => {
                return ExecOutcome::Failed {
                    reason: FailureReason::HarnessError,
                    code: None,
                    detail: format!(
                        "{}: the turn's journal is gone",
                        crate::pty::held::HOLDER_LOST
                    ),
                    usage: None,
                };
            }
        }
    } else {
        None
    };
    let of_instance = by_instance
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(&request.instance)
        .cloned();
    let known = match &held {
        Some((_, record)) => Some(
            of_instance
                .filter(|spawned| spawned.session_id == record.session_id)
                .unwrap_or_else(|| Spawned {
                    session_id: record.session_id.clone(),
                    token: None,
                }),
        ),
        None => of_instance,
    };
    // Only a live session of the flight's own instance is reused.
    let alive = known.filter(|spawned| {
        sessions
            .info(&spawned.session_id)
            .is_ok_and(|info| info.name == request.instance && is_live(&info))
    });
    // A terminal turn lives in its session's terminal: without that
    // session there is nothing to carry on.
    if alive.is_none()
        && let Some((_, record)) = held
            .as_ref()
            .filter(|(_, record)| record.terminal.is_some())
    {
        return ExecOutcome::Failed {
            reason: FailureReason::HarnessError,
            code: None,
            detail: format!(
                "{}: the terminal agent `{}` ran the turn in is gone",
                crate::pty::held::HOLDER_LOST,
                record.session_id
            ),
            usage: None,
        };
    }
    let spawned = match alive {
        Some(spawned) => spawned,
        None => {
            let _ = events.send(ExecEvent::Waking).await;
            let mut workdir = request.agent.cwd.clone();
            if request.make_worktree {
                tokio::select! {
                    made = make_worktree(&request.agent) => match made {
                        Ok(cwd) => workdir = cwd,
                        Err(outcome) => return outcome,
                    },
                    // Git goes on to its own end (bounded by its timeout);
                    // the flight does not wait for it.
                    Ok(()) = &mut cancelled => return ExecOutcome::Cancelled,
                }
            }
            // The agent's own credential, so what it sends through the
            // local API is recorded as from this instance.
            let minted = credentials.map(|(credentials, env)| {
                let (token, vars) = credentials.mint(&request.instance, env);
                (credentials.clone(), token, vars)
            });
            let mcp = minted
                .as_ref()
                .and_then(|_| crate::adapter::ScoutMcp::current());
            let mut env = minted
                .as_ref()
                .map(|(_, _, vars)| vars.clone())
                .unwrap_or_default();
            // Gemini takes MCP servers only from settings files.
            if let (Some((credentials, _, _)), Some(mcp), scout_mesh::lifecycle::Harness::Gemini) =
                (minted.as_ref(), mcp.as_ref(), request.agent.harness)
                && let Some(var) = credentials.gemini_env(&mcp.command)
            {
                env.push(var);
            }
            let spawned = sessions
                .spawn(SpawnRequest {
                    name: Some(request.instance.clone()),
                    harness: request.agent.harness,
                    workdir: Some(workdir.display().to_string()),
                    options: AdapterOptions {
                        command: Some(request.agent.command.clone()),
                        prompt_pattern: request.agent.prompt_pattern.clone(),
                        // A session with an identity gets the Scout MCP
                        // server, so the agent can mention others.
                        mcp: minted
                            .as_ref()
                            .and_then(|_| crate::adapter::ScoutMcp::current()),
                        ..AdapterOptions::default()
                    },
                    env,
                    size: None,
                })
                .await;
            match spawned {
                Ok(info) => {
                    let token = minted.map(|(credentials, token, _)| {
                        revoke_when_finished(sessions, &info.id, credentials, token.clone());
                        token
                    });
                    let spawned = Spawned {
                        session_id: info.id.clone(),
                        token,
                    };
                    by_instance
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .insert(request.instance.clone(), spawned.clone());
                    spawned
                }
                Err(err) => {
                    if let Some((credentials, token, _)) = minted {
                        credentials.revoke(&token);
                    }
                    return refused(&err, format!("cannot start {}: {err}", request.instance));
                }
            }
        }
    };
    let session_id = spawned.session_id.clone();
    // While the turn runs, what the agent sends extends this invocation's
    // causal chain.
    let _running = RunningGuard::new(
        credentials,
        spawned.token.as_deref(),
        &request.invocation_id,
    );
    let asker = crate::pty::TurnAsker {
        by: format!("invocation {}", request.invocation_id),
        node: request.origin_node.clone(),
        invocation_id: Some(request.invocation_id.clone()),
    };
    let started = match held {
        Some(held) => sessions.resume_turn(&session_id, held, Some(request.timeout), asker),
        None => sessions.run_turn_from(
            &session_id,
            request.prompt.clone(),
            Some(request.timeout),
            request.conversation_id.clone(),
            asker,
        ),
    };
    let mut turn = match started {
        Ok(turn) => turn,
        Err(err) => return refused(&err, err.to_string()),
    };
    let _ = events.send(ExecEvent::Started).await;
    // The running total the CLI reported last is the turn's usage.
    let mut usage = None;
    loop {
        tokio::select! {
            event = turn.events.recv() => match event {
                Some(TurnEvent::Output(text)) => {
                    let _ = events.send(ExecEvent::Output(text)).await;
                }
                Some(TurnEvent::Usage(reported)) => usage = Some(usage_of(reported)),
                Some(TurnEvent::Tool(_)) => {}
                Some(TurnEvent::Finished(outcome)) => return outcome_of(outcome, usage),
                None => {
                    return ExecOutcome::Failed {
                        reason: FailureReason::HarnessError,
                        code: None,
                        detail: "the turn ended without an outcome".into(),
                        usage,
                    };
                }
            },
            Ok(()) = &mut cancelled => {
                // Cancelling stops the agent's process (and its children).
                let _ = sessions.stop(&session_id).await;
                return ExecOutcome::Cancelled;
            }
        }
    }
}

/// Revokes a session's credential once the session has ended.
fn revoke_when_finished(
    sessions: &SessionManager,
    session_id: &str,
    credentials: Arc<AgentCredentials>,
    token: String,
) {
    let Ok(session) = sessions.session(session_id) else {
        credentials.revoke(&token);
        return;
    };
    let mut finished = session.finished_watch();
    tokio::spawn(async move {
        // A closed channel means the session is gone: revoke then too.
        let _ = finished.wait_for(|done| *done).await;
        credentials.revoke(&token);
    });
}

/// Marks the invocation a session's credential runs for the length of a
/// turn, and clears it when the turn ends however it ends.
struct RunningGuard<'a> {
    held: Option<(&'a AgentCredentials, &'a str)>,
}

impl<'a> RunningGuard<'a> {
    fn new(
        credentials: Option<&'a (Arc<AgentCredentials>, Env)>,
        token: Option<&'a str>,
        invocation: &str,
    ) -> RunningGuard<'a> {
        let held = credentials.zip(token).map(|((credentials, _), token)| {
            credentials.set_running(token, Some(invocation.to_owned()));
            (credentials.as_ref(), token)
        });
        RunningGuard { held }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Some((credentials, token)) = self.held {
            credentials.set_running(token, None);
        }
    }
}

fn outcome_of(outcome: TurnOutcome, usage: Option<Usage>) -> ExecOutcome {
    match outcome {
        TurnOutcome::Completed { response } => ExecOutcome::Completed { response, usage },
        // Routing has no channel for answering a question mid-flight: the
        // question ends the turn and is part of the answer.
        TurnOutcome::Waiting { question, response } => ExecOutcome::Completed {
            response: format!("{response}\n[the agent asks: {question}]"),
            usage,
        },
        TurnOutcome::Failed { failure, message } => ExecOutcome::Failed {
            reason: failure.failure_reason(),
            code: FailureCode::parse(failure.code()).ok(),
            detail: message,
            usage,
        },
    }
}

/// Makes (or finds) the worktree of `agent`'s workspace; git runs off the
/// async workers. A failure ends the flight with git's own message; nothing
/// half made stays (see [`crate::worktree::Worktrees::ensure`]).
async fn make_worktree(agent: &LocalAgent) -> Result<std::path::PathBuf, ExecOutcome> {
    let failed = |code: &str, detail: String| ExecOutcome::Failed {
        reason: FailureReason::HarnessError,
        code: FailureCode::parse(code).ok(),
        detail,
        usage: None,
    };
    let (Some(worktrees), Some(workspace)) = (agent.worktrees(), agent.workspace.clone()) else {
        return Err(failed(
            "AGENT_OFFLINE",
            format!("@{} makes no worktrees", agent.definition),
        ));
    };
    let made = tokio::task::spawn_blocking(move || worktrees.ensure_cwd(&workspace)).await;
    match made {
        Ok(Ok(cwd)) => Ok(cwd),
        Ok(Err(err)) => Err(failed(
            err.code(),
            format!("cannot make the worktree: {err}"),
        )),
        Err(err) => Err(failed(
            "GIT_FAILED",
            format!("the worktree task stopped: {err}"),
        )),
    }
}

/// A turn the session refused before it started (or an agent that could
/// not be started): its failure reason, keeping the runtime's code. A
/// login or first-run screen in the way is the harness's failure, as it
/// is when the CLI reports it mid-turn; anything else means the agent
/// cannot take work now.
fn refused(err: &RuntimeError, detail: String) -> ExecOutcome {
    let reason = match err {
        RuntimeError::AuthRequired { .. }
        | RuntimeError::OnboardingRequired(_)
        | RuntimeError::Harness(_) => FailureReason::HarnessError,
        RuntimeError::Timeout { .. } => FailureReason::Timeout,
        _ => FailureReason::AgentOffline,
    };
    ExecOutcome::Failed {
        reason,
        code: FailureCode::parse(err.code()).ok(),
        detail,
        usage: None,
    }
}

/// The routing core's usage of what a CLI reported.
pub fn usage_of(reported: TurnUsage) -> Usage {
    Usage {
        input_tokens: reported.input_tokens,
        output_tokens: reported.output_tokens,
        cached_tokens: reported.cached_tokens,
        cost_micro_usd: reported.cost_micro_usd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pty::TurnFailure;

    #[test]
    fn a_failed_turn_keeps_its_code_and_usage() {
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cached_tokens: 2,
            cost_micro_usd: Some(300),
        };
        let outcome = outcome_of(
            TurnOutcome::Failed {
                failure: TurnFailure::AuthRequired,
                message: "Invalid API key · Please run /login".into(),
            },
            Some(usage),
        );
        let ExecOutcome::Failed {
            reason,
            code,
            usage: used,
            ..
        } = outcome
        else {
            panic!("not a failure: {outcome:?}");
        };
        assert_eq!(reason, FailureReason::HarnessError);
        assert_eq!(code.unwrap().as_str(), "AUTH_REQUIRED");
        assert_eq!(used, Some(usage));
        let completed = outcome_of(
            TurnOutcome::Completed {
                response: "ok".into(),
            },
            Some(usage),
        );
        assert_eq!(
            completed,
            ExecOutcome::Completed {
                response: "ok".into(),
                usage: Some(usage)
            }
        );
    }

    /// A session that refuses the turn for a login keeps `AUTH_REQUIRED`
    /// (a harness error, as when the CLI says so mid-turn); a stopped agent
    /// is offline, with its code.
    #[test]
    fn a_refused_turn_keeps_the_runtime_code() {
        let auth = RuntimeError::AuthRequired {
            message: "`claude` is not logged in".into(),
            login_url: None,
        };
        let ExecOutcome::Failed { reason, code, .. } = refused(&auth, auth.to_string()) else {
            panic!("not a failure");
        };
        assert_eq!(reason, FailureReason::HarnessError);
        assert_eq!(code.unwrap().as_str(), "AUTH_REQUIRED");
        let stopped = RuntimeError::AgentStopped("a".into());
        let ExecOutcome::Failed { reason, code, .. } = refused(&stopped, stopped.to_string())
        else {
            panic!("not a failure");
        };
        assert_eq!(reason, FailureReason::AgentOffline);
        assert_eq!(code.unwrap().as_str(), "AGENT_STOPPED");
    }
}
