//! The web view: the page at `/` and its assets (embedded in the binary,
//! so it works offline), the login by one-time code (`scout open`), the
//! browser sessions it creates, and the live stream the page draws from.
//!
//! Login: `POST /v1/web/codes` (bearer token) issues a code that lives
//! [`LOGIN_CODE_TTL_MS`] and works once; `GET /login?code=` trades it for
//! a session whose cookie is HttpOnly, SameSite=Strict, and named after the
//! port (cookies are scoped by host, not port, so two brokers on one
//! machine keep separate sessions). Sessions expire after
//! [`SESSION_TTL_MS`] and are listed (`GET /v1/web/sessions`) and revoked
//! (`POST /v1/web/sessions/{id}/revoke`). They live in the broker's memory: a
//! restart signs every browser out, which is the safe direction.
//!
//! Security: the page's own requests authenticate with the cookie, checked
//! in `require_token` next to the bearer token; a cookie request that
//! changes state (or opens a WebSocket) must carry a same-origin `Origin`
//! (`ORIGIN_REQUIRED` otherwise), on top of the Host and Origin checks
//! every request passes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, SET_COOKIE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ServedPort;
use super::error::{ApiError, JsonBody, PathId};
use crate::daemon::BrokerState;

/// How long a login code works: long enough to click the printed link,
/// short enough that a code seen in a terminal scrollback is useless.
pub const LOGIN_CODE_TTL_MS: u64 = 60_000;

/// How long a browser session lasts: a working day, after which
/// `scout open` logs in again.
pub const SESSION_TTL_MS: u64 = 12 * 60 * 60 * 1000;

/// Login codes outstanding at most; each `scout open` issues one, so more
/// means something is issuing them in a loop.
pub const LOGIN_CODES_MAX: usize = 64;

/// Browser sessions alive at most; the oldest is dropped past this, so a
/// loop of logins cannot grow the broker's memory.
pub const SESSIONS_MAX: usize = 256;

/// Random bytes in a login code and in a session secret: 128 bits, beyond
/// guessing.
const SECRET_BYTES: usize = 16;

/// How often the live stream looks at the mesh and the agents for a change
/// it is not woken for (peer RTT, last seen, runtime sessions): the
/// browser never polls; the broker compares snapshots and sends only when
/// something changed.
const LIVE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How often an idle live stream sends a comment, so it stays open.
const LIVE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The embedded files of the page: path, content type, bytes.
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("web/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("web/app.js"),
    ),
    (
        "/assets/style.css",
        "text/css; charset=utf-8",
        include_bytes!("web/style.css"),
    ),
    (
        "/assets/vendor/xterm.mjs",
        "text/javascript; charset=utf-8",
        include_bytes!("web/vendor/xterm.mjs"),
    ),
    (
        "/assets/vendor/addon-fit.mjs",
        "text/javascript; charset=utf-8",
        include_bytes!("web/vendor/addon-fit.mjs"),
    ),
    (
        "/assets/vendor/xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("web/vendor/xterm.css"),
    ),
    (
        "/assets/vendor/LICENSE.xterm",
        "text/plain; charset=utf-8",
        include_bytes!("web/vendor/LICENSE.xterm"),
    ),
    (
        "/assets/vendor/LICENSE.addon-fit",
        "text/plain; charset=utf-8",
        include_bytes!("web/vendor/LICENSE.addon-fit"),
    ),
];

/// The page may load only its own scripts, styles and connections: no
/// inline script, nothing from elsewhere.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Outstanding login codes and live browser sessions.
#[derive(Debug, Default)]
pub struct WebSessions {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Code -> when it expires (unix ms).
    codes: HashMap<String, u64>,
    /// Session id -> the session.
    sessions: HashMap<String, WebSession>,
}

#[derive(Debug, Clone)]
struct WebSession {
    secret: String,
    created_ms: u64,
    expires_ms: u64,
    last_used_ms: u64,
}

