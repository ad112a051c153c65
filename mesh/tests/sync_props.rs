//! Convergence properties of registry sync, over a simulated network.
//!
//! Each case builds 3 to 7 replicas that joined one mesh, connects them fully
//! or in a line, and interleaves random operations (instance and node puts
//! and deletes by their origins, definition edits by several brokers,
//! admissions and revocations, restarts from the persisted store) with
//! message delivery through a network that drops, duplicates and reorders
//! messages, partitions and heals links, and fires anti-entropy timers.
//! Then every link heals and messages flow reliably for a bounded number of
//! anti-entropy rounds, after which every replica must hold the same live
//! records and show the same views, and every origin's last write must be
//! there. Every message goes through the real encoding.
//!
//! A failure prints the case (replica count, topology, fault seed and the
//! operation list); proptest shrinks it first. Rerun with the printed values
//! to replay it exactly: the simulation has no other source of randomness.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crdts::{Dot, VClock};
use proptest::prelude::*;
use scout_mesh::lifecycle::{EndpointState, Harness};
use scout_mesh::names::{Label, NamePart};
use scout_mesh::registry::{
    AdmissionBody, AdmissionMethod, CWD_BYTES_MAX, DefinitionBody, DefinitionEntry,
    DefinitionValue, InstanceBody, NodeBody, NodeId, Record, RecordBody, RecordKey, RecordKind,
    RevocationBody,
};
use scout_mesh::sync::{Output, Replica, ReplicaIdentity, SigningKey, SyncConfig, SyncEvent};
use scout_mesh::wire::{self, SYNC_MESSAGE_BYTES_MAX, SyncMessage};

const T0: u64 = 1_700_000_000_000;

/// Messages delivered while draining one liveness round before giving up.
/// Far above what a round of 7 replicas needs; reaching it means a message
/// storm, which is itself a failure.
const DELIVERIES_PER_ROUND_MAX: usize = 20_000;

/// Workspaces, definitions and external nodes the operations pick from:
/// few, so that operations collide on the same keys often.
const WORKSPACES: u8 = 3;
const DEFINITIONS: [&str; 2] = ["fabric", "relay"];
const EXTERNAL_NODES: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    Full,
    Line,
}

