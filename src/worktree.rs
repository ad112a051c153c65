//! Git worktrees made on demand: one per workspace of a definition that
//! declares `"worktrees": true`, under `<worktrees root>/<definition>/`.
//!
//! The directory is the record. A worktree Scout made lives at a path that
//! follows from the definition and the branch alone ([`Worktrees::path_for`]),
//! so making one twice finds the first (a retried or rerouted invocation,
//! or a broker that died between making it and registering the instance),
//! and the broker's agent discovery lists the instances from the same
//! directory ([`Worktrees::list`]). Nothing else keeps a list that could
//! disagree with the disk.
//!
//! Every git call runs the real `git` with a bounded output and a clear
//! error carrying git's own message; nothing here trusts a workspace name
//! before `git check-ref-format` has accepted it as a branch.

use std::path::{Path, PathBuf};

use scout_mesh::names::{Label, Workspace};

/// The bytes of git's output read at most per call: enough for a porcelain
/// worktree list of hundreds of worktrees, bounded for a hostile repository.
const GIT_OUTPUT_BYTES_MAX: usize = 1024 * 1024;

/// Worktrees one definition may have at once. Each is a checkout of the
/// whole repository, and any mesh member may mention a new workspace: past
/// this many, a new one is refused (`WORKSPACE_LIMIT`) until some are
/// removed, so a flood of mentions cannot fill the disk.
pub const WORKTREES_PER_DEFINITION_MAX: usize = 64;

/// How long one git call may run. Making a worktree checks out the whole
/// repository and runs its `post-checkout` hook, which can take minutes on
/// a large repository; past this, something hangs.
pub const GIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// `ensure` runs one at a time in a process: the checks (is the branch
/// free, is there room under the limit) and the `git worktree add` that
/// follows them must not interleave with another mention's.
static ENSURE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Branch names, when a definition names none, tried in this order as the
/// base of a new branch after `origin/HEAD`.
const DEFAULT_BASES: &[&str] = &["main", "master", "trunk"];

/// What can go wrong making, reading or removing a worktree. Each has a
/// stable code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorktreeError {
    /// The definition's directory is not in a git repository.
    #[error("{path} is not in a git repository")]
    NotARepository { path: PathBuf },
    /// Git refuses the workspace as a branch name.
    #[error("`{name}` is not a valid branch name: {reason}")]
    InvalidName { name: String, reason: String },
    /// The branch is checked out in another worktree (git allows one).
    #[error("branch `{branch}` is already checked out at {path}")]
    Busy { branch: String, path: PathBuf },
    /// Removal refused: uncommitted changes.
    #[error("{path} has uncommitted changes (use --force to remove it anyway)")]
    Dirty { path: PathBuf },
    /// Removal refused: commits that are on no other branch or remote.
    #[error(
        "{path} has {commits} commit(s) not merged into {base} (use --force to remove it anyway)"
    )]
    Unmerged {
        path: PathBuf,
        commits: u64,
        base: String,
    },
    /// No worktree of this definition for that workspace.
    #[error("no worktree for `{workspace}` under {root}")]
    NotFound { workspace: String, root: PathBuf },
    /// The definition has [`WORKTREES_PER_DEFINITION_MAX`] worktrees already.
    #[error(
        "@{definition} has {max} worktrees already; remove some with `scout workspaces remove`"
    )]
    Limit { definition: String, max: usize },
    /// Git failed; its message is kept.
    #[error("git {step} failed: {message}")]
    Git { step: String, message: String },
}

impl WorktreeError {
    /// The stable code of the error, as the API and CLI print it.
    pub fn code(&self) -> &'static str {
        match self {
            WorktreeError::NotARepository { .. } => "NOT_A_REPOSITORY",
            WorktreeError::InvalidName { .. } => "INVALID_NAME",
            WorktreeError::Busy { .. } => "WORKSPACE_BUSY",
            WorktreeError::Dirty { .. } => "WORKSPACE_DIRTY",
            WorktreeError::Unmerged { .. } => "WORKSPACE_UNMERGED",
            WorktreeError::NotFound { .. } => "NOT_FOUND",
            WorktreeError::Limit { .. } => "WORKSPACE_LIMIT",
            WorktreeError::Git { .. } => "GIT_FAILED",
        }
    }
}

