//! One QUIC endpoint per broker: it listens and dials on the same UDP
//! socket, so peers behind the same NAT rules see one address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Incoming, RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::frame::{
    FRAME_BYTES_MAX, FrameError, LENGTH_PREFIX_BYTES, read_frame, read_frame_body, read_frame_len,
    write_frame,
};
use super::tls::{self, TrustPolicy};
use scout_mesh::wire::{MeshFrame, WireError, decode_frame, encode_frame};

/// Bidirectional streams a peer may have open on one connection at once:
/// each is one request in flight, so this bounds a peer's concurrent work.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;

/// Bytes one stream may carry before the reader took them: one maximal
/// frame with its length prefix, the most a request or answer needs.
pub const STREAM_RECEIVE_WINDOW_BYTES: u64 = (FRAME_BYTES_MAX + LENGTH_PREFIX_BYTES) as u64;

/// Bytes of request frames a peer can make this broker hold for one
/// connection: what quinn buffers unread is bounded by the connection's
/// receive window (this), and what the broker has taken from quinn (frames
/// being read or handled) by a budget of the same size per connection, see
/// [`RequestBudget`]. Eight MiB keep room for one maximal frame next to
/// many small ones, where 256 streams of 4 MiB each would be a gigabyte.
pub const CONNECTION_BUFFERED_BYTES_MAX: u64 = 8 * 1024 * 1024;

const _: () = assert!(CONNECTION_BUFFERED_BYTES_MAX >= STREAM_RECEIVE_WINDOW_BYTES);
const _: () = assert!(CONNECTION_BUFFERED_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(STREAM_RECEIVE_WINDOW_BYTES <= u32::MAX as u64);
const _: () = assert!(
    (STREAMS_PER_CONNECTION_MAX as u64) * STREAM_RECEIVE_WINDOW_BYTES
        > CONNECTION_BUFFERED_BYTES_MAX,
    "the per-connection bound is what limits a peer, not the stream count"
);

/// The SNI sent when dialing. Peers are identified by key, not by name, so
/// this is a constant the verifier ignores.
const SERVER_NAME: &str = "scout-mesh";

/// Timeouts of the transport.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// A connection with no traffic for this long is dead.
    pub idle_timeout: Duration,
    /// Keep-alive pings from the dialing end, well below the idle timeout
    /// so one lost ping does not kill a connection.
    pub keep_alive: Duration,
    /// The QUIC and TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// One request's answer must arrive within this.
    pub request_timeout: Duration,
    /// Seeds quinn's own randomness (connection ids, packet-number skips,
    /// transport-parameter grease), so a simulated run sends the same
    /// datagrams every time; `None` uses the operating system's.
    pub rng_seed: Option<[u8; 32]>,
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            idle_timeout: Duration::from_secs(15),
            keep_alive: Duration::from_secs(4),
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            rng_seed: None,
        }
    }
}

/// The broker's key as the transport needs it.
#[derive(Clone)]
pub struct NodeKey {
    /// The Ed25519 private key in PKCS#8 DER.
    pub pkcs8_der: Vec<u8>,
    /// The raw public key.
    pub public_key: [u8; 32],
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field(
                "public_key",
                &scout_mesh::wire::NodeId::of_public_key(&self.public_key),
            )
            .finish_non_exhaustive()
    }
}

/// Why an endpoint could not be made or a connection not established.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound or wrapped.
    #[error("cannot bind the mesh socket {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built from the key.
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
    /// Dialing failed before the handshake (bad address, endpoint closed).
    #[error("cannot dial {addr}: {detail}")]
    Dial {
        /// The peer address.
        addr: SocketAddr,
        /// Why.
        detail: String,
    },
    /// The handshake failed: refused key, wrong protocol, unreachable peer.
    #[error("handshake with {addr} failed: {detail}")]
    Handshake {
        /// The peer address.
        addr: SocketAddr,
        /// Why (contains `UNKNOWN_PEER` / `REVOKED_PEER` when a key was refused).
        detail: String,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {addr} timed out")]
    Timeout {
        /// The peer address.
        addr: SocketAddr,
    },
}

impl TransportError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            TransportError::Bind { .. } => "BIND_FAILED",
            TransportError::Tls(_) => "TLS_CONFIG",
            TransportError::Dial { .. } => "DIAL_FAILED",
            TransportError::Handshake { detail, .. } if detail.contains("REVOKED_PEER") => {
                "REVOKED_PEER"
            }
            TransportError::Handshake { detail, .. } if detail.contains("UNKNOWN_PEER") => {
                "UNKNOWN_PEER"
            }
            TransportError::Handshake { .. } => "HANDSHAKE_FAILED",
            TransportError::Timeout { .. } => "PEER_UNREACHABLE",
        }
    }
}

