//! The sync state machine: one [`Replica`] per broker keeps the registry,
//! exchanges records with connected peers, and says what the IO shell must
//! send, store and report.
//!
//! Inputs are `put`/`delete`/`edit_definition` (local changes) and the
//! `handle_*` methods (peers connecting, messages arriving, timers firing);
//! every input takes the time as `now_ms`. Outputs are values drained with
//! [`Replica::poll_output`], in the order they must be acted upon, and the
//! next timer deadline is [`Replica::poll_timeout`]. Nothing here does IO,
//! reads a clock or draws randomness from the system: anti-entropy jitter
//! comes from a small PRNG seeded by [`SyncConfig::seed`].
//!
//! Protocol:
//! - A local change is stored, handed to the shell to persist, and pushed at
//!   once to every connected peer. Without [`SyncConfig::partial_view`]
//!   pushes are never forwarded: brokers connect to every broker they can,
//!   and anti-entropy carries records across meshes that are not fully
//!   connected.
//! - On a partial view (each broker connected to a few others, see
//!   [`crate::views`]) a change spreads along a tree per origin, as in
//!   Plumtree with a tree per source: a replica pushes a record new to it
//!   to the peers that are *eager* for its origin and only announces it
//!   ([`SyncMessage::IHave`], gathered for
//!   [`SyncConfig::announce_delay_ms`]) to the *lazy* ones. A push that
//!   brought nothing new of an origin shows a second path for that origin,
//!   so its receiver answers [`SyncMessage::Prune`] and both ends make the
//!   link lazy for it; what remains eager is the tree along which the
//!   origin's records arrived first, so each origin's changes take the
//!   fastest paths there were. An announced record that does not arrive
//!   within [`SyncConfig::graft_timeout_ms`] shows a broken tree: the
//!   replica asks the announcer for it with [`SyncMessage::Graft`], which
//!   makes that link eager again for the origin (the next announcer is
//!   asked after another timeout). Every link starts eager for every
//!   origin, so an origin's first change floods the views.
//! - Anti-entropy runs when a peer connects and every
//!   [`SyncConfig::anti_entropy_interval_ms`] (± jitter): each side sends its
//!   version vector ([`SyncMessage::Digest`]), and the other replies with the
//!   records it lacks ([`SyncMessage::Delta`], in chunks), plus its own
//!   digest when the first side has something it lacks, so one exchange syncs
//!   both ways. A delta carries records of every origin, which is what makes
//!   a change travel along a line of brokers.
//! - The version vector `vv[origin] = n` means "I have every record of
//!   `origin` up to sequence number `n`, or a newer version of its key". It
//!   advances only when that is proven: a record at exactly `n + 1`, or a
//!   delta chunk whose range starts at or below `n`. A record that arrives
//!   out of order is kept (it is the newest of its key) and the gap is filled
//!   by the next anti-entropy round.
//!
//! Membership rule ([`Registry::may_sync`]): once the registry holds an
//! admission that counts (a chain from the mesh's founder, see
//! [`crate::registry`]), only members may sync: their messages are handled
//! and they are sent to; messages from other nodes are ignored with an
//! event. A broker that admitted someone counts as a member for this, since
//! its own admission may not have arrived yet. A broker whose registry holds
//! no counted admission yet (fresh, before it joins or founds a mesh) syncs
//! with every peer the shell says is connected; the shell has authenticated
//! the peer and checked its invite before that.
//!
//! Signatures: every record this replica writes is signed with its node key
//! ([`ReplicaIdentity`]); every record a peer sends is verified before merge
//! ([`crate::registry::validate`]), and a forged one is refused with
//! `INVALID_SIGNATURE`, counted ([`Replica::invalid_signatures`]), never
//! stored and so never relayed.
//!
//! A broker that lost its database and restarted with the same key reuses
//! sequence numbers its peers already saw. The first sign of it (a peer
//! holding one of its own records numbered at or above its next number) makes
//! it jump its next sequence number above the highest seen, forget which of
//! its own records it has (so the next anti-entropy round fetches them all
//! back), and reissue, with new numbers, every record it wrote since the
//! restart, so its current state supersedes the old one everywhere. Old
//! records it did not rewrite are accepted as they are.
//!
//! One gap remains: a third broker that had not yet received all of the old
//! records, and that received records written after the restart under reused
//! numbers before the recovery, may count those numbers as seen and so never
//! ask for the old records that carry them. The shell narrows this window by
//! making no local change after creating a fresh database for an existing key
//! until [`SyncEvent::PeerCaughtUp`]; closing it needs a per-database
//! incarnation in the version, which the record format does not carry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crdts::{CmRDT, Dot, VClock};

use crate::hlc::{ClockSkew, HlcClock};
use crate::names::{AgentName, Label};
use crate::registry::{
    AdmissionBody, Applied, CounterRun, DefinitionBody, DefinitionValue, InvalidRecord,
    MANIFEST_RUNS_MAX, ManifestBody, Record, RecordBody, RecordKey, RecordKind, Registry,
    contiguous_vv, sign, validate, validate_definition_value, validate_unsigned, verify_signature,
};
use crate::rng::SplitMix64;
use crate::wire::{
    DELTA_OVERHEAD_BYTES, NodeId, ORIGINS_MAX, RECORDS_PER_DELTA_MAX, RecordSignature,
    SYNC_MESSAGE_BYTES_MAX, SyncMessage, VV_BUCKETS, VV_ENTRY_BYTES_MAX, truncate,
};

pub use ed25519_dalek::SigningKey;

/// The most peers a replica syncs with at once (`TOO_MANY_PEERS` past it).
/// A broker syncs over its live connections, which its partial views
/// bound far below this ([`crate::views::ACTIVE_VIEW_MAX`] kept, plus a
/// few on demand), whatever the size of the mesh; this is the backstop
/// against a shell that connects to more.
pub const PEERS_MAX: usize = 128;

/// The most outputs waiting to be drained. When it is reached, the oldest
/// droppable output goes: a push first (anti-entropy resends what it
/// carried), then another message, then an event. Persist and forget outputs
/// are never dropped; the shell drains after every input, so they are bounded
/// by what one input can produce.
pub const OUTPUT_QUEUE_MAX: usize = 4096;

/// How often anti-entropy runs by default, in milliseconds: often enough that
/// a lost push is repaired within seconds, rarely enough that an idle mesh
/// of [`PEERS_MAX`] brokers exchanges only a few small digests per second.
pub const ANTI_ENTROPY_INTERVAL_MS_DEFAULT: u64 = 5_000;

/// The default spread around the interval, in milliseconds, so brokers that
/// started together do not send their digests in lockstep.
pub const ANTI_ENTROPY_JITTER_MS_DEFAULT: u64 = 1_000;

/// The smallest delta chunk size a configuration may ask for, in bytes.
/// Tests use small chunks to exercise chunking; below this a chunk would hold
/// little more than its own overhead.
pub const SYNC_MESSAGE_BYTES_MIN: usize = 256;

/// The default [`SyncConfig::announce_delay_ms`]: long enough to gather a
/// burst of changes into one announcement per peer, short next to the
/// graft timeout.
pub const ANNOUNCE_DELAY_MS_DEFAULT: u64 = 50;

/// The default [`SyncConfig::graft_timeout_ms`]: a push along the tree
/// usually beats an announcement by far (the announcement waits
/// [`ANNOUNCE_DELAY_MS_DEFAULT`] first), so a record still missing this
/// long after it was announced is taken as lost on the way.
pub const GRAFT_TIMEOUT_MS_DEFAULT: u64 = 100;

/// The most announcers remembered for one missing origin: the ones asked
/// in turn when pushes do not come.
const ANNOUNCERS_MAX: usize = 3;

const _: () = assert!(PEERS_MAX <= ORIGINS_MAX);
const _: () = assert!(SYNC_MESSAGE_BYTES_MIN <= SYNC_MESSAGE_BYTES_MAX);
// An anti-entropy round (a digest to every peer) must fit in the queue with
// room for the deltas it triggers.
const _: () = assert!(OUTPUT_QUEUE_MAX >= 16 * PEERS_MAX);

