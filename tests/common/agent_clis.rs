//! The real agent CLIs (Claude Code, Codex, Gemini CLI) at the versions
//! pinned in `scripts/agent-clis/`, installed by
//! `scripts/install-agent-clis.sh` into `target/agent-clis`. A test that
//! needs one calls [`agent_cli`]: the first call installs them when they are
//! missing (one process at a time, under a file lock), and a failed install
//! fails the test with the installer's reason; nothing is skipped silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where the CLIs are installed (`SCOUT_AGENT_CLIS` overrides).
pub fn clis_dir() -> PathBuf {
    std::env::var_os("SCOUT_AGENT_CLIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/agent-clis"))
}

static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Installs the pinned CLIs when they are not there yet.
fn ensure_installed() -> Result<(), String> {
    INSTALLED
        .get_or_init(|| {
            let script = root().join("scripts/install-agent-clis.sh");
            let lock = root().join("target/agent-clis.lock");
            // `flock` serialises the test processes of one `cargo test` run:
            // the first installs, the others find the install done.
            let output = Command::new("flock")
                .arg(&lock)
                .arg(&script)
                .env("SCOUT_AGENT_CLIS", clis_dir())
                .output()
                .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "the agent CLIs are not installed and {} failed ({}):\n{}{}",
                    script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        })
        .clone()
}

/// The path of the installed `name` (`claude`, `codex` or `gemini`).
/// Panics with the installer's reason when they cannot be installed.
pub fn agent_cli(name: &str) -> PathBuf {
    if let Err(reason) = ensure_installed() {
        panic!("{reason}");
    }
    let path = clis_dir().join("node_modules/.bin").join(name);
    assert!(
        path.exists(),
        "{} is missing after the install",
        path.display()
    );
    path
}
