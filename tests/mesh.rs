//! End-to-end mesh tests with real broker processes on loopback, each in
//! its own home: joining by invite and seeds, replication of agents,
//! catch-up after SIGKILL, a killed broker let back in at once, a running
//! broker that moves to another mesh, refusing strangers and revoked
//! members, a connection that never says hello, and malformed frames over
//! a real QUIC connection.

mod common;

use std::sync::Arc;

use common::raw_member::RawMember;
use common::{Node, wait_until};
use scout::daemon::mesh::trust::MeshTrust;
use scout_mesh::wire::{Invite, MeshFrame, PROTOCOL_VERSION, encode_frame};
use scout_net::transport::endpoint::{read_request, request};
use scout_net::transport::{MeshEndpoint, NodeKey, TransportConfig, close_code};

/// alpha founds the mesh; beta joins offline with an invite before its
/// first start; gamma seeds alpha and joins with `setup --join` using a code
/// from beta.
fn three_brokers() -> (Node, Node, Node) {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let beta = join_started("beta", &alpha, &alpha.invite());
    let code = beta.invite();
    let mut gamma = Node::setup("gamma", &["--seed", &alpha.mesh_addr(), "--join", &code]);
    gamma.start();
    for node in [&alpha, &beta, &gamma] {
        wait_until(&format!("{} to see two peers", node.name), || {
            (node.peers_in("connected").len() == 2).then_some(())
        });
    }
    (alpha, beta, gamma)
}

/// A new broker `name` that joins with `code` (offline, before its first
/// start), started and connected to `alpha`, alpha's only peer.
fn join_started(name: &str, alpha: &Node, code: &str) -> Node {
    let mut node = Node::setup(name, &[]);
    let joined = node.run(&["mesh", "join", code]);
    assert_eq!(joined.code, 0, "{name} join: {}", joined.stderr);
    node.start();
    wait_until(&format!("{name} to connect to alpha"), || {
        (alpha.peers_in("connected") == [name]).then_some(())
    });
    node
}

fn converged(nodes: &[&Node]) -> bool {
    let digests: Vec<(u64, String)> = nodes.iter().map(|node| node.digest()).collect();
    digests.windows(2).all(|pair| pair[0] == pair[1])
}

