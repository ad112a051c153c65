//! The writer thread on a real file: concurrent writers share commits, a
//! failing or panicking request fails alone, a failed commit fails its whole
//! batch, readers see only committed data without waiting for the writer,
//! and close commits what was queued.
//!
//! Tests that need several requests in one batch hold the writer inside a
//! "blocker" request, queue the others, wait (bounded) until the queue holds
//! them all, then release it: the next batch then contains exactly them.

mod common;

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use common::store::insert;
use scout::store::invocations::Invocation;
use scout::store::{Store, StoreError, StoreOptions};
use tokio::task::JoinHandle;

/// How long any wait in these tests may take before the test fails.
const WAIT_BOUND: Duration = Duration::from_secs(30);

fn stored(store: &Store, invocation_id: &str) -> bool {
    store
        .read(|connection| Invocation::exists(connection, invocation_id))
        .unwrap()
}

fn n_invocations(store: &Store) -> i64 {
    store
        .read(|connection| {
            Ok(connection.query_row("SELECT count(*) FROM invocations", [], |row| row.get(0))?)
        })
        .unwrap()
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path().join("scout.db"), StoreOptions::default()).unwrap();
    (dir, store)
}

/// A request parked inside the writer until released.
struct Blocker {
    release: std_mpsc::Sender<()>,
    done: JoinHandle<Result<(), StoreError>>,
}

impl Blocker {
    async fn hold(store: &Store, invocation_id: &str) -> Blocker {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std_mpsc::channel::<()>();
        let store = store.clone();
        let insert_blocker = insert(invocation_id);
        let done = tokio::spawn(async move {
            store
                .write(move |transaction| {
                    insert_blocker(transaction)?;
                    let _ = ready_tx.send(());
                    // Bounded, so a failing test cannot hang the suite.
                    let _ = release_rx.recv_timeout(WAIT_BOUND);
                    Ok(())
                })
                .await
        });
        tokio::time::timeout(WAIT_BOUND, ready_rx)
            .await
            .expect("the blocker reached the writer in time")
            .unwrap();
        Blocker { release, done }
    }

    async fn release(self) {
        self.release.send(()).unwrap();
        self.done.await.unwrap().unwrap();
    }
}

