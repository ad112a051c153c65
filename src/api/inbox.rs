//! `GET /v1/inbox?instance=…`: the invocations this broker ran or runs for
//! one of its agent instances, newest first, so an agent can see what was
//! asked of it and by whom.

use scout_mesh::lifecycle::{FlightState, InvocationAction};
use serde::{Deserialize, Serialize};

/// One invocation addressed to an instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxItem {
    /// The invocation.
    pub invocation_id: String,
    /// Its conversation, the handle for a reply.
    pub conversation_id: Option<String>,
    /// Who sent it as the conversation records it: an instance name
    /// (`@fabric@laptop#main`) when an agent sent it, `user@NODE` when a
    /// person did; absent when the record does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// What is asked.
    pub action: InvocationAction,
    /// The prompt.
    pub body: String,
    /// The flight here, when it started.
    pub state: Option<FlightState>,
    /// Created, unix ms.
    pub created_at_ms: i64,
}
