//! OpenAI Codex CLI (`codex`). The terminal runs the interactive TUI; turns
//! run `codex exec --json` with the prompt on standard input (`-`),
//! continuing the same thread with `codex exec --json … resume <id> -`.
//!
//! JSONL events: `thread.started` (`thread_id`), `turn.started`,
//! `item.started` / `item.updated` / `item.completed` (an `item` with a
//! `type`: `agent_message` with `text`, `command_execution` with `command`,
//! `file_change`, `reasoning`, ...), `turn.completed` (`usage`:
//! `input_tokens`, `cached_input_tokens`, `output_tokens`), `turn.failed`
//! (`error.message`) and `error` (`message`, possibly retried).
//!
//! A broker's agent (one with a person to ask, see
//! [`crate::pty::PermissionAsker`]) runs its turns through `codex
//! app-server` instead ([`Adapter::asking_command`], protocol in
//! [`super::codex_app`]): `exec` cannot ask for approval, the app server
//! sends its approval requests to Scout, which asks a person in the mesh.
//! Both keep their threads in `CODEX_HOME`, so a conversation continues
//! either way.
//!
//! Login: the active model provider of `CODEX_HOME/config.toml` decides
//! what credentials the CLI needs (see [`CodexAdapter::auth_status`]).
//!
//! Processes: the 0.171 TUI starts a shared app-server daemon
//! (`codex app-server --managed-daemon`, one per `CODEX_HOME`, found
//! through `CODEX_HOME/app-server-daemon/daemon.pid`) and its pid-update
//! loop, each in a session of its own, so they leave the agent's process
//! group and outlive it; stopping the agent stops them by the variable
//! every process of the session inherits (see [`crate::pty::marker`]).

use std::path::{Path, PathBuf};

use scout_mesh::lifecycle::Harness;
use serde_json::Value;

use super::codex_app::APP_SERVER_ARGS;
use super::patterns::{ScreenMarkers, find_any};
use super::{
    Adapter, AgentEnv, AuthStatus, FailureKind, Invocation, ScreenState, ScreenView,
    StructuredEvent, TurnStyle, TurnUsage, program_and_args,
};

/// The flags of every structured run, after `codex exec` (and before
/// `resume <id>`, where `exec`'s options still apply). Each must be listed
/// by the pinned CLI's `codex exec --help`; a test checks that.
///
/// - `--json`: events as JSON lines on stdout.
/// - `--skip-git-repo-check`: an agent's directory need not be a Git
///   repository. `exec` never shows the interactive trust dialog, so this
///   is all a run needs to start anywhere; `--trust` is not used, since it
///   would record the folder as trusted for the person's own sessions too.
/// - `--sandbox workspace-write`: a turn may edit files in the agent's
///   directory (the work it is asked to do) and nowhere else, with no
///   network for the commands it runs. `exec` cannot ask for approvals
///   (the app server can: [`super::codex_app`]), and its default sandbox (`read-only`) would make every edit fail; full
///   access (`danger-full-access` or
///   `--dangerously-bypass-approvals-and-sandbox`) would let a routed prompt
///   from another machine touch anything the person can.
pub const EXEC_FLAGS: &[&str] = &[
    "--json",
    "--skip-git-repo-check",
    "--sandbox",
    "workspace-write",
];

/// The subcommands and flags of the CLI the adapter relies on, as
/// (`help` command, words its output must contain): checked against the
/// pinned CLI by a test, so an upgrade that drops one fails there first.
pub const CLI_SURFACE: &[(&[&str], &[&str])] = &[
    (
        &["exec", "--help"],
        &[
            "--json",
            "--skip-git-repo-check",
            "--sandbox",
            "workspace-write",
            "resume",
        ],
    ),
    (&["exec", "resume", "--help"], &["[SESSION_ID]", "[PROMPT]"]),
    // `app-server` runs the turns that can ask for approval.
    (&["--help"], &["exec", "login", "app-server", "--config"]),
    (&["app-server", "--help"], &["--listen"]),
];

