//! Flights: the lifecycle of one invocation's work on its owner.
//!
//! Every state change reads the current state and checks
//! `FlightState::can_transition_to` in the same transaction that writes the
//! new one; an illegal change is [`StoreError::IllegalTransition`] and
//! writes nothing.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use scout_mesh::lifecycle::{FailureReason, FlightState};
use scout_mesh::output::{FLIGHT_OUTPUT_BYTES_MAX, FlightOutput};
use scout_mesh::usage::{FailureCode, Usage};

use super::invocations::Invocation;
use super::usage::outcome_from_row;
use super::{
    Store, StoreError, check_failure_fits, clamp_detail, list_limit, parse_optional_word,
    parse_word,
};

/// One flight, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    /// The flight's id.
    pub flight_id: String,
    /// The invocation it executes (one flight per invocation).
    pub invocation_id: String,
    /// Where it is in its lifecycle.
    pub state: FlightState,
    /// The agent instance the name resolved to.
    pub chosen_instance: Option<String>,
    /// Why that instance was chosen (exact, local, idle, least busy).
    pub resolve_reason: Option<String>,
    /// Why it ended without a result (set on `failed`, maybe on `cancelled`).
    pub failure_reason: Option<FailureReason>,
    /// A human-readable explanation of the failure.
    pub failure_detail: Option<String>,
    /// The failed turn's stable code (`AUTH_REQUIRED`), when known.
    pub failure_code: Option<FailureCode>,
    /// Tokens and cost of the turn, when its agent reported them.
    pub usage: Option<Usage>,
    /// The tail of the agent's output, bounded by [`FlightOutput`]'s rule.
    /// It is for status pages and `logs`; the exchange lives in the
    /// conversation.
    pub output: FlightOutput,
    /// The final answer, once completed, bounded by the same rule.
    pub result: Option<FlightOutput>,
    /// When the flight was created, unix ms.
    pub created_at_ms: i64,
    /// When it last changed, unix ms.
    pub updated_at_ms: i64,
}

/// What is needed to create a flight; it starts `queued`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFlight {
    /// The flight's id (see [`Env::new_id`](crate::env::Env::new_id)).
    pub flight_id: String,
    /// The invocation it executes; must be stored already.
    pub invocation_id: String,
    /// The agent instance the name resolved to.
    pub chosen_instance: Option<String>,
    /// Why that instance was chosen.
    pub resolve_reason: Option<String>,
    /// Creation time, unix ms.
    pub created_at_ms: i64,
}

/// The flight's whole output: the text up to the last cut, then its
/// appended chunks in order (see [`Flight::append_output`]).
macro_rules! output_sql {
    () => {
        "output || coalesce((SELECT group_concat(chunk, '' ORDER BY chunk_id) \
         FROM flight_output_chunks c WHERE c.flight_id = flights.flight_id), '')"
    };
}

/// A chunk row grows to about this size before the next append starts a
/// new one: appending to a row rewrites it, so this bounds what one append
/// costs, and 1 MiB of output is at most about a hundred rows.
pub const OUTPUT_CHUNK_BYTES: usize = 16 * 1024;

/// [`output_sql`] as a constant, for queries that read only the output.
const OUTPUT: &str = output_sql!();

const COLUMNS: &str = concat!(
    "flight_id, invocation_id, state, chosen_instance, resolve_reason, \
     failure_reason, failure_detail, ",
    output_sql!(),
    ", result, created_at_ms, updated_at_ms, \
     failure_code, input_tokens, output_tokens, cached_tokens, cost_micro_usd"
);

/// Where [`COLUMNS`] reaches the outcome columns ([`super::usage::OUTCOME_COLUMNS`]).
const OUTCOME_COLUMN: usize = 11;

