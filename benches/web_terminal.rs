//! The web view's terminal and login, measured with real brokers on
//! loopback (real QUIC, real SQLite, a real bash agent on a PTY):
//!
//! - keystroke to echo on a remote agent's terminal, through the viewer's
//!   broker and the owner's (`/ws/mesh/agents/{instance}/terminal` on
//!   alpha, relayed over the mesh to beta), side by side with the same
//!   keystroke through the owner's own terminal WebSocket
//!   (`/ws/agents/{id}/terminal` on beta); p50 and p99;
//! - terminal throughput: bash writes 20 MB into the terminal, and the
//!   viewer reads until the end marker, through the relay and side by
//!   side through the owner's own WebSocket; the median of five runs each;
//!   once typed into the terminal, once as an agent's turn sent from the
//!   viewer's broker (the owner then also keeps and streams the flight's
//!   output);
//! - `scout open` to the first agents data: from starting `scout open
//!   --print` to the first `snapshot` event of `/v1/web/live`, logged in
//!   with the cookie the login URL set.
//!
//! The client is a WebSocket client in Rust (the same framing the page
//! uses); a browser would add its own event loop on both paths alike.
//!
//! ```sh
//! cargo bench --bench web_terminal
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Node;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Timed keystrokes per path.
const KEYSTROKES: usize = 300;

/// Untimed keystrokes per path first.
const WARMUP: usize = 20;

/// Bytes bash writes for the throughput run.
const FLOOD_BYTES: usize = 20_000_000;

/// Flood runs per path.
const FLOOD_RUNS: usize = 5;

/// Logins timed for `scout open` to first data.
const LOGINS: usize = 10;

/// How long one read may wait before the run fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let (alpha, beta) = common::viewer_and_shell_owner();
    let runtime = beta.get("/agents");
    let id = runtime["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|agent| agent["name"] == "@shell@beta#main")
        .expect("beta's session")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // The first turn ends once bash is quiet; until then whatever the
    // terminal shows is that turn's output.
    turns_done(&beta);
    let remote_path = "/ws/mesh/agents/%40shell%40beta%23main/terminal";
    let local_path = format!("/ws/agents/{id}/terminal");

    let mut remote = Vec::new();
    let mut local = Vec::new();
    // Blocks alternate between the paths, so machine load hits both alike;
    // one connection at a time, so no echo waits unread on the other.
    for _ in 0..3 {
        let mut ws = connect(&alpha, remote_path);
        remote.extend(keystrokes(&mut ws, KEYSTROKES / 3));
        drop(ws);
        let mut ws = connect(&beta, &local_path);
        local.extend(keystrokes(&mut ws, KEYSTROKES / 3));
    }
    println!("keystroke to echo, {} samples per path:", remote.len());
    println!(
        "  remote (alpha -> QUIC -> beta):  p50 {:>7.3} ms  p99 {:>7.3} ms",
        percentile(&mut remote, 50.0),
        percentile(&mut remote, 99.0)
    );
    println!(
        "  owner's own WebSocket (beta):    p50 {:>7.3} ms  p99 {:>7.3} ms",
        percentile(&mut local, 50.0),
        percentile(&mut local, 99.0)
    );

    // Floods alternate between the paths too; the figure is the median
    // run, since one run swings with whatever else the machine does.
    let mut remote_floods = Vec::new();
    let mut local_floods = Vec::new();
    for run in 0..FLOOD_RUNS {
        let mut ws = connect(&alpha, remote_path);
        remote_floods.push(flood(&mut ws, 2 * run));
        drop(ws);
        let mut ws = connect(&beta, &local_path);
        local_floods.push(flood(&mut ws, 2 * run + 1));
    }
    println!(
        "terminal throughput, bash writes {:.1} MB typed in the terminal, {FLOOD_RUNS} runs per path:",
        FLOOD_BYTES as f64 / 1e6
    );
    report_floods("remote (alpha -> QUIC -> beta)", &remote_floods);
    report_floods("owner's own WebSocket (beta)  ", &local_floods);

    // The same flood as an agent's turn sent from alpha: beta also keeps
    // the flight's output and streams it to alpha, as when a person watches
    // an agent work.
    let mut remote_floods = Vec::new();
    let mut local_floods = Vec::new();
    for run in 0..FLOOD_RUNS {
        let mut ws = connect(&alpha, remote_path);
        remote_floods.push(flood_turn(&alpha, &beta, &mut ws, 100 + 2 * run));
        drop(ws);
        let mut ws = connect(&beta, &local_path);
        local_floods.push(flood_turn(&alpha, &beta, &mut ws, 100 + 2 * run + 1));
    }
    println!(
        "terminal throughput, the same flood as a turn sent from alpha, {FLOOD_RUNS} runs per path:"
    );
    report_floods("remote (alpha -> QUIC -> beta)", &remote_floods);
    report_floods("owner's own WebSocket (beta)  ", &local_floods);

    let mut opens: Vec<f64> = (0..LOGINS).map(|_| open_to_first_data(&alpha)).collect();
    println!(
        "`scout open` to first agents data, {LOGINS} logins: p50 {:.1} ms, max {:.1} ms",
        percentile(&mut opens, 50.0),
        percentile(&mut opens, 100.0)
    );
}

fn connect(node: &Node, path: &str) -> Ws {
    let base = node.broker().http_base().replacen("http://", "ws://", 1);
    let mut request = format!("{base}{path}")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", node.sandbox.token())
            .parse()
            .expect("header"),
    );
    let (mut ws, _) = tungstenite::connect(request).expect("terminal WebSocket");
    if let MaybeTlsStream::Plain(stream) = ws.get_mut() {
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
    }
    // The first frame says `connected`; a redraw may follow. Start clean:
    // a fresh prompt line, drained until its echo.
    read_until(&mut ws, |text| text.contains("connected"));
    ws.send(Message::text("\u{15}")).expect("send");
    ws.flush().expect("flush");
    ws
}

