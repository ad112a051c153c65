//! `scout usage`: tokens and cost of the flights the mesh ran in a window,
//! by agent or by node, as this home's broker totals them from every
//! connected member. Members that did not answer are listed, so a total
//! that leaves one out says so.

use crate::pty::text::terminal_safe_text;
use std::process::ExitCode;

use clap::Args;

use super::client::BrokerClient;
use super::output::table;
use super::send::dollars;
use super::{Context, UsageError};
use crate::api::usage::{
    USAGE_SINCE_DEFAULT, UsageGrouping, UsageQueryError, UsageSum, UsageTotals, parse_since,
};

/// Flags of `scout usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The window, back from now: `30m`, `12h`, `1d` or `7d` (at most 366d).
    #[arg(long, default_value = USAGE_SINCE_DEFAULT, value_name = "DURATION")]
    pub since: String,
    /// Total by `agent` or by `node`.
    #[arg(long, default_value = "node", value_name = "agent|node")]
    pub by: String,
}

fn usage_error(err: UsageQueryError) -> anyhow::Error {
    UsageError::new(err.code(), err.to_string()).into()
}

/// Runs `scout usage`.
pub fn run(args: UsageArgs, context: &Context) -> anyhow::Result<ExitCode> {
    // Checked here first, so a typo is a usage error (exit 2) even with no
    // broker running; the broker checks the same words again.
    parse_since(&args.since).map_err(usage_error)?;
    let by = UsageGrouping::parse(&args.by).map_err(usage_error)?;
    let client = BrokerClient::running(context)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the broker of this home is not running; start it with `scout up{}`",
            super::setup::home_flag(context)
        )
    })?;
    let totals: UsageTotals = client
        .get(&format!(
            "/v1/usage?since={}&by={}",
            args.since,
            by.as_str()
        ))
        .map_err(super::send::api_error)?;
    context.printer.emit(&totals, || render(&totals))?;
    Ok(ExitCode::SUCCESS)
}

/// The totals as a table, the sum, and who is missing.
pub fn render(totals: &UsageTotals) -> String {
    let header = match totals.by {
        UsageGrouping::Agent => "AGENT",
        UsageGrouping::Node => "NODE",
    };
    let mut rows: Vec<Vec<String>> = totals
        .rows
        .iter()
        .map(|row| cells(&terminal_safe_text(&row.key), &row.sum))
        .collect();
    rows.push(cells("total", &totals.total));
    let mut out = table(
        &[header, "FLIGHTS", "FAILED", "IN", "CACHED", "OUT", "COST"],
        &rows,
    );
    for member in &totals.missing {
        out.push_str(&format!(
            "missing: {} ({}): {}\n",
            terminal_safe_text(&member.name),
            member.node_id,
            terminal_safe_text(&member.reason)
        ));
    }
    for name in &totals.truncated {
        out.push_str(&format!(
            "note: {} has more agents than one report lists; its total counts only those listed\n",
            terminal_safe_text(name)
        ));
    }
    out
}

fn cells(key: &str, sum: &UsageSum) -> Vec<String> {
    vec![
        key.to_owned(),
        sum.flights.to_string(),
        sum.failed.to_string(),
        sum.usage.input_tokens.to_string(),
        sum.usage.cached_tokens.to_string(),
        sum.usage.output_tokens.to_string(),
        sum.usage
            .cost_micro_usd
            .map_or_else(|| "-".to_owned(), dollars),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::usage::{MissingMember, UsageTotalRow};
    use scout_mesh::usage::Usage;

    #[test]
    fn totals_render_rows_a_total_and_the_missing() {
        let sum = UsageSum {
            flights: 2,
            failed: 1,
            usage: Usage {
                input_tokens: 1200,
                output_tokens: 340,
                cached_tokens: 1000,
                cost_micro_usd: Some(5_600),
            },
        };
        let totals = UsageTotals {
            since_ms: 0,
            by: UsageGrouping::Node,
            rows: vec![UsageTotalRow {
                key: "devbox".into(),
                node_id: "n1".into(),
                sum,
            }],
            total: sum,
            missing: vec![MissingMember {
                node_id: "n2".into(),
                name: "laptop".into(),
                reason: "not connected".into(),
            }],
            truncated: Vec::new(),
        };
        let text = render(&totals);
        assert!(text.contains("NODE"), "{text}");
        assert!(text.contains("devbox"), "{text}");
        assert!(text.contains("$0.0056"), "{text}");
        assert!(text.contains("total"), "{text}");
        assert!(
            text.contains("missing: laptop (n2): not connected"),
            "{text}"
        );
    }
}
