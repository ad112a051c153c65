//! `GET /v1/inbox?instance=NAME&limit=N`: the invocations addressed to one
//! of this broker's instances, newest first, read-only. It serves the
//! `inbox` and `reply` tools of `scout mcp`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::error::ApiError;
use crate::api::InboxItem;
use crate::daemon::BrokerState;
use crate::daemon::credentials::AgentCaller;
use crate::store::conversations::Conversation;
use crate::store::deliveries::Delivery;
use crate::store::flights::Flight;
use crate::store::invocations::Invocation;

/// Rows answered at most: an agent reads its inbox to pick a conversation,
/// not to page through history.
const INBOX_ROWS_MAX: usize = 100;

/// Recent invocations scanned to find those of one instance: the store has
/// no index by instance, and a bounded scan keeps the query cheap on a
/// broker with a long history.
const INBOX_SCAN_MAX: usize = 500;

/// Messages of one conversation read to find who sent an invocation: the
/// request is recorded when the invocation is accepted, among the first.
const SENDER_SCAN_MESSAGES_MAX: usize = 200;

/// The routes of this family (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new().route("/inbox", get(inbox))
}

#[derive(Debug, Deserialize)]
struct InboxQuery {
    instance: Option<String>,
    limit: Option<usize>,
}

async fn inbox(
    State(state): State<Arc<BrokerState>>,
    caller: Option<axum::Extension<AgentCaller>>,
    Query(query): Query<InboxQuery>,
) -> Result<Json<Vec<InboxItem>>, ApiError> {
    let Some(instance) = query.instance.filter(|name| !name.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "name the instance: /v1/inbox?instance=@agent@node#workspace",
        ));
    };
    // An agent reads its own inbox only; the operator reads any.
    if let Some(axum::Extension(caller)) = caller
        && caller.instance != instance
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN_SCOPE",
            format!(
                "{} may read its own inbox, not {instance}'s",
                caller.instance
            ),
        ));
    }
    let limit = query.limit.unwrap_or(20).min(INBOX_ROWS_MAX);
    state
        .store
        .read(move |connection| {
            let mut rows = Vec::new();
            for invocation in Invocation::list_recent(connection, INBOX_SCAN_MAX)? {
                if rows.len() >= limit {
                    break;
                }
                let flight = Flight::get_for_invocation(connection, &invocation.invocation_id)?;
                let chosen = match flight.as_ref().and_then(|f| f.chosen_instance.clone()) {
                    Some(chosen) => Some(chosen),
                    None => Delivery::list_for_invocation(connection, &invocation.invocation_id)?
                        .into_iter()
                        .last()
                        .map(|delivery| delivery.target),
                };
                if chosen.as_deref() != Some(instance.as_str()) {
                    continue;
                }
                // The sender recorded with the invocation (an agent's
                // credential); for a person's, the conversation's message.
                let from = match &invocation.conversation_id {
                    _ if invocation.from_instance.is_some() => invocation.from_instance.clone(),
                    Some(conversation_id) => Conversation::list_messages(
                        connection,
                        conversation_id,
                        None,
                        SENDER_SCAN_MESSAGES_MAX,
                    )?
                    .into_iter()
                    .find(|message| {
                        message.invocation_id.as_deref() == Some(&invocation.invocation_id)
                            && message.author != instance
                    })
                    .map(|message| message.author),
                    None => None,
                };
                rows.push(InboxItem {
                    invocation_id: invocation.invocation_id,
                    conversation_id: invocation.conversation_id,
                    from,
                    action: invocation.action,
                    body: invocation.body,
                    state: flight.map(|flight| flight.state),
                    created_at_ms: invocation.created_at_ms,
                });
            }
            Ok(rows)
        })
        .map(Json)
        .map_err(ApiError::internal)
}
