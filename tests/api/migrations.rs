//! Schema migrations on files an older fedcore wrote: `tests/fixtures/schema-v4-pt004.db` and
//! `schema-v5-pt004.db` are the PT-004 proof databases written by fedcore at schema version 4
//! (commit fe776d4) and 5 (commit ed98cf6). Migration 5 rebuilds `audit_log` without the index on
//! `entry_hash`; migration 6 rebuilds `evidence` as a rowid table, its hash in a unique index, with
//! `foreign_keys` off around the transaction and `PRAGMA foreign_key_check` before COMMIT. The log
//! and the blobs are evidence, so every entry and every blob must come through byte for byte,
//! every other row and schema object unchanged (the other tables' `REFERENCES evidence(hash)`
//! included), the file must still verify, and the triggers must still refuse UPDATE and DELETE.
//! `verify` reads a file of an older version as it is, without migrating it.
//!
//! The migration is made by `store::open_for_writing`, the open every writing command (`serve`,
//! `token`, `bench seed`) goes through; the commands themselves would also need the fixture's
//! signing key, which is not kept.

use crate::shutdown::assert_refused_and_untouched;
use crate::support::{files_in, run_cli, verify_json, TempDir};
use rusqlite::types::Value as Sql;
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `(type, name, tbl_name, sql)` of a schema object.
type SchemaObject = (String, String, String, Option<String>);

#[test]
fn a_version_4_database_keeps_every_audit_entry_and_blob_byte_for_byte_through_migrations_5_and_6()
{
    let dir = TempDir::new();
    let db = fixture_copy(&dir, V4, "v4.db");
    let (code, before_report) = verify_json(&db, &[]);
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

    // The old tables still have their triggers while they are dropped: had DROP TABLE fired
    // audit_log_no_delete or evidence_no_delete, the migration would have failed here.
    let conn = fedcore::store::open_for_writing(&db).expect("migrate to the current version");
    assert_foreign_keys_on(&conn);
    drop(conn);
    let after = Snapshot::of(&db);

    assert_eq!(after.user_version, fedcore::store::SCHEMA_VERSION);
    assert_same_rows("audit entry", &before.audit, &after.audit);
    assert_same_rows("evidence blob", &before.evidence, &after.evidence);
    assert_eq!(
        after.tables, before.tables,
        "expected every other table unchanged"
    );
    // Every schema object but the two rebuilt tables and their automatic indexes is exactly as
    // it was: audit_by_run and the four triggers come back with the text schema.sql gave them.
    assert_eq!(
        all_but(&after.schema, &["audit_log", "evidence"]),
        all_but(&before.schema, &["audit_log", "evidence"])
    );
    assert!(
        !after.names().contains(&"sqlite_autoindex_audit_log_1"),
        "expected no index on entry_hash: {:?}",
        after.names()
    );
    assert_eq!(after.indexes_of_audit_log, ["audit_by_run"]);
    assert_eq!(
        after.columns_of_audit_log, before.columns_of_audit_log,
        "expected the same columns, types, NOT NULL and integer key"
    );
    assert_evidence_is_a_rowid_table(&before, &after);
    assert_sound(&db);
    assert_same_rows("audit entry", &before.audit, &Snapshot::of(&db).audit);

    assert_verifies_as_before(&db, &before_report);
}

#[test]
fn a_version_5_database_keeps_every_blob_byte_for_byte_through_migration_6() {
    let dir = TempDir::new();
    let db = fixture_copy(&dir, V5, "v5.db");
    let (code, before_report) = verify_json(&db, &[]);
    assert_eq!(code, 0, "expected the fixture intact: {before_report}");
    let before = Snapshot::of(&db);
    assert_eq!(before.user_version, 5, "expected the fixture at version 5");
    assert!(
        before.evidence.len() > 50,
        "expected real evidence in the fixture"
    );
    assert_eq!(before.indexes_of_audit_log, ["audit_by_run"]);

    let conn = fedcore::store::open_for_writing(&db).expect("migrate to the current version");
    assert_foreign_keys_on(&conn);
    drop(conn);
    let after = Snapshot::of(&db);

    assert_eq!(after.user_version, fedcore::store::SCHEMA_VERSION);
    assert_same_rows("evidence blob", &before.evidence, &after.evidence);
    assert_same_rows("audit entry", &before.audit, &after.audit);
    assert_eq!(
        after.tables, before.tables,
        "expected every other table unchanged"
    );
    // Only evidence's own `CREATE TABLE` and its new automatic index differ: the other tables'
    // SQL, with its ten `REFERENCES evidence(hash)`, and both evidence triggers are as they were.
    assert_eq!(
        all_but(&after.schema, &["evidence"]),
        all_but(&before.schema, &["evidence"])
    );
    assert_evidence_is_a_rowid_table(&before, &after);
    assert_sound(&db);

    assert_verifies_as_before(&db, &before_report);
}

