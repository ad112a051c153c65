//! Where a broker keeps its files: the home directory and the well-known
//! paths inside it.
//!
//! By default the configuration lives where the platform keeps application
//! settings (macOS: `~/Library/Application Support/OpenScout`; elsewhere
//! `$XDG_CONFIG_HOME/openscout`) and the state (store, logs) under
//! `$XDG_STATE_HOME/openscout` on Linux. `--home DIR` or `SCOUT_HOME` puts
//! both in one directory, which is how several brokers share one machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

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
    fn relative_home_becomes_absolute() {
        let home = Home::resolve(Some(Path::new("rel"))).unwrap();
        assert!(home.config_dir.is_absolute());
    }
}