const LOGIN_MARKERS: &[&str] = &[
    "Sign in with ChatGPT",
    "Provide your own API key",
    "Finish signing in via your browser",
    "please log in",
];

/// Screen text of a permission or choice prompt. "Trust this folder?" is
/// 0.171's first-run trust dialog, drawn over a moment of its ready screen;
/// earlier versions asked "Do you trust the contents of this directory?".
const QUESTION_MARKERS: &[&str] = &[
    "Trust this folder?",
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

/// Failure text that means the CLI needs a login: a 401 from the model,
/// a missing `env_key` variable of a custom provider, no login at all.
const AUTH_FAILURE_MARKERS: &[&str] = &[
    "401 Unauthorized",
    "Missing environment variable",
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
    /// Flags registering the Scout MCP server, in every run of the CLI.
    mcp_args: Vec<String>,
}

impl CodexAdapter {
    /// The adapter, running `command` (default `codex`) on the terminal.
    pub fn new(command: Option<Vec<String>>) -> CodexAdapter {
        let (program, args) = program_and_args(command, "codex");
        CodexAdapter {
            program,
            args,
            mcp_args: Vec::new(),
        }
    }

    /// The adapter giving the CLI the Scout MCP server, when there is one.
    pub fn with_mcp(mut self, mcp: Option<&crate::adapter::ScoutMcp>) -> CodexAdapter {
        self.mcp_args = mcp
            .map(crate::adapter::ScoutMcp::codex_args)
            .unwrap_or_default();
        self
    }
}

impl Adapter for CodexAdapter {
    /// Codex's approval overlay answers `Yes, proceed` to `y`; Escape takes `No, and tell Codex what to do differently (esc)`.
    fn answer_keys(&self, _question: &str, yes: bool) -> &'static [u8] {
        if yes { b"y" } else { b"\x1b" }
    }

    fn harness(&self) -> Harness {
        Harness::Codex
    }

    fn program(&self) -> &str {
        &self.program
    }

    /// The TUI without the Scout MCP server: with the server's `-c`
    /// overrides the pinned TUI was seen never to start its app-server
    /// daemon (its terminal stays unusable), so the
    /// server is given to the structured turns (the routed work) only.
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

    /// Reads the active model provider from `CODEX_HOME/config.toml` (the
    /// CLI's own source of truth) rather than guessing from variables:
    /// a provider with an `env_key` needs that variable; one that
    /// `requires_openai_auth` (the built-in `openai`) needs a login
    /// (`auth.json`) or `OPENAI_API_KEY` / `CODEX_API_KEY`; a token command
    /// or AWS credentials cannot be checked from outside (`Unknown`); a
    /// bearer token in the config, or no credentials at all (a local model
    /// server), is as good as logged in.
    fn auth_status(&self, env: &AgentEnv) -> AuthStatus {
        let Some(codex_home) = codex_home(env) else {
            return AuthStatus::Unknown;
        };
        let config = read_config(&codex_home.join("config.toml"));
        match provider_auth(config.as_ref()) {
            ProviderAuth::EnvKey(name) => {
                if env.var(&name).is_some() {
                    AuthStatus::LoggedIn
                } else {
                    AuthStatus::LoggedOut
                }
            }
            ProviderAuth::NoneNeeded => AuthStatus::LoggedIn,
            ProviderAuth::Unchecked => AuthStatus::Unknown,
            ProviderAuth::OpenAi => {
                if env.var("OPENAI_API_KEY").is_some()
                    || env.var("CODEX_API_KEY").is_some()
                    || codex_home.join("auth.json").is_file()
                {
                    AuthStatus::LoggedIn
                } else if keyring_store(config.as_ref()) {
                    // The login may be in the system keychain, out of sight.
                    AuthStatus::Unknown
                } else {
                    AuthStatus::LoggedOut
                }
            }
        }
    }

    fn classify(&self, view: ScreenView<'_>) -> ScreenState {
        SCREEN.classify(view.text)
    }

    fn turn_style(&self) -> TurnStyle {
        TurnStyle::Structured
    }

    fn invocation(&self, prompt: &str, resume: Option<&str>) -> Option<Invocation> {
        let mut argv = vec![self.program.clone()];
        argv.extend(self.mcp_args.iter().cloned());
        argv.push("exec".to_owned());
        argv.extend(EXEC_FLAGS.iter().map(|flag| (*flag).to_owned()));
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

    /// `codex app-server`, with the Scout MCP server as `exec` has it.
    fn asking_command(&self) -> Option<Vec<String>> {
        let mut argv = vec![self.program.clone()];
        argv.extend(self.mcp_args.iter().cloned());
        argv.extend(APP_SERVER_ARGS.iter().map(|arg| (*arg).to_owned()));
        Some(argv)
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
            Some("turn.completed") => {
                let usage = &event["usage"];
                let count = |key: &str| usage[key].as_u64().unwrap_or(0);
                let mut events = Vec::new();
                if usage.is_object() {
                    // `input_tokens` counts the cached ones too, as Scout
                    // does; `output_tokens` counts reasoning tokens.
                    events.push(StructuredEvent::Usage(TurnUsage {
                        input_tokens: count("input_tokens"),
                        output_tokens: count("output_tokens"),
                        cached_tokens: count("cached_input_tokens"),
                        cost_micro_usd: None,
                    }));
                }
                events.push(StructuredEvent::Completed { result: None });
                events
            }
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

    fn login_hint_for(&self, env: &AgentEnv) -> String {
        let config = codex_home(env).and_then(|home| read_config(&home.join("config.toml")));
        match provider_auth(config.as_ref()) {
            ProviderAuth::EnvKey(name) => format!(
                "set {name}, the `env_key` of the active model provider in CODEX_HOME/config.toml"
            ),
            _ => self.login_hint().to_owned(),
        }
    }

    fn login_hint(&self) -> &'static str {
        "run `codex login`, or set OPENAI_API_KEY; with a custom model provider, set the \
         variable its `env_key` names in CODEX_HOME/config.toml"
    }
}

/// `CODEX_HOME`, else `~/.codex`, as the agent sees it.
fn codex_home(env: &AgentEnv) -> Option<PathBuf> {
    match env.var("CODEX_HOME") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => env.home().map(|home| home.join(".codex")),
    }
}

