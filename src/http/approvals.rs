//! `/v1/approvals…`: the approvals of the whole mesh, asking for one, and
//! answering one from this broker (the owner takes the first answer).
//! Also [`gate`], which turns an agent's gated request into an approval,
//! and `POST /v1/approvals/{id}/token`, where the agent that asked for an
//! operator token picks it up once approved (reading an approval with
//! `GET` never makes anything).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use scout_mesh::wire::{ApprovalDecision, ApprovalState};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, JsonBody, PathId};
use crate::daemon::BrokerState;
use crate::daemon::approvals::{ApprovalError, ApprovalView, Ask, Gate};
use crate::daemon::credentials::AgentCaller;

/// The longest one `wait` request holds: a client waiting longer asks again.
pub const WAIT_MAX: Duration = Duration::from_secs(300);

/// The routes of this family (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/approvals", get(list).post(ask))
        .route("/approvals/stream", get(stream))
        .route("/approvals/rules", get(rules))
        .route("/approvals/rules/{id}/remove", post(remove_rule))
        .route("/approvals/{id}", get(one))
        .route("/approvals/{id}/wait", get(wait))
        .route("/approvals/{id}/approve", post(approve))
        .route("/approvals/{id}/deny", post(deny))
        .route("/approvals/{id}/token", post(token))
}

/// The answer to a gated request made by an agent: `202` and the approval.
#[derive(Debug, Serialize)]
pub struct Gated {
    /// Always `approval_required`.
    pub status: &'static str,
    /// The approval to wait for (`GET /v1/approvals/{id}/wait`).
    pub approval: ApprovalView,
    /// How to collect the result, when the requester collects it (an
    /// operator token is picked up with `POST /v1/approvals/{id}/token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pickup: Option<String>,
}

/// Runs `run` for a person; for an agent, asks for approval of `gate`
/// instead and answers `202 Accepted` with the approval, whose owner runs
/// the action once a person approves it.
pub async fn gate<F, Fut, T>(
    state: &BrokerState,
    caller: Option<Extension<AgentCaller>>,
    gate: Gate,
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
    T: Serialize,
{
    let Some(Extension(caller)) = caller else {
        return run().await.map(|value| Json(value).into_response());
    };
    let picked_up = gate.action() == Gate::TOKEN_CREATE;
    let approval = state
        .approvals
        .ask(Ask {
            agent: caller.instance.clone(),
            invocation: caller.invocation.clone(),
            action: gate.action().to_owned(),
            summary: gate.summary(),
            gate: Some(gate),
            deadline: None,
        })
        .await
        .map_err(approval_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Gated {
            status: "approval_required",
            pickup: picked_up.then(|| {
                format!(
                    "wait for the decision with GET /v1/approvals/{id}/wait; once approved, POST /v1/approvals/{id}/token with this agent's credential within {} s to receive the token (handed once)",
                    super::tokens::TOKEN_PICKUP_MAX.as_secs(),
                    id = approval.id
                )
            }),
            approval,
        }),
    )
        .into_response())
}

