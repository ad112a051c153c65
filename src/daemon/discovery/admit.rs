//! The tailnet admit opt-in (`discovery.tailscale.admit`): brokers whose
//! tailnet identity (tags, or the owner of an untagged node) matches the
//! configured lists join the mesh without an invite code.
//!
//! - The admitting side: a member receives a join that carries
//!   [`TAILNET_JOIN_INVITE_ID`] instead of an invite, asks its own
//!   tailscaled who is behind the connecting address (whois), and when the
//!   rule admits that node writes an admission (`allow_list`) for the
//!   key the connection proved, then answers with its mesh id. The QUIC
//!   handshake proved the address answers (a spoofed source cannot finish
//!   it), and tailscaled vouches for which node holds a Tailscale IP.
//! - The joining side: a broker alone in the mesh it founded asks a
//!   matching tailnet peer (whois of the address it dials, checked first)
//!   to admit it, then moves to that peer's mesh as it would after an
//!   invite, with the peer's key pinned.
//!
//! Two lone brokers would each ask the other: the one with the smaller
//! node id admits, the other joins.
//!
//! Off by default. While on, the TLS handshake lets unknown keys through
//! (as while an invite is open) so they can present such a join; anything
//! else they send is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use scout_mesh::names::{Label, NamePart};
use scout_mesh::wire::{
    AdmissionBody, AdmissionMethod, Invite, JoinAccepted, JoinRequest, MeshFrame, MeshId, NodeId,
    RecordBody,
};
use scout_net::discovery::tailscale::{TAILNET_JOIN_INVITE_ID, TailnetPeer};
use scout_net::transport::endpoint::{peer_key, request};
use scout_net::transport::{MeshEndpoint, Trust, TrustPolicy};

use super::TailscaleConfig;
use crate::daemon::mesh::{Mesh, Shared};

/// How long the joiner keeps the mesh's "invite" (the pinned key and
/// address of the admitting peer) as valid in `mesh.json` terms.
const TAILNET_INVITE_TTL: Duration = Duration::from_secs(600);

/// The admitting side's answer to a join, or `None` when the join carries a
/// real invite (the invite path handles it).
pub async fn answer_join(
    shared: &Arc<Shared>,
    key: &[u8; 32],
    join: &JoinRequest,
    addr: SocketAddr,
) -> Option<MeshFrame> {
    if join.invite_id != TAILNET_JOIN_INVITE_ID {
        return None;
    }
    Some(match admit(shared, key, join, addr).await {
        Ok(accepted) => MeshFrame::JoinAccepted(accepted),
        Err((code, message)) => {
            crate::daemon::mesh::connections::log_inbound(
                shared,
                addr,
                code,
                &format!("refused a tailnet join from {}: {message}", join.node_name),
            );
            MeshFrame::error(code, message)
        }
    })
}

async fn admit(
    shared: &Arc<Shared>,
    key: &[u8; 32],
    join: &JoinRequest,
    addr: SocketAddr,
) -> Result<JoinAccepted, (&'static str, String)> {
    let Some(tailscale) = shared
        .discovery
        .config
        .tailscale
        .as_ref()
        .filter(|tailscale| tailscale.admit.is_enabled())
    else {
        return Err((
            "TAILNET_ADMIT_OFF",
            "this broker does not admit by tailnet identity; ask for an invite code".into(),
        ));
    };
    let joiner = NodeId::of_public_key(key);
    let Ok(name) = Label::parse(&join.node_name, NamePart::Node) else {
        return Err((
            "BAD_JOIN",
            "the joiner's node name is not a valid name".into(),
        ));
    };
    let accepted = JoinAccepted {
        mesh_id: shared.mesh_id(),
        admitted_by: shared.identity.node_id.clone(),
    };
    match shared.trust.trust(key) {
        Trust::Revoked => {
            return Err(("REVOKED_PEER", "this node was revoked from the mesh".into()));
        }
        Trust::Member => return Ok(accepted),
        Trust::Unknown => {}
    }
    if is_lone(shared) && shared.identity.node_id > joiner {
        return Err((
            "TAILNET_JOIN_REVERSED",
            "this broker is alone in its own mesh and joins yours instead".into(),
        ));
    }
    let node = tailscale
        .client
        .whois(addr)
        .await
        .map_err(|err| (err.code(), err.to_string()))?;
    if !tailscale.admit.admits(&node) {
        return Err((
            "TAILNET_NOT_ADMITTED",
            format!(
                "tailnet node {} ({}) matches none of discovery.tailscale.admit",
                node.host_name,
                identity_of(&node)
            ),
        ));
    }
    let body = RecordBody::Admission(AdmissionBody {
        public_key: *key,
        node_name: name.as_str().to_owned(),
        admitted_by: shared.identity.node_id.clone(),
        method: AdmissionMethod::AllowList,
    });
    let now = shared.now_ms();
    shared
        .with_replica(|replica| {
            let result = replica.put(now, joiner.as_str(), body);
            shared.trust.refresh(replica.registry());
            result
        })
        .map_err(|err| ("BAD_JOIN", err.to_string()))?;
    tracing::info!(
        node = %name,
        %joiner,
        tailnet_node = %node.host_name,
        identity = %identity_of(&node),
        "admitted a broker by its tailnet identity"
    );
    Ok(accepted)
}

