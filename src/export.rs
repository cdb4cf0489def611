//! `fedcore export`: one run written out as plain files that can be handed over and checked
//! without the database: the run with its attempts, gates and decisions, every receipt as the
//! exact JCS bytes that were hashed (so a file's SHA-256 is the receipt hash), the policy and
//! definition versions it ran under, its audit entries as JSON lines, every evidence blob those
//! name, and a manifest with each file's SHA-256. Reads one snapshot of the file, read-only.

use crate::engine::signing::PublicKey;
use crate::engine::{self, jcs, receipts, verify, views};
use crate::model::*;
use crate::store::{self, StoreError};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The manifest's format name; `verify --receipts` refuses folders of another format.
pub const FORMAT: &str = "fedcore-export/1";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Engine(#[from] engine::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists and is not empty; export writes into a new or empty folder")]
    NotEmpty(PathBuf),
    #[error("the database does not verify, so nothing was exported: {0}")]
    Broken(String),
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub run_id: String,
    pub status: RunStatus,
    pub receipt_hash: Option<String>,
    pub n_files: usize,
}

/// Everything of one run, read in one snapshot.
struct RunFiles {
    view: views::RunView,
    definition: Definition,
    policies: Vec<Policy>,
    entries: Vec<AuditEntry>,
    evidence: Vec<(String, Vec<u8>)>,
    /// The workflow receipt's signature and the key that made it, when the run ended signed.
    signature: Option<(store::SignatureRow, PublicKey)>,
}

/// Where an exported folder keeps the workflow receipt's signature.
pub const SIGNATURE_FILE: &str = "receipts/workflow.sig.json";

/// Writes run `run_id` of the database at `db` into the folder `out`.
pub fn export_run(db: &Path, run_id: &str, out: &Path) -> Result<Exported, ExportError> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| io(out, e))?
            .next()
            .is_some()
    {
        return Err(ExportError::NotEmpty(out.to_path_buf()));
    }
    let reader = store::open_read_only(db)?;
    // Only what verifies is handed over: the folder's hashes are checked against the database's
    // own, so a broken file would export a self-consistent lie.
    let (files, head) = reader.snapshot(|db| {
        let report = verify::verify(db, &verify::Options::default())?;
        if let Some(broken) = &report.failure {
            let why = format!(
                "{} {} {}: {}",
                broken.table, broken.id, broken.field, broken.message
            );
            return Err(ExportError::Broken(why));
        }
        Ok((collect(db, run_id)?, report.head))
    })??;
    let mut writer = FolderWriter {
        root: out.to_path_buf(),
        written: Vec::new(),
    };
    write_all(&mut writer, &files)?;
    let n_files = writer.written.len() + 1;
    let manifest = json!({
        "format": FORMAT,
        "run_id": files.view.run.run_id,
        "status": files.view.run.status,
        "receipt_hash": files.view.run.receipt_hash,
        "audit_head": head.to_string(),
        "public_key": files.signature.as_ref().map(|(_, key)| key.to_string()),
        "files": writer.written.iter().map(|(path, hash, bytes)| json!({"path": path, "sha256": hash, "bytes": bytes})).collect::<Vec<_>>(),
    });
    writer.write("manifest.json", &pretty(&manifest))?;
    Ok(Exported {
        run_id: files.view.run.run_id.clone(),
        status: files.view.run.status,
        receipt_hash: files.view.run.receipt_hash.clone(),
        n_files,
    })
}

