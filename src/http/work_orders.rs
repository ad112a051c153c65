//! `/v1/work-orders…`: `work_order.enqueue`, `work_order.list`,
//! `work_order.cancel` and `agent.run_now`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::error::{ApiError, JsonBody, PathId};
use super::invocations::route_error;
pub use crate::api::EnqueueBody;
use crate::daemon::BrokerState;
use crate::daemon::approvals::Gate;
use crate::daemon::credentials::AgentCaller;
use crate::daemon::work_orders::{self, EnqueueRequest, WorkOrderView};
use crate::store::work_orders::WorkOrderState;

/// Rows a list returns at most.
const LIST_LIMIT_MAX: usize = 500;

/// The routes of this family (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/work-orders", get(list).post(enqueue))
        .route("/work-orders/run-now", post(run_now))
        .route("/work-orders/{id}", get(one))
        .route("/work-orders/{id}/cancel", post(cancel))
}

fn request(state: &BrokerState, body: EnqueueBody, run_now: bool) -> EnqueueRequest {
    EnqueueRequest {
        target: body.target,
        body: body.body,
        not_before_ms: body.not_before_ms,
        timeout_ms: body.timeout_ms,
        run_now,
        author: format!("user@{}", state.node_name),
    }
}

async fn enqueue(
    State(state): State<Arc<BrokerState>>,
    JsonBody(body): JsonBody<EnqueueBody>,
) -> Result<(StatusCode, Json<WorkOrderView>), ApiError> {
    super::invocations::check_prompt(&body.body)?;
    let request = request(&state, body, false);
    let order = work_orders::enqueue(&state.router, request)
        .await
        .map_err(route_error)?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn run_now(
    State(state): State<Arc<BrokerState>>,
    JsonBody(body): JsonBody<EnqueueBody>,
) -> Result<(StatusCode, Json<WorkOrderView>), ApiError> {
    super::invocations::check_prompt(&body.body)?;
    let request = request(&state, body, true);
    let order = work_orders::enqueue(&state.router, request)
        .await
        .map_err(route_error)?;
    Ok((StatusCode::CREATED, Json(order)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<Arc<BrokerState>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<WorkOrderView>>, ApiError> {
    let filter = match query.state.as_deref() {
        Some(word) => Some(word.parse::<WorkOrderState>().map_err(|err| {
            ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", err.to_string())
        })?),
        None => None,
    };
    let limit = query.limit.unwrap_or(100).min(LIST_LIMIT_MAX);
    work_orders::list(&state.router, filter, limit)
        .map(Json)
        .map_err(route_error)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "WORK_ORDER_NOT_FOUND",
        format!("no work order `{id}`"),
    )
}

async fn one(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
) -> Result<Json<WorkOrderView>, ApiError> {
    work_orders::get(&state.router, &id)
        .map(Json)
        .map_err(|_| not_found(&id))
}

/// `work_order.cancel` is human-gated: an agent's request becomes an
/// approval (`202`), and the owner cancels once a person approves.
async fn cancel(
    State(state): State<Arc<BrokerState>>,
    caller: Option<axum::Extension<AgentCaller>>,
    PathId(id): PathId,
) -> Result<axum::response::Response, ApiError> {
    // An unknown work order is a 404 for everyone, before any approval.
    let known = id.clone();
    state
        .store
        .read(move |connection| crate::store::work_orders::WorkOrder::get(connection, &known))
        .map_err(|err| route_error(err.into()))?
        .ok_or_else(|| not_found(&id))?;
    let gate = Gate::WorkOrderCancel { id: id.clone() };
    super::approvals::gate(&state, caller, gate, || async {
        work_orders::cancel(&state.router, &id)
            .await
            .map_err(|err| match err {
                crate::daemon::routing::RouteError::UnknownInvocation(_) => not_found(&id),
                other => route_error(other),
            })
    })
    .await
}
