//! Which agents exist on this machine: manual agents from
//! `relay-agents.json`, project agents from `.openscout/project.json`
//! manifests under the workspace roots, and agents inferred from repository
//! markers (`CLAUDE.md`, `.claude/`, `AGENTS.md`, `.agents/`, `GEMINI.md`).
//!
//! Discovery never fails as a whole: a broken manifest in one repository is a
//! warning that names the file, and the other agents are still found.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use scout_mesh::lifecycle::Harness;
use scout_mesh::names::{AgentName, Label, NamePart, Workspace};
use serde::Serialize;

use super::project::{self, ProjectManifest};
use super::relay_agents::RelayAgents;
use super::settings::Settings;
use super::trust::ManifestDigest;
use crate::home::Home;

/// How deep below a workspace root a repository may sit (`root/org/repo`
/// is depth 2); deeper trees are usually dependencies, not projects.
pub const SCAN_DEPTH_MAX: usize = 3;

/// Directories visited per scan at most, so a root pointed at `/` or a huge
/// monorepo costs a bounded amount of time.
pub const SCAN_DIRS_MAX: usize = 20_000;

/// Directory names never descended into: build outputs and dependencies.
const SKIPPED_DIR_NAMES: &[&str] = &["node_modules", "target", "vendor", "dist", "build"];

/// One agent this machine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAgent {
    /// Definition name (`fabric`).
    pub definition: Label,
    /// Workspace (git branch or worktree), when there is one.
    pub workspace: Option<Workspace>,
    /// The CLI it runs.
    pub harness: Harness,
    /// Program and arguments (never empty).
    pub command: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Where this agent was declared.
    pub source: AgentSource,
    /// The prompt line's pattern (`command` agents), marking turn ends.
    pub prompt_pattern: Option<String>,
    /// The manifest this agent's command comes from, as it was read, when
    /// the command was chosen by a repository rather than the user: it
    /// runs only once the user trusts exactly that manifest (see
    /// [`super::trust`]). `None` for manual agents and for agents that run
    /// their harness's own program.
    pub needs_trust: Option<ManifestDigest>,
    /// Set when the definition makes a git worktree for a workspace it has
    /// no instance in; each worktree made is an instance of its own.
    pub worktrees: Option<WorktreePolicy>,
}

/// How a definition makes worktrees on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorktreePolicy {
    /// Where its worktrees go (`<root>/<definition>/<branch>`).
    pub root: PathBuf,
    /// The branch new branches start from; the repository's default when
    /// `None`.
    pub base: Option<String>,
}

impl LocalAgent {
    /// The worktrees of this agent's definition, when it makes them.
    pub fn worktrees(&self) -> Option<crate::worktree::Worktrees> {
        let policy = self.worktrees.as_ref()?;
        Some(crate::worktree::Worktrees::new(
            &policy.root,
            &self.definition,
            &self.cwd,
            policy.base.clone(),
        ))
    }
}

impl LocalAgent {
    /// The instance name on the node `node_name`.
    pub fn instance_name(&self, node_name: &Label) -> AgentName {
        AgentName::new(
            self.definition.clone(),
            Some(node_name.clone()),
            self.workspace.clone(),
        )
    }
}

/// How an agent is shown to users and API clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AgentView {
    /// The full instance name (`@fabric@laptop#main`).
    pub name: String,
    /// Definition name.
    pub definition: String,
    /// Node name of its owner.
    pub node: String,
    /// Workspace, when there is one.
    pub workspace: Option<String>,
    /// The CLI it runs.
    pub harness: Harness,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Where it was declared.
    pub source: AgentSource,
}

impl LocalAgent {
    /// The view of this agent as owned by `node_name`.
    pub fn view(&self, node_name: &Label) -> AgentView {
        AgentView {
            name: self.instance_name(node_name).to_string(),
            definition: self.definition.as_str().to_owned(),
            node: node_name.as_str().to_owned(),
            workspace: self.workspace.as_ref().map(|ws| ws.as_str().to_owned()),
            harness: self.harness,
            command: self.command.clone(),
            cwd: self.cwd.clone(),
            source: self.source.clone(),
        }
    }
}

/// Where an agent was declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentSource {
    /// `relay-agents.json`.
    Manual,
    /// A project manifest.
    Project {
        /// The manifest file.
        manifest: PathBuf,
    },
    /// Inferred from a marker file in a repository without a manifest.
    Inferred {
        /// The marker that chose the harness.
        marker: String,
    },
}