/// Tunables of a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// Mean time between anti-entropy rounds, in milliseconds.
    pub anti_entropy_interval_ms: u64,
    /// Maximum deviation from the interval, in milliseconds; capped at half
    /// the interval.
    pub anti_entropy_jitter_ms: u64,
    /// Seeds the jitter, so a run is reproducible.
    pub seed: u64,
    /// Largest delta chunk, in bytes; clamped to
    /// [`SYNC_MESSAGE_BYTES_MIN`]..=[`SYNC_MESSAGE_BYTES_MAX`]. A chunk
    /// always carries at least one record.
    pub sync_message_bytes_max: usize,
    /// Most records per delta chunk; clamped to 1..=[`RECORDS_PER_DELTA_MAX`].
    pub records_per_delta_max: usize,
    /// The replica's peers are a partial view of the mesh (its active
    /// view, see [`crate::views`]) rather than every broker: a record new
    /// to this replica (from a push or a delta) is pushed on to its other
    /// peers (a record it already had is not, so each change crosses each
    /// link about once), and an anti-entropy round sends its digest to one
    /// random peer instead of all of them. Pushes then follow a tree (see
    /// the module documentation).
    pub partial_view: bool,
    /// On a partial view, how long announcements to lazy peers are
    /// gathered before they leave, in milliseconds: one `IHave` per lazy
    /// peer per interval, however many records arrived.
    pub announce_delay_ms: u64,
    /// On a partial view, how long an announced record may take to arrive
    /// by push before the replica grafts it from the announcer, in
    /// milliseconds.
    pub graft_timeout_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            anti_entropy_interval_ms: ANTI_ENTROPY_INTERVAL_MS_DEFAULT,
            anti_entropy_jitter_ms: ANTI_ENTROPY_JITTER_MS_DEFAULT,
            seed: 0,
            sync_message_bytes_max: SYNC_MESSAGE_BYTES_MAX,
            records_per_delta_max: RECORDS_PER_DELTA_MAX,
            partial_view: false,
            announce_delay_ms: ANNOUNCE_DELAY_MS_DEFAULT,
            graft_timeout_ms: GRAFT_TIMEOUT_MS_DEFAULT,
        }
    }
}

impl SyncConfig {
    fn normalized(mut self) -> SyncConfig {
        self.anti_entropy_interval_ms = self.anti_entropy_interval_ms.max(1);
        self.anti_entropy_jitter_ms = self
            .anti_entropy_jitter_ms
            .min(self.anti_entropy_interval_ms / 2);
        self.sync_message_bytes_max = self
            .sync_message_bytes_max
            .clamp(SYNC_MESSAGE_BYTES_MIN, SYNC_MESSAGE_BYTES_MAX);
        self.records_per_delta_max = self.records_per_delta_max.clamp(1, RECORDS_PER_DELTA_MAX);
        self
    }
}

/// Something the IO shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a message to a connected peer.
    Send {
        /// The peer.
        to: NodeId,
        /// The message; encode it with [`crate::wire::encode`].
        message: SyncMessage,
    },
    /// Store these records (replacing the stored version of each key) and
    /// these version vector entries, in one transaction, before acting on
    /// later outputs: a change of this replica's own must be durable before
    /// it is pushed. (Records of other origins relayed along a partial view
    /// are sent before their persist: their origins committed them.)
    Persist {
        /// Records newly accepted or changed, in order.
        records: Vec<Record>,
        /// The entries of the version vector that changed since the last
        /// persist, with their new values (every entry after a restore):
        /// set them; an entry not named is unchanged. A vector has an entry
        /// per origin, so writing it whole on every commit would cost
        /// O(members) each time.
        vv: VClock<NodeId>,
    },
    /// Delete these tombstones from the store: every member has seen them.
    Forget {
        /// The collected keys.
        keys: Vec<RecordKey>,
    },
    /// Report something.
    Event(SyncEvent),
}

/// Where a rejected record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordSource {
    /// A local `put`.
    Local,
    /// The store, at restore.
    Store,
    /// A peer's message.
    Peer(NodeId),
}

/// Why a message was not handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoredReason {
    /// The sender is not connected (the shell never reported it, or it
    /// disconnected since).
    NotConnected,
    /// The mesh has admissions and the sender is not a member.
    NotMember,
    /// The sender is this broker.
    FromSelf,
    /// The message carries more than the protocol allows.
    OverLimit {
        /// Which limit.
        detail: String,
    },
}

/// Why a node stopped being a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRemovedReason {
    /// A broker revoked it.
    Revoked,
    /// Admissions disagree on its key.
    KeyConflict,
    /// Every admission of it was deleted.
    AdmissionWithdrawn,
}

/// Something that happened, for logs, the UI and the shell's decisions.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncEvent {
    /// A record was rejected; it was not stored and will not be forwarded.
    RecordRejected {
        /// Where it came from.
        source: RecordSource,
        /// Its origin.
        origin: NodeId,
        /// Its kind.
        kind: RecordKind,
        /// Its name, cut short when long.
        name: String,
        /// Why.
        error: InvalidRecord,
    },
    /// A peer's records carry timestamps too far ahead of local time. The
    /// records were accepted (a wrong clock must not stop replication); the
    /// local clock did not follow.
    ClockSkew {
        /// The peer that sent them.
        from: NodeId,
        /// The largest skew in the message.
        skew: ClockSkew,
    },
    /// A node became a member.
    MemberAdmitted {
        /// The node.
        node_id: NodeId,
    },
    /// A node stopped being a member; the shell should close its connection.
    MemberRemoved {
        /// The node.
        node_id: NodeId,
        /// Why.
        reason: MemberRemovedReason,
    },
    /// This replica has everything the peer had when it answered our digest.
    /// Reported once per connection, and again after falling behind.
    PeerCaughtUp {
        /// The peer.
        peer: NodeId,
    },
    /// A message was not handled.
    MessageIgnored {
        /// Its sender.
        from: NodeId,
        /// Its variant (`push`, `digest`, `delta`).
        message: &'static str,
        /// Why.
        reason: IgnoredReason,
    },
    /// Peers hold this broker's own records numbered at or above its next
    /// sequence number: it lost its database. It jumped above them and
    /// reissued what it wrote since it started.
    OwnSequenceRecovered {
        /// The highest own sequence number seen.
        highest_seen: u64,
        /// How many records were reissued with new numbers.
        reissued: usize,
    },
}

/// Why a peer cannot sync with this replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefused {
    /// [`PEERS_MAX`] peers are connected already.
    #[error("{PEERS_MAX} peers are connected already")]
    TooManyPeers,
    /// The mesh has admissions and the peer is not a member.
    #[error("node {peer} is not a member of this mesh")]
    NotMember {
        /// The peer.
        peer: NodeId,
    },
    /// The peer is this broker.
    #[error("a broker does not sync with itself")]
    SelfPeer,
}

impl PeerRefused {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            PeerRefused::TooManyPeers => "TOO_MANY_PEERS",
            PeerRefused::NotMember { .. } => "UNKNOWN_PEER",
            PeerRefused::SelfPeer => "SELF_PEER",
        }
    }
}

/// Who a replica is: the node key it signs its records with (its node id is
/// derived from it), its node name, and the founder of its mesh, the root
/// of the membership view (see [`crate::registry`]).
#[derive(Clone)]
pub struct ReplicaIdentity {
    /// The node's Ed25519 key. Signing is deterministic, so the replica
    /// stays free of randomness.
    pub signing_key: SigningKey,
    /// The node name.
    pub node_name: Label,
    /// The founder of the mesh: [`crate::registry::founder_of`] its mesh id.
    pub founder: NodeId,
}

impl std::fmt::Debug for ReplicaIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log line.
        f.debug_struct("ReplicaIdentity")
            .field("node_id", &self.node_id())
            .field("node_name", &self.node_name)
            .field("founder", &self.founder)
            .finish_non_exhaustive()
    }
}

impl ReplicaIdentity {
    /// The node id of the key.
    pub fn node_id(&self) -> NodeId {
        NodeId::of_public_key(&self.signing_key.verifying_key().to_bytes())
    }
}

/// What a replica knows about one connected peer.
#[derive(Debug, Clone, Default)]
struct PeerState {
    caught_up: bool,
    /// The shell vouches for this peer although the registry may not yet
    /// ([`Replica::handle_connected_vouched`]).
    vouched: bool,
    /// When our last digest to this peer left, until its final delta came
    /// back: a second digest meanwhile would only fetch the same records
    /// twice.
    digest_outstanding_since_ms: Option<u64>,
    /// On a partial view, the origins whose records new to this replica
    /// are announced to this peer rather than pushed (it pruned the link
    /// for them, or we did); at most [`ORIGINS_MAX`].
    lazy: BTreeSet<NodeId>,
    /// Announcements gathered for this lazy peer: per origin, the highest
    /// sequence number received since the last `IHave`.
    announce: VClock<NodeId>,
}

