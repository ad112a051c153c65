//! The broker's mesh: the sync replica (pure core), the QUIC endpoint and
//! the store, wired together.
//!
//! Code map:
//! - this file: [`Mesh`] (start, the views behind `scout peers` and
//!   `scout agents list`, invite, join, revoke, publishing local agents).
//! - [`connections`]: accept and dial, the hello, one connection per peer,
//!   serving each peer's streams, per-peer send queues.
//! - [`driver`]: drains the replica's outputs in order (persist before push)
//!   and runs its timers.
//! - [`views`]: the partial views: which members this broker connects to
//!   and syncs with (the active view), on-demand connections for routing,
//!   idle ones closed.
//! - [`trust`]: the membership snapshot the TLS verifiers consult.
//! - [`address_book`]: where peers may be reached, with backoff.
//! - [`directory`]: where a mention goes, from the replicated registry and
//!   which owners are reachable (the routing core's `Directory`).
//! - [`reachability`]: which members routing may count on, followed
//!   cheaply as connections come and go.
//! - [`relay`]: requests to a member no address of which answers, passed
//!   through a member both are connected to, signed end to end.
//! - [`log_limit`]: once-a-minute log lines for what peers can repeat.
//! - [`offline`]: the same registry edits for CLI commands when no broker runs.
//! - `crate::daemon::discovery` (beside this module): the mDNS and
//!   Tailscale sources that feed the address book, started from [`Mesh::start`].
//!
//! Architecture invariant: the replica is the only writer of registry
//! records; everything that changes the registry goes through it, here or in
//! [`offline`] under the home lock, never both at once.

pub mod address_book;
pub mod connections;
pub mod directory;
pub mod driver;
pub mod log_limit;
pub mod offline;
pub mod pairing;
pub mod reachability;
pub mod relay;
pub mod trust;
pub mod views;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use scout_mesh::lifecycle::EndpointState;
use scout_mesh::membership::{self, InviteRequest};
use scout_mesh::names::Label;
use scout_mesh::sync::{Replica, SyncConfig};
use scout_mesh::wire::{
    AdmissionBody, AdmissionMethod, InstanceBody, Invite, MeshFrame, MeshId, NodeBody, NodeId,
    PROTOCOL_VERSION, RecordBody, RecordKind, RevocationBody,
};
use scout_net::transport::{MeshEndpoint, NodeKey, TransportConfig};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::config::discover::LocalAgent;
use crate::config::json_file::JsonFile;
use crate::config::mesh_file::{BootstrapPeer, MeshFile};
use crate::env::Env;
use crate::home::Home;
use crate::store::{self, Store};
use address_book::{AddressBook, AddressSource, AddressView};
use connections::Peer;
use log_limit::LogLimiter;
use trust::MeshTrust;

/// Answers requests the mesh itself does not handle (routing frames).
pub type RequestHook = Arc<
    dyn Fn(
            NodeId,
            scout_mesh::wire::MeshFrame,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = scout_mesh::wire::MeshFrame> + Send>,
        > + Send
        + Sync,
>;

/// Serves a terminal relay a peer opened (`TerminalOpen`): gets the
/// stream's two halves after the request frame and answers on them itself.
pub type TerminalHook = Arc<
    dyn Fn(
            NodeId,
            String,
            quinn::SendStream,
            quinn::RecvStream,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// The terminal hook, printable.
pub struct TerminalHookSlot(pub TerminalHook);

impl std::fmt::Debug for TerminalHookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TerminalHook")
    }
}

/// A UDP socket to run on instead of binding one (netsim's simulated socket).
#[derive(Debug, Clone)]
pub struct SocketOverride {
    /// The socket.
    pub socket: Arc<dyn quinn::AsyncUdpSocket>,
    /// The runtime quinn drives it with.
    pub runtime: Arc<dyn quinn::Runtime>,
}

/// How the mesh runs.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Where to bind the UDP socket.
    pub bind: SocketAddr,
    /// Seeds (`host:port`), re-resolved on every dial round.
    pub seeds: Vec<String>,
    /// QUIC timeouts.
    pub transport: TransportConfig,
    /// Sync tunables.
    pub sync: SyncConfig,
    /// How large the partial views grow ([`views`]).
    pub views: scout_mesh::views::ViewSizes,
    /// How often the dialer looks for addresses due.
    pub dial_interval: Duration,
    /// The HTTP port, announced in the node record.
    pub http_port: u16,
    /// The broker's environment: the wall clock of records and invites,
    /// and the mesh's own random choices (dial jitter, invite secrets).
    pub env: Env,
    /// A socket to use instead of binding `bind`.
    pub socket: Option<SocketOverride>,
}

impl MeshConfig {
    /// Defaults for a real broker on `bind`, running on `env`.
    pub fn new(bind: SocketAddr, seeds: Vec<String>, http_port: u16, env: Env) -> MeshConfig {
        MeshConfig {
            bind,
            seeds,
            transport: TransportConfig::default(),
            sync: SyncConfig {
                seed: env.random_u64(),
                // Peers are the active view ([`views`]), not every member.
                partial_view: true,
                ..SyncConfig::default()
            },
            views: scout_mesh::views::ViewSizes::default(),
            dial_interval: DIAL_INTERVAL,
            http_port,
            env,
            socket: None,
        }
    }
}

/// How long a broker with an empty store waits to catch up with a peer
/// before publishing its own records anyway (alone on its mesh, say).
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// How often the dialer wakes to look for addresses due a dial.
pub const DIAL_INTERVAL: Duration = Duration::from_millis(200);

/// Who this broker is, for the mesh.
#[derive(Debug, Clone)]
pub struct MeshIdentity {
    /// Node id (derived from the key).
    pub node_id: NodeId,
    /// Node name.
    pub node_name: Label,
    /// The key, for TLS.
    pub key: NodeKey,
}

