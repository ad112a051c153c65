//! Pairing with a short code: `scout mesh invite --short` prints a code a
//! person reads aloud (`ABCD-2345`), and the joiner proves it knows the
//! code with SPAKE2, a password-authenticated key exchange.
//!
//! The code carries no address and no key: the joiner finds the inviter on
//! the LAN or the tailnet, reaches it over a TLS connection whose server key
//! it cannot pin, and both sides run SPAKE2 with the code as the password
//! and both TLS keys and the mesh id as the identities. Each side then sends
//! a key confirmation (an HMAC of the shared key); a wrong code, or a
//! machine in the middle that terminates TLS with its own key, makes the
//! confirmations differ. Nothing derived from the code alone ever leaves
//! the inviter, so a recorded exchange gives no way to test guesses
//! offline; and the inviter burns the code after one failed attempt, so an
//! online guess costs the attacker the code.
//!
//! Pure: the randomness SPAKE2 needs comes in as a seed, and time as unix
//! milliseconds.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::wire::{MeshId, NodeId};

/// The characters of a short code: upper-case letters and digits without
/// the ones people confuse when reading aloud or copying (0/O, 1/I). There
/// are 32, so each character carries exactly 5 bits.
pub const SHORT_CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// Characters in a short code: 8 characters are 40 bits, far more than an
/// attacker can guess with the one online attempt each code allows, and
/// still two groups of four that a person reads aloud without error.
pub const SHORT_CODE_CHARS: usize = 8;

/// Bytes of randomness a short code takes (40 bits).
pub const SHORT_CODE_RANDOM_BYTES: usize = SHORT_CODE_CHARS * 5 / 8;

/// How long a short code lives when nobody says otherwise: long enough to
/// read it to someone at another machine, short enough that a code
/// overheard later is stale.
pub const SHORT_INVITE_TTL_MS_DEFAULT: u64 = 10 * 60 * 1000;

/// The longest a short code may live: it is meant for a person at the
/// other machine now, and a long life only widens the window of guessing.
pub const SHORT_INVITE_TTL_MS_MAX: u64 = 60 * 60 * 1000;

/// How long after a short code's expiry its broker still lets an unknown
/// key finish a handshake, so that a late joiner learns `INVITE_EXPIRED`
/// instead of a bare handshake refusal. Such a connection can only ask
/// and be refused; ten minutes covers a person who tries again after a
/// coffee, and then the window closes.
pub const SHORT_INVITE_ANSWER_GRACE_MS: u64 = 10 * 60 * 1000;

/// Bytes of a SPAKE2 message on the Ed25519 group: a side byte and a
/// compressed point.
pub const PAKE_MESSAGE_BYTES: usize = 33;

/// Bytes of a key confirmation (HMAC-SHA256).
pub const CONFIRMATION_BYTES: usize = 32;

/// Domain separation of everything derived here, so that no value of this
/// protocol is ever valid in another.
const DOMAIN: &[u8] = b"scout-pair-v1";

/// A short pairing code, normalised: [`SHORT_CODE_CHARS`] characters of
/// [`SHORT_CODE_ALPHABET`].
#[derive(Clone, PartialEq, Eq)]
pub struct ShortCode(String);

impl std::fmt::Debug for ShortCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The code is a password: logs and debug output never show it.
        f.write_str("ShortCode(…)")
    }
}

/// Why a string is not a short code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("INVALID_SHORT_CODE: {0}")]
pub struct InvalidShortCode(pub String);

impl ShortCode {
    /// A code from [`SHORT_CODE_RANDOM_BYTES`] random bytes.
    pub fn from_random(random: [u8; SHORT_CODE_RANDOM_BYTES]) -> ShortCode {
        let mut bits: u64 = 0;
        for byte in random {
            bits = (bits << 8) | u64::from(byte);
        }
        let code = (0..SHORT_CODE_CHARS)
            .rev()
            .map(|index| SHORT_CODE_ALPHABET[((bits >> (5 * index)) & 31) as usize] as char)
            .collect();
        ShortCode(code)
    }

