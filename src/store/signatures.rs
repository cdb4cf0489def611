//! The signing tables of migration 3: the recorded public key, receipt signatures and signed
//! checkpoints. The private key never comes here; these are rows of text and hashes.

use super::{Db, SeqSlice, StoreError, TextSlice, Tx};
use crate::model::Timestamp;
use rusqlite::{params, Connection, OptionalExtension};

/// A public key recorded in `signing_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub key_id: String,
    pub key_name: String,
    /// 64 hex chars.
    pub public_key: String,
    pub created_at: String,
    /// Workflow receipts carried by audit entries from this seq on are signed.
    pub first_seq: i64,
    /// The key's signature over its name and `first_seq`.
    pub signature: String,
}

/// A row of `signatures`: a signature over the 32 raw bytes of `hash`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureRow {
    pub hash: String,
    pub key_id: String,
    pub signature: String,
    pub signed_at: String,
}

/// A row of `checkpoints`: the signed note of the audit head at `seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointRow {
    pub seq: i64,
    pub entry_hash: String,
    pub at: String,
    pub key_id: String,
    pub note: String,
}

/// Records `key` as the database's signing key if it has none, in its own transaction, on the
/// write connection before the writer starts. Returns the keys already recorded when `key` is not
/// among them (the caller refuses to serve), `None` when `key` is (now) the recorded key.
/// `sign_record` signs the new row's `first_seq`.
pub fn record_signing_key(
    conn: &Connection,
    key: &KeyRow,
    now: Timestamp,
    sign_record: impl FnOnce(i64) -> String,
) -> Result<Option<Vec<KeyRow>>, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let keys = recorded_signing_keys(conn)?;
        if keys.iter().any(|k| k.public_key == key.public_key) {
            return Ok(None);
        }
        if !keys.is_empty() {
            return Ok(Some(keys));
        }
        let next_seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) + 1 FROM audit_log", [], |r| {
                r.get(0)
            })?;
        conn.execute(
            "INSERT INTO signing_keys (key_id, key_name, public_key, created_at, first_seq, signature)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![key.key_id, key.key_name, key.public_key, now, next_seq, sign_record(next_seq)],
        )?;
        Ok(None)
    })();
    match &result {
        Ok(_) => conn.execute_batch("COMMIT")?,
        Err(_) => conn.execute_batch("ROLLBACK")?,
    }
    result
}

/// Whether the file has the signing tables (migration 3). `verify` and `export` read files of
/// older schemas too, which simply hold no signatures.
fn signs(db: &impl Db) -> Result<bool, StoreError> {
    Ok(super::scan::schema_version(db)? >= 3)
}

/// The recorded signing keys, oldest first (fedcore records one).
pub fn signing_keys(db: &impl Db) -> Result<Vec<KeyRow>, StoreError> {
    if !signs(db)? {
        return Ok(Vec::new());
    }
    recorded_signing_keys(db.conn())
}

/// The signing keys recorded in a database that has the signing tables (one opened for writing
/// is migrated), oldest first.
pub fn recorded_signing_keys(conn: &Connection) -> Result<Vec<KeyRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT key_id, key_name, public_key, created_at, first_seq, signature FROM signing_keys
         ORDER BY first_seq, key_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(KeyRow {
            key_id: r.get(0)?,
            key_name: r.get(1)?,
            public_key: r.get(2)?,
            created_at: r.get(3)?,
            first_seq: r.get(4)?,
            signature: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) const INSERT_SIGNATURE: &str =
    "INSERT OR IGNORE INTO signatures (hash, key_id, signature, signed_at)
     VALUES (?1, ?2, ?3, ?4)";
pub(super) const SIGNATURE_OF: &str =
    "SELECT hash, key_id, signature, signed_at FROM signatures WHERE hash = ?1";
pub(super) const INSERT_CHECKPOINT: &str =
    "INSERT INTO checkpoints (seq, entry_hash, at, key_id, note) VALUES (?1, ?2, ?3, ?4, ?5)";
pub(super) const LAST_CHECKPOINT: &str = "SELECT seq, entry_hash, at, key_id, note FROM checkpoints
     WHERE seq = (SELECT max(seq) FROM checkpoints)";

/// Stores the signature of a receipt hash. The same hash signed twice by one key is the same
/// signature (Ed25519 is deterministic), so a second insert is a no-op.
pub fn insert_signature(
    tx: &Tx<'_>,
    hash: &str,
    key_id: &str,
    signature: &str,
    at: Timestamp,
) -> Result<(), StoreError> {
    tx.conn
        .prepare_cached(INSERT_SIGNATURE)?
        .execute(params![hash, key_id, signature, at])?;
    Ok(())
}

/// The signature of `hash`, if one is stored.
pub fn signature_of(db: &impl Db, hash: &str) -> Result<Option<SignatureRow>, StoreError> {
    if !signs(db)? {
        return Ok(None);
    }
    Ok(db
        .conn()
        .prepare_cached(SIGNATURE_OF)?
        .query_row([hash], signature_from_row)
        .optional()?)
}

/// Calls `f` with each signature, in hash order.
pub fn for_each_signature<E: From<StoreError>>(
    db: &impl Db,
    f: impl FnMut(SignatureRow) -> Result<(), E>,
) -> Result<(), E> {
    let all = TextSlice::Range {
        start: None,
        end: None,
    };
    for_each_signature_in(db, &all, f)
}

/// Calls `f` with each signature of a slice, in hash order.
pub fn for_each_signature_in<E: From<StoreError>>(
    db: &impl Db,
    slice: &TextSlice,
    mut f: impl FnMut(SignatureRow) -> Result<(), E>,
) -> Result<(), E> {
    if !signs(db)? {
        return Ok(());
    }
    let (condition, bound) = slice.condition("hash");
    let sql = format!(
        "SELECT hash, key_id, signature, signed_at FROM signatures WHERE {condition} ORDER BY hash"
    );
    let mut stmt = db.conn().prepare_cached(&sql).map_err(StoreError::from)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(bound))
        .map_err(StoreError::from)?;
    while let Some(row) = rows.next().map_err(StoreError::from)? {
        f(signature_from_row(row).map_err(StoreError::from)?)?;
    }
    Ok(())
}