/// State shared by the mesh's tasks.
#[derive(Debug)]
pub struct Shared {
    pub(crate) identity: MeshIdentity,
    pub(crate) home: Home,
    pub(crate) store: Store,
    pub(crate) endpoint: MeshEndpoint,
    pub(crate) config: MeshConfig,
    pub(crate) mesh_id: Mutex<MeshId>,
    pub(crate) replica: Mutex<Replica>,
    pub(crate) kick: Notify,
    pub(crate) peers: Mutex<HashMap<NodeId, Peer>>,
    pub(crate) book: Mutex<AddressBook>,
    pub(crate) trust: Arc<MeshTrust>,
    pub(crate) announce: Vec<SocketAddr>,
    pub(crate) local_agents: Mutex<Vec<LocalAgent>>,
    /// True while a broker with an empty store (lost, or just joined) waits
    /// to catch up with a peer before writing its own records.
    pub(crate) catching_up: std::sync::atomic::AtomicBool,
    pub(crate) stats: SyncStats,
    /// Bumped after every change to the replica, for waiters.
    pub(crate) changes: watch::Sender<u64>,
    /// Refused inbound handshakes logged, per (address, code).
    pub(crate) inbound_log: Mutex<LogLimiter<(std::net::IpAddr, &'static str)>>,
    /// Failed or refused dials logged, per (address, code).
    pub(crate) dial_log: Mutex<LogLimiter<(SocketAddr, String)>>,
    /// Inbound connections per address that have not finished the hello.
    pub(crate) pending_hellos: Mutex<connections::PendingHellos>,
    /// The discovery sources' config and state (see `daemon::discovery`).
    pub(crate) discovery: Arc<crate::daemon::discovery::Discovery>,
    pub(crate) hook: std::sync::OnceLock<HookSlot>,
    pub(crate) terminal_hook: std::sync::OnceLock<TerminalHookSlot>,
    /// The one short code this broker holds, if any (see `pairing`).
    pub(crate) short_invite: Mutex<Option<scout_mesh::pairing::ShortInvite>>,
    /// When each member was last heard from on a connection that has since
    /// closed: its last heartbeat for `scout peers`.
    pub(crate) last_heard: Mutex<HashMap<NodeId, u64>>,
    /// The partial views (see [`views`]).
    pub(crate) views: Mutex<views::ViewState>,
    /// Wakes the dialer before its next tick (a member is wanted now).
    pub(crate) dial_kick: Notify,
    /// Bumped whenever a connection is registered or closed, or a dial
    /// ends: on-demand requests wait on it.
    pub(crate) connection_events: watch::Sender<u64>,
    /// The node key, for signing relayed requests and answers.
    pub(crate) signing_key: scout_mesh::sync::SigningKey,
    /// Members reached through a relay lately, and the relayed requests
    /// answered lately (see [`relay`]).
    pub(crate) relays: Mutex<relay::Relays>,
    /// Refused relayed frames logged, per (member, what).
    pub(crate) relay_log: Mutex<LogLimiter<(NodeId, &'static str)>>,
    /// Unix ms when this broker started: a relayed request sealed before
    /// it is refused (it may have been answered before a restart).
    pub(crate) started_ms: u64,
}

/// The request hook, printable.
pub struct HookSlot(pub RequestHook);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestHook")
    }
}

/// Counters of what sync moved, for `/v1/mesh` and the benchmarks.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Sync messages received from peers.
    pub messages_received: std::sync::atomic::AtomicU64,
    /// Registry records received in pushes and deltas.
    pub records_received: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Unix ms now, from the broker's environment.
    pub fn now_ms(&self) -> u64 {
        self.config.env.now_unix_ms()
    }

    /// The broker's environment (clocks, randomness, ids).
    pub fn env(&self) -> &Env {
        &self.config.env
    }

    /// A random value from the broker's environment.
    pub fn random<T>(&self) -> T
    where
        rand::distributions::Standard: rand::distributions::Distribution<T>,
    {
        self.config.env.random()
    }

    /// The send queue of a connected peer.
    pub(crate) fn sender_of(
        &self,
        peer: &NodeId,
    ) -> Option<tokio::sync::mpsc::Sender<scout_mesh::wire::MeshFrame>> {
        self.peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(peer)
            .map(|live| live.sender.clone())
    }

    /// Wakes those waiting for a connection to come or go.
    pub(crate) fn connection_changed(&self) {
        self.connection_events
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Wakes the driver to drain replica outputs.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Runs `f` on the replica, then wakes the driver.
    pub fn with_replica<T>(&self, f: impl FnOnce(&mut Replica) -> T) -> T {
        let result = {
            let mut replica = self
                .replica
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            f(&mut replica)
        };
        self.kick();
        self.changes
            .send_modify(|count| *count = count.wrapping_add(1));
        result
    }

    /// Recomputes the trust snapshot from the registry, closes at once
    /// every connection whose peer is no longer a member (revoked, say),
    /// and stops pinning the keys the registry settled, in memory, in the
    /// address book and in `mesh.json`. Runs after every change to
    /// admissions or revocations, and when this broker caught up with a
    /// peer (`caught_up`).
    pub(crate) fn refresh_trust(&self, caught_up: bool) {
        let unpinned = {
            let replica = self
                .replica
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            self.trust.refresh_and_settle(replica.registry(), caught_up)
        };
        connections::close_non_members(self);
        if unpinned.is_empty() {
            return;
        }
        {
            let mut book = self
                .book
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for key in &unpinned {
                book.unpin(key);
            }
        }
        match unpin_mesh_file(&self.home, &unpinned) {
            Ok(true) => tracing::info!(
                keys = unpinned.len(),
                "admissions have synced: the inviter's key is no longer pinned"
            ),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(cause = %err, "cannot unpin the bootstrap peers in mesh.json")
            }
        }
    }

    /// The current mesh id.
    pub fn mesh_id(&self) -> MeshId {
        *self
            .mesh_id
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A running mesh. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Mesh {
    shared: Arc<Shared>,
}

/// Whom a connection on demand is for: this broker's own requests, or a
/// request it relays for another member (kept among a few of its own).
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Own,
    Relay,
}

