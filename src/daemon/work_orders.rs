//! Work orders: queued work for an agent, optionally not before a time,
//! dispatched as a durable invocation when due (`run-now`: at once).
//! Cancelling one delivers the cancel to the owner, which stops the
//! running flight. The work order follows its invocation's delivery.

use std::time::Duration;

use scout_mesh::lifecycle::{DeliveryPolicy, InvocationAction};
use scout_mesh::names::AgentName;

use super::routing::{RouteError, Router, SubmitRequest};
pub use crate::api::WorkOrderView;
use crate::store::deliveries::Delivery;
use crate::store::invocations::Invocation;
use crate::store::work_orders::{NewWorkOrder, WorkOrder, WorkOrderState};

/// How often queued work orders are checked for being due.
pub const WORK_ORDER_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Queued work orders looked at per check at most.
const DUE_SCAN_MAX: usize = 1000;

/// A new work order.
#[derive(Debug, Clone)]
pub struct EnqueueRequest {
    /// The agent (`@fabric`, or more precise).
    pub target: String,
    /// What to do.
    pub body: String,
    /// Unix ms before which it does not run.
    pub not_before_ms: Option<u64>,
    /// How long it may take once dispatched, in ms.
    pub timeout_ms: Option<u64>,
    /// Dispatch at once, whatever the schedule (`agent.run_now`).
    pub run_now: bool,
    /// Who asked.
    pub author: String,
}

fn view(order: WorkOrder) -> WorkOrderView {
    WorkOrderView {
        not_before_ms: order.schedule.as_deref().and_then(|text| text.parse().ok()),
        work_order_id: order.work_order_id,
        target: order.target,
        body: order.body,
        state: order.state.to_string(),
        owner: order.owner_node,
        invocation_id: order.invocation_id,
        created_at_ms: order.created_at_ms,
    }
}

fn unix(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Queues a work order (and dispatches it at once when due or `run_now`).
pub async fn enqueue(
    router: &Router,
    request: EnqueueRequest,
) -> Result<WorkOrderView, RouteError> {
    let query = AgentName::parse_lenient(&request.target)?;
    // Resolve now, so a mistyped name fails at enqueue, not later.
    let owner = router.choose(&query, None)?.owner;
    let now = router.now_ms();
    let order = NewWorkOrder {
        work_order_id: router.env.new_id(),
        target: query.to_string(),
        body: request.body.clone(),
        owner_node: owner.to_string(),
        schedule: request.not_before_ms.map(|ms| ms.to_string()),
        created_at_ms: unix(now),
    };
    let created = router
        .store
        .write(move |tx| WorkOrder::create(tx, &order))
        .await?;
    let due = request.run_now || request.not_before_ms.is_none_or(|at| at <= now);
    if due {
        return dispatch(router, created, request.timeout_ms, &request.author).await;
    }
    Ok(view(created))
}

/// Dispatches one work order: claims it first (queued to running, with
/// the invocation id it will have, in one conditional write), then submits
/// that invocation. The scheduler and a `run-now` may race for one order;
/// only the one whose claim lands submits, so the work runs once.
async fn dispatch(
    router: &Router,
    order: WorkOrder,
    timeout_ms: Option<u64>,
    author: &str,
) -> Result<WorkOrderView, RouteError> {
    let now = router.now_ms();
    let id = order.work_order_id.clone();
    let invocation_id = router.env.new_id();
    let claimed = {
        let id = id.clone();
        let invocation_id = invocation_id.clone();
        router
            .store
            .write(move |tx| match WorkOrder::get(tx, &id)? {
                Some(current) if current.state == WorkOrderState::Queued => WorkOrder::transition(
                    tx,
                    &id,
                    WorkOrderState::Running,
                    Some(&invocation_id),
                    unix(now),
                )
                .map(Some),
                _ => Ok(None),
            })
            .await?
    };
    let Some(claimed) = claimed else {
        // Dispatched (or cancelled) by someone else meanwhile.
        return get(router, &id);
    };
    let submitted = router
        .submit_as(
            invocation_id,
            SubmitRequest {
                target: order.target.clone(),
                body: order.body.clone(),
                action: InvocationAction::Execute,
                policy: DeliveryPolicy::Durable,
                deadline_ms: timeout_ms.map(|ms| now.saturating_add(ms)),
                conversation_id: None,
                author: author.to_owned(),
                from: None,
                parent_chain: Vec::new(),
                reply_to: None,
            },
        )
        .await;
    if let Err(err) = submitted {
        tracing::warn!(work_order = %id, cause = %err, "work order could not be dispatched");
        router
            .store
            .write(move |tx| {
                WorkOrder::transition(tx, &id, WorkOrderState::Failed, None, unix(now))
            })
            .await?;
        return Err(err);
    }
    Ok(view(claimed))
}

/// Running work orders looked at when the broker starts, at most. Each is
/// a read of its invocation; more than this many orders running at once is
/// far beyond one broker's agents, and the rest wait for the next start.
const RECOVER_SCAN_MAX: usize = 10_000;

/// Finishes what a previous broker process left half done, before the
/// scheduler or the API can touch a work order:
///
/// - An order claimed (`running`, with its invocation id) whose invocation
///   was never committed, because the broker stopped between the two
///   writes, is submitted now under that same id. Nothing ran: the
///   invocation's commit is where work is accepted, and the id makes the
///   submit happen once.
/// - An order whose invocation already ended, because the broker stopped
///   before the order followed it, follows it now.
pub async fn recover(router: &Router) {
    let running = router.store.read(|connection| {
        WorkOrder::list(connection, Some(WorkOrderState::Running), RECOVER_SCAN_MAX)
    });
    let running = match running {
        Ok(running) => running,
        Err(err) => {
            tracing::warn!(cause = %err, "cannot read running work orders");
            return;
        }
    };
    for order in running {
        let Some(invocation_id) = order.invocation_id.clone() else {
            continue;
        };
        let lookup = {
            let invocation_id = invocation_id.clone();
            router.store.read(move |connection| {
                if !Invocation::exists(connection, &invocation_id)? {
                    return Ok(None);
                }
                let ended = Delivery::list_for_invocation(connection, &invocation_id)?
                    .into_iter()
                    .map(|delivery| delivery.state)
                    .find(|state| state.is_terminal());
                Ok(Some(ended))
            })
        };
        match lookup {
            Ok(None) => {
                tracing::info!(work_order = %order.work_order_id, invocation = %invocation_id,
                    "dispatching a work order claimed before the broker stopped");
                let now = router.now_ms();
                let submitted = router
                    .submit_as(
                        invocation_id,
                        SubmitRequest {
                            target: order.target.clone(),
                            body: order.body.clone(),
                            action: InvocationAction::Execute,
                            policy: DeliveryPolicy::Durable,
                            deadline_ms: None,
                            conversation_id: None,
                            author: "scheduler".to_owned(),
                            from: None,
                            parent_chain: Vec::new(),
                            reply_to: None,
                        },
                    )
                    .await;
                if let Err(err) = submitted {
                    tracing::warn!(work_order = %order.work_order_id, cause = %err,
                        "work order could not be dispatched");
                    let id = order.work_order_id.clone();
                    let _ = router
                        .store
                        .write(move |tx| {
                            WorkOrder::transition(tx, &id, WorkOrderState::Failed, None, unix(now))
                        })
                        .await;
                }
            }
            Ok(Some(Some(ended))) => {
                crate::store::work_orders::follow_delivery(
                    &router.store,
                    router.now_ms(),
                    &invocation_id,
                    ended,
                )
                .await;
            }
            Ok(Some(None)) => {}
            Err(err) => {
                tracing::warn!(work_order = %order.work_order_id, cause = %err,
                    "cannot read a work order's invocation");
            }
        }
    }
}

/// Dispatches queued work orders whose time has come.
/// Dispatches due work orders every [`WORK_ORDER_POLL_INTERVAL`] until
/// shutdown (a task of the broker, joined at shutdown).
pub async fn run(router: Router, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WORK_ORDER_POLL_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        dispatch_due(&router).await;
    }
}

