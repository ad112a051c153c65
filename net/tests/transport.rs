//! The transport over real QUIC on loopback: mutual key checks in the
//! handshake, request/response frames, and malformed input answered with an
//! error while the endpoint keeps serving.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use scout_mesh::wire::{MeshFrame, PROTOCOL_VERSION, encode_frame};
use scout_net::transport::endpoint::{read_request, request, respond};
use scout_net::transport::{MeshEndpoint, NodeKey, TransportConfig, Trust, TrustPolicy};

#[derive(Debug, Default)]
struct Keys {
    members: Mutex<HashSet<[u8; 32]>>,
    revoked: Mutex<HashSet<[u8; 32]>>,
}

impl TrustPolicy for Keys {
    fn trust(&self, key: &[u8; 32]) -> Trust {
        if self.revoked.lock().unwrap().contains(key) {
            Trust::Revoked
        } else if self.members.lock().unwrap().contains(key) {
            Trust::Member
        } else {
            Trust::Unknown
        }
    }

    fn join_window_open(&self) -> bool {
        false
    }
}

fn node_key() -> NodeKey {
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    NodeKey {
        pkcs8_der: signing.to_pkcs8_der().unwrap().as_bytes().to_vec(),
        public_key: signing.verifying_key().to_bytes(),
    }
}

fn endpoint(key: NodeKey, trust: Arc<Keys>) -> MeshEndpoint {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    MeshEndpoint::bind(addr, key, trust, TransportConfig::default()).unwrap()
}

/// Serves every stream of every connection: answers Ping with Pong and
/// anything undecodable with an error frame.
fn serve(endpoint: MeshEndpoint) {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let Ok(connection) = endpoint.handshake(incoming).await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        let answer = match read_request(&mut recv).await {
                            Ok(MeshFrame::Ping { nonce }) => MeshFrame::Pong { nonce },
                            Ok(other) => MeshFrame::error("UNEXPECTED", other.name()),
                            Err(err) => MeshFrame::error(err.code(), err.to_string()),
                        };
                        let _ = respond(&mut send, &answer).await;
                    });
                }
            });
        }
    });
}

struct Pair {
    server: MeshEndpoint,
    client: MeshEndpoint,
    client_key: NodeKey,
    server_trust: Arc<Keys>,
}

fn pair() -> Pair {
    let (server, client, client_key, server_trust) = members(TransportConfig::default());
    serve(server.clone());
    Pair {
        server,
        client,
        client_key,
        server_trust,
    }
}