    /// Parses what a person typed: case, spaces and dashes do not matter;
    /// a character outside the alphabet is refused with a hint.
    pub fn parse(input: &str) -> Result<ShortCode, InvalidShortCode> {
        let mut code = String::with_capacity(SHORT_CODE_CHARS);
        for ch in input.chars() {
            if ch == '-' || ch.is_whitespace() {
                continue;
            }
            let upper = ch.to_ascii_uppercase();
            if !upper.is_ascii() || !SHORT_CODE_ALPHABET.contains(&(upper as u8)) {
                let hint = match upper {
                    '0' | 'O' | '1' | 'I' => " (codes never use 0, O, 1 or I)",
                    _ => "",
                };
                return Err(InvalidShortCode(format!(
                    "`{ch}` is not a character of a short code{hint}"
                )));
            }
            if code.len() == SHORT_CODE_CHARS {
                return Err(InvalidShortCode(format!(
                    "a short code has {SHORT_CODE_CHARS} characters"
                )));
            }
            code.push(upper);
        }
        if code.len() != SHORT_CODE_CHARS {
            return Err(InvalidShortCode(format!(
                "a short code has {SHORT_CODE_CHARS} characters, like ABCD-2345"
            )));
        }
        Ok(ShortCode(code))
    }

    /// Whether a string has the shape of a short code (as opposed to a
    /// long `scout1-…` one): [`SHORT_CODE_CHARS`] letters and digits, alone
    /// or in two groups of four. Characters outside the alphabet still
    /// count, so a mistyped `0` gets the short code's error, while a long
    /// code cut short (`scout1-ab`) keeps the long code's.
    pub fn looks_like(input: &str) -> bool {
        let input = input.trim();
        if input
            .to_ascii_lowercase()
            .starts_with(crate::wire::INVITE_CODE_PREFIX)
        {
            return false;
        }
        let groups: Vec<&str> = input.split(['-', ' ']).collect();
        let half = SHORT_CODE_CHARS / 2;
        let shaped = match groups.as_slice() {
            [whole] => whole.len() == SHORT_CODE_CHARS,
            [head, tail] => head.len() == half && tail.len() == half,
            _ => false,
        };
        shaped
            && groups
                .iter()
                .all(|group| group.chars().all(|ch| ch.is_ascii_alphanumeric()))
    }

    /// The code as people read it: two groups of four (`ABCD-2345`).
    pub fn display(&self) -> String {
        let (head, tail) = self.0.split_at(SHORT_CODE_CHARS / 2);
        format!("{head}-{tail}")
    }

    /// The code as the exchange's password.
    fn password(&self) -> Password {
        Password::new(self.0.as_bytes())
    }
}

/// Who takes part in one pairing, as each side sees it: the keys come from
/// the TLS handshake of the connection the exchange runs on, so a machine
/// in the middle (which has its own key) makes the two views differ and
/// the exchange fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingIdentities {
    /// The joiner's Ed25519 public key.
    pub joiner_key: [u8; 32],
    /// The inviter's Ed25519 public key.
    pub inviter_key: [u8; 32],
    /// The mesh the inviter admits the joiner to.
    pub mesh_id: MeshId,
}

impl PairingIdentities {
    fn joiner_identity(&self) -> Identity {
        let mut bytes = DOMAIN.to_vec();
        bytes.extend_from_slice(b"/joiner/");
        bytes.extend_from_slice(&self.joiner_key);
        Identity::new(&bytes)
    }

    fn inviter_identity(&self) -> Identity {
        let mut bytes = DOMAIN.to_vec();
        bytes.extend_from_slice(b"/inviter/");
        bytes.extend_from_slice(&self.inviter_key);
        bytes.extend_from_slice(&self.mesh_id.0);
        bytes.extend_from_slice(NodeId::of_public_key(&self.inviter_key).as_str().as_bytes());
        Identity::new(&bytes)
    }
}

