//! Run and step lifecycle over HTTP: pause, resume, cancel, declared failure and retry, attempt
//! limits, step order, gates and separation of duties, versioned policies and definitions, the
//! run list, the agent registry and the health check.

use crate::scenarios::{
    agent_7, assert_hash, assert_one_refusal_since, audit_head, complete_step, create_run, expect,
    expect_error, fail_step, find_attempt, flagged_run, get_run, h, new_pt004_run, pt004_server,
    put_agent, put_definition, put_policy, request_step, resolve_gate, run_input, run_logs,
    run_steps, set_status, start_step, step_input, step_output, text, with_actor, ADMIN, AGENT,
    APPROVER, POLICY_ID, WORKFLOW_ID,
};
use crate::support::{role_for, Client, Response, Server};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// A two-step workflow whose first step allows only two attempts.
const TWO_TRIES: &str = "two_tries";

fn two_tries_definition() -> Value {
    json!({"workflow_id": TWO_TRIES, "policy_id": POLICY_ID, "steps": [
        {"step_id": "fetch", "step_type": "OBSERVE", "max_attempts": 2},
        {"step_id": "apply", "step_type": "ACT"}]})
}

fn status_of(c: &mut Client, run_id: &str) -> Value {
    get_run(c, run_id)["status"].clone()
}

/// Asserts a 409 invalid_transition whose details name the current status, and returns `allowed`.
fn expect_invalid_transition(resp: Response, current: &str, what: &str) -> Vec<String> {
    let error = expect_error(resp, 409, "invalid_transition", what);
    assert_eq!(
        error["details"]["current_status"], current,
        "{what}: expected details.current_status {current}: {error}"
    );
    let allowed = error["details"]["allowed"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: expected details.allowed: {error}"));
    allowed
        .iter()
        .map(|s| {
            s.as_str()
                .expect("allowed statuses are strings")
                .to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Pause, resume, cancel.

#[test]
fn a_running_run_can_be_paused_and_resumed_and_refuses_step_changes_while_paused() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "pause");
    start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));

    let run = expect(
        set_status(&mut c, &run_id, "PAUSED", ADMIN),
        200,
        "pause a RUNNING run",
    );
    assert_eq!(
        run["status"], "PAUSED",
        "expected the status PATCH to answer the paused run: {run}"
    );
    let body = json!({"status": "COMPLETED", "output": step_output("observe"), "actor": AGENT});
    let resp = c.patch(&format!("/workflows/runs/{run_id}/steps/observe"), &body);
    expect_error(
        resp,
        409,
        "run_not_active",
        "completing a step while the run is PAUSED",
    );

    let run = expect(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        200,
        "resume a PAUSED run",
    );
    assert_eq!(
        run["status"], "RUNNING",
        "expected the resumed run RUNNING: {run}"
    );
    let done = complete_step(&mut c, &run_id, "observe", &step_output("observe"));
    assert_eq!(
        done["run"]["next_step_id"], "decide",
        "expected decide to be next: {done}"
    );
}

#[test]
fn pausing_is_allowed_from_running_only() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "pause");
    let allowed = expect_invalid_transition(
        set_status(&mut c, &run_id, "PAUSED", ADMIN),
        "PENDING",
        "pause a PENDING run",
    );
    assert!(
        allowed.contains(&"CANCELLED".to_string()),
        "expected CANCELLED among the allowed from PENDING: {allowed:?}"
    );
    assert!(
        !allowed.contains(&"PAUSED".to_string()),
        "expected PAUSED not allowed from PENDING: {allowed:?}"
    );
    assert_eq!(
        status_of(&mut c, &run_id),
        "PENDING",
        "expected the refused pause to leave the run PENDING"
    );

    start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    expect(
        set_status(&mut c, &run_id, "PAUSED", ADMIN),
        200,
        "pause a RUNNING run",
    );
    expect_invalid_transition(
        set_status(&mut c, &run_id, "PAUSED", ADMIN),
        "PAUSED",
        "pause a PAUSED run",
    );
}

