//! `fedcore verify`: recomputes, from the database alone, every hash fedcore wrote (contract §7)
//! and names the first object that does not match. The objects hashed are the ones `receipts`
//! builds for the writer, so writer and verifier cannot disagree on what a receipt covers. Each
//! pass streams a table row by row, in slices that several threads read and check at once
//! (`pipeline`); the checks are pure functions of a row and of what is known of the others
//! (`Known`). A broken database is a `Report` with a failure, never an error: `Err` means the
//! file could not be read at all.

mod digests;
mod lifecycle;
mod pipeline;

use super::signing::{self, PublicKey};
use super::{jcs, policy, receipts};
use crate::model::*;
use crate::store::{self, AuditLink, Db, StoreError};
use digests::{Digest, DigestSet, EvidenceIndex};
use pipeline::Pass;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// What to check beyond the file's own consistency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// A head written down earlier that the log must still contain, unchanged.
    pub expect_head: Option<Head>,
    /// Also re-evaluate every decision on its recorded context with the policy version it names.
    pub replay: bool,
    /// The server's public key, known from elsewhere: the database must record it, and every
    /// signature must verify under it. Without it, signatures are checked against the key the
    /// database records, which shows internal consistency only.
    pub pubkey: Option<PublicKey>,
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
    pub signatures: u64,
    pub checkpoints: u64,
    pub tokens: u64,
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
    /// The verifier key the signatures were checked under, if the database records one.
    pub signing_key: Option<String>,
    /// Whether that key was given (`--pubkey`) rather than read from the database.
    pub pubkey_given: bool,
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
            "signing_key": self.signing_key,
            "pubkey_given": self.pubkey_given,
            "failure": self.failure,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let rows: [(&str, Option<u64>); 14] = [
            ("evidence blobs", Some(c.evidence)),
            ("audit entries", Some(c.audit_entries)),
            ("policy versions", Some(c.policies)),
            ("definition versions", Some(c.definitions)),
            ("decisions", Some(c.decisions)),
            ("runs", Some(c.runs)),
            ("step attempts", Some(c.steps)),
            ("gates", Some(c.gates)),
            ("workflow receipts", Some(c.workflow_receipts)),
            ("signatures", Some(c.signatures)),
            ("checkpoints", Some(c.checkpoints)),
            ("tokens", Some(c.tokens)),
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
                match (&self.signing_key, self.pubkey_given) {
                    (Some(key), true) => writeln!(f, "signatures verified under --pubkey {key}")?,
                    (Some(key), false) => writeln!(
                        f,
                        "signatures checked against the key the database records, {key}: this \
                         proves internal consistency only; pass --pubkey KEY to prove they are \
                         the server's"
                    )?,
                    (None, _) => writeln!(f, "no signing key recorded: nothing is signed")?,
                }
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

/// `fedcore verify` end to end: opens the file at `path` read-only (`Missing` when there is none,
/// and nothing is created) and checks it in one read snapshot.
pub fn verify_file(path: &std::path::Path, options: &Options) -> Result<Report, StoreError> {
    store::open_read_only(path).and_then(|reader| reader.snapshot(|r| verify(r, options))?)
}

/// Checks the database `db` reads (run it inside one read snapshot) and reports the first broken
/// object. `Err` only when reading failed: the database could not be checked.
///
/// Order: evidence blobs, the audit chain (and `expect_head`), policy and definition versions,
/// then each run with its decisions, attempts, gates and workflow receipt, rows that belong to
/// nothing, the triggers, and last the replay. Everything else leans on the blobs and the chain,
/// so they come first; a missing trigger is named only when the data itself is intact.
pub fn verify(db: &impl Db, options: &Options) -> Result<Report, StoreError> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
    verify_on(db, options, workers)
}

/// `verify` on `workers` threads: this one and a sibling connection for each other thread when
/// the file has them, else this one reading for `workers` checking threads.
fn verify_on(db: &impl Db, options: &Options, workers: usize) -> Result<Report, StoreError> {
    let head = store::audit_head(db)?
        .map_or_else(Head::empty, |(seq, entry_hash)| Head { seq, entry_hash });
    let mut siblings = Vec::new();
    while siblings.len() + 1 < workers {
        match db.sibling()? {
            Some(sibling) => siblings.push(sibling),
            None => break,
        }
    }
    let mut checker = Checker {
        db,
        siblings,
        options,
        head: &head,
        workers,
        counts: Counts::default(),
        known: Known::default(),
        buf: Vec::with_capacity(4096),
        signing_key: None,
    };
    let failure = match checker.check_all() {
        Ok(()) => None,
        Err(Stop::Broken(broken)) => Some(*broken),
        Err(Stop::Unreadable(e)) => return Err(e),
        // `pipeline` turns a halt into the failure that caused it; never report one as intact.
        Err(Stop::Halted) => {
            return Err(StoreError::Corrupt(
                "verify halted without a failure".into(),
            ))
        }
    };
    let signing_key = checker.signing_key.map(|k| k.to_string());
    Ok(Report {
        counts: checker.counts,
        head,
        signing_key,
        pubkey_given: options.pubkey.is_some(),
        failure,
    })
}

/// The audit actions that record a catalog change.
const CATALOG_ACTIONS: [&str; 3] = ["policy.put", "definition.put", "agent.put"];

/// The audit actions that record a token's creation and revocation.
const TOKEN_ACTIONS: [&str; 2] = ["token.created", "token.revoked"];

/// The audit actions that end a run and carry its workflow receipt.
const RUN_ENDS: [&str; 3] = ["run.completed", "run.failed", "run.cancelled"];

/// At most this many threads read and check.
const MAX_WORKERS: usize = 8;

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.evidence += other.evidence;
        self.audit_entries += other.audit_entries;
        self.policies += other.policies;
        self.definitions += other.definitions;
        self.decisions += other.decisions;
        self.runs += other.runs;
        self.steps += other.steps;
        self.gates += other.gates;
        self.workflow_receipts += other.workflow_receipts;
        self.signatures += other.signatures;
        self.checkpoints += other.checkpoints;
        self.tokens += other.tokens;
        self.triggers += other.triggers;
        if let Some(n) = other.replayed_decisions {
            *self.replayed_decisions.get_or_insert(0) += n;
        }
    }
}

/// Why checking stopped early.
enum Stop {
    Broken(Box<Broken>),
    Unreadable(StoreError),
    /// Reading stopped because a worker found a failure; `pipeline` resolves it to that failure.
    Halted,
}

impl From<Box<Broken>> for Stop {
    fn from(broken: Box<Broken>) -> Stop {
        Stop::Broken(broken)
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        match e {
            StoreError::BadRow { table, key, why } => Stop::Broken(Box::new(Broken {
                table,
                id: key,
                field: "row",
                expected: None,
                found: None,
                message: format!("the row cannot be read as what fedcore writes: {why}"),
            })),
            other => Stop::Unreadable(other),
        }
    }
}

/// The outcome of one check: nothing, or the object found broken.
type Checked<T = ()> = Result<T, Box<Broken>>;

/// The row a check is about. Its name is written out only when something is found broken.
#[derive(Clone, Copy)]
enum Row<'a> {
    /// A hash, an id, or a trigger name.
    Key(&'a str),
    Seq(i64),
    /// `id@version` of a policy or definition version.
    Version(&'a str, i64),
    /// `run_id/step_id#attempt`.
    Attempt(&'a StepAttempt),
}

impl Row<'_> {
    fn name(self) -> String {
        match self {
            Row::Key(key) => key.to_string(),
            Row::Seq(seq) => seq.to_string(),
            Row::Version(id, version) => format!("{id}@{version}"),
            Row::Attempt(s) => format!("{}/{}#{}", s.run_id, s.step_id, s.attempt),
        }
    }
}

/// Where a check is: a table and a row.
#[derive(Clone, Copy)]
struct At<'a> {
    table: &'static str,
    row: Row<'a>,
}

