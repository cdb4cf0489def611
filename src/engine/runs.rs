//! The run and step-attempt lifecycle of contract §3: creating runs, requesting steps (policy
//! first), finishing attempts, gates, status changes, retries and expiry. Every state change
//! goes through `RunStatus::transition` or `StepStatus::can_become`, writes its receipt when it
//! finishes something, and leaves an audit entry.

use super::{
    jcs, policy, receipts, Ctx, Draft, Error, Outcome, StepResult, RUN_ENDED, SYSTEM_ACTOR,
};
use crate::model::*;
use crate::store;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

fn load_run(ctx: &Ctx<'_, '_>, run_id: &str) -> Result<Run, Error> {
    store::get_run(ctx.tx, run_id)?
        .ok_or_else(|| Error::not_found("unknown_run", format!("no run {run_id:?}")))
}

fn load_definition(ctx: &Ctx<'_, '_>, run: &Run) -> Result<Definition, Error> {
    store::get_definition(ctx.tx, &run.workflow_id, Some(run.workflow_version))?.ok_or_else(|| {
        store::StoreError::Corrupt(format!("run {} pins a missing definition", run.run_id)).into()
    })
}

fn step_def<'d>(def: &'d Definition, step_id: &str) -> Result<(usize, &'d StepDef), Error> {
    def.step(step_id).ok_or_else(|| {
        Error::not_found(
            "unknown_step",
            format!(
                "workflow {}@{} has no step {step_id:?}",
                def.workflow_id, def.version
            ),
        )
    })
}

/// The run's open attempt, if any. At most one exists, and it is the most recent one.
fn open_attempt(ctx: &Ctx<'_, '_>, run_id: &str) -> Result<Option<StepAttempt>, Error> {
    Ok(store::last_step(ctx.tx, run_id)?.filter(|s| s.status.is_open()))
}

/// The receipt the next finished attempt chains to: the last finished one, or the genesis.
fn chain_tip(ctx: &Ctx<'_, '_>, run: &Run) -> Result<String, Error> {
    Ok(store::last_step_receipt(ctx.tx, &run.run_id)?.unwrap_or_else(|| run.genesis_hash.clone()))
}

fn not_active(run: &Run, allowed: &[RunStatus], doing: &str) -> Error {
    Error::conflict(
        "run_not_active",
        format!("cannot {doing}: run {} is {}", run.run_id, run.status),
        json!({"current_status": run.status, "allowed": allowed}),
    )
}

fn check_transition(run: &Run, to: RunStatus) -> Result<(), Error> {
    run.status
        .transition(to, run.failure_code())
        .map(|_| ())
        .map_err(|refused| {
            let why = if refused.allowed.is_empty() {
                " (the run is final)"
            } else {
                ""
            };
            Error::conflict(
                "invalid_transition",
                format!(
                    "run {} cannot go from {} to {}{why}",
                    run.run_id, refused.from, refused.to
                ),
                json!({"current_status": refused.from, "allowed": run.status.patch_targets(run.failure_code())}),
            )
        })
}

/// A status change that does not end the run: checks, writes, audits.
fn move_run(
    ctx: &mut Ctx<'_, '_>,
    run: &mut Run,
    to: RunStatus,
    actor: &str,
    reason: Option<String>,
) -> Result<(), Error> {
    check_transition(run, to)?;
    record_move(ctx, run, to, actor, reason)
}

/// Writes an already checked status change that does not end the run, with its audit entry.
fn record_move(
    ctx: &mut Ctx<'_, '_>,
    run: &mut Run,
    to: RunStatus,
    actor: &str,
    reason: Option<String>,
) -> Result<(), Error> {
    let from = run.status;
    run.status = to;
    run.updated_at = ctx.now;
    store::update_run(ctx.tx, run)?;
    ctx.audit(Draft {
        run_id: Some(run.run_id.clone()),
        actor,
        action: "run.status_changed",
        subject: format!("run:{}", run.run_id),
        from_status: Some(from.as_str()),
        to_status: Some(to.as_str()),
        reason,
        message: format!("Run {} {from} -> {to}", run.run_id),
        ..Draft::default()
    })?;
    Ok(())
}

/// Finishes an attempt: sets its status and end, hashes its result, chains and stores its receipt.
/// The caller writes the row (insert for an attempt created final, update otherwise) and audits.
fn seal_attempt(
    ctx: &Ctx<'_, '_>,
    run: &Run,
    step: &mut StepAttempt,
    status: StepStatus,
    result: &Value,
) -> Result<(), Error> {
    step.status = status;
    step.ended_at = Some(ctx.now);
    step.output_hash = Some(ctx.evidence(result)?);
    step.prev_receipt_hash = chain_tip(ctx, run)?;
    step.receipt_hash = Some(ctx.evidence_written(|out| {
        receipts::write_step_receipt(step, out);
        Ok(())
    })?);
    Ok(())
}

