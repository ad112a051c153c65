//! Scout's mesh: the pure core that every broker shares.
//!
//! Code map:
//! - [`names`]: the `@definition[@node][#workspace]` grammar, its typed
//!   errors, and mention finding in free text.
//! - [`resolve`]: picks the agent instance a (partial) name means, and says why.
//! - [`lifecycle`]: flight, delivery and endpoint states, actions, policies and
//!   failure reasons, with the legal transitions.
//! - [`output`]: [`output::FlightOutput`], the one bounded type for a
//!   flight's output, with its one limit and its one truncation rule.
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
//! - [`relay`]: requests passed through a third member when a direct dial
//!   fails, signed end to end by their sender and bound to their target.
//! - [`membership`]: one-time invites, invite codes and the join decision.
//! - [`views`]: partial views of the mesh ([`views::Views`], HyParView's
//!   active and passive views), so a broker keeps a bounded number of
//!   peers however large the mesh; admission-gated.
//! - `rng`: the one small seeded PRNG of the core.
//! - [`mention`]: the causal chain of a mention and the depth and cycle
//!   rule that refuses loops (`MENTION_LOOP`).
//! - [`approval`]: the rules of approvals: one decision, the deadline
//!   denies, bounded fields.
//! - [`usage`]: what a flight used ([`usage::Usage`]: tokens and cost) and
//!   the stable code of a failed turn ([`usage::FailureCode`]), bounded.
//!
//! Architecture invariant: nothing in this crate does IO. Its manifest has
//! no tokio, quinn, rustls, rusqlite or mdns-sd (`cargo tree -p scout-mesh
//! -e normal` shows it, and `tests/tidy.rs` checks both the manifest and the
//! sources); time and randomness come in as arguments. The IO shell around
//! it, the QUIC transport and discovery, is the `scout-net` crate; the
//! `scout` binary wires the core, the shell and the store together.

pub mod approval;
pub mod hlc;
pub mod lifecycle;
pub mod membership;
pub mod mention;
pub mod names;
pub mod output;
pub mod pairing;
pub mod registry;
pub mod relay;
pub mod resolve;
mod rng;
pub mod routing;
pub mod sync;
pub mod usage;
pub mod views;
pub mod wire;