pub async fn dispatch_due(router: &Router) {
    let now = router.now_ms();
    let due = router.store.read(move |connection| {
        Ok(
            WorkOrder::list(connection, Some(WorkOrderState::Queued), DUE_SCAN_MAX)?
                .into_iter()
                .filter(|order| {
                    order
                        .schedule
                        .as_deref()
                        .and_then(|text| text.parse::<u64>().ok())
                        .is_none_or(|at| at <= now)
                })
                .collect::<Vec<_>>(),
        )
    });
    match due {
        Ok(orders) => {
            for order in orders {
                let _ = dispatch(router, order, None, "scheduler").await;
            }
        }
        Err(err) => tracing::warn!(cause = %err, "cannot read queued work orders"),
    }
}

/// Cancels a work order: a queued one ends here; a running one is
/// cancelled at its owner, which stops the agent.
pub async fn cancel(router: &Router, work_order_id: &str) -> Result<WorkOrderView, RouteError> {
    let id = work_order_id.to_owned();
    let order = router
        .store
        .read(move |connection| WorkOrder::get(connection, &id))?
        .ok_or_else(|| RouteError::UnknownInvocation(work_order_id.to_owned()))?;
    match (order.state, order.invocation_id.clone()) {
        (WorkOrderState::Queued, _) => {
            let id = order.work_order_id.clone();
            let now = unix(router.now_ms());
            let cancelled = router
                .store
                .write(move |tx| {
                    WorkOrder::transition(tx, &id, WorkOrderState::Cancelled, None, now)
                })
                .await?;
            Ok(view(cancelled))
        }
        (WorkOrderState::Running, Some(invocation_id)) => {
            router.cancel(&invocation_id).await?;
            get(router, work_order_id)
        }
        _ => Ok(view(order)),
    }
}

/// One work order.
pub fn get(router: &Router, work_order_id: &str) -> Result<WorkOrderView, RouteError> {
    let id = work_order_id.to_owned();
    router
        .store
        .read(move |connection| WorkOrder::get(connection, &id))?
        .map(view)
        .ok_or_else(|| RouteError::UnknownInvocation(work_order_id.to_owned()))
}

/// Work orders, newest first, optionally in one state.
pub fn list(
    router: &Router,
    state: Option<WorkOrderState>,
    limit: usize,
) -> Result<Vec<WorkOrderView>, RouteError> {
    Ok(router
        .store
        .read(move |connection| WorkOrder::list(connection, state, limit))?
        .into_iter()
        .map(view)
        .collect())
}
