//! `/v1/tokens`: scoped tokens. `POST /v1/tokens` makes one (the secret is
//! in the answer and nowhere else), `GET /v1/tokens` lists them with the
//! browser sessions, `POST /v1/tokens/{id}/revoke` ends a token or a
//! session. Creation, first use in a broker run and revocation are
//! audited with the caller as actor. An agent asking for an operator
//! token asks a person; the token, of at most a day, is made when the agent
//! picks it up ([`pick_up`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::audit::record;
use super::error::{ApiError, JsonBody, PathId};
use super::scope::{Caller, Scope};
use super::web::WebSessions;
use crate::daemon::BrokerState;
use crate::daemon::approvals::{ApprovalView, Gate};
use crate::daemon::credentials::AgentCaller;
use crate::daemon::tokens::{
    LIVE_TOKENS_MAX, TOKEN_ID_PREFIX, TOKEN_PREFIX, TokenCheck, digest_hex, hex,
};
use crate::store::audit::{AuditEntry, NewAuditEntry};
use crate::store::tokens::{self as token_store, TokenRow};

/// Longest life a token may be given: a year. A token meant to live longer
/// is the operator token; a scoped one should be renewed.
pub const TOKEN_TTL_MS_MAX: u64 = 365 * 24 * 3600 * 1000;

/// Longest token name, in characters: a label for a list, not a document.
pub const TOKEN_NAME_CHARS_MAX: usize = 64;

/// Bytes of randomness in a token's secret: 256 bits, as the operator
/// token and agent credentials have.
const SECRET_BYTES: usize = 32;

/// Bytes of randomness in a token's id: enough that ids of one broker do
/// not collide, short enough to type.
const ID_BYTES: usize = 6;

/// Routes (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}/revoke", post(revoke))
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token may do.
    pub scope: Scope,
    /// The agent an `agent` token acts as (`@fabric` or a full instance of
    /// this broker); required for that scope, refused for the others.
    #[serde(default)]
    pub agent: Option<String>,
    /// How long it works, in milliseconds; forever when absent.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// A label.
    #[serde(default)]
    pub name: Option<String>,
}

/// The answer to `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The id, for `scout tokens revoke`.
    pub id: String,
    /// The secret to send as `Authorization: Bearer …`.
    pub token: String,
    /// Its scope.
    pub scope: Scope,
    /// The agent instance it acts as.
    pub agent: Option<String>,
    /// Its label.
    pub name: Option<String>,
    /// When it stops working (unix ms), if ever.
    pub expires_at_ms: Option<i64>,
}

/// A token or browser session as `GET /v1/tokens` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenView {
    /// The id, for `scout tokens revoke`.
    pub id: String,
    /// `token` or `session`.
    pub kind: String,
    /// Its label.
    pub name: Option<String>,
    /// Its scope (a session is `operator`).
    pub scope: Scope,
    /// The agent instance it acts as.
    pub agent: Option<String>,
    /// Who made it.
    pub created_by: Option<String>,
    /// When it was made (unix ms).
    pub created_at_ms: i64,
    /// When it stops working (unix ms), if ever.
    pub expires_at_ms: Option<i64>,
    /// When a request last used it (unix ms), if ever.
    pub last_used_at_ms: Option<i64>,
    /// When it was revoked (unix ms).
    pub revoked_at_ms: Option<i64>,
}

/// The answer to `GET /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenList {
    /// Tokens newest first, then the browser sessions.
    pub tokens: Vec<TokenView>,
}