#[test]
fn cancelling_a_paused_run_cancels_its_pending_gate_and_rejects_the_waiting_attempt() {
    let (_server, mut c) = pt004_server();
    let (run_id, gate_id) = flagged_run(&mut c, AGENT);

    let run = expect(
        set_status(&mut c, &run_id, "CANCELLED", ADMIN),
        200,
        "cancel a PAUSED run",
    );
    assert_eq!(
        run["status"], "CANCELLED",
        "expected the run CANCELLED: {run}"
    );
    assert_hash(&run["receipt_hash"], "cancelled run receipt_hash");
    assert!(
        run["ended_at"].is_string(),
        "expected ended_at set on a cancelled run: {run}"
    );

    let run = get_run(&mut c, &run_id);
    let gate = &run["gates"][0];
    assert_eq!(
        gate["gate_id"],
        gate_id.as_str(),
        "expected the flag's gate: {run}"
    );
    assert_eq!(
        gate["status"], "CANCELLED",
        "expected the pending gate CANCELLED: {gate}"
    );
    assert_hash(&gate["receipt_hash"], "cancelled gate receipt_hash");
    let decide = find_attempt(&run, "decide", 1);
    assert_eq!(
        decide["status"], "REJECTED",
        "expected the waiting attempt REJECTED: {decide}"
    );
    assert_eq!(
        decide["output_hash"],
        h(&Value::Null),
        "expected a REJECTED attempt's output_hash H(null)"
    );
    assert_hash(&decide["receipt_hash"], "rejected attempt receipt_hash");

    let receipt = expect(
        c.get(&format!("/workflows/runs/{run_id}/receipt")),
        200,
        "GET receipt of a cancelled run",
    );
    assert_eq!(
        receipt["receipt_hash"], run["receipt_hash"],
        "expected the receipt endpoint to agree with the run"
    );
    let logs = run_logs(&mut c, &run_id);
    assert!(
        logs.iter().any(|e| e["action"] == "gate.cancelled"),
        "expected a gate.cancelled entry: {logs:?}"
    );

    expect_invalid_transition(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        "CANCELLED",
        "resume a CANCELLED run",
    );
}

#[test]
fn cancelling_a_paused_run_fails_its_started_attempt_with_run_ended() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "cancel");
    start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    expect(set_status(&mut c, &run_id, "PAUSED", ADMIN), 200, "pause");

    let run = expect(
        set_status(&mut c, &run_id, "CANCELLED", ADMIN),
        200,
        "cancel a PAUSED run",
    );
    assert_eq!(
        run["status"], "CANCELLED",
        "expected the run CANCELLED: {run}"
    );
    let run = get_run(&mut c, &run_id);
    let observe = find_attempt(&run, "observe", 1);
    let error = json!({"code": "run_ended", "reason": "CANCELLED"});
    assert_eq!(
        observe["status"], "FAILED",
        "expected the open STARTED attempt FAILED: {observe}"
    );
    assert_eq!(
        observe["error"], error,
        "expected error run_ended naming the new status: {observe}"
    );
    assert_eq!(
        observe["output_hash"],
        h(&json!({"error": error})),
        "expected output_hash H({{\"error\": error}})"
    );
    assert_hash(&observe["receipt_hash"], "failed attempt receipt_hash");
    assert_hash(&run["receipt_hash"], "cancelled run receipt_hash");
}

// ---------------------------------------------------------------------------------------------
// Failure and retry.

