//! Schema migrations on a file an older fedcore wrote: `tests/fixtures/schema-v4-pt004.db` is the
//! PT-004 proof database written by fedcore at schema version 4 (commit fe776d4). Migration 5
//! rebuilds `audit_log` without the index on `entry_hash`; the log is evidence, so every entry must
//! come through byte for byte and in `seq` order, the file must still verify, and the triggers must
//! still refuse UPDATE and DELETE. `verify` reads a version-4 file as it is, without migrating it.
//!
//! The migration is made by `store::open_for_writing`, the open every writing command (`serve`,
//! `token`, `bench seed`) goes through; the commands themselves would also need the fixture's
//! signing key, which is not kept.

use crate::support::{run_cli, TempDir};
use rusqlite::types::Value as Sql;
use rusqlite::Connection;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `(type, name, tbl_name, sql)` of a schema object.
type SchemaObject = (String, String, String, Option<String>);

#[test]
fn a_version_4_database_keeps_every_audit_entry_byte_for_byte_through_migration_5() {
    let dir = TempDir::new();
    let db = fixture_copy(&dir, "v4.db");
    let (code, before_report) = verify_json(&db);
    assert_eq!(code, 0, "expected the fixture intact: {before_report}");
    let before = Snapshot::of(&db);
    assert_eq!(before.user_version, 4, "expected the fixture at version 4");
    assert!(
        before.names().contains(&"sqlite_autoindex_audit_log_1"),
        "expected version 4 to index entry_hash: {:?}",
        before.names()
    );
    assert!(
        before.audit.len() > 50,
        "expected a real log in the fixture"
    );

    // The old table still has its triggers while it is dropped: had DROP TABLE fired
    // audit_log_no_delete, the migration would have failed here.
    fedcore::store::open_for_writing(&db).expect("migrate to the current version");
    let after = Snapshot::of(&db);

    assert_eq!(after.user_version, fedcore::store::SCHEMA_VERSION);
    assert_same_entries(&before.audit, &after.audit);
    assert_eq!(
        after.tables, before.tables,
        "expected every other table unchanged"
    );
    // Every schema object but audit_log's table and its index on entry_hash is exactly as it was:
    // audit_by_run and both triggers come back with the text schema.sql gave them.
    let kept = |schema: &[SchemaObject]| -> Vec<SchemaObject> {
        schema
            .iter()
            .filter(|(ty, name, ..)| {
                !(ty == "table" && name == "audit_log") && name != "sqlite_autoindex_audit_log_1"
            })
            .cloned()
            .collect()
    };
    assert_eq!(kept(&after.schema), kept(&before.schema));
    assert!(
        !after.names().contains(&"sqlite_autoindex_audit_log_1"),
        "expected no index on entry_hash: {:?}",
        after.names()
    );
    assert!(
        !after.names().contains(&"audit_log_new"),
        "{:?}",
        after.names()
    );
    assert_eq!(after.indexes_of_audit_log, ["audit_by_run"]);
    assert_eq!(
        after.columns_of_audit_log, before.columns_of_audit_log,
        "expected the same columns, types, NOT NULL and integer key"
    );

    let conn = Connection::open(&db).expect("open the migrated file");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(integrity, "ok");
    let broken_keys: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .expect("foreign key check");
    assert_eq!(broken_keys, 0);
    for (statement, refusal) in [
        (
            "UPDATE audit_log SET reason = 'edited' WHERE seq = 1",
            "audit_log is append-only: UPDATE refused",
        ),
        (
            "DELETE FROM audit_log WHERE seq = 1",
            "audit_log is append-only: DELETE refused",
        ),
    ] {
        match conn.execute(statement, []) {
            Ok(n) => panic!("expected `{statement}` refused, it changed {n} row(s)"),
            Err(e) => assert!(e.to_string().contains(refusal), "{statement}: {e}"),
        }
    }
    drop(conn);
    assert_same_entries(&before.audit, &Snapshot::of(&db).audit);

    let (code, after_report) = verify_json(&db);
    assert_eq!(code, 0, "expected the migrated file intact: {after_report}");
    assert_eq!(after_report["head"], before_report["head"]);
    assert_eq!(
        after_report["counts"], before_report["counts"],
        "expected the same objects checked, the same 26 triggers among them"
    );
}

