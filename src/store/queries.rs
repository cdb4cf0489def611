//! Row ↔ model functions, one small function per statement. Statements are prepared through the
//! connection's statement cache; every value is bound, never formatted into SQL.

use super::{Db, StoreError, Tx};
use crate::model::*;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, OptionalExtension, Row};
use serde_json::Value;

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for Timestamp {
    /// Accepts only the exact text `ToSql` writes. A different spelling of the same instant
    /// (`+00:00`, fewer digits) would hash the same after parsing, so an edited row could pass
    /// `verify` while a verifier that hashes the stored text refuses it.
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Timestamp::parse(text)
            .filter(|_| is_written_form(text))
            .ok_or_else(|| FromSqlError::Other(format!("bad timestamp {text:?}").into()))
    }
}

/// Whether `text` is laid out as `Timestamp` writes it, `2026-11-24T10:00:00.123456Z`, with a
/// second below 60. A text that also parses is then exactly what the parsed instant prints as;
/// checking the layout is cheaper than printing it again, and `verify` reads millions.
fn is_written_form(text: &str) -> bool {
    const LAYOUT: &[u8; 27] = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
    let bytes = text.as_bytes();
    bytes.len() == LAYOUT.len()
        && bytes.iter().zip(LAYOUT).all(|(&b, &l)| match l {
            b'd' => b.is_ascii_digit(),
            literal => b == literal,
        })
        && &text[17..19] < "60"
}

macro_rules! sql_text_enum {
    ($($name:ident),+) => {$(
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                $name::parse(text).ok_or_else(|| {
                    FromSqlError::Other(format!("bad {} {text:?}", stringify!($name)).into())
                })
            }
        }
    )+};
}

sql_text_enum!(Effect, StepType, RunStatus, StepStatus, GateStatus, Role);

/// A JSON value stored as TEXT.
struct Json<T>(T);

impl<T: serde::de::DeserializeOwned> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        serde_json::from_str(text)
            .map(Json)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

fn json_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn opt_json_text<T: serde::Serialize>(value: &Option<T>) -> Result<Option<String>, StoreError> {
    value.as_ref().map(json_text).transpose()
}

// Every statement is a named `const` (or, where the file's schema version decides a column, a
// function choosing between consts), so that `store::plans` checks the query plan of exactly the
// text that runs. Column lists are macros so that `concat!` can build whole statements at
// compile time.

macro_rules! policy_columns {
    () => {
        "policy_id, version, tier, default_effect, rules, policy_hash"
    };
}
macro_rules! definition_columns {
    () => {
        "workflow_id, version, policy_id, steps, definition_hash"
    };
}
macro_rules! token_columns {
    () => {
        "token_id, name, role, created_at, created_by, revoked_at, revoked_by"
    };
}
macro_rules! run_columns {
    () => {
        "r.run_id, r.workflow_id, r.workflow_version, r.status, r.created_by,
    r.created_at, r.updated_at, r.ended_at, e.body, r.input_hash, r.next_step_id, r.failure,
    r.genesis_hash, r.receipt_hash, r.attempt_base"
    };
}
macro_rules! step_columns {
    () => {
        "run_id, step_id, step_type, step_index, attempt, status, actor,
    started_at, ended_at, input_hash, output_hash, error, decision_id, decision_hash,
    prev_receipt_hash, receipt_hash"
    };
}
macro_rules! decision_columns {
    () => {
        "decision_id, run_id, step_id, attempt, effect, reason, policy_id,
    policy_version, policy_hash, tier, rules_triggered, input_hash, actor, decided_at, decision_hash"
    };
}
macro_rules! gate_columns {
    () => {
        "gate_id, run_id, step_id, attempt, status, reason, decision_id,
    requested_by, requested_at, expires_at, resolved_by, resolved_at, comment, receipt_hash"
    };
}
macro_rules! audit_columns {
    () => {
        "seq, run_id, at, actor, action, subject, from_status, to_status,
    decision, reason, message, evidence_pack_ref, payload_hash, prev_hash, entry_hash"
    };
}

// ---------------------------------------------------------------------------------------------
// Evidence

pub(super) const PUT_EVIDENCE: &str = "INSERT OR IGNORE INTO evidence (hash, body) VALUES (?1, ?2)";
pub(super) const GET_EVIDENCE: &str = "SELECT body FROM evidence WHERE hash = ?1";

/// Stores `body` under `hash` unless a blob with that hash is already there.
pub fn put_evidence(tx: &Tx<'_>, hash: &str, body: &[u8]) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached(PUT_EVIDENCE)?
        .execute(params![hash, body])?;
    Ok(())
}

pub fn get_evidence(db: &impl Db, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(GET_EVIDENCE)?
        .query_row([hash], |r| r.get(0))
        .optional()?)
}

// ---------------------------------------------------------------------------------------------
// Policies and workflow definitions

pub(super) const INSERT_POLICY: &str =
    "INSERT INTO policies (policy_id, version, tier, default_effect, rules, policy_hash, created_at, created_by)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

pub fn insert_policy(tx: &Tx<'_>, p: &Policy, at: Timestamp, by: &str) -> Result<(), StoreError> {
    tx.conn().prepare_cached(INSERT_POLICY)?.execute(params![
        p.policy_id,
        p.version,
        p.tier,
        p.default_effect,
        json_text(&p.rules)?,
        p.policy_hash,
        at,
        by
    ])?;
    Ok(())
}

pub(super) const POLICY_COLUMNS: &str = policy_columns!();

