//! Fuzz targets for every decoder of the mesh crate that reads bytes from
//! the network: sync messages and their records (`wire::decode`), mesh
//! frames (`wire::decode_frame`), registry records as the store keeps them
//! (postcard `Record` and `registry::validate`), invite codes (`Invite::from_code`),
//! Tailscale status and whois documents, mDNS TXT adverts and the LocalAPI
//! HTTP response parser. None may panic, whatever the input.
//!
//! Inputs come from [`fuzz_support`]: random bytes, and valid encodings
//! made by the public encode functions with byte-level mutations, so the
//! targets follow the wire types as they change. A decoded value must also
//! encode again and decode to itself.
//!
//! `cargo test -p scout-mesh --test fuzz_decoders` runs 10,000 cases per
//! target; `SCOUT_FUZZ_CASES=1000000 cargo test --release -p scout-mesh
//! --test fuzz_decoders -- --nocapture --test-threads=1` runs a million and
//! prints cases, wall time and panics per target.
//!
//! The length-prefixed frame reader (`transport::frame::read_frame`) reads
//! a quinn stream, not a slice; its only parsing is the 4-byte prefix,
//! checked against `FRAME_BYTES_MAX` before any allocation, and the
//! end-to-end malformed-frame test drives it over real QUIC.

mod fuzz_support;

use std::path::Path;

use fuzz_support::{bytes_input, json_input, run_target};
use proptest::prelude::*;
use scout_mesh::lifecycle::{
    DeliveryPolicy, EndpointState, FailureReason, FlightState, Harness, InvocationAction,
};
use scout_mesh::names::{Label, NamePart};
use scout_mesh::registry::{
    AdmissionBody, AdmissionMethod, DefinitionValue, InstanceBody, NodeBody, Record, RecordBody,
    RecordKind, RevocationBody, validate,
};
use scout_mesh::sync::{Output, Replica, ReplicaIdentity, SigningKey, SyncConfig};
use scout_mesh::wire::{
    self, ErrorFrame, FlightUpdate, Hello, Invite, InvokeAck, InvokeRequest, JoinAccepted,
    JoinRequest, MeshFrame, MeshId, NodeId, PROTOCOL_VERSION, SyncMessage,
};
use scout_net::discovery::{http, mdns, tailscale};

const T0: u64 = 1_700_000_000_000;

fn node_id(idx: u8) -> NodeId {
    let mut bytes = [0x5c; 16];
    bytes[0] = idx;
    NodeId::from_bytes(bytes)
}

/// The signing key of seed node `idx` (records are signed by their origin).
fn signing_key(idx: u8) -> SigningKey {
    SigningKey::from_bytes(&[idx.wrapping_add(1); 32])
}

fn keyed_id(idx: u8) -> NodeId {
    NodeId::of_public_key(&signing_key(idx).verifying_key().to_bytes())
}

