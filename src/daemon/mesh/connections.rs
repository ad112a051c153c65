//! Connections: accepting and dialing, the hello that makes a peer count as
//! connected, one connection per pair of brokers, and serving each peer's
//! streams (one request per bidirectional stream; a terminal relay keeps
//! its stream, served by the terminal hook).
//!
//! Trust is asked at every step, not only in the TLS handshake: after the
//! hello, when a connection is registered, for every request a peer sends,
//! and whenever the membership snapshot changes ([`close_non_members`]),
//! so a revoked peer loses its live connection at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use quinn::{Connection, VarInt};
use scout_mesh::membership;
use scout_mesh::names::{Label, NamePart};
use scout_mesh::wire::{
    AdmissionBody, AdmissionMethod, ErrorCode, Hello, Invite, JoinAccepted, JoinRequest, MeshFrame,
    MeshId, NodeId, PROTOCOL_VERSION, RecordBody, RecordKind, SyncMessage,
};
use scout_net::transport::close_code;
use scout_net::transport::endpoint::{
    RequestBudget, peer_key, read_request, read_request_within, request, respond,
};
use scout_net::transport::{MeshEndpoint, Trust, TrustPolicy};
use tokio::sync::{Semaphore, mpsc, watch};

use super::address_book::{AddressSource, announces_this_host, keep_announced};
use super::{Mesh, Shared};
use crate::daemon::discovery::admit as tailnet_admit;
use crate::store;

/// Sync messages queued for one peer at most. A peer that cannot keep up
/// loses pushes, which anti-entropy repairs; memory stays bounded.
pub const PEER_SEND_QUEUE_MAX: usize = 1024;

/// Sync and view messages on their way to one peer at once, each on its
/// own stream waiting for its answer. One at a time drained a peer's queue
/// at one message per round trip: after a busy moment a new record waited
/// behind the queue for seconds on a 160 ms link. The messages may arrive
/// out of order, which the sync protocol takes (a record out of order is
/// kept, and the vector advances only over what is contiguous), except a
/// delta chunk and a view message: each goes alone, so a catch-up's chunks
/// and a peer's view changes arrive in the order they were sent.
pub const PEER_SEND_WINDOW: usize = 8;

/// Inbound handshakes in progress at most; more are refused at once, so a
/// flood of connection attempts cannot exhaust the broker.
pub const INBOUND_HANDSHAKES_MAX: usize = 64;

/// Dials in flight at most.
pub const DIALS_IN_FLIGHT_MAX: usize = 16;

/// Streams a new connection may open before its hello (a join, then the
/// hello; or a short-code pairing's probe, start and confirmation, after
/// which the joiner dials again as a member); anything beyond is a
/// protocol error.
const OPENING_STREAMS_MAX: usize = 3;

/// How often seeds are resolved again (DNS names may move).
const SEED_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// The members' addresses are read from the registry at most this often:
/// each read is O(members), and while a large mesh forms a node record
/// changes with every join. A new member's address waits at most this long.
const LEARN_INTERVAL: Duration = Duration::from_secs(1);

/// How long an inbound connection may take from the end of its TLS
/// handshake to the end of its hello (a join included) before it is closed
/// with `HELLO_TIMEOUT`. A broker on a healthy link needs a few round
/// trips and one store write; a connection that sends nothing must not hold
/// one of the [`INBOUND_HANDSHAKES_MAX`] permits for longer than this.
pub const PRE_HELLO_DEADLINE: Duration = Duration::from_secs(5);

/// Inbound connections from one IP address that may be before their hello
/// at once. A machine running several brokers, or a NAT in front of
/// several, needs a few; one address can never hold more than this share of
/// the [`INBOUND_HANDSHAKES_MAX`] permits.
pub const PRE_HELLO_PER_ADDRESS_MAX: usize = 8;

const _: () = assert!(PRE_HELLO_PER_ADDRESS_MAX < INBOUND_HANDSHAKES_MAX);

/// Inbound connections per IP address that have not finished the hello.
/// At most [`INBOUND_HANDSHAKES_MAX`] addresses are counted, since each
/// connection counted holds a handshake permit.
#[derive(Debug, Default)]
pub struct PendingHellos {
    by_ip: HashMap<IpAddr, usize>,
}

impl PendingHellos {
    /// Counts one more connection from `ip`, unless it has
    /// [`PRE_HELLO_PER_ADDRESS_MAX`] already.
    pub fn try_enter(&mut self, ip: IpAddr) -> bool {
        let count = self.by_ip.entry(ip).or_default();
        if *count >= PRE_HELLO_PER_ADDRESS_MAX {
            return false;
        }
        *count += 1;
        true
    }

    /// One connection from `ip` finished its hello, or ended.
    pub fn leave(&mut self, ip: IpAddr) {
        if let Some(count) = self.by_ip.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }
}