#[test]
fn three_brokers_join_converge_and_share_agents() {
    let (alpha, beta, gamma) = three_brokers();
    alpha.add_bash_agent("fabric");
    for node in [&beta, &gamma] {
        wait_until(&format!("{} to see @fabric", node.name), || {
            node.instances()
                .contains(&"@fabric@alpha#main".to_owned())
                .then_some(())
        });
    }
    wait_until("registries to converge", || {
        converged(&[&alpha, &beta, &gamma]).then_some(())
    });

    let listed = gamma.run(&["agents", "list"]);
    assert!(
        listed.stdout.contains("@fabric@alpha#main"),
        "{}",
        listed.stdout
    );
    let peers = gamma.run(&["--json", "peers"]).json();
    let states: Vec<(String, String)> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|peer| {
            (
                peer["name"].as_str().unwrap().to_owned(),
                peer["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states.len(), 2, "{peers}");
    assert!(
        states.iter().all(|(_, state)| state == "connected"),
        "{peers}"
    );
    let human = gamma.run(&["peers"]);
    assert!(
        human.stdout.contains("alpha") && human.stdout.contains("beta"),
        "{}",
        human.stdout
    );

    // Removing the agent withdraws the instance everywhere.
    let removed = alpha.run(&["agents", "remove", "fabric"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    wait_until("gamma to drop @fabric", || {
        (!gamma.instances().contains(&"@fabric@alpha#main".to_owned())).then_some(())
    });
}

#[test]
fn a_killed_broker_catches_up_with_a_delta() {
    let (alpha, beta, mut gamma) = three_brokers();
    wait_until("registries to converge", || {
        converged(&[&alpha, &beta, &gamma]).then_some(())
    });
    let mut broker = gamma.broker.take().unwrap();
    assert_ne!(broker.stop_with(libc::SIGKILL), 0);
    drop(broker);

    let cwd = alpha.sandbox.path().display().to_string();
    for name in ["one", "two", "three"] {
        alpha.add_bash_agent(name);
    }
    let add = beta.run(&["agents", "add", "four", "--cwd", &cwd, "--command", "bash"]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    wait_until("alpha and beta to converge on four agents", || {
        (converged(&[&alpha, &beta]) && alpha.instances().len() == 4).then_some(())
    });

    gamma.start();
    wait_until("gamma to catch up", || {
        converged(&[&alpha, &beta, &gamma]).then_some(())
    });
    let mesh = gamma.get("/v1/mesh");
    let received = mesh["sync_records_received"].as_u64().unwrap();
    let total = mesh["registry_records"].as_u64().unwrap();
    assert!(
        received >= 4,
        "gamma received {received} records; it missed 4 changes"
    );
    // A full resync would bring every record from each of the two peers.
    assert!(
        received < 2 * total,
        "gamma received {received} records of {total}: a restart must not resync everything"
    );
}

#[test]
fn a_stranger_is_refused_and_the_mesh_keeps_serving() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = Node::setup("beta", &[]);
    assert_eq!(beta.run(&["mesh", "join", &alpha.invite()]).code, 0);
    beta.start();
    wait_until("beta to connect", || {
        (alpha.peers_in("connected") == ["beta"]).then_some(())
    });

    let mut stranger = Node::setup("stranger", &["--seed", &alpha.mesh_addr()]);
    stranger.start();
    let log = wait_until("alpha to log the refused stranger", || {
        let line = alpha
            .broker()
            .stderr_line_matching("inbound handshake failed")?;
        line.contains("UNKNOWN_PEER").then_some(line)
    });
    assert!(log.contains("127.0.0.1"), "{log}");
    assert!(stranger.peers_in("connected").is_empty());
    assert_eq!(alpha.peers_in("connected"), ["beta"]);
    let health: serde_json::Value = ureq::get(&format!("{}/health", alpha.broker().http_base()))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["status"], "ok");
}

#[test]
fn a_revoked_broker_is_cut_off_everywhere() {
    let (alpha, beta, gamma) = three_brokers();
    let revoke = alpha.run(&["mesh", "revoke", "gamma", "--reason", "laptop lost"]);
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    for node in [&alpha, &beta] {
        wait_until(&format!("{} to mark gamma revoked", node.name), || {
            (node.peers_in("revoked") == ["gamma"]).then_some(())
        });
    }
    wait_until("gamma to lose every peer", || {
        gamma.peers_in("connected").is_empty().then_some(())
    });
    // Gamma keeps trying and is refused in the handshake.
    wait_until("a refusal of gamma's key", || {
        let alpha_log = alpha.broker().stderr_line_matching("REVOKED_PEER");
        let beta_log = beta.broker().stderr_line_matching("REVOKED_PEER");
        alpha_log.or(beta_log)
    });
    assert_eq!(alpha.peers_in("connected"), ["beta"]);
}

#[test]
fn malformed_frames_get_errors_and_the_broker_keeps_serving() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_probe, connection) = RawMember::join(&alpha.invite()).await;
        let timeout = std::time::Duration::from_secs(10);

        async fn raw(connection: &quinn::Connection, bytes: &[u8]) -> MeshFrame {
            let (mut send, mut recv) = connection.open_bi().await.unwrap();
            send.write_all(bytes).await.unwrap();
            send.finish().unwrap();
            read_request(&mut recv).await.unwrap()
        }
        fn code(frame: &MeshFrame) -> String {
            match frame {
                MeshFrame::Error(error) => error.code.to_string(),
                other => panic!("expected an error frame, got {other:?}"),
            }
        }
        let mut garbage = 4u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(code(&raw(&connection, &garbage).await), "MALFORMED_FRAME");
        assert_eq!(
            code(&raw(&connection, &u32::MAX.to_be_bytes()).await),
            "FRAME_TOO_LARGE"
        );
        let mut body = encode_frame(&MeshFrame::Ping { nonce: 1 });
        body[0] = 9;
        let mut wrong_version = (body.len() as u32).to_be_bytes().to_vec();
        wrong_version.extend_from_slice(&body);
        assert_eq!(
            code(&raw(&connection, &wrong_version).await),
            "UNSUPPORTED_VERSION"
        );
        let unknown_kind = [0, 0, 0, 2, PROTOCOL_VERSION as u8, 120];
        assert_eq!(
            code(&raw(&connection, &unknown_kind).await),
            "MALFORMED_FRAME"
        );
        let hello_again = encode_frame(&MeshFrame::Join(scout_mesh::wire::JoinRequest {
            invite_id: [0; 8],
            secret: [0; 16],
            node_name: "x".into(),
            addresses: Vec::new(),
        }));
        let mut framed = (hello_again.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&hello_again);
        assert_eq!(code(&raw(&connection, &framed).await), "UNEXPECTED_FRAME");

        let pong = request(&connection, &MeshFrame::Ping { nonce: 42 }, timeout)
            .await
            .unwrap();
        assert_eq!(pong, MeshFrame::Pong { nonce: 42 });
    });
    let health: serde_json::Value = ureq::get(&format!("{}/health", alpha.broker().http_base()))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["status"], "ok");
}

