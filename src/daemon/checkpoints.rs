//! Checkpoints in the broker: taken before an `execute` invocation starts
//! on an agent whose workspace is a git worktree, recorded in the store
//! with an audit entry, and listed, diffed and restored for the API.
//!
//! Taking a checkpoint never stands in the way of the work: a workspace
//! that is not in git has none (an audit entry says so), and a git failure
//! is logged and recorded as the flight's checkpoint error, then the
//! execution starts all the same. Git runs off the async workers
//! ([`crate::checkpoint`] is blocking and bounded in time).
//!
//! Only this broker's checkpoints are listed: a checkpoint lives in the
//! repository of the machine that ran the flight.

use std::path::PathBuf;
use std::sync::Arc;

use scout_mesh::names::AgentName;
use tokio::sync::{mpsc, oneshot};

use super::executor::{EXEC_EVENTS_MAX, ExecEvent, ExecOutcome, ExecRequest, Execution, Executor};
use crate::checkpoint::{self, CheckpointDiff, CheckpointError, Restored};
use crate::env::Env;
use crate::store::audit::NewAuditEntry;
use crate::store::checkpoints::CheckpointRow;
use crate::store::flights::Flight;
use crate::store::{Store, StoreError};

/// Checkpoints listed at most per request: a page of recent ones is what a
/// person reads; the store's own row limit applies as well.
pub const CHECKPOINTS_LIST_MAX: usize = 200;

/// Checkpoints kept per worktree: each is a ref in the user's repository
/// and a row here, one per `execute` flight; past this many the oldest
/// are dropped (ref and row, audited), so neither grows without end. A
/// hundred reach back over days of ordinary work.
pub const CHECKPOINTS_PER_WORKSPACE_MAX: usize = 100;

/// Old checkpoints dropped at most after taking one: the usual number is
/// one; a backlog (a lowered limit) drains over the next checkpoints
/// instead of holding this one's flight.
const CHECKPOINTS_DROPPED_PER_TAKE_MAX: usize = 8;

/// What the broker needs to take checkpoints before executions.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    /// Where checkpoints are recorded.
    pub store: Store,
    /// Time for their timestamps.
    pub env: Env,
    /// This node's id, the actor of the checkpoints it takes.
    pub node_id: String,
}

/// Why a checkpoint operation of the API failed. Each has a stable code.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointServiceError {
    /// No checkpoint has this id (nor was one taken for this invocation).
    #[error("no checkpoint {0} on this broker")]
    NotFound(String),
    /// The checkpoint was never made: git failed when it was to be taken.
    #[error("checkpoint {id} was not made: {error}")]
    NotMade { id: String, error: String },
    /// Git or the workspace refused.
    #[error(transparent)]
    Git(#[from] CheckpointError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task running git stopped.
    #[error("the checkpoint task stopped: {0}")]
    Task(String),
}

impl CheckpointServiceError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            CheckpointServiceError::NotFound(_) => "CHECKPOINT_NOT_FOUND",
            CheckpointServiceError::NotMade { .. } => "CHECKPOINT_NOT_MADE",
            CheckpointServiceError::Git(err) => err.code(),
            CheckpointServiceError::Store(err) => err.code(),
            CheckpointServiceError::Task(_) => "INTERNAL",
        }
    }
}