/// Leaves [`PendingHellos`] when dropped, however the hello ended.
struct PendingHello {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for PendingHello {
    fn drop(&mut self) {
        self.shared
            .pending_hellos
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .leave(self.ip);
    }
}

/// A connected peer.
#[derive(Debug)]
pub struct Peer {
    /// The one live connection.
    pub connection: Connection,
    /// Its key, as the TLS handshake proved it.
    pub key: [u8; 32],
    /// Its node name.
    pub node_name: String,
    /// Whether this broker dialed it.
    pub dialed_by_us: bool,
    /// The address it is connected at.
    pub addr: SocketAddr,
    /// Unix ms when connected.
    pub connected_at_ms: u64,
    /// Its send queue (sync and view messages).
    pub sender: mpsc::Sender<MeshFrame>,
    /// Unix ms of the last request either way on it.
    pub last_used: Arc<AtomicU64>,
    /// Long-lived streams open on it (terminal relays): while any is, the
    /// connection is in use however quiet.
    pub streams: Arc<AtomicUsize>,
    /// Whether a [`poke`] of it is under way (one at a time).
    pub poked: Arc<std::sync::atomic::AtomicBool>,
}

impl Peer {
    /// Unix ms of the last request either way.
    pub fn last_used_ms(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Long-lived streams open now.
    pub fn streams_open(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Notes a use at `now_ms`.
    pub fn touch(&self, now_ms: u64) {
        self.last_used.fetch_max(now_ms, Ordering::Relaxed);
    }
}

/// Counts one long-lived stream on a connection while it lives.
#[derive(Debug)]
pub struct StreamGuard(Arc<AtomicUsize>);

impl StreamGuard {
    /// Counts a stream on `peer`'s connection.
    pub fn new(peer: &Peer) -> StreamGuard {
        peer.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(peer.streams.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// This broker's hello.
pub fn our_hello(shared: &Shared) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: shared.identity.node_id.clone(),
        node_name: shared.identity.node_name.as_str().to_owned(),
        mesh_id: shared.mesh_id(),
        addresses: shared.announce.iter().map(ToString::to_string).collect(),
    }
}

/// Checks a peer's hello against its TLS key and our mesh.
fn check_hello(
    shared: &Shared,
    key: &[u8; 32],
    hello: &Hello,
) -> Result<(), (&'static str, String)> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err((
            "UNSUPPORTED_VERSION",
            format!(
                "protocol version {} is not supported; this broker speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        ));
    }
    if hello.node_id != NodeId::of_public_key(key) {
        return Err((
            "BAD_HELLO",
            "the hello's node id does not belong to the TLS key".into(),
        ));
    }
    if hello.node_id == shared.identity.node_id {
        return Err(("SELF_PEER", "this is the broker itself".into()));
    }
    if hello.mesh_id != shared.mesh_id() {
        return Err((
            "WRONG_MESH",
            format!(
                "mesh {} is not this broker's mesh {}",
                hello.mesh_id,
                shared.mesh_id()
            ),
        ));
    }
    if Label::parse(&hello.node_name, NamePart::Node).is_err() {
        return Err((
            "BAD_HELLO",
            "the hello's node name is not a valid name".into(),
        ));
    }
    Ok(())
}

/// Accepts connections until shutdown.
pub async fn accept_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let handshakes = Arc::new(Semaphore::new(INBOUND_HANDSHAKES_MAX));
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => incoming,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Some(incoming) = incoming else {
            return;
        };
        let addr = incoming.remote_address();
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            log_inbound(
                &shared,
                addr,
                "TOO_MANY_HANDSHAKES",
                "too many handshakes in progress; refused",
            );
            incoming.refuse();
            continue;
        };
        let entered = shared
            .pending_hellos
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .try_enter(addr.ip());
        if !entered {
            log_inbound(
                &shared,
                addr,
                "TOO_MANY_PENDING_HELLOS",
                "too many connections from this address before their hello; refused",
            );
            incoming.refuse();
            continue;
        }
        let pending = PendingHello {
            shared: shared.clone(),
            ip: addr.ip(),
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle_incoming(shared, incoming).await;
            drop(pending);
            drop(permit);
        });
    }
}

/// Logs a refusal of an inbound connection: a warning once a minute per
/// (address, code), with the count of the ones suppressed in between.
pub(crate) fn log_inbound(shared: &Shared, addr: SocketAddr, code: &'static str, message: &str) {
    let admitted = shared
        .inbound_log
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .check((addr.ip(), code), shared.env().now_instant());
    match admitted {
        Some(admitted) => tracing::warn!(
            %addr,
            code,
            suppressed = admitted.suppressed,
            "{message} (repeats from this address are logged once a minute)"
        ),
        None => tracing::debug!(%addr, code, "{message}"),
    }
}

async fn handle_incoming(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let addr = incoming.remote_address();
    let connection = match shared.endpoint.handshake(incoming).await {
        Ok(connection) => connection,
        Err(err) => {
            log_inbound(
                &shared,
                addr,
                err.code(),
                &format!("inbound handshake failed: {err}"),
            );
            return;
        }
    };
    let Some(key) = peer_key(&connection) else {
        connection.close(VarInt::from_u32(close_code::PROTOCOL), b"no peer key");
        return;
    };
    let before_hello = before_hello(shared.clone(), connection.clone(), key, addr);
    if tokio::time::timeout(PRE_HELLO_DEADLINE, before_hello)
        .await
        .is_err()
    {
        log_inbound(
            &shared,
            addr,
            "HELLO_TIMEOUT",
            &format!("no hello within {PRE_HELLO_DEADLINE:?}; closed"),
        );
        connection.close(
            VarInt::from_u32(close_code::HELLO_TIMEOUT),
            b"HELLO_TIMEOUT",
        );
    }
}

/// What an inbound connection may do before its hello: at most
/// [`OPENING_STREAMS_MAX`] streams, a join, then the hello.
async fn before_hello(
    shared: Arc<Shared>,
    connection: Connection,
    key: [u8; 32],
    addr: SocketAddr,
) {
    // No timeout per stream: the caller's PRE_HELLO_DEADLINE bounds the
    // whole exchange. A short-code exchange in progress lives here, bound to
    // this connection; dropped unfinished (the joiner went away, the
    // deadline passed), it burns the code.
    let mut pairing: Option<super::pairing::InviterSide> = None;
    for _ in 0..OPENING_STREAMS_MAX {
        let Ok((mut send, mut recv)) = connection.accept_bi().await else {
            // The peer closed the connection (after its join, say).
            return;
        };
        let refuse =
            |code: u32, reason: &'static [u8]| connection.close(VarInt::from_u32(code), reason);
        match read_request(&mut recv).await {
            Ok(MeshFrame::Join(join)) => {
                // A join without an invite, by tailnet identity (opt-in).
                let tailnet = tailnet_admit::answer_join(&shared, &key, &join, addr).await;
                let answer = match tailnet {
                    Some(answer) => answer,
                    None => handle_join(&shared, &key, join).await,
                };
                let refused = matches!(answer, MeshFrame::Error(_));
                let _ = respond(&mut send, &answer).await;
                if refused {
                    // Give the answer a moment to leave before closing.
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection.closed()).await;
                    refuse(close_code::UNKNOWN_PEER, b"join refused");
                    return;
                }
            }
            Ok(MeshFrame::PairProbe) => {
                let _ = respond(&mut send, &super::pairing::answer_probe(&shared)).await;
            }
            Ok(MeshFrame::PairStart(start)) if pairing.is_none() => {
                let (answer, side) = super::pairing::answer_start(&shared, &key, start).await;
                let _ = respond(&mut send, &answer).await;
                if side.is_none() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection.closed()).await;
                    refuse(close_code::UNKNOWN_PEER, b"pairing refused");
                    return;
                }
                pairing = side;
            }
            Ok(MeshFrame::PairConfirm { confirmation }) if pairing.is_some() => {
                let Some(side) = pairing.take() else {
                    return;
                };
                let answer =
                    super::pairing::answer_confirm(&shared, &key, side, &confirmation).await;
                let _ = respond(&mut send, &answer).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), connection.closed()).await;
                if matches!(answer, MeshFrame::Error(_)) {
                    refuse(close_code::UNKNOWN_PEER, b"pairing refused");
                } else {
                    // The joiner dials again as a member, on its new mesh.
                    connection.close(VarInt::from_u32(close_code::SHUTDOWN), b"paired");
                }
                return;
            }
            Ok(MeshFrame::Hello(hello)) => {
                let verdict = match shared.trust.trust(&key) {
                    Trust::Member => check_hello(&shared, &key, &hello),
                    Trust::Revoked => {
                        Err(("REVOKED_PEER", "this node was revoked from the mesh".into()))
                    }
                    Trust::Unknown => Err((
                        "UNKNOWN_PEER",
                        "this node is not a member of the mesh".into(),
                    )),
                };
                if let Err((code, message)) = verdict {
                    log_inbound(
                        &shared,
                        addr,
                        code,
                        &format!("refused the hello of {}: {message}", hello.node_name),
                    );
                    let _ = respond(&mut send, &MeshFrame::error(code, message)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection.closed()).await;
                    let close = match code {
                        "REVOKED_PEER" => close_code::REVOKED_PEER,
                        "UNKNOWN_PEER" => close_code::UNKNOWN_PEER,
                        _ => close_code::PROTOCOL,
                    };
                    refuse(close, b"hello refused");
                    return;
                }
                let _ = respond(&mut send, &MeshFrame::HelloAck(our_hello(&shared))).await;
                register(&shared, connection, key, hello, false, addr);
                return;
            }
            Ok(other) => {
                let _ = respond(
                    &mut send,
                    &MeshFrame::error("HELLO_REQUIRED", format!("`{}` before hello", other.name())),
                )
                .await;
                refuse(close_code::PROTOCOL, b"hello required");
                return;
            }
            Err(err) => {
                let _ = respond(&mut send, &MeshFrame::error(err.code(), err.to_string())).await;
                refuse(close_code::PROTOCOL, b"bad frame");
                return;
            }
        }
    }
    connection.close(VarInt::from_u32(close_code::PROTOCOL), b"no hello");
}