/// Two endpoints on `config` that know each other's keys: the server, the
/// client, the client's key and the server's trust.
fn members(config: TransportConfig) -> (MeshEndpoint, MeshEndpoint, NodeKey, Arc<Keys>) {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server_key = node_key();
    let client_key = node_key();
    let server_trust = Arc::new(Keys::default());
    let client_trust = Arc::new(Keys::default());
    server_trust
        .members
        .lock()
        .unwrap()
        .insert(client_key.public_key);
    client_trust
        .members
        .lock()
        .unwrap()
        .insert(server_key.public_key);
    let server =
        MeshEndpoint::bind(addr, server_key, server_trust.clone(), config.clone()).unwrap();
    let client = MeshEndpoint::bind(addr, client_key.clone(), client_trust, config).unwrap();
    (server, client, client_key, server_trust)
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn members_exchange_requests() {
    let pair = pair();
    let addr = pair.server.local_addr().unwrap();
    let connection = pair.client.connect(addr, None).await.unwrap();
    let answer = request(&connection, &MeshFrame::Ping { nonce: 7 }, WAIT)
        .await
        .unwrap();
    assert_eq!(answer, MeshFrame::Pong { nonce: 7 });
}

#[tokio::test]
async fn a_stranger_is_refused_in_the_handshake_and_the_server_keeps_serving() {
    let pair = pair();
    let addr = pair.server.local_addr().unwrap();
    let stranger_trust = Arc::new(Keys::default());
    let stranger = endpoint(node_key(), stranger_trust);
    // The stranger pins the server's key, so only the server's check can refuse.
    let server_key = {
        let connection = pair.client.connect(addr, None).await.unwrap();
        scout_net::transport::endpoint::peer_key(&connection).unwrap()
    };
    let refused = match stranger.connect(addr, Some(server_key)).await {
        Ok(connection) => {
            // With TLS 1.3 the client may finish before the server's verdict
            // arrives; the first stream then fails.
            request(&connection, &MeshFrame::Ping { nonce: 1 }, WAIT)
                .await
                .is_err()
        }
        Err(_) => true,
    };
    assert!(refused, "the stranger got an answer");

    let connection = pair.client.connect(addr, None).await.unwrap();
    let answer = request(&connection, &MeshFrame::Ping { nonce: 2 }, WAIT)
        .await
        .unwrap();
    assert_eq!(answer, MeshFrame::Pong { nonce: 2 });
}

#[tokio::test]
async fn a_revoked_key_is_refused() {
    let pair = pair();
    let addr = pair.server.local_addr().unwrap();
    pair.server_trust
        .revoked
        .lock()
        .unwrap()
        .insert(pair.client_key.public_key);
    let outcome = match pair.client.connect(addr, None).await {
        Ok(connection) => request(&connection, &MeshFrame::Ping { nonce: 1 }, WAIT)
            .await
            .map(|_| ())
            .map_err(|err| err.to_string()),
        Err(err) => Err(err.to_string()),
    };
    assert!(outcome.is_err());
}

#[tokio::test]
async fn the_client_refuses_a_server_whose_key_it_does_not_know() {
    let pair = pair();
    let lonely = endpoint(node_key(), Arc::new(Keys::default()));
    let err = lonely
        .connect(pair.server.local_addr().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "UNKNOWN_PEER", "{err}");
}

#[tokio::test]
async fn a_pinned_key_is_accepted_until_it_is_revoked() {
    let server_key = node_key();
    let client_key = node_key();
    let server_trust = Arc::new(Keys::default());
    server_trust
        .members
        .lock()
        .unwrap()
        .insert(client_key.public_key);
    let server = endpoint(server_key.clone(), server_trust);
    serve(server.clone());
    let addr = server.local_addr().unwrap();
    // The client knows nothing of the server but its pinned key (a joiner
    // dialing its inviter).
    let client_trust = Arc::new(Keys::default());
    let client = endpoint(client_key, client_trust.clone());
    let pinned = Some(server_key.public_key);
    let connection = client.connect(addr, pinned).await.unwrap();
    connection.close(0u32.into(), b"done");
    // Revoked: the pin no longer counts.
    client_trust
        .revoked
        .lock()
        .unwrap()
        .insert(server_key.public_key);
    let err = client.connect(addr, pinned).await.unwrap_err();
    assert_eq!(err.code(), "REVOKED_PEER", "{err}");
}

/// Writes raw bytes on a fresh stream and reads the answer frame.
async fn raw_exchange(connection: &quinn::Connection, bytes: &[u8]) -> MeshFrame {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    read_request(&mut recv).await.unwrap()
}

fn error_code(frame: &MeshFrame) -> &str {
    match frame {
        MeshFrame::Error(error) => error.code.as_str(),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_keeps_working() {
    let pair = pair();
    let connection = pair
        .client
        .connect(pair.server.local_addr().unwrap(), None)
        .await
        .unwrap();

    let mut garbage = 5u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        error_code(&raw_exchange(&connection, &garbage).await),
        "MALFORMED_FRAME"
    );

    let oversized = u32::MAX.to_be_bytes();
    assert_eq!(
        error_code(&raw_exchange(&connection, &oversized).await),
        "FRAME_TOO_LARGE"
    );

    let mut body = encode_frame(&MeshFrame::Ping { nonce: 1 });
    body[0] = (PROTOCOL_VERSION + 1) as u8;
    let mut wrong_version = (body.len() as u32).to_be_bytes().to_vec();
    wrong_version.extend_from_slice(&body);
    assert_eq!(
        error_code(&raw_exchange(&connection, &wrong_version).await),
        "UNSUPPORTED_VERSION"
    );

    // An unknown message kind: a variant index past the last one.
    let unknown_kind = [0, 0, 0, 2, PROTOCOL_VERSION as u8, 200];
    assert_eq!(
        error_code(&raw_exchange(&connection, &unknown_kind).await),
        "MALFORMED_FRAME"
    );

    let truncated = [0, 0, 0, 9, 1];
    assert_eq!(
        error_code(&raw_exchange(&connection, &truncated).await),
        "MALFORMED_FRAME"
    );

    let answer = request(&connection, &MeshFrame::Ping { nonce: 3 }, WAIT)
        .await
        .unwrap();
    assert_eq!(answer, MeshFrame::Pong { nonce: 3 });
}

/// Only the dialing end sends keep-alive pings, and that is enough: an
/// idle connection outlives several idle timeouts on both ends (the
/// acceptor's acknowledgements keep the dialer's timer fresh, the pings
/// the acceptor's), and the acceptor sends next to no pings of its own.
#[tokio::test]
async fn the_dialer_alone_keeps_an_idle_connection_open_on_both_ends() {
    let config = TransportConfig {
        idle_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_millis(250),
        ..TransportConfig::default()
    };
    let (server, client, _, _) = members(config);
    let server_addr = server.local_addr().unwrap();
    let accepted = tokio::spawn({
        let server = server.clone();
        async move {
            let incoming = server.accept().await.unwrap();
            server.handshake(incoming).await.unwrap()
        }
    });
    let dialed = client.connect(server_addr, None).await.unwrap();
    let accepted = accepted.await.unwrap();
    // Three idle timeouts without a request.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        dialed.close_reason().is_none(),
        "{:?}",
        dialed.close_reason()
    );
    assert!(
        accepted.close_reason().is_none(),
        "{:?}",
        accepted.close_reason()
    );
    // The acceptor's end still answers: it did not time out and forget.
    let (mut send, mut recv) = accepted.open_bi().await.unwrap();
    send.write_all(b"still here").await.unwrap();
    send.finish().unwrap();
    let (mut their_send, mut their_recv) = dialed.accept_bi().await.unwrap();
    let got = their_recv.read_to_end(64).await.unwrap();
    assert_eq!(got, b"still here");
    their_send.finish().unwrap();
    let _ = recv.read_to_end(64).await;
    let dialer_pings = dialed.stats().frame_tx.ping;
    let acceptor_pings = accepted.stats().frame_tx.ping;
    assert!(dialer_pings >= 4, "the dialer sent {dialer_pings} pings");
    assert!(
        acceptor_pings * 2 < dialer_pings,
        "the acceptor sent {acceptor_pings} pings, the dialer {dialer_pings}"
    );
}
