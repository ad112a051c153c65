//! The typed operations on a real store file: duplicate invocations are
//! detected, flight and delivery state machines are enforced by the store
//! (an illegal transition is an error and changes nothing), and the
//! conversation, audit, registry and work order tables round-trip.

use rusqlite::Connection;
use scout::store::audit::{AuditEntry, NewAuditEntry};
use scout::store::conversations::{Conversation, NewMessage};
use scout::store::deliveries::{AttemptOutcome, Delivery, NewDelivery};
use scout::store::flights::{Flight, NewFlight};
use scout::store::invocations::{Accepted, InsertOutcome, Invocation};
use scout::store::registry::{AgentDefinition, AgentInstance, Endpoint, Node, Project};
use scout::store::work_orders::{NewWorkOrder, WorkOrder, WorkOrderState};
use scout::store::{Store, StoreError, StoreOptions};
use scout_mesh::lifecycle::{
    DeliveryPolicy, DeliveryState, EndpointState, FailureReason, FlightState, InvocationAction,
};
use scout_mesh::output::{FLIGHT_OUTPUT_BYTES_MAX, FlightOutput};

const T0: i64 = 1_700_000_000_000;

fn invocation(invocation_id: &str) -> Invocation {
    Invocation {
        invocation_id: invocation_id.to_owned(),
        action: InvocationAction::Execute,
        body: "run the tests".to_owned(),
        conversation_id: Some("conv-1".to_owned()),
        origin_node: "node-a".to_owned(),
        target: "@fabric@devbox".to_owned(),
        deadline_ms: Some(T0 + 60_000),
        delivery_policy: DeliveryPolicy::MustAck,
        created_at_ms: T0,
        from_instance: None,
        chain: Vec::new(),
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path().join("scout.db"), StoreOptions::default()).unwrap();
    (dir, store)
}

fn flight_with_invocation(store: &Store, flight_id: &str) {
    let flight_id = flight_id.to_owned();
    let create = move |transaction: &rusqlite::Transaction<'_>| {
        let invocation_id = format!("inv-{flight_id}");
        Invocation::insert(transaction, &invocation(&invocation_id))?;
        Flight::create(
            transaction,
            &NewFlight {
                flight_id,
                invocation_id,
                chosen_instance: Some("@fabric@devbox#main".to_owned()),
                resolve_reason: Some("exact".to_owned()),
                created_at_ms: T0,
            },
        )
    };
    // Async tests run on a runtime thread, where blocking on the writer is
    // not allowed; a scoped plain thread may.
    std::thread::scope(|scope| {
        scope
            .spawn(|| store.write_blocking(create).unwrap())
            .join()
            .unwrap();
    });
}

#[test]
fn a_duplicate_invocation_is_detected_not_an_error() {
    let (_dir, store) = open();
    let first = store
        .write_blocking(|transaction| Invocation::insert(transaction, &invocation("inv-1")))
        .unwrap();
    assert_eq!(first, InsertOutcome::Inserted);
    let mut retry = invocation("inv-1");
    retry.body = "a retry carries the same id".to_owned();
    let second = store
        .write_blocking(move |transaction| Invocation::insert(transaction, &retry))
        .unwrap();
    assert_eq!(second, InsertOutcome::Duplicate);
    let stored = store.get_invocation("inv-1").unwrap().unwrap();
    assert_eq!(stored, invocation("inv-1"), "the first copy is kept");
    store.close().unwrap();
}

#[tokio::test]
async fn accepting_twice_creates_one_flight() {
    let (_dir, store) = open();
    let accepted = store
        .accept_invocation(invocation("inv-1"), Some("@fabric@devbox".into()), None)
        .await
        .unwrap();
    let Accepted::New(flight) = accepted else {
        panic!("first accept must be new: {accepted:?}");
    };
    assert_eq!(flight.state, FlightState::Queued);
    assert_eq!(flight.invocation_id, "inv-1");
    let again = store
        .accept_invocation(invocation("inv-1"), None, None)
        .await
        .unwrap();
    assert_eq!(again, Accepted::Duplicate(Some(flight.clone())));
    let n_flights: i64 = store
        .read(|connection| {
            Ok(connection.query_row("SELECT count(*) FROM flights", [], |row| row.get(0))?)
        })
        .unwrap();
    assert_eq!(n_flights, 1);
    store.close().unwrap();
}

