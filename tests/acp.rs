//! The `acp` harness against the real `gemini --acp` (the pinned Gemini
//! CLI in `target/agent-clis`), with only the model scripted: a turn
//! completes with the scripted answer, a second turn of the conversation
//! continues the same ACP session, a shell tool asks permission and runs,
//! a turn is cancelled mid-answer, and missing credentials are
//! `AUTH_REQUIRED`. Each test gives the CLI its own home directory.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::agent_clis::agent_cli;
use common::model::{Api, ModelServer, Recorded, Step, gemini};
use scout::adapter::AdapterOptions;
use scout::pty::process::read_stat;
use scout::pty::{
    RuntimeConfig, SessionManager, SpawnRequest, TurnEvent, TurnFailure, TurnOutcome,
};
use scout_mesh::lifecycle::Harness;

/// How long one CLI turn may take: the CLI starts in seconds, far less
/// than this on a healthy machine, so only a real hang trips it.
const WAIT_BOUND: Duration = Duration::from_secs(120);

/// A temporary home and working directory for one test's CLI.
struct CliHome {
    dir: tempfile::TempDir,
}

impl CliHome {
    fn new() -> CliHome {
        let sandbox = CliHome {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::create_dir_all(sandbox.workdir()).expect("workdir");
        gemini::configure_home(&sandbox.home());
        sandbox
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn workdir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The CLI's environment: this home and, with `server`, the scripted
    /// model behind an API key; without one, no credentials at all (the
    /// machine's user's are blanked either way).
    fn env(&self, server: Option<&ModelServer>) -> Vec<(String, String)> {
        match server {
            Some(server) => gemini::env(server, &self.home()),
            None => {
                let mut env = vec![("HOME".to_owned(), self.home().display().to_string())];
                for name in gemini::BLANKED
                    .iter()
                    .chain(&["GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL"])
                {
                    env.push(((*name).to_owned(), String::new()));
                }
                // Without a chosen login the CLI asks for one.
                let _ = std::fs::remove_file(self.home().join(".gemini/settings.json"));
                env
            }
        }
    }
}

fn manager() -> Arc<SessionManager> {
    Arc::new(SessionManager::new(RuntimeConfig {
        stop_grace: Duration::from_millis(500),
        ..RuntimeConfig::default()
    }))
}

/// Starts an `acp` agent running `gemini --acp` in the sandbox.
async fn spawn_gemini(
    manager: &SessionManager,
    sandbox: &CliHome,
    server: Option<&ModelServer>,
) -> String {
    let gemini = agent_cli("gemini");
    let info = manager
        .spawn(SpawnRequest {
            name: Some("acp-gemini".to_owned()),
            harness: Harness::Acp,
            workdir: Some(sandbox.workdir().display().to_string()),
            options: AdapterOptions {
                command: Some(vec![gemini.display().to_string(), "--acp".to_owned()]),
                ..AdapterOptions::default()
            },
            env: sandbox.env(server),
            size: None,
        })
        .await
        .expect("spawn the acp agent");
    info.id
}

/// Runs one turn to its end: its events before the outcome, and the outcome.
async fn turn(
    manager: &SessionManager,
    id: &str,
    prompt: &str,
    conversation: Option<&str>,
) -> (Vec<TurnEvent>, TurnOutcome) {
    let mut turn = manager
        .run_turn(
            id,
            prompt.to_owned(),
            Some(WAIT_BOUND),
            conversation.map(str::to_owned),
        )
        .expect("start the turn");
    finish(&mut turn.events).await
}

async fn finish(
    events: &mut tokio::sync::mpsc::Receiver<TurnEvent>,
) -> (Vec<TurnEvent>, TurnOutcome) {
    let mut seen = Vec::new();
    let outcome = tokio::time::timeout(WAIT_BOUND + Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(TurnEvent::Finished(outcome)) => return outcome,
                Some(event) => seen.push(event),
                None => panic!("the turn ended without an outcome"),
            }
        }
    })
    .await
    .expect("the turn did not finish");
    (seen, outcome)
}

fn completed(outcome: &TurnOutcome) -> &str {
    match outcome {
        TurnOutcome::Completed { response } => response,
        other => panic!("the turn did not complete: {other:?}"),
    }
}

/// The model requests of the conversation (the CLI makes side calls too).
fn generate_requests(requests: &[Recorded]) -> Vec<&Recorded> {
    gemini::conversation(requests)
}

