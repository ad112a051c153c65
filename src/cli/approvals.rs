//! `scout approvals`, `scout approve ID` and `scout deny ID`: the requests
//! for a person's decision from the whole mesh, answered from this machine.
//! The answer goes to the approval's owner, which takes the first one; a
//! later answer says who decided (`ALREADY_DECIDED`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use super::Context;
use super::client::BrokerClient;
use super::output::table;
use crate::daemon::approvals::ApprovalView;

/// Flags of `scout approvals`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ApprovalsArgs {
    /// Also list decided and expired approvals (pending only by default).
    #[arg(long)]
    pub all: bool,
    /// Show one approval or manage standing rules instead of listing.
    #[command(subcommand)]
    pub command: Option<ApprovalsCommand>,
}

/// `scout approvals show|rules|forget`.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// One approval in full: everything a person approves.
    Show {
        /// The approval (`apr_…`).
        id: String,
    },
    /// The standing rules (`--always` answers) of this broker.
    Rules,
    /// Remove a standing rule (an id from `scout approvals rules`).
    Forget {
        /// The rule (`rule_…`).
        id: String,
    },
}

/// Flags of `scout approve` and `scout deny`.
#[derive(Debug, Args)]
pub struct AnswerArgs {
    /// The approval (`apr_…`, from `scout approvals`).
    pub id: String,
    /// A note for the agent and the audit log.
    #[arg(long, default_value = "")]
    pub note: String,
    /// Answer the same action of the same agent the same way from now on
    /// (a standing rule on the approval's owner).
    #[arg(long)]
    pub always: bool,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct ApprovalList {
    approvals: Vec<ApprovalView>,
}

fn client(context: &Context) -> anyhow::Result<BrokerClient> {
    BrokerClient::running(context)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the broker of this home is not running; start it with `scout up{}`",
            super::setup::home_flag(context)
        )
    })
}

/// Runs `scout approvals`.
pub fn list(args: ApprovalsArgs, context: &Context) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ApprovalsCommand::Show { id }) => return show(&id, context),
        Some(ApprovalsCommand::Rules) => return rules(context),
        Some(ApprovalsCommand::Forget { id }) => {
            let removed: serde_json::Value = client(context)?
                .post(&format!("/v1/approvals/rules/{id}/remove"), &json!({}))
                .map_err(super::send::api_error)?;
            context
                .printer
                .emit(&removed, || format!("standing rule {id} removed"))?;
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let path = if args.all {
        "/v1/approvals"
    } else {
        "/v1/approvals?state=pending"
    };
    let list: ApprovalList = client(context)?.get(path).map_err(super::send::api_error)?;
    context.printer.emit(&list, || {
        let now = context.env.now_unix_ms();
        let rows: Vec<Vec<String>> = list
            .approvals
            .iter()
            .map(|view| {
                let when = match view.decided_by.as_deref() {
                    Some(by) => format!("by {}", safe(by)),
                    None => format!(
                        "{}s left",
                        view.deadline_unix_ms.saturating_sub(now) / 1_000
                    ),
                };
                vec![
                    view.id.clone(),
                    view.state.to_string(),
                    safe(&view.agent),
                    safe(&view.action),
                    cut(&view.summary, 60),
                    when,
                ]
            })
            .collect();
        if rows.is_empty() {
            if args.all {
                "no approvals".to_owned()
            } else {
                "no pending approvals".to_owned()
            }
        } else {
            let mut out = table(
                &["ID", "STATE", "AGENT", "ACTION", "SUMMARY", "DECIDED"],
                &rows,
            );
            out.push_str("\nread one in full with `scout approvals show ID` before you answer");
            out
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn show(id: &str, context: &Context) -> anyhow::Result<ExitCode> {
    let view: ApprovalView = client(context)?
        .get(&format!("/v1/approvals/{id}"))
        .map_err(super::send::api_error)?;
    context.printer.emit(&view, || {
        let mut out = format!(
            "approval {}: {}\nagent:    {} on {}\naction:   {}\n",
            view.id,
            view.state,
            safe(&view.agent),
            safe(&view.node),
            safe(&view.action)
        );
        if let Some(invocation) = &view.invocation {
            out.push_str(&format!("in:       invocation {}\n", safe(invocation)));
        }
        if let Some(by) = &view.decided_by {
            out.push_str(&format!("decided:  by {}\n", safe(by)));
        }
        if !view.note.is_empty() {
            out.push_str(&format!("note:     {}\n", safe(&view.note)));
        }
        if let Some(outcome) = &view.outcome {
            out.push_str(&format!("outcome:  {}\n", safe(outcome)));
        }
        // The whole summary, line breaks kept, nothing else interpreted.
        out.push_str("summary:\n");
        for line in view.summary.lines() {
            out.push_str(&format!("  {}\n", safe(line)));
        }
        out
    })?;
    Ok(ExitCode::SUCCESS)
}

fn rules(context: &Context) -> anyhow::Result<ExitCode> {
    let rules: serde_json::Value = client(context)?
        .get("/v1/approvals/rules")
        .map_err(super::send::api_error)?;
    context.printer.emit(&rules, || {
        let rows: Vec<Vec<String>> = rules["rules"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|rule| {
                let field = |name: &str| safe(rule[name].as_str().unwrap_or_default());
                vec![
                    field("id"),
                    if rule["allow"] == true {
                        "allow"
                    } else {
                        "deny"
                    }
                    .to_owned(),
                    field("agent"),
                    field("action"),
                    cut(rule["summary"].as_str().unwrap_or_default(), 60),
                    field("created_by"),
                ]
            })
            .collect();
        if rows.is_empty() {
            "no standing rules".to_owned()
        } else {
            table(
                &["ID", "ANSWER", "AGENT", "ACTION", "SUMMARY", "SET BY"],
                &rows,
            )
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Text from the mesh without control characters, so nothing a member or an
/// agent wrote can move the cursor or recolour the terminal.
fn safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Runs `scout approve` (`approve` true) or `scout deny`.
pub fn answer(args: AnswerArgs, approve: bool, context: &Context) -> anyhow::Result<ExitCode> {
    let verb = if approve { "approve" } else { "deny" };
    let view: ApprovalView = client(context)?
        .post(
            &format!("/v1/approvals/{}/{verb}", args.id),
            &json!({ "note": args.note, "always": args.always }),
        )
        .map_err(super::send::api_error)?;
    context.printer.emit(&view, || {
        let mut line = format!(
            "{} {} ({} on {}: {})",
            view.id,
            view.state,
            safe(&view.agent),
            safe(&view.node),
            cut(&view.summary, 80)
        );
        if args.always {
            line.push_str(&format!(
                "\nfrom now on, {} of {} with this summary is {} without asking",
                view.action,
                view.agent,
                if approve { "allowed" } else { "refused" }
            ));
        }
        line
    })?;
    Ok(ExitCode::SUCCESS)
}

fn cut(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(max) {
        None => flat,
        Some((at, _)) => format!("{}…", &flat[..at]),
    }
}
