//! Joining a mesh: one-time, expiring invites and the decision to admit.
//!
//! The inviter keeps an [`IssuedInvite`] (the secret's hash, the expiry,
//! whether it was used) and prints the [`Invite`] as a code. A joiner
//! presents the code's id and secret in a [`JoinRequest`]; [`check_join`]
//! decides. Admission itself is a registry record written by the inviter,
//! which then replicates like every other record.
//!
//! Pure: time and randomness come in as arguments.

use sha2::{Digest, Sha256};

use crate::wire::{Invite, JoinRequest, MeshId, NodeId};

/// How long an invite lives when nobody says otherwise: long enough to copy
/// a code to another machine, short enough that a leaked code goes stale.
pub const INVITE_TTL_MS_DEFAULT: u64 = 10 * 60 * 1000;

/// The longest an invite may live.
pub const INVITE_TTL_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;

/// Bytes of randomness an invite needs: an 8-byte id and a 16-byte secret.
pub const INVITE_RANDOM_BYTES: usize = 24;

/// What the inviter remembers of an invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedInvite {
    /// The invite's id.
    pub invite_id: [u8; 8],
    /// SHA-256 of the secret; the secret itself is only in the code.
    pub secret_hash: [u8; 32],
    /// Unix milliseconds after which it is refused.
    pub expires_at_ms: u64,
    /// Who used it, once used.
    pub used_by: Option<NodeId>,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    /// No invite with that id was issued here.
    #[error("INVITE_UNKNOWN: this broker issued no such invite")]
    Unknown,
    /// The invite expired.
    #[error("INVITE_EXPIRED: the invite expired; ask for a new one with `scout mesh invite`")]
    Expired,
    /// The invite was already used by another broker.
    #[error("INVITE_USED: the invite was already used; ask for a new one with `scout mesh invite`")]
    Used,
    /// The secret does not match.
    #[error("INVITE_INVALID: the invite's secret does not match")]
    WrongSecret,
}

impl JoinRefused {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            JoinRefused::Unknown => "INVITE_UNKNOWN",
            JoinRefused::Expired => "INVITE_EXPIRED",
            JoinRefused::Used => "INVITE_USED",
            JoinRefused::WrongSecret => "INVITE_INVALID",
        }
    }
}

/// The parts of a new invite that the inviter knows.
#[derive(Debug, Clone)]
pub struct InviteRequest {
    /// The mesh.
    pub mesh_id: MeshId,
    /// The inviting node.
    pub inviter: NodeId,
    /// The inviting node's public key.
    pub inviter_key: [u8; 32],
    /// Where the inviter listens.
    pub addresses: Vec<String>,
    /// How long it lives (clamped to [`INVITE_TTL_MS_MAX`]).
    pub ttl_ms: u64,
}

/// Makes an invite: the code's content and what the inviter keeps.
pub fn issue(
    request: InviteRequest,
    now_ms: u64,
    random: [u8; INVITE_RANDOM_BYTES],
) -> (Invite, IssuedInvite) {
    let mut invite_id = [0u8; 8];
    invite_id.copy_from_slice(&random[..8]);
    let mut secret = [0u8; 16];
    secret.copy_from_slice(&random[8..]);
    let expires_at_ms = now_ms.saturating_add(request.ttl_ms.min(INVITE_TTL_MS_MAX));
    let invite = Invite {
        mesh_id: request.mesh_id,
        inviter: request.inviter,
        inviter_key: request.inviter_key,
        addresses: request.addresses,
        invite_id,
        secret,
        expires_at_ms,
    };
    let issued = IssuedInvite {
        invite_id,
        secret_hash: hash_secret(&secret),
        expires_at_ms,
        used_by: None,
    };
    (invite, issued)
}

/// SHA-256 of an invite secret.
pub fn hash_secret(secret: &[u8; 16]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Decides a join request against the issued invite with its id.
///
/// A repeated request by the broker that already used the invite is
/// accepted again, so a joiner whose first answer was lost can retry.
pub fn check_join(
    issued: Option<&IssuedInvite>,
    request: &JoinRequest,
    joiner: &NodeId,
    now_ms: u64,
) -> Result<(), JoinRefused> {
    let issued = issued.ok_or(JoinRefused::Unknown)?;
    if !constant_time_eq(&issued.secret_hash, &hash_secret(&request.secret)) {
        return Err(JoinRefused::WrongSecret);
    }
    match &issued.used_by {
        Some(used_by) if used_by == joiner => return Ok(()),
        Some(_) => return Err(JoinRefused::Used),
        None => {}
    }
    if now_ms > issued.expires_at_ms {
        return Err(JoinRefused::Expired);
    }
    Ok(())
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(byte: u8) -> NodeId {
        NodeId::from_bytes([byte; 16])
    }

    fn invite(now_ms: u64) -> (Invite, IssuedInvite) {
        issue(
            InviteRequest {
                mesh_id: MeshId([1; 16]),
                inviter: node(1),
                inviter_key: [9; 32],
                addresses: vec!["127.0.0.1:3101".into()],
                ttl_ms: 1_000,
            },
            now_ms,
            [5; INVITE_RANDOM_BYTES],
        )
    }

    fn request(invite: &Invite) -> JoinRequest {
        JoinRequest {
            invite_id: invite.invite_id,
            secret: invite.secret,
            node_name: "devbox".into(),
            addresses: Vec::new(),
        }
    }

    #[test]
    fn valid_join_is_accepted_and_retry_by_the_same_joiner_too() {
        let (invite, mut issued) = invite(100);
        assert_eq!(
            check_join(Some(&issued), &request(&invite), &node(2), 500),
            Ok(())
        );
        issued.used_by = Some(node(2));
        assert_eq!(
            check_join(Some(&issued), &request(&invite), &node(2), 5_000),
            Ok(())
        );
        assert_eq!(
            check_join(Some(&issued), &request(&invite), &node(3), 500),
            Err(JoinRefused::Used)
        );
    }

    #[test]
    fn expired_wrong_and_unknown_are_refused() {
        let (invite, issued) = invite(100);
        assert_eq!(
            check_join(Some(&issued), &request(&invite), &node(2), 1_101),
            Err(JoinRefused::Expired)
        );
        let mut wrong = request(&invite);
        wrong.secret[0] ^= 1;
        assert_eq!(
            check_join(Some(&issued), &wrong, &node(2), 500),
            Err(JoinRefused::WrongSecret)
        );
        assert_eq!(
            check_join(None, &request(&invite), &node(2), 500),
            Err(JoinRefused::Unknown)
        );
    }

    #[test]
    fn codes_round_trip_and_bad_codes_are_typed() {
        let (invite, _) = invite(100);
        let code = invite.to_code();
        assert!(code.starts_with("scout1-"), "{code}");
        assert_eq!(
            Invite::from_code(&format!(
                "  {}\n",
                code.to_uppercase().replace("SCOUT1-", "scout1-")
            )),
            Ok(invite)
        );
        assert!(Invite::from_code("hello").is_err());
        assert!(Invite::from_code("scout1-!!!").is_err());
        assert!(Invite::from_code(&code[..code.len() - 4]).is_err());
    }

    #[test]
    fn ttl_is_clamped() {
        let (_, issued) = issue(
            InviteRequest {
                mesh_id: MeshId([1; 16]),
                inviter: node(1),
                inviter_key: [9; 32],
                addresses: Vec::new(),
                ttl_ms: u64::MAX,
            },
            0,
            [0; INVITE_RANDOM_BYTES],
        );
        assert_eq!(issued.expires_at_ms, INVITE_TTL_MS_MAX);
    }
}
