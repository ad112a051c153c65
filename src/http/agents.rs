//! `/v1/agents`: the agents this broker knows.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::error::ApiError;
use crate::config::discover::AgentView;
use crate::daemon::BrokerState;
use crate::daemon::mesh::InstanceView;

/// The body of `GET /v1/agents`.
#[derive(Debug, Serialize)]
pub struct AgentList {
    /// This machine's agents, in discovery order.
    pub agents: Vec<AgentView>,
    /// Every instance in the mesh, this machine's included.
    pub instances: Vec<InstanceView>,
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
    Ok(Json(AgentList {
        agents,
        instances: state.mesh.instances(),
    }))
}
