//! What a turn used and how it failed, as stored: the failure code and
//! usage columns that flights (at the owner) and deliveries (at the origin,
//! which learns them with the result) share, and the totals an owner
//! answers usage queries from.
//!
//! The columns hold what the routing core hands over; a row another build
//! wrote with a code that is no code, or a negative count, reads as a
//! [`StoreError::MalformedRow`], never as a panic.

use rusqlite::{Connection, Row, Transaction, params};
use scout_mesh::usage::{FailureCode, Usage};

use super::StoreError;

/// The columns, in the order [`outcome_from_row`] reads them; the tables'
/// column lists end with them (their tests check it).
#[cfg(test)]
pub(crate) const OUTCOME_COLUMNS: &str =
    "failure_code, input_tokens, output_tokens, cached_tokens, cost_micro_usd";

/// A failure code and usage, as one row holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The failed turn's stable code.
    pub failure_code: Option<FailureCode>,
    /// What the turn used, when reported.
    pub usage: Option<Usage>,
}

/// Which table an outcome is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeTable {
    /// A flight, by `flight_id`.
    Flights,
    /// A delivery, by `delivery_id`.
    Deliveries,
}

/// A count as SQLite stores it (an `i64`); counts are bounded far below
/// `i64::MAX` by the wire's usage limits, so clamping only guards a bug.
fn sql_count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Records the failure code and usage of one row; `None`s leave the row's
/// columns NULL.
pub fn set_outcome(
    transaction: &Transaction<'_>,
    table: OutcomeTable,
    id: &str,
    outcome: &Outcome,
) -> Result<(), StoreError> {
    let sql = match table {
        OutcomeTable::Flights => {
            "UPDATE flights SET failure_code = ?1, input_tokens = ?2, output_tokens = ?3,
                 cached_tokens = ?4, cost_micro_usd = ?5 WHERE flight_id = ?6"
        }
        OutcomeTable::Deliveries => {
            "UPDATE deliveries SET failure_code = ?1, input_tokens = ?2, output_tokens = ?3,
                 cached_tokens = ?4, cost_micro_usd = ?5 WHERE delivery_id = ?6"
        }
    };
    let usage = outcome.usage;
    transaction.prepare_cached(sql)?.execute(params![
        outcome.failure_code.as_ref().map(FailureCode::as_str),
        usage.map(|usage| sql_count(usage.input_tokens)),
        usage.map(|usage| sql_count(usage.output_tokens)),
        usage.map(|usage| sql_count(usage.cached_tokens)),
        usage.and_then(|usage| usage.cost_micro_usd).map(sql_count),
        id,
    ])?;
    Ok(())
}

/// Reads [`OUTCOME_COLUMNS`] starting at column `first`.
pub(crate) fn outcome_from_row(
    row: &Row<'_>,
    first: usize,
    table: &'static str,
    id: &str,
) -> Result<Outcome, StoreError> {
    let malformed = |detail: String| StoreError::MalformedRow {
        table,
        id: id.to_owned(),
        detail,
    };
    let failure_code = row
        .get::<_, Option<String>>(first)?
        .map(|word| FailureCode::parse(&word).map_err(|err| malformed(err.to_string())))
        .transpose()?;
    let count = |idx: usize| -> Result<Option<u64>, StoreError> {
        row.get::<_, Option<i64>>(first + idx)?
            .map(|value| {
                u64::try_from(value).map_err(|_| malformed(format!("a negative count ({value})")))
            })
            .transpose()
    };
    let (input, output, cached, cost) = (count(1)?, count(2)?, count(3)?, count(4)?);
    let usage = match (input, output, cached) {
        (None, None, None) if cost.is_none() => None,
        _ => Some(Usage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            cached_tokens: cached.unwrap_or(0),
            cost_micro_usd: cost,
        }),
    };
    Ok(Outcome {
        failure_code,
        usage,
    })
}

/// The usage of one instance's finished flights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceUsage {
    /// The instance.
    pub instance: String,
    /// Flights that ended in the range.
    pub flights: u64,
    /// Of those, the failed ones.
    pub failed: u64,
    /// Their usage summed; the cost when any reported one.
    pub usage: Usage,
}

