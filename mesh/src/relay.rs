//! Relayed requests: how a member that cannot dial another still reaches
//! it, through a third member both can reach (two machines behind NATs
//! with no direct path, a firewall that lets one direction through).
//!
//! A request travels in a [`RelayEnvelope`]: the sender's node id, the
//! target's, a nonce, the sender's clock when it sealed it, the sender's
//! public key, an ephemeral X25519 key, the frame encrypted to the target,
//! and the sender's Ed25519 signature over all of them.
//!
//! - **A relay cannot read it.** The sender draws an ephemeral X25519 key
//!   for the exchange ([`Exchange::start`]) and agrees a secret with the
//!   target's X25519 key, the one its Ed25519 member key converts to (the
//!   admission record holds it); the frame is sealed with
//!   ChaCha20-Poly1305 under a key derived from that secret with HKDF-SHA256.
//!   The target derives the same secret from its own key
//!   ([`Exchange::accept`]) and seals its answer under the same secret, with
//!   another key for the other direction. The relay sees who talks to whom,
//!   when, and how much.
//! - **A relay cannot change it.** The target checks that the key hashes to
//!   the sender's id, that the signature verifies, and that the envelope is
//!   addressed to it, and only then hands the frame to routing as if the
//!   sender had sent it directly. The answer is signed the same way and
//!   bound to the request's nonce and ephemeral key, so a relay can neither
//!   forge an acknowledgement nor replay an old one in answer to a new
//!   request.
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
//! Pure: key agreement, sealing and checking only (the ephemeral key's
//! randomness comes in from the caller); the broker's mesh chooses relays
//! and moves the bytes.

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::wire::{MeshFrame, NodeId, RecordSignature, WireError};

/// The domain of a relay signature, so no other signed bytes of Scout
/// (records, for one) can pass for an envelope.
const DOMAIN: &[u8] = b"scout relay envelope v2\0";

/// The salt of the key derivation of a relayed exchange.
const KDF_SALT: &[u8] = b"scout relay exchange v1";

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
    /// The requester's ephemeral X25519 public key for this exchange; the
    /// answer carries the request's.
    pub ephemeral: [u8; 32],
    /// The frame, encoded as on a direct connection and sealed with
    /// ChaCha20-Poly1305 under the exchange's key for this direction.
    pub sealed: Vec<u8>,
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
    /// The frame does not decrypt or decode, or is not one a relay may
    /// carry; or no secret can be agreed with the key given.
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

/// The secret of one relayed exchange (a request and its answer), agreed
/// between the requester's ephemeral key and the target's member key.
pub struct Exchange {
    /// The requester's ephemeral X25519 public key.
    ephemeral: [u8; 32],
    /// HKDF's pseudorandom key, from the agreed secret.
    prk: hkdf::Hkdf<sha2::Sha256>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

impl Exchange {
    /// The requester's side: `ephemeral_secret` is 32 fresh random bytes,
    /// `target_key` the target's Ed25519 member key.
    pub fn start(
        ephemeral_secret: [u8; 32],
        target_key: &[u8; 32],
    ) -> Result<Exchange, RelayError> {
        let target = VerifyingKey::from_bytes(target_key)
            .map_err(|_| frame_error("the target's key is not an Ed25519 key"))?
            .to_montgomery();
        let ephemeral = MontgomeryPoint::mul_base_clamped(ephemeral_secret).to_bytes();
        let shared = target.mul_clamped(ephemeral_secret);
        Exchange::from_shared(shared, ephemeral, target.to_bytes())
    }

    /// The target's side: the secret the requester agreed with `key`.
    pub fn accept(key: &SigningKey, envelope: &RelayEnvelope) -> Result<Exchange, RelayError> {
        let ephemeral = envelope.ephemeral;
        let shared = MontgomeryPoint(ephemeral).mul_clamped(key.to_scalar_bytes());
        Exchange::from_shared(
            shared,
            ephemeral,
            key.verifying_key().to_montgomery().to_bytes(),
        )
    }

    fn from_shared(
        shared: MontgomeryPoint,
        ephemeral: [u8; 32],
        target: [u8; 32],
    ) -> Result<Exchange, RelayError> {
        // A low-order point gives an all-zero secret anyone knows.
        if shared.to_bytes() == [0; 32] {
            return Err(frame_error("no secret can be agreed with that key"));
        }
        let mut ikm = [0u8; 96];
        ikm[..32].copy_from_slice(shared.as_bytes());
        ikm[32..64].copy_from_slice(&ephemeral);
        ikm[64..].copy_from_slice(&target);
        Ok(Exchange {
            ephemeral,
            prk: hkdf::Hkdf::new(Some(KDF_SALT), &ikm),
        })
    }

