//! `scout mcp`: the MCP server an agent talks to (no subcommand), and the
//! entry that registers it with the agent CLIs people start by hand:
//! `scout mcp install claude|codex|gemini [--scope user|project]` writes it
//! into that CLI's own config file, `scout mcp doctor` checks every CLI's.
//!
//! The entry is the same everywhere: a server named `scout` started as
//! `<this scout binary> mcp` over stdio. Installing is idempotent and
//! keeps everything else in the file (JSON keeps its key order; TOML loses
//! its comments, since it is parsed and written back as a table).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Context, UsageError};
use crate::config::json_file::write_atomically;

/// The name the server is registered under in every CLI; its tools appear
/// to a Claude model as `mcp__scout__<tool>`.
pub const SERVER_NAME: &str = "scout";

/// `scout mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Without a subcommand, serve MCP over stdio.
    #[command(subcommand)]
    pub command: Option<McpCommand>,
}

/// `scout mcp …` subcommands.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Register the Scout MCP server in an agent CLI's own config.
    Install(InstallArgs),
    /// Check every agent CLI's config for the Scout MCP server.
    Doctor,
}

/// `scout mcp install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The CLI to register with.
    pub cli: McpClient,
    /// `user`: the CLI's config in your home; `project`: the current
    /// directory's project config.
    #[arg(long, value_enum, default_value = "user")]
    pub scope: Scope,
    /// Print the file as it would be written, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A CLI that takes MCP servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum McpClient {
    /// Claude Code.
    Claude,
    /// OpenAI Codex CLI.
    Codex,
    /// Gemini CLI.
    Gemini,
}

/// Where the entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The user's config.
    User,
    /// The project in the current directory.
    Project,
}

impl McpClient {
    const ALL: [McpClient; 3] = [McpClient::Claude, McpClient::Codex, McpClient::Gemini];

    fn word(self) -> &'static str {
        match self {
            McpClient::Claude => "claude",
            McpClient::Codex => "codex",
            McpClient::Gemini => "gemini",
        }
    }

    /// The config file holding its MCP servers: Claude Code keeps user
    /// servers in `~/.claude.json` and project ones in `.mcp.json`; Codex
    /// in `$CODEX_HOME/config.toml` (`~/.codex`) or the project's
    /// `.codex/config.toml`; Gemini in `settings.json` under `~/.gemini` or
    /// the project's `.gemini`.
    pub fn config_path(self, scope: Scope, home: &Path, project: &Path) -> PathBuf {
        match (self, scope) {
            (McpClient::Claude, Scope::User) => home.join(".claude.json"),
            (McpClient::Claude, Scope::Project) => project.join(".mcp.json"),
            (McpClient::Codex, Scope::User) => std::env::var_os("CODEX_HOME")
                .filter(|dir| !dir.is_empty())
                .map_or_else(|| home.join(".codex"), PathBuf::from)
                .join("config.toml"),
            (McpClient::Codex, Scope::Project) => project.join(".codex").join("config.toml"),
            (McpClient::Gemini, Scope::User) => home.join(".gemini").join("settings.json"),
            (McpClient::Gemini, Scope::Project) => project.join(".gemini").join("settings.json"),
        }
    }
}

/// The server entry: `<binary> mcp` over stdio.
pub fn server_entry(binary: &Path) -> Value {
    json!({
        "type": "stdio",
        "command": binary.display().to_string(),
        "args": ["mcp"],
    })
}

/// Why a config file could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum McpConfigError {
    /// The file exists but is not what the CLI itself would read
    /// (`CONFIG_INVALID`): it is left alone.
    #[error("{}: {message}; fix or remove it, then run again", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `text` (the file's content, `None` when it does not exist) with the