#[test]
fn a_broker_with_a_lost_store_resyncs_fully() {
    let (alpha, beta, mut gamma) = three_brokers();
    gamma.add_bash_agent("scribe");
    alpha.wait_for_instance("@scribe@gamma#main");
    let mut broker = gamma.broker.take().unwrap();
    assert_eq!(broker.stop_with(libc::SIGTERM), 0);
    drop(broker);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(gamma.sandbox.home().join(format!("scout.db{suffix}")));
    }

    gamma.start();
    wait_until("gamma to resync", || {
        converged(&[&alpha, &beta, &gamma]).then_some(())
    });
    let mesh = gamma.get("/v1/mesh");
    assert!(
        mesh["sync_records_received"].as_u64().unwrap()
            >= mesh["registry_records"].as_u64().unwrap() / 2,
        "a lost store resyncs from peers: {mesh}"
    );
    assert!(gamma.instances().contains(&"@scribe@gamma#main".to_owned()));
    // Converging through one peer can come before the other's redial.
    wait_until("gamma to reconnect to both", || {
        (gamma.peers_in("connected") == ["alpha", "beta"]).then_some(())
    });
}

/// A fresh random node key, as a stranger's broker would have.
fn random_key() -> NodeKey {
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    NodeKey {
        pkcs8_der: ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&signing)
            .unwrap()
            .as_bytes()
            .to_vec(),
        public_key: signing.verifying_key().to_bytes(),
    }
}

#[test]
fn a_connection_that_never_says_hello_is_closed_and_members_still_join() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    // The open invite lets an unknown key finish the TLS handshake.
    let code = alpha.invite();
    let invite = Invite::from_code(&code).unwrap();
    let addr: std::net::SocketAddr = alpha.mesh_addr().parse().unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let closed = runtime.block_on(async {
        let endpoint = MeshEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            random_key(),
            Arc::new(MeshTrust::new(scout::env::Env::system(None))),
            TransportConfig::default(),
        )
        .unwrap();
        let connection = endpoint
            .connect(addr, Some(invite.inviter_key))
            .await
            .expect("TLS completes while an invite is open");
        // Send nothing; the broker must end it.
        tokio::time::timeout(common::WAIT_BOUND, connection.closed())
            .await
            .expect("the broker closed the silent connection")
    });
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(close_code::HELLO_TIMEOUT),
                "{close:?}"
            );
            assert_eq!(&close.reason[..], b"HELLO_TIMEOUT");
        }
        other => panic!("expected a HELLO_TIMEOUT close, got {other}"),
    }
    wait_until("alpha to log the hello timeout", || {
        alpha.broker().stderr_line_matching("HELLO_TIMEOUT")
    });

    // Members still get in.
    join_started("beta", &alpha, &code);
}

