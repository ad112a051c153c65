//! `/v1/agents`: the agents this broker knows.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::error::ApiError;
use crate::config::discover::AgentView;
use crate::daemon::BrokerState;

/// The body of `GET /v1/agents`.
#[derive(Debug, Serialize)]
pub struct AgentList {
    /// Every agent, in discovery order.
    pub agents: Vec<AgentView>,
}

/// The routes of this family (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new().route("/agents", get(list))
}

async fn list(State(state): State<Arc<BrokerState>>) -> Result<Json<AgentList>, ApiError> {
    let agents = state
        .agents
        .read()
        .map_err(|_| ApiError::internal("the agent list is unavailable"))?
        .iter()
        .map(|agent| agent.view(&state.node_name))
        .collect();
    Ok(Json(AgentList { agents }))
}