/// Sync messages as a real exchange produces them: pushes of every record
/// kind (tombstones too), a digest, and the delta chunks that answer an
/// empty digest.
fn sync_seeds() -> Vec<SyncMessage> {
    let (founder_id, peer_id, revoked_id) = (keyed_id(0), keyed_id(1), keyed_id(2));
    let founder_name = Label::parse("node0", NamePart::Node).unwrap();
    let config = SyncConfig {
        records_per_delta_max: 3,
        ..SyncConfig::default()
    };
    let identity = ReplicaIdentity {
        signing_key: signing_key(0),
        node_name: founder_name,
        founder: founder_id.clone(),
    };
    let mut founder = Replica::new(identity, config);
    for (idx, id) in [&founder_id, &peer_id, &revoked_id].into_iter().enumerate() {
        let body = RecordBody::Admission(AdmissionBody {
            public_key: signing_key(idx as u8).verifying_key().to_bytes(),
            node_name: format!("node{idx}"),
            admitted_by: founder_id.clone(),
            method: if idx == 0 {
                AdmissionMethod::Founder
            } else {
                AdmissionMethod::Invite
            },
        });
        founder.put(T0, id.as_str(), body).unwrap();
    }
    founder.handle_connected(T0, peer_id.clone()).unwrap();
    let node = RecordBody::Node(NodeBody {
        node_name: "node0".into(),
        addresses: vec!["192.0.2.1:4433".into(), "[2001:db8::1]:4433".into()],
        http_port: 7450,
        scout_version: "0.1.0".into(),
        protocol_version: PROTOCOL_VERSION,
        via: Vec::new(),
    });
    founder.put(T0 + 1, "", node).unwrap();
    for (idx, harness) in Harness::ALL.iter().enumerate() {
        let instance = RecordBody::Instance(InstanceBody {
            harness: *harness,
            workspace: format!("w{idx}"),
            cwd: format!("~/src/w{idx}"),
            endpoint_state: EndpointState::ALL[idx % EndpointState::ALL.len()],
            active_flights: idx as u32,
            worktrees: false,
        });
        let name = format!("@agent@node0#w{idx}");
        founder.put(T0 + 2, &name, instance).unwrap();
    }
    founder
        .delete(T0 + 3, RecordKind::Instance, "@agent@node0#w0")
        .unwrap();
    let label = Label::parse("fabric", NamePart::Definition).unwrap();
    let value = DefinitionValue {
        description: "builds the fabric".into(),
        aliases: vec!["fab".into(), "weaver".into()],
    };
    founder.edit_definition(T0 + 4, &label, value).unwrap();
    let revocation = RecordBody::Revocation(RevocationBody {
        reason: "laptop lost".into(),
        revoked_by: founder_id.clone(),
    });
    founder
        .put(T0 + 5, revoked_id.as_str(), revocation)
        .unwrap();
    let mut seeds = Vec::new();
    let mut all_records = Vec::new();
    let mut drain = |replica: &mut Replica, seeds: &mut Vec<SyncMessage>| {
        while let Some(output) = replica.poll_output() {
            match output {
                Output::Send { message, .. } => seeds.push(message),
                Output::Persist { records, .. } => all_records.extend(records),
                _ => {}
            }
        }
    };
    drain(&mut founder, &mut seeds);
    // An empty digest from the peer asks for everything, in delta chunks.
    let empty = SyncMessage::Digest {
        vv: Default::default(),
    };
    founder.handle_message(T0 + 6, peer_id, empty);
    drain(&mut founder, &mut seeds);
    seeds.push(SyncMessage::Push {
        records: all_records,
    });
    // Tree dissemination's messages: an announcement, a graft, a prune.
    let vv = founder.vv().clone();
    seeds.push(SyncMessage::IHave { have: vv.clone() });
    seeds.push(SyncMessage::Graft { since: vv.clone() });
    seeds.push(SyncMessage::Prune {
        origins: vv.dots.keys().cloned().collect(),
    });
    seeds.push(SyncMessage::Summary { hash: 42 });
    seeds.push(SyncMessage::DigestPart {
        mask: 0b1011,
        vv: vv.clone(),
    });
    seeds.push(SyncMessage::Buckets {
        hashes: (0..scout_mesh::wire::VV_BUCKETS as u64).collect(),
    });
    assert!(
        seeds
            .iter()
            .any(|seed| matches!(seed, SyncMessage::Delta { .. })),
        "the exchange produced no delta: {seeds:?}"
    );
    seeds
}

/// Every record of the exchange, each encoded as the store keeps it (one
/// postcard record per row).
fn stored_record_seeds() -> Vec<Vec<u8>> {
    sync_seeds()
        .into_iter()
        .filter_map(|message| match message {
            SyncMessage::Push { records } => Some(records),
            _ => None,
        })
        .flatten()
        .map(|record| postcard::to_allocvec(&record).unwrap())
        .collect()
}

