//! Work orders: queued requests for work that one broker durably owns and
//! runs exactly once (queue, list, cancel, run now).

use std::fmt;
use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use scout_mesh::lifecycle::{DeliveryState, UnknownWord};

use super::{StoreError, list_limit, parse_word};

/// Where a work order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkOrderState {
    /// Waiting for its schedule or a run-now.
    Queued,
    /// Its invocation has been handed to a flight.
    Running,
    /// Finished with a result.
    Completed,
    /// Ended without a result.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl WorkOrderState {
    /// Every member, in declaration order.
    pub const ALL: &'static [WorkOrderState] = &[
        WorkOrderState::Queued,
        WorkOrderState::Running,
        WorkOrderState::Completed,
        WorkOrderState::Failed,
        WorkOrderState::Cancelled,
    ];

    /// The word this state is stored and printed as.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkOrderState::Queued => "queued",
            WorkOrderState::Running => "running",
            WorkOrderState::Completed => "completed",
            WorkOrderState::Failed => "failed",
            WorkOrderState::Cancelled => "cancelled",
        }
    }

    /// Whether no further transition can leave this state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            WorkOrderState::Completed | WorkOrderState::Failed | WorkOrderState::Cancelled
        )
    }

    /// Whether a work order may move from `self` to `to`. A running order
    /// never goes back to the queue: that could run it twice.
    pub fn can_transition_to(self, to: WorkOrderState) -> bool {
        use WorkOrderState::*;
        match self {
            Queued => matches!(to, Running | Failed | Cancelled),
            Running => matches!(to, Completed | Failed | Cancelled),
            Completed | Failed | Cancelled => false,
        }
    }
}

impl fmt::Display for WorkOrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkOrderState {
    type Err = UnknownWord;

