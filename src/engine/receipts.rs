//! The exact objects that contract §5 hashes: genesis, decision, step, gate and workflow receipts,
//! policy and definition documents, and audit entries. Building each object in one place keeps the
//! writer and the verifier hashing the same thing. The objects hashed for every run and entry are
//! also written straight to their canonical bytes (`write_*`), which is what the writer stores
//! and hashes and what `verify` recomputes; a test holds each to `jcs::canonical` of its object.

use super::jcs::{self, JcsError, Members};
use crate::model::*;
use serde_json::{json, Value};

/// The evidence of `token.created`: the token without its secret's hash, which no entry names.
pub fn token_created_evidence(t: &Token) -> Value {
    token_evidence(t, "created_at", t.created_at)
}

/// The evidence of `token.revoked`, the revocation at `revoked_at`.
pub fn token_revoked_evidence(t: &Token, revoked_at: Timestamp) -> Value {
    token_evidence(t, "revoked_at", revoked_at)
}

/// `{token_id, name, role, <when>: at}`.
fn token_evidence(t: &Token, when: &str, at: Timestamp) -> Value {
    let mut evidence = json!({"token_id": t.token_id, "name": t.name, "role": t.role.as_str()});
    evidence[when] = json!(at.to_string());
    evidence
}

/// Whether `payload_hash` is what a `gate.requested` entry carried for `g` when it was opened. A
/// gate opened before quorum gates existed was logged without `approvals_required`; for a gate
/// needing one approval that form is accepted too.
pub fn is_gate_as_requested(g: &Gate, payload_hash: &str) -> Result<bool, JcsError> {
    let mut value = gate_requested_evidence(g);
    if jcs::hash(&value)? == payload_hash {
        return Ok(true);
    }
    let pre_quorum = g.approvals_required == 1
        && value
            .as_object_mut()
            .and_then(|fields| fields.remove("approvals_required"))
            .is_some();
    Ok(pre_quorum && jcs::hash(&value)? == payload_hash)
}

/// The evidence of `gate.requested`: the gate as it was opened, every field as the contract's
/// gate object has it plus `approvals_required` (PENDING, nothing resolved, no receipt and no
/// approvals yet). Written out field by field, so that a field added to `Gate` later cannot
/// change what is recomputed for the gates of older files.
pub fn gate_requested_evidence(g: &Gate) -> Value {
    json!({
        "gate_id": g.gate_id,
        "run_id": g.run_id,
        "step_id": g.step_id,
        "attempt": g.attempt,
        "status": GateStatus::Pending,
        "reason": g.reason,
        "decision_id": g.decision_id,
        "requested_by": g.requested_by,
        "requested_at": g.requested_at,
        "expires_at": g.expires_at,
        "resolved_by": null,
        "resolved_at": null,
        "comment": null,
        "receipt_hash": null,
        "approvals_required": g.approvals_required,
    })
}

/// The evidence of a quorum gate's `gate.approval`: the approvals given so far, the one the
/// entry records last.
pub fn gate_approval_evidence<A: serde::Serialize>(
    gate_id: &str,
    approvals_required: i64,
    approvals: &[A],
) -> Value {
    json!({
        "gate_id": gate_id,
        "approvals_required": approvals_required,
        "approvals": approvals,
    })
}

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

/// `H(entry_object(e))`.
pub fn entry_hash(e: &AuditEntry) -> String {
    let mut bytes = Vec::with_capacity(512);
    write_entry(e, &mut bytes);
    jcs::hash_bytes(&bytes)
}

/// Appends `JCS(genesis_object(run, definition_hash))`.
pub fn write_genesis(run: &Run, definition_hash: &str, out: &mut Vec<u8>) {
    Members::new(out)
        .text("created_at", run.created_at)
        .str("created_by", &run.created_by)
        .str("definition_hash", definition_hash)
        .str("input_hash", &run.input_hash)
        .str("kind", "run")
        .str("run_id", &run.run_id)
        .str("workflow_id", &run.workflow_id)
        .int("workflow_version", run.workflow_version)
        .finish();
}

