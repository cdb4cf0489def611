//! The query plans of the hot path: every statement a request runs (authentication, idempotency,
//! the writer's chain head and checkpoints, every write command, the gate sweep, and the reads a
//! client polls), with representative parameters and the plan it must have. On a database made by
//! the real migrations, each one's `EXPLAIN QUERY PLAN` must find its rows through an index or
//! the integer primary key: no `SCAN` of a table, no automatic (per-query) index, no temporary
//! B-tree for `ORDER BY`; and it must be exactly the plan written here, so that an index that
//! constrains fewer columns (a `SEARCH` that filters a growing range row by row) is caught too.
//! A statement's cost then follows the rows it returns, not how many rows the tables hold.
//! fedcore never runs `ANALYZE`, so SQLite's plans do not depend on the data, and those of an
//! empty database are those of a full one.
//!
//! Left out on purpose: statements of rare admin commands that read one name's tokens or a whole
//! small table (`live_tokens_named`, `list_tokens`, `count_tokens`, `list_agents`), what `serve`
//! runs once at start, and `verify`/`export`, which read everything by design.

use super::queries::*;
use super::signatures::{INSERT_CHECKPOINT, INSERT_SIGNATURE, LAST_CHECKPOINT};
use super::{migrate, SCHEMA_VERSION};
use rusqlite::types::Value;
use rusqlite::Connection;
use std::path::Path;

/// A statement of the hot path: what runs it, its text, parameters like those it is given, and
/// the steps of the plan it must have (an INSERT of one row of values has none).
struct Hot {
    what: &'static str,
    sql: &'static str,
    params: Vec<Value>,
    plan: &'static [&'static str],
}