/// The created token a presented secret names, as a [`Caller`], counting
/// the use: its first use in this broker run is audited, and its last use
/// is written now and then. `UNAUTHORIZED` for anything not live.
pub(crate) async fn check_created(
    state: &Arc<BrokerState>,
    presented: &str,
) -> Result<Caller, ApiError> {
    let now = state.env.now_unix_ms_i64();
    let (caller, first_use, persist) = match state.tokens.check(presented, now) {
        TokenCheck::Accepted {
            caller,
            first_use,
            persist,
        } => (caller, first_use, persist),
        TokenCheck::NotOurs | TokenCheck::Refused => return Err(ApiError::unauthorized()),
    };
    if persist {
        let token_id = caller.token_id.clone().unwrap_or_default();
        let actor = caller.actor();
        let node = state.node_id.clone();
        let written = state
            .store
            .write(move |transaction| {
                token_store::touch(transaction, &token_id, now)?;
                if first_use {
                    AuditEntry::append(
                        transaction,
                        &NewAuditEntry {
                            ts_ms: now,
                            actor,
                            action: "token_first_use".to_owned(),
                            subject: token_id,
                            detail: json!({ "node": node }),
                        },
                    )?;
                }
                Ok(())
            })
            .await;
        if let Err(err) = written {
            // The request goes on: a lost last-use time is not worth
            // refusing a valid token over.
            tracing::warn!(cause = %err, "cannot record a token's use");
        }
    }
    Ok(caller)
}

/// `POST /v1/tokens`. An agent asking for an operator token asks a person
/// instead: `202` with the approval, and the token is made when the agent
/// picks it up ([`pick_up`]).
async fn create(
    State(state): State<Arc<BrokerState>>,
    Extension(caller): Extension<Caller>,
    agent: Option<Extension<AgentCaller>>,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<Response, ApiError> {
    if body.scope == Scope::Operator && caller.scope == Scope::Agent && agent.is_some() {
        if body.agent.is_some() {
            return Err(invalid(
                "only an `agent` token acts as an agent; an `operator` token takes no --agent",
            ));
        }
        let gate = Gate::TokenCreate {
            name: check_name(body.name)?,
            ttl_ms: Some(agent_operator_ttl(check_ttl(body.ttl_ms)?)),
        };
        return super::approvals::gate(&state, agent, gate, || async {
            Err::<(), ApiError>(invalid("only an agent's request is gated"))
        })
        .await;
    }
    if body.scope > caller.scope {
        return Err(ApiError::forbidden_scope(
            body.scope,
            "POST",
            &format!("/v1/tokens for a `{}` token", body.scope),
        ));
    }
    let name = check_name(body.name)?;
    let agent = token_agent(&state, &caller, body.scope, body.agent)?;
    let ttl_ms = check_ttl(body.ttl_ms)?;
    let created = mint(&state, body.scope, agent, name, ttl_ms, caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// How long an operator token asked for by an agent works when the agent
/// names no ttl: the hour of work it was asked for, not a standing key.
pub const AGENT_OPERATOR_TTL_DEFAULT_MS: u64 = 60 * 60 * 1000;

/// The longest an operator token asked for by an agent works, whatever it
/// asks: a day. An agent holding the operator's power is a person's
/// decision about today's work; tomorrow's is asked again.
pub const AGENT_OPERATOR_TTL_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// The ttl of an operator token an agent asks for: the asked one (checked
/// by [`check_ttl`]), [`AGENT_OPERATOR_TTL_DEFAULT_MS`] when none, at most
/// [`AGENT_OPERATOR_TTL_MAX_MS`]. The approval's summary shows it.
pub fn agent_operator_ttl(asked: Option<u64>) -> u64 {
    asked
        .unwrap_or(AGENT_OPERATOR_TTL_DEFAULT_MS)
        .min(AGENT_OPERATOR_TTL_MAX_MS)
}

fn check_ttl(ttl_ms: Option<u64>) -> Result<Option<u64>, ApiError> {
    match ttl_ms {
        Some(0) => Err(invalid("a token's ttl must be more than 0 ms")),
        Some(ttl) if ttl > TOKEN_TTL_MS_MAX => Err(invalid(format!(
            "a token's ttl may be at most {TOKEN_TTL_MS_MAX} ms (a year)"
        ))),
        other => Ok(other),
    }
}

/// Makes a token of `scope` as `created_by` and records it (store, audit,
/// the live set): the secret is in the answer and nowhere else.
async fn mint(
    state: &BrokerState,
    scope: Scope,
    agent: Option<String>,
    name: Option<String>,
    ttl_ms: Option<u64>,
    created_by: String,
) -> Result<CreatedToken, ApiError> {
    if state.tokens.len() >= LIVE_TOKENS_MAX {
        return Err(tokens_limit());
    }
    let now = state.env.now_unix_ms_i64();
    let (token, token_id) = new_token(state);
    let expires_at_ms =
        ttl_ms.map(|ttl| now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)));
    let row = TokenRow {
        token_id,
        name: name.clone(),
        scope: scope.as_str().to_owned(),
        agent: agent.clone(),
        digest: digest_hex(&token),
        created_by,
        created_at_ms: now,
        expires_at_ms,
        last_used_at_ms: None,
        revoked_at_ms: None,
    };
    let stored = row.clone();
    let node = state.node_id.clone();
    state
        .store
        .write(move |transaction| {
            token_store::insert(transaction, &stored)?;
            AuditEntry::append(
                transaction,
                &NewAuditEntry {
                    ts_ms: now,
                    actor: stored.created_by.clone(),
                    action: "token_create".to_owned(),
                    subject: stored.token_id.clone(),
                    detail: json!({
                        "scope": stored.scope,
                        "agent": stored.agent,
                        "name": stored.name,
                        "expires_at_ms": stored.expires_at_ms,
                        "node": node,
                    }),
                },
            )?;
            Ok(())
        })
        .await
        .map_err(ApiError::internal)?;
    state.tokens.insert(&row);
    Ok(CreatedToken {
        id: row.token_id,
        token,
        scope,
        agent,
        name,
        expires_at_ms,
    })
}

fn tokens_limit() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "TOKENS_LIMIT",
        format!("{LIVE_TOKENS_MAX} tokens are live; revoke some first (`scout tokens list`)"),
    )
}

