//! Store fixtures shared by the store tests.

use rusqlite::Transaction;
use scout::store::StoreError;
use scout::store::invocations::{InsertOutcome, Invocation};
use scout_mesh::lifecycle::{DeliveryPolicy, InvocationAction};

/// A small durable invocation with this id.
pub fn invocation(invocation_id: &str) -> Invocation {
    Invocation {
        invocation_id: invocation_id.to_owned(),
        action: InvocationAction::Consult,
        body: "ping".to_owned(),
        conversation_id: None,
        origin_node: "node-a".to_owned(),
        target: "@fabric".to_owned(),
        deadline_ms: None,
        delivery_policy: DeliveryPolicy::Durable,
        created_at_ms: 1_700_000_000_000,
        from_instance: None,
        chain: Vec::new(),
    }
}

/// A write that inserts `invocation(invocation_id)`; a duplicate id is
/// `AlreadyExists`.
pub fn insert(
    invocation_id: &str,
) -> impl FnOnce(&Transaction<'_>) -> Result<(), StoreError> + Send + 'static {
    let invocation = invocation(invocation_id);
    move |transaction| match Invocation::insert(transaction, &invocation)? {
        InsertOutcome::Inserted => Ok(()),
        InsertOutcome::Duplicate => Err(StoreError::AlreadyExists {
            kind: "invocation",
            id: invocation.invocation_id.clone(),
        }),
    }
}

/// The `(actor, action)` audit entries about `subject`, read from the
/// broker's store in `home`.
pub fn audit_actions(home: &std::path::Path, subject: &str) -> Vec<(String, String)> {
    let path = home.join("scout.db");
    let connection = rusqlite::Connection::open(&path)
        .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
    let mut statement = connection
        .prepare("SELECT actor, action FROM audit_log WHERE subject = ?1 ORDER BY seq")
        .unwrap();
    statement
        .query_map([subject], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