/// Bytes of `config.toml` read; a real one is a few KiB, and a larger file
/// is not parsed at all (the login then counts as the built-in provider's).
const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

/// The parsed `config.toml`, when it exists and is valid TOML.
fn read_config(path: &Path) -> Option<toml::Table> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > CONFIG_BYTES_MAX {
        return None;
    }
    std::fs::read_to_string(path)
        .ok()?
        .parse::<toml::Table>()
        .ok()
}

/// What the active model provider needs to authenticate.
#[derive(Debug, PartialEq, Eq)]
enum ProviderAuth {
    /// An API key in this environment variable.
    EnvKey(String),
    /// A ChatGPT login or an OpenAI key (the built-in `openai` provider).
    OpenAi,
    /// Nothing, or nothing outside the config (a local model server, a
    /// bearer token written in the config).
    NoneNeeded,
    /// Credentials Scout cannot check from outside (a token command, AWS).
    Unchecked,
}

/// The built-in providers besides `openai`, and what they need: the local
/// model servers nothing, Amazon Bedrock AWS credentials.
const BUILT_IN_PROVIDERS: &[(&str, bool)] = &[
    ("ollama", false),
    ("lmstudio", false),
    ("amazon-bedrock", true),
];

fn provider_auth(config: Option<&toml::Table>) -> ProviderAuth {
    let Some(config) = config else {
        return ProviderAuth::OpenAi;
    };
    let id = config
        .get("model_provider")
        .and_then(toml::Value::as_str)
        .unwrap_or("openai");
    let provider = config
        .get("model_providers")
        .and_then(toml::Value::as_table)
        .and_then(|providers| providers.get(id))
        .and_then(toml::Value::as_table);
    let Some(provider) = provider else {
        return match BUILT_IN_PROVIDERS.iter().find(|(name, _)| *name == id) {
            Some((_, true)) => ProviderAuth::Unchecked,
            Some((_, false)) => ProviderAuth::NoneNeeded,
            None => ProviderAuth::OpenAi,
        };
    };
    if let Some(name) = provider.get("env_key").and_then(toml::Value::as_str) {
        return ProviderAuth::EnvKey(name.to_owned());
    }
    if provider
        .get("requires_openai_auth")
        .and_then(toml::Value::as_bool)
        == Some(true)
    {
        return ProviderAuth::OpenAi;
    }
    if provider.contains_key("auth") || provider.contains_key("aws") {
        return ProviderAuth::Unchecked;
    }
    ProviderAuth::NoneNeeded
}

