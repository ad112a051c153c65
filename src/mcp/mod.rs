//! The Scout MCP server (`scout mcp`), through which agents mention each
//! other. This build carries only its entry point: [`serve`] says the
//! server is not built in, so `scout mcp` fails clearly instead of hanging
//! an MCP client that waits for a handshake.

use std::process::ExitCode;

use crate::cli::UsageError;

/// Serves MCP over stdio.
pub fn serve() -> anyhow::Result<ExitCode> {
    Err(UsageError::new(
        "MCP_UNAVAILABLE",
        "the MCP server is not built into this binary",
    )
    .into())
}
