//! Who may call which route: the [`Scope`] of a caller, the [`Caller`]
//! behind an authenticated request, and [`ROUTE_CLASSES`], the one table
//! that classifies every route of the HTTP surface.
//!
//! Scopes are ordered: `read` < `agent` < `operator`. A `read` caller may
//! only use the GET routes that read; an `agent` caller may also send,
//! ask and queue work; the operator (the home's token, a browser session,
//! an operator-scope token) may do everything. The human-gated actions
//! ([`RouteClass::Gated`]) are the operator's; an `agent` caller passes
//! through to the handler, which decides what its request becomes, and a
//! `read` caller is refused.
//!
//! The middleware in [`super::require_token`] looks a request up by the
//! route template axum matched ([`axum::extract::MatchedPath`]), never by
//! re-parsing the path, so the table and the router cannot disagree about
//! which route a request hit. A route missing from the table needs the
//! operator (fail closed), and a unit test fails until it is classified.

use std::fmt;

use axum::http::Method;
use serde::{Deserialize, Serialize};

/// How much a caller may do; each scope includes the ones below it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Reads: agents, peers, invocations, work orders, usage.
    Read,
    /// What an agent does: reads, sends, asks, queues work orders.
    Agent,
    /// Everything, the human-gated actions included.
    Operator,
}

impl Scope {
    /// The word used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Agent => "agent",
            Scope::Operator => "operator",
        }
    }

    /// The scope a stored or sent word names.
    pub fn parse(word: &str) -> Option<Scope> {
        match word {
            "read" => Some(Scope::Read),
            "agent" => Some(Scope::Agent),
            "operator" => Some(Scope::Operator),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// No token at all.
    Public,
    /// A caller of at least this scope.
    Scope(Scope),
    /// A human-gated action: the operator does it; an `agent` caller
    /// reaches the handler (which turns the request into an approval
    /// request); a `read` caller is refused.
    Gated,
}

impl RouteClass {
    /// Whether a caller of `scope` gets past the check.
    pub fn admits(self, scope: Scope) -> bool {
        match self {
            RouteClass::Public => true,
            RouteClass::Scope(needed) => scope >= needed,
            RouteClass::Gated => scope >= Scope::Agent,
        }
    }

    /// The scope to name in a refusal.
    pub fn needed(self) -> Scope {
        match self {
            RouteClass::Public => Scope::Read,
            RouteClass::Scope(needed) => needed,
            RouteClass::Gated => Scope::Operator,
        }
    }

    /// The word the documentation table uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Public => "public",
            RouteClass::Scope(scope) => scope.as_str(),
            RouteClass::Gated => "gated",
        }
    }
}

const READ: RouteClass = RouteClass::Scope(Scope::Read);
const AGENT: RouteClass = RouteClass::Scope(Scope::Agent);
const OPERATOR: RouteClass = RouteClass::Scope(Scope::Operator);
const PUBLIC: RouteClass = RouteClass::Public;
const GATED: RouteClass = RouteClass::Gated;

