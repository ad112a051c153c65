//! `relay-agents.json`: agents added by hand on this machine. They add to,
//! and override by definition name, the agents found in projects.

use std::path::{Path, PathBuf};

use scout_mesh::lifecycle::Harness;
use scout_mesh::names::{Label, NamePart, Workspace};
use serde::{Deserialize, Serialize};

use super::json_file::{ConfigError, JsonFile};

/// The relay-agents file format this scout writes.
pub const RELAY_AGENTS_VERSION: u32 = 1;

/// Manual agents at most: more than this is not a hand-kept list.
pub const MANUAL_AGENTS_MAX: usize = 256;

/// Arguments of one agent command at most.
pub const COMMAND_ARGS_MAX: usize = 128;

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RelayAgents {
    /// Format version of this file.
    pub version: u32,
    /// The agents, in the order they were added.
    pub agents: Vec<ManualAgent>,
}

impl Default for RelayAgents {
    fn default() -> RelayAgents {
        RelayAgents {
            version: RELAY_AGENTS_VERSION,
            agents: Vec::new(),
        }
    }
}

/// One agent added by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualAgent {
    /// The definition name (`fabric` for `@fabric`).
    pub name: String,
    /// The CLI it runs.
    #[serde(default = "default_harness")]
    pub harness: Harness,
    /// Program and arguments; empty means the harness's own program.
    #[serde(default)]
    pub command: Vec<String>,
    /// Working directory; the home directory of the user when absent.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Workspace part of the instance name; the git branch of `cwd` when absent.
    #[serde(default)]
    pub workspace: Option<String>,
    /// `command` only: a regular expression matching the program's prompt
    /// line, which marks the end of a turn (without one, a turn ends after
    /// a quiet spell).
    #[serde(default)]
    pub prompt_pattern: Option<String>,
    /// A mention of a workspace this agent has no instance in makes a git
    /// worktree for it (see [`crate::worktree`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub worktrees: bool,
    /// The branch new worktree branches start from; the repository's
    /// default branch when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
}

fn default_harness() -> Harness {
    Harness::Command
}

/// Loads `relay-agents.json` (an empty list when the file does not exist),
/// validated.
pub fn load(path: &Path) -> Result<JsonFile<RelayAgents>, ConfigError> {
    let file = JsonFile::load_or(path, RelayAgents::default)?;
    validate(&file.value, path, &file.text)?;
    Ok(file)
}

/// Checks each agent: a valid, unique name, a usable command and workspace.
pub fn validate(relay: &RelayAgents, path: &Path, text: &str) -> Result<(), ConfigError> {
    if relay.version > RELAY_AGENTS_VERSION {
        return Err(ConfigError::field(
            path,
            text,
            "version",
            format!(
                "written by a newer scout (version {}); this scout knows up to {RELAY_AGENTS_VERSION}",
                relay.version
            ),
        ));
    }
    if relay.agents.len() > MANUAL_AGENTS_MAX {
        return Err(ConfigError::field(
            path,
            text,
            "agents",
            format!("{} agents; at most {MANUAL_AGENTS_MAX}", relay.agents.len()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (idx, agent) in relay.agents.iter().enumerate() {
        let field = |name: &str| format!("agents[{idx}].{name}");
        let label = Label::parse(&agent.name, NamePart::Definition)
            .map_err(|err| ConfigError::field(path, text, &field("name"), err.to_string()))?;
        if !seen.insert(label.as_str().to_owned()) {
            return Err(ConfigError::field(
                path,
                text,
                &field("name"),
                format!("agent `{label}` is listed twice"),
            ));
        }
        check_command(agent.harness, &agent.command)
            .map_err(|message| ConfigError::field(path, text, &field("command"), message))?;
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
        if let Some(pattern) = &agent.prompt_pattern
            && let Err(err) = regex::Regex::new(pattern)
        {
            return Err(ConfigError::field(
                path,
                text,
                &field("prompt_pattern"),
                format!("not a regular expression: {err}"),
            ));
        }
        if let Some(cwd) = &agent.cwd
            && !cwd.is_absolute()
        {
            return Err(ConfigError::field(
                path,
                text,
                &field("cwd"),
                format!("`{}` is not an absolute path", cwd.display()),
            ));
        }
    }
    Ok(())
}

/// A `command` or `acp` agent needs a program; any agent's command has
/// bounded size.
pub fn check_command(harness: Harness, command: &[String]) -> Result<(), String> {
    if command.is_empty() && harness.default_program().is_none() {
        return Err(format!("a `{harness}` agent needs a command to run"));
    }
    if command.len() > COMMAND_ARGS_MAX {
        return Err(format!(
            "{} arguments; at most {COMMAND_ARGS_MAX}",
            command.len()
        ));
    }
    if command
        .first()
        .is_some_and(|program| program.trim().is_empty())
    {
        return Err("the program name is empty".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("relay-agents.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn missing_file_is_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let file = load(&dir.path().join("relay-agents.json")).unwrap();
        assert!(file.value.agents.is_empty());
    }

    #[test]
    fn duplicate_and_bad_names_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "{\"agents\": [\n {\"name\": \"a\", \"command\": [\"bash\"]},\n {\"name\": \"A\", \"command\": [\"bash\"]}\n]}",
        );
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("agents[1].name") && err.contains("listed twice"),
            "{err}"
        );

        let path = write(dir.path(), "{\"agents\": [{\"name\": \"no way\"}]}");
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("agents[0].name"), "{err}");
    }

    #[test]
    fn command_agent_needs_a_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "{\"agents\": [{\"name\": \"a\", \"harness\": \"command\"}]}",
        );
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("agents[0].command"), "{err}");
    }

    #[test]
    fn unknown_harness_lists_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "{\"agents\": [{\"name\": \"a\", \"harness\": \"vim\"}]}",
        );
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("agents[0].harness") && err.contains("claude, codex"),
            "{err}"
        );
    }
}
