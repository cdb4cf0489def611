//! The exact objects that contract §5 hashes: genesis, decision, step, gate and workflow receipts,
//! policy and definition documents, and audit entries. Building each object in one place keeps the
//! writer and the verifier hashing the same thing.

use super::jcs::{self, JcsError};
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

pub fn entry_hash(e: &AuditEntry) -> Result<String, JcsError> {
    jcs::hash(&entry_object(e))
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

    #[test]
    fn the_null_hash_is_the_hash_of_json_null() {
        assert_eq!(jcs::hash(&Value::Null).unwrap(), NULL_HASH);
    }
}
