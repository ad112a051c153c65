//! The PTY runtime: agent CLIs on pseudo-terminals, one session each.
//!
//! Code map:
//! - [`manager`]: [`SessionManager`], the API: spawn, list, stop, run a
//!   turn, send, logs, shutdown; `MAX_AGENTS` and `DEFAULT_TIMEOUT`.
//! - `acp_turn`: turns of an Agent Client Protocol agent, one long-lived
//!   process per session, cancelled with `session/cancel`.
//! - [`session`]: one session: its task, status, turns (typed into the
//!   terminal or run in the CLI's structured mode) and live output.
//! - [`process`]: the program on its terminal: reader thread, writer
//!   thread, `wait()` thread, and stop by process group and session.
//! - [`marker`]: finds and stops the processes a session started that left
//!   its process group and session (daemons), by an inherited variable.
//! - [`priority`]: terminal threads yield to the broker's API under load
//!   (the runtime's one `unsafe` call, `setpriority`).
//! - [`prompt`]: what a prompt may contain (no terminal control
//!   characters), the one rule for every way a prompt comes in.
//! - [`question`]: a question on a terminal's screen asked of a person
//!   once per question shown, its text sanitised.
//! - [`screen`]: the `vt100` screen model that answers terminal queries and
//!   serves the last lines as text.
//! - [`text`]: escape-sequence stripping and the line model of a turn's answer.
//! - [`transcript`]: structured turns rendered for the terminal's watchers.
//! - [`events`]: runtime events for `/ws/events`.
//! - [`error`]: [`RuntimeError`] with the stable codes.
//!
//! Architecture invariant: there is no unbounded channel between a program
//! and a client. The reader's channel is bounded (the program blocks when
//! the broker falls behind), the live output is a bounded broadcast (a slow
//! client skips ahead and redraws), turn events are bounded (progress is
//! dropped, outcomes never are), the transcript of structured turns is a
//! bounded broadcast of bounded chunks (a slow watcher loses transcript
//! lines, never the CLI's screen), and scrollback has a fixed number of rows.
//! The transcript never enters the screen model or the CLI's input.

mod acp_turn;
mod codex_turn;
pub mod error;
pub mod events;
pub mod held;
pub mod manager;
pub mod marker;
pub mod priority;
pub mod process;
pub mod prompt;
pub mod question;
pub mod screen;
pub mod session;
pub mod text;
pub mod transcript;

pub use acp_turn::{ACP_ACTION, PermissionAsker, PermissionRequest};
pub use error::RuntimeError;
pub use events::{EventKind, RuntimeEvent};
pub use manager::{RuntimeConfig, SendOutcome, SessionManager, SpawnRequest};
pub use screen::TermSize;
pub use session::{
    AgentInfo, AgentStatus, HoldInfo, Session, Turn, TurnEvent, TurnFailure, TurnOutcome,
};
pub use transcript::TurnAsker;