#[test]
fn a_flight_needs_a_stored_invocation_and_only_one() {
    let (_dir, store) = open();
    let err = store
        .write_blocking(|transaction| {
            Flight::create(
                transaction,
                &NewFlight {
                    flight_id: "f-1".into(),
                    invocation_id: "missing".into(),
                    chosen_instance: None,
                    resolve_reason: None,
                    created_at_ms: T0,
                },
            )
        })
        .unwrap_err();
    assert_eq!(err.code(), "NOT_FOUND");
    flight_with_invocation(&store, "f-1");
    let err = store
        .write_blocking(|transaction| {
            Flight::create(
                transaction,
                &NewFlight {
                    flight_id: "f-2".into(),
                    invocation_id: "inv-f-1".into(),
                    chosen_instance: None,
                    resolve_reason: None,
                    created_at_ms: T0,
                },
            )
        })
        .unwrap_err();
    assert_eq!(err.code(), "ALREADY_EXISTS");
    store.close().unwrap();
}

#[tokio::test]
async fn flight_lifecycle_through_the_store() {
    let (_dir, store) = open();
    flight_with_invocation(&store, "f-1");
    for to in [
        FlightState::Waking,
        FlightState::Running,
        FlightState::Waiting,
        FlightState::Running,
    ] {
        let flight = store.transition_flight("f-1", to, None).await.unwrap();
        assert_eq!(flight.state, to);
    }
    store
        .write(|transaction| {
            Flight::append_output(transaction, "f-1", "hello ", T0)?;
            Flight::append_output(transaction, "f-1", "world", T0)
        })
        .await
        .unwrap();
    let flight = store
        .complete_flight("f-1", FlightOutput::from_text("all green"))
        .await
        .unwrap();
    assert_eq!(flight.state, FlightState::Completed);
    assert_eq!(flight.output, "hello world");
    assert_eq!(flight.result.as_deref(), Some("all green"));
    assert_eq!(
        flight.chosen_instance.as_deref(),
        Some("@fabric@devbox#main")
    );
    assert_eq!(flight.resolve_reason.as_deref(), Some("exact"));
    store.close().unwrap();
}

