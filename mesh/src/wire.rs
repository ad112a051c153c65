//! The sync wire format: every type that crosses the network between
//! brokers for registry sync, the protocol version, and the one encoding.
//!
//! A sync message body is the [postcard] encoding of the protocol version (a
//! `u16`) followed by one [`SyncMessage`]. The transport puts each body in a
//! length-prefixed frame; framing and IO live outside this crate.
//!
//! Three messages make the protocol:
//! - [`SyncMessage::Push`]: the records a broker just changed, sent at once
//!   to every connected peer.
//! - [`SyncMessage::Digest`]: "here is what I have", one counter per origin.
//! - [`SyncMessage::Delta`]: the records the other side lacks, in chunks no
//!   larger than [`SYNC_MESSAGE_BYTES_MAX`].
//!
//! On partial views three more shape the push into a tree
//! ([`crate::sync`] explains it): [`SyncMessage::IHave`] announces records
//! without carrying them, [`SyncMessage::Graft`] asks for announced records
//! and for pushes from then on, and [`SyncMessage::Prune`] asks for
//! announcements only. [`SyncMessage::Summary`] stands for a digest in
//! periodic rounds: a hash, answered with a digest only when they differ.
//!
//! The replicated data itself is a set of [`Record`]s. Their rules (who may
//! write what, which version wins, what is valid) are in
//! [`crate::registry`]; the state machine that exchanges them is
//! [`crate::sync`]. Node ids travel as 16 raw bytes in binary encodings and
//! as 32 hex characters in human-readable ones, so a digest stays small.
//!
//! Decoding never panics: any byte string either decodes or gets a typed
//! [`WireError`] with a stable code.

use std::borrow::Cow;
use std::fmt;

use crdts::{Dot, MVReg, VClock};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::output::FlightOutput;
use crate::usage::{FailureCode, Usage};

pub use crate::hlc::Hlc;
use crate::lifecycle::{EndpointState, Harness};

/// The sync protocol version carried by every message body. A broker refuses
/// bodies of any other version with [`WireError::UnsupportedVersion`].
/// Version 2 added the origin's key and signature to every record; version 1
/// brokers cannot decode its records, so the two do not talk. Version 3
/// added `worktrees` to instance records. Version 4 added approval
/// records and the frames that decide them. Version 5 added the partial
/// views' frames and tree dissemination (`IHave`, `Graft`, `Prune`).
/// Version 6 added manifest records ([`ManifestBody`]). Version 7 added
/// `via` to node records (members a node is reached through when none of
/// its addresses answers).
pub const PROTOCOL_VERSION: u16 = 7;

/// The TLS ALPN protocol id of the mesh. It names the same version as
/// [`PROTOCOL_VERSION`], so mismatched brokers fail at the handshake.
pub const ALPN: &[u8] = b"scout-mesh/7";

/// The largest sync message body, in bytes. Large enough for the biggest
/// valid record plus two full version vectors with room to spare (see the
/// assertion below), small enough that one message never holds a peer's IO
/// loop or memory for long. Deltas are chunked to stay under it.
pub const SYNC_MESSAGE_BYTES_MAX: usize = 256 * 1024;

/// The most records one `Push` or `Delta` may carry. Bounds the work of
/// validating and applying one message, independently of record size.
pub const RECORDS_PER_DELTA_MAX: usize = 512;

/// The most origins a version vector on the wire may name. Every broker that
/// ever wrote a record is an origin, so this is far above the size of a live
/// mesh; it exists so that a hostile digest cannot make a broker allocate or
/// iterate without bound.
pub const ORIGINS_MAX: usize = 2048;

/// Bytes of a node id: the first 16 bytes of the SHA-256 of the node's
/// Ed25519 public key, printed as 32 lower-case hex characters.
pub const NODE_ID_BYTES: usize = 16;

/// The most bytes one version vector entry takes in postcard: a node id and
/// a varint counter of at most 10 bytes.
pub const VV_ENTRY_BYTES_MAX: usize = NODE_ID_BYTES + 10;

/// The most bytes a version vector takes in postcard: a varint length and
/// [`ORIGINS_MAX`] entries.
pub const VV_BYTES_MAX: usize = 5 + ORIGINS_MAX * VV_ENTRY_BYTES_MAX;

/// The most bytes a `Delta` spends outside its records: the version, the
/// variant, the records' length, the `more` flag and the two version vectors'
/// lengths (their entries are counted separately).
pub const DELTA_OVERHEAD_BYTES: usize = 3 + 1 + 5 + 1 + 5 + 5;

// A chunk must always fit one record of the largest valid size together with
// full `covers` and `since` vectors, or chunking could not make progress.
const _: () = assert!(
    DELTA_OVERHEAD_BYTES + crate::registry::RECORD_BYTES_MAX + 2 * VV_BYTES_MAX
        <= SYNC_MESSAGE_BYTES_MAX
);
// A digest of the largest allowed vector must fit in one message.
const _: () = assert!(3 + 1 + VV_BYTES_MAX <= SYNC_MESSAGE_BYTES_MAX);

/// A node id: 32 lower-case hex characters derived from the node's Ed25519
/// public key (which is not checked here; this crate only sees the id).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

/// A string that is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id `{input}`: expected {} lower-case hex characters", 2 * NODE_ID_BYTES)]
pub struct InvalidNodeId {
    /// The rejected input, cut short when it is long.
    pub input: String,
}

impl InvalidNodeId {
    /// The stable code of this error.
    pub const CODE: &'static str = "INVALID_NODE_ID";

    /// The stable code of this error, [`InvalidNodeId::CODE`].
    pub fn code(&self) -> &'static str {
        Self::CODE
    }
}

impl NodeId {
    /// Validates a node id: exactly 32 characters of `0-9a-f`.
    pub fn parse(input: &str) -> Result<NodeId, InvalidNodeId> {
        let valid = input.len() == 2 * NODE_ID_BYTES
            && input
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if valid {
            Ok(NodeId(input.to_owned()))
        } else {
            Err(InvalidNodeId {
                input: truncate(input, 4 * NODE_ID_BYTES),
            })
        }
    }

    /// The node id of 16 raw bytes.
    pub fn from_bytes(bytes: [u8; NODE_ID_BYTES]) -> NodeId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(2 * NODE_ID_BYTES);
        for byte in bytes {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        NodeId(text)
    }

    /// The node id of an Ed25519 public key: the first 16 bytes of its
    /// SHA-256. Pure computation, so the core can check that an admission's
    /// node id belongs to its key.
    pub fn of_public_key(public_key: &[u8; 32]) -> NodeId {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(public_key);
        let mut bytes = [0u8; NODE_ID_BYTES];
        bytes.copy_from_slice(&digest[..NODE_ID_BYTES]);
        NodeId::from_bytes(bytes)
    }

    /// The 16 raw bytes of this node id.
    pub fn to_bytes(&self) -> [u8; NODE_ID_BYTES] {
        let mut bytes = [0; NODE_ID_BYTES];
        let digits = self.0.as_bytes();
        for (idx, byte) in bytes.iter_mut().enumerate() {
            *byte = (hex_value(digits[2 * idx]) << 4) | hex_value(digits[2 * idx + 1]);
        }
        bytes
    }

    /// The 32 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The value of one hex digit that [`NodeId::parse`] already accepted.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = InvalidNodeId;

    fn from_str(input: &str) -> Result<NodeId, InvalidNodeId> {
        NodeId::parse(input)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.0)
        } else {
            self.to_bytes().serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NodeId, D::Error> {
        if deserializer.is_human_readable() {
            let text = <Cow<'de, str>>::deserialize(deserializer)?;
            NodeId::parse(&text).map_err(serde::de::Error::custom)
        } else {
            // Every 16-byte string is some node id, so this cannot fail
            // beyond running out of input.
            let bytes = <[u8; NODE_ID_BYTES]>::deserialize(deserializer)?;
            Ok(NodeId::from_bytes(bytes))
        }
    }
}

/// What a record is about. Ordered as declared, which is also the order of
/// records of one origin in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// The origin broker itself: its name, addresses and versions. Named `""`.
    Node,
    /// One agent instance the origin runs. Named by its canonical full name,
    /// `@definition@node#workspace`.
    Instance,
    /// The origin admitted a node to the mesh. Named by the admitted node id.
    Admission,
    /// The origin revoked a node. Named by the revoked node id.
    Revocation,
    /// The origin's copy of a shared agent definition. Named by the
    /// definition's label.
    Definition,
    /// A request for a person's decision, owned by the broker running the
    /// agent that asked. Named by the approval id (`apr_` and hex).
    Approval,
    /// The origin's list of its own live records: which of its sequence
    /// numbers below the manifest's own still hold a value. Named `""`.
    Manifest,
}

impl RecordKind {
    /// Every kind, in order.
    pub const ALL: &'static [RecordKind] = &[
        RecordKind::Node,
        RecordKind::Instance,
        RecordKind::Admission,
        RecordKind::Revocation,
        RecordKind::Definition,
        RecordKind::Approval,
        RecordKind::Manifest,
    ];

    /// The lower-case word for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Node => "node",
            RecordKind::Instance => "instance",
            RecordKind::Admission => "admission",
            RecordKind::Revocation => "revocation",
            RecordKind::Definition => "definition",
            RecordKind::Approval => "approval",
            RecordKind::Manifest => "manifest",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one replicated fact: only `origin` ever writes under it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordKey {
    /// The broker that owns and writes this record.
    pub origin: NodeId,
    /// What the record is about.
    pub kind: RecordKind,
    /// Which one of its kind (rules per [`RecordKind`] variant).
    pub name: String,
}

/// One version of one replicated fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Which fact this is.
    pub key: RecordKey,
    /// The origin's sequence number for this change: the actor is the origin
    /// and the counter grows by one for every change the origin makes,
    /// deletes included. For one key, the higher counter wins.
    pub dot: Dot<NodeId>,
    /// When the origin made the change.
    pub hlc: Hlc,
    /// The value; `None` is a tombstone (the fact was deleted).
    pub body: Option<RecordBody>,
    /// The raw Ed25519 public key of the origin, which signed this version.
    /// Its node id ([`NodeId::of_public_key`]) must be the key's origin.
    pub origin_key: [u8; 32],
    /// The origin's Ed25519 signature over [`Record::signed_bytes`]: the
    /// proof that the origin, and not whoever relayed the record, wrote it.
    pub signature: RecordSignature,
}

/// The domain-separation prefix of the bytes a record signature covers, so
/// a record signature can never be mistaken for a signature over anything
/// else the node key signs (TLS handshakes, future message kinds).
pub const RECORD_SIGNATURE_DOMAIN: &[u8] = b"scout-mesh/record-signature/v1\0";

/// Bytes of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