impl AgentSource {
    /// A short word for tables: `manual`, `project`, `inferred`.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentSource::Manual => "manual",
            AgentSource::Project { .. } => "project",
            AgentSource::Inferred { .. } => "inferred",
        }
    }
}

/// What discovery found.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    /// The agents, manual ones first, then by definition and workspace.
    pub agents: Vec<LocalAgent>,
    /// Repositories that looked like projects but could not be used, and why.
    pub warnings: Vec<String>,
}

/// Finds this machine's agents.
pub fn discover(home: &Home, settings: &Settings, relay: &RelayAgents) -> Discovered {
    let worktrees_root = settings.worktrees_root(home);
    let policy = |wanted: bool, base: &Option<String>| {
        wanted.then(|| WorktreePolicy {
            root: worktrees_root.clone(),
            base: base.clone(),
        })
    };
    let mut found = Discovered::default();
    let default_cwd = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/"));

    let mut manual_names = HashSet::new();
    for agent in &relay.agents {
        // relay-agents.json was validated on load; a name that fails here
        // can only come from a caller that skipped validation.
        let Ok(definition) = Label::parse(&agent.name, NamePart::Definition) else {
            found
                .warnings
                .push(format!("manual agent `{}` has an invalid name", agent.name));
            continue;
        };
        let cwd = agent.cwd.clone().unwrap_or_else(|| default_cwd.clone());
        let workspace = match &agent.workspace {
            Some(workspace) => Workspace::parse(workspace).ok(),
            None => git_branch(&cwd),
        };
        manual_names.insert(definition.as_str().to_owned());
        found.agents.push(LocalAgent {
            command: command_or_default(agent.harness, &agent.command),
            definition,
            workspace,
            harness: agent.harness,
            cwd,
            source: AgentSource::Manual,
            prompt_pattern: agent.prompt_pattern.clone(),
            needs_trust: None,
            worktrees: policy(agent.worktrees, &agent.base_branch),
        });
    }

    let mut project_agents = Vec::new();
    let mut budget = SCAN_DIRS_MAX;
    let mut seen_roots = HashSet::new();
    for root in &settings.workspace_roots {
        for repo in find_repositories(root, &mut budget, &mut found.warnings) {
            // Worktrees Scout made are instances of their definition, not
            // projects of their own.
            if repo.starts_with(&worktrees_root) {
                continue;
            }
            if seen_roots.insert(repo.clone()) {
                agents_of_repository(&repo, &mut project_agents, &mut found.warnings);
            }
        }
    }
    for agent in &mut project_agents {
        if let Some(base) = agent.worktrees.take().map(|policy| policy.base) {
            agent.worktrees = policy(true, &base);
        }
    }
    project_agents.sort_by(|a: &LocalAgent, b| {
        (
            a.definition.as_str(),
            a.workspace.as_ref().map(Workspace::as_str),
        )
            .cmp(&(
                b.definition.as_str(),
                b.workspace.as_ref().map(Workspace::as_str),
            ))
    });

    // Manual agents override project agents of the same definition; two
    // projects declaring the same instance keep the first and warn.
    let mut instances = HashSet::new();
    for agent in project_agents {
        if manual_names.contains(agent.definition.as_str()) {
            continue;
        }
        let key = (agent.definition.clone(), agent.workspace.clone());
        if !instances.insert(key) {
            found.warnings.push(format!(
                "{} declares agent `{}` again for the same workspace; keeping the first",
                agent.cwd.display(),
                agent.definition
            ));
            continue;
        }
        found.agents.push(agent);
    }
    add_worktree_instances(&mut found);
    found
}

/// Adds an instance for each worktree a definition made: the same agent,
/// in the worktree, under the worktree's branch. A branch that already has
/// an instance keeps it.
fn add_worktree_instances(found: &mut Discovered) {
    let mut taken: HashSet<(Label, Option<Workspace>)> = found
        .agents
        .iter()
        .map(|agent| (agent.definition.clone(), agent.workspace.clone()))
        .collect();
    let mut made = Vec::new();
    for agent in &found.agents {
        let Some(worktrees) = agent.worktrees() else {
            continue;
        };
        let checked_out = match worktrees.checked_out() {
            Ok(checked_out) => checked_out,
            Err(err) => {
                found.warnings.push(format!(
                    "@{}: cannot list its worktrees: {err}",
                    agent.definition
                ));
                continue;
            }
        };
        for (branch, cwd) in checked_out {
            let Ok(workspace) = Workspace::parse(&branch) else {
                continue;
            };
            if !taken.insert((agent.definition.clone(), Some(workspace.clone()))) {
                continue;
            }
            let mut instance = agent.clone();
            instance.cwd = cwd;
            instance.workspace = Some(workspace);
            made.push(instance);
        }
    }
    found.agents.extend(made);
}

