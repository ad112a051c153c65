//! Agent sessions held by holder processes, end to end: the real `scout
//! up`, the test agent on a real terminal under a real `scout holder`, the
//! broker SIGKILLed and started again, the holder SIGKILLed, and the
//! holder's socket protocol spoken by hand.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::runtime_api::{Api, read_until};
use common::{BrokerProcess, Sandbox, WAIT_BOUND, wait_until};
use scout::holder::wire::{self, FrameKind};
use serde_json::{Value, json};

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace()
                .next()
                .map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

fn kill(pid: u64, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn an_interactive_session_survives_a_broker_restart() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let mut broker = BrokerProcess::start(&sandbox);
    let api = Api::new(&broker, &sandbox);
    let id = api.spawn_test_agent(sandbox.path());
    let agent = api.wait_status(&id, "ready");
    let pid = agent["pid"].as_u64().unwrap();
    let holder_pid = agent["holder"]["pid"].as_u64().expect("a holder pid");
    assert_ne!(pid, holder_pid);
    let (status, answer) = api.call(
        "POST",
        &format!("/agents/{id}/send"),
        Some(json!({"message": "before the restart"})),
    );
    assert_eq!(status, 200, "{answer}");

    // A crash: nothing of the broker runs its shutdown.
    broker.stop_with(9);
    drop(broker);
    assert!(alive(pid), "the agent died with the broker");
    assert!(alive(holder_pid), "the holder died with the broker");

    let broker = BrokerProcess::start(&sandbox);
    let api = Api::new(&broker, &sandbox);
    let again = api.wait_status(&id, "ready");
    assert_eq!(again["pid"].as_u64(), Some(pid));
    assert_eq!(again["holder"]["pid"].as_u64(), Some(holder_pid));
    assert!(again["holder"]["uptimeSecs"].is_u64(), "{again}");
    assert!(again["holder"]["startedAt"].is_string(), "{again}");
    let (_, list) = api.call("GET", "/agents", None);
    let listed = list
        .as_array()
        .or_else(|| list["agents"].as_array())
        .expect("a list")
        .iter()
        .find(|agent| agent["id"] == id.as_str())
        .cloned()
        .expect("the agent is listed");
    assert_eq!(listed["holder"]["pid"].as_u64(), Some(holder_pid));
    // `scout agents list` shows the session, its program and its holder.
    let listed = sandbox.run(&["--json", "agents", "list"]).json();
    let session = listed["sessions"]
        .as_array()
        .expect("sessions in the list")
        .iter()
        .find(|session| session["id"] == id.as_str())
        .cloned()
        .expect("the session is listed");
    assert_eq!(session["pid"].as_u64(), Some(pid), "{session}");
    assert_eq!(
        session["holder"]["pid"].as_u64(),
        Some(holder_pid),
        "{session}"
    );
    let table = sandbox.run(&["agents", "list"]);
    assert!(
        table.stdout.contains("HOLDER") && table.stdout.contains(&holder_pid.to_string()),
        "{}",
        table.stdout
    );

    // The terminal shows what happened before the restart.
    let mut terminal = api
        .ws(&format!("/ws/agents/{id}/terminal"), true)
        .expect("a terminal");
    read_until(&mut terminal, "you said: before the restart");
    // And it keeps working.
    let (status, answer) = api.call(
        "POST",
        &format!("/agents/{id}/send"),
        Some(json!({"message": "after the restart"})),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["response"]
            .as_str()
            .unwrap_or("")
            .contains("after the restart"),
        "{answer}"
    );
    read_until(&mut terminal, "you said: after the restart");

    // Stopping it ends the program and its holder.
    let (status, _) = api.call("DELETE", &format!("/agents/{id}"), None);
    assert_eq!(status, 200);
    wait_until("the holder to go", || (!alive(holder_pid)).then_some(()));
    assert!(!alive(pid));
}