#[test]
fn a_declared_failure_can_be_retried_and_the_retry_clears_failure_and_receipt() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "declared");
    run_steps(&mut c, &run_id, &["observe"]);

    let body = json!({"status": "FAILED", "reason": "operator stop", "actor": ADMIN});
    let run = expect(
        c.patch(&format!("/workflows/runs/{run_id}/status"), &body),
        200,
        "declare a failure",
    );
    assert_eq!(run["status"], "FAILED", "expected the run FAILED: {run}");
    assert_eq!(
        run["failure"]["code"], "declared",
        "expected failure.code declared: {run}"
    );
    assert_eq!(
        run["failure"]["reason"], "operator stop",
        "expected the declared reason: {run}"
    );
    assert_hash(&run["receipt_hash"], "declared failure receipt_hash");
    assert!(
        run["ended_at"].is_string(),
        "expected ended_at on a failed run: {run}"
    );

    let run = expect(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        200,
        "retry a declared failure",
    );
    assert_eq!(
        run["status"], "RUNNING",
        "expected the retried run RUNNING: {run}"
    );
    assert_eq!(
        run["failure"],
        Value::Null,
        "expected the retry to clear failure: {run}"
    );
    assert_eq!(
        run["ended_at"],
        Value::Null,
        "expected the retry to clear ended_at: {run}"
    );
    assert_eq!(
        run["receipt_hash"],
        Value::Null,
        "expected the retry to clear receipt_hash: {run}"
    );

    let done = run_steps(&mut c, &run_id, &["decide", "gate", "act", "transform"]);
    assert_eq!(
        done["run"]["status"], "COMPLETED",
        "expected the retried run to complete: {done}"
    );
}

#[test]
fn a_failed_attempt_can_be_requested_again_within_max_attempts() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "retry-step");
    start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    let error = json!({"code": "timeout", "reason": "upstream slow"});
    let failed = fail_step(&mut c, &run_id, "observe", &error);
    assert_eq!(
        failed["step"]["error"], error,
        "expected the attempt to keep its error: {failed}"
    );
    assert_eq!(
        failed["step"]["output_hash"],
        h(&json!({"error": error})),
        "expected output_hash H({{\"error\": error}})"
    );
    assert_eq!(
        failed["run"]["status"], "RUNNING",
        "expected the run to stay RUNNING after attempt 1 fails: {failed}"
    );
    assert_eq!(
        failed["run"]["failure"],
        Value::Null,
        "expected no run failure yet: {failed}"
    );

    let again = start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    assert_eq!(again["step"]["attempt"], 2, "expected attempt 2: {again}");
    let done = complete_step(&mut c, &run_id, "observe", &step_output("observe"));
    assert_eq!(
        done["run"]["status"], "RUNNING",
        "expected the run to continue RUNNING: {done}"
    );
    assert_eq!(
        done["run"]["next_step_id"], "decide",
        "expected decide next: {done}"
    );
}