/// Scout entry set, keeping everything else.
pub fn with_entry(
    client: McpClient,
    path: &Path,
    text: Option<&str>,
    binary: &Path,
) -> Result<String, McpConfigError> {
    let invalid = |message: String| McpConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    match client {
        McpClient::Codex => {
            let mut table: toml::Table = match text {
                Some(text) => text
                    .parse()
                    .map_err(|err: toml::de::Error| invalid(err.message().to_owned()))?,
                None => toml::Table::new(),
            };
            let servers = table
                .entry("mcp_servers")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(servers) = servers else {
                return Err(invalid("`mcp_servers` is not a table".to_owned()));
            };
            let mut entry = toml::Table::new();
            entry.insert(
                "command".to_owned(),
                toml::Value::String(binary.display().to_string()),
            );
            entry.insert(
                "args".to_owned(),
                toml::Value::Array(vec![toml::Value::String("mcp".to_owned())]),
            );
            servers.insert(SERVER_NAME.to_owned(), toml::Value::Table(entry));
            toml::to_string(&table).map_err(|err| invalid(err.to_string()))
        }
        McpClient::Claude | McpClient::Gemini => {
            let mut root: Value = match text {
                Some(text) if !text.trim().is_empty() => {
                    serde_json::from_str(text).map_err(|err| invalid(err.to_string()))?
                }
                _ => json!({}),
            };
            let Some(object) = root.as_object_mut() else {
                return Err(invalid("the file is not a JSON object".to_owned()));
            };
            let servers = object.entry("mcpServers").or_insert_with(|| json!({}));
            let Some(servers) = servers.as_object_mut() else {
                return Err(invalid("`mcpServers` is not an object".to_owned()));
            };
            let mut entry = server_entry(binary);
            if client == McpClient::Gemini {
                // Gemini tells transports apart by which key is set and
                // does not take `type`.
                if let Some(entry) = entry.as_object_mut() {
                    entry.remove("type");
                }
            }
            servers.insert(SERVER_NAME.to_owned(), entry);
            let mut out =
                serde_json::to_string_pretty(&root).map_err(|err| invalid(err.to_string()))?;
            out.push('\n');
            Ok(out)
        }
    }
}

/// The `command` of the Scout entry in a config file's text, if it has one.
pub fn entry_command(client: McpClient, text: &str) -> Option<String> {
    match client {
        McpClient::Codex => {
            let table: toml::Table = text.parse().ok()?;
            table
                .get("mcp_servers")?
                .get(SERVER_NAME)?
                .get("command")?
                .as_str()
                .map(str::to_owned)
        }
        McpClient::Claude | McpClient::Gemini => {
            let root: Value = serde_json::from_str(text).ok()?;
            root.get("mcpServers")?
                .get(SERVER_NAME)?
                .get("command")?
                .as_str()
                .map(str::to_owned)
        }
    }
}

/// Runs `scout mcp …`.
pub fn run(args: McpArgs, context: &Context) -> anyhow::Result<ExitCode> {
    match args.command {
        None => super::mcp_serve::serve(context),
        Some(McpCommand::Install(install)) => run_install(install, context),
        Some(McpCommand::Doctor) => run_doctor(context),
    }
}

fn user_home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| UsageError::new("NO_HOME", "HOME is not set").into())
}

fn this_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe()
        .map_err(|err| anyhow::anyhow!("cannot find the running scout binary: {err}"))
}

#[derive(Debug, Serialize)]
struct Installed {
    cli: McpClient,
    scope: Scope,
    path: PathBuf,
    changed: bool,
    dry_run: bool,
    content: String,
}