#[tokio::test]
async fn an_illegal_flight_transition_is_refused_and_changes_nothing() {
    let (_dir, store) = open();
    flight_with_invocation(&store, "f-1");
    store
        .transition_flight("f-1", FlightState::Running, None)
        .await
        .unwrap();
    let before = store.get_flight("f-1").unwrap().unwrap();

    let err = store
        .transition_flight("f-1", FlightState::Queued, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ILLEGAL_TRANSITION");
    assert_eq!(
        err.to_string(),
        "flight f-1: illegal flight transition from `running` to `queued`"
    );
    assert_eq!(store.get_flight("f-1").unwrap().unwrap(), before);

    // Terminal states have no exit, whatever the caller asks.
    store
        .transition_flight(
            "f-1",
            FlightState::Failed,
            Some((FailureReason::Timeout, "deadline passed".to_owned())),
        )
        .await
        .unwrap();
    let failed = store.get_flight("f-1").unwrap().unwrap();
    assert_eq!(failed.failure_reason, Some(FailureReason::Timeout));
    for to in FlightState::ALL {
        let err = store.transition_flight("f-1", *to, None).await.unwrap_err();
        assert!(
            matches!(err, StoreError::IllegalTransition { .. }),
            "{to}: {err}"
        );
    }
    assert_eq!(store.get_flight("f-1").unwrap().unwrap(), failed);

    let err = store
        .transition_flight("no-such-flight", FlightState::Running, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "NOT_FOUND");
    store.close().unwrap();
}

#[tokio::test]
async fn failure_reasons_go_only_with_failed_or_cancelled() {
    let (_dir, store) = open();
    flight_with_invocation(&store, "f-1");
    let err = store
        .transition_flight("f-1", FlightState::Failed, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_REQUEST");
    let err = store
        .transition_flight(
            "f-1",
            FlightState::Running,
            Some((FailureReason::Timeout, "x".into())),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_REQUEST");
    assert_eq!(
        store.get_flight("f-1").unwrap().unwrap().state,
        FlightState::Queued
    );
    let cancelled = store
        .transition_flight("f-1", FlightState::Cancelled, None)
        .await
        .unwrap();
    assert_eq!(cancelled.failure_reason, None);
    store.close().unwrap();
}

#[tokio::test]
async fn the_schema_refuses_what_the_code_would_refuse() {
    // Even a raw write that bypasses the typed operations cannot store a
    // failed flight without a reason or an unknown state word.
    let (_dir, store) = open();
    flight_with_invocation(&store, "f-1");
    let err = store
        .write(|transaction| {
            Ok(transaction.execute(
                "UPDATE flights SET state = 'failed' WHERE flight_id = 'f-1'",
                [],
            )?)
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
    let err = store
        .write(|transaction| {
            Ok(transaction.execute(
                "UPDATE flights SET state = 'sleeping' WHERE flight_id = 'f-1'",
                [],
            )?)
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
    store.close().unwrap();
}

#[test]
fn flight_output_keeps_the_tail() {
    let (_dir, store) = open();
    flight_with_invocation(&store, "f-1");
    let chunk = "x".repeat(FLIGHT_OUTPUT_BYTES_MAX - 3);
    store
        .write_blocking(move |transaction| {
            Flight::append_output(transaction, "f-1", &chunk, T0)?;
            Flight::append_output(transaction, "f-1", "abc", T0)
        })
        .unwrap();
    // Up to the limit, appends are kept whole.
    let output = store.get_flight("f-1").unwrap().unwrap().output;
    assert_eq!(output.len(), FLIGHT_OUTPUT_BYTES_MAX);
    assert_eq!(output.cut_bytes(), 0);
    store
        .write_blocking(|transaction| Flight::append_output(transaction, "f-1", "déf", T0))
        .unwrap();
    // Past it, the output follows the one rule: a marker, then the tail.
    let output = store.get_flight("f-1").unwrap().unwrap().output;
    assert!(output.len() <= FLIGHT_OUTPUT_BYTES_MAX);
    assert!(output.cut_bytes() > 0);
    assert!(output.starts_with(&format!("[… {} bytes cut]\n", output.cut_bytes())));
    assert!(output.ends_with("xxxabcdéf"));
    // Appends after a cut go on from the cut output, in order.
    store
        .write_blocking(|transaction| {
            Flight::append_output(transaction, "f-1", "g", T0)?;
            Flight::append_output(transaction, "f-1", "hi", T0)
        })
        .unwrap();
    let after = store.get_flight("f-1").unwrap().unwrap().output;
    assert_eq!(after.cut_bytes(), output.cut_bytes());
    assert!(after.ends_with("xxxabcdéfghi"));
    store.close().unwrap();
}

/// Chunk rows the store holds for one flight, read straight from the file.
fn chunk_rows(dir: &tempfile::TempDir, flight_id: &str) -> i64 {
    Connection::open(dir.path().join("scout.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM flight_output_chunks WHERE flight_id = ?1",
            [flight_id],
            |row| row.get(0),
        )
        .unwrap()
}

#[test]
fn flight_output_rows_stay_few_and_fold_when_the_flight_finishes() {
    let (dir, store) = open();
    flight_with_invocation(&store, "f-1");
    // 512 KiB in 4 KiB appends: chunk rows grow to OUTPUT_CHUNK_BYTES
    // before a new one starts.
    let piece = "y".repeat(4096);
    for _ in 0..128 {
        let piece = piece.clone();
        store
            .write_blocking(move |transaction| {
                Flight::append_output(transaction, "f-1", &piece, T0)
            })
            .unwrap();
    }
    let rows = chunk_rows(&dir, "f-1");
    let bound = (512 * 1024 / scout::store::flights::OUTPUT_CHUNK_BYTES) as i64;
    assert!((1..=bound).contains(&rows), "{rows} chunk rows");
    assert_eq!(
        store.get_flight("f-1").unwrap().unwrap().output.len(),
        512 * 1024
    );
    store
        .write_blocking(|transaction| Flight::fold_output(transaction, "f-1"))
        .unwrap();
    assert_eq!(chunk_rows(&dir, "f-1"), 1);
    let output = store.get_flight("f-1").unwrap().unwrap().output;
    assert_eq!(output.as_str(), piece.repeat(128));
    store.close().unwrap();
}

#[test]
fn output_stored_before_the_chunks_is_kept_and_cut_by_the_same_rule() {
    let (dir, store) = open();
    flight_with_invocation(&store, "f-1");
    store.close().unwrap();
    // A flight's output as the schema before chunks kept it: all in the
    // flight's row, counted by the migration.
    let old = "o".repeat(FLIGHT_OUTPUT_BYTES_MAX - 10);
    let connection = Connection::open(dir.path().join("scout.db")).unwrap();
    connection
        .execute(
            "UPDATE flights SET output = ?1, output_bytes = length(CAST(?1 AS BLOB))
             WHERE flight_id = 'f-1'",
            [&old],
        )
        .unwrap();
    drop(connection);
    let (store, _) = Store::open(dir.path().join("scout.db"), StoreOptions::default()).unwrap();
    store
        .write_blocking(|transaction| Flight::append_output(transaction, "f-1", "new", T0))
        .unwrap();
    let output = store.get_flight("f-1").unwrap().unwrap().output;
    assert_eq!(output.len(), FLIGHT_OUTPUT_BYTES_MAX - 7);
    assert!(output.ends_with("ooonew"));
    // Past the limit: cut by the one rule, and folded out of the row.
    let more = "m".repeat(64);
    store
        .write_blocking(move |transaction| Flight::append_output(transaction, "f-1", &more, T0))
        .unwrap();
    let output = store.get_flight("f-1").unwrap().unwrap().output;
    assert!(output.cut_bytes() > 0);
    assert!(output.ends_with(&format!("ooonew{}", "m".repeat(64))));
    assert_eq!(chunk_rows(&dir, "f-1"), 1);
    store.close().unwrap();
}

#[test]
fn flight_output_appends_in_order() {
    let (_dir, store) = open();
    flight_with_invocation(&store, "f-1");
    let pieces: Vec<String> = (0..200).map(|idx| format!("<{idx}>")).collect();
    let expected = pieces.concat();
    store
        .write_blocking(move |transaction| {
            for piece in &pieces {
                Flight::append_output(transaction, "f-1", piece, T0)?;
            }
            Ok(())
        })
        .unwrap();
    let output = store.get_flight("f-1").unwrap().unwrap().output;
    assert_eq!(output.as_str(), expected);
    store.close().unwrap();
}

#[tokio::test]
async fn non_terminal_flights_are_listed() {
    let (_dir, store) = open();
    for flight_id in ["f-1", "f-2", "f-3"] {
        flight_with_invocation(&store, flight_id);
    }
    store
        .transition_flight("f-2", FlightState::Cancelled, None)
        .await
        .unwrap();
    store
        .transition_flight("f-3", FlightState::Running, None)
        .await
        .unwrap();
    let ids: Vec<String> = store
        .read(|connection| Flight::list_non_terminal(connection, 100))
        .unwrap()
        .into_iter()
        .map(|flight| flight.flight_id)
        .collect();
    assert_eq!(ids, ["f-1", "f-3"]);
    let running = store
        .read(|connection| Flight::list_in_state(connection, FlightState::Running, 100))
        .unwrap();
    assert_eq!(running.len(), 1);
    store.close().unwrap();
}

#[tokio::test]
async fn delivery_lifecycle_and_attempts() {
    let (_dir, store) = open();
    let delivery = store
        .submit_invocation(invocation("inv-1"), None)
        .await
        .unwrap();
    assert_eq!(delivery.state, DeliveryState::Accepted);
    assert_eq!(delivery.target, "@fabric@devbox");
    let delivery_id = delivery.delivery_id.clone();

    let err = store
        .submit_invocation(invocation("inv-1"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ALREADY_EXISTS");

    let id = delivery_id.clone();
    let attempts = store
        .write(move |transaction| {
            let first = Delivery::start_attempt(transaction, &id, T0)?;
            Delivery::finish_attempt(
                transaction,
                &id,
                first,
                AttemptOutcome::Failed,
                Some((FailureReason::PeerUnreachable, "connection refused")),
                T0 + 10,
            )?;
            Delivery::transition(transaction, &id, DeliveryState::Deferred, None, T0 + 10)?;
            Delivery::reroute(
                transaction,
                &id,
                "@fabric@b",
                "node-b",
                "rerouted (local)",
                T0 + 20,
            )?;
            let second = Delivery::start_attempt(transaction, &id, T0 + 20)?;
            Delivery::finish_attempt(
                transaction,
                &id,
                second,
                AttemptOutcome::Succeeded,
                None,
                T0 + 30,
            )?;
            Delivery::list_attempts(transaction, &id)
        })
        .await
        .unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].attempt, 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Failed));
    assert_eq!(
        attempts[0].failure_reason,
        Some(FailureReason::PeerUnreachable)
    );
    assert_eq!(attempts[1].attempt, 2);
    assert_eq!(attempts[1].outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(attempts[1].ended_at_ms, Some(T0 + 30));

    for to in [DeliveryState::PeerAcked, DeliveryState::Running] {
        store
            .transition_delivery(&delivery_id, to, None)
            .await
            .unwrap();
    }
    let before = store.get_delivery(&delivery_id).unwrap().unwrap();
    assert_eq!(before.owner_node.as_deref(), Some("node-b"));
    let err = store
        .transition_delivery(&delivery_id, DeliveryState::Deferred, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ILLEGAL_TRANSITION");
    assert_eq!(store.get_delivery(&delivery_id).unwrap().unwrap(), before);

    store
        .transition_delivery(&delivery_id, DeliveryState::Completed, None)
        .await
        .unwrap();
    let id = delivery_id.clone();
    let err = store
        .write(move |transaction| Delivery::start_attempt(transaction, &id, T0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_REQUEST");
    let completed = store
        .read(|connection| Delivery::list_in_state(connection, DeliveryState::Completed, 10))
        .unwrap();
    assert_eq!(completed.len(), 1);
    store.close().unwrap();
}

#[test]
fn a_delivery_needs_a_stored_invocation() {
    let (_dir, store) = open();
    let delivery_id = store.env().new_id();
    let err = store
        .write_blocking(move |transaction| {
            Delivery::create(
                transaction,
                &NewDelivery {
                    delivery_id,
                    invocation_id: "missing".into(),
                    target: "@fabric".into(),
                    owner_node: None,
                    resolve_reason: None,
                    created_at_ms: T0,
                },
            )
        })
        .unwrap_err();
    assert_eq!(err.code(), "NOT_FOUND");
    store.close().unwrap();
}

#[tokio::test]
async fn messages_create_their_conversation_and_are_ordered() {
    let (_dir, store) = open();
    let mut ids = Vec::new();
    for (idx, author) in ["user", "@fabric", "user"].into_iter().enumerate() {
        let message_id = store.env().new_id();
        let message = store
            .append_message(NewMessage {
                message_id: message_id.clone(),
                conversation_id: "conv-1".into(),
                author: author.into(),
                body: format!("message {idx}"),
                invocation_id: None,
                created_at_ms: T0 + idx as i64,
            })
            .await
            .unwrap();
        assert_eq!(message.seq, idx as i64 + 1);
        ids.push(message_id);
    }
    // A retried append returns the stored message.
    let retry = store
        .append_message(NewMessage {
            message_id: ids[1].clone(),
            conversation_id: "conv-1".into(),
            author: "@fabric".into(),
            body: "different text".into(),
            invocation_id: None,
            created_at_ms: T0 + 99,
        })
        .await
        .unwrap();
    assert_eq!(retry.seq, 2);
    assert_eq!(retry.body, "message 1");

    let (conversation, messages, after_first) = store
        .read(|connection| {
            Ok((
                Conversation::get(connection, "conv-1")?,
                Conversation::list_messages(connection, "conv-1", None, 100)?,
                Conversation::list_messages(connection, "conv-1", Some(1), 100)?,
            ))
        })
        .unwrap();
    let conversation = conversation.unwrap();
    assert_eq!(conversation.created_at_ms, T0);
    assert_eq!(conversation.updated_at_ms, T0 + 2);
    assert_eq!(messages.len(), 3);
    assert_eq!(after_first.len(), 2);
    assert_eq!(after_first[0].author, "@fabric");

    let titled = store
        .write(|transaction| Conversation::ensure(transaction, "conv-1", Some("review"), T0))
        .await
        .unwrap();
    assert_eq!(titled.title.as_deref(), Some("review"));
    let listed = store
        .read(|connection| Conversation::list_recent(connection, 10))
        .unwrap();
    assert_eq!(listed.len(), 1);
    store.close().unwrap();
}

#[tokio::test]
async fn audit_entries_append_in_order() {
    let (_dir, store) = open();
    for action in ["admit", "revoke"] {
        store
            .append_audit(NewAuditEntry {
                ts_ms: T0,
                actor: "user".into(),
                action: action.into(),
                subject: "node-b".into(),
                detail: serde_json::json!({ "why": action }),
            })
            .await
            .unwrap();
    }
    let entries = store
        .read(|connection| AuditEntry::list_for_subject(connection, "node-b", 10))
        .unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries[0].seq < entries[1].seq);
    assert_eq!(entries[1].detail["why"], "revoke");
    let after = store
        .read(|connection| AuditEntry::list(connection, Some(entries[0].seq), 10))
        .unwrap();
    assert_eq!(after, entries[1..]);

    let err = store
        .append_audit(NewAuditEntry {
            ts_ms: T0,
            actor: "user".into(),
            action: "huge".into(),
            subject: "x".into(),
            detail: serde_json::json!({ "blob": "y".repeat(100_000) }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_REQUEST");
    store.close().unwrap();
}

#[test]
fn registry_rows_upsert_and_list() {
    let (_dir, store) = open();
    let instance_ids = store
        .write_blocking(|transaction| {
            Node::upsert(
                transaction,
                &Node {
                    node_id: "node-a".into(),
                    name: "laptop".into(),
                    addresses: vec!["10.0.0.2:7400".into()],
                    last_seen_at_ms: None,
                    updated_at_ms: T0,
                },
            )?;
            Node::upsert(
                transaction,
                &Node {
                    node_id: "node-a".into(),
                    name: "laptop".into(),
                    addresses: vec!["10.0.0.2:7400".into(), "100.64.0.2:7400".into()],
                    last_seen_at_ms: Some(T0 + 5),
                    updated_at_ms: T0 + 5,
                },
            )?;
            Project::upsert(
                transaction,
                &Project {
                    project_id: "proj-1".into(),
                    name: "scout".into(),
                    root_path: Some("/src/scout".into()),
                    node_id: Some("node-a".into()),
                    updated_at_ms: T0,
                },
            )?;
            AgentDefinition::upsert(
                transaction,
                &AgentDefinition {
                    name: "fabric".into(),
                    project_id: Some("proj-1".into()),
                    harness: Some("claude".into()),
                    description: None,
                    updated_at_ms: T0,
                },
            )?;
            let mut instance = AgentInstance {
                instance_id: "inst-1".into(),
                definition_name: "fabric".into(),
                node_id: "node-a".into(),
                workspace: Some("main".into()),
                project_id: Some("proj-1".into()),
                updated_at_ms: T0,
            };
            let first = AgentInstance::upsert(transaction, &instance)?;
            // The same natural key under another id keeps the stored id.
            instance.instance_id = "inst-2".into();
            instance.updated_at_ms = T0 + 1;
            let second = AgentInstance::upsert(transaction, &instance)?;
            let unnamed = AgentInstance::upsert(
                transaction,
                &AgentInstance {
                    instance_id: "inst-3".into(),
                    definition_name: "fabric".into(),
                    node_id: "node-a".into(),
                    workspace: None,
                    project_id: None,
                    updated_at_ms: T0,
                },
            )?;
            Endpoint::upsert(
                transaction,
                &Endpoint {
                    endpoint_id: "ep-1".into(),
                    instance_id: first.clone(),
                    harness: "claude".into(),
                    transport: "pty".into(),
                    state: EndpointState::Registered,
                    updated_at_ms: T0,
                },
            )?;
            Endpoint::set_state(transaction, "ep-1", EndpointState::Idle, T0 + 2)?;
            Ok((first, second, unnamed))
        })
        .unwrap();
    assert_eq!(instance_ids.0, "inst-1");
    assert_eq!(instance_ids.1, "inst-1");
    assert_eq!(instance_ids.2, "inst-3");

    let (nodes, projects, definitions, instances, endpoints) = store
        .read(|connection| {
            Ok((
                Node::list(connection, 10)?,
                Project::list(connection, 10)?,
                AgentDefinition::list(connection, 10)?,
                AgentInstance::list(connection, Some("node-a"), 10)?,
                Endpoint::list(connection, Some("inst-1"), 10)?,
            ))
        })
        .unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].addresses.len(), 2);
    assert_eq!(nodes[0].last_seen_at_ms, Some(T0 + 5));
    assert_eq!(projects[0].root_path.as_deref(), Some("/src/scout"));
    assert_eq!(definitions[0].harness.as_deref(), Some("claude"));
    assert_eq!(instances.len(), 2);
    let with_workspace = instances
        .iter()
        .find(|instance| instance.instance_id == "inst-1")
        .unwrap();
    assert_eq!(with_workspace.workspace.as_deref(), Some("main"));
    assert_eq!(with_workspace.updated_at_ms, T0 + 1);
    let without = instances
        .iter()
        .find(|instance| instance.instance_id == "inst-3")
        .unwrap();
    assert_eq!(without.workspace, None);
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].state, EndpointState::Idle);

    // An instance on an unknown node breaks a foreign key.
    let err = store
        .write_blocking(|transaction| {
            AgentInstance::upsert(
                transaction,
                &AgentInstance {
                    instance_id: "inst-9".into(),
                    definition_name: "fabric".into(),
                    node_id: "node-unknown".into(),
                    workspace: None,
                    project_id: None,
                    updated_at_ms: T0,
                },
            )
        })
        .unwrap_err();
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
    store.close().unwrap();
}

#[test]
fn work_orders_queue_run_and_refuse_going_back() {
    let (_dir, store) = open();
    let order = store
        .write_blocking(|transaction| {
            WorkOrder::create(
                transaction,
                &NewWorkOrder {
                    work_order_id: "wo-1".into(),
                    target: "@fabric".into(),
                    body: "nightly review".into(),
                    owner_node: "node-a".into(),
                    schedule: Some("0 3 * * *".into()),
                    created_at_ms: T0,
                },
            )
        })
        .unwrap();
    assert_eq!(order.state, WorkOrderState::Queued);
    let running = store
        .write_blocking(|transaction| {
            WorkOrder::transition(
                transaction,
                "wo-1",
                WorkOrderState::Running,
                Some("inv-1"),
                T0 + 1,
            )
        })
        .unwrap();
    assert_eq!(running.invocation_id.as_deref(), Some("inv-1"));
    let err = store
        .write_blocking(|transaction| {
            WorkOrder::transition(transaction, "wo-1", WorkOrderState::Queued, None, T0 + 2)
        })
        .unwrap_err();
    assert_eq!(err.code(), "ILLEGAL_TRANSITION");
    let queued = store
        .read(|connection| WorkOrder::list(connection, Some(WorkOrderState::Queued), 10))
        .unwrap();
    assert!(queued.is_empty());
    let all = store
        .read(|connection| WorkOrder::list(connection, None, 10))
        .unwrap();
    assert_eq!(all, vec![running]);
    store.close().unwrap();
}

#[test]
fn a_malformed_row_is_a_typed_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scout.db");
    let (store, _) = Store::open(&path, StoreOptions::default()).unwrap();
    store
        .write_blocking(|transaction| {
            AuditEntry::append(
                transaction,
                &NewAuditEntry {
                    ts_ms: T0,
                    actor: "user".into(),
                    action: "note".into(),
                    subject: "s".into(),
                    detail: serde_json::json!({}),
                },
            )
        })
        .unwrap();
    store.close().unwrap();
    {
        // Another program edits the file behind the store's back: valid
        // JSON that is not the list of strings the nodes table promises.
        let connection = Connection::open(&path).unwrap();
        connection
            .execute(
                "INSERT INTO nodes (node_id, name, addresses_json, updated_at_ms)
                 VALUES ('n', 'laptop', '{\"a\": 1}', 0)",
                [],
            )
            .unwrap();
    }
    let (store, _) = Store::open(&path, StoreOptions::default()).unwrap();
    let err = store
        .read(|connection| Node::list(connection, 10))
        .unwrap_err();
    assert_eq!(err.code(), "STORE_MALFORMED_ROW", "{err}");
    store.close().unwrap();
}
