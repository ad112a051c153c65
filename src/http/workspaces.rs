//! `POST /v1/workspaces/remove`: removes a git worktree a definition made
//! on demand (`@fabric#feature-x`) on this broker's machine, with the same
//! refusals as `scout workspaces remove` (uncommitted changes, commits the
//! base lacks) unless `force` is asked. The branch is kept.
//!
//! Removing a worktree deletes a checkout someone may be working in, so
//! `workspace.remove` is human-gated: a person's request runs at once; an
//! agent's becomes an approval (`202`), and its owner runs the removal
//! once a person approves it (see [`super::approvals::gate`]).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, JsonBody};
use crate::daemon::BrokerState;
use crate::daemon::credentials::AgentCaller;
use crate::worktree::{InstanceError, NamedWorktree, WorktreeError};

/// The routes of this family (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new().route("/workspaces/remove", post(remove))
}

/// The body of `POST /v1/workspaces/remove`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    /// The instance (`@fabric#feature-x`, or with this node's name).
    pub instance: String,
    /// Remove it even with uncommitted changes or unmerged commits.
    #[serde(default)]
    pub force: bool,
}

/// What a removal did.
#[derive(Debug, Serialize)]
pub struct Removed {
    /// The instance whose worktree went.
    pub removed: String,
    /// Where it was.
    pub path: std::path::PathBuf,
}

/// The status of an error naming the worktree.
fn instance_error(err: InstanceError) -> ApiError {
    let status = match err {
        InstanceError::NoDefinition { .. } => StatusCode::NOT_FOUND,
        InstanceError::InvalidName(_)
        | InstanceError::NoWorkspace { .. }
        | InstanceError::NotLocal { .. } => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, err.code(), err.to_string())
}

/// The status of git's refusal or failure.
pub fn worktree_error(err: WorktreeError) -> ApiError {
    let status = match err {
        WorktreeError::NotFound { .. } => StatusCode::NOT_FOUND,
        WorktreeError::InvalidName { .. } => StatusCode::BAD_REQUEST,
        WorktreeError::Dirty { .. }
        | WorktreeError::Unmerged { .. }
        | WorktreeError::Busy { .. }
        | WorktreeError::Limit { .. } => StatusCode::CONFLICT,
        WorktreeError::NotARepository { .. } | WorktreeError::Git { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    ApiError::new(status, err.code(), err.to_string())
}

/// The worktree `instance` names among the broker's agents as loaded now.
fn named(state: &BrokerState, instance: &str) -> Result<NamedWorktree, ApiError> {
    let agents = state
        .agents
        .read()
        .map_err(|_| ApiError::internal("the agent list is unreadable"))?
        .clone();
    NamedWorktree::find(&agents, state.node_name.as_str(), instance).map_err(instance_error)
}

/// Removes the worktree `instance` names, off the async workers (git), and
/// reloads the agents so the instance is withdrawn at once.
pub async fn remove_now(
    state: &Arc<BrokerState>,
    instance: &str,
    force: bool,
) -> Result<Removed, ApiError> {
    let found = named(state, instance)?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let path = found.remove(force).map_err(worktree_error)?;
        crate::daemon::watch::reload(&state);
        Ok(Removed {
            removed: found.instance,
            path,
        })
    })
    .await
    .map_err(ApiError::internal)?
}

async fn remove(
    axum::extract::State(state): axum::extract::State<Arc<BrokerState>>,
    agent: Option<Extension<AgentCaller>>,
    JsonBody(request): JsonBody<RemoveRequest>,
) -> Result<axum::response::Response, ApiError> {
    // A name that means no worktree here is refused for everyone, before
    // any approval: nobody is asked to approve nothing.
    let found = named(&state, &request.instance)?;
    let exists = {
        let found = found.clone();
        tokio::task::spawn_blocking(move || found.exists())
            .await
            .map_err(ApiError::internal)?
            .map_err(worktree_error)?
    };
    if !exists {
        return Err(worktree_error(WorktreeError::NotFound {
            workspace: found.workspace.as_str().to_owned(),
            root: found.worktrees.path_for(&found.workspace),
        }));
    }
    let gate = crate::daemon::approvals::Gate::WorkspaceRemove {
        instance: found.instance.clone(),
        force: request.force,
    };
    super::approvals::gate(&state, agent, gate, || {
        remove_now(&state, &found.instance, request.force)
    })
    .await
}