/// Waits (bounded) until the model has been asked for an answer.
async fn wait_for_generate_request(server: &ModelServer) {
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while generate_requests(&server.requests()).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the CLI never asked the model: {:#?}",
            server.requests()
        );
        // Polling a condition with a bound; the server has no event to wait on.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn text_of(request: &Recorded) -> String {
    request.body.to_string()
}

#[tokio::test]
async fn turns_complete_and_continue_the_acp_session() {
    let server = ModelServer::start(
        Api::Gemini,
        vec![
            Step::Text("first scripted answer".to_owned()),
            Step::Text("second scripted answer".to_owned()),
        ],
    );
    let sandbox = CliHome::new();
    let manager = manager();
    let id = spawn_gemini(&manager, &sandbox, Some(&server)).await;

    let (events, outcome) = turn(&manager, &id, "say the first thing", Some("conv-1")).await;
    assert_eq!(completed(&outcome), "first scripted answer");
    assert!(
        events
            .iter()
            .any(|event| matches!(event, TurnEvent::Output(text) if text.contains("first"))),
        "{events:?}"
    );
    assert!(
        events.iter().any(|event| matches!(
            event,
            TurnEvent::Usage(usage) if usage.input_tokens > 0 && usage.output_tokens > 0
        )),
        "{events:?}"
    );

    let (_, outcome) = turn(&manager, &id, "say the second thing", Some("conv-1")).await;
    assert_eq!(completed(&outcome), "second scripted answer");
    // The second request carries the first exchange: the same ACP session.
    let requests = server.requests();
    let generated = generate_requests(&requests);
    let last = generated.last().expect("a model request");
    let body = text_of(last);
    assert!(body.contains("say the first thing"), "{body}");
    assert!(body.contains("first scripted answer"), "{body}");
    assert!(body.contains("say the second thing"), "{body}");

    manager.stop(&id).await.expect("stop");
}

/// Gemini CLI runs commands it knows to be read-only (`echo`, `ls`, ...)
/// without asking; any other command asks permission first.
/// After the agent process died between turns, the next turn starts a new
/// one and completes. Scout asks it to load the conversation's ACP session
/// (`session/load`, which `gemini --acp` announces). Gemini CLI 0.61 most
/// often answers with an error (its load starts recording the chat afresh,
/// over the saved one, before reading it), and the turn continues in a new
/// ACP session; when the load succeeds, it replays the history after its
/// answer, and the replay must not show in this turn's answer. Another
/// conversation never sees the first one's exchange.
#[tokio::test]
async fn after_the_agent_died_the_next_turn_starts_it_again() {
    let server = ModelServer::start(
        Api::Gemini,
        vec![
            Step::Text("noted".to_owned()),
            Step::Text("it was teapot".to_owned()),
            Step::Text("no word yet".to_owned()),
        ],
    );
    let sandbox = CliHome::new();
    let manager = manager();
    let id = spawn_gemini(&manager, &sandbox, Some(&server)).await;
    let (_, outcome) = turn(&manager, &id, "remember the word teapot", Some("a")).await;
    assert_eq!(completed(&outcome), "noted");

    let console_pid = manager.info(&id).expect("info").pid;
    kill_acp_agent(&sandbox.workdir(), console_pid).await;

    let (_, outcome) = turn(&manager, &id, "what was the word?", Some("a")).await;
    assert_eq!(completed(&outcome), "it was teapot");

    let (_, outcome) = turn(&manager, &id, "what was the word?", Some("b")).await;
    assert_eq!(completed(&outcome), "no word yet");
    let requests = server.requests();
    let texts = gemini::texts(generate_requests(&requests).last().expect("request"));
    assert!(
        !texts.iter().any(|text| text.contains("teapot")),
        "{texts:?}"
    );
    manager.stop(&id).await.expect("stop");
}

