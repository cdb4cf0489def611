//! Streaming reads for `verify`: every table walked row by row through one prepared statement,
//! each row handed to a callback as a model object and then dropped, so a log of millions of
//! entries is checked in constant memory. A row that cannot be read back as what fedcore wrote is
//! `StoreError::BadRow` naming the table and the row, which `verify` reports as a broken object
//! rather than as a failure to check. Also here: the immutability triggers the schema declares and
//! the ones a database holds.

use super::queries::{
    audit_from_row, audit_into, decision_from_row, definition_from_row, fill_approvals,
    gate_from_row, gate_select, policy_from_row, run_from_row, step_from_row, token_from_row,
    AUDIT_COLUMNS, DECISION_COLUMNS, DEFINITION_COLUMNS, POLICY_COLUMNS, RUN_COLUMNS, STEP_COLUMNS,
    TOKEN_COLUMNS,
};
use super::{Db, StoreError, MIGRATIONS};
use crate::model::*;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Params, Row};

/// An audit entry reduced to what ties it to a run's receipts and lifecycle: what it did, to
/// what, from and to which status, why, with what evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLink {
    pub seq: i64,
    pub action: String,
    pub subject: String,
    pub payload_hash: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub reason: Option<String>,
    /// The entry's `at`, as stored.
    pub at: String,
}

/// A row that names a run, or a decision, that is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub table: &'static str,
    /// The row, named as `verify` names rows of that table.
    pub key: String,
    pub field: &'static str,
    pub missing: String,
}

/// A trigger as the schema declares it: its name and the exact `CREATE TRIGGER` text that
/// SQLite keeps in `sqlite_master.sql` (the statement without its final semicolon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSql {
    pub name: String,
    pub sql: String,
}

/// A part of a table with a text key, for reading the table in slices (on several connections at
/// once): the rows whose key is NULL, or those from `start` (inclusive) to `end` (exclusive),
/// without a bound where `None`. The slices of one split hold every row once, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextSlice {
    Null,
    Range {
        start: Option<String>,
        end: Option<String>,
    },
}

impl TextSlice {
    /// The whole table, NULL keys first, cut before each of `bounds` (ascending).
    pub fn split_at(bounds: &[String]) -> Vec<TextSlice> {
        let mut slices = vec![TextSlice::Null];
        let mut start = None;
        for bound in bounds {
            let end = Some(bound.clone());
            slices.push(TextSlice::Range {
                start,
                end: end.clone(),
            });
            start = end;
        }
        slices.push(TextSlice::Range { start, end: None });
        slices
    }

    /// A table keyed by hashes, cut before each hex digit but the first: 16 slices of about the
    /// same size (and the NULL one).
    pub fn by_hex_digit() -> Vec<TextSlice> {
        let bounds: Vec<String> = "123456789abcdef".chars().map(String::from).collect();
        TextSlice::split_at(&bounds)
    }

    /// The SQL condition on `column` (a constant of the caller) and the values it binds.
    pub(super) fn condition(&self, column: &str) -> (String, Vec<&str>) {
        match self {
            TextSlice::Null => (format!("{column} IS NULL"), vec![]),
            TextSlice::Range { start, end } => match (start.as_deref(), end.as_deref()) {
                (None, None) => (format!("{column} IS NOT NULL"), vec![]),
                (None, Some(end)) => (format!("{column} < ?1"), vec![end]),
                (Some(start), None) => (format!("{column} >= ?1"), vec![start]),
                (Some(start), Some(end)) => (
                    format!("{column} >= ?1 AND {column} < ?2"),
                    vec![start, end],
                ),
            },
        }
    }
}

/// A part of a table with an integer key: the rows from `first` to `last`, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSlice {
    pub first: i64,
    pub last: i64,
}

impl SeqSlice {
    /// Every integer, cut into `n` slices of about the same number of keys from `min` to `max`.
    pub fn split(min: i64, max: i64, n: usize) -> Vec<SeqSlice> {
        let n = n.max(1) as i128;
        let span = (i128::from(max) - i128::from(min) + 1).max(1);
        let mut slices = Vec::new();
        let mut first = i64::MIN;
        for k in 1..n {
            let cut = i128::from(min) + span * k / n;
            let Ok(cut) = i64::try_from(cut) else { break };
            if cut > first {
                slices.push(SeqSlice {
                    first,
                    last: cut - 1,
                });
                first = cut;
            }
        }
        slices.push(SeqSlice {
            first,
            last: i64::MAX,
        });
        slices
    }
}