/// The command an agent runs: its own, or its harness's program.
pub fn command_or_default(harness: Harness, command: &[String]) -> Vec<String> {
    if command.is_empty() {
        harness
            .default_program()
            .map(|program| vec![program.to_owned()])
            .unwrap_or_default()
    } else {
        command.to_vec()
    }
}

/// The harness a repository's markers point to, and the marker.
pub fn infer_harness(root: &Path) -> Option<(Harness, &'static str)> {
    const MARKERS: &[(&str, Harness)] = &[
        ("CLAUDE.md", Harness::Claude),
        (".claude", Harness::Claude),
        ("AGENTS.md", Harness::Codex),
        (".agents", Harness::Codex),
        ("GEMINI.md", Harness::Gemini),
        (".gemini", Harness::Gemini),
    ];
    MARKERS
        .iter()
        .find(|(marker, _)| root.join(marker).exists())
        .map(|(marker, harness)| (*harness, *marker))
}

/// Whether `dir` is the root of a project: a git repository or a directory
/// with a manifest.
pub fn is_repository(dir: &Path) -> bool {
    dir.join(".git").exists() || project::manifest_path(dir).exists()
}

/// The current branch of the repository containing `dir`, as a workspace.
pub fn git_branch(dir: &Path) -> Option<Workspace> {
    let mut current = Some(dir);
    while let Some(candidate) = current {
        let dot_git = candidate.join(".git");
        if dot_git.is_dir() {
            return branch_from_head(&dot_git.join("HEAD"));
        }
        if dot_git.is_file() {
            // A worktree: `.git` is a file pointing at the real git dir.
            let text = fs::read_to_string(&dot_git).ok()?;
            let git_dir = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
            let git_dir = if git_dir.is_absolute() {
                git_dir
            } else {
                candidate.join(git_dir)
            };
            return branch_from_head(&git_dir.join("HEAD"));
        }
        current = candidate.parent();
    }
    None
}

fn branch_from_head(head: &Path) -> Option<Workspace> {
    let text = fs::read_to_string(head).ok()?;
    let branch = text.trim().strip_prefix("ref: refs/heads/")?;
    Workspace::parse(branch).ok()
}

/// A name usable as a definition, folded from a directory name
/// (`My_Project` → `my-project`).
pub fn definition_from_dir_name(dir: &Path) -> Option<Label> {
    let name = dir.file_name()?.to_string_lossy();
    let folded = super::settings::node_name_from_host(&name.replace('.', "-"));
    Label::parse(&folded, NamePart::Definition).ok()
}

fn find_repositories(root: &Path, budget: &mut usize, warnings: &mut Vec<String>) -> Vec<PathBuf> {
    let mut repositories = Vec::new();
    if !root.is_dir() {
        warnings.push(format!(
            "workspace root {} is not a directory; skipped",
            root.display()
        ));
        return repositories;
    }
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if *budget == 0 {
            warnings.push(format!(
                "stopped scanning {} after {SCAN_DIRS_MAX} directories",
                root.display()
            ));
            break;
        }
        *budget -= 1;
        if is_repository(&dir) {
            repositories.push(dir);
            continue;
        }
        if depth >= SCAN_DEPTH_MAX {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut children: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .map(|entry| entry.path())
            .filter(|path| {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                !name.starts_with('.') && !SKIPPED_DIR_NAMES.contains(&name.as_ref())
            })
            .collect();
        // Reverse-sorted onto the stack so directories are visited in order.
        children.sort();
        stack.extend(children.into_iter().rev().map(|child| (child, depth + 1)));
    }
    repositories.sort();
    repositories
}