impl At<'_> {
    fn broken(
        self,
        field: &'static str,
        expected: Option<&str>,
        found: Option<&str>,
        message: impl Into<String>,
    ) -> Box<Broken> {
        Box::new(Broken {
            table: self.table,
            id: self.row.name(),
            field,
            expected: expected.map(str::to_string),
            found: found.map(str::to_string),
            message: message.into(),
        })
    }

    /// The stored value `found` must equal the one recomputed from the file, `expected`.
    fn same(
        self,
        field: &'static str,
        expected: &str,
        found: &str,
        why: impl FnOnce() -> String,
    ) -> Checked {
        if expected == found {
            Ok(())
        } else {
            Err(self.broken(field, Some(expected), Some(found), why()))
        }
    }

    /// `hash` must name a stored evidence blob.
    fn stored(self, known: &Known, field: &'static str, hash: &str) -> Checked {
        if known.evidence.contains(hash) {
            Ok(())
        } else {
            let why = format!("{field} names no evidence blob");
            Err(self.broken(field, Some(hash), None, why))
        }
    }

    /// `H(value)`, canonicalized into the reused buffer `buf`. A value with no canonical form (a
    /// number beyond the double range, read from a row) breaks the object it belongs to.
    fn hash(self, buf: &mut Vec<u8>, field: &'static str, value: &Value) -> Checked<String> {
        buf.clear();
        match jcs::write_canonical(value, buf) {
            Ok(()) => Ok(jcs::hash_bytes(buf)),
            Err(e) => Err(self.broken(field, None, None, e.to_string())),
        }
    }

    /// The hash of the canonical bytes `write` appends (a `receipts::write_*`), recomputed, must
    /// be the `stored` one; `same` with `expected` the recomputed hash, compared as bytes.
    fn rehash(
        self,
        buf: &mut Vec<u8>,
        field: &'static str,
        stored: &str,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), jcs::JcsError>,
        why: impl FnOnce() -> String,
    ) -> Checked {
        buf.clear();
        write(buf).map_err(|e| self.broken(field, None, None, e.to_string()))?;
        let digest = jcs::digest(buf);
        if jcs::is_hex_of(stored, &digest) {
            return Ok(());
        }
        let actual = hex::encode(digest);
        Err(self.broken(field, Some(&actual), Some(stored), why()))
    }

    /// The last audit entry of the run with one of `actions` on `subject` must carry `hash` as
    /// its evidence: that is what ties a receipt to the chain.
    fn carried(
        self,
        links: &[AuditLink],
        actions: &[&str],
        subject: &str,
        field: &'static str,
        hash: &str,
    ) -> Checked {
        let link = links
            .iter()
            .rev()
            .find(|l| l.subject == subject && actions.contains(&l.action.as_str()));
        match link {
            Some(l) if l.payload_hash == hash => Ok(()),
            Some(l) => Err(self.broken(
                field,
                Some(hash),
                Some(&l.payload_hash),
                format!(
                    "the {} entry for {subject} (seq {}) carries another {field}",
                    l.action, l.seq
                ),
            )),
            None => Err(self.broken(
                field,
                Some(hash),
                None,
                format!(
                    "no {} entry for {subject} carries the {field}",
                    actions.join(" or ")
                ),
            )),
        }
    }
}

/// What the checks of one object need to know of the others: every evidence blob, and the hash
/// of every policy and definition version. Filled by the serial passes, then only read.
#[derive(Default)]
struct Known {
    evidence: EvidenceIndex,
    /// `(policy_id, version) → policy_hash`.
    policy_hashes: HashMap<(String, i64), String>,
    /// `(workflow_id, version) → definition_hash`.
    definition_hashes: HashMap<(String, i64), String>,
    /// `(workflow_id, version) →` its steps in definition order.
    definition_steps: HashMap<(String, i64), Vec<StepDef>>,
    /// The `policy.put`, `definition.put` and `agent.put` entries: `subject → [(seq,
    /// payload_hash)]` in `seq` order, gathered while the chain is read.
    catalog_entries: HashMap<String, Vec<(i64, String)>>,
    /// The entries that end a run, and so carry a workflow receipt that must be signed:
    /// `(seq, payload_hash)` in `seq` order, gathered while the chain is read.
    receipt_entries: Vec<(i64, String)>,
    /// The `token.created` and `token.revoked` entries in `seq` order, gathered while the chain
    /// is read.
    token_entries: Vec<TokenEntry>,
    /// How many entries name a run (`run_id` not null), counted while the chain is read.
    audit_entries_of_runs: u64,
    /// How many rows the runs pass read as belonging to the runs.
    run_rows: store::RunRowCounts,
}

/// A token's creation or revocation as the log records it.
struct TokenEntry {
    seq: i64,
    action: String,
    actor: String,
    at: Timestamp,
    payload_hash: String,
}

struct Checker<'a, D: Db> {
    db: &'a D,
    /// More connections to the file, one per thread besides this one's, when it has them.
    siblings: Vec<store::Reader>,
    options: &'a Options,
    head: &'a Head,
    /// Threads that check what this one reads, when there are no siblings.
    workers: usize,
    counts: Counts,
    known: Known,
    /// The JCS bytes of what this thread hashes, reused from object to object.
    buf: Vec<u8>,
    /// The key the signatures are checked under, once known.
    signing_key: Option<PublicKey>,
}

