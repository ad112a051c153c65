//! `ask` through `scout mcp` against the same routed turn without MCP, side
//! by side in one run: what the MCP server adds to a mention.
//!
//! Two real brokers on loopback (real QUIC, real SQLite): `@echo`, a bash
//! agent, lives on beta; every turn starts on alpha. Per sample, in turn:
//!
//! - http: what `scout send --wait` does over HTTP, in process: `POST
//!   /v1/invocations`, then the invocation's event stream until its
//!   delivery ends;
//! - mcp: one `tools/call ask` on a long-lived `scout mcp` session (stdio
//!   JSON-RPC, the server's own HTTP calls and stream, the result back);
//! - cli: the `scout send --wait` command, process start to exit.
//!
//! The MCP overhead is mcp minus http: the same broker work, plus the
//! MCP framing, the server's blocking-pool hops and its stdio pipes.
//!
//! ```sh
//! cargo bench --bench mcp_ask
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use scout_mesh::lifecycle::DeliveryState;
use serde_json::{Value, json};

/// Timed turns per path: a bash turn across two brokers takes tens of
/// milliseconds, so three paths stay within a minute or two.
const SAMPLES: usize = 200;

/// Untimed turns per path first (the owner's session starts on the first
/// turn; connections and caches warm up).
const WARMUP: usize = 10;

fn main() {
    let (alpha, _beta) = two_brokers();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = runtime.block_on(connect(&alpha));
    let base = alpha.broker().http_base();
    let token = alpha.sandbox.token();
    let agent = ureq::AgentBuilder::new().build();

    let mut http = Vec::with_capacity(SAMPLES);
    let mut mcp = Vec::with_capacity(SAMPLES);
    let mut cli = Vec::with_capacity(SAMPLES);
    for idx in 0..WARMUP + SAMPLES {
        let word = format!("turn-{idx}");
        let http_time = http_turn(&agent, &base, &token, &word);
        let mcp_time = runtime.block_on(mcp_turn(&client, &word));
        let cli_time = cli_turn(&alpha, &word);
        if idx >= WARMUP {
            http.push(http_time);
            mcp.push(mcp_time);
            cli.push(cli_time);
        }
    }
    runtime.block_on(async { client.cancel().await.expect("close the session") });
    report(&mut http, &mut mcp, &mut cli);
}

/// Alpha (origin) and beta (owner of `@echo`, a bash agent), in one mesh.
fn two_brokers() -> (common::Node, common::Node) {
    let mut alpha = common::Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = common::Node::setup("beta", &[]);
    beta.add_bash_agent("echo");
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    let mut command = beta.sandbox.scout();
    command.env("LOG_LEVEL", "warn");
    beta.broker = Some(common::BrokerProcess::start_command(command));
    alpha.wait_for_instance("@echo@beta#main");
    (alpha, beta)
}

async fn connect(alpha: &common::Node) -> RunningService<RoleClient, ()> {
    let mut command = alpha.sandbox.scout();
    command
        .arg("mcp")
        .env_remove("SCOUT_AGENT")
        .env_remove("SCOUT_URL")
        .env_remove("SCOUT_TOKEN")
        .env("LOG_LEVEL", "warn");
    let transport =
        TokioChildProcess::new(tokio::process::Command::from(command)).expect("scout mcp");
    ().serve(transport).await.expect("initialize")
}

