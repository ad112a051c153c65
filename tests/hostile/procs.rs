//! Running `scout` with a bound: a command that hangs is a failed case,
//! never a hung battery, and `scout up` that starts when it should have
//! refused is noticed from its ready line and stopped at once.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{Run, WAIT_BOUND};

/// A `scout` command for any home directory, with the same isolation as
/// the sandboxes of `tests/common`: HOME inside `cwd`, no discovery.
pub fn scout_for(home: &Path, cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_scout"));
    command
        .arg("--home")
        .arg(home)
        .current_dir(cwd)
        .env("HOME", cwd)
        .env_remove("SCOUT_HOME")
        .env_remove("PORT")
        .env_remove("RUST_LOG")
        .env("SCOUT_DISCOVERY", "none")
        .env("LOG_LEVEL", "info")
        .stdin(Stdio::null());
    command
}

/// Runs a command to its end, or kills it after `bound`.
pub fn run_bounded(mut command: Command, bound: Duration) -> Result<Run, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("spawn: {err}"))?;
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + bound;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                // Another process's exit can only be polled.
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "still running after {bound:?}; stderr: {}",
                    stderr.recv().unwrap_or_default()
                ));
            }
            Err(err) => return Err(format!("wait: {err}")),
        }
    };
    Ok(Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout.recv().unwrap_or_default(),
        stderr: stderr.recv().unwrap_or_default(),
    })
}

/// Runs `scout` in a sandbox with the common bound.
pub fn run_scout(home: &Path, cwd: &Path, args: &[&str]) -> Result<Run, String> {
    let mut command = scout_for(home, cwd);
    command.args(args);
    run_bounded(command, WAIT_BOUND)
}

fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// How `scout up` ended when it was expected to refuse.
pub enum UpOutcome {
    /// It exited by itself.
    Exited(Run),
    /// It printed its ready line (and was stopped).
    Started(String),
}

/// Starts `scout --json up` for `home` and reports whether it refused or
/// started; a broker that started is killed at once.
pub fn try_up(home: &Path, cwd: &Path) -> Result<UpOutcome, String> {
    let mut command = scout_for(home, cwd);
    let mut child = command
        .args(["--json", "up"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("spawn: {err}"))?;
    let stdout = child.stdout.take().expect("stdout");
    let stderr = drain(child.stderr.take().expect("stderr"));
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            if serde_json::from_str::<serde_json::Value>(&text).is_ok() {
                let _ = ready_tx.send(text.clone());
                text.clear();
            }
        }
    });
    let deadline = Instant::now() + WAIT_BOUND;
    loop {
        // Waiting on the ready line paces the poll of the exit status.
        if let Ok(ready) = ready_rx.recv_timeout(Duration::from_millis(20)) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(UpOutcome::Started(ready));
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                return Ok(UpOutcome::Exited(Run {
                    code: status.code().unwrap_or(-1),
                    stdout: String::new(),
                    stderr: stderr.recv().unwrap_or_default(),
                }));
            }
            Ok(None) if Instant::now() < deadline => {}
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`scout up` neither started nor exited within {WAIT_BOUND:?}"
                ));
            }
            Err(err) => return Err(format!("wait: {err}")),
        }
    }
}

/// Whether a finished command failed the way a hostile input should make
/// it fail: exit 1 or 2, an `error:` line, no panic.
pub fn refused_cleanly(run: &Run) -> Result<(), String> {
    if run.stderr.contains("panicked") {
        return Err(format!("panicked: {}", run.stderr));
    }
    if run.code != 1 && run.code != 2 {
        return Err(format!(
            "exit {} (expected 1 or 2); stdout: {} stderr: {}",
            run.code, run.stdout, run.stderr
        ));
    }
    if !run.stderr.contains("error:") {
        return Err(format!("no `error:` line; stderr: {}", run.stderr));
    }
    Ok(())
}