impl<D: Db> Checker<'_, D> {
    fn check_all(&mut self) -> Result<(), Stop> {
        self.evidence()?;
        self.audit_chain()?;
        self.catalog()?;
        self.catalog_entries()?;
        self.tokens()?;
        self.runs()?;
        self.orphans()?;
        self.signatures()?;
        self.triggers()?;
        if self.options.replay {
            self.replay()?;
        }
        Ok(())
    }

    /// Every blob: its body hashes to its key, and is the canonical JCS form of its value.
    fn evidence(&mut self) -> Result<(), Stop> {
        let pass = EvidencePass {
            slices: store::TextSlice::by_hex_digit(),
        };
        let shards = pipeline::run_pass(
            self.db,
            &mut self.siblings,
            self.workers,
            &mut self.counts,
            &pass,
        )?;
        self.known.evidence = EvidenceIndex::from_slices(shards);
        Ok(())
    }

    /// How many slices a pass over a table is cut into: several per thread, so that a thread
    /// that finishes early takes another.
    fn slice_count(&self) -> usize {
        8 * (self.siblings.len() + 1)
    }

    /// The one chain: `seq` 1, 2, 3, … without gaps; each `entry_hash` recomputed; each
    /// `prev_hash` the previous `entry_hash`; each payload the blob its reference names; and the
    /// head written down, if one was given, still in it.
    fn audit_chain(&mut self) -> Result<(), Stop> {
        let expect_head = self.options.expect_head.as_ref();
        let pass = AuditPass {
            slices: store::audit_slices(self.db, self.slice_count())?,
            known: &self.known,
            expect_head,
        };
        let gathered = pipeline::run_pass(
            self.db,
            &mut self.siblings,
            self.workers,
            &mut self.counts,
            &pass,
        )?;
        let mut head_seen = false;
        for slice in gathered {
            head_seen |= slice.head_seen;
            for (key, mut entries) in slice.catalog_entries {
                let all = self.known.catalog_entries.entry(key).or_default();
                all.append(&mut entries);
            }
            let mut receipt_entries = slice.receipt_entries;
            self.known.receipt_entries.append(&mut receipt_entries);
            let mut token_entries = slice.token_entries;
            self.known.token_entries.append(&mut token_entries);
            self.known.audit_entries_of_runs += slice.of_runs;
        }
        match expect_head {
            Some(head) if !head_seen && head.seq > 0 => {
                let at = At {
                    table: "audit_log",
                    row: Row::Seq(head.seq),
                };
                let why = format!(
                    "the log no longer holds the head written down: it ends at seq {}, so it was cut",
                    self.head.seq
                );
                let (expected, found) = (head.to_string(), self.head.to_string());
                Err(at.broken("seq", Some(&expected), Some(&found), why).into())
            }
            _ => Ok(()),
        }
    }

    /// Policy and definition versions hash to their stored hashes.
    fn catalog(&mut self) -> Result<(), Stop> {
        let db = self.db;
        store::for_each_policy(db, |p| {
            let at = At {
                table: "policies",
                row: Row::Version(&p.policy_id, p.version),
            };
            let document = receipts::policy_document(&p);
            let actual = at.hash(&mut self.buf, "policy_hash", &document)?;
            at.same("policy_hash", &actual, &p.policy_hash, || {
                "the stored policy no longer hashes to its policy_hash".into()
            })?;
            at.stored(&self.known, "policy_hash", &p.policy_hash)?;
            self.counts.policies += 1;
            let key = (p.policy_id, p.version);
            self.known.policy_hashes.insert(key, p.policy_hash);
            Ok::<(), Stop>(())
        })?;
        store::for_each_definition(db, |d| {
            let at = At {
                table: "workflows",
                row: Row::Version(&d.workflow_id, d.version),
            };
            let document = receipts::definition_document(&d);
            let actual = at.hash(&mut self.buf, "definition_hash", &document)?;
            at.same("definition_hash", &actual, &d.definition_hash, || {
                "the stored definition no longer hashes to its definition_hash".into()
            })?;
            at.stored(&self.known, "definition_hash", &d.definition_hash)?;
            self.counts.definitions += 1;
            let key = (d.workflow_id, d.version);
            self.known.definition_steps.insert(key.clone(), d.steps);
            self.known.definition_hashes.insert(key, d.definition_hash);
            Ok::<(), Stop>(())
        })
    }

    /// The catalog is tied to the log as runs are: each policy and definition version has exactly
    /// one `policy.put` / `definition.put` entry carrying its hash, each agent row is what its
    /// latest `agent.put` entry carries, and no such entry names a version or agent that is not
    /// there.
    fn catalog_entries(&mut self) -> Result<(), Stop> {
        let db = self.db;
        let mut named: HashSet<String> = HashSet::new();
        let versions = self
            .known
            .policy_hashes
            .iter()
            .map(|(key, hash)| ("policies", "policy.put", "policy", key, hash))
            .chain(
                self.known
                    .definition_hashes
                    .iter()
                    .map(|(key, hash)| ("workflows", "definition.put", "workflow", key, hash)),
            );
        let mut versions: Vec<_> = versions.collect();
        versions.sort();
        for (table, action, prefix, (id, version), hash) in versions {
            let at = At {
                table,
                row: Row::Version(id, *version),
            };
            let key = format!("{action}\n{prefix}:{id}@{version}");
            let entries = self
                .known
                .catalog_entries
                .get(&key)
                .map_or(&[][..], Vec::as_slice);
            match entries {
                [(_, carried)] => at.same("audit", hash, carried, || {
                    format!("its {action} entry carries another hash")
                })?,
                _ => {
                    let why = format!(
                        "{} {action} entries for {prefix}:{id}@{version}: each version has one",
                        entries.len()
                    );
                    let found = entries.len().to_string();
                    return Err(at.broken("audit", Some("1"), Some(&found), why).into());
                }
            }
            named.insert(key);
        }
        for agent in store::list_agents(db)? {
            let at = At {
                table: "agents",
                row: Row::Key(&agent.agent_id),
            };
            let key = format!("agent.put\nagent:{}", agent.agent_id);
            let value = serde_json::to_value(&agent).unwrap_or(Value::Null);
            let actual = at.hash(&mut self.buf, "row", &value)?;
            let Some((_, carried)) = self.known.catalog_entries.get(&key).and_then(|e| e.last())
            else {
                let why = "no agent.put entry registered this agent";
                return Err(at.broken("audit", Some(&actual), None, why).into());
            };
            at.same("row", carried, &actual, || {
                "the agent row is not what its latest agent.put entry carries".into()
            })?;
            named.insert(key);
        }
        let mut stray: Vec<(i64, &str)> = self
            .known
            .catalog_entries
            .iter()
            .filter(|(key, _)| !named.contains(*key))
            .filter_map(|(key, entries)| Some((entries.first()?.0, key.as_str())))
            .collect();
        stray.sort();
        if let Some((seq, key)) = stray.first() {
            let at = At {
                table: "audit_log",
                row: Row::Seq(*seq),
            };
            let subject = key.split_once('\n').map_or(*key, |(_, s)| s);
            let why = format!("the entry names {subject}, which the catalog does not hold");
            return Err(at.broken("subject", None, Some(subject), why).into());
        }
        Ok(())
    }

    /// Tokens are tied to the log as the catalog is: each row is what its `token.created` entry
    /// carries (`token_id`, `name`, `role`, `created_at`), made by that entry's actor at its
    /// time, and once revoked what its `token.revoked` entry carries, revoked by that entry's
    /// actor at its time; and every such entry is one row's. So a token added, deleted,
    /// promoted to another role, renamed or un-revoked is named. Only `token_hash` is in no
    /// entry (the evidence never names the secret or its hash).
    fn tokens(&mut self) -> Result<(), Stop> {
        // By action (created, revoked), then by the hash of what the entry carries.
        let mut unclaimed: [HashMap<&str, &TokenEntry>; 2] = Default::default();
        for entry in &self.known.token_entries {
            let action = usize::from(entry.action == TOKEN_ACTIONS[1]);
            if let Some(first) = unclaimed[action].insert(&entry.payload_hash, entry) {
                let at = At {
                    table: "audit_log",
                    row: Row::Seq(entry.seq),
                };
                let why = format!(
                    "a second {} entry for the token seq {} already names: each is written once",
                    entry.action, first.seq
                );
                return Err(at
                    .broken("payload_hash", None, Some(&entry.payload_hash), why)
                    .into());
            }
        }
        let buf = &mut self.buf;
        let counts = &mut self.counts;
        store::for_each_token(self.db, |token: Token| {
            let at = At {
                table: "tokens",
                row: Row::Key(&token.token_id),
            };
            let created = receipts::token_created_evidence(&token);
            let created = at.hash(buf, "row", &created)?;
            let Some(entry) = unclaimed[0].remove(created.as_str()) else {
                let why =
                    "no token.created entry carries this token as the row states it: the row \
                           was added, or its name, role or creation time changed";
                return Err(at.broken("audit", Some(&created), None, why).into());
            };
            // The row's actor and time columns are the entry's own.
            let made_by = |entry: &TokenEntry, fields: [&'static str; 2], by: &str, when| {
                let why = || {
                    format!(
                        "the row is not what its {} entry (seq {}) says",
                        entry.action, entry.seq
                    )
                };
                at.same(fields[0], &entry.actor, by, why)?;
                let when = Timestamp::to_string(when);
                at.same(fields[1], &entry.at.to_string(), &when, why)
            };
            let created = ["created_by", "created_at"];
            made_by(entry, created, &token.created_by, &token.created_at)?;
            match (&token.revoked_at, &token.revoked_by) {
                (None, None) => {}
                (Some(revoked_at), Some(revoked_by)) => {
                    let revoked = receipts::token_revoked_evidence(&token, *revoked_at);
                    let revoked = at.hash(buf, "row", &revoked)?;
                    let Some(entry) = unclaimed[1].remove(revoked.as_str()) else {
                        let why = "no token.revoked entry carries this revocation: the token \
                                   was revoked by an edit";
                        return Err(at.broken("audit", Some(&revoked), None, why).into());
                    };
                    let revoked = ["revoked_by", "revoked_at"];
                    made_by(entry, revoked, revoked_by, revoked_at)?;
                }
                (revoked_at, _) => {
                    let found = revoked_at.map(|t| t.to_string());
                    let why = "revoked_at and revoked_by are set together, by a revocation";
                    return Err(at.broken("revoked_at", None, found.as_deref(), why).into());
                }
            }
            counts.tokens += 1;
            Ok::<(), Stop>(())
        })?;
        let stray = unclaimed
            .iter()
            .flat_map(HashMap::values)
            .min_by_key(|entry| entry.seq);
        if let Some(entry) = stray {
            let at = At {
                table: "audit_log",
                row: Row::Seq(entry.seq),
            };
            let why =
                format!(
                "the {} entry carries a token the tokens table does not hold as it says: the row \
                 was removed or edited{}",
                entry.action,
                if entry.action == "token.revoked" { ", or its revocation undone" } else { "" }
            );
            return Err(at
                .broken("payload_hash", None, Some(&entry.payload_hash), why)
                .into());
        }
        Ok(())
    }

    /// Each run with everything of it, read here and checked by the workers.
    fn runs(&mut self) -> Result<(), Stop> {
        let pass = RunsPass {
            slices: store::run_slices(self.db, self.slice_count())?,
            known: &self.known,
        };
        let gathered = pipeline::run_pass(
            self.db,
            &mut self.siblings,
            self.workers,
            &mut self.counts,
            &pass,
        )?;
        for slice in gathered {
            self.known.run_rows.add(&slice);
        }
        Ok(())
    }

    /// Rows of a run's tables that name a missing run, and decisions no attempt names.
    fn orphans(&mut self) -> Result<(), Stop> {
        // The runs pass read every row naming each run. When the tables hold no more rows naming
        // a run (and no more decisions) than it read (and found named by an attempt of their
        // run), no row can name a missing run or be a decision nobody names, and the queries
        // that would find one, each a scan of its table, are not needed.
        let mut held = store::run_row_counts(self.db)?;
        // The chain pass read and counted every entry naming a run.
        held.audit_entries = self.known.audit_entries_of_runs;
        let accounted = held == self.known.run_rows;
        if accounted {
            return Ok(());
        }
        let Some(orphan) = store::first_orphan(self.db)? else {
            return Ok(());
        };
        let why = match orphan.field {
            "decision_id" => "no step attempt names this decision".to_string(),
            field => format!(
                "the row names {field} {}, which does not exist",
                orphan.missing
            ),
        };
        let at = At {
            table: orphan.table,
            row: Row::Key(&orphan.key),
        };
        Err(at
            .broken(orphan.field, None, Some(&orphan.missing), why)
            .into())
    }

    /// The signing key the database records (which `--pubkey`, when given, must be), every
    /// receipt signature and signed checkpoint under it, each checkpoint's seq and entry_hash in
    /// the log, and a signature on every workflow receipt since the key was recorded.
    fn signatures(&mut self) -> Result<(), Stop> {
        let db = self.db;
        let mut recorded = Vec::new();
        for row in store::signing_keys(db)? {
            let at = At {
                table: "signing_keys",
                row: Row::Key(&row.key_id),
            };
            let key = PublicKey::from_hex(&row.key_name, &row.public_key)
                .map_err(|e| at.broken("public_key", None, Some(&row.public_key), e.to_string()))?;
            at.same("key_id", &key.key_id_hex(), &row.key_id, || {
                "the key id is not the one of the key's name and public key".into()
            })?;
            if !key.verifies_key_record(row.first_seq, &row.signature) {
                let why = "the key's signature over its name and first_seq does not verify";
                return Err(at
                    .broken("signature", None, Some(&row.signature), why)
                    .into());
            }
            recorded.push((row, key));
        }
        if recorded.len() > 1 {
            let at = At {
                table: "signing_keys",
                row: Row::Key(&recorded[1].0.key_id),
            };
            let why = "a second signing key: fedcore records one key per database";
            return Err(at
                .broken("key_id", None, Some(&recorded[1].0.key_id), why)
                .into());
        }
        let Some((row, recorded_key)) = recorded.pop() else {
            return self.nothing_signed();
        };
        let at = At {
            table: "signing_keys",
            row: Row::Key(&row.key_id),
        };
        let key = match &self.options.pubkey {
            Some(given) if *given != recorded_key => {
                let why = "key mismatch: the database records another signing key than --pubkey";
                let (expected, found) = (given.to_string(), recorded_key.to_string());
                return Err(at
                    .broken("public_key", Some(&expected), Some(&found), why)
                    .into());
            }
            _ => recorded_key,
        };
        let key_id = key.key_id_hex();
        // Keeps the signed hashes, to find a receipt without a signature.
        let pass = SignaturePass {
            slices: store::TextSlice::by_hex_digit(),
            known: &self.known,
            key: &key,
            key_id: &key_id,
        };
        let gathered = pipeline::run_pass(
            self.db,
            &mut self.siblings,
            self.workers,
            &mut self.counts,
            &pass,
        )?;
        let signed: HashSet<String> = gathered.into_iter().flatten().collect();
        let pass = CheckpointPass {
            slices: store::checkpoint_slices(db, self.slice_count())?,
            key: &key,
            key_id: &key_id,
            origin: signing::origin(&key.name),
        };
        pipeline::run_pass(
            self.db,
            &mut self.siblings,
            self.workers,
            &mut self.counts,
            &pass,
        )?;
        self.signing_key = Some(key);
        // fedcore signs a checkpoint in the transaction of every run end, so the last run end
        // since the key was recorded has one at or after it. A log rewritten from some entry on
        // (renumbered, rechained) must drop every checkpoint after that entry, whose signed
        // hashes no longer match, and so loses this one; only the entries after the last
        // checkpoint remain as open as a cut tail (see `--expect-head`).
        let last_end = self
            .known
            .receipt_entries
            .iter()
            .rev()
            .map(|(seq, _)| *seq)
            .find(|seq| *seq >= row.first_seq);
        let last_checkpoint = store::last_checkpoint(db)?.map_or(0, |c| c.seq);
        if let Some(end) = last_end.filter(|end| last_checkpoint < *end) {
            let at = At {
                table: "audit_log",
                row: Row::Seq(end),
            };
            let why = format!(
                "this run end has no signed checkpoint at or after it (the last is at seq \
                 {last_checkpoint}): fedcore signs one with every run end, so checkpoints were \
                 removed, as a log rewritten from an earlier entry on must remove them"
            );
            let found = last_checkpoint.to_string();
            return Err(at
                .broken("checkpoint", Some(&end.to_string()), Some(&found), why)
                .into());
        }
        // And it signs one whenever `CHECKPOINT_INTERVAL` entries went by without one, so fewer
        // than that follow the last (or the key's record) in any file it committed: the stretch
        // a rewrite could still touch without the key is that short.
        let covered = last_checkpoint.max(row.first_seq - 1);
        if self.head.seq - covered >= super::CHECKPOINT_INTERVAL {
            let seq = covered + super::CHECKPOINT_INTERVAL;
            let at = At {
                table: "audit_log",
                row: Row::Seq(seq),
            };
            let why = format!(
                "{} entries follow seq {covered} without a signed checkpoint: fedcore signs one \
                 at least every {} entries, so checkpoints were removed",
                self.head.seq - covered,
                super::CHECKPOINT_INTERVAL
            );
            let found = last_checkpoint.to_string();
            return Err(at
                .broken("checkpoint", Some(&seq.to_string()), Some(&found), why)
                .into());
        }
        let unsigned = self
            .known
            .receipt_entries
            .iter()
            .find(|(seq, hash)| *seq >= row.first_seq && !signed.contains(hash));
        if let Some((seq, hash)) = unsigned {
            let at = At {
                table: "audit_log",
                row: Row::Seq(*seq),
            };
            let why = "the workflow receipt this entry carries has no signature";
            return Err(at.broken("payload_hash", Some(hash), None, why).into());
        }
        Ok(())
    }

    /// With no signing key recorded, nothing may claim to be signed, and `--pubkey` cannot hold.
    fn nothing_signed(&mut self) -> Result<(), Stop> {
        let at = At {
            table: "signing_keys",
            row: Row::Key("-"),
        };
        if let Some(given) = &self.options.pubkey {
            let why = "key mismatch: the database records no signing key, so nothing in it is \
                       signed by --pubkey";
            return Err(at
                .broken("public_key", Some(&given.to_string()), None, why)
                .into());
        }
        let mut orphan = None;
        store::for_each_signature(self.db, |sig| {
            orphan.get_or_insert(("signatures", sig.hash));
            Ok::<(), StoreError>(())
        })?;
        store::for_each_checkpoint(self.db, |c| {
            orphan.get_or_insert(("checkpoints", c.seq.to_string()));
            Ok::<(), StoreError>(())
        })?;
        match orphan {
            None => Ok(()),
            Some((table, id)) => {
                let at = At {
                    table,
                    row: Row::Key(&id),
                };
                let why = "signed by a key the database does not record";
                Err(at.broken("key_id", None, None, why).into())
            }
        }
    }

    /// The immutability triggers of contract §6, each exactly as the schema declares it.
    fn triggers(&mut self) -> Result<(), Stop> {
        for trigger in store::schema_triggers(self.db)? {
            let at = At {
                table: "sqlite_master",
                row: Row::Key(&trigger.name),
            };
            match trigger.compared_with(self.db)? {
                Ok(()) => self.counts.triggers += 1,
                Err(mismatch) => {
                    let found = mismatch.found.as_deref();
                    return Err(at
                        .broken("trigger", Some(&trigger.sql), found, mismatch.why)
                        .into());
                }
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
        let at = At {
            table: "decisions",
            row: Row::Key(&d.decision_id),
        };
        let subject = format!("step:{}#{}", d.step_id, d.attempt);
        let Some(requested) = store::last_audit_entry(db, &d.run_id, "step.requested", &subject)?
        else {
            let why =
                format!("no step.requested entry for {subject} holds the context it was made on");
            return Err(at.broken("context", None, None, why).into());
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
            let why = format!(
                "the step.requested entry (seq {}) holds no context",
                requested.seq
            );
            return Err(at.broken("context", context_hash, None, why).into());
        };
        let context: Value = serde_json::from_slice(&body).map_err(|e| {
            at.broken(
                "context",
                context_hash,
                None,
                format!("the context is not JSON: {e}"),
            )
        })?;
        let input = context.get("input").unwrap_or(&Value::Null);
        let input_hash = at.hash(&mut self.buf, "input_hash", input)?;
        at.same("input_hash", &input_hash, &d.input_hash, || {
            format!(
                "the context recorded at seq {} holds another step input",
                requested.seq
            )
        })?;

        let key = (d.policy_id.clone(), d.policy_version);
        if !policies.contains_key(&key) {
            let Some(stored) = store::get_policy(db, &d.policy_id, Some(d.policy_version))? else {
                let version = format!("{}@{}", d.policy_id, d.policy_version);
                let why = "the decision names a policy version that does not exist";
                return Err(at
                    .broken("policy_version", None, Some(&version), why)
                    .into());
            };
            let rules = policy::parse_rules(&stored.rules).map_err(|e| {
                let at = At {
                    table: "policies",
                    row: Row::Version(&stored.policy_id, stored.version),
                };
                at.broken(
                    "rules",
                    None,
                    None,
                    format!("the stored rules no longer parse: {e}"),
                )
            })?;
            policies.insert(key.clone(), (stored, rules));
        }
        let (stored, rules) = &policies[&key];
        let version = format!("{}@{}", stored.policy_id, stored.version);
        at.same("policy_hash", &stored.policy_hash, &d.policy_hash, || {
            format!("policy {version} has another policy_hash")
        })?;
        at.same("tier", &stored.tier, &d.tier, || {
            format!("policy {version} has another tier")
        })?;

        let again = policy::evaluate(rules, stored.default_effect, &context);
        let why = || {
            format!(
                "re-evaluating policy {version} on the context recorded at seq {} gives {} ({:?}, rules {:?})",
                requested.seq,
                again.effect.as_str(),
                again.reason,
                again.rules_triggered
            )
        };
        at.same("effect", again.effect.as_str(), d.effect.as_str(), why)?;
        at.same("reason", &again.reason, &d.reason, why)?;
        let rules_expected = json!(again.rules_triggered).to_string();
        let rules_found = json!(d.rules_triggered).to_string();
        at.same("rules_triggered", &rules_expected, &rules_found, why)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// What the workers check: pure functions of what was read and what is known.

/// The evidence table, in slices by the first hex digit of the key; reading a slice gathers
/// the digests of its keys (a key that is not a hash is left out, and its blob found broken).
struct EvidencePass {
    slices: Vec<store::TextSlice>,
}

impl Pass for EvidencePass {
    type Item = Blob;
    type Gathered = DigestSet;

    fn slices(&self) -> usize {
        self.slices.len()
    }

    fn read<D: Db>(
        &self,
        db: &D,
        slice: usize,
        set: &mut DigestSet,
        sink: &mut dyn FnMut(&mut Blob) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        let mut digests = Vec::new();
        let mut blob = Blob::default();
        store::for_each_evidence_in(db, &self.slices[slice], |hash, body| {
            digests.extend(Digest::parse(hash));
            blob.hash.clear();
            blob.hash.push_str(hash);
            blob.body.clear();
            blob.body.extend_from_slice(body);
            sink(&mut blob)
        })?;
        *set = DigestSet::new(&digests);
        Ok(())
    }

    fn check(&self, buf: &mut Vec<u8>, blob: &Blob, counts: &mut Counts) -> Checked {
        check_blob(buf, blob, counts)
    }
}

/// The audit log, in slices by `seq`. Each slice starts from the entry before it, as read, so
/// the chain is checked across the cuts; reading gathers what later passes need of the log.
struct AuditPass<'k> {
    slices: Vec<store::SeqSlice>,
    known: &'k Known,
    expect_head: Option<&'k Head>,
}

/// What reading a slice of the log gathers.
#[derive(Default)]
struct ChainGathered {
    /// Whether the entry at `--expect-head`'s seq is in the slice.
    head_seen: bool,
    /// The `policy.put`, `definition.put` and `agent.put` entries, as `Known` keeps them.
    catalog_entries: HashMap<String, Vec<(i64, String)>>,
    /// The entries that carry a workflow receipt, as `Known` keeps them.
    receipt_entries: Vec<(i64, String)>,
    /// The entries that create or revoke a token, as `Known` keeps them.
    token_entries: Vec<TokenEntry>,
    /// How many entries name a run.
    of_runs: u64,
}

impl Pass for AuditPass<'_> {
    type Item = Linked;
    type Gathered = ChainGathered;

    fn slices(&self) -> usize {
        self.slices.len()
    }

    fn read<D: Db>(
        &self,
        db: &D,
        slice: usize,
        gathered: &mut ChainGathered,
        sink: &mut dyn FnMut(&mut Linked) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        let slice = self.slices[slice];
        // The seq the slice's first entry must have follows from the entry before it, and its
        // prev_hash is that entry's entry_hash. When that entry is itself out of place or not
        // readable, it is the failure reported, being earlier.
        let (mut expected_seq, mut prev_hash) = match store::audit_entry_before(db, slice.first)? {
            Some((seq, hash)) => (seq + 1, hash.unwrap_or_default()),
            None => (1, ZERO_HASH.to_string()),
        };
        let mut linked = Linked::default();
        store::for_each_audit_entry_in(db, slice, |entry| {
            gathered.head_seen |= self.expect_head.is_some_and(|head| head.seq == entry.seq);
            gathered.of_runs += u64::from(entry.run_id.is_some());
            if CATALOG_ACTIONS.contains(&entry.action.as_str()) {
                let at = (entry.seq, entry.payload_hash.clone());
                gathered
                    .catalog_entries
                    .entry(format!("{}\n{}", entry.action, entry.subject))
                    .or_default()
                    .push(at);
            }
            if RUN_ENDS.contains(&entry.action.as_str()) {
                let at = (entry.seq, entry.payload_hash.clone());
                gathered.receipt_entries.push(at);
            }
            if TOKEN_ACTIONS.contains(&entry.action.as_str()) {
                gathered.token_entries.push(TokenEntry {
                    seq: entry.seq,
                    action: entry.action.clone(),
                    actor: entry.actor.clone(),
                    at: entry.at,
                    payload_hash: entry.payload_hash.clone(),
                });
            }
            linked.expected_seq = expected_seq;
            expected_seq += 1;
            std::mem::swap(&mut linked.prev_hash, &mut prev_hash);
            prev_hash.clear();
            prev_hash.push_str(&entry.entry_hash);
            // Checked where it lies; the entry checked before is read into next.
            std::mem::swap(&mut linked.entry, entry);
            let checked = sink(&mut linked);
            std::mem::swap(&mut linked.entry, entry);
            checked
        })
    }

    fn check(&self, buf: &mut Vec<u8>, linked: &Linked, counts: &mut Counts) -> Checked {
        check_entry(self.known, self.expect_head, buf, linked, counts)
    }
}

/// The runs, in slices by `run_id`, each read with everything of it.
struct RunsPass<'k> {
    slices: Vec<store::TextSlice>,
    known: &'k Known,
}

