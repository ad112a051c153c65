//! `scout checkpoints`: the git checkpoints the broker took of its agents'
//! worktrees before `execute` work, what changed since one, and putting
//! the files back. Only this home's broker's checkpoints are listed: each
//! lives in the repository of the machine that ran the work.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use scout_mesh::names::AgentName;

use super::client::BrokerClient;
use super::output::table;
use super::send::api_error;
use super::{Context, UsageError};
use crate::api::checkpoints::{CheckpointDiffView, CheckpointList, RestoredView};
use crate::pty::text::terminal_safe_text;

/// `scout checkpoints …`.
#[derive(Debug, Subcommand)]
pub enum CheckpointsCommand {
    /// List the checkpoints this broker took (newest first): id, agent,
    /// files changed against HEAD, when.
    List(ListArgs),
    /// Show what changed in the worktree since a checkpoint (`git diff`
    /// from the checkpoint to now, untracked files included).
    Show(IdArgs),
    /// Put the worktree's files back as they were at a checkpoint.
    ///
    /// Every file the checkpoint holds (tracked files, and untracked files
    /// that were not ignored when it was taken) is written back as it was. Files made
    /// after the checkpoint are left alone unless `--clean`. HEAD, the
    /// index (what is staged) and the stash list are not touched, so run
    /// `git status` afterwards to see the result.
    Restore(RestoreArgs),
}

/// Flags of `scout checkpoints list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this agent's checkpoints (`@fabric`, `@fabric#main`).
    pub agent: Option<String>,
}

/// The checkpoint named.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The checkpoint's id (its flight's), or the invocation's id.
    pub id: String,
}

/// Flags of `scout checkpoints restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The checkpoint's id (its flight's), or the invocation's id.
    pub id: String,
    /// Also remove files made after the checkpoint (ignored files stay).
    #[arg(long)]
    pub clean: bool,
}

/// Runs `scout checkpoints …`.
pub fn run(command: CheckpointsCommand, context: &Context) -> anyhow::Result<ExitCode> {
    let client = BrokerClient::running(context)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the broker of this home is not running; start it with `scout up{}`",
            super::setup::home_flag(context)
        )
    })?;
    match command {
        CheckpointsCommand::List(args) => {
            let mut path = "/v1/checkpoints".to_owned();
            if let Some(agent) = args.agent.as_deref() {
                AgentName::parse_lenient(agent)?;
                path.push_str(&format!("?agent={}", query_value(agent)));
            }
            let list: CheckpointList = client.get(&path).map_err(api_error)?;
            let now_ms = context.env.now_unix_ms();
            context.printer.emit(&list, || render_list(&list, now_ms))?;
        }
        CheckpointsCommand::Show(args) => {
            let path = format!("/v1/checkpoints/{}/diff", path_segment(&args.id)?);
            let shown: CheckpointDiffView = client.get(&path).map_err(api_error)?;
            context.printer.emit(&shown, || render_diff(&shown))?;
        }
        CheckpointsCommand::Restore(args) => {
            let path = format!(
                "/v1/checkpoints/{}/restore?clean={}",
                path_segment(&args.id)?,
                args.clean
            );
            let restored: RestoredView = client
                .post(&path, &serde_json::json!({}))
                .map_err(api_error)?;
            context
                .printer
                .emit(&restored, || render_restored(&restored))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An id as a path segment: ids are letters, digits, `-` and `_`, so
/// nothing needs escaping, and anything else is refused here.
fn path_segment(id: &str) -> anyhow::Result<&str> {
    crate::checkpoint::check_id(id).map_err(|err| UsageError::new(err.code(), err.to_string()))?;
    Ok(id)
}

/// Percent-encodes a query value byte by byte (all but unreserved ASCII).
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

fn render_list(list: &CheckpointList, now_ms: u64) -> String {
    if list.checkpoints.is_empty() {
        return format!(
            "no checkpoints on {} (only this broker's are listed)\n",
            terminal_safe_text(&list.node)
        );
    }
    let rows: Vec<Vec<String>> = list
        .checkpoints
        .iter()
        .map(|view| {
            vec![
                view.id.clone(),
                terminal_safe_text(&view.instance),
                match (&view.files_changed, &view.error) {
                    (Some(files), _) => files.to_string(),
                    (None, Some(_)) => "failed".to_owned(),
                    (None, None) => "-".to_owned(),
                },
                view.commit.as_deref().map_or_else(
                    || "-".to_owned(),
                    |commit| commit.chars().take(12).collect(),
                ),
                super::workspaces::ago(now_ms, u64::try_from(view.created_at_ms).unwrap_or(0)),
                terminal_safe_text(&view.workspace),
            ]
        })
        .collect();
    table(
        &["ID", "AGENT", "FILES", "COMMIT", "CREATED", "WORKSPACE"],
        &rows,
    )
}

fn render_diff(shown: &CheckpointDiffView) -> String {
    let mut out = format!(
        "checkpoint {} of {} ({})\n",
        shown.checkpoint.id,
        terminal_safe_text(&shown.checkpoint.instance),
        terminal_safe_text(&shown.checkpoint.workspace)
    );
    if shown.diff.is_empty() {
        out.push_str("no changes since the checkpoint\n");
    } else {
        out.push_str(&terminal_safe_text(&shown.diff));
    }
    if shown.truncated {
        out.push_str("\n[the diff is cut; run `git diff` in the workspace for all of it]\n");
    }
    out
}

fn render_restored(restored: &RestoredView) -> String {
    let mut out = format!(
        "restored checkpoint {} in {}: {} file(s) written back",
        restored.checkpoint.id,
        terminal_safe_text(&restored.checkpoint.workspace),
        restored.files_restored
    );
    if restored.clean {
        out.push_str(&format!(
            ", {} file(s) made since removed",
            restored.files_removed
        ));
    }
    out.push_str(
        "\nHEAD, the index and the stash are as they were; `git status` shows the result\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("@fabric#main"), "%40fabric%23main");
        assert_eq!(query_value("a-b_c.d~"), "a-b_c.d~");
    }
}
