//! `/v1/work-orders…`: the enqueue body and the work order as shown.

use serde::{Deserialize, Serialize};

/// The body of `POST /v1/work-orders` and `/v1/work-orders/run-now`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    /// The agent.
    pub target: String,
    /// What to do.
    pub body: String,
    /// Unix ms before which it does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// How long it may take once dispatched, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A work order as shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkOrderView {
    /// Id.
    pub work_order_id: String,
    /// The agent.
    pub target: String,
    /// What to do.
    pub body: String,
    /// `queued`, `running`, `completed`, `failed`, `cancelled`.
    pub state: String,
    /// The owner's node id, as resolved at enqueue.
    pub owner: String,
    /// Not before (unix ms), when scheduled.
    pub not_before_ms: Option<u64>,
    /// The invocation, once dispatched.
    pub invocation_id: Option<String>,
    /// Created, unix ms.
    pub created_at_ms: i64,
}
