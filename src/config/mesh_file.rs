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
    /// Whether the key is trusted before the registry says anything about
    /// it. True after a join; set to false once admissions have synced, so
    /// a restart never trusts the inviter on the file's word again (its
    /// revocation, stored or not, would otherwise be second to the pin).
    /// Files without the field come from a join: pinned.
    #[serde(default = "pinned_by_default")]
    pub pinned: bool,
}

fn pinned_by_default() -> bool {
    true
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

/// Marks the bootstrap entries of `keys` as no longer pinned, keeping their
/// addresses as places to knock. Returns whether the file changed.
pub fn unpin(file: &mut MeshFile, keys: &[[u8; 32]]) -> bool {
    let mut changed = false;
    for peer in &mut file.bootstrap {
        let matches = keys
            .iter()
            .any(|key| hex::encode(key) == peer.public_key.to_ascii_lowercase());
        if peer.pinned && matches {
            peer.pinned = false;
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_files_are_pinned_and_unpinning_keeps_the_address() {
        let key = [0xab; 32];
        let text = format!(
            r#"{{"version":1,"mesh_id":"{}","bootstrap":[{{"address":"10.0.0.1:3101","public_key":"{}"}}]}}"#,
            "0".repeat(32),
            hex::encode(key)
        );
        let mut file: MeshFile = serde_json::from_str(&text).unwrap();
        assert!(file.bootstrap[0].pinned);
        assert!(!unpin(&mut file, &[[0xcd; 32]]));
        assert!(unpin(&mut file, &[key]));
        assert!(!file.bootstrap[0].pinned);
        assert_eq!(file.bootstrap[0].address, "10.0.0.1:3101");
        assert!(!unpin(&mut file, &[key]));
    }
}
