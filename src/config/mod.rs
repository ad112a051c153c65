//! The files people edit: `settings.json`, `relay-agents.json` and project
//! manifests, and the discovery of this machine's agents from them.
//!
//! Code map:
//! - [`json_file`]: load with errors naming file, line and field; rewrite
//!   keeping unknown fields; atomic writes.
//! - [`settings`]: node name, ports, workspace roots, seeds, discovery switches.
//! - [`relay_agents`]: agents added by hand.
//! - [`mesh_file`]: `mesh.json`, the mesh this broker belongs to.
//! - [`project`]: the `.openscout/project.json` manifests.
//! - [`discover`]: which agents this machine runs.
//! - [`trust`]: which project manifests the user trusts to run commands.

pub mod discover;
pub mod json_file;
pub mod mesh_file;
pub mod project;
pub mod relay_agents;
pub mod settings;
pub mod trust;

pub use json_file::{ConfigError, JsonFile, Saved};
