//! The exact objects that contract §5 hashes: genesis, decision, step, gate and workflow receipts,
//! policy and definition documents, and audit entries. Building each object in one place keeps the
//! writer and the verifier hashing the same thing.

use super::jcs::{self, JcsError, ObjectWriter};
use crate::model::*;
use serde_json::{json, Value};

/// `{"kind":"run", …}`: the object whose hash starts a run's receipt chain.
pub fn genesis_object(run: &Run, definition_hash: &str) -> Value {
    json!({
        "kind": "run",
        "run_id": run.run_id,
        "workflow_id": run.workflow_id,
        "workflow_version": run.workflow_version,
        "definition_hash": definition_hash,
        "created_by": run.created_by,
        "created_at": run.created_at,
        "input_hash": run.input_hash,
    })
}

/// The decision without `decision_hash`; `decision_hash = H(this)`.
pub fn decision_object(d: &Decision) -> Value {
    json!({
        "decision_id": d.decision_id,
        "run_id": d.run_id,
        "step_id": d.step_id,
        "attempt": d.attempt,
        "effect": d.effect,
        "reason": d.reason,
        "policy_id": d.policy_id,
        "policy_version": d.policy_version,
        "policy_hash": d.policy_hash,
        "tier": d.tier,
        "rules_triggered": d.rules_triggered,
        "input_hash": d.input_hash,
        "actor": d.actor,
        "decided_at": d.decided_at,
    })
}

/// The canonical bytes of `decision_object(d)`, written without building it.
pub fn decision_canonical(d: &Decision) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut o = ObjectWriter::new(&mut out);
    o.str("actor", &d.actor)
        .int("attempt", d.attempt)
        .str("decided_at", &d.decided_at.to_string())
        .str("decision_id", &d.decision_id)
        .str("effect", d.effect.as_str())
        .str("input_hash", &d.input_hash)
        .str("policy_hash", &d.policy_hash)
        .str("policy_id", &d.policy_id)
        .int("policy_version", d.policy_version)
        .str("reason", &d.reason)
        .strs("rules_triggered", &d.rules_triggered)
        .str("run_id", &d.run_id)
        .str("step_id", &d.step_id)
        .str("tier", &d.tier);
    o.finish();
    out
}

/// `{"kind":"step", …}` of a finished attempt.
pub fn step_receipt_object(s: &StepAttempt) -> Value {
    json!({
        "kind": "step",
        "run_id": s.run_id,
        "step_id": s.step_id,
        "step_type": s.step_type,
        "attempt": s.attempt,
        "status": s.status,
        "actor": s.actor,
        "started_at": s.started_at,
        "ended_at": s.ended_at,
        "input_hash": s.input_hash,
        "output_hash": s.output_hash,
        "decision_hash": s.decision_hash,
        "prev_receipt_hash": s.prev_receipt_hash,
    })
}

/// The canonical bytes of `step_receipt_object(s)`, written without building it.
pub fn step_receipt_canonical(s: &StepAttempt) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut o = ObjectWriter::new(&mut out);
    o.str("actor", &s.actor)
        .int("attempt", s.attempt)
        .str("decision_hash", &s.decision_hash)
        .opt_str("ended_at", s.ended_at.map(|t| t.to_string()).as_deref())
        .str("input_hash", &s.input_hash)
        .str("kind", "step")
        .opt_str("output_hash", s.output_hash.as_deref())
        .str("prev_receipt_hash", &s.prev_receipt_hash)
        .str("run_id", &s.run_id)
        .str("started_at", &s.started_at.to_string())
        .str("status", s.status.as_str())
        .str("step_id", &s.step_id)
        .str("step_type", s.step_type.as_str());
    o.finish();
    out
}