impl Record {
    /// Whether this version is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.body.is_none()
    }

    /// The bytes the origin signs: the domain prefix, then the postcard
    /// encoding of the key, the dot, the timestamp and the body. Postcard is
    /// deterministic for these types (maps are ordered, registers keep their
    /// entries in the order they travel), so a receiver re-encoding what it
    /// decoded gets the same bytes the origin signed.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = RECORD_SIGNATURE_DOMAIN.to_vec();
        // As for `encode`: these types always encode.
        let fields = postcard::to_allocvec(&(&self.key, &self.dot, &self.hlc, &self.body))
            .expect("record fields always encode");
        bytes.extend_from_slice(&fields);
        bytes
    }
}

/// An Ed25519 signature, 64 bytes. Serde has no impl for arrays this long,
/// so it travels as a fixed-size tuple of bytes (64 bytes in postcard).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordSignature(pub [u8; SIGNATURE_BYTES]);

impl RecordSignature {
    /// All zeroes: the signature of a record nobody signed yet (a record
    /// being built, or one stored by a release that did not sign).
    pub const UNSIGNED: RecordSignature = RecordSignature([0; SIGNATURE_BYTES]);
}

impl fmt::Debug for RecordSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordSignature(")?;
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

impl Serialize for RecordSignature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(SIGNATURE_BYTES)?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for RecordSignature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RecordSignature, D::Error> {
        struct SignatureVisitor;

        impl<'de> serde::de::Visitor<'de> for SignatureVisitor {
            type Value = RecordSignature;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{SIGNATURE_BYTES} signature bytes")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RecordSignature, A::Error> {
                let mut bytes = [0u8; SIGNATURE_BYTES];
                for (idx, byte) in bytes.iter_mut().enumerate() {
                    *byte = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(idx, &self))?;
                }
                Ok(RecordSignature(bytes))
            }
        }

        deserializer.deserialize_tuple(SIGNATURE_BYTES, SignatureVisitor)
    }
}

/// The value of a record, one variant per [`RecordKind`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordBody {
    /// See [`NodeBody`].
    Node(NodeBody),
    /// See [`InstanceBody`].
    Instance(InstanceBody),
    /// See [`AdmissionBody`].
    Admission(AdmissionBody),
    /// See [`RevocationBody`].
    Revocation(RevocationBody),
    /// See [`DefinitionBody`].
    Definition(DefinitionBody),
    /// See [`ApprovalBody`].
    Approval(ApprovalBody),
    /// See [`ManifestBody`].
    Manifest(ManifestBody),
}

impl RecordBody {
    /// The kind of record this body belongs in.
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordBody::Node(_) => RecordKind::Node,
            RecordBody::Instance(_) => RecordKind::Instance,
            RecordBody::Admission(_) => RecordKind::Admission,
            RecordBody::Revocation(_) => RecordKind::Revocation,
            RecordBody::Definition(_) => RecordKind::Definition,
            RecordBody::Approval(_) => RecordKind::Approval,
            RecordBody::Manifest(_) => RecordKind::Manifest,
        }
    }
}

/// A broker, as it describes itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBody {
    /// The node name (`laptop`), a DNS label, lower-case.
    pub node_name: String,
    /// Where its mesh endpoint listens, as `SocketAddr` strings.
    pub addresses: Vec<String>,
    /// The port of its local HTTP API.
    pub http_port: u16,
    /// The Scout release it runs (`0.1.0`).
    pub scout_version: String,
    /// The newest sync protocol version it speaks.
    pub protocol_version: u16,
    /// Members it holds connections to, through which a request can reach
    /// it as a relayed one when none of its addresses answers (a machine
    /// behind a NAT); at most [`crate::registry::NODE_VIA_MAX`], each once,
    /// never the node itself. A hint: a relay passes a request on over the
    /// connection it holds to the target, or dials the target if it has
    /// none.
    pub via: Vec<NodeId>,
}

/// An agent instance and how it can be reached right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceBody {
    /// The agent CLI its endpoint runs.
    pub harness: Harness,
    /// The workspace (git branch or worktree); the same as in its name.
    pub workspace: String,
    /// Its working directory, for display only (never used as a path by
    /// another broker).
    pub cwd: String,
    /// Its endpoint's state.
    pub endpoint_state: EndpointState,
    /// How many flights it is working on.
    pub active_flights: u32,
    /// Whether its definition makes a git worktree on this node for a
    /// mentioned workspace that has no instance yet.
    pub worktrees: bool,
}

/// Where an approval request stands. Only `Pending` may change, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a person.
    Pending,
    /// A person (or a standing rule) allowed it.
    Approved,
    /// A person (or a standing rule) refused it.
    Denied,
    /// Its deadline passed first; it counts as denied.
    Expired,
}

impl ApprovalState {
    /// The lower-case word for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
        }
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request for a person's decision, as every member sees it. The owner
/// (the record's origin, which runs the asking agent) is the only writer,
/// so the decision it commits is the one every member ends up showing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalBody {
    /// Who asked: an instance name (`@fabric@devbox#main`).
    pub agent: String,
    /// What is asked for, as a dotted word (`work_order.cancel`,
    /// `tool.Bash`, `question`).
    pub action: String,
    /// What it is about, for people (`git push origin main`).
    pub summary: String,
    /// The invocation the agent was running when it asked, if any.
    pub invocation: Option<String>,
    /// When it was asked, unix ms on the owner.
    pub created_unix_ms: u64,
    /// When it counts as denied if nobody answered, unix ms on the owner.
    pub deadline_unix_ms: u64,
    /// Where it stands.
    pub state: ApprovalState,
    /// Who decided (`operator@laptop`, `rule:…`, `deadline`), once decided.
    pub decided_by: Option<String>,
    /// When it was decided, unix ms on the owner.
    pub decided_unix_ms: Option<u64>,
    /// The decider's note.
    pub note: String,
}

/// A person's answer to an approval, sent to the approval's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    /// The approval (`apr_…`).
    pub id: String,
    /// Allow (`true`) or refuse.
    pub approve: bool,
    /// Who answered on the sending broker (`operator`, a token's name);
    /// the owner adds the sending node's name.
    pub actor: String,
    /// A note for the agent and the audit.
    pub note: String,
    /// Also allow (or refuse) the same action of the same agent from now on.
    pub always: bool,
}

/// How an admitted node got in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionMethod {
    /// It presented a one-time invite code.
    Invite,
    /// Its key is on the admitting broker's allow-list.
    AllowList,
    /// It created the mesh.
    Founder,
}

/// A node admitted to the mesh by the record's origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionBody {
    /// The admitted node's raw Ed25519 public key, which its TLS identity
    /// must match.
    pub public_key: [u8; 32],
    /// The admitted node's name when it was admitted.
    pub node_name: String,
    /// The node that admitted it; always the record's origin.
    pub admitted_by: NodeId,
    /// How it got in.
    pub method: AdmissionMethod,
}

/// A node revoked from the mesh by the record's origin. Permanent: a
/// revocation cannot be deleted, and it wins over every admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationBody {
    /// Why, for people.
    pub reason: String,
    /// The node that revoked it; always the record's origin.
    pub revoked_by: NodeId,
}

/// What an origin still holds: the sequence numbers, below the manifest
/// record's own, of its records that have a value, as runs in ascending
/// order. Every other record of the origin numbered below the manifest is
/// gone (deleted, or replaced by a newer version of its key), so a replica
/// holding the manifest forgets such a record, tombstones included, and
/// refuses it if it arrives later: this is how tombstones are collected
/// without hearing from every member (see `scout_mesh::sync`). Signed by
/// the origin like every record, so only it can say what it deleted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ManifestBody {
    /// Ascending, neither overlapping nor touching, all below the
    /// manifest's own sequence number.
    pub live: Vec<CounterRun>,
}

impl ManifestBody {
    /// Whether the origin's record numbered `counter` (below the
    /// manifest's own number) still holds a value.
    pub fn lists(&self, counter: u64) -> bool {
        let idx = self.live.partition_point(|run| run.first <= counter);
        idx > 0 && counter - self.live[idx - 1].first < self.live[idx - 1].len
    }
}

/// `len` consecutive sequence numbers from `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRun {
    /// The first number of the run.
    pub first: u64,
    /// How many numbers it holds (at least one).
    pub len: u64,
}

/// One value of a shared agent definition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DefinitionValue {
    /// What the agent is for.
    pub description: String,
    /// Other labels the agent answers to.
    pub aliases: Vec<String>,
}

/// An origin's snapshot of a multi-writer definition register.
///
/// The registry's view of a definition merges every origin's snapshot, so
/// concurrent edits on different brokers are all kept and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DefinitionBody {
    /// The register: each value with the vector clock of its write.
    pub register: MVReg<DefinitionValue, NodeId>,
}

/// One value of a [`DefinitionBody`] register with the clock of its write.
///
/// This is also the register's wire layout: `crdts` keeps the entries
/// private, and a register encodes exactly as a list of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinitionEntry {
    /// Which writes this value has seen, its own included.
    pub clock: VClock<NodeId>,
    /// The value.
    pub value: DefinitionValue,
}

/// A register whose entries could not be read or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("definition register does not encode as a list of entries: {detail}")]
pub struct RegisterLayoutError {
    /// What postcard said.
    pub detail: String,
}

impl DefinitionBody {
    /// The register's entries in the order it keeps them.
    pub fn entries(&self) -> Result<Vec<DefinitionEntry>, RegisterLayoutError> {
        let bytes = postcard::to_allocvec(&self.register).map_err(layout_error)?;
        postcard::from_bytes(&bytes).map_err(layout_error)
    }

    /// A register holding exactly `entries`, as received.
    pub fn from_entries(
        entries: &[DefinitionEntry],
    ) -> Result<DefinitionBody, RegisterLayoutError> {
        let bytes = postcard::to_allocvec(entries).map_err(layout_error)?;
        let register = postcard::from_bytes(&bytes).map_err(layout_error)?;
        Ok(DefinitionBody { register })
    }
}

fn layout_error(err: postcard::Error) -> RegisterLayoutError {
    RegisterLayoutError {
        detail: err.to_string(),
    }
}

impl PartialEq for DefinitionBody {
    /// Registers are equal when they hold the same entries in any order.
    ///
    /// `MVReg`'s own equality panics on a register with duplicate entries,
    /// which a peer could send; this comparison never panics.
    fn eq(&self, other: &DefinitionBody) -> bool {
        let sorted = |body: &DefinitionBody| {
            body.entries().map(|entries| {
                let mut pairs: Vec<(Vec<(NodeId, u64)>, DefinitionValue)> = entries
                    .into_iter()
                    .map(|entry| (entry.clock.dots.into_iter().collect(), entry.value))
                    .collect();
                pairs.sort();
                pairs
            })
        };
        match (sorted(self), sorted(other)) {
            (Ok(left), Ok(right)) => left == right,
            _ => false,
        }
    }
}

