//! What a restart does to work a crash left unfinished.
//!
//! The rule is a pure function of the state a flight was found in:
//! - `waking` goes back to `queued`: the invocation never reached the agent,
//!   so running it later is safe;
//! - `running` and `waiting` become `failed` with reason `harness_error`:
//!   the agent may already have acted, and running it again could execute
//!   it twice, which must never happen; unless its execution outlived the
//!   broker (a held turn, see `crate::holder::journal`): then it stays as
//!   it is, and the broker carries it on (re-attached, never re-run);
//! - `queued` stays queued, and terminal flights stay as they are.
//!
//! A delivery whose flight is local (the same broker owns the invocation)
//! follows its flight into `failed`. [`reconcile_on_open`] applies the rule
//! in one transaction, through the same checked transitions as every other
//! write, records each change in the audit log, and returns the report.

use std::collections::BTreeSet;

use rusqlite::{Connection, TransactionBehavior};
use scout_mesh::lifecycle::{DeliveryState, FailureReason, FlightState};

use super::audit::{AuditEntry, NewAuditEntry};
use super::deliveries::Delivery;
use super::flights::Flight;
use super::{StoreError, parse_optional_word, parse_word};

/// The failure detail of a flight the broker stopped under.
pub const INTERRUPTED_DETAIL: &str =
    "interrupted: the broker stopped while this flight was running";

/// The actor name audit entries written by reconcile carry.
pub const RECONCILE_ACTOR: &str = "store";

/// What a restart does to a flight found in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlightRecovery {
    /// Leave it as it is.
    Keep,
    /// Put it back in the queue; it has not reached the agent.
    Requeue,
    /// Fail it with `harness_error` and [`INTERRUPTED_DETAIL`]; it may have
    /// reached the agent, so it must not run again.
    FailInterrupted,
    /// Mark it running: it was waking when the broker stopped, but its
    /// execution had started in a holder, which carries it on (running it
    /// again from the queue would run it twice).
    MarkRunning,
}

impl FlightRecovery {
    /// The state the flight moves to, if it moves.
    pub fn target(self) -> Option<FlightState> {
        match self {
            FlightRecovery::Keep => None,
            FlightRecovery::Requeue => Some(FlightState::Queued),
            FlightRecovery::FailInterrupted => Some(FlightState::Failed),
            FlightRecovery::MarkRunning => Some(FlightState::Running),
        }
    }
}

/// The restart rule for flights; `held`: the flight's execution outlived
/// the broker.
pub fn flight_recovery(state: FlightState, held: bool) -> FlightRecovery {
    match state {
        FlightState::Waking if held => FlightRecovery::MarkRunning,
        FlightState::Waking => FlightRecovery::Requeue,
        FlightState::Running | FlightState::Waiting if held => FlightRecovery::Keep,
        FlightState::Running | FlightState::Waiting => FlightRecovery::FailInterrupted,
        FlightState::Queued
        | FlightState::Completed
        | FlightState::Failed
        | FlightState::Cancelled => FlightRecovery::Keep,
    }
}

/// The restart rule for a delivery whose flight is on this broker: an
/// unfinished delivery of a failed flight fails with it.
pub fn delivery_recovery(
    delivery: DeliveryState,
    local_flight: FlightState,
) -> Option<DeliveryState> {
    let follows = local_flight == FlightState::Failed
        && !delivery.is_terminal()
        && delivery.can_transition_to(DeliveryState::Failed);
    follows.then_some(DeliveryState::Failed)
}

/// A flight reconcile changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconciledFlight {
    /// The flight.
    pub flight_id: String,
    /// Its invocation.
    pub invocation_id: String,
    /// The state it was found in.
    pub from: FlightState,
    /// The state it was moved to.
    pub to: FlightState,
}

/// A delivery reconcile changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconciledDelivery {
    /// The delivery.
    pub delivery_id: String,
    /// Its invocation.
    pub invocation_id: String,
    /// The state it was found in.
    pub from: DeliveryState,
    /// The state it was moved to.
    pub to: DeliveryState,
}

/// What [`Store::open`](super::Store::open) did to unfinished work.
///
/// The lists are not capped: only flights that were waking, running or
/// waiting change, and there are at most as many of those as agent
/// instances on this broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Flights moved, in id order.
    pub flights: Vec<ReconciledFlight>,
    /// Deliveries moved, in id order.
    pub deliveries: Vec<ReconciledDelivery>,
    /// Flights found queued and left queued.
    pub flights_left_queued: usize,
}

impl ReconcileReport {
    /// Whether reconcile changed nothing.
    pub fn is_empty(&self) -> bool {
        self.flights.is_empty() && self.deliveries.is_empty()
    }

    /// How many flights reconcile moved (deliveries only follow them).
    pub fn total(&self) -> usize {
        self.flights.len()
    }

    /// The flights that were moved to `to`.
    pub fn flights_moved_to(&self, to: FlightState) -> impl Iterator<Item = &ReconciledFlight> {
        self.flights.iter().filter(move |flight| flight.to == to)
    }
}

