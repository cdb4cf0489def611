//! The database defends itself (contract §6). A real database is built over HTTP (a completed
//! run, a run failed by a policy denial, a run with an approved gate), the server is stopped, and
//! the file is then opened directly with SQLite: `audit_log`, `decisions` and `evidence` refuse
//! UPDATE and DELETE, `runs`, `steps` and `gates` refuse DELETE, and final runs, step attempts
//! and gates refuse UPDATE. Each refusal must come from a trigger, and nothing may change.

use crate::races::{
    approval_body, create_run, expect_status, install_workflow, open_gate, request_step,
    run_step_to_completion, STEP_IDS,
};
use crate::shutdown::stop_with_signal;
use crate::support::{Server, TempDir};
use rusqlite::{params, Connection, ToSql};
use std::path::PathBuf;

/// A stopped server's database and the ids of the objects built in it.
struct Built {
    _dir: TempDir,
    db: PathBuf,
    /// Every step completed: COMPLETED.
    completed_run: String,
    /// observe completed, decide denied: FAILED with `policy_denied`.
    denied_run: String,
    /// observe flagged and its gate approved; the run is still PAUSED.
    gated_run: String,
    approved_gate: String,
}

fn build_database() -> Built {
    let dir = TempDir::new();
    let db = dir.path().join("fedcore.db");
    let mut server = Server::start_on(&db, &[]);
    let mut client = server.client();
    install_workflow(&mut client);

    let completed_run = create_run(&mut client);
    for step_id in STEP_IDS {
        run_step_to_completion(&mut client, &completed_run, step_id);
    }

    let denied_run = create_run(&mut client);
    run_step_to_completion(&mut client, &denied_run, STEP_IDS[0]);
    let denied = request_step(&mut client, &denied_run, STEP_IDS[1], "critical");
    expect_status(&denied, 201, "requesting a critical-risk step");
    let denied = denied.json();
    assert_eq!(
        denied["step"]["status"], "DENIED",
        "expected a critical-risk step to be DENIED: {denied}"
    );
    assert_eq!(
        denied["run"]["failure"]["code"], "policy_denied",
        "expected the run to fail closed: {denied}"
    );

    let gated_run = create_run(&mut client);
    let approved_gate = open_gate(&mut client, &gated_run);
    let approval = client.patch(
        &format!("/workflows/runs/{gated_run}/gates/{approved_gate}"),
        &approval_body("approver-1"),
    );
    expect_status(&approval, 200, "approving the gate");

    drop(client);
    assert_eq!(
        stop_with_signal(&mut server, "TERM"),
        Some(0),
        "expected the server to stop cleanly"
    );
    Built {
        _dir: dir,
        db,
        completed_run,
        denied_run,
        gated_run,
        approved_gate,
    }
}

/// Opens the stopped server's database directly. Foreign keys stay off so that only triggers,
/// not constraints, can refuse a change.
fn open(built: &Built) -> Connection {
    let conn = Connection::open(&built.db).expect("open the database with SQLite");
    conn.execute_batch("PRAGMA foreign_keys = OFF;")
        .expect("foreign keys off");
    conn
}

