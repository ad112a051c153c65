//! Relayed requests: how a member that cannot dial another still reaches
//! it, through a third member both can reach (two machines behind NATs
//! with no direct path, a firewall that lets one direction through).
//!
//! A request travels in a [`RelayEnvelope`]: the sender's node id, the
//! target's, a nonce, the sender's clock when it sealed it, the sender's
//! public key, the encoded frame, and the sender's Ed25519 signature over
//! all of them. The relay reads the frame (it is not encrypted) but cannot
//! change anything: the target checks that the key hashes to the sender's
//! id, that the signature verifies, and that the envelope is addressed to
//! it, and only then hands the frame to routing as if the sender had sent
//! it directly. The answer comes back in an envelope the target signs,
//! bound to the request's nonce, so a relay can neither forge an
//! acknowledgement nor replay an old one in answer to a new request.
//!
//! What a relay could still try is to keep a signed request and deliver
//! it again, or late. The target takes an envelope only within
//! [`RELAY_WINDOW_MS`] of its seal time and after its own start, and
//! answers a (sender, nonce) it has seen from memory instead of acting on
//! it twice (the broker's replay cache); so a replay gets the first
//! answer, and a held request is refused once the window passed. Only
//! [`relayable`] frames travel this way. Sync, views, joins and terminals
//! never go through a relay.
//!
//! Pure: signing and checking only; the broker's mesh chooses relays and
//! moves the bytes.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::wire::{MeshFrame, NodeId, RecordSignature, WireError};

/// The domain of a relay signature, so no other signed bytes of Scout
/// (records, for one) can pass for an envelope.
const DOMAIN: &[u8] = b"scout relay envelope v1\0";

/// One request or answer passed through a relay, signed by its sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayEnvelope {
    /// Who sent the frame (the origin of a request, the target of an answer).
    pub from: NodeId,
    /// Who it is for.
    pub to: NodeId,
    /// Chosen by the requester; the answer carries the request's.
    pub nonce: u64,
    /// The sender's unix ms when it sealed the envelope.
    pub sent_ms: u64,
    /// Whether this is the answer to a request.
    pub answer: bool,
    /// The sender's Ed25519 public key; hashes to `from`.
    pub from_key: [u8; 32],
    /// The frame, encoded as on a direct connection.
    pub frame: Vec<u8>,
    /// The sender's signature over everything above.
    pub signature: RecordSignature,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The key is not the sender's, or the signature does not verify.
    #[error("the relayed frame is not signed by {from}: {detail}")]
    Forged {
        /// Who it claims to be from.
        from: NodeId,
        /// What did not match.
        detail: &'static str,
    },
    /// Addressed to another node, or a request where an answer was due
    /// (or the other way round), or an answer to another request.
    #[error("the relayed frame is not meant here: {detail}")]
    Misdirected {
        /// What did not match.
        detail: &'static str,
    },
    /// The frame does not decode, or is not one a relay may carry.
    #[error("the relayed frame cannot be relayed: {detail}")]
    Frame {
        /// Why.
        detail: String,
    },
}

impl RelayError {
    /// The stable code of every relay refusal.
    pub const CODE: &'static str = "BAD_RELAY";

    /// The stable code of this error, [`RelayError::CODE`].
    pub fn code(&self) -> &'static str {
        Self::CODE
    }
}

/// Whether `frame` may travel through a relay: the requests routing sends
/// between members (all idempotent at the receiver) and a ping, and the
/// answers to them.
pub fn relayable(frame: &MeshFrame) -> bool {
    matches!(
        frame,
        MeshFrame::Invoke(_)
            | MeshFrame::InvokeAck(_)
            | MeshFrame::FlightUpdate(_)
            | MeshFrame::FlightQuery { .. }
            | MeshFrame::Cancel { .. }
            | MeshFrame::FlightAck(_)
            | MeshFrame::UsageQuery(_)
            | MeshFrame::UsageReport(_)
            | MeshFrame::ApprovalDecide(_)
            | MeshFrame::ApprovalDecided(_)
            | MeshFrame::Ping { .. }
            | MeshFrame::Pong { .. }
            | MeshFrame::Error(_)
    )
}

