//! `/v1/audit`: the audit log. `GET /v1/audit` lists entries (filtered by
//! time, actor and action; the operator's), `GET /v1/audit/verify` walks
//! the hash chain and answers `AUDIT_CHAIN_BROKEN` with the first broken
//! seq when it does not hold. [`record`] is how handlers append.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::daemon::BrokerState;
use crate::store::audit::{AuditEntry, AuditFilter, ChainReport, NewAuditEntry};

/// Entries one `GET /v1/audit` answers when it asks for no limit: the
/// recent past, enough for a screen or a script's look-back.
pub const AUDIT_LIST_DEFAULT: usize = 200;

/// Longest actor or action filter, in bytes: they are compared to short
/// words, so a longer one is a mistake.
const AUDIT_FILTER_BYTES_MAX: usize = 256;

/// Routes (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/audit", get(list))
        .route("/audit/verify", get(verify))
}

/// Appends an entry at the broker's now; a failure is logged, never
/// answered: the action it records has already happened.
pub(crate) async fn record(
    state: &BrokerState,
    actor: String,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) {
    let entry = NewAuditEntry {
        ts_ms: state.env.now_unix_ms_i64(),
        actor,
        action: action.to_owned(),
        subject: subject.to_owned(),
        detail,
    };
    if let Err(err) = state.store.append_audit(entry).await {
        tracing::warn!(action, subject, cause = %err, "cannot append to the audit log");
    }
}

/// The query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only entries at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Only this actor (`operator`, `token:tok_…`, or a prefix before `:`
    /// such as `agent`).
    pub actor: Option<String>,
    /// Only this action (`token_create`).
    pub action: Option<String>,
    /// At most this many (the newest).
    pub limit: Option<usize>,
}

/// The answer to `GET /v1/audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditList {
    /// Entries, oldest first.
    pub entries: Vec<AuditEntry>,
}

async fn list(
    State(state): State<Arc<BrokerState>>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            format!("bad audit query: {}", rejection.body_text()),
        )
    })?;
    let too_long = |text: &Option<String>| {
        text.as_ref()
            .is_some_and(|text| text.len() > AUDIT_FILTER_BYTES_MAX)
    };
    if too_long(&query.actor) || too_long(&query.action) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            format!("an audit filter has at most {AUDIT_FILTER_BYTES_MAX} bytes"),
        ));
    }
    let filter = AuditFilter {
        since_ms: query.since_ms,
        actor: query.actor,
        action: query.action,
    };
    let limit = query.limit.unwrap_or(AUDIT_LIST_DEFAULT);
    let entries = state
        .store
        .read(|connection| AuditEntry::list_filtered(connection, &filter, limit))
        .map_err(ApiError::internal)?;
    Ok(Json(AuditList { entries }))
}

async fn verify(State(state): State<Arc<BrokerState>>) -> Result<Json<ChainReport>, ApiError> {
    let store = state.store.clone();
    let report = tokio::task::spawn_blocking(move || store.verify_audit())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    match report.broken_seq {
        None => Ok(Json(report)),
        Some(seq) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "AUDIT_CHAIN_BROKEN",
            format!(
                "the audit chain breaks at seq {seq}: {}",
                report.reason.as_deref().unwrap_or("unknown")
            ),
        )),
    }
}
