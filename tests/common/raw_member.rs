//! A mesh member that is not a broker: a key of its own, admitted with an
//! invite, speaking raw frames over real QUIC. The end-to-end tests use it
//! to send what a hostile or broken member could send.

use std::sync::Arc;
use std::time::Duration;

use scout::daemon::mesh::connections::join_exchange;
use scout::daemon::mesh::trust::MeshTrust;
use scout_mesh::names::{Label, NamePart};
use scout_mesh::wire::{Hello, Invite, MeshFrame, NodeId, PROTOCOL_VERSION};
use scout_net::transport::endpoint::request;
use scout_net::transport::{MeshEndpoint, NodeKey, TransportConfig};

use super::{Node, WAIT_BOUND};

/// How long one raw hello may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A raw member of a mesh.
pub struct RawMember {
    /// Its endpoint on loopback.
    pub endpoint: MeshEndpoint,
    /// Its key, which signs what it claims as its own.
    pub signing: ed25519_dalek::SigningKey,
    /// Its node id, derived from the key.
    pub node_id: NodeId,
    /// The invite it joined with.
    pub invite: Invite,
}

impl RawMember {
    /// Joins with `invite_code` (from `scout mesh invite`) under a fresh
    /// key, says hello to the inviter, and returns the open connection.
    pub async fn join(invite_code: &str) -> (RawMember, quinn::Connection) {
        let invite = Invite::from_code(invite_code).unwrap();
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let key = NodeKey {
            pkcs8_der: ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&signing)
                .unwrap()
                .as_bytes()
                .to_vec(),
            public_key: signing.verifying_key().to_bytes(),
        };
        let node_id = NodeId::of_public_key(&key.public_key);
        let endpoint = MeshEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            key,
            Arc::new(MeshTrust::new(scout::env::Env::system(None))),
            TransportConfig::default(),
        )
        .unwrap();
        let name = Label::parse("probe", NamePart::Node).unwrap();
        let (connection, _, _) = join_exchange(&endpoint, &invite, &name, Vec::new())
            .await
            .unwrap();
        let member = RawMember {
            endpoint,
            signing,
            node_id,
            invite,
        };
        member
            .hello(&connection)
            .await
            .expect("hello to the inviter");
        (member, connection)
    }

    /// The hello exchange on `connection`.
    pub async fn hello(&self, connection: &quinn::Connection) -> Result<(), String> {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: self.node_id.clone(),
            node_name: "probe".into(),
            mesh_id: self.invite.mesh_id,
            addresses: Vec::new(),
        };
        match request(connection, &MeshFrame::Hello(hello), HELLO_TIMEOUT).await {
            Ok(MeshFrame::HelloAck(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// Connects to `node` once it admits this member (it learns the
    /// admission by sync), bounded.
    pub async fn connect(&self, node: &Node) -> quinn::Connection {
        let addr = node.mesh_addr().parse().unwrap();
        let key = node_public_key(node);
        let deadline = tokio::time::Instant::now() + WAIT_BOUND;
        loop {
            if let Ok(connection) = self.endpoint.connect(addr, Some(key)).await
                && self.hello(&connection).await.is_ok()
            {
                return connection;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never admitted the raw member",
                node.name
            );
            // Another process's state can only be polled.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The public key of `node`'s broker, read from its home.
pub fn node_public_key(node: &Node) -> [u8; 32] {
    let home = scout::home::Home::in_dir(node.sandbox.home());
    scout::identity::load_node_key(&home.node_key_path())
        .expect("node key")
        .public_key()
}