/// A session as `GET /v1/web/sessions` lists it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionView {
    /// The id, for `POST /v1/web/sessions/{id}/revoke`.
    pub id: String,
    /// When it was created (unix ms).
    pub created_ms: u64,
    /// When it expires (unix ms).
    pub expires_ms: u64,
    /// When a request last used it (unix ms).
    pub last_used_ms: u64,
}

/// A login code as `POST /v1/web/codes` answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginCode {
    /// The code.
    pub code: String,
    /// The URL to visit.
    pub url: String,
    /// How long it works, in milliseconds.
    pub expires_in_ms: u64,
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl WebSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind, still
        // consistent; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Issues a one-time login code.
    pub fn issue_code(&self, now_ms: u64) -> Result<String, ApiError> {
        let mut inner = self.lock();
        inner.codes.retain(|_, expires| *expires > now_ms);
        if inner.codes.len() >= LOGIN_CODES_MAX {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_LOGIN_CODES",
                format!("{LOGIN_CODES_MAX} login codes are outstanding; wait a minute"),
            ));
        }
        let code = random_secret();
        inner.codes.insert(code.clone(), now_ms + LOGIN_CODE_TTL_MS);
        Ok(code)
    }

    /// Trades a code for a new session: `(id, cookie value)`.
    fn redeem(&self, code: &str, now_ms: u64) -> Option<(String, String)> {
        let mut inner = self.lock();
        let expires = inner.codes.remove(code)?;
        if expires <= now_ms {
            return None;
        }
        inner
            .sessions
            .retain(|_, session| session.expires_ms > now_ms);
        if inner.sessions.len() >= SESSIONS_MAX {
            let oldest = inner
                .sessions
                .iter()
                .min_by_key(|(_, session)| session.created_ms)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                inner.sessions.remove(&oldest);
            }
        }
        let id = random_secret()[..12].to_owned();
        let secret = random_secret();
        inner.sessions.insert(
            id.clone(),
            WebSession {
                secret: secret.clone(),
                created_ms: now_ms,
                expires_ms: now_ms + SESSION_TTL_MS,
                last_used_ms: now_ms,
            },
        );
        Some((id.clone(), format!("{id}.{secret}")))
    }

    /// Whether a cookie value names a live session (and marks it used).
    pub fn check(&self, cookie: &str, now_ms: u64) -> bool {
        self.check_id(cookie, now_ms).is_some()
    }

    /// The id of the live session a cookie value names (marked used).
    pub fn check_id(&self, cookie: &str, now_ms: u64) -> Option<String> {
        let (id, secret) = cookie.split_once('.')?;
        let mut inner = self.lock();
        let session = inner.sessions.get_mut(id)?;
        if session.expires_ms <= now_ms {
            inner.sessions.remove(id);
            return None;
        }
        if !super::constant_time_eq(secret.as_bytes(), session.secret.as_bytes()) {
            return None;
        }
        session.last_used_ms = now_ms;
        Some(id.to_owned())
    }

    /// The live sessions, oldest first.
    pub fn list(&self, now_ms: u64) -> Vec<SessionView> {
        let mut inner = self.lock();
        inner
            .sessions
            .retain(|_, session| session.expires_ms > now_ms);
        let mut views: Vec<SessionView> = inner
            .sessions
            .iter()
            .map(|(id, session)| SessionView {
                id: id.clone(),
                created_ms: session.created_ms,
                expires_ms: session.expires_ms,
                last_used_ms: session.last_used_ms,
            })
            .collect();
        views.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        views
    }

    /// Ends a session; whether it existed.
    pub fn revoke(&self, id: &str) -> bool {
        self.lock().sessions.remove(id).is_some()
    }
}

/// The cookie's name on `port`.
pub fn cookie_name(port: u16) -> String {
    format!("scout_session_{port}")
}

