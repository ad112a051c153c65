//! Any agent that speaks the Agent Client Protocol (ACP): `gemini --acp`,
//! `opencode acp`, and others. ACP is JSON-RPC 2.0 over the agent's
//! standard input and output, one message per line. The client (Scout)
//! sends `initialize`, `session/new` (or `session/load`, to continue a
//! session after the agent restarted, when the agent says it can), then
//! one `session/prompt` per turn, and `session/cancel` to stop one; the
//! agent streams `session/update` notifications (message and thought
//! chunks, tool calls, plans, usage) and asks `session/request_permission`
//! before it runs a tool, which Scout answers by [`permission_choice`].
//!
//! This module is the protocol's pure part: the adapter, the messages Scout
//! sends, and the parsing of what the agent sends, with no IO. The process
//! and the turn loop live in `crate::pty::acp_turn`.
//!
//! Why a small client of our own rather than the `agent-client-protocol`
//! crate: the crate's connection runs its futures on a single-threaded
//! `LocalSet` (its traits are `?Send`), while the session runtime drives
//! turns from tasks of the multi-threaded tokio runtime; and Scout uses a
//! handful of messages (initialize, new, load, prompt, cancel, permission),
//! whose field names are taken from the protocol's schema (protocol
//! version 1) and checked against `gemini --acp` in `tests/acp.rs`.
//!
//! The terminal of an ACP session holds no agent (the agent's standard
//! input and output carry the protocol): it shows which agent the session
//! talks to and stays open for the session's life.

use std::path::Path;

use scout_mesh::lifecycle::Harness;
use serde_json::{Value, json};

use super::{
    Adapter, AgentEnv, AuthStatus, FailureKind, ScreenState, ScreenView, TurnStyle, TurnUsage,
};

/// The ACP version Scout speaks. Version 1 is the only stable one; an agent
/// answers `initialize` with the version it speaks and Scout proceeds with
/// any answer (the messages Scout uses are the same in every version so
/// far).
pub const ACP_PROTOCOL_VERSION: u64 = 1;

/// The JSON-RPC error code ACP reserves for "authentication required";
/// `gemini --acp` answers `session/new` with it when it has no credentials.
pub const AUTH_REQUIRED_CODE: i64 = -32000;

/// The JSON-RPC error code for a method the receiver does not implement.
pub const METHOD_NOT_FOUND_CODE: i64 = -32601;

/// Characters of a tool's title kept in its one-line description: a title
/// can be a whole shell script; a person reads the first line.
const TOOL_TITLE_CHARS_MAX: usize = 200;

/// Words of an error message that mean a missing or rejected login, for
/// agents that do not use [`AUTH_REQUIRED_CODE`].
const AUTH_FAILURE_MARKERS: &[&str] = &[
    "authentication required",
    "auth required",
    "not authenticated",
    "not logged in",
    "login required",
    "api key not valid",
    "unauthenticated",
];

/// An ACP agent, run as `command`.
#[derive(Debug, Clone)]
pub struct AcpAdapter {
    argv: Vec<String>,
}

impl AcpAdapter {
    /// The adapter running `argv` (never empty). A command given as one
    /// string with blanks (`"gemini --acp"`) is split on them, as
    /// `POST /agents` splits a command line, unless a program of exactly
    /// that name exists.
    pub fn new(mut argv: Vec<String>) -> AcpAdapter {
        if let [line] = argv.as_slice()
            && line.split_whitespace().nth(1).is_some()
            && !Path::new(line).exists()
        {
            argv = line.split_whitespace().map(str::to_owned).collect();
        }
        AcpAdapter { argv }
    }
}

impl Adapter for AcpAdapter {
    fn harness(&self) -> Harness {
        Harness::Acp
    }

    fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    fn interactive_argv(&self) -> Vec<String> {
        // `tail -f /dev/null` waits for ever without reading the terminal;
        // the session ends when it is stopped, as any session does.
        let mut argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "printf 'ACP agent: %s\\n(turns run over the Agent Client Protocol, not on this terminal)\\n' \"$*\"; exec tail -f /dev/null".to_owned(),
            "scout-acp".to_owned(),
        ];
        argv.extend(self.argv.iter().cloned());
        argv
    }

    fn auth_status(&self, _env: &AgentEnv) -> AuthStatus {
        // The agent says so itself, when a session starts (AUTH_REQUIRED).
        AuthStatus::Unknown
    }

    fn classify(&self, _view: ScreenView<'_>) -> ScreenState {
        ScreenState::Ready
    }

    fn turn_style(&self) -> TurnStyle {
        TurnStyle::Acp
    }

    fn ready_at_spawn(&self) -> bool {
        true
    }

    fn acp_command(&self) -> Option<Vec<String>> {
        Some(self.argv.clone())
    }

    fn classify_failure(&self, text: &str) -> FailureKind {
        let lower = text.to_lowercase();
        if AUTH_FAILURE_MARKERS
            .iter()
            .any(|marker| lower.contains(marker))
        {
            FailureKind::AuthRequired
        } else {
            FailureKind::Harness
        }
    }

    fn install_hint(&self) -> &'static str {
        "install the agent, or give the full path of an executable in `command`"
    }

    fn login_hint(&self) -> &'static str {
        "log in with the agent's own CLI (for gemini: run `gemini` once, or set GEMINI_API_KEY)"
    }
}

/// What a JSON-RPC error from the agent means: ACP's auth-required code, or
/// words of a missing login (some agents pass the model API's HTTP status
/// as the code: 401 is a rejected key), else a harness failure.
pub fn failure_kind(error: &RpcError) -> FailureKind {
    let lower = error.message.to_lowercase();
    if error.code == AUTH_REQUIRED_CODE
        || error.code == 401
        || AUTH_FAILURE_MARKERS
            .iter()
            .any(|marker| lower.contains(marker))
    {
        FailureKind::AuthRequired
    } else {
        FailureKind::Harness
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The code.
    pub code: i64,
    /// The message.
    pub message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

/// One message from the agent, parsed from one line.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The answer to one of Scout's requests.
    Response {
        /// The id of the request (Scout's ids are numbers).
        id: u64,
        /// Its result, or the error.
        result: Result<Value, RpcError>,
    },
    /// A `session/update` notification.
    Update {
        /// The ACP session it belongs to.
        session_id: String,
        /// What happened.
        update: SessionUpdate,
    },
    /// A request from the agent, which Scout must answer.
    Request {
        /// The id to answer with, as the agent sent it.
        id: Value,
        /// The method.
        method: String,
        /// The parameters.
        params: Value,
    },
    /// Anything else: another notification, a response to an id Scout
    /// never used, a line that is not JSON-RPC. Agents may log to their
    /// output; such lines are skipped, never fatal.
    Ignored(String),
}

/// What a `session/update` reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionUpdate {
    /// A piece of the answer.
    MessageChunk(String),
    /// A piece of the agent's reasoning (not part of the answer).
    ThoughtChunk(String),
    /// A tool call started or changed (`tool_call` and `tool_call_update`).
    Tool(ToolCall),
    /// The agent's plan, by its entries.
    Plan(Vec<String>),
    /// Scout answered a permission request for a tool (not sent by the
    /// agent as an update: the client reports its own answer this way).
    Permission {
        /// The tool call asked about.
        tool: Option<ToolCall>,
        /// The kind of the option chosen (`allow_once`, `reject_once`,
        /// ...), `None` when Scout answered "cancelled".
        chosen_kind: Option<String>,
    },
    /// The context window and the session's cumulative cost.
    Usage {
        /// The session's cost so far, in micro-USD, when the agent gives one
        /// in US dollars.
        cost_micro_usd: Option<u64>,
    },
    /// A kind Scout does not act on (`user_message_chunk` of a replayed
    /// session, `available_commands_update`, `current_mode_update`, ...).
    Other(String),
}

