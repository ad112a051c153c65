//! Claude Code (`claude`). The terminal runs the interactive TUI; turns run
//! `claude -p --output-format stream-json --verbose` with the prompt on
//! standard input, continuing the same conversation with `--resume`.
//!
//! Stream-json lines: `{"type":"system","subtype":"init","session_id":…}`,
//! `{"type":"assistant","message":{"content":[{"type":"text","text":…},
//! {"type":"tool_use","name":…,"input":…}]}}`, optional partial messages
//! (`{"type":"stream_event","event":{"type":"content_block_delta",
//! "delta":{"type":"text_delta","text":…}}}`), and one closing
//! `{"type":"result","subtype":"success"|"error_…","is_error":…,"result":…}`.

use scout_mesh::lifecycle::Harness;
use serde_json::Value;

use super::patterns::{ScreenMarkers, find_any};
use super::{
    Adapter, AgentEnv, AuthStatus, FailureKind, Invocation, ScreenState, ScreenView,
    StructuredEvent, TurnStyle, TurnUsage, program_and_args,
};

/// Screen text of the login flow (first run, `/login`, an expired key).
const LOGIN_MARKERS: &[&str] = &[
    "Select login method",
    "Browser didn't open",
    "Paste code here",
    "Invalid API key",
    "Please run /login",
    "OAuth error",
];

/// Screen text of a permission or choice prompt.
const QUESTION_MARKERS: &[&str] = &[
    "Do you want to proceed?",
    "Do you want to make this edit",
    "Do you want to create",
    "Do you want to allow",
    "Do you trust the files in this folder?",
];

/// Screen text while a turn runs.
const BUSY_MARKERS: &[&str] = &["esc to interrupt"];

/// Screen text of the input box waiting for a prompt.
const READY_MARKERS: &[&str] = &["? for shortcuts", "/help for help", "│ > ", "│ >"];

const SCREEN: ScreenMarkers = ScreenMarkers {
    login: LOGIN_MARKERS,
    question: QUESTION_MARKERS,
    busy: BUSY_MARKERS,
    ready: READY_MARKERS,
};

/// Failure text that means the CLI needs a login.
const AUTH_FAILURE_MARKERS: &[&str] = &[
    "Invalid API key",
    "/login",
    "not logged in",
    "Not logged in",
    "authentication_error",
    "OAuth token has expired",
];

/// Claude Code.
#[derive(Debug, Clone)]
pub struct ClaudeAdapter {
    program: String,
    args: Vec<String>,
}

impl ClaudeAdapter {
    /// The adapter, running `command` (default `claude`) on the terminal.
    pub fn new(command: Option<Vec<String>>) -> ClaudeAdapter {
        let (program, args) = program_and_args(command, "claude");
        ClaudeAdapter { program, args }
    }
}

impl Adapter for ClaudeAdapter {
    fn harness(&self) -> Harness {
        Harness::Claude
    }

    fn program(&self) -> &str {
        &self.program
    }

    fn interactive_argv(&self) -> Vec<String> {
        let mut argv = vec![self.program.clone()];
        argv.extend(self.args.iter().cloned());
        argv
    }

    fn interactive_resume_argv(&self, session_id: &str) -> Option<Vec<String>> {
        let mut argv = self.interactive_argv();
        argv.extend(["--resume", session_id].map(str::to_owned));
        Some(argv)
    }

