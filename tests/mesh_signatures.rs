//! End-to-end check that registry records must be signed by their origin:
//! a member that sends forged records over a real QUIC connection to a
//! real broker gets an `INVALID_SIGNATURE` error frame, the records are not
//! stored, and a genuine record on the same connection still is.

mod common;

use common::raw_member::RawMember;
use common::{Node, wait_until};
use crdts::Dot;
use scout_mesh::lifecycle::{EndpointState, Harness};
use scout_mesh::registry::sign;
use scout_mesh::wire::{
    Hlc, InstanceBody, MeshFrame, NodeId, Record, RecordBody, RecordKey, RecordKind,
    RecordSignature, SyncMessage,
};
use scout_net::transport::endpoint::request;

/// An instance record of `origin`, signed by `key`.
fn instance_record(
    origin: &NodeId,
    counter: u64,
    name: &str,
    key: &ed25519_dalek::SigningKey,
) -> Record {
    let mut record = Record {
        key: RecordKey {
            origin: origin.clone(),
            kind: RecordKind::Instance,
            name: name.to_owned(),
        },
        dot: Dot::new(origin.clone(), counter),
        hlc: Hlc {
            wall_ms: 1,
            logical: 0,
        },
        body: Some(RecordBody::Instance(InstanceBody {
            harness: Harness::Claude,
            workspace: "main".into(),
            cwd: "~/src".into(),
            endpoint_state: EndpointState::Idle,
            active_flights: 0,
            worktrees: false,
        })),
        origin_key: [0; 32],
        signature: RecordSignature::UNSIGNED,
    };
    sign(&mut record, key);
    record
}

#[test]
fn a_member_sending_forged_records_gets_an_error_and_nothing_is_stored() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (probe, connection) = RawMember::join(&alpha.invite()).await;
        let (signing, node_id) = (&probe.signing, &probe.node_id);
        let timeout = std::time::Duration::from_secs(10);

        // In alpha's name, signed by the probe's key.
        let in_alphas_name =
            instance_record(&probe.invite.inviter, 1_000, "@evil@alpha#main", signing);
        // In the probe's own name, with a damaged signature.
        let mut damaged = instance_record(node_id, 1, "@evil@probe#main", signing);
        damaged.signature.0[0] ^= 1;
        for forged in [in_alphas_name, damaged] {
            let push = MeshFrame::Sync(SyncMessage::Push {
                records: vec![forged],
            });
            match request(&connection, &push, timeout).await.unwrap() {
                MeshFrame::Error(error) => assert_eq!(error.code, "INVALID_SIGNATURE"),
                other => panic!("expected an error frame, got {other:?}"),
            }
        }
        // A genuine record on the same connection is stored.
        let genuine = instance_record(node_id, 2, "@good@probe#main", signing);
        let push = MeshFrame::Sync(SyncMessage::Push {
            records: vec![genuine],
        });
        let answer = request(&connection, &push, timeout).await.unwrap();
        assert_eq!(answer, MeshFrame::SyncAck);
    });
    let instances = wait_until("alpha to store the genuine record", || {
        let instances = alpha.instances();
        instances
            .contains(&"@good@probe#main".to_owned())
            .then_some(instances)
    });
    assert!(
        instances.iter().all(|name| !name.starts_with("@evil")),
        "{instances:?}"
    );
}