pub(super) const LATEST_POLICY: &str = concat!(
    "SELECT ",
    policy_columns!(),
    " FROM policies WHERE policy_id = ?1 ORDER BY version DESC LIMIT 1"
);
pub(super) const POLICY_VERSION: &str = concat!(
    "SELECT ",
    policy_columns!(),
    " FROM policies WHERE policy_id = ?1 AND version = ?2"
);

pub(super) fn policy_from_row(r: &Row<'_>) -> rusqlite::Result<Policy> {
    Ok(Policy {
        policy_id: r.get(0)?,
        version: r.get(1)?,
        tier: r.get(2)?,
        default_effect: r.get(3)?,
        rules: r.get::<_, Json<Value>>(4)?.0,
        policy_hash: r.get(5)?,
    })
}

/// The given version of a policy, or its latest when `version` is `None`.
pub fn get_policy(
    db: &impl Db,
    policy_id: &str,
    version: Option<i64>,
) -> Result<Option<Policy>, StoreError> {
    let mut stmt = match version {
        None => db.conn().prepare_cached(LATEST_POLICY)?,
        Some(_) => db.conn().prepare_cached(POLICY_VERSION)?,
    };
    let found = match version {
        None => stmt.query_row(params![policy_id], policy_from_row),
        Some(version) => stmt.query_row(params![policy_id, version], policy_from_row),
    };
    Ok(found.optional()?)
}

/// The latest version of a policy, like `get_policy(db, policy_id, None)`, except that its
/// `rules` are read and parsed only when `known(policy_hash)` is false, and are `null` when it
/// is true: a caller that keeps the parsed rules of a hash need not parse them on every step.
pub fn latest_policy_unless_known(
    db: &impl Db,
    policy_id: &str,
    known: impl Fn(&str) -> bool,
) -> Result<Option<Policy>, StoreError> {
    let found = db
        .conn()
        .prepare_cached(LATEST_POLICY)?
        .query_row(params![policy_id], |r| {
            let policy_hash: String = r.get(5)?;
            let rules = match known(&policy_hash) {
                true => Value::Null,
                false => r.get::<_, Json<Value>>(4)?.0,
            };
            Ok(Policy {
                policy_id: r.get(0)?,
                version: r.get(1)?,
                tier: r.get(2)?,
                default_effect: r.get(3)?,
                rules,
                policy_hash,
            })
        })
        .optional()?;
    Ok(found)
}

pub fn insert_definition(
    tx: &Tx<'_>,
    d: &Definition,
    at: Timestamp,
    by: &str,
) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached(INSERT_DEFINITION)?
        .execute(params![
            d.workflow_id,
            d.version,
            d.policy_id,
            json_text(&d.steps)?,
            d.definition_hash,
            at,
            by
        ])?;
    Ok(())
}

pub(super) const INSERT_DEFINITION: &str =
    "INSERT INTO workflows (workflow_id, version, policy_id, steps, definition_hash, created_at, created_by)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

pub(super) const DEFINITION_COLUMNS: &str = definition_columns!();

pub(super) const LATEST_DEFINITION: &str = concat!(
    "SELECT ",
    definition_columns!(),
    " FROM workflows WHERE workflow_id = ?1 ORDER BY version DESC LIMIT 1"
);
pub(super) const DEFINITION_VERSION: &str = concat!(
    "SELECT ",
    definition_columns!(),
    " FROM workflows WHERE workflow_id = ?1 AND version = ?2"
);

pub(super) fn definition_from_row(r: &Row<'_>) -> rusqlite::Result<Definition> {
    Ok(Definition {
        workflow_id: r.get(0)?,
        version: r.get(1)?,
        policy_id: r.get(2)?,
        steps: r.get::<_, Json<Vec<StepDef>>>(3)?.0,
        definition_hash: r.get(4)?,
    })
}

/// The given version of a definition, or its latest when `version` is `None`.
pub fn get_definition(
    db: &impl Db,
    workflow_id: &str,
    version: Option<i64>,
) -> Result<Option<Definition>, StoreError> {
    let mut stmt = match version {
        None => db.conn().prepare_cached(LATEST_DEFINITION)?,
        Some(_) => db.conn().prepare_cached(DEFINITION_VERSION)?,
    };
    let found = match version {
        None => stmt.query_row(params![workflow_id], definition_from_row),
        Some(version) => stmt.query_row(params![workflow_id, version], definition_from_row),
    };
    Ok(found.optional()?)
}

// ---------------------------------------------------------------------------------------------
// Agents

pub(super) const UPSERT_AGENT: &str =
    "INSERT INTO agents (agent_id, status, capabilities, tier, updated_at, updated_by)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (agent_id) DO UPDATE SET status = excluded.status,
       capabilities = excluded.capabilities, tier = excluded.tier,
       updated_at = excluded.updated_at, updated_by = excluded.updated_by";
pub(super) const GET_AGENT: &str =
    "SELECT agent_id, status, capabilities, tier FROM agents WHERE agent_id = ?1";

pub fn upsert_agent(tx: &Tx<'_>, a: &Agent, at: Timestamp, by: &str) -> Result<(), StoreError> {
    tx.conn().prepare_cached(UPSERT_AGENT)?.execute(params![
        a.agent_id,
        a.status,
        json_text(&a.capabilities)?,
        a.tier,
        at,
        by
    ])?;
    Ok(())
}

