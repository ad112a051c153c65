//! Preflight of a harness: is its CLI installed (`CLI_NOT_FOUND`), which
//! version, and is it logged in (`AUTH_REQUIRED`). `scout doctor` reports
//! this for every CLI; spawning an agent checks the program first.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scout_mesh::lifecycle::Harness;
use serde::Serialize;

use super::{Adapter, AgentEnv, AuthStatus};

/// How long `<cli> --version` may take. The agent CLIs are Node programs
/// that start in well under a second; a hung one must not hang doctor.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// How often to check whether `--version` has finished.
const VERSION_POLL: Duration = Duration::from_millis(10);

/// Bytes of `--version` output read; the first line is all that is kept.
const VERSION_BYTES_MAX: u64 = 4096;

/// What preflight found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preflight {
    /// The harness.
    pub harness: Harness,
    /// The program as configured.
    pub program: String,
    /// Where it was found; `None` means `CLI_NOT_FOUND`.
    pub path: Option<PathBuf>,
    /// The first line `--version` printed, when it answered in time.
    pub version: Option<String>,
    /// Whether it is logged in.
    pub auth: AuthStatus,
}

/// Runs preflight for `adapter` as an agent with `env` would see it:
/// blocking (it may run `--version`), so call it off the async runtime.
pub fn preflight(adapter: &dyn Adapter, env: &AgentEnv) -> Preflight {
    let path = find_program(adapter.program(), env.path().as_deref());
    let version = match (&path, adapter.harness()) {
        // A generic command's `--version` could do anything; do not run it.
        (Some(path), harness) if harness != Harness::Command => version_of(path),
        _ => None,
    };
    Preflight {
        harness: adapter.harness(),
        program: adapter.program().to_owned(),
        auth: if path.is_some() {
            adapter.auth_status(env)
        } else {
            AuthStatus::Unknown
        },
        path,
        version,
    }
}

/// Finds a program the way a shell would: a name with a `/` as is (relative
/// to the current directory), otherwise the first executable file of that
/// name on `path_var` (or on the broker's PATH).
pub fn find_program(program: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    let from_env = std::env::var_os("PATH");
    let path_var = path_var.or(from_env.as_deref())?;
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The first line of `<program> --version`, or `None` when it fails or
/// takes longer than [`VERSION_TIMEOUT`].
fn version_of(program: &Path) -> Option<String> {
    let mut child = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(VERSION_POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    if !status.success() {
        return None;
    }
    let mut out = String::new();
    child
        .stdout
        .take()?
        .take(VERSION_BYTES_MAX)
        .read_to_string(&mut out)
        .ok()?;
    out.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_owned)
}