/// The audit log cut into `n` slices of about the same number of entries.
pub fn audit_slices(db: &impl Db, n: usize) -> Result<Vec<SeqSlice>, StoreError> {
    let (min, max): (Option<i64>, Option<i64>) = db
        .conn()
        .prepare_cached("SELECT min(seq), max(seq) FROM audit_log")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(SeqSlice::split(min.unwrap_or(0), max.unwrap_or(0), n))
}

/// The runs cut into about `n` slices of about the same number of runs, at run ids read from the
/// table.
pub fn run_slices(db: &impl Db, n: usize) -> Result<Vec<TextSlice>, StoreError> {
    let count: i64 = db
        .conn()
        .prepare_cached("SELECT count(*) FROM runs")?
        .query_row([], |r| r.get(0))?;
    let mut bounds: Vec<String> = Vec::new();
    let mut stmt = db
        .conn()
        .prepare_cached("SELECT run_id FROM runs ORDER BY run_id LIMIT 1 OFFSET ?1")?;
    for k in 1..n.max(1) as i64 {
        let offset = count * k / n as i64;
        let bound: Option<Option<String>> = stmt
            .query_row([offset], |r| {
                Ok(r.get_ref(0)?.as_str().ok().map(str::to_string))
            })
            .optional()?;
        // Only text bounds, strictly ascending: a key of another type stays inside a slice.
        if let Some(Some(bound)) = bound {
            if bounds.last().is_none_or(|last| *last < bound) {
                bounds.push(bound);
            }
        }
    }
    Ok(TextSlice::split_at(&bounds))
}

/// Calls `f` with each evidence blob `(hash, body)` of a slice, in hash order, without copying
/// the body.
pub fn for_each_evidence_in<E: From<StoreError>>(
    db: &impl Db,
    slice: &TextSlice,
    mut f: impl FnMut(&str, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let (condition, bound) = slice.condition("hash");
    let sql = format!("SELECT hash, body FROM evidence WHERE {condition} ORDER BY hash");
    let mut stmt = db.conn().prepare_cached(&sql).map_err(StoreError::from)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(bound))
        .map_err(StoreError::from)?;
    while let Some(row) = rows.next().map_err(StoreError::from)? {
        let (hash, body) =
            hash_and_body(row).map_err(|e| bad_row("evidence", row, key_first, e))?;
        f(hash, body)?;
    }
    Ok(())
}

fn hash_and_body<'r>(row: &'r Row<'_>) -> rusqlite::Result<(&'r str, &'r [u8])> {
    Ok((row.get_ref(0)?.as_str()?, row.get_ref(1)?.as_bytes()?))
}

/// Calls `f` with each audit entry of a slice in `seq` order. The entry is read into the same
/// one each time, reusing its strings; `f` may keep it by swapping another in.
pub fn for_each_audit_entry_in<E: From<StoreError>>(
    db: &impl Db,
    slice: SeqSlice,
    mut f: impl FnMut(&mut AuditEntry) -> Result<(), E>,
) -> Result<(), E> {
    let sql =
        format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq");
    let mut stmt = db.conn().prepare_cached(&sql).map_err(StoreError::from)?;
    let mut rows = stmt
        .query([slice.first, slice.last])
        .map_err(StoreError::from)?;
    let mut entry = AuditEntry::default();
    while let Some(row) = rows.next().map_err(StoreError::from)? {
        audit_into(row, &mut entry).map_err(|e| bad_row("audit_log", row, key_first, e))?;
        f(&mut entry)?;
    }
    Ok(())
}

/// The `seq` and `entry_hash` of the last audit entry before `seq`; the hash is `None` when it is
/// not text (that entry is then reported broken where it is read).
pub fn audit_entry_before(
    db: &impl Db,
    seq: i64,
) -> Result<Option<(i64, Option<String>)>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(
            "SELECT seq, entry_hash FROM audit_log WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([seq], |r| {
            Ok((r.get(0)?, r.get_ref(1)?.as_str().ok().map(str::to_string)))
        })
        .optional()?)
}

/// Calls `f` with each policy version, by id and version.
pub fn for_each_policy<E: From<StoreError>>(
    db: &impl Db,
    f: impl FnMut(Policy) -> Result<(), E>,
) -> Result<(), E> {
    let sql = format!("SELECT {POLICY_COLUMNS} FROM policies ORDER BY policy_id, version");
    for_each_row(db, &sql, [], "policies", key_versioned, policy_from_row, f)
}

/// Calls `f` with each workflow definition version, by id and version.
pub fn for_each_definition<E: From<StoreError>>(
    db: &impl Db,
    f: impl FnMut(Definition) -> Result<(), E>,
) -> Result<(), E> {
    let sql = format!("SELECT {DEFINITION_COLUMNS} FROM workflows ORDER BY workflow_id, version");
    for_each_row(
        db,
        &sql,
        [],
        "workflows",
        key_versioned,
        definition_from_row,
        f,
    )
}