/// A relayed cancel, sealed to and signed by fixed keys.
fn relayed() -> scout_mesh::relay::RelayEnvelope {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let cancel = MeshFrame::Cancel {
        invocation_id: "0190a0b0-c0d0-7000-8000-000000000001".into(),
    };
    let how = scout_mesh::relay::Seal {
        to: &node_id(1),
        nonce: 7,
        sent_ms: T0,
        answer: false,
    };
    let target = ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key();
    let exchange = scout_mesh::relay::Exchange::start([6; 32], &target.to_bytes())
        .expect("a secret with a real key");
    scout_mesh::relay::seal(&key, how, &exchange, &cancel).expect("a cancel is relayed")
}

fn frame_seeds() -> Vec<MeshFrame> {
    let mesh_id = MeshId::founded_by(&[7; 32]);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: node_id(0),
        node_name: "laptop".into(),
        mesh_id,
        addresses: vec!["192.0.2.1:4433".into(), "[::1]:4433".into()],
    };
    let update = FlightUpdate {
        invocation_id: "0190a0b0-c0d0-7000-8000-000000000001".into(),
        state: FlightState::Failed,
        output: "partial output\n\u{1b}[0m".into(),
        failure_reason: Some(FailureReason::Timeout),
        detail: Some("the deadline passed".into()),
        failure_code: None,
        usage: None,
    };
    let mut frames = vec![
        MeshFrame::Hello(hello.clone()),
        MeshFrame::HelloAck(hello),
        MeshFrame::SyncAck,
        MeshFrame::Join(JoinRequest {
            invite_id: [1; 8],
            secret: [2; 16],
            node_name: "devbox".into(),
            addresses: vec!["192.0.2.2:4433".into()],
        }),
        MeshFrame::JoinAccepted(JoinAccepted {
            mesh_id,
            admitted_by: node_id(0),
        }),
        MeshFrame::Ping { nonce: 42 },
        MeshFrame::Relay(relayed()),
        MeshFrame::Relayed(relayed()),
        MeshFrame::RelayAnswer(relayed()),
        MeshFrame::Pong { nonce: u64::MAX },
        MeshFrame::error("MALFORMED_FRAME", "bad bytes"),
        MeshFrame::Error(ErrorFrame {
            code: scout_mesh::wire::ErrorCode::from_word(""),
            message: String::new(),
        }),
        MeshFrame::InvokeAck(InvokeAck {
            invocation_id: "0190a0b0-c0d0-7000-8000-000000000001".into(),
            duplicate: true,
            state: FlightState::Running,
        }),
        MeshFrame::FlightUpdate(update.clone()),
        MeshFrame::FlightQuery {
            invocation_id: "0190a0b0-c0d0-7000-8000-000000000001".into(),
        },
        MeshFrame::Cancel {
            invocation_id: "x".into(),
        },
        MeshFrame::FlightAck(Some(update.clone())),
        MeshFrame::FlightAck(None),
        // A flight update with its tail: a failure code and usage.
        MeshFrame::FlightUpdate(FlightUpdate {
            failure_code: scout_mesh::usage::FailureCode::parse("AUTH_REQUIRED").ok(),
            usage: Some(scout_mesh::usage::Usage {
                input_tokens: 1_200,
                output_tokens: 340,
                cached_tokens: 1_000,
                cost_micro_usd: Some(5_600),
            }),
            ..update
        }),
        MeshFrame::UsageQuery(scout_mesh::wire::UsageQuery { since_unix_ms: T0 }),
        MeshFrame::UsageReport(scout_mesh::wire::UsageReport {
            rows: vec![scout_mesh::wire::UsageRow {
                instance: "@fabric@devbox#main".into(),
                flights: 3,
                failed: 1,
                usage: scout_mesh::usage::Usage::default(),
            }],
            truncated: false,
        }),
    ];
    for (idx, action) in InvocationAction::ALL.iter().enumerate() {
        frames.push(MeshFrame::Invoke(InvokeRequest {
            invocation_id: format!("0190a0b0-c0d0-7000-8000-00000000000{idx}"),
            action: *action,
            body: "review the diff".into(),
            conversation_id: (idx % 2 == 0).then(|| "c1".to_owned()),
            origin: node_id(1),
            target: "@fabric".into(),
            instance: "@fabric@devbox#main".into(),
            resolve_reason: "only_match".into(),
            deadline_ms: (idx % 2 == 1).then_some(T0),
            policy: DeliveryPolicy::ALL[idx % DeliveryPolicy::ALL.len()],
            from: (idx % 2 == 1).then(|| "@planner@laptop#main".to_owned()),
            chain: if idx % 2 == 1 {
                vec!["@planner@laptop#main".to_owned()]
            } else {
                Vec::new()
            },
        }));
    }
    frames.extend(sync_seeds().into_iter().map(MeshFrame::Sync));
    frames
}

