//! Google Gemini CLI (`gemini`). The terminal runs the interactive TUI;
//! turns run `gemini --output-format stream-json --prompt=<prompt>`.
//!
//! JSONL events: `init` (`session_id`, `model`), `message` (`role`,
//! `content`, `delta`), `tool_use` (`tool_name`, `parameters`),
//! `tool_result` (`status`, `output`), `error` (`severity`, `message`;
//! not fatal) and one closing `result` (`status`: `success` or `error`,
//! with `error.message`).

use scout_mesh::lifecycle::Harness;
use serde_json::Value;

use super::patterns::{ScreenMarkers, find_any};
use super::{
    Adapter, AgentEnv, AuthStatus, FailureKind, Invocation, ScreenState, ScreenView,
    StructuredEvent, TurnStyle, program_and_args,
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
    "Do you trust this folder?",
];

const BUSY_MARKERS: &[&str] = &["esc to cancel"];

const READY_MARKERS: &[&str] = &["Type your message or @path/to/file", "Type your message"];

const SCREEN: ScreenMarkers = ScreenMarkers {
    login: LOGIN_MARKERS,
    question: QUESTION_MARKERS,
    busy: BUSY_MARKERS,
    ready: READY_MARKERS,
};

const AUTH_FAILURE_MARKERS: &[&str] = &[
    "Please set an Auth method",
    "GEMINI_API_KEY",
    "API key not valid",
    "UNAUTHENTICATED",
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

    fn invocation(&self, prompt: &str, _resume: Option<&str>) -> Option<Invocation> {
        // `--prompt=<text>` keeps a prompt that starts with `-` from being
        // read as a flag.
        Some(Invocation {
            argv: vec![
                self.program.clone(),
                "--output-format".to_owned(),
                "stream-json".to_owned(),
                format!("--prompt={prompt}"),
            ],
            stdin: None,
        })
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
                if event["status"] == "success" {
                    vec![StructuredEvent::Completed { result: None }]
                } else {
                    let message = event["error"]["message"]
                        .as_str()
                        .unwrap_or("the turn failed")
                        .to_owned();
                    vec![StructuredEvent::Failed {
                        kind: self.classify_failure(&message),
                        message,
                    }]
                }
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

    fn install_hint(&self) -> &'static str {
        "npm install -g @google/gemini-cli"
    }

    fn login_hint(&self) -> &'static str {
        "run `gemini` and choose a login, or set GEMINI_API_KEY"
    }
}