#[test]
fn failing_the_last_attempt_fails_the_run_and_a_retry_grants_max_attempts_more() {
    let (_server, mut c) = pt004_server();
    put_definition(&mut c, &two_tries_definition());
    let run_id = text(
        &create_run(&mut c, TWO_TRIES, &json!({"job": 1}), AGENT),
        "run_id",
    );
    let error = json!({"code": "boom"});

    start_step(&mut c, &run_id, "fetch", &json!({"try": 1}));
    fail_step(&mut c, &run_id, "fetch", &error);
    start_step(&mut c, &run_id, "fetch", &json!({"try": 2}));
    let failed = fail_step(&mut c, &run_id, "fetch", &error);
    let run = &failed["run"];
    assert_eq!(
        run["status"], "FAILED",
        "expected the last allowed attempt's failure to fail the run: {failed}"
    );
    assert_eq!(
        run["failure"]["code"], "step_failed",
        "expected failure.code step_failed: {run}"
    );
    assert_eq!(
        run["failure"]["step_id"], "fetch",
        "expected the failure to name fetch: {run}"
    );
    let first_receipt = text(run, "receipt_hash");
    let resp = request_step(&mut c, &run_id, "fetch", &json!({"try": 3}), AGENT);
    expect_error(
        resp,
        409,
        "run_not_active",
        "a step request on a FAILED run before retry",
    );

    let run = expect(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        200,
        "retry a step_failed run",
    );
    assert_eq!(
        run["receipt_hash"],
        Value::Null,
        "expected the retry to clear receipt_hash: {run}"
    );
    let third = start_step(&mut c, &run_id, "fetch", &json!({"try": 3}));
    assert_eq!(
        third["step"]["attempt"], 3,
        "expected attempt numbers to continue at 3: {third}"
    );
    let failed = fail_step(&mut c, &run_id, "fetch", &error);
    assert_eq!(
        failed["run"]["status"], "RUNNING",
        "expected attempt 3 of 4 to leave the run RUNNING: {failed}"
    );
    let fourth = start_step(&mut c, &run_id, "fetch", &json!({"try": 4}));
    assert_eq!(fourth["step"]["attempt"], 4, "expected attempt 4: {fourth}");
    complete_step(&mut c, &run_id, "fetch", &json!({"fetched": true}));
    start_step(&mut c, &run_id, "apply", &json!({"go": true}));
    let done = complete_step(&mut c, &run_id, "apply", &json!({"applied": true}));
    assert_eq!(
        done["run"]["status"], "COMPLETED",
        "expected the retried run to complete: {done}"
    );
    let second_receipt = text(&done["run"], "receipt_hash");
    assert_ne!(
        second_receipt, first_receipt,
        "expected a new workflow receipt for the second end"
    );

    let logs = run_logs(&mut c, &run_id);
    let old_end = logs
        .iter()
        .find(|e| e["action"] == "run.failed" && e["payload_hash"] == first_receipt.as_str());
    assert!(
        old_end.is_some(),
        "expected a run.failed entry carrying the first receipt {first_receipt}: {logs:?}"
    );
    let new_end = logs
        .iter()
        .find(|e| e["action"] == "run.completed" && e["payload_hash"] == second_receipt.as_str());
    assert!(
        new_end.is_some(),
        "expected a run.completed entry carrying the new receipt {second_receipt}: {logs:?}"
    );
    let old = expect(
        c.get(&format!("/evidence/{first_receipt}")),
        200,
        "GET the first receipt as evidence",
    );
    assert_eq!(
        old["status"], "FAILED",
        "expected the first receipt to record the FAILED end: {old}"
    );
}

// ---------------------------------------------------------------------------------------------
// Step order and open attempts.

#[test]
fn steps_requested_out_of_order_are_refused() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "order");
    let (seq, _) = audit_head(&mut c);
    let resp = request_step(
        &mut c,
        &run_id,
        "decide",
        &step_input("decide", "low"),
        AGENT,
    );
    let error = expect_error(
        resp,
        409,
        "step_out_of_order",
        "requesting decide before observe",
    );
    assert_eq!(
        error["details"]["expected_step_id"], "observe",
        "expected details.expected_step_id observe: {error}"
    );
    assert_one_refusal_since(&mut c, seq, &run_id, AGENT, "out-of-order step");
    let run = get_run(&mut c, &run_id);
    assert_eq!(
        run["status"], "PENDING",
        "expected the run to stay PENDING: {run}"
    );
    assert_eq!(
        run["steps"],
        json!([]),
        "expected no attempt recorded: {run}"
    );
}

#[test]
fn a_second_open_attempt_is_refused() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "open");
    start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    let (seq, _) = audit_head(&mut c);
    let resp = request_step(
        &mut c,
        &run_id,
        "observe",
        &step_input("observe", "low"),
        AGENT,
    );
    expect_error(
        resp,
        409,
        "attempt_open",
        "a second attempt while one is open",
    );
    assert_one_refusal_since(&mut c, seq, &run_id, AGENT, "second open attempt");
    let run = get_run(&mut c, &run_id);
    assert_eq!(
        run["steps"].as_array().map(Vec::len),
        Some(1),
        "expected still one attempt: {run}"
    );
}

// ---------------------------------------------------------------------------------------------
// Gates.

