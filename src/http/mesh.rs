//! `/v1/peers` and `/v1/mesh…`: the mesh as this broker sees it, and the
//! membership operations (invite, join, revoke).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use scout_mesh::membership::INVITE_TTL_MS_DEFAULT;
use scout_mesh::pairing::{SHORT_INVITE_TTL_MS_DEFAULT, ShortCode};
use scout_mesh::wire::Invite;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, JsonBody};
pub use crate::api::Peers;
use crate::daemon::BrokerState;
use crate::daemon::mesh::IssuedCode;
use crate::daemon::mesh::pairing::IssuedShortCode;

/// The routes of this family (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/peers", get(peers))
        .route("/mesh", get(mesh))
        .route("/mesh/invites", post(invite))
        .route("/mesh/join", post(join))
        .route("/mesh/revoke", post(revoke))
}

async fn peers(State(state): State<Arc<BrokerState>>) -> Json<Peers> {
    Json(Peers {
        node_id: state.node_id.clone(),
        node_name: state.node_name.as_str().to_owned(),
        mesh_id: state.mesh.mesh_id().to_string(),
        peers: state.mesh.peers(),
        addresses: state.mesh.addresses(),
    })
}

#[derive(Debug, Serialize)]
struct MeshSummary {
    mesh_id: String,
    node_id: String,
    node_name: String,
    announced: Vec<String>,
    peers_connected: usize,
    peers_known: usize,
    registry_records: usize,
    registry_digest: String,
    sync_messages_received: u64,
    sync_records_received: u64,
    /// Flight updates dropped: unknown invocation, or not from its owner.
    flight_updates_dropped: u64,
    /// Flight queries and cancels refused with `NOT_ORIGIN`.
    flight_requests_refused: u64,
}

async fn mesh(State(state): State<Arc<BrokerState>>) -> Json<MeshSummary> {
    let peers = state.mesh.peers();
    let (registry_records, digest) = state.mesh.registry_digest();
    let (sync_messages_received, sync_records_received) = state.mesh.sync_stats();
    let refusals = state.router.refusal_counts();
    Json(MeshSummary {
        flight_updates_dropped: refusals.flight_updates_dropped,
        flight_requests_refused: refusals.flight_requests_refused,
        registry_records,
        registry_digest: format!("{digest:016x}"),
        sync_messages_received,
        sync_records_received,
        mesh_id: state.mesh.mesh_id().to_string(),
        node_id: state.node_id.clone(),
        node_name: state.node_name.as_str().to_owned(),
        announced: state
            .mesh
            .announced()
            .iter()
            .map(ToString::to_string)
            .collect(),
        peers_connected: peers
            .iter()
            .filter(|peer| peer.state == "connected")
            .count(),
        peers_known: peers.len(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteRequest {
    #[serde(default)]
    ttl_ms: Option<u64>,
    /// A short code to read aloud instead of a long one.
    #[serde(default)]
    short: bool,
}

async fn invite(
    State(state): State<Arc<BrokerState>>,
    JsonBody(request): JsonBody<InviteRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if request.short {
        let ttl = Duration::from_millis(request.ttl_ms.unwrap_or(SHORT_INVITE_TTL_MS_DEFAULT));
        let code: IssuedShortCode = state
            .mesh
            .invite_short(ttl)
            .await
            .map_err(ApiError::internal)?;
        return Ok((StatusCode::CREATED, Json(serde_json::json!(code))));
    }
    let ttl = Duration::from_millis(request.ttl_ms.unwrap_or(INVITE_TTL_MS_DEFAULT));
    let code: IssuedCode = state.mesh.invite(ttl).await.map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(serde_json::json!(code))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    code: String,
    /// For a short code: where the inviter listens (`HOST:PORT`), instead
    /// of looking for it with discovery.
    #[serde(default)]
    peers: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Joined {
    mesh_id: String,
}

async fn join(
    State(state): State<Arc<BrokerState>>,
    JsonBody(request): JsonBody<JoinRequest>,
) -> Result<Json<Joined>, ApiError> {
    if ShortCode::looks_like(&request.code) {
        let code = ShortCode::parse(&request.code)
            .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_SHORT_CODE", err.0))?;
        let mesh_id = state
            .mesh
            .join_short(&code, &request.peers)
            .await
            .map_err(|err| {
                let (status, code) = match err.code.as_str() {
                    "INVITER_NOT_FOUND" => (StatusCode::NOT_FOUND, "INVITER_NOT_FOUND"),
                    "INVALID_PEER" => (StatusCode::BAD_REQUEST, "INVALID_PEER"),
                    "INVITE_USED" => (StatusCode::CONFLICT, "INVITE_USED"),
                    "INVITE_EXPIRED" => (StatusCode::CONFLICT, "INVITE_EXPIRED"),
                    "PAIRING_FAILED" => (StatusCode::CONFLICT, "PAIRING_FAILED"),
                    _ => (StatusCode::BAD_GATEWAY, "JOIN_FAILED"),
                };
                ApiError::new(status, code, format!("{}: {}", err.code, err.message))
            })?;
        return Ok(Json(Joined {
            mesh_id: mesh_id.to_string(),
        }));
    }
    let invite = Invite::from_code(&request.code)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_INVITE", err.0))?;
    let mesh_id = state.mesh.join(invite).await.map_err(|err| {
        let message = format!("{err:#}");
        let code = [
            "INVITE_EXPIRED",
            "INVITE_USED",
            "INVITE_INVALID",
            "INVITE_UNKNOWN",
        ]
        .into_iter()
        .find(|code| message.contains(code))
        .unwrap_or("JOIN_FAILED");
        ApiError::new(StatusCode::BAD_GATEWAY, code, message)
    })?;
    Ok(Json(Joined {
        mesh_id: mesh_id.to_string(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    node: String,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Serialize)]
struct Revoked {
    revoked: String,
}

/// `mesh.revoke` is human-gated: an agent's request becomes an approval.
async fn revoke(
    State(state): State<Arc<BrokerState>>,
    caller: Option<axum::Extension<crate::daemon::credentials::AgentCaller>>,
    operator: Option<axum::Extension<super::scope::Caller>>,
    JsonBody(request): JsonBody<RevokeRequest>,
) -> Result<axum::response::Response, ApiError> {
    let reason = if request.reason.is_empty() {
        "revoked by an operator".to_owned()
    } else {
        request.reason
    };
    // An unknown member is a 404 for everyone, before any approval; the
    // approval names the member by id, which no other member can take.
    let target = state.mesh.member_id(&request.node).map_err(|err| {
        ApiError::new(StatusCode::NOT_FOUND, "UNKNOWN_MEMBER", format!("{err:#}"))
    })?;
    let actor = operator.map_or_else(|| "operator".to_owned(), |caller| caller.actor());
    let gate = crate::daemon::approvals::Gate::MeshRevoke {
        node: target.to_string(),
        reason: reason.clone(),
    };
    super::approvals::gate(&state, caller, gate, || async {
        let revoked = state.mesh.revoke(target.as_str(), &reason).map_err(|err| {
            ApiError::new(StatusCode::NOT_FOUND, "UNKNOWN_MEMBER", format!("{err:#}"))
        })?;
        let detail = serde_json::json!({ "reason": reason, "node": state.node_id });
        super::audit::record(&state, actor, "mesh_revoke", revoked.as_str(), detail).await;
        Ok(Revoked {
            revoked: revoked.to_string(),
        })
    })
    .await
}
