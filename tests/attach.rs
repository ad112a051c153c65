//! Routed turns visible live, `scout attach`, and taking a conversation
//! over, end to end: the real `scout up` in a temporary home, the test agent
//! (`tests/agent`) linked as `claude` as a claude-harness agent, routed
//! turns sent with `scout send`, a real WebSocket client on the agent's
//! terminal, and `scout attach` as a real process on a real pseudo-terminal.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BrokerProcess, Sandbox, wait_until};
use nix::sys::termios::LocalFlags;
use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// How long a wait for a turn or a screen may take before the test fails:
/// far above what the test agent needs, so only a real hang trips it.
const WAIT_BOUND: Duration = Duration::from_secs(60);

/// Ctrl-], the detach key of `scout attach`.
const DETACH_KEY: u8 = 0x1d;

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

/// A broker whose home has `@fabric`: the test agent as `claude`, logged in.
struct Fixture {
    sandbox: Sandbox,
    broker: BrokerProcess,
}

impl Fixture {
    fn start() -> Fixture {
        let sandbox = Sandbox::new();
        sandbox.setup("laptop");
        let bin = sandbox.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let claude = bin.join("claude");
        std::os::unix::fs::symlink(test_agent(), &claude).unwrap();
        std::fs::create_dir_all(sandbox.path().join(".claude")).unwrap();
        std::fs::write(sandbox.path().join(".claude/.credentials.json"), "{}").unwrap();
        let cwd = sandbox.path().display().to_string();
        let add = sandbox.run(&[
            "agents",
            "add",
            "fabric",
            "--harness",
            "claude",
            "--cwd",
            &cwd,
            "--workspace",
            "main",
            "--command",
            claude.to_str().unwrap(),
        ]);
        assert_eq!(add.code, 0, "{}", add.stderr);
        let broker = BrokerProcess::start(&sandbox);
        Fixture { sandbox, broker }
    }

    /// `scout send @fabric MESSAGE`; returns the submitted invocation.
    fn send(&self, message: &str, conversation: Option<&str>) -> Value {
        let mut args = vec!["--json", "send", "@fabric", message, "--timeout", "120"];
        if let Some(conversation) = conversation {
            args.extend(["--conversation", conversation]);
        }
        let run = self.sandbox.run(&args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.json()
    }

    /// `scout send --wait`; returns the answer.
    fn send_and_wait(&self, message: &str, conversation: Option<&str>) -> String {
        let mut args = vec!["send", "@fabric", message, "--wait", "--timeout", "120"];
        if let Some(conversation) = conversation {
            args.extend(["--conversation", conversation]);
        }
        let run = self.sandbox.run(&args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.stdout.trim().to_owned()
    }

    fn get(&self, path: &str) -> Value {
        ureq::get(&format!("{}{path}", self.broker.http_base()))
            .set("Authorization", &format!("Bearer {}", self.sandbox.token()))
            .call()
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
            .into_json()
            .unwrap()
    }

    /// The runtime session of `@fabric` (started by its first turn).
    fn session(&self) -> Value {
        let agents = self.get("/agents");
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|agent| {
                agent["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("@fabric@laptop")
            })
            .cloned()
            .unwrap_or_else(|| panic!("no session of @fabric: {agents}"))
    }

    fn terminal(&self, agent_id: &str) -> Ws {
        let url = format!(
            "{}/ws/agents/{agent_id}/terminal",
            self.broker.http_base().replace("http://", "ws://")
        );
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.sandbox.token()).parse().unwrap(),
        );
        let (mut ws, _) = tungstenite::connect(request).unwrap();
        if let MaybeTlsStream::Plain(stream) = ws.get_mut() {
            stream.set_read_timeout(Some(WAIT_BOUND)).unwrap();
        }
        ws
    }

    /// The invocation's status once `done` says so.
    fn wait_invocation(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_until(what, || {
            let status = self.get(&format!("/v1/invocations/{id}"));
            done(&status).then_some(status)
        })
    }

    /// `scout attach ARGS` on a pseudo-terminal of its own.
    fn attach(&self, args: &[&str]) -> PtyRun {
        let mut command = CommandBuilder::new(env!("CARGO_BIN_EXE_scout"));
        command.arg("--home");
        command.arg(self.sandbox.home());
        command.arg("attach");
        for arg in args {
            command.arg(arg);
        }
        command.cwd(self.sandbox.path());
        command.env("HOME", self.sandbox.path());
        command.env("SCOUT_DISCOVERY", "none");
        command.env("TERM", "xterm-256color");
        command.env_remove("SCOUT_HOME");
        command.env_remove("RUST_LOG");
        PtyRun::spawn(command)
    }
}