/// One worktree Scout made, as git and the disk show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorktreeInfo {
    /// The definition it belongs to.
    pub definition: String,
    /// The branch, which is also the instance's workspace.
    pub branch: String,
    /// Where it is checked out.
    pub path: PathBuf,
    /// Whether it has uncommitted changes.
    pub dirty: bool,
    /// Commits on the branch that the base does not have.
    pub ahead: u64,
    /// Commits on the base that the branch does not have.
    pub behind: u64,
    /// The base compared against.
    pub base: String,
    /// Unix ms of the last commit or change to the index, whichever is later.
    pub last_activity_ms: u64,
}

/// The worktrees of one definition: its repository and the directory its
/// worktrees go in.
#[derive(Debug, Clone)]
pub struct Worktrees {
    /// Any directory in the definition's repository (its `cwd`).
    repo: PathBuf,
    /// `<root>/<definition>`.
    dir: PathBuf,
    definition: String,
    /// The branch new branches start from; the repository's default when
    /// `None`.
    base: Option<String>,
}

impl Worktrees {
    /// The worktrees of `definition`, whose repository contains `repo`,
    /// under `root`.
    pub fn new(root: &Path, definition: &Label, repo: &Path, base: Option<String>) -> Worktrees {
        Worktrees {
            repo: repo.to_path_buf(),
            dir: root.join(definition.as_str()),
            definition: definition.as_str().to_owned(),
            base,
        }
    }

    /// The definition these worktrees belong to.
    pub fn definition(&self) -> &str {
        &self.definition
    }

    /// Where the worktree of `workspace` is (made or not). A `/` in a branch
    /// becomes `+`, which the workspace grammar never allows, so two
    /// branches never share a directory.
    pub fn path_for(&self, workspace: &Workspace) -> PathBuf {
        self.dir.join(workspace.as_str().replace('/', "+"))
    }

    /// Makes (or finds) the worktree of `workspace`: an existing branch is
    /// checked out as it is, never reset; a new one starts from the base
    /// (from `origin/<branch>` when a remote has it). Returns its path.
    ///
    /// Safe to call again after any failure or crash: a worktree already at
    /// the path for that branch is the answer; a checkout a crash left
    /// unfinished (git's `initializing` lock) or whose directory is gone is
    /// unregistered and made again; an empty directory is replaced. Nothing
    /// that holds files git does not know is ever deleted: that is
    /// `WORKSPACE_BUSY`. Calls in this process run one at a time, so the
    /// limit and the checks hold against concurrent mentions.
    pub fn ensure(&self, workspace: &Workspace) -> Result<PathBuf, WorktreeError> {
        let _one_at_a_time = ENSURE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let top = self.toplevel()?;
        let branch = workspace.as_str();
        self.check_branch_name(&top, branch)?;
        let path = self.path_for(workspace);
        let path_text = path.to_string_lossy().into_owned();
        let listed = self.listed(&top)?;
        if let Some(found) = listed.iter().find(|w| w.branch.as_deref() == Some(branch)) {
            if !same_path(&found.path, &path) {
                return Err(WorktreeError::Busy {
                    branch: branch.to_owned(),
                    path: found.path.clone(),
                });
            }
            if !found.unfinished && !found.prunable {
                return Ok(path);
            }
            // Ours, at our path, and never finished or since deleted: its
            // registration goes, and it is made again below.
            git(
                &top,
                &["worktree", "remove", "--force", "--force", &path_text],
                "worktree remove",
            )?;
        } else if let Some(other) = listed.iter().find(|w| same_path(&w.path, &path)) {
            // Someone switched that worktree to another branch: its work is
            // theirs, never removed to make room.
            return Err(WorktreeError::Busy {
                branch: other
                    .branch
                    .clone()
                    .unwrap_or_else(|| "a detached HEAD".to_owned()),
                path,
            });
        }
        let ours = listed
            .iter()
            .filter(|w| self.is_ours(&top, &w.path) && w.branch.as_deref() != Some(branch))
            .count();
        if ours >= WORKTREES_PER_DEFINITION_MAX {
            return Err(WorktreeError::Limit {
                definition: self.definition.clone(),
                max: WORKTREES_PER_DEFINITION_MAX,
            });
        }
        if path.exists() && std::fs::remove_dir(&path).is_err() {
            return Err(WorktreeError::Busy {
                branch: "files git does not know".to_owned(),
                path,
            });
        }
        self.make_dir()?;
        let local = git_ok(
            &top,
            &[
                "show-ref",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ],
        );
        let remote = format!("origin/{branch}");
        let made = if local {
            git(
                &top,
                &["worktree", "add", &path_text, branch],
                "worktree add",
            )
        } else if git_ok(
            &top,
            &[
                "show-ref",
                "--verify",
                "--quiet",
                &format!("refs/remotes/{remote}"),
            ],
        ) {
            git(
                &top,
                &[
                    "worktree", "add", "--track", "-b", branch, &path_text, &remote,
                ],
                "worktree add",
            )
        } else {
            let base = self.base_ref(&top)?;
            git(
                &top,
                &[
                    "worktree",
                    "add",
                    "--no-track",
                    "-b",
                    branch,
                    &path_text,
                    &base,
                ],
                "worktree add",
            )
        };
        if let Err(err) = made {
            // Leave nothing half made behind: only what git registered at
            // our path, and the directory only when empty.
            let _ = git(
                &top,
                &["worktree", "remove", "--force", "--force", &path_text],
                "worktree remove",
            );
            let _ = std::fs::remove_dir(&path);
            return Err(err);
        }
        Ok(path)
    }