fn invite_seeds() -> Vec<Invite> {
    vec![
        Invite {
            mesh_id: MeshId::founded_by(&[7; 32]),
            inviter: node_id(0),
            inviter_key: [9; 32],
            addresses: vec!["192.0.2.1:4433".into(), "[2001:db8::1]:4433".into()],
            invite_id: [1; 8],
            secret: [2; 16],
            expires_at_ms: T0,
        },
        Invite {
            mesh_id: MeshId::founded_by(&[0; 32]),
            inviter: node_id(255),
            inviter_key: [0; 32],
            addresses: Vec::new(),
            invite_id: [0; 8],
            secret: [0; 16],
            expires_at_ms: u64::MAX,
        },
    ]
}

/// The raw postcard bytes inside an invite code.
fn invite_bytes(invite: &Invite) -> Vec<u8> {
    let code = invite.to_code();
    let body = code.strip_prefix(wire::INVITE_CODE_PREFIX).unwrap();
    data_encoding::BASE32_NOPAD
        .decode(body.to_ascii_uppercase().as_bytes())
        .unwrap()
}

fn status_seeds() -> Vec<serde_json::Value> {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tailscale/status.json");
    let mut seeds: Vec<serde_json::Value> = std::fs::read(fixture)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .into_iter()
        .collect();
    seeds.push(serde_json::json!({
        "BackendState": "Running",
        "MagicDNSSuffix": "tail1234.ts.net",
        "CurrentTailnet": {"Name": "alice@example.com"},
        "Self": {"ID": "n1", "HostName": "laptop", "DNSName": "laptop.tail1234.ts.net.",
                 "OS": "linux", "UserID": 1, "TailscaleIPs": ["100.64.0.1"], "Online": true},
        "User": {"1": {"ID": 1, "LoginName": "alice@example.com"}},
        "Peer": {
            "nodekey:a": {"ID": "nA", "HostName": "devbox", "DNSName": "devbox.tail1234.ts.net.",
                          "OS": "linux", "UserID": 1, "Tags": ["tag:mesh-broker"],
                          "TailscaleIPs": ["100.64.0.2", "fd7a:115c:a1e0::2"], "Online": true},
            "nodekey:b": {"ID": "nB", "TailscaleIPs": ["not-an-ip"], "Online": false}
        }
    }));
    seeds.push(serde_json::json!({"BackendState": "NeedsLogin", "AuthURL": "https://login.example/a", "Peer": null}));
    seeds
}

fn whois_seeds() -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({
            "Node": {"ID": 5, "StableID": "nDeskT0p11CNTRL", "Name": "devbox.tail1234.ts.net.",
                     "Tags": ["tag:mesh-broker"], "Addresses": ["100.88.12.34/32", "fd7a:115c:a1e0::9001:c22/128"],
                     "Hostinfo": {"Hostname": "devbox", "OS": "linux"}},
            "UserProfile": {"ID": 1, "LoginName": "tagged-devices"},
            "CapMap": {}
        }),
        serde_json::json!({"Node": {"StableID": "nL4p", "Name": "laptop."},
                           "UserProfile": {"LoginName": "alice@example.com"}}),
    ]
}

fn http_seeds() -> Vec<Vec<u8>> {
    [
        &b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\n\r\n",
        b"HTTP/1.0 403 Forbidden\r\n\r\nbad origin\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\nffffffff\r\nab\r\n",
    ]
    .iter()
    .map(|raw| raw.to_vec())
    .collect()
}

