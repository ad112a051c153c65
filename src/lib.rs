//! The `scout` broker as a library, so the binary, the end-to-end tests and
//! `netsim` all run the same code.
//!
//! Code map:
//! - [`cli`]: the `scout` command line (one file per command family).
//! - [`daemon`]: the running broker; wires store, config, agents and HTTP,
//!   the mesh (`daemon::mesh`), discovery (`daemon::discovery`) and routing
//!   of invocations and work orders (`daemon::routing`).
//! - [`api`]: the HTTP API's request and response bodies, shared by `http`
//!   (which returns them) and `cli` (which reads them).
//! - [`http`]: the local HTTP surface (axum), token-protected but `/health`.
//! - [`store`]: the durable SQLite store, its migrations, the group-commit
//!   writer, the flight and delivery state machines as enforced on disk.
//! - [`config`]: settings, manual agents, project manifests, agent discovery.
//! - [`env`]: time, randomness and ids, injected into every part of a
//!   broker (real clocks in production, simulated ones in netsim).
//! - [`home`]: where a broker's files live.
//! - [`identity`]: the node key, node id and API token.
//! - [`logging`]: stderr logs, and the broker's rotated log file.
//! - [`mcp`]: `scout mcp`, the Model Context Protocol server agents use to
//!   mention each other through the broker.
//! - [`service`]: the broker as a systemd user unit or launchd agent.
//! - [`holder`]: holder processes that keep agents' programs running
//!   across broker restarts, and their protocol.
//! - [`pty`]: the PTY runtime: agent CLIs on pseudo-terminals, the session
//!   manager, screen models and turns.
//! - [`git`]: the one way the broker runs `git`: no shell, no prompt,
//!   bounded in time and output.
//! - [`checkpoint`]: git checkpoints of an agent's worktree before risky
//!   work (made, diffed and restored without touching index, HEAD or stash).
//! - [`adapter`]: what differs between harnesses (claude, codex, gemini,
//!   command, acp) behind one trait, and their preflight.
//!
//! Architecture invariant: the pure decisions (name grammar, resolution
//! policy, state transitions) live in `scout-mesh`; this crate does the IO
//! around them and never re-implements them.

pub mod adapter;
pub mod api;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod env;
pub mod git;
pub mod holder;
pub mod home;
pub mod http;
pub mod identity;
pub mod logging;
pub mod mcp;
pub mod pty;
pub mod service;
pub mod store;
pub mod worktree;
