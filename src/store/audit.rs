//! The audit log: an append-only record of who did what to which subject,
//! with a JSON detail. Reconcile writes here, and so do admissions,
//! cancellations and other decisions a user may later want explained.

use rusqlite::{Connection, Row, Transaction, params};

use super::{Store, StoreError, list_limit};

/// Longest serialized detail kept per entry, in bytes. Details are small
/// structured facts (ids, states, reasons); a bigger one is a bug upstream
/// and is refused rather than bloating a table that is never pruned.
pub const AUDIT_DETAIL_BYTES_MAX: usize = 16 * 1024;

/// An entry to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    /// When it happened, unix ms.
    pub ts_ms: i64,
    /// Who did it: `store`, `user`, a node id, an agent name.
    pub actor: String,
    /// What was done, as a snake_case verb phrase (`reconcile_flight`).
    pub action: String,
    /// The id of the thing it was done to.
    pub subject: String,
    /// Structured facts about it.
    pub detail: serde_json::Value,
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Position in the log, increasing.
    pub seq: i64,
    /// When it happened, unix ms.
    pub ts_ms: i64,
    /// Who did it.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// The id of the thing it was done to.
    pub subject: String,
    /// Structured facts about it.
    pub detail: serde_json::Value,
}

const COLUMNS: &str = "seq, ts_ms, actor, action, subject, detail_json";

impl AuditEntry {
    /// Appends an entry and returns its sequence number.
    pub fn append(transaction: &Transaction<'_>, entry: &NewAuditEntry) -> Result<i64, StoreError> {
        let detail_json = entry.detail.to_string();
        if detail_json.len() > AUDIT_DETAIL_BYTES_MAX {
            return Err(StoreError::InvalidRequest {
                detail: format!(
                    "audit detail is {} bytes, more than {AUDIT_DETAIL_BYTES_MAX}",
                    detail_json.len()
                ),
            });
        }
        transaction
            .prepare_cached(
                "INSERT INTO audit_log (ts_ms, actor, action, subject, detail_json)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                entry.ts_ms,
                entry.actor,
                entry.action,
                entry.subject,
                detail_json
            ])?;
        Ok(transaction.last_insert_rowid())
    }

    /// Entries after `after_seq` (from the start when `None`), oldest first.
    pub fn list(
        connection: &Connection,
        after_seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let rows = statement
            .query_map(params![after_seq.unwrap_or(0), list_limit(limit)], |row| {
                Ok(AuditEntry::from_row(row))
            })?;
        rows.map(|row| row?).collect()
    }

    /// The entries about one subject, oldest first.
    pub fn list_for_subject(
        connection: &Connection,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE subject = ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![subject, list_limit(limit)], |row| {
            Ok(AuditEntry::from_row(row))
        })?;
        rows.map(|row| row?).collect()
    }

    fn from_row(row: &Row<'_>) -> Result<AuditEntry, StoreError> {
        let seq: i64 = row.get(0)?;
        let detail_json: String = row.get(5)?;
        let detail =
            serde_json::from_str(&detail_json).map_err(|err| StoreError::MalformedRow {
                table: "audit_log",
                id: seq.to_string(),
                detail: format!("detail is not JSON: {err}"),
            })?;
        Ok(AuditEntry {
            seq,
            ts_ms: row.get(1)?,
            actor: row.get(2)?,
            action: row.get(3)?,
            subject: row.get(4)?,
            detail,
        })
    }
}

impl Store {
    /// [`AuditEntry::append`] in its own write.
    pub async fn append_audit(&self, entry: NewAuditEntry) -> Result<i64, StoreError> {
        self.write(move |transaction| AuditEntry::append(transaction, &entry))
            .await
    }
}
