//! The durable store: one SQLite file in WAL mode that holds everything a
//! broker has accepted, so that "accepted" survives crashes and restarts.
//!
//! Code map:
//! - this file: [`Store`] (open, read, write, close), [`StoreOptions`],
//!   [`StoreError`] with its stable codes, and the small helpers every table
//!   module shares.
//! - [`migrations`]: the ordered schema migrations, tracked in
//!   `PRAGMA user_version`.
//! - `writer`: the single writer thread with group commit (one fsync for
//!   many requests, each request in its own savepoint).
//! - `checkpointer`: copies the WAL back into the database file on its own
//!   thread, so checkpoints never stall a commit.
//! - `readers`: a small pool of read-only connections; in WAL mode readers
//!   never block the writer.
//! - [`invocations`], [`flights`], [`deliveries`], [`conversations`],
//!   [`audit`], [`checkpoints`], [`registry`], [`work_orders`]: typed rows and the operations
//!   on them, as associated functions over a `rusqlite::Transaction` (writes)
//!   or `rusqlite::Connection` (reads).
//! - [`usage`]: the failure code and usage columns flights and deliveries
//!   share, and the usage totals an owner answers from.
//! - [`routing_rows`]: the routing core's `Persist` rows as statements,
//!   the facts it asks for, and what it is rebuilt from at start.
//! - [`reconcile`]: what a restart does to flights and deliveries a crash
//!   left unfinished, as a pure rule plus the transaction that applies it.
//!
//! Architecture invariant: every write goes through the one writer (its
//! thread, or the caller's thread with [`StoreOptions::inline_writes`]), and
//! every state change of a flight or delivery is checked against the state
//! machine in `scout_mesh::lifecycle` inside the transaction that writes it.
//! A file the store cannot read or does not understand is never modified.

pub mod approvals;
pub mod audit;
mod checkpointer;
pub mod checkpoints;
pub mod conversations;
pub mod deliveries;
pub mod flights;
pub mod invocations;
pub mod mesh;
pub mod migrations;
mod readers;
pub mod reconcile;
pub mod registry;
pub mod routing_rows;
pub mod tokens;
pub mod usage;
pub mod work_orders;
mod writer;

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction};
use scout_mesh::lifecycle::{IllegalTransition, UnknownWord};

use crate::env::Env;

pub use migrations::SCHEMA_VERSION;
pub use reconcile::ReconcileReport;
pub use writer::WriteMetrics;

use readers::ReaderPool;
use writer::Writer;

/// Capacity of the queue between callers of [`Store::write`] and the writer
/// thread. It holds several full batches, so the writer always finds the
/// next batch waiting while it commits the current one; beyond that, callers
/// wait for room, which is the backpressure that keeps memory bounded.
pub const WRITE_QUEUE_DEPTH_MAX: usize = 1024;

/// Most requests committed together in one transaction (one fsync). Large
/// enough that 64 or more concurrent writers share every commit, small
/// enough that one batch holds the write lock for a few milliseconds at most.
pub const WRITE_BATCH_MAX: usize = 256;

/// Read-only connections kept open for [`Store::read`]. Reads are short
/// point lookups and small lists; a handful of connections serves the HTTP
/// surface and the mesh without keeping many file descriptors open.
pub const READ_CONNECTIONS_MAX: usize = 4;

/// How long a connection waits for a lock held by another connection (a
/// checkpoint, or another process inspecting the file) before failing.
pub const BUSY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Most rows any list function returns at once. Lists feed API pages and
/// CLI tables; the store never loads an unbounded result into memory.
pub const LIST_ROWS_MAX: usize = 1000;

/// Most problems `PRAGMA integrity_check` reports. The first few say
/// whether the file is damaged; thousands more would only flood `doctor`.
pub const INTEGRITY_PROBLEMS_MAX: usize = 100;

/// Longest failure detail kept on a flight, delivery or attempt, in
/// characters. Details are error messages and harness exit summaries; a
/// longer text is cut, since the full output lives in the flight output.
pub const FAILURE_DETAIL_CHARS_MAX: usize = 4096;