/// How long after its approval an operator token asked for by an agent
/// may be picked up: the agent is waiting for the answer, so minutes are
/// plenty; an approval forgotten for longer makes no token at all.
pub const TOKEN_PICKUP_MAX: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// A fresh secret (`sct_…`) and its token id, from the broker's randomness.
fn new_token(state: &BrokerState) -> (String, String) {
    let secret: [u8; SECRET_BYTES] = state.env.random();
    let id_bytes: [u8; ID_BYTES] = state.env.random();
    (
        format!("{TOKEN_PREFIX}{}", hex(&secret)),
        format!("{TOKEN_ID_PREFIX}{}", hex(&id_bytes)),
    )
}

/// The token of approval `view`, made now and handed once, to `caller`,
/// the agent that asked for it (`POST /v1/approvals/{id}/token`). The
/// secret is never stored: it is made on pickup and answered to this
/// request only. The live-token limit is checked and the secret made
/// before the approval is claimed; the claim, the token's row, its audit
/// entry and the approval's outcome are one transaction, run in a task of
/// its own so a client going away mid-request cannot split them. A second
/// pickup is `TOKEN_ALREADY_HANDED`, one later than [`TOKEN_PICKUP_MAX`]
/// after the approval `TOKEN_PICKUP_EXPIRED`.
pub async fn pick_up(
    state: &Arc<BrokerState>,
    caller: &AgentCaller,
    view: &ApprovalView,
) -> Result<CreatedToken, ApiError> {
    if state.tokens.len() >= LIVE_TOKENS_MAX {
        return Err(tokens_limit());
    }
    let now = state.env.now_unix_ms_i64();
    let (token, token_id) = new_token(state);
    let digest = digest_hex(&token);
    let created_by = format!("approval:{} agent:{}", view.id, caller.instance);
    let instance = caller.instance.clone();
    let node = state.node_id.clone();
    let max = u64::try_from(TOKEN_PICKUP_MAX.as_millis()).unwrap_or(u64::MAX);
    let task_state = state.clone();
    let approval = view.id.clone();
    let picked = tokio::spawn(async move {
        let picked = task_state
            .approvals
            .claim_pickup(&approval, max, move |transaction, gate| {
                let Gate::TokenCreate { name, ttl_ms } = gate else {
                    return Err(crate::store::StoreError::InvalidRequest {
                        detail: "the approval is not for a token".to_owned(),
                    });
                };
                // Approvals asked before the ttl cap carry none or a longer
                // one: the cap holds for them too.
                let ttl = agent_operator_ttl(ttl_ms);
                let row = TokenRow {
                    token_id,
                    name,
                    scope: Scope::Operator.as_str().to_owned(),
                    agent: None,
                    digest,
                    created_by,
                    created_at_ms: now,
                    expires_at_ms: Some(now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))),
                    last_used_at_ms: None,
                    revoked_at_ms: None,
                };
                token_store::insert(transaction, &row)?;
                AuditEntry::append(
                    transaction,
                    &NewAuditEntry {
                        ts_ms: now,
                        actor: row.created_by.clone(),
                        action: "token_create".to_owned(),
                        subject: row.token_id.clone(),
                        detail: json!({
                            "scope": row.scope,
                            "agent": row.agent,
                            "name": row.name,
                            "expires_at_ms": row.expires_at_ms,
                            "node": node,
                        }),
                    },
                )?;
                let outcome = format!("operator token {} handed to {instance}", row.token_id);
                Ok((row, outcome))
            })
            .await;
        if let Ok(crate::daemon::approvals::Pickup::Claimed(row)) = &picked {
            task_state.tokens.insert(row);
        }
        picked
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(super::approvals::approval_error)?;
    match picked {
        crate::daemon::approvals::Pickup::Claimed(row) => Ok(CreatedToken {
            id: row.token_id,
            token,
            scope: Scope::Operator,
            agent: None,
            name: row.name,
            expires_at_ms: row.expires_at_ms,
        }),
        crate::daemon::approvals::Pickup::Taken => Err(ApiError::new(
            StatusCode::GONE,
            "TOKEN_ALREADY_HANDED",
            format!(
                "the token of approval {} was handed to its agent already; ask again for another",
                view.id
            ),
        )),
        crate::daemon::approvals::Pickup::TooLate => Err(ApiError::new(
            StatusCode::GONE,
            "TOKEN_PICKUP_EXPIRED",
            format!(
                "the token of approval {} was not picked up within {} s of the approval; ask again",
                view.id,
                TOKEN_PICKUP_MAX.as_secs()
            ),
        )),
        crate::daemon::approvals::Pickup::NotAToken => Err(ApiError::new(
            StatusCode::CONFLICT,
            "NOT_A_TOKEN_APPROVAL",
            format!(
                "approval {} is not an approved request for a token",
                view.id
            ),
        )),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
}

fn check_name(name: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(name) = name else {
        return Ok(None);
    };
    let n_chars = name.chars().count();
    if n_chars == 0 || n_chars > TOKEN_NAME_CHARS_MAX || name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "a token name has 1 to {TOKEN_NAME_CHARS_MAX} characters and no control characters"
        )));
    }
    Ok(Some(name))
}

