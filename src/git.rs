//! Running the real `git` for the broker (worktrees, checkpoints): never
//! through a shell, never asking anyone anything, bounded in time and in
//! the output kept.
//!
//! Git runs with no terminal prompt and ssh in batch mode, takes no
//! optional locks (a periodic `status` must not fight an agent's commit),
//! ignores a repository, work tree or index inherited from the broker's
//! environment (only the caller's `env` may set one), starts no fsmonitor
//! hook, and is killed at its deadline: a hook or a filter that hangs ends
//! the call with an error instead of holding the broker.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes of git's error message kept: its first lines say what failed.
const ERROR_BYTES_MAX: usize = 4096;

/// How often a running git is checked for having finished.
const POLL: Duration = Duration::from_millis(5);

/// What git printed, at most the bytes asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Its standard output, cut to the limit.
    pub stdout: Vec<u8>,
    /// Whether there was more than the limit.
    pub truncated: bool,
}

/// Runs `git -C dir args…` with `env` set, killed after `timeout`, keeping
/// at most `output_max` bytes of its output. `Err` is the message that
/// says why it failed (git's own, or that it could not run or finish).
pub fn run(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &OsStr)],
    timeout: Duration,
    output_max: usize,
) -> Result<Output, String> {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(dir)
        .args(["-c", "core.fsmonitor=false"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot run git: {err}"))?;
    // One byte past the limit tells a cut output from one that fit.
    let stdout = child
        .stdout
        .take()
        .map(|pipe| read_bounded(pipe, output_max.saturating_add(1)));
    let stderr = child
        .stderr
        .take()
        .map(|pipe| read_bounded(pipe, ERROR_BYTES_MAX));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "git {} did not finish within {} s",
                    args.first().copied().unwrap_or_default(),
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(err) => return Err(format!("cannot wait for git: {err}")),
        }
    };
    let mut stdout = stdout
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    let stderr = stderr
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    if !status.success() {
        return Err(String::from_utf8_lossy(&stderr).trim().to_owned());
    }
    let truncated = stdout.len() > output_max;
    stdout.truncate(output_max);
    Ok(Output { stdout, truncated })
}

/// Reads up to `max` bytes of a pipe on a thread, then drains the rest so
/// the child never blocks on a full pipe.
pub fn read_bounded(
    mut pipe: impl std::io::Read + Send + 'static,
    max: usize,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = max.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
        kept
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_bounded_and_failures_keep_gits_message() {
        let dir = tempfile::tempdir().unwrap();
        let init = run(dir.path(), &["init", "-q"], &[], Duration::from_secs(60), 0).unwrap();
        assert!(init.stdout.is_empty());
        let help = run(dir.path(), &["--version"], &[], Duration::from_secs(60), 4).unwrap();
        assert_eq!(help.stdout, b"git ");
        assert!(help.truncated);
        let err = run(
            dir.path(),
            &["rev-parse", "no-such-ref"],
            &[],
            Duration::from_secs(60),
            64,
        )
        .unwrap_err();
        assert!(err.contains("no-such-ref"), "{err}");
    }
}
