//! Which project manifests the user trusts to run commands:
//! `trusted-manifests.json` in the home, written by `scout agents trust` and
//! `scout agents untrust`.
//!
//! A `.openscout/project.json` comes with a repository, so whoever wrote the
//! repository chose its `command`s. Like direnv's `allow`, such a command
//! runs only after the user trusted that manifest, by its canonical path and
//! the SHA-256 of its bytes; any change to the file needs trust again.
//! Agents that run a command the user chose (`relay-agents.json`) or a
//! harness's own program (inferred from markers, or declared without a
//! `command`) need no trust.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::discover::LocalAgent;
use super::json_file::{ConfigError, JsonFile};
use super::project;
use crate::home::Home;

/// The stable code of an agent whose manifest is not trusted.
pub const UNTRUSTED_MANIFEST: &str = "UNTRUSTED_MANIFEST";

/// The trust file format this scout writes.
pub const TRUST_VERSION: u32 = 1;

/// Trusted manifests at most: one per repository a person works in; a
/// longer list is not something anybody reviewed.
pub const TRUSTED_MANIFESTS_MAX: usize = 1_000;

/// A manifest as read, identified the way trust records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestDigest {
    /// The manifest's canonical path (symbolic links resolved).
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
}

impl ManifestDigest {
    /// The digest of `bytes` read from `path` (canonicalised when possible).
    pub fn of(path: &Path, bytes: &[u8]) -> ManifestDigest {
        ManifestDigest {
            path: fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}

/// The content of `trusted-manifests.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustedManifests {
    /// Format version.
    pub version: u32,
    /// One record per trusted manifest.
    pub manifests: Vec<TrustedManifest>,
}

impl Default for TrustedManifests {
    fn default() -> TrustedManifests {
        TrustedManifests {
            version: TRUST_VERSION,
            manifests: Vec::new(),
        }
    }
}

/// One trusted manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedManifest {
    /// Its canonical path.
    pub path: PathBuf,
    /// The SHA-256 of the bytes the user trusted.
    pub sha256: String,
    /// When, unix milliseconds.
    #[serde(default)]
    pub trusted_at_ms: i64,
}

/// Why an agent may not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// The manifest was never trusted (or trust was withdrawn).
    #[error(
        "UNTRUSTED_MANIFEST: {} runs `{command}` from {}, which is not trusted; review it, then run `scout agents trust {}`",
        agent, manifest.display(), manifest.display()
    )]
    NotTrusted {
        /// The agent's definition name, with `@`.
        agent: String,
        /// Its command, as one line.
        command: String,
        /// The manifest.
        manifest: PathBuf,
    },
    /// The manifest changed since it was trusted.
    #[error(
        "UNTRUSTED_MANIFEST: {} runs `{command}` from {}, which changed since it was trusted; review it, then run `scout agents trust {}`",
        agent, manifest.display(), manifest.display()
    )]
    Changed {
        /// The agent's definition name, with `@`.
        agent: String,
        /// Its command, as one line.
        command: String,
        /// The manifest.
        manifest: PathBuf,
    },
    /// The trust file cannot be read: nothing counts as trusted.
    #[error("UNTRUSTED_MANIFEST: {0}")]
    TrustFile(String),
}

impl Untrusted {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        UNTRUSTED_MANIFEST
    }

    /// `not_trusted`, `changed` or `trust_file`, for tables and JSON.
    pub fn why(&self) -> &'static str {
        match self {
            Untrusted::NotTrusted { .. } => "not_trusted",
            Untrusted::Changed { .. } => "changed",
            Untrusted::TrustFile(_) => "trust_file",
        }
    }
}

/// Loads the trust file (empty when it does not exist).
pub fn load(home: &Home) -> Result<JsonFile<TrustedManifests>, ConfigError> {
    let path = home.trusted_manifests_path();
    let file = JsonFile::load_or(&path, TrustedManifests::default)?;
    if file.value.manifests.len() > TRUSTED_MANIFESTS_MAX {
        return Err(ConfigError::field(
            &path,
            &file.text,
            "manifests",
            format!(
                "{} manifests; at most {TRUSTED_MANIFESTS_MAX}",
                file.value.manifests.len()
            ),
        ));
    }
    Ok(file)
}

/// Whether `agent` may start: always, unless its command comes from a
/// manifest; then only if that manifest, with exactly the bytes the agent
/// was read from, is trusted.
pub fn check(home: &Home, agent: &LocalAgent) -> Result<(), Untrusted> {
    let Some(digest) = &agent.needs_trust else {
        return Ok(());
    };
    let trusted = load(home).map_err(|err| Untrusted::TrustFile(err.to_string()))?;
    check_against(&trusted.value, agent, digest)?;
    // The broker may not have re-read a manifest edited since it was
    // loaded: what is on disk now must still be what was trusted, or the
    // agent's definition is stale and nobody trusted its replacement.
    let on_disk = fs::read(&digest.path).map(|bytes| ManifestDigest::of(&digest.path, &bytes));
    match on_disk {
        Ok(now) if now.sha256 == digest.sha256 => Ok(()),
        _ => Err(Untrusted::Changed {
            agent: format!("@{}", agent.definition),
            command: agent.command.join(" "),
            manifest: digest.path.clone(),
        }),
    }
}