/// The inviter's side of a join.
async fn handle_join(shared: &Arc<Shared>, key: &[u8; 32], join: JoinRequest) -> MeshFrame {
    let joiner = NodeId::of_public_key(key);
    let Ok(name) = Label::parse(&join.node_name, NamePart::Node) else {
        return MeshFrame::error("BAD_JOIN", "the joiner's node name is not a valid name");
    };
    let now = shared.now_ms();
    let invite_id = join.invite_id;
    let issued = match shared
        .store
        .read(|c| store::mesh::get_invite(c, &invite_id))
    {
        Ok(issued) => issued,
        Err(err) => return MeshFrame::error(err.code(), err.to_string()),
    };
    if let Err(refused) = membership::check_join(issued.as_ref(), &join, &joiner, now) {
        tracing::warn!(node = %name, %joiner, code = refused.code(), "refused a join");
        return MeshFrame::error(refused.code(), refused.to_string());
    }
    // The read above is advice; the conditional write decides, so two joins
    // racing for one invite cannot both be admitted.
    let used_by = joiner.clone();
    match shared
        .store
        .write(move |tx| store::mesh::redeem_invite(tx, &invite_id, &used_by, now))
        .await
    {
        Ok(store::mesh::Redemption::Redeemed | store::mesh::Redemption::RedeemedBefore) => {}
        Ok(store::mesh::Redemption::Refused(refused)) => {
            tracing::warn!(node = %name, %joiner, code = refused.code(), "refused a join");
            return MeshFrame::error(refused.code(), refused.to_string());
        }
        Err(err) => return MeshFrame::error(err.code(), err.to_string()),
    }
    admit(shared, key, &name, "invite").await
}

/// Admits a joiner that proved an invite (a long code's secret, or a short
/// code's exchange): one registry admission record, an audit entry, and
/// the join window narrowed to what is still open. `via` names the proof
/// for the audit log.
pub(crate) async fn admit(
    shared: &Arc<Shared>,
    key: &[u8; 32],
    name: &Label,
    via: &str,
) -> MeshFrame {
    let joiner = NodeId::of_public_key(key);
    let now = shared.now_ms();
    let body = RecordBody::Admission(AdmissionBody {
        public_key: *key,
        node_name: name.as_str().to_owned(),
        admitted_by: shared.identity.node_id.clone(),
        method: AdmissionMethod::Invite,
    });
    let admitted = shared.with_replica(|replica| {
        let result = replica.put(now, joiner.as_str(), body);
        shared.trust.refresh(replica.registry());
        result
    });
    if let Err(err) = admitted {
        return MeshFrame::error("BAD_JOIN", err.to_string());
    }
    refresh_join_window(shared, now);
    let entry = store::audit::NewAuditEntry {
        ts_ms: i64::try_from(now).unwrap_or(i64::MAX),
        actor: shared.identity.node_id.to_string(),
        action: "admit_node".to_owned(),
        subject: joiner.to_string(),
        detail: serde_json::json!({ "node_name": name.as_str(), "via": via }),
    };
    if let Err(err) = shared.store.append_audit(entry).await {
        tracing::warn!(cause = %err, "cannot audit an admission");
    }
    tracing::info!(node = %name, %joiner, via, "admitted a broker with an invite");
    MeshFrame::JoinAccepted(JoinAccepted {
        mesh_id: shared.mesh_id(),
        admitted_by: shared.identity.node_id.clone(),
    })
}

/// Narrows the join window to the latest expiry among the invites still
/// open: the long ones in the store and this broker's pending short code.
pub(crate) fn refresh_join_window(shared: &Shared, now: u64) {
    let short = shared
        .short_invite
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .as_ref()
        .map(|invite| invite.answer_until_ms())
        .filter(|until| now <= *until);
    match shared
        .store
        .read(|c| store::mesh::open_invites_until(c, now))
    {
        Ok(until) => shared
            .trust
            .set_join_window_until(until.max(short).unwrap_or(0)),
        Err(err) => tracing::warn!(cause = %err, "cannot read open invites"),
    }
}

/// The close code and reason for a peer that is not (or no longer) a
/// member, or `None` for a member.
pub(crate) fn refusal(trust: Trust) -> Option<(u32, &'static str)> {
    match trust {
        Trust::Member => None,
        Trust::Revoked => Some((close_code::REVOKED_PEER, "REVOKED_PEER")),
        Trust::Unknown => Some((close_code::UNKNOWN_PEER, "UNKNOWN_PEER")),
    }
}

