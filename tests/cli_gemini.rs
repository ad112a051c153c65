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
use scout::adapter::AdapterOptions;
use scout::pty::{AgentInfo, RuntimeConfig, SessionManager, SpawnRequest, TurnEvent, TurnOutcome};
use scout_mesh::lifecycle::Harness;

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
        options: AdapterOptions {
            command: Some(vec![agent_cli("gemini").display().to_string()]),
            ..AdapterOptions::default()
        },
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_completes_with_the_scripted_answer() {
    let machine = Machine::new();
    let server = ModelServer::start(Api::Gemini, vec![Step::Text("Scripted hello".to_owned())]);
    let manager = manager();
    let agent = spawn(&manager, &machine, &server).await;

    let (_, outcome) = turn(&manager, &agent, "say hello", None).await;
    assert_eq!(completed(&outcome), "Scripted hello");

    let requests = server.requests();
    let conversation = gemini::conversation(&requests);
    assert_eq!(conversation.len(), 1, "{requests:#?}");
    let texts = gemini::texts(conversation[0]);
    assert!(texts.iter().any(|text| text == "say hello"), "{texts:?}");
    let _ = model::USAGE;
    manager.shutdown().await;
}