/// One sync message between two brokers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// Records the sender just changed or, on a partial view, just
    /// received: sent at once to every connected peer it pushes to.
    Push {
        /// The changed records, usually one.
        records: Vec<Record>,
    },
    /// Anti-entropy: for every origin, the highest sequence number up to
    /// which the sender has every record.
    Digest {
        /// The sender's version vector.
        vv: VClock<NodeId>,
    },
    /// The records the receiver's digest showed it lacks, in chunks.
    Delta {
        /// Every record of the chunk's range the receiver lacks, ordered by
        /// origin and then sequence number.
        records: Vec<Record>,
        /// For each origin, the sequence number up to which the receiver has
        /// every record once it has applied this chunk on top of `since`.
        covers: VClock<NodeId>,
        /// For each origin in `covers`, where this chunk's range starts. The
        /// receiver advances its vector to `covers` only if it already has
        /// everything up to `since`, so a lost or reordered chunk can never
        /// make it believe it has records it lacks.
        since: VClock<NodeId>,
        /// Whether more chunks of the same reply follow.
        more: bool,
    },
    /// Announces records without carrying them: for each origin, the
    /// highest sequence number among records of it the sender received
    /// since its last announcement to this peer.
    IHave {
        /// Origin and sequence number, one entry per origin.
        have: VClock<NodeId>,
    },
    /// Asks for the records announced by an `IHave` that did not arrive,
    /// and for pushes from now on: for each origin, the sequence number up
    /// to which the sender has every record; the receiver answers with its
    /// records of that origin after it.
    Graft {
        /// The sender's counter for each origin it asks about.
        since: VClock<NodeId>,
    },
    /// "I had what you pushed of these origins": announce their records to
    /// me from now on instead of pushing them.
    Prune {
        /// The origins.
        origins: Vec<NodeId>,
    },
    /// Anti-entropy's periodic round in a few bytes: a hash of the
    /// sender's version vector and of the newest sequence number it holds
    /// of every origin. A receiver whose own hash differs answers with its
    /// `Digest`, and the exchange goes on as after any digest; equal hashes
    /// end the round, so an idle mesh sends no vectors.
    Summary {
        /// The hash.
        hash: u64,
    },
    /// Anti-entropy on a large vector, in answer to a `Summary` that did
    /// not match: the hash of each of the [`VV_BUCKETS`] buckets of the
    /// sender's version vector (an origin's bucket is the first byte of
    /// its id modulo [`VV_BUCKETS`]). The receiver answers with a
    /// `DigestPart` of the buckets that differ, so a round trades the
    /// entries of the origins that changed, not the whole vector.
    Buckets {
        /// One hash per bucket, [`VV_BUCKETS`] of them.
        hashes: Vec<u64>,
    },
    /// A digest of some buckets only: the sender's vector entries of the
    /// origins in the buckets `mask` names (bit `i`: bucket `i`). Answered
    /// as a `Digest` is, within those buckets.
    DigestPart {
        /// The buckets.
        mask: u64,
        /// The sender's entries in them.
        vv: VClock<NodeId>,
    },
}

/// Buckets a version vector is summarised in ([`SyncMessage::Buckets`]);
/// one bit each in a [`SyncMessage::DigestPart`]'s mask.
pub const VV_BUCKETS: usize = 64;

impl NodeId {
    /// The bucket of this origin in a summarised vector.
    pub fn vv_bucket(&self) -> usize {
        usize::from(self.to_bytes()[0]) % VV_BUCKETS
    }
}

impl SyncMessage {
    /// A short word for the variant, for logs and events.
    pub fn name(&self) -> &'static str {
        match self {
            SyncMessage::Push { .. } => "push",
            SyncMessage::Digest { .. } => "digest",
            SyncMessage::Delta { .. } => "delta",
            SyncMessage::IHave { .. } => "ihave",
            SyncMessage::Graft { .. } => "graft",
            SyncMessage::Prune { .. } => "prune",
            SyncMessage::Summary { .. } => "summary",
            SyncMessage::Buckets { .. } => "buckets",
            SyncMessage::DigestPart { .. } => "digest_part",
        }
    }

    /// Checks the counts a message may carry ([`RECORDS_PER_DELTA_MAX`],
    /// [`ORIGINS_MAX`]); sizes are bounded by the encoding already.
    pub fn check_limits(&self) -> Result<(), WireError> {
        let too_many = |what: &str, len: usize, max: usize| {
            Err(WireError::MalformedFrame {
                detail: format!("{} has {len} {what}; the limit is {max}", self.name()),
            })
        };
        match self {
            SyncMessage::Push { records } if records.len() > RECORDS_PER_DELTA_MAX => {
                too_many("records", records.len(), RECORDS_PER_DELTA_MAX)
            }
            SyncMessage::Buckets { hashes } if hashes.len() != VV_BUCKETS => {
                Err(WireError::MalformedFrame {
                    detail: format!(
                        "buckets has {} hashes; it must have {VV_BUCKETS}",
                        hashes.len()
                    ),
                })
            }
            SyncMessage::Digest { vv: clock }
            | SyncMessage::DigestPart { vv: clock, .. }
            | SyncMessage::IHave { have: clock }
            | SyncMessage::Graft { since: clock }
                if clock.dots.len() > ORIGINS_MAX =>
            {
                too_many("origins", clock.dots.len(), ORIGINS_MAX)
            }
            SyncMessage::Prune { origins } if origins.len() > ORIGINS_MAX => {
                too_many("origins", origins.len(), ORIGINS_MAX)
            }
            SyncMessage::Delta { records, .. } if records.len() > RECORDS_PER_DELTA_MAX => {
                too_many("records", records.len(), RECORDS_PER_DELTA_MAX)
            }
            SyncMessage::Delta { covers, since, .. }
                if covers.dots.len() > ORIGINS_MAX || since.dots.len() > ORIGINS_MAX =>
            {
                too_many(
                    "origins",
                    covers.dots.len().max(since.dots.len()),
                    ORIGINS_MAX,
                )
            }
            _ => Ok(()),
        }
    }
}

/// A sync message body that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes are not a well-formed message of this protocol version, or
    /// the message carries more items than the protocol allows.
    #[error("malformed sync message: {detail}")]
    MalformedFrame {
        /// What was wrong.
        detail: String,
    },
    /// The body is larger than [`SYNC_MESSAGE_BYTES_MAX`].
    #[error("sync message is {len} bytes; the limit is {max}")]
    FrameTooLarge {
        /// The body's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is of a protocol version this broker does not speak.
    #[error(
        "sync protocol version {version} is not supported; this broker speaks {PROTOCOL_VERSION}"
    )]
    UnsupportedVersion {
        /// The version the body carried.
        version: u16,
    },
}

impl WireError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            WireError::MalformedFrame { .. } => "MALFORMED_FRAME",
            WireError::FrameTooLarge { .. } => "FRAME_TOO_LARGE",
            WireError::UnsupportedVersion { .. } => "UNSUPPORTED_VERSION",
        }
    }
}

/// Encodes a message body: the protocol version, then the message.
pub fn encode(message: &SyncMessage) -> Vec<u8> {
    // Postcard fails only on sequences of unknown length, which none of
    // these types produce, so a failure here is a bug in this module, not
    // bad input.
    postcard::to_allocvec(&(PROTOCOL_VERSION, message)).expect("sync messages always encode")
}

/// Decodes a message body, checking its size, version and limits.
pub fn decode(bytes: &[u8]) -> Result<SyncMessage, WireError> {
    if bytes.len() > SYNC_MESSAGE_BYTES_MAX {
        return Err(WireError::FrameTooLarge {
            len: bytes.len(),
            max: SYNC_MESSAGE_BYTES_MAX,
        });
    }
    let (version, rest) = postcard::take_from_bytes::<u16>(bytes).map_err(malformed)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion { version });
    }
    let (message, rest) = postcard::take_from_bytes::<SyncMessage>(rest).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(WireError::MalformedFrame {
            detail: format!("{} bytes after the end of the message", rest.len()),
        });
    }
    message.check_limits()?;
    Ok(message)
}

fn malformed(err: postcard::Error) -> WireError {
    WireError::MalformedFrame {
        detail: err.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Mesh frames: what the transport carries on each QUIC stream.
// ---------------------------------------------------------------------------

/// The largest frame body the transport reads, in bytes. Sync messages are
/// chunked far below this; the rest is room for invocation payloads. A length
/// prefix above it is refused before any body byte is read.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;

const _: () = assert!(FRAME_BYTES_MAX >= 2 * SYNC_MESSAGE_BYTES_MAX);

/// Addresses a hello or join may announce: a broker has few interfaces.
pub const HELLO_ADDRESSES_MAX: usize = 16;

/// Bytes of an error frame's message, so a peer's error cannot be large.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// Bytes of an error frame's code. Codes are short UPPER_SNAKE words
/// (`MALFORMED_FRAME`); anything longer is not a code.
pub const ERROR_CODE_BYTES_MAX: usize = 64;

/// Bytes of an address string (`ip:port`), in frames and node records: a
/// bracketed IPv6 address with a scope id and a port is under 64.
pub const ADDRESS_BYTES_MAX: usize = 64;

/// Bytes of a node name in a frame: a node name is one DNS label.
pub const NODE_NAME_BYTES_MAX: usize = crate::names::LABEL_LEN_MAX;

/// Bytes of an id minted by a broker (invocation and conversation ids).
/// Brokers mint uuid strings of 36 bytes; the limit leaves room for a
/// prefix without letting a peer send a page of text as an id.
pub const ID_BYTES_MAX: usize = 128;

/// Bytes of an agent name in a frame (the target as mentioned, the
/// instance it resolved to): the longest valid full name.
pub const AGENT_NAME_BYTES_MAX: usize = crate::names::NAME_BYTES_MAX;

/// Bytes of a machine-readable reason word (`resolve_reason`): the words
/// are short snake_case names of an enum variant.
pub const REASON_BYTES_MAX: usize = 64;

/// Bytes of a flight update's detail: a few sentences for people, not
/// output (output has its own limit and is split across updates). Generous,
/// because a failure detail may quote an error chain; senders cut longer
/// ones with [`truncate`].
pub const DETAIL_BYTES_MAX: usize = 16 * 1024;

/// Bytes of a mesh id.
pub const MESH_ID_BYTES: usize = 16;

/// The id of one mesh: the first 16 bytes of the SHA-256 of the founding
/// broker's public key, so two meshes never share an id by accident.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeshId(pub [u8; MESH_ID_BYTES]);

impl MeshId {
    /// The mesh id founded by the broker holding `public_key`.
    pub fn founded_by(public_key: &[u8; 32]) -> MeshId {
        MeshId(NodeId::of_public_key(public_key).to_bytes())
    }

    /// Parses the 32 hex characters of a mesh id.
    pub fn parse(input: &str) -> Result<MeshId, InvalidNodeId> {
        NodeId::parse(input).map(|id| MeshId(id.to_bytes()))
    }
}

impl fmt::Display for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&NodeId::from_bytes(self.0), f)
    }
}

