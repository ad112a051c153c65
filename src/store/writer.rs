//! The single writer thread and its group commit.
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every
//! commit costs an fsync. So one dedicated thread owns the only write
//! connection: it blocks for the first request, takes whatever else is
//! queued (up to the batch limit), runs each request inside its own
//! SAVEPOINT of one transaction, commits once, and only then replies to
//! every request. Many concurrent writers thus share one fsync, and a request
//! that fails rolls back only its own savepoint.
//!
//! Inline mode ([`Writer::start_inline`], `StoreOptions::inline_writes`) is
//! the same writer without the thread: the connection sits behind a mutex
//! and each request runs on the caller's thread as a batch of one, with the
//! same savepoint, commit and reply rules. netsim uses it so that a write
//! never leaves the simulated runtime's thread.

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle, ThreadId};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::checkpointer::{Checkpointer, WAL_AUTOCHECKPOINT_FALLBACK_PAGES};
use super::{StoreError, StoreOptions, WRITE_QUEUE_DEPTH_MAX};

/// The sending side of the write queue.
pub(crate) type RequestSender = mpsc::Sender<Box<dyn PendingWrite>>;

/// Counters of the writer thread, cheap enough to keep always on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteMetrics {
    /// Transactions committed.
    pub batches_committed: u64,
    /// Requests whose changes were committed.
    pub requests_committed: u64,
    /// Requests that returned an error (their savepoint was rolled back) or
    /// whose batch failed to commit.
    pub requests_failed: u64,
    /// Transactions that failed to commit (every request in them failed).
    pub batches_failed: u64,
}

/// Builds a type-erased request for the writer and the receiver of its
/// reply.
pub(crate) fn request<T, F>(
    f: F,
) -> (
    Box<dyn PendingWrite>,
    oneshot::Receiver<Result<T, StoreError>>,
)
where
    F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    let (reply, receiver) = oneshot::channel();
    (Box::new(Request { f, reply }), receiver)
}

/// A queued request, before it runs.
pub(crate) trait PendingWrite: Send {
    /// Runs the request's closure inside the open transaction.
    fn run(self: Box<Self>, transaction: &Transaction<'_>) -> Box<dyn Completion>;
    /// Replies with `error` without running the closure.
    fn abort(self: Box<Self>, error: StoreError);
}

/// A request that has run and waits for the commit before replying.
pub(crate) trait Completion: Send {
    /// Whether the closure succeeded (its savepoint is kept).
    fn succeeded(&self) -> bool;
    /// Replies: the closure's value if it and the commit succeeded, the
    /// closure's error if it failed, `CommitFailed` otherwise.
    fn finish(self: Box<Self>, commit: Result<(), &str>);
}

struct Request<T, F> {
    f: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> PendingWrite for Request<T, F>
where
    F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Box<Self>, transaction: &Transaction<'_>) -> Box<dyn Completion> {
        let Request { f, reply } = *self;
        // A panicking closure must not take the writer thread (and with it
        // every later write) down; it fails like any other request.
        let result =
            panic::catch_unwind(AssertUnwindSafe(|| f(transaction))).unwrap_or_else(|payload| {
                Err(StoreError::RequestPanicked {
                    detail: panic_message(payload.as_ref()),
                })
            });
        Box::new(Done { result, reply })
    }

    fn abort(self: Box<Self>, error: StoreError) {
        // The caller may have stopped waiting; that is not the writer's
        // problem.
        let _ = self.reply.send(Err(error));
    }
}

struct Done<T> {
    result: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> Completion for Done<T> {
    fn succeeded(&self) -> bool {
        self.result.is_ok()
    }

    fn finish(self: Box<Self>, commit: Result<(), &str>) {
        let reply = match (self.result, commit) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(detail)) => Err(StoreError::CommitFailed {
                detail: detail.to_owned(),
            }),
            (Err(err), _) => Err(err),
        };
        let _ = self.reply.send(reply);
    }
}

/// The running writer thread and the way to reach it.
pub(crate) struct Writer {
    /// `None` once the store is closing; dropping the last sender is what
    /// tells the thread to drain and stop.
    sender: Mutex<Option<RequestSender>>,
    thread: Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
    thread_id: ThreadId,
    counters: Arc<Counters>,
    /// Inline mode: the write connection, used on the caller's thread;
    /// `Some(None)` once closed.
    inline: Option<Mutex<Option<Connection>>>,
}

#[derive(Default)]
struct Counters {
    batches_committed: AtomicU64,
    requests_committed: AtomicU64,
    requests_failed: AtomicU64,
    batches_failed: AtomicU64,
}

