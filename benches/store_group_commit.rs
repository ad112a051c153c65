//! Durable invocation inserts per second through the store's writer thread,
//! with group commit on and off, on a real file with `synchronous=FULL`.
//!
//! Run with `cargo bench --bench store_group_commit`. 64 writer tasks each
//! insert a fixed number of invocations after a warm-up; the benchmark
//! prints throughput, the commit wait (from calling `write` to its reply)
//! at p50/p99/max, the number of batches and the mean batch size, for both
//! modes side by side. `SCOUT_BENCH_WRITES_PER_TASK` overrides the count.

use std::path::Path;
use std::time::{Duration, Instant};

use scout::store::invocations::{InsertOutcome, Invocation};
use scout::store::{Store, StoreError, StoreOptions, Synchronous, WRITE_BATCH_MAX};
use scout_mesh::lifecycle::{DeliveryPolicy, InvocationAction};

/// Concurrent writer tasks, as many as a busy broker has in-flight
/// acceptances.
const N_TASKS: usize = 64;

/// Measured inserts per task unless overridden.
const WRITES_PER_TASK_DEFAULT: usize = 1000;

/// Warm-up inserts per task: fills the page cache, the statement caches and
/// the first WAL frames before anything is measured.
const WARMUP_WRITES_PER_TASK: usize = 100;

/// Goals the group-commit mode must meet.
const GOAL_INSERTS_PER_S: f64 = 20_000.0;
const GOAL_P99_MS: f64 = 5.0;

struct Measurement {
    n_writes: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    n_batches: u64,
}

impl Measurement {
    fn inserts_per_s(&self) -> f64 {
        self.n_writes as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, fraction: f64) -> f64 {
        let idx = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies[idx].as_secs_f64() * 1000.0
    }

    fn mean_batch(&self) -> f64 {
        self.n_writes as f64 / self.n_batches.max(1) as f64
    }
}

fn invocation(store: &Store) -> Invocation {
    Invocation {
        invocation_id: store.env().new_id(),
        action: InvocationAction::Execute,
        body: "review the diff in src/store and report anything that could lose a write".to_owned(),
        conversation_id: Some(store.env().new_id()),
        origin_node: "0f3c9a1e5b7d2c4f".to_owned(),
        target: "@fabric@devbox#main".to_owned(),
        deadline_ms: Some(1_700_000_060_000),
        delivery_policy: DeliveryPolicy::Durable,
        created_at_ms: 1_700_000_000_000,
        from_instance: None,
        chain: Vec::new(),
    }
}

async fn insert_one(store: &Store) -> Result<Duration, StoreError> {
    let row = invocation(store);
    let started = Instant::now();
    let outcome = store
        .write(move |transaction| Invocation::insert(transaction, &row))
        .await?;
    let waited = started.elapsed();
    assert_eq!(outcome, InsertOutcome::Inserted);
    Ok(waited)
}

async fn run_tasks(store: &Store, writes_per_task: usize) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(N_TASKS);
    for _ in 0..N_TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(writes_per_task);
            for _ in 0..writes_per_task {
                latencies.push(insert_one(&store).await.expect("insert"));
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(N_TASKS * writes_per_task);
    for task in tasks {
        latencies.extend(task.await.expect("writer task"));
    }
    (started.elapsed(), latencies)
}

async fn measure(
    label: &'static str,
    dir: &Path,
    write_batch_max: usize,
    writes_per_task: usize,
) -> Measurement {
    let options = StoreOptions {
        synchronous: Synchronous::Full,
        write_batch_max,
        ..StoreOptions::default()
    };
    let (store, _) = Store::open(dir.join(format!("{label}.db")), options).expect("open");
    run_tasks(&store, WARMUP_WRITES_PER_TASK).await;
    let before = store.write_metrics();
    let (elapsed, mut latencies) = run_tasks(&store, writes_per_task).await;
    let after = store.write_metrics();
    latencies.sort_unstable();
    tokio::task::spawn_blocking(move || store.close())
        .await
        .expect("close task")
        .expect("close");
    Measurement {
        n_writes: latencies.len(),
        elapsed,
        latencies,
        n_batches: after.batches_committed - before.batches_committed,
    }
}

fn main() {
    let writes_per_task = std::env::var("SCOUT_BENCH_WRITES_PER_TASK")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(WRITES_PER_TASK_DEFAULT);
    let dir = tempfile::Builder::new()
        .prefix("scout-bench-")
        .tempdir_in(std::env::temp_dir())
        .expect("temp dir");
    println!(
        "store group commit: {N_TASKS} tasks x {writes_per_task} durable inserts \
         (after {N_TASKS} x {WARMUP_WRITES_PER_TASK} warm-up), synchronous=FULL, WAL"
    );
    println!(
        "database files in {} (the system temp dir)",
        dir.path().display()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let grouped = runtime.block_on(measure(
        "group_commit",
        dir.path(),
        WRITE_BATCH_MAX,
        writes_per_task,
    ));
    let single = runtime.block_on(measure("one_per_commit", dir.path(), 1, writes_per_task));

    println!();
    println!(
        "{:<28} {:>16} {:>16}",
        "", "group commit", "no group commit"
    );
    println!(
        "{:<28} {:>16} {:>16}",
        "write_batch_max", WRITE_BATCH_MAX, 1
    );
    let row = |name: &str, value: &dyn Fn(&Measurement) -> String| {
        println!(
            "{:<28} {:>16} {:>16}",
            name,
            value(&grouped),
            value(&single)
        );
    };
    row("inserts", &|m| m.n_writes.to_string());
    row("elapsed (s)", &|m| {
        format!("{:.2}", m.elapsed.as_secs_f64())
    });
    row("throughput (inserts/s)", &|m| {
        format!("{:.0}", m.inserts_per_s())
    });
    row("commit wait p50 (ms)", &|m| {
        format!("{:.3}", m.percentile_ms(0.50))
    });
    row("commit wait p99 (ms)", &|m| {
        format!("{:.3}", m.percentile_ms(0.99))
    });
    row("commit wait max (ms)", &|m| {
        format!("{:.3}", m.percentile_ms(1.0))
    });
    row("batches", &|m| m.n_batches.to_string());
    row("mean batch size", &|m| format!("{:.1}", m.mean_batch()));
    println!();
    println!(
        "throughput ratio (group / none): {:.1}x",
        grouped.inserts_per_s() / single.inserts_per_s()
    );
    let throughput_met = grouped.inserts_per_s() >= GOAL_INSERTS_PER_S;
    let p99_met = grouped.percentile_ms(0.99) <= GOAL_P99_MS;
    println!(
        "goal >= {GOAL_INSERTS_PER_S:.0} inserts/s with group commit: {}",
        if throughput_met { "met" } else { "NOT met" }
    );
    println!(
        "goal p99 <= {GOAL_P99_MS} ms with group commit: {}",
        if p99_met { "met" } else { "NOT met" }
    );
}
