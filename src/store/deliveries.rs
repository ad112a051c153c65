//! Deliveries and their attempts: how the origin routed an invocation.
//!
//! A delivery's state follows `DeliveryState::can_transition_to`, checked in
//! the transaction that writes it. Each try to reach the owner is an attempt
//! row with its start, end and outcome. Routing writes a try once its
//! outcome is known, in the commit that records what it led to; a try cut
//! short by a crash of the origin is not recorded (the delivery resumes and
//! tries again under the same invocation id).

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use scout_mesh::lifecycle::{DeliveryState, FailureReason};
use scout_mesh::usage::{FailureCode, Usage};

use super::invocations::Invocation;
use super::usage::outcome_from_row;
use super::{
    Store, StoreError, check_failure_fits, clamp_detail, list_limit, parse_optional_word,
    parse_word,
};

/// Most attempts one delivery may record. Retries are paced by backoff and
/// bounded by the deadline; a delivery past this many tries is stuck, and
/// further attempts are refused rather than growing the table forever.
pub const DELIVERY_ATTEMPTS_MAX: i64 = 10_000;

/// One delivery, as stored at the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The delivery's id.
    pub delivery_id: String,
    /// The invocation being delivered.
    pub invocation_id: String,
    /// The name it is addressed to.
    pub target: String,
    /// The node that owns the chosen instance, once resolved.
    pub owner_node: Option<String>,
    /// Why that instance was chosen (`only instance`, `local`, ...).
    pub resolve_reason: Option<String>,
    /// Where the delivery is.
    pub state: DeliveryState,
    /// Why it ended without a result.
    pub failure_reason: Option<FailureReason>,
    /// A human-readable explanation of the failure.
    pub failure_detail: Option<String>,
    /// The failed turn's stable code, as the owner reported it.
    pub failure_code: Option<FailureCode>,
    /// What the flight used, as the owner reported it with the result.
    pub usage: Option<Usage>,
    /// When it was created, unix ms.
    pub created_at_ms: i64,
    /// When it last changed, unix ms.
    pub updated_at_ms: i64,
}

/// What is needed to create a delivery; it starts `accepted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The delivery's id.
    pub delivery_id: String,
    /// The invocation being delivered; must be stored already.
    pub invocation_id: String,
    /// The name it is addressed to.
    pub target: String,
    /// The owner node, if already resolved.
    pub owner_node: Option<String>,
    /// Why that target was chosen, if it was resolved.
    pub resolve_reason: Option<String>,
    /// Creation time, unix ms.
    pub created_at_ms: i64,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The owner acknowledged the invocation.
    Succeeded,
    /// The try failed; a failure reason says why.
    Failed,
}

impl AttemptOutcome {
    /// The word stored in `delivery_attempts.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
        }
    }

    fn parse(id: &str, word: &str) -> Result<AttemptOutcome, StoreError> {
        match word {
            "succeeded" => Ok(AttemptOutcome::Succeeded),
            "failed" => Ok(AttemptOutcome::Failed),
            other => Err(StoreError::MalformedRow {
                table: "delivery_attempts",
                id: id.to_owned(),
                detail: format!("unknown attempt outcome `{other}`"),
            }),
        }
    }
}

/// One try to hand a delivery to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The delivery this attempt belongs to.
    pub delivery_id: String,
    /// 1 for the first try, counting up.
    pub attempt: i64,
    /// When the try started, unix ms.
    pub started_at_ms: i64,
    /// When it ended; `None` while it runs (or if a crash interrupted it).
    pub ended_at_ms: Option<i64>,
    /// How it ended; `None` while it runs.
    pub outcome: Option<AttemptOutcome>,
    /// Why it failed.
    pub failure_reason: Option<FailureReason>,
    /// A human-readable explanation of the failure.
    pub failure_detail: Option<String>,
}

const COLUMNS: &str = "delivery_id, invocation_id, target, owner_node, state, failure_reason, \
                       failure_detail, created_at_ms, updated_at_ms, resolve_reason, \
                       failure_code, input_tokens, output_tokens, cached_tokens, cost_micro_usd";

