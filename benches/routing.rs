//! Routing benchmark: two real brokers in one process (real QUIC on
//! loopback, real SQLite files with `synchronous=FULL`), an agent that
//! answers at once.
//!
//! - ack latency: from `submit` (committed at the origin) until the owner's
//!   acknowledgement (committed at the owner) is applied at the origin;
//! - end-to-end latency: until the answer is back at the origin;
//! - throughput: invocations acknowledged (and answered) per second with
//!   many in flight;
//! - each for the `durable` policy (committed on both brokers before the
//!   acknowledgement) and `best_effort` (nobody waits for the disk);
//! - side by side, on loopback in the same run: NATS request-reply across
//!   a two-server cluster, and JetStream publish-with-ack on a file store
//!   that syncs every write (`sync_interval: always`), on one server (R1)
//!   and on a three-server cluster (R3), the durable counterparts of
//!   Scout's durable acknowledgement.
//!
//! The NATS figures need nats-server 2.10 or newer; the benchmark fails
//! without it rather than leave the figures out:
//!
//! ```sh
//! benches/install-nats-server.sh     # pinned nats-server into target/bench-tools/
//! cargo bench --bench routing        # or SCOUT_BENCH_NATS_SERVER=/path/to/nats-server
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scout::cli::Context;
use scout::cli::output::Printer;
use scout::daemon::executor::{ExecEvent, ExecOutcome, ExecRequest, Execution, Executor};
use scout::daemon::routing::SubmitRequest;
use scout::daemon::{Broker, BrokerOptions};
use scout::home::Home;
use scout_mesh::lifecycle::{DeliveryPolicy, DeliveryState, InvocationAction};
use scout_mesh::wire::Invite;

#[path = "support/nats_server.rs"]
mod nats_server;

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
            usage: None,
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
        env: scout::env::Env::system(None),
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

/// Which delivery states count as acknowledged, and as answered.
const ACKED: &[&str] = &["peer_acked", "running", "completed", "failed", "cancelled"];
const ANSWERED: &[&str] = &["completed", "failed", "cancelled"];

/// Wakes waiters when the origin's routing events say an invocation reached
/// a state: one subscriber for every waiter, so the measurement costs the
/// same with one invocation in flight as with hundreds.
#[derive(Clone)]
struct Progress {
    inner: Arc<Mutex<ProgressInner>>,
    broker: Arc<scout::daemon::BrokerState>,
}