/// One member as `scout peers` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerView {
    /// Node id.
    pub node_id: String,
    /// Node name.
    pub name: String,
    /// `connected`, `idle` (no connection now; an address of it answered
    /// last time or was never tried: dialed when needed), `unreachable`
    /// (every address failed its last dial) or `revoked`.
    pub state: String,
    /// Addresses and where each came from.
    pub addresses: Vec<AddressView>,
    /// Unix ms the peer was last heard from (its record, or a connection).
    pub last_seen_ms: Option<u64>,
    /// Round-trip time of the live connection.
    pub rtt_ms: Option<f64>,
    /// Unix ms when the live connection was made.
    pub connected_since_ms: Option<u64>,
    /// `online` (a live connection), `idle` (none needed now),
    /// `offline` or `revoked`: the member as a person asks about it.
    #[serde(default)]
    pub status: String,
    /// Unix ms this broker last heard from the member: now while it is
    /// connected (the connection's keep-alives prove it), else when its
    /// connection closed, its address was last seen or its newest record
    /// was written, whichever is latest.
    #[serde(default)]
    pub last_heartbeat_ms: Option<u64>,
    /// The members it names in its node record as its relays (names, or
    /// short ids of members whose names are not known): a request goes
    /// through them when none of its addresses answers.
    #[serde(default)]
    pub relays: Vec<String>,
}

/// An agent instance anywhere in the mesh.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InstanceView {
    /// `@def@node#ws`.
    pub name: String,
    /// The owner's node id.
    pub owner: String,
    /// Whether the owner is this broker.
    pub local: bool,
    /// The harness.
    pub harness: String,
    /// The endpoint state as its owner last published it (`unreachable` when
    /// the owner is a disconnected peer).
    pub state: String,
    /// Flights it is working on.
    pub active_flights: u32,
    /// Its working directory on its owner.
    pub cwd: String,
    /// Whether its definition makes a worktree on its owner for a mentioned
    /// workspace that has no instance yet.
    #[serde(default)]
    pub worktrees: bool,
}

/// What `scout mesh invite` returns.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct IssuedCode {
    /// The code to give the joining machine.
    pub code: String,
    /// Unix ms after which it is refused.
    pub expires_at_ms: u64,
    /// Where the joiner will dial.
    pub addresses: Vec<String>,
}

