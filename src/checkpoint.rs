//! Checkpoints of a git worktree: what its files were before an agent ran
//! `execute` work in it (or before another risky action), so a person can
//! see what changed since and bring the files back.
//!
//! A checkpoint is one commit whose tree is the worktree as it is on disk
//! (tracked files with their changes, and untracked files that are not
//! ignored) and whose parent is `HEAD`, kept under
//! `refs/scout/checkpoints/<id>`. It is built through a temporary index
//! (`GIT_INDEX_FILE`), so the user's index, `HEAD`, branches, the stash
//! list and the working tree are never touched; restoring writes files
//! through another temporary index (`read-tree` + `checkout-index`), so
//! again only the working tree's files change.
//!
//! Every git call runs the real `git` program directly (never a shell),
//! with a bounded time and bounded output; ids and commits are checked
//! before they reach git's command line.

use std::path::{Path, PathBuf};

use std::time::Duration;

/// The namespace of checkpoint refs; outside `refs/heads` and `refs/tags`,
/// so no branch list, `git log --all`-less view or push of branches shows
/// them, and git keeps their commits from garbage collection.
pub const CHECKPOINT_REF_PREFIX: &str = "refs/scout/checkpoints/";

/// Longest checkpoint id accepted: flight ids are uuid strings (36 bytes);
/// the room above is for ids of other actions, bounded so a ref name stays
/// far below file-system name limits.
pub const CHECKPOINT_ID_BYTES_MAX: usize = 128;

/// How long one git call of a checkpoint may run. Adding a worktree's
/// changes to a temporary index hashes every changed file, seconds on a
/// large repository; past this, a filter or a file system hangs, and the
/// work it stands in front of goes on without a checkpoint.
pub const CHECKPOINT_GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Bytes of a diff returned at most: enough to read a typical change in
/// full; a bigger one is cut (and says so) rather than filling memory and
/// the caller's terminal.
pub const CHECKPOINT_DIFF_BYTES_MAX: usize = 256 * 1024;

/// Bytes of git's ordinary output read at most per call (ids, counts and
/// name lists): bounded for a hostile repository.
const GIT_OUTPUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The identity checkpoint commits are written with, so a checkpoint never
/// fails on a machine where the user configured no name or email.
const CHECKPOINT_AUTHOR_NAME: &str = "scout";
const CHECKPOINT_AUTHOR_EMAIL: &str = "scout@localhost";

/// What can go wrong making, reading or restoring a checkpoint. Each has a
/// stable code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// The directory is not inside a git worktree: there is nothing to
    /// checkpoint (not an error for an execution, which goes on).
    #[error("{} is not in a git worktree", path.display())]
    NotARepository { path: PathBuf },
    /// The workspace directory no longer exists.
    #[error("the workspace {} no longer exists", path.display())]
    WorkspaceGone { path: PathBuf },
    /// The id cannot name a ref.
    #[error("`{id}` cannot be a checkpoint id: {reason}")]
    InvalidId { id: String, reason: &'static str },
    /// The commit named is not a commit of this repository (or not a hex
    /// object name at all).
    #[error("commit {commit} is not in the repository at {}", path.display())]
    CommitMissing { commit: String, path: PathBuf },
    /// Git failed; its own message says why.
    #[error("git {step} failed: {message}")]
    Git { step: String, message: String },
    /// Reading or writing a file around git failed.
    #[error("{step}: {message}")]
    Io { step: String, message: String },
}

impl CheckpointError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            CheckpointError::NotARepository { .. } => "NOT_A_REPOSITORY",
            CheckpointError::WorkspaceGone { .. } => "WORKSPACE_GONE",
            CheckpointError::InvalidId { .. } => "INVALID_ID",
            CheckpointError::CommitMissing { .. } => "CHECKPOINT_COMMIT_MISSING",
            CheckpointError::Git { .. } => "GIT_FAILED",
            CheckpointError::Io { .. } => "CHECKPOINT_IO",
        }
    }
}