/// Asserts that approving as `approver` is refused with 403 self_approval, recorded once, and
/// that the gate stays PENDING and the run PAUSED.
///
/// Under tokens a role check comes first, so the would-be approver holds an approver token in
/// its own name (made before the audit head is read): what is refused is who it is, not its role.
fn assert_self_approval_refused(c: &mut Client, run_id: &str, gate_id: &str, approver: &str) {
    c.use_role(approver, "approver");
    c.bearer_for(approver);
    let before = get_run(c, run_id);
    let (seq, _) = audit_head(c);
    let what = format!("approval by {approver}");
    expect_error(
        resolve_gate(c, run_id, gate_id, "approve", approver),
        403,
        "self_approval",
        &what,
    );
    assert_one_refusal_since(c, seq, run_id, approver, &what);
    let after = get_run(c, run_id);
    assert_eq!(
        after["gates"][0]["status"], "PENDING",
        "{what}: expected the gate to stay PENDING: {after}"
    );
    assert_eq!(
        after, before,
        "{what}: expected nothing else of the run to change"
    );
    c.use_role(approver, role_for(approver));
}

#[test]
fn approving_your_own_gate_is_refused() {
    let (_server, mut c) = pt004_server();
    let (run_id, gate_id) = flagged_run(&mut c, "operator-1");
    assert_self_approval_refused(&mut c, &run_id, &gate_id, AGENT);
}

#[test]
fn the_run_creator_cannot_approve_a_gate_of_its_run() {
    let (_server, mut c) = pt004_server();
    let (run_id, gate_id) = flagged_run(&mut c, "operator-1");
    assert_self_approval_refused(&mut c, &run_id, &gate_id, "operator-1");
    let resolved = expect(
        resolve_gate(&mut c, &run_id, &gate_id, "approve", APPROVER),
        200,
        "approval by a third actor",
    );
    assert_eq!(
        resolved["gate"]["status"], "APPROVED",
        "expected a third actor's approval to stand: {resolved}"
    );
}

#[test]
fn a_resolved_gate_cannot_be_resolved_again() {
    let (_server, mut c) = pt004_server();
    let (run_id, gate_id) = flagged_run(&mut c, AGENT);
    expect(
        resolve_gate(&mut c, &run_id, &gate_id, "approve", APPROVER),
        200,
        "first approval",
    );
    c.bearer_for("approver-2"); // its token's audit entry comes before the head is read
    for decision in ["approve", "reject"] {
        let (seq, _) = audit_head(&mut c);
        let what = format!("a second {decision} of an approved gate");
        expect_error(
            resolve_gate(&mut c, &run_id, &gate_id, decision, "approver-2"),
            409,
            "gate_already_resolved",
            &what,
        );
        assert_one_refusal_since(&mut c, seq, &run_id, "approver-2", &what);
    }
    let run = get_run(&mut c, &run_id);
    assert_eq!(
        run["gates"][0]["status"], "APPROVED",
        "expected the gate to stay APPROVED: {run}"
    );
    assert_eq!(
        run["gates"][0]["resolved_by"], APPROVER,
        "expected the first approver to stay recorded: {run}"
    );
}

#[test]
fn rejecting_a_gate_fails_the_run_closed_and_refuses_retry() {
    let (_server, mut c) = pt004_server();
    let (run_id, gate_id) = flagged_run(&mut c, AGENT);
    let resolved = expect(
        resolve_gate(&mut c, &run_id, &gate_id, "reject", APPROVER),
        200,
        "reject",
    );
    assert_eq!(
        resolved["gate"]["status"], "REJECTED",
        "expected the gate REJECTED: {resolved}"
    );
    assert_eq!(
        resolved["run"]["status"], "FAILED",
        "expected the run FAILED: {resolved}"
    );
    assert_eq!(
        resolved["run"]["failure"]["code"], "gate_rejected",
        "expected failure gate_rejected: {resolved}"
    );
    let run = get_run(&mut c, &run_id);
    let decide = find_attempt(&run, "decide", 1);
    assert_eq!(
        decide["status"], "REJECTED",
        "expected the waiting attempt REJECTED: {decide}"
    );
    expect_invalid_transition(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        "FAILED",
        "retry after a rejection",
    );
    assert_eq!(
        status_of(&mut c, &run_id),
        "FAILED",
        "expected the run to stay FAILED"
    );
}