impl Flight {
    /// Creates the `queued` flight of a stored invocation.
    ///
    /// Errors: [`StoreError::NotFound`] when the invocation is not stored,
    /// [`StoreError::AlreadyExists`] when it already has a flight or the
    /// flight id is taken.
    pub fn create(transaction: &Transaction<'_>, new: &NewFlight) -> Result<Flight, StoreError> {
        if !Invocation::exists(transaction, &new.invocation_id)? {
            return Err(StoreError::NotFound {
                kind: "invocation",
                id: new.invocation_id.clone(),
            });
        }
        let n_inserted = transaction
            .prepare_cached(
                "INSERT INTO flights (flight_id, invocation_id, state, chosen_instance,
                     resolve_reason, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?5)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                new.flight_id,
                new.invocation_id,
                new.chosen_instance,
                new.resolve_reason,
                new.created_at_ms,
            ])?;
        if n_inserted == 0 {
            return Err(StoreError::AlreadyExists {
                kind: "flight",
                id: new.flight_id.clone(),
            });
        }
        Flight::get(transaction, &new.flight_id)?.ok_or_else(|| StoreError::NotFound {
            kind: "flight",
            id: new.flight_id.clone(),
        })
    }

    /// Moves a flight to `to` if the state machine allows it. `failure` is
    /// required for `failed`, allowed for `cancelled`, refused otherwise.
    /// Returns the flight as written.
    pub fn transition(
        transaction: &Transaction<'_>,
        flight_id: &str,
        to: FlightState,
        failure: Option<(FailureReason, &str)>,
        now_ms: i64,
    ) -> Result<Flight, StoreError> {
        let from = Flight::state(transaction, flight_id)?;
        from.transition(to)
            .map_err(|transition| StoreError::IllegalTransition {
                kind: "flight",
                id: flight_id.to_owned(),
                transition,
            })?;
        check_failure_fits("flight", flight_id, to.as_str(), failure.is_some())?;
        let (reason, detail) = match failure {
            Some((reason, detail)) => (Some(reason.as_str()), Some(clamp_detail(detail))),
            None => (None, None),
        };
        // The `state = ?` guard repeats the check in SQL: were anything else
        // to write this row between the read and here, nothing would change
        // and the mismatch below would report it.
        let n_updated = transaction
            .prepare_cached(
                "UPDATE flights SET state = ?1, failure_reason = ?2, failure_detail = ?3,
                     updated_at_ms = ?4
                 WHERE flight_id = ?5 AND state = ?6",
            )?
            .execute(params![
                to.as_str(),
                reason,
                detail,
                now_ms,
                flight_id,
                from.as_str()
            ])?;
        if n_updated != 1 {
            return Err(StoreError::InvalidRequest {
                detail: format!("flight {flight_id} changed while it was being updated"),
            });
        }
        Flight::get(transaction, flight_id)?.ok_or_else(|| StoreError::NotFound {
            kind: "flight",
            id: flight_id.to_owned(),
        })
    }

    /// Appends `chunk` to the flight's output under [`FlightOutput`]'s rule.
    ///
    /// While the output fits, the text goes onto the flight's last chunk
    /// row while that stays under [`OUTPUT_CHUNK_BYTES`], else into a new
    /// one, so an append costs about its own size whatever the output's,
    /// and a flight has at most a few hundred chunk rows. Only a chunk that
    /// crosses the limit reads the output back to cut it and folds it into
    /// one row, which the rule's slack makes rare (once per quarter of the
    /// limit).
    pub fn append_output(
        transaction: &Transaction<'_>,
        flight_id: &str,
        chunk: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let n_counted = transaction
            .prepare_cached(
                "UPDATE flights SET output_bytes = output_bytes + ?1, updated_at_ms = ?2
                 WHERE flight_id = ?3 AND output_bytes + ?1 <= ?4",
            )?
            .execute(params![
                chunk.len() as i64,
                now_ms,
                flight_id,
                FLIGHT_OUTPUT_BYTES_MAX as i64
            ])?;
        if n_counted == 0 {
            let Some(mut output) = Flight::read_output(transaction, flight_id)? else {
                return Err(StoreError::NotFound {
                    kind: "flight",
                    id: flight_id.to_owned(),
                });
            };
            output.push_str(chunk);
            return Flight::store_folded(transaction, flight_id, &output, Some(now_ms));
        }
        let n_extended = transaction
            .prepare_cached(
                "UPDATE flight_output_chunks SET chunk = chunk || ?1
                 WHERE chunk_id = (SELECT max(chunk_id) FROM flight_output_chunks
                                   WHERE flight_id = ?2)
                   AND length(CAST(chunk AS BLOB)) + ?3 <= ?4",
            )?
            .execute(params![
                chunk,
                flight_id,
                chunk.len() as i64,
                OUTPUT_CHUNK_BYTES as i64
            ])?;
        if n_extended == 0 {
            transaction
                .prepare_cached(
                    "INSERT INTO flight_output_chunks (flight_id, chunk) VALUES (?1, ?2)",
                )?
                .execute(params![flight_id, chunk])?;
        }
        Ok(())
    }

    /// Folds a finished flight's output chunks into one row, so reading it
    /// back later concatenates nothing.
    pub fn fold_output(transaction: &Transaction<'_>, flight_id: &str) -> Result<(), StoreError> {
        let n_chunks: i64 = transaction
            .prepare_cached("SELECT count(*) FROM flight_output_chunks WHERE flight_id = ?1")?
            .query_row([flight_id], |row| row.get(0))?;
        if n_chunks <= 1 {
            return Ok(());
        }
        match Flight::read_output(transaction, flight_id)? {
            Some(output) => Flight::store_folded(transaction, flight_id, &output, None),
            None => Ok(()),
        }
    }

    /// The flight's whole output, if the flight is stored.
    pub(crate) fn read_output(
        connection: &Connection,
        flight_id: &str,
    ) -> Result<Option<FlightOutput>, StoreError> {
        let text: Option<String> = connection
            .prepare_cached(&format!(
                "SELECT {OUTPUT} FROM flights WHERE flight_id = ?1"
            ))?
            .query_row([flight_id], |row| row.get(0))
            .optional()?;
        Ok(text.map(FlightOutput::from_text))
    }

    /// Replaces the flight's output with `output` as one chunk row. The
    /// flight's own row keeps no output text, so updating its counters
    /// never rewrites a large value.
    fn store_folded(
        transaction: &Transaction<'_>,
        flight_id: &str,
        output: &FlightOutput,
        now_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        transaction
            .prepare_cached("DELETE FROM flight_output_chunks WHERE flight_id = ?1")?
            .execute([flight_id])?;
        if !output.as_str().is_empty() {
            transaction
                .prepare_cached(
                    "INSERT INTO flight_output_chunks (flight_id, chunk) VALUES (?1, ?2)",
                )?
                .execute(params![flight_id, output.as_str()])?;
        }
        transaction
            .prepare_cached(
                "UPDATE flights SET output = '', output_bytes = ?1,
                     updated_at_ms = coalesce(?2, updated_at_ms)
                 WHERE flight_id = ?3",
            )?
            .execute(params![output.as_str().len() as i64, now_ms, flight_id])?;
        Ok(())
    }

    /// The id of an invocation's flight, if it has one, without reading
    /// the flight's output.
    pub fn id_for_invocation(
        connection: &Connection,
        invocation_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(connection
            .prepare_cached("SELECT flight_id FROM flights WHERE invocation_id = ?1")?
            .query_row([invocation_id], |row| row.get(0))
            .optional()?)
    }

    /// Records the flight's final answer. Does not change its state: call
    /// [`Flight::transition`] to `completed` in the same write.
    pub fn set_result(
        transaction: &Transaction<'_>,
        flight_id: &str,
        result: &FlightOutput,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let n_updated = transaction
            .prepare_cached(
                "UPDATE flights SET result = ?1, updated_at_ms = ?2 WHERE flight_id = ?3",
            )?
            .execute(params![result.as_str(), now_ms, flight_id])?;
        if n_updated == 0 {
            return Err(StoreError::NotFound {
                kind: "flight",
                id: flight_id.to_owned(),
            });
        }
        Ok(())
    }

    /// The flight with this id, if stored.
    pub fn get(connection: &Connection, flight_id: &str) -> Result<Option<Flight>, StoreError> {
        connection
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM flights WHERE flight_id = ?1"
            ))?
            .query_row([flight_id], |row| Ok(Flight::from_row(row)))
            .optional()?
            .transpose()
    }

    /// The flight of an invocation, if it has one.
    pub fn get_for_invocation(
        connection: &Connection,
        invocation_id: &str,
    ) -> Result<Option<Flight>, StoreError> {
        connection
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM flights WHERE invocation_id = ?1"
            ))?
            .query_row([invocation_id], |row| Ok(Flight::from_row(row)))
            .optional()?
            .transpose()
    }

    /// Flights not yet completed, failed or cancelled, oldest first.
    pub fn list_non_terminal(
        connection: &Connection,
        limit: usize,
    ) -> Result<Vec<Flight>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM flights
             WHERE state IN ('queued', 'waking', 'running', 'waiting')
             ORDER BY created_at_ms, flight_id LIMIT ?1"
        ))?;
        let rows = statement.query_map([list_limit(limit)], |row| Ok(Flight::from_row(row)))?;
        rows.map(|row| row?).collect()
    }

    /// Flights in one state, oldest first.
    pub fn list_in_state(
        connection: &Connection,
        state: FlightState,
        limit: usize,
    ) -> Result<Vec<Flight>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM flights WHERE state = ?1
             ORDER BY created_at_ms, flight_id LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![state.as_str(), list_limit(limit)], |row| {
            Ok(Flight::from_row(row))
        })?;
        rows.map(|row| row?).collect()
    }

    /// The oldest queued flight of one instance: the next one its runner
    /// takes (the partial index on non-terminal states keeps this cheap).
    pub fn next_queued(
        connection: &Connection,
        instance: &str,
    ) -> Result<Option<Flight>, StoreError> {
        connection
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM flights WHERE state = 'queued' AND chosen_instance = ?1
                 ORDER BY created_at_ms, flight_id LIMIT 1"
            ))?
            .query_row([instance], |row| Ok(Flight::from_row(row)))
            .optional()?
            .transpose()
    }

    fn state(connection: &Connection, flight_id: &str) -> Result<FlightState, StoreError> {
        let word: Option<String> = connection
            .prepare_cached("SELECT state FROM flights WHERE flight_id = ?1")?
            .query_row([flight_id], |row| row.get(0))
            .optional()?;
        match word {
            None => Err(StoreError::NotFound {
                kind: "flight",
                id: flight_id.to_owned(),
            }),
            Some(word) => parse_word("flights", flight_id, &word),
        }
    }

    fn from_row(row: &Row<'_>) -> Result<Flight, StoreError> {
        let flight_id: String = row.get(0)?;
        let state: String = row.get(2)?;
        let outcome = outcome_from_row(row, OUTCOME_COLUMN, "flights", &flight_id)?;
        Ok(Flight {
            failure_code: outcome.failure_code,
            usage: outcome.usage,
            invocation_id: row.get(1)?,
            state: parse_word("flights", &flight_id, &state)?,
            chosen_instance: row.get(3)?,
            resolve_reason: row.get(4)?,
            failure_reason: parse_optional_word("flights", &flight_id, row.get(5)?)?,
            failure_detail: row.get(6)?,
            // Rows written before the one output rule may be longer: read
            // back, they follow it too.
            output: FlightOutput::from_text(row.get::<_, String>(7)?),
            result: row
                .get::<_, Option<String>>(8)?
                .map(FlightOutput::from_text),
            created_at_ms: row.get(9)?,
            updated_at_ms: row.get(10)?,
            flight_id,
        })
    }
}

