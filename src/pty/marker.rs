//! Processes a session started that left its process group and session.
//!
//! Stopping a session signals the program's process group and terminal
//! session ([`super::process::signal_tree`]). A program can still start
//! helpers that call `setsid` and outlive it: Codex 0.171's TUI starts
//! `codex app-server --managed-daemon` and a pid-update loop that way, and
//! they are re-parented to init once the TUI is gone, so neither the group,
//! the session nor the parent links find them by then.
//!
//! What they keep is their environment. Every process a session starts
//! inherits [`SESSION_MARKER_VAR`] with a value unique to that session, so
//! the session can find exactly the processes it started, wherever they
//! went, and never another session's or another user's: `/proc/PID/environ`
//! of another user's process is not readable, and another session's
//! processes carry another value. A program that clears its children's
//! environment escapes this; none of the agent CLIs does.

use std::io::Read;
use std::time::Duration;

use nix::sys::signal::Signal;

/// The variable whose value marks a session's processes.
pub const SESSION_MARKER_VAR: &str = "SCOUT_AGENT_SESSION";

/// Bytes of a process's environment read. The kernel limits arguments and
/// environment together to a quarter of the stack limit, 2 MiB with the
/// usual 8 MiB stack, so this reads every environment a default system
/// allows, and bounds the work for one that allows more.
const ENVIRON_BYTES_MAX: u64 = 2 * 1024 * 1024;

/// How often to look whether signalled processes are gone.
const POLL: Duration = Duration::from_millis(20);

/// How long SIGKILLed processes may take to disappear before giving up
/// waiting (they cannot refuse; this only guards against a stuck kernel).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Live processes (not zombies) whose environment holds
/// `SESSION_MARKER_VAR=marker`, from `/proc` (none where there is no
/// `/proc`).
pub fn marked_processes(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = format!("{SESSION_MARKER_VAR}={marker}");
    let own = i32::try_from(std::process::id()).unwrap_or(0);
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            super::process::read_stat(*pid).is_some_and(|stat| !matches!(stat.state, 'Z' | 'X'))
        })
        .filter(|pid| environ_has(*pid, &needle))
        .collect()
}

fn environ_has(pid: i32, needle: &str) -> bool {
    let Ok(file) = std::fs::File::open(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut environ = Vec::new();
    if file
        .take(ENVIRON_BYTES_MAX)
        .read_to_end(&mut environ)
        .is_err()
    {
        return false;
    }
    environ
        .split(|byte| *byte == 0)
        .any(|entry| entry == needle.as_bytes())
}

/// Stops every process marked with `marker`: SIGTERM, then SIGKILL to
/// whatever is left after `grace`. Returns once none is left or the kill
/// wait ran out.
pub async fn stop_marked(marker: &str, grace: Duration) {
    if signal_all(marker, Signal::SIGTERM) == 0 {
        return;
    }
    if wait_none(marker, grace).await {
        return;
    }
    signal_all(marker, Signal::SIGKILL);
    wait_none(marker, KILL_WAIT).await;
}

fn signal_all(marker: &str, signal: Signal) -> usize {
    let pids = marked_processes(marker);
    for pid in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal);
    }
    if !pids.is_empty() {
        tracing::debug!(?pids, %signal, "stopping processes that left the agent's session");
    }
    pids.len()
}

async fn wait_none(marker: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if marked_processes(marker).is_empty() {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}
