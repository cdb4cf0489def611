//! `fedcore export`: one run written as files whose hashes check out without the database.

use crate::scenarios::{
    complete_step, new_pt004_run, pt004_server, start_step, step_input, step_output, PT004_STEPS,
};
use crate::support::{run_cli, TempDir};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Runs `fedcore export --db DB --run RUN --out OUT`: (exit code, stdout, stderr).
fn export_cli(db: &str, run_id: &str, out: &str) -> (i32, String, String) {
    run_cli(&["export", "--db", db, "--run", run_id, "--out", out])
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(
        std::fs::read(path).expect("read exported file"),
    ))
}

#[test]
fn an_exported_run_carries_its_receipts_as_the_exact_hashed_bytes_and_a_manifest_of_every_file() {
    let (mut server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "export");
    for (step_id, _) in PT004_STEPS {
        start_step(&mut c, &run_id, step_id, &step_input(step_id, "low"));
        complete_step(&mut c, &run_id, step_id, &step_output(step_id));
    }
    let run = c.get(&format!("/workflows/runs/{run_id}")).json();
    assert_eq!(server.terminate(), Some(0), "expected a clean shutdown");

    let out = TempDir::new();
    let folder = out.path().join("run");
    let db = server.db.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = export_cli(db, &run_id, folder.to_str().unwrap());
    assert_eq!(code, 0, "expected export to succeed: {stdout} {stderr}");
    // Export and verify count the same files, the manifest included.
    let files_said = |text: &str| {
        text.split([',', ':'])
            .map(str::trim)
            .find(|part| part.ends_with(" files"))
            .map(str::to_string)
    };
    let (_, verified, _) = run_cli(&["verify", "--receipts", folder.to_str().unwrap()]);
    assert!(files_said(&stdout).is_some(), "{stdout}");
    assert_eq!(
        files_said(&stdout),
        files_said(&verified),
        "{stdout} / {verified}"
    );

    // Each receipt file is the JCS of the receipt object, so its SHA-256 is the receipt hash.
    assert_eq!(
        sha256_file(&folder.join("receipts/workflow.json")),
        run["receipt_hash"].as_str().unwrap()
    );
    let step_receipts: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["receipt_hash"].as_str().unwrap())
        .collect();
    let exported: Vec<String> = std::fs::read_dir(folder.join("receipts/steps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect::<Vec<_>>()
        .iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                sha256_file(p),
            )
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .collect();
    assert_eq!(
        exported.len(),
        5,
        "expected one receipt file per finished attempt"
    );
    assert_eq!(
        exported, step_receipts,
        "expected the step receipt files in chain order"
    );

    // The manifest names every other file with its SHA-256, and every evidence file is named by its hash.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["run_id"], run_id.as_str());
    let files = manifest["files"].as_array().expect("manifest files");
    for f in files {
        let path = folder.join(f["path"].as_str().unwrap());
        assert_eq!(
            sha256_file(&path),
            f["sha256"].as_str().unwrap(),
            "manifest hash of {}",
            path.display()
        );
    }
    let n_on_disk = walk(&folder);
    assert_eq!(
        n_on_disk,
        files.len() + 1,
        "expected the manifest to list every file but itself"
    );
    for entry in std::fs::read_dir(folder.join("evidence")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(sha256_file(&path), name, "evidence file named by its hash");
    }
    let audit = std::fs::read_to_string(folder.join("audit.jsonl")).unwrap();
    let entries: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.last().unwrap()["action"], "run.completed");
    assert_eq!(entries.last().unwrap()["payload_hash"], run["receipt_hash"]);

    // A second export into the same folder is refused; an unknown run is refused.
    let (code, _, stderr) = export_cli(db, &run_id, folder.to_str().unwrap());
    assert_eq!(code, 2, "expected a non-empty folder refused: {stderr}");
    let other = out.path().join("other");
    let (code, _, stderr) = export_cli(db, "no-such-run", other.to_str().unwrap());
    assert_eq!(code, 2, "expected an unknown run refused");
    assert!(
        stderr.contains("no-such-run"),
        "expected the run named: {stderr}"
    );
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                1
            }
        })
        .sum()
}