/// Calls `f` with each decision in the order they were made.
pub fn for_each_decision<E: From<StoreError>>(
    db: &impl Db,
    f: impl FnMut(Decision) -> Result<(), E>,
) -> Result<(), E> {
    let sql = format!("SELECT {DECISION_COLUMNS} FROM decisions ORDER BY creation_order");
    for_each_row(db, &sql, [], "decisions", key_first, decision_from_row, f)
}

/// Calls `f` with each token ever made, revoked ones included, in the order they were made.
/// The table arrived with schema version 2: an older file has none to call `f` with.
pub fn for_each_token<E: From<StoreError>>(
    db: &impl Db,
    f: impl FnMut(Token) -> Result<(), E>,
) -> Result<(), E> {
    if db.schema_version() < 2 {
        return Ok(());
    }
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, token_id");
    for_each_row(db, &sql, [], "tokens", key_first, token_from_row, f)
}

/// The schema version a database was written with (`PRAGMA user_version`).
pub fn schema_version(db: &impl Db) -> Result<i64, StoreError> {
    Ok(db.schema_version())
}

/// A run with every row that names it, each list in the order it happened: its audit entries
/// (as links) by `seq`, its decisions, attempts and gates by creation order.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRows {
    pub run: Run,
    pub links: Vec<AuditLink>,
    pub decisions: Vec<Decision>,
    pub steps: Vec<StepAttempt>,
    pub gates: Vec<Gate>,
}

/// Calls `f` with each run of a slice in `run_id` order, with the rows that name it. Each table
/// is read in one pass over the slice, by `run_id` then `seq` or creation order (the indexes by
/// run give that order), rather than with a query per run, and the runs and those passes are
/// walked together. A row is decoded only when it names the run at hand, so a row naming a run
/// that is not there is passed over, as a query per run would never read it (`first_orphan`
/// finds it); a row that names the run and cannot be read is `BadRow`, as it was.
pub fn for_each_run_with_rows_in<E: From<StoreError>>(
    db: &impl Db,
    slice: &TextSlice,
    mut f: impl FnMut(&mut RunRows) -> Result<(), E>,
) -> Result<(), E> {
    let (condition, bound) = slice.condition("run_id");
    // NULL run ids name no run: their slice has only runs that cannot be read, and no rows of
    // theirs are looked for (that would scan each table).
    let linked = !matches!(slice, TextSlice::Null);
    let sql = |columns: &str, table: &str, then: &str| {
        format!("SELECT {columns} FROM {table} WHERE {condition} ORDER BY run_id, {then}")
    };
    let conn = db.conn();
    let prepare = |sql: String| conn.prepare_cached(&sql).map_err(StoreError::from);
    let version = schema_version(db)?;
    let mut links = prepare(sql(LINK_COLUMNS, "audit_log", "seq"))?;
    let mut decisions = prepare(sql(DECISION_COLUMNS, "decisions", "creation_order"))?;
    let mut steps = prepare(sql(STEP_COLUMNS, "steps", "creation_order"))?;
    let mut gates = prepare(sql(&gate_select(version), "gates", "creation_order"))?;
    let params = || rusqlite::params_from_iter(bound.iter());
    let query = |stmt| query_if(linked, stmt, &bound);
    let mut links = Linked::new(query(&mut links)?, 8, "audit_log", key_first, link_from_row);
    let mut decisions = Linked::new(
        query(&mut decisions)?,
        1,
        "decisions",
        key_first,
        decision_from_row,
    );
    let mut steps = Linked::new(query(&mut steps)?, 0, "steps", key_step, step_from_row);
    let mut gates = Linked::new(query(&mut gates)?, 1, "gates", key_first, gate_from_row);
    let runs = format!(
        "SELECT {RUN_COLUMNS} FROM runs r LEFT JOIN evidence e ON e.hash = r.input_hash
         WHERE {} ORDER BY r.run_id",
        slice.condition("r.run_id").0
    );
    let mut rows = RunRows::default();
    for_each_row(
        db,
        &runs,
        params(),
        "runs",
        key_first,
        run_from_row,
        |run| {
            rows.run = run;
            let run_id = rows.run.run_id.as_str();
            links.take_for(run_id, &mut rows.links)?;
            decisions.take_for(run_id, &mut rows.decisions)?;
            steps.take_for(run_id, &mut rows.steps)?;
            gates.take_for(run_id, &mut rows.gates)?;
            for gate in &mut rows.gates {
                fill_approvals(db, gate)?;
            }
            f(&mut rows)
        },
    )
}

