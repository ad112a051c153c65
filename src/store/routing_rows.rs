//! The routing core's rows in SQLite: each [`Write`] of a `Persist` as the
//! store's statements (one transaction per persist), the facts the core
//! asks for before a request ([`facts`]), and what it is rebuilt from at
//! start ([`restore`]). Decisions stay in the core; this file only says
//! where each fact lives.

use rusqlite::{Connection, Transaction};
use scout_mesh::lifecycle::{DeliveryState, FlightState};
use scout_mesh::output::FlightOutput;
use scout_mesh::routing::{
    Facts, Invocation, Needs, PersistFailure, RestoredDelivery, RestoredFlight, Resumed,
    StoredFlight, Write,
};
use scout_mesh::wire::{FlightUpdate, NodeId};

use crate::env::Env;
use crate::store::StoreError;
use crate::store::conversations::{Conversation, NewMessage};
use crate::store::deliveries::{AttemptOutcome, Delivery, NewDelivery};
use crate::store::flights::{Flight, NewFlight};
use crate::store::invocations::{Accepted, InsertOutcome, Invocation as StoredInvocation};
use crate::store::usage::{Outcome, OutcomeTable, set_outcome};

/// Unfinished deliveries (and queued flights) rebuilt at start at most;
/// older ones wait for the next start. A broker with more has a bigger
/// problem to look at.
pub const RESTORE_ROWS_MAX: usize = 10_000;