/// Submit and follow the stream until the delivery ends, as the CLI does.
fn http_turn(agent: &ureq::Agent, base: &str, token: &str, word: &str) -> Duration {
    let started = Instant::now();
    let submitted: Value = agent
        .post(&format!("{base}/v1/invocations"))
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(
            json!({"target": "@echo", "message": format!("echo {word}"), "timeout_ms": 60_000}),
        )
        .expect("submit")
        .into_json()
        .expect("submitted");
    let id = submitted["invocation_id"].as_str().expect("id");
    let stream = agent
        .get(&format!("{base}/v1/invocations/{id}/stream"))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Accept", "text/event-stream")
        .call()
        .expect("stream");
    let mut event = String::new();
    for line in BufReader::new(stream.into_reader()).lines() {
        let line = line.expect("line");
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_owned();
            continue;
        }
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data: Value = serde_json::from_str(data.trim()).expect("event json");
        let state = match event.as_str() {
            "status" => &data["delivery"]["state"],
            "delivery" => &data["state"],
            _ => continue,
        };
        let Some(state) = state
            .as_str()
            .and_then(|word| word.parse::<DeliveryState>().ok())
        else {
            continue;
        };
        if state.is_terminal() {
            assert_eq!(state, DeliveryState::Completed, "http turn: {data}");
            return started.elapsed();
        }
    }
    panic!("the stream ended before the delivery")
}

async fn mcp_turn(client: &RunningService<RoleClient, ()>, word: &str) -> Duration {
    let started = Instant::now();
    let arguments = json!({"target": "@echo", "message": format!("echo {word}"), "timeout_s": 60});
    let Value::Object(arguments) = arguments else {
        unreachable!()
    };
    let result = client
        .call_tool(CallToolRequestParams::new("ask").with_arguments(arguments))
        .await
        .expect("ask");
    let elapsed = started.elapsed();
    let answer = result.structured_content.unwrap_or_default();
    assert!(
        answer["answer"]
            .as_str()
            .is_some_and(|text| text.contains(word)),
        "mcp turn: {answer}"
    );
    elapsed
}

fn cli_turn(alpha: &common::Node, word: &str) -> Duration {
    let started = Instant::now();
    let run = alpha.run(&[
        "send",
        "@echo",
        &format!("echo {word}"),
        "--wait",
        "--timeout",
        "60",
    ]);
    let elapsed = started.elapsed();
    assert!(
        run.code == 0 && run.stdout.contains(word),
        "cli turn ({}): {}\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    elapsed
}

fn percentile(sorted: &[f64], pct: usize) -> f64 {
    sorted[(sorted.len() * pct / 100).min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn report(http: &mut [Duration], mcp: &mut [Duration], cli: &mut [Duration]) {
    // Each mcp sample ran right after its http one: their difference is the
    // figure least moved by the machine's load drifting.
    let mut paired: Vec<f64> = http
        .iter()
        .zip(mcp.iter())
        .map(|(http, mcp)| ms(*mcp) - ms(*http))
        .collect();
    paired.sort_by(f64::total_cmp);
    let sorted = |samples: &[Duration]| {
        let mut values: Vec<f64> = samples.iter().copied().map(ms).collect();
        values.sort_by(f64::total_cmp);
        values
    };
    let (http, mcp, cli) = (sorted(http), sorted(mcp), sorted(cli));
    println!("mcp_ask: one bash turn across two brokers ({SAMPLES} samples each)");
    println!("{:<36} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    for (name, samples) in [
        ("http (submit + event stream)", &http),
        ("mcp (tools/call ask)", &mcp),
        ("cli (scout send --wait)", &cli),
    ] {
        println!(
            "{name:<36} {:>10.2} {:>10.2}",
            percentile(samples, 50),
            percentile(samples, 99)
        );
    }
    println!(
        "{:<36} {:>10.2} {:>10.2}",
        "mcp overhead (mcp - http)",
        percentile(&mcp, 50) - percentile(&http, 50),
        percentile(&mcp, 99) - percentile(&http, 99)
    );
    println!(
        "{:<36} {:>10.2} {:>10.2}",
        "mcp overhead, paired",
        percentile(&paired, 50),
        percentile(&paired, 99)
    );
    println!(
        "{:<36} {:>10.2} {:>10.2}",
        "mcp vs cli (mcp - cli)",
        percentile(&mcp, 50) - percentile(&cli, 50),
        percentile(&mcp, 99) - percentile(&cli, 99)
    );
}
