//! The broker as a user service. The systemd unit `scout service print`
//! renders is checked by the real `systemd-analyze verify`, the launchd
//! plist is parsed back by a real plist parser (Python's `plistlib`) and
//! checked key by key. The install/start/status/stop/uninstall flows run the
//! real `scout setup` and `scout service` against a stand-in for
//! `systemctl --user` (`tests/service_support/systemctl`), because systemd
//! cannot run as PID 1 here: it reads the unit file scout wrote, really
//! starts and stops the `scout up` it names, and answers `show -p` in
//! systemctl's format; the broker it starts is real and answers `/health`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, Sandbox, wait_until};

/// The workspace root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `systemd-analyze`, installed (Debian package `systemd`) under a file lock
/// on first use when missing, the way the agent CLIs are.
fn systemd_analyze() -> PathBuf {
    let lock = root().join("target/systemd-install.lock");
    let output = Command::new("flock")
        .arg(&lock)
        .args([
            "sh",
            "-c",
            "command -v systemd-analyze >/dev/null || { apt-get update -qq && \
             DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd; } >&2; \
             command -v systemd-analyze",
        ])
        .output()
        .expect("run flock");
    assert!(
        output.status.success(),
        "systemd-analyze is missing and installing the systemd package failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A sandbox whose `scout` finds the `systemctl --user` and `loginctl`
/// stand-ins first on PATH, with their state and the unit directory inside
/// the sandbox.
struct ServiceSandbox {
    sandbox: Sandbox,
}

impl ServiceSandbox {
    fn new() -> ServiceSandbox {
        let sandbox = Sandbox::new();
        std::fs::create_dir_all(sandbox.path().join("xdg")).unwrap();
        ServiceSandbox { sandbox }
    }

    fn command(&self) -> Command {
        let mut command = self.sandbox.scout();
        let support = root().join("tests/service_support");
        let path = format!(
            "{}:{}",
            support.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        command
            .env_remove("SCOUT_NO_SERVICE")
            .env_remove("SCOUT_SERVICE_PLATFORM")
            .env("PATH", path)
            .env("XDG_CONFIG_HOME", self.sandbox.path().join("xdg"))
            .env("SCOUT_FAKE_SYSTEMD_STATE", self.state_dir());
        command
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command().args(args).output().expect("run scout"))
    }

    fn run_with(&self, args: &[&str], env: (&str, &str)) -> Run {
        Run::from(
            self.command()
                .env(env.0, env.1)
                .args(args)
                .output()
                .expect("run scout"),
        )
    }

    fn state_dir(&self) -> PathBuf {
        self.sandbox.path().join("systemd-state")
    }

    fn unit_dir(&self) -> PathBuf {
        self.sandbox.path().join("xdg/systemd/user")
    }

    fn unit_files(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.unit_dir()) {
            Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn setup(&self) -> Run {
        let run = self.run(&[
            "setup",
            "--node-name",
            "svc",
            "--http-port",
            "0",
            "--mesh-port",
            "0",
        ]);
        assert_eq!(run.code, 0, "setup failed: {}{}", run.stdout, run.stderr);
        run
    }

    /// The broker's `/health`, when one answers at the address in its
    /// runtime file.
    fn health(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.sandbox.home().join("broker.json")).ok()?;
        let runtime: serde_json::Value = serde_json::from_str(&text).ok()?;
        let url = format!("http://{}/health", runtime["http_addr"].as_str()?);
        ureq::get(&url).call().ok()?.into_json().ok()
    }

    /// The PIDs the stand-in started, from its state files.
    fn started_pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(self.state_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let text = std::fs::read_to_string(&path).ok()?;
                let state: serde_json::Value = serde_json::from_str(&text).ok()?;
                state["pid"].as_i64().map(|pid| pid as i32)
            })
            .filter(|pid| *pid > 0)
            .collect()
    }
}

impl Drop for ServiceSandbox {
    /// A failed test must not leave its broker running.
    fn drop(&mut self) {
        for pid in self.started_pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn print(sandbox: &Sandbox, platform: &str) -> String {
    let run = sandbox.run(&["service", "print", "--platform", platform]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = systemd_analyze();
    let unit = print(&Sandbox::new(), "linux");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scout-test.service");
    std::fs::write(&path, &unit).unwrap();
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stderr}\n{unit}"
    );
    // Anything it says about our unit is a finding (other units on the
    // machine may draw warnings of their own).
    assert!(
        !stderr.contains("scout-test.service"),
        "systemd-analyze found problems:\n{stderr}\n{unit}"
    );
    for line in [
        "Restart=on-failure",
        "KillMode=process",
        "WantedBy=default.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line} in\n{unit}");
    }
    let exec = unit
        .lines()
        .find(|line| line.starts_with("ExecStart="))
        .expect("ExecStart");
    assert!(exec.contains(env!("CARGO_BIN_EXE_scout")), "{exec}");
    assert!(exec.ends_with(" up"), "{exec}");
}

