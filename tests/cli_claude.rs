//! Claude Code end to end: the real `claude` (pinned in
//! `scripts/agent-clis/`) run by Scout's session manager, and by a real
//! broker for a routed turn, against a scripted Anthropic Messages server
//! (`tests/common/model/anthropic.rs`). Only the model's answers are
//! scripted; the CLI, its terminal, its process tree and its files are
//! real. Each test gives the CLI its own HOME and `CLAUDE_CONFIG_DIR` in a
//! temporary directory, points `ANTHROPIC_BASE_URL` at the server, and
//! turns off auto-update, telemetry and other traffic the test does not
//! script.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::agent_clis::agent_cli;
use common::model::anthropic::{
    CLAUDE_API_KEY, claude_env, finish_claude_onboarding, is_conversation_request,
};
use common::model::{Api, ModelServer, Recorded, Step, USAGE};
use scout::adapter::claude::CLI_FLAGS_USED;
use scout::adapter::{
    AdapterOptions, AuthStatus, FailureKind, StructuredEvent, TurnUsage, adapter_for,
};
use scout::pty::process::read_stat;
use scout::pty::{
    AgentInfo, AgentStatus, EventKind, RuntimeConfig, RuntimeError, SessionManager, SpawnRequest,
    Turn, TurnEvent, TurnFailure, TurnOutcome,
};
use scout_mesh::lifecycle::Harness;
use serde_json::{Value, json};

/// How long one CLI turn may take: the CLI starts in about a second here,
/// but a loaded machine running several builds can be much slower.
const TURN_BOUND: Duration = Duration::from_secs(120);

/// How long a wait for a session event (exit, stop) may take.
const EVENT_BOUND: Duration = Duration::from_secs(60);

/// The API key the CLI is given.
const API_KEY: &str = CLAUDE_API_KEY;

/// One test's Claude Code: a scripted server and a temporary directory with
/// the CLI's home, its config dir and the agent's working directory.
struct Claude {
    server: ModelServer,
    dir: tempfile::TempDir,
    manager: Arc<SessionManager>,
}

impl Claude {
    /// A fresh home whose first-run setup is done (see
    /// [`Claude::finish_onboarding`]), with `steps` scripted.
    fn new(steps: Vec<Step>) -> Claude {
        let claude = Claude::fresh(steps);
        claude.finish_onboarding();
        claude
    }

    /// A home where the CLI has never run.
    fn fresh(steps: Vec<Step>) -> Claude {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("home/.claude")).expect("config dir");
        std::fs::create_dir_all(dir.path().join("work")).expect("workdir");
        Claude {
            server: ModelServer::start(Api::Anthropic, steps),
            dir,
            manager: Arc::new(SessionManager::new(RuntimeConfig {
                stop_grace: Duration::from_millis(500),
                ..RuntimeConfig::default()
            })),
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The agent's working directory, as the CLI sees it (no symlinks).
    fn workdir(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path().join("work")).expect("workdir")
    }

    /// Records what a person's first interactive run would (see
    /// [`finish_claude_onboarding`]).
    fn finish_onboarding(&self) {
        finish_claude_onboarding(&self.home(), &self.workdir(), API_KEY);
    }

    /// The agent's environment (see [`claude_env`]).
    fn env(&self, key: Option<&str>) -> Vec<(String, String)> {
        claude_env(&self.server.url(), &self.home(), key)
    }

    fn spawn_request(&self, key: Option<&str>) -> SpawnRequest {
        SpawnRequest {
            name: Some("claude".to_owned()),
            harness: Harness::Claude,
            workdir: Some(self.workdir().display().to_string()),
            options: AdapterOptions {
                command: Some(vec![agent_cli("claude").display().to_string()]),
                ..AdapterOptions::default()
            },
            env: self.env(key),
            size: None,
        }
    }

    async fn spawn(&self) -> AgentInfo {
        self.manager
            .spawn(self.spawn_request(Some(API_KEY)))
            .await
            .expect("spawn claude")
    }

    /// Runs one turn in `conversation` and collects its events.
    async fn turn(&self, agent: &AgentInfo, prompt: &str, conversation: &str) -> Vec<TurnEvent> {
        let turn = self
            .manager
            .run_turn(
                &agent.id,
                prompt.to_owned(),
                Some(TURN_BOUND),
                Some(conversation.to_owned()),
            )
            .expect("start the turn");
        collect(turn).await
    }