fn agent_from_row(r: &Row<'_>) -> rusqlite::Result<Agent> {
    Ok(Agent {
        agent_id: r.get(0)?,
        status: r.get(1)?,
        capabilities: r.get::<_, Json<Vec<String>>>(2)?.0,
        tier: r.get(3)?,
    })
}

pub fn get_agent(db: &impl Db, agent_id: &str) -> Result<Option<Agent>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(GET_AGENT)?
        .query_row([agent_id], agent_from_row)
        .optional()?)
}

pub fn list_agents(db: &impl Db) -> Result<Vec<Agent>, StoreError> {
    let mut stmt = db.conn().prepare_cached(
        "SELECT agent_id, status, capabilities, tier FROM agents ORDER BY agent_id",
    )?;
    let rows = stmt.query_map([], agent_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------------------------------------
// Tokens. The secret is never stored; `token_hash` is its SHA-256 and is only ever compared.

pub(super) const TOKEN_COLUMNS: &str = token_columns!();

pub(super) const INSERT_TOKEN: &str =
    "INSERT INTO tokens (token_id, name, role, token_hash, created_at, created_by)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
pub(super) const LIVE_TOKEN_BY_HASH: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens WHERE token_hash = ?1 AND revoked_at IS NULL"
);
pub(super) const TOKEN_IS_LIVE: &str =
    "SELECT 1 FROM tokens WHERE token_id = ?1 AND revoked_at IS NULL";
pub(super) const REVOKE_TOKEN: &str = "UPDATE tokens SET revoked_at = ?2, revoked_by = ?3
     WHERE token_id = ?1 AND revoked_at IS NULL";

pub(super) fn token_from_row(r: &Row<'_>) -> rusqlite::Result<Token> {
    Ok(Token {
        token_id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        created_at: r.get(3)?,
        created_by: r.get(4)?,
        revoked_at: r.get(5)?,
        revoked_by: r.get(6)?,
    })
}

pub fn insert_token(tx: &Tx<'_>, t: &Token, token_hash: &str) -> Result<(), StoreError> {
    tx.conn().prepare_cached(INSERT_TOKEN)?.execute(params![
        t.token_id,
        t.name,
        t.role,
        token_hash,
        t.created_at,
        t.created_by
    ])?;
    Ok(())
}

/// The live (not revoked) token whose secret hashes to `token_hash`: the lookup every
/// authenticated request makes, one probe of the UNIQUE index on `token_hash`.
pub fn live_token_by_hash(db: &impl Db, token_hash: &str) -> Result<Option<Token>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(LIVE_TOKEN_BY_HASH)?
        .query_row([token_hash], token_from_row)
        .optional()?)
}

/// Whether the token `token_id` is there and not revoked.
pub fn token_is_live(db: &impl Db, token_id: &str) -> Result<bool, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(TOKEN_IS_LIVE)?
        .query_row([token_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The schema version whose migration (`002_trust.sql`) made the `tokens` table.
pub const TOKENS_SINCE_VERSION: i64 = 2;

/// A name some token has that equals `name` but for ASCII case, if any.
pub fn name_spelled_otherwise(db: &impl Db, name: &str) -> Result<Option<String>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(
            "SELECT name FROM tokens WHERE name = ?1 COLLATE NOCASE AND name <> ?1 LIMIT 1",
        )?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

/// The live tokens of `name`, oldest first.
pub fn live_tokens_named(db: &impl Db, name: &str) -> Result<Vec<Token>, StoreError> {
    let sql = format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE name = ?1 AND revoked_at IS NULL
         ORDER BY created_at, token_id"
    );
    let mut stmt = db.conn().prepare_cached(&sql)?;
    let rows = stmt.query_map([name], token_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn revoke_token(
    tx: &Tx<'_>,
    token_id: &str,
    at: Timestamp,
    by: &str,
) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached(REVOKE_TOKEN)?
        .execute(params![token_id, at, by])?;
    Ok(())
}

/// Every token ever made, revoked ones included, by name and creation.
pub fn list_tokens(db: &impl Db) -> Result<Vec<Token>, StoreError> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name, created_at, token_id");
    let mut stmt = db.conn().prepare_cached(&sql)?;
    let rows = stmt.query_map([], token_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// (tokens ever made, tokens live now).
pub fn count_tokens(db: &impl Db) -> Result<(i64, i64), StoreError> {
    Ok(db.conn().query_row(
        "SELECT count(*), count(*) FILTER (WHERE revoked_at IS NULL) FROM tokens",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

// ---------------------------------------------------------------------------------------------
// Runs

pub(super) const RUN_COLUMNS: &str = run_columns!();

pub(super) const INSERT_RUN: &str =
    "INSERT INTO runs (run_id, workflow_id, workflow_version, status, created_by, created_at,
       updated_at, ended_at, input_hash, next_step_id, failure, genesis_hash, receipt_hash, attempt_base)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";
pub(super) const UPDATE_RUN: &str =
    "UPDATE runs SET status = ?2, updated_at = ?3, ended_at = ?4, next_step_id = ?5,
       failure = ?6, receipt_hash = ?7, attempt_base = ?8 WHERE run_id = ?1";
pub(super) const GET_RUN: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs r JOIN evidence e ON e.hash = r.input_hash WHERE r.run_id = ?1"
);
// One page of runs: one statement per combination of filters, so that each is one range of one
// index in run_id order (`?3` is the cursor, '' for the first page; `?4` the limit). They number
// their parameters alike, `?1` status and `?2` workflow_id; a filter a statement does not name is
// bound and unused.
pub(super) const LIST_RUNS: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs r JOIN evidence e ON e.hash = r.input_hash
     WHERE r.run_id > ?3
     ORDER BY r.run_id LIMIT ?4"
);
pub(super) const LIST_RUNS_BY_STATUS: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs r JOIN evidence e ON e.hash = r.input_hash
     WHERE r.status = ?1 AND r.run_id > ?3
     ORDER BY r.run_id LIMIT ?4"
);
pub(super) const LIST_RUNS_OF_WORKFLOW: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs r JOIN evidence e ON e.hash = r.input_hash
     WHERE r.workflow_id = ?2 AND r.run_id > ?3
     ORDER BY r.run_id LIMIT ?4"
);
pub(super) const LIST_RUNS_OF_WORKFLOW_BY_STATUS: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs r JOIN evidence e ON e.hash = r.input_hash
     WHERE r.workflow_id = ?2 AND r.status = ?1 AND r.run_id > ?3
     ORDER BY r.run_id LIMIT ?4"
);

