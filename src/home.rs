//! Where a broker keeps its files: the home directory and the well-known
//! paths inside it.
//!
//! By default the configuration lives where the platform keeps application
//! settings (macOS: `~/Library/Application Support/OpenScout`; elsewhere
//! `$XDG_CONFIG_HOME/openscout`) and the state (store, logs) under
//! `$XDG_STATE_HOME/openscout` on Linux. `--home DIR` or `SCOUT_HOME` puts
//! both in one directory, which is how several brokers share one machine.
//!
//! A home holds the node key and the API token, and its files decide what
//! the broker runs. So a home must belong to the user running scout and be
//! writable by nobody else: [`secure`] refuses one that is not
//! (`UNSAFE_HOME`, with the command that fixes it), and tightens a secret
//! file that others can read. [`restrict_new_files`] makes every file the
//! process creates owner-only from the start.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use nix::sys::stat::{Mode, umask};

/// The stable code of a home that others could change.
pub const UNSAFE_HOME: &str = "UNSAFE_HOME";

/// Mode of every directory scout creates in a home: the owner only.
pub const HOME_DIR_MODE: u32 = 0o700;

/// Mode of every file scout creates in a home: the owner only.
pub const HOME_FILE_MODE: u32 = 0o600;

/// The process's file creation mask once [`restrict_new_files`] ran: no
/// permission for group or others on anything created.
const OWNER_ONLY_UMASK: libc::mode_t = 0o077;

/// Entries the safety check looks at per home at most. A home holds a
/// dozen files; the bound keeps a home pointed at a huge tree cheap, and
/// whatever lies beyond it is nothing scout reads.
const HOME_ENTRIES_MAX: usize = 10_000;

/// How deep below the home the safety check looks: scout's own files sit
/// at depth one (`logs/` at two).
const HOME_DEPTH_MAX: usize = 3;

/// The resolved home of one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// Settings, agents, the node key and the API token.
    pub config_dir: PathBuf,
    /// The store and logs.
    pub state_dir: PathBuf,
}

impl Home {
    /// Resolves the home: an explicit directory wins, then the platform default.
    pub fn resolve(explicit: Option<&Path>) -> anyhow::Result<Home> {
        if let Some(dir) = explicit {
            let dir = absolute(dir)?;
            return Ok(Home {
                config_dir: dir.clone(),
                state_dir: dir,
            });
        }
        platform_default()
    }

    /// A home whose config and state share one directory.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Home {
        let dir = dir.into();
        Home {
            config_dir: dir.clone(),
            state_dir: dir,
        }
    }

    /// `settings.json`: node name, ports, workspace roots, seeds, discovery.
    pub fn settings_path(&self) -> PathBuf {
        self.config_dir.join("settings.json")
    }

    /// `relay-agents.json`: agents added by hand.
    pub fn relay_agents_path(&self) -> PathBuf {
        self.config_dir.join("relay-agents.json")
    }

    /// The node's Ed25519 private key (PKCS#8 PEM, mode 0600).
    pub fn node_key_path(&self) -> PathBuf {
        self.config_dir.join("node.key")
    }

    /// `trusted-manifests.json`: the project manifests whose commands the
    /// user trusts (`scout agents trust`).
    pub fn trusted_manifests_path(&self) -> PathBuf {
        self.config_dir.join("trusted-manifests.json")
    }

    /// `mesh.json`: the mesh this broker belongs to.
    pub fn mesh_path(&self) -> PathBuf {
        self.config_dir.join("mesh.json")
    }

    /// The bearer token of the local HTTP surface (mode 0600).
    pub fn token_path(&self) -> PathBuf {
        self.config_dir.join("token")
    }

    /// The SQLite store.
    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("scout.db")
    }

    /// Held (advisory lock) by the running broker, so two brokers never share
    /// one home.
    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("broker.lock")
    }

    /// `broker.json`: where the running broker listens (its HTTP address
    /// may be a port picked at start), for the CLI and `scout doctor`.
    pub fn runtime_path(&self) -> PathBuf {
        self.state_dir.join("broker.json")
    }

    /// Logs of the broker service.
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// Holder processes of agent sessions (see `crate::holder`).
    pub fn holders_dir(&self) -> PathBuf {
        self.state_dir.join("holders")
    }

    /// Held structured turns (see `crate::holder::journal`); beside
    /// [`Home::holders_dir`], as the runtime expects.
    pub fn turns_dir(&self) -> PathBuf {
        self.state_dir.join(crate::pty::manager::TURNS_DIR_NAME)
    }
}

