//! What someone holding a copy of the file could try, for the proof's negative scenarios: a plain
//! UPDATE of the audit log (which the triggers refuse), and the same edit after dropping the
//! triggers first (which the verifier must catch). Only ever run on copies.

use super::StoreError;
use rusqlite::{params, Connection};
use std::path::Path;

/// Tries `UPDATE audit_log SET reason = ? WHERE seq = ?` with the triggers in place. Returns the
/// database's refusal message, or `None` if the update went through.
pub fn try_update_audit_reason(
    path: &Path,
    seq: i64,
    reason: &str,
) -> Result<Option<String>, StoreError> {
    let conn = Connection::open(path)?;
    match conn.execute(
        "UPDATE audit_log SET reason = ?1 WHERE seq = ?2",
        params![reason, seq],
    ) {
        Ok(_) => Ok(None),
        Err(e) => Ok(Some(e.to_string())),
    }
}

/// Rewrites one entry's reason as a careful attacker would: drop the UPDATE trigger, edit, and
/// put the trigger back so the schema looks untouched.
pub fn tamper_audit_reason(path: &Path, seq: i64, reason: &str) -> Result<(), StoreError> {
    let conn = Connection::open(path)?;
    let trigger: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'audit_log_no_update'",
        [],
        |r| r.get(0),
    )?;
    conn.execute_batch("DROP TRIGGER audit_log_no_update")?;
    conn.execute(
        "UPDATE audit_log SET reason = ?1 WHERE seq = ?2",
        params![reason, seq],
    )?;
    conn.execute_batch(&trigger)?;
    Ok(())
}
