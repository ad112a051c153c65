//! Pairing with a short code (`scout mesh invite --short`, `scout mesh join
//! ABCD-2345`): the inviter's answers on a new connection before its hello,
//! and the joiner's search for the inviter and its side of the exchange.
//!
//! The exchange itself (SPAKE2 with key confirmation, the one-attempt rule)
//! is pure and lives in `scout_mesh::pairing`; this module moves its
//! messages over QUIC, keeps the one pending short code of this broker in
//! memory (a restart forgets it: a code is for a person at another machine
//! now), and admits the joiner through the same path as a long-code join.
//!
//! On the wire, a joiner opens a connection to each broker it found
//! (mDNS, tailnet, or `--peer`), asks `PairProbe`, and runs the exchange
//! only with the first broker that answers it holds a pending code: a
//! failed attempt burns the code, so the joiner never tries a code on a
//! broker that does not hold one, and stops at the first failure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use scout_mesh::names::{Label, NamePart};
use scout_mesh::pairing::{
    self, InviterPairing, JoinerPairing, PairingIdentities, ShortCode, ShortInvite,
};
use scout_mesh::wire::{
    Invite, JoinAccepted, MeshFrame, MeshId, NodeId, OfferedCode, PairOffer, PairReply, PairStart,
};
use scout_net::discovery::mdns::{self, BrowseEvent, Mdns, MdnsConfig};
use scout_net::transport::endpoint::{peer_key, request};
use scout_net::transport::{MeshEndpoint, NodeKey, TransportConfig, Trust, TrustPolicy};
use serde::{Deserialize, Serialize};

use super::{Mesh, Shared};
use crate::daemon::discovery::DiscoveryConfig;
use crate::store::audit::NewAuditEntry;

/// How long the joiner listens for mDNS adverts before it gives up on the
/// LAN: brokers answer a browse within a second on a quiet LAN; three
/// leave room for a busy one without making a person wait long.
pub const PAIRING_BROWSE_WINDOW: Duration = Duration::from_secs(3);

/// Candidate inviters asked at most: each costs a handshake; a LAN or
/// tailnet with more brokers than this is not where short codes are used.
pub const PAIRING_CANDIDATES_MAX: usize = 32;

/// The invite id the joiner records for a short-code join: its mesh file
/// needs an invite, and a short code has none.
const SHORT_JOIN_INVITE_ID: [u8; 8] = *b"shortcod";

/// Why a short-code join failed, with the stable code people and scripts
/// branch on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PairError {
    /// `INVITER_NOT_FOUND`, `PAIRING_FAILED`, `INVITE_USED`,
    /// `INVITE_EXPIRED`, or another code the inviter answered.
    pub code: String,
    /// What happened, for a person.
    pub message: String,
}