fn hot(
    what: &'static str,
    sql: &'static str,
    params: Vec<Value>,
    plan: &'static [&'static str],
) -> Hot {
    Hot {
        what,
        sql,
        params,
        plan,
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn int(i: i64) -> Value {
    Value::Integer(i)
}

/// An INSERT of one row of values: no plan step (its unique and foreign key checks are probes
/// of primary keys and unique indexes, which `EXPLAIN QUERY PLAN` does not show).
const INSERT: &[&str] = &[];

/// Every statement a request can run, grouped by who runs it.
fn hot_statements() -> Vec<Hot> {
    let run_id = text("0193b1e2-7c4d-7a10-8000-000000000001");
    let gate_id = text("0193b1e2-7c4d-7a10-8000-000000000002");
    let step_id = text("fetch");
    let hash = text(&"ab".repeat(32));
    let now = text("2026-11-24T10:00:00.000000Z");
    let actor = text("agent-1");
    vec![
        // Every authenticated request, on a read connection.
        hot(
            "live_token_by_hash",
            LIVE_TOKEN_BY_HASH,
            vec![hash.clone()],
            &["SEARCH tokens USING INDEX sqlite_autoindex_tokens_2 (token_hash=?)"],
        ),
        // Every write made under a token, in the writer's transaction: still not revoked.
        hot(
            "token_is_live",
            TOKEN_IS_LIVE,
            vec![text("0193b1e2-7c4d-7a10-8000-000000000003")],
            &["SEARCH tokens USING INDEX sqlite_autoindex_tokens_1 (token_id=?)"],
        ),
        // A write under an Idempotency-Key, in the writer's transaction.
        hot(
            "get_idempotency",
            GET_IDEMPOTENCY,
            vec![actor.clone(), text("k-1")],
            &["SEARCH idempotency USING PRIMARY KEY (actor=? AND key=?)"],
        ),
        hot(
            "put_idempotency: purge",
            PURGE_IDEMPOTENCY,
            vec![now.clone(), int(100)],
            &[
                "SEARCH idempotency USING PRIMARY KEY (actor=? AND key=?)",
                "LIST SUBQUERY 1",
                "  SEARCH idempotency USING COVERING INDEX idempotency_by_age (created_at<?)",
            ],
        ),
        hot(
            "put_idempotency: insert",
            PUT_IDEMPOTENCY,
            vec![actor.clone(), text("k-1")],
            INSERT,
        ),
        // Every write: the chain head it extends, its entries, evidence, signatures, checkpoints.
        hot(
            "audit_head",
            AUDIT_HEAD,
            vec![],
            &[
                "SEARCH audit_log USING INTEGER PRIMARY KEY (rowid=?)",
                "SCALAR SUBQUERY 1",
                "  SEARCH audit_log",
            ],
        ),
        hot("insert_audit", INSERT_AUDIT, vec![int(42)], INSERT),
        hot("put_evidence", PUT_EVIDENCE, vec![hash.clone()], INSERT),
        hot(
            "last_checkpoint",
            LAST_CHECKPOINT,
            vec![],
            &[
                "SEARCH checkpoints USING INTEGER PRIMARY KEY (rowid=?)",
                "SCALAR SUBQUERY 1",
                "  SEARCH checkpoints",
            ],
        ),
        hot("insert_checkpoint", INSERT_CHECKPOINT, vec![int(42)], INSERT),
        hot("insert_signature", INSERT_SIGNATURE, vec![hash.clone()], INSERT),
        // Creating a run.
        hot(
            "get_definition (latest)",
            LATEST_DEFINITION,
            vec![text("wf")],
            &["SEARCH workflows USING INDEX sqlite_autoindex_workflows_1 (workflow_id=?)"],
        ),
        hot("insert_run", INSERT_RUN, vec![run_id.clone()], INSERT),
        // Every command on a run: its gates' deadlines first, then the run and its definition.
        hot(
            "gates_of_run",
            gates_of_run_sql(SCHEMA_VERSION),
            vec![run_id.clone()],
            &["SEARCH gates USING INDEX gates_by_run (run_id=?)"],
        ),
        hot(
            "approvals_of_gate",
            APPROVALS_OF_GATE,
            vec![gate_id.clone()],
            &["SEARCH gate_approvals USING INDEX gate_approvals_in_order (gate_id=?)"],
        ),
        hot(
            "get_run",
            GET_RUN,
            vec![run_id.clone()],
            &[
                "SEARCH r USING INDEX sqlite_autoindex_runs_1 (run_id=?)",
                "SEARCH e USING INDEX sqlite_autoindex_evidence_1 (hash=?)",
            ],
        ),
        hot(
            "get_definition (pinned)",
            DEFINITION_VERSION,
            vec![text("wf"), int(3)],
            &["SEARCH workflows USING INDEX sqlite_autoindex_workflows_1 (workflow_id=? AND version=?)"],
        ),
        hot(
            "update_run",
            UPDATE_RUN,
            vec![run_id.clone()],
            &["SEARCH runs USING INDEX sqlite_autoindex_runs_1 (run_id=?)"],
        ),
        // Requesting and finishing a step.
        hot(
            "last_step",
            LAST_STEP,
            vec![run_id.clone()],
            &["SEARCH steps USING INDEX steps_by_run (run_id=?)"],
        ),
        hot(
            "max_attempt",
            MAX_ATTEMPT,
            vec![run_id.clone(), step_id.clone()],
            &["SEARCH steps USING COVERING INDEX sqlite_autoindex_steps_1 (run_id=? AND step_id=?)"],
        ),
        hot(
            "get_policy (latest)",
            LATEST_POLICY,
            vec![text("pol")],
            &["SEARCH policies USING INDEX sqlite_autoindex_policies_1 (policy_id=?)"],
        ),
        hot(
            "get_policy (a version)",
            POLICY_VERSION,
            vec![text("pol"), int(2)],
            &["SEARCH policies USING INDEX sqlite_autoindex_policies_1 (policy_id=? AND version=?)"],
        ),
        hot(
            "get_agent",
            GET_AGENT,
            vec![actor.clone()],
            &["SEARCH agents USING INDEX sqlite_autoindex_agents_1 (agent_id=?)"],
        ),
        hot("insert_decision", INSERT_DECISION, vec![text("d-1")], INSERT),
        hot("insert_step", INSERT_STEP, vec![run_id.clone()], INSERT),
        hot(
            "update_step",
            UPDATE_STEP,
            vec![run_id.clone(), step_id.clone(), int(1)],
            &["SEARCH steps USING INDEX sqlite_autoindex_steps_1 (run_id=? AND step_id=? AND attempt=?)"],
        ),
        hot(
            "last_step_receipt",
            LAST_STEP_RECEIPT,
            vec![run_id.clone()],
            &["SEARCH steps USING INDEX steps_by_run (run_id=?)"],
        ),
        hot(
            "step_receipts",
            STEP_RECEIPTS,
            vec![run_id.clone()],
            &["SEARCH steps USING INDEX steps_by_run (run_id=?)"],
        ),
        // Gates: open, approve or reject, expire.
        hot("insert_gate", INSERT_GATE, vec![gate_id.clone()], INSERT),
        hot(
            "get_gate",
            gate_by_id_sql(SCHEMA_VERSION),
            vec![gate_id.clone()],
            &["SEARCH gates USING INDEX sqlite_autoindex_gates_1 (gate_id=?)"],
        ),
        hot("insert_approval", INSERT_APPROVAL, vec![gate_id.clone()], INSERT),
        hot(
            "update_gate",
            UPDATE_GATE,
            vec![gate_id.clone()],
            &["SEARCH gates USING INDEX sqlite_autoindex_gates_1 (gate_id=?)"],
        ),
        // Only the PENDING gates with a deadline are in this partial index, and the DISTINCT
        // B-tree holds only the runs of those already due.
        hot(
            "runs_with_expired_gates",
            RUNS_WITH_EXPIRED_GATES,
            vec![now.clone(), int(100)],
            &[
                "SEARCH gates USING INDEX gates_pending_expiry (expires_at>? AND expires_at<?)",
                "USE TEMP B-TREE FOR DISTINCT",
            ],
        ),
        // Catalog and token changes.
        hot("insert_policy", INSERT_POLICY, vec![text("pol")], INSERT),
        hot("insert_definition", INSERT_DEFINITION, vec![text("wf")], INSERT),
        hot("upsert_agent", UPSERT_AGENT, vec![actor.clone()], INSERT),
        hot("insert_token", INSERT_TOKEN, vec![text("t-1")], INSERT),
        hot(
            "revoke_token",
            REVOKE_TOKEN,
            vec![text("t-1")],
            &["SEARCH tokens USING INDEX sqlite_autoindex_tokens_1 (token_id=?)"],
        ),
        // What a client polls, on read connections.
        hot(
            "steps_of_run",
            STEPS_OF_RUN,
            vec![run_id.clone()],
            &["SEARCH steps USING INDEX steps_by_run (run_id=?)"],
        ),
        hot(
            "decisions_of_run",
            DECISIONS_OF_RUN,
            vec![run_id.clone()],
            &["SEARCH decisions USING INDEX decisions_by_run (run_id=?)"],
        ),
        hot(
            "audit_of_run",
            AUDIT_OF_RUN,
            vec![run_id.clone()],
            &["SEARCH audit_log USING INDEX audit_by_run (run_id=?)"],
        ),
        hot(
            "get_evidence",
            GET_EVIDENCE,
            vec![hash.clone()],
            &["SEARCH evidence USING INDEX sqlite_autoindex_evidence_1 (hash=?)"],
        ),
        hot(
            "audit_page",
            AUDIT_PAGE,
            vec![int(1000), int(100)],
            &["SEARCH audit_log USING INTEGER PRIMARY KEY (rowid>?)"],
        ),
        hot(
            "list_runs",
            LIST_RUNS,
            vec![Value::Null, Value::Null, text(""), int(51)],
            &[
                "SEARCH r USING INDEX sqlite_autoindex_runs_1 (run_id>?)",
                "SEARCH e USING INDEX sqlite_autoindex_evidence_1 (hash=?)",
            ],
        ),
        hot(
            "list_runs (status)",
            LIST_RUNS_BY_STATUS,
            vec![text("RUNNING"), Value::Null, run_id.clone(), int(51)],
            &[
                "SEARCH r USING INDEX runs_by_status (status=? AND run_id>?)",
                "SEARCH e USING INDEX sqlite_autoindex_evidence_1 (hash=?)",
            ],
        ),
        hot(
            "list_runs (workflow)",
            LIST_RUNS_OF_WORKFLOW,
            vec![Value::Null, text("wf"), run_id.clone(), int(51)],
            &[
                "SEARCH r USING INDEX runs_by_workflow (workflow_id=? AND run_id>?)",
                "SEARCH e USING INDEX sqlite_autoindex_evidence_1 (hash=?)",
            ],
        ),
        hot(
            "list_runs (workflow, status)",
            LIST_RUNS_OF_WORKFLOW_BY_STATUS,
            vec![text("RUNNING"), text("wf"), run_id.clone(), int(51)],
            &[
                "SEARCH r USING INDEX runs_by_workflow_status (workflow_id=? AND status=? AND run_id>?)",
                "SEARCH e USING INDEX sqlite_autoindex_evidence_1 (hash=?)",
            ],
        ),
    ]
}

/// A database made by the real migrations, as `open_for_writing` makes it.
fn migrated() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    migrate(&conn, Path::new(":memory:")).unwrap();
    conn
}

/// The `EXPLAIN QUERY PLAN` of `sql` with `params` bound (the rest NULL), one line per step,
/// indented two spaces per level.
fn plan(conn: &Connection, sql: &str, params: &[Value]) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    for (i, value) in params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, value).unwrap();
    }
    let mut rows = stmt.raw_query();
    // (step id, its level) of the steps above the current one.
    let mut ancestors: Vec<(i64, usize)> = Vec::new();
    let mut lines = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        let id: i64 = row.get(0).unwrap();
        let parent: i64 = row.get(1).unwrap();
        let detail: String = row.get(3).unwrap();
        while ancestors.last().is_some_and(|&(p, _)| p != parent) {
            ancestors.pop();
        }
        let level = ancestors.last().map_or(0, |&(_, level)| level + 1);
        ancestors.push((id, level));
        lines.push(format!("{}{detail}", "  ".repeat(level)));
    }
    lines
}

