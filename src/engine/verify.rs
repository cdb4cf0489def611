//! `fedcore verify`: recomputes, from the database alone, every hash fedcore wrote (contract §7)
//! and names the first object that does not match. The objects hashed are the ones `receipts`
//! builds for the writer, so writer and verifier cannot disagree on what a receipt covers. Tables
//! are streamed row by row; only per-run lists and the catalogue of policy and definition hashes
//! are held in memory. A broken database is a `Report` with a failure, never an error: `Err` means
//! the file could not be read at all.

use super::{jcs, policy, receipts};
use crate::model::*;
use crate::store::{self, AuditLink, Db, StoreError};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// What to check beyond the file's own consistency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// A head written down earlier that the log must still contain, unchanged.
    pub expect_head: Option<Head>,
    /// Also re-evaluate every decision on its recorded context with the policy version it names.
    pub replay: bool,
}

/// An audit log position: an entry's `seq` and `entry_hash`, written `SEQ:HASH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    pub seq: i64,
    pub entry_hash: String,
}

impl Head {
    /// The head of an empty log: seq 0 and 64 zeros, as `GET /audit` answers.
    pub fn empty() -> Head {
        Head {
            seq: 0,
            entry_hash: ZERO_HASH.to_string(),
        }
    }

    /// Parses `SEQ:HASH` as `verify` prints it; seq 0 only with the zero hash.
    pub fn parse(text: &str) -> Option<Head> {
        let (seq, hash) = text.split_once(':')?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq: i64 = seq.parse().ok()?;
        let entry_hash = hash.to_ascii_lowercase();
        let valid = is_hash(&entry_hash) && (seq > 0 || entry_hash == ZERO_HASH);
        valid.then_some(Head { seq, entry_hash })
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.entry_hash)
    }
}

/// How many objects of each kind were checked (before the failure, when there is one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub evidence: u64,
    pub audit_entries: u64,
    pub policies: u64,
    pub definitions: u64,
    pub decisions: u64,
    pub runs: u64,
    pub steps: u64,
    pub gates: u64,
    pub workflow_receipts: u64,
    pub triggers: u64,
    /// `None` unless a replay was asked for.
    pub replayed_decisions: Option<u64>,
}

/// The first object found broken: where it is, which field, the hash recomputed from the file
/// (`expected`) and the one stored (`found`), and what that means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// A table name, or `sqlite_master` for a trigger.
    pub table: &'static str,
    /// The row: an id, a hash, `id@version`, `run_id/step_id#attempt`, or an audit `seq`.
    pub id: String,
    pub field: &'static str,
    pub expected: Option<String>,
    pub found: Option<String>,
    pub message: String,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub counts: Counts,
    /// The last audit entry as stored (`seq` 0 for an empty log); verified only when intact.
    pub head: Head,
    pub failure: Option<Broken>,
}

impl Report {
    pub fn is_intact(&self) -> bool {
        self.failure.is_none()
    }

    /// `{"ok", "counts", "head": {"seq", "entry_hash"}, "failure": null | {…}}`.
    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.is_intact(),
            "counts": self.counts,
            "head": self.head,
            "failure": self.failure,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let rows: [(&str, Option<u64>); 11] = [
            ("evidence blobs", Some(c.evidence)),
            ("audit entries", Some(c.audit_entries)),
            ("policy versions", Some(c.policies)),
            ("definition versions", Some(c.definitions)),
            ("decisions", Some(c.decisions)),
            ("runs", Some(c.runs)),
            ("step attempts", Some(c.steps)),
            ("gates", Some(c.gates)),
            ("workflow receipts", Some(c.workflow_receipts)),
            ("triggers", Some(c.triggers)),
            ("replayed decisions", c.replayed_decisions),
        ];
        match self.failure {
            None => writeln!(f, "checked:")?,
            Some(_) => writeln!(f, "checked before the failure:")?,
        }
        for (label, count) in rows {
            if let Some(count) = count {
                writeln!(f, "  {label:<22}{count:>10}")?;
            }
        }
        match &self.failure {
            None => {
                writeln!(f, "audit head: {}", self.head)?;
                writeln!(f, "intact")
            }
            Some(b) => {
                writeln!(f, "audit head (not verified): {}", self.head)?;
                writeln!(f, "BROKEN: {} {} {}: {}", b.table, b.id, b.field, b.message)?;
                if let Some(expected) = &b.expected {
                    writeln!(f, "  expected {expected}")?;
                }
                if let Some(found) = &b.found {
                    writeln!(f, "  found    {found}")?;
                }
                Ok(())
            }
        }
    }
}

