//! The mDNS source: advertises this broker as `_scout._udp.local.` and
//! feeds the addresses of the brokers of this mesh it hears into the
//! address book (source `mdns`).
//!
//! A record is used only when its TXT is well formed, its node id derives
//! from its key, it names this mesh and protocol, and the key is a member:
//! anything else is logged once and skipped. A stranger's address would
//! only be refused in the handshake; skipping it spares both sides the
//! dial. Records are judged again every second, so a broker admitted
//! later is dialed as soon as its admission arrives.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scout_mesh::wire::{MeshId, PROTOCOL_VERSION};
use scout_net::discovery::mdns::{
    self, Advert, BrowseEvent, Browser, InterfaceChange, InterfaceChanges, Mdns, MdnsConfig,
    SIGHTINGS_MAX, Sighting, Verdict,
};
use scout_net::transport::{Trust, TrustPolicy};
use tokio::sync::watch;
use tokio::time::Instant;

use super::remember;
use crate::daemon::mesh::address_book::AddressSource;
use crate::daemon::mesh::{Mesh, Shared};

/// How often sightings are judged again (membership and the mesh id may
/// have changed) and the advert checked.
pub const REJUDGE_INTERVAL: Duration = Duration::from_secs(1);

/// How often the mDNS daemon looks for interfaces that appeared or went.
pub const INTERFACE_CHECK_SECS: u32 = 5;

/// After browsing again, sightings not heard again within this are
/// dropped: the old browse may have missed their goodbyes.
pub const REBROWSE_GRACE: Duration = Duration::from_secs(5);

/// Browses started again in a row without an event in between, at most,
/// before the source waits a while: a daemon that keeps dropping its
/// receiver must not be spun on.
const REBROWSE_BURST_MAX: u32 = 8;

/// The wait after a burst of browses that ended at once.
const REBROWSE_PAUSE: Duration = Duration::from_secs(5);

struct Heard {
    sighting: Sighting,
    heard_at: Instant,
    /// The last verdict logged for it, so each is logged once.
    reported: Option<String>,
}

