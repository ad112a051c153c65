//! `scout mcp` with no subcommand: serve the Model Context Protocol on
//! stdin and stdout, so an agent CLI (Claude Code, codex, gemini, any MCP
//! client) can mention other agents through this broker. See
//! [`crate::mcp`].

use std::process::ExitCode;

use anyhow::Context as _;

use super::client::BrokerClient;
use super::{Context, UsageError};
use crate::mcp::{AGENT_ENV, Broker, McpServer, TOKEN_ENV, URL_ENV};

/// Runs `scout mcp` until the client closes stdin.
pub fn serve(context: &Context) -> anyhow::Result<ExitCode> {
    // Logs go to stderr: stdout carries the protocol and nothing else.
    crate::logging::init();
    let (client, agent) = connect(context)?;
    let server = McpServer::new(Broker::new(client), agent);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("scout-mcp")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::mcp::serve_stdio(server))?;
    Ok(ExitCode::SUCCESS)
}

/// The broker client and the caller's instance: the agent's own from the
/// environment Scout sets, or the operator's from the home.
fn connect(context: &Context) -> anyhow::Result<(BrokerClient, Option<String>)> {
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let agent = match var(AGENT_ENV) {
        Some(name) => {
            scout_mesh::names::AgentName::parse(&name)
                .with_context(|| format!("{AGENT_ENV} is not an instance name"))?;
            Some(name)
        }
        None => None,
    };
    match (var(URL_ENV), var(TOKEN_ENV)) {
        (Some(url), Some(token)) => {
            check_loopback(&url)?;
            Ok((
                BrokerClient::with_token(url.trim_end_matches('/').to_owned(), token),
                agent,
            ))
        }
        (None, None) => {
            let client = BrokerClient::running(context)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "the broker of this home is not running; start it with `scout up{}`",
                    super::setup::home_flag(context)
                )
            })?;
            Ok((client, agent))
        }
        _ => Err(UsageError::new(
            "CONFIG_INVALID",
            format!("{URL_ENV} and {TOKEN_ENV} go together: set both or neither"),
        )
        .into()),
    }
}

/// The broker's API listens only on the loopback; a `SCOUT_URL` elsewhere
/// would send the token off the machine.
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let local = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
        .iter()
        .any(|prefix| url.starts_with(prefix));
    if local {
        Ok(())
    } else {
        Err(UsageError::new(
            "CONFIG_INVALID",
            format!("{URL_ENV} must be the broker's loopback address (http://127.0.0.1:PORT), not `{url}`"),
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_broker_gets_the_token() {
        assert!(check_loopback("http://127.0.0.1:3100").is_ok());
        assert!(check_loopback("http://localhost:3100").is_ok());
        assert!(check_loopback("http://evil.example:3100").is_err());
        assert!(check_loopback("http://127.0.0.1.evil:3100").is_err());
    }
}