const _: () = assert!(WRITE_BATCH_MAX <= WRITE_QUEUE_DEPTH_MAX);
const _: () = assert!(READ_CONNECTIONS_MAX >= 1);

/// How hard SQLite works to make each commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous=NORMAL`: in WAL mode a commit survives a crash of the
    /// process but may be lost on power failure.
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before it is reported, so
    /// "accepted" survives power failure too.
    #[default]
    Full,
}

impl Synchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// How [`Store::open`] configures the database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Durability of each commit; `Full` unless a test or benchmark says
    /// otherwise.
    pub synchronous: Synchronous,
    /// How long a connection waits for a lock before failing.
    pub busy_timeout: Duration,
    /// Most requests per commit, between 1 and [`WRITE_BATCH_MAX`]. `1`
    /// turns group commit off (one fsync per request), which only the
    /// benchmark wants.
    pub write_batch_max: usize,
    /// Read-only connections in the pool, between 1 and
    /// [`READ_CONNECTIONS_MAX`].
    pub read_connections_max: usize,
    /// Run every write on the caller's thread, at once, as a batch of one,
    /// instead of on the writer thread; no checkpointer thread either
    /// (SQLite checkpoints inside commits). For netsim, whose paused clock
    /// must not advance while a write is away on another thread: a write
    /// then takes no simulated time and runs in a reproducible order. The
    /// caller's thread blocks for the commit, so brokers never use it.
    pub inline_writes: bool,
    /// Where row timestamps and ids come from (default: the system's
    /// clock and uuid v7). A broker passes its own environment.
    pub env: Env,
    /// Invocations whose execution outlived the last broker (held turns,
    /// `crate::holder::journal::held_invocations`): reconcile leaves their
    /// running flights running, for the broker to carry on.
    pub held_invocations: std::collections::BTreeSet<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::Full,
            busy_timeout: BUSY_TIMEOUT_DEFAULT,
            write_batch_max: WRITE_BATCH_MAX,
            read_connections_max: READ_CONNECTIONS_MAX,
            inline_writes: false,
            env: Env::system(None),
            held_invocations: std::collections::BTreeSet::new(),
        }
    }
}