/// Runs the source until shutdown.
pub async fn run(mesh: Mesh, mut shutdown: watch::Receiver<bool>) {
    let shared = mesh.shared().clone();
    let Ok(local) = shared.endpoint.local_addr() else {
        return;
    };
    let ipv6 = local.is_ipv6();
    let mut daemon = match Mdns::start(MdnsConfig {
        ipv6,
        interface_check_secs: INTERFACE_CHECK_SECS,
    }) {
        Ok(daemon) => daemon,
        Err(err) => {
            tracing::warn!(cause = %err, "mDNS off: the daemon does not start");
            shared
                .discovery
                .update(|status| status.mdns.error = Some(err.to_string()));
            return;
        }
    };
    let interfaces = || {
        mdns::interfaces(ipv6)
            .into_iter()
            .map(|(name, ip)| format!("{name} {ip}"))
            .collect::<Vec<_>>()
    };
    shared
        .discovery
        .update(|status| status.mdns.interfaces = interfaces());
    let mut advertised: Option<MeshId> = None;
    advertise(&shared, &mut daemon, &mut advertised, local.port());
    let mut browser = match daemon.browse() {
        Ok(browser) => Some(browser),
        Err(err) => {
            tracing::warn!(cause = %err, "mDNS browse does not start; advertising only");
            None
        }
    };
    let changes = daemon.interface_changes().ok();
    let mut heard: BTreeMap<String, Heard> = BTreeMap::new();
    let mut rebrowsed_at: Option<Instant> = None;
    let mut rebrowse_burst = 0u32;
    let mut pause_until: Option<Instant> = None;
    let mut ticker = tokio::time::interval(REJUDGE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = ticker.tick() => {
                advertise(&shared, &mut daemon, &mut advertised, local.port());
                if pause_until.is_some_and(|until| Instant::now() >= until) {
                    pause_until = None;
                    browser = rebrowse(&shared, &daemon, &mut rebrowsed_at);
                }
                if let Some(at) = rebrowsed_at
                    && at.elapsed() >= REBROWSE_GRACE
                {
                    heard.retain(|_, entry| entry.heard_at >= at);
                    rebrowsed_at = None;
                }
                feed(&shared, &mut heard, ipv6);
            }
            event = next_browse(&browser) => match event {
                BrowseEvent::Resolved(sighting) => {
                    rebrowse_burst = 0;
                    if heard.len() >= SIGHTINGS_MAX && !heard.contains_key(&sighting.fullname) {
                        tracing::warn!(name = %sighting.fullname, "too many brokers heard on the LAN; ignored");
                        continue;
                    }
                    let previous = heard.remove(&sighting.fullname).and_then(|entry| entry.reported);
                    heard.insert(sighting.fullname.clone(), Heard {
                        sighting: *sighting,
                        heard_at: Instant::now(),
                        reported: previous,
                    });
                    feed(&shared, &mut heard, ipv6);
                }
                BrowseEvent::Removed { fullname } => {
                    rebrowse_burst = 0;
                    if heard.remove(&fullname).is_some() {
                        tracing::debug!(name = %fullname, "mDNS: a broker said goodbye");
                        feed(&shared, &mut heard, ipv6);
                    }
                }
                BrowseEvent::Ended => {
                    // The daemon drops a browse whose receiver fell behind.
                    rebrowse_burst += 1;
                    if rebrowse_burst > REBROWSE_BURST_MAX {
                        tracing::warn!("mDNS browses keep ending; pausing before the next");
                        browser = None;
                        pause_until = Some(Instant::now() + REBROWSE_PAUSE);
                        rebrowse_burst = 0;
                    } else {
                        tracing::info!("mDNS browse ended (fell behind); browsing again");
                        browser = rebrowse(&shared, &daemon, &mut rebrowsed_at);
                    }
                }
                BrowseEvent::Other => {}
            },
            change = next_change(&changes) => match change {
                InterfaceChange::Added(ip) | InterfaceChange::Removed(ip) => {
                    tracing::info!(%ip, "mDNS: interfaces changed; browsing again");
                    shared.discovery.update(|status| status.mdns.interfaces = interfaces());
                    browser = rebrowse(&shared, &daemon, &mut rebrowsed_at);
                }
                InterfaceChange::Error(err) => {
                    tracing::debug!(cause = %err, "mDNS daemon error");
                    shared.discovery.update(|status| status.mdns.error = Some(err));
                }
                InterfaceChange::Other | InterfaceChange::Ended => {}
            },
        }
    }
    heard.clear();
    feed(&shared, &mut heard, ipv6);
    daemon.shutdown();
}

async fn next_browse(browser: &Option<Browser>) -> BrowseEvent {
    match browser {
        Some(browser) => browser.next().await,
        None => std::future::pending().await,
    }
}

async fn next_change(changes: &Option<InterfaceChanges>) -> InterfaceChange {
    match changes {
        Some(changes) => match changes.next().await {
            InterfaceChange::Ended => std::future::pending().await,
            change => change,
        },
        None => std::future::pending().await,
    }
}

fn rebrowse(shared: &Shared, daemon: &Mdns, rebrowsed_at: &mut Option<Instant>) -> Option<Browser> {
    daemon.stop_browse();
    *rebrowsed_at = Some(Instant::now());
    shared.discovery.update(|status| status.mdns.rebrowses += 1);
    match daemon.browse() {
        Ok(browser) => Some(browser),
        Err(err) => {
            tracing::warn!(cause = %err, "mDNS browse does not start again");
            None
        }
    }
}

