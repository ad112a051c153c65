//! The replicated registry: the set of records every broker holds, the rules
//! that decide which version of a record wins, what makes a record valid, and
//! the views (members, nodes, instances, definitions) derived from the set.
//!
//! Rules:
//! - A record's key is `(origin, kind, name)`, and only `origin` writes under
//!   it. Every version carries the origin's Ed25519 public key and its
//!   signature over the key, dot, timestamp and body ([`sign`]). A version
//!   whose key does not hash to its origin, or whose signature does not
//!   verify, is forged: it is refused with `INVALID_SIGNATURE` before merge,
//!   so it is never stored and never relayed. A member can relay other
//!   brokers' records but cannot write one in another broker's name.
//! - For one key, the version with the higher sequence number
//!   (`dot.counter`) wins; with one writer there are no conflicts. The one
//!   exception, an origin that lost its database and reused sequence numbers,
//!   is broken deterministically (see [`Registry`]) and repaired by
//!   [`crate::sync`].
//! - Deletes are tombstones (`body: None`) with their own sequence number.
//!   Revocations are permanent and cannot be deleted.
//! - Definitions have many writers: each origin publishes its own snapshot of
//!   a `crdts::MVReg` register, and the view of a definition merges every
//!   origin's snapshot, so concurrent edits are all shown until an edit that
//!   saw them supersedes them.
//! - [`validate`] checks a record on its own (signature, names, sizes,
//!   kinds, version); it is the same on every broker, so every broker rejects
//!   the same records and bad data never spreads. Rules that depend on other
//!   records (an instance's node must be its origin's node name, an
//!   admission counts only when its author is a member) are applied where
//!   the record is written ([`crate::sync::Replica::put`]) and as filters of
//!   the views, never as rejections: two brokers that know different records
//!   would otherwise reject different things and never converge.
//!
//! Membership rule. An admission or revocation names its author
//! (`admitted_by`, `revoked_by`), which must be the record's origin
//! (checked by [`validate`]) and so, with the signature, is authentic. The
//! membership view is computed from the live admission and revocation
//! records alone, rooted at the mesh's founder, whose node id is the mesh id
//! (the mesh id is derived from the founder's key, so nobody else can be the
//! root):
//! 1. *Vouched* nodes: the founder, and every node admitted by a vouched
//!    node, revocations ignored.
//! 2. *Revoked* nodes: every node named by a revocation whose origin is
//!    vouched. A revocation by a stranger counts for nothing.
//! 3. *Admitted* nodes: the founder unless revoked, and every unrevoked node
//!    admitted by an admitted node. A revoked node's admissions stop
//!    counting, earlier ones included: a stolen key can sign admissions with
//!    any sequence number or timestamp, so "earlier" cannot be told apart
//!    from a backdated forgery. A node it admitted stays a member only if
//!    another chain from the founder reaches it;
//!    [`crate::sync::Replica::put`] of a revocation re-admits such nodes in
//!    the revoker's name, so revoking one member does not cut off the ones
//!    it invited.
//! 4. *Members*: admitted nodes whose counted admissions (those by admitted
//!    nodes) agree on one public key.
//!
//! A `Founder` admission by any other key than the founder's is an
//! admission of a stranger by a stranger: it is stored and relayed (it is
//! authentic), but no chain from the founder reaches its author, so it
//! counts for nothing. Revocations by a revoked node still count (step 2
//! ignores revocations), so two members revoking each other are both out;
//! deciding which of them came "first" would depend on arrival order.
//!
//! Why it converges: each step is a pure function of the set of live
//! records, whatever order they arrived in, and records are never refused
//! because of other records. A record of a revoked or unvouched origin is
//! stored like any other authentic record (refusing it on brokers that
//! already know the revocation and not on others would make the record sets
//! differ), and the views give it no weight.
//!
//! Every view is a pure function of the record set and the founder, so
//! replicas of one mesh holding the same records show the same views.

use std::collections::{BTreeMap, BTreeSet};

use crdts::{CvRDT, MVReg, VClock};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::names::{AgentName, LABEL_LEN_MAX, Label, NAME_BYTES_MAX, NamePart};
use crate::resolve::Candidate;
use crate::wire::{NODE_ID_BYTES, SIGNATURE_BYTES, VV_ENTRY_BYTES_MAX, truncate};

pub use crate::hlc::Hlc;
pub use crate::wire::{
    AdmissionBody, AdmissionMethod, CounterRun, DefinitionBody, DefinitionEntry, DefinitionValue,
    InstanceBody, InvalidNodeId, ManifestBody, NodeBody, NodeId, Record, RecordBody, RecordKey,
    RecordKind, RecordSignature, RevocationBody,
};

pub use crate::wire::ADDRESS_BYTES_MAX;

/// The longest record name, in bytes. The longest name of any kind is a full
/// agent name; node ids and labels are shorter.
pub const RECORD_NAME_BYTES_MAX: usize = NAME_BYTES_MAX;

/// The largest record body, encoded, in bytes. Registry records describe
/// brokers and agents, not their work, so a few KiB is plenty; a definition
/// register at every field limit still fits (asserted below).
pub const RECORD_BODY_BYTES_MAX: usize = 32 * 1024;

/// The largest encoded record: its body, its key (two node ids counting the
/// dot's, a name), the origin's public key and signature, and a little for
/// tags, lengths and the timestamp.
pub const RECORD_BYTES_MAX: usize =
    RECORD_BODY_BYTES_MAX + 2 * NODE_ID_BYTES + RECORD_NAME_BYTES_MAX + 32 + SIGNATURE_BYTES + 64;

/// The most runs of live sequence numbers a manifest lists. Each run takes
/// at most 20 bytes, so a manifest stays under [`RECORD_BODY_BYTES_MAX`]; an
/// origin whose live records are scattered over more runs writes no
/// manifest, and its tombstones stay.
pub const MANIFEST_RUNS_MAX: usize = 1024;

const _: () = assert!(5 + MANIFEST_RUNS_MAX * 20 <= RECORD_BODY_BYTES_MAX);

/// The most mesh addresses a node may announce. A machine with a LAN, a VPN
/// and a few interfaces has well under this; more is a misconfiguration.
pub const NODE_ADDRESSES_MAX: usize = 16;

/// The most members a node names as relays in its record (`via`).
pub const NODE_VIA_MAX: usize = 3;

/// The longest Scout version string, in bytes (`0.1.0-rc.1+abcdef`).
pub const VERSION_STRING_BYTES_MAX: usize = 64;

/// The longest working-directory display string, in bytes. It is shown to
/// people, never used as a path, so a long one is cut by its writer.
pub const CWD_BYTES_MAX: usize = 1024;

/// The longest definition description, in bytes: a paragraph.
pub const DESCRIPTION_BYTES_MAX: usize = 1024;

/// The most aliases one definition value may list.
pub const ALIASES_MAX: usize = 16;

/// The longest revocation reason, in bytes: one sentence for people.
pub const REVOCATION_REASON_BYTES_MAX: usize = 256;

/// The most concurrent values one definition register may hold. Each value
/// is an edit nobody has seen yet; more than a handful means brokers edit
/// without ever syncing, and bounding it bounds the record.
pub const DEFINITION_VALUES_MAX: usize = 8;

/// The most writers one definition value's clock may name. A `crdts` MVReg
/// clock grows with every broker that ever edited the definition; bounding
/// it bounds the record, and definitions have few writers.
pub const DEFINITION_WRITERS_MAX: usize = 64;

/// How much of a rejected name an error keeps, in bytes.
const ERROR_NAME_BYTES_MAX: usize = 128;

const _: () = assert!(
    5 + DEFINITION_VALUES_MAX
        * (5 + DEFINITION_WRITERS_MAX * VV_ENTRY_BYTES_MAX
            + 5
            + DESCRIPTION_BYTES_MAX
            + 5
            + ALIASES_MAX * (1 + LABEL_LEN_MAX))
        <= RECORD_BODY_BYTES_MAX
);

/// A record that breaks the rules of the registry. It is never stored and
/// never forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecord {
    /// The version was written by another broker than the key's origin;
    /// only the origin writes under its own key.
    #[error("record version is by {actor} but the key's origin is {origin}")]
    ActorNotOrigin {
        /// The key's origin.
        origin: NodeId,
        /// The dot's actor.
        actor: NodeId,
    },
    /// The sequence number is 0; an origin's first change is 1.
    #[error("record sequence number is 0; sequence numbers start at 1")]
    ZeroCounter,
    /// The body belongs to another kind of record than the key says.
    #[error("record key is a {key_kind} record but its body is a {body_kind}")]
    BodyKindMismatch {
        /// The key's kind.
        key_kind: RecordKind,
        /// The body's kind.
        body_kind: RecordKind,
    },
    /// The key's name is not valid for its kind.
    #[error("invalid {kind} record name `{name}`: {detail}")]
    InvalidName {
        /// The key's kind.
        kind: RecordKind,
        /// The name, cut short when long.
        name: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A field of the body is malformed.
    #[error("invalid {field}: {detail}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A size or count is over its limit.
    #[error("{field} is {len}; the limit is {max}")]
    TooLarge {
        /// What was measured (bytes or items, as its name says).
        field: &'static str,
        /// The measured size or count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The node's protocol version is 0, which no release speaks.
    #[error("protocol version {version} is not a known sync protocol version")]
    UnknownProtocolVersion {
        /// The version given.
        version: u16,
    },
    /// A revocation tombstone: revocations are permanent.
    #[error("revocations are permanent and cannot be deleted")]
    RevocationDeleted,
    /// A manifest tombstone: an origin replaces its manifest, never deletes it.
    #[error("manifests are replaced, never deleted")]
    ManifestDeleted,
    /// The record is not signed by its origin: its public key is not the
    /// origin's, or its signature does not verify. Someone other than the
    /// origin wrote it, or it was damaged on the way.
    #[error("record of {origin} is not signed by its origin: {detail}")]
    InvalidSignature {
        /// The key's origin.
        origin: NodeId,
        /// What did not match.
        detail: &'static str,
    },
    /// A local instance record names another node than this broker.
    #[error("instance `{name}` is on node `{instance_node}`, but this broker is `{self_node}`")]
    InstanceNodeMismatch {
        /// The instance name.
        name: String,
        /// Its node part.
        instance_node: String,
        /// This broker's node name.
        self_node: String,
    },
}

impl InvalidRecord {
    /// The stable code of every record error.
    pub const CODE: &'static str = "INVALID_RECORD";

    /// The stable code of a forged record.
    pub const SIGNATURE_CODE: &'static str = "INVALID_SIGNATURE";

    /// The stable code of this error: [`InvalidRecord::SIGNATURE_CODE`] for
    /// a forged record, [`InvalidRecord::CODE`] for every other.
    pub fn code(&self) -> &'static str {
        match self {
            InvalidRecord::InvalidSignature { .. } => Self::SIGNATURE_CODE,
            _ => Self::CODE,
        }
    }
}

