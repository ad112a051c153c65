//! The local HTTP surface on `127.0.0.1:$PORT`.
//!
//! Code map: [`error`] is the JSON error shape; [`health`] answers
//! `GET /health` without a token; [`hello`] answers `GET /v1/hello` without
//! a token, proving the broker holds it; [`agents`] serves `/v1/agents`;
//! [`mesh`] serves `/v1/peers` and `/v1/mesh…`; [`inbox`] serves
//! `/v1/inbox`; [`usage`] serves
//! `/v1/usage`; [`checkpoints`] serves `/v1/checkpoints…`; [`workspaces`]
//! serves `/v1/workspaces/remove`; [`tokens`] serves
//! `/v1/tokens`; [`audit`] serves `/v1/audit`; [`scope`] classifies every
//! route by the scope it needs; [`runtime`] serves the local
//! runtime's `/agents…` and `/ws/…` at the root; [`serve`] is the accept
//! loop (timeouts, connection cap). Every route but `/health` and
//! `/v1/hello` sits behind the bearer-token check in [`require_token`];
//! every request, before that, passes [`require_local_origin`]. [`web`]
//! serves the page at `/` and its login, whose session cookie
//! [`require_token`] accepts next to the token.
//!
//! Architecture invariant: the server only ever binds a loopback address;
//! it answers only requests whose `Host` names the loopback on its port and
//! whose `Origin`, when present, is a loopback page on its port (so a web
//! page cannot reach it through DNS rebinding or a cross-site WebSocket);
//! the token is checked on every route but `/health` and `/v1/hello`.

pub mod agents;
pub mod approvals;
pub mod audit;
pub mod checkpoints;
pub mod error;
pub mod health;
pub mod hello;
pub mod inbox;
pub mod invocations;
pub mod mesh;
pub mod runtime;
pub mod scope;
pub mod serve;
pub mod terminal_relay;
pub mod tokens;
pub mod usage;
pub mod web;
pub mod work_orders;
pub mod workspaces;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use tokio::net::TcpListener;

use crate::daemon::BrokerState;
use error::ApiError;

/// Largest request body accepted, in bytes: every request of this API is a
/// small JSON document; anything bigger is a mistake or an attack.
pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;

/// The port the server listens on, for handlers that need it (the hello
/// proof covers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedPort(pub u16);

