//! Helpers shared by the end-to-end tests: run the real `scout` binary in a
//! temporary home, start brokers and wait for them with a bound.

#![allow(dead_code)]

pub mod agent_clis;
pub mod chromium;
pub mod model;
pub mod raw_member;
pub mod runtime_api;
pub mod store;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any wait for a broker may take before the test fails: far above
/// what a healthy run needs, so only a real hang trips it.
pub const WAIT_BOUND: Duration = Duration::from_secs(30);

/// A temporary machine: a home directory for one broker and a working dir.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `scout` command with this sandbox's home, run from the sandbox, with
    /// HOME pointing into it so nothing of the real user leaks in.
    pub fn scout(&self) -> Command {
        self.scout_at(Path::new(env!("CARGO_BIN_EXE_scout")))
    }

    /// [`Sandbox::scout`] running the binary at `program` (an installed
    /// copy, for upgrade tests).
    pub fn scout_at(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .arg("--home")
            .arg(self.home())
            .current_dir(self.path())
            .env("HOME", self.path())
            .env_remove("SCOUT_HOME")
            .env_remove("PORT")
            .env_remove("RUST_LOG")
            // No multicast or tailnet lookups from test brokers: their
            // traffic stays on loopback. Discovery tests opt back in.
            .env("SCOUT_DISCOVERY", "none")
            // No OS service from test setups: they run `scout up` themselves.
            // The service tests opt back in.
            .env("SCOUT_NO_SERVICE", "true")
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.scout().args(args).output().expect("run scout");
        Run::from(output)
    }

    /// `scout setup` with a free HTTP port and a fixed node name.
    pub fn setup(&self, node_name: &str) -> Run {
        let run = self.run(&[
            "setup",
            "--node-name",
            node_name,
            "--http-port",
            "0",
            "--mesh-port",
            "0",
        ]);
        assert_eq!(run.code, 0, "setup failed: {}", run.stderr);
        run
    }

    /// Replaces this sandbox's paths and node ids so output can be snapshotted.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.replace(&self.home().display().to_string(), "[HOME]");
        out = out.replace(&self.path().display().to_string(), "[SANDBOX]");
        redact_hex(&out)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.home().join("token"))
            .expect("token")
            .trim()
            .to_owned()
    }
}

/// Replaces 32-character lower-case hex runs (node ids) with `[NODE_ID]`.
pub fn redact_hex(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut idx = 0;
    while idx < bytes.len() {
        let run = bytes[idx..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .count();
        if run == 32 {
            out.push_str("[NODE_ID]");
            idx += run;
        } else {
            let ch = text[idx..].chars().next().expect("char");
            out.push(ch);
            idx += ch.len_utf8();
        }
    }
    out
}

/// The outcome of one finished command.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.stdout))
    }
}

/// A broker process started with `scout up --json`.
pub struct BrokerProcess {
    pub child: Child,
    pub ready: serde_json::Value,
    pub stderr_lines: mpsc::Receiver<String>,
    log: std::sync::Mutex<Vec<String>>,
}

impl BrokerProcess {
    /// Starts `scout up` and waits (bounded) for its ready line.
    pub fn start(sandbox: &Sandbox) -> BrokerProcess {
        BrokerProcess::start_command(sandbox.scout())
    }