impl Pass for RunsPass<'_> {
    type Item = RunRecord;
    /// The rows read as the runs', for `orphans`.
    type Gathered = store::RunRowCounts;

    fn slices(&self) -> usize {
        self.slices.len()
    }

    fn read<D: Db>(
        &self,
        db: &D,
        slice: usize,
        read: &mut store::RunRowCounts,
        sink: &mut dyn FnMut(&mut RunRecord) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        store::for_each_run_with_rows_in(db, &self.slices[slice], |record| {
            read.audit_entries += record.links.len() as u64;
            read.decisions += record.decisions.len() as u64;
            read.steps += record.steps.len() as u64;
            read.gates += record.gates.len() as u64;
            read.approvals += record
                .gates
                .iter()
                .map(|g| g.approvals.len() as u64)
                .sum::<u64>();
            read.decision_ids += record
                .decisions
                .iter()
                .filter(|d| record.steps.iter().any(|s| s.decision_id == d.decision_id))
                .count() as u64;
            sink(record)
        })
    }

    fn check(&self, buf: &mut Vec<u8>, record: &RunRecord, counts: &mut Counts) -> Checked {
        check_run(self.known, buf, record, counts)?;
        lifecycle::check_run_lifecycle(self.known, record)
    }
}

/// The receipt signatures, in slices by hash; reading gathers the hashes signed.
struct SignaturePass<'k> {
    slices: Vec<store::TextSlice>,
    known: &'k Known,
    key: &'k PublicKey,
    key_id: &'k str,
}

