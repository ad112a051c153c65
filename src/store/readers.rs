//! A small bounded pool of read-only connections.
//!
//! In WAL mode a reader sees the last committed snapshot and never waits for
//! the writer, so reads need no queue: a caller takes an idle connection,
//! opens one if fewer than the limit exist, or waits for one to come back.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::Connection;

use super::{StoreError, classify_open_error, open_read_only_connection};

pub(crate) struct ReaderPool {
    path: PathBuf,
    busy_timeout: Duration,
    connections_max: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Connection>,
    n_open: usize,
    closed: bool,
}

impl ReaderPool {
    pub(crate) fn new(path: &Path, busy_timeout: Duration, connections_max: usize) -> ReaderPool {
        ReaderPool {
            path: path.to_path_buf(),
            busy_timeout,
            connections_max,
            state: Mutex::new(PoolState {
                idle: Vec::with_capacity(connections_max),
                n_open: 0,
                closed: false,
            }),
            returned: Condvar::new(),
        }
    }

    /// Runs `f` on a pooled connection and returns the connection to the
    /// pool afterwards, even if `f` panics.
    pub(crate) fn with_connection<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lease = self.take()?;
        let connection = lease.connection.as_ref().ok_or(StoreError::Closed)?;
        f(connection)
    }

    /// Closes idle connections now and busy ones when they come back; later
    /// reads get [`StoreError::Closed`].
    pub(crate) fn close(&self) {
        let idle = {
            let mut state = self.lock();
            state.closed = true;
            state.n_open -= state.idle.len();
            std::mem::take(&mut state.idle)
        };
        drop(idle);
        self.returned.notify_all();
    }

    fn take(&self) -> Result<Lease<'_>, StoreError> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(StoreError::Closed);
            }
            if let Some(connection) = state.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    connection: Some(connection),
                });
            }
            if state.n_open < self.connections_max {
                state.n_open += 1;
                drop(state);
                return match open_read_only_connection(&self.path, self.busy_timeout) {
                    Ok(connection) => Ok(Lease {
                        pool: self,
                        connection: Some(connection),
                    }),
                    Err(err) => {
                        self.lock().n_open -= 1;
                        self.returned.notify_one();
                        Err(classify_open_error(&self.path, err))
                    }
                };
            }
            state = self
                .returned
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection taken from the pool; dropping it gives it back.
struct Lease<'pool> {
    pool: &'pool ReaderPool,
    connection: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let mut state = self.pool.lock();
        if state.closed {
            state.n_open -= 1;
            drop(state);
            drop(connection);
        } else {
            state.idle.push(connection);
            drop(state);
        }
        self.pool.returned.notify_one();
    }
}
