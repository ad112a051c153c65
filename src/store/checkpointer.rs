//! The checkpointer: copies committed WAL frames back into the database
//! file on its own thread and connection, so the writer never does.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses the
//! threshold, on the writer's connection: that commit (and every request
//! sharing its batch, and every request queued behind it) then waits for a
//! copy of up to a thousand pages and an fsync of the database file. A
//! PASSIVE checkpoint from another connection does the same work while the
//! writer keeps appending to the WAL. The writer nudges this thread every
//! [`CHECKPOINT_INTERVAL_BATCHES`] commits; a nudge that finds one already
//! pending is dropped, so a slow disk never queues up checkpoints.

use std::path::Path;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{StoreError, Synchronous, classify_open_error};

/// Committed batches between two checkpoint nudges. A batch appends a few
/// pages for ordinary requests, so this keeps each checkpoint to a few
/// hundred pages: short enough that its fsync barely competes with the
/// writer's, frequent enough that the WAL file stays small.
pub(crate) const CHECKPOINT_INTERVAL_BATCHES: u64 = 64;

/// The writer connection's own automatic checkpoint threshold, in pages. It
/// is only reached if the checkpointer falls far behind (or failed), and
/// then bounds the WAL file at about 40 MiB with 4 KiB pages.
pub(crate) const WAL_AUTOCHECKPOINT_FALLBACK_PAGES: i64 = 10_000;

/// A running checkpointer thread.
pub(crate) struct Checkpointer {
    nudge: mpsc::SyncSender<()>,
    thread: JoinHandle<()>,
    batches_since_nudge: u64,
}

impl Checkpointer {
    /// Opens a connection of its own to `path` (which must exist) and
    /// starts the thread.
    pub(crate) fn start(
        path: &Path,
        busy_timeout: Duration,
        synchronous: Synchronous,
    ) -> Result<Checkpointer, StoreError> {
        let open = || -> rusqlite::Result<Connection> {
            let connection = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            connection.busy_timeout(busy_timeout)?;
            // A checkpoint fsyncs the database file under NORMAL and FULL;
            // matching the writer keeps one durability story.
            connection.pragma_update(None, "synchronous", synchronous.pragma_value())?;
            Ok(connection)
        };
        let connection = open().map_err(|err| classify_open_error(path, err))?;
        // Capacity one: a pending nudge already covers every later commit.
        let (nudge, nudges) = mpsc::sync_channel::<()>(1);
        let thread = thread::Builder::new()
            .name("scout-store-checkpointer".to_owned())
            .spawn(move || run_checkpointer(connection, nudges))
            .map_err(|err| StoreError::CommitFailed {
                detail: format!("cannot start the checkpointer thread: {err}"),
            })?;
        Ok(Checkpointer {
            nudge,
            thread,
            batches_since_nudge: 0,
        })
    }

    /// Called by the writer after each committed batch.
    pub(crate) fn batch_committed(&mut self) {
        self.batches_since_nudge += 1;
        if self.batches_since_nudge >= CHECKPOINT_INTERVAL_BATCHES {
            self.batches_since_nudge = 0;
            // Full means a checkpoint is already pending; Disconnected means
            // the thread died, and the writer's fallback threshold takes
            // over. Neither is worth more than a debug line.
            if let Err(err) = self.nudge.try_send(()) {
                tracing::debug!(cause = %err, "checkpoint nudge dropped");
            }
        }
    }

    /// Stops the thread after any checkpoint in progress.
    pub(crate) fn stop(self) {
        drop(self.nudge);
        if self.thread.join().is_err() {
            tracing::error!("the checkpointer thread panicked");
        }
    }
}

fn run_checkpointer(connection: Connection, nudges: mpsc::Receiver<()>) {
    while nudges.recv().is_ok() {
        // (busy, WAL frames, frames checkpointed); busy = 1 only means a
        // reader pinned part of the WAL, which the next round picks up.
        let result = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        });
        match result {
            Ok((_, n_frames, n_checkpointed)) => {
                tracing::trace!(n_frames, n_checkpointed, "checkpointed");
            }
            Err(err) => tracing::warn!(cause = %err, "checkpoint failed"),
        }
    }
    if let Err((_, err)) = connection.close() {
        tracing::warn!(cause = %err, "closing the checkpointer connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudge_copies_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scout.db");
        // This connection stays open, so nothing else checkpoints the WAL.
        let writer = Connection::open(&path).unwrap();
        writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer
            .execute_batch("CREATE TABLE t (x TEXT NOT NULL)")
            .unwrap();
        for _ in 0..200 {
            writer
                .execute("INSERT INTO t (x) VALUES (?1)", ["x".repeat(1000)])
                .unwrap();
        }
        let size_before = std::fs::metadata(&path).unwrap().len();

        let mut checkpointer =
            Checkpointer::start(&path, Duration::from_secs(5), Synchronous::Full).unwrap();
        for _ in 0..CHECKPOINT_INTERVAL_BATCHES - 1 {
            checkpointer.batch_committed();
        }
        // Stopping drains a pending nudge first; there is none yet.
        let mut checkpointer = {
            checkpointer.stop();
            let size = std::fs::metadata(&path).unwrap().len();
            assert_eq!(size, size_before, "no nudge before the interval");
            Checkpointer::start(&path, Duration::from_secs(5), Synchronous::Full).unwrap()
        };
        for _ in 0..CHECKPOINT_INTERVAL_BATCHES {
            checkpointer.batch_committed();
        }
        checkpointer.stop();
        let size_after = std::fs::metadata(&path).unwrap().len();
        assert!(
            size_after > size_before + 100 * 1000,
            "the rows reached the database file: {size_before} -> {size_after}"
        );
    }
}
