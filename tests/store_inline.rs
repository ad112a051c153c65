//! The store's inline mode (`StoreOptions::inline_writes`), which netsim
//! runs brokers with: each write runs and commits on the caller's thread
//! before the call returns, with the same savepoint and reply rules as the
//! writer thread.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use common::store::insert;
use scout::store::{Store, StoreError, StoreOptions, Synchronous};

fn open_inline(path: &std::path::Path) -> Store {
    let options = StoreOptions {
        synchronous: Synchronous::Normal,
        inline_writes: true,
        ..StoreOptions::default()
    };
    Store::open(path, options).expect("open").0
}

fn count(store: &Store) -> i64 {
    store
        .read(|connection| {
            Ok(connection.query_row("SELECT count(*) FROM invocations", [], |row| row.get(0))?)
        })
        .expect("read")
}

/// Polls a future once; inline writes must be ready on the first poll.
fn poll_once<T>(future: impl Future<Output = T>) -> Poll<T> {
    let mut future = pin!(future);
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn a_write_commits_on_the_callers_thread_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_inline(&dir.path().join("scout.db"));
    let caller = std::thread::current().id();
    let ran_on = poll_once(store.write(move |transaction| {
        insert("a")(transaction)?;
        Ok(std::thread::current().id())
    }));
    match ran_on {
        Poll::Ready(Ok(thread)) => assert_eq!(thread, caller),
        other => panic!("not done on the first poll: {other:?}"),
    }
    // Committed: a reader sees it at once.
    assert_eq!(count(&store), 1);
    let metrics = store.write_metrics();
    assert_eq!(metrics.batches_committed, 1);
    assert_eq!(metrics.requests_committed, 1);
    assert_eq!(store.write_queue_len(), 0);
}

#[test]
fn a_failing_or_panicking_request_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_inline(&dir.path().join("scout.db"));
    let failed = poll_once(store.write(|transaction| {
        insert("rolled-back")(transaction)?;
        Err::<(), _>(StoreError::InvalidRequest {
            detail: "refused".into(),
        })
    }));
    assert!(matches!(
        failed,
        Poll::Ready(Err(StoreError::InvalidRequest { .. }))
    ));
    let panicked = poll_once(store.write(|_| -> Result<(), StoreError> { panic!("boom") }));
    assert!(matches!(
        panicked,
        Poll::Ready(Err(StoreError::RequestPanicked { .. }))
    ));
    assert!(matches!(
        poll_once(store.write(insert("kept"))),
        Poll::Ready(Ok(()))
    ));
    let duplicate = poll_once(store.write(insert("kept")));
    assert!(matches!(
        duplicate,
        Poll::Ready(Err(StoreError::AlreadyExists { .. }))
    ));
    assert_eq!(count(&store), 1);
    let metrics = store.write_metrics();
    assert_eq!(metrics.requests_committed, 1);
    assert_eq!(metrics.requests_failed, 3);
}

#[test]
fn blocking_writes_work_on_a_runtime_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_inline(&dir.path().join("scout.db"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The writer thread's blocking write panics on a runtime thread; the
    // inline one has nothing to wait for.
    runtime.block_on(async {
        store.write_blocking(insert("a")).expect("write");
        store.write(insert("b")).await.expect("write");
    });
    assert_eq!(count(&store), 2);
}

#[test]
fn closing_keeps_what_was_written_and_refuses_more() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scout.db");
    let store = open_inline(&path);
    assert!(matches!(
        poll_once(store.write(insert("a"))),
        Poll::Ready(Ok(()))
    ));
    let other = store.clone();
    store.close().expect("close");
    let refused = poll_once(other.write(insert("b")));
    assert!(
        matches!(refused, Poll::Ready(Err(StoreError::Closed))),
        "{refused:?}"
    );
    drop(other);
    // The file is complete: the writer-thread mode reads it back.
    let (reopened, _) = Store::open(&path, StoreOptions::default()).expect("reopen");
    assert_eq!(count(&reopened), 1);
    reopened.close().expect("close");
}