/// Checks the database `db` reads (run it inside one read snapshot) and reports the first broken
/// object. `Err` only when reading failed: the database could not be checked.
///
/// Order: evidence blobs, the audit chain (and `expect_head`), policies, definitions, decisions,
/// then each run with its attempts, gates and workflow receipt, rows that belong to nothing,
/// the triggers, and last the replay. Everything else leans on the blobs and the chain, so they
/// come first; a missing trigger is named only when the data itself is intact.
pub fn verify(db: &impl Db, options: &Options) -> Result<Report, StoreError> {
    let head = store::audit_head(db)?
        .map_or_else(Head::empty, |(seq, entry_hash)| Head { seq, entry_hash });
    let mut checker = Checker {
        db,
        options,
        head: &head,
        counts: Counts::default(),
        buf: Vec::with_capacity(4096),
        policy_hashes: HashMap::new(),
        definition_hashes: HashMap::new(),
        evidence: EvidenceIndex::default(),
        links: Vec::new(),
    };
    let failure = match checker.check_all() {
        Ok(()) => None,
        Err(Stop::Broken(broken)) => Some(*broken),
        Err(Stop::Unreadable(e)) => return Err(e),
    };
    Ok(Report {
        counts: checker.counts,
        head,
        failure,
    })
}

/// Why checking stopped early.
enum Stop {
    Broken(Box<Broken>),
    Unreadable(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        match e {
            StoreError::BadRow { table, key, why } => broken(
                table,
                key,
                "row",
                None,
                None,
                format!("the row cannot be read as what fedcore writes: {why}"),
            ),
            other => Stop::Unreadable(other),
        }
    }
}

fn broken(
    table: &'static str,
    id: impl Into<String>,
    field: &'static str,
    expected: Option<&str>,
    found: Option<&str>,
    message: impl Into<String>,
) -> Stop {
    Stop::Broken(Box::new(Broken {
        table,
        id: id.into(),
        field,
        expected: expected.map(str::to_string),
        found: found.map(str::to_string),
        message: message.into(),
    }))
}

struct Checker<'a, D: Db> {
    db: &'a D,
    options: &'a Options,
    head: &'a Head,
    counts: Counts,
    /// The JCS bytes of the object being hashed; reused so the hot loop does not allocate them.
    buf: Vec<u8>,
    /// `(policy_id, version) → policy_hash` of the versions checked.
    policy_hashes: HashMap<(String, i64), String>,
    /// `(workflow_id, version) → definition_hash` of the versions checked.
    definition_hashes: HashMap<(String, i64), String>,
    /// The hash of every evidence blob, once the blobs are checked.
    evidence: EvidenceIndex,
    /// The audit links of the run being checked; reused from run to run.
    links: Vec<AuditLink>,
}

/// The SHA-256 digests of the stored blobs, so that every "names a blob" check is a lookup in
/// memory instead of a query: about 40 bytes per blob, filled in the one pass over the evidence
/// table. A digest is uniformly random, so its first word serves as its hash as it is.
#[derive(Default)]
struct EvidenceIndex {
    digests: HashSet<Digest, BuildHasherDefault<FirstWord>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest([u64; 4]);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
    }
}

/// A `Hasher` for `Digest`: its first word, unchanged.
#[derive(Default)]
struct FirstWord(u64);

impl Hasher for FirstWord {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `Digest` is hashed here, through `write_u64`; fold anything else in anyway.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

impl EvidenceIndex {
    /// Adds a blob's hash (already checked to be the SHA-256 of its body).
    fn insert(&mut self, hash: &str) {
        if let Some(digest) = Self::digest(hash) {
            self.digests.insert(digest);
        }
    }

    fn contains(&self, hash: &str) -> bool {
        Self::digest(hash).is_some_and(|digest| self.digests.contains(&digest))
    }

    /// The words of a hash written as 64 lowercase hex characters; `None` for anything else.
    fn digest(hash: &str) -> Option<Digest> {
        let mut bytes = [0u8; 32];
        if !is_hash(hash) || hex::decode_to_slice(hash, &mut bytes).is_err() {
            return None;
        }
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_be_bytes(chunk.try_into().ok()?);
        }
        Some(Digest(words))
    }
}

