//! The audit log: an append-only record of who did what to which subject,
//! with a JSON detail. Reconcile writes here, and so do admissions,
//! revocations, tokens and other decisions a user may later want explained.
//!
//! The log is hash-chained, so an edited, deleted or reordered row is
//! found by [`verify_chain`]. Each row stores `prev_hash` (the previous
//! row's `hash`; 64 zeros for the first row) and `hash`, the lower-case hex
//! SHA-256 of this canonical encoding:
//!
//! ```text
//! "scout-audit-v1" 0x00
//! prev_hash            32 raw bytes
//! seq                  i64, 8 bytes big-endian
//! ts_ms                i64, 8 bytes big-endian
//! actor, action, subject, detail_json
//!                      each: u32 big-endian byte length, then its UTF-8 bytes
//! ```
//!
//! `detail_json` is hashed as stored (the text in the row), so a reader
//! never has to re-serialize JSON the same way to check a row. The length
//! prefixes keep two different rows from ever encoding to the same bytes.
//! What the chain cannot show alone is the loss of the newest rows: a
//! truncated log is a shorter valid chain.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use sha2::{Digest, Sha256};

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

/// The `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One stored entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// The previous row's hash.
    #[serde(default)]
    pub prev_hash: Option<String>,
    /// This row's hash.
    #[serde(default)]
    pub hash: Option<String>,
}

/// Which entries [`AuditEntry::list_filtered`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Only entries whose actor is this one, or starts with it followed
    /// by `:` (`agent` matches `agent:@a@n#main`).
    pub actor: Option<String>,
    /// Only entries with this action.
    pub action: Option<String>,
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainReport {
    /// Rows checked.
    pub entries: u64,
    /// The first row where the chain breaks, when it does.
    pub broken_seq: Option<i64>,
    /// Why it breaks there.
    pub reason: Option<String>,
}

const COLUMNS: &str = "seq, ts_ms, actor, action, subject, detail_json, prev_hash, hash";

