//! Reloads the agent list when `relay-agents.json` or `settings.json`
//! changes or a worktree is made or removed in the home, and rescans the workspace roots now and then for new projects.
//!
//! Polling a file's size and modification time is cheap, portable and
//! robust against editors that replace files by rename; it costs at most
//! one poll interval of latency.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::BrokerState;
use crate::config::discover;
use crate::config::{relay_agents, settings};

/// How often the config files are checked for changes: short enough that
/// `scout agents add` feels immediate, long enough to cost nothing.
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How often the workspace roots are rescanned for new manifests even when
/// no config file changed; a scan walks directories, so not too often.
pub const WORKSPACE_RESCAN_INTERVAL: Duration = Duration::from_secs(60);

const _: () = assert!(WORKSPACE_RESCAN_INTERVAL.as_millis() > CONFIG_POLL_INTERVAL.as_millis());

type Fingerprint = Option<(u64, SystemTime)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.len(), metadata.modified().ok()?))
}

/// Definitions' worktree directories looked at per poll at most; past it,
/// changes wait for the periodic rescan.
const WORKTREE_DIRS_MAX: usize = 256;

/// Entries of the worktrees directory read per poll at most, before the
/// first [`WORKTREE_DIRS_MAX`] by name are kept: a stray crowd of files
/// there costs a bounded read, and the same definitions are watched each
/// time.
const WORKTREE_DIRS_SCAN_MAX: usize = 4096;

/// The modification times of `<root>/<definition>` directories: one
/// changes when a worktree is made or removed in it.
fn worktrees_fingerprint(root: &Path) -> Vec<(std::ffi::OsString, Fingerprint)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut names: Vec<_> = entries
        .filter_map(Result::ok)
        .take(WORKTREE_DIRS_SCAN_MAX)
        .map(|entry| entry.file_name())
        .collect();
    names.sort();
    names.truncate(WORKTREE_DIRS_MAX);
    names
        .into_iter()
        .map(|name| {
            let fingerprint = fingerprint(&root.join(&name));
            (name, fingerprint)
        })
        .collect()
}

/// What the config files (and the worktrees made in the home) looked like
/// when they were last read. A worktree root configured outside the home
/// is picked up by the periodic rescan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSnapshot {
    relay_agents: Fingerprint,
    settings: Fingerprint,
    worktrees: Vec<(std::ffi::OsString, Fingerprint)>,
}

impl ConfigSnapshot {
    /// The files' fingerprints now.
    pub fn take(home: &crate::home::Home) -> ConfigSnapshot {
        ConfigSnapshot {
            relay_agents: fingerprint(&home.relay_agents_path()),
            settings: fingerprint(&home.settings_path()),
            worktrees: worktrees_fingerprint(&home.state_dir.join("worktrees")),
        }
    }
}

/// Runs until `shutdown` turns true. `last` is what the files looked like
/// before the broker read them at start.
pub async fn run(
    state: Arc<BrokerState>,
    mut last: ConfigSnapshot,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(CONFIG_POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_scan = state.env.now_instant();
    let cleaning = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let now = ConfigSnapshot::take(&state.home);
        let rescan_due =
            state.env.now_instant().duration_since(last_scan) >= WORKSPACE_RESCAN_INTERVAL;
        if now == last && !rescan_due {
            continue;
        }
        last = now;
        last_scan = state.env.now_instant();
        let state = state.clone();
        // Discovery walks directories: keep it off the async workers.
        if rescan_due && !cleaning.swap(true, std::sync::atomic::Ordering::AcqRel) {
            // Its own task: git on a large worktree must not hold reloads.
            let (state, cleaning) = (state.clone(), cleaning.clone());
            tokio::task::spawn_blocking(move || {
                clean_idle_worktrees(&state);
                cleaning.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        let reload = tokio::task::spawn_blocking(move || reload(&state)).await;
        if let Err(err) = reload {
            tracing::error!(cause = %err, "agent reload task failed");
        }
    }
}

/// Reloads the agents from the files; a broken file keeps the old list and
/// logs why, so a typo never takes agents away from a running broker.
pub fn reload(state: &BrokerState) {
    let settings = match settings::load_required(&state.home.settings_path()) {
        Ok(file) => file.value,
        Err(err) => {
            tracing::warn!(cause = %err, "settings not reloaded; keeping the current agents");
            return;
        }
    };
    let relay = match relay_agents::load(&state.home.relay_agents_path()) {
        Ok(file) => file.value,
        Err(err) => {
            tracing::warn!(cause = %err, "relay agents not reloaded; keeping the current agents");
            return;
        }
    };
    let discovered = discover::discover(&state.home, &settings, &relay);
    for warning in &discovered.warnings {
        tracing::warn!(%warning, "agent discovery");
    }
    let Ok(mut agents) = state.agents.write() else {
        return;
    };
    if *agents != discovered.agents {
        tracing::info!(
            before = agents.len(),
            after = discovered.agents.len(),
            "agents reloaded"
        );
        *agents = discovered.agents.clone();
        drop(agents);
        state.mesh.publish_local_agents(discovered.agents);
    }
}

/// Removes the worktrees idle for `worktrees.idle_days` (0: never): only
/// clean ones whose branch has nothing its base lacks, and never one an
/// agent session is running in. Runs with the periodic rescan.
fn clean_idle_worktrees(state: &BrokerState) {
    let Ok(settings) = settings::load_required(&state.home.settings_path()) else {
        return;
    };
    let days = settings.value.worktrees.idle_days;
    if days == 0 {
        return;
    }
    let cutoff = state
        .env
        .now_unix_ms()
        .saturating_sub(u64::from(days).saturating_mul(86_400_000));
    let running = || -> std::collections::HashSet<String> {
        state
            .runtime
            .list()
            .into_iter()
            .map(|info| info.name)
            .collect()
    };
    let agents = match state.agents.read() {
        Ok(agents) => agents.clone(),
        Err(_) => return,
    };
    let mut seen = std::collections::HashSet::new();
    for agent in agents.iter().filter(|agent| agent.worktrees.is_some()) {
        if !seen.insert(agent.definition.clone()) {
            continue;
        }
        let Some(worktrees) = agent.worktrees() else {
            continue;
        };
        let idle = match worktrees.idle(cutoff) {
            Ok(idle) => idle,
            Err(err) => {
                tracing::warn!(definition = %agent.definition, cause = %err, "cannot check idle worktrees");
                continue;
            }
        };
        for info in idle {
            let Ok(workspace) = scout_mesh::names::Workspace::parse(&info.branch) else {
                continue;
            };
            let instance = scout_mesh::names::AgentName::new(
                agent.definition.clone(),
                Some(state.node_name.clone()),
                Some(workspace.clone()),
            )
            .to_string();
            // Asked again right before each removal: a flight may have
            // started there while git was looking.
            if running().contains(&instance) {
                continue;
            }
            match worktrees.remove_found(info, false) {
                Ok(path) => tracing::info!(%instance, path = %path.display(), idle_days = days,
                    "removed an idle worktree (its branch is kept)"),
                Err(err) => tracing::warn!(%instance, cause = %err, "idle worktree kept"),
            }
        }
    }
}
