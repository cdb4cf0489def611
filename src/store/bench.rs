//! What `fedcore bench` needs from the store.
//!
//! The ceiling (`serve --bench-ceiling`): the least a write request can cost on this server, one
//! small row inserted through the same authentication, writer queue, group commit and fsync as a
//! governed step, so the benchmark can state fedcore's rate as a share of it. The table exists
//! only in databases served with that flag (the benchmark's throwaway ones); nothing in fedcore
//! reads it, and `verify` does not look at it.
//!
//! And the size accounting of a benchmark's database: bytes per table, indexes included.

use super::Db;
use super::{StoreError, Tx};
use crate::model::Timestamp;
use rusqlite::Connection;
use std::path::Path;

/// The ceiling's table, left out of `sizes`.
const CEILING_TABLE: &str = "bench_ceiling";

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

/// A database's size: its runs and audit entries, and the bytes each table holds with its
/// indexes (largest first), from SQLite's `dbstat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    pub runs: u64,
    pub audit_entries: u64,
    pub tables: Vec<(String, u64)>,
}

impl Sizes {
    /// What was added since `before` (everything when `None`).
    pub fn minus(self, before: Option<&Sizes>) -> Sizes {
        let Some(before) = before else {
            return self;
        };
        let earlier = |table: &str| {
            before
                .tables
                .iter()
                .find(|(name, _)| name == table)
                .map_or(0, |(_, bytes)| *bytes)
        };
        let mut tables: Vec<(String, u64)> = self
            .tables
            .into_iter()
            .map(|(table, bytes)| {
                let added = bytes.saturating_sub(earlier(&table));
                (table, added)
            })
            .collect();
        tables.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Sizes {
            runs: self.runs.saturating_sub(before.runs),
            audit_entries: self.audit_entries.saturating_sub(before.audit_entries),
            tables,
        }
    }
}

/// Measures the database at `path`, read-only (leaving no file behind); the ceiling's table is
/// left out.
pub fn sizes(path: &Path) -> Result<Sizes, StoreError> {
    let reader = super::open_read_only(path)?;
    let conn = reader.conn();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    let runs = count("SELECT count(*) FROM runs")? as u64;
    let audit_entries = count("SELECT count(*) FROM audit_log")? as u64;
    let mut statement = conn.prepare(
        "SELECT m.tbl_name, sum(d.pgsize) FROM dbstat AS d JOIN sqlite_master AS m
           ON m.name = d.name
         WHERE m.tbl_name <> ?1
         GROUP BY m.tbl_name ORDER BY 2 DESC, 1",
    )?;
    let tables = statement
        .query_map([CEILING_TABLE], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Sizes {
        runs,
        audit_entries,
        tables,
    })
}
