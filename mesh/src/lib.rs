//! Scout's mesh: the pure core that every broker shares.
//!
//! Code map:
//! - [`names`]: the `@definition[@node][#workspace]` grammar, its typed
//!   errors, and mention finding in free text.
//! - [`resolve`]: picks the agent instance a (partial) name means, and says why.
//! - [`lifecycle`]: flight, delivery and endpoint states, actions, policies and
//!   failure reasons, with the legal transitions.
//! - [`wire`]: every type that crosses the network for registry sync (node
//!   ids, records, [`wire::SyncMessage`]), the protocol version and ALPN, and
//!   the one encoding with its typed decode errors.
//! - [`hlc`]: the hybrid logical clock that timestamps records, refusing
//!   remote clocks too far ahead.
//! - [`registry`]: the replicated record set: which version wins, record
//!   validation (`INVALID_RECORD`), and the derived views (members, nodes,
//!   instances, definitions).
//! - [`sync`]: the sync state machine ([`sync::Replica`]): pushes, digests
//!   and chunked deltas, version vectors, membership gating, tombstone
//!   collection; inputs in through `handle_*`, outputs out through `poll_*`.
//! - [`routing`]: the origin's delivery plan: send, retry, defer, query,
//!   fail, reroute; the rules that keep execution exactly-once.
//! - [`membership`]: one-time invites, invite codes and the join decision.
//! - [`transport`] (IO shell): QUIC endpoint, TLS on raw Ed25519 keys checked
//!   against the broker's trust policy in the handshake, framing.
//! - [`discovery`] (IO shell): mDNS adverts and browsing, tailscaled's
//!   status and whois; where peers might be, never who may join.
//!
//! Architecture invariant: outside `transport/` (and `discovery/`), nothing
//! in this crate does IO. The core never imports tokio, quinn, rusqlite,
//! mdns-sd or portable-pty; time and randomness come in as arguments
//! (`tests/tidy.rs` checks this). The `scout` binary wires the core, the
//! transport and the store together.

pub mod discovery;
pub mod hlc;
pub mod lifecycle;
pub mod membership;
pub mod names;
pub mod registry;
pub mod resolve;
pub mod routing;
pub mod sync;
pub mod transport;
pub mod wire;