    fn auth_status(&self, env: &AgentEnv) -> AuthStatus {
        let keys = [
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
            "CLAUDE_CODE_OAUTH_TOKEN",
            "CLAUDE_CODE_USE_BEDROCK",
            "CLAUDE_CODE_USE_VERTEX",
        ];
        if keys.iter().any(|key| env.var(key).is_some()) {
            return AuthStatus::LoggedIn;
        }
        let Some(home) = env.home() else {
            return AuthStatus::Unknown;
        };
        let config_dir = env
            .var("CLAUDE_CONFIG_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| home.join(".claude"));
        if config_dir.join(".credentials.json").is_file() {
            return AuthStatus::LoggedIn;
        }
        // On macOS the token is in the keychain; the account record in
        // ~/.claude.json is what shows a login happened.
        let account = std::fs::read_to_string(home.join(".claude.json"))
            .is_ok_and(|text| text.contains("\"oauthAccount\""));
        if account {
            AuthStatus::LoggedIn
        } else {
            AuthStatus::LoggedOut
        }
    }

    fn classify(&self, view: ScreenView<'_>) -> ScreenState {
        SCREEN.classify(view.text)
    }

    fn turn_style(&self) -> TurnStyle {
        TurnStyle::Structured
    }

    fn invocation(&self, prompt: &str, resume: Option<&str>) -> Option<Invocation> {
        let mut argv = vec![
            self.program.clone(),
            "-p".to_owned(),
            "--output-format".to_owned(),
            "stream-json".to_owned(),
            "--verbose".to_owned(),
        ];
        if let Some(session_id) = resume {
            argv.push("--resume".to_owned());
            argv.push(session_id.to_owned());
        }
        Some(Invocation {
            argv,
            stdin: Some(prompt.to_owned()),
        })
    }

    fn parse_line(&self, line: &str) -> Vec<StructuredEvent> {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        match event["type"].as_str() {
            Some("system") if event["subtype"] == "init" => {
                if let Some(id) = event["session_id"].as_str() {
                    events.push(StructuredEvent::Session(id.to_owned()));
                }
            }
            Some("assistant") => {
                let mut text = String::new();
                for block in event["message"]["content"].as_array().into_iter().flatten() {
                    match block["type"].as_str() {
                        Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
                        Some("tool_use") => {
                            events.push(StructuredEvent::Tool(tool_line(block)));
                        }
                        _ => {}
                    }
                }
                if !text.is_empty() {
                    events.insert(0, StructuredEvent::Message(text));
                }
            }
            Some("stream_event") => {
                let delta = &event["event"]["delta"];
                if event["event"]["type"] == "content_block_delta"
                    && delta["type"] == "text_delta"
                    && let Some(text) = delta["text"].as_str()
                {
                    events.push(StructuredEvent::TextDelta(text.to_owned()));
                }
            }
            Some("result") => {
                // Usage first: the session records it before the turn ends.
                if let Some(usage) = result_usage(&event) {
                    events.push(StructuredEvent::Usage(usage));
                }
                let result = event["result"].as_str().map(str::to_owned);
                let is_error = event["is_error"].as_bool().unwrap_or(false)
                    || event["subtype"]
                        .as_str()
                        .is_some_and(|sub| sub != "success");
                if is_error {
                    let message = result
                        .or_else(|| event["subtype"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "the turn failed".to_owned());
                    events.push(StructuredEvent::Failed {
                        kind: self.classify_failure(&message),
                        message,
                    });
                } else {
                    events.push(StructuredEvent::Completed { result });
                }
            }
            _ => {}
        }
        events
    }

    fn classify_failure(&self, text: &str) -> FailureKind {
        if find_any(text, AUTH_FAILURE_MARKERS).is_some() {
            FailureKind::AuthRequired
        } else {
            FailureKind::Harness
        }
    }

    fn install_hint(&self) -> &'static str {
        "npm install -g @anthropic-ai/claude-code"
    }

    fn login_hint(&self) -> &'static str {
        "run `claude` and log in (or `claude auth`), or set ANTHROPIC_API_KEY"
    }
}

/// The tokens and cost of a `result` event: `usage.input_tokens` counts
/// only fresh input, so the cache's tokens (written and read) are added to
/// it, and the tokens read from the cache are the cached ones;
/// `total_cost_usd` in micro-USD. `None` when the event has no usage.
fn result_usage(event: &Value) -> Option<TurnUsage> {
    let usage = event.get("usage").filter(|usage| usage.is_object())?;
    let count = |key: &str| usage[key].as_u64().unwrap_or(0);
    let cached = count("cache_read_input_tokens");
    let cost_micro_usd = event["total_cost_usd"]
        .as_f64()
        .filter(|cost| cost.is_finite() && *cost >= 0.0)
        // Saturates at u64::MAX for absurd costs; the routing core clamps.
        .map(|cost| (cost * 1_000_000.0).round() as u64);
    Some(TurnUsage {
        input_tokens: count("input_tokens")
            .saturating_add(count("cache_creation_input_tokens"))
            .saturating_add(cached),
        output_tokens: count("output_tokens"),
        cached_tokens: cached,
        cost_micro_usd,
    })
}

/// `Bash: ls -la`, `Edit: src/main.rs`, or the tool's name alone.
fn tool_line(block: &Value) -> String {
    let name = block["name"].as_str().unwrap_or("tool");
    let input = &block["input"];
    let detail = ["command", "file_path", "path", "pattern", "url"]
        .iter()
        .find_map(|key| input[*key].as_str());
    match detail {
        Some(detail) => format!("{name}: {detail}"),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    /// The result event's usage: cache tokens count as input, the ones
    /// read from the cache as cached, the cost in micro-USD.
    #[test]
    fn a_result_reports_its_usage_before_the_end() {
        let line = r#"{"type":"result","subtype":"success","is_error":false,"result":"ok","session_id":"s","total_cost_usd":0.0042,"usage":{"input_tokens":3,"cache_creation_input_tokens":10,"cache_read_input_tokens":100,"output_tokens":7}}"#;
        let claude = ClaudeAdapter::new(None);
        assert_eq!(
            claude.parse_line(line),
            vec![
                StructuredEvent::Usage(TurnUsage {
                    input_tokens: 113,
                    output_tokens: 7,
                    cached_tokens: 100,
                    cost_micro_usd: Some(4_200),
                }),
                StructuredEvent::Completed {
                    result: Some("ok".to_owned())
                },
            ]
        );
        let hostile = r#"{"type":"result","subtype":"success","result":"ok","total_cost_usd":-1,"usage":{"input_tokens":"many","output_tokens":1e300}}"#;
        let StructuredEvent::Usage(usage) = &claude.parse_line(hostile)[0] else {
            panic!("no usage");
        };
        assert_eq!(usage.cost_micro_usd, None);
        assert_eq!(usage.input_tokens, 0);
    }
}
