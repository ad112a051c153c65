//! The address book: every address a peer might be reached at, with where it
//! came from, when it was first and last seen, and when to dial it next.
//!
//! Discovery is not trust: an address here only says where to knock. The
//! handshake and the registry's admissions decide who gets in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use scout_mesh::wire::NodeId;
use serde::Serialize;
use tokio::time::Instant;

/// Addresses remembered at most: a mesh of a thousand brokers announcing a
/// few addresses each. Seeds and invite addresses are never evicted;
/// learned ones are, oldest first, past this bound.
pub const ADDRESSES_MAX: usize = 4096;

/// First retry delay after a failed dial.
pub const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(250);

/// Longest retry delay for an address that keeps failing.
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Longest retry delay for seeds while no peer at all is connected: a
/// broker alone must find its mesh again quickly.
pub const SEED_BACKOFF_ALONE_MAX: Duration = Duration::from_secs(2);

const _: () = assert!(DIAL_BACKOFF_MIN.as_millis() < SEED_BACKOFF_ALONE_MAX.as_millis());
const _: () = assert!(SEED_BACKOFF_ALONE_MAX.as_millis() < DIAL_BACKOFF_MAX.as_millis());

/// Where an address came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AddressSource {
    /// `seeds` in settings, `--seed`, or `SCOUT_SEEDS`.
    Seed,
    /// The inviter's address from an invite code.
    Invite,
    /// A peer told us (its hello, or a node record).
    Learned,
    /// The peer connected to us from it.
    Inbound,
    /// mDNS on the LAN.
    Mdns,
    /// tailscaled's peer list.
    Tailscale,
}

impl AddressSource {
    /// Sources whose addresses stay however full the book is.
    fn is_configured(self) -> bool {
        matches!(self, AddressSource::Seed | AddressSource::Invite)
    }
}

/// One address.
#[derive(Debug, Clone)]
pub struct AddressEntry {
    /// The address.
    pub addr: SocketAddr,
    /// Every source that named it.
    pub sources: BTreeSet<AddressSource>,
    /// The node found there, once a handshake told us.
    pub node_id: Option<NodeId>,
    /// A key to accept there before any admission is known (an inviter).
    pub pinned_key: Option<[u8; 32]>,
    /// Unix ms when first added.
    pub first_seen_ms: u64,
    /// Unix ms when last named by a source or reached.
    pub last_seen_ms: u64,
    /// Failed dials in a row.
    pub failures: u32,
    /// The last dial error.
    pub last_error: Option<String>,
    next_attempt: Option<Instant>,
    /// When a configured address (seed, invite) is retried while no peer is
    /// connected: its backoff capped at [`SEED_BACKOFF_ALONE_MAX`], counted
    /// from the failed dial, so a lone broker spaces its dials too.
    next_attempt_alone: Option<Instant>,
    in_flight: bool,
    /// When it was last handed to the dialer.
    last_dialed: Option<Instant>,
}

/// The shown form of an entry.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AddressView {
    /// The address.
    pub addr: String,
    /// Where it came from.
    pub sources: Vec<AddressSource>,
    /// The node there, if known.
    pub node_id: Option<String>,
    /// Unix ms.
    pub first_seen_ms: u64,
    /// Unix ms.
    pub last_seen_ms: u64,
    /// Failed dials in a row.
    pub failures: u32,
    /// The last dial error.
    pub last_error: Option<String>,
}

/// The book.
#[derive(Debug, Default)]
pub struct AddressBook {
    entries: BTreeMap<SocketAddr, AddressEntry>,
    /// The addresses of each node an entry names: a mesh of a thousand
    /// members has a thousand nodes here, and the dialer and routing ask
    /// about a few of them many times a second.
    by_node: HashMap<NodeId, BTreeSet<SocketAddr>>,
    /// Entries that name no node yet (seeds, discovery).
    unnamed: BTreeSet<SocketAddr>,
    /// Entries being dialed.
    in_flight: BTreeSet<SocketAddr>,
    /// Bumped whenever [`Self::dialable_nodes`] may have changed.
    dialable_version: u64,
}

