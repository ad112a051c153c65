//! `/v1/invocations…`, `/v1/flights`, `/v1/conversations…` and
//! `/v1/events/stream`: routing work to agents anywhere in the mesh and
//! following it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use scout_mesh::lifecycle::{DeliveryPolicy, InvocationAction};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::error::{ApiError, JsonBody, PathId};
pub use crate::api::{Cancelled, ConversationView, FlightRow, MessageView, SubmitBody};
use crate::api::{EventKind, InvocationStatus, RoutingEvent, Submitted};
use crate::daemon::BrokerState;
use crate::daemon::credentials::AgentCaller;
use crate::daemon::routing::{RouteError, SubmitRequest};
use crate::store::conversations::{Conversation, Message};
use crate::store::invocations::Invocation;

/// Rows a list returns at most.
const LIST_LIMIT_MAX: usize = 500;

/// The routes of this family (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/invocations", post(submit))
        .route("/invocations/{id}", get(status))
        .route("/invocations/{id}/stream", get(stream))
        .route("/invocations/{id}/cancel", post(cancel))
        .route("/flights", get(flights))
        .route("/conversations", get(conversations))
        .route("/conversations/{id}", get(conversation))
        .route("/events/stream", get(events))
}

pub(crate) fn route_error(err: RouteError) -> ApiError {
    let status = match &err {
        RouteError::InvalidName(_) | RouteError::InvalidId(_) => StatusCode::BAD_REQUEST,
        RouteError::NotFound(_) | RouteError::UnknownInvocation(_) => StatusCode::NOT_FOUND,
        RouteError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        RouteError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        RouteError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        RouteError::MentionLoop(_) => StatusCode::CONFLICT,
    };
    ApiError::new(status, err.code(), err.to_string())
}

/// 400 `INVALID_PROMPT` for text meant for an agent that carries terminal
/// control characters (see `pty::prompt`).
pub(crate) fn check_prompt(text: &str) -> Result<(), ApiError> {
    crate::pty::prompt::check_prompt(text)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, err.code(), err.to_string()))
}

async fn submit(
    State(state): State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
    JsonBody(body): JsonBody<SubmitBody>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    check_prompt(&body.message)?;
    let mut request = submit_request(&state, body);
    if let Some(Extension(caller)) = caller {
        // Sent by an agent: recorded as from its instance, extending the
        // chain of the invocation it is running.
        let running = match &caller.invocation {
            Some(running) => state
                .store
                .get_invocation(running)
                .map_err(|err| route_error(err.into()))?,
            None => None,
        };
        if let Some(running) = running {
            // An answer in the conversation the agent was mentioned in,
            // to whoever mentioned it, is a reply.
            if running.conversation_id.is_some()
                && running.conversation_id == request.conversation_id
            {
                request.reply_to = running.from_instance.clone();
            }
            request.parent_chain = running.chain;
        }
        request.author = caller.instance.clone();
        request.from = Some(caller.instance);
    }
    let submitted = state.router.submit(request).await.map_err(route_error)?;
    Ok((StatusCode::ACCEPTED, Json(submitted)))
}

/// The routing request of a submit body.
pub fn submit_request(state: &BrokerState, body: SubmitBody) -> SubmitRequest {
    let now = state.env.now_unix_ms();
    SubmitRequest {
        target: body.target,
        body: body.message,
        action: body.action.unwrap_or(InvocationAction::Execute),
        policy: body.policy.unwrap_or(DeliveryPolicy::Durable),
        deadline_ms: body.timeout_ms.map(|ms| now.saturating_add(ms)),
        conversation_id: body.conversation_id,
        author: format!("user@{}", state.node_name),
        from: None,
        parent_chain: Vec::new(),
        reply_to: None,
    }
}

async fn status(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
) -> Result<Json<InvocationStatus>, ApiError> {
    let mut status = state.router.status(&id).map_err(route_error)?;
    let waiting = waiting_for(&state);
    if let Some(approval) = waiting.get(&id) {
        status.waiting_for = Some(approval.clone());
        if let Some(flight) = &mut status.flight
            && flight.state == scout_mesh::lifecycle::FlightState::Running
        {
            flight.state = scout_mesh::lifecycle::FlightState::Waiting;
        }
    }
    Ok(Json(status))
}

/// Invocations whose agent waits for a person, anywhere in the mesh, with
/// the approval each waits for: the approvals every member replicates
/// name the invocation they were asked in.
fn waiting_for(state: &BrokerState) -> std::collections::HashMap<String, String> {
    state
        .approvals
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|approval| approval.state == scout_mesh::wire::ApprovalState::Pending)
        .filter_map(|approval| Some((approval.invocation?, approval.id)))
        .collect()
}

/// An agent cancels what it sent itself; cancelling another's work is
/// human-gated (`invocation.cancel`): the request becomes an approval.
async fn cancel(
    State(state): State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
    PathId(id): PathId,
) -> Result<axum::response::Response, ApiError> {
    let status = state.router.status(&id).map_err(route_error)?;
    let own = caller.as_ref().is_some_and(|Extension(caller)| {
        status.invocation.from.as_deref() == Some(&caller.instance)
    });
    let caller = if own { None } else { caller };
    let gate = crate::daemon::approvals::Gate::InvocationCancel { id: id.clone() };
    super::approvals::gate(&state, caller, gate, || async {
        state.router.cancel(&id).await.map_err(route_error)?;
        Ok(Cancelled {
            cancelled: id.clone(),
        })
    })
    .await
}