/// How far a request's seal time may be from the target's clock, either
/// way, in ms: longer than a relay takes (a dial and two requests) plus
/// the clock skew between members a relay still works across.
pub const RELAY_WINDOW_MS: u64 = 60_000;

/// The fields a signature covers, borrowed.
struct Signed<'a> {
    from: &'a NodeId,
    to: &'a NodeId,
    nonce: u64,
    sent_ms: u64,
    answer: bool,
    from_key: &'a [u8; 32],
    frame: &'a [u8],
}

impl Signed<'_> {
    /// The bytes a signature covers.
    fn bytes(&self) -> Vec<u8> {
        let mut bytes =
            Vec::with_capacity(DOMAIN.len() + 2 * 16 + 2 * 8 + 1 + 32 + self.frame.len());
        bytes.extend_from_slice(DOMAIN);
        bytes.extend_from_slice(&self.from.to_bytes());
        bytes.extend_from_slice(&self.to.to_bytes());
        bytes.extend_from_slice(&self.nonce.to_le_bytes());
        bytes.extend_from_slice(&self.sent_ms.to_le_bytes());
        bytes.push(u8::from(self.answer));
        bytes.extend_from_slice(self.from_key);
        bytes.extend_from_slice(self.frame);
        bytes
    }
}

impl RelayEnvelope {
    fn signed(&self) -> Signed<'_> {
        Signed {
            from: &self.from,
            to: &self.to,
            nonce: self.nonce,
            sent_ms: self.sent_ms,
            answer: self.answer,
            from_key: &self.from_key,
            frame: &self.frame,
        }
    }
}

/// What a sealed envelope says besides its frame.
#[derive(Debug, Clone, Copy)]
pub struct Seal<'a> {
    /// The receiver.
    pub to: &'a NodeId,
    /// The request's nonce.
    pub nonce: u64,
    /// The sender's unix ms now.
    pub sent_ms: u64,
    /// Whether it answers a request.
    pub answer: bool,
}

/// Seals `frame` from the holder of `key`. Refuses a frame that may not be
/// relayed.
pub fn seal(
    key: &SigningKey,
    how: Seal<'_>,
    frame: &MeshFrame,
) -> Result<RelayEnvelope, RelayError> {
    if !relayable(frame) {
        return Err(RelayError::Frame {
            detail: format!("`{}` is not relayed", frame.name()),
        });
    }
    let from_key = key.verifying_key().to_bytes();
    let mut envelope = RelayEnvelope {
        from: NodeId::of_public_key(&from_key),
        to: how.to.clone(),
        nonce: how.nonce,
        sent_ms: how.sent_ms,
        answer: how.answer,
        from_key,
        frame: crate::wire::encode_frame(frame),
        signature: RecordSignature::UNSIGNED,
    };
    envelope.signature = RecordSignature(key.sign(&envelope.signed().bytes()).to_bytes());
    Ok(envelope)
}

/// What a receiver expects of an envelope.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// This node: the envelope must be addressed to it.
    pub me: &'a NodeId,
    /// An answer (to the request with this nonce, from this node), or a
    /// request.
    pub answer_to: Option<(u64, &'a NodeId)>,
    /// This node's unix ms now: a request must have been sealed within
    /// [`RELAY_WINDOW_MS`] of it, and not before `not_before_ms` (this
    /// node's start: a request it may have answered before a restart).
    pub now_ms: u64,
    /// See `now_ms`.
    pub not_before_ms: u64,
}