pub(super) fn run_from_row(r: &Row<'_>) -> rusqlite::Result<Run> {
    // The input blob, joined in; a scan that left-joins it sees null when the blob is missing.
    let input_bytes: Option<Vec<u8>> = r.get(8)?;
    let input = match input_bytes {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Blob, Box::new(e))
        })?,
        None => Value::Null,
    };
    Ok(Run {
        run_id: r.get(0)?,
        workflow_id: r.get(1)?,
        workflow_version: r.get(2)?,
        status: r.get(3)?,
        created_by: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        ended_at: r.get(7)?,
        input,
        input_hash: r.get(9)?,
        next_step_id: r.get(10)?,
        failure: r.get::<_, Option<Json<Failure>>>(11)?.map(|j| j.0),
        genesis_hash: r.get(12)?,
        receipt_hash: r.get(13)?,
        attempt_base: r.get(14)?,
    })
}

pub fn insert_run(tx: &Tx<'_>, run: &Run) -> Result<(), StoreError> {
    tx.conn().prepare_cached(INSERT_RUN)?.execute(params![
        run.run_id,
        run.workflow_id,
        run.workflow_version,
        run.status,
        run.created_by,
        run.created_at,
        run.updated_at,
        run.ended_at,
        run.input_hash,
        run.next_step_id,
        opt_json_text(&run.failure)?,
        run.genesis_hash,
        run.receipt_hash,
        run.attempt_base,
    ])?;
    Ok(())
}

/// Writes the mutable fields of a run in one statement.
pub fn update_run(tx: &Tx<'_>, run: &Run) -> Result<(), StoreError> {
    tx.conn().prepare_cached(UPDATE_RUN)?.execute(params![
        run.run_id,
        run.status,
        run.updated_at,
        run.ended_at,
        run.next_step_id,
        opt_json_text(&run.failure)?,
        run.receipt_hash,
        run.attempt_base,
    ])?;
    Ok(())
}

pub fn get_run(db: &impl Db, run_id: &str) -> Result<Option<Run>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(GET_RUN)?
        .query_row([run_id], run_from_row)
        .optional()?)
}

/// How many runs the database holds.
pub fn count_runs(db: &impl Db) -> Result<i64, StoreError> {
    Ok(db
        .conn()
        .prepare_cached("SELECT count(*) FROM runs")?
        .query_row([], |r| r.get(0))?)
}

