//! `fedcore proof`: the PT-004 proof runs end to end and everything it exports verifies.

use crate::support::{run_cli, TempDir};

#[test]
fn the_proof_passes_writes_its_report_and_every_exported_folder_verifies() {
    let out = TempDir::new();
    let (code, stdout, stderr) = run_cli(&["proof", "--out", out.path().to_str().unwrap()]);
    assert_eq!(code, 0, "expected the proof to pass: {stdout}\n{stderr}");
    assert!(
        stdout.contains("PASS"),
        "expected the verdict printed: {stdout}"
    );

    let report = std::fs::read_to_string(
        out.path()
            .join("PT-004_workflow_orchestration_PROOF_REPORT.md"),
    )
    .expect("the report is written under --out");
    for needle in [
        "**Verdict: PASS**",
        "## Test A",
        "## Test B",
        "## Test C",
        "binary SHA-256",
        "git SHA",
        // The commit the binary was built from, whatever folder the proof ran in.
        env!("FEDCORE_BUILD_COMMIT"),
        "rules_triggered",
        "evidence_pack_ref",
        "Receipt chain",
        "intact",
        "Tamper evidence",
    ] {
        assert!(
            report.contains(needle),
            "expected the report to contain {needle:?}"
        );
    }
    assert!(
        !report.contains("- ❌"),
        "expected no failed check in the report"
    );

    let proof_dir = out.path().join("PT-004_workflow_orchestration");
    // The output folder is meant to be committed: no secret may be left in it.
    let mut secrets = Vec::new();
    let mut pending = vec![out.path().to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.to_string_lossy().into_owned();
            if path.is_dir() {
                pending.push(path);
            } else if name.ends_with(".key") || name.ends_with(".admin-token") {
                secrets.push(name);
            }
        }
    }
    assert!(
        secrets.is_empty(),
        "expected no key or token file under --out: {secrets:?}"
    );
    let db = proof_dir.join("pt004.db");
    let (code, stdout, _) = run_cli(&["verify", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 0, "expected the proof database to verify: {stdout}");
    let folders: Vec<_> = std::fs::read_dir(proof_dir.join("receipts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        folders.len(),
        3,
        "expected one exported folder per scenario"
    );
    for folder in folders {
        let (code, stdout, _) = run_cli(&["verify", "--receipts", folder.to_str().unwrap()]);
        assert_eq!(code, 0, "expected {} to verify: {stdout}", folder.display());
    }
}