#[test]
fn resuming_while_a_gate_is_pending_is_refused() {
    let (_server, mut c) = pt004_server();
    let (run_id, _gate_id) = flagged_run(&mut c, AGENT);
    let (seq, _) = audit_head(&mut c);
    expect_error(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        409,
        "gates_unresolved",
        "resume with a PENDING gate",
    );
    assert_one_refusal_since(&mut c, seq, &run_id, ADMIN, "resume with a PENDING gate");
    assert_eq!(
        status_of(&mut c, &run_id),
        "PAUSED",
        "expected the run to stay PAUSED"
    );
}

#[test]
fn an_explicit_gate_pauses_a_running_run_until_approved_and_resumed() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "explicit");
    run_steps(&mut c, &run_id, &["observe"]);
    let body = json!({"step_id": "decide", "reason": "manual review", "actor": AGENT});
    let gate = expect(
        c.post(&format!("/workflows/runs/{run_id}/gates"), &body),
        201,
        "POST an explicit gate",
    );
    assert_eq!(
        gate["status"], "PENDING",
        "expected the new gate PENDING: {gate}"
    );
    assert_eq!(
        gate["step_id"], "decide",
        "expected the gate bound to decide: {gate}"
    );
    assert_eq!(
        gate["attempt"], 1,
        "expected the gate bound to decide's next attempt: {gate}"
    );
    assert_eq!(
        gate["requested_by"], AGENT,
        "expected requested_by the requesting actor: {gate}"
    );
    assert_eq!(
        gate["reason"], "manual review",
        "expected the gate to keep its reason: {gate}"
    );
    assert_eq!(
        status_of(&mut c, &run_id),
        "PAUSED",
        "expected an explicit gate to pause a RUNNING run"
    );

    expect_error(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        409,
        "gates_unresolved",
        "resume before approval",
    );
    let gate_id = text(&gate, "gate_id");
    expect(
        resolve_gate(&mut c, &run_id, &gate_id, "approve", APPROVER),
        200,
        "approve the explicit gate",
    );
    expect(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        200,
        "resume after approval",
    );
    start_step(&mut c, &run_id, "decide", &step_input("decide", "low"));
}

// ---------------------------------------------------------------------------------------------
// Versioned documents.

#[test]
fn definitions_are_versioned_and_a_run_pins_the_version_it_was_created_with() {
    let (_server, mut c) = pt004_server();
    let first = expect(
        c.get(&format!("/workflows/definitions/{WORKFLOW_ID}")),
        200,
        "GET definition",
    );
    let old_run = new_pt004_run(&mut c, "v1");

    let shorter = json!({"workflow_id": WORKFLOW_ID, "policy_id": POLICY_ID,
        "steps": [{"step_id": "observe", "step_type": "OBSERVE"}, {"step_id": "act", "step_type": "ACT"}]});
    let second = put_definition(&mut c, &shorter);
    assert_eq!(
        second["version"], 2,
        "expected the second PUT to store version 2: {second}"
    );
    assert_ne!(
        second["definition_hash"], first["definition_hash"],
        "expected a new definition_hash"
    );

    let latest = expect(
        c.get(&format!("/workflows/definitions/{WORKFLOW_ID}")),
        200,
        "GET latest definition",
    );
    assert_eq!(
        latest["version"], 2,
        "expected GET to answer the latest version: {latest}"
    );
    let v1 = expect(
        c.get(&format!("/workflows/definitions/{WORKFLOW_ID}?version=1")),
        200,
        "GET ?version=1",
    );
    assert_eq!(
        v1, first,
        "expected ?version=1 to answer the first version unchanged"
    );

    let new_run = new_pt004_run(&mut c, "v2");
    assert_eq!(
        get_run(&mut c, &new_run)["workflow_version"],
        2,
        "expected a new run to pin version 2"
    );
    let old = get_run(&mut c, &old_run);
    assert_eq!(
        old["workflow_version"], 1,
        "expected the old run to keep version 1: {old}"
    );
    let done = run_steps(&mut c, &old_run, &["observe"]);
    assert_eq!(
        done["run"]["next_step_id"], "decide",
        "expected the old run to follow version 1's steps: {done}"
    );
    let done = run_steps(&mut c, &new_run, &["observe"]);
    assert_eq!(
        done["run"]["next_step_id"], "act",
        "expected the new run to follow version 2's steps: {done}"
    );
}