#[test]
fn a_holder_killed_during_a_turn_fails_the_turn_as_holder_lost() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let broker = BrokerProcess::start(&sandbox);
    let api = Api::new(&broker, &sandbox);
    let id = api.spawn_test_agent(sandbox.path());
    let agent = api.wait_status(&id, "ready");
    let holder_pid = agent["holder"]["pid"].as_u64().expect("a holder pid");
    let turn = {
        let (api, id) = (api.clone(), id.clone());
        std::thread::spawn(move || {
            api.call(
                "POST",
                &format!("/agents/{id}/send"),
                Some(json!({"message": "slow 100000", "timeout": 120_000})),
            )
        })
    };
    let mut terminal = api
        .ws(&format!("/ws/agents/{id}/terminal"), true)
        .expect("a terminal");
    read_until(&mut terminal, "chunk 3");
    kill(holder_pid, "KILL");
    let (status, answer) = turn.join().expect("the turn");
    assert_ne!(status, 200, "{answer}");
    let text = answer.to_string();
    assert!(text.contains("holder lost"), "{text}");
    let lost = api.wait_status(&id, "error");
    assert!(lost["error"].to_string().contains("holder lost"), "{lost}");
}

/// A holder started by hand on `cat`, in an owner-only directory.
struct HandHolder {
    _dir: tempfile::TempDir,
    root: PathBuf,
    child: std::process::Child,
}

impl HandHolder {
    fn start() -> HandHolder {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("holders");
        scout::holder::ensure_root(&root).unwrap();
        let session = root.join("s1");
        std::fs::create_dir(&session).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&session, std::fs::Permissions::from_mode(0o700)).unwrap();
        let spec = json!({
            "argv": ["cat"], "cwd": dir.path(), "env": [], "env_remove": [],
            "rows": 24, "cols": 80,
        });
        std::fs::write(session.join("spec.json"), spec.to_string()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_scout"))
            .args(["holder", "--dir"])
            .arg(&session)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = [0u8; 6];
        child.stdout.take().unwrap().read_exact(&mut line).unwrap();
        assert_eq!(&line, b"ready ");
        HandHolder {
            _dir: dir,
            root: session,
            child,
        }
    }

    fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(self.root.join("holder.sock")).unwrap();
        stream.set_read_timeout(Some(WAIT_BOUND)).unwrap();
        stream
    }
}

impl Drop for HandHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn refusal_code(stream: &mut UnixStream) -> String {
    let frame = wire::read_frame(stream).expect("an answer");
    assert_eq!(frame.kind, FrameKind::Error);
    let error: Value = serde_json::from_slice(&frame.payload).unwrap();
    error["code"].as_str().unwrap().to_owned()
}

#[test]
fn bad_frames_and_wrong_versions_get_typed_errors_and_the_holder_keeps_serving() {
    let holder = HandHolder::start();

    let mut oversized = holder.connect();
    oversized.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert_eq!(refusal_code(&mut oversized), "HOLDER_FRAME_TOO_LARGE");

    let mut garbage = holder.connect();
    garbage.write_all(&[0, 0, 0, 3, 0xee, 1, 2]).unwrap();
    assert_eq!(refusal_code(&mut garbage), "HOLDER_BAD_FRAME");

    let mut not_json = holder.connect();
    wire::write_frame(&mut not_json, FrameKind::Hello, b"{nope").unwrap();
    assert_eq!(refusal_code(&mut not_json), "HOLDER_BAD_FRAME");

    let mut future = holder.connect();
    wire::write_json(&mut future, FrameKind::Hello, &json!({"version": 999})).unwrap();
    assert_eq!(refusal_code(&mut future), "HOLDER_VERSION_UNSUPPORTED");

    // The broker's own attach still works, and so does the program.
    let attached = scout::holder::attach(&holder.root).expect("attach");
    assert_eq!(attached.welcome.version, wire::HOLDER_PROTOCOL_VERSION);
    let mut stream = attached.stream;
    stream.set_read_timeout(Some(WAIT_BOUND)).unwrap();
    wire::write_frame(&mut stream, FrameKind::Input, b"still here\n").unwrap();
    let deadline = Instant::now() + WAIT_BOUND;
    let mut seen = String::new();
    while !seen.contains("still here") {
        assert!(Instant::now() < deadline, "no echo: {seen:?}");
        let frame = wire::read_frame(&mut stream).expect("output");
        if frame.kind == FrameKind::Output {
            seen.push_str(&String::from_utf8_lossy(&frame.payload));
        }
    }
    // An attach of a wrong version is refused by the broker's side too.
    let mut other = holder.connect();
    wire::write_json(&mut other, FrameKind::Hello, &json!({"version": 0})).unwrap();
    assert_eq!(refusal_code(&mut other), "HOLDER_VERSION_UNSUPPORTED");
}