fn audit_attempt(
    ctx: &mut Ctx<'_, '_>,
    step: &StepAttempt,
    from: Option<StepStatus>,
    actor: &str,
) -> Result<(), Error> {
    let (action, verb) = match step.status {
        StepStatus::Started => ("step.started", "started"),
        StepStatus::Completed => ("step.completed", "completed"),
        StepStatus::Failed => ("step.failed", "failed"),
        StepStatus::Denied => ("step.denied", "denied"),
        StepStatus::Rejected => ("step.rejected", "rejected"),
        StepStatus::AwaitingApproval => ("step.awaiting_approval", "awaits approval"),
    };
    ctx.audit(Draft {
        run_id: Some(step.run_id.clone()),
        actor,
        action,
        subject: format!("step:{}#{}", step.step_id, step.attempt),
        from_status: from.map(StepStatus::as_str),
        to_status: Some(step.status.as_str()),
        reason: step.error.as_ref().map(Value::to_string),
        message: format!(
            "Step {} ({}) attempt {} {verb}",
            step.step_id, step.step_type, step.attempt
        ),
        evidence: step.receipt_hash.clone(),
        ..Draft::default()
    })?;
    Ok(())
}

/// Finishes an open attempt as `status`, writes it and audits it.
fn close_attempt(
    ctx: &mut Ctx<'_, '_>,
    run: &Run,
    mut step: StepAttempt,
    status: StepStatus,
    error: Option<Value>,
    actor: &str,
) -> Result<StepAttempt, Error> {
    let from = step.status;
    debug_assert!(from.can_become(status), "{from} -> {status}");
    let result = match (&status, &error) {
        (StepStatus::Failed, error) => json!({"error": error}),
        _ => Value::Null,
    };
    step.error = error;
    seal_attempt(ctx, run, &mut step, status, &result)?;
    store::update_step(ctx.tx, &step)?;
    audit_attempt(ctx, &step, Some(from), actor)?;
    Ok(step)
}

/// Resolves a PENDING gate as `status`, stores its receipt and audits it.
fn close_gate(
    ctx: &mut Ctx<'_, '_>,
    gate: &mut Gate,
    status: GateStatus,
    actor: &str,
    comment: Option<&str>,
) -> Result<(), Error> {
    gate.status = status;
    gate.resolved_by = Some(actor.to_string());
    gate.resolved_at = Some(ctx.now);
    gate.comment = comment.map(str::to_string);
    gate.receipt_hash = Some(ctx.evidence_written(|out| receipts::write_gate_receipt(gate, out))?);
    store::update_gate(ctx.tx, gate)?;
    let (action, decision) = match status {
        GateStatus::Approved => ("gate.resolved", Some("approve")),
        GateStatus::Rejected => ("gate.resolved", Some("reject")),
        GateStatus::Expired => ("gate.expired", None),
        _ => ("gate.cancelled", None),
    };
    ctx.audit(Draft {
        run_id: Some(gate.run_id.clone()),
        actor,
        action,
        subject: format!("gate:{}", gate.gate_id),
        from_status: Some(GateStatus::Pending.as_str()),
        to_status: Some(status.as_str()),
        decision,
        reason: comment.map(str::to_string),
        message: format!(
            "Gate {} on step {}#{} {}",
            gate.gate_id,
            gate.step_id,
            gate.attempt,
            status.as_str().to_lowercase()
        ),
        evidence: gate.receipt_hash.clone(),
    })?;
    Ok(())
}

/// Ends a run as COMPLETED, FAILED or CANCELLED: cancels its PENDING gates, closes its open
/// attempt, and writes the workflow receipt with the status in one update.
/// `note` is the reason a client gave for a cancel; a failure carries its own.
fn end_run(
    ctx: &mut Ctx<'_, '_>,
    run: &mut Run,
    to: RunStatus,
    failure: Option<Failure>,
    note: Option<&str>,
    actor: &str,
) -> Result<(), Error> {
    check_transition(run, to)?;
    for mut gate in store::gates_of_run(ctx.tx, &run.run_id)? {
        if gate.status == GateStatus::Pending {
            close_gate(ctx, &mut gate, GateStatus::Cancelled, actor, None)?;
        }
    }
    if let Some(open) = open_attempt(ctx, &run.run_id)? {
        match open.status {
            StepStatus::AwaitingApproval => {
                close_attempt(ctx, run, open, StepStatus::Rejected, None, actor)?
            }
            _ => {
                let error = json!({"code": RUN_ENDED, "reason": to.as_str()});
                close_attempt(ctx, run, open, StepStatus::Failed, Some(error), actor)?
            }
        };
    }
    let from = run.status;
    run.status = to;
    run.updated_at = ctx.now;
    run.ended_at = Some(ctx.now);
    run.failure = failure;
    let step_receipts = store::step_receipts(ctx.tx, &run.run_id)?;
    let gate_receipts: Vec<String> = store::gates_of_run(ctx.tx, &run.run_id)?
        .into_iter()
        .filter_map(|g| g.receipt_hash)
        .collect();
    let receipt_hash = ctx.evidence_written(|out| {
        receipts::write_workflow_receipt(run, &step_receipts, &gate_receipts, out);
        Ok(())
    })?;
    ctx.sign(&receipt_hash)?;
    run.receipt_hash = Some(receipt_hash);
    store::update_run(ctx.tx, run)?;
    let action = match to {
        RunStatus::Completed => "run.completed",
        RunStatus::Cancelled => "run.cancelled",
        _ => "run.failed",
    };
    ctx.audit(Draft {
        run_id: Some(run.run_id.clone()),
        actor,
        action,
        subject: format!("run:{}", run.run_id),
        from_status: Some(from.as_str()),
        to_status: Some(to.as_str()),
        reason: run
            .failure
            .as_ref()
            .map(|f| f.reason.clone())
            .or_else(|| note.map(str::to_string)),
        message: match &run.failure {
            Some(f) => format!("Run {} {from} -> {to} ({})", run.run_id, f.code.as_str()),
            None => format!("Run {} {from} -> {to}", run.run_id),
        },
        decision: None,
        evidence: run.receipt_hash.clone(),
    })?;
    ctx.run_ended = true;
    Ok(())
}

