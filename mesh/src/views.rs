//! Partial views of a large mesh: each broker keeps a small **active
//! view** (the peers it holds connections to and syncs with) and a larger
//! **passive view** (peers it knows of, to repair the active view from),
//! after HyParView (Leitão, Pereira, Rodrigues, 2007). Connections per
//! broker stay at [`ACTIVE_VIEW_MAX`] however many brokers the mesh has,
//! and the active views form one connected graph that survives the loss
//! of many brokers at once: registry changes spread along it.
//!
//! - A newcomer sends `Join` to any member it reaches; the member takes it
//!   into its active view and sends a `ForwardJoin` on a random walk of
//!   [`ACTIVE_RANDOM_WALK_LENGTH`] steps through the active views: the
//!   broker where the walk ends takes the newcomer into its active view,
//!   and one [`PASSIVE_RANDOM_WALK_LENGTH`] steps before the end into its
//!   passive view.
//! - Active views are symmetric: a broker that takes a peer in tells it
//!   (`Neighbor`, answered by `NeighborReply`), and one that drops a peer
//!   to make room tells it (`Disconnect`); the peer moves to the passive
//!   view on both sides.
//! - A peer that fails ([`Views::handle_peer_down`]) leaves the active
//!   view; a passive peer is asked to take its place (with high priority,
//!   which cannot be refused, when the active view is empty). A broker
//!   below the low mark ([`ViewSizes::active_low`]) also asks one passive
//!   peer with high priority once every [`REPAIR_INTERVAL_MS`], so that it gets in
//!   when all its other peers are full (the simulator saw views of 4 among
//!   9 brokers leave one with a single peer for good, and the mesh never
//!   formed). One such ask an interval, never from the repair a
//!   `Disconnect` starts: all asks at high priority handed the deficit
//!   from broker to broker without end.
//! - Every [`SHUFFLE_INTERVAL_MS`] a broker sends a few ids it knows on a
//!   random walk (`Shuffle`), and the broker where it ends answers the
//!   neighbour the walk came from with as many of its own (over a
//!   connection both hold, where HyParView answers the origin over a new
//!   one): passive views keep mixing, so repair finds live peers.
//!
//! Admission gates all of it: a peer for which the `may_join` predicate
//! given to [`Views::new`] says no (not an admitted member) never enters
//! either view, whoever names it, and its messages are ignored. Lists from
//! the network are cut to [`SHUFFLE_IDS_MAX`].
//!
//! Pure: no IO, no clock (time comes in as `now_ms`), randomness from a
//! seeded generator, outputs through [`Views::poll_output`]. The shell
//! sends [`ViewMessage`]s over its connections, opens one to every active
//! peer, and tells the replica which peers to sync with.

use std::collections::{BTreeSet, VecDeque};

use crate::rng::SplitMix64;

/// Most peers in the active view of a broker (the default of
/// [`ViewSizes`]): the connections a broker holds and the peers it pushes
/// changes to. HyParView uses log(N) + 1; 7 covers meshes of about 1,000
/// brokers with room, and keeps a broker's connections and its
/// background traffic constant past that.
pub const ACTIVE_VIEW_MAX: usize = 7;

/// Most peers in the passive view by default: enough to repair the active
/// view after half the mesh failed at once (HyParView's passive view is a
/// few times the active one).
pub const PASSIVE_VIEW_MAX: usize = 30;

/// The smallest active view [`ViewSizes`] accepts. Smaller ones split the
/// graph of active views: over 200 seeds of this module's test world,
/// views of 3 left 7 brokers in two groups 5 times and 60 brokers 66
/// times; views of 4 split 60 brokers once in 200 seeds of 20 brokers, and
/// never 9 or 60; views of 2 split 20 brokers every time.
pub const ACTIVE_VIEW_MIN: usize = 4;

/// Peers [`Views::prefer`] takes at once, at most (a node record names
/// at most three relays).
pub const PREFERRED_MAX: usize = 3;

/// The largest active view [`ViewSizes`] accepts: every active peer is a
/// connection held open.
pub const ACTIVE_VIEW_LIMIT: usize = 16;

