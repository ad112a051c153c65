//! Relays: when this broker cannot dial a member (two machines behind NATs,
//! a firewall, a link that is down while others work), routing's request
//! goes through a member both are connected to.
//!
//! Three roles, one per frame of [`scout_mesh::relay`]:
//! - the sender ([`request_relayed`]): after a direct request failed, it
//!   seals the frame for the target and asks, at once, the members the
//!   target names in its node record (`via`, dialed if need be) and up to
//!   [`RELAYS_TRIED_MAX`] of its own live connections (active view first)
//!   to pass it on; the first answer that opens (signed by the target,
//!   bound to the nonce) wins;
//! - the relay ([`pass_on`]): passes a connected member's own envelope to
//!   the target over its own connection (dialing it if need be, never
//!   through another relay) and hands the signed answer back;
//! - the target ([`serve`]): opens the envelope, checks the sender's
//!   membership as a direct connection's would be, and answers through the
//!   same routing hook as a direct request.
//!
//! Every broker names in its node record up to
//! [`scout_mesh::registry::NODE_VIA_MAX`] members of its active view it
//! holds connections to ([`refresh_via`]): a broker nobody can dial (behind
//! a NAT) is reached through one of them, whatever the size of the mesh,
//! instead of through whichever of the sender's own connections happens
//! to be connected to it. The names go out in the first node record it
//! publishes once connected ([`names_for_record`]): the member it caught
//! up from when its view has none connected yet. While no member has
//! dialed it unasked (see [`super::connections`]'s `unsolicited`), it may
//! be behind a NAT, where only members it keeps a connection to can pass
//! requests on: it names one at once if it names none, widens a short
//! first list once, and names others when none of the named ones has been
//! in its view for a while. A broker any
//! member can dial is reached by whichever relay dials it in turn, so it
//! keeps its names, and they cost no registry write after the first
//! record. A restarted broker asks the members it named back into its view
//! first (see [`super::views::ViewState::new`]), so its names stay true.
//!
//! A member reached through a relay counts as reachable for routing
//! ([`Relays::fresh`]) for [`RELAY_FRESH_MS`]; [`probe_loop`] tries a
//! relayed ping to members routing waits on whose every address failed,
//! so the first delivery to them does not wait for a direct path.

use std::collections::HashMap;
use std::sync::Arc;

use scout_mesh::relay::{self, Exchange, Expect, RelayEnvelope};
use scout_mesh::wire::{ErrorCode, MeshFrame, NodeId};
use scout_net::transport::TrustPolicy as _;
use tokio::sync::watch;

use super::{Mesh, Purpose, Shared, connections};

/// How long a relayable request waits for a direct connection before it
/// goes through a relay: a handshake over a slow link with one lost
/// packet fits (QUIC's first retransmit comes after about a second).
pub const DIRECT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Relays one request is offered to at once, at most.
pub const RELAYS_TRIED_MAX: usize = 3;

/// How long a member reached through a relay counts as reachable, in ms.
pub const RELAY_FRESH_MS: u64 = 60_000;

/// How often a member routing waits on, unreachable directly, is probed
/// through a relay, in ms.
pub const RELAY_PROBE_INTERVAL_MS: u64 = 10_000;

/// Probes in flight at once, at most.
const RELAY_PROBES_MAX: usize = 4;

/// Relayed requests of one sender remembered at once at the target, at
/// most (within twice [`relay::RELAY_WINDOW_MS`]); past it the sender's
/// next ones are refused `RELAY_BUSY` until older ones age out.
pub const RELAYED_SEEN_PER_SENDER_MAX: usize = 256;

/// Requests of one sender a relay passes on at once, at most.
pub const RELAY_PASSES_PER_SENDER_MAX: usize = 4;

/// How long a broker waits before it names its relays in a record of its
/// own, in ms: after its start, if its first record named none (its
/// active view fills in the first seconds), and after none of the named
/// ones is in its view any more (a flapping link does not make it write
/// a record each time). Each naming is a registry write every member
/// receives, so this also bounds how often.
pub const VIA_SETTLE_MS: u64 = 10_000;

/// How long a member's unasked dial counts as proof that this broker is
/// reachable directly, in ms: a laptop carried from an office network to
/// one behind a NAT widens and renames its relays again once it has passed
/// with no new one.
pub const DIALED_IN_FRESH_MS: u64 = 600_000;

/// Members reached through a relay lately, and relayed requests seen.
#[derive(Debug, Default)]
pub struct Relays {
    /// Until when (monotonic ms) each counts as reachable.
    fresh: HashMap<NodeId, u64>,
    /// When each was last probed (monotonic ms).
    probed: HashMap<NodeId, u64>,
    /// Bumped whenever a member enters or leaves `fresh`.
    version: u64,
    /// Relayed requests this broker took as their target, by (sender,
    /// nonce): when (monotonic ms), and the sealed answer once there is
    /// one. A replay within the window gets that answer; nothing runs
    /// twice.
    seen: HashMap<(NodeId, u64), Seen>,
    /// Requests passed on as a relay now, per sender.
    passing: HashMap<NodeId, usize>,
    /// The relays this broker names in its node record.
    named: Vec<NodeId>,
    /// When it first looked at its view, and since when none of the named
    /// ones is in it (monotonic ms).
    via_since_ms: Option<u64>,
    orphaned_since_ms: Option<u64>,
    /// Whether names were added to a short list once already.
    widened: bool,
    /// When a member last dialed this one unasked (monotonic ms): within
    /// [`DIALED_IN_FRESH_MS`] any member can reach it directly, and a relay
    /// by dialing it, so its names are kept.
    dialed_in_ms: Option<u64>,
}