impl Mesh {
    /// Starts the mesh: restores the registry from the store, binds the
    /// endpoint, publishes this node and its agents, and spawns the tasks
    /// into `tasks`; they stop when `shutdown` turns true.
    pub async fn start(
        home: &Home,
        identity: MeshIdentity,
        store: Store,
        config: MeshConfig,
        agents: Vec<LocalAgent>,
        shutdown: watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<Mesh> {
        let mesh_file =
            offline::ensure_mesh(home, &identity, &store, config.env.now_unix_ms()).await?;
        let mesh_id = MeshId::parse(&mesh_file.mesh_id).context("mesh.json has a bad mesh id")?;
        let stored = store.read(store::mesh::load_registry)?;
        // An empty registry in a broker that belongs to a mesh means a lost
        // store or a fresh join: peers may hold this node's older records
        // under the same sequence numbers, so it writes nothing of its own
        // until it caught up with a peer (or waited long enough alone).
        let fresh_store = stored.records.is_empty();
        if stored.skipped > 0 {
            tracing::warn!(
                rows = stored.skipped,
                "skipped registry rows that do not decode; peers will resend them"
            );
        }
        let vv = stored.vv_for_restore(&identity.node_id);
        let replica = Replica::restore(
            offline::replica_identity(&identity, mesh_id)?,
            config.sync.clone(),
            stored.records,
            vv,
        );
        // The relays named before a restart stay named until they are gone.
        let named_relays = replica
            .registry()
            .node(&identity.node_id)
            .map(|node| node.via.clone())
            .unwrap_or_default();
        let trust = Arc::new(MeshTrust::new(config.env.clone()));
        let now_ms = config.env.now_unix_ms();
        if let Some(until) = store.read(|c| store::mesh::open_invites_until(c, now_ms))? {
            trust.set_join_window_until(until);
        }

        let endpoint = match &config.socket {
            Some(over) => MeshEndpoint::with_socket(
                over.socket.clone(),
                over.runtime.clone(),
                identity.key.clone(),
                trust.clone(),
                config.transport.clone(),
            )?,
            None => MeshEndpoint::bind(
                config.bind,
                identity.key.clone(),
                trust.clone(),
                config.transport.clone(),
            )
            .with_context(|| {
                format!(
                    "cannot open the mesh port {} (set mesh_port in settings.json, or another broker uses it)",
                    config.bind
                )
            })?,
        };
        let local = endpoint
            .local_addr()
            .context("the mesh socket has no address")?;
        let announce = announce_addresses(local);

        let mut book = AddressBook::default();
        // A bootstrap key is pinned while the file says so (a join whose
        // admissions have not synced yet), or when the registry holds no
        // admission at all (a lost store): then it is the only way back in.
        let pin_bootstrap =
            |peer: &BootstrapPeer| peer.pinned || !replica.registry().has_admissions();
        for peer in &mesh_file.bootstrap {
            if let (Ok(addr), Some(key)) = (peer.address.parse(), parse_key(&peer.public_key)) {
                book.add(
                    addr,
                    AddressSource::Invite,
                    Some(NodeId::of_public_key(&key)),
                    now_ms,
                );
                if pin_bootstrap(peer) {
                    book.pin(addr, key);
                    trust.pin(key);
                }
            }
        }
        // Revocations first: the stored registry may already settle a pin.
        let unpinned = trust.refresh_and_settle(replica.registry(), false);
        for key in &unpinned {
            book.unpin(key);
        }
        if let Err(err) = unpin_mesh_file(home, &unpinned) {
            tracing::warn!(cause = %err, "cannot unpin the bootstrap peers in mesh.json");
        }

        // A simulated socket (netsim) has no LAN and no tailnet.
        let discovery = Arc::new(crate::daemon::discovery::Discovery::new(
            if config.socket.is_some() {
                crate::daemon::discovery::DiscoveryConfig::disabled()
            } else {
                crate::daemon::discovery::DiscoveryConfig::load(home)
            },
        ));
        let identity_id = identity.node_id.clone();
        let started_ms = config.env.now_unix_ms();
        let signing_key = <scout_mesh::sync::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_der(&identity.key.pkcs8_der)
            .map_err(|err| anyhow::anyhow!("the node key cannot sign: {err}"))?;
        let views_seed = config.env.random_u64();
        let view_sizes = config.views;
        let trust_for_views = trust.clone();
        let shared = Arc::new(Shared {
            identity,
            home: home.clone(),
            store,
            endpoint,
            config,
            mesh_id: Mutex::new(mesh_id),
            replica: Mutex::new(replica),
            kick: Notify::new(),
            peers: Mutex::new(HashMap::new()),
            book: Mutex::new(book),
            trust,
            announce,
            local_agents: Mutex::new(Vec::new()),
            catching_up: std::sync::atomic::AtomicBool::new(fresh_store),
            stats: SyncStats::default(),
            changes: watch::channel(0).0,
            inbound_log: Mutex::new(LogLimiter::default()),
            dial_log: Mutex::new(LogLimiter::default()),
            pending_hellos: Mutex::new(connections::PendingHellos::default()),
            discovery,
            hook: std::sync::OnceLock::new(),
            terminal_hook: std::sync::OnceLock::new(),
            short_invite: Mutex::new(None),
            last_heard: Mutex::new(HashMap::new()),
            views: Mutex::new(views::ViewState::new(
                identity_id,
                views_seed,
                view_sizes,
                trust_for_views,
                named_relays.clone(),
            )),
            dial_kick: Notify::new(),
            connection_events: watch::channel(0).0,
            signing_key,
            relays: Mutex::new(relay::Relays::naming(named_relays)),
            relay_log: Mutex::new(LogLimiter::default()),
            started_ms,
        });
        let mesh = Mesh { shared };
        *mesh
            .shared
            .local_agents
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = agents.clone();
        if fresh_store {
            tracing::info!("empty store: catching up with a peer before publishing this node");
            let waiting = mesh.clone();
            let mut stop = shutdown.clone();
            tasks.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(CATCH_UP_WAIT) => waiting.finish_catching_up("no peer answered in time"),
                    _ = stop.wait_for(|stop| *stop) => {}
                }
            });
        } else {
            mesh.publish_node();
            mesh.publish_local_agents(agents);
        }

        tasks.spawn(driver::run(mesh.shared.clone(), shutdown.clone()));
        tasks.spawn(connections::accept_loop(
            mesh.shared.clone(),
            shutdown.clone(),
        ));
        crate::daemon::discovery::spawn(&mesh, shutdown.clone(), tasks);
        tasks.spawn(relay::probe_loop(mesh.shared.clone(), shutdown.clone()));
        tasks.spawn(connections::dial_loop(mesh.shared.clone(), shutdown));
        Ok(mesh)
    }

    /// The shared state (for the HTTP layer and tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The UDP address the endpoint listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.endpoint.local_addr().ok()
    }

    /// The addresses this broker announces.
    pub fn announced(&self) -> &[SocketAddr] {
        &self.shared.announce
    }

    /// The mesh id.
    pub fn mesh_id(&self) -> MeshId {
        self.shared.mesh_id()
    }

    /// Ends the wait of a broker with an empty store and publishes its
    /// node and agents (once).
    pub fn finish_catching_up(&self, why: &str) {
        use std::sync::atomic::Ordering;
        if self.shared.catching_up.swap(false, Ordering::SeqCst) {
            tracing::info!(why, "publishing this node");
            self.publish_node();
            let agents = self
                .shared
                .local_agents
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone();
            self.publish_local_agents(agents);
        }
    }

    /// Publishes (or refreshes) this node's record.
    pub fn publish_node(&self) {
        let shared = &self.shared;
        let body = RecordBody::Node(NodeBody {
            node_name: shared.identity.node_name.as_str().to_owned(),
            addresses: shared.announce.iter().map(ToString::to_string).collect(),
            http_port: shared.config.http_port,
            scout_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: PROTOCOL_VERSION,
            via: relay::names_for_record(shared),
        });
        let now = shared.now_ms();
        if let Err(err) = shared.with_replica(|replica| replica.put(now, "", body)) {
            tracing::error!(cause = %err, "cannot publish this node's record");
        }
    }

    /// Publishes this machine's agents as instances and withdraws the ones
    /// that are gone.
    pub fn publish_local_agents(&self, agents: Vec<LocalAgent>) {
        let shared = &self.shared;
        if shared.catching_up.load(std::sync::atomic::Ordering::SeqCst) {
            // Published once caught up.
            *shared
                .local_agents
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()) = agents;
            return;
        }
        let node_name = shared.identity.node_name.clone();
        let now = shared.now_ms();
        // In name order, so the sequence numbers they get repeat with a
        // simulation's seed.
        let wanted: std::collections::BTreeMap<String, InstanceBody> = agents
            .iter()
            .map(|agent| {
                (
                    agent.instance_name(&node_name).to_string(),
                    InstanceBody {
                        harness: agent.harness,
                        workspace: agent
                            .workspace
                            .as_ref()
                            .map(|ws| ws.as_str().to_owned())
                            .unwrap_or_default(),
                        cwd: agent.cwd.display().to_string(),
                        endpoint_state: EndpointState::Registered,
                        active_flights: 0,
                        worktrees: agent.worktrees.is_some(),
                    },
                )
            })
            .collect();
        shared.with_replica(|replica| {
            let own = shared.identity.node_id.clone();
            let stale: Vec<String> = replica
                .registry()
                .records()
                .filter(|record| {
                    record.key.origin == own
                        && record.key.kind == RecordKind::Instance
                        && record.body.is_some()
                        && !wanted.contains_key(&record.key.name)
                })
                .map(|record| record.key.name.clone())
                .collect();
            for name in stale {
                if let Err(err) = replica.delete(now, RecordKind::Instance, &name) {
                    tracing::warn!(instance = %name, cause = %err, "cannot withdraw an instance");
                }
            }
            for (name, body) in &wanted {
                if let Err(err) = replica.put(now, name, RecordBody::Instance(body.clone())) {
                    tracing::warn!(instance = %name, cause = %err, "cannot publish an instance");
                }
            }
        });
        *shared
            .local_agents
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = agents;
    }

    /// Every member but this broker, with connection state and addresses.
    pub fn peers(&self) -> Vec<PeerView> {
        let shared = &self.shared;
        let connected: HashMap<NodeId, (f64, u64)> = shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|(id, peer)| {
                (
                    id.clone(),
                    (
                        peer.connection.rtt().as_secs_f64() * 1000.0,
                        peer.connected_at_ms,
                    ),
                )
            })
            .collect();
        let book = shared
            .book
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let replica = shared
            .replica
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut views = peer_views(
            replica.registry(),
            &shared.identity.node_id,
            &connected,
            Some(&book),
        );
        let now = shared.now_ms();
        let last_heard = shared
            .last_heard
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for view in &mut views {
            let heard = NodeId::parse(&view.node_id)
                .ok()
                .and_then(|id| last_heard.get(&id).copied());
            view.last_heartbeat_ms = if view.state == "connected" {
                Some(now)
            } else {
                view.last_heartbeat_ms.max(heard)
            };
        }
        views
    }

    /// The active view: the members this broker syncs with.
    pub fn active_view(&self) -> Vec<NodeId> {
        self.shared
            .views
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .active()
    }

    /// Members with a live connection now.
    pub fn connected(&self) -> Vec<NodeId> {
        self.shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .filter(|(_, peer)| peer.connection.close_reason().is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Members this broker can reach now (the routing driver's view): those
    /// connected, and those with an address whose last dial did not fail
    /// (a request dials them on demand). A member whose every address
    /// failed is unreachable until a dial succeeds or it connects.
    pub fn reachable(&self) -> Vec<NodeId> {
        let mut reachable: HashSet<NodeId> = self.connected().into_iter().collect();
        reachable.extend(self.dialable_members());
        reachable.into_iter().collect()
    }

    /// Members other than this broker with an address whose last dial did
    /// not fail. O(members): a caller that polls keeps its copy while
    /// [`Mesh::dialable_version`] stands.
    pub fn dialable_members(&self) -> std::collections::BTreeSet<NodeId> {
        let dialable = self
            .shared
            .book
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .dialable_nodes();
        let relayed = self.relays().fresh(self.shared.env().now_mono_ms());
        dialable
            .into_iter()
            .chain(relayed)
            .filter(|id| self.may_dial(id))
            .collect()
    }

    /// Whether `peer` is one of [`Mesh::dialable_members`], asked about
    /// alone (without a pass over every member).
    pub fn is_dialable(&self, peer: &NodeId) -> bool {
        self.may_dial(peer)
            && (self
                .shared
                .book
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .has_dialable(peer)
                || self
                    .relays()
                    .is_fresh(peer, self.shared.env().now_mono_ms()))
    }

    fn relays(&self) -> std::sync::MutexGuard<'_, relay::Relays> {
        self.shared
            .relays
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A member other than this broker: one routing may dial.
    fn may_dial(&self, peer: &NodeId) -> bool {
        *peer != self.shared.identity.node_id && self.shared.trust.is_member(peer)
    }

    /// A number that changes whenever [`Mesh::dialable_members`] may have.
    /// Read it before the set: a change in between shows as a new version
    /// at the next look.
    pub fn dialable_version(&self) -> u64 {
        let book = self
            .shared
            .book
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .dialable_version();
        // All only grow, so their sum changes whenever one does (a relayed
        // member that is no longer fresh is forgotten here, so it counts).
        let now = self.shared.env().now_mono_ms();
        let relays = {
            let mut relays = self.relays();
            relays.expire(now);
            relays.version()
        };
        book.wrapping_add(self.shared.trust.members_version())
            .wrapping_add(relays)
    }

    /// Keeps connections to `peers` (owners routing waits on): the dialer
    /// retries them, and their connections are not closed as idle.
    pub fn want(&self, peers: impl IntoIterator<Item = NodeId>) {
        let now = self.shared.now_ms();
        let mut state = self
            .shared
            .views
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for peer in peers {
            state.want(peer, now);
        }
    }

    /// The live connection to `peer`, dialing it first if there is none
    /// (an owner outside the active view, say). Fails when the member has
    /// no address, when every address failed, or when no connection came
    /// within the handshake timeout and a request's.
    async fn connection_to(
        &self,
        peer: &NodeId,
        purpose: Purpose,
    ) -> Result<quinn::Connection, String> {
        let shared = &self.shared;
        let mut events = shared.connection_events.subscribe();
        if let Some(live) = self.live_connection(peer) {
            return Ok(live);
        }
        if *peer == shared.identity.node_id || !shared.trust.admits_node(peer) {
            return Err("the peer is not a member of this mesh".to_owned());
        }
        if !shared
            .book
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .has_dialable(peer)
        {
            return Err("the peer is not connected and no address of it answers".to_owned());
        }
        match purpose {
            Purpose::Own => self.want([peer.clone()]),
            Purpose::Relay => {
                let now = shared.now_ms();
                shared
                    .views
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .want_for_relay(peer.clone(), now);
            }
        }
        shared.dial_kick.notify_one();
        let wait =
            shared.config.transport.handshake_timeout + shared.config.transport.request_timeout;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, events.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(
                        "the peer is not connected and no connection came in time".to_owned()
                    );
                }
            }
            if let Some(live) = self.live_connection(peer) {
                return Ok(live);
            }
            if shared
                .book
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .dial_failed(peer)
            {
                return Err("the peer is not connected and dialing it failed".to_owned());
            }
        }
    }

    /// The live connection to `peer`, if any, noted as used now.
    fn live_connection(&self, peer: &NodeId) -> Option<quinn::Connection> {
        let peers = self
            .shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let live = peers.get(peer)?;
        live.touch(self.shared.now_ms());
        Some(live.connection.clone())
    }

    /// One request to a member, answered within the transport's request
    /// timeout; a member with no connection is dialed first, and one that
    /// cannot be dialed is asked through a relay ([`relay`]; routing's
    /// requests only). The error says why no answer came, for a person.
    ///
    /// A relayable request waits at most [`relay::DIRECT_WAIT`] for a
    /// connection before it goes through a relay instead, when there is one
    /// to go through (the dial goes on, and the next request takes the
    /// connection if it came): a member behind a NAT is never dialed
    /// successfully, and its first request would otherwise wait for the
    /// whole handshake timeout.
    pub async fn request(&self, peer: &NodeId, frame: &MeshFrame) -> Result<MeshFrame, String> {
        let relayable = scout_mesh::relay::relayable(frame) && self.may_dial(peer);
        let connection = if let Some(live) = self.live_connection(peer) {
            Ok(live)
        } else if relayable && relay::has_relays(&self.shared, peer) {
            tokio::time::timeout(relay::DIRECT_WAIT, self.connection_to(peer, Purpose::Own))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no connection to the peer within {} s",
                        relay::DIRECT_WAIT.as_secs()
                    ))
                })
        } else {
            self.connection_to(peer, Purpose::Own).await
        };
        match connection {
            Ok(connection) => self.request_on(&connection, frame).await,
            Err(direct) if relayable => relay::request_relayed(&self.shared, peer, frame)
                .await
                .map_err(|relayed| format!("{direct}; {relayed}")),
            Err(direct) => Err(direct),
        }
    }

    /// [`Mesh::request`] without a relay: what a relay itself sends to
    /// the target, among its relay targets (not routing's own wants).
    async fn request_direct(&self, peer: &NodeId, frame: &MeshFrame) -> Result<MeshFrame, String> {
        let connection = self.connection_to(peer, Purpose::Relay).await?;
        self.request_on(&connection, frame).await
    }

    async fn request_on(
        &self,
        connection: &quinn::Connection,
        frame: &MeshFrame,
    ) -> Result<MeshFrame, String> {
        let timeout = self.shared.config.transport.request_timeout;
        scout_net::transport::endpoint::request(connection, frame, timeout)
            .await
            .map_err(|err| format!("{}: {err}", err.code()))
    }

    /// Sync counters since start: (messages, records) received.
    pub fn sync_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.shared.stats;
        (
            stats.messages_received.load(Relaxed),
            stats.records_received.load(Relaxed),
        )
    }

    /// The number of live records in the registry and its state digest, for
    /// convergence checks.
    pub fn registry_digest(&self) -> (usize, u64) {
        let replica = self
            .shared
            .replica
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        (replica.registry().len(), replica.state_digest())
    }

    /// Routes requests the mesh does not handle itself (set once).
    pub fn set_request_hook(&self, hook: RequestHook) {
        let _ = self.shared.hook.set(HookSlot(hook));
    }

    /// Serves terminal relays peers open (set once).
    pub fn set_terminal_hook(&self, hook: TerminalHook) {
        let _ = self.shared.terminal_hook.set(TerminalHookSlot(hook));
    }

    /// A new bidirectional stream to a member (dialed first if need be),
    /// for a relay that outlives one request (a terminal). The connection
    /// counts as in use while the guard lives.
    pub async fn open_stream(
        &self,
        peer: &NodeId,
    ) -> Result<
        (
            quinn::SendStream,
            quinn::RecvStream,
            connections::StreamGuard,
        ),
        String,
    > {
        let connection = self.connection_to(peer, Purpose::Own).await?;
        let guard = self
            .shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(peer)
            .filter(|live| live.connection.stable_id() == connection.stable_id())
            .map(connections::StreamGuard::new)
            .ok_or_else(|| "the connection to the peer closed".to_owned())?;
        let (send, recv) = connection.open_bi().await.map_err(|err| err.to_string())?;
        Ok((send, recv, guard))
    }

    /// The node id of the member named `name` (or with that id).
    pub fn member_id(&self, name: &str) -> anyhow::Result<NodeId> {
        self.shared
            .with_replica(|replica| find_member(replica, name))
    }

    /// A receiver that wakes after every change to the registry.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Runs `f` on the registry.
    pub fn with_registry<T>(&self, f: impl FnOnce(&scout_mesh::registry::Registry) -> T) -> T {
        let replica = self
            .shared
            .replica
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        f(replica.registry())
    }

    /// UDP bytes (sent, received) on each live peer connection.
    pub fn connection_bytes(&self) -> Vec<(NodeId, u64, u64)> {
        self.shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|(id, peer)| {
                let stats = peer.connection.stats();
                (id.clone(), stats.udp_tx.bytes, stats.udp_rx.bytes)
            })
            .collect()
    }

    /// Every address in the book.
    pub fn addresses(&self) -> Vec<AddressView> {
        self.shared
            .book
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .views()
    }

    /// Every agent instance in the mesh.
    pub fn instances(&self) -> Vec<InstanceView> {
        let shared = &self.shared;
        let connected: HashSet<NodeId> = shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .keys()
            .cloned()
            .collect();
        let replica = shared
            .replica
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        instance_views(
            replica.registry(),
            &shared.identity.node_id,
            Some(&connected),
        )
    }

    /// Issues a one-time invite.
    pub async fn invite(&self, ttl: Duration) -> anyhow::Result<IssuedCode> {
        let shared = &self.shared;
        let now = shared.now_ms();
        let (invite, issued) = membership::issue(
            InviteRequest {
                mesh_id: shared.mesh_id(),
                inviter: shared.identity.node_id.clone(),
                inviter_key: shared.identity.key.public_key,
                addresses: shared.announce.iter().map(ToString::to_string).collect(),
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            },
            now,
            shared.random(),
        );
        let to_store = issued.clone();
        shared
            .store
            .write(move |tx| store::mesh::insert_invite(tx, &to_store, now))
            .await?;
        shared.trust.extend_join_window_until(issued.expires_at_ms);
        Ok(IssuedCode {
            code: invite.to_code(),
            expires_at_ms: invite.expires_at_ms,
            addresses: invite.addresses,
        })
    }

    /// Issues this broker's short code (replacing a pending one).
    pub async fn invite_short(&self, ttl: Duration) -> anyhow::Result<pairing::IssuedShortCode> {
        pairing::issue(
            &self.shared,
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        )
        .await
    }

    /// Joins the mesh of the broker holding a short code, found by
    /// discovery or at `peers`, leaving the current one.
    pub async fn join_short(
        &self,
        code: &scout_mesh::pairing::ShortCode,
        peers: &[String],
    ) -> Result<MeshId, pairing::PairError> {
        pairing::join_running(self, code, peers).await
    }

    /// Joins the mesh of an invite, leaving the current one.
    pub async fn join(&self, invite: Invite) -> anyhow::Result<MeshId> {
        connections::join_running(&self.shared, self, invite).await
    }

    /// Revokes a member by node id or name.
    pub fn revoke(&self, node: &str, reason: &str) -> anyhow::Result<NodeId> {
        let shared = &self.shared;
        let now = shared.now_ms();
        shared.with_replica(|replica| {
            let target = find_member(replica, node)?;
            if target == shared.identity.node_id {
                anyhow::bail!("a broker cannot revoke itself");
            }
            let body = RecordBody::Revocation(RevocationBody {
                reason: reason.to_owned(),
                revoked_by: shared.identity.node_id.clone(),
            });
            replica.put(now, target.as_str(), body)?;
            Ok(target)
        })
    }

    /// Switches to another mesh (after a join): forgets the registry,
    /// remembers the inviter, and republishes this node.
    pub(crate) async fn switch_mesh(&self, invite: &Invite) -> anyhow::Result<()> {
        let shared = &self.shared;
        offline::write_mesh_file(&shared.home, invite)?;
        shared.store.write(store::mesh::wipe_registry).await?;
        {
            let mut replica = shared
                .replica
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            *replica = Replica::new(
                offline::replica_identity(&shared.identity, invite.mesh_id)?,
                shared.config.sync.clone(),
            );
            shared.trust.refresh(replica.registry());
        }
        *shared
            .mesh_id
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = invite.mesh_id;
        shared.trust.pin(invite.inviter_key);
        let old_peers: Vec<Peer> = shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .drain()
            .map(|(_, peer)| peer)
            .collect();
        for peer in old_peers {
            peer.connection.close(
                quinn::VarInt::from_u32(scout_net::transport::close_code::SHUTDOWN),
                b"left for another mesh",
            );
        }
        // The views and named relays were of the old mesh: the first record
        // in the new one names members of the new one.
        *shared
            .views
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = views::ViewState::new(
            shared.identity.node_id.clone(),
            shared.config.env.random_u64(),
            shared.config.views,
            shared.trust.clone(),
            Vec::new(),
        );
        *shared
            .relays
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = relay::Relays::default();
        let now = shared.now_ms();
        {
            let mut book = shared
                .book
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for addr in invite.addresses.iter().filter_map(|addr| addr.parse().ok()) {
                book.add(
                    addr,
                    AddressSource::Invite,
                    Some(invite.inviter.clone()),
                    now,
                );
                book.pin(addr, invite.inviter_key);
            }
        }
        self.publish_node();
        let agents = shared
            .local_agents
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        self.publish_local_agents(agents);
        Ok(())
    }

    /// Closes the endpoint (every connection) at shutdown.
    pub async fn close(&self) {
        self.shared.endpoint.close();
        // Bounded: a peer that never acknowledges the close is not waited for.
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }
}