/// The home, or a file in it, could be changed by someone other than the
/// user running scout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("UNSAFE_HOME: {} {problem}; fix: `{fix}`", path.display())]
pub struct UnsafeHome {
    /// The directory or file.
    pub path: PathBuf,
    /// What is wrong with it (its owner or its mode).
    pub problem: String,
    /// The command that fixes it.
    pub fix: String,
}

impl UnsafeHome {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        UNSAFE_HOME
    }
}

/// Checks that the home's directories and every file in them belong to the
/// user running scout and are writable by nobody else. It looks only at
/// owners and modes, never at contents, and changes nothing. A missing directory passes (there is nothing to trust
/// yet). Symbolic links are judged by the link and by what they point to.
pub fn check_safe(home: &Home) -> Result<(), UnsafeHome> {
    let uid = effective_uid();
    let mut budget = HOME_ENTRIES_MAX;
    for dir in home.dirs() {
        let Ok(metadata) = fs::metadata(dir) else {
            continue;
        };
        judge(dir, &metadata, uid)?;
        walk(dir, 1, uid, &mut budget)?;
    }
    Ok(())
}

/// [`check_safe`], then tightens the node key and the token to 0600 when
/// others can read them (a copy or an editor may have loosened them),
/// with a warning. What the broker runs before it reads anything.
pub fn secure(home: &Home) -> anyhow::Result<()> {
    check_safe(home)?;
    for secret in [home.node_key_path(), home.token_path()] {
        let Ok(metadata) = fs::metadata(&secret) else {
            continue;
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(&secret, fs::Permissions::from_mode(HOME_FILE_MODE))
                .with_context(|| format!("cannot restrict {}", secret.display()))?;
            tracing::warn!(
                path = %secret.display(),
                mode = format!("{mode:o}"),
                "a secret file was readable by others; its mode is now 600"
            );
        }
    }
    Ok(())
}

/// Makes every file and directory this process creates from now on
/// owner-only (umask 077), and remembers the user's mask for the agents
/// the broker starts ([`with_user_umask`]). Called first thing in `main`.
pub fn restrict_new_files() {
    let mut user = USER_UMASK
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let previous = umask(Mode::from_bits_truncate(OWNER_ONLY_UMASK));
    user.get_or_insert(previous);
}

/// Runs `spawn` with the user's own file creation mask, so an agent the
/// broker starts creates files in a repository as the user would, not
/// owner-only like the broker's home. Spawns are serialised by the lock,
/// so the mask is always put back; files scout creates meanwhile have
/// explicit modes, which a mask can only narrow.
pub fn with_user_umask<T>(spawn: impl FnOnce() -> T) -> T {
    let user = USER_UMASK
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let Some(user_mask) = *user else {
        // restrict_new_files never ran (a library embedding): nothing to
        // restore.
        return spawn();
    };
    umask(user_mask);
    let result = spawn();
    umask(Mode::from_bits_truncate(OWNER_ONLY_UMASK));
    drop(user);
    result
}

/// The user's file creation mask, saved by [`restrict_new_files`]; `None`
/// while the process runs with the mask it was started with.
static USER_UMASK: Mutex<Option<Mode>> = Mutex::new(None);

impl Home {
    /// The home's directories, each once.
    fn dirs(&self) -> Vec<&Path> {
        if self.config_dir == self.state_dir {
            vec![&self.config_dir]
        } else {
            vec![&self.config_dir, &self.state_dir]
        }
    }
}

/// The effective user id of this process: who owns what it creates.
#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no
    // memory of ours.
    unsafe { libc::geteuid() }
}

fn walk(dir: &Path, depth: usize, uid: u32, budget: &mut usize) -> Result<(), UnsafeHome> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        if *budget == 0 {
            return Ok(());
        }
        *budget -= 1;
        let path = entry.path();
        let Ok(link) = fs::symlink_metadata(&path) else {
            continue;
        };
        if link.file_type().is_symlink() {
            if link.uid() != uid {
                return Err(foreign_owner(&path, link.uid(), uid));
            }
            // The link is ours; what it points to must be too. A dangling
            // link points to nothing scout could read.
            if let Ok(target) = fs::metadata(&path) {
                judge(&path, &target, uid)?;
            }
            continue;
        }
        judge(&path, &link, uid)?;
        if link.is_dir() && depth < HOME_DEPTH_MAX {
            walk(&path, depth + 1, uid, budget)?;
        }
    }
    Ok(())
}