/// A PENDING gate on `step_id#attempt`, requested now by `actor`; not stored yet.
fn new_gate(
    ctx: &Ctx<'_, '_>,
    run: &Run,
    step_id: &str,
    attempt: i64,
    reason: &str,
    actor: &str,
) -> Gate {
    Gate {
        gate_id: ctx.new_id(),
        run_id: run.run_id.clone(),
        step_id: step_id.to_string(),
        attempt,
        status: GateStatus::Pending,
        reason: reason.to_string(),
        decision_id: None,
        requested_by: actor.to_string(),
        requested_at: ctx.now,
        expires_at: None,
        resolved_by: None,
        resolved_at: None,
        comment: None,
        receipt_hash: None,
        approvals_required: 1,
        approvals: Vec::new(),
    }
}

/// Stores a new gate and audits its opening.
fn open_gate(ctx: &mut Ctx<'_, '_>, gate: Gate) -> Result<Gate, Error> {
    store::insert_gate(ctx.tx, &gate)?;
    let evidence = ctx.evidence(&receipts::gate_requested_evidence(&gate))?;
    ctx.audit(Draft {
        run_id: Some(gate.run_id.clone()),
        actor: &gate.requested_by,
        action: "gate.requested",
        subject: format!("gate:{}", gate.gate_id),
        to_status: Some(GateStatus::Pending.as_str()),
        reason: Some(gate.reason.clone()),
        message: format!(
            "Gate {} opened on step {}#{}",
            gate.gate_id, gate.step_id, gate.attempt
        ),
        evidence: Some(evidence),
        ..Draft::default()
    })?;
    Ok(gate)
}

pub(super) fn create_run(
    ctx: &mut Ctx<'_, '_>,
    workflow_id: &str,
    input: &Value,
    actor: &str,
) -> Result<Outcome, Error> {
    let def = store::get_definition(ctx.tx, workflow_id, None)?.ok_or_else(|| {
        Error::not_found(
            "unknown_workflow",
            format!("no workflow definition {workflow_id:?}"),
        )
    })?;
    let mut run = Run {
        run_id: ctx.new_id(),
        workflow_id: def.workflow_id.clone(),
        workflow_version: def.version,
        status: RunStatus::Pending,
        created_by: actor.to_string(),
        created_at: ctx.now,
        updated_at: ctx.now,
        ended_at: None,
        input: input.clone(),
        input_hash: ctx.evidence(input)?,
        next_step_id: def.steps.first().map(|s| s.step_id.clone()),
        failure: None,
        genesis_hash: String::new(),
        receipt_hash: None,
        attempt_base: 0,
    };
    run.genesis_hash = ctx.evidence_written(|out| {
        receipts::write_genesis(&run, &def.definition_hash, out);
        Ok(())
    })?;
    store::insert_run(ctx.tx, &run)?;
    ctx.audit(Draft {
        run_id: Some(run.run_id.clone()),
        actor,
        action: "run.created",
        subject: format!("run:{}", run.run_id),
        to_status: Some(RunStatus::Pending.as_str()),
        message: format!(
            "Run {} of workflow {}@{} created by {actor}",
            run.run_id, def.workflow_id, def.version
        ),
        evidence: Some(run.genesis_hash.clone()),
        ..Draft::default()
    })?;
    Ok(Outcome::Run(run))
}

thread_local! {
    /// The parsed rules of the policy versions decided with on this thread (the writer's), by
    /// `policy_hash`. A hash names one policy document, rules included, and rules are kept only
    /// after the document they were read with hashed to its stored `policy_hash`; so an entry is
    /// right for every row with that hash, whether or not the transaction that read it commits.
    static POLICY_RULES: RefCell<HashMap<String, Rc<Vec<policy::Rule>>>> = RefCell::default();
}

/// How many policy versions `POLICY_RULES` keeps before it starts afresh.
const MAX_CACHED_POLICIES: usize = 256;