/// The largest passive view [`ViewSizes`] accepts.
pub const PASSIVE_VIEW_LIMIT: usize = 128;

/// How large a broker's views are. Brokers run with [`ViewSizes::default`]
/// (7 and 30); smaller views make a small mesh a partial one, which is how
/// the simulator tests partial views with a handful of brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewSizes {
    active: usize,
    passive: usize,
}

impl Default for ViewSizes {
    fn default() -> ViewSizes {
        ViewSizes {
            active: ACTIVE_VIEW_MAX,
            passive: PASSIVE_VIEW_MAX,
        }
    }
}

impl ViewSizes {
    /// Views of at most `active` and `passive` peers: `active` in
    /// [`ACTIVE_VIEW_MIN`]..=[`ACTIVE_VIEW_LIMIT`], `passive` in
    /// [`SHUFFLE_IDS_MAX`]..=[`PASSIVE_VIEW_LIMIT`] (a shuffle's ids fit).
    pub fn new(active: usize, passive: usize) -> Result<ViewSizes, String> {
        if !(ACTIVE_VIEW_MIN..=ACTIVE_VIEW_LIMIT).contains(&active) {
            return Err(format!(
                "an active view holds {ACTIVE_VIEW_MIN} to {ACTIVE_VIEW_LIMIT} peers, not {active}"
            ));
        }
        if !(SHUFFLE_IDS_MAX..=PASSIVE_VIEW_LIMIT).contains(&passive) {
            return Err(format!(
                "a passive view holds {SHUFFLE_IDS_MAX} to {PASSIVE_VIEW_LIMIT} peers, not {passive}"
            ));
        }
        Ok(ViewSizes { active, passive })
    }

    /// The most active peers.
    pub fn active(self) -> usize {
        self.active
    }

    /// The most passive peers.
    pub fn passive(self) -> usize {
        self.passive
    }

    /// Below this many active peers a broker keeps asking passive peers to
    /// join its view every [`REPAIR_INTERVAL_MS`]; at or above it, only a failure
    /// makes it ask (see [`Views::handle_timeout`]).
    pub fn active_low(self) -> usize {
        self.active - 2
    }
}

/// Steps of a join's random walk: long enough that the newcomer lands far
/// from its contact in a mesh of thousands (log of the size, roughly).
pub const ACTIVE_RANDOM_WALK_LENGTH: u8 = 6;

/// The step of the walk at which the newcomer is put into a passive view.
pub const PASSIVE_RANDOM_WALK_LENGTH: u8 = 3;

/// Most ids in one shuffle (and in any list of ids a peer sends): the
/// sender, 3 of its active peers and 4 of its passive ones.
pub const SHUFFLE_IDS_MAX: usize = 8;

/// Active peers named in a shuffle.
const SHUFFLE_ACTIVE_IDS: usize = 3;

/// Passive peers named in a shuffle.
const SHUFFLE_PASSIVE_IDS: usize = 4;

/// How often a broker looks at its active view, in milliseconds: asks
/// unanswered since the last look are dropped, and a view below the low
/// mark asks passive peers to fill it. Often enough that repair after a
/// failure takes seconds; a look at a healthy view sends nothing.
pub const REPAIR_INTERVAL_MS: u64 = 10_000;

/// How often a broker shuffles, in milliseconds. A shuffle is a walk of
/// [`ACTIVE_RANDOM_WALK_LENGTH`] requests and an answer: the largest part
/// of what an idle mesh sends. Passive views only need to keep mixing
/// faster than brokers come and go; repair does not wait for a shuffle.
pub const SHUFFLE_INTERVAL_MS: u64 = 30_000;

/// Most outputs waiting to be drained. The shell drains after every
/// input, and one input makes at most a few outputs per active peer; a
/// full queue drops the oldest message (the next shuffle repairs).
pub const VIEW_OUTPUT_QUEUE_MAX: usize = 256;