/// Appends `JCS(decision_object(d))`.
pub fn write_decision(d: &Decision, out: &mut Vec<u8>) {
    Members::new(out)
        .str("actor", &d.actor)
        .int("attempt", d.attempt)
        .text("decided_at", d.decided_at)
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
        .str("tier", &d.tier)
        .finish();
}

/// Appends `JCS(step_receipt_object(s))`.
pub fn write_step_receipt(s: &StepAttempt, out: &mut Vec<u8>) {
    Members::new(out)
        .str("actor", &s.actor)
        .int("attempt", s.attempt)
        .str("decision_hash", &s.decision_hash)
        .opt_text("ended_at", s.ended_at)
        .str("input_hash", &s.input_hash)
        .str("kind", "step")
        .opt_str("output_hash", s.output_hash.as_deref())
        .str("prev_receipt_hash", &s.prev_receipt_hash)
        .str("run_id", &s.run_id)
        .text("started_at", s.started_at)
        .str("status", s.status.as_str())
        .str("step_id", &s.step_id)
        .str("step_type", s.step_type.as_str())
        .finish();
}

/// Appends `JCS(gate_receipt_object(g))`. A quorum gate's receipt, which lists its approvals, is
/// canonicalized from the object.
pub fn write_gate_receipt(g: &Gate, out: &mut Vec<u8>) -> Result<(), JcsError> {
    if g.is_quorum() {
        return jcs::write_canonical(&gate_receipt_object(g), out);
    }
    Members::new(out)
        .int("attempt", g.attempt)
        .opt_str("comment", g.comment.as_deref())
        .opt_str("decision_id", g.decision_id.as_deref())
        .str("gate_id", &g.gate_id)
        .str("kind", "gate")
        .str("reason", &g.reason)
        .text("requested_at", g.requested_at)
        .str("requested_by", &g.requested_by)
        .opt_text("resolved_at", g.resolved_at)
        .opt_str("resolved_by", g.resolved_by.as_deref())
        .str("run_id", &g.run_id)
        .str("status", g.status.as_str())
        .str("step_id", &g.step_id)
        .finish();
    Ok(())
}

/// Appends `JCS(workflow_receipt_object(run, step_receipts, gate_receipts))`.
pub fn write_workflow_receipt<S: AsRef<str>>(
    run: &Run,
    step_receipts: &[S],
    gate_receipts: &[S],
    out: &mut Vec<u8>,
) {
    Members::new(out)
        .opt_text("ended_at", run.ended_at)
        .strs("gate_receipts", gate_receipts)
        .str("genesis_hash", &run.genesis_hash)
        .str("kind", "workflow")
        .str("run_id", &run.run_id)
        .str("status", run.status.as_str())
        .strs("step_receipts", step_receipts)
        .str("workflow_id", &run.workflow_id)
        .int("workflow_version", run.workflow_version)
        .finish();
}