impl Pass for SignaturePass<'_> {
    type Item = store::SignatureRow;
    type Gathered = Vec<String>;

    fn slices(&self) -> usize {
        self.slices.len()
    }

    fn read<D: Db>(
        &self,
        db: &D,
        slice: usize,
        signed: &mut Vec<String>,
        sink: &mut dyn FnMut(&mut store::SignatureRow) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        store::for_each_signature_in(db, &self.slices[slice], |mut sig| {
            signed.push(sig.hash.clone());
            sink(&mut sig)
        })
    }

    fn check(&self, _: &mut Vec<u8>, sig: &store::SignatureRow, counts: &mut Counts) -> Checked {
        check_signature(self.known, self.key, self.key_id, sig, counts)
    }
}

/// The signed checkpoints, in slices by `seq`, each read with the entry_hash the log holds there.
struct CheckpointPass<'k> {
    slices: Vec<store::SeqSlice>,
    key: &'k PublicKey,
    key_id: &'k str,
    origin: String,
}

impl Pass for CheckpointPass<'_> {
    type Item = Logged;
    type Gathered = ();

    fn slices(&self) -> usize {
        self.slices.len()
    }

    fn read<D: Db>(
        &self,
        db: &D,
        slice: usize,
        _: &mut (),
        sink: &mut dyn FnMut(&mut Logged) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        store::for_each_checkpoint_in(db, self.slices[slice], |checkpoint| {
            let logged = store::audit_entry_hash(db, checkpoint.seq)?;
            sink(&mut Logged { checkpoint, logged })
        })
    }

    fn check(&self, _: &mut Vec<u8>, logged: &Logged, counts: &mut Counts) -> Checked {
        check_checkpoint(self.key, self.key_id, &self.origin, logged, counts)
    }
}

