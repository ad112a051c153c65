//! The simulated network: virtual hosts with addresses, directed links with
//! rules, partitions (symmetric or one-way), held links, and crashed hosts.
//!
//! Code map:
//! - this file: [`Network`] (hosts, link rules, partitions, holds, the
//!   delivery queue and its driver task, counters and the schedule digest).
//! - [`socket`]: [`SimSocket`], the `quinn::AsyncUdpSocket` a real quinn
//!   endpoint runs on.
//! - [`link`]: [`LinkRule`] and [`LinkPatch`], what a link does to a datagram.
//!
//! Time is tokio's (paused) clock: a datagram sent at `t` with delay `d` is
//! handed to its destination socket by the driver task at `t + d`, so the
//! simulated clock drives every delivery. Each directed link draws loss,
//! delay, reordering and duplication from its own seeded stream, and every
//! datagram event (sent, delivered, dropped with its reason, held,
//! duplicated) is folded into a digest: two runs with one seed must end
//! with the same digest.

pub mod link;
pub mod socket;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use link::{LatencyDistribution, LatencyPer, LinkPatch, LinkRule};
pub use socket::SimSocket;

use crate::seeds;

/// A set of hosts, by index.
pub type HostSet = BTreeSet<usize>;

/// Why a datagram did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The link lost it (its `loss` probability).
    Loss,
    /// A partition blocks the link (at send or at delivery).
    Partition,
    /// The sender or the receiver is crashed.
    HostDown,
    /// Larger than the link's MTU.
    Mtu,
    /// The link had `queue_max` datagrams in flight already.
    QueueFull,
    /// The receiver's socket queue was full.
    ReceiveQueueFull,
    /// No host has the destination address.
    NoRoute,
    /// The receiver is behind a NAT that has no binding for the sender:
    /// the receiver has not sent to it within [`NAT_BINDING`].
    Nat,
}

impl DropReason {
    /// The word used in summaries and `results.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Loss => "loss",
            DropReason::Partition => "partition",
            DropReason::HostDown => "host_down",
            DropReason::Mtu => "mtu",
            DropReason::QueueFull => "queue_full",
            DropReason::ReceiveQueueFull => "receive_queue_full",
            DropReason::NoRoute => "no_route",
            DropReason::Nat => "nat",
        }
    }
}

/// Counters of one host's traffic.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HostTraffic {
    /// Datagrams its sockets sent.
    pub sent: u64,
    /// Bytes its sockets sent.
    pub sent_bytes: u64,
    /// Datagrams delivered to its sockets.
    pub received: u64,
    /// Bytes delivered to its sockets.
    pub received_bytes: u64,
}

/// Counters of the whole network.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetStats {
    /// Datagrams sent by every socket.
    pub sent: u64,
    /// Datagrams delivered to a socket (duplicates included).
    pub delivered: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Datagrams held on a held link at some point.
    pub held: u64,
    /// Dropped datagrams by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Bytes delivered.
    pub delivered_bytes: u64,
    /// Per host, by index.
    pub hosts: Vec<HostTraffic>,
}

impl NetStats {
    /// Every dropped datagram.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// The digest of the packet schedule so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScheduleDigest {
    /// Datagram events folded in.
    pub events: u64,
    /// FNV-1a over every event (kind, reason, time in ns, hosts, size, id).
    pub hash: u64,
}

impl std::fmt::Display for ScheduleDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x} ({} events)", self.hash, self.events)
    }
}

/// Link rules: a default, and patches laid over it for some directed pairs.
#[derive(Debug, Clone, Default)]
pub struct LinkTable {
    /// What every link does unless a patch says otherwise.
    pub default: LinkRule,
    /// Applied in order to the links from a host of the first set to a host
    /// of the second.
    pub patches: Vec<(HostSet, HostSet, LinkPatch)>,
}

impl LinkTable {
    fn rule(&self, from: usize, to: usize) -> LinkRule {
        let mut rule = self.default.clone();
        for (sources, destinations, patch) in &self.patches {
            if sources.contains(&from) && destinations.contains(&to) {
                patch.apply(&mut rule);
            }
        }
        rule
    }
}

