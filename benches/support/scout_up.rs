//! Starts a real `scout up` (the release binary the benchmark was built
//! with) in a temporary home and waits for its ready line; shared by the
//! benchmarks that measure a broker from the outside.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A started broker: its process and the JSON ready line it printed.
pub struct ScoutUp {
    /// The `scout up` process.
    pub child: Child,
    /// The ready line (`http_addr`, ...).
    pub ready: serde_json::Value,
}

/// A `scout` command on the home under `dir`.
fn scout(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_scout"));
    command
        .arg("--home")
        .arg(dir.join("home"))
        .args(args)
        .env("HOME", dir)
        .env_remove("PORT")
        .env("SCOUT_DISCOVERY", "none")
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::null());
    command
}

/// Sets up a home under `dir` (node `bench`, ports picked by the system,
/// no discovery) and starts its broker.
pub fn start(dir: &Path) -> ScoutUp {
    let scout = |args: &[&str]| scout(dir, args);
    let setup = scout(&[
        "setup",
        "--no-service",
        "--node-name",
        "bench",
        "--http-port",
        "0",
        "--mesh-port",
        "0",
    ])
    .output()
    .expect("scout setup");
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    up(dir)
}

/// Starts the broker of the home under `dir` (set up already) and waits
/// for its ready line.
pub fn up(dir: &Path) -> ScoutUp {
    let mut child = scout(dir, &["--json", "up"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scout up");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut text = String::new();
    let ready = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).expect("read") > 0,
            "scout up exited"
        );
        text.push_str(&line);
        if let Ok(value) = serde_json::from_str(&text) {
            break value;
        }
    };
    ScoutUp { child, ready }
}