#[derive(Debug)]
struct Seen {
    /// Monotonic ms of its arrival.
    at_ms: u64,
    /// Its seal time (the sender's unix ms).
    sent_ms: u64,
    answer: Option<RelayEnvelope>,
}

/// What the target does with a relayed request it opened.
#[derive(Debug)]
pub enum Admit {
    /// Not seen: answer it.
    New,
    /// Answered before: send the same answer.
    Answered(Box<RelayEnvelope>),
    /// Being answered now, or too many of this sender's: refuse.
    Busy(&'static str),
}

impl Relays {
    /// `peer` answered through a relay at `now_ms`; true when it had not
    /// lately.
    pub fn reached(&mut self, peer: &NodeId, now_ms: u64) -> bool {
        let new = self
            .fresh
            .insert(peer.clone(), now_ms + RELAY_FRESH_MS)
            .is_none_or(|until| until <= now_ms);
        if new {
            self.version += 1;
        }
        new
    }

    /// No relays seen yet, naming `named` (what this broker's stored node
    /// record names, after a restart). A stored list is not widened: the
    /// run that wrote it widened it already, or kept it short because
    /// members dialed it; the names are still replaced once none of them
    /// has been in the view for a while.
    pub fn naming(named: Vec<NodeId>) -> Relays {
        Relays {
            widened: !named.is_empty(),
            named,
            ..Relays::default()
        }
    }

    /// A member dialed this broker unasked at monotonic `now_ms`: it is
    /// reachable directly. True when it was not so already.
    pub fn dialed_in(&mut self, now_ms: u64) -> bool {
        let was = self.reachable(now_ms);
        self.dialed_in_ms = Some(now_ms);
        !was
    }

    fn reachable(&self, now_ms: u64) -> bool {
        self.dialed_in_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < DIALED_IN_FRESH_MS)
    }

    /// The relays this broker names in its node record now.
    pub fn named(&self) -> Vec<NodeId> {
        self.named.clone()
    }

    /// The named relays; when there are none, names the first of `view`
    /// (the members of the active view connected now, longest-connected
    /// first), or, while the view has none connected, the first of
    /// `others` (the other members connected now, longest-connected first:
    /// the first record, at the catch-up, often comes before the view does,
    /// and the first of them is the member it caught up from). A broker
    /// behind a NAT is then reached from its first record on. A name
    /// outside the view counts as gone from it since `now_ms`: it is
    /// replaced by view members once the view settles unless it is in the
    /// view then (see [`Relays::rename_due`]).
    pub fn name_first(&mut self, view: &[NodeId], others: &[NodeId], now_ms: u64) -> Vec<NodeId> {
        if self.named.is_empty() {
            self.named = if view.is_empty() {
                others.iter().take(1).cloned().collect()
            } else {
                first_of_view(view)
            };
            if view.is_empty() && !self.named.is_empty() {
                self.orphaned_since_ms = Some(now_ms);
            }
        }
        self.named.clone()
    }

    /// Whether to name relays anew, given the members connected now
    /// (`view`: of the active view, `others`: the rest; longest-connected
    /// first), at monotonic `now_ms`. While no member has dialed this one
    /// unasked (it may be behind a NAT, where only members it keeps a
    /// connection to can pass requests on): at once if none is named (see
    /// [`Relays::name_first`]: nobody could reach it), once to widen a list
    /// of fewer than three when the view holds more once it has settled,
    /// and again once none of the named ones has been in the view for
    /// [`VIA_SETTLE_MS`]. A broker dialed unasked names its view once it
    /// has settled if it named none, and keeps its names otherwise.
    /// Returns the new names, which are then the named ones.
    pub fn rename_due(
        &mut self,
        view: &[NodeId],
        others: &[NodeId],
        now_ms: u64,
    ) -> Option<Vec<NodeId>> {
        let since = *self.via_since_ms.get_or_insert(now_ms);
        if self.named.is_empty() && !self.reachable(now_ms) {
            let names = self.name_first(view, others, now_ms);
            return (!names.is_empty()).then_some(names);
        }
        if now_ms.saturating_sub(since) < VIA_SETTLE_MS {
            return None;
        }
        if self.reachable(now_ms) && !self.named.is_empty() {
            // Any relay reaches it by dialing it, neighbour or not; each
            // rename or widening is a registry write to every member, and
            // on a mesh that forms at once they landed among its writes.
            // Once the proof is stale, names out of the view wait a while
            // again before they are replaced.
            self.orphaned_since_ms = None;
            return None;
        }
        if self.named.iter().any(|named| view.contains(named)) {
            self.orphaned_since_ms = None;
            // Named while the view held fewer (the first record, at the
            // catch-up, often names the inviter alone): widened once, so a
            // broker behind a NAT does not hang on one relay.
            let max = scout_mesh::registry::NODE_VIA_MAX;
            if self.widened || self.named.len() >= max {
                return None;
            }
            let mut names = self.named.clone();
            for id in view {
                if names.len() >= max {
                    break;
                }
                if !names.contains(id) {
                    names.push(id.clone());
                }
            }
            if names.len() == self.named.len() {
                // Nobody to add yet: the one widening is kept for when
                // the view holds more.
                return None;
            }
            self.widened = true;
            self.named.clone_from(&names);
            return Some(names);
        }
        if !self.named.is_empty() {
            let orphaned = *self.orphaned_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(orphaned) < VIA_SETTLE_MS {
                return None;
            }
        }
        if view.is_empty() {
            return None;
        }
        let names = first_of_view(view);
        self.named.clone_from(&names);
        self.orphaned_since_ms = None;
        Some(names)
    }