/// The router of the whole surface, served on `port` (the bound one, never
/// 0): requests must name it in `Host` and `Origin`.
pub fn router(state: Arc<BrokerState>, port: u16) -> Router {
    let protected = Router::new()
        .nest(
            "/v1",
            agents::routes()
                .merge(approvals::routes())
                .merge(mesh::routes())
                .merge(invocations::routes())
                .merge(inbox::routes())
                .merge(usage::routes())
                .merge(web::routes())
                .merge(work_orders::routes())
                .merge(checkpoints::routes())
                .merge(workspaces::routes())
                .merge(tokens::routes())
                .merge(audit::routes()),
        )
        .merge(runtime::routes())
        .merge(terminal_relay::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(health::routes())
        .merge(hello::routes())
        .merge(web::public_routes())
        .merge(protected)
        .fallback(|request: Request| async move { ApiError::no_route(request.uri().path()) })
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .layer(Extension(ServedPort(port)))
        .layer(Extension(Arc::new(web::WebSessions::default())))
        // Outermost, so it runs before routing, the token and the body.
        .layer(middleware::from_fn_with_state(
            ServedPort(port),
            require_local_origin,
        ))
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

/// Rejects a request whose `Host` is not the loopback on this port
/// (`FORBIDDEN_HOST`) or that carries an `Origin` other than a loopback page
/// on this port (`FORBIDDEN_ORIGIN`). A web page the user visits can make
/// the browser send requests here: with DNS rebinding under its own host
/// name, or directly, as a cross-site WebSocket. The browser always sends
/// the page's host name and origin, and the page cannot change them.
async fn require_local_origin(
    State(ServedPort(port)): State<ServedPort>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let mut hosts = headers.get_all(HOST).iter();
    let host_ok = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().is_ok_and(|host| is_local_host(host, port)),
        _ => false,
    };
    // An absolute-form target (`GET http://host/...`) names a host too.
    let authority_ok = request
        .uri()
        .authority()
        .is_none_or(|authority| is_local_host(authority.as_str(), port));
    if !host_ok || !authority_ok {
        return ApiError::forbidden_host(port).into_response();
    }
    let origin_ok = headers.get_all(ORIGIN).iter().all(|origin| {
        origin
            .to_str()
            .is_ok_and(|origin| is_local_origin(origin, port))
    });
    if !origin_ok {
        return ApiError::forbidden_origin(port).into_response();
    }
    next.run(request).await
}

/// The loopback names a local client may use, each with the port.
const LOCAL_HOST_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Whether `host` (a `Host` header or URI authority) is a loopback name
/// with `port`. Without a port it names port 80, so it passes only there.
fn is_local_host(host: &str, port: u16) -> bool {
    let (name, host_port) = match host.rsplit_once(':') {
        Some((name, text)) if !name.is_empty() && !text.contains(']') => (name, text.parse().ok()),
        _ => (host, Some(80)),
    };
    host_port == Some(port)
        && LOCAL_HOST_NAMES
            .iter()
            .any(|local| name.eq_ignore_ascii_case(local))
}

/// Whether `origin` is `http://` a loopback name with `port`.
fn is_local_origin(origin: &str, port: u16) -> bool {
    let scheme = "http://";
    origin.len() > scheme.len()
        && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
        && is_local_host(&origin[scheme.len()..], port)
}

/// Rejects requests without the broker's bearer token, a live agent
/// credential, a live created token or a live browser session cookie
/// (`UNAUTHORIZED`), then checks the caller's scope against the route's
/// class in [`scope::ROUTE_CLASSES`] (`FORBIDDEN_SCOPE`, naming the scope
/// needed). The operator token and browser sessions are `operator`; agent
/// credentials are `agent`; created tokens carry their own scope. Every
/// request that passes carries a [`scope::Caller`] extension; an
/// agent-scope caller also carries the
/// [`AgentCaller`](crate::daemon::credentials::AgentCaller) the handlers
/// already read. A cookie is sent by the browser on its own, so a cookie
/// request that changes state or opens a WebSocket must also carry
/// `Origin` (`ORIGIN_REQUIRED`); [`require_local_origin`] has already
/// checked that an `Origin` present is this page's.
async fn require_token(
    State(state): State<Arc<BrokerState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let found = match presented_token(&request) {
        Some(token) => authenticate_token(&state, &token).await,
        None => session_caller(&state, &request).map(|caller| (caller, None)),
    };
    let (caller, minted) = match found {
        Ok(found) => found,
        Err(err) => return err.into_response(),
    };
    // The route template axum matched, the nesting included; the class
    // table is keyed by it, so no path is parsed twice.
    let template = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |matched| matched.as_str().to_owned(),
        );
    let class = scope::classify(request.method(), &template);
    if !class.admits(caller.scope) {
        return ApiError::forbidden_scope(class.needed(), request.method().as_str(), &template)
            .into_response();
    }
    if caller.scope == scope::Scope::Agent
        && let Some(instance) = caller.agent.clone()
    {
        // A minted credential knows the invocation its session runs; a
        // created agent token runs none.
        let agent = minted.unwrap_or(crate::daemon::credentials::AgentCaller {
            instance,
            invocation: None,
        });
        request.extensions_mut().insert(agent);
    }
    // A gated action the operator runs directly is audited here, in one
    // place for every gated route; an agent's request for one becomes an
    // approval request, which the approvals audit. Token creation audits
    // itself, with the token's scope and agent.
    let audit_gated = class == scope::RouteClass::Gated
        && caller.scope == scope::Scope::Operator
        && template != "/v1/tokens";
    let actor = caller.actor();
    let method = request.method().as_str().to_owned();
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| request.uri().path(), |original| original.0.path())
        .to_owned();
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    if audit_gated && response.status().is_success() {
        let detail = serde_json::json!({
            "method": method,
            "route": template,
            "status": response.status().as_u16(),
            "node": state.node_id,
        });
        audit::record(&state, actor, "gated_action", &path, detail).await;
    }
    response
}

