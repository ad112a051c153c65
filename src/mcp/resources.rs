//! MCP resources that help an agent decide whom to ask: one card per agent
//! instance in the mesh (`scout://agents/{name}`) and the recent
//! conversations (`scout://conversations/recent`, and each one as
//! `scout://conversations/{id}`).

use rmcp::ErrorData;
use rmcp::model::{ListResourcesResult, ReadResourceResult, Resource, ResourceContents};
use serde_json::{Value, json};

use super::error::{ToolError, UNKNOWN_RESOURCE};
use super::server::{McpServer, query_escape};
use crate::api::{AgentList, ConversationView};

/// Agent cards listed at most: beyond this a model is better served by
/// the `agents` tool's filters.
const AGENT_CARDS_MAX: usize = 200;

/// Recent conversations listed.
const CONVERSATIONS_RECENT: usize = 20;

const AGENTS_PREFIX: &str = "scout://agents/";
const CONVERSATIONS_PREFIX: &str = "scout://conversations/";
const RECENT_URI: &str = "scout://conversations/recent";

/// Lists the agent cards and the recent conversations.
pub async fn list(server: &McpServer) -> Result<ListResourcesResult, ErrorData> {
    let agents: AgentList = server
        .broker
        .get("/v1/agents".to_owned())
        .await
        .map_err(protocol)?;
    let mut resources: Vec<Resource> = agents
        .instances
        .iter()
        .take(AGENT_CARDS_MAX)
        .map(|instance| {
            Resource::new(
                format!("{AGENTS_PREFIX}{}", instance.name),
                instance.name.clone(),
            )
            .with_description(format!(
                "{} agent on {}, {}",
                instance.harness, instance.owner, instance.state
            ))
            .with_mime_type("application/json")
        })
        .collect();
    resources.push(
        Resource::new(RECENT_URI, "recent conversations")
            .with_description("The mesh's most recent conversations on this node")
            .with_mime_type("application/json"),
    );
    Ok(ListResourcesResult::with_all_items(resources))
}

/// Reads one resource.
pub async fn read(server: &McpServer, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let value = if let Some(name) = uri.strip_prefix(AGENTS_PREFIX) {
        let agents: AgentList = server
            .broker
            .get("/v1/agents".to_owned())
            .await
            .map_err(protocol)?;
        let Some(instance) = agents
            .instances
            .into_iter()
            .find(|instance| instance.name == name)
        else {
            return Err(unknown(uri));
        };
        json!({ "agent": instance })
    } else if uri == RECENT_URI {
        let conversations: Vec<ConversationView> = server
            .broker
            .get(format!("/v1/conversations?limit={CONVERSATIONS_RECENT}"))
            .await
            .map_err(protocol)?;
        json!({ "conversations": conversations })
    } else if let Some(id) = uri.strip_prefix(CONVERSATIONS_PREFIX) {
        let conversation: ConversationView = server
            .broker
            .get(format!("/v1/conversations/{}", query_escape(id)))
            .await
            .map_err(protocol)?;
        json!({ "conversation": conversation })
    } else {
        return Err(unknown(uri));
    };
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(text(&value), uri).with_mime_type("application/json"),
    ]))
}

fn text(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// A resource error as MCP carries it: a JSON-RPC error whose data holds
/// Scout's code.
fn protocol(err: ToolError) -> ErrorData {
    ErrorData::invalid_params(
        format!("{}: {}", err.code, err.message),
        Some(json!({ "code": err.code })),
    )
}

fn unknown(uri: &str) -> ErrorData {
    protocol(ToolError::new(
        UNKNOWN_RESOURCE,
        format!(
            "no resource `{}`",
            crate::pty::text::terminal_safe_text(uri)
        ),
    ))
}