/// Kills the ACP agent process (and its group) that this test's session
/// started in `workdir` (not the session's terminal, `console_pid`), and
/// waits until it is dead.
async fn kill_acp_agent(workdir: &std::path::Path, console_pid: u32) {
    let me = i32::try_from(std::process::id()).expect("pid");
    let workdir = std::fs::canonicalize(workdir).expect("workdir");
    let agents: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| u32::try_from(*pid).ok() != Some(console_pid))
        .filter(|pid| {
            read_stat(*pid).is_some_and(|stat| stat.ppid == me && stat.state != 'Z')
                && std::fs::read_link(format!("/proc/{pid}/cwd")).ok().as_ref() == Some(&workdir)
        })
        .collect();
    assert_eq!(agents.len(), 1, "one ACP agent process: {agents:?}");
    let agent = agents[0];
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the agent");
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    // A process is dead for its parent once its last thread is: the
    // leader shows `Z` while other threads may still be exiting.
    let alive = |pid: i32| {
        read_stat(pid).is_some_and(|stat| {
            stat.state != 'Z'
                || std::fs::read_dir(format!("/proc/{pid}/task"))
                    .is_ok_and(|tasks| tasks.count() > 1)
        })
    };
    while alive(agent) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not die"
        );
        // Polling a condition with a bound: a killed process has no event.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shell_tools_run_and_the_policy_allows_what_asks_permission() {
    let server = ModelServer::start(
        Api::Gemini,
        vec![
            Step::ToolCall {
                name: "run_shell_command".to_owned(),
                input: serde_json::json!({ "command": "echo hi" }),
            },
            Step::ToolCall {
                name: "run_shell_command".to_owned(),
                input: serde_json::json!({ "command": "printf 'hi from printf\\n'" }),
            },
            Step::Text("the commands said hi".to_owned()),
        ],
    );
    let sandbox = CliHome::new();
    let manager = manager();
    let id = spawn_gemini(&manager, &sandbox, Some(&server)).await;

    let (events, outcome) = turn(&manager, &id, "run echo hi, then printf", None).await;
    assert_eq!(completed(&outcome), "the commands said hi");
    let tools: Vec<&str> = events
        .iter()
        .filter_map(|event| match event {
            TurnEvent::Tool(line) => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert!(tools.contains(&"$ echo hi"), "{tools:?}");
    // `printf` asked first, and the policy allowed it once.
    assert!(
        tools
            .iter()
            .any(|line| line.contains("printf") && line.ends_with("(permission: allowed once)")),
        "{tools:?}"
    );
    // Both ran: their output went back to the model.
    let requests = server.requests();
    let generated = generate_requests(&requests);
    let last = generated.last().expect("a model request");
    let responses: Vec<String> = last.body["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|content| content["parts"].as_array().into_iter().flatten())
        .filter(|part| part.get("functionResponse").is_some())
        .map(|part| part["functionResponse"]["response"].to_string())
        .collect();
    assert_eq!(responses.len(), 2, "{responses:?}");
    assert!(responses[0].contains("hi"), "{responses:?}");
    assert!(responses[1].contains("hi from printf"), "{responses:?}");

    manager.stop(&id).await.expect("stop");
}

#[tokio::test]
async fn a_turn_is_cancelled_mid_answer_and_the_next_one_runs() {
    let server = ModelServer::start(
        Api::Gemini,
        vec![Step::Hang, Step::Text("after the cancel".to_owned())],
    );
    let sandbox = CliHome::new();
    let manager = manager();
    let id = spawn_gemini(&manager, &sandbox, Some(&server)).await;

    let mut hanging = manager
        .run_turn(
            &id,
            "never mind".to_owned(),
            Some(WAIT_BOUND),
            Some("c".into()),
        )
        .expect("start the turn");
    // The model has the request (and never answers): the turn is mid-way.
    wait_for_generate_request(&server).await;
    manager.session(&id).expect("session").cancel_turn();
    let (_, outcome) = finish(&mut hanging.events).await;
    assert!(
        matches!(
            outcome,
            TurnOutcome::Failed {
                failure: TurnFailure::Cancelled,
                ..
            }
        ),
        "{outcome:?}"
    );

    let (_, outcome) = turn(&manager, &id, "and now?", Some("c")).await;
    assert_eq!(completed(&outcome), "after the cancel");
    manager.stop(&id).await.expect("stop");
}

#[test]
fn agents_add_takes_the_acp_harness_with_a_command() {
    let sandbox = common::Sandbox::new();
    sandbox.setup("laptop");
    let cwd = sandbox.path().display().to_string();
    let missing = sandbox.run(&["agents", "add", "gem", "--harness", "acp", "--cwd", &cwd]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("`acp` agent needs a command"),
        "{}",
        missing.stderr
    );
    let add = sandbox.run(&[
        "agents",
        "add",
        "gem",
        "--harness",
        "acp",
        "--cwd",
        &cwd,
        "--command",
        "gemini --acp",
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let list = sandbox.run(&["--json", "agents", "list"]);
    assert!(list.stdout.contains("\"acp\""), "{}", list.stdout);
}

/// A program that is not an ACP agent: its lines are skipped, its exit
/// fails the turn with what it said on stderr, and the session keeps
/// serving turns (each starts the program again).
#[tokio::test]
async fn a_program_that_is_no_acp_agent_fails_the_turn() {
    let sandbox = CliHome::new();
    let manager = manager();
    let script = r#"echo 'not json'; echo '{"jsonrpc":"2.0","id":99,"result":{}}'; echo '[1,2]'; echo 'no acp here' >&2; exit 3"#;
    let info = manager
        .spawn(SpawnRequest {
            name: Some("not-acp".to_owned()),
            harness: Harness::Acp,
            workdir: Some(sandbox.workdir().display().to_string()),
            options: AdapterOptions {
                command: Some(vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()]),
                ..AdapterOptions::default()
            },
            env: sandbox.env(None),
            size: None,
        })
        .await
        .expect("spawn");
    for _ in 0..2 {
        let (_, outcome) = turn(&manager, &info.id, "hello", None).await;
        let TurnOutcome::Failed { failure, message } = &outcome else {
            panic!("the turn did not fail: {outcome:?}");
        };
        assert_eq!(*failure, TurnFailure::Harness, "{message}");
        assert!(message.contains("no acp here"), "{message}");
    }
    manager.stop(&info.id).await.expect("stop");
}

/// A minimal ACP agent in POSIX sh, for what `gemini --acp` never does:
/// it ignores `session/cancel` (answering a prompt containing "hang"
/// never), and its `session/load` works (replaying a chunk first). It logs
/// every line it reads to `$ACP_LOG`.
const STUBBORN_AGENT: &str = r#"log="$ACP_LOG"
n_new=0
while IFS= read -r line; do
  printf '%s\n' "$line" >> "$log"
  id=$(printf '%s' "$line" | sed -n 's/^.*"id":\([0-9][0-9]*\).*$/\1/p')
  case "$line" in
    *'"method":"initialize"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":1,"agentCapabilities":{"loadSession":true}}}\n' "$id" ;;
    *'"method":"session/new"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"sessionId":"s-1"}}\n' "$id" ;;
    *'"method":"session/load"'*)
      printf '{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s-1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"replayed"}}}}\n'
      printf '{"jsonrpc":"2.0","id":%s,"result":{}}\n' "$id" ;;
    *'"method":"session/prompt"'*)
      printf '{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s-1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"working"}}}}\n'
      case "$line" in
        *hang*) ;;
        *) printf '{"jsonrpc":"2.0","id":%s,"result":{"stopReason":"end_turn"}}\n' "$id" ;;
      esac ;;
  esac