/// The rows of `stmt` for `bound`, or none when `run` is false.
fn query_if<'s>(
    run: bool,
    stmt: &'s mut rusqlite::CachedStatement<'_>,
    bound: &[&str],
) -> Result<Option<rusqlite::Rows<'s>>, StoreError> {
    Ok(match run {
        true => Some(stmt.query(rusqlite::params_from_iter(bound.iter()))?),
        false => None,
    })
}

/// Only a place to read a run into (its status is a placeholder until then).
impl Default for RunRows {
    fn default() -> RunRows {
        RunRows::empty(Run {
            run_id: String::new(),
            workflow_id: String::new(),
            workflow_version: 0,
            status: RunStatus::Pending,
            created_by: String::new(),
            created_at: Timestamp::default(),
            updated_at: Timestamp::default(),
            ended_at: None,
            input: serde_json::Value::Null,
            input_hash: String::new(),
            next_step_id: None,
            failure: None,
            genesis_hash: String::new(),
            receipt_hash: None,
            attempt_base: 0,
        })
    }
}

impl RunRows {
    fn empty(run: Run) -> RunRows {
        RunRows {
            run,
            links: Vec::new(),
            decisions: Vec::new(),
            steps: Vec::new(),
            gates: Vec::new(),
        }
    }
}

/// The columns of an audit link, and last the run it names.
const LINK_COLUMNS: &str =
    "seq, action, subject, payload_hash, from_status, to_status, reason, at, run_id";

fn link_from_row(row: &Row<'_>) -> rusqlite::Result<AuditLink> {
    Ok(AuditLink {
        seq: row.get(0)?,
        action: row.get(1)?,
        subject: row.get(2)?,
        payload_hash: row.get(3)?,
        from_status: row.get(4)?,
        to_status: row.get(5)?,
        reason: row.get(6)?,
        at: row.get(7)?,
    })
}

/// The rows of one table that name runs, in `run_id` order, walked alongside the runs.
struct Linked<'s, T> {
    rows: Option<rusqlite::Rows<'s>>,
    /// The row read and not yet taken: the run id it names (`None`: not text, naming no run)
    /// and the row decoded, or why it cannot be.
    pending: Option<(Option<String>, Result<T, StoreError>)>,
    run_id_column: usize,
    table: &'static str,
    key: fn(&Row<'_>) -> String,
    from_row: fn(&Row<'_>) -> rusqlite::Result<T>,
}

impl<'s, T> Linked<'s, T> {
    fn new(
        rows: Option<rusqlite::Rows<'s>>,
        run_id_column: usize,
        table: &'static str,
        key: fn(&Row<'_>) -> String,
        from_row: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Linked<'s, T> {
        Linked {
            rows,
            pending: None,
            run_id_column,
            table,
            key,
            from_row,
        }
    }

    /// Replaces `out` with the rows that name `run_id`, passing over the rows before them (which
    /// name no run being read) and leaving the rows after them for the runs after it.
    fn take_for(&mut self, run_id: &str, out: &mut Vec<T>) -> Result<(), StoreError> {
        out.clear();
        loop {
            if self.pending.is_none() {
                let Some(rows) = &mut self.rows else {
                    return Ok(());
                };
                let Some(row) = rows.next()? else {
                    self.rows = None;
                    return Ok(());
                };
                let names = row
                    .get_ref(self.run_id_column)?
                    .as_str()
                    .ok()
                    .map(str::to_string);
                let read = (self.from_row)(row).map_err(|e| bad_row(self.table, row, self.key, e));
                self.pending = Some((names, read));
            }
            match self
                .pending
                .as_ref()
                .and_then(|(names, _)| names.as_deref())
            {
                Some(names) if names == run_id => {
                    if let Some((_, read)) = self.pending.take() {
                        out.push(read?);
                    }
                }
                Some(names) if names > run_id => return Ok(()),
                _ => self.pending = None,
            }
        }
    }
}

/// The last entry of a run with this action and subject.
pub fn last_audit_entry(
    db: &impl Db,
    run_id: &str,
    action: &str,
    subject: &str,
) -> Result<Option<AuditEntry>, StoreError> {
    let sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE run_id = ?1 AND action = ?2 AND subject = ?3
         ORDER BY seq DESC LIMIT 1"
    );
    let mut stmt = db.conn().prepare_cached(&sql)?;
    let mut rows = stmt.query([run_id, action, subject])?;
    match rows.next()? {
        Some(row) => Ok(Some(
            audit_from_row(row).map_err(|e| bad_row("audit_log", row, key_first, e))?,
        )),
        None => Ok(None),
    }
}

/// Rows of the run tables: those that name a run (`run_id` not null) in the audit log,
/// decisions, steps and gates, and the decisions with an id. The runs pass of `verify` counts
/// the same of what it read, with for `decision_ids` only the decisions an attempt of their run
/// names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunRowCounts {
    pub audit_entries: u64,
    pub decisions: u64,
    pub steps: u64,
    pub gates: u64,
    pub decision_ids: u64,
    /// Quorum approvals (schema version 2 on).
    pub approvals: u64,
}

