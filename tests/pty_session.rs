//! The PTY runtime with real terminals running real programs: bash,
//! python3 and the test agent (`tests/agent`), which behaves like a
//! coding-agent CLI (cursor query at start, bracketed paste, a permission
//! question, a login screen, slow output, a child that outlives it, and the
//! structured modes of claude, codex and gemini).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use scout::adapter::AdapterOptions;
use scout::pty::process::read_stat;
use scout::pty::{
    AgentStatus, EventKind, RuntimeConfig, RuntimeError, RuntimeEvent, SessionManager,
    SpawnRequest, TurnEvent, TurnOutcome,
};
use scout_mesh::lifecycle::Harness;
use tokio::sync::broadcast;

/// How long any wait may take before the test fails: far above what a
/// healthy run needs, so only a real hang trips it.
const WAIT_BOUND: Duration = Duration::from_secs(20);

/// The test agent, built next to the `scout` binary.
fn test_agent() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_scout")).with_file_name("scout-test-agent");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p scout-test-agent` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

fn manager() -> Arc<SessionManager> {
    Arc::new(SessionManager::new(RuntimeConfig {
        stop_grace: Duration::from_millis(500),
        ..RuntimeConfig::default()
    }))
}

fn command(argv: &[&str], prompt: Option<&str>, workdir: &Path) -> SpawnRequest {
    SpawnRequest {
        name: Some("test".to_owned()),
        harness: Harness::Command,
        workdir: Some(workdir.display().to_string()),
        options: AdapterOptions {
            command: Some(argv.iter().map(|arg| (*arg).to_owned()).collect()),
            prompt_pattern: prompt.map(str::to_owned),
            ..AdapterOptions::default()
        },
        env: Vec::new(),
        size: None,
    }
}

fn test_agent_request(workdir: &Path) -> SpawnRequest {
    let agent = test_agent();
    command(&[agent.to_str().unwrap()], Some("^>$"), workdir)
}

