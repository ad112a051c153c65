//! The PTY runtime's figures: spawn-to-ready of a shell, PTY output to a
//! WebSocket client, broker memory idle and per session with full
//! scrollback, and `/health` latency while 10 agents stream.
//!
//! Run with `cargo bench --bench pty_runtime`. Spawn-to-ready runs the
//! session manager in-process and also through a real `scout up` (POST
//! `/agents` to the `agent_ready` event on `/ws/events`); everything else
//! runs against a real `scout up` in a temporary home, with real terminals,
//! a real HTTP client and real WebSocket clients.
//! The `holders` part measures what holders cost: each holder's memory
//! with a shell in it, and a broker SIGKILLed and started again until its
//! ready line, when every session is re-attached (the broker re-attaches
//! before it serves).
//! `SCOUT_BENCH_ONLY=spawn,stream,memory,health,holders` picks parts;
//! `SCOUT_BENCH_SPAWNS` overrides the number of spawns measured and
//! `SCOUT_BENCH_STREAM_MB` the megabytes streamed to the WebSocket client.

#[path = "support/scout_up.rs"]
mod scout_up;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scout::adapter::AdapterOptions;
use scout::pty::{EventKind, RuntimeConfig, SessionManager, SpawnRequest};
use scout_mesh::lifecycle::Harness;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Spawns measured unless overridden (after a few unmeasured ones).
const SPAWNS_DEFAULT: usize = 50;
const SPAWN_WARMUP: usize = 3;

/// Megabytes the throughput run streams unless overridden.
const STREAM_MB_DEFAULT: usize = 200;

/// The file the streaming agent writes again and again.
const STREAM_BLOCK_BYTES: usize = 16 * 1024 * 1024;

/// Sessions of the memory and load runs.
const N_SESSIONS: usize = 10;

/// `/health` requests per latency measurement, and the pace of them (a
/// monitor probing every few milliseconds for 3 seconds).
const N_HEALTH: usize = 1000;
const HEALTH_INTERVAL: Duration = Duration::from_millis(3);

/// The shell every run starts, with the prompt pattern that marks it ready
/// (`$` for a user, `#` for root).
const SHELL: &[&str] = &["bash", "--norc", "--noprofile", "-i"];
const SHELL_PROMPT: &str = r"[$#]$";

/// The goals of the issue.
const GOAL_SPAWN_P50_MS: f64 = 50.0;
const GOAL_STREAM_MB_PER_S: f64 = 50.0;
const GOAL_IDLE_RSS_MB: f64 = 30.0;
const GOAL_SESSION_MB: f64 = 4.0;
const GOAL_HEALTH_P99_MS: f64 = 10.0;
const GOAL_HOLDER_RSS_MB: f64 = 3.0;
const GOAL_REATTACH_MS: f64 = 200.0;

/// Broker restarts measured by the `holders` part.
const N_RESTARTS: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn percentile_ms(sorted: &[Duration], fraction: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets the goal"
    } else {
        "MISSES the goal"
    }
}

