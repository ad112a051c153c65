//! One Codex turn through `codex app-server`: JSON-RPC 2.0 over standard
//! input and output, one JSON message a line. Unlike `codex exec`, the app
//! server sends its approval requests to the client, so a broker that can
//! ask a person runs Codex turns this way (see `crate::pty::codex_turn`).
//!
//! The exchange of one turn, as the pinned 0.171 server speaks it:
//! `initialize` (answered with the server's user agent), the `initialized`
//! notification, `thread/start` (with the working directory, the approval
//! policy and the sandbox) or `thread/resume` (`threadId`), both answered
//! with `thread.id`, then `turn/start` (`threadId`, `input` of one text
//! item), answered with `turn.id`. The turn then streams notifications:
//! `item/started` and `item/completed` (an `item` with a `type`:
//! `agentMessage` with `text`, `commandExecution` with `command` and a
//! `status` that is `declined` when refused, `fileChange` with `changes`),
//! `thread/tokenUsage/updated` (`turnId`, `tokenUsage.total` and
//! `tokenUsage.last`), `error` (`error.message`, `willRetry`) and finally
//! `turn/completed` (`turn.status`: `completed`, `interrupted` or `failed`
//! with `turn.error.message`). Approvals are requests from the server:
//! `item/commandExecution/requestApproval` (`command`, `cwd`, `reason`)
//! and `item/fileChange/requestApproval` (`itemId`, `reason`, `grantRoot`),
//! answered `{"decision": "accept"}` or `{"decision": "decline"}`; after a
//! decline the turn goes on and the model learns the command was refused.
//!
//! An approval's summary is what a person approves and what a standing
//! rule (`--always`) matches, so it is never cut: it holds the whole
//! command (line breaks kept) or every path, escaped so that nothing in it
//! can close its quoting or reach a terminal ([`escape`]). A request that
//! cannot be summarised in full (too long, no command, paths not known) is
//! declined without asking, as are requests past [`APPROVALS_PER_TURN_MAX`]
//! in one turn.
//!
//! This module is the protocol only, without IO: [`AppTurn`] takes the
//! server's lines and says what to write back and what happened.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};

use super::acp::{self, Incoming};
use super::{FailureKind, StructuredEvent, TurnUsage};

/// The subcommand and its transport, after the CLI's global flags (the
/// Scout MCP server's `-c` overrides): standard input and output, the
/// default, said explicitly so that a change of default fails loudly.
/// Listed by the pinned CLI's `codex --help` and `codex app-server --help`.
pub const APP_SERVER_ARGS: &[&str] = &["app-server", "--listen", "stdio://"];

/// When Codex asks: `on-request` lets the model ask for a command outside
/// the sandbox (`sandbox_permissions: "require_escalated"`), for writes
/// outside the working directory or network access, while the work inside
/// the sandbox runs as it does with `codex exec`. Every such request now
/// reaches a person instead of being impossible.
pub const APPROVAL_POLICY: &str = "on-request";

/// The sandbox of a thread, the same as `codex exec`'s (see
/// [`super::codex::EXEC_FLAGS`]).
pub const SANDBOX: &str = "workspace-write";

/// The longest summary asked about: the approval's own limit, which a
/// summary must fit whole (a person approves all of what they read).
const SUMMARY_BYTES_MAX: usize = scout_mesh::approval::SUMMARY_BYTES_MAX;

/// Approvals asked in one turn. A turn that needs a person a few times is
/// normal; one asking more is looping, and each request holds one of the
/// agent's few pending approvals (`PENDING_PER_AGENT_MAX`) and interrupts
/// a person. Past this many, requests are declined without asking and the
/// model is told, as for any decline.
pub const APPROVALS_PER_TURN_MAX: usize = 8;

/// File-change items whose paths are remembered for their approval
/// requests; a turn changes a handful. The approval of an item not
/// remembered cannot say what it edits, and is declined.
const REMEMBERED_CHANGES_MAX: usize = 256;

/// What the pinned server answers to `thread/resume` of a thread it does
/// not have (`no rollout found for thread id …`, checked against the real
/// CLI): only then does the turn start a new thread. Any other error fails
/// the turn rather than silently dropping the conversation.
const THREAD_NOT_FOUND: &str = "no rollout found";

