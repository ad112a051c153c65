//! Claude Code (`claude`, pinned at 2.1.332 in `scripts/agent-clis/`).
//!
//! The terminal runs the interactive TUI for the person; each turn runs
//! `claude -p --output-format stream-json --verbose
//! --include-partial-messages --permission-mode acceptEdits` with the prompt
//! on standard input, continuing the conversation of an earlier turn with
//! `--resume <session id>` (the id comes from the run's `system`/`init`
//! event; Scout keeps one per conversation). Every flag used is listed in
//! [`CLI_FLAGS_USED`], which a test checks against the pinned CLI's
//! `--help`.
//!
//! What the real CLI prints on stdout, one JSON object a line:
//! - `{"type":"system","subtype":"init","session_id":…,"tools":[…],
//!   "permissionMode":…,"apiKeySource":…}` first;
//! - `{"type":"system","subtype":"api_retry","attempt":…,"error_status":…}`
//!   while it retries a failed model request (429, 5xx, a dropped
//!   connection), `CLAUDE_CODE_MAX_RETRIES` times at most;
//! - `{"type":"stream_event","event":{…}}` with the model's raw stream
//!   (`content_block_delta` / `text_delta` is the answer as it arrives);
//! - `{"type":"assistant","message":{"content":[{"type":"text",…},
//!   {"type":"tool_use","name":"Bash","input":{"command":…}}],…}}` per model
//!   message; an API failure arrives as a synthetic one
//!   (`"model":"<synthetic>"`, `"is_api_error_message":true`, `"error":
//!   "authentication_failed"|…`) whose text is what the CLI would show;
//! - `{"type":"user","message":{"content":[{"type":"tool_result",…}]}}`
//!   with each tool's result;
//! - one closing `{"type":"result","subtype":"success"|"error_…",
//!   "is_error":…,"result":…,"usage":{"input_tokens","output_tokens",
//!   "cache_read_input_tokens","cache_creation_input_tokens",…},
//!   "total_cost_usd":…,"permission_denials":[…]}`. A failed turn can say
//!   `"subtype":"success"` with `"is_error":true` (no login: `"result":"Not
//!   logged in · Please run /login"`), so `is_error` decides. `usage` sums
//!   every model request of the turn; `input_tokens` there excludes the
//!   cached part, which Scout adds back (its input count includes cached
//!   tokens).
//!
//! The interactive TUI on a fresh account stops at its first-run setup.
//! Without `"hasCompletedOnboarding": true` in `~/.claude.json` (under
//! `CLAUDE_CONFIG_DIR` when set) it checks that `api.anthropic.com` is
//! reachable, whatever `ANTHROPIC_BASE_URL` says, and where it is not it
//! prints "Unable to connect to Anthropic services" and exits 1; the
//! session then reports `ONBOARDING_REQUIRED`, not a bare exit code. After
//! onboarding it asks, once per folder, whether the folder is trusted
//! (`projects.<dir>.hasTrustDialogAccepted`) and, for a key in
//! `ANTHROPIC_API_KEY`, whether to use it (`customApiKeyResponses.approved`
//! holds the key's last 20 characters); both show as questions. `-p` runs
//! skip all three.

use scout_mesh::lifecycle::Harness;
use serde_json::Value;

use super::patterns::{ScreenMarkers, find_any};
use super::{
    Adapter, AgentEnv, AuthStatus, FailureKind, Invocation, ScreenState, ScreenView,
    StructuredEvent, TurnStyle, TurnUsage, program_and_args,
};

/// Every flag (and flag value) the adapter passes to `claude`; a test
/// checks each against the pinned CLI's `--help`, so an upgrade that drops
/// one fails there and not in a user's turn.
pub const CLI_FLAGS_USED: &[&str] = &[
    "-p",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
    "--mcp-config",
    "--allowedTools",
    "--permission-prompt-tool",
    "--permission-mode",
    PERMISSION_MODE,
    "--resume",
];

/// The permission rule allowing every tool of the Scout MCP server
/// (`mcp__scout__ask`, …).
pub const MCP_TOOLS_ALLOWED: &str = "mcp__scout";

/// The Scout server's tool that answers Claude Code's permission prompts
/// in a structured turn (`--permission-prompt-tool`).
pub const PERMISSION_PROMPT_TOOL: &str = "mcp__scout__permission";