/// The session cookie of a request, if it carries one for `port`.
pub fn session_cookie(headers: &HeaderMap, port: u16) -> Option<String> {
    let name = cookie_name(port);
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Routes that need no token: the page, its assets, and the login.
pub fn public_routes() -> Router<Arc<BrokerState>> {
    let mut router = Router::new().route("/login", get(login));
    for (path, _, _) in ASSETS {
        router = router.route(path, get(asset));
    }
    router
}

/// Routes behind the token check (mounted under `/v1`).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/web/codes", post(issue_code))
        .route("/web/sessions", get(list_sessions))
        .route("/web/sessions/{id}/revoke", post(revoke_session))
        .route("/web/logout", post(logout))
        .route("/web/live", get(live))
}

async fn asset(uri: axum::http::Uri) -> Response {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(path, _, _)| *path == uri.path())
    else {
        return ApiError::no_route(uri.path()).into_response();
    };
    let mut response = (*bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary; a browser asks again each load
    // (they are local, so that is cheap) and never runs a stale page.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    code: Option<String>,
}

async fn login(
    State(state): State<Arc<BrokerState>>,
    Extension(sessions): Extension<Arc<WebSessions>>,
    Extension(ServedPort(port)): Extension<ServedPort>,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let code = query.ok().and_then(|Query(query)| query.code);
    let now = state.env.now_unix_ms();
    let Some((_, cookie)) = code.and_then(|code| sessions.redeem(&code, now)) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "LOGIN_CODE_INVALID",
            "this login code is unknown, used or expired (codes work once, for 60 seconds); run `scout open` again",
        )
        .into_response();
    };
    let max_age = SESSION_TTL_MS / 1000;
    let set_cookie = format!(
        "{}={cookie}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}",
        cookie_name(port)
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&set_cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

/// The body of the POST routes here: an empty object, as every POST of
/// the API takes a JSON object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

async fn issue_code(
    State(state): State<Arc<BrokerState>>,
    Extension(sessions): Extension<Arc<WebSessions>>,
    Extension(ServedPort(port)): Extension<ServedPort>,
    JsonBody(EmptyBody {}): JsonBody<EmptyBody>,
) -> Result<Json<LoginCode>, ApiError> {
    let code = sessions.issue_code(state.env.now_unix_ms())?;
    Ok(Json(LoginCode {
        url: format!("http://127.0.0.1:{port}/login?code={code}"),
        code,
        expires_in_ms: LOGIN_CODE_TTL_MS,
    }))
}

async fn list_sessions(
    State(state): State<Arc<BrokerState>>,
    Extension(sessions): Extension<Arc<WebSessions>>,
) -> Json<serde_json::Value> {
    Json(json!({ "sessions": sessions.list(state.env.now_unix_ms()) }))
}

async fn revoke_session(
    Extension(sessions): Extension<Arc<WebSessions>>,
    PathId(id): PathId,
    JsonBody(EmptyBody {}): JsonBody<EmptyBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if sessions.revoke(&id) {
        Ok(Json(json!({ "revoked": id })))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "SESSION_NOT_FOUND",
            format!("no browser session `{id}` (see `scout open --list`)"),
        ))
    }
}

async fn logout(
    Extension(sessions): Extension<Arc<WebSessions>>,
    Extension(ServedPort(port)): Extension<ServedPort>,
    headers: HeaderMap,
    JsonBody(EmptyBody {}): JsonBody<EmptyBody>,
) -> Response {
    if let Some(cookie) = session_cookie(&headers, port)
        && let Some((id, _)) = cookie.split_once('.')
    {
        sessions.revoke(id);
    }
    let clear = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        cookie_name(port)
    );
    let mut response = Json(json!({ "loggedOut": true })).into_response();
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

