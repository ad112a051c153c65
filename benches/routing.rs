//! Routing benchmark: two real brokers in one process (real QUIC on
//! loopback, real SQLite files with `synchronous=FULL`), an agent that
//! answers at once.
//!
//! - ack latency: from `submit` (committed at the origin) until the owner's
//!   acknowledgement (committed at the owner) is applied at the origin;
//! - end-to-end latency: until the answer is back at the origin;
//! - throughput: invocations completed per second with many in flight.
//!
//! `cargo bench --bench routing`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scout::cli::Context;
use scout::cli::output::Printer;
use scout::daemon::routing::SubmitRequest;
use scout::daemon::routing::executor::{ExecEvent, ExecOutcome, ExecRequest, Execution, Executor};
use scout::daemon::{Broker, BrokerOptions};
use scout::home::Home;
use scout_mesh::lifecycle::{DeliveryPolicy, InvocationAction};
use scout_mesh::wire::Invite;

const SAMPLES: usize = 500;
const WARMUP: usize = 50;
const THROUGHPUT_INVOCATIONS: usize = 5_000;
const IN_FLIGHT_MAX: usize = 256;

/// Answers every prompt at once.
#[derive(Debug)]
struct Instant0;

impl Executor for Instant0 {
    fn execute(&self, request: ExecRequest) -> Execution {
        let (tx, events) = tokio::sync::mpsc::channel(4);
        let (cancel, _cancelled) = tokio::sync::oneshot::channel();
        let _ = tx.try_send(ExecEvent::Started);
        let _ = tx.try_send(ExecEvent::Finished(ExecOutcome::Completed {
            response: format!("ok: {}", request.prompt),
        }));
        Execution { events, cancel }
    }
}

fn prepare_home(root: &Path, name: &str, agent: bool) -> Home {
    let home = Home::in_dir(root.join(name));
    std::fs::create_dir_all(&home.config_dir).expect("home");
    let settings = serde_json::json!({
        "node_name": name, "http_port": 0, "mesh_port": 0,
        "discovery": { "mdns": false, "tailscale": { "enabled": false } },
    });
    std::fs::write(home.settings_path(), settings.to_string()).expect("settings");
    if agent {
        let relay = serde_json::json!({ "agents": [
            { "name": "echo", "harness": "command", "command": ["true"], "cwd": "/", "workspace": "main" }
        ]});
        std::fs::write(home.relay_agents_path(), relay.to_string()).expect("relay");
    }
    scout::cli::setup::first_run(&Context {
        home: home.clone(),
        printer: Printer::new(true),
    })
    .expect("setup");
    home
}

fn options() -> BrokerOptions {
    BrokerOptions {
        executor: Some(Arc::new(Instant0)),
        ..BrokerOptions::default()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn wait_state(broker: &Broker, id: &str, done: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = broker.state().router.subscribe();
    loop {
        let state = broker
            .state()
            .router
            .status(id)
            .ok()
            .and_then(|status| status.delivery)
            .map(|d| d.state);
        if state.as_deref().is_some_and(|state| done.contains(&state)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "invocation {id} never reached {done:?}"
        );
        // Woken by the next routing event (or a short timeout), not a spin.
        let _ = tokio::time::timeout(Duration::from_millis(20), events.recv()).await;
    }
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("scout-bench-routing-")
        .tempdir()
        .expect("dir");
    let origin_home = prepare_home(dir.path(), "origin", false);
    let owner_home = prepare_home(dir.path(), "owner", true);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    runtime.block_on(async {
        let origin = Broker::start_with(&origin_home, options()).await.expect("origin");
        let owner = Broker::start_with(&owner_home, options()).await.expect("owner");
        let code = origin.state().mesh.invite(Duration::from_secs(60)).await.expect("invite").code;
        owner.state().mesh.join(Invite::from_code(&code).expect("code")).await.expect("join");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !origin.state().mesh.instances().iter().any(|i| i.name == "@echo@owner#main") {
            assert!(Instant::now() < deadline, "the owner's agent never appeared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let request = |n: usize| SubmitRequest {
            target: "@echo".into(),
            body: format!("ping {n}"),
            action: InvocationAction::Execute,
            policy: DeliveryPolicy::Durable,
            deadline_ms: None,
            conversation_id: None,
            author: "bench".into(),
        };
        let mut acks = Vec::new();
        let mut answers = Vec::new();
        for n in 0..WARMUP + SAMPLES {
            let start = Instant::now();
            let submitted = origin.state().router.submit(request(n)).await.expect("submit");
            wait_state(&origin, &submitted.invocation_id, &["peer_acked", "running", "completed"]).await;
            let acked = start.elapsed();
            wait_state(&origin, &submitted.invocation_id, &["completed"]).await;
            if n >= WARMUP {
                acks.push(acked.as_secs_f64() * 1000.0);
                answers.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        acks.sort_by(f64::total_cmp);
        answers.sort_by(f64::total_cmp);
        println!("routing between two brokers (real QUIC on loopback, synchronous=FULL, an agent that answers at once), {SAMPLES} sequential invocations");
        println!(
            "  durable ack     p50 {:6.2} ms  p99 {:6.2} ms   (goal p50 <= 1 ms, p99 <= 5 ms)",
            percentile(&acks, 0.5),
            percentile(&acks, 0.99)
        );
        println!(
            "  durable answer  p50 {:6.2} ms  p99 {:6.2} ms",
            percentile(&answers, 0.5),
            percentile(&answers, 0.99)
        );

        let router = origin.state().router.clone();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
        let start = Instant::now();
        let mut handles = Vec::new();
        for n in 0..THROUGHPUT_INVOCATIONS {
            let permit = semaphore.clone().acquire_owned().await.expect("permit");
            let router = router.clone();
            let origin_state = origin.state().clone();
            handles.push(tokio::spawn(async move {
                let submitted = router.submit(request(n)).await.expect("submit");
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut events = router.subscribe();
                loop {
                    let acked = origin_state
                        .router
                        .status(&submitted.invocation_id)
                        .ok()
                        .and_then(|status| status.delivery)
                        .is_some_and(|delivery| delivery.state != "accepted" && delivery.state != "deferred");
                    if acked {
                        break;
                    }
                    assert!(Instant::now() < deadline, "invocation never acknowledged");
                    let _ = tokio::time::timeout(Duration::from_millis(50), events.recv()).await;
                }
                drop(permit);
                submitted.invocation_id
            }));
        }
        let mut ids = Vec::new();
        for handle in handles {
            ids.push(handle.await.expect("task"));
        }
        let acked = start.elapsed().as_secs_f64();
        for id in &ids {
            wait_state(&origin, id, &["completed"]).await;
        }
        let completed = start.elapsed().as_secs_f64();
        println!(
            "  throughput      {:.0} invocations/s acknowledged, {:.0}/s answered ({THROUGHPUT_INVOCATIONS} with up to {IN_FLIGHT_MAX} in flight; one agent answers them one at a time; goal >= 5000/s)",
            THROUGHPUT_INVOCATIONS as f64 / acked,
            THROUGHPUT_INVOCATIONS as f64 / completed
        );
        origin.shutdown().await.expect("shutdown");
        owner.shutdown().await.expect("shutdown");
    });
}
