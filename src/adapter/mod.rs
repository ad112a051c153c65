//! Harness adapters: what differs between agent CLIs, behind one trait, so
//! the session manager runs every turn with the same semantics ("run this
//! prompt in this instance, stream its output, finish with a result, a
//! question, or a failure reason") whatever the harness.
//!
//! Code map:
//! - [`Adapter`]: the trait; [`adapter_for`] picks the implementation.
//! - [`claude`], [`codex`], [`gemini`]: the three agent CLIs. Each reads its
//!   interactive screen (ready, busy, question, login) and runs turns in the
//!   CLI's structured mode (`claude -p --output-format stream-json`,
//!   `codex exec --json`, `gemini --output-format stream-json`), keeping the
//!   terminal for the person watching.
//! - [`command`]: any program; turns are typed into its terminal and end at
//!   its prompt (`promptPattern`) or when its output goes quiet.
//! - [`acp`]: any agent speaking the Agent Client Protocol (`gemini --acp`):
//!   turns are JSON-RPC requests to one long-lived agent process.
//! - [`preflight`]: is the CLI installed, which version, is it logged in.
//! - `patterns`: screen-matching helpers shared by the adapters.
//!
//! Architecture invariant: adapters do no IO of their own except preflight
//! (which runs `--version` and looks for credential files); the session
//! manager owns every process and terminal.

pub mod acp;
pub mod claude;
pub mod codex;
pub mod codex_app;
pub mod command;
pub mod gemini;
mod patterns;
pub mod preflight;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Debug;
use std::path::PathBuf;
use std::time::Duration;

use scout_mesh::lifecycle::Harness;
use serde::Serialize;

pub use preflight::{Preflight, find_program, preflight};

/// The pause between pasting text and pressing Enter. Several TUIs treat an
/// Enter that arrives in the same read as a paste as part of the paste (a
/// newline, not "submit"); a separate write after a pause is seen as a key.
pub const ENTER_DELAY: Duration = Duration::from_millis(60);

/// How a turn is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnStyle {
    /// Type the prompt into the terminal; the turn ends when the screen
    /// shows the prompt again.
    PtyPrompt,
    /// Type the prompt into the terminal; the turn ends when output has been
    /// quiet this long (the program has no known prompt).
    PtyQuiet(Duration),
    /// Run the CLI's structured mode as a separate process per turn and read
    /// its events; the terminal stays with the person.
    Structured,
    /// Send the prompt to a long-lived Agent Client Protocol process
    /// ([`Adapter::acp_command`]) and read its session updates.
    Acp,
}

/// What the screen shows, as far as the adapter can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScreenState {
    /// Nothing recognised yet.
    Starting,
    /// Waiting for input at its prompt.
    Ready,
    /// Working.
    Busy,
    /// Asking a question (a permission, a choice): the text of the question.
    Question(String),
    /// Asking the person to log in, with the login URL when it shows one.
    LoginRequired {
        /// The URL to open, when the screen shows one.
        url: Option<String>,
    },
}

/// What the adapter sees of a screen.
#[derive(Debug, Clone, Copy)]
pub struct ScreenView<'a> {
    /// The visible screen, rows joined with `\n`.
    pub text: &'a str,
    /// The row the cursor is on, trailing blanks trimmed.
    pub cursor_line: &'a str,
}

/// Whether the CLI is logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthStatus {
    /// Credentials (a key in the environment or a credentials file) found.
    LoggedIn,
    /// No credentials anywhere the CLI keeps them.
    LoggedOut,
    /// Cannot tell from outside (for example a system keychain).
    Unknown,
    /// The harness has no login (`command`).
    NotApplicable,
}

/// One structured-mode run of a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Text written to its standard input (then closed), when the prompt
    /// travels that way.
    pub stdin: Option<String>,
}

