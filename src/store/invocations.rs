//! Invocations: requests for work, stored under `UNIQUE(invocation_id)`.
//!
//! The owner inserts every invocation it receives; a retry of the same id
//! comes back as [`InsertOutcome::Duplicate`] rather than an error, which is
//! how the owner knows it already has (and will not execute again) that
//! piece of work.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use scout_mesh::lifecycle::{DeliveryPolicy, InvocationAction};

use super::deliveries::{Delivery, NewDelivery};
use super::flights::{Flight, NewFlight};
use super::{Store, StoreError, list_limit, parse_word};
use crate::env::Env;

/// One invocation, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The id chosen by the origin; retries reuse it.
    pub invocation_id: String,
    /// What the agent is asked to do.
    pub action: InvocationAction,
    /// The request text.
    pub body: String,
    /// The conversation the invocation belongs to, if any.
    pub conversation_id: Option<String>,
    /// The node id of the broker that created it.
    pub origin_node: String,
    /// The agent name as the user wrote it (`@fabric`, `@fabric@devbox`).
    pub target: String,
    /// When waiting for it ends with a `timeout` failure, unix ms.
    pub deadline_ms: Option<i64>,
    /// How hard the mesh tries to deliver it.
    pub delivery_policy: DeliveryPolicy,
    /// When the origin created it, unix ms.
    pub created_at_ms: i64,
    /// The instance that sent it, when an agent did.
    pub from_instance: Option<String>,
    /// The causal chain that led to it, oldest first.
    pub chain: Vec<String>,
}

/// Whether an insert added a row or found the id already present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The row is new.
    Inserted,
    /// A row with this id already existed; nothing was written.
    Duplicate,
}

const COLUMNS: &str = "invocation_id, action, body, conversation_id, origin_node, target, \
                       deadline_ms, delivery_policy, created_at_ms, from_instance, chain";

impl Invocation {
    /// The owner's "accept" inside a transaction: inserts `invocation` under
    /// its unique id and, if it is new, creates its `queued` flight; a
    /// known id answers the flight it already has. `env` gives the new
    /// flight its id and creation time.
    pub fn accept(
        transaction: &Transaction<'_>,
        invocation: &Invocation,
        chosen_instance: Option<String>,
        resolve_reason: Option<String>,
        env: &Env,
    ) -> Result<Accepted, StoreError> {
        match Invocation::insert(transaction, invocation)? {
            InsertOutcome::Duplicate => Ok(Accepted::Duplicate(Flight::get_for_invocation(
                transaction,
                &invocation.invocation_id,
            )?)),
            InsertOutcome::Inserted => Flight::create(
                transaction,
                &NewFlight {
                    flight_id: env.new_id(),
                    invocation_id: invocation.invocation_id.clone(),
                    chosen_instance,
                    resolve_reason,
                    created_at_ms: env.now_unix_ms_i64(),
                },
            )
            .map(Accepted::New),
        }
    }

    /// Inserts `invocation` unless its id is already stored.
    pub fn insert(
        transaction: &Transaction<'_>,
        invocation: &Invocation,
    ) -> Result<InsertOutcome, StoreError> {
        let n_inserted = transaction
            .prepare_cached(&format!(
                "INSERT INTO invocations ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (invocation_id) DO NOTHING"
            ))?
            .execute(params![
                invocation.invocation_id,
                invocation.action.as_str(),
                invocation.body,
                invocation.conversation_id,
                invocation.origin_node,
                invocation.target,
                invocation.deadline_ms,
                invocation.delivery_policy.as_str(),
                invocation.created_at_ms,
                invocation.from_instance,
                chain_text(&invocation.chain),
            ])?;
        Ok(if n_inserted == 1 {
            InsertOutcome::Inserted
        } else {
            InsertOutcome::Duplicate
        })
    }

