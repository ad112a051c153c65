//! How an owner runs an invocation on one of its agents: the [`Executor`]
//! seam. The broker's executor runs the agent's CLI in a PTY session
//! through the session manager (spawning, that is waking, the session when
//! it is not running); netsim substitutes an in-process one. Durable work
//! semantics above it are the same for every harness and every executor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scout_mesh::lifecycle::FailureReason;
use tokio::sync::{mpsc, oneshot};

use crate::adapter::AdapterOptions;
use crate::config::discover::LocalAgent;
use crate::pty::{RuntimeError, SessionManager, SpawnRequest, TurnEvent, TurnFailure, TurnOutcome};

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
}

/// The broker's executor: one PTY session per agent instance, spawned on
/// first use and reused while it runs.
#[derive(Debug)]
pub struct PtyExecutor {
    sessions: Arc<SessionManager>,
    by_instance: Arc<Mutex<HashMap<String, String>>>,
}

impl PtyExecutor {
    /// An executor over the broker's session manager.
    pub fn new(sessions: Arc<SessionManager>) -> PtyExecutor {
        PtyExecutor {
            sessions,
            by_instance: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl Executor for PtyExecutor {
    fn execute(&self, request: ExecRequest) -> Execution {
        let (events_tx, events) = mpsc::channel(EXEC_EVENTS_MAX);
        let (cancel, cancelled) = oneshot::channel();
        let sessions = self.sessions.clone();
        let by_instance = self.by_instance.clone();
        tokio::spawn(async move {
            let outcome =
                run_on_session(&sessions, &by_instance, request, &events_tx, cancelled).await;
            let _ = events_tx.send(ExecEvent::Finished(outcome)).await;
        });
        Execution { events, cancel }
    }
}

async fn run_on_session(
    sessions: &SessionManager,
    by_instance: &Mutex<HashMap<String, String>>,
    request: ExecRequest,
    events: &mpsc::Sender<ExecEvent>,
    mut cancelled: oneshot::Receiver<()>,
) -> ExecOutcome {
    let known = by_instance
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(&request.instance)
        .cloned();
    let alive = known.filter(|id| {
        sessions.info(id).is_ok_and(|info| {
            !matches!(
                info.status,
                crate::pty::AgentStatus::Stopped | crate::pty::AgentStatus::Error
            )
        })
    });
    let session_id = match alive {
        Some(id) => id,
        None => {
            let _ = events.send(ExecEvent::Waking).await;
            let spawned = sessions
                .spawn(SpawnRequest {
                    name: Some(request.instance.clone()),
                    harness: request.agent.harness,
                    workdir: Some(request.agent.cwd.display().to_string()),
                    options: AdapterOptions {
                        command: Some(request.agent.command.clone()),
                        prompt_pattern: request.agent.prompt_pattern.clone(),
                        ..AdapterOptions::default()
                    },
                    env: Vec::new(),
                    size: None,
                })
                .await;
            match spawned {
                Ok(info) => {
                    by_instance
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .insert(request.instance.clone(), info.id.clone());
                    info.id
                }
                Err(err) => {
                    return ExecOutcome::Failed {
                        reason: FailureReason::AgentOffline,
                        detail: format!("cannot start {}: {err}", request.instance),
                    };
                }
            }
        }
    };
    let asker = crate::pty::TurnAsker {
        by: format!("invocation {}", request.invocation_id),
        node: request.origin_node.clone(),
    };
    let mut turn = match sessions.run_turn_from(
        &session_id,
        request.prompt.clone(),
        Some(request.timeout),
        request.conversation_id.clone(),
        asker,
    ) {
        Ok(turn) => turn,
        Err(err) => return refused(&err),
    };
    let _ = events.send(ExecEvent::Started).await;
    loop {
        tokio::select! {
            event = turn.events.recv() => match event {
                Some(TurnEvent::Output(text)) => {
                    let _ = events.send(ExecEvent::Output(text)).await;
                }
                Some(TurnEvent::Tool(_) | TurnEvent::Usage(_)) => {}
                Some(TurnEvent::Finished(outcome)) => return outcome_of(outcome),
                None => {
                    return ExecOutcome::Failed {
                        reason: FailureReason::HarnessError,
                        detail: "the turn ended without an outcome".into(),
                    };
                }
            },
            _ = &mut cancelled => {
                // Cancelling stops the agent's process (and its children).
                let _ = sessions.stop(&session_id).await;
                return ExecOutcome::Cancelled;
            }
        }
    }
}

fn outcome_of(outcome: TurnOutcome) -> ExecOutcome {
    match outcome {
        TurnOutcome::Completed { response } => ExecOutcome::Completed { response },
        // Routing has no channel for answering a question mid-flight: the
        // question ends the turn and is part of the answer.
        TurnOutcome::Waiting { question, response } => ExecOutcome::Completed {
            response: format!("{response}\n[the agent asks: {question}]"),
        },
        TurnOutcome::Failed { failure, message } => ExecOutcome::Failed {
            reason: failure.failure_reason(),
            detail: match failure {
                // The code tells the person what to do (log in, finish the
                // CLI's setup); the delivery reason alone does not.
                TurnFailure::AuthRequired | TurnFailure::OnboardingRequired => {
                    format!("{}: {message}", failure.code())
                }
                _ => message,
            },
        },
    }
}

/// A turn the session refused to start. A CLI that needs a login or its
/// first-run setup is there and answering, so that is a harness error with
/// its code (`AUTH_REQUIRED: …`), not an offline agent.
fn refused(err: &RuntimeError) -> ExecOutcome {
    match err {
        RuntimeError::AuthRequired { .. }
        | RuntimeError::OnboardingRequired(_)
        | RuntimeError::Harness(_) => ExecOutcome::Failed {
            reason: FailureReason::HarnessError,
            detail: format!("{}: {err}", err.code()),
        },
        _ => ExecOutcome::Failed {
            reason: FailureReason::AgentOffline,
            detail: err.to_string(),
        },
    }
}