fn collect(db: &store::Reader, run_id: &str) -> Result<RunFiles, ExportError> {
    let view = views::run(db, run_id)?;
    let definition = views::definition(db, &view.run.workflow_id, Some(view.run.workflow_version))?;
    let mut policy_versions: Vec<(String, i64)> = view
        .decisions
        .iter()
        .map(|d| (d.policy_id.clone(), d.policy_version))
        .collect();
    policy_versions.sort();
    policy_versions.dedup();
    let policies = policy_versions
        .iter()
        .map(|(id, version)| views::policy(db, id, Some(*version)))
        .collect::<Result<Vec<_>, _>>()?;
    let entries = views::logs(db, run_id)?;

    // Every blob a hash of this run names, so the folder stands on its own.
    let run = &view.run;
    let mut hashes: BTreeSet<String> = BTreeSet::new();
    hashes.extend([
        run.input_hash.clone(),
        run.genesis_hash.clone(),
        definition.definition_hash.clone(),
    ]);
    hashes.extend(run.receipt_hash.clone());
    hashes.extend(policies.iter().map(|p| p.policy_hash.clone()));
    for step in &view.steps {
        hashes.extend([step.input_hash.clone(), step.decision_hash.clone()]);
        hashes.extend(step.output_hash.clone());
        hashes.extend(step.receipt_hash.clone());
    }
    hashes.extend(view.gates.iter().filter_map(|g| g.receipt_hash.clone()));
    hashes.extend(
        entries
            .iter()
            .filter(|e| e.evidence_pack_ref.is_some())
            .map(|e| e.payload_hash.clone()),
    );
    let evidence = hashes
        .into_iter()
        .map(|hash| views::evidence(db, &hash).map(|body| (hash, body)))
        .collect::<Result<Vec<_>, _>>()?;
    let signature = match &run.receipt_hash {
        Some(hash) => match store::signature_of(db, hash)? {
            Some(sig) => store::signing_keys(db)?
                .into_iter()
                .find(|k| k.key_id == sig.key_id)
                .and_then(|k| PublicKey::from_hex(&k.key_name, &k.public_key).ok())
                .map(|key| (sig, key)),
            None => None,
        },
        None => None,
    };
    Ok(RunFiles {
        view,
        definition,
        policies,
        entries,
        evidence,
        signature,
    })
}