/// Why a request got no good answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The stream could not be opened (connection gone).
    #[error("cannot open a stream: {0}")]
    Open(String),
    /// Framing failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The answer did not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl RequestError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Open(_) => "PEER_UNREACHABLE",
            RequestError::Frame(err) => err.code(),
            RequestError::Wire(err) => err.code(),
            RequestError::Timeout(_) => "TIMEOUT",
        }
    }
}

/// A broker's QUIC endpoint.
#[derive(Debug, Clone)]
pub struct MeshEndpoint {
    endpoint: quinn::Endpoint,
    key: Arc<NodeKey>,
    trust: Arc<dyn TrustPolicy>,
    config: TransportConfig,
    transport: Arc<quinn::TransportConfig>,
}

impl MeshEndpoint {
    /// Binds a real UDP socket on `addr` (port 0 picks a free one).
    pub fn bind(
        addr: SocketAddr,
        key: NodeKey,
        trust: Arc<dyn TrustPolicy>,
        config: TransportConfig,
    ) -> Result<MeshEndpoint, TransportError> {
        let bind_error = |source| TransportError::Bind {
            addr: addr.to_string(),
            source,
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = runtime.wrap_udp_socket(socket).map_err(bind_error)?;
        MeshEndpoint::with_socket(socket, runtime, key, trust, config)
    }

    /// Runs on any UDP socket implementation (netsim passes a simulated one).
    pub fn with_socket(
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        runtime: Arc<dyn quinn::Runtime>,
        key: NodeKey,
        trust: Arc<dyn TrustPolicy>,
        config: TransportConfig,
    ) -> Result<MeshEndpoint, TransportError> {
        let local = socket
            .local_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_default();
        let transport = Arc::new(transport_config(&config, Side::Dialer));
        let rustls_server = tls::server_config(&key.pkcs8_der, &key.public_key, trust.clone())?;
        let quic_server = QuicServerConfig::try_from(rustls_server).map_err(|err| {
            TransportError::Tls(tls::TlsConfigError::Config(rustls::Error::General(
                err.to_string(),
            )))
        })?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        server.transport_config(Arc::new(transport_config(&config, Side::Acceptor)));
        let (reset_key, cid_key) = ResetKey::of(&key);
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        endpoint_config
            .cid_generator(move || Box::new(KeyedConnectionIds(cid_key.clone())))
            .rng_seed(config.rng_seed);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| TransportError::Bind {
            addr: local,
            source,
        })?;
        Ok(MeshEndpoint {
            endpoint,
            key: Arc::new(key),
            trust,
            config,
            transport,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The transport timeouts.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// Dials `addr`. The server's key must be a member, or equal `pinned`
    /// (the inviter's key when joining).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        pinned: Option<[u8; 32]>,
    ) -> Result<Connection, TransportError> {
        let rustls_client = tls::client_config(
            &self.key.pkcs8_der,
            &self.key.public_key,
            self.trust.clone(),
            pinned,
        )?;
        let quic_client = QuicClientConfig::try_from(rustls_client).map_err(|err| {
            TransportError::Tls(tls::TlsConfigError::Config(rustls::Error::General(
                err.to_string(),
            )))
        })?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic_client));
        client.transport_config(self.transport.clone());
        let connecting = self
            .endpoint
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|err| TransportError::Dial {
                addr,
                detail: err.to_string(),
            })?;
        match tokio::time::timeout(self.config.handshake_timeout, connecting).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(err)) => Err(TransportError::Handshake {
                addr,
                detail: err.to_string(),
            }),
            Err(_) => Err(TransportError::Timeout { addr }),
        }
    }

    /// The next incoming connection attempt; `None` once the endpoint closed.
    pub async fn accept(&self) -> Option<Incoming> {
        self.endpoint.accept().await
    }

    /// Completes an incoming handshake within the handshake timeout.
    pub async fn handshake(&self, incoming: Incoming) -> Result<Connection, TransportError> {
        let addr = incoming.remote_address();
        let connecting = incoming.accept().map_err(|err| TransportError::Handshake {
            addr,
            detail: err.to_string(),
        })?;
        match tokio::time::timeout(self.config.handshake_timeout, connecting).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(err)) => Err(TransportError::Handshake {
                addr,
                detail: err.to_string(),
            }),
            Err(_) => Err(TransportError::Timeout { addr }),
        }
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(super::close_code::SHUTDOWN), b"shutdown");
    }

    /// Waits (bounded by the caller) until every connection is closed.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// Which end of a connection a QUIC transport configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Dialer,
    Acceptor,
}

