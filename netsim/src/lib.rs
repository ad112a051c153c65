//! netsim: Scout's brokers over a simulated network.
//!
//! This crate sits above the broker (`scout`) and the mesh core
//! (`scout-mesh`) and depends on them, never the other way round: the broker
//! exposes seams (the UDP socket, the clock, the random source, the data
//! directory) and netsim fills them with simulated ones to run partitions,
//! crashes and restarts reproducibly from a seed.
//!
//! Architecture invariant: nothing in `scout` or `scout-mesh` imports this
//! crate; the simulated network is a test and operations tool, not a
//! dependency of production code.
