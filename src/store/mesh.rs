//! The mesh's durable state: replicated registry records and their version
//! vector, and the invites this broker issued.
//!
//! Registry records are stored as the bytes they travel as, so a restarted
//! broker hands its replica exactly what it had and catches up with a delta
//! instead of a full resync. A row that no longer decodes is skipped and
//! counted, never fatal: its origin is left out of the restored version
//! vector ([`StoredRegistry::vv_for_restore`]), so the replica fetches that
//! origin's records again from a peer.
//!
//! Rows written before records were signed hold the same fields without
//! the origin's key and signature. They are read as unsigned records, and
//! the replica re-signs its own and drops the others, fetching their signed
//! copies from peers (see `scout_mesh::sync::Replica::restore`).

use crdts::{CmRDT, VClock};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use scout_mesh::membership::{IssuedInvite, JoinRefused};
use scout_mesh::wire::{Hlc, NodeId, Record, RecordBody, RecordKey, RecordSignature};

use super::StoreError;

/// What the store holds of the registry.
#[derive(Debug, Default)]
pub struct StoredRegistry {
    /// Every decodable record, tombstones included.
    pub records: Vec<Record>,
    /// The version vector persisted with them.
    pub vv: VClock<NodeId>,
    /// Rows that could not be decoded (left in place, fetched again later).
    pub skipped: usize,
    /// The origins of those rows.
    pub skipped_origins: std::collections::BTreeSet<NodeId>,
}

impl StoredRegistry {
    /// The version vector to restore the replica with: without the
    /// origins of rows that did not decode (a record of an older protocol),
    /// so that anti-entropy fetches their records again instead of counting
    /// them held. `me` keeps its counter: its own sequence numbers never go
    /// back, and it publishes its own records anew.
    pub fn vv_for_restore(&self, me: &NodeId) -> VClock<NodeId> {
        let mut vv = self.vv.clone();
        for origin in self.skipped_origins.iter().filter(|origin| *origin != me) {
            vv.dots.remove(origin);
        }
        vv
    }
}

/// Loads the registry.
pub fn load_registry(connection: &Connection) -> Result<StoredRegistry, StoreError> {
    let mut stored = StoredRegistry::default();
    let mut statement = connection.prepare("SELECT origin, record FROM registry_records")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let bytes: Vec<u8> = row.get(1)?;
        match decode_record(&bytes) {
            Some(record) => stored.records.push(record),
            None => {
                stored.skipped += 1;
                let origin: String = row.get(0)?;
                if let Ok(origin) = NodeId::parse(&origin) {
                    stored.skipped_origins.insert(origin);
                }
            }
        }
    }
    let mut statement = connection.prepare("SELECT origin, counter FROM registry_vv")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let origin: String = row.get(0)?;
        let counter: i64 = row.get(1)?;
        if let (Ok(origin), Ok(counter)) = (NodeId::parse(&origin), u64::try_from(counter)) {
            stored.vv.apply(crdts::Dot::new(origin, counter));
        }
    }
    Ok(stored)
}

/// A record as rows written before records were signed hold it.
#[derive(serde::Deserialize)]
struct UnsignedRecord {
    key: RecordKey,
    dot: crdts::Dot<NodeId>,
    hlc: Hlc,
    body: Option<RecordBody>,
}

/// A stored record, signed, or unsigned from an older release (with an
/// empty key and signature, which no record verifies with).
fn decode_record(bytes: &[u8]) -> Option<Record> {
    if let Ok(record) = postcard::from_bytes::<Record>(bytes) {
        return Some(record);
    }
    let unsigned = postcard::from_bytes::<UnsignedRecord>(bytes).ok()?;
    Some(Record {
        key: unsigned.key,
        dot: unsigned.dot,
        hlc: unsigned.hlc,
        body: unsigned.body,
        origin_key: [0; 32],
        signature: RecordSignature::UNSIGNED,
    })
}

/// Stores records (each replacing the stored version of its key) and the
/// version vector, as the replica asks: in the caller's transaction.
/// `now_ms` (unix ms) stamps the rows written.
pub fn persist(
    transaction: &Transaction<'_>,
    records: &[Record],
    vv: &VClock<NodeId>,
    now_ms: u64,
) -> Result<(), StoreError> {
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    let mut upsert = transaction.prepare_cached(
        "INSERT INTO registry_records (origin, kind, name, counter, tombstone, record, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (origin, kind, name) DO UPDATE SET
             counter = excluded.counter, tombstone = excluded.tombstone,
             record = excluded.record, updated_at_ms = excluded.updated_at_ms",
    )?;
    for record in records {
        let bytes = postcard::to_allocvec(record).map_err(|err| StoreError::InvalidRequest {
            detail: format!("cannot encode a registry record: {err}"),
        })?;
        upsert.execute(params![
            record.key.origin.as_str(),
            record.key.kind.as_str(),
            record.key.name,
            i64::try_from(record.dot.counter).unwrap_or(i64::MAX),
            record.is_tombstone(),
            bytes,
            now,
        ])?;
    }
    let mut set_vv = transaction.prepare_cached(
        "INSERT INTO registry_vv (origin, counter) VALUES (?1, ?2)
         ON CONFLICT (origin) DO UPDATE SET counter = excluded.counter",
    )?;
    for (origin, counter) in &vv.dots {
        set_vv.execute(params![
            origin.as_str(),
            i64::try_from(*counter).unwrap_or(i64::MAX)
        ])?;
    }
    Ok(())
}