done
"#;

/// An agent that ignores `session/cancel` is killed after the grace; the
/// next turn starts it again and loads the conversation's session, whose
/// replay is not part of the answer.
#[tokio::test]
async fn an_agent_that_ignores_the_cancel_is_killed_and_its_session_loaded() {
    let sandbox = CliHome::new();
    let script = sandbox.dir.path().join("agent.sh");
    std::fs::write(&script, STUBBORN_AGENT).expect("write the agent");
    let log = sandbox.dir.path().join("agent.log");
    let mut env = sandbox.env(None);
    env.push(("ACP_LOG".to_owned(), log.display().to_string()));
    let manager = manager();
    let info = manager
        .spawn(SpawnRequest {
            name: Some("stubborn".to_owned()),
            harness: Harness::Acp,
            workdir: Some(sandbox.workdir().display().to_string()),
            options: AdapterOptions {
                command: Some(vec!["sh".to_owned(), script.display().to_string()]),
                ..AdapterOptions::default()
            },
            env,
            size: None,
        })
        .await
        .expect("spawn");
    let (_, outcome) = turn(&manager, &info.id, "hello", Some("c")).await;
    assert_eq!(completed(&outcome), "working");

    let mut hanging = manager
        .run_turn(
            &info.id,
            "hang".to_owned(),
            Some(WAIT_BOUND),
            Some("c".into()),
        )
        .expect("start the turn");
    // The agent is working on the prompt once it streamed its chunk.
    let started = tokio::time::timeout(WAIT_BOUND, hanging.events.recv())
        .await
        .expect("a chunk");
    assert_eq!(started, Some(TurnEvent::Output("working".to_owned())));
    manager.session(&info.id).expect("session").cancel_turn();
    let (_, outcome) = finish(&mut hanging.events).await;
    assert!(
        matches!(
            outcome,
            TurnOutcome::Failed {
                failure: TurnFailure::Cancelled,
                ..
            }
        ),
        "{outcome:?}"
    );

    // This turn waits for the cancel to end (the kill, after the grace).
    let (_, outcome) = turn(&manager, &info.id, "hello again", Some("c")).await;
    assert_eq!(completed(&outcome), "working");
    let lines = std::fs::read_to_string(&log).expect("agent log");
    let methods: Vec<String> = lines
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|message| Some(message.get("method")?.as_str()?.to_owned()))
        .collect();
    assert_eq!(
        methods,
        [
            "initialize",
            "session/new",
            "session/prompt",
            "session/prompt",
            "session/cancel",
            "initialize",
            "session/load",
            "session/prompt",
        ]
    );
    assert!(
        lines
            .lines()
            .any(|line| line.contains("session/load") && line.contains("\"s-1\"")),
        "{lines}"
    );
    manager.stop(&info.id).await.expect("stop");
}

