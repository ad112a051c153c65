//! `/v1/checkpoints…`: the git checkpoints this broker took of its agents'
//! worktrees before `execute` work; `checkpoint.list`, `checkpoint.show`,
//! `checkpoint.diff` and `checkpoint.restore` (a human-gated action).
//! Only this broker's checkpoints are listed: each lives in the repository
//! of the machine that ran the flight.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use scout_mesh::names::AgentName;

use super::error::{ApiError, PathId};
use crate::api::checkpoints::{
    CheckpointDiffView, CheckpointList, CheckpointListParams, CheckpointView, RestoreParams,
    RestoredView,
};
use crate::daemon::BrokerState;
use crate::daemon::checkpoints::{self, CheckpointServiceError};
use crate::daemon::credentials::AgentCaller;
use crate::store::checkpoints::CheckpointRow;

/// The routes of this family (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/checkpoints", get(list))
        .route("/checkpoints/{id}", get(one))
        .route("/checkpoints/{id}/diff", get(diff))
        .route("/checkpoints/{id}/restore", post(restore))
}

fn view(row: CheckpointRow) -> CheckpointView {
    CheckpointView {
        id: row.checkpoint_id,
        invocation_id: row.invocation_id,
        instance: row.instance,
        workspace: row.workspace,
        ref_name: row.ref_name,
        commit: row.commit_id,
        files_changed: row.files_changed,
        error: row.error,
        created_at_ms: row.created_at_ms,
    }
}

fn service_error(err: CheckpointServiceError) -> ApiError {
    let status = match &err {
        CheckpointServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        CheckpointServiceError::NotMade { .. } => StatusCode::CONFLICT,
        CheckpointServiceError::Git(git) => match git {
            crate::checkpoint::CheckpointError::WorkspaceGone { .. }
            | crate::checkpoint::CheckpointError::NotARepository { .. }
            | crate::checkpoint::CheckpointError::CommitMissing { .. } => StatusCode::GONE,
            crate::checkpoint::CheckpointError::InvalidId { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        CheckpointServiceError::Store(_) | CheckpointServiceError::Task(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    ApiError::new(status, err.code(), err.to_string())
}

async fn list(
    State(state): State<Arc<BrokerState>>,
    query: Result<Query<CheckpointListParams>, QueryRejection>,
) -> Result<Json<CheckpointList>, ApiError> {
    let Query(params) = query.map_err(|err| {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", err.body_text())
    })?;
    let agent =
        match params.agent.as_deref() {
            Some(text) => Some(AgentName::parse_lenient(text).map_err(|err| {
                ApiError::new(StatusCode::BAD_REQUEST, err.code(), err.to_string())
            })?),
            None => None,
        };
    let rows =
        checkpoints::list(&state.store, agent.as_ref()).map_err(|err| service_error(err.into()))?;
    Ok(Json(CheckpointList {
        node: state.node_name.to_string(),
        checkpoints: rows.into_iter().map(view).collect(),
    }))
}

async fn one(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
) -> Result<Json<CheckpointView>, ApiError> {
    checkpoints::get(&state.store, &id)
        .map(|row| Json(view(row)))
        .map_err(service_error)
}

async fn diff(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
) -> Result<Json<CheckpointDiffView>, ApiError> {
    let (row, shown) = checkpoints::diff(&state.store, &id)
        .await
        .map_err(service_error)?;
    Ok(Json(CheckpointDiffView {
        checkpoint: view(row),
        diff: shown.text,
        truncated: shown.truncated,
    }))
}

async fn restore(
    State(state): State<Arc<BrokerState>>,
    agent: Option<Extension<AgentCaller>>,
    PathId(id): PathId,
    query: Result<Query<RestoreParams>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let Query(params) = query.map_err(|err| {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", err.body_text())
    })?;
    // An unknown checkpoint is a 404 for everyone, before any approval.
    checkpoints::get(&state.store, &id).map_err(service_error)?;
    // `checkpoint.restore` is human-gated: an agent's request becomes an
    // approval, and the restore runs once a person approves it.
    let gate = crate::daemon::approvals::Gate::CheckpointRestore {
        id: id.clone(),
        clean: params.clean,
    };
    super::approvals::gate(&state, agent, gate, || async {
        let actor = format!("user@{}", state.node_name);
        let (row, restored) =
            checkpoints::restore(&state.store, &state.env, &id, params.clean, &actor)
                .await
                .map_err(service_error)?;
        Ok(RestoredView {
            checkpoint: view(row),
            files_restored: restored.files_restored,
            files_removed: restored.files_removed,
            clean: params.clean,
        })
    })
    .await
}
