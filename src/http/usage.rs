//! `GET /v1/usage?since=…&by=…`: tokens and cost of the flights the mesh
//! ran in a window, totalled by this broker from its own store and the
//! reports of every connected member (see `daemon::usage`).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::error::ApiError;
use crate::api::usage::{
    USAGE_SINCE_DEFAULT, UsageGrouping, UsageParams, UsageQueryError, UsageTotals, parse_since,
};
use crate::daemon::BrokerState;

/// The routes of this family (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new().route("/usage", get(usage))
}

fn bad_query(err: UsageQueryError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, err.code(), err.to_string())
}

async fn usage(
    State(state): State<Arc<BrokerState>>,
    query: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageTotals>, ApiError> {
    let Query(params) = query.map_err(|err| {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", err.body_text())
    })?;
    let window =
        parse_since(params.since.as_deref().unwrap_or(USAGE_SINCE_DEFAULT)).map_err(bad_query)?;
    let by = match params.by.as_deref() {
        Some(word) => UsageGrouping::parse(word).map_err(bad_query)?,
        None => UsageGrouping::default(),
    };
    Ok(Json(state.router.usage(window, by).await))
}
