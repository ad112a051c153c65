//! The broker's discovery: the sources that feed the address book besides
//! seeds (which `connections` resolves itself) and what peers announce.
//!
//! Code map:
//! - this file: [`DiscoveryConfig`] (which sources run, from
//!   `settings.json` and `SCOUT_DISCOVERY`), [`Discovery`] (the config and
//!   each source's live [`DiscoveryStatus`]), [`spawn`] (starts the source
//!   tasks from `Mesh::start`).
//! - [`mdns`]: advertises this broker on the LAN and feeds the addresses of
//!   brokers of this mesh it hears into the book (source `mdns`).
//! - [`tailscale`]: polls tailscaled's peer list and feeds each online
//!   peer's Tailscale IPs into the book (source `tailscale`), retracting
//!   them when the peer goes offline.
//! - [`diagnose`]: what `scout doctor` says about each source.
//! - [`admit`]: the opt-in that admits brokers by their tailnet identity
//!   (`discovery.tailscale.admit`): the admitting side answers a join that
//!   carries no invite after a whois of the connecting address; a broker
//!   alone in its own mesh asks matching tailnet peers to admit it.
//!
//! Architecture invariant: a discovered address never admits anyone. The
//! sources here only add and retract addresses; membership changes only
//! through an invite, or through [`admit`] when the tailnet opt-in is
//! configured and tailscaled vouches for the connecting address.

pub mod admit;
pub mod diagnose;
pub mod mdns;
pub mod tailscale;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use scout_net::discovery::tailscale::{AdmitRule, TailscaleClient};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::mesh::Mesh;
use crate::config::settings::{self, MESH_PORT_DEFAULT, Settings};
use crate::home::Home;

/// The environment variable that overrides which sources run: a comma
/// list of `mdns` and `tailscale`, or `none`. Unset: `settings.json` decides.
pub const DISCOVERY_ENV: &str = "SCOUT_DISCOVERY";

/// Skip reasons remembered per source for the status, at most.
pub const STATUS_REASONS_MAX: usize = 16;

/// Which sources run and how.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryConfig {
    /// Advertise and browse `_scout._udp.local.`.
    pub mdns: bool,
    /// Read tailscaled's peers (and the admit opt-in), when on.
    pub tailscale: Option<TailscaleConfig>,
}

/// How the Tailscale source runs.
#[derive(Debug, Clone)]
pub struct TailscaleConfig {
    /// Asks tailscaled.
    pub client: TailscaleClient,
    /// Only peers with one of these tags (empty: all).
    pub tags: Vec<String>,
    /// Time between two reads of the peer list.
    pub poll_interval: Duration,
    /// The mesh port dialed on each peer's Tailscale IPs.
    pub peer_port: u16,
    /// Which tailnet identities are admitted without an invite.
    pub admit: AdmitRule,
}

impl DiscoveryConfig {
    /// No discovery at all (netsim, benchmarks).
    pub fn disabled() -> DiscoveryConfig {
        DiscoveryConfig::default()
    }

    /// From settings and the value of [`DISCOVERY_ENV`], with warnings for
    /// words the variable does not know.
    pub fn from_settings(
        settings: &Settings,
        env_override: Option<&str>,
    ) -> (DiscoveryConfig, Vec<String>) {
        let mut warnings = Vec::new();
        let tailscale_settings = &settings.discovery.tailscale;
        let (mut mdns, mut tailscale_on) = (settings.discovery.mdns, tailscale_settings.enabled);
        if let Some(value) = env_override {
            (mdns, tailscale_on) = (false, false);
            for word in value
                .split([',', ' '])
                .map(str::trim)
                .filter(|w| !w.is_empty())
            {
                match word.to_ascii_lowercase().as_str() {
                    "mdns" => mdns = true,
                    "tailscale" => tailscale_on = true,
                    "none" => {}
                    other => warnings.push(format!(
                        "{DISCOVERY_ENV}: unknown source `{other}` (known: mdns, tailscale, none); ignored"
                    )),
                }
            }
        }
        let tailscale = tailscale_on.then(|| {
            let socket = Some(PathBuf::from(&tailscale_settings.socket))
                .filter(|path| !path.as_os_str().is_empty());
            TailscaleConfig {
                client: TailscaleClient::new(socket),
                tags: tailscale_settings.tags.clone(),
                poll_interval: Duration::from_millis(tailscale_settings.poll_interval_ms),
                peer_port: tailnet_peer_port(settings),
                admit: AdmitRule {
                    tags: tailscale_settings.admit.tags.clone(),
                    users: tailscale_settings.admit.users.clone(),
                },
            }
        });
        (DiscoveryConfig { mdns, tailscale }, warnings)
    }

    /// From this home's settings and the environment; a home whose settings
    /// do not load runs no discovery (the broker refused to start anyway).
    pub fn load(home: &Home) -> DiscoveryConfig {
        let settings = match settings::load(&home.settings_path()) {
            Ok(Some(file)) => file.value,
            Ok(None) => Settings::default(),
            Err(err) => {
                tracing::warn!(cause = %err, "discovery off: settings do not load");
                return DiscoveryConfig::disabled();
            }
        };
        let env_override = std::env::var(DISCOVERY_ENV).ok();
        let (config, warnings) = DiscoveryConfig::from_settings(&settings, env_override.as_deref());
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        config
    }

