//! Mutual TLS 1.3 between brokers with raw Ed25519 public keys (RFC 7250).
//!
//! A broker's TLS identity *is* its node key: no certificates, no CAs. Each
//! side checks the other's key against a [`TrustPolicy`] inside the
//! handshake, so a stranger's key or a revoked key never gets a connection.
//! Possession of the key is proven by the TLS handshake signature.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature_with_raw_key};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use scout_mesh::wire::ALPN;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE {
/// OID 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Length of an Ed25519 SubjectPublicKeyInfo in DER.
const ED25519_SPKI_LEN: usize = ED25519_SPKI_PREFIX.len() + 32;

/// What the local trust state says about a peer's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Admitted and not revoked.
    Member,
    /// Revoked: refused everywhere, forever.
    Revoked,
    /// Not admitted.
    Unknown,
}

/// The decisions the handshake asks of the broker's membership state.
pub trait TrustPolicy: Send + Sync + fmt::Debug + 'static {
    /// What we know about `public_key`.
    fn trust(&self, public_key: &[u8; 32]) -> Trust;

    /// Whether an unknown key may complete the handshake to present an
    /// invite (only while this broker has an unexpired invite outstanding).
    /// Such a connection may do nothing but send one join request.
    fn join_window_open(&self) -> bool;
}

/// Why the handshake refused a key; carried inside the rustls error so the
/// log line on both sides says which.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedKey {
    /// The key is not admitted to this mesh.
    #[error("UNKNOWN_PEER: key {0} is not a member of this mesh")]
    Unknown(String),
    /// The key was revoked.
    #[error("REVOKED_PEER: key {0} was revoked from this mesh")]
    Revoked(String),
    /// The peer presented something that is not an Ed25519 raw public key.
    #[error("BAD_PEER_KEY: the peer's key is not an Ed25519 raw public key")]
    BadKey,
}

impl fmt::Debug for RefusedKey {
    // rustls prints the errors it carries with `Debug`; printing the message
    // keeps the stable code readable in the peer's log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl RefusedKey {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            RefusedKey::Unknown(_) => "UNKNOWN_PEER",
            RefusedKey::Revoked(_) => "REVOKED_PEER",
            RefusedKey::BadKey => "BAD_PEER_KEY",
        }
    }
}

/// The DER SubjectPublicKeyInfo of an Ed25519 public key.
pub fn ed25519_spki(public_key: &[u8; 32]) -> Vec<u8> {
    let mut der = Vec::with_capacity(ED25519_SPKI_LEN);
    der.extend_from_slice(&ED25519_SPKI_PREFIX);
    der.extend_from_slice(public_key);
    der
}

/// The Ed25519 public key inside a DER SubjectPublicKeyInfo, if it is one.
pub fn ed25519_key_of_spki(der: &[u8]) -> Option<[u8; 32]> {
    if der.len() != ED25519_SPKI_LEN || der[..ED25519_SPKI_PREFIX.len()] != ED25519_SPKI_PREFIX {
        return None;
    }
    der[ED25519_SPKI_PREFIX.len()..].try_into().ok()
}

/// A short printable form of a key for logs (first 8 bytes, hex).
fn short_key(public_key: &[u8; 32]) -> String {
    public_key[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The crypto provider of every mesh connection: ring, TLS 1.3 only.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors building the TLS configuration from a node key.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The private key is not a PKCS#8 Ed25519 key the provider accepts.
    #[error("the node key is not a usable Ed25519 PKCS#8 key: {0}")]
    BadKey(rustls::Error),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(rustls::Error),
}

fn certified_key(
    provider: &CryptoProvider,
    pkcs8_der: &[u8],
    public_key: &[u8; 32],
) -> Result<Arc<CertifiedKey>, TlsConfigError> {
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            pkcs8_der.to_vec(),
        )))
        .map_err(TlsConfigError::BadKey)?;
    let spki = CertificateDer::from(ed25519_spki(public_key));
    Ok(Arc::new(CertifiedKey::new(vec![spki], key)))
}

/// The server side: presents our key, requires and checks the client's.
pub fn server_config(
    pkcs8_der: &[u8],
    public_key: &[u8; 32],
    trust: Arc<dyn TrustPolicy>,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let provider = provider();
    let certified = certified_key(&provider, pkcs8_der, public_key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsConfigError::Config)?
        .with_client_cert_verifier(Arc::new(PeerKeyVerifier {
            trust,
            pinned: None,
            provider,
            role: Role::Server,
        }))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified),
        ));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The client side: presents our key, and accepts the server's key when it