#[derive(Debug, Clone)]
enum Op {
    PutInstance {
        replica: usize,
        workspace: u8,
        state: u8,
    },
    DeleteInstance {
        replica: usize,
        workspace: u8,
    },
    PutNode {
        replica: usize,
        http_port: u16,
    },
    EditDefinition {
        replica: usize,
        definition: usize,
        text: u8,
    },
    Admit {
        replica: usize,
        external: u8,
        conflicting: bool,
    },
    Revoke {
        replica: usize,
        external: u8,
    },
    Deliver {
        count: u8,
    },
    Tick {
        ms: u16,
    },
    Link {
        a: usize,
        b: usize,
        up: bool,
    },
    Restart {
        replica: usize,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let replica = 0usize..7;
    prop_oneof![
        4 => (replica.clone(), 0..WORKSPACES, 0u8..7)
            .prop_map(|(replica, workspace, state)| Op::PutInstance { replica, workspace, state }),
        2 => (replica.clone(), 0..WORKSPACES)
            .prop_map(|(replica, workspace)| Op::DeleteInstance { replica, workspace }),
        1 => (replica.clone(), 3000u16..3004)
            .prop_map(|(replica, http_port)| Op::PutNode { replica, http_port }),
        2 => (replica.clone(), 0..DEFINITIONS.len(), 0u8..4)
            .prop_map(|(replica, definition, text)| Op::EditDefinition { replica, definition, text }),
        1 => (replica.clone(), 0..EXTERNAL_NODES, proptest::bool::weighted(0.2))
            .prop_map(|(replica, external, conflicting)| Op::Admit { replica, external, conflicting }),
        1 => (replica.clone(), 0..EXTERNAL_NODES)
            .prop_map(|(replica, external)| Op::Revoke { replica, external }),
        6 => (1u8..16).prop_map(|count| Op::Deliver { count }),
        2 => (0u16..8_000).prop_map(|ms| Op::Tick { ms }),
        1 => (replica.clone(), replica.clone(), any::<bool>())
            .prop_map(|(a, b, up)| Op::Link { a, b, up }),
        1 => replica.prop_map(|replica| Op::Restart { replica }),
    ]
}

/// SplitMix64, for the fault schedule.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

/// What a broker's store holds: the newest version of each key and the last
/// version vector, exactly as the shell would write them.
#[derive(Debug, Clone, Default)]
struct Store {
    records: BTreeMap<RecordKey, Record>,
    vv: VClock<NodeId>,
}

struct Envelope {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

struct Sim {
    ids: Vec<NodeId>,
    names: Vec<Label>,
    replicas: Vec<Replica>,
    stores: Vec<Store>,
    edges: BTreeSet<(usize, usize)>,
    up: BTreeSet<(usize, usize)>,
    in_flight: VecDeque<Envelope>,
    now_ms: u64,
    rng: SplitMix64,
    rejections: Vec<Vec<SyncEvent>>,
    /// Each origin's last local write per key: what must survive.
    model: BTreeMap<RecordKey, Option<RecordBody>>,
    /// The value of the last edit of each definition, which nothing can
    /// supersede.
    last_edit: BTreeMap<String, DefinitionValue>,
}

/// Replica `idx`'s key: seeded, so a case replays exactly.
fn node_key(idx: u8) -> SigningKey {
    let mut bytes = [0x5c; 32];
    bytes[0] = idx;
    SigningKey::from_bytes(&bytes)
}

fn node_id(idx: u8) -> NodeId {
    NodeId::of_public_key(&node_key(idx).verifying_key().to_bytes())
}

/// Replica `idx` of a mesh founded by replica 0.
fn identity(idx: u8) -> ReplicaIdentity {
    ReplicaIdentity {
        signing_key: node_key(idx),
        node_name: Label::parse(&format!("node{idx}"), NamePart::Node).unwrap(),
        founder: node_id(0),
    }
}

fn external_id(external: u8) -> NodeId {
    node_id(100 + external)
}

fn config(idx: usize, seed: u64) -> SyncConfig {
    SyncConfig {
        seed: seed ^ (idx as u64),
        // Small chunks, so that deltas are chunked and chunks get lost.
        records_per_delta_max: 4,
        ..SyncConfig::default()
    }
}

fn edge(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    /// `n` replicas that joined one mesh: replica 0 founded it and admitted
    /// the others, which restored that state from their stores.
    fn new(n: usize, topology: Topology, seed: u64) -> Sim {
        let ids: Vec<NodeId> = (0..n as u8).map(node_id).collect();
        let names: Vec<Label> = (0..n)
            .map(|idx| Label::parse(&format!("node{idx}"), NamePart::Node).unwrap())
            .collect();
        let mut founder = Replica::new(identity(0), config(0, seed));
        for (idx, id) in ids.iter().enumerate() {
            founder
                .put(
                    T0,
                    id.as_str(),
                    RecordBody::Admission(AdmissionBody {
                        public_key: [idx as u8; 32],
                        node_name: names[idx].to_string(),
                        admitted_by: ids[0].clone(),
                        method: if idx == 0 {
                            AdmissionMethod::Founder
                        } else {
                            AdmissionMethod::Invite
                        },
                    }),
                )
                .unwrap();
        }
        let mut genesis = Store::default();
        while let Some(output) = founder.poll_output() {
            if let Output::Persist { records, vv } = output {
                for record in records {
                    genesis.records.insert(record.key.clone(), record);
                }
                genesis.vv.dots.extend(vv.dots);
            }
        }
        let mut replicas = vec![founder];
        for idx in 1..n {
            replicas.push(Replica::restore(
                identity(idx as u8),
                config(idx, seed),
                genesis.records.values().cloned(),
                genesis.vv.clone(),
            ));
        }
        let edges: BTreeSet<(usize, usize)> = match topology {
            Topology::Full => (0..n)
                .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
                .collect(),
            Topology::Line => (1..n).map(|b| (b - 1, b)).collect(),
        };
        let mut sim = Sim {
            ids,
            names,
            replicas,
            stores: vec![genesis; n],
            edges: edges.clone(),
            up: BTreeSet::new(),
            in_flight: VecDeque::new(),
            now_ms: T0,
            rng: SplitMix64(seed),
            rejections: vec![Vec::new(); n],
            model: BTreeMap::new(),
            last_edit: BTreeMap::new(),
        };
        for (a, b) in edges {
            sim.link_up(a, b);
        }
        sim.drain_all();
        sim
    }

    fn n(&self) -> usize {
        self.replicas.len()
    }

    fn link_up(&mut self, a: usize, b: usize) {
        if !self.edges.contains(&edge(a, b)) || !self.up.insert(edge(a, b)) {
            return;
        }
        let now_ms = self.now_ms;
        let (id_a, id_b) = (self.ids[a].clone(), self.ids[b].clone());
        self.replicas[a]
            .handle_connected(now_ms, id_b)
            .expect("members may connect");
        self.replicas[b]
            .handle_connected(now_ms, id_a)
            .expect("members may connect");
    }

    fn link_down(&mut self, a: usize, b: usize) {
        if !self.up.remove(&edge(a, b)) {
            return;
        }
        let (id_a, id_b) = (self.ids[a].clone(), self.ids[b].clone());
        self.replicas[a].handle_disconnected(&id_b);
        self.replicas[b].handle_disconnected(&id_a);
        self.in_flight
            .retain(|envelope| edge(envelope.from, envelope.to) != edge(a, b));
    }

    /// Moves every replica's outputs to the network, its store and the
    /// rejection log.
    fn drain_all(&mut self) {
        for idx in 0..self.n() {
            while let Some(output) = self.replicas[idx].poll_output() {
                match output {
                    Output::Send { to, message } => {
                        let bytes = wire::encode(&message);
                        assert!(
                            bytes.len() <= SYNC_MESSAGE_BYTES_MAX,
                            "{} bytes",
                            bytes.len()
                        );
                        let to = self
                            .ids
                            .iter()
                            .position(|id| *id == to)
                            .expect("known peer");
                        if self.up.contains(&edge(idx, to)) {
                            self.in_flight.push_back(Envelope {
                                from: idx,
                                to,
                                bytes,
                            });
                        }
                    }
                    Output::Persist { records, vv } => {
                        let store = &mut self.stores[idx];
                        for record in records {
                            store.records.insert(record.key.clone(), record);
                        }
                        // The entries that changed; the others stay.
                        store.vv.dots.extend(vv.dots);
                    }
                    Output::Forget { keys } => {
                        for key in keys {
                            self.stores[idx].records.remove(&key);
                        }
                    }
                    Output::Event(event @ SyncEvent::RecordRejected { .. }) => {
                        self.rejections[idx].push(event);
                    }
                    Output::Event(_) => {}
                }
            }
        }
    }

    fn deliver(&mut self, envelope: &Envelope) {
        let message = wire::decode(&envelope.bytes).expect("our own encoding decodes");
        let now_ms = self.now_ms;
        let from = self.ids[envelope.from].clone();
        self.replicas[envelope.to].handle_message(now_ms, from, message);
    }

    /// Delivers up to `count` messages picked at random (reordering), each
    /// one possibly dropped or duplicated.
    fn deliver_faulty(&mut self, count: u8) {
        for _ in 0..count {
            if self.in_flight.is_empty() {
                return;
            }
            let idx = self.rng.below(self.in_flight.len());
            let roll = self.rng.below(100);
            if roll < 10 {
                self.in_flight.remove(idx);
                continue;
            }
            let envelope = if roll < 15 {
                let copy = &self.in_flight[idx];
                Envelope {
                    from: copy.from,
                    to: copy.to,
                    bytes: copy.bytes.clone(),
                }
            } else {
                self.in_flight.remove(idx).expect("index in range")
            };
            self.deliver(&envelope);
            self.drain_all();
        }
    }

    fn fire_due_timers(&mut self) {
        let now_ms = self.now_ms;
        for replica in &mut self.replicas {
            if replica.poll_timeout().is_some_and(|at_ms| at_ms <= now_ms) {
                replica.handle_timeout(now_ms);
            }
        }
        self.drain_all();
    }

    fn instance_key(&self, replica: usize, workspace: u8) -> (String, RecordKey) {
        let name = format!("@agent@{}#w{workspace}", self.names[replica]);
        let key = RecordKey {
            origin: self.ids[replica].clone(),
            kind: RecordKind::Instance,
            name: name.clone(),
        };
        (name, key)
    }

    fn remember(&mut self, record: &Record) {
        self.model.insert(record.key.clone(), record.body.clone());
    }

    fn apply(&mut self, op: &Op) {
        let n = self.n();
        let now_ms = self.now_ms;
        match *op {
            Op::PutInstance {
                replica,
                workspace,
                state,
            } => {
                let replica = replica % n;
                let (name, _) = self.instance_key(replica, workspace);
                let body = RecordBody::Instance(InstanceBody {
                    harness: Harness::ALL[usize::from(state) % Harness::ALL.len()],
                    workspace: format!("w{workspace}"),
                    cwd: format!("~/src/w{workspace}"),
                    endpoint_state: EndpointState::ALL
                        [usize::from(state) % EndpointState::ALL.len()],
                    active_flights: u32::from(state),
                    worktrees: false,
                });
                let record = self.replicas[replica]
                    .put(now_ms, &name, body)
                    .expect("valid put");
                self.remember(&record);
            }
            Op::DeleteInstance { replica, workspace } => {
                let replica = replica % n;
                let (name, _) = self.instance_key(replica, workspace);
                let deleted = self.replicas[replica]
                    .delete(now_ms, RecordKind::Instance, &name)
                    .expect("valid delete");
                if let Some(record) = deleted {
                    self.remember(&record);
                }
            }
            Op::PutNode { replica, http_port } => {
                let replica = replica % n;
                let body = RecordBody::Node(NodeBody {
                    node_name: self.names[replica].to_string(),
                    addresses: vec![format!("192.0.2.{replica}:4433")],
                    http_port,
                    scout_version: "0.1.0".into(),
                    protocol_version: wire::PROTOCOL_VERSION,
                    via: Vec::new(),
                });
                let record = self.replicas[replica]
                    .put(now_ms, "", body)
                    .expect("valid put");
                self.remember(&record);
            }
            Op::EditDefinition {
                replica,
                definition,
                text,
            } => {
                let replica = replica % n;
                let name = DEFINITIONS[definition % DEFINITIONS.len()];
                let value = DefinitionValue {
                    description: format!("{name} v{text}"),
                    aliases: vec![format!("{name}-{text}")],
                };
                let label = Label::parse(name, NamePart::Definition).unwrap();
                self.replicas[replica]
                    .edit_definition(now_ms, &label, value.clone())
                    .expect("valid edit");
                self.last_edit.insert(name.to_owned(), value);
            }
            Op::Admit {
                replica,
                external,
                conflicting,
            } => {
                let replica = replica % n;
                let key_byte = if conflicting {
                    200 + replica as u8
                } else {
                    100 + external
                };
                let body = RecordBody::Admission(AdmissionBody {
                    public_key: [key_byte; 32],
                    node_name: format!("ext{external}"),
                    admitted_by: self.ids[replica].clone(),
                    method: AdmissionMethod::AllowList,
                });
                let name = external_id(external);
                let record = self.replicas[replica]
                    .put(now_ms, name.as_str(), body)
                    .expect("valid put");
                self.remember(&record);
            }
            Op::Revoke { replica, external } => {
                let replica = replica % n;
                let body = RecordBody::Revocation(RevocationBody {
                    reason: format!("revoked by node{replica}"),
                    revoked_by: self.ids[replica].clone(),
                });
                let name = external_id(external);
                let record = self.replicas[replica]
                    .put(now_ms, name.as_str(), body)
                    .expect("valid put");
                self.remember(&record);
            }
            Op::Deliver { count } => self.deliver_faulty(count),
            Op::Tick { ms } => {
                self.now_ms += u64::from(ms);
                self.fire_due_timers();
            }
            Op::Link { a, b, up } => {
                let (a, b) = (a % n, b % n);
                if up {
                    self.link_up(a, b);
                } else {
                    self.link_down(a, b);
                }
            }
            Op::Restart { replica } => self.restart(replica % n),
        }
        self.drain_all();
    }

    /// Crashes a replica and restores it from its store; its connections
    /// reset, and messages to or from it are lost.
    fn restart(&mut self, idx: usize) {
        let links: Vec<(usize, usize)> = self
            .up
            .iter()
            .filter(|(a, b)| *a == idx || *b == idx)
            .copied()
            .collect();
        for (a, b) in &links {
            self.link_down(*a, *b);
        }
        self.in_flight
            .retain(|envelope| envelope.from != idx && envelope.to != idx);
        let store = self.stores[idx].clone();
        self.replicas[idx] = Replica::restore(
            identity(idx as u8),
            config(idx, self.rng.next_u64()),
            store.records.into_values(),
            store.vv,
        );
        for (a, b) in links {
            self.link_up(a, b);
        }
        self.drain_all();
    }

    /// Heals every link and runs anti-entropy rounds over a reliable network
    /// until every replica holds the same live records. Returns the rounds
    /// it took, or `None` if `rounds_max` were not enough.
    fn settle(&mut self, rounds_max: usize) -> Option<usize> {
        let edges: Vec<(usize, usize)> = self.edges.iter().copied().collect();
        for (a, b) in edges {
            self.link_up(a, b);
        }
        self.drain_all();
        for round in 0..rounds_max {
            let mut delivered = 0;
            while let Some(envelope) = self.in_flight.pop_front() {
                self.deliver(&envelope);
                self.drain_all();
                delivered += 1;
                assert!(delivered < DELIVERIES_PER_ROUND_MAX, "message storm");
            }
            if self.converged() {
                return Some(round);
            }
            let next_ms = self
                .replicas
                .iter()
                .filter_map(Replica::poll_timeout)
                .max()
                .unwrap_or(self.now_ms);
            self.now_ms = self.now_ms.max(next_ms);
            self.fire_due_timers();
        }
        None
    }

    fn converged(&self) -> bool {
        let digest = self.replicas[0].state_digest();
        self.replicas
            .iter()
            .all(|replica| replica.state_digest() == digest)
    }
}

fn check_case(n: usize, topology: Topology, seed: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let case = format!("n = {n}, topology = {topology:?}, seed = {seed}");
    let mut sim = Sim::new(n, topology, seed);
    for op in ops {
        sim.apply(op);
    }
    // A line of 7 needs about one round per hop each way; restarts and
    // lost chunks may cost one more round each.
    let rounds_max = 4 * n + 12;
    let rounds = sim.settle(rounds_max);
    prop_assert!(
        rounds.is_some(),
        "{case}: no convergence within {rounds_max} rounds"
    );

    for (idx, rejections) in sim.rejections.iter().enumerate() {
        prop_assert!(
            rejections.is_empty(),
            "{case}: replica {idx} rejected valid records: {rejections:?}"
        );
    }
    let first = sim.replicas[0].registry();
    for (idx, replica) in sim.replicas.iter().enumerate().skip(1) {
        let registry = replica.registry();
        prop_assert_eq!(
            registry.members(),
            first.members(),
            "{}: members of {}",
            case,
            idx
        );
        prop_assert_eq!(
            registry.conflicts(),
            first.conflicts(),
            "{}: conflicts of {}",
            case,
            idx
        );
        prop_assert_eq!(
            registry.instances(),
            first.instances(),
            "{}: instances of {}",
            case,
            idx
        );
        prop_assert_eq!(
            registry.nodes(),
            first.nodes(),
            "{}: nodes of {}",
            case,
            idx
        );
        prop_assert_eq!(
            registry.definitions(),
            first.definitions(),
            "{}: definitions of {}",
            case,
            idx
        );
    }
    // Nothing is lost: every origin's last write is what everyone holds.
    for replica in &sim.replicas {
        for (key, body) in &sim.model {
            let held = replica
                .registry()
                .get(key)
                .and_then(|record| record.body.as_ref());
            prop_assert_eq!(
                held,
                body.as_ref(),
                "{}: {:?} on {}",
                case,
                key,
                replica.self_id()
            );
        }
        for (name, value) in &sim.last_edit {
            let values = replica.registry().definition(name);
            prop_assert!(
                values.contains(value),
                "{case}: last edit of {name} missing: {values:?}"
            );
        }
    }
    // The stores hold what the replicas hold, so a restart loses nothing.
    for (idx, replica) in sim.replicas.iter().enumerate() {
        let in_memory: Vec<&Record> = replica.records().collect();
        let stored: Vec<&Record> = sim.stores[idx].records.values().collect();
        prop_assert_eq!(in_memory, stored, "{}: store of {}", case, idx);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_converge_fully_connected(
        n in 3usize..=7,
        seed in any::<u64>(),
        ops in proptest::collection::vec(op_strategy(), 0..160),
    ) {
        check_case(n, Topology::Full, seed, &ops)?;
    }

    #[test]
    fn replicas_converge_in_a_line(
        n in 3usize..=7,
        seed in any::<u64>(),
        ops in proptest::collection::vec(op_strategy(), 0..160),
    ) {
        check_case(n, Topology::Line, seed, &ops)?;
    }
}

/// How many ways [`corrupt`] knows.
const MUTATIONS: u8 = 11;

/// Ways to break a valid instance record of the replica holding `origin_key`:
/// eight that break its shape (re-signed by its origin, so only the shape is
/// wrong) and three forgeries (a damaged signature, a record claiming
/// another origin, a revocation naming another author).
fn corrupt(mut record: Record, mutation: u8, other: &NodeId, origin_key: &SigningKey) -> Record {
    match mutation % MUTATIONS {
        8 => {
            record.signature.0[0] ^= 1;
            return record;
        }
        9 => {
            record.key.origin = other.clone();
            record.dot.actor = other.clone();
            record.key.name = record.key.name.replace("node0", "node2");
            scout_mesh::registry::sign(&mut record, origin_key);
            return record;
        }
        10 => {
            record.key.kind = RecordKind::Revocation;
            record.key.name = other.to_string();
            record.body = Some(RecordBody::Revocation(RevocationBody {
                reason: "forged".into(),
                revoked_by: other.clone(),
            }));
            scout_mesh::registry::sign(&mut record, origin_key);
            return record;
        }
        _ => {}
    }
    match mutation % 8 {
        0 => record.key.name = record.key.name.to_uppercase(),
        1 => record.dot.counter = 0,
        2 => record.dot.actor = other.clone(),
        3 => {
            record.body = Some(RecordBody::Revocation(RevocationBody {
                reason: "wrong kind".into(),
                revoked_by: record.key.origin.clone(),
            }));
        }
        4 => {
            if let Some(RecordBody::Instance(body)) = &mut record.body {
                body.workspace = "elsewhere".into();
            }
        }
        5 => {
            if let Some(RecordBody::Instance(body)) = &mut record.body {
                body.cwd = "x".repeat(CWD_BYTES_MAX + 1);
            }
        }
        6 => {
            record.key.kind = RecordKind::Revocation;
            record.key.name = other.to_string();
            record.body = None;
        }
        _ => {
            let older = DefinitionEntry {
                clock: VClock::from(Dot::new(record.key.origin.clone(), 1)),
                value: DefinitionValue {
                    description: "old".into(),
                    aliases: vec![],
                },
            };
            let mut newer = older.clone();
            newer.clock = VClock::from(Dot::new(record.key.origin.clone(), 2));
            record.key.kind = RecordKind::Definition;
            record.key.name = "fabric".into();
            record.body = Some(RecordBody::Definition(
                DefinitionBody::from_entries(&[older, newer]).unwrap(),
            ));
        }
    }
    scout_mesh::registry::sign(&mut record, origin_key);
    record
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A record that breaks the rules, sent by one replica, is rejected by
    /// the receiver and never appears anywhere, whatever else happens.
    #[test]
    fn invalid_records_never_spread(
        mutation in 0u8..MUTATIONS,
        via_delta in any::<bool>(),
        seed in any::<u64>(),
        ops in proptest::collection::vec(op_strategy(), 0..40),
    ) {
        let case = format!("mutation = {mutation}, via_delta = {via_delta}, seed = {seed}");
        let mut sim = Sim::new(4, Topology::Full, seed);
        let now_ms = sim.now_ms;
        let valid = sim.replicas[0]
            .put(
                now_ms,
                "@agent@node0#w9",
                RecordBody::Instance(InstanceBody {
                    harness: Harness::Codex,
                    workspace: "w9".into(),
                    cwd: "~/src".into(),
                    endpoint_state: EndpointState::Idle,
                    active_flights: 0,
                    worktrees: false,
                }),
            )
            .unwrap();
        sim.remember(&valid);
        sim.drain_all();
        // A higher number than anything real, so only validation stops it.
        let mut valid = valid;
        valid.dot.counter = 1_000;
        let bad = corrupt(valid, mutation, &sim.ids[2], &node_key(0));
        let message = if via_delta {
            SyncMessage::Delta {
                records: vec![bad.clone()],
                covers: VClock::new(),
                since: VClock::new(),
                more: false,
            }
        } else {
            SyncMessage::Push { records: vec![bad.clone()] }
        };
        sim.in_flight.push_front(Envelope { from: 0, to: 1, bytes: wire::encode(&message) });
        for op in &ops {
            sim.apply(op);
        }
        prop_assert!(sim.settle(30).is_some(), "{case}: no convergence");
        for replica in &sim.replicas {
            let holds_bad = replica.records().any(|record| *record == bad);
            prop_assert!(!holds_bad, "{case}: {} holds the invalid record", replica.self_id());
        }
        for (idx, rejections) in sim.rejections.iter().enumerate() {
            if idx != 1 {
                prop_assert!(rejections.is_empty(), "{case}: replica {idx} saw it: {rejections:?}");
            }
        }
        // A forgery is refused as one (unless a fault lost the message
        // before it arrived).
        if mutation >= 8 {
            let forged = sim.rejections[1].iter().all(|event| matches!(
                event,
                SyncEvent::RecordRejected { error, .. } if error.code() == "INVALID_SIGNATURE"
            ));
            prop_assert!(forged, "{case}: not refused as forged: {:?}", sim.rejections[1]);
        }
    }

    /// Decoding arbitrary bytes never panics, and whatever decodes can be
    /// handled by a replica without panicking.
    #[test]
    fn decoding_and_handling_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut replica = Replica::new(identity(1), SyncConfig::default());
        replica.handle_connected(T0, node_id(2)).unwrap();
        if let Ok(message) = wire::decode(&bytes) {
            replica.handle_message(T0, node_id(2), message);
        }
        while replica.poll_output().is_some() {}
    }

    /// Flipping bytes of a valid message never makes decoding or handling
    /// panic.
    #[test]
    fn corrupted_messages_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        truncate_to in proptest::option::of(any::<usize>()),
    ) {
        let mut source = Replica::new(identity(2), SyncConfig::default());
        source.put(T0, "", RecordBody::Node(NodeBody {
            node_name: "node2".into(),
            addresses: vec!["[2001:db8::2]:4433".into()],
            http_port: 3100,
            scout_version: "0.1.0".into(),
            protocol_version: 1,
            via: Vec::new(),
        })).unwrap();
        source.edit_definition(T0, &Label::parse("fabric", NamePart::Definition).unwrap(), DefinitionValue {
            description: "reviews".into(),
            aliases: vec!["rev".into()],
        }).unwrap();
        let records: Vec<Record> = source.records().cloned().collect();
        let mut vv = VClock::new();
        vv.dots.insert(node_id(2), 2);
        let mut bytes = wire::encode(&SyncMessage::Delta { records, covers: vv.clone(), since: VClock::new(), more: false });
        for (position, byte) in flips {
            let idx = position % bytes.len();
            bytes[idx] ^= byte;
        }
        if let Some(len) = truncate_to {
            bytes.truncate(len % (bytes.len() + 1));
        }
        let mut replica = Replica::new(identity(1), SyncConfig::default());
        replica.handle_connected(T0, node_id(2)).unwrap();
        if let Ok(message) = wire::decode(&bytes) {
            replica.handle_message(T0, node_id(2), message);
        }
        while replica.poll_output().is_some() {}
        let _ = replica.registry().definitions();
        let _ = replica.registry().instances();
    }
}
