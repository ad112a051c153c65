//! `scout audit`: the broker's audit log. Without a subcommand it lists
//! entries (`--since 1h` or an RFC 3339 time, `--actor`, `--action`);
//! `scout audit verify` walks the hash chain and fails with
//! `AUDIT_CHAIN_BROKEN` naming the first broken seq.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::client::BrokerClient;
use super::output::table;
use super::{Context, UsageError};
use crate::http::audit::AuditList;
use crate::store::audit::ChainReport;

/// Flags of `scout audit`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// `verify`, or nothing to list entries.
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only entries since this long ago (`30m`, `2h`, `7d`) or this time
    /// (RFC 3339, `2026-12-04T10:00:00Z`).
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Only this actor (`operator`, `token:tok_…`; `agent` for every agent).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action (`token_create`, `mesh_revoke`, …).
    #[arg(long)]
    pub action: Option<String>,
}

/// `scout audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exit 1 with AUDIT_CHAIN_BROKEN when it breaks.
    Verify,
}

/// Runs `scout audit`.
pub fn run(args: AuditArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let client = BrokerClient::running(context)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the broker of this home is not running; start it with `scout up{}`",
            super::setup::home_flag(context)
        )
    })?;
    if let Some(AuditCommand::Verify) = args.command {
        let report: ChainReport = client
            .get("/v1/audit/verify")
            .map_err(super::send::api_error)?;
        context.printer.emit(&report, || {
            format!("the audit chain holds ({} entries)", report.entries)
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut query: Vec<String> = Vec::new();
    if let Some(since) = args.since.as_deref() {
        let since_ms = parse_since(since, context.env.now_unix_ms_i64())?;
        query.push(format!("since_ms={since_ms}"));
    }
    for (key, value) in [("actor", &args.actor), ("action", &args.action)] {
        if let Some(value) = value {
            query.push(format!("{key}={}", encode_query(value)));
        }
    }
    let path = if query.is_empty() {
        "/v1/audit".to_owned()
    } else {
        format!("/v1/audit?{}", query.join("&"))
    };
    let listed: AuditList = client.get(&path).map_err(super::send::api_error)?;
    context.printer.emit(&listed, || {
        let rows: Vec<Vec<String>> = listed
            .entries
            .iter()
            .map(|entry| {
                vec![
                    entry.seq.to_string(),
                    entry.ts_ms.to_string(),
                    entry.actor.clone(),
                    entry.action.clone(),
                    entry.subject.clone(),
                    entry.detail.to_string(),
                ]
            })
            .collect();
        if rows.is_empty() {
            "no audit entries".to_owned()
        } else {
            table(
                &["SEQ", "TS_MS", "ACTOR", "ACTION", "SUBJECT", "DETAIL"],
                &rows,
            )
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// `--since`: a duration back from `now_ms`, or an RFC 3339 time.
fn parse_since(text: &str, now_ms: i64) -> Result<i64, UsageError> {
    if text.contains('T') || text.contains('t') {
        return parse_rfc3339_ms(text).ok_or_else(|| {
            UsageError::new(
                "INVALID_TIME",
                format!("`{text}` is not an RFC 3339 time like 2026-12-04T10:00:00Z"),
            )
        });
    }
    let ago = super::mesh::parse_duration(text)?;
    Ok(now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)))
}

/// Unix ms of `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, rest) = text.split_once(['T', 't'])?;
    let mut date_parts = date.split('-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let (time, offset_s) = if let Some(time) = rest.strip_suffix(['Z', 'z']) {
        (time, 0)
    } else {
        let idx = rest.rfind(['+', '-'])?;
        let (time, offset) = rest.split_at(idx);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (hours, minutes) = offset[1..].split_once(':')?;
        let hours: i64 = hours.parse().ok()?;
        let minutes: i64 = minutes.parse().ok()?;
        (time, sign * (hours * 3600 + minutes * 60))
    };
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock_parts = clock.split(':');
    let hour: i64 = clock_parts.next()?.parse().ok()?;
    let minute: i64 = clock_parts.next()?.parse().ok()?;
    let second: i64 = clock_parts.next()?.parse().ok()?;
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61
        && fraction.bytes().all(|byte| byte.is_ascii_digit());
    if !valid {
        return None;
    }
    let millis: i64 = format!("{fraction:0<3}").get(..3)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(seconds * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_to_unix_ms() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-12-04T10:00:00.5Z"),
            Some(1_796_378_400_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-12-04T12:00:00+02:00"),
            Some(1_796_378_400_000)
        );
        assert_eq!(parse_rfc3339_ms("2026-13-04T10:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn since_takes_a_duration_back_from_now() {
        assert_eq!(parse_since("1m", 100_000).unwrap(), 40_000);
        assert!(parse_since("soon", 0).is_err());
    }
}