/// A tool call as `tool_call`, `tool_call_update` or a permission request
/// describe it (every field but the id may be missing in an update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The agent's id for the call.
    pub id: String,
    /// What it does, for a person (`echo hi`, `Read src/main.rs`).
    pub title: Option<String>,
    /// `read`, `edit`, `execute`, ...
    pub kind: Option<String>,
    /// `pending`, `in_progress`, `completed` or `failed`.
    pub status: Option<String>,
}

impl ToolCall {
    /// One line for a person: `$ echo hi` for a command, else the title
    /// with its kind (`read: src/main.rs`).
    pub fn line(&self) -> String {
        let title = self.title.as_deref().unwrap_or(&self.id);
        let first_line = title.lines().next().unwrap_or_default();
        let mut title: String = first_line.chars().take(TOOL_TITLE_CHARS_MAX).collect();
        if title.len() < first_line.len() {
            title.push('…');
        }
        match self.kind.as_deref() {
            Some("execute") => format!("$ {title}"),
            Some(kind) if kind != "other" => format!("{kind}: {title}"),
            _ => title,
        }
    }

    fn from_value(value: &Value) -> Option<ToolCall> {
        Some(ToolCall {
            id: value.get("toolCallId")?.as_str()?.to_owned(),
            title: str_field(value, "title"),
            kind: str_field(value, "kind"),
            status: str_field(value, "status"),
        })
    }
}

/// How a `session/prompt` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptResult {
    /// `end_turn`, `max_tokens`, `max_turn_requests`, `refusal` or
    /// `cancelled`.
    pub stop_reason: String,
    /// The turn's tokens, when the agent reports them (`usage`, or
    /// `_meta.quota.token_count` from `gemini --acp`).
    pub usage: Option<TurnUsage>,
}

/// One option of a permission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionOption {
    /// The id to answer with.
    pub option_id: String,
    /// `allow_once`, `allow_always`, `reject_once` or `reject_always`.
    pub kind: String,
}

/// A `session/request_permission` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRequest {
    /// The ACP session.
    pub session_id: String,
    /// The tool call it is about.
    pub tool_call: Option<ToolCall>,
    /// The options offered.
    pub options: Vec<PermissionOption>,
}

/// Scout's answer to a permission request: the option chosen, or
/// `None` for "cancelled" (nothing acceptable was offered).
///
/// The policy: a tool runs once when the agent offers to allow it once,
/// since an agent under Scout works unattended on what it was asked and
/// Scout has nobody to ask; it never grants "always" (which would outlive
/// the turn and the policy), and refuses once when no one-time allowance
/// is offered. A configurable policy replaces this function.
pub fn permission_choice(options: &[PermissionOption]) -> Option<&PermissionOption> {
    let of_kind = |kind: &str| options.iter().find(|option| option.kind == kind);
    of_kind("allow_once")
        .or_else(|| of_kind("reject_once"))
        .or_else(|| of_kind("reject_always"))
}

/// Parses one line from the agent.
pub fn parse_incoming(line: &str) -> Incoming {
    let Ok(message) = serde_json::from_str::<Value>(line) else {
        return Incoming::Ignored("not JSON".to_owned());
    };
    let method = message.get("method").and_then(Value::as_str);
    let id = message.get("id").filter(|id| !id.is_null());
    match (method, id) {
        (Some(method), Some(id)) => Incoming::Request {
            id: id.clone(),
            method: method.to_owned(),
            params: message.get("params").cloned().unwrap_or(Value::Null),
        },
        (Some("session/update"), None) => {
            let params = message.get("params").unwrap_or(&Value::Null);
            match (
                str_field(params, "sessionId"),
                params.get("update").and_then(parse_update),
            ) {
                (Some(session_id), Some(update)) => Incoming::Update { session_id, update },
                _ => Incoming::Ignored("a session/update without a session or an update".into()),
            }
        }
        (Some(method), None) => Incoming::Ignored(format!("notification {method}")),
        (None, Some(id)) => {
            let Some(id) = id.as_u64() else {
                return Incoming::Ignored(format!("a response to id {id}"));
            };
            let result = match (message.get("result"), message.get("error")) {
                (_, Some(error)) if !error.is_null() => Err(RpcError {
                    code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: error_message(error),
                }),
                (Some(result), _) => Ok(result.clone()),
                (None, _) => Ok(Value::Null),
            };
            Incoming::Response { id, result }
        }
        (None, None) => Incoming::Ignored("neither a request nor a response".to_owned()),
    }
}