#[test]
fn a_version_4_database_is_verified_as_it_is_and_stays_at_version_4() {
    let dir = TempDir::new();
    let db = fixture_copy(&dir, "v4.db");
    let bytes = std::fs::read(&db).expect("read the copy");
    for extra in [&[][..], &["--replay"][..]] {
        let mut args = vec!["verify", "--db", db.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        let (code, out, err) = run_cli(&args);
        assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
        assert!(out.contains("triggers                      26"), "{out}");
    }
    assert!(
        std::fs::read(&db).expect("read the copy") == bytes,
        "expected verify to leave the file byte for byte as it was"
    );
    assert_eq!(files_in(dir.path()), ["v4.db"]);
    let after = Snapshot::of(&db);
    assert_eq!(after.user_version, 4);
    assert!(after.names().contains(&"sqlite_autoindex_audit_log_1"));
}

#[test]
fn a_migration_that_fails_part_way_leaves_the_file_as_it_was() {
    // A view over audit_log, as someone might add to their own file, makes the rename at the end
    // of the rebuild fail: after the new table was filled and the old one dropped. The pending
    // migrations run in one transaction, so nothing of it may remain.
    let dir = TempDir::new();
    let db = fixture_copy(&dir, "v4.db");
    let conn = Connection::open(&db).expect("open the copy");
    conn.execute_batch(
        "CREATE VIEW entries_per_actor AS SELECT actor, count(*) AS n FROM audit_log GROUP BY actor",
    )
    .expect("add a view");
    drop(conn);
    let before = Snapshot::of(&db);

    let refused = fedcore::store::open_for_writing(&db)
        .map(drop)
        .expect_err("expected the rename to fail on the view");
    assert!(
        refused.to_string().contains("entries_per_actor"),
        "expected the error to name the view: {refused}"
    );
    let after = Snapshot::of(&db);
    assert_eq!(after.user_version, 4);
    assert_eq!(after.schema, before.schema, "expected the schema unchanged");
    assert_same_entries(&before.audit, &after.audit);
    assert_eq!(after.tables, before.tables);
    let (code, report) = verify_json(&db);
    assert_eq!(code, 0, "{report}");

    // Without the view, the same file migrates.
    let conn = Connection::open(&db).expect("open the copy");
    conn.execute_batch("DROP VIEW entries_per_actor")
        .expect("drop the view");
    drop(conn);
    fedcore::store::open_for_writing(&db).expect("migrate");
    let migrated = Snapshot::of(&db);
    assert_eq!(migrated.user_version, fedcore::store::SCHEMA_VERSION);
    assert_same_entries(&before.audit, &migrated.audit);
}

#[test]
fn a_new_database_has_no_index_on_entry_hash() {
    let dir = TempDir::new();
    let db = dir.path().join("new.db");
    let (code, out, err) = run_cli(&["token", "list", "--db", db.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let created = Snapshot::of(&db);
    assert_eq!(created.user_version, fedcore::store::SCHEMA_VERSION);
    assert_eq!(created.indexes_of_audit_log, ["audit_by_run"]);
    let fixture = Snapshot::of(&fixture_copy(&dir, "v4.db"));
    assert_eq!(
        created.columns_of_audit_log, fixture.columns_of_audit_log,
        "expected the columns of version 4"
    );
}

// ---------------------------------------------------------------------------------------------

/// What a file holds, read as stored: every value with its SQLite storage class.
#[derive(Debug)]
struct Snapshot {
    user_version: i64,
    /// Every audit entry, all columns, by `seq`.
    audit: Vec<Vec<Sql>>,
    /// Every other table's rows (each row written out, sorted), by table name.
    tables: BTreeMap<String, Vec<String>>,
    /// Every schema object, by type and name.
    schema: Vec<SchemaObject>,
    /// `PRAGMA index_list(audit_log)`: every index on the table, those of constraints included.
    indexes_of_audit_log: Vec<String>,
    /// `PRAGMA table_info(audit_log)`: name, declared type, NOT NULL, default, key position.
    columns_of_audit_log: Vec<(String, String, bool, Option<String>, i64)>,
}

impl Snapshot {
    fn of(db: &Path) -> Snapshot {
        let conn = Connection::open(db).expect("open the file");
        let user_version = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version");
        let audit = all_rows(&conn, "SELECT * FROM audit_log ORDER BY seq");
        let schema: Vec<SchemaObject> = query(
            &conn,
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        );
        let mut tables = BTreeMap::new();
        for (ty, name, ..) in &schema {
            if ty == "table" && name != "audit_log" {
                // Names come from the file's own schema, not from input.
                let mut rows: Vec<String> = all_rows(&conn, &format!("SELECT * FROM \"{name}\""))
                    .iter()
                    .map(|row| format!("{row:?}"))
                    .collect();
                rows.sort();
                tables.insert(name.clone(), rows);
            }
        }
        let indexes_of_audit_log = query(
            &conn,
            "SELECT name FROM pragma_index_list('audit_log') ORDER BY name",
            |r| r.get(0),
        );
        let columns_of_audit_log = query(
            &conn,
            "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('audit_log')
             ORDER BY cid",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        );
        Snapshot {
            user_version,
            audit,
            tables,
            schema,
            indexes_of_audit_log,
            columns_of_audit_log,
        }
    }

    fn names(&self) -> Vec<&str> {
        self.schema
            .iter()
            .map(|(_, name, ..)| name.as_str())
            .collect()
    }
}

/// The same entries, in the same order, every value the same bytes of the same storage class.
fn assert_same_entries(before: &[Vec<Sql>], after: &[Vec<Sql>]) {
    assert_eq!(after.len(), before.len(), "expected as many audit entries");
    if let Some(i) = (0..before.len()).find(|&i| before[i] != after[i]) {
        panic!(
            "expected audit entry {} unchanged:\nbefore {:?}\nafter  {:?}",
            i + 1,
            before[i],
            after[i]
        );
    }
}

fn all_rows(conn: &Connection, sql: &str) -> Vec<Vec<Sql>> {
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{e}: {sql}"));
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| (0..n).map(|i| r.get::<_, Sql>(i)).collect())
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

fn query<T>(
    conn: &Connection,
    sql: &str,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{e}: {sql}"));
    let rows = stmt.query_map([], f).expect("query");
    rows.map(|r| r.expect("row")).collect()
}

/// A copy of the version-4 fixture in `dir`.
fn fixture_copy(dir: &TempDir, name: &str) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema-v4-pt004.db");
    let copy = dir.path().join(name);
    std::fs::copy(&fixture, &copy).expect("copy the schema-version-4 fixture");
    copy
}

/// Runs `fedcore verify --json` and returns the exit code and the parsed report.
fn verify_json(db: &Path) -> (i32, Value) {
    let (code, out, err) = run_cli(&["verify", "--json", "--db", db.to_str().expect("utf-8")]);
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): exit {code}\n{out}\n{err}"));
    (code, report)
}

/// The names of the files in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
