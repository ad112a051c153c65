//! Reconcile on open: flights a stop left unfinished are requeued (waking)
//! or failed as interrupted (running, waiting), local deliveries follow
//! their failed flights, every change is audited, and a second open finds
//! nothing left to do.

use std::path::Path;

use rusqlite::Transaction;
use scout::store::audit::AuditEntry;
use scout::store::deliveries::{Delivery, NewDelivery};
use scout::store::flights::{Flight, NewFlight};
use scout::store::invocations::Invocation;
use scout::store::reconcile::{INTERRUPTED_DETAIL, ReconciledDelivery, ReconciledFlight};
use scout::store::{Store, StoreError, StoreOptions};
use scout_mesh::lifecycle::{
    DeliveryPolicy, DeliveryState, FailureReason, FlightState, InvocationAction,
};

const T0: i64 = 1_700_000_000_000;

fn invocation(invocation_id: &str) -> Invocation {
    Invocation {
        invocation_id: invocation_id.to_owned(),
        action: InvocationAction::Execute,
        body: "work".to_owned(),
        conversation_id: None,
        origin_node: "node-a".to_owned(),
        target: "@fabric".to_owned(),
        deadline_ms: None,
        delivery_policy: DeliveryPolicy::Durable,
        created_at_ms: T0,
        from_instance: None,
        chain: Vec::new(),
    }
}

/// Creates `flight_id` (with invocation `inv-<flight_id>`) and walks it to
/// `state` through legal transitions.
fn flight_in_state(
    transaction: &Transaction<'_>,
    flight_id: &str,
    state: FlightState,
) -> Result<(), StoreError> {
    let invocation_id = format!("inv-{flight_id}");
    Invocation::insert(transaction, &invocation(&invocation_id))?;
    Flight::create(
        transaction,
        &NewFlight {
            flight_id: flight_id.to_owned(),
            invocation_id,
            chosen_instance: None,
            resolve_reason: None,
            created_at_ms: T0,
        },
    )?;
    let path: &[FlightState] = match state {
        FlightState::Queued => &[],
        FlightState::Waking => &[FlightState::Waking],
        FlightState::Running => &[FlightState::Running],
        FlightState::Waiting => &[FlightState::Running, FlightState::Waiting],
        FlightState::Completed => &[FlightState::Running, FlightState::Completed],
        FlightState::Failed => &[FlightState::Failed],
        FlightState::Cancelled => &[FlightState::Cancelled],
    };
    for to in path {
        let failure = (*to == FlightState::Failed).then_some((FailureReason::Timeout, "late"));
        Flight::transition(transaction, flight_id, *to, failure, T0)?;
    }
    Ok(())
}

fn delivery_in_state(
    transaction: &Transaction<'_>,
    delivery_id: &str,
    invocation_id: &str,
    path: &[DeliveryState],
) -> Result<(), StoreError> {
    Delivery::create(
        transaction,
        &NewDelivery {
            delivery_id: delivery_id.to_owned(),
            invocation_id: invocation_id.to_owned(),
            target: "@fabric".to_owned(),
            owner_node: Some("node-a".to_owned()),
            resolve_reason: None,
            created_at_ms: T0,
        },
    )?;
    for to in path {
        Delivery::transition(transaction, delivery_id, *to, None, T0)?;
    }
    Ok(())
}

fn seed(path: &Path) {
    let (store, report) = Store::open(path, StoreOptions::default()).unwrap();
    assert!(report.is_empty());
    store
        .write_blocking(|transaction| {
            for (flight_id, state) in [
                ("f-1-queued", FlightState::Queued),
                ("f-2-waking", FlightState::Waking),
                ("f-3-running", FlightState::Running),
                ("f-4-waiting", FlightState::Waiting),
                ("f-5-completed", FlightState::Completed),
                ("f-6-failed", FlightState::Failed),
                ("f-7-cancelled", FlightState::Cancelled),
            ] {
                flight_in_state(transaction, flight_id, state)?;
            }
            // Local deliveries (this broker is origin and owner).
            delivery_in_state(
                transaction,
                "d-running",
                "inv-f-3-running",
                &[DeliveryState::PeerAcked, DeliveryState::Running],
            )?;
            delivery_in_state(
                transaction,
                "d-waking",
                "inv-f-2-waking",
                &[DeliveryState::PeerAcked],
            )?;
            // A delivery whose owner is another broker: no local flight, so
            // nothing here knows how it is doing; it is left alone.
            Invocation::insert(transaction, &invocation("inv-remote"))?;
            delivery_in_state(
                transaction,
                "d-remote",
                "inv-remote",
                &[DeliveryState::PeerAcked, DeliveryState::Running],
            )?;
            Ok(())
        })
        .unwrap();
    store.close().unwrap();
}