/// Numbers as an HTTP answer writes them (chunk sizes in hex, lengths in
/// decimal), around every boundary a parser adds to or slices at.
const HTTP_NUMBERS: [&str; 16] = [
    "0",
    "1",
    "2",
    "ffffffff",
    "100000000",
    "7fffffffffffffff",
    "fffffffffffffffd",
    "fffffffffffffffe",
    "ffffffffffffffff",
    "10000000000000000",
    "18446744073709551615",
    "18446744073709551614",
    "-1",
    "+2",
    " 2 ",
    "",
];

/// An HTTP answer with one of its numbers (a chunk size or a
/// Content-Length) replaced by one of [`HTTP_NUMBERS`].
fn http_tampered(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n_seeds = seeds.len();
    (
        0..n_seeds,
        any::<usize>(),
        proptest::sample::select(&HTTP_NUMBERS[..]),
    )
        .prop_map(move |(idx, pick, number)| {
            let raw = &seeds[idx];
            // Numbers sit after ": " in a header, or at the start of a line
            // in a chunked body.
            let starts: Vec<usize> = (0..raw.len())
                .filter(|&pos| {
                    pos >= 2
                        && raw[pos].is_ascii_hexdigit()
                        && matches!(&raw[pos - 2..pos], b": " | b"\r\n")
                })
                .collect();
            if starts.is_empty() {
                return raw.clone();
            }
            let start = starts[pick % starts.len()];
            let end = start
                + raw[start..]
                    .iter()
                    .take_while(|byte| byte.is_ascii_hexdigit())
                    .count();
            [&raw[..start], number.as_bytes(), &raw[end..]].concat()
        })
}

fn http_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => bytes_input(http_seeds()),
        1 => http_tampered(http_seeds()),
    ]
}

/// TXT properties as the mDNS daemon hands them over.
type Txt = Vec<(String, Option<Vec<u8>>)>;

fn advert_seeds() -> Vec<Txt> {
    [[3u8; 32], [200; 32]]
        .iter()
        .enumerate()
        .map(|(idx, key)| {
            let advert = mdns::Advert {
                node_id: NodeId::of_public_key(key),
                node_name: format!("node{idx}"),
                mesh_id: MeshId::founded_by(&[7; 32]),
                protocol_version: PROTOCOL_VERSION,
                public_key: *key,
            };
            advert
                .txt_properties()
                .into_iter()
                .map(|(key, value)| (key.to_owned(), Some(value.into_bytes())))
                .collect()
        })
        .collect()
}

/// A TXT record changed at the property level: values mutated as bytes,
/// entries dropped, duplicated, emptied, renamed or added.
fn txt_input(seeds: Vec<Txt>) -> impl Strategy<Value = Txt> {
    let n_seeds = seeds.len();
    let value_bytes: Vec<Vec<u8>> = seeds
        .iter()
        .flatten()
        .filter_map(|(_, value)| value.clone())
        .collect();
    (
        0..n_seeds,
        proptest::collection::vec(
            (
                any::<usize>(),
                0u8..6,
                bytes_input(value_bytes),
                fuzz_support::key(),
            ),
            1..6,
        ),
    )
        .prop_map(move |(idx, edits)| {
            let mut txt = seeds[idx].clone();
            for (at, kind, bytes, key) in edits {
                let pos = at % (txt.len() + 1);
                match kind {
                    0 if pos < txt.len() => txt[pos].1 = Some(bytes),
                    1 if pos < txt.len() => txt[pos].1 = None,
                    2 if pos < txt.len() => {
                        txt.remove(pos);
                    }
                    3 if pos < txt.len() => {
                        let copy = (txt[pos].0.to_ascii_uppercase(), Some(bytes));
                        txt.insert(0, copy);
                    }
                    4 if pos < txt.len() => txt[pos].0 = key,
                    _ => txt.push((key, Some(bytes))),
                }
            }
            txt
        })
}