fn write_all(w: &mut FolderWriter, files: &RunFiles) -> Result<(), ExportError> {
    let view = &files.view;
    let mut run = serde_json::to_value(&view.run).map_err(corrupt)?;
    if let Value::Object(fields) = &mut run {
        fields.insert(
            "steps".into(),
            serde_json::to_value(&view.steps).map_err(corrupt)?,
        );
        fields.insert(
            "gates".into(),
            serde_json::to_value(&view.gates).map_err(corrupt)?,
        );
        fields.insert(
            "decisions".into(),
            serde_json::to_value(&view.decisions).map_err(corrupt)?,
        );
    }
    w.write("run.json", &pretty(&run))?;
    w.write(
        "definition.json",
        &pretty(&serde_json::to_value(&files.definition).map_err(corrupt)?),
    )?;
    for p in &files.policies {
        w.write(
            &format!("policies/{}@{}.json", p.policy_id, p.version),
            &pretty(&serde_json::to_value(p).map_err(corrupt)?),
        )?;
    }
    for (i, d) in view.decisions.iter().enumerate() {
        let name = format!("decisions/{:03}-{}-{}.json", i + 1, d.step_id, d.attempt);
        w.write(&name, &pretty(&serde_json::to_value(d).map_err(corrupt)?))?;
    }
    // Receipts are written as the exact bytes that were hashed.
    for (i, s) in view
        .steps
        .iter()
        .filter(|s| s.receipt_hash.is_some())
        .enumerate()
    {
        let name = format!(
            "receipts/steps/{:03}-{}-{}.json",
            i + 1,
            s.step_id,
            s.attempt
        );
        w.write(
            &name,
            &jcs::canonical(&receipts::step_receipt_object(s)).map_err(corrupt)?,
        )?;
    }
    for (i, g) in view
        .gates
        .iter()
        .filter(|g| g.receipt_hash.is_some())
        .enumerate()
    {
        let name = format!("receipts/gates/{:03}-{}.json", i + 1, g.gate_id);
        w.write(
            &name,
            &jcs::canonical(&receipts::gate_receipt_object(g)).map_err(corrupt)?,
        )?;
    }
    if let Some(hash) = &view.run.receipt_hash {
        if let Some((_, body)) = files.evidence.iter().find(|(h, _)| h == hash) {
            w.write("receipts/workflow.json", body)?;
        }
    }
    if let Some((sig, key)) = &files.signature {
        let file = json!({
            "receipt_hash": sig.hash,
            "algorithm": "Ed25519 over the 32 raw bytes of receipt_hash",
            "key": key.to_string(),
            "key_id": sig.key_id,
            "signature": sig.signature,
            "signed_at": sig.signed_at,
        });
        w.write(SIGNATURE_FILE, &pretty(&file))?;
    }
    let mut lines = Vec::new();
    for e in &files.entries {
        lines.extend(serde_json::to_vec(e).map_err(corrupt)?);
        lines.push(b'\n');
    }
    w.write("audit.jsonl", &lines)?;
    for (hash, body) in &files.evidence {
        w.write(&format!("evidence/{hash}.json"), body)?;
    }
    Ok(())
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn corrupt(e: impl std::fmt::Display) -> ExportError {
    ExportError::Store(StoreError::Corrupt(e.to_string()))
}

fn io(path: &Path, source: std::io::Error) -> ExportError {
    ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes files under a root and remembers each one's path, SHA-256 and size for the manifest.
struct FolderWriter {
    root: PathBuf,
    written: Vec<(String, String, usize)>,
}

/// Whether `relative` stays inside the folder: plain names only, no `..`, no root, no hidden
/// names. File names come from ids in the database, which an attacker may have edited.
fn is_inside(relative: &str) -> bool {
    let path = Path::new(relative);
    !relative.is_empty()
        && path.components().all(|c| match c {
            std::path::Component::Normal(name) => !name.to_string_lossy().starts_with('.'),
            _ => false,
        })
}

impl FolderWriter {
    fn write(&mut self, relative: &str, bytes: &[u8]) -> Result<(), ExportError> {
        if !is_inside(relative) {
            return Err(corrupt(format!(
                "refusing to write {relative:?}: it would leave the export folder"
            )));
        }
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
        self.written
            .push((relative.to_string(), jcs::hash_bytes(bytes), bytes.len()));
        Ok(())
    }
}

/// What `verify --receipts` found in an exported folder.
#[derive(Debug, Clone, Default)]
pub struct FolderReport {
    pub run_id: String,
    pub n_files: usize,
    pub n_evidence: usize,
    pub n_step_receipts: usize,
    pub n_gate_receipts: usize,
    pub n_decisions: usize,
    pub n_entries: usize,
    pub workflow_receipt: Option<String>,
    /// The verifier key whose signature of the workflow receipt checked out.
    pub signed_by: Option<String>,
    /// Whether that key was the one given (`--pubkey`), rather than the one the folder names.
    pub pubkey_given: bool,
    /// The first thing that did not check out.
    pub failure: Option<String>,
}

impl FolderReport {
    pub fn is_intact(&self) -> bool {
        self.failure.is_none()
    }

    pub fn summary(&self) -> String {
        match &self.failure {
            None => format!(
                "intact: run {}, {} files, {} evidence blobs, {} step receipts, {} gate receipts, {} decisions, {} audit entries, workflow receipt {}",
                self.run_id,
                self.n_files,
                self.n_evidence,
                self.n_step_receipts,
                self.n_gate_receipts,
                self.n_decisions,
                self.n_entries,
                self.workflow_receipt.as_deref().unwrap_or("none")
            ) + &match (&self.signed_by, self.pubkey_given) {
                (Some(key), true) => format!(", signed by {key}"),
                (Some(key), false) => format!(
                    ", signed by {key}, the key the folder names: this proves internal \
                     consistency only; pass --pubkey KEY to prove it is the server's"
                ),
                (None, _) => ", unsigned".to_string(),
            },
            Some(why) => format!("BROKEN: {why}"),
        }
    }
}

/// Checks a folder written by `export_run` without the database: the manifest's file hashes,
/// every evidence blob's hash, the run's genesis, every decision hash, the step receipt chain,
/// the gate receipts, the workflow receipt, and every audit entry's `entry_hash` and evidence.
/// A folder that cannot be read is reported broken like one that was altered. The workflow
/// receipt's signature is checked when the folder carries one; with `pubkey` it must, made by
/// that key.
pub fn verify_folder(dir: &Path, pubkey: Option<&PublicKey>) -> FolderReport {
    let mut report = FolderReport {
        pubkey_given: pubkey.is_some(),
        ..FolderReport::default()
    };
    if let Err(why) =
        check_folder(dir, &mut report).and_then(|()| check_signature(dir, pubkey, &mut report))
    {
        report.failure = Some(why);
    }
    report
}

/// A failed check, as the sentence the report prints.
type Checked<T> = Result<T, String>;

fn read(dir: &Path, relative: &str) -> Checked<Vec<u8>> {
    std::fs::read(dir.join(relative)).map_err(|e| format!("{relative}: {e}"))
}

fn parse<T: serde::de::DeserializeOwned>(dir: &Path, relative: &str) -> Checked<T> {
    serde_json::from_slice(&read(dir, relative)?)
        .map_err(|e| format!("{relative}: not the expected JSON: {e}"))
}

fn same(what: &str, expected: &str, found: &str) -> Checked<()> {
    if expected == found {
        Ok(())
    } else {
        Err(format!("{what}: expected {expected}, found {found}"))
    }
}

fn hash_of(value: &Value) -> Checked<String> {
    jcs::hash(value).map_err(|e| e.to_string())
}

fn check_folder(dir: &Path, report: &mut FolderReport) -> Checked<()> {
    // What is on disk, before anything is read: plain files and folders only. A symbolic link
    // would let the content checked live outside the folder, and change after the check.
    let mut on_disk = Vec::new();
    list_files(dir, dir, &mut on_disk)?;
    // The manifest: every file it lists has that SHA-256, and nothing else is in the folder.
    let manifest: Value = parse(dir, "manifest.json")?;
    if manifest["format"] != FORMAT {
        return Err(format!(
            "manifest.json: format {} is not {FORMAT}",
            manifest["format"]
        ));
    }
    let files = manifest["files"]
        .as_array()
        .ok_or("manifest.json: no file list")?;
    let mut listed = BTreeSet::new();
    for f in files {
        let path = f["path"]
            .as_str()
            .ok_or("manifest.json: a file without a path")?;
        if !is_inside(path) {
            return Err(format!(
                "manifest.json names {path:?}, which is outside the folder"
            ));
        }
        let expected = f["sha256"]
            .as_str()
            .ok_or("manifest.json: a file without a sha256")?;
        same(
            &format!("sha256 of {path}"),
            expected,
            &jcs::hash_bytes(&read(dir, path)?),
        )?;
        listed.insert(path.to_string());
    }
    if let Some(extra) = on_disk
        .iter()
        .find(|p| p.as_str() != "manifest.json" && !listed.contains(*p))
    {
        return Err(format!("{extra} is not in the manifest"));
    }
    // The files checked, and the manifest that lists them: as many as `export` said it wrote.
    report.n_files = listed.len() + 1;

    // Evidence: each blob is named by the hash of its bytes, and holds canonical JSON.
    let mut evidence = BTreeSet::new();
    for path in listed.iter().filter(|p| p.starts_with("evidence/")) {
        let hash = path
            .strip_prefix("evidence/")
            .and_then(|name| name.strip_suffix(".json"))
            .filter(|hash| {
                hash.len() == 64
                    && hash
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
            .ok_or(format!(
                "{path} is not named evidence/<64 lowercase hex>.json"
            ))?;
        let body = read(dir, path)?;
        same(&format!("hash of {path}"), hash, &jcs::hash_bytes(&body))?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| format!("{path}: {e}"))?;
        if jcs::canonical(&value).map_err(|e| e.to_string())? != body {
            return Err(format!("{path} is not canonical JSON"));
        }
        evidence.insert(hash.to_string());
    }
    report.n_evidence = evidence.len();
    let require = |what: &str, hash: &str| -> Checked<()> {
        if evidence.contains(hash) {
            Ok(())
        } else {
            Err(format!("{what}: no evidence blob {hash}"))
        }
    };

    // The run, its definition and policies.
    let run_json: Value = parse(dir, "run.json")?;
    let run: Run =
        serde_json::from_value(run_json.clone()).map_err(|e| format!("run.json: {e}"))?;
    let steps: Vec<StepAttempt> = serde_json::from_value(run_json["steps"].clone())
        .map_err(|e| format!("run.json steps: {e}"))?;
    let gates: Vec<Gate> = serde_json::from_value(run_json["gates"].clone())
        .map_err(|e| format!("run.json gates: {e}"))?;
    let decisions: Vec<Decision> = serde_json::from_value(run_json["decisions"].clone())
        .map_err(|e| format!("run.json decisions: {e}"))?;
    report.run_id = run.run_id.clone();
    same(
        "manifest run_id",
        manifest["run_id"].as_str().unwrap_or_default(),
        &run.run_id,
    )?;
    same(
        "manifest status",
        manifest["status"].as_str().unwrap_or_default(),
        run.status.as_str(),
    )?;
    same(
        "manifest receipt_hash",
        manifest["receipt_hash"].as_str().unwrap_or("none"),
        run.receipt_hash.as_deref().unwrap_or("none"),
    )?;
    let definition: Definition = parse(dir, "definition.json")?;
    same(
        "definition_hash",
        &hash_of(&receipts::definition_document(&definition))?,
        &definition.definition_hash,
    )?;
    same("run input_hash", &hash_of(&run.input)?, &run.input_hash)?;
    require("run input", &run.input_hash)?;
    same(
        "genesis_hash",
        &hash_of(&receipts::genesis_object(&run, &definition.definition_hash))?,
        &run.genesis_hash,
    )?;
    require("genesis", &run.genesis_hash)?;

    for d in &decisions {
        let what = format!("decision {} ({}#{})", d.decision_id, d.step_id, d.attempt);
        same(
            &what,
            &hash_of(&receipts::decision_object(d))?,
            &d.decision_hash,
        )?;
        // Each decision is of this run and is the one decision of exactly one attempt, made on
        // that attempt's input: none can be added beside the signed ones.
        same(&format!("{what} run_id"), &run.run_id, &d.run_id)?;
        let deciding: Vec<&StepAttempt> = steps
            .iter()
            .filter(|s| s.decision_id == d.decision_id)
            .collect();
        match deciding.as_slice() {
            [s] if s.step_id == d.step_id && s.attempt == d.attempt => {
                same(&format!("{what} input_hash"), &s.input_hash, &d.input_hash)?
            }
            _ => {
                return Err(format!(
                    "{what}: not the decision of exactly one attempt of that step"
                ))
            }
        }
        require(&what, &d.decision_hash)?;
        let policy: Policy = parse(
            dir,
            &format!("policies/{}@{}.json", d.policy_id, d.policy_version),
        )?;
        same(
            &format!("{what} policy_hash"),
            &hash_of(&receipts::policy_document(&policy))?,
            &d.policy_hash,
        )?;
    }
    report.n_decisions = decisions.len();
    // decisions/ holds the same objects as run.json, one file each, in the same order.
    let decision_files: Vec<&String> = listed
        .iter()
        .filter(|p| p.starts_with("decisions/"))
        .collect();
    let in_run = run_json["decisions"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if decision_files.len() != in_run.len() {
        return Err(format!(
            "decisions/ holds {} files for the {} decisions of run.json",
            decision_files.len(),
            in_run.len()
        ));
    }
    for (path, decision) in decision_files.into_iter().zip(in_run) {
        let file: Value = parse(dir, path)?;
        if &file != decision {
            return Err(format!(
                "{path} is not the decision run.json holds in its place"
            ));
        }
    }

    // The step receipt chain, from the genesis, in the order the attempts finished.
    let mut tip = run.genesis_hash.clone();
    let mut step_receipts = Vec::new();
    for s in &steps {
        let what = format!("step {}#{}", s.step_id, s.attempt);
        let defined = definition.steps.iter().position(|d| d.step_id == s.step_id);
        let Some(index) = defined else {
            return Err(format!("{what}: the definition has no such step"));
        };
        same(
            &format!("{what} step_index"),
            &index.to_string(),
            &s.step_index.to_string(),
        )?;
        same(
            &format!("{what} step_type"),
            definition.steps[index].step_type.as_str(),
            s.step_type.as_str(),
        )?;
        // What a receipt does not name itself, it names through output_hash: a FAILED attempt's
        // is H({"error": error}), and no other attempt has an error.
        // (Before `error` was required, a FAILED attempt could have none: H({"error": null}).)
        match (s.status, &s.error) {
            (StepStatus::Failed, error) => same(
                &format!("{what} error"),
                &hash_of(&serde_json::json!({ "error": error }))?,
                s.output_hash.as_deref().unwrap_or("none"),
            )?,
            (_, Some(_)) => return Err(format!("{what}: an error on a {} attempt", s.status)),
            (_, None) => {}
        }
        if s.receipt_hash.is_none() && run.receipt_hash.is_some() {
            return Err(format!(
                "{what} is still open, but the run has ended, which closes every attempt"
            ));
        }
        let decision = decision_of(decisions.as_slice(), s, &what)?;
        same(
            &format!("{what} decision_hash"),
            &decision.decision_hash,
            &s.decision_hash,
        )?;
        require(&format!("{what} input"), &s.input_hash)?;
        let Some(receipt) = &s.receipt_hash else {
            continue;
        };
        same(
            &format!("{what} prev_receipt_hash"),
            &tip,
            &s.prev_receipt_hash,
        )?;
        same(
            &format!("{what} receipt_hash"),
            &hash_of(&receipts::step_receipt_object(s))?,
            receipt,
        )?;
        require(
            &format!("{what} output"),
            s.output_hash.as_deref().unwrap_or_default(),
        )?;
        tip = receipt.clone();
        step_receipts.push(receipt.clone());
    }
    let files: Vec<String> = listed
        .iter()
        .filter(|p| p.starts_with("receipts/steps/"))
        .cloned()
        .collect();
    let file_hashes = files
        .iter()
        .map(|p| read(dir, p).map(|b| jcs::hash_bytes(&b)))
        .collect::<Checked<Vec<_>>>()?;
    if file_hashes != step_receipts {
        return Err("receipts/steps/ does not hold the run's step receipts in chain order".into());
    }
    report.n_step_receipts = step_receipts.len();

    let mut gate_receipts = Vec::new();
    if run.receipt_hash.is_some() {
        if let Some(g) = gates.iter().find(|g| g.status == GateStatus::Pending) {
            return Err(format!(
                "gate {} is PENDING, but the run has ended, which cancels every pending gate",
                g.gate_id
            ));
        }
    }
    for g in gates.iter().filter(|g| g.status != GateStatus::Pending) {
        let found = g.receipt_hash.clone().unwrap_or_default();
        same(
            &format!("gate {} receipt_hash", g.gate_id),
            &hash_of(&receipts::gate_receipt_object(g))?,
            &found,
        )?;
        gate_receipts.push(found);
    }
    report.n_gate_receipts = gate_receipts.len();

    if let Some(receipt_hash) = &run.receipt_hash {
        let object = receipts::workflow_receipt_object(&run, &step_receipts, &gate_receipts);
        same("workflow receipt_hash", &hash_of(&object)?, receipt_hash)?;
        same(
            "receipts/workflow.json",
            receipt_hash,
            &jcs::hash_bytes(&read(dir, "receipts/workflow.json")?),
        )?;
        report.workflow_receipt = Some(receipt_hash.clone());
    }

    // The run's audit entries: each hash, each evidence blob, and the entry that ended the run.
    let text =
        String::from_utf8(read(dir, "audit.jsonl")?).map_err(|_| "audit.jsonl is not UTF-8")?;
    let mut last_seq = 0;
    let mut last_end = None;
    let mut carried_hashes = BTreeSet::new();
    let mut requested_gates = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let entry: AuditEntry =
            serde_json::from_str(line).map_err(|e| format!("audit.jsonl line {}: {e}", i + 1))?;
        let what = format!("audit entry seq {}", entry.seq);
        if entry.seq <= last_seq || entry.run_id.as_deref() != Some(run.run_id.as_str()) {
            return Err(format!("{what}: out of order or of another run"));
        }
        last_seq = entry.seq;
        same(
            &format!("{what} entry_hash"),
            &receipts::entry_hash(&entry),
            &entry.entry_hash,
        )?;
        match &entry.evidence_pack_ref {
            Some(reference) => {
                same(
                    &format!("{what} evidence_pack_ref"),
                    &format!("sha256:{}", entry.payload_hash),
                    reference,
                )?;
                require(&what, &entry.payload_hash)?;
            }
            None => same(
                &format!("{what} payload_hash"),
                NULL_HASH,
                &entry.payload_hash,
            )?,
        }
        if matches!(
            entry.action.as_str(),
            "run.completed" | "run.failed" | "run.cancelled"
        ) {
            last_end = Some(entry.payload_hash.clone());
        }
        let carried = bind_entry(&what, &entry, &run, &steps, &decisions, &gates)?;
        if entry.action == "gate.requested" {
            requested_gates.insert(entry.subject.clone());
        }
        if let Some(hash) = carried {
            if !carried_hashes.insert(hash.to_string()) {
                return Err(format!("{what}: a second entry carrying {hash}"));
            }
        }
        report.n_entries += 1;
    }
    // And every receipt and decision is carried by its entry: none was dropped from the log.
    let expected = std::iter::once(run.genesis_hash.as_str())
        .chain(decisions.iter().map(|d| d.decision_hash.as_str()))
        .chain(steps.iter().filter_map(|s| s.receipt_hash.as_deref()))
        .chain(gates.iter().filter_map(|g| g.receipt_hash.as_deref()));
    for hash in expected {
        if !carried_hashes.contains(hash) {
            return Err(format!(
                "audit.jsonl: no entry carries {hash}, which the run holds"
            ));
        }
    }
    if let Some(g) = gates
        .iter()
        .find(|g| !requested_gates.contains(&format!("gate:{}", g.gate_id)))
    {
        return Err(format!(
            "audit.jsonl: no gate.requested entry opened gate {}",
            g.gate_id
        ));
    }
    if let Some(receipt_hash) = &run.receipt_hash {
        same(
            "payload of the entry that ended the run",
            receipt_hash,
            last_end.as_deref().unwrap_or("none"),
        )?;
    }
    Ok(())
}

/// The decision `step` names.
fn decision_of<'d>(
    decisions: &'d [Decision],
    step: &StepAttempt,
    what: &str,
) -> Checked<&'d Decision> {
    decisions
        .iter()
        .find(|d| d.decision_id == step.decision_id)
        .ok_or(format!("{what}: its attempt names no decision of the run"))
}

/// Ties an entry to the object it records, as `verify` does in the database: `run.created`
/// carries the genesis, `policy.evaluated` its attempt's decision (and says its effect), an
/// attempt's finishing entry its receipt (and its status), a gate's closing entry its receipt
/// (`gate.resolved` made by the gate's resolver). Any other entry naming an attempt or a gate
/// must name one the run has. Returns the hash the entry carries, when it carries an object's.
fn bind_entry<'e>(
    what: &str,
    entry: &'e AuditEntry,
    run: &Run,
    steps: &[StepAttempt],
    decisions: &[Decision],
    gates: &[Gate],
) -> Checked<Option<&'e str>> {
    let step = || {
        steps
            .iter()
            .find(|s| entry.subject == format!("step:{}#{}", s.step_id, s.attempt))
            .ok_or(format!(
                "{what}: {} names no attempt of the run",
                entry.subject
            ))
    };
    let gate = || {
        gates
            .iter()
            .find(|g| entry.subject == format!("gate:{}", g.gate_id))
            .ok_or(format!(
                "{what}: {} names no gate of the run",
                entry.subject
            ))
    };
    let carries = |expected: Option<&str>| -> Checked<Option<&'e str>> {
        same(
            &format!("{what} payload_hash"),
            expected.unwrap_or("none"),
            &entry.payload_hash,
        )?;
        Ok(Some(entry.payload_hash.as_str()))
    };
    match entry.action.as_str() {
        "run.created" => carries(Some(&run.genesis_hash)),
        "policy.evaluated" => {
            let s = step()?;
            let d = decision_of(decisions, s, what)?;
            same(
                &format!("{what} decision"),
                d.effect.as_str(),
                entry.decision.as_deref().unwrap_or("none"),
            )?;
            carries(Some(&d.decision_hash))
        }
        "step.completed" | "step.failed" | "step.denied" | "step.rejected" => {
            let s = step()?;
            same(
                &format!("{what} to_status"),
                s.status.as_str(),
                entry.to_status.as_deref().unwrap_or("none"),
            )?;
            carries(s.receipt_hash.as_deref())
        }
        "gate.requested" => {
            // Not a receipt, but the gate as opened: its requester, reason, deadline, quorum.
            let g = gate()?;
            if !receipts::is_gate_as_requested(g, &entry.payload_hash).map_err(|e| e.to_string())? {
                return Err(format!(
                    "{what}: gate {} is not what its gate.requested entry carried when it was \
                     opened (step, requester, reason, deadline or quorum)",
                    g.gate_id
                ));
            }
            Ok(None)
        }
        "gate.resolved" | "gate.expired" | "gate.cancelled" => {
            let g = gate()?;
            if entry.action == "gate.resolved" {
                same(
                    &format!("{what} actor"),
                    g.resolved_by.as_deref().unwrap_or("none"),
                    &entry.actor,
                )?;
            }
            carries(g.receipt_hash.as_deref())
        }
        // A refusal records what was asked, which may name what is not there.
        "request.refused" => Ok(None),
        _ => {
            if entry.subject.starts_with("step:") {
                step()?;
            } else if entry.subject.starts_with("gate:") {
                gate()?;
            }
            Ok(None)
        }
    }
}