/// A checkpoint made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its id (a flight id, or the id of the action it precedes).
    pub id: String,
    /// The top of the worktree it was taken of.
    pub workspace: PathBuf,
    /// The ref that keeps it (`refs/scout/checkpoints/<id>`).
    pub ref_name: String,
    /// The checkpoint commit.
    pub commit: String,
    /// `HEAD` when it was taken (`None` on a branch with no commit yet).
    pub head: Option<String>,
    /// Files that differ between `HEAD` and the checkpoint (changed,
    /// added, deleted, untracked).
    pub files_changed: u64,
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Files that differed from the checkpoint and were written back.
    pub files_restored: u64,
    /// Files made after the checkpoint that were removed (`clean` only).
    pub files_removed: u64,
}

/// A diff between a checkpoint and the worktree now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointDiff {
    /// `git diff --stat` and the patch, from the checkpoint to now.
    pub text: String,
    /// The diff was longer than [`CHECKPOINT_DIFF_BYTES_MAX`] and was cut.
    pub truncated: bool,
}

/// Checks that `id` can name a checkpoint ref: ASCII letters, digits, `-`
/// and `_`, not starting with `-`, at most [`CHECKPOINT_ID_BYTES_MAX`]
/// bytes. A uuid passes; nothing that git would read as an option, a path
/// step or a revision expression does.
pub fn check_id(id: &str) -> Result<(), CheckpointError> {
    let invalid = |reason| CheckpointError::InvalidId {
        id: id.chars().take(CHECKPOINT_ID_BYTES_MAX).collect(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id.len() > CHECKPOINT_ID_BYTES_MAX {
        return Err(invalid("it is too long"));
    }
    if id.starts_with('-') {
        return Err(invalid("it starts with `-`"));
    }
    if !id
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    {
        return Err(invalid("only letters, digits, `-` and `_` are allowed"));
    }
    Ok(())
}

/// The ref a checkpoint `id` is kept under (the id must pass [`check_id`]).
pub fn ref_name(id: &str) -> String {
    format!("{CHECKPOINT_REF_PREFIX}{id}")
}

/// Records a checkpoint of the worktree that contains `workspace` under
/// `id`, without touching its index, `HEAD`, branches, stash list or
/// files. A clean worktree gets one too (its tree is `HEAD`'s), so a
/// restore is always possible. Blocking: run it off async workers.
pub fn checkpoint(workspace: &Path, id: &str) -> Result<Checkpoint, CheckpointError> {
    check_id(id)?;
    let top = toplevel(workspace)?;
    let head = head(&top)?;
    let tree = snapshot_tree(&top)?;
    let message = format!("scout checkpoint {id}");
    let mut args = vec!["commit-tree", tree.as_str(), "-m", message.as_str()];
    if let Some(head) = head.as_deref() {
        args.extend(["-p", head]);
    }
    let commit = git(&top, &args, &[], "commit-tree")?.trim().to_owned();
    let ref_name = ref_name(id);
    git(
        &top,
        &["update-ref", "-m", &message, &ref_name, &commit],
        &[],
        "update-ref",
    )?;
    let base = match head.as_deref() {
        Some(head) => head.to_owned(),
        None => empty_tree(&top)?,
    };
    let files_changed = count_changed(&top, &base, &commit)?;
    Ok(Checkpoint {
        id: id.to_owned(),
        workspace: top,
        ref_name,
        commit,
        head,
        files_changed,
    })
}

/// The diff from checkpoint `commit` to the worktree as it is now
/// (untracked files included), a summary first, cut at
/// [`CHECKPOINT_DIFF_BYTES_MAX`].
pub fn diff(workspace: &Path, commit: &str) -> Result<CheckpointDiff, CheckpointError> {
    let top = toplevel(workspace)?;
    check_commit(&top, commit)?;
    let now = snapshot_tree(&top)?;
    let (bytes, truncated) = git_bounded(
        &top,
        &[
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--stat",
            "--patch",
            commit,
            &now,
        ],
        &[],
        "diff",
        CHECKPOINT_DIFF_BYTES_MAX,
    )?;
    Ok(CheckpointDiff {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        truncated,
    })
}

/// Brings the worktree's files back to checkpoint `commit`: every file the
/// checkpoint holds (tracked or untracked when it was taken) is written as
/// it was. Files made since are left alone, unless `clean`, which removes
/// them (ignored files are never touched). `HEAD`, the index and the stash
/// list stay as they are.
pub fn restore(workspace: &Path, commit: &str, clean: bool) -> Result<Restored, CheckpointError> {
    let top = toplevel(workspace)?;
    check_commit(&top, commit)?;
    let now = snapshot_tree(&top)?;
    let files_restored = count_changed_filtered(&top, &now, commit, "ACMRT")?;
    let mut files_removed = 0;
    if clean {
        let added = git(
            &top,
            &[
                "diff-tree",
                "-r",
                "-z",
                "--no-renames",
                "--name-only",
                "--diff-filter=A",
                commit,
                &now,
            ],
            &[],
            "diff-tree",
        )?;
        for name in added.split('\0').filter(|name| !name.is_empty()) {
            remove_inside(&top, name)?;
            files_removed += 1;
        }
    }
    let index = TempIndex::new(&top)?;
    let env = [("GIT_INDEX_FILE", index.path())];
    git(&top, &["read-tree", commit], &env, "read-tree")?;
    git(
        &top,
        &["checkout-index", "-a", "-f"],
        &env,
        "checkout-index",
    )?;
    Ok(Restored {
        files_restored,
        files_removed,
    })
}

/// Deletes the ref of checkpoint `id` in the worktree containing
/// `workspace`, so git may collect its commit; a ref that is gone already
/// is no error.
pub fn drop_checkpoint(workspace: &Path, id: &str) -> Result<(), CheckpointError> {
    check_id(id)?;
    let top = toplevel(workspace)?;
    let ref_name = ref_name(id);
    let exists = git(
        &top,
        &["rev-parse", "--verify", "--quiet", &ref_name],
        &[],
        "rev-parse",
    );
    if exists.is_err() {
        return Ok(());
    }
    git(&top, &["update-ref", "-d", &ref_name], &[], "update-ref")?;
    Ok(())
}

/// Removes the file `name` (a path git listed, relative to `top`), only
/// when it is inside `top` through no symbolic link: a path crafted to
/// leave the worktree is refused.
fn remove_inside(top: &Path, name: &str) -> Result<(), CheckpointError> {
    let io = |message: String| CheckpointError::Io {
        step: format!("cannot remove {name}"),
        message,
    };
    let relative = Path::new(name);
    if relative.is_absolute()
        || relative
            .components()
            .any(|part| !matches!(part, std::path::Component::Normal(_)))
    {
        return Err(io("not a plain relative path".into()));
    }
    let path = top.join(relative);
    let parent = path
        .parent()
        .ok_or_else(|| io("no parent directory".into()))?;
    match parent.canonicalize() {
        Ok(parent) if parent.starts_with(top) => {}
        Ok(_) => return Err(io("its directory leaves the worktree".into())),
        // Gone already: nothing to remove.
        Err(_) => return Ok(()),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io(err.to_string())),
    }
}

/// The canonical top directory of the worktree containing `dir`.
fn toplevel(dir: &Path) -> Result<PathBuf, CheckpointError> {
    if !dir.is_dir() {
        return Err(CheckpointError::WorkspaceGone {
            path: dir.to_owned(),
        });
    }
    match git(dir, &["rev-parse", "--show-toplevel"], &[], "rev-parse") {
        Ok(out) => {
            let top = PathBuf::from(out.trim_end_matches('\n'));
            top.canonicalize().map_err(|err| CheckpointError::Io {
                step: format!("cannot resolve {}", top.display()),
                message: err.to_string(),
            })
        }
        // A bare repository, or none: either way no worktree to keep.
        Err(CheckpointError::Git { .. }) => Err(CheckpointError::NotARepository {
            path: dir.to_owned(),
        }),
        Err(other) => Err(other),
    }
}

/// `HEAD`'s commit, or `None` on a branch with no commit yet.
fn head(top: &Path) -> Result<Option<String>, CheckpointError> {
    match git(
        top,
        &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
        &[],
        "rev-parse",
    ) {
        Ok(out) => Ok(Some(out.trim().to_owned())),
        Err(CheckpointError::Git { .. }) => Ok(None),
        Err(other) => Err(other),
    }
}

/// The empty tree's id in this repository's hash.
fn empty_tree(top: &Path) -> Result<String, CheckpointError> {
    Ok(git(
        top,
        &["hash-object", "-t", "tree", "--stdin"],
        &[],
        "hash-object",
    )?
    .trim()
    .to_owned())
}

/// Checks that `commit` is a hex object name of a commit in the repository.
fn check_commit(top: &Path, commit: &str) -> Result<(), CheckpointError> {
    let missing = || CheckpointError::CommitMissing {
        commit: commit.chars().take(64).collect(),
        path: top.to_owned(),
    };
    let hex = matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return Err(missing());
    }
    let object = format!("{commit}^{{commit}}");
    match git(top, &["cat-file", "-e", &object], &[], "cat-file") {
        Ok(_) => Ok(()),
        Err(CheckpointError::Git { .. }) => Err(missing()),
        Err(other) => Err(other),
    }
}