/// Appends `JCS(entry_object(e))`: what `entry_hash` hashes.
pub fn write_entry(e: &AuditEntry, out: &mut Vec<u8>) {
    Members::new(out)
        .str("action", &e.action)
        .str("actor", &e.actor)
        .text("at", e.at)
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
        .opt_str("to_status", e.to_status.as_deref())
        .finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Until `gate_requested_evidence` existed, the engine stored `serde_json::to_value` of the
    /// gate it opened; every file written then must verify. What that gave, frozen here (not
    /// the serde output of today's `Gate`, which a new field would change).
    #[test]
    fn a_gates_requested_evidence_is_the_gate_as_it_was_serialized_when_opened() {
        let opened = |expires_at, decision_id: Option<&str>, approvals_required| Gate {
            gate_id: "g".into(),
            run_id: "r".into(),
            step_id: "decide".into(),
            attempt: 2,
            status: GateStatus::Pending,
            reason: "look".into(),
            decision_id: decision_id.map(str::to_string),
            requested_by: "agent-7".into(),
            requested_at: Timestamp::from_micros(1_000_000),
            expires_at,
            resolved_by: None,
            resolved_at: None,
            comment: None,
            receipt_hash: None,
            approvals_required,
            approvals: Vec::new(),
        };
        let stored = |expires_at: Value, decision_id: Value, approvals_required: i64| {
            json!({
                "gate_id": "g", "run_id": "r", "step_id": "decide", "attempt": 2,
                "status": "PENDING", "reason": "look", "decision_id": decision_id,
                "requested_by": "agent-7", "requested_at": "1970-01-01T00:00:01.000000Z",
                "expires_at": expires_at, "resolved_by": null, "resolved_at": null,
                "comment": null, "receipt_hash": null, "approvals_required": approvals_required,
            })
        };
        assert_eq!(
            gate_requested_evidence(&opened(None, None, 1)),
            stored(Value::Null, Value::Null, 1)
        );
        assert_eq!(
            gate_requested_evidence(&opened(
                Some(Timestamp::from_micros(9_000_000)),
                Some("d"),
                2
            )),
            stored(json!("1970-01-01T00:00:09.000000Z"), json!("d"), 2)
        );
        // A resolved gate gives what it was when opened.
        let mut resolved = opened(None, Some("d"), 2);
        let evidence = gate_requested_evidence(&resolved);
        resolved.status = GateStatus::Approved;
        resolved.resolved_by = Some("approver-1".into());
        resolved.resolved_at = Some(Timestamp::from_micros(2_000_000));
        resolved.comment = Some("fine".into());
        resolved.receipt_hash = Some("00".repeat(32));
        resolved.approvals = vec![GateApproval {
            approver: "approver-1".into(),
            approved_at: Timestamp::from_micros(2_000_000),
            comment: None,
        }];
        assert_eq!(gate_requested_evidence(&resolved), evidence);
    }

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
        let h = entry_hash(&e);
        let mut changed = e.clone();
        changed.reason = Some("x".into());
        assert_ne!(h, entry_hash(&changed));
        let mut rehashed = e.clone();
        rehashed.entry_hash = "anything".into();
        assert_eq!(h, entry_hash(&rehashed));
    }

    /// Field values that exercise the writers: escapes, non-ASCII, empty, absent, integers
    /// beyond what a double holds, times outside the years chrono prints with four digits.
    struct Gen(u64);

    impl Gen {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn text(&mut self) -> String {
            const PIECES: &[&str] = &["a", "run-1", "\"", "\\", "\n", "\u{1}", "é", "😀", " ", ""];
            (0..self.below(4))
                .map(|_| PIECES[self.below(PIECES.len())])
                .collect()
        }
        fn maybe(&mut self) -> Option<String> {
            (self.below(3) > 0).then(|| self.text())
        }
        fn int(&mut self) -> i64 {
            [
                0,
                1,
                -7,
                42,
                (1 << 53) + 1,
                -(1 << 53) - 3,
                i64::MAX,
                i64::MIN,
            ][self.below(8)]
        }
        fn time(&mut self) -> Timestamp {
            let micros = [
                1_795_428_000_123_456,
                0,
                -1,
                -62_167_219_200_000_001,
                253_402_300_800_000_000,
                i64::MAX,
            ];
            Timestamp::from_micros(micros[self.below(micros.len())])
        }
        fn maybe_time(&mut self) -> Option<Timestamp> {
            (self.below(3) > 0).then(|| self.time())
        }
    }

    fn same_bytes(written: Vec<u8>, object: &Value) {
        let expected = jcs::canonical(object).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&written),
            String::from_utf8_lossy(&expected)
        );
    }

    #[test]
    fn each_writer_writes_the_canonical_bytes_of_its_object() {
        let mut g = Gen(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let mut e = entry();
            (e.seq, e.at, e.actor, e.action, e.subject) =
                (g.int(), g.time(), g.text(), g.text(), g.text());
            (e.run_id, e.from_status, e.to_status, e.decision) =
                (g.maybe(), g.maybe(), g.maybe(), g.maybe());
            (e.reason, e.message, e.evidence_pack_ref) = (g.maybe(), g.text(), g.maybe());
            (e.payload_hash, e.prev_hash) = (g.text(), g.text());
            let mut bytes = Vec::new();
            write_entry(&e, &mut bytes);
            same_bytes(bytes, &entry_object(&e));
            assert_eq!(entry_hash(&e), jcs::hash(&entry_object(&e)).unwrap());

            let run = Run {
                run_id: g.text(),
                workflow_id: g.text(),
                workflow_version: g.int(),
                status: RunStatus::ALL[g.below(RunStatus::ALL.len())],
                created_by: g.text(),
                created_at: g.time(),
                updated_at: g.time(),
                ended_at: g.maybe_time(),
                input: Value::Null,
                input_hash: g.text(),
                next_step_id: g.maybe(),
                failure: None,
                genesis_hash: g.text(),
                receipt_hash: g.maybe(),
                attempt_base: 0,
            };
            let definition_hash = g.text();
            let mut bytes = Vec::new();
            write_genesis(&run, &definition_hash, &mut bytes);
            same_bytes(bytes, &genesis_object(&run, &definition_hash));
            let (steps, gates): (Vec<String>, Vec<String>) = (
                (0..g.below(3)).map(|_| g.text()).collect(),
                (0..g.below(3)).map(|_| g.text()).collect(),
            );
            let mut bytes = Vec::new();
            write_workflow_receipt(&run, &steps, &gates, &mut bytes);
            same_bytes(bytes, &workflow_receipt_object(&run, &steps, &gates));

            let d = Decision {
                decision_id: g.text(),
                run_id: g.text(),
                step_id: g.text(),
                attempt: g.int(),
                effect: [Effect::Allow, Effect::Deny, Effect::Flag][g.below(3)],
                reason: g.text(),
                policy_id: g.text(),
                policy_version: g.int(),
                policy_hash: g.text(),
                tier: g.text(),
                rules_triggered: (0..g.below(3)).map(|_| g.text()).collect(),
                input_hash: g.text(),
                actor: g.text(),
                decided_at: g.time(),
                decision_hash: g.text(),
            };
            let mut bytes = Vec::new();
            write_decision(&d, &mut bytes);
            same_bytes(bytes, &decision_object(&d));

            let s = StepAttempt {
                run_id: g.text(),
                step_id: g.text(),
                step_type: StepType::ALL[g.below(StepType::ALL.len())],
                step_index: g.int(),
                attempt: g.int(),
                status: StepStatus::ALL[g.below(StepStatus::ALL.len())],
                actor: g.text(),
                started_at: g.time(),
                ended_at: g.maybe_time(),
                input_hash: g.text(),
                output_hash: g.maybe(),
                error: None,
                decision_id: g.text(),
                decision_hash: g.text(),
                prev_receipt_hash: g.text(),
                receipt_hash: g.maybe(),
            };
            let mut bytes = Vec::new();
            write_step_receipt(&s, &mut bytes);
            same_bytes(bytes, &step_receipt_object(&s));

            let quorum = g.below(4) == 0;
            let gate = Gate {
                gate_id: g.text(),
                run_id: g.text(),
                step_id: g.text(),
                attempt: g.int(),
                status: GateStatus::ALL[g.below(GateStatus::ALL.len())],
                reason: g.text(),
                decision_id: g.maybe(),
                requested_by: g.text(),
                requested_at: g.time(),
                expires_at: g.maybe_time(),
                resolved_by: g.maybe(),
                resolved_at: g.maybe_time(),
                comment: g.maybe(),
                receipt_hash: g.maybe(),
                approvals_required: if quorum { 2 } else { 1 },
                approvals: match quorum {
                    true => vec![GateApproval {
                        approver: g.text(),
                        approved_at: g.time(),
                        comment: g.maybe(),
                    }],
                    false => Vec::new(),
                },
            };
            let mut bytes = Vec::new();
            write_gate_receipt(&gate, &mut bytes).unwrap();
            same_bytes(bytes, &gate_receipt_object(&gate));
        }
    }

    #[test]
    fn the_null_hash_is_the_hash_of_json_null() {
        assert_eq!(jcs::hash(&Value::Null).unwrap(), NULL_HASH);
    }
}