/// Every member but `own` (revoked ones included), as shown to people.
/// `connected` maps live peers to (round-trip ms, connected since ms).
pub fn peer_views(
    registry: &scout_mesh::registry::Registry,
    own: &NodeId,
    connected: &HashMap<NodeId, (f64, u64)>,
    book: Option<&AddressBook>,
) -> Vec<PeerView> {
    let mut ids: Vec<NodeId> = registry.members().iter().cloned().collect();
    for record in registry.records() {
        if record.key.kind == RecordKind::Revocation
            && let Ok(id) = NodeId::parse(&record.key.name)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids.retain(|id| id != own);
    ids.sort();
    ids.into_iter()
        .map(|id| {
            let admitted_name = registry.records().find_map(|record| match &record.body {
                Some(RecordBody::Admission(admission)) if record.key.name == id.as_str() => {
                    Some(admission.node_name.clone())
                }
                _ => None,
            });
            let name = registry
                .node(&id)
                .map(|node| node.node_name.clone())
                .or(admitted_name)
                .unwrap_or_else(|| "?".to_owned());
            let last_record_ms = registry
                .records()
                .filter(|record| record.key.origin == id)
                .map(|record| record.hlc.wall_ms)
                .max();
            let relays: Vec<String> = registry
                .node(&id)
                .map(|node| {
                    node.via
                        .iter()
                        .map(|via| {
                            registry.node(via).map_or_else(
                                || via.as_str().chars().take(12).collect(),
                                |named| named.node_name.clone(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let live = connected.get(&id);
            // Not connected is not unreachable: a broker keeps connections
            // to its active view only, and dials others when it needs them.
            let dialable = book.is_some_and(|book| book.has_dialable(&id));
            let state = if registry.is_revoked(&id) {
                "revoked"
            } else if live.is_some() {
                "connected"
            } else if dialable {
                "idle"
            } else {
                "unreachable"
            };
            let addresses: Vec<AddressView> = match book {
                Some(book) => book
                    .addresses_of(&id)
                    .into_iter()
                    .map(address_book::view)
                    .collect(),
                None => registry
                    .node(&id)
                    .map(|node| {
                        node.addresses
                            .iter()
                            .map(|addr| AddressView {
                                addr: addr.clone(),
                                sources: vec![AddressSource::Learned],
                                node_id: Some(id.to_string()),
                                first_seen_ms: 0,
                                last_seen_ms: 0,
                                failures: 0,
                                last_error: None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            let last_seen_ms = addresses
                .iter()
                .map(|addr| addr.last_seen_ms)
                .filter(|seen| *seen > 0)
                .chain(last_record_ms)
                .max();
            PeerView {
                node_id: id.to_string(),
                name,
                state: state.to_owned(),
                addresses,
                last_seen_ms,
                rtt_ms: live.map(|(rtt, _)| *rtt),
                connected_since_ms: live.map(|(_, since)| *since),
                status: peer_status(state).to_owned(),
                last_heartbeat_ms: last_seen_ms,
                relays,
            }
        })
        .collect()
}

/// The word `scout peers` shows for a connection state.
pub fn peer_status(state: &str) -> &'static str {
    match state {
        "revoked" => "revoked",
        "connected" => "online",
        "idle" => "idle",
        _ => "offline",
    }
}

/// The instances of a registry, as shown to people.
pub fn instance_views(
    registry: &scout_mesh::registry::Registry,
    own: &NodeId,
    connected: Option<&HashSet<NodeId>>,
) -> Vec<InstanceView> {
    let mut views: Vec<InstanceView> = registry
        .instances()
        .into_iter()
        .map(|entry| {
            let local = entry.origin == own;
            let reachable = local || connected.is_none_or(|set| set.contains(entry.origin));
            InstanceView {
                name: entry.name.to_string(),
                owner: entry.origin.to_string(),
                local,
                harness: entry.body.harness.to_string(),
                state: if reachable {
                    entry.body.endpoint_state.to_string()
                } else {
                    EndpointState::Unreachable.to_string()
                },
                active_flights: entry.body.active_flights,
                cwd: entry.body.cwd.clone(),
                worktrees: entry.body.worktrees,
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

/// Finds a member (or revoked node) by id, id prefix or node name.
pub fn find_member(replica: &Replica, query: &str) -> anyhow::Result<NodeId> {
    let registry = replica.registry();
    let query = query.trim().to_ascii_lowercase();
    let mut known: Vec<(NodeId, String)> = Vec::new();
    for record in registry.records() {
        if let Some(RecordBody::Admission(admission)) = &record.body
            && let Ok(id) = NodeId::parse(&record.key.name)
            && !known.iter().any(|(known_id, _)| *known_id == id)
        {
            let name = registry
                .node(&id)
                .map(|node| node.node_name.clone())
                .unwrap_or_else(|| admission.node_name.clone());
            known.push((id, name));
        }
    }
    let matches: Vec<&(NodeId, String)> = known
        .iter()
        .filter(|(id, name)| {
            *name == query
                || id.as_str() == query
                || (query.len() >= 6 && id.as_str().starts_with(&query))
        })
        .collect();
    match matches.as_slice() {
        [(id, _)] => Ok(id.clone()),
        [] => {
            let names: Vec<String> = known
                .iter()
                .map(|(id, name)| format!("{name} ({})", &id.as_str()[..12]))
                .collect();
            anyhow::bail!(
                "no member `{query}`; members: {}",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            )
        }
        _ => anyhow::bail!("`{query}` names several members; use the node id"),
    }
}

/// The addresses to announce for a socket bound at `local`: the address
/// itself when specific, else every interface address (loopback included,
/// for brokers sharing a machine) with the bound port.
pub fn announce_addresses(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let port = local.port();
    let mut addresses: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|interface| interface.ip())
        .filter(|ip| local.is_ipv4() == ip.is_ipv4())
        // Scoped IPv6 link-local addresses need an interface index a
        // SocketAddr string cannot carry portably; mDNS handles those.
        .filter(|ip| match ip {
            std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            std::net::IpAddr::V4(_) => true,
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    addresses.sort_by_key(|addr| (!addr.ip().is_loopback(), *addr));
    addresses.dedup();
    addresses.truncate(scout_mesh::wire::HELLO_ADDRESSES_MAX);
    if addresses.is_empty() {
        addresses.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    addresses
}

fn parse_key(hex_key: &str) -> Option<[u8; 32]> {
    hex::decode(hex_key).ok()?.try_into().ok()
}

/// A bootstrap entry for `mesh.json` from an invite.
pub fn bootstrap_of(invite: &Invite) -> Vec<BootstrapPeer> {
    invite
        .addresses
        .iter()
        .map(|address| BootstrapPeer {
            address: address.clone(),
            public_key: hex::encode(invite.inviter_key),
            pinned: true,
        })
        .collect()
}

/// The admission body a founder writes for itself.
pub fn founder_admission(identity: &MeshIdentity) -> RecordBody {
    RecordBody::Admission(AdmissionBody {
        public_key: identity.key.public_key,
        node_name: identity.node_name.as_str().to_owned(),
        admitted_by: identity.node_id.clone(),
        method: AdmissionMethod::Founder,
    })
}

/// Marks the bootstrap entries of `keys` unpinned in `mesh.json`. Returns
/// whether the file changed.
fn unpin_mesh_file(home: &Home, keys: &[[u8; 32]]) -> anyhow::Result<bool> {
    if keys.is_empty() {
        return Ok(false);
    }
    let Some(mut file) = crate::config::mesh_file::load(&home.mesh_path())? else {
        return Ok(false);
    };
    if !crate::config::mesh_file::unpin(&mut file.value, keys) {
        return Ok(false);
    }
    file.save()?;
    Ok(true)
}

/// Loads `mesh.json` if the broker has one.
pub fn load_mesh_file(home: &Home) -> anyhow::Result<Option<JsonFile<MeshFile>>> {
    Ok(crate::config::mesh_file::load(&home.mesh_path())?)
}
