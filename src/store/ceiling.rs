//! The benchmark's ceiling (`serve --bench-ceiling`): the least a write request can cost on this
//! server, one small row inserted through the same authentication, writer queue, group commit and
//! fsync as a governed step, so `fedcore bench` can state fedcore's rate as a share of it. The
//! table exists only in databases served with that flag (the benchmark's throwaway ones); nothing
//! in fedcore reads it, and `verify` does not look at it.

use super::{StoreError, Tx};
use crate::model::Timestamp;
use rusqlite::Connection;

/// Creates the ceiling's table if it is not there.
pub fn create_ceiling_table(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS bench_ceiling (
             id INTEGER PRIMARY KEY,
             at_us INTEGER NOT NULL
         )",
    )?;
    Ok(())
}

/// Inserts one row stamped `now`; returns its id.
pub fn insert_ceiling_row(tx: &Tx<'_>, now: Timestamp) -> Result<i64, StoreError> {
    let mut insert = tx
        .conn
        .prepare_cached("INSERT INTO bench_ceiling (at_us) VALUES (?1)")?;
    insert.execute([now.micros()])?;
    Ok(tx.conn.last_insert_rowid())
}