/// `{"kind":"gate", …}` of a gate that left PENDING. A quorum gate's receipt also names how many
/// approvals it needed and each one given; other gates' receipts are exactly the contract's.
pub fn gate_receipt_object(g: &Gate) -> Value {
    let mut receipt = json!({
        "kind": "gate",
        "gate_id": g.gate_id,
        "run_id": g.run_id,
        "step_id": g.step_id,
        "attempt": g.attempt,
        "status": g.status,
        "reason": g.reason,
        "decision_id": g.decision_id,
        "requested_by": g.requested_by,
        "requested_at": g.requested_at,
        "resolved_by": g.resolved_by,
        "resolved_at": g.resolved_at,
        "comment": g.comment,
    });
    if g.is_quorum() {
        receipt["approvals_required"] = json!(g.approvals_required);
        receipt["approvals"] = json!(g.approvals);
    }
    receipt
}

/// `{"kind":"workflow", …}` of a run that ended.
pub fn workflow_receipt_object(
    run: &Run,
    step_receipts: &[String],
    gate_receipts: &[String],
) -> Value {
    json!({
        "kind": "workflow",
        "run_id": run.run_id,
        "workflow_id": run.workflow_id,
        "workflow_version": run.workflow_version,
        "status": run.status,
        "ended_at": run.ended_at,
        "genesis_hash": run.genesis_hash,
        "step_receipts": step_receipts,
        "gate_receipts": gate_receipts,
    })
}

/// The stored policy document; `policy_hash = H(this)`.
pub fn policy_document(p: &Policy) -> Value {
    json!({
        "policy_id": p.policy_id,
        "version": p.version,
        "tier": p.tier,
        "default_effect": p.default_effect,
        "rules": p.rules,
    })
}

/// The stored definition document; `definition_hash = H(this)`.
pub fn definition_document(d: &Definition) -> Value {
    json!({
        "workflow_id": d.workflow_id,
        "version": d.version,
        "policy_id": d.policy_id,
        "steps": d.steps,
    })
}

/// The entry without `entry_hash`; `entry_hash = H(this)`.
pub fn entry_object(e: &AuditEntry) -> Value {
    json!({
        "seq": e.seq,
        "run_id": e.run_id,
        "at": e.at,
        "actor": e.actor,
        "action": e.action,
        "subject": e.subject,
        "from_status": e.from_status,
        "to_status": e.to_status,
        "decision": e.decision,
        "reason": e.reason,
        "message": e.message,
        "evidence_pack_ref": e.evidence_pack_ref,
        "payload_hash": e.payload_hash,
        "prev_hash": e.prev_hash,
    })
}

/// The canonical bytes of `entry_object(e)`, written without building it.
pub fn entry_canonical(e: &AuditEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut o = ObjectWriter::new(&mut out);
    o.str("action", &e.action)
        .str("actor", &e.actor)
        .str("at", &e.at.to_string())
        .opt_str("decision", e.decision.as_deref())
        .opt_str("evidence_pack_ref", e.evidence_pack_ref.as_deref())
        .opt_str("from_status", e.from_status.as_deref())
        .str("message", &e.message)
        .str("payload_hash", &e.payload_hash)
        .str("prev_hash", &e.prev_hash)
        .opt_str("reason", e.reason.as_deref())
        .opt_str("run_id", e.run_id.as_deref())
        .int("seq", e.seq)
        .str("subject", &e.subject)
        .opt_str("to_status", e.to_status.as_deref());
    o.finish();
    out
}