impl PairError {
    fn new(code: &str, message: impl Into<String>) -> PairError {
        PairError {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// A short code just issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedShortCode {
    /// The code to read to the person at the joining machine.
    pub code: String,
    /// Unix ms after which it is refused.
    pub expires_at_ms: u64,
}

/// Issues this broker's short code, replacing (and burning) any pending one:
/// a broker holds one at a time, since the joiner does not say which.
pub async fn issue(shared: &Arc<Shared>, ttl_ms: u64) -> anyhow::Result<IssuedShortCode> {
    let now = shared.now_ms();
    let invite = ShortInvite::issue(shared.random(), now, ttl_ms);
    let issued = IssuedShortCode {
        code: invite.code.display(),
        expires_at_ms: invite.expires_at_ms,
    };
    let answer_until = invite.answer_until_ms();
    let fingerprint = pairing::code_fingerprint(&invite.code);
    let code = invite.code.clone();
    let replaced = shared
        .short_invite
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .replace(invite);
    if let Some(old) = replaced
        && old.is_open(now)
    {
        audit(
            shared,
            "short_invite_burned",
            &old.code,
            serde_json::json!({ "reason": "replaced by a new short code" }),
        )
        .await;
    }
    shared.trust.extend_join_window_until(answer_until);
    audit(
        shared,
        "short_invite_issued",
        &code,
        serde_json::json!({ "expires_at_ms": issued.expires_at_ms }),
    )
    .await;
    tracing::info!(code_fingerprint = %fingerprint, "issued a short code");
    Ok(issued)
}

/// Appends an audit entry about a short code, naming it by fingerprint
/// only. A failure to audit is logged; it never blocks pairing.
async fn audit(shared: &Shared, action: &str, code: &ShortCode, detail: serde_json::Value) {
    let entry = NewAuditEntry {
        ts_ms: i64::try_from(shared.now_ms()).unwrap_or(i64::MAX),
        actor: shared.identity.node_id.to_string(),
        action: action.to_owned(),
        subject: format!("short_invite:{}", pairing::code_fingerprint(code)),
        detail,
    };
    if let Err(err) = shared.store.append_audit(entry).await {
        tracing::warn!(cause = %err, action, "cannot audit a short code");
    }
}

/// The inviter's state of one exchange, on one connection. Dropped without
/// [`InviterSide::succeeded`] (a wrong code, a failed confirmation, a
/// joiner that went away or ran out of time), it burns the code.
pub struct InviterSide {
    shared: Arc<Shared>,
    code: ShortCode,
    pairing: Option<InviterPairing>,
    joiner_name: String,
    done: bool,
}

impl std::fmt::Debug for InviterSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviterSide")
            .field("joiner_name", &self.joiner_name)
            .finish_non_exhaustive()
    }
}

impl InviterSide {
    fn burn(&mut self, reason: &str) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(invite) = self
            .shared
            .short_invite
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .as_mut()
            .filter(|invite| invite.code == self.code)
        {
            invite.finish(false);
        }
        tracing::warn!(joiner = %self.joiner_name, reason, "a short-code attempt failed; the code is burned");
        let shared = self.shared.clone();
        let code = self.code.clone();
        let detail = serde_json::json!({ "joiner_name": self.joiner_name, "reason": reason });
        // The drop may run outside the runtime's context only at shutdown,
        // when the audit line is lost with the process anyway.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                audit(&shared, "short_invite_burned", &code, detail).await;
            });
        }
    }

    async fn succeeded(mut self, joiner: &NodeId) {
        self.done = true;
        if let Some(invite) = self
            .shared
            .short_invite
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .as_mut()
            .filter(|invite| invite.code == self.code)
        {
            invite.finish(true);
        }
        audit(
            &self.shared,
            "short_invite_used",
            &self.code,
            serde_json::json!({ "joiner": joiner.to_string(), "joiner_name": self.joiner_name }),
        )
        .await;
    }
}

impl Drop for InviterSide {
    fn drop(&mut self) {
        self.burn("the exchange did not finish");
    }
}

/// Answers a pairing probe: whether a short code is pending here.
pub fn answer_probe(shared: &Shared) -> MeshFrame {
    let now = shared.now_ms();
    let short_code = shared
        .short_invite
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .as_ref()
        .map_or(OfferedCode::None, |invite| invite.offered(now));
    MeshFrame::PairOffer(PairOffer {
        short_code,
        mesh_id: shared.mesh_id(),
        node_name: shared.identity.node_name.as_str().to_owned(),
    })
}

