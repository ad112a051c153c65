//! Errors of the PTY runtime, each with the stable code the HTTP surface
//! answers (`AGENT_NOT_FOUND`, `CLI_NOT_FOUND`, `TIMEOUT`, ...).

/// What went wrong in a runtime request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// No agent has this id (`AGENT_NOT_FOUND`).
    #[error("no agent with id `{0}`")]
    AgentNotFound(String),
    /// The request is malformed (`INVALID_REQUEST`).
    #[error("{0}")]
    InvalidRequest(String),
    /// The prompt carries terminal control characters (`INVALID_PROMPT`).
    #[error("{0}")]
    InvalidPrompt(#[from] crate::pty::prompt::InvalidPrompt),
    /// The working directory is unusable (`INVALID_WORKDIR`).
    #[error("workdir `{path}` {reason}")]
    InvalidWorkdir {
        /// The directory asked for.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The harness's program is not installed (`CLI_NOT_FOUND`).
    #[error("`{program}` is not installed or not on PATH; {hint}")]
    CliNotFound {
        /// The program looked for.
        program: String,
        /// How to install it.
        hint: String,
    },
    /// The CLI needs a login first (`AUTH_REQUIRED`).
    #[error("{message}")]
    AuthRequired {
        /// What to do.
        message: String,
        /// The login URL, when the CLI showed one.
        login_url: Option<String>,
    },
    /// The CLI stops at its first-run setup (`ONBOARDING_REQUIRED`).
    #[error("{0}")]
    OnboardingRequired(String),
    /// `MAX_AGENTS` agents are already running (`MAX_AGENTS`).
    #[error("{max} agents are running, the most this broker allows (MAX_AGENTS); stop one first")]
    MaxAgents {
        /// The limit.
        max: usize,
    },
    /// The terminal or the program could not be started (`SPAWN_FAILED`).
    #[error("{0}")]
    SpawnFailed(String),
    /// The agent did not finish in time (`TIMEOUT`).
    #[error("the agent did not finish within {timeout_ms} ms")]
    Timeout {
        /// The timeout that ran out.
        timeout_ms: u64,
    },
    /// The agent is not running any more (`AGENT_STOPPED`).
    #[error("agent `{0}` is stopped")]
    AgentStopped(String),
    /// The agent's CLI failed the turn (`HARNESS_ERROR`).
    #[error("{0}")]
    Harness(String),
    /// A person holds the agent's terminal (`AGENT_HELD`).
    #[error("agent `{id}` is held by {by}; routed turns wait until it is released")]
    AgentHeld {
        /// The agent.
        id: String,
        /// Who holds it.
        by: String,
    },
    /// A turn kept the agent busy longer than a take waits (`AGENT_BUSY`).
    #[error(
        "agent `{0}` is busy with a turn; try again when it is done, or watch it with `scout attach --follow`"
    )]
    AgentBusy(String),
    /// Release of an agent nobody holds (`AGENT_NOT_HELD`).
    #[error("agent `{0}` is not held by anyone")]
    AgentNotHeld(String),
    /// The turn was cancelled on request (`CANCELLED`).
    #[error("{0}")]
    Cancelled(String),
    /// The broker is shutting down (`SHUTTING_DOWN`).
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl RuntimeError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            RuntimeError::AgentNotFound(_) => "AGENT_NOT_FOUND",
            RuntimeError::InvalidRequest(_) => "INVALID_REQUEST",
            RuntimeError::InvalidPrompt(_) => crate::pty::prompt::INVALID_PROMPT,
            RuntimeError::InvalidWorkdir { .. } => "INVALID_WORKDIR",
            RuntimeError::CliNotFound { .. } => "CLI_NOT_FOUND",
            RuntimeError::AuthRequired { .. } => "AUTH_REQUIRED",
            RuntimeError::OnboardingRequired(_) => "ONBOARDING_REQUIRED",
            RuntimeError::MaxAgents { .. } => "MAX_AGENTS",
            RuntimeError::SpawnFailed(_) => "SPAWN_FAILED",
            RuntimeError::Timeout { .. } => "TIMEOUT",
            RuntimeError::AgentStopped(_) => "AGENT_STOPPED",
            RuntimeError::Harness(_) => "HARNESS_ERROR",
            RuntimeError::AgentHeld { .. } => "AGENT_HELD",
            RuntimeError::AgentBusy(_) => "AGENT_BUSY",
            RuntimeError::AgentNotHeld(_) => "AGENT_NOT_HELD",
            RuntimeError::Cancelled(_) => "CANCELLED",
            RuntimeError::ShuttingDown => "SHUTTING_DOWN",
        }
    }
}
