//! The `api_tokens` table: tokens made with `scout tokens create`, each
//! with a scope, an optional agent it acts as, an expiry, its last use and
//! its revocation. Only the SHA-256 digest of a token's secret is stored
//! (lower-case hex); the secret is shown once, when it is made.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde::{Deserialize, Serialize};

use super::{StoreError, list_limit};

/// One stored token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRow {
    /// Its id (`tok_…`), for `scout tokens revoke`.
    pub token_id: String,
    /// The name it was given, if any.
    pub name: Option<String>,
    /// `read`, `agent` or `operator`.
    pub scope: String,
    /// The agent instance it acts as (agent scope).
    pub agent: Option<String>,
    /// The SHA-256 digest of the secret, hex.
    #[serde(skip)]
    pub digest: String,
    /// Who made it (an audit actor).
    pub created_by: String,
    /// When it was made (unix ms).
    pub created_at_ms: i64,
    /// When it stops working (unix ms), if ever.
    pub expires_at_ms: Option<i64>,
    /// When a request last used it (unix ms), if ever.
    pub last_used_at_ms: Option<i64>,
    /// When it was revoked (unix ms), if it was.
    pub revoked_at_ms: Option<i64>,
}

const COLUMNS: &str = "token_id, name, scope, agent, digest, created_by, created_at_ms, \
                       expires_at_ms, last_used_at_ms, revoked_at_ms";

impl TokenRow {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<TokenRow> {
        Ok(TokenRow {
            token_id: row.get(0)?,
            name: row.get(1)?,
            scope: row.get(2)?,
            agent: row.get(3)?,
            digest: row.get(4)?,
            created_by: row.get(5)?,
            created_at_ms: row.get(6)?,
            expires_at_ms: row.get(7)?,
            last_used_at_ms: row.get(8)?,
            revoked_at_ms: row.get(9)?,
        })
    }
}

/// Stores a new token.
pub fn insert(transaction: &Transaction<'_>, token: &TokenRow) -> Result<(), StoreError> {
    transaction.execute(
        &format!(
            "INSERT INTO api_tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            token.token_id,
            token.name,
            token.scope,
            token.agent,
            token.digest,
            token.created_by,
            token.created_at_ms,
            token.expires_at_ms,
            token.last_used_at_ms,
            token.revoked_at_ms
        ],
    )?;
    Ok(())
}

/// Every token, newest first, up to `limit`.
pub fn list(connection: &Connection, limit: usize) -> Result<Vec<TokenRow>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM api_tokens ORDER BY created_at_ms DESC, token_id LIMIT ?1"
    ))?;
    let rows = statement.query_map(params![list_limit(limit)], TokenRow::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The tokens that are not revoked (expired ones included: they answer
/// `UNAUTHORIZED` until listed as expired).
pub fn live(connection: &Connection) -> Result<Vec<TokenRow>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE revoked_at_ms IS NULL"
    ))?;
    let rows = statement.query_map([], TokenRow::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks a token revoked at `now_ms`; the row, or `None` when there is no
/// such token. Revoking a revoked token changes nothing.
pub fn revoke(
    transaction: &Transaction<'_>,
    token_id: &str,
    now_ms: i64,
) -> Result<Option<TokenRow>, StoreError> {
    transaction.execute(
        "UPDATE api_tokens SET revoked_at_ms = ?2 WHERE token_id = ?1 AND revoked_at_ms IS NULL",
        params![token_id, now_ms],
    )?;
    Ok(transaction
        .query_row(
            &format!("SELECT {COLUMNS} FROM api_tokens WHERE token_id = ?1"),
            params![token_id],
            TokenRow::from_row,
        )
        .optional()?)
}

/// Records a use of a token.
pub fn touch(transaction: &Transaction<'_>, token_id: &str, now_ms: i64) -> Result<(), StoreError> {
    transaction.execute(
        "UPDATE api_tokens SET last_used_at_ms = max(coalesce(last_used_at_ms, 0), ?2)
         WHERE token_id = ?1",
        params![token_id, now_ms],
    )?;
    Ok(())
}
