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
//! process group, so an approval answered later runs nothing, and the
//! broker's asker withdraws the pending approval.
//!
//! Messages to the server go through a writer task, so a large write (the
//! whole prompt in `turn/start`) never stops the run from reading: a
//! server blocked writing its output while Scout is blocked writing its
//! input would wait forever.

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::mpsc;

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

/// Messages waiting for the writer task. The run sends a few per line it
/// reads (an answer, at most a request or two), so a queue this long is
/// full only when the server has stopped reading its input for a long
/// stream of requests: the turn then fails rather than buffering without
/// end or blocking the reads.
const WRITE_QUEUE_MAX: usize = 64;

/// One turn of a running `codex app-server`.
pub(crate) struct AppServerRun {
    turn: AppTurn,
    /// The writer task's queue; dropped once the turn is over, so the
    /// server sees the end of its input (after the queued messages) and
    /// exits.
    input: Option<mpsc::Sender<Value>>,
    reader: LineReader<BufReader<ChildStdout>>,
    asker: ApprovalAsker,
}

impl AppServerRun {
    /// Starts the exchange of `turn` on the server's pipes.
    pub(crate) fn start(
        turn: AppTurn,
        stdin: ChildStdin,
        stdout: ChildStdout,
        asker: ApprovalAsker,
    ) -> AppServerRun {
        let (input, queue) = mpsc::channel(WRITE_QUEUE_MAX);
        // The queue is empty: the first message always fits.
        let _ = input.try_send(turn.start());
        tokio::spawn(write_lines(stdin, queue));
        AppServerRun {
            turn,
            input: Some(input),
            reader: LineReader::new(BufReader::new(stdout)),
            asker,
        }
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
                // A line that cannot be read may be the answer or the
                // approval request the turn waits for: skipping it could
                // hang the turn, so it fails.
                Ok(LineRead::TooLong) => {
                    self.input = None;
                    return Some(vec![self.turn.abort(format!(
                        "codex app-server sent a line longer than {ACP_LINE_BYTES_MAX} bytes"
                    ))]);
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
            let mut events = step.events;
            if let Err(failed) = self.write(outgoing) {
                events.push(failed);
            }
            if self.turn.finished() {
                self.input = None;
            }
            if !events.is_empty() {
                return Some(events);
            }
        }
    }

    /// Queues `messages` for the writer task. A server that stopped
    /// reading because it exited ends its output and the turn reports
    /// that; one that stopped reading and lives on fills the queue, and
    /// the turn fails (the returned event).
    fn write(&mut self, messages: Vec<Value>) -> Result<(), StructuredEvent> {
        let Some(input) = self.input.as_ref() else {
            return Ok(());
        };
        for message in messages {
            match input.try_send(message) {
                Ok(()) => {}
                // The writer ended: the server closed its input.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.input = None;
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.input = None;
                    return Err(self.turn.abort(format!(
                        "codex app-server stopped reading its input ({WRITE_QUEUE_MAX} messages waiting)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The writer task: writes each queued message as one line until the
/// queue closes (the turn is over) or the server stops reading, then
/// drops `stdin` so the server sees the end of its input.
async fn write_lines(mut stdin: ChildStdin, mut queue: mpsc::Receiver<Value>) {
    while let Some(message) = queue.recv().await {
        let mut line = message.to_string();
        line.push('\n');
        if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Stdio;
    use std::time::Duration;

    use super::*;

    /// Bounds a test's run against a real process; reached only when the
    /// exchange hangs.
    const HANG_BOUND: Duration = Duration::from_secs(60);

    #[derive(Debug)]
    struct Nobody;

    impl PermissionAsker for Nobody {
        fn ask(
            &self,
            _request: crate::pty::acp_turn::PermissionRequest,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<bool>> + Send>> {
            Box::pin(async { None })
        }
    }

    fn harness(_: &str) -> FailureKind {
        FailureKind::Harness
    }

    /// The events of a turn of `prompt` against a server played by the
    /// shell `script`, until the turn ends or the output does.
    async fn run(script: &str, prompt: &str) -> Vec<StructuredEvent> {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("sh");
        let asker = ApprovalAsker {
            asker: Arc::new(Nobody),
            agent: "coder".to_owned(),
        };
        let mut app = AppServerRun::start(
            AppTurn::new(prompt, Path::new("/work"), None),
            child.stdin.take().expect("stdin"),
            child.stdout.take().expect("stdout"),
            asker,
        );
        let mut all = Vec::new();
        let exchange = async {
            while let Some(events) = app.next_events(&harness).await {
                let ended = events.iter().any(|event| {
                    matches!(
                        event,
                        StructuredEvent::Completed { .. } | StructuredEvent::Failed { .. }
                    )
                });
                all.extend(events);
                if ended {
                    break;
                }
            }
        };
        tokio::time::timeout(HANG_BOUND, exchange)
            .await
            .expect("the exchange hung");
        all
    }

    /// The server's answers up to the turn, written without reading.
    const OPENED: &str =
        r#"printf '%s\n' '{"id":1,"result":{}}' '{"id":2,"result":{"thread":{"id":"t1"}}}'"#;

    /// The server's end of the turn.
    const COMPLETED: &str = r#"printf '%s\n' '{"id":3,"result":{"turn":{"id":"u1"}}}' '{"method":"turn/completed","params":{"threadId":"t1","turn":{"id":"u1","status":"completed"}}}'"#;

    #[tokio::test]
    async fn a_large_prompt_and_a_large_output_do_not_wait_for_each_other() {
        // The server writes far more than a pipe holds before it reads
        // anything, while the prompt is far more than a pipe holds too.
        let pad = "x".repeat(1000);
        let script = format!(
            r#"{OPENED}
i=0; while [ $i -lt 2000 ]; do printf '%s\n' '{{"method":"x/y","params":{{"pad":"{pad}"}}}}'; i=$((i+1)); done
cat > /dev/null &
{COMPLETED}
wait"#
        );
        let events = run(&script, &"p".repeat(1024 * 1024)).await;
        assert_eq!(
            events.last(),
            Some(&StructuredEvent::Completed { result: None }),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn a_line_too_long_to_read_fails_the_turn() {
        let script = format!(
            "{OPENED}\nhead -c {} /dev/zero | tr '\\0' x; echo\n{COMPLETED}\ncat > /dev/null",
            ACP_LINE_BYTES_MAX + 1
        );
        let events = run(&script, "hello").await;
        assert!(
            matches!(
                events.last(),
                Some(StructuredEvent::Failed { kind: FailureKind::Harness, message })
                    if message.contains("longer than")
            ),
            "{events:?}"
        );
    }
}
