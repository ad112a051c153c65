//! Scout's mesh: the pure core that every broker shares.
//!
//! Code map:
//! - [`names`]: the `@definition[@node][#workspace]` grammar, its typed
//!   errors, and mention finding in free text.
//! - [`resolve`]: picks the agent instance a (partial) name means, and says why.
//! - [`lifecycle`]: flight, delivery and endpoint states, actions, policies and
//!   failure reasons, with the legal transitions.
//!
//! Architecture invariant: nothing in this crate does IO. It never imports
//! tokio, quinn, rusqlite, mdns-sd or portable-pty; time and randomness come in
//! as arguments. The `scout` binary is the IO shell around it.

pub mod lifecycle;
pub mod names;
pub mod resolve;