#[derive(Default)]
struct ProgressInner {
    /// The furthest state seen per invocation.
    reached: HashMap<String, &'static str>,
    waiters: Vec<(
        String,
        &'static [&'static str],
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl Progress {
    fn start(broker: &Broker) -> Progress {
        let progress = Progress {
            inner: Arc::default(),
            broker: broker.state().clone(),
        };
        let mut events = broker.state().router.subscribe();
        let feed = progress.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) if event.kind == scout::api::EventKind::Delivery => {
                        if let Some(state) = event.state.and_then(|state| word(state.as_str())) {
                            feed.reached(&event.invocation_id, state);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => feed.reread(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        progress
    }

    fn reached(&self, id: &str, state: &'static str) {
        let mut inner = self.inner.lock().unwrap();
        let furthest = inner.reached.entry(id.to_owned()).or_insert(state);
        if ANSWERED.contains(&state) || !ANSWERED.contains(furthest) {
            *furthest = state;
        }
        let furthest = *furthest;
        let waiters = std::mem::take(&mut inner.waiters);
        for (waiting, states, wake) in waiters {
            if waiting == id && states.contains(&furthest) {
                let _ = wake.send(());
            } else {
                inner.waiters.push((waiting, states, wake));
            }
        }
    }

    /// Events were missed: reads the store for everyone waiting.
    fn reread(&self) {
        let ids: Vec<String> = self
            .inner
            .lock()
            .unwrap()
            .waiters
            .iter()
            .map(|w| w.0.clone())
            .collect();
        for id in ids {
            let state = self
                .broker
                .router
                .status(&id)
                .ok()
                .and_then(|status| status.delivery)
                .and_then(|delivery| word(delivery.state.as_str()));
            if let Some(state) = state {
                self.reached(&id, state);
            }
        }
    }

    async fn wait(&self, id: &str, states: &'static [&'static str]) {
        let (wake, woken) = tokio::sync::oneshot::channel();
        {
            let mut inner = self.inner.lock().unwrap();
            if inner
                .reached
                .get(id)
                .is_some_and(|state| states.contains(state))
            {
                return;
            }
            inner.waiters.push((id.to_owned(), states, wake));
        }
        tokio::time::timeout(Duration::from_secs(120), woken)
            .await
            .unwrap_or_else(|_| panic!("invocation {id} never reached {states:?}"))
            .expect("progress feed");
    }
}

/// The owner holds it (an update may overtake the acknowledgement).
fn acknowledged(state: DeliveryState) -> bool {
    matches!(
        state,
        DeliveryState::PeerAcked | DeliveryState::Running | DeliveryState::Completed
    )
}

fn word(state: &str) -> Option<&'static str> {
    ACKED.iter().copied().find(|known| *known == state)
}

/// Sequential invocations: acknowledgement and answer latencies, in ms,
/// sorted.
async fn sequential(
    origin: &Broker,
    progress: &Progress,
    policy: DeliveryPolicy,
) -> (Vec<f64>, Vec<f64>) {
    let mut acks = Vec::new();
    let mut answers = Vec::new();
    for n in 0..WARMUP + SAMPLES {
        let start = Instant::now();
        let (submitted, state) = origin
            .state()
            .router
            .submit_acknowledged(request(n, policy))
            .await
            .expect("submit");
        let acked = start.elapsed();
        assert!(acknowledged(state), "not acknowledged: {state}");
        progress.wait(&submitted.invocation_id, ANSWERED).await;
        if n >= WARMUP {
            acks.push(acked.as_secs_f64() * 1000.0);
            answers.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    acks.sort_by(f64::total_cmp);
    answers.sort_by(f64::total_cmp);
    (acks, answers)
}

/// Many in flight: invocations acknowledged per second, and answered per
/// second.
async fn throughput(origin: &Broker, progress: &Progress, policy: DeliveryPolicy) -> (f64, f64) {
    let router = origin.state().router.clone();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let start = Instant::now();
    let mut handles = Vec::new();
    for n in 0..THROUGHPUT_INVOCATIONS {
        let permit = semaphore.clone().acquire_owned().await.expect("permit");
        let router = router.clone();
        handles.push(tokio::spawn(async move {
            let (submitted, state) = router
                .submit_acknowledged(request(n, policy))
                .await
                .expect("submit");
            assert!(acknowledged(state), "not acknowledged: {state}");
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
        progress.wait(id, ANSWERED).await;
    }
    let answered = start.elapsed().as_secs_f64();
    (
        THROUGHPUT_INVOCATIONS as f64 / acked,
        THROUGHPUT_INVOCATIONS as f64 / answered,
    )
}

fn request(n: usize, policy: DeliveryPolicy) -> SubmitRequest {
    SubmitRequest {
        target: "@echo".into(),
        body: format!("ping {n}"),
        action: InvocationAction::Execute,
        policy,
        deadline_ms: None,
        conversation_id: None,
        author: "bench".into(),
        from: None,
        parent_chain: Vec::new(),
        reply_to: None,
    }
}

fn main() {
    // Before minutes of measuring Scout: a missing or old server fails the
    // run at once, with what to do about it.
    let nats_server = nats_server::locate().unwrap_or_else(|reason| {
        eprintln!("routing benchmark: {reason}");
        std::process::exit(1);
    });
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
    let dir_path = dir.path().to_path_buf();
    // On a runtime worker, like the API handlers that submit invocations
    // in a running broker (and the NATS requester likewise).
    let bench = async move {
        let origin = Broker::start_with(&origin_home, options())
            .await
            .expect("origin");
        let owner = Broker::start_with(&owner_home, options())
            .await
            .expect("owner");
        let code = origin
            .state()
            .mesh
            .invite(Duration::from_secs(60))
            .await
            .expect("invite")
            .code;
        owner
            .state()
            .mesh
            .join(Invite::from_code(&code).expect("code"))
            .await
            .expect("join");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !origin
            .state()
            .mesh
            .instances()
            .iter()
            .any(|i| i.name == "@echo@owner#main")
        {
            assert!(
                Instant::now() < deadline,
                "the owner's agent never appeared"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let progress = Progress::start(&origin);
        let (durable, durable_answers) =
            sequential(&origin, &progress, DeliveryPolicy::Durable).await;
        let (best, best_answers) = sequential(&origin, &progress, DeliveryPolicy::BestEffort).await;
        let (durable_rate, durable_answered) =
            throughput(&origin, &progress, DeliveryPolicy::Durable).await;
        let (best_rate, best_answered) =
            throughput(&origin, &progress, DeliveryPolicy::BestEffort).await;
        origin.shutdown().await.expect("shutdown");
        owner.shutdown().await.expect("shutdown");
        // One system at a time on the machine: Scout's brokers are down
        // before the first nats-server starts, and each NATS layout is
        // stopped before the next.
        let nats = nats::measure(&nats_server)
            .await
            .unwrap_or_else(|reason| panic!("NATS request-reply: {reason}"));
        let js_r1 = jetstream::measure(&nats_server, 1)
            .await
            .unwrap_or_else(|reason| panic!("JetStream R1: {reason}"));
        let js_r3 = jetstream::measure(&nats_server, 3)
            .await
            .unwrap_or_else(|reason| panic!("JetStream R3: {reason}"));
        let sync = disk_sync_micros(&dir_path);

        println!(
            "routing between two brokers (real QUIC on loopback, synchronous=FULL, an agent that answers at once)"
        );
        println!(
            "{SAMPLES} sequential invocations; acknowledgement = the owner's ack is back at the origin"
        );
        let row = |name: &str, sorted: &[f64]| {
            println!(
                "  {name:<22} p50 {:6.3} ms  p99 {:6.3} ms",
                percentile(sorted, 0.5),
                percentile(sorted, 0.99)
            );
        };
        row("durable ack", &durable);
        row("durable answer", &durable_answers);
        row("best_effort ack", &best);
        row("best_effort answer", &best_answers);
        println!("  goal: durable ack p50 <= 1 ms, p99 <= 5 ms");
        println!(
            "  (this disk: 4 KiB write + fdatasync p50 {:.0} us, p99 {:.0} us; a durable ack waits for two commits in turn)",
            percentile(&sync, 0.5),
            percentile(&sync, 0.99)
        );
        println!(
            "{THROUGHPUT_INVOCATIONS} invocations with up to {IN_FLIGHT_MAX} in flight (one agent answers them one at a time)"
        );
        println!(
            "  durable       {durable_rate:7.0}/s acknowledged  {durable_answered:7.0}/s answered   (goal >= 5000/s acknowledged)"
        );
        println!("  best_effort   {best_rate:7.0}/s acknowledged  {best_answered:7.0}/s answered");
        println!(
            "NATS {} on loopback, same payloads ({}); JetStream: file store, sync_interval: always, publisher on the stream leader's server",
            nats_server.version,
            nats_server.path.display()
        );
        println!(
            "{SAMPLES} sequential; request-reply across two servers; JetStream = publish until the stream's ack is back"
        );
        row("NATS request-reply", &nats.latencies);
        row("JetStream R1 ack", &js_r1.latencies);
        row("JetStream R3 ack", &js_r3.latencies);
        println!("{THROUGHPUT_INVOCATIONS} with up to {IN_FLIGHT_MAX} in flight");
        println!("  NATS          {:7.0}/s answered", nats.rate);
        println!("  JetStream R1  {:7.0}/s acknowledged", js_r1.rate);
        println!(
            "  JetStream R3  {:7.0}/s acknowledged (stream leader {} of 3)",
            js_r3.rate, js_r3.leader
        );
        let durable_p50 = percentile(&durable, 0.5);
        let nats_p50 = percentile(&nats.latencies, 0.5);
        println!(
            "  ratio to NATS request-reply p50: best_effort {:.2}x (goal <= 1.2x), durable {:.2}x (goal <= 3x)",
            percentile(&best, 0.5) / nats_p50,
            durable_p50 / nats_p50
        );
        println!(
            "  durable ack p50 to JetStream p50: R1 {:.2}x (goal <= 1.5x), R3 {:.2}x (goal <= 0.5x)",
            durable_p50 / percentile(&js_r1.latencies, 0.5),
            durable_p50 / percentile(&js_r3.latencies, 0.5)
        );
    };
    runtime.block_on(async { tokio::spawn(bench).await.expect("bench") });
}

/// What one durable commit costs at least on this disk: a 4 KiB write and
/// an fdatasync, in microseconds, sorted.
fn disk_sync_micros(dir: &Path) -> Vec<f64> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("sync-probe");
    let mut file = std::fs::File::create(&path).expect("probe");
    let page = [0x5a_u8; 4096];
    let mut samples = Vec::new();
    for n in 0..SAMPLES {
        file.seek(SeekFrom::Start((n % 64) as u64 * 4096))
            .expect("seek");
        file.write_all(&page).expect("write");
        let start = Instant::now();
        file.sync_data().expect("sync");
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let _ = std::fs::remove_file(path);
    samples.sort_by(f64::total_cmp);
    samples
}

/// NATS request-reply across a two-server cluster on loopback: the
/// requester on one server, a responder answering at once on the other.
mod nats {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures_util::StreamExt;

    use super::nats_server::{Binary, Layout, READY_TIMEOUT, Servers};
    use super::{IN_FLIGHT_MAX, SAMPLES, THROUGHPUT_INVOCATIONS, WARMUP};

    pub struct Figures {
        /// Sorted, ms.
        pub latencies: Vec<f64>,
        /// Requests answered per second with many in flight.
        pub rate: f64,
    }

    pub async fn measure(binary: &Binary) -> Result<Figures, String> {
        let mut servers = Servers::start(
            binary,
            Layout {
                servers: 2,
                jetstream: false,
            },
        )?;
        let requester = servers.connect(0).await?;
        let responder = servers.connect(1).await?;
        let mut subscription = responder
            .subscribe("bench.echo")
            .await
            .map_err(|err| err.to_string())?;
        responder.flush().await.map_err(|err| err.to_string())?;
        let answering = responder.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                if let Some(reply) = message.reply {
                    let _ = answering.publish(reply, message.payload).await;
                }
            }
        });
        // The responder's interest reaches the requester's server over the
        // route; until then requests find no responder.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let asked = tokio::time::timeout(
                Duration::from_millis(500),
                requester.request("bench.echo", "hello".into()),
            )
            .await;
            if matches!(asked, Ok(Ok(_))) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the two servers did not route requests within {READY_TIMEOUT:?}:\n{}",
                    servers.log_tail(0)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut latencies = Vec::new();
        for n in 0..WARMUP + SAMPLES {
            let start = Instant::now();
            requester
                .request("bench.echo", format!("ping {n}").into())
                .await
                .map_err(|err| err.to_string())?;
            if n >= WARMUP {
                latencies.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        latencies.sort_by(f64::total_cmp);
        let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
        let start = Instant::now();
        let mut handles = Vec::new();
        for n in 0..THROUGHPUT_INVOCATIONS {
            let permit = semaphore
                .clone()
                .acquire_owned()
                .await
                .map_err(|err| err.to_string())?;
            let requester = requester.clone();
            handles.push(tokio::spawn(async move {
                let answer = requester
                    .request("bench.echo", format!("ping {n}").into())
                    .await;
                drop(permit);
                answer.map(|_| ()).map_err(|err| err.to_string())
            }));
        }
        for handle in handles {
            handle.await.map_err(|err| err.to_string())??;
        }
        let rate = THROUGHPUT_INVOCATIONS as f64 / start.elapsed().as_secs_f64();
        Ok(Figures { latencies, rate })
    }
}

/// JetStream publish-with-ack: the stream's acknowledgement comes back
/// once the message is stored (file store, `sync_interval: always`: synced
/// to disk) on the stream's leader, and with replicas on a majority of
/// them. The durable counterpart of Scout's durable acknowledgement.
mod jetstream {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use async_nats::jetstream::{self, stream};

    use super::nats_server::{Binary, Layout, READY_TIMEOUT, Servers};
    use super::{IN_FLIGHT_MAX, SAMPLES, THROUGHPUT_INVOCATIONS, WARMUP};

    const STREAM: &str = "BENCH";
    const SUBJECT: &str = "bench.js";

    pub struct Figures {
        /// Publish until acknowledged, sorted, ms.
        pub latencies: Vec<f64>,
        /// Messages acknowledged per second with many in flight.
        pub rate: f64,
        /// The server (of `s0`, `s1`, ...) leading the stream, which the
        /// publisher is connected to.
        pub leader: String,
    }

    /// `replicas` servers (a cluster on loopback when more than one), one
    /// stream with `num_replicas: replicas`, the publisher connected to the
    /// stream leader's server: the request goes straight to the server
    /// that orders the writes, as Scout's origin sends straight to the
    /// owner.
    pub async fn measure(binary: &Binary, replicas: usize) -> Result<Figures, String> {
        let mut servers = Servers::start(
            binary,
            Layout {
                servers: replicas,
                jetstream: true,
            },
        )?;
        // Every server must be up before a replicated stream can be placed.
        let mut clients = Vec::new();
        for n in 0..replicas {
            clients.push(servers.connect(n).await?);
        }
        for n in 0..replicas {
            if !servers.syncs_always(n)? {
                return Err(format!(
                    "server {} does not report sync_always: the generated configuration \
                     did not take effect",
                    servers.names()[n]
                ));
            }
        }
        let setup = jetstream::new(clients[0].clone());
        let config = stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..stream::Config::default()
        };
        // A cluster elects its JetStream meta leader after the routes are
        // up; until then stream creation is refused.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut stream = loop {
            match setup.create_stream(config.clone()).await {
                Ok(stream) => break stream,
                Err(err) if Instant::now() > deadline => {
                    return Err(format!(
                        "JetStream R{replicas}: no stream within {READY_TIMEOUT:?}: {err}\n{}",
                        servers.log_tail(0)
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        // The stream has a leader and, when replicated, every follower has
        // caught up: the first measured publish does not wait for either.
        let leader = loop {
            let info = stream.info().await.map_err(|err| err.to_string())?;
            let ready = match &info.cluster {
                // A server outside any cluster leads its streams itself.
                None if replicas == 1 => Some(servers.names()[0].clone()),
                None => None,
                Some(cluster) => cluster.leader.clone().filter(|_| {
                    let followers = &cluster.replicas;
                    followers.len() + 1 == replicas
                        && followers.iter().all(|peer| peer.current && !peer.offline)
                }),
            };
            match ready {
                Some(leader) => break leader,
                None if Instant::now() > deadline => {
                    return Err(format!(
                        "JetStream R{replicas}: the stream's replicas were not current within \
                         {READY_TIMEOUT:?}: {:?}",
                        info.cluster
                    ));
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let on_leader = servers
            .names()
            .iter()
            .position(|name| *name == leader)
            .ok_or_else(|| format!("JetStream R{replicas}: unknown stream leader {leader}"))?;
        let publisher = jetstream::new(clients[on_leader].clone());

        let mut latencies = Vec::new();
        for n in 0..WARMUP + SAMPLES {
            let start = Instant::now();
            publish(&publisher, n).await?;
            if n >= WARMUP {
                latencies.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        latencies.sort_by(f64::total_cmp);

        let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
        let start = Instant::now();
        let mut handles = Vec::new();
        for n in 0..THROUGHPUT_INVOCATIONS {
            let permit = semaphore
                .clone()
                .acquire_owned()
                .await
                .map_err(|err| err.to_string())?;
            let publisher = publisher.clone();
            handles.push(tokio::spawn(async move {
                let acked = publish(&publisher, WARMUP + SAMPLES + n).await;
                drop(permit);
                acked
            }));
        }
        for handle in handles {
            handle.await.map_err(|err| err.to_string())??;
        }
        let rate = THROUGHPUT_INVOCATIONS as f64 / start.elapsed().as_secs_f64();

        let stored = stream
            .info()
            .await
            .map_err(|err| err.to_string())?
            .state
            .messages;
        let sent = (WARMUP + SAMPLES + THROUGHPUT_INVOCATIONS) as u64;
        if stored != sent {
            return Err(format!(
                "JetStream R{replicas}: {stored} messages stored, {sent} acknowledged"
            ));
        }
        Ok(Figures {
            latencies,
            rate,
            leader,
        })
    }

    /// One message the size of the routing bench's prompts, until the
    /// stream acknowledges it.
    async fn publish(publisher: &jetstream::Context, n: usize) -> Result<(), String> {
        publisher
            .publish(SUBJECT, format!("ping {n}").into())
            .await
            .map_err(|err| format!("publish: {err}"))?
            .await
            .map_err(|err| format!("acknowledgement: {err}"))?;
        Ok(())
    }
}