impl<D: Db> Checker<'_, D> {
    fn check_all(&mut self) -> Result<(), Stop> {
        self.evidence()?;
        self.audit_chain()?;
        self.policies()?;
        self.definitions()?;
        self.runs()?;
        self.orphans()?;
        self.triggers()?;
        if self.options.replay {
            self.replay()?;
        }
        Ok(())
    }

    /// `H(value)`, canonicalized into the reused buffer. A value with no canonical form (a number
    /// beyond the double range read from a row) breaks the object it belongs to.
    fn hash(
        &mut self,
        value: &Value,
        table: &'static str,
        id: impl FnOnce() -> String,
        field: &'static str,
    ) -> Result<String, Stop> {
        self.buf.clear();
        match jcs::write_canonical(value, &mut self.buf) {
            Ok(()) => Ok(jcs::hash_bytes(&self.buf)),
            Err(e) => Err(broken(table, id(), field, None, None, e.to_string())),
        }
    }

    /// The stored `found` must equal the recomputed `expected`.
    fn expect_eq(
        table: &'static str,
        id: impl FnOnce() -> String,
        field: &'static str,
        expected: &str,
        found: &str,
        message: impl FnOnce() -> String,
    ) -> Result<(), Stop> {
        if expected == found {
            Ok(())
        } else {
            Err(broken(
                table,
                id(),
                field,
                Some(expected),
                Some(found),
                message(),
            ))
        }
    }

    /// `hash` must name a stored evidence blob.
    fn require_evidence(
        &self,
        table: &'static str,
        id: impl FnOnce() -> String,
        field: &'static str,
        hash: &str,
    ) -> Result<(), Stop> {
        if self.evidence.contains(hash) {
            Ok(())
        } else {
            Err(broken(
                table,
                id(),
                field,
                Some(hash),
                None,
                format!("{field} names no evidence blob"),
            ))
        }
    }

    /// Every blob: its body hashes to its key, and is the canonical JCS form of its value.
    fn evidence(&mut self) -> Result<(), Stop> {
        let db = self.db;
        store::for_each_evidence(db, |hash, body| {
            let actual = jcs::hash_bytes(body);
            Self::expect_eq(
                "evidence",
                || hash.into(),
                "body",
                hash,
                &actual,
                || "the body no longer hashes to the key it is stored under".into(),
            )?;
            let value: Value = serde_json::from_slice(body).map_err(|e| {
                broken(
                    "evidence",
                    hash,
                    "body",
                    None,
                    None,
                    format!("the body is not JSON: {e}"),
                )
            })?;
            self.buf.clear();
            if let Err(e) = jcs::write_canonical(&value, &mut self.buf) {
                return Err(broken("evidence", hash, "body", None, None, e.to_string()));
            }
            if self.buf != body {
                let canonical = jcs::hash_bytes(&self.buf);
                return Err(broken(
                    "evidence",
                    hash,
                    "body",
                    Some(&canonical),
                    Some(hash),
                    "the body is not the canonical JCS form of its value",
                ));
            }
            self.evidence.insert(hash);
            self.counts.evidence += 1;
            Ok(())
        })
    }

    /// The one chain: `seq` 1, 2, 3, … without gaps; each `entry_hash` recomputed; each
    /// `prev_hash` the previous `entry_hash`; each payload the blob its reference names.
    fn audit_chain(&mut self) -> Result<(), Stop> {
        let db = self.db;
        let expect_head = self.options.expect_head.as_ref();
        let mut expected_seq: i64 = 1;
        let mut prev_hash = ZERO_HASH.to_string();
        let mut head_seen = false;
        store::for_each_audit_entry(db, |entry| {
            let seq = entry.seq;
            if seq != expected_seq {
                let message = if seq > expected_seq {
                    format!(
                        "the log jumps from seq {} to {seq}: entries were removed",
                        expected_seq - 1
                    )
                } else {
                    format!(
                        "seq {seq} appears out of order after seq {}",
                        expected_seq - 1
                    )
                };
                return Err(broken(
                    "audit_log",
                    expected_seq.to_string(),
                    "seq",
                    Some(&expected_seq.to_string()),
                    Some(&seq.to_string()),
                    message,
                ));
            }
            let id = || seq.to_string();
            let actual = self.hash(
                &receipts::entry_object(&entry),
                "audit_log",
                id,
                "entry_hash",
            )?;
            Self::expect_eq(
                "audit_log",
                id,
                "entry_hash",
                &actual,
                &entry.entry_hash,
                || {
                    "the entry's fields no longer hash to its entry_hash: it was changed after it was written".into()
                },
            )?;
            Self::expect_eq(
                "audit_log",
                id,
                "prev_hash",
                &prev_hash,
                &entry.prev_hash,
                || {
                    "the entry does not link to the entry before it: entries were reordered, removed or rewritten".into()
                },
            )?;
            match entry.evidence_pack_ref.as_deref() {
                Some(reference) => {
                    let named = reference.strip_prefix("sha256:").unwrap_or(reference);
                    Self::expect_eq(
                        "audit_log",
                        id,
                        "payload_hash",
                        named,
                        &entry.payload_hash,
                        || {
                            format!("the payload_hash is not the hash its evidence_pack_ref {reference} names")
                        },
                    )?;
                    self.require_evidence("audit_log", id, "evidence_pack_ref", named)?;
                }
                None => {
                    Self::expect_eq(
                        "audit_log",
                        id,
                        "payload_hash",
                        NULL_HASH,
                        &entry.payload_hash,
                        || {
                            "an entry without evidence must carry H(null) as its payload_hash"
                                .into()
                        },
                    )?;
                }
            }
            if let Some(head) = expect_head.filter(|h| h.seq == seq) {
                head_seen = true;
                Self::expect_eq(
                    "audit_log",
                    id,
                    "entry_hash",
                    &head.entry_hash,
                    &entry.entry_hash,
                    || {
                        "the entry at the recorded head has another hash: the log was rewritten since".into()
                    },
                )?;
            }
            prev_hash = entry.entry_hash;
            expected_seq += 1;
            self.counts.audit_entries += 1;
            Ok(())
        })?;
        match expect_head {
            Some(head) if !head_seen && head.seq > 0 => Err(broken(
                "audit_log",
                head.seq.to_string(),
                "seq",
                Some(&head.to_string()),
                Some(&self.head.to_string()),
                format!(
                    "the log no longer contains the recorded head: it ends at seq {}, so it was truncated",
                    self.head.seq
                ),
            )),
            _ => Ok(()),
        }
    }

    fn policies(&mut self) -> Result<(), Stop> {
        let db = self.db;
        store::for_each_policy(db, |p| {
            let id = || format!("{}@{}", p.policy_id, p.version);
            let actual = self.hash(
                &receipts::policy_document(&p),
                "policies",
                id,
                "policy_hash",
            )?;
            Self::expect_eq(
                "policies",
                id,
                "policy_hash",
                &actual,
                &p.policy_hash,
                || "the stored policy no longer hashes to its policy_hash".into(),
            )?;
            self.require_evidence("policies", id, "policy_hash", &p.policy_hash)?;
            self.policy_hashes
                .insert((p.policy_id, p.version), p.policy_hash);
            self.counts.policies += 1;
            Ok(())
        })
    }

    fn definitions(&mut self) -> Result<(), Stop> {
        let db = self.db;
        store::for_each_definition(db, |d| {
            let id = || format!("{}@{}", d.workflow_id, d.version);
            let document = receipts::definition_document(&d);
            let actual = self.hash(&document, "workflows", id, "definition_hash")?;
            Self::expect_eq(
                "workflows",
                id,
                "definition_hash",
                &actual,
                &d.definition_hash,
                || "the stored definition no longer hashes to its definition_hash".into(),
            )?;
            self.require_evidence("workflows", id, "definition_hash", &d.definition_hash)?;
            self.definition_hashes
                .insert((d.workflow_id, d.version), d.definition_hash);
            self.counts.definitions += 1;
            Ok(())
        })
    }

    /// A decision hashes to its `decision_hash`, names stored blobs, names a policy version that
    /// exists with the hash it recorded, and is the evidence of its `policy.evaluated` entry.
    fn decision(&mut self, links: &[AuditLink], d: &Decision) -> Result<(), Stop> {
        let id = || d.decision_id.clone();
        self.counts.decisions += 1;
        let object = receipts::decision_object(d);
        let actual = self.hash(&object, "decisions", id, "decision_hash")?;
        Self::expect_eq(
            "decisions",
            id,
            "decision_hash",
            &actual,
            &d.decision_hash,
            || "the decision's fields no longer hash to its decision_hash".into(),
        )?;
        self.require_evidence("decisions", id, "decision_hash", &d.decision_hash)?;
        self.require_evidence("decisions", id, "input_hash", &d.input_hash)?;
        let policy = (d.policy_id.clone(), d.policy_version);
        let Some(policy_hash) = self.policy_hashes.get(&policy) else {
            return Err(broken(
                "decisions",
                id(),
                "policy_version",
                None,
                Some(&format!("{}@{}", d.policy_id, d.policy_version)),
                "the decision names a policy version that does not exist",
            ));
        };
        Self::expect_eq(
            "decisions",
            id,
            "policy_hash",
            policy_hash,
            &d.policy_hash,
            || {
                format!(
                    "policy {}@{} has another policy_hash",
                    d.policy_id, d.policy_version
                )
            },
        )?;
        let subject = format!("step:{}#{}", d.step_id, d.attempt);
        let evaluated = last_link(links, &["policy.evaluated"], &subject);
        Self::expect_eq(
            "decisions",
            id,
            "decision_hash",
            &d.decision_hash,
            evaluated.map_or("", |l| l.payload_hash.as_str()),
            || format!("the policy.evaluated entry for {subject} does not carry this decision"),
        )
    }

    fn runs(&mut self) -> Result<(), Stop> {
        let db = self.db;
        store::for_each_run(db, |run| self.run(run))
    }

    /// One run: genesis, the receipt chain of its attempts, its gates, and its workflow receipt,
    /// each tied to the audit entry that carries it.
    fn run(&mut self, run: Run) -> Result<(), Stop> {
        let db = self.db;
        let run_id = run.run_id.as_str();
        let id = || run_id.to_string();
        self.counts.runs += 1;
        self.require_evidence("runs", id, "input_hash", &run.input_hash)?;
        let pinned = (run.workflow_id.clone(), run.workflow_version);
        let Some(definition_hash) = self.definition_hashes.get(&pinned).cloned() else {
            return Err(broken(
                "runs",
                id(),
                "workflow_version",
                None,
                Some(&format!("{}@{}", run.workflow_id, run.workflow_version)),
                "the run pins a workflow definition that does not exist",
            ));
        };
        let genesis = receipts::genesis_object(&run, &definition_hash);
        let actual = self.hash(&genesis, "runs", id, "genesis_hash")?;
        Self::expect_eq(
            "runs",
            id,
            "genesis_hash",
            &actual,
            &run.genesis_hash,
            || "the run's fields no longer hash to its genesis_hash".into(),
        )?;
        self.require_evidence("runs", id, "genesis_hash", &run.genesis_hash)?;

        let mut links = std::mem::take(&mut self.links);
        store::audit_links_of_run(db, run_id, &mut links)?;
        let created = last_link(&links, &["run.created"], &format!("run:{run_id}"));
        Self::expect_eq(
            "runs",
            id,
            "genesis_hash",
            &run.genesis_hash,
            created.map_or("", |l| l.payload_hash.as_str()),
            || "the run.created entry of the run does not carry its genesis".into(),
        )?;

        let mut decisions = Vec::new();
        store::for_each_decision_of_run(db, run_id, |d| {
            self.decision(&links, &d)?;
            decisions.push(d);
            Ok::<(), Stop>(())
        })?;
        let mut tip = run.genesis_hash.clone();
        let mut step_receipts = Vec::new();
        store::for_each_step_of_run(db, run_id, |step| {
            self.step(&links, &decisions, step, &mut tip, &mut step_receipts)
        })?;
        let mut gate_receipts = Vec::new();
        store::for_each_gate_of_run(db, run_id, |gate| {
            self.gate(&links, gate, &mut gate_receipts)
        })?;

        match (&run.receipt_hash, run.status.has_ended()) {
            (Some(receipt), true) => {
                let object =
                    receipts::workflow_receipt_object(&run, &step_receipts, &gate_receipts);
                let actual = self.hash(&object, "runs", id, "receipt_hash")?;
                Self::expect_eq("runs", id, "receipt_hash", &actual, receipt, || {
                    "the workflow receipt does not match the run, its step receipts and gate receipts".into()
                })?;
                self.require_evidence("runs", id, "receipt_hash", receipt)?;
                let ending = ["run.completed", "run.failed", "run.cancelled"];
                let ended = last_link(&links, &ending, &format!("run:{run_id}"));
                Self::expect_eq(
                    "runs",
                    id,
                    "receipt_hash",
                    receipt,
                    ended.map_or("", |l| l.payload_hash.as_str()),
                    || {
                        match ended {
                        Some(l) => format!("the entry that ended the run (seq {}) carries another receipt", l.seq),
                        None => "no run.completed, run.failed or run.cancelled entry carries the receipt".into(),
                    }
                    },
                )?;
                self.counts.workflow_receipts += 1;
            }
            (None, true) => {
                return Err(broken(
                    "runs",
                    id(),
                    "receipt_hash",
                    None,
                    None,
                    "the run has ended but has no workflow receipt",
                ));
            }
            (Some(receipt), false) => {
                return Err(broken(
                    "runs",
                    id(),
                    "receipt_hash",
                    None,
                    Some(receipt),
                    "a run that has not ended has a workflow receipt",
                ));
            }
            (None, false) => {}
        }
        self.links = links;
        Ok(())
    }

    /// One attempt, in creation order: its decision, its output, and its place in the chain.
    fn step(
        &mut self,
        links: &[AuditLink],
        decisions: &[Decision],
        step: StepAttempt,
        tip: &mut String,
        step_receipts: &mut Vec<String>,
    ) -> Result<(), Stop> {
        let id = || format!("{}/{}#{}", step.run_id, step.step_id, step.attempt);
        let subject = format!("step:{}#{}", step.step_id, step.attempt);
        self.counts.steps += 1;
        self.require_evidence("steps", id, "input_hash", &step.input_hash)?;

        let Some(decision) = decisions.iter().find(|d| d.decision_id == step.decision_id) else {
            return Err(broken(
                "steps",
                id(),
                "decision_id",
                None,
                Some(&step.decision_id),
                "the attempt names no decision of its run",
            ));
        };
        if (&decision.run_id, &decision.step_id, decision.attempt)
            != (&step.run_id, &step.step_id, step.attempt)
        {
            return Err(broken(
                "steps",
                id(),
                "decision_id",
                None,
                Some(&step.decision_id),
                "the attempt names the decision of another attempt",
            ));
        }
        Self::expect_eq(
            "steps",
            id,
            "decision_hash",
            &decision.decision_hash,
            &step.decision_hash,
            || "the attempt's decision_hash is not its decision's".into(),
        )?;
        Self::expect_eq(
            "steps",
            id,
            "input_hash",
            &decision.input_hash,
            &step.input_hash,
            || "the attempt's input_hash is not the one its decision was made on".into(),
        )?;
        if step.status.is_open() {
            if let Some(found) = step.output_hash.as_deref().or(step.receipt_hash.as_deref()) {
                return Err(broken(
                    "steps",
                    id(),
                    "receipt_hash",
                    None,
                    Some(found),
                    "an open attempt has an output or a receipt",
                ));
            }
            return Ok(());
        }
        let (Some(output_hash), Some(receipt)) = (&step.output_hash, &step.receipt_hash) else {
            return Err(broken(
                "steps",
                id(),
                "receipt_hash",
                None,
                None,
                "a finished attempt has no output_hash or no receipt",
            ));
        };
        self.require_evidence("steps", id, "output_hash", output_hash)?;
        let expected_output = match step.status {
            StepStatus::Failed => {
                Some(self.hash(&json!({"error": step.error}), "steps", id, "output_hash")?)
            }
            StepStatus::Denied | StepStatus::Rejected => Some(NULL_HASH.to_string()),
            _ => None, // COMPLETED: H(output), and the output is only known through its blob.
        };
        if let Some(expected) = expected_output {
            Self::expect_eq("steps", id, "output_hash", &expected, output_hash, || {
                format!(
                    "the output_hash of a {} attempt must be {}",
                    step.status,
                    match step.status {
                        StepStatus::Failed => "H({\"error\": error})",
                        _ => "H(null)",
                    }
                )
            })?;
        }
        Self::expect_eq(
            "steps",
            id,
            "prev_receipt_hash",
            tip,
            &step.prev_receipt_hash,
            || {
                "the attempt does not chain to the run's previous finished attempt (or its genesis)"
                    .into()
            },
        )?;
        let actual = self.hash(
            &receipts::step_receipt_object(&step),
            "steps",
            id,
            "receipt_hash",
        )?;
        Self::expect_eq("steps", id, "receipt_hash", &actual, receipt, || {
            "the attempt's fields no longer hash to its receipt_hash".into()
        })?;
        self.require_evidence("steps", id, "receipt_hash", receipt)?;
        let action = match step.status {
            StepStatus::Completed => "step.completed",
            StepStatus::Failed => "step.failed",
            StepStatus::Denied => "step.denied",
            _ => "step.rejected",
        };
        let finished = last_link(links, &[action], &subject);
        Self::expect_eq(
            "steps",
            id,
            "receipt_hash",
            receipt,
            finished.map_or("", |l| l.payload_hash.as_str()),
            || format!("the {action} entry for {subject} does not carry this receipt"),
        )?;
        tip.clone_from(receipt);
        step_receipts.push(receipt.clone());
        Ok(())
    }

    /// One gate: a resolved gate's receipt, tied to the entry that resolved it.
    fn gate(
        &mut self,
        links: &[AuditLink],
        gate: Gate,
        gate_receipts: &mut Vec<String>,
    ) -> Result<(), Stop> {
        let id = || gate.gate_id.clone();
        self.counts.gates += 1;
        let action = match gate.status {
            GateStatus::Pending => {
                if let Some(found) = &gate.receipt_hash {
                    return Err(broken(
                        "gates",
                        id(),
                        "receipt_hash",
                        None,
                        Some(found),
                        "a PENDING gate has a receipt",
                    ));
                }
                return Ok(());
            }
            GateStatus::Approved | GateStatus::Rejected => "gate.resolved",
            GateStatus::Expired => "gate.expired",
            GateStatus::Cancelled => "gate.cancelled",
        };
        let Some(receipt) = &gate.receipt_hash else {
            return Err(broken(
                "gates",
                id(),
                "receipt_hash",
                None,
                None,
                "a gate that left PENDING has no receipt",
            ));
        };
        let actual = self.hash(
            &receipts::gate_receipt_object(&gate),
            "gates",
            id,
            "receipt_hash",
        )?;
        Self::expect_eq("gates", id, "receipt_hash", &actual, receipt, || {
            "the gate's fields no longer hash to its receipt_hash".into()
        })?;
        self.require_evidence("gates", id, "receipt_hash", receipt)?;
        let subject = format!("gate:{}", gate.gate_id);
        let resolved = last_link(links, &[action], &subject);
        Self::expect_eq(
            "gates",
            id,
            "receipt_hash",
            receipt,
            resolved.map_or("", |l| l.payload_hash.as_str()),
            || format!("the {action} entry for {subject} does not carry this receipt"),
        )?;
        gate_receipts.push(receipt.clone());
        Ok(())
    }

    /// Rows of one run's tables that name a missing run, and decisions no attempt names.
    fn orphans(&mut self) -> Result<(), Stop> {
        match store::first_orphan(self.db)? {
            None => Ok(()),
            Some(orphan) => {
                let message = match orphan.field {
                    "decision_id" => "no step attempt names this decision".to_string(),
                    field => format!(
                        "the row names {field} {}, which does not exist",
                        orphan.missing
                    ),
                };
                Err(broken(
                    orphan.table,
                    orphan.key,
                    orphan.field,
                    None,
                    Some(&orphan.missing),
                    message,
                ))
            }
        }
    }

    /// The immutability triggers of contract §6, each exactly as the schema declares it.
    fn triggers(&mut self) -> Result<(), Stop> {
        for trigger in store::schema_triggers() {
            match store::trigger_sql(self.db, &trigger.name)? {
                None => {
                    return Err(broken(
                        "sqlite_master",
                        trigger.name.as_str(),
                        "trigger",
                        Some(&trigger.sql),
                        None,
                        format!("the immutability trigger {} is missing", trigger.name),
                    ))
                }
                Some(sql) if sql != trigger.sql => {
                    return Err(broken(
                        "sqlite_master",
                        trigger.name.as_str(),
                        "trigger",
                        Some(&trigger.sql),
                        Some(&sql),
                        format!(
                            "the trigger {} was replaced by another definition",
                            trigger.name
                        ),
                    ))
                }
                Some(_) => self.counts.triggers += 1,
            }
        }
        Ok(())
    }

    /// Every decision again, this time re-made: the policy version it names, evaluated on the
    /// context its `step.requested` entry recorded, must give the same effect, reason and rules.
    fn replay(&mut self) -> Result<(), Stop> {
        let db = self.db;
        let mut policies: HashMap<(String, i64), (Policy, Vec<policy::Rule>)> = HashMap::new();
        let mut replayed = 0;
        store::for_each_decision(db, |d| {
            self.replay_decision(&d, &mut policies)?;
            replayed += 1;
            Ok::<(), Stop>(())
        })?;
        self.counts.replayed_decisions = Some(replayed);
        Ok(())
    }

    fn replay_decision(
        &mut self,
        d: &Decision,
        policies: &mut HashMap<(String, i64), (Policy, Vec<policy::Rule>)>,
    ) -> Result<(), Stop> {
        let db = self.db;
        let id = || d.decision_id.clone();
        let subject = format!("step:{}#{}", d.step_id, d.attempt);
        let Some(requested) = store::last_audit_entry(db, &d.run_id, "step.requested", &subject)?
        else {
            return Err(broken("decisions", id(), "context", None, None, format!("no step.requested entry for {subject} holds the context the decision was made on")));
        };
        let context_hash = requested
            .evidence_pack_ref
            .as_deref()
            .and_then(|r| r.strip_prefix("sha256:"));
        let body = match context_hash {
            Some(hash) => store::get_evidence(db, hash)?,
            None => None,
        };
        let Some(body) = body else {
            return Err(broken(
                "decisions",
                id(),
                "context",
                context_hash,
                None,
                format!(
                    "the step.requested entry (seq {}) carries no stored context",
                    requested.seq
                ),
            ));
        };
        let context: Value = serde_json::from_slice(&body).map_err(|e| {
            broken(
                "decisions",
                id(),
                "context",
                context_hash,
                None,
                format!("the recorded context is not JSON: {e}"),
            )
        })?;
        let input = context.get("input").unwrap_or(&Value::Null);
        let input_hash = self.hash(input, "decisions", id, "input_hash")?;
        Self::expect_eq(
            "decisions",
            id,
            "input_hash",
            &input_hash,
            &d.input_hash,
            || {
                format!(
                    "the context recorded at seq {} holds another step input",
                    requested.seq
                )
            },
        )?;

        let key = (d.policy_id.clone(), d.policy_version);
        if !policies.contains_key(&key) {
            let Some(stored) = store::get_policy(db, &d.policy_id, Some(d.policy_version))? else {
                return Err(broken(
                    "decisions",
                    id(),
                    "policy_version",
                    None,
                    Some(&format!("{}@{}", d.policy_id, d.policy_version)),
                    "the decision names a policy version that does not exist",
                ));
            };
            let rules = policy::parse_rules(&stored.rules).map_err(|e| {
                broken(
                    "policies",
                    format!("{}@{}", stored.policy_id, stored.version),
                    "rules",
                    None,
                    None,
                    format!("the stored rules no longer parse: {e}"),
                )
            })?;
            policies.insert(key.clone(), (stored, rules));
        }
        let (stored, rules) = &policies[&key];
        Self::expect_eq(
            "decisions",
            id,
            "policy_hash",
            &stored.policy_hash,
            &d.policy_hash,
            || {
                format!(
                    "policy {}@{} has another policy_hash",
                    stored.policy_id, stored.version
                )
            },
        )?;
        Self::expect_eq("decisions", id, "tier", &stored.tier, &d.tier, || {
            format!(
                "policy {}@{} has another tier",
                stored.policy_id, stored.version
            )
        })?;

        let again = policy::evaluate(rules, stored.default_effect, &context);
        let replayed = || {
            format!(
                "re-evaluating policy {}@{} on the context recorded at seq {} gives {} ({:?}, rules {:?})",
                stored.policy_id,
                stored.version,
                requested.seq,
                again.effect.as_str(),
                again.reason,
                again.rules_triggered
            )
        };
        Self::expect_eq(
            "decisions",
            id,
            "effect",
            again.effect.as_str(),
            d.effect.as_str(),
            replayed,
        )?;
        Self::expect_eq(
            "decisions",
            id,
            "reason",
            &again.reason,
            &d.reason,
            replayed,
        )?;
        let rules_expected = json!(again.rules_triggered).to_string();
        let rules_found = json!(d.rules_triggered).to_string();
        Self::expect_eq(
            "decisions",
            id,
            "rules_triggered",
            &rules_expected,
            &rules_found,
            replayed,
        )?;
        Ok(())
    }
}