#[test]
fn unfinished_flights_are_reconciled_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scout.db");
    seed(&path);

    let (store, report) = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(
        report.flights,
        vec![
            ReconciledFlight {
                flight_id: "f-2-waking".into(),
                invocation_id: "inv-f-2-waking".into(),
                from: FlightState::Waking,
                to: FlightState::Queued,
            },
            ReconciledFlight {
                flight_id: "f-3-running".into(),
                invocation_id: "inv-f-3-running".into(),
                from: FlightState::Running,
                to: FlightState::Failed,
            },
            ReconciledFlight {
                flight_id: "f-4-waiting".into(),
                invocation_id: "inv-f-4-waiting".into(),
                from: FlightState::Waiting,
                to: FlightState::Failed,
            },
        ]
    );
    assert_eq!(
        report.deliveries,
        vec![ReconciledDelivery {
            delivery_id: "d-running".into(),
            invocation_id: "inv-f-3-running".into(),
            from: DeliveryState::Running,
            to: DeliveryState::Failed,
        }]
    );
    assert_eq!(report.flights_left_queued, 1);
    assert_eq!(report.total(), 3);

    let flight = |flight_id: &str| store.get_flight(flight_id).unwrap().unwrap();
    for flight_id in ["f-3-running", "f-4-waiting"] {
        let failed = flight(flight_id);
        assert_eq!(failed.state, FlightState::Failed);
        assert_eq!(failed.failure_reason, Some(FailureReason::HarnessError));
        assert_eq!(failed.failure_detail.as_deref(), Some(INTERRUPTED_DETAIL));
    }
    assert_eq!(flight("f-1-queued").state, FlightState::Queued);
    assert_eq!(flight("f-2-waking").state, FlightState::Queued);
    assert_eq!(flight("f-5-completed").state, FlightState::Completed);
    let untouched = flight("f-6-failed");
    assert_eq!(untouched.failure_reason, Some(FailureReason::Timeout));
    assert_eq!(flight("f-7-cancelled").state, FlightState::Cancelled);

    let delivery = |delivery_id: &str| store.get_delivery(delivery_id).unwrap().unwrap();
    let followed = delivery("d-running");
    assert_eq!(followed.state, DeliveryState::Failed);
    assert_eq!(followed.failure_reason, Some(FailureReason::HarnessError));
    assert_eq!(followed.failure_detail.as_deref(), Some(INTERRUPTED_DETAIL));
    assert_eq!(delivery("d-waking").state, DeliveryState::PeerAcked);
    assert_eq!(delivery("d-remote").state, DeliveryState::Running);

    let audit = store
        .read(|connection| AuditEntry::list(connection, None, 100))
        .unwrap();
    let audited: Vec<(&str, &str)> = audit
        .iter()
        .map(|entry| (entry.action.as_str(), entry.subject.as_str()))
        .collect();
    assert_eq!(
        audited,
        [
            ("reconcile_flight", "f-2-waking"),
            ("reconcile_flight", "f-3-running"),
            ("reconcile_flight", "f-4-waiting"),
            ("reconcile_delivery", "d-running"),
        ]
    );
    assert_eq!(audit[1].actor, "store");
    assert_eq!(audit[1].detail["from"], "running");
    assert_eq!(audit[1].detail["to"], "failed");
    assert_eq!(audit[1].detail["failure_reason"], "harness_error");
    store.close().unwrap();

    // Nothing is left to reconcile, and nothing is reconciled twice.
    let (store, report) = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(report.is_empty(), "{report:?}");
    assert_eq!(report.flights_left_queued, 2);
    let n_audit = store
        .read(|connection| AuditEntry::list(connection, None, 100))
        .unwrap()
        .len();
    assert_eq!(n_audit, 4);
    store.close().unwrap();
}
