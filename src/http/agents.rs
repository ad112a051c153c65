//! `/v1/agents`: the agents this broker knows.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::error::ApiError;
use crate::daemon::BrokerState;

pub use crate::api::AgentList;

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
    Ok(Json(AgentList {
        agents,
        instances: state.mesh.instances(),
    }))
}