/// Totals of the flights this broker ran that ended (completed, failed or
/// cancelled) at or after `since_ms`, per instance, most flights first;
/// at most `rows_max` rows, and whether more were left out.
pub fn usage_by_instance(
    connection: &Connection,
    since_ms: i64,
    rows_max: usize,
) -> Result<(Vec<InstanceUsage>, bool), StoreError> {
    let limit = i64::try_from(rows_max.saturating_add(1)).unwrap_or(i64::MAX);
    let mut statement = connection.prepare_cached(
        "SELECT coalesce(chosen_instance, ''), count(*),
                sum(state = 'failed'),
                coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
                coalesce(sum(cached_tokens), 0), sum(cost_micro_usd)
         FROM flights
         WHERE state IN ('completed', 'failed', 'cancelled') AND updated_at_ms >= ?1
         GROUP BY chosen_instance
         ORDER BY count(*) DESC, chosen_instance
         LIMIT ?2",
    )?;
    let rows = statement.query_map(params![since_ms, limit], |row| {
        let count = |idx: usize| -> rusqlite::Result<u64> {
            Ok(u64::try_from(row.get::<_, i64>(idx)?).unwrap_or(0))
        };
        Ok(InstanceUsage {
            instance: row.get(0)?,
            flights: count(1)?,
            failed: count(2)?,
            usage: Usage {
                input_tokens: count(3)?,
                output_tokens: count(4)?,
                cached_tokens: count(5)?,
                cost_micro_usd: row
                    .get::<_, Option<i64>>(6)?
                    .map(|cost| u64::try_from(cost).unwrap_or(0)),
            },
        })
    })?;
    let mut all = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let truncated = all.len() > rows_max;
    all.truncate(rows_max);
    Ok((all, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::flights::Flight;

    fn store_with_flights() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scout.db");
        let mut connection = Connection::open(&path).unwrap();
        crate::store::migrations::migrate(&mut connection, &path).unwrap();
        for (id, instance, state, reason, at) in [
            ("f1", "@a@n#main", "completed", None, 100),
            ("f2", "@a@n#main", "failed", Some("harness_error"), 200),
            ("f3", "@b@n", "completed", None, 300),
            ("f4", "@b@n", "running", None, 400),
            ("f5", "@a@n#main", "completed", None, 10),
        ] {
            connection
                .execute(
                    "INSERT INTO invocations (invocation_id, action, body, origin_node, target,
                         delivery_policy, created_at_ms)
                     VALUES (?1, 'execute', 'b', 'o', 't', 'durable', 0)",
                    [id],
                )
                .unwrap();
            connection
                .execute(
                    "INSERT INTO flights (flight_id, invocation_id, state, chosen_instance,
                         failure_reason, created_at_ms, updated_at_ms)
                     VALUES (?1, ?1, ?2, ?3, ?4, 0, ?5)",
                    params![id, state, instance, reason, at],
                )
                .unwrap();
        }
        (dir, connection)
    }

    fn usage(input: u64, cost: Option<u64>) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: 2,
            cached_tokens: 1,
            cost_micro_usd: cost,
        }
    }

    #[test]
    fn outcomes_round_trip_and_totals_count_finished_flights_in_the_window() {
        let (_dir, mut connection) = store_with_flights();
        let tx = connection.transaction().unwrap();
        let code = FailureCode::parse("AUTH_REQUIRED").unwrap();
        for (id, outcome) in [
            (
                "f1",
                Outcome {
                    failure_code: None,
                    usage: Some(usage(10, Some(5))),
                },
            ),
            (
                "f2",
                Outcome {
                    failure_code: Some(code.clone()),
                    usage: Some(usage(20, None)),
                },
            ),
            (
                "f3",
                Outcome {
                    failure_code: None,
                    usage: None,
                },
            ),
        ] {
            set_outcome(&tx, OutcomeTable::Flights, id, &outcome).unwrap();
        }
        tx.commit().unwrap();
        let f2 = Flight::get(&connection, "f2").unwrap().unwrap();
        assert_eq!(f2.failure_code, Some(code));
        assert_eq!(f2.usage, Some(usage(20, None)));
        let f3 = Flight::get(&connection, "f3").unwrap().unwrap();
        assert_eq!((f3.failure_code, f3.usage), (None, None));

        // f4 is running and f5 ended before the window: neither counts.
        let (rows, truncated) = usage_by_instance(&connection, 50, 10).unwrap();
        assert!(!truncated);
        assert_eq!(
            rows,
            vec![
                InstanceUsage {
                    instance: "@a@n#main".into(),
                    flights: 2,
                    failed: 1,
                    usage: Usage {
                        input_tokens: 30,
                        output_tokens: 4,
                        cached_tokens: 2,
                        cost_micro_usd: Some(5),
                    },
                },
                InstanceUsage {
                    instance: "@b@n".into(),
                    flights: 1,
                    failed: 0,
                    usage: Usage::default(),
                },
            ]
        );
        let (rows, truncated) = usage_by_instance(&connection, 50, 1).unwrap();
        assert_eq!(rows.len(), 1);
        assert!(truncated);
    }

    /// A row another build wrote badly reads as a typed error, and the
    /// schema refuses a code that is no code.
    #[test]
    fn bad_outcome_columns_are_refused() {
        let (_dir, connection) = store_with_flights();
        let refused = connection.execute(
            "UPDATE flights SET failure_code = 'not a code' WHERE flight_id = 'f1'",
            [],
        );
        assert!(refused.unwrap_err().to_string().contains("CHECK"));
        connection
            .execute(
                "UPDATE flights SET failure_code = '9LIVES' WHERE flight_id = 'f1'",
                [],
            )
            .unwrap();
        let err = Flight::get(&connection, "f1").unwrap_err();
        assert_eq!(err.code(), "STORE_MALFORMED_ROW", "{err}");
    }
}