/// Waits until `n` requests are queued behind the writer.
async fn wait_for_queue(store: &Store, n: usize) {
    let deadline = Instant::now() + WAIT_BOUND;
    while store.write_queue_len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} requests queued after {WAIT_BOUND:?}",
            store.write_queue_len()
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_writers_share_commits() {
    const N_TASKS: usize = 64;
    const N_INSERTS_PER_TASK: usize = 200;
    let (_dir, store) = open();
    let mut tasks = Vec::with_capacity(N_TASKS);
    for task_idx in 0..N_TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for insert_idx in 0..N_INSERTS_PER_TASK {
                store
                    .write(insert(&format!("inv-{task_idx}-{insert_idx}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let n_requests = (N_TASKS * N_INSERTS_PER_TASK) as u64;
    assert_eq!(n_invocations(&store), n_requests as i64);
    let metrics = store.write_metrics();
    assert_eq!(metrics.requests_committed, n_requests);
    assert_eq!(metrics.requests_failed, 0);
    assert!(
        metrics.batches_committed < n_requests,
        "every request got its own commit: {metrics:?}"
    );
    eprintln!(
        "{n_requests} requests in {} batches (mean {:.1})",
        metrics.batches_committed,
        n_requests as f64 / metrics.batches_committed as f64
    );
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_does_not_fail_its_batch() {
    let (_dir, store) = open();
    let blocker = Blocker::hold(&store, "blocker").await;

    // The blocker's row is written but not committed: readers do not see
    // it, and they get their answer while the writer holds its transaction.
    assert!(!stored(&store, "blocker"));

    let before = store.write_metrics();
    let ok_first = tokio::spawn({
        let store = store.clone();
        async move { store.write(insert("ok-1")).await }
    });
    wait_for_queue(&store, 1).await;
    let refused = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .write(|transaction| {
                    insert("refused")(transaction)?;
                    Err::<(), _>(StoreError::InvalidRequest {
                        detail: "changed my mind".into(),
                    })
                })
                .await
        }
    });
    wait_for_queue(&store, 2).await;
    let constraint = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .write(|transaction| {
                    insert("constraint")(transaction)?;
                    // The same primary key again, without ON CONFLICT.
                    transaction.execute(
                        "INSERT INTO invocations SELECT * FROM invocations
                         WHERE invocation_id = 'constraint'",
                        [],
                    )?;
                    Ok(())
                })
                .await
        }
    });
    wait_for_queue(&store, 3).await;
    let ok_last = tokio::spawn({
        let store = store.clone();
        async move { store.write(insert("ok-2")).await }
    });
    wait_for_queue(&store, 4).await;
    blocker.release().await;

    ok_first.await.unwrap().unwrap();
    ok_last.await.unwrap().unwrap();
    let refused = refused.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), "INVALID_REQUEST");
    let constraint = constraint.await.unwrap().unwrap_err();
    assert_eq!(constraint.code(), "STORE_SQLITE");
    assert!(constraint.to_string().contains("UNIQUE"), "{constraint}");

    assert!(stored(&store, "blocker"));
    assert!(stored(&store, "ok-1"));
    assert!(stored(&store, "ok-2"));
    assert!(
        !stored(&store, "refused"),
        "a failed request's writes roll back"
    );
    assert!(!stored(&store, "constraint"));

    let after = store.write_metrics();
    assert_eq!(
        after.batches_committed - before.batches_committed,
        2,
        "the blocker's batch, then one batch for the four queued requests"
    );
    assert_eq!(after.requests_committed - before.requests_committed, 3);
    assert_eq!(after.requests_failed - before.requests_failed, 2);
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_fails_every_request_in_the_batch() {
    let (_dir, store) = open();
    let blocker = Blocker::hold(&store, "blocker").await;
    let innocent = tokio::spawn({
        let store = store.clone();
        async move { store.write(insert("innocent")).await }
    });
    wait_for_queue(&store, 1).await;
    // A deferred foreign key violation passes the request's own savepoint
    // and is only detected by COMMIT, which then fails for the batch.
    let saboteur = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .write(|transaction| {
                    transaction.execute_batch("PRAGMA defer_foreign_keys = ON")?;
                    transaction.execute(
                        "INSERT INTO flights (flight_id, invocation_id, state, created_at_ms,
                             updated_at_ms)
                         VALUES ('f-1', 'no-such-invocation', 'queued', 0, 0)",
                        [],
                    )?;
                    Ok(())
                })
                .await
        }
    });
    wait_for_queue(&store, 2).await;
    blocker.release().await;

    for result in [innocent.await.unwrap(), saboteur.await.unwrap()] {
        let err = result.unwrap_err();
        assert_eq!(err.code(), "STORE_COMMIT_FAILED");
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
    }
    assert!(!stored(&store, "innocent"));
    assert_eq!(store.write_metrics().batches_failed, 1);

    // The writer goes on with the next batch.
    store.write(insert("after")).await.unwrap();
    assert!(stored(&store, "after"));
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_request_fails_alone() {
    let (_dir, store) = open();
    let blocker = Blocker::hold(&store, "blocker").await;
    let panicking = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .write(|transaction| -> Result<(), StoreError> {
                    insert("panicked")(transaction)?;
                    panic!("a bug in a request");
                })
                .await
        }
    });
    wait_for_queue(&store, 1).await;
    let neighbour = tokio::spawn({
        let store = store.clone();
        async move { store.write(insert("neighbour")).await }
    });
    wait_for_queue(&store, 2).await;
    blocker.release().await;

    let err = panicking.await.unwrap().unwrap_err();
    assert_eq!(err.code(), "STORE_REQUEST_PANICKED");
    assert!(err.to_string().contains("a bug in a request"), "{err}");
    neighbour.await.unwrap().unwrap();
    assert!(stored(&store, "neighbour"));
    assert!(!stored(&store, "panicked"));
    store.write(insert("later")).await.unwrap();
    store.close().unwrap();
}

#[test]
fn plain_threads_write_blocking() {
    const N_THREADS: usize = 8;
    const N_INSERTS_PER_THREAD: usize = 50;
    let (_dir, store) = open();
    std::thread::scope(|scope| {
        for thread_idx in 0..N_THREADS {
            let store = store.clone();
            scope.spawn(move || {
                for insert_idx in 0..N_INSERTS_PER_THREAD {
                    store
                        .write_blocking(insert(&format!("inv-{thread_idx}-{insert_idx}")))
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(
        n_invocations(&store),
        (N_THREADS * N_INSERTS_PER_THREAD) as i64
    );
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_commits_what_was_queued_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scout.db");
    let (store, _) = Store::open(&path, StoreOptions::default()).unwrap();
    let blocker = Blocker::hold(&store, "blocker").await;
    const N_QUEUED: usize = 10;
    let mut queued = Vec::new();
    for idx in 0..N_QUEUED {
        let writer = store.clone();
        queued.push(tokio::spawn(async move {
            writer.write(insert(&format!("queued-{idx}"))).await
        }));
        wait_for_queue(&store, idx + 1).await;
    }
    let closing = tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.close()
    });
    // Wait until the close has taken effect before letting the writer go
    // on, so the queued requests drain after it.
    let deadline = Instant::now() + WAIT_BOUND;
    while !store.is_closed() {
        assert!(Instant::now() < deadline, "close did not start");
        tokio::task::yield_now().await;
    }
    let late = store.write(insert("late")).await.unwrap_err();
    assert_eq!(late.code(), "STORE_CLOSED");
    blocker.release().await;
    closing.await.unwrap().unwrap();
    for task in queued {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.read(|_| Ok(())).unwrap_err().code(), "STORE_CLOSED");
    drop(store);

    let (store, _) = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(n_invocations(&store), N_QUEUED as i64 + 1);
    assert!(!stored(&store, "late"));
    store.close().unwrap();
}