/// The parsed rules of `policy`: kept ones when `latest_policy_unless_known` left them out,
/// else parsed from the row (and kept when the document hashes to its `policy_hash`).
fn policy_rules(ctx: &Ctx<'_, '_>, policy: &Policy) -> Result<Rc<Vec<policy::Rule>>, Error> {
    let kept = POLICY_RULES.with(|rules| rules.borrow().get(&policy.policy_hash).cloned());
    if let Some(rules) = kept {
        return Ok(rules);
    }
    let policy_id = &policy.policy_id;
    let corrupt = |e: String| store::StoreError::Corrupt(format!("stored policy {policy_id}: {e}"));
    let mut read = policy.clone();
    if read.rules.is_null() {
        // Forgotten since the row was read (cannot happen on one thread); read it whole.
        read = store::get_policy(ctx.tx, policy_id, Some(policy.version))?
            .ok_or_else(|| corrupt("missing".to_string()))?;
    }
    let rules = Rc::new(policy::parse_rules(&read.rules).map_err(|e| corrupt(e.to_string()))?);
    if jcs::hash(&receipts::policy_document(&read))? == read.policy_hash {
        POLICY_RULES.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() >= MAX_CACHED_POLICIES {
                kept.clear();
            }
            kept.insert(read.policy_hash.clone(), rules.clone());
        });
    }
    Ok(rules)
}

pub(super) fn request_step(
    ctx: &mut Ctx<'_, '_>,
    run_id: &str,
    step_id: &str,
    input: &Value,
    actor: &str,
) -> Result<Outcome, Error> {
    let mut run = load_run(ctx, run_id)?;
    let def = load_definition(ctx, &run)?;
    let (step_index, step) = step_def(&def, step_id)?;
    if !matches!(run.status, RunStatus::Pending | RunStatus::Running) {
        return Err(not_active(
            &run,
            &[RunStatus::Pending, RunStatus::Running],
            "request a step",
        ));
    }
    if let Some(open) = open_attempt(ctx, run_id)? {
        return Err(Error::conflict(
            "attempt_open",
            format!(
                "attempt {} of step {} is still {}; one attempt may be open at a time",
                open.attempt, open.step_id, open.status
            ),
            json!({"step_id": open.step_id, "attempt": open.attempt, "status": open.status}),
        ));
    }
    if run.next_step_id.as_deref() != Some(step_id) {
        return Err(Error::conflict(
            "step_out_of_order",
            format!(
                "step {step_id} is out of order; the next step is {}",
                run.next_step_id
                    .as_deref()
                    .unwrap_or("none (every step completed)")
            ),
            json!({"expected_step_id": run.next_step_id}),
        ));
    }
    let previous = store::max_attempt(ctx.tx, run_id, step_id)?;
    if previous - run.attempt_base >= step.max_attempts {
        return Err(Error::conflict(
            "attempts_exhausted",
            format!("step {step_id} has used its {} attempts", step.max_attempts),
            json!({"max_attempts": step.max_attempts}),
        ));
    }
    let attempt = previous + 1;
    if run.status == RunStatus::Pending {
        move_run(
            ctx,
            &mut run,
            RunStatus::Running,
            actor,
            Some(format!("first step {step_id} requested")),
        )?;
    }

    // Evaluate the policy in force now on the evidence the decision is made from.
    let policy_id = step.policy_id.as_deref().unwrap_or(&def.policy_id);
    let known = |hash: &str| POLICY_RULES.with(|rules| rules.borrow().contains_key(hash));
    let policy = store::latest_policy_unless_known(ctx.tx, policy_id, known)?
        .ok_or_else(|| store::StoreError::Corrupt(format!("policy {policy_id} is missing")))?;
    let rules = policy_rules(ctx, &policy)?;
    let agent = match store::get_agent(ctx.tx, actor)? {
        Some(agent) => {
            serde_json::to_value(agent).map_err(|e| store::StoreError::Corrupt(e.to_string()))?
        }
        None => Value::Null,
    };
    let context = json!({
        "run": serde_json::to_value(&run).map_err(|e| store::StoreError::Corrupt(e.to_string()))?,
        "step": {"step_id": step_id, "step_type": step.step_type, "attempt": attempt},
        "input": input,
        "actor": actor,
        "agent": agent,
    });
    let input_hash = ctx.evidence(input)?;
    let context_hash = ctx.evidence(&context)?;
    let evaluation = policy::evaluate(&rules, policy.default_effect, &context);
    let evaluation_gate = evaluation.gate;

    let mut decision = Decision {
        decision_id: ctx.new_id(),
        run_id: run_id.to_string(),
        step_id: step_id.to_string(),
        attempt,
        effect: evaluation.effect,
        reason: evaluation.reason,
        policy_id: policy.policy_id.clone(),
        policy_version: policy.version,
        policy_hash: policy.policy_hash.clone(),
        tier: policy.tier.clone(),
        rules_triggered: evaluation.rules_triggered,
        input_hash: input_hash.clone(),
        actor: actor.to_string(),
        decided_at: ctx.now,
        decision_hash: String::new(),
    };
    decision.decision_hash = ctx.evidence_written(|out| {
        receipts::write_decision(&decision, out);
        Ok(())
    })?;
    store::insert_decision(ctx.tx, &decision)?;
    let subject = format!("step:{step_id}#{attempt}");
    ctx.audit(Draft {
        run_id: Some(run_id.to_string()),
        actor,
        action: "step.requested",
        subject: subject.clone(),
        message: format!(
            "Step {step_id} ({}) attempt {attempt} requested by {actor}",
            step.step_type
        ),
        evidence: Some(context_hash),
        ..Draft::default()
    })?;
    ctx.audit(Draft {
        run_id: Some(run_id.to_string()),
        actor,
        action: "policy.evaluated",
        subject,
        decision: Some(decision.effect.as_str()),
        reason: Some(decision.reason.clone()),
        message: format!(
            "Policy {}@{} (tier {}) decided {} for step {step_id} attempt {attempt}; rules triggered: [{}]",
            policy.policy_id,
            policy.version,
            policy.tier,
            decision.effect.as_str(),
            decision.rules_triggered.join(", ")
        ),
        evidence: Some(decision.decision_hash.clone()),
        ..Draft::default()
    })?;

    let mut attempt_row = StepAttempt {
        run_id: run_id.to_string(),
        step_id: step_id.to_string(),
        step_type: step.step_type,
        step_index: step_index as i64,
        attempt,
        status: StepStatus::Started,
        actor: actor.to_string(),
        started_at: ctx.now,
        ended_at: None,
        input_hash,
        output_hash: None,
        error: None,
        decision_id: decision.decision_id.clone(),
        decision_hash: decision.decision_hash.clone(),
        prev_receipt_hash: chain_tip(ctx, &run)?,
        receipt_hash: None,
    };
    let mut gate = None;
    match decision.effect {
        Effect::Allow => {
            store::insert_step(ctx.tx, &attempt_row)?;
            audit_attempt(ctx, &attempt_row, None, actor)?;
        }
        Effect::Flag => {
            // Fail-safe: a flag always opens a gate bound to this attempt; nothing can skip it.
            attempt_row.status = StepStatus::AwaitingApproval;
            store::insert_step(ctx.tx, &attempt_row)?;
            let mut flagged = new_gate(ctx, &run, step_id, attempt, &decision.reason, actor);
            flagged.decision_id = Some(decision.decision_id.clone());
            if let Some(terms) = evaluation_gate {
                flagged.expires_at = terms
                    .expires_in_s
                    .map(|seconds| ctx.now.plus_seconds(seconds));
                flagged.approvals_required = terms.approvals_required;
            }
            gate = Some(open_gate(ctx, flagged)?);
            move_run(
                ctx,
                &mut run,
                RunStatus::Paused,
                actor,
                Some(format!("step {step_id} flagged: {}", decision.reason)),
            )?;
        }
        Effect::Deny => {
            seal_attempt(
                ctx,
                &run,
                &mut attempt_row,
                StepStatus::Denied,
                &Value::Null,
            )?;
            store::insert_step(ctx.tx, &attempt_row)?;
            audit_attempt(ctx, &attempt_row, None, actor)?;
            let failure = Failure {
                code: FailureCode::PolicyDenied,
                reason: decision.reason.clone(),
                step_id: Some(step_id.to_string()),
            };
            end_run(ctx, &mut run, RunStatus::Failed, Some(failure), None, actor)?;
        }
    }
    Ok(Outcome::StepRequested {
        step: attempt_row,
        decision,
        run,
        gate,
    })
}