/// Reads text frames until one satisfies `done`; returns the bytes read.
fn read_until(ws: &mut Ws, mut done: impl FnMut(&str) -> bool) -> usize {
    let mut bytes = 0;
    loop {
        match ws.read().expect("terminal frame") {
            Message::Text(text) => {
                bytes += text.len();
                if done(text.as_str()) {
                    return bytes;
                }
            }
            Message::Close(_) => panic!("the terminal closed"),
            _ => {}
        }
    }
}

/// Types `a` and waits for its echo, then erases it and waits for that
/// echo; returns the `a` round trips in milliseconds.
fn keystrokes(ws: &mut Ws, count: usize) -> Vec<f64> {
    let mut samples = Vec::with_capacity(count);
    for idx in 0..WARMUP + count {
        let start = Instant::now();
        ws.send(Message::text("a")).expect("send");
        read_until(ws, |text| text.contains('a'));
        let elapsed = start.elapsed();
        ws.send(Message::text("\u{7f}")).expect("send");
        read_until(ws, |text| text.contains('\u{8}'));
        if idx >= WARMUP {
            samples.push(elapsed.as_secs_f64() * 1000.0);
        }
    }
    samples
}

/// The flood's command line and the marker only its output has whole
/// (split in the command line; it names the run, so an earlier run's on
/// the screen does not end this one).
fn flood_command(run: usize) -> (String, String) {
    (
        format!("yes 0123456789abcdef | head -c {FLOOD_BYTES}; echo FLOOD''DONE{run}."),
        format!("FLOODDONE{run}."),
    )
}

/// Types the flood into bash's terminal and reads until its end marker:
/// (bytes received, lagged notices, elapsed).
fn flood(ws: &mut Ws, run: usize) -> (usize, usize, Duration) {
    let (command, marker) = flood_command(run);
    let start = Instant::now();
    ws.send(Message::text(format!("{command}\r")))
        .expect("send");
    read_flood(ws, &marker, start)
}

/// Sends the flood to beta's agent from alpha as a turn and reads the
/// terminal until its end marker; then waits for the turn to end, so the
/// next run does not queue behind it.
fn flood_turn(alpha: &Node, beta: &Node, ws: &mut Ws, run: usize) -> (usize, usize, Duration) {
    let (command, marker) = flood_command(run);
    let start = Instant::now();
    let sent = alpha.run(&["send", "@shell@beta", &command]);
    assert_eq!(sent.code, 0, "send: {}", sent.stderr);
    let flood = read_flood(ws, &marker, start);
    turns_done(beta);
    flood
}

/// Waits until every flight on `node` has ended.
fn turns_done(node: &Node) {
    common::wait_until("the agent's turns to end", || {
        let flights = node.get("/v1/flights");
        flights
            .as_array()?
            .iter()
            .all(|flight| {
                matches!(
                    flight["flight"].as_str(),
                    None | Some("completed" | "failed" | "cancelled")
                )
            })
            .then_some(())
    });
}

/// Reads terminal frames until `marker`: (bytes received, lagged
/// notices, time since `start`).
fn read_flood(ws: &mut Ws, marker: &str, start: Instant) -> (usize, usize, Duration) {
    let mut lagged = 0;
    let mut tail = String::new();
    let received = read_until(ws, |text| {
        if text.starts_with("{\"type\":\"lagged\"") {
            lagged += 1;
        }
        tail.push_str(text);
        let found = tail.contains(marker);
        let keep = tail.len().saturating_sub(16);
        let cut = (keep..=tail.len())
            .find(|&i| tail.is_char_boundary(i))
            .unwrap_or(tail.len());
        tail.drain(..cut);
        found
    });
    (received, lagged, start.elapsed())
}

/// Prints the median, slowest and fastest of a path's floods, with what
/// the viewer received and how often it was skipped to a fresh screen.
fn report_floods(path: &str, floods: &[(usize, usize, Duration)]) {
    let mut rates: Vec<f64> = floods
        .iter()
        .map(|(_, _, elapsed)| FLOOD_BYTES as f64 / 1e6 / elapsed.as_secs_f64())
        .collect();
    let received: usize = floods.iter().map(|(bytes, _, _)| bytes).sum();
    let lagged: usize = floods.iter().map(|(_, lagged, _)| lagged).sum();
    let median = percentile(&mut rates, 50.0);
    println!(
        "  {path}: median {median:>5.1} MB/s (min {:.1}, max {:.1}); received {:.1} MB in all, {lagged} lagged notices",
        rates[0],
        rates[rates.len() - 1],
        received as f64 / 1e6,
    );
}

/// `scout open --print`, the login URL (cookie), then `/v1/web/live` until
/// its first snapshot; milliseconds from the start.
fn open_to_first_data(alpha: &Node) -> f64 {
    let start = Instant::now();
    let open = alpha.run(&["--json", "open", "--print"]);
    assert_eq!(open.code, 0, "{}", open.stderr);
    let url = open.json()["url"].as_str().expect("url").to_owned();
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let login = agent.get(&url).call().expect("login");
    let cookie = login
        .header("set-cookie")
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let live = agent
        .get(&format!("{}/v1/web/live", alpha.broker().http_base()))
        .set("Cookie", &cookie)
        .set("Accept", "text/event-stream")
        .call()
        .expect("live stream");
    let mut lines = BufReader::new(live.into_reader()).lines();
    loop {
        let line = lines.next().expect("a snapshot").expect("line");
        if line.starts_with("data:") && line.contains("\"instances\"") {
            break;
        }
    }
    start.elapsed().as_secs_f64() * 1000.0
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}
