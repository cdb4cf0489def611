//! The rules of fedcore. Every write is a `Command` applied by `apply` inside the one transaction
//! the writer thread opened for it, at the time `now` it was given: lifecycle checks, policy
//! evaluation, evidence, receipts and audit entries are all written there, or nothing is. Reads
//! are in `views`. The engine never does IO of its own, never reads the clock, never awaits.

mod catalog;
pub mod jcs;
pub mod policy;
pub mod receipts;
mod runs;
pub mod signing;
mod tokens;
pub mod verify;
pub mod views;

use crate::model::*;
use crate::store::{self, StoreError, Tx};
use serde_json::{json, Map, Value};
use signing::Signer;

/// A new UUIDv7 string for time `now`. Ids made one after another sort in the order they were
/// made, even within one millisecond (where a v7 id is otherwise random) or when the clock steps
/// back: every id of the process comes from one `ContextV7`, whose counter keeps them
/// increasing. `run_id` order is creation order (the run list is sorted by it).
fn id_at(now: Timestamp) -> String {
    static CONTEXT: std::sync::Mutex<uuid::ContextV7> =
        std::sync::Mutex::new(uuid::ContextV7::new());
    let micros = now.micros().max(0) as u64;
    // A panic while the lock was held cannot leave the counter half-written (it is two cells
    // set after the new value is computed), so a poisoned lock is used as it is.
    let context = CONTEXT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ts = uuid::Timestamp::from_unix(
        &*context,
        micros / 1_000_000,
        ((micros % 1_000_000) * 1000) as u32,
    );
    uuid::Uuid::new_v7(ts).to_string()
}

/// A signed checkpoint of the audit head is written at least once every this many entries.
pub const CHECKPOINT_INTERVAL: i64 = 1000;

/// The `error.code` of a started attempt its run's end closed (contract §3); reserved to fedcore
/// (a step finished FAILED with it is refused), so the log tells such an attempt from one that
/// failed on its own.
pub const RUN_ENDED: &str = "run_ended";

/// The actor name fedcore itself uses for changes nobody asked for (a gate that expired).
pub const SYSTEM_ACTOR: &str = "fedcore";