    /// No relay reached `peer`.
    pub fn failed(&mut self, peer: &NodeId) {
        if self.fresh.remove(peer).is_some() {
            self.version += 1;
        }
    }

    /// Whether `peer` answered through a relay lately.
    pub fn is_fresh(&self, peer: &NodeId, now_ms: u64) -> bool {
        self.fresh.get(peer).is_some_and(|until| *until > now_ms)
    }

    /// The members reached through a relay lately (expired ones are
    /// forgotten).
    pub fn fresh(&mut self, now_ms: u64) -> Vec<NodeId> {
        self.expire(now_ms);
        self.fresh.keys().cloned().collect()
    }

    /// Forgets members no longer fresh at `now_ms` (a change of version).
    pub fn expire(&mut self, now_ms: u64) {
        let before = self.fresh.len();
        self.fresh.retain(|_, until| *until > now_ms);
        if self.fresh.len() != before {
            self.version += 1;
        }
    }

    /// A relayed request (sender, nonce), sealed at `sent_ms`, arrived at
    /// monotonic `now_ms`, wall clock `wall_ms`. A request is remembered
    /// for twice the window on the monotonic clock, and for as long as
    /// `open` could still take it on the wall clock (which may step back):
    /// a replay is answered from here until `open` refuses it.
    pub fn admit(
        &mut self,
        from: &NodeId,
        (nonce, sent_ms): (u64, u64),
        now_ms: u64,
        wall_ms: u64,
    ) -> Admit {
        let keep_ms = 2 * relay::RELAY_WINDOW_MS;
        self.seen.retain(|_, seen| {
            now_ms.saturating_sub(seen.at_ms) < keep_ms
                || wall_ms <= seen.sent_ms.saturating_add(relay::RELAY_WINDOW_MS)
        });
        if let Some(seen) = self.seen.get(&(from.clone(), nonce)) {
            return match &seen.answer {
                Some(answer) => Admit::Answered(Box::new(answer.clone())),
                None => Admit::Busy("this request is being answered"),
            };
        }
        let of_sender = self
            .seen
            .keys()
            .filter(|(sender, _)| sender == from)
            .count();
        if of_sender >= RELAYED_SEEN_PER_SENDER_MAX {
            return Admit::Busy("too many relayed requests from this member lately");
        }
        self.seen.insert(
            (from.clone(), nonce),
            Seen {
                at_ms: now_ms,
                sent_ms,
                answer: None,
            },
        );
        Admit::New
    }

    /// The answer to the relayed request (sender, nonce), for replays.
    pub fn answered(&mut self, from: &NodeId, nonce: u64, answer: &RelayEnvelope) {
        if let Some(seen) = self.seen.get_mut(&(from.clone(), nonce)) {
            seen.answer = Some(answer.clone());
        }
    }

    /// One more request of `sender` passed on, unless it has too many
    /// under way.
    fn start_passing(&mut self, sender: &NodeId) -> bool {
        let count = self.passing.entry(sender.clone()).or_default();
        if *count >= RELAY_PASSES_PER_SENDER_MAX {
            return false;
        }
        *count += 1;
        true
    }

    fn stop_passing(&mut self, sender: &NodeId) {
        if let Some(count) = self.passing.get_mut(sender) {
            *count -= 1;
            if *count == 0 {
                self.passing.remove(sender);
            }
        }
    }

    /// A number that changes whenever the fresh set does.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether `peer` may be probed at `now_ms` (and notes it if so).
    fn probe_due(&mut self, peer: &NodeId, now_ms: u64) -> bool {
        self.probed
            .retain(|_, at| now_ms.saturating_sub(*at) < RELAY_PROBE_INTERVAL_MS);
        let due = self
            .probed
            .get(peer)
            .is_none_or(|at| now_ms.saturating_sub(*at) >= RELAY_PROBE_INTERVAL_MS);
        if due {
            self.probed.insert(peer.clone(), now_ms);
        }
        due
    }
}

/// The names a broker gives its relays from its view (longest-connected
/// first): as many as a node record holds.
fn first_of_view(view: &[NodeId]) -> Vec<NodeId> {
    view.iter()
        .take(scout_mesh::registry::NODE_VIA_MAX)
        .cloned()
        .collect()
}

fn relays(shared: &Shared) -> std::sync::MutexGuard<'_, Relays> {
    shared
        .relays
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}

/// `by` dialed this broker unasked (see [`Relays::dialed_in`]).
pub fn note_dialed_in(shared: &Shared, by: &NodeId) {
    if relays(shared).dialed_in(shared.env().now_mono_ms()) {
        tracing::debug!(node_id = %by, "dialed by a member this broker had not sent to: it is reachable directly");
    }
}

/// Whether a request to `target` has a relay to go through: a member
/// its node record names, or a live connection to another member.
pub fn has_relays(shared: &Shared, target: &NodeId) -> bool {
    !named_relays(shared, target).is_empty()
        || shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .any(|(id, peer)| id != target && peer.connection.close_reason().is_none())
}