impl fmt::Debug for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshId({self})")
    }
}

/// The first request on every mesh connection, from the dialer; the
/// acceptor answers with its own in [`MeshFrame::HelloAck`]. A peer counts as
/// connected only after this exchange, never after the TLS handshake alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version.
    pub protocol_version: u16,
    /// The sender's node id; must match the key of the TLS handshake.
    pub node_id: NodeId,
    /// The sender's node name.
    pub node_name: String,
    /// The mesh the sender belongs to; must match the receiver's.
    pub mesh_id: MeshId,
    /// Where the sender can be dialed (`ip:port`), for the address book.
    pub addresses: Vec<String>,
}

/// A request to join a mesh with a one-time invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Which invite.
    pub invite_id: [u8; 8],
    /// The invite's secret.
    pub secret: [u8; 16],
    /// The joiner's node name.
    pub node_name: String,
    /// Where the joiner can be dialed.
    pub addresses: Vec<String>,
}

/// The inviter's answer to a valid [`JoinRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccepted {
    /// The mesh joined.
    pub mesh_id: MeshId,
    /// The broker that admitted the joiner.
    pub admitted_by: NodeId,
}

/// The answer to a pairing probe: whether this broker holds a short code
/// that a joiner may try now. It says nothing about the code itself, so a
/// joiner asks every broker it finds and tries only the one that holds a
/// code: a failed attempt burns the code, so guessing at every broker in
/// turn would burn codes for nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairOffer {
    /// Where this broker's short code stands.
    pub short_code: OfferedCode,
    /// The mesh the broker would admit a joiner to (bound into the
    /// exchange, so a lie here only makes the exchange fail).
    pub mesh_id: MeshId,
    /// The broker's node name, for messages to people.
    pub node_name: String,
}

/// Where a broker's short code stands, as a pairing probe learns it. It
/// tells a joiner whether to try (and, for a code that cannot be tried,
/// why) without saying anything about the code itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferedCode {
    /// No short code was issued here.
    None,
    /// A short code waits for its one attempt.
    Pending,
    /// The short code was used, burned, or is being tried right now.
    Used,
    /// The short code expired unused.
    Expired,
}

/// The joiner's first message of a short-code exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStart {
    /// The joiner's SPAKE2 message.
    pub pake: Vec<u8>,
    /// The joiner's node name.
    pub node_name: String,
    /// Where the joiner can be dialed.
    pub addresses: Vec<String>,
}

/// The inviter's answer to [`PairStart`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairReply {
    /// The inviter's SPAKE2 message.
    pub pake: Vec<u8>,
    /// The inviter's key confirmation.
    pub confirmation: [u8; crate::pairing::CONFIRMATION_BYTES],
}

/// An error answered on a stream before it is closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Stable code (`MALFORMED_FRAME`, `UNKNOWN_PEER`, `WRONG_MESH`, ...).
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

/// Declares [`ErrorCode`]: each variant with the one word it travels as.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => $word:literal,)*) => {
        /// The stable code of an [`ErrorFrame`]. It travels as its word (a
        /// string, so the encoding is the one of protocol 2), and a word this
        /// build does not know (a newer peer's) is kept as
        /// [`ErrorCode::Other`] rather than refused: receivers branch on the
        /// codes they know and show the rest.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// Any other code: a refusal's own code (`INVITE_USED`,
            /// `UNTRUSTED_MANIFEST`, a store error) or one this build does
            /// not know.
            Other(String),
        }

        impl ErrorCode {
            /// The word.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$variant => $word,)*
                    ErrorCode::Other(word) => word,
                }
            }

            /// The code a word means.
            pub fn from_word(word: &str) -> ErrorCode {
                match word {
                    $($word => ErrorCode::$variant,)*
                    other => ErrorCode::Other(other.to_owned()),
                }
            }
        }
    };
}

error_codes! {
    /// The frame could not be decoded.
    MalformedFrame => "MALFORMED_FRAME",
    /// The frame is longer than the receiver reads.
    FrameTooLarge => "FRAME_TOO_LARGE",
    /// The frame's protocol version is not spoken here.
    UnsupportedVersion => "UNSUPPORTED_VERSION",
    /// A request other than a hello arrived before the hello.
    HelloRequired => "HELLO_REQUIRED",
    /// The hello did not complete in time.
    HelloTimeout => "HELLO_TIMEOUT",
    /// A broker dialled itself.
    SelfPeer => "SELF_PEER",
    /// The peer is not a member.
    UnknownPeer => "UNKNOWN_PEER",
    /// The peer's membership was revoked.
    RevokedPeer => "REVOKED_PEER",
    /// The peer belongs to another mesh.
    WrongMesh => "WRONG_MESH",
    /// A join request that is not well formed.
    BadJoin => "BAD_JOIN",
    /// A registry record whose signature does not verify.
    InvalidSignature => "INVALID_SIGNATURE",
    /// The broker is starting and does not route yet: no refusal, ask again.
    NotReady => "NOT_READY",
    /// An invoke whose origin is not its sender.
    BadInvoke => "BAD_INVOKE",
    /// The instance is not an agent of the receiver, or cannot start.
    AgentOffline => "AGENT_OFFLINE",
    /// A peer that is not the invocation's origin asked about its flight.
    NotOrigin => "NOT_ORIGIN",
    /// A peer that is not the flight's owner reported on it.
    NotOwner => "NOT_OWNER",
    /// No such invocation.
    InvocationNotFound => "INVOCATION_NOT_FOUND",
    /// A prompt carrying terminal control sequences.
    InvalidPrompt => "INVALID_PROMPT",
    /// The agent's manifest is not trusted on its machine.
    UntrustedManifest => "UNTRUSTED_MANIFEST",
    /// A request the receiver does not serve on this stream.
    UnexpectedFrame => "UNEXPECTED_FRAME",
    /// The approval was decided before this answer arrived.
    AlreadyDecided => "ALREADY_DECIDED",
    /// The approval's deadline passed before this answer arrived.
    ApprovalExpired => "APPROVAL_EXPIRED",
    /// The approval is not pending here (unknown, or gone).
    ApprovalNotPending => "APPROVAL_NOT_PENDING",
    /// A relayed frame that is forged, misdirected or not relayable
    /// ([`crate::relay::RelayError`]).
    BadRelay => "BAD_RELAY",
    /// The relay could not reach the target either.
    RelayUnreachable => "RELAY_UNREACHABLE",
    /// The relay or the target has too many relayed requests of this
    /// sender under way; ask again later.
    RelayBusy => "RELAY_BUSY",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ErrorCode {
    fn from(word: &str) -> ErrorCode {
        ErrorCode::from_word(word)
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, word: &&str) -> bool {
        self.as_str() == *word
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ErrorCode, D::Error> {
        let word = String::deserialize(deserializer)?;
        Ok(ErrorCode::from_word(&word))
    }
}

/// One frame of a mesh stream. Every stream carries one request and one
/// response (or an [`ErrorFrame`]), except a terminal relay, which
/// `TerminalOpen` starts and [`terminal_relay`] frames continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MeshFrame {
    /// Request: identify and check each other.
    Hello(Hello),
    /// Response to `Hello`.
    HelloAck(Hello),
    /// Request: a registry sync message.
    Sync(SyncMessage),
    /// Response to `Sync`: received and handled.
    SyncAck,
    /// Request: join with an invite.
    Join(JoinRequest),
    /// Response to `Join`.
    JoinAccepted(JoinAccepted),
    /// Request: measure round-trip time.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Response to `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Response: the request failed.
    Error(ErrorFrame),
    /// Request (origin to owner): run this invocation.
    Invoke(InvokeRequest),
    /// Response to `Invoke`: committed on the owner (or already there).
    InvokeAck(InvokeAck),
    /// Request (owner to origin): a flight changed state or produced output.
    FlightUpdate(FlightUpdate),
    /// Request (origin to owner): where is this invocation now?
    FlightQuery {
        /// The invocation.
        invocation_id: String,
    },
    /// Request (origin to owner): stop this invocation.
    Cancel {
        /// The invocation.
        invocation_id: String,
    },
    /// Response to `FlightUpdate`, `FlightQuery` (with the flight) and `Cancel`.
    FlightAck(Option<FlightUpdate>),
    /// Request: the usage of the flights the receiver ran (it answers for
    /// its own flights only). A broker of an older build refuses the
    /// unknown frame, and the asker lists it as missing.
    UsageQuery(UsageQuery),
    /// Response to `UsageQuery`.
    UsageReport(UsageReport),
    /// Request (viewer to owner): relay the live terminal of this local
    /// instance. Answered with `TerminalAccepted` (or an error), after
    /// which the stream stays open and carries [`terminal_relay`] frames
    /// both ways until either side finishes it.
    TerminalOpen {
        /// The instance (`@fabric@devbox#main`).
        instance: String,
    },
    /// Response to `TerminalOpen`: the relay starts.
    TerminalAccepted,
    /// Request (any member to an approval's owner): decide it.
    ApprovalDecide(ApprovalDecision),
    /// Response to `ApprovalDecide`: the approval as decided.
    ApprovalDecided(ApprovalBody),
    /// Request (a joiner with a short code, before any hello): does this
    /// broker hold a pending short code?
    PairProbe,
    /// Response to `PairProbe`.
    PairOffer(PairOffer),
    /// Request: the first message of a short-code exchange.
    PairStart(PairStart),
    /// Response to `PairStart`.
    PairReply(PairReply),
    /// Request: the joiner's key confirmation, on the same connection as
    /// its `PairStart`. Answered with `JoinAccepted` once it verifies.
    PairConfirm {
        /// The joiner's key confirmation.
        confirmation: [u8; crate::pairing::CONFIRMATION_BYTES],
    },
    /// Request (member to member): a message of the partial views
    /// ([`crate::views`]). A broker of an older build refuses the unknown
    /// frame; the sender treats that as a failed send.
    View(ViewFrame),
    /// Response to `View`: received and handled.
    ViewAck,
    /// Request (member to a relay): pass the envelope on to its target,
    /// which this member cannot dial ([`crate::relay`]).
    Relay(crate::relay::RelayEnvelope),
    /// Request (relay to target): a request from the envelope's sender.
    Relayed(crate::relay::RelayEnvelope),
    /// Response to `Relay` and `Relayed`: the target's answer, signed by it.
    RelayAnswer(crate::relay::RelayEnvelope),
}

/// A views message between brokers.
pub type ViewFrame = crate::views::ViewMessage<NodeId>;

/// The frames of a terminal relay stream after `TerminalAccepted`: each
/// length-prefixed frame body is one tag byte and the bytes of one
/// terminal WebSocket message, so the viewer's broker can hand them on
/// unchanged.
pub mod terminal_relay {
    /// A text message: terminal output (owner to viewer), keystrokes or a
    /// JSON control message (viewer to owner).
    pub const TAG_TEXT: u8 = 0;
    /// A binary message: raw input bytes (viewer to owner).
    pub const TAG_BINARY: u8 = 1;
}

/// Agents one usage report lists at most: a broker runs a handful of
/// agents, and 1,024 rows of under 200 bytes stay far below a frame.
pub const USAGE_ROWS_MAX: usize = 1024;

/// How far back a usage query may look: a year and a day. Owners clamp an
/// older `since` to this, so one query never scans a store's whole past.
pub const USAGE_RANGE_MS_MAX: u64 = 366 * 24 * 60 * 60 * 1000;

const _: () = assert!(USAGE_ROWS_MAX * (AGENT_NAME_BYTES_MAX + 64) < FRAME_BYTES_MAX / 4);

/// What usage a broker is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageQuery {
    /// Flights that ended at or after this unix ms (clamped by the owner to
    /// [`USAGE_RANGE_MS_MAX`] before its own clock).
    pub since_unix_ms: u64,
}