/// The last link of a run with one of `actions` on `subject`.
fn last_link<'l>(links: &'l [AuditLink], actions: &[&str], subject: &str) -> Option<&'l AuditLink> {
    links
        .iter()
        .rev()
        .find(|l| l.subject == subject && actions.contains(&l.action.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_written_and_read_as_seq_colon_hash() {
        let hash = "ab".repeat(32);
        let head = Head::parse(&format!("17:{hash}")).unwrap();
        assert_eq!(
            head,
            Head {
                seq: 17,
                entry_hash: hash.clone()
            }
        );
        assert_eq!(Head::parse(&head.to_string()), Some(head));
        assert_eq!(
            Head::parse(&format!("17:{}", hash.to_uppercase())).map(|h| h.seq),
            Some(17)
        );
        assert_eq!(Head::parse(&format!("0:{ZERO_HASH}")), Some(Head::empty()));
    }

    #[test]
    fn a_malformed_head_is_refused() {
        let hash = "ab".repeat(32);
        for text in [
            String::new(),
            "17".to_string(),
            format!("-1:{hash}"),
            format!("+1:{hash}"),
            format!("x:{hash}"),
            format!("0:{hash}"),
            "17:abc".to_string(),
            format!("17:{hash}00"),
        ] {
            assert_eq!(Head::parse(&text), None, "{text:?}");
        }
    }

    #[test]
    fn the_json_report_names_the_failure() {
        let report = Report {
            counts: Counts::default(),
            head: Head::empty(),
            failure: Some(Broken {
                table: "audit_log",
                id: "3".into(),
                field: "entry_hash",
                expected: Some("a".into()),
                found: Some("b".into()),
                message: "changed".into(),
            }),
        };
        let value = report.to_json();
        assert_eq!(value["ok"], false);
        assert_eq!(value["head"]["seq"], 0);
        assert_eq!(value["failure"]["table"], "audit_log");
        assert_eq!(value["failure"]["id"], "3");
        assert_eq!(value["counts"]["replayed_decisions"], Value::Null);
        assert!(report
            .to_string()
            .contains("BROKEN: audit_log 3 entry_hash: changed"));
    }
}
