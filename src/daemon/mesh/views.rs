//! The partial views in the broker ([`scout_mesh::views`] is the pure
//! protocol): which members this broker keeps connections to, syncs with,
//! and dials.
//!
//! - The **active view** (at most [`ACTIVE_VIEW_MAX`] members) are the
//!   connections this broker keeps. The replica syncs over every live
//!   connection, so the views bound whom it syncs with, and a broker that
//!   has just joined (and does not know the members yet, so its views
//!   admit only its inviter) still catches up over whatever connected.
//! - View messages to a member with no connection wait in a small pending
//!   list and make the dialer dial it; a dial that fails tells the views
//!   the peer is down, so they ask another.
//! - Other connections (routing to an owner outside the view, a terminal
//!   relay, a peer that dialed to ask) are **on demand**: kept while in use
//!   or wanted, closed after [`CONNECTION_IDLE`] without use, and at most
//!   [`ON_DEMAND_MAX`] of them (open terminal relays aside, which are
//!   never cut).
//!
//! Lock order: never hold the views lock while taking the replica or the
//! peers lock; outputs are collected under it and acted on after.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use scout_mesh::views::{ViewOutput, ViewSizes, Views};
use scout_mesh::wire::{MeshFrame, NodeId, ViewFrame};
use scout_net::transport::close_code;

use super::Shared;
use super::trust::MeshTrust;

/// Connections outside the active view at most (routing to owners, relays,
/// peers asking to become neighbours). Past it the least recently used
/// is closed first, so a broker's connections stay bounded by its active
/// view's size plus `ON_DEMAND_MAX` however large the mesh.
pub const ON_DEMAND_MAX: usize = 24;

/// A connection outside the active view, unused for this long, is closed.
pub const CONNECTION_IDLE: Duration = Duration::from_secs(30);

/// How long a member asked for (a routing request) stays wanted after the
/// last ask: the dialer retries it, and its connection is not idle.
pub const WANTED_FOR: Duration = Duration::from_secs(60);

/// Members with view messages waiting for a connection, at most; and
/// messages per member. A full list drops the message (the next shuffle
/// or fill repairs).
const PENDING_PEERS_MAX: usize = 8;
const PENDING_PER_PEER_MAX: usize = 4;

/// Targets this broker relays to, wanted at once, at most (the least
/// recently asked for goes first): kept apart from routing's own, so
/// other members' relayed requests never push those out.
const RELAY_WANTED_MAX: usize = 4;

/// Members wanted by routing at once, at most (the least recently asked
/// for goes first): with the pending ones and the relay targets, the
/// connections outside the view that are never closed to make room.
const WANTED_MAX: usize = ON_DEMAND_MAX - PENDING_PEERS_MAX - RELAY_WANTED_MAX;

/// Members offered to the views at a time when the passive view runs low.
const LEARN_BATCH: usize = 8;

/// How often the registry's members are offered to a passive view that is
/// less than half full.
const LEARN_INTERVAL_MS: u64 = 5_000;

const _: () = assert!(PENDING_PEERS_MAX >= 8);
const _: () = assert!(WANTED_MAX >= 8);

/// The views of this broker and what waits on connections.
pub struct ViewState {
    views: Views<NodeId>,
    pending: BTreeMap<NodeId, Vec<ViewFrame>>,
    /// Members wanted by routing, until unix ms.
    wanted: BTreeMap<NodeId, u64>,
    /// Members other members' relayed requests go to, until unix ms.
    relay_wanted: BTreeMap<NodeId, u64>,
    next_learn_ms: u64,
}

impl std::fmt::Debug for ViewState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewState")
            .field("views", &self.views)
            .field("pending", &self.pending.len())
            .field("wanted", &self.wanted.len())
            .field("relay_wanted", &self.relay_wanted.len())
            .finish()
    }
}

impl ViewState {
    /// Empty views of `me` of `sizes`; only members (or a pinned inviter)
    /// may enter. The first fill asks the members in `named` first (the
    /// relays this broker's stored node record names, after a restart).
    pub fn new(
        me: NodeId,
        seed: u64,
        sizes: ViewSizes,
        trust: Arc<MeshTrust>,
        named: Vec<NodeId>,
    ) -> ViewState {
        let may_join = Box::new(move |id: &NodeId| trust.admits_node(id));
        let mut views = Views::with_sizes(me, seed, may_join, sizes);
        views.prefer(named);
        ViewState {
            views,
            pending: BTreeMap::new(),
            wanted: BTreeMap::new(),
            relay_wanted: BTreeMap::new(),
            next_learn_ms: 0,
        }
    }

    /// The active view.
    pub fn active(&self) -> Vec<NodeId> {
        self.views.active().iter().cloned().collect()
    }