/// Every row of `table`, each value in debug form, sorted: a snapshot to compare before and after.
/// `table` is one of this module's constants, never input.
fn snapshot(conn: &Connection, table: &str) -> Vec<Vec<String>> {
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {table}"))
        .expect("select the table");
    let n_columns = stmt.column_count();
    let mut rows: Vec<Vec<String>> = stmt
        .query_map([], |row| {
            (0..n_columns)
                .map(|i| {
                    row.get::<_, rusqlite::types::Value>(i)
                        .map(|v| format!("{v:?}"))
                })
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .expect("query the table")
        .collect::<rusqlite::Result<_>>()
        .expect("read the rows");
    rows.sort();
    rows
}

/// A single text value selected by `sql`, which must match exactly one row.
fn one_text(conn: &Connection, sql: &str, params: &[&dyn ToSql]) -> String {
    conn.query_row(sql, params, |row| row.get::<_, String>(0))
        .unwrap_or_else(|e| panic!("expected exactly one row for {sql}: {e}"))
}

/// Runs `sql`, which must touch at least one row of `table`, and asserts that a trigger refused
/// it: SQLITE_CONSTRAINT_TRIGGER, with a message naming the table or calling it immutable.
fn assert_refused_by_trigger(conn: &Connection, table: &str, sql: &str, params: &[&dyn ToSql]) {
    let result = conn.execute(sql, params);
    let (code, message) = match result {
        Err(rusqlite::Error::SqliteFailure(code, message)) => (code, message.unwrap_or_default()),
        other => panic!("expected a trigger to refuse `{sql}`, got {other:?}"),
    };
    assert_eq!(
        code.extended_code,
        rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER,
        "expected `{sql}` to be refused by a trigger (SQLITE_CONSTRAINT_TRIGGER), got {code:?}: {message}"
    );
    let lower = message.to_lowercase();
    let singular = table.trim_end_matches('s');
    assert!(
        lower.contains(singular) || lower.contains("append-only") || lower.contains("immutable"),
        "expected the refusal of `{sql}` to name {table} or say append-only/immutable, got {message:?}"
    );
}

/// Asserts that every statement is refused by a trigger and that `tables` are unchanged after.
fn assert_all_refused_and_nothing_changed(
    conn: &Connection,
    tables: &[&str],
    attempts: &[(&str, &str, &[&dyn ToSql])],
) {
    let before: Vec<_> = tables.iter().map(|t| snapshot(conn, t)).collect();
    for table in tables {
        assert!(
            !snapshot(conn, table).is_empty(),
            "expected the built database to have rows in {table}"
        );
    }
    for (table, sql, params) in attempts {
        assert_refused_by_trigger(conn, table, sql, params);
    }
    for (table, rows_before) in tables.iter().zip(before) {
        assert_eq!(
            snapshot(conn, table),
            rows_before,
            "expected {table} to be unchanged after the refused statements"
        );
    }
}

#[test]
fn audit_log_entries_can_be_neither_updated_nor_deleted() {
    let built = build_database();
    let conn = open(&built);
    assert_all_refused_and_nothing_changed(
        &conn,
        &["audit_log"],
        &[
            ("audit_log", "UPDATE audit_log SET reason = 'x'", &[]),
            ("audit_log", "UPDATE audit_log SET entry_hash = prev_hash WHERE seq = (SELECT max(seq) FROM audit_log)", &[]),
            ("audit_log", "DELETE FROM audit_log", &[]),
            ("audit_log", "DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)", &[]),
        ],
    );
}

#[test]
fn decisions_can_be_neither_updated_nor_deleted() {
    let built = build_database();
    let conn = open(&built);
    let denied = &built.denied_run;
    assert_all_refused_and_nothing_changed(
        &conn,
        &["decisions"],
        &[
            ("decisions", "UPDATE decisions SET reason = 'x'", &[]),
            (
                "decisions",
                "UPDATE decisions SET effect = 'allow' WHERE run_id = ?1 AND effect = 'deny'",
                &[denied],
            ),
            ("decisions", "DELETE FROM decisions", &[]),
            (
                "decisions",
                "DELETE FROM decisions WHERE run_id = ?1",
                &[denied],
            ),
        ],
    );
}

#[test]
fn evidence_can_be_neither_updated_nor_deleted() {
    let built = build_database();
    let conn = open(&built);
    assert_all_refused_and_nothing_changed(
        &conn,
        &["evidence"],
        &[
            ("evidence", "UPDATE evidence SET body = x'00'", &[]),
            ("evidence", "DELETE FROM evidence", &[]),
        ],
    );
}

#[test]
fn runs_steps_and_gates_can_never_be_deleted() {
    let built = build_database();
    let conn = open(&built);
    // The gated run is PAUSED, not final: deleting it is refused all the same.
    let gated = &built.gated_run;
    assert_eq!(
        one_text(&conn, "SELECT status FROM runs WHERE run_id = ?1", &[gated]),
        "PAUSED"
    );
    assert_all_refused_and_nothing_changed(
        &conn,
        &["runs", "steps", "gates"],
        &[
            ("runs", "DELETE FROM runs", &[]),
            ("runs", "DELETE FROM runs WHERE run_id = ?1", &[gated]),
            ("steps", "DELETE FROM steps", &[]),
            ("steps", "DELETE FROM steps WHERE run_id = ?1", &[gated]),
            ("gates", "DELETE FROM gates", &[]),
        ],
    );
}

#[test]
fn a_completed_or_policy_denied_run_cannot_be_updated() {
    let built = build_database();
    let conn = open(&built);
    let (completed, denied) = (&built.completed_run, &built.denied_run);
    assert_eq!(
        one_text(
            &conn,
            "SELECT status FROM runs WHERE run_id = ?1",
            &[completed]
        ),
        "COMPLETED"
    );
    assert_eq!(
        one_text(
            &conn,
            "SELECT status FROM runs WHERE run_id = ?1",
            &[denied]
        ),
        "FAILED"
    );
    assert_eq!(
        one_text(
            &conn,
            "SELECT json_extract(failure, '$.code') FROM runs WHERE run_id = ?1",
            &[denied]
        ),
        "policy_denied",
        "expected the denied run's failure column to hold the contract's failure object"
    );
    assert_all_refused_and_nothing_changed(
        &conn,
        &["runs"],
        &[
            (
                "runs",
                "UPDATE runs SET status = 'RUNNING' WHERE run_id = ?1",
                &[completed],
            ),
            (
                "runs",
                "UPDATE runs SET receipt_hash = NULL, ended_at = NULL WHERE run_id = ?1",
                &[completed],
            ),
            (
                "runs",
                "UPDATE runs SET status = 'RUNNING', failure = NULL WHERE run_id = ?1",
                &[denied],
            ),
            (
                "runs",
                "UPDATE runs SET updated_at = 'x' WHERE run_id = ?1",
                &[denied],
            ),
        ],
    );
}

#[test]
fn a_completed_or_denied_step_attempt_cannot_be_updated() {
    let built = build_database();
    let conn = open(&built);
    let (completed, denied) = (&built.completed_run, &built.denied_run);
    let status_of = "SELECT status FROM steps WHERE run_id = ?1 AND step_id = ?2 AND attempt = 1";
    assert_eq!(
        one_text(&conn, status_of, &[completed, &STEP_IDS[0]]),
        "COMPLETED"
    );
    assert_eq!(
        one_text(&conn, status_of, &[denied, &STEP_IDS[1]]),
        "DENIED"
    );
    assert_all_refused_and_nothing_changed(
        &conn,
        &["steps"],
        &[
            (
                "steps",
                "UPDATE steps SET status = 'STARTED', ended_at = NULL WHERE run_id = ?1 AND step_id = ?2 AND attempt = 1",
                &[completed, &STEP_IDS[0]],
            ),
            ("steps", "UPDATE steps SET output_hash = NULL WHERE run_id = ?1", &[completed]),
            (
                "steps",
                "UPDATE steps SET status = 'STARTED', receipt_hash = NULL WHERE run_id = ?1 AND step_id = ?2 AND attempt = 1",
                &[denied, &STEP_IDS[1]],
            ),
        ],
    );
}

#[test]
fn a_resolved_gate_cannot_be_updated() {
    let built = build_database();
    let conn = open(&built);
    let gate = &built.approved_gate;
    assert_eq!(
        one_text(
            &conn,
            "SELECT status FROM gates WHERE gate_id = ?1",
            &[gate]
        ),
        "APPROVED"
    );
    assert_all_refused_and_nothing_changed(
        &conn,
        &["gates"],
        &[
            (
                "gates",
                "UPDATE gates SET status = 'PENDING', resolved_by = NULL WHERE gate_id = ?1",
                &[gate],
            ),
            (
                "gates",
                "UPDATE gates SET resolved_by = 'someone-else' WHERE gate_id = ?1",
                &[gate],
            ),
        ],
    );
}

#[test]
fn the_refusals_leave_the_database_usable_and_its_counts_intact() {
    let built = build_database();
    let counts = |conn: &Connection| -> Vec<i64> {
        [
            "audit_log",
            "decisions",
            "evidence",
            "runs",
            "steps",
            "gates",
        ]
        .iter()
        .map(|t| {
            conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .expect("count")
        })
        .collect()
    };
    let conn = open(&built);
    let before = counts(&conn);
    for sql in [
        "DELETE FROM audit_log",
        "DELETE FROM decisions",
        "DELETE FROM evidence",
        "DELETE FROM runs",
        "DELETE FROM steps",
        "DELETE FROM gates",
    ] {
        assert!(
            conn.execute(sql, params![]).is_err(),
            "expected `{sql}` to be refused"
        );
    }
    assert_eq!(
        counts(&conn),
        before,
        "expected every table to keep all its rows"
    );
    drop(conn);

    // The server reopens the file it wrote, and the runs are all still there.
    let server = Server::start_on(&built.db, &[]);
    let mut client = server.client();
    for run_id in [&built.completed_run, &built.denied_run, &built.gated_run] {
        expect_status(
            &client.get(&format!("/workflows/runs/{run_id}")),
            200,
            "reading a run after the refusals",
        );
    }
}