/// The key of the stateless resets this node's endpoint sends, derived
/// from the node key so it outlives the process: a broker that restarted
/// answers a peer's packets on a connection of its previous run with a
/// reset the peer accepts (RFC 9000, section 10.3), and the peer drops
/// that dead connection at its next keep-alive instead of after the idle
/// timeout, refusing the restarted broker's new connection meanwhile as a
/// duplicate. Nobody without the node key can forge a reset.
struct ResetKey(hmac::Hmac<sha2::Sha256>);

type Hmac = hmac::Hmac<sha2::Sha256>;

impl ResetKey {
    /// The reset key of `key`, and the key of its connection ids.
    fn of(key: &NodeKey) -> (ResetKey, Hmac) {
        use hmac::Mac as _;
        let kdf =
            hkdf::Hkdf::<sha2::Sha256>::new(Some(b"scout-mesh stateless reset"), &key.pkcs8_der);
        let mut reset = [0u8; 32];
        let mut cid = [0u8; 32];
        kdf.expand(b"reset v1", &mut reset)
            .and_then(|()| kdf.expand(b"connection ids v1", &mut cid))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        (
            ResetKey(Hmac::new_from_slice(&reset).expect("HMAC takes a key of any length")),
            Hmac::new_from_slice(&cid).expect("HMAC takes a key of any length"),
        )
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        use hmac::Mac as _;
        let mut mac = self.0.clone();
        mac.update(data);
        let tag = mac.finalize().into_bytes();
        // quinn asks for `signature_len` bytes and keeps the first 16.
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        use hmac::Mac as _;
        let mut mac = self.0.clone();
        mac.update(data);
        mac.verify_slice(signature)
            .map_err(|_| quinn::crypto::CryptoError)
    }
}

/// Random bytes in a connection id, and the bytes of its tag after them.
const CID_RANDOM_LEN: usize = 8;
const CID_TAG_LEN: usize = 4;

/// Connection ids of 64 random bits and a 32-bit tag, an HMAC of them
/// under a key derived from the node key. A restarted endpoint recognises
/// the ids of its previous run (an endpoint drops a packet with an id it
/// does not take for its own without answering, so no reset would go
/// out), and the random part is too large for anyone to collect the
/// reset tokens of every id (a fixed reset key makes each id's token
/// fixed too).
struct KeyedConnectionIds(Hmac);

impl KeyedConnectionIds {
    fn tag(&self, random: &[u8]) -> [u8; CID_TAG_LEN] {
        use hmac::Mac as _;
        let mut mac = self.0.clone();
        mac.update(random);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; CID_TAG_LEN];
        tag.copy_from_slice(&full[..CID_TAG_LEN]);
        tag
    }
}

impl quinn::ConnectionIdGenerator for KeyedConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use rand::RngCore as _;
        let mut bytes = [0u8; CID_RANDOM_LEN + CID_TAG_LEN];
        rand::thread_rng().fill_bytes(&mut bytes[..CID_RANDOM_LEN]);
        let tag = self.tag(&bytes[..CID_RANDOM_LEN]);
        bytes[CID_RANDOM_LEN..].copy_from_slice(&tag);
        quinn::ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &quinn::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        if cid.len() == CID_RANDOM_LEN + CID_TAG_LEN
            && self.tag(&cid[..CID_RANDOM_LEN]) == cid[CID_RANDOM_LEN..]
        {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_RANDOM_LEN + CID_TAG_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The QUIC transport of one end. Only the dialer sends keep-alive pings:
/// the acceptor's acknowledgements of them keep the dialer's idle timer
/// fresh, and the pings keep the acceptor's, so one pinging end is enough
/// to keep a live connection open and to find a dead one within the idle
/// timeout on both ends. Pings from both ends doubled what an idle mesh
/// sends per connection (BENCHMARKS.md, "A thousand brokers").
fn transport_config(config: &TransportConfig, side: Side) -> quinn::TransportConfig {
    let keep_alive = (side == Side::Dialer).then_some(config.keep_alive);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX))
        // The mesh never opens unidirectional streams.
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW_BYTES as u32))
        .receive_window(VarInt::from_u32(CONNECTION_BUFFERED_BYTES_MAX as u32))
        .keep_alive_interval(keep_alive)
        .max_idle_timeout(quinn::IdleTimeout::try_from(config.idle_timeout).ok());
    transport
}

/// Sends `frame` on a new stream and waits for the one answer.
pub async fn request(
    connection: &Connection,
    frame: &MeshFrame,
    timeout: Duration,
) -> Result<MeshFrame, RequestError> {
    let exchange = async {
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|err| RequestError::Open(err.to_string()))?;
        write_frame(&mut send, &encode_frame(frame)).await?;
        // Finishing tells the peer the request is complete; an error here
        // means the stream is already gone, which reading reports.
        let _ = send.finish();
        let body = read_frame(&mut recv).await?;
        Ok(decode_frame(&body)?)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(RequestError::Timeout(timeout)),
    }
}