/// One snapshot of what the Mesh and Agents pages show.
fn snapshot(state: &BrokerState) -> serde_json::Value {
    let agents: Vec<_> = state
        .agents
        .read()
        .map(|agents| {
            agents
                .iter()
                .map(|agent| agent.view(&state.node_name))
                .collect()
        })
        .unwrap_or_default();
    let runtime = state.runtime.list();
    json!({
        "nodeId": state.node_id,
        "nodeName": state.node_name.as_str(),
        "meshId": state.mesh.mesh_id().to_string(),
        "peers": state.mesh.peers(),
        "addresses": state.mesh.addresses(),
        "announced": state.mesh.announced().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "agents": agents,
        "instances": state.mesh.instances(),
        "runtime": runtime,
        // The page's one stream carries the approvals too: a browser keeps
        // six connections per host, so a second stream per page would
        // leave three tabs of the view stalled.
        "approvals": state.approvals.list().unwrap_or_default(),
    })
}

/// `GET /v1/web/live`: an SSE stream of `snapshot` events, one at once and
/// one whenever the mesh or the agents change.
async fn live(
    State(state): State<Arc<BrokerState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(1);
    let mut changes = state.mesh.subscribe_changes();
    let mut approvals = state.approvals.subscribe();
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            let state = state.clone();
            let text = match tokio::task::spawn_blocking(move || snapshot(&state).to_string()).await
            {
                Ok(text) => text,
                Err(_) => return,
            };
            if text != last {
                if tx
                    .send(Event::default().event("snapshot").data(text.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
                last = text;
            }
            // A registry change (an agent added, its state) is pushed at
            // once; peer measures (RTT, last seen) at the interval.
            tokio::select! {
                changed = changes.changed() => {
                    // The mesh has shut down: so is the broker.
                    if changed.is_err() {
                        return;
                    }
                }
                // An approved action's outcome is this broker's own.
                changed = approvals.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(LIVE_CHECK_INTERVAL) => {}
                () = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(LIVE_KEEP_ALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page weight a browser downloads: every embedded asset, gzipped.
    fn page_weight_gzip() -> usize {
        use std::io::Write;
        ASSETS
            .iter()
            .map(|(_, _, bytes)| {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                // Writing to a Vec cannot fail.
                let _ = encoder.write_all(bytes);
                encoder.finish().map(|out| out.len()).unwrap_or(bytes.len())
            })
            .sum()
    }

    /// The page stays light: every embedded asset gzipped weighs no more
    /// than this.
    const PAGE_WEIGHT_GZIP_MAX: usize = 500 * 1024;

    #[test]
    fn page_weight_is_at_most_500_kb_gzipped() {
        let weight = page_weight_gzip();
        assert!(
            weight <= PAGE_WEIGHT_GZIP_MAX,
            "page weighs {weight} bytes gzipped"
        );
    }

    #[test]
    fn a_code_works_once_and_not_after_it_expires() {
        let sessions = WebSessions::default();
        let code = sessions.issue_code(1_000).unwrap();
        let (_, cookie) = sessions.redeem(&code, 2_000).unwrap();
        assert!(sessions.check(&cookie, 3_000));
        assert!(sessions.redeem(&code, 2_000).is_none());
        let late = sessions.issue_code(1_000).unwrap();
        assert!(sessions.redeem(&late, 1_000 + LOGIN_CODE_TTL_MS).is_none());
    }

    #[test]
    fn sessions_expire_and_are_revoked() {
        let sessions = WebSessions::default();
        let code = sessions.issue_code(0).unwrap();
        let (id, cookie) = sessions.redeem(&code, 0).unwrap();
        assert_eq!(sessions.list(1).len(), 1);
        assert!(!sessions.check(&format!("{id}.wrong"), 1));
        assert!(!sessions.check(&cookie, SESSION_TTL_MS));
        let code = sessions.issue_code(0).unwrap();
        let (id, cookie) = sessions.redeem(&code, 0).unwrap();
        assert!(sessions.revoke(&id));
        assert!(!sessions.check(&cookie, 1));
        assert!(!sessions.revoke(&id));
    }

    #[test]
    fn the_cookie_is_found_by_its_port() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=b; scout_session_3101=x.y; scout_session_3100=id.secret"),
        );
        assert_eq!(session_cookie(&headers, 3100).as_deref(), Some("id.secret"));
        assert_eq!(session_cookie(&headers, 3102), None);
    }
}