/// Where [`COLUMNS`] reaches the outcome columns ([`super::usage::OUTCOME_COLUMNS`]).
const OUTCOME_COLUMN: usize = 10;

const ATTEMPT_COLUMNS: &str = "delivery_id, attempt, started_at_ms, ended_at_ms, outcome, \
                               failure_reason, failure_detail";

impl Delivery {
    /// Creates the `accepted` delivery of a stored invocation.
    pub fn create(
        transaction: &Transaction<'_>,
        new: &NewDelivery,
    ) -> Result<Delivery, StoreError> {
        if !Invocation::exists(transaction, &new.invocation_id)? {
            return Err(StoreError::NotFound {
                kind: "invocation",
                id: new.invocation_id.clone(),
            });
        }
        let n_inserted = transaction
            .prepare_cached(
                "INSERT INTO deliveries (delivery_id, invocation_id, target, owner_node, state,
                     created_at_ms, updated_at_ms, resolve_reason)
                 VALUES (?1, ?2, ?3, ?4, 'accepted', ?5, ?5, ?6)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                new.delivery_id,
                new.invocation_id,
                new.target,
                new.owner_node,
                new.created_at_ms,
                new.resolve_reason,
            ])?;
        if n_inserted == 0 {
            return Err(StoreError::AlreadyExists {
                kind: "delivery",
                id: new.delivery_id.clone(),
            });
        }
        Delivery::get_existing(transaction, &new.delivery_id)
    }

    /// Moves a delivery to `to` if the state machine allows it. `failure` is
    /// required for `failed`, allowed for `cancelled`, refused otherwise.
    pub fn transition(
        transaction: &Transaction<'_>,
        delivery_id: &str,
        to: DeliveryState,
        failure: Option<(FailureReason, &str)>,
        now_ms: i64,
    ) -> Result<Delivery, StoreError> {
        let from = Delivery::get_existing(transaction, delivery_id)?.state;
        from.transition(to)
            .map_err(|transition| StoreError::IllegalTransition {
                kind: "delivery",
                id: delivery_id.to_owned(),
                transition,
            })?;
        check_failure_fits("delivery", delivery_id, to.as_str(), failure.is_some())?;
        let (reason, detail) = match failure {
            Some((reason, detail)) => (Some(reason.as_str()), Some(clamp_detail(detail))),
            None => (None, None),
        };
        let n_updated = transaction
            .prepare_cached(
                "UPDATE deliveries SET state = ?1, failure_reason = ?2, failure_detail = ?3,
                     updated_at_ms = ?4
                 WHERE delivery_id = ?5 AND state = ?6",
            )?
            .execute(params![
                to.as_str(),
                reason,
                detail,
                now_ms,
                delivery_id,
                from.as_str()
            ])?;
        if n_updated != 1 {
            return Err(StoreError::InvalidRequest {
                detail: format!("delivery {delivery_id} changed while it was being updated"),
            });
        }
        Delivery::get_existing(transaction, delivery_id)
    }

    /// Sends a delivery to another instance (a logical mention whose first
    /// owner could not take it): its target, owner and the reason. Refused
    /// on a terminal delivery.
    pub fn reroute(
        transaction: &Transaction<'_>,
        delivery_id: &str,
        target: &str,
        owner_node: &str,
        resolve_reason: &str,
        now_ms: i64,
    ) -> Result<Delivery, StoreError> {
        let delivery = Delivery::get_existing(transaction, delivery_id)?;
        if delivery.state.is_terminal() {
            return Err(StoreError::InvalidRequest {
                detail: format!(
                    "delivery {delivery_id} is {} and cannot be rerouted",
                    delivery.state
                ),
            });
        }
        transaction
            .prepare_cached(
                "UPDATE deliveries SET target = ?1, owner_node = ?2, resolve_reason = ?3,
                     updated_at_ms = ?4
                 WHERE delivery_id = ?5",
            )?
            .execute(params![
                target,
                owner_node,
                resolve_reason,
                now_ms,
                delivery_id
            ])?;
        Delivery::get_existing(transaction, delivery_id)
    }

    /// Opens the next attempt of a delivery and returns its number.
    pub fn start_attempt(
        transaction: &Transaction<'_>,
        delivery_id: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let delivery = Delivery::get_existing(transaction, delivery_id)?;
        if delivery.state.is_terminal() {
            return Err(StoreError::InvalidRequest {
                detail: format!(
                    "delivery {delivery_id} is {}; no further attempts",
                    delivery.state
                ),
            });
        }
        let last: i64 = transaction
            .prepare_cached(
                "SELECT coalesce(max(attempt), 0) FROM delivery_attempts WHERE delivery_id = ?1",
            )?
            .query_row([delivery_id], |row| row.get(0))?;
        if last >= DELIVERY_ATTEMPTS_MAX {
            return Err(StoreError::InvalidRequest {
                detail: format!(
                    "delivery {delivery_id} already has {DELIVERY_ATTEMPTS_MAX} attempts"
                ),
            });
        }
        let attempt = last + 1;
        transaction
            .prepare_cached(
                "INSERT INTO delivery_attempts (delivery_id, attempt, started_at_ms)
                 VALUES (?1, ?2, ?3)",
            )?
            .execute(params![delivery_id, attempt, now_ms])?;
        Ok(attempt)
    }

    /// Closes an open attempt with its outcome. `failure` is required when
    /// the outcome is `Failed` and refused when it is `Succeeded`.
    pub fn finish_attempt(
        transaction: &Transaction<'_>,
        delivery_id: &str,
        attempt: i64,
        outcome: AttemptOutcome,
        failure: Option<(FailureReason, &str)>,
        now_ms: i64,
    ) -> Result<DeliveryAttempt, StoreError> {
        if (outcome == AttemptOutcome::Failed) != failure.is_some() {
            return Err(StoreError::InvalidRequest {
                detail: format!(
                    "delivery {delivery_id} attempt {attempt}: a failure reason goes with a failed outcome, and only with it"
                ),
            });
        }
        let (reason, detail) = match failure {
            Some((reason, detail)) => (Some(reason.as_str()), Some(clamp_detail(detail))),
            None => (None, None),
        };
        let n_updated = transaction
            .prepare_cached(
                "UPDATE delivery_attempts SET ended_at_ms = ?1, outcome = ?2,
                     failure_reason = ?3, failure_detail = ?4
                 WHERE delivery_id = ?5 AND attempt = ?6 AND outcome IS NULL",
            )?
            .execute(params![
                now_ms,
                outcome.as_str(),
                reason,
                detail,
                delivery_id,
                attempt
            ])?;
        if n_updated == 0 {
            return Err(StoreError::NotFound {
                kind: "open delivery attempt",
                id: format!("{delivery_id}#{attempt}"),
            });
        }
        transaction
            .prepare_cached(&format!(
                "SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts
                 WHERE delivery_id = ?1 AND attempt = ?2"
            ))?
            .query_row(params![delivery_id, attempt], |row| {
                Ok(attempt_from_row(row))
            })?
    }

    /// The delivery with this id, if stored.
    pub fn get(connection: &Connection, delivery_id: &str) -> Result<Option<Delivery>, StoreError> {
        connection
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deliveries WHERE delivery_id = ?1"
            ))?
            .query_row([delivery_id], |row| Ok(Delivery::from_row(row)))
            .optional()?
            .transpose()
    }

    /// Deliveries in one state, least recently changed first (the order a
    /// retry loop wants for `deferred`).
    pub fn list_in_state(
        connection: &Connection,
        state: DeliveryState,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM deliveries WHERE state = ?1
             ORDER BY updated_at_ms, delivery_id LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![state.as_str(), list_limit(limit)], |row| {
            Ok(Delivery::from_row(row))
        })?;
        rows.map(|row| row?).collect()
    }

    /// The deliveries of one invocation, oldest first.
    pub fn list_for_invocation(
        connection: &Connection,
        invocation_id: &str,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM deliveries WHERE invocation_id = ?1
             ORDER BY created_at_ms, delivery_id LIMIT ?2"
        ))?;
        let rows = statement.query_map(
            params![invocation_id, list_limit(super::LIST_ROWS_MAX)],
            |row| Ok(Delivery::from_row(row)),
        )?;
        rows.map(|row| row?).collect()
    }

    /// The attempts of one delivery, first to last (at most
    /// [`LIST_ROWS_MAX`](super::LIST_ROWS_MAX), the most recent ones).
    pub fn list_attempts(
        connection: &Connection,
        delivery_id: &str,
    ) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT * FROM (SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts WHERE delivery_id = ?1
                            ORDER BY attempt DESC LIMIT ?2)
             ORDER BY attempt"
        ))?;
        let rows = statement.query_map(
            params![delivery_id, list_limit(super::LIST_ROWS_MAX)],
            |row| Ok(attempt_from_row(row)),
        )?;
        rows.map(|row| row?).collect()
    }

    fn get_existing(connection: &Connection, delivery_id: &str) -> Result<Delivery, StoreError> {
        Delivery::get(connection, delivery_id)?.ok_or_else(|| StoreError::NotFound {
            kind: "delivery",
            id: delivery_id.to_owned(),
        })
    }

    fn from_row(row: &Row<'_>) -> Result<Delivery, StoreError> {
        let delivery_id: String = row.get(0)?;
        let state: String = row.get(4)?;
        let outcome = outcome_from_row(row, OUTCOME_COLUMN, "deliveries", &delivery_id)?;
        Ok(Delivery {
            failure_code: outcome.failure_code,
            usage: outcome.usage,
            invocation_id: row.get(1)?,
            target: row.get(2)?,
            owner_node: row.get(3)?,
            state: parse_word("deliveries", &delivery_id, &state)?,
            failure_reason: parse_optional_word("deliveries", &delivery_id, row.get(5)?)?,
            failure_detail: row.get(6)?,
            created_at_ms: row.get(7)?,
            updated_at_ms: row.get(8)?,
            resolve_reason: row.get(9)?,
            delivery_id,
        })
    }
}