pub(super) fn finish_step(
    ctx: &mut Ctx<'_, '_>,
    run_id: &str,
    step_id: &str,
    result: &StepResult,
    actor: &str,
) -> Result<Outcome, Error> {
    if let StepResult::Failed { error } = result {
        if error.get("code").and_then(Value::as_str) == Some(RUN_ENDED) {
            return Err(Error::invalid(
                "invalid_value",
                "error.code",
                format!(
                    "{RUN_ENDED:?} is the code fedcore gives an attempt that its run's end \
                     closes; a step that fails on its own gives another"
                ),
            ));
        }
    }
    let mut run = load_run(ctx, run_id)?;
    let def = load_definition(ctx, &run)?;
    let (step_index, step) = step_def(&def, step_id)?;
    if run.status != RunStatus::Running {
        return Err(not_active(&run, &[RunStatus::Running], "finish a step"));
    }
    let open = match open_attempt(ctx, run_id)? {
        Some(open) if open.step_id == step_id && open.status == StepStatus::Started => open,
        Some(open) if open.step_id == step_id => {
            return Err(Error::conflict(
                "no_open_attempt",
                format!(
                    "attempt {} of step {step_id} is {}, not STARTED",
                    open.attempt, open.status
                ),
                json!({"step_id": step_id, "attempt": open.attempt, "status": open.status}),
            ))
        }
        _ => {
            return Err(Error::conflict(
                "no_open_attempt",
                format!("step {step_id} has no started attempt"),
                json!({"step_id": step_id}),
            ))
        }
    };
    if open.actor != actor {
        // The policy decided on the actor that requested the attempt (its registry entry, its
        // name), so only that actor may report what the step did.
        return Err(Error::Forbidden {
            code: "not_attempt_actor",
            message: format!(
                "{actor} may not finish attempt {} of step {step_id}: {} requested it, and the \
                 policy decided on {}",
                open.attempt, open.actor, open.actor
            ),
        });
    }
    let from = open.status;
    let mut attempt = open;
    match result {
        StepResult::Completed { output } => {
            seal_attempt(ctx, &run, &mut attempt, StepStatus::Completed, output)?;
        }
        StepResult::Failed { error } => {
            attempt.error = Some(error.clone());
            seal_attempt(
                ctx,
                &run,
                &mut attempt,
                StepStatus::Failed,
                &json!({"error": error}),
            )?;
        }
    }
    store::update_step(ctx.tx, &attempt)?;
    audit_attempt(ctx, &attempt, Some(from), actor)?;

    run.updated_at = ctx.now;
    match attempt.status {
        StepStatus::Completed => {
            run.attempt_base = 0;
            run.next_step_id = def.steps.get(step_index + 1).map(|s| s.step_id.clone());
            if run.next_step_id.is_none() {
                end_run(ctx, &mut run, RunStatus::Completed, None, None, actor)?;
            } else {
                store::update_run(ctx.tx, &run)?;
            }
        }
        _ if attempt.attempt - run.attempt_base >= step.max_attempts => {
            let failure = Failure {
                code: FailureCode::StepFailed,
                reason: format!(
                    "step {step_id} failed on its last allowed attempt ({} of {})",
                    attempt.attempt - run.attempt_base,
                    step.max_attempts
                ),
                step_id: Some(step_id.to_string()),
            };
            end_run(ctx, &mut run, RunStatus::Failed, Some(failure), None, actor)?;
        }
        _ => store::update_run(ctx.tx, &run)?,
    }
    Ok(Outcome::StepFinished { step: attempt, run })
}