/// Closes, at once, every live connection whose peer is no longer a member
/// (revoked, its admission withdrawn, or a pin the registry did not
/// confirm). Called whenever the trust snapshot changes; the connection's
/// close watcher then forgets the peer.
pub fn close_non_members(shared: &Shared) {
    let peers = shared
        .peers
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    for (id, peer) in peers.iter() {
        let Some((code, reason)) = refusal(shared.trust.trust(&peer.key)) else {
            continue;
        };
        if peer.connection.close_reason().is_some() {
            continue;
        }
        peer.connection
            .close(VarInt::from_u32(code), reason.as_bytes());
        tracing::warn!(peer = %peer.node_name, node_id = %id, code = reason, "closed the connection of a peer that is no longer a member");
    }
}

/// How long the ping [`poke`] sends may take.
const POKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a ping on `connection`, the one kept when its peer `id` dialed
/// again, and closes it when nothing at all comes back on it: a peer that
/// dials while this broker holds a connection to it has none of its own,
/// most often because it restarted, and the connection of its previous
/// run would otherwise refuse its new ones as duplicates until the idle
/// timeout. (Restarted on the same port, its endpoint answers with a
/// stateless reset, which closes the connection at once.) A live peer, in
/// a race of two dials, answers, and even a peer too busy to answer in
/// time acknowledges the ping's packets: any datagram received on the
/// connection meanwhile keeps it. `poked` is cleared when done.
fn poke(
    shared: &Arc<Shared>,
    id: &NodeId,
    connection: Connection,
    poked: Arc<std::sync::atomic::AtomicBool>,
) {
    tracing::debug!(node_id = %id, "the peer dialed again while its connection here is open: checking that one");
    let ping = MeshFrame::Ping {
        nonce: shared.random(),
    };
    let shared = shared.clone();
    let id = id.clone();
    tokio::spawn(async move {
        let received_before = connection.stats().udp_rx.datagrams;
        let answered =
            scout_net::transport::endpoint::request(&connection, &ping, POKE_TIMEOUT).await;
        poked.store(false, Ordering::SeqCst);
        let heard = connection.stats().udp_rx.datagrams > received_before;
        if answered.is_ok() || heard || connection.close_reason().is_some() {
            return;
        }
        let still_registered = shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&id)
            .is_some_and(|peer| peer.connection.stable_id() == connection.stable_id());
        if still_registered {
            tracing::info!(node_id = %id, "the peer dialed again and its old connection is silent: closing it");
            connection.close(VarInt::from_u32(close_code::STALE), b"stale");
        }
    });
}

/// How long a NAT may go on letting a member in after this broker last
/// sent to it, in ms: UDP bindings last from 30 s to a few minutes.
pub const NAT_BINDING_MS: u64 = 120_000;

/// Whether an inbound connection from `id` shows that any member can dial
/// this broker: one from a member it has not dialed, nor been connected
/// to, within [`NAT_BINDING_MS`] cannot have come in through a NAT's
/// binding. A broker behind a NAT takes inbound connections too, from
/// members it has just sent to (both ends dialing at once). What a
/// restarted broker sent before its start is not known: one behind a NAT
/// and dialed back within its binding counts itself reachable until
/// [`super::relay::DIALED_IN_FRESH_MS`] have passed.
fn unsolicited(shared: &Shared, id: &NodeId) -> bool {
    let now_ms = shared.now_ms();
    if shared
        .peers
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .contains_key(id)
    {
        return false;
    }
    let heard = shared
        .last_heard
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(id)
        .copied();
    if heard.is_some_and(|heard| now_ms.saturating_sub(heard) < NAT_BINDING_MS) {
        return false;
    }
    !shared
        .book
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .dialed_within(
            id,
            shared.env().now_instant(),
            Duration::from_millis(NAT_BINDING_MS),
        )
}

/// Makes a connection the one live connection to its peer, or closes it if
/// the other one wins the tie (the connection dialed by the smaller node id
/// survives, which both sides compute alike), or if the peer is not a
/// member. Returns whether the connection was registered.
fn register(
    shared: &Arc<Shared>,
    connection: Connection,
    key: [u8; 32],
    hello: Hello,
    dialed_by_us: bool,
    addr: SocketAddr,
) -> bool {
    let id = hello.node_id.clone();
    let now = shared.now_ms();
    // Asked before this connection is registered; counted once it is (a
    // member's, not a stranger's).
    let unasked = !dialed_by_us && unsolicited(shared, &id);
    let (sender, queue) = mpsc::channel(PEER_SEND_QUEUE_MAX);
    let replaced = {
        let mut peers = shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // Asked under the peers lock: a revocation that lands after this
        // check finds the peer registered when it closes non-members.
        if let Some((code, reason)) = refusal(shared.trust.trust(&key)) {
            connection.close(VarInt::from_u32(code), reason.as_bytes());
            tracing::warn!(peer = %hello.node_name, %addr, code = reason, "not registering a peer that is not a member");
            return false;
        }
        let we_dial_preferred = shared.identity.node_id < id;
        if let Some(existing) = peers.get(&id) {
            let new_preferred = dialed_by_us == we_dial_preferred;
            let existing_preferred = existing.dialed_by_us == we_dial_preferred;
            if existing_preferred && !new_preferred && existing.connection.close_reason().is_none()
            {
                connection.close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
                if !existing.poked.swap(true, Ordering::SeqCst) {
                    poke(
                        shared,
                        &id,
                        existing.connection.clone(),
                        existing.poked.clone(),
                    );
                }
                return true;
            }
        }
        let replaced = peers.remove(&id);
        if let Some(old) = &replaced {
            old.connection
                .close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
        }
        peers.insert(
            id.clone(),
            Peer {
                connection: connection.clone(),
                key,
                node_name: hello.node_name.clone(),
                dialed_by_us,
                addr,
                connected_at_ms: now,
                sender,
                last_used: Arc::new(AtomicU64::new(now)),
                streams: Arc::new(AtomicUsize::new(0)),
                poked: Arc::default(),
            },
        );
        replaced.is_some()
    };
    if unasked {
        super::relay::note_dialed_in(shared, &id);
    }
    {
        let mut book = shared
            .book
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let source = if dialed_by_us {
            AddressSource::Learned
        } else {
            AddressSource::Inbound
        };
        if dialed_by_us {
            book.add(addr, source, Some(id.clone()), now);
        }
        book.reached(addr, &id, now);
        // The peer's loopback addresses are this machine's only when the
        // peer itself connected over loopback.
        let peer_on_this_host = addr.ip().is_loopback();
        for announced in hello
            .addresses
            .iter()
            .filter_map(|a| a.parse::<SocketAddr>().ok())
        {
            if !shared.announce.contains(&announced) && keep_announced(announced, peer_on_this_host)
            {
                book.add(announced, AddressSource::Learned, Some(id.clone()), now);
            }
        }
    }
    // Whatever was queued on a replaced connection is lost with it: a
    // disconnect and connect start a fresh digest exchange on the new one.
    // The replica syncs over every connection; the views bound how many
    // there are.
    // A pinned peer (the inviter or a bootstrap peer of a join) is
    // vouched for: while this broker catches up, its registry holds part
    // of the admissions, maybe not this peer's.
    let vouched = shared.trust.is_pinned(&key);
    let refused = shared.with_replica(|replica| {
        if replaced {
            replica.handle_disconnected(&id);
        }
        if vouched {
            replica.handle_connected_vouched(now, id.clone())
        } else {
            replica.handle_connected(now, id.clone())
        }
    });
    if let Err(refused) = refused {
        tracing::warn!(peer = %hello.node_name, %addr, code = refused.code(), "peer may not sync: {refused}");
    }
    tracing::info!(
        peer = %hello.node_name,
        node_id = %id,
        %addr,
        direction = if dialed_by_us { "out" } else { "in" },
        "peer connected"
    );
    tokio::spawn(send_loop(
        shared.clone(),
        connection.clone(),
        id.clone(),
        queue,
    ));
    tokio::spawn(serve_streams(
        shared.clone(),
        connection.clone(),
        id.clone(),
        key,
    ));
    tokio::spawn(watch_close(
        shared.clone(),
        connection,
        id.clone(),
        hello.node_name,
    ));
    super::views::on_registered(shared, &id);
    super::views::make_room(shared, &id);
    shared.connection_changed();
    true
}