/// The worktree's files as a tree object (tracked files as they are on
/// disk, untracked files that are not ignored), written through a
/// temporary index so the user's index is left as it is.
fn snapshot_tree(top: &Path) -> Result<String, CheckpointError> {
    let index = TempIndex::new(top)?;
    let env = [("GIT_INDEX_FILE", index.path())];
    git(top, &["add", "--all", "--", "."], &env, "add")?;
    Ok(git(top, &["write-tree"], &env, "write-tree")?
        .trim()
        .to_owned())
}

/// Files that differ between two trees (or commits).
fn count_changed(top: &Path, from: &str, to: &str) -> Result<u64, CheckpointError> {
    count_changed_filtered(top, from, to, "ACDMRTUXB")
}

fn count_changed_filtered(
    top: &Path,
    from: &str,
    to: &str,
    filter: &str,
) -> Result<u64, CheckpointError> {
    let filter = format!("--diff-filter={filter}");
    let names = git(
        top,
        &[
            "diff-tree",
            "-r",
            "-z",
            "--no-renames",
            "--name-only",
            &filter,
            from,
            to,
        ],
        &[],
        "diff-tree",
    )?;
    Ok(names.split('\0').filter(|name| !name.is_empty()).count() as u64)
}

/// A temporary index file in the repository's git directory, started as a
/// copy of the real index (so unchanged files are not hashed again), and
/// removed when dropped.
struct TempIndex {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempIndex {
    fn new(top: &Path) -> Result<TempIndex, CheckpointError> {
        let io = |step: &str, err: std::io::Error| CheckpointError::Io {
            step: step.to_owned(),
            message: err.to_string(),
        };
        let dir = tempfile::Builder::new()
            .prefix("scout-checkpoint-")
            .tempdir()
            .map_err(|err| io("cannot make a temporary index directory", err))?;
        let path = dir.path().join("index");
        let real = git(
            top,
            &["rev-parse", "--path-format=absolute", "--git-path", "index"],
            &[],
            "rev-parse",
        )?;
        let real = PathBuf::from(real.trim_end_matches('\n'));
        if real.is_file() {
            std::fs::copy(&real, &path).map_err(|err| io("cannot copy the index", err))?;
        }
        Ok(TempIndex { dir, path })
    }