/// is a member, or when it equals `pinned` (the inviter's key while joining).
pub fn client_config(
    pkcs8_der: &[u8],
    public_key: &[u8; 32],
    trust: Arc<dyn TrustPolicy>,
    pinned: Option<[u8; 32]>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = provider();
    let certified = certified_key(&provider, pkcs8_der, public_key)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsConfigError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerKeyVerifier {
            trust,
            pinned,
            provider,
            role: Role::Client,
        }))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified),
        ));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// The decision on a peer's key. Revocation is asked first, so neither a
/// pin (the inviter's key while joining) nor an open join window ever lets
/// a revoked key through; then membership, then the pin, then (server side
/// only) the join window.
fn key_verdict(
    trust: &dyn TrustPolicy,
    pinned: Option<[u8; 32]>,
    role: Role,
    key: &[u8; 32],
) -> Result<(), RefusedKey> {
    match trust.trust(key) {
        Trust::Revoked => Err(RefusedKey::Revoked(short_key(key))),
        Trust::Member => Ok(()),
        Trust::Unknown if pinned == Some(*key) => Ok(()),
        Trust::Unknown if role == Role::Server && trust.join_window_open() => Ok(()),
        Trust::Unknown => Err(RefusedKey::Unknown(short_key(key))),
    }
}

/// Checks the peer's raw public key against the trust policy, and the
/// handshake signature against that key.
#[derive(Debug)]
struct PeerKeyVerifier {
    trust: Arc<dyn TrustPolicy>,
    pinned: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
    role: Role,
}

impl PeerKeyVerifier {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        // The verifier knows no address, so it does not log: the caller
        // logs the failed handshake with the peer's address, rate limited.
        let refuse = |refused: RefusedKey| {
            tracing::debug!(code = refused.code(), cause = %refused, "refused a peer key in the handshake");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(refused))),
            ))
        };
        let Some(key) = ed25519_key_of_spki(end_entity.as_ref()) else {
            return refuse(RefusedKey::BadKey);
        };
        match key_verdict(self.trust.as_ref(), self.pinned, self.role, &key) {
            Ok(()) => Ok(()),
            Err(refused) => refuse(refused),
        }
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PeerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configs allow TLS 1.3 only; a 1.2 handshake never gets here.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for PeerKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The peer's Ed25519 key of an established QUIC connection.
pub fn peer_key(connection: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    ed25519_key_of_spki(certs.first()?.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Trust, bool);

    impl TrustPolicy for Fixed {
        fn trust(&self, _public_key: &[u8; 32]) -> Trust {
            self.0
        }
        fn join_window_open(&self) -> bool {
            self.1
        }
    }

    #[test]
    fn revocation_is_checked_before_the_pin_and_the_join_window() {
        let key = [7u8; 32];
        let revoked = Fixed(Trust::Revoked, true);
        for role in [Role::Client, Role::Server] {
            assert_eq!(
                key_verdict(&revoked, Some(key), role, &key).map_err(|err| err.code()),
                Err("REVOKED_PEER")
            );
        }
        let unknown = Fixed(Trust::Unknown, true);
        assert_eq!(key_verdict(&unknown, Some(key), Role::Client, &key), Ok(()));
        assert_eq!(
            key_verdict(&unknown, None, Role::Client, &key).map_err(|err| err.code()),
            Err("UNKNOWN_PEER")
        );
        assert_eq!(key_verdict(&unknown, None, Role::Server, &key), Ok(()));
        let closed = Fixed(Trust::Unknown, false);
        assert_eq!(
            key_verdict(&closed, None, Role::Server, &key).map_err(|err| err.code()),
            Err("UNKNOWN_PEER")
        );
    }

    #[test]
    fn spki_round_trip() {
        let key = [7u8; 32];
        let der = ed25519_spki(&key);
        assert_eq!(der.len(), ED25519_SPKI_LEN);
        assert_eq!(ed25519_key_of_spki(&der), Some(key));
        assert_eq!(ed25519_key_of_spki(&der[1..]), None);
        let mut wrong_oid = der.clone();
        wrong_oid[8] = 0x71;
        assert_eq!(ed25519_key_of_spki(&wrong_oid), None);
    }
}
