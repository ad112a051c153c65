//! The work the routing core gives this broker, on this machine's side:
//! whether an invocation may run here ([`LocalRuns::admission`]), and
//! starting what the core asked to run ([`LocalRuns::start`]) with its
//! checkpoint, then carrying its events back ([`forward`]).
//!
//! The routing driver is its only caller; it knows nothing of the driver
//! (progress goes back through the function [`forward`] is given), the
//! mesh or the core's state, so the files have no cycle.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use scout_mesh::lifecycle::{FailureReason, InvocationAction};
use scout_mesh::names::{AgentName, Label};
use scout_mesh::routing::{ExecProgress, ExecResult, Execute, Refusal};
use scout_mesh::usage::FailureCode;
use scout_mesh::wire::{ErrorCode, InvokeRequest};
use tokio::sync::mpsc;

use crate::config::discover::LocalAgent;
use crate::daemon::checkpoints::{self, Checkpointer};
use crate::daemon::executor::{ExecEvent, ExecRequest, Execution, Executor};
use crate::home::Home;

/// Output is saved and sent to the origin in pieces of at most this many
/// bytes, or when this much time passed, whichever comes first: a fast
/// agent costs one commit per chunk, not per byte.
const OUTPUT_FLUSH_BYTES: usize = 16 * 1024;
const OUTPUT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

const _: () = assert!(OUTPUT_FLUSH_BYTES < scout_mesh::wire::FLIGHT_OUTPUT_BYTES_MAX);

/// This machine's agents, as the routing driver runs work on them.
#[derive(Debug)]
pub struct LocalRuns {
    /// This broker's name (instances here end in `@<node_name>`).
    pub node_name: Label,
    /// Where trusted manifests are kept.
    pub home: Home,
    /// This machine's agents (shared with the config watcher).
    pub agents: Arc<RwLock<Vec<LocalAgent>>>,
    /// What runs work.
    pub executor: Arc<dyn Executor>,
    /// Records the checkpoint taken before work that edits.
    pub checkpointer: Checkpointer,
}

/// What [`LocalRuns::start`] needs besides the core's `Execute`.
#[derive(Debug)]
pub struct StartContext {
    /// Now, unix ms (for the timeout left before the deadline).
    pub now_unix_ms: u64,
    /// The name of the broker the invocation came from, when known.
    pub origin_node: Option<String>,
    /// The time an invocation may take when it carries no deadline.
    pub default_timeout: Duration,
}

impl LocalRuns {
    /// Whether this broker may take `invoke`: the instance is one of its
    /// agents, the prompt carries no terminal controls, and the agent's
    /// manifest is trusted.
    pub fn admission(&self, invoke: &InvokeRequest) -> Result<(), Refusal> {
        let agent = AgentName::parse(&invoke.instance)
            .ok()
            .filter(|name| name.node() == Some(&self.node_name))
            .and_then(|_| self.agent(&invoke.instance))
            .map(|(agent, _)| agent);
        let Some(agent) = agent else {
            return Err(Refusal::new(
                ErrorCode::AgentOffline,
                format!("{} is not an agent of this broker", invoke.instance),
            ));
        };
        if let Err(err) = crate::pty::prompt::check_prompt(&invoke.body) {
            return Err(Refusal::new(err.code(), err.to_string()));
        }
        if let Err(untrusted) = crate::config::trust::check(&self.home, &agent) {
            return Err(Refusal::new(untrusted.code(), untrusted.to_string()));
        }
        Ok(())
    }

