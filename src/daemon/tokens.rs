//! Scoped tokens made with `scout tokens create`: the broker's in-memory
//! index of the live ones, by the SHA-256 digest of their secret.
//!
//! The store (`store::tokens`) is the record; this index answers the
//! token check on every request without a read. It is loaded when the
//! broker starts and changed only together with the store (create and
//! revoke write the row first), so the two agree. Uses are counted here:
//! the first use of a token in a broker run is audited and written at
//! once, later ones update the last use in memory and reach the store at
//! most every [`LAST_USED_PERSIST_INTERVAL_MS`].

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::http::scope::{Caller, CallerKind, Scope};
use crate::store::tokens::TokenRow;

/// Prefix of a created token's secret, so a leaked one is recognisable in
/// logs and never mistaken for the operator token or an agent credential.
pub const TOKEN_PREFIX: &str = "sct_";

/// Prefix of a token's id.
pub const TOKEN_ID_PREFIX: &str = "tok_";

/// Most tokens live (not revoked) at once: a token is made by a person or
/// an agent for a purpose; thousands of them are a leak or a loop, and the
/// index is held in memory.
pub const LIVE_TOKENS_MAX: usize = 1024;

/// How often, at most, a token's last use is written to the store: often
/// enough for `scout tokens list` to tell a token in use from an idle one,
/// rarely enough that a busy token does not turn every request into a
/// write.
pub const LAST_USED_PERSIST_INTERVAL_MS: i64 = 60_000;

#[derive(Debug, Clone)]
struct LiveToken {
    token_id: String,
    scope: Scope,
    agent: Option<String>,
    expires_at_ms: Option<i64>,
    /// Last use seen in this run.
    last_used_at_ms: Option<i64>,
    /// When the last use was last written.
    persisted_at_ms: Option<i64>,
}

/// What a presented secret turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// Not a created token (another kind of credential may know it).
    NotOurs,
    /// A created token that is unknown, revoked or expired.
    Refused,
    /// A live token.
    Accepted {
        /// Who it makes the caller.
        caller: Caller,
        /// Whether this is its first use in this broker run (audit it).
        first_use: bool,
        /// Whether its last use should be written now.
        persist: bool,
    },
}

/// The live created tokens of this broker; one lock, held only for map
/// operations.
#[derive(Debug, Default)]
pub struct ScopedTokens {
    by_digest: Mutex<HashMap<[u8; 32], LiveToken>>,
}

impl ScopedTokens {
    /// The index of `rows` (the store's live tokens).
    pub fn from_rows(rows: Vec<TokenRow>) -> ScopedTokens {
        let tokens = ScopedTokens::default();
        for row in rows {
            tokens.insert(&row);
        }
        tokens
    }

    /// Adds a token the store now holds; rows with an unreadable scope or
    /// digest are skipped (they cannot authenticate anyone).
    pub fn insert(&self, row: &TokenRow) {
        let (Some(scope), Some(digest)) = (Scope::parse(&row.scope), decode_digest(&row.digest))
        else {
            tracing::warn!(token_id = %row.token_id, "skipped a malformed token row");
            return;
        };
        if row.revoked_at_ms.is_some() {
            return;
        }
        self.lock().insert(
            digest,
            LiveToken {
                token_id: row.token_id.clone(),
                scope,
                agent: row.agent.clone(),
                expires_at_ms: row.expires_at_ms,
                last_used_at_ms: row.last_used_at_ms,
                persisted_at_ms: None,
            },
        );
    }

    /// Forgets a revoked token.
    pub fn remove(&self, token_id: &str) {
        self.lock().retain(|_, token| token.token_id != token_id);
    }

    /// Live tokens, expired ones included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last use of a token seen in this run.
    pub fn last_used(&self, token_id: &str) -> Option<i64> {
        self.lock()
            .values()
            .find(|token| token.token_id == token_id)
            .and_then(|token| token.last_used_at_ms)
    }

    /// Checks a presented secret at `now_ms` and, when it is live, counts
    /// the use.
    pub fn check(&self, presented: &str, now_ms: i64) -> TokenCheck {
        if !presented.starts_with(TOKEN_PREFIX) {
            return TokenCheck::NotOurs;
        }
        // Keyed by digest: the lookup's timing says nothing about how much
        // of a guessed secret was right.
        let mut tokens = self.lock();
        let Some(token) = tokens.get_mut(&digest(presented)) else {
            return TokenCheck::Refused;
        };
        if token.expires_at_ms.is_some_and(|expires| expires <= now_ms) {
            return TokenCheck::Refused;
        }
        let first_use = token.persisted_at_ms.is_none();
        let persist = token
            .persisted_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= LAST_USED_PERSIST_INTERVAL_MS);
        token.last_used_at_ms = Some(now_ms);
        if persist {
            token.persisted_at_ms = Some(now_ms);
        }
        let kind = CallerKind::Token;
        TokenCheck::Accepted {
            caller: Caller {
                kind,
                token_id: Some(token.token_id.clone()),
                scope: token.scope,
                agent: token.agent.clone(),
            },
            first_use,
            persist,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], LiveToken>> {
        // The map stays consistent through a panic elsewhere; keep serving.
        self.by_digest
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The SHA-256 digest of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A digest as the store keeps it: lower-case hex.
pub fn digest_hex(secret: &str) -> String {
    hex(&digest(secret))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (idx, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(idx * 2..idx * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(secret: &str, expires_at_ms: Option<i64>) -> TokenRow {
        TokenRow {
            token_id: "tok_1".into(),
            name: None,
            scope: "read".into(),
            agent: None,
            digest: digest_hex(secret),
            created_by: "operator".into(),
            created_at_ms: 0,
            expires_at_ms,
            last_used_at_ms: None,
            revoked_at_ms: None,
        }
    }

    #[test]
    fn a_live_token_is_accepted_once_as_first_use_until_removed() {
        let tokens = ScopedTokens::from_rows(vec![row("sct_abc", None)]);
        assert_eq!(tokens.check("nope", 1), TokenCheck::NotOurs);
        assert_eq!(tokens.check("sct_wrong", 1), TokenCheck::Refused);
        let TokenCheck::Accepted {
            caller, first_use, ..
        } = tokens.check("sct_abc", 1)
        else {
            panic!("refused")
        };
        assert!(first_use);
        assert_eq!(caller.scope, Scope::Read);
        let TokenCheck::Accepted {
            first_use, persist, ..
        } = tokens.check("sct_abc", 2)
        else {
            panic!("refused")
        };
        assert!(!first_use && !persist);
        assert_eq!(tokens.last_used("tok_1"), Some(2));
        tokens.remove("tok_1");
        assert_eq!(tokens.check("sct_abc", 3), TokenCheck::Refused);
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = ScopedTokens::from_rows(vec![row("sct_abc", Some(10))]);
        assert!(matches!(
            tokens.check("sct_abc", 9),
            TokenCheck::Accepted { .. }
        ));
        assert_eq!(tokens.check("sct_abc", 10), TokenCheck::Refused);
    }
}