const INITIALIZE_ID: u64 = 1;
const THREAD_ID: u64 = 2;
const TURN_ID: u64 = 3;
/// The new thread started when the stored one cannot be resumed.
const NEW_THREAD_ID: u64 = 4;

/// An approval the server waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    /// The request's JSON-RPC id, echoed in the answer.
    pub id: Value,
    /// What Codex wants to do, for a person to read.
    pub summary: String,
}

impl Approval {
    /// The answer to write: accept once, or decline (the turn goes on and
    /// the model is told). A person's answer is never turned into a rule
    /// Codex would keep for later commands.
    pub fn answer(&self, allowed: bool) -> Value {
        decision(&self.id, allowed)
    }
}

/// The answer to approval request `id`, written without asking anyone.
fn decision(id: &Value, allowed: bool) -> Value {
    let decision = if allowed { "accept" } else { "decline" };
    json!({ "jsonrpc": "2.0", "id": id, "result": { "decision": decision } })
}

/// What one line of the server leads to.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Messages to write, in order.
    pub outgoing: Vec<Value>,
    /// What happened in the turn.
    pub events: Vec<StructuredEvent>,
    /// An approval to ask for; its answer is written before anything else.
    pub ask: Option<Approval>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Initializing,
    OpeningThread,
    StartingTurn,
    Running,
    Done,
}

/// One turn's exchange with the app server.
#[derive(Debug)]
pub struct AppTurn {
    prompt: String,
    cwd: String,
    resume: Option<String>,
    phase: Phase,
    thread_id: Option<String>,
    turn_id: Option<String>,
    /// The thread's token totals before this turn's first model request.
    usage_base: Option<TurnUsage>,
    /// The thread's token totals as last reported during this turn.
    usage_total: Option<TurnUsage>,
    /// Paths of file-change items, by item id, for their approvals.
    changes: HashMap<String, Vec<String>>,
    /// Approvals asked of a person in this turn.
    asked: usize,
    /// Said in the turn's answer: the stored thread was gone and this
    /// turn started a new one, without the conversation's history.
    started_over: Option<String>,
    /// The last answer message, for the answer that carries the notice.
    last_message: Option<String>,
}

impl AppTurn {
    /// A turn running `prompt` in `cwd`, continuing the thread `resume`.
    pub fn new(prompt: &str, cwd: &Path, resume: Option<&str>) -> AppTurn {
        AppTurn {
            prompt: prompt.to_owned(),
            cwd: cwd.display().to_string(),
            resume: resume.map(str::to_owned),
            phase: Phase::Initializing,
            thread_id: None,
            turn_id: None,
            usage_base: None,
            usage_total: None,
            changes: HashMap::new(),
            asked: 0,
            started_over: None,
            last_message: None,
        }
    }

