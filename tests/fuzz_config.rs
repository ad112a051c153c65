//! Fuzz targets for the loaders of the files a broker reads at start and
//! on every change: `settings.json`, `relay-agents.json`, a repository's
//! `.openscout/project.json` and `mesh.json`. Whatever a file holds, the
//! loader answers with a value or a `ConfigError` with its stable code,
//! never a panic.
//!
//! Inputs come from the mesh crate's fuzz support: valid documents whose
//! values are replaced by hostile ones (wrong types, huge numbers, deep
//! nesting, long strings, control characters), byte-level mutations of
//! their text, and random bytes. Each case is written to a real file and
//! read through the real loader.
//!
//! `cargo test -p scout --test fuzz_config` runs 10,000 cases per file;
//! `SCOUT_FUZZ_CASES=1000000 cargo test --release -p scout --test
//! fuzz_config -- --nocapture --test-threads=1` runs a million and prints
//! cases, wall time and panics per file.

#[path = "../net/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::path::Path;

use fuzz_support::{json_input, run_target};
use proptest::prelude::*;
use scout::config::json_file::ConfigError;
use scout::config::{mesh_file, project, relay_agents, settings};
use serde_json::json;

/// A memory-backed directory on Linux.
const MEMORY_TEMP_DIR: &str = "/dev/shm";

fn settings_seeds() -> Vec<serde_json::Value> {
    vec![
        json!({
            "version": 1,
            "node_name": "laptop",
            "http_port": 7450,
            "mesh_port": 7451,
            "workspace_roots": ["/home/alice/src", "~/work"],
            "seeds": ["devbox.local:7451", "192.0.2.1:7451", "[2001:db8::1]:7451"],
            "discovery": {
                "mdns": true,
                "tailscale": {
                    "enabled": true,
                    "tags": ["tag:mesh-broker"],
                    "socket": "/var/run/tailscale/tailscaled.sock",
                    "poll_interval_ms": 5000,
                    "mesh_port": 0,
                    "admit": {"tags": ["tag:mesh-broker"], "users": ["alice@example.com"]}
                }
            }
        }),
        json!({}),
    ]
}

fn relay_agents_seeds() -> Vec<serde_json::Value> {
    vec![json!({
        "version": 1,
        "agents": [
            {"name": "fabric", "harness": "claude", "command": ["claude", "--model", "opus"],
             "cwd": "/home/alice/src/fabric", "workspace": "main", "prompt_pattern": "^> $"},
            {"name": "worker", "harness": "command", "command": ["bash", "-c", "echo ready"]},
            {"name": "gem", "harness": "gemini"}
        ]
    })]
}

fn project_seeds() -> Vec<serde_json::Value> {
    vec![json!({
        "version": 1,
        "name": "fabric",
        "agents": [
            {"name": "fabric", "harness": "codex", "command": ["codex"], "cwd": ".", "workspace": "main"},
            {"name": "tests", "command": ["bash", "-lc", "cargo test"], "cwd": "crates/core"}
        ]
    })]
}

fn mesh_file_seeds() -> Vec<serde_json::Value> {
    vec![json!({
        "version": 1,
        "mesh_id": "0123456789abcdef0123456789abcdef",
        "bootstrap": [
            {"address": "192.0.2.1:7451", "public_key": "ab".repeat(32)},
            {"address": "[::1]:7451", "public_key": "00".repeat(32)}
        ]
    })]
}

/// Writes each case to `file_name` in a temporary directory and loads it
/// with `load`; an error must carry a stable UPPER_SNAKE code.
fn fuzz_file(
    name: &str,
    file_name: &str,
    seeds: Vec<serde_json::Value>,
    load: impl Fn(&Path) -> Result<(), ConfigError>,
) {
    // Memory-backed when the system has it: rewriting one small file ten
    // thousand times on ext4 costs a flush each time (its replace-by-
    // truncate heuristic), which would make the disk the thing measured.
    let dir = tempfile::tempdir_in(MEMORY_TEMP_DIR)
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir");
    let path = dir.path().join(file_name);
    run_target(name, json_input(seeds), |bytes| {
        std::fs::write(&path, &bytes).expect("write the case");
        if let Err(err) = load(&path) {
            let code = err.code();
            prop_assert!(
                !code.is_empty()
                    && code
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "unexpected code {code} for {err}"
            );
            // The message renders (it locates the field in the text).
            let _ = err.to_string();
        }
        Ok(())
    });
}

#[test]
fn fuzz_settings_json() {
    fuzz_file(
        "settings.json (settings::load)",
        "settings.json",
        settings_seeds(),
        |path| settings::load(path).map(drop),
    );
}

#[test]
fn fuzz_relay_agents_json() {
    fuzz_file(
        "relay-agents.json (relay_agents::load)",
        "relay-agents.json",
        relay_agents_seeds(),
        |path| relay_agents::load(path).map(drop),
    );
}

#[test]
fn fuzz_project_json() {
    fuzz_file(
        ".openscout/project.json (project::load)",
        "project.json",
        project_seeds(),
        |path| project::load(path).map(drop),
    );
}

#[test]
fn fuzz_mesh_json() {
    fuzz_file(
        "mesh.json (mesh_file::load)",
        "mesh.json",
        mesh_file_seeds(),
        |path| mesh_file::load(path).map(drop),
    );
}