fn sse_event(event: &RoutingEvent) -> Event {
    Event::default()
        .event(event.kind.as_str())
        .json_data(event)
        .unwrap_or_else(|_| Event::default().event("error"))
}

/// Streams one invocation: its status first, then its events until its
/// delivery ends (a replay of the end when it had ended already).
async fn stream(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before reading the status, so nothing falls in between.
    let mut events = state.router.subscribe();
    let status = state.router.status(&id).map_err(route_error)?;
    let first = Event::default()
        .event("status")
        .json_data(&status)
        .unwrap_or_else(|_| Event::default().event("error"));
    let finished = status
        .delivery
        .as_ref()
        .is_some_and(|delivery| delivery.state.is_terminal());
    let stream = async_stream(move |tx| async move {
        if tx.send(first).await.is_err() || finished {
            return;
        }
        loop {
            match events.recv().await {
                Ok(event) if event.invocation_id == id => {
                    let done = event.kind == EventKind::Delivery
                        && event.state.is_some_and(|state| state.is_terminal());
                    if tx.send(sse_event(&event)).await.is_err() || done {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    let lagged = Event::default().event("lagged").data(missed.to_string());
                    if tx.send(lagged).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Streams every routing event of this broker.
async fn events(
    State(state): State<Arc<BrokerState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut events = state.router.subscribe();
    let stream = async_stream(move |tx| async move {
        loop {
            let event = match events.recv().await {
                Ok(event) => sse_event(&event),
                Err(RecvError::Lagged(missed)) => {
                    Event::default().event("lagged").data(missed.to_string())
                }
                Err(RecvError::Closed) => return,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Events queued for one SSE client at most; a client that stops reading
/// holds the producer, not memory.
const SSE_QUEUE_MAX: usize = 64;

/// A stream fed by a task through a bounded channel.
pub(crate) fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(SSE_QUEUE_MAX);
    tokio::spawn(producer(tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|event| event.map(Ok)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn flights(
    State(state): State<Arc<BrokerState>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<FlightRow>>, ApiError> {
    let limit = query.limit.unwrap_or(50).min(LIST_LIMIT_MAX);
    let waiting = waiting_for(&state);
    state
        .store
        .read(move |connection| {
            let mut rows = Vec::new();
            for invocation in Invocation::list_recent(connection, limit)? {
                let delivery = crate::store::deliveries::Delivery::list_for_invocation(
                    connection,
                    &invocation.invocation_id,
                )?
                .into_iter()
                .last();
                let flight = crate::store::flights::Flight::get_for_invocation(
                    connection,
                    &invocation.invocation_id,
                )?;
                rows.push(FlightRow {
                    usage: delivery
                        .as_ref()
                        .and_then(|d| d.usage)
                        .or(flight.as_ref().and_then(|f| f.usage)),
                    failure_code: delivery
                        .as_ref()
                        .and_then(|d| d.failure_code.clone())
                        .or(flight.as_ref().and_then(|f| f.failure_code.clone())),
                    failure_reason: delivery
                        .as_ref()
                        .and_then(|d| d.failure_reason)
                        .or(flight.as_ref().and_then(|f| f.failure_reason)),
                    delivery: delivery.as_ref().map(|d| d.state),
                    instance: delivery
                        .as_ref()
                        .map(|d| d.target.clone())
                        .or(flight.as_ref().and_then(|f| f.chosen_instance.clone())),
                    flight: flight.map(|f| match waiting.get(&invocation.invocation_id) {
                        Some(_) if f.state == scout_mesh::lifecycle::FlightState::Running => {
                            scout_mesh::lifecycle::FlightState::Waiting
                        }
                        _ => f.state,
                    }),
                    waiting_for: waiting.get(&invocation.invocation_id).cloned(),
                    invocation_id: invocation.invocation_id,
                    target: invocation.target,
                    origin: invocation.origin_node,
                    created_at_ms: invocation.created_at_ms,
                });
            }
            Ok(rows)
        })
        .map(Json)
        .map_err(ApiError::internal)
}

fn conversation_view(conversation: Conversation, messages: Vec<Message>) -> ConversationView {
    ConversationView {
        conversation_id: conversation.conversation_id,
        title: conversation.title,
        updated_at_ms: conversation.updated_at_ms,
        messages: messages
            .into_iter()
            .map(|message| MessageView {
                seq: message.seq,
                author: message.author,
                body: message.body,
                invocation_id: message.invocation_id,
                created_at_ms: message.created_at_ms,
            })
            .collect(),
    }
}

async fn conversations(
    State(state): State<Arc<BrokerState>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<ConversationView>>, ApiError> {
    let limit = query.limit.unwrap_or(50).min(LIST_LIMIT_MAX);
    state
        .store
        .read(move |connection| {
            Ok(Conversation::list_recent(connection, limit)?
                .into_iter()
                .map(|conversation| conversation_view(conversation, Vec::new()))
                .collect::<Vec<_>>())
        })
        .map(Json)
        .map_err(ApiError::internal)
}

async fn conversation(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
) -> Result<Json<ConversationView>, ApiError> {
    let lookup = id.clone();
    let found = state
        .store
        .read(move |connection| {
            let Some(conversation) = Conversation::get(connection, &lookup)? else {
                return Ok(None);
            };
            let messages = Conversation::list_messages(connection, &lookup, None, LIST_LIMIT_MAX)?;
            Ok(Some(conversation_view(conversation, messages)))
        })
        .map_err(ApiError::internal)?;
    found.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "CONVERSATION_NOT_FOUND",
            format!("no conversation `{id}`"),
        )
    })
}