/// (Re)registers the advert when the mesh id changed (a join) or it never
/// registered.
fn advertise(shared: &Shared, daemon: &mut Mdns, advertised: &mut Option<MeshId>, port: u16) {
    let mesh_id = shared.mesh_id();
    if *advertised == Some(mesh_id) {
        return;
    }
    let advert = Advert {
        node_id: shared.identity.node_id.clone(),
        node_name: shared.identity.node_name.as_str().to_owned(),
        mesh_id,
        protocol_version: PROTOCOL_VERSION,
        public_key: shared.identity.key.public_key,
    };
    match daemon.advertise(&advert, port) {
        Ok(()) => {
            tracing::info!(service = mdns::SERVICE_TYPE, name = %advert.instance_name(), port, "advertising on mDNS");
            *advertised = Some(mesh_id);
            shared.discovery.update(|status| {
                status.mdns.advertising = true;
                status.mdns.error = None;
            });
        }
        Err(err) => {
            tracing::warn!(cause = %err, "cannot advertise on mDNS; browsing only");
            shared.discovery.update(|status| {
                status.mdns.advertising = false;
                status.mdns.error = Some(err.to_string());
            });
        }
    }
}

/// Judges every sighting and makes the book's `mdns` addresses exactly the
/// dialable addresses of the members heard.
fn feed(shared: &Arc<Shared>, heard: &mut BTreeMap<String, Heard>, ipv6: bool) {
    let own = &shared.identity.node_id;
    let mesh_id = shared.mesh_id();
    let mut keep: HashSet<SocketAddr> = HashSet::new();
    let mut skipped = Vec::new();
    for (fullname, entry) in heard.iter_mut() {
        let verdict = judge(shared, &entry.sighting, own, &mesh_id);
        match verdict {
            Ok(()) => {
                keep.extend(
                    mdns::dial_addresses(&entry.sighting.heard, entry.sighting.port, ipv6)
                        .into_iter()
                        .filter(|addr| !shared.announce.contains(addr)),
                );
                if entry.reported.take().is_some() {
                    tracing::info!(name = %fullname, "mDNS: a broker heard earlier is now dialable");
                }
            }
            Err(None) => {}
            Err(Some(reason)) => {
                if entry.reported.as_ref() != Some(&reason) {
                    tracing::info!(name = %fullname, host = %entry.sighting.host, "mDNS record skipped: {reason}");
                    entry.reported = Some(reason.clone());
                }
                skipped.push(format!("{fullname}: {reason}"));
            }
        }
    }
    let now_ms = shared.now_ms();
    {
        let mut book = shared
            .book
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for addr in &keep {
            book.add(*addr, AddressSource::Mdns, None, now_ms);
        }
        book.retract(AddressSource::Mdns, &keep);
    }
    let n_heard = heard.len();
    shared.discovery.update(|status| {
        status.mdns.brokers_heard = n_heard;
        status.mdns.addresses = keep.len();
        for reason in skipped {
            remember(&mut status.mdns.skipped, reason);
        }
    });
}

/// `Ok` for a member of this mesh to dial; `Err(None)` for this broker's
/// own advert; `Err(Some(reason))` for a record to skip.
fn judge(
    shared: &Shared,
    sighting: &Sighting,
    own: &scout_mesh::wire::NodeId,
    mesh_id: &MeshId,
) -> Result<(), Option<String>> {
    let advert = sighting
        .advert
        .as_ref()
        .map_err(|err| Some(err.to_string()))?;
    match mdns::judge(advert, own, mesh_id, PROTOCOL_VERSION) {
        Verdict::Own => return Err(None),
        Verdict::OtherMesh(other) => {
            return Err(Some(format!(
                "WRONG_MESH: node {} ({}) is in mesh {other}",
                advert.node_name, advert.node_id
            )));
        }
        Verdict::OtherProtocol(version) => {
            return Err(Some(format!(
                "UNSUPPORTED_VERSION: node {} speaks protocol {version}",
                advert.node_name
            )));
        }
        Verdict::Dial => {}
    }
    match shared.trust.trust(&advert.public_key) {
        Trust::Member => Ok(()),
        Trust::Revoked => Err(Some(format!(
            "REVOKED_PEER: node {} was revoked",
            advert.node_name
        ))),
        Trust::Unknown => Err(Some(format!(
            "UNKNOWN_PEER: node {} ({}) is not a member (yet)",
            advert.node_name, advert.node_id
        ))),
    }
}
