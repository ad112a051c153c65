//! netsim: Scout's brokers over a simulated network.
//!
//! This crate sits above the broker (`scout`) and the mesh core
//! (`scout-mesh`) and depends on them, never the other way round: the broker
//! exposes seams (the UDP socket, the environment of clocks, randomness
//! and ids, the store's inline mode, the data directory) and netsim fills
//! them with simulated ones to run partitions, crashes and restarts reproducibly from a seed.
//!
//! Code map:
//! - [`net`]: the simulated network (hosts, directed link rules,
//!   partitions, holds, crashes) and [`net::SimSocket`], the
//!   `quinn::AsyncUdpSocket` the real QUIC endpoint runs on.
//! - [`clock`]: the simulated wall clock (epoch + paused tokio time + skew).
//! - [`seeds`]: one random stream per component, from the run seed.
//! - [`node`]: one host's home and its real broker: start, crash, restart.
//! - [`agent`]: the in-process agents behind the broker's executor seam,
//!   and the log of their executions.
//! - [`scenario`]: the TOML scenario format and its validation into a plan.
//! - [`run`]: plays a plan on a paused current-thread runtime and records
//!   the history.
//! - [`history`]: operations, faults and samples as recorded.
//! - [`check`]: the invariants, with counterexamples.
//! - [`report`]: the summary and `results.json`; [`plot`]: the SVG.
//! - [`swarm`]: random fault schedules from a seed, written as scenarios.
//! - [`pure`]: the sync core alone (no QUIC, no store) at 1,000 nodes.
//! - [`pure_routing`]: the routing core and the sync core together under a
//!   seeded fault schedule (no QUIC, no store), with the exactly-once
//!   checks; [`pure_swarm`] runs many such schedules on every core.
//! - [`panics`]: panics seen during a run.
//!
//! Architecture invariant: nothing in `scout` or `scout-mesh` imports this
//! crate; the simulated network is a test and operations tool, not a
//! dependency of production code.

pub mod agent;
pub mod check;
pub mod clock;
pub mod history;
pub mod net;
pub mod node;
pub mod panics;
pub mod plot;
pub mod pure;
pub mod pure_routing;
pub mod pure_swarm;
pub mod report;
pub mod run;
pub mod scenario;
pub mod seeds;
pub mod swarm;
pub mod timeline;
