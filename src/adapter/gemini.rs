//! Google Gemini CLI (`gemini`, flags as of 0.61). The terminal runs the
//! interactive TUI; turns run `gemini --skip-trust --approval-mode yolo
//! --output-format stream-json [--resume <session id>] --prompt=<prompt>`.
//!
//! JSONL events: `init` (`session_id`, `model`), `message` (`role`,
//! `content`, `delta`), `tool_use` (`tool_name`, `parameters`),
//! `tool_result` (`status`, `output`), `error` (`severity`, `message`;
//! not fatal) and one closing `result` (`status`: `success` or `error`,
//! with `error.message`, and `stats` with the run's token counts).
//!
//! The session id of `init` continues the conversation next turn
//! (`--resume` takes it as well as `latest` or an index). A run that exits
//! before its `result` says why through its exit code ([`EXIT_CODES`]).

use scout_mesh::lifecycle::Harness;
use serde_json::Value;

use super::patterns::{ScreenMarkers, find_any};
use super::{
    Adapter, AgentEnv, AuthStatus, FailureKind, Invocation, ScreenState, ScreenView,
    StructuredEvent, TurnStyle, TurnUsage, program_and_args,
};

const LOGIN_MARKERS: &[&str] = &[
    "How would you like to authenticate",
    "Login with Google",
    "Waiting for auth",
    "Please set an Auth method",
];

const QUESTION_MARKERS: &[&str] = &[
    "Allow execution",
    "Apply this change?",
    "Do you want to proceed?",
    // The folder-trust dialog the TUI shows in a folder nobody trusted yet;
    // it waits there, under a prompt line the screen may already show.
    "Do you trust the files in this folder?",
    "Do you trust the following folders",
];

const BUSY_MARKERS: &[&str] = &["esc to cancel"];

const READY_MARKERS: &[&str] = &["Type your message or @path/to/file", "Type your message"];

const SCREEN: ScreenMarkers = ScreenMarkers {
    login: LOGIN_MARKERS,
    question: QUESTION_MARKERS,
    busy: BUSY_MARKERS,
    ready: READY_MARKERS,
};

/// `--skip-trust`: trust the working directory for this run.
const SKIP_TRUST: &str = "--skip-trust";
/// `--approval-mode <default|auto_edit|yolo|plan>`.
const APPROVAL_MODE: &str = "--approval-mode";
/// `--output-format <text|json|stream-json>`.
const OUTPUT_FORMAT: &str = "--output-format";
/// `--resume <session id>`.
const RESUME: &str = "--resume";
/// `--prompt <text>`: run headless with this prompt.
const PROMPT: &str = "--prompt";

/// What Gemini CLI prints when `--resume` names a session it does not have.
const RESUME_REFUSED: &str = "Error resuming session";

/// Every flag the adapter passes, so a test can check that the pinned
/// CLI's `--help` still lists each of them.
pub const FLAGS: &[&str] = &[SKIP_TRUST, APPROVAL_MODE, OUTPUT_FORMAT, RESUME, PROMPT];

const AUTH_FAILURE_MARKERS: &[&str] = &[
    "Please set an Auth method",
    "GEMINI_API_KEY",
    "API key not valid",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "When using Gemini API, you must specify",
];

/// The exit codes Gemini CLI documents (`FatalError` subclasses and
/// `ExitCodes` in its core package), with what they mean and the kind of
/// failure each is.
pub const EXIT_CODES: &[(i32, FailureKind, &str)] = &[
    (
        41,
        FailureKind::AuthRequired,
        "authentication failed: no usable login or API key (set GEMINI_API_KEY, or run `gemini` and choose a login)",
    ),
    (
        42,
        FailureKind::Harness,
        "invalid input: the prompt or a flag was refused (for example a `--resume` session that no longer exists)",
    ),
    (44, FailureKind::Harness, "the sandbox could not be set up"),
    (
        52,
        FailureKind::Harness,
        "invalid configuration: a settings.json or a flag is malformed",
    ),
    (
        53,
        FailureKind::Harness,
        "the session reached its turn limit (`model.maxSessionTurns`)",
    ),
    (
        54,
        FailureKind::Harness,
        "a tool failed in a way that ends the run",
    ),
    (
        55,
        FailureKind::Harness,
        "the working directory is not trusted: headless runs need `--skip-trust`, GEMINI_CLI_TRUST_WORKSPACE=true, or the folder trusted in the interactive TUI",
    ),
    (130, FailureKind::Harness, "the run was cancelled"),
];

/// Gemini CLI.
#[derive(Debug, Clone)]
pub struct GeminiAdapter {
    program: String,
    args: Vec<String>,
}

impl GeminiAdapter {
    /// The adapter, running `command` (default `gemini`) on the terminal.
    pub fn new(command: Option<Vec<String>>) -> GeminiAdapter {
        let (program, args) = program_and_args(command, "gemini");
        GeminiAdapter { program, args }
    }
}