impl Writer {
    /// Starts the writer thread on `connection`, which must already be
    /// configured and migrated.
    pub(crate) fn start(
        connection: Connection,
        path: &Path,
        options: &StoreOptions,
    ) -> Result<Writer, StoreError> {
        connection.pragma_update(
            None,
            "wal_autocheckpoint",
            WAL_AUTOCHECKPOINT_FALLBACK_PAGES,
        )?;
        let checkpointer = Checkpointer::start(path, options.busy_timeout, options.synchronous)?;
        let batch_max = options.write_batch_max;
        let (sender, receiver) = mpsc::channel(WRITE_QUEUE_DEPTH_MAX);
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = thread::Builder::new()
            .name("scout-store-writer".to_owned())
            .spawn(move || {
                run_writer(
                    connection,
                    receiver,
                    batch_max,
                    checkpointer,
                    &thread_counters,
                )
            })
            .map_err(|err| StoreError::CommitFailed {
                detail: format!("cannot start the writer thread: {err}"),
            })?;
        Ok(Writer {
            sender: Mutex::new(Some(sender)),
            thread_id: thread.thread().id(),
            thread: Mutex::new(Some(thread)),
            counters,
            inline: None,
        })
    }

    /// A writer without a thread: every request runs on the caller's thread
    /// in [`Writer::write_inline`]. SQLite's own automatic checkpoint (inside
    /// a commit) keeps the WAL short, so no checkpointer thread runs either.
    pub(crate) fn start_inline(connection: Connection) -> Writer {
        Writer {
            sender: Mutex::new(None),
            thread: Mutex::new(None),
            thread_id: thread::current().id(),
            counters: Arc::new(Counters::default()),
            inline: Some(Mutex::new(Some(connection))),
        }
    }

    /// Whether requests run on the caller's thread.
    pub(crate) fn is_inline(&self) -> bool {
        self.inline.is_some()
    }

    /// Inline mode: runs `request` now as a batch of one and replies before
    /// returning; a closed store replies `Closed`.
    pub(crate) fn write_inline(&self, request: Box<dyn PendingWrite>) {
        let Some(slot) = &self.inline else {
            request.abort(StoreError::Closed);
            return;
        };
        let mut connection = slot.lock().unwrap_or_else(PoisonError::into_inner);
        match connection.as_mut() {
            Some(connection) => {
                let mut batch = vec![request];
                commit_batch(connection, &mut batch, &self.counters);
            }
            None => request.abort(StoreError::Closed),
        }
    }

