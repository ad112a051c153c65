//! `GET /health`: whether the broker is up, and who it is. No token needed,
//! so scripts and `scout doctor` can probe it.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::daemon::BrokerState;

/// The body of `GET /health`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Always `ok` when the broker answers.
    pub status: &'static str,
    /// Node name.
    pub node: String,
    /// Node id.
    pub node_id: String,
    /// The scout version.
    pub version: &'static str,
    /// Milliseconds since the broker started.
    pub uptime_ms: u64,
    /// Local agents known.
    pub agents: usize,
}

/// The routes of this family.
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new().route("/health", get(health))
}

async fn health(State(state): State<Arc<BrokerState>>) -> Json<Health> {
    Json(Health {
        status: "ok",
        node: state.node_name.as_str().to_owned(),
        node_id: state.node_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_ms: state.env.now_mono_ms(),
        agents: state.agents.read().map(|agents| agents.len()).unwrap_or(0),
    })
}