/// Why a pairing exchange failed. Every failure burns the code on the
/// inviter; the joiner learns only that the codes did not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    /// A SPAKE2 message that is not a point of the group, or not from the
    /// other side.
    #[error("PAIRING_FAILED: the other side's key exchange message is malformed")]
    BadMessage,
    /// The key confirmation did not verify: a different code, or someone
    /// in the middle.
    #[error(
        "PAIRING_FAILED: the codes did not match (or someone is in the middle); the code is burned, ask for a new one"
    )]
    ConfirmationFailed,
}

impl PairingError {
    /// The stable code (both failures look alike to the other side).
    pub fn code(&self) -> &'static str {
        "PAIRING_FAILED"
    }
}

/// The joiner's side after its first message.
#[derive(Debug)]
pub struct JoinerPairing {
    state: Spake2<Ed25519Group>,
}

/// What the joiner learns when the inviter's confirmation verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinerConfirmed {
    /// The joiner's confirmation, to send to the inviter.
    pub confirmation: [u8; CONFIRMATION_BYTES],
}

impl JoinerPairing {
    /// Starts: returns the state and the SPAKE2 message to send.
    pub fn start(
        code: &ShortCode,
        identities: &PairingIdentities,
        seed: [u8; 32],
    ) -> (JoinerPairing, Vec<u8>) {
        let (state, message) = Spake2::<Ed25519Group>::start_a_with_rng(
            &code.password(),
            &identities.joiner_identity(),
            &identities.inviter_identity(),
            SeedRng::new(seed),
        );
        (JoinerPairing { state }, message)
    }

    /// Takes the inviter's message and confirmation: when the confirmation
    /// verifies, the inviter knew the code; returns the joiner's own.
    pub fn finish(
        self,
        inviter_message: &[u8],
        inviter_confirmation: &[u8],
    ) -> Result<JoinerConfirmed, PairingError> {
        let key = self
            .state
            .finish(inviter_message)
            .map_err(|_| PairingError::BadMessage)?;
        verify(&key, Role::Inviter, inviter_confirmation)?;
        Ok(JoinerConfirmed {
            confirmation: confirmation(&key, Role::Joiner),
        })
    }
}

/// The inviter's side after it answered the joiner's message.
#[derive(Debug)]
pub struct InviterPairing {
    key: Vec<u8>,
}

/// The inviter's answer to the joiner's first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviterReply {
    /// The inviter's SPAKE2 message.
    pub message: Vec<u8>,
    /// The inviter's confirmation.
    pub confirmation: [u8; CONFIRMATION_BYTES],
}

impl InviterPairing {
    /// Answers the joiner's message. The inviter confirms first: its
    /// confirmation reveals nothing a guesser could test offline, because
    /// the key it derives from also depends on the inviter's secret scalar.
    pub fn respond(
        code: &ShortCode,
        identities: &PairingIdentities,
        seed: [u8; 32],
        joiner_message: &[u8],
    ) -> Result<(InviterPairing, InviterReply), PairingError> {
        let (state, message) = Spake2::<Ed25519Group>::start_b_with_rng(
            &code.password(),
            &identities.joiner_identity(),
            &identities.inviter_identity(),
            SeedRng::new(seed),
        );
        let key = state
            .finish(joiner_message)
            .map_err(|_| PairingError::BadMessage)?;
        let confirmation = confirmation(&key, Role::Inviter);
        Ok((
            InviterPairing { key },
            InviterReply {
                message,
                confirmation,
            },
        ))
    }

    /// Checks the joiner's confirmation: only then is the joiner admitted.
    pub fn verify(&self, joiner_confirmation: &[u8]) -> Result<(), PairingError> {
        verify(&self.key, Role::Joiner, joiner_confirmation)
    }
}

#[derive(Clone, Copy)]
enum Role {
    Joiner,
    Inviter,
}

fn confirmation_mac(key: &[u8], role: Role) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(DOMAIN);
    mac.update(match role {
        Role::Joiner => b"/confirm/joiner",
        Role::Inviter => b"/confirm/inviter",
    });
    mac
}

fn confirmation(key: &[u8], role: Role) -> [u8; CONFIRMATION_BYTES] {
    confirmation_mac(key, role).finalize().into_bytes().into()
}