    /// A sender for one request, or `None` once the store is closing.
    pub(crate) fn sender(&self) -> Option<RequestSender> {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn metrics(&self) -> WriteMetrics {
        WriteMetrics {
            batches_committed: self.counters.batches_committed.load(Ordering::Relaxed),
            requests_committed: self.counters.requests_committed.load(Ordering::Relaxed),
            requests_failed: self.counters.requests_failed.load(Ordering::Relaxed),
            batches_failed: self.counters.batches_failed.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn queue_len(&self) -> usize {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |sender| sender.max_capacity() - sender.capacity())
    }

    /// Stops accepting requests. The thread commits what is queued and then
    /// ends, once every sender cloned before this call is gone.
    pub(crate) fn refuse_new_requests(&self) {
        drop(
            self.sender
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// Waits for the thread to commit what is queued and close the
    /// connection. Call [`Writer::refuse_new_requests`] first.
    pub(crate) fn join(&self) -> Result<(), StoreError> {
        // A request closure that holds the last `Store` clone drops it on
        // the writer thread itself; joining there would wait forever. The
        // thread ends by itself once the queue is empty.
        if let Some(slot) = &self.inline {
            let connection = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            return match connection {
                Some(connection) => close_connection(connection),
                None => Ok(()),
            };
        }
        if thread::current().id() == self.thread_id {
            return Ok(());
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match thread {
            None => Ok(()),
            Some(thread) => thread.join().unwrap_or_else(|payload| {
                Err(StoreError::CommitFailed {
                    detail: format!(
                        "the writer thread panicked: {}",
                        panic_message(payload.as_ref())
                    ),
                })
            }),
        }
    }
}

fn run_writer(
    mut connection: Connection,
    mut receiver: mpsc::Receiver<Box<dyn PendingWrite>>,
    batch_max: usize,
    mut checkpointer: Checkpointer,
    counters: &Counters,
) -> Result<(), StoreError> {
    let mut batch: Vec<Box<dyn PendingWrite>> = Vec::with_capacity(batch_max);
    // Blocks for the first request, then takes what else is queued; returns
    // 0 only when every sender is gone and the queue is empty.
    while receiver.blocking_recv_many(&mut batch, batch_max) > 0 {
        if commit_batch(&mut connection, &mut batch, counters) {
            checkpointer.batch_committed();
        }
    }
    // The final checkpoint below must not race a passive one.
    checkpointer.stop();
    close_connection(connection)
}

/// Checkpoints and closes the write connection. A truncating checkpoint on
/// the way out leaves a single, complete database file behind (the WAL is
/// emptied), which is what backups and `scout doctor` expect to find.
fn close_connection(connection: Connection) -> Result<(), StoreError> {
    if let Err(err) = connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(cause = %err, "checkpoint on close failed");
    }
    connection
        .close()
        .map_err(|(_, err)| StoreError::Sqlite(err))
}

/// Names the savepoint every request runs in. Savepoints nest by name, and
/// each request's savepoint is released before the next one starts.
const SAVEPOINT_BEGIN: &str = "SAVEPOINT scout_request";
const SAVEPOINT_RELEASE: &str = "RELEASE scout_request";
const SAVEPOINT_ROLLBACK: &str = "ROLLBACK TO scout_request";

/// Runs and commits one batch, then replies to every request in it.
/// Returns whether the batch committed.
fn commit_batch(
    connection: &mut Connection,
    batch: &mut Vec<Box<dyn PendingWrite>>,
    counters: &Counters,
) -> bool {
    let n_requests = batch.len() as u64;
    let transaction = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(transaction) => transaction,
        Err(err) => {
            let detail = format!("cannot begin the transaction: {err}");
            tracing::error!(cause = %err, "write batch could not begin");
            for request in batch.drain(..) {
                request.abort(StoreError::CommitFailed {
                    detail: detail.clone(),
                });
            }
            counters.batches_failed.fetch_add(1, Ordering::Relaxed);
            counters
                .requests_failed
                .fetch_add(n_requests, Ordering::Relaxed);
            return false;
        }
    };

    let mut completions: Vec<Box<dyn Completion>> = Vec::with_capacity(batch.len());
    let mut batch_error: Option<String> = None;
    for request in batch.drain(..) {
        if let Some(detail) = &batch_error {
            request.abort(StoreError::CommitFailed {
                detail: detail.clone(),
            });
            continue;
        }
        if let Err(err) = execute(&transaction, SAVEPOINT_BEGIN) {
            batch_error = Some(format!("cannot open a savepoint: {err}"));
            request.abort(StoreError::CommitFailed {
                detail: format!("cannot open a savepoint: {err}"),
            });
            continue;
        }
        let completion = request.run(&transaction);
        // SQLite ends the whole transaction by itself on some errors (disk
        // full, IO error); then every earlier request's changes are gone
        // too, and the batch must fail as a whole.
        if transaction.is_autocommit() {
            batch_error = Some("the transaction was rolled back by SQLite".to_owned());
        } else {
            let closed = if completion.succeeded() {
                execute(&transaction, SAVEPOINT_RELEASE)
            } else {
                execute(&transaction, SAVEPOINT_ROLLBACK)
                    .and_then(|()| execute(&transaction, SAVEPOINT_RELEASE))
            };
            if let Err(err) = closed {
                batch_error = Some(format!("cannot close a savepoint: {err}"));
            }
        }
        completions.push(completion);
    }

    let commit = match batch_error {
        Some(detail) => Err(detail),
        None => transaction
            .commit()
            .map_err(|err| format!("commit failed: {err}")),
    };
    match &commit {
        Ok(()) => {
            counters.batches_committed.fetch_add(1, Ordering::Relaxed);
            let n_succeeded = completions.iter().filter(|c| c.succeeded()).count() as u64;
            counters
                .requests_committed
                .fetch_add(n_succeeded, Ordering::Relaxed);
            counters
                .requests_failed
                .fetch_add(n_requests - n_succeeded, Ordering::Relaxed);
        }
        Err(detail) => {
            tracing::error!(cause = %detail, requests = n_requests, "write batch failed");
            counters.batches_failed.fetch_add(1, Ordering::Relaxed);
            counters
                .requests_failed
                .fetch_add(n_requests, Ordering::Relaxed);
        }
    }
    // Replies go out only now: nobody hears "done" before the commit.
    let commit_ref = commit.as_ref().map(|_| ()).map_err(String::as_str);
    for completion in completions {
        completion.finish(commit_ref);
    }
    commit.is_ok()
}

fn execute(transaction: &Transaction<'_>, sql: &str) -> rusqlite::Result<()> {
    transaction.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
