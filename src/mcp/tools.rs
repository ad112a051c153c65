//! The tool catalogue: each tool's name, the description a model acts on,
//! and its JSON schema; and the typed arguments each call is parsed into,
//! refusing unknown fields, so a mistake in the arguments is an
//! `INVALID_ARGUMENTS` error that says which field.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::ToolError;

/// The tool names, as the catalogue lists them.
pub const TOOL_NAMES: [&str; 12] = [
    "whoami",
    "agents",
    "resolve",
    "send",
    "ask",
    "invocation",
    "inbox",
    "reply",
    "work_orders",
    "peers",
    "request_approval",
    "permission",
];

/// Every tool with its description and schema.
pub fn catalogue() -> Vec<Tool> {
    vec![
        tool(
            "whoami",
            "Who is calling: this agent's instance name (`@name@node#workspace`), its node and \
             mesh. The instance is \"operator\" when this server was not started by Scout for \
             an agent (a person's own session).",
            json!({}),
            &[],
            true,
        ),
        tool(
            "agents",
            "Every agent instance in the mesh, on every node: name, owner node, state \
             (idle, working, unreachable, …), harness and workspace directory. Filter by a \
             name prefix (`@fab`) or a node name.",
            json!({
                "prefix": {"type": "string", "description": "Only names starting with this (`@fabric`, `fab`)."},
                "node": {"type": "string", "description": "Only instances on this node (its name or node id)."}
            }),
            &[],
            true,
        ),
        tool(
            "resolve",
            "What a mention means: which instance `@fabric` (or `@fabric@devbox`, \
             `@fabric#main`) would reach and why, with the other matches best first. When \
             nothing matches, the error lists the nearest known names.",
            json!({"name": {"type": "string", "description": "The mention, e.g. `@fabric`."}}),
            &["name"],
            true,
        ),
        tool(
            "send",
            "Send a message to an agent anywhere in the mesh and return at once with the \
             invocation id; follow it with `invocation`. Use `ask` to wait for the answer.",
            json!({
                "target": {"type": "string", "description": "Who: `@fabric`, `@fabric@devbox`, `@fabric#main` or a full instance name."},
                "message": {"type": "string", "description": "What to ask or tell."},
                "action": {"type": "string", "enum": ["execute", "consult", "summarize", "status", "wake"], "description": "What is asked (default `execute`)."},
                "timeout_s": {"type": "integer", "minimum": 1, "maximum": super::ASK_TIMEOUT_S_MAX, "description": "How long the work may take, in seconds (default 600)."},
                "conversation_id": {"type": "string", "description": "Continue this conversation."}
            }),
            &["target", "message"],
            false,
        ),
        tool(
            "ask",
            "Ask an agent anywhere in the mesh and wait for its answer: returns the answer \
             text, the invocation id and its final state. Its output is reported as progress \
             while it works. On a timeout the invocation goes on; check it later with \
             `invocation`.",
            json!({
                "target": {"type": "string", "description": "Who: `@fabric`, `@fabric@devbox`, `@fabric#main` or a full instance name."},
                "message": {"type": "string", "description": "The question or task."},
                "timeout_s": {"type": "integer", "minimum": 1, "maximum": super::ASK_TIMEOUT_S_MAX, "description": "How long to wait, in seconds (default 600)."},
                "conversation_id": {"type": "string", "description": "Continue this conversation."}
            }),
            &["target", "message"],
            false,
        ),
        tool(
            "invocation",
            "One invocation: its state, delivery attempts and output or answer. With \
             `wait`, waits until it ends (bounded by `timeout_s`).",
            json!({
                "invocation_id": {"type": "string", "description": "The id `send` or `ask` returned."},
                "wait": {"type": "boolean", "description": "Wait until it ends (default false)."},
                "timeout_s": {"type": "integer", "minimum": 1, "maximum": super::ASK_TIMEOUT_S_MAX, "description": "How long to wait, in seconds (default 600)."}
            }),
            &["invocation_id"],
            true,
        ),
        tool(
            "inbox",
            "What was asked of this agent, newest first: invocation id, conversation, \
             sender, message and state. Only for an agent Scout runs.",
            json!({"limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "Rows (default 20)."}}),
            &[],
            true,
        ),
        tool(
            "reply",
            "Reply in a conversation addressed to this agent: the message goes to the agent \
             that sent it, as a new turn of the same conversation. Returns the new \
             invocation id. A person's conversation has no one to reply to: answer in your \
             turn's output instead.",
            json!({
                "conversation_id": {"type": "string", "description": "The conversation, from `inbox`."},
                "message": {"type": "string", "description": "The reply."}
            }),
            &["conversation_id", "message"],
            false,
        ),
        tool(
            "work_orders",
            "Work orders: queued tasks for an agent. `enqueue` queues one (optionally not \
             before a time), `run_now` queues and starts it at once, `list` shows them, \
             `cancel` asks a person: it returns `approval_required` with an approval, and \
             the broker cancels once someone approves.",
            json!({
                "op": {"type": "string", "enum": ["enqueue", "list", "run_now", "cancel"], "description": "What to do."},
                "target": {"type": "string", "description": "enqueue, run_now: the agent."},
                "body": {"type": "string", "description": "enqueue, run_now: what to do."},
                "not_before_ms": {"type": "integer", "minimum": 0, "description": "enqueue: unix ms before which it does not run."},
                "timeout_s": {"type": "integer", "minimum": 1, "maximum": super::ASK_TIMEOUT_S_MAX, "description": "enqueue, run_now: how long it may take once started."},
                "state": {"type": "string", "enum": ["queued", "running", "completed", "failed", "cancelled"], "description": "list: only this state."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 500, "description": "list: rows (default 100)."},
                "work_order_id": {"type": "string", "description": "cancel: the work order."}
            }),
            &["op"],
            false,
        ),
        tool(
            "peers",
            "The mesh's members as this node sees them: name, node id, state (connected, \
             unreachable, revoked), last seen and round-trip time.",
            json!({}),
            &[],
            true,
        ),
        tool(
            "request_approval",
            "Ask a person to approve something before you do it (a risky command, a push, \
             a deletion), or to answer a yes/no question. The request is shown on every \
             machine of the mesh and the person may answer from any of them; with `wait` \
             (the default) this returns once they decided: `approved`, `denied` (with their \
             note) or `expired` (nobody answered in time, which counts as denied). Do the \
             thing only when the state is `approved`.",
            json!({
                "summary": {"type": "string", "description": "What you want to do or ask, in one or two sentences a person reads in a notification."},
                "action": {"type": "string", "description": "A dotted word for the kind of request (default `question`), e.g. `git.push`."},
                "wait": {"type": "boolean", "description": "Wait for the decision (default true)."},
                "timeout_s": {"type": "integer", "minimum": 1, "maximum": 86400, "description": "How long the person has to answer, in seconds (default 1800)."}
            }),
            &["summary"],
            false,
        ),
        tool(
            "permission",
            "The permission prompt of an agent CLI (Claude Code's `--permission-prompt-tool`): \
             asks a person anywhere in the mesh whether the tool call may run, waits for the \
             answer and returns `{\"behavior\": \"allow\", \"updatedInput\": …}` or \
             `{\"behavior\": \"deny\", \"message\": …}`.",
            json!({
                "tool_name": {"type": "string", "description": "The tool that wants to run (`Bash`)."},
                "input": {"type": "object", "description": "Its input."},
                "tool_use_id": {"type": "string", "description": "The call's id."}
            }),
            &["tool_name", "input"],
            false,
        ),
    ]
}

fn tool(
    name: &'static str,
    description: &'static str,
    properties: Value,
    required: &[&str],
    read_only: bool,
) -> Tool {
    // The permission prompt's arguments are written by the CLI, not a
    // model; a field a newer CLI adds must not make every prompt fail.
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": name == "permission",
    });
    let Value::Object(schema) = schema else {
        unreachable!("a json! object literal is an object")
    };
    Tool::new(name, description, Arc::new(schema))
        .with_annotations(ToolAnnotations::new().read_only(read_only))
}