fn main() {
    // `SCOUT_BENCH_ONLY=stream,health` runs some parts only.
    let only = std::env::var("SCOUT_BENCH_ONLY").ok();
    let runs = |part: &str| {
        only.as_deref()
            .is_none_or(|only| only.split(',').any(|p| p == part))
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let n_spawns = env_usize("SCOUT_BENCH_SPAWNS", SPAWNS_DEFAULT);
    if runs("spawn") {
        spawn_to_ready_in_process(dir.path(), n_spawns);
    }
    let broker = BrokerUnderTest::start(dir.path());
    if runs("spawn") {
        spawn_to_ready_over_http(&broker, dir.path(), n_spawns);
    }
    if runs("stream") {
        stream_to_websocket(
            &broker,
            dir.path(),
            env_usize("SCOUT_BENCH_STREAM_MB", STREAM_MB_DEFAULT),
        );
    }
    if runs("memory") {
        memory(&broker, dir.path());
    }
    if runs("health") {
        health_under_load(&broker, dir.path());
    }
    drop(broker);
    if runs("holders") {
        holders(dir.path());
    }
}

/// Holders' memory, and the broker's restart to every session re-attached.
fn holders(dir: &Path) {
    let dir = dir.join("holders");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut broker = BrokerUnderTest::start(&dir);
    let ids: Vec<String> = (0..N_SESSIONS)
        .map(|_| broker.spawn_shell(&dir, SHELL))
        .collect();
    for id in &ids {
        broker.wait_ready(id);
    }
    let holder_of = |broker: &BrokerUnderTest, id: &str| -> u64 {
        broker.call("GET", &format!("/agents/{id}"), None)["holder"]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{id} has no holder"))
    };
    let pids: Vec<u64> = ids.iter().map(|id| holder_of(&broker, id)).collect();
    let rss: Vec<f64> = pids
        .iter()
        .map(|pid| rss_kib_of(*pid as u32) as f64 / 1024.0)
        .collect();
    let mean = rss.iter().sum::<f64>() / rss.len() as f64;
    let max = rss.iter().cloned().fold(0.0, f64::max);
    println!(
        "holder RSS, {N_SESSIONS} holders each with a shell: mean {mean:.2} MiB, max {max:.2} MiB: {} (<= {GOAL_HOLDER_RSS_MB} MB)",
        verdict(max <= GOAL_HOLDER_RSS_MB)
    );
    let mut samples = Vec::new();
    for _ in 0..N_RESTARTS {
        let _ = broker.child.kill();
        let _ = broker.child.wait();
        let start = Instant::now();
        broker = BrokerUnderTest::from_up(&dir, scout_up::up(&dir));
        samples.push(start.elapsed());
        let now: Vec<u64> = ids.iter().map(|id| holder_of(&broker, id)).collect();
        assert_eq!(now, pids, "every session is re-attached to its holder");
    }
    samples.sort();
    let p50 = percentile_ms(&samples, 0.5);
    println!(
        "broker SIGKILLed, started again, ready with {N_SESSIONS} sessions re-attached ({N_RESTARTS} restarts): p50 {p50:.1} ms, max {:.1} ms: {} (<= {GOAL_REATTACH_MS} ms)",
        percentile_ms(&samples, 1.0),
        verdict(p50 <= GOAL_REATTACH_MS)
    );
    for id in &ids {
        broker.delete(id);
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn shell_request(workdir: &Path) -> SpawnRequest {
    SpawnRequest {
        name: Some("bench".to_owned()),
        harness: Harness::Command,
        workdir: Some(workdir.display().to_string()),
        options: AdapterOptions {
            command: Some(SHELL.iter().map(|arg| (*arg).to_owned()).collect()),
            prompt_pattern: Some(SHELL_PROMPT.to_owned()),
            ..AdapterOptions::default()
        },
        env: Vec::new(),
        size: None,
    }
}

fn report_spawns(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let p50 = percentile_ms(&samples, 0.5);
    println!(
        "spawn-to-ready of `{}` ({label}, {} spawns): p50 {p50:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({})",
        SHELL.join(" "),
        samples.len(),
        percentile_ms(&samples, 0.9),
        percentile_ms(&samples, 0.99),
        percentile_ms(&samples, 1.0),
        verdict(p50 <= GOAL_SPAWN_P50_MS)
    );
}

fn spawn_to_ready_in_process(workdir: &Path, n_spawns: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let samples = runtime.block_on(async {
        let manager = SessionManager::new(RuntimeConfig::default());
        let mut events = manager.subscribe();
        let mut samples = Vec::new();
        for idx in 0..SPAWN_WARMUP + n_spawns {
            let start = Instant::now();
            let agent = manager.spawn(shell_request(workdir)).await.expect("spawn");
            loop {
                let event = events.recv().await.expect("events");
                if event.event == EventKind::AgentReady && event.agent_id == agent.id {
                    break;
                }
            }
            if idx >= SPAWN_WARMUP {
                samples.push(start.elapsed());
            }
            manager.stop(&agent.id).await.expect("stop");
        }
        samples
    });
    report_spawns("session manager", samples);
}

fn spawn_to_ready_over_http(broker: &BrokerUnderTest, workdir: &Path, n_spawns: usize) {
    let mut events = broker.ws("/ws/events");
    next_text(&mut events);
    let mut samples = Vec::new();
    for idx in 0..SPAWN_WARMUP + n_spawns {
        let start = Instant::now();
        let id = broker.spawn_shell(workdir, SHELL);
        loop {
            let event: Value = serde_json::from_str(&next_text(&mut events)).expect("event");
            if event["event"] == "agent_ready" && event["data"]["agent"]["id"] == id.as_str() {
                break;
            }
        }
        if idx >= SPAWN_WARMUP {
            samples.push(start.elapsed());
        }
        broker.delete(&id);
        broker.delete(&id);
    }
    report_spawns("POST /agents to agent_ready on /ws/events", samples);
}

fn stream_to_websocket(broker: &BrokerUnderTest, workdir: &Path, n_mb: usize) {
    // 100-character lines, like a build log, written straight to the
    // terminal by `cat` (which turns each `\n` into `\r\n` there).
    let block_path = workdir.join("stream-block.txt");
    let line = format!("{}\n", "0123456789".repeat(10));
    let block = line.repeat(STREAM_BLOCK_BYTES / line.len());
    std::fs::write(&block_path, &block).expect("write the stream block");
    let n_blocks = (n_mb * 1024 * 1024).div_ceil(block.len());
    let script = format!(
        "read go; i=0; while [ $i -lt {n_blocks} ]; do cat {}; i=$((i+1)); done; echo; echo BENCH-DONE; exec sleep 600",
        block_path.display()
    );
    let id = broker.spawn_shell(workdir, &["sh", "-c", &script]);
    let mut ws = broker.ws(&format!("/ws/agents/{id}/terminal"));
    next_text(&mut ws);
    ws.send(Message::text("go\r")).expect("send");
    let start = Instant::now();
    let mut n_bytes = 0usize;
    let mut n_lagged = 0usize;
    let mut tail = String::new();
    loop {
        let text = next_text(&mut ws);
        if text.starts_with("{\"type\":\"lagged\"") {
            n_lagged += 1;
            continue;
        }
        n_bytes += text.len();
        tail.push_str(&text);
        if tail.contains("BENCH-DONE") {
            break;
        }
        let mut cut = tail.len().saturating_sub(16);
        while !tail.is_char_boundary(cut) {
            cut -= 1;
        }
        tail.drain(..cut);
    }
    let elapsed = start.elapsed();
    let mb_per_s = n_bytes as f64 / 1024.0 / 1024.0 / elapsed.as_secs_f64();
    println!(
        "PTY output to one WebSocket client: {:.1} MiB in {:.2} s = {mb_per_s:.1} MiB/s, {n_lagged} lag notices ({})",
        n_bytes as f64 / 1024.0 / 1024.0,
        elapsed.as_secs_f64(),
        verdict(mb_per_s >= GOAL_STREAM_MB_PER_S)
    );
    broker.delete(&id);
    broker.delete(&id);
}

fn memory(broker: &BrokerUnderTest, workdir: &Path) {
    let idle_kib = broker.rss_kib();
    let mut ids = Vec::new();
    for _ in 0..N_SESSIONS {
        let id = broker.spawn_shell(workdir, SHELL);
        broker.wait_ready(&id);
        ids.push(id);
    }
    let started_kib = broker.rss_kib();
    // Rows as wide as the terminal, far more than the scrollback keeps.
    for id in &ids {
        broker.send(id, "for i in $(seq 1 3000); do printf '%0119d\\n' $i; done");
    }
    let full_kib = broker.rss_kib();
    let per_session_mb = (full_kib.saturating_sub(idle_kib)) as f64 / 1024.0 / N_SESSIONS as f64;
    println!(
        "broker RSS: idle {:.1} MiB ({}); {N_SESSIONS} shells started {:.1} MiB; with full scrollback {:.1} MiB = {per_session_mb:.2} MiB per session ({})",
        idle_kib as f64 / 1024.0,
        verdict(idle_kib as f64 / 1024.0 <= GOAL_IDLE_RSS_MB),
        started_kib as f64 / 1024.0,
        full_kib as f64 / 1024.0,
        verdict(per_session_mb <= GOAL_SESSION_MB)
    );
    for id in &ids {
        broker.delete(id);
        broker.delete(id);
    }
}

fn health_under_load(broker: &BrokerUnderTest, workdir: &Path) {
    let quiet = broker.health_latencies();
    report_health("no agents", &quiet);

    // Agents that stream like a busy coding agent: a 100-character line
    // every millisecond (about 100 KB/s each), each watched by a terminal
    // client.
    let paced = "import sys, time\nwhile True:\n    sys.stdout.write('x' * 99 + '\\n'); sys.stdout.flush(); time.sleep(0.001)";
    let python = python_executable();
    let load = Load::start(broker, workdir, &[&python, "-c", paced]);
    let latencies = broker.health_latencies();
    let received = load.stop(broker);
    report_health(
        &format!(
            "{N_SESSIONS} agents streaming 100 KB/s each, {:.1} MiB delivered to their clients",
            received as f64 / 1024.0 / 1024.0
        ),
        &latencies,
    );

    // The worst case: every agent writes as fast as it can.
    let load = Load::start(broker, workdir, &["yes", &"x".repeat(99)]);
    let latencies = broker.health_latencies();
    let received = load.stop(broker);
    report_health(
        &format!(
            "{N_SESSIONS} agents flooding (`yes`), {:.1} MiB delivered to their clients",
            received as f64 / 1024.0 / 1024.0
        ),
        &latencies,
    );
}

/// The real python3 (a version manager's shim may need the HOME the
/// broker's agents do not have).
fn python_executable() -> String {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn report_health(label: &str, sorted: &[Duration]) {
    let p99 = percentile_ms(sorted, 0.99);
    println!(
        "/health while {label}: p50 {:.2} ms, p99 {p99:.2} ms, max {:.2} ms ({})",
        percentile_ms(sorted, 0.5),
        percentile_ms(sorted, 1.0),
        verdict(p99 <= GOAL_HEALTH_P99_MS)
    );
}

/// Agents streaming, each with a terminal client reading on a thread.
struct Load {
    ids: Vec<String>,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(broker: &BrokerUnderTest, workdir: &Path, argv: &[&str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let mut ids = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..N_SESSIONS {
            let id = broker.spawn_shell(workdir, argv);
            let mut ws = broker.ws(&format!("/ws/agents/{id}/terminal"));
            if let MaybeTlsStream::Plain(stream) = ws.get_mut() {
                stream
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .expect("timeout");
            }
            let (stop, received) = (stop.clone(), received.clone());
            readers.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Message::Text(text)) = ws.read() {
                        received.fetch_add(text.len() as u64, Ordering::Relaxed);
                    }
                }
            }));
            ids.push(id);
        }
        // Let the streams get going before anything is measured.
        std::thread::sleep(Duration::from_millis(500));
        Load {
            ids,
            stop,
            received,
            readers,
        }
    }

    fn stop(self, broker: &BrokerUnderTest) -> u64 {
        let received = self.received.load(Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        for reader in self.readers {
            let _ = reader.join();
        }
        for id in &self.ids {
            broker.delete(id);
            broker.delete(id);
        }
        received
    }
}

/// A real `scout up` in a temporary home.
struct BrokerUnderTest {
    child: Child,
    base: String,
    token: String,
    http: ureq::Agent,
}

impl BrokerUnderTest {
    fn start(dir: &Path) -> BrokerUnderTest {
        BrokerUnderTest::from_up(dir, scout_up::start(dir))
    }

    fn from_up(dir: &Path, up: scout_up::ScoutUp) -> BrokerUnderTest {
        let home = dir.join("home");
        let scout_up::ScoutUp { child, ready } = up;
        let token = std::fs::read_to_string(home.join("token")).expect("token");
        BrokerUnderTest {
            child,
            base: format!("http://{}", ready["http_addr"].as_str().expect("http_addr")),
            token: token.trim().to_owned(),
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(120))
                .build(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let request = self
            .http
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token));
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match response {
            Ok(response) => response.into_json().unwrap_or(Value::Null),
            Err(ureq::Error::Status(_, response)) => response.into_json().unwrap_or(Value::Null),
            Err(err) => panic!("{method} {path}: {err}"),
        }
    }

    fn spawn_shell(&self, workdir: &Path, argv: &[&str]) -> String {
        let prompt = (argv == SHELL).then_some(SHELL_PROMPT);
        let agent = self.call(
            "POST",
            "/agents",
            Some(json!({
                "name": "bench", "type": "command", "workdir": workdir,
                "command": argv, "promptPattern": prompt,
            })),
        );
        agent["id"]
            .as_str()
            .unwrap_or_else(|| panic!("spawn failed: {agent}"))
            .to_owned()
    }

    fn wait_ready(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.call("GET", &format!("/agents/{id}"), None)["status"] != "ready" {
            assert!(Instant::now() < deadline, "{id} never got ready");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn send(&self, id: &str, message: &str) {
        let sent = self.call(
            "POST",
            &format!("/agents/{id}/send"),
            Some(json!({ "message": message, "timeout": 120_000 })),
        );
        assert_eq!(sent["status"], "completed", "{sent}");
    }

    /// Stops the agent (first call) or forgets it (second call).
    fn delete(&self, id: &str) {
        self.call("DELETE", &format!("/agents/{id}"), None);
    }

    fn ws(&self, path: &str) -> Ws {
        let url = format!("{}{path}", self.base.replace("http://", "ws://"));
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.token).parse().expect("header"),
        );
        let (ws, _) = tungstenite::connect(request).expect("websocket");
        ws
    }

    /// `N_HEALTH` probes, one every [`HEALTH_INTERVAL`], so they span the
    /// load rather than a burst of it.
    fn health_latencies(&self) -> Vec<Duration> {
        let url = format!("{}/health", self.base);
        let mut latencies: Vec<Duration> = (0..N_HEALTH)
            .map(|_| {
                let start = Instant::now();
                let response = self.http.get(&url).call().expect("health");
                let _ = response.into_string();
                let latency = start.elapsed();
                std::thread::sleep(HEALTH_INTERVAL.saturating_sub(latency));
                latency
            })
            .collect();
        latencies.sort();
        latencies
    }

    fn rss_kib(&self) -> u64 {
        rss_kib_of(self.child.id())
    }
}

impl Drop for BrokerUnderTest {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
        }
        let _ = self.child.wait();
    }
}

fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a frame") {
            Message::Text(text) => return text.to_string(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}
