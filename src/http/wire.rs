//! The JSON of the answers the writer thread encodes for every step, written straight from the
//! model objects instead of through a `serde_json::Value` tree. Answers have always been built as
//! `Value`s, and serde_json's `Map` (a `BTreeMap` here: no `preserve_order`) lists an object's
//! fields in the byte order of their names; so each type below writes its fields in that order,
//! which keeps every answer byte for byte what it was. The tests compare both ways of encoding.

use crate::model::{Decision, Gate, GateApproval, Run, StepAttempt};
use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;

/// A `Run` as answered: its contract fields in name order (`attempt_base` is internal).
pub struct RunJson<'a>(pub &'a Run);

impl Serialize for RunJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut o = s.serialize_struct("Run", 14)?;
        o.serialize_field("created_at", &r.created_at)?;
        o.serialize_field("created_by", &r.created_by)?;
        o.serialize_field("ended_at", &r.ended_at)?;
        // `Failure` declares `code`, `reason`, `step_id`: already in name order.
        o.serialize_field("failure", &r.failure)?;
        o.serialize_field("genesis_hash", &r.genesis_hash)?;
        o.serialize_field("input", &r.input)?;
        o.serialize_field("input_hash", &r.input_hash)?;
        o.serialize_field("next_step_id", &r.next_step_id)?;
        o.serialize_field("receipt_hash", &r.receipt_hash)?;
        o.serialize_field("run_id", &r.run_id)?;
        o.serialize_field("status", &r.status)?;
        o.serialize_field("updated_at", &r.updated_at)?;
        o.serialize_field("workflow_id", &r.workflow_id)?;
        o.serialize_field("workflow_version", &r.workflow_version)?;
        o.end()
    }
}

/// A `StepAttempt` as answered, fields in name order.
pub struct StepJson<'a>(pub &'a StepAttempt);

impl Serialize for StepJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let mut o = s.serialize_struct("StepAttempt", 16)?;
        o.serialize_field("actor", &a.actor)?;
        o.serialize_field("attempt", &a.attempt)?;
        o.serialize_field("decision_hash", &a.decision_hash)?;
        o.serialize_field("decision_id", &a.decision_id)?;
        o.serialize_field("ended_at", &a.ended_at)?;
        o.serialize_field("error", &a.error)?;
        o.serialize_field("input_hash", &a.input_hash)?;
        o.serialize_field("output_hash", &a.output_hash)?;
        o.serialize_field("prev_receipt_hash", &a.prev_receipt_hash)?;
        o.serialize_field("receipt_hash", &a.receipt_hash)?;
        o.serialize_field("run_id", &a.run_id)?;
        o.serialize_field("started_at", &a.started_at)?;
        o.serialize_field("status", &a.status)?;
        o.serialize_field("step_id", &a.step_id)?;
        o.serialize_field("step_index", &a.step_index)?;
        o.serialize_field("step_type", &a.step_type)?;
        o.end()
    }
}

/// A `Decision` as answered, fields in name order.
pub struct DecisionJson<'a>(pub &'a Decision);

impl Serialize for DecisionJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let mut o = s.serialize_struct("Decision", 15)?;
        o.serialize_field("actor", &d.actor)?;
        o.serialize_field("attempt", &d.attempt)?;
        o.serialize_field("decided_at", &d.decided_at)?;
        o.serialize_field("decision_hash", &d.decision_hash)?;
        o.serialize_field("decision_id", &d.decision_id)?;
        o.serialize_field("effect", &d.effect)?;
        o.serialize_field("input_hash", &d.input_hash)?;
        o.serialize_field("policy_hash", &d.policy_hash)?;
        o.serialize_field("policy_id", &d.policy_id)?;
        o.serialize_field("policy_version", &d.policy_version)?;
        o.serialize_field("reason", &d.reason)?;
        o.serialize_field("rules_triggered", &d.rules_triggered)?;
        o.serialize_field("run_id", &d.run_id)?;
        o.serialize_field("step_id", &d.step_id)?;
        o.serialize_field("tier", &d.tier)?;
        o.end()
    }
}