const _: () = assert!(PASSIVE_RANDOM_WALK_LENGTH < ACTIVE_RANDOM_WALK_LENGTH);
const _: () = assert!(1 + SHUFFLE_ACTIVE_IDS + SHUFFLE_PASSIVE_IDS <= SHUFFLE_IDS_MAX);
const _: () = assert!(ACTIVE_VIEW_MIN <= ACTIVE_VIEW_MAX && ACTIVE_VIEW_MAX <= ACTIVE_VIEW_LIMIT);
const _: () = assert!(ACTIVE_VIEW_MIN > 2);
const _: () =
    assert!(SHUFFLE_IDS_MAX <= PASSIVE_VIEW_MAX && PASSIVE_VIEW_MAX <= PASSIVE_VIEW_LIMIT);
const _: () = assert!(VIEW_OUTPUT_QUEUE_MAX >= 4 * (ACTIVE_VIEW_LIMIT + 2));

/// What brokers send each other about their views (on the wire as
/// [`crate::wire::MeshFrame::View`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ViewMessage<P> {
    /// A newcomer asks the receiver to take it in.
    Join,
    /// A join on its random walk: `joiner` asks to be taken in.
    ForwardJoin {
        /// The newcomer.
        joiner: P,
        /// Steps left.
        ttl: u8,
    },
    /// The sender asks to enter the receiver's active view; a high
    /// priority ask is never refused.
    Neighbor {
        /// The sender's active view is empty, or it is below the low mark
        /// (one such ask every [`REPAIR_INTERVAL_MS`]).
        high_priority: bool,
    },
    /// The answer to `Neighbor`.
    NeighborReply {
        /// The receiver took the sender in (and the sender takes it in).
        accepted: bool,
    },
    /// The sender dropped the receiver from its active view.
    Disconnect,
    /// A shuffle on its random walk.
    Shuffle {
        /// The broker that started it, who gets the reply.
        origin: P,
        /// Steps left.
        ttl: u8,
        /// Ids the origin knows (at most [`SHUFFLE_IDS_MAX`]).
        ids: Vec<P>,
    },
    /// The answer to a shuffle: ids the answering broker knows.
    ShuffleReply {
        /// At most [`SHUFFLE_IDS_MAX`].
        ids: Vec<P>,
    },
}

impl<P> ViewMessage<P> {
    /// The ids the message lists, if any (for limits).
    pub fn ids(&self) -> &[P] {
        match self {
            ViewMessage::Shuffle { ids, .. } | ViewMessage::ShuffleReply { ids } => ids,
            _ => &[],
        }
    }
}

/// What the views ask the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewOutput<P> {
    /// Send `message` to `to` (connecting first if need be).
    Send {
        /// The receiver.
        to: P,
        /// The message.
        message: ViewMessage<P>,
    },
    /// `peer` entered the active view: keep a connection and sync with it.
    NeighborUp(P),
    /// `peer` left the active view: stop syncing with it; its connection
    /// may close once nothing else uses it.
    NeighborDown(P),
}

/// Whether a peer may enter a view (an admitted member of the mesh).
pub type MayJoin<P> = Box<dyn Fn(&P) -> bool + Send + Sync>;

/// The partial views of one broker.
pub struct Views<P> {
    me: P,
    active: BTreeSet<P>,
    passive: BTreeSet<P>,
    /// Peers asked to become neighbours, not answered yet.
    asked: BTreeSet<P>,
    /// Peers the next fill asks first, with high priority (at most
    /// [`PREFERRED_MAX`]); forgotten once asked.
    preferred: BTreeSet<P>,
    may_join: MayJoin<P>,
    sizes: ViewSizes,
    rng: SplitMix64,
    outputs: VecDeque<ViewOutput<P>>,
    next_repair_ms: Option<u64>,
    next_shuffle_ms: Option<u64>,
}

impl<P: std::fmt::Debug> std::fmt::Debug for Views<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views")
            .field("me", &self.me)
            .field("active", &self.active)
            .field("passive", &self.passive)
            .finish_non_exhaustive()
    }
}