    /// The invocation with this id, if stored.
    pub fn get(
        connection: &Connection,
        invocation_id: &str,
    ) -> Result<Option<Invocation>, StoreError> {
        connection
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM invocations WHERE invocation_id = ?1"
            ))?
            .query_row([invocation_id], |row| Ok(Invocation::from_row(row)))
            .optional()?
            .transpose()
    }

    /// Whether an invocation with this id is stored.
    pub fn exists(connection: &Connection, invocation_id: &str) -> Result<bool, StoreError> {
        Ok(connection
            .prepare_cached("SELECT 1 FROM invocations WHERE invocation_id = ?1")?
            .exists([invocation_id])?)
    }

    /// The newest invocations first, at most `limit` (capped at
    /// [`LIST_ROWS_MAX`](super::LIST_ROWS_MAX)).
    pub fn list_recent(
        connection: &Connection,
        limit: usize,
    ) -> Result<Vec<Invocation>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invocations ORDER BY created_at_ms DESC, invocation_id DESC
             LIMIT ?1"
        ))?;
        let rows = statement.query_map([list_limit(limit)], |row| Ok(Invocation::from_row(row)))?;
        rows.map(|row| row?).collect()
    }

    /// The invocations of one conversation, oldest first.
    pub fn list_for_conversation(
        connection: &Connection,
        conversation_id: &str,
        limit: usize,
    ) -> Result<Vec<Invocation>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invocations WHERE conversation_id = ?1
             ORDER BY created_at_ms, invocation_id LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![conversation_id, list_limit(limit)], |row| {
            Ok(Invocation::from_row(row))
        })?;
        rows.map(|row| row?).collect()
    }

    fn from_row(row: &Row<'_>) -> Result<Invocation, StoreError> {
        let invocation_id: String = row.get(0)?;
        let action: String = row.get(1)?;
        let policy: String = row.get(7)?;
        Ok(Invocation {
            action: parse_word("invocations", &invocation_id, &action)?,
            body: row.get(2)?,
            conversation_id: row.get(3)?,
            origin_node: row.get(4)?,
            target: row.get(5)?,
            deadline_ms: row.get(6)?,
            delivery_policy: parse_word("invocations", &invocation_id, &policy)?,
            created_at_ms: row.get(8)?,
            from_instance: row.get(9)?,
            chain: row
                .get::<_, Option<String>>(10)?
                .map(|text| serde_json::from_str(&text).unwrap_or_default())
                .unwrap_or_default(),
            invocation_id,
        })
    }
}

/// The chain column: a JSON array, NULL when empty.
fn chain_text(chain: &[String]) -> Option<String> {
    (!chain.is_empty()).then(|| serde_json::to_string(chain).unwrap_or_default())
}

/// What [`Store::accept_invocation`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// The invocation is new; its `queued` flight was created in the same
    /// commit.
    New(Flight),
    /// The invocation was already stored (a retry); nothing was written. The
    /// existing flight, if this broker owns one for it.
    Duplicate(Option<Flight>),
}

impl Store {
    /// Inserts an invocation (origin or owner) unless its id is stored.
    pub async fn insert_invocation(
        &self,
        invocation: Invocation,
    ) -> Result<InsertOutcome, StoreError> {
        self.write(move |transaction| Invocation::insert(transaction, &invocation))
            .await
    }

    /// The owner's "accept": inserts the invocation under its unique id and,
    /// if it is new, creates its `queued` flight in the same commit. When
    /// this returns, the acceptance is durable and may be acknowledged.
    pub async fn accept_invocation(
        &self,
        invocation: Invocation,
        chosen_instance: Option<String>,
        resolve_reason: Option<String>,
    ) -> Result<Accepted, StoreError> {
        let env = self.env().clone();
        self.write(move |transaction| {
            Invocation::accept(
                transaction,
                &invocation,
                chosen_instance,
                resolve_reason,
                &env,
            )
        })
        .await
    }

    /// The origin's "accept": stores a new invocation and its `accepted`
    /// delivery in one commit. A duplicate invocation id is
    /// [`StoreError::AlreadyExists`]: origins mint fresh ids.
    pub async fn submit_invocation(
        &self,
        invocation: Invocation,
        owner_node: Option<String>,
    ) -> Result<Delivery, StoreError> {
        let env = self.env().clone();
        self.write(move |transaction| {
            if Invocation::insert(transaction, &invocation)? == InsertOutcome::Duplicate {
                return Err(StoreError::AlreadyExists {
                    kind: "invocation",
                    id: invocation.invocation_id.clone(),
                });
            }
            Delivery::create(
                transaction,
                &NewDelivery {
                    delivery_id: env.new_id(),
                    invocation_id: invocation.invocation_id.clone(),
                    target: invocation.target.clone(),
                    owner_node,
                    resolve_reason: None,
                    created_at_ms: env.now_unix_ms_i64(),
                },
            )
        })
        .await
    }

    /// The invocation with this id, if stored.
    pub fn get_invocation(&self, invocation_id: &str) -> Result<Option<Invocation>, StoreError> {
        self.read(|connection| Invocation::get(connection, invocation_id))
    }
}