/// An origin whose announced records have not arrived.
#[derive(Debug, Clone)]
struct Missing {
    /// The highest sequence number announced.
    counter: u64,
    /// When to graft from the next announcer.
    graft_at_ms: u64,
    /// Peers that announced it, asked in this order.
    announcers: VecDeque<NodeId>,
}

/// The sync state of one broker. See the module documentation.
#[derive(Debug, Clone)]
pub struct Replica {
    self_id: NodeId,
    self_name: Label,
    signing_key: SigningKey,
    /// Records refused because they were not signed by their origin.
    invalid_signatures: u64,
    config: SyncConfig,
    registry: Registry,
    vv: VClock<NodeId>,
    next_seq: u64,
    clock: HlcClock,
    /// Own keys written since this replica started: authoritative over any
    /// copy a peer sends back (see the module documentation on lost
    /// databases).
    session_keys: BTreeSet<RecordKey>,
    peers: BTreeMap<NodeId, PeerState>,
    /// Origins whose vector entry changed since the last persist.
    vv_changed: BTreeSet<NodeId>,
    /// A peer holds a manifest of ours this replica lacks (from before a
    /// lost database): the next round writes a new one over it.
    manifest_due: bool,
    outputs: VecDeque<Output>,
    dropped_outputs: u64,
    anti_entropy_at_ms: Option<u64>,
    /// When gathered announcements leave; set while some are gathered.
    announce_at_ms: Option<u64>,
    /// Announced records not received yet, by origin (at most
    /// [`ORIGINS_MAX`]).
    missing: BTreeMap<NodeId, Missing>,
    /// The peer each origin's records last came from by push: this
    /// replica's parent in the origin's tree (at most [`ORIGINS_MAX`]).
    parents: BTreeMap<NodeId, NodeId>,
    rng: SplitMix64,
}

impl Replica {
    /// A replica with an empty registry.
    pub fn new(identity: ReplicaIdentity, config: SyncConfig) -> Replica {
        let config = config.normalized();
        Replica {
            rng: SplitMix64::new(config.seed),
            self_id: identity.node_id(),
            self_name: identity.node_name,
            signing_key: identity.signing_key,
            invalid_signatures: 0,
            config,
            registry: Registry::new(identity.founder),
            vv: VClock::new(),
            next_seq: 1,
            clock: HlcClock::new(),
            session_keys: BTreeSet::new(),
            peers: BTreeMap::new(),
            vv_changed: BTreeSet::new(),
            manifest_due: false,
            outputs: VecDeque::new(),
            dropped_outputs: 0,
            anti_entropy_at_ms: None,
            announce_at_ms: None,
            missing: BTreeMap::new(),
            parents: BTreeMap::new(),
        }
    }

    /// A replica rebuilt from the store: the records and the version vector
    /// last persisted. Records that no longer validate are dropped with an
    /// event. The vector is extended over any run of stored records it does
    /// not count yet; the next own sequence number follows the highest own
    /// number in either. A store that lost its vector may pass an empty one:
    /// the replica then fetches everything again, which costs bandwidth only.
    ///
    /// Records whose signature does not verify (stored by a release that
    /// did not sign records, or damaged) are re-signed when they are this
    /// broker's own (same key, sequence number, timestamp and body, so peers
    /// see the same version) and persisted again; other origins' are dropped
    /// with an event, and the vector forgets those origins so that the next
    /// anti-entropy round fetches their signed copies from peers.
    pub fn restore(
        identity: ReplicaIdentity,
        config: SyncConfig,
        records: impl IntoIterator<Item = Record>,
        vv: VClock<NodeId>,
    ) -> Replica {
        let mut replica = Replica::new(identity, config);
        let mut last_own_hlc = None;
        let mut resigned = Vec::new();
        let mut dropped_origins = BTreeSet::new();
        let mut stored_keys = Vec::new();
        for mut record in records {
            let own = record.key.origin == replica.self_id;
            if own {
                // Our own key, whatever the row says: a row of this origin
                // that verifies against another key cannot exist.
                record.origin_key = replica.signing_key.verifying_key().to_bytes();
            }
            if let Err(error) = validate_unsigned(&record) {
                replica.reject(RecordSource::Store, &record, error);
                continue;
            }
            if let Err(error) = verify_signature(&record) {
                if own {
                    sign(&mut record, &replica.signing_key);
                    resigned.push(record.clone());
                } else {
                    dropped_origins.insert(record.key.origin.clone());
                    replica.reject(RecordSource::Store, &record, error);
                    continue;
                }
            }
            if own {
                last_own_hlc = last_own_hlc.max(Some(record.hlc));
            }
            stored_keys.push(record.key.clone());
            replica.registry.apply_unsettled(record);
        }
        replica.registry.settle_trust();
        // Rows a stored manifest excludes (the process stopped between the
        // manifest's commit and the forgetting) go now.
        replica.registry.take_forgotten();
        let excluded: Vec<RecordKey> = stored_keys
            .into_iter()
            .filter(|key| replica.registry.get(key).is_none())
            .collect();
        let mut base = vv;
        for origin in &dropped_origins {
            base.dots.remove(origin);
        }
        replica.vv = contiguous_vv(&replica.registry, &base);
        let own_max = replica
            .registry
            .max_counter(&replica.self_id)
            .max(replica.vv.get(&replica.self_id));
        replica.next_seq = own_max.saturating_add(1);
        if let Some(last) = last_own_hlc {
            replica.clock = HlcClock::resume(last);
        }
        if !resigned.is_empty() || !dropped_origins.is_empty() {
            replica.emit(Output::Persist {
                records: resigned,
                vv: replica.vv.clone(),
            });
        }
        if !excluded.is_empty() {
            replica.emit(Output::Forget { keys: excluded });
        }
        replica.vv_changed.clear();
        replica
    }

    /// This broker's node id.
    pub fn self_id(&self) -> &NodeId {
        &self.self_id
    }

    /// This broker's node name.
    pub fn self_name(&self) -> &Label {
        &self.self_name
    }