/// Reads the request frame of an accepted stream.
pub async fn read_request(recv: &mut RecvStream) -> Result<MeshFrame, RequestError> {
    let body = read_frame(recv).await?;
    Ok(decode_frame(&body)?)
}

/// The bytes of request frames one connection may have taken from quinn
/// and not yet answered: each frame's length is reserved before its body
/// is read, so a peer opening many streams waits (and quinn's flow control
/// holds it back) instead of making this broker buffer them all.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    bytes: Arc<Semaphore>,
}

impl Default for RequestBudget {
    fn default() -> RequestBudget {
        RequestBudget {
            bytes: Arc::new(Semaphore::new(CONNECTION_BUFFERED_BYTES_MAX as usize)),
        }
    }
}

/// A request frame with its share of the connection's [`RequestBudget`],
/// given back when dropped (after the answer is written).
#[derive(Debug)]
pub struct BudgetedRequest {
    /// The request.
    pub frame: MeshFrame,
    /// Its reservation in the budget; drop it once the answer is written.
    pub reserved: OwnedSemaphorePermit,
}

/// Reads the request frame of an accepted stream within the connection's
/// budget.
pub async fn read_request_within(
    recv: &mut RecvStream,
    budget: &RequestBudget,
) -> Result<BudgetedRequest, RequestError> {
    let len = read_frame_len(recv).await?;
    // At least one permit, so an empty frame also waits its turn; the
    // length was checked against FRAME_BYTES_MAX, which fits the budget.
    let permits = u32::try_from(len.max(1)).unwrap_or(u32::MAX);
    let reserved = budget
        .bytes
        .clone()
        .acquire_many_owned(permits)
        .await
        .map_err(|_| RequestError::Open("the connection's budget is closed".into()))?;
    let body = read_frame_body(recv, len).await?;
    Ok(BudgetedRequest {
        frame: decode_frame(&body)?,
        reserved,
    })
}

/// Writes the answer of a stream and finishes it.
pub async fn respond(send: &mut SendStream, frame: &MeshFrame) -> Result<(), RequestError> {
    write_frame(send, &encode_frame(frame)).await?;
    let _ = send.finish();
    Ok(())
}

/// The peer's public key of an established connection.
pub fn peer_key(connection: &Connection) -> Option<[u8; 32]> {
    tls::peer_key(connection)
}

#[cfg(test)]
mod tests {
    use quinn::ConnectionIdGenerator as _;

    use super::*;

    fn node_key(seed: u8) -> NodeKey {
        NodeKey {
            pkcs8_der: vec![seed; 48],
            public_key: [seed; 32],
        }
    }

    #[test]
    fn connection_ids_outlive_the_process_and_only_their_node_takes_them() {
        let (_, key) = ResetKey::of(&node_key(1));
        let mut first_run = KeyedConnectionIds(key);
        let (_, key) = ResetKey::of(&node_key(1));
        let restarted = KeyedConnectionIds(key);
        let (_, key) = ResetKey::of(&node_key(2));
        let other = KeyedConnectionIds(key);
        for _ in 0..100 {
            let cid = first_run.generate_cid();
            assert_eq!(cid.len(), restarted.cid_len());
            assert!(restarted.validate(&cid).is_ok());
            assert!(other.validate(&cid).is_err());
        }
        let a = first_run.generate_cid();
        let b = first_run.generate_cid();
        assert_ne!(a, b, "random ids");
        assert!(
            restarted
                .validate(&quinn::ConnectionId::new(&[0; 12]))
                .is_err()
        );
        assert!(
            restarted
                .validate(&quinn::ConnectionId::new(&a[..8]))
                .is_err()
        );
    }

    #[test]
    fn reset_tokens_outlive_the_process_and_differ_by_node() {
        use quinn::crypto::HmacKey as _;
        let sign = |key: &ResetKey| {
            let mut out = [0u8; 32];
            key.sign(b"a connection id", &mut out);
            out
        };
        let (first_run, _) = ResetKey::of(&node_key(1));
        let (restarted, _) = ResetKey::of(&node_key(1));
        let (other, _) = ResetKey::of(&node_key(2));
        assert_eq!(sign(&first_run), sign(&restarted));
        assert_ne!(sign(&first_run), sign(&other));
        assert!(
            restarted
                .verify(b"a connection id", &sign(&first_run))
                .is_ok()
        );
        assert!(other.verify(b"a connection id", &sign(&first_run)).is_err());
    }
}
