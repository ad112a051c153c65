//! Conversations and their messages.
//!
//! Appending a message creates its conversation if it does not exist yet
//! (the first mention starts one) and gives the message the next sequence
//! number of that conversation. Appends are idempotent by message id, so a
//! retried append returns the stored message instead of a second copy.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{Store, StoreError, list_limit};

/// One conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The conversation's id.
    pub conversation_id: String,
    /// A short title, if one was given.
    pub title: Option<String>,
    /// When it was created, unix ms.
    pub created_at_ms: i64,
    /// When its last message was appended, unix ms.
    pub updated_at_ms: i64,
}

/// A message to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The message's id.
    pub message_id: String,
    /// The conversation it belongs to; created if missing.
    pub conversation_id: String,
    /// Who wrote it: a user, or an agent name.
    pub author: String,
    /// The text.
    pub body: String,
    /// The invocation it asked for or answered, if any.
    pub invocation_id: Option<String>,
    /// When it was written, unix ms.
    pub created_at_ms: i64,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message's id.
    pub message_id: String,
    /// The conversation it belongs to.
    pub conversation_id: String,
    /// Its position in the conversation, from 1.
    pub seq: i64,
    /// Who wrote it.
    pub author: String,
    /// The text.
    pub body: String,
    /// The invocation it asked for or answered, if any.
    pub invocation_id: Option<String>,
    /// When it was written, unix ms.
    pub created_at_ms: i64,
}

const CONVERSATION_COLUMNS: &str = "conversation_id, title, created_at_ms, updated_at_ms";
const MESSAGE_COLUMNS: &str =
    "message_id, conversation_id, seq, author, body, invocation_id, created_at_ms";

impl Conversation {
    /// Creates the conversation unless it exists; a title given here
    /// replaces none, never an existing title.
    pub fn ensure(
        transaction: &Transaction<'_>,
        conversation_id: &str,
        title: Option<&str>,
        now_ms: i64,
    ) -> Result<Conversation, StoreError> {
        transaction
            .prepare_cached(
                "INSERT INTO conversations (conversation_id, title, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (conversation_id) DO UPDATE SET title = coalesce(title, excluded.title)",
            )?
            .execute(params![conversation_id, title, now_ms])?;
        Conversation::get(transaction, conversation_id)?.ok_or_else(|| StoreError::NotFound {
            kind: "conversation",
            id: conversation_id.to_owned(),
        })
    }

    /// Appends a message, creating the conversation if needed. If a message
    /// with this id is already stored, returns it unchanged.
    pub fn append_message(
        transaction: &Transaction<'_>,
        new: &NewMessage,
    ) -> Result<Message, StoreError> {
        if let Some(existing) = Conversation::get_message(transaction, &new.message_id)? {
            return Ok(existing);
        }
        transaction
            .prepare_cached(
                "INSERT INTO conversations (conversation_id, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?2)
                 ON CONFLICT (conversation_id) DO UPDATE
                     SET updated_at_ms = max(updated_at_ms, excluded.updated_at_ms)",
            )?
            .execute(params![new.conversation_id, new.created_at_ms])?;
        // The single writer makes max(seq) + 1 race-free.
        transaction
            .prepare_cached(
                "INSERT INTO messages (message_id, conversation_id, seq, author, body,
                     invocation_id, created_at_ms)
                 VALUES (?1, ?2,
                     (SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE conversation_id = ?2),
                     ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                new.message_id,
                new.conversation_id,
                new.author,
                new.body,
                new.invocation_id,
                new.created_at_ms,
            ])?;
        Conversation::get_message(transaction, &new.message_id)?.ok_or_else(|| {
            StoreError::NotFound {
                kind: "message",
                id: new.message_id.clone(),
            }
        })
    }

    /// The conversation with this id, if stored.
    pub fn get(
        connection: &Connection,
        conversation_id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        Ok(connection
            .prepare_cached(&format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = ?1"
            ))?
            .query_row([conversation_id], conversation_from_row)
            .optional()?)
    }

    /// Conversations, most recently active first.
    pub fn list_recent(
        connection: &Connection,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations
             ORDER BY updated_at_ms DESC, conversation_id DESC LIMIT ?1"
        ))?;
        let rows = statement.query_map([list_limit(limit)], conversation_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The message with this id, if stored.
    pub fn get_message(
        connection: &Connection,
        message_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        Ok(connection
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ?1"
            ))?
            .query_row([message_id], message_from_row)
            .optional()?)
    }

    /// Messages of a conversation with `seq` greater than `after_seq` (all
    /// from the start when `None`), in order, at most `limit`.
    pub fn list_messages(
        connection: &Connection,
        conversation_id: &str,
        after_seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        ))?;
        let rows = statement.query_map(
            params![conversation_id, after_seq.unwrap_or(0), list_limit(limit)],
            message_from_row,
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

fn conversation_from_row(row: &Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        conversation_id: row.get(0)?,
        title: row.get(1)?,
        created_at_ms: row.get(2)?,
        updated_at_ms: row.get(3)?,
    })
}

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        message_id: row.get(0)?,
        conversation_id: row.get(1)?,
        seq: row.get(2)?,
        author: row.get(3)?,
        body: row.get(4)?,
        invocation_id: row.get(5)?,
        created_at_ms: row.get(6)?,
    })
}

impl Store {
    /// [`Conversation::append_message`] in its own write.
    pub async fn append_message(&self, message: NewMessage) -> Result<Message, StoreError> {
        self.write(move |transaction| Conversation::append_message(transaction, &message))
            .await
    }
}