/// One event of a structured-mode run, parsed from one line of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StructuredEvent {
    /// The CLI's conversation id, to continue the conversation next turn.
    Session(String),
    /// A piece of streamed answer text.
    TextDelta(String),
    /// A complete answer message.
    Message(String),
    /// Tool activity, one line for a person (`$ ls`, `Edit src/main.rs`).
    Tool(String),
    /// A warning that does not end the turn.
    Notice(String),
    /// The turn is done; `result` is the final answer when the CLI says it.
    Completed {
        /// The final answer, when the event carries it.
        result: Option<String>,
    },
    /// Tokens and cost the CLI reports for the turn (or part of it: a run
    /// may report several times; the session adds them up).
    Usage(TurnUsage),
    /// The turn failed.
    Failed {
        /// What the CLI said.
        message: String,
        /// What kind of failure it is.
        kind: FailureKind,
    },
}

/// What kind of failure a CLI reported, as far as its words tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureKind {
    /// Anything else: the CLI or its model failed the turn.
    #[default]
    Harness,
    /// A missing, invalid or expired login (`AUTH_REQUIRED`).
    AuthRequired,
    /// The CLI has never been set up on this account and stops at its
    /// first-run screens (`ONBOARDING_REQUIRED`).
    OnboardingRequired,
}

/// Tokens and cost of a turn, as the CLI reports them. Cost is kept in
/// millionths of a US dollar, so that sums are exact and comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct TurnUsage {
    /// Input (prompt) tokens, cached ones included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens served from the model's cache.
    pub cached_tokens: u64,
    /// Cost in micro-USD, when the CLI reports one.
    pub cost_micro_usd: Option<u64>,
}

impl TurnUsage {
    /// `self` plus `other` (saturating; a cost is kept when either has one).
    pub fn plus(self, other: TurnUsage) -> TurnUsage {
        TurnUsage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            cached_tokens: self.cached_tokens.saturating_add(other.cached_tokens),
            cost_micro_usd: match (self.cost_micro_usd, other.cost_micro_usd) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
            },
        }
    }
}

/// The environment an agent process gets: the broker's, with the session's
/// overrides. Adapters look up credentials through it, since the agent's
/// `HOME` decides where its CLI keeps them.
#[derive(Debug, Clone, Default)]
pub struct AgentEnv {
    overrides: HashMap<String, String>,
}

impl AgentEnv {
    /// The broker's environment with `overrides` on top.
    pub fn new(overrides: &[(String, String)]) -> AgentEnv {
        AgentEnv {
            overrides: overrides.iter().cloned().collect(),
        }
    }

    /// A variable's value, when set and not empty.
    pub fn var(&self, name: &str) -> Option<String> {
        self.overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .filter(|value| !value.is_empty())
    }

    /// The agent's home directory.
    pub fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }

    /// `PATH`, as the agent process would search it.
    pub fn path(&self) -> Option<OsString> {
        self.var("PATH").map(OsString::from)
    }
}

/// What differs between harnesses. Implementations are cheap to build and
/// immutable; one is made per session.
pub trait Adapter: Send + Sync + Debug {
    /// Which harness this is.
    fn harness(&self) -> Harness;

    /// The program (as configured: a name looked up on PATH, or a path).
    fn program(&self) -> &str;

    /// Program and arguments run on the session's terminal.
    fn interactive_argv(&self) -> Vec<String>;

    /// Program and arguments of the interactive CLI resumed on its own
    /// session `session_id` (a person taking a conversation over). `None`
    /// for harnesses that cannot resume one.
    fn interactive_resume_argv(&self, _session_id: &str) -> Option<Vec<String>> {
        None
    }

    /// Whether the CLI is logged in, seen from the agent's environment.
    fn auth_status(&self, env: &AgentEnv) -> AuthStatus;