    fn from_str(word: &str) -> Result<Self, UnknownWord> {
        WorkOrderState::ALL
            .iter()
            .copied()
            .find(|state| state.as_str() == word)
            .ok_or_else(|| UnknownWord {
                kind: "work order state",
                word: word.to_owned(),
                expected: WorkOrderState::ALL
                    .iter()
                    .map(|state| state.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// One work order, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkOrder {
    /// The work order's id.
    pub work_order_id: String,
    /// The agent name it is for.
    pub target: String,
    /// What to do.
    pub body: String,
    /// Where it is.
    pub state: WorkOrderState,
    /// The broker that owns (and will run) it.
    pub owner_node: String,
    /// When to run it (`None`: when asked to).
    pub schedule: Option<String>,
    /// The invocation created when it ran.
    pub invocation_id: Option<String>,
    /// When it was created, unix ms.
    pub created_at_ms: i64,
    /// When it last changed, unix ms.
    pub updated_at_ms: i64,
}

/// What is needed to queue a work order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorkOrder {
    /// The work order's id.
    pub work_order_id: String,
    /// The agent name it is for.
    pub target: String,
    /// What to do.
    pub body: String,
    /// The broker that owns it.
    pub owner_node: String,
    /// When to run it.
    pub schedule: Option<String>,
    /// Creation time, unix ms.
    pub created_at_ms: i64,
}

const COLUMNS: &str = "work_order_id, target, body, state, owner_node, schedule, invocation_id, \
                       created_at_ms, updated_at_ms";

impl WorkOrder {
    /// Queues a new work order.
    pub fn create(
        transaction: &Transaction<'_>,
        new: &NewWorkOrder,
    ) -> Result<WorkOrder, StoreError> {
        let n_inserted = transaction
            .prepare_cached(
                "INSERT INTO work_orders (work_order_id, target, body, state, owner_node,
                     schedule, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?6)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                new.work_order_id,
                new.target,
                new.body,
                new.owner_node,
                new.schedule,
                new.created_at_ms
            ])?;
        if n_inserted == 0 {
            return Err(StoreError::AlreadyExists {
                kind: "work order",
                id: new.work_order_id.clone(),
            });
        }
        WorkOrder::get_existing(transaction, &new.work_order_id)
    }

    /// Moves a work order to `to` if allowed, recording the invocation it
    /// started when given.
    pub fn transition(
        transaction: &Transaction<'_>,
        work_order_id: &str,
        to: WorkOrderState,
        invocation_id: Option<&str>,
        now_ms: i64,
    ) -> Result<WorkOrder, StoreError> {
        let from = WorkOrder::get_existing(transaction, work_order_id)?.state;
        if !from.can_transition_to(to) {
            return Err(StoreError::IllegalTransition {
                kind: "work order",
                id: work_order_id.to_owned(),
                transition: scout_mesh::lifecycle::IllegalTransition {
                    kind: "work order",
                    from: from.as_str(),
                    to: to.as_str(),
                },
            });
        }
        transaction
            .prepare_cached(
                "UPDATE work_orders SET state = ?1,
                     invocation_id = coalesce(?2, invocation_id), updated_at_ms = ?3
                 WHERE work_order_id = ?4 AND state = ?5",
            )?
            .execute(params![
                to.as_str(),
                invocation_id,
                now_ms,
                work_order_id,
                from.as_str()
            ])?;
        WorkOrder::get_existing(transaction, work_order_id)
    }

    /// The work order with this id, if stored.
    pub fn get(
        connection: &Connection,
        work_order_id: &str,
    ) -> Result<Option<WorkOrder>, StoreError> {
        connection
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM work_orders WHERE work_order_id = ?1"
            ))?
            .query_row([work_order_id], |row| Ok(WorkOrder::from_row(row)))
            .optional()?
            .transpose()
    }

    /// Work orders, optionally in one state only, oldest first.
    pub fn list(
        connection: &Connection,
        state: Option<WorkOrderState>,
        limit: usize,
    ) -> Result<Vec<WorkOrder>, StoreError> {
        // One statement per shape, so a state walks `work_orders_by_state`
        // (statements keep their first plan; `?1 IS NULL OR state = ?1`
        // would scan every work order ever made).
        let by_row: fn(&Row<'_>) -> rusqlite::Result<Result<WorkOrder, StoreError>> =
            |row| Ok(WorkOrder::from_row(row));
        let limit = list_limit(limit);
        let rows: Vec<Result<WorkOrder, StoreError>> = match state {
            Some(state) => connection
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM work_orders WHERE state = ?1
                     ORDER BY created_at_ms, work_order_id LIMIT ?2"
                ))?
                .query_map(params![state.as_str(), limit], by_row)?
                .collect::<rusqlite::Result<_>>()?,
            None => connection
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM work_orders ORDER BY created_at_ms, work_order_id LIMIT ?1"
                ))?
                .query_map(params![limit], by_row)?
                .collect::<rusqlite::Result<_>>()?,
        };
        rows.into_iter().collect()
    }

    /// The running work orders whose dispatch is `invocation_id` (one,
    /// normally).
    pub fn running_for_invocation(
        connection: &Connection,
        invocation_id: &str,
    ) -> Result<Vec<WorkOrder>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM work_orders WHERE state = 'running' AND invocation_id = ?1"
        ))?;
        let rows = statement.query_map([invocation_id], |row| Ok(WorkOrder::from_row(row)))?;
        rows.map(|row| row?).collect()
    }

    fn get_existing(connection: &Connection, work_order_id: &str) -> Result<WorkOrder, StoreError> {
        WorkOrder::get(connection, work_order_id)?.ok_or_else(|| StoreError::NotFound {
            kind: "work order",
            id: work_order_id.to_owned(),
        })
    }

    fn from_row(row: &Row<'_>) -> Result<WorkOrder, StoreError> {
        let work_order_id: String = row.get(0)?;
        let state: String = row.get(3)?;
        Ok(WorkOrder {
            target: row.get(1)?,
            body: row.get(2)?,
            state: parse_word("work_orders", &work_order_id, &state)?,
            owner_node: row.get(4)?,
            schedule: row.get(5)?,
            invocation_id: row.get(6)?,
            created_at_ms: row.get(7)?,
            updated_at_ms: row.get(8)?,
            work_order_id,
        })
    }
}

/// Makes a work order follow the end of its invocation's delivery (the
/// routing driver calls this when a delivery ends; most are not work
/// orders).
pub async fn follow_delivery(
    store: &super::Store,
    now_ms: u64,
    invocation_id: &str,
    state: DeliveryState,
) {
    let target = match state {
        DeliveryState::Completed => WorkOrderState::Completed,
        DeliveryState::Cancelled => WorkOrderState::Cancelled,
        DeliveryState::Failed => WorkOrderState::Failed,
        _ => return,
    };
    // Most invocations are not work orders: a read settles that without
    // taking a turn of the writer.
    let ours =
        store.read(|connection| WorkOrder::running_for_invocation(connection, invocation_id));
    if ours.as_ref().is_ok_and(Vec::is_empty) {
        return;
    }
    let invocation_id = invocation_id.to_owned();
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    let _ = store
        .write(move |tx| {
            for order in WorkOrder::running_for_invocation(tx, &invocation_id)? {
                WorkOrder::transition(tx, &order.work_order_id, target, None, now)?;
            }
            Ok(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_terminal_states_have_no_exit() {
        for state in WorkOrderState::ALL {
            assert_eq!(state.as_str().parse::<WorkOrderState>(), Ok(*state));
            if state.is_terminal() {
                for to in WorkOrderState::ALL {
                    assert!(!state.can_transition_to(*to), "{state} -> {to}");
                }
            }
        }
        assert!(!WorkOrderState::Running.can_transition_to(WorkOrderState::Queued));
        assert!("sleeping".parse::<WorkOrderState>().is_err());
    }
}