/// The hash of a row, as the module documentation defines it. `None` when
/// `prev_hash` is not 64 hex digits.
pub fn row_hash(prev_hash: &str, seq: i64, ts_ms: i64, fields: [&str; 4]) -> Option<String> {
    let prev = decode_hex32(prev_hash)?;
    let mut hasher = Sha256::new();
    hasher.update(b"scout-audit-v1\0");
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(ts_ms.to_be_bytes());
    for field in fields {
        // A field longer than u32::MAX bytes cannot be stored (details are
        // capped far below), so the length always fits.
        let length = u32::try_from(field.len()).unwrap_or(u32::MAX);
        hasher.update(length.to_be_bytes());
        hasher.update(field.as_bytes());
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
    )
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (idx, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[idx * 2..idx * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// The last row's seq and hash (the genesis for an empty log; a row not
/// yet chained counts as the genesis too, and verification reports it).
fn chain_head(transaction: &Connection) -> Result<(i64, String), StoreError> {
    let head: Option<(i64, Option<String>)> = transaction
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(match head {
        Some((seq, hash)) => (seq, hash.unwrap_or_else(|| GENESIS_HASH.to_owned())),
        None => (0, GENESIS_HASH.to_owned()),
    })
}

fn has_chain_columns(connection: &Connection) -> Result<bool, StoreError> {
    let n_columns: i64 = connection.query_row(
        "SELECT count(*) FROM pragma_table_info('audit_log') WHERE name IN ('prev_hash', 'hash')",
        [],
        |row| row.get(0),
    )?;
    Ok(n_columns == 2)
}

/// Chains the rows that have no hash yet, in seq order, each onto the one
/// before it. The migration that adds the chain runs this once over the
/// rows written before it; it does nothing on a log without the chain's
/// columns or without unchained rows.
pub(crate) fn chain_unchained(transaction: &Transaction<'_>) -> Result<(), StoreError> {
    if !has_chain_columns(transaction)? {
        return Ok(());
    }
    let rows: Vec<(i64, i64, String, String, String, String)> = transaction
        .prepare(
            "SELECT seq, ts_ms, actor, action, subject, detail_json
             FROM audit_log WHERE hash IS NULL ORDER BY seq",
        )?
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    for (seq, ts_ms, actor, action, subject, detail_json) in rows {
        let prev_hash: String = transaction
            .query_row(
                "SELECT hash FROM audit_log WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
                params![seq],
                |row| row.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten()
            .unwrap_or_else(|| GENESIS_HASH.to_owned());
        let hash = row_hash(
            &prev_hash,
            seq,
            ts_ms,
            [&actor, &action, &subject, &detail_json],
        )
        .unwrap_or_else(|| GENESIS_HASH.to_owned());
        transaction.execute(
            "UPDATE audit_log SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![prev_hash, hash, seq],
        )?;
    }
    Ok(())
}

/// Walks the whole chain, oldest first, and reports the first row that
/// does not fit: a hash that does not match its fields (an edited row), a
/// `prev_hash` that is not the previous row's hash (a deleted or reordered
/// row), a gap in seq, or a row without a hash.
pub fn verify_chain(connection: &Connection) -> Result<ChainReport, StoreError> {
    let mut statement = connection.prepare(
        "SELECT seq, ts_ms, actor, action, subject, detail_json, prev_hash, hash
         FROM audit_log ORDER BY seq",
    )?;
    let mut rows = statement.query([])?;
    let mut expected_prev = GENESIS_HASH.to_owned();
    let mut expected_seq: Option<i64> = None;
    let mut entries = 0u64;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let ts_ms: i64 = row.get(1)?;
        let fields: [String; 4] = [row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?];
        let prev_hash: Option<String> = row.get(6)?;
        let hash: Option<String> = row.get(7)?;
        let broken = |reason: String| ChainReport {
            entries,
            broken_seq: Some(seq),
            reason: Some(reason),
        };
        if let Some(expected) = expected_seq
            && seq != expected
        {
            return Ok(broken(format!(
                "seq {seq} follows seq {}: rows between them are missing",
                expected - 1
            )));
        }
        let (Some(prev_hash), Some(hash)) = (prev_hash, hash) else {
            return Ok(broken("the row has no hash".to_owned()));
        };
        if prev_hash != expected_prev {
            return Ok(broken(
                "prev_hash is not the previous row's hash: a row before it was deleted, reordered or edited"
                    .to_owned(),
            ));
        }
        let fields_ref = [
            fields[0].as_str(),
            fields[1].as_str(),
            fields[2].as_str(),
            fields[3].as_str(),
        ];
        if row_hash(&prev_hash, seq, ts_ms, fields_ref).as_deref() != Some(hash.as_str()) {
            return Ok(broken(
                "the hash does not match the row's fields: the row was edited".to_owned(),
            ));
        }
        expected_prev = hash;
        expected_seq = Some(seq + 1);
        entries += 1;
    }
    Ok(ChainReport {
        entries,
        broken_seq: None,
        reason: None,
    })
}

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
        // The seq is chosen here, not by SQLite, because the hash covers
        // it; the write transaction holds the lock, so no other append can
        // take the same one.
        let (head_seq, prev_hash) = chain_head(transaction)?;
        let seq = head_seq + 1;
        let hash = row_hash(
            &prev_hash,
            seq,
            entry.ts_ms,
            [&entry.actor, &entry.action, &entry.subject, &detail_json],
        )
        .unwrap_or_else(|| GENESIS_HASH.to_owned());
        transaction
            .prepare_cached(
                "INSERT INTO audit_log (seq, ts_ms, actor, action, subject, detail_json, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                seq,
                entry.ts_ms,
                entry.actor,
                entry.action,
                entry.subject,
                detail_json,
                prev_hash,
                hash
            ])?;
        Ok(seq)
    }

    /// The newest entries that pass `filter`, up to `limit`, oldest first.
    pub fn list_filtered(
        connection: &Connection,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM (
                 SELECT {COLUMNS} FROM audit_log
                 WHERE (?1 IS NULL OR ts_ms >= ?1)
                   AND (?2 IS NULL OR actor = ?2 OR substr(actor, 1, length(?2) + 1) = ?2 || ':')
                   AND (?3 IS NULL OR action = ?3)
                 ORDER BY seq DESC LIMIT ?4)
             ORDER BY seq"
        ))?;
        let rows = statement.query_map(
            params![
                filter.since_ms,
                filter.actor,
                filter.action,
                list_limit(limit)
            ],
            |row| Ok(AuditEntry::from_row(row)),
        )?;
        rows.map(|row| row?).collect()
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
            prev_hash: row.get(6)?,
            hash: row.get(7)?,
        })
    }
}