#[test]
fn the_launchd_plist_parses_and_has_each_key() {
    let sandbox = Sandbox::new();
    let text = print(&sandbox, "macos");
    let path = sandbox.path().join("agent.plist");
    std::fs::write(&path, &text).unwrap();
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(&path)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "plistlib rejected the plist:\n{}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let plist: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let home = sandbox.home().display().to_string();
    let label = plist["Label"].as_str().expect("Label");
    assert!(label.starts_with("dev.scout.broker."), "{label}");
    assert_eq!(
        plist["ProgramArguments"],
        serde_json::json!([env!("CARGO_BIN_EXE_scout"), "--home", home, "up"])
    );
    assert_eq!(plist["RunAtLoad"], true);
    assert_eq!(plist["KeepAlive"], true);
    assert_eq!(plist["AbandonProcessGroup"], true);
    assert_eq!(plist["WorkingDirectory"], home.as_str());
    assert!(plist["ThrottleInterval"].as_i64().unwrap() > 0);
    for key in ["StandardOutPath", "StandardErrorPath"] {
        let log = plist[key].as_str().expect(key);
        assert!(log.starts_with(&format!("{home}/logs/")), "{key}: {log}");
    }
    assert!(plist["EnvironmentVariables"]["PATH"].is_string());
    if let Ok(output) = Command::new("plutil").arg("-lint").arg(&path).output() {
        assert!(output.status.success(), "plutil -lint rejected the plist");
    }
}