/// The usage of the flights one broker ran, per agent instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// One row per instance, most flights first, at most [`USAGE_ROWS_MAX`].
    pub rows: Vec<UsageRow>,
    /// Whether rows past [`USAGE_ROWS_MAX`] were left out.
    pub truncated: bool,
}

/// The usage of one instance's flights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The instance (`@fabric@devbox#main`).
    pub instance: String,
    /// Flights that ended in the range.
    pub flights: u64,
    /// Of those, the ones that failed.
    pub failed: u64,
    /// Their usage, summed (a cost when any of them reported one).
    pub usage: Usage,
}

/// Bytes of an invocation body at most: a prompt, not a file upload.
pub const INVOKE_BODY_BYTES_MAX: usize = 256 * 1024;

/// Bytes of output one flight update carries at most: the one output
/// limit of [`crate::output`], which [`FlightOutput`] enforces when it is
/// built and when it is decoded. Running output is split across updates;
/// the final one carries the result, bounded by the same rule.
pub use crate::output::FLIGHT_OUTPUT_BYTES_MAX;

const _: () = assert!(INVOKE_BODY_BYTES_MAX + FLIGHT_OUTPUT_BYTES_MAX < FRAME_BYTES_MAX);

/// An invocation on its way to the broker that owns its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeRequest {
    /// Minted by the origin; the owner never executes one id twice.
    pub invocation_id: String,
    /// What is asked.
    pub action: crate::lifecycle::InvocationAction,
    /// The prompt.
    pub body: String,
    /// The conversation at the origin.
    pub conversation_id: Option<String>,
    /// The origin broker.
    pub origin: NodeId,
    /// The name as mentioned (`@fabric`).
    pub target: String,
    /// The instance it resolved to (`@fabric@devbox#main`), owned by the receiver.
    pub instance: String,
    /// Why that instance (`crate::resolve::ResolveReason` word).
    pub resolve_reason: String,
    /// Unix ms after which the work is no longer wanted.
    pub deadline_ms: Option<u64>,
    /// How hard to try.
    pub policy: crate::lifecycle::DeliveryPolicy,
    /// The instance that sent it, when an agent did (absent for a person).
    /// Travels in the frame's tail (see [`encode_frame`]), so invokes of
    /// brokers that do not send it still decode.
    #[serde(skip)]
    pub from: Option<String>,
    /// The causal chain that led to it (see [`crate::mention`]), oldest
    /// first; the owner checks it again. In the frame's tail, like `from`.
    #[serde(skip)]
    pub chain: Vec<String>,
}

/// The most instances a causal chain on the wire may name. Far above the
/// depth any broker accepts ([`crate::mention::MENTION_DEPTH_MAX`] by
/// default, raised in settings at most to this), so a frame is bounded
/// while the configured limit stays the one that refuses.
pub const CHAIN_LEN_MAX: usize = 64;

/// The fields an invoke gained after protocol 2 shipped, encoded after the
/// frame (an invoke is always the last value of its frame) and only when
/// one is set, as [`FlightUpdateTail`].
#[derive(Debug, Default, Serialize, Deserialize)]
struct InvokeTail {
    from: Option<String>,
    chain: Vec<String>,
}

/// The owner's answer to an invoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeAck {
    /// The invocation.
    pub invocation_id: String,
    /// Whether the owner had it already (a retry).
    pub duplicate: bool,
    /// The flight's state now.
    pub state: crate::lifecycle::FlightState,
}

/// A flight's progress, from its owner to its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlightUpdate {
    /// The invocation.
    pub invocation_id: String,
    /// The flight's state.
    pub state: crate::lifecycle::FlightState,
    /// New output since the last update (the result when terminal).
    /// Encoded as a plain string; decoding refuses one over the limit.
    pub output: FlightOutput,
    /// Why it failed, when it did.
    pub failure_reason: Option<crate::lifecycle::FailureReason>,
    /// What happened, for a person.
    pub detail: Option<String>,
    /// The stable code of a failed turn (`AUTH_REQUIRED`), when known.
    /// Travels in the frame's tail (see [`encode_frame`]), so frames of
    /// brokers that do not send it still decode.
    #[serde(skip)]
    pub failure_code: Option<FailureCode>,
    /// Tokens and cost of the flight, when its agent reported them. In the
    /// frame's tail, like `failure_code`.
    #[serde(skip)]
    pub usage: Option<Usage>,
}

impl FlightUpdate {
    /// An update with no output, failure or usage: a state change.
    pub fn state(invocation_id: impl Into<String>, state: crate::lifecycle::FlightState) -> Self {
        FlightUpdate {
            invocation_id: invocation_id.into(),
            state,
            output: FlightOutput::new(),
            failure_reason: None,
            detail: None,
            failure_code: None,
            usage: None,
        }
    }
}

/// The fields a flight update gained after protocol 2 shipped, encoded
/// after the frame (a flight update is always the last value of its
/// frame), and only when one of them is set: frames from brokers that do
/// not know them end where the frame ends, and still decode.
#[derive(Debug, Default, Serialize, Deserialize)]
struct FlightUpdateTail {
    failure_code: Option<FailureCode>,
    usage: Option<Usage>,
}

impl MeshFrame {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            MeshFrame::Hello(_) => "hello",
            MeshFrame::HelloAck(_) => "hello_ack",
            MeshFrame::Sync(_) => "sync",
            MeshFrame::SyncAck => "sync_ack",
            MeshFrame::Join(_) => "join",
            MeshFrame::JoinAccepted(_) => "join_accepted",
            MeshFrame::Ping { .. } => "ping",
            MeshFrame::Pong { .. } => "pong",
            MeshFrame::Error(_) => "error",
            MeshFrame::Invoke(_) => "invoke",
            MeshFrame::InvokeAck(_) => "invoke_ack",
            MeshFrame::FlightUpdate(_) => "flight_update",
            MeshFrame::FlightQuery { .. } => "flight_query",
            MeshFrame::Cancel { .. } => "cancel",
            MeshFrame::FlightAck(_) => "flight_ack",
            MeshFrame::UsageQuery(_) => "usage_query",
            MeshFrame::UsageReport(_) => "usage_report",
            MeshFrame::TerminalOpen { .. } => "terminal_open",
            MeshFrame::TerminalAccepted => "terminal_accepted",
            MeshFrame::ApprovalDecide(_) => "approval_decide",
            MeshFrame::ApprovalDecided(_) => "approval_decided",
            MeshFrame::PairProbe => "pair_probe",
            MeshFrame::PairOffer(_) => "pair_offer",
            MeshFrame::PairStart(_) => "pair_start",
            MeshFrame::PairReply(_) => "pair_reply",
            MeshFrame::PairConfirm { .. } => "pair_confirm",
            MeshFrame::View(_) => "view",
            MeshFrame::ViewAck => "view_ack",
            MeshFrame::Relay(_) => "relay",
            MeshFrame::Relayed(_) => "relayed",
            MeshFrame::RelayAnswer(_) => "relay_answer",
        }
    }

    /// An error frame, its message cut to fit [`ERROR_MESSAGE_BYTES_MAX`]
    /// with the ellipsis [`truncate`] appends, so that the peer accepts it.
    pub fn error(code: impl Into<ErrorCode>, message: impl Into<String>) -> MeshFrame {
        MeshFrame::Error(ErrorFrame {
            code: code.into(),
            message: truncate(&message.into(), ERROR_MESSAGE_BYTES_MAX - '…'.len_utf8()),
        })
    }

    /// Checks every count and string a peer can send against its named
    /// limit; the error names the field. Sizes of the whole frame are
    /// bounded by the encoding already.
    pub fn check_limits(&self) -> Result<(), WireError> {
        match self {
            MeshFrame::Hello(hello) | MeshFrame::HelloAck(hello) => {
                check_str("node_name", &hello.node_name, NODE_NAME_BYTES_MAX)?;
                check_addresses(&hello.addresses)
            }
            MeshFrame::Join(join) => {
                check_str("node_name", &join.node_name, NODE_NAME_BYTES_MAX)?;
                check_addresses(&join.addresses)
            }
            MeshFrame::Sync(message) => message.check_limits(),
            MeshFrame::Error(error) => {
                check_str("code", error.code.as_str(), ERROR_CODE_BYTES_MAX)?;
                check_str("message", &error.message, ERROR_MESSAGE_BYTES_MAX)
            }
            MeshFrame::Invoke(invoke) => {
                check_str("invocation_id", &invoke.invocation_id, ID_BYTES_MAX)?;
                check_str("body", &invoke.body, INVOKE_BODY_BYTES_MAX)?;
                if let Some(conversation_id) = &invoke.conversation_id {
                    check_str("conversation_id", conversation_id, ID_BYTES_MAX)?;
                }
                check_str("target", &invoke.target, AGENT_NAME_BYTES_MAX)?;
                check_str("instance", &invoke.instance, AGENT_NAME_BYTES_MAX)?;
                if let Some(from) = &invoke.from {
                    check_str("from", from, AGENT_NAME_BYTES_MAX)?;
                }
                if invoke.chain.len() > CHAIN_LEN_MAX {
                    return Err(WireError::MalformedFrame {
                        detail: format!(
                            "a chain of {} instances; the limit is {CHAIN_LEN_MAX}",
                            invoke.chain.len()
                        ),
                    });
                }
                for link in &invoke.chain {
                    check_str("chain", link, AGENT_NAME_BYTES_MAX)?;
                }
                check_str("resolve_reason", &invoke.resolve_reason, REASON_BYTES_MAX)
            }
            MeshFrame::InvokeAck(ack) => {
                check_str("invocation_id", &ack.invocation_id, ID_BYTES_MAX)
            }
            MeshFrame::FlightUpdate(update) | MeshFrame::FlightAck(Some(update)) => {
                check_str("invocation_id", &update.invocation_id, ID_BYTES_MAX)?;
                // `output` is bounded by its type, when decoded.
                if let Some(detail) = &update.detail {
                    check_str("detail", detail, DETAIL_BYTES_MAX)?;
                }
                // `failure_code` is bounded by its type, when decoded.
                if let Some(usage) = &update.usage {
                    usage
                        .check_limits()
                        .map_err(|err| WireError::MalformedFrame {
                            detail: err.to_string(),
                        })?;
                }
                Ok(())
            }
            MeshFrame::UsageQuery(_) | MeshFrame::TerminalAccepted => Ok(()),
            MeshFrame::ApprovalDecide(decision) => crate::approval::check_decision(decision)
                .map_err(|detail| WireError::MalformedFrame { detail }),
            MeshFrame::ApprovalDecided(body) => crate::approval::check_body(body)
                .map_err(|detail| WireError::MalformedFrame { detail }),
            MeshFrame::TerminalOpen { instance } => {
                check_str("instance", instance, AGENT_NAME_BYTES_MAX)
            }
            MeshFrame::UsageReport(report) => {
                if report.rows.len() > USAGE_ROWS_MAX {
                    return Err(WireError::MalformedFrame {
                        detail: format!(
                            "{} usage rows; the limit is {USAGE_ROWS_MAX}",
                            report.rows.len()
                        ),
                    });
                }
                for row in &report.rows {
                    check_str("instance", &row.instance, AGENT_NAME_BYTES_MAX)?;
                }
                Ok(())
            }
            MeshFrame::FlightQuery { invocation_id } | MeshFrame::Cancel { invocation_id } => {
                check_str("invocation_id", invocation_id, ID_BYTES_MAX)
            }
            MeshFrame::PairOffer(offer) => {
                check_str("node_name", &offer.node_name, NODE_NAME_BYTES_MAX)
            }
            MeshFrame::PairStart(start) => {
                check_bytes("pake", &start.pake, crate::pairing::PAKE_MESSAGE_BYTES)?;
                check_str("node_name", &start.node_name, NODE_NAME_BYTES_MAX)?;
                check_addresses(&start.addresses)
            }
            MeshFrame::PairReply(reply) => {
                check_bytes("pake", &reply.pake, crate::pairing::PAKE_MESSAGE_BYTES)
            }
            MeshFrame::View(message) => {
                let ids = message.ids().len();
                if ids > crate::views::SHUFFLE_IDS_MAX {
                    return Err(WireError::MalformedFrame {
                        detail: format!(
                            "{ids} ids in a view message; the limit is {}",
                            crate::views::SHUFFLE_IDS_MAX
                        ),
                    });
                }
                Ok(())
            }
            // The frame inside is checked when the target opens it.
            MeshFrame::Relay(_) | MeshFrame::Relayed(_) | MeshFrame::RelayAnswer(_) => Ok(()),
            MeshFrame::SyncAck
            | MeshFrame::ViewAck
            | MeshFrame::PairProbe
            | MeshFrame::PairConfirm { .. }
            | MeshFrame::JoinAccepted(_)
            | MeshFrame::Ping { .. }
            | MeshFrame::Pong { .. }
            | MeshFrame::FlightAck(None) => Ok(()),
        }
    }
}