impl RunRowCounts {
    pub fn add(&mut self, other: &RunRowCounts) {
        self.audit_entries += other.audit_entries;
        self.decisions += other.decisions;
        self.steps += other.steps;
        self.gates += other.gates;
        self.decision_ids += other.decision_ids;
        self.approvals += other.approvals;
    }
}

/// What the decisions, steps and gates hold, counted as `RunRowCounts` says (the audit log's
/// count is left at 0: `verify` counts it while reading the chain).
pub fn run_row_counts(db: &impl Db) -> Result<RunRowCounts, StoreError> {
    let count = |sql: &str| -> Result<u64, StoreError> {
        let n: i64 = db.conn().prepare_cached(sql)?.query_row([], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    };
    Ok(RunRowCounts {
        audit_entries: 0,
        decisions: count("SELECT count(*) FROM decisions WHERE run_id IS NOT NULL")?,
        steps: count("SELECT count(*) FROM steps WHERE run_id IS NOT NULL")?,
        gates: count("SELECT count(*) FROM gates WHERE run_id IS NOT NULL")?,
        decision_ids: count("SELECT count(*) FROM decisions WHERE decision_id IS NOT NULL")?,
        approvals: match db.schema_version() {
            ..=1 => 0,
            _ => count("SELECT count(*) FROM gate_approvals")?,
        },
    })
}

/// The first row that names a run that does not exist, a decision that no step attempt names,
/// or an approval of a gate that does not exist. Each row of the run tables belongs to a run,
/// each decision to exactly one attempt, each approval to a gate.
pub fn first_orphan(db: &impl Db) -> Result<Option<Orphan>, StoreError> {
    // (table, column naming the parent, the row's name, the condition, from schema version).
    const CHECKS: [(&str, &str, &str, &str, i64); 6] = [
        (
            "audit_log",
            "run_id",
            "CAST(seq AS TEXT)",
            "run_id IS NOT NULL AND run_id NOT IN (SELECT run_id FROM runs)",
            1,
        ),
        (
            "decisions",
            "run_id",
            "decision_id",
            "run_id NOT IN (SELECT run_id FROM runs)",
            1,
        ),
        (
            "steps",
            "run_id",
            "run_id || '/' || step_id || '#' || attempt",
            "run_id NOT IN (SELECT run_id FROM runs)",
            1,
        ),
        (
            "gates",
            "run_id",
            "gate_id",
            "run_id NOT IN (SELECT run_id FROM runs)",
            1,
        ),
        (
            "decisions",
            "decision_id",
            "decision_id",
            "decision_id NOT IN (SELECT decision_id FROM steps)",
            1,
        ),
        (
            "gate_approvals",
            "gate_id",
            "gate_id || '/' || approver",
            "gate_id NOT IN (SELECT gate_id FROM gates)",
            2,
        ),
    ];
    for (table, field, key, condition, since) in CHECKS {
        if db.schema_version() < since {
            continue;
        }
        // Every piece is a constant of this function; nothing from the database is formatted in.
        let sql = format!("SELECT {key}, {field} FROM {table} WHERE {condition} LIMIT 1");
        let found = db
            .conn()
            .prepare_cached(&sql)?
            .query_row([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .optional()?;
        if let Some((key, missing)) = found {
            return Ok(Some(Orphan {
                table,
                key,
                field,
                missing,
            }));
        }
    }
    Ok(None)
}

/// The triggers the migrations a database has applied declare, in the order they declare them:
/// a database of an older schema is checked against that schema. The migrations applied are its
/// `user_version` of them, or more when its objects show more were (opening refuses such a file,
/// `StoreError::SchemaVersionLowered`; this keeps what is checked from being lowered with it).
pub fn schema_triggers(db: &impl Db) -> Result<Vec<TriggerSql>, StoreError> {
    expected_triggers(db, schema_version(db)?)
}

/// The triggers a database at `user_version` holds, or those of a later schema when its objects
/// show it is later (see `schema_triggers`).
pub(super) fn expected_triggers(
    db: &impl Db,
    user_version: i64,
) -> Result<Vec<TriggerSql>, StoreError> {
    let version = user_version.max(version_of_objects(db.conn())?);
    Ok(declared_triggers(
        version.clamp(0, MIGRATIONS.len() as i64) as usize
    ))
}

/// The number of the last migration whose work the database shows (0 when none): what its
/// schema objects say of its schema version, whatever its `user_version` says. A migration shows
/// by a table, column or index it creates that no earlier one did, or, when it only rebuilds a
/// table under its own name, by the shape it gives that table (`shape_after_rebuild`). Every
/// migration shows (a test holds each version to it), so a file whose `user_version` was
/// lowered shows more than it says.
pub(super) fn version_of_objects(conn: &Connection) -> Result<i64, StoreError> {
    // What each migration creates that no earlier one did.
    let mut seen: Vec<Created> = Vec::new();
    let first_created: Vec<Vec<Created>> = MIGRATIONS
        .iter()
        .map(|migration| {
            let new: Vec<Created> = created_objects(migration)
                .into_iter()
                .filter(|object| !seen.contains(object))
                .collect();
            seen.extend(&new);
            new
        })
        .collect();
    for (i, objects) in first_created.into_iter().enumerate().rev() {
        let number = i as i64 + 1;
        if let Some(shape) = shape_after_rebuild(i + 1) {
            if conn.prepare_cached(shape)?.query_row([], |r| r.get(0))? {
                return Ok(number);
            }
        }
        for object in objects {
            if holds(conn, object)? {
                return Ok(number);
            }
        }
    }
    Ok(0)
}

/// A schema object a migration creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Created<'m> {
    Table(&'m str),
    /// A column added to an existing table.
    Column {
        table: &'m str,
        column: &'m str,
    },
    Index(&'m str),
}

/// The tables, added columns and indexes a migration creates, in its order. A migration that
/// rebuilds a table creates it under a new name and renames it: that name is gone once it ran.
fn created_objects(migration: &str) -> Vec<Created<'_>> {
    let mut objects = Vec::new();
    for line in migration.lines().map(str::trim) {
        let mut words = line.split(|c: char| c.is_whitespace() || c == '(' || c == ';');
        let words: Vec<&str> = words.by_ref().filter(|w| !w.is_empty()).take(6).collect();
        match words.as_slice() {
            ["CREATE", "TABLE", table, ..] => objects.push(Created::Table(table)),
            ["CREATE", "INDEX", index, ..] | ["CREATE", "UNIQUE", "INDEX", index, ..] => {
                objects.push(Created::Index(index))
            }
            ["ALTER", "TABLE", table, "ADD", "COLUMN", column, ..] => {
                objects.push(Created::Column { table, column })
            }
            _ => {}
        }
    }
    objects
}

/// Whether the database holds `object`.
fn holds(conn: &Connection, object: Created) -> Result<bool, StoreError> {
    let mut stmt = match object {
        Created::Table(_) => conn.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        )?,
        Created::Index(_) => conn.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)",
        )?,
        Created::Column { .. } => conn.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        )?,
    };
    Ok(match object {
        Created::Table(name) | Created::Index(name) => stmt.query_row([name], |r| r.get(0))?,
        Created::Column { table, column } => stmt.query_row([table, column], |r| r.get(0))?,
    })
}

