//! `/v1/checkpoints…` bodies: the checkpoints this broker took of its
//! agents' git worktrees, the diff of one against the worktree now, and
//! what a restore did.

use serde::{Deserialize, Serialize};

/// One checkpoint (`GET /v1/checkpoints/{id}` and the rows of the list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointView {
    /// Its id: the id of the flight it was taken before.
    pub id: String,
    /// The invocation that flight ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
    /// The agent instance whose worktree it is.
    pub instance: String,
    /// The worktree's top directory on this broker's machine.
    pub workspace: String,
    /// The ref that keeps it (`refs/scout/checkpoints/<id>`); absent when
    /// git failed to make it.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_name: Option<String>,
    /// The checkpoint commit; absent when git failed to make it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Files that differed from `HEAD` when it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_changed: Option<u64>,
    /// Why git could not make it (`GIT_FAILED: …`), when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was taken, unix ms.
    pub created_at_ms: i64,
}

/// `GET /v1/checkpoints[?agent=@x]`: this broker's checkpoints, newest
/// first. Checkpoints live on the machine whose worktree they keep; ask
/// that machine's broker for its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointList {
    /// The name of the broker that answered (the only one listed).
    pub node: String,
    /// Its checkpoints.
    pub checkpoints: Vec<CheckpointView>,
}

/// `GET /v1/checkpoints/{id}/diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDiffView {
    /// The checkpoint.
    pub checkpoint: CheckpointView,
    /// `git diff --stat --patch` from the checkpoint to the worktree now,
    /// untracked files included; empty when nothing changed.
    pub diff: String,
    /// The diff was longer than the broker returns and was cut.
    pub truncated: bool,
}

/// `POST /v1/checkpoints/{id}/restore[?clean=true]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreParams {
    /// Also remove files made after the checkpoint (never ignored ones).
    #[serde(default)]
    pub clean: bool,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredView {
    /// The checkpoint restored.
    pub checkpoint: CheckpointView,
    /// Files written back as the checkpoint had them.
    pub files_restored: u64,
    /// Files made after the checkpoint that were removed (`clean`).
    pub files_removed: u64,
    /// Whether files made after the checkpoint were removed.
    pub clean: bool,
}

/// `GET /v1/checkpoints` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointListParams {
    /// Only checkpoints of instances this mention names (`@fabric`,
    /// `@fabric#main`).
    #[serde(default)]
    pub agent: Option<String>,
}