fn signature_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SignatureRow> {
    Ok(SignatureRow {
        hash: r.get(0)?,
        key_id: r.get(1)?,
        signature: r.get(2)?,
        signed_at: r.get(3)?,
    })
}

pub fn insert_checkpoint(tx: &Tx<'_>, c: &CheckpointRow) -> Result<(), StoreError> {
    tx.conn.prepare_cached(INSERT_CHECKPOINT)?.execute(params![
        c.seq,
        c.entry_hash,
        c.at,
        c.key_id,
        c.note
    ])?;
    Ok(())
}

/// The checkpoint with the highest seq, if any.
pub fn last_checkpoint(db: &impl Db) -> Result<Option<CheckpointRow>, StoreError> {
    if !signs(db)? {
        return Ok(None);
    }
    Ok(db
        .conn()
        .prepare_cached(LAST_CHECKPOINT)?
        .query_row([], checkpoint_from_row)
        .optional()?)
}

/// The checkpoints cut into `n` slices of about the same number of seqs.
pub fn checkpoint_slices(db: &impl Db, n: usize) -> Result<Vec<SeqSlice>, StoreError> {
    if !signs(db)? {
        return Ok(SeqSlice::split(0, 0, 1));
    }
    let (min, max): (Option<i64>, Option<i64>) = db
        .conn()
        .prepare_cached("SELECT min(seq), max(seq) FROM checkpoints")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(SeqSlice::split(min.unwrap_or(0), max.unwrap_or(0), n))
}

/// Calls `f` with each checkpoint, in seq order.
pub fn for_each_checkpoint<E: From<StoreError>>(
    db: &impl Db,
    f: impl FnMut(CheckpointRow) -> Result<(), E>,
) -> Result<(), E> {
    let all = SeqSlice {
        first: i64::MIN,
        last: i64::MAX,
    };
    for_each_checkpoint_in(db, all, f)
}

/// Calls `f` with each checkpoint of a slice, in seq order.
pub fn for_each_checkpoint_in<E: From<StoreError>>(
    db: &impl Db,
    slice: SeqSlice,
    mut f: impl FnMut(CheckpointRow) -> Result<(), E>,
) -> Result<(), E> {
    if !signs(db)? {
        return Ok(());
    }
    let mut stmt = db
        .conn()
        .prepare_cached(
            "SELECT seq, entry_hash, at, key_id, note FROM checkpoints
             WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
        )
        .map_err(StoreError::from)?;
    let mut rows = stmt
        .query([slice.first, slice.last])
        .map_err(StoreError::from)?;
    while let Some(row) = rows.next().map_err(StoreError::from)? {
        f(checkpoint_from_row(row).map_err(StoreError::from)?)?;
    }
    Ok(())
}

fn checkpoint_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CheckpointRow> {
    Ok(CheckpointRow {
        seq: r.get(0)?,
        entry_hash: r.get(1)?,
        at: r.get(2)?,
        key_id: r.get(3)?,
        note: r.get(4)?,
    })
}

/// The `entry_hash` of the audit entry `seq`, if the log holds it.
pub fn audit_entry_hash(db: &impl Db, seq: i64) -> Result<Option<String>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached("SELECT entry_hash FROM audit_log WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))
        .optional()?)
}