    /// The registry and its views.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every record held, tombstones included, in key order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.registry.records()
    }

    /// A deterministic hash of the live records; equal on converged replicas.
    pub fn state_digest(&self) -> u64 {
        self.registry.state_digest()
    }

    /// The version vector: per origin, up to which sequence number this
    /// replica has every record.
    pub fn vv(&self) -> &VClock<NodeId> {
        &self.vv
    }

    /// The sequence number the next local change will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Peers currently connected.
    pub fn connected_peers(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.keys()
    }

    /// How many records peers sent that were not signed by their origin
    /// (`INVALID_SIGNATURE`): each was refused, never stored nor relayed.
    pub fn invalid_signatures(&self) -> u64 {
        self.invalid_signatures
    }

    /// How many outputs were dropped because the queue was full.
    pub fn dropped_outputs(&self) -> u64 {
        self.dropped_outputs
    }

    /// The next output to act on.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Replica::handle_timeout`] must be called next; `None` until the
    /// replica has seen the time once.
    pub fn poll_timeout(&self) -> Option<u64> {
        let graft_at_ms = self
            .missing
            .values()
            .map(|missing| missing.graft_at_ms)
            .min();
        [self.anti_entropy_at_ms, self.announce_at_ms, graft_at_ms]
            .into_iter()
            .flatten()
            .min()
    }

    /// Writes a local record: validates it, gives it the next sequence number
    /// and a timestamp, stores it, asks the shell to persist it and pushes it
    /// to every connected peer. Putting the value a key already has changes
    /// nothing and returns the stored record.
    ///
    /// Definitions are edited with [`Replica::edit_definition`], which
    /// merges concurrent edits; a node record must carry this broker's name,
    /// and an instance must be on this broker's node.
    pub fn put(
        &mut self,
        now_ms: u64,
        name: &str,
        body: RecordBody,
    ) -> Result<Record, InvalidRecord> {
        self.schedule(now_ms);
        let kind = body.kind();
        if kind == RecordKind::Definition {
            return Err(InvalidRecord::InvalidField {
                field: "body",
                detail: "definitions change through edit_definition, which keeps concurrent edits"
                    .into(),
            });
        }
        self.check_local(name, &body)?;
        let key = RecordKey {
            origin: self.self_id.clone(),
            kind,
            name: name.to_owned(),
        };
        let unchanged = self
            .registry
            .get(&key)
            .filter(|stored| stored.body.as_ref() == Some(&body));
        if let Some(stored) = unchanged {
            return Ok(stored.clone());
        }
        if kind == RecordKind::Revocation {
            return self.revoke(now_ms, key, body);
        }
        self.write_local(now_ms, key, Some(body), OwnVv::Advance)
    }

    /// Deletes a local record by writing a tombstone. `Ok(None)` when there
    /// is no live record to delete. Revocations cannot be deleted.
    pub fn delete(
        &mut self,
        now_ms: u64,
        kind: RecordKind,
        name: &str,
    ) -> Result<Option<Record>, InvalidRecord> {
        self.schedule(now_ms);
        if kind == RecordKind::Revocation {
            return Err(InvalidRecord::RevocationDeleted);
        }
        let key = RecordKey {
            origin: self.self_id.clone(),
            kind,
            name: name.to_owned(),
        };
        match self.registry.get(&key) {
            Some(stored) if stored.body.is_some() => self
                .write_local(now_ms, key, None, OwnVv::Advance)
                .map(Some),
            _ => Ok(None),
        }
    }

    /// Edits a shared definition: reads the register merged from every
    /// broker's snapshot, writes `value` on top of everything read, and
    /// publishes the result as this broker's snapshot. Edits made
    /// concurrently elsewhere stay visible next to this one until an edit
    /// that has seen both supersedes them.
    pub fn edit_definition(
        &mut self,
        now_ms: u64,
        name: &Label,
        value: DefinitionValue,
    ) -> Result<Record, InvalidRecord> {
        self.schedule(now_ms);
        validate_definition_value(&value)?;
        let mut register = self.registry.definition_register(name.as_str());
        let add_ctx = register.read_ctx().derive_add_ctx(self.self_id.clone());
        let op = register.write(value, add_ctx);
        register.apply(op);
        let key = RecordKey {
            origin: self.self_id.clone(),
            kind: RecordKind::Definition,
            name: name.as_str().to_owned(),
        };
        self.write_local(
            now_ms,
            key,
            Some(RecordBody::Definition(DefinitionBody { register })),
            OwnVv::Advance,
        )
    }

    /// A peer passed the hello and may sync: sends it our digest at once.
    pub fn handle_connected(&mut self, now_ms: u64, peer: NodeId) -> Result<(), PeerRefused> {
        self.connect(now_ms, peer, false)
    }

    /// [`Replica::handle_connected`] for a peer the shell vouches for
    /// although the registry may not name it yet: the inviter or bootstrap
    /// peer a joining broker was given (pinned until the registry settles
    /// it). A broker catching up holds part of the admissions, maybe not
    /// this peer's, and would otherwise ignore the very deltas that bring
    /// them. Only a revocation in the registry refuses a vouched peer.
    pub fn handle_connected_vouched(
        &mut self,
        now_ms: u64,
        peer: NodeId,
    ) -> Result<(), PeerRefused> {
        self.connect(now_ms, peer, true)
    }

    fn connect(&mut self, now_ms: u64, peer: NodeId, vouched: bool) -> Result<(), PeerRefused> {
        self.schedule(now_ms);
        if peer == self.self_id {
            return Err(PeerRefused::SelfPeer);
        }
        let admitted = if vouched {
            !self.registry.is_revoked(&peer)
        } else {
            self.registry.may_sync(&peer)
        };
        if !admitted {
            return Err(PeerRefused::NotMember { peer });
        }
        if !self.peers.contains_key(&peer) && self.peers.len() >= PEERS_MAX {
            return Err(PeerRefused::TooManyPeers);
        }
        self.peers.insert(
            peer.clone(),
            PeerState {
                vouched,
                ..PeerState::default()
            },
        );
        self.send_digest(now_ms, peer, None);
        Ok(())
    }

    /// A peer's connection closed: nothing more is sent to it, and queued
    /// messages for it are dropped. Its last digest is kept for tombstone
    /// collection.
    pub fn handle_disconnected(&mut self, peer: &NodeId) {
        self.peers.remove(peer);
        self.outputs
            .retain(|output| !matches!(output, Output::Send { to, .. } if to == peer));
    }

    /// A message arrived from a connected peer.
    pub fn handle_message(&mut self, now_ms: u64, from: NodeId, message: SyncMessage) {
        self.schedule(now_ms);
        let ignored = if from == self.self_id {
            Some(IgnoredReason::FromSelf)
        } else if !self.peers.contains_key(&from) {
            Some(IgnoredReason::NotConnected)
        } else if !self.may_sync(&from) {
            Some(IgnoredReason::NotMember)
        } else if let Err(err) = message.check_limits() {
            Some(IgnoredReason::OverLimit {
                detail: err.to_string(),
            })
        } else {
            None
        };
        if let Some(reason) = ignored {
            self.emit_event(SyncEvent::MessageIgnored {
                from,
                message: message.name(),
                reason,
            });
            return;
        }
        match message {
            SyncMessage::Push { records } => self.on_records(now_ms, &from, records, None),
            SyncMessage::Digest { vv } => self.on_digest(now_ms, &from, vv),
            SyncMessage::Delta {
                records,
                covers,
                since,
                more,
            } => self.on_records(
                now_ms,
                &from,
                records,
                Some(DeltaRange {
                    covers,
                    since,
                    more,
                }),
            ),
            SyncMessage::IHave { have } => self.on_ihave(now_ms, &from, have),
            SyncMessage::Summary { hash } => self.on_summary(now_ms, &from, hash),
            SyncMessage::Buckets { hashes } => self.on_buckets(now_ms, &from, &hashes),
            SyncMessage::DigestPart { mask, vv } => {
                self.on_digest_in(now_ms, &from, vv, Some(mask));
            }
            SyncMessage::Graft { since } => self.on_graft(&from, since),
            SyncMessage::Prune { origins } => {
                if let Some(peer) = self.peers.get_mut(&from) {
                    for origin in origins {
                        if peer.lazy.len() < ORIGINS_MAX {
                            peer.lazy.insert(origin);
                        }
                    }
                }
            }
        }
    }

    /// Runs what is due: anti-entropy (a digest to every connected peer, or
    /// to one on a partial view, then tombstone collection, and the next
    /// round scheduled), gathered announcements, grafts of records
    /// announced but not received.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.rebase_deadlines(now_ms);
        if self.announce_at_ms.is_some_and(|at_ms| at_ms <= now_ms) {
            self.send_announcements();
        }
        if self
            .missing
            .values()
            .any(|missing| missing.graft_at_ms <= now_ms)
        {
            self.graft_overdue(now_ms);
        }
        match self.anti_entropy_at_ms {
            Some(at_ms) if now_ms >= at_ms => {
                let mut peers = self.sync_peers();
                if self.config.partial_view && !peers.is_empty() {
                    // One random peer a round: with views a broker's
                    // peers are few and a change reaches everyone by
                    // pushes; anti-entropy repairs what a push lost.
                    let idx = (self.rng.next_u64() % peers.len() as u64) as usize;
                    peers = vec![peers.swap_remove(idx)];
                }
                let hash = self.summary_hash();
                for peer in peers {
                    self.send(peer, SyncMessage::Summary { hash });
                }
                self.write_manifest_if_due(now_ms);
                let interval_ms = self.next_interval_ms();
                self.anti_entropy_at_ms = Some(now_ms.saturating_add(interval_ms));
            }
            Some(_) => {}
            None => self.schedule(now_ms),
        }
    }

    /// Writes this replica's manifest ([`ManifestBody`]: the sequence
    /// numbers of its own records that still hold a value) when it holds a
    /// tombstone of its own, or when a peer showed it an older manifest of
    /// its own that it lacks. Every replica that takes the manifest forgets
    /// the origin's tombstones and replaced versions below it, so a
    /// tombstone lives about one anti-entropy round, whichever members are
    /// online. Returns the manifest written, if any; none when the live
    /// records are scattered over more than [`MANIFEST_RUNS_MAX`] runs (the
    /// tombstones then stay).
    pub fn write_manifest_if_due(&mut self, now_ms: u64) -> Option<Record> {
        let mut live: Vec<CounterRun> = Vec::new();
        let mut tombstones = false;
        for record in self.registry.records_after(&self.self_id, 0) {
            if record.key.kind == RecordKind::Manifest {
                continue;
            }
            if record.body.is_none() {
                tombstones = true;
                continue;
            }
            let counter = record.dot.counter;
            match live.last_mut() {
                Some(run) if counter < run.first + run.len => {}
                Some(run) if counter == run.first + run.len => run.len += 1,
                _ => live.push(CounterRun {
                    first: counter,
                    len: 1,
                }),
            }
        }
        if !(tombstones || self.manifest_due) || live.len() > MANIFEST_RUNS_MAX {
            return None;
        }
        self.manifest_due = false;
        let key = RecordKey {
            origin: self.self_id.clone(),
            kind: RecordKind::Manifest,
            name: String::new(),
        };
        let body = RecordBody::Manifest(ManifestBody { live });
        self.write_local(now_ms, key, Some(body), OwnVv::Advance)
            .ok()
    }

    /// Hands the keys a manifest made the registry forget to the shell
    /// (after the persist that may have stored some of them).
    fn emit_forgotten(&mut self) {
        let mut keys = self.registry.take_forgotten();
        // A key forgotten and then written again by the same input (a
        // message with the manifest before the key's new version) is in
        // that persist: deleting it after would lose the new version.
        keys.retain(|key| self.registry.get(key).is_none());
        if keys.is_empty() {
            return;
        }
        for key in &keys {
            self.session_keys.remove(key);
        }
        self.emit(Output::Forget { keys });
    }

    // Helpers below.

    fn check_local(&self, name: &str, body: &RecordBody) -> Result<(), InvalidRecord> {
        match body {
            RecordBody::Node(node) if node.node_name != self.self_name.as_str() => {
                Err(InvalidRecord::InvalidField {
                    field: "node_name",
                    detail: format!(
                        "`{}` is not this broker's name `{}`",
                        truncate(&node.node_name, 128),
                        self.self_name
                    ),
                })
            }
            RecordBody::Instance(_) => {
                // A name that does not parse is reported by `validate`.
                let node = AgentName::parse(name)
                    .ok()
                    .and_then(|agent| agent.node().cloned());
                match node {
                    Some(node) if node != self.self_name => {
                        Err(InvalidRecord::InstanceNodeMismatch {
                            name: truncate(name, 128),
                            instance_node: node.to_string(),
                            self_node: self.self_name.to_string(),
                        })
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Writes a revocation, then re-admits in this broker's name every
    /// member that lost its membership only because its chain of admissions
    /// ran through the revoked node (see the membership rule in
    /// [`crate::registry`]): revoking a member does not cut off the brokers
    /// it invited.
    fn revoke(
        &mut self,
        now_ms: u64,
        key: RecordKey,
        body: RecordBody,
    ) -> Result<Record, InvalidRecord> {
        let members_before: Vec<(NodeId, [u8; 32])> = self
            .registry
            .members()
            .iter()
            .filter_map(|node_id| Some((node_id.clone(), self.registry.admitted_key(node_id)?)))
            .collect();
        let revocation = self.write_local(now_ms, key, Some(body), OwnVv::Advance)?;
        for (node_id, public_key) in members_before {
            if node_id == self.self_id
                || self.registry.is_member(&node_id)
                || self.registry.is_revoked(&node_id)
            {
                continue;
            }
            let Some(earlier) = self.admission_of(&node_id) else {
                continue;
            };
            let readmission = RecordBody::Admission(AdmissionBody {
                public_key,
                node_name: earlier.node_name.clone(),
                admitted_by: self.self_id.clone(),
                method: earlier.method,
            });
            let key = RecordKey {
                origin: self.self_id.clone(),
                kind: RecordKind::Admission,
                name: node_id.as_str().to_owned(),
            };
            self.write_local(now_ms, key, Some(readmission), OwnVv::Advance)?;
        }
        Ok(revocation)
    }

    /// A live admission of `node_id`, by any origin.
    fn admission_of(&self, node_id: &NodeId) -> Option<&AdmissionBody> {
        self.registry
            .records()
            .find_map(|record| match &record.body {
                Some(RecordBody::Admission(body))
                    if record.key.kind == RecordKind::Admission
                        && record.key.name == node_id.as_str() =>
                {
                    Some(body)
                }
                _ => None,
            })
    }

    fn write_local(
        &mut self,
        now_ms: u64,
        key: RecordKey,
        body: Option<RecordBody>,
        own_vv: OwnVv,
    ) -> Result<Record, InvalidRecord> {
        let mut record = Record {
            key,
            dot: Dot::new(self.self_id.clone(), self.next_seq),
            hlc: self.clock.last(),
            body,
            origin_key: self.signing_key.verifying_key().to_bytes(),
            signature: RecordSignature::UNSIGNED,
        };
        validate_unsigned(&record)?;
        record.hlc = self.clock.now(now_ms);
        sign(&mut record, &self.signing_key);
        self.next_seq += 1;
        let members_before = self.registry.members().clone();
        self.registry.apply(record.clone());
        self.session_keys.insert(record.key.clone());
        if own_vv == OwnVv::Advance {
            let self_id = self.self_id.clone();
            self.advance_contiguous(&self_id);
        }
        let vv = self.take_vv_changes();
        self.emit(Output::Persist {
            records: vec![record.clone()],
            vv,
        });
        self.emit_forgotten();
        self.disseminate(now_ms, None, std::slice::from_ref(&record));
        self.report_membership_changes(&members_before);
        Ok(record)
    }

    /// Hands records new to this replica on to every peer but `from`
    /// (where they came from): pushed to a peer eager for their origin,
    /// announced to one lazy for it.
    fn disseminate(&mut self, now_ms: u64, from: Option<&NodeId>, records: &[Record]) {
        let mut pushes = Vec::new();
        let mut announced = false;
        for (peer, state) in &mut self.peers {
            if Some(peer) == from || !self.registry.may_sync(peer) {
                continue;
            }
            let mut eager = Vec::new();
            for record in records {
                let origin = &record.key.origin;
                if !state.lazy.contains(origin) {
                    eager.push(record.clone());
                } else if record.dot.counter > state.announce.get(origin) {
                    state.announce.apply(record.dot.clone());
                    announced = true;
                }
            }
            if !eager.is_empty() {
                pushes.push((peer.clone(), eager));
            }
        }
        if announced && self.announce_at_ms.is_none() {
            self.announce_at_ms = Some(now_ms.saturating_add(self.config.announce_delay_ms));
        }
        for (peer, records) in pushes {
            self.send(peer, SyncMessage::Push { records });
        }
    }

    /// Sends every lazy peer what was gathered for it.
    fn send_announcements(&mut self) {
        self.announce_at_ms = None;
        let mut announcements = Vec::new();
        for (peer, state) in &mut self.peers {
            if !state.announce.is_empty() {
                announcements.push((peer.clone(), std::mem::take(&mut state.announce)));
            }
        }
        for (peer, have) in announcements {
            self.send(peer, SyncMessage::IHave { have });
        }
    }

    /// Whether a record of another origin is one this replica holds (same
    /// key and number) or one its vector covers (it holds that number or a
    /// newer version of the key, or collected the key's tombstone): such a
    /// record is stale and cannot change anything. Own records go the full
    /// way, for the lost-database recovery.
    fn already_has(&self, record: &Record) -> bool {
        let origin = &record.key.origin;
        *origin != self.self_id && self.has_seen(origin, record.dot.counter)
    }

    /// Whether this replica has the record of `origin` numbered `counter`,
    /// or a newer version of its key.
    fn has_seen(&self, origin: &NodeId, counter: u64) -> bool {
        if *origin == self.self_id && counter < self.next_seq {
            return true;
        }
        self.vv.get(origin) >= counter || self.registry.has_counter(origin, counter)
    }

    fn on_ihave(&mut self, now_ms: u64, from: &NodeId, have: VClock<NodeId>) {
        for (origin, counter) in have.dots {
            if self.has_seen(&origin, counter) {
                continue;
            }
            // A tree whose parent here is gone (crashed, or left the view)
            // will not deliver: graft at once instead of waiting for it.
            let orphaned = self
                .parents
                .get(&origin)
                .is_some_and(|parent| !self.peers.contains_key(parent));
            let graft_at_ms = if orphaned {
                now_ms
            } else {
                now_ms.saturating_add(self.config.graft_timeout_ms)
            };
            if !self.missing.contains_key(&origin) && self.missing.len() >= ORIGINS_MAX {
                // Anti-entropy fetches it.
                continue;
            }
            let missing = self.missing.entry(origin).or_insert_with(|| Missing {
                counter,
                graft_at_ms,
                announcers: VecDeque::new(),
            });
            missing.counter = missing.counter.max(counter);
            missing.graft_at_ms = missing.graft_at_ms.min(graft_at_ms);
            if !missing.announcers.contains(from) && missing.announcers.len() < ANNOUNCERS_MAX {
                missing.announcers.push_back(from.clone());
            }
        }
    }

    /// Asks the next announcer of each overdue origin for what it
    /// announced, and for pushes from now on.
    fn graft_overdue(&mut self, now_ms: u64) {
        let overdue: Vec<NodeId> = self
            .missing
            .iter()
            .filter(|(_, missing)| missing.graft_at_ms <= now_ms)
            .map(|(origin, _)| origin.clone())
            .collect();
        let mut grafts: BTreeMap<NodeId, VClock<NodeId>> = BTreeMap::new();
        for origin in overdue {
            let Some(mut missing) = self.missing.remove(&origin) else {
                continue;
            };
            if self.has_seen(&origin, missing.counter) {
                continue;
            }
            while let Some(announcer) = missing.announcers.pop_front() {
                if self.peers.contains_key(&announcer) && self.may_sync(&announcer) {
                    let have = self.vv.get(&origin);
                    grafts
                        .entry(announcer)
                        .or_default()
                        .dots
                        .insert(origin.clone(), have);
                    break;
                }
            }
            if !missing.announcers.is_empty() {
                missing.graft_at_ms = now_ms.saturating_add(self.config.graft_timeout_ms);
                self.missing.insert(origin, missing);
            }
        }
        for (peer, since) in grafts {
            if let Some(state) = self.peers.get_mut(&peer) {
                for origin in since.dots.keys() {
                    state.lazy.remove(origin);
                }
            }
            self.send(peer, SyncMessage::Graft { since });
        }
    }

    /// A peer lacks what we announced: it gets the records of each origin
    /// after its counter, and pushes from now on.
    fn on_graft(&mut self, from: &NodeId, since: VClock<NodeId>) {
        if let Some(peer) = self.peers.get_mut(from) {
            for origin in since.dots.keys() {
                peer.lazy.remove(origin);
            }
        }
        let mut pushes = Vec::new();
        let mut chunk = ChunkBuilder::new(
            self.config.sync_message_bytes_max,
            self.config.records_per_delta_max,
        );
        for (origin, after) in &since.dots {
            for record in self.registry.records_after(origin, *after) {
                let record_bytes = postcard::experimental::serialized_size(record).unwrap_or(0);
                if !chunk.has_room_for(record_bytes) {
                    pushes.push(chunk.finish_push());
                }
                chunk.push(record.clone(), record_bytes);
            }
        }
        if !chunk.is_empty() {
            pushes.push(chunk.finish_push());
        }
        for push in pushes {
            self.send(from.clone(), push);
        }
    }

    /// The hash a [`SyncMessage::Summary`] carries: FNV-1a over the
    /// version vector's entries, in origin order. Equal hashes mean equal
    /// vectors (barring a 64-bit collision, which the next change of either
    /// side undoes), and the vector says what a digest would. (Records held
    /// past the vector, out of order, are not in it: they reach a replica
    /// from a peer whose vector is ahead, whose summary differs. Neither is
    /// the newest sequence number held: tombstones are collected at
    /// different times, so it would keep idle replicas' hashes apart.)
    fn summary_hash(&self) -> u64 {
        vv_hash(self.vv.dots.iter())
    }

    /// The hash of each bucket of the version vector
    /// ([`SyncMessage::Buckets`]), the same function as the summary's.
    fn bucket_hashes(&self) -> Vec<u64> {
        let mut buckets: Vec<Vec<(&NodeId, &u64)>> = vec![Vec::new(); VV_BUCKETS];
        for entry in &self.vv.dots {
            buckets[entry.0.vv_bucket()].push(entry);
        }
        buckets
            .into_iter()
            .map(|entries| vv_hash(entries.into_iter()))
            .collect()
    }

    /// A periodic round's summary: equal means in sync; different starts a
    /// digest exchange, of the whole vector when it is small, else of the
    /// buckets that differ (the peer learns which from our bucket hashes).
    fn on_summary(&mut self, now_ms: u64, from: &NodeId, hash: u64) {
        if hash == self.summary_hash() {
            return;
        }
        if self.vv.dots.len() > VV_BUCKETS {
            let hashes = self.bucket_hashes();
            self.send(from.clone(), SyncMessage::Buckets { hashes });
        } else {
            self.send_digest(now_ms, from.clone(), None);
        }
    }

    /// A peer's bucket hashes: a digest of the buckets that differ.
    fn on_buckets(&mut self, now_ms: u64, from: &NodeId, hashes: &[u64]) {
        let mask = self
            .bucket_hashes()
            .iter()
            .zip(hashes)
            .enumerate()
            .filter(|(_, (ours, theirs))| ours != theirs)
            .fold(0u64, |mask, (bucket, _)| mask | (1 << bucket));
        if mask != 0 {
            self.send_digest(now_ms, from.clone(), Some(mask));
        }
    }

    fn on_digest(&mut self, now_ms: u64, from: &NodeId, peer_vv: VClock<NodeId>) {
        self.on_digest_in(now_ms, from, peer_vv, None);
    }

    /// A digest, of the whole vector (`mask` `None`) or of the buckets
    /// `mask` names: sends what the peer lacks of those origins, and our
    /// digest of them when the peer has more.
    fn on_digest_in(
        &mut self,
        now_ms: u64,
        from: &NodeId,
        mut peer_vv: VClock<NodeId>,
        mask: Option<u64>,
    ) {
        if let Some(mask) = mask {
            peer_vv.dots.retain(|origin, _| in_buckets(mask, origin));
        }
        let own_seen = peer_vv.get(&self.self_id);
        if own_seen >= self.next_seq {
            self.recover_own_sequence(now_ms, own_seen);
        }
        for chunk in self.delta_chunks(&peer_vv, mask) {
            self.send(from.clone(), chunk);
        }
        let peer_has_more = peer_vv
            .dots
            .iter()
            .any(|(origin, counter)| *counter > self.vv.get(origin));
        if peer_has_more {
            self.send_digest(now_ms, from.clone(), mask);
        }
    }

    /// Sends our digest to `peer` (of the whole vector, or of the buckets
    /// `mask` names) and remembers that it awaits an answer.
    fn send_digest(&mut self, now_ms: u64, peer: NodeId, mask: Option<u64>) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.digest_outstanding_since_ms = Some(now_ms);
        }
        let message = match mask {
            None => SyncMessage::Digest {
                vv: self.vv.clone(),
            },
            Some(mask) => {
                let mut vv = VClock::new();
                for (origin, counter) in &self.vv.dots {
                    if in_buckets(mask, origin) {
                        vv.dots.insert(origin.clone(), *counter);
                    }
                }
                SyncMessage::DigestPart { mask, vv }
            }
        };
        self.send(peer, message);
    }

    fn on_records(
        &mut self,
        now_ms: u64,
        from: &NodeId,
        records: Vec<Record>,
        delta: Option<DeltaRange>,
    ) {
        // Both are O(members) to copy, and a large mesh handles many
        // messages: membership changes only with admissions and
        // revocations, and the vector's changes are tracked as they happen.
        let members_before = records
            .iter()
            .any(|record| {
                matches!(
                    record.key.kind,
                    RecordKind::Admission | RecordKind::Revocation
                )
            })
            .then(|| self.registry.members().clone());
        let mut vv_changed = false;
        let mut accepted = Vec::new();
        // Per origin in the message: whether any of its records was new or
        // refused (a push of only known records of an origin is pruned).
        let mut useful: BTreeMap<NodeId, bool> = BTreeMap::new();
        let mut touched = BTreeSet::new();
        let mut own_seen = 0;
        let mut skew: Option<ClockSkew> = None;
        for record in records {
            if self.already_has(&record) {
                // Known, so stale whatever else it says: no signature to
                // check (on a partial view most copies are duplicates).
                useful.entry(record.key.origin.clone()).or_insert(false);
                continue;
            }
            if let Err(error) = validate(&record) {
                if matches!(error, InvalidRecord::InvalidSignature { .. }) {
                    self.invalid_signatures += 1;
                }
                useful.insert(record.key.origin.clone(), true);
                self.reject(RecordSource::Peer(from.clone()), &record, error);
                continue;
            }
            let origin = record.key.origin.clone();
            useful.entry(origin.clone()).or_insert(false);
            let new_origin = self.registry.max_counter(&origin) == 0 && self.vv.get(&origin) == 0;
            if new_origin && self.registry.origins().count() >= ORIGINS_MAX {
                let error = InvalidRecord::TooLarge {
                    field: "origins",
                    len: ORIGINS_MAX + 1,
                    max: ORIGINS_MAX,
                };
                useful.insert(origin, true);
                self.reject(RecordSource::Peer(from.clone()), &record, error);
                continue;
            }
            if let Err(err) = self.clock.observe(now_ms, record.hlc) {
                skew = match skew {
                    Some(worst) if worst.ahead_ms >= err.ahead_ms => Some(worst),
                    _ => Some(err),
                };
            }
            if origin == self.self_id {
                own_seen = own_seen.max(record.dot.counter);
                if self.session_keys.contains(&record.key) {
                    continue;
                }
                if record.key.kind == RecordKind::Manifest {
                    // A manifest of ours this replica lacks is from before
                    // a lost database: it would forget what was written
                    // since. Never taken; the next round writes over it.
                    let held = self.registry.manifest(&self.self_id);
                    if held.is_none_or(|(counter, _)| counter < record.dot.counter) {
                        self.manifest_due = true;
                    }
                    continue;
                }
            }
            if self.registry.apply_unsettled(record.clone()) != Applied::Stale {
                useful.insert(origin.clone(), true);
                touched.insert(origin);
                accepted.push(record);
            }
        }
        self.registry.settle_trust();
        if let Some(range) = &delta {
            own_seen = own_seen.max(range.covers.get(&self.self_id));
        }
        // Recovery resets the own vector entry, so it must run before the
        // delta's range is applied below.
        if own_seen >= self.next_seq {
            self.recover_own_sequence(now_ms, own_seen);
            vv_changed = true;
        }
        let mut caught_up = None;
        let pushed = delta.is_none();
        if let Some(range) = delta {
            let mut whole_range_applied = true;
            for (origin, covered) in &range.covers.dots {
                let have = self.vv.get(origin);
                if have < range.since.get(origin) {
                    whole_range_applied = false;
                } else if *covered > have {
                    self.vv.dots.insert(origin.clone(), *covered);
                    self.vv_changed.insert(origin.clone());
                    vv_changed = true;
                    touched.insert(origin.clone());
                }
            }
            if !range.more {
                caught_up = Some(whole_range_applied);
            }
        }
        for origin in &touched {
            vv_changed |= self.advance_contiguous(origin);
            let arrived = self
                .missing
                .get(origin)
                .is_some_and(|missing| self.has_seen(origin, missing.counter));
            if arrived {
                self.missing.remove(origin);
            }
        }
        if self.config.partial_view && !accepted.is_empty() {
            // New to this replica, so new along this path: passed on to
            // the rest of the view (a replica that had it stops the flood),
            // whether a push or a delta brought it (after a heal, deltas
            // carry the other side's records). Before this replica's own
            // commit: the records are their origins' (signed, committed
            // there), so passing them on waits for no disk here, and each
            // hop costs a network trip rather than a commit. A delta chunk
            // is within the message limits, so the push of a part of it is
            // too.
            self.disseminate(now_ms, Some(from), &accepted);
            if pushed {
                for record in &accepted {
                    let origin = &record.key.origin;
                    if self.parents.len() < ORIGINS_MAX || self.parents.contains_key(origin) {
                        self.parents.insert(origin.clone(), from.clone());
                    }
                }
            }
        }
        if self.config.partial_view && pushed {
            // Everything pushed of these origins was known: the sender is a
            // second path to here for them. Announcements will do.
            let mut pruned = Vec::new();
            if let Some(peer) = self.peers.get_mut(from) {
                for (origin, _) in useful.into_iter().filter(|(_, useful)| !useful) {
                    if peer.lazy.len() < ORIGINS_MAX && peer.lazy.insert(origin.clone()) {
                        pruned.push(origin);
                    }
                }
            }
            if !pruned.is_empty() {
                self.send(from.clone(), SyncMessage::Prune { origins: pruned });
            }
        }
        if !accepted.is_empty() || vv_changed {
            let vv = self.take_vv_changes();
            self.emit(Output::Persist {
                records: accepted,
                vv,
            });
        }
        self.emit_forgotten();
        if let Some(skew) = skew {
            self.emit_event(SyncEvent::ClockSkew {
                from: from.clone(),
                skew,
            });
        }
        if let Some(before) = members_before {
            self.report_membership_changes(&before);
        }
        let peer = self.peers.get_mut(from);
        if let (Some(caught_up), Some(peer)) = (caught_up, peer) {
            peer.digest_outstanding_since_ms = None;
            let newly_caught_up = caught_up && !peer.caught_up;
            peer.caught_up = caught_up;
            if newly_caught_up {
                self.emit_event(SyncEvent::PeerCaughtUp { peer: from.clone() });
            }
        }
    }

    /// See the module documentation on lost databases.
    fn recover_own_sequence(&mut self, now_ms: u64, highest_seen: u64) {
        self.next_seq = highest_seen.saturating_add(1);
        // The own entry counted records written since the restart under
        // numbers that old records also carry, so it proves nothing.
        self.vv.dots.remove(&self.self_id);
        let stale: Vec<RecordKey> = self
            .session_keys
            .iter()
            .filter(|key| {
                self.registry
                    .get(key)
                    .is_some_and(|record| record.dot.counter <= highest_seen)
            })
            .cloned()
            .collect();
        let mut reissued = 0;
        for key in stale {
            if key.kind == RecordKind::Manifest {
                // Its runs name the numbers being replaced: a fresh one is
                // written next round, once the rest carry their new numbers.
                self.manifest_due = true;
                continue;
            }
            let body = self
                .registry
                .get(&key)
                .and_then(|record| record.body.clone());
            // While stale own records are still indexed under reused
            // numbers, advancing the own entry would count them again.
            if self.write_local(now_ms, key, body, OwnVv::Hold).is_ok() {
                reissued += 1;
            }
        }
        // Only genuine old records and the reissued ones are left now.
        let self_id = self.self_id.clone();
        self.advance_contiguous(&self_id);
        if self.vv.get(&self.self_id) > 0 {
            let vv = self.take_vv_changes();
            self.emit(Output::Persist {
                records: Vec::new(),
                vv,
            });
        }
        self.emit_event(SyncEvent::OwnSequenceRecovered {
            highest_seen,
            reissued,
        });
        for peer in self.sync_peers() {
            self.send_digest(now_ms, peer, None);
        }
    }

    /// The delta answering a digest: every record the peer lacks, ordered by
    /// origin then sequence number, cut into chunks under the configured
    /// size and count. Each chunk says which range of each origin it
    /// completes; the last one has `more: false` and is sent even when empty,
    /// so the peer learns it is caught up.
    fn delta_chunks(&self, peer_vv: &VClock<NodeId>, mask: Option<u64>) -> Vec<SyncMessage> {
        let mut chunks = Vec::new();
        let mut chunk = ChunkBuilder::new(
            self.config.sync_message_bytes_max,
            self.config.records_per_delta_max,
        );
        let origins: BTreeSet<&NodeId> = self
            .registry
            .origins()
            .chain(self.vv.dots.keys())
            .filter(|origin| mask.is_none_or(|mask| in_buckets(mask, origin)))
            .collect();
        for origin in origins {
            let ours = self.vv.get(origin);
            let mut since = peer_vv.get(origin);
            let mut last_in_chunk = since;
            for record in self.registry.records_after(origin, since) {
                let record_bytes = postcard::experimental::serialized_size(record).unwrap_or(0);
                if !chunk.has_room_for(record_bytes) {
                    let covered = last_in_chunk.min(ours);
                    if covered > since {
                        chunk.cover(origin, since, covered);
                        since = covered;
                    }
                    chunks.push(chunk.finish(true));
                }
                chunk.push(record.clone(), record_bytes);
                last_in_chunk = record.dot.counter;
            }
            if ours > since {
                if !chunk.has_room_for_cover() {
                    chunks.push(chunk.finish(true));
                }
                chunk.cover(origin, since, ours);
            }
        }
        chunks.push(chunk.finish(false));
        chunks
    }

    /// Moves `origin`'s vector entry over the records held right after it;
    /// returns whether it moved.
    fn advance_contiguous(&mut self, origin: &NodeId) -> bool {
        let had = self.vv.get(origin);
        let mut counter = had;
        while self.registry.has_counter(origin, counter + 1) {
            counter += 1;
        }
        if counter > had {
            self.vv.apply(Dot::new(origin.clone(), counter));
            self.vv_changed.insert(origin.clone());
        }
        counter > had
    }

    /// The vector entries changed since the last persist, for the next.
    fn take_vv_changes(&mut self) -> VClock<NodeId> {
        let mut changes = VClock::new();
        for origin in std::mem::take(&mut self.vv_changed) {
            let counter = self.vv.get(&origin);
            if counter > 0 {
                changes.dots.insert(origin, counter);
            }
        }
        changes
    }

    fn report_membership_changes(&mut self, before: &BTreeSet<NodeId>) {
        if before == self.registry.members() {
            return;
        }
        let after = self.registry.members().clone();
        for node_id in after.difference(before) {
            self.emit_event(SyncEvent::MemberAdmitted {
                node_id: node_id.clone(),
            });
        }
        for node_id in before.difference(&after) {
            let reason = if self.registry.is_revoked(node_id) {
                MemberRemovedReason::Revoked
            } else if self
                .registry
                .conflicts()
                .iter()
                .any(|conflict| &conflict.node_id == node_id)
            {
                MemberRemovedReason::KeyConflict
            } else {
                MemberRemovedReason::AdmissionWithdrawn
            };
            self.emit_event(SyncEvent::MemberRemoved {
                node_id: node_id.clone(),
                reason,
            });
        }
    }

    fn may_sync(&self, peer: &NodeId) -> bool {
        self.registry.may_sync(peer)
            || (self.peers.get(peer).is_some_and(|state| state.vouched)
                && !self.registry.is_revoked(peer))
    }

    fn sync_peers(&self) -> Vec<NodeId> {
        self.peers
            .keys()
            .filter(|peer| self.may_sync(peer))
            .cloned()
            .collect()
    }

    /// Brings in a deadline further away than its own delay: it was set
    /// before the clock went back (a wall clock stepped back, a laptop
    /// resumed), and would hold anti-entropy, announcements or grafts back
    /// by as much as the clock moved. It falls due now. Harmless when the
    /// clock is steady: no deadline is ever set further away.
    fn rebase_deadlines(&mut self, now_ms: u64) {
        let round_max = self.config.anti_entropy_interval_ms + self.config.anti_entropy_jitter_ms;
        if self
            .anti_entropy_at_ms
            .is_some_and(|at_ms| at_ms > now_ms.saturating_add(round_max))
        {
            self.anti_entropy_at_ms = Some(now_ms);
        }
        let announce_max = now_ms.saturating_add(self.config.announce_delay_ms);
        if self
            .announce_at_ms
            .is_some_and(|at_ms| at_ms > announce_max)
        {
            self.announce_at_ms = Some(now_ms);
        }
        let graft_max = now_ms.saturating_add(self.config.graft_timeout_ms);
        for missing in self.missing.values_mut() {
            if missing.graft_at_ms > graft_max {
                missing.graft_at_ms = now_ms;
            }
        }
    }

    /// Starts the anti-entropy timer the first time the replica sees the time.
    fn schedule(&mut self, now_ms: u64) {
        if self.anti_entropy_at_ms.is_none() {
            let interval_ms = self.next_interval_ms();
            self.anti_entropy_at_ms = Some(now_ms.saturating_add(interval_ms));
        }
    }

    fn next_interval_ms(&mut self) -> u64 {
        let jitter_ms = self.config.anti_entropy_jitter_ms;
        let offset_ms = self.rng.next_u64() % (2 * jitter_ms + 1);
        self.config.anti_entropy_interval_ms - jitter_ms + offset_ms
    }

    fn reject(&mut self, source: RecordSource, record: &Record, error: InvalidRecord) {
        self.emit_event(SyncEvent::RecordRejected {
            source,
            origin: record.key.origin.clone(),
            kind: record.key.kind,
            name: truncate(&record.key.name, 128),
            error,
        });
    }

    fn send(&mut self, to: NodeId, message: SyncMessage) {
        self.emit(Output::Send { to, message });
    }

    fn emit_event(&mut self, event: SyncEvent) {
        self.emit(Output::Event(event));
    }

    fn emit(&mut self, output: Output) {
        if self.outputs.len() >= OUTPUT_QUEUE_MAX {
            let is_push = |output: &Output| {
                matches!(
                    output,
                    Output::Send {
                        message: SyncMessage::Push { .. },
                        ..
                    }
                )
            };
            let is_send = |output: &Output| matches!(output, Output::Send { .. });
            let is_event = |output: &Output| matches!(output, Output::Event(_));
            let victim = self
                .outputs
                .iter()
                .position(is_push)
                .or_else(|| self.outputs.iter().position(is_send))
                .or_else(|| self.outputs.iter().position(is_event));
            if let Some(idx) = victim {
                self.outputs.remove(idx);
                self.dropped_outputs += 1;
            } else if is_send(&output) || is_event(&output) {
                self.dropped_outputs += 1;
                return;
            }
        }
        self.outputs.push_back(output);
    }
}

/// Whether a local write may advance the own version vector entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnVv {
    Advance,
    Hold,
}

/// The range part of a received delta chunk.
struct DeltaRange {
    covers: VClock<NodeId>,
    since: VClock<NodeId>,
    more: bool,
}

/// Accumulates one delta chunk under a byte and record budget. Byte counts
/// are upper bounds, so the encoded chunk never exceeds the budget unless a
/// single record does.
struct ChunkBuilder {
    bytes_max: usize,
    records_max: usize,
    bytes: usize,
    records: Vec<Record>,
    covers: VClock<NodeId>,
    since: VClock<NodeId>,
}

impl ChunkBuilder {
    fn new(bytes_max: usize, records_max: usize) -> ChunkBuilder {
        ChunkBuilder {
            bytes_max,
            records_max,
            bytes: DELTA_OVERHEAD_BYTES,
            records: Vec::new(),
            covers: VClock::new(),
            since: VClock::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.covers.is_empty()
    }

    /// Whether a record of `record_bytes` fits, keeping room to cover the
    /// origin it belongs to. An empty chunk takes any record, so chunking
    /// always makes progress.
    fn has_room_for(&self, record_bytes: usize) -> bool {
        self.is_empty()
            || (self.records.len() < self.records_max
                && self.bytes + record_bytes + 2 * VV_ENTRY_BYTES_MAX <= self.bytes_max)
    }

    fn has_room_for_cover(&self) -> bool {
        self.is_empty() || self.bytes + 2 * VV_ENTRY_BYTES_MAX <= self.bytes_max
    }

    fn push(&mut self, record: Record, record_bytes: usize) {
        self.bytes += record_bytes;
        self.records.push(record);
    }

    fn cover(&mut self, origin: &NodeId, since: u64, covered: u64) {
        self.bytes += 2 * VV_ENTRY_BYTES_MAX;
        self.covers.apply(Dot::new(origin.clone(), covered));
        if since > 0 {
            self.since.apply(Dot::new(origin.clone(), since));
        }
    }

    /// The records gathered so far as a push (no range: a graft's answer).
    fn finish_push(&mut self) -> SyncMessage {
        let finished = std::mem::replace(self, ChunkBuilder::new(self.bytes_max, self.records_max));
        SyncMessage::Push {
            records: finished.records,
        }
    }

    fn finish(&mut self, more: bool) -> SyncMessage {
        let finished = std::mem::replace(self, ChunkBuilder::new(self.bytes_max, self.records_max));
        SyncMessage::Delta {
            records: finished.records,
            covers: finished.covers,
            since: finished.since,
            more,
        }
    }
}

/// FNV-1a over version vector entries, in origin order: the hash of a
/// [`SyncMessage::Summary`] (all entries) and of each of a
/// [`SyncMessage::Buckets`]' buckets.
fn vv_hash<'a>(entries: impl Iterator<Item = (&'a NodeId, &'a u64)>) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for (origin, counter) in entries {
        let bytes = origin
            .as_str()
            .as_bytes()
            .iter()
            .copied()
            .chain(counter.to_le_bytes());
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
    }
    hash
}

/// Whether `origin` is in one of the buckets `mask` names.
fn in_buckets(mask: u64, origin: &NodeId) -> bool {
    mask & (1 << origin.vv_bucket()) != 0
}

#[cfg(test)]
mod tests;