fn run_install(args: InstallArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let path = args
        .cli
        .config_path(args.scope, &user_home()?, &std::env::current_dir()?);
    let binary = this_binary()?;
    let old = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => anyhow::bail!("cannot read {}: {err}", path.display()),
    };
    let content = with_entry(args.cli, &path, old.as_deref(), &binary)
        .map_err(|err| UsageError::new("CONFIG_INVALID", err.to_string()))?;
    let changed = old.as_deref() != Some(content.as_str());
    if changed && !args.dry_run {
        write_atomically(&path, content.as_bytes())
            .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", path.display()))?;
    }
    let report = Installed {
        cli: args.cli,
        scope: args.scope,
        path: path.clone(),
        changed,
        dry_run: args.dry_run,
        content,
    };
    context.printer.emit(&report, || {
        if report.dry_run {
            format!("would write {}:\n{}", report.path.display(), report.content)
        } else if report.changed {
            format!(
                "registered the scout MCP server with {} in {}",
                report.cli.word(),
                report.path.display()
            )
        } else {
            format!(
                "{} already has the scout MCP server in {}",
                report.cli.word(),
                report.path.display()
            )
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct Check {
    cli: McpClient,
    scope: Scope,
    path: PathBuf,
    /// `ok`, `missing` (no entry), `stale` (its binary does not exist).
    state: &'static str,
    command: Option<String>,
}

fn run_doctor(context: &Context) -> anyhow::Result<ExitCode> {
    let home = user_home()?;
    let project = std::env::current_dir()?;
    let mut checks = Vec::new();
    for cli in McpClient::ALL {
        for scope in [Scope::User, Scope::Project] {
            let path = cli.config_path(scope, &home, &project);
            let command = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| entry_command(cli, &text));
            let state = match &command {
                None => "missing",
                Some(command) if Path::new(command).is_file() => "ok",
                Some(_) => "stale",
            };
            checks.push(Check {
                cli,
                scope,
                path,
                state,
                command,
            });
        }
    }
    let stale = checks.iter().any(|check| check.state == "stale");
    let any_ok = checks.iter().any(|check| check.state == "ok");
    context.printer.emit(&json!({ "checks": checks }), || {
        let mut lines = Vec::new();
        for check in &checks {
            let line = match check.state {
                "ok" => format!("ok       {} ({:?}): {}", check.cli.word(), check.scope, check.path.display()),
                "stale" => format!(
                    "stale    {} ({:?}): {} runs {}, which does not exist; run `scout mcp install {}`",
                    check.cli.word(),
                    check.scope,
                    check.path.display(),
                    check.command.as_deref().unwrap_or_default(),
                    check.cli.word()
                ),
                _ => format!("missing  {} ({:?}): {}", check.cli.word(), check.scope, check.path.display()),
            };
            lines.push(line);
        }
        if !any_ok {
            lines.push("no CLI has the scout MCP server; run `scout mcp install claude` (or codex, gemini)".to_owned());
        }
        lines.join("\n")
    })?;
    Ok(if stale {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_keeps_the_rest_and_is_idempotent() {
        let binary = Path::new("/opt/scout/bin/scout");
        let path = Path::new("/x/.claude.json");
        let old = r#"{"theme":"dark","mcpServers":{"other":{"command":"o"}}}"#;
        let once = with_entry(McpClient::Claude, path, Some(old), binary).unwrap();
        let twice = with_entry(McpClient::Claude, path, Some(&once), binary).unwrap();
        assert_eq!(once, twice);
        let value: Value = serde_json::from_str(&once).unwrap();
        assert_eq!(value["theme"], "dark");
        assert_eq!(value["mcpServers"]["other"]["command"], "o");
        assert_eq!(value["mcpServers"]["scout"]["args"], json!(["mcp"]));
        assert_eq!(
            entry_command(McpClient::Claude, &once).as_deref(),
            Some("/opt/scout/bin/scout")
        );
    }

    #[test]
    fn codex_gets_a_toml_table() {
        let binary = Path::new("/opt/scout");
        let path = Path::new("/x/config.toml");
        let old = "model = \"o3\"\n[mcp_servers.other]\ncommand = \"o\"\n";
        let new = with_entry(McpClient::Codex, path, Some(old), binary).unwrap();
        let table: toml::Table = new.parse().unwrap();
        assert_eq!(table["model"].as_str(), Some("o3"));
        assert_eq!(table["mcp_servers"]["other"]["command"].as_str(), Some("o"));
        assert_eq!(
            entry_command(McpClient::Codex, &new).as_deref(),
            Some("/opt/scout")
        );
        assert_eq!(
            with_entry(McpClient::Codex, path, Some(&new), binary).unwrap(),
            new
        );
    }

    #[test]
    fn a_broken_file_is_refused_not_overwritten() {
        let path = Path::new("/x/settings.json");
        for text in ["{not json", "[1]", r#"{"mcpServers": 3}"#] {
            assert!(with_entry(McpClient::Gemini, path, Some(text), Path::new("/s")).is_err());
        }
        assert!(
            with_entry(
                McpClient::Codex,
                path,
                Some("mcp_servers = 3"),
                Path::new("/s")
            )
            .is_err()
        );
    }
}
