//! The Tailscale source: reads tailscaled's peer list every poll interval
//! and keeps the book's `tailscale` addresses equal to the Tailscale IPs of
//! the peers online now (filtered by `discovery.tailscale.tags`), dialed at
//! the tailnet's mesh port. A peer going offline loses its addresses at the
//! next poll; an error (no tailscaled, a backend that needs login) retracts
//! them all and is reported once, while the other sources go on.
//!
//! An offline peer's live connection is left alone: tailscaled's `Online`
//! is the coordination server's view, and a direct path may still work;
//! the QUIC idle timeout ends a connection that is really gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use scout_net::discovery::tailscale::{BackendState, TailnetStatus, TailscaleError};
use tokio::sync::watch;
use tokio::time::Instant;

use super::TailscaleConfig;
use super::admit;
use crate::daemon::mesh::address_book::AddressSource;
use crate::daemon::mesh::log_limit::LogLimiter;
use crate::daemon::mesh::{Mesh, Shared};

/// How long after a failed tailnet join the same peer is asked again.
pub const JOIN_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Tailnet joins tried per poll at most: each is a handshake and a whois.
const JOINS_PER_POLL_MAX: usize = 4;

/// The addresses to dial for a status: each online peer matching `tags`,
/// every Tailscale IP the mesh socket can reach, at `port`; keyed by
/// address, with the peer's stable id.
pub fn tailnet_addresses(
    status: &TailnetStatus,
    tags: &[String],
    port: u16,
    ipv6: bool,
) -> BTreeMap<SocketAddr, String> {
    let mut out = BTreeMap::new();
    if status.backend_state != BackendState::Running {
        return out;
    }
    let own_ips: HashSet<_> = status
        .self_node
        .iter()
        .flat_map(|node| node.ips.iter().copied())
        .collect();
    for peer in status.candidates(tags) {
        for ip in &peer.ips {
            if (ip.is_ipv6() && !ipv6) || own_ips.contains(ip) {
                continue;
            }
            out.insert(SocketAddr::new(*ip, port), peer.stable_id.clone());
        }
    }
    out
}

/// What a poll found, as far as the log is concerned: a status report by
/// its text (peer counts; a change is news), an error by its stable code
/// only, since the operating system's wording of one failure varies from
/// poll to poll (a reset, then a broken pipe).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReportKey {
    Status(String),
    Error(&'static str),
}

/// Decides whether a poll's report is logged: a status when it differs
/// from the last status logged, or when an error was logged since (the
/// recovery is news); an error when it differs from the last report, at
/// most once a minute per code, so a flapping tailscaled cannot flood the
/// log. Returns the number of lines of that key suppressed since the last
/// one written.
#[derive(Debug, Default)]
struct ReportLog {
    last: Option<ReportKey>,
    last_status: Option<String>,
    error_logged_since_status: bool,
    errors: LogLimiter<&'static str>,
}

impl ReportLog {
    fn admit(&mut self, key: ReportKey, now: Instant) -> Option<u64> {
        if self.last.as_ref() == Some(&key) {
            return None;
        }
        self.last = Some(key.clone());
        match key {
            ReportKey::Status(text) => {
                if self.last_status.as_ref() == Some(&text) && !self.error_logged_since_status {
                    return None;
                }
                self.last_status = Some(text);
                self.error_logged_since_status = false;
                Some(0)
            }
            ReportKey::Error(code) => {
                let admitted = self.errors.check(code, now)?;
                self.error_logged_since_status = true;
                Some(admitted.suppressed)
            }
        }
    }
}

/// Runs the source until shutdown.
pub async fn run(mesh: Mesh, config: TailscaleConfig, mut shutdown: watch::Receiver<bool>) {
    let shared = mesh.shared().clone();
    let ipv6 = shared
        .endpoint
        .local_addr()
        .map(|addr| addr.is_ipv6())
        .unwrap_or(false);
    let mut ticker = tokio::time::interval(config.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report_log = ReportLog::default();
    let mut join_attempts: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = ticker.tick() => {}
        }
        let polled = tokio::select! {
            polled = config.client.status() => polled,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (report, key, addresses) = match polled {
            Ok((status, via)) => {
                let addresses = tailnet_addresses(&status, &config.tags, config.peer_port, ipv6);
                let n_matching = status.candidates(&config.tags).count();
                let n_addresses = addresses.len();
                shared.discovery.update(|discovery| {
                    let tailscale = &mut discovery.tailscale;
                    tailscale.via = Some(via.as_str().to_owned());
                    tailscale.backend_state = Some(status.backend_state.to_string());
                    tailscale.peers_seen = status.peers.len();
                    tailscale.peers_matching = n_matching;
                    tailscale.addresses = n_addresses;
                    tailscale.polls += 1;
                    tailscale.error = None;
                });
                for reason in &status.skipped {
                    tracing::debug!("tailscale status: skipped {reason}");
                }
                let report = match status.backend_state.fix_hint() {
                    None => format!(
                        "tailscale: {} peers, {n_matching} online and matching, via {}",
                        status.peers.len(),
                        via.as_str()
                    ),
                    Some(hint) => format!("tailscale backend is {}: {hint}", status.backend_state),
                };
                if status.backend_state == BackendState::Running && config.admit.is_enabled() {
                    try_joins(&mesh, &config, &status, &mut join_attempts).await;
                }
                (report.clone(), ReportKey::Status(report), addresses)
            }
            Err(err) => {
                let message = err.to_string();
                shared.discovery.update(|discovery| {
                    discovery.tailscale.polls += 1;
                    discovery.tailscale.addresses = 0;
                    discovery.tailscale.error = Some(message.clone());
                    if matches!(err, TailscaleError::NotFound { .. }) {
                        discovery.tailscale.backend_state = None;
                    }
                });
                (
                    format!("tailscale source idle: {message}"),
                    ReportKey::Error(err.code()),
                    BTreeMap::new(),
                )
            }
        };
        if let Some(suppressed) = report_log.admit(key, Instant::now()) {
            tracing::info!(suppressed, "{report}");
        }
        feed(&shared, &addresses);
    }
    feed(&shared, &BTreeMap::new());
}

