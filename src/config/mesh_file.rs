//! `mesh.json`: which mesh this broker belongs to, kept beside the node key
//! so that a lost store resyncs into the same mesh, and the peers an invite
//! named (with their keys) so a joiner can reach its mesh before the first
//! sync tells it who the members are.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::json_file::{ConfigError, JsonFile};

/// The file format this scout writes.
pub const MESH_FILE_VERSION: u32 = 1;

/// Bootstrap peers kept: an invite names at most a handful of addresses.
pub const BOOTSTRAP_PEERS_MAX: usize = 16;

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeshFile {
    /// Format version.
    pub version: u32,
    /// The mesh id (32 hex characters).
    pub mesh_id: String,
    /// Peers to dial first, with the key to expect there.
    pub bootstrap: Vec<BootstrapPeer>,
}

impl Default for MeshFile {
    fn default() -> MeshFile {
        MeshFile {
            version: MESH_FILE_VERSION,
            mesh_id: String::new(),
            bootstrap: Vec::new(),
        }
    }
}

/// A peer to dial first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapPeer {
    /// `ip:port`.
    pub address: String,
    /// The peer's Ed25519 public key, hex.
    pub public_key: String,
}

/// Loads `mesh.json`; `Ok(None)` when the broker has no mesh yet.
pub fn load(path: &Path) -> Result<Option<JsonFile<MeshFile>>, ConfigError> {
    let Some(file) = JsonFile::<MeshFile>::load(path)? else {
        return Ok(None);
    };
    if scout_mesh::wire::MeshId::parse(&file.value.mesh_id).is_err() {
        return Err(ConfigError::field(
            path,
            &file.text,
            "mesh_id",
            "expected 32 lower-case hex characters",
        ));
    }
    if file.value.bootstrap.len() > BOOTSTRAP_PEERS_MAX {
        return Err(ConfigError::field(
            path,
            &file.text,
            "bootstrap",
            format!("at most {BOOTSTRAP_PEERS_MAX} peers"),
        ));
    }
    Ok(Some(file))
}