/// [`check`] against an already loaded trust file.
pub fn check_against(
    trusted: &TrustedManifests,
    agent: &LocalAgent,
    digest: &ManifestDigest,
) -> Result<(), Untrusted> {
    let agent_name = format!("@{}", agent.definition);
    let command = agent.command.join(" ");
    match trusted
        .manifests
        .iter()
        .find(|record| record.path == digest.path)
    {
        Some(record) if record.sha256 == digest.sha256 => Ok(()),
        Some(_) => Err(Untrusted::Changed {
            agent: agent_name,
            command,
            manifest: digest.path.clone(),
        }),
        None => Err(Untrusted::NotTrusted {
            agent: agent_name,
            command,
            manifest: digest.path.clone(),
        }),
    }
}

/// The manifest a user means by `path`: the file itself, or a project
/// directory holding `.openscout/project.json`.
pub fn manifest_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        project::manifest_path(path)
    } else {
        path.to_owned()
    }
}

/// Trusts the manifest at `path` as it is now: checks that it is a valid
/// manifest, then records its canonical path and SHA-256, replacing an
/// earlier record of the same file.
pub fn trust(home: &Home, path: &Path, now_ms: i64) -> anyhow::Result<TrustedManifest> {
    let manifest = manifest_of(path);
    let bytes = fs::read(&manifest)
        .map_err(|err| anyhow::anyhow!("cannot read the manifest {}: {err}", manifest.display()))?;
    // Only what scout would load can be trusted: a file that is not a valid
    // manifest declares no agents.
    project::load(&manifest)?;
    let digest = ManifestDigest::of(&manifest, &bytes);
    let mut file = load(home)?;
    file.value
        .manifests
        .retain(|record| record.path != digest.path);
    if file.value.manifests.len() >= TRUSTED_MANIFESTS_MAX {
        anyhow::bail!(
            "{TRUSTED_MANIFESTS_MAX} manifests are trusted already; untrust one first with `scout agents untrust PATH`"
        );
    }
    let record = TrustedManifest {
        path: digest.path,
        sha256: digest.sha256,
        trusted_at_ms: now_ms,
    };
    file.value.manifests.push(record.clone());
    file.save()?;
    Ok(record)
}

/// Withdraws trust from the manifest at `path`; `Ok(None)` when it was not
/// trusted. A deleted manifest can still be untrusted by its path.
pub fn untrust(home: &Home, path: &Path) -> anyhow::Result<Option<TrustedManifest>> {
    let manifest = std::path::absolute(manifest_of(path))?;
    let canonical = fs::canonicalize(&manifest).unwrap_or_else(|_| manifest.clone());
    let mut file = load(home)?;
    let Some(idx) = file
        .value
        .manifests
        .iter()
        .position(|record| record.path == canonical || record.path == manifest)
    else {
        return Ok(None);
    };
    let removed = file.value.manifests.remove(idx);
    file.save()?;
    Ok(Some(removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(dir: &Path, command: &str) -> PathBuf {
        let manifest = project::manifest_path(dir);
        fs::create_dir_all(manifest.parent().unwrap()).unwrap();
        fs::write(
            &manifest,
            format!(
                r#"{{"name": "app", "agents": [{{"name": "app", "harness": "command", "command": ["{command}"]}}]}}"#
            ),
        )
        .unwrap();
        manifest
    }

    fn agent(manifest: &Path) -> LocalAgent {
        let text = fs::read(manifest).unwrap();
        LocalAgent {
            definition: scout_mesh::names::Label::parse(
                "app",
                scout_mesh::names::NamePart::Definition,
            )
            .unwrap(),
            workspace: None,
            harness: scout_mesh::lifecycle::Harness::Command,
            command: vec!["make".into()],
            cwd: manifest.to_owned(),
            source: super::super::discover::AgentSource::Project {
                manifest: manifest.to_owned(),
            },
            prompt_pattern: None,
            needs_trust: Some(ManifestDigest::of(manifest, &text)),
            worktrees: None,
        }
    }

    #[test]
    fn trust_follows_the_exact_bytes_of_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::in_dir(dir.path().join("home"));
        let repo = dir.path().join("repo");
        let manifest = project(&repo, "make");
        let before = agent(&manifest);
        assert_eq!(check(&home, &before).unwrap_err().why(), "not_trusted");

        let record = trust(&home, &repo, 1).unwrap();
        assert_eq!(record.path, fs::canonicalize(&manifest).unwrap());
        assert_eq!(check(&home, &before), Ok(()));

        project(&repo, "make all");
        let changed = agent(&manifest);
        let refused = check(&home, &changed).unwrap_err();
        assert_eq!(refused.why(), "changed");
        assert!(
            refused
                .to_string()
                .starts_with("UNTRUSTED_MANIFEST: @app runs `make`"),
            "{refused}"
        );

        trust(&home, &manifest, 2).unwrap();
        assert_eq!(check(&home, &changed), Ok(()));
        assert_eq!(
            load(&home).unwrap().value.manifests.len(),
            1,
            "one record per file"
        );
        assert!(untrust(&home, &repo).unwrap().is_some());
        assert!(untrust(&home, &repo).unwrap().is_none());
        assert_eq!(check(&home, &changed).unwrap_err().why(), "not_trusted");
    }

    #[test]
    fn an_agent_without_a_manifest_command_needs_no_trust() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::in_dir(dir.path());
        let manifest = project(dir.path(), "make");
        let mut agent = agent(&manifest);
        agent.needs_trust = None;
        assert_eq!(check(&home, &agent), Ok(()));
    }

    #[test]
    fn a_file_that_is_not_a_manifest_cannot_be_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::in_dir(dir.path().join("home"));
        let path = dir.path().join("project.json");
        fs::write(&path, "{\"name\": 5}").unwrap();
        assert!(trust(&home, &path, 1).is_err());
        assert!(trust(&home, &dir.path().join("missing.json"), 1).is_err());
        assert!(!home.trusted_manifests_path().exists());
    }
}