    /// Reads the screen.
    fn classify(&self, view: ScreenView<'_>) -> ScreenState;

    /// How turns run.
    fn turn_style(&self) -> TurnStyle;

    /// Whether the session counts as ready as soon as it has started (the
    /// program has nothing the adapter could recognise as "ready").
    fn ready_at_spawn(&self) -> bool {
        false
    }

    /// The structured-mode run of `prompt`, continuing the CLI conversation
    /// `resume` when given. `None` for harnesses without a structured mode.
    fn invocation(&self, _prompt: &str, _resume: Option<&str>) -> Option<Invocation> {
        None
    }

    /// Program and arguments of a structured run that sends its approval
    /// requests to Scout (Codex's app server, see [`codex_app`]): used
    /// instead of [`Adapter::invocation`] when the broker can ask a person.
    /// `None` for harnesses whose structured mode cannot ask.
    fn asking_command(&self) -> Option<Vec<String>> {
        None
    }

    /// Program and arguments of the Agent Client Protocol agent, for
    /// [`TurnStyle::Acp`]; `None` for other harnesses.
    fn acp_command(&self) -> Option<Vec<String>> {
        None
    }

    /// Parses one line of structured-mode output (lines that are not events
    /// of the format yield nothing).
    fn parse_line(&self, _line: &str) -> Vec<StructuredEvent> {
        Vec::new()
    }

    /// What a failure text (stderr, an error event) means: a login to do,
    /// a first-run setup to finish, or another failure.
    fn classify_failure(&self, _text: &str) -> FailureKind {
        FailureKind::Harness
    }

    /// Whether the CLI can continue a run's session only once that run
    /// completed (it may not save a session whose turn failed, and then
    /// refuses to resume it). When true, a failed turn leaves its Scout
    /// conversation where the last completed turn left it.
    fn resume_only_completed(&self) -> bool {
        false
    }

    /// Whether a failed run's words (stderr) say the CLI refused to
    /// continue the session it was given because that session no longer
    /// exists; the conversation then starts a new CLI session next turn.
    fn resume_refused(&self, _text: &str) -> bool {
        false
    }

    /// What an exit code of a structured run that ended without its final
    /// event means, when the CLI documents it: the kind of failure and a
    /// sentence for people (for example "the working directory is not
    /// trusted"). `None` for codes without a known meaning.
    fn exit_meaning(&self, _code: i32) -> Option<(FailureKind, &'static str)> {
        None
    }

    /// The keys that answer `question` (as the screen showed it) yes or
    /// no. The default suits line prompts (`Proceed? [y/N]`, `(yes/no)`):
    /// the word, then Enter.
    fn answer_keys(&self, question: &str, yes: bool) -> &'static [u8] {
        let words = question.to_ascii_lowercase().contains("yes/no");
        match (words, yes) {
            (true, true) => b"yes\r",
            (true, false) => b"no\r",
            (false, true) => b"y\r",
            (false, false) => b"n\r",
        }
    }

    /// The pause between a paste and its Enter.
    fn enter_delay(&self) -> Duration {
        ENTER_DELAY
    }

    /// How to install the CLI, for error messages and `scout doctor`.
    fn install_hint(&self) -> &'static str;

    /// How to log in, for error messages and `scout doctor`.
    fn login_hint(&self) -> &'static str;

    /// How to log in, for an agent with `env`: the precise step when the
    /// adapter can tell from the CLI's config (which variable to set), else
    /// [`Adapter::login_hint`].
    fn login_hint_for(&self, _env: &AgentEnv) -> String {
        self.login_hint().to_owned()
    }

    /// What to do when the CLI stops at its first-run setup
    /// (`ONBOARDING_REQUIRED`).
    fn onboarding_hint(&self) -> &'static str {
        "run the CLI once in a terminal, as the agent's user, to finish its first-run setup"
    }
}

/// How a session's harness is configured (from `POST /agents`).
#[derive(Debug, Clone, Default)]
pub struct AdapterOptions {
    /// Program and arguments to run instead of the harness default (for
    /// `command`, required).
    pub command: Option<Vec<String>>,
    /// `command` only: a regular expression that marks the program ready.
    pub ready_pattern: Option<String>,
    /// `command` only: a regular expression matched against the cursor row
    /// that marks the program waiting for input (the end of a turn).
    pub prompt_pattern: Option<String>,
    /// `command` only: a regular expression matched against the cursor row
    /// that marks a question.
    pub question_pattern: Option<String>,
    /// The Scout MCP server to give the CLI, for agents the broker runs.
    pub mcp: Option<ScoutMcp>,
}

/// The Scout MCP server as an agent CLI starts it: `<scout binary> mcp`
/// over stdio. The server finds its broker and its identity in the
/// `SCOUT_AGENT`, `SCOUT_URL` and `SCOUT_TOKEN` variables the session's
/// environment carries, so nothing secret appears in a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoutMcp {
    /// The scout binary.
    pub command: String,
}