/// Signs `record` as its origin: sets its public key and its signature over
/// [`Record::signed_bytes`]. Ed25519 signing is deterministic, so this needs
/// no randomness and the same record always gets the same signature.
pub fn sign(record: &mut Record, key: &SigningKey) {
    record.origin_key = key.verifying_key().to_bytes();
    record.signature = RecordSignature(key.sign(&record.signed_bytes()).to_bytes());
}

/// Checks that `record` is signed by its origin: the public key it carries
/// hashes to the origin's node id and the signature verifies.
pub fn verify_signature(record: &Record) -> Result<(), InvalidRecord> {
    let forged = |detail: &'static str| InvalidRecord::InvalidSignature {
        origin: record.key.origin.clone(),
        detail,
    };
    if NodeId::of_public_key(&record.origin_key) != record.key.origin {
        return Err(forged("its public key is not the origin's"));
    }
    let public_key = VerifyingKey::from_bytes(&record.origin_key)
        .map_err(|_| forged("its public key is not an Ed25519 key"))?;
    let signature = ed25519_dalek::Signature::from_bytes(&record.signature.0);
    // `verify_strict` also refuses weak keys and malleable signatures, so
    // one record has one valid signature.
    public_key
        .verify_strict(&record.signed_bytes(), &signature)
        .map_err(|_| forged("its signature does not verify"))?;
    Ok(())
}

/// Checks one record on its own: the rules every broker applies before
/// merging anything, whoever sent it. The signature is checked first for
/// the origin's key and last for the signature itself, so a record of the
/// wrong key costs nothing and a malformed one costs no verification.
pub fn validate(record: &Record) -> Result<(), InvalidRecord> {
    if NodeId::of_public_key(&record.origin_key) != record.key.origin {
        return Err(InvalidRecord::InvalidSignature {
            origin: record.key.origin.clone(),
            detail: "its public key is not the origin's",
        });
    }
    validate_unsigned(record)?;
    verify_signature(record)
}

/// The checks of [`validate`] except the signature: for a record being
/// written, before it is signed.
pub(crate) fn validate_unsigned(record: &Record) -> Result<(), InvalidRecord> {
    let key = &record.key;
    if record.dot.actor != key.origin {
        return Err(InvalidRecord::ActorNotOrigin {
            origin: key.origin.clone(),
            actor: record.dot.actor.clone(),
        });
    }
    if record.dot.counter == 0 {
        return Err(InvalidRecord::ZeroCounter);
    }
    if key.name.len() > RECORD_NAME_BYTES_MAX {
        return Err(InvalidRecord::TooLarge {
            field: "record name bytes",
            len: key.name.len(),
            max: RECORD_NAME_BYTES_MAX,
        });
    }
    validate_name(key)?;
    let Some(body) = &record.body else {
        return match key.kind {
            RecordKind::Revocation => Err(InvalidRecord::RevocationDeleted),
            RecordKind::Manifest => Err(InvalidRecord::ManifestDeleted),
            _ => Ok(()),
        };
    };
    if body.kind() != key.kind {
        return Err(InvalidRecord::BodyKindMismatch {
            key_kind: key.kind,
            body_kind: body.kind(),
        });
    }
    let body_bytes = postcard::experimental::serialized_size(body).map_err(|err| {
        InvalidRecord::InvalidField {
            field: "body",
            detail: err.to_string(),
        }
    })?;
    check_len("record body bytes", body_bytes, RECORD_BODY_BYTES_MAX)?;
    match body {
        RecordBody::Node(node) => validate_node(&key.origin, node),
        RecordBody::Instance(instance) => validate_instance(&key.name, instance),
        RecordBody::Admission(admission) => {
            check_label("node_name", &admission.node_name, NamePart::Node)?;
            check_author("admitted_by", &admission.admitted_by, &key.origin)
        }
        RecordBody::Revocation(revocation) => {
            check_len(
                "revocation reason bytes",
                revocation.reason.len(),
                REVOCATION_REASON_BYTES_MAX,
            )?;
            check_author("revoked_by", &revocation.revoked_by, &key.origin)
        }
        RecordBody::Definition(definition) => validate_definition(definition),
        RecordBody::Approval(approval) => {
            crate::approval::check_body(approval).map_err(|detail| InvalidRecord::InvalidField {
                field: "approval",
                detail,
            })
        }
        RecordBody::Manifest(manifest) => validate_manifest(manifest, record.dot.counter),
    }
}

/// Runs ascending, non-empty, apart from each other (so one live set has
/// one encoding) and below the manifest's own number.
fn validate_manifest(manifest: &ManifestBody, counter: u64) -> Result<(), InvalidRecord> {
    check_len("manifest runs", manifest.live.len(), MANIFEST_RUNS_MAX)?;
    let invalid = |detail: String| InvalidRecord::InvalidField {
        field: "manifest",
        detail,
    };
    let mut next_free = 1;
    for run in &manifest.live {
        let CounterRun { first, len } = *run;
        if len == 0 {
            return Err(invalid(format!("the run at {first} is empty")));
        }
        if first < next_free {
            return Err(invalid(format!(
                "the run at {first} is out of order or touches the one before"
            )));
        }
        let end = first
            .checked_add(len)
            .filter(|end| *end <= counter)
            .ok_or_else(|| {
                invalid(format!(
                    "the run at {first} reaches past the manifest's own number {counter}"
                ))
            })?;
        // Saturating: a run that ends at the last number leaves no room,
        // and any run after it fails the order check above.
        next_free = end.saturating_add(1);
    }
    Ok(())
}

/// Checks one definition value: description size, alias count and labels.
pub fn validate_definition_value(value: &DefinitionValue) -> Result<(), InvalidRecord> {
    check_len(
        "definition description bytes",
        value.description.len(),
        DESCRIPTION_BYTES_MAX,
    )?;
    check_len("definition aliases", value.aliases.len(), ALIASES_MAX)?;
    for alias in &value.aliases {
        check_label("alias", alias, NamePart::Definition)?;
    }
    Ok(())
}

fn validate_name(key: &RecordKey) -> Result<(), InvalidRecord> {
    let invalid = |detail: String| InvalidRecord::InvalidName {
        kind: key.kind,
        name: truncate(&key.name, ERROR_NAME_BYTES_MAX),
        detail,
    };
    match key.kind {
        RecordKind::Node | RecordKind::Manifest if key.name.is_empty() => Ok(()),
        RecordKind::Node | RecordKind::Manifest => Err(invalid(format!(
            "a {} record is named by its origin; its name must be empty",
            key.kind
        ))),
        RecordKind::Instance => {
            let name = AgentName::parse(&key.name).map_err(|err| invalid(err.to_string()))?;
            // An instance always names its node; the workspace is optional
            // (an agent that is not tied to a checkout has none).
            if name.node().is_none() {
                return Err(invalid(
                    "an instance name gives its node, as in `@fabric@laptop#main` or `@fabric@laptop`"
                        .into(),
                ));
            }
            let canonical = name.to_string();
            if canonical != key.name {
                return Err(invalid(format!("not canonical; write it as `{canonical}`")));
            }
            Ok(())
        }
        RecordKind::Admission | RecordKind::Revocation => NodeId::parse(&key.name)
            .map(drop)
            .map_err(|err| invalid(err.to_string())),
        RecordKind::Approval if crate::approval::is_id(&key.name) => Ok(()),
        RecordKind::Approval => Err(invalid(format!(
            "an approval is named `{}` and {} hex digits",
            crate::approval::ID_PREFIX,
            crate::approval::ID_HEX_LEN
        ))),
        RecordKind::Definition => {
            let label = Label::parse(&key.name, NamePart::Definition)
                .map_err(|err| invalid(err.to_string()))?;
            if label.as_str() != key.name {
                return Err(invalid(format!("not canonical; write it as `{label}`")));
            }
            Ok(())
        }
    }
}

fn validate_node(origin: &NodeId, node: &NodeBody) -> Result<(), InvalidRecord> {
    check_label("node_name", &node.node_name, NamePart::Node)?;
    check_len("node addresses", node.addresses.len(), NODE_ADDRESSES_MAX)?;
    check_len("node via", node.via.len(), NODE_VIA_MAX)?;
    for (idx, via) in node.via.iter().enumerate() {
        if via == origin || node.via[..idx].contains(via) {
            return Err(InvalidRecord::InvalidField {
                field: "via",
                detail: format!("`{via}` is the node itself or named twice"),
            });
        }
    }
    for address in &node.addresses {
        check_len("address bytes", address.len(), ADDRESS_BYTES_MAX)?;
        // Parsing only: `core::net` has no sockets, so the core stays pure.
        if address.parse::<core::net::SocketAddr>().is_err() {
            return Err(InvalidRecord::InvalidField {
                field: "address",
                detail: format!("`{address}` is not an ip:port socket address"),
            });
        }
    }
    if node.scout_version.is_empty() {
        return Err(InvalidRecord::InvalidField {
            field: "scout_version",
            detail: "empty".into(),
        });
    }
    check_len(
        "scout version bytes",
        node.scout_version.len(),
        VERSION_STRING_BYTES_MAX,
    )?;
    // A newer protocol version is accepted: announcing it is how a mesh
    // learns that some brokers can upgrade. Version 0 was never released.
    if node.protocol_version == 0 {
        return Err(InvalidRecord::UnknownProtocolVersion {
            version: node.protocol_version,
        });
    }
    Ok(())
}