/// Parses a tool's arguments into `T`; absent arguments are an empty object.
pub fn parse<T: DeserializeOwned>(
    tool: &str,
    arguments: Option<JsonObject>,
) -> Result<T, ToolError> {
    let value = Value::Object(arguments.unwrap_or_default());
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let why = err.into_inner();
        if path == "." {
            ToolError::invalid_arguments(tool, why)
        } else {
            ToolError::invalid_arguments(tool, format!("{path}: {why}"))
        }
    })
}

/// No arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// `agents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsArgs {
    /// Name prefix.
    pub prefix: Option<String>,
    /// Node name or id.
    pub node: Option<String>,
}

/// `resolve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveArgs {
    /// The mention.
    pub name: String,
}

/// `send`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendArgs {
    /// Who.
    pub target: String,
    /// What.
    pub message: String,
    /// The action word.
    pub action: Option<scout_mesh::lifecycle::InvocationAction>,
    /// Seconds.
    pub timeout_s: Option<u64>,
    /// Conversation to continue.
    pub conversation_id: Option<String>,
}

/// `ask`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskArgs {
    /// Who.
    pub target: String,
    /// What.
    pub message: String,
    /// Seconds.
    pub timeout_s: Option<u64>,
    /// Conversation to continue.
    pub conversation_id: Option<String>,
}