/// The variables the Scout MCP server reads, which a CLI that filters its
/// servers' environment (codex) must pass on.
pub const SCOUT_MCP_ENV_VARS: [&str; 3] = ["SCOUT_AGENT", "SCOUT_URL", "SCOUT_TOKEN"];

impl ScoutMcp {
    /// The server run by this very binary.
    pub fn current() -> Option<ScoutMcp> {
        let exe = std::env::current_exe().ok()?;
        Some(ScoutMcp {
            command: exe.to_str()?.to_owned(),
        })
    }

    /// Claude Code's `--mcp-config` flag with the server as inline JSON.
    /// Claude starts stdio servers with its own environment, so the
    /// session's variables reach the server.
    pub fn claude_args(&self) -> Vec<String> {
        let config = serde_json::json!({
            "mcpServers": {
                "scout": { "type": "stdio", "command": self.command, "args": ["mcp"] }
            }
        });
        vec!["--mcp-config".to_owned(), config.to_string()]
    }

    /// Codex's `-c` overrides registering the server. Codex gives a server
    /// only a fixed set of variables plus those `env_vars` names.
    pub fn codex_args(&self) -> Vec<String> {
        let string = |text: &str| toml::Value::String(text.to_owned()).to_string();
        let names: Vec<String> = SCOUT_MCP_ENV_VARS.iter().map(|name| string(name)).collect();
        vec![
            "-c".to_owned(),
            format!("mcp_servers.scout.command={}", string(&self.command)),
            "-c".to_owned(),
            "mcp_servers.scout.args=[\"mcp\"]".to_owned(),
            "-c".to_owned(),
            format!("mcp_servers.scout.env_vars=[{}]", names.join(",")),
        ]
    }

    /// The Agent Client Protocol `mcpServers` entry (`session/new` and
    /// `session/load`), with the variables of `env` the server reads: an
    /// ACP agent starts servers with exactly the environment listed.
    pub fn acp_servers(env: &[(String, String)]) -> serde_json::Value {
        let Some(server) = ScoutMcp::current() else {
            return serde_json::json!([]);
        };
        let vars: Vec<serde_json::Value> = env
            .iter()
            .filter(|(name, _)| SCOUT_MCP_ENV_VARS.contains(&name.as_str()))
            .map(|(name, value)| serde_json::json!({ "name": name, "value": value }))
            .collect();
        if vars.len() < SCOUT_MCP_ENV_VARS.len() {
            // Not a session the broker gave an identity: no server.
            return serde_json::json!([]);
        }
        serde_json::json!([{
            "name": "scout",
            "command": server.command,
            "args": ["mcp"],
            "env": vars,
        }])
    }
}

/// Why an adapter could not be built from the options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// `command` or `acp` without a command, or an empty one.
    #[error(
        "the `command` and `acp` types need a non-empty `command` array (program and arguments)"
    )]
    MissingCommand,
    /// A pattern is not a valid regular expression.
    #[error("`{field}` is not a valid regular expression: {cause}")]
    InvalidPattern {
        /// Which option.
        field: &'static str,
        /// What the regex parser said.
        cause: String,
    },
}

/// The adapter for `harness` with `options`.
pub fn adapter_for(
    harness: Harness,
    options: &AdapterOptions,
) -> Result<Box<dyn Adapter>, AdapterError> {
    let command = options.command.clone().filter(|argv| !argv.is_empty());
    Ok(match harness {
        Harness::Claude => {
            Box::new(claude::ClaudeAdapter::new(command).with_mcp(options.mcp.as_ref()))
        }
        Harness::Codex => {
            Box::new(codex::CodexAdapter::new(command).with_mcp(options.mcp.as_ref()))
        }
        Harness::Gemini => Box::new(gemini::GeminiAdapter::new(command)),
        Harness::Command => Box::new(command::CommandAdapter::new(
            command.ok_or(AdapterError::MissingCommand)?,
            options,
        )?),
        Harness::Acp => Box::new(acp::AcpAdapter::new(
            command.ok_or(AdapterError::MissingCommand)?,
        )),
    })
}