#[test]
fn the_rebuilt_evidence_table_is_the_one_the_other_tables_refer_to() {
    // Dropping evidence leaves the other tables' `REFERENCES evidence(hash)` naming no table
    // until the rename gives the name back; SQLite resolves a reference by name when it checks
    // it, so the rebuilt table is the parent: a row naming a missing blob is refused, one
    // naming a stored blob is accepted.
    let dir = TempDir::new();
    let db = fixture_copy(&dir, V5, "v5.db");
    drop(fedcore::store::open_for_writing(&db).expect("migrate"));
    let conn = Connection::open(&db).expect("open the migrated file");
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         CREATE TEMP TABLE p AS SELECT * FROM policies LIMIT 1;
         UPDATE p SET version = version + 1000, policy_hash = 'no such blob';",
    )
    .expect("prepare a policy row");
    let refused = conn
        .execute("INSERT INTO policies SELECT * FROM p", [])
        .expect_err("expected a policy naming a missing blob refused");
    assert!(
        refused
            .to_string()
            .contains("FOREIGN KEY constraint failed"),
        "{refused}"
    );
    conn.execute_batch(
        "UPDATE p SET policy_hash = (SELECT hash FROM evidence ORDER BY hash LIMIT 1);
         BEGIN; INSERT INTO policies SELECT * FROM p; ROLLBACK;",
    )
    .expect("expected a policy naming a stored blob accepted");
}

#[test]
fn a_version_4_database_is_verified_as_it_is_and_stays_at_version_4() {
    let dir = TempDir::new();
    let db = fixture_copy(&dir, V4, "v4.db");
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
    a_view_stops_the_migration_and_the_file_stays_as_it_was(
        V4,
        4,
        "entries_per_actor",
        "CREATE VIEW entries_per_actor AS SELECT actor, count(*) AS n FROM audit_log GROUP BY actor",
    );
}

#[test]
fn a_migration_that_fails_after_evidence_was_dropped_leaves_the_file_as_it_was() {
    // A view over evidence makes migration 6 fail at the rename: after every blob was copied
    // and the old table dropped, with `foreign_keys` off. The rollback must bring all of it
    // back, and leave nothing half-done for the next open.
    a_view_stops_the_migration_and_the_file_stays_as_it_was(
        V5,
        5,
        "blob_sizes",
        "CREATE VIEW blob_sizes AS SELECT hash, length(body) AS n FROM evidence",
    );
}

/// Adds `view` (named `view_name`) to a copy of `fixture` (at `version`); opening it for writing
/// must fail naming the view and change nothing; without the view, it must migrate.
fn a_view_stops_the_migration_and_the_file_stays_as_it_was(
    fixture: &str,
    version: i64,
    view_name: &str,
    view: &str,
) {
    let dir = TempDir::new();
    let db = fixture_copy(&dir, fixture, "copy.db");
    let conn = Connection::open(&db).expect("open the copy");
    conn.execute_batch(view).expect("add a view");
    drop(conn);
    let before = Snapshot::of(&db);

    let refused = fedcore::store::open_for_writing(&db)
        .map(drop)
        .expect_err("expected the rename to fail on the view");
    assert!(
        refused.to_string().contains(view_name),
        "expected the error to name the view: {refused}"
    );
    let after = Snapshot::of(&db);
    assert_eq!(after.user_version, version);
    assert_eq!(after.schema, before.schema, "expected the schema unchanged");
    assert_same_rows("audit entry", &before.audit, &after.audit);
    assert_same_rows("evidence blob", &before.evidence, &after.evidence);
    assert_eq!(after.tables, before.tables);
    assert_sound(&db);
    let (code, report) = verify_json(&db, &[]);
    assert_eq!(code, 0, "{report}");

    // Without the view, the same file migrates.
    let conn = Connection::open(&db).expect("open the copy");
    conn.execute_batch(&format!("DROP VIEW {view_name}"))
        .expect("drop the view");
    drop(conn);
    let conn = fedcore::store::open_for_writing(&db).expect("migrate");
    assert_foreign_keys_on(&conn);
    drop(conn);
    let migrated = Snapshot::of(&db);
    assert_eq!(migrated.user_version, fedcore::store::SCHEMA_VERSION);
    assert_same_rows("audit entry", &before.audit, &migrated.audit);
    assert_same_rows("evidence blob", &before.evidence, &migrated.evidence);
}