fn agents_of_repository(repo: &Path, out: &mut Vec<LocalAgent>, warnings: &mut Vec<String>) {
    let manifest_path = project::manifest_path(repo);
    let branch = git_branch(repo);
    let inferred = infer_harness(repo);
    match project::load(&manifest_path) {
        Ok(Some(file)) => {
            let digest = ManifestDigest::of(&manifest_path, file.text.as_bytes());
            let manifest: ProjectManifest = file.value;
            let declared = if manifest.agents.is_empty() {
                vec![project::ProjectAgent {
                    name: manifest.name.clone(),
                    harness: None,
                    command: Vec::new(),
                    cwd: None,
                    workspace: None,
                    worktrees: false,
                    base_branch: None,
                }]
            } else {
                manifest.agents
            };
            for agent in declared {
                let Some(harness) = agent.harness.or(inferred.map(|(harness, _)| harness)) else {
                    warnings.push(format!(
                        "{}: agent `{}` has no harness and the repository has no marker \
                         (CLAUDE.md, AGENTS.md, GEMINI.md); skipped",
                        manifest_path.display(),
                        agent.name
                    ));
                    continue;
                };
                let Ok(definition) = Label::parse(&agent.name, NamePart::Definition) else {
                    continue;
                };
                // A command the repository chose runs only once trusted; the
                // harness's own program is what a marker would run anyway.
                // Worktrees too: with them any mesh member may make checkouts
                // of the repository, which its author cannot decide alone.
                let needs_trust =
                    (!agent.command.is_empty() || agent.worktrees).then(|| digest.clone());
                out.push(LocalAgent {
                    definition,
                    workspace: agent
                        .workspace
                        .as_deref()
                        .and_then(|ws| Workspace::parse(ws).ok())
                        .or_else(|| branch.clone()),
                    harness,
                    command: command_or_default(harness, &agent.command),
                    cwd: agent
                        .cwd
                        .map_or_else(|| repo.to_path_buf(), |cwd| repo.join(cwd)),
                    source: AgentSource::Project {
                        manifest: manifest_path.clone(),
                    },
                    prompt_pattern: None,
                    needs_trust,
                    // The root is the broker's; `discover` fills it in.
                    worktrees: agent.worktrees.then(|| WorktreePolicy {
                        root: PathBuf::new(),
                        base: agent.base_branch.clone(),
                    }),
                });
            }
        }
        Ok(None) => {
            let (Some((harness, marker)), Some(definition)) =
                (inferred, definition_from_dir_name(repo))
            else {
                return;
            };
            out.push(LocalAgent {
                definition,
                workspace: branch,
                harness,
                command: command_or_default(harness, &[]),
                cwd: repo.to_path_buf(),
                source: AgentSource::Inferred {
                    marker: marker.to_owned(),
                },
                prompt_pattern: None,
                needs_trust: None,
                worktrees: None,
            });
        }
        Err(err) => warnings.push(format!("{err}; project skipped")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::relay_agents::ManualAgent;

    fn repo(root: &Path, name: &str, branch: &str, marker: Option<&str>) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(dir.join(".git")).unwrap();
        fs::write(dir.join(".git/HEAD"), format!("ref: refs/heads/{branch}\n")).unwrap();
        if let Some(marker) = marker {
            fs::write(dir.join(marker), "# agents\n").unwrap();
        }
        dir
    }

    #[test]
    fn finds_manifest_inferred_and_manual_agents() {
        let root = tempfile::tempdir().unwrap();
        repo(root.path(), "Fabric", "feature-x", Some("CLAUDE.md"));
        let loom = repo(root.path(), "loom", "main", Some("AGENTS.md"));
        fs::create_dir_all(loom.join(".openscout")).unwrap();
        fs::write(
            loom.join(".openscout/project.json"),
            r#"{"name": "loom", "agents": [{"name": "loom"}, {"name": "loom-review", "harness": "gemini"}]}"#,
        )
        .unwrap();
        repo(root.path(), "plain", "main", None);

        let settings = Settings {
            workspace_roots: vec![root.path().to_path_buf()],
            ..Settings::default()
        };
        let relay = RelayAgents {
            agents: vec![ManualAgent {
                name: "shell".into(),
                harness: Harness::Command,
                command: vec!["bash".into()],
                cwd: Some(root.path().to_path_buf()),
                workspace: Some("scratch".into()),
                prompt_pattern: None,
                worktrees: false,
                base_branch: None,
            }],
            ..RelayAgents::default()
        };
        let found = discover(&Home::in_dir(root.path()), &settings, &relay);
        let node = Label::parse("laptop", NamePart::Node).unwrap();
        let names: Vec<String> = found
            .agents
            .iter()
            .map(|agent| format!("{} {}", agent.instance_name(&node), agent.harness))
            .collect();
        assert_eq!(
            names,
            [
                "@shell@laptop#scratch command",
                "@fabric@laptop#feature-x claude",
                "@loom@laptop#main codex",
                "@loom-review@laptop#main gemini",
            ]
        );
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
        // Nothing here runs a command a repository chose.
        assert!(found.agents.iter().all(|agent| agent.needs_trust.is_none()));
    }

    #[test]
    fn a_manifest_command_needs_trust_of_that_manifest() {
        let root = tempfile::tempdir().unwrap();
        let dir = repo(root.path(), "tool", "main", Some("CLAUDE.md"));
        fs::create_dir_all(dir.join(".openscout")).unwrap();
        let text = r#"{"name": "tool", "agents": [{"name": "tool"}, {"name": "runner", "harness": "command", "command": ["make", "run"]}]}"#;
        fs::write(dir.join(".openscout/project.json"), text).unwrap();
        let settings = Settings {
            workspace_roots: vec![root.path().to_path_buf()],
            ..Settings::default()
        };
        let found = discover(
            &Home::in_dir(root.path()),
            &settings,
            &RelayAgents::default(),
        );
        let trust: Vec<(String, bool)> = found
            .agents
            .iter()
            .map(|agent| (agent.definition.to_string(), agent.needs_trust.is_some()))
            .collect();
        assert_eq!(
            trust,
            [("runner".to_owned(), true), ("tool".to_owned(), false)]
        );
        let digest = found.agents[0].needs_trust.clone().unwrap();
        assert_eq!(
            digest,
            ManifestDigest::of(&dir.join(".openscout/project.json"), text.as_bytes())
        );
        assert!(digest.path.is_absolute());
    }

    #[test]
    fn broken_manifest_is_a_warning_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = repo(root.path(), "bad", "main", None);
        fs::create_dir_all(dir.join(".openscout")).unwrap();
        fs::write(dir.join(".openscout/project.json"), "{\"name\": 5}").unwrap();
        repo(root.path(), "good", "main", Some("CLAUDE.md"));
        let settings = Settings {
            workspace_roots: vec![root.path().to_path_buf()],
            ..Settings::default()
        };
        let found = discover(
            &Home::in_dir(root.path()),
            &settings,
            &RelayAgents::default(),
        );
        assert_eq!(found.agents.len(), 1);
        assert!(
            found.warnings[0].contains("bad/.openscout/project.json:1:"),
            "{:?}",
            found.warnings
        );
    }

    #[test]
    fn worktree_branch_is_read_through_the_gitdir_file() {
        let root = tempfile::tempdir().unwrap();
        let git_dir = root.path().join("main-repo/.git/worktrees/wt");
        fs::create_dir_all(&git_dir).unwrap();
        fs::write(git_dir.join("HEAD"), "ref: refs/heads/feature/y\n").unwrap();
        let worktree = root.path().join("wt");
        fs::create_dir_all(&worktree).unwrap();
        fs::write(
            worktree.join(".git"),
            format!("gitdir: {}\n", git_dir.display()),
        )
        .unwrap();
        assert_eq!(git_branch(&worktree).unwrap().as_str(), "feature/y");
    }

    #[test]
    fn each_worktree_a_definition_made_is_an_instance() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("app");
        fs::create_dir_all(repo.join("src")).unwrap();
        let git = |dir: &Path, args: &[&str]| {
            let status = std::process::Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com")
                .status()
                .unwrap();
            assert!(status.success());
        };
        git(&repo, &["init", "-q", "-b", "main"]);
        fs::write(repo.join("src/lib.rs"), "").unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "first"]);
        let home = Home::in_dir(root.path().join("home"));
        let settings = Settings {
            workspace_roots: vec![root.path().to_path_buf()],
            ..Settings::default()
        };
        let relay = RelayAgents {
            agents: vec![ManualAgent {
                name: "fabric".into(),
                harness: Harness::Command,
                command: vec!["bash".into()],
                cwd: Some(repo.join("src")),
                workspace: None,
                prompt_pattern: None,
                worktrees: true,
                base_branch: None,
            }],
            ..RelayAgents::default()
        };
        let found = discover(&home, &settings, &relay);
        let main = found
            .agents
            .iter()
            .find(|a| a.definition.as_str() == "fabric")
            .unwrap();
        let made = main
            .worktrees()
            .unwrap()
            .ensure(&Workspace::parse("feature/x").unwrap())
            .unwrap();
        assert!(made.starts_with(root.path().join("home/worktrees/fabric")));

        let found = discover(&home, &settings, &relay);
        let node = Label::parse("laptop", NamePart::Node).unwrap();
        let mut names: Vec<(String, PathBuf)> = found
            .agents
            .iter()
            .filter(|agent| agent.definition.as_str() == "fabric")
            .map(|agent| (agent.instance_name(&node).to_string(), agent.cwd.clone()))
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(names[0].0, "@fabric@laptop#feature/x");
        // The definition's directory inside the repository, in the worktree.
        assert_eq!(
            names[0].1.canonicalize().unwrap(),
            made.join("src").canonicalize().unwrap()
        );
        assert_eq!(names[1].0, "@fabric@laptop#main");
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    }
}
