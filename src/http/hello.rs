//! `GET /v1/hello?challenge=<64 hex>`: the broker proves it holds this
//! home's API token without revealing it, so the CLI knows it talks to its
//! own broker before it sends the token.
//!
//! The proof is `HMAC-SHA256(key = token, message = HELLO_DOMAIN ||
//! challenge || port)`, with the port the broker serves as two big-endian
//! bytes. The client draws a fresh challenge for every probe, so an old
//! proof cannot be replayed; the port is in the message so that a process on
//! another port cannot relay the challenge to the real broker and pass its
//! answer off as its own. No token is needed to ask: whoever asks learns
//! only MACs of messages it chose, which reveal nothing of the key.
//!
//! Both sides use this module: the route below answers, and the CLI's
//! client ([`crate::cli::client`]) checks with [`verify`].

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::Arc;

use super::ServedPort;
use super::error::ApiError;
use crate::daemon::BrokerState;

/// Separates these MACs from any other use of the token as a key.
pub const HELLO_DOMAIN: &[u8] = b"scout-local-api-hello-v1\0";

/// Bytes of a challenge: as many as the MAC's output, so guessing one is as
/// hard as forging a proof.
pub const CHALLENGE_BYTES: usize = 32;

/// The route's path.
pub const HELLO_PATH: &str = "/v1/hello";

/// The body of `GET /v1/hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Node name.
    pub node: String,
    /// Node id.
    pub node_id: String,
    /// The broker's process id.
    pub pid: u32,
    /// The port the broker serves, covered by the proof.
    pub port: u16,
    /// The MAC, lower-case hex.
    pub proof: String,
}

/// The proof for `challenge` on `port` with `token`.
pub fn proof(token: &str, challenge: &[u8; CHALLENGE_BYTES], port: u16) -> [u8; 32] {
    mac(token, challenge, port).finalize().into_bytes().into()
}

/// Whether `proof_hex` is the proof for `challenge` on `port` with `token`,
/// compared in constant time.
pub fn verify(token: &str, challenge: &[u8; CHALLENGE_BYTES], port: u16, proof_hex: &str) -> bool {
    let Ok(presented) = hex::decode(proof_hex) else {
        return false;
    };
    mac(token, challenge, port).verify_slice(&presented).is_ok()
}

/// A challenge from its hex form: exactly [`CHALLENGE_BYTES`] bytes.
pub fn parse_challenge(text: &str) -> Option<[u8; CHALLENGE_BYTES]> {
    hex::decode(text).ok()?.try_into().ok()
}

fn mac(token: &str, challenge: &[u8; CHALLENGE_BYTES], port: u16) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(HELLO_DOMAIN);
    mac.update(challenge);
    mac.update(&port.to_be_bytes());
    mac
}

/// The routes of this family (no token needed).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new().route(HELLO_PATH, get(hello))
}

#[derive(Debug, Deserialize)]
struct HelloQuery {
    challenge: String,
}

async fn hello(
    State(state): State<Arc<BrokerState>>,
    Extension(ServedPort(port)): Extension<ServedPort>,
    query: Result<Query<HelloQuery>, QueryRejection>,
) -> Result<Json<Hello>, ApiError> {
    let invalid = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_CHALLENGE",
            format!(
                "send `?challenge=` with {} random bytes in hex",
                CHALLENGE_BYTES
            ),
        )
    };
    let Query(query) = query.map_err(|_| invalid())?;
    let challenge = parse_challenge(&query.challenge).ok_or_else(invalid)?;
    Ok(Json(Hello {
        node: state.node_name.as_str().to_owned(),
        node_id: state.node_id.clone(),
        pid: std::process::id(),
        port,
        proof: hex::encode(proof(&state.token, &challenge, port)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_for_its_token_challenge_and_port() {
        let challenge = [7u8; CHALLENGE_BYTES];
        let good = hex::encode(proof("token-a", &challenge, 3100));
        assert!(verify("token-a", &challenge, 3100, &good));
        assert!(!verify("token-b", &challenge, 3100, &good));
        assert!(!verify("token-a", &[8u8; CHALLENGE_BYTES], 3100, &good));
        assert!(!verify("token-a", &challenge, 3101, &good));
        assert!(!verify("token-a", &challenge, 3100, "zz"));
        assert!(!verify("token-a", &challenge, 3100, &good[..10]));
    }

    #[test]
    fn challenges_are_exactly_32_bytes_of_hex() {
        assert!(parse_challenge(&"ab".repeat(32)).is_some());
        assert!(parse_challenge(&"ab".repeat(31)).is_none());
        assert!(parse_challenge(&"ab".repeat(33)).is_none());
        assert!(parse_challenge(&"zz".repeat(32)).is_none());
    }
}