/// An engine error; each variant is documented with the HTTP status it becomes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request is malformed.
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        path: Option<String>,
    },
    /// 403: the actor may not do this (separation of duties, or a role that may not).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// 404: an id names nothing.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// 409: the change conflicts with the current state.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// 422: a document or value is invalid; `path` names the offending JSON path.
    #[error("{message}")]
    Invalid {
        code: &'static str,
        message: String,
        path: String,
    },
    /// 500: storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 500: a value could not be canonicalized (cannot happen for checked input).
    #[error("canonical JSON: {0}")]
    Canonical(#[from] jcs::JcsError),
    /// 500: a hash could not be signed (cannot happen for hashes fedcore made).
    #[error("signing: {0}")]
    Signing(#[from] signing::KeyError),
}

impl Error {
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Error {
        Error::NotFound {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn conflict(
        code: &'static str,
        message: impl Into<String>,
        details: Value,
    ) -> Error {
        Error::Conflict {
            code,
            message: message.into(),
            details,
        }
    }

    pub(crate) fn invalid(
        code: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Error {
        Error::Invalid {
            code,
            message: message.into(),
            path: path.into(),
        }
    }

    /// A refusal of a change on an existing run is recorded in the audit log (contract §4).
    fn is_refusal(&self) -> bool {
        matches!(self, Error::Forbidden { .. } | Error::Conflict { .. })
    }

    fn code(&self) -> &'static str {
        match self {
            Error::BadRequest { code, .. }
            | Error::Forbidden { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. }
            | Error::Invalid { code, .. } => code,
            Error::Store(_) | Error::Canonical(_) | Error::Signing(_) => "internal",
        }
    }
}

/// How a step attempt ended, as reported by the agent.
#[derive(Debug, Clone)]
pub enum StepResult {
    Completed { output: Value },
    Failed { error: Value },
}

/// One write request. `actor` is who asks.
#[derive(Debug, Clone)]
pub enum Command {
    PutPolicy {
        policy_id: String,
        doc: Map<String, Value>,
        actor: String,
    },
    PutDefinition {
        workflow_id: String,
        doc: Map<String, Value>,
        actor: String,
    },
    PutAgent {
        agent_id: String,
        doc: Map<String, Value>,
        actor: String,
    },
    CreateRun {
        workflow_id: String,
        input: Value,
        actor: String,
    },
    RequestStep {
        run_id: String,
        step_id: String,
        input: Value,
        actor: String,
    },
    FinishStep {
        run_id: String,
        step_id: String,
        result: StepResult,
        actor: String,
    },
    RequestGate {
        run_id: String,
        step_id: String,
        reason: String,
        expires_in_s: Option<i64>,
        actor: String,
    },
    ResolveGate {
        run_id: String,
        gate_id: String,
        approve: bool,
        comment: Option<String>,
        actor: String,
    },
    ChangeStatus {
        run_id: String,
        status: RunStatus,
        reason: Option<String>,
        actor: String,
    },
    /// Expires every PENDING gate whose deadline has passed (the background sweep).
    ExpireGates,
    /// Stores a new bearer token of `name` under the SHA-256 of its secret.
    CreateToken {
        name: String,
        role: Role,
        token_hash: String,
        actor: String,
    },
    /// Revokes every live token of `name`.
    RevokeTokens { name: String, actor: String },
    /// A request its actor's role may not make, refused before it is looked at: on an existing
    /// run it is recorded as `request.refused`, like any other 403 there; elsewhere nothing is
    /// written. Answers `Forbidden { code, message }`.
    Refused {
        command: Box<Command>,
        code: &'static str,
        message: String,
    },
}

impl Command {
    /// Whether the command changes a run that must already exist (its refusals are recorded).
    pub fn changes_a_run(&self) -> bool {
        self.run_id().is_some()
    }

    /// The run a command changes, when it changes one that must already exist.
    pub(crate) fn run_id(&self) -> Option<&str> {
        match self {
            Command::RequestStep { run_id, .. }
            | Command::FinishStep { run_id, .. }
            | Command::RequestGate { run_id, .. }
            | Command::ResolveGate { run_id, .. }
            | Command::ChangeStatus { run_id, .. } => Some(run_id),
            Command::Refused { command, .. } => command.run_id(),
            _ => None,
        }
    }

    fn actor(&self) -> &str {
        match self {
            Command::PutPolicy { actor, .. }
            | Command::PutDefinition { actor, .. }
            | Command::PutAgent { actor, .. }
            | Command::CreateRun { actor, .. }
            | Command::RequestStep { actor, .. }
            | Command::FinishStep { actor, .. }
            | Command::RequestGate { actor, .. }
            | Command::ResolveGate { actor, .. }
            | Command::ChangeStatus { actor, .. }
            | Command::CreateToken { actor, .. }
            | Command::RevokeTokens { actor, .. } => actor,
            Command::Refused { command, .. } => command.actor(),
            Command::ExpireGates => SYSTEM_ACTOR,
        }
    }

    /// What was attempted, for the `request.refused` entry: the operation, the subject (the run,
    /// or the gate for a gate decision) and the request's arguments as evidence.
    fn describe(&self) -> (&'static str, String, Value) {
        match self {
            Command::Refused { command, .. } => command.describe(),
            Command::RequestStep {
                run_id,
                step_id,
                input,
                ..
            } => (
                "step.request",
                format!("run:{run_id}"),
                json!({"step_id": step_id, "input": input}),
            ),
            Command::FinishStep {
                run_id,
                step_id,
                result,
                ..
            } => {
                let body = match result {
                    StepResult::Completed { output } => {
                        json!({"step_id": step_id, "status": "COMPLETED", "output": output})
                    }
                    StepResult::Failed { error } => {
                        json!({"step_id": step_id, "status": "FAILED", "error": error})
                    }
                };
                ("step.finish", format!("run:{run_id}"), body)
            }
            Command::RequestGate {
                run_id,
                step_id,
                reason,
                expires_in_s,
                ..
            } => (
                "gate.request",
                format!("run:{run_id}"),
                json!({"step_id": step_id, "reason": reason, "expires_in_s": expires_in_s}),
            ),
            Command::ResolveGate {
                gate_id,
                approve,
                comment,
                ..
            } => (
                "gate.resolve",
                format!("gate:{gate_id}"),
                json!({"gate_id": gate_id, "decision": if *approve { "approve" } else { "reject" }, "comment": comment}),
            ),
            Command::ChangeStatus {
                run_id,
                status,
                reason,
                ..
            } => (
                "run.change_status",
                format!("run:{run_id}"),
                json!({"status": status.as_str(), "reason": reason}),
            ),
            _ => ("other", String::new(), Value::Null),
        }
    }
}

/// What a successful command produced. One is made per request and moved once, so the size
/// difference between variants costs nothing worth boxing for.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Policy(Policy),
    Definition(Definition),
    Agent(Agent),
    Run(Run),
    StepRequested {
        step: StepAttempt,
        decision: Decision,
        run: Run,
        gate: Option<Gate>,
    },
    StepFinished {
        step: StepAttempt,
        run: Run,
    },
    GateOpened(Gate),
    GateResolved {
        gate: Gate,
        run: Run,
    },
    Expired {
        n_runs: usize,
    },
    Token(Token),
    TokensRevoked(Vec<Token>),
}

/// Applies `command` in the open transaction `tx` at time `now`, signing with `signer`. Returns
/// the result and whether the transaction should be committed: a success commits; a refused
/// change on an existing run commits only its `request.refused` entry; any other error commits
/// nothing. A signed checkpoint of the audit head is added when a run ended or when
/// `CHECKPOINT_INTERVAL` entries went by without one.
pub fn apply(
    tx: &Tx<'_>,
    now: Timestamp,
    signer: &Signer,
    command: &Command,
) -> (Result<Outcome, Error>, bool) {
    let applied = Ctx::new(tx, now, signer).and_then(|mut ctx| {
        let (result, commit) = apply_inner(&mut ctx, command)?;
        if commit {
            checkpoint_if_due(&ctx)?;
        }
        Ok((result, commit))
    });
    match applied {
        Ok((result, commit)) => (result, commit),
        Err(e) => (Err(e), false),
    }
}

/// Writes a signed checkpoint of the audit head at `now`, unless the latest checkpoint already
/// covers it (or the log is empty). The writer calls it once more at shutdown.
pub fn write_checkpoint(tx: &Tx<'_>, now: Timestamp, signer: &Signer) -> Result<(), Error> {
    let Some((seq, entry_hash)) = store::audit_head(tx)? else {
        return Ok(());
    };
    if store::last_checkpoint(tx)?.is_some_and(|c| c.seq >= seq) {
        return Ok(());
    }
    sign_checkpoint(tx, now, signer, seq, entry_hash)
}

/// Writes the signed checkpoint of the entry `seq`, whose hash is `entry_hash`.
fn sign_checkpoint(
    tx: &Tx<'_>,
    now: Timestamp,
    signer: &Signer,
    seq: i64,
    entry_hash: String,
) -> Result<(), Error> {
    let at = now.to_string();
    let note = signer.checkpoint_note(seq, &entry_hash, &at)?;
    store::insert_checkpoint(
        tx,
        &store::CheckpointRow {
            seq,
            entry_hash,
            at,
            key_id: signer.public_key().key_id_hex(),
            note,
        },
    )?;
    Ok(())
}

/// A checkpoint is due when a run ended in this command, or when the log grew by
/// `CHECKPOINT_INTERVAL` entries since the last one. Both are known without reading the entries
/// written since: the command holds its head, and notes a run's end as it writes it.
fn checkpoint_if_due(ctx: &Ctx<'_, '_>) -> Result<(), Error> {
    let (seq, entry_hash) = &ctx.head;
    if *seq == 0 {
        return Ok(());
    }
    let last = store::last_checkpoint(ctx.tx)?.map_or(0, |c| c.seq);
    if *seq > last && (seq - last >= CHECKPOINT_INTERVAL || ctx.run_ended) {
        sign_checkpoint(ctx.tx, ctx.now, ctx.signer, *seq, entry_hash.clone())?;
    }
    Ok(())
}

fn apply_inner(
    ctx: &mut Ctx<'_, '_>,
    command: &Command,
) -> Result<(Result<Outcome, Error>, bool), Error> {
    let tx = ctx.tx;
    // Deadlines are enforced whenever anyone touches a run: an expired gate fails the run before
    // the request is looked at, and that is kept even when the request itself is refused.
    if let Some(run_id) = command.run_id() {
        runs::expire_gates_of_run(ctx, run_id)?;
    }
    tx.savepoint("command")?;
    // What the command's savepoint undoes, the context forgets too.
    let before = (ctx.head.clone(), ctx.run_ended);
    let result = execute(ctx, command);
    match result {
        Ok(outcome) => {
            tx.release_savepoint("command")?;
            Ok((Ok(outcome), true))
        }
        Err(e) if e.is_refusal() && run_exists(tx, command.run_id())? => {
            tx.rollback_to_savepoint("command")?;
            (ctx.head, ctx.run_ended) = before;
            record_refusal(ctx, command, &e)?;
            Ok((Err(e), true))
        }
        Err(e) => {
            tx.rollback_to_savepoint("command")?;
            (ctx.head, ctx.run_ended) = before;
            Ok((Err(e), ctx.wrote_before_command))
        }
    }
}

/// Whether `run_id` names a run: only a refusal on an existing run is recorded.
fn run_exists(tx: &Tx<'_>, run_id: Option<&str>) -> Result<bool, Error> {
    match run_id {
        Some(run_id) => Ok(store::get_run(tx, run_id)?.is_some()),
        None => Ok(false),
    }
}

fn execute(ctx: &mut Ctx<'_, '_>, command: &Command) -> Result<Outcome, Error> {
    match command {
        Command::PutPolicy {
            policy_id,
            doc,
            actor,
        } => catalog::put_policy(ctx, policy_id, doc, actor),
        Command::PutDefinition {
            workflow_id,
            doc,
            actor,
        } => catalog::put_definition(ctx, workflow_id, doc, actor),
        Command::PutAgent {
            agent_id,
            doc,
            actor,
        } => catalog::put_agent(ctx, agent_id, doc, actor),
        Command::CreateRun {
            workflow_id,
            input,
            actor,
        } => runs::create_run(ctx, workflow_id, input, actor),
        Command::RequestStep {
            run_id,
            step_id,
            input,
            actor,
        } => runs::request_step(ctx, run_id, step_id, input, actor),
        Command::FinishStep {
            run_id,
            step_id,
            result,
            actor,
        } => runs::finish_step(ctx, run_id, step_id, result, actor),
        Command::RequestGate {
            run_id,
            step_id,
            reason,
            expires_in_s,
            actor,
        } => runs::request_gate(ctx, run_id, step_id, reason, *expires_in_s, actor),
        Command::ResolveGate {
            run_id,
            gate_id,
            approve,
            comment,
            actor,
        } => runs::resolve_gate(ctx, run_id, gate_id, *approve, comment.as_deref(), actor),
        Command::ChangeStatus {
            run_id,
            status,
            reason,
            actor,
        } => runs::change_status(ctx, run_id, *status, reason.as_deref(), actor),
        Command::ExpireGates => runs::expire_all_gates(ctx),
        Command::CreateToken {
            name,
            role,
            token_hash,
            actor,
        } => tokens::create_token(ctx, name, *role, token_hash, actor),
        Command::RevokeTokens { name, actor } => tokens::revoke_tokens(ctx, name, actor),
        Command::Refused { code, message, .. } => Err(Error::Forbidden {
            code,
            message: message.clone(),
        }),
    }
}

/// The most of a refused request's canonical bytes a `request.refused` entry keeps; a larger
/// request is kept as its hash and size. A refusal must not be a way for a role that may not write
/// (an auditor) to add a megabyte to the file for good with each request.
pub const REFUSED_REQUEST_KEPT_BYTES: usize = 4096;

fn record_refusal(ctx: &mut Ctx<'_, '_>, command: &Command, error: &Error) -> Result<(), Error> {
    let run_id = command.run_id().map(str::to_string);
    let (operation, subject, request) = command.describe();
    let bytes = jcs::canonical(&request)?;
    let request = match bytes.len() > REFUSED_REQUEST_KEPT_BYTES {
        true => json!({"omitted": true, "bytes": bytes.len(), "hash": jcs::hash_bytes(&bytes)}),
        false => request,
    };
    let evidence = ctx.evidence(&json!({
        "operation": operation,
        "request": request,
        "error": {"code": error.code(), "message": error.to_string()},
    }))?;
    let actor = command.actor().to_string();
    ctx.audit(Draft {
        run_id,
        actor: &actor,
        action: "request.refused",
        subject,
        reason: Some(error.to_string()),
        message: format!("Refused {operation} by {actor}: {}", error.code()),
        evidence: Some(evidence),
        ..Draft::default()
    })?;
    Ok(())
}

/// The state of one command being applied: the transaction, the time, and the audit chain head.
pub(crate) struct Ctx<'a, 'c> {
    pub tx: &'a Tx<'c>,
    pub now: Timestamp,
    pub signer: &'a Signer,
    head: (i64, String),
    /// Whether something was written before the command's own savepoint (an expiry) that must
    /// be committed even if the command fails.
    wrote_before_command: bool,
    /// Whether a run ended in this command (its end then gets a signed checkpoint).
    run_ended: bool,
}

/// An audit entry before it is numbered and hashed.
#[derive(Default)]
pub(crate) struct Draft<'s> {
    pub run_id: Option<String>,
    pub actor: &'s str,
    pub action: &'static str,
    pub subject: String,
    pub from_status: Option<&'static str>,
    pub to_status: Option<&'static str>,
    pub decision: Option<&'static str>,
    pub reason: Option<String>,
    pub message: String,
    /// The hash of the entry's evidence blob, already stored.
    pub evidence: Option<String>,
}

impl<'a, 'c> Ctx<'a, 'c> {
    fn new(tx: &'a Tx<'c>, now: Timestamp, signer: &'a Signer) -> Result<Ctx<'a, 'c>, Error> {
        let head = store::audit_head(tx)?.unwrap_or((0, ZERO_HASH.to_string()));
        Ok(Ctx {
            tx,
            now,
            signer,
            head,
            wrote_before_command: false,
            run_ended: false,
        })
    }

    /// Stores `value` as an evidence blob (its JCS bytes) and returns its hash.
    pub fn evidence(&self, value: &Value) -> Result<String, Error> {
        let bytes = jcs::canonical(value)?;
        let hash = jcs::hash_bytes(&bytes);
        store::put_evidence(self.tx, &hash, &bytes)?;
        Ok(hash)
    }

    /// Stores the canonical bytes `write` appends (a `receipts::write_*`) as an evidence blob
    /// and returns their hash.
    pub fn evidence_written(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), jcs::JcsError>,
    ) -> Result<String, Error> {
        let mut bytes = Vec::with_capacity(512);
        write(&mut bytes)?;
        let hash = jcs::hash_bytes(&bytes);
        store::put_evidence(self.tx, &hash, &bytes)?;
        Ok(hash)
    }

    /// Signs a receipt hash and stores the signature in this transaction.
    pub fn sign(&self, hash: &str) -> Result<(), Error> {
        let signature = self.signer.sign_hash(hash)?;
        let key_id = self.signer.public_key().key_id_hex();
        store::insert_signature(self.tx, hash, &key_id, &signature, self.now)?;
        Ok(())
    }

    /// A new UUIDv7 for the current time.
    pub fn new_id(&self) -> String {
        id_at(self.now)
    }

    /// Appends one entry to the audit chain.
    pub fn audit(&mut self, draft: Draft<'_>) -> Result<AuditEntry, Error> {
        let (prev_seq, prev_hash) = &self.head;
        let mut entry = AuditEntry {
            seq: prev_seq + 1,
            run_id: draft.run_id,
            at: self.now,
            actor: draft.actor.to_string(),
            action: draft.action.to_string(),
            subject: draft.subject,
            from_status: draft.from_status.map(str::to_string),
            to_status: draft.to_status.map(str::to_string),
            decision: draft.decision.map(str::to_string),
            reason: draft.reason,
            message: draft.message,
            evidence_pack_ref: draft.evidence.as_ref().map(|h| format!("sha256:{h}")),
            payload_hash: draft.evidence.unwrap_or_else(|| NULL_HASH.to_string()),
            prev_hash: prev_hash.clone(),
            entry_hash: String::new(),
        };
        entry.entry_hash = receipts::entry_hash(&entry);
        store::insert_audit(self.tx, &entry)?;
        self.head = (entry.seq, entry.entry_hash.clone());
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_at_one_instant_or_with_the_clock_stepping_back_sort_in_the_order_made() {
        let instant = Timestamp::from_micros(1_795_000_000_123_456);
        let mut ids: Vec<String> = (0..500).map(|_| id_at(instant)).collect();
        // The clock steps back a second: ids still increase.
        ids.extend((0..10).map(|_| id_at(instant.plus_seconds(-1))));
        ids.push(id_at(instant.plus_seconds(1)));
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted, ids,
            "ids sort in the order they were made, none twice"
        );
        for id in &ids {
            let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(uuid.get_version_num(), 7, "{id} is a v7 UUID");
        }
    }
}