#[test]
fn policies_are_versioned_and_a_decision_records_the_version_it_used() {
    let (_server, mut c) = pt004_server();
    let first = expect(c.get(&format!("/policies/{POLICY_ID}")), 200, "GET policy");
    assert_eq!(first["version"], 1, "expected version 1: {first}");
    let mut changed = crate::scenarios::pt004_policy();
    changed["rules"][2]["reason"] = json!("registered active agent, v2");
    let second = put_policy(&mut c, &changed);
    assert_eq!(
        second["version"], 2,
        "expected the second PUT to store version 2: {second}"
    );
    assert_ne!(
        second["policy_hash"], first["policy_hash"],
        "expected a new policy_hash"
    );

    let latest = expect(
        c.get(&format!("/policies/{POLICY_ID}")),
        200,
        "GET latest policy",
    );
    assert_eq!(
        latest["version"], 2,
        "expected GET to answer the latest version: {latest}"
    );
    let v1 = expect(
        c.get(&format!("/policies/{POLICY_ID}?version=1")),
        200,
        "GET ?version=1",
    );
    assert_eq!(
        v1, first,
        "expected ?version=1 to answer the first version unchanged"
    );

    let run_id = new_pt004_run(&mut c, "policy-v2");
    let body = start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    let decision = &body["decision"];
    assert_eq!(
        decision["policy_version"], 2,
        "expected the decision to use the latest policy version: {decision}"
    );
    assert_eq!(
        decision["policy_hash"], second["policy_hash"],
        "expected the decision to name v2's hash: {decision}"
    );
    assert_eq!(
        decision["reason"], "registered active agent, v2",
        "expected v2's reason: {decision}"
    );
}

// ---------------------------------------------------------------------------------------------
// Lists, registry, health.

fn list_ids(c: &mut Client, query: &str) -> BTreeSet<String> {
    let body = expect(
        c.get(&format!("/workflows/runs?{query}")),
        200,
        &format!("GET /workflows/runs?{query}"),
    );
    assert_eq!(
        body["next"],
        Value::Null,
        "expected one page for ?{query}: {body}"
    );
    body["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| text(r, "run_id"))
        .collect()
}

#[test]
fn the_run_list_filters_by_status_and_workflow() {
    let (_server, mut c) = pt004_server();
    put_definition(&mut c, &two_tries_definition());
    let pending = new_pt004_run(&mut c, "pending");
    let running = new_pt004_run(&mut c, "running");
    start_step(&mut c, &running, "observe", &step_input("observe", "low"));
    let cancelled = new_pt004_run(&mut c, "cancelled");
    expect(
        set_status(&mut c, &cancelled, "CANCELLED", ADMIN),
        200,
        "cancel a PENDING run",
    );
    let other = text(&create_run(&mut c, TWO_TRIES, &json!({}), AGENT), "run_id");

    let set = |ids: &[&String]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        list_ids(&mut c, "status=PENDING"),
        set(&[&pending, &other]),
        "expected the PENDING runs"
    );
    assert_eq!(
        list_ids(&mut c, "status=RUNNING"),
        set(&[&running]),
        "expected the RUNNING run"
    );
    assert_eq!(
        list_ids(&mut c, "status=CANCELLED"),
        set(&[&cancelled]),
        "expected the CANCELLED run"
    );
    assert_eq!(
        list_ids(&mut c, &format!("workflow_id={TWO_TRIES}")),
        set(&[&other]),
        "expected the two_tries run"
    );
    assert_eq!(
        list_ids(&mut c, &format!("workflow_id={WORKFLOW_ID}&status=PENDING")),
        set(&[&pending]),
        "expected the PENDING PT-004 run only"
    );
    assert_eq!(
        list_ids(&mut c, "status=COMPLETED"),
        set(&[]),
        "expected no COMPLETED run"
    );
}

