//! The session manager: spawns agents on terminals (at most `MAX_AGENTS` at
//! once), finds them by id, runs turns through them, stops them, and stops
//! all of them on shutdown. This is the API the HTTP surface and the
//! routing layer use.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use scout_mesh::lifecycle::Harness;
use tokio::sync::{Semaphore, broadcast, watch};

use super::error::RuntimeError;
use super::events::{EVENTS_BUFFER_MAX, RuntimeEvent};
use super::held::{HolderPlacement, SessionRecord, StoredOptions};
use super::screen::{SCROLLBACK_ROWS_MAX, TermSize};
use super::session::{
    AgentInfo, Session, SessionConfig, Turn, TurnEvent, TurnFailure, TurnOutcome,
};
use super::transcript::TurnAsker;
use crate::adapter::{self, AdapterOptions, AgentEnv};
use crate::env::Env;

/// Agents running at once unless `MAX_AGENTS` says otherwise (the local
/// runtime's default).
pub const MAX_AGENTS_DEFAULT: usize = 10;

/// The most `MAX_AGENTS` may allow: each agent is a process tree, four
/// threads and up to 4 MiB of broker memory.
pub const MAX_AGENTS_LIMIT: usize = 256;

/// Turn timeout unless `DEFAULT_TIMEOUT` or the request says otherwise, in
/// milliseconds (the local runtime's default).
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// The longest timeout a request may ask for: four hours covers the
/// longest agent tasks; anything longer is a mistake.
pub const TIMEOUT_MS_MAX: u64 = 4 * 60 * 60 * 1000;

/// Time a stopped agent gets to exit between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Stopped sessions kept (for their status and logs) before the oldest is
/// forgotten.
pub const STOPPED_SESSIONS_KEPT_MAX: usize = 32;

/// Longest agent name, in characters.
pub const NAME_CHARS_MAX: usize = 100;

/// Largest message a turn accepts, in bytes. Prompts travel on the
/// terminal or standard input; 64 KiB is pages of text.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// Environment variables a spawn request may set.
pub const ENV_VARS_MAX: usize = 64;

/// The broker's own configuration, not passed on to agents: an agent that
/// starts a dev server must not pick up the broker's `PORT`.
const BROKER_ENV_VARS: &[&str] = &[
    "PORT",
    "SCOUT_HOME",
    "LOG_LEVEL",
    "RUST_LOG",
    "MAX_AGENTS",
    "DEFAULT_TIMEOUT",
];

const _: () = assert!(MAX_AGENTS_DEFAULT <= MAX_AGENTS_LIMIT);
const _: () = assert!(DEFAULT_TIMEOUT_MS <= TIMEOUT_MS_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX < crate::http::REQUEST_BODY_BYTES_MAX);

/// The runtime's settings (`MAX_AGENTS`, `DEFAULT_TIMEOUT`).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Agents running at once.
    pub max_agents: usize,
    /// Turn timeout when a request gives none.
    pub default_timeout: Duration,
    /// Time between SIGTERM and SIGKILL on stop.
    pub stop_grace: Duration,
    /// Scrollback rows per session.
    pub scrollback_rows: usize,
    /// The broker's environment: session and event timestamps, agent ids.
    pub broker_env: Env,
    /// Who answers ACP agents' permission requests (the broker asks a
    /// person); `None`: the default policy of `adapter::acp`.
    pub permissions: Option<Arc<dyn crate::pty::PermissionAsker>>,
    /// Where holder processes keep agents' programs across broker restarts
    /// (`HOME/holders`); `None`: the broker holds every terminal itself and
    /// sessions end with it.
    pub holders_dir: Option<PathBuf>,
}

/// The held turns' directory, beside the holders' one (`HOME/turns`).
pub const TURNS_DIR_NAME: &str = "turns";

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            max_agents: MAX_AGENTS_DEFAULT,
            default_timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            stop_grace: STOP_GRACE,
            scrollback_rows: SCROLLBACK_ROWS_MAX,
            broker_env: Env::system(None),
            permissions: None,
            holders_dir: None,
        }
    }
}

