//! Unit tests of the sync state machine: one test per protocol rule, with a
//! tiny in-memory network that delivers every message through the real
//! encoding.

use super::*;
use crate::hlc::{HLC_SKEW_MS_MAX, Hlc};
use crate::lifecycle::{EndpointState, Harness};
use crate::names::NamePart;
use crate::registry::{AdmissionBody, AdmissionMethod, InstanceBody, NodeBody, RevocationBody};
use crate::wire;

const T0: u64 = 1_700_000_000_000;

/// Node `n`'s key: seeded, so every run has the same ids.
fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn id(n: u8) -> NodeId {
    NodeId::of_public_key(&key(n).verifying_key().to_bytes())
}

/// Node `n` in a mesh founded by node 1.
fn identity(n: u8) -> ReplicaIdentity {
    ReplicaIdentity {
        signing_key: key(n),
        node_name: node_name(n),
        founder: id(1),
    }
}

/// `record` with its origin key and signature by node `n`'s key.
fn signed_by(mut record: Record, n: u8) -> Record {
    crate::registry::sign(&mut record, &key(n));
    record
}

fn node_name(n: u8) -> Label {
    Label::parse(&format!("node{n}"), NamePart::Node).unwrap()
}

fn config(n: u8) -> SyncConfig {
    SyncConfig {
        seed: u64::from(n),
        ..SyncConfig::default()
    }
}

fn replica(n: u8) -> Replica {
    Replica::new(identity(n), config(n))
}

fn instance_name(n: u8, definition: &str, workspace: &str) -> String {
    format!("@{definition}@node{n}#{workspace}")
}

fn instance(workspace: &str, endpoint_state: EndpointState) -> RecordBody {
    RecordBody::Instance(InstanceBody {
        harness: Harness::Claude,
        workspace: workspace.into(),
        cwd: format!("~/src/{workspace}"),
        endpoint_state,
        active_flights: 0,
        worktrees: false,
    })
}

fn node_body(n: u8) -> RecordBody {
    RecordBody::Node(NodeBody {
        node_name: format!("node{n}"),
        addresses: vec![format!("192.0.2.{n}:4433")],
        http_port: 3100,
        scout_version: "0.1.0".into(),
        protocol_version: wire::PROTOCOL_VERSION,
        via: Vec::new(),
    })
}

fn admission_body(by: u8, admitted: u8, key: u8) -> RecordBody {
    RecordBody::Admission(AdmissionBody {
        public_key: [key; 32],
        node_name: format!("node{admitted}"),
        admitted_by: id(by),
        method: if by == admitted {
            AdmissionMethod::Founder
        } else {
            AdmissionMethod::Invite
        },
    })
}

fn value(description: &str) -> DefinitionValue {
    DefinitionValue {
        description: description.into(),
        aliases: vec![],
    }
}

fn fabric() -> Label {
    Label::parse("fabric", NamePart::Definition).unwrap()
}

/// Everything a replica produced, sorted by output kind.
#[derive(Debug, Default)]
struct Drained {
    sends: Vec<(NodeId, SyncMessage)>,
    persisted: Vec<Record>,
    persisted_vv: Option<VClock<NodeId>>,
    forgotten: Vec<RecordKey>,
    events: Vec<SyncEvent>,
    order: Vec<&'static str>,
}

fn drain(replica: &mut Replica) -> Drained {
    let mut drained = Drained::default();
    while let Some(output) = replica.poll_output() {
        match output {
            Output::Send { to, message } => {
                drained.order.push("send");
                drained.sends.push((to, message));
            }
            Output::Persist { records, vv } => {
                drained.order.push("persist");
                drained.persisted.extend(records);
                // Entries that changed: the store sets them.
                drained
                    .persisted_vv
                    .get_or_insert_with(VClock::new)
                    .dots
                    .extend(vv.dots);
            }
            Output::Forget { keys } => {
                drained.order.push("forget");
                drained.forgotten.extend(keys);
            }
            Output::Event(event) => {
                drained.order.push("event");
                drained.events.push(event);
            }
        }
    }
    drained
}

/// Replicas 1..=n and a reliable network between them.
struct Net {
    replicas: Vec<Replica>,
    events: Vec<Vec<SyncEvent>>,
    persisted: Vec<Vec<Record>>,
    forgotten: Vec<Vec<RecordKey>>,
    now_ms: u64,
}

impl Net {
    fn new(n: u8) -> Net {
        Net::with(n, config)
    }

    fn with(n: u8, config: impl Fn(u8) -> SyncConfig) -> Net {
        Net {
            replicas: (1..=n)
                .map(|k| Replica::new(identity(k), config(k)))
                .collect(),
            events: vec![Vec::new(); usize::from(n)],
            persisted: vec![Vec::new(); usize::from(n)],
            forgotten: vec![Vec::new(); usize::from(n)],
            now_ms: T0,
        }
    }

    fn at(&mut self, n: u8) -> &mut Replica {
        &mut self.replicas[usize::from(n - 1)]
    }

    fn connect(&mut self, a: u8, b: u8) {
        let now_ms = self.now_ms;
        self.at(a).handle_connected(now_ms, id(b)).unwrap();
        self.at(b).handle_connected(now_ms, id(a)).unwrap();
    }

    fn disconnect(&mut self, a: u8, b: u8) {
        self.at(a).handle_disconnected(&id(b));
        self.at(b).handle_disconnected(&id(a));
    }

    /// Delivers messages until none is left; returns how many were delivered.
    fn pump(&mut self) -> usize {
        let mut delivered = 0;
        for _round in 0..1_000 {
            let mut in_flight = Vec::new();
            for idx in 0..self.replicas.len() {
                let drained = drain(&mut self.replicas[idx]);
                self.events[idx].extend(drained.events);
                self.persisted[idx].extend(drained.persisted);
                self.forgotten[idx].extend(drained.forgotten);
                for (to, message) in drained.sends {
                    in_flight.push((idx, to, message));
                }
            }
            if in_flight.is_empty() {
                return delivered;
            }
            for (from_idx, to, message) in in_flight {
                let bytes = wire::encode(&message);
                assert!(bytes.len() <= SYNC_MESSAGE_BYTES_MAX);
                let message = wire::decode(&bytes).unwrap();
                let from = self.replicas[from_idx].self_id().clone();
                let now_ms = self.now_ms;
                let to_idx = self
                    .replicas
                    .iter()
                    .position(|r| r.self_id() == &to)
                    .unwrap();
                self.replicas[to_idx].handle_message(now_ms, from, message);
                delivered += 1;
            }
        }
        panic!("the network did not go quiet");
    }

    /// Advances time past every replica's anti-entropy deadline and pumps.
    fn anti_entropy_round(&mut self) {
        let deadline = self
            .replicas
            .iter()
            .filter_map(|replica| replica.anti_entropy_at_ms)
            .max()
            .unwrap_or(self.now_ms);
        self.now_ms = self.now_ms.max(deadline);
        let now_ms = self.now_ms;
        for replica in &mut self.replicas {
            replica.handle_timeout(now_ms);
        }
        self.pump();
    }

    /// Moves time on by `ms`, runs every timer that came due, and pumps.
    fn advance(&mut self, ms: u64) -> usize {
        self.now_ms += ms;
        let now_ms = self.now_ms;
        for replica in &mut self.replicas {
            if replica.poll_timeout().is_some_and(|at| at <= now_ms) {
                replica.handle_timeout(now_ms);
            }
        }
        self.pump()
    }

    fn events_of(&self, n: u8) -> &[SyncEvent] {
        &self.events[usize::from(n - 1)]
    }
}

#[test]
fn a_local_put_is_persisted_before_it_is_pushed() {
    let mut net = Net::new(2);
    net.connect(1, 2);
    net.pump();
    let name = instance_name(1, "fabric", "main");
    let record = net
        .at(1)
        .put(T0, &name, instance("main", EndpointState::Idle))
        .unwrap();
    assert_eq!(record.dot.counter, 1);
    assert_eq!(net.at(1).next_seq(), 2);
    assert_eq!(net.at(1).vv().get(&id(1)), 1);
    let drained = drain(net.at(1));
    assert_eq!(drained.order, ["persist", "send"]);
    assert_eq!(drained.persisted, std::slice::from_ref(&record));
    assert_eq!(
        drained.sends,
        [(
            id(2),
            SyncMessage::Push {
                records: vec![record.clone()]
            }
        )]
    );

    // The same value again is not a change.
    let again = net
        .at(1)
        .put(T0 + 5, &name, instance("main", EndpointState::Idle))
        .unwrap();
    assert_eq!(again, record);
    assert!(net.at(1).poll_output().is_none());
}