/// Checks a confirmation in constant time.
fn verify(key: &[u8], role: Role, presented: &[u8]) -> Result<(), PairingError> {
    confirmation_mac(key, role)
        .verify_slice(presented)
        .map_err(|_| PairingError::ConfirmationFailed)
}

/// A deterministic stream of bytes expanded from a seed with SHA-512, so
/// SPAKE2 draws its secret scalar from randomness the caller supplied.
struct SeedRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 64],
    used: usize,
}

impl SeedRng {
    fn new(seed: [u8; 32]) -> SeedRng {
        SeedRng {
            seed,
            counter: 0,
            block: [0; 64],
            used: 64,
        }
    }
}

impl rand_core::RngCore for SeedRng {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            if self.used == self.block.len() {
                let mut hasher = Sha512::new();
                hasher.update(DOMAIN);
                hasher.update(b"/rng/");
                hasher.update(self.seed);
                hasher.update(self.counter.to_le_bytes());
                self.block = hasher.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// The seed is the caller's fresh randomness; the expansion keeps it secret.
impl rand_core::CryptoRng for SeedRng {}

/// Where a pending short invite stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortInviteState {
    /// Waiting for its one attempt.
    Pending,
    /// An exchange is under way: any other attempt is refused, so two
    /// joins racing for one code never both run.
    Attempting,
    /// A joiner proved the code and was admitted.
    Used,
    /// An attempt failed: the code can never be used.
    Burned,
}

/// A short invite the inviter holds.
#[derive(Clone, PartialEq, Eq)]
pub struct ShortInvite {
    /// The code (the password of the exchange).
    pub code: ShortCode,
    /// Unix ms after which it is refused.
    pub expires_at_ms: u64,
    /// Where it stands.
    pub state: ShortInviteState,
}

impl std::fmt::Debug for ShortInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShortInvite")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Why an attempt at a short invite is refused before any exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShortInviteRefused {
    /// No short invite is pending here.
    #[error("INVITER_NOT_FOUND: this broker holds no pending short code")]
    None,
    /// The code expired.
    #[error(
        "INVITE_EXPIRED: the short code expired; ask for a new one with `scout mesh invite --short`"
    )]
    Expired,
    /// The code was used, burned, or is being tried by another joiner.
    #[error(
        "INVITE_USED: the short code was already used or burned; ask for a new one with `scout mesh invite --short`"
    )]
    Used,
}

impl ShortInviteRefused {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ShortInviteRefused::None => "INVITER_NOT_FOUND",
            ShortInviteRefused::Expired => "INVITE_EXPIRED",
            ShortInviteRefused::Used => "INVITE_USED",
        }
    }
}

impl ShortInvite {
    /// Makes a short invite that lives `ttl_ms` (clamped to
    /// [`SHORT_INVITE_TTL_MS_MAX`]) from `now_ms`.
    pub fn issue(random: [u8; SHORT_CODE_RANDOM_BYTES], now_ms: u64, ttl_ms: u64) -> ShortInvite {
        ShortInvite {
            code: ShortCode::from_random(random),
            expires_at_ms: now_ms.saturating_add(ttl_ms.min(SHORT_INVITE_TTL_MS_MAX)),
            state: ShortInviteState::Pending,
        }
    }

    /// Whether a joiner may try it now (what a pairing probe answers).
    pub fn is_open(&self, now_ms: u64) -> bool {
        self.state == ShortInviteState::Pending && now_ms <= self.expires_at_ms
    }

    /// Until when its broker answers unknown keys about it (see
    /// [`SHORT_INVITE_ANSWER_GRACE_MS`]).
    pub fn answer_until_ms(&self) -> u64 {
        self.expires_at_ms
            .saturating_add(SHORT_INVITE_ANSWER_GRACE_MS)
    }

    /// Where it stands for a pairing probe.
    pub fn offered(&self, now_ms: u64) -> crate::wire::OfferedCode {
        use crate::wire::OfferedCode;
        match self.state {
            ShortInviteState::Pending if now_ms > self.expires_at_ms => OfferedCode::Expired,
            ShortInviteState::Pending => OfferedCode::Pending,
            _ => OfferedCode::Used,
        }
    }