fn validate_instance(name: &str, instance: &InstanceBody) -> Result<(), InvalidRecord> {
    // `validate_name` already parsed the name; a failure here cannot happen
    // but is still an error, not a panic.
    let workspace = AgentName::parse(name).ok().map(|name| {
        name.workspace()
            .map(|workspace| workspace.as_str().to_owned())
            .unwrap_or_default()
    });
    if workspace.as_deref() != Some(instance.workspace.as_str()) {
        return Err(InvalidRecord::InvalidField {
            field: "workspace",
            detail: format!(
                "`{}` is not the workspace of `{name}`",
                truncate(&instance.workspace, ERROR_NAME_BYTES_MAX)
            ),
        });
    }
    check_len("cwd bytes", instance.cwd.len(), CWD_BYTES_MAX)
}

fn validate_definition(definition: &DefinitionBody) -> Result<(), InvalidRecord> {
    let register_error = |detail: String| InvalidRecord::InvalidField {
        field: "definition register",
        detail,
    };
    let entries = definition
        .entries()
        .map_err(|err| register_error(err.to_string()))?;
    if entries.is_empty() {
        return Err(register_error("holds no value".into()));
    }
    check_len("definition values", entries.len(), DEFINITION_VALUES_MAX)?;
    for entry in &entries {
        check_len(
            "definition writers",
            entry.clock.dots.len(),
            DEFINITION_WRITERS_MAX,
        )?;
        // Writes always carry a clock with the writer's counter in it, and
        // `MVReg` ignores a write with an empty clock.
        if entry.clock.is_empty() || entry.clock.dots.values().any(|counter| *counter == 0) {
            return Err(register_error(
                "a clock is empty or has a zero counter".into(),
            ));
        }
        validate_definition_value(&entry.value)?;
    }
    // A register built by writes and merges never holds two entries with
    // the same clock, nor one entry whose clock is older than another's;
    // such a register would merge differently depending on order.
    for (idx, entry) in entries.iter().enumerate() {
        for other in &entries[idx + 1..] {
            if entry.clock.partial_cmp(&other.clock).is_some() {
                return Err(register_error(
                    "two values are not concurrent (one clock descends from the other)".into(),
                ));
            }
        }
    }
    Ok(())
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), InvalidRecord> {
    if len > max {
        Err(InvalidRecord::TooLarge { field, len, max })
    } else {
        Ok(())
    }
}

/// Checks a label field: a valid DNS label, already lower-case.
fn check_label(field: &'static str, value: &str, part: NamePart) -> Result<(), InvalidRecord> {
    let label = Label::parse(value, part).map_err(|err| InvalidRecord::InvalidField {
        field,
        detail: err.to_string(),
    })?;
    if label.as_str() != value {
        return Err(InvalidRecord::InvalidField {
            field,
            detail: format!("not canonical; write it as `{label}`"),
        });
    }
    Ok(())
}

fn check_author(
    field: &'static str,
    author: &NodeId,
    origin: &NodeId,
) -> Result<(), InvalidRecord> {
    // The origin signed the record, so a body naming another author is a
    // claim made in someone else's name: a forgery, not a typo.
    if author == origin {
        Ok(())
    } else {
        Err(InvalidRecord::InvalidSignature {
            origin: origin.clone(),
            detail: match field {
                "admitted_by" => "its admitted_by is not its origin",
                _ => "its revoked_by is not its origin",
            },
        })
    }
}

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The key was unknown; the record is stored.
    Inserted,
    /// The record superseded the stored version.
    Replaced,
    /// The stored version is as new or newer; nothing changed.
    Stale,
}

/// Two or more admissions of one node id that disagree on its public key.
/// Such a node is not a member until the conflicting admissions are deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConflict {
    /// The node id admitted with different keys.
    pub node_id: NodeId,
    /// Each admission: the admitting origin and the key it admitted.
    pub admissions: Vec<(NodeId, [u8; 32])>,
}

/// A node as its own record describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry<'a> {
    /// The node.
    pub node_id: &'a NodeId,
    /// When it last changed its record.
    pub hlc: Hlc,
    /// What it says about itself.
    pub body: &'a NodeBody,
}

/// A live agent instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceEntry<'a> {
    /// Its full name.
    pub name: AgentName,
    /// The broker that runs it.
    pub origin: &'a NodeId,
    /// When its record last changed.
    pub hlc: Hlc,
    /// Its state.
    pub body: &'a InstanceBody,
}

/// The membership view, recomputed whenever an admission or revocation
/// record changes (see the module documentation for the rule).
#[derive(Debug, Clone, Default, PartialEq)]
struct Trust {
    has_admissions: bool,
    members: BTreeSet<NodeId>,
    admitters: BTreeSet<NodeId>,
    revoked: BTreeSet<NodeId>,
    keys: BTreeMap<NodeId, [u8; 32]>,
    conflicts: Vec<KeyConflict>,
}

/// The set of records one broker holds, with its derived views.
///
/// Which version of a key wins: the higher `dot.counter`; on equal counters
/// (only possible when an origin lost its database and reused a number) the
/// higher timestamp, then the larger encoding, so every broker picks the same
/// one whatever order they arrive in.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The mesh's founder, the root of every admission chain.
    founder: NodeId,
    records: BTreeMap<RecordKey, Record>,
    /// Every stored record by origin and sequence number, for deltas and
    /// for advancing version vectors. A set of pairs rather than a map,
    /// because a reused sequence number can name two keys.
    by_origin: BTreeMap<NodeId, BTreeSet<(u64, RecordKey)>>,
    /// Keys of admission and revocation records, so the membership view is
    /// recomputed from them alone.
    trust_keys: BTreeSet<RecordKey>,
    /// How many of `trust_keys` are revocations: while none are, an
    /// admission can extend the membership view without a recomputation.
    revocation_records: usize,
    trust: Trust,
    /// Whether `trust` lags the records (between [`Registry::apply_unsettled`]
    /// and [`Registry::settle_trust`]).
    trust_stale: bool,
    /// How many times records of each kind changed, so a reader that cares
    /// about one kind skips the changes of the others.
    changes: BTreeMap<RecordKind, u64>,
    /// Records forgotten because their origin's manifest no longer lists
    /// them, until [`Registry::take_forgotten`].
    forgotten: Vec<RecordKey>,
}

impl Registry {
    /// An empty registry of the mesh founded by `founder` (the node id whose
    /// bytes are the mesh id, see [`founder_of`]).
    pub fn new(founder: NodeId) -> Registry {
        Registry {
            founder,
            records: BTreeMap::new(),
            by_origin: BTreeMap::new(),
            trust_keys: BTreeSet::new(),
            revocation_records: 0,
            trust: Trust::default(),
            trust_stale: false,
            changes: BTreeMap::new(),
            forgotten: Vec::new(),
        }
    }

    /// The mesh's founder, the root of the admission chains.
    pub fn founder(&self) -> &NodeId {
        &self.founder
    }

    /// How many records (tombstones included) it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The stored version of a key.
    pub fn get(&self, key: &RecordKey) -> Option<&Record> {
        self.records.get(key)
    }

    /// Every record, tombstones included, in key order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// Every origin with at least one stored record.
    pub fn origins(&self) -> impl Iterator<Item = &NodeId> {
        self.by_origin.keys()
    }

    /// The highest sequence number stored for `origin`, 0 if none.
    pub fn max_counter(&self, origin: &NodeId) -> u64 {
        self.by_origin
            .get(origin)
            .and_then(|index| index.last())
            .map_or(0, |(counter, _)| *counter)
    }

    /// Whether a record of `origin` with sequence number `counter` is stored.
    pub fn has_counter(&self, origin: &NodeId, counter: u64) -> bool {
        self.by_origin.get(origin).is_some_and(|index| {
            index
                .range((counter, min_key(origin))..)
                .next()
                .is_some_and(|(found, _)| *found == counter)
        })
    }