async fn send_loop(
    shared: Arc<Shared>,
    connection: Connection,
    peer: NodeId,
    mut queue: mpsc::Receiver<MeshFrame>,
) {
    let timeout = shared.config.transport.request_timeout;
    let send = |frame: MeshFrame| {
        let connection = connection.clone();
        async move {
            let answer = request(&connection, &frame, timeout).await;
            (frame.name(), answer)
        }
    };
    // A delta chunk goes alone: a catch-up counts as complete only when its
    // chunks arrive in order. So does a view message: an accepted
    // neighbor and a disconnect that follows it must not swap places.
    let alone = |frame: &MeshFrame| {
        matches!(
            frame,
            MeshFrame::Sync(SyncMessage::Delta { .. }) | MeshFrame::View(_)
        )
    };
    let answered = |(name, answer): (&'static str, Result<MeshFrame, _>)| {
        match answer {
            Ok(MeshFrame::SyncAck | MeshFrame::ViewAck) => {}
            Ok(MeshFrame::Error(error)) => {
                tracing::warn!(%peer, code = %error.code, request = name, "peer refused a message: {}", error.message);
            }
            Ok(other) => {
                tracing::warn!(%peer, answer = other.name(), request = name, "unexpected answer")
            }
            Err(err) => {
                if connection.close_reason().is_some() {
                    return ControlFlow::Break(());
                }
                tracing::debug!(%peer, cause = %err, "sync message not delivered; anti-entropy will repair");
            }
        }
        ControlFlow::Continue(())
    };
    // The queue closes when the peer leaves this broker's connections;
    // what is on its way finishes or fails with the connection.
    send_in_window(&mut queue, PEER_SEND_WINDOW, alone, send, answered).await;
}

/// Sends what `queue` yields through `send` with up to `window` on their
/// way at once. An item `alone` picks waits for everything before it to be
/// answered, and nothing after it starts until it is. Each answer goes to
/// `answered`, which may stop the loop; it also stops once the queue closed
/// and what was on its way was answered.
async fn send_in_window<T, A, Fut>(
    queue: &mut mpsc::Receiver<T>,
    window: usize,
    alone: impl Fn(&T) -> bool,
    send: impl Fn(T) -> Fut,
    mut answered: impl FnMut(A) -> ControlFlow<()>,
) where
    Fut: Future<Output = A>,
{
    let mut in_flight = FuturesUnordered::new();
    let mut held: Option<T> = None;
    let mut going_alone = false;
    let mut closed = false;
    loop {
        if in_flight.is_empty() {
            going_alone = false;
            match held.take() {
                Some(item) => {
                    going_alone = true;
                    in_flight.push(send(item));
                }
                None if closed => return,
                None => {}
            }
        }
        tokio::select! {
            biased;
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                if answered(answer).is_break() {
                    return;
                }
            }
            item = queue.recv(), if !closed && held.is_none() && !going_alone && in_flight.len() < window => {
                let Some(item) = item else {
                    // What is on its way still finishes.
                    closed = true;
                    continue;
                };
                if alone(&item) && !in_flight.is_empty() {
                    held = Some(item);
                } else {
                    going_alone = alone(&item);
                    in_flight.push(send(item));
                }
            }
        }
    }
}

async fn serve_streams(shared: Arc<Shared>, connection: Connection, peer: NodeId, key: [u8; 32]) {
    let budget = RequestBudget::default();
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let shared = shared.clone();
        let peer = peer.clone();
        let connection = connection.clone();
        let budget = budget.clone();
        tokio::spawn(async move {
            // The request's bytes stay reserved in the connection's budget
            // until its answer is written.
            let (request, reserved) = match read_request_within(&mut recv, &budget).await {
                Ok(budgeted) => (Ok(budgeted.frame), Some(budgeted.reserved)),
                Err(err) => (Err(err), None),
            };
            // A terminal relay keeps its stream: the hook answers on it.
            if let Ok(MeshFrame::TerminalOpen { instance }) = &request
                && refusal(shared.trust.trust(&key)).is_none()
                && let Some(hook) = shared.terminal_hook.get()
            {
                let instance = instance.clone();
                drop(reserved);
                let guard = shared
                    .peers
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .get(&peer)
                    .map(StreamGuard::new);
                (hook.0)(peer, instance, send, recv).await;
                drop(guard);
                return;
            }
            let answer = match request {
                // Every request is checked against the current membership:
                // a peer revoked a moment ago gets nothing served, even on a
                // connection that has not been closed yet.
                Ok(frame) => match refusal(shared.trust.trust(&key)) {
                    Some((code, reason)) => {
                        connection.close(VarInt::from_u32(code), reason.as_bytes());
                        tracing::warn!(%peer, code = reason, request = frame.name(), "refused a request from a peer that is no longer a member");
                        MeshFrame::error(reason, "this node is not a member of the mesh")
                    }
                    None => handle_request(&shared, &peer, frame).await,
                },
                Err(err) => {
                    tracing::warn!(%peer, code = err.code(), cause = %err, "bad frame from a peer");
                    MeshFrame::error(err.code(), err.to_string())
                }
            };
            let _ = respond(&mut send, &answer).await;
            drop(reserved);
        });
    }
}