    /// Starts what the core asked to run, after a checkpoint of the
    /// agent's worktree when the work edits; or the result to report at
    /// once when it cannot run (the agent is gone, or its manifest is no
    /// longer trusted).
    pub fn start(&self, execute: Execute, context: StartContext) -> Result<Execution, ExecResult> {
        let (agent, make_worktree) = match self.agent(&execute.instance) {
            None => {
                return Err(failed(
                    FailureReason::AgentOffline,
                    None,
                    format!("{} is no longer an agent of this broker", execute.instance),
                ));
            }
            Some(found) => found,
        };
        // Trust was withdrawn, or the manifest changed, since the accept.
        if let Err(untrusted) = crate::config::trust::check(&self.home, &agent) {
            return Err(failed(
                FailureReason::PeerRejected,
                FailureCode::parse(untrusted.code()).ok(),
                untrusted.to_string(),
            ));
        }
        let timeout = execute
            .deadline_unix_ms
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(context.now_unix_ms)))
            .unwrap_or(context.default_timeout);
        // Work that edits gets a checkpoint of the agent's worktree first
        // (work carried on after a restart had its checkpoint then).
        let checkpoint_of = (execute.action == InvocationAction::Execute
            && !execute.resume
            && self.executor.checkpoints_workspaces())
        .then(|| checkpoint_workspace(&agent, make_worktree))
        .flatten();
        let request = ExecRequest {
            invocation_id: execute.invocation_id,
            instance: execute.instance,
            agent,
            prompt: execute.prompt,
            conversation_id: execute.conversation_id,
            origin_node: context.origin_node,
            timeout,
            make_worktree: make_worktree && !execute.resume,
            resume: execute.resume,
        };
        Ok(match checkpoint_of {
            Some(workspace) => checkpoints::execute_after_checkpoint(
                self.checkpointer.clone(),
                self.executor.clone(),
                request,
                workspace,
            ),
            None => self.executor.execute(request),
        })
    }

    /// The local agent behind an instance name, or, for a workspace that
    /// has no instance yet, its definition's agent in that workspace when
    /// the definition makes worktrees (`true`: the worktree is to be made).
    fn agent(&self, instance: &str) -> Option<(LocalAgent, bool)> {
        let agents = self.agents.read().ok()?;
        if let Some(agent) = agents
            .iter()
            .find(|agent| agent.instance_name(&self.node_name).to_string() == instance)
        {
            return Some((agent.clone(), false));
        }
        let name = AgentName::parse(instance).ok()?;
        let workspace = name.workspace()?.clone();
        // Only the canonical spelling: flights queue, and sessions are
        // found, by the instance's name as given, so `@Fabric…` beside
        // `@fabric…` would run two agents in one worktree.
        if name.node() != Some(&self.node_name) || name.to_string() != instance {
            return None;
        }
        let mut agent = agents
            .iter()
            .find(|agent| agent.definition == *name.definition() && agent.worktrees.is_some())?
            .clone();
        agent.workspace = Some(workspace);
        Some((agent, true))
    }
}

fn failed(reason: FailureReason, code: Option<FailureCode>, detail: String) -> ExecResult {
    ExecResult::Failed {
        reason,
        code,
        detail,
        usage: None,
    }
}

/// The directory to checkpoint before `agent` runs `execute` work: its
/// working directory, or, for a worktree still to be made, that worktree
/// when it exists already (a new one holds nothing to lose).
fn checkpoint_workspace(agent: &LocalAgent, make_worktree: bool) -> Option<std::path::PathBuf> {
    if !make_worktree {
        return Some(agent.cwd.clone());
    }
    let path = agent.worktrees()?.path_for(agent.workspace.as_ref()?);
    path.is_dir().then_some(path)
}

/// Carries an execution's events to `send`, output in chunks, until it
/// finished (an executor that stops without an outcome is a harness error).
pub async fn forward<F, Fut>(mut events: mpsc::Receiver<ExecEvent>, send: F)
where
    F: Fn(ExecProgress) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut pending = String::new();
    let mut last_flush = tokio::time::Instant::now();
    loop {
        let event = tokio::time::timeout(OUTPUT_FLUSH_INTERVAL, events.recv()).await;
        let finished = match event {
            Ok(Some(ExecEvent::Waking)) => {
                send(ExecProgress::Waking).await;
                None
            }
            Ok(Some(ExecEvent::Started)) => {
                send(ExecProgress::Started).await;
                None
            }
            Ok(Some(ExecEvent::Output(text))) => {
                pending.push_str(&text);
                None
            }
            Ok(Some(ExecEvent::Finished(outcome))) => Some(outcome),
            Ok(None) => Some(failed(
                FailureReason::HarnessError,
                None,
                "the executor stopped without an outcome".into(),
            )),
            Err(_) => None,
        };
        if !pending.is_empty()
            && (finished.is_some()
                || pending.len() >= OUTPUT_FLUSH_BYTES
                || last_flush.elapsed() >= OUTPUT_FLUSH_INTERVAL)
        {
            send(ExecProgress::Output(std::mem::take(&mut pending))).await;
            last_flush = tokio::time::Instant::now();
        }
        if let Some(result) = finished {
            send(ExecProgress::Finished(result)).await;
            return;
        }
    }
}