/// Makes the book's `tailscale` addresses exactly `addresses`.
fn feed(shared: &Shared, addresses: &BTreeMap<SocketAddr, String>) {
    let keep: HashSet<SocketAddr> = addresses
        .keys()
        .filter(|addr| !shared.announce.contains(addr))
        .copied()
        .collect();
    let now_ms = shared.now_ms();
    let mut book = shared
        .book
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    for addr in &keep {
        book.add(*addr, AddressSource::Tailscale, None, now_ms);
    }
    book.retract(AddressSource::Tailscale, &keep);
}

/// A broker alone in its own mesh asks matching tailnet peers to admit it.
async fn try_joins(
    mesh: &Mesh,
    config: &TailscaleConfig,
    status: &TailnetStatus,
    attempts: &mut HashMap<String, Instant>,
) {
    let shared = mesh.shared();
    if !admit::is_lone(shared) {
        return;
    }
    let now = Instant::now();
    attempts.retain(|_, at| now.duration_since(*at) < JOIN_RETRY_INTERVAL);
    let candidates: Vec<_> = status
        .candidates(&config.tags)
        .filter(|peer| config.admit.admits(peer))
        .filter(|peer| !attempts.contains_key(&peer.stable_id))
        .take(JOINS_PER_POLL_MAX)
        .cloned()
        .collect();
    for peer in candidates {
        attempts.insert(peer.stable_id.clone(), now);
        let Some(ip) = peer.ips.iter().find(|ip| ip.is_ipv4()).or(peer.ips.first()) else {
            continue;
        };
        let addr = SocketAddr::new(*ip, config.peer_port);
        match admit::join_by_tailnet(mesh, config, addr).await {
            Ok(Some(mesh_id)) => {
                tracing::info!(peer = %peer.host_name, %addr, mesh = %mesh_id, "joined a mesh by tailnet identity");
                return;
            }
            Ok(None) => {}
            Err(err) => {
                tracing::info!(peer = %peer.host_name, %addr, cause = %err, "tailnet join not made");
            }
        }
        if !admit::is_lone(shared) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scout_net::discovery::tailscale::parse_status;

    #[test]
    fn an_error_is_logged_by_its_code_once_a_minute() {
        let start = Instant::now();
        let mut log = ReportLog::default();
        let refused = ReportKey::Error("TAILSCALE_SOCKET_REFUSED");
        assert_eq!(log.admit(refused.clone(), start), Some(0));
        // The same code again (whatever the OS said this time): nothing.
        assert_eq!(log.admit(refused.clone(), start), None);
        // Flapping between a status and the error: each once a minute.
        let status = ReportKey::Status("tailscale: 2 peers".into());
        assert_eq!(log.admit(status.clone(), start), Some(0));
        for _ in 0..3 {
            assert_eq!(log.admit(refused.clone(), start), None);
            assert_eq!(log.admit(status.clone(), start), None);
        }
        let later = start + crate::daemon::mesh::log_limit::LOG_INTERVAL;
        assert_eq!(log.admit(refused, later), Some(3));
        assert_eq!(log.admit(status, later), Some(0));
        // A status that changed is news at once.
        let grown = ReportKey::Status("tailscale: 3 peers".into());
        assert_eq!(log.admit(grown, later), Some(0));
    }

    #[test]
    fn addresses_are_online_peers_on_the_mesh_port() {
        let json = br#"{"BackendState":"Running",
            "Self":{"ID":"me","TailscaleIPs":["100.64.0.1"],"Online":true},
            "Peer":{
              "nodekey:a":{"ID":"nA","TailscaleIPs":["100.64.0.2","fd7a::2"],"Online":true,"Tags":["tag:mesh"]},
              "nodekey:b":{"ID":"nB","TailscaleIPs":["100.64.0.3"],"Online":false,"Tags":["tag:mesh"]},
              "nodekey:c":{"ID":"nC","TailscaleIPs":["100.64.0.4"],"Online":true}}}"#;
        let status = parse_status(json).unwrap();
        let all = tailnet_addresses(&status, &[], 3101, false);
        let shown: Vec<String> = all.keys().map(ToString::to_string).collect();
        assert_eq!(shown, ["100.64.0.2:3101", "100.64.0.4:3101"]);
        let tagged = tailnet_addresses(&status, &["tag:mesh".into()], 3101, true);
        assert_eq!(tagged.len(), 2);
        assert!(tagged.values().all(|id| id == "nA"));
        let stopped = parse_status(
            br#"{"BackendState":"Stopped","Peer":{
            "nodekey:a":{"ID":"nA","TailscaleIPs":["100.64.0.2"],"Online":true}}}"#,
        )
        .unwrap();
        assert!(tailnet_addresses(&stopped, &[], 3101, false).is_empty());
    }
}