    /// The key of one direction, for `purpose`.
    fn key(&self, answer: bool, purpose: &[u8]) -> [u8; 32] {
        let mut info = Vec::with_capacity(16);
        info.extend_from_slice(if answer { b"answer " } else { b"request " });
        info.extend_from_slice(purpose);
        let mut key = [0u8; 32];
        // 32 bytes are always within HKDF-SHA256's output limit.
        if self.prk.expand(&info, &mut key).is_err() {
            unreachable!("32 bytes fit HKDF-SHA256's output");
        }
        key
    }

    /// Seals `plain` for one direction. The AEAD nonce is synthetic (an
    /// HMAC of the header and the frame under a key of its own), so two
    /// different frames never share a nonce even when one side seals twice
    /// in an exchange (an answer sealed again after the replay cache forgot
    /// it), and the same frame seals to the same bytes. The nonce leads the
    /// sealed bytes.
    fn seal(&self, answer: bool, header: &[u8], plain: &[u8]) -> Result<Vec<u8>, RelayError> {
        use hmac::Mac as _;
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&self.key(answer, b"nonce"))
                .map_err(|_| frame_error("the nonce key is refused"))?;
        mac.update(header);
        mac.update(plain);
        let tag = mac.finalize().into_bytes();
        let nonce = Nonce::from_slice(&tag[..NONCE_BYTES]);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key(answer, b"frame")));
        let sealed = cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plain,
                    aad: header,
                },
            )
            .map_err(|_| frame_error("the frame cannot be sealed"))?;
        let mut bytes = Vec::with_capacity(NONCE_BYTES + sealed.len());
        bytes.extend_from_slice(nonce);
        bytes.extend_from_slice(&sealed);
        Ok(bytes)
    }

    /// Opens what [`Exchange::seal`] sealed.
    fn open(&self, answer: bool, header: &[u8], sealed: &[u8]) -> Result<Vec<u8>, RelayError> {
        let undecryptable = || frame_error("it does not decrypt with this exchange's key");
        if sealed.len() < NONCE_BYTES {
            return Err(undecryptable());
        }
        let (nonce, sealed) = sealed.split_at(NONCE_BYTES);
        ChaCha20Poly1305::new(Key::from_slice(&self.key(answer, b"frame")))
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: header,
                },
            )
            .map_err(|_| undecryptable())
    }
}

/// The bytes of a ChaCha20-Poly1305 nonce.
const NONCE_BYTES: usize = 12;

fn frame_error(detail: &str) -> RelayError {
    RelayError::Frame {
        detail: detail.to_owned(),
    }
}

/// The fields a signature covers, borrowed.
struct Signed<'a> {
    from: &'a NodeId,
    to: &'a NodeId,
    nonce: u64,
    sent_ms: u64,
    answer: bool,
    from_key: &'a [u8; 32],
    ephemeral: &'a [u8; 32],
}

impl Signed<'_> {
    /// The header bytes: what the signature covers besides the sealed
    /// frame, and the AEAD's associated data.
    fn header(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(DOMAIN.len() + 2 * 16 + 2 * 8 + 1 + 2 * 32);
        bytes.extend_from_slice(DOMAIN);
        bytes.extend_from_slice(&self.from.to_bytes());
        bytes.extend_from_slice(&self.to.to_bytes());
        bytes.extend_from_slice(&self.nonce.to_le_bytes());
        bytes.extend_from_slice(&self.sent_ms.to_le_bytes());
        bytes.push(u8::from(self.answer));
        bytes.extend_from_slice(self.from_key);
        bytes.extend_from_slice(self.ephemeral);
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
            ephemeral: &self.ephemeral,
        }
    }

    /// The bytes the signature covers: the header, then the sealed frame.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = self.signed().header();
        bytes.extend_from_slice(&self.sealed);
        bytes
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

/// Seals `frame` from the holder of `key`, encrypted under `exchange`.
/// Refuses a frame that may not be relayed.
pub fn seal(
    key: &SigningKey,
    how: Seal<'_>,
    exchange: &Exchange,
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
        ephemeral: exchange.ephemeral,
        sealed: Vec::new(),
        signature: RecordSignature::UNSIGNED,
    };
    let plain = crate::wire::encode_frame(frame);
    envelope.sealed = exchange.seal(how.answer, &envelope.signed().header(), &plain)?;
    envelope.signature = RecordSignature(key.sign(&envelope.signed_bytes()).to_bytes());
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