#[test]
fn the_newer_version_wins_whatever_order_pushes_arrive_in() {
    let mut writer = replica(1);
    let mut reader = replica(2);
    reader.handle_connected(T0, id(1)).unwrap();
    drain(&mut reader);
    let name = instance_name(1, "fabric", "main");
    let first = writer
        .put(T0, &name, instance("main", EndpointState::Idle))
        .unwrap();
    let second = writer
        .put(T0 + 1, &name, instance("main", EndpointState::Working))
        .unwrap();

    reader.handle_message(
        T0,
        id(1),
        SyncMessage::Push {
            records: vec![second.clone()],
        },
    );
    reader.handle_message(
        T0,
        id(1),
        SyncMessage::Push {
            records: vec![first.clone()],
        },
    );
    let drained = drain(&mut reader);
    assert_eq!(
        drained.persisted,
        std::slice::from_ref(&second),
        "the stale version is not persisted"
    );
    assert_eq!(reader.registry().get(&second.key), Some(&second));
    assert_eq!(
        reader.registry().instances()[0].body.endpoint_state,
        EndpointState::Working
    );
    // Counter 1 was superseded before it arrived, so nothing proves the
    // reader has everything up to 2; the next anti-entropy round will.
    assert_eq!(reader.vv().get(&id(1)), 0);
}

#[test]
fn deletes_replicate_as_tombstones() {
    let mut net = Net::new(2);
    net.connect(1, 2);
    let name = instance_name(1, "fabric", "main");
    net.at(1)
        .put(T0, &name, instance("main", EndpointState::Idle))
        .unwrap();
    net.pump();
    assert_eq!(net.at(2).registry().instances().len(), 1);

    let tombstone = net
        .at(1)
        .delete(T0 + 1, RecordKind::Instance, &name)
        .unwrap()
        .unwrap();
    assert!(tombstone.is_tombstone());
    assert_eq!(tombstone.dot.counter, 2);
    net.pump();
    assert!(net.at(2).registry().instances().is_empty());
    assert_eq!(net.at(2).registry().get(&tombstone.key), Some(&tombstone));
    assert_eq!(net.at(1).state_digest(), net.at(2).state_digest());
    // Deleting what is already deleted changes nothing.
    assert_eq!(
        net.at(1).delete(T0 + 2, RecordKind::Instance, &name),
        Ok(None)
    );
}

#[test]
fn invalid_records_are_rejected_never_persisted_and_never_forwarded() {
    let mut net = Net::new(3);
    net.connect(1, 2);
    net.connect(2, 3);
    net.pump();
    let bad = Record {
        key: RecordKey {
            origin: id(1),
            kind: RecordKind::Instance,
            name: "@Fabric@node1#main".into(),
        },
        dot: Dot::new(id(1), 1),
        hlc: Hlc::default(),
        body: Some(instance("main", EndpointState::Idle)),
        origin_key: [0; 32],
        signature: RecordSignature::UNSIGNED,
    };
    let bad = signed_by(bad, 1);
    let now_ms = net.now_ms;
    net.at(2).handle_message(
        now_ms,
        id(1),
        SyncMessage::Push {
            records: vec![bad.clone()],
        },
    );
    let drained = drain(net.at(2));
    assert!(drained.persisted.is_empty());
    assert!(drained.sends.is_empty(), "nothing is forwarded");
    assert!(matches!(
        &drained.events[..],
        [SyncEvent::RecordRejected { source: RecordSource::Peer(from), error: InvalidRecord::InvalidName { .. }, .. }]
            if *from == id(1)
    ));
    assert!(net.at(2).registry().get(&bad.key).is_none());
    assert_eq!(net.at(2).vv().get(&id(1)), 0);

    // Anti-entropy does not carry it either.
    net.anti_entropy_round();
    net.anti_entropy_round();
    for n in 1..=3 {
        assert!(net.at(n).registry().get(&bad.key).is_none());
    }
}

#[test]
fn push_advances_the_vector_only_when_contiguous() {
    let mut writer = replica(1);
    let mut reader = replica(2);
    reader.handle_connected(T0, id(1)).unwrap();
    drain(&mut reader);
    let records: Vec<Record> = ["a", "b", "c"]
        .iter()
        .map(|ws| {
            writer
                .put(
                    T0,
                    &instance_name(1, "fabric", ws),
                    instance(ws, EndpointState::Idle),
                )
                .unwrap()
        })
        .collect();
    let push = |record: &Record| SyncMessage::Push {
        records: vec![record.clone()],
    };

    reader.handle_message(T0, id(1), push(&records[0]));
    assert_eq!(reader.vv().get(&id(1)), 1);
    reader.handle_message(T0, id(1), push(&records[2]));
    assert_eq!(
        reader.vv().get(&id(1)),
        1,
        "a gap at 2 holds the vector back"
    );
    assert!(
        reader.registry().get(&records[2].key).is_some(),
        "but the record is kept"
    );
    reader.handle_message(T0, id(1), push(&records[1]));
    assert_eq!(
        reader.vv().get(&id(1)),
        3,
        "filling the gap advances over held records"
    );
    let drained = drain(&mut reader);
    assert_eq!(drained.persisted.len(), 3);
    assert_eq!(drained.persisted_vv.unwrap().get(&id(1)), 3);
}

/// A writer with `n` instance records and a reader connected to it; returns
/// the delta chunks the writer sends for the reader's empty digest.
fn chunks_for_empty_digest(writer: &mut Replica, n: usize) -> Vec<SyncMessage> {
    for idx in 0..n {
        let workspace = format!("w{idx}");
        writer
            .put(
                T0,
                &instance_name(1, "fabric", &workspace),
                instance(&workspace, EndpointState::Idle),
            )
            .unwrap();
    }
    writer.handle_connected(T0, id(2)).unwrap();
    drain(writer);
    writer.handle_message(T0, id(2), SyncMessage::Digest { vv: VClock::new() });
    drain(writer)
        .sends
        .into_iter()
        .map(|(to, message)| {
            assert_eq!(to, id(2));
            message
        })
        .collect()
}

fn small_chunks(n: u8) -> SyncConfig {
    SyncConfig {
        records_per_delta_max: 2,
        sync_message_bytes_max: 512,
        ..config(n)
    }
}

#[test]
fn deltas_are_chunked_under_the_configured_limits() {
    let mut writer = Replica::new(identity(1), small_chunks(1));
    let chunks = chunks_for_empty_digest(&mut writer, 7);
    assert_eq!(chunks.len(), 4);
    for (idx, chunk) in chunks.iter().enumerate() {
        let SyncMessage::Delta { records, more, .. } = chunk else {
            panic!("expected a delta, got {chunk:?}");
        };
        assert!(records.len() <= 2);
        assert_eq!(*more, idx + 1 < chunks.len());
        assert!(wire::encode(chunk).len() <= 512);
    }

    let mut reader = replica(2);
    reader.handle_connected(T0, id(1)).unwrap();
    drain(&mut reader);
    for chunk in chunks {
        reader.handle_message(T0, id(1), chunk);
    }
    assert_eq!(reader.vv().get(&id(1)), 7);
    assert_eq!(reader.state_digest(), writer.state_digest());
    let events = drain(&mut reader).events;
    assert!(events.contains(&SyncEvent::PeerCaughtUp { peer: id(1) }));

    // The byte limit alone also cuts chunks.
    let mut by_bytes = Replica::new(
        identity(1),
        SyncConfig {
            sync_message_bytes_max: SYNC_MESSAGE_BYTES_MIN,
            ..config(1)
        },
    );
    let chunks = chunks_for_empty_digest(&mut by_bytes, 10);
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    for chunk in &chunks {
        assert!(wire::encode(chunk).len() <= SYNC_MESSAGE_BYTES_MIN);
    }
}

#[test]
fn a_lost_chunk_never_advances_the_vector_past_missing_records() {
    let mut writer = Replica::new(identity(1), small_chunks(1));
    let mut chunks = chunks_for_empty_digest(&mut writer, 7);
    let lost = chunks.remove(1);
    let SyncMessage::Delta {
        records: lost_records,
        ..
    } = &lost
    else {
        panic!("expected a delta");
    };
    let mut reader = replica(2);
    reader.handle_connected(T0, id(1)).unwrap();
    drain(&mut reader);
    // The rest arrive, the last one first.
    chunks.reverse();
    for chunk in chunks {
        reader.handle_message(T0, id(1), chunk);
    }
    assert_eq!(
        reader.vv().get(&id(1)),
        2,
        "the vector stops before the lost range"
    );
    for record in lost_records {
        assert!(reader.registry().get(&record.key).is_none());
    }
    let drained = drain(&mut reader);
    assert!(
        !drained
            .events
            .contains(&SyncEvent::PeerCaughtUp { peer: id(1) })
    );
    assert_eq!(reader.registry().len(), 5, "records after the gap are kept");

    // The next round's summary differs from the writer's, so the two
    // trade digests, and the reader asks for exactly what is missing and
    // gets it.
    reader.handle_timeout(reader.poll_timeout().unwrap());
    let mut in_flight: Vec<(NodeId, SyncMessage)> = drain(&mut reader)
        .sends
        .into_iter()
        .map(|(_, message)| (id(2), message))
        .collect();
    while let Some((from, message)) = in_flight.pop() {
        let (to, to_id) = if from == id(2) {
            (&mut writer, id(1))
        } else {
            (&mut reader, id(2))
        };
        to.handle_message(T0, from, message);
        in_flight.extend(drain(to).sends.into_iter().map(|(_, m)| (to_id.clone(), m)));
    }
    assert_eq!(reader.vv().get(&id(1)), 7);
    assert_eq!(reader.state_digest(), writer.state_digest());
}