/// `invocation`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationArgs {
    /// The id.
    pub invocation_id: String,
    /// Wait until it ends.
    #[serde(default)]
    pub wait: bool,
    /// Seconds.
    pub timeout_s: Option<u64>,
}

/// `inbox`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxArgs {
    /// Rows.
    pub limit: Option<usize>,
}

/// `reply`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyArgs {
    /// The conversation.
    pub conversation_id: String,
    /// The reply.
    pub message: String,
}

/// `request_approval`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestApprovalArgs {
    /// What is asked.
    pub summary: String,
    /// Its kind.
    pub action: Option<String>,
    /// Wait for the decision.
    pub wait: Option<bool>,
    /// Seconds the person has.
    pub timeout_s: Option<u64>,
}

/// `permission`: what Claude Code sends its permission prompt tool. Fields
/// it may add later are ignored rather than refused, so a newer CLI keeps
/// getting answers.
#[derive(Debug, Deserialize)]
pub struct PermissionArgs {
    /// The tool that wants to run.
    pub tool_name: String,
    /// Its input, handed back unchanged when allowed.
    pub input: Value,
    /// The call's id.
    pub tool_use_id: Option<String>,
}

/// What `work_orders` does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WorkOrderOp {
    /// Queue one.
    Enqueue,
    /// List them.
    List,
    /// Queue and start now.
    RunNow,
    /// Cancel one: a person approves it first.
    Cancel,
}

/// `work_orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkOrdersArgs {
    /// What to do.
    pub op: WorkOrderOp,
    /// The agent.
    pub target: Option<String>,
    /// The task.
    pub body: Option<String>,
    /// Not before, unix ms.
    pub not_before_ms: Option<u64>,
    /// Seconds.
    pub timeout_s: Option<u64>,
    /// State filter.
    pub state: Option<String>,
    /// Rows.
    pub limit: Option<usize>,
    /// The work order to cancel.
    pub work_order_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_is_listed_once_with_an_object_schema() {
        let tools = catalogue();
        let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_ref()).collect();
        assert_eq!(names, TOOL_NAMES);
        for tool in &tools {
            assert_eq!(tool.input_schema["type"], "object", "{}", tool.name);
            if tool.name != "permission" {
                assert_eq!(tool.input_schema["additionalProperties"], false);
            }
        }
    }

    #[test]
    fn bad_arguments_name_the_field() {
        let args = json!({"target": 3, "message": "hi"});
        let Value::Object(args) = args else { panic!() };
        let err = parse::<AskArgs>("ask", Some(args)).unwrap_err();
        assert_eq!(err.code, "INVALID_ARGUMENTS");
        assert!(err.message.contains("target"), "{}", err.message);
        let err = parse::<AskArgs>("ask", None).unwrap_err();
        assert!(err.message.contains("target"), "{}", err.message);
        let args = json!({"invocation_id": "x", "colour": 1});
        let Value::Object(args) = args else { panic!() };
        let err = parse::<InvocationArgs>("invocation", Some(args)).unwrap_err();
        assert!(err.message.contains("colour"), "{}", err.message);
    }
}
