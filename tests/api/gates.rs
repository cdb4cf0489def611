//! Gate terms that policies set on a flag: a deadline that fails the run closed when nobody
//! decides in time, and a quorum of distinct approvers.

use crate::scenarios::{
    agent_7, complete_step, create_run, expect, expect_error, put_agent, put_definition,
    put_policy, request_step, resolve_gate, run_logs, set_status, start_step, with_actor, ADMIN,
    AGENT,
};
use crate::support::{run_cli, Client, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const POLICY: &str = "gated";
const WORKFLOW: &str = "gated_flow";

/// A policy that flags `input.risk == "high"` with the given gate terms, and allows active agents.
fn setup(c: &mut Client, terms: Value) {
    put_agent(c, &agent_7());
    let mut flag = json!({"rule_id": "flag-high", "effect": "flag", "reason": "needs people",
                          "when": {"path": "input.risk", "eq": "high"}});
    for (k, v) in terms.as_object().unwrap() {
        flag[k] = v.clone();
    }
    let policy = json!({"policy_id": POLICY, "tier": "T1", "rules": [flag,
        {"rule_id": "allow", "effect": "allow", "when": {"path": "agent.status", "eq": "active"}}]});
    put_policy(c, &with_actor(&policy, ADMIN));
    let definition = json!({"workflow_id": WORKFLOW, "policy_id": POLICY,
        "steps": [{"step_id": "one", "step_type": "OBSERVE"}, {"step_id": "two", "step_type": "ACT"}]});
    put_definition(c, &with_actor(&definition, ADMIN));
}

/// Creates a run and requests its first step flagged; returns (run_id, gate).
fn flagged(c: &mut Client) -> (String, Value) {
    let run = create_run(c, WORKFLOW, &json!({}), AGENT);
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let body = expect(
        request_step(c, &run_id, "one", &json!({"risk": "high"}), AGENT),
        201,
        "flagged step",
    );
    assert_eq!(body["decision"]["effect"], "flag", "{body}");
    (run_id, body["gate"].clone())
}

fn verify_after_stop(mut server: Server) {
    assert_eq!(server.terminate(), Some(0));
    let (code, stdout, _) = run_cli(&["verify", "--db", server.db.to_str().unwrap()]);
    assert_eq!(code, 0, "expected the database to verify: {stdout}");
}

#[test]
fn a_gate_past_its_policy_deadline_expires_and_fails_the_run_closed() {
    let server = Server::start();
    let mut c = server.client();
    setup(&mut c, json!({"gate_expires_in_s": 1}));
    let (run_id, gate) = flagged(&mut c);
    assert!(
        gate["expires_at"].is_string(),
        "expected the flag rule's deadline on the gate: {gate}"
    );

    // Nobody touches the run: the background sweep must expire the gate.
    let deadline = Instant::now() + Duration::from_secs(15);
    let run = loop {
        let run = expect(c.get(&format!("/workflows/runs/{run_id}")), 200, "GET run");
        if run["status"] != "PAUSED" || Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        run["status"], "FAILED",
        "expected the run failed closed: {run}"
    );
    assert_eq!(run["failure"]["code"], "gate_expired", "{run}");
    assert_eq!(run["gates"][0]["status"], "EXPIRED", "{run}");
    assert_eq!(run["steps"][0]["status"], "REJECTED", "{run}");
    assert!(
        run["receipt_hash"].is_string(),
        "an expired run ends with a receipt: {run}"
    );
    let logs = run_logs(&mut c, &run_id);
    let expired = logs
        .iter()
        .find(|e| e["action"] == "gate.expired")
        .expect("a gate.expired entry");
    assert_eq!(expired["actor"], "fedcore");

    // Too late to approve, and an expired run cannot be retried.
    let gate_id = gate["gate_id"].as_str().unwrap();
    expect_error(
        resolve_gate(&mut c, &run_id, gate_id, "approve", "approver-1"),
        409,
        "gate_already_resolved",
        "late approval",
    );
    expect_error(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        409,
        "invalid_transition",
        "retry of gate_expired",
    );
    verify_after_stop(server);
}

#[test]
fn a_quorum_gate_needs_distinct_approvers_and_refuses_a_second_vote_from_one() {
    let server = Server::start();
    let mut c = server.client();
    setup(&mut c, json!({"approvals_required": 2}));
    let (run_id, gate) = flagged(&mut c);
    assert_eq!(gate["approvals_required"], 2, "{gate}");
    let gate_id = gate["gate_id"].as_str().unwrap().to_string();

    let first = expect(
        resolve_gate(&mut c, &run_id, &gate_id, "approve", "approver-1"),
        200,
        "first approval",
    );
    assert_eq!(
        first["gate"]["status"], "PENDING",
        "one of two approvals leaves the gate pending: {first}"
    );
    assert_eq!(
        first["gate"]["approvals"].as_array().map(Vec::len),
        Some(1),
        "{first}"
    );
    expect_error(
        resolve_gate(&mut c, &run_id, &gate_id, "approve", "approver-1"),
        409,
        "duplicate_approval",
        "same approver twice",
    );
    // The requester holds an agent token, which may not resolve gates at all (self-approval by
    // a holder of an approver token is covered in auth.rs).
    expect_error(
        resolve_gate(&mut c, &run_id, &gate_id, "approve", AGENT),
        403,
        "forbidden_role",
        "the requester",
    );
    expect_error(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        409,
        "gates_unresolved",
        "resume before the quorum",
    );

    let second = expect(
        resolve_gate(&mut c, &run_id, &gate_id, "approve", "approver-2"),
        200,
        "second approval",
    );
    assert_eq!(second["gate"]["status"], "APPROVED", "{second}");
    assert_eq!(second["gate"]["resolved_by"], "approver-2", "{second}");
    let approvers: Vec<&str> = second["gate"]["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["approver"].as_str().unwrap())
        .collect();
    assert_eq!(approvers, vec!["approver-1", "approver-2"]);

    // Each approval is its own audit entry; the gate receipt names both.
    let logs = run_logs(&mut c, &run_id);
    let approvals: Vec<&Value> = logs
        .iter()
        .filter(|e| e["action"] == "gate.approval")
        .collect();
    assert_eq!(approvals.len(), 2, "one audit entry per approval");
    let resolved = logs
        .iter()
        .find(|e| e["action"] == "gate.resolved")
        .expect("gate.resolved");
    let reference = resolved["evidence_pack_ref"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let receipt = c.get(&format!("/evidence/{reference}")).json();
    assert_eq!(receipt["approvals_required"], 2, "{receipt}");
    assert_eq!(
        receipt["approvals"].as_array().map(Vec::len),
        Some(2),
        "{receipt}"
    );

    expect(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        200,
        "resume after the quorum",
    );
    complete_step(&mut c, &run_id, "one", &json!({}));
    start_step(&mut c, &run_id, "two", &json!({}));
    complete_step(&mut c, &run_id, "two", &json!({}));
    verify_after_stop(server);
}

#[test]
fn one_reject_rejects_a_quorum_gate() {
    let server = Server::start();
    let mut c = server.client();
    setup(&mut c, json!({"approvals_required": 3}));
    let (run_id, gate) = flagged(&mut c);
    let gate_id = gate["gate_id"].as_str().unwrap();
    expect(
        resolve_gate(&mut c, &run_id, gate_id, "approve", "approver-1"),
        200,
        "one approval",
    );
    let rejected = expect(
        resolve_gate(&mut c, &run_id, gate_id, "reject", "approver-2"),
        200,
        "a reject",
    );
    assert_eq!(rejected["gate"]["status"], "REJECTED", "{rejected}");
    assert_eq!(
        rejected["run"]["failure"]["code"], "gate_rejected",
        "{rejected}"
    );
    verify_after_stop(server);
}

#[test]
fn gate_terms_belong_to_flag_rules_and_must_be_positive() {
    let server = Server::start();
    let mut c = server.client();
    let cases = [
        (
            json!({"rule_id": "a", "effect": "allow", "gate_expires_in_s": 5, "when": {"path": "actor", "exists": true}}),
            "rules[0].gate_expires_in_s",
        ),
        (
            json!({"rule_id": "a", "effect": "flag", "approvals_required": 0, "when": {"path": "actor", "exists": true}}),
            "rules[0].approvals_required",
        ),
        (
            json!({"rule_id": "a", "effect": "flag", "gate_expires_in_s": "soon", "when": {"path": "actor", "exists": true}}),
            "rules[0].gate_expires_in_s",
        ),
    ];
    for (rule, path) in cases {
        let policy = json!({"tier": "T1", "rules": [rule], "actor": ADMIN});
        let body = expect_error(c.put("/policies/bad", &policy), 422, "invalid_policy", path);
        assert_eq!(body["details"]["path"], path, "{body}");
    }
    // A policy without gate terms hashes as before: the fields are written only when given.
    let plain = json!({"tier": "T1", "rules": [{"rule_id": "a", "effect": "flag", "when": {"path": "actor", "exists": true}}], "actor": ADMIN});
    let stored = expect(c.put("/policies/plain", &plain), 201, "plain policy");
    assert!(
        stored["rules"][0].get("approvals_required").is_none(),
        "{stored}"
    );
}