/// Waits (bounded) for the event `kind` about `agent_id`.
async fn wait_event(
    events: &mut broadcast::Receiver<RuntimeEvent>,
    kind: EventKind,
    agent_id: &str,
) -> RuntimeEvent {
    tokio::time::timeout(WAIT_BOUND, async {
        loop {
            match events.recv().await {
                Ok(event) if event.event == kind && event.agent_id == agent_id => return event,
                Ok(_) => {}
                Err(err) => panic!("event stream ended: {err}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind:?} event for {agent_id}"))
}

fn is_gone(pid: i32) -> bool {
    read_stat(pid).is_none_or(|stat| matches!(stat.state, 'Z' | 'X'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_turns_end_at_its_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = manager
        .spawn(command(
            &["bash", "--norc", "--noprofile", "-i"],
            Some(r"[$#]$"),
            dir.path(),
        ))
        .await
        .unwrap();
    // Starting, or Ready already on a fast start: either way the event
    // says when it is ready.
    assert!(
        matches!(agent.status, AgentStatus::Starting | AgentStatus::Ready),
        "{:?}",
        agent.status
    );
    wait_event(&mut events, EventKind::AgentReady, &agent.id).await;

    let sent = manager
        .send(&agent.id, "echo hello; echo $TERM; pwd".to_owned(), None)
        .await
        .unwrap();
    let expected = format!(
        "hello\nxterm-256color\n{}",
        std::fs::canonicalize(dir.path()).unwrap().display()
    );
    assert_eq!(sent.response, expected);
    assert_eq!(sent.question, None);
    let message = wait_event(&mut events, EventKind::Message, &agent.id).await;
    assert_eq!(message.data["message"]["content"], expected.as_str());

    // The broker's own settings do not leak into agents.
    let sent = manager
        .send(&agent.id, "echo port=${PORT:-unset}".to_owned(), None)
        .await
        .unwrap();
    assert_eq!(sent.response, "port=unset");

    let logs = manager.logs(&agent.id, 50).unwrap();
    assert!(logs.iter().any(|line| line == "hello"), "{logs:?}");
    assert!(logs.last().unwrap().ends_with(['$', '#']), "{logs:?}");
    assert_eq!(manager.info(&agent.id).unwrap().status, AgentStatus::Ready);

    let stopped = manager.stop(&agent.id).await.unwrap();
    assert_eq!(stopped.status, AgentStatus::Stopped);
    let event = wait_event(&mut events, EventKind::AgentStopped, &agent.id).await;
    assert_eq!(event.data["reason"], "stopped");
    assert!(is_gone(i32::try_from(stopped.pid).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_repl_answers_expressions() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = manager
        .spawn(command(&["python3", "-q", "-i"], Some("^>>>$"), dir.path()))
        .await
        .unwrap();
    wait_event(&mut events, EventKind::AgentReady, &agent.id).await;
    let sent = manager
        .send(&agent.id, "print(6 * 7)".to_owned(), None)
        .await
        .unwrap();
    assert_eq!(sent.response, "42");
    let sent = manager
        .send(&agent.id, "for i in range(3): print(i)\n".to_owned(), None)
        .await
        .unwrap();
    assert!(sent.response.ends_with("0\n1\n2"), "{:?}", sent.response);
    manager.shutdown().await;
    assert_eq!(
        manager.info(&agent.id).unwrap().status,
        AgentStatus::Stopped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_agent_gets_its_cursor_answer_a_paste_and_a_question() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    let mut events = manager.subscribe();
    // The agent refuses to start unless its cursor query is answered.
    let agent = manager.spawn(test_agent_request(dir.path())).await.unwrap();
    wait_event(&mut events, EventKind::AgentReady, &agent.id).await;
    let logs = manager.logs(&agent.id, 10).unwrap();
    assert!(logs.iter().any(|line| line == "cursor at 1;1"), "{logs:?}");

    let sent = manager
        .send(&agent.id, "hello there".to_owned(), None)
        .await
        .unwrap();
    assert_eq!(sent.response, "you said: hello there");

    // A multi-line message arrives as one paste, not as two submissions.
    let sent = manager
        .send(&agent.id, "line one\nline two".to_owned(), None)
        .await
        .unwrap();
    assert_eq!(sent.response, "you said: line one / line two (2 lines)");

    // A question pauses the turn; the next message answers it.
    let asked = manager
        .send(&agent.id, "ask".to_owned(), None)
        .await
        .unwrap();
    assert_eq!(
        asked.question.as_deref(),
        Some("Allow write to notes.txt? [y/n]")
    );
    let event = wait_event(&mut events, EventKind::Question, &agent.id).await;
    assert_eq!(event.data["question"], "Allow write to notes.txt? [y/n]");
    let info = manager.info(&agent.id).unwrap();
    assert_eq!(info.status, AgentStatus::Waiting);
    assert_eq!(info.waiting_for, Some("answer"));
    let answered = manager.send(&agent.id, "y".to_owned(), None).await.unwrap();
    assert_eq!(answered.response, "Permission granted: wrote notes.txt");
    assert_eq!(manager.info(&agent.id).unwrap().status, AgentStatus::Ready);

    // A query in the middle of a session is answered from the live screen.
    let sent = manager
        .send(&agent.id, "query".to_owned(), None)
        .await
        .unwrap();
    assert!(
        sent.response.starts_with("cursor at "),
        "{:?} {:?}",
        sent.response,
        manager.logs(&agent.id, 30)
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_output_streams_and_a_timeout_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = manager.spawn(test_agent_request(dir.path())).await.unwrap();
    wait_event(&mut events, EventKind::AgentReady, &agent.id).await;

    let mut turn = manager
        .run_turn(&agent.id, "slow 10".to_owned(), None, None)
        .unwrap();
    let mut n_outputs = 0;
    let outcome = loop {
        match tokio::time::timeout(WAIT_BOUND, turn.events.recv()).await {
            Ok(Some(TurnEvent::Output(_))) => n_outputs += 1,
            Ok(Some(TurnEvent::Finished(outcome))) => break outcome,
            Ok(Some(TurnEvent::Tool(_))) => {}
            other => panic!("turn ended without an outcome: {other:?}"),
        }
    };
    let expected: Vec<String> = (1..=10).map(|idx| format!("chunk {idx}")).collect();
    assert_eq!(
        outcome,
        TurnOutcome::Completed {
            response: expected.join("\n")
        }
    );
    assert!(n_outputs > 1, "output arrived in {n_outputs} pieces");

    let err = manager
        .send(
            &agent.id,
            "slow 1000".to_owned(),
            Some(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert_eq!(err, RuntimeError::Timeout { timeout_ms: 200 });
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_agent_and_the_children_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = manager.spawn(test_agent_request(dir.path())).await.unwrap();
    wait_event(&mut events, EventKind::AgentReady, &agent.id).await;
    let sent = manager
        .send(&agent.id, "spawn-child".to_owned(), None)
        .await
        .unwrap();
    let child: i32 = sent
        .response
        .strip_prefix("child pid ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{:?}", sent.response));
    assert!(!is_gone(child));

    manager.stop(&agent.id).await.unwrap();
    assert!(is_gone(child), "the child survived the stop");
    assert!(is_gone(i32::try_from(agent.pid).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_exits_leaving_a_child_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = manager.spawn(test_agent_request(dir.path())).await.unwrap();
    wait_event(&mut events, EventKind::AgentReady, &agent.id).await;
    // The agent exits at once; its child ignores the hangup and keeps the
    // terminal open, so only `wait()` tells the agent is gone.
    let err = manager
        .send(&agent.id, "spawn-child-and-exit".to_owned(), None)
        .await
        .unwrap_err();
    assert_eq!(err, RuntimeError::AgentStopped(agent.id.clone()));
    let stopped = wait_event(&mut events, EventKind::AgentStopped, &agent.id).await;
    assert_eq!(stopped.data["reason"], "exited with code 0");
    let logs = manager.logs(&agent.id, 20).unwrap();
    let child: i32 = logs
        .iter()
        .find_map(|line| line.strip_prefix("child pid "))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{logs:?}"));
    assert!(is_gone(child), "the orphaned child is still running");

    // Sending to a stopped agent is an error, and the manager keeps serving.
    let err = manager
        .send(&agent.id, "hello".to_owned(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "AGENT_STOPPED");
    let other = manager.spawn(test_agent_request(dir.path())).await.unwrap();
    wait_event(&mut events, EventKind::AgentReady, &other.id).await;
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_an_agent_error() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = manager.spawn(test_agent_request(dir.path())).await.unwrap();
    wait_event(&mut events, EventKind::AgentReady, &agent.id).await;
    let _ = manager.send(&agent.id, "crash".to_owned(), None).await;
    let error = wait_event(&mut events, EventKind::AgentError, &agent.id).await;
    assert_eq!(error.data["error"]["code"], "AGENT_EXITED");
    let info = manager.info(&agent.id).unwrap();
    assert_eq!(info.status, AgentStatus::Error);
    assert_eq!(info.exit_code, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_rejects_bad_input_and_enforces_max_agents() {
    let dir = tempfile::tempdir().unwrap();
    let manager = Arc::new(SessionManager::new(RuntimeConfig {
        max_agents: 2,
        stop_grace: Duration::from_millis(500),
        ..RuntimeConfig::default()
    }));
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let cases = [
        (
            command(&["cat"], None, &dir.path().join("missing")),
            "INVALID_WORKDIR",
        ),
        (command(&["cat"], None, &file), "INVALID_WORKDIR"),
        (
            command(&["no-such-program-here"], None, dir.path()),
            "CLI_NOT_FOUND",
        ),
        (command(&["cat"], Some("("), dir.path()), "INVALID_REQUEST"),
    ];
    for (request, code) in cases {
        let err = manager.spawn(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    let mut no_command = command(&["cat"], None, dir.path());
    no_command.options.command = None;
    assert_eq!(
        manager.spawn(no_command).await.unwrap_err().code(),
        "INVALID_REQUEST"
    );
    assert_eq!(
        manager.info("agent-nope").unwrap_err().code(),
        "AGENT_NOT_FOUND"
    );

    let first = manager
        .spawn(command(&["cat"], None, dir.path()))
        .await
        .unwrap();
    // Without patterns a program is ready once started.
    assert_eq!(first.status, AgentStatus::Ready);
    manager
        .spawn(command(&["cat"], None, dir.path()))
        .await
        .unwrap();
    let err = manager
        .spawn(command(&["cat"], None, dir.path()))
        .await
        .unwrap_err();
    assert_eq!(err, RuntimeError::MaxAgents { max: 2 });
    manager.stop(&first.id).await.unwrap();
    manager
        .spawn(command(&["cat"], None, dir.path()))
        .await
        .unwrap();
    assert_eq!(manager.n_running(), 2);
    manager.shutdown().await;
    assert_eq!(manager.n_running(), 0);
    assert_eq!(
        manager
            .spawn(command(&["cat"], None, dir.path()))
            .await
            .unwrap_err()
            .code(),
        "SHUTTING_DOWN"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_without_a_prompt_ends_turns_when_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    let agent = manager
        .spawn(command(&["cat"], None, dir.path()))
        .await
        .unwrap();
    let sent = manager
        .send(&agent.id, "ping".to_owned(), None)
        .await
        .unwrap();
    // `cat` on a terminal: the echo of what was typed, then cat's copy.
    assert_eq!(sent.response, "ping");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_current_screen() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = manager.spawn(test_agent_request(dir.path())).await.unwrap();
    wait_event(&mut events, EventKind::AgentReady, &agent.id).await;
    manager
        .send(&agent.id, "remember me".to_owned(), None)
        .await
        .unwrap();
    let session = manager.session(&agent.id).unwrap();
    let attachment = session.attach();
    let redraw = String::from_utf8_lossy(&attachment.redraw);
    assert!(redraw.contains("you said: remember me"), "{redraw:?}");
    manager.shutdown().await;
}

/// A directory with `claude`, `codex` and `gemini` links to the test agent,
/// and a home for their credentials.
struct Personas {
    dir: tempfile::TempDir,
}

impl Personas {
    fn new() -> Personas {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        for name in ["claude", "codex", "gemini"] {
            std::os::unix::fs::symlink(test_agent(), dir.path().join("bin").join(name)).unwrap();
        }
        Personas { dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn log_in(&self, dir: &str, file: &str) {
        std::fs::create_dir_all(self.home().join(dir)).unwrap();
        std::fs::write(self.home().join(dir).join(file), "{}").unwrap();
    }

    fn request(&self, harness: Harness) -> SpawnRequest {
        let program = self.dir.path().join("bin").join(harness.as_str());
        SpawnRequest {
            name: Some(format!("my-{harness}")),
            harness,
            workdir: Some(self.dir.path().display().to_string()),
            options: AdapterOptions {
                command: Some(vec![program.display().to_string()]),
                ..AdapterOptions::default()
            },
            env: vec![("HOME".to_owned(), self.home().display().to_string())],
            size: None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_needs_a_login_then_answers_in_stream_json() {
    let personas = Personas::new();
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = manager
        .spawn(personas.request(Harness::Claude))
        .await
        .unwrap();
    assert_eq!(agent.auth, scout::adapter::AuthStatus::LoggedOut);
    // The login screen shows a URL; the event carries it.
    let login = loop {
        let event = wait_event(&mut events, EventKind::LoginRequired, &agent.id).await;
        if !event.data["loginUrl"].is_null() {
            break event;
        }
    };
    assert_eq!(
        login.data["loginUrl"],
        "https://claude.ai/oauth/authorize?code=true&client_id=scout-test&state=T35T"
    );
    let err = manager
        .send(&agent.id, "hi".to_owned(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "AUTH_REQUIRED");
    assert_eq!(manager.info(&agent.id).unwrap().waiting_for, Some("login"));

    // The person logs in through the terminal.
    let session = manager.session(&agent.id).unwrap();
    session.input().send("ok\r".into()).await.unwrap();
    wait_event(&mut events, EventKind::AgentReady, &agent.id).await;

    let mut turn = manager
        .run_turn(&agent.id, "hi".to_owned(), None, None)
        .unwrap();
    let mut tools = Vec::new();
    let outcome = loop {
        match tokio::time::timeout(WAIT_BOUND, turn.events.recv())
            .await
            .unwrap()
        {
            Some(TurnEvent::Tool(tool)) => tools.push(tool),
            Some(TurnEvent::Finished(outcome)) => break outcome,
            Some(TurnEvent::Output(_) | TurnEvent::Usage(_)) => {}
            None => panic!("no outcome"),
        }
    };
    assert_eq!(
        outcome,
        TurnOutcome::Completed {
            response: "you said: hi".to_owned()
        }
    );
    assert_eq!(tools, ["Bash: ls"]);
    // The next turn continues the same conversation.
    let first_session = manager
        .send(&agent.id, "session?".to_owned(), None)
        .await
        .unwrap();
    let second_session = manager
        .send(&agent.id, "session?".to_owned(), None)
        .await
        .unwrap();
    assert!(first_session.response.starts_with("session test-session-"));
    assert_eq!(first_session.response, second_session.response);
    let err = manager
        .send(&agent.id, "fail".to_owned(), None)
        .await
        .unwrap_err();
    assert_eq!(err, RuntimeError::Harness("the model refused".to_owned()));
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_and_gemini_answer_in_their_json_modes() {
    let personas = Personas::new();
    personas.log_in(".codex", "auth.json");
    personas.log_in(".gemini", "oauth_creds.json");
    let manager = manager();
    let mut events = manager.subscribe();
    for harness in [Harness::Codex, Harness::Gemini] {
        let agent = manager.spawn(personas.request(harness)).await.unwrap();
        assert_eq!(agent.auth, scout::adapter::AuthStatus::LoggedIn);
        wait_event(&mut events, EventKind::AgentReady, &agent.id).await;
        let sent = manager
            .send(&agent.id, "-starts with a dash".to_owned(), None)
            .await
            .unwrap();
        assert_eq!(sent.response, "you said: -starts with a dash", "{harness}");
        let sent = manager
            .send(&agent.id, "slow 3".to_owned(), None)
            .await
            .unwrap();
        assert_eq!(sent.response, "chunk 1\nchunk 2\nchunk 3", "{harness}");
        let err = manager
            .send(&agent.id, "fail".to_owned(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "HARNESS_ERROR", "{harness}");
        let err = manager
            .send(
                &agent.id,
                "hang".to_owned(),
                Some(Duration::from_millis(300)),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "TIMEOUT", "{harness}");
    }
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_gemini_shows_its_login_url() {
    let personas = Personas::new();
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = manager
        .spawn(personas.request(Harness::Gemini))
        .await
        .unwrap();
    let login = loop {
        let event = wait_event(&mut events, EventKind::LoginRequired, &agent.id).await;
        if !event.data["loginUrl"].is_null() {
            break event;
        }
    };
    assert!(
        login.data["loginUrl"]
            .as_str()
            .unwrap()
            .starts_with("https://accounts.google.com/"),
        "{}",
        login.data
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_before_the_prompt_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    let agent = manager.spawn(test_agent_request(dir.path())).await.unwrap();
    // No wait for readiness: the turn itself waits for the first prompt.
    let sent = manager
        .send(&agent.id, "early bird".to_owned(), None)
        .await
        .unwrap();
    assert_eq!(sent.response, "you said: early bird");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_an_agent_ends_its_structured_turn() {
    let personas = Personas::new();
    personas.log_in(".codex", "auth.json");
    let manager = manager();
    let mut events = manager.subscribe();
    let agent = manager
        .spawn(personas.request(Harness::Codex))
        .await
        .unwrap();
    wait_event(&mut events, EventKind::AgentReady, &agent.id).await;
    let mut turn = manager
        .run_turn(&agent.id, "hang".to_owned(), Some(WAIT_BOUND * 10), None)
        .unwrap();
    manager.stop(&agent.id).await.unwrap();
    let outcome = tokio::time::timeout(WAIT_BOUND, async {
        loop {
            if let Some(TurnEvent::Finished(outcome)) = turn.events.recv().await {
                return outcome;
            }
        }
    })
    .await
    .expect("the turn ended with the agent");
    assert!(
        matches!(
            outcome,
            TurnOutcome::Failed {
                failure: scout::pty::TurnFailure::AgentStopped,
                ..
            }
        ),
        "{outcome:?}"
    );
}