    /// Creates `<root>/<definition>` owner-only, refusing a symlink there (a
    /// root in a shared place must not lead git into someone else's
    /// directory).
    fn make_dir(&self) -> Result<(), WorktreeError> {
        use std::os::unix::fs::DirBuilderExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.dir)
            && meta.file_type().is_symlink()
        {
            return Err(WorktreeError::Busy {
                branch: "a symbolic link".to_owned(),
                path: self.dir.clone(),
            });
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|err| WorktreeError::Git {
                step: "worktree add".to_owned(),
                message: format!("cannot create {}: {err}", self.dir.display()),
            })
    }

    /// The worktrees Scout made for this definition, cheaply: each one's
    /// branch and the definition's working directory inside it (the same
    /// place relative to the repository's root, or the worktree's root when
    /// that branch lacks the directory). One git call. Worktrees whose
    /// checkout is unfinished or whose directory is gone are left out.
    pub fn checked_out(&self) -> Result<Vec<(String, PathBuf)>, WorktreeError> {
        let top = self.toplevel()?;
        let inside = self.inside(&top);
        Ok(self
            .listed(&top)?
            .into_iter()
            .filter(|listed| self.is_ours(&top, &listed.path) && listed.usable())
            .filter_map(|listed| Some((listed.branch?, cwd_in(&listed.path, &inside))))
            .collect())
    }

    /// Makes (or finds) the worktree of `workspace` and returns the
    /// definition's working directory inside it: the same place relative to
    /// the repository's root as the definition's own.
    pub fn ensure_cwd(&self, workspace: &Workspace) -> Result<PathBuf, WorktreeError> {
        let path = self.ensure(workspace)?;
        let top = self.toplevel()?;
        Ok(cwd_in(&path, &self.inside(&top)))
    }

    /// Where the definition's directory is relative to its repository's root.
    fn inside(&self, top: &Path) -> PathBuf {
        self.repo
            .canonicalize()
            .ok()
            .and_then(|repo| {
                let top = top.canonicalize().ok()?;
                repo.strip_prefix(&top).ok().map(Path::to_path_buf)
            })
            .unwrap_or_default()
    }

    /// Whether a worktree git lists is one of this definition's: under its
    /// directory, and never the repository's own checkout (a root pointed at
    /// the folder that holds the repositories would put it there).
    fn is_ours(&self, top: &Path, path: &Path) -> bool {
        !same_path(path, top) && (path.starts_with(&self.dir) || same_parent(path, &self.dir))
    }

    /// The worktrees Scout made for this definition, with their state. One
    /// that cannot be read shows as dirty and unmerged, so nothing acts on
    /// it as if it were clean.
    pub fn list(&self) -> Result<Vec<WorktreeInfo>, WorktreeError> {
        let top = self.toplevel()?;
        let base = self.base_ref(&top).unwrap_or_else(|_| "HEAD".to_owned());
        // `HEAD` inside a worktree is the worktree's own: compare against
        // the commit the repository's HEAD names.
        let base_commit = git(
            &top,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{base}^{{commit}}"),
            ],
            "rev-parse",
        )
        .map(|text| text.trim().to_owned())
        .unwrap_or(base.clone());
        let mut out = Vec::new();
        for listed in self.listed(&top)? {
            if !self.is_ours(&top, &listed.path) || !listed.usable() {
                continue;
            }
            let Some(branch) = listed.branch else {
                continue;
            };
            out.push(self.info(&listed.path, &branch, &base, &base_commit));
        }
        out.sort_by(|a, b| a.branch.cmp(&b.branch));
        Ok(out)
    }

    /// Removes the worktree of `workspace`. Without `force`, refuses one
    /// with uncommitted changes or with commits its base does not have.
    /// The branch is kept: its commits are the user's.
    pub fn remove(&self, workspace: &Workspace, force: bool) -> Result<PathBuf, WorktreeError> {
        let found = self
            .list()?
            .into_iter()
            .find(|info| info.branch == workspace.as_str())
            .ok_or_else(|| WorktreeError::NotFound {
                workspace: workspace.as_str().to_owned(),
                root: self.dir.clone(),
            })?;
        self.remove_found(found, force)
    }

    /// Removes a worktree [`Worktrees::list`] returned, with the same
    /// refusals as [`Worktrees::remove`].
    pub fn remove_found(&self, found: WorktreeInfo, force: bool) -> Result<PathBuf, WorktreeError> {
        if !force {
            if found.dirty {
                return Err(WorktreeError::Dirty { path: found.path });
            }
            if found.ahead > 0 {
                return Err(WorktreeError::Unmerged {
                    path: found.path,
                    commits: found.ahead,
                    base: found.base,
                });
            }
        }
        let top = self.toplevel()?;
        let path_text = found.path.to_string_lossy().into_owned();
        let mut args = vec!["worktree", "remove"];
        if force {
            args.push("--force");
        }
        args.push(&path_text);
        git(&top, &args, "worktree remove")?;
        Ok(found.path)
    }

    /// The worktrees an idle cleanup may remove: clean, with nothing the
    /// base lacks, and no activity since `older_than_ms`.
    pub fn idle(&self, older_than_ms: u64) -> Result<Vec<WorktreeInfo>, WorktreeError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|info| !info.dirty && info.ahead == 0 && info.last_activity_ms < older_than_ms)
            .collect())
    }

    fn info(&self, path: &Path, branch: &str, base: &str, base_commit: &str) -> WorktreeInfo {
        // Unreadable means dirty and unmerged: nothing removes it as clean.
        let dirty = git(path, &["status", "--porcelain"], "status")
            .map_or(true, |status| !status.trim().is_empty());
        let counts = git(
            path,
            &[
                "rev-list",
                "--left-right",
                "--count",
                &format!("{base_commit}...HEAD"),
            ],
            "rev-list",
        )
        .ok()
        .and_then(|counts| {
            let mut parts = counts.split_whitespace().map(|n| n.parse::<u64>().ok());
            Some((parts.next()??, parts.next()??))
        });
        let (behind, ahead) = counts.unwrap_or((0, u64::MAX));
        let committed_s = git(path, &["log", "-1", "--format=%ct"], "log")
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let touched_ms = git(path, &["rev-parse", "--git-dir"], "rev-parse")
            .ok()
            .map(|dir| {
                let dir = PathBuf::from(dir.trim());
                if dir.is_absolute() {
                    dir
                } else {
                    path.join(dir)
                }
            })
            .and_then(|dir| std::fs::metadata(dir.join("index")).ok())
            .and_then(|meta| meta.modified().ok())
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        WorktreeInfo {
            definition: self.definition.clone(),
            branch: branch.to_owned(),
            path: path.to_path_buf(),
            dirty,
            ahead,
            behind,
            base: base.to_owned(),
            last_activity_ms: touched_ms.max(committed_s.saturating_mul(1000)),
        }
    }

    fn toplevel(&self) -> Result<PathBuf, WorktreeError> {
        git(&self.repo, &["rev-parse", "--show-toplevel"], "rev-parse")
            .map(|text| PathBuf::from(text.trim()))
            .map_err(|_| WorktreeError::NotARepository {
                path: self.repo.clone(),
            })
    }

    /// Git must take the name as a branch, and the branch must not shadow
    /// what the name already means: a tag, or a remote's branch
    /// (`origin/main` as a local branch would hide the remote one from
    /// every later `git rebase origin/main`).
    fn check_branch_name(&self, top: &Path, branch: &str) -> Result<(), WorktreeError> {
        let invalid = |reason: String| WorktreeError::InvalidName {
            name: branch.to_owned(),
            reason,
        };
        match git(
            top,
            &["check-ref-format", "--branch", branch],
            "check-ref-format",
        ) {
            Ok(_) => {}
            Err(WorktreeError::Git { message, .. }) => {
                return Err(invalid(if message.is_empty() {
                    "git does not accept it as a branch".to_owned()
                } else {
                    message
                }));
            }
            Err(other) => return Err(other),
        }
        if git_ok(
            top,
            &[
                "show-ref",
                "--verify",
                "--quiet",
                &format!("refs/tags/{branch}"),
            ],
        ) {
            return Err(invalid("a tag has that name".to_owned()));
        }
        let remotes = git(top, &["remote"], "remote").unwrap_or_default();
        if let Some(remote) = remotes
            .lines()
            .map(str::trim)
            .find(|remote| !remote.is_empty() && branch.starts_with(&format!("{remote}/")))
        {
            return Err(invalid(format!(
                "it would hide the branches of remote `{remote}`"
            )));
        }
        Ok(())
    }

    /// The base of a new branch: the definition's, else `origin/HEAD`, else
    /// the first of [`DEFAULT_BASES`] that exists, else `HEAD`.
    fn base_ref(&self, top: &Path) -> Result<String, WorktreeError> {
        if let Some(base) = &self.base {
            return Ok(base.clone());
        }
        if let Ok(remote_head) = git(
            top,
            &[
                "symbolic-ref",
                "--quiet",
                "--short",
                "refs/remotes/origin/HEAD",
            ],
            "symbolic-ref",
        ) {
            return Ok(remote_head.trim().to_owned());
        }
        for candidate in DEFAULT_BASES {
            if git_ok(
                top,
                &[
                    "show-ref",
                    "--verify",
                    "--quiet",
                    &format!("refs/heads/{candidate}"),
                ],
            ) {
                return Ok((*candidate).to_owned());
            }
        }
        Ok("HEAD".to_owned())
    }

    fn listed(&self, top: &Path) -> Result<Vec<Listed>, WorktreeError> {
        let text = git(top, &["worktree", "list", "--porcelain"], "worktree list")?;
        Ok(parse_porcelain(&text))
    }
}