impl AddressBook {
    /// Adds (or refreshes) an address.
    pub fn add(
        &mut self,
        addr: SocketAddr,
        source: AddressSource,
        node_id: Option<NodeId>,
        now_ms: u64,
    ) {
        let entry = self.entries.entry(addr).or_insert_with(|| AddressEntry {
            addr,
            sources: BTreeSet::new(),
            node_id: None,
            pinned_key: None,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            failures: 0,
            last_error: None,
            next_attempt: None,
            next_attempt_alone: None,
            in_flight: false,
            last_dialed: None,
        });
        entry.sources.insert(source);
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        let was = entry.node_id.clone();
        if node_id.is_some() && entry.node_id != node_id {
            entry.node_id = node_id.clone();
            self.dialable_version += 1;
            self.index(addr, was.as_ref(), node_id.as_ref());
        } else if was.is_none() {
            self.unnamed.insert(addr);
        }
        self.evict();
    }

    /// Moves `addr` in the index from the node it named to the one it
    /// names now (or to the unnamed ones).
    fn index(&mut self, addr: SocketAddr, was: Option<&NodeId>, now: Option<&NodeId>) {
        match was {
            Some(was) => {
                if let Some(addrs) = self.by_node.get_mut(was) {
                    addrs.remove(&addr);
                    if addrs.is_empty() {
                        self.by_node.remove(was);
                    }
                }
            }
            None => {
                self.unnamed.remove(&addr);
            }
        }
        match now {
            Some(now) => {
                self.by_node.entry(now.clone()).or_default().insert(addr);
            }
            None => {
                self.unnamed.insert(addr);
            }
        }
    }

    /// Removes `addr` from the book and from the index.
    fn remove(&mut self, addr: SocketAddr) {
        if let Some(entry) = self.entries.remove(&addr) {
            self.index(addr, entry.node_id.as_ref(), None);
            self.unnamed.remove(&addr);
            self.in_flight.remove(&addr);
        }
    }

