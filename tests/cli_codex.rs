//! The real Codex CLI (`codex` 0.171.0 from npm, installed by
//! `scripts/install-agent-clis.sh`) driven through Scout's runtime and its
//! codex adapter, against the scripted OpenAI Responses server
//! (`tests/common/model/openai.rs`). Only the model is scripted: every test
//! runs the real CLI, in its own `HOME` and `CODEX_HOME` in a temp dir, with
//! a custom model provider (`scout_test`, key in `SCOUT_TEST_KEY`) that
//! points at the server and retries nothing, so failures show at once.
//!
//! Covered: a turn's answer and usage; one CLI thread per Scout
//! conversation; a shell tool call and its output going back to the model;
//! the provider's missing key, a 401, a 429 and a 500; a refused WebSocket
//! falling back to HTTPS; cancel mid-turn and stop ending every process,
//! the TUI's `setsid` daemon included; the TUI's trust dialog as a
//! question; the flags the adapter passes still listed by the pinned CLI;
//! a turn routed from one real broker to a codex agent on another; and a
//! command Codex asks approval for, approved or denied by a person on the
//! other broker (the broker runs `codex app-server` for that).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent_clis::agent_cli;
use common::model::{Api, ModelServer, Recorded, Step, USAGE};
use common::{BrokerProcess, Node};
use scout::adapter::codex::{CLI_SURFACE, EXEC_FLAGS};
use scout::adapter::{AdapterOptions, TurnUsage};
use scout::pty::{
    AgentStatus, EventKind, RuntimeConfig, RuntimeError, RuntimeEvent, SessionManager,
    SpawnRequest, Turn, TurnEvent, TurnFailure, TurnOutcome,
};
use scout_mesh::lifecycle::Harness;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// How long one CLI turn may take: the CLI starts in seconds, a scripted
/// answer is immediate; far above a healthy run, so only a hang trips it.
const TURN_BOUND: Duration = Duration::from_secs(120);

/// How long the interactive TUI may take to show a screen or start its
/// daemon.
const SCREEN_BOUND: Duration = Duration::from_secs(90);

/// How long processes may take to disappear after a stop.
const GONE_BOUND: Duration = Duration::from_secs(30);

/// The variable the test provider reads its key from.
const KEY_VAR: &str = "SCOUT_TEST_KEY";

/// One test's machine: a home, a `CODEX_HOME`, a working directory and the
/// scripted server the provider points at.
struct CodexHome {
    dir: tempfile::TempDir,
    server: ModelServer,
}