/// For a migration that rebuilds a table under its own name, and so leaves no object the schema
/// before it lacked: a query answering whether the table has the shape the rebuild gave it, the
/// one thing it changed. Read from the schema, not from its SQL text, which SQLite rewrites on a
/// rename. A migration to come that only rebuilds must add its shape here.
fn shape_after_rebuild(migration: usize) -> Option<&'static str> {
    match migration {
        // 005: audit_log without schema.sql's `UNIQUE` on entry_hash, so without the automatic
        // index (sqlite_autoindex_audit_log_1) that constraint made.
        5 => Some(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_log')
               AND NOT EXISTS (SELECT 1 FROM pragma_index_list('audit_log') AS l,
                                             pragma_index_info(l.name) AS c
                               WHERE l.origin = 'u' AND c.name = 'entry_hash')",
        ),
        // 006: evidence a rowid table (schema.sql made it WITHOUT ROWID).
        6 => Some(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_list('evidence')
                            WHERE schema = 'main' AND type = 'table' AND NOT wr)",
        ),
        _ => None,
    }
}

/// The triggers the first `n_migrations` migrations declare, each once. A migration that
/// rebuilds a table creates its triggers again (dropping a table drops its triggers): the later
/// statement is the one the database holds, in the place of the first.
fn declared_triggers(n_migrations: usize) -> Vec<TriggerSql> {
    const START: &str = "CREATE TRIGGER ";
    const END: &str = "END;";
    let mut triggers = Vec::new();
    for migration in &MIGRATIONS[..n_migrations] {
        let mut rest = *migration;
        while let Some(start) = rest.find(START) {
            let statement = &rest[start..];
            let Some(end) = statement.find(END) else {
                break;
            };
            let sql = &statement[..end + END.len() - 1];
            let name = sql[START.len()..].split_whitespace().next().unwrap_or("");
            let trigger = TriggerSql {
                name: name.to_string(),
                sql: sql.to_string(),
            };
            match triggers
                .iter_mut()
                .find(|t: &&mut TriggerSql| t.name == name)
            {
                Some(earlier) => *earlier = trigger,
                None => triggers.push(trigger),
            }
            rest = &statement[end + END.len()..];
        }
    }
    triggers
}