/// The status and code of an approval error.
pub fn approval_error(err: ApprovalError) -> ApiError {
    let (status, code) = match &err {
        ApprovalError::Decided(decided) => (StatusCode::CONFLICT, decided.code()),
        ApprovalError::NotPending(_) => (StatusCode::NOT_FOUND, "APPROVAL_NOT_PENDING"),
        ApprovalError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
        ApprovalError::TooMany { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_APPROVALS"),
        ApprovalError::Ambiguous { .. } => (StatusCode::CONFLICT, "APPROVAL_AMBIGUOUS"),
        ApprovalError::OwnerUnreachable { .. } => (StatusCode::BAD_GATEWAY, "OWNER_UNREACHABLE"),
        ApprovalError::AlwaysNotAllowed(_) => (StatusCode::BAD_REQUEST, "ALWAYS_NOT_ALLOWED"),
        // The owner's refusal keeps its meaning: a decision conflict, a
        // bad answer, or the owner failing.
        ApprovalError::Refused { code, .. } => match code.as_str() {
            "ALREADY_DECIDED" => (StatusCode::CONFLICT, "ALREADY_DECIDED"),
            "APPROVAL_EXPIRED" => (StatusCode::CONFLICT, "APPROVAL_EXPIRED"),
            "APPROVAL_NOT_PENDING" => (StatusCode::NOT_FOUND, "APPROVAL_NOT_PENDING"),
            "INVALID_REQUEST" => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            "ALWAYS_NOT_ALLOWED" => (StatusCode::BAD_REQUEST, "ALWAYS_NOT_ALLOWED"),
            "NOT_READY" => (StatusCode::SERVICE_UNAVAILABLE, "OWNER_NOT_READY"),
            _ => (StatusCode::BAD_GATEWAY, "OWNER_FAILED"),
        },
        ApprovalError::Store(store) => match store {
            crate::store::StoreError::InvalidRequest { .. } => {
                (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
            }
            crate::store::StoreError::NotFound { .. } => {
                (StatusCode::NOT_FOUND, "APPROVAL_NOT_PENDING")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "STORE_ERROR"),
        },
    };
    ApiError::new(status, code, err.to_string())
}

/// The list of approvals.
#[derive(Debug, Serialize)]
pub struct ApprovalList {
    /// Newest first.
    pub approvals: Vec<ApprovalView>,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Only this state (`pending`).
    state: Option<String>,
}

/// Whether `caller` may see `view`: a person sees every approval; an
/// agent only its own (another agent's summary may hold its commands and
/// their secrets).
fn visible(caller: Option<&Extension<AgentCaller>>, view: &ApprovalView) -> bool {
    caller.is_none_or(|Extension(caller)| caller.instance == view.agent)
}

async fn list(
    State(state): State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<ApprovalList>, ApiError> {
    let wanted = match query.state.as_deref() {
        None | Some("all") => None,
        Some(word) => Some(parse_state(word)?),
    };
    let approvals = state
        .approvals
        .list()
        .map_err(approval_error)?
        .into_iter()
        .filter(|view| wanted.is_none_or(|wanted| view.state == wanted))
        .filter(|view| visible(caller.as_ref(), view))
        .collect();
    Ok(Json(ApprovalList { approvals }))
}

fn parse_state(word: &str) -> Result<ApprovalState, ApiError> {
    match word {
        "pending" => Ok(ApprovalState::Pending),
        "approved" => Ok(ApprovalState::Approved),
        "denied" => Ok(ApprovalState::Denied),
        "expired" => Ok(ApprovalState::Expired),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            format!("unknown state `{other}`; use pending, approved, denied, expired or all"),
        )),
    }
}

/// The answer to `POST /v1/approvals/{id}/token`: the approval and the
/// operator token it made, handed this once.
#[derive(Debug, Serialize)]
pub struct PickedUp {
    /// The approval.
    #[serde(flatten)]
    pub view: ApprovalView,
    /// The token.
    pub token: super::tokens::CreatedToken,
}

async fn one(
    State(state): State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
    PathId(id): PathId,
) -> Result<Json<ApprovalView>, ApiError> {
    let view = state
        .approvals
        .get(&id)
        .map_err(approval_error)?
        .filter(|view| visible(caller.as_ref(), view))
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view))
}

/// `POST /v1/approvals/{id}/token`: the agent that asked for an operator
/// token picks it up once its approval is approved. Reading an approval
/// never makes anything; this request does, once.
async fn token(
    State(state): State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
    PathId(id): PathId,
) -> Result<Json<PickedUp>, ApiError> {
    // Another agent's approval, or another member's, is not found here.
    let view = state
        .approvals
        .get(&id)
        .map_err(approval_error)?
        .filter(|view| view.local && visible(caller.as_ref(), view))
        .ok_or_else(|| not_found(&id))?;
    let Some(Extension(caller)) = caller else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN_SCOPE",
            "only the agent that asked for a token picks it up; the operator makes tokens with POST /v1/tokens",
        ));
    };
    if view.action != Gate::TOKEN_CREATE {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "NOT_A_TOKEN_APPROVAL",
            format!(
                "approval {id} is for `{}`, not a token; nothing is picked up",
                view.action
            ),
        ));
    }
    if view.state != ApprovalState::Approved {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "APPROVAL_NOT_APPROVED",
            format!(
                "approval {id} is {}; a token is picked up only once it is approved (GET /v1/approvals/{id}/wait waits for the decision)",
                view.state.as_str()
            ),
        ));
    }
    let token = super::tokens::pick_up(&state, &caller, &view).await?;
    // The approval as it is now, with the pickup recorded.
    let view = state
        .approvals
        .get(&id)
        .map_err(approval_error)?
        .unwrap_or(view);
    Ok(Json(PickedUp { view, token }))
}

async fn rules(
    State(state): State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if caller.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN_SCOPE",
            "the standing rules are for the operator; an agent may only ask",
        ));
    }
    let rules: Vec<serde_json::Value> = state
        .approvals
        .rules()
        .map_err(approval_error)?
        .into_iter()
        .map(|rule| {
            serde_json::json!({
                "id": rule.id,
                "agent": rule.agent,
                "action": rule.action,
                "summary": rule.summary,
                "allow": rule.allow,
                "created_by": rule.created_by,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "rules": rules })))
}

async fn remove_rule(
    State(state): State<Arc<BrokerState>>,
    PathId(id): PathId,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !state
        .approvals
        .remove_rule(&id, "operator")
        .await
        .map_err(approval_error)?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "RULE_NOT_FOUND",
            format!("no standing rule {id} on this broker; `scout approvals rules` lists them"),
        ));
    }
    Ok(Json(serde_json::json!({ "removed": id })))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "APPROVAL_NOT_PENDING",
        format!("no approval {id} here or on any member this broker knows"),
    )
}

