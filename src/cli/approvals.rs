//! `scout approvals`, `scout approve ID` and `scout deny ID`: the requests
//! for a person's decision from the whole mesh, answered from this machine.
//! The answer goes to the approval's owner, which takes the first one; a
//! later answer says who decided (`ALREADY_DECIDED`).

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::Context;
use super::client::BrokerClient;
use super::output::table;
use crate::daemon::approvals::ApprovalView;

/// Flags of `scout approvals`.
#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    /// Also list decided and expired approvals (pending only by default).
    #[arg(long)]
    pub all: bool,
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
                    Some(by) => format!("by {by}"),
                    None => format!(
                        "{}s left",
                        view.deadline_unix_ms.saturating_sub(now) / 1_000
                    ),
                };
                vec![
                    view.id.clone(),
                    view.state.to_string(),
                    view.agent.clone(),
                    view.action.clone(),
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
            table(
                &["ID", "STATE", "AGENT", "ACTION", "SUMMARY", "DECIDED"],
                &rows,
            )
        }
    })?;
    Ok(ExitCode::SUCCESS)
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
            view.id, view.state, view.agent, view.node, view.summary
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