/// Percent-encodes an opaque cursor for a query string.
fn encode_query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn the_run_list_pages_through_every_run_exactly_once_in_creation_order() {
    let (_server, mut c) = pt004_server();
    let created: Vec<String> = (0..7)
        .map(|i| new_pt004_run(&mut c, &format!("page-{i}")))
        .collect();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        assert!(
            page < 10,
            "expected paging to end within 10 pages of 3; saw {seen:?}"
        );
        let query = match &after {
            Some(cursor) => format!("limit=3&after={}", encode_query_value(cursor)),
            None => "limit=3".to_string(),
        };
        let body = expect(
            c.get(&format!("/workflows/runs?{query}")),
            200,
            &format!("GET runs page {page}"),
        );
        let runs = body["runs"]
            .as_array()
            .unwrap_or_else(|| panic!("expected runs in {body}"));
        assert!(
            runs.len() <= 3,
            "expected at most limit=3 runs per page: {body}"
        );
        seen.extend(runs.iter().map(|r| text(r, "run_id")));
        match &body["next"] {
            Value::Null => break,
            Value::String(cursor) => after = Some(cursor.clone()),
            other => panic!("expected next to be a string cursor or null, got {other}"),
        }
    }
    assert_eq!(
        seen, created,
        "expected every run exactly once, in creation order"
    );
}

#[test]
fn the_agent_registry_lists_and_answers_registered_agents() {
    let server = Server::start();
    let mut c = server.client();
    let seven = put_agent(&mut c, &agent_7());
    assert_eq!(
        seven["agent_id"], AGENT,
        "expected PUT to answer the agent: {seven}"
    );
    let nine =
        json!({"agent_id": "agent-9", "status": "suspended", "capabilities": [], "tier": "T1"});
    put_agent(&mut c, &nine);

    let one = expect(c.get("/registry/agents/agent-9"), 200, "GET one agent");
    for key in ["agent_id", "status", "capabilities", "tier"] {
        assert_eq!(
            one[key], nine[key],
            "expected GET agent-9 to answer its {key}: {one}"
        );
    }
    let all = expect(c.get("/registry/agents"), 200, "GET /registry/agents");
    let agents = all["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("expected {{\"agents\":[…]}}, got {all}"));
    let ids: BTreeSet<String> = agents.iter().map(|a| text(a, "agent_id")).collect();
    let expected: BTreeSet<String> = [AGENT, "agent-9"].iter().map(|s| s.to_string()).collect();
    assert_eq!(ids, expected, "expected both registered agents listed");

    let updated = json!({"agent_id": "agent-9", "status": "active", "capabilities": ["deploy"], "tier": "T1"});
    expect(
        c.put("/registry/agents/agent-9", &with_actor(&updated, ADMIN)),
        200,
        "PUT agent again",
    );
    let one = expect(c.get("/registry/agents/agent-9"), 200, "GET updated agent");
    assert_eq!(
        one["status"], "active",
        "expected a second PUT to replace the registry entry: {one}"
    );
}

#[test]
fn health_reports_ok_with_version_and_schema_version() {
    let server = Server::start();
    let mut c = server.client();
    let health = expect(c.get("/health"), 200, "GET /health");
    assert_eq!(health["status"], "ok", "expected status ok: {health}");
    assert!(
        health["version"].as_str().is_some_and(|v| !v.is_empty()),
        "expected a version string: {health}"
    );
    assert!(
        health["schema_version"].as_u64().is_some_and(|v| v >= 1),
        "expected schema_version ≥ 1: {health}"
    );
}

#[test]
fn a_run_created_by_another_actor_keeps_its_creator() {
    let (_server, mut c) = pt004_server();
    let run = create_run(&mut c, WORKFLOW_ID, &run_input("creator"), "operator-1");
    assert_eq!(
        run["created_by"], "operator-1",
        "expected created_by the body actor: {run}"
    );
    assert_eq!(
        run["next_step_id"], "observe",
        "expected observe first: {run}"
    );
    assert_eq!(run["workflow_version"], 1, "expected version 1: {run}");
    assert_eq!(
        run["input_hash"],
        h(&run_input("creator")),
        "expected input_hash = H(input)"
    );
}
