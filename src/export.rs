//! `fedcore export`: one run written out as plain files that can be handed over and checked
//! without the database: the run with its attempts, gates and decisions, every receipt as the
//! exact JCS bytes that were hashed (so a file's SHA-256 is the receipt hash), the policy and
//! definition versions it ran under, its audit entries as JSON lines, every evidence blob those
//! name, and a manifest with each file's SHA-256. Reads one snapshot of the file, read-only.

use crate::engine::{self, jcs, receipts, views};
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
}

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
    let files = reader.snapshot(|db| collect(db, run_id))??;
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
    Ok(RunFiles {
        view,
        definition,
        policies,
        entries,
        evidence,
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

impl FolderWriter {
    fn write(&mut self, relative: &str, bytes: &[u8]) -> Result<(), ExportError> {
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