    /// Starts the one attempt: from here the code is taken until
    /// [`ShortInvite::finish`] says how the attempt ended.
    pub fn begin(&mut self, now_ms: u64) -> Result<ShortCode, ShortInviteRefused> {
        match self.state {
            ShortInviteState::Pending if now_ms > self.expires_at_ms => {
                Err(ShortInviteRefused::Expired)
            }
            ShortInviteState::Pending => {
                self.state = ShortInviteState::Attempting;
                Ok(self.code.clone())
            }
            _ => Err(ShortInviteRefused::Used),
        }
    }

    /// Ends the attempt: used on success, burned on any failure (a wrong
    /// code, a failed confirmation, a joiner that went away mid-exchange).
    pub fn finish(&mut self, succeeded: bool) {
        if self.state == ShortInviteState::Attempting {
            self.state = if succeeded {
                ShortInviteState::Used
            } else {
                ShortInviteState::Burned
            };
        }
    }
}

/// A fingerprint of a code for the audit log and logs: the first 8 hex
/// characters of a salted SHA-256, enough to tell two codes apart in a
/// log, far too little to test guesses against (40 bits of code, 32 of
/// fingerprint: every fingerprint matches hundreds of codes).
pub fn code_fingerprint(code: &ShortCode) -> String {
    let digest = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(b"/fingerprint/")
        .chain_update(code.0.as_bytes())
        .finalize();
    digest[..4]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PairingIdentities {
        PairingIdentities {
            joiner_key: [1; 32],
            inviter_key: [2; 32],
            mesh_id: MeshId([3; 16]),
        }
    }

    fn exchange(
        joiner_code: &str,
        joiner_ids: &PairingIdentities,
        inviter_code: &str,
        inviter_ids: &PairingIdentities,
    ) -> Result<(), PairingError> {
        let (joiner, message) =
            JoinerPairing::start(&ShortCode::parse(joiner_code).unwrap(), joiner_ids, [7; 32]);
        assert_eq!(message.len(), PAKE_MESSAGE_BYTES);
        let (inviter, reply) = InviterPairing::respond(
            &ShortCode::parse(inviter_code).unwrap(),
            inviter_ids,
            [8; 32],
            &message,
        )?;
        let confirmed = joiner.finish(&reply.message, &reply.confirmation)?;
        inviter.verify(&confirmed.confirmation)
    }

    #[test]
    fn the_same_code_and_identities_pair() {
        assert_eq!(exchange("ABCD-2345", &ids(), "abcd2345", &ids()), Ok(()));
    }

    #[test]
    fn a_wrong_code_fails_the_confirmation() {
        assert_eq!(
            exchange("ABCD-2345", &ids(), "ABCD-2346", &ids()),
            Err(PairingError::ConfirmationFailed)
        );
    }

    #[test]
    fn a_machine_in_the_middle_fails_even_with_the_code() {
        // The joiner saw the middle's key where the inviter's should be.
        let mut joiner_view = ids();
        joiner_view.inviter_key = [9; 32];
        assert_eq!(
            exchange("ABCD-2345", &joiner_view, "ABCD-2345", &ids()),
            Err(PairingError::ConfirmationFailed)
        );
        let mut other_mesh = ids();
        other_mesh.mesh_id = MeshId([4; 16]);
        assert_eq!(
            exchange("ABCD-2345", &other_mesh, "ABCD-2345", &ids()),
            Err(PairingError::ConfirmationFailed)
        );
    }

    #[test]
    fn a_forged_inviter_confirmation_is_refused_and_garbage_is_typed() {
        let code = ShortCode::parse("ABCD-2345").unwrap();
        let (joiner, message) = JoinerPairing::start(&code, &ids(), [7; 32]);
        let (_, reply) = InviterPairing::respond(&code, &ids(), [8; 32], &message).unwrap();
        let mut forged = reply.confirmation;
        forged[0] ^= 1;
        assert_eq!(
            joiner.finish(&reply.message, &forged),
            Err(PairingError::ConfirmationFailed)
        );
        assert_eq!(
            InviterPairing::respond(&code, &ids(), [8; 32], b"short").unwrap_err(),
            PairingError::BadMessage
        );
        // A replayed joiner message (its own side) is not a reply.
        let (joiner, message) = JoinerPairing::start(&code, &ids(), [7; 32]);
        assert_eq!(
            joiner.finish(&message, &[0; 32]),
            Err(PairingError::BadMessage)
        );
    }

    #[test]
    fn codes_are_made_from_the_alphabet_and_parsed_leniently() {
        let code = ShortCode::from_random([0xff; SHORT_CODE_RANDOM_BYTES]);
        assert_eq!(code.display(), "9999-9999");
        let code = ShortCode::from_random([0; SHORT_CODE_RANDOM_BYTES]);
        assert_eq!(code.display(), "AAAA-AAAA");
        let code = ShortCode::from_random([0x12, 0x34, 0x56, 0x78, 0x9a]);
        assert_eq!(ShortCode::parse(&code.display()), Ok(code.clone()));
        assert_eq!(
            ShortCode::parse(&code.display().to_lowercase().replace('-', " ")),
            Ok(code)
        );
        assert!(
            ShortCode::parse("ABCD-234O")
                .unwrap_err()
                .0
                .contains("never use")
        );
        assert!(ShortCode::parse("ABCD-234").is_err());
        assert!(ShortCode::parse("ABCD-23456").is_err());
        assert!(ShortCode::parse("ABCD-23É5").is_err());
        assert!(ShortCode::looks_like("ABCD-2345"));
        assert!(ShortCode::looks_like("abcd-234o"));
        assert!(!ShortCode::looks_like("scout1-abcdefgh"));
        assert!(!ShortCode::looks_like("ABCD-23456"));
        assert!(!ShortCode::looks_like("scout1-xx"));
        assert!(!ShortCode::looks_like("ABCDEF-23"));
        assert!(ShortCode::looks_like("abcd2345"));
    }

    #[test]
    fn a_short_invite_allows_one_attempt_before_it_expires() {
        let mut invite = ShortInvite::issue([1; SHORT_CODE_RANDOM_BYTES], 1_000, 500);
        assert!(invite.is_open(1_500));
        assert_eq!(invite.offered(1_500), crate::wire::OfferedCode::Pending);
        assert_eq!(invite.offered(1_501), crate::wire::OfferedCode::Expired);
        assert_eq!(invite.begin(1_501), Err(ShortInviteRefused::Expired));
        assert!(invite.begin(1_200).is_ok());
        // A second joiner racing the first is refused at once.
        assert_eq!(invite.begin(1_200), Err(ShortInviteRefused::Used));
        assert!(!invite.is_open(1_200));
        assert_eq!(invite.offered(1_200), crate::wire::OfferedCode::Used);
        invite.finish(false);
        assert_eq!(invite.state, ShortInviteState::Burned);
        assert_eq!(invite.begin(1_300), Err(ShortInviteRefused::Used));
        let mut invite = ShortInvite::issue([1; SHORT_CODE_RANDOM_BYTES], 0, u64::MAX);
        assert_eq!(invite.expires_at_ms, SHORT_INVITE_TTL_MS_MAX);
        invite.begin(0).unwrap();
        invite.finish(true);
        assert_eq!(invite.state, ShortInviteState::Used);
        assert_eq!(invite.begin(0), Err(ShortInviteRefused::Used));
    }

    #[test]
    fn fingerprints_differ_and_hide_the_code() {
        let one = ShortCode::parse("ABCD-2345").unwrap();
        let two = ShortCode::parse("ABCD-2346").unwrap();
        assert_ne!(code_fingerprint(&one), code_fingerprint(&two));
        assert_eq!(code_fingerprint(&one).len(), 8);
        assert_eq!(format!("{one:?}"), "ShortCode(…)");
    }
}
