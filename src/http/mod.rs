//! The local HTTP surface on `127.0.0.1:$PORT`.
//!
//! Code map: [`error`] is the JSON error shape; [`health`] answers
//! `GET /health` without a token; [`agents`] serves `/v1/agents`; [`mesh`]
//! serves `/v1/peers` and `/v1/mesh…`; [`runtime`] serves the local
//! runtime's `/agents…` and `/ws/…` at the root. Every route
//! but `/health` sits behind the bearer-token check in [`require_token`].
//!
//! Architecture invariant: the server only ever binds a loopback address; the
//! token is checked on every route but `/health`.

pub mod agents;
pub mod error;
pub mod health;
pub mod invocations;
pub mod mesh;
pub mod runtime;
pub mod work_orders;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use crate::daemon::BrokerState;
use error::ApiError;

/// Largest request body accepted, in bytes: every request of this API is a
/// small JSON document; anything bigger is a mistake or an attack.
pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;

/// The router of the whole surface.
pub fn router(state: Arc<BrokerState>) -> Router {
    let protected = Router::new()
        .nest(
            "/v1",
            agents::routes()
                .merge(mesh::routes())
                .merge(invocations::routes())
                .merge(work_orders::routes()),
        )
        .merge(runtime::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(health::routes())
        .merge(protected)
        .fallback(|request: Request| async move { ApiError::no_route(request.uri().path()) })
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}

/// Binds the loopback listener on `port` (0 picks a free one).
pub async fn bind(port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(addr).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen on {addr}: the port is in use (another broker? set http_port in settings.json or pass --http-port to `scout setup`)"
            )
        } else {
            anyhow::anyhow!("cannot listen on {addr}: {err}")
        }
    })
}

/// Rejects requests without the broker's bearer token.
async fn require_token(
    State(state): State<Arc<BrokerState>>,
    request: Request,
    next: Next,
) -> Response {
    let from_header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|token| token.trim().to_owned());
    let presented = from_header.or_else(|| query_token(&request));
    match presented.as_deref() {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        _ => ApiError::unauthorized().into_response(),
    }
}

/// The `?token=` of a request that cannot carry a header: browsers open
/// WebSockets and `EventSource` streams without letting the page set
/// `Authorization`. Only a GET that is a WebSocket upgrade or asks for an
/// event stream may use it, so no state-changing request is ever authorised
/// by a URL (which ends up in histories and logs).
fn query_token(request: &Request) -> Option<String> {
    use axum::http::header::{ACCEPT, UPGRADE};
    if request.method() != axum::http::Method::GET {
        return None;
    }
    let headers = request.headers();
    let header_has = |name, needle: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.to_ascii_lowercase().contains(needle))
    };
    if !header_has(UPGRADE, "websocket") && !header_has(ACCEPT, "text/event-stream") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    axum::extract::Query::<TokenQuery>::try_from_uri(request.uri())
        .ok()
        .and_then(|query| query.0.token)
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