/// The simulated network. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    state: Mutex<State>,
    wake: Notify,
    start: Instant,
}

struct Host {
    addr: SocketAddr,
    socket: Option<Arc<SimSocket>>,
    incarnation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Sent = 1,
    Delivered = 2,
    Dropped = 3,
    Held = 4,
    Duplicated = 5,
}

struct Datagram {
    id: u64,
    from: usize,
    to: usize,
    source: SocketAddr,
    payload: Vec<u8>,
}

struct Scheduled {
    at: Instant,
    order: u64,
    datagram: Datagram,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

struct State {
    seed: u64,
    hosts: Vec<Host>,
    by_addr: HashMap<SocketAddr, usize>,
    base: LinkTable,
    links: LinkTable,
    rules: BTreeMap<(usize, usize), LinkRule>,
    /// The latency of each link whose rule draws it once per link
    /// ([`LatencyPer::Link`]), drawn with the rule and forgotten with it.
    link_latency: BTreeMap<(usize, usize), Duration>,
    rngs: BTreeMap<(usize, usize), StdRng>,
    blocked: BTreeSet<(usize, usize)>,
    /// Hosts behind a NAT, each with when it last sent to each peer.
    nat: BTreeMap<usize, BTreeMap<usize, Instant>>,
    holding: BTreeSet<(usize, usize)>,
    held: BTreeMap<(usize, usize), VecDeque<Datagram>>,
    in_flight: BTreeMap<(usize, usize), usize>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_id: u64,
    next_order: u64,
    digest: ScheduleDigest,
    stats: NetStats,
    start: Instant,
}

/// How long a NAT keeps a binding after its host last sent to a peer. Home
/// routers keep UDP bindings for 30 s to a few minutes; this is the short
/// end, and QUIC's keep-alives (every few seconds, from the dialer) keep a
/// connection the NATed host opened well inside it.
pub const NAT_BINDING: Duration = Duration::from_secs(30);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl State {
    fn record(
        &mut self,
        kind: EventKind,
        reason: Option<DropReason>,
        datagram: (usize, usize, usize, u64),
        now: Instant,
    ) {
        let (from, to, len, id) = datagram;
        let t_ns = u64::try_from(now.duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        let reason_code = reason.map_or(0u8, |reason| reason as u8 + 1);
        let mut hash = self.digest.hash;
        let fields = [
            kind as u64,
            u64::from(reason_code),
            t_ns,
            from as u64,
            to as u64,
            len as u64,
            id,
        ];
        for field in fields {
            for byte in field.to_le_bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(FNV_PRIME);
            }
        }
        self.digest = ScheduleDigest {
            events: self.digest.events + 1,
            hash,
        };
        match kind {
            EventKind::Sent => {
                self.stats.sent += 1;
                self.stats.sent_bytes += len as u64;
                let host = &mut self.stats.hosts[from];
                host.sent += 1;
                host.sent_bytes += len as u64;
            }
            EventKind::Delivered => {
                self.stats.delivered += 1;
                self.stats.delivered_bytes += len as u64;
                let host = &mut self.stats.hosts[to];
                host.received += 1;
                host.received_bytes += len as u64;
            }
            EventKind::Dropped => {
                let reason = reason.map_or("unknown", DropReason::as_str);
                *self.stats.dropped.entry(reason).or_default() += 1;
            }
            EventKind::Held => self.stats.held += 1,
            EventKind::Duplicated => self.stats.duplicated += 1,
        }
    }

    fn rule(&mut self, from: usize, to: usize) -> LinkRule {
        if let Some(rule) = self.rules.get(&(from, to)) {
            return rule.clone();
        }
        let rule = self.links.rule(from, to);
        self.rules.insert((from, to), rule.clone());
        rule
    }

    /// The latency of a link whose rule draws it once per link: the same
    /// both ways, from its own stream, so it does not move other draws.
    fn link_latency(&mut self, from: usize, to: usize, rule: &LinkRule) -> Duration {
        let seed = self.seed;
        let n_hosts = self.hosts.len() as u64;
        *self.link_latency.entry((from, to)).or_insert_with(|| {
            let (low, high) = (from.min(to) as u64, from.max(to) as u64);
            let mut rng = seeds::rng(seed, "link-latency", low * n_hosts + high);
            Duration::from_secs_f64(rule.draw_latency_ms(&mut rng) / 1000.0)
        })
    }

    fn rng(&mut self, from: usize, to: usize) -> &mut StdRng {
        let seed = self.seed;
        let n_hosts = self.hosts.len() as u64;
        self.rngs
            .entry((from, to))
            .or_insert_with(|| seeds::rng(seed, "link", from as u64 * n_hosts + to as u64))
    }

    /// Puts a datagram on the wire: draws loss, delay and duplication from
    /// the link's stream. Returns whether the earliest deadline moved.
    fn transmit(&mut self, datagram: Datagram, now: Instant) -> bool {
        let (from, to) = (datagram.from, datagram.to);
        let rule = self.rule(from, to);
        let per_link =
            (rule.latency_per == LatencyPer::Link).then(|| self.link_latency(from, to, &rule));
        let rng = self.rng(from, to);
        let lost = link::chance(rng, rule.loss);
        let draw_delay = |rng: &mut StdRng| match per_link {
            Some(latency) => latency + rule.draw_reorder(rng),
            None => rule.draw_delay(rng),
        };
        let delay = draw_delay(rng);
        let duplicated = link::chance(rng, rule.duplicate);
        let duplicate_delay = draw_delay(rng);
        let event = (from, to, datagram.payload.len(), datagram.id);
        if lost {
            self.record(EventKind::Dropped, Some(DropReason::Loss), event, now);
            return false;
        }
        let in_flight = self.in_flight.get(&(from, to)).copied().unwrap_or(0);
        if in_flight >= rule.queue_max {
            self.record(EventKind::Dropped, Some(DropReason::QueueFull), event, now);
            return false;
        }
        let mut moved = false;
        if duplicated && in_flight + 1 < rule.queue_max {
            self.record(EventKind::Duplicated, None, event, now);
            let copy = Datagram {
                id: datagram.id,
                from,
                to,
                source: datagram.source,
                payload: datagram.payload.clone(),
            };
            moved |= self.enqueue(copy, now + duplicate_delay);
        }
        moved |= self.enqueue(datagram, now + delay);
        moved
    }

    fn enqueue(&mut self, datagram: Datagram, at: Instant) -> bool {
        let earliest = self.queue.peek().map(|Reverse(first)| first.at);
        *self
            .in_flight
            .entry((datagram.from, datagram.to))
            .or_default() += 1;
        let order = self.next_order;
        self.next_order += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            order,
            datagram,
        }));
        earliest.is_none_or(|earliest| at < earliest)
    }

    /// Whether `to`'s NAT, if it has one, lets a datagram from `from` in:
    /// only when `to` sent to `from` within [`NAT_BINDING`].
    fn nat_admits(&self, from: usize, to: usize, now: Instant) -> bool {
        self.nat.get(&to).is_none_or(|bindings| {
            bindings
                .get(&from)
                .is_some_and(|sent| now.saturating_duration_since(*sent) <= NAT_BINDING)
        })
    }

    /// Hands every datagram due at `now` to its socket; returns the wakers
    /// of the sockets that got one.
    fn deliver_due(&mut self, now: Instant) -> Vec<std::task::Waker> {
        let mut wakers = Vec::new();
        while let Some(Reverse(first)) = self.queue.peek()
            && first.at <= now
        {
            let Some(Reverse(scheduled)) = self.queue.pop() else {
                break;
            };
            let datagram = scheduled.datagram;
            let (from, to) = (datagram.from, datagram.to);
            if let Some(count) = self.in_flight.get_mut(&(from, to)) {
                *count = count.saturating_sub(1);
            }
            let event = (from, to, datagram.payload.len(), datagram.id);
            if self.blocked.contains(&(from, to)) {
                self.record(EventKind::Dropped, Some(DropReason::Partition), event, now);
                continue;
            }
            if !self.nat_admits(from, to, now) {
                self.record(EventKind::Dropped, Some(DropReason::Nat), event, now);
                continue;
            }
            let Some(socket) = self.hosts[to].socket.clone() else {
                self.record(EventKind::Dropped, Some(DropReason::HostDown), event, now);
                continue;
            };
            match socket.push(datagram.source, datagram.payload) {
                Ok(waker) => {
                    self.record(EventKind::Delivered, None, event, now);
                    wakers.extend(waker);
                }
                Err(()) => {
                    self.record(
                        EventKind::Dropped,
                        Some(DropReason::ReceiveQueueFull),
                        event,
                        now,
                    );
                }
            }
        }
        wakers
    }
}