/// Runs `request` on `executor` once a checkpoint of `workspace` has been
/// recorded (or found impossible). Cancelling while the checkpoint is
/// being taken ends the execution before the agent starts; git goes on to
/// its own end, bounded by its timeout.
pub fn execute_after_checkpoint(
    checkpointer: Checkpointer,
    executor: Arc<dyn Executor>,
    request: ExecRequest,
    workspace: PathBuf,
) -> Execution {
    let (events_tx, events) = mpsc::channel(EXEC_EVENTS_MAX);
    let (cancel, mut cancelled) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            () = checkpointer.before_execute(&request, workspace) => {}
            _ = &mut cancelled => {
                let _ = events_tx.send(ExecEvent::Finished(ExecOutcome::Cancelled)).await;
                return;
            }
        }
        let Execution {
            events: mut inner,
            cancel: inner_cancel,
        } = executor.execute(request);
        let mut inner_cancel = Some(inner_cancel);
        loop {
            tokio::select! {
                event = inner.recv() => {
                    let Some(event) = event else { break };
                    let last = matches!(event, ExecEvent::Finished(_));
                    if events_tx.send(event).await.is_err() || last {
                        break;
                    }
                }
                // Polled only until it fires once; the inner execution
                // then ends with its own `Finished`.
                // A dropped sender (the broker stopping) is passed on as
                // a drop, not a cancel: a held agent works on.
                result = &mut cancelled, if inner_cancel.is_some() => {
                    if let (Ok(()), Some(inner_cancel)) = (result, inner_cancel.take()) {
                        let _ = inner_cancel.send(());
                    }
                }
            }
        }
    });
    Execution { events, cancel }
}

impl Checkpointer {
    /// Takes and records the checkpoint of `workspace` for the flight that
    /// runs `request`. Never fails: what goes wrong is logged and recorded.
    pub async fn before_execute(&self, request: &ExecRequest, workspace: PathBuf) {
        let invocation = request.invocation_id.clone();
        let flight = self
            .store
            .read(move |c| Flight::get_for_invocation(c, &invocation));
        let id = match flight {
            Ok(Some(flight)) => flight.flight_id,
            // The flight row comes before its execution; without it the
            // invocation's id is the checkpoint's.
            Ok(None) | Err(_) => request.invocation_id.clone(),
        };
        self.before_action(
            &id,
            Some(&request.invocation_id),
            &request.instance,
            workspace,
        )
        .await;
    }

    /// Takes and records the checkpoint `id` of `instance`'s `workspace`
    /// before a risky action (an `execute` flight, or an approved gated
    /// action; `invocation` is the one it belongs to, when there is one).
    /// Never fails: a workspace outside git is audited as skipped, and a
    /// git failure is logged and recorded as the checkpoint's error, so the
    /// action goes on either way. An id recorded already is left as it is.
    pub async fn before_action(
        &self,
        id: &str,
        invocation: Option<&str>,
        instance: &str,
        workspace: PathBuf,
    ) {
        let id = id.to_owned();
        // A flight run again after a restart keeps the checkpoint taken
        // before any of its work: the ref is not moved to a later state.
        let known_id = id.clone();
        if let Ok(Some(_)) = self.store.read(move |c| CheckpointRow::get(c, &known_id)) {
            tracing::debug!(flight = %id, "checkpoint taken already");
            return;
        }
        let path = workspace.clone();
        let taken_id = id.clone();
        let taken =
            tokio::task::spawn_blocking(move || checkpoint::checkpoint(&path, &taken_id)).await;
        let now = self.env.now_unix_ms_i64();
        let mut row = CheckpointRow {
            checkpoint_id: id.clone(),
            invocation_id: invocation.map(str::to_owned),
            instance: instance.to_owned(),
            workspace: workspace.display().to_string(),
            ref_name: None,
            commit_id: None,
            files_changed: None,
            error: None,
            created_at_ms: now,
        };
        let (action, detail) = match taken {
            Ok(Ok(made)) => {
                row.workspace = made.workspace.display().to_string();
                row.ref_name = Some(made.ref_name.clone());
                row.commit_id = Some(made.commit.clone());
                row.files_changed = Some(made.files_changed);
                tracing::info!(
                    flight = %id, instance = %instance, commit = %made.commit,
                    files_changed = made.files_changed, "checkpoint taken"
                );
                (
                    "checkpoint_created",
                    serde_json::json!({
                        "instance": instance, "workspace": row.workspace,
                        "ref": made.ref_name, "commit": made.commit,
                        "files_changed": made.files_changed,
                    }),
                )
            }
            Ok(Err(CheckpointError::NotARepository { .. })) => {
                return self.skipped(&id, instance, &row.workspace).await;
            }
            Ok(Err(err)) => self.failed(&mut row, instance, err.code(), err.to_string()),
            Err(err) => self.failed(&mut row, instance, "INTERNAL", err.to_string()),
        };
        let audit = self.audit(action, &id, detail);
        let made = row.commit_id.is_some();
        let workspace = row.workspace.clone();
        if let Err(err) = self.store.insert_checkpoint(row, audit).await {
            tracing::warn!(flight = %id, cause = %err, "cannot record the checkpoint");
        } else if made {
            self.drop_oldest(&workspace, CHECKPOINTS_PER_WORKSPACE_MAX)
                .await;
        }
    }

