//! One Claude Code turn, run directly and routed through Scout, side by
//! side in one run: what Scout adds to a turn of a real agent CLI.
//!
//! - direct: `claude -p --output-format stream-json …` (the adapter's own
//!   invocation) with the prompt on stdin, from spawn to exit;
//! - routed: `scout send @coder "…" --wait` on broker alpha, for an agent
//!   owned by broker beta (two real brokers on loopback, real QUIC, real
//!   SQLite), from the command's start to its exit with the answer.
//!
//! Both talk to the same scripted Anthropic server (tests/common/model), so
//! the model answers at once and the difference is Scout: the `scout` CLI
//! process, the HTTP call, routing (durable at both ends), the owner's
//! session manager starting the structured run, and the answer's way back.
//! Samples alternate between the two so that machine load hits both alike.
//!
//! ```sh
//! scripts/install-agent-clis.sh        # the pinned CLIs into target/agent-clis
//! cargo bench --bench agent_turn
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent_clis::agent_cli;
use common::model::anthropic::{CLAUDE_API_KEY, claude_env, finish_claude_onboarding};
use common::model::{Api, ModelServer, Step};
use scout::adapter::{AdapterOptions, adapter_for};
use scout_mesh::lifecycle::Harness;

/// Timed turns per path: each is a real CLI run of about a second, so
/// this keeps the benchmark near a minute.
const SAMPLES: usize = 30;

/// Untimed turns per path first (the owner's session starts on the first
/// routed turn; caches warm up).
const WARMUP: usize = 3;

/// The scripted answer of every turn.
const ANSWER: &str = "Benchmark answer.";

fn main() {
    let server = ModelServer::start(Api::Anthropic, Vec::new());
    server.set_fallback(Step::Text(ANSWER.to_owned()));

    let direct_dir = tempfile::tempdir().expect("temp dir");
    let direct_home = std::fs::canonicalize(direct_dir.path()).expect("home");
    let direct_workdir = direct_home.join("work");
    std::fs::create_dir_all(&direct_workdir).expect("workdir");
    finish_claude_onboarding(&direct_home, &direct_workdir, CLAUDE_API_KEY);
    let direct_env = claude_env(&server.url(), &direct_home, Some(CLAUDE_API_KEY));

    let (alpha, _beta) = two_brokers(&server);

    let mut direct = Vec::with_capacity(SAMPLES);
    let mut routed = Vec::with_capacity(SAMPLES);
    for idx in 0..WARMUP + SAMPLES {
        let prompt = format!("Benchmark turn {idx}.");
        let direct_time = direct_turn(&direct_workdir, &direct_env, &prompt);
        let routed_time = routed_turn(&alpha, &prompt);
        if idx >= WARMUP {
            direct.push(direct_time);
            routed.push(routed_time);
        }
    }
    report(&mut direct, &mut routed);
}

/// Alpha (the origin) and beta (owner of `@coder`, Claude Code pointed at
/// `server`), in one mesh.
fn two_brokers(server: &ModelServer) -> (common::Node, common::Node) {
    let mut alpha = common::Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = common::Node::setup("beta", &[]);
    let home = std::fs::canonicalize(beta.sandbox.path()).expect("home");
    let workdir = home.join("work");
    std::fs::create_dir_all(&workdir).expect("workdir");
    finish_claude_onboarding(&home, &workdir, CLAUDE_API_KEY);
    let claude = agent_cli("claude").display().to_string();
    let cwd = workdir.display().to_string();
    let add = beta.run(&[
        "agents",
        "add",
        "coder",
        "--cwd",
        &cwd,
        "--workspace",
        "main",
        "--harness",
        "claude",
        "--command",
        &claude,
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    let mut command = beta.sandbox.scout();
    command
        .env("LOG_LEVEL", "warn")
        .envs(claude_env(&server.url(), &home, Some(CLAUDE_API_KEY)));
    beta.broker = Some(common::BrokerProcess::start_command(command));
    alpha.wait_for_instance("@coder@beta#main");
    (alpha, beta)
}

/// One turn of the CLI itself, the way Scout's adapter runs it.
fn direct_turn(workdir: &Path, env: &[(String, String)], prompt: &str) -> Duration {
    let adapter = adapter_for(Harness::Claude, &AdapterOptions::default()).expect("adapter");
    let invocation = adapter.invocation(prompt, None).expect("structured mode");
    let started = Instant::now();
    let mut child = Command::new(agent_cli("claude"))
        .args(&invocation.argv[1..])
        .current_dir(workdir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("claude -p");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(prompt.as_bytes())
        .expect("prompt");
    let output = child.wait_with_output().expect("claude output");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(ANSWER),
        "direct turn failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

/// One turn of `@coder` sent from alpha.
fn routed_turn(alpha: &common::Node, prompt: &str) -> Duration {
    let started = Instant::now();
    let run = alpha.run(&["send", "@coder", prompt, "--wait", "--timeout", "120"]);
    let elapsed = started.elapsed();
    assert!(
        run.code == 0 && run.stdout.contains(ANSWER),
        "routed turn failed ({}): {}\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    elapsed
}

fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    let idx = (sorted.len() * pct / 100).min(sorted.len() - 1);
    sorted[idx]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn report(direct: &mut [Duration], routed: &mut [Duration]) {
    // Each routed sample ran right after its direct one: their difference
    // is the figure least moved by the machine's load drifting, though the
    // CLI's own run-to-run spread (tens of milliseconds or more) stays in it.
    let mut paired_ms: Vec<f64> = direct
        .iter()
        .zip(routed.iter())
        .map(|(direct, routed)| ms(*routed) - ms(*direct))
        .collect();
    paired_ms.sort_by(f64::total_cmp);
    direct.sort();
    routed.sort();
    println!("agent_turn: one Claude Code turn against a scripted model ({SAMPLES} samples each)");
    println!("{:<28} {:>10} {:>10}", "", "p50 ms", "p90 ms");
    for (name, samples) in [
        ("direct (claude -p)", &*direct),
        ("routed (scout send --wait)", &*routed),
    ] {
        println!(
            "{name:<28} {:>10.1} {:>10.1}",
            ms(percentile(samples, 50)),
            ms(percentile(samples, 90))
        );
    }
    println!(
        "{:<28} {:>10.1} {:>10.1}",
        "added by Scout",
        ms(percentile(routed, 50)) - ms(percentile(direct, 50)),
        ms(percentile(routed, 90)) - ms(percentile(direct, 90))
    );
    let paired_idx = |pct: usize| (paired_ms.len() * pct / 100).min(paired_ms.len() - 1);
    println!(
        "{:<28} {:>10.1} {:>10.1}",
        "paired difference",
        paired_ms[paired_idx(50)],
        paired_ms[paired_idx(90)]
    );
}
