//! In-process test agents: the executor netsim's brokers run invocations
//! with, behind the broker's own `Executor` seam (where a real broker runs
//! a CLI in a PTY). An agent takes the prompt, works for a while of
//! simulated time drawn from its node's stream, and answers
//! `done <invocation> on <instance>`.
//!
//! Every execution is written to a log shared by all nodes of the run,
//! which the exactly-once check reads: an execution counts once the agent
//! has the prompt (it sent `Started`). A crash ends the node's executions
//! where they are: nothing more is sent, as when a process dies.
//!
//! An invocation of a workspace its definition has no instance in yet
//! (`make_worktree`) gets its real git worktree first, as the broker's own
//! executor makes it, with the same `Worktrees::ensure_cwd`. Git runs on
//! the simulation's thread, so making a worktree takes no simulated time
//! and a seed still replays the run; every worktree made or found is
//! logged beside the executions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use scout::daemon::executor::{
    EXEC_EVENTS_MAX, ExecEvent, ExecOutcome, ExecRequest, Execution, Executor,
};
use scout_mesh::lifecycle::FailureReason;
use scout_mesh::usage::FailureCode;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How an execution ended, as far as the agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecEnd {
    /// Still working when the run ended.
    Working,
    /// Answered.
    Completed,
    /// Stopped on request.
    Cancelled,
    /// Its node crashed first.
    Crashed,
}

/// One execution of an invocation by an agent.
#[derive(Debug, Clone, Serialize)]
pub struct ExecRecord {
    /// The invocation.
    pub invocation_id: String,
    /// The node that ran it.
    pub node: String,
    /// Which start of that node's broker.
    pub incarnation: u64,
    /// The instance.
    pub instance: String,
    /// Simulated ms after the network started when the agent got the
    /// prompt.
    pub started_ms: u64,
    /// How it ended.
    pub end: ExecEnd,
    /// Its answer.
    pub response: Option<String>,
}

/// A worktree an execution asked for, made new or found on disk.
#[derive(Debug, Clone, Serialize)]
pub struct WorktreeRecord {
    /// The invocation whose execution asked for it.
    pub invocation_id: String,
    /// The node it is on.
    pub node: String,
    /// Which start of that node's broker.
    pub incarnation: u64,
    /// The instance (`@w@n1#ws-2`).
    pub instance: String,
    /// The worktree's directory.
    pub path: String,
    /// Whether this call made it (`false`: it was there already).
    pub made: bool,
    /// Simulated ms after the network started.
    pub at_ms: u64,
}

/// The executions of every node of a run.
#[derive(Debug, Clone, Default)]
pub struct ExecLog {
    records: Arc<Mutex<Vec<ExecRecord>>>,
    worktrees: Arc<Mutex<Vec<WorktreeRecord>>>,
}

impl ExecLog {
    fn push(&self, record: ExecRecord) -> usize {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        records.push(record);
        records.len() - 1
    }

    fn end(&self, idx: usize, end: ExecEnd, response: Option<String>) {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(record) = records.get_mut(idx) {
            record.end = end;
            record.response = response;
        }
    }

    fn push_worktree(&self, record: WorktreeRecord) {
        self.worktrees
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }

    /// Every worktree an execution asked for so far.
    pub fn worktrees(&self) -> Vec<WorktreeRecord> {
        self.worktrees
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every execution so far.
    pub fn records(&self) -> Vec<ExecRecord> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// How long an agent works, in simulated milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct WorkTime {
    /// Shortest.
    pub min_ms: u64,
    /// Longest.
    pub max_ms: u64,
}

/// The agents of one node incarnation.
#[derive(Debug)]
pub struct SimExecutor {
    node: String,
    incarnation: u64,
    alive: Arc<AtomicBool>,
    rng: Mutex<StdRng>,
    work: WorkTime,
    log: ExecLog,
    start: Instant,
    /// Set when a worktree was made, so the node reloads its agents (what
    /// the broker's config watch does when its worktrees directory changes).
    worktrees_changed: Arc<AtomicBool>,
}

impl SimExecutor {
    /// The executor of `node`'s incarnation `incarnation`; `alive` turns
    /// false when it crashes.
    pub fn new(
        node: &str,
        incarnation: u64,
        alive: Arc<AtomicBool>,
        rng: StdRng,
        work: WorkTime,
        log: ExecLog,
        start: Instant,
    ) -> SimExecutor {
        SimExecutor {
            node: node.to_owned(),
            incarnation,
            alive,
            rng: Mutex::new(rng),
            work,
            log,
            start,
            worktrees_changed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sets `changed` whenever this executor makes a worktree.
    pub fn signal_worktrees(mut self, changed: Arc<AtomicBool>) -> SimExecutor {
        self.worktrees_changed = changed;
        self
    }
}

/// Makes (or finds) the worktree of the request's workspace with the
/// broker's own code: its directory, and whether it was there already.
fn ensure_worktree(request: &ExecRequest) -> Result<(std::path::PathBuf, bool), ExecOutcome> {
    let failed = |code: &str, detail: String| ExecOutcome::Failed {
        reason: FailureReason::HarnessError,
        code: FailureCode::parse(code).ok(),
        detail,
        usage: None,
    };
    let agent = &request.agent;
    let (Some(worktrees), Some(workspace)) = (agent.worktrees(), agent.workspace.as_ref()) else {
        return Err(failed(
            "AGENT_OFFLINE",
            format!("@{} makes no worktrees", agent.definition),
        ));
    };
    let existed = worktrees.path_for(workspace).is_dir();
    worktrees
        .ensure_cwd(workspace)
        .map(|cwd| (cwd, existed))
        .map_err(|err| failed(err.code(), format!("cannot make the worktree: {err}")))
}

impl Executor for SimExecutor {
    fn execute(&self, request: ExecRequest) -> Execution {
        let (events_tx, events) = mpsc::channel(EXEC_EVENTS_MAX);
        let (cancel, mut cancelled) = oneshot::channel::<()>();
        let work_ms = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .gen_range(self.work.min_ms..=self.work.max_ms.max(self.work.min_ms));
        let alive = self.alive.clone();
        let log = self.log.clone();
        let node = self.node.clone();
        let incarnation = self.incarnation;
        let start = self.start;
        let worktrees_changed = self.worktrees_changed.clone();
        tokio::spawn(async move {
            if !alive.load(Ordering::SeqCst) {
                return;
            }
            if request.make_worktree {
                if events_tx.send(ExecEvent::Waking).await.is_err() {
                    return;
                }
                match ensure_worktree(&request) {
                    Ok((path, existed)) => {
                        worktrees_changed.store(true, Ordering::SeqCst);
                        log.push_worktree(WorktreeRecord {
                            invocation_id: request.invocation_id.clone(),
                            node: node.clone(),
                            incarnation,
                            instance: request.instance.clone(),
                            path: path.display().to_string(),
                            made: !existed,
                            at_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                        });
                    }
                    Err(outcome) => {
                        let _ = events_tx.send(ExecEvent::Finished(outcome)).await;
                        return;
                    }
                }
            }
            if !alive.load(Ordering::SeqCst) || events_tx.send(ExecEvent::Started).await.is_err() {
                return;
            }
            let started_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            let idx = log.push(ExecRecord {
                invocation_id: request.invocation_id.clone(),
                node,
                incarnation,
                instance: request.instance.clone(),
                started_ms,
                end: ExecEnd::Working,
                response: None,
            });
            let stopped = tokio::select! {
                biased;
                _ = &mut cancelled => true,
                _ = tokio::time::sleep(Duration::from_millis(work_ms)) => false,
            };
            if !alive.load(Ordering::SeqCst) {
                log.end(idx, ExecEnd::Crashed, None);
                return;
            }
            if stopped {
                log.end(idx, ExecEnd::Cancelled, None);
                let _ = events_tx
                    .send(ExecEvent::Finished(ExecOutcome::Cancelled))
                    .await;
                return;
            }
            let response = format!("done {} on {}", request.invocation_id, request.instance);
            let _ = events_tx
                .send(ExecEvent::Output(format!(
                    "working on {}\n",
                    request.prompt
                )))
                .await;
            log.end(idx, ExecEnd::Completed, Some(response.clone()));
            let _ = events_tx
                .send(ExecEvent::Finished(ExecOutcome::Completed {
                    response,
                    usage: None,
                }))
                .await;
        });
        Execution { events, cancel }
    }
}