/// Whether this broker is alone in the mesh it founded itself: the only
/// kind of broker that moves to another mesh on its own.
pub fn is_lone(shared: &Shared) -> bool {
    if shared.mesh_id() != MeshId::founded_by(&shared.identity.key.public_key) {
        return false;
    }
    let own = &shared.identity.node_id;
    let replica = shared
        .replica
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    replica
        .registry()
        .members()
        .iter()
        .all(|member| member == own)
}

/// The joining side: asks the broker at `addr` (a tailnet peer) to admit
/// this one, and moves to its mesh. `Ok(None)` when nothing changed (it
/// is this broker's mesh already).
pub async fn join_by_tailnet(
    mesh: &Mesh,
    tailscale: &TailscaleConfig,
    addr: SocketAddr,
) -> Result<Option<MeshId>, String> {
    let shared = mesh.shared();
    let node = tailscale
        .client
        .whois(addr)
        .await
        .map_err(|err| err.to_string())?;
    if !tailscale.admit.admits(&node) {
        return Err(format!(
            "TAILNET_NOT_ADMITTED: {} ({}) matches none of discovery.tailscale.admit",
            node.host_name,
            identity_of(&node)
        ));
    }
    // A throwaway endpoint that accepts the server's key whatever it is:
    // the whois above is what vouches for the node at this address.
    let bind = SocketAddr::new(
        match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        },
        0,
    );
    let config = shared.endpoint.config().clone();
    let probe = MeshEndpoint::bind(
        bind,
        shared.identity.key.clone(),
        Arc::new(TailnetPeerTrust),
        config.clone(),
    )
    .map_err(|err| format!("cannot open a probe endpoint: {err}"))?;
    let outcome = exchange(shared, &probe, addr, config.request_timeout).await;
    probe.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), probe.wait_idle()).await;
    let (key, accepted) = outcome?;
    if accepted.mesh_id == shared.mesh_id() {
        return Ok(None);
    }
    if !is_lone(shared) {
        return Err("this broker is no longer alone in its mesh; not moving".into());
    }
    let invite = Invite {
        mesh_id: accepted.mesh_id,
        inviter: accepted.admitted_by.clone(),
        inviter_key: key,
        addresses: vec![addr.to_string()],
        invite_id: TAILNET_JOIN_INVITE_ID,
        secret: [0; 16],
        expires_at_ms: shared.now_ms() + TAILNET_INVITE_TTL.as_millis() as u64,
    };
    mesh.switch_mesh(&invite)
        .await
        .map_err(|err| format!("{err:#}"))?;
    Ok(Some(accepted.mesh_id))
}

async fn exchange(
    shared: &Shared,
    probe: &MeshEndpoint,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<([u8; 32], JoinAccepted), String> {
    let connection = probe
        .connect(addr, None)
        .await
        .map_err(|err| format!("{}: {err}", err.code()))?;
    let Some(key) = peer_key(&connection) else {
        return Err("the peer presented no key".into());
    };
    if NodeId::of_public_key(&key) == shared.identity.node_id {
        return Err("SELF_PEER: this is the broker itself".into());
    }
    let join = MeshFrame::Join(JoinRequest {
        invite_id: TAILNET_JOIN_INVITE_ID,
        secret: [0; 16],
        node_name: shared.identity.node_name.as_str().to_owned(),
        addresses: shared.announce.iter().map(ToString::to_string).collect(),
    });
    let answer = request(&connection, &join, timeout).await;
    connection.close(
        quinn::VarInt::from_u32(scout_net::transport::close_code::SHUTDOWN),
        b"tailnet join done",
    );
    match answer {
        Ok(MeshFrame::JoinAccepted(accepted))
            if accepted.admitted_by == NodeId::of_public_key(&key) =>
        {
            Ok((key, accepted))
        }
        Ok(MeshFrame::JoinAccepted(_)) => {
            Err("the peer answered for another node than its key".into())
        }
        Ok(MeshFrame::Error(error)) => Err(format!("{}: {}", error.code, error.message)),
        Ok(other) => Err(format!("unexpected answer `{}` to a join", other.name())),
        Err(err) => Err(format!("{}: {err}", err.code())),
    }
}

/// Who a tailnet node is, for logs: its tags, else its owner.
fn identity_of(node: &TailnetPeer) -> String {
    if node.tags.is_empty() {
        node.login_name
            .clone()
            .unwrap_or_else(|| "no owner".to_owned())
    } else {
        node.tags.join(",")
    }
}

/// The probe endpoint's trust: any server key. Only used to dial an address
/// whose tailnet identity was just checked.
#[derive(Debug)]
struct TailnetPeerTrust;

impl TrustPolicy for TailnetPeerTrust {
    fn trust(&self, _public_key: &[u8; 32]) -> Trust {
        Trust::Member
    }

    fn join_window_open(&self) -> bool {
        false
    }
}