/// The workflow receipt's signature file, if any, under the key it names, which must be `pubkey`
/// when one is given.
fn check_signature(
    dir: &Path,
    pubkey: Option<&PublicKey>,
    report: &mut FolderReport,
) -> Checked<()> {
    let present = dir.join(SIGNATURE_FILE).is_file();
    let receipt = report.workflow_receipt.clone();
    let receipt = match (receipt, present, pubkey) {
        (_, false, None) => return Ok(()),
        (None, _, Some(_)) => {
            return Err(
                "the run has not ended: there is no workflow receipt to check against --pubkey"
                    .into(),
            )
        }
        (Some(_), false, Some(_)) => {
            return Err(format!(
                "{SIGNATURE_FILE} is missing: the workflow receipt is unsigned"
            ))
        }
        (None, true, None) => {
            return Err(format!(
                "{SIGNATURE_FILE} signs a receipt the run does not have"
            ))
        }
        (Some(receipt), _, _) => receipt,
    };
    let file: Value = parse(dir, SIGNATURE_FILE)?;
    let text = |field: &str| -> Checked<String> {
        file[field]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("{SIGNATURE_FILE}: no {field}"))
    };
    same(
        &format!("{SIGNATURE_FILE} receipt_hash"),
        &receipt,
        &text("receipt_hash")?,
    )?;
    let key = PublicKey::parse(&text("key")?).map_err(|e| format!("{SIGNATURE_FILE} key: {e}"))?;
    // The manifest names the key export found in the database; the signature must be by it.
    let manifest: Value = parse(dir, "manifest.json")?;
    if let Some(named) = manifest["public_key"].as_str() {
        same(
            &format!("{SIGNATURE_FILE} key (manifest public_key)"),
            named,
            &key.to_string(),
        )?;
    }
    if let Some(given) = pubkey {
        if *given != key {
            return Err(format!(
                "key mismatch: {SIGNATURE_FILE} is signed by {key}, not by --pubkey {given}"
            ));
        }
    }
    same(
        &format!("{SIGNATURE_FILE} key_id"),
        &key.key_id_hex(),
        &text("key_id")?,
    )?;
    if !key.verifies_hash(&receipt, &text("signature")?) {
        return Err(format!(
            "{SIGNATURE_FILE}: the signature does not verify under {}",
            key.name
        ));
    }
    report.signed_by = Some(key.to_string());
    Ok(())
}

/// The files under `dir`, as paths relative to `root`; a symbolic link anywhere is refused.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Checked<()> {
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let relative = path
            .strip_prefix(root)
            .map(|r| r.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        // `file_type` does not follow a link: it says what the entry itself is.
        let kind = entry.file_type().map_err(io)?;
        if kind.is_symlink() {
            return Err(format!(
                "{relative} is a symbolic link: an export holds only plain files"
            ));
        }
        if kind.is_dir() {
            list_files(root, &path, out)?;
        } else {
            out.push(relative);
        }
    }
    Ok(())
}