    /// Drops the checkpoints of `workspace` beyond the newest `keep`
    /// ([`CHECKPOINTS_PER_WORKSPACE_MAX`] but in tests): the ref first,
    /// then the row, so a row never names a ref that was dropped. A failure
    /// is logged and retried after the next checkpoint.
    async fn drop_oldest(&self, workspace: &str, keep: usize) {
        let path = workspace.to_owned();
        let old = self.store.read(move |c| {
            CheckpointRow::beyond_newest(c, &path, keep, CHECKPOINTS_DROPPED_PER_TAKE_MAX)
        });
        let old = match old {
            Ok(old) => old,
            Err(err) => {
                tracing::warn!(workspace = %workspace, cause = %err, "cannot list old checkpoints");
                return;
            }
        };
        for row in old {
            if row.commit_id.is_some() {
                let path = PathBuf::from(&row.workspace);
                let id = row.checkpoint_id.clone();
                let dropped =
                    tokio::task::spawn_blocking(move || checkpoint::drop_checkpoint(&path, &id))
                        .await;
                match dropped {
                    Ok(Ok(()))
                    | Ok(Err(
                        CheckpointError::WorkspaceGone { .. }
                        | CheckpointError::NotARepository { .. },
                    )) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(checkpoint = %row.checkpoint_id, cause = %err, "cannot drop an old checkpoint");
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!(checkpoint = %row.checkpoint_id, cause = %err, "cannot drop an old checkpoint");
                        continue;
                    }
                }
            }
            let audit = self.audit(
                "checkpoint_dropped",
                &row.checkpoint_id,
                serde_json::json!({
                    "instance": row.instance, "workspace": row.workspace,
                    "reason": "older than the newest checkpoints kept",
                    "kept": keep,
                }),
            );
            let id = row.checkpoint_id.clone();
            let deleted = self
                .store
                .write(move |t| CheckpointRow::delete(t, &id, &audit))
                .await;
            if let Err(err) = deleted {
                tracing::warn!(checkpoint = %row.checkpoint_id, cause = %err, "cannot delete an old checkpoint");
            }
        }
    }

    /// Audits that a workspace outside git got no checkpoint.
    async fn skipped(&self, id: &str, instance: &str, workspace: &str) {
        tracing::debug!(flight = %id, workspace = %workspace, "no checkpoint: not a git worktree");
        let audit = self.audit(
            "checkpoint_skipped",
            id,
            serde_json::json!({
                "instance": instance, "workspace": workspace, "reason": "not a git worktree",
            }),
        );
        if let Err(err) = self.store.append_audit(audit).await {
            tracing::warn!(flight = %id, cause = %err, "cannot audit a skipped checkpoint");
        }
    }

    fn failed(
        &self,
        row: &mut CheckpointRow,
        instance: &str,
        code: &str,
        message: String,
    ) -> (&'static str, serde_json::Value) {
        tracing::warn!(
            flight = %row.checkpoint_id, instance = %instance, code = %code, cause = %message,
            "no checkpoint before the execution; it starts without one"
        );
        let detail = serde_json::json!({
            "instance": instance, "workspace": row.workspace, "code": code, "error": message,
        });
        row.error = Some(format!("{code}: {message}"));
        ("checkpoint_failed", detail)
    }

    fn audit(&self, action: &str, subject: &str, detail: serde_json::Value) -> NewAuditEntry {
        NewAuditEntry {
            ts_ms: self.env.now_unix_ms_i64(),
            actor: self.node_id.clone(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            detail,
        }
    }
}