    /// The records of `origin` with a sequence number above `after`, in
    /// sequence order.
    pub fn records_after<'a>(
        &'a self,
        origin: &NodeId,
        after: u64,
    ) -> impl Iterator<Item = &'a Record> + 'a {
        let start = (after.saturating_add(1), min_key(origin));
        self.by_origin
            .get(origin)
            .into_iter()
            .flat_map(move |index| index.range(start.clone()..))
            .filter_map(|(_, key)| self.records.get(key))
    }

    /// Node ids admitted by a chain of admissions from the founder, with no
    /// revocation and no key conflict (see the module documentation).
    pub fn members(&self) -> &BTreeSet<NodeId> {
        &self.trust.members
    }

    /// Whether `node_id` is a member.
    pub fn is_member(&self, node_id: &NodeId) -> bool {
        self.trust.members.contains(node_id)
    }

    /// Whether any broker revoked `node_id`.
    pub fn is_revoked(&self, node_id: &NodeId) -> bool {
        self.trust.revoked.contains(node_id)
    }

    /// How many times a record of `kind` was stored or forgotten: a reader
    /// of one kind compares it with its last look instead of scanning every
    /// record on every change of the registry.
    pub fn changes_of(&self, kind: RecordKind) -> u64 {
        self.changes.get(&kind).copied().unwrap_or(0)
    }

    /// [`Registry::changes_of`] admissions and revocations together: the
    /// membership view can have changed only when this did.
    pub fn trust_changes(&self) -> u64 {
        self.changes_of(RecordKind::Admission) + self.changes_of(RecordKind::Revocation)
    }

    /// The stored admission and revocation records (tombstones included),
    /// without walking the other records.
    pub fn trust_records(&self) -> impl Iterator<Item = &Record> + '_ {
        self.trust_keys
            .iter()
            .filter_map(|key| self.records.get(key))
    }

    /// Whether any admission counts (its author is admitted). Until one
    /// does, the mesh has no membership yet (a fresh broker before it joins
    /// or founds one, or a joiner before the founder's records arrive).
    pub fn has_admissions(&self) -> bool {
        self.trust.has_admissions
    }

    /// Whether `node_id` may sync with this broker: anyone while the mesh has
    /// no admissions (a fresh broker); afterwards members, and brokers that
    /// admitted someone. An admitter may be a member whose own admission has
    /// not arrived yet; without this, a broker that first hears of its own
    /// admission would refuse the broker that admitted it. This only lets
    /// an admitter's sync messages in: it is not a member in any view, and
    /// the transport admits only members' keys. A revoked node never syncs.
    pub fn may_sync(&self, node_id: &NodeId) -> bool {
        if !self.has_admissions() {
            return true;
        }
        !self.is_revoked(node_id)
            && (self.is_member(node_id) || self.trust.admitters.contains(node_id))
    }

    /// The public key a member's TLS identity must match; `None` for a node
    /// that is not a member (never admitted, revoked, or admitted with
    /// conflicting keys).
    pub fn admitted_key(&self, node_id: &NodeId) -> Option<[u8; 32]> {
        if self.is_member(node_id) {
            self.trust.keys.get(node_id).copied()
        } else {
            None
        }
    }

    /// Node ids admitted with different keys by different admissions.
    pub fn conflicts(&self) -> &[KeyConflict] {
        &self.trust.conflicts
    }

    /// Live node records of origins that are not revoked, by node id.
    pub fn nodes(&self) -> Vec<NodeEntry<'_>> {
        self.records
            .values()
            .filter(|record| !self.is_revoked(&record.key.origin))
            .filter_map(|record| match &record.body {
                Some(RecordBody::Node(body)) => Some(NodeEntry {
                    node_id: &record.key.origin,
                    hlc: record.hlc,
                    body,
                }),
                _ => None,
            })
            .collect()
    }

    /// The node record of `node_id`, if live.
    pub fn node(&self, node_id: &NodeId) -> Option<&NodeBody> {
        let key = RecordKey {
            origin: node_id.clone(),
            kind: RecordKind::Node,
            name: String::new(),
        };
        match self
            .records
            .get(&key)
            .and_then(|record| record.body.as_ref())
        {
            Some(RecordBody::Node(body)) => Some(body),
            _ => None,
        }
    }

    /// Live instances, by name.
    ///
    /// Shown only when their origin is not revoked and, if the origin's node
    /// record is known, when their node part is that node's name: a broker
    /// cannot publish instances for another broker's name.
    pub fn instances(&self) -> Vec<InstanceEntry<'_>> {
        let mut instances: Vec<InstanceEntry<'_>> = self
            .records
            .values()
            .filter(|record| !self.is_revoked(&record.key.origin))
            .filter_map(|record| {
                let Some(RecordBody::Instance(body)) = &record.body else {
                    return None;
                };
                let name = AgentName::parse(&record.key.name).ok()?;
                let node_part = name.node()?.as_str();
                let origin_node = self.node(&record.key.origin);
                if origin_node.is_some_and(|node| node.node_name != node_part) {
                    return None;
                }
                Some(InstanceEntry {
                    name,
                    origin: &record.key.origin,
                    hlc: record.hlc,
                    body,
                })
            })
            .collect();
        instances.sort_by(|left, right| {
            left.name
                .cmp(&right.name)
                .then(left.origin.cmp(right.origin))
        });
        instances
    }

    /// The live instances as resolution candidates, `local` being this
    /// broker's node id.
    pub fn candidates(&self, local: &NodeId) -> Vec<Candidate> {
        self.instances()
            .into_iter()
            .map(|instance| Candidate {
                is_local: instance.origin == local,
                state: instance.body.endpoint_state,
                active_flights: instance.body.active_flights,
                worktrees: instance.body.worktrees,
                name: instance.name,
            })
            .collect()
    }

    /// The merged register of definition `name`: every live snapshot of it
    /// merged in origin order, so equal record sets give equal registers.
    pub fn definition_register(&self, name: &str) -> MVReg<DefinitionValue, NodeId> {
        let mut register = MVReg::new();
        for record in self.records.values() {
            if record.key.kind != RecordKind::Definition
                || record.key.name != name
                || self.is_revoked(&record.key.origin)
            {
                continue;
            }
            if let Some(RecordBody::Definition(body)) = &record.body {
                register.merge(body.register.clone());
            }
        }
        register
    }

    /// The current values of definition `name`, sorted; several when edits
    /// were concurrent, none when it is unknown.
    pub fn definition(&self, name: &str) -> Vec<DefinitionValue> {
        let mut values = self.definition_register(name).read().val;
        values.sort();
        values.dedup();
        values
    }

    /// Every definition with at least one live snapshot, with its values.
    pub fn definitions(&self) -> BTreeMap<String, Vec<DefinitionValue>> {
        let names: BTreeSet<&str> = self
            .records
            .values()
            .filter(|record| record.key.kind == RecordKind::Definition && record.body.is_some())
            .filter(|record| !self.is_revoked(&record.key.origin))
            .map(|record| record.key.name.as_str())
            .collect();
        names
            .into_iter()
            .map(|name| (name.to_owned(), self.definition(name)))
            .collect()
    }

    /// A deterministic hash of the live records (FNV-1a over their postcard
    /// encodings in key order). Tombstones are left out because brokers
    /// collect them at different times, and manifests because they are
    /// how tombstones are collected: an origin writes one whenever its next
    /// round comes after a delete, which changes no fact a user sees.
    /// Equal digests mean equal live sets (barring a 64-bit collision).
    pub fn state_digest(&self) -> u64 {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = FNV_OFFSET;
        let facts = self
            .records
            .values()
            .filter(|record| record.body.is_some() && record.key.kind != RecordKind::Manifest);
        for record in facts {
            let bytes = postcard::to_allocvec(record).unwrap_or_default();
            // The length first, so that record boundaries are part of the hash.
            for byte in (bytes.len() as u64).to_le_bytes().iter().chain(&bytes) {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(FNV_PRIME);
            }
        }
        hash
    }

    /// Stores `record` if it supersedes the stored version of its key. The
    /// caller has validated it.
    pub(crate) fn apply(&mut self, record: Record) -> Applied {
        let applied = self.apply_unsettled(record);
        self.settle_trust();
        applied
    }

    /// [`Registry::apply`], except that a membership change that needs the
    /// whole view recomputed is left for [`Registry::settle_trust`]: a
    /// message of many admissions (a joiner's catch-up) recomputes once,
    /// not once per admission. Until then the membership queries lag; only
    /// record storage may be used in between.
    pub(crate) fn apply_unsettled(&mut self, record: Record) -> Applied {
        if self.manifest_excludes(&record) {
            return Applied::Stale;
        }
        let applied = match self.records.get(&record.key) {
            Some(stored) if !supersedes(&record, stored) => return Applied::Stale,
            Some(stored) => {
                let old = (stored.dot.counter, stored.key.clone());
                if let Some(index) = self.by_origin.get_mut(&record.key.origin) {
                    index.remove(&old);
                }
                Applied::Replaced
            }
            None => Applied::Inserted,
        };
        let key = record.key.clone();
        *self.changes.entry(key.kind).or_default() += 1;
        self.by_origin
            .entry(key.origin.clone())
            .or_default()
            .insert((record.dot.counter, key.clone()));
        let trust_changed = matches!(key.kind, RecordKind::Admission | RecordKind::Revocation);
        if trust_changed
            && self.trust_keys.insert(key.clone())
            && key.kind == RecordKind::Revocation
        {
            self.revocation_records += 1;
        }
        let admitted = match (&record.body, applied) {
            (Some(RecordBody::Admission(body)), Applied::Inserted) => NodeId::parse(&key.name)
                .ok()
                .map(|node_id| (key.origin.clone(), node_id, body.public_key)),
            _ => None,
        };
        let manifest = (key.kind == RecordKind::Manifest).then(|| key.origin.clone());
        self.records.insert(key, record);
        if trust_changed && !self.trust_stale {
            let extended =
                admitted.is_some_and(|(author, node_id, key)| self.admit(author, node_id, key));
            self.trust_stale = !extended;
        }
        if let Some(origin) = manifest {
            self.forget_unlisted(&origin);
        }
        applied
    }

    /// The stored manifest of `origin`.
    pub fn manifest(&self, origin: &NodeId) -> Option<(u64, &ManifestBody)> {
        let key = RecordKey {
            origin: origin.clone(),
            kind: RecordKind::Manifest,
            name: String::new(),
        };
        let record = self.records.get(&key)?;
        match &record.body {
            Some(RecordBody::Manifest(body)) => Some((record.dot.counter, body)),
            _ => None,
        }
    }

    /// Whether the origin's stored manifest says `record` is gone: numbered
    /// below the manifest and not listed as live (a tombstone never is).
    fn manifest_excludes(&self, record: &Record) -> bool {
        record.key.kind != RecordKind::Manifest
            && self
                .manifest(&record.key.origin)
                .is_some_and(|(counter, manifest)| {
                    record.dot.counter < counter
                        && (record.body.is_none() || !manifest.lists(record.dot.counter))
                })
    }

    /// Forgets every record of `origin` its manifest excludes.
    fn forget_unlisted(&mut self, origin: &NodeId) {
        let Some(index) = self.by_origin.get(origin) else {
            return;
        };
        let gone: Vec<RecordKey> = index
            .iter()
            .filter_map(|(_, key)| self.records.get(key))
            .filter(|record| self.manifest_excludes(record))
            .map(|record| record.key.clone())
            .collect();
        for key in gone {
            self.forget(&key);
            self.forgotten.push(key);
        }
    }

    /// The keys forgotten because a manifest excludes them since the last
    /// call, for the shell to delete.
    pub(crate) fn take_forgotten(&mut self) -> Vec<RecordKey> {
        std::mem::take(&mut self.forgotten)
    }

    /// Brings the membership view up to date after
    /// [`Registry::apply_unsettled`].
    pub(crate) fn settle_trust(&mut self) {
        if self.trust_stale {
            self.recompute_trust();
            self.trust_stale = false;
        }
    }

    /// Extends the view, which is up to date without the new admission of
    /// `node_id` by `author` with `key`, by that admission, in the common
    /// cases of a mesh without revocations or key conflicts: `false` (view
    /// untouched) when it takes a recomputation. Equal to the recomputation
    /// by construction: with no revocations and no conflicts, the nodes
    /// reached from the founder are exactly the members and the founder,
    /// and each member has one key.
    fn admit(&mut self, author: NodeId, node_id: NodeId, key: [u8; 32]) -> bool {
        if self.revocation_records > 0 || !self.trust.conflicts.is_empty() {
            return false;
        }
        if !self.trust.members.contains(&author) && author != self.founder {
            // Counts for nothing yet: its author only becomes an admitter.
            self.trust.admitters.insert(author);
            return true;
        }
        match self.trust.keys.get(&node_id) {
            Some(known) if *known == key => {}
            // A second key: a conflict.
            Some(_) => return false,
            None => {
                // Newly reached (unless the founder, reached from the
                // start): its own admissions would now count.
                let authored_admissions = self.by_origin.get(&node_id).is_some_and(|index| {
                    index
                        .iter()
                        .any(|(_, key)| key.kind == RecordKind::Admission)
                });
                if authored_admissions && node_id != self.founder {
                    return false;
                }
                self.trust.members.insert(node_id.clone());
                self.trust.keys.insert(node_id, key);
                self.trust.has_admissions = true;
            }
        }
        self.trust.admitters.insert(author);
        true
    }

    /// Forgets a record entirely, leaving a membership change for
    /// [`Registry::settle_trust`].
    fn forget(&mut self, key: &RecordKey) -> Option<Record> {
        let record = self.records.remove(key)?;
        *self.changes.entry(key.kind).or_default() += 1;
        if let Some(index) = self.by_origin.get_mut(&key.origin) {
            index.remove(&(record.dot.counter, key.clone()));
            if index.is_empty() {
                self.by_origin.remove(&key.origin);
            }
        }
        if self.trust_keys.remove(key) {
            if key.kind == RecordKind::Revocation {
                self.revocation_records -= 1;
            }
            self.trust_stale = true;
        }
        Some(record)
    }

    fn recompute_trust(&mut self) {
        let mut admissions: Vec<(NodeId, NodeId, [u8; 32])> = Vec::new();
        let mut revocations: Vec<(NodeId, NodeId)> = Vec::new();
        for key in &self.trust_keys {
            let Some(record) = self.records.get(key) else {
                continue;
            };
            // Stored records were validated, so names parse; skipping one
            // that does not is safer than trusting it.
            let Ok(node_id) = NodeId::parse(&key.name) else {
                continue;
            };
            match (&record.body, key.kind) {
                (Some(RecordBody::Admission(body)), _) => {
                    admissions.push((key.origin.clone(), node_id, body.public_key));
                }
                (_, RecordKind::Revocation) => {
                    revocations.push((key.origin.clone(), node_id));
                }
                _ => {}
            }
        }
        self.trust = trust_of(&self.founder, &admissions, &revocations);
    }
}