/// Checks an envelope and decodes its frame: signed by `from`, addressed to
/// `expect.me`, the kind expected, a frame a relay may carry.
pub fn open(envelope: &RelayEnvelope, expect: Expect<'_>) -> Result<MeshFrame, RelayError> {
    let forged = |detail| RelayError::Forged {
        from: envelope.from.clone(),
        detail,
    };
    if NodeId::of_public_key(&envelope.from_key) != envelope.from {
        return Err(forged("its public key is not the sender's"));
    }
    if envelope.to != *expect.me {
        return Err(RelayError::Misdirected {
            detail: "it is addressed to another node",
        });
    }
    match expect.answer_to {
        None if envelope.answer => {
            return Err(RelayError::Misdirected {
                detail: "an answer where a request was due",
            });
        }
        Some(_) if !envelope.answer => {
            return Err(RelayError::Misdirected {
                detail: "a request where an answer was due",
            });
        }
        Some((nonce, from)) if envelope.nonce != nonce || envelope.from != *from => {
            return Err(RelayError::Misdirected {
                detail: "an answer to another request",
            });
        }
        Some(_) => {}
        None if envelope.sent_ms.abs_diff(expect.now_ms) > RELAY_WINDOW_MS => {
            return Err(RelayError::Misdirected {
                detail: "it was sealed too long ago (or the clocks are too far apart)",
            });
        }
        None if envelope.sent_ms < expect.not_before_ms => {
            return Err(RelayError::Misdirected {
                detail: "it was sealed before this broker started",
            });
        }
        None => {}
    }
    let public_key = VerifyingKey::from_bytes(&envelope.from_key)
        .map_err(|_| forged("its public key is not an Ed25519 key"))?;
    let signature = ed25519_dalek::Signature::from_bytes(&envelope.signature.0);
    public_key
        .verify_strict(&envelope.signed().bytes(), &signature)
        .map_err(|_| forged("its signature does not verify"))?;
    let frame =
        crate::wire::decode_frame(&envelope.frame).map_err(|err: WireError| RelayError::Frame {
            detail: err.to_string(),
        })?;
    if !relayable(&frame) {
        return Err(RelayError::Frame {
            detail: format!("`{}` is not relayed", frame.name()),
        });
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    fn id(key: &SigningKey) -> NodeId {
        NodeId::of_public_key(&key.verifying_key().to_bytes())
    }

    fn cancel() -> MeshFrame {
        MeshFrame::Cancel {
            invocation_id: "inv-1".to_owned(),
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    fn request(to: &NodeId) -> Expect<'_> {
        Expect {
            me: to,
            answer_to: None,
            now_ms: NOW,
            not_before_ms: NOW - 3_600_000,
        }
    }

    fn sealed(
        key: &SigningKey,
        to: &NodeId,
        nonce: u64,
        answer: bool,
        frame: &MeshFrame,
    ) -> RelayEnvelope {
        let how = Seal {
            to,
            nonce,
            sent_ms: NOW,
            answer,
        };
        seal(key, how, frame).unwrap()
    }

    #[test]
    fn a_sealed_request_opens_at_its_target_only() {
        let (origin, target, other) = (key(1), key(2), key(3));
        let envelope = sealed(&origin, &id(&target), 7, false, &cancel());
        assert_eq!(envelope.from, id(&origin));
        assert_eq!(open(&envelope, request(&id(&target))).unwrap(), cancel());
        assert!(matches!(
            open(&envelope, request(&id(&other))),
            Err(RelayError::Misdirected { .. })
        ));
    }

    #[test]
    fn a_relay_cannot_change_any_field() {
        let (origin, target, relay) = (key(1), key(2), key(3));
        let sealed = sealed(&origin, &id(&target), 7, false, &cancel());
        let me = id(&target);
        let mut changed = sealed.clone();
        changed.frame = crate::wire::encode_frame(&MeshFrame::Cancel {
            invocation_id: "inv-2".to_owned(),
        });
        assert!(matches!(
            open(&changed, request(&me)),
            Err(RelayError::Forged { .. })
        ));
        // Claiming to be the relay, with the origin's signature.
        let mut claimed = sealed.clone();
        claimed.from = id(&relay);
        assert!(matches!(
            open(&claimed, request(&me)),
            Err(RelayError::Forged { .. })
        ));
        // The relay's own key and id, the origin's signature.
        let mut rekeyed = sealed.clone();
        rekeyed.from = id(&relay);
        rekeyed.from_key = relay.verifying_key().to_bytes();
        assert!(matches!(
            open(&rekeyed, request(&me)),
            Err(RelayError::Forged { .. })
        ));
        let mut renonced = sealed;
        renonced.nonce = 8;
        assert!(matches!(
            open(&renonced, request(&me)),
            Err(RelayError::Forged { .. })
        ));
    }

    #[test]
    fn an_answer_is_bound_to_its_request() {
        let (origin, target) = (key(1), key(2));
        let (origin_id, target_id) = (id(&origin), id(&target));
        let answer = sealed(&target, &origin_id, 7, true, &MeshFrame::FlightAck(None));
        let expect = |nonce| Expect {
            me: &origin_id,
            answer_to: Some((nonce, &target_id)),
            now_ms: NOW,
            not_before_ms: NOW,
        };
        assert_eq!(
            open(&answer, expect(7)).unwrap(),
            MeshFrame::FlightAck(None)
        );
        assert!(matches!(
            open(&answer, expect(8)),
            Err(RelayError::Misdirected { .. })
        ));
        // An answer is never taken for a request, nor the other way round.
        assert!(matches!(
            open(&answer, request(&origin_id)),
            Err(RelayError::Misdirected { .. })
        ));
        let request_envelope = sealed(&origin, &target_id, 7, false, &cancel());
        let expect_at_target = Expect {
            me: &target_id,
            answer_to: Some((7, &origin_id)),
            now_ms: NOW,
            not_before_ms: NOW,
        };
        assert!(matches!(
            open(&request_envelope, expect_at_target),
            Err(RelayError::Misdirected { .. })
        ));
    }

    #[test]
    fn a_request_is_taken_only_near_its_seal_time_and_after_a_restart() {
        let (origin, target) = (key(1), key(2));
        let me = id(&target);
        let envelope = sealed(&origin, &me, 7, false, &cancel());
        let at = |now_ms, not_before_ms| Expect {
            me: &me,
            answer_to: None,
            now_ms,
            not_before_ms,
        };
        assert!(open(&envelope, at(NOW + RELAY_WINDOW_MS, 0)).is_ok());
        assert!(
            open(&envelope, at(NOW - RELAY_WINDOW_MS, 0)).is_ok(),
            "a sender's clock a little ahead"
        );
        assert!(matches!(
            open(&envelope, at(NOW + RELAY_WINDOW_MS + 1, 0)),
            Err(RelayError::Misdirected { .. })
        ));
        assert!(
            matches!(
                open(&envelope, at(NOW + 1, NOW + 1)),
                Err(RelayError::Misdirected { .. })
            ),
            "sealed before the target started"
        );
        // The seal time is signed.
        let mut moved = envelope;
        moved.sent_ms = NOW + 5_000;
        assert!(matches!(
            open(&moved, at(NOW + 5_000, 0)),
            Err(RelayError::Forged { .. })
        ));
    }

    #[test]
    fn only_routing_requests_and_pings_are_relayed() {
        let (origin, target) = (key(1), key(2));
        let sync = MeshFrame::Sync(crate::wire::SyncMessage::Summary { hash: 1 });
        let how = Seal {
            to: &id(&target),
            nonce: 1,
            sent_ms: NOW,
            answer: false,
        };
        assert!(matches!(
            seal(&origin, how, &sync),
            Err(RelayError::Frame { .. })
        ));
        // A frame smuggled in by hand, signed properly, is still refused.
        let mut envelope = sealed(&origin, &id(&target), 1, false, &cancel());
        envelope.frame = crate::wire::encode_frame(&sync);
        envelope.signature = RecordSignature(origin.sign(&envelope.signed().bytes()).to_bytes());
        assert!(matches!(
            open(&envelope, request(&id(&target))),
            Err(RelayError::Frame { .. })
        ));
        // Garbage for a frame.
        envelope.frame = vec![0xff; 9];
        assert!(open(&envelope, request(&id(&target))).is_err());
    }
}
