//! Mesh state changes for when no broker runs: founding a mesh at setup,
//! joining with an invite, issuing an invite and revoking a member from the
//! CLI. They use the same replica and the same store functions as the
//! running broker, and run only while the caller holds the home lock, so two
//! writers of this node's records never coexist.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use scout_mesh::membership::{self, InviteRequest};
use scout_mesh::registry::founder_of;
use scout_mesh::sync::{Output, Replica, ReplicaIdentity, SigningKey, SyncConfig};
use scout_mesh::wire::{Invite, MeshId, NodeId, RecordBody, RevocationBody};
use scout_net::transport::{MeshEndpoint, TransportConfig};

use super::trust::MeshTrust;
use super::{IssuedCode, MeshIdentity, bootstrap_of, founder_admission};
use crate::config::json_file::JsonFile;
use crate::config::mesh_file::{self, MeshFile};
use crate::home::Home;
use crate::store::{self, Store};

/// Makes sure the broker belongs to a mesh: when `mesh.json` is missing,
/// founds a new mesh with this node as its first member.
pub async fn ensure_mesh(
    home: &Home,
    identity: &MeshIdentity,
    store: &Store,
    now_ms: u64,
) -> anyhow::Result<MeshFile> {
    if let Some(file) = mesh_file::load(&home.mesh_path())? {
        return Ok(file.value);
    }
    let mesh_id = MeshId::founded_by(&identity.key.public_key);
    let stored = store.read(store::mesh::load_registry)?;
    let vv = stored.vv_for_restore(&identity.node_id);
    let mut replica = Replica::restore(
        replica_identity(identity, mesh_id)?,
        SyncConfig::default(),
        stored.records,
        vv,
    );
    replica.put(
        now_ms,
        identity.node_id.as_str(),
        founder_admission(identity),
    )?;
    persist_outputs(&mut replica, store).await?;
    let mut file = JsonFile::new(
        &home.mesh_path(),
        MeshFile {
            mesh_id: mesh_id.to_string(),
            ..MeshFile::default()
        },
    );
    file.save()?;
    tracing::info!(mesh = %mesh_id, "founded a new mesh");
    Ok(file.value)
}

/// This node as its replica knows it in the mesh `mesh_id`: the node key it
/// signs its records with, its name, and the mesh's founder.
pub fn replica_identity(
    identity: &MeshIdentity,
    mesh_id: MeshId,
) -> anyhow::Result<ReplicaIdentity> {
    let signing_key = SigningKey::from_pkcs8_der(&identity.key.pkcs8_der)
        .map_err(|err| anyhow::anyhow!("the node key cannot sign records: {err}"))?;
    Ok(ReplicaIdentity {
        signing_key,
        node_name: identity.node_name.clone(),
        founder: founder_of(&mesh_id),
    })
}

/// The replica of the registry in the store, for when no broker runs: the
/// mesh is the one of `mesh.json`, or the node's own before it has one.
pub fn stored_replica(
    home: &Home,
    identity: &MeshIdentity,
    store: &Store,
) -> anyhow::Result<Replica> {
    let mesh_id = match mesh_file::load(&home.mesh_path())? {
        Some(file) => MeshId::parse(&file.value.mesh_id).context("mesh.json has a bad mesh id")?,
        None => MeshId::founded_by(&identity.key.public_key),
    };
    let stored = store.read(store::mesh::load_registry)?;
    let vv = stored.vv_for_restore(&identity.node_id);
    Ok(Replica::restore(
        replica_identity(identity, mesh_id)?,
        SyncConfig::default(),
        stored.records,
        vv,
    ))
}

/// Writes `mesh.json` for the mesh of an invite.
pub fn write_mesh_file(home: &Home, invite: &Invite) -> anyhow::Result<()> {
    let mut file = JsonFile::load_or(&home.mesh_path(), MeshFile::default)?;
    file.value.mesh_id = invite.mesh_id.to_string();
    file.value.bootstrap = bootstrap_of(invite);
    file.save()?;
    Ok(())
}

/// Applies a replica's persist and forget outputs to the store; sends are
/// dropped (no peer is connected offline; the running broker syncs later).
async fn persist_outputs(replica: &mut Replica, store: &Store) -> anyhow::Result<()> {
    while let Some(output) = replica.poll_output() {
        match output {
            Output::Persist { records, vv } => {
                let now_ms = store.env().now_unix_ms();
                store
                    .write(move |tx| store::mesh::persist(tx, &records, &vv, now_ms))
                    .await?;
            }
            Output::Forget { keys } => {
                store
                    .write(move |tx| store::mesh::forget(tx, &keys))
                    .await?;
            }
            Output::Send { .. } | Output::Event(_) => {}
        }
    }
    Ok(())
}

/// Joins the mesh of an invite from the CLI: reaches the inviter on a
/// temporary endpoint, then records the new mesh. The broker syncs when it
/// starts.
pub async fn join(
    home: &Home,
    identity: &MeshIdentity,
    store: &Store,
    invite: &Invite,
    now_ms: u64,
) -> anyhow::Result<MeshId> {
    if invite.expires_at_ms < now_ms {
        anyhow::bail!(
            "INVITE_EXPIRED: the invite expired; ask for a new one with `scout mesh invite`"
        );
    }
    let trust = Arc::new(MeshTrust::new(store.env().clone()));
    let endpoint = MeshEndpoint::bind(
        "0.0.0.0:0".parse().context("bind address")?,
        identity.key.clone(),
        trust,
        TransportConfig::default(),
    )?;
    let (connection, _, accepted) =
        super::connections::join_exchange(&endpoint, invite, &identity.node_name, Vec::new())
            .await?;
    connection.close(
        quinn::VarInt::from_u32(scout_net::transport::close_code::SHUTDOWN),
        b"joined",
    );
    endpoint.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    store.write(store::mesh::wipe_registry).await?;
    write_mesh_file(home, invite)?;
    Ok(accepted.mesh_id)
}

/// Issues an invite from the CLI; the broker opens its join window for it
/// when it starts.
pub async fn invite(
    identity: &MeshIdentity,
    store: &Store,
    mesh_id: MeshId,
    addresses: Vec<String>,
    ttl: Duration,
    now_ms: u64,
) -> anyhow::Result<IssuedCode> {
    let (invite, issued) = membership::issue(
        InviteRequest {
            mesh_id,
            inviter: identity.node_id.clone(),
            inviter_key: identity.key.public_key,
            addresses,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        },
        now_ms,
        store.env().random(),
    );
    store
        .write(move |tx| store::mesh::insert_invite(tx, &issued, now_ms))
        .await?;
    Ok(IssuedCode {
        code: invite.to_code(),
        expires_at_ms: invite.expires_at_ms,
        addresses: invite.addresses,
    })
}

/// Revokes a member from the CLI.
pub async fn revoke(
    home: &Home,
    identity: &MeshIdentity,
    store: &Store,
    node: &str,
    reason: &str,
    now_ms: u64,
) -> anyhow::Result<NodeId> {
    let mut replica = stored_replica(home, identity, store)?;
    let target = super::find_member(&replica, node)?;
    if target == identity.node_id {
        anyhow::bail!("a broker cannot revoke itself");
    }
    replica.put(
        now_ms,
        target.as_str(),
        RecordBody::Revocation(RevocationBody {
            reason: reason.to_owned(),
            revoked_by: identity.node_id.clone(),
        }),
    )?;
    persist_outputs(&mut replica, store).await?;
    Ok(target)
}