/// The live connections a request to `target` may go through: active view
/// first, then the others, in a random order within each.
fn candidates(shared: &Shared, target: &NodeId) -> Vec<(NodeId, quinn::Connection)> {
    let active = shared
        .views
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .active();
    let mut live: Vec<(NodeId, quinn::Connection)> = shared
        .peers
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .iter()
        .filter(|(id, peer)| *id != target && peer.connection.close_reason().is_none())
        .map(|(id, peer)| (id.clone(), peer.connection.clone()))
        .collect();
    // In id order before the draws, so a seeded environment (netsim)
    // chooses the same relays on every run.
    live.sort_by(|a, b| a.0.cmp(&b.0));
    let mut live: Vec<(bool, u64, NodeId, quinn::Connection)> = live
        .into_iter()
        .map(|(id, connection)| {
            (
                !active.contains(&id),
                shared.random::<u64>(),
                id,
                connection,
            )
        })
        .collect();
    live.sort_by_key(|(outside_view, draw, _, _)| (*outside_view, *draw));
    live.into_iter()
        .take(RELAYS_TRIED_MAX)
        .map(|(_, _, id, connection)| (id, connection))
        .collect()
}

/// The members `target` names as its relays in its node record, other
/// than this broker and itself.
fn named_relays(shared: &Shared, target: &NodeId) -> Vec<NodeId> {
    let me = &shared.identity.node_id;
    let replica = shared
        .replica
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let registry = replica.registry();
    registry
        .node(target)
        .map(|node| {
            node.via
                .iter()
                .filter(|via| *via != me && *via != target && registry.is_member(via))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Names this broker's relays anew in its node record when
/// [`Relays::rename_due`] says so.
pub fn refresh_via(mesh: &Mesh) {
    let shared = &mesh.shared;
    if shared.catching_up.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let (view, others) = connected(shared);
    let renamed = relays(shared).rename_due(&view, &others, shared.env().now_mono_ms());
    if let Some(names) = renamed {
        tracing::debug!(?names, "naming this node's relays in its record");
        mesh.publish_node();
    }
}

/// The relays this broker's node record names: the named ones, or, when
/// none is named yet, the first of its active view it is connected to, or
/// the first other member it is connected to while the view has none (so
/// the record a broker publishes once caught up carries names, and no
/// second write is needed to add them).
pub fn names_for_record(shared: &Shared) -> Vec<NodeId> {
    let (view, others) = connected(shared);
    let now = shared.env().now_mono_ms();
    relays(shared).name_first(&view, &others, now)
}

/// The members this broker is connected to, longest connected first:
/// those of its active view, and the others. Names are kept while one of
/// them is in the view: a connection outside it is closed once idle, and
/// a rename then would come long after the change that caused it.
fn connected(shared: &Shared) -> (Vec<NodeId>, Vec<NodeId>) {
    let active = shared
        .views
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .active();
    let mut live: Vec<(u64, NodeId)> = shared
        .peers
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .iter()
        .filter(|(_, peer)| peer.connection.close_reason().is_none())
        .map(|(id, peer)| (peer.connected_at_ms, id.clone()))
        .collect();
    live.sort();
    live.into_iter()
        .map(|(_, id)| id)
        .partition(|id| active.contains(id))
}

/// How long a relay may take to answer: it may dial the target first.
fn relay_timeout(shared: &Shared) -> std::time::Duration {
    let transport = &shared.config.transport;
    transport.handshake_timeout + 2 * transport.request_timeout
}

/// Sends `frame` to `target` through a relay; the error says why none
/// answered, for a person.
pub async fn request_relayed(
    shared: &Arc<Shared>,
    target: &NodeId,
    frame: &MeshFrame,
) -> Result<MeshFrame, String> {
    let Some(target_key) = shared.trust.key_of(target) else {
        return Err(format!("{target} is not a member of this mesh"));
    };
    let nonce: u64 = shared.random();
    let exchange = Exchange::start(shared.env().secret_bytes(), &target_key)
        .map_err(|err| format!("{}: {err}", err.code()))?;
    let how = relay::Seal {
        to: target,
        nonce,
        sent_ms: shared.now_ms(),
        answer: false,
    };
    let envelope = relay::seal(&shared.signing_key, how, &exchange, frame)
        .map_err(|err| format!("{}: {err}", err.code()))?;
    // The target's named relays first (dialed if need be), then this
    // broker's own connections.
    let mut tried: Vec<(NodeId, Option<quinn::Connection>)> = named_relays(shared, target)
        .into_iter()
        .map(|via| (via, None))
        .collect();
    for (via, connection) in candidates(shared, target) {
        match tried.iter_mut().find(|(named, _)| *named == via) {
            Some(named) => named.1 = Some(connection),
            None => tried.push((via, Some(connection))),
        }
    }
    if tried.is_empty() {
        return Err("no connected member to relay through".to_owned());
    }
    // All at once: the target treats every relayed request idempotently,
    // so a second copy that arrives changes nothing, and a dead relay
    // does not hold up a live one.
    let me = &shared.identity.node_id;
    let request = MeshFrame::Relay(envelope);
    let timeout = relay_timeout(shared);
    let mesh = Mesh {
        shared: shared.clone(),
    };
    let mut asks: futures_util::stream::FuturesUnordered<_> = tried
        .into_iter()
        .map(|(via, connection)| {
            let request = &request;
            let mesh = &mesh;
            async move {
                let connection = match connection {
                    Some(connection) => connection,
                    // A relay's own want (bounded apart from routing's),
                    // so it never pushes out an owner routing waits on.
                    None => match mesh.connection_to(&via, Purpose::Relay).await {
                        Ok(connection) => connection,
                        Err(why) => return (via, Err(why)),
                    },
                };
                let answer = scout_net::transport::endpoint::request(&connection, request, timeout)
                    .await
                    .map_err(|err| format!("{}: {err}", err.code()));
                (via, answer)
            }
        })
        .collect();
    let mut why = Vec::new();
    while let Some((via, answer)) = futures_util::StreamExt::next(&mut asks).await {
        match answer {
            Ok(MeshFrame::RelayAnswer(answer)) => {
                let expect = Expect {
                    me,
                    answer_to: Some((nonce, target)),
                    now_ms: shared.now_ms(),
                    not_before_ms: 0,
                };
                match relay::open(&answer, expect, &exchange) {
                    Ok(frame) => {
                        if relays(shared).reached(target, shared.env().now_mono_ms()) {
                            tracing::info!(%target, %via, "no address of this member answers; it is reached through a relay");
                        }
                        return Ok(frame);
                    }
                    Err(err) => {
                        if may_log(shared, &via, "answer") {
                            tracing::warn!(%target, %via, cause = %err, "a relay's answer did not verify (logged once a minute per relay)");
                        }
                        why.push(format!("{via}: {}: {err}", err.code()));
                    }
                }
            }
            Ok(MeshFrame::Error(error)) => {
                why.push(format!("{via}: {}: {}", error.code, error.message));
            }
            Ok(other) => why.push(format!("{via}: answered `{}`", other.name())),
            Err(err) => why.push(format!("{via}: {err}")),
        }
    }
    relays(shared).failed(target);
    Err(format!("no relay reached it ({})", why.join("; ")))
}

/// The relay's part: passes `sender`'s envelope on to its target and
/// hands the answer back.
pub async fn pass_on(shared: &Arc<Shared>, sender: &NodeId, envelope: RelayEnvelope) -> MeshFrame {
    if envelope.from != *sender || envelope.answer {
        return MeshFrame::error(
            ErrorCode::BadRelay,
            "a relay passes on its sender's own requests only",
        );
    }
    let target = envelope.to.clone();
    if target == shared.identity.node_id || target == *sender {
        return MeshFrame::error(ErrorCode::BadRelay, "a relay does not pass a request back");
    }
    if !shared.trust.is_member(&target) {
        return MeshFrame::error(
            ErrorCode::RelayUnreachable,
            format!("{target} is not a member of this mesh"),
        );
    }
    if !relays(shared).start_passing(sender) {
        return MeshFrame::error(
            ErrorCode::RelayBusy,
            "too many of this member's requests are being relayed",
        );
    }
    // Counted until this future ends, however it ends.
    let _passing = Passing { shared, sender };
    let mesh = Mesh {
        shared: shared.clone(),
    };
    let answer = mesh
        .request_direct(&target, &MeshFrame::Relayed(envelope))
        .await;
    match answer {
        Ok(answer @ (MeshFrame::RelayAnswer(_) | MeshFrame::Error(_))) => answer,
        Ok(other) => MeshFrame::error(
            ErrorCode::RelayUnreachable,
            format!("{target} answered `{}`", other.name()),
        ),
        Err(why) => MeshFrame::error(ErrorCode::RelayUnreachable, format!("{target}: {why}")),
    }
}

/// One of a sender's requests being passed on (see
/// [`RELAY_PASSES_PER_SENDER_MAX`]).
struct Passing<'a> {
    shared: &'a Shared,
    sender: &'a NodeId,
}

impl Drop for Passing<'_> {
    fn drop(&mut self) {
        relays(self.shared).stop_passing(self.sender);
    }
}

/// The target's part: opens a relayed request and answers it as a direct
/// one from its sender.
pub async fn serve(shared: &Arc<Shared>, via: &NodeId, envelope: RelayEnvelope) -> MeshFrame {
    let me = &shared.identity.node_id;
    let expect = Expect {
        me,
        answer_to: None,
        now_ms: shared.now_ms(),
        not_before_ms: shared.started_ms,
    };
    // The header and signature first: a junk envelope costs no key
    // agreement.
    let opened = relay::verify(&envelope, expect).and_then(|verified| {
        let exchange = Exchange::accept(&shared.signing_key, &envelope)?;
        verified.open(&exchange).map(|frame| (frame, exchange))
    });
    let (frame, exchange) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            if may_log(shared, via, "request") {
                tracing::warn!(%via, from = %envelope.from, cause = %err, "refused a relayed request (logged once a minute per relay)");
            }
            return MeshFrame::error(err.code(), err.to_string());
        }
    };
    // The sender is checked as its own connection would be.
    if let Some((_, reason)) = connections::refusal(shared.trust.trust(&envelope.from_key)) {
        return MeshFrame::error(reason, "the relayed request's sender is not a member");
    }
    let sender = envelope.from.clone();
    let now = shared.env().now_mono_ms();
    let admitted = relays(shared).admit(
        &sender,
        (envelope.nonce, envelope.sent_ms),
        now,
        shared.now_ms(),
    );
    match admitted {
        Admit::New => {}
        Admit::Answered(answer) => return MeshFrame::RelayAnswer(*answer),
        Admit::Busy(why) => return MeshFrame::error(ErrorCode::RelayBusy, why),
    }
    let answer = match frame {
        MeshFrame::Ping { nonce } => MeshFrame::Pong { nonce },
        request @ (MeshFrame::Invoke(_)
        | MeshFrame::FlightUpdate(_)
        | MeshFrame::FlightQuery { .. }
        | MeshFrame::Cancel { .. }
        | MeshFrame::UsageQuery(_)
        | MeshFrame::ApprovalDecide(_)) => match shared.hook.get() {
            Some(hook) => (hook.0)(sender.clone(), request).await,
            None => MeshFrame::error("NOT_READY", "this broker does not route yet"),
        },
        other => MeshFrame::error(
            ErrorCode::UnexpectedFrame,
            format!("`{}` is not a request", other.name()),
        ),
    };
    let how = relay::Seal {
        to: &sender,
        nonce: envelope.nonce,
        sent_ms: shared.now_ms(),
        answer: true,
    };
    match relay::seal(&shared.signing_key, how, &exchange, &answer) {
        Ok(sealed) => {
            let mut relays = relays(shared);
            relays.answered(&sender, envelope.nonce, &sealed);
            // Answers to this sender may need the same way back.
            let _ = relays.reached(&sender, shared.env().now_mono_ms());
            MeshFrame::RelayAnswer(sealed)
        }
        Err(err) => MeshFrame::error(err.code(), err.to_string()),
    }
}