/// The steps of a plan whose cost grows with a table rather than with the rows asked for: a scan
/// of a table (or of a whole index), an automatic index (built by scanning), a sort of the rows
/// found in a temporary B-tree.
fn growing_steps(plan: &[String]) -> Vec<&str> {
    plan.iter()
        .map(|line| line.trim())
        .filter(|step| {
            (step.starts_with("SCAN ") && !step.starts_with("SCAN CONSTANT ROW"))
                || step.contains("AUTOMATIC")
                || step.contains("TEMP B-TREE FOR ORDER BY")
        })
        .collect()
}

fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn no_statement_of_the_hot_path_scans_a_table_or_sorts() {
    let conn = migrated();
    let mut failures = Vec::new();
    for hot in hot_statements() {
        let plan = plan(&conn, hot.sql, &hot.params);
        let growing = growing_steps(&plan);
        if !growing.is_empty() {
            failures.push(format!(
                "{} does {}:\n  {}\n  plan:\n    {}",
                hot.what,
                growing.join(", "),
                one_line(hot.sql),
                plan.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "expected every hot statement to search an index, found:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_statement_of_the_hot_path_has_the_plan_written_for_it() {
    let conn = migrated();
    let mut failures = Vec::new();
    for hot in hot_statements() {
        let plan = plan(&conn, hot.sql, &hot.params);
        if plan != hot.plan {
            failures.push(format!(
                "{}:\n  {}\n  expected plan:\n    {}\n  found:\n    {}",
                hot.what,
                one_line(hot.sql),
                hot.plan.join("\n    "),
                plan.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "expected each hot statement to use the index written for it:\n{}",
        failures.join("\n")
    );
}

#[test]
fn a_dropped_index_is_caught() {
    let conn = migrated();
    let before = plan(&conn, STEPS_OF_RUN, &[text("r")]);
    assert!(growing_steps(&before).is_empty(), "{before:?}");
    conn.execute_batch("DROP INDEX steps_by_run").unwrap();
    let after = plan(&conn, STEPS_OF_RUN, &[text("r")]);
    assert!(
        !growing_steps(&after).is_empty(),
        "expected the plan without steps_by_run to be refused: {after:?}"
    );
}