/// Every route of the surface: method, the path template as the router
/// spells it (the `/v1` nesting included), and its class. The page's
/// assets (`web::ASSETS`) are public and listed there, not here.
pub const ROUTE_CLASSES: &[(&str, &str, RouteClass)] = &[
    // No token.
    ("GET", "/health", PUBLIC),
    ("GET", "/v1/hello", PUBLIC),
    ("GET", "/login", PUBLIC),
    // Reads.
    ("GET", "/v1/agents", READ),
    ("GET", "/v1/peers", READ),
    ("GET", "/v1/invocations/{id}", READ),
    ("GET", "/v1/invocations/{id}/stream", READ),
    ("GET", "/v1/flights", READ),
    ("GET", "/v1/conversations", READ),
    ("GET", "/v1/conversations/{id}", READ),
    ("GET", "/v1/inbox", READ),
    ("GET", "/v1/work-orders", READ),
    ("GET", "/v1/work-orders/{id}", READ),
    ("GET", "/v1/audit/verify", READ),
    ("GET", "/v1/approvals", READ),
    ("GET", "/v1/approvals/stream", READ),
    ("GET", "/v1/approvals/rules", READ),
    ("GET", "/v1/approvals/{id}", READ),
    ("GET", "/v1/approvals/{id}/wait", READ),
    // What agents do: send, ask, queue work.
    ("POST", "/v1/invocations", AGENT),
    ("POST", "/v1/work-orders", AGENT),
    ("POST", "/v1/work-orders/run-now", AGENT),
    ("POST", "/v1/approvals", AGENT),
    // The agent that asked for an operator token picks it up once a
    // person approved; its handler refuses every other caller.
    ("POST", "/v1/approvals/{id}/token", AGENT),
    // A checkpoint is read like the flight it preceded.
    ("GET", "/v1/checkpoints", READ),
    ("GET", "/v1/checkpoints/{id}", READ),
    ("GET", "/v1/checkpoints/{id}/diff", READ),
    // The operator's: terminals, mesh membership, sessions, tokens, audit.
    // Some of these only read, but what they show (every event, costs,
    // terminal sessions, the mesh's addresses) is more than an agent
    // needs, and `read` is below `agent`, so they stay the operator's.
    ("GET", "/v1/mesh", OPERATOR),
    ("GET", "/v1/events/stream", OPERATOR),
    ("GET", "/v1/usage", OPERATOR),
    ("GET", "/v1/web/live", OPERATOR),
    ("GET", "/agents", OPERATOR),
    ("GET", "/agents/{id}", OPERATOR),
    ("GET", "/ws/events", OPERATOR),
    ("POST", "/agents", OPERATOR),
    ("POST", "/agents/{id}/send", OPERATOR),
    ("POST", "/agents/{id}/take", OPERATOR),
    ("POST", "/agents/{id}/release", OPERATOR),
    ("GET", "/agents/{id}/logs", OPERATOR),
    ("GET", "/agents/{id}/stream", OPERATOR),
    ("GET", "/ws/agents/{id}/terminal", OPERATOR),
    ("GET", "/ws/mesh/agents/{instance}/terminal", OPERATOR),
    ("POST", "/v1/mesh/invites", OPERATOR),
    ("POST", "/v1/mesh/join", OPERATOR),
    ("POST", "/v1/web/codes", OPERATOR),
    ("GET", "/v1/web/sessions", OPERATOR),
    ("POST", "/v1/web/sessions/{id}/revoke", OPERATOR),
    ("POST", "/v1/web/logout", OPERATOR),
    ("GET", "/v1/tokens", OPERATOR),
    ("POST", "/v1/tokens/{id}/revoke", OPERATOR),
    ("GET", "/v1/audit", OPERATOR),
    ("POST", "/v1/approvals/{id}/approve", OPERATOR),
    ("POST", "/v1/approvals/{id}/deny", OPERATOR),
    ("POST", "/v1/approvals/rules/{id}/remove", OPERATOR),
    // Human-gated actions. `POST /v1/tokens` is gated only when an agent
    // asks for an operator token (a person approves, and the agent picks
    // the token up once through the approval); its handler refuses any
    // other caller a scope above its own.
    ("POST", "/v1/work-orders/{id}/cancel", GATED),
    ("POST", "/v1/invocations/{id}/cancel", GATED),
    ("POST", "/v1/mesh/revoke", GATED),
    ("DELETE", "/agents/{id}", GATED),
    ("POST", "/v1/checkpoints/{id}/restore", GATED),
    ("POST", "/v1/workspaces/remove", GATED),
    ("POST", "/v1/tokens", GATED),
];

/// The class of the route `template` (as matched) answering `method`;
/// HEAD is classified as the GET it mirrors. An unclassified route needs
/// the operator.
pub fn classify(method: &Method, template: &str) -> RouteClass {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTE_CLASSES
        .iter()
        .find(|(route_method, path, _)| *route_method == method && *path == template)
        .map_or(OPERATOR, |(_, _, class)| *class)
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerKind {
    /// The operator token in the broker's home.
    Operator,
    /// A browser session cookie.
    Session,
    /// A token made with `scout tokens create`.
    Token,
    /// A credential the broker minted for an agent session it spawned.
    Agent,
}

/// Who made an authenticated request; every request behind the token
/// check carries one as an extension, so handlers and the audit can name
/// the actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// How it authenticated.
    pub kind: CallerKind,
    /// The created token's id, or the browser session's.
    pub token_id: Option<String>,
    /// What it may do.
    pub scope: Scope,
    /// The agent instance it acts as (minted credentials and agent-scope
    /// tokens).
    pub agent: Option<String>,
}

impl Caller {
    /// The operator, by the home's token.
    pub fn operator() -> Caller {
        Caller {
            kind: CallerKind::Operator,
            token_id: None,
            scope: Scope::Operator,
            agent: None,
        }
    }