/// Whether a refused relayed frame from `peer` may be logged now (once a
/// minute per member and kind).
fn may_log(shared: &Shared, peer: &NodeId, what: &'static str) -> bool {
    shared
        .relay_log
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .check((peer.clone(), what), shared.env().now_instant())
        .is_some()
}

/// Members routing waits on that no address reaches, due a probe.
fn due_probes(shared: &Shared) -> Vec<NodeId> {
    let now = shared.now_ms();
    let mono = shared.env().now_mono_ms();
    let wanted = shared
        .views
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .wanted(now);
    let connected: Vec<NodeId> = {
        let peers = shared
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        wanted
            .iter()
            .filter(|id| peers.contains_key(*id))
            .cloned()
            .collect()
    };
    let book = shared
        .book
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let mut relays = relays(shared);
    wanted
        .into_iter()
        .filter(|id| !connected.contains(id) && !book.has_dialable(id))
        .filter(|id| !relays.is_fresh(id, mono) && relays.probe_due(id, mono))
        .take(RELAY_PROBES_MAX)
        .collect()
}

/// Probes, once a second, the members routing waits on that no address
/// reaches (a relayed ping that answers makes them reachable), and names
/// this broker's relays anew when they are gone ([`refresh_via`]).
pub async fn probe_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        refresh_via(&Mesh {
            shared: shared.clone(),
        });
        let due = due_probes(&shared);
        let probes = due.iter().map(|peer| {
            let ping = MeshFrame::Ping {
                nonce: shared.random(),
            };
            let shared = shared.clone();
            async move {
                let answer = request_relayed(&shared, peer, &ping).await;
                (peer, answer)
            }
        });
        let answers = tokio::select! {
            answers = futures_util::future::join_all(probes) => answers,
            _ = shutdown.changed() => return,
        };
        for (peer, answer) in answers {
            if let Err(why) = answer {
                tracing::debug!(%peer, %why, "no relay reached this member");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(byte: u8) -> NodeId {
        NodeId::from_bytes([byte; 16])
    }

    #[test]
    fn a_member_reached_through_a_relay_stays_fresh_for_a_while() {
        let mut relays = Relays::default();
        let start = relays.version();
        assert!(relays.reached(&node(1), 1_000));
        assert!(relays.is_fresh(&node(1), 1_000 + RELAY_FRESH_MS - 1));
        assert!(relays.version() > start);
        let seen = relays.version();
        assert!(!relays.reached(&node(1), 2_000));
        assert_eq!(relays.version(), seen, "a refresh is not a change");
        assert_eq!(relays.fresh(2_000 + RELAY_FRESH_MS - 1), vec![node(1)]);
        assert!(relays.fresh(2_000 + RELAY_FRESH_MS).is_empty());
        assert!(relays.version() > seen, "expiry is a change");
        assert!(relays.reached(&node(2), 0));
        relays.failed(&node(2));
        assert!(!relays.is_fresh(&node(2), 1));
    }

    /// `relays.admit` of node `sender`'s request `nonce`, sealed at 0, at
    /// `now_ms` on both clocks.
    #[test]
    fn relays_are_named_at_once_and_again_only_when_all_are_gone() {
        let mut relays = Relays::default();
        let view = [node(1), node(2), node(3), node(4)];
        assert_eq!(relays.rename_due(&[], &[], 1_000), None, "nobody to name");
        let named = relays
            .rename_due(&view, &[node(9)], 1_000)
            .expect("nobody could reach it: named at once");
        assert_eq!(named, view[..scout_mesh::registry::NODE_VIA_MAX].to_vec());
        assert_eq!(relays.named(), named);
        let at = 1_000 + VIA_SETTLE_MS;
        assert_eq!(relays.rename_due(&view, &[], at), None, "full already");
        // One of them still in the view: nothing to say.
        let later = at + 10 * VIA_SETTLE_MS;
        assert_eq!(relays.rename_due(&[node(3), node(5)], &[], later), None);
        // All gone: named anew once they have been gone a while, so a
        // flapping link does not write a record each time.
        let gone = [node(5), node(6)];
        assert_eq!(relays.rename_due(&gone, &[], later), None);
        assert_eq!(relays.rename_due(&[node(1)], &[], later + 1), None);
        assert_eq!(relays.rename_due(&gone, &[], later + 2), None);
        assert_eq!(
            relays.rename_due(&gone, &[], later + 2 + VIA_SETTLE_MS),
            Some(gone.to_vec())
        );
        // Nobody connected: the old names stay.
        let alone = later + 10 * VIA_SETTLE_MS;
        assert_eq!(relays.rename_due(&[], &[], alone), None);
        assert_eq!(relays.rename_due(&[], &[], alone + 2 * VIA_SETTLE_MS), None);
        assert_eq!(relays.named(), gone.to_vec());
    }

    #[test]
    fn the_first_record_names_the_view_it_has_and_later_ones_keep_the_names() {
        let mut relays = Relays::default();
        assert!(
            relays.name_first(&[], &[], 0).is_empty(),
            "nobody to name yet"
        );
        assert_eq!(relays.name_first(&[node(1)], &[node(9)], 0), vec![node(1)]);
        assert_eq!(
            relays.name_first(&[node(2), node(3), node(4)], &[], 0),
            vec![node(1)],
            "a later record keeps the names"
        );
        // Still in the view once settled: no rename, but the short list
        // is widened, once, when the view holds more.
        assert_eq!(relays.rename_due(&[node(2), node(1)], &[], 0), None);
        assert_eq!(
            relays.rename_due(&[node(1)], &[node(2)], VIA_SETTLE_MS - 1),
            None
        );
        assert_eq!(
            relays.rename_due(&[node(1)], &[node(2)], VIA_SETTLE_MS),
            None,
            "nobody to add: the widening is kept for later"
        );
        assert_eq!(
            relays.rename_due(&[node(2), node(1)], &[], VIA_SETTLE_MS + 1),
            Some(vec![node(1), node(2)])
        );
        assert_eq!(
            relays.rename_due(&[node(2), node(1), node(3)], &[], 2 * VIA_SETTLE_MS),
            None
        );
        assert_eq!(relays.named(), vec![node(1), node(2)]);
        let mut reachable = Relays::default();
        assert_eq!(reachable.name_first(&[node(1)], &[], 0), vec![node(1)]);
        assert!(reachable.dialed_in(0));
        assert!(!reachable.dialed_in(0), "already reachable");
        assert_eq!(reachable.rename_due(&[node(2), node(1)], &[], 0), None);
        assert_eq!(
            reachable.rename_due(&[node(2), node(1)], &[], VIA_SETTLE_MS),
            None,
            "a broker others dial keeps its short list"
        );
        assert_eq!(
            reachable.rename_due(&[node(3)], &[], 2 * VIA_SETTLE_MS),
            None
        );
        assert_eq!(
            reachable.rename_due(&[node(3)], &[], 5 * VIA_SETTLE_MS),
            None,
            "nor names others once the named one left its view"
        );
        let stale = DIALED_IN_FRESH_MS + 1;
        assert_eq!(reachable.rename_due(&[node(3)], &[], stale), None);
        assert_eq!(
            reachable.rename_due(&[node(3)], &[], stale + VIA_SETTLE_MS),
            Some(vec![node(3)]),
            "with no unasked dial for a while, it renames as one behind a NAT"
        );
        let mut unnamed = Relays::default();
        unnamed.dialed_in(0);
        assert_eq!(unnamed.rename_due(&[node(3)], &[node(4)], 0), None);
        assert_eq!(
            unnamed.rename_due(&[node(3)], &[node(4)], VIA_SETTLE_MS),
            Some(vec![node(3)]),
            "a broker dialed unasked that named none names its view once settled"
        );
        // Its first record named nobody (a running broker that joins a
        // mesh publishes before its inviter's connection is registered):
        // named at the next look, unless members dial it.
        let mut joining = Relays::default();
        assert!(joining.name_first(&[], &[], 0).is_empty());
        assert_eq!(
            joining.rename_due(&[], &[node(4), node(5)], 1_000),
            Some(vec![node(4)])
        );
        let mut restarted = Relays::naming(vec![node(7)]);
        assert_eq!(restarted.name_first(&[node(2)], &[], 0), vec![node(7)]);
        assert_eq!(restarted.rename_due(&[node(7), node(2)], &[], 0), None);
        assert_eq!(
            restarted.rename_due(&[node(7), node(2)], &[], VIA_SETTLE_MS),
            None,
            "a stored list is not widened after a restart"
        );
        assert_eq!(
            restarted.rename_due(&[node(2)], &[], 2 * VIA_SETTLE_MS),
            None
        );
        assert_eq!(
            restarted.rename_due(&[node(2)], &[], 3 * VIA_SETTLE_MS),
            Some(vec![node(2)]),
            "but replaced once out of the view"
        );
    }

    #[test]
    fn a_first_record_before_the_view_names_the_member_it_caught_up_from() {
        // Behind a NAT: reached through it at once, and the view's members
        // are named once the view settles.
        let mut relays = Relays::default();
        assert_eq!(
            relays.name_first(&[], &[node(9), node(8)], 300),
            vec![node(9)],
            "the member it caught up from alone"
        );
        assert_eq!(relays.rename_due(&[node(1), node(2)], &[], 1_000), None);
        assert_eq!(
            relays.rename_due(&[node(1), node(2)], &[], 1_000 + VIA_SETTLE_MS),
            Some(vec![node(1), node(2)]),
            "not in the view since it was named: replaced once settled"
        );
        // It entered the view meanwhile: kept, and the list widened once.
        let mut joined = Relays::default();
        assert_eq!(joined.name_first(&[], &[node(9)], 300), vec![node(9)]);
        assert_eq!(joined.rename_due(&[node(9)], &[], 1_000), None);
        assert_eq!(
            joined.rename_due(&[node(9), node(1)], &[], 1_000 + VIA_SETTLE_MS),
            Some(vec![node(9), node(1)])
        );
        // Dialed by members unasked: any relay reaches it, so the name
        // stays, and no record is written for it.
        let mut reachable = Relays::default();
        assert_eq!(reachable.name_first(&[], &[node(9)], 300), vec![node(9)]);
        reachable.dialed_in(500);
        assert_eq!(reachable.rename_due(&[node(1)], &[], 1_000), None);
        assert_eq!(
            reachable.rename_due(&[node(1)], &[], 1_000 + VIA_SETTLE_MS),
            None
        );
        assert_eq!(reachable.named(), vec![node(9)]);
        // Once the proof is stale, the name out of the view waits a while
        // again before it is replaced.
        let stale = 500 + DIALED_IN_FRESH_MS;
        assert_eq!(reachable.rename_due(&[node(1)], &[], stale), None);
        assert_eq!(
            reachable.rename_due(&[node(1)], &[], stale + VIA_SETTLE_MS),
            Some(vec![node(1)])
        );
    }

    fn admit_at(relays: &mut Relays, sender: u8, nonce: u64, now_ms: u64) -> Admit {
        relays.admit(&node(sender), (nonce, 0), now_ms, now_ms)
    }

    #[test]
    fn a_wall_clock_stepped_back_keeps_a_request_remembered() {
        let mut relays = Relays::default();
        let sent_ms = 1_800_000_000_000;
        assert!(matches!(
            relays.admit(&node(1), (7, sent_ms), 0, sent_ms),
            Admit::New
        ));
        // Long after on the monotonic clock, but the wall clock went back
        // to where `open` takes the request again: still remembered.
        let later = 10 * relay::RELAY_WINDOW_MS;
        assert!(matches!(
            relays.admit(&node(1), (7, sent_ms), later, sent_ms + 1_000),
            Admit::Busy(_)
        ));
        // Both clocks past it: forgotten.
        let wall = sent_ms + relay::RELAY_WINDOW_MS + 1;
        assert!(matches!(
            relays.admit(&node(1), (7, sent_ms), later, wall),
            Admit::New
        ));
    }

    #[test]
    fn a_relayed_request_is_answered_once_and_replays_get_that_answer() {
        let key = scout_mesh::sync::SigningKey::from_bytes(&[3; 32]);
        let how = relay::Seal {
            to: &node(9),
            nonce: 7,
            sent_ms: 0,
            answer: true,
        };
        let exchange = Exchange::start([4; 32], &key.verifying_key().to_bytes()).unwrap();
        let answer = relay::seal(&key, how, &exchange, &MeshFrame::FlightAck(None)).unwrap();
        let mut relays = Relays::default();
        assert!(matches!(admit_at(&mut relays, 1, 7, 0), Admit::New));
        assert!(
            matches!(admit_at(&mut relays, 1, 7, 1), Admit::Busy(_)),
            "under way"
        );
        relays.answered(&node(1), 7, &answer);
        assert!(matches!(admit_at(&mut relays, 1, 7, 2), Admit::Answered(a) if *a == answer));
        assert!(
            matches!(admit_at(&mut relays, 2, 7, 2), Admit::New),
            "another sender"
        );
        // Forgotten only after twice the window, when `open` refuses it.
        let later = 2 * relay::RELAY_WINDOW_MS;
        assert!(matches!(admit_at(&mut relays, 1, 7, later), Admit::New));
    }

    #[test]
    fn one_member_cannot_fill_the_replay_cache_for_others() {
        let mut relays = Relays::default();
        for nonce in 0..RELAYED_SEEN_PER_SENDER_MAX as u64 {
            assert!(matches!(admit_at(&mut relays, 1, nonce, 0), Admit::New));
        }
        assert!(matches!(
            admit_at(&mut relays, 1, u64::MAX, 0),
            Admit::Busy(_)
        ));
        assert!(matches!(admit_at(&mut relays, 2, 0, 0), Admit::New));
        for _ in 0..RELAY_PASSES_PER_SENDER_MAX {
            assert!(relays.start_passing(&node(1)));
        }
        assert!(!relays.start_passing(&node(1)));
        assert!(relays.start_passing(&node(2)));
        relays.stop_passing(&node(1));
        assert!(relays.start_passing(&node(1)));
    }

    #[test]
    fn a_member_is_probed_once_an_interval() {
        let mut relays = Relays::default();
        assert!(relays.probe_due(&node(1), 0));
        assert!(!relays.probe_due(&node(1), RELAY_PROBE_INTERVAL_MS - 1));
        assert!(relays.probe_due(&node(1), RELAY_PROBE_INTERVAL_MS));
        assert!(relays.probe_due(&node(2), 1));
    }
}
