//! Runtime events (`/ws/events`): `agent_started`, `agent_ready`,
//! `agent_stopped`, `agent_error`, `login_required`, `message`, `question`,
//! each sent as `{ "event", "data", "timestamp" }`.

use serde::Serialize;

use crate::env::Env;

/// Events kept for subscribers that fall behind. A subscriber that lags
/// further loses the oldest ones and is told how many.
pub const EVENTS_BUFFER_MAX: usize = 1024;

/// The kinds of runtime event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An agent was spawned: `{ agent }`.
    AgentStarted,
    /// An agent is ready for commands: `{ agent }`.
    AgentReady,
    /// An agent stopped: `{ agent, reason }`.
    AgentStopped,
    /// An agent failed: `{ agent, error: { code, message } }`.
    AgentError,
    /// An agent's CLI needs a login: `{ agent, loginUrl }`.
    LoginRequired,
    /// An agent finished a turn with an answer: `{ message }`.
    Message,
    /// An agent asks a question: `{ agent, question }`.
    Question,
}

/// One runtime event.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeEvent {
    /// What happened.
    pub event: EventKind,
    /// The event's data.
    pub data: serde_json::Value,
    /// When, RFC 3339 in UTC with milliseconds.
    pub timestamp: String,
    /// The agent it is about (for `?agentId=` filters).
    #[serde(skip)]
    pub agent_id: String,
}

impl RuntimeEvent {
    /// An event about `agent_id`, stamped now on `env`'s wall clock.
    pub fn new(
        env: &Env,
        event: EventKind,
        agent_id: &str,
        data: serde_json::Value,
    ) -> RuntimeEvent {
        RuntimeEvent {
            event,
            data,
            timestamp: rfc3339(env.now_unix_ms()),
            agent_id: agent_id.to_owned(),
        }
    }
}

/// Unix milliseconds as `2024-05-01T12:34:56.789Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let millis = unix_ms % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let secs_of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(rfc3339(1_735_689_599_000), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn events_serialize_as_event_data_timestamp() {
        let event = RuntimeEvent::new(
            &Env::system(None),
            EventKind::LoginRequired,
            "agent-1",
            serde_json::json!({"loginUrl": "https://x"}),
        );
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], "login_required");
        assert_eq!(json["data"]["loginUrl"], "https://x");
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(json.get("agent_id").is_none());
    }
}