/// An evidence blob as read: its key and its body.
#[derive(Default)]
struct Blob {
    hash: String,
    body: Vec<u8>,
}

fn check_blob(buf: &mut Vec<u8>, blob: &Blob, counts: &mut Counts) -> Checked {
    let at = At {
        table: "evidence",
        row: Row::Key(&blob.hash),
    };
    let digest = jcs::digest(&blob.body);
    if !jcs::is_hex_of(&blob.hash, &digest) {
        let actual = hex::encode(digest);
        at.same("body", &blob.hash, &actual, || {
            "the body no longer hashes to the key it is stored under".into()
        })?;
    }
    // Shown canonical in one pass over the bytes; otherwise parsed and written out again, which
    // names what is wrong (or finds it canonical after all).
    if jcs::is_canonical(&blob.body) {
        counts.evidence += 1;
        return Ok(());
    }
    let value: Value = serde_json::from_slice(&blob.body)
        .map_err(|e| at.broken("body", None, None, format!("the body is not JSON: {e}")))?;
    buf.clear();
    jcs::write_canonical(&value, buf).map_err(|e| at.broken("body", None, None, e.to_string()))?;
    if *buf != blob.body {
        let canonical = jcs::hash_bytes(buf);
        let why = "the body is not the canonical JCS form of its value";
        return Err(at.broken("body", Some(&canonical), Some(&blob.hash), why));
    }
    counts.evidence += 1;
    Ok(())
}

/// A receipt signature names the recorded key, verifies under it, and signs a stored hash.
fn check_signature(
    known: &Known,
    key: &PublicKey,
    key_id: &str,
    sig: &store::SignatureRow,
    counts: &mut Counts,
) -> Checked {
    let at = At {
        table: "signatures",
        row: Row::Key(&sig.hash),
    };
    at.same("key_id", key_id, &sig.key_id, || {
        "the signature names another key".into()
    })?;
    if !key.verifies_hash(&sig.hash, &sig.signature) {
        let why = format!("the signature does not verify under {}", key.name);
        return Err(at.broken("signature", None, Some(&sig.signature), why));
    }
    at.stored(known, "hash", &sig.hash)?;
    counts.signatures += 1;
    Ok(())
}

/// A checkpoint as read, with the `entry_hash` the log holds at its seq (`None`: no entry).
#[derive(Default)]
struct Logged {
    checkpoint: store::CheckpointRow,
    logged: Option<String>,
}

/// A checkpoint names the recorded key, its note verifies under it and states this log, its
/// seq, entry_hash and time, and the log still holds that entry.
fn check_checkpoint(
    key: &PublicKey,
    key_id: &str,
    origin: &str,
    logged: &Logged,
    counts: &mut Counts,
) -> Checked {
    let Logged {
        checkpoint: c,
        logged,
    } = logged;
    let at = At {
        table: "checkpoints",
        row: Row::Seq(c.seq),
    };
    at.same("key_id", key_id, &c.key_id, || {
        "the checkpoint names another key".into()
    })?;
    let stated = key
        .open_checkpoint(&c.note)
        .map_err(|why| at.broken("note", None, None, why))?;
    at.same("note", origin, &stated.origin, || {
        "the note's origin is not this key's log".into()
    })?;
    at.same("note", &c.seq.to_string(), &stated.seq.to_string(), || {
        "the note states another tree size than its seq".into()
    })?;
    at.same("note", &c.entry_hash, &stated.entry_hash, || {
        "the note states another root hash than its entry_hash".into()
    })?;
    at.same("note", &c.at, &stated.at, || {
        "the note states another time than its row".into()
    })?;
    match logged {
        Some(logged) => at.same("entry_hash", logged, &c.entry_hash, || {
            format!("the log's entry {} has another entry_hash", c.seq)
        })?,
        None => {
            let why = format!("the log holds no entry {}: it was cut", c.seq);
            return Err(at.broken("seq", None, Some(&c.seq.to_string()), why));
        }
    }
    counts.checkpoints += 1;
    Ok(())
}

/// An audit entry as read, with what it must follow: the `seq` it must have, and the stored
/// `entry_hash` of the entry read before it (64 zeros before the first).
#[derive(Default)]
struct Linked {
    entry: AuditEntry,
    expected_seq: i64,
    prev_hash: String,
}

fn check_entry(
    known: &Known,
    expect_head: Option<&Head>,
    buf: &mut Vec<u8>,
    linked: &Linked,
    counts: &mut Counts,
) -> Checked {
    let Linked {
        entry,
        expected_seq,
        prev_hash,
    } = linked;
    let (seq, expected_seq) = (entry.seq, *expected_seq);
    if seq != expected_seq {
        let at = At {
            table: "audit_log",
            row: Row::Seq(expected_seq),
        };
        let why = if seq > expected_seq {
            format!(
                "the log jumps from seq {} to {seq}: entries were removed",
                expected_seq - 1
            )
        } else if expected_seq == 1 {
            format!("the log starts at seq {seq}, before seq 1: an entry was added before it")
        } else {
            format!(
                "seq {seq} comes after seq {}: entries were moved or added",
                expected_seq - 1
            )
        };
        let (expected, found) = (expected_seq.to_string(), seq.to_string());
        return Err(at.broken("seq", Some(&expected), Some(&found), why));
    }
    let at = At {
        table: "audit_log",
        row: Row::Seq(seq),
    };
    let write = |out: &mut Vec<u8>| {
        receipts::write_entry(entry, out);
        Ok(())
    };
    at.rehash(buf, "entry_hash", &entry.entry_hash, write, || {
        "the entry no longer hashes to its entry_hash: it was changed after it was written".into()
    })?;
    at.same("prev_hash", prev_hash, &entry.prev_hash, || {
        "the entry does not link to the one before it: entries were moved, removed or rewritten"
            .into()
    })?;
    match entry.evidence_pack_ref.as_deref() {
        Some(reference) => {
            let named = reference.strip_prefix("sha256:").unwrap_or(reference);
            at.same("payload_hash", named, &entry.payload_hash, || {
                format!("the payload_hash is not the hash its evidence_pack_ref {reference} names")
            })?;
            at.stored(known, "evidence_pack_ref", named)?;
        }
        None => at.same("payload_hash", NULL_HASH, &entry.payload_hash, || {
            "an entry without evidence carries H(null) as its payload_hash".into()
        })?,
    }
    if let Some(head) = expect_head.filter(|head| head.seq == seq) {
        at.same("entry_hash", &head.entry_hash, &entry.entry_hash, || {
            "the entry at the head written down has another hash: the log was rewritten since"
                .into()
        })?;
    }
    counts.audit_entries += 1;
    Ok(())
}

/// A run with everything of it that `verify` checks, each list in the order it happened.
type RunRecord = store::RunRows;