/// The bearer token a request presents, in `Authorization` or (for the
/// requests that cannot set it) the query.
fn presented_token(request: &Request) -> Option<String> {
    let from_header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|token| token.trim().to_owned());
    from_header.or_else(|| query_token(request))
}

/// The [`scope::Caller`] a presented token makes (with the minted
/// credential's [`AgentCaller`] when it is one), or `UNAUTHORIZED`.
///
/// [`AgentCaller`]: crate::daemon::credentials::AgentCaller
async fn authenticate_token(
    state: &Arc<BrokerState>,
    token: &str,
) -> Result<
    (
        scope::Caller,
        Option<crate::daemon::credentials::AgentCaller>,
    ),
    ApiError,
> {
    if constant_time_eq(token.as_bytes(), state.token.as_bytes()) {
        return Ok((scope::Caller::operator(), None));
    }
    if let Some(agent) = state.credentials.caller(token) {
        let caller = scope::Caller {
            kind: scope::CallerKind::Agent,
            token_id: None,
            scope: scope::Scope::Agent,
            agent: Some(agent.instance.clone()),
        };
        return Ok((caller, Some(agent)));
    }
    Ok((tokens::check_created(state, token).await?, None))
}

/// The caller of a request without a token: a live browser session, or
/// `UNAUTHORIZED`.
fn session_caller(state: &BrokerState, request: &Request) -> Result<scope::Caller, ApiError> {
    let session_id = match (
        request.extensions().get::<Arc<web::WebSessions>>(),
        request.extensions().get::<ServedPort>(),
    ) {
        (Some(sessions), Some(ServedPort(port))) => web::session_cookie(request.headers(), *port)
            .and_then(|cookie| sessions.check_id(&cookie, state.env.now_unix_ms())),
        _ => None,
    };
    let Some(session_id) = session_id else {
        return Err(ApiError::unauthorized());
    };
    let safe = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) && !request.headers().contains_key(axum::http::header::UPGRADE);
    if !safe && !request.headers().contains_key(ORIGIN) {
        return Err(ApiError::origin_required());
    }
    Ok(scope::Caller {
        kind: scope::CallerKind::Session,
        token_id: Some(session_id),
        scope: scope::Scope::Operator,
        agent: None,
    })
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
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_on_the_port_are_local_hosts() {
        for host in [
            "localhost:3100",
            "LOCALHOST:3100",
            "127.0.0.1:3100",
            "[::1]:3100",
        ] {
            assert!(is_local_host(host, 3100), "{host}");
        }
        for host in [
            "evil.example:3100",
            "localhost:3101",
            "localhost",
            "127.0.0.1",
            "[::1]",
            "::1:3100",
            "localhost.:3100",
            "127.0.0.2:3100",
            "localhost:3100@evil",
            ":3100",
            "",
        ] {
            assert!(!is_local_host(host, 3100), "{host}");
        }
        assert!(is_local_host("localhost", 80));
        assert!(is_local_host("[::1]", 80));
    }

    #[test]
    fn only_loopback_pages_on_the_port_are_local_origins() {
        for origin in [
            "http://localhost:3100",
            "http://127.0.0.1:3100",
            "http://[::1]:3100",
        ] {
            assert!(is_local_origin(origin, 3100), "{origin}");
        }
        for origin in [
            "https://localhost:3100",
            "http://evil.example:3100",
            "http://localhost:3100/",
            "http://localhost:3101",
            "null",
            "http://",
            "",
        ] {
            assert!(!is_local_origin(origin, 3100), "{origin}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
