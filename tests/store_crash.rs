//! Durability under a crash: a child process commits invocations as fast as
//! it can and reports each one only after its commit returned; the parent
//! kills it with SIGKILL mid-stream, reopens the store, and checks that
//! every reported invocation is there and the file passes
//! `PRAGMA integrity_check`.
//!
//! The child is this same test binary, re-executed to run only
//! [`crash_child_writes_until_killed`] with `SCOUT_STORE_CRASH_CHILD` set to
//! the database path; without that variable the child test returns at once.
//! SIGKILL ends the process without any cleanup, which is the crash a
//! broker sees from the OOM killer or `kill -9`; it does not simulate power
//! loss (the kernel still holds written pages), which `synchronous=FULL`
//! covers by fsyncing before each commit returns.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use scout::store::invocations::{InsertOutcome, Invocation};
use scout::store::{Store, StoreError, StoreOptions, Synchronous};
use scout_mesh::lifecycle::{DeliveryPolicy, InvocationAction};

/// Names the database the child writes to; its absence means "not a child".
const CHILD_ENV: &str = "SCOUT_STORE_CRASH_CHILD";

/// The child test's name, for `--exact`.
const CHILD_TEST: &str = "crash_child_writes_until_killed";

/// Reported commits to wait for before the kill: enough that the kill lands
/// in the middle of a steady stream of group commits.
const COMMITTED_BEFORE_KILL: usize = 300;

/// Concurrent writer tasks in the child, so commits are shared batches.
const CHILD_WRITERS: usize = 8;

/// Writes per child task; a child whose parent died ends by itself.
const CHILD_WRITES_PER_TASK_MAX: usize = 100_000;

/// The whole exchange with the child must finish within this bound.
const DEADLINE: Duration = Duration::from_secs(60);

const COMMITTED_PREFIX: &str = "committed ";

fn invocation(invocation_id: String) -> Invocation {
    Invocation {
        invocation_id,
        action: InvocationAction::Execute,
        body: "crash test".to_owned(),
        conversation_id: None,
        origin_node: "node-a".to_owned(),
        target: "@fabric".to_owned(),
        deadline_ms: None,
        delivery_policy: DeliveryPolicy::Durable,
        created_at_ms: 1_700_000_000_000,
        from_instance: None,
        chain: Vec::new(),
    }
}

#[test]
fn crash_child_writes_until_killed() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let options = StoreOptions {
            synchronous: Synchronous::Full,
            ..StoreOptions::default()
        };
        let (store, _) = Store::open(PathBuf::from(path), options).unwrap();
        let mut writers = tokio::task::JoinSet::new();
        for _ in 0..CHILD_WRITERS {
            let store = store.clone();
            writers.spawn(async move {
                for _ in 0..CHILD_WRITES_PER_TASK_MAX {
                    let invocation_id = store.env().new_id();
                    let row = invocation(invocation_id.clone());
                    let outcome = store
                        .write(move |transaction| Invocation::insert(transaction, &row))
                        .await
                        .unwrap();
                    assert_eq!(outcome, InsertOutcome::Inserted);
                    // One write of one whole line, flushed, and only after
                    // the commit returned.
                    let mut stdout = std::io::stdout().lock();
                    let printed = stdout
                        .write_all(format!("{COMMITTED_PREFIX}{invocation_id}\n").as_bytes())
                        .and_then(|()| stdout.flush());
                    if printed.is_err() {
                        // The parent is gone; stop writing.
                        return;
                    }
                }
            });
        }
        while writers.join_next().await.is_some() {}
    });
}

#[test]
fn sigkill_after_commit_loses_nothing() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scout.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let (line_tx, line_rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let stdout_reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if line_tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + DEADLINE;
    let mut committed: Vec<String> = Vec::new();
    let mut killed = false;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match line_rx.recv_timeout(remaining) {
            Ok(line) => {
                // Only whole lines count; libtest may put its own text
                // before ours on the first line.
                if let (true, Some(start)) = (line.ends_with('\n'), line.find(COMMITTED_PREFIX)) {
                    let invocation_id = line[start + COMMITTED_PREFIX.len()..].trim_end();
                    uuid::Uuid::parse_str(invocation_id)
                        .unwrap_or_else(|err| panic!("bad line from child {line:?}: {err}"));
                    committed.push(invocation_id.to_owned());
                }
                if !killed && committed.len() >= COMMITTED_BEFORE_KILL {
                    // `Child::kill` sends SIGKILL on unix.
                    child.kill().unwrap();
                    killed = true;
                }
            }
            // The child's stdout closed: it died (killed or otherwise).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the child reported {} of {COMMITTED_BEFORE_KILL} commits within {DEADLINE:?}; its stderr:\n{}",
                    committed.len(),
                    stderr_reader.join().unwrap_or_default()
                );
            }
        }
    }
    let status = child.wait().unwrap();
    stdout_reader.join().unwrap();
    let child_stderr = stderr_reader.join().unwrap_or_default();
    assert!(
        killed,
        "the child stopped by itself after {} commits ({status}); its stderr:\n{child_stderr}",
        committed.len()
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child must die of SIGKILL, not exit: {status}"
    );
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    assert!(
        PathBuf::from(wal).exists(),
        "the kill left no WAL behind, so nothing was recovered"
    );

    let (store, _) = Store::open(&path, StoreOptions::default()).unwrap();
    let ids = committed.clone();
    let missing: Vec<String> = store
        .read(move |connection| {
            let mut missing = Vec::new();
            for invocation_id in &ids {
                if !Invocation::exists(connection, invocation_id)? {
                    missing.push(invocation_id.clone());
                }
            }
            Ok::<_, StoreError>(missing)
        })
        .unwrap();
    assert!(
        missing.is_empty(),
        "{} of {} reported commits are missing after the crash: {:?}",
        missing.len(),
        committed.len(),
        &missing[..missing.len().min(5)]
    );
    let n_stored: i64 = store
        .read(|connection| {
            Ok(connection.query_row("SELECT count(*) FROM invocations", [], |row| row.get(0))?)
        })
        .unwrap();
    assert!(n_stored as usize >= committed.len());
    let integrity = store.integrity_check().unwrap();
    assert!(
        integrity.ok,
        "integrity check failed: {:?}",
        integrity.problems
    );
    eprintln!(
        "child killed after {} reported commits; {n_stored} invocations stored; integrity ok",
        committed.len()
    );
    store.close().unwrap();
}