/// The message of a JSON-RPC error, with its `data` when that says more
/// (gemini puts the details there).
fn error_message(error: &Value) -> String {
    let message = str_field(error, "message").unwrap_or_else(|| "unknown error".to_owned());
    match error.get("data") {
        Some(Value::String(data)) if !data.is_empty() && !message.contains(data.as_str()) => {
            format!("{message}: {data}")
        }
        Some(data @ Value::Object(_)) => {
            match str_field(data, "message").or_else(|| str_field(data, "details")) {
                Some(detail) if !message.contains(&detail) => format!("{message}: {detail}"),
                _ => message,
            }
        }
        _ => message,
    }
}

fn parse_update(update: &Value) -> Option<SessionUpdate> {
    let kind = update.get("sessionUpdate")?.as_str()?;
    let text = || {
        let content = update.get("content")?;
        (content.get("type")?.as_str()? == "text")
            .then(|| content.get("text")?.as_str().map(str::to_owned))
            .flatten()
    };
    Some(match kind {
        "agent_message_chunk" => match text() {
            Some(text) => SessionUpdate::MessageChunk(text),
            None => SessionUpdate::Other("agent_message_chunk without text".to_owned()),
        },
        "agent_thought_chunk" => SessionUpdate::ThoughtChunk(text().unwrap_or_default()),
        "tool_call" | "tool_call_update" => SessionUpdate::Tool(ToolCall::from_value(update)?),
        "plan" => SessionUpdate::Plan(
            update
                .get("entries")
                .and_then(Value::as_array)
                .map(|entries| {
                    entries
                        .iter()
                        .filter_map(|entry| str_field(entry, "content"))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        "usage_update" => SessionUpdate::Usage {
            cost_micro_usd: update.get("cost").and_then(micro_usd),
        },
        other => SessionUpdate::Other(other.to_owned()),
    })
}

/// A cost `{amount, currency}` in micro-USD, when it is in US dollars and
/// a sane amount.
fn micro_usd(cost: &Value) -> Option<u64> {
    let currency = cost.get("currency")?.as_str()?;
    if !currency.eq_ignore_ascii_case("usd") {
        return None;
    }
    let amount = cost.get("amount")?.as_f64()?;
    if !amount.is_finite() || amount < 0.0 {
        return None;
    }
    // Saturates at u64::MAX for absurd amounts (float-to-int casts do).
    Some((amount * 1_000_000.0).round() as u64)
}

/// Parses the result of `session/prompt`.
pub fn parse_prompt_result(result: &Value) -> PromptResult {
    let stop_reason = str_field(result, "stopReason").unwrap_or_else(|| "end_turn".to_owned());
    let count = |value: &Value, name: &str| value.get(name).and_then(Value::as_u64);
    let usage = if let Some(usage) = result.get("usage").filter(|usage| usage.is_object()) {
        Some(TurnUsage {
            input_tokens: count(usage, "inputTokens").unwrap_or(0),
            output_tokens: count(usage, "outputTokens").unwrap_or(0),
            cached_tokens: count(usage, "cachedReadTokens").unwrap_or(0),
            cost_micro_usd: None,
        })
    } else {
        result
            .pointer("/_meta/quota/token_count")
            .filter(|tokens| tokens.is_object())
            .map(|tokens| TurnUsage {
                input_tokens: count(tokens, "input_tokens").unwrap_or(0),
                output_tokens: count(tokens, "output_tokens").unwrap_or(0),
                cached_tokens: 0,
                cost_micro_usd: None,
            })
    };
    PromptResult { stop_reason, usage }
}

/// Parses the parameters of `session/request_permission`.
pub fn parse_permission_request(params: &Value) -> PermissionRequest {
    PermissionRequest {
        session_id: str_field(params, "sessionId").unwrap_or_default(),
        tool_call: params.get("toolCall").and_then(ToolCall::from_value),
        options: params
            .get("options")
            .and_then(Value::as_array)
            .map(|options| {
                options
                    .iter()
                    .filter_map(|option| {
                        Some(PermissionOption {
                            option_id: str_field(option, "optionId")?,
                            kind: str_field(option, "kind")?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// What `initialize` tells about the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentCapabilities {
    /// Whether it implements `session/load`.
    pub load_session: bool,
}

/// Parses the result of `initialize`.
pub fn parse_initialize_result(result: &Value) -> AgentCapabilities {
    AgentCapabilities {
        load_session: result
            .pointer("/agentCapabilities/loadSession")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// The session id in the result of `session/new`.
pub fn parse_new_session_result(result: &Value) -> Option<String> {
    str_field(result, "sessionId").filter(|id| !id.is_empty())
}

/// The `initialize` request: Scout offers no file system and no terminal
/// (the agent uses its own tools).
pub fn initialize_request(id: u64) -> Value {
    request(
        id,
        "initialize",
        json!({
            "protocolVersion": ACP_PROTOCOL_VERSION,
            "clientCapabilities": {
                "fs": { "readTextFile": false, "writeTextFile": false },
                "terminal": false,
            },
            "clientInfo": { "name": "scout", "version": env!("CARGO_PKG_VERSION") },
        }),
    )
}

/// The `session/new` request for a session working in `cwd`, with the MCP
/// servers `mcp_servers` (an array).
pub fn new_session_request(id: u64, cwd: &Path, mcp_servers: &Value) -> Value {
    request(
        id,
        "session/new",
        json!({ "cwd": cwd.display().to_string(), "mcpServers": mcp_servers }),
    )
}

/// The `session/load` request continuing `session_id` in `cwd`.
pub fn load_session_request(id: u64, session_id: &str, cwd: &Path, mcp_servers: &Value) -> Value {
    request(
        id,
        "session/load",
        json!({
            "sessionId": session_id,
            "cwd": cwd.display().to_string(),
            "mcpServers": mcp_servers,
        }),
    )
}

/// The `session/prompt` request sending `text` to `session_id`.
pub fn prompt_request(id: u64, session_id: &str, text: &str) -> Value {
    request(
        id,
        "session/prompt",
        json!({
            "sessionId": session_id,
            "prompt": [{ "type": "text", "text": text }],
        }),
    )
}

/// The `session/cancel` notification.
pub fn cancel_notification(session_id: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "session/cancel",
        "params": { "sessionId": session_id },
    })
}

/// The answer to a permission request: the option chosen, or cancelled.
pub fn permission_response(id: &Value, choice: Option<&str>) -> Value {
    let outcome = match choice {
        Some(option_id) => json!({ "outcome": "selected", "optionId": option_id }),
        None => json!({ "outcome": "cancelled" }),
    };
    json!({ "jsonrpc": "2.0", "id": id, "result": { "outcome": outcome } })
}

/// The answer to a request Scout does not implement.
pub fn method_not_found_response(id: &Value, method: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": METHOD_NOT_FOUND_CODE,
            "message": format!("scout does not implement `{method}`"),
        },
    })
}

fn request(id: u64, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

fn str_field(value: &Value, name: &str) -> Option<String> {
    value.get(name).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as `gemini --acp` (0.61.0) writes them.
    const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,"authMethods":[{"id":"oauth-personal","name":"Log in with Google","description":"Log in with your Google account"}],"agentInfo":{"name":"gemini-cli","title":"Gemini CLI","version":"0.61.0"},"agentCapabilities":{"loadSession":true,"promptCapabilities":{"image":true,"audio":true,"embeddedContext":true},"mcpCapabilities":{"http":true,"sse":true}}}}"#;
    const NEW_SESSION: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"sessionId":"5d1c7a52-3a8e-4d8a-9d2e-0c8f1b6e7a10","modes":{"availableModes":[],"currentModeId":"default"}}}"#;
    const AUTH_ERROR: &str =
        r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"Authentication required"}}"#;
    const CHUNK: &str = r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"Hello"}}}}"#;
    const THOUGHT: &str = r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_thought_chunk","content":{"type":"text","text":"**Plan**\nthink"}}}}"#;
    const PERMISSION: &str = r#"{"jsonrpc":"2.0","id":0,"method":"session/request_permission","params":{"sessionId":"s1","options":[{"optionId":"proceed_always","name":"Always Allow","kind":"allow_always"},{"optionId":"proceed_once","name":"Allow","kind":"allow_once"},{"optionId":"cancel","name":"Reject","kind":"reject_once"}],"toolCall":{"toolCallId":"run_shell_command-1","status":"pending","title":"echo hi","content":[],"locations":[],"kind":"execute"}}}"#;
    const TOOL_UPDATE: &str = r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"tool_call_update","toolCallId":"run_shell_command-1","status":"completed","title":"echo hi","content":[{"type":"content","content":{"type":"text","text":"hi"}}],"locations":[],"kind":"execute"}}}"#;
    const PROMPT_DONE: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn","_meta":{"quota":{"token_count":{"input_tokens":120,"output_tokens":30},"model_usage":[]}}}}"#;

    #[test]
    fn initialize_and_new_session_results() {
        let Incoming::Response {
            id: 0,
            result: Ok(result),
        } = parse_incoming(INITIALIZE)
        else {
            panic!("not a response");
        };
        assert!(parse_initialize_result(&result).load_session);
        let Incoming::Response {
            id: 1,
            result: Ok(result),
        } = parse_incoming(NEW_SESSION)
        else {
            panic!("not a response");
        };
        assert_eq!(
            parse_new_session_result(&result).as_deref(),
            Some("5d1c7a52-3a8e-4d8a-9d2e-0c8f1b6e7a10")
        );
        assert!(!parse_initialize_result(&json!({})).load_session);
    }

    #[test]
    fn the_auth_error_means_auth_required() {
        let Incoming::Response {
            result: Err(error), ..
        } = parse_incoming(AUTH_ERROR)
        else {
            panic!("not an error");
        };
        assert_eq!(error.code, AUTH_REQUIRED_CODE);
        assert_eq!(failure_kind(&error), FailureKind::AuthRequired);
        let other = RpcError {
            code: 500,
            message: "Internal error: quota exceeded".to_owned(),
        };
        assert_eq!(failure_kind(&other), FailureKind::Harness);
        let data = parse_incoming(
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"Internal error","data":{"details":"boom"}}}"#,
        );
        let Incoming::Response {
            result: Err(error), ..
        } = data
        else {
            panic!("not an error");
        };
        assert_eq!(error.message, "Internal error: boom");
    }

    #[test]
    fn updates_become_chunks_thoughts_and_tools() {
        assert_eq!(
            parse_incoming(CHUNK),
            Incoming::Update {
                session_id: "s1".to_owned(),
                update: SessionUpdate::MessageChunk("Hello".to_owned()),
            }
        );
        assert!(matches!(
            parse_incoming(THOUGHT),
            Incoming::Update {
                update: SessionUpdate::ThoughtChunk(_),
                ..
            }
        ));
        let Incoming::Update {
            update: SessionUpdate::Tool(tool),
            ..
        } = parse_incoming(TOOL_UPDATE)
        else {
            panic!("not a tool update");
        };
        assert_eq!(tool.id, "run_shell_command-1");
        assert_eq!(tool.status.as_deref(), Some("completed"));
        assert_eq!(tool.line(), "$ echo hi");
    }

    #[test]
    fn the_policy_allows_once() {
        let Incoming::Request { id, method, params } = parse_incoming(PERMISSION) else {
            panic!("not a request");
        };
        assert_eq!(method, "session/request_permission");
        let request = parse_permission_request(&params);
        assert_eq!(request.session_id, "s1");
        assert_eq!(request.tool_call.as_ref().unwrap().line(), "$ echo hi");
        let choice = permission_choice(&request.options).map(|option| option.option_id.as_str());
        assert_eq!(choice, Some("proceed_once"));
        assert_eq!(
            permission_response(&id, choice),
            json!({"jsonrpc":"2.0","id":0,"result":{"outcome":{"outcome":"selected","optionId":"proceed_once"}}})
        );
        let only_always = [PermissionOption {
            option_id: "always".to_owned(),
            kind: "allow_always".to_owned(),
        }];
        assert!(permission_choice(&only_always).is_none());
        assert_eq!(
            permission_response(&id, None)["result"]["outcome"]["outcome"],
            "cancelled"
        );
    }

    #[test]
    fn prompt_results_carry_usage() {
        let Incoming::Response {
            result: Ok(result), ..
        } = parse_incoming(PROMPT_DONE)
        else {
            panic!("not a response");
        };
        let done = parse_prompt_result(&result);
        assert_eq!(done.stop_reason, "end_turn");
        assert_eq!(
            done.usage,
            Some(TurnUsage {
                input_tokens: 120,
                output_tokens: 30,
                cached_tokens: 0,
                cost_micro_usd: None
            })
        );
        let standard = parse_prompt_result(&json!({
            "stopReason": "cancelled",
            "usage": {"inputTokens": 10, "outputTokens": 2, "cachedReadTokens": 4, "totalTokens": 12}
        }));
        assert_eq!(standard.stop_reason, "cancelled");
        assert_eq!(standard.usage.unwrap().cached_tokens, 4);
        assert_eq!(parse_prompt_result(&json!({})).usage, None);
    }

    #[test]
    fn usage_updates_carry_the_cost_in_dollars_only() {
        let line = r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"usage_update","used":5000,"size":200000,"cost":{"amount":0.0125,"currency":"USD"}}}}"#;
        assert_eq!(
            parse_incoming(line),
            Incoming::Update {
                session_id: "s1".to_owned(),
                update: SessionUpdate::Usage {
                    cost_micro_usd: Some(12_500)
                },
            }
        );
        assert_eq!(micro_usd(&json!({"amount": 1.0, "currency": "EUR"})), None);
        assert_eq!(micro_usd(&json!({"amount": -1.0, "currency": "USD"})), None);
    }

    #[test]
    fn bad_lines_are_ignored() {
        for line in [
            "",
            "not json",
            "[1,2]",
            "{}",
            r#"{"jsonrpc":"2.0","method":"session/update","params":{}}"#,
            r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"tool_call"}}}"#,
            r#"{"jsonrpc":"2.0","id":"x","result":{}}"#,
            r#"{"jsonrpc":"2.0","method":"_gemini/log","params":{}}"#,
        ] {
            assert!(
                matches!(parse_incoming(line), Incoming::Ignored(_)),
                "{line}"
            );
        }
    }

    #[test]
    fn requests_use_the_schema_names() {
        let prompt = prompt_request(7, "s1", "hello");
        assert_eq!(prompt["method"], "session/prompt");
        assert_eq!(prompt["params"]["prompt"][0]["type"], "text");
        assert_eq!(prompt["params"]["sessionId"], "s1");
        let new = new_session_request(1, Path::new("/tmp/work"), &json!([]));
        assert_eq!(new["params"]["cwd"], "/tmp/work");
        assert_eq!(new["params"]["mcpServers"], json!([]));
        assert_eq!(initialize_request(0)["params"]["protocolVersion"], 1);
        assert_eq!(cancel_notification("s1").get("id"), None);
    }

    #[test]
    fn the_harness_needs_a_command() {
        let err = super::super::adapter_for(Harness::Acp, &super::super::AdapterOptions::default())
            .unwrap_err();
        assert_eq!(err, super::super::AdapterError::MissingCommand);
    }

    #[test]
    fn a_command_line_is_split() {
        let adapter = AcpAdapter::new(vec!["gemini --acp".to_owned()]);
        assert_eq!(adapter.acp_command().unwrap(), ["gemini", "--acp"]);
        let adapter = AcpAdapter::new(vec!["opencode".to_owned(), "acp".to_owned()]);
        assert_eq!(adapter.program(), "opencode");
    }
}
