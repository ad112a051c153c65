//! `GET /v1/usage?since=…&by=…`: tokens and cost of the flights the mesh
//! ran, totalled by the broker asked. Each owner answers for the flights it
//! ran; members that did not answer in time are listed, never dropped.
//!
//! The `since` window is a duration back from now (`30m`, `12h`, `1d`,
//! `7d`), parsed here once for the CLI and the HTTP handler alike.

use std::time::Duration;

use scout_mesh::usage::Usage;
use serde::{Deserialize, Serialize};

/// The longest window a usage query may ask for: a year and a day, the
/// wire's own bound (`USAGE_RANGE_MS_MAX`), so what is asked is what owners
/// answer.
pub const USAGE_SINCE_MAX: Duration = Duration::from_millis(scout_mesh::wire::USAGE_RANGE_MS_MAX);

/// The window when none is given: the last day.
pub const USAGE_SINCE_DEFAULT: &str = "1d";

/// Characters of a `since` word at most: `366d` or `527040m` are short; a
/// longer word is no duration and is refused before it is parsed.
const SINCE_CHARS_MAX: usize = 16;

/// How usage is totalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageGrouping {
    /// One row per agent instance (`@fabric@devbox#main`).
    Agent,
    /// One row per broker that ran the flights.
    #[default]
    Node,
}

impl UsageGrouping {
    /// The word (`agent`, `node`).
    pub fn as_str(self) -> &'static str {
        match self {
            UsageGrouping::Agent => "agent",
            UsageGrouping::Node => "node",
        }
    }

    /// Parses `agent` or `node`.
    pub fn parse(word: &str) -> Result<UsageGrouping, UsageQueryError> {
        match word {
            "agent" => Ok(UsageGrouping::Agent),
            "node" => Ok(UsageGrouping::Node),
            other => Err(UsageQueryError::InvalidGrouping(
                other.chars().take(SINCE_CHARS_MAX).collect(),
            )),
        }
    }
}

/// A usage query that cannot be answered as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageQueryError {
    /// `since` is not a duration like `30m`, `12h`, `1d` or `7d`
    /// (`INVALID_SINCE`).
    #[error("`{0}` is not a duration like 30m, 12h, 1d or 7d")]
    InvalidSince(String),
    /// `since` reaches further back than [`USAGE_SINCE_MAX`]
    /// (`SINCE_TOO_LONG`).
    #[error("`{0}` is longer than the 366 days a usage query may cover")]
    SinceTooLong(String),
    /// `by` is neither `agent` nor `node` (`INVALID_GROUPING`).
    #[error("`{0}` is not a grouping; use `agent` or `node`")]
    InvalidGrouping(String),
}

impl UsageQueryError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            UsageQueryError::InvalidSince(_) => "INVALID_SINCE",
            UsageQueryError::SinceTooLong(_) => "SINCE_TOO_LONG",
            UsageQueryError::InvalidGrouping(_) => "INVALID_GROUPING",
        }
    }
}

/// Parses a `since` window: a positive whole number and a unit, `m`
/// (minutes), `h` (hours) or `d` (days), at most [`USAGE_SINCE_MAX`].
pub fn parse_since(text: &str) -> Result<Duration, UsageQueryError> {
    let shown = || text.chars().take(SINCE_CHARS_MAX).collect::<String>();
    let invalid = || UsageQueryError::InvalidSince(shown().escape_debug().to_string());
    if text.is_empty() || text.chars().count() > SINCE_CHARS_MAX {
        return Err(invalid());
    }
    let split = text
        .find(|ch: char| !ch.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| invalid())?;
    let unit_secs: u64 = match unit {
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return Err(invalid()),
    };
    if value == 0 {
        return Err(invalid());
    }
    let secs = value
        .checked_mul(unit_secs)
        .ok_or_else(|| UsageQueryError::SinceTooLong(shown()))?;
    let window = Duration::from_secs(secs);
    if window > USAGE_SINCE_MAX {
        return Err(UsageQueryError::SinceTooLong(shown()));
    }
    Ok(window)
}