/// Answers the joiner's first message: takes the code's one attempt and
/// replies with the inviter's message and confirmation. `key` is the
/// joiner's key from the TLS handshake.
pub async fn answer_start(
    shared: &Arc<Shared>,
    key: &[u8; 32],
    start: PairStart,
) -> (MeshFrame, Option<InviterSide>) {
    let Ok(name) = Label::parse(&start.node_name, NamePart::Node) else {
        return (
            MeshFrame::error("BAD_JOIN", "the joiner's node name is not a valid name"),
            None,
        );
    };
    let now = shared.now_ms();
    let begun = shared
        .short_invite
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .as_mut()
        .map(|invite| invite.begin(now));
    let code = match begun {
        Some(Ok(code)) => code,
        Some(Err(refused)) => {
            tracing::warn!(joiner = %name, code = refused.code(), "refused a short-code attempt");
            return (MeshFrame::error(refused.code(), refused.to_string()), None);
        }
        None => {
            let refused = pairing::ShortInviteRefused::None;
            return (MeshFrame::error(refused.code(), refused.to_string()), None);
        }
    };
    let mut side = InviterSide {
        shared: shared.clone(),
        code: code.clone(),
        pairing: None,
        joiner_name: name.as_str().to_owned(),
        done: false,
    };
    let identities = PairingIdentities {
        joiner_key: *key,
        inviter_key: shared.identity.key.public_key,
        mesh_id: shared.mesh_id(),
    };
    match InviterPairing::respond(&code, &identities, shared.random(), &start.pake) {
        Ok((pairing, reply)) => {
            side.pairing = Some(pairing);
            (
                MeshFrame::PairReply(PairReply {
                    pake: reply.message,
                    confirmation: reply.confirmation,
                }),
                Some(side),
            )
        }
        Err(err) => {
            side.burn("a malformed key exchange message");
            (MeshFrame::error(err.code(), err.to_string()), None)
        }
    }
}

/// Checks the joiner's confirmation; admits it when it verifies, through
/// the same admission as a long-code join.
pub async fn answer_confirm(
    shared: &Arc<Shared>,
    key: &[u8; 32],
    mut side: InviterSide,
    confirmation: &[u8],
) -> MeshFrame {
    let verified = side
        .pairing
        .as_ref()
        .map(|pairing| pairing.verify(confirmation));
    match verified {
        Some(Ok(())) => {}
        Some(Err(err)) => {
            side.burn("the key confirmation failed (a wrong code, or someone in the middle)");
            return MeshFrame::error(err.code(), err.to_string());
        }
        None => {
            side.burn("a confirmation without an exchange");
            return MeshFrame::error("UNEXPECTED_FRAME", "a confirmation without an exchange");
        }
    }
    let Ok(name) = Label::parse(&side.joiner_name, NamePart::Node) else {
        side.burn("the joiner's node name is not a valid name");
        return MeshFrame::error("BAD_JOIN", "the joiner's node name is not a valid name");
    };
    let answer = super::connections::admit(shared, key, &name, "short_code").await;
    if matches!(answer, MeshFrame::Error(_)) {
        side.burn("the admission failed");
    } else {
        side.succeeded(&NodeId::of_public_key(key)).await;
    }
    answer
}

/// The joiner's endpoint trust: any server key, since a short code pins
/// none. The exchange binds the key the TLS handshake presented, so a
/// server that is not the inviter fails the key confirmation.
#[derive(Debug)]
struct AnyServer;

impl TrustPolicy for AnyServer {
    fn trust(&self, _public_key: &[u8; 32]) -> Trust {
        Trust::Member
    }

    fn join_window_open(&self) -> bool {
        false
    }
}

/// Who the joiner is, for the exchange.
#[derive(Debug, Clone)]
pub struct Joiner {
    /// The node key (its public half is bound into the exchange).
    pub key: NodeKey,
    /// The node name the inviter records.
    pub node_name: Label,
    /// Where the joiner can be dialed.
    pub addresses: Vec<String>,
}

/// A finished short-code join: what the joiner records of its new mesh.
#[derive(Debug, Clone)]
pub struct Paired {
    /// The inviter's answer.
    pub accepted: JoinAccepted,
    /// An invite standing for the short code (mesh, inviter key, address),
    /// for the same mesh switch as a long-code join.
    pub invite: Invite,
}