#[test]
fn setup_installs_and_starts_the_service_and_uninstall_removes_it() {
    let sandbox = ServiceSandbox::new();
    let first = sandbox.setup();
    assert!(
        first.stdout.contains("service   created"),
        "{}",
        first.stdout
    );
    let units = sandbox.unit_files();
    assert_eq!(units.len(), 1, "{units:?}");
    let health = wait_until("the service's broker to answer /health", || {
        sandbox.health()
    });
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["node"], "svc", "{health}");

    let second = sandbox.setup();
    assert!(
        second.stdout.contains("nothing changed"),
        "{}",
        second.stdout
    );
    assert!(
        second
            .stdout
            .contains("is installed and running; nothing changed"),
        "{}",
        second.stdout
    );
    assert_eq!(sandbox.unit_files(), units);

    let status = sandbox.run(&["service", "status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status.stdout.contains("state     active"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("pid       "), "{}", status.stdout);
    assert!(
        status.stdout.contains("answers /health"),
        "{}",
        status.stdout
    );

    let logs = sandbox.run(&["service", "logs"]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(!logs.stdout.trim().is_empty(), "no log lines");

    let doctor = sandbox.run(&["doctor", "--json"]);
    let checks = doctor.json()["checks"].clone();
    let check = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {checks}"))
            .clone()
    };
    assert_eq!(check("service")["status"], "ok");
    assert_eq!(check("service-active")["status"], "ok");
    assert_eq!(check("service-last-exit")["status"], "ok");
    assert_eq!(check("service-restarts")["status"], "ok");
    let linger = check("service-linger");
    assert_eq!(linger["status"], "warn");
    assert!(
        linger["hint"]
            .as_str()
            .unwrap()
            .contains("loginctl enable-linger"),
        "{linger}"
    );

    // A broker that keeps failing: the last exit and the recent restarts
    // are reported, each with its fix.
    let failing = Run::from(
        sandbox
            .command()
            .env("SCOUT_FAKE_SYSTEMD_EXIT_STATUS", "1")
            .env("SCOUT_FAKE_SYSTEMD_RESTARTS", "3")
            .args(["doctor", "--json"])
            .output()
            .expect("run scout"),
    )
    .json();
    for name in ["service-last-exit", "service-restarts"] {
        let check = failing["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {failing}"));
        assert_eq!(check["status"], "warn", "{check}");
        assert!(
            check["hint"]
                .as_str()
                .unwrap()
                .contains("scout service logs"),
            "{check}"
        );
    }

    let stop = sandbox.run(&["service", "stop"]);
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    assert!(sandbox.health().is_none(), "the broker answers after stop");
    let doctor = sandbox.run(&["doctor", "--json"]);
    let stopped = doctor.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "service-active")
        .cloned()
        .expect("service-active");
    assert_eq!(stopped["status"], "fail", "{stopped}");
    assert!(
        stopped["hint"]
            .as_str()
            .unwrap()
            .contains("scout service start"),
        "{stopped}"
    );

    let start = sandbox.run(&["service", "start"]);
    assert_eq!(start.code, 0, "{}", start.stderr);
    wait_until("the restarted broker to answer /health", || {
        sandbox.health()
    });

    // `logs --follow` shows the lines of the broker that `restart` starts.
    let mut follow = sandbox
        .command()
        .args(["service", "logs", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run scout service logs --follow");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let restart = sandbox.run(&["service", "restart"]);
    assert_eq!(restart.code, 0, "{}", restart.stderr);
    let status = sandbox.run(&["--json", "service", "status"]).json();
    let pid = status["manager"]["pid"]
        .as_u64()
        .expect("pid after restart");
    let needle = format!("pid={pid}");
    let deadline = std::time::Instant::now() + common::WAIT_BOUND;
    loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or_else(|_| panic!("logs --follow never showed {needle}"));
        if line.contains(&needle) {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    wait_until("the restarted broker to answer /health", || {
        sandbox.health()
    });

    // A unit that runs another binary is reported with its fix.
    let unit = std::fs::read_to_string(&units[0]).unwrap();
    std::fs::write(
        &units[0],
        unit.replace(env!("CARGO_BIN_EXE_scout"), "/usr/local/bin/scout-old"),
    )
    .unwrap();
    let doctor = sandbox.run(&["doctor", "--json"]);
    let mismatch = doctor.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "service")
        .cloned()
        .expect("service");
    assert_eq!(mismatch["status"], "fail", "{mismatch}");
    assert!(
        mismatch["hint"]
            .as_str()
            .unwrap()
            .contains("scout service install"),
        "{mismatch}"
    );

    let removed = sandbox.run(&["service", "uninstall"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert!(removed.stdout.contains("removed"), "{}", removed.stdout);
    assert!(sandbox.unit_files().is_empty());
    assert!(
        sandbox.health().is_none(),
        "the broker answers after uninstall"
    );
    let again = sandbox.run(&["service", "uninstall"]);
    assert!(
        again.stdout.contains("nothing to remove"),
        "{}",
        again.stdout
    );
}

#[test]
fn setup_without_a_user_manager_installs_nothing_and_says_what_to_do() {
    let sandbox = ServiceSandbox::new();
    let run = sandbox.run_with(
        &[
            "setup",
            "--node-name",
            "svc",
            "--http-port",
            "0",
            "--mesh-port",
            "0",
        ],
        ("SCOUT_FAKE_SYSTEMD_NO_BUS", "1"),
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("not installed"), "{}", run.stdout);
    assert!(
        run.stdout.contains("Failed to connect to bus"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("loginctl enable-linger $USER"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("up` under your own supervisor"),
        "{}",
        run.stdout
    );
    assert!(
        sandbox.unit_files().is_empty(),
        "{:?}",
        sandbox.unit_files()
    );
    assert!(sandbox.started_pids().is_empty());

    let doctor = sandbox.run_with(&["doctor", "--json"], ("SCOUT_FAKE_SYSTEMD_NO_BUS", "1"));
    let service = doctor.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "service")
        .cloned()
        .expect("service");
    assert_eq!(service["status"], "warn", "{service}");
    assert!(
        service["hint"]
            .as_str()
            .unwrap()
            .contains("loginctl enable-linger"),
        "{service}"
    );
}

/// On a machine without a user manager (this CI's containers), the real
/// `systemctl --user` is asked and setup explains; where a user manager
/// answers, this test says so and leaves the user's services alone.
#[test]
fn setup_with_the_real_systemctl_explains_when_there_is_no_user_manager() {
    let probe = Command::new("systemctl")
        .args(["--user", "show-environment"])
        .output();
    if probe.as_ref().is_ok_and(|output| output.status.success()) {
        eprintln!("skipped: a real user manager answers here; the stand-in tests cover install");
        return;
    }
    let sandbox = Sandbox::new();
    let xdg = sandbox.path().join("xdg");
    let output = sandbox
        .scout()
        .env_remove("SCOUT_NO_SERVICE")
        .env_remove("SCOUT_SERVICE_PLATFORM")
        .env("XDG_CONFIG_HOME", &xdg)
        .args(["setup", "--http-port", "0", "--mesh-port", "0"])
        .output()
        .expect("run scout");
    let run = Run::from(output);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("service   not installed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("loginctl enable-linger $USER"),
        "{}",
        run.stdout
    );
    assert!(!xdg.join("systemd").exists(), "a unit directory was made");
}

/// Driven as macOS (the platform value the service code takes), doctor warns
/// that a launchd agent cannot reach the login keychain and says how to give
/// the agent its API key.
#[test]
fn doctor_on_macos_warns_about_the_keychain() {
    let sandbox = Sandbox::new();
    sandbox.setup("mac");
    let output = sandbox
        .scout()
        .env_remove("SCOUT_NO_SERVICE")
        .env("SCOUT_SERVICE_PLATFORM", "macos")
        .args(["doctor", "--json"])
        .output()
        .expect("run scout");
    let doctor = Run::from(output).json();
    let keychain = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "service-keychain")
        .cloned()
        .unwrap_or_else(|| panic!("no service-keychain check in {doctor}"));
    assert_eq!(keychain["status"], "warn", "{keychain}");
    let hint = keychain["hint"].as_str().unwrap();
    assert!(
        hint.contains("EnvironmentVariables.ANTHROPIC_API_KEY"),
        "{hint}"
    );
    assert!(
        hint.contains("Library/LaunchAgents/dev.scout.broker."),
        "{hint}"
    );
}