/// One run: genesis, decisions, the receipt chain of its attempts, gates and workflow receipt,
/// each tied to the audit entry that carries it.
fn check_run(known: &Known, buf: &mut Vec<u8>, record: &RunRecord, counts: &mut Counts) -> Checked {
    let RunRecord {
        run,
        links,
        decisions,
        steps,
        gates,
    } = record;
    let at = At {
        table: "runs",
        row: Row::Key(&run.run_id),
    };
    counts.runs += 1;
    at.stored(known, "input_hash", &run.input_hash)?;
    let pinned = (run.workflow_id.clone(), run.workflow_version);
    let Some(definition_hash) = known.definition_hashes.get(&pinned) else {
        let version = format!("{}@{}", run.workflow_id, run.workflow_version);
        let why = "the run pins a workflow definition that does not exist";
        return Err(at.broken("workflow_version", None, Some(&version), why));
    };
    let write = |out: &mut Vec<u8>| {
        receipts::write_genesis(run, definition_hash, out);
        Ok(())
    };
    at.rehash(buf, "genesis_hash", &run.genesis_hash, write, || {
        "the run no longer hashes to its genesis_hash".into()
    })?;
    at.stored(known, "genesis_hash", &run.genesis_hash)?;
    let subject = format!("run:{}", run.run_id);
    at.carried(
        links,
        &["run.created"],
        &subject,
        "genesis_hash",
        &run.genesis_hash,
    )?;

    for decision in decisions {
        check_decision(known, buf, links, decision, counts)?;
    }
    let mut tip = run.genesis_hash.as_str();
    let mut step_receipts = Vec::new();
    for step in steps {
        if let Some(receipt) = check_step(known, buf, links, decisions, step, tip, counts)? {
            tip = receipt;
            step_receipts.push(receipt);
        }
    }
    let mut gate_receipts = Vec::new();
    for gate in gates {
        if let Some(receipt) = check_gate(known, buf, links, gate, counts)? {
            gate_receipts.push(receipt);
        }
    }

    match (&run.receipt_hash, run.status.has_ended()) {
        (Some(receipt), true) => {
            let write = |out: &mut Vec<u8>| {
                receipts::write_workflow_receipt(run, &step_receipts, &gate_receipts, out);
                Ok(())
            };
            at.rehash(buf, "receipt_hash", receipt, write, || {
                "the workflow receipt does not match the run, its step and its gate receipts".into()
            })?;
            at.stored(known, "receipt_hash", receipt)?;
            at.carried(links, &RUN_ENDS, &subject, "receipt_hash", receipt)?;
            counts.workflow_receipts += 1;
            Ok(())
        }
        (None, true) => Err(at.broken(
            "receipt_hash",
            None,
            None,
            "the run has ended but has no workflow receipt",
        )),
        (Some(receipt), false) => Err(at.broken(
            "receipt_hash",
            None,
            Some(receipt),
            "a run that has not ended has a workflow receipt",
        )),
        (None, false) => Ok(()),
    }
}

/// A decision hashes to its `decision_hash`, names stored blobs and a policy version that
/// exists with the hash it recorded, and is the evidence of its `policy.evaluated` entry.
fn check_decision(
    known: &Known,
    buf: &mut Vec<u8>,
    links: &[AuditLink],
    d: &Decision,
    counts: &mut Counts,
) -> Checked {
    let at = At {
        table: "decisions",
        row: Row::Key(&d.decision_id),
    };
    counts.decisions += 1;
    let write = |out: &mut Vec<u8>| {
        receipts::write_decision(d, out);
        Ok(())
    };
    at.rehash(buf, "decision_hash", &d.decision_hash, write, || {
        "the decision no longer hashes to its decision_hash".into()
    })?;
    at.stored(known, "decision_hash", &d.decision_hash)?;
    at.stored(known, "input_hash", &d.input_hash)?;
    let version = (d.policy_id.clone(), d.policy_version);
    let Some(policy_hash) = known.policy_hashes.get(&version) else {
        let version = format!("{}@{}", d.policy_id, d.policy_version);
        let why = "the decision names a policy version that does not exist";
        return Err(at.broken("policy_version", None, Some(&version), why));
    };
    at.same("policy_hash", policy_hash, &d.policy_hash, || {
        format!(
            "policy {}@{} has another policy_hash",
            d.policy_id, d.policy_version
        )
    })?;
    let subject = format!("step:{}#{}", d.step_id, d.attempt);
    at.carried(
        links,
        &["policy.evaluated"],
        &subject,
        "decision_hash",
        &d.decision_hash,
    )
}

/// One attempt, in creation order: its decision, its output, and its place in the receipt chain
/// after `tip`. Returns its receipt when it has finished.
fn check_step<'r>(
    known: &Known,
    buf: &mut Vec<u8>,
    links: &[AuditLink],
    decisions: &[Decision],
    step: &'r StepAttempt,
    tip: &str,
    counts: &mut Counts,
) -> Checked<Option<&'r str>> {
    let at = At {
        table: "steps",
        row: Row::Attempt(step),
    };
    counts.steps += 1;
    at.stored(known, "input_hash", &step.input_hash)?;
    let decision = decisions.iter().find(|d| d.decision_id == step.decision_id);
    let Some(decision) = decision.filter(|d| {
        (&d.run_id, &d.step_id, d.attempt) == (&step.run_id, &step.step_id, step.attempt)
    }) else {
        let why = "the attempt does not name the decision made on it";
        return Err(at.broken("decision_id", None, Some(&step.decision_id), why));
    };
    at.same(
        "decision_hash",
        &decision.decision_hash,
        &step.decision_hash,
        || "the attempt's decision_hash is not its decision's".into(),
    )?;
    at.same("input_hash", &decision.input_hash, &step.input_hash, || {
        "the attempt's input_hash is not the one its decision was made on".into()
    })?;

    if step.status.is_open() {
        return match step.output_hash.as_deref().or(step.receipt_hash.as_deref()) {
            Some(found) => {
                let why = "an open attempt has an output or a receipt";
                Err(at.broken("receipt_hash", None, Some(found), why))
            }
            None => Ok(None),
        };
    }
    let (Some(output_hash), Some(receipt)) = (&step.output_hash, &step.receipt_hash) else {
        let why = "a finished attempt has no output_hash or no receipt";
        return Err(at.broken("receipt_hash", None, None, why));
    };
    at.stored(known, "output_hash", output_hash)?;
    // COMPLETED: H(output), known only through its blob. The others hash what the row holds.
    let expected_output = match step.status {
        StepStatus::Failed => Some(at.hash(buf, "output_hash", &json!({"error": step.error}))?),
        StepStatus::Denied | StepStatus::Rejected => Some(NULL_HASH.to_string()),
        _ => None,
    };
    if let Some(expected) = expected_output {
        at.same("output_hash", &expected, output_hash, || {
            let rule = match step.status {
                StepStatus::Failed => "H({\"error\": error})",
                _ => "H(null)",
            };
            format!("the output_hash of a {} attempt is {rule}", step.status)
        })?;
    }
    at.same("prev_receipt_hash", tip, &step.prev_receipt_hash, || {
        "the attempt does not chain to the run's previous finished attempt (or its genesis)".into()
    })?;
    let write = |out: &mut Vec<u8>| {
        receipts::write_step_receipt(step, out);
        Ok(())
    };
    at.rehash(buf, "receipt_hash", receipt, write, || {
        "the attempt no longer hashes to its receipt_hash".into()
    })?;
    at.stored(known, "receipt_hash", receipt)?;
    let action = match step.status {
        StepStatus::Completed => "step.completed",
        StepStatus::Failed => "step.failed",
        StepStatus::Denied => "step.denied",
        _ => "step.rejected",
    };
    let subject = format!("step:{}#{}", step.step_id, step.attempt);
    at.carried(links, &[action], &subject, "receipt_hash", receipt)?;
    Ok(Some(receipt))
}