    /// The actor as the audit log names it: `operator`, `session:<id>`,
    /// `token:<id>`, or `agent:<instance>` (with the token id when an
    /// agent acts through a created token).
    pub fn actor(&self) -> String {
        let token = self.token_id.as_deref().unwrap_or("?");
        match (self.kind, self.agent.as_deref()) {
            (CallerKind::Operator, _) => "operator".to_owned(),
            (CallerKind::Session, _) => format!("session:{token}"),
            (CallerKind::Token, Some(agent)) => format!("agent:{agent} token:{token}"),
            (CallerKind::Token, None) => format!("token:{token}"),
            (CallerKind::Agent, agent) => format!("agent:{}", agent.unwrap_or("?")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefix each file's router is mounted under in `super::router`.
    /// A file of `src/http` that registers routes and is missing here
    /// fails the test, so a new route family cannot go unclassified.
    const ROUTE_PREFIXES: &[(&str, &str)] = &[
        ("agents.rs", "/v1"),
        ("health.rs", ""),
        ("hello.rs", ""),
        ("inbox.rs", "/v1"),
        ("invocations.rs", "/v1"),
        ("mesh.rs", "/v1"),
        ("runtime.rs", ""),
        ("terminal_relay.rs", ""),
        ("usage.rs", "/v1"),
        ("work_orders.rs", "/v1"),
        ("tokens.rs", "/v1"),
        ("audit.rs", "/v1"),
        ("approvals.rs", "/v1"),
        ("checkpoints.rs", "/v1"),
        ("workspaces.rs", "/v1"),
        ("web.rs", "/v1"),
    ];

    /// Every `.rs` file under `src/http`, with its text.
    fn route_files() -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
        let mut files = Vec::new();
        let mut pending = vec![dir];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|ext| ext == "rs") {
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    files.push((name, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        files
    }

    /// Routes whose path is not a string literal in the source, as the
    /// router serves them.
    const NON_LITERAL_ROUTES: &[(&str, &str)] = &[("GET", "/v1/hello")];

    /// Every `(method, path)` the source registers with `.route(`.
    fn registered_routes() -> Vec<(String, String)> {
        let mut routes = Vec::new();
        for (file, source) in route_files() {
            // This file's own test text mentions `.route(`.
            if file == "scope.rs" || !source.contains(".route(") {
                continue;
            }
            let prefix = ROUTE_PREFIXES
                .iter()
                .find(|(name, _)| *name == file)
                .map(|(_, prefix)| *prefix)
                .unwrap_or_else(|| {
                    panic!("src/http/{file} registers routes: add it to ROUTE_PREFIXES")
                });
            for (idx, _) in source.match_indices(".route(") {
                let rest = &source[idx + ".route(".len()..];
                // The route's text runs to the end of its statement line.
                let line = rest.lines().next().unwrap_or_default();
                let Some(literal) = line.strip_prefix('"') else {
                    // `web.rs` registers its assets from a variable (they
                    // are public through `web::ASSETS`), `hello.rs` its path
                    // from a constant (in `NON_LITERAL_ROUTES`).
                    assert!(
                        (file == "web.rs" && line.starts_with("path,"))
                            || (file == "hello.rs" && line.starts_with("HELLO_PATH,")),
                        "{file}: a route with a non-literal path: {line}"
                    );
                    continue;
                };
                let path = literal.split('"').next().unwrap_or_default();
                let full = if path == "/login" {
                    path.to_owned()
                } else {
                    format!("{prefix}{path}")
                };
                let methods: Vec<&str> = ["get(", "post(", "delete(", "put(", "patch("]
                    .into_iter()
                    .filter(|method| line.contains(method))
                    .collect();
                assert!(!methods.is_empty(), "{file}: no method on {line}");
                for method in methods {
                    let method = method.trim_end_matches('(').to_ascii_uppercase();
                    routes.push((method, full.clone()));
                }
            }
        }
        for (method, path) in NON_LITERAL_ROUTES {
            routes.push(((*method).to_owned(), (*path).to_owned()));
        }
        routes
    }

    #[test]
    fn every_registered_route_is_classified() {
        let routes = registered_routes();
        assert!(routes.len() > 40, "found only {} routes", routes.len());
        for (method, path) in &routes {
            assert!(
                ROUTE_CLASSES
                    .iter()
                    .any(|(m, p, _)| m == method && p == path),
                "{method} {path} has no entry in ROUTE_CLASSES"
            );
        }
        // And the other way: the table names no route that is gone.
        for (method, path, _) in ROUTE_CLASSES {
            assert!(
                routes.iter().any(|(m, p)| m == method && p == path),
                "{method} {path} is classified but not registered"
            );
        }
    }

    #[test]
    fn read_scope_only_reads() {
        for (method, path, class) in ROUTE_CLASSES {
            if class.admits(Scope::Read) && *class != RouteClass::Public {
                assert_eq!(*method, "GET", "{path}");
            }
        }
    }

    #[test]
    fn scopes_are_ordered_and_gates_admit_agents_not_readers() {
        assert!(Scope::Read < Scope::Agent && Scope::Agent < Scope::Operator);
        assert!(GATED.admits(Scope::Agent));
        assert!(!GATED.admits(Scope::Read));
        assert_eq!(GATED.needed(), Scope::Operator);
        assert_eq!(
            classify(&Method::POST, "/v1/invocations"),
            RouteClass::Scope(Scope::Agent)
        );
        assert_eq!(classify(&Method::HEAD, "/v1/agents"), READ);
        assert_eq!(classify(&Method::GET, "/v1/not-a-route"), OPERATOR);
        for (method, path) in [
            (Method::GET, "/v1/agents"),
            (Method::POST, "/v1/invocations"),
            (Method::GET, "/v1/invocations/{id}/stream"),
            (Method::POST, "/v1/work-orders/run-now"),
        ] {
            assert!(classify(&method, path).admits(Scope::Agent), "{path}");
        }
        for (method, path) in [
            (Method::POST, "/agents"),
            (Method::POST, "/v1/mesh/invites"),
            (Method::GET, "/v1/tokens"),
            (Method::GET, "/v1/audit"),
        ] {
            assert!(!classify(&method, path).admits(Scope::Agent), "{path}");
        }
    }
}