    /// The requests that were turns of the conversation (not side calls).
    fn conversation_requests(&self) -> Vec<Recorded> {
        self.server
            .requests()
            .into_iter()
            .filter(|request| {
                request.path.starts_with("/v1/messages") && is_conversation_request(&request.body)
            })
            .collect()
    }
}

/// A turn's events up to and including `Finished`, bounded.
async fn collect(mut turn: Turn) -> Vec<TurnEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(TURN_BOUND + EVENT_BOUND, async {
        while let Some(event) = turn.events.recv().await {
            let last = matches!(event, TurnEvent::Finished(_));
            events.push(event);
            if last {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the turn did not finish; events so far: {events:#?}"));
    events
}

fn outcome(events: &[TurnEvent]) -> &TurnOutcome {
    match events.last() {
        Some(TurnEvent::Finished(outcome)) => outcome,
        _ => panic!("the turn has no outcome: {events:#?}"),
    }
}

fn response(events: &[TurnEvent]) -> &str {
    match outcome(events) {
        TurnOutcome::Completed { response } => response,
        other => panic!("the turn did not complete: {other:#?}\nevents: {events:#?}"),
    }
}

fn failure(events: &[TurnEvent]) -> (TurnFailure, &str) {
    match outcome(events) {
        TurnOutcome::Failed { failure, message } => (*failure, message),
        other => panic!("the turn did not fail: {other:#?}"),
    }
}

/// The last usage the turn reported.
fn last_usage(events: &[TurnEvent]) -> TurnUsage {
    events
        .iter()
        .rev()
        .find_map(|event| match event {
            TurnEvent::Usage(usage) => Some(*usage),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no usage event: {events:#?}"))
}

/// The messages of a request, as one JSON text to search.
fn messages_text(request: &Recorded) -> String {
    request.body["messages"].to_string()
}

/// Waits (bounded) for the runtime event `kind` about `agent_id`.
async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<scout::pty::RuntimeEvent>,
    kind: EventKind,
    agent_id: &str,
) -> scout::pty::RuntimeEvent {
    tokio::time::timeout(EVENT_BOUND, async {
        loop {
            match events.recv().await {
                Ok(event) if event.event == kind && event.agent_id == agent_id => return event,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(err) => panic!("event stream ended: {err}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind:?} event for {agent_id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_completes_with_the_scripted_answer_and_its_usage() {
    let claude = Claude::new(vec![Step::Text("The scripted answer.".to_owned())]);
    let mut runtime_events = claude.manager.subscribe();
    let agent = claude.spawn().await;
    assert_eq!(agent.auth, AuthStatus::LoggedIn);
    // The TUI on the terminal comes up ready for the person (its input box
    // and mode line are recognised).
    wait_event(&mut runtime_events, EventKind::AgentReady, &agent.id).await;
    let events = claude.turn(&agent, "Say something.", "c1").await;
    assert_eq!(response(&events), "The scripted answer.");
    // The answer streamed as it came (partial messages are on).
    assert!(
        events
            .iter()
            .any(|event| matches!(event, TurnEvent::Output(text) if text.contains("scripted"))),
        "{events:#?}"
    );
    let usage = last_usage(&events);
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.cached_tokens),
        (USAGE.input_tokens, USAGE.output_tokens, USAGE.cached_tokens),
        "{usage:?}"
    );
    assert!(
        usage.cost_micro_usd.is_some_and(|cost| cost > 0),
        "{usage:?}"
    );
    let requests = claude.conversation_requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let headers = &requests[0].headers;
    assert!(
        headers
            .iter()
            .any(|(name, value)| name == "x-api-key" && value == API_KEY),
        "{headers:?}"
    );
    assert!(messages_text(&requests[0]).contains("Say something."));
    claude.manager.stop(&agent.id).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_continues_and_another_does_not() {
    let claude = Claude::new(vec![
        Step::Text("First answer.".to_owned()),
        Step::Text("Second answer.".to_owned()),
        Step::Text("Other answer.".to_owned()),
    ]);
    let agent = claude.spawn().await;
    let first = claude.turn(&agent, "First question?", "conv-a").await;
    assert_eq!(response(&first), "First answer.");
    let second = claude.turn(&agent, "Second question?", "conv-a").await;
    assert_eq!(response(&second), "Second answer.");
    let other = claude.turn(&agent, "Other question?", "conv-b").await;
    assert_eq!(response(&other), "Other answer.");

    let requests = claude.conversation_requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    let second_seen = messages_text(&requests[1]);
    assert!(
        second_seen.contains("First question?") && second_seen.contains("First answer."),
        "the second turn does not carry the first: {second_seen}"
    );
    let other_seen = messages_text(&requests[2]);
    assert!(other_seen.contains("Other question?"), "{other_seen}");
    assert!(
        !other_seen.contains("First question?") && !other_seen.contains("First answer."),
        "another conversation sees the first one: {other_seen}"
    );
    claude.manager.stop(&agent.id).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_runs_and_its_result_reaches_the_model() {
    let claude = Claude::new(vec![
        Step::ToolCall {
            name: "Bash".to_owned(),
            input: json!({ "command": "echo hi", "description": "Say hi" }),
        },
        Step::Text("The command said hi.".to_owned()),
    ]);
    let agent = claude.spawn().await;
    let events = claude.turn(&agent, "Run echo hi.", "c1").await;
    assert_eq!(response(&events), "The command said hi.");
    assert!(
        events
            .iter()
            .any(|event| *event == TurnEvent::Tool("Bash: echo hi".to_owned())),
        "no tool event: {events:#?}"
    );
    let requests = claude.conversation_requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let results: Vec<&Value> = requests[1].body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["content"].as_array())
        .flatten()
        .filter(|block| block["type"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 1, "{:#}", requests[1].body["messages"]);
    assert!(
        results[0]["content"].to_string().contains("hi") && results[0]["is_error"] != true,
        "{:#}",
        results[0]
    );
    // Two model requests in the turn: the CLI's usage sums both.
    let usage = last_usage(&events);
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.cached_tokens),
        (
            2 * USAGE.input_tokens,
            2 * USAGE.output_tokens,
            2 * USAGE.cached_tokens
        ),
        "{usage:?}"
    );
    claude.manager.stop(&agent.id).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_is_auth_required() {
    let claude = Claude::new(Vec::new());
    let agent = claude
        .manager
        .spawn(claude.spawn_request(None))
        .await
        .expect("spawn claude");
    assert_eq!(agent.auth, AuthStatus::LoggedOut);
    let err = claude
        .manager
        .run_turn(&agent.id, "hi".to_owned(), Some(TURN_BOUND), None)
        .expect_err("a turn without credentials");
    assert_eq!(err.code(), "AUTH_REQUIRED", "{err}");
    assert!(err.to_string().contains("/login"), "{err}");
    claude.manager.stop(&agent.id).await.expect("stop");

    // What the CLI itself says without credentials is read as the same
    // failure, with its own words.
    let adapter = adapter_for(Harness::Claude, &AdapterOptions::default()).expect("adapter");
    let invocation = adapter.invocation("hi", None).expect("a structured mode");
    let mut child = std::process::Command::new(agent_cli("claude"))
        .args(&invocation.argv[1..])
        .current_dir(claude.workdir())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(claude.env(None))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run claude -p");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(invocation.stdin.as_deref().unwrap_or("").as_bytes())
            .expect("write the prompt");
    }
    let output = child.wait_with_output().expect("claude -p output");
    let failures: Vec<StructuredEvent> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .flat_map(|line| adapter.parse_line(line))
        .filter(|event| matches!(event, StructuredEvent::Failed { .. }))
        .collect();
    match failures.as_slice() {
        [StructuredEvent::Failed { message, kind }] => {
            assert_eq!(*kind, FailureKind::AuthRequired, "{message}");
            assert!(message.contains("/login"), "{message}");
        }
        other => panic!(
            "expected one failure, got {other:#?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
    assert!(claude.conversation_requests().is_empty());
}

/// Runs one turn against a server that fails every model request with
/// `status` and returns the turn's failure.
async fn failing_turn(status: u16, message: &str) -> (TurnFailure, String, Claude) {
    let error = Step::Error {
        status,
        message: message.to_owned(),
        retry_after: Some(0),
    };
    let claude = Claude::new(vec![error.clone()]);
    // Retries get the same answer.
    claude.server.set_fallback(error);
    let agent = claude.spawn().await;
    let events = claude.turn(&agent, "hi", "c1").await;
    let (kind, text) = failure(&events);
    let text = text.to_owned();
    claude.manager.stop(&agent.id).await.expect("stop");
    (kind, text, claude)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_the_server_is_auth_required() {
    let (kind, message, claude) = failing_turn(401, "invalid x-api-key").await;
    assert_eq!(kind, TurnFailure::AuthRequired, "{message}");
    assert_eq!(kind.code(), "AUTH_REQUIRED");
    assert!(!claude.conversation_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_harness_errors() {
    for (status, text) in [
        (429, "scripted rate limit reached"),
        (500, "scripted internal failure"),
    ] {
        let (kind, message, claude) = failing_turn(status, text).await;
        assert_eq!(kind, TurnFailure::Harness, "{status}: {message}");
        assert_eq!(kind.code(), "HARNESS_ERROR");
        assert!(
            message.contains(text),
            "{status}: the failure does not carry the server's message: {message}"
        );
        assert!(!claude.conversation_requests().is_empty());
    }
}

/// Processes whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| read_stat(*pid).is_some_and(|stat| stat.ppid == parent))
        .collect()
}

/// `root` and every process below it.
fn tree_of(root: i32) -> BTreeSet<i32> {
    let mut tree = BTreeSet::from([root]);
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for child in children_of(pid) {
            if tree.insert(child) {
                todo.push(child);
            }
        }
    }
    tree
}

/// Every live process in process group `pgrp`.
fn group_members(pgrp: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_alive(*pid) && read_stat(*pid).is_some_and(|stat| stat.pgrp == pgrp))
        .collect()
}

fn is_alive(pid: i32) -> bool {
    read_stat(pid).is_some_and(|stat| !matches!(stat.state, 'Z' | 'X'))
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

/// The structured run of a turn in `workdir`: a child of this test process
/// running `claude -p` there (other tests run theirs elsewhere).
fn structured_run(workdir: &Path) -> Option<i32> {
    let me = i32::try_from(std::process::id()).expect("pid");
    children_of(me).into_iter().find(|pid| {
        let line = cmdline(*pid);
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
        line.contains("claude") && line.contains(" -p ") && cwd.as_deref() == Some(workdir)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_turn_kills_the_whole_process_tree() {
    let claude = Claude::new(vec![Step::Hang]);
    let agent = claude.spawn().await;
    let turn = claude
        .manager
        .run_turn(
            &agent.id,
            "Take forever.".to_owned(),
            Some(TURN_BOUND),
            Some("c1".to_owned()),
        )
        .expect("start the turn");
    claude.server.wait_for(TURN_BOUND, |requests| {
        requests
            .iter()
            .any(|request| is_conversation_request(&request.body))
    });
    // Mid-turn: the CLI is waiting on the model's hanging stream.
    let run =
        structured_run(&claude.workdir()).expect("the structured run is a child of the broker");
    let run_group = read_stat(run).expect("stat").pgrp;
    let interactive = i32::try_from(agent.pid).expect("pid");
    let mut tree = tree_of(run);
    tree.extend(tree_of(interactive));
    assert!(tree.len() >= 2, "{tree:?}");

    // What the routing executor does on cancel: stop the agent.
    let stopped = claude.manager.stop(&agent.id).await.expect("stop");
    assert_eq!(stopped.status, AgentStatus::Stopped);
    let events = collect(turn).await;
    assert_eq!(failure(&events).0, TurnFailure::AgentStopped, "{events:#?}");
    common::wait_until("the whole process tree to be gone", || {
        let survivors: Vec<i32> = tree
            .iter()
            .copied()
            .filter(|pid| is_alive(*pid))
            .chain(group_members(run_group))
            .chain(group_members(interactive))
            .collect();
        survivors.is_empty().then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_without_onboarding_is_onboarding_required() {
    // The model never answers: a turn started with the session is still
    // running when the TUI gives up, and ends with the session's reason.
    let claude = Claude::fresh(vec![Step::Hang]);
    let mut events = claude.manager.subscribe();
    // The first-run check of `api.anthropic.com` fails here for want of a
    // network; a proxy that refuses makes it fail the same way on a machine
    // that has one (where the CLI would go on to its setup screens and
    // wait for a person). The scripted server on loopback is not proxied.
    let refused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut request = claude.spawn_request(Some(API_KEY));
    request.env.extend([
        (
            "HTTPS_PROXY".to_owned(),
            format!("http://127.0.0.1:{refused_port}"),
        ),
        ("NO_PROXY".to_owned(), "127.0.0.1,localhost".to_owned()),
    ]);
    let agent = claude.manager.spawn(request).await.expect("spawn claude");
    match claude
        .manager
        .run_turn(&agent.id, "hi".to_owned(), Some(TURN_BOUND), None)
    {
        Ok(turn) => {
            let turn_events = collect(turn).await;
            let (kind, message) = failure(&turn_events);
            assert_eq!(kind, TurnFailure::OnboardingRequired, "{message}");
            assert!(message.contains("first-run"), "{message}");
        }
        // The TUI was quicker than the turn.
        Err(err) => assert_eq!(err.code(), "ONBOARDING_REQUIRED", "{err}"),
    }
    let stopped = wait_event(&mut events, EventKind::AgentStopped, &agent.id).await;
    let info = claude.manager.info(&agent.id).expect("info");
    let screen = claude.manager.logs(&agent.id, 40).unwrap_or_default();
    assert_eq!(info.exit_code, Some(1), "{info:#?}\n{screen:#?}");
    assert_eq!(info.status, AgentStatus::Error, "{info:#?}");
    let error = info.error.clone().expect("an error");
    assert_eq!(error.code, "ONBOARDING_REQUIRED", "{error:?}\n{screen:#?}");
    assert!(
        error.message.contains("hasCompletedOnboarding") && error.message.contains("`claude`"),
        "{error:?}"
    );
    assert_eq!(
        stopped.data["agent"]["error"]["code"], "ONBOARDING_REQUIRED",
        "{}",
        stopped.data
    );
    let err = claude
        .manager
        .run_turn(&agent.id, "hi".to_owned(), Some(TURN_BOUND), None)
        .expect_err("a turn on a CLI that stopped at its setup");
    assert!(
        matches!(&err, RuntimeError::OnboardingRequired(message) if message.contains("first-run")),
        "{err:?}"
    );
    assert_eq!(err.code(), "ONBOARDING_REQUIRED");
}

#[test]
fn the_pinned_cli_still_has_every_flag_the_adapter_uses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(agent_cli("claude"))
        .arg("--help")
        .env("HOME", dir.path())
        .env("CLAUDE_CONFIG_DIR", dir.path().join(".claude"))
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .output()
        .expect("claude --help");
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    let missing: Vec<&str> = CLI_FLAGS_USED
        .iter()
        .copied()
        .filter(|flag| !help_lists(&help, flag))
        .collect();
    assert!(
        missing.is_empty(),
        "`claude --help` no longer lists {missing:?}:\n{help}"
    );
}

/// Whether `help` lists `word` as a whole word (a flag, or a flag's value
/// in its choices, quoted).
fn help_lists(help: &str, word: &str) -> bool {
    help.match_indices(word).any(|(idx, _)| {
        let before = help[..idx].chars().next_back();
        let after = help[idx + word.len()..].chars().next();
        let boundary = |ch: Option<char>| {
            ch.is_none_or(|ch| !(ch.is_alphanumeric() || ch == '-' || ch == '_'))
        };
        boundary(before) && boundary(after)
    })
}

/// Whether `path` holds text containing `needle`.
fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.contains(needle))
}

/// Beta: a broker with `@coder`, the real claude answering from `server`,
/// joined to `alpha`'s mesh and running. Returns beta and claude's working
/// directory.
fn claude_broker_joining(alpha: &common::Node, server: &ModelServer) -> (common::Node, PathBuf) {
    let mut beta = common::Node::setup("beta", &[]);
    // The broker's agents inherit its environment; HOME is the sandbox
    // (the broker's own home is given with --home).
    let home = std::fs::canonicalize(beta.sandbox.path()).expect("home");
    let workdir = home.join("work");
    std::fs::create_dir_all(&workdir).expect("workdir");
    finish_claude_onboarding(&home, &workdir, API_KEY);
    let claude_path = agent_cli("claude").display().to_string();
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
        &claude_path,
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    let mut command = beta.sandbox.scout();
    command.envs(claude_env(&server.url(), &home, Some(API_KEY)));
    beta.broker = Some(common::BrokerProcess::start_command(command));
    // A broker that joins with an empty store publishes its own agents only
    // after it has caught up with a peer: wait until both brokers resolve
    // `@coder`, so a test's first `send` never races that.
    for node in [alpha, &beta] {
        node.wait_for_instance("@coder@beta#main");
    }
    (beta, workdir)
}

#[test]
fn a_routed_turn_from_another_broker_runs_claude_with_a_tool() {
    let server = ModelServer::start(
        Api::Anthropic,
        vec![
            Step::ToolCall {
                name: "Bash".to_owned(),
                input: json!({ "command": "echo hi > routed.txt && cat routed.txt" }),
            },
            Step::Text("Routed answer: the file says hi.".to_owned()),
        ],
    );
    let mut alpha = common::Node::setup("alpha", &[]);
    alpha.start();
    let (beta, workdir) = claude_broker_joining(&alpha, &server);
    let run = alpha.run(&[
        "send",
        "@coder",
        "Write hi to routed.txt and read it back.",
        "--wait",
        "--timeout",
        "120",
    ]);
    assert_eq!(
        run.code,
        0,
        "stdout: {}\nstderr: {}\nbeta: {}",
        run.stdout,
        run.stderr,
        beta.broker().stderr()
    );
    assert!(
        run.stdout.contains("Routed answer: the file says hi."),
        "{}",
        run.stdout
    );
    // The tool really ran on beta, in the agent's working directory, and
    // its result went back to the model.
    assert!(file_contains(&workdir.join("routed.txt"), "hi"));
    let requests: Vec<Recorded> = server
        .requests()
        .into_iter()
        .filter(|request| is_conversation_request(&request.body))
        .collect();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(messages_text(&requests[1]).contains("tool_result"));

    // The CLI's own usage (two model requests of the scripted counts) is on
    // beta's flight, and alpha's `scout usage` totals it from beta.
    let beta_row = common::model::assert_node_usage(&alpha, "beta", 1, 2);
    let usage = &beta_row["usage"];
    let totals = &beta_row;
    assert!(
        usage["cost_micro_usd"]
            .as_u64()
            .is_some_and(|cost| cost > 0),
        "{totals}"
    );
}

#[test]
fn claude_asks_an_agent_on_another_broker_through_the_scout_mcp_server() {
    // Claude on beta, with nothing configured by hand, calls the Scout MCP
    // server's `ask` for `@fabric`, a bash agent on alpha; fabric's answer
    // is the tool result inside the same claude turn.
    let server = ModelServer::start(
        Api::Anthropic,
        vec![
            Step::ToolCall {
                name: "mcp__scout__ask".to_owned(),
                input: json!({ "target": "@fabric", "message": "echo mesh-answer-$((40 + 2))" }),
            },
            Step::Text("Fabric says the answer is 42.".to_owned()),
        ],
    );
    let mut alpha = common::Node::setup("alpha", &[]);
    alpha.add_bash_agent("fabric");
    alpha.start();
    let (beta, _) = claude_broker_joining(&alpha, &server);
    beta.wait_for_instance("@fabric@alpha#main");

    let run = beta.run(&[
        "send",
        "@coder",
        "Ask @fabric for the answer.",
        "--wait",
        "--timeout",
        "120",
    ]);
    assert_eq!(
        run.code,
        0,
        "stdout: {}\nstderr: {}\nbeta: {}",
        run.stdout,
        run.stderr,
        beta.broker().stderr()
    );
    assert!(
        run.stdout.contains("Fabric says the answer is 42."),
        "{}",
        run.stdout
    );
    // The second model request carries the tool result: fabric's output,
    // from the other broker.
    let requests: Vec<Recorded> = server
        .requests()
        .into_iter()
        .filter(|request| is_conversation_request(&request.body))
        .collect();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let second = messages_text(&requests[1]);
    assert!(second.contains("tool_result"), "{second}");
    assert!(second.contains("mesh-answer-42"), "{second}");
    // On alpha, the invocation is recorded from claude's instance.
    let flights = alpha.get("/v1/flights");
    let id = flights[0]["invocation_id"]
        .as_str()
        .expect("a flight on alpha");
    let status = alpha.get(&format!("/v1/invocations/{id}"));
    assert_eq!(status["invocation"]["from"], "@coder@beta#main", "{status}");
}

/// `scout send @coder <message> --wait`, started on `node` and not waited for.
fn send_in_background(node: &common::Node, message: &str) -> std::process::Child {
    node.sandbox
        .scout()
        .args(["send", "@coder", message, "--wait", "--timeout", "300"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn scout send")
}

#[test]
fn claude_asks_a_person_on_another_broker_before_a_tool_runs() {
    // Outside the agent's working directory, so `acceptEdits` does not
    // allow the command by itself and Claude Code asks its permission
    // prompt tool: the Scout server, which asks a person.
    let outside = tempfile::tempdir().expect("outside dir");
    let approved = outside.path().join("approved.txt");
    let denied = outside.path().join("denied.txt");
    let server = ModelServer::start(
        Api::Anthropic,
        vec![
            Step::ToolCall {
                name: "Bash".to_owned(),
                input: json!({ "command": format!("touch {}", approved.display()) }),
            },
            Step::Text("Touched it.".to_owned()),
            Step::ToolCall {
                name: "Bash".to_owned(),
                input: json!({ "command": format!("touch {}", denied.display()) }),
            },
            Step::Text("I was not allowed to.".to_owned()),
        ],
    );
    let mut alpha = common::Node::setup("alpha", &[]);
    alpha.start();
    let (beta, _workdir) = claude_broker_joining(&alpha, &server);

    // Approved on alpha: the tool runs on beta and the turn completes.
    let turn = send_in_background(&alpha, "Touch the approved file.");
    let asked = common::wait_long(
        "the permission request on alpha",
        TURN_BOUND,
        String::new,
        || alpha.pending_approval("approved.txt"),
    );
    assert_eq!(asked["action"], "tool.Bash", "{asked}");
    assert_eq!(asked["agent"], "@coder@beta#main", "{asked}");
    assert_eq!(asked["node"], "beta", "{asked}");
    assert!(!approved.exists(), "the tool ran before anyone approved it");
    let id = asked["id"].as_str().expect("id").to_owned();
    // The flight waits for the person: `waiting` on its owner, and the
    // approval it waits for named on both brokers.
    let invocation = asked["invocation"]
        .as_str()
        .expect("the invocation it waits in");
    let on_beta = beta.get(&format!("/v1/invocations/{invocation}"));
    assert_eq!(on_beta["flight"]["state"], "waiting", "{on_beta}");
    assert_eq!(on_beta["waiting_for"], id.as_str(), "{on_beta}");
    let on_alpha = alpha.get("/v1/flights");
    assert!(
        on_alpha
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["invocation_id"] == invocation && row["waiting_for"] == id.as_str()),
        "{on_alpha}"
    );
    let answer = alpha.run(&["approve", &id]);
    assert_eq!(answer.code, 0, "{}", answer.stderr);
    let output = turn.wait_with_output().expect("send");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}\nbeta: {}",
        String::from_utf8_lossy(&output.stderr),
        beta.broker().stderr()
    );
    assert!(stdout.contains("Touched it."), "{stdout}");
    assert!(
        approved.exists(),
        "the approved tool did not run: {stdout}\n{:#?}\nbeta: {}",
        server.requests(),
        beta.broker().stderr()
    );

    // Denied on alpha with a note: the tool never runs, and the model
    // learns why.
    let turn = send_in_background(&alpha, "Touch the denied file.");
    let asked = common::wait_long(
        "the second permission request",
        TURN_BOUND,
        String::new,
        || alpha.pending_approval("denied.txt"),
    );
    let id = asked["id"].as_str().expect("id").to_owned();
    let answer = alpha.run(&["deny", &id, "--note", "not outside the repo"]);
    assert_eq!(answer.code, 0, "{}", answer.stderr);
    let output = turn.wait_with_output().expect("send");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("I was not allowed to."), "{stdout}");
    assert!(!denied.exists(), "a denied tool ran");
    let last = server
        .requests()
        .into_iter()
        .rfind(|request| is_conversation_request(&request.body))
        .expect("requests");
    let text = messages_text(&last);
    assert!(text.contains("not outside the repo"), "{text}");
}

/// Every process whose command line runs `claude -p` in `workdir`, held by
/// a holder (not a child of this test).
fn held_structured_runs(workdir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let line = cmdline(*pid);
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
            is_alive(*pid)
                && line.contains("claude")
                && line.contains(" -p ")
                && cwd.as_deref() == Some(workdir)
        })
        .collect()
}

/// Beta's broker again, with claude's environment, on the same home.
fn restart_claude_broker(beta: &mut common::Node, server: &ModelServer) {
    let home = std::fs::canonicalize(beta.sandbox.path()).expect("home");
    let mut command = beta.sandbox.scout();
    command.envs(claude_env(&server.url(), &home, Some(API_KEY)));
    beta.broker = Some(common::BrokerProcess::start_command(command));
}

/// A routed turn survives its broker: beta is stopped in the middle of a
/// ten-second claude turn (SIGKILL, a crash; then SIGTERM, what a service
/// manager's restart sends), started again, and each turn still finishes
/// with its whole answer at alpha, its flight completed once, its output
/// not repeated, and claude run once per turn (the same process carried
/// on, not a new one).
#[test]
fn a_routed_claude_turn_outlives_its_broker_and_finishes_once() {
    let answer = |turn: &str| -> String {
        (1..=20)
            .map(|n| format!("{turn}-{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let slow = |turn: &str| Step::Slow {
        text: answer(turn),
        delay: Duration::from_millis(500),
    };
    let server = ModelServer::start(Api::Anthropic, vec![slow("crash"), slow("restart")]);
    let mut alpha = common::Node::setup("alpha", &[]);
    alpha.start();
    let (mut beta, workdir) = claude_broker_joining(&alpha, &server);
    for (turn, signal) in [("crash", libc::SIGKILL), ("restart", libc::SIGTERM)] {
        let sent = alpha.run(&[
            "--json",
            "send",
            "@coder",
            &format!("Count to twenty ({turn})."),
            "--timeout",
            "240",
        ]);
        assert_eq!(sent.code, 0, "send: {}", sent.stderr);
        let id = sent.json()["invocation_id"]
            .as_str()
            .expect("an id")
            .to_owned();
        // Under way: claude streams its first words into beta's flight.
        common::wait_long(
            "claude to stream its first words",
            TURN_BOUND,
            || beta.broker().stderr(),
            || {
                // Beta may not have the flight yet (404).
                let (_, status) = beta.api(
                    "GET",
                    &format!("/v1/invocations/{id}"),
                    &beta.sandbox.token(),
                    None,
                );
                let output = status["flight"]["output"].as_str().unwrap_or_default();
                let runs = held_structured_runs(&workdir);
                (output.contains(&format!("{turn}-2 ")) && runs.len() == 1).then_some(())
            },
        );
        let sessions_before = beta.sessions();
        assert!(!sessions_before.is_empty(), "beta has the agent's session");

        let mut broker = beta.broker.take().expect("beta runs");
        broker.stop_with(signal);
        drop(broker);
        restart_claude_broker(&mut beta, &server);

        let status = common::wait_long(
            &format!("the {turn} turn to end at alpha"),
            TURN_BOUND,
            || beta.broker().stderr(),
            || {
                let status = alpha.get(&format!("/v1/invocations/{id}"));
                matches!(
                    status["delivery"]["state"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
                .then_some(status)
            },
        );
        assert_eq!(
            status["delivery"]["state"],
            "completed",
            "{status}\nbeta: {}",
            beta.broker().stderr()
        );
        let result = status["delivery"]["result"].as_str().unwrap_or_default();
        assert!(result.contains(&answer(turn)), "{status}");

        // Beta's flight: completed, its output whole and not repeated by
        // the carrying on, and no sign of an interrupted run.
        let owner = beta.get(&format!("/v1/invocations/{id}"));
        assert_eq!(owner["flight"]["state"], "completed", "{owner}");
        let output = owner["flight"]["output"].as_str().unwrap_or_default();
        assert_eq!(
            output.matches(&format!("{turn}-1 ")).count(),
            1,
            "output repeated: {output}"
        );
        assert!(output.contains(&format!("{turn}-20")), "{output}");
        beta.assert_not_reconciled(&id);
        // The agent's session is the same, with the same program.
        assert_eq!(beta.sessions(), sessions_before);
        // The held turn's journal went once the flight's end was recorded.
        beta.wait_for_no_held_turns();
    }
    let requests: Vec<Recorded> = server
        .requests()
        .into_iter()
        .filter(|request| is_conversation_request(&request.body))
        .collect();
    assert_eq!(requests.len(), 2, "claude ran once per turn: {requests:#?}");
    // The turn sent after the first restart ran in the session that came
    // back, not in a second agent in the same directory.
    let sessions = beta.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    // And the agent that came back still speaks as itself: the credential
    // in its environment is the broker's again.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            beta.sandbox
                .home()
                .join("holders")
                .join(&sessions[0].0)
                .join("session.json"),
        )
        .expect("the session's record"),
    )
    .expect("json");
    let token = record["env"]
        .as_array()
        .and_then(|env| {
            env.iter()
                .find(|pair| pair[0] == "SCOUT_TOKEN")
                .and_then(|pair| pair[1].as_str())
        })
        .expect("the agent's credential")
        .to_owned();
    let (code, body) = beta.api("GET", "/v1/agents", &token, None);
    assert_eq!(code, 200, "the agent's credential after restarts: {body}");
}