/// Why a worktree named by its instance cannot be removed here, before
/// git is asked: the name, the node, or the definition. Each has a stable
/// code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InstanceError {
    /// Not an agent name.
    #[error("{0}")]
    InvalidName(String),
    /// The name has no workspace, so it names no worktree.
    #[error("`{name}` names no workspace; say which one, as in `@{definition}#feature-x`")]
    NoWorkspace { name: String, definition: String },
    /// The name is another node's.
    #[error("`{name}` lives on {node}; remove it there")]
    NotLocal { name: String, node: String },
    /// No agent of that definition makes worktrees on this machine.
    #[error(
        "no agent `@{definition}` on this machine makes worktrees (add one with `scout agents add {definition} --worktrees …`)"
    )]
    NoDefinition { definition: String },
}

impl InstanceError {
    /// The stable code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            InstanceError::InvalidName(_) | InstanceError::NoWorkspace { .. } => "INVALID_NAME",
            InstanceError::NotLocal { .. } => "NOT_LOCAL",
            InstanceError::NoDefinition { .. } => "NOT_FOUND",
        }
    }
}

/// The worktree an instance name means on this machine: `@fabric#feature-x`
/// or `@fabric@<this node>#feature-x`, among `agents` (this machine's, as
/// discovered).
#[derive(Debug, Clone)]
pub struct NamedWorktree {
    /// The definition's worktrees.
    pub worktrees: Worktrees,
    /// The workspace (the branch).
    pub workspace: Workspace,
    /// The instance's full name, with this node.
    pub instance: String,
}