/// The agent instance a new token acts as: required for the `agent`
/// scope (an agent token acts as an agent), refused for the others. An
/// agent caller may only make tokens acting as itself.
fn token_agent(
    state: &BrokerState,
    caller: &Caller,
    scope: Scope,
    agent: Option<String>,
) -> Result<Option<String>, ApiError> {
    if scope != Scope::Agent {
        if agent.is_some() {
            return Err(invalid(format!(
                "only an `agent` token acts as an agent; a `{scope}` token takes no --agent"
            )));
        }
        return Ok(None);
    }
    let requested = match (agent, caller.agent.as_ref()) {
        (Some(agent), _) => agent,
        (None, Some(own)) if caller.scope == Scope::Agent => own.clone(),
        (None, _) => {
            return Err(invalid(
                "an `agent` token acts as an agent: name it with --agent @name",
            ));
        }
    };
    let instance = resolve_local_agent(state, &requested)?;
    if caller.scope == Scope::Agent && caller.agent.as_deref() != Some(instance.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN_SCOPE",
            format!(
                "an agent may only make tokens acting as itself, not as {instance}; making one for another agent needs the `operator` scope"
            ),
        ));
    }
    Ok(Some(instance))
}

/// The full instance name of one of this broker's agents named `given`
/// (`@fabric`, `fabric` or `@fabric@node#workspace`).
fn resolve_local_agent(state: &BrokerState, given: &str) -> Result<String, ApiError> {
    let agents = state
        .agents
        .read()
        .unwrap_or_else(|poison| poison.into_inner());
    let short = given.trim_start_matches('@');
    let mut matches: Vec<String> = agents
        .iter()
        .map(|agent| {
            (
                agent.definition.as_str().to_owned(),
                agent.instance_name(&state.node_name).to_string(),
            )
        })
        .filter(|(definition, instance)| instance == given || definition == short)
        .map(|(_, instance)| instance)
        .collect();
    matches.sort();
    matches.dedup();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(invalid(format!(
            "no agent `{given}` on this broker (see `scout agents list`)"
        ))),
        several => Err(invalid(format!(
            "`{given}` names several agents here ({}); give the full instance",
            several.join(", ")
        ))),
    }
}