    fn path(&self) -> &Path {
        debug_assert!(self.path.starts_with(self.dir.path()));
        &self.path
    }
}

/// Runs `git -C dir args…` with `env` and returns its output as text; see
/// [`git_bounded`].
fn git(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
    step: &str,
) -> Result<String, CheckpointError> {
    let (bytes, _) = git_bounded(dir, args, env, step, GIT_OUTPUT_BYTES_MAX)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs the real `git` in `dir` (see [`crate::git::run`]) as the checkpoint
/// identity, with `env` set, killed after [`CHECKPOINT_GIT_TIMEOUT`].
/// Returns at most `output_max` bytes of its output and whether there was
/// more.
fn git_bounded(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
    step: &str,
    output_max: usize,
) -> Result<(Vec<u8>, bool), CheckpointError> {
    let mut all: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("GIT_AUTHOR_NAME", CHECKPOINT_AUTHOR_NAME.as_ref()),
        ("GIT_AUTHOR_EMAIL", CHECKPOINT_AUTHOR_EMAIL.as_ref()),
        ("GIT_COMMITTER_NAME", CHECKPOINT_AUTHOR_NAME.as_ref()),
        ("GIT_COMMITTER_EMAIL", CHECKPOINT_AUTHOR_EMAIL.as_ref()),
    ];
    all.extend(env.iter().map(|(name, value)| (*name, value.as_os_str())));
    crate::git::run(dir, args, &all, CHECKPOINT_GIT_TIMEOUT, output_max)
        .map(|output| (output.stdout, output.truncated))
        .map_err(|message| CheckpointError::Git {
            step: step.to_owned(),
            message,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {:?}", out);
        String::from_utf8(out.stdout).unwrap()
    }

    /// A repository on `main` with two committed files, a staged change,
    /// an unstaged change, a stash entry and an ignored file.
    fn repository(dir: &Path) -> PathBuf {
        let repo = dir.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        run(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("README"), "hello\n").unwrap();
        std::fs::write(repo.join("kept.txt"), "one\n").unwrap();
        std::fs::write(repo.join(".gitignore"), "*.log\n").unwrap();
        run(&repo, &["add", "."]);
        run(&repo, &["commit", "-q", "-m", "first"]);
        std::fs::write(repo.join("kept.txt"), "stashed\n").unwrap();
        run(&repo, &["stash", "-q"]);
        std::fs::write(repo.join("README"), "hello, staged\n").unwrap();
        run(&repo, &["add", "README"]);
        std::fs::write(repo.join("kept.txt"), "one, unstaged\n").unwrap();
        std::fs::write(repo.join("debug.log"), "ignored\n").unwrap();
        repo
    }

    /// What the user's git state looks like: HEAD, index, stash list, refs
    /// outside the checkpoints.
    fn user_state(repo: &Path) -> Vec<String> {
        vec![
            run(repo, &["rev-parse", "HEAD"]),
            run(repo, &["diff", "--cached"]),
            run(repo, &["stash", "list", "--format=%H %s"]),
            run(repo, &["for-each-ref", "refs/heads", "refs/stash"]),
        ]
    }

    #[test]
    fn a_checkpoint_keeps_changes_and_untracked_files_and_restores_them() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let spaced = "dir with space/naïve файл.txt";
        std::fs::create_dir_all(repo.join("dir with space")).unwrap();
        std::fs::write(repo.join(spaced), "untracked\n").unwrap();
        let before = user_state(&repo);
        let made = checkpoint(&repo.join("dir with space"), "0192-flight_1").unwrap();
        assert_eq!(made.ref_name, "refs/scout/checkpoints/0192-flight_1");
        assert_eq!(made.workspace, repo.canonicalize().unwrap());
        // README (staged), kept.txt (unstaged), the untracked file.
        assert_eq!(made.files_changed, 3);
        assert_eq!(
            run(&repo, &["rev-parse", &made.ref_name]).trim(),
            made.commit
        );
        assert_eq!(user_state(&repo), before);
        let files = run(&repo, &["ls-tree", "-r", "--name-only", &made.commit]);
        assert!(files.contains("naïve") || files.contains("na\\"), "{files}");
        assert!(!files.contains("debug.log"), "ignored files stay out");

        // The agent deletes, edits and adds.
        std::fs::remove_file(repo.join("README")).unwrap();
        std::fs::remove_file(repo.join(spaced)).unwrap();
        std::fs::write(repo.join("kept.txt"), "rewritten\n").unwrap();
        std::fs::write(repo.join("new.txt"), "made later\n").unwrap();
        let shown = diff(&repo, &made.commit).unwrap();
        assert!(!shown.truncated);
        assert!(shown.text.contains("deleted file mode"), "{}", shown.text);
        assert!(shown.text.contains("-hello, staged"), "{}", shown.text);
        assert!(shown.text.contains("+made later"), "{}", shown.text);

        let restored = restore(&repo, &made.commit, false).unwrap();
        assert_eq!(restored.files_restored, 3);
        assert_eq!(restored.files_removed, 0);
        assert_eq!(
            std::fs::read_to_string(repo.join("README")).unwrap(),
            "hello, staged\n"
        );
        assert_eq!(
            std::fs::read_to_string(repo.join("kept.txt")).unwrap(),
            "one, unstaged\n"
        );
        assert_eq!(
            std::fs::read_to_string(repo.join(spaced)).unwrap(),
            "untracked\n"
        );
        assert!(repo.join("new.txt").exists(), "later files stay");
        assert!(repo.join("debug.log").exists());
        assert_eq!(user_state(&repo), before);

        let cleaned = restore(&repo, &made.commit, true).unwrap();
        assert_eq!(cleaned.files_removed, 1);
        assert!(!repo.join("new.txt").exists());
        assert!(repo.join("debug.log").exists(), "ignored files stay");
        assert_eq!(user_state(&repo), before);
        assert!(diff(&repo, &made.commit).unwrap().text.is_empty());
    }

    #[test]
    fn a_clean_worktree_gets_a_checkpoint_equal_to_head() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("clean");
        std::fs::create_dir_all(&repo).unwrap();
        run(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("a"), "a\n").unwrap();
        run(&repo, &["add", "a"]);
        run(&repo, &["commit", "-q", "-m", "a"]);
        let made = checkpoint(&repo, "clean").unwrap();
        assert_eq!(made.files_changed, 0);
        assert_eq!(
            run(&repo, &["rev-parse", &format!("{}^{{tree}}", made.commit)]),
            run(&repo, &["rev-parse", "HEAD^{tree}"])
        );
        assert_eq!(
            made.head.as_deref(),
            Some(run(&repo, &["rev-parse", "HEAD"]).trim())
        );
        drop_checkpoint(&repo, "clean").unwrap();
        drop_checkpoint(&repo, "clean").unwrap();
        assert_eq!(run(&repo, &["for-each-ref", "refs/scout"]), "");
    }

