//! The one error shape of the MCP tools: a tool result marked as an error,
//! whose text reads `CODE: message` for the model and whose structured
//! content is `{ "error": { "code", "message", … } }` for a program. The
//! codes are Scout's stable codes: the broker's own (`AGENT_NOT_FOUND`,
//! `INVALID_NAME`, `INVOCATION_NOT_FOUND`, …) passed through unchanged, and
//! the server's (below).

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Map, Value, json};

use crate::cli::client::ClientError;

/// The arguments do not fit the tool's schema.
pub const INVALID_ARGUMENTS: &str = "INVALID_ARGUMENTS";
/// No tool by that name.
pub const UNKNOWN_TOOL: &str = "UNKNOWN_TOOL";
/// No resource by that URI.
pub const UNKNOWN_RESOURCE: &str = "UNKNOWN_RESOURCE";
/// The broker could not be reached or answered something unreadable.
pub const BROKER_UNREACHABLE: &str = "BROKER_UNREACHABLE";
/// The tool needs the caller to be an agent Scout runs (`SCOUT_AGENT`).
pub const NOT_AN_AGENT: &str = "NOT_AN_AGENT";
/// No conversation addressed to this agent has that id.
pub const CONVERSATION_NOT_FOUND: &str = "CONVERSATION_NOT_FOUND";
/// The conversation's sender is not recorded, so there is no one to reply to.
pub const SENDER_UNKNOWN: &str = "SENDER_UNKNOWN";
/// The conversation was started by a person, who reads the turn's output.
pub const REPLY_TO_OPERATOR: &str = "REPLY_TO_OPERATOR";
/// The wait ended before the invocation did; it goes on in the mesh.
pub const WAIT_TIMEOUT: &str = "WAIT_TIMEOUT";
/// The invocation ended without an answer (failed or cancelled).
pub const INVOCATION_FAILED: &str = "INVOCATION_FAILED";

/// A failed tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolError {
    /// Stable code.
    pub code: String,
    /// What went wrong and what to do, for the model.
    pub message: String,
    /// More fields for a program (`invocation_id`, `nearest`, …).
    pub details: Map<String, Value>,
}

impl ToolError {
    /// An error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ToolError {
        ToolError {
            code: code.into(),
            message: message.into(),
            details: Map::new(),
        }
    }

    /// The same error with one more detail field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ToolError {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Arguments that do not fit the schema of `tool`.
    pub fn invalid_arguments(tool: &str, why: impl std::fmt::Display) -> ToolError {
        ToolError::new(
            INVALID_ARGUMENTS,
            format!("invalid arguments for `{tool}`: {why}"),
        )
    }

    /// The tool result that carries this error.
    pub fn into_result(self) -> CallToolResult {
        let text = format!("{}: {}", self.code, self.message);
        let mut error = Map::new();
        error.insert("code".to_owned(), Value::String(self.code));
        error.insert("message".to_owned(), Value::String(self.message));
        error.extend(self.details);
        let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
        result.structured_content = Some(json!({ "error": error }));
        result
    }
}

impl From<ClientError> for ToolError {
    fn from(err: ClientError) -> ToolError {
        match err {
            ClientError::Api {
                status,
                code,
                message,
            } => ToolError::new(code, message).with("http_status", status),
            transport @ ClientError::Transport { .. } => ToolError::new(
                BROKER_UNREACHABLE,
                format!("{transport}; is the broker running (`scout up`)?"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_result_carries_the_code_as_text_and_as_structure() {
        let result = ToolError::new("AGENT_NOT_FOUND", "no agent matches `@x`")
            .with("nearest", json!(["@fabric@laptop#main"]))
            .into_result();
        assert_eq!(result.is_error, Some(true));
        let text = result.content[0].as_text().unwrap().text.clone();
        assert_eq!(text, "AGENT_NOT_FOUND: no agent matches `@x`");
        assert_eq!(
            result.structured_content.unwrap(),
            json!({"error": {"code": "AGENT_NOT_FOUND", "message": "no agent matches `@x`",
                "nearest": ["@fabric@laptop#main"]}})
        );
    }
}