impl NamedWorktree {
    /// Finds the worktrees of `instance`'s definition among `agents`.
    pub fn find(
        agents: &[crate::config::discover::LocalAgent],
        node_name: &str,
        instance: &str,
    ) -> Result<NamedWorktree, InstanceError> {
        let name = scout_mesh::names::AgentName::parse_lenient(instance)
            .map_err(|err| InstanceError::InvalidName(err.to_string()))?;
        let Some(workspace) = name.workspace().cloned() else {
            return Err(InstanceError::NoWorkspace {
                name: instance.to_owned(),
                definition: name.definition().to_string(),
            });
        };
        if let Some(node) = name.node()
            && node.as_str() != node_name
        {
            return Err(InstanceError::NotLocal {
                name: name.to_string(),
                node: node.to_string(),
            });
        }
        let worktrees = agents
            .iter()
            .filter(|agent| agent.definition == *name.definition())
            .find_map(crate::config::discover::LocalAgent::worktrees)
            .ok_or_else(|| InstanceError::NoDefinition {
                definition: name.definition().to_string(),
            })?;
        Ok(NamedWorktree {
            worktrees,
            instance: format!("@{}@{node_name}#{workspace}", name.definition()),
            workspace,
        })
    }

    /// Whether its worktree exists (one Scout made, checked out).
    pub fn exists(&self) -> Result<bool, WorktreeError> {
        Ok(self
            .worktrees
            .checked_out()?
            .iter()
            .any(|(branch, _)| branch == self.workspace.as_str()))
    }