/// Answers one request from a connected peer.
async fn handle_request(shared: &Arc<Shared>, peer: &NodeId, frame: MeshFrame) -> MeshFrame {
    // Routing and relays use a connection; sync and view traffic alone
    // does not keep one outside the active view open.
    if !matches!(
        frame,
        MeshFrame::Sync(_) | MeshFrame::View(_) | MeshFrame::Ping { .. }
    ) && let Some(live) = shared
        .peers
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(peer)
    {
        live.touch(shared.now_ms());
    }
    match frame {
        MeshFrame::View(message) => {
            super::views::on_message(shared, peer, message);
            MeshFrame::ViewAck
        }
        MeshFrame::Sync(message) => {
            use std::sync::atomic::Ordering::Relaxed;
            let records = match &message {
                scout_mesh::wire::SyncMessage::Push { records } => records.len(),
                scout_mesh::wire::SyncMessage::Delta { records, .. } => records.len(),
                scout_mesh::wire::SyncMessage::Digest { .. }
                | scout_mesh::wire::SyncMessage::IHave { .. }
                | scout_mesh::wire::SyncMessage::Graft { .. }
                | scout_mesh::wire::SyncMessage::Prune { .. }
                | scout_mesh::wire::SyncMessage::Summary { .. }
                | scout_mesh::wire::SyncMessage::Buckets { .. }
                | scout_mesh::wire::SyncMessage::DigestPart { .. } => 0,
            };
            shared.stats.messages_received.fetch_add(1, Relaxed);
            shared
                .stats
                .records_received
                .fetch_add(records as u64, Relaxed);
            let now = shared.now_ms();
            let forged = shared.with_replica(|replica| {
                let before = replica.invalid_signatures();
                replica.handle_message(now, peer.clone(), message);
                replica.invalid_signatures().saturating_sub(before)
            });
            // An honest peer never relays a forged record (its own merge
            // refuses them), so the sender hears about it.
            if forged > 0 {
                tracing::warn!(%peer, forged, "refused records not signed by their origin");
                return MeshFrame::error(
                    "INVALID_SIGNATURE",
                    format!("{forged} records are not signed by their origin; they were refused"),
                );
            }
            MeshFrame::SyncAck
        }
        MeshFrame::Ping { nonce } => MeshFrame::Pong { nonce },
        MeshFrame::Relay(envelope) => super::relay::pass_on(shared, peer, envelope).await,
        MeshFrame::Relayed(envelope) => super::relay::serve(shared, peer, envelope).await,
        MeshFrame::Invoke(_)
        | MeshFrame::FlightUpdate(_)
        | MeshFrame::FlightQuery { .. }
        | MeshFrame::Cancel { .. }
        | MeshFrame::UsageQuery(_)
        | MeshFrame::ApprovalDecide(_) => match shared.hook.get() {
            Some(hook) => (hook.0)(peer.clone(), frame).await,
            None => MeshFrame::error("NOT_READY", "this broker does not route yet"),
        },
        other => MeshFrame::error(
            "UNEXPECTED_FRAME",
            format!(
                "`{}` is not a request a connected peer may send",
                other.name()
            ),
        ),
    }
}

async fn watch_close(shared: Arc<Shared>, connection: Connection, peer: NodeId, name: String) {
    let reason = connection.closed().await;
    let removed = {
        let mut peers = shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let same = peers
            .get(&peer)
            .is_some_and(|current| current.connection.stable_id() == connection.stable_id());
        if same {
            peers.remove(&peer);
        }
        same
    };
    if removed {
        // A connection that ended by itself (timed out, reset, the peer
        // shutting down) counts as a failed dial of its address, so the
        // member shows unreachable and routing waits for it, until a dial
        // succeeds or it connects again. One closed because nothing used
        // it, or replaced by a duplicate, does not.
        if is_lost(&reason) {
            let jitter = shared.random::<f64>();
            shared
                .book
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .lost(
                    &peer,
                    &format!("connection lost: {reason}"),
                    shared.env().now_instant(),
                    jitter,
                );
        }
        super::views::on_closed(&shared, &peer);
        shared.connection_changed();
        shared
            .last_heard
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(peer.clone(), shared.now_ms());
        shared.with_replica(|replica| replica.handle_disconnected(&peer));
        tracing::info!(peer = %name, node_id = %peer, cause = %reason, "peer disconnected");
    }
}

/// Whether a connection ended by itself rather than by a choice of either
/// side that leaves the peer reachable.
fn is_lost(reason: &quinn::ConnectionError) -> bool {
    match reason {
        quinn::ConnectionError::LocallyClosed => false,
        quinn::ConnectionError::ApplicationClosed(close) => ![
            VarInt::from_u32(close_code::IDLE),
            VarInt::from_u32(close_code::DUPLICATE),
            VarInt::from_u32(close_code::STALE),
        ]
        .contains(&close.error_code),
        _ => true,
    }
}

/// Dials addresses as they come due, until shutdown: addresses of unknown
/// nodes (seeds, discovery), and the members the partial views and
/// routing want ([`super::views`]). Each round also runs the views' timers
/// and closes connections nothing uses.
pub async fn dial_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(shared.config.dial_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_resolve: Option<tokio::time::Instant> = None;
    let in_flight = Arc::new(Semaphore::new(DIALS_IN_FLIGHT_MAX));
    let mut registry_seen = None;
    let mut last_learned: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shared.dial_kick.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let now = shared.env().now_instant();
        if last_resolve.is_none_or(|at| now.duration_since(at) >= SEED_RESOLVE_INTERVAL) {
            last_resolve = Some(now);
            resolve_seeds(&shared).await;
        }
        // The members' addresses, again whenever a node record or the
        // membership changed.
        let registry_now = {
            let replica = shared
                .replica
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let registry = replica.registry();
            registry.changes_of(RecordKind::Node) + registry.trust_changes()
        };
        let learned_lately = last_learned.is_some_and(|at| now.duration_since(at) < LEARN_INTERVAL);
        if registry_seen != Some(registry_now) && !learned_lately {
            registry_seen = Some(registry_now);
            last_learned = Some(now);
            learn_from_registry(&shared);
        }
        super::views::tick(&shared);
        let connected: HashSet<NodeId> = shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .keys()
            .cloned()
            .collect();
        let wanted = shared
            .views
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .dial_wanted(shared.now_ms());
        let due = shared
            .book
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .due(
                now,
                &shared.identity.node_id,
                &connected,
                &shared.trust.revoked(),
                Some(&wanted),
                in_flight.available_permits(),
            );
        for (addr, pinned) in due {
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                break;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let outcome = dial(&shared, addr, pinned).await;
                let jitter = shared.random::<f64>();
                let now_ms = shared.now_ms();
                let failed_node = {
                    let mut book = shared
                        .book
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner());
                    match &outcome {
                        Ok(id) => {
                            book.dialed(
                                addr,
                                Ok(id.clone()),
                                shared.env().now_instant(),
                                now_ms,
                                jitter,
                            );
                            None
                        }
                        Err(DialError::SelfPeer) => {
                            book.dialed(
                                addr,
                                Ok(shared.identity.node_id.clone()),
                                shared.env().now_instant(),
                                now_ms,
                                jitter,
                            );
                            None
                        }
                        Err(DialError::Failed { code, message }) => {
                            book.dialed(
                                addr,
                                Err(format!("{code}: {message}")),
                                shared.env().now_instant(),
                                now_ms,
                                jitter,
                            );
                            book.node_at(addr).filter(|node| book.dial_failed(node))
                        }
                    }
                };
                if let Err(DialError::Failed { code, message }) = &outcome {
                    log_dial_failure(&shared, addr, code, message);
                }
                if let Some(node) = failed_node {
                    super::views::on_dial_failed(&shared, &node);
                }
                shared.connection_changed();
                drop(permit);
            });
        }
    }
}