/// Whether the CLI keeps its login in the system keychain
/// (`cli_auth_credentials_store = "keyring"` or `"auto"`).
fn keyring_store(config: Option<&toml::Table>) -> bool {
    config
        .and_then(|config| config.get("cli_auth_credentials_store"))
        .and_then(toml::Value::as_str)
        .is_some_and(|store| store != "file")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(config: &str, vars: &[(&str, &str)]) -> AuthStatus {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("config.toml"), config).unwrap();
        let mut overrides = vec![
            ("CODEX_HOME".to_owned(), home.path().display().to_string()),
            ("OPENAI_API_KEY".to_owned(), String::new()),
            ("CODEX_API_KEY".to_owned(), String::new()),
        ];
        overrides.extend(
            vars.iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        );
        CodexAdapter::new(None).auth_status(&AgentEnv::new(&overrides))
    }

    #[test]
    fn the_active_providers_env_key_decides_the_login() {
        let custom = r#"
model_provider = "mine"
[model_providers.mine]
base_url = "http://127.0.0.1:1/v1"
env_key = "MY_PROVIDER_KEY"
"#;
        assert_eq!(auth_with(custom, &[]), AuthStatus::LoggedOut);
        assert_eq!(
            auth_with(custom, &[("MY_PROVIDER_KEY", "sk-1")]),
            AuthStatus::LoggedIn
        );
        // The OpenAI key does not log in a provider that wants its own.
        assert_eq!(
            auth_with(custom, &[("OPENAI_API_KEY", "sk-1")]),
            AuthStatus::LoggedOut
        );
    }

    #[test]
    fn the_openai_provider_needs_a_login_or_a_key() {
        assert_eq!(auth_with("", &[]), AuthStatus::LoggedOut);
        assert_eq!(
            auth_with("", &[("OPENAI_API_KEY", "sk-1")]),
            AuthStatus::LoggedIn
        );
        let openai_auth = r#"
model_provider = "proxy"
[model_providers.proxy]
base_url = "http://127.0.0.1:1/v1"
requires_openai_auth = true
"#;
        assert_eq!(auth_with(openai_auth, &[]), AuthStatus::LoggedOut);
        assert_eq!(
            auth_with("cli_auth_credentials_store = \"keyring\"", &[]),
            AuthStatus::Unknown
        );
    }

    #[test]
    fn providers_without_a_key_need_no_login() {
        assert_eq!(
            auth_with("model_provider = \"ollama\"", &[]),
            AuthStatus::LoggedIn
        );
        let local = r#"
model_provider = "local"
[model_providers.local]
base_url = "http://127.0.0.1:1/v1"
"#;
        assert_eq!(auth_with(local, &[]), AuthStatus::LoggedIn);
        assert_eq!(
            auth_with("model_provider = \"amazon-bedrock\"", &[]),
            AuthStatus::Unknown
        );
        // A config that does not parse counts as the built-in provider's.
        assert_eq!(auth_with("model_provider = ", &[]), AuthStatus::LoggedOut);
    }

    #[test]
    fn exec_flags_come_before_resume() {
        let codex = CodexAdapter::new(None);
        let argv = codex.invocation("hi", Some("thread-1")).unwrap().argv;
        let resume = argv.iter().position(|arg| arg == "resume").unwrap();
        assert_eq!(&argv[2..resume], EXEC_FLAGS);
        assert_eq!(&argv[resume..], ["resume", "thread-1", "-"]);
    }
}