pub(super) fn request_gate(
    ctx: &mut Ctx<'_, '_>,
    run_id: &str,
    step_id: &str,
    reason: &str,
    expires_in_s: Option<i64>,
    actor: &str,
) -> Result<Outcome, Error> {
    let mut run = load_run(ctx, run_id)?;
    let def = load_definition(ctx, &run)?;
    step_def(&def, step_id)?;
    let expires_at = match expires_in_s {
        None => None,
        Some(s) if (1..=MAX_GATE_SECONDS).contains(&s) => Some(ctx.now.plus_seconds(s)),
        Some(_) => {
            return Err(Error::invalid(
                "invalid_value",
                "expires_in_s",
                format!("expires_in_s must be from 1 to {MAX_GATE_SECONDS} seconds"),
            ))
        }
    };
    if !matches!(run.status, RunStatus::Running | RunStatus::Paused) {
        return Err(not_active(
            &run,
            &[RunStatus::Running, RunStatus::Paused],
            "request a gate",
        ));
    }
    let open = open_attempt(ctx, run_id)?;
    // A gate stops the run, and one left to expire fails it for good: only the run's creator,
    // or the actor whose attempt the gate would bind to, may ask for one.
    let open_actor = open
        .as_ref()
        .filter(|o| o.step_id == step_id)
        .map(|o| o.actor.as_str());
    if actor != run.created_by && open_actor != Some(actor) {
        return Err(Error::Forbidden {
            code: "not_run_actor",
            message: format!(
                "{actor} may not request a gate on run {run_id}: only its creator ({}) or the \
                 actor of the step's open attempt may",
                run.created_by
            ),
        });
    }
    let attempt = match open {
        Some(open) if open.step_id == step_id => open.attempt,
        Some(open) => {
            return Err(Error::conflict(
                "attempt_open",
                format!(
                    "attempt {} of step {} is open; a gate binds to it or to the next step",
                    open.attempt, open.step_id
                ),
                json!({"step_id": open.step_id, "attempt": open.attempt, "status": open.status}),
            ))
        }
        None if run.next_step_id.as_deref() == Some(step_id) => {
            store::max_attempt(ctx.tx, run_id, step_id)? + 1
        }
        None => {
            return Err(Error::conflict(
                "step_out_of_order",
                format!(
                    "a gate binds to an open attempt or the next step; the next step is {}",
                    run.next_step_id
                        .as_deref()
                        .unwrap_or("none (every step completed)")
                ),
                json!({"expected_step_id": run.next_step_id}),
            ))
        }
    };
    let mut requested = new_gate(ctx, &run, step_id, attempt, reason, actor);
    requested.expires_at = expires_at;
    let gate = open_gate(ctx, requested)?;
    if run.status == RunStatus::Running {
        move_run(
            ctx,
            &mut run,
            RunStatus::Paused,
            actor,
            Some(format!("gate requested on step {step_id}: {reason}")),
        )?;
    }
    Ok(Outcome::GateOpened(gate))
}