/// Refuses a string over its limit, naming the field.
fn check_str(field: &str, value: &str, max: usize) -> Result<(), WireError> {
    if value.len() > max {
        return Err(WireError::MalformedFrame {
            detail: format!("{field} is {} bytes; the limit is {max}", value.len()),
        });
    }
    Ok(())
}

/// Refuses a byte string over its limit, naming the field.
fn check_bytes(field: &str, value: &[u8], max: usize) -> Result<(), WireError> {
    if value.len() > max {
        return Err(WireError::MalformedFrame {
            detail: format!("{field} is {} bytes; the limit is {max}", value.len()),
        });
    }
    Ok(())
}

/// Refuses an address list over its count or an address over its length.
fn check_addresses(addresses: &[String]) -> Result<(), WireError> {
    if addresses.len() > HELLO_ADDRESSES_MAX {
        return Err(WireError::MalformedFrame {
            detail: format!(
                "{} addresses; the limit is {HELLO_ADDRESSES_MAX}",
                addresses.len()
            ),
        });
    }
    for address in addresses {
        check_str("address", address, ADDRESS_BYTES_MAX)?;
    }
    Ok(())
}

/// Encodes a mesh frame body: the protocol version, then the frame, then,
/// for a flight update with a failure code or usage, its tail.
pub fn encode_frame(frame: &MeshFrame) -> Vec<u8> {
    // As for `encode`: these types always encode.
    let mut bytes =
        postcard::to_allocvec(&(PROTOCOL_VERSION, frame)).expect("mesh frames always encode");
    if let Some(update) = frame.flight_update()
        && (update.failure_code.is_some() || update.usage.is_some())
    {
        let tail = FlightUpdateTail {
            failure_code: update.failure_code.clone(),
            usage: update.usage,
        };
        bytes.extend(postcard::to_allocvec(&tail).expect("flight update tails always encode"));
    }
    if let MeshFrame::Invoke(invoke) = frame
        && (invoke.from.is_some() || !invoke.chain.is_empty())
    {
        let tail = InvokeTail {
            from: invoke.from.clone(),
            chain: invoke.chain.clone(),
        };
        bytes.extend(postcard::to_allocvec(&tail).expect("invoke tails always encode"));
    }
    bytes
}

impl MeshFrame {
    /// The flight update a frame carries, when it carries one.
    fn flight_update(&self) -> Option<&FlightUpdate> {
        match self {
            MeshFrame::FlightUpdate(update) | MeshFrame::FlightAck(Some(update)) => Some(update),
            _ => None,
        }
    }

    fn flight_update_mut(&mut self) -> Option<&mut FlightUpdate> {
        match self {
            MeshFrame::FlightUpdate(update) | MeshFrame::FlightAck(Some(update)) => Some(update),
            _ => None,
        }
    }
}

/// Decodes a mesh frame body, checking its size, version and limits. Never
/// panics on any input.
pub fn decode_frame(bytes: &[u8]) -> Result<MeshFrame, WireError> {
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge {
            len: bytes.len(),
            max: FRAME_BYTES_MAX,
        });
    }
    let (version, rest) = postcard::take_from_bytes::<u16>(bytes).map_err(malformed)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion { version });
    }
    let (mut frame, mut rest) = postcard::take_from_bytes::<MeshFrame>(rest).map_err(malformed)?;
    if !rest.is_empty()
        && let Some(update) = frame.flight_update_mut()
    {
        let (tail, after) =
            postcard::take_from_bytes::<FlightUpdateTail>(rest).map_err(malformed)?;
        update.failure_code = tail.failure_code;
        update.usage = tail.usage;
        rest = after;
    }
    if !rest.is_empty()
        && let MeshFrame::Invoke(invoke) = &mut frame
    {
        let (tail, after) = postcard::take_from_bytes::<InvokeTail>(rest).map_err(malformed)?;
        invoke.from = tail.from;
        invoke.chain = tail.chain;
        rest = after;
    }
    if !rest.is_empty() {
        return Err(WireError::MalformedFrame {
            detail: format!("{} bytes after the end of the frame", rest.len()),
        });
    }
    frame.check_limits()?;
    Ok(frame)
}

/// A one-time invitation to a mesh, printed as a code by `scout mesh invite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The mesh.
    pub mesh_id: MeshId,
    /// The inviting broker.
    pub inviter: NodeId,
    /// The inviter's public key, pinned by the joiner's TLS handshake.
    pub inviter_key: [u8; 32],
    /// Where the inviter listens.
    pub addresses: Vec<String>,
    /// Which invite (the inviter keeps the rest).
    pub invite_id: [u8; 8],
    /// The secret that proves the code was seen.
    pub secret: [u8; 16],
    /// Unix milliseconds after which the invite is refused.
    pub expires_at_ms: u64,
}

/// The prefix of every invite code, with the protocol version in it.
pub const INVITE_CODE_PREFIX: &str = "scout1-";

/// Why a string is not an invite code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("INVALID_INVITE: {0}")]
pub struct InvalidInvite(pub String);

impl Invite {
    /// The code people copy: the prefix, then base32 of the postcard bytes.
    pub fn to_code(&self) -> String {
        let bytes = postcard::to_allocvec(self).expect("invites always encode");
        format!(
            "{INVITE_CODE_PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        )
    }

    /// Parses a code (surrounding whitespace ignored, case-insensitive).
    pub fn from_code(code: &str) -> Result<Invite, InvalidInvite> {
        let code = code.trim();
        let body = code.strip_prefix(INVITE_CODE_PREFIX).ok_or_else(|| {
            InvalidInvite(format!("an invite code starts with `{INVITE_CODE_PREFIX}`"))
        })?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|err| InvalidInvite(format!("the code is damaged ({err}); copy it again")))?;
        let (invite, rest) = postcard::take_from_bytes::<Invite>(&bytes)
            .map_err(|err| InvalidInvite(format!("the code is damaged ({err}); copy it again")))?;
        if !rest.is_empty() {
            return Err(InvalidInvite(
                "the code has trailing bytes; copy it again".into(),
            ));
        }
        if invite.addresses.len() > HELLO_ADDRESSES_MAX {
            return Err(InvalidInvite("the code lists too many addresses".into()));
        }
        Ok(invite)
    }
}

