//! The checkpoints this broker took of its agents' worktrees (see
//! [`crate::checkpoint`] for the git side): one row per flight (or other
//! action) id, written with its audit entry in one transaction.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::audit::{AuditEntry, NewAuditEntry};
use super::{Store, StoreError, clamp_detail, list_limit};

/// One checkpoint, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    /// Its id: the flight's id (or the id of the action it preceded).
    pub checkpoint_id: String,
    /// The invocation the flight ran, when it was one.
    pub invocation_id: Option<String>,
    /// The agent instance whose worktree it is.
    pub instance: String,
    /// The worktree's top directory.
    pub workspace: String,
    /// The ref that keeps it; `None` when git failed to make it.
    pub ref_name: Option<String>,
    /// The checkpoint commit; `None` when git failed to make it.
    pub commit_id: Option<String>,
    /// Files that differed from `HEAD` when it was taken.
    pub files_changed: Option<u64>,
    /// Why git could not make it, when it could not.
    pub error: Option<String>,
    /// When it was taken, unix ms.
    pub created_at_ms: i64,
}

const COLUMNS: &str = "checkpoint_id, invocation_id, instance, workspace, ref_name, commit_id, \
     files_changed, error, created_at_ms";

impl CheckpointRow {
    /// Inserts the row (a second one for the same id is ignored: a flight
    /// run again after a restart keeps its first checkpoint, taken before
    /// any of its work) and appends the audit entry `audit` with it.
    /// Returns whether the row was new.
    pub fn insert(
        transaction: &Transaction<'_>,
        row: &CheckpointRow,
        audit: &NewAuditEntry,
    ) -> Result<bool, StoreError> {
        let error = row.error.as_deref().map(clamp_detail);
        let files = row
            .files_changed
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let inserted = transaction
            .prepare_cached(&format!(
                "INSERT OR IGNORE INTO checkpoints ({COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                row.checkpoint_id,
                row.invocation_id,
                row.instance,
                row.workspace,
                row.ref_name,
                row.commit_id,
                files,
                error,
                row.created_at_ms
            ])?;
        if inserted == 1 {
            AuditEntry::append(transaction, audit)?;
        }
        Ok(inserted == 1)
    }

    /// The checkpoint with this id, or the one taken for this invocation.
    pub fn get(connection: &Connection, id: &str) -> Result<Option<CheckpointRow>, StoreError> {
        connection
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM checkpoints
                 WHERE checkpoint_id = ?1 OR invocation_id = ?1
                 ORDER BY checkpoint_id = ?1 DESC LIMIT 1"
            ))?
            .query_row([id], |row| Ok(CheckpointRow::from_row(row)))
            .optional()?
            .transpose()
    }

    /// Checkpoints, newest first, of instances `instance` accepts (all when
    /// `None`).
    pub fn list(
        connection: &Connection,
        instance: Option<&dyn Fn(&str) -> bool>,
        limit: usize,
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM checkpoints ORDER BY created_at_ms DESC, checkpoint_id DESC"
        ))?;
        let rows = statement.query_map([], |row| Ok(CheckpointRow::from_row(row)))?;
        let wanted = usize::try_from(list_limit(limit)).unwrap_or(0);
        let mut out = Vec::new();
        for row in rows {
            let row = row??;
            if instance.is_none_or(|accept| accept(&row.instance)) {
                out.push(row);
                if out.len() >= wanted {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The checkpoints of `workspace` past the newest `keep`, oldest
    /// first, at most `limit` of them.
    pub fn beyond_newest(
        connection: &Connection,
        workspace: &str,
        keep: usize,
        limit: usize,
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM (
                 SELECT * FROM checkpoints WHERE workspace = ?1
                 ORDER BY created_at_ms DESC, checkpoint_id DESC LIMIT -1 OFFSET ?2)
             ORDER BY created_at_ms, checkpoint_id LIMIT ?3"
        ))?;
        let rows = statement.query_map(
            params![workspace, list_limit(keep), list_limit(limit)],
            |row| Ok(CheckpointRow::from_row(row)),
        )?;
        rows.map(|row| row?).collect()
    }

    /// Deletes checkpoint `id`'s row and appends the audit entry `audit`.
    pub fn delete(
        transaction: &Transaction<'_>,
        id: &str,
        audit: &NewAuditEntry,
    ) -> Result<(), StoreError> {
        let deleted = transaction
            .prepare_cached("DELETE FROM checkpoints WHERE checkpoint_id = ?1")?
            .execute([id])?;
        if deleted == 1 {
            AuditEntry::append(transaction, audit)?;
        }
        Ok(())
    }

    fn from_row(row: &Row<'_>) -> Result<CheckpointRow, StoreError> {
        let files: Option<i64> = row.get(6)?;
        Ok(CheckpointRow {
            checkpoint_id: row.get(0)?,
            invocation_id: row.get(1)?,
            instance: row.get(2)?,
            workspace: row.get(3)?,
            ref_name: row.get(4)?,
            commit_id: row.get(5)?,
            files_changed: files.map(|n| u64::try_from(n).unwrap_or(0)),
            error: row.get(7)?,
            created_at_ms: row.get(8)?,
        })
    }
}

