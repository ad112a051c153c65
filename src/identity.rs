//! The broker's identity: an Ed25519 key pair created once and kept 0600 in
//! the home, the node id derived from its public key, and the local API token.
//!
//! The node id is data derived from the key, never chosen: two brokers can
//! share a node *name* by mistake, but not a node id without sharing a key.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use rand::RngCore;

/// Bytes of randomness in the local API token.
const TOKEN_BYTES: usize = 32;

/// Mode of every secret file: readable and writable by the owner only.
const SECRET_FILE_MODE: u32 = 0o600;

/// A loaded node identity.
#[derive(Clone)]
pub struct NodeIdentity {
    signing_key: SigningKey,
    node_id: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log line.
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// The node id: lower-case hex of the first 16 bytes of SHA-256(public key).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing_key.verifying_key().to_bytes()
    }

    /// The private key, for the transport layer's TLS identity.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The key as the mesh transport needs it.
    pub fn mesh_key(&self) -> scout_net::transport::NodeKey {
        scout_net::transport::NodeKey {
            pkcs8_der: self
                .signing_key
                .to_pkcs8_der()
                .map(|document| document.as_bytes().to_vec())
                .unwrap_or_default(),
            public_key: self.public_key(),
        }
    }

    /// This node as the mesh knows it.
    pub fn mesh_identity(
        &self,
        node_name: scout_mesh::names::Label,
    ) -> crate::daemon::mesh::MeshIdentity {
        crate::daemon::mesh::MeshIdentity {
            node_id: scout_mesh::wire::NodeId::of_public_key(&self.public_key()),
            node_name,
            key: self.mesh_key(),
        }
    }

    fn from_signing_key(signing_key: SigningKey) -> NodeIdentity {
        let node_id = node_id_of(&signing_key.verifying_key().to_bytes());
        NodeIdentity {
            signing_key,
            node_id,
        }
    }
}

/// The node id of a raw Ed25519 public key (the mesh's derivation).
pub fn node_id_of(public_key: &[u8; 32]) -> String {
    scout_mesh::wire::NodeId::of_public_key(public_key).to_string()
}

/// Whether a file was made now or was already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The file did not exist and was written.
    New,
    /// The file existed and was left alone.
    Existing,
}

/// Loads the node key, creating it first when the file does not exist.
pub fn load_or_create_node_key(path: &Path) -> anyhow::Result<(NodeIdentity, Created)> {
    if path.exists() {
        return Ok((load_node_key(path)?, Created::Existing));
    }
    let signing_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = signing_key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|err| anyhow::anyhow!("cannot encode the node key: {err}"))?;
    write_secret_new(path, pem.as_bytes())?;
    Ok((NodeIdentity::from_signing_key(signing_key), Created::New))
}

/// Loads an existing node key.
pub fn load_node_key(path: &Path) -> anyhow::Result<NodeIdentity> {
    let pem = fs::read_to_string(path)
        .with_context(|| format!("cannot read the node key {}", path.display()))?;
    let signing_key = SigningKey::from_pkcs8_pem(&pem).map_err(|err| {
        anyhow::anyhow!(
            "the node key {} is not an Ed25519 PKCS#8 PEM key: {err}",
            path.display()
        )
    })?;
    Ok(NodeIdentity::from_signing_key(signing_key))
}

/// Loads the local API token, creating it first when the file does not exist.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<(String, Created)> {
    if path.exists() {
        return Ok((load_token(path)?, Created::Existing));
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    write_secret_new(path, format!("{token}\n").as_bytes())?;
    Ok((token, Created::New))
}

/// Loads the local API token.
pub fn load_token(path: &Path) -> anyhow::Result<String> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read the API token {}", path.display()))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        bail!("the API token file {} is empty", path.display());
    }
    Ok(token)
}

/// The permission bits of a file (for `scout doctor`).
pub fn file_mode(path: &Path) -> anyhow::Result<u32> {
    let metadata = fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    Ok(metadata.permissions().mode() & 0o777)
}

/// Whether a secret file is readable by others than its owner.
pub fn is_too_open(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Writes a new secret file with mode 0600 from the first byte on: the file
/// is created with that mode, so there is no window where it is world-readable.
fn write_secret_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SECRET_FILE_MODE)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let (first, created) = load_or_create_node_key(&path).unwrap();
        assert_eq!(created, Created::New);
        assert_eq!(file_mode(&path).unwrap(), 0o600);
        let (second, created) = load_or_create_node_key(&path).unwrap();
        assert_eq!(created, Created::Existing);
        assert_eq!(first.node_id(), second.node_id());
        assert_eq!(first.node_id().len(), 32);
    }

    #[test]
    fn garbage_key_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        fs::write(&path, "not a key").unwrap();
        let err = load_node_key(&path).unwrap_err().to_string();
        assert!(err.contains("node.key"), "{err}");
    }

    #[test]
    fn token_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let (token, created) = load_or_create_token(&path).unwrap();
        assert_eq!(created, Created::New);
        assert_eq!(token.len(), TOKEN_BYTES * 2);
        assert_eq!(
            load_or_create_token(&path).unwrap(),
            (token, Created::Existing)
        );
        assert!(!is_too_open(file_mode(&path).unwrap()));
    }
}