    /// Members the dialer should reach: the active view, peers with view
    /// messages waiting, and members routing wants.
    pub fn dial_wanted(&self, now_ms: u64) -> HashSet<NodeId> {
        self.views
            .active()
            .iter()
            .chain(self.pending.keys())
            .chain(
                self.wanted
                    .iter()
                    .chain(&self.relay_wanted)
                    .filter(|(_, until)| **until > now_ms)
                    .map(|(id, _)| id),
            )
            .cloned()
            .collect()
    }

    /// Members routing wants now.
    pub fn wanted(&self, now_ms: u64) -> Vec<NodeId> {
        self.wanted
            .iter()
            .filter(|(_, until)| **until > now_ms)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether a connection to `peer` is needed (not idle by design).
    fn needs(&self, peer: &NodeId, now_ms: u64) -> bool {
        self.views.active().contains(peer)
            || self.pending.contains_key(peer)
            || self.wanted.get(peer).is_some_and(|until| *until > now_ms)
            || self
                .relay_wanted
                .get(peer)
                .is_some_and(|until| *until > now_ms)
    }

    /// Marks `peer` wanted for [`WANTED_FOR`] from `now_ms`.
    pub fn want(&mut self, peer: NodeId, now_ms: u64) {
        want_in(&mut self.wanted, WANTED_MAX, peer, now_ms);
    }

    /// Marks `peer` wanted as the target of a relayed request, among at
    /// most [`RELAY_WANTED_MAX`] such.
    pub fn want_for_relay(&mut self, peer: NodeId, now_ms: u64) {
        want_in(&mut self.relay_wanted, RELAY_WANTED_MAX, peer, now_ms);
    }
}

/// Marks `peer` wanted for [`WANTED_FOR`] in `wanted`, which keeps at
/// most `max` (the least recently asked for goes first).
fn want_in(wanted: &mut BTreeMap<NodeId, u64>, max: usize, peer: NodeId, now_ms: u64) {
    let until = now_ms + WANTED_FOR.as_millis() as u64;
    wanted.insert(peer, until);
    if wanted.len() > max {
        wanted.retain(|_, until| *until > now_ms);
        while wanted.len() > max {
            let Some(oldest) = wanted
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            wanted.remove(&oldest);
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, ViewState> {
    shared
        .views
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}

/// Acts on what the views asked for: sends, and the replica's peers.
pub fn drain(shared: &Arc<Shared>) {
    let now = shared.now_ms();
    loop {
        let Some(output) = lock(shared).views.poll_output() else {
            return;
        };
        match output {
            ViewOutput::Send { to, message } => send(shared, now, to, message),
            // The connection to a new active peer is made by the dialer
            // (it is wanted now); one to a dropped peer closes once idle.
            ViewOutput::NeighborUp(_) | ViewOutput::NeighborDown(_) => {
                shared.dial_kick.notify_one();
            }
        }
    }
}

fn send(shared: &Arc<Shared>, now: u64, to: NodeId, message: ViewFrame) {
    if let Some(sender) = shared.sender_of(&to) {
        if sender.try_send(MeshFrame::View(message)).is_err() {
            tracing::debug!(peer = %to, "send queue full; a view message was dropped");
        }
        return;
    }
    // An address whose last dial failed still counts: the dialer tries it
    // again after its backoff (after a partition heals, every address on
    // the other side has failed once, and only these dials rejoin the
    // halves). Only a member with no address at all is given up here.
    let known = shared
        .book
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .knows(&to);
    let mut state = lock(shared);
    if !known {
        // Nowhere to dial: the views ask someone else.
        state.pending.remove(&to);
        state.views.handle_peer_down(now, &to);
        return;
    }
    if state.pending.len() >= PENDING_PEERS_MAX && !state.pending.contains_key(&to) {
        return;
    }
    let queue = state.pending.entry(to).or_default();
    if queue.len() < PENDING_PER_PEER_MAX {
        queue.push(message);
    }
    drop(state);
    shared.dial_kick.notify_one();
}

/// A connection to `peer` was registered: flush what waited for it, and
/// join the mesh through it if this broker has no view yet.
pub fn on_registered(shared: &Arc<Shared>, peer: &NodeId) {
    let now = shared.now_ms();
    let waiting = {
        let mut state = lock(shared);
        let alone = state.views.active().is_empty() && state.pending.is_empty();
        if alone {
            state.views.join(now, peer.clone());
        }
        state.pending.remove(peer).unwrap_or_default()
    };
    if let Some(sender) = shared.sender_of(peer) {
        for message in waiting {
            let _ = sender.try_send(MeshFrame::View(message));
        }
    }
    drain(shared);
}

/// The connection to `peer` closed: an active peer is down, and the views
/// repair.
pub fn on_closed(shared: &Arc<Shared>, peer: &NodeId) {
    let now = shared.now_ms();
    {
        let mut state = lock(shared);
        if state.views.active().contains(peer) {
            state.views.handle_peer_down(now, peer);
        }
    }
    drain(shared);
}

/// Every address of `peer` failed its dial: it is down for the views.
pub fn on_dial_failed(shared: &Arc<Shared>, peer: &NodeId) {
    let now = shared.now_ms();
    {
        let mut state = lock(shared);
        if state.pending.remove(peer).is_some() || state.views.active().contains(peer) {
            state.views.handle_peer_down(now, peer);
        }
    }
    drain(shared);
}

/// A view message from a connected member.
pub fn on_message(shared: &Arc<Shared>, peer: &NodeId, message: ViewFrame) {
    let now = shared.now_ms();
    lock(shared)
        .views
        .handle_message(now, peer.clone(), message);
    drain(shared);
}

/// `peer` is no longer a member.
pub fn on_removed(shared: &Arc<Shared>, peer: &NodeId) {
    let now = shared.now_ms();
    {
        let mut state = lock(shared);
        state.pending.remove(peer);
        state.wanted.remove(peer);
        state.views.handle_revoked(now, peer);
    }
    drain(shared);
}

/// The most connections a broker with views of `sizes` holds: its active
/// view and [`ON_DEMAND_MAX`] others.
pub fn connections_max(sizes: ViewSizes) -> usize {
    sizes.active() + ON_DEMAND_MAX
}

/// The dialer's tick: the views' timers, members offered to a passive view
/// that runs low, and idle connections closed.
pub fn tick(shared: &Arc<Shared>) {
    let now = shared.now_ms();
    let learn = {
        let mut state = lock(shared);
        // Every tick, due or not: the views bring in a deadline the clock's
        // going back left too far away.
        state.views.handle_timeout(now);
        let sizes = state.views.sizes();
        let low = state.views.passive().len() < sizes.passive() / 2
            || state.views.active().len() < sizes.active();
        let due = now >= state.next_learn_ms;
        if low && due {
            state.next_learn_ms = now + LEARN_INTERVAL_MS;
        }
        low && due
    };
    if learn {
        let members = sample_members(shared, LEARN_BATCH);
        lock(shared).views.learn(now, members);
    }
    drain(shared);
    close_idle(shared, now);
}

/// Up to `n` random members other than this broker.
fn sample_members(shared: &Shared, n: usize) -> Vec<NodeId> {
    let mut members: Vec<NodeId> = shared
        .trust
        .member_ids()
        .into_iter()
        .filter(|id| *id != shared.identity.node_id)
        .collect();
    let mut picked = Vec::with_capacity(n.min(members.len()));
    while picked.len() < n && !members.is_empty() {
        let idx = shared.random::<usize>() % members.len();
        picked.push(members.swap_remove(idx));
    }
    picked
}

/// Closes connections nothing needs: outside the active view, not wanted,
/// no stream open, unused for [`CONNECTION_IDLE`].
fn close_idle(shared: &Arc<Shared>, now: u64) {
    let idle_ms = CONNECTION_IDLE.as_millis() as u64;
    for (last_used, id) in closable(shared, now, None) {
        if now.saturating_sub(last_used) >= idle_ms {
            tracing::debug!(peer = %id, "closing a connection nothing uses");
            close_peer(shared, &id);
        }
    }
}

/// Keeps this broker's connections within [`connections_max`] after one
/// was registered (to `new`): the least recently used of those nothing
/// needs are closed first. Connections that are needed (active peers,
/// wanted ones, open relays) are never closed here.
pub fn make_room(shared: &Arc<Shared>, new: &NodeId) {
    let bound = connections_max(lock(shared).views.sizes());
    let count = shared
        .peers
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .len();
    let now = shared.now_ms();
    for (_, id) in closable(shared, now, Some(new))
        .into_iter()
        .take(count.saturating_sub(bound))
    {
        tracing::debug!(peer = %id, "closing the least recently used connection to make room");
        close_peer(shared, &id);
    }
}

/// Connections nothing needs, least recently used first.
fn closable(shared: &Shared, now: u64, except: Option<&NodeId>) -> Vec<(u64, NodeId)> {
    let state = lock(shared);
    let peers = shared
        .peers
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let mut closable: Vec<(u64, NodeId)> = peers
        .iter()
        .filter(|(id, peer)| {
            Some(*id) != except
                && !state.views.active().contains(*id)
                && !state.needs(id, now)
                && peer.streams_open() == 0
        })
        .map(|(id, peer)| (peer.last_used_ms().max(peer.connected_at_ms), id.clone()))
        .collect();
    closable.sort();
    closable
}

/// Closes the connection to `id` now: it leaves the peers at once (so it
/// no longer counts), and the replica stops syncing with it.
fn close_peer(shared: &Arc<Shared>, id: &NodeId) {
    let removed = shared
        .peers
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .remove(id);
    if let Some(peer) = removed {
        peer.connection
            .close(VarInt::from_u32(close_code::IDLE), b"idle");
        shared.with_replica(|replica| replica.handle_disconnected(id));
        shared.connection_changed();
    }
}