    /// The entries of `node_id`.
    fn entries_of<'a>(&'a self, node_id: &NodeId) -> impl Iterator<Item = &'a AddressEntry> {
        self.by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|addr| self.entries.get(addr))
    }

    /// A number that changes whenever [`Self::dialable_nodes`] may have.
    pub fn dialable_version(&self) -> u64 {
        self.dialable_version
    }

    /// Pins the key expected at an address (an inviter's).
    pub fn pin(&mut self, addr: SocketAddr, key: [u8; 32]) {
        if let Some(entry) = self.entries.get_mut(&addr) {
            entry.pinned_key = Some(key);
        }
    }

    /// Stops pinning `key` anywhere: the registry decides about it now.
    pub fn unpin(&mut self, key: &[u8; 32]) {
        for entry in self.entries.values_mut() {
            if entry.pinned_key.as_ref() == Some(key) {
                entry.pinned_key = None;
            }
        }
    }

    /// Removes one source from every address; addresses left with no source
    /// are forgotten (a tailnet peer that went offline, say).
    pub fn retract(&mut self, source: AddressSource, keep: &HashSet<SocketAddr>) {
        for entry in self.entries.values_mut() {
            if !keep.contains(&entry.addr) {
                entry.sources.remove(&source);
            }
        }
        let emptied: Vec<SocketAddr> = self
            .entries
            .values()
            .filter(|entry| entry.sources.is_empty())
            .map(|entry| entry.addr)
            .collect();
        for addr in emptied {
            self.remove(addr);
        }
        self.dialable_version += 1;
    }

    /// At most `limit` addresses due for a dial, marked in flight.
    /// `connected` are the peers with a live connection; with none, seeds
    /// are retried sooner, whoever is there. Addresses of `revoked` nodes
    /// are never dialed. With `wanted`, an address whose node is known is
    /// dialed only if that node is wanted (the partial views and routing
    /// decide whom to connect to); addresses of unknown nodes always are.
    pub fn due(
        &mut self,
        now: Instant,
        self_id: &NodeId,
        connected: &HashSet<NodeId>,
        revoked: &HashSet<NodeId>,
        wanted: Option<&HashSet<NodeId>>,
        limit: usize,
    ) -> Vec<(SocketAddr, Option<[u8; 32]>)> {
        let alone = connected.is_empty();
        let mut due = Vec::new();
        // One dial per node at a time: two addresses of one peer dialed
        // together would make two connections, one of which is thrown away.
        let mut busy_nodes: HashSet<NodeId> = self
            .in_flight
            .iter()
            .filter_map(|addr| self.entries.get(addr)?.node_id.clone())
            .collect();
        // The addresses that may be due: with a wanted set and a peer
        // connected, those of wanted nodes and of unnamed ones, found
        // through the index rather than by a look at every member's.
        let candidates: Vec<SocketAddr> = match wanted {
            Some(wanted) if !alone => {
                let mut candidates: BTreeSet<SocketAddr> = self.unnamed.clone();
                for node in wanted {
                    if let Some(addrs) = self.by_node.get(node) {
                        candidates.extend(addrs.iter().copied());
                    }
                }
                candidates.into_iter().collect()
            }
            _ => self.entries.keys().copied().collect(),
        };
        for addr in candidates {
            if due.len() >= limit {
                break;
            }
            let Some(entry) = self.entries.get_mut(&addr) else {
                continue;
            };
            if entry.in_flight
                || entry
                    .node_id
                    .as_ref()
                    .is_some_and(|id| busy_nodes.contains(id))
            {
                continue;
            }
            if let Some(node_id) = &entry.node_id
                && (node_id == self_id || connected.contains(node_id) || revoked.contains(node_id))
            {
                continue;
            }
            let configured = entry.sources.iter().any(|source| source.is_configured());
            if let (Some(wanted), Some(node_id)) = (wanted, &entry.node_id)
                && !wanted.contains(node_id)
                && !(alone && configured)
            {
                continue;
            }
            let ready = is_ready(
                now,
                entry.next_attempt,
                entry.next_attempt_alone,
                alone && configured,
            );
            if ready {
                entry.in_flight = true;
                entry.last_dialed = Some(now);
                if let Some(id) = &entry.node_id {
                    busy_nodes.insert(id.clone());
                }
                due.push((entry.addr, entry.pinned_key));
                self.in_flight.insert(addr);
            }
        }
        due
    }

    /// Records a dial's outcome. `jitter` in 0..1 spreads retries so
    /// brokers restarted together do not dial in lockstep.
    pub fn dialed(
        &mut self,
        addr: SocketAddr,
        outcome: Result<NodeId, String>,
        now: Instant,
        now_ms: u64,
        jitter: f64,
    ) {
        self.in_flight.remove(&addr);
        let Some(entry) = self.entries.get_mut(&addr) else {
            return;
        };
        entry.in_flight = false;
        self.dialable_version += 1;
        match outcome {
            Ok(node_id) => {
                let was = entry.node_id.replace(node_id.clone());
                entry.failures = 0;
                entry.last_error = None;
                entry.last_seen_ms = now_ms;
                entry.next_attempt = None;
                entry.next_attempt_alone = None;
                if was.as_ref() != Some(&node_id) {
                    self.index(addr, was.as_ref(), Some(&node_id));
                }
            }
            Err(error) => {
                entry.failures = entry.failures.saturating_add(1);
                entry.last_error = Some(error);
                let delay = backoff(entry.failures, jitter);
                entry.next_attempt = Some(now + delay);
                entry.next_attempt_alone = Some(now + delay.min(SEED_BACKOFF_ALONE_MAX));
            }
        }
    }

    /// Whether an address of `node_id` was dialed within `window` of `now`.
    pub fn dialed_within(&self, node_id: &NodeId, now: Instant, window: Duration) -> bool {
        self.by_node.get(node_id).is_some_and(|addrs| {
            addrs.iter().any(|addr| {
                self.entries.get(addr).is_some_and(|entry| {
                    entry
                        .last_dialed
                        .is_some_and(|at| now.saturating_duration_since(at) < window)
                })
            })
        })
    }

    /// The live connection to `node_id` was lost: counted as a failed dial
    /// of each of its addresses, so they wait their backoff and the node is
    /// not dialable until a dial succeeds or it connects again.
    pub fn lost(&mut self, node_id: &NodeId, error: &str, now: Instant, jitter: f64) {
        self.dialable_version += 1;
        let addrs: Vec<SocketAddr> = self.entries_of(node_id).map(|entry| entry.addr).collect();
        for addr in addrs {
            let Some(entry) = self.entries.get_mut(&addr) else {
                continue;
            };
            entry.failures = entry.failures.saturating_add(1);
            entry.last_error = Some(error.to_owned());
            let delay = backoff(entry.failures, jitter);
            entry.next_attempt = Some(now + delay);
            entry.next_attempt_alone = Some(now + delay.min(SEED_BACKOFF_ALONE_MAX));
        }
    }

    /// Marks an address as reached (an inbound connection or a hello).
    pub fn reached(&mut self, addr: SocketAddr, node_id: &NodeId, now_ms: u64) {
        if let Some(entry) = self.entries.get_mut(&addr) {
            if entry.failures > 0 || entry.node_id.as_ref() != Some(node_id) {
                self.dialable_version += 1;
            }
            let was = entry.node_id.replace(node_id.clone());
            entry.last_seen_ms = now_ms;
            entry.failures = 0;
            entry.last_error = None;
            entry.next_attempt = None;
            entry.next_attempt_alone = None;
            if was.as_ref() != Some(node_id) {
                self.index(addr, was.as_ref(), Some(node_id));
            }
        }
    }

    /// Whether some address of `node_id` is known and its last dial (if
    /// any) did not fail: the node may be reached by dialing it.
    pub fn has_dialable(&self, node_id: &NodeId) -> bool {
        self.entries_of(node_id).any(|entry| entry.failures == 0)
    }

    /// Whether any address of `node_id` is known (dialable now or after
    /// its backoff).
    pub fn knows(&self, node_id: &NodeId) -> bool {
        self.by_node.contains_key(node_id)
    }

    /// Whether every known address of `node_id` was dialed and failed,
    /// none in flight now.
    pub fn dial_failed(&self, node_id: &NodeId) -> bool {
        let mut entries = self.entries_of(node_id).peekable();
        entries.peek().is_some() && entries.all(|entry| !entry.in_flight && entry.failures > 0)
    }

    /// The nodes with an address that may be dialed ([`Self::has_dialable`]).
    pub fn dialable_nodes(&self) -> HashSet<NodeId> {
        self.entries
            .values()
            .filter(|entry| entry.failures == 0)
            .filter_map(|entry| entry.node_id.clone())
            .collect()
    }

    /// The node known at `addr`, if any.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.entries
            .get(&addr)
            .and_then(|entry| entry.node_id.clone())
    }

    /// Every address of a node.
    pub fn addresses_of(&self, node_id: &NodeId) -> Vec<&AddressEntry> {
        self.entries_of(node_id).collect()
    }

    /// Every entry, for `scout peers` and `scout doctor`.
    pub fn views(&self) -> Vec<AddressView> {
        self.entries.values().map(view).collect()
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict(&mut self) {
        while self.entries.len() > ADDRESSES_MAX {
            let oldest = self
                .entries
                .values()
                .filter(|entry| !entry.sources.iter().any(|source| source.is_configured()))
                .min_by_key(|entry| entry.last_seen_ms)
                .map(|entry| entry.addr);
            match oldest {
                Some(addr) => {
                    self.remove(addr);
                    self.dialable_version += 1;
                }
                None => break,
            }
        }
    }
}