impl Network {
    /// A network of hosts at `addresses` (host `i` at `addresses[i]`),
    /// with link rules `links`, drawing from streams of `seed`.
    pub fn new(seed: u64, addresses: &[SocketAddr], links: LinkTable) -> Network {
        let start = Instant::now();
        let hosts: Vec<Host> = addresses
            .iter()
            .map(|addr| Host {
                addr: *addr,
                socket: None,
                incarnation: 0,
            })
            .collect();
        let by_addr = addresses
            .iter()
            .enumerate()
            .map(|(idx, addr)| (*addr, idx))
            .collect();
        let n_hosts = hosts.len();
        Network {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    seed,
                    hosts,
                    by_addr,
                    base: links.clone(),
                    links,
                    rules: BTreeMap::new(),
                    link_latency: BTreeMap::new(),
                    rngs: BTreeMap::new(),
                    blocked: BTreeSet::new(),
                    nat: BTreeMap::new(),
                    holding: BTreeSet::new(),
                    held: BTreeMap::new(),
                    in_flight: BTreeMap::new(),
                    queue: BinaryHeap::new(),
                    next_id: 0,
                    next_order: 0,
                    digest: ScheduleDigest {
                        events: 0,
                        hash: FNV_OFFSET,
                    },
                    stats: NetStats {
                        hosts: vec![HostTraffic::default(); n_hosts],
                        ..NetStats::default()
                    },
                    start,
                }),
                wake: Notify::new(),
                start,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state()
    }

    /// The address of host `host`.
    pub fn addr(&self, host: usize) -> SocketAddr {
        self.state().hosts[host].addr
    }

    /// When the network was made (the paused clock's instant).
    pub fn start(&self) -> Instant {
        self.inner.start
    }

    /// Runs deliveries until the returned task is aborted. Spawn it once,
    /// on the runtime that runs the brokers.
    pub fn spawn_driver(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                let next = inner.state().queue.peek().map(|Reverse(first)| first.at);
                match next {
                    Some(at) => {
                        // Both branches lead to the same delivery step, so
                        // which one the select picks changes nothing.
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = inner.wake.notified() => {}
                        }
                    }
                    None => inner.wake.notified().await,
                }
                let wakers = inner.state().deliver_due(Instant::now());
                for waker in wakers {
                    waker.wake();
                }
            }
        })
    }

    /// A fresh socket for `host` (its broker's next incarnation), replacing
    /// whatever socket the host had.
    pub fn bind(&self, host: usize) -> Arc<SimSocket> {
        let mut state = self.state();
        let entry = &mut state.hosts[host];
        entry.incarnation += 1;
        let socket = Arc::new(SimSocket::new(
            Arc::downgrade(&self.inner),
            host,
            entry.incarnation,
            entry.addr,
        ));
        if let Some(old) = entry.socket.replace(socket.clone()) {
            old.mute();
        }
        socket
    }

    /// Crashes `host`'s socket: nothing it sends leaves, nothing more
    /// reaches it (datagrams in flight to it are dropped on arrival).
    pub fn crash(&self, host: usize) {
        let mut state = self.state();
        if let Some(socket) = state.hosts[host].socket.take() {
            socket.mute();
        }
    }

    /// Whether `host` has a live socket.
    pub fn is_up(&self, host: usize) -> bool {
        self.state().hosts[host].socket.is_some()
    }

    /// Puts `host` behind a NAT: from now on a datagram reaches it only
    /// from a host it sent one to within [`NAT_BINDING`], so it can dial
    /// out and keep its connections, but nobody can dial it.
    pub fn put_behind_nat(&self, host: usize) {
        self.state().nat.entry(host).or_default();
    }

    /// Blocks every link from a host in `from` to a host in `to`.
    pub fn block(&self, from: &HostSet, to: &HostSet) {
        let mut state = self.state();
        for a in from {
            for b in to {
                if a != b {
                    state.blocked.insert((*a, *b));
                }
            }
        }
    }

    /// Unblocks every link from a host in `from` to a host in `to`.
    pub fn unblock(&self, from: &HostSet, to: &HostSet) {
        let mut state = self.state();
        for a in from {
            for b in to {
                state.blocked.remove(&(*a, *b));
            }
        }
    }

    /// Removes every partition.
    pub fn heal_all(&self) {
        self.state().blocked.clear();
    }

    /// The directed links blocked now.
    pub fn blocked(&self) -> BTreeSet<(usize, usize)> {
        self.state().blocked.clone()
    }

    /// Holds the links from `from` to `to`: datagrams queue up (bounded by
    /// each link's `queue_max`) instead of travelling, until released.
    pub fn hold(&self, from: &HostSet, to: &HostSet) {
        let mut state = self.state();
        for a in from {
            for b in to {
                if a != b {
                    state.holding.insert((*a, *b));
                }
            }
        }
    }

    /// Releases held links: what they held travels now, as if just sent.
    pub fn release(&self, from: &HostSet, to: &HostSet) {
        let now = Instant::now();
        let mut moved = false;
        {
            let mut state = self.state();
            let mut pairs = Vec::new();
            for a in from {
                for b in to {
                    if state.holding.remove(&(*a, *b)) {
                        pairs.push((*a, *b));
                    }
                }
            }
            for pair in pairs {
                let held = state.held.remove(&pair).unwrap_or_default();
                for datagram in held {
                    moved |= state.transmit(datagram, now);
                }
            }
        }
        if moved {
            self.inner.wake.notify_one();
        }
    }

    /// Releases every held link.
    pub fn release_all(&self) {
        let held: Vec<(usize, usize)> = self.state().holding.iter().copied().collect();
        for (a, b) in held {
            self.release(&HostSet::from([a]), &HostSet::from([b]));
        }
    }

    /// Lays `patch` over the links from `from` to `to`, from now on.
    pub fn patch_links(&self, from: &HostSet, to: &HostSet, patch: LinkPatch) {
        let mut state = self.state();
        state.links.patches.push((from.clone(), to.clone(), patch));
        state.rules.clear();
        state.link_latency.clear();
    }

    /// Puts the links back to the scenario's rules.
    pub fn reset_links(&self) {
        let mut state = self.state();
        state.links = state.base.clone();
        state.rules.clear();
        state.link_latency.clear();
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        self.state().stats.clone()
    }

    /// The digest of every datagram event so far.
    pub fn digest(&self) -> ScheduleDigest {
        self.state().digest
    }

    /// Drops every socket (ending the reference cycles of a finished run).
    pub fn clear(&self) {
        let mut state = self.state();
        for host in &mut state.hosts {
            if let Some(socket) = host.socket.take() {
                socket.mute();
            }
        }
        state.queue.clear();
        state.held.clear();
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One datagram from `from`'s socket incarnation `incarnation`.
    pub(crate) fn send(
        &self,
        from: usize,
        incarnation: u64,
        source: SocketAddr,
        destination: SocketAddr,
        payload: &[u8],
    ) {
        let now = Instant::now();
        let moved = {
            let mut state = self.state();
            let id = state.next_id;
            state.next_id += 1;
            let to = state.by_addr.get(&destination).copied();
            let event = (from, to.unwrap_or(from), payload.len(), id);
            state.record(EventKind::Sent, None, event, now);
            let current =
                state.hosts[from].incarnation == incarnation && state.hosts[from].socket.is_some();
            if !current {
                state.record(EventKind::Dropped, Some(DropReason::HostDown), event, now);
                return;
            }
            let Some(to) = to else {
                state.record(EventKind::Dropped, Some(DropReason::NoRoute), event, now);
                return;
            };
            if state.blocked.contains(&(from, to)) {
                state.record(EventKind::Dropped, Some(DropReason::Partition), event, now);
                return;
            }
            if let Some(bindings) = state.nat.get_mut(&from) {
                bindings.insert(to, now);
            }
            let rule = state.rule(from, to);
            if payload.len() > rule.mtu_bytes {
                state.record(EventKind::Dropped, Some(DropReason::Mtu), event, now);
                return;
            }
            let datagram = Datagram {
                id,
                from,
                to,
                source,
                payload: payload.to_vec(),
            };
            if state.holding.contains(&(from, to)) {
                let queue = state.held.entry((from, to)).or_default();
                if queue.len() >= rule.queue_max {
                    state.record(EventKind::Dropped, Some(DropReason::QueueFull), event, now);
                } else {
                    queue.push_back(datagram);
                    state.record(EventKind::Held, None, event, now);
                }
                return;
            }
            state.transmit(datagram, now)
        };
        if moved {
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `count` datagrams each way between hosts 0 and 1 at one
    /// instant; returns each direction's delays in sending order.
    fn delays(latency_per: LatencyPer, count: u64) -> [Vec<Duration>; 2] {
        let addresses: Vec<SocketAddr> = (1..=2)
            .map(|host| SocketAddr::from(([10, 0, 0, host], 4433)))
            .collect();
        let links = LinkTable {
            default: LinkRule {
                latency_ms_min: 20.0,
                latency_ms_max: 80.0,
                latency_per,
                ..LinkRule::default()
            },
            patches: Vec::new(),
        };
        let network = Network::new(7, &addresses, links);
        let mut state = network.state();
        let now = state.start;
        for id in 0..count {
            for (from, to) in [(0, 1), (1, 0)] {
                let datagram = Datagram {
                    id: id * 2 + from as u64,
                    from,
                    to,
                    source: addresses[from],
                    payload: vec![0; 100],
                };
                state.transmit(datagram, now);
            }
        }
        let mut delays = [Vec::new(), Vec::new()];
        while let Some(Reverse(scheduled)) = state.queue.pop() {
            delays[scheduled.datagram.from].push((scheduled.datagram.id, scheduled.at - now));
        }
        delays.map(|mut arrived| {
            let in_arrival_order: Vec<u64> = arrived.iter().map(|(id, _)| *id).collect();
            arrived.sort_by_key(|(id, _)| *id);
            let sent_order: Vec<u64> = arrived.iter().map(|(id, _)| *id).collect();
            if latency_per == LatencyPer::Link {
                assert_eq!(in_arrival_order, sent_order, "a link keeps its order");
            }
            arrived.into_iter().map(|(_, delay)| delay).collect()
        })
    }

    #[test]
    fn a_link_draws_its_latency_once_and_keeps_its_order() {
        let [forth, back] = delays(LatencyPer::Link, 50);
        assert!(forth.iter().all(|delay| *delay == forth[0]));
        assert_eq!(forth, back, "the same latency both ways");
        let ms = forth[0].as_secs_f64() * 1000.0;
        assert!((20.0..=80.0).contains(&ms), "{ms}");

        // Per datagram (the default), delays spread over the range.
        let [forth, _] = delays(LatencyPer::Datagram, 50);
        assert!(forth.iter().any(|delay| *delay != forth[0]));
    }
}