#[test]
fn pushes_are_not_forwarded_but_anti_entropy_crosses_a_line() {
    let mut net = Net::new(3);
    net.connect(1, 2);
    net.connect(2, 3);
    net.pump();
    let name = instance_name(1, "fabric", "main");
    let record = net
        .at(1)
        .put(T0, &name, instance("main", EndpointState::Idle))
        .unwrap();
    net.pump();
    assert!(net.at(2).registry().get(&record.key).is_some());
    assert!(
        net.at(3).registry().get(&record.key).is_none(),
        "2 did not forward the push"
    );
    net.anti_entropy_round();
    assert_eq!(net.at(3).registry().get(&record.key), Some(&record));
    assert_eq!(net.at(1).state_digest(), net.at(3).state_digest());
}

#[test]
fn a_broker_that_lost_its_database_resumes_above_its_old_numbers() {
    let mut net = Net::new(2);
    net.connect(1, 2);
    for ws in ["a", "b", "c", "d", "e"] {
        net.at(1)
            .put(
                T0,
                &instance_name(1, "fabric", ws),
                instance(ws, EndpointState::Idle),
            )
            .unwrap();
    }
    net.pump();
    assert_eq!(net.at(2).vv().get(&id(1)), 5);

    // Broker 1 restarts with an empty database and the same key.
    net.at(2).handle_disconnected(&id(1));
    net.replicas[0] = replica(1);
    let fresh_name = instance_name(1, "fabric", "x");
    let fresh = net
        .at(1)
        .put(T0 + 10, &fresh_name, instance("x", EndpointState::Working))
        .unwrap();
    assert_eq!(fresh.dot.counter, 1, "it does not know yet");
    let node = net.at(1).put(T0 + 10, "", node_body(1)).unwrap();
    // It also rewrites one of its old keys with a new value.
    let rewritten_name = instance_name(1, "fabric", "c");
    net.at(1)
        .put(
            T0 + 10,
            &rewritten_name,
            instance("c", EndpointState::Stopped),
        )
        .unwrap();
    drain(net.at(1));
    net.connect(1, 2);
    net.pump();
    net.anti_entropy_round();

    let recovered = net.at(1);
    assert!(
        recovered.next_seq() > 5 + 3,
        "next is {}",
        recovered.next_seq()
    );
    let events = net.events_of(1);
    assert!(
        events.iter().any(|event| matches!(
            event,
            SyncEvent::OwnSequenceRecovered {
                highest_seen: 5,
                reissued: 3
            }
        )),
        "{events:?}"
    );
    for n in 1..=2 {
        let registry = net.at(n).registry();
        let fresh_now = registry.get(&fresh.key).unwrap();
        assert!(
            fresh_now.dot.counter > 5,
            "the new record was reissued above the old numbers"
        );
        assert_eq!(fresh_now.body, fresh.body);
        assert!(registry.get(&node.key).unwrap().dot.counter > 5);
        // The rewrite wins over the old version of the same key.
        let rewritten = registry
            .instances()
            .into_iter()
            .find(|entry| entry.name.to_string() == rewritten_name)
            .unwrap();
        assert_eq!(rewritten.body.endpoint_state, EndpointState::Stopped);
        // Old records it did not rewrite came back.
        let names: Vec<String> = registry
            .instances()
            .iter()
            .map(|entry| entry.name.to_string())
            .collect();
        assert_eq!(
            names.len(),
            6,
            "replica {n}: {names:?} {:?}",
            registry
                .records()
                .map(|r| (&r.key.name, r.dot.counter))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(net.at(1).state_digest(), net.at(2).state_digest());
    assert_eq!(net.replicas[0].vv(), net.replicas[1].vv());

    // New changes supersede everything old.
    let later = net
        .at(1)
        .put(
            T0 + 20,
            &instance_name(1, "fabric", "a"),
            instance("a", EndpointState::Failed),
        )
        .unwrap();
    assert!(later.dot.counter > 8);
    net.pump();
    assert_eq!(net.at(1).state_digest(), net.at(2).state_digest());
}

#[test]
fn a_broker_that_lost_its_database_writes_a_new_manifest_over_its_old_one() {
    let mut net = Net::new(2);
    net.connect(1, 2);
    for ws in ["a", "b", "c"] {
        net.at(1)
            .put(
                T0,
                &instance_name(1, "fabric", ws),
                instance(ws, EndpointState::Idle),
            )
            .unwrap();
    }
    let gone = instance_name(1, "fabric", "b");
    net.at(1).delete(T0, RecordKind::Instance, &gone).unwrap();
    net.pump();
    net.anti_entropy_round();
    let (old_manifest, _) = net.at(2).registry().manifest(&id(1)).unwrap();
    assert_eq!(old_manifest, 5);

    // Broker 1 restarts with an empty database and writes under numbers
    // its old manifest covers.
    net.at(2).handle_disconnected(&id(1));
    net.replicas[0] = replica(1);
    let fresh = net
        .at(1)
        .put(
            T0 + 10,
            &instance_name(1, "fabric", "x"),
            instance("x", EndpointState::Working),
        )
        .unwrap();
    assert_eq!(fresh.dot.counter, 1);
    drain(net.at(1));
    net.connect(1, 2);
    net.pump();
    // Its old manifest came back in the catch-up: not taken (it would
    // forget what was written since), and the next round writes over it.
    net.anti_entropy_round();
    net.anti_entropy_round();
    for n in 1..=2 {
        let registry = net.at(n).registry();
        let (manifest, _) = registry.manifest(&id(1)).unwrap();
        assert!(
            manifest > old_manifest,
            "replica {n}: manifest at {manifest}"
        );
        let names: Vec<String> = registry
            .instances()
            .iter()
            .map(|entry| entry.name.to_string())
            .collect();
        assert_eq!(
            names,
            [
                instance_name(1, "fabric", "a"),
                instance_name(1, "fabric", "c"),
                instance_name(1, "fabric", "x")
            ],
            "replica {n}"
        );
    }
    assert_eq!(net.at(1).state_digest(), net.at(2).state_digest());
}

#[test]
fn concurrent_definition_edits_are_both_visible_until_a_later_edit() {
    let mut net = Net::new(2);
    net.at(1)
        .edit_definition(T0, &fabric(), value("reviews diffs"))
        .unwrap();
    net.at(2)
        .edit_definition(T0, &fabric(), value("writes tests"))
        .unwrap();
    net.connect(1, 2);
    net.pump();
    for n in 1..=2 {
        assert_eq!(
            net.at(n).registry().definition("fabric"),
            [value("reviews diffs"), value("writes tests")]
        );
    }

    // An edit made after seeing both supersedes both.
    let record = net
        .at(2)
        .edit_definition(T0 + 1, &fabric(), value("reviews and tests"))
        .unwrap();
    let Some(RecordBody::Definition(body)) = &record.body else {
        panic!("expected a definition body");
    };
    assert_eq!(
        body.entries().unwrap().len(),
        1,
        "the published register holds the new write only"
    );
    net.pump();
    for n in 1..=2 {
        assert_eq!(
            net.at(n).registry().definition("fabric"),
            [value("reviews and tests")]
        );
    }
    assert_eq!(net.at(1).state_digest(), net.at(2).state_digest());
}

#[test]
fn a_fresh_replica_syncs_with_anyone_then_only_with_members() {
    let mut net = Net::new(3);
    net.connect(1, 2);
    net.at(2).put(T0, "", node_body(2)).unwrap();
    net.pump();
    assert!(
        net.at(1).registry().node(&id(2)).is_some(),
        "no admissions yet: anyone connected syncs"
    );

    // Broker 1 founds the mesh: from now on it syncs with members only, so
    // broker 2, still connected, is neither sent to nor listened to.
    net.at(1)
        .put(T0, id(1).as_str(), admission_body(1, 1, 11))
        .unwrap();
    let drained = drain(net.at(1));
    assert!(drained.sends.is_empty(), "nothing goes to a non-member");
    assert!(
        drained
            .events
            .contains(&SyncEvent::MemberAdmitted { node_id: id(1) })
    );
    let now_ms = net.now_ms;
    net.at(2)
        .put(
            now_ms,
            "",
            RecordBody::Node(NodeBody {
                http_port: 4000,
                ..node_body_inner(2)
            }),
        )
        .unwrap();
    net.pump();
    assert_eq!(
        net.at(1).registry().node(&id(2)).unwrap().http_port,
        3100,
        "2 is not a member"
    );
    assert!(net.events_of(1).iter().any(|event| matches!(
        event,
        SyncEvent::MessageIgnored { from, reason: IgnoredReason::NotMember, .. } if *from == id(2)
    )));
    assert_eq!(
        net.at(1).handle_connected(now_ms, id(3)),
        Err(PeerRefused::NotMember { peer: id(3) })
    );
    assert_eq!(
        PeerRefused::NotMember { peer: id(3) }.code(),
        "UNKNOWN_PEER"
    );

    // Admitting 2 lets it sync both ways; anti-entropy brings what was missed.
    net.at(1)
        .put(now_ms, id(2).as_str(), admission_body(1, 2, 22))
        .unwrap();
    net.pump();
    assert!(net.at(2).registry().is_member(&id(2)));
    net.anti_entropy_round();
    assert_eq!(net.at(1).registry().node(&id(2)).unwrap().http_port, 4000);
    assert_eq!(net.at(1).state_digest(), net.at(2).state_digest());

    // A message from a node that is not connected is ignored.
    let now_ms = net.now_ms;
    net.at(2)
        .handle_message(now_ms, id(3), SyncMessage::Digest { vv: VClock::new() });
    assert!(matches!(
        drain(net.at(2)).events[..],
        [SyncEvent::MessageIgnored {
            reason: IgnoredReason::NotConnected,
            ..
        }]
    ));
}

#[test]
fn a_persist_names_only_the_vector_entries_that_changed() {
    let mut net = Net::new(3);
    net.connect(1, 2);
    net.connect(2, 3);
    for n in 1..=3 {
        let now_ms = net.now_ms;
        net.at(n).put(now_ms, "", node_body(n)).unwrap();
    }
    net.pump();
    net.anti_entropy_round();
    assert_eq!(net.at(2).vv().dots.len(), 3);
    drain(net.at(2));

    let now_ms = net.now_ms;
    net.at(1)
        .put(
            now_ms,
            &instance_name(1, "fabric", "main"),
            instance("main", EndpointState::Idle),
        )
        .unwrap();
    let sends = drain(net.at(1)).sends;
    for (to, message) in sends.into_iter().filter(|(to, _)| *to == id(2)) {
        net.at(2).handle_message(now_ms, id(1), message);
        assert_eq!(to, id(2));
    }
    let persisted = drain(net.at(2)).persisted_vv.unwrap();
    assert_eq!(persisted.dots.len(), 1, "{persisted:?}");
    assert_eq!(persisted.get(&id(1)), 2);
}

/// Node 1 admits nodes 1 to `n`, in order, each with key byte `n`.
fn founder_admits(net: &mut Net, n: u8) {
    for admitted in 1..=n {
        net.at(1)
            .put(
                T0,
                id(admitted).as_str(),
                admission_body(1, admitted, admitted),
            )
            .unwrap();
    }
}

/// A mesh of `n` small-chunked replicas in which node 1 admitted every
/// node, in order, and node `n - 1` (admitted late) holds everything.
fn admitted_in_order(n: u8) -> Net {
    let mut net = Net::with(n, small_chunks);
    founder_admits(&mut net, n);
    net.connect(1, n - 1);
    net.pump();
    net
}

#[test]
fn a_joiner_catching_up_listens_to_the_peer_it_was_given() {
    // Node 6 joins through node 5. The first chunk of node 5's delta holds
    // the admissions of 1 and 2 only: from then on node 6's registry has
    // admissions, and node 5 is not among them yet.
    let mut net = admitted_in_order(6);
    let now_ms = net.now_ms;
    net.at(5).handle_connected(now_ms, id(6)).unwrap();
    net.at(6).handle_connected(now_ms, id(5)).unwrap();
    net.pump();
    net.anti_entropy_round();
    assert!(
        !net.at(6).registry().is_member(&id(5)),
        "unvouched, the rest of the catch-up is ignored"
    );
    assert!(net.events_of(6).iter().any(|event| matches!(
        event,
        SyncEvent::MessageIgnored { from, reason: IgnoredReason::NotMember, .. } if *from == id(5)
    )));

    // Vouched for (the shell pinned it as the bootstrap peer), node 5's
    // deltas count whatever the partial registry says.
    let mut net = admitted_in_order(6);
    net.at(5).handle_connected(now_ms, id(6)).unwrap();
    net.at(6).handle_connected_vouched(now_ms, id(5)).unwrap();
    net.pump();
    assert!(net.at(6).registry().is_member(&id(5)));
    assert_eq!(net.at(6).state_digest(), net.at(5).state_digest());
    assert!(
        net.events_of(6)
            .contains(&SyncEvent::PeerCaughtUp { peer: id(5) })
    );

    // A revocation in the registry still refuses a vouched peer.
    let mut revoked = replica(7);
    let revocation = net
        .at(1)
        .put(
            now_ms,
            id(5).as_str(),
            RecordBody::Revocation(RevocationBody {
                reason: "stolen".into(),
                revoked_by: id(1),
            }),
        )
        .unwrap();
    revoked.handle_connected(now_ms, id(1)).unwrap();
    revoked.handle_message(
        now_ms,
        id(1),
        SyncMessage::Push {
            records: vec![revocation],
        },
    );
    assert_eq!(
        revoked.handle_connected_vouched(now_ms, id(5)),
        Err(PeerRefused::NotMember { peer: id(5) })
    );
}

fn node_body_inner(n: u8) -> NodeBody {
    match node_body(n) {
        RecordBody::Node(body) => body,
        _ => unreachable!(),
    }
}

#[test]
fn revocation_wins_and_is_permanent() {
    let mut net = Net::new(3);
    for (by, admitted) in [(1, 1), (1, 2), (1, 3)] {
        net.at(by)
            .put(
                T0,
                id(admitted).as_str(),
                admission_body(by, admitted, admitted * 11),
            )
            .unwrap();
    }
    net.connect(1, 2);
    net.connect(1, 3);
    net.connect(2, 3);
    net.pump();
    assert_eq!(net.at(3).registry().members().len(), 3);

    net.at(2)
        .put(
            T0 + 1,
            id(3).as_str(),
            RecordBody::Revocation(RevocationBody {
                reason: "machine retired".into(),
                revoked_by: id(2),
            }),
        )
        .unwrap();
    net.pump();
    assert!(!net.at(1).registry().is_member(&id(3)));
    assert!(net.events_of(1).contains(&SyncEvent::MemberRemoved {
        node_id: id(3),
        reason: MemberRemovedReason::Revoked,
    }));
    // A fresh admission does not undo it, and it cannot be deleted.
    net.at(1)
        .put(T0 + 2, id(3).as_str(), admission_body(1, 3, 99))
        .unwrap();
    net.pump();
    assert!(!net.at(2).registry().is_member(&id(3)));
    assert_eq!(
        net.at(2)
            .delete(T0 + 3, RecordKind::Revocation, id(3).as_str()),
        Err(InvalidRecord::RevocationDeleted)
    );
    // The revoked broker's messages are ignored, and nothing is sent to it.
    let now_ms = net.now_ms;
    net.at(3).put(now_ms, "", node_body(3)).unwrap();
    net.pump();
    assert!(net.at(1).registry().node(&id(3)).is_none());
    net.at(1).put(now_ms, "", node_body(1)).unwrap();
    let sends = drain(net.at(1)).sends;
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, id(2));
}

#[test]
fn key_conflicts_are_reported_and_block_membership() {
    let mut net = Net::new(2);
    net.at(1)
        .put(T0, id(1).as_str(), admission_body(1, 1, 11))
        .unwrap();
    net.at(1)
        .put(T0, id(2).as_str(), admission_body(1, 2, 22))
        .unwrap();
    net.at(1)
        .put(T0, id(9).as_str(), admission_body(1, 9, 90))
        .unwrap();
    net.connect(1, 2);
    net.pump();
    assert!(net.at(2).registry().is_member(&id(9)));
    net.at(2)
        .put(T0, id(9).as_str(), admission_body(2, 9, 91))
        .unwrap();
    net.pump();
    for n in 1..=2 {
        let registry = net.at(n).registry();
        assert!(!registry.is_member(&id(9)));
        assert_eq!(registry.admitted_key(&id(9)), None);
        assert_eq!(registry.conflicts().len(), 1);
    }
    assert!(net.events_of(1).contains(&SyncEvent::MemberRemoved {
        node_id: id(9),
        reason: MemberRemovedReason::KeyConflict,
    }));
}

#[test]
fn tombstones_go_with_their_origins_manifest_whoever_is_offline() {
    let mut net = Net::new(3);
    founder_admits(&mut net, 3);
    net.connect(1, 2);
    net.connect(2, 3);
    net.pump();
    let name = instance_name(1, "fabric", "main");
    let live = net
        .at(1)
        .put(T0, &name, instance("main", EndpointState::Idle))
        .unwrap();
    net.pump();
    // Pushes are not forwarded on a full mesh: anti-entropy brings it to 3.
    net.anti_entropy_round();
    assert_eq!(net.at(3).registry().get(&live.key), Some(&live));
    // 3 goes offline holding the live instance; 1 deletes it.
    net.disconnect(2, 3);
    let tombstone = net
        .at(1)
        .delete(T0 + 1, RecordKind::Instance, &name)
        .unwrap()
        .unwrap();
    net.pump();
    assert!(
        net.at(2)
            .registry()
            .get(&tombstone.key)
            .unwrap()
            .is_tombstone()
    );

    // The next round, 1 writes its manifest; 1 and 2 forget the tombstone
    // although member 3 never heard of it.
    net.anti_entropy_round();
    let (counter, _) = net.at(1).registry().manifest(&id(1)).unwrap();
    assert_eq!(counter, tombstone.dot.counter + 1);
    for n in 1..=2 {
        assert!(
            net.at(n).registry().get(&tombstone.key).is_none(),
            "replica {n}"
        );
        assert!(net.forgotten[usize::from(n) - 1].contains(&tombstone.key));
    }
    // Nothing is left to collect, so the next round writes no manifest.
    let now_ms = net.now_ms;
    assert!(net.at(1).write_manifest_if_due(now_ms).is_none());

    // 3 comes back: the manifest in its catch-up makes it forget the
    // instance it holds, with no tombstone left anywhere to tell it.
    net.connect(2, 3);
    net.pump();
    assert!(net.at(3).registry().get(&tombstone.key).is_none());
    assert!(net.forgotten[2].contains(&tombstone.key));
    assert_eq!(net.at(1).state_digest(), net.at(3).state_digest());
    // A late copy of the live version, from anyone, stays out.
    net.at(3).handle_message(
        now_ms,
        id(2),
        SyncMessage::Push {
            records: vec![live],
        },
    );
    assert!(net.at(3).registry().get(&tombstone.key).is_none());
}

#[test]
fn skewed_clocks_are_reported_and_do_not_block_replication() {
    let mut net = Net::new(2);
    net.connect(1, 2);
    net.pump();
    let ahead_ms = net.now_ms + HLC_SKEW_MS_MAX + 60_000;
    let record = net.at(1).put(ahead_ms, "", node_body(1)).unwrap();
    net.pump();
    assert_eq!(net.at(2).registry().get(&record.key), Some(&record));
    assert!(net.persisted[1].contains(&record));
    assert!(net.events_of(2).iter().any(|event| matches!(
        event,
        SyncEvent::ClockSkew { from, skew } if *from == id(1) && skew.ahead_ms > HLC_SKEW_MS_MAX
    )));
}

#[test]
fn a_clock_set_back_does_not_hold_anti_entropy_back() {
    let mut net = Net::new(2);
    net.connect(1, 2);
    net.pump();
    let now_ms = net.now_ms;
    let deadline = net.at(1).poll_timeout().unwrap();
    // The wall clock steps back a minute: the deadline, set before, is
    // now more than a round away. The next look at the time brings it in.
    let back_ms = now_ms - 60_000;
    net.at(1).handle_timeout(back_ms);
    assert_eq!(
        net.at(1)
            .poll_timeout()
            .map(|at| at
                <= back_ms + ANTI_ENTROPY_INTERVAL_MS_DEFAULT + ANTI_ENTROPY_JITTER_MS_DEFAULT),
        Some(true),
        "the round was at {deadline}, the clock is at {back_ms}"
    );
    let sent = drain(net.at(1)).sends;
    assert!(
        sent.iter()
            .any(|(to, message)| *to == id(2) && matches!(message, SyncMessage::Summary { .. })),
        "a round ran at once: {sent:?}"
    );
    // A steady clock is left alone: an early look changes nothing.
    let next = net.at(1).poll_timeout().unwrap();
    net.at(1).handle_timeout(next - 1);
    assert_eq!(net.at(1).poll_timeout(), Some(next));
}

#[test]
fn anti_entropy_deadlines_are_jittered_and_reproducible() {
    let deadlines = |seed: u64| {
        let mut replica = Replica::new(
            identity(1),
            SyncConfig {
                seed,
                ..SyncConfig::default()
            },
        );
        assert_eq!(replica.poll_timeout(), None);
        let mut now_ms = T0;
        replica.handle_timeout(now_ms);
        let mut seen = Vec::new();
        for _ in 0..20 {
            let deadline = replica.poll_timeout().unwrap();
            let interval_ms = deadline - now_ms;
            assert!(
                (ANTI_ENTROPY_INTERVAL_MS_DEFAULT - ANTI_ENTROPY_JITTER_MS_DEFAULT
                    ..=ANTI_ENTROPY_INTERVAL_MS_DEFAULT + ANTI_ENTROPY_JITTER_MS_DEFAULT)
                    .contains(&interval_ms)
            );
            // Early calls change nothing.
            replica.handle_timeout(deadline - 1);
            assert_eq!(replica.poll_timeout(), Some(deadline));
            now_ms = deadline;
            replica.handle_timeout(now_ms);
            seen.push(interval_ms);
        }
        seen
    };
    assert_eq!(deadlines(7), deadlines(7));
    assert_ne!(deadlines(7), deadlines(8));
    assert!(deadlines(7).windows(2).any(|pair| pair[0] != pair[1]));
}

#[test]
fn restore_rebuilds_the_replica_from_the_store() {
    let mut original = replica(1);
    original.put(T0, "", node_body(1)).unwrap();
    original
        .put(
            T0,
            &instance_name(1, "fabric", "main"),
            instance("main", EndpointState::Idle),
        )
        .unwrap();
    original
        .edit_definition(T0, &fabric(), value("reviews"))
        .unwrap();
    original
        .delete(
            T0,
            RecordKind::Instance,
            &instance_name(1, "fabric", "main"),
        )
        .unwrap();
    let drained = drain(&mut original);
    // The store keeps the newest version of each key, and each vector entry's last value.
    let mut stored: BTreeMap<RecordKey, Record> = BTreeMap::new();
    for record in drained.persisted {
        stored.insert(record.key.clone(), record);
    }
    let restored = Replica::restore(
        identity(1),
        config(1),
        stored.into_values(),
        drained.persisted_vv.unwrap(),
    );
    assert_eq!(restored.state_digest(), original.state_digest());
    assert_eq!(restored.vv(), original.vv());
    assert_eq!(restored.next_seq(), original.next_seq());
    assert_eq!(restored.registry().definition("fabric"), [value("reviews")]);

    // A store without a vector restores the provable part of it.
    let mut restored = Replica::restore(
        identity(1),
        config(1),
        original.records().cloned().collect::<Vec<_>>(),
        VClock::new(),
    );
    assert_eq!(
        restored.vv().get(&id(1)),
        1,
        "counter 2 was superseded, so only 1 is provable"
    );
    assert_eq!(restored.next_seq(), 5);
    let next = restored
        .put(
            T0,
            &instance_name(1, "fabric", "dev"),
            instance("dev", EndpointState::Idle),
        )
        .unwrap();
    assert_eq!(next.dot.counter, 5);
    assert!(next.hlc > original.records().map(|record| record.hlc).max().unwrap());

    // Invalid stored records are dropped with an event.
    let mut bad = next.clone();
    bad.dot.counter = 0;
    let mut restored = Replica::restore(identity(1), config(1), [bad], VClock::new());
    assert!(restored.registry().is_empty());
    assert!(matches!(
        restored.poll_output(),
        Some(Output::Event(SyncEvent::RecordRejected {
            source: RecordSource::Store,
            ..
        }))
    ));
}

#[test]
fn the_output_queue_stays_bounded_and_keeps_every_persist() {
    let mut writer = replica(1);
    writer.handle_connected(T0, id(2)).unwrap();
    let puts = OUTPUT_QUEUE_MAX / 2 + 100;
    for idx in 0..puts {
        let workspace = format!("w{idx}");
        writer
            .put(
                T0,
                &instance_name(1, "fabric", &workspace),
                instance(&workspace, EndpointState::Idle),
            )
            .unwrap();
    }
    assert!(writer.dropped_outputs() > 0);
    let drained = drain(&mut writer);
    assert_eq!(
        drained.persisted.len(),
        puts,
        "persist outputs are never dropped"
    );
    assert!(drained.order.len() <= OUTPUT_QUEUE_MAX);
    // The newest pushes survive; the oldest were dropped for anti-entropy.
    let pushed: Vec<u64> = drained
        .sends
        .iter()
        .filter_map(|(_, message)| match message {
            SyncMessage::Push { records } => Some(records[0].dot.counter),
            _ => None,
        })
        .collect();
    assert_eq!(pushed.last(), Some(&(puts as u64)));
    assert!(pushed.first().unwrap() > &1);
}

#[test]
fn local_writes_must_describe_this_broker() {
    let mut broker = replica(1);
    let err = broker
        .put(
            T0,
            &instance_name(2, "fabric", "main"),
            instance("main", EndpointState::Idle),
        )
        .unwrap_err();
    assert!(
        matches!(err, InvalidRecord::InstanceNodeMismatch { .. }),
        "{err}"
    );
    assert_eq!(err.code(), "INVALID_RECORD");
    let err = broker.put(T0, "", node_body(2)).unwrap_err();
    assert!(
        matches!(
            err,
            InvalidRecord::InvalidField {
                field: "node_name",
                ..
            }
        ),
        "{err}"
    );
    let err = broker
        .put(
            T0,
            "fabric",
            RecordBody::Definition(DefinitionBody {
                register: Default::default(),
            }),
        )
        .unwrap_err();
    assert!(
        matches!(err, InvalidRecord::InvalidField { field: "body", .. }),
        "{err}"
    );
    let err = broker
        .put(T0, "@fabric#main", instance("main", EndpointState::Idle))
        .unwrap_err();
    assert!(matches!(err, InvalidRecord::InvalidName { .. }), "{err}");
    let err = broker
        .put(T0, "@fabric@node1", instance("main", EndpointState::Idle))
        .unwrap_err();
    assert!(
        matches!(
            err,
            InvalidRecord::InvalidField {
                field: "workspace",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        broker.next_seq(),
        1,
        "rejected writes use no sequence number"
    );
    assert!(broker.poll_output().is_none());
}

#[test]
fn peers_are_bounded_and_messages_over_limits_are_ignored() {
    let mut broker = replica(1);
    assert_eq!(
        broker.handle_connected(T0, id(1)),
        Err(PeerRefused::SelfPeer)
    );
    for peer in 2..2 + PEERS_MAX as u8 {
        broker.handle_connected(T0, id(peer)).unwrap();
    }
    let refused = broker.handle_connected(T0, id(200)).unwrap_err();
    assert_eq!(refused, PeerRefused::TooManyPeers);
    assert_eq!(refused.code(), "TOO_MANY_PEERS");
    drain(&mut broker);

    let record = replica(2).put(T0, "", node_body(2)).unwrap();
    let flood = SyncMessage::Push {
        records: vec![record; RECORDS_PER_DELTA_MAX + 1],
    };
    broker.handle_message(T0, id(2), flood);
    let drained = drain(&mut broker);
    assert!(drained.persisted.is_empty());
    assert!(matches!(
        drained.events[..],
        [SyncEvent::MessageIgnored {
            reason: IgnoredReason::OverLimit { .. },
            message: "push",
            ..
        }]
    ));

    // Disconnecting drops what was queued for the peer.
    broker.handle_timeout(T0);
    broker.handle_timeout(broker.poll_timeout().unwrap());
    broker.handle_disconnected(&id(2));
    assert!(drain(&mut broker).sends.iter().all(|(to, _)| *to != id(2)));
}

#[test]
fn sync_messages_are_small() {
    let mut writer = replica(1);
    let record = writer
        .put(
            T0,
            &instance_name(1, "fabric", "feature-x"),
            RecordBody::Instance(InstanceBody {
                harness: Harness::Claude,
                workspace: "feature-x".into(),
                cwd: "~/src/fabric".into(),
                endpoint_state: EndpointState::Working,
                active_flights: 2,
                worktrees: false,
            }),
        )
        .unwrap();
    let push = wire::encode(&SyncMessage::Push {
        records: vec![record],
    });

    // Two brokers that both know 10 origins and have nothing to send.
    let (mut left, mut right, _) = connected_pair_knowing(11, 12, 1..=10);
    left.handle_timeout(T0);
    left.handle_timeout(left.poll_timeout().unwrap());
    let (to, summary) = drain(&mut left)
        .sends
        .into_iter()
        .find(|(to, _)| *to == id(12))
        .unwrap();
    assert_eq!(to, id(12));
    // A periodic round sends a summary; in sync, nothing comes back.
    assert!(matches!(&summary, SyncMessage::Summary { .. }));
    let summary_bytes = wire::encode(&summary);
    right.handle_message(T0, id(11), summary);
    assert!(
        drain(&mut right).sends.is_empty(),
        "equal summaries end the round"
    );
    // A digest (on connect, or when summaries differ) carries the vector.
    let digest = SyncMessage::Digest {
        vv: left.vv().clone(),
    };
    assert!(matches!(&digest, SyncMessage::Digest { vv } if vv.dots.len() == 10));
    let digest_bytes = wire::encode(&digest);
    right.handle_message(T0, id(11), digest);
    let replies = drain(&mut right).sends;
    assert!(replies.iter().all(|(to, _)| *to == id(11)));
    assert_eq!(replies.len(), 1, "only an empty delta comes back");
    let delta_bytes = wire::encode(&replies[0].1);
    assert!(
        matches!(&replies[0].1, SyncMessage::Delta { records, covers, more: false, .. } if records.is_empty() && covers.is_empty())
    );

    println!("push of one instance record: {} bytes", push.len());
    println!("summary: {} bytes", summary_bytes.len());
    println!("digest for 10 origins: {} bytes", digest_bytes.len());
    assert!(
        summary_bytes.len() <= 16,
        "summary is {} bytes",
        summary_bytes.len()
    );
    println!("empty delta reply: {} bytes", delta_bytes.len());
    // 96 of these bytes are the origin's key and signature.
    assert!(push.len() <= 300, "push is {} bytes", push.len());
    assert!(
        digest_bytes.len() <= 300,
        "digest is {} bytes",
        digest_bytes.len()
    );
    assert!(
        delta_bytes.len() <= 16,
        "delta is {} bytes",
        delta_bytes.len()
    );
}

/// Forged versions of node 1's records, as a member relaying them could
/// make them: a damaged signature, a record in node 1's name signed by node
/// 2's key, one carrying node 1's public key but signed by node 2, and a
/// revocation by node 2 that names node 1 as its author.
fn forgeries(genuine: &Record) -> Vec<Record> {
    let mut damaged = genuine.clone();
    damaged.dot.counter = 50;
    damaged.signature.0[0] ^= 1;

    let mut other_key = genuine.clone();
    other_key.dot.counter = 51;
    crate::registry::sign(&mut other_key, &key(2));

    let mut borrowed_key = genuine.clone();
    borrowed_key.dot.counter = 52;
    crate::registry::sign(&mut borrowed_key, &key(2));
    borrowed_key.origin_key = key(1).verifying_key().to_bytes();

    let revocation = signed_by(
        Record {
            key: RecordKey {
                origin: id(2),
                kind: RecordKind::Revocation,
                name: id(3).as_str().to_owned(),
            },
            dot: Dot::new(id(2), 53),
            hlc: Hlc::default(),
            body: Some(RecordBody::Revocation(RevocationBody {
                reason: "in someone else's name".into(),
                revoked_by: id(1),
            })),
            origin_key: [0; 32],
            signature: RecordSignature::UNSIGNED,
        },
        2,
    );
    vec![damaged, other_key, borrowed_key, revocation]
}

#[test]
fn forged_records_are_refused_counted_and_never_relayed() {
    let mut net = Net::new(3);
    net.connect(1, 2);
    net.connect(2, 3);
    let name = instance_name(1, "fabric", "main");
    let genuine = net
        .at(1)
        .put(T0, &name, instance("main", EndpointState::Idle))
        .unwrap();
    net.pump();
    crate::registry::validate(&genuine).unwrap();
    let forged = forgeries(&genuine);
    let now_ms = net.now_ms;
    for (idx, record) in forged.iter().enumerate() {
        let message = if idx % 2 == 0 {
            SyncMessage::Push {
                records: vec![record.clone()],
            }
        } else {
            SyncMessage::Delta {
                records: vec![record.clone()],
                covers: VClock::new(),
                since: VClock::new(),
                more: false,
            }
        };
        net.at(2).handle_message(now_ms, id(1), message);
        let drained = drain(net.at(2));
        assert!(drained.persisted.is_empty(), "forgery {idx} was persisted");
        assert!(drained.sends.is_empty(), "forgery {idx} was relayed");
        let [
            SyncEvent::RecordRejected {
                error,
                source: RecordSource::Peer(from),
                ..
            },
        ] = &drained.events[..]
        else {
            panic!("forgery {idx}: {:?}", drained.events);
        };
        assert_eq!(error.code(), "INVALID_SIGNATURE", "forgery {idx}: {error}");
        assert_eq!(*from, id(1));
    }
    assert_eq!(net.at(2).invalid_signatures(), forged.len() as u64);

    // Anti-entropy carries the genuine record to 3, and no forgery.
    net.anti_entropy_round();
    net.anti_entropy_round();
    for n in 1..=3 {
        let registry = net.at(n).registry();
        assert_eq!(registry.get(&genuine.key), Some(&genuine), "node {n}");
        assert!(
            registry.records().all(|record| !forged.contains(record)),
            "node {n} holds a forgery"
        );
        assert!(!registry.is_revoked(&id(3)));
    }
    assert!(
        net.events_of(3)
            .iter()
            .all(|event| !matches!(event, SyncEvent::RecordRejected { .. })),
        "no forgery reached node 3"
    );
}

#[test]
fn revoking_a_member_keeps_the_members_it_invited() {
    let mut net = Net::new(4);
    net.at(1)
        .put(T0, id(1).as_str(), admission_body(1, 1, 11))
        .unwrap();
    net.at(1)
        .put(T0, id(2).as_str(), admission_body(1, 2, 22))
        .unwrap();
    net.at(1)
        .put(T0, id(4).as_str(), admission_body(1, 4, 44))
        .unwrap();
    for (a, b) in [(1, 2), (1, 4), (2, 4)] {
        net.connect(a, b);
    }
    net.pump();
    net.at(2)
        .put(T0 + 1, id(3).as_str(), admission_body(2, 3, 33))
        .unwrap();
    net.pump();
    for (a, b) in [(1, 3), (2, 3), (3, 4)] {
        net.connect(a, b);
    }
    net.pump();
    net.anti_entropy_round();
    for n in [1, 2, 4] {
        assert!(net.at(n).registry().is_member(&id(3)), "node {n}");
    }

    // 4 revokes 2: 3 was admitted by 2 only, so 4 re-admits it.
    let now_ms = net.now_ms;
    net.at(4)
        .put(
            now_ms,
            id(2).as_str(),
            RecordBody::Revocation(RevocationBody {
                reason: "laptop stolen".into(),
                revoked_by: id(4),
            }),
        )
        .unwrap();
    net.pump();
    net.anti_entropy_round();
    for n in [1, 3, 4] {
        let registry = net.at(n).registry();
        assert!(!registry.is_member(&id(2)), "node {n}");
        assert!(registry.is_member(&id(3)), "node {n}");
        assert_eq!(registry.admitted_key(&id(3)), Some([33; 32]));
        let readmission = RecordKey {
            origin: id(4),
            kind: RecordKind::Admission,
            name: id(3).as_str().to_owned(),
        };
        assert!(registry.get(&readmission).is_some(), "node {n}");
    }
}

#[test]
fn restore_resigns_own_unsigned_records_and_refetches_others() {
    let mut net = Net::new(2);
    net.connect(1, 2);
    net.at(1).put(T0, "", node_body(1)).unwrap();
    net.at(2).put(T0, "", node_body(2)).unwrap();
    net.pump();
    // What a store written before records were signed holds.
    let unsigned: Vec<Record> = net
        .at(1)
        .records()
        .cloned()
        .map(|mut record| {
            record.origin_key = [0; 32];
            record.signature = RecordSignature::UNSIGNED;
            record
        })
        .collect();
    let vv = net.at(1).vv().clone();
    assert_eq!(vv.get(&id(2)), 1);
    let mut restored = Replica::restore(identity(1), config(1), unsigned, vv);
    let drained = drain(&mut restored);
    assert_eq!(drained.persisted.len(), 1, "the own record, re-signed");
    let own = &drained.persisted[0];
    assert_eq!(own.key.origin, id(1));
    crate::registry::validate(own).unwrap();
    assert_eq!(drained.persisted_vv.unwrap().get(&id(2)), 0);
    assert!(drained.events.iter().any(|event| matches!(
        event,
        SyncEvent::RecordRejected { origin, error, .. }
            if *origin == id(2) && error.code() == "INVALID_SIGNATURE"
    )));
    assert!(restored.registry().node(&id(2)).is_none());
    assert_eq!(restored.vv().get(&id(2)), 0, "fetched again from peers");
    assert_eq!(restored.next_seq(), 2);
}

/// Replicas 1 - 2 - 3 in a line on a partial view, caught up, and one new
/// record put on 1 (its outputs not drained yet).
fn partial_view_line_with_a_put() -> (Net, Record) {
    let mut net = Net::with(3, |n| SyncConfig {
        partial_view: true,
        ..config(n)
    });
    for (a, b) in [(1, 2), (2, 3)] {
        net.connect(a, b);
    }
    net.pump();
    let record = net
        .at(1)
        .put(
            T0,
            &instance_name(1, "fabric", "main"),
            instance("main", EndpointState::Idle),
        )
        .unwrap();
    (net, record)
}

/// The same line as `pushes_are_not_forwarded_but_anti_entropy_crosses_a_line`,
/// on a partial view: replica 2 pushes the record on to 3, not back to 1,
/// and 3 has nobody else to push it to.
#[test]
fn on_a_partial_view_a_new_record_is_pushed_on_and_a_known_one_is_not() {
    let (mut net, record) = partial_view_line_with_a_put();
    let key = record.key;
    assert_eq!(net.pump(), 2, "1 to 2, then 2 to 3 only");
    assert!(net.at(3).registry().get(&key).is_some());
}

#[test]
fn on_a_partial_view_an_anti_entropy_round_asks_one_peer() {
    let mut net = Net::with(4, |n| SyncConfig {
        partial_view: n == 1,
        ..config(n)
    });
    for peer in 2..=4 {
        net.connect(1, peer);
    }
    net.pump();
    let at = net.at(1).poll_timeout().unwrap();
    net.at(1).handle_timeout(at);
    let summaries = drain(net.at(1))
        .sends
        .into_iter()
        .filter(|(_, message)| matches!(message, SyncMessage::Summary { .. }))
        .count();
    assert_eq!(summaries, 1);
}

/// On a partial view a record of another origin is passed on before the
/// relaying replica's own commit (its origin committed it; a hop costs a
/// network trip, not a disk write), while a replica's own change is still
/// durable before it leaves.
#[test]
fn on_a_partial_view_a_relay_goes_out_before_its_persist() {
    let (mut net, record) = partial_view_line_with_a_put();
    let own = drain(net.at(1));
    assert_eq!(
        own.order,
        ["persist", "send"],
        "an own change persists first"
    );
    let push = SyncMessage::Push {
        records: vec![record.clone()],
    };
    net.at(2).handle_message(T0, id(1), push.clone());
    let relayed = drain(net.at(2));
    assert_eq!(relayed.order, ["send", "persist"]);
    assert_eq!(relayed.sends, [(id(3), push)]);
    assert_eq!(relayed.persisted, [record]);
}

/// Replicas 1, 2, 3 connected to each other on a partial view, caught up.
fn partial_view_triangle() -> Net {
    let mut net = Net::with(3, |n| SyncConfig {
        partial_view: true,
        ..config(n)
    });
    for (a, b) in [(1, 2), (2, 3), (1, 3)] {
        net.connect(a, b);
    }
    net.pump();
    net
}

fn put_workspace(net: &mut Net, n: u8, workspace: &str) -> Record {
    let now_ms = net.now_ms;
    net.at(n)
        .put(
            now_ms,
            &instance_name(n, "fabric", workspace),
            instance(workspace, EndpointState::Idle),
        )
        .unwrap()
}

/// Pushes that bring nothing new prune their link for that origin: after
/// one change of 1 crossed the triangle, the next is pushed along 1's tree
/// only (1 to 2 and 1 to 3) and the third link carries one announcement
/// per interval; another origin's first change still floods.
#[test]
fn on_a_partial_view_a_redundant_push_prunes_its_link_and_a_tree_remains() {
    let mut net = partial_view_triangle();
    put_workspace(&mut net, 1, "first");
    // 1 pushes to 2 and 3; each relays to the other, finds it known, and
    // both answer with a prune.
    assert_eq!(net.pump(), 6);
    let lazy = |net: &mut Net, at: u8, peer: u8| net.at(at).peers[&id(peer)].lazy.contains(&id(1));
    assert!(lazy(&mut net, 2, 3) && lazy(&mut net, 3, 2));
    assert!(!lazy(&mut net, 2, 1) && !lazy(&mut net, 1, 3));

    let second = put_workspace(&mut net, 1, "second");
    assert_eq!(net.pump(), 2, "pushed along the tree only");
    for n in 2..=3 {
        assert!(net.at(n).registry().get(&second.key).is_some());
    }
    let announcements = net.advance(ANNOUNCE_DELAY_MS_DEFAULT);
    assert_eq!(announcements, 2, "2 and 3 announce to each other");
    assert!(net.at(2).missing.is_empty() && net.at(3).missing.is_empty());
    assert_eq!(net.advance(GRAFT_TIMEOUT_MS_DEFAULT), 0, "nothing to graft");

    put_workspace(&mut net, 2, "other");
    assert_eq!(net.pump(), 6, "2's tree is its own");
}

/// When the tree breaks, an announcement shows what is missing and a graft
/// fetches it and makes the link eager again.
#[test]
fn on_a_partial_view_an_announced_record_that_does_not_arrive_is_grafted() {
    let mut net = partial_view_triangle();
    put_workspace(&mut net, 1, "first");
    net.pump();
    // The tree is 1 - 2 and 1 - 3; the link 1 - 3 goes down.
    net.at(1).handle_disconnected(&id(3));
    net.at(3).handle_disconnected(&id(1));
    let record = put_workspace(&mut net, 1, "second");
    assert_eq!(net.pump(), 1, "1 pushes to 2; 2 only announces to 3");
    assert!(net.at(3).registry().get(&record.key).is_none());
    net.advance(ANNOUNCE_DELAY_MS_DEFAULT);
    assert!(net.at(3).missing.contains_key(&id(1)));
    assert!(net.at(3).registry().get(&record.key).is_none());
    // 3's parent in 1's tree was 1 itself, now gone: the graft is due at
    // once rather than after the timeout.
    let now_ms = net.now_ms;
    assert_eq!(net.at(3).poll_timeout(), Some(now_ms));
    net.advance(0);
    assert!(net.at(3).registry().get(&record.key).is_some(), "grafted");
    assert!(net.at(3).missing.is_empty());
    for (at, peer) in [(2, 3), (3, 2)] {
        assert!(!net.at(at).peers[&id(peer)].lazy.contains(&id(1)));
    }

    // The repaired link is eager: the next change arrives by push.
    let third = put_workspace(&mut net, 1, "third");
    net.pump();
    assert!(net.at(3).registry().get(&third.key).is_some());
}

/// An announcement is bounded like a digest, and an announced origin that
/// nobody delivers is grafted from each announcer in turn, then given up to
/// anti-entropy: nothing waits forever.
#[test]
fn announcements_are_bounded_and_missing_records_are_not_waited_for_forever() {
    let mut net = partial_view_triangle();
    let mut have = VClock::new();
    for n in 0..=ORIGINS_MAX {
        let mut public_key = [0; 32];
        public_key[..8].copy_from_slice(&(n as u64).to_le_bytes());
        have.apply(Dot::new(NodeId::of_public_key(&public_key), n as u64 + 1));
    }
    let now_ms = net.now_ms;
    net.at(3)
        .handle_message(now_ms, id(2), SyncMessage::IHave { have });
    assert!(net.at(3).missing.is_empty(), "over the limit: ignored");

    let mut have = VClock::new();
    have.apply(Dot::new(id(7), 3));
    for from in [1, 2] {
        net.at(3)
            .handle_message(now_ms, id(from), SyncMessage::IHave { have: have.clone() });
    }
    drain(net.at(3));
    let mut grafted = Vec::new();
    for _ in 0..3 {
        net.now_ms += GRAFT_TIMEOUT_MS_DEFAULT;
        let now_ms = net.now_ms;
        net.at(3).handle_timeout(now_ms);
        for (to, message) in drain(net.at(3)).sends {
            if matches!(message, SyncMessage::Graft { .. }) {
                grafted.push(to);
            }
        }
    }
    assert_eq!(grafted, [id(1), id(2)], "each announcer once, in order");
    assert!(net.at(3).missing.is_empty());
}

/// A copy of a record the replica holds is stale whatever it carries, so
/// its signature is not checked again: duplicates along the views cost a
/// lookup, not a verification, and a damaged copy changes nothing.
#[test]
fn a_known_record_is_skipped_without_a_second_verification() {
    let mut writer = replica(1);
    let record = writer
        .put(
            T0,
            &instance_name(1, "fabric", "main"),
            instance("main", EndpointState::Idle),
        )
        .unwrap();
    let mut reader = replica(2);
    reader.handle_connected(T0, id(1)).unwrap();
    let push = |records| SyncMessage::Push { records };
    reader.handle_message(T0, id(1), push(vec![record.clone()]));
    drain(&mut reader);
    let mut damaged = record.clone();
    damaged.signature.0[0] ^= 1;
    reader.handle_message(T0, id(1), push(vec![damaged, record.clone()]));
    let drained = drain(&mut reader);
    assert_eq!(reader.invalid_signatures(), 0);
    assert!(drained.persisted.is_empty() && drained.events.is_empty());
    assert_eq!(reader.registry().get(&record.key), Some(&record));
}

/// Replicas `left` and `right`, connected, that both hold one node record
/// of each of `origins` (connected too), drained; and the origins'
/// replicas.
fn connected_pair_knowing(
    left: u8,
    right: u8,
    origins: std::ops::RangeInclusive<u8>,
) -> (Replica, Replica, Vec<Replica>) {
    let (left_id, right_id) = (id(left), id(right));
    let mut left = replica(left);
    let mut right = replica(right);
    left.handle_connected(T0, right_id).unwrap();
    right.handle_connected(T0, left_id).unwrap();
    let mut sources = Vec::new();
    for origin in origins {
        let mut source = replica(origin);
        let record = source.put(T0, "", node_body(origin)).unwrap();
        for replica in [&mut left, &mut right] {
            replica.handle_connected(T0, id(origin)).unwrap();
            replica.handle_message(
                T0,
                id(origin),
                SyncMessage::Push {
                    records: vec![record.clone()],
                },
            );
        }
        sources.push(source);
    }
    drain(&mut left);
    drain(&mut right);
    (left, right, sources)
}

/// A periodic round between two replicas that know more origins than a
/// vector has buckets trades the entries of the buckets that differ, not
/// the whole vector, and still repairs what one of them lacks.
#[test]
fn a_round_on_a_large_vector_trades_only_the_buckets_that_differ() {
    let (left_id, right_id) = (201u8, 202u8);
    let (mut left, mut right, mut sources) = connected_pair_knowing(left_id, right_id, 1..=120);
    assert!(left.vv().dots.len() > wire::VV_BUCKETS);
    // Origin 5 writes again; only the left replica hears of it.
    let newer = sources[4]
        .put(
            T0 + 1,
            "",
            RecordBody::Node(NodeBody {
                http_port: 3101,
                ..node_body_inner(5)
            }),
        )
        .unwrap();
    left.handle_message(
        T0 + 1,
        id(5),
        SyncMessage::Push {
            records: vec![newer],
        },
    );
    drain(&mut left);

    // The exchange, message by message, between the two only.
    let between = |drained: Drained, to: u8| -> Vec<SyncMessage> {
        drained
            .sends
            .into_iter()
            .filter(|(peer, _)| *peer == id(to))
            .map(|(_, message)| message)
            .collect()
    };
    left.handle_timeout(T0 + 2);
    let at = left.poll_timeout().unwrap();
    left.handle_timeout(at);
    let summary = between(drain(&mut left), right_id);
    assert!(matches!(summary.as_slice(), [SyncMessage::Summary { .. }]));
    right.handle_message(at, id(left_id), summary[0].clone());
    let buckets = between(drain(&mut right), left_id);
    let [SyncMessage::Buckets { hashes }] = buckets.as_slice() else {
        panic!("a differing summary on a large vector is answered with buckets: {buckets:?}");
    };
    assert_eq!(hashes.len(), wire::VV_BUCKETS);
    left.handle_message(at, id(right_id), buckets[0].clone());
    let part = between(drain(&mut left), right_id);
    let [SyncMessage::DigestPart { mask, vv }] = part.as_slice() else {
        panic!("the buckets that differ are answered with a partial digest: {part:?}");
    };
    assert_eq!(*mask, 1 << id(5).vv_bucket(), "one bucket differs");
    assert!(vv.dots.contains_key(&id(5)));
    assert!(vv.dots.len() < left.vv().dots.len() / 8);
    right.handle_message(at, id(left_id), part[0].clone());
    let answer = between(drain(&mut right), left_id);
    let back = answer
        .iter()
        .find(|message| matches!(message, SyncMessage::DigestPart { .. }))
        .expect("the right replica, behind in that bucket, sends its part");
    left.handle_message(at, id(right_id), back.clone());
    for message in between(drain(&mut left), right_id) {
        right.handle_message(at, id(left_id), message);
    }
    drain(&mut right);
    assert_eq!(right.vv().get(&id(5)), 2, "the newer record arrived");
    assert_eq!(left.state_digest(), right.state_digest());

    let full = wire::encode(&SyncMessage::Digest {
        vv: left.vv().clone(),
    })
    .len();
    let traded = wire::encode(&buckets[0]).len() + wire::encode(&part[0]).len();
    println!("full digest of 121 origins: {full} bytes; buckets and part: {traded} bytes");
    assert!(traded * 2 < full, "{traded} bytes against {full}");
}
