//! The mesh transport: QUIC (quinn) with mutual TLS on raw Ed25519 keys,
//! length-prefixed frames, one bidirectional stream per request.
//!
//! Code map:
//! - [`tls`]: rustls configs and the verifiers that check peer keys against
//!   the broker's [`tls::TrustPolicy`] inside the handshake.
//! - [`frame`]: reading and writing length-prefixed frames.
//! - [`endpoint`]: [`endpoint::MeshEndpoint`] (bind a real UDP socket, or
//!   any [`quinn::AsyncUdpSocket`] such as netsim's), dial, accept, and the
//!   request/response helpers.
//!
//! This module is an IO shell: it moves bytes and checks keys. Who to dial,
//! what a hello must contain and what to do with a sync message are decided
//! by the broker around it.

pub mod endpoint;
pub mod frame;
pub mod tls;

pub use endpoint::{MeshEndpoint, NodeKey, RequestError, TransportConfig, TransportError};
pub use tls::{Trust, TrustPolicy};

/// QUIC application close codes the mesh uses.
pub mod close_code {
    /// The broker is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// Another connection to the same peer won the simultaneous-dial tie.
    pub const DUPLICATE: u32 = 1;
    /// The peer is not a member (after a join-window handshake).
    pub const UNKNOWN_PEER: u32 = 2;
    /// The peer was revoked.
    pub const REVOKED_PEER: u32 = 3;
    /// The peer broke the protocol (bad hello, wrong mesh, bad frame).
    pub const PROTOCOL: u32 = 4;
    /// The peer did not complete the hello in time (`HELLO_TIMEOUT`).
    pub const HELLO_TIMEOUT: u32 = 5;
    /// Nothing uses the connection any more (outside the partial view,
    /// idle); either side dials again when it needs it.
    pub const IDLE: u32 = 6;
    /// The peer dialed again and did not answer a ping on this connection:
    /// it restarted (or moved), and this connection is dead.
    pub const STALE: u32 = 7;
}