/// Runs in `run_id` order after `after`, optionally filtered, at most `limit`.
pub fn list_runs(
    db: &impl Db,
    status: Option<RunStatus>,
    workflow_id: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Run>, StoreError> {
    let sql = match (status, workflow_id) {
        (None, None) => LIST_RUNS,
        (Some(_), None) => LIST_RUNS_BY_STATUS,
        (None, Some(_)) => LIST_RUNS_OF_WORKFLOW,
        (Some(_), Some(_)) => LIST_RUNS_OF_WORKFLOW_BY_STATUS,
    };
    // Every run_id (a UUID) sorts after the empty text.
    let after = after.unwrap_or("");
    let mut stmt = db.conn().prepare_cached(sql)?;
    let rows = stmt.query_map(params![status, workflow_id, after, limit], run_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------------------------------------
// Step attempts

pub(super) const STEP_COLUMNS: &str = step_columns!();

pub(super) const INSERT_STEP: &str = concat!(
    "INSERT INTO steps (",
    step_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
);
pub(super) const UPDATE_STEP: &str =
    "UPDATE steps SET status = ?4, ended_at = ?5, output_hash = ?6, error = ?7,
       prev_receipt_hash = ?8, receipt_hash = ?9
     WHERE run_id = ?1 AND step_id = ?2 AND attempt = ?3";
pub(super) const STEPS_OF_RUN: &str = concat!(
    "SELECT ",
    step_columns!(),
    " FROM steps WHERE run_id = ?1 ORDER BY creation_order"
);
pub(super) const LAST_STEP: &str = concat!(
    "SELECT ",
    step_columns!(),
    " FROM steps WHERE run_id = ?1 ORDER BY creation_order DESC LIMIT 1"
);
pub(super) const MAX_ATTEMPT: &str =
    "SELECT coalesce(max(attempt), 0) FROM steps WHERE run_id = ?1 AND step_id = ?2";
pub(super) const LAST_STEP_RECEIPT: &str =
    "SELECT receipt_hash FROM steps WHERE run_id = ?1 AND receipt_hash IS NOT NULL
     ORDER BY creation_order DESC LIMIT 1";
pub(super) const STEP_RECEIPTS: &str =
    "SELECT receipt_hash FROM steps WHERE run_id = ?1 AND receipt_hash IS NOT NULL ORDER BY creation_order";

pub(super) fn step_from_row(r: &Row<'_>) -> rusqlite::Result<StepAttempt> {
    Ok(StepAttempt {
        run_id: r.get(0)?,
        step_id: r.get(1)?,
        step_type: r.get(2)?,
        step_index: r.get(3)?,
        attempt: r.get(4)?,
        status: r.get(5)?,
        actor: r.get(6)?,
        started_at: r.get(7)?,
        ended_at: r.get(8)?,
        input_hash: r.get(9)?,
        output_hash: r.get(10)?,
        error: r.get::<_, Option<Json<Value>>>(11)?.map(|j| j.0),
        decision_id: r.get(12)?,
        decision_hash: r.get(13)?,
        prev_receipt_hash: r.get(14)?,
        receipt_hash: r.get(15)?,
    })
}

pub fn insert_step(tx: &Tx<'_>, s: &StepAttempt) -> Result<(), StoreError> {
    tx.conn().prepare_cached(INSERT_STEP)?.execute(params![
        s.run_id,
        s.step_id,
        s.step_type,
        s.step_index,
        s.attempt,
        s.status,
        s.actor,
        s.started_at,
        s.ended_at,
        s.input_hash,
        s.output_hash,
        opt_json_text(&s.error)?,
        s.decision_id,
        s.decision_hash,
        s.prev_receipt_hash,
        s.receipt_hash,
    ])?;
    Ok(())
}

/// Writes the mutable fields of an attempt in one statement.
pub fn update_step(tx: &Tx<'_>, s: &StepAttempt) -> Result<(), StoreError> {
    tx.conn().prepare_cached(UPDATE_STEP)?.execute(params![
        s.run_id,
        s.step_id,
        s.attempt,
        s.status,
        s.ended_at,
        s.output_hash,
        opt_json_text(&s.error)?,
        s.prev_receipt_hash,
        s.receipt_hash,
    ])?;
    Ok(())
}

/// Every attempt of a run in the order they were created.
pub fn steps_of_run(db: &impl Db, run_id: &str) -> Result<Vec<StepAttempt>, StoreError> {
    let mut stmt = db.conn().prepare_cached(STEPS_OF_RUN)?;
    let rows = stmt.query_map([run_id], step_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The run's most recent attempt, open or not.
pub fn last_step(db: &impl Db, run_id: &str) -> Result<Option<StepAttempt>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(LAST_STEP)?
        .query_row([run_id], step_from_row)
        .optional()?)
}

/// The highest attempt number of one step of a run (0 when never requested).
pub fn max_attempt(db: &impl Db, run_id: &str, step_id: &str) -> Result<i64, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(MAX_ATTEMPT)?
        .query_row([run_id, step_id], |r| r.get(0))?)
}

/// The receipt of the run's most recently finished attempt, if any attempt has finished.
pub fn last_step_receipt(db: &impl Db, run_id: &str) -> Result<Option<String>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(LAST_STEP_RECEIPT)?
        .query_row([run_id], |r| r.get(0))
        .optional()?)
}