/// A `Gate` as answered, fields in name order; `approvals` only when some were recorded.
pub struct GateJson<'a>(pub &'a Gate);

impl Serialize for GateJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let g = self.0;
        let mut o = s.serialize_struct("Gate", 16)?;
        if g.approvals.is_empty() {
            o.skip_field("approvals")?;
        } else {
            let approvals: Vec<ApprovalJson<'_>> = g.approvals.iter().map(ApprovalJson).collect();
            o.serialize_field("approvals", &approvals)?;
        }
        o.serialize_field("approvals_required", &g.approvals_required)?;
        o.serialize_field("attempt", &g.attempt)?;
        o.serialize_field("comment", &g.comment)?;
        o.serialize_field("decision_id", &g.decision_id)?;
        o.serialize_field("expires_at", &g.expires_at)?;
        o.serialize_field("gate_id", &g.gate_id)?;
        o.serialize_field("reason", &g.reason)?;
        o.serialize_field("receipt_hash", &g.receipt_hash)?;
        o.serialize_field("requested_at", &g.requested_at)?;
        o.serialize_field("requested_by", &g.requested_by)?;
        o.serialize_field("resolved_at", &g.resolved_at)?;
        o.serialize_field("resolved_by", &g.resolved_by)?;
        o.serialize_field("run_id", &g.run_id)?;
        o.serialize_field("status", &g.status)?;
        o.serialize_field("step_id", &g.step_id)?;
        o.end()
    }
}

/// A quorum approval as answered, fields in name order.
struct ApprovalJson<'a>(&'a GateApproval);

impl Serialize for ApprovalJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let mut o = s.serialize_struct("GateApproval", 3)?;
        o.serialize_field("approved_at", &a.approved_at)?;
        o.serialize_field("approver", &a.approver)?;
        o.serialize_field("comment", &a.comment)?;
        o.end()
    }
}

/// The answer to a step request: `{"decision", "gate", "run", "step"}`.
#[derive(Serialize)]
pub struct StepRequestedJson<'a> {
    pub decision: DecisionJson<'a>,
    pub gate: Option<GateJson<'a>>,
    pub run: RunJson<'a>,
    pub step: StepJson<'a>,
}

/// The answer to a finished step: `{"run", "step"}`.
#[derive(Serialize)]
pub struct StepFinishedJson<'a> {
    pub run: RunJson<'a>,
    pub step: StepJson<'a>,
}