impl Store {
    /// [`Flight::transition`] in its own write, stamped with the current
    /// time.
    pub async fn transition_flight(
        &self,
        flight_id: &str,
        to: FlightState,
        failure: Option<(FailureReason, String)>,
    ) -> Result<Flight, StoreError> {
        let flight_id = flight_id.to_owned();
        let env = self.env().clone();
        self.write(move |transaction| {
            let failure = failure
                .as_ref()
                .map(|(reason, detail)| (*reason, detail.as_str()));
            Flight::transition(transaction, &flight_id, to, failure, env.now_unix_ms_i64())
        })
        .await
    }

    /// Records the final answer and moves the flight to `completed` in one
    /// commit.
    pub async fn complete_flight(
        &self,
        flight_id: &str,
        result: FlightOutput,
    ) -> Result<Flight, StoreError> {
        let flight_id = flight_id.to_owned();
        let env = self.env().clone();
        self.write(move |transaction| {
            let now_ms = env.now_unix_ms_i64();
            Flight::set_result(transaction, &flight_id, &result, now_ms)?;
            Flight::transition(
                transaction,
                &flight_id,
                FlightState::Completed,
                None,
                now_ms,
            )
        })
        .await
    }

    /// The flight with this id, if stored.
    pub fn get_flight(&self, flight_id: &str) -> Result<Option<Flight>, StoreError> {
        self.read(|connection| Flight::get(connection, flight_id))
    }
}

#[cfg(test)]
mod outcome_columns {
    use super::*;

    #[test]
    fn the_column_list_ends_with_the_outcome_columns() {
        assert!(COLUMNS.ends_with(super::super::usage::OUTCOME_COLUMNS));
        // The output expression has two commas of its own.
        let output_commas = OUTPUT.split(',').count() - 1;
        assert_eq!(output_commas, 2);
        assert_eq!(
            COLUMNS.split(',').count(),
            OUTCOME_COLUMN + 5 + output_commas
        );
    }
}