/// The permission mode of a structured turn. A routed turn has no person
/// at its terminal, and `-p` denies whatever would prompt unless a
/// permission prompt tool answers ([`PERMISSION_PROMPT_TOOL`], given
/// whenever the Scout server is). `acceptEdits` lets the agent edit files
/// and run commands that change files inside its working directory (what
/// the work it is sent needs), runs read-only commands as every mode does,
/// and asks about anything that reaches outside it: a person approves or
/// denies it from any machine of the mesh (a denial is reported in the
/// result's `permission_denials`). `bypassPermissions` would run anything, and the
/// CLI refuses it for root; `auto` asks the model about each tool call,
/// one more model request per call; `default` and `dontAsk` deny the edits
/// the agent was asked to make.
pub const PERMISSION_MODE: &str = "acceptEdits";

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
    "Is this a project you created or one you trust?",
    "Do you want to use this API key?",
];

/// Screen text while a turn runs.
const BUSY_MARKERS: &[&str] = &["esc to interrupt"];

/// Screen text of the input box waiting for a prompt.
const READY_MARKERS: &[&str] = &[
    "? for shortcuts",
    "shift+tab to cycle",
    "/help for help",
    "│ > ",
    "│ >",
];

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
    "Not logged in",
];

/// Text of the first-run setup stopping the CLI: the onboarding's
/// reachability check of `api.anthropic.com` failed, and the CLI exits 1.
const ONBOARDING_MARKERS: &[&str] = &["Unable to connect to Anthropic services"];

/// Claude Code.
#[derive(Debug, Clone)]
pub struct ClaudeAdapter {
    program: String,
    args: Vec<String>,
    /// Flags registering the Scout MCP server, in every run of the CLI.
    mcp_args: Vec<String>,
}

impl ClaudeAdapter {
    /// The adapter, running `command` (default `claude`) on the terminal.
    pub fn new(command: Option<Vec<String>>) -> ClaudeAdapter {
        let (program, args) = program_and_args(command, "claude");
        ClaudeAdapter {
            program,
            args,
            mcp_args: Vec::new(),
        }
    }

    /// The adapter giving the CLI the Scout MCP server, when there is one.
    pub fn with_mcp(mut self, mcp: Option<&crate::adapter::ScoutMcp>) -> ClaudeAdapter {
        self.mcp_args = mcp
            .map(crate::adapter::ScoutMcp::claude_args)
            .unwrap_or_default();
        self
    }
}

impl Adapter for ClaudeAdapter {
    /// Claude Code's dialogs list numbered options with yes first (`1. Yes`) and take the digit as a choice; Escape refuses, as `No, and tell Claude what to do differently (esc)` says.
    fn answer_keys(&self, _question: &str, yes: bool) -> &'static [u8] {
        if yes { b"1" } else { b"\x1b" }
    }

    fn harness(&self) -> Harness {
        Harness::Claude
    }

    fn program(&self) -> &str {
        &self.program
    }

    fn interactive_argv(&self) -> Vec<String> {
        let mut argv = vec![self.program.clone()];
        argv.extend(self.mcp_args.iter().cloned());
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
        let config_dir = env.var("CLAUDE_CONFIG_DIR").map(std::path::PathBuf::from);
        let credentials_dir = config_dir.clone().unwrap_or_else(|| home.join(".claude"));
        if credentials_dir.join(".credentials.json").is_file() {
            return AuthStatus::LoggedIn;
        }
        // On macOS the token is in the keychain; the account record in
        // `.claude.json` (in the config dir when one is set, else in the
        // home directory) is what shows a login happened.
        let account_file = config_dir.unwrap_or(home).join(".claude.json");
        let account = std::fs::read_to_string(account_file)
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
            "--include-partial-messages".to_owned(),
            "--permission-mode".to_owned(),
            PERMISSION_MODE.to_owned(),
        ];
        if !self.mcp_args.is_empty() {
            // No person answers a prompt in a routed turn: the Scout
            // server's tools are allowed outright, as the agent's own way to
            // reach the mesh. (Variadic: the next argument is a flag.)
            argv.push("--allowedTools".to_owned());
            argv.push(MCP_TOOLS_ALLOWED.to_owned());
            // What the permission mode would refuse is asked of a person
            // instead, through the Scout server: an approval anyone in the
            // mesh may answer while the turn waits.
            argv.push("--permission-prompt-tool".to_owned());
            argv.push(PERMISSION_PROMPT_TOOL.to_owned());
        }
        argv.extend(self.mcp_args.iter().cloned());
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
            Some("system") if event["subtype"] == "api_retry" => {
                let status = event["error_status"]
                    .as_u64()
                    .map_or_else(|| "no status".to_owned(), |status| status.to_string());
                events.push(StructuredEvent::Notice(format!(
                    "a model request failed ({status}, {}); retry {} of {}",
                    event["error"].as_str().unwrap_or("unknown"),
                    event["attempt"],
                    event["max_retries"]
                )));
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
        if find_any(text, ONBOARDING_MARKERS).is_some() {
            FailureKind::OnboardingRequired
        } else if find_any(text, AUTH_FAILURE_MARKERS).is_some() {
            FailureKind::AuthRequired
        } else {
            FailureKind::Harness
        }
    }

    fn install_hint(&self) -> &'static str {
        "npm install -g @anthropic-ai/claude-code"
    }

    fn login_hint(&self) -> &'static str {
        "run `claude` and log in with /login (or `claude auth`), or set ANTHROPIC_API_KEY"
    }

    fn onboarding_hint(&self) -> &'static str {
        "run `claude` once in a terminal, as the agent's user and with its HOME, to finish its first-run setup (or set \"hasCompletedOnboarding\": true in ~/.claude.json, or in $CLAUDE_CONFIG_DIR/.claude.json when that is set)"
    }
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