#[tokio::test]
async fn a_rejected_api_key_is_auth_required() {
    let server = ModelServer::start(
        Api::Gemini,
        vec![Step::Error {
            status: 401,
            message: "API key not valid. Please pass a valid API key.".to_owned(),
            retry_after: None,
        }],
    );
    let sandbox = CliHome::new();
    let manager = manager();
    let id = spawn_gemini(&manager, &sandbox, Some(&server)).await;

    let (_, outcome) = turn(&manager, &id, "hello", None).await;
    let TurnOutcome::Failed { failure, message } = &outcome else {
        panic!("the turn did not fail: {outcome:?}");
    };
    assert_eq!(*failure, TurnFailure::AuthRequired, "{message}");
    manager.stop(&id).await.expect("stop");
}

/// `POST /agents` takes `"type": "acp"` with a command line, refuses it
/// without one, and a send to a logged-out agent is `AUTH_REQUIRED`.
#[test]
fn the_http_api_runs_acp_agents() {
    let sandbox = common::Sandbox::new();
    sandbox.setup("laptop");
    let broker = common::BrokerProcess::start(&sandbox);
    let http = ureq::AgentBuilder::new().timeout(2 * WAIT_BOUND).build();
    let call = |method: &str, path: &str, body: serde_json::Value| -> (u16, serde_json::Value) {
        let result = http
            .request(method, &format!("{}{path}", broker.http_base()))
            .set("Authorization", &format!("Bearer {}", sandbox.token()))
            .send_json(body);
        match result {
            Ok(response) => (response.status(), response.into_json().unwrap_or_default()),
            Err(ureq::Error::Status(status, response)) => {
                (status, response.into_json().unwrap_or_default())
            }
            Err(err) => panic!("transport error: {err}"),
        }
    };
    let (status, body) = call("POST", "/agents", serde_json::json!({ "type": "acp" }));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_REQUEST");

    let home = CliHome::new();
    let env: serde_json::Map<String, serde_json::Value> = home
        .env(None)
        .into_iter()
        .map(|(name, value)| (name, value.into()))
        .collect();
    let command = format!("{} --acp", agent_cli("gemini").display());
    let (status, agent) = call(
        "POST",
        "/agents",
        serde_json::json!({
            "type": "acp",
            "command": command,
            "workdir": home.workdir(),
            "env": env,
        }),
    );
    assert_eq!(status, 201, "{agent}");
    assert_eq!(agent["type"], "acp");
    let id = agent["id"].as_str().expect("id");
    let (status, body) = call(
        "POST",
        &format!("/agents/{id}/send"),
        serde_json::json!({ "message": "hello", "timeout": WAIT_BOUND.as_millis() as u64 }),
    );
    assert_eq!(status, 424, "{body}");
    assert_eq!(body["error"]["code"], "AUTH_REQUIRED");
    // Without a body: a request body the route does not read costs the
    // connection (the server cannot reuse it and closes it).
    let deleted = http
        .delete(&format!("{}/agents/{id}", broker.http_base()))
        .set("Authorization", &format!("Bearer {}", sandbox.token()))
        .call()
        .map(|response| response.status());
    assert_eq!(deleted.ok(), Some(200));
}

#[tokio::test]
async fn without_credentials_a_turn_is_auth_required() {
    let sandbox = CliHome::new();
    let manager = manager();
    let id = spawn_gemini(&manager, &sandbox, None).await;

    let (_, outcome) = turn(&manager, &id, "hello", None).await;
    let TurnOutcome::Failed { failure, message } = &outcome else {
        panic!("the turn did not fail: {outcome:?}");
    };
    assert_eq!(*failure, TurnFailure::AuthRequired, "{message}");
    assert_eq!(failure.code(), "AUTH_REQUIRED");
    manager.stop(&id).await.expect("stop");
}