    #[test]
    fn a_repository_without_commits_is_checkpointed_too() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("unborn");
        std::fs::create_dir_all(&repo).unwrap();
        run(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("first"), "x\n").unwrap();
        let made = checkpoint(&repo, "unborn").unwrap();
        assert_eq!(made.head, None);
        assert_eq!(made.files_changed, 1);
        std::fs::remove_file(repo.join("first")).unwrap();
        restore(&repo, &made.commit, false).unwrap();
        assert!(repo.join("first").exists());
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        assert_eq!(
            checkpoint(&plain, "x").unwrap_err().code(),
            "NOT_A_REPOSITORY"
        );
        assert_eq!(
            checkpoint(&dir.path().join("gone"), "x")
                .unwrap_err()
                .code(),
            "WORKSPACE_GONE"
        );
        for id in ["", "-x", "a/b", "a..b", "a b", "a~1", "a^", "a:b", "@{0}"] {
            assert_eq!(check_id(id).unwrap_err().code(), "INVALID_ID", "{id:?}");
        }
        assert_eq!(
            check_id(&"a".repeat(CHECKPOINT_ID_BYTES_MAX + 1))
                .unwrap_err()
                .code(),
            "INVALID_ID"
        );
        let repo = repository(dir.path());
        for commit in ["HEAD", "--all", &"0".repeat(40), "main"] {
            assert_eq!(
                restore(&repo, commit, false).unwrap_err().code(),
                "CHECKPOINT_COMMIT_MISSING",
                "{commit}"
            );
        }
    }
}