impl RuntimeConfig {
    /// The defaults with `MAX_AGENTS` and `DEFAULT_TIMEOUT` (milliseconds)
    /// from the environment.
    pub fn from_env() -> anyhow::Result<RuntimeConfig> {
        let mut config = RuntimeConfig::default();
        if let Ok(value) = std::env::var("MAX_AGENTS") {
            config.max_agents = value
                .trim()
                .parse()
                .ok()
                .filter(|max| (1..=MAX_AGENTS_LIMIT).contains(max))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "MAX_AGENTS `{value}` is not a number from 1 to {MAX_AGENTS_LIMIT}"
                    )
                })?;
        }
        if let Ok(value) = std::env::var("DEFAULT_TIMEOUT") {
            let timeout_ms: u64 = value
                .trim()
                .parse()
                .ok()
                .filter(|ms| (1..=TIMEOUT_MS_MAX).contains(ms))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "DEFAULT_TIMEOUT `{value}` is not a number of milliseconds from 1 to {TIMEOUT_MS_MAX}"
                    )
                })?;
            config.default_timeout = Duration::from_millis(timeout_ms);
        }
        Ok(config)
    }
}

/// What to spawn.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// A name for people (defaults to the harness word).
    pub name: Option<String>,
    /// The harness.
    pub harness: Harness,
    /// Working directory (absolute, or `~/…`; defaults to the broker's home
    /// directory).
    pub workdir: Option<String>,
    /// Command and patterns.
    pub options: AdapterOptions,
    /// Environment overrides.
    pub env: Vec<(String, String)>,
    /// Initial terminal size.
    pub size: Option<TermSize>,
}

/// How `send` ended, when the agent answered or asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// The turn's id.
    pub turn_id: String,
    /// The answer (or the output up to a question).
    pub response: String,
    /// The question the agent asks, when it stopped at one.
    pub question: Option<String>,
}

/// All sessions of this broker.
#[derive(Debug)]
pub struct SessionManager {
    config: RuntimeConfig,
    sessions: Mutex<Vec<Arc<Session>>>,
    slots: Arc<Semaphore>,
    events: broadcast::Sender<RuntimeEvent>,
    shutting_down: AtomicBool,
    /// Set by [`SessionManager::detach`]: held sessions and turns are left
    /// to their holders.
    detaching: Arc<AtomicBool>,
    closed: watch::Sender<bool>,
}