    /// Removes it, with [`Worktrees::remove`]'s refusals unless `force`.
    pub fn remove(&self, force: bool) -> Result<PathBuf, WorktreeError> {
        self.worktrees.remove(&self.workspace, force)
    }
}

/// One entry of `git worktree list --porcelain`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Listed {
    path: PathBuf,
    branch: Option<String>,
    /// Locked by `git worktree add` while it checks out: a crash left it
    /// half made.
    unfinished: bool,
    /// Its directory is gone.
    prunable: bool,
}

impl Listed {
    /// A finished checkout whose directory exists.
    fn usable(&self) -> bool {
        !self.unfinished && !self.prunable
    }
}

fn parse_porcelain(text: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut current: Option<Listed> = None;
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("worktree ") {
            out.extend(current.take());
            current = Some(Listed {
                path: PathBuf::from(path),
                ..Listed::default()
            });
            continue;
        }
        let Some(entry) = current.as_mut() else {
            continue;
        };
        if let Some(branch) = line.strip_prefix("branch refs/heads/") {
            entry.branch = Some(branch.to_owned());
        } else if line == "locked initializing" {
            entry.unfinished = true;
        } else if line == "prunable" || line.starts_with("prunable ") {
            entry.prunable = true;
        }
    }
    out.extend(current);
    out
}