impl<P: Ord + Clone> Views<P> {
    /// Empty views of broker `me` of the default sizes; `seed` fixes its
    /// random choices.
    pub fn new(me: P, seed: u64, may_join: MayJoin<P>) -> Views<P> {
        Views::with_sizes(me, seed, may_join, ViewSizes::default())
    }

    /// [`Views::new`] with views of `sizes`.
    pub fn with_sizes(me: P, seed: u64, may_join: MayJoin<P>, sizes: ViewSizes) -> Views<P> {
        Views {
            me,
            active: BTreeSet::new(),
            passive: BTreeSet::new(),
            asked: BTreeSet::new(),
            preferred: BTreeSet::new(),
            may_join,
            sizes,
            rng: SplitMix64::new(seed),
            outputs: VecDeque::new(),
            next_repair_ms: None,
            next_shuffle_ms: None,
        }
    }

    /// The active view.
    pub fn active(&self) -> &BTreeSet<P> {
        &self.active
    }

    /// The passive view.
    pub fn passive(&self) -> &BTreeSet<P> {
        &self.passive
    }

    /// A random active peer (for anti-entropy), if there is one.
    pub fn random_active(&mut self) -> Option<P> {
        self.random_of(&self.active.clone(), None)
    }

    /// Joins the mesh through `contact` (a member this broker reached).
    pub fn join(&mut self, now_ms: u64, contact: P) {
        self.schedule(now_ms);
        if !self.admits(&contact) {
            return;
        }
        self.add_active(contact.clone());
        self.send(contact, ViewMessage::Join);
    }

    /// Learns of peers (a seed list, discovery, the registry's members)
    /// without connecting to them: they fill the passive view, and the
    /// active view is filled from it.
    pub fn learn(&mut self, now_ms: u64, peers: impl IntoIterator<Item = P>) {
        self.schedule(now_ms);
        let peers: Vec<P> = peers.into_iter().collect();
        self.integrate(&peers);
        self.fill();
    }

    /// Asks `peers` first, with high priority, when the active view next
    /// fills (at most [`PREFERRED_MAX`] of them, admitted ones only): a
    /// restarted broker takes back the neighbours its node record names
    /// as its relays, so the record stays true without a registry write.
    /// Each is asked once.
    pub fn prefer(&mut self, peers: impl IntoIterator<Item = P>) {
        for peer in peers.into_iter().take(PREFERRED_MAX) {
            if peer == self.me || !self.admits(&peer) {
                continue;
            }
            self.add_passive(peer.clone());
            self.preferred.insert(peer);
        }
    }

    /// A message from `from`.
    pub fn handle_message(&mut self, now_ms: u64, from: P, message: ViewMessage<P>) {
        self.schedule(now_ms);
        if from == self.me || !self.admits(&from) {
            return;
        }
        match message {
            // A peer already in the active view has joined: a repeated
            // Join would only start more walks (one message from a
            // hostile member must not cost the mesh dozens).
            ViewMessage::Join if self.active.contains(&from) => {}
            ViewMessage::Join => self.on_join(from),
            ViewMessage::ForwardJoin { joiner, ttl } => self.on_forward_join(from, joiner, ttl),
            ViewMessage::Neighbor { high_priority } => {
                let accepted = high_priority || self.active.len() < self.sizes.active;
                if accepted {
                    self.add_active(from.clone());
                }
                self.send(from, ViewMessage::NeighborReply { accepted });
            }
            ViewMessage::NeighborReply { accepted } => {
                let was_asked = self.asked.remove(&from);
                let room = self.active.len() < self.sizes.active;
                if accepted && (was_asked || room) {
                    // Taken in after this broker gave up on the ask (it
                    // forgot the peer, or an interval passed, as when the
                    // ask waited for a dial): kept while there is room,
                    // since the peer may have dropped one of its own for
                    // it.
                    self.add_active(from);
                } else if accepted && !self.active.contains(&from) {
                    // No room: undone there, so that views stay symmetric.
                    self.send(from, ViewMessage::Disconnect);
                }
            }
            ViewMessage::Disconnect => {
                if self.active.remove(&from) {
                    self.push(ViewOutput::NeighborDown(from.clone()));
                    self.add_passive(from);
                    self.fill();
                }
            }
            ViewMessage::Shuffle { origin, ttl, ids } => self.on_shuffle(from, origin, ttl, ids),
            ViewMessage::ShuffleReply { ids } => self.integrate(&ids),
        }
    }