/// A declared trigger the database does not hold as declared: why, in a sentence, and the SQL
/// that stands in its place, if any. Verify reports it; a migration refuses the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerMismatch {
    pub why: String,
    pub found: Option<String>,
}

impl TriggerSql {
    /// Whether `db` holds this trigger exactly as declared.
    pub fn compared_with(&self, db: &impl Db) -> Result<Result<(), TriggerMismatch>, StoreError> {
        Ok(match trigger_sql(db, &self.name)? {
            Some(sql) if sql == self.sql => Ok(()),
            Some(sql) => Err(TriggerMismatch {
                why: format!("the trigger {} was replaced by another", self.name),
                found: Some(sql),
            }),
            None => Err(TriggerMismatch {
                why: format!("the immutability trigger {} is missing", self.name),
                found: None,
            }),
        })
    }
}

/// The SQL of the trigger named `name`, if the database holds one.
pub fn trigger_sql(db: &impl Db, name: &str) -> Result<Option<String>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

/// Runs `sql` and hands each row, read by `from_row`, to `f`; a row `from_row` cannot read is
/// `BadRow`, named by `key`.
fn for_each_row<T, E: From<StoreError>>(
    db: &impl Db,
    sql: &str,
    params: impl Params,
    table: &'static str,
    key: fn(&Row<'_>) -> String,
    from_row: fn(&Row<'_>) -> rusqlite::Result<T>,
    mut f: impl FnMut(T) -> Result<(), E>,
) -> Result<(), E> {
    let mut stmt = db.conn().prepare_cached(sql).map_err(StoreError::from)?;
    let mut rows = stmt.query(params).map_err(StoreError::from)?;
    while let Some(row) = rows.next().map_err(StoreError::from)? {
        let item = from_row(row).map_err(|e| bad_row(table, row, key, e))?;
        f(item)?;
    }
    Ok(())
}

fn bad_row(
    table: &'static str,
    row: &Row<'_>,
    key: fn(&Row<'_>) -> String,
    error: rusqlite::Error,
) -> StoreError {
    StoreError::BadRow {
        table,
        key: key(row),
        why: error.to_string(),
    }
}

/// A column as text, whatever its type, for naming a row that may not hold what it should.
fn raw(row: &Row<'_>, index: usize) -> String {
    match row.get_ref(index) {
        Ok(ValueRef::Null) => "null".to_string(),
        Ok(ValueRef::Integer(n)) => n.to_string(),
        Ok(ValueRef::Real(x)) => x.to_string(),
        Ok(ValueRef::Text(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Ok(ValueRef::Blob(bytes)) => format!("x'{}'", hex::encode(bytes)),
        Err(_) => "?".to_string(),
    }
}

/// Rows keyed by their first column: an id, a hash or a `seq`.
fn key_first(row: &Row<'_>) -> String {
    raw(row, 0)
}

/// Policy and definition versions: `id@version`.
fn key_versioned(row: &Row<'_>) -> String {
    format!("{}@{}", raw(row, 0), raw(row, 1))
}

/// Step attempts: `run_id/step_id#attempt` (columns of `STEP_COLUMNS`).
fn key_step(row: &Row<'_>) -> String {
    format!("{}/{}#{}", raw(row, 0), raw(row, 1), raw(row, 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_read_into_the_one_before_is_the_entry_read_afresh() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::migrate(&conn, std::path::Path::new(":memory:")).unwrap();
        conn.execute_batch("DROP TRIGGER audit_log_no_update")
            .unwrap();
        let insert = |seq: i64, run_id: &str, at: &str, reason: &str, hash: &str| {
            let sql = format!(
                "INSERT INTO audit_log (seq, run_id, at, actor, action, subject, reason, message,
                   payload_hash, prev_hash, entry_hash)
                 VALUES ({seq}, {run_id}, {at}, 'a', 'x', 's', {reason}, 'm', 'p', 'q', {hash})"
            );
            conn.execute_batch(&sql).unwrap();
        };
        // Present and absent columns in turn, then values that are not what fedcore writes.
        insert(
            1,
            "'run-1'",
            "'2026-11-24T10:00:00.000001Z'",
            "'why'",
            "'h1'",
        );
        insert(2, "NULL", "'2026-11-24T10:00:00.000002Z'", "NULL", "'h2'");
        insert(
            3,
            "'run-3'",
            "'2026-11-24T10:00:00.000003Z'",
            "'because'",
            "'h3'",
        );
        insert(4, "x'00'", "'2026-11-24T10:00:00.000004Z'", "NULL", "'h4'");
        insert(5, "'run-5'", "'2026-11-24 10:00:00Z'", "NULL", "'h5'");
        insert(6, "'run-6'", "'2026-11-24T10:00:00.000006Z'", "7", "'h6'");
        insert(
            7,
            "'run-7'",
            "'2026-11-24T10:00:00.000007Z'",
            "NULL",
            "x'ff'",
        );
        insert(
            8,
            "'run-8'",
            "'2026-11-24T10:00:00.000008Z'",
            "'again'",
            "'h8'",
        );
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq");
        let mut stmt = conn.prepare(&sql).unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut reused = AuditEntry::default();
        let mut seen = 0;
        while let Some(row) = rows.next().unwrap() {
            let afresh = audit_from_row(row).map_err(|e| e.to_string());
            let into = audit_into(row, &mut reused).map_err(|e| e.to_string());
            match afresh {
                Ok(entry) => assert_eq!((into, &reused), (Ok(()), &entry)),
                Err(why) => assert_eq!(into, Err(why)),
            }
            seen += 1;
        }
        assert_eq!(seen, 8);
    }

    #[test]
    fn the_schema_declares_its_triggers_each_a_whole_statement() {
        assert_eq!(
            declared_triggers(1).len(),
            16,
            "migration 1: contract section 6"
        );
        assert_eq!(
            declared_triggers(2).len(),
            20,
            "migration 2 adds tokens and gate approvals"
        );
        assert_eq!(
            declared_triggers(3).len(),
            26,
            "migration 3 adds signing keys, signatures and checkpoints"
        );
        let triggers = declared_triggers(MIGRATIONS.len());
        assert_eq!(
            triggers,
            declared_triggers(3),
            "later migrations add no trigger; one that creates a trigger again keeps its text"
        );
        assert_eq!(triggers[0].name, "audit_log_no_update");
        for trigger in &triggers {
            assert!(
                trigger.sql.starts_with("CREATE TRIGGER "),
                "{}",
                trigger.sql
            );
            assert!(trigger.sql.ends_with("END"), "{}", trigger.sql);
            assert_eq!(trigger.sql.matches("CREATE TRIGGER").count(), 1);
        }
    }

    #[test]
    fn each_migration_names_the_tables_columns_and_indexes_it_creates() {
        let first = created_objects(MIGRATIONS[0]);
        assert!(first.contains(&Created::Table("audit_log")), "{first:?}");
        assert!(first.contains(&Created::Index("audit_by_run")), "{first:?}");
        let second = created_objects(MIGRATIONS[1]);
        assert!(second.contains(&Created::Table("tokens")), "{second:?}");
        assert!(
            second.contains(&Created::Table("gate_approvals")),
            "{second:?}"
        );
        assert!(
            second.contains(&Created::Column {
                table: "gates",
                column: "approvals_required"
            }),
            "{second:?}"
        );
        let fourth = created_objects(MIGRATIONS[3]);
        assert!(
            fourth.contains(&Created::Index("runs_by_workflow_status")),
            "{fourth:?}"
        );
    }

    #[test]
    fn the_objects_of_a_database_show_each_migration_it_went_through() {
        // Each migration run by itself, as `store::migrate` would run it on a file of the
        // version before (`foreign_keys` off for the rebuilds), must show in what it leaves:
        // otherwise a file whose user_version was lowered past it would be migrated again.
        for n in 0..=MIGRATIONS.len() {
            let conn = Connection::open_in_memory().unwrap();
            conn.pragma_update(None, "foreign_keys", false).unwrap();
            for migration in &MIGRATIONS[..n] {
                conn.execute_batch(migration).unwrap();
            }
            assert_eq!(
                version_of_objects(&conn).unwrap(),
                n as i64,
                "after {n} migrations"
            );
        }
    }

    #[test]
    fn sqlite_keeps_each_trigger_exactly_as_the_schema_declares_it() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::migrate(&conn, std::path::Path::new(":memory:")).unwrap();
        let reader = super::super::Reader::new(conn).unwrap();
        for trigger in schema_triggers(&reader).unwrap() {
            let stored = trigger_sql(&reader, &trigger.name).unwrap();
            assert_eq!(stored.as_deref(), Some(trigger.sql.as_str()));
        }
    }
}