impl CodexHome {
    fn new(steps: Vec<Step>) -> CodexHome {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = ModelServer::start(Api::OpenAi, steps);
        let home = CodexHome { dir, server };
        std::fs::create_dir_all(home.codex_home()).expect("codex home");
        std::fs::create_dir_all(home.workdir()).expect("workdir");
        std::fs::create_dir_all(home.home()).expect("home");
        home.write_config("", "");
        home
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn codex_home(&self) -> PathBuf {
        self.dir.path().join("codex-home")
    }

    fn workdir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// `config.toml` with the test provider, retries off (a scripted error
    /// is the answer, not a hiccup), `extra` lines at the top level and
    /// `provider_extra` lines in the provider's table.
    fn write_config(&self, extra: &str, provider_extra: &str) {
        let config = format!(
            r#"model = "gpt-5.2-codex"
model_provider = "scout_test"
{extra}

[model_providers.scout_test]
name = "Scout test"
base_url = "{url}/v1"
env_key = "{KEY_VAR}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
{provider_extra}
"#,
            url = self.server.url()
        );
        std::fs::write(self.codex_home().join("config.toml"), config).expect("config");
    }

    /// The agent's environment: its own home and `CODEX_HOME`, the test key,
    /// and none of the machine's OpenAI keys.
    fn env(&self, with_key: bool) -> Vec<(String, String)> {
        let mut env = vec![
            ("HOME".to_owned(), self.home().display().to_string()),
            (
                "CODEX_HOME".to_owned(),
                self.codex_home().display().to_string(),
            ),
            ("OPENAI_API_KEY".to_owned(), String::new()),
            ("CODEX_API_KEY".to_owned(), String::new()),
            ("OPENAI_BASE_URL".to_owned(), String::new()),
        ];
        if with_key {
            env.push((KEY_VAR.to_owned(), "sk-scout-test".to_owned()));
        }
        env
    }

    fn request(&self, with_key: bool) -> SpawnRequest {
        SpawnRequest {
            name: Some("codex".to_owned()),
            harness: Harness::Codex,
            workdir: Some(self.workdir().display().to_string()),
            options: AdapterOptions {
                command: Some(vec![agent_cli("codex").display().to_string()]),
                ..AdapterOptions::default()
            },
            env: self.env(with_key),
            size: None,
        }
    }

    /// Live processes started with this `CODEX_HOME`, with their command
    /// lines.
    fn processes(&self) -> Vec<(i32, String)> {
        processes_with_env(&format!("CODEX_HOME={}", self.codex_home().display()))
    }
}

fn manager() -> Arc<SessionManager> {
    Arc::new(SessionManager::new(RuntimeConfig {
        stop_grace: Duration::from_secs(2),
        ..RuntimeConfig::default()
    }))
}

/// Runs the turn to its end: the outcome and every event before it.
async fn finish(mut turn: Turn) -> (TurnOutcome, Vec<TurnEvent>) {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + TURN_BOUND;
    loop {
        let event = tokio::time::timeout_at(deadline, turn.events.recv())
            .await
            .unwrap_or_else(|_| panic!("the turn did not end within {TURN_BOUND:?}: {events:?}"))
            .expect("the turn ended without an outcome");
        match event {
            TurnEvent::Finished(outcome) => return (outcome, events),
            other => events.push(other),
        }
    }
}

/// The text of every `input` item of a model request (messages and tool
/// outputs), to see what the CLI sent the model.
fn input_text(request: &Recorded) -> String {
    request.body["input"].to_string()
}

fn model_requests(requests: &[Recorded]) -> Vec<&Recorded> {
    requests
        .iter()
        .filter(|request| request.method == "POST" && request.path.ends_with("/responses"))
        .collect()
}

/// Live processes whose environment holds `entry` (`NAME=value`), from
/// `/proc`.
fn processes_with_env(entry: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = dir
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = scout::pty::process::read_stat(pid)
            .is_some_and(|stat| !matches!(stat.state, 'Z' | 'X'));
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if alive
            && environ
                .split(|byte| *byte == 0)
                .any(|item| item == entry.as_bytes())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((pid, cmdline.trim().to_owned()));
        }
    }
    found
}