/// The definition's directory inside a worktree, or the worktree itself
/// when that branch has no such directory.
fn cwd_in(worktree: &Path, inside: &Path) -> PathBuf {
    let cwd = worktree.join(inside);
    if cwd.is_dir() {
        cwd
    } else {
        worktree.to_path_buf()
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Whether `path` is directly inside `dir` once both are canonical (git
/// prints canonical paths; the root may be reached through a symlink).
fn same_parent(path: &Path, dir: &Path) -> bool {
    match (path.parent().map(Path::canonicalize), dir.canonicalize()) {
        (Some(Ok(parent)), Ok(dir)) => parent == dir,
        _ => false,
    }
}

/// Runs `git -C dir args…` (see [`crate::git::run`]): its standard output
/// (at most [`GIT_OUTPUT_BYTES_MAX`] bytes), or its error message, killed
/// after [`GIT_TIMEOUT`].
fn git(dir: &Path, args: &[&str], step: &str) -> Result<String, WorktreeError> {
    crate::git::run(dir, args, &[], GIT_TIMEOUT, GIT_OUTPUT_BYTES_MAX)
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .map_err(|message| WorktreeError::Git {
            step: step.to_owned(),
            message,
        })
}

fn git_ok(dir: &Path, args: &[&str]) -> bool {
    git(dir, args, "check").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    /// A repository on `main` with one commit.
    fn repository(dir: &Path) -> PathBuf {
        let repo = dir.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        run(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("README"), "hello\n").unwrap();
        run(&repo, &["add", "README"]);
        run(&repo, &["commit", "-q", "-m", "first"]);
        repo
    }

    fn worktrees(dir: &Path, repo: &Path) -> Worktrees {
        Worktrees::new(
            &dir.join("worktrees"),
            &Label::parse("fabric", scout_mesh::names::NamePart::Definition).unwrap(),
            repo,
            None,
        )
    }

    fn workspace(name: &str) -> Workspace {
        Workspace::parse(name).unwrap()
    }

    #[test]
    fn ensure_makes_a_worktree_once_and_lists_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let trees = worktrees(dir.path(), &repo);
        let path = trees.ensure(&workspace("feature/x")).unwrap();
        assert!(
            path.ends_with("worktrees/fabric/feature+x"),
            "{}",
            path.display()
        );
        assert!(path.join("README").is_file());
        assert_eq!(trees.ensure(&workspace("feature/x")).unwrap(), path);
        let listed = trees.list().unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].branch, "feature/x");
        assert_eq!(listed[0].base, "main");
        assert!(!listed[0].dirty);
        assert_eq!((listed[0].ahead, listed[0].behind), (0, 0));
    }

    #[test]
    fn an_existing_branch_is_checked_out_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        run(&repo, &["checkout", "-q", "-b", "older"]);
        std::fs::write(repo.join("NOTES"), "kept\n").unwrap();
        run(&repo, &["add", "NOTES"]);
        run(&repo, &["commit", "-q", "-m", "notes"]);
        run(&repo, &["checkout", "-q", "main"]);
        let trees = worktrees(dir.path(), &repo);
        let path = trees.ensure(&workspace("older")).unwrap();
        assert!(path.join("NOTES").is_file());
        let listed = trees.list().unwrap();
        assert_eq!(listed[0].ahead, 1);
    }

    #[test]
    fn a_branch_checked_out_elsewhere_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let trees = worktrees(dir.path(), &repo);
        let err = trees.ensure(&workspace("main")).unwrap_err();
        assert_eq!(err.code(), "WORKSPACE_BUSY", "{err}");
        assert!(err.to_string().contains("repo"), "{err}");
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let err = worktrees(dir.path(), &plain)
            .ensure(&workspace("x"))
            .unwrap_err();
        assert_eq!(err.code(), "NOT_A_REPOSITORY", "{err}");

        let repo = repository(dir.path());
        let trees = worktrees(dir.path(), &repo);
        // The workspace grammar follows git's rules for branch names, but
        // git also refuses a branch named `HEAD`.
        let err = trees.ensure(&workspace("HEAD")).unwrap_err();
        assert_eq!(err.code(), "INVALID_NAME", "{err}");
        assert!(trees.list().unwrap().is_empty());
    }

    #[test]
    fn a_worktree_switched_to_another_branch_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let trees = worktrees(dir.path(), &repo);
        let path = trees.ensure(&workspace("v")).unwrap();
        run(&path, &["checkout", "-q", "-b", "elsewhere"]);
        std::fs::write(path.join("work"), "mine\n").unwrap();
        let err = trees.ensure(&workspace("v")).unwrap_err();
        assert_eq!(err.code(), "WORKSPACE_BUSY", "{err}");
        assert!(path.join("work").is_file());
    }

    #[test]
    fn an_empty_directory_is_replaced_and_unknown_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let trees = worktrees(dir.path(), &repo);
        let path = trees.path_for(&workspace("y"));
        std::fs::create_dir_all(&path).unwrap();
        assert_eq!(trees.ensure(&workspace("y")).unwrap(), path);
        assert!(path.join("README").is_file());

        let other = trees.path_for(&workspace("z"));
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes"), "mine").unwrap();
        let err = trees.ensure(&workspace("z")).unwrap_err();
        assert_eq!(err.code(), "WORKSPACE_BUSY", "{err}");
        assert!(other.join("notes").is_file());
    }

    #[test]
    fn a_symlinked_definition_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::create_dir_all(dir.path().join("worktrees")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("worktrees/fabric")).unwrap();
        let err = worktrees(dir.path(), &repo)
            .ensure(&workspace("s"))
            .unwrap_err();
        assert_eq!(err.code(), "WORKSPACE_BUSY", "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn remove_refuses_dirty_or_unmerged_work_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let trees = worktrees(dir.path(), &repo);
        let path = trees.ensure(&workspace("z")).unwrap();
        std::fs::write(path.join("README"), "changed\n").unwrap();
        let err = trees.remove(&workspace("z"), false).unwrap_err();
        assert_eq!(err.code(), "WORKSPACE_DIRTY", "{err}");
        run(&path, &["commit", "-q", "-am", "change"]);
        let err = trees.remove(&workspace("z"), false).unwrap_err();
        assert_eq!(err.code(), "WORKSPACE_UNMERGED", "{err}");
        assert!(trees.idle(u64::MAX).unwrap().is_empty());
        assert_eq!(trees.remove(&workspace("z"), true).unwrap(), path);
        assert!(!path.exists());
        assert!(trees.list().unwrap().is_empty());
        let err = trees.remove(&workspace("z"), false).unwrap_err();
        assert_eq!(err.code(), "NOT_FOUND", "{err}");

        // A clean, merged worktree is what idle cleanup may take.
        trees.ensure(&workspace("w")).unwrap();
        assert_eq!(trees.idle(u64::MAX).unwrap().len(), 1);
        assert!(trees.idle(0).unwrap().is_empty());
        trees.remove(&workspace("w"), false).unwrap();
    }

    #[test]
    fn a_definition_has_a_bounded_number_of_worktrees() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let trees = worktrees(dir.path(), &repo);
        for n in 0..WORKTREES_PER_DEFINITION_MAX {
            trees.ensure(&workspace(&format!("t{n}"))).unwrap();
        }
        let err = trees.ensure(&workspace("one-more")).unwrap_err();
        assert_eq!(err.code(), "WORKSPACE_LIMIT", "{err}");
        // The ones it has are still found.
        trees.ensure(&workspace("t0")).unwrap();
    }

    #[test]
    fn porcelain_parses_detached_locked_and_prunable_entries() {
        let text = "worktree /r\nHEAD abc\nbranch refs/heads/main\n\n\
                    worktree /w\nHEAD def\ndetached\n\n\
                    worktree /x\nHEAD 123\nbranch refs/heads/x\nlocked initializing\n\n\
                    worktree /y\nHEAD 456\nbranch refs/heads/y\nprunable gitdir file points to non-existent location\n\n";
        let listed = parse_porcelain(text);
        assert_eq!(listed.len(), 4);
        assert_eq!(listed[0].branch.as_deref(), Some("main"));
        assert!(listed[0].usable());
        assert_eq!(listed[1].branch, None);
        assert!(listed[2].unfinished && !listed[2].usable());
        assert!(listed[3].prunable && !listed[3].usable());
    }

    #[test]
    fn names_that_would_shadow_a_tag_or_a_remote_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        run(&repo, &["tag", "v1"]);
        run(
            &repo,
            &["remote", "add", "origin", "https://example.invalid/r.git"],
        );
        let trees = worktrees(dir.path(), &repo);
        for name in ["v1", "origin/main"] {
            let err = trees.ensure(&workspace(name)).unwrap_err();
            assert_eq!(err.code(), "INVALID_NAME", "{name}: {err}");
        }
        assert!(trees.list().unwrap().is_empty());
    }

    #[test]
    fn a_deleted_or_unfinished_worktree_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let trees = worktrees(dir.path(), &repo);
        let path = trees.ensure(&workspace("gone")).unwrap();
        std::fs::remove_dir_all(&path).unwrap();
        assert!(
            trees.checked_out().unwrap().is_empty(),
            "a ghost is no instance"
        );
        assert_eq!(trees.ensure(&workspace("gone")).unwrap(), path);
        assert!(path.join("README").is_file());
        // A crash during `git worktree add` leaves the checkout locked as
        // initializing.
        run(
            &repo,
            &[
                "worktree",
                "lock",
                "--reason",
                "initializing",
                path.to_str().unwrap(),
            ],
        );
        assert!(trees.checked_out().unwrap().is_empty());
        assert_eq!(trees.ensure(&workspace("gone")).unwrap(), path);
        assert_eq!(trees.checked_out().unwrap().len(), 1);
    }

    #[test]
    fn the_repositorys_own_checkout_is_never_one_of_its_worktrees() {
        // A root pointed at the folder that holds the repositories puts the
        // repository itself where a definition's worktrees go.
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let trees = Worktrees::new(
            dir.path(),
            &Label::parse("repo", scout_mesh::names::NamePart::Definition).unwrap(),
            &repo,
            None,
        );
        assert!(trees.list().unwrap().is_empty());
        // Its files are never deleted to make room for a workspace.
        std::fs::create_dir_all(repo.join("src")).unwrap();
        std::fs::write(repo.join("src/lib.rs"), "keep").unwrap();
        let err = trees.ensure(&workspace("src")).unwrap_err();
        assert_eq!(err.code(), "WORKSPACE_BUSY", "{err}");
        assert!(repo.join("src/lib.rs").is_file());
    }
}