/// `H(entry_object(e))`.
pub fn entry_hash(e: &AuditEntry) -> Result<String, JcsError> {
    Ok(jcs::hash_bytes(&entry_canonical(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditEntry {
        AuditEntry {
            seq: 1,
            run_id: None,
            at: Timestamp::from_micros(1_000_000),
            actor: "admin".into(),
            action: "policy.put".into(),
            subject: "policy:p@1".into(),
            from_status: None,
            to_status: None,
            decision: None,
            reason: None,
            message: "Policy p version 1 stored".into(),
            evidence_pack_ref: None,
            payload_hash: NULL_HASH.into(),
            prev_hash: ZERO_HASH.into(),
            entry_hash: String::new(),
        }
    }

    #[test]
    fn an_entry_hash_covers_every_field_but_itself() {
        let e = entry();
        let object = entry_object(&e);
        assert_eq!(object.as_object().unwrap().len(), 14);
        assert!(object.get("entry_hash").is_none());
        let h = entry_hash(&e).unwrap();
        let mut changed = e.clone();
        changed.reason = Some("x".into());
        assert_ne!(h, entry_hash(&changed).unwrap());
        let mut rehashed = e.clone();
        rehashed.entry_hash = "anything".into();
        assert_eq!(h, entry_hash(&rehashed).unwrap());
    }

    /// Strings that need escaping, or sort differently as UTF-16 than as UTF-8.
    const AWKWARD: &str = "a\"b\\c\n\u{1}é\u{10000}\u{ffff}";

    #[test]
    fn entries_written_field_by_field_are_the_canonical_form_of_their_objects() {
        let mut e = entry();
        let check = |e: &AuditEntry| {
            assert_eq!(
                entry_canonical(e),
                jcs::canonical(&entry_object(e)).unwrap()
            );
            assert_eq!(entry_hash(e).unwrap(), jcs::hash(&entry_object(e)).unwrap());
        };
        check(&e);
        e.seq = i64::MAX;
        e.run_id = Some(AWKWARD.into());
        e.actor = AWKWARD.into();
        e.from_status = Some("RUNNING".into());
        e.to_status = Some("PAUSED".into());
        e.decision = Some("approve".into());
        e.reason = Some(AWKWARD.into());
        e.message = AWKWARD.into();
        e.evidence_pack_ref = Some(format!("sha256:{NULL_HASH}"));
        e.at = Timestamp::from_micros(-62_167_219_200_000_001);
        check(&e);
        e.seq = 9_007_199_254_740_993;
        e.at = Timestamp::from_micros(1_795_428_000_123_456);
        check(&e);
    }

    #[test]
    fn decisions_and_step_receipts_written_field_by_field_are_their_canonical_forms() {
        let mut d = Decision {
            decision_id: "019a8f00-0000-7000-8000-000000000002".into(),
            run_id: "019a8f00-0000-7000-8000-000000000001".into(),
            step_id: AWKWARD.into(),
            attempt: 2,
            effect: Effect::Flag,
            reason: AWKWARD.into(),
            policy_id: "bench_policy".into(),
            policy_version: 7,
            policy_hash: "2".repeat(64),
            tier: "T2".into(),
            rules_triggered: Vec::new(),
            input_hash: "d".repeat(64),
            actor: "agent-7".into(),
            decided_at: Timestamp::from_micros(1_795_428_000_000_001),
            decision_hash: "f".repeat(64),
        };
        for rules in [vec![], vec!["flag-high".to_string(), AWKWARD.to_string()]] {
            d.rules_triggered = rules;
            assert_eq!(
                decision_canonical(&d),
                jcs::canonical(&decision_object(&d)).unwrap()
            );
        }
        let mut s = StepAttempt {
            run_id: "019a8f00-0000-7000-8000-000000000001".into(),
            step_id: AWKWARD.into(),
            step_type: StepType::Transform,
            step_index: 4,
            attempt: 1,
            status: StepStatus::Denied,
            actor: AWKWARD.into(),
            started_at: Timestamp::from_micros(0),
            ended_at: None,
            input_hash: "d".repeat(64),
            output_hash: None,
            error: Some(serde_json::json!({"code": "x"})),
            decision_id: "019a8f00-0000-7000-8000-000000000002".into(),
            decision_hash: "f".repeat(64),
            prev_receipt_hash: ZERO_HASH.into(),
            receipt_hash: None,
        };
        for finished in [false, true] {
            s.ended_at = finished.then(|| Timestamp::from_micros(1_795_428_001_000_000));
            s.output_hash = finished.then(|| "e".repeat(64));
            assert_eq!(
                step_receipt_canonical(&s),
                jcs::canonical(&step_receipt_object(&s)).unwrap()
            );
        }
    }

    #[test]
    fn the_null_hash_is_the_hash_of_json_null() {
        assert_eq!(jcs::hash(&Value::Null).unwrap(), NULL_HASH);
    }
}