/// Refuses a file or directory owned by another user or writable by group
/// or others.
fn judge(path: &Path, metadata: &fs::Metadata, uid: u32) -> Result<(), UnsafeHome> {
    if metadata.uid() != uid {
        return Err(foreign_owner(path, metadata.uid(), uid));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        let owner_only = if metadata.is_dir() {
            HOME_DIR_MODE
        } else {
            HOME_FILE_MODE
        };
        return Err(UnsafeHome {
            path: path.to_owned(),
            problem: format!("is writable by group or others (mode {mode:o})"),
            fix: format!("chmod {owner_only:o} {}", path.display()),
        });
    }
    Ok(())
}

fn foreign_owner(path: &Path, owner: u32, uid: u32) -> UnsafeHome {
    UnsafeHome {
        path: path.to_owned(),
        problem: format!("is owned by uid {owner}, not by uid {uid} who runs scout"),
        fix: format!("chown -h {uid} {}", path.display()),
    }
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.as_os_str().is_empty() {
        bail!("the home directory is an empty path");
    }
    std::path::absolute(dir).with_context(|| format!("cannot make {} absolute", dir.display()))
}

fn env_dir(name: &str) -> Option<PathBuf> {
    // The XDG spec says relative values are invalid and must be ignored.
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
}

fn user_home() -> anyhow::Result<PathBuf> {
    env_dir("HOME").context("HOME is not set; pass --home DIR or set SCOUT_HOME")
}

#[cfg(target_os = "macos")]
fn platform_default() -> anyhow::Result<Home> {
    let dir = user_home()?.join("Library/Application Support/OpenScout");
    Ok(Home::in_dir(dir))
}

#[cfg(not(target_os = "macos"))]
fn platform_default() -> anyhow::Result<Home> {
    let config_base = match env_dir("XDG_CONFIG_HOME") {
        Some(dir) => dir,
        None => user_home()?.join(".config"),
    };
    let state_base = match env_dir("XDG_STATE_HOME") {
        Some(dir) => dir,
        None => user_home()?.join(".local/state"),
    };
    Ok(Home {
        config_dir: config_base.join("openscout"),
        state_dir: state_base.join("openscout"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_home_holds_everything() {
        let home = Home::resolve(Some(Path::new("/tmp/scout-a"))).unwrap();
        assert_eq!(
            home.settings_path(),
            Path::new("/tmp/scout-a/settings.json")
        );
        assert_eq!(home.store_path(), Path::new("/tmp/scout-a/scout.db"));
    }

    #[test]
    fn an_owner_only_home_is_safe_and_a_writable_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::in_dir(dir.path().join("home"));
        assert_eq!(
            check_safe(&home),
            Ok(()),
            "a missing home has nothing to trust"
        );
        fs::create_dir(&home.config_dir).unwrap();
        fs::set_permissions(&home.config_dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(home.settings_path(), "{}").unwrap();
        fs::set_permissions(home.settings_path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(check_safe(&home), Ok(()), "readable is not writable");

        fs::set_permissions(home.settings_path(), fs::Permissions::from_mode(0o646)).unwrap();
        let refused = check_safe(&home).unwrap_err();
        assert_eq!(refused.path, home.settings_path());
        assert_eq!(
            refused.fix,
            format!("chmod 600 {}", home.settings_path().display())
        );
        assert!(
            refused.to_string().starts_with("UNSAFE_HOME: "),
            "{refused}"
        );

        fs::set_permissions(home.settings_path(), fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir(home.logs_dir()).unwrap();
        fs::set_permissions(home.logs_dir(), fs::Permissions::from_mode(0o770)).unwrap();
        let refused = check_safe(&home).unwrap_err();
        assert_eq!(
            refused.fix,
            format!("chmod 700 {}", home.logs_dir().display())
        );
    }

    #[test]
    fn a_readable_secret_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::in_dir(dir.path());
        fs::write(home.node_key_path(), "key").unwrap();
        fs::set_permissions(home.node_key_path(), fs::Permissions::from_mode(0o640)).unwrap();
        secure(&home).unwrap();
        let mode = fs::metadata(home.node_key_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn relative_home_becomes_absolute() {
        let home = Home::resolve(Some(Path::new("rel"))).unwrap();
        assert!(home.config_dir.is_absolute());
    }
}