/// The node id `setup` reports for `node`'s home (setup again changes
/// nothing).
fn setup_node_id(node: &Node) -> String {
    let run = node.run(&["--json", "setup", "--node-name", &node.name]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json()["node_id"].as_str().expect("node id").to_owned()
}

/// A broker killed and started again on its port is let back in at once.
/// Its peer still holds the connection of the first run, which the peer
/// dialed and which wins the tie between two connections, so it refused
/// every new one as a duplicate until that dead connection timed out. The
/// restarted broker's endpoint now answers the peer's packets on the old
/// connection with a stateless reset the peer accepts (its key comes from
/// the node key, not from the process), and the peer drops the dead
/// connection at once.
#[test]
fn a_restarted_peer_resets_its_old_connection_and_is_let_back_in() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let sandbox = common::Sandbox::new();
    let set_up = sandbox.run(&[
        "setup",
        "--node-name",
        "alpha",
        "--http-port",
        "0",
        "--mesh-port",
        &port,
    ]);
    assert_eq!(set_up.code, 0, "setup alpha: {}", set_up.stderr);
    let mut alpha = Node {
        sandbox,
        broker: None,
        name: "alpha".to_owned(),
    };
    alpha.start();
    let alpha_id = alpha.node_id();
    // beta's connection must be the one the tie keeps: the smaller node
    // id's dial wins, so beta's id is below alpha's.
    let mut beta = loop {
        let candidate = Node::setup("beta", &[]);
        if setup_node_id(&candidate) < alpha_id {
            break candidate;
        }
    };
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "beta join: {}", joined.stderr);
    beta.start();
    wait_until("beta to connect to alpha", || {
        (alpha.peers_in("connected") == ["beta"]).then_some(())
    });

    let mut first = alpha.broker.take().unwrap();
    assert_ne!(first.stop_with(libc::SIGKILL), 0);
    drop(first);
    alpha.start();
    wait_until("the restarted alpha to connect to beta", || {
        (alpha.peers_in("connected") == ["beta"]).then_some(())
    });
    let lost = wait_until("beta to say why the old connection ended", || {
        beta.broker()
            .stderr_line_matching("peer disconnected peer=alpha")
    });
    assert!(
        lost.contains("reset"),
        "the old connection ended by a reset, not the idle timeout: {lost}"
    );
}

/// The relays `node` sees `peer`'s node record name.
fn relays_named(node: &Node, peer: &str) -> Option<Vec<String>> {
    let peers = node.get("/v1/peers");
    let found = peers["peers"]
        .as_array()?
        .iter()
        .find(|entry| entry["name"] == peer)?;
    let relays: Vec<String> = found["relays"]
        .as_array()?
        .iter()
        .filter_map(|relay| relay.as_str().map(str::to_owned))
        .collect();
    Some(relays)
}

/// A running broker that joins another mesh names relays of that mesh
/// only: the partial views and the named relays of the old mesh are left
/// with it, so its records in the new mesh never name a broker there
/// nobody knows.
#[test]
fn a_broker_that_moves_to_another_mesh_names_relays_of_the_new_one_only() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let beta = join_started("beta", &alpha, &alpha.invite());
    wait_until("beta to name alpha as its relay", || {
        (relays_named(&alpha, "beta")? == ["alpha"]).then_some(())
    });

    let mut gamma = Node::setup("gamma", &[]);
    gamma.start();
    let moved = beta.run(&["mesh", "join", &gamma.invite()]);
    assert_eq!(moved.code, 0, "beta moves: {}", moved.stderr);
    let named = wait_until("gamma to see beta name a relay", || {
        relays_named(&gamma, "beta").filter(|relays| !relays.is_empty())
    });
    assert_eq!(named, ["gamma"], "beta names a broker of its new mesh");
}
