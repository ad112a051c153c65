//! `scout workspaces`: the git worktrees this machine's agents made on
//! demand (definitions with `worktrees`), their state against their base,
//! and their removal.
//!
//! Worktrees are local things: their paths and their git state are this
//! machine's, so the command reads this home's agents and asks git, with
//! no broker needed. A running broker notices a removed worktree with its
//! config watch and withdraws the instance from the mesh.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use scout_mesh::names::AgentName;
use serde::Serialize;

use super::output::table;
use super::{Context, UsageError};
use crate::config::discover::{self, LocalAgent};
use crate::config::{relay_agents, settings};
use crate::pty::text::terminal_safe_text;
use crate::worktree::{NamedWorktree, WorktreeError, WorktreeInfo};

/// `scout workspaces …`.
#[derive(Debug, Subcommand)]
pub enum WorkspacesCommand {
    /// List the worktrees agents made: branch, path, clean or dirty,
    /// ahead/behind their base, last activity.
    List(ListArgs),
    /// Remove an agent's worktree (the branch and its commits are kept).
    Remove(RemoveArgs),
}

/// Flags of `scout workspaces list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this definition's worktrees (`@fabric`).
    pub agent: Option<String>,
}

/// Flags of `scout workspaces remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The instance (`@fabric#feature-x`).
    pub instance: String,
    /// Remove it even with uncommitted changes or unmerged commits.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Serialize)]
struct Listed {
    workspaces: Vec<WorktreeInfo>,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Removed {
    removed: String,
    path: std::path::PathBuf,
}

/// Runs `scout workspaces …`.
pub fn run(command: WorkspacesCommand, context: &Context) -> anyhow::Result<ExitCode> {
    match command {
        WorkspacesCommand::List(args) => list(args, context),
        WorkspacesCommand::Remove(args) => remove(args, context),
    }
}

/// This home's agents whose definitions make worktrees, one per definition.
fn definitions(context: &Context) -> anyhow::Result<(Vec<LocalAgent>, Vec<String>)> {
    let settings = settings::load_required(&context.home.settings_path())?.value;
    let relay = relay_agents::load(&context.home.relay_agents_path())?.value;
    let found = discover::discover(&context.home, &settings, &relay);
    let mut seen = std::collections::HashSet::new();
    let agents = found
        .agents
        .into_iter()
        .filter(|agent| agent.worktrees.is_some())
        .filter(|agent| seen.insert(agent.definition.clone()))
        .collect();
    Ok((agents, found.warnings))
}

fn worktree_error(err: WorktreeError) -> anyhow::Error {
    match err {
        WorktreeError::Git { .. } => anyhow::Error::new(err),
        other => UsageError::new(other.code(), other.to_string()).into(),
    }
}

fn list(args: ListArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let wanted = args
        .agent
        .as_deref()
        .map(AgentName::parse_lenient)
        .transpose()?;
    let (agents, mut warnings) = definitions(context)?;
    let mut workspaces = Vec::new();
    for agent in agents {
        if wanted
            .as_ref()
            .is_some_and(|name| name.definition() != &agent.definition)
        {
            continue;
        }
        let Some(worktrees) = agent.worktrees() else {
            continue;
        };
        match worktrees.list() {
            Ok(found) => workspaces.extend(found),
            Err(err) => warnings.push(format!("@{}: {err}", agent.definition)),
        }
    }
    let report = Listed {
        workspaces,
        warnings,
    };
    context.printer.emit(&report, || render(&report, context))?;
    Ok(ExitCode::SUCCESS)
}

fn render(report: &Listed, context: &Context) -> String {
    let now_ms = context.env.now_unix_ms();
    let rows: Vec<Vec<String>> = report
        .workspaces
        .iter()
        .map(|info| {
            vec![
                format!("@{}#{}", info.definition, info.branch),
                if info.dirty { "dirty" } else { "clean" }.to_owned(),
                format!("+{} -{} {}", info.ahead, info.behind, info.base),
                ago(now_ms, info.last_activity_ms),
                info.path.display().to_string(),
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        "no worktrees yet: an agent added with --worktrees makes one when a mention names a new workspace\n"
            .to_owned()
    } else {
        table(&["INSTANCE", "STATE", "VS BASE", "ACTIVE", "PATH"], &rows)
    };
    for warning in &report.warnings {
        out.push_str(&format!("warning: {}\n", terminal_safe_text(warning)));
    }
    out
}

/// `5m ago`, `3h ago`, `2d ago`.
pub(crate) fn ago(now_ms: u64, then_ms: u64) -> String {
    let seconds = now_ms.saturating_sub(then_ms) / 1000;
    match seconds {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86_400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

fn remove(args: RemoveArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let settings = settings::load_required(&context.home.settings_path())?.value;
    let (agents, _) = definitions(context)?;
    let named = NamedWorktree::find(&agents, &settings.node_name, &args.instance)
        .map_err(|err| UsageError::new(err.code(), err.to_string()))?;
    let path = named.remove(args.force).map_err(worktree_error)?;
    let workspace = &named.workspace;
    let definition = named.worktrees.definition();
    let report = Removed {
        removed: format!("@{definition}#{workspace}"),
        path,
    };
    context.printer.emit(&report, || {
        format!(
            "removed the worktree of {} at {} (branch kept)\n",
            report.removed,
            report.path.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::ago;

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(ago(10_000, 9_000), "just now");
        assert_eq!(ago(10 * 60_000, 0), "10m ago");
        assert_eq!(ago(5 * 3_600_000, 0), "5h ago");
        assert_eq!(ago(3 * 86_400_000, 0), "3d ago");
        assert_eq!(ago(0, 5), "just now");
    }
}