/// Checks an envelope and decrypts and decodes its frame: signed by
/// `from`, addressed to `expect.me`, the kind expected, of `exchange`, a
/// frame a relay may carry. [`verify`] then [`Verified::open`].
pub fn open(
    envelope: &RelayEnvelope,
    expect: Expect<'_>,
    exchange: &Exchange,
) -> Result<MeshFrame, RelayError> {
    verify(envelope, expect)?.open(exchange)
}

/// An envelope whose header and signature checked out, not decrypted yet.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a> {
    envelope: &'a RelayEnvelope,
}

/// The checks of an envelope that need no secret, cheapest first and the
/// signature last: key hashes to the sender, addressed to `expect.me`, the
/// kind expected, sealed in the window. A target runs these before it
/// agrees a secret ([`Exchange::accept`]), so a junk envelope costs it no
/// key agreement.
pub fn verify<'a>(
    envelope: &'a RelayEnvelope,
    expect: Expect<'_>,
) -> Result<Verified<'a>, RelayError> {
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
        .verify_strict(&envelope.signed_bytes(), &signature)
        .map_err(|_| forged("its signature does not verify"))?;
    Ok(Verified { envelope })
}

impl Verified<'_> {
    /// The frame, decrypted with `exchange` (which must be the envelope's:
    /// the one whose ephemeral key it carries), decoded, and one a relay
    /// may carry.
    pub fn open(self, exchange: &Exchange) -> Result<MeshFrame, RelayError> {
        let envelope = self.envelope;
        if envelope.ephemeral != exchange.ephemeral {
            return Err(RelayError::Misdirected {
                detail: "it belongs to another exchange",
            });
        }
        let plain = exchange.open(
            envelope.answer,
            &envelope.signed().header(),
            &envelope.sealed,
        )?;
        let frame =
            crate::wire::decode_frame(&plain).map_err(|err: WireError| RelayError::Frame {
                detail: err.to_string(),
            })?;
        if !relayable(&frame) {
            return Err(RelayError::Frame {
                detail: format!("`{}` is not relayed", frame.name()),
            });
        }
        Ok(frame)
    }
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

    /// The requester's side of an exchange with `target`.
    fn exchange_with(target: &SigningKey) -> Exchange {
        Exchange::start([0x5a; 32], &target.verifying_key().to_bytes()).unwrap()
    }

    /// A request from `origin` to `target`, sealed at [`NOW`].
    fn sealed(
        origin: &SigningKey,
        target: &SigningKey,
        nonce: u64,
        frame: &MeshFrame,
    ) -> RelayEnvelope {
        let how = Seal {
            to: &id(target),
            nonce,
            sent_ms: NOW,
            answer: false,
        };
        seal(origin, how, &exchange_with(target), frame).unwrap()
    }

    /// `target` opens `envelope` as a request.
    fn opened(target: &SigningKey, envelope: &RelayEnvelope) -> Result<MeshFrame, RelayError> {
        let exchange = Exchange::accept(target, envelope)?;
        open(envelope, request(&id(target)), &exchange)
    }

    #[test]
    fn a_sealed_request_opens_at_its_target_only() {
        let (origin, target, other) = (key(1), key(2), key(3));
        let envelope = sealed(&origin, &target, 7, &cancel());
        assert_eq!(envelope.from, id(&origin));
        assert_eq!(opened(&target, &envelope).unwrap(), cancel());
        // Addressed elsewhere; and readdressed, the other key cannot decrypt.
        assert!(matches!(
            open(
                &envelope,
                request(&id(&other)),
                &Exchange::accept(&other, &envelope).unwrap()
            ),
            Err(RelayError::Misdirected { .. })
        ));
    }

    #[test]
    fn a_relay_cannot_read_the_frame() {
        let (origin, target, relay) = (key(1), key(2), key(3));
        let secret = "inv-secret-prompt-words";
        let frame = MeshFrame::Cancel {
            invocation_id: secret.to_owned(),
        };
        let envelope = sealed(&origin, &target, 7, &frame);
        let plain = crate::wire::encode_frame(&frame);
        assert!(
            !envelope
                .sealed
                .windows(secret.len())
                .any(|window| window == secret.as_bytes()),
            "the frame travels in the clear"
        );
        assert!(!envelope.sealed.windows(plain.len()).any(|w| w == plain));
        // The relay's own key agrees another secret: nothing decrypts.
        let at_relay = Exchange::accept(&relay, &envelope).unwrap();
        assert!(
            at_relay
                .open(false, &envelope.signed().header(), &envelope.sealed)
                .is_err()
        );
        // Nor does the answer direction's key at the target.
        let at_target = Exchange::accept(&target, &envelope).unwrap();
        assert!(
            at_target
                .open(true, &envelope.signed().header(), &envelope.sealed)
                .is_err()
        );
    }

    #[test]
    fn a_key_that_agrees_no_secret_is_refused() {
        // The identity point and a point of small order give an all-zero
        // secret whatever the scalar; the requester's ephemeral key is
        // the attacker's choice on the target's side.
        let target = key(2);
        let mut envelope = sealed(&key(1), &target, 7, &cancel());
        envelope.ephemeral = [0; 32];
        assert!(matches!(
            Exchange::accept(&target, &envelope),
            Err(RelayError::Frame { .. })
        ));
        let mut one = [0u8; 32];
        one[0] = 1;
        envelope.ephemeral = one;
        assert!(Exchange::accept(&target, &envelope).is_err());
    }

    #[test]
    fn a_relay_cannot_change_any_field() {
        let (origin, target, relay) = (key(1), key(2), key(3));
        let sealed = sealed(&origin, &target, 7, &cancel());
        let mut changed = sealed.clone();
        let last = changed.sealed.len() - 1;
        changed.sealed[last] ^= 1;
        assert!(matches!(
            opened(&target, &changed),
            Err(RelayError::Forged { .. })
        ));
        // Claiming to be the relay, with the origin's signature.
        let mut claimed = sealed.clone();
        claimed.from = id(&relay);
        assert!(matches!(
            opened(&target, &claimed),
            Err(RelayError::Forged { .. })
        ));
        // The relay's own key and id, the origin's signature.
        let mut rekeyed = sealed.clone();
        rekeyed.from = id(&relay);
        rekeyed.from_key = relay.verifying_key().to_bytes();
        assert!(matches!(
            opened(&target, &rekeyed),
            Err(RelayError::Forged { .. })
        ));
        let mut renonced = sealed.clone();
        renonced.nonce = 8;
        assert!(matches!(
            opened(&target, &renonced),
            Err(RelayError::Forged { .. })
        ));
        // Its own ephemeral key, to read the answer: the signature covers it.
        let mut swapped = sealed;
        swapped.ephemeral = MontgomeryPoint::mul_base_clamped([0x77; 32]).to_bytes();
        assert!(matches!(
            opened(&target, &swapped),
            Err(RelayError::Forged { .. })
        ));
    }

    #[test]
    fn a_relay_resigning_a_changed_frame_as_itself_is_caught_by_the_id() {
        // The relay signs the frame with its own key but keeps the origin's
        // id: the key does not hash to the id.
        let (origin, target, relay) = (key(1), key(2), key(3));
        let mut envelope = sealed(&origin, &target, 7, &cancel());
        envelope.from_key = relay.verifying_key().to_bytes();
        envelope.signature = RecordSignature(relay.sign(&envelope.signed_bytes()).to_bytes());
        assert!(matches!(
            opened(&target, &envelope),
            Err(RelayError::Forged { .. })
        ));
    }

    #[test]
    fn an_answer_is_bound_to_its_request() {
        let (origin, target) = (key(1), key(2));
        let (origin_id, target_id) = (id(&origin), id(&target));
        let at_origin = exchange_with(&target);
        let request_envelope = seal(
            &origin,
            Seal {
                to: &target_id,
                nonce: 7,
                sent_ms: NOW,
                answer: false,
            },
            &at_origin,
            &cancel(),
        )
        .unwrap();
        let at_target = Exchange::accept(&target, &request_envelope).unwrap();
        let answer = seal(
            &target,
            Seal {
                to: &origin_id,
                nonce: 7,
                sent_ms: NOW,
                answer: true,
            },
            &at_target,
            &MeshFrame::FlightAck(None),
        )
        .unwrap();
        let expect = |nonce| Expect {
            me: &origin_id,
            answer_to: Some((nonce, &target_id)),
            now_ms: NOW,
            not_before_ms: NOW,
        };
        assert_eq!(
            open(&answer, expect(7), &at_origin).unwrap(),
            MeshFrame::FlightAck(None)
        );
        assert!(matches!(
            open(&answer, expect(8), &at_origin),
            Err(RelayError::Misdirected { .. })
        ));
        // The answer of another exchange (another ephemeral key).
        let other_exchange =
            Exchange::start([0x33; 32], &target.verifying_key().to_bytes()).unwrap();
        assert!(matches!(
            open(&answer, expect(7), &other_exchange),
            Err(RelayError::Misdirected { .. })
        ));
        // An answer is never taken for a request, nor the other way round.
        assert!(matches!(
            open(&answer, request(&origin_id), &at_origin),
            Err(RelayError::Misdirected { .. })
        ));
        let expect_at_target = Expect {
            me: &target_id,
            answer_to: Some((7, &origin_id)),
            now_ms: NOW,
            not_before_ms: NOW,
        };
        assert!(matches!(
            open(&request_envelope, expect_at_target, &at_target),
            Err(RelayError::Misdirected { .. })
        ));
    }

    #[test]
    fn the_same_frame_seals_to_the_same_bytes_and_another_to_another_nonce() {
        let (origin, target) = (key(1), key(2));
        let exchange = exchange_with(&target);
        let how = Seal {
            to: &id(&target),
            nonce: 7,
            sent_ms: NOW,
            answer: false,
        };
        let first = seal(&origin, how, &exchange, &cancel()).unwrap();
        let again = seal(&origin, how, &exchange, &cancel()).unwrap();
        assert_eq!(first, again);
        let other = MeshFrame::Cancel {
            invocation_id: "inv-2".to_owned(),
        };
        let second = seal(&origin, how, &exchange, &other).unwrap();
        assert_ne!(first.sealed[..NONCE_BYTES], second.sealed[..NONCE_BYTES]);
    }

    #[test]
    fn a_request_is_taken_only_near_its_seal_time_and_after_a_restart() {
        let (origin, target) = (key(1), key(2));
        let me = id(&target);
        let envelope = sealed(&origin, &target, 7, &cancel());
        let exchange = Exchange::accept(&target, &envelope).unwrap();
        let at = |now_ms, not_before_ms| Expect {
            me: &me,
            answer_to: None,
            now_ms,
            not_before_ms,
        };
        assert!(open(&envelope, at(NOW + RELAY_WINDOW_MS, 0), &exchange).is_ok());
        assert!(
            open(&envelope, at(NOW - RELAY_WINDOW_MS, 0), &exchange).is_ok(),
            "a sender's clock a little ahead"
        );
        assert!(matches!(
            open(&envelope, at(NOW + RELAY_WINDOW_MS + 1, 0), &exchange),
            Err(RelayError::Misdirected { .. })
        ));
        assert!(
            matches!(
                open(&envelope, at(NOW + 1, NOW + 1), &exchange),
                Err(RelayError::Misdirected { .. })
            ),
            "sealed before the target started"
        );
        // The seal time is signed.
        let mut moved = envelope;
        moved.sent_ms = NOW + 5_000;
        assert!(matches!(
            open(&moved, at(NOW + 5_000, 0), &exchange),
            Err(RelayError::Forged { .. })
        ));
    }

    #[test]
    fn only_routing_requests_and_pings_are_relayed() {
        let (origin, target) = (key(1), key(2));
        let sync = MeshFrame::Sync(crate::wire::SyncMessage::Summary { hash: 1 });
        let exchange = exchange_with(&target);
        let how = Seal {
            to: &id(&target),
            nonce: 1,
            sent_ms: NOW,
            answer: false,
        };
        assert!(matches!(
            seal(&origin, how, &exchange, &sync),
            Err(RelayError::Frame { .. })
        ));
        // A frame smuggled in by hand, sealed and signed properly, is still
        // refused.
        let mut envelope = sealed(&origin, &target, 1, &cancel());
        let smuggle = |envelope: &mut RelayEnvelope, plain: &[u8]| {
            envelope.sealed = exchange
                .seal(false, &envelope.signed().header(), plain)
                .unwrap();
            envelope.signature = RecordSignature(origin.sign(&envelope.signed_bytes()).to_bytes());
        };
        smuggle(&mut envelope, &crate::wire::encode_frame(&sync));
        assert!(matches!(
            opened(&target, &envelope),
            Err(RelayError::Frame { .. })
        ));
        // Garbage for a frame, and sealed bytes too short for a nonce.
        smuggle(&mut envelope, &[0xff; 9]);
        assert!(matches!(
            opened(&target, &envelope),
            Err(RelayError::Frame { .. })
        ));
        envelope.sealed = vec![1, 2, 3];
        envelope.signature = RecordSignature(origin.sign(&envelope.signed_bytes()).to_bytes());
        assert!(matches!(
            opened(&target, &envelope),
            Err(RelayError::Frame { .. })
        ));
    }
}
