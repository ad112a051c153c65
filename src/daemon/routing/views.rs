//! What `scout flights` and the API show of an invocation: read from the
//! store, never from the routing core's memory, so a view is the same
//! before and after a restart.

use rusqlite::Connection;
use scout_mesh::lifecycle::{DeliveryState, FailureReason, FlightState};
use serde::Serialize;

use super::{RouteError, Router};
use crate::store::StoreError;
use crate::store::conversations::Conversation;
use crate::store::invocations::Invocation;

/// The status of one invocation, as `scout flights ID` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationStatus {
    /// The invocation.
    pub invocation: InvocationView,
    /// The delivery at this broker (when it originated here).
    pub delivery: Option<DeliveryView>,
    /// The flight (when this broker owns it).
    pub flight: Option<FlightView>,
}

/// An invocation as shown.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationView {
    /// Id.
    pub invocation_id: String,
    /// Action word.
    pub action: String,
    /// The prompt.
    pub body: String,
    /// The mention.
    pub target: String,
    /// The origin's node id.
    pub origin: String,
    /// Conversation.
    pub conversation_id: Option<String>,
    /// Policy word.
    pub policy: String,
    /// Deadline, unix ms.
    pub deadline_ms: Option<i64>,
    /// Created, unix ms.
    pub created_at_ms: i64,
}

/// A delivery as shown.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    /// State word.
    pub state: String,
    /// The instance it went to.
    pub target: String,
    /// The owner's node id.
    pub owner: Option<String>,
    /// Why that instance was chosen.
    pub resolve_reason: Option<String>,
    /// Failure reason word.
    pub failure_reason: Option<String>,
    /// For a person.
    pub failure_detail: Option<String>,
    /// Attempts so far, each with its outcome.
    pub attempts: Vec<AttemptView>,
    /// The answer, once completed (from the conversation).
    pub result: Option<String>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    /// Number, from 1.
    pub attempt: i64,
    /// Started, unix ms.
    pub started_at_ms: i64,
    /// `succeeded`, `failed`, or none while running.
    pub outcome: Option<String>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// For a person.
    pub failure_detail: Option<String>,
}

/// A flight as shown.
#[derive(Debug, Clone, Serialize)]
pub struct FlightView {
    /// State word.
    pub state: String,
    /// The instance.
    pub instance: Option<String>,
    /// Why that instance.
    pub resolve_reason: Option<String>,
    /// Output so far.
    pub output: String,
    /// The result, once finished.
    pub result: Option<String>,
    /// Failure reason word.
    pub failure_reason: Option<String>,
    /// For a person.
    pub failure_detail: Option<String>,
}

impl Router {
    /// Everything known here about one invocation.
    pub fn status(&self, invocation_id: &str) -> Result<InvocationStatus, RouteError> {
        use crate::store::deliveries::Delivery;
        use crate::store::flights::Flight;
        use crate::store::invocations::Invocation;
        let store = &self.store;
        let id = invocation_id.to_owned();
        store
            .read(move |connection| {
                let invocation = Invocation::get(connection, &id)?.ok_or_else(|| {
                    crate::store::StoreError::NotFound {
                        kind: "invocation",
                        id: id.clone(),
                    }
                })?;
                let delivery = match Delivery::list_for_invocation(connection, &id)?
                    .into_iter()
                    .last()
                {
                    Some(delivery) => {
                        let attempts = Delivery::list_attempts(connection, &delivery.delivery_id)?
                            .into_iter()
                            .map(|attempt| AttemptView {
                                attempt: attempt.attempt,
                                started_at_ms: attempt.started_at_ms,
                                outcome: attempt.outcome.map(|outcome| outcome.as_str().to_owned()),
                                failure_reason: attempt.failure_reason.map(|r| r.to_string()),
                                failure_detail: attempt.failure_detail,
                            })
                            .collect();
                        let result = result_message(connection, &invocation)?;
                        Some(DeliveryView {
                            state: delivery.state.to_string(),
                            target: delivery.target,
                            owner: delivery.owner_node,
                            resolve_reason: delivery.resolve_reason,
                            failure_reason: delivery.failure_reason.map(|r| r.to_string()),
                            failure_detail: delivery.failure_detail,
                            attempts,
                            result,
                        })
                    }
                    None => None,
                };
                let flight =
                    Flight::get_for_invocation(connection, &id)?.map(|flight| FlightView {
                        state: flight.state.to_string(),
                        instance: flight.chosen_instance,
                        resolve_reason: flight.resolve_reason,
                        output: flight.output,
                        result: flight.result,
                        failure_reason: flight.failure_reason.map(|r| r.to_string()),
                        failure_detail: flight.failure_detail,
                    });
                Ok(InvocationStatus {
                    invocation: InvocationView {
                        invocation_id: invocation.invocation_id,
                        action: invocation.action.to_string(),
                        body: invocation.body,
                        target: invocation.target,
                        origin: invocation.origin_node,
                        conversation_id: invocation.conversation_id,
                        policy: invocation.delivery_policy.to_string(),
                        deadline_ms: invocation.deadline_ms,
                        created_at_ms: invocation.created_at_ms,
                    },
                    delivery,
                    flight,
                })
            })
            .map_err(|err| match err {
                crate::store::StoreError::NotFound { .. } => {
                    RouteError::UnknownInvocation(invocation_id.to_owned())
                }
                other => RouteError::Store(other),
            })
    }

    /// The final delivery state of an invocation that originated here, if
    /// it finished.
    pub fn outcome(&self, invocation_id: &str) -> Option<(DeliveryState, Option<FailureReason>)> {
        let id = invocation_id.to_owned();
        self.store
            .read(move |connection| {
                Ok(
                    crate::store::deliveries::Delivery::list_for_invocation(connection, &id)?
                        .into_iter()
                        .last()
                        .filter(|delivery| delivery.state.is_terminal())
                        .map(|delivery| (delivery.state, delivery.failure_reason)),
                )
            })
            .ok()
            .flatten()
    }

    /// Whether a flight state is terminal (helper for callers).
    pub fn is_terminal(state: FlightState) -> bool {
        state.is_terminal()
    }
}

/// The answer recorded for an invocation that originated here.
pub fn result_message(
    connection: &Connection,
    invocation: &Invocation,
) -> Result<Option<String>, StoreError> {
    Ok(
        Conversation::get_message(connection, &format!("{}-result", invocation.invocation_id))?
            .map(|message| message.body),
    )
}