/// The membership view of a set of live admissions `(author, admitted,
/// key)` and revocations `(author, revoked)`, rooted at `founder`: the four
/// steps of the module documentation.
fn trust_of(
    founder: &NodeId,
    admissions: &[(NodeId, NodeId, [u8; 32])],
    revocations: &[(NodeId, NodeId)],
) -> Trust {
    let no_one = BTreeSet::new();
    // Step 1: vouched, revocations ignored.
    let vouched = chain_closure(founder, admissions, &no_one);
    // Step 2: revocations by vouched authors.
    let revoked: BTreeSet<NodeId> = revocations
        .iter()
        .filter(|(author, _)| vouched.contains(author))
        .map(|(_, node_id)| node_id.clone())
        .collect();
    // Step 3: admitted through unrevoked nodes only.
    let admitted = chain_closure(founder, admissions, &revoked);
    // Step 4: the keys counted admissions give each admitted node.
    let mut keys_of: BTreeMap<NodeId, Vec<(NodeId, [u8; 32])>> = BTreeMap::new();
    for (author, node_id, key) in admissions {
        if admitted.contains(author) && admitted.contains(node_id) {
            keys_of
                .entry(node_id.clone())
                .or_default()
                .push((author.clone(), *key));
        }
    }
    let mut trust = Trust {
        has_admissions: !keys_of.is_empty(),
        ..Trust::default()
    };
    for (node_id, counted) in keys_of {
        let keys: BTreeSet<[u8; 32]> = counted.iter().map(|(_, key)| *key).collect();
        match keys.into_iter().collect::<Vec<_>>().as_slice() {
            [key] => {
                trust.members.insert(node_id.clone());
                trust.keys.insert(node_id, *key);
            }
            _ => trust.conflicts.push(KeyConflict {
                node_id,
                admissions: counted,
            }),
        }
    }
    let conflicted: BTreeSet<&NodeId> = trust
        .conflicts
        .iter()
        .map(|conflict| &conflict.node_id)
        .collect();
    trust.admitters = admissions
        .iter()
        .map(|(author, _, _)| author)
        .filter(|author| !conflicted.contains(author) && !revoked.contains(*author))
        .cloned()
        .collect();
    trust.revoked = revoked;
    trust
}

/// Every node reachable from `founder` by admissions whose author is
/// reachable, never entering a node of `excluded`.
fn chain_closure(
    founder: &NodeId,
    admissions: &[(NodeId, NodeId, [u8; 32])],
    excluded: &BTreeSet<NodeId>,
) -> BTreeSet<NodeId> {
    let mut reached = BTreeSet::new();
    if excluded.contains(founder) {
        return reached;
    }
    let mut by_author: BTreeMap<&NodeId, Vec<&NodeId>> = BTreeMap::new();
    for (author, node_id, _) in admissions {
        by_author.entry(author).or_default().push(node_id);
    }
    let mut frontier = vec![founder.clone()];
    reached.insert(founder.clone());
    while let Some(author) = frontier.pop() {
        for node_id in by_author.get(&author).into_iter().flatten() {
            if !excluded.contains(*node_id) && reached.insert((*node_id).clone()) {
                frontier.push((*node_id).clone());
            }
        }
    }
    reached
}

/// The founder of a mesh: the node id with the mesh id's bytes, since a
/// mesh id is the node id of its founder's key ([`crate::wire::MeshId`]).
pub fn founder_of(mesh_id: &crate::wire::MeshId) -> NodeId {
    NodeId::from_bytes(mesh_id.0)
}

/// The smallest key of `origin`, for range queries on the origin index.
fn min_key(origin: &NodeId) -> RecordKey {
    RecordKey {
        origin: origin.clone(),
        kind: RecordKind::Node,
        name: String::new(),
    }
}

/// Whether `new` wins over `stored` for the same key.
fn supersedes(new: &Record, stored: &Record) -> bool {
    use std::cmp::Ordering;
    if broken_merge::active() {
        // The deliberate bug: the stored (older) version always stays.
        return false;
    }
    match (new.dot.counter, new.hlc).cmp(&(stored.dot.counter, stored.hlc)) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => {
            let new_bytes = postcard::to_allocvec(new).unwrap_or_default();
            let stored_bytes = postcard::to_allocvec(stored).unwrap_or_default();
            new_bytes > stored_bytes
        }
    }
}