/// The answer to a gate decision: `{"gate", "run"}`.
#[derive(Serialize)]
pub struct GateResolvedJson<'a> {
    pub gate: GateJson<'a>,
    pub run: RunJson<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use serde_json::{json, Value};

    /// The bytes of `value` as answers were encoded before: through a `Value` tree.
    fn through_value(value: &impl Serialize) -> Vec<u8> {
        serde_json::to_vec(&serde_json::to_value(value).unwrap()).unwrap()
    }

    fn direct(value: &impl Serialize) -> String {
        String::from_utf8(serde_json::to_vec(value).unwrap()).unwrap()
    }

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    fn run(ended: bool) -> Run {
        Run {
            run_id: "019a8f00-0000-7000-8000-000000000001".into(),
            workflow_id: "deploy".into(),
            workflow_version: 3,
            status: if ended {
                RunStatus::Failed
            } else {
                RunStatus::Running
            },
            created_by: "agent-7".into(),
            created_at: at(1_795_428_000_000_000),
            updated_at: at(1_795_428_000_123_456),
            ended_at: ended.then(|| at(1_795_428_001_000_000)),
            // Numbers as sent (arbitrary precision), nesting, escapes and non-ASCII keys.
            input: serde_json::from_str(
                r#"{"n": 1, "amount": 10000.50, "big": 9007199254740991, "exp": 1E300,
                    "neg": -0.0, "z": [true, null, "a\"b\\c\n\u0001"], "é": {"b": 1, "a": []}}"#,
            )
            .unwrap(),
            input_hash: "a".repeat(64),
            next_step_id: (!ended).then(|| "act".to_string()),
            failure: ended.then(|| Failure {
                code: FailureCode::StepFailed,
                reason: "step act failed on its last allowed attempt (3 of 3)".into(),
                step_id: Some("act".into()),
            }),
            genesis_hash: "b".repeat(64),
            receipt_hash: ended.then(|| "c".repeat(64)),
            attempt_base: 2,
        }
    }

    fn step(finished: bool) -> StepAttempt {
        StepAttempt {
            run_id: "019a8f00-0000-7000-8000-000000000001".into(),
            step_id: "act".into(),
            step_type: StepType::Act,
            step_index: 3,
            attempt: 2,
            status: if finished {
                StepStatus::Failed
            } else {
                StepStatus::Started
            },
            actor: "agent-7".into(),
            started_at: at(1_795_428_000_000_000),
            ended_at: finished.then(|| at(1_795_428_001_000_000)),
            input_hash: "d".repeat(64),
            output_hash: finished.then(|| "e".repeat(64)),
            error: finished.then(|| json!({"code": "timeout", "after_s": 30})),
            decision_id: "019a8f00-0000-7000-8000-000000000002".into(),
            decision_hash: "f".repeat(64),
            prev_receipt_hash: "0".repeat(64),
            receipt_hash: finished.then(|| "1".repeat(64)),
        }
    }

    fn decision(rules: &[&str]) -> Decision {
        Decision {
            decision_id: "019a8f00-0000-7000-8000-000000000002".into(),
            run_id: "019a8f00-0000-7000-8000-000000000001".into(),
            step_id: "act".into(),
            attempt: 2,
            effect: Effect::Flag,
            reason: "high-risk actions need a human".into(),
            policy_id: "bench_policy".into(),
            policy_version: 1,
            policy_hash: "2".repeat(64),
            tier: "T2".into(),
            rules_triggered: rules.iter().map(|r| r.to_string()).collect(),
            input_hash: "d".repeat(64),
            actor: "agent-7".into(),
            decided_at: at(1_795_428_000_000_000),
            decision_hash: "f".repeat(64),
        }
    }

    fn gate(approvals: usize, resolved: bool) -> Gate {
        Gate {
            gate_id: "019a8f00-0000-7000-8000-000000000003".into(),
            run_id: "019a8f00-0000-7000-8000-000000000001".into(),
            step_id: "act".into(),
            attempt: 2,
            status: if resolved {
                GateStatus::Approved
            } else {
                GateStatus::Pending
            },
            reason: "high-risk actions need a human".into(),
            decision_id: resolved.then(|| "019a8f00-0000-7000-8000-000000000002".into()),
            requested_by: "agent-7".into(),
            requested_at: at(1_795_428_000_000_000),
            expires_at: resolved.then(|| at(1_795_428_060_000_000)),
            resolved_by: resolved.then(|| "approver-1".into()),
            resolved_at: resolved.then(|| at(1_795_428_002_000_000)),
            comment: resolved.then(|| "ok".into()),
            receipt_hash: resolved.then(|| "3".repeat(64)),
            approvals_required: approvals.max(1) as i64,
            approvals: (0..approvals)
                .map(|i| GateApproval {
                    approver: format!("approver-{i}"),
                    approved_at: at(1_795_428_001_000_000 + i as i64),
                    comment: (i % 2 == 0).then(|| format!("yes {i}")),
                })
                .collect(),
        }
    }

    #[test]
    fn answers_are_the_bytes_their_value_trees_gave() {
        for ended in [false, true] {
            let r = run(ended);
            assert_eq!(direct(&RunJson(&r)).as_bytes(), through_value(&r));
            let s = step(ended);
            assert_eq!(direct(&StepJson(&s)).as_bytes(), through_value(&s));
            let finished = StepFinishedJson {
                run: RunJson(&r),
                step: StepJson(&s),
            };
            let before = json!({"step": serde_json::to_value(&s).unwrap(), "run": serde_json::to_value(&r).unwrap()});
            assert_eq!(direct(&finished).as_bytes(), through_value(&before));
            for rules in [&[][..], &["flag-high", "allow-registered"][..]] {
                let d = decision(rules);
                assert_eq!(direct(&DecisionJson(&d)).as_bytes(), through_value(&d));
                for g in [None, Some(gate(0, false)), Some(gate(3, true))] {
                    let requested = StepRequestedJson {
                        decision: DecisionJson(&d),
                        gate: g.as_ref().map(GateJson),
                        run: RunJson(&r),
                        step: StepJson(&s),
                    };
                    let before = json!({"step": serde_json::to_value(&s).unwrap(),
                        "decision": serde_json::to_value(&d).unwrap(),
                        "run": serde_json::to_value(&r).unwrap(),
                        "gate": serde_json::to_value(&g).unwrap()});
                    assert_eq!(direct(&requested).as_bytes(), through_value(&before));
                }
            }
        }
        for (approvals, resolved) in [(0, false), (0, true), (1, true), (2, false), (3, true)] {
            let g = gate(approvals, resolved);
            assert_eq!(direct(&GateJson(&g)).as_bytes(), through_value(&g));
            let r = run(resolved);
            let resolved = GateResolvedJson {
                gate: GateJson(&g),
                run: RunJson(&r),
            };
            let before = json!({"gate": serde_json::to_value(&g).unwrap(), "run": serde_json::to_value(&r).unwrap()});
            assert_eq!(direct(&resolved).as_bytes(), through_value(&before));
        }
    }

    #[test]
    fn a_step_answer_is_exactly_these_bytes() {
        let (r, s, d) = (run(false), step(false), decision(&["allow-registered"]));
        let answer = direct(&StepRequestedJson {
            decision: DecisionJson(&d),
            gate: None,
            run: RunJson(&r),
            step: StepJson(&s),
        });
        let expected = concat!(
            r#"{"decision":{"actor":"agent-7","attempt":2,"decided_at":"2026-11-23T10:00:00.000000Z","#,
            r#""decision_hash":"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff","#,
            r#""decision_id":"019a8f00-0000-7000-8000-000000000002","effect":"flag","#,
            r#""input_hash":"dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd","#,
            r#""policy_hash":"2222222222222222222222222222222222222222222222222222222222222222","#,
            r#""policy_id":"bench_policy","policy_version":1,"reason":"high-risk actions need a human","#,
            r#""rules_triggered":["allow-registered"],"run_id":"019a8f00-0000-7000-8000-000000000001","#,
            r#""step_id":"act","tier":"T2"},"gate":null,"#,
            r#""run":{"created_at":"2026-11-23T10:00:00.000000Z","created_by":"agent-7","ended_at":null,"#,
            r#""failure":null,"genesis_hash":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","#,
            r#""input":{"amount":10000.50,"big":9007199254740991,"exp":1e+300,"n":1,"neg":-0.0,"#,
            r#""z":[true,null,"a\"b\\c\n\u0001"],"é":{"a":[],"b":1}},"#,
            r#""input_hash":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","#,
            r#""next_step_id":"act","receipt_hash":null,"run_id":"019a8f00-0000-7000-8000-000000000001","#,
            r#""status":"RUNNING","updated_at":"2026-11-23T10:00:00.123456Z","workflow_id":"deploy","#,
            r#""workflow_version":3},"#,
            r#""step":{"actor":"agent-7","attempt":2,"#,
            r#""decision_hash":"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff","#,
            r#""decision_id":"019a8f00-0000-7000-8000-000000000002","ended_at":null,"error":null,"#,
            r#""input_hash":"dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd","#,
            r#""output_hash":null,"#,
            r#""prev_receipt_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""receipt_hash":null,"run_id":"019a8f00-0000-7000-8000-000000000001","#,
            r#""started_at":"2026-11-23T10:00:00.000000Z","status":"STARTED","step_id":"act","#,
            r#""step_index":3,"step_type":"ACT"}}"#,
        );
        assert_eq!(answer, expected);
        let _: Value = serde_json::from_str(&answer).unwrap();
    }
}