/// Exports a completed PT-004 run and returns (the temp dir holding it, the folder).
fn exported_run() -> (TempDir, std::path::PathBuf) {
    let (mut server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "tamper");
    for (step_id, _) in PT004_STEPS {
        start_step(&mut c, &run_id, step_id, &step_input(step_id, "low"));
        complete_step(&mut c, &run_id, step_id, &step_output(step_id));
    }
    assert_eq!(server.terminate(), Some(0));
    let out = TempDir::new();
    let folder = out.path().join("run");
    let db = server.db.to_str().unwrap().to_string();
    let (code, _, stderr) = export_cli(&db, &run_id, folder.to_str().unwrap());
    assert_eq!(code, 0, "export: {stderr}");
    (out, folder)
}

/// Rewrites `relative` with `edit` and, as a careful attacker would, its hash in the manifest.
fn tamper(folder: &Path, relative: &str, edit: impl FnOnce(String) -> String) {
    let path = folder.join(relative);
    let old_hash = sha256_file(&path);
    std::fs::write(&path, edit(std::fs::read_to_string(&path).unwrap())).unwrap();
    // Only this file's entry: another file may hold the same bytes (a receipt and its blob).
    let manifest = folder.join("manifest.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    for f in doc["files"].as_array_mut().unwrap() {
        if f["path"] == relative {
            assert_eq!(f["sha256"], old_hash.as_str());
            f["sha256"] = Value::String(sha256_file(&path));
        }
    }
    std::fs::write(manifest, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

fn verify_receipts(folder: &Path) -> (i32, Value) {
    let (code, stdout, stderr) =
        run_cli(&["verify", "--receipts", folder.to_str().unwrap(), "--json"]);
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("verify --json output ({e}): {stdout} {stderr}"));
    (code, report)
}

#[test]
fn an_untouched_export_verifies_without_the_database() {
    let (_dir, folder) = exported_run();
    let (code, report) = verify_receipts(&folder);
    assert_eq!(code, 0, "expected an untouched export to verify: {report}");
    assert_eq!(report["ok"], true);
}

#[test]
fn an_edited_audit_entry_is_caught_even_with_the_manifest_rewritten() {
    let (_dir, folder) = exported_run();
    tamper(&folder, "audit.jsonl", |text| {
        text.replacen("registered active agent", "approved by a human", 1)
    });
    let (code, report) = verify_receipts(&folder);
    assert_eq!(code, 1, "expected an edited entry to fail: {report}");
    let failure = report["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("audit entry seq") && failure.contains("entry_hash"),
        "expected the entry named: {failure}"
    );
}

#[test]
fn an_edited_step_receipt_or_evidence_blob_is_caught() {
    let (_dir, folder) = exported_run();
    let step_file = std::fs::read_dir(folder.join("receipts/steps"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let relative = step_file
        .strip_prefix(&folder)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    tamper(&folder, &relative, |text| {
        text.replace("COMPLETED", "FAILED")
    });
    let (code, report) = verify_receipts(&folder);
    assert_eq!(code, 1, "expected an edited step receipt to fail: {report}");

    let (_dir, folder) = exported_run();
    // A blob whose bytes no other file repeats (a receipt is also under receipts/), so that
    // `tamper` re-hashes only its own manifest line.
    let manifest = std::fs::read_to_string(folder.join("manifest.json")).unwrap();
    let blob = std::fs::read_dir(folder.join("evidence"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            let line = format!("\"sha256\": \"{}\"", sha256_file(path));
            manifest.matches(&line).count() == 1
        })
        .expect("a blob listed once");
    let relative = blob
        .strip_prefix(&folder)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    tamper(&folder, &relative, |text| format!("{text} "));
    let (code, report) = verify_receipts(&folder);
    assert_eq!(
        code, 1,
        "expected an edited evidence blob to fail: {report}"
    );
    assert!(
        report["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("evidence/"),
        "expected the blob named: {report}"
    );
}

#[test]
fn a_file_added_to_an_export_is_caught_and_a_missing_folder_cannot_be_checked() {
    let (_dir, folder) = exported_run();
    std::fs::write(folder.join("evidence/extra.json"), "{}").unwrap();
    let (code, report) = verify_receipts(&folder);
    assert_eq!(code, 1, "expected an unlisted file to fail: {report}");
    let (code, _, _) = run_cli(&[
        "verify",
        "--receipts",
        folder.join("nope").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "expected a missing folder to be exit 2");
    // A folder that is not an export (here one inside it) was not checked: exit 2, not 1.
    let (code, _, stderr) = run_cli(&[
        "verify",
        "--receipts",
        folder.join("evidence").to_str().unwrap(),
    ]);
    assert_eq!(
        code, 2,
        "expected a folder without a manifest to be exit 2: {stderr}"
    );
    assert!(stderr.contains("none of an export's files"), "{stderr}");
    // An export whose manifest was deleted is checked, and broken: exit 1, not "could not check".
    std::fs::remove_file(folder.join("manifest.json")).unwrap();
    let (code, report) = verify_receipts(&folder);
    assert_eq!(code, 1, "expected a deleted manifest to fail: {report}");
    assert!(report.to_string().contains("manifest.json"), "{report}");
}

#[test]
fn a_schema_version_one_database_exports_and_its_folder_verifies() {
    // A PT-004 proof database written by fedcore at schema version 1, kept as a fixture.
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema-v1-pt004.db");
    let dir = TempDir::new();
    let copy = dir.path().join("v1.db");
    std::fs::copy(&committed, &copy).expect("copy the schema-version-1 fixture");
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1, "expected the fixture at schema version 1");
    let run_ids: Vec<String> = conn
        .prepare("SELECT run_id FROM runs")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(conn);
    for (i, run_id) in run_ids.iter().enumerate() {
        let folder = dir.path().join(format!("run-{i}"));
        let (code, stdout, stderr) =
            export_cli(copy.to_str().unwrap(), run_id, folder.to_str().unwrap());
        assert_eq!(
            code, 0,
            "expected {run_id} to export from a version-1 file: {stdout} {stderr}"
        );
        let (code, report) = verify_receipts(&folder);
        assert_eq!(code, 0, "expected the exported folder to verify: {report}");
    }
}

#[test]
fn a_database_that_does_not_verify_is_not_exported() {
    let (mut server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "broken");
    assert_eq!(server.terminate(), Some(0));
    let conn = rusqlite::Connection::open(&server.db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET reason = 'forged' WHERE seq = 1;",
    )
    .unwrap();
    drop(conn);
    let out = TempDir::new();
    let folder = out.path().join("run");
    let (code, _, stderr) = export_cli(
        server.db.to_str().unwrap(),
        &run_id,
        folder.to_str().unwrap(),
    );
    assert_eq!(code, 2, "expected a broken database refused: {stderr}");
    assert!(
        stderr.contains("does not verify"),
        "expected the reason: {stderr}"
    );
    assert!(!folder.exists(), "expected nothing written");
}

#[test]
fn a_manifest_that_disagrees_with_the_run_or_leaves_the_folder_is_caught() {
    let (_dir, folder) = exported_run();
    let manifest = folder.join("manifest.json");
    let original = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, original.replace("\"COMPLETED\"", "\"FAILED\"")).unwrap();
    let (code, report) = verify_receipts(&folder);
    assert_eq!(
        code, 1,
        "expected a manifest status that differs from run.json caught: {report}"
    );

    let mut doc: Value = serde_json::from_str(&original).unwrap();
    doc["files"]
        .as_array_mut()
        .unwrap()
        .push(json!({"path": "../../etc/hostname", "sha256": "00", "bytes": 0}));
    std::fs::write(&manifest, serde_json::to_vec(&doc).unwrap()).unwrap();
    let (code, report) = verify_receipts(&folder);
    assert_eq!(
        code, 1,
        "expected a path outside the folder refused: {report}"
    );
    assert!(
        report["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("outside"),
        "{report}"
    );
}

#[test]
fn verify_receipts_refuses_flags_that_need_a_database() {
    let (code, _, stderr) = run_cli(&["verify", "--receipts", ".", "--replay"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = run_cli(&["verify", "--receipts", ".", "--db", "x.db"]);
    assert_eq!(code, 2, "{stderr}");
}

/// Rewrites the audit entry at `line` (0-based) with `edit`, then its `entry_hash`, as an attacker
/// who knows the format would, and the manifest.
fn tamper_entry(folder: &Path, line: usize, edit: impl FnOnce(&mut Value)) {
    tamper(folder, "audit.jsonl", |text| {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut entry: Value = serde_json::from_str(&lines[line]).unwrap();
        edit(&mut entry);
        let parsed: fedcore::model::AuditEntry = serde_json::from_value(entry.clone()).unwrap();
        entry["entry_hash"] = Value::String(fedcore::engine::receipts::entry_hash(&parsed));
        lines[line] = serde_json::to_string(&entry).unwrap();
        lines.join("\n") + "\n"
    });
}

fn line_of(folder: &Path, action: &str) -> usize {
    std::fs::read_to_string(folder.join("audit.jsonl"))
        .unwrap()
        .lines()
        .position(|l| serde_json::from_str::<Value>(l).unwrap()["action"] == action)
        .unwrap_or_else(|| panic!("no {action} entry"))
}

#[test]
fn forgeries_that_keep_every_hash_consistent_are_still_caught() {
    let (_dir, folder) = exported_run();
    let copy = |name: &str| {
        let to = folder.with_file_name(name);
        let status = std::process::Command::new("cp")
            .args(["-r", folder.to_str().unwrap(), to.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        to
    };
    let broken = |dir: &Path, says: &str| {
        let (code, report) = verify_receipts(dir);
        assert_eq!(code, 1, "expected {} broken: {report}", dir.display());
        let failure = report["failure"].to_string();
        assert!(failure.contains(says), "{}: {failure}", dir.display());
    };

    // A decision file that no longer matches the signed decision in run.json.
    let d = copy("decision-file");
    tamper(&d, "decisions/001-observe-1.json", |t| {
        t.replace("\"allow\"", "\"deny\"")
    });
    broken(&d, "is not the decision run.json holds");

    // A policy decision re-labelled in the log, its entry_hash recomputed.
    let d = copy("relabelled");
    let line = line_of(&d, "policy.evaluated");
    tamper_entry(&d, line, |e| e["decision"] = json!("flag"));
    broken(&d, "decision: expected allow, found flag");

    // A finished step's entry re-pointed at other evidence: the receipt is no longer carried.
    let d = copy("dropped");
    let line = line_of(&d, "step.completed");
    tamper_entry(&d, line, |e| {
        e["action"] = json!("step.note");
        e["subject"] = json!("run:x");
    });
    broken(&d, "no entry carries");

    // A symbolic link in place of a file.
    let d = copy("linked");
    let outside = d.with_file_name("outside-run.json");
    std::fs::copy(d.join("run.json"), &outside).unwrap();
    std::fs::remove_file(d.join("run.json")).unwrap();
    std::os::unix::fs::symlink(&outside, d.join("run.json")).unwrap();
    broken(&d, "is a symbolic link");

    // An attempt made up beside the signed ones, left open in an ended run.
    let d = copy("made-up");
    tamper(&d, "run.json", |t| {
        let mut run: Value = serde_json::from_str(&t).unwrap();
        let mut extra = run["steps"][4].clone();
        extra["attempt"] = json!(2);
        extra["status"] = json!("STARTED");
        extra["receipt_hash"] = Value::Null;
        extra["output_hash"] = Value::Null;
        extra["ended_at"] = Value::Null;
        run["steps"].as_array_mut().unwrap().push(extra);
        serde_json::to_string_pretty(&run).unwrap()
    });
    broken(&d, "not the decision of exactly one attempt");

    // The signature must be by the key the manifest names; and without --pubkey the report
    // says that this proves internal consistency only.
    let (_, stdout, _) = run_cli(&["verify", "--receipts", folder.to_str().unwrap()]);
    assert!(stdout.contains("internal consistency only"), "{stdout}");
    let d = copy("other-key");
    let manifest = d.join("manifest.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    doc["public_key"] = json!("fedcore-00000000+00000000+AAAA");
    std::fs::write(&manifest, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    broken(&d, "manifest public_key");
}

#[test]
fn a_gate_edited_after_it_was_opened_is_caught_in_an_export() {
    let (mut server, mut c) = pt004_server();
    let (run_id, _gate_id) = crate::scenarios::flagged_run(&mut c, crate::scenarios::AGENT);
    assert_eq!(server.terminate(), Some(0));
    let out = TempDir::new();
    let folder = out.path().join("run");
    let db = server.db.to_str().unwrap().to_string();
    let (code, _, stderr) = export_cli(&db, &run_id, folder.to_str().unwrap());
    assert_eq!(code, 0, "export: {stderr}");
    let (code, report) = verify_receipts(&folder);
    assert_eq!(code, 0, "expected the open, gated run to verify: {report}");

    // A deadline added to the pending gate: no receipt covers it, its gate.requested entry does.
    tamper(&folder, "run.json", |t| {
        let mut run: Value = serde_json::from_str(&t).unwrap();
        run["gates"][0]["expires_at"] = json!("2030-01-01T00:00:00.000000Z");
        serde_json::to_string_pretty(&run).unwrap()
    });
    let (code, report) = verify_receipts(&folder);
    assert_eq!(code, 1, "expected the edited gate caught: {report}");
    assert!(
        report["failure"].to_string().contains("gate.requested"),
        "{report}"
    );
}