/// Everything that can go wrong in the store. Each variant has a stable code
/// ([`StoreError::code`]) for the API and `scout doctor`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file was written by a newer scout whose schema this binary does
    /// not know; it is left untouched.
    #[error(
        "the store at {} was written by a newer scout (schema {found}); this scout knows up to schema {supported}; upgrade scout",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest schema version this binary knows.
        supported: i64,
    },
    /// A read-only open found a file with an older schema; only a broker
    /// (a read-write open) migrates it.
    #[error(
        "the store at {} has schema {found}, older than this scout's schema {supported}; start the broker once to migrate it",
        path.display()
    )]
    SchemaOutdated {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The schema version this binary writes.
        supported: i64,
    },
    /// The file is not a SQLite database or fails its consistency check; it
    /// is left untouched for inspection or restore.
    #[error(
        "the store at {} is corrupt and was left untouched: {detail}; restore it from a backup or move it aside",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was wrong with it.
        detail: String,
    },
    /// The file (or its directory) could not be opened: permission denied,
    /// a directory where a file should be, a missing parent directory.
    #[error("cannot open the store at {}: {source}", path.display())]
    Unreadable {
        /// The database file.
        path: PathBuf,
        /// The underlying cause.
        #[source]
        source: io::Error,
    },
    /// A read-only open found no database at the path.
    #[error("no store at {}; start the broker once to create it", path.display())]
    Missing {
        /// The path that holds no database.
        path: PathBuf,
    },
    /// The options passed to [`Store::open`] are out of range.
    #[error("invalid store options: {detail}")]
    InvalidOptions {
        /// Which option and why.
        detail: String,
    },
    /// A request asked for a state change the state machine forbids; nothing
    /// was written.
    #[error("{kind} {id}: {transition}")]
    IllegalTransition {
        /// `flight`, `delivery` or `work order`.
        kind: &'static str,
        /// The row's id.
        id: String,
        /// The refused transition.
        #[source]
        transition: IllegalTransition,
    },
    /// A request was malformed in a way the schema cannot express (a failed
    /// state without a failure reason, a reason on a running flight).
    #[error("invalid request: {detail}")]
    InvalidRequest {
        /// What was wrong.
        detail: String,
    },
    /// The row a request names does not exist.
    #[error("no {kind} with id {id}")]
    NotFound {
        /// The kind of row (`flight`, `invocation`, ...).
        kind: &'static str,
        /// The id that was looked up.
        id: String,
    },
    /// A row with this id already exists and the operation does not merge.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// The kind of row.
        kind: &'static str,
        /// The id that collided.
        id: String,
    },
    /// A row on disk holds a value this binary cannot interpret.
    #[error("malformed {table} row {id}: {detail}")]
    MalformedRow {
        /// The table the row is in.
        table: &'static str,
        /// The row's id.
        id: String,
        /// What could not be interpreted.
        detail: String,
    },
    /// The store was closed (or its writer stopped) before the request ran.
    #[error("the store is closed")]
    Closed,
    /// The store was opened read-only and cannot write.
    #[error("the store was opened read-only")]
    ReadOnly,
    /// The request itself succeeded but the transaction it shared with other
    /// requests did not commit, so nothing it wrote is on disk.
    #[error("the write was not committed: {detail}")]
    CommitFailed {
        /// Why the commit (or the batch) failed.
        detail: String,
    },
    /// The request's closure panicked; its savepoint was rolled back and the
    /// other requests in the batch were unaffected.
    #[error("the write request panicked: {detail}")]
    RequestPanicked {
        /// The panic message.
        detail: String,
    },
    /// Any other SQLite error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl StoreError {
    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::SchemaTooNew { .. } => "STORE_SCHEMA_TOO_NEW",
            StoreError::SchemaOutdated { .. } => "STORE_SCHEMA_OUTDATED",
            StoreError::Corrupt { .. } => "STORE_CORRUPT",
            StoreError::Unreadable { .. } => "STORE_UNREADABLE",
            StoreError::Missing { .. } => "STORE_MISSING",
            StoreError::InvalidOptions { .. } => "STORE_INVALID_OPTIONS",
            StoreError::IllegalTransition { .. } => "ILLEGAL_TRANSITION",
            StoreError::InvalidRequest { .. } => "INVALID_REQUEST",
            StoreError::NotFound { .. } => "NOT_FOUND",
            StoreError::AlreadyExists { .. } => "ALREADY_EXISTS",
            StoreError::MalformedRow { .. } => "STORE_MALFORMED_ROW",
            StoreError::Closed => "STORE_CLOSED",
            StoreError::ReadOnly => "STORE_READ_ONLY",
            StoreError::CommitFailed { .. } => "STORE_COMMIT_FAILED",
            StoreError::RequestPanicked { .. } => "STORE_REQUEST_PANICKED",
            StoreError::Sqlite(_) => "STORE_SQLITE",
        }
    }
}

/// The result of `PRAGMA integrity_check`, for `scout doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityReport {
    /// The database file.
    pub path: PathBuf,
    /// The schema version in the file.
    pub schema_version: i64,
    /// The newest schema version this binary knows.
    pub schema_version_supported: i64,
    /// Whether SQLite found no problem.
    pub ok: bool,
    /// The problems SQLite reported, at most [`INTEGRITY_PROBLEMS_MAX`].
    pub problems: Vec<String>,
}

