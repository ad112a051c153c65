//! Scout's mesh IO shell: what moves bytes and finds peers around the pure
//! core in `scout-mesh`.
//!
//! Code map:
//! - [`transport`]: QUIC endpoint, TLS on raw Ed25519 keys checked against
//!   the broker's trust policy in the handshake, framing.
//! - [`discovery`]: mDNS adverts and browsing, tailscaled's status and
//!   whois; where peers might be, never who may join.
//!
//! Nothing here decides: who may join, what a frame means and what to do
//! with it are the core's and the broker's. This crate may depend on the
//! core; the core never depends on it.

pub mod discovery;
pub mod transport;