/// One gate: a gate that left PENDING has a receipt, tied to the entry that resolved it.
/// Returns that receipt.
fn check_gate<'r>(
    known: &Known,
    buf: &mut Vec<u8>,
    links: &[AuditLink],
    gate: &'r Gate,
    counts: &mut Counts,
) -> Checked<Option<&'r str>> {
    let at = At {
        table: "gates",
        row: Row::Key(&gate.gate_id),
    };
    counts.gates += 1;
    let action = match gate.status {
        GateStatus::Pending => {
            return match &gate.receipt_hash {
                Some(found) => Err(at.broken(
                    "receipt_hash",
                    None,
                    Some(found),
                    "a PENDING gate has a receipt",
                )),
                None => Ok(None),
            }
        }
        GateStatus::Approved | GateStatus::Rejected => "gate.resolved",
        GateStatus::Expired => "gate.expired",
        GateStatus::Cancelled => "gate.cancelled",
    };
    let Some(receipt) = &gate.receipt_hash else {
        let why = "a gate that left PENDING has no receipt";
        return Err(at.broken("receipt_hash", None, None, why));
    };
    let write = |out: &mut Vec<u8>| receipts::write_gate_receipt(gate, out);
    at.rehash(buf, "receipt_hash", receipt, write, || {
        "the gate no longer hashes to its receipt_hash".into()
    })?;
    at.stored(known, "receipt_hash", receipt)?;
    let subject = format!("gate:{}", gate.gate_id);
    at.carried(links, &[action], &subject, "receipt_hash", receipt)?;
    Ok(Some(receipt))
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

    /// A connection to the same file that has no sibling, as for a file a server has open: the
    /// passes are read on this thread and checked on the workers.
    struct Alone<'r>(&'r store::Reader);

    impl Db for Alone<'_> {
        fn conn(&self) -> &store::Connection {
            self.0.conn()
        }
        fn schema_version(&self) -> i64 {
            self.0.schema_version()
        }
    }

    /// What the two ways of reading report for the file at `db`, which must agree (on the
    /// report, or on why the file could not be checked).
    fn both_ways(db: &std::path::Path) -> Result<Report, String> {
        let reader = store::open_read_only(db).unwrap();
        let options = Options::default();
        let mut reports = [true, false].map(|sliced| {
            let report = reader.snapshot(|r| match sliced {
                true => verify_on(r, &options, 3),
                false => verify_on(&Alone(r), &options, 3),
            });
            report.unwrap().map_err(|e| e.to_string())
        });
        assert_eq!(
            reports[0],
            reports[1],
            "slices and one reader disagree on {}",
            db.display()
        );
        std::mem::replace(&mut reports[0], Err(String::new()))
    }

    /// An empty folder of its own under the temporary directory.
    fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fedcore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_log_with_a_thousand_entries_past_its_last_checkpoint_is_named() {
        let dir = fresh_dir("interval");
        let db = dir.join("runs.db");
        // Runs created and never ended: only the interval rule makes checkpoints here.
        crate::bench::seed::seed_runs(&db, 1100, store::Durability::Normal).unwrap();
        let intact = verify_file(&db, &Options::default()).unwrap();
        assert!(intact.is_intact(), "{intact}");
        let conn = store::Connection::open(&db).unwrap();
        let checkpoints: i64 = conn
            .query_row("SELECT count(*) FROM checkpoints", [], |r| r.get(0))
            .unwrap();
        assert!(checkpoints >= 1, "the interval made a checkpoint");
        let trigger: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'checkpoints_no_delete'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute_batch("DROP TRIGGER checkpoints_no_delete; DELETE FROM checkpoints;")
            .unwrap();
        conn.execute_batch(&trigger).unwrap();
        drop(conn);
        let report = verify_file(&db, &Options::default()).unwrap();
        let failure = report.failure.expect("the missing checkpoints are named");
        assert_eq!(
            (failure.table, failure.field),
            ("audit_log", "checkpoint"),
            "{failure:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reading_in_slices_over_several_connections_reports_what_one_reader_reports() {
        let dir = fresh_dir("slices");
        let clean = dir.join("clean.db");
        crate::bench::seed::seed(&clean, 21, store::Durability::Normal).unwrap();
        let intact = both_ways(&clean).unwrap();
        assert!(intact.is_intact(), "{intact}");
        let entries = intact.counts.audit_entries as i64;
        // Edits at the edges of the slices three threads read (and elsewhere), and pairs in
        // different slices: the earlier must be named whichever thread reads it.
        let reader = store::open_read_only(&clean).unwrap();
        let cut = store::audit_slices(&reader, 24).unwrap()[12].first;
        drop(reader);
        let edits: Vec<String> = [1, cut - 1, cut, entries]
            .iter()
            .flat_map(|seq| {
                [
                    format!("UPDATE audit_log SET reason = 'edited' WHERE seq = {seq}"),
                    format!("DELETE FROM audit_log WHERE seq = {seq}"),
                    format!("UPDATE audit_log SET seq = seq + 100000 WHERE seq = {seq}"),
                    format!("UPDATE audit_log SET run_id = 'nobody' WHERE seq = {seq}"),
                    format!("UPDATE audit_log SET entry_hash = x'00' WHERE seq = {seq}"),
                ]
            })
            .chain((0..3).flat_map(|k| {
                let nth = |table: &str, key: &str| {
                    format!("(SELECT {key} FROM {table} ORDER BY {key} LIMIT 1 OFFSET {k} * (SELECT count(*) FROM {table}) / 3)")
                };
                [
                    format!("UPDATE evidence SET body = body || ' ' WHERE hash = {}", nth("evidence", "hash")),
                    format!("DELETE FROM evidence WHERE hash = {}", nth("evidence", "hash")),
                    format!("UPDATE decisions SET reason = 'edited' WHERE creation_order = {}", nth("decisions", "creation_order")),
                    format!("UPDATE steps SET actor = 'edited' WHERE creation_order = {}", nth("steps", "creation_order")),
                    format!("UPDATE runs SET status = 'RUNNING' WHERE run_id = {}", nth("runs", "run_id")),
                    format!("DELETE FROM runs WHERE run_id = {}", nth("runs", "run_id")),
                    format!("UPDATE signatures SET signature = upper(signature) WHERE hash = {}", nth("signatures", "hash")),
                    format!("DELETE FROM checkpoints WHERE seq = {}", nth("checkpoints", "seq")),
                    format!("UPDATE checkpoints SET entry_hash = upper(entry_hash) WHERE seq = {}", nth("checkpoints", "seq")),
                    format!("DELETE FROM steps WHERE creation_order = {}", nth("steps", "creation_order")),
                ]
            }))
            .chain([
                format!("UPDATE audit_log SET reason = 'x' WHERE seq IN ({}, {})", entries / 3, 2 * entries / 3),
                format!("DELETE FROM audit_log WHERE seq > {}", entries - 3),
                "UPDATE evidence SET hash = upper(hash) WHERE hash LIKE 'f%'".to_string(),
            ])
            .collect();
        for (i, edit) in edits.iter().enumerate() {
            let copy = dir.join(format!("edit-{i}.db"));
            std::fs::copy(&clean, &copy).unwrap();
            let conn = store::Connection::open(&copy).unwrap();
            conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
            let triggers: Vec<String> = {
                let mut stmt = conn
                    .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                    .unwrap();
                let names = stmt.query_map([], |r| r.get(0)).unwrap();
                names.map(Result::unwrap).collect()
            };
            for name in triggers {
                conn.execute_batch(&format!("DROP TRIGGER \"{name}\""))
                    .unwrap();
            }
            conn.execute_batch(edit).unwrap();
            drop(conn);
            let report = both_ways(&copy);
            assert!(
                report.as_ref().map_or(true, |r| !r.is_intact()),
                "{edit} went unnoticed"
            );
        }
        // A run removed from the middle: the rows naming it lie between those of the runs
        // before and after it, are passed over by both, and are named as naming no run.
        let copy = dir.join("run-removed.db");
        std::fs::copy(&clean, &copy).unwrap();
        let conn = store::Connection::open(&copy).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF; DROP TRIGGER runs_no_delete;
             DELETE FROM runs WHERE run_id = (SELECT run_id FROM runs ORDER BY run_id LIMIT 1 OFFSET 10)",
        )
        .unwrap();
        drop(conn);
        let failure = both_ways(&copy)
            .unwrap()
            .failure
            .expect("the rows are named");
        assert_eq!(
            (failure.table, failure.field),
            ("audit_log", "run_id"),
            "{failure:?}"
        );
        // Rows naming a run that does not exist are read by no run: counted, then named.
        for (table, id) in [
            ("decisions", "decision_id"),
            ("steps", "creation_order"),
            ("gates", "gate_id"),
        ] {
            let copy = dir.join(format!("orphan-{table}.db"));
            std::fs::copy(&clean, &copy).unwrap();
            let conn = store::Connection::open(&copy).unwrap();
            conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
            let columns: Vec<String> = {
                let mut stmt = conn
                    .prepare(
                        "SELECT name FROM pragma_table_info(?1) WHERE name <> 'creation_order'",
                    )
                    .unwrap();
                let names = stmt.query_map([table], |r| r.get(0)).unwrap();
                names.map(Result::unwrap).collect()
            };
            let values: Vec<String> = columns
                .iter()
                .map(|c| match c.as_str() {
                    "run_id" => "'nobody'".to_string(),
                    c if c == id => "'forged'".to_string(),
                    c => c.to_string(),
                })
                .collect();
            conn.execute_batch(&format!(
                "INSERT INTO {table} ({}) SELECT {} FROM {table} LIMIT 1",
                columns.join(", "),
                values.join(", ")
            ))
            .unwrap();
            drop(conn);
            let report = both_ways(&copy).unwrap();
            let failure = report.failure.expect("an orphan is named");
            assert_eq!(
                (failure.table, failure.field),
                (table, "run_id"),
                "{failure:?}"
            );
            assert_eq!(failure.found.as_deref(), Some("nobody"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_json_report_names_the_failure() {
        let report = Report {
            counts: Counts::default(),
            head: Head::empty(),
            signing_key: None,
            pubkey_given: false,
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