#[test]
fn a_file_missing_an_immutability_trigger_is_not_migrated_so_verify_still_names_it() {
    let dir = TempDir::new();
    // (the change, the trigger, what the refusal says of it)
    let cases = [
        (
            "DROP TRIGGER audit_log_no_update",
            "audit_log_no_update",
            "the immutability trigger audit_log_no_update is missing",
        ),
        (
            "DROP TRIGGER evidence_no_delete;
             CREATE TRIGGER evidence_no_delete BEFORE DELETE ON evidence BEGIN SELECT 1; END;",
            "evidence_no_delete",
            "the trigger evidence_no_delete was replaced by another",
        ),
    ];
    for (i, (change, named, why)) in cases.into_iter().enumerate() {
        let db = fixture_copy(&dir, V4, &format!("case-{i}.db"));
        Connection::open(&db)
            .expect("open the copy")
            .execute_batch(change)
            .expect("tamper with a trigger");
        let refused = refused_unchanged(&db);
        assert!(
            refused.contains(why) && refused.contains("fedcore verify"),
            "{refused}"
        );
        let (code, report) = verify_json(&db, &[]);
        assert_eq!(code, 1, "expected verify to report the trigger: {report}");
        assert!(report.to_string().contains(named), "{report}");
    }
}

#[test]
fn a_current_file_missing_an_immutability_trigger_is_refused_by_every_command_that_writes() {
    let dir = TempDir::new();
    let db = new_database(&dir, "current.db");
    let db_text = db.to_str().expect("utf-8");
    Connection::open(&db)
        .expect("open the file")
        .execute_batch("DROP TRIGGER decisions_no_update")
        .expect("drop a trigger");
    let bytes = std::fs::read(&db).expect("read the file");
    // (serve last: before this rule it would have started, and not returned.)
    let commands: [&[&str]; 2] = [
        &[
            "token", "create", "--name", "y", "--role", "agent", "--db", db_text,
        ],
        &["serve", "--db", db_text, "--listen", "127.0.0.1:0"],
    ];
    for command in commands {
        let (code, _, err) = run_cli(command);
        assert_eq!(code, 2, "expected {command:?} refused: {err}");
        assert!(
            err.contains("the immutability trigger decisions_no_update is missing"),
            "{err}"
        );
        assert!(
            std::fs::read(&db).expect("read the file") == bytes,
            "expected {command:?} to leave the file unchanged"
        );
    }
    let (code, report) = verify_json(&db, &[]);
    assert_eq!(code, 1, "expected verify to name the trigger: {report}");
}

#[test]
fn a_version_1_database_migrates_through_every_migration_and_still_verifies() {
    let dir = TempDir::new();
    let db = fixture_copy(&dir, V1, "v1.db");
    let before = Snapshot::of(&db);
    assert_eq!(before.user_version, 1, "expected the fixture at version 1");
    // Listing tokens only reads: a file from before tokens lists none, and stays as it is.
    let bytes = std::fs::read(&db).expect("read the fixture");
    let (code, out, err) = run_cli(&["token", "list", "--db", db.to_str().expect("utf-8")]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(std::fs::read(&db).expect("read the fixture") == bytes);
    drop(fedcore::store::open_for_writing(&db).expect("migrate from version 1"));
    let after = Snapshot::of(&db);
    assert_eq!(after.user_version, fedcore::store::SCHEMA_VERSION);
    assert_same_rows("audit entry", &before.audit, &after.audit);
    assert_same_rows("evidence blob", &before.evidence, &after.evidence);
    assert_sound(&db);
    let (code, report) = verify_json(&db, &[]);
    assert_eq!(code, 0, "{report}");

    // The same file with a trigger dropped is refused before the first migration runs.
    let tampered = fixture_copy(&dir, V1, "v1-tampered.db");
    Connection::open(&tampered)
        .expect("open the copy")
        .execute_batch("DROP TRIGGER evidence_no_update")
        .expect("drop a trigger");
    let refused = refused_unchanged(&tampered);
    assert!(
        refused.contains("the immutability trigger evidence_no_update is missing"),
        "{refused}"
    );
    assert_eq!(Snapshot::of(&tampered).user_version, 1);
}

#[test]
fn a_file_already_naming_a_missing_blob_is_refused_as_changed_not_blamed_on_a_migration() {
    let dir = TempDir::new();
    let db = fixture_copy(&dir, V4, "dangling.db");
    Connection::open(&db)
        .expect("open the copy")
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TEMP TABLE p AS SELECT * FROM policies LIMIT 1;
             UPDATE p SET version = version + 1000, policy_hash = 'no such blob';
             INSERT INTO policies SELECT * FROM p;",
        )
        .expect("add a policy row naming a missing blob");
    let refused = refused_unchanged(&db);
    assert!(
        refused.contains("is not as fedcore left it") && refused.contains("policies"),
        "{refused}"
    );
}