/// The view of one entry.
pub fn view(entry: &AddressEntry) -> AddressView {
    AddressView {
        addr: entry.addr.to_string(),
        sources: entry.sources.iter().copied().collect(),
        node_id: entry.node_id.as_ref().map(ToString::to_string),
        first_seen_ms: entry.first_seen_ms,
        last_seen_ms: entry.last_seen_ms,
        failures: entry.failures,
        last_error: entry.last_error.clone(),
    }
}

/// Whether an address is due at `now`: never tried, its backoff passed, or
/// (for a configured address while no peer is connected) its backoff capped
/// at [`SEED_BACKOFF_ALONE_MAX`] passed. Both deadlines count from the last
/// failed dial, so retries are spaced even when the dialer wakes often.
pub fn is_ready(
    now: Instant,
    next_attempt: Option<Instant>,
    next_attempt_alone: Option<Instant>,
    alone_and_configured: bool,
) -> bool {
    match next_attempt {
        None => true,
        Some(at) if now >= at => true,
        Some(_) => alone_and_configured && next_attempt_alone.is_some_and(|at| now >= at),
    }
}

/// Whether an address a peer announced (in its hello or its node record)
/// belongs in the book. A loopback address names the machine it is used
/// on: it reaches the peer only when the peer runs on this machine, and
/// another local broker (or nothing) otherwise.
pub fn keep_announced(announced: SocketAddr, peer_on_this_host: bool) -> bool {
    !announced.ip().is_loopback() || peer_on_this_host
}

