//! What `scout doctor` says about each discovery source, found out
//! directly (tailscaled asked, seeds resolved, interfaces listed) and from
//! the running broker's address book when there is one.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use scout_net::discovery::mdns::{self as mdns_core, SERVICE_TYPE};
use scout_net::discovery::tailscale::{BackendState, TailscaleError};

use super::{DISCOVERY_ENV, DiscoveryConfig};
use crate::config::settings::Settings;
use crate::daemon::mesh::address_book::{AddressSource, AddressView};

/// How long doctor waits for all seeds to resolve together.
pub const SEED_RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A report's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but something deserves attention.
    Warn,
    /// Broken.
    Fail,
}

/// One source's report.
#[derive(Debug, Clone)]
pub struct Report {
    /// `seeds`, `mdns`, `tailscale`, `tailscale-admit`, `address-book`.
    pub name: &'static str,
    /// Its level.
    pub level: Level,
    /// What was found.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl Report {
    fn new(name: &'static str, level: Level, message: impl Into<String>) -> Report {
        Report {
            name,
            level,
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Report {
        self.hint = Some(hint.into());
        self
    }
}

/// Reports for every source. `seeds` are the configured seeds (settings and
/// `SCOUT_SEEDS`); `book` is the running broker's address book, if any.
pub fn diagnose(
    settings: &Settings,
    seeds: &[String],
    book: Option<&[AddressView]>,
) -> Vec<Report> {
    let env_override = std::env::var(DISCOVERY_ENV).ok();
    let (config, warnings) = DiscoveryConfig::from_settings(settings, env_override.as_deref());
    let switched_by = if env_override.is_some() {
        format!(
            "{DISCOVERY_ENV}={}",
            env_override.as_deref().unwrap_or_default()
        )
    } else {
        "settings.json".to_owned()
    };
    let count = |source: AddressSource| {
        book.map(|book| {
            book.iter()
                .filter(|entry| entry.sources.contains(&source))
                .count()
        })
    };
    let mut reports = vec![seeds_report(seeds, count(AddressSource::Seed))];
    let mut mdns = mdns_report(&config, &switched_by, count(AddressSource::Mdns));
    for warning in &warnings {
        mdns.message.push_str(&format!("; {warning}"));
    }
    reports.push(mdns);
    reports.extend(tailscale_reports(
        &config,
        &switched_by,
        count(AddressSource::Tailscale),
    ));
    if let Some(book) = book {
        reports.push(book_report(book));
    }
    reports
}

fn seeds_report(seeds: &[String], in_book: Option<usize>) -> Report {
    if seeds.is_empty() {
        return Report::new("seeds", Level::Ok, "none configured");
    }
    let (sender, receiver) = mpsc::channel();
    for seed in seeds {
        let sender = sender.clone();
        let seed = seed.clone();
        std::thread::spawn(move || {
            let resolved = seed
                .to_socket_addrs()
                .map(|addrs| addrs.map(|addr| addr.to_string()).collect::<Vec<_>>())
                .map_err(|err| err.to_string());
            let _ = sender.send((seed, resolved));
        });
    }
    drop(sender);
    let deadline = Instant::now() + SEED_RESOLVE_TIMEOUT;
    let mut results: BTreeMap<String, Result<Vec<String>, String>> = BTreeMap::new();
    while results.len() < seeds.len() {
        match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((seed, resolved)) => {
                results.insert(seed, resolved);
            }
            Err(_) => break,
        }
    }
    let mut resolved = Vec::new();
    let mut failed = Vec::new();
    for seed in seeds {
        match results.get(seed) {
            Some(Ok(addrs)) if !addrs.is_empty() => {
                resolved.push(format!("{seed} → {}", addrs.join(" ")));
            }
            Some(Ok(_)) => failed.push(format!("{seed} (no addresses)")),
            Some(Err(err)) => failed.push(format!("{seed} ({err})")),
            None => failed.push(format!(
                "{seed} (no answer within {} s)",
                SEED_RESOLVE_TIMEOUT.as_secs()
            )),
        }
    }
    let dialing = in_book
        .map(|n| format!("; {n} seed addresses in the book"))
        .unwrap_or_default();
    if failed.is_empty() {
        Report::new(
            "seeds",
            Level::Ok,
            format!(
                "{} resolve: {}{dialing}",
                resolved.len(),
                resolved.join(", ")
            ),
        )
    } else {
        Report::new(
            "seeds",
            Level::Warn,
            format!(
                "{} of {} do not resolve: {}{}{dialing}",
                failed.len(),
                seeds.len(),
                failed.join(", "),
                if resolved.is_empty() {
                    String::new()
                } else {
                    format!("; resolved: {}", resolved.join(", "))
                }
            ),
        )
        .hint("fix the name or port in `seeds` (settings.json) or SCOUT_SEEDS; the broker keeps retrying them and uses the others meanwhile")
    }
}

fn mdns_report(config: &DiscoveryConfig, switched_by: &str, in_book: Option<usize>) -> Report {
    if !config.mdns {
        return Report::new("mdns", Level::Ok, format!("off ({switched_by})"));
    }
    let interfaces = mdns_core::interfaces(false);
    let lan: Vec<String> = interfaces
        .iter()
        .filter(|(_, ip)| !ip.is_loopback())
        .map(|(name, ip)| format!("{name} {ip}"))
        .collect();
    let heard = in_book
        .map(|n| format!("; {n} addresses of members heard"))
        .unwrap_or_default();
    if lan.is_empty() {
        return Report::new(
            "mdns",
            Level::Warn,
            format!("{SERVICE_TYPE} on loopback only: no LAN interface{heard}"),
        )
        .hint("only brokers on this machine are heard; join a LAN, or list brokers in `seeds`");
    }
    Report::new(
        "mdns",
        Level::Ok,
        format!("{SERVICE_TYPE} on {} and loopback{heard}", lan.join(", ")),
    )
}

fn tailscale_reports(
    config: &DiscoveryConfig,
    switched_by: &str,
    in_book: Option<usize>,
) -> Vec<Report> {
    let Some(tailscale) = &config.tailscale else {
        return vec![Report::new(
            "tailscale",
            Level::Ok,
            format!("off ({switched_by})"),
        )];
    };
    let socket = tailscale.client.socket.display().to_string();
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| TailscaleError::Cli(err.to_string()))
        .and_then(|runtime| runtime.block_on(tailscale.client.status()));
    let in_book = in_book
        .map(|n| format!("; {n} addresses in the book"))
        .unwrap_or_default();
    let mut reports = vec![match asked {
        Err(TailscaleError::NotFound { .. }) => Report::new(
            "tailscale",
            Level::Ok,
            format!("not installed: no socket at {socket} and no `tailscale` on PATH"),
        )
        .hint("install Tailscale to find tailnet peers, or set discovery.tailscale.socket to tailscaled's socket"),
        Err(err @ TailscaleError::SocketRefused(_)) => Report::new(
            "tailscale",
            Level::Warn,
            format!("socket found but refused: {err}"),
        )
        .hint("start tailscaled (`sudo systemctl start tailscaled`), or set discovery.tailscale.enabled to false"),
        Err(err) => Report::new("tailscale", Level::Warn, err.to_string())
            .hint("run `tailscale status` to see what tailscaled says"),
        Ok((status, via)) if status.backend_state != BackendState::Running => {
            let login = status
                .auth_url
                .as_ref()
                .map(|url| format!(" (log in at {url})"))
                .unwrap_or_default();
            Report::new(
                "tailscale",
                Level::Warn,
                format!(
                    "BackendState: {} via {}{login}; no tailnet peers are used",
                    status.backend_state,
                    via.as_str()
                ),
            )
            .hint(status.backend_state.fix_hint().unwrap_or("run `tailscale up`"))
        }
        Ok((status, via)) => {
            let online = status.peers.iter().filter(|peer| peer.online).count();
            let matching = status.candidates(&tailscale.tags).count();
            let filter = if tailscale.tags.is_empty() {
                String::new()
            } else {
                format!(" with tags {}", tailscale.tags.join(","))
            };
            let skipped = if status.n_skipped > 0 {
                format!("; {} peer entries skipped ({})", status.n_skipped, status.skipped.join("; "))
            } else {
                String::new()
            };
            let report = Report::new(
                "tailscale",
                Level::Ok,
                format!(
                    "running via {} ({}): {} peers seen, {online} online, {matching} online{filter}, dialed at port {}{in_book}{skipped}",
                    via.as_str(),
                    match via {
                        scout_net::discovery::tailscale::Via::LocalApi => socket.clone(),
                        scout_net::discovery::tailscale::Via::Cli =>
                            tailscale.client.cli.display().to_string(),
                    },
                    status.peers.len(),
                    tailscale.peer_port
                ),
            );
            if matching == 0 && !status.peers.is_empty() && !tailscale.tags.is_empty() {
                report.hint("no online peer carries the tags in discovery.tailscale.tags; tag the brokers' machines or empty the list")
            } else {
                report
            }
        }
    }];
    if tailscale.admit.is_enabled() {
        reports.push(Report::new(
            "tailscale-admit",
            Level::Ok,
            format!(
                "on: tailnet nodes tagged [{}] or owned by [{}] join this mesh without an invite",
                tailscale.admit.tags.join(", "),
                tailscale.admit.users.join(", ")
            ),
        ));
    }
    reports
}

fn book_report(book: &[AddressView]) -> Report {
    let mut by_source: BTreeMap<String, usize> = BTreeMap::new();
    for entry in book {
        for source in &entry.sources {
            let name = serde_json::to_value(source)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{source:?}"));
            *by_source.entry(name).or_default() += 1;
        }
    }
    let counts: Vec<String> = by_source
        .iter()
        .map(|(source, n)| format!("{n} {source}"))
        .collect();
    Report::new(
        "address-book",
        Level::Ok,
        if book.is_empty() {
            "empty: no seed, no discovered peer yet".to_owned()
        } else {
            format!("{} addresses ({})", book.len(), counts.join(", "))
        },
    )
}
