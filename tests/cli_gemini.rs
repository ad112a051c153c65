//! Gemini CLI (the real `gemini` pinned in `scripts/agent-clis/`) driven
//! end to end through Scout's adapter and session runtime, against the
//! scripted Gemini API of `tests/common/model/gemini.rs`. Each test gets
//! its own home (settings, sessions, trust file) and working directory.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::agent_clis::agent_cli;
use common::model::{self, Api, ModelServer, Step, gemini};
use common::{BrokerProcess, Node};
use scout::adapter::gemini::FLAGS;
use scout::adapter::{AdapterOptions, FailureKind, TurnUsage, adapter_for};
use scout::pty::process::read_stat;
use scout::pty::{
    AgentInfo, AgentStatus, EventKind, RuntimeConfig, RuntimeEvent, SessionManager, SpawnRequest,
    TurnEvent, TurnFailure, TurnOutcome,
};
use scout_mesh::lifecycle::Harness;
use serde_json::json;
use tokio::sync::broadcast;

/// How long one CLI turn may take: the CLI starts node and loads its
/// bundle on every structured run (seconds on a loaded machine), so only a
/// real hang trips this.
const TURN_BOUND: Duration = Duration::from_secs(120);

/// A temporary machine for one Gemini agent: a home with the CLI's user
/// settings and an empty working directory.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        let machine = Machine {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::create_dir_all(machine.work()).expect("work dir");
        gemini::configure_home(&machine.home());
        machine
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }
}

/// The shell tool Gemini CLI 0.61 declares (with `command`), when its
/// approval mode lets it run commands.
const SHELL_TOOL: &str = "run_shell_command";

fn options() -> AdapterOptions {
    AdapterOptions {
        command: Some(vec![agent_cli("gemini").display().to_string()]),
        ..AdapterOptions::default()
    }
}

fn manager() -> Arc<SessionManager> {
    Arc::new(SessionManager::new(RuntimeConfig {
        stop_grace: Duration::from_millis(500),
        ..RuntimeConfig::default()
    }))
}

fn spawn_request(workdir: &Path, env: Vec<(String, String)>) -> SpawnRequest {
    SpawnRequest {
        name: Some("gemini".to_owned()),
        harness: Harness::Gemini,
        workdir: Some(workdir.display().to_string()),
        options: options(),
        env,
        size: None,
    }
}

async fn spawn(manager: &SessionManager, machine: &Machine, server: &ModelServer) -> AgentInfo {
    manager
        .spawn(spawn_request(
            &machine.work(),
            gemini::env(server, &machine.home()),
        ))
        .await
        .expect("spawn gemini")
}

/// Runs one turn and collects its events, the outcome last.
async fn turn(
    manager: &SessionManager,
    agent: &AgentInfo,
    prompt: &str,
    conversation: Option<&str>,
) -> (Vec<TurnEvent>, TurnOutcome) {
    let mut turn = manager
        .run_turn(
            &agent.id,
            prompt.to_owned(),
            Some(TURN_BOUND),
            conversation.map(str::to_owned),
        )
        .expect("start turn");
    let mut events = Vec::new();
    loop {
        match turn.events.recv().await {
            Some(TurnEvent::Finished(outcome)) => return (events, outcome),
            Some(event) => events.push(event),
            None => panic!("the turn ended without an outcome: {events:?}"),
        }
    }
}

fn completed(outcome: &TurnOutcome) -> &str {
    match outcome {
        TurnOutcome::Completed { response } => response,
        other => panic!("the turn did not complete: {other:?}"),
    }
}

fn failed(outcome: &TurnOutcome) -> (TurnFailure, &str) {
    match outcome {
        TurnOutcome::Failed { failure, message } => (*failure, message),
        other => panic!("the turn did not fail: {other:?}"),
    }
}

/// The usage events of a turn, in order.
fn usages(events: &[TurnEvent]) -> Vec<TurnUsage> {
    events
        .iter()
        .filter_map(|event| match event {
            TurnEvent::Usage(usage) => Some(*usage),
            _ => None,
        })
        .collect()
}

/// What the scripted server reports for `n` conversation requests.
fn scripted_usage(n: u64) -> TurnUsage {
    TurnUsage {
        input_tokens: model::USAGE.input_tokens * n,
        output_tokens: model::USAGE.output_tokens * n,
        cached_tokens: model::USAGE.cached_tokens * n,
        cost_micro_usd: None,
    }
}