    /// `peer` is unreachable (its connection failed): it leaves both
    /// views, and a passive peer is asked to take its place.
    pub fn handle_peer_down(&mut self, now_ms: u64, peer: &P) {
        self.schedule(now_ms);
        self.passive.remove(peer);
        self.asked.remove(peer);
        if self.active.remove(peer) {
            self.push(ViewOutput::NeighborDown(peer.clone()));
        }
        self.fill();
    }

    /// `peer` is no longer a member (its admission was revoked): it leaves
    /// both views at once.
    pub fn handle_revoked(&mut self, now_ms: u64, peer: &P) {
        self.handle_peer_down(now_ms, peer);
    }

    /// Time passed: fills the active view and shuffles, each when due.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.next_repair_ms.is_none() || self.next_shuffle_ms.is_none() {
            self.schedule(now_ms);
            return;
        }
        if is_due(self.next_repair_ms, now_ms, REPAIR_INTERVAL_MS) {
            self.next_repair_ms = Some(now_ms + self.jittered(REPAIR_INTERVAL_MS));
            // Asks unanswered for a whole interval were lost (or their peer
            // is): ask others, while the view is short of the lower bound. A
            // view between it and the full size stays as it is: its peers may
            // all be full, and asking again every interval would open a
            // connection to a refusing peer each time, an idle mesh's largest
            // cost. A failure still refills the view to the full size.
            self.asked.clear();
            if self.active.len() < self.sizes.active_low() {
                self.fill_asking(true);
            }
        }
        if is_due(self.next_shuffle_ms, now_ms, SHUFFLE_INTERVAL_MS) {
            self.next_shuffle_ms = Some(now_ms + self.jittered(SHUFFLE_INTERVAL_MS));
            self.shuffle();
        }
    }

    /// How large the views may grow.
    pub fn sizes(&self) -> ViewSizes {
        self.sizes
    }

    /// When [`Views::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.next_repair_ms
            .into_iter()
            .chain(self.next_shuffle_ms)
            .min()
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<ViewOutput<P>> {
        self.outputs.pop_front()
    }

    fn on_join(&mut self, joiner: P) {
        self.add_active(joiner.clone());
        let others: Vec<P> = self
            .active
            .iter()
            .filter(|p| **p != joiner)
            .cloned()
            .collect();
        for peer in others {
            self.send(
                peer,
                ViewMessage::ForwardJoin {
                    joiner: joiner.clone(),
                    ttl: ACTIVE_RANDOM_WALK_LENGTH,
                },
            );
        }
    }

    fn on_forward_join(&mut self, from: P, joiner: P, ttl: u8) {
        if joiner == self.me || !self.admits(&joiner) {
            return;
        }
        let ttl = ttl.min(ACTIVE_RANDOM_WALK_LENGTH);
        if ttl == 0 || self.active.len() <= 1 {
            if !self.active.contains(&joiner) {
                self.add_active(joiner.clone());
                self.send(
                    joiner,
                    ViewMessage::Neighbor {
                        high_priority: true,
                    },
                );
            }
            return;
        }
        if ttl == PASSIVE_RANDOM_WALK_LENGTH {
            self.add_passive(joiner.clone());
        }
        let exclude = [from, joiner.clone()];
        match self.random_of(&self.active.clone(), Some(&exclude)) {
            Some(next) => self.send(
                next,
                ViewMessage::ForwardJoin {
                    joiner,
                    ttl: ttl - 1,
                },
            ),
            None => {
                self.add_active(joiner.clone());
                self.send(
                    joiner,
                    ViewMessage::Neighbor {
                        high_priority: true,
                    },
                );
            }
        }
    }

    fn on_shuffle(&mut self, from: P, origin: P, ttl: u8, ids: Vec<P>) {
        let ids: Vec<P> = ids.into_iter().take(SHUFFLE_IDS_MAX).collect();
        if origin == self.me || !self.admits(&origin) {
            return;
        }
        let ttl = ttl.min(ACTIVE_RANDOM_WALK_LENGTH);
        if ttl > 1 && self.active.len() > 1 {
            let exclude = [from.clone(), origin.clone()];
            if let Some(next) = self.random_of(&self.active.clone(), Some(&exclude)) {
                self.send(
                    next,
                    ViewMessage::Shuffle {
                        origin,
                        ttl: ttl - 1,
                        ids,
                    },
                );
                return;
            }
        }
        // The answer goes back one hop, to the neighbour the walk came
        // from, not to its origin: the origin is rarely a neighbour here,
        // and answering it would open a connection (a handshake) for every
        // shuffle of every broker, the largest cost of an idle mesh. The
        // origin's ids still spread; the neighbour mixes in this broker's.
        let reply = self.sample(&self.passive.clone(), ids.len().min(SHUFFLE_IDS_MAX));
        self.send(from, ViewMessage::ShuffleReply { ids: reply });
        self.integrate(&ids);
    }

    fn shuffle(&mut self) {
        let Some(target) = self.random_of(&self.active.clone(), None) else {
            return;
        };
        let mut ids = vec![self.me.clone()];
        ids.extend(self.sample(&self.active.clone(), SHUFFLE_ACTIVE_IDS));
        ids.extend(self.sample(&self.passive.clone(), SHUFFLE_PASSIVE_IDS));
        ids.retain(|id| *id != target || *id == self.me);
        self.send(
            target,
            ViewMessage::Shuffle {
                origin: self.me.clone(),
                ttl: ACTIVE_RANDOM_WALK_LENGTH,
                ids,
            },
        );
    }

    /// Asks passive peers to fill the active view, one ask at a time per
    /// missing place (a high priority ask when the view is empty).
    fn fill(&mut self) {
        self.fill_asking(false);
    }

    /// [`Views::fill`], where `one_urgent` makes the first ask one of high
    /// priority: once an interval below the low mark, so that a broker
    /// whose other peers are all full still gets in (the peer taking it
    /// drops one of its own, which keeps all but one of its peers). One
    /// such ask an interval, and never from the repair a `Disconnect`
    /// starts: asking all of them with high priority, or at once, made
    /// the simulated views hand a deficit around without end.
    fn fill_asking(&mut self, one_urgent: bool) {
        let missing = self
            .sizes
            .active
            .saturating_sub(self.active.len() + self.asked.len());
        if missing == 0 {
            // Full: the preferred ones are not needed (and a high-priority
            // ask much later would push another broker's neighbour out).
            self.preferred.clear();
            return;
        }
        let mut candidates: BTreeSet<P> = self
            .passive
            .iter()
            .filter(|peer| !self.asked.contains(*peer))
            .cloned()
            .collect();
        // Preferred ones no longer in the passive view (or asked) are
        // dropped; those past the places missing wait for the next fill.
        self.preferred.retain(|peer| candidates.contains(peer));
        let preferred: Vec<P> = self.preferred.iter().take(missing).cloned().collect();
        for peer in &preferred {
            self.preferred.remove(peer);
            candidates.remove(peer);
        }
        let others = self.sample(&candidates, missing - preferred.len());
        let mut urgent = one_urgent;
        for peer in preferred {
            self.asked.insert(peer.clone());
            self.send(
                peer,
                ViewMessage::Neighbor {
                    high_priority: true,
                },
            );
        }
        for peer in others {
            let high_priority = self.active.is_empty() || urgent;
            urgent = false;
            self.asked.insert(peer.clone());
            self.send(peer, ViewMessage::Neighbor { high_priority });
        }
    }

    /// Puts ids a peer sent into the passive view (unknown, admitted ones;
    /// random passive peers make room).
    fn integrate(&mut self, ids: &[P]) {
        for id in ids.iter().take(SHUFFLE_IDS_MAX * 4) {
            if *id == self.me || self.active.contains(id) || !self.admits(id) {
                continue;
            }
            self.add_passive(id.clone());
        }
    }

    fn add_active(&mut self, peer: P) {
        if peer == self.me || self.active.contains(&peer) || !self.admits(&peer) {
            return;
        }
        self.passive.remove(&peer);
        self.asked.remove(&peer);
        if self.active.len() >= self.sizes.active {
            let exclude = [peer.clone()];
            if let Some(dropped) = self.random_of(&self.active.clone(), Some(&exclude)) {
                self.active.remove(&dropped);
                self.push(ViewOutput::NeighborDown(dropped.clone()));
                self.send(dropped.clone(), ViewMessage::Disconnect);
                self.add_passive(dropped);
            }
        }
        self.active.insert(peer.clone());
        self.push(ViewOutput::NeighborUp(peer));
    }

    fn add_passive(&mut self, peer: P) {
        if peer == self.me || self.active.contains(&peer) || self.passive.contains(&peer) {
            return;
        }
        // Preferred peers are not pushed out to make room.
        let keep: Vec<P> = self.preferred.iter().cloned().collect();
        if self.passive.len() >= self.sizes.passive
            && let Some(dropped) = self.random_of(&self.passive.clone(), Some(&keep))
        {
            self.passive.remove(&dropped);
            self.asked.remove(&dropped);
        }
        self.passive.insert(peer);
    }

    fn admits(&self, peer: &P) -> bool {
        (self.may_join)(peer)
    }

    fn schedule(&mut self, now_ms: u64) {
        if self.next_repair_ms.is_none() {
            self.next_repair_ms = Some(now_ms + self.jittered(REPAIR_INTERVAL_MS));
        }
        if self.next_shuffle_ms.is_none() {
            self.next_shuffle_ms = Some(now_ms + self.jittered(SHUFFLE_INTERVAL_MS));
        }
    }

    /// `interval` spread by up to a fifth either way, so brokers that
    /// started together do not repair or shuffle in lockstep.
    fn jittered(&mut self, interval: u64) -> u64 {
        let spread = interval / 5;
        interval - spread + self.rng.next_u64() % (2 * spread + 1)
    }

    fn random_of(&mut self, set: &BTreeSet<P>, exclude: Option<&[P]>) -> Option<P> {
        let candidates: Vec<&P> = set
            .iter()
            .filter(|peer| exclude.is_none_or(|exclude| !exclude.contains(peer)))
            .collect();
        let idx = self.rng.below(candidates.len());
        candidates.get(idx).map(|peer| (*peer).clone())
    }

    /// Up to `n` distinct random members of `set`.
    fn sample(&mut self, set: &BTreeSet<P>, n: usize) -> Vec<P> {
        let mut pool: Vec<P> = set.iter().cloned().collect();
        let mut picked = Vec::with_capacity(n.min(pool.len()));
        while picked.len() < n && !pool.is_empty() {
            let idx = self.rng.below(pool.len());
            picked.push(pool.swap_remove(idx));
        }
        picked
    }

    fn send(&mut self, to: P, message: ViewMessage<P>) {
        self.push(ViewOutput::Send { to, message });
    }

    fn push(&mut self, output: ViewOutput<P>) {
        if self.outputs.len() >= VIEW_OUTPUT_QUEUE_MAX
            && let Some(idx) = self
                .outputs
                .iter()
                .position(|output| matches!(output, ViewOutput::Send { .. }))
        {
            self.outputs.remove(idx);
        }
        self.outputs.push_back(output);
    }
}

/// Whether a deadline of a timer of `interval` is due at `now_ms`. One
/// further away than the interval (and its jitter) was set before the
/// clock went back: due now rather than after, as long as the clock moved.
fn is_due(deadline: Option<u64>, now_ms: u64, interval: u64) -> bool {
    deadline.is_some_and(|at| now_ms >= at || at > now_ms.saturating_add(interval + interval / 5))
}

#[cfg(test)]
mod tests;