pub(super) fn resolve_gate(
    ctx: &mut Ctx<'_, '_>,
    run_id: &str,
    gate_id: &str,
    approve: bool,
    comment: Option<&str>,
    actor: &str,
) -> Result<Outcome, Error> {
    let mut run = load_run(ctx, run_id)?;
    let mut gate = store::get_gate(ctx.tx, gate_id)?
        .filter(|g| g.run_id == run_id)
        .ok_or_else(|| {
            Error::not_found(
                "unknown_gate",
                format!("run {run_id} has no gate {gate_id:?}"),
            )
        })?;
    if gate.status != GateStatus::Pending {
        return Err(Error::conflict(
            "gate_already_resolved",
            format!("gate {gate_id} is already {}", gate.status),
            json!({"status": gate.status, "resolved_by": gate.resolved_by}),
        ));
    }
    if approve && (actor == gate.requested_by || actor == run.created_by) {
        return Err(Error::Forbidden {
            code: "self_approval",
            message: format!(
                "{actor} may not approve this gate: the approver must differ from the requester ({}) and the run's creator ({})",
                gate.requested_by, run.created_by
            ),
        });
    }
    if approve && gate.is_quorum() {
        approve_quorum_gate(ctx, &mut gate, actor, comment)?;
    } else if approve {
        close_gate(ctx, &mut gate, GateStatus::Approved, actor, comment)?;
    } else {
        // Ending the run closes the open attempt as the contract says: one awaiting approval is
        // REJECTED, one already started is FAILED with run_ended.
        close_gate(ctx, &mut gate, GateStatus::Rejected, actor, comment)?;
        let failure = Failure {
            code: FailureCode::GateRejected,
            reason: comment.map_or_else(
                || format!("gate {gate_id} rejected by {actor}"),
                str::to_string,
            ),
            step_id: Some(gate.step_id.clone()),
        };
        end_run(ctx, &mut run, RunStatus::Failed, Some(failure), None, actor)?;
    }
    Ok(Outcome::GateResolved { gate, run })
}

/// One approval of a quorum gate: recorded and audited on its own; the gate is APPROVED (with
/// its receipt) when the last required approver has approved. Each approver counts once.
fn approve_quorum_gate(
    ctx: &mut Ctx<'_, '_>,
    gate: &mut Gate,
    actor: &str,
    comment: Option<&str>,
) -> Result<(), Error> {
    if gate.approvals.iter().any(|a| a.approver == actor) {
        return Err(Error::conflict(
            "duplicate_approval",
            format!(
                "{actor} has already approved gate {}; it needs {} distinct approvers",
                gate.gate_id, gate.approvals_required
            ),
            json!({"approvals": gate.approvals.len(), "approvals_required": gate.approvals_required}),
        ));
    }
    let approval = GateApproval {
        approver: actor.to_string(),
        approved_at: ctx.now,
        comment: comment.map(str::to_string),
    };
    store::insert_approval(ctx.tx, &gate.gate_id, &approval)?;
    gate.approvals.push(approval);
    let given = gate.approvals.len() as i64;
    let evidence = ctx.evidence(&receipts::gate_approval_evidence(
        &gate.gate_id,
        gate.approvals_required,
        &gate.approvals,
    ))?;
    ctx.audit(Draft {
        run_id: Some(gate.run_id.clone()),
        actor,
        action: "gate.approval",
        subject: format!("gate:{}", gate.gate_id),
        decision: Some("approve"),
        reason: comment.map(str::to_string),
        message: format!(
            "Gate {} approved by {actor} ({given} of {})",
            gate.gate_id, gate.approvals_required
        ),
        evidence: Some(evidence),
        ..Draft::default()
    })?;
    if given >= gate.approvals_required {
        close_gate(ctx, gate, GateStatus::Approved, actor, comment)?;
    }
    Ok(())
}

pub(super) fn change_status(
    ctx: &mut Ctx<'_, '_>,
    run_id: &str,
    to: RunStatus,
    reason: Option<&str>,
    actor: &str,
) -> Result<Outcome, Error> {
    let mut run = load_run(ctx, run_id)?;
    if matches!(to, RunStatus::Pending | RunStatus::Completed) {
        return Err(Error::invalid(
            "invalid_value",
            "status",
            "status must be one of PAUSED, RUNNING, CANCELLED, FAILED",
        ));
    }
    let targets = run.status.patch_targets(run.failure_code());
    if !targets.contains(&to) {
        let why = if targets.is_empty() {
            " (the run is final)"
        } else {
            ""
        };
        return Err(Error::conflict(
            "invalid_transition",
            format!(
                "run {} cannot be set from {} to {to}{why}",
                run.run_id, run.status
            ),
            json!({"current_status": run.status, "allowed": targets}),
        ));
    }
    match to {
        RunStatus::Paused => move_run(ctx, &mut run, to, actor, reason.map(str::to_string))?,
        RunStatus::Running if run.status == RunStatus::Paused => {
            resume(ctx, &mut run, reason, actor)?
        }
        RunStatus::Running if run.status == RunStatus::Failed => {
            retry(ctx, &mut run, reason, actor)?
        }
        RunStatus::Cancelled => end_run(ctx, &mut run, to, None, reason, actor)?,
        RunStatus::Failed => {
            check_transition(&run, to)?;
            let step_id = open_attempt(ctx, run_id)?.map(|s| s.step_id);
            let failure = Failure {
                code: FailureCode::Declared,
                reason: reason
                    .map_or_else(|| format!("declared failed by {actor}"), str::to_string),
                step_id,
            };
            end_run(ctx, &mut run, to, Some(failure), None, actor)?;
        }
        // Excluded above: not patch targets, or refused as invalid values.
        RunStatus::Running | RunStatus::Pending | RunStatus::Completed => {}
    }
    Ok(Outcome::Run(run))
}