impl Store {
    /// [`CheckpointRow::insert`] in its own write.
    pub async fn insert_checkpoint(
        &self,
        row: CheckpointRow,
        audit: NewAuditEntry,
    ) -> Result<bool, StoreError> {
        self.write(move |transaction| CheckpointRow::insert(transaction, &row, &audit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, instance: &str, at: i64) -> CheckpointRow {
        CheckpointRow {
            checkpoint_id: id.into(),
            invocation_id: Some(format!("inv-{id}")),
            instance: instance.into(),
            workspace: "/w".into(),
            ref_name: Some(format!("refs/scout/checkpoints/{id}")),
            commit_id: Some("a".repeat(40)),
            files_changed: Some(2),
            error: None,
            created_at_ms: at,
        }
    }

    fn audit(id: &str) -> NewAuditEntry {
        NewAuditEntry {
            ts_ms: 1,
            actor: "store".into(),
            action: "checkpoint_created".into(),
            subject: id.into(),
            detail: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn checkpoints_are_kept_once_listed_newest_first_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(
            dir.path().join("scout.db"),
            crate::store::StoreOptions::default(),
        )
        .unwrap();
        assert!(
            store
                .insert_checkpoint(row("a", "@x@n#main", 1), audit("a"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .insert_checkpoint(row("a", "@x@n#main", 5), audit("a"))
                .await
                .unwrap()
        );
        let mut failed = row("b", "@y@n#main", 2);
        failed.ref_name = None;
        failed.commit_id = None;
        failed.files_changed = None;
        failed.error = Some("git add failed".into());
        store.insert_checkpoint(failed, audit("b")).await.unwrap();
        let all = store.read(|c| CheckpointRow::list(c, None, 10)).unwrap();
        assert_eq!(
            all.iter()
                .map(|r| r.checkpoint_id.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
        let only_x = |instance: &str| instance.starts_with("@x");
        let xs = store
            .read(|c| CheckpointRow::list(c, Some(&only_x), 10))
            .unwrap();
        assert_eq!(xs.len(), 1);
        assert_eq!(xs[0].created_at_ms, 1, "the first checkpoint stays");
        let by_invocation = store.read(|c| CheckpointRow::get(c, "inv-a")).unwrap();
        assert_eq!(by_invocation.unwrap().checkpoint_id, "a");
        assert!(
            store
                .read(|c| CheckpointRow::get(c, "zz"))
                .unwrap()
                .is_none()
        );
        let audited = store
            .read(|c| AuditEntry::list_for_subject(c, "a", 10))
            .unwrap();
        assert_eq!(audited.len(), 1);

        for (id, at) in [("c", 3), ("d", 4)] {
            store
                .insert_checkpoint(row(id, "@x@n#main", at), audit(id))
                .await
                .unwrap();
        }
        let old = store
            .read(|c| CheckpointRow::beyond_newest(c, "/w", 2, 10))
            .unwrap();
        // Newest first: d, c, b, a; beyond two: b and a, oldest first.
        assert_eq!(
            old.iter()
                .map(|r| r.checkpoint_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        store
            .write(|t| CheckpointRow::delete(t, "a", &audit("a")))
            .await
            .unwrap();
        assert!(
            store
                .read(|c| CheckpointRow::get(c, "a"))
                .unwrap()
                .is_none()
        );
    }
}