/// Polls `probe` until it holds, failing after `bound` with `what`.
async fn wait_for(bound: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) for the event `kind` about `agent_id` that `accept`s.
async fn wait_event(
    events: &mut broadcast::Receiver<RuntimeEvent>,
    kind: EventKind,
    agent_id: &str,
    accept: impl Fn(&RuntimeEvent) -> bool,
) -> RuntimeEvent {
    tokio::time::timeout(SCREEN_BOUND, async {
        loop {
            match events.recv().await {
                Ok(event)
                    if event.event == kind && event.agent_id == agent_id && accept(&event) =>
                {
                    return event;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(err) => panic!("event stream ended: {err}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind:?} event for {agent_id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_completes_with_the_scripted_answer_and_its_usage() {
    let codex = CodexHome::new(vec![Step::Text("The answer is 42.".to_owned())]);
    let manager = manager();
    let agent = manager.spawn(codex.request(true)).await.unwrap();
    let turn = manager
        .run_turn(&agent.id, "What is the answer?".to_owned(), None, None)
        .unwrap();
    let (outcome, events) = finish(turn).await;
    assert_eq!(
        outcome,
        TurnOutcome::Completed {
            response: "The answer is 42.".to_owned()
        }
    );
    let expected = TurnUsage {
        input_tokens: USAGE.input_tokens,
        output_tokens: USAGE.output_tokens,
        cached_tokens: USAGE.cached_tokens,
        cost_micro_usd: None,
    };
    assert_eq!(
        events.iter().rev().find_map(|event| match event {
            TurnEvent::Usage(usage) => Some(*usage),
            _ => None,
        }),
        Some(expected),
        "{events:?}"
    );
    let requests = codex.server.requests();
    let model = model_requests(&requests);
    assert_eq!(model.len(), 1, "{requests:#?}");
    assert!(input_text(model[0]).contains("What is the answer?"));
    assert!(
        model[0]
            .headers
            .iter()
            .any(|(name, value)| name == "authorization" && value == "Bearer sk-scout-test")
    );
    manager.shutdown().await;
}

/// A provider that says it supports WebSockets makes the CLI try one
/// first; the server refuses the upgrade and the turn goes over HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_websocket_falls_back_to_https() {
    let codex = CodexHome::new(vec![Step::Text("Over HTTPS.".to_owned())]);
    codex.write_config("", "supports_websockets = true");
    let manager = manager();
    let agent = manager.spawn(codex.request(true)).await.unwrap();
    let turn = manager
        .run_turn(&agent.id, "hello".to_owned(), None, None)
        .unwrap();
    let (outcome, _) = finish(turn).await;
    assert_eq!(
        outcome,
        TurnOutcome::Completed {
            response: "Over HTTPS.".to_owned()
        }
    );
    let requests = codex.server.requests();
    let upgrades: Vec<&Recorded> = requests
        .iter()
        .filter(|request| {
            request
                .headers
                .iter()
                .any(|(name, value)| name == "upgrade" && value.eq_ignore_ascii_case("websocket"))
        })
        .collect();
    assert!(!upgrades.is_empty(), "no WebSocket attempt: {requests:#?}");
    assert_eq!(model_requests(&requests).len(), 1, "{requests:#?}");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_continues_its_thread_and_another_starts_a_new_one() {
    let codex = CodexHome::new(vec![
        Step::Text("first answer".to_owned()),
        Step::Text("second answer".to_owned()),
        Step::Text("other answer".to_owned()),
    ]);
    let manager = manager();
    let agent = manager.spawn(codex.request(true)).await.unwrap();
    let conversation = |id: &str| Some(id.to_owned());
    for (prompt, conv, answer) in [
        ("remember the word pelican", "conv-a", "first answer"),
        (
            "which word did I ask you to remember?",
            "conv-a",
            "second answer",
        ),
        (
            "which word, in another conversation?",
            "conv-b",
            "other answer",
        ),
    ] {
        let turn = manager
            .run_turn(&agent.id, prompt.to_owned(), None, conversation(conv))
            .unwrap();
        let (outcome, _) = finish(turn).await;
        assert_eq!(
            outcome,
            TurnOutcome::Completed {
                response: answer.to_owned()
            }
        );
    }
    let requests = codex.server.requests();
    let model = model_requests(&requests);
    assert_eq!(model.len(), 3, "{requests:#?}");
    // The same conversation resumes the CLI's thread: the earlier turn's
    // prompt and answer travel with the next request.
    let second = input_text(model[1]);
    assert!(second.contains("remember the word pelican"), "{second}");
    assert!(second.contains("first answer"), "{second}");
    // Another conversation starts a thread of its own.
    let other = input_text(model[2]);
    assert!(!other.contains("pelican"), "{other}");
    let thread = |request: &Recorded| {
        request
            .headers
            .iter()
            .find(|(name, _)| name == "thread-id")
            .map(|(_, value)| value.clone())
    };
    assert_eq!(thread(model[0]), thread(model[1]));
    assert_ne!(thread(model[0]), thread(model[2]));
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_runs_and_its_result_reaches_the_model() {
    let codex = CodexHome::new(vec![
        Step::ToolCall {
            name: "exec_command".to_owned(),
            input: json!({ "cmd": "echo hi" }),
        },
        Step::Text("The command printed hi.".to_owned()),
    ]);
    let manager = manager();
    let agent = manager.spawn(codex.request(true)).await.unwrap();
    let turn = manager
        .run_turn(&agent.id, "Run echo hi".to_owned(), None, None)
        .unwrap();
    let (outcome, events) = finish(turn).await;
    assert_eq!(
        outcome,
        TurnOutcome::Completed {
            response: "The command printed hi.".to_owned()
        }
    );
    assert!(
        events
            .iter()
            .any(|event| matches!(event, TurnEvent::Tool(line) if line.contains("echo hi"))),
        "{events:?}"
    );
    let requests = codex.server.requests();
    let model = model_requests(&requests);
    assert_eq!(model.len(), 2, "{requests:#?}");
    let outputs: Vec<&Value> = model[1].body["input"]
        .as_array()
        .expect("input")
        .iter()
        .filter(|item| item["type"] == "function_call_output")
        .collect();
    assert_eq!(outputs.len(), 1, "{:#}", model[1].body["input"]);
    assert!(
        outputs[0]["output"].to_string().contains("hi"),
        "{}",
        outputs[0]
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_providers_key_a_turn_is_refused_with_auth_required() {
    let codex = CodexHome::new(Vec::new());
    let manager = manager();
    let agent = manager.spawn(codex.request(false)).await.unwrap();
    let refused = manager
        .run_turn(&agent.id, "hello".to_owned(), None, None)
        .unwrap_err();
    assert!(
        matches!(refused, RuntimeError::AuthRequired { .. }),
        "{refused:?}"
    );
    assert_eq!(refused.code(), "AUTH_REQUIRED");
    assert!(refused.to_string().contains(KEY_VAR), "{refused}");
    // The CLI agrees: run by hand without the key, it names the variable.
    let output = std::process::Command::new(agent_cli("codex"))
        .args(["exec", "--skip-git-repo-check", "hello"])
        .current_dir(codex.workdir())
        .envs(codex.env(false))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run codex");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{said}");
    assert!(said.contains(KEY_VAR), "{said}");
    assert!(model_requests(&codex.server.requests()).is_empty());
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_the_model_is_auth_required() {
    let codex = CodexHome::new(vec![Step::Error {
        status: 401,
        message: "Incorrect API key provided".to_owned(),
        retry_after: None,
    }]);
    let manager = manager();
    let agent = manager.spawn(codex.request(true)).await.unwrap();
    let turn = manager
        .run_turn(&agent.id, "hello".to_owned(), None, None)
        .unwrap();
    let (outcome, _) = finish(turn).await;
    match outcome {
        TurnOutcome::Failed { failure, message } => {
            assert_eq!(failure, TurnFailure::AuthRequired, "{message}");
            assert_eq!(failure.code(), "AUTH_REQUIRED");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    manager.shutdown().await;
}

/// Codex 0.171 does not pass the body of a 429 or 5xx answer on: it
/// reports `exceeded retry limit, last status: 429 Too Many Requests` and,
/// for a 500, a message of its own. The turn's HARNESS_ERROR carries what
/// the CLI said about the server's answer, so that is what is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_harness_errors_with_what_the_cli_reports() {
    let codex = CodexHome::new(vec![
        Step::Error {
            status: 429,
            message: "Rate limit reached for scripted-model".to_owned(),
            retry_after: Some(1),
        },
        Step::Error {
            status: 500,
            message: "The scripted server had an error".to_owned(),
            retry_after: None,
        },
    ]);
    // Should the CLI retry after all, it gets the same answer again.
    codex.server.set_fallback(Step::Error {
        status: 500,
        message: "The scripted server had an error".to_owned(),
        retry_after: None,
    });
    let manager = manager();
    let agent = manager.spawn(codex.request(true)).await.unwrap();
    let mut messages = Vec::new();
    for _ in 0..2 {
        let turn = manager
            .run_turn(&agent.id, "hello".to_owned(), None, None)
            .unwrap();
        let (outcome, _) = finish(turn).await;
        match outcome {
            TurnOutcome::Failed { failure, message } => {
                assert_eq!(failure, TurnFailure::Harness, "{message}");
                assert_eq!(failure.code(), "HARNESS_ERROR");
                messages.push(message);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
    assert!(messages[0].contains("429"), "{messages:?}");
    assert!(!messages[1].trim().is_empty(), "{messages:?}");
    let model = model_requests(&codex.server.requests()).len();
    assert!(model >= 2, "{model} model requests");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_mid_turn_ends_every_process_of_the_session() {
    let codex = CodexHome::new(vec![Step::Hang]);
    let manager = manager();
    let agent = manager.spawn(codex.request(true)).await.unwrap();
    let turn = manager
        .run_turn(&agent.id, "take your time".to_owned(), None, None)
        .unwrap();
    let server = &codex.server;
    wait_for(TURN_BOUND, "the model request", || {
        !model_requests(&server.requests()).is_empty()
    })
    .await;
    // The routing executor cancels a flight by stopping the agent.
    manager.stop(&agent.id).await.unwrap();
    let (outcome, _) = finish(turn).await;
    assert!(
        matches!(
            outcome,
            TurnOutcome::Failed {
                failure: TurnFailure::AgentStopped,
                ..
            }
        ),
        "{outcome:?}"
    );
    wait_for(GONE_BOUND, "every codex process to end", || {
        codex.processes().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_session_ends_the_daemon_its_tui_started() {
    let codex = CodexHome::new(Vec::new());
    let manager = manager();
    let agent = manager.spawn(codex.request(true)).await.unwrap();
    wait_for(SCREEN_BOUND, "the TUI's app-server daemon", || {
        codex
            .processes()
            .iter()
            .any(|(_, cmdline)| cmdline.contains("app-server"))
    })
    .await;
    manager.stop(&agent.id).await.unwrap();
    wait_for(GONE_BOUND, "every codex process to end", || {
        codex.processes().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_dialog_is_a_question_and_does_not_block_structured_turns() {
    let codex = CodexHome::new(vec![Step::Text(
        "Answered while the dialog waits.".to_owned(),
    )]);
    let manager = manager();
    // The TUI asks about folders that are Git repositories.
    let init = std::process::Command::new("git")
        .args(["init", "--quiet"])
        .current_dir(codex.workdir())
        .env("HOME", codex.home())
        .status()
        .expect("git init");
    assert!(init.success());
    let mut events = manager.subscribe();
    let agent = manager.spawn(codex.request(true)).await.unwrap();
    let deadline = Instant::now() + SCREEN_BOUND;
    let info = loop {
        let info = manager.info(&agent.id).unwrap();
        if info.question.is_some() {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "no question within {SCREEN_BOUND:?}; status {:?}, screen:\n{}",
            info.status,
            manager.logs(&agent.id, 60).unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(info.status, AgentStatus::Waiting);
    assert_eq!(info.waiting_for, Some("answer"));
    assert!(
        info.question
            .as_deref()
            .is_some_and(|question| question.contains("Trust this folder?")),
        "{info:?}"
    );
    wait_event(&mut events, EventKind::Question, &agent.id, |event| {
        event.data["question"]
            .as_str()
            .is_some_and(|question| question.contains("Trust this folder?"))
    })
    .await;
    // Structured turns do not wait for the person's answer to the dialog.
    let turn = manager
        .run_turn(&agent.id, "hello".to_owned(), None, None)
        .unwrap();
    let (outcome, _) = finish(turn).await;
    assert_eq!(
        outcome,
        TurnOutcome::Completed {
            response: "Answered while the dialog waits.".to_owned()
        }
    );
    manager.shutdown().await;
    wait_for(GONE_BOUND, "every codex process to end", || {
        codex.processes().is_empty()
    })
    .await;
}

#[test]
fn the_pinned_cli_still_has_every_flag_the_adapter_uses() {
    let codex = agent_cli("codex");
    let home = tempfile::tempdir().unwrap();
    for (args, words) in CLI_SURFACE {
        let output = std::process::Command::new(&codex)
            .args(*args)
            .env("HOME", home.path())
            .env("CODEX_HOME", home.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run codex --help");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "codex {args:?} failed: {help}");
        for word in *words {
            assert!(
                help.split(|ch: char| ch.is_whitespace() || ch == ',')
                    .any(|token| token == *word),
                "`codex {}` no longer lists `{word}`:\n{help}",
                args.join(" ")
            );
        }
    }
    // Every flag the structured runs pass is among those checked.
    let exec_words = CLI_SURFACE
        .iter()
        .find(|(args, _)| *args == ["exec", "--help"])
        .map(|(_, words)| *words)
        .expect("exec --help is checked");
    for flag in EXEC_FLAGS {
        assert!(exec_words.contains(flag), "{flag} is not checked");
    }
}

/// Two brokers in one mesh: alpha, the origin, and beta, which owns
/// `@coder`, the real Codex CLI of `codex` (beta's environment carries its
/// `CODEX_HOME` and, `with_key`, the provider's key, as a person's shell
/// would).
fn codex_mesh(codex: &CodexHome, with_key: bool) -> (Node, Node) {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = Node::setup("beta", &[]);
    let workdir = codex.workdir().display().to_string();
    let program = agent_cli("codex").display().to_string();
    let add = beta.run(&[
        "agents",
        "add",
        "coder",
        "--harness",
        "codex",
        "--cwd",
        &workdir,
        "--workspace",
        "main",
        "--command",
        &program,
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    let mut command = beta.sandbox.scout();
    for (name, value) in codex.env(with_key) {
        if name != "HOME" {
            command.env(name, value);
        }
    }
    beta.broker = Some(BrokerProcess::start_command(command));
    alpha.wait_for_instance("@coder@beta#main");
    (alpha, beta)
}

#[test]
fn a_routed_turn_runs_codex_on_the_owner_and_stopping_it_ends_the_daemon() {
    let codex = CodexHome::new(vec![
        Step::ToolCall {
            name: "exec_command".to_owned(),
            input: json!({ "cmd": "echo routed-hi" }),
        },
        Step::Text("Routed answer from codex.".to_owned()),
    ]);
    let (alpha, mut beta) = codex_mesh(&codex, true);
    let timeout = TURN_BOUND.as_secs().to_string();
    let run = alpha.run(&[
        "send",
        "@coder",
        "What is the answer?",
        "--wait",
        "--timeout",
        &timeout,
    ]);
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains("Routed answer from codex."),
        "{}",
        run.stdout
    );
    // The tool ran on beta and its output went back to the model.
    let requests = codex.server.requests();
    let model = model_requests(&requests);
    assert_eq!(model.len(), 2, "{requests:#?}");
    assert!(
        model[1].body["input"].to_string().contains("routed-hi"),
        "{:#}",
        model[1].body["input"]
    );
    // Stopping the agent stops the daemon its TUI started too (not the app
    // server of the routed turn, which ends with the turn). A graceful stop
    // of the broker leaves the agent to its holder, so the broker is
    // stopped and started again first, as a service restart does.
    let deadline = Instant::now() + SCREEN_BOUND;
    while !codex
        .processes()
        .iter()
        .any(|(_, cmdline)| cmdline.contains("--managed-daemon"))
    {
        assert!(
            Instant::now() < deadline,
            "the TUI's daemon never started: {:?}",
            codex.processes()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let code = beta.broker.as_mut().expect("beta runs").stop_with(15);
    assert_eq!(code, 0, "{}", beta.broker().stderr());
    assert!(
        !codex.processes().is_empty(),
        "a graceful stop of the broker ended the held agent"
    );
    let mut command = beta.sandbox.scout();
    for (name, value) in codex.env(true) {
        if name != "HOME" {
            command.env(name, value);
        }
    }
    beta.broker = Some(BrokerProcess::start_command(command));
    let listed = beta.run(&["--json", "agents", "list"]).json();
    let sessions: Vec<String> = listed["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|session| session["id"].as_str().map(str::to_owned))
        .collect();
    assert!(!sessions.is_empty(), "{listed}");
    for id in sessions {
        let (status, answer) = beta.api(
            "DELETE",
            &format!("/agents/{id}"),
            &beta.sandbox.token(),
            None,
        );
        assert_eq!(status, 200, "{answer}");
    }
    // The broker itself has the agent's environment too.
    let broker_pid = i32::try_from(beta.broker().child.id()).expect("pid");
    let left = || -> Vec<(i32, String)> {
        codex
            .processes()
            .into_iter()
            .filter(|(pid, _)| *pid != broker_pid)
            .collect()
    };
    let deadline = Instant::now() + GONE_BOUND;
    while !left().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind after the agent stopped: {:?}",
            left()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_routed_turn_to_a_logged_out_codex_fails_with_auth_required() {
    let codex = CodexHome::new(Vec::new());
    let (alpha, _beta) = codex_mesh(&codex, false);
    let timeout = TURN_BOUND.as_secs().to_string();
    let run = alpha.run(&["send", "@coder", "hello", "--wait", "--timeout", &timeout]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("AUTH_REQUIRED"), "{said}");
    assert!(!said.contains("agent_offline"), "{said}");
    assert!(said.contains(KEY_VAR), "{said}");
    assert!(model_requests(&codex.server.requests()).is_empty());
}

/// `scout send @coder <message> --wait`, in `conversation` when given,
/// started on `node` and not waited for.
fn send_in_background(
    node: &Node,
    message: &str,
    conversation: Option<&str>,
) -> std::process::Child {
    let mut command = node.sandbox.scout();
    command.args(["send", "@coder", message, "--wait", "--timeout", "300"]);
    if let Some(id) = conversation {
        command.args(["--conversation", id]);
    }
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn scout send")
}

/// The model asks to run `touch <path>` outside Codex's sandbox, which
/// Codex asks approval for (`on-request`).
fn escalated_touch(path: &std::path::Path) -> Step {
    Step::ToolCall {
        name: "exec_command".to_owned(),
        input: json!({
            "cmd": format!("touch {}", path.display()),
            "sandbox_permissions": "require_escalated",
            "justification": "May I touch this file?",
        }),
    }
}

#[test]
fn codex_asks_a_person_on_another_broker_before_a_command_runs() {
    let outside = tempfile::tempdir().expect("outside dir");
    let approved = outside.path().join("approved.txt");
    let denied = outside.path().join("denied.txt");
    let codex = CodexHome::new(vec![
        escalated_touch(&approved),
        Step::Text("Touched it.".to_owned()),
        escalated_touch(&denied),
        Step::Text("I was not allowed to.".to_owned()),
    ]);
    let (alpha, beta) = codex_mesh(&codex, true);
    let context = || {
        format!(
            "model requests: {:#?}\nbeta: {}",
            model_requests(&codex.server.requests()).len(),
            beta.broker().stderr()
        )
    };

    // Approved on alpha: the command runs on beta and the turn completes.
    let turn = send_in_background(&alpha, "Touch the approved file.", None);
    let asked = common::wait_long("the approval request on alpha", TURN_BOUND, context, || {
        alpha.pending_approval("approved.txt")
    });
    assert_eq!(asked["agent"], "@coder@beta#main", "{asked}");
    assert_eq!(asked["action"], "tool.codex", "{asked}");
    assert_eq!(asked["node"], "beta", "{asked}");
    // The summary says all of it: the whole command, that it runs outside
    // the sandbox, where, and why.
    let summary = asked["summary"].as_str().unwrap_or_default();
    for part in [
        format!("touch {}", approved.display()),
        "outside the sandbox".to_owned(),
        codex.workdir().display().to_string(),
        "May I touch this file?".to_owned(),
    ] {
        assert!(summary.contains(&part), "{part}: {asked}");
    }
    assert!(
        !approved.exists(),
        "the command ran before anyone approved it"
    );
    let id = asked["id"].as_str().expect("id").to_owned();
    // The flight waits for the person, on its owner.
    let invocation = asked["invocation"]
        .as_str()
        .expect("the invocation it waits in");
    let on_beta = beta.get(&format!("/v1/invocations/{invocation}"));
    assert_eq!(on_beta["flight"]["state"], "waiting", "{on_beta}");
    assert_eq!(on_beta["waiting_for"], id.as_str(), "{on_beta}");
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
        "the approved command did not run: {stdout}\nbeta: {}",
        beta.broker().stderr()
    );

    // Denied on alpha, in the same conversation: the command never runs,
    // the model is told, and the turn (continuing the same Codex thread)
    // ends with its answer.
    let conversations = alpha.get("/v1/conversations");
    let conversation = conversations[0]["conversation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no conversation: {conversations}"))
        .to_owned();
    let turn = send_in_background(&alpha, "Touch the denied file.", Some(&conversation));
    let asked = common::wait_long("the second approval request", TURN_BOUND, context, || {
        alpha.pending_approval("denied.txt")
    });
    let id = asked["id"].as_str().expect("id").to_owned();
    let answer = alpha.run(&["deny", &id]);
    assert_eq!(answer.code, 0, "{}", answer.stderr);
    let output = turn.wait_with_output().expect("send");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("I was not allowed to."), "{stdout}");
    assert!(!denied.exists(), "a denied command ran");
    let requests = codex.server.requests();
    let model = model_requests(&requests);
    assert_eq!(model.len(), 4, "{requests:#?}");
    // The app server has the Scout MCP server, as `exec` runs do.
    let tools = &model[0].body["tools"];
    assert!(
        tools
            .as_array()
            .is_some_and(|tools| tools.iter().any(|tool| tool["name"] == "mcp__scout")),
        "{tools:#}"
    );
    // The last request continues the first turn's thread and carries the
    // refusal as the command's result.
    let input = model[3].body["input"].to_string();
    assert!(input.contains("Touch the approved file."), "{input}");
    let refusal = model[3].body["input"]
        .as_array()
        .expect("input")
        .iter()
        .rfind(|item| item["type"] == "function_call_output")
        .expect("the refused command's result")
        .to_string();
    assert!(refusal.contains("rejected by user"), "{refusal}");
    // The CLI's usage of both turns (two model requests each) is on beta's
    // flights, as with `codex exec`.
    common::model::assert_node_usage(&alpha, "beta", 2, 4);
}

/// A Codex turn given up while it waits for a person (here, its flight
/// cancelled) withdraws its approval request at once, instead of leaving it
/// pending for a person to answer in vain until its deadline.
#[test]
fn a_cancelled_codex_turn_withdraws_its_approval_request() {
    let outside = tempfile::tempdir().expect("outside dir");
    let never = outside.path().join("never.txt");
    let codex = CodexHome::new(vec![escalated_touch(&never)]);
    let (alpha, beta) = codex_mesh(&codex, true);
    let context = || format!("beta: {}", beta.broker().stderr());

    let mut turn = send_in_background(&alpha, "Touch the file.", None);
    let asked = common::wait_long("the approval request on alpha", TURN_BOUND, context, || {
        alpha.pending_approval("never.txt")
    });
    let id = asked["id"].as_str().expect("id").to_owned();
    let invocation = asked["invocation"].as_str().expect("invocation");
    let url = format!(
        "{}/v1/invocations/{invocation}/cancel",
        alpha.broker().http_base()
    );
    ureq::post(&url)
        .set(
            "Authorization",
            &format!("Bearer {}", alpha.sandbox.token()),
        )
        .call()
        .unwrap_or_else(|err| panic!("POST {url}: {err}"));
    let withdrawn = common::wait_long("the request to be withdrawn", TURN_BOUND, context, || {
        alpha.get("/v1/approvals")["approvals"]
            .as_array()?
            .iter()
            .find(|approval| approval["id"] == id.as_str() && approval["state"] == "expired")
            .cloned()
    });
    assert_eq!(withdrawn["decided_by"], "turn", "{withdrawn}");
    let _ = turn.kill();
    let _ = turn.wait();
    assert!(!never.exists(), "a command ran without an answer");
}

/// A conversation whose Codex thread is gone (its sessions were deleted)
/// starts a new thread, and the answer says so: the model no longer has the
/// conversation's history.
#[test]
fn a_thread_codex_no_longer_has_starts_over_and_says_so() {
    let codex = CodexHome::new(vec![
        Step::Text("One.".to_owned()),
        Step::Text("Two.".to_owned()),
    ]);
    let (alpha, beta) = codex_mesh(&codex, true);
    let sent = |conversation: Option<&str>| {
        let output = send_in_background(&alpha, "Count.", conversation)
            .wait_with_output()
            .expect("send");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}\n{}\nbeta: {}",
            String::from_utf8_lossy(&output.stderr),
            beta.broker().stderr()
        );
        stdout
    };
    let first = sent(None);
    assert!(first.contains("One."), "{first}");
    assert!(!first.contains("started a new one"), "{first}");
    let conversations = alpha.get("/v1/conversations");
    let conversation = conversations[0]["conversation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no conversation: {conversations}"))
        .to_owned();
    std::fs::remove_dir_all(codex.codex_home().join("sessions")).expect("remove sessions");
    let second = sent(Some(&conversation));
    assert!(second.contains("started a new one"), "{second}");
    assert!(second.contains("Two."), "{second}");
}