/// A handle to the durable store. Cheap to clone; all clones share one
/// writer thread and one reader pool.
///
/// Dropping the last clone closes the store like [`Store::close`] does
/// (queued writes commit, the writer thread is joined), blocking the
/// dropping thread for that long; call `close` to see its error.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    path: PathBuf,
    /// `None` for a store opened with [`Store::open_read_only`].
    writer: Option<Writer>,
    readers: ReaderPool,
    closed: Mutex<bool>,
    /// Stamps the rows the store's own methods create or move.
    env: Env,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("read_only", &self.inner.writer.is_none())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`, migrates it to
    /// [`SCHEMA_VERSION`], reconciles flights a crash left unfinished, and
    /// starts the writer thread.
    ///
    /// A file this binary cannot read, does not recognise as a healthy
    /// database, or whose schema is newer than it knows is refused with
    /// [`StoreError::Unreadable`], [`StoreError::Corrupt`] or
    /// [`StoreError::SchemaTooNew`] and is never modified. This function
    /// does blocking IO; from async code call it before serving or inside
    /// `spawn_blocking`.
    pub fn open(
        path: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<(Store, ReconcileReport), StoreError> {
        let path = path.as_ref().to_path_buf();
        validate_options(&options)?;

        // Every check that can refuse the file runs before anything writes
        // to it: switching to WAL or migrating would modify a file we are
        // about to call corrupt or too new.
        let existing = precheck_file(&path, Access::ReadWrite)?;
        if existing == Existing::NonEmpty {
            check_existing_database(&path, &options)?;
        }
        if existing == Existing::Missing {
            create_owner_only(&path)?;
        }

        let mut connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|err| classify_open_error(&path, err))?;
        configure_write_connection(&connection, &options)
            .map_err(|err| classify_open_error(&path, err))?;
        migrations::migrate(&mut connection, &path)?;
        let report = reconcile::reconcile_on_open(
            &mut connection,
            options.env.now_unix_ms_i64(),
            &options.held_invocations,
        )?;
        if !report.is_empty() {
            tracing::warn!(
                path = %path.display(),
                flights = report.flights.len(),
                deliveries = report.deliveries.len(),
                "reconciled work left unfinished by a previous run"
            );
        }

        let writer = if options.inline_writes {
            Writer::start_inline(connection)
        } else {
            Writer::start(connection, &path, &options)?
        };
        let readers = ReaderPool::new(&path, options.busy_timeout, options.read_connections_max);
        let store = Store {
            inner: Arc::new(StoreInner {
                path,
                writer: Some(writer),
                readers,
                closed: Mutex::new(false),
                env: options.env,
            }),
        };
        Ok((store, report))
    }

    /// Opens an existing store for inspection (CLI, `scout doctor`): no
    /// migrations, no reconcile, no writer. Refuses a missing file
    /// ([`StoreError::Missing`]), a schema newer than this binary knows and
    /// one older than it writes, since the queries assume the current schema.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        let options = StoreOptions::default();
        match precheck_file(&path, Access::ReadOnly)? {
            Existing::Missing | Existing::Empty => return Err(StoreError::Missing { path }),
            Existing::NonEmpty => {}
        }
        let connection = open_read_only_connection(&path, options.busy_timeout)
            .map_err(|err| classify_open_error(&path, err))?;
        let found = migrations::schema_version(&connection)
            .map_err(|err| classify_open_error(&path, err))?;
        drop(connection);
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::SchemaOutdated {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let readers = ReaderPool::new(&path, options.busy_timeout, options.read_connections_max);
        Ok(Store {
            inner: Arc::new(StoreInner {
                path,
                writer: None,
                readers,
                closed: Mutex::new(false),
                // Read-only: nothing is ever stamped.
                env: Env::system(None),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The environment that stamps this store's rows.
    pub fn env(&self) -> &Env {
        &self.inner.env
    }

    /// Runs `f` on the writer thread inside its own savepoint, and returns
    /// once the transaction it shared with other requests has committed
    /// (with `synchronous=FULL`: is on disk).
    ///
    /// If `f` returns an error, only its own changes are rolled back and the
    /// error is returned; the other requests of the batch commit. If the
    /// commit fails, every request of the batch gets
    /// [`StoreError::CommitFailed`]. Dropping the returned future does not
    /// cancel a request that was already queued.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (request, mut reply) = writer::request(f);
        let Some(request) = self.try_write_inline(request)? else {
            // Inline mode: the reply was sent before the call returned.
            return reply.try_recv().map_err(|_| StoreError::Closed)?;
        };
        let sender = self.write_sender()?;
        sender.send(request).await.map_err(|_| StoreError::Closed)?;
        drop(sender);
        reply.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `f` like [`Store::write`] but returns as soon as it is in the
    /// writer's queue, with a future for the commit's reply. Requests run in
    /// the order they were queued, so a write queued after this one sees its
    /// changes; what a reader sees, and what survives a crash, still waits
    /// for the commit. For work whose policy does not wait for the disk
    /// (`best_effort`, `ephemeral` invocations).
    pub async fn enqueue<T, F>(
        &self,
        f: F,
    ) -> Result<impl Future<Output = Result<T, StoreError>> + Send + 'static, StoreError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (request, reply) = writer::request(f);
        if let Some(request) = self.try_write_inline(request)? {
            let sender = self.write_sender()?;
            sender.send(request).await.map_err(|_| StoreError::Closed)?;
        }
        // Inline mode: the reply was sent before `try_write_inline` returned.
        Ok(async move { reply.await.map_err(|_| StoreError::Closed)? })
    }

    /// [`Store::write`] for synchronous callers (CLI commands, plain
    /// threads).
    ///
    /// Must not be called from a thread that is running a tokio runtime
    /// (inside `async` code or `block_on`): it blocks the thread until the
    /// commit, and tokio panics when a runtime thread blocks this way. Use
    /// [`Store::write`] there, or call this from `spawn_blocking`.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (request, mut reply) = writer::request(f);
        let Some(request) = self.try_write_inline(request)? else {
            return reply.try_recv().map_err(|_| StoreError::Closed)?;
        };
        let sender = self.write_sender()?;
        sender
            .blocking_send(request)
            .map_err(|_| StoreError::Closed)?;
        drop(sender);
        reply.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read-only connection inside one read transaction, so
    /// everything `f` reads comes from one committed snapshot. Readers never
    /// block the writer and never see uncommitted writes.
    ///
    /// This blocks the calling thread for the duration of `f` (and, when all
    /// [`READ_CONNECTIONS_MAX`] connections are busy, until one is free).
    /// Reads are short; from async code that is acceptable for point lookups
    /// and small lists.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        self.inner.readers.with_connection(|connection| {
            let snapshot = connection.unchecked_transaction()?;
            let value = f(&snapshot)?;
            // A read transaction has nothing to commit; ending it releases
            // the snapshot so the WAL can be checkpointed past it.
            snapshot.rollback()?;
            Ok(value)
        })
    }

    /// Runs `PRAGMA integrity_check` and reports the schema version, for
    /// `scout doctor`.
    pub fn integrity_check(&self) -> Result<IntegrityReport, StoreError> {
        let path = self.inner.path.clone();
        self.read(move |connection| {
            let schema_version = migrations::schema_version(connection)?;
            let mut statement =
                connection.prepare(&format!("PRAGMA integrity_check({INTEGRITY_PROBLEMS_MAX})"))?;
            let lines = statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<String>, _>>()?;
            let ok = lines.len() == 1 && lines[0] == "ok";
            Ok(IntegrityReport {
                path,
                schema_version,
                schema_version_supported: SCHEMA_VERSION,
                ok,
                problems: if ok { Vec::new() } else { lines },
            })
        })
    }

    /// Counters of the writer thread; all zero for a read-only store.
    pub fn write_metrics(&self) -> WriteMetrics {
        self.inner
            .writer
            .as_ref()
            .map(Writer::metrics)
            .unwrap_or_default()
    }

    /// Requests waiting in the write queue right now (not counting the batch
    /// being committed).
    pub fn write_queue_len(&self) -> usize {
        self.inner.writer.as_ref().map_or(0, Writer::queue_len)
    }

    /// Stops the store: closes the reader pool, lets the writer commit every
    /// request already queued, and joins it, so the file is checkpointed and
    /// closed cleanly. Other clones of this handle get [`StoreError::Closed`]
    /// afterwards. Blocks for at most one batch commit and a checkpoint.
    pub fn close(self) -> Result<(), StoreError> {
        self.inner.shutdown()
    }

    /// In inline mode, runs `request` now on this thread (its reply is sent
    /// before this returns) and gives `None`; otherwise hands the request
    /// back for the writer thread.
    fn try_write_inline(
        &self,
        request: Box<dyn writer::PendingWrite>,
    ) -> Result<Option<Box<dyn writer::PendingWrite>>, StoreError> {
        match &self.inner.writer {
            None => Err(StoreError::ReadOnly),
            Some(writer) if writer.is_inline() => {
                writer.write_inline(request);
                Ok(None)
            }
            Some(_) => Ok(Some(request)),
        }
    }

    fn write_sender(&self) -> Result<writer::RequestSender, StoreError> {
        match &self.inner.writer {
            None => Err(StoreError::ReadOnly),
            Some(writer) => writer.sender().ok_or(StoreError::Closed),
        }
    }

    /// Whether [`Store::close`] has been called on any clone.
    pub fn is_closed(&self) -> bool {
        *self
            .inner
            .closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl StoreInner {
    fn shutdown(&self) -> Result<(), StoreError> {
        // New writes are refused before anyone can observe the store as
        // closed; requests already queued still commit.
        if let Some(writer) = &self.writer {
            writer.refuse_new_requests();
        }
        {
            let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
            if *closed {
                return Ok(());
            }
            *closed = true;
        }
        // Readers go first: the writer's final checkpoint can then copy the
        // whole WAL back and truncate it, since no snapshot pins it.
        self.readers.close();
        match &self.writer {
            Some(writer) => writer.join(),
            None => Ok(()),
        }
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::error!(path = %self.path.display(), cause = %err, "closing the store failed");
        }
    }
}

fn validate_options(options: &StoreOptions) -> Result<(), StoreError> {
    if !(1..=WRITE_BATCH_MAX).contains(&options.write_batch_max) {
        return Err(StoreError::InvalidOptions {
            detail: format!(
                "write_batch_max is {}, must be between 1 and {WRITE_BATCH_MAX}",
                options.write_batch_max
            ),
        });
    }
    if !(1..=READ_CONNECTIONS_MAX).contains(&options.read_connections_max) {
        return Err(StoreError::InvalidOptions {
            detail: format!(
                "read_connections_max is {}, must be between 1 and {READ_CONNECTIONS_MAX}",
                options.read_connections_max
            ),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadOnly,
    ReadWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Missing,
    Empty,
    NonEmpty,
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Size of the SQLite file header; a non-empty file shorter than this is
/// not a database.
const SQLITE_HEADER_BYTES: usize = 100;

/// Checks with plain file IO (never writing) that `path` is a file we may
/// open and that it looks like a SQLite database, so the errors name the
/// real cause ("permission denied", "is a directory") rather than SQLite's
/// generic "unable to open database file".
fn precheck_file(path: &Path, access: Access) -> Result<Existing, StoreError> {
    let unreadable = |source: io::Error| StoreError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            if access == Access::ReadWrite {
                let parent = path
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !parent.is_dir() {
                    return Err(unreadable(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("directory {} does not exist", parent.display()),
                    )));
                }
            }
            return Ok(Existing::Missing);
        }
        Err(err) => return Err(unreadable(err)),
    };
    if metadata.is_dir() {
        return Err(unreadable(io::Error::new(
            io::ErrorKind::IsADirectory,
            "the path is a directory, not a database file",
        )));
    }
    if !metadata.is_file() {
        return Err(unreadable(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is not a regular file",
        )));
    }
    // Opening for writing without create or truncate changes nothing, but
    // fails early and clearly on a file we could read and not write.
    let mut file = match access {
        Access::ReadOnly => fs::File::open(path),
        Access::ReadWrite => fs::OpenOptions::new().read(true).write(true).open(path),
    }
    .map_err(unreadable)?;
    if metadata.len() == 0 {
        // SQLite treats an empty file as an empty database.
        return Ok(Existing::Empty);
    }
    let mut header = Vec::with_capacity(SQLITE_HEADER_BYTES);
    file.by_ref()
        .take(SQLITE_HEADER_BYTES as u64)
        .read_to_end(&mut header)
        .map_err(unreadable)?;
    if header.len() < SQLITE_HEADER_BYTES || !header.starts_with(SQLITE_HEADER_MAGIC) {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "not a SQLite database (the file header is wrong)".to_owned(),
        });
    }
    Ok(Existing::NonEmpty)
}

/// Mode of the store file: the owner only. SQLite gives the WAL and the
/// shared-memory file the database file's mode, so all three are private.
const STORE_FILE_MODE: u32 = 0o600;

/// Creates an empty store file, owner-only from the start (SQLite treats an
/// empty file as an empty database), so the store never exists readable by
/// others, whatever the process's file creation mask.
fn create_owner_only(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(STORE_FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        // Someone created it since the check: SQLite opens what is there.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads the schema version and runs `PRAGMA quick_check` on a read-only
/// connection, refusing a file that is too new or damaged before anything
/// opens it for writing.
fn check_existing_database(path: &Path, options: &StoreOptions) -> Result<(), StoreError> {
    let connection = open_read_only_connection(path, options.busy_timeout)
        .map_err(|err| classify_open_error(path, err))?;
    let found =
        migrations::schema_version(&connection).map_err(|err| classify_open_error(path, err))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let problems = (|| -> rusqlite::Result<Vec<String>> {
        let mut statement =
            connection.prepare(&format!("PRAGMA quick_check({INTEGRITY_PROBLEMS_MAX})"))?;
        let lines = statement
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(lines)
    })()
    .map_err(|err| classify_open_error(path, err))?;
    if !(problems.len() == 1 && problems[0] == "ok") {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("quick_check failed: {}", problems.join("; ")),
        });
    }
    Ok(())
}

fn open_read_only_connection(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(busy_timeout)?;
    keep_plans(&connection)?;
    Ok(connection)
}

/// Every statement keeps the plan it was prepared with. Without this,
/// SQLite re-parses and re-plans a cached statement whenever a new value is
/// bound to a parameter that a partial index's condition mentions (the
/// flight transitions and queue reads), which cost a tenth of the CPU of a
/// busy broker. Our queries name the partial indexes' conditions as
/// literals where they want them.
fn keep_plans(connection: &Connection) -> rusqlite::Result<()> {
    connection.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

fn configure_write_connection(
    connection: &Connection,
    options: &StoreOptions,
) -> rusqlite::Result<()> {
    connection.busy_timeout(options.busy_timeout)?;
    keep_plans(connection)?;
    let journal_mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "the file system does not support WAL (journal mode is {journal_mode})"
            )),
        ));
    }
    connection.pragma_update(None, "synchronous", options.synchronous.pragma_value())?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Maps an error from opening or first reading a database to the typed
/// error that names the path and the cause.
fn classify_open_error(path: &Path, err: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    let code = match &err {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure.code),
        _ => None,
    };
    match code {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: err.to_string(),
        },
        Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::PermissionDenied)
        | Some(ErrorCode::ReadOnly)
        | Some(ErrorCode::SystemIoFailure) => StoreError::Unreadable {
            path: path.to_path_buf(),
            source: io::Error::other(err),
        },
        _ => StoreError::Sqlite(err),
    }
}

/// Parses a state or vocabulary word read from disk; a word this binary
/// does not know is a malformed row, not a panic.
pub(crate) fn parse_word<W>(table: &'static str, id: &str, word: &str) -> Result<W, StoreError>
where
    W: FromStr<Err = UnknownWord>,
{
    word.parse::<W>().map_err(|err| StoreError::MalformedRow {
        table,
        id: id.to_owned(),
        detail: err.to_string(),
    })
}

/// Parses an optional word column.
pub(crate) fn parse_optional_word<W>(
    table: &'static str,
    id: &str,
    word: Option<String>,
) -> Result<Option<W>, StoreError>
where
    W: FromStr<Err = UnknownWord>,
{
    word.map(|word| parse_word(table, id, &word)).transpose()
}

/// Clamps a caller's list limit to [`LIST_ROWS_MAX`], as an SQL integer.
pub(crate) fn list_limit(limit: usize) -> i64 {
    i64::try_from(limit.min(LIST_ROWS_MAX)).unwrap_or(0)
}

/// Cuts a failure detail to [`FAILURE_DETAIL_CHARS_MAX`] characters.
pub(crate) fn clamp_detail(detail: &str) -> String {
    match detail.char_indices().nth(FAILURE_DETAIL_CHARS_MAX) {
        None => detail.to_owned(),
        Some((cut, _)) => detail[..cut].to_owned(),
    }
}

/// Checks that a failure reason accompanies exactly the states that may
/// carry one: required for `failed`, allowed for `cancelled`, refused
/// otherwise. The schema enforces the same rule; checking here first turns
/// a constraint violation into a clear error.
pub(crate) fn check_failure_fits(
    kind: &'static str,
    id: &str,
    to_word: &'static str,
    has_failure: bool,
) -> Result<(), StoreError> {
    match (to_word, has_failure) {
        ("failed", false) => Err(StoreError::InvalidRequest {
            detail: format!("{kind} {id}: moving to `failed` needs a failure reason"),
        }),
        ("failed", true) | ("cancelled", _) | (_, false) => Ok(()),
        (_, true) => Err(StoreError::InvalidRequest {
            detail: format!("{kind} {id}: `{to_word}` cannot carry a failure reason"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_stable() {
        let path = PathBuf::from("/x/scout.db");
        let cases: Vec<(StoreError, &str)> = vec![
            (
                StoreError::SchemaTooNew {
                    path: path.clone(),
                    found: 9,
                    supported: 1,
                },
                "STORE_SCHEMA_TOO_NEW",
            ),
            (
                StoreError::Corrupt {
                    path: path.clone(),
                    detail: "x".into(),
                },
                "STORE_CORRUPT",
            ),
            (
                StoreError::Unreadable {
                    path,
                    source: io::Error::other("x"),
                },
                "STORE_UNREADABLE",
            ),
            (StoreError::Closed, "STORE_CLOSED"),
            (
                StoreError::NotFound {
                    kind: "flight",
                    id: "f".into(),
                },
                "NOT_FOUND",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn too_new_message_says_what_to_do() {
        let err = StoreError::SchemaTooNew {
            path: PathBuf::from("/home/a/scout.db"),
            found: 7,
            supported: 1,
        };
        assert_eq!(
            err.to_string(),
            "the store at /home/a/scout.db was written by a newer scout (schema 7); \
             this scout knows up to schema 1; upgrade scout"
        );
    }

    #[test]
    fn details_are_cut_on_a_char_boundary() {
        let long = "é".repeat(FAILURE_DETAIL_CHARS_MAX + 10);
        let cut = clamp_detail(&long);
        assert_eq!(cut.chars().count(), FAILURE_DETAIL_CHARS_MAX);
        assert_eq!(clamp_detail("short"), "short");
    }

    #[test]
    fn failure_reason_fits_only_failed_and_cancelled() {
        assert!(check_failure_fits("flight", "f", "failed", true).is_ok());
        assert!(check_failure_fits("flight", "f", "failed", false).is_err());
        assert!(check_failure_fits("flight", "f", "cancelled", false).is_ok());
        assert!(check_failure_fits("flight", "f", "cancelled", true).is_ok());
        assert!(check_failure_fits("flight", "f", "running", true).is_err());
        assert!(check_failure_fits("flight", "f", "running", false).is_ok());
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let options = StoreOptions {
            write_batch_max: 0,
            ..StoreOptions::default()
        };
        let err = validate_options(&options).unwrap_err();
        assert_eq!(err.code(), "STORE_INVALID_OPTIONS");
    }
}