    /// Whether the tailnet admit opt-in is on.
    pub fn tailnet_admit(&self) -> bool {
        self.tailscale
            .as_ref()
            .is_some_and(|tailscale| tailscale.admit.is_enabled())
    }
}

/// The port dialed on tailnet peers: `discovery.tailscale.mesh_port`, else
/// this broker's `mesh_port`, else the default. tailscaled knows peers'
/// IPs, not their brokers' ports, so a tailnet's brokers share one port.
pub fn tailnet_peer_port(settings: &Settings) -> u16 {
    [settings.discovery.tailscale.mesh_port, settings.mesh_port]
        .into_iter()
        .find(|port| *port != 0)
        .unwrap_or(MESH_PORT_DEFAULT)
}

/// What each source is doing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscoveryStatus {
    /// The mDNS source.
    pub mdns: MdnsStatus,
    /// The Tailscale source.
    pub tailscale: TailscaleStatus,
}

/// The mDNS source's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MdnsStatus {
    /// Whether it runs.
    pub enabled: bool,
    /// Whether this broker's advert is registered.
    pub advertising: bool,
    /// Interfaces (name and address) mDNS can use.
    pub interfaces: Vec<String>,
    /// Brokers heard (any mesh).
    pub brokers_heard: usize,
    /// Addresses fed into the book.
    pub addresses: usize,
    /// Browses started again after the receiver fell behind or interfaces
    /// changed.
    pub rebrowses: u64,
    /// Why records were skipped (latest first, bounded).
    pub skipped: Vec<String>,
    /// The daemon's last error.
    pub error: Option<String>,
}

/// The Tailscale source's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TailscaleStatus {
    /// Whether it runs.
    pub enabled: bool,
    /// `LocalAPI socket` or `tailscale CLI`, once asked successfully.
    pub via: Option<String>,
    /// tailscaled's backend state.
    pub backend_state: Option<String>,
    /// Peers in the last status.
    pub peers_seen: usize,
    /// Peers online and matching the tag filter.
    pub peers_matching: usize,
    /// Addresses fed into the book.
    pub addresses: usize,
    /// Reads of the peer list so far.
    pub polls: u64,
    /// Whether the admit opt-in is on.
    pub admit: bool,
    /// The last error (with its code).
    pub error: Option<String>,
}

/// Discovery as the mesh holds it.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Which sources run.
    pub config: DiscoveryConfig,
    status: Mutex<DiscoveryStatus>,
}

impl Discovery {
    /// Discovery with `config`.
    pub fn new(config: DiscoveryConfig) -> Discovery {
        let status = DiscoveryStatus {
            mdns: MdnsStatus {
                enabled: config.mdns,
                ..MdnsStatus::default()
            },
            tailscale: TailscaleStatus {
                enabled: config.tailscale.is_some(),
                admit: config.tailnet_admit(),
                ..TailscaleStatus::default()
            },
        };
        Discovery {
            config,
            status: Mutex::new(status),
        }
    }

    /// Each source's state now.
    pub fn status(&self) -> DiscoveryStatus {
        self.status
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut DiscoveryStatus)) {
        f(&mut self
            .status
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()));
    }
}

/// Remembers a skip reason, newest first, bounded.
pub(crate) fn remember(reasons: &mut Vec<String>, reason: String) {
    reasons.retain(|known| *known != reason);
    reasons.insert(0, reason);
    reasons.truncate(STATUS_REASONS_MAX);
}

/// Starts the configured sources; they stop when `shutdown` turns true.
pub fn spawn(mesh: &Mesh, shutdown: watch::Receiver<bool>, tasks: &mut JoinSet<()>) {
    let shared = mesh.shared();
    let config = shared.discovery.config.clone();
    shared.trust.set_tailnet_admit(config.tailnet_admit());
    if config.mdns {
        tasks.spawn(mdns::run(mesh.clone(), shutdown.clone()));
    }
    if let Some(tailscale) = config.tailscale {
        if tailscale.admit.is_enabled() {
            tracing::warn!(
                tags = ?tailscale.admit.tags,
                users = ?tailscale.admit.users,
                "discovery.tailscale.admit is on: tailnet nodes with these tags or owners join this mesh without an invite"
            );
        }
        tasks.spawn(tailscale::run(mesh.clone(), tailscale, shutdown));
    }
}

/// Each source's state, for tests and benchmarks.
pub fn status(mesh: &Mesh) -> DiscoveryStatus {
    mesh.shared().discovery.status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_overrides_settings() {
        let settings = Settings::default();
        let (config, warnings) = DiscoveryConfig::from_settings(&settings, None);
        assert!(config.mdns && config.tailscale.is_some() && warnings.is_empty());
        let (config, _) = DiscoveryConfig::from_settings(&settings, Some("none"));
        assert!(!config.mdns && config.tailscale.is_none());
        let (config, warnings) = DiscoveryConfig::from_settings(&settings, Some("tailscale,bogus"));
        assert!(!config.mdns && config.tailscale.is_some());
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn tailnet_peers_are_dialed_on_the_shared_mesh_port() {
        let mut settings = Settings {
            mesh_port: 0,
            ..Settings::default()
        };
        assert_eq!(tailnet_peer_port(&settings), MESH_PORT_DEFAULT);
        settings.mesh_port = 4000;
        assert_eq!(tailnet_peer_port(&settings), 4000);
        settings.discovery.tailscale.mesh_port = 4100;
        assert_eq!(tailnet_peer_port(&settings), 4100);
    }
}