/// Splits a configured command into program and arguments, with `default`
/// when none is configured.
fn program_and_args(command: Option<Vec<String>>, default: &str) -> (String, Vec<String>) {
    match command {
        Some(mut argv) if !argv.is_empty() => {
            let program = argv.remove(0);
            (program, argv)
        }
        _ => (default.to_owned(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scout_mcp_server_reaches_claude_and_codexs_routed_turns() {
        let options = AdapterOptions {
            mcp: Some(ScoutMcp {
                command: "/opt/scout".to_owned(),
            }),
            ..AdapterOptions::default()
        };
        let claude = adapter_for(Harness::Claude, &options).unwrap();
        for argv in [
            claude.interactive_argv(),
            claude.invocation("hi", Some("S1")).unwrap().argv,
        ] {
            let at = argv.iter().position(|arg| arg == "--mcp-config").unwrap();
            let config: serde_json::Value = serde_json::from_str(&argv[at + 1]).unwrap();
            assert_eq!(config["mcpServers"]["scout"]["command"], "/opt/scout");
        }
        let codex = adapter_for(Harness::Codex, &options).unwrap();
        let exec = codex.invocation("hi", None).unwrap().argv;
        assert_eq!(exec[1], "-c");
        assert_eq!(exec[2], "mcp_servers.scout.command=\"/opt/scout\"");
        assert!(exec.contains(&"exec".to_owned()));
        // The codex TUI runs without it (see `CodexAdapter::interactive_argv`).
        assert!(
            !codex
                .interactive_argv()
                .contains(&"mcp_servers.scout.args=[\"mcp\"]".to_owned())
        );
        // Without the option, nothing changes.
        let plain = adapter_for(Harness::Claude, &AdapterOptions::default()).unwrap();
        assert!(
            !plain
                .interactive_argv()
                .contains(&"--mcp-config".to_owned())
        );
    }

    #[test]
    fn acp_sessions_get_the_server_only_with_an_identity() {
        let vars: Vec<(String, String)> = SCOUT_MCP_ENV_VARS
            .iter()
            .map(|name| ((*name).to_owned(), format!("v-{name}")))
            .collect();
        let servers = ScoutMcp::acp_servers(&vars);
        assert_eq!(servers[0]["name"], "scout");
        assert_eq!(servers[0]["args"], serde_json::json!(["mcp"]));
        assert_eq!(servers[0]["env"].as_array().unwrap().len(), 3);
        assert_eq!(ScoutMcp::acp_servers(&[]), serde_json::json!([]));
    }

    #[test]
    fn answer_keys_per_harness() {
        let command = AdapterOptions {
            command: Some(vec!["bash".to_owned()]),
            ..AdapterOptions::default()
        };
        let bash = adapter_for(Harness::Command, &command).unwrap();
        assert_eq!(bash.answer_keys("Proceed? [y/N]", true), b"y\r");
        assert_eq!(bash.answer_keys("Proceed? (y/n)", false), b"n\r");
        assert_eq!(bash.answer_keys("Go on? [yes/no]", true), b"yes\r");
        let options = AdapterOptions::default();
        for harness in [Harness::Claude, Harness::Codex, Harness::Gemini] {
            let adapter = adapter_for(harness, &options).unwrap();
            // A dialog is refused with Escape, never with Enter, which
            // would pick whatever option is highlighted.
            assert_eq!(
                adapter.answer_keys("Do you want to proceed?", false),
                b"\x1b"
            );
            assert!(
                !adapter
                    .answer_keys("Do you want to proceed?", true)
                    .contains(&b'\x1b')
            );
        }
    }

    #[test]
    fn interactive_resume_argv_per_harness() {
        let options = AdapterOptions::default();
        let resume = |harness| {
            adapter_for(harness, &options)
                .unwrap()
                .interactive_resume_argv("S1")
        };
        assert_eq!(
            resume(Harness::Claude).unwrap(),
            ["claude", "--resume", "S1"]
        );
        assert_eq!(resume(Harness::Codex).unwrap(), ["codex", "resume", "S1"]);
        assert_eq!(
            resume(Harness::Gemini).unwrap(),
            ["gemini", "--resume", "S1"]
        );
        let command = AdapterOptions {
            command: Some(vec!["bash".to_owned()]),
            ..AdapterOptions::default()
        };
        let adapter = adapter_for(Harness::Command, &command).unwrap();
        assert_eq!(adapter.interactive_resume_argv("S1"), None);
    }
}