impl SessionManager {
    /// A manager with no sessions.
    pub fn new(config: RuntimeConfig) -> SessionManager {
        SessionManager {
            slots: Arc::new(Semaphore::new(config.max_agents)),
            events: broadcast::channel(EVENTS_BUFFER_MAX).0,
            sessions: Mutex::new(Vec::new()),
            shutting_down: AtomicBool::new(false),
            detaching: Arc::new(AtomicBool::new(false)),
            closed: watch::channel(false).0,
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Runtime events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    /// Spawns an agent. Checks the name, the working directory and that the
    /// CLI is installed before taking one of the `MAX_AGENTS` slots.
    pub async fn spawn(&self, request: SpawnRequest) -> Result<AgentInfo, RuntimeError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(RuntimeError::ShuttingDown);
        }
        let name = match request.name.as_deref().map(str::trim) {
            None | Some("") => request.harness.as_str().to_owned(),
            Some(name) if name.chars().count() > NAME_CHARS_MAX => {
                return Err(RuntimeError::InvalidRequest(format!(
                    "`name` is longer than {NAME_CHARS_MAX} characters"
                )));
            }
            Some(name) if name.chars().any(char::is_control) => {
                return Err(RuntimeError::InvalidRequest(
                    "`name` contains control characters".to_owned(),
                ));
            }
            Some(name) => name.to_owned(),
        };
        if request.env.len() > ENV_VARS_MAX {
            return Err(RuntimeError::InvalidRequest(format!(
                "`env` has more than {ENV_VARS_MAX} variables"
            )));
        }
        if let Some((bad, _)) = request.env.iter().find(|(key, value)| {
            key.is_empty() || key.contains(['=', '\0']) || value.contains('\0')
        }) {
            return Err(RuntimeError::InvalidRequest(format!(
                "`env` has an invalid variable name `{bad}`"
            )));
        }
        let size = request.size.unwrap_or(TermSize::DEFAULT);
        if !size.is_valid() {
            return Err(RuntimeError::InvalidRequest(format!(
                "terminal size {}x{} is out of range",
                size.cols, size.rows
            )));
        }
        let agent_env = AgentEnv::new(&request.env);
        let workdir = check_workdir(request.workdir.as_deref(), &agent_env)?;
        let adapter = adapter::adapter_for(request.harness, &request.options)
            .map_err(|err| RuntimeError::InvalidRequest(err.to_string()))?;
        let program = adapter.program().to_owned();
        let path_var = agent_env.path();
        let found = tokio::task::spawn_blocking(move || {
            adapter::find_program(&program, path_var.as_deref()).is_some()
        })
        .await
        .unwrap_or(false);
        if !found {
            return Err(RuntimeError::CliNotFound {
                program: adapter.program().to_owned(),
                hint: adapter.install_hint().to_owned(),
            });
        }
        let permit =
            self.slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| RuntimeError::MaxAgents {
                    max: self.config.max_agents,
                })?;
        let config = self.session_config(
            SessionRecordParts {
                id: self.new_id(),
                name,
                workdir,
                env: request.env,
                env_remove: BROKER_ENV_VARS
                    .iter()
                    .map(|name| (*name).to_owned())
                    .collect(),
                size,
            },
            StoredOptions::of(&request.options),
        );
        let events = self.events.clone();
        let session =
            tokio::task::spawn_blocking(move || Session::start(config, adapter, events, permit))
                .await
                .map_err(|err| {
                    RuntimeError::SpawnFailed(format!("the spawner stopped: {err}"))
                })??;
        let info = session.info();
        let mut sessions = self.lock_sessions();
        sessions.push(session);
        forget_oldest_stopped(&mut sessions);
        Ok(info)
    }

    /// Every agent, oldest first.
    pub fn list(&self) -> Vec<AgentInfo> {
        let sessions: Vec<Arc<Session>> = self.lock_sessions().clone();
        sessions.iter().map(|session| session.info()).collect()
    }

    /// Agents not yet stopped.
    pub fn n_running(&self) -> usize {
        self.lock_sessions()
            .iter()
            .filter(|session| !session.is_finished())
            .count()
    }

    /// The session with `id`.
    pub fn session(&self, id: &str) -> Result<Arc<Session>, RuntimeError> {
        self.lock_sessions()
            .iter()
            .find(|session| session.id() == id)
            .cloned()
            .ok_or_else(|| RuntimeError::AgentNotFound(id.to_owned()))
    }

    /// The agent with `id`.
    pub fn info(&self, id: &str) -> Result<AgentInfo, RuntimeError> {
        Ok(self.session(id)?.info())
    }

    /// The last `n_lines` lines of its terminal, as plain text.
    pub fn logs(&self, id: &str, n_lines: usize) -> Result<Vec<String>, RuntimeError> {
        Ok(self.session(id)?.last_lines(n_lines))
    }

    /// Stops a running agent (its record stays, stopped, with its logs);
    /// forgets an agent that is already stopped.
    pub async fn stop(&self, id: &str) -> Result<AgentInfo, RuntimeError> {
        let session = self.session(id)?;
        if session.is_finished() {
            self.lock_sessions().retain(|kept| kept.id() != id);
            return Ok(session.info());
        }
        session.stop("stopped").await;
        Ok(session.info())
    }

    /// Starts a turn (see [`Session::run_turn`]) with `timeout`, or the
    /// default timeout.
    pub fn run_turn(
        &self,
        id: &str,
        prompt: String,
        timeout: Option<Duration>,
        conversation: Option<String>,
    ) -> Result<Turn, RuntimeError> {
        self.run_turn_from(id, prompt, timeout, conversation, TurnAsker::local_api())
    }

    /// [`SessionManager::run_turn`], saying who asked (shown to the
    /// terminal's watchers).
    pub fn run_turn_from(
        &self,
        id: &str,
        prompt: String,
        timeout: Option<Duration>,
        conversation: Option<String>,
        asker: TurnAsker,
    ) -> Result<Turn, RuntimeError> {
        if prompt.len() > MESSAGE_BYTES_MAX {
            return Err(RuntimeError::InvalidRequest(format!(
                "`message` is larger than {MESSAGE_BYTES_MAX} bytes"
            )));
        }
        crate::pty::prompt::check_prompt(&prompt)?;
        let session = self.session(id)?;
        session.run_turn_from(
            prompt,
            timeout.unwrap_or(self.config.default_timeout),
            conversation,
            asker,
        )
    }

    /// Runs a turn and waits for its end: the answer, or the question the
    /// agent stopped at, or the failure as an error.
    pub async fn send(
        &self,
        id: &str,
        message: String,
        timeout: Option<Duration>,
    ) -> Result<SendOutcome, RuntimeError> {
        let timeout = timeout.unwrap_or(self.config.default_timeout);
        let mut turn = self.run_turn(id, message, Some(timeout), None)?;
        let outcome = loop {
            match turn.events.recv().await {
                Some(TurnEvent::Finished(outcome)) => break outcome,
                Some(_) => {}
                None => {
                    break TurnOutcome::Failed {
                        failure: TurnFailure::AgentStopped,
                        message: "the turn ended without an outcome".to_owned(),
                    };
                }
            }
        };
        match outcome {
            TurnOutcome::Completed { response } => Ok(SendOutcome {
                turn_id: turn.id,
                response,
                question: None,
            }),
            TurnOutcome::Waiting { question, response } => Ok(SendOutcome {
                turn_id: turn.id,
                response,
                question: Some(question),
            }),
            TurnOutcome::Failed { failure, message } => Err(match failure {
                TurnFailure::Timeout => RuntimeError::Timeout {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
                TurnFailure::AgentStopped => RuntimeError::AgentStopped(id.to_owned()),
                TurnFailure::AuthRequired => RuntimeError::AuthRequired {
                    message,
                    login_url: None,
                },
                TurnFailure::OnboardingRequired => RuntimeError::OnboardingRequired(message),
                TurnFailure::Harness => RuntimeError::Harness(message),
                TurnFailure::Cancelled => RuntimeError::Cancelled(message),
            }),
        }
    }

    /// Re-attaches the sessions whose holders kept their programs while the
    /// broker was down (at start, before anything else uses the runtime).
    /// A holder that is gone leaves its session lost (its directory is
    /// removed); one that speaks another protocol version is reported with
    /// `HOLDER_VERSION_UNSUPPORTED` and left alone. Returns how many
    /// sessions came back.
    pub async fn adopt_holders(&self) -> usize {
        let Some(root) = self.config.holders_dir.clone() else {
            return 0;
        };
        // No holder ever ran here: nothing to read off the async thread (a
        // simulated broker then never leaves its thread while starting).
        if !root.is_dir() {
            return 0;
        }
        // The routed terminal turns that ran on while the broker was away,
        // read once: each is put back with its session.
        let turns = self.turns_dir();
        let (dirs, mut terminal_turns) = tokio::task::spawn_blocking(move || {
            let terminal_turns = turns
                .map(|turns| crate::holder::journal::terminal_turns(&turns))
                .unwrap_or_default();
            (crate::holder::list(&root), terminal_turns)
        })
        .await
        .unwrap_or_default();
        let mut adopting = tokio::task::JoinSet::new();
        for (id, dir) in dirs {
            let Some(record) = read_record(&dir) else {
                tracing::warn!(dir = %dir.display(), "a holder directory without a readable session record; removed");
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            };
            let Ok(adapter) = adapter::adapter_for(record.harness, &record.options.options())
            else {
                tracing::warn!(agent = %id, "the stored adapter options no longer apply");
                continue;
            };
            let config = self.session_config(
                SessionRecordParts {
                    id: record.id.clone(),
                    name: record.name.clone(),
                    workdir: record.workdir.clone(),
                    env: record
                        .env
                        .iter()
                        .filter(|(name, _)| name != super::marker::SESSION_MARKER_VAR)
                        .cloned()
                        .collect(),
                    env_remove: record.env_remove.clone(),
                    size: record.size,
                },
                record.options.clone(),
            );
            let permit = self.slots.clone().try_acquire_owned().ok();
            let events = self.events.clone();
            // One turn at a time runs in a session.
            let carried = terminal_turns.remove(&record.id);
            adopting.spawn_blocking(move || {
                let adopted =
                    Session::adopt(config, adapter, events, permit, record, &dir, carried);
                (id, dir, adopted)
            });
        }
        let mut n_adopted = 0;
        while let Some(joined) = adopting.join_next().await {
            let Ok((id, dir, adopted)) = joined else {
                continue;
            };
            match adopted {
                Ok(session) => {
                    tracing::info!(agent = %id, pid = session.info().pid, "agent session re-attached");
                    self.lock_sessions().push(session);
                    n_adopted += 1;
                }
                Err(crate::holder::HolderError::Gone(_)) => {
                    tracing::warn!(agent = %id, code = "HOLDER_GONE", "agent session lost: its holder is gone");
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Err(err) => {
                    tracing::error!(agent = %id, code = err.code(), cause = %err, "cannot re-attach an agent session; its holder is left running");
                }
            }
        }
        n_adopted
    }

    /// A session's configuration: what differs per session, and the
    /// runtime's settings, the same for a new session and a re-attached one.
    fn session_config(&self, parts: SessionRecordParts, options: StoredOptions) -> SessionConfig {
        SessionConfig {
            id: parts.id,
            name: parts.name,
            workdir: parts.workdir,
            env: parts.env,
            env_remove: parts.env_remove,
            size: parts.size,
            scrollback_rows: self.config.scrollback_rows,
            stop_grace: self.config.stop_grace,
            broker_env: self.config.broker_env.clone(),
            permissions: self.config.permissions.clone(),
            holders: self.config.holders_dir.clone().map(|root| HolderPlacement {
                // Beside the holders' directory: `HOME/turns`.
                turns: root.with_file_name(TURNS_DIR_NAME),
                root,
                options,
                detaching: self.detaching.clone(),
            }),
        }
    }

    /// Stops every agent (the broker's one shutdown) and refuses new ones.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = self.lock_sessions().clone();
        let mut stops = tokio::task::JoinSet::new();
        for session in sessions
            .into_iter()
            .filter(|session| !session.is_finished())
        {
            stops.spawn(async move { session.stop("broker_shutdown").await });
        }
        while stops.join_next().await.is_some() {}
        self.closed.send_replace(true);
    }

    /// The broker's shutdown when its agents are held: sessions and turns
    /// that holders keep are left running for the next broker to
    /// re-attach (their connections close as the broker exits); sessions
    /// the broker holds itself are stopped, as by
    /// [`SessionManager::shutdown`]. New agents are refused.
    pub async fn detach(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.detaching.store(true, Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = self.lock_sessions().clone();
        let mut stops = tokio::task::JoinSet::new();
        let mut n_left = 0;
        for session in sessions
            .into_iter()
            .filter(|session| !session.is_finished())
        {
            if session.info().holder.is_some() {
                n_left += 1;
                continue;
            }
            stops.spawn(async move { session.stop("broker_shutdown").await });
        }
        while stops.join_next().await.is_some() {}
        if n_left > 0 {
            tracing::info!(
                sessions = n_left,
                "agent sessions left running in their holders; the next broker re-attaches them"
            );
        }
        self.closed.send_replace(true);
    }

    /// The held turn of `invocation_id` (see [`crate::holder::journal`]),
    /// when a holder ran it while the broker was away.
    pub fn held_turn(
        &self,
        invocation_id: &str,
    ) -> Option<(PathBuf, crate::holder::journal::TurnRecord)> {
        crate::holder::journal::of_invocation(&self.turns_dir()?, invocation_id)
    }

    /// Removes the held turn of `invocation_id` once its end is recorded
    /// (its holder has ended, or stops the program).
    pub fn forget_turn(&self, invocation_id: &str) {
        if let Some((dir, _)) = self.held_turn(invocation_id) {
            crate::holder::journal::remove(&dir);
        }
    }

    /// Carries on a held turn in session `id` (see
    /// [`Session::resume_turn`]).
    pub fn resume_turn(
        &self,
        id: &str,
        held: (PathBuf, crate::holder::journal::TurnRecord),
        timeout: Option<Duration>,
        asker: TurnAsker,
    ) -> Result<Turn, RuntimeError> {
        let session = self.session(id)?;
        let (dir, record) = held;
        session.resume_turn(
            dir,
            record,
            timeout.unwrap_or(self.config.default_timeout),
            asker,
        )
    }

    /// Where held turns live, when sessions are held.
    fn turns_dir(&self) -> Option<PathBuf> {
        self.config
            .holders_dir
            .as_ref()
            .map(|root| root.with_file_name(TURNS_DIR_NAME))
    }

    /// A receiver that turns `true` once [`SessionManager::shutdown`] has
    /// stopped every agent: long-lived subscribers end then.
    pub fn closed_watch(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    fn new_id(&self) -> String {
        loop {
            let id = format!("agent-{:08x}", self.config.broker_env.random::<u32>());
            if self.session(&id).is_err() {
                return id;
            }
        }
    }

    fn lock_sessions(&self) -> MutexGuard<'_, Vec<Arc<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What differs between sessions in a [`SessionConfig`].
struct SessionRecordParts {
    id: String,
    name: String,
    workdir: PathBuf,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    size: TermSize,
}

/// The session record in a holder's directory, when it is readable.
fn read_record(dir: &Path) -> Option<SessionRecord> {
    let text = crate::holder::read_bounded(
        &dir.join(crate::holder::SESSION_FILE),
        crate::holder::SPEC_BYTES_MAX,
    )?;
    serde_json::from_slice(&text).ok()
}

fn forget_oldest_stopped(sessions: &mut Vec<Arc<Session>>) {
    let n_stopped = sessions
        .iter()
        .filter(|session| session.is_finished())
        .count();
    let mut n_forget = n_stopped.saturating_sub(STOPPED_SESSIONS_KEPT_MAX);
    sessions.retain(|session| {
        if n_forget > 0 && session.is_finished() {
            n_forget -= 1;
            false
        } else {
            true
        }
    });
}

/// The working directory of a spawn: absolute (or `~/…`), existing, a directory.
fn check_workdir(workdir: Option<&str>, env: &AgentEnv) -> Result<PathBuf, RuntimeError> {
    let invalid = |path: &str, reason: &str| RuntimeError::InvalidWorkdir {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let home = env.home();
    let path = match workdir.map(str::trim) {
        None | Some("") => home.ok_or_else(|| invalid("", "is missing and HOME is not set"))?,
        Some(raw) => {
            let expanded = match (raw.strip_prefix("~/"), raw == "~", &home) {
                (Some(rest), _, Some(home)) => home.join(rest),
                (None, true, Some(home)) => home.clone(),
                _ => PathBuf::from(raw),
            };
            if !expanded.is_absolute() {
                return Err(invalid(raw, "is not an absolute path"));
            }
            expanded
        }
    };
    let shown = path.display().to_string();
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(normalize(&path)),
        Ok(_) => Err(invalid(&shown, "is not a directory")),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            Err(invalid(&shown, "does not exist"))
        }
        Err(err) => Err(invalid(&shown, &format!("cannot be read: {err}"))),
    }
}

fn normalize(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_checks() {
        let env = AgentEnv::new(&[("HOME".to_owned(), "/".to_owned())]);
        assert!(check_workdir(Some("/"), &env).is_ok());
        assert_eq!(check_workdir(None, &env).unwrap(), PathBuf::from("/"));
        assert_eq!(check_workdir(Some("~"), &env).unwrap(), PathBuf::from("/"));
        let err = check_workdir(Some("relative/dir"), &env).unwrap_err();
        assert_eq!(err.code(), "INVALID_WORKDIR");
        let err = check_workdir(Some("/does/not/exist"), &env).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = check_workdir(Some("/proc/self/status"), &env).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