/// The body of `POST /v1/approvals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AskBody {
    /// What is asked for (`tool.Bash`, `question`).
    action: String,
    /// What about.
    summary: String,
    /// The asking instance; an agent's own name is taken from its
    /// credential, so only the operator names one.
    agent: Option<String>,
    /// Seconds until it counts as denied.
    deadline_secs: Option<u64>,
}

async fn ask(
    State(state): State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
    JsonBody(body): JsonBody<AskBody>,
) -> Result<(StatusCode, Json<ApprovalView>), ApiError> {
    let (agent, invocation) = match caller {
        Some(Extension(caller)) => (caller.instance, caller.invocation),
        None => match body.agent {
            Some(agent) => (agent, None),
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "`agent` is required when the operator asks on an agent's behalf",
                ));
            }
        },
    };
    let view = state
        .approvals
        .ask(Ask {
            agent,
            invocation,
            action: body.action,
            summary: body.summary,
            gate: None,
            deadline: body.deadline_secs.map(Duration::from_secs),
        })
        .await
        .map_err(|err| match err {
            ApprovalError::Store(store) if store.code() == "INVALID_REQUEST" => ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                store.to_string(),
            ),
            other => approval_error(other),
        })?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    /// Seconds, at most [`WAIT_MAX`].
    timeout_secs: Option<u64>,
}

async fn wait(
    State(state): State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
    PathId(id): PathId,
    Query(query): Query<WaitQuery>,
) -> Result<Json<ApprovalView>, ApiError> {
    let timeout =
        Duration::from_secs(query.timeout_secs.unwrap_or(WAIT_MAX.as_secs())).min(WAIT_MAX);
    // An agent waits only for what it asked: checked before the wait, so
    // another agent's id cannot hold a connection open for minutes.
    let known = state.approvals.get(&id).map_err(approval_error)?;
    if !known.is_some_and(|view| visible(caller.as_ref(), &view)) {
        return Err(not_found(&id));
    }
    let view = state
        .approvals
        .wait(&id, timeout)
        .await
        .map_err(approval_error)?;
    Ok(Json(view))
}

/// The body of an answer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    #[serde(default)]
    note: String,
    #[serde(default)]
    always: bool,
}

async fn approve(
    state: State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
    person: Option<Extension<super::scope::Caller>>,
    id: PathId,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<ApprovalView>, ApiError> {
    answer(state, caller, person, id, body, true).await
}

async fn deny(
    state: State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
    person: Option<Extension<super::scope::Caller>>,
    id: PathId,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<ApprovalView>, ApiError> {
    answer(state, caller, person, id, body, false).await
}

async fn answer(
    State(state): State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
    person: Option<Extension<super::scope::Caller>>,
    PathId(id): PathId,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    approve: bool,
) -> Result<Json<ApprovalView>, ApiError> {
    // A body over the limit gets the typed error every JSON route gives.
    let body = body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "BODY_TOO_LARGE"
            } else {
                "INVALID_REQUEST"
            },
            rejection.body_text(),
        )
    })?;
    if caller.is_some() {
        // An agent answering approvals would approve its own requests.
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN_SCOPE",
            "answering an approval needs the operator scope; an agent may only ask",
        ));
    }
    // The body is optional: `{}` or nothing answers without a note.
    let body: AnswerBody = if body.iter().all(u8::is_ascii_whitespace) {
        AnswerBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|err| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                format!("the body is not an answer (`note`, `always`): {err}"),
            )
        })?
    };
    let view = state
        .approvals
        .decide(ApprovalDecision {
            id,
            approve,
            // Who answered: the operator, a browser session or a token.
            actor: person.map_or_else(|| "operator".to_owned(), |person| person.actor()),
            note: body.note,
            always: body.always,
        })
        .await
        .map_err(approval_error)?;
    Ok(Json(view))
}

/// Streams approvals as they change anywhere in the mesh: every approval
/// first (`approval` events), then each change.
async fn stream(
    State(state): State<Arc<BrokerState>>,
    caller: Option<Extension<AgentCaller>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut local = state.approvals.subscribe();
    let mut registry = state.mesh.subscribe_changes();
    let stream = super::invocations::async_stream(move |tx| async move {
        let mut last: HashMap<String, ApprovalView> = HashMap::new();
        loop {
            let Ok(views) = state.approvals.list() else {
                return;
            };
            // What left the list is forgotten, so the map stays its size.
            last.retain(|id, _| views.iter().any(|view| view.id == *id));
            for view in views.into_iter().rev() {
                if !visible(caller.as_ref(), &view) {
                    continue;
                }
                if last.get(&view.id) == Some(&view) {
                    continue;
                }
                let event = Event::default()
                    .event("approval")
                    .json_data(&view)
                    .unwrap_or_else(|_| Event::default().event("error"));
                if tx.send(event).await.is_err() {
                    return;
                }
                last.insert(view.id.clone(), view);
            }
            tokio::select! {
                changed = local.changed() => if changed.is_err() { return },
                changed = registry.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
