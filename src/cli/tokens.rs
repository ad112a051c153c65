//! `scout tokens`: make, list and revoke scoped tokens of this broker's
//! API. `create` prints the secret once (only its digest is kept);
//! `list` shows tokens and browser sessions; `revoke` ends either.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use super::Context;
use super::client::BrokerClient;
use super::output::table;
use crate::http::scope::Scope;
use crate::http::tokens::{CreateToken, CreatedToken, TokenList};

/// `scout tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a token; its secret is printed once.
    Create(CreateArgs),
    /// List tokens and browser sessions.
    List,
    /// Revoke a token or end a browser session (an id from `list`).
    Revoke(RevokeArgs),
}

/// Flags of `scout tokens create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// What the token may do: `read` (reads only), `agent` (reads, sends,
    /// asks; acts as the agent named by --agent), `operator` (everything).
    #[arg(long, value_enum)]
    pub scope: Scope,
    /// The agent an `agent` token acts as (`@fabric`).
    #[arg(long, value_name = "@AGENT")]
    pub agent: Option<String>,
    /// How long it works (`30s`, `10m`, `8h`, `7d`); forever without.
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// A label for `scout tokens list`.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// Flags of `scout tokens revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token's (`tok_…`) or browser session's id.
    pub id: String,
}

/// Runs `scout tokens …`.
pub fn run(command: TokensCommand, context: &Context) -> anyhow::Result<ExitCode> {
    let client = BrokerClient::running(context)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the broker of this home is not running; start it with `scout up{}`",
            super::setup::home_flag(context)
        )
    })?;
    match command {
        TokensCommand::Create(args) => create(&client, args, context),
        TokensCommand::List => list(&client, context),
        TokensCommand::Revoke(args) => {
            let revoked: serde_json::Value = client
                .post(&format!("/v1/tokens/{}/revoke", args.id), &json!({}))
                .map_err(super::send::api_error)?;
            context
                .printer
                .emit(&revoked, || format!("revoked {}", args.id))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn create(client: &BrokerClient, args: CreateArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let ttl_ms = match args.ttl.as_deref() {
        Some(text) => {
            let ttl = super::mesh::parse_duration(text)?;
            Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        }
        None => None,
    };
    let body = CreateToken {
        scope: args.scope,
        agent: args.agent,
        ttl_ms,
        name: args.name,
    };
    let created: CreatedToken = client
        .post("/v1/tokens", &body)
        .map_err(super::send::api_error)?;
    context.printer.emit(&created, || {
        let acts_as = created
            .agent
            .as_deref()
            .map(|agent| format!(", acting as {agent}"))
            .unwrap_or_default();
        format!(
            "{}\n\ntoken {} ({} scope{acts_as}); the secret above is shown only now",
            created.token, created.id, created.scope
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

fn list(client: &BrokerClient, context: &Context) -> anyhow::Result<ExitCode> {
    let listed: TokenList = client.get("/v1/tokens").map_err(super::send::api_error)?;
    context.printer.emit(&listed, || {
        let now = context.env.now_unix_ms_i64();
        let when = |ms: Option<i64>| match ms {
            None => "-".to_owned(),
            Some(ms) if ms <= now => format!("{}m ago", (now - ms) / 60_000),
            Some(ms) => format!("in {}m", (ms - now) / 60_000),
        };
        let rows: Vec<Vec<String>> = listed
            .tokens
            .iter()
            .map(|token| {
                let state = match (token.revoked_at_ms, token.expires_at_ms) {
                    (Some(_), _) => "revoked",
                    (None, Some(expires)) if expires <= now => "expired",
                    _ => "live",
                };
                vec![
                    token.id.clone(),
                    token.kind.clone(),
                    token.name.clone().unwrap_or_else(|| "-".to_owned()),
                    token.scope.to_string(),
                    token.agent.clone().unwrap_or_else(|| "-".to_owned()),
                    when(Some(token.created_at_ms)),
                    when(token.expires_at_ms),
                    when(token.last_used_at_ms),
                    state.to_owned(),
                ]
            })
            .collect();
        if rows.is_empty() {
            "no tokens and no browser sessions".to_owned()
        } else {
            table(
                &[
                    "ID",
                    "KIND",
                    "NAME",
                    "SCOPE",
                    "AGENT",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                    "STATE",
                ],
                &rows,
            )
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