/// Where to look for the inviter: the addresses given with `--peer`, else
/// the brokers mDNS hears within [`PAIRING_BROWSE_WINDOW`] and the tailnet's
/// peers. `own` is the joiner's node id, never a candidate.
pub async fn candidates(
    peers: &[String],
    discovery: &DiscoveryConfig,
    own: &NodeId,
) -> Result<Vec<SocketAddr>, PairError> {
    let mut out = Vec::new();
    if !peers.is_empty() {
        for peer in peers {
            let resolved = tokio::net::lookup_host(peer.as_str())
                .await
                .map_err(|err| {
                    PairError::new(
                        "INVALID_PEER",
                        format!("`{peer}` is not a HOST:PORT that resolves: {err}"),
                    )
                })?;
            out.extend(resolved);
        }
        out.truncate(PAIRING_CANDIDATES_MAX);
        return Ok(out);
    }
    if let Some(tailscale) = &discovery.tailscale
        && let Ok((status, _)) = tailscale.client.status().await
    {
        out.extend(
            crate::daemon::discovery::tailscale::tailnet_addresses(
                &status,
                &tailscale.tags,
                tailscale.peer_port,
                false,
            )
            .into_keys(),
        );
    }
    if discovery.mdns {
        out.extend(browse_mdns(own).await);
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|addr| seen.insert(*addr));
    out.truncate(PAIRING_CANDIDATES_MAX);
    Ok(out)
}