/// Applies the restart rules in one transaction and reports what changed.
pub(crate) fn reconcile_on_open(
    connection: &mut Connection,
    now_ms: i64,
    held_invocations: &BTreeSet<String>,
) -> Result<ReconcileReport, StoreError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut report = ReconcileReport {
        flights_left_queued: transaction.query_row(
            "SELECT count(*) FROM flights WHERE state = 'queued'",
            [],
            |row| row.get::<_, i64>(0),
        )? as usize,
        ..ReconcileReport::default()
    };

    let unfinished: Vec<(String, String, String)> = {
        let mut statement = transaction.prepare(
            "SELECT flight_id, invocation_id, state FROM flights
             WHERE state IN ('waking', 'running', 'waiting') ORDER BY flight_id",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (flight_id, invocation_id, state) in unfinished {
        let from: FlightState = parse_word("flights", &flight_id, &state)?;
        let recovery = flight_recovery(from, held_invocations.contains(&invocation_id));
        let Some(to) = recovery.target() else {
            continue;
        };
        let failure = (recovery == FlightRecovery::FailInterrupted)
            .then_some((FailureReason::HarnessError, INTERRUPTED_DETAIL));
        Flight::transition(&transaction, &flight_id, to, failure, now_ms)?;
        AuditEntry::append(
            &transaction,
            &NewAuditEntry {
                ts_ms: now_ms,
                actor: RECONCILE_ACTOR.to_owned(),
                action: "reconcile_flight".to_owned(),
                subject: flight_id.clone(),
                detail: serde_json::json!({
                    "invocation_id": invocation_id,
                    "from": from.as_str(),
                    "to": to.as_str(),
                    "failure_reason": failure.map(|(reason, _)| reason.as_str()),
                    "failure_detail": failure.map(|(_, detail)| detail),
                }),
            },
        )?;
        report.flights.push(ReconciledFlight {
            flight_id,
            invocation_id,
            from,
            to,
        });
    }

    // A delivery and a flight of the same invocation in one store means this
    // broker is both origin and owner: the delivery is local.
    type LocalDeliveryRow = (
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
    );
    let local: Vec<LocalDeliveryRow> = {
        let mut statement = transaction.prepare(
            "SELECT d.delivery_id, d.invocation_id, d.state, f.state, f.failure_reason,
                    f.failure_detail
             FROM deliveries d JOIN flights f ON f.invocation_id = d.invocation_id
             WHERE d.state IN ('accepted', 'peer_acked', 'running', 'deferred')
               AND f.state = 'failed'
             ORDER BY d.delivery_id",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (delivery_id, invocation_id, delivery_word, flight_word, reason, detail) in local {
        let from: DeliveryState = parse_word("deliveries", &delivery_id, &delivery_word)?;
        let flight_state: FlightState = parse_word("flights", &invocation_id, &flight_word)?;
        let Some(to) = delivery_recovery(from, flight_state) else {
            continue;
        };
        let reason: FailureReason = parse_optional_word("flights", &invocation_id, reason)?
            .unwrap_or(FailureReason::HarnessError);
        let detail = detail.unwrap_or_else(|| INTERRUPTED_DETAIL.to_owned());
        Delivery::transition(
            &transaction,
            &delivery_id,
            to,
            Some((reason, &detail)),
            now_ms,
        )?;
        AuditEntry::append(
            &transaction,
            &NewAuditEntry {
                ts_ms: now_ms,
                actor: RECONCILE_ACTOR.to_owned(),
                action: "reconcile_delivery".to_owned(),
                subject: delivery_id.clone(),
                detail: serde_json::json!({
                    "invocation_id": invocation_id,
                    "from": from.as_str(),
                    "to": to.as_str(),
                    "failure_reason": reason.as_str(),
                }),
            },
        )?;
        report.deliveries.push(ReconciledDelivery {
            delivery_id,
            invocation_id,
            from,
            to,
        });
    }

    transaction.commit()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flight_rule_matches_the_design() {
        use FlightState::*;
        assert_eq!(flight_recovery(Waking, false), FlightRecovery::Requeue);
        assert_eq!(
            flight_recovery(Running, false),
            FlightRecovery::FailInterrupted
        );
        assert_eq!(
            flight_recovery(Waiting, false),
            FlightRecovery::FailInterrupted
        );
        // A held execution is carried on, never failed or run again.
        assert_eq!(flight_recovery(Running, true), FlightRecovery::Keep);
        assert_eq!(flight_recovery(Waiting, true), FlightRecovery::Keep);
        assert_eq!(flight_recovery(Waking, true), FlightRecovery::MarkRunning);
        assert_eq!(flight_recovery(Queued, false), FlightRecovery::Keep);
        for terminal in [Completed, Failed, Cancelled] {
            assert_eq!(flight_recovery(terminal, false), FlightRecovery::Keep);
        }
    }

    #[test]
    fn every_recovery_is_a_legal_transition() {
        for from in FlightState::ALL {
            if let Some(to) = flight_recovery(*from, false).target() {
                assert!(from.can_transition_to(to), "{from} -> {to}");
            }
        }
        for delivery in DeliveryState::ALL {
            for flight in FlightState::ALL {
                if let Some(to) = delivery_recovery(*delivery, *flight) {
                    assert!(delivery.can_transition_to(to), "{delivery} -> {to}");
                }
            }
        }
    }

    #[test]
    fn a_recovered_flight_never_runs_again() {
        // Nothing the agent may have seen goes back to the queue.
        for from in [FlightState::Running, FlightState::Waiting] {
            assert_ne!(
                flight_recovery(from, false).target(),
                Some(FlightState::Queued)
            );
        }
    }

    #[test]
    fn deliveries_follow_only_failed_local_flights() {
        use DeliveryState as D;
        assert_eq!(
            delivery_recovery(D::Running, FlightState::Failed),
            Some(D::Failed)
        );
        assert_eq!(
            delivery_recovery(D::PeerAcked, FlightState::Failed),
            Some(D::Failed)
        );
        assert_eq!(delivery_recovery(D::Running, FlightState::Queued), None);
        assert_eq!(delivery_recovery(D::Running, FlightState::Completed), None);
        assert_eq!(delivery_recovery(D::Completed, FlightState::Failed), None);
        assert_eq!(delivery_recovery(D::Cancelled, FlightState::Failed), None);
    }
}