/// An upgrade as a package manager and a service manager do it: the
/// broker is stopped gracefully (SIGTERM), a new binary is renamed over
/// the installed one, and the broker starts from it. The session's
/// program and holder are the same processes, and the session works.
#[test]
fn an_upgrade_replaces_the_binary_and_sessions_survive() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let bin = sandbox.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let installed = bin.join("scout");
    std::fs::copy(env!("CARGO_BIN_EXE_scout"), &installed).expect("install");
    let mut broker = BrokerProcess::start_command(sandbox.scout_at(&installed));
    let api = Api::new(&broker, &sandbox);
    let id = api.spawn_test_agent(sandbox.path());
    let agent = api.wait_status(&id, "ready");
    let pid = agent["pid"].as_u64().unwrap();
    let holder_pid = agent["holder"]["pid"].as_u64().expect("a holder pid");

    assert_eq!(broker.stop_with(15), 0, "a graceful stop exits 0");
    drop(broker);
    assert!(alive(pid), "a graceful stop ended the agent");
    let staged = bin.join("scout.new");
    std::fs::copy(env!("CARGO_BIN_EXE_scout"), &staged).expect("stage");
    std::fs::rename(&staged, &installed).expect("replace");

    let broker = BrokerProcess::start_command(sandbox.scout_at(&installed));
    let api = Api::new(&broker, &sandbox);
    let again = api.wait_status(&id, "ready");
    assert_eq!(again["pid"].as_u64(), Some(pid));
    assert_eq!(again["holder"]["pid"].as_u64(), Some(holder_pid));
    let (status, answer) = api.call(
        "POST",
        &format!("/agents/{id}/send"),
        Some(json!({"message": "after the upgrade"})),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["response"]
            .as_str()
            .unwrap_or("")
            .contains("after the upgrade"),
        "{answer}"
    );
}

/// A held structured turn is stopped by its holder, which kills the
/// program it started itself: a pid written into the turn's directory
/// (the program can write there) is never signalled. Here the `pid` file
/// names a bystander process; stopping the turn kills the program and
/// leaves the bystander alone.
#[test]
fn a_held_turn_is_stopped_by_its_holder_never_by_a_pid_from_its_directory() {
    use scout::holder::journal::{self, HeldState, TurnRecord};
    let root = tempfile::tempdir().expect("a temporary directory");
    let turns = root.path().join("turns");
    let dir = journal::create(
        &turns,
        &TurnRecord {
            invocation_id: Some("inv-forged-pid".to_owned()),
            session_id: "agent-1".to_owned(),
            turn_id: "agent-1-turn-1".to_owned(),
            conversation: None,
            prompt: "wait".to_owned(),
            program: "sleep".to_owned(),
            resumed: false,
            terminal: None,
        },
    )
    .expect("the turn's directory");
    let spec = json!({
        "argv": ["sleep", "1000"], "cwd": root.path(), "env": [], "env_remove": [],
        "rows": 0, "cols": 0, "journal": true,
    });
    std::fs::write(
        dir.join(scout::holder::SPEC_FILE),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    let mut holder = Command::new(env!("CARGO_BIN_EXE_scout-holder"))
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the holder starts");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    let program: u64 = ready
        .trim()
        .strip_prefix("ready ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("the holder is ready: {ready:?}"));
    let mut bystander = Command::new("sleep").arg("1000").spawn().unwrap();
    std::fs::remove_file(dir.join(journal::PID_FILE)).unwrap();
    std::fs::write(dir.join(journal::PID_FILE), bystander.id().to_string()).unwrap();

    journal::stop(&dir);
    let exit = wait_until(
        "the holder to record the program's end",
        || match journal::state(&dir) {
            HeldState::Exited(exit) => Some(exit),
            HeldState::Running => None,
            HeldState::Lost => panic!("the holder died without recording the end"),
        },
    );
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert!(!alive(program), "the program was stopped");
    assert!(alive(u64::from(bystander.id())), "the bystander lives");
    let _ = bystander.kill();
    let _ = bystander.wait();
    let _ = holder.wait();
}