/// `PAUSED → RUNNING`: refused while a gate is PENDING or REJECTED; an attempt awaiting approval
/// whose gate was approved starts now.
fn resume(
    ctx: &mut Ctx<'_, '_>,
    run: &mut Run,
    reason: Option<&str>,
    actor: &str,
) -> Result<(), Error> {
    check_transition(run, RunStatus::Running)?;
    let gates = store::gates_of_run(ctx.tx, &run.run_id)?;
    let blocking: Vec<&Gate> = gates
        .iter()
        .filter(|g| matches!(g.status, GateStatus::Pending | GateStatus::Rejected))
        .collect();
    if !blocking.is_empty() {
        return Err(Error::conflict(
            "gates_unresolved",
            format!(
                "run {} cannot resume: gate {} is {}",
                run.run_id, blocking[0].gate_id, blocking[0].status
            ),
            json!({
                "current_status": run.status,
                // Resuming is the change refused; what the run may do meanwhile is the rest.
                "allowed": run.status.patch_targets(run.failure_code()).into_iter()
                    .filter(|&to| to != RunStatus::Running).collect::<Vec<_>>(),
                "gates": blocking.iter().map(|g| json!({"gate_id": g.gate_id, "status": g.status})).collect::<Vec<_>>(),
            }),
        ));
    }
    move_run(
        ctx,
        run,
        RunStatus::Running,
        actor,
        reason.map(str::to_string),
    )?;
    if let Some(mut open) = open_attempt(ctx, &run.run_id)? {
        let approved = gates.iter().any(|g| {
            g.status == GateStatus::Approved
                && g.step_id == open.step_id
                && g.attempt == open.attempt
        });
        if open.status == StepStatus::AwaitingApproval && approved {
            open.status = StepStatus::Started;
            store::update_step(ctx.tx, &open)?;
            audit_attempt(ctx, &open, Some(StepStatus::AwaitingApproval), actor)?;
        }
    }
    Ok(())
}

/// `FAILED → RUNNING` for a retryable failure: the failed step gets `max_attempts` more attempts.
fn retry(
    ctx: &mut Ctx<'_, '_>,
    run: &mut Run,
    reason: Option<&str>,
    actor: &str,
) -> Result<(), Error> {
    check_transition(run, RunStatus::Running)?;
    run.attempt_base = match &run.next_step_id {
        Some(step_id) => store::max_attempt(ctx.tx, &run.run_id, step_id)?,
        None => 0,
    };
    // The transition was checked against the failure being retried; clearing it comes after.
    run.failure = None;
    run.ended_at = None;
    run.receipt_hash = None;
    record_move(
        ctx,
        run,
        RunStatus::Running,
        actor,
        Some(reason.map_or_else(|| "retry".to_string(), str::to_string)),
    )
}

/// Expires the run's PENDING gates whose deadline has passed: fail closed, `gate_expired`.
pub(super) fn expire_gates_of_run(ctx: &mut Ctx<'_, '_>, run_id: &str) -> Result<(), Error> {
    let due: Vec<Gate> = store::gates_of_run(ctx.tx, run_id)?
        .into_iter()
        .filter(|g| g.status == GateStatus::Pending && g.expires_at.is_some_and(|t| t <= ctx.now))
        .collect();
    let Some(first) = due.first().map(|g| (g.gate_id.clone(), g.step_id.clone())) else {
        return Ok(());
    };
    let mut run = load_run(ctx, run_id)?;
    // Every gate past its deadline is EXPIRED; only gates still in time are CANCELLED by the end.
    for mut gate in due {
        close_gate(ctx, &mut gate, GateStatus::Expired, SYSTEM_ACTOR, None)?;
    }
    let failure = Failure {
        code: FailureCode::GateExpired,
        reason: format!("gate {} expired without a decision", first.0),
        step_id: Some(first.1),
    };
    end_run(
        ctx,
        &mut run,
        RunStatus::Failed,
        Some(failure),
        None,
        SYSTEM_ACTOR,
    )?;
    ctx.wrote_before_command = true;
    Ok(())
}

/// The background sweep: expires due gates across all runs.
pub(super) fn expire_all_gates(ctx: &mut Ctx<'_, '_>) -> Result<Outcome, Error> {
    let run_ids = store::runs_with_expired_gates(ctx.tx, ctx.now, 100)?;
    for run_id in &run_ids {
        expire_gates_of_run(ctx, run_id)?;
    }
    Ok(Outcome::Expired {
        n_runs: run_ids.len(),
    })
}