fn unix(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn stored(invocation: &Invocation) -> StoredInvocation {
    StoredInvocation {
        invocation_id: invocation.invocation_id.clone(),
        action: invocation.action,
        body: invocation.body.clone(),
        conversation_id: invocation.conversation_id.clone(),
        origin_node: invocation.origin.to_string(),
        target: invocation.target.clone(),
        deadline_ms: invocation.deadline_unix_ms.map(unix),
        delivery_policy: invocation.policy,
        created_at_ms: unix(invocation.created_unix_ms),
        from_instance: invocation.from.clone(),
        chain: invocation.chain.clone(),
    }
}

/// The core's view of a stored invocation; `None` when its origin is not a
/// node id (a row no broker of this build wrote).
pub fn core_invocation(invocation: StoredInvocation) -> Option<Invocation> {
    Some(Invocation {
        origin: NodeId::parse(&invocation.origin_node).ok()?,
        invocation_id: invocation.invocation_id,
        action: invocation.action,
        body: invocation.body,
        conversation_id: invocation.conversation_id,
        target: invocation.target,
        deadline_unix_ms: invocation.deadline_ms.and_then(|ms| u64::try_from(ms).ok()),
        policy: invocation.delivery_policy,
        created_unix_ms: u64::try_from(invocation.created_at_ms).unwrap_or(0),
        from: invocation.from_instance,
        chain: invocation.chain,
    })
}

/// Commits one persist's rows in `tx`. `Ok(Err(..))` is an accept that
/// found the id stored already: nothing was written for it.
pub fn commit(
    tx: &Transaction<'_>,
    env: &Env,
    writes: &[Write],
) -> Result<Result<(), PersistFailure>, StoreError> {
    for write in writes {
        if let Err(duplicate) = apply(tx, env, write)? {
            return Ok(Err(duplicate));
        }
    }
    Ok(Ok(()))
}

fn apply(
    tx: &Transaction<'_>,
    env: &Env,
    write: &Write,
) -> Result<Result<(), PersistFailure>, StoreError> {
    match write {
        Write::Submit {
            invocation,
            delivery_id,
            choice,
            author,
        } => {
            let row = stored(invocation);
            if StoredInvocation::insert(tx, &row)? == InsertOutcome::Duplicate {
                return Err(StoreError::AlreadyExists {
                    kind: "invocation",
                    id: row.invocation_id,
                });
            }
            Delivery::create(
                tx,
                &NewDelivery {
                    delivery_id: delivery_id.clone(),
                    invocation_id: row.invocation_id.clone(),
                    target: choice.instance.clone(),
                    owner_node: Some(choice.owner.to_string()),
                    resolve_reason: Some(choice.reason.clone()),
                    created_at_ms: row.created_at_ms,
                },
            )?;
            Conversation::append_message(
                tx,
                &NewMessage {
                    message_id: format!("{}-request", row.invocation_id),
                    conversation_id: row.conversation_id.clone().unwrap_or_default(),
                    author: author.clone(),
                    body: row.body.clone(),
                    invocation_id: Some(row.invocation_id.clone()),
                    created_at_ms: row.created_at_ms,
                },
            )?;
        }
        Write::Attempt {
            delivery_id,
            started_unix_ms,
            failure,
            at_unix_ms,
        } => {
            // A delivery that ended meanwhile takes no further attempts.
            if let Ok(number) = Delivery::start_attempt(tx, delivery_id, unix(*started_unix_ms)) {
                let (outcome, failure) = match failure {
                    None => (AttemptOutcome::Succeeded, None),
                    Some((reason, detail)) => {
                        (AttemptOutcome::Failed, Some((*reason, detail.as_str())))
                    }
                };
                Delivery::finish_attempt(
                    tx,
                    delivery_id,
                    number,
                    outcome,
                    failure,
                    unix(*at_unix_ms),
                )?;
            }
        }
        Write::DeliveryState {
            delivery_id,
            state,
            failure,
            at_unix_ms,
        } => {
            if let Some(current) = Delivery::get(tx, delivery_id)?
                && current.state != *state
                && current.state.can_transition_to(*state)
            {
                Delivery::transition(
                    tx,
                    delivery_id,
                    *state,
                    failure.as_ref().map(|(r, d)| (*r, d.as_str())),
                    unix(*at_unix_ms),
                )?;
            }
        }
        Write::Reroute {
            delivery_id,
            choice,
            at_unix_ms,
        } => {
            let at = unix(*at_unix_ms);
            if Delivery::get(tx, delivery_id)?.is_some_and(|d| d.state == DeliveryState::Failed) {
                Delivery::transition(tx, delivery_id, DeliveryState::Accepted, None, at).ok();
            }
            Delivery::reroute(
                tx,
                delivery_id,
                &choice.instance,
                choice.owner.as_str(),
                &choice.reason,
                at,
            )?;
        }
        Write::FinishDelivery {
            delivery_id,
            invocation_id,
            conversation_id,
            state,
            failure,
            code,
            usage,
            author,
            body,
            at_unix_ms,
        } => {
            let at = unix(*at_unix_ms);
            if let Some(current) = Delivery::get(tx, delivery_id)?
                && !current.state.is_terminal()
            {
                Delivery::transition(
                    tx,
                    delivery_id,
                    *state,
                    failure.as_ref().map(|(r, d)| (*r, d.as_str())),
                    at,
                )?;
                let outcome = Outcome {
                    failure_code: code.clone(),
                    usage: *usage,
                };
                set_outcome(tx, OutcomeTable::Deliveries, delivery_id, &outcome)?;
            }
            Conversation::append_message(
                tx,
                &NewMessage {
                    message_id: format!("{invocation_id}-result"),
                    conversation_id: conversation_id.clone(),
                    author: author.clone(),
                    body: body.clone(),
                    invocation_id: Some(invocation_id.clone()),
                    created_at_ms: at,
                },
            )?;
        }
        Write::AcceptFlight {
            invocation,
            instance,
            resolve_reason,
            local,
            at_unix_ms,
        } => {
            let id = &invocation.invocation_id;
            if *local {
                // The origin stored the invocation already; only the flight
                // is new.
                if let Some(flight) = Flight::get_for_invocation(tx, id)? {
                    return Ok(Err(PersistFailure::Duplicate {
                        state: flight.state,
                        origin: invocation.origin.clone(),
                    }));
                }
                Flight::create(
                    tx,
                    &NewFlight {
                        flight_id: env.new_id(),
                        invocation_id: id.clone(),
                        chosen_instance: Some(instance.clone()),
                        resolve_reason: Some(resolve_reason.clone()),
                        created_at_ms: unix(*at_unix_ms),
                    },
                )?;
            } else {
                let accepted = StoredInvocation::accept(
                    tx,
                    &stored(invocation),
                    Some(instance.clone()),
                    Some(resolve_reason.clone()),
                    env,
                )?;
                if let Accepted::Duplicate(flight) = accepted {
                    let origin = StoredInvocation::get(tx, id)?
                        .and_then(|row| NodeId::parse(&row.origin_node).ok())
                        .unwrap_or_else(|| invocation.origin.clone());
                    return Ok(Err(PersistFailure::Duplicate {
                        state: flight.map(|f| f.state).unwrap_or(FlightState::Queued),
                        origin,
                    }));
                }
            }
        }
        Write::FlightState {
            invocation_id,
            state,
            failure,
            at_unix_ms,
        } => {
            if let Some(flight) = Flight::get_for_invocation(tx, invocation_id)?
                && flight.state != *state
                && flight.state.can_transition_to(*state)
            {
                Flight::transition(
                    tx,
                    &flight.flight_id,
                    *state,
                    failure.as_ref().map(|(r, d)| (*r, d.as_str())),
                    unix(*at_unix_ms),
                )?;
            }
        }
        Write::FlightOutput {
            invocation_id,
            chunk,
            at_unix_ms,
        } => {
            if let Some(flight_id) = Flight::id_for_invocation(tx, invocation_id)? {
                Flight::append_output(tx, &flight_id, chunk, unix(*at_unix_ms))?;
            }
        }
        Write::FinishFlight {
            invocation_id,
            state,
            failure,
            code,
            usage,
            result,
            at_unix_ms,
        } => {
            let at = unix(*at_unix_ms);
            if let Some(flight) = Flight::get_for_invocation(tx, invocation_id)? {
                let mut from = flight.state;
                // A flight that never started is woken and run on paper, so
                // every stored transition stays a legal one.
                if matches!(from, FlightState::Queued | FlightState::Waking)
                    && *state == FlightState::Completed
                {
                    Flight::transition(tx, &flight.flight_id, FlightState::Running, None, at)?;
                    from = FlightState::Running;
                }
                if !from.is_terminal() {
                    Flight::transition(
                        tx,
                        &flight.flight_id,
                        *state,
                        failure.as_ref().map(|(r, d)| (*r, d.as_str())),
                        at,
                    )?;
                    Flight::set_result(tx, &flight.flight_id, result, at)?;
                    Flight::fold_output(tx, &flight.flight_id)?;
                    let outcome = Outcome {
                        failure_code: code.clone(),
                        usage: *usage,
                    };
                    set_outcome(tx, OutcomeTable::Flights, &flight.flight_id, &outcome)?;
                }
            }
        }
    }
    Ok(Ok(()))
}

/// The flight of an invocation as its owner reports it: the result (or
/// the output so far) once terminal.
pub fn flight_update(flight: &Flight) -> FlightUpdate {
    let output = if flight.state.is_terminal() {
        flight
            .result
            .clone()
            .unwrap_or_else(|| flight.output.clone())
    } else {
        FlightOutput::new()
    };
    FlightUpdate {
        invocation_id: flight.invocation_id.clone(),
        state: flight.state,
        output,
        failure_reason: flight.failure_reason,
        detail: flight.failure_detail.clone(),
        failure_code: flight.failure_code.clone(),
        usage: flight.usage,
    }
}

/// Reads what the core asked for about `invocation_id` (`admission` is
/// the caller's: it is not in the store).
pub fn facts(
    connection: &Connection,
    invocation_id: &str,
    needs: Needs,
) -> Result<Facts, StoreError> {
    let mut facts = Facts::default();
    if needs.flight
        && let Some(flight) = Flight::get_for_invocation(connection, invocation_id)?
        && let Some(origin) = StoredInvocation::get(connection, invocation_id)?
            .and_then(|row| NodeId::parse(&row.origin_node).ok())
    {
        facts.flight = Some(StoredFlight {
            origin,
            update: flight_update(&flight),
        });
    }
    if needs.delivery_owners {
        facts.delivery_owners = Delivery::list_for_invocation(connection, invocation_id)?
            .into_iter()
            .filter_map(|delivery| delivery.owner_node)
            .filter_map(|owner| NodeId::parse(&owner).ok())
            .collect();
    }
    Ok(facts)
}

/// Unfinished deliveries and queued flights, for [`scout_mesh::routing::Router::restore`].
pub fn restore(
    connection: &Connection,
) -> Result<(Vec<RestoredDelivery>, Vec<RestoredFlight>), StoreError> {
    let mut deliveries = Vec::new();
    for state in [
        DeliveryState::Accepted,
        DeliveryState::Deferred,
        DeliveryState::PeerAcked,
        DeliveryState::Running,
    ] {
        for delivery in Delivery::list_in_state(connection, state, RESTORE_ROWS_MAX)? {
            let Some(invocation) = StoredInvocation::get(connection, &delivery.invocation_id)?
                .and_then(core_invocation)
            else {
                continue;
            };
            let Some(owner) = delivery
                .owner_node
                .as_deref()
                .and_then(|id| NodeId::parse(id).ok())
            else {
                continue;
            };
            let attempts = Delivery::list_attempts(connection, &delivery.delivery_id)?.len();
            deliveries.push(RestoredDelivery {
                choice: scout_mesh::routing::Choice {
                    instance: delivery.target,
                    reason: delivery
                        .resolve_reason
                        .unwrap_or_else(|| "recovered".into()),
                    owner,
                },
                delivery_id: delivery.delivery_id,
                invocation,
                state: delivery.state,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            });
        }
    }
    let mut flights = Vec::new();
    // After the store's reconcile, a flight still running or waiting is
    // one whose execution outlived the broker: it is carried on.
    for state in [
        FlightState::Running,
        FlightState::Waiting,
        FlightState::Queued,
    ] {
        for flight in Flight::list_in_state(connection, state, RESTORE_ROWS_MAX)? {
            let Some(instance) = flight.chosen_instance else {
                continue;
            };
            let Some(invocation) =
                StoredInvocation::get(connection, &flight.invocation_id)?.and_then(core_invocation)
            else {
                continue;
            };
            let resume = match state {
                FlightState::Queued => None,
                _ => Some(Resumed {
                    output_bytes: Flight::read_output(connection, &flight.flight_id)?
                        .map_or(0, |output| output.total_bytes()),
                }),
            };
            flights.push((
                flight.created_at_ms,
                RestoredFlight {
                    invocation,
                    instance,
                    resume,
                },
            ));
        }
    }
    // Oldest first, so each instance runs its queue in arrival order.
    flights.sort_by_key(|(created, _)| *created);
    Ok((
        deliveries,
        flights.into_iter().map(|(_, flight)| flight).collect(),
    ))
}