/// `GET /v1/tokens`.
async fn list(
    State(state): State<Arc<BrokerState>>,
    Extension(sessions): Extension<Arc<WebSessions>>,
) -> Result<Json<TokenList>, ApiError> {
    let rows = state
        .store
        .read(|connection| token_store::list(connection, crate::store::LIST_ROWS_MAX))
        .map_err(ApiError::internal)?;
    let mut tokens: Vec<TokenView> = rows
        .into_iter()
        .map(|row| {
            // This run's uses are in memory; the store has them only now
            // and then.
            let last_used_at_ms = state
                .tokens
                .last_used(&row.token_id)
                .max(row.last_used_at_ms);
            TokenView {
                kind: "token".to_owned(),
                scope: Scope::parse(&row.scope).unwrap_or(Scope::Read),
                id: row.token_id,
                name: row.name,
                agent: row.agent,
                created_by: Some(row.created_by),
                created_at_ms: row.created_at_ms,
                expires_at_ms: row.expires_at_ms,
                last_used_at_ms,
                revoked_at_ms: row.revoked_at_ms,
            }
        })
        .collect();
    let as_i64 = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
    tokens.extend(
        sessions
            .list(state.env.now_unix_ms())
            .into_iter()
            .map(|session| TokenView {
                id: session.id,
                kind: "session".to_owned(),
                name: None,
                scope: Scope::Operator,
                agent: None,
                created_by: None,
                created_at_ms: as_i64(session.created_ms),
                expires_at_ms: Some(as_i64(session.expires_ms)),
                last_used_at_ms: Some(as_i64(session.last_used_ms)),
                revoked_at_ms: None,
            }),
    );
    Ok(Json(TokenList { tokens }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

/// `POST /v1/tokens/{id}/revoke`: a token, or a browser session.
async fn revoke(
    State(state): State<Arc<BrokerState>>,
    Extension(caller): Extension<Caller>,
    Extension(sessions): Extension<Arc<WebSessions>>,
    PathId(id): PathId,
    JsonBody(EmptyBody {}): JsonBody<EmptyBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = state.env.now_unix_ms_i64();
    let actor = caller.actor();
    if id.starts_with(TOKEN_ID_PREFIX) {
        let token_id = id.clone();
        let node = state.node_id.clone();
        let revoked = state
            .store
            .write(move |transaction| {
                let row = token_store::revoke(transaction, &token_id, now)?;
                if row.is_some() {
                    AuditEntry::append(
                        transaction,
                        &NewAuditEntry {
                            ts_ms: now,
                            actor,
                            action: "token_revoke".to_owned(),
                            subject: token_id,
                            detail: json!({ "node": node }),
                        },
                    )?;
                }
                Ok(row)
            })
            .await
            .map_err(ApiError::internal)?;
        if revoked.is_some() {
            state.tokens.remove(&id);
            return Ok(Json(json!({ "revoked": id, "kind": "token" })));
        }
    } else if sessions.revoke(&id) {
        record(
            &state,
            actor,
            "session_revoke",
            &id,
            json!({ "node": state.node_id }),
        )
        .await;
        return Ok(Json(json!({ "revoked": id, "kind": "session" })));
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "TOKEN_NOT_FOUND",
        format!("no token or browser session `{id}` (see `scout tokens list`)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_asked_operator_token_lives_an_hour_by_default_and_a_day_at_most() {
        assert_eq!(agent_operator_ttl(None), AGENT_OPERATOR_TTL_DEFAULT_MS);
        assert_eq!(agent_operator_ttl(Some(60_000)), 60_000);
        assert_eq!(
            agent_operator_ttl(Some(TOKEN_TTL_MS_MAX)),
            AGENT_OPERATOR_TTL_MAX_MS
        );
    }
}