/// `input` cut to at most `max` bytes on a character boundary, with `…`
/// (3 more bytes) appended when something was cut, so errors about huge
/// inputs stay small.
pub fn truncate(input: &str, max: usize) -> String {
    if input.len() <= max {
        return input.to_owned();
    }
    let mut end = max;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdts::{CmRDT, CvRDT};

    fn id(byte: u8) -> NodeId {
        NodeId::from_bytes([byte; NODE_ID_BYTES])
    }

    #[test]
    fn node_ids_parse_and_round_trip() {
        let text = "0123456789abcdef0123456789abcdef";
        let node = NodeId::parse(text).unwrap();
        assert_eq!(node.as_str(), text);
        assert_eq!(NodeId::from_bytes(node.to_bytes()), node);
        assert_eq!(node.to_string(), text);
        for bad in [
            "",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "g123456789abcdef0123456789abcdef",
            "é123456789abcdef0123456789abcde",
        ] {
            let err = NodeId::parse(bad).unwrap_err();
            assert_eq!(err.code(), "INVALID_NODE_ID");
        }
        let long = "x".repeat(10_000);
        assert!(NodeId::parse(&long).unwrap_err().input.len() < 100);
    }

    #[test]
    fn node_ids_are_16_bytes_on_the_wire() {
        let node = id(0xab);
        let bytes = postcard::to_allocvec(&node).unwrap();
        assert_eq!(bytes, vec![0xab; NODE_ID_BYTES]);
        assert_eq!(postcard::from_bytes::<NodeId>(&bytes).unwrap(), node);
    }

    #[test]
    fn messages_round_trip() {
        let mut vv = VClock::new();
        vv.apply(Dot::new(id(1), 7));
        let record = Record {
            key: RecordKey {
                origin: id(1),
                kind: RecordKind::Instance,
                name: "@fabric@laptop#main".into(),
            },
            dot: Dot::new(id(1), 7),
            hlc: Hlc {
                wall_ms: 1_700_000_000_000,
                logical: 2,
            },
            body: Some(RecordBody::Instance(InstanceBody {
                harness: Harness::Claude,
                workspace: "main".into(),
                cwd: "~/src/fabric".into(),
                endpoint_state: EndpointState::Idle,
                active_flights: 1,
                worktrees: false,
            })),
            origin_key: [7; 32],
            signature: RecordSignature([9; SIGNATURE_BYTES]),
        };
        for message in [
            SyncMessage::Push {
                records: vec![record.clone()],
            },
            SyncMessage::Digest { vv: vv.clone() },
            SyncMessage::Delta {
                records: vec![record],
                covers: vv.clone(),
                since: VClock::new(),
                more: true,
            },
            SyncMessage::IHave { have: vv.clone() },
            SyncMessage::Graft { since: vv.clone() },
            SyncMessage::Prune {
                origins: vv.dots.keys().cloned().collect(),
            },
            SyncMessage::Summary { hash: u64::MAX },
        ] {
            assert_eq!(decode(&encode(&message)).unwrap(), message);
        }
    }

    #[test]
    fn decode_refuses_other_versions_trailing_bytes_and_huge_bodies() {
        let digest = SyncMessage::Digest { vv: VClock::new() };
        let mut body = postcard::to_allocvec(&(PROTOCOL_VERSION + 1, &digest)).unwrap();
        let err = decode(&body).unwrap_err();
        assert_eq!(
            err,
            WireError::UnsupportedVersion {
                version: PROTOCOL_VERSION + 1
            }
        );
        assert_eq!(err.code(), "UNSUPPORTED_VERSION");

        body = encode(&digest);
        body.push(0);
        assert_eq!(decode(&body).unwrap_err().code(), "MALFORMED_FRAME");

        let huge = vec![0; SYNC_MESSAGE_BYTES_MAX + 1];
        assert_eq!(decode(&huge).unwrap_err().code(), "FRAME_TOO_LARGE");

        assert_eq!(decode(&[]).unwrap_err().code(), "MALFORMED_FRAME");
        assert_eq!(
            decode(&[PROTOCOL_VERSION as u8, 9]).unwrap_err().code(),
            "MALFORMED_FRAME"
        );
    }

    #[test]
    fn decode_enforces_counts() {
        let mut vv = VClock::new();
        for idx in 0..=ORIGINS_MAX {
            let mut bytes = [0; NODE_ID_BYTES];
            bytes[..8].copy_from_slice(&(idx as u64).to_be_bytes());
            vv.apply(Dot::new(NodeId::from_bytes(bytes), 1));
        }
        let body = encode(&SyncMessage::Digest { vv });
        let err = decode(&body).unwrap_err();
        assert_eq!(err.code(), "MALFORMED_FRAME");
        assert!(err.to_string().contains("2049 origins"), "{err}");
    }

    #[test]
    fn view_frames_round_trip_and_long_id_lists_are_refused() {
        let ids: Vec<NodeId> = (1..=crate::views::SHUFFLE_IDS_MAX as u8).map(id).collect();
        let frame = MeshFrame::View(crate::views::ViewMessage::Shuffle {
            origin: id(1),
            ttl: 6,
            ids: ids.clone(),
        });
        assert_eq!(decode_frame(&encode_frame(&frame)).unwrap(), frame);
        let mut long = ids;
        long.push(id(200));
        let frame = MeshFrame::View(crate::views::ViewMessage::ShuffleReply { ids: long });
        let err = decode_frame(&encode_frame(&frame)).unwrap_err();
        assert_eq!(err.code(), "MALFORMED_FRAME");
        assert!(err.to_string().contains("9 ids"), "{err}");
    }

    #[test]
    fn registers_encode_as_entry_lists() {
        let mut register = MVReg::new();
        let ctx = register.read_ctx().derive_add_ctx(id(1));
        register.apply(register.write(
            DefinitionValue {
                description: "reviews diffs".into(),
                aliases: vec!["rev".into()],
            },
            ctx,
        ));
        let mut other = MVReg::new();
        let ctx = other.read_ctx().derive_add_ctx(id(2));
        other.apply(other.write(
            DefinitionValue {
                description: "writes docs".into(),
                aliases: vec![],
            },
            ctx,
        ));
        register.merge(other);
        let body = DefinitionBody { register };
        let entries = body.entries().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].clock.get(&id(1)), 1);
        assert_eq!(entries[1].value.description, "writes docs");
        let rebuilt = DefinitionBody::from_entries(&entries).unwrap();
        assert_eq!(rebuilt, body);
        assert_eq!(
            postcard::to_allocvec(&rebuilt).unwrap(),
            postcard::to_allocvec(&body).unwrap()
        );
    }

    #[test]
    fn register_equality_never_panics_on_duplicates() {
        let entry = DefinitionEntry {
            clock: VClock::from(Dot::new(id(1), 1)),
            value: DefinitionValue {
                description: "x".into(),
                aliases: vec![],
            },
        };
        let twice = DefinitionBody::from_entries(&[entry.clone(), entry.clone()]).unwrap();
        let once = DefinitionBody::from_entries(&[entry]).unwrap();
        assert_ne!(twice, once);
        assert_eq!(twice, twice.clone());
    }

    fn invoke(text: &dyn Fn(&str) -> String) -> MeshFrame {
        MeshFrame::Invoke(InvokeRequest {
            invocation_id: text("invocation_id"),
            action: crate::lifecycle::InvocationAction::Consult,
            body: text("body"),
            conversation_id: Some(text("conversation_id")),
            origin: id(1),
            target: text("target"),
            instance: text("instance"),
            resolve_reason: text("resolve_reason"),
            deadline_ms: None,
            policy: crate::lifecycle::DeliveryPolicy::MustAck,
            from: None,
            chain: Vec::new(),
        })
    }

    /// An invoke from an agent carries its sender and chain in the tail;
    /// one without them encodes exactly as before, so old frames decode.
    #[test]
    fn invoke_tails_carry_from_and_chain_and_old_frames_decode() {
        let plain = invoke(&|_| "a".into());
        let bytes = encode_frame(&plain);
        assert_eq!(decode_frame(&bytes).unwrap(), plain);
        let MeshFrame::Invoke(mut from_agent) = plain.clone() else {
            unreachable!()
        };
        from_agent.from = Some("@a@n#main".into());
        from_agent.chain = vec!["@b@n#main".into(), "@a@n#main".into()];
        let frame = MeshFrame::Invoke(from_agent);
        let encoded = encode_frame(&frame);
        assert!(encoded.starts_with(&bytes));
        assert_eq!(decode_frame(&encoded).unwrap(), frame);

        let MeshFrame::Invoke(mut long) = plain else {
            unreachable!()
        };
        long.chain = vec!["@x".into(); CHAIN_LEN_MAX + 1];
        let err = decode_frame(&encode_frame(&MeshFrame::Invoke(long))).unwrap_err();
        assert_eq!(err.code(), "MALFORMED_FRAME");
        let mut cut = encoded.clone();
        cut.truncate(encoded.len() - 1);
        assert!(decode_frame(&cut).is_err());
    }

    fn flight_update(text: &dyn Fn(&str) -> String) -> FlightUpdate {
        FlightUpdate {
            invocation_id: text("invocation_id"),
            state: crate::lifecycle::FlightState::Running,
            output: FlightOutput::from_text(text("output")),
            failure_reason: None,
            detail: Some(text("detail")),
            failure_code: None,
            usage: None,
        }
    }

    fn hello(text: &dyn Fn(&str) -> String) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: id(1),
            node_name: text("node_name"),
            mesh_id: MeshId([1; MESH_ID_BYTES]),
            addresses: vec![text("address")],
        }
    }

    /// Every limited string of every frame: accepted at its limit, refused
    /// one byte past it with `MALFORMED_FRAME` naming the field.
    #[test]
    fn every_peer_string_has_a_limit() {
        type Build = fn(&dyn Fn(&str) -> String) -> MeshFrame;
        let frames: &[(&str, Build)] = &[
            ("hello", |text| MeshFrame::Hello(hello(text))),
            ("hello_ack", |text| MeshFrame::HelloAck(hello(text))),
            ("join", |text| {
                MeshFrame::Join(JoinRequest {
                    invite_id: [1; 8],
                    secret: [2; 16],
                    node_name: text("node_name"),
                    addresses: vec![text("address")],
                })
            }),
            ("error", |text| {
                MeshFrame::Error(ErrorFrame {
                    code: ErrorCode::from_word(&text("code")),
                    message: text("message"),
                })
            }),
            ("invoke", invoke),
            ("invoke_ack", |text| {
                MeshFrame::InvokeAck(InvokeAck {
                    invocation_id: text("invocation_id"),
                    duplicate: false,
                    state: crate::lifecycle::FlightState::Queued,
                })
            }),
            ("flight_update", |text| {
                MeshFrame::FlightUpdate(flight_update(text))
            }),
            ("flight_ack", |text| {
                MeshFrame::FlightAck(Some(flight_update(text)))
            }),
            ("flight_query", |text| MeshFrame::FlightQuery {
                invocation_id: text("invocation_id"),
            }),
            ("cancel", |text| MeshFrame::Cancel {
                invocation_id: text("invocation_id"),
            }),
            ("pair_offer", |text| {
                MeshFrame::PairOffer(PairOffer {
                    short_code: OfferedCode::Pending,
                    mesh_id: MeshId([1; 16]),
                    node_name: text("node_name"),
                })
            }),
            ("pair_start", |text| {
                MeshFrame::PairStart(PairStart {
                    pake: vec![0x41; crate::pairing::PAKE_MESSAGE_BYTES],
                    node_name: text("node_name"),
                    addresses: vec![text("address")],
                })
            }),
            ("usage_report", |text| {
                MeshFrame::UsageReport(UsageReport {
                    rows: vec![UsageRow {
                        instance: text("instance"),
                        flights: 1,
                        failed: 0,
                        usage: Usage::default(),
                    }],
                    truncated: false,
                })
            }),
        ];
        let limits = [
            ("node_name", NODE_NAME_BYTES_MAX),
            ("address", ADDRESS_BYTES_MAX),
            ("code", ERROR_CODE_BYTES_MAX),
            ("message", ERROR_MESSAGE_BYTES_MAX),
            ("invocation_id", ID_BYTES_MAX),
            ("conversation_id", ID_BYTES_MAX),
            ("body", INVOKE_BODY_BYTES_MAX),
            ("target", AGENT_NAME_BYTES_MAX),
            ("instance", AGENT_NAME_BYTES_MAX),
            ("resolve_reason", REASON_BYTES_MAX),
            ("detail", DETAIL_BYTES_MAX),
        ];
        let limit_of = |field: &str| {
            limits
                .iter()
                .find(|(name, _)| *name == field)
                .map(|(_, max)| *max)
                .unwrap_or_else(|| panic!("no limit for {field}"))
        };
        let mut checked = 0;
        for (frame_name, build) in frames {
            let short = build(&|_| "a".into());
            assert_eq!(decode_frame(&encode_frame(&short)).unwrap(), short);
            for (field, max) in &limits {
                let at_limit =
                    |len: usize| move |name: &str| "a".repeat(if name == *field { len } else { 1 });
                let frame = build(&at_limit(*max));
                if frame == short {
                    continue; // The frame has no such field.
                }
                assert_eq!(limit_of(field), *max);
                assert_eq!(
                    decode_frame(&encode_frame(&frame)).unwrap(),
                    frame,
                    "{frame_name}.{field} at its limit"
                );
                let over = build(&at_limit(max + 1));
                let err = decode_frame(&encode_frame(&over)).unwrap_err();
                assert_eq!(err.code(), "MALFORMED_FRAME", "{frame_name}.{field}");
                assert!(
                    err.to_string().contains(field),
                    "{frame_name}.{field}: {err}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 25, "every limited field of every frame");
    }

    /// `output` cannot be built over its limit, so the over-limit frame is
    /// written by hand (postcard encodes an enum's variant index as a
    /// varint `u32`, and `FlightOutput` as a string): refused all the same.
    #[test]
    fn flight_output_over_the_limit_is_refused() {
        #[derive(Serialize)]
        struct RawUpdate {
            invocation_id: String,
            state: crate::lifecycle::FlightState,
            output: String,
            failure_reason: Option<crate::lifecycle::FailureReason>,
            detail: Option<String>,
        }
        let raw = |output_bytes: usize| RawUpdate {
            invocation_id: "i".into(),
            state: crate::lifecycle::FlightState::Running,
            output: "a".repeat(output_bytes),
            failure_reason: None,
            detail: None,
        };
        let flight_update_index = 11u32;
        let at_limit = postcard::to_allocvec(&(
            PROTOCOL_VERSION,
            flight_update_index,
            raw(FLIGHT_OUTPUT_BYTES_MAX),
        ))
        .unwrap();
        let MeshFrame::FlightUpdate(update) = decode_frame(&at_limit).unwrap() else {
            panic!("not a flight update");
        };
        assert_eq!(update.output.len(), FLIGHT_OUTPUT_BYTES_MAX);
        let over = postcard::to_allocvec(&(
            PROTOCOL_VERSION,
            flight_update_index,
            raw(FLIGHT_OUTPUT_BYTES_MAX + 1),
        ))
        .unwrap();
        assert_eq!(decode_frame(&over).unwrap_err().code(), "MALFORMED_FRAME");
    }

    fn usage() -> Usage {
        Usage {
            input_tokens: 1_200,
            output_tokens: 340,
            cached_tokens: 1_000,
            cost_micro_usd: Some(5_600),
        }
    }

    /// A failure code and usage travel in the tail of a flight update (and
    /// of a flight ack), and a frame without them is byte for byte the one
    /// a broker that does not know them sends and reads.
    #[test]
    fn flight_update_tails_round_trip_and_old_frames_still_decode() {
        let plain = flight_update(&|_| "a".into());
        let mut full = plain.clone();
        full.failure_code = Some(FailureCode::parse("AUTH_REQUIRED").unwrap());
        full.usage = Some(usage());
        for frame in [
            MeshFrame::FlightUpdate(full.clone()),
            MeshFrame::FlightAck(Some(full.clone())),
        ] {
            assert_eq!(decode_frame(&encode_frame(&frame)).unwrap(), frame);
        }
        // What a broker without the tail encodes: the frame alone.
        #[derive(Serialize)]
        struct OldUpdate {
            invocation_id: String,
            state: crate::lifecycle::FlightState,
            output: String,
            failure_reason: Option<crate::lifecycle::FailureReason>,
            detail: Option<String>,
        }
        let old = OldUpdate {
            invocation_id: "a".into(),
            state: crate::lifecycle::FlightState::Running,
            output: "a".into(),
            failure_reason: None,
            detail: Some("a".into()),
        };
        let flight_update_index = 11u32;
        let old_bytes =
            postcard::to_allocvec(&(PROTOCOL_VERSION, flight_update_index, &old)).unwrap();
        assert_eq!(
            old_bytes,
            encode_frame(&MeshFrame::FlightUpdate(plain.clone()))
        );
        assert_eq!(
            decode_frame(&old_bytes).unwrap(),
            MeshFrame::FlightUpdate(plain)
        );
    }

    /// A hostile tail is refused with `MALFORMED_FRAME`, never a panic:
    /// usage past its limits, a code that is no code, bytes after the
    /// tail, a cut tail, and a tail after a frame that has none.
    #[test]
    fn hostile_flight_update_tails_are_refused() {
        let base = flight_update(&|_| "a".into());
        let mut over = base.clone();
        over.usage = Some(Usage {
            input_tokens: crate::usage::USAGE_TOKENS_MAX + 1,
            ..usage()
        });
        let err = decode_frame(&encode_frame(&MeshFrame::FlightUpdate(over))).unwrap_err();
        assert_eq!(err.code(), "MALFORMED_FRAME");
        assert!(err.to_string().contains("input_tokens"), "{err}");

        let frame =
            postcard::to_allocvec(&(PROTOCOL_VERSION, MeshFrame::FlightUpdate(base.clone())))
                .unwrap();
        #[derive(Serialize)]
        struct RawTail {
            failure_code: Option<String>,
            usage: Option<Usage>,
        }
        let with_tail = |tail: &RawTail| {
            let mut bytes = frame.clone();
            bytes.extend(postcard::to_allocvec(tail).unwrap());
            bytes
        };
        for code in ["auth", "A\u{1b}[2J", &"A".repeat(65)] {
            let bytes = with_tail(&RawTail {
                failure_code: Some(code.into()),
                usage: None,
            });
            assert_eq!(decode_frame(&bytes).unwrap_err().code(), "MALFORMED_FRAME");
        }
        let good = with_tail(&RawTail {
            failure_code: Some("TIMEOUT".into()),
            usage: Some(usage()),
        });
        assert!(decode_frame(&good).is_ok());
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            decode_frame(&trailing).unwrap_err().code(),
            "MALFORMED_FRAME"
        );
        for cut in frame.len() + 1..good.len() {
            assert_eq!(
                decode_frame(&good[..cut]).unwrap_err().code(),
                "MALFORMED_FRAME",
                "cut at {cut}"
            );
        }
        let mut ping = encode_frame(&MeshFrame::Ping { nonce: 1 });
        ping.extend(
            postcard::to_allocvec(&RawTail {
                failure_code: None,
                usage: Some(usage()),
            })
            .unwrap(),
        );
        assert_eq!(decode_frame(&ping).unwrap_err().code(), "MALFORMED_FRAME");
    }

    #[test]
    fn usage_frames_round_trip_and_reports_are_bounded() {
        let query = MeshFrame::UsageQuery(UsageQuery {
            since_unix_ms: 1_700_000_000_000,
        });
        assert_eq!(decode_frame(&encode_frame(&query)).unwrap(), query);
        let row = UsageRow {
            instance: "@fabric@devbox#main".into(),
            flights: 3,
            failed: 1,
            usage: usage(),
        };
        let full = MeshFrame::UsageReport(UsageReport {
            rows: vec![row.clone(); USAGE_ROWS_MAX],
            truncated: true,
        });
        assert_eq!(decode_frame(&encode_frame(&full)).unwrap(), full);
        let over = MeshFrame::UsageReport(UsageReport {
            rows: vec![row; USAGE_ROWS_MAX + 1],
            truncated: true,
        });
        let err = decode_frame(&encode_frame(&over)).unwrap_err();
        assert_eq!(err.code(), "MALFORMED_FRAME");
        assert!(err.to_string().contains("usage rows"), "{err}");
    }

    #[test]
    fn error_frames_of_long_messages_stay_within_the_limit() {
        let frame = MeshFrame::error("MALFORMED_FRAME", "é".repeat(ERROR_MESSAGE_BYTES_MAX));
        assert_eq!(decode_frame(&encode_frame(&frame)).unwrap(), frame);
    }

    #[test]
    fn error_codes_travel_as_their_words() {
        // The typed code encodes exactly as the string of protocol 2 did, so
        // brokers of either build understand each other's refusals.
        #[derive(Serialize)]
        struct AsString {
            code: String,
            message: String,
        }
        for word in [
            "NOT_READY",
            "AGENT_OFFLINE",
            "INVITE_USED",
            "SOMETHING_NEWER",
        ] {
            let typed = ErrorFrame {
                code: ErrorCode::from_word(word),
                message: "m".into(),
            };
            let plain = AsString {
                code: word.into(),
                message: "m".into(),
            };
            let bytes = postcard::to_allocvec(&typed).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&plain).unwrap());
            assert_eq!(postcard::from_bytes::<ErrorFrame>(&bytes).unwrap(), typed);
            assert_eq!(typed.code.as_str(), word);
        }
        assert_eq!(ErrorCode::from_word("NOT_READY"), ErrorCode::NotReady);
        assert_eq!(
            ErrorCode::from_word("SOMETHING_NEWER"),
            ErrorCode::Other("SOMETHING_NEWER".into())
        );
    }

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("ééé", 3), "é…");
    }

    #[test]
    fn pairing_frames_round_trip_and_oversized_key_exchange_messages_are_refused() {
        let frames = [
            MeshFrame::PairProbe,
            MeshFrame::PairOffer(PairOffer {
                short_code: OfferedCode::Expired,
                mesh_id: MeshId([3; 16]),
                node_name: "alpha".into(),
            }),
            MeshFrame::PairStart(PairStart {
                pake: vec![0x41; crate::pairing::PAKE_MESSAGE_BYTES],
                node_name: "beta".into(),
                addresses: vec!["127.0.0.1:1".into()],
            }),
            MeshFrame::PairReply(PairReply {
                pake: vec![0x42; crate::pairing::PAKE_MESSAGE_BYTES],
                confirmation: [7; crate::pairing::CONFIRMATION_BYTES],
            }),
            MeshFrame::PairConfirm {
                confirmation: [8; crate::pairing::CONFIRMATION_BYTES],
            },
        ];
        for frame in frames {
            assert_eq!(decode_frame(&encode_frame(&frame)).unwrap(), frame);
        }
        let oversized = MeshFrame::PairReply(PairReply {
            pake: vec![0; crate::pairing::PAKE_MESSAGE_BYTES + 1],
            confirmation: [0; crate::pairing::CONFIRMATION_BYTES],
        });
        assert_eq!(
            decode_frame(&encode_frame(&oversized)).unwrap_err().code(),
            "MALFORMED_FRAME"
        );
    }
}