/// A database made by a command that writes (`token create`), at the current schema version.
fn new_database(dir: &TempDir, name: &str) -> PathBuf {
    let db = dir.path().join(name);
    let db_text = db.to_str().expect("utf-8");
    let (code, out, err) = run_cli(&[
        "token", "create", "--name", "x", "--role", "agent", "--db", db_text,
    ]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    db
}

/// Opens `db` for writing, expects a refusal, checks the file is byte for byte as it was, and
/// returns the refusal's message.
fn refused_unchanged(db: &Path) -> String {
    let bytes = std::fs::read(db).expect("read the copy");
    let refused = fedcore::store::open_for_writing(db)
        .map(drop)
        .expect_err("expected the file refused")
        .to_string();
    assert!(
        std::fs::read(db).expect("read the copy") == bytes,
        "expected the refused file unchanged"
    );
    refused
}

#[test]
fn a_file_whose_schema_version_was_reset_to_0_is_refused_by_every_command_and_left_unchanged() {
    let dir = TempDir::new();
    let current = dir.path().join("current.db");
    drop(fedcore::store::open_for_writing(&current).expect("create a database"));
    let files = [
        current,
        fixture_copy(&dir, V5, "v5.db"),
        // Opening for writing switches a file to WAL: a refusal must come before that.
        fixture_copy(&dir, V5, "v5-rollback-journal.db"),
    ];
    for db in &files {
        let conn = Connection::open(db).expect("open the file");
        if db.ends_with("v5-rollback-journal.db") {
            conn.pragma_update(None, "journal_mode", "DELETE")
                .expect("leave WAL");
        }
        conn.pragma_update(None, "user_version", 0)
            .expect("reset the schema version");
    }
    for db in &files {
        let path = db.to_str().expect("utf-8 path");
        let expected =
            format!("{path} is not as fedcore left it: it has fedcore's application_id and ");
        let reset = "schema objects, but schema version 0 (PRAGMA user_version was reset after \
                     fedcore wrote it)";
        assert_refused_by_every_command_and_unchanged(&dir, db, &expected, &[reset]);
        assert_eq!(Snapshot::of(db).user_version, 0, "{path}");
    }
}

#[test]
fn a_file_whose_schema_version_was_lowered_or_raised_is_refused_by_every_command_and_left_unchanged(
) {
    let dir = TempDir::new();
    let current = dir.path().join("current.db");
    drop(fedcore::store::open_for_writing(&current).expect("create a database"));
    let latest = fedcore::store::SCHEMA_VERSION;
    let copy_of_current = |name: &str| {
        let copy = dir.path().join(name);
        std::fs::copy(&current, &copy).expect("copy the database");
        copy
    };
    // (file, the version its objects show, the version it is set to). Lowered to 1, a writing
    // command failed on "table tokens already exists"; lowered to 4 or 5, migrations 5 and 6 ran
    // again over the tables they had rebuilt. Raised, the v1 fixture made `token list` create a
    // key file and then fail on "no such table: signing_keys", and `verify` on "no such column:
    // approvals_required". Each must be refused before anything is written, the switch to WAL
    // of a file in rollback-journal mode included.
    let cases = [
        (copy_of_current("current-at-1.db"), latest, 1),
        (copy_of_current("current-at-4.db"), latest, 4),
        (copy_of_current("current-at-5.db"), latest, 5),
        (fixture_copy(&dir, V5, "v5-at-4.db"), 5, 4),
        (fixture_copy(&dir, V5, "v5-at-4-rollback-journal.db"), 5, 4),
        (fixture_copy(&dir, V4, "v4-at-3.db"), 4, 3),
        (fixture_copy(&dir, V4, "v4-at-1.db"), 4, 1),
        (fixture_copy(&dir, V1, "v1-at-latest.db"), 1, latest),
        (fixture_copy(&dir, V4, "v4-at-5.db"), 4, 5),
        (fixture_copy(&dir, V5, "v5-at-latest.db"), 5, latest),
    ];
    for (db, _, changed) in &cases {
        let conn = Connection::open(db).expect("open the file");
        if db.ends_with("v5-at-4-rollback-journal.db") {
            conn.pragma_update(None, "journal_mode", "DELETE")
                .expect("leave WAL");
        }
        conn.pragma_update(None, "user_version", changed)
            .expect("change the schema version");
    }
    for (db, shown, changed) in &cases {
        let path = db.to_str().expect("utf-8 path");
        let how = if changed < shown { "lowered" } else { "raised" };
        let expected = format!(
            "{path} is not as fedcore left it: its schema objects show schema version {shown}, \
             but it says schema version {changed} (PRAGMA user_version was {how}, or its \
             schema objects changed, after fedcore wrote it)"
        );
        assert_refused_by_every_command_and_unchanged(&dir, db, &expected, &[]);
        let after = Snapshot::of(db);
        assert_eq!(after.user_version, *changed, "{path}");
        if *shown == 5 {
            assert!(after.evidence_sql.contains("WITHOUT ROWID"), "{path}");
        }
    }
}

/// `db` must be refused, with a message starting with `expected`, holding each of `says`, and
/// saying nothing was changed, by `open_for_writing`, `verify` (exit 2, could not check, and no
/// report), `verify --json`, `token list` and `serve`; and the file and its directory must be
/// byte for byte as they were.
fn assert_refused_by_every_command_and_unchanged(
    dir: &TempDir,
    db: &Path,
    expected: &str,
    says: &[&str],
) {
    let name = db.file_name().expect("a file name").to_string_lossy();
    let path = db.to_str().expect("utf-8 path");
    let unchanged = "it was refused and its contents were not changed";
    let says_all = |message: &str| {
        message.contains(unchanged) && says.iter().all(|part| message.contains(part))
    };
    let bytes = std::fs::read(db).expect("read the file");
    let listing = files_in(dir.path());

    let refused = refused_unchanged(db);
    assert!(
        refused.starts_with(expected) && says_all(&refused),
        "{name}: {refused}"
    );
    for command in [&["verify"][..], &["verify", "--json"], &["token", "list"]] {
        let mut args = command.to_vec();
        args.extend(["--db", path]);
        let (code, out, err) = run_cli(&args);
        assert_eq!(code, 2, "{name}: {args:?}: stdout:\n{out}\nstderr:\n{err}");
        assert!(
            err.contains(expected) && says_all(&err),
            "{name}: {args:?}: {err}"
        );
        match command.contains(&"--json") {
            // The one object a JSON caller reads, saying what stderr says.
            true => {
                let report: serde_json::Value = serde_json::from_str(out.trim())
                    .unwrap_or_else(|e| panic!("{name}: {args:?}: not JSON ({e}): {out}"));
                assert_eq!(report["checked"], false, "{name}: {report}");
                assert_eq!(
                    report["error"].as_str(),
                    Some(err.trim()),
                    "{name}: {report}"
                );
            }
            false => assert!(out.is_empty(), "{name}: {args:?}: {out}"),
        }
    }
    assert_refused_and_untouched(db);

    assert!(
        std::fs::read(db).expect("read the file") == bytes,
        "{name}: expected the file byte for byte as it was"
    );
    assert_eq!(files_in(dir.path()), listing, "{name}");
}

#[test]
fn a_version_5_database_is_verified_as_it_is_and_stays_at_version_5() {
    let dir = TempDir::new();
    let db = fixture_copy(&dir, V5, "v5.db");
    let bytes = std::fs::read(&db).expect("read the copy");
    let (code, out, err) = run_cli(&["verify", "--db", db.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("triggers                      26"), "{out}");
    assert!(
        std::fs::read(&db).expect("read the copy") == bytes,
        "expected verify to leave the file byte for byte as it was"
    );
    assert_eq!(files_in(dir.path()), ["v5.db"]);
    let after = Snapshot::of(&db);
    assert_eq!(after.user_version, 5);
    assert!(after.evidence_sql.contains("WITHOUT ROWID"));
}

#[test]
fn a_new_database_has_no_index_on_entry_hash_and_its_evidence_in_a_rowid_table() {
    let dir = TempDir::new();
    let db = new_database(&dir, "new.db");
    let created = Snapshot::of(&db);
    assert_eq!(created.user_version, fedcore::store::SCHEMA_VERSION);
    assert_eq!(created.indexes_of_audit_log, ["audit_by_run"]);
    let fixture = Snapshot::of(&fixture_copy(&dir, V4, "v4.db"));
    assert_eq!(
        created.columns_of_audit_log, fixture.columns_of_audit_log,
        "expected the columns of version 4"
    );
    assert_evidence_is_a_rowid_table(&fixture, &created);
}

// ---------------------------------------------------------------------------------------------

/// What a file holds, read as stored: every value with its SQLite storage class.
#[derive(Debug)]
struct Snapshot {
    user_version: i64,
    /// Every audit entry, all columns, by `seq`.
    audit: Vec<Vec<Sql>>,
    /// Every evidence blob, `(hash, body)`, by hash.
    evidence: Vec<Vec<Sql>>,
    /// Every other table's rows (each row written out, sorted), by table name.
    tables: BTreeMap<String, Vec<String>>,
    /// Every schema object, by type and name.
    schema: Vec<SchemaObject>,
    /// `PRAGMA index_list(audit_log)`: every index on the table, those of constraints included.
    indexes_of_audit_log: Vec<String>,
    /// `PRAGMA table_info(audit_log)`: name, declared type, NOT NULL, default, key position.
    columns_of_audit_log: Vec<(String, String, bool, Option<String>, i64)>,
    /// The `CREATE TABLE` statement of evidence.
    evidence_sql: String,
    /// `PRAGMA index_list(evidence)`: name, origin (`pk` for the primary key's) and uniqueness.
    indexes_of_evidence: Vec<(String, String, bool)>,
    /// `PRAGMA table_info(evidence)`: name, declared type, key position.
    columns_of_evidence: Vec<(String, String, i64)>,
}

impl Snapshot {
    fn of(db: &Path) -> Snapshot {
        let conn = Connection::open(db).expect("open the file");
        let user_version = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version");
        let audit = all_rows(&conn, "SELECT * FROM audit_log ORDER BY seq");
        let evidence = all_rows(&conn, "SELECT hash, body FROM evidence ORDER BY hash");
        let schema: Vec<SchemaObject> = query(
            &conn,
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        );
        let mut tables = BTreeMap::new();
        for (ty, name, ..) in &schema {
            if ty == "table" && name != "audit_log" && name != "evidence" {
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
        let evidence_sql = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'evidence'",
                [],
                |r| r.get(0),
            )
            .expect("evidence table");
        let indexes_of_evidence = query(
            &conn,
            "SELECT name, origin, \"unique\" FROM pragma_index_list('evidence') ORDER BY name",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        );
        let columns_of_evidence = query(
            &conn,
            "SELECT name, type, pk FROM pragma_table_info('evidence') ORDER BY cid",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        );
        Snapshot {
            user_version,
            audit,
            evidence,
            tables,
            schema,
            indexes_of_audit_log,
            columns_of_audit_log,
            evidence_sql,
            indexes_of_evidence,
            columns_of_evidence,
        }
    }

    fn names(&self) -> Vec<&str> {
        self.schema
            .iter()
            .map(|(_, name, ..)| name.as_str())
            .collect()
    }
}

/// The same rows, in the same order, every value the same bytes of the same storage class.
fn assert_same_rows(what: &str, before: &[Vec<Sql>], after: &[Vec<Sql>]) {
    assert_eq!(after.len(), before.len(), "expected as many rows ({what})");
    if let Some(i) = (0..before.len()).find(|&i| before[i] != after[i]) {
        panic!(
            "expected {what} {} unchanged:\nbefore {:?}\nafter  {:?}",
            i + 1,
            before[i],
            after[i]
        );
    }
}

/// Every schema object but the tables named (rebuilt by a migration) and their automatic
/// indexes, which a rebuild drops or adds.
fn all_but(schema: &[SchemaObject], rebuilt: &[&str]) -> Vec<SchemaObject> {
    schema
        .iter()
        .filter(|(ty, name, tbl_name, _)| {
            let rebuilt_table = rebuilt.contains(&tbl_name.as_str());
            let automatic = name.starts_with("sqlite_autoindex_");
            !(rebuilt_table && (ty == "table" || automatic))
        })
        .cloned()
        .collect()
}

/// `after` holds evidence as migration 6 leaves it, with the columns `before` had: a rowid
/// table whose hash is its primary key through a unique index, and nothing named evidence_new.
fn assert_evidence_is_a_rowid_table(before: &Snapshot, after: &Snapshot) {
    assert!(
        !after.evidence_sql.contains("WITHOUT ROWID"),
        "{}",
        after.evidence_sql
    );
    assert_eq!(
        after.indexes_of_evidence,
        [(
            "sqlite_autoindex_evidence_1".to_string(),
            "pk".to_string(),
            true
        )],
        "expected the hash in a unique index of the primary key"
    );
    assert_eq!(
        after.columns_of_evidence, before.columns_of_evidence,
        "expected the same columns, types and key"
    );
    assert_eq!(
        after.columns_of_evidence,
        [
            ("hash".to_string(), "TEXT".to_string(), 1),
            ("body".to_string(), "BLOB".to_string(), 0)
        ]
    );
    assert!(
        after
            .schema
            .iter()
            .all(|(.., sql)| !sql.as_deref().unwrap_or("").contains("evidence_new")),
        "expected no trace of the temporary name: {:?}",
        after.schema
    );
    let references = |schema: &[SchemaObject]| -> usize {
        schema
            .iter()
            .map(|(.., sql)| {
                sql.as_deref()
                    .unwrap_or("")
                    .matches("REFERENCES evidence(hash)")
                    .count()
            })
            .sum()
    };
    assert_eq!(references(&after.schema), 10);
    assert_eq!(references(&after.schema), references(&before.schema));
}

/// The file passes SQLite's own checks, and the append-only tables still refuse changes.
/// `fedcore verify` finds the migrated file intact, with the head and counts it found before.
fn assert_verifies_as_before(db: &Path, before_report: &serde_json::Value) {
    let (code, after_report) = verify_json(db, &[]);
    assert_eq!(code, 0, "expected the migrated file intact: {after_report}");
    assert_eq!(after_report["head"], before_report["head"]);
    assert_eq!(
        after_report["counts"], before_report["counts"],
        "expected the same objects checked, the same 26 triggers among them"
    );
}

fn assert_sound(db: &Path) {
    let conn = Connection::open(db).expect("open the file");
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
        (
            "UPDATE evidence SET body = body || ' ' \
             WHERE hash = (SELECT hash FROM evidence ORDER BY hash LIMIT 1)",
            "evidence is append-only: UPDATE refused",
        ),
        (
            "DELETE FROM evidence WHERE hash = (SELECT hash FROM evidence ORDER BY hash LIMIT 1)",
            "evidence is append-only: DELETE refused",
        ),
    ] {
        match conn.execute(statement, []) {
            Ok(n) => panic!("expected `{statement}` refused, it changed {n} row(s)"),
            Err(e) => assert!(e.to_string().contains(refusal), "{statement}: {e}"),
        }
    }
}

/// `foreign_keys` is on for `conn`, as `open_for_writing` sets it for every connection it opens.
fn assert_foreign_keys_on(conn: &Connection) {
    let on: bool = conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .expect("read foreign_keys");
    assert!(on, "expected foreign_keys on after migrating");
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

/// The PT-004 proof database fedcore wrote at schema version 4.
const V4: &str = "schema-v4-pt004.db";
/// Written at schema version 1 (also read by the export tests).
const V1: &str = "schema-v1-pt004.db";
/// The PT-004 proof database fedcore wrote at schema version 5.
const V5: &str = "schema-v5-pt004.db";

/// A copy of the fixture `fixture` in `dir`, named `name`.
fn fixture_copy(dir: &TempDir, fixture: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let copy = dir.path().join(name);
    std::fs::copy(&path, &copy).unwrap_or_else(|e| panic!("copy {fixture}: {e}"));
    copy
}