#[test]
fn fuzz_sync_message_decode() {
    let seeds = sync_seeds().iter().map(wire::encode).collect();
    run_target("sync message (wire::decode)", bytes_input(seeds), |bytes| {
        if let Ok(message) = wire::decode(&bytes) {
            prop_assert_eq!(wire::decode(&wire::encode(&message)), Ok(message));
        }
        Ok(())
    });
}

#[test]
fn fuzz_stored_record_decode() {
    // As the store loads a row, then as the registry checks a record.
    let seeds = stored_record_seeds();
    run_target(
        "stored registry record (postcard Record, registry::validate)",
        bytes_input(seeds),
        |bytes| {
            if let Ok(record) = postcard::from_bytes::<Record>(&bytes) {
                let _ = validate(&record);
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_mesh_frame_decode() {
    let seeds = frame_seeds().iter().map(wire::encode_frame).collect();
    run_target(
        "mesh frame (wire::decode_frame)",
        bytes_input(seeds),
        |bytes| {
            if let Ok(frame) = wire::decode_frame(&bytes) {
                prop_assert_eq!(wire::decode_frame(&wire::encode_frame(&frame)), Ok(frame));
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_invite_code_text() {
    let seeds = invite_seeds()
        .iter()
        .map(|invite| invite.to_code().into_bytes())
        .collect();
    run_target(
        "invite code text (Invite::from_code)",
        bytes_input(seeds),
        |bytes| {
            let code = String::from_utf8_lossy(&bytes);
            if let Ok(invite) = Invite::from_code(&code) {
                prop_assert_eq!(Invite::from_code(&invite.to_code()), Ok(invite));
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_invite_code_body() {
    let seeds = invite_seeds().iter().map(invite_bytes).collect();
    run_target(
        "invite code body (Invite::from_code)",
        bytes_input(seeds),
        |bytes| {
            let code = format!(
                "{}{}",
                wire::INVITE_CODE_PREFIX,
                data_encoding::BASE32_NOPAD
                    .encode(&bytes)
                    .to_ascii_lowercase()
            );
            if let Ok(invite) = Invite::from_code(&code) {
                prop_assert_eq!(Invite::from_code(&invite.to_code()), Ok(invite));
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_tailscale_status() {
    run_target(
        "tailscale status (parse_status)",
        json_input(status_seeds()),
        |bytes| {
            if let Ok(status) = tailscale::parse_status(&bytes) {
                prop_assert!(status.peers.len() <= tailscale::TAILNET_PEERS_MAX);
                let _ = status.candidates(&["tag:mesh-broker".to_owned()]).count();
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_tailscale_whois() {
    run_target(
        "tailscale whois (parse_whois)",
        json_input(whois_seeds()),
        |bytes| {
            let _ = tailscale::parse_whois(&bytes);
            Ok(())
        },
    );
}

#[test]
fn fuzz_mdns_txt() {
    run_target(
        "mdns TXT advert (parse_txt)",
        txt_input(advert_seeds()),
        |txt| {
            let properties = txt
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_deref()));
            if let Ok(advert) = mdns::parse_txt(properties) {
                let again: Vec<(&str, String)> = advert.txt_properties();
                let reparsed = mdns::parse_txt(
                    again
                        .iter()
                        .map(|(key, value)| (*key, Some(value.as_bytes()))),
                );
                prop_assert_eq!(reparsed, Ok(advert));
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_http_response() {
    run_target("http response (parse_response)", http_input(), |bytes| {
        if let Ok(response) = http::parse_response(&bytes) {
            prop_assert!(response.body.len() <= bytes.len());
        }
        Ok(())
    });
}

/// Found by `fuzz_http_response`: a chunk size of `usize::MAX` overflowed
/// the parser's bounds arithmetic.
#[test]
fn regression_http_chunk_size_at_usize_max() {
    for size in ["ffffffffffffffff", "fffffffffffffffe"] {
        let raw = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n{{\"a\"\r\n0\r\n\r\n"
        );
        assert!(http::parse_response(raw.as_bytes()).is_err(), "{size}");
    }
}