/// Receipt hashes of the run's finished attempts in the order they finished.
pub fn step_receipts(db: &impl Db, run_id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = db.conn().prepare_cached(STEP_RECEIPTS)?;
    let rows = stmt.query_map([run_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------------------------------------
// Decisions

pub(super) const DECISION_COLUMNS: &str = decision_columns!();

pub(super) const INSERT_DECISION: &str = concat!(
    "INSERT INTO decisions (",
    decision_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
);
pub(super) const DECISIONS_OF_RUN: &str = concat!(
    "SELECT ",
    decision_columns!(),
    " FROM decisions WHERE run_id = ?1 ORDER BY creation_order"
);

pub(super) fn decision_from_row(r: &Row<'_>) -> rusqlite::Result<Decision> {
    Ok(Decision {
        decision_id: r.get(0)?,
        run_id: r.get(1)?,
        step_id: r.get(2)?,
        attempt: r.get(3)?,
        effect: r.get(4)?,
        reason: r.get(5)?,
        policy_id: r.get(6)?,
        policy_version: r.get(7)?,
        policy_hash: r.get(8)?,
        tier: r.get(9)?,
        rules_triggered: r.get::<_, Json<Vec<String>>>(10)?.0,
        input_hash: r.get(11)?,
        actor: r.get(12)?,
        decided_at: r.get(13)?,
        decision_hash: r.get(14)?,
    })
}

pub fn insert_decision(tx: &Tx<'_>, d: &Decision) -> Result<(), StoreError> {
    tx.conn().prepare_cached(INSERT_DECISION)?.execute(params![
        d.decision_id,
        d.run_id,
        d.step_id,
        d.attempt,
        d.effect,
        d.reason,
        d.policy_id,
        d.policy_version,
        d.policy_hash,
        d.tier,
        json_text(&d.rules_triggered)?,
        d.input_hash,
        d.actor,
        d.decided_at,
        d.decision_hash,
    ])?;
    Ok(())
}

/// Every decision of a run in the order it was made.
pub fn decisions_of_run(db: &impl Db, run_id: &str) -> Result<Vec<Decision>, StoreError> {
    let mut stmt = db.conn().prepare_cached(DECISIONS_OF_RUN)?;
    let rows = stmt.query_map([run_id], decision_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------------------------------------
// Gates

pub(super) const GATE_COLUMNS: &str = gate_columns!();

pub(super) const INSERT_GATE: &str = concat!(
    "INSERT INTO gates (",
    gate_columns!(),
    ", approvals_required) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
);
pub(super) const UPDATE_GATE: &str =
    "UPDATE gates SET status = ?2, resolved_by = ?3, resolved_at = ?4, comment = ?5,
       receipt_hash = ?6 WHERE gate_id = ?1";
pub(super) const APPROVALS_OF_GATE: &str =
    "SELECT approver, approved_at, comment FROM gate_approvals WHERE gate_id = ?1
     ORDER BY approved_at, approver";
pub(super) const INSERT_APPROVAL: &str =
    "INSERT INTO gate_approvals (gate_id, approver, approved_at, comment) VALUES (?1, ?2, ?3, ?4)";
pub(super) const RUNS_WITH_EXPIRED_GATES: &str =
    "SELECT DISTINCT run_id FROM gates WHERE status = 'PENDING' AND expires_at IS NOT NULL
       AND expires_at <= ?1 LIMIT ?2";

/// One gate by id, for a file of schema version `schema_version` (see `gate_select`).
pub(super) fn gate_by_id_sql(schema_version: i64) -> &'static str {
    const CURRENT: &str = concat!(
        "SELECT ",
        gate_columns!(),
        ", approvals_required FROM gates WHERE gate_id = ?1"
    );
    const VERSION_1: &str = concat!(
        "SELECT ",
        gate_columns!(),
        ", 1 FROM gates WHERE gate_id = ?1"
    );
    if schema_version >= 2 {
        CURRENT
    } else {
        VERSION_1
    }
}

/// The gates of a run in the order they were requested, for a file of schema version
/// `schema_version` (see `gate_select`).
pub(super) fn gates_of_run_sql(schema_version: i64) -> &'static str {
    const CURRENT: &str = concat!(
        "SELECT ",
        gate_columns!(),
        ", approvals_required FROM gates WHERE run_id = ?1 ORDER BY creation_order"
    );
    const VERSION_1: &str = concat!(
        "SELECT ",
        gate_columns!(),
        ", 1 FROM gates WHERE run_id = ?1 ORDER BY creation_order"
    );
    if schema_version >= 2 {
        CURRENT
    } else {
        VERSION_1
    }
}

/// What `gate_from_row` reads: the migration-1 columns, then `approvals_required` (migration 2;
/// a database of schema version 1 is read with the constant 1 in its place).
pub(super) fn gate_select(schema_version: i64) -> String {
    let quorum = if schema_version >= 2 {
        "approvals_required"
    } else {
        "1"
    };
    format!("{GATE_COLUMNS}, {quorum}")
}

pub(super) fn gate_from_row(r: &Row<'_>) -> rusqlite::Result<Gate> {
    Ok(Gate {
        gate_id: r.get(0)?,
        run_id: r.get(1)?,
        step_id: r.get(2)?,
        attempt: r.get(3)?,
        status: r.get(4)?,
        reason: r.get(5)?,
        decision_id: r.get(6)?,
        requested_by: r.get(7)?,
        requested_at: r.get(8)?,
        expires_at: r.get(9)?,
        resolved_by: r.get(10)?,
        resolved_at: r.get(11)?,
        comment: r.get(12)?,
        receipt_hash: r.get(13)?,
        approvals_required: r.get(14)?,
        approvals: Vec::new(),
    })
}

/// Loads the approvals of a quorum gate into it (other gates record none).
pub(super) fn fill_approvals(db: &impl Db, gate: &mut Gate) -> Result<(), StoreError> {
    if gate.is_quorum() {
        gate.approvals = approvals_of_gate(db, &gate.gate_id)?;
    }
    Ok(())
}

/// The approvals of a gate in the order they were given.
pub fn approvals_of_gate(db: &impl Db, gate_id: &str) -> Result<Vec<GateApproval>, StoreError> {
    let mut stmt = db.conn().prepare_cached(APPROVALS_OF_GATE)?;
    let rows = stmt.query_map([gate_id], |r| {
        Ok(GateApproval {
            approver: r.get(0)?,
            approved_at: r.get(1)?,
            comment: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records one approver's approval of a quorum gate.
pub fn insert_approval(
    tx: &Tx<'_>,
    gate_id: &str,
    approval: &GateApproval,
) -> Result<(), StoreError> {
    tx.conn().prepare_cached(INSERT_APPROVAL)?.execute(params![
        gate_id,
        approval.approver,
        approval.approved_at,
        approval.comment
    ])?;
    Ok(())
}

pub fn insert_gate(tx: &Tx<'_>, g: &Gate) -> Result<(), StoreError> {
    tx.conn().prepare_cached(INSERT_GATE)?.execute(params![
        g.gate_id,
        g.run_id,
        g.step_id,
        g.attempt,
        g.status,
        g.reason,
        g.decision_id,
        g.requested_by,
        g.requested_at,
        g.expires_at,
        g.resolved_by,
        g.resolved_at,
        g.comment,
        g.receipt_hash,
        g.approvals_required,
    ])?;
    Ok(())
}

/// Writes the resolution of a gate in one statement.
pub fn update_gate(tx: &Tx<'_>, g: &Gate) -> Result<(), StoreError> {
    tx.conn().prepare_cached(UPDATE_GATE)?.execute(params![
        g.gate_id,
        g.status,
        g.resolved_by,
        g.resolved_at,
        g.comment,
        g.receipt_hash
    ])?;
    Ok(())
}

pub fn get_gate(db: &impl Db, gate_id: &str) -> Result<Option<Gate>, StoreError> {
    let gate = db
        .conn()
        .prepare_cached(gate_by_id_sql(db.schema_version()))?
        .query_row([gate_id], gate_from_row)
        .optional()?;
    match gate {
        Some(mut gate) => {
            fill_approvals(db, &mut gate)?;
            Ok(Some(gate))
        }
        None => Ok(None),
    }
}

/// Every gate of a run in the order it was requested.
pub fn gates_of_run(db: &impl Db, run_id: &str) -> Result<Vec<Gate>, StoreError> {
    let mut stmt = db
        .conn()
        .prepare_cached(gates_of_run_sql(db.schema_version()))?;
    let mut gates: Vec<Gate> = stmt
        .query_map([run_id], gate_from_row)?
        .collect::<Result<_, _>>()?;
    for gate in &mut gates {
        fill_approvals(db, gate)?;
    }
    Ok(gates)
}

/// Runs that have a PENDING gate whose deadline is at or before `now`.
pub fn runs_with_expired_gates(
    db: &impl Db,
    now: Timestamp,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = db.conn().prepare_cached(RUNS_WITH_EXPIRED_GATES)?;
    let rows = stmt.query_map(params![now, limit], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------------------------------------
// Audit log

pub(super) const AUDIT_COLUMNS: &str = audit_columns!();

pub(super) const INSERT_AUDIT: &str = concat!(
    "INSERT INTO audit_log (",
    audit_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
);
/// The head is the entry at the largest seq: one probe for `max(seq)` (the last key of the table's
/// b-tree) and one for its row.
pub(super) const AUDIT_HEAD: &str =
    "SELECT seq, entry_hash FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)";
pub(super) const AUDIT_PAGE: &str = concat!(
    "SELECT ",
    audit_columns!(),
    " FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"
);
pub(super) const AUDIT_OF_RUN: &str = concat!(
    "SELECT ",
    audit_columns!(),
    " FROM audit_log WHERE run_id = ?1 ORDER BY seq"
);

pub(super) fn audit_from_row(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        run_id: r.get(1)?,
        at: r.get(2)?,
        actor: r.get(3)?,
        action: r.get(4)?,
        subject: r.get(5)?,
        from_status: r.get(6)?,
        to_status: r.get(7)?,
        decision: r.get(8)?,
        reason: r.get(9)?,
        message: r.get(10)?,
        evidence_pack_ref: r.get(11)?,
        payload_hash: r.get(12)?,
        prev_hash: r.get(13)?,
        entry_hash: r.get(14)?,
    })
}

/// `audit_from_row` into an entry already there, reusing its strings: the same value, or the
/// same error (any column that is not what fedcore writes is read again the usual way).
pub(super) fn audit_into(r: &Row<'_>, e: &mut AuditEntry) -> rusqlite::Result<()> {
    let read = (|| -> Option<()> {
        e.seq = r.get_ref(0).ok()?.as_i64().ok()?;
        opt_text_into(r, 1, &mut e.run_id)?;
        e.at = r.get(2).ok()?;
        text_into(r, 3, &mut e.actor)?;
        text_into(r, 4, &mut e.action)?;
        text_into(r, 5, &mut e.subject)?;
        opt_text_into(r, 6, &mut e.from_status)?;
        opt_text_into(r, 7, &mut e.to_status)?;
        opt_text_into(r, 8, &mut e.decision)?;
        opt_text_into(r, 9, &mut e.reason)?;
        text_into(r, 10, &mut e.message)?;
        opt_text_into(r, 11, &mut e.evidence_pack_ref)?;
        text_into(r, 12, &mut e.payload_hash)?;
        text_into(r, 13, &mut e.prev_hash)?;
        text_into(r, 14, &mut e.entry_hash)
    })();
    if read.is_none() {
        *e = audit_from_row(r)?;
    }
    Ok(())
}

/// A TEXT column into `into`, as `String`'s `FromSql` reads it; `None` for anything else.
fn text_into(r: &Row<'_>, index: usize, into: &mut String) -> Option<()> {
    let text = r.get_ref(index).ok()?.as_str().ok()?;
    into.clear();
    into.push_str(text);
    Some(())
}

/// A TEXT or NULL column into `into`, as `Option<String>`'s `FromSql` reads it.
fn opt_text_into(r: &Row<'_>, index: usize, into: &mut Option<String>) -> Option<()> {
    match r.get_ref(index).ok()? {
        ValueRef::Null => *into = None,
        value => text_into_option(value.as_str().ok()?, into),
    }
    Some(())
}

fn text_into_option(text: &str, into: &mut Option<String>) {
    match into {
        Some(kept) => {
            kept.clear();
            kept.push_str(text);
        }
        None => *into = Some(text.to_string()),
    }
}

pub fn insert_audit(tx: &Tx<'_>, e: &AuditEntry) -> Result<(), StoreError> {
    tx.conn().prepare_cached(INSERT_AUDIT)?.execute(params![
        e.seq,
        e.run_id,
        e.at,
        e.actor,
        e.action,
        e.subject,
        e.from_status,
        e.to_status,
        e.decision,
        e.reason,
        e.message,
        e.evidence_pack_ref,
        e.payload_hash,
        e.prev_hash,
        e.entry_hash,
    ])?;
    Ok(())
}

/// The last entry's `(seq, entry_hash)`, or `None` for an empty log.
pub fn audit_head(db: &impl Db) -> Result<Option<(i64, String)>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(AUDIT_HEAD)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Entries with `seq > after_seq`, in order, at most `limit`.
pub fn audit_page(db: &impl Db, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = db.conn().prepare_cached(AUDIT_PAGE)?;
    let rows = stmt.query_map(params![after_seq, limit], audit_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every entry of one run, in order.
pub fn audit_of_run(db: &impl Db, run_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = db.conn().prepare_cached(AUDIT_OF_RUN)?;
    let rows = stmt.query_map([run_id], audit_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Option<Timestamp> {
        Timestamp::column_result(ValueRef::Text(text.as_bytes())).ok()
    }

    #[test]
    fn a_timestamp_is_read_back_only_in_the_form_it_was_written() {
        for micros in [
            0,
            1,
            999_999,
            1_795_428_000_123_456,
            253_402_300_799_999_999,
        ] {
            let t = Timestamp::from_micros(micros);
            assert_eq!(read(&t.to_string()), Some(t), "{t}");
        }
        for other in [
            "2026-11-23T10:00:00.123456+00:00",
            "2026-11-23T10:00:00.123456z",
            "2026-11-23t10:00:00.123456Z",
            "2026-11-23T10:00:00.123Z",
            "2026-11-23T10:00:00Z",
            "2026-11-23 10:00:00.123456Z",
            "2016-12-31T23:59:60.000000Z",
            "2026-13-23T10:00:00.123456Z",
        ] {
            assert_eq!(read(other), None, "{other}");
        }
    }
    #[test]
    fn a_write_forgets_at_most_a_batch_of_expired_keys_oldest_first() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::migrate(&conn, std::path::Path::new(":memory:")).unwrap();
        let tx = Tx { conn: &conn };
        let answer = StoredAnswer {
            request_hash: "h".to_string(),
            status: 200,
            response: b"{}".to_vec(),
        };
        let at = Timestamp::from_micros;
        let n_expired = PURGE_BATCH + 50;
        for i in 0..n_expired {
            put_idempotency(&tx, "a", &format!("old-{i}"), &answer, at(i + 1), at(0)).unwrap();
        }
        let oldest_left = |conn: &rusqlite::Connection| -> (i64, Option<String>) {
            conn.query_row(
                "SELECT count(*), (SELECT key FROM idempotency WHERE key LIKE 'old-%'
                   ORDER BY created_at LIMIT 1)
                 FROM idempotency WHERE key LIKE 'old-%'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        let keep_since = at(1_000_000);
        put_idempotency(&tx, "a", "new-1", &answer, keep_since, keep_since).unwrap();
        assert_eq!(
            oldest_left(&conn),
            (50, Some(format!("old-{PURGE_BATCH}"))),
            "expected one write to forget the {PURGE_BATCH} oldest expired keys"
        );
        put_idempotency(&tx, "a", "new-2", &answer, keep_since, keep_since).unwrap();
        assert_eq!(
            oldest_left(&conn),
            (0, None),
            "expected the rest forgotten next"
        );
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM idempotency", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 2, "expected the keys in time kept");
    }
}

// ---------------------------------------------------------------------------------------------
// Idempotency keys

/// The first answer given to a request under an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub request_hash: String,
    pub status: u16,
    pub response: Vec<u8>,
}

pub(super) const GET_IDEMPOTENCY: &str =
    "SELECT request_hash, status, response FROM idempotency WHERE actor = ?1 AND key = ?2";
/// The oldest `?2` keys first used before `?1`, found through `idempotency_by_age`.
pub(super) const PURGE_IDEMPOTENCY: &str = "DELETE FROM idempotency WHERE (actor, key) IN
       (SELECT actor, key FROM idempotency WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)";
pub(super) const PUT_IDEMPOTENCY: &str =
    "INSERT INTO idempotency (actor, key, request_hash, status, response, created_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

pub fn get_idempotency(
    db: &impl Db,
    actor: &str,
    key: &str,
) -> Result<Option<StoredAnswer>, StoreError> {
    Ok(db
        .conn()
        .prepare_cached(GET_IDEMPOTENCY)?
        .query_row([actor, key], |r| {
            Ok(StoredAnswer {
                request_hash: r.get(0)?,
                status: r.get(1)?,
                response: r.get(2)?,
            })
        })
        .optional()?)
}

/// The most expired keys one write forgets. Every write under a key adds one and forgets up to
/// this many, so a backlog (after a long stop, say) drains within a few requests, while no
/// request pays for all of it.
const PURGE_BATCH: i64 = 100;

/// Keeps `answer` under `(actor, key)`, and forgets (up to `PURGE_BATCH` of) the keys first used
/// before `keep_since`, oldest first.
pub fn put_idempotency(
    tx: &Tx<'_>,
    actor: &str,
    key: &str,
    answer: &StoredAnswer,
    now: Timestamp,
    keep_since: Timestamp,
) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached(PURGE_IDEMPOTENCY)?
        .execute(params![keep_since, PURGE_BATCH])?;
    tx.conn().prepare_cached(PUT_IDEMPOTENCY)?.execute(params![
        actor,
        key,
        answer.request_hash,
        answer.status,
        answer.response,
        now
    ])?;
    Ok(())
}