/// Millionths of a US dollar in one dollar.
const MICRO_USD_PER_USD: f64 = 1_000_000.0;

/// The turn's tokens and cost from a `result` event: `usage` sums the
/// turn's model requests, its `input_tokens` without the cached part.
fn result_usage(event: &Value) -> Option<TurnUsage> {
    let usage = event.get("usage").filter(|usage| usage.is_object());
    let cost = event["total_cost_usd"].as_f64();
    if usage.is_none() && cost.is_none() {
        return None;
    }
    let count = |key: &str| usage.and_then(|usage| usage[key].as_u64()).unwrap_or(0);
    let cached_tokens = count("cache_read_input_tokens");
    Some(TurnUsage {
        input_tokens: count("input_tokens")
            .saturating_add(cached_tokens)
            .saturating_add(count("cache_creation_input_tokens")),
        output_tokens: count("output_tokens"),
        cached_tokens,
        // The float-to-integer cast saturates, and a negative or NaN cost
        // (never sent by a sane CLI) becomes no cost.
        cost_micro_usd: cost
            .filter(|cost| cost.is_finite() && *cost >= 0.0)
            .map(|cost| (cost * MICRO_USD_PER_USD).round() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as Claude Code 2.1.332 prints them (fields it adds that the
    /// adapter does not read are trimmed).
    const RETRY: &str = r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":1,"retry_delay_ms":525,"error_status":null,"error":"unknown","session_id":"bc74d7fa"}"#;
    const RESULT: &str = r#"{"duration_api_ms":22,"stop_reason":"end_turn","session_id":"b675e381","total_cost_usd":0.001088,"usage":{"input_tokens":80,"cache_creation_input_tokens":0,"cache_read_input_tokens":40,"output_tokens":30,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard"},"permission_denials":[],"terminal_reason":"completed","is_error":false,"num_turns":1,"subtype":"success","api_error_status":null,"result":"hello","type":"result","duration_ms":111}"#;

    #[test]
    fn the_result_carries_tokens_and_cost_in_micro_usd() {
        let adapter = ClaudeAdapter::new(None);
        assert_eq!(
            adapter.parse_line(RESULT),
            vec![
                StructuredEvent::Usage(TurnUsage {
                    input_tokens: 120,
                    output_tokens: 30,
                    cached_tokens: 40,
                    cost_micro_usd: Some(1088),
                }),
                StructuredEvent::Completed {
                    result: Some("hello".to_owned())
                },
            ]
        );
    }

    #[test]
    fn retries_are_notices_and_a_first_run_exit_needs_onboarding() {
        let adapter = ClaudeAdapter::new(None);
        assert_eq!(
            adapter.parse_line(RETRY),
            vec![StructuredEvent::Notice(
                "a model request failed (no status, unknown); retry 1 of 1".to_owned()
            )]
        );
        let screen = "Welcome to Claude Code v2.1.332\n Unable to connect to Anthropic services\n Failed to connect to api.anthropic.com: ENOTFOUND";
        assert_eq!(
            adapter.classify_failure(screen),
            FailureKind::OnboardingRequired
        );
        assert_eq!(
            adapter.classify_failure("Invalid API key · Fix external API key"),
            FailureKind::AuthRequired
        );
        assert_eq!(
            adapter.classify_failure("API Error: Request rejected (429) · rate limited"),
            FailureKind::Harness
        );
    }
}
