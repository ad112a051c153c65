//! OpenAI Codex CLI (`codex`). The terminal runs the interactive TUI; turns
//! run `codex exec --json` with the prompt on standard input (`-`),
//! continuing the same thread with `codex exec --json resume <id> -`.
//!
//! JSONL events: `thread.started` (`thread_id`), `turn.started`,
//! `item.started` / `item.updated` / `item.completed` (an `item` with a
//! `type`: `agent_message` with `text`, `command_execution` with `command`,
//! `file_change`, `reasoning`, ...), `turn.completed` (`usage`),
//! `turn.failed` (`error.message`) and `error` (`message`, possibly retried).

use scout_mesh::lifecycle::Harness;
use serde_json::Value;

use super::patterns::{ScreenMarkers, find_any};
use super::{
    Adapter, AgentEnv, AuthStatus, FailureKind, Invocation, ScreenState, ScreenView,
    StructuredEvent, TurnStyle, program_and_args,
};

const LOGIN_MARKERS: &[&str] = &[
    "Sign in with ChatGPT",
    "Provide your own API key",
    "Finish signing in via your browser",
    "please log in",
];

const QUESTION_MARKERS: &[&str] = &[
    "Would you like to run the following command?",
    "Would you like to make the following edits?",
    "Allow command?",
    "Do you trust the contents of this directory?",
    "Yes, proceed",
];

const BUSY_MARKERS: &[&str] = &["Esc to interrupt", "esc to interrupt"];

const READY_MARKERS: &[&str] = &[
    "To get started, describe a task",
    "? for shortcuts",
    "⏎ send",
    "Ctrl+J newline",
];

const SCREEN: ScreenMarkers = ScreenMarkers {
    login: LOGIN_MARKERS,
    question: QUESTION_MARKERS,
    busy: BUSY_MARKERS,
    ready: READY_MARKERS,
};

const AUTH_FAILURE_MARKERS: &[&str] = &[
    "401 Unauthorized",
    "Not logged in",
    "not logged in",
    "codex login",
    "invalid_api_key",
];

/// Codex CLI.
#[derive(Debug, Clone)]
pub struct CodexAdapter {
    program: String,
    args: Vec<String>,
}

impl CodexAdapter {
    /// The adapter, running `command` (default `codex`) on the terminal.
    pub fn new(command: Option<Vec<String>>) -> CodexAdapter {
        let (program, args) = program_and_args(command, "codex");
        CodexAdapter { program, args }
    }
}

impl Adapter for CodexAdapter {
    fn harness(&self) -> Harness {
        Harness::Codex
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
        argv.extend(["resume", session_id].map(str::to_owned));
        Some(argv)
    }

    fn auth_status(&self, env: &AgentEnv) -> AuthStatus {
        if env.var("OPENAI_API_KEY").is_some() || env.var("CODEX_API_KEY").is_some() {
            return AuthStatus::LoggedIn;
        }
        let codex_home = match env.var("CODEX_HOME") {
            Some(dir) => std::path::PathBuf::from(dir),
            None => match env.home() {
                Some(home) => home.join(".codex"),
                None => return AuthStatus::Unknown,
            },
        };
        if codex_home.join("auth.json").is_file() {
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
            "exec".to_owned(),
            "--json".to_owned(),
            "--skip-git-repo-check".to_owned(),
        ];
        if let Some(thread_id) = resume {
            argv.push("resume".to_owned());
            argv.push(thread_id.to_owned());
        }
        argv.push("-".to_owned());
        Some(Invocation {
            argv,
            stdin: Some(prompt.to_owned()),
        })
    }

    fn parse_line(&self, line: &str) -> Vec<StructuredEvent> {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            return Vec::new();
        };
        let item = &event["item"];
        match event["type"].as_str() {
            Some("thread.started") => event["thread_id"]
                .as_str()
                .map(|id| vec![StructuredEvent::Session(id.to_owned())])
                .unwrap_or_default(),
            Some("item.started") if item["type"] == "command_execution" => {
                let command = item["command"].as_str().unwrap_or("");
                vec![StructuredEvent::Tool(format!("$ {command}"))]
            }
            Some("item.completed") => match item["type"].as_str() {
                Some("agent_message") => item["text"]
                    .as_str()
                    .map(|text| vec![StructuredEvent::Message(text.to_owned())])
                    .unwrap_or_default(),
                Some("file_change") => {
                    let paths: Vec<&str> = item["changes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|change| change["path"].as_str())
                        .collect();
                    vec![StructuredEvent::Tool(format!("edit {}", paths.join(", ")))]
                }
                Some("error") => item["message"]
                    .as_str()
                    .map(|message| vec![StructuredEvent::Notice(message.to_owned())])
                    .unwrap_or_default(),
                _ => Vec::new(),
            },
            Some("turn.completed") => vec![StructuredEvent::Completed { result: None }],
            Some("turn.failed") => {
                let message = event["error"]["message"]
                    .as_str()
                    .unwrap_or("the turn failed")
                    .to_owned();
                vec![StructuredEvent::Failed {
                    kind: self.classify_failure(&message),
                    message,
                }]
            }
            // Stream errors are retried by the CLI; the turn ends with
            // `turn.failed` (or the process exits) if they persist.
            Some("error") => event["message"]
                .as_str()
                .map(|message| vec![StructuredEvent::Notice(message.to_owned())])
                .unwrap_or_default(),
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
        "npm install -g @openai/codex"
    }

    fn login_hint(&self) -> &'static str {
        "run `codex login`, or set OPENAI_API_KEY"
    }
}