/// A deliberately broken merge, for proving that netsim's checks catch a
/// replication bug: while switched on, a stored record is never replaced
/// by a newer version of its key. The switch exists only in builds with the
/// cargo feature `broken-merge-for-tests` (netsim's tests enable it; no
/// shipped binary does), and even there it is off until a thread turns it
/// on for itself, so it cannot leak into other threads' runs.
pub mod broken_merge {
    #[cfg(feature = "broken-merge-for-tests")]
    thread_local! {
        static ACTIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Switches the broken merge on or off for the calling thread. Returns
    /// whether the switch exists in this build; without the feature it does
    /// nothing and returns `false`.
    pub fn set_for_this_thread(on: bool) -> bool {
        #[cfg(feature = "broken-merge-for-tests")]
        {
            ACTIVE.with(|active| active.set(on));
            true
        }
        #[cfg(not(feature = "broken-merge-for-tests"))]
        {
            let _ = on;
            false
        }
    }

    /// Whether the calling thread runs the broken merge.
    pub(crate) fn active() -> bool {
        #[cfg(feature = "broken-merge-for-tests")]
        {
            ACTIVE.with(std::cell::Cell::get)
        }
        #[cfg(not(feature = "broken-merge-for-tests"))]
        {
            false
        }
    }
}

/// The version vector a set of records proves on its own: for each origin,
/// the longest run of sequence numbers from 1 with a stored record each.
pub(crate) fn contiguous_vv(registry: &Registry, base: &VClock<NodeId>) -> VClock<NodeId> {
    let mut vv = base.clone();
    for origin in registry.origins() {
        let mut counter = vv.get(origin);
        while registry.has_counter(origin, counter + 1) {
            counter += 1;
        }
        if counter > 0 {
            vv.dots.insert(origin.clone(), counter);
        }
    }
    vv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{EndpointState, Harness};
    use crdts::{CmRDT, Dot};

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    fn id(byte: u8) -> NodeId {
        NodeId::of_public_key(&key(byte).verifying_key().to_bytes())
    }

    /// A registry of the mesh founded by node 1.
    fn registry() -> Registry {
        Registry::new(id(1))
    }

    fn record(
        origin: u8,
        counter: u64,
        kind: RecordKind,
        name: &str,
        body: Option<RecordBody>,
    ) -> Record {
        let mut record = Record {
            key: RecordKey {
                origin: id(origin),
                kind,
                name: name.into(),
            },
            dot: Dot::new(id(origin), counter),
            hlc: Hlc {
                wall_ms: counter,
                logical: 0,
            },
            body,
            origin_key: [0; 32],
            signature: RecordSignature::UNSIGNED,
        };
        sign(&mut record, &key(origin));
        record
    }

    fn node_body(name: &str) -> RecordBody {
        RecordBody::Node(NodeBody {
            node_name: name.into(),
            addresses: vec!["192.0.2.1:4433".into(), "[2001:db8::1]:4433".into()],
            http_port: 3100,
            scout_version: "0.1.0".into(),
            protocol_version: 1,
            via: Vec::new(),
        })
    }

    fn instance_body(workspace: &str) -> RecordBody {
        RecordBody::Instance(InstanceBody {
            harness: Harness::Codex,
            workspace: workspace.into(),
            cwd: "~/src".into(),
            endpoint_state: EndpointState::Idle,
            active_flights: 0,
            worktrees: false,
        })
    }

    fn admission(by: u8, counter: u64, admitted: u8, key: u8) -> Record {
        record(
            by,
            counter,
            RecordKind::Admission,
            id(admitted).as_str(),
            Some(RecordBody::Admission(AdmissionBody {
                public_key: [key; 32],
                node_name: format!("node{admitted}"),
                admitted_by: id(by),
                method: AdmissionMethod::Invite,
            })),
        )
    }

    fn revocation(by: u8, counter: u64, revoked: u8) -> Record {
        record(
            by,
            counter,
            RecordKind::Revocation,
            id(revoked).as_str(),
            Some(RecordBody::Revocation(RevocationBody {
                reason: "laptop stolen".into(),
                revoked_by: id(by),
            })),
        )
    }

    #[test]
    fn valid_records_pass() {
        validate(&record(
            1,
            1,
            RecordKind::Node,
            "",
            Some(node_body("laptop")),
        ))
        .unwrap();
        validate(&record(
            1,
            2,
            RecordKind::Instance,
            "@fabric@laptop#feature/x",
            Some(instance_body("feature/x")),
        ))
        .unwrap();
        validate(&admission(1, 3, 2, 7)).unwrap();
        validate(&revocation(1, 4, 2)).unwrap();
        validate(&record(
            1,
            5,
            RecordKind::Instance,
            "@fabric@laptop#main",
            None,
        ))
        .unwrap();
    }

    #[test]
    fn invalid_records_get_typed_errors() {
        let mut forged = record(1, 1, RecordKind::Node, "", Some(node_body("laptop")));
        forged.dot.actor = id(2);
        assert!(matches!(
            validate(&forged),
            Err(InvalidRecord::ActorNotOrigin { .. })
        ));

        let zero = record(1, 0, RecordKind::Node, "", Some(node_body("laptop")));
        assert_eq!(validate(&zero), Err(InvalidRecord::ZeroCounter));

        let mismatch = record(1, 1, RecordKind::Node, "", Some(instance_body("main")));
        assert!(matches!(
            validate(&mismatch),
            Err(InvalidRecord::BodyKindMismatch { .. })
        ));

        let cases = [
            (RecordKind::Node, "laptop"),
            (RecordKind::Instance, "@fabric"),
            (RecordKind::Instance, "@fabric#main"),
            (RecordKind::Instance, "@Fabric@laptop#main"),
            (RecordKind::Instance, "fabric@laptop#main"),
            (RecordKind::Admission, "not-a-node-id"),
            (RecordKind::Definition, "Fabric"),
            (RecordKind::Definition, "fab_ric"),
        ];
        for (kind, name) in cases {
            let err = validate(&record(1, 1, kind, name, None)).unwrap_err();
            assert!(
                matches!(err, InvalidRecord::InvalidName { .. }),
                "{kind} {name}: {err}"
            );
            assert_eq!(err.code(), "INVALID_RECORD");
        }

        let huge_name = "x".repeat(10_000);
        let err = validate(&record(1, 1, RecordKind::Definition, &huge_name, None)).unwrap_err();
        assert!(matches!(err, InvalidRecord::TooLarge { .. }));
        assert!(err.to_string().len() < 200);

        let revoke_delete = record(1, 2, RecordKind::Revocation, id(2).as_str(), None);
        assert_eq!(
            validate(&revoke_delete),
            Err(InvalidRecord::RevocationDeleted)
        );
    }

    #[test]
    fn body_fields_are_checked() {
        let mut node = NodeBody {
            node_name: "laptop".into(),
            addresses: vec![],
            http_port: 3100,
            scout_version: "0.1.0".into(),
            protocol_version: 1,
            via: Vec::new(),
        };
        let check = |node: &NodeBody| {
            validate(&record(
                1,
                1,
                RecordKind::Node,
                "",
                Some(RecordBody::Node(node.clone())),
            ))
        };
        check(&node).unwrap();
        node.addresses = vec!["laptop.local:4433".into()];
        assert!(matches!(
            check(&node),
            Err(InvalidRecord::InvalidField {
                field: "address",
                ..
            })
        ));
        node.addresses = vec!["192.0.2.1:1".into(); NODE_ADDRESSES_MAX + 1];
        assert!(matches!(
            check(&node),
            Err(InvalidRecord::TooLarge {
                field: "node addresses",
                ..
            })
        ));
        node.addresses = vec![];
        let members: Vec<NodeId> = (0..=NODE_VIA_MAX)
            .map(|n| NodeId::parse(&format!("{:032x}", 0xa0 + n)).unwrap())
            .collect();
        node.via = members[..NODE_VIA_MAX].to_vec();
        check(&node).unwrap();
        node.via = vec![members[0].clone(), members[0].clone()];
        assert!(matches!(
            check(&node),
            Err(InvalidRecord::InvalidField { field: "via", .. })
        ));
        node.via = members;
        assert!(matches!(
            check(&node),
            Err(InvalidRecord::TooLarge {
                field: "node via",
                ..
            })
        ));
        node.via = vec![];
        node.protocol_version = 0;
        assert!(matches!(
            check(&node),
            Err(InvalidRecord::UnknownProtocolVersion { version: 0 })
        ));
        node.protocol_version = 7;
        check(&node).unwrap();
        node.node_name = "Laptop".into();
        assert!(matches!(
            check(&node),
            Err(InvalidRecord::InvalidField {
                field: "node_name",
                ..
            })
        ));

        let wrong_workspace = record(
            1,
            1,
            RecordKind::Instance,
            "@fabric@laptop#main",
            Some(instance_body("dev")),
        );
        assert!(matches!(
            validate(&wrong_workspace),
            Err(InvalidRecord::InvalidField {
                field: "workspace",
                ..
            })
        ));

        let mut by_other = admission(1, 1, 2, 7);
        if let Some(RecordBody::Admission(body)) = &mut by_other.body {
            body.admitted_by = id(3);
        }
        sign(&mut by_other, &key(1));
        let err = validate(&by_other).unwrap_err();
        assert!(
            matches!(err, InvalidRecord::InvalidSignature { .. }),
            "{err}"
        );
        assert_eq!(err.code(), "INVALID_SIGNATURE");

        let long_reason = record(
            1,
            1,
            RecordKind::Revocation,
            id(2).as_str(),
            Some(RecordBody::Revocation(RevocationBody {
                reason: "x".repeat(REVOCATION_REASON_BYTES_MAX + 1),
                revoked_by: id(1),
            })),
        );
        assert!(matches!(
            validate(&long_reason),
            Err(InvalidRecord::TooLarge { .. })
        ));
    }

    /// Every string a record carries from a peer: accepted at its limit,
    /// refused one byte past it with an error naming the field.
    #[test]
    fn record_strings_are_accepted_at_their_limit_and_refused_past_it() {
        type Build = fn(usize) -> Record;
        let cases: &[(&str, usize, Build)] = &[
            ("address", ADDRESS_BYTES_MAX, |len| {
                // The longest socket address there is: exactly the limit.
                let longest = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535";
                let address = if len == longest.len() {
                    longest.to_owned()
                } else {
                    "x".repeat(len)
                };
                let mut body = node_body("laptop");
                if let RecordBody::Node(node) = &mut body {
                    node.addresses = vec![address];
                }
                record(1, 1, RecordKind::Node, "", Some(body))
            }),
            ("scout version", VERSION_STRING_BYTES_MAX, |len| {
                let mut body = node_body("laptop");
                if let RecordBody::Node(node) = &mut body {
                    node.scout_version = "1".repeat(len);
                }
                record(1, 1, RecordKind::Node, "", Some(body))
            }),
            ("cwd", CWD_BYTES_MAX, |len| {
                let mut body = instance_body("main");
                if let RecordBody::Instance(instance) = &mut body {
                    instance.cwd = "d".repeat(len);
                }
                record(
                    1,
                    1,
                    RecordKind::Instance,
                    "@fabric@laptop#main",
                    Some(body),
                )
            }),
            ("revocation reason", REVOCATION_REASON_BYTES_MAX, |len| {
                record(
                    1,
                    1,
                    RecordKind::Revocation,
                    id(2).as_str(),
                    Some(RecordBody::Revocation(RevocationBody {
                        reason: "r".repeat(len),
                        revoked_by: id(1),
                    })),
                )
            }),
            ("definition description", DESCRIPTION_BYTES_MAX, |len| {
                definition_record(
                    1,
                    1,
                    &[DefinitionEntry {
                        clock: VClock::from(Dot::new(id(1), 1)),
                        value: value(&"d".repeat(len)),
                    }],
                )
            }),
        ];
        for (field, max, build) in cases {
            validate(&build(*max)).unwrap_or_else(|err| panic!("{field} at its limit: {err}"));
            let err = validate(&build(max + 1)).unwrap_err();
            assert_eq!(err.code(), "INVALID_RECORD", "{field}");
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    fn value(description: &str) -> DefinitionValue {
        DefinitionValue {
            description: description.into(),
            aliases: vec!["fab".into()],
        }
    }

    fn definition_record(origin: u8, counter: u64, entries: &[DefinitionEntry]) -> Record {
        record(
            origin,
            counter,
            RecordKind::Definition,
            "fabric",
            Some(RecordBody::Definition(
                DefinitionBody::from_entries(entries).unwrap(),
            )),
        )
    }

    #[test]
    fn definition_registers_are_checked() {
        let entry = |actor: u8, counter: u64, text: &str| DefinitionEntry {
            clock: VClock::from(Dot::new(id(actor), counter)),
            value: value(text),
        };
        validate(&definition_record(
            1,
            1,
            &[entry(1, 1, "a"), entry(2, 1, "b")],
        ))
        .unwrap();
        let invalid = [
            vec![],
            vec![entry(1, 1, "a"), entry(1, 1, "b")],
            vec![entry(1, 1, "a"), entry(1, 2, "b")],
            vec![entry(1, 0, "a")],
            (0..=DEFINITION_VALUES_MAX as u8)
                .map(|idx| entry(idx, 1, "v"))
                .collect(),
        ];
        for entries in invalid {
            assert!(
                validate(&definition_record(1, 1, &entries)).is_err(),
                "{entries:?}"
            );
        }
        let zero_counter = DefinitionEntry {
            clock: VClock {
                dots: BTreeMap::from([(id(1), 0)]),
            },
            value: value("a"),
        };
        assert!(validate(&definition_record(1, 1, &[zero_counter])).is_err());
        let mut bad_alias = entry(1, 1, "a");
        bad_alias.value.aliases = vec!["Not A Label".into()];
        assert!(validate(&definition_record(1, 1, &[bad_alias])).is_err());
        let mut long = entry(1, 1, "a");
        long.value.description = "x".repeat(DESCRIPTION_BYTES_MAX + 1);
        assert!(validate(&definition_record(1, 1, &[long])).is_err());
    }

    #[test]
    fn the_higher_counter_wins_in_any_order() {
        let old = record(1, 1, RecordKind::Node, "", Some(node_body("laptop")));
        let new = record(1, 2, RecordKind::Node, "", Some(node_body("desk")));
        let mut forward = registry();
        assert_eq!(forward.apply(old.clone()), Applied::Inserted);
        assert_eq!(forward.apply(new.clone()), Applied::Replaced);
        let mut backward = registry();
        backward.apply(new.clone());
        assert_eq!(backward.apply(old.clone()), Applied::Stale);
        assert_eq!(backward.apply(new.clone()), Applied::Stale);
        assert_eq!(forward.state_digest(), backward.state_digest());
        assert_eq!(forward.node(&id(1)).unwrap().node_name, "desk");
        assert!(!forward.has_counter(&id(1), 1));
        assert!(forward.has_counter(&id(1), 2));
    }

    #[test]
    fn equal_counters_break_ties_the_same_way_everywhere() {
        let left = record(1, 3, RecordKind::Node, "", Some(node_body("aaa")));
        let right = record(1, 3, RecordKind::Node, "", Some(node_body("bbb")));
        let mut one = registry();
        one.apply(left.clone());
        one.apply(right.clone());
        let mut two = registry();
        two.apply(right);
        two.apply(left);
        assert_eq!(one.state_digest(), two.state_digest());
    }

    #[test]
    fn tombstones_hide_records_but_stay_until_collected() {
        let mut registry = registry();
        registry.apply(record(
            1,
            1,
            RecordKind::Node,
            "",
            Some(node_body("laptop")),
        ));
        registry.apply(record(
            1,
            2,
            RecordKind::Instance,
            "@fabric@laptop#main",
            Some(instance_body("main")),
        ));
        assert_eq!(registry.instances().len(), 1);
        let digest_live = registry.state_digest();
        registry.apply(record(
            1,
            3,
            RecordKind::Instance,
            "@fabric@laptop#main",
            None,
        ));
        assert!(registry.instances().is_empty());
        assert_eq!(registry.len(), 2);
        assert_ne!(registry.state_digest(), digest_live);
        // A late copy of the live version does not bring it back.
        registry.apply(record(
            1,
            2,
            RecordKind::Instance,
            "@fabric@laptop#main",
            Some(instance_body("main")),
        ));
        assert!(registry.instances().is_empty());
    }

    fn manifest(origin: u8, counter: u64, live: &[(u64, u64)]) -> Record {
        let body = ManifestBody {
            live: live
                .iter()
                .map(|(first, len)| CounterRun {
                    first: *first,
                    len: *len,
                })
                .collect(),
        };
        record(
            origin,
            counter,
            RecordKind::Manifest,
            "",
            Some(RecordBody::Manifest(body)),
        )
    }

    #[test]
    fn a_manifest_forgets_what_its_origin_no_longer_holds() {
        let mut registry = registry();
        registry.apply(record(
            1,
            1,
            RecordKind::Node,
            "",
            Some(node_body("laptop")),
        ));
        for (counter, workspace) in [(2, "main"), (3, "a"), (4, "b")] {
            registry.apply(record(
                1,
                counter,
                RecordKind::Instance,
                &format!("@fabric@laptop#{workspace}"),
                Some(instance_body(workspace)),
            ));
        }
        // `a` deleted at 5; `b` replaced at 6 (its version 4 never reached
        // this replica's later copies); the tombstone of `a` is here.
        registry.apply(record(1, 5, RecordKind::Instance, "@fabric@laptop#a", None));
        assert_eq!(registry.len(), 4);
        // The origin holds 1, 2 and 6 (the new `b`) below its manifest at 7.
        let live = [(1, 2), (6, 1)];
        assert_eq!(registry.apply(manifest(1, 7, &live)), Applied::Inserted);
        let names: Vec<&str> = registry
            .records()
            .map(|record| record.key.name.as_str())
            .collect();
        // The tombstone and the replaced version 4 of `b` are gone; the
        // manifest and the live ones stay.
        assert_eq!(names, ["", "@fabric@laptop#main", ""]);
        let mut forgotten = registry.take_forgotten();
        forgotten.sort();
        assert_eq!(
            forgotten
                .iter()
                .map(|key| key.name.as_str())
                .collect::<Vec<_>>(),
            ["@fabric@laptop#a", "@fabric@laptop#b"]
        );
        // Late copies of what it excludes are refused; what it lists is taken.
        let late_a = record(
            1,
            3,
            RecordKind::Instance,
            "@fabric@laptop#a",
            Some(instance_body("a")),
        );
        assert_eq!(registry.apply(late_a), Applied::Stale);
        let late_tombstone = record(1, 5, RecordKind::Instance, "@fabric@laptop#a", None);
        assert_eq!(registry.apply(late_tombstone), Applied::Stale);
        let new_b = record(
            1,
            6,
            RecordKind::Instance,
            "@fabric@laptop#b",
            Some(instance_body("b")),
        );
        assert_eq!(registry.apply(new_b), Applied::Inserted);
        // Records numbered after the manifest are not its business.
        let after = record(1, 8, RecordKind::Instance, "@fabric@laptop#c", None);
        assert_eq!(registry.apply(after), Applied::Inserted);
        assert_eq!(registry.instances().len(), 2);
        // An older manifest changes nothing.
        assert_eq!(registry.apply(manifest(1, 4, &[(1, 3)])), Applied::Stale);
    }

    #[test]
    fn manifests_are_checked() {
        let code = |record: Record| validate(&record).map_err(|err| err.to_string());
        assert_eq!(code(manifest(1, 9, &[(1, 2), (5, 4)])), Ok(()));
        assert_eq!(code(manifest(1, 1, &[])), Ok(()));
        for (live, what) in [
            (&[(0, 1)][..], "out of order"),
            (&[(1, 0)][..], "empty"),
            (&[(3, 1), (1, 1)][..], "out of order"),
            (&[(1, 2), (3, 1)][..], "touches"),
            (&[(1, 2), (2, 3)][..], "out of order"),
            (&[(5, 5)][..], "reaches past"),
            (&[(1, u64::MAX)][..], "reaches past"),
        ] {
            let err = code(manifest(1, 9, live)).unwrap_err();
            assert!(err.contains(what), "{live:?}: {err}");
        }
        // A run that ends at the last number a counter can hold: nothing
        // may follow it (no overflow on the way to saying so).
        let last = manifest(1, u64::MAX, &[(1, u64::MAX - 1), (5, 1)]);
        assert!(code(last).unwrap_err().contains("out of order"));
        let runs: Vec<(u64, u64)> = (0..=MANIFEST_RUNS_MAX as u64)
            .map(|n| (2 * n + 1, 1))
            .collect();
        assert!(
            code(manifest(1, 5000, &runs))
                .unwrap_err()
                .contains("manifest runs")
        );
        assert!(
            code(record(1, 3, RecordKind::Manifest, "", None))
                .unwrap_err()
                .contains("never deleted")
        );
        let named = record(
            1,
            3,
            RecordKind::Manifest,
            "x",
            Some(RecordBody::Manifest(ManifestBody::default())),
        );
        assert!(code(named).unwrap_err().contains("name must be empty"));
    }

    #[test]
    fn instances_must_match_their_origin_node_name() {
        let mut registry = registry();
        registry.apply(record(
            1,
            1,
            RecordKind::Node,
            "",
            Some(node_body("laptop")),
        ));
        registry.apply(record(
            1,
            2,
            RecordKind::Instance,
            "@fabric@laptop#main",
            Some(instance_body("main")),
        ));
        registry.apply(record(
            1,
            3,
            RecordKind::Instance,
            "@fabric@devbox#main",
            Some(instance_body("main")),
        ));
        // Origin 2 has no node record yet: its instances show.
        registry.apply(record(
            2,
            1,
            RecordKind::Instance,
            "@fabric@devbox#dev",
            Some(instance_body("dev")),
        ));
        let names: Vec<String> = registry
            .instances()
            .iter()
            .map(|entry| entry.name.to_string())
            .collect();
        assert_eq!(names, ["@fabric@devbox#dev", "@fabric@laptop#main"]);
        let candidates = registry.candidates(&id(1));
        assert_eq!(candidates.len(), 2);
        assert!(!candidates[0].is_local && candidates[1].is_local);
    }

    #[test]
    fn membership_admission_revocation_and_conflicts() {
        let mut registry = registry();
        assert!(!registry.has_admissions());
        assert!(
            registry.may_sync(&id(7)),
            "before any admission, anyone syncs"
        );
        // Only its own admission, by 1, has arrived: 1 admitted someone, so
        // it is a member whose own admission is still on its way.
        registry.apply(admission(1, 1, 2, 22));
        assert!(registry.may_sync(&id(1)) && registry.may_sync(&id(2)));
        assert!(!registry.is_member(&id(1)));
        assert!(!registry.may_sync(&id(7)));
        registry.apply(admission(1, 1, 1, 11));
        registry.apply(admission(1, 2, 2, 22));
        registry.apply(admission(1, 3, 3, 33));
        assert!(registry.has_admissions());
        assert_eq!(registry.members().len(), 3);
        assert_eq!(registry.admitted_key(&id(2)), Some([22; 32]));

        // Revocation from any origin wins over admissions from any origin.
        registry.apply(revocation(3, 1, 2));
        registry.apply(admission(3, 2, 2, 22));
        assert!(!registry.is_member(&id(2)));
        assert!(registry.is_revoked(&id(2)));
        assert!(!registry.may_sync(&id(2)));
        assert_eq!(registry.admitted_key(&id(2)), None);

        // Two admissions disagreeing on a key: not a member, and reported.
        registry.apply(admission(1, 4, 4, 44));
        registry.apply(admission(3, 3, 4, 45));
        assert!(!registry.is_member(&id(4)));
        assert_eq!(registry.admitted_key(&id(4)), None);
        assert_eq!(registry.conflicts().len(), 1);
        assert_eq!(registry.conflicts()[0].node_id, id(4));
        assert_eq!(registry.conflicts()[0].admissions.len(), 2);

        // Deleting the wrong admission resolves the conflict.
        registry.apply(record(3, 4, RecordKind::Admission, id(4).as_str(), None));
        assert!(registry.is_member(&id(4)));
        assert!(registry.conflicts().is_empty());
        let members: Vec<&NodeId> = registry.members().iter().collect();
        assert_eq!(members, [&id(1), &id(3), &id(4)]);
    }

    fn founder_admission(node: u8) -> Record {
        let mut record = admission(node, 1, node, 0);
        if let Some(RecordBody::Admission(body)) = &mut record.body {
            body.public_key = key(node).verifying_key().to_bytes();
            body.method = AdmissionMethod::Founder;
        }
        sign(&mut record, &key(node));
        record
    }

    /// Every order of `records` gives the same members and revocations.
    fn members_in_every_order(records: &[Record]) -> BTreeSet<NodeId> {
        let mut forward = registry();
        let mut backward = registry();
        for record in records {
            forward.apply(record.clone());
        }
        for record in records.iter().rev() {
            backward.apply(record.clone());
        }
        assert_eq!(forward.members(), backward.members());
        assert_eq!(forward.trust, backward.trust);
        forward.members().clone()
    }

    #[test]
    fn membership_is_a_chain_of_admissions_from_the_founder() {
        // A stranger's own `Founder` admission, relayed by anyone, roots
        // nothing: only node 1 founded this mesh.
        let stranger = [founder_admission(7), admission(7, 2, 8, 8)];
        let mut alone = registry();
        for record in &stranger {
            validate(record).unwrap();
            alone.apply(record.clone());
        }
        assert!(alone.members().is_empty());
        assert!(!alone.has_admissions());

        let chain = [
            founder_admission(1),
            admission(1, 2, 2, 22),
            admission(2, 1, 3, 33),
            admission(3, 1, 4, 44),
        ];
        let mut all: Vec<Record> = chain.to_vec();
        all.extend(stranger.iter().cloned());
        let members = members_in_every_order(&all);
        assert_eq!(members, [1, 2, 3, 4].map(id).into_iter().collect());

        // A revocation by a stranger counts for nothing.
        all.push(revocation(7, 3, 2));
        assert_eq!(members_in_every_order(&all), members);

        // Revoking 3 cuts 3 off, and with it 4, whose only chain ran
        // through 3: a revoked key's admissions stop counting.
        all.push(revocation(2, 2, 3));
        assert_eq!(
            members_in_every_order(&all),
            [1, 2].map(id).into_iter().collect()
        );
        // Another member's admission of 4 brings it back.
        all.push(admission(1, 3, 4, 44));
        assert_eq!(
            members_in_every_order(&all),
            [1, 2, 4].map(id).into_iter().collect()
        );
        // Revoking the founder ends every chain.
        all.push(revocation(2, 3, 1));
        assert!(members_in_every_order(&all).is_empty());
    }

    proptest::proptest! {
        /// The view extended one admission at a time, or settled once after
        /// a batch, equals the view recomputed from every record, whatever
        /// mix of admissions, second keys, tombstones and revocations
        /// arrives in whatever order.
        #[test]
        fn the_view_kept_up_to_date_equals_the_recomputed_view(
            steps in proptest::collection::vec((0u8..8, 1u8..6, 1u8..6, 0u8..2), 1..40),
        ) {
            let mut counters = [0u64; 6];
            let mut records = Vec::new();
            for (what, by, node, key_byte) in steps {
                counters[usize::from(by)] += 1;
                let counter = counters[usize::from(by)];
                records.push(match what {
                    0 => revocation(by, counter, node),
                    1 => record(by, counter, RecordKind::Admission, id(node).as_str(), None),
                    2 if by == node => founder_admission(by),
                    _ => admission(by, counter, node, 40 + key_byte),
                });
            }
            let mut one_by_one = registry();
            let mut batch = registry();
            for record in &records {
                one_by_one.apply(record.clone());
                let mut recomputed = one_by_one.clone();
                recomputed.recompute_trust();
                proptest::prop_assert_eq!(&one_by_one.trust, &recomputed.trust);
                batch.apply_unsettled(record.clone());
            }
            batch.settle_trust();
            proptest::prop_assert_eq!(&batch.trust, &one_by_one.trust);
        }
    }

    #[test]
    fn forged_records_fail_validation_with_invalid_signature() {
        let genuine = admission(1, 1, 2, 22);
        validate(&genuine).unwrap();
        let mut damaged = genuine.clone();
        damaged.signature.0[63] ^= 0x80;
        let mut other_key = genuine.clone();
        sign(&mut other_key, &key(2));
        let mut borrowed_key = other_key.clone();
        borrowed_key.origin_key = key(1).verifying_key().to_bytes();
        let mut edited = genuine.clone();
        edited.hlc.wall_ms += 1;
        let mut unsigned = genuine.clone();
        unsigned.signature = RecordSignature::UNSIGNED;
        for forged in [damaged, other_key, borrowed_key, edited, unsigned] {
            let err = validate(&forged).unwrap_err();
            assert!(
                matches!(err, InvalidRecord::InvalidSignature { .. }),
                "{err}"
            );
            assert_eq!(err.code(), "INVALID_SIGNATURE");
        }
    }

    #[test]
    fn revoked_origins_disappear_from_views() {
        let mut registry = registry();
        registry.apply(record(
            2,
            1,
            RecordKind::Node,
            "",
            Some(node_body("devbox")),
        ));
        registry.apply(record(
            2,
            2,
            RecordKind::Instance,
            "@fabric@devbox#main",
            Some(instance_body("main")),
        ));
        assert_eq!(registry.nodes().len(), 1);
        registry.apply(revocation(1, 1, 2));
        assert!(registry.nodes().is_empty());
        assert!(registry.instances().is_empty());
    }

    #[test]
    fn definition_views_merge_every_origin() {
        let mut registry = registry();
        let mut first = MVReg::new();
        first.apply(first.write(value("one"), first.read_ctx().derive_add_ctx(id(1))));
        let mut second = MVReg::new();
        second.apply(second.write(value("two"), second.read_ctx().derive_add_ctx(id(2))));
        for (origin, register) in [(1, first), (2, second)] {
            registry.apply(record(
                origin,
                1,
                RecordKind::Definition,
                "fabric",
                Some(RecordBody::Definition(DefinitionBody { register })),
            ));
        }
        assert_eq!(
            registry.definition("fabric"),
            vec![value("one"), value("two")]
        );
        assert_eq!(registry.definitions().len(), 1);
        assert!(registry.definition("other").is_empty());
    }

    #[test]
    fn records_after_and_contiguity() {
        let mut registry = registry();
        registry.apply(record(
            1,
            1,
            RecordKind::Node,
            "",
            Some(node_body("laptop")),
        ));
        registry.apply(record(
            1,
            2,
            RecordKind::Instance,
            "@a@laptop#main",
            Some(instance_body("main")),
        ));
        registry.apply(record(
            1,
            4,
            RecordKind::Instance,
            "@b@laptop#main",
            Some(instance_body("main")),
        ));
        let after: Vec<u64> = registry
            .records_after(&id(1), 1)
            .map(|record| record.dot.counter)
            .collect();
        assert_eq!(after, [2, 4]);
        assert_eq!(registry.max_counter(&id(1)), 4);
        let vv = contiguous_vv(&registry, &VClock::new());
        assert_eq!(vv.get(&id(1)), 2);
        let mut base = VClock::new();
        base.apply(Dot::new(id(1), 3));
        assert_eq!(contiguous_vv(&registry, &base).get(&id(1)), 4);
    }
}