fn attempt_from_row(row: &Row<'_>) -> Result<DeliveryAttempt, StoreError> {
    let delivery_id: String = row.get(0)?;
    let attempt: i64 = row.get(1)?;
    let id = format!("{delivery_id}#{attempt}");
    let outcome: Option<String> = row.get(4)?;
    Ok(DeliveryAttempt {
        started_at_ms: row.get(2)?,
        ended_at_ms: row.get(3)?,
        outcome: outcome
            .map(|word| AttemptOutcome::parse(&id, &word))
            .transpose()?,
        failure_reason: parse_optional_word("delivery_attempts", &id, row.get(5)?)?,
        failure_detail: row.get(6)?,
        delivery_id,
        attempt,
    })
}

impl Store {
    /// [`Delivery::transition`] in its own write, stamped with the current
    /// time.
    pub async fn transition_delivery(
        &self,
        delivery_id: &str,
        to: DeliveryState,
        failure: Option<(FailureReason, String)>,
    ) -> Result<Delivery, StoreError> {
        let delivery_id = delivery_id.to_owned();
        let env = self.env().clone();
        self.write(move |transaction| {
            let failure = failure
                .as_ref()
                .map(|(reason, detail)| (*reason, detail.as_str()));
            Delivery::transition(
                transaction,
                &delivery_id,
                to,
                failure,
                env.now_unix_ms_i64(),
            )
        })
        .await
    }

    /// The delivery with this id, if stored.
    pub fn get_delivery(&self, delivery_id: &str) -> Result<Option<Delivery>, StoreError> {
        self.read(|connection| Delivery::get(connection, delivery_id))
    }
}

#[cfg(test)]
mod outcome_columns {
    use super::*;

    #[test]
    fn the_column_list_ends_with_the_outcome_columns() {
        assert!(COLUMNS.ends_with(super::super::usage::OUTCOME_COLUMNS));
        assert_eq!(COLUMNS.split(',').count(), OUTCOME_COLUMN + 5);
    }
}