    /// Starts `scout --json up` from a prepared command (extra env, flags).
    pub fn start_command(mut command: Command) -> BrokerProcess {
        command
            .args(["--json", "up"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_fresh(&mut command).expect("spawn scout up");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                text.push_str(&line);
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                    let _ = ready_tx.send(value);
                    text.clear();
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = match ready_rx.recv_timeout(WAIT_BOUND) {
            Ok(ready) => ready,
            Err(_) => {
                let _ = child.kill();
                let log: Vec<String> = err_rx.try_iter().collect();
                panic!(
                    "broker never printed its ready line; stderr:\n{}",
                    log.join("\n")
                );
            }
        };
        BrokerProcess {
            child,
            ready,
            stderr_lines: err_rx,
            log: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The first stderr line so far that contains `needle`.
    pub fn stderr_line_matching(&self, needle: &str) -> Option<String> {
        let mut log = self.log.lock().expect("log");
        log.extend(self.stderr_lines.try_iter());
        log.iter().find(|line| line.contains(needle)).cloned()
    }

    pub fn http_base(&self) -> String {
        format!(
            "http://{}",
            self.ready["http_addr"].as_str().expect("http_addr")
        )
    }

    /// Sends a signal and waits (bounded) for the exit code.
    pub fn stop_with(&mut self, signal: i32) -> i32 {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + WAIT_BOUND;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "broker did not stop after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Collects stderr lines seen so far (after the process ended, all of them).
    pub fn stderr(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut log = self.log.lock().expect("log");
        while let Ok(line) = self
            .stderr_lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            log.push(line);
        }
        log.join("\n")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it returns `Some`, failing after `bound` with
/// `context()`: for waits longer than [`WAIT_BOUND`], such as a real CLI's
/// turn.
pub fn wait_long<T>(
    what: &str,
    bound: Duration,
    context: impl Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `probe` until it returns `Some`, failing the test after `WAIT_BOUND`.
/// For state owned by another process, polling is the only observation there is.
pub fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_BOUND;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A sandbox with its running broker.
pub struct Node {
    pub sandbox: Sandbox,
    pub broker: Option<BrokerProcess>,
    pub name: String,
}

impl Node {
    /// Sets up a home named `name` (free ports) with extra setup flags.
    pub fn setup(name: &str, extra: &[&str]) -> Node {
        let sandbox = Sandbox::new();
        let mut args = vec![
            "setup",
            "--node-name",
            name,
            "--http-port",
            "0",
            "--mesh-port",
            "0",
        ];
        args.extend_from_slice(extra);
        let run = sandbox.run(&args);
        assert_eq!(run.code, 0, "setup {name}: {}", run.stderr);
        Node {
            sandbox,
            broker: None,
            name: name.to_owned(),
        }
    }

    pub fn start(&mut self) -> &mut Node {
        self.broker = Some(BrokerProcess::start(&self.sandbox));
        self
    }

    pub fn broker(&self) -> &BrokerProcess {
        self.broker.as_ref().expect("broker running")
    }

    /// The first announced mesh address (loopback first).
    pub fn mesh_addr(&self) -> String {
        self.broker().ready["mesh_addresses"][0]
            .as_str()
            .expect("mesh address")
            .to_owned()
    }

    pub fn node_id(&self) -> String {
        self.broker().ready["node_id"]
            .as_str()
            .expect("node id")
            .to_owned()
    }

    /// This node's agent sessions as (id, pid), sorted.
    pub fn sessions(&self) -> Vec<(String, u64)> {
        let listed = self.run(&["--json", "agents", "list"]).json();
        let mut sessions: Vec<(String, u64)> = listed["sessions"]
            .as_array()
            .map(|sessions| {
                sessions
                    .iter()
                    .filter_map(|s| Some((s["id"].as_str()?.to_owned(), s["pid"].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        sessions.sort();
        sessions
    }

    /// Asserts that no restart of this node failed invocation `id` as
    /// interrupted (its flight was carried on).
    pub fn assert_not_reconciled(&self, id: &str) {
        let audit = self.run(&["--json", "audit", "--action", "reconcile_flight"]);
        assert!(
            !audit.stdout.contains(id),
            "the flight was reconciled as interrupted: {}",
            audit.stdout
        );
    }

    /// Waits until no held turn is left in this node's home (each goes
    /// once its flight's end is recorded).
    pub fn wait_for_no_held_turns(&self) {
        let turns = self.sandbox.home().join("turns");
        wait_until("the held turns to go", || {
            std::fs::read_dir(&turns)
                .map_or(true, |mut entries| entries.next().is_none())
                .then_some(())
        });
    }

    /// `GET path` on this node's API with its token.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let url = format!("{}{path}", self.broker().http_base());
        ureq::get(&url)
            .set("Authorization", &format!("Bearer {}", self.sandbox.token()))
            .call()
            .unwrap_or_else(|err| panic!("GET {url}: {err}"))
            .into_json()
            .expect("json")
    }

    /// `method path` on this node's API with `token` and a JSON body (none
    /// when `None`): the status and the JSON answer (`Null` when it is not
    /// JSON), errors included.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.broker().http_base());
        let request = ureq::request(method, &url).set("Authorization", &format!("Bearer {token}"));
        let answer = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match answer {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(err) => panic!("{method} {url}: {err}"),
        };
        let status = response.status();
        (
            status,
            response.into_json().unwrap_or(serde_json::Value::Null),
        )
    }

    /// Runs `scout` against this node's home.
    pub fn run(&self, args: &[&str]) -> Run {
        self.sandbox.run(args)
    }

    /// Adds an agent `name` running `bash` in the sandbox, workspace
    /// `main`, through the CLI.
    pub fn add_bash_agent(&self, name: &str) {
        self.add_bash_agent_in(name, self.sandbox.path());
    }

    /// Adds an agent `name` running `bash` in `cwd`, workspace `main`,
    /// through the CLI.
    pub fn add_bash_agent_in(&self, name: &str, cwd: &Path) {
        let cwd = cwd.display().to_string();
        let add = self.run(&[
            "agents",
            "add",
            name,
            "--cwd",
            &cwd,
            "--workspace",
            "main",
            "--command",
            "bash",
        ]);
        assert_eq!(add.code, 0, "{}", add.stderr);
    }

    /// Adds agent `name` running `command` in the sandbox, workspace
    /// `main`, whose turns end at its `ready>` prompt, through the CLI.
    pub fn add_prompted_agent(&self, name: &str, command: &[&str]) {
        let cwd = self.sandbox.path().display().to_string();
        let mut args = vec![
            "agents",
            "add",
            name,
            "--cwd",
            &cwd,
            "--workspace",
            "main",
            "--prompt-pattern",
            "ready>",
            "--command",
        ];
        args.extend_from_slice(command);
        let add = self.run(&args);
        assert_eq!(add.code, 0, "{}", add.stderr);
    }

    /// A fresh invite code from this (running) node.
    pub fn invite(&self) -> String {
        let run = self.run(&["--json", "mesh", "invite"]);
        assert_eq!(run.code, 0, "invite: {}", run.stderr);
        run.json()["code"].as_str().expect("code").to_owned()
    }

    /// Names of peers in a given state.
    pub fn peers_in(&self, state: &str) -> Vec<String> {
        let peers = self.get("/v1/peers");
        let mut names: Vec<String> = peers["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .filter(|peer| peer["state"] == state)
            .map(|peer| peer["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        names.sort();
        names
    }

    /// Waits until this node's registry holds the instance `name`.
    pub fn wait_for_instance(&self, name: &str) {
        wait_until(&format!("{} to see {name}", self.name), || {
            self.instances().contains(&name.to_owned()).then_some(())
        });
    }

    /// The approval pending on this node whose summary contains `needle`.
    pub fn pending_approval(&self, needle: &str) -> Option<serde_json::Value> {
        self.get("/v1/approvals?state=pending")["approvals"]
            .as_array()?
            .iter()
            .find(|approval| {
                approval["summary"]
                    .as_str()
                    .is_some_and(|summary| summary.contains(needle))
            })
            .cloned()
    }

    /// Instance names this node knows.
    pub fn instances(&self) -> Vec<String> {
        let agents = self.get("/v1/agents");
        let mut names: Vec<String> = agents["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|instance| instance["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        names.sort();
        names
    }

    /// The registry's (record count, digest).
    pub fn digest(&self) -> (u64, String) {
        let mesh = self.get("/v1/mesh");
        (
            mesh["registry_records"].as_u64().expect("records"),
            mesh["registry_digest"].as_str().expect("digest").to_owned(),
        )
    }
}

/// Alpha founds a mesh; beta joins with alpha's invite and owns
/// `@shell@beta#main`, a bash agent. Both running, alpha seeing beta's
/// agent.
pub fn inviter_and_shell_owner() -> (Node, Node) {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = Node::setup("beta", &[]);
    beta.add_bash_agent("shell");
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "beta join: {}", joined.stderr);
    beta.start();
    alpha.wait_for_instance("@shell@beta#main");
    (alpha, beta)
}

/// [`inviter_and_shell_owner`], with beta's terminal session started by a
/// first routed turn from alpha.
pub fn viewer_and_shell_owner() -> (Node, Node) {
    let (alpha, beta) = inviter_and_shell_owner();
    let marker = beta.sandbox.path().join("started");
    let sent = alpha.run(&[
        "send",
        "@shell@beta",
        &format!("touch {}", marker.display()),
    ]);
    assert_eq!(sent.code, 0, "send: {}", sent.stderr);
    wait_until("beta's bash session to run the first turn", || {
        marker.exists().then_some(())
    });
    (alpha, beta)
}

/// Spawns `command`, trying again for a while when its program is "busy":
/// a binary a test has just copied stays open for writing in any process
/// another test thread forked meanwhile, until that child's exec.
pub fn spawn_fresh(command: &mut Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}