/// This broker's checkpoints, newest first, of the instances `agent`
/// names (a mention such as `@fabric` or `@fabric#main`; all when `None`).
pub fn list(store: &Store, agent: Option<&AgentName>) -> Result<Vec<CheckpointRow>, StoreError> {
    let matches = |instance: &str| {
        let Some(wanted) = agent else { return true };
        let Ok(name) = AgentName::parse(instance) else {
            return false;
        };
        name.definition() == wanted.definition()
            && wanted.node().is_none_or(|node| name.node() == Some(node))
            && wanted
                .workspace()
                .is_none_or(|workspace| name.workspace() == Some(workspace))
    };
    store.read(|c| CheckpointRow::list(c, Some(&matches), CHECKPOINTS_LIST_MAX))
}

/// The checkpoint `id` (or the one taken for invocation `id`).
pub fn get(store: &Store, id: &str) -> Result<CheckpointRow, CheckpointServiceError> {
    let owned = id.to_owned();
    store
        .read(move |c| CheckpointRow::get(c, &owned))?
        .ok_or_else(|| CheckpointServiceError::NotFound(id.chars().take(128).collect()))
}

/// The workspace and commit of a checkpoint that was made.
fn made(row: &CheckpointRow) -> Result<(PathBuf, String), CheckpointServiceError> {
    match &row.commit_id {
        Some(commit) => Ok((PathBuf::from(&row.workspace), commit.clone())),
        None => Err(CheckpointServiceError::NotMade {
            id: row.checkpoint_id.clone(),
            error: row.error.clone().unwrap_or_default(),
        }),
    }
}

/// The diff from checkpoint `id` to its worktree now.
pub async fn diff(
    store: &Store,
    id: &str,
) -> Result<(CheckpointRow, CheckpointDiff), CheckpointServiceError> {
    let row = get(store, id)?;
    let (workspace, commit) = made(&row)?;
    let shown = tokio::task::spawn_blocking(move || checkpoint::diff(&workspace, &commit))
        .await
        .map_err(|err| CheckpointServiceError::Task(err.to_string()))??;
    Ok((row, shown))
}

