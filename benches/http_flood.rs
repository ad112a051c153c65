//! HTTP flood benchmark: a real `scout up` in a temporary home, 2,000
//! connections held open against it (half idle, half slowloris: a request
//! head started and never finished), replaced oldest first as fast as they
//! can be opened, while `GET /health` is timed on fresh connections.
//!
//! Prints `/health` p50 and p99 without and with the flood; the goal is a
//! p99 within 100 ms under the flood.
//!
//! `cargo bench --bench http_flood`

#[path = "support/scout_up.rs"]
mod scout_up;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Connections the flood holds open at any time.
const FLOOD_CONNECTIONS: usize = 2_000;

/// `/health` requests timed per phase.
const SAMPLES: usize = 1_000;

/// The goal for `/health` p99 under the flood.
const P99_GOAL: Duration = Duration::from_millis(100);

/// How long one `/health` may take before the run fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two replacements once the flood is at its size: 200
/// new connections a second keep the broker accepting and evicting without
/// running loopback out of ephemeral ports (each closed connection holds
/// one for a minute in TIME_WAIT).
const CHURN_PAUSE: Duration = Duration::from_millis(5);

/// Descriptors this process keeps for everything but the flood.
const DESCRIPTORS_RESERVED: u64 = 256;

fn main() {
    let limit = scout::http::serve::raise_file_limit().unwrap_or(1024);
    let n_flood = FLOOD_CONNECTIONS
        .min(usize::try_from(limit.saturating_sub(DESCRIPTORS_RESERVED)).unwrap_or(0));
    if n_flood < FLOOD_CONNECTIONS {
        println!("file limit {limit}: flooding with {n_flood} connections only");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path());
    let addr = broker.addr;

    let quiet = time_health(addr);
    report("/health, no flood", &quiet);

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let flood = {
        let stop = stop.clone();
        let opened = opened.clone();
        std::thread::spawn(move || run_flood(addr, n_flood, &stop, &opened, ready_tx))
    };
    ready_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the flood never reached its size");
    let flooded = time_health(addr);
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood thread");
    report(
        &format!(
            "/health, {n_flood} idle and slowloris connections held ({} opened in all)",
            opened.load(Ordering::Relaxed)
        ),
        &flooded,
    );
    let p99 = percentile(&flooded, 0.99);
    println!(
        "goal p99 <= {} ms under the flood: {}",
        P99_GOAL.as_millis(),
        if p99 <= P99_GOAL { "met" } else { "NOT met" }
    );
    let _ = broker.child.kill();
    let _ = broker.child.wait();
}

/// Holds `n_flood` connections open, replacing the oldest with a new one at
/// a steady rate so the broker keeps accepting and evicting under the
/// timing.
fn run_flood(
    addr: SocketAddr,
    n_flood: usize,
    stop: &AtomicBool,
    opened: &AtomicU64,
    ready: std::sync::mpsc::Sender<()>,
) {
    let slow_head = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Slow:");
    let mut held: VecDeque<TcpStream> = VecDeque::with_capacity(n_flood);
    let mut signalled = false;
    let mut idx: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if held.len() >= n_flood {
            held.pop_front();
            if !signalled {
                signalled = true;
                let _ = ready.send(());
            }
            // Load generation, not synchronisation: the churn rate.
            std::thread::sleep(CHURN_PAUSE);
        }
        let Ok(mut stream) = TcpStream::connect(addr) else {
            continue;
        };
        if idx.is_multiple_of(2) {
            let _ = stream.write_all(slow_head.as_bytes());
        }
        idx += 1;
        opened.fetch_add(1, Ordering::Relaxed);
        held.push_back(stream);
    }
}

/// Times `SAMPLES` requests to `/health`, each on a new connection as the
/// CLI makes them.
fn time_health(addr: SocketAddr) -> Vec<Duration> {
    let agent = ureq::AgentBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .max_idle_connections(0)
        .build();
    let url = format!("http://{addr}/health");
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let mut body = String::new();
        agent
            .get(&url)
            .call()
            .expect("/health")
            .into_reader()
            .read_to_string(&mut body)
            .expect("body");
        samples.push(started.elapsed());
    }
    samples.sort();
    samples
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(label: &str, sorted: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests)",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99)),
        ms(sorted[sorted.len() - 1]),
        sorted.len()
    );
}

/// A real `scout up` in a temporary home.
struct BrokerUnderTest {
    child: Child,
    addr: SocketAddr,
}

fn start_broker(dir: &Path) -> BrokerUnderTest {
    let scout_up::ScoutUp { child, ready } = scout_up::start(dir);
    let addr = ready["http_addr"]
        .as_str()
        .expect("http_addr")
        .parse()
        .expect("address");
    BrokerUnderTest { child, addr }
}