    /// The first message to write.
    pub fn start(&self) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": INITIALIZE_ID,
            "method": "initialize",
            "params": {
                "clientInfo": { "name": "scout", "version": env!("CARGO_PKG_VERSION") },
            },
        })
    }

    /// Whether the turn has ended (completed or failed).
    pub fn finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Ends the turn as a harness failure the IO around the protocol found
    /// (a line too long to read, a server that does not read its input).
    pub fn abort(&mut self, message: String) -> StructuredEvent {
        self.fail(FailureKind::Harness, message)
    }

    /// Takes one line from the server. `classify` tells a login failure
    /// from others.
    pub fn on_line(&mut self, line: &str, classify: &dyn Fn(&str) -> FailureKind) -> Step {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            return Step::default();
        };
        let method = message.get("method").and_then(Value::as_str);
        let has_id = message.get("id").is_some_and(|id| !id.is_null());
        if let (Some(method), false) = (method, has_id) {
            let params = message.get("params").unwrap_or(&Value::Null);
            return Step {
                events: self.on_notification(method, params, classify),
                ..Step::default()
            };
        }
        match acp::parse_incoming(line) {
            Incoming::Request { id, method, params } => self.on_request(id, &method, &params),
            Incoming::Response { id, result } => {
                self.on_response(id, result.map_err(|error| error.message), classify)
            }
            Incoming::Update { .. } | Incoming::Ignored(_) => Step::default(),
        }
    }

    fn on_response(
        &mut self,
        id: u64,
        result: Result<Value, String>,
        classify: &dyn Fn(&str) -> FailureKind,
    ) -> Step {
        let mut step = Step::default();
        match (self.phase, id, result) {
            (Phase::Initializing, INITIALIZE_ID, Ok(_)) => {
                step.outgoing
                    .push(json!({ "jsonrpc": "2.0", "method": "initialized" }));
                step.outgoing.push(self.thread_request());
                self.phase = Phase::OpeningThread;
            }
            (Phase::OpeningThread, THREAD_ID | NEW_THREAD_ID, Ok(result)) => {
                match result["thread"]["id"].as_str() {
                    Some(thread_id) => {
                        self.thread_id = Some(thread_id.to_owned());
                        step.events
                            .push(StructuredEvent::Session(thread_id.to_owned()));
                        step.outgoing.push(self.turn_request(thread_id));
                        self.phase = Phase::StartingTurn;
                    }
                    None => {
                        step.events.push(self.fail(
                            FailureKind::Harness,
                            "codex app-server opened a thread without an id".to_owned(),
                        ));
                    }
                }
            }
            (Phase::OpeningThread, THREAD_ID, Err(message))
                if self.resume.is_some() && message.contains(THREAD_NOT_FOUND) =>
            {
                // A thread Codex no longer has (its sessions were cleared)
                // starts over rather than failing every later turn; the
                // answer says so, since the model has lost the history.
                tracing::info!(%message, "codex no longer has its thread; starting a new one");
                self.resume = None;
                step.outgoing.push(self.thread_start(NEW_THREAD_ID));
                let notice = format!(
                    "[Codex no longer has this conversation's thread ({message}); this turn started a new one without the earlier history]"
                );
                step.events.push(StructuredEvent::Tool(notice.clone()));
                self.started_over = Some(notice);
            }
            (Phase::StartingTurn, TURN_ID, Ok(result)) => {
                // Without an id here, `turn/started` names the turn.
                if let Some(id) = result["turn"]["id"].as_str() {
                    self.turn_id = Some(id.to_owned());
                }
                self.phase = Phase::Running;
            }
            (Phase::Initializing | Phase::OpeningThread | Phase::StartingTurn, _, Err(message)) => {
                let kind = classify(&message);
                step.events.push(self.fail(
                    kind,
                    format!("codex app-server answered with an error: {message}"),
                ));
            }
            (_, id, _) => tracing::debug!(id, "an unexpected response from codex app-server"),
        }
        step
    }

    fn on_request(&mut self, id: Value, method: &str, params: &Value) -> Step {
        let summary = match method {
            "item/commandExecution/requestApproval" => Some(self.command_summary(params)),
            "item/fileChange/requestApproval" => Some(self.change_summary(params)),
            _ => None,
        };
        let refused = match summary {
            Some(Ok(summary)) if summary.len() > SUMMARY_BYTES_MAX => format!(
                "the request is {} bytes, more than an approval shows whole ({SUMMARY_BYTES_MAX})",
                summary.len()
            ),
            Some(Ok(_)) if self.asked >= APPROVALS_PER_TURN_MAX => {
                format!("this turn already asked {APPROVALS_PER_TURN_MAX} times")
            }
            Some(Ok(summary)) => {
                self.asked += 1;
                return Step {
                    ask: Some(Approval { id, summary }),
                    ..Step::default()
                };
            }
            Some(Err(why)) => why.to_owned(),
            // Other requests (user input, MCP elicitations, wider
            // permissions) have no person behind them here: refused.
            None => {
                return Step {
                    outgoing: vec![acp::method_not_found_response(&id, method)],
                    ..Step::default()
                };
            }
        };
        // Nobody is asked about what cannot be shown whole: declined, and
        // the model is told as for any decline.
        tracing::info!(%method, %refused, "declined a codex approval request without asking");
        Step {
            outgoing: vec![decision(&id, false)],
            events: vec![StructuredEvent::Tool(format!(
                "declined without asking: {refused}"
            ))],
            ask: None,
        }
    }

    /// The summary of a command's approval: the whole command, where it
    /// runs and why; an error when there is no command to show.
    fn command_summary(&self, params: &Value) -> Result<String, &'static str> {
        let command = params["command"]
            .as_str()
            .filter(|command| !command.trim().is_empty())
            .ok_or("the request names no command")?;
        let verb = match params["kind"].as_str() {
            // Input for a command already running in a terminal.
            Some("writeStdin") => "type into",
            _ => "run",
        };
        let mut summary = format!("{verb} `{}` outside the sandbox", escape(command, true));
        if let Some(host) = params["networkApprovalContext"]["host"].as_str() {
            summary.push_str(&format!(", reaching `{}`", escape(host, false)));
        }
        let cwd = params["cwd"].as_str().unwrap_or(&self.cwd);
        summary.push_str(&format!(", in `{}`", escape(cwd, false)));
        Ok(with_reason(summary, params))
    }

    /// The summary of a file change's approval: every path it edits; an
    /// error when the change's item (and so its paths) is not known.
    fn change_summary(&self, params: &Value) -> Result<String, &'static str> {
        let paths = params["itemId"]
            .as_str()
            .and_then(|item| self.changes.get(item))
            .filter(|paths| !paths.is_empty())
            .ok_or("the request does not say which files it edits")?;
        let paths = paths
            .iter()
            .map(|path| format!("`{}`", escape(path, false)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut summary = format!("edit {paths} outside the sandbox");
        if let Some(root) = params["grantRoot"].as_str() {
            summary.push_str(&format!(" (and write under `{}`)", escape(root, false)));
        }
        summary.push_str(&format!(", in `{}`", escape(&self.cwd, false)));
        Ok(with_reason(summary, params))
    }

    fn on_notification(
        &mut self,
        method: &str,
        params: &Value,
        classify: &dyn Fn(&str) -> FailureKind,
    ) -> Vec<StructuredEvent> {
        if self.phase == Phase::Done {
            return Vec::new();
        }
        // Notifications of other threads or turns (none are expected on a
        // server of one thread) are not this turn's.
        if let (Some(ours), Some(theirs)) = (&self.thread_id, params["threadId"].as_str())
            && ours != theirs
        {
            return Vec::new();
        }
        let item = &params["item"];
        match method {
            // The turn's id, when `turn/start` did not answer with one.
            "turn/started" => {
                if self.turn_id.is_none() {
                    self.turn_id = params["turn"]["id"].as_str().map(str::to_owned);
                }
                Vec::new()
            }
            "item/started" => match item["type"].as_str() {
                Some("commandExecution") => {
                    let command = item["command"].as_str().unwrap_or("");
                    vec![StructuredEvent::Tool(format!("$ {command}"))]
                }
                Some("fileChange") => {
                    if let Some(id) = item["id"].as_str()
                        && self.changes.len() < REMEMBERED_CHANGES_MAX
                    {
                        self.changes.insert(id.to_owned(), change_paths(item));
                    }
                    Vec::new()
                }
                _ => Vec::new(),
            },
            "item/completed" => match item["type"].as_str() {
                Some("agentMessage") => match item["text"].as_str() {
                    Some(text) => {
                        if self.started_over.is_some() {
                            self.last_message = Some(text.to_owned());
                        }
                        vec![StructuredEvent::Message(text.to_owned())]
                    }
                    None => Vec::new(),
                },
                Some("commandExecution") if item["status"] == "declined" => {
                    let command = item["command"].as_str().unwrap_or("");
                    vec![StructuredEvent::Tool(format!("declined: $ {command}"))]
                }
                Some("fileChange") => {
                    let paths = change_paths(item).join(", ");
                    let line = if item["status"] == "declined" {
                        format!("declined: edit {paths}")
                    } else {
                        format!("edit {paths}")
                    };
                    vec![StructuredEvent::Tool(line)]
                }
                _ => Vec::new(),
            },
            "thread/tokenUsage/updated" => {
                // A server of one thread runs one turn at a time: without
                // an id from `turn/start` or `turn/started`, the running
                // turn's usage is this turn's.
                if self.turn_id.is_none() && self.phase == Phase::Running {
                    self.turn_id = params["turnId"].as_str().map(str::to_owned);
                }
                if self.turn_id.is_some() && params["turnId"].as_str() == self.turn_id.as_deref() {
                    let usage = &params["tokenUsage"];
                    let total = token_usage(&usage["total"]);
                    if self.usage_base.is_none() {
                        self.usage_base = Some(minus(total, token_usage(&usage["last"])));
                    }
                    self.usage_total = Some(total);
                }
                Vec::new()
            }
            "error" => params["error"]["message"]
                .as_str()
                .map(|message| vec![StructuredEvent::Notice(message.to_owned())])
                .unwrap_or_default(),
            "turn/completed" => self.on_turn_completed(&params["turn"], classify),
            _ => Vec::new(),
        }
    }

    fn on_turn_completed(
        &mut self,
        turn: &Value,
        classify: &dyn Fn(&str) -> FailureKind,
    ) -> Vec<StructuredEvent> {
        if self.turn_id.is_some() && turn["id"].as_str() != self.turn_id.as_deref() {
            return Vec::new();
        }
        let mut events = Vec::new();
        if let (Some(base), Some(total)) = (self.usage_base, self.usage_total) {
            events.push(StructuredEvent::Usage(minus(total, base)));
        }
        let end = match turn["status"].as_str() {
            Some("completed") => {
                self.phase = Phase::Done;
                // A new thread's notice leads the answer, where the asker
                // sees it.
                let result =
                    self.started_over
                        .take()
                        .map(|notice| match self.last_message.take() {
                            Some(message) => format!("{notice}\n\n{message}"),
                            None => notice,
                        });
                StructuredEvent::Completed { result }
            }
            Some("interrupted") => {
                let message = self.with_notice("the Codex turn was interrupted".to_owned());
                self.fail(FailureKind::Harness, message)
            }
            _ => {
                let message = turn["error"]["message"]
                    .as_str()
                    .unwrap_or("the turn failed")
                    .to_owned();
                let kind = classify(&message);
                let message = self.with_notice(message);
                self.fail(kind, message)
            }
        };
        events.push(end);
        events
    }

    /// `message`, with the new thread's notice when this turn started one.
    fn with_notice(&self, message: String) -> String {
        match &self.started_over {
            Some(notice) => format!("{message} {notice}"),
            None => message,
        }
    }

    fn fail(&mut self, kind: FailureKind, message: String) -> StructuredEvent {
        self.phase = Phase::Done;
        StructuredEvent::Failed { kind, message }
    }

    fn thread_request(&self) -> Value {
        match &self.resume {
            Some(thread_id) => json!({
                "jsonrpc": "2.0",
                "id": THREAD_ID,
                "method": "thread/resume",
                "params": {
                    "threadId": thread_id,
                    "cwd": self.cwd,
                    "approvalPolicy": APPROVAL_POLICY,
                    "sandbox": SANDBOX,
                    "excludeTurns": true,
                },
            }),
            None => self.thread_start(THREAD_ID),
        }
    }

    fn thread_start(&self, id: u64) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "thread/start",
            "params": {
                "cwd": self.cwd,
                "approvalPolicy": APPROVAL_POLICY,
                "sandbox": SANDBOX,
            },
        })
    }

    fn turn_request(&self, thread_id: &str) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": TURN_ID,
            "method": "turn/start",
            "params": {
                "threadId": thread_id,
                "input": [{ "type": "text", "text": self.prompt }],
            },
        })
    }
}

