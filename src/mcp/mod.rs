//! `scout mcp`: a Model Context Protocol server over stdio, so the agents
//! themselves can mention each other through Scout. It is a client of the
//! local broker's HTTP API and so reaches the whole mesh.
//!
//! Code map: [`server`] is the MCP handler (tool dispatch, `whoami`,
//! `agents`, `resolve`, `send`, `inbox`, `reply`, `work_orders`, `peers`);
//! [`flight`] waits for invocations (`ask`, `invocation`) and turns their
//! events into MCP progress notifications; [`resources`] serves agent cards
//! and recent conversations; [`tools`] is the catalogue (descriptions, JSON
//! schemas, typed arguments); [`error`] is the one error shape, a tool
//! result carrying a stable code; [`broker`] runs the CLI's HTTP client off
//! the async workers.
//!
//! Identity: when Scout runs an agent it sets `SCOUT_AGENT` (the instance
//! name), `SCOUT_URL` (the broker's HTTP base) and `SCOUT_TOKEN` (a
//! credential for that agent); the server uses them when set, so what the
//! agent sends is recorded as from that instance. Otherwise it is the
//! operator and uses the home's broker and token, as every CLI command does.
//!
//! Architecture invariant: nothing a client sends ends the server. Bad
//! arguments, unknown tools and broker errors are tool results marked as
//! errors with a stable code; only the client closing stdin ends it.

pub mod broker;
pub mod error;
pub mod flight;
pub mod resources;
pub mod server;
pub mod tools;

use rmcp::ServiceExt;

pub use broker::Broker;
pub use server::McpServer;

/// The default of `ask`'s and `send`'s `timeout_s`: the same as `scout send`.
pub const ASK_TIMEOUT_S_DEFAULT: u64 = 600;

/// The longest `timeout_s` accepted: an hour is longer than any agent turn
/// worth waiting on inside another agent's turn.
pub const ASK_TIMEOUT_S_MAX: u64 = 3600;

/// The environment variable naming the calling agent's instance.
pub const AGENT_ENV: &str = "SCOUT_AGENT";
/// The environment variable with the broker's HTTP base URL.
pub const URL_ENV: &str = "SCOUT_URL";
/// The environment variable with the agent's bearer credential.
pub const TOKEN_ENV: &str = "SCOUT_TOKEN";

/// The name `whoami` gives a caller Scout did not start.
pub const OPERATOR: &str = "operator";

/// Serves MCP on stdin and stdout until the client closes them.
pub async fn serve_stdio(server: McpServer) -> anyhow::Result<()> {
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|err| anyhow::anyhow!("the MCP client did not initialize: {err}"))?;
    running
        .waiting()
        .await
        .map_err(|err| anyhow::anyhow!("the MCP session ended abnormally: {err}"))?;
    Ok(())
}
