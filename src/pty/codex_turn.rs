//! A structured Codex turn that can ask a person: `codex app-server` runs
//! as the turn's process (one per turn, like `codex exec`), and
//! [`AppServerRun`] speaks its protocol (`crate::adapter::codex_app`) over
//! the process's pipes. Approval requests go to the session's
//! [`PermissionAsker`], so a broker asks a person anywhere in the mesh and
//! the command runs only when they approve; the events of the turn go back
//! to the session's structured-turn loop as [`StructuredEvent`]s, which
//! keeps usage, thread resume and failure kinds the same as with `exec`.
//!
//! A turn given up (cancelled, past its deadline, the session stopping)
//! drops the run while it may wait for a person; the session kills the
//! process group, so an approval answered later runs nothing.

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};

use super::acp_turn::{
    ACP_LINE_BYTES_MAX, LineRead, LineReader, PermissionAsker, PermissionRequest,
};
use crate::adapter::codex_app::AppTurn;
use crate::adapter::{FailureKind, StructuredEvent};

/// The action of a Codex command or file-change approval, so people and
/// standing rules tell it from an ACP agent's.
pub const CODEX_ACTION: &str = "tool.codex";

/// Who answers a turn's approval requests, and the instance asking.
#[derive(Debug, Clone)]
pub(crate) struct ApprovalAsker {
    pub asker: Arc<dyn PermissionAsker>,
    /// The agent's instance name (its `SCOUT_AGENT`).
    pub agent: String,
}

/// One turn of a running `codex app-server`.
pub(crate) struct AppServerRun {
    turn: AppTurn,
    /// Closed once the turn is over, so the server sees the end of its
    /// input and exits.
    stdin: Option<ChildStdin>,
    reader: LineReader<BufReader<ChildStdout>>,
    asker: ApprovalAsker,
}

impl AppServerRun {
    /// Starts the exchange of `turn` on the server's pipes.
    pub(crate) async fn start(
        turn: AppTurn,
        stdin: ChildStdin,
        stdout: ChildStdout,
        asker: ApprovalAsker,
    ) -> AppServerRun {
        let first = turn.start();
        let mut run = AppServerRun {
            turn,
            stdin: Some(stdin),
            reader: LineReader::new(BufReader::new(stdout)),
            asker,
        };
        run.write(vec![first]).await;
        run
    }

    /// The turn's next events, answering what the server asks on the way
    /// (an approval waits for the person); `None` once the server's output
    /// ends.
    pub(crate) async fn next_events(
        &mut self,
        classify: &(dyn Fn(&str) -> FailureKind + Sync),
    ) -> Option<Vec<StructuredEvent>> {
        loop {
            let line = match self.reader.next_line().await {
                Ok(LineRead::Line(line)) => line,
                Ok(LineRead::TooLong) => {
                    tracing::debug!(
                        bytes_max = ACP_LINE_BYTES_MAX,
                        "skipped a long line from codex app-server"
                    );
                    continue;
                }
                Ok(LineRead::Eof) | Err(_) => return None,
            };
            let step = self.turn.on_line(line.trim_end(), classify);
            let mut outgoing = step.outgoing;
            if let Some(approval) = step.ask {
                let decided = self
                    .asker
                    .asker
                    .ask(PermissionRequest {
                        agent: self.asker.agent.clone(),
                        action: CODEX_ACTION,
                        summary: approval.summary.clone(),
                    })
                    .await;
                // Nobody could be asked: refused, never allowed unseen.
                let allowed = decided == Some(true);
                tracing::debug!(summary = %approval.summary, allowed, "answered a codex approval");
                outgoing.insert(0, approval.answer(allowed));
            }
            self.write(outgoing).await;
            if self.turn.finished() {
                self.stdin = None;
            }
            if !step.events.is_empty() {
                return Some(step.events);
            }
        }
    }

    /// Writes `messages`, one line each. A server that stopped reading has
    /// exited or will: its output ends and the turn reports that, so a
    /// failed write needs no handling of its own.
    async fn write(&mut self, messages: Vec<Value>) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        for message in messages {
            let mut line = message.to_string();
            line.push('\n');
            if stdin.write_all(line.as_bytes()).await.is_err() {
                self.stdin = None;
                return;
            }
        }
        if stdin.flush().await.is_err() {
            self.stdin = None;
        }
    }
}
