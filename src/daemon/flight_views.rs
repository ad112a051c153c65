//! What `scout flights` and the API show of an invocation: read from the
//! store, never from the routing core's memory, so a view is the same
//! before and after a restart.

use rusqlite::Connection;
use scout_mesh::lifecycle::{DeliveryState, FailureReason};

use super::routing::{RouteError, Router};
use crate::api::{AttemptView, DeliveryView, FlightView, InvocationStatus, InvocationView};
use crate::store::StoreError;
use crate::store::conversations::Conversation;
use crate::store::invocations::Invocation;

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
                                failure_reason: attempt.failure_reason,
                                failure_detail: attempt.failure_detail,
                            })
                            .collect();
                        let result = result_message(connection, &invocation)?;
                        Some(DeliveryView {
                            state: delivery.state,
                            target: delivery.target,
                            owner: delivery.owner_node,
                            resolve_reason: delivery.resolve_reason,
                            failure_reason: delivery.failure_reason,
                            failure_detail: delivery.failure_detail,
                            attempts,
                            result,
                            failure_code: delivery.failure_code,
                            usage: delivery.usage,
                        })
                    }
                    None => None,
                };
                let flight =
                    Flight::get_for_invocation(connection, &id)?.map(|flight| FlightView {
                        state: flight.state,
                        instance: flight.chosen_instance,
                        resolve_reason: flight.resolve_reason,
                        output: flight.output,
                        result: flight.result,
                        failure_reason: flight.failure_reason,
                        failure_detail: flight.failure_detail,
                        failure_code: flight.failure_code,
                        usage: flight.usage,
                    });
                Ok(InvocationStatus {
                    invocation: InvocationView {
                        invocation_id: invocation.invocation_id,
                        action: invocation.action,
                        body: invocation.body,
                        target: invocation.target,
                        origin: invocation.origin_node,
                        conversation_id: invocation.conversation_id,
                        policy: invocation.delivery_policy,
                        deadline_ms: invocation.deadline_ms,
                        created_at_ms: invocation.created_at_ms,
                        from: invocation.from_instance,
                        chain: invocation.chain,
                    },
                    delivery,
                    flight,
                    waiting_for: None,
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