/// Codes of a dial that reached a broker which refused us (or that we
/// refused): worth a warning, since only a person can fix them. Other
/// failures (nothing answers there) are expected for stale addresses.
fn is_refusal(code: &str) -> bool {
    matches!(
        code,
        "UNKNOWN_PEER"
            | "REVOKED_PEER"
            | "HANDSHAKE_FAILED"
            | "WRONG_MESH"
            | "UNSUPPORTED_VERSION"
            | "BAD_HELLO"
            | "NOT_A_MEMBER"
    )
}

/// Logs a failed dial: refusals as a warning once a minute per (address,
/// code) with the count suppressed in between, the rest at debug.
fn log_dial_failure(shared: &Shared, addr: SocketAddr, code: &str, message: &str) {
    if !is_refusal(code) {
        tracing::debug!(%addr, code, cause = %message, "dial failed");
        return;
    }
    let admitted = shared
        .dial_log
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .check((addr, code.to_owned()), shared.env().now_instant());
    match admitted {
        Some(admitted) => tracing::warn!(
            %addr,
            code,
            suppressed = admitted.suppressed,
            cause = %message,
            "dial refused (repeats for this address are logged once a minute)"
        ),
        None => tracing::debug!(%addr, code, cause = %message, "dial refused"),
    }
}

async fn resolve_seeds(shared: &Shared) {
    let now = shared.now_ms();
    for seed in &shared.config.seeds {
        let lookup = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::lookup_host(seed.as_str()),
        )
        .await;
        match lookup {
            Ok(Ok(addrs)) => {
                let mut book = shared
                    .book
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                for addr in addrs {
                    if !shared.announce.contains(&addr) {
                        book.add(addr, AddressSource::Seed, None, now);
                    }
                }
            }
            Ok(Err(err)) => tracing::debug!(%seed, cause = %err, "seed does not resolve"),
            Err(_) => tracing::debug!(%seed, "seed resolution timed out"),
        }
    }
}

/// Feeds the members' announced addresses into the book; loopback ones only
/// for members on this machine.
fn learn_from_registry(shared: &Shared) {
    let now = shared.now_ms();
    let connected_from: HashMap<NodeId, SocketAddr> = shared
        .peers
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .iter()
        .map(|(id, peer)| (id.clone(), peer.addr))
        .collect();
    let learned: Vec<(NodeId, Vec<SocketAddr>)> = {
        let replica = shared
            .replica
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let registry = replica.registry();
        registry
            .nodes()
            .into_iter()
            .filter(|entry| {
                *entry.node_id != shared.identity.node_id && registry.is_member(entry.node_id)
            })
            .map(|entry| {
                let addrs: Vec<SocketAddr> = entry
                    .body
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect();
                let on_this_host = match connected_from.get(entry.node_id) {
                    Some(from) => from.ip().is_loopback(),
                    None => announces_this_host(&addrs, &shared.announce),
                };
                let kept = addrs
                    .into_iter()
                    .filter(|addr| keep_announced(*addr, on_this_host))
                    .collect();
                (entry.node_id.clone(), kept)
            })
            .collect()
    };
    let mut book = shared
        .book
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    for (id, addrs) in learned {
        for addr in addrs {
            book.add(addr, AddressSource::Learned, Some(id.clone()), now);
        }
    }
}

enum DialError {
    SelfPeer,
    Failed { code: String, message: String },
}

impl DialError {
    fn failed(code: impl Into<String>, message: impl Into<String>) -> DialError {
        DialError::Failed {
            code: code.into(),
            message: message.into(),
        }
    }
}

async fn dial(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    pinned: Option<[u8; 32]>,
) -> Result<NodeId, DialError> {
    let connection = shared
        .endpoint
        .connect(addr, pinned)
        .await
        .map_err(|err| DialError::failed(err.code(), err.to_string()))?;
    hello_on(shared, connection, addr).await
}

/// Sends our hello on an established connection and registers the peer.
async fn hello_on(
    shared: &Arc<Shared>,
    connection: Connection,
    addr: SocketAddr,
) -> Result<NodeId, DialError> {
    let Some(key) = peer_key(&connection) else {
        return Err(DialError::failed(
            "BAD_PEER_KEY",
            "the peer presented no key",
        ));
    };
    if NodeId::of_public_key(&key) == shared.identity.node_id {
        connection.close(VarInt::from_u32(close_code::SHUTDOWN), b"self");
        return Err(DialError::SelfPeer);
    }
    let timeout = shared.config.transport.request_timeout;
    let answer = request(&connection, &MeshFrame::Hello(our_hello(shared)), timeout)
        .await
        .map_err(|err| DialError::failed(err.code(), err.to_string()))?;
    match answer {
        MeshFrame::HelloAck(hello) => {
            if let Err((code, message)) = check_hello(shared, &key, &hello) {
                connection.close(VarInt::from_u32(close_code::PROTOCOL), b"bad hello");
                return Err(DialError::failed(code, message));
            }
            // Trust again after the hello: the key passed the handshake,
            // but a revocation may have arrived since.
            if let Some((code, reason)) = refusal(shared.trust.trust(&key)) {
                connection.close(VarInt::from_u32(code), reason.as_bytes());
                return Err(DialError::failed(
                    reason,
                    "this node is not a member of the mesh",
                ));
            }
            let id = hello.node_id.clone();
            if !register(shared, connection, key, hello, true, addr) {
                return Err(DialError::failed(
                    "NOT_A_MEMBER",
                    "the peer stopped being a member during the hello",
                ));
            }
            Ok(id)
        }
        MeshFrame::Error(error) if error.code == ErrorCode::SelfPeer => Err(DialError::SelfPeer),
        MeshFrame::Error(error) => Err(DialError::failed(error.code.to_string(), error.message)),
        other => Err(DialError::failed(
            "UNEXPECTED_FRAME",
            format!("unexpected answer `{}` to hello", other.name()),
        )),
    }
}

