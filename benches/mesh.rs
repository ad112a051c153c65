//! Mesh benchmarks with real brokers (real QUIC on loopback, real SQLite
//! files), several in one process:
//!
//! - propagation: one registry change on one broker until it is visible on
//!   every other broker, at N = 10 and N = 30, side by side with HashiCorp
//!   Serf's user-event propagation at the same N (when `serf` is installed);
//! - catch-up: a broker that missed 10,000 changes, until it converged;
//! - wire cost: UDP bytes per single-record change per peer, and per
//!   anti-entropy round with nothing to send.
//!
//! `cargo bench --bench mesh` runs everything; `-- propagation`,
//! `-- catch-up` or `-- wire` runs one part.

use scout_mesh::views::ACTIVE_VIEW_MAX;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scout::cli::Context;
use scout::cli::output::Printer;
use scout::daemon::{Broker, BrokerOptions};
use scout::home::Home;
use scout_mesh::lifecycle::{EndpointState, Harness};
use scout_mesh::sync::SyncConfig;
use scout_mesh::wire::{InstanceBody, Invite, RecordBody, RecordKey, RecordKind};

/// Changes measured per propagation run (after a warm-up).
const PROPAGATION_CHANGES: usize = 200;
/// Warm-up changes, not measured.
const WARMUP_CHANGES: usize = 20;
/// Changes a broker misses in the catch-up run.
const CATCH_UP_CHANGES: usize = 10_000;
/// Upper bound on any wait, so a broken run ends with a message.
const WAIT_BOUND: Duration = Duration::from_secs(120);

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    if std::env::var_os("RUST_LOG").is_some() {
        scout::logging::init();
    }
    let wants = |part: &str| filter.as_deref().is_none_or(|f| part.contains(f));
    let dir = tempfile::Builder::new()
        .prefix("scout-bench-mesh-")
        .tempdir()
        .expect("temp dir");
    println!(
        "mesh benchmarks: brokers in one process, real QUIC on 127.0.0.1, stores in {}",
        dir.path().display()
    );
    if wants("propagation") {
        // SCOUT_BENCH_MESH_SIZES=8,10 for other sizes.
        let sizes: Vec<usize> = std::env::var("SCOUT_BENCH_MESH_SIZES")
            .ok()
            .map(|list| {
                list.split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_else(|| vec![10, 30]);
        for n in sizes {
            propagation(dir.path(), n);
        }
    }
    if wants("catch-up") {
        catch_up(dir.path());
    }
    if wants("wire") {
        wire_cost(dir.path());
    }
}

/// Writes a home with free ports and runs the first-run setup (founds a mesh).
fn prepare_home(root: &Path, name: &str) -> Home {
    let home = Home::in_dir(root.join(name));
    std::fs::create_dir_all(&home.config_dir).expect("home");
    let settings = serde_json::json!({
        "node_name": name,
        "http_port": 0,
        "mesh_port": 0,
        "discovery": { "mdns": false, "tailscale": { "enabled": false } },
    });
    std::fs::write(home.settings_path(), settings.to_string()).expect("settings");
    let context = Context {
        home: home.clone(),
        printer: Printer::new(true),
        env: scout::env::Env::system(None),
    };
    scout::cli::setup::first_run(&context).expect("setup");
    home
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn options(sync: Option<SyncConfig>) -> BrokerOptions {
    BrokerOptions {
        sync,
        ..BrokerOptions::default()
    }
}

/// Starts `homes[0]` as founder and joins every other home to its mesh.
async fn form_mesh(homes: &[Home], sync: Option<SyncConfig>) -> Vec<Broker> {
    let mut brokers = Vec::new();
    for home in homes {
        brokers.push(
            Broker::start_with(home, options(sync.clone()))
                .await
                .expect("broker"),
        );
    }
    let founder = brokers[0].state().mesh.clone();
    for broker in &brokers[1..] {
        let code = founder
            .invite(Duration::from_secs(600))
            .await
            .expect("invite")
            .code;
        let invite = Invite::from_code(&code).expect("code");
        broker.state().mesh.join(invite).await.expect("join");
    }
    // Formed: every broker knows every member and holds its share of the
    // partial views (everyone, in a mesh small enough for one view).
    let n = brokers.len();
    let active_wanted = (n - 1).min(ACTIVE_VIEW_MAX / 2);
    wait(&format!("a mesh of {n} with full views"), || {
        brokers.iter().all(|broker| {
            let mesh = &broker.state().mesh;
            mesh.with_registry(|registry| registry.members().len()) == n
                && mesh.active_view().len() >= active_wanted
        })
    })
    .await;
    let connections: usize = brokers
        .iter()
        .map(|broker| broker.state().mesh.connected().len())
        .sum();
    println!(
        "  {n} brokers formed: {:.1} connections per broker",
        connections as f64 / n as f64
    );
    brokers
}

async fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn instance_body(workspace: &str) -> RecordBody {
    RecordBody::Instance(InstanceBody {
        harness: Harness::Command,
        workspace: workspace.to_owned(),
        cwd: "/srv/bench".to_owned(),
        endpoint_state: EndpointState::Idle,
        active_flights: 0,
        worktrees: false,
    })
}

/// Puts one instance record on `origin` and returns its key and counter.
fn change(origin: &Broker, idx: usize) -> (RecordKey, u64) {
    let mesh = &origin.state().mesh;
    let node = origin.state().node_name.as_str().to_owned();
    let name = format!("@bench@{node}#w{}", idx % 64);
    let shared = mesh.shared();
    let now = shared.now_ms();
    let workspace = format!("w{}", idx % 64);
    let mut body = instance_body(&workspace);
    if let RecordBody::Instance(instance) = &mut body {
        instance.active_flights = u32::try_from(idx).unwrap_or(u32::MAX);
    }
    let record = shared
        .with_replica(|replica| replica.put(now, &name, body))
        .expect("put");
    (record.key, record.dot.counter)
}

/// Waits until `broker` holds `key` at `counter` or newer.
async fn visible(broker: &Broker, key: &RecordKey, counter: u64) {
    let mesh = &broker.state().mesh;
    let mut changes = mesh.subscribe_changes();
    loop {
        let seen = mesh.with_registry(|registry| {
            registry
                .get(key)
                .is_some_and(|record| record.dot.counter >= counter)
        });
        if seen {
            return;
        }
        if tokio::time::timeout(WAIT_BOUND, changes.changed())
            .await
            .is_err()
        {
            panic!("change never arrived");
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        *samples.last().unwrap_or(&f64::NAN),
    )
}

fn propagation(root: &Path, n: usize) {
    let homes: Vec<Home> = (0..n)
        .map(|idx| prepare_home(&root.join(format!("prop{n}")), &format!("n{idx}")))
        .collect();
    let runtime = runtime();
    let scout_ms = runtime.block_on(async {
        let brokers = form_mesh(&homes, None).await;
        let brokers = Arc::new(brokers);
        let mut samples = Vec::new();
        for idx in 0..WARMUP_CHANGES + PROPAGATION_CHANGES {
            let start = Instant::now();
            let (key, counter) = change(&brokers[0], idx);
            let mut waiters = Vec::new();
            for peer in 1..n {
                let brokers = brokers.clone();
                let key = key.clone();
                waiters.push(tokio::spawn(async move {
                    visible(&brokers[peer], &key, counter).await
                }));
            }
            for waiter in waiters {
                waiter.await.expect("waiter");
            }
            if idx >= WARMUP_CHANGES {
                samples.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let brokers = Arc::try_unwrap(brokers).expect("no waiters left");
        for broker in brokers {
            broker.shutdown().await.expect("shutdown");
        }
        samples
    });
    let (p50, p99, max) = summary(scout_ms);
    println!();
    println!(
        "propagation N={n}: one change on one broker until visible on all {n} ({PROPAGATION_CHANGES} changes)"
    );
    println!("  scout  p50 {p50:7.2} ms  p99 {p99:7.2} ms  max {max:7.2} ms");
    match serf_propagation(n) {
        Ok((serf_p50, serf_p99, serf_max)) => {
            println!(
                "  serf   p50 {serf_p50:7.2} ms  p99 {serf_p99:7.2} ms  max {serf_max:7.2} ms"
            );
            println!("  ratio  serf/scout p50 {:.1}x", serf_p50 / p50);
        }
        Err(reason) => println!("  serf   not measured: {reason}"),
    }
    if n == 10 {
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "  goal p50 <= 5 ms: {}; goal p99 <= 25 ms: {}",
            verdict(p50 <= 5.0),
            verdict(p99 <= 25.0)
        );
    }
}

/// Serf's user-event propagation at the same N: N agents on loopback, one
/// `serf monitor` per agent; a sample is the time from the origin agent
/// logging the event to the last agent logging it, as seen by this process.
fn serf_propagation(n: usize) -> Result<(f64, f64, f64), String> {
    const EVENTS: usize = 60;
    if Command::new("serf").arg("version").output().is_err() {
        return Err("`serf` is not installed (Debian package `serf`)".into());
    }
    // Fixed ports below the kernel's ephemeral range (32768 and up), so the
    // brokers' random ports never collide with them.
    let bind = |idx: usize| format!("127.0.0.1:{}", 21_000 + n * 100 + idx * 2);
    let rpc = |idx: usize| format!("127.0.0.1:{}", 25_000 + n * 100 + idx);
    let mut children: Vec<Child> = Vec::new();
    let guard = ChildGuard(&mut children);
    for idx in 0..n {
        let mut command = Command::new("serf");
        command
            .args([
                "agent",
                &format!("-node=s{idx}"),
                &format!("-bind={}", bind(idx)),
                &format!("-rpc-addr={}", rpc(idx)),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if idx > 0 {
            // Retried, since the first agent may not listen yet.
            command.args([
                format!("-retry-join={}", bind(0)),
                "-retry-interval=1s".to_owned(),
            ]);
        }
        guard
            .0
            .push(command.spawn().map_err(|err| err.to_string())?);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let members = Command::new("serf")
            .args(["members", &format!("-rpc-addr={}", rpc(0)), "-status=alive"])
            .output()
            .map_err(|err| err.to_string())?;
        if String::from_utf8_lossy(&members.stdout).lines().count() == n {
            break;
        }
        if Instant::now() > deadline {
            return Err("serf agents did not form a cluster within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String, Instant)>();
    for idx in 0..n {
        let mut monitor = Command::new("serf")
            .args([
                "monitor",
                &format!("-rpc-addr={}", rpc(idx)),
                "-log-level=info",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| err.to_string())?;
        let stdout = monitor.stdout.take().expect("stdout");
        guard.0.push(monitor);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(name) = line.split("Received event: user-event: ").nth(1) {
                    let _ = tx.send((idx, name.trim().to_owned(), Instant::now()));
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut samples = Vec::new();
    for event in 0..EVENTS {
        let name = format!("bench-{n}-{event}");
        Command::new("serf")
            .args([
                "event",
                "-coalesce=false",
                &format!("-rpc-addr={}", rpc(0)),
                &name,
                "x",
            ])
            .output()
            .map_err(|err| err.to_string())?;
        let mut arrivals = vec![None; n];
        let deadline = Instant::now() + Duration::from_secs(30);
        while arrivals.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((idx, seen, at)) if seen == name => arrivals[idx] = arrivals[idx].or(Some(at)),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "event {name} did not reach every agent within 30 s"
                    ));
                }
            }
        }
        let origin = arrivals[0].expect("origin");
        let last = arrivals.iter().flatten().max().copied().expect("arrivals");
        samples.push(last.saturating_duration_since(origin).as_secs_f64() * 1000.0);
    }
    drop(guard);
    Ok(summary(samples))
}

/// Kills child processes when dropped, also on an early return.
struct ChildGuard<'a>(&'a mut Vec<Child>);

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        for child in self.0.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn catch_up(root: &Path) {
    let homes: Vec<Home> = ["a", "b"]
        .iter()
        .map(|name| prepare_home(&root.join("catchup"), name))
        .collect();
    let runtime = runtime();
    runtime.block_on(async {
        let mut brokers = form_mesh(&homes, None).await;
        let b = brokers.pop().expect("b");
        let a = brokers.pop().expect("a");
        b.shutdown().await.expect("shutdown b");
        let node = a.state().node_name.as_str().to_owned();
        let shared = a.state().mesh.shared().clone();
        let now = shared.now_ms();
        shared.with_replica(|replica| {
            for idx in 0..CATCH_UP_CHANGES {
                let workspace = format!("w{idx}");
                replica
                    .put(
                        now,
                        &format!("@bench@{node}#{workspace}"),
                        instance_body(&workspace),
                    )
                    .expect("put");
            }
        });
        // Let the origin persist its burst before the clock starts.
        wait("the origin to settle", || {
            a.state().store.write_queue_len() == 0
        })
        .await;
        let start = Instant::now();
        let b = Broker::start_with(&homes[1], options(None))
            .await
            .expect("restart b");
        let mut changes = b.state().mesh.subscribe_changes();
        let started = start.elapsed();
        let mut connected_at = None;
        let mut last_print = Instant::now();
        // B's restart republishes its node record (a new port), so the
        // target is A's live state, not a snapshot.
        while b.state().mesh.registry_digest() != a.state().mesh.registry_digest() {
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
            if connected_at.is_none()
                && b.state()
                    .mesh
                    .peers()
                    .iter()
                    .any(|p| p.state == "connected")
            {
                connected_at = Some(start.elapsed());
            }
            if std::env::var_os("SCOUT_BENCH_TRACE").is_some()
                && last_print.elapsed() > Duration::from_millis(250)
            {
                last_print = Instant::now();
                eprintln!(
                    "  t={:?} records={:?} received={:?}",
                    start.elapsed(),
                    b.state().mesh.registry_digest().0,
                    b.state().mesh.sync_stats()
                );
            }
            assert!(start.elapsed() < WAIT_BOUND, "b never caught up");
        }
        let elapsed = start.elapsed();
        let (_, received) = b.state().mesh.sync_stats();
        println!(
            "  (broker started after {started:?}, first peer connected after {connected_at:?})"
        );
        println!();
        println!(
            "catch-up: a broker that missed {CATCH_UP_CHANGES} changes, from restart to converged"
        );
        println!(
            "  {:.0} ms ({received} records received; goal <= 1000 ms: {})",
            elapsed.as_secs_f64() * 1000.0,
            if elapsed <= Duration::from_secs(1) {
                "met"
            } else {
                "NOT met"
            }
        );
        a.shutdown().await.expect("shutdown a");
        b.shutdown().await.expect("shutdown b");
    });
}

fn wire_cost(root: &Path) {
    const ROUNDS_WINDOW: Duration = Duration::from_secs(6);
    let homes: Vec<Home> = ["p", "q"]
        .iter()
        .map(|name| prepare_home(&root.join("wire"), name))
        .collect();
    let runtime = runtime();
    runtime.block_on(async {
        let sync = SyncConfig {
            anti_entropy_interval_ms: 500,
            anti_entropy_jitter_ms: 0,
            ..SyncConfig::default()
        };
        let brokers = form_mesh(&homes, Some(sync)).await;
        let (p, q) = (&brokers[0], &brokers[1]);
        // Let the join's initial exchange finish.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = |broker: &Broker| -> (u64, u64) {
            let bytes = broker.state().mesh.connection_bytes();
            (bytes.iter().map(|(_, tx, _)| tx).sum(), bytes.iter().map(|(_, _, rx)| rx).sum())
        };
        const CHANGES: usize = 100;
        let (tx0, rx0) = sent(p);
        let (messages0, _) = q.state().mesh.sync_stats();
        for idx in 0..CHANGES {
            let (key, counter) = change(p, idx);
            visible(q, &key, counter).await;
        }
        let (tx1, rx1) = sent(p);
        let (messages1, _) = q.state().mesh.sync_stats();
        let pushes = messages1 - messages0;
        println!();
        println!("wire cost, one peer, real QUIC (UDP payload bytes incl. QUIC headers, acks, and the sync ack)");
        println!(
            "  single-record change: {:.0} bytes sent + {:.0} bytes back per change per peer ({CHANGES} changes, {pushes} sync messages)",
            (tx1 - tx0) as f64 / CHANGES as f64,
            (rx1 - rx0) as f64 / CHANGES as f64
        );
        let record = p.state().mesh.with_registry(|registry| {
            registry.records().find(|record| record.key.kind == RecordKind::Instance).cloned()
        });
        if let Some(record) = record {
            let body = scout_mesh::wire::encode(&scout_mesh::wire::SyncMessage::Push { records: vec![record] });
            println!("  (the push message body itself: {} bytes)", body.len());
        }
        let (tx0, rx0) = sent(p);
        let (messages0, _) = q.state().mesh.sync_stats();
        tokio::time::sleep(ROUNDS_WINDOW).await;
        let (tx1, rx1) = sent(p);
        let (messages1, _) = q.state().mesh.sync_stats();
        // Each round: p sends a digest (and answers q's digest with an empty delta).
        let rounds = ((messages1 - messages0) / 2).max(1);
        println!(
            "  anti-entropy round with nothing to send: {:.0} bytes sent + {:.0} received by one broker per round ({rounds} rounds in {:?}, keep-alives included)",
            (tx1 - tx0) as f64 / rounds as f64,
            (rx1 - rx0) as f64 / rounds as f64,
            ROUNDS_WINDOW
        );
        for broker in brokers {
            broker.shutdown().await.expect("shutdown");
        }
    });
}
