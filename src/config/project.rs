//! `.openscout/project.json`: a repository's own declaration of its agents.

use std::path::{Path, PathBuf};

use scout_mesh::lifecycle::Harness;
use scout_mesh::names::{Label, NamePart, Workspace};
use serde::{Deserialize, Serialize};

use super::json_file::{ConfigError, JsonFile};
use super::relay_agents::check_command;

/// The manifest format this scout writes.
pub const PROJECT_VERSION: u32 = 1;

/// Agents one project may declare.
pub const PROJECT_AGENTS_MAX: usize = 64;

/// Where a repository keeps its manifest, relative to its root.
pub const MANIFEST_RELATIVE_PATH: &str = ".openscout/project.json";

/// A project manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProjectManifest {
    /// Format version.
    pub version: u32,
    /// The project's name; also the definition name of its default agent.
    pub name: String,
    /// Agents the project declares; when empty, one agent named after the
    /// project with the harness inferred from the repository's markers.
    pub agents: Vec<ProjectAgent>,
}

impl Default for ProjectManifest {
    fn default() -> ProjectManifest {
        ProjectManifest {
            version: PROJECT_VERSION,
            name: String::new(),
            agents: Vec::new(),
        }
    }
}

/// One agent a project declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectAgent {
    /// Definition name.
    pub name: String,
    /// The CLI; inferred from markers when absent.
    #[serde(default)]
    pub harness: Option<Harness>,
    /// Program and arguments; the harness's program when empty.
    #[serde(default)]
    pub command: Vec<String>,
    /// Working directory relative to the project root (default: the root).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Workspace part of the instance name; the current git branch when absent.
    #[serde(default)]
    pub workspace: Option<String>,
    /// A mention of a workspace this agent has no instance in makes a git
    /// worktree for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub worktrees: bool,
    /// The branch new worktree branches start from; the repository's
    /// default branch when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
}

/// The manifest path of a repository root.
pub fn manifest_path(root: &Path) -> PathBuf {
    root.join(MANIFEST_RELATIVE_PATH)
}

/// Loads and validates a manifest; `Ok(None)` when the file does not exist.
pub fn load(path: &Path) -> Result<Option<JsonFile<ProjectManifest>>, ConfigError> {
    let Some(file) = JsonFile::<ProjectManifest>::load(path)? else {
        return Ok(None);
    };
    validate(&file.value, path, &file.text)?;
    Ok(Some(file))
}

/// Checks names, commands and workspaces.
pub fn validate(manifest: &ProjectManifest, path: &Path, text: &str) -> Result<(), ConfigError> {
    if manifest.version > PROJECT_VERSION {
        return Err(ConfigError::field(
            path,
            text,
            "version",
            format!(
                "written by a newer scout (version {}); this scout knows up to {PROJECT_VERSION}",
                manifest.version
            ),
        ));
    }
    Label::parse(&manifest.name, NamePart::Definition)
        .map_err(|err| ConfigError::field(path, text, "name", err.to_string()))?;
    if manifest.agents.len() > PROJECT_AGENTS_MAX {
        return Err(ConfigError::field(
            path,
            text,
            "agents",
            format!(
                "{} agents; at most {PROJECT_AGENTS_MAX}",
                manifest.agents.len()
            ),
        ));
    }
    for (idx, agent) in manifest.agents.iter().enumerate() {
        let field = |name: &str| format!("agents[{idx}].{name}");
        Label::parse(&agent.name, NamePart::Definition)
            .map_err(|err| ConfigError::field(path, text, &field("name"), err.to_string()))?;
        if let Some(harness) = agent.harness {
            check_command(harness, &agent.command)
                .map_err(|message| ConfigError::field(path, text, &field("command"), message))?;
        }
        if let Some(workspace) = &agent.workspace {
            Workspace::parse(workspace).map_err(|err| {
                ConfigError::field(path, text, &field("workspace"), err.to_string())
            })?;
        }
        if let Some(base) = &agent.base_branch {
            Workspace::parse(base).map_err(|err| {
                ConfigError::field(path, text, &field("base_branch"), err.to_string())
            })?;
        }
        if let Some(cwd) = &agent.cwd
            && (cwd.is_absolute() || cwd.components().any(|c| c.as_os_str() == ".."))
        {
            return Err(ConfigError::field(
                path,
                text,
                &field("cwd"),
                format!("`{}` must be a path inside the project", cwd.display()),
            ));
        }
    }
    Ok(())
}