/// A program on a pseudo-terminal, its output collected by a thread.
struct PtyRun {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    master: Box<dyn MasterPty + Send>,
    keys: Box<dyn Write + Send>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl PtyRun {
    fn spawn(command: CommandBuilder) -> PtyRun {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: 30,
                cols: 100,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let child = pair.slave.spawn_command(command).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let keys = pair.master.take_writer().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n_read) = reader.read(&mut buf) {
                if n_read == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n_read]);
            }
        });
        PtyRun {
            child,
            master: pair.master,
            keys,
            output,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until the output contains `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT_BOUND;
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {needle:?} in {text:?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.keys.write_all(keys).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits (bounded) for the program to exit; its exit code.
    fn wait_exit(&mut self) -> u32 {
        let deadline = Instant::now() + WAIT_BOUND;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.exit_code();
            }
            assert!(
                Instant::now() < deadline,
                "did not exit; output: {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the terminal is in its ordinary, cooked mode (line editing
    /// and echo on).
    fn is_cooked(&self) -> bool {
        let termios = self.master.get_termios().expect("termios");
        termios
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO)
    }
}

impl Drop for PtyRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Reads terminal frames until the text seen contains every needle, in
/// order; returns the text.
fn read_until_all(ws: &mut Ws, needles: &[&str]) -> String {
    let deadline = Instant::now() + WAIT_BOUND;
    let mut seen = String::new();
    loop {
        let mut from = 0;
        let all = needles
            .iter()
            .all(|needle| match seen[from..].find(needle) {
                Some(idx) => {
                    from += idx + needle.len();
                    true
                }
                None => false,
            });
        if all {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {needles:?} in {seen:?}"
        );
        match ws.read().expect("a frame") {
            Message::Text(text) => seen.push_str(&text),
            Message::Binary(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            _ => {}
        }
    }
}

#[test]
fn a_routed_turn_renders_live_on_the_agents_terminal() {
    let fixture = Fixture::start();
    // The first turn starts the agent's session.
    assert_eq!(fixture.send_and_wait("hello", None), "you said: hello");
    let session = fixture.session();
    let id = session["id"].as_str().unwrap();
    let mut ws = fixture.terminal(id);

    let submitted = fixture.send("slow 30", None);
    let seen = read_until_all(
        &mut ws,
        &[
            "── turn",
            "▶ invocation",
            "from node laptop",
            "slow 30",
            "⚙",
            "chunk 1",
            "chunk 30",
            "✔ completed",
        ],
    );
    let invocation = submitted["invocation_id"].as_str().unwrap();
    assert!(
        seen.contains(&format!("▶ invocation {invocation} · from node laptop")),
        "{seen:?}"
    );
    fixture.wait_invocation(invocation, "the turn to complete", |status| {
        status["delivery"]["state"] == "completed"
    });

    // A failure shows its code.
    fixture.send("fail", None);
    let seen = read_until_all(&mut ws, &["▶ invocation", "fail", "✘ failed HARNESS_ERROR"]);
    assert!(seen.contains("the model refused"), "{seen:?}");
}

#[test]
fn attach_follow_shows_the_transcript_and_detaches_on_its_key() {
    let fixture = Fixture::start();
    assert_eq!(fixture.send_and_wait("hello", None), "you said: hello");

    let mut attach = fixture.attach(&["@fabric", "--follow"]);
    attach.wait_for("watching, keys are not sent; detach with Ctrl-]");
    attach.wait_for("Welcome to Claude Code");
    fixture.send("slow 10", None);
    let text = attach.wait_for("✔ completed");
    assert!(text.contains("chunk 10"), "{text:?}");
    assert!(text.contains("slow 10"), "{text:?}");

    attach.type_keys(&[DETACH_KEY]);
    assert_eq!(attach.wait_exit(), 0, "{:?}", attach.text());
    assert!(attach.text().contains("detached from @fabric"));
    assert!(attach.is_cooked(), "the terminal is restored");
}

#[test]
fn attach_says_when_the_agent_has_no_session_yet() {
    let fixture = Fixture::start();
    let run = fixture.sandbox.run(&["attach", "@fabric"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("AGENT_NOT_RUNNING"), "{}", run.stderr);
    assert!(
        run.stderr.contains("scout send @fabric@laptop#main"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_taken_conversation_holds_routed_turns_until_it_is_released() {
    let fixture = Fixture::start();
    let first = fixture.send("session?", None);
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    let status = fixture.wait_invocation(
        first["invocation_id"].as_str().unwrap(),
        "the first turn to complete",
        |status| status["delivery"]["state"] == "completed",
    );
    let answer = status["delivery"]["result"].as_str().unwrap().to_owned();
    let cli_session = answer.strip_prefix("session ").expect("a session id");

    let mut attach = fixture.attach(&["@fabric", "--take", "--conversation", &conversation]);
    attach.wait_for(&format!("on CLI session {cli_session}"));
    attach.wait_for("attached to");
    // The interactive CLI runs resumed on the conversation's CLI session.
    let held = wait_until("the CLI to be resumed", || {
        let session = fixture.session();
        (session["held"]["cliSession"] == cli_session).then_some(session)
    });
    let command: Vec<&str> = held["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    assert_eq!(command[command.len() - 2..], ["--resume", cli_session]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", held["pid"])).unwrap();
    let received = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        received.contains(&format!("--resume {cli_session}")),
        "{received}"
    );
    // The person's keys reach it.
    attach.wait_for("? for shortcuts");
    attach.type_keys(b"typed by a person\r");
    attach.wait_for("you said: typed by a person");

    // A routed turn waits for the person, and its flight says so.
    let second = fixture.send("session?", Some(&conversation));
    let second_id = second["invocation_id"].as_str().unwrap();
    let waiting = fixture.wait_invocation(second_id, "the turn to wait", |status| {
        status["flight"]["output"]
            .as_str()
            .is_some_and(|output| output.contains("[waiting:"))
    });
    assert_ne!(waiting["delivery"]["state"], "completed", "{waiting}");

    attach.type_keys(&[DETACH_KEY]);
    assert_eq!(attach.wait_exit(), 0, "{:?}", attach.text());
    assert!(
        attach.text().contains("released @fabric"),
        "{:?}",
        attach.text()
    );
    assert!(attach.is_cooked(), "the terminal is restored");

    // Released: the turn runs, continuing the same CLI session, and the
    // interactive CLI runs fresh again.
    let done = fixture.wait_invocation(second_id, "the waiting turn to complete", |status| {
        status["delivery"]["state"] == "completed"
    });
    assert_eq!(
        done["delivery"]["result"].as_str().unwrap(),
        format!("session {cli_session}")
    );
    let session = fixture.session();
    assert!(session["held"].is_null(), "{session}");
    assert!(
        !session["command"].to_string().contains("--resume"),
        "{session}"
    );
}

#[test]
fn attach_to_an_agent_of_another_broker_names_its_owner() {
    let mut alpha = common::Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = common::Node::setup("beta", &[]);
    beta.add_bash_agent("worker");
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    beta.start();
    alpha.wait_for_instance("@worker@beta#main");
    let run = alpha.run(&["attach", "@worker"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("AGENT_REMOTE"), "{}", run.stderr);
    assert!(
        run.stderr.contains("owned by node `beta`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("attach @worker@beta#main"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_watcher_who_attaches_mid_turn_gets_the_transcript_so_far() {
    let fixture = Fixture::start();
    assert_eq!(fixture.send_and_wait("hello", None), "you said: hello");
    let session = fixture.session();
    let id = session["id"].as_str().unwrap();
    let mut first = fixture.terminal(id);

    // `hang` never answers: the turn runs until it is cancelled.
    let submitted = fixture.send("hang", None);
    read_until_all(&mut first, &["▶ invocation", "│\u{1b}[0m hang"]);
    let mut late = fixture.terminal(id);
    let seen = read_until_all(&mut late, &["\"type\":\"connected\"", "── turn", "hang"]);
    assert!(!seen.contains("Welcome to Claude Code"), "{seen:?}");

    let invocation = submitted["invocation_id"].as_str().unwrap();
    let cancel = ureq::post(&format!(
        "{}/v1/invocations/{invocation}/cancel",
        fixture.broker.http_base()
    ))
    .set(
        "Authorization",
        &format!("Bearer {}", fixture.sandbox.token()),
    )
    .send_json(serde_json::json!({}));
    assert!(cancel.is_ok(), "{cancel:?}");
    fixture.wait_invocation(invocation, "the turn to be cancelled", |status| {
        status["delivery"]["state"] == "cancelled"
    });
}