impl Adapter for GeminiAdapter {
    /// Gemini's dialogs are numbered lists with `1. Yes, allow once` first, chosen by their digit; Escape cancels.
    fn answer_keys(&self, _question: &str, yes: bool) -> &'static [u8] {
        if yes { b"1" } else { b"\x1b" }
    }

    fn harness(&self) -> Harness {
        Harness::Gemini
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
            "GEMINI_API_KEY",
            "GOOGLE_API_KEY",
            "GOOGLE_GENAI_USE_VERTEXAI",
            "GOOGLE_GENAI_USE_GCA",
        ];
        if keys.iter().any(|key| env.var(key).is_some()) {
            return AuthStatus::LoggedIn;
        }
        let Some(home) = env.home() else {
            return AuthStatus::Unknown;
        };
        if home.join(".gemini").join("oauth_creds.json").is_file() {
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
            // Headless runs in a folder the person never trusted in the
            // TUI exit 55 before reading the prompt. The agent's workdir is
            // the one its owner chose when spawning or registering it; that
            // choice is the trust this flag grants, for this run only (the
            // folder's own `.gemini` settings, hooks and MCP servers load,
            // as they would for the owner typing `gemini` there).
            SKIP_TRUST.to_owned(),
            // A headless run has nobody to ask: in `default` mode Gemini
            // CLI leaves every tool that needs a confirmation (shell,
            // edits, web fetch) out of the model's tools, so a routed turn
            // could only read. Scout's approvals for Gemini go through its
            // ACP mode (`session/request_permission`); a structured turn
            // acts with the reach its owner gave the agent when spawning
            // it in this workdir, as a person at the terminal would with
            // `--yolo`.
            APPROVAL_MODE.to_owned(),
            "yolo".to_owned(),
            OUTPUT_FORMAT.to_owned(),
            "stream-json".to_owned(),
        ];
        if let Some(session_id) = resume {
            // The id of the `init` event of an earlier run; `--resume`
            // takes a session id as well as `latest` or an index.
            argv.push(RESUME.to_owned());
            argv.push(session_id.to_owned());
        }
        // `--prompt=<text>` keeps a prompt that starts with `-` from being
        // read as a flag.
        argv.push(format!("{PROMPT}={prompt}"));
        Some(Invocation { argv, stdin: None })
    }

    fn parse_line(&self, line: &str) -> Vec<StructuredEvent> {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            return Vec::new();
        };
        match event["type"].as_str() {
            Some("init") => event["session_id"]
                .as_str()
                .map(|id| vec![StructuredEvent::Session(id.to_owned())])
                .unwrap_or_default(),
            Some("message") if event["role"] == "assistant" => {
                let content = event["content"].as_str().unwrap_or("").to_owned();
                if event["delta"].as_bool().unwrap_or(false) {
                    vec![StructuredEvent::TextDelta(content)]
                } else {
                    vec![StructuredEvent::Message(content)]
                }
            }
            Some("tool_use") => {
                let name = event["tool_name"].as_str().unwrap_or("tool");
                let detail = ["command", "file_path", "absolute_path", "path"]
                    .iter()
                    .find_map(|key| event["parameters"][*key].as_str());
                vec![StructuredEvent::Tool(match detail {
                    Some(detail) => format!("{name}: {detail}"),
                    None => name.to_owned(),
                })]
            }
            Some("error") => event["message"]
                .as_str()
                .map(|message| vec![StructuredEvent::Notice(message.to_owned())])
                .unwrap_or_default(),
            Some("result") => {
                let mut events: Vec<StructuredEvent> = usage(&event["stats"])
                    .map(StructuredEvent::Usage)
                    .into_iter()
                    .collect();
                if event["status"] == "success" {
                    events.push(StructuredEvent::Completed { result: None });
                } else {
                    let message = event["error"]["message"]
                        .as_str()
                        .unwrap_or("the turn failed")
                        .to_owned();
                    events.push(StructuredEvent::Failed {
                        kind: self.classify_failure(&message),
                        message,
                    });
                }
                events
            }
            _ => Vec::new(),
        }
    }

    fn classify_failure(&self, text: &str) -> FailureKind {
        if find_any(text, AUTH_FAILURE_MARKERS).is_some() {
            FailureKind::AuthRequired
        } else {
            FailureKind::Harness
        }
    }

    fn resume_only_completed(&self) -> bool {
        // A run whose request failed may save no session (seen with 401,
        // 403 and 429 answers), and `--resume` of it then exits 42.
        true
    }

    fn resume_refused(&self, text: &str) -> bool {
        // `--resume` of a session its retention cleanup (30 days by
        // default) or a person deleted: exit 42 with this sentence.
        text.contains(RESUME_REFUSED)
    }

    fn exit_meaning(&self, code: i32) -> Option<(FailureKind, &'static str)> {
        EXIT_CODES
            .iter()
            .find(|(known, _, _)| *known == code)
            .map(|(_, kind, meaning)| (*kind, *meaning))
    }

    fn install_hint(&self) -> &'static str {
        "npm install -g @google/gemini-cli"
    }

    fn login_hint(&self) -> &'static str {
        "run `gemini` and choose a login, or set GEMINI_API_KEY"
    }
}

/// The token counts of a `result` event's `stats` (the whole run: every
/// model request of the turn, tool rounds included). `input_tokens`
/// counts cached ones too, as [`TurnUsage`] does. `None` without stats.
fn usage(stats: &Value) -> Option<TurnUsage> {
    let count = |key: &str| stats[key].as_u64();
    let input_tokens = count("input_tokens")?;
    Some(TurnUsage {
        input_tokens,
        output_tokens: count("output_tokens").unwrap_or(0),
        cached_tokens: count("cached").unwrap_or(0),
        cost_micro_usd: None,
    })
}