/// The query string of `GET /v1/usage`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// The window, `30m`, `12h`, `1d` (default) or `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// `agent` or `node` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The answer of `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// The window's start, unix ms (flights that ended at or after it).
    pub since_ms: u64,
    /// How the rows are totalled.
    pub by: UsageGrouping,
    /// One row per agent or node, most flights first.
    pub rows: Vec<UsageTotalRow>,
    /// Every row summed.
    pub total: UsageSum,
    /// Members that did not answer (so their flights are not counted).
    pub missing: Vec<MissingMember>,
    /// Members whose answer left agents out (more than a report holds).
    pub truncated: Vec<String>,
}

/// One row of [`UsageTotals`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotalRow {
    /// The agent instance, or the node's name.
    pub key: String,
    /// The node id that ran the flights.
    pub node_id: String,
    /// Its figures.
    #[serde(flatten)]
    pub sum: UsageSum,
}

/// Flights and what they used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageSum {
    /// Flights that ended in the window.
    pub flights: u64,
    /// Of those, the failed ones.
    pub failed: u64,
    /// Their tokens and cost (a cost when any flight reported one).
    pub usage: Usage,
}

impl UsageSum {
    /// `self` and `other` together, saturating.
    pub fn plus(self, other: UsageSum) -> UsageSum {
        UsageSum {
            flights: self.flights.saturating_add(other.flights),
            failed: self.failed.saturating_add(other.failed),
            usage: self.usage.plus(other.usage),
        }
    }
}

/// A member whose flights are not in the totals, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingMember {
    /// Its node id.
    pub node_id: String,
    /// Its name.
    pub name: String,
    /// Why no answer came (`not connected`, a timeout, an older broker's
    /// refusal).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_minutes_hours_and_days() {
        assert_eq!(parse_since("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_since("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_since("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_since("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_since("366d").unwrap(), USAGE_SINCE_MAX);
    }

    #[test]
    fn bad_since_words_get_typed_errors() {
        for bad in [
            "", "d", "1", "1w", "1.5d", "-1d", "0d", "1 d", "d1", "1dd", "１d", "1\u{1b}d",
        ] {
            let err = parse_since(bad).unwrap_err();
            assert_eq!(err.code(), "INVALID_SINCE", "{bad:?}");
            assert!(!err.to_string().contains('\u{1b}'));
        }
        assert_eq!(
            parse_since(&"9".repeat(40)).unwrap_err().code(),
            "INVALID_SINCE"
        );
        for long in ["367d", "9000h", "99999999999999d"] {
            assert_eq!(
                parse_since(long).unwrap_err().code(),
                "SINCE_TOO_LONG",
                "{long}"
            );
        }
    }

    #[test]
    fn groupings_are_two_words() {
        assert_eq!(UsageGrouping::parse("agent").unwrap(), UsageGrouping::Agent);
        assert_eq!(UsageGrouping::parse("node").unwrap(), UsageGrouping::Node);
        assert_eq!(
            UsageGrouping::parse("team").unwrap_err().code(),
            "INVALID_GROUPING"
        );
    }

    #[test]
    fn totals_json_has_rows_total_and_missing() {
        let sum = UsageSum {
            flights: 2,
            failed: 1,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 4,
                cached_tokens: 0,
                cost_micro_usd: Some(25),
            },
        };
        let totals = UsageTotals {
            since_ms: 5,
            by: UsageGrouping::Node,
            rows: vec![UsageTotalRow {
                key: "devbox".into(),
                node_id: "n".into(),
                sum,
            }],
            total: sum,
            missing: vec![MissingMember {
                node_id: "m".into(),
                name: "laptop".into(),
                reason: "not connected".into(),
            }],
            truncated: Vec::new(),
        };
        let json = serde_json::to_string(&totals).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"since_ms":5,"by":"node","rows":[{"key":"devbox","node_id":"n","flights":2,"#,
                r#""failed":1,"usage":{"input_tokens":10,"output_tokens":4,"cached_tokens":0,"#,
                r#""cost_micro_usd":25}}],"total":{"flights":2,"failed":1,"usage":{"input_tokens":10,"#,
                r#""output_tokens":4,"cached_tokens":0,"cost_micro_usd":25}},"missing":[{"node_id":"m","#,
                r#""name":"laptop","reason":"not connected"}],"truncated":[]}"#
            )
        );
        assert_eq!(serde_json::from_str::<UsageTotals>(&json).unwrap(), totals);
    }
}