/// The joiner's side: reaches the inviter (pinning its key) and presents
/// the invite. Returns the connection, still open, and the inviter's answer.
pub async fn join_exchange(
    endpoint: &MeshEndpoint,
    invite: &Invite,
    node_name: &Label,
    addresses: Vec<String>,
) -> anyhow::Result<(Connection, SocketAddr, JoinAccepted)> {
    let request_frame = MeshFrame::Join(JoinRequest {
        invite_id: invite.invite_id,
        secret: invite.secret,
        node_name: node_name.as_str().to_owned(),
        addresses,
    });
    let mut errors = Vec::new();
    for address in &invite.addresses {
        let Ok(addr) = address.parse::<SocketAddr>() else {
            errors.push(format!("{address}: not an address"));
            continue;
        };
        let connection = match endpoint.connect(addr, Some(invite.inviter_key)).await {
            Ok(connection) => connection,
            Err(err) => {
                errors.push(format!("{addr}: {err}"));
                continue;
            }
        };
        let answer = request(
            &connection,
            &request_frame,
            endpoint.config().request_timeout,
        )
        .await;
        match answer {
            Ok(MeshFrame::JoinAccepted(accepted)) if accepted.mesh_id == invite.mesh_id => {
                return Ok((connection, addr, accepted));
            }
            Ok(MeshFrame::JoinAccepted(_)) => {
                anyhow::bail!("the inviter answered for another mesh")
            }
            Ok(MeshFrame::Error(error)) => anyhow::bail!("the inviter refused: {}", error.message),
            Ok(other) => anyhow::bail!("the inviter answered `{}`", other.name()),
            Err(err) => errors.push(format!("{addr}: {err}")),
        }
    }
    anyhow::bail!("cannot reach the inviter: {}", errors.join("; "))
}

/// Joins from a running broker: the exchange, the switch to the new mesh,
/// then a hello on the same connection so sync starts at once.
pub async fn join_running(
    shared: &Arc<Shared>,
    mesh: &Mesh,
    invite: Invite,
) -> anyhow::Result<MeshId> {
    let now = shared.now_ms();
    if invite.expires_at_ms < now {
        anyhow::bail!(
            "INVITE_EXPIRED: the invite expired; ask for a new one with `scout mesh invite`"
        );
    }
    if invite.inviter == shared.identity.node_id {
        anyhow::bail!(
            "this broker issued the invite; run `scout mesh join` on the joining machine"
        );
    }
    let (connection, addr, accepted) = join_exchange(
        &shared.endpoint,
        &invite,
        &shared.identity.node_name,
        shared.announce.iter().map(ToString::to_string).collect(),
    )
    .await?;
    mesh.switch_mesh(&invite).await?;
    if let Err(DialError::Failed { code, message }) = hello_on(shared, connection, addr).await {
        tracing::warn!(%addr, code, cause = %message, "joined, but the first hello failed; the dialer will retry");
    }
    tracing::info!(mesh = %accepted.mesh_id, inviter = %accepted.admitted_by, "joined a mesh");
    Ok(accepted.mesh_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_hold_more_than_its_share_of_pending_hellos() {
        let mut pending = PendingHellos::default();
        let stranger: IpAddr = [10, 0, 0, 1].into();
        let member: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..PRE_HELLO_PER_ADDRESS_MAX {
            assert!(pending.try_enter(stranger));
        }
        assert!(!pending.try_enter(stranger));
        assert!(pending.try_enter(member));
        pending.leave(stranger);
        assert!(pending.try_enter(stranger));
        for _ in 0..=PRE_HELLO_PER_ADDRESS_MAX {
            pending.leave(stranger);
        }
        pending.leave(member);
        assert!(pending.by_ip.is_empty());
    }

    #[test]
    fn only_members_are_served() {
        assert_eq!(refusal(Trust::Member), None);
        assert_eq!(
            refusal(Trust::Revoked),
            Some((close_code::REVOKED_PEER, "REVOKED_PEER"))
        );
        assert_eq!(
            refusal(Trust::Unknown),
            Some((close_code::UNKNOWN_PEER, "UNKNOWN_PEER"))
        );
    }

    /// Up to the window at once; an item that goes alone starts only once
    /// everything before it was answered, and nothing after it starts
    /// until it is.
    #[tokio::test(start_paused = true)]
    async fn a_send_window_keeps_its_bound_and_sends_an_ordered_item_alone() {
        use std::sync::Mutex;
        let (items, mut queue) = mpsc::channel(64);
        // Items 0..20, each taking a different time; 7 and 13 go alone.
        for item in 0..20u64 {
            items.send(item).await.unwrap();
        }
        drop(items);
        let log = Arc::new(Mutex::new(Vec::<(u64, bool)>::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let send = |item: u64| {
            let (log, running, most) = (log.clone(), running.clone(), most.clone());
            async move {
                log.lock().unwrap().push((item, true));
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10 + (item * 7) % 23)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                log.lock().unwrap().push((item, false));
                item
            }
        };
        let mut answers = Vec::new();
        send_in_window(
            &mut queue,
            4,
            |item| *item == 7 || *item == 13,
            send,
            |item| {
                answers.push(item);
                ControlFlow::Continue(())
            },
        )
        .await;
        answers.sort_unstable();
        assert_eq!(answers, (0..20).collect::<Vec<_>>());
        assert_eq!(
            most.load(Ordering::SeqCst),
            4,
            "the window fills, and no more"
        );
        let log = log.lock().unwrap();
        let at = |item: u64, start: bool| log.iter().position(|e| *e == (item, start)).unwrap();
        for alone in [7, 13] {
            for other in 0..20 {
                if other < alone {
                    assert!(
                        at(other, false) < at(alone, true),
                        "{other} ends before {alone} starts"
                    );
                } else if other > alone {
                    assert!(
                        at(alone, false) < at(other, true),
                        "{other} starts after {alone} ends"
                    );
                }
            }
        }
    }
}