/// Deletes collected tombstones.
pub fn forget(transaction: &Transaction<'_>, keys: &[RecordKey]) -> Result<(), StoreError> {
    let mut delete = transaction.prepare_cached(
        "DELETE FROM registry_records WHERE origin = ?1 AND kind = ?2 AND name = ?3",
    )?;
    for key in keys {
        delete.execute(params![key.origin.as_str(), key.kind.as_str(), key.name])?;
    }
    Ok(())
}

/// Forgets the whole registry, for a broker entering another mesh.
pub fn wipe_registry(transaction: &Transaction<'_>) -> Result<(), StoreError> {
    transaction.execute_batch("DELETE FROM registry_records; DELETE FROM registry_vv;")?;
    Ok(())
}

fn invite_key(invite_id: &[u8; 8]) -> String {
    invite_id.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Stores an issued invite, created at `now_ms` (unix ms).
pub fn insert_invite(
    transaction: &Transaction<'_>,
    invite: &IssuedInvite,
    now_ms: u64,
) -> Result<(), StoreError> {
    transaction.execute(
        "INSERT INTO invites (invite_id, secret_hash, expires_at_ms, used_by, created_at_ms)
         VALUES (?1, ?2, ?3, NULL, ?4)",
        params![
            invite_key(&invite.invite_id),
            invite.secret_hash.to_vec(),
            i64::try_from(invite.expires_at_ms).unwrap_or(i64::MAX),
            i64::try_from(now_ms).unwrap_or(i64::MAX),
        ],
    )?;
    Ok(())
}

/// An issued invite by id.
pub fn get_invite(
    connection: &Connection,
    invite_id: &[u8; 8],
) -> Result<Option<IssuedInvite>, StoreError> {
    let key = invite_key(invite_id);
    let row = connection
        .query_row(
            "SELECT secret_hash, expires_at_ms, used_by FROM invites WHERE invite_id = ?1",
            [&key],
            |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((hash, expires_at_ms, used_by)) = row else {
        return Ok(None);
    };
    let malformed = |detail: String| StoreError::MalformedRow {
        table: "invites",
        id: key.clone(),
        detail,
    };
    let secret_hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| malformed("secret hash is not 32 bytes".into()))?;
    let used_by = used_by
        .map(|id| NodeId::parse(&id).map_err(|err| malformed(err.to_string())))
        .transpose()?;
    Ok(Some(IssuedInvite {
        invite_id: *invite_id,
        secret_hash,
        expires_at_ms: u64::try_from(expires_at_ms).unwrap_or(0),
        used_by,
    }))
}

/// How a redemption of an invite ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// This call claimed the invite for the joiner: admit it.
    Redeemed,
    /// The same joiner had claimed it before (its first answer was lost):
    /// admitting it again changes nothing.
    RedeemedBefore,
    /// The invite cannot be used by this joiner; nothing is admitted.
    Refused(JoinRefused),
}

/// Redeems an invite for `joiner` with one conditional write: the row is
/// claimed only if it is unused and unexpired, and the number of rows the
/// write changed decides. Two joins racing for one invite therefore cannot
/// both win, whatever they read before: the second finds the row claimed
/// and gets [`JoinRefused::Used`].
pub fn redeem_invite(
    transaction: &Transaction<'_>,
    invite_id: &[u8; 8],
    joiner: &NodeId,
    now_ms: u64,
) -> Result<Redemption, StoreError> {
    let claimed = transaction.execute(
        "UPDATE invites SET used_by = ?2, used_at_ms = ?3
         WHERE invite_id = ?1 AND used_by IS NULL AND expires_at_ms >= ?3",
        params![
            invite_key(invite_id),
            joiner.as_str(),
            i64::try_from(now_ms).unwrap_or(i64::MAX),
        ],
    )?;
    if claimed == 1 {
        return Ok(Redemption::Redeemed);
    }
    // Nothing claimed: the row says why.
    Ok(match get_invite(transaction, invite_id)? {
        None => Redemption::Refused(JoinRefused::Unknown),
        Some(issued) => match issued.used_by {
            Some(used_by) if &used_by == joiner => Redemption::RedeemedBefore,
            Some(_) => Redemption::Refused(JoinRefused::Used),
            None => Redemption::Refused(JoinRefused::Expired),
        },
    })
}

/// The latest expiry among invites still unused at `now_ms`, if any.
pub fn open_invites_until(connection: &Connection, now_ms: u64) -> Result<Option<u64>, StoreError> {
    let until: Option<i64> = connection.query_row(
        "SELECT max(expires_at_ms) FROM invites WHERE used_by IS NULL AND expires_at_ms >= ?1",
        [i64::try_from(now_ms).unwrap_or(i64::MAX)],
        |row| row.get(0),
    )?;
    Ok(until.and_then(|until| u64::try_from(until).ok()))
}