/// Whether a peer whose node record announces `peer_addresses` runs on
/// this machine, judged by the addresses it was not connected from: it
/// announces one of this broker's own interface addresses, or neither side
/// announces anything but loopback (only loopback can reach it anyway).
pub fn announces_this_host(peer_addresses: &[SocketAddr], own: &[SocketAddr]) -> bool {
    let own_ips: HashSet<std::net::IpAddr> = own
        .iter()
        .map(SocketAddr::ip)
        .filter(|ip| !ip.is_loopback())
        .collect();
    let mut peer_routable = peer_addresses
        .iter()
        .map(SocketAddr::ip)
        .filter(|ip| !ip.is_loopback())
        .peekable();
    if own_ips.is_empty() || peer_routable.peek().is_none() {
        return true;
    }
    peer_routable.any(|ip| own_ips.contains(&ip))
}

/// Exponential backoff with ±25% jitter, between the bounds.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let base = DIAL_BACKOFF_MIN
        .saturating_mul(1 << exponent)
        .min(DIAL_BACKOFF_MAX);
    let factor = 0.75 + 0.5 * jitter.clamp(0.0, 1.0);
    base.mul_f64(factor)
        .clamp(DIAL_BACKOFF_MIN, DIAL_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn node(byte: u8) -> NodeId {
        NodeId::from_bytes([byte; 16])
    }

    #[test]
    fn a_node_handed_to_the_dialer_counts_as_dialed_for_the_window() {
        let mut book = AddressBook::default();
        let now = Instant::now();
        let window = Duration::from_secs(120);
        book.add(addr(2), AddressSource::Learned, Some(node(2)), 0);
        assert!(!book.dialed_within(&node(2), now, window), "never dialed");
        let due = book.due(now, &node(9), &HashSet::new(), &HashSet::new(), None, 16);
        assert_eq!(due, vec![(addr(2), None)]);
        assert!(book.dialed_within(&node(2), now + Duration::from_secs(119), window));
        assert!(!book.dialed_within(&node(2), now + window, window));
        assert!(!book.dialed_within(&node(3), now, window), "another node");
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(1, 0.5), DIAL_BACKOFF_MIN);
        assert!(backoff(3, 0.5) > backoff(2, 0.5));
        assert_eq!(backoff(100, 1.0), DIAL_BACKOFF_MAX);
    }

    #[test]
    fn connected_and_self_addresses_are_not_dialed() {
        let mut book = AddressBook::default();
        let now = Instant::now();
        book.add(addr(1), AddressSource::Seed, None, 0);
        book.add(addr(2), AddressSource::Learned, Some(node(2)), 0);
        book.add(addr(3), AddressSource::Learned, Some(node(9)), 0);
        let connected: HashSet<NodeId> = [node(2)].into();
        let due = book.due(now, &node(9), &connected, &HashSet::new(), None, 16);
        assert_eq!(due, vec![(addr(1), None)]);
        // In flight: not handed out twice.
        assert!(
            book.due(now, &node(9), &connected, &HashSet::new(), None, 16)
                .is_empty()
        );
    }

    #[test]
    fn the_dialable_version_moves_whenever_the_dialable_nodes_do() {
        let mut book = AddressBook::default();
        let now = Instant::now();
        let mut last = (book.dialable_version(), book.dialable_nodes());
        let mut check = |book: &AddressBook, step: &str| {
            let current = (book.dialable_version(), book.dialable_nodes());
            if current.1 != last.1 {
                assert_ne!(
                    current.0, last.0,
                    "{step}: the set moved, the version did not"
                );
            }
            last = current;
        };
        book.add(addr(1), AddressSource::Seed, None, 0);
        check(&book, "unknown seed");
        book.add(addr(1), AddressSource::Learned, Some(node(1)), 0);
        check(&book, "learned whose it is");
        book.add(addr(2), AddressSource::Learned, Some(node(2)), 0);
        check(&book, "new node");
        book.dialed(addr(2), Err("refused".into()), now, 0, 0.5);
        check(&book, "failed dial");
        book.reached(addr(2), &node(2), 1);
        check(&book, "reached");
        book.lost(&node(1), "timed out", now, 0.5);
        check(&book, "lost");
        book.dialed(addr(1), Ok(node(1)), now, 2, 0.5);
        check(&book, "dial succeeded");
        book.add(addr(1), AddressSource::Learned, Some(node(3)), 3);
        check(&book, "address moved to another node");
        book.retract(AddressSource::Learned, &HashSet::new());
        check(&book, "retracted");
        // The seed address stays, now known as node 3's.
        assert_eq!(book.dialable_nodes(), [node(3)].into());
    }

    #[test]
    fn one_dial_per_node_at_a_time() {
        let mut book = AddressBook::default();
        let now = Instant::now();
        book.add(addr(1), AddressSource::Learned, Some(node(2)), 0);
        book.add(addr(2), AddressSource::Learned, Some(node(2)), 0);
        let due = book.due(now, &node(9), &HashSet::new(), &HashSet::new(), None, 16);
        assert_eq!(due.len(), 1);
        assert!(
            book.due(now, &node(9), &HashSet::new(), &HashSet::new(), None, 16)
                .is_empty()
        );
        book.dialed(due[0].0, Err("refused".into()), now, 0, 0.5);
        assert_eq!(
            book.due(now, &node(9), &HashSet::new(), &HashSet::new(), None, 16)
                .len(),
            1
        );
    }

    #[test]
    fn failures_back_off_but_a_lonely_broker_retries_seeds() {
        let mut book = AddressBook::default();
        let now = Instant::now();
        book.add(addr(1), AddressSource::Seed, None, 0);
        book.add(addr(2), AddressSource::Learned, None, 0);
        for _ in 0..10 {
            book.due(now, &node(9), &[node(5)].into(), &HashSet::new(), None, 16);
            book.dialed(addr(1), Err("refused".into()), now, 0, 0.5);
            book.dialed(addr(2), Err("refused".into()), now, 0, 0.5);
        }
        assert!(
            book.due(now, &node(9), &[node(5)].into(), &HashSet::new(), None, 16)
                .is_empty()
        );
        // Alone, the seed (not the learned address) is retried once the
        // alone cap has passed since the last failure, however long its
        // backoff grew.
        let later = now + SEED_BACKOFF_ALONE_MAX;
        assert!(
            book.due(
                later,
                &node(9),
                &[node(5)].into(),
                &HashSet::new(),
                None,
                16
            )
            .is_empty()
        );
        let alone = book.due(later, &node(9), &HashSet::new(), &HashSet::new(), None, 16);
        assert_eq!(alone, vec![(addr(1), None)]);
    }

    #[test]
    fn a_lonely_broker_spaces_its_seed_dials() {
        let mut book = AddressBook::default();
        let start = Instant::now();
        book.add(addr(1), AddressSource::Seed, None, 0);
        let alone = HashSet::new();
        let mut now = start;
        // Fail until the backoff is far past the alone cap.
        for _ in 0..10 {
            assert_eq!(
                book.due(now, &node(9), &alone, &HashSet::new(), None, 16)
                    .len(),
                1
            );
            book.dialed(addr(1), Err("refused".into()), now, 0, 0.5);
            now += SEED_BACKOFF_ALONE_MAX;
        }
        let failed_at = now;
        book.due(failed_at, &node(9), &alone, &HashSet::new(), None, 16);
        book.dialed(addr(1), Err("refused".into()), failed_at, 0, 0.5);
        // The dialer wakes every 200 ms: nothing is due before the cap.
        let mut tick = failed_at;
        while tick < failed_at + SEED_BACKOFF_ALONE_MAX {
            assert!(
                book.due(tick, &node(9), &alone, &HashSet::new(), None, 16)
                    .is_empty(),
                "dialed again {:?} after a failure",
                tick - failed_at
            );
            tick += Duration::from_millis(200);
        }
        assert_eq!(
            book.due(
                failed_at + SEED_BACKOFF_ALONE_MAX,
                &node(9),
                &alone,
                &HashSet::new(),
                None,
                16
            ),
            vec![(addr(1), None)]
        );
    }

    #[test]
    fn with_a_wanted_set_only_wanted_and_unknown_nodes_are_dialed() {
        let mut book = AddressBook::default();
        let now = Instant::now();
        book.add(addr(1), AddressSource::Learned, Some(node(1)), 0);
        book.add(addr(2), AddressSource::Learned, Some(node(2)), 0);
        book.add(addr(3), AddressSource::Mdns, None, 0);
        book.add(addr(4), AddressSource::Seed, Some(node(4)), 0);
        let connected: HashSet<NodeId> = [node(7)].into();
        let wanted: HashSet<NodeId> = [node(2)].into();
        let mut due: Vec<SocketAddr> = book
            .due(
                now,
                &node(9),
                &connected,
                &HashSet::new(),
                Some(&wanted),
                16,
            )
            .into_iter()
            .map(|(addr, _)| addr)
            .collect();
        due.sort();
        assert_eq!(due, vec![addr(2), addr(3)]);
        // Alone, a configured seed is dialed whoever it is.
        let mut alone = AddressBook::default();
        alone.add(addr(4), AddressSource::Seed, Some(node(4)), 0);
        assert_eq!(
            alone.due(
                now,
                &node(9),
                &HashSet::new(),
                &HashSet::new(),
                Some(&wanted),
                16
            ),
            vec![(addr(4), None)]
        );
        assert!(book.has_dialable(&node(1)));
        book.dialed(addr(1), Err("TIMEOUT".into()), now, 0, 0.5);
        assert!(!book.has_dialable(&node(1)));
        assert!(book.dial_failed(&node(1)));
        assert!(!book.dial_failed(&node(2)), "in flight");
    }

    #[test]
    fn revoked_nodes_are_not_dialed() {
        let mut book = AddressBook::default();
        let now = Instant::now();
        book.add(addr(1), AddressSource::Invite, Some(node(2)), 0);
        book.pin(addr(1), [2; 32]);
        let revoked: HashSet<NodeId> = [node(2)].into();
        assert!(
            book.due(now, &node(9), &HashSet::new(), &revoked, None, 16)
                .is_empty()
        );
        book.unpin(&[2; 32]);
        assert_eq!(
            book.due(now, &node(9), &HashSet::new(), &HashSet::new(), None, 16),
            vec![(addr(1), None)]
        );
    }

    #[test]
    fn loopback_addresses_only_for_peers_on_this_host() {
        let lan = |port| SocketAddr::from(([192, 168, 1, 7], port));
        let other = |port| SocketAddr::from(([192, 168, 1, 8], port));
        assert!(keep_announced(lan(1), false));
        assert!(keep_announced(addr(1), true));
        assert!(!keep_announced(addr(1), false));
        // A node record: same host when it shares one of our addresses.
        assert!(announces_this_host(&[addr(2), lan(2)], &[addr(1), lan(1)]));
        assert!(!announces_this_host(
            &[addr(2), other(2)],
            &[addr(1), lan(1)]
        ));
        // Only loopback on either side: loopback is all there is.
        assert!(announces_this_host(&[addr(2)], &[addr(1), lan(1)]));
        assert!(announces_this_host(&[addr(2), other(2)], &[addr(1)]));
    }

    /// The index agrees with the entries after any sequence of changes:
    /// every entry naming a node is under it, no other address is; the
    /// unnamed and in-flight sets are exactly those entries.
    fn check_index(book: &AddressBook) {
        for (addr, entry) in &book.entries {
            match &entry.node_id {
                Some(id) => assert!(book.by_node[id].contains(addr), "{addr} not under {id}"),
                None => assert!(book.unnamed.contains(addr), "{addr} not unnamed"),
            }
            assert_eq!(
                entry.in_flight,
                book.in_flight.contains(addr),
                "{addr} in flight"
            );
        }
        for (id, addrs) in &book.by_node {
            assert!(!addrs.is_empty(), "{id} indexed with no address");
            for addr in addrs {
                assert_eq!(book.entries[addr].node_id.as_ref(), Some(id));
            }
        }
        for addr in book.unnamed.iter().chain(&book.in_flight) {
            assert!(
                book.entries.contains_key(addr),
                "{addr} indexed, not in the book"
            );
        }
        assert!(
            book.unnamed
                .iter()
                .all(|addr| book.entries[addr].node_id.is_none())
        );
    }

    #[test]
    fn the_node_index_follows_every_change() {
        let mut state = 7u64;
        let mut next = move || {
            // xorshift64: a fixed sequence, enough to mix the operations.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut book = AddressBook::default();
        let now = Instant::now();
        for step in 0..5_000u64 {
            let port = 1 + (next() % 40) as u16;
            let who = node(1 + (next() % 8) as u8);
            let source = if next() % 5 == 0 {
                AddressSource::Seed
            } else {
                AddressSource::Learned
            };
            match next() % 7 {
                0 => book.add(addr(port), source, None, step),
                1 => book.add(addr(port), source, Some(who.clone()), step),
                2 => book.dialed(addr(port), Ok(who.clone()), now, step, 0.5),
                3 => book.dialed(addr(port), Err("TIMEOUT".into()), now, step, 0.5),
                4 => book.reached(addr(port), &who, step),
                5 => {
                    let keep: HashSet<SocketAddr> =
                        (1..40).map(addr).filter(|_| next() % 2 == 0).collect();
                    book.retract(AddressSource::Learned, &keep);
                }
                _ => {
                    let wanted: HashSet<NodeId> = [who.clone()].into();
                    let connected: HashSet<NodeId> = [node(8)].into();
                    let due =
                        book.due(now, &node(9), &connected, &HashSet::new(), Some(&wanted), 4);
                    for (addr, _) in due {
                        let named = book.node_at(addr);
                        assert!(
                            named.is_none() || named == Some(who.clone()),
                            "{addr} of an unwanted node"
                        );
                    }
                }
            }
            check_index(&book);
            for id in (1..9).map(node) {
                let scanned = book
                    .entries
                    .values()
                    .any(|entry| entry.node_id.as_ref() == Some(&id));
                assert_eq!(book.knows(&id), scanned, "step {step}: knows {id}");
            }
        }
    }

    #[test]
    fn learned_addresses_are_evicted_first() {
        let mut book = AddressBook::default();
        book.add(addr(1), AddressSource::Seed, None, 0);
        for port in 0..ADDRESSES_MAX as u16 + 5 {
            let named = (port % 2 == 0).then(|| node((port % 200) as u8));
            book.add(
                addr(1000 + port),
                AddressSource::Learned,
                named,
                u64::from(port) + 1,
            );
        }
        assert_eq!(book.len(), ADDRESSES_MAX);
        check_index(&book);
        assert!(
            book.views()
                .iter()
                .any(|view| view.addr == addr(1).to_string())
        );
    }
}