/// Restores checkpoint `id`'s files into its worktree (see
/// [`checkpoint::restore`]) and audits it with `actor`.
pub async fn restore(
    store: &Store,
    env: &Env,
    id: &str,
    clean: bool,
    actor: &str,
) -> Result<(CheckpointRow, Restored), CheckpointServiceError> {
    let row = get(store, id)?;
    let (workspace, commit) = made(&row)?;
    let restored =
        tokio::task::spawn_blocking(move || checkpoint::restore(&workspace, &commit, clean))
            .await
            .map_err(|err| CheckpointServiceError::Task(err.to_string()))??;
    let audit = NewAuditEntry {
        ts_ms: env.now_unix_ms_i64(),
        actor: actor.to_owned(),
        action: "checkpoint_restored".into(),
        subject: row.checkpoint_id.clone(),
        detail: serde_json::json!({
            "instance": row.instance, "workspace": row.workspace, "commit": row.commit_id,
            "clean": clean, "files_restored": restored.files_restored,
            "files_removed": restored.files_removed,
        }),
    };
    // The files are back already; an audit failure is reported, not undone.
    if let Err(err) = store.append_audit(audit).await {
        tracing::warn!(checkpoint = %row.checkpoint_id, cause = %err, "cannot audit a restore");
    }
    Ok((row, restored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::discover::{AgentSource, LocalAgent};
    use crate::store::StoreOptions;
    use crate::store::audit::AuditEntry;
    use scout_mesh::lifecycle::Harness;
    use scout_mesh::names::{Label, NamePart};

    /// Runs nothing: answers every request at once.
    #[derive(Debug)]
    struct Answering;

    impl Executor for Answering {
        fn execute(&self, _request: ExecRequest) -> Execution {
            let (events_tx, events) = mpsc::channel(4);
            let (cancel, _cancelled) = oneshot::channel();
            tokio::spawn(async move {
                let _ = events_tx.send(ExecEvent::Started).await;
                let _ = events_tx
                    .send(ExecEvent::Finished(ExecOutcome::Completed {
                        response: "ok".into(),
                        usage: None,
                    }))
                    .await;
            });
            Execution { events, cancel }
        }
    }

    fn git(dir: &std::path::Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    fn request(invocation: &str, cwd: &std::path::Path) -> ExecRequest {
        ExecRequest {
            invocation_id: invocation.into(),
            instance: "@coder@n#main".into(),
            agent: LocalAgent {
                definition: Label::parse("coder", NamePart::Definition).unwrap(),
                workspace: None,
                harness: Harness::Command,
                command: vec!["bash".into()],
                cwd: cwd.to_owned(),
                source: AgentSource::Manual,
                prompt_pattern: None,
                needs_trust: None,
                worktrees: None,
            },
            prompt: "x".into(),
            conversation_id: None,
            origin_node: None,
            timeout: std::time::Duration::from_secs(60),
            make_worktree: false,
            resume: false,
        }
    }

    async fn run_to_end(execution: Execution) -> Vec<ExecEvent> {
        let mut events = execution.events;
        let mut seen = Vec::new();
        while let Some(event) = events.recv().await {
            seen.push(event);
        }
        seen
    }

    /// A checkpoint is recorded before the work runs; a repository git
    /// cannot read gets an error row and the work runs all the same.
    #[tokio::test]
    async fn work_runs_after_its_checkpoint_and_despite_a_git_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path().join("scout.db"), StoreOptions::default()).unwrap();
        let checkpointer = Checkpointer {
            store: store.clone(),
            env: Env::system(Some(7)),
            node_id: "node-a".into(),
        };
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("a.txt"), "a\n").unwrap();

        let execution = execute_after_checkpoint(
            checkpointer.clone(),
            Arc::new(Answering),
            request("inv-1", &repo),
            repo.clone(),
        );
        let events = run_to_end(execution).await;
        assert!(matches!(
            events.last(),
            Some(ExecEvent::Finished(ExecOutcome::Completed { .. }))
        ));
        let row = get(&store, "inv-1").unwrap();
        assert_eq!(row.files_changed, Some(1));
        assert!(row.commit_id.is_some() && row.error.is_none());
        let audited = store
            .read(|c| AuditEntry::list_for_subject(c, "inv-1", 10))
            .unwrap();
        assert_eq!(audited[0].action, "checkpoint_created");
        assert_eq!(audited[0].actor, "node-a");

        // An index git cannot read makes the checkpoint fail, not the work.
        std::fs::write(repo.join(".git/index"), b"not an index").unwrap();
        let execution = execute_after_checkpoint(
            checkpointer.clone(),
            Arc::new(Answering),
            request("inv-2", &repo),
            repo.clone(),
        );
        let events = run_to_end(execution).await;
        assert!(matches!(
            events.last(),
            Some(ExecEvent::Finished(ExecOutcome::Completed { .. }))
        ));
        let failed = get(&store, "inv-2").unwrap();
        assert!(failed.commit_id.is_none());
        assert!(
            failed.error.as_deref().unwrap().starts_with("GIT_FAILED"),
            "{failed:?}"
        );
        // Beyond the newest kept, the oldest goes: its ref and its row.
        let workspace = get(&store, "inv-1").unwrap().workspace;
        checkpointer.drop_oldest(&workspace, 1).await;
        assert!(get(&store, "inv-1").is_err());
        let refs = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["for-each-ref", "refs/scout"])
            .output()
            .unwrap();
        assert!(refs.stdout.is_empty(), "{refs:?}");
        let Err(err) = diff(&store, "inv-2").await else {
            panic!("a checkpoint never made has a diff");
        };
        assert_eq!(err.code(), "CHECKPOINT_NOT_MADE");
        assert_eq!(
            get(&store, "nope").unwrap_err().code(),
            "CHECKPOINT_NOT_FOUND"
        );
    }
}