/// The addresses of the brokers mDNS hears within the window, whatever
/// their mesh (the joiner is not in the inviter's mesh yet).
async fn browse_mdns(own: &NodeId) -> Vec<SocketAddr> {
    let mdns = match Mdns::start(MdnsConfig {
        ipv6: false,
        interface_check_secs: 60,
    }) {
        Ok(mdns) => mdns,
        Err(err) => {
            tracing::debug!(cause = %err, "no mDNS for pairing");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    if let Ok(browser) = mdns.browse() {
        let deadline = tokio::time::Instant::now() + PAIRING_BROWSE_WINDOW;
        while let Ok(event) = tokio::time::timeout_at(deadline, browser.next()).await {
            match event {
                BrowseEvent::Resolved(sighting) => {
                    let Ok(advert) = &sighting.advert else {
                        continue;
                    };
                    if &advert.node_id == own {
                        continue;
                    }
                    out.extend(mdns::dial_addresses(&sighting.heard, sighting.port, false));
                }
                BrowseEvent::Removed { .. } | BrowseEvent::Other => {}
                BrowseEvent::Ended => break,
            }
        }
    }
    mdns.shutdown();
    out
}

/// Finds the inviter among `candidates` and runs the exchange with it.
/// Only a broker that answers it holds a pending code is tried, and the
/// first attempt decides: a failure is not retried elsewhere.
pub async fn pair(
    joiner: &Joiner,
    code: &ShortCode,
    candidates: &[SocketAddr],
    config: TransportConfig,
    now_ms: u64,
    seed: [u8; 32],
) -> Result<Paired, PairError> {
    let endpoint = MeshEndpoint::bind(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        joiner.key.clone(),
        Arc::new(AnyServer),
        config.clone(),
    )
    .map_err(|err| PairError::new("PAIRING_FAILED", format!("cannot open an endpoint: {err}")))?;
    let v6 = MeshEndpoint::bind(
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        joiner.key.clone(),
        Arc::new(AnyServer),
        config.clone(),
    )
    .ok();
    let mut tried = Vec::new();
    let mut spent = None;
    let mut outcome = None;
    for addr in candidates {
        let endpoint = match (addr, &v6) {
            (SocketAddr::V6(_), Some(v6)) => v6,
            _ => &endpoint,
        };
        let connection = match endpoint.connect(*addr, None).await {
            Ok(connection) => connection,
            Err(err) => {
                tried.push(format!("{addr}: {}", err.code()));
                continue;
            }
        };
        let result = attempt(joiner, code, &connection, *addr, &config, now_ms, seed).await;
        connection.close(
            quinn::VarInt::from_u32(scout_net::transport::close_code::SHUTDOWN),
            b"pairing done",
        );
        match result {
            Attempt::NoCode(why) => tried.push(format!("{addr}: {why}")),
            Attempt::Spent(err) => {
                tried.push(format!("{addr}: {}", err.code));
                spent.get_or_insert(err);
            }
            Attempt::Done(done) => {
                outcome = Some(done);
                break;
            }
        }
    }
    for endpoint in std::iter::once(&endpoint).chain(v6.as_ref()) {
        endpoint.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
    if let Some(err) = spent.filter(|_| outcome.is_none()) {
        return Err(err);
    }
    outcome.unwrap_or_else(|| {
        let looked = if candidates.is_empty() {
            "no broker found on the LAN (mDNS) or the tailnet".to_owned()
        } else {
            format!("no broker holds a pending short code ({})", tried.join("; "))
        };
        Err(PairError::new(
            "INVITER_NOT_FOUND",
            format!(
                "{looked}; name the inviter with `--peer HOST:PORT`, or use the long code of `scout mesh invite`"
            ),
        ))
    })
}

enum Attempt {
    /// This broker holds no short code (or does not speak pairing).
    NoCode(String),
    /// This broker holds a short code that cannot be tried any more; the
    /// error is reported when no other broker holds a pending one.
    Spent(PairError),
    /// The one attempt ran: its outcome is final.
    Done(Result<Paired, PairError>),
}

async fn attempt(
    joiner: &Joiner,
    code: &ShortCode,
    connection: &Connection,
    addr: SocketAddr,
    config: &TransportConfig,
    now_ms: u64,
    seed: [u8; 32],
) -> Attempt {
    let timeout = config.request_timeout;
    let Some(inviter_key) = peer_key(connection) else {
        return Attempt::NoCode("presented no key".into());
    };
    if inviter_key == joiner.key.public_key {
        return Attempt::NoCode("this broker itself".into());
    }
    let offer = match request(connection, &MeshFrame::PairProbe, timeout).await {
        Ok(MeshFrame::PairOffer(offer)) => offer,
        Ok(MeshFrame::Error(error)) => return Attempt::NoCode(error.code.to_string()),
        Ok(other) => return Attempt::NoCode(format!("answered `{}`", other.name())),
        Err(err) => return Attempt::NoCode(err.code().to_owned()),
    };
    match offer.short_code {
        OfferedCode::Pending => {}
        OfferedCode::None => {
            return Attempt::NoCode(format!("{} holds no short code", offer.node_name));
        }
        OfferedCode::Used => {
            return Attempt::Spent(PairError::new(
                "INVITE_USED",
                format!(
                    "{}'s short code was already used or burned; ask for a new one with `scout mesh invite --short`",
                    offer.node_name
                ),
            ));
        }
        OfferedCode::Expired => {
            return Attempt::Spent(PairError::new(
                "INVITE_EXPIRED",
                format!(
                    "{}'s short code expired; ask for a new one with `scout mesh invite --short`",
                    offer.node_name
                ),
            ));
        }
    }
    Attempt::Done(
        exchange(
            joiner,
            code,
            connection,
            addr,
            inviter_key,
            offer.mesh_id,
            timeout,
            now_ms,
            seed,
        )
        .await,
    )
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    joiner: &Joiner,
    code: &ShortCode,
    connection: &Connection,
    addr: SocketAddr,
    inviter_key: [u8; 32],
    mesh_id: MeshId,
    timeout: Duration,
    now_ms: u64,
    seed: [u8; 32],
) -> Result<Paired, PairError> {
    let identities = PairingIdentities {
        joiner_key: joiner.key.public_key,
        inviter_key,
        mesh_id,
    };
    let (pairing, message) = JoinerPairing::start(code, &identities, seed);
    let start = MeshFrame::PairStart(PairStart {
        pake: message,
        node_name: joiner.node_name.as_str().to_owned(),
        addresses: joiner.addresses.clone(),
    });
    let reply = answer(
        request(connection, &start, timeout).await,
        |frame| match frame {
            MeshFrame::PairReply(reply) => Ok(reply),
            other => Err(other.name()),
        },
    )?;
    let confirmed = pairing
        .finish(&reply.pake, &reply.confirmation)
        .map_err(|err| PairError::new(err.code(), err.to_string()))?;
    let confirm = MeshFrame::PairConfirm {
        confirmation: confirmed.confirmation,
    };
    let accepted = answer(
        request(connection, &confirm, timeout).await,
        |frame| match frame {
            MeshFrame::JoinAccepted(accepted) => Ok(accepted),
            other => Err(other.name()),
        },
    )?;
    if accepted.mesh_id != mesh_id || accepted.admitted_by != NodeId::of_public_key(&inviter_key) {
        return Err(PairError::new(
            "PAIRING_FAILED",
            "the inviter admitted the joiner to another mesh than it offered",
        ));
    }
    let invite = Invite {
        mesh_id,
        inviter: accepted.admitted_by.clone(),
        inviter_key,
        addresses: vec![addr.to_string()],
        invite_id: SHORT_JOIN_INVITE_ID,
        secret: [0; 16],
        expires_at_ms: now_ms.saturating_add(pairing::SHORT_INVITE_TTL_MS_DEFAULT),
    };
    Ok(Paired { accepted, invite })
}

/// Joins with a short code from the running broker: the search, the
/// exchange, then the same switch to the new mesh as a long-code join; the
/// dialer reaches the inviter from the address book.
pub async fn join_running(
    mesh: &Mesh,
    code: &ShortCode,
    peers: &[String],
) -> Result<MeshId, PairError> {
    let shared = mesh.shared();
    let candidates = candidates(peers, &shared.discovery.config, &shared.identity.node_id).await?;
    let joiner = Joiner {
        key: shared.identity.key.clone(),
        node_name: shared.identity.node_name.clone(),
        addresses: shared.announce.iter().map(ToString::to_string).collect(),
    };
    let paired = pair(
        &joiner,
        code,
        &candidates,
        shared.endpoint.config().clone(),
        shared.now_ms(),
        shared.random(),
    )
    .await?;
    mesh.switch_mesh(&paired.invite)
        .await
        .map_err(|err| PairError::new("JOIN_FAILED", format!("{err:#}")))?;
    tracing::info!(mesh = %paired.accepted.mesh_id, inviter = %paired.accepted.admitted_by, "joined a mesh with a short code");
    Ok(paired.accepted.mesh_id)
}

/// Joins with a short code when no broker runs: the search and the
/// exchange on a temporary endpoint, then the new mesh is recorded; the
/// broker syncs when it starts.
pub async fn join_offline(
    home: &crate::home::Home,
    identity: &super::MeshIdentity,
    store: &crate::store::Store,
    code: &ShortCode,
    peers: &[String],
    now_ms: u64,
) -> Result<MeshId, PairError> {
    let discovery = DiscoveryConfig::load(home);
    let candidates = candidates(peers, &discovery, &identity.node_id).await?;
    let joiner = Joiner {
        key: identity.key.clone(),
        node_name: identity.node_name.clone(),
        addresses: Vec::new(),
    };
    let paired = pair(
        &joiner,
        code,
        &candidates,
        TransportConfig::default(),
        now_ms,
        store.env().random(),
    )
    .await?;
    let recorded = async {
        store.write(crate::store::mesh::wipe_registry).await?;
        super::offline::write_mesh_file(home, &paired.invite)
    };
    recorded
        .await
        .map_err(|err| PairError::new("JOIN_FAILED", format!("{err:#}")))?;
    Ok(paired.accepted.mesh_id)
}

/// The inviter's answer to one step of the exchange: what `expected` takes
/// from the frame; the inviter's own error with its code; anything else,
/// or a failed request, `PAIRING_FAILED`.
fn answer<T, E: std::fmt::Display>(
    answered: Result<MeshFrame, E>,
    expected: impl FnOnce(MeshFrame) -> Result<T, &'static str>,
) -> Result<T, PairError> {
    match answered {
        Ok(MeshFrame::Error(error)) => Err(PairError::new(error.code.as_str(), error.message)),
        Ok(frame) => expected(frame).map_err(|other| {
            PairError::new("PAIRING_FAILED", format!("the inviter answered `{other}`"))
        }),
        Err(err) => Err(PairError::new("PAIRING_FAILED", err.to_string())),
    }
}