/// Live (not zombie) processes whose environment has `HOME=<home>`: the
/// agent's TUI, its structured runs and everything they started.
fn processes_with_home(home: &Path) -> Vec<i32> {
    let needle = format!("HOME={}", home.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| read_stat(*pid).is_some_and(|stat| !matches!(stat.state, 'Z' | 'X')))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|byte| *byte == 0)
                    .any(|var| var == needle.as_bytes())
            })
        })
        .collect()
}

/// Polls (bounded) until `probe` holds.
async fn eventually(what: &str, bound: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + bound;
    while !probe() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) for the event `kind` about `agent_id`.
async fn wait_event(
    events: &mut broadcast::Receiver<RuntimeEvent>,
    kind: EventKind,
    agent_id: &str,
) -> RuntimeEvent {
    tokio::time::timeout(TURN_BOUND, async {
        loop {
            match events.recv().await {
                Ok(event) if event.event == kind && event.agent_id == agent_id => return event,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(err) => panic!("event stream ended: {err}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind:?} event for {agent_id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_in_an_untrusted_folder_completes_with_the_scripted_answer_and_its_usage() {
    let machine = Machine::new();
    let server = ModelServer::start(Api::Gemini, vec![Step::Text("Scripted hello".to_owned())]);
    let manager = manager();
    let agent = spawn(&manager, &machine, &server).await;

    let (events, outcome) = turn(&manager, &agent, "say hello", None).await;
    assert_eq!(completed(&outcome), "Scripted hello");
    // Nobody trusted the folder: the structured run trusts it for itself.
    assert!(!machine.home().join(".gemini/trustedFolders.json").exists());

    let requests = server.requests();
    let conversation = gemini::conversation(&requests);
    assert_eq!(conversation.len(), 1, "{requests:#?}");
    let texts = gemini::texts(conversation[0]);
    assert!(texts.iter().any(|text| text == "say hello"), "{texts:?}");
    // The key travels as Google's header; side calls took no step.
    assert!(
        conversation[0]
            .headers
            .iter()
            .any(|(name, value)| name == "x-goog-api-key" && value == gemini::API_KEY)
    );
    // The run's stats, from its `result` event: one conversation request.
    assert_eq!(
        usages(&events).last(),
        Some(&scripted_usage(1)),
        "{events:?}"
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_continues_and_another_does_not_see_it() {
    let machine = Machine::new();
    let server = ModelServer::start(
        Api::Gemini,
        vec![
            Step::Text("First answer".to_owned()),
            Step::Text("Second answer".to_owned()),
            Step::Text("Other answer".to_owned()),
        ],
    );
    let manager = manager();
    let agent = spawn(&manager, &machine, &server).await;

    let (_, outcome) = turn(&manager, &agent, "remember the word kiwi", Some("conv-a")).await;
    assert_eq!(completed(&outcome), "First answer");
    let (_, outcome) = turn(&manager, &agent, "which word?", Some("conv-a")).await;
    assert_eq!(completed(&outcome), "Second answer");
    let (_, outcome) = turn(&manager, &agent, "fresh start", Some("conv-b")).await;
    assert_eq!(completed(&outcome), "Other answer");

    let requests = server.requests();
    let conversation = gemini::conversation(&requests);
    assert_eq!(conversation.len(), 3, "{requests:#?}");
    // The second turn of conv-a carries the first turn: its prompt and
    // the model's answer.
    let continued = gemini::texts(conversation[1]);
    for expected in ["remember the word kiwi", "First answer", "which word?"] {
        assert!(
            continued.iter().any(|text| text.contains(expected)),
            "{expected:?} missing from {continued:?}"
        );
    }
    // conv-b starts over.
    let other = gemini::texts(conversation[2]);
    assert!(other.iter().any(|text| text.contains("fresh start")));
    for unseen in ["kiwi", "First answer", "Second answer"] {
        assert!(
            !other.iter().any(|text| text.contains(unseen)),
            "{unseen:?} leaked into another conversation: {other:?}"
        );
    }
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_tool_call_runs_is_recorded_and_its_result_reaches_the_model() {
    let machine = Machine::new();
    let server = ModelServer::start(
        Api::Gemini,
        vec![
            Step::ToolCall {
                name: SHELL_TOOL.to_owned(),
                input: json!({ "command": "echo hi" }),
            },
            Step::Text("The command printed hi".to_owned()),
        ],
    );
    let manager = manager();
    let agent = spawn(&manager, &machine, &server).await;

    let (events, outcome) = turn(&manager, &agent, "run echo hi", None).await;
    assert_eq!(completed(&outcome), "The command printed hi");
    assert!(
        events
            .iter()
            .any(|event| *event == TurnEvent::Tool(format!("{SHELL_TOOL}: echo hi"))),
        "{events:?}"
    );

    let requests = server.requests();
    let conversation = gemini::conversation(&requests);
    assert_eq!(conversation.len(), 2, "{requests:#?}");
    assert!(gemini::declared_tools(conversation[0]).contains(&SHELL_TOOL.to_owned()));
    let results = gemini::function_responses(conversation[1]);
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["name"], SHELL_TOOL);
    assert!(
        results[0]["response"].to_string().contains("hi"),
        "{results:?}"
    );
    // Both conversation requests count.
    assert_eq!(
        usages(&events).last(),
        Some(&scripted_usage(2)),
        "{events:?}"
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_a_turn_needs_a_login() {
    let machine = Machine::new();
    let server = ModelServer::start(Api::Gemini, Vec::new());
    let manager = manager();

    // No key anywhere: Scout refuses before running the CLI, with the
    // CLI's way to log in.
    let mut env = gemini::env(&server, &machine.home());
    env.retain(|(name, _)| name != "GEMINI_API_KEY");
    env.push(("GEMINI_API_KEY".to_owned(), String::new()));
    let agent = manager
        .spawn(spawn_request(&machine.work(), env.clone()))
        .await
        .unwrap();
    let err = manager
        .run_turn(&agent.id, "hello".to_owned(), Some(TURN_BOUND), None)
        .unwrap_err();
    assert_eq!(err.code(), "AUTH_REQUIRED");
    assert!(err.to_string().contains("GEMINI_API_KEY"), "{err}");

    // A key Scout sees but the selected auth type cannot use: the CLI
    // itself refuses (exit 41), and the turn says so.
    env.push(("GOOGLE_API_KEY".to_owned(), "not-for-gemini-api".to_owned()));
    let agent = manager
        .spawn(spawn_request(&machine.work(), env))
        .await
        .unwrap();
    let (_, outcome) = turn(&manager, &agent, "hello", None).await;
    let (failure, message) = failed(&outcome);
    assert_eq!(failure.code(), "AUTH_REQUIRED", "{message}");
    assert!(message.contains("41: authentication failed"), "{message}");
    assert!(
        message.contains("you must specify the GEMINI_API_KEY"),
        "{message}"
    );
    assert!(gemini::conversation(&server.requests()).is_empty());
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_keys_need_a_login() {
    let machine = Machine::new();
    let server = ModelServer::start(
        Api::Gemini,
        vec![
            Step::Error {
                status: 401,
                message: "API key not valid. Please pass a valid API key.".to_owned(),
                retry_after: None,
            },
            Step::Error {
                status: 403,
                message: "Method doesn't allow unregistered callers.".to_owned(),
                retry_after: None,
            },
        ],
    );
    let manager = manager();
    let agent = spawn(&manager, &machine, &server).await;
    for expected in ["API key not valid", "unregistered callers"] {
        let (_, outcome) = turn(&manager, &agent, "hello", None).await;
        let (failure, message) = failed(&outcome);
        assert_eq!(failure.code(), "AUTH_REQUIRED", "{message}");
        assert!(message.contains(expected), "{message}");
    }
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_fail_with_the_servers_message() {
    let machine = Machine::new();
    let server = ModelServer::start(
        Api::Gemini,
        vec![
            Step::Error {
                status: 429,
                message: "Resource has been exhausted (e.g. check quota).".to_owned(),
                retry_after: Some(1),
            },
            Step::Error {
                status: 500,
                message: "Internal error encountered.".to_owned(),
                retry_after: None,
            },
        ],
    );
    let manager = manager();
    let agent = spawn(&manager, &machine, &server).await;
    for expected in ["Resource has been exhausted", "Internal error encountered."] {
        let (_, outcome) = turn(&manager, &agent, "hello", None).await;
        let (failure, message) = failed(&outcome);
        assert_eq!(failure.code(), "HARNESS_ERROR", "{message}");
        assert!(message.contains(expected), "{message}");
    }
    // One request per turn: the settings keep the CLI from retrying.
    assert_eq!(gemini::conversation(&server.requests()).len(), 2);
    manager.shutdown().await;
}

/// Starts a turn that keeps running (`step`), waits until `running` holds
/// for the agent's processes, stops the agent the way a cancelled routed
/// turn does, and checks that nothing the agent started is left.
async fn cancel_leaves_nothing(step: Step, running: impl Fn(&[i32]) -> bool) {
    let machine = Machine::new();
    let server = ModelServer::start(Api::Gemini, vec![step]);
    server.set_fallback(Step::Hang);
    let manager = manager();
    let agent = spawn(&manager, &machine, &server).await;
    let mut turn = manager
        .run_turn(&agent.id, "work".to_owned(), Some(TURN_BOUND), None)
        .unwrap();
    eventually("the turn to be running", TURN_BOUND, || {
        running(&processes_with_home(&machine.home()))
    })
    .await;

    manager.stop(&agent.id).await.unwrap();
    let outcome = tokio::time::timeout(TURN_BOUND, async {
        loop {
            match turn.events.recv().await {
                Some(TurnEvent::Finished(outcome)) => return outcome,
                Some(_) => {}
                None => panic!("no outcome"),
            }
        }
    })
    .await
    .expect("the turn ends when the agent stops");
    assert_eq!(failed(&outcome).0.code(), "AGENT_STOPPED");
    let deadline = tokio::time::Instant::now() + TURN_BOUND;
    loop {
        let left = processes_with_home(&machine.home());
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes of the stopped agent are left: {:#?}",
            left.iter()
                .map(|pid| (pid, read_stat(*pid), cmdline(*pid)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    manager.shutdown().await;
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_hanging_answer_kills_every_process() {
    // The TUI and the structured run (`--prompt`) are both up while the
    // model's answer hangs.
    cancel_leaves_nothing(Step::Hang, |pids| {
        pids.iter().any(|pid| cmdline(*pid).contains("--prompt="))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_shell_tool_kills_it_too() {
    cancel_leaves_nothing(
        Step::ToolCall {
            name: SHELL_TOOL.to_owned(),
            input: json!({ "command": "sleep 600" }),
        },
        |pids| {
            pids.iter()
                .any(|pid| cmdline(*pid).starts_with("sleep 600"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tui_trust_dialog_is_a_question() {
    let machine = Machine::new();
    let server = ModelServer::start(Api::Gemini, Vec::new());
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = spawn(&manager, &machine, &server).await;

    let event = wait_event(&mut events, EventKind::Question, &agent.id).await;
    let question = event.data["question"].as_str().unwrap_or_default();
    assert!(
        question.contains("Do you trust the files in this folder?"),
        "{event:?}"
    );
    let info = manager.info(&agent.id).unwrap();
    assert_eq!(info.status, AgentStatus::Waiting, "{info:?}");
    assert_eq!(info.waiting_for, Some("answer"));

    // Enter picks the dialog's first choice ("Trust folder"): the question
    // goes, the prompt shows, and the CLI remembers the folder.
    let session = manager.session(&agent.id).unwrap();
    session
        .input()
        .send(bytes::Bytes::from_static(b"\r"))
        .await
        .unwrap();
    eventually("the agent to be ready after the answer", TURN_BOUND, || {
        let info = manager.info(&agent.id).unwrap();
        info.status == AgentStatus::Ready && info.question.is_none()
    })
    .await;
    let trusted =
        std::fs::read_to_string(machine.home().join(".gemini/trustedFolders.json")).unwrap();
    assert!(trusted.contains("TRUST_FOLDER"), "{trusted}");
    manager.shutdown().await;
}

#[test]
fn a_structured_run_without_the_trust_switch_exits_55_and_scout_says_why() {
    // The real CLI, run as the adapter runs it but without `--skip-trust`,
    // in a folder nobody trusted: the exit code the adapter explains.
    let machine = Machine::new();
    let server = ModelServer::start(Api::Gemini, Vec::new());
    let adapter = adapter_for(Harness::Gemini, &options()).unwrap();
    let invocation = adapter.invocation("hello", None).unwrap();
    let args: Vec<&String> = invocation.argv[1..]
        .iter()
        .filter(|arg| *arg != "--skip-trust")
        .collect();
    let output = std::process::Command::new(&invocation.argv[0])
        .args(args)
        .current_dir(machine.work())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .envs(gemini::env(&server, &machine.home()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(55), "{stderr}");
    let (kind, meaning) = adapter.exit_meaning(55).unwrap();
    assert_eq!(kind, FailureKind::Harness);
    assert!(meaning.contains("not trusted"), "{meaning}");
    assert!(stderr.contains("--skip-trust"), "{stderr}");
    assert!(gemini::conversation(&server.requests()).is_empty());
}

#[test]
fn the_pinned_cli_lists_every_flag_the_adapter_uses() {
    let output = std::process::Command::new(agent_cli("gemini"))
        .arg("--help")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    let listed: Vec<&str> = help
        .split_whitespace()
        .map(|word| word.trim_end_matches(','))
        .collect();
    for flag in FLAGS {
        assert!(
            listed.contains(flag),
            "`gemini --help` no longer lists {flag}:\n{help}"
        );
    }
    // The list covers every flag the adapter passes.
    let adapter = adapter_for(Harness::Gemini, &options()).unwrap();
    let invocation = adapter.invocation("hello", Some("session")).unwrap();
    for arg in invocation.argv.iter().filter(|arg| arg.starts_with("--")) {
        let flag = arg.split('=').next().unwrap_or(arg);
        assert!(FLAGS.contains(&flag), "{flag} is passed but not in FLAGS");
    }
    // And the values it picks are among the choices listed.
    for value in ["\"yolo\"", "\"stream-json\""] {
        assert!(
            help.contains(value),
            "`gemini --help` no longer offers {value}"
        );
    }
}

#[test]
fn a_routed_turn_reaches_gemini_on_another_broker() {
    let server = ModelServer::start(
        Api::Gemini,
        vec![
            Step::ToolCall {
                name: SHELL_TOOL.to_owned(),
                input: json!({ "command": "echo routed-hi" }),
            },
            Step::Text("Routed answer".to_owned()),
        ],
    );
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let (_beta, _project) = gemini_broker_joining(&alpha, &server, &["--harness", "gemini"], &[]);

    let run = alpha.run(&[
        "send",
        "@gem",
        "hello from alpha",
        "--wait",
        "--timeout",
        &TURN_BOUND.as_secs().to_string(),
    ]);
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(run.stdout.contains("Routed answer"), "{}", run.stdout);
    let requests = server.requests();
    let conversation = gemini::conversation(&requests);
    assert_eq!(conversation.len(), 2, "{requests:#?}");
    assert!(
        gemini::texts(conversation[0])
            .iter()
            .any(|text| text.contains("hello from alpha"))
    );
    // The shell tool ran on beta and its output went back to the model.
    let results = gemini::function_responses(conversation[1]);
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        results[0]["response"].to_string().contains("routed-hi"),
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_streams_word_by_word() {
    let machine = Machine::new();
    let text = "one two three four five";
    let server = ModelServer::start(
        Api::Gemini,
        vec![Step::Slow {
            text: text.to_owned(),
            delay: Duration::from_millis(100),
        }],
    );
    let manager = manager();
    let agent = spawn(&manager, &machine, &server).await;

    let (events, outcome) = turn(&manager, &agent, "count", None).await;
    assert_eq!(completed(&outcome), text);
    let pieces: Vec<&str> = events
        .iter()
        .filter_map(|event| match event {
            TurnEvent::Output(piece) => Some(piece.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(pieces.concat(), text);
    assert!(pieces.len() > 1, "{pieces:?}");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_whose_session_is_gone_starts_over() {
    let machine = Machine::new();
    let server = ModelServer::start(
        Api::Gemini,
        vec![
            Step::Text("First answer".to_owned()),
            Step::Text("Fresh answer".to_owned()),
        ],
    );
    let manager = manager();
    let agent = spawn(&manager, &machine, &server).await;
    let (_, outcome) = turn(&manager, &agent, "remember kiwi", Some("conv")).await;
    assert_eq!(completed(&outcome), "First answer");

    // The CLI's saved sessions go (its retention cleanup, or a person).
    std::fs::remove_dir_all(machine.home().join(".gemini/tmp")).unwrap();
    let (_, outcome) = turn(&manager, &agent, "which word?", Some("conv")).await;
    let (failure, message) = failed(&outcome);
    assert_eq!(failure.code(), "HARNESS_ERROR", "{message}");
    assert!(message.contains("Error resuming session"), "{message}");
    assert!(
        message.contains("the next turn starts a new one"),
        "{message}"
    );

    let (_, outcome) = turn(&manager, &agent, "start again", Some("conv")).await;
    assert_eq!(completed(&outcome), "Fresh answer");
    let requests = server.requests();
    let conversation = gemini::conversation(&requests);
    assert_eq!(conversation.len(), 2, "{requests:#?}");
    let texts = gemini::texts(conversation[1]);
    assert!(!texts.iter().any(|text| text.contains("kiwi")), "{texts:?}");
    manager.shutdown().await;
}

/// Beta: a broker with `@gem`, the real gemini (`harness`, with `extra`
/// arguments after its command) answering from `server` in `project` under
/// beta's sandbox, joined to `alpha`'s mesh, running and seen by alpha.
fn gemini_broker_joining(
    alpha: &Node,
    server: &ModelServer,
    harness: &[&str],
    extra: &[&str],
) -> (Node, std::path::PathBuf) {
    let mut beta = Node::setup("beta", &[]);
    // Beta's agents run with its broker's environment; `scout` gives the
    // broker the sandbox as HOME, so Gemini's settings go there.
    let home = beta.sandbox.path().to_path_buf();
    gemini::configure_home(&home);
    let project = home.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let cli = agent_cli("gemini").display().to_string();
    let cwd = project.display().to_string();
    let mut args = vec!["agents", "add", "gem"];
    args.extend_from_slice(harness);
    args.extend_from_slice(&["--cwd", &cwd, "--workspace", "main", "--command", &cli]);
    args.extend_from_slice(extra);
    let add = beta.run(&args);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    let mut command = beta.sandbox.scout();
    command.envs(gemini::env(server, &home));
    beta.broker = Some(BrokerProcess::start_command(command));
    alpha.wait_for_instance("@gem@beta#main");
    (beta, project)
}

/// Gemini CLI as an ACP agent (`gemini --acp`, harness `acp`): a command
/// it does not know to be read-only asks permission over ACP, and on a
/// broker a person answers it from another member: the command runs after
/// an approval and never after a denial.
#[test]
fn gemini_asks_a_person_on_another_broker_before_a_command_runs() {
    let server = ModelServer::start(
        Api::Gemini,
        vec![
            Step::ToolCall {
                name: SHELL_TOOL.to_owned(),
                input: json!({ "command": "touch approved.txt" }),
            },
            Step::Text("Touched it".to_owned()),
            Step::ToolCall {
                name: SHELL_TOOL.to_owned(),
                input: json!({ "command": "touch denied.txt" }),
            },
            Step::Text("Was not allowed".to_owned()),
        ],
    );
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let (beta, project) = gemini_broker_joining(&alpha, &server, &["--harness", "acp"], &["--acp"]);
    let send = |message: &str| {
        alpha
            .sandbox
            .scout()
            .args([
                "send",
                "@gem",
                message,
                "--wait",
                "--timeout",
                &TURN_BOUND.as_secs().to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn scout send")
    };
    let bound = std::time::Instant::now() + TURN_BOUND;
    let wait_asked = |needle: &str| loop {
        if let Some(asked) = alpha.pending_approval(needle) {
            break asked;
        }
        assert!(
            std::time::Instant::now() < bound,
            "no approval for {needle}: {}\nbeta: {}",
            alpha.get("/v1/approvals"),
            beta.broker().stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let turn = send("touch the approved file");
    let asked = wait_asked("approved.txt");
    assert_eq!(asked["action"], "tool.acp", "{asked}");
    assert_eq!(asked["agent"], "@gem@beta#main", "{asked}");
    assert!(!project.join("approved.txt").exists());
    let answer = alpha.run(&["approve", asked["id"].as_str().unwrap()]);
    assert_eq!(answer.code, 0, "{}", answer.stderr);
    let output = turn.wait_with_output().expect("send");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Touched it"), "{stdout}");
    assert!(project.join("approved.txt").exists());

    let turn = send("touch the denied file");
    let asked = wait_asked("denied.txt");
    let answer = alpha.run(&["deny", asked["id"].as_str().unwrap()]);
    assert_eq!(answer.code, 0, "{}", answer.stderr);
    let output = turn.wait_with_output().expect("send");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(!project.join("denied.txt").exists(), "a denied command ran");
}