impl Store {
    /// [`AuditEntry::append`] in its own write.
    pub async fn append_audit(&self, entry: NewAuditEntry) -> Result<i64, StoreError> {
        self.write(move |transaction| AuditEntry::append(transaction, &entry))
            .await
    }

    /// [`verify_chain`] on a read snapshot.
    pub fn verify_audit(&self) -> Result<ChainReport, StoreError> {
        self.read(verify_chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migrations::{MIGRATIONS, migrate, schema_version};

    fn entry(action: &str) -> NewAuditEntry {
        NewAuditEntry {
            ts_ms: 7,
            actor: "operator".into(),
            action: action.into(),
            subject: "s".into(),
            detail: serde_json::json!({ "k": 1 }),
        }
    }

    fn append(connection: &mut Connection, action: &str) {
        let transaction = connection.transaction().unwrap();
        AuditEntry::append(&transaction, &entry(action)).unwrap();
        transaction.commit().unwrap();
    }

    #[test]
    fn the_chain_finds_edited_deleted_and_reordered_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scout.db");
        let mut connection = Connection::open(&path).unwrap();
        migrate(&mut connection, &path).unwrap();
        for action in ["a", "b", "c", "d"] {
            append(&mut connection, action);
        }
        let report = verify_chain(&connection).unwrap();
        assert_eq!((report.entries, report.broken_seq), (4, None));

        connection
            .execute("UPDATE audit_log SET action = 'x' WHERE seq = 2", [])
            .unwrap();
        assert_eq!(verify_chain(&connection).unwrap().broken_seq, Some(2));
        connection
            .execute("UPDATE audit_log SET action = 'b' WHERE seq = 2", [])
            .unwrap();
        assert_eq!(verify_chain(&connection).unwrap().broken_seq, None);

        // Swapping two rows' contents breaks the first of them.
        connection
            .execute_batch(
                "UPDATE audit_log SET action = 'tmp' WHERE seq = 2;
                 UPDATE audit_log SET action = 'b' WHERE seq = 3;
                 UPDATE audit_log SET action = 'c' WHERE seq = 2;",
            )
            .unwrap();
        assert_eq!(verify_chain(&connection).unwrap().broken_seq, Some(2));
        connection
            .execute_batch(
                "UPDATE audit_log SET action = 'b' WHERE seq = 2;
                 UPDATE audit_log SET action = 'c' WHERE seq = 3;",
            )
            .unwrap();

        connection
            .execute("DELETE FROM audit_log WHERE seq = 3", [])
            .unwrap();
        assert_eq!(verify_chain(&connection).unwrap().broken_seq, Some(4));
        connection
            .execute("DELETE FROM audit_log WHERE seq = 1", [])
            .unwrap();
        assert_eq!(verify_chain(&connection).unwrap().broken_seq, Some(2));
    }

    #[test]
    fn rows_from_before_the_chain_are_chained_by_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scout.db");
        let mut connection = Connection::open(&path).unwrap();
        // The schema as it was before the chain, with rows in it.
        let before = MIGRATIONS
            .iter()
            .position(|migration| migration.sql.contains("ADD COLUMN hash"))
            .unwrap();
        for migration in &MIGRATIONS[..before] {
            connection.execute_batch(migration.sql).unwrap();
            connection
                .pragma_update(None, "user_version", migration.version)
                .unwrap();
        }
        for action in ["old_1", "old_2"] {
            connection
                .execute(
                    "INSERT INTO audit_log (ts_ms, actor, action, subject, detail_json)
                     VALUES (1, 'store', ?1, 's', '{}')",
                    params![action],
                )
                .unwrap();
        }
        migrate(&mut connection, &path).unwrap();
        assert!(schema_version(&connection).unwrap() > MIGRATIONS[before - 1].version);
        append(&mut connection, "new");
        let report = verify_chain(&connection).unwrap();
        assert_eq!((report.entries, report.broken_seq), (3, None));
    }
}