/// `summary`, with the reason Codex gave, if any.
fn with_reason(mut summary: String, params: &Value) -> String {
    if let Some(reason) = params["reason"]
        .as_str()
        .filter(|reason| !reason.is_empty())
    {
        summary.push_str(&format!(": {}", escape(reason, false)));
    }
    summary
}

/// `text` as it is safe to show between backticks in a summary, escaped
/// the way a Rust string is: a backslash and a backtick get a backslash
/// (so the text cannot close its quoting, and an escape is never
/// ambiguous), and control characters (ESC, `\r`, …) and the Unicode
/// controls that reorder text are written as escapes, so nothing reaches a
/// terminal or disguises what runs. Line breaks stay when `keep_newlines`
/// (a multi-line command is shown as it runs), else they are `\n`. Tabs
/// stay: they move the cursor only.
pub(crate) fn escape(text: &str, keep_newlines: bool) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '`' => escaped.push_str("\\`"),
            '\n' if keep_newlines => escaped.push('\n'),
            '\t' => escaped.push('\t'),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            c if c.is_control() || is_reordering(c) => {
                escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => escaped.push(c),
        }
    }
    escaped
}

/// The Unicode bidirectional controls, which can show text in another
/// order than it runs in.
fn is_reordering(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn change_paths(item: &Value) -> Vec<String> {
    item["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|change| change["path"].as_str().map(str::to_owned))
        .collect()
}

/// A `TokenUsageBreakdown`: `inputTokens` counts the cached ones too, as
/// Scout does; `outputTokens` counts reasoning tokens.
fn token_usage(breakdown: &Value) -> TurnUsage {
    let count = |key: &str| breakdown[key].as_u64().unwrap_or(0);
    TurnUsage {
        input_tokens: count("inputTokens"),
        output_tokens: count("outputTokens"),
        cached_tokens: count("cachedInputTokens"),
        cost_micro_usd: None,
    }
}

fn minus(total: TurnUsage, part: TurnUsage) -> TurnUsage {
    TurnUsage {
        input_tokens: total.input_tokens.saturating_sub(part.input_tokens),
        output_tokens: total.output_tokens.saturating_sub(part.output_tokens),
        cached_tokens: total.cached_tokens.saturating_sub(part.cached_tokens),
        cost_micro_usd: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn harness(_: &str) -> FailureKind {
        FailureKind::Harness
    }

    fn feed(turn: &mut AppTurn, message: Value) -> Step {
        turn.on_line(&message.to_string(), &harness)
    }

    /// A turn past `initialize`, `thread/start` and `turn/start`.
    fn running(resume: Option<&str>) -> AppTurn {
        let mut turn = AppTurn::new("hello", Path::new("/work"), resume);
        assert_eq!(turn.start()["method"], "initialize");
        let step = feed(&mut turn, json!({ "id": 1, "result": {} }));
        assert_eq!(step.outgoing[0]["method"], "initialized");
        let thread = &step.outgoing[1];
        match resume {
            Some(id) => {
                assert_eq!(thread["method"], "thread/resume");
                assert_eq!(thread["params"]["threadId"], id);
            }
            None => assert_eq!(thread["method"], "thread/start"),
        }
        assert_eq!(thread["params"]["approvalPolicy"], APPROVAL_POLICY);
        assert_eq!(thread["params"]["sandbox"], SANDBOX);
        let step = feed(
            &mut turn,
            json!({ "id": 2, "result": { "thread": { "id": "t1" } } }),
        );
        assert_eq!(step.events, [StructuredEvent::Session("t1".to_owned())]);
        assert_eq!(step.outgoing[0]["method"], "turn/start");
        assert_eq!(step.outgoing[0]["params"]["input"][0]["text"], "hello");
        feed(
            &mut turn,
            json!({ "id": 3, "result": { "turn": { "id": "u1" } } }),
        );
        turn
    }

    #[test]
    fn a_turn_reports_its_answer_and_only_its_own_usage() {
        let mut turn = running(Some("t1"));
        let usage = |total: u64, last: u64| {
            json!({ "method": "thread/tokenUsage/updated", "params": {
                "threadId": "t1", "turnId": "u1", "tokenUsage": {
                    "total": { "inputTokens": total, "outputTokens": total / 4, "cachedInputTokens": total / 3 },
                    "last": { "inputTokens": last, "outputTokens": last / 4, "cachedInputTokens": last / 3 },
                } } })
        };
        // The thread had 600 input tokens from earlier turns.
        feed(&mut turn, usage(720, 120));
        feed(&mut turn, usage(840, 120));
        let step = feed(
            &mut turn,
            json!({ "method": "item/completed", "params": { "threadId": "t1",
                "item": { "type": "agentMessage", "text": "Done." } } }),
        );
        assert_eq!(step.events, [StructuredEvent::Message("Done.".to_owned())]);
        let step = feed(
            &mut turn,
            json!({ "method": "turn/completed", "params": { "threadId": "t1",
                "turn": { "id": "u1", "status": "completed" } } }),
        );
        assert_eq!(
            step.events,
            [
                StructuredEvent::Usage(TurnUsage {
                    input_tokens: 240,
                    output_tokens: 60,
                    cached_tokens: 80,
                    cost_micro_usd: None,
                }),
                StructuredEvent::Completed { result: None },
            ]
        );
        assert!(turn.finished());
    }

    #[test]
    fn approval_requests_are_asked_and_answered_once() {
        let mut turn = running(None);
        let step = feed(
            &mut turn,
            json!({ "method": "item/commandExecution/requestApproval", "id": 0, "params": {
                "threadId": "t1", "turnId": "u1", "itemId": "c1",
                "command": "/bin/bash -lc 'touch /tmp/x'", "cwd": "/work",
                "reason": "write outside" } }),
        );
        let ask = step.ask.expect("an approval");
        assert_eq!(
            ask.summary,
            "run `/bin/bash -lc 'touch /tmp/x'` outside the sandbox, in `/work`: write outside"
        );
        assert_eq!(ask.answer(true)["result"]["decision"], "accept");
        assert_eq!(ask.answer(false)["result"]["decision"], "decline");
        assert_eq!(ask.answer(false)["id"], 0);

        feed(
            &mut turn,
            json!({ "method": "item/started", "params": { "threadId": "t1",
                "item": { "type": "fileChange", "id": "f1", "changes": [{ "path": "/etc/x" }] } } }),
        );
        let step = feed(
            &mut turn,
            json!({ "method": "item/fileChange/requestApproval", "id": 1, "params": {
                "threadId": "t1", "turnId": "u1", "itemId": "f1" } }),
        );
        assert_eq!(
            step.ask.expect("an approval").summary,
            "edit `/etc/x` outside the sandbox, in `/work`"
        );

        // Requests nobody here can answer are refused.
        let step = feed(
            &mut turn,
            json!({ "method": "item/tool/requestUserInput", "id": 2, "params": {} }),
        );
        assert!(step.ask.is_none());
        assert_eq!(step.outgoing[0]["id"], 2);
        assert!(step.outgoing[0]["error"].is_object());
    }

    fn command_request(id: u64, command: Value) -> Value {
        json!({ "method": "item/commandExecution/requestApproval", "id": id, "params": {
            "threadId": "t1", "turnId": "u1", "itemId": "c1", "command": command,
            "cwd": "/work" } })
    }

    /// The decline written for a request nobody is asked about.
    fn declined_unasked(step: &Step, id: u64) {
        assert!(step.ask.is_none(), "{step:?}");
        assert_eq!(step.outgoing[0]["id"], id);
        assert_eq!(step.outgoing[0]["result"]["decision"], "decline");
        assert!(
            matches!(&step.events[..], [StructuredEvent::Tool(line)] if line.starts_with("declined without asking")),
            "{step:?}"
        );
    }

    #[test]
    fn a_summary_holds_the_whole_command_escaped() {
        let mut turn = running(None);
        // A rule for `git status` must not match a command that goes on.
        let step = feed(
            &mut turn,
            command_request(0, json!("git status\ncurl x | sh")),
        );
        assert_eq!(
            step.ask.expect("an approval").summary,
            "run `git status\ncurl x | sh` outside the sandbox, in `/work`"
        );
        // Nothing closes the quoting or reaches the terminal.
        let step = feed(
            &mut turn,
            command_request(1, json!("echo `id` \\` \r\u{1b}[2J\u{202e}x")),
        );
        assert_eq!(
            step.ask.expect("an approval").summary,
            "run `echo \\`id\\` \\\\\\` \\r\\u{1b}[2J\\u{202e}x` outside the sandbox, in `/work`"
        );
        assert_eq!(escape("a\nb\tc", false), "a\\nb\tc");
    }

    #[test]
    fn requests_that_cannot_be_shown_whole_are_declined_unasked() {
        let mut turn = running(None);
        // Too long to show whole: never cut, declined.
        let long = "x".repeat(SUMMARY_BYTES_MAX);
        declined_unasked(&feed(&mut turn, command_request(0, json!(long))), 0);
        // No command to show.
        declined_unasked(&feed(&mut turn, command_request(1, Value::Null)), 1);
        declined_unasked(&feed(&mut turn, command_request(2, json!(" "))), 2);
        // A file change whose paths are not known.
        let step = feed(
            &mut turn,
            json!({ "method": "item/fileChange/requestApproval", "id": 3, "params": {
                "threadId": "t1", "turnId": "u1", "itemId": "unknown" } }),
        );
        declined_unasked(&step, 3);
        // None of these counted against the turn's approvals.
        for id in 0..APPROVALS_PER_TURN_MAX as u64 {
            let step = feed(&mut turn, command_request(10 + id, json!("ls")));
            assert!(step.ask.is_some(), "request {id}: {step:?}");
        }
        declined_unasked(&feed(&mut turn, command_request(99, json!("ls"))), 99);
    }

    #[test]
    fn a_turn_without_an_id_counts_the_running_turns_usage() {
        let mut turn = AppTurn::new("hello", Path::new("/work"), None);
        feed(&mut turn, json!({ "id": 1, "result": {} }));
        feed(
            &mut turn,
            json!({ "id": 2, "result": { "thread": { "id": "t1" } } }),
        );
        feed(&mut turn, json!({ "id": 3, "result": { "turn": {} } }));
        let usage = json!({ "method": "thread/tokenUsage/updated", "params": {
            "threadId": "t1", "turnId": "u9", "tokenUsage": {
                "total": { "inputTokens": 100, "outputTokens": 10 },
                "last": { "inputTokens": 100, "outputTokens": 10 } } } });
        feed(&mut turn, usage);
        let step = feed(
            &mut turn,
            json!({ "method": "turn/completed", "params": { "threadId": "t1",
                "turn": { "id": "u9", "status": "completed" } } }),
        );
        assert_eq!(
            step.events[0],
            StructuredEvent::Usage(TurnUsage {
                input_tokens: 100,
                output_tokens: 10,
                cached_tokens: 0,
                cost_micro_usd: None,
            })
        );

        // `turn/started` names the turn too.
        let mut turn = AppTurn::new("hello", Path::new("/work"), None);
        feed(&mut turn, json!({ "id": 1, "result": {} }));
        feed(
            &mut turn,
            json!({ "id": 2, "result": { "thread": { "id": "t1" } } }),
        );
        feed(
            &mut turn,
            json!({ "method": "turn/started", "params": { "threadId": "t1", "turn": { "id": "u2" } } }),
        );
        feed(&mut turn, json!({ "id": 3, "result": {} }));
        assert_eq!(turn.turn_id.as_deref(), Some("u2"));
    }

    #[test]
    fn a_thread_that_cannot_be_resumed_starts_over_and_failures_are_typed() {
        let mut turn = AppTurn::new("hello", Path::new("/work"), Some("gone"));
        feed(&mut turn, json!({ "id": 1, "result": {} }));
        // The pinned server's words for a thread it does not have.
        let step = feed(
            &mut turn,
            json!({ "id": 2, "error": { "code": -32600,
                "message": "no rollout found for thread id gone" } }),
        );
        assert_eq!(step.outgoing[0]["method"], "thread/start");
        assert!(!turn.finished());
        feed(
            &mut turn,
            json!({ "id": 4, "result": { "thread": { "id": "t2" } } }),
        );
        feed(
            &mut turn,
            json!({ "id": 3, "result": { "turn": { "id": "u1" } } }),
        );
        feed(
            &mut turn,
            json!({ "method": "item/completed", "params": { "threadId": "t2",
                "item": { "type": "agentMessage", "text": "Hi." } } }),
        );
        let step = feed(
            &mut turn,
            json!({ "method": "turn/completed", "params": { "threadId": "t2",
                "turn": { "id": "u1", "status": "completed" } } }),
        );
        // The answer says the history is gone.
        match &step.events[..] {
            [
                StructuredEvent::Completed {
                    result: Some(result),
                },
            ] => {
                assert!(result.contains("started a new one"), "{result}");
                assert!(result.ends_with("\n\nHi."), "{result}");
            }
            other => panic!("{other:?}"),
        }

        // Any other error fails the turn: the conversation is kept.
        let mut turn = AppTurn::new("hello", Path::new("/work"), Some("t1"));
        feed(&mut turn, json!({ "id": 1, "result": {} }));
        let step = feed(
            &mut turn,
            json!({ "id": 2, "error": { "code": -32603, "message": "database is locked" } }),
        );
        assert!(step.outgoing.is_empty(), "{step:?}");
        assert!(matches!(&step.events[..], [StructuredEvent::Failed { .. }]));
        assert!(turn.finished());

        let mut turn = running(None);
        let step = feed(
            &mut turn,
            json!({ "method": "turn/completed", "params": { "threadId": "t1",
                "turn": { "id": "u1", "status": "failed", "error": { "message": "401 Unauthorized" } } } }),
        );
        assert_eq!(
            step.events,
            [StructuredEvent::Failed {
                kind: FailureKind::Harness,
                message: "401 Unauthorized".to_owned()
            }]
        );
        assert!(turn.finished());
    }
}