/// How many invites can still be used at `now_ms`: while any can, unknown
/// keys may finish a handshake to present one.
pub fn open_invites(connection: &Connection, now_ms: u64) -> Result<usize, StoreError> {
    let count: i64 = connection.query_row(
        "SELECT count(*) FROM invites WHERE used_by IS NULL AND expires_at_ms >= ?1",
        [i64::try_from(now_ms).unwrap_or(i64::MAX)],
        |row| row.get(0),
    )?;
    Ok(usize::try_from(count).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};
    use crdts::Dot;
    use scout_mesh::wire::{NodeBody, RecordKind};

    fn node_record(key: &ed25519_dalek::SigningKey) -> Record {
        let origin = NodeId::of_public_key(&key.verifying_key().to_bytes());
        let mut record = Record {
            key: RecordKey {
                origin: origin.clone(),
                kind: RecordKind::Node,
                name: String::new(),
            },
            dot: Dot::new(origin, 1),
            hlc: Hlc {
                wall_ms: 7,
                logical: 0,
            },
            body: Some(RecordBody::Node(NodeBody {
                node_name: "laptop".into(),
                addresses: vec![],
                http_port: 3100,
                scout_version: "0.1.0".into(),
                protocol_version: 2,
                via: Vec::new(),
            })),
            origin_key: [0; 32],
            signature: RecordSignature::UNSIGNED,
        };
        scout_mesh::registry::sign(&mut record, key);
        record
    }

    /// Signed records keep their signature in a real SQLite file, and a row
    /// written before records were signed reads back as an unsigned record
    /// instead of being skipped.
    #[test]
    fn signatures_survive_the_store_and_unsigned_rows_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path().join("scout.db"), StoreOptions::default()).unwrap();
        let signed = node_record(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]));
        let legacy = node_record(&ed25519_dalek::SigningKey::from_bytes(&[2; 32]));
        let legacy_bytes =
            postcard::to_allocvec(&(&legacy.key, &legacy.dot, &legacy.hlc, &legacy.body)).unwrap();
        let records = vec![signed.clone()];
        store
            .write_blocking(move |tx| {
                persist(tx, &records, &VClock::new(), 0)?;
                tx.execute(
                    "INSERT INTO registry_records (origin, kind, name, counter, tombstone, record, updated_at_ms)
                     VALUES (?1, 'node', '', 1, 0, ?2, 0)",
                    params![legacy.key.origin.as_str(), legacy_bytes],
                )?;
                Ok(())
            })
            .unwrap();
        let stored = store.read(load_registry).unwrap();
        assert_eq!(stored.skipped, 0);
        assert_eq!(stored.records.len(), 2);
        let reread = stored
            .records
            .iter()
            .find(|record| record.key == signed.key)
            .unwrap();
        assert_eq!(reread, &signed);
        scout_mesh::registry::validate(reread).unwrap();
        let unsigned = stored
            .records
            .iter()
            .find(|record| record.key != signed.key)
            .unwrap();
        assert_eq!(unsigned.signature, RecordSignature::UNSIGNED);
        assert_eq!(
            scout_mesh::registry::validate(unsigned).unwrap_err().code(),
            "INVALID_SIGNATURE"
        );
        store.close().unwrap();
    }

    /// A row of an older protocol that no longer decodes is skipped, and
    /// its origin leaves the version vector the replica restores with, so
    /// anti-entropy fetches it again; this node's own counter stays.
    #[test]
    fn an_undecodable_row_takes_its_origin_out_of_the_restored_vector() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path().join("scout.db"), StoreOptions::default()).unwrap();
        let me = node_record(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]));
        let other = node_record(&ed25519_dalek::SigningKey::from_bytes(&[2; 32]));
        let me_id = me.key.origin.clone();
        let other_id = other.key.origin.clone();
        let mut vv = VClock::new();
        vv.apply(Dot::new(me_id.clone(), 4));
        vv.apply(Dot::new(other_id.clone(), 3));
        let rows = [(me_id.clone(), 4), (other_id.clone(), 3)];
        store
            .write_blocking(move |tx| {
                persist(tx, &[], &vv, 0)?;
                for (origin, counter) in rows {
                    tx.execute(
                        "INSERT INTO registry_records (origin, kind, name, counter, tombstone, record, updated_at_ms)
                         VALUES (?1, 'node', '', ?2, 0, ?3, 0)",
                        params![origin.as_str(), counter, vec![0xffu8; 7]],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let stored = store.read(load_registry).unwrap();
        assert_eq!(stored.skipped, 2);
        assert!(stored.records.is_empty());
        assert_eq!(stored.vv.get(&other_id), 3);
        let restored = stored.vv_for_restore(&me_id);
        assert_eq!(restored.get(&other_id), 0, "fetched again");
        assert_eq!(
            restored.get(&me_id),
            4,
            "own sequence numbers never go back"
        );
        store.close().unwrap();
    }
}
